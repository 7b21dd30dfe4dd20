// TLS material for epochd: HTTPS is the default. With no certificate configured,
// the first epochd on a data dir generates a self-signed one (OpenSSL, EC P-256,
// SHA-256, 10 years) into <data-dir>/tls/{cert.pem,key.pem}; the key is 0600.
// Every master of the data dir serves the same certificate, so clients and agents
// keep trusting it across failovers.
//
// Thread-safety: free functions, no shared state.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"

namespace epoch::api {

struct TlsFiles {
  std::string certificate;  // PEM
  std::string key;          // PEM
  bool generated = false;   // made by this call
};

// <dir>/cert.pem and key.pem, generated if either is missing. `hosts` become the
// certificate's subjectAltNames (IP addresses as iPAddress, the rest as dNSName);
// "localhost" and 127.0.0.1 are always included. Two masters racing agree on one
// pair (the pair is written to a temp dir and renamed into place).
Result<TlsFiles> EnsureSelfSignedCertificate(const std::string& dir,
                                             const std::vector<std::string>& hosts);

// "SHA256 AB:CD:..." of the certificate (the DER), as `openssl x509 -fingerprint
// -sha256` prints it, so a user can compare what a client shows.
Result<std::string> CertificateFingerprint(const std::string& cert_path);

// Checks that the files exist and the key matches the certificate.
Status CheckKeyPair(const std::string& cert_path, const std::string& key_path);

// True for 127.0.0.0/8, ::1 and "localhost".
bool IsLoopbackHost(const std::string& host);

}  // namespace epoch::api
