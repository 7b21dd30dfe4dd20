// epoch-bench containers [N...] [--seconds S] [--rate R] [--set key=value]...: N
// simulated containers (bench/sim_containers.h: asynchronous clients in this process,
// one connection each, no thread per container) against a real epochd. They register
// and long-poll; while they do, runs of a one-step no-op workflow are submitted at R
// runs/s for S seconds, and each attempt is reported succeeded by the container it
// was assigned to. Per N: dispatch latency (POST /v1/runs sent -> the assignment
// read by a simulated container), and epochd's threads, RSS and CPU seconds.
#include <httplib.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench.h"
#include "bench/epochd_process.h"
#include "bench/sim_containers.h"
#include "common/files.h"
#include "common/json.h"

namespace epoch::bench {

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// Submitting clients: each sends every K-th run at its scheduled time.
constexpr int kSubmitters = 8;

struct ProcSample {
  int threads = 0;
  int64_t rss_bytes = 0;
  double cpu_s = 0;  // user + system
};

// /proc/<pid>/status Threads and /proc/<pid>/stat utime, stime, rss; zeros if gone.
ProcSample SampleProc(pid_t pid) {
  ProcSample s;
  std::string p = "/proc/" + std::to_string(pid);
  if (auto st = ReadFile(p + "/status", 1 << 16); st.ok()) {
    auto at = st->find("\nThreads:");
    if (at != std::string::npos) s.threads = std::atoi(st->c_str() + at + 9);
  }
  if (auto stat = ReadFile(p + "/stat", 1 << 16); stat.ok()) {
    // "pid (comm) S ppid ...": fields after the last ')' start at field 3 (state).
    auto close = stat->rfind(')');
    if (close != std::string::npos) {
      std::vector<std::string> f;
      size_t at = close + 2;
      while (at < stat->size()) {
        size_t sp = stat->find(' ', at);
        if (sp == std::string::npos) sp = stat->size();
        f.push_back(stat->substr(at, sp - at));
        at = sp + 1;
      }
      // f[0] is field 3; utime 14, stime 15, rss 24 (pages).
      if (f.size() > 21) {
        double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
        s.cpu_s = (std::atof(f[11].c_str()) + std::atof(f[12].c_str())) / tick;
        s.rss_bytes = std::atoll(f[21].c_str()) * sysconf(_SC_PAGESIZE);
      }
    }
  }
  return s;
}

// Room for n containers' connections here and in epochd (which inherits the limit):
// as root the hard limit is raised too. Returns the soft limit now in force.
rlim_t RaiseFileLimit(int n) {
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  rlim_t want = static_cast<rlim_t>(2 * n + 8192);
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) {
    rlimit raised{want, want};
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) return want;
  }
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  getrlimit(RLIMIT_NOFILE, &rl);
  return rl.rlim_cur;
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

struct Row {
  int n = 0;
  double register_s = 0;
  int64_t registered = 0, submitted = 0, completed = 0, errors = 0;
  size_t dispatched = 0;
  double p50 = 0, p99 = 0, max = 0;
  int threads = 0;   // the most seen
  int64_t rss = 0;   // the most seen
  double cpu_s = 0;  // epochd's, while runs were submitted and drained
  std::string last_error;
};

Row RunOnce(int n, double seconds, double rate, const std::vector<std::string>& extra) {
  Row row;
  row.n = n;
  char tmpl[] = "/tmp/epoch-bench-sim.XXXXXX";
  std::string dir = mkdtemp(tmpl);
  std::string handoff = dir + "/handoff", script = dir + "/fake-agent";
  if (Status st = SimContainers::WriteFakeAgent(script, handoff); !st.ok()) {
    std::fprintf(stderr, "epoch-bench: %s\n", st.ToString().c_str());
    std::exit(1);
  }
  std::string cap = std::to_string(n + 1000);
  std::vector<std::string> sets = {
      "sig.minReplicas=" + std::to_string(n),
      "sig.maxReplicas=" + std::to_string(n),
      "executor.agentPath=" + script,
      // Launching thousands takes a while: none may be lost as never registered.
      "executor.registerTimeout=30m",
      // Long polls of 30 s, as a fleet of thousands would run (the default 1 s makes N
      // polls a second); the lease outlasts a poll. --set overrides either.
      "executor.pollTimeout=30s",
      "executor.leaseTime=90s",
      "api.maxConnections=" + cap,
      "api.maxConnectionsPerClient=" + cap,
  };
  sets.insert(sets.end(), extra.begin(), extra.end());
  std::optional<EpochdProcess> epochd(std::in_place, sets);
  pid_t pid = epochd->pid();

  std::atomic<bool> sampling{true};
  std::mutex mu;
  ProcSample peak;
  std::thread sampler([&] {
    while (sampling) {
      ProcSample s = SampleProc(pid);
      {
        std::lock_guard<std::mutex> lock(mu);
        peak.threads = std::max(peak.threads, s.threads);
        peak.rss_bytes = std::max(peak.rss_bytes, s.rss_bytes);
      }
      std::this_thread::sleep_for(200ms);
    }
  });

  SimContainers sims({.master_url = epochd->url(), .handoff_file = handoff});
  if (Status st = sims.Start(); !st.ok()) {
    std::fprintf(stderr, "epoch-bench: %s\n", st.ToString().c_str());
    std::exit(1);
  }
  auto t_reg = Clock::now();
  // All N registered, and each with a long poll in flight.
  auto last_print = t_reg;
  while (true) {
    SimStats s = sims.Stats();
    if (s.registered >= n && s.in_flight >= n) break;
    if (Clock::now() - t_reg > 30min) {
      std::fprintf(stderr, "epoch-bench: only %lld of %d registered\n",
                   static_cast<long long>(s.registered), n);
      break;
    }
    if (Clock::now() - last_print > 5s) {
      std::fprintf(stderr, "  N=%d: %lld handed over, %lld registered, %lld polls parked\n", n,
                   static_cast<long long>(s.handed_over), static_cast<long long>(s.registered),
                   static_cast<long long>(s.in_flight));
      last_print = Clock::now();
    }
    std::this_thread::sleep_for(20ms);
  }
  row.register_s = std::chrono::duration<double>(Clock::now() - t_reg).count();
  row.registered = sims.Stats().registered;

  {
    httplib::Client cli(epochd->url());
    cli.set_bearer_token_auth(epochd->token());
    auto reg = cli.Post("/v1/workflows",
                        R"({"name":"noop","steps":[{"name":"noop","command":["true"],)"
                        R"("resources":{"cpu":"1","memory":"64Mi"}}]})",
                        "application/json");
    if (!reg || reg->status >= 300) {
      std::fprintf(stderr, "epoch-bench: registering the workflow failed: %s\n",
                   reg ? reg->body.c_str() : "no connection");
      std::exit(1);
    }
  }
  ProcSample before = SampleProc(pid);
  const int64_t total = std::max<int64_t>(1, static_cast<int64_t>(seconds * rate));
  std::map<std::string, Clock::time_point> sent;  // run id -> when its POST was sent
  std::atomic<int64_t> submit_errors{0};
  auto t0 = Clock::now();
  std::vector<std::thread> submitters;
  for (int k = 0; k < kSubmitters; ++k) {
    submitters.emplace_back([&, k] {
      httplib::Client cli(epochd->url());
      cli.set_bearer_token_auth(epochd->token());
      cli.set_tcp_nodelay(true);
      cli.set_keep_alive(true);
      for (int64_t i = k; i < total; i += kSubmitters) {
        std::this_thread::sleep_until(
            t0 + std::chrono::duration_cast<Clock::duration>(
                     std::chrono::duration<double>(static_cast<double>(i) / rate)));
        auto at = Clock::now();
        auto r = cli.Post("/v1/runs", R"({"workflow":"noop"})", "application/json");
        auto id = ParseJson(r && r->status == 201 ? r->body : "");
        if (!id.ok() || !id->is_object() || !id->contains("id")) {
          submit_errors++;
          continue;
        }
        std::lock_guard<std::mutex> lock(mu);
        sent[(*id)["id"].get<std::string>()] = at;
      }
    });
  }
  for (auto& t : submitters) t.join();
  row.submitted = total - submit_errors;
  // Drain: every submitted run's attempt assigned and reported, or 60 s.
  auto drain = Clock::now();
  while (sims.Stats().completed < row.submitted && Clock::now() - drain < 60s) {
    std::this_thread::sleep_for(20ms);
  }
  ProcSample after = SampleProc(pid);
  sampling = false;
  sampler.join();

  std::vector<double> ms;
  for (const SimAssignment& a : sims.TakeAssignments()) {
    auto it = sent.find(a.run);
    if (it == sent.end()) continue;
    ms.push_back(std::chrono::duration<double, std::milli>(a.received - it->second).count());
  }
  SimStats s = sims.Stats();
  row.dispatched = ms.size();
  row.p50 = Percentile(ms, 0.50);
  row.p99 = Percentile(ms, 0.99);
  row.max = Percentile(ms, 1.0);
  row.completed = s.completed;
  row.errors = s.errors + submit_errors;
  row.last_error = s.last_error;
  row.threads = peak.threads;
  row.rss = peak.rss_bytes;
  row.cpu_s = after.cpu_s - before.cpu_s;
  sims.Stop();
  epochd.reset();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return row;
}

}  // namespace

int RunContainersBench(int argc, char** argv) {
  std::vector<int> ns;
  double seconds = 10, rate = 20;
  std::vector<std::string> sets;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
      seconds = std::atof(argv[++i]);
    } else if (std::strcmp(argv[i], "--rate") == 0 && i + 1 < argc) {
      rate = std::atof(argv[++i]);
    } else if (std::strcmp(argv[i], "--set") == 0 && i + 1 < argc) {
      sets.push_back(argv[++i]);
    } else if (std::atoi(argv[i]) > 0) {
      ns.push_back(std::atoi(argv[i]));
    } else {
      std::fprintf(stderr,
                   "usage: epoch-bench containers [N...] [--seconds 10] [--rate 20] "
                   "[--set key=value]...\n");
      return 2;
    }
  }
  if (ns.empty()) ns = {100, 1000, 10000};
  if (seconds <= 0 || rate <= 0) {
    std::fprintf(stderr, "epoch-bench: --seconds and --rate must be positive\n");
    return 2;
  }
  if (const char* tls = std::getenv("EPOCH_BENCH_TLS"); tls && std::string(tls) == "1") {
    std::fprintf(stderr, "epoch-bench containers: simulated containers speak plain HTTP only\n");
    return 2;
  }
  rlim_t files = RaiseFileLimit(*std::max_element(ns.begin(), ns.end()));
  std::printf("# %g runs/s for %g s; RLIMIT_NOFILE %llu\n", rate, seconds,
              static_cast<unsigned long long>(files));
  std::printf(
      "N       reg_s   runs   done   p50_ms  p99_ms  max_ms  threads  rss_MB  cpu_s  "
      "errors\n");
  std::fflush(stdout);
  bool ok = true;
  for (int n : ns) {
    Row r = RunOnce(n, seconds, rate, sets);
    std::printf("%-7d %-7.1f %-6lld %-6lld %-7.1f %-7.1f %-7.1f %-8d %-7.0f %-6.1f %lld\n", r.n,
                r.register_s, static_cast<long long>(r.submitted),
                static_cast<long long>(r.completed), r.p50, r.p99, r.max, r.threads,
                static_cast<double>(r.rss) / (1 << 20), r.cpu_s, static_cast<long long>(r.errors));
    if (r.errors > 0 && !r.last_error.empty()) {
      std::printf("#   last error: %s\n", r.last_error.c_str());
    }
    std::fflush(stdout);
    ok &= r.registered == n && r.completed == r.submitted &&
          r.dispatched == static_cast<size_t>(r.submitted);
  }
  return ok ? 0 : 1;
}

}  // namespace epoch::bench
