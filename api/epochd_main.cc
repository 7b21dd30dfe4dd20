// epochd: the Epoch master. The composition root: the only file that knows
// every concrete type (RocksDB store, local container backend, HTTP server).
//
//   epochd --data-dir DIR [--values FILE.json] [--set key=value]...
//          [--log-format text|json] [--log-level info]
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
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
  if (config.data_dir.empty()) {
    return Fail(InvalidArgument("--data-dir (or storage.dataDir) is required"));
  }
  config.data_dir = std::filesystem::absolute(config.data_dir).lexically_normal().string();
  if (config.agent_path.empty()) config.agent_path = SelfDir() + "/epoch-agent";
  if (config.advertise_url.empty()) {
    config.advertise_url = "http://" + config.host + ":" + std::to_string(config.base_port);
  }
  for (const char* sub : {"store", "runs", "logs", "containers"}) {
    if (Status st = MakeDirs(config.data_dir + "/" + sub); !st.ok()) return Fail(st);
  }

  // Election: our own lock first, then the store as primary.
  api::LeaderLock lock;
  if (Status st = lock.TryAcquire(config.data_dir + "/leader.lock"); !st.ok()) {
    return Fail(st.WithContext("election"));
  }
  auto store = storage::OpenRocksDbEventStore({config.data_dir + "/store", true});
  if (!store.ok()) return Fail(store.status().WithContext("opening the event store"));

  executors::LocalBackendOptions lopts;
  lopts.log_format = log_format;
  lopts.grace = config.grace;
  executors::LocalBackend backend(config.agent_path, lopts);

  engine::EngineOptions eopts;
  eopts.node = config.master_name;
  eopts.advertise_url = config.advertise_url;
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

  // Block the stop signals before any thread starts, so only sigwait sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  SystemClock clock;
  RandomIdGenerator ids;
  engine::Engine engine(eopts, store->get(), &backend, &clock);
  // Bind first (cluster.basePort may be 0 = any free port), then lead: agents
  // launched by the engine must be told the real address.
  api::ApiServer server(config, &engine, store->get(), &ids, &clock);
  auto port = server.Start(config.host, config.base_port);
  if (!port.ok()) return Fail(port.status());
  if (config.base_port == 0) {
    config.advertise_url = "http://" + config.host + ":" + std::to_string(*port);
  }
  engine.SetAdvertiseUrl(config.advertise_url);
  if (Status st = engine.Start(); !st.ok()) {
    server.Stop();
    return Fail(st.WithContext("starting the engine"));
  }
  Json leader{{"address", config.advertise_url},
              {"epoch", engine.epoch()},
              {"node", config.master_name},
              {"pid", getpid()}};
  if (Status st = WriteFileDurably(config.data_dir + "/leader.json", leader.dump()); !st.ok()) {
    spdlog::warn("writing leader.json: {}", st.ToString());
  }
  spdlog::info("epochd leading {} with epoch {}, listening on http://{}:{}", config.data_dir,
               engine.epoch(), config.host, *port);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  spdlog::info("received signal {}, shutting down (containers keep running)", sig);
  server.Stop();
  engine.Stop();
  store->reset();
  lock.Release();
  spdlog::info("epochd stopped");
  return 0;
}
