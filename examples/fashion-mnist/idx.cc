#include "examples/fashion-mnist/idx.h"

#include <sys/stat.h>
#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace epoch::fmnist {

namespace {

bool IsFile(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// The whole (decompressed) contents of path, at most max_bytes (a larger file is
// kCorruption: it is not the file its header describes).
Result<std::string> ReadMaybeGzip(const std::string& path, size_t max_bytes) {
  if (!IsFile(path)) return NotFound(path + ": no such file");
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) {
    return Internal(path + ": cannot open: " + std::strerror(errno));
  }
  gzbuffer(f, 1 << 20);
  std::string out;
  std::string chunk(1 << 20, '\0');
  while (true) {
    int n = gzread(f, chunk.data(), static_cast<unsigned>(chunk.size()));
    if (n <= 0) {
      // gzread returns 0 both at a clean end and for a stream cut short; only gzerror
      // tells them apart (Z_BUF_ERROR: "unexpected end of file").
      int err = Z_OK;
      std::string msg = gzerror(f, &err);
      gzclose(f);
      if (n == 0 && err == Z_OK) break;
      if (msg.starts_with(path + ": ")) msg = msg.substr(path.size() + 2);  // zlib adds it
      return Corruption(
          path + (err == Z_BUF_ERROR ? ": truncated gzip stream: " : ": corrupt gzip stream: ") +
          msg);
    }
    out.append(chunk.data(), static_cast<size_t>(n));
    if (out.size() > max_bytes) {
      gzclose(f);
      return Corruption(path + ": larger than " + std::to_string(max_bytes) +
                        " bytes: not a Fashion-MNIST IDX file");
    }
  }
  return out;
}

uint32_t BigEndian32(const std::string& b, size_t at) {
  auto u = [&](size_t i) { return static_cast<uint32_t>(static_cast<uint8_t>(b[at + i])); };
  return (u(0) << 24) | (u(1) << 16) | (u(2) << 8) | u(3);
}

// Checks the data after a header of header_bytes is exactly expected bytes long.
Status CheckPayloadSize(const std::string& path, const std::string& bytes, size_t header_bytes,
                        uint64_t expected, const std::string& what) {
  uint64_t have = bytes.size() - header_bytes;
  if (have < expected) {
    return Corruption(path + ": truncated: the header promises " + what + " (" +
                      std::to_string(expected) + " bytes of data) but only " +
                      std::to_string(have) + " bytes follow it");
  }
  if (have > expected) {
    return Corruption(path + ": " + std::to_string(have - expected) +
                      " unexpected bytes after the " + what + " the header promises");
  }
  return Status::Ok();
}

std::string Magic(uint32_t m) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%08x (%u)", m, m);
  return buf;
}

}  // namespace

Result<IdxImages> ReadIdxImages(const std::string& path) {
  // 60,000 images of 28x28 is 47 MB; allow any count of this size with room to spare.
  ASSIGN_OR_RETURN(std::string bytes, ReadMaybeGzip(path, 256u << 20));
  if (bytes.size() < 16) {
    return Corruption(path + ": truncated: an IDX images header is 16 bytes, the file has " +
                      std::to_string(bytes.size()));
  }
  uint32_t magic = BigEndian32(bytes, 0);
  if (magic != kIdxImagesMagic) {
    std::string hint = magic == kIdxLabelsMagic ? " (that is a labels file)" : "";
    return Corruption(path + ": bad magic number " + Magic(magic) + ", expected " +
                      Magic(kIdxImagesMagic) + " for IDX images" + hint);
  }
  IdxImages img;
  img.count = BigEndian32(bytes, 4);
  img.rows = BigEndian32(bytes, 8);
  img.cols = BigEndian32(bytes, 12);
  if (img.rows != kRows || img.cols != kCols) {
    return InvalidArgument(path + ": images are " + std::to_string(img.rows) + "x" +
                           std::to_string(img.cols) + ", expected " + std::to_string(kRows) + "x" +
                           std::to_string(kCols));
  }
  uint64_t expected = uint64_t{img.count} * img.rows * img.cols;
  RETURN_IF_ERROR(
      CheckPayloadSize(path, bytes, 16, expected, std::to_string(img.count) + " images of 28x28"));
  img.pixels.assign(bytes.begin() + 16, bytes.end());
  return img;
}

Result<std::vector<uint8_t>> ReadIdxLabels(const std::string& path) {
  ASSIGN_OR_RETURN(std::string bytes, ReadMaybeGzip(path, 16u << 20));
  if (bytes.size() < 8) {
    return Corruption(path + ": truncated: an IDX labels header is 8 bytes, the file has " +
                      std::to_string(bytes.size()));
  }
  uint32_t magic = BigEndian32(bytes, 0);
  if (magic != kIdxLabelsMagic) {
    std::string hint = magic == kIdxImagesMagic ? " (that is an images file)" : "";
    return Corruption(path + ": bad magic number " + Magic(magic) + ", expected " +
                      Magic(kIdxLabelsMagic) + " for IDX labels" + hint);
  }
  uint32_t count = BigEndian32(bytes, 4);
  RETURN_IF_ERROR(CheckPayloadSize(path, bytes, 8, count, std::to_string(count) + " labels"));
  std::vector<uint8_t> labels(bytes.begin() + 8, bytes.end());
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] >= kClasses) {
      return Corruption(path + ": label " + std::to_string(labels[i]) + " at index " +
                        std::to_string(i) + " is out of range 0..9");
    }
  }
  return labels;
}

Result<Dataset> ReadIdxPair(const std::string& images_path, const std::string& labels_path) {
  ASSIGN_OR_RETURN(IdxImages img, ReadIdxImages(images_path));
  ASSIGN_OR_RETURN(std::vector<uint8_t> labels, ReadIdxLabels(labels_path));
  if (labels.size() != img.count) {
    return Corruption("count mismatch: " + images_path + " has " + std::to_string(img.count) +
                      " images but " + labels_path + " has " + std::to_string(labels.size()) +
                      " labels");
  }
  Dataset d;
  d.labels = std::move(labels);
  d.pixels.resize(img.pixels.size());
  for (size_t i = 0; i < img.pixels.size(); ++i) {
    d.pixels[i] = static_cast<float>(img.pixels[i]) * (1.0f / 255.0f);
  }
  return d;
}

Result<IdxSplitFiles> FindIdxSplit(const std::string& dir, std::string_view prefix) {
  auto find = [&](const std::string& base) -> Result<std::string> {
    std::string p = dir + "/" + base;
    if (IsFile(p + ".gz")) return p + ".gz";
    if (IsFile(p)) return p;
    return NotFound(p + ".gz: no such file (nor " + base + " uncompressed) in " + dir);
  };
  IdxSplitFiles f;
  ASSIGN_OR_RETURN(f.images, find(std::string(prefix) + "-images-idx3-ubyte"));
  ASSIGN_OR_RETURN(f.labels, find(std::string(prefix) + "-labels-idx1-ubyte"));
  return f;
}

Result<Dataset> ReadIdxSplit(const std::string& dir, std::string_view prefix) {
  ASSIGN_OR_RETURN(IdxSplitFiles f, FindIdxSplit(dir, prefix));
  return ReadIdxPair(f.images, f.labels);
}

bool IsIdxDir(const std::string& dir) { return FindIdxSplit(dir, "t10k").ok(); }

}  // namespace epoch::fmnist
