#include "common/sha256.h"

#include <openssl/evp.h>

#include <cerrno>
#include <cstring>
#include <fstream>

namespace epoch {

namespace {

// The SHA-256 implementation, fetched once: EVP_sha256() makes OpenSSL 3 look the
// algorithm up in its provider on every EVP_DigestInit (about 0.2 us, as much as
// hashing a 250-byte event).
const EVP_MD* Md() {
  static const EVP_MD* const md = [] {
    const EVP_MD* fetched = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    return fetched != nullptr ? fetched : EVP_sha256();
  }();
  return md;
}

}  // namespace

struct Sha256::Impl {
  EVP_MD_CTX* ctx = nullptr;
};

Sha256::Sha256() : impl_(std::make_unique<Impl>()) {
  impl_->ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(impl_->ctx, Md(), nullptr);
}

Sha256::~Sha256() { EVP_MD_CTX_free(impl_->ctx); }

void Sha256::Update(std::string_view bytes) {
  EVP_DigestUpdate(impl_->ctx, bytes.data(), bytes.size());
}

Digest Sha256::Finish() {
  Digest d{};
  unsigned int len = 0;
  EVP_DigestFinal_ex(impl_->ctx, d.data(), &len);
  return d;
}

Digest Sha256Of(std::string_view bytes) {
  Digest d{};
  unsigned int len = 0;
  EVP_Digest(bytes.data(), bytes.size(), d.data(), &len, Md(), nullptr);
  return d;
}

Digest Sha256Of(std::string_view first, std::string_view second) {
  // One context per thread, reset by each init: no allocation per hash.
  thread_local struct Ctx {
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    ~Ctx() { EVP_MD_CTX_free(ctx); }
  } c;
  Digest d{};
  unsigned int len = 0;
  EVP_DigestInit_ex(c.ctx, Md(), nullptr);
  EVP_DigestUpdate(c.ctx, first.data(), first.size());
  EVP_DigestUpdate(c.ctx, second.data(), second.size());
  EVP_DigestFinal_ex(c.ctx, d.data(), &len);
  return d;
}

std::string ToHex(const Digest& d) {
  static const char* kHex = "0123456789abcdef";
  std::string s(64, '0');
  for (size_t i = 0; i < d.size(); ++i) {
    s[2 * i] = kHex[d[i] >> 4];
    s[2 * i + 1] = kHex[d[i] & 15];
  }
  return s;
}

std::string Sha256Hex(std::string_view bytes) { return ToHex(Sha256Of(bytes)); }

Result<Digest> DigestFromHex(std::string_view hex) {
  if (hex.size() != 64) return InvalidArgument("a SHA-256 digest is 64 hex digits");
  Digest d{};
  auto nib = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < 32; ++i) {
    int hi = nib(hex[2 * i]), lo = nib(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return InvalidArgument("invalid hex digit in digest");
    d[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return d;
}

Result<std::string> Sha256FileHex(const std::string& path, uint64_t* size_out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot open " + path + ": " + std::strerror(errno));
  Sha256 h;
  char buf[1 << 16];
  uint64_t total = 0;
  while (in) {
    in.read(buf, sizeof(buf));
    std::streamsize n = in.gcount();
    if (n > 0) {
      h.Update(std::string_view(buf, static_cast<size_t>(n)));
      total += static_cast<uint64_t>(n);
    }
  }
  if (in.bad()) return Internal("reading " + path + " failed");
  if (size_out) *size_out = total;
  return ToHex(h.Finish());
}

}  // namespace epoch
