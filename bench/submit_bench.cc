// epoch-bench submit [--clients K,...] [--seconds S] [--keys] [--timeout S]: runs/s
// acknowledged durably over HTTP by K concurrent keep-alive clients, with p50/p99/max
// latency. epochd runs with no containers (sig.maxReplicas=0), so every run stays
// queued and the figure is the submit path: HTTP, decide, group-committed fsync, answer.
//
// Errors are counted by kind (an HTTP status, or the client's transport error). After
// each row the bench asks epochd how many runs it now holds: `created` beside the
// acknowledged `runs`. Their difference, `unseen`, counts writes epochd made that the
// client saw fail (a timeout or a reset after the request was sent); a client that
// retries those without an Idempotency-Key runs them twice. It must be 0. With
// --keys every submission carries its own Idempotency-Key, and a submission that got
// no answer, or a 503, is sent again with the same key until it is answered (the
// `retried` column), which is how a client makes such an outcome safe.
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench.h"
#include "bench/epochd_process.h"

namespace epoch::bench {

namespace {

void Configure(httplib::Client& cli, const EpochdProcess& epochd, double timeout_s) {
  cli.set_bearer_token_auth(epochd.token());
  if (!epochd.ca().empty()) cli.set_ca_cert_path(epochd.ca().c_str());
  cli.set_tcp_nodelay(true);
  cli.set_keep_alive(true);
  // A durable write may wait behind a slow fsync: the latency columns show it. A
  // client that gives up sooner than the server answers turns an acknowledged write
  // into an apparent failure.
  auto t = std::chrono::duration_cast<std::chrono::microseconds>(
      std::chrono::duration<double>(timeout_s));
  cli.set_read_timeout(t);
  cli.set_write_timeout(t);
  cli.set_connection_timeout(t);
}

// A gauge of epochd's /metrics (`name` with its labels, then a space); -1 if unknown.
long long Gauge(httplib::Client& cli, const std::string& name) {
  auto r = cli.Get("/metrics");
  if (!r || r->status != 200) return -1;
  size_t at = r->body.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::atoll(r->body.c_str() + at + name.size() + 2);
}

// The runs epochd holds (it places none: all are queued). Called between rows, it
// first waits (up to 5 s) until epochd has let go of the last row's connections, so
// that the next row's clients do not meet api.maxConnectionsPerClient while it does.
long long QueuedRuns(const EpochdProcess& epochd) {
  httplib::Client cli(epochd.url());
  Configure(cli, epochd, 60);
  for (int i = 0; i < 500 && Gauge(cli, "epoch_http_connections") > 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return Gauge(cli, "epoch_runs{state=\"queued\"}");
}

}  // namespace

int RunSubmitBench(int argc, char** argv) {
  std::vector<int> clients{1, 8, 32};
  double seconds = 3;
  double timeout_s = 60;
  bool keys = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--clients") == 0 && i + 1 < argc) {
      clients.clear();
      std::stringstream ss(argv[++i]);
      std::string item;
      while (std::getline(ss, item, ',')) clients.push_back(std::atoi(item.c_str()));
    } else if (std::strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
      seconds = std::atof(argv[++i]);
    } else if (std::strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
      timeout_s = std::atof(argv[++i]);
    } else if (std::strcmp(argv[i], "--keys") == 0) {
      keys = true;
    } else {
      std::fprintf(stderr,
                   "usage: epoch-bench submit [--clients 1,8,32] [--seconds 3] [--keys] "
                   "[--timeout 60]\n");
      return 2;
    }
  }
  EpochdProcess epochd({"sig.maxReplicas=0"});
  {
    httplib::Client cli(epochd.url());
    Configure(cli, epochd, timeout_s);
    auto reg = cli.Post("/v1/workflows",
                        R"({"name":"bench","steps":[{"name":"a","command":["true"]}]})",
                        "application/json");
    if (!reg || reg->status >= 300) {
      std::fprintf(stderr, "register failed\n");
      return 1;
    }
  }
  std::printf(
      "clients  runs     seconds  runs/s   p50_ms  p99_ms  max_ms   errors  retried  created  "
      "unseen\n");
  for (int k : clients) {
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> retried{0};
    std::mutex mu;
    std::vector<double> latencies;
    std::map<std::string, uint64_t> errors;  // by kind
    long long before = QueuedRuns(epochd);
    std::vector<std::thread> threads;
    auto t0 = std::chrono::steady_clock::now();
    for (int c = 0; c < k; ++c) {
      threads.emplace_back([&, c] {
        httplib::Client cli(epochd.url());
        Configure(cli, epochd, timeout_s);
        std::vector<double> mine;
        std::map<std::string, uint64_t> my_errors;
        uint64_t seq = 0;
        while (!stop) {
          httplib::Headers headers;
          if (keys) {
            headers.emplace("Idempotency-Key", "bench-" + std::to_string(k) + "-" +
                                                   std::to_string(c) + "-" + std::to_string(seq++));
          }
          auto s = std::chrono::steady_clock::now();
          auto r = cli.Post("/v1/runs", headers, R"({"workflow":"bench"})", "application/json");
          // With a key, an unknown outcome is asked again (the same key: never a second
          // run) until it is answered.
          for (int tries = 0; keys && (!r || r->status == 503) && tries < 20; ++tries) {
            retried++;
            r = cli.Post("/v1/runs", headers, R"({"workflow":"bench"})", "application/json");
          }
          auto e = std::chrono::steady_clock::now();
          if (!r || (r->status != 201 && r->status != 200)) {
            std::string kind =
                r ? "HTTP " + std::to_string(r->status) : httplib::to_string(r.error());
            if (my_errors[kind]++ == 0) {
              std::fprintf(stderr, "client %d: %s%s\n", c, kind.c_str(),
                           r ? (": " + r->body.substr(0, 200)).c_str() : "");
            }
            continue;
          }
          mine.push_back(std::chrono::duration<double, std::milli>(e - s).count());
        }
        std::lock_guard<std::mutex> lock(mu);
        latencies.insert(latencies.end(), mine.begin(), mine.end());
        for (const auto& [kind, n] : my_errors) errors[kind] += n;
      });
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    stop = true;
    for (auto& t : threads) t.join();
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    long long after = QueuedRuns(epochd);
    std::sort(latencies.begin(), latencies.end());
    auto pct = [&](double p) {
      return latencies.empty() ? 0.0 : latencies[static_cast<size_t>(p * (latencies.size() - 1))];
    };
    uint64_t n_errors = 0;
    std::string kinds;
    for (const auto& [kind, n] : errors) {
      n_errors += n;
      kinds += (kinds.empty() ? "" : ", ") + kind + " x" + std::to_string(n);
    }
    long long created = before >= 0 && after >= 0 ? after - before : -1;
    long long unseen = created >= 0 ? created - static_cast<long long>(latencies.size()) : -1;
    std::printf("%-8d %-8zu %-8.2f %-8.0f %-7.2f %-7.2f %-8.1f %-7llu %-8llu %-8lld %lld\n", k,
                latencies.size(), secs, latencies.size() / secs, pct(0.5), pct(0.99),
                latencies.empty() ? 0.0 : latencies.back(),
                static_cast<unsigned long long>(n_errors),
                static_cast<unsigned long long>(retried.load()), created, unseen);
    if (!kinds.empty()) std::printf("         errors: %s\n", kinds.c_str());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace epoch::bench
