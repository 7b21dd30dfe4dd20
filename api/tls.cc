#include "api/tls.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>

#include "common/fd.h"
#include "common/files.h"

namespace epoch::api {

namespace {

struct Free {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(BIGNUM* p) const { BN_free(p); }
};
template <typename T>
using Ptr = std::unique_ptr<T, Free>;

std::string OpenSslError(const std::string& what) {
  std::string out = what;
  unsigned long e;
  while ((e = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    out += ": ";
    out += buf;
  }
  return out;
}

bool IsIp(const std::string& h) {
  unsigned char buf[16];
  return inet_pton(AF_INET, h.c_str(), buf) == 1 || inet_pton(AF_INET6, h.c_str(), buf) == 1;
}

Status AddExtension(X509* cert, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
  Ptr<X509_EXTENSION> ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str()));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    return Internal(OpenSslError("certificate extension " + value));
  }
  return Status::Ok();
}

Status WritePem(const std::string& path, mode_t mode, const std::function<int(BIO*)>& encode) {
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
  if (!fd) return Internal("creating " + path + ": " + std::strerror(errno));
  Ptr<BIO> mem(BIO_new(BIO_s_mem()));
  if (!mem || encode(mem.get()) != 1) return Internal(OpenSslError("encoding " + path));
  char* data = nullptr;
  long n = BIO_get_mem_data(mem.get(), &data);
  bool ok = WriteFully(fd.get(), data, static_cast<size_t>(n)) && fsync(fd.get()) == 0;
  int err = errno;
  fd.reset();
  if (!ok) return Internal("writing " + path + ": " + std::strerror(err));
  return Status::Ok();
}

Status Generate(const std::string& dir, const std::vector<std::string>& hosts) {
  Ptr<EVP_PKEY> key(EVP_EC_gen("P-256"));
  if (!key) return Internal(OpenSslError("generating an EC P-256 key"));
  Ptr<X509> cert(X509_new());
  if (!cert) return Internal(OpenSslError("X509_new"));
  X509_set_version(cert.get(), 2);  // v3
  unsigned char serial[16];
  if (RAND_bytes(serial, sizeof(serial)) != 1) return Internal(OpenSslError("RAND_bytes"));
  serial[0] &= 0x7f;  // positive
  Ptr<BIGNUM> bn(BN_bin2bn(serial, sizeof(serial), nullptr));
  if (!bn || !BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert.get()))) {
    return Internal(OpenSslError("serial number"));
  }
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -60 * 60);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 10L * 365 * 24 * 60 * 60);
  X509_set_pubkey(cert.get(), key.get());
  X509_NAME* name = X509_get_subject_name(cert.get());
  char hostname[256] = "epoch";
  gethostname(hostname, sizeof(hostname) - 1);
  std::string cn = "Epoch master (" + std::string(hostname) + ")";
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>("Epoch"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert.get(), name);
  std::vector<std::string> all{"localhost", "127.0.0.1", "::1"};
  for (const auto& h : hosts) {
    if (!h.empty() && h != "0.0.0.0" && h != "::" &&
        std::find(all.begin(), all.end(), h) == all.end()) {
      all.push_back(h);
    }
  }
  std::string san;
  for (const auto& h : all) san += (san.empty() ? "" : ",") + std::string(IsIp(h) ? "IP:" : "DNS:") + h;
  RETURN_IF_ERROR(AddExtension(cert.get(), NID_subject_alt_name, san));
  // Self-signed and its own trust anchor: clients give this file as the CA (--cacert).
  RETURN_IF_ERROR(AddExtension(cert.get(), NID_basic_constraints, "critical,CA:TRUE"));
  RETURN_IF_ERROR(AddExtension(cert.get(), NID_key_usage,
                               "critical,digitalSignature,keyCertSign"));
  RETURN_IF_ERROR(AddExtension(cert.get(), NID_ext_key_usage, "serverAuth"));
  RETURN_IF_ERROR(AddExtension(cert.get(), NID_subject_key_identifier, "hash"));
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) <= 0) {
    return Internal(OpenSslError("signing the certificate"));
  }
  RETURN_IF_ERROR(WritePem(dir + "/key.pem", 0600, [&](BIO* b) {
    return PEM_write_bio_PrivateKey(b, key.get(), nullptr, nullptr, 0, nullptr, nullptr);
  }));
  return WritePem(dir + "/cert.pem", 0644,
                  [&](BIO* b) { return PEM_write_bio_X509(b, cert.get()); });
}

Result<Ptr<X509>> ReadCertificate(const std::string& path) {
  Ptr<BIO> bio(BIO_new_file(path.c_str(), "r"));
  if (!bio) return NotFound(OpenSslError("cannot read the certificate " + path));
  Ptr<X509> cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) return InvalidArgument(OpenSslError(path + " is not a PEM certificate"));
  return cert;
}

}  // namespace

Result<TlsFiles> EnsureSelfSignedCertificate(const std::string& dir,
                                             const std::vector<std::string>& hosts) {
  TlsFiles files{dir + "/cert.pem", dir + "/key.pem", false};
  if (PathExists(files.certificate) && PathExists(files.key)) return files;
  if (PathExists(dir)) {
    return FailedPrecondition(dir + " exists but lacks cert.pem or key.pem: remove it to have a "
                              "new certificate generated, or set cluster.tlsCertificate and "
                              "cluster.tlsKey");
  }
  std::string tmp = dir + ".tmp." + std::to_string(getpid());
  std::error_code ec;
  std::filesystem::remove_all(tmp, ec);
  if (mkdir(tmp.c_str(), 0711) != 0) {  // cert.pem readable by path, key.pem 0600
    return Internal("creating " + tmp + ": " + std::strerror(errno));
  }
  Status st = Generate(tmp, hosts);
  if (!st.ok()) {
    std::filesystem::remove_all(tmp, ec);
    return st;
  }
  // rename(2) of a directory onto an existing non-empty one fails: whoever renamed
  // first wins and everyone uses that pair.
  if (rename(tmp.c_str(), dir.c_str()) == 0) {
    files.generated = true;
  } else {
    std::filesystem::remove_all(tmp, ec);
    if (!PathExists(files.certificate)) {
      return Internal("installing " + dir + ": " + std::strerror(errno));
    }
  }
  return files;
}

Result<std::string> CertificateFingerprint(const std::string& cert_path) {
  ASSIGN_OR_RETURN(auto cert, ReadCertificate(cert_path));
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (X509_digest(cert.get(), EVP_sha256(), md, &n) != 1) {
    return Internal(OpenSslError("fingerprint"));
  }
  std::string out = "SHA256 ";
  char hex[4];
  for (unsigned int i = 0; i < n; ++i) {
    std::snprintf(hex, sizeof(hex), i + 1 < n ? "%02X:" : "%02X", md[i]);
    out += hex;
  }
  return out;
}

Status CheckKeyPair(const std::string& cert_path, const std::string& key_path) {
  ASSIGN_OR_RETURN(auto cert, ReadCertificate(cert_path));
  Ptr<BIO> bio(BIO_new_file(key_path.c_str(), "r"));
  if (!bio) return NotFound(OpenSslError("cannot read the key " + key_path));
  Ptr<EVP_PKEY> key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key) return InvalidArgument(OpenSslError(key_path + " is not a PEM private key"));
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    ERR_clear_error();
    return InvalidArgument(key_path + " is not the key of " + cert_path);
  }
  return Status::Ok();
}

bool IsLoopbackHost(const std::string& host) {
  if (host == "localhost" || host == "::1") return true;
  in_addr a{};
  if (inet_pton(AF_INET, host.c_str(), &a) == 1) return (ntohl(a.s_addr) >> 24) == 127;
  return false;
}

}  // namespace epoch::api
