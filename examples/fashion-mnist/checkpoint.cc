#include "examples/fashion-mnist/checkpoint.h"

#include <zlib.h>

#include <bit>
#include <cstring>

#include "common/files.h"

namespace epoch::fmnist {

static_assert(std::endian::native == std::endian::little,
              "checkpoints are little-endian; add byte swapping for this host");

namespace {

constexpr size_t kMaxCheckpointBytes = size_t{4} << 30;
constexpr size_t kMaxDeclarationBytes = 64 << 10;

void Put32(std::string& out, uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); }

// Reads the checkpoint's fields in order; every read is bounds-checked.
class Reader {
 public:
  Reader(std::string_view b, const std::string& name) : b_(b), name_(name) {}

  Result<uint32_t> U32(const char* what) {
    if (b_.size() - at_ < 4) return Truncated(what);
    uint32_t v;
    std::memcpy(&v, b_.data() + at_, 4);
    at_ += 4;
    return v;
  }
  Result<std::string_view> Bytes(size_t n, const char* what) {
    if (b_.size() - at_ < n) return Truncated(what);
    std::string_view v = b_.substr(at_, n);
    at_ += n;
    return v;
  }
  size_t at() const { return at_; }

 private:
  Status Truncated(const char* what) const {
    return Corruption(name_ + ": truncated in " + what + " (" + std::to_string(b_.size()) +
                      " bytes)");
  }
  std::string_view b_;
  const std::string& name_;
  size_t at_ = 0;
};

}  // namespace

std::string CheckpointFileName(int epochs_done) {
  return "epoch-" + std::to_string(epochs_done) + ".bin";
}

Result<std::string> EncodeCheckpoint(const Checkpoint& c) {
  ASSIGN_OR_RETURN(std::string model, EncodeModel(c.model));
  const size_t np = c.model.params.size();
  if (c.state.epochs_done < 0) return InvalidArgument("checkpoint: negative epoch");
  if (!c.state.m1.empty() && c.state.m1.size() != np) {
    return InvalidArgument("checkpoint: m1 does not match the model");
  }
  if (!c.state.m2.empty() && (c.state.m2.size() != np || c.state.m1.empty())) {
    return InvalidArgument("checkpoint: m2 does not match the model (or m1 is missing)");
  }
  if (!c.meta.is_object()) return InvalidArgument("checkpoint: meta must be a JSON object");
  const std::string meta = c.meta.dump(-1, ' ', false, Json::error_handler_t::replace);
  const uint32_t moments = c.state.m1.empty() ? 0 : c.state.m2.empty() ? 1 : 2;

  std::string out;
  out.reserve(model.size() + 2 * np * sizeof(float) + meta.size() + 64);
  Put32(out, kCheckpointMagic);
  Put32(out, kCheckpointVersion);
  Put32(out, static_cast<uint32_t>(model.size()));
  out += model;
  Put32(out, static_cast<uint32_t>(c.state.epochs_done));
  Put32(out, moments);
  Put32(out, static_cast<uint32_t>(moments == 0 ? 0 : np));
  if (moments >= 1) out.append(reinterpret_cast<const char*>(c.state.m1.data()), np * 4);
  if (moments == 2) out.append(reinterpret_cast<const char*>(c.state.m2.data()), np * 4);
  Put32(out, static_cast<uint32_t>(meta.size()));
  out += meta;
  Put32(out,
        static_cast<uint32_t>(crc32_z(0, reinterpret_cast<const Bytef*>(out.data()), out.size())));
  return out;
}

Result<Checkpoint> DecodeCheckpoint(std::string_view b, const std::string& name) {
  if (b.size() < 12) {
    return Corruption(name + ": truncated: " + std::to_string(b.size()) + " bytes");
  }
  uint32_t stored;
  std::memcpy(&stored, b.data() + b.size() - 4, 4);
  Reader r(b.substr(0, b.size() - 4), name);
  ASSIGN_OR_RETURN(uint32_t magic, r.U32("the header"));
  if (magic != kCheckpointMagic) return Corruption(name + ": not an fmnist checkpoint (bad magic)");
  ASSIGN_OR_RETURN(uint32_t version, r.U32("the header"));
  if (version != kCheckpointVersion) {
    return Corruption(name + ": checkpoint version " + std::to_string(version) +
                      ", this program reads version " + std::to_string(kCheckpointVersion));
  }
  // The checksum first: every length below is then the writer's.
  const uint32_t actual =
      static_cast<uint32_t>(crc32_z(0, reinterpret_cast<const Bytef*>(b.data()), b.size() - 4));
  if (stored != actual) return Corruption(name + ": checksum mismatch (corrupt checkpoint)");

  Checkpoint c;
  ASSIGN_OR_RETURN(uint32_t model_bytes, r.U32("the model length"));
  ASSIGN_OR_RETURN(std::string_view model, r.Bytes(model_bytes, "the model"));
  ASSIGN_OR_RETURN(c.model, DecodeModel(model, name + " (its model)"));
  ASSIGN_OR_RETURN(uint32_t epochs_done, r.U32("the epoch"));
  ASSIGN_OR_RETURN(uint32_t moments, r.U32("the optimizer state"));
  ASSIGN_OR_RETURN(uint32_t count, r.U32("the optimizer state"));
  if (epochs_done > (1u << 30) || moments > 2 || (moments > 0 && count != c.model.params.size()) ||
      (moments == 0 && count != 0)) {
    return Corruption(name + ": implausible epoch " + std::to_string(epochs_done) + " or " +
                      std::to_string(moments) + " optimizer moments of " + std::to_string(count) +
                      " values for a model of " + std::to_string(c.model.params.size()));
  }
  c.state.epochs_done = static_cast<int>(epochs_done);
  for (uint32_t k = 0; k < moments; ++k) {
    ASSIGN_OR_RETURN(std::string_view v, r.Bytes(size_t{count} * 4, "the optimizer state"));
    std::vector<float>& out = k == 0 ? c.state.m1 : c.state.m2;
    out.resize(count);
    std::memcpy(out.data(), v.data(), v.size());
  }
  ASSIGN_OR_RETURN(uint32_t meta_bytes, r.U32("the meta length"));
  ASSIGN_OR_RETURN(std::string_view meta, r.Bytes(meta_bytes, "the meta"));
  if (r.at() != b.size() - 4) {
    return Corruption(name + ": " + std::to_string(b.size() - 4 - r.at()) +
                      " trailing bytes before the checksum");
  }
  auto j = ParseJson(meta, 16);
  if (!j.ok() || !j->is_object()) return Corruption(name + ": its meta is not a JSON object");
  c.meta = std::move(*j);
  return c;
}

Result<std::string> SaveCheckpoint(const std::string& dir, const Checkpoint& c) {
  ASSIGN_OR_RETURN(std::string bytes, EncodeCheckpoint(c));
  RETURN_IF_ERROR(MakeDirs(dir));
  const std::string file = CheckpointFileName(c.state.epochs_done);
  RETURN_IF_ERROR(WriteFileDurably(dir + "/" + file, bytes));
  const Json declaration = {{"file", file}, {"epoch", c.state.epochs_done}};
  RETURN_IF_ERROR(WriteFileDurably(dir + "/checkpoint.json", declaration.dump() + "\n"));
  return file;
}

Result<std::optional<DeclaredCheckpoint>> LoadDeclaredCheckpoint(const std::string& dir) {
  const std::string path = dir + "/checkpoint.json";
  if (!PathExists(path)) return std::optional<DeclaredCheckpoint>();
  auto text = ReadFile(path, kMaxDeclarationBytes);
  if (!text.ok()) return Corruption(path + ": " + text.status().message());
  auto j = ParseJson(*text, 16);
  if (!j.ok() || !j->is_object() || !j->contains("file") || !(*j)["file"].is_string()) {
    return Corruption(path + ": not {\"file\": \"<name>\", \"epoch\": N}");
  }
  DeclaredCheckpoint d;
  d.file = (*j)["file"].get<std::string>();
  // A plain name in the dir: a declaration never leads out of it.
  if (d.file.empty() || d.file == "." || d.file == ".." || d.file.find('/') != std::string::npos) {
    return Corruption(path + ": \"file\" must name a file in " + dir + ", not '" + d.file + "'");
  }
  const std::string file = dir + "/" + d.file;
  if (!PathExists(file)) return NotFound(file + " (named by checkpoint.json): no such file");
  ASSIGN_OR_RETURN(std::string bytes, ReadFile(file, kMaxCheckpointBytes));
  ASSIGN_OR_RETURN(d.checkpoint, DecodeCheckpoint(bytes, file));
  return std::optional<DeclaredCheckpoint>(std::move(d));
}

}  // namespace epoch::fmnist
