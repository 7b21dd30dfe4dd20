// Starts a real epochd (the binary next to epoch-bench) on a temp data dir for
// the end-to-end benchmarks, and stops it and its containers afterwards.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace epoch::bench {

class EpochdProcess {
 public:
  // sets: --set key=value pairs. Returns with the server ready, or exits(1).
  explicit EpochdProcess(const std::vector<std::string>& sets);
  ~EpochdProcess();
  const std::string& url() const { return url_; }
  pid_t pid() const { return pid_; }
  // An admin token for this epochd (added to its data dir's tokens.json).
  const std::string& token() const { return token_; }
  // With EPOCH_BENCH_TLS=1 (HTTPS): the generated certificate to trust; else empty.
  std::string ca() const { return url_.rfind("https://", 0) == 0 ? dir_ + "/tls/cert.pem" : ""; }

 private:
  std::string dir_, url_, token_;
  pid_t pid_ = -1;
};

}  // namespace epoch::bench
