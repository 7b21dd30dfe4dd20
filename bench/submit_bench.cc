// epoch-bench submit [--clients K,...] [--seconds S]: runs/s acknowledged durably
// over HTTP by K concurrent keep-alive clients, with p50/p99 latency. epochd runs
// with no containers (sig.maxReplicas=0), so every run stays queued and the
// figure is the submit path: HTTP, decide, group-committed fsync, answer.
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench.h"
#include "bench/epochd_process.h"

namespace epoch::bench {

int RunSubmitBench(int argc, char** argv) {
  std::vector<int> clients{1, 8, 32};
  double seconds = 3;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--clients") == 0 && i + 1 < argc) {
      clients.clear();
      std::stringstream ss(argv[++i]);
      std::string item;
      while (std::getline(ss, item, ',')) clients.push_back(std::atoi(item.c_str()));
    } else if (std::strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
      seconds = std::atof(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: epoch-bench submit [--clients 1,8,32] [--seconds 3]\n");
      return 2;
    }
  }
  EpochdProcess epochd({"sig.maxReplicas=0"});
  {
    httplib::Client cli(epochd.url());
    cli.set_bearer_token_auth(epochd.token());
    if (!epochd.ca().empty()) cli.set_ca_cert_path(epochd.ca().c_str());
    auto reg = cli.Post("/v1/workflows",
                        R"({"name":"bench","steps":[{"name":"a","command":["true"]}]})",
                        "application/json");
    if (!reg || reg->status >= 300) {
      std::fprintf(stderr, "register failed\n");
      return 1;
    }
  }
  std::printf("clients  runs     seconds  runs/s   p50_ms  p99_ms  errors\n");
  for (int k : clients) {
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> errors{0};
    std::mutex mu;
    std::vector<double> latencies;
    std::vector<std::thread> threads;
    auto t0 = std::chrono::steady_clock::now();
    for (int c = 0; c < k; ++c) {
      threads.emplace_back([&] {
        httplib::Client cli(epochd.url());
        cli.set_bearer_token_auth(epochd.token());
        if (!epochd.ca().empty()) cli.set_ca_cert_path(epochd.ca().c_str());
        cli.set_tcp_nodelay(true);
        cli.set_keep_alive(true);
        std::vector<double> mine;
        while (!stop) {
          auto s = std::chrono::steady_clock::now();
          auto r = cli.Post("/v1/runs", R"({"workflow":"bench"})", "application/json");
          auto e = std::chrono::steady_clock::now();
          if (!r || r->status != 201) {
            if (errors++ == 0) {
              std::fprintf(stderr, "first error: %s\n",
                           r ? (std::to_string(r->status) + " " + r->body).c_str()
                             : httplib::to_string(r.error()).c_str());
            }
            continue;
          }
          mine.push_back(std::chrono::duration<double, std::milli>(e - s).count());
        }
        std::lock_guard<std::mutex> lock(mu);
        latencies.insert(latencies.end(), mine.begin(), mine.end());
      });
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    stop = true;
    for (auto& t : threads) t.join();
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::sort(latencies.begin(), latencies.end());
    auto pct = [&](double p) {
      return latencies.empty() ? 0.0 : latencies[static_cast<size_t>(p * (latencies.size() - 1))];
    };
    std::printf("%-8d %-8zu %-8.2f %-8.0f %-7.2f %-7.2f %llu\n", k, latencies.size(), secs,
                latencies.size() / secs, pct(0.5), pct(0.99),
                static_cast<unsigned long long>(errors.load()));
  }
  return 0;
}

}  // namespace epoch::bench
