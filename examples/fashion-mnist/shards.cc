#include "examples/fashion-mnist/shards.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "common/fd.h"
#include "common/files.h"

namespace epoch::fmnist {

// Shards and models are written and read as the host's bytes.
static_assert(std::endian::native == std::endian::little,
              "fmnist's file formats are little-endian; add byte swapping for this host");

namespace {

uint32_t Crc(const void* data, size_t n, uint32_t crc = 0) {
  return static_cast<uint32_t>(
      crc32_z(crc, static_cast<const Bytef*>(data), static_cast<z_size_t>(n)));
}

void Put32(std::string& out, uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); }

uint32_t Get32(const char* b, size_t at) {
  uint32_t v;
  std::memcpy(&v, b + at, 4);
  return v;
}

// Reads exactly n bytes at the file offset; false on an error or an early end.
bool ReadFully(int fd, void* out, size_t n) {
  char* p = static_cast<char*>(out);
  while (n > 0) {
    const ssize_t got = read(fd, p, n);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    p += got;
    n -= static_cast<size_t>(got);
  }
  return true;
}

// A shard opened and its header checked (every check that needs no more than the
// header and the file's size): what ReadShardBody reads the rest from.
struct ShardFile {
  UniqueFd fd;
  uint64_t count = 0;
  char header[kShardHeaderBytes];
};

Result<ShardFile> OpenShard(const std::string& path) {
  ShardFile f;
  f.fd.reset(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!f.fd) {
    if (errno == ENOENT) return NotFound(path + ": no such file");
    return Internal("cannot open " + path + ": " + std::strerror(errno));
  }
  struct stat st;
  if (fstat(f.fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return Internal(path + ": not a regular file");
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < kShardHeaderBytes + 4) {
    return Corruption(path + ": truncated: " + std::to_string(size) +
                      " bytes, less than a shard header and trailer");
  }
  if (!ReadFully(f.fd.get(), f.header, kShardHeaderBytes)) {
    return Internal("cannot read " + path + ": " + std::strerror(errno));
  }
  const char* b = f.header;
  if (Get32(b, 0) != kShardMagic) return Corruption(path + ": not an fmnist shard (bad magic)");
  if (Get32(b, 4) != kShardVersion) {
    return Corruption(path + ": shard version " + std::to_string(Get32(b, 4)) +
                      ", this program reads version " + std::to_string(kShardVersion));
  }
  f.count = Get32(b, 8);
  if (Get32(b, 12) != kRows || Get32(b, 16) != kCols) {
    return Corruption(path + ": images are " + std::to_string(Get32(b, 12)) + "x" +
                      std::to_string(Get32(b, 16)) + ", expected 28x28");
  }
  const uint64_t expected = kShardHeaderBytes + f.count * kPixels * sizeof(float) + f.count + 4;
  if (size != expected) {
    return Corruption(path + ": " + std::to_string(size) + " bytes, but a shard of " +
                      std::to_string(f.count) + " images is " + std::to_string(expected) +
                      (size < expected ? " (truncated)" : ""));
  }
  return f;
}

// Reads the shard's images straight into `pixels` (count * kPixels floats) and
// `labels` (count), checks its CRC and their ranges, and returns the CRC. Straight in:
// a split is hundreds of MB, and copying it through a buffer cost most of train's
// start-up (the page faults and copies of a whole-file buffer, then of the Dataset).
Result<uint32_t> ReadShardBody(ShardFile& f, const std::string& path, float* pixels,
                               uint8_t* labels) {
  const size_t n = f.count * kPixels;
  char trailer[4];
  if (!ReadFully(f.fd.get(), pixels, n * sizeof(float)) ||
      !ReadFully(f.fd.get(), labels, f.count) || !ReadFully(f.fd.get(), trailer, 4)) {
    return Internal("cannot read " + path + ": " + std::strerror(errno));
  }
  const uint32_t stored = Get32(trailer, 0);
  uint32_t actual = Crc(f.header, kShardHeaderBytes);
  actual = Crc(pixels, n * sizeof(float), actual);
  actual = Crc(labels, f.count, actual);
  if (stored != actual) {
    return Corruption(path + ": checksum mismatch: trailer says " + Crc32Hex(stored) +
                      ", contents hash to " + Crc32Hex(actual));
  }
  for (size_t i = 0; i < n; ++i) {
    if (!(pixels[i] >= 0.0f && pixels[i] <= 1.0f)) {
      return Corruption(path + ": pixel " + std::to_string(i % kPixels) + " of image " +
                        std::to_string(i / kPixels) + " is outside [0, 1]");
    }
  }
  for (size_t i = 0; i < f.count; ++i) {
    if (labels[i] >= kClasses) {
      return Corruption(path + ": label " + std::to_string(labels[i]) + " of image " +
                        std::to_string(i) + " is out of range 0..9");
    }
  }
  return stored;
}

bool IsDir(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

Status WriteWhole(const std::string& path, const std::string& bytes) {
  std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return Internal("cannot create " + tmp + ": " + std::strerror(errno));
  bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) return Internal("cannot write " + tmp + ": " + std::strerror(errno));
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return Internal("cannot rename " + tmp + " to " + path + ": " + std::strerror(errno));
  }
  return Status::Ok();
}

}  // namespace

std::string Crc32Hex(uint32_t crc) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", crc);
  return buf;
}

Result<uint32_t> WriteShard(const std::string& path, const Dataset& d, size_t begin, size_t end) {
  if (begin > end || end > d.size()) return InvalidArgument("WriteShard: bad range");
  size_t n = end - begin;
  std::string out;
  out.reserve(kShardHeaderBytes + n * kPixels * sizeof(float) + n + 4);
  Put32(out, kShardMagic);
  Put32(out, kShardVersion);
  Put32(out, static_cast<uint32_t>(n));
  Put32(out, kRows);
  Put32(out, kCols);
  Put32(out, 0);
  out.append(reinterpret_cast<const char*>(d.image(begin)), n * kPixels * sizeof(float));
  out.append(reinterpret_cast<const char*>(d.labels.data() + begin), n);
  uint32_t crc = Crc(out.data(), out.size());
  Put32(out, crc);
  RETURN_IF_ERROR(WriteWhole(path, out));
  return crc;
}

Result<Dataset> ReadShard(const std::string& path, uint32_t* crc) {
  ASSIGN_OR_RETURN(ShardFile f, OpenShard(path));
  Dataset d;
  d.pixels.resize(f.count * kPixels);
  d.labels.resize(f.count);
  ASSIGN_OR_RETURN(uint32_t stored, ReadShardBody(f, path, d.pixels.data(), d.labels.data()));
  if (crc != nullptr) *crc = stored;
  return d;
}

Result<std::vector<ShardEntry>> WriteSplit(const std::string& dir, std::string_view split,
                                           const Dataset& d, size_t per_shard) {
  if (per_shard == 0) return InvalidArgument("WriteSplit: per_shard must be positive");
  std::vector<ShardEntry> entries;
  for (size_t begin = 0, i = 0; begin < d.size(); begin += per_shard, ++i) {
    size_t end = std::min(d.size(), begin + per_shard);
    char name[64];
    std::snprintf(name, sizeof name, "%.*s-%05zu.shard", static_cast<int>(split.size()),
                  split.data(), i);
    ASSIGN_OR_RETURN(uint32_t crc, WriteShard(dir + "/" + name, d, begin, end));
    entries.push_back({name, end - begin, crc});
  }
  return entries;
}

Json ShardEntriesJson(const std::vector<ShardEntry>& entries) {
  Json j = Json::array();
  for (const auto& e : entries) {
    j.push_back({{"file", e.file}, {"count", e.count}, {"crc32", Crc32Hex(e.crc32)}});
  }
  return j;
}

Result<std::string> FindPrepDir(const std::string& path) {
  if (IsDir(path)) {
    if (PathExists(path + "/manifest.json")) return path;
    return NotFound(path + ": no manifest.json here (not a directory written by fmnist prep)");
  }
  if (!PathExists(path)) return NotFound(path + ": no such file or directory");
  auto slash = path.find_last_of('/');
  std::string dir = slash == std::string::npos ? "." : path.substr(0, std::max<size_t>(slash, 1));
  if (PathExists(dir + "/manifest.json")) return dir;
  return NotFound(path + ": no manifest.json beside it (not written by fmnist prep)");
}

Result<Json> ReadManifest(const std::string& dir) {
  std::string path = dir + "/manifest.json";
  if (!PathExists(path)) return NotFound(path + ": no such file");
  ASSIGN_OR_RETURN(std::string text, ReadFile(path, 1u << 20));
  auto j = ParseJson(text);
  if (!j.ok()) return Corruption(path + ": " + j.status().message());
  if (!j->is_object() || j->value("format", "") != "fmnist-shards" || !j->contains("version") ||
      !(*j)["version"].is_number_integer() || (*j)["version"].get<int>() != 1 ||
      !j->contains("splits") || !(*j)["splits"].is_object()) {
    return Corruption(path + ": not a version-1 fmnist-shards manifest");
  }
  return std::move(*j);
}

Result<Dataset> ReadSplit(const std::string& dir, std::string_view split) {
  ASSIGN_OR_RETURN(Json manifest, ReadManifest(dir));
  const Json& splits = manifest["splits"];
  auto it = splits.find(std::string(split));
  if (it == splits.end()) {
    return NotFound(dir + "/manifest.json: no '" + std::string(split) + "' split");
  }
  if (!it->is_array()) {
    return Corruption(dir + "/manifest.json: splits." + std::string(split) + " is not an array");
  }
  // Check every entry and open its shard (its header checked against the file's size
  // and the entry's count, so the sizes below are real), then read each shard into its
  // place in one Dataset of the split's size: concatenating would copy the split again.
  std::vector<std::pair<std::string, ShardFile>> shards;
  size_t total = 0;
  for (const Json& e : *it) {
    if (!e.is_object() || !e.contains("file") || !e["file"].is_string() || !e.contains("count") ||
        !e["count"].is_number_unsigned() || !e.contains("crc32") || !e["crc32"].is_string()) {
      return Corruption(dir + "/manifest.json: malformed entry in splits." + std::string(split) +
                        ": " + e.dump());
    }
    std::string file = e["file"].get<std::string>();
    if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..") {
      return Corruption(dir + "/manifest.json: shard name '" + file + "' is not a plain name");
    }
    std::string path = dir + "/" + file;
    ASSIGN_OR_RETURN(ShardFile f, OpenShard(path));
    if (f.count != e["count"].get<size_t>()) {
      return Corruption(path + ": holds " + std::to_string(f.count) +
                        " images, the manifest says " + std::to_string(e["count"].get<size_t>()));
    }
    total += f.count;
    shards.emplace_back(std::move(path), std::move(f));
  }
  Dataset all;
  all.pixels.resize(total * kPixels);
  all.labels.resize(total);
  size_t at = 0;
  for (size_t k = 0; k < shards.size(); ++k) {
    auto& [path, f] = shards[k];
    const std::string want = (*it)[k]["crc32"].get<std::string>();
    ASSIGN_OR_RETURN(uint32_t crc, ReadShardBody(f, path, all.pixels.data() + at * kPixels,
                                                 all.labels.data() + at));
    // ReadShardBody checked the trailer against the contents; this checks it is the
    // shard the manifest was written with.
    if (Crc32Hex(crc) != want) {
      return Corruption(path + ": CRC-32 " + Crc32Hex(crc) + ", the manifest says " + want +
                        " (a shard from another prep run?)");
    }
    at += f.count;
  }
  return all;
}

}  // namespace epoch::fmnist
