#include "storage/codec.h"

#include <cstring>

namespace epoch::storage::codec {
namespace {

constexpr size_t kDigestSize = 32;

// Reads the grammar's primitives from a byte range; every getter fails (returns
// false) instead of reading past the end.
class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}

  bool Fixed8(uint8_t* v) {
    if (in_.size() < 1) return false;
    *v = static_cast<uint8_t>(in_[0]);
    in_.remove_prefix(1);
    return true;
  }
  bool Fixed32(uint32_t* v) {
    if (in_.size() < 4) return false;
    *v = DecodeFixed32(in_.data());
    in_.remove_prefix(4);
    return true;
  }
  bool Fixed64(uint64_t* v) {
    if (in_.size() < 8) return false;
    *v = DecodeFixed64(in_.data());
    in_.remove_prefix(8);
    return true;
  }
  bool View(std::string_view* s) {
    uint32_t len = 0;
    if (!Fixed32(&len) || in_.size() < len) return false;
    *s = in_.substr(0, len);
    in_.remove_prefix(len);
    return true;
  }
  bool Raw(Digest* d) {
    if (in_.size() < kDigestSize) return false;
    std::memcpy(d->data(), in_.data(), kDigestSize);
    in_.remove_prefix(kDigestSize);
    return true;
  }
  size_t remaining() const { return in_.size(); }

 private:
  std::string_view in_;
};

// An event's hash: SHA-256(key || fields), the key written on the stack.
Digest HashOf(uint64_t position, std::string_view fields) {
  char key[8];
  for (int i = 7; i >= 0; --i) {
    key[i] = static_cast<char>(position & 0xff);
    position >>= 8;
  }
  return Sha256Of(std::string_view(key, sizeof(key)), fields);
}

Status Malformed(uint64_t position, const char* what) {
  return Corruption("event " + std::to_string(position) + ": malformed value (" + what + ")");
}

}  // namespace

void PutFixed32(std::string* dst, uint32_t v) {
  char buf[4];
  for (int i = 3; i >= 0; --i) {
    buf[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  dst->append(buf, 4);
}

void PutFixed64(std::string* dst, uint64_t v) {
  char buf[8];
  for (int i = 7; i >= 0; --i) {
    buf[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  dst->append(buf, 8);
}

uint32_t DecodeFixed32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

uint64_t DecodeFixed64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

void PutLengthPrefixed(std::string* dst, std::string_view s) {
  PutFixed32(dst, static_cast<uint32_t>(s.size()));
  dst->append(s.data(), s.size());
}

const Digest& ZeroDigest() {
  static const Digest kZero{};
  return kZero;
}

const std::string& ZeroHashHex() {
  static const std::string kZero(64, '0');
  return kZero;
}

std::string EventKey(uint64_t position) {
  std::string k;
  k.reserve(8);
  PutFixed64(&k, position);
  return k;
}

Result<uint64_t> DecodePositionKey(std::string_view key) {
  if (key.size() != 8)
    return Corruption("position key of " + std::to_string(key.size()) + " bytes");
  return DecodeFixed64(key.data());
}

std::string StreamKey(std::string_view stream, uint64_t version) {
  std::string k;
  k.reserve(stream.size() + 9);
  k.append(stream.data(), stream.size());
  k.push_back('\0');
  PutFixed64(&k, version);
  return k;
}

Status DecodeStreamKey(std::string_view key, std::string* stream, uint64_t* version) {
  if (key.size() < 9 || key[key.size() - 9] != '\0') {
    return Corruption("malformed streams key");
  }
  stream->assign(key.data(), key.size() - 9);
  *version = DecodeFixed64(key.data() + key.size() - 8);
  return Status::Ok();
}

std::string PositionValue(uint64_t position) { return EventKey(position); }

Result<uint64_t> DecodePositionValue(std::string_view value) {
  if (value.size() != 8) return Corruption("malformed position value");
  return DecodeFixed64(value.data());
}

std::string IdempotencyKey(std::string_view tenant, std::string_view key) {
  std::string k;
  k.reserve(tenant.size() + 1 + key.size());
  k.append(tenant.data(), tenant.size());
  k.push_back('\0');
  k.append(key.data(), key.size());
  return k;
}

std::string HeadValue(uint64_t position, const Digest& hash) {
  std::string v;
  v.reserve(8 + kDigestSize);
  PutFixed64(&v, position);
  v.append(reinterpret_cast<const char*>(hash.data()), kDigestSize);
  return v;
}

Status DecodeHeadValue(std::string_view value, uint64_t* position, Digest* hash) {
  if (value.size() != 8 + kDigestSize) return Corruption("malformed meta head record");
  *position = DecodeFixed64(value.data());
  std::memcpy(hash->data(), value.data() + 8, kDigestSize);
  return Status::Ok();
}

Status ValidateName(std::string_view what, std::string_view name, bool allow_empty) {
  if (name.empty() && !allow_empty) return InvalidArgument(std::string(what) + " is empty");
  if (name.find('\0') != std::string_view::npos) {
    return InvalidArgument(std::string(what) + " contains a NUL byte");
  }
  return Status::Ok();
}

void EncodeEvent(uint64_t position, std::string_view stream, uint64_t version,
                 std::string_view type, uint32_t schema, std::string_view time, uint64_t epoch,
                 std::string_view actor, std::string_view data, const Digest& prev_hash,
                 std::string* value, Digest* hash_out) {
  value->clear();
  value->reserve(1 + 4 * 5 + 8 * 2 + 4 + stream.size() + type.size() + time.size() + actor.size() +
                 data.size() + 2 * kDigestSize);
  value->push_back(static_cast<char>(kEnvelopeFormatV1));
  PutLengthPrefixed(value, stream);
  PutFixed64(value, version);
  PutLengthPrefixed(value, type);
  PutFixed32(value, schema);
  PutLengthPrefixed(value, time);
  PutFixed64(value, epoch);
  PutLengthPrefixed(value, actor);
  PutLengthPrefixed(value, data);
  value->append(reinterpret_cast<const char*>(prev_hash.data()), kDigestSize);

  // hash := SHA-256(key || fields); fields are everything after the format byte.
  *hash_out = HashOf(position, std::string_view(*value).substr(1));
  value->append(reinterpret_cast<const char*>(hash_out->data()), kDigestSize);
}

Status EncodeEvent(const Envelope& env, std::string* value, Digest* hash_out) {
  Result<Digest> prev = DigestFromHex(env.prev_hash);
  if (!prev.ok()) return prev.status().WithContext("prev_hash");
  EncodeEvent(env.position, env.stream, env.version, env.type, env.schema, env.time, env.epoch,
              env.actor, env.data, *prev, value, hash_out);
  return Status::Ok();
}

Status DecodeEventFields(uint64_t position, std::string_view value, EventFields* out) {
  Reader r(value);
  uint8_t format = 0;
  if (!r.Fixed8(&format)) return Malformed(position, "empty");
  if (format != kEnvelopeFormatV1) {
    return Corruption("event " + std::to_string(position) + ": unknown format " +
                      std::to_string(format));
  }
  if (!r.View(&out->stream) || !r.Fixed64(&out->version) || !r.View(&out->type) ||
      !r.Fixed32(&out->schema) || !r.View(&out->time) || !r.Fixed64(&out->epoch) ||
      !r.View(&out->actor) || !r.View(&out->data) || !r.Raw(&out->prev_hash) ||
      !r.Raw(&out->hash)) {
    return Malformed(position, "truncated");
  }
  if (r.remaining() != 0) return Malformed(position, "trailing bytes");

  Digest computed = HashOf(position, value.substr(1, value.size() - 1 - kDigestSize));
  if (computed != out->hash) {
    return Corruption("event " + std::to_string(position) + ": hash mismatch");
  }
  return Status::Ok();
}

Status DecodeEvent(uint64_t position, std::string_view value, Envelope* env, Digest* raw_hash,
                   Digest* raw_prev_hash) {
  EventFields f;
  RETURN_IF_ERROR(DecodeEventFields(position, value, &f));
  AssignEventFields(position, f, env);
  env->prev_hash = ToHex(f.prev_hash);
  env->hash = ToHex(f.hash);
  if (raw_hash != nullptr) *raw_hash = f.hash;
  if (raw_prev_hash != nullptr) *raw_prev_hash = f.prev_hash;
  return Status::Ok();
}

}  // namespace epoch::storage::codec
