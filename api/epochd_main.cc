// epochd: the Epoch master. The composition root: the only file that knows
// every concrete type (RocksDB store, local container backend, HTTP server).
//
//   epochd --data-dir DIR [--advertise URL] [--values FILE.json] [--set key=value]...
//          [--log-format text|json] [--log-level info]
//
// Every epochd on the same data dir competes for leader.lock: the holder leads,
// the others are hot standbys that tail the store and take over when it is free.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>
#include <filesystem>
#include <iostream>
#include <spdlog/spdlog.h>

#include "api/config.h"
#include "api/leader_lock.h"
#include "api/server.h"
#include "common/files.h"
#include "common/ids.h"
#include "common/logging.h"
#include "engine/engine.h"
#include "executors/local_backend.h"
#include "storage/event_store.h"

namespace {

std::string SelfDir() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? "." : p.parent_path().string();
}

int Fail(const epoch::Status& st) {
  spdlog::critical("{}", st.ToString());
  std::fprintf(stderr, "epochd: %s\n", st.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace epoch;
  CLI::App app{"epochd: the Epoch master (HTTP API, engine, event store, container pool)"};
  std::string data_dir, values_file, log_format = "text", log_level = "info";
  std::vector<std::string> sets;
  app.add_option("--data-dir", data_dir, "shared data dir (storage.dataDir)");
  std::string advertise, address_file;
  app.add_option("--address-file", address_file,
                 "write {\"address\", \"pid\"} here once the API is bound (for scripts and tests)");
  app.add_option("--advertise", advertise,
                 "URL clients and agents reach this master at (api.advertiseUrl)");
  app.add_option("--values", values_file, "values file (JSON, the chart's keys)");
  app.add_option("--set", sets, "key=value, overrides the values file (repeatable)");
  app.add_option("--log-format", log_format, "text or json")->check(CLI::IsMember({"text", "json"}));
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error");
  bool print_keys = false;
  app.add_flag("--print-keys", print_keys, "print every configuration key with its default");
  CLI11_PARSE(app, argc, argv);

  if (print_keys) {
    for (const auto& [k, d] : api::DescribeKeys()) std::cout << k << " = " << d << "\n";
    return 0;
  }
  if (Status st = SetupLogging(log_format, log_level, "epochd"); !st.ok()) return Fail(st);

  api::Config config;
  if (!values_file.empty()) {
    auto text = ReadFile(values_file);
    if (!text.ok()) return Fail(text.status());
    auto values = ParseJson(*text);
    if (!values.ok()) return Fail(values.status().WithContext(values_file));
    if (Status st = api::ApplyValues(&config, *values); !st.ok()) {
      return Fail(st.WithContext(values_file));
    }
  }
  for (const auto& s : sets) {
    if (Status st = api::ApplySetArg(&config, s); !st.ok()) return Fail(st);
  }
  if (!data_dir.empty()) config.data_dir = data_dir;
  if (!advertise.empty()) config.advertise_url = advertise;
  if (config.data_dir.empty()) {
    return Fail(InvalidArgument("--data-dir (or storage.dataDir) is required"));
  }
  config.data_dir = std::filesystem::absolute(config.data_dir).lexically_normal().string();
  if (config.agent_path.empty()) config.agent_path = SelfDir() + "/epoch-agent";
  if (config.advertise_url.empty()) {
    config.advertise_url = "http://" + config.host + ":" + std::to_string(config.base_port);
  } else {
    advertise = config.advertise_url;  // given: keep it even with cluster.basePort 0
  }
  for (const char* sub : {"store", "runs", "logs", "containers"}) {
    if (Status st = MakeDirs(config.data_dir + "/" + sub); !st.ok()) return Fail(st);
  }

  // Election: our own lock first, then the store as primary. Without the lock
  // this epochd is a hot standby over a RocksDB secondary (DESIGN.md, "HA").
  const std::string lock_path = config.data_dir + "/leader.lock";
  const std::string store_path = config.data_dir + "/store";
  api::LeaderLock lock;
  auto try_lock = [&]() -> Result<bool> {
    Status st = lock.TryAcquire(lock_path);
    if (st.ok()) return true;
    if (st.code() == StatusCode::kUnavailable) return false;
    return st.WithContext("election");
  };
  auto leading = try_lock();
  if (!leading.ok()) return Fail(leading.status());
  std::unique_ptr<storage::EventStore> store;
  std::string secondary_dir;
  if (*leading) {
    auto s = storage::OpenRocksDbEventStore({store_path, true, ""});
    if (!s.ok()) return Fail(s.status().WithContext("opening the event store"));
    store = std::move(*s);
  } else {
    secondary_dir = !config.secondary_dir.empty()
                        ? config.secondary_dir
                        : config.data_dir + "/standby/" + config.master_name + "-" +
                              std::to_string(getpid());
    if (Status st = MakeDirs(secondary_dir); !st.ok()) return Fail(st);
    // The leader may not have created the store yet, or may die first: keep
    // trying both until one works.
    for (int attempt = 0;; ++attempt) {
      auto s = storage::OpenRocksDbEventStore({store_path, false, secondary_dir});
      if (s.ok()) {
        store = std::move(*s);
        break;
      }
      auto got = try_lock();
      if (!got.ok()) return Fail(got.status());
      if (*got) {
        *leading = true;
        auto p = storage::OpenRocksDbEventStore({store_path, true, ""});
        if (!p.ok()) return Fail(p.status().WithContext("opening the event store"));
        store = std::move(*p);
        break;
      }
      if (attempt % 50 == 0) spdlog::info("standby: waiting for the store ({})", s.status().ToString());
      std::this_thread::sleep_for(config.tail_interval);
    }
  }

  executors::LocalBackendOptions lopts;
  lopts.log_format = log_format;
  lopts.grace = config.grace;
  executors::LocalBackend backend(config.agent_path, lopts);

  // Block the stop signals before any thread starts, so only sigtimedwait sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  engine::EngineOptions eopts;
  eopts.node = config.master_name;
  eopts.advertise_url = config.advertise_url;
  eopts.snapshot_every = config.snapshot_every;
  engine::EngineConfig& ec = eopts.config;
  ec.data_dir = config.data_dir;
  ec.backend = config.backend;
  ec.max_replicas = config.max_replicas;
  ec.min_replicas = config.min_replicas;
  ec.allocation_unit = config.allocation_unit;
  ec.allocation_interval = config.allocation_interval;
  ec.idle_timeout = config.idle_timeout;
  ec.container_cpu_millis = config.container_cpu_millis;
  ec.container_memory_bytes = config.container_memory_bytes;
  ec.container_gpus = config.container_gpus;
  ec.lease = config.lease;
  ec.register_timeout = config.register_timeout;
  ec.poll_timeout = config.poll_timeout;
  ec.grace_ms = config.grace.count() / 1000;
  for (const char* name : {"EPOCH_FAKE_GPUS"}) {
    if (const char* v = std::getenv(name)) eopts.agent_env[name] = v;
  }

  SystemClock clock;
  RandomIdGenerator ids;
  engine::Engine engine(eopts, store.get(), &backend, &clock);
  // Bind first (cluster.basePort may be 0 = any free port): agents launched by
  // the engine and clients redirected by standbys must be told the real address.
  api::ApiServer server(config, &engine, store.get(), &ids, &clock);
  auto port = server.Bind(config.host, config.base_port);
  if (!port.ok()) return Fail(port.status());
  if (config.base_port == 0 && advertise.empty()) {
    config.advertise_url = "http://" + config.host + ":" + std::to_string(*port);
  }
  engine.SetAdvertiseUrl(config.advertise_url);
  if (!address_file.empty()) {
    Json addr{{"address", config.advertise_url}, {"pid", getpid()}};
    if (Status st = WriteFileDurably(address_file, addr.dump()); !st.ok()) return Fail(st);
  }

  auto write_leader_json = [&] {
    Json leader{{"address", config.advertise_url},
                {"epoch", engine.epoch()},
                {"node", config.master_name},
                {"pid", getpid()}};
    if (Status st = WriteFileDurably(config.data_dir + "/leader.json", leader.dump()); !st.ok()) {
      spdlog::warn("writing leader.json: {}", st.ToString());
    }
  };
  if (*leading) {
    if (Status st = engine.Start(); !st.ok()) return Fail(st.WithContext("starting the engine"));
    write_leader_json();
    server.Serve();
    spdlog::info("epochd leading {} with epoch {}, listening on {}", config.data_dir,
                 engine.epoch(), config.advertise_url);
  } else {
    if (Status st = engine.StartStandby(); !st.ok()) {
      return Fail(st.WithContext("starting the standby"));
    }
    server.Serve();
    spdlog::info("epochd standing by on {} (applied {}), listening on {}", config.data_dir,
                 engine.Read([](const engine::State& s) { return s.head; }), config.advertise_url);
  }

  // The main loop: signals; on a standby, tailing and the election; on the
  // leader, watching that it still holds the lock.
  const auto period = std::chrono::duration_cast<std::chrono::nanoseconds>(config.tail_interval);
  struct timespec wait_ts {
    static_cast<time_t>(period.count() / 1000000000), static_cast<long>(period.count() % 1000000000)
  };
  bool restart = false;
  int sig = 0;
  while (true) {
    sig = sigtimedwait(&stop_signals, nullptr, &wait_ts);
    if (sig > 0) break;
    engine::Role role = engine.role();
    if (role == engine::Role::kStandby) {
      auto got = try_lock();
      if (got.ok() && *got) {
        auto t0 = std::chrono::steady_clock::now();
        Status st = store->Promote();
        if (!st.ok()) {
          spdlog::error("promotion: opening the store as primary failed: {}", st.ToString());
          lock.Release();
          continue;
        }
        bool rebuilt = false;
        st = engine.Promote(&rebuilt);
        if (!st.ok()) return Fail(st.WithContext("promotion"));
        write_leader_json();
        auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - t0)
                      .count();
        spdlog::info("promoted to leader with epoch {} in {} ms{}", engine.epoch(), ms,
                     rebuilt ? " (state rebuilt from the store)" : "");
        continue;
      }
      auto head = store->CatchUp();
      if (!head.ok()) {
        spdlog::warn("standby: catching up: {}", head.status().ToString());
        continue;
      }
      auto applied = engine.Follow();
      if (!applied.ok()) spdlog::error("standby: applying: {}", applied.status().ToString());
    } else if (role == engine::Role::kLeader) {
      if (!lock.StillHeld()) {
        engine.StepDown("the election lock file " + lock_path + " was removed or replaced");
      }
    } else if (role == engine::Role::kDeposed) {
      restart = true;
      break;
    }
  }
  if (sig > 0) spdlog::info("received signal {}, shutting down (containers keep running)", sig);
  server.Stop();
  engine.Stop();
  store.reset();
  lock.Release();
  if (!secondary_dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(secondary_dir, ec);
  }
  if (restart) {
    // Deposed: come back as a standby of the new leader, with the same flags.
    spdlog::warn("deposed ({}); restarting as a standby", engine.deposed_reason());
    spdlog::shutdown();
    execv("/proc/self/exe", argv);
    std::fprintf(stderr, "epochd: re-exec failed: %s\n", std::strerror(errno));
    return 3;
  }
  spdlog::info("epochd stopped");
  return 0;
}
