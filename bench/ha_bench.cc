// HA benchmarks (issue 4):
//
//   epoch-bench history N DIR   builds a data dir whose log holds >= N events of real
//                               runs (submitted, placed, started, succeeded) by driving
//                               the engine in-process: the input of the other two.
//   epoch-bench replay DIR      time to start a cold master on DIR's log: full replay,
//                               then from a snapshot plus the tail.
//   epoch-bench failover K [--history DIR]
//                               K cycles of (load, kill -9 the leader, time until the
//                               standby acknowledges a write); p50/p99/max. Real epochd
//                               processes (next to epoch-bench) on one data dir.
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "api/auth.h"
#include "bench/bench.h"
#include "common/json.h"
#include "common/sha256.h"
#include "engine/engine.h"
#include "storage/event_store.h"

namespace epoch::bench {
namespace {

using SteadyClock = std::chrono::steady_clock;

double Seconds(SteadyClock::time_point t0) {
  return std::chrono::duration<double>(SteadyClock::now() - t0).count();
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "epoch-bench: %s\n", what.c_str());
  std::exit(1);
}

// The history driver's containers: launched "instantly" (the bench registers
// them itself and plays their agents in-process).
class InlineBackend : public engine::ContainerBackend {
 public:
  std::string Name() const override { return "local"; }
  Result<std::string> Launch(const engine::ContainerSpec& spec) override {
    std::lock_guard<std::mutex> lock(mu);
    launched.push_back(spec.id);
    return "inline-" + spec.id;
  }
  Status Terminate(const std::string&, const std::string&) override { return Status::Ok(); }
  Result<engine::ContainerDescription> Describe(const std::string&, const std::string&) override {
    return engine::ContainerDescription{engine::ContainerDescription::State::kRunning, "inline", ""};
  }
  std::vector<std::string> Launched() {
    std::lock_guard<std::mutex> lock(mu);
    return launched;
  }
  std::mutex mu;
  std::vector<std::string> launched;
};

std::string SelfDir() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? "." : p.parent_path().string();
}

// One epochd process on a shared data dir, found through its --address-file.
class Master {
 public:
  Master(std::string dir, std::string name) : dir_(std::move(dir)), name_(std::move(name)) {}
  ~Master() { Kill9(); }
  void Launch() {
    std::string addr_file = dir_ + "/" + name_ + ".address";
    std::filesystem::remove(addr_file);
    pid_ = fork();
    if (pid_ < 0) Die("fork failed");
    if (pid_ == 0) {
      std::string log = dir_ + "/" + name_ + ".log";
      if (!freopen(log.c_str(), "a", stderr)) _exit(127);
      std::string bin = SelfDir() + "/epochd";
      std::vector<std::string> args{bin,         "--data-dir",         dir_,
                                    "--set",     "cluster.basePort=0", "--set",
                                    "master.name=" + name_, "--address-file", addr_file,
                                    "--set",     "sig.maxReplicas=2",  "--set",
                                    "sig.minReplicas=2", "--insecure-http"};
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    auto t0 = SteadyClock::now();
    while (Seconds(t0) < 300) {
      std::ifstream in(addr_file);
      std::stringstream ss;
      ss << in.rdbuf();
      auto j = ParseJson(ss.str());
      if (j.ok() && j->contains("address")) {
        url_ = (*j)["address"];
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    Die("epochd " + name_ + " did not bind; see " + dir_ + "/" + name_ + ".log");
  }
  // Waits until /readyz answers (200: leader) or role standby; returns seconds.
  double WaitRole(bool leader) {
    auto t0 = SteadyClock::now();
    while (Seconds(t0) < 600) {
      httplib::Client c(url_);
      c.set_connection_timeout(std::chrono::milliseconds(200));
      auto r = c.Get("/readyz");
      if (r && leader && r->status == 200) return Seconds(t0);
      if (r && !leader && r->body.find("\"standby\"") != std::string::npos) return Seconds(t0);
      std::this_thread::sleep_for(std::chrono::milliseconds(leader ? 2 : 20));
    }
    Die("epochd " + name_ + " did not reach its role");
  }
  void Kill9() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    int st;
    waitpid(pid_, &st, 0);
    pid_ = -1;
  }
  const std::string& url() const { return url_; }

 private:
  std::string dir_, name_, url_;
  pid_t pid_ = -1;
};

const char* kWorkflow = R"({"name":"bench","steps":[{"name":"a","command":["true"]}]})";
// --lineage: each run's step writes a model file of its own, registered as a new
// version of model "m" (a history where the lineage grows with the runs).
const char* kLineageWorkflow = R"({"name":"bench","steps":[{"name":"a","kind":"train",
  "outputs":["m.pt"],"model":{"name":"m"},"command":["true"]}]})";

}  // namespace

int RunHistoryBench(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: epoch-bench history N DIR [--lineage]\n");
    return 2;
  }
  const uint64_t target = std::strtoull(argv[1], nullptr, 10);
  const std::string dir = argv[2];
  const bool lineage = argc > 3 && std::string(argv[3]) == "--lineage";
  std::filesystem::create_directories(dir + "/store");
  auto store = storage::OpenRocksDbEventStore({dir + "/store", true, ""});
  if (!store.ok()) Die(store.status().ToString());
  InlineBackend backend;
  SystemClock clock;
  engine::EngineOptions o;
  o.node = "history";
  o.archive_runs = true;  // as epochd: finished runs go to the read model
  o.advertise_url = "http://127.0.0.1:1";
  o.config.data_dir = dir;
  o.config.max_replicas = 4;
  o.config.min_replicas = 4;
  o.config.container_cpu_millis = 64000;
  o.config.container_memory_bytes = 256LL << 30;
  o.config.lease = std::chrono::hours(1);
  engine::Engine e(o, store->get(), &backend, &clock);
  if (Status st = e.Start(); !st.ok()) Die(st.ToString());
  auto t0 = SteadyClock::now();
  while (backend.Launched().size() < 4 && Seconds(t0) < 10) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  std::vector<std::string> containers = backend.Launched();
  for (const auto& c : containers) {
    engine::RegisterContainer r;
    r.container = c;
    r.cpu_millis = 64000;
    r.memory_bytes = 256LL << 30;
    r.epoch_seen = e.epoch();
    if (auto res = e.Execute(r); !res.ok()) Die(res.status().ToString());
  }
  if (auto r = e.Execute(engine::RegisterWorkflow{
          *ParseJson(lineage ? kLineageWorkflow : kWorkflow), "bench", "default", ""});
      !r.ok()) {
    Die(r.status().ToString());
  }
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> submitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&, t] {
      for (uint64_t i = 0; !stop; ++i) {
        // Keep the queue short: the players below complete what is placed.
        uint64_t queued = e.Read([](const engine::State& s) { return s.queue.size(); });
        if (queued > 2000) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
          continue;
        }
        engine::SubmitRun s;
        s.run_id = "h" + std::to_string(t) + "-" + std::to_string(i);
        s.workflow = "bench";
        if (e.Execute(s).ok()) submitted++;
      }
    });
  }
  for (const auto& c : containers) {
    threads.emplace_back([&, c] {
      while (!stop) {
        engine::DispatchView v = e.DispatchFor(c, {}, {});
        engine::PollContainer p;
        p.container = c;
        p.epoch_seen = e.epoch();
        for (const auto& a : v.assignments) {
          engine::AttemptReport r;
          r.attempt_id = a["attempt_id"];
          r.state = engine::ReportedState::kSucceeded;
          r.exit_code = 0;
          r.usage = Json{{"wall_ms", 1}};
          if (lineage) {
            const std::string id = a["attempt_id"];
            r.outputs =
                Json::array({Json{{"name", "m.pt"}, {"size", 64}, {"sha256", Sha256Hex(id)}}});
          }
          p.reports.push_back(std::move(r));
        }
        if (p.reports.empty()) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
          continue;
        }
        (void)e.Execute(p);
      }
    });
  }
  uint64_t last = 0;
  while (true) {
    uint64_t head = (*store)->Head().position;
    if (head >= target) break;
    if (head / 100000 != last / 100000) {
      std::fprintf(stderr, "  %llu events, %.0f events/s\n", static_cast<unsigned long long>(head),
                   static_cast<double>(head) / Seconds(t0));
    }
    last = head;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  stop = true;
  for (auto& t : threads) t.join();
  double secs = Seconds(t0);
  uint64_t head = (*store)->Head().position;
  e.Stop();
  std::printf("events   runs     seconds  events/s  store_dir\n");
  std::printf("%-8llu %-8llu %-8.1f %-9.0f %s/store\n", static_cast<unsigned long long>(head),
              static_cast<unsigned long long>(submitted.load()), secs,
              static_cast<double>(head) / secs, dir.c_str());
  return 0;
}

int RunVerifyBench(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: epoch-bench verify DIR [K]   (DIR from epoch-bench history)\n");
    return 2;
  }
  const std::string dir = argv[1];
  int rounds = argc > 2 ? std::max(1, std::atoi(argv[2])) : 3;
  auto s = storage::OpenRocksDbEventStore({dir + "/store", false, ""});
  if (!s.ok()) Die(s.status().ToString());
  std::printf("round  events     seconds  events/s   (VerifyChain from position 1)\n");
  bool all_ok = true;
  for (int i = 1; i <= rounds; ++i) {
    auto t0 = SteadyClock::now();
    auto r = (*s)->VerifyChain();
    double secs = Seconds(t0);
    if (!r.ok()) Die(r.status().ToString());
    all_ok = all_ok && r->ok;
    std::printf("%-6d %-10llu %-8.2f %-10.0f %s\n", i, static_cast<unsigned long long>(r->checked),
                secs, static_cast<double>(r->checked) / secs, r->ok ? "ok" : r->problem.c_str());
  }
  return all_ok ? 0 : 1;
}

int RunReplayBench(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: epoch-bench replay DIR   (DIR from epoch-bench history)\n");
    return 2;
  }
  const std::string dir = argv[1];
  SystemClock clock;
  // CPU seconds of this process (every thread): replay reads ahead on a second thread,
  // so load_s alone hides what a busy machine would pay.
  auto cpu_seconds = [] {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    auto secs = [](const timeval& t) {
      return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
    };
    return secs(ru.ru_utime) + secs(ru.ru_stime);
  };
  double load_cpu_s = 0;
  auto start = [&](bool snapshots, double* open_s, double* load_s,
                   std::unique_ptr<storage::EventStore>* store) {
    auto t0 = SteadyClock::now();
    auto s = storage::OpenRocksDbEventStore({dir + "/store", false, ""});
    if (!s.ok()) Die(s.status().ToString());
    *open_s = Seconds(t0);
    *store = std::move(*s);
    engine::EngineOptions o;
    o.config.data_dir = dir;
    o.load_snapshot = snapshots;
    o.archive_runs = true;
    auto e = std::make_unique<engine::Engine>(o, store->get(), nullptr, &clock);
    t0 = SteadyClock::now();
    double cpu0 = cpu_seconds();
    if (Status st = e->StartStandby(); !st.ok()) Die(st.ToString());
    *load_s = Seconds(t0);
    load_cpu_s = cpu_seconds() - cpu0;
    return e;
  };
  std::printf(
      "start          events    open_s  load_s  total_s  load_cpu_s  (cold master: open "
      "the store, rebuild the state)\n");
  std::unique_ptr<storage::EventStore> store;
  double open_s, load_s;
  auto full = start(false, &open_s, &load_s, &store);
  uint64_t head = store->Head().position;
  Json full_digest = full->Read([](const engine::State& s) { return engine::StateDigestJson(s); });
  std::printf("full replay    %-9llu %-7.2f %-7.2f %-8.2f %-7.2f\n",
              static_cast<unsigned long long>(head), open_s, load_s, open_s + load_s, load_cpu_s);
  auto t0 = SteadyClock::now();
  auto snap = full->WriteSnapshot();
  if (!snap.ok()) Die(snap.status().ToString());
  double write_s = Seconds(t0);
  full.reset();
  store.reset();
  auto from_snap = start(true, &open_s, &load_s, &store);
  Json snap_digest =
      from_snap->Read([](const engine::State& s) { return engine::StateDigestJson(s); });
  std::printf("snapshot+tail  %-9llu %-7.2f %-7.2f %-8.2f %-7.2f\n",
              static_cast<unsigned long long>(head), open_s, load_s, open_s + load_s, load_cpu_s);
  std::printf("snapshot at %llu: written in %.2f s; same state as the full replay: %s\n",
              static_cast<unsigned long long>(snap->position), write_s,
              snap_digest == full_digest ? "yes" : "NO");
  return snap_digest == full_digest ? 0 : 1;
}

int RunFailoverBench(int argc, char** argv) {
  int cycles = argc > 1 ? std::atoi(argv[1]) : 10;
  std::string history;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--history") == 0) history = argv[i + 1];
  }
  if (cycles < 1) {
    std::fprintf(stderr, "usage: epoch-bench failover K [--history DIR]\n");
    return 2;
  }
  std::string dir = history;
  bool temp = dir.empty();
  if (temp) {
    char tmpl[] = "/tmp/epoch-failover.XXXXXX";
    if (!mkdtemp(tmpl)) Die("mkdtemp failed");
    dir = tmpl;
  }
  auto made = api::CreateToken(dir + "/tokens.json", "bench", "default", api::Role::kAdmin, "");
  if (!made.ok()) Die(made.status().ToString());
  const std::string token = made->token;
  Master a(dir, "a"), b(dir, "b");
  auto t0 = SteadyClock::now();
  a.Launch();
  a.WaitRole(true);
  double lead_s = Seconds(t0);
  t0 = SteadyClock::now();
  b.Launch();
  b.WaitRole(false);
  double standby_s = Seconds(t0);
  uint64_t events = 0;
  {
    httplib::Client c(a.url());
    c.set_bearer_token_auth(token);
    auto r = c.Get("/v1/cluster");
    if (r && r->status == 200) events = ParseJson(r->body)->at("head").value("position", 0ULL);
    auto reg = c.Post("/v1/workflows", kWorkflow, "application/json");
    if (!reg || reg->status >= 300) Die("register failed");
  }
  std::printf("history: %llu events; cold leader ready in %.2f s, standby in %.2f s\n",
              static_cast<unsigned long long>(events), lead_s, standby_s);
  Master* leader = &a;
  Master* standby = &b;
  std::vector<double> took;
  for (int k = 0; k < cycles; ++k) {
    // Load: 50 runs through the leader, so the standby has something to tail.
    {
      httplib::Client c(leader->url());
      c.set_bearer_token_auth(token);
      for (int i = 0; i < 50; ++i) {
        auto r = c.Post("/v1/runs", R"({"workflow":"bench"})", "application/json");
        if (!r || r->status != 201) Die("load submit failed");
      }
    }
    leader->Kill9();
    auto k0 = SteadyClock::now();
    // Time until the standby acknowledges a durable write.
    while (true) {
      httplib::Client c(standby->url());
      c.set_bearer_token_auth(token);
      c.set_connection_timeout(std::chrono::milliseconds(100));
      auto r = c.Post("/v1/runs", R"({"workflow":"bench"})", "application/json");
      if (r && r->status == 201) break;
      if (Seconds(k0) > 60) Die("the standby did not take over within 60 s");
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    took.push_back(Seconds(k0) * 1000);
    std::fprintf(stderr, "  cycle %d: %.1f ms\n", k + 1, took.back());
    leader->Launch();  // the old leader comes back as the standby
    leader->WaitRole(false);
    std::swap(leader, standby);
  }
  std::sort(took.begin(), took.end());
  auto pct = [&](double p) {
    size_t i = static_cast<size_t>(p * static_cast<double>(took.size() - 1) + 0.5);
    return took[std::min(i, took.size() - 1)];
  };
  std::printf("cycles  p50_ms  p99_ms  max_ms  (kill -9 of the leader -> standby acknowledges a write)\n");
  std::printf("%-7d %-7.1f %-7.1f %-7.1f\n", cycles, pct(0.5), pct(0.99), took.back());
  a.Kill9();
  b.Kill9();
  // The containers outlive their masters by design; the bench stops its own.
  std::string pkill = "pkill -KILL -f 'epoch-agent .*--data-dir " + dir + "' 2>/dev/null";
  (void)std::system(pkill.c_str());
  if (temp) std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace epoch::bench
