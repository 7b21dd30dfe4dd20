// epochd: the Epoch master. The composition root: the only file that knows
// every concrete type (RocksDB store, local container backend, HTTP server).
//
//   epochd --data-dir DIR [--advertise URL] [--values FILE.json] [--set key=value]...
//          [--log-format text|json] [--log-level info] [--allow-corrupt-history]
//
// Every epochd on the same data dir competes for leader.lock: the holder leads,
// the others are hot standbys that tail the store and take over when it is free.
//
// A history whose hash chain is broken stops the start (exit 1, naming the first
// bad event); --allow-corrupt-history serves it read-only instead (engine.h,
// "Corrupt history"), logging it critically at start and every minute after.
//
// A storage fault (the store's disk is full, or RocksDB fails a write or sync:
// engine.h, "Storage faults") makes the leader step down: the engine refuses every
// write at once (507 insufficient_storage, or 503), and epochd stops serving,
// closes the store, releases leader.lock and exits 74 (kExitStorageFault), so a
// standby takes over or a supervisor restarts it once the store can write.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <optional>
#include <thread>

#include "api/config.h"
#include "api/leader_lock.h"
#include "api/server.h"
#include "api/tls.h"
#include "common/files.h"
#include "common/ids.h"
#include "common/logging.h"
#include "engine/engine.h"
#include "engine/retention.h"
#include "executors/local_backend.h"
#include "executors/slurm_backend.h"
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

// Exit status of an epochd that gave up after a storage fault (sysexits'
// EX_IOERR): not 0, so a supervisor restarts it, and not a signal, so it is told
// apart from a crash.
constexpr int kExitStorageFault = 74;
// The shutdown after a storage fault must end even if something hangs on the
// broken store (closing RocksDB, a thread stuck in a write): past this, epochd
// exits without finishing it (the kernel drops its locks).
constexpr auto kStorageFaultShutdownLimit = std::chrono::seconds(10);

// Says why epochd gives up after a storage fault and what to do; returns the exit status.
int FailOnStorageFault(const epoch::Status& fault, const std::string& store_path) {
  std::string what = "STORAGE FAULT: " + fault.ToString() + ". This epochd does not write, " +
                     "releases the election lock and exits " + std::to_string(kExitStorageFault) +
                     " so that a standby leads (or a supervisor restarts it); what it " +
                     "acknowledged is durable. " +
                     (epoch::storage::IsNoSpace(fault)
                          ? "Free space on the filesystem of " + store_path + "."
                          : "Check the device and filesystem of " + store_path + ".");
  spdlog::critical("{}", what);
  std::fprintf(stderr, "epochd: %s\n", what.c_str());
  return kExitStorageFault;
}

// A start refused on a corrupt history: the error, then what can be done about it.
int FailOnCorruptHistory(const epoch::Status& st, uint64_t first_bad) {
  int rc = Fail(st);
  std::string n = std::to_string(first_bad);
  std::string hint = "the event history fails verification at event " + n +
                     "; epochd does not extend a corrupt history. Restore the store from a "
                     "trusted copy, or start with --allow-corrupt-history to serve it read-only "
                     "(the state before event " + n + "; every write refused) for an audit";
  spdlog::critical("{}", hint);
  std::fprintf(stderr, "epochd: %s\n", hint.c_str());
  return rc;
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
  std::string tokens_file;
  app.add_option("--tokens", tokens_file, "tokens file (api.tokensFile; default <data-dir>/tokens.json)");
  app.add_option("--set", sets, "key=value, overrides the values file (repeatable)");
  app.add_option("--log-format", log_format, "text or json")->check(CLI::IsMember({"text", "json"}));
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error");
  bool insecure_http = false, force = false;
  app.add_flag("--insecure-http", insecure_http,
               "serve plain HTTP instead of HTTPS (only on a loopback api.host unless --force)");
  app.add_flag("--force", force, "with --insecure-http: allow it on a non-loopback address");
  bool print_keys = false;
  app.add_flag("--print-keys", print_keys, "print every configuration key with its default");
  bool allow_corrupt_history = false;
  app.add_flag("--allow-corrupt-history", allow_corrupt_history,
               "start even when the event history fails verification: serve reads of the "
               "history before the first bad event, refuse every write (for an audit)");
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
  if (!tokens_file.empty()) config.tokens_file = tokens_file;
  if (config.data_dir.empty()) {
    return Fail(InvalidArgument("--data-dir (or storage.dataDir) is required"));
  }
  {
    // Without a trailing slash or dots: paths are compared with it (inputs, mounts).
    auto normal = NormalizePath(std::filesystem::absolute(config.data_dir).string());
    if (!normal.ok()) return Fail(normal.status().WithContext("--data-dir"));
    config.data_dir = *normal;
  }
  if (Status st = api::ValidateConfig(config); !st.ok()) return Fail(st);
  if (config.agent_path.empty()) config.agent_path = SelfDir() + "/epoch-agent";
  if (Status st = MakeDirs(config.data_dir); !st.ok()) return Fail(st);
  // HTTPS unless told otherwise; plain HTTP only where nothing else can listen in.
  config.plain_http = insecure_http;
  if (insecure_http && !api::IsLoopbackHost(config.host) && !force) {
    return Fail(InvalidArgument("--insecure-http on " + config.host +
                                ", which is not a loopback address: tokens would cross the "
                                "network in clear text (add --force if you must)"));
  }
  if (!insecure_http) {
    if (config.tls_certificate.empty() != config.tls_key.empty()) {
      return Fail(InvalidArgument("cluster.tlsCertificate and cluster.tlsKey: give both or neither"));
    }
    if (config.tls_certificate.empty()) {
      std::vector<std::string> hosts{config.host};
      if (!config.advertise_url.empty()) {
        std::string h = config.advertise_url.substr(config.advertise_url.find("://") + 3);
        h = h.substr(0, h.find_first_of(":/"));
        hosts.push_back(h);
      }
      auto files = api::EnsureSelfSignedCertificate(config.data_dir + "/tls", hosts);
      if (!files.ok()) return Fail(files.status().WithContext("TLS certificate"));
      config.tls_certificate = files->certificate;
      config.tls_key = files->key;
      if (files->generated) spdlog::info("generated a self-signed certificate: {}", files->certificate);
    }
    if (Status st = api::CheckKeyPair(config.tls_certificate, config.tls_key); !st.ok()) {
      return Fail(st.WithContext("TLS"));
    }
    auto fp = api::CertificateFingerprint(config.tls_certificate);
    if (!fp.ok()) return Fail(fp.status());
    spdlog::info("HTTPS with {} ({})", config.tls_certificate, *fp);
    std::fprintf(stderr, "epochd: TLS certificate %s\nepochd: fingerprint %s\n",
                 config.tls_certificate.c_str(), fp->c_str());
  }
  const std::string scheme = insecure_http ? "http://" : "https://";
  if (config.advertise_url.empty()) {
    config.advertise_url = scheme + config.host + ":" + std::to_string(config.base_port);
  } else {
    advertise = config.advertise_url;  // given: keep it even with cluster.basePort 0
  }
  // The data dir's layout keeps the control plane to epochd's user: the store and
  // the containers' state (credentials) 0700; runs/ and logs/ only traversable (each
  // run's folder belongs to its tenant's execution user, made by the agent), and the
  // data dir itself too, so nobody lists what is in it.
  for (auto [sub, mode] : {std::pair{"store", 0700}, {"containers", 0700}, {"standby", 0700},
                           {"runs", 0711}, {"logs", 0711}, {"", 0711}}) {
    std::string path = config.data_dir + (*sub ? "/" + std::string(sub) : "");
    if (Status st = MakeDirs(path); !st.ok()) return Fail(st);
    if (chmod(path.c_str(), static_cast<mode_t>(mode)) != 0) {
      return Fail(Internal("chmod " + path + ": " + std::strerror(errno)));
    }
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
  // As primary. A corrupt last event stops the open, unless --allow-corrupt-history
  // (the store then opens refusing every write, and the engine serves it read-only).
  uint64_t corrupt_head = 0;  // set when only the flag would open the store
  auto open_primary = [&]() -> Result<std::unique_ptr<storage::EventStore>> {
    storage::StoreOptions o{store_path};
    o.open_corrupt_head = allow_corrupt_history;
    auto s = storage::OpenRocksDbEventStore(o);
    if (s.ok() || s.status().code() != StatusCode::kCorruption || allow_corrupt_history) {
      return s;
    }
    // Would the flag open it? Then say so, naming the event.
    o.open_corrupt_head = true;
    auto tolerant = storage::OpenRocksDbEventStore(o);
    if (!tolerant.ok()) return s;
    corrupt_head = (*tolerant)->Head().position;
    return s;
  };
  auto fail_open = [&](const Status& st) {
    Status what = st.WithContext("opening the event store");
    if (corrupt_head == 0 && storage::IsNoSpace(what)) return FailOnStorageFault(what, store_path);
    return corrupt_head > 0 ? FailOnCorruptHistory(what, corrupt_head) : Fail(what);
  };
  std::unique_ptr<storage::EventStore> store;
  std::string secondary_dir;
  if (*leading) {
    auto s = open_primary();
    if (!s.ok()) return fail_open(s.status());
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
        auto p = open_primary();
        if (!p.ok()) return fail_open(p.status());
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
  lopts.isolation = config.isolation;  // the agents' --isolation
  lopts.enforce = config.enforce;      // --enforce, --max-pids, --cgroup-root
  lopts.max_pids = config.max_pids;
  lopts.cgroup_root = config.cgroup_root;
  // Agents verify the master's certificate: against the CA given, else the certificate
  // itself (right for a self-signed one, generated or your own).
  if (!config.plain_http) lopts.ca_cert = config.tls_ca.empty() ? config.tls_certificate : config.tls_ca;
  // One pool, two backends: the engine's scaling rules are the same for both.
  std::unique_ptr<engine::ContainerBackend> backend;
  if (config.backend == "slurm") {
    executors::SlurmOptions so;
    so.partition = config.slurm_partition;
    so.account = config.slurm_account;
    so.qos = config.slurm_qos;
    so.time_limit = config.slurm_time_limit;
    so.extra_args = config.slurm_extra_args;
    static_cast<executors::AgentFlags&>(so) = lopts;  // the agent's flags, as for local
    backend = std::make_unique<executors::SlurmBackend>(config.agent_path, so);
  } else {
    backend = std::make_unique<executors::LocalBackend>(config.agent_path, lopts);
  }

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
  eopts.archive_runs = true;  // finished runs live in the read model, not in memory
  eopts.min_free_bytes = config.min_free_bytes;
  eopts.watch_interval = config.watch_interval;
  eopts.allow_corrupt_history = allow_corrupt_history;
  eopts.epoch_witness = [dir = config.data_dir]() -> uint64_t {
    auto published = api::ReadPublishedLeader(dir);
    return published.ok() ? published->epoch : 0;
  };
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
  ec.tenant_max_gpus = config.tenant_max_gpus;
  ec.tenant_run_as = config.tenant_run_as;
  ec.default_run_as = config.default_run_as;
  ec.tenant_input_roots = config.tenant_input_roots;
  ec.retention_outputs = config.retention_outputs;
  ec.retention_logs = config.retention_logs;
  ec.tenant_retention_outputs = config.tenant_retention_outputs;
  ec.tenant_retention_logs = config.tenant_retention_logs;
  ec.max_input_bytes = config.max_input_bytes;
  ec.max_log_bytes = config.max_log_bytes;
  ec.metrics_interval = config.metrics_interval;
  ec.metrics_max_points = config.metrics_max_points;
  ec.metrics_max_bytes = config.metrics_max_bytes;
  ec.max_steps = config.max_steps;
  ec.cache_max_entries = config.cache_max_entries;
  ec.preemption = config.preemption;
  ec.preemption_min_run_time = config.preemption_min_run_time;
  ec.elastic_min_run_time = config.elastic_min_run_time;
  for (const char* name : {"EPOCH_FAKE_GPUS"}) {
    if (const char* v = std::getenv(name)) eopts.agent_env[name] = v;
  }

  SystemClock clock;
  RandomIdGenerator ids;
  engine::Engine engine(eopts, store.get(), backend.get(), &clock);
  // Bind first (cluster.basePort may be 0 = any free port): agents launched by
  // the engine and clients redirected by standbys must be told the real address.
  api::ApiServer server(config, &engine, store.get(), &ids, &clock);
  auto port = server.Bind(config.host, config.base_port);
  if (!port.ok()) return Fail(port.status());
  if (config.base_port == 0 && advertise.empty()) {
    config.advertise_url = scheme + config.host + ":" + std::to_string(*port);
  }
  engine.SetAdvertiseUrl(config.advertise_url);
  if (!address_file.empty()) {
    Json addr{{"address", config.advertise_url}, {"pid", getpid()}};
    if (Status st = WriteFileDurably(address_file, addr.dump()); !st.ok()) return Fail(st);
  }

  auto write_leader_json = [&] {
    if (Status st = api::PublishLeader(config.data_dir,
                                       {config.advertise_url, engine.epoch(), config.master_name});
        !st.ok()) {
      spdlog::warn("writing leader.json: {}", st.ToString());
    }
  };
  // Corrupt-history mode: said at start (by the engine) and again every minute.
  auto corrupt_reminder = [&] {
    engine::HistoryCheck h = engine.history();
    spdlog::critical("CORRUPT HISTORY: event {} fails verification ({}); serving reads only, "
                     "every write is refused (503 corrupt_history)",
                     h.first_bad, h.problem);
  };
  if (*leading) {
    if (Status st = engine.Start(); !st.ok()) {
      engine::HistoryCheck h = engine.history();
      if (h.state == engine::HistoryCheck::State::kCorrupt) {
        return FailOnCorruptHistory(st.WithContext("starting the engine"), h.first_bad);
      }
      // The store could not write (claiming the epoch, LeaderElected): a storage fault.
      if (Status fault = store->WriteFailure(); !fault.ok()) {
        return FailOnStorageFault(fault.WithContext("starting the engine"), store_path);
      }
      return Fail(st.WithContext("starting the engine"));
    }
    write_leader_json();
    server.Serve();
    if (engine.corrupt_history()) {
      spdlog::critical("epochd serving the CORRUPT history of {} read-only (state at {}), "
                       "listening on {}",
                       config.data_dir, engine.Read([](const engine::State& s) { return s.head; }),
                       config.advertise_url);
    } else {
      spdlog::info("epochd leading {} with epoch {}, listening on {}", config.data_dir,
                   engine.epoch(), config.advertise_url);
    }
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
  Status storage_fault;  // non-OK: step down and exit kExitStorageFault
  int sig = 0;
  constexpr auto kCorruptReminder = std::chrono::minutes(1);
  auto next_reminder = std::chrono::steady_clock::now() + kCorruptReminder;
  bool was_corrupt = engine.corrupt_history();
  // Retention (engine/retention.h): the leader's passes, on a thread of their own.
  std::optional<engine::RetentionLoop> retention;
  if (engine::RetentionConfigured(ec)) retention.emplace(&engine, config.retention_interval);
  while (true) {
    sig = sigtimedwait(&stop_signals, nullptr, &wait_ts);
    if (sig > 0) break;
    if (engine.corrupt_history()) {
      auto now = std::chrono::steady_clock::now();
      if (!was_corrupt) {  // found while serving: the engine has just said so
        was_corrupt = true;
        next_reminder = now + kCorruptReminder;
      } else if (now >= next_reminder) {
        corrupt_reminder();
        next_reminder = now + kCorruptReminder;
      }
    }
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
        if (!st.ok()) {
          // The store, now primary, could not write: give the lock up as a leader would.
          storage_fault = store->WriteFailure();
          if (!storage_fault.ok()) break;
          return Fail(st.WithContext("promotion"));
        }
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
      if (!engine.healthy()) {  // a storage fault stopped the engine: step down
        storage_fault = engine.storage_fault();
        break;
      }
      if (!lock.StillHeld()) {
        engine.StepDown("the election lock file " + lock_path + " was removed or replaced");
      }
    } else if (role == engine::Role::kDeposed) {
      restart = true;
      break;
    }
  }
  if (sig > 0) spdlog::info("received signal {}, shutting down (containers keep running)", sig);
  if (!storage_fault.ok()) {
    (void)FailOnStorageFault(storage_fault, store_path);
    std::thread([] {
      std::this_thread::sleep_for(kStorageFaultShutdownLimit);
      spdlog::critical("the shutdown after the storage fault did not end within {} s; exiting {} "
                       "without it",
                       kStorageFaultShutdownLimit.count(), kExitStorageFault);
      spdlog::default_logger()->flush();
      _exit(kExitStorageFault);
    }).detach();
  }
  retention.reset();
  server.Stop();
  engine.Stop();
  store.reset();
  lock.Release();
  if (!secondary_dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(secondary_dir, ec);
  }
  if (!storage_fault.ok()) {
    spdlog::critical("stepped down after the storage fault: the store is closed and the election "
                     "lock {} released; exiting {}",
                     lock_path, kExitStorageFault);
    return kExitStorageFault;
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
