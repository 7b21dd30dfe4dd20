// Configuration of epochd: the reference chart's keys (sig.*, cluster.*, master.*)
// plus Epoch's own (storage.*, executor.*, api.*). Values come from built-in
// defaults, then a values file (nested or dotted JSON), then --set key=value, in
// that order. An unknown key or a value of the wrong shape is an error naming
// the key; epochd refuses to start on it.
//
// Thread-safety: a plain value.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/json.h"
#include "common/status.h"

namespace epoch::api {

struct Config {
  // master.*
  std::string master_name = "epoch-master";
  std::string master_cpu = "2";
  std::string master_memory = "4Gi";
  // sig.* (compute containers)
  int max_replicas = 10;
  int min_replicas = 0;
  int64_t container_cpu_millis = 1000;             // sig.cpu
  int64_t container_memory_bytes = 2144LL << 20;   // sig.memory
  int container_gpus = 0;                          // sig.gpu
  int allocation_unit = 2;                         // sig.ssAllocationUnit
  Micros allocation_interval = std::chrono::seconds(120);  // sig.ssAllocationInterval
  Micros idle_timeout = std::chrono::minutes(10);          // sig.idleTimeout
  // cluster.*
  int base_port = 30745;
  std::string host = "127.0.0.1";  // api.host
  std::string tls_certificate_secret_name;
  std::string tls_certificate;  // cluster.tlsCertificate: PEM path; empty = <data-dir>/tls/cert.pem
  std::string tls_key;          // cluster.tlsKey: PEM path; empty = <data-dir>/tls/key.pem
  std::string tls_ca;           // cluster.tlsCaCertificate: what agents trust; empty = the certificate
  // storage.*
  std::string data_dir;
  uint64_t snapshot_every = 100000;  // events between the leader's snapshots (0 = never)
  // storage.minFreeBytes: below this many free bytes on the store's filesystem the
  // leader refuses new work (507) and keeps accepting reports and cancels (0 = never).
  uint64_t min_free_bytes = 256ull << 20;
  // executor.*
  std::string backend = "local";
  Micros lease = std::chrono::seconds(10);
  Micros register_timeout = std::chrono::seconds(30);
  Micros poll_timeout = std::chrono::milliseconds(1000);
  Micros grace = std::chrono::seconds(5);
  std::string agent_path;  // default: epoch-agent next to epochd
  std::string isolation = "auto";  // executor.isolation: the agents' --isolation auto|required|off
  // executor.enforce: CPU, memory and process limits in cgroups (the agents' --enforce
  // auto|required|off); executor.maxPids: processes and threads per attempt (0: no
  // limit); executor.cgroupRoot: where agents make their cgroups (empty: where they run).
  std::string enforce = "auto";
  int64_t max_pids = 4096;
  std::string cgroup_root;
  Micros watch_interval = std::chrono::seconds(2);  // executor.watchInterval (slurm)
  // slurm.* (executor.backend=slurm)
  std::string slurm_partition;
  std::string slurm_account;
  std::string slurm_qos;
  std::string slurm_time_limit;
  std::vector<std::string> slurm_extra_args;
  // api.*
  size_t max_body_bytes = 1 << 20;
  int threads = 32;      // api.threads: HTTP worker threads (handlers; waits hold none)
  int io_threads = 2;    // api.ioThreads: threads that run every socket
  int max_streams = 1024;               // concurrent SSE streams in all
  int max_streams_per_principal = 16;   // ... per token (api.maxStreamsPerPrincipal)
  int max_connections = 10000;          // api.maxConnections (and within RLIMIT_NOFILE)
  int max_connections_per_client = 256; // api.maxConnectionsPerClient: per remote IP
  uint64_t max_log_response_bytes = 8 << 20;  // api.maxLogResponseBytes: one log answer
  Micros tls_handshake_timeout = std::chrono::seconds(10);  // api.tlsHandshakeTimeout
  Micros header_timeout = std::chrono::seconds(10);  // api.headerTimeout: a whole request head
  Micros body_timeout = std::chrono::seconds(30);    // api.bodyTimeout
  Micros keep_alive_timeout = std::chrono::seconds(30);  // api.keepAliveTimeout: idle
  Micros write_timeout = std::chrono::seconds(30);   // api.writeTimeout: each write
  std::string advertise_url;  // default https://<host>:<port>
  std::string tokens_file;    // api.tokensFile; empty = <data-dir>/tokens.json
  Micros session_ttl = std::chrono::hours(12);  // api.sessionTtl: a console session's life
  bool plain_http = false;    // epochd --insecure-http (not a key): no TLS
  // ha.* (hot standby)
  Micros tail_interval = std::chrono::milliseconds(100);  // tail + election attempt period
  std::string secondary_dir;  // the standby's RocksDB secondary files
  // tenants.<name>.maxGpus: GPUs a tenant's attempts may hold at once (absent: unlimited).
  std::map<std::string, int> tenant_max_gpus;
  // tenants.<name>.runAs: the OS user (`user` or `user:group`) the tenant's steps run
  // as; tenants without one use executor.runAs.
  std::map<std::string, std::string> tenant_run_as;
  // tenants.<name>.inputRoots: absolute folders outside the data dir from which the
  // tenant's steps may declare `inputs` (besides its own runs' outputs).
  std::map<std::string, std::vector<std::string>> tenant_input_roots;
  // retention.outputs / retention.logs: how long after a run ends its attempt folders
  // (outputs, checkpoints) and its logs are kept (0: for ever); per tenant
  // tenants.<name>.retention.outputs|logs. retention.interval: how often the leader
  // looks for what has expired.
  Micros retention_outputs{0}, retention_logs{0};
  std::map<std::string, Micros> tenant_retention_outputs, tenant_retention_logs;
  Micros retention_interval = std::chrono::minutes(10);
  std::string default_run_as = "epoch-step";  // executor.runAs
  int64_t max_log_bytes = 1LL << 30;           // executor.maxLogBytes (0: no cap)
  uint64_t max_input_bytes = 16ULL << 30;      // executor.maxInputBytes
  // Live metrics: how often agents ship a running step's new points, and each series'
  // caps (executor.metricsInterval, executor.metricsMaxPoints, executor.metricsMaxBytes).
  Micros metrics_interval = std::chrono::seconds(1);
  int64_t metrics_max_points = 100000;
  int64_t metrics_max_bytes = 16LL << 20;
  size_t max_steps = 10000;                    // api.maxSteps
  size_t cache_max_entries = 10000;            // cache.maxEntries
  // scheduler.preemption (off | priority) and scheduler.preemptionMinRunTime.
  bool preemption = false;
  Micros preemption_min_run_time = std::chrono::minutes(5);
  Micros elastic_min_run_time = std::chrono::minutes(1);  // scheduler.elasticMinRunTime

  // The effective configuration as JSON (dotted keys), for /v1/cluster and logs.
  Json ToJson() const;
};

// Applies one key. kInvalidArgument "sig.cpu: invalid cpu quantity ..." or
// "unknown configuration key 'sig.foo'". `tenants.<name>.<setting>` is the one key
// pattern: <name> is [a-z0-9][a-z0-9._-]{0,62}; the settings are maxGpus (an integer
// >= 0), runAs (`user` or `user:group`, never root) and inputRoots (absolute paths:
// a JSON array, or one comma-separated string).
Status SetKey(Config* config, const std::string& key, const Json& value);
// Applies a values document: nested objects flatten to dotted keys.
Status ApplyValues(Config* config, const Json& values);
// "key=value": the value parses as JSON when it can, else it is a string.
Status ApplySetArg(Config* config, const std::string& arg);
// Checks what one key cannot check alone: no tenants.<name>.inputRoots entry may hold
// the data dir or lie within it (its control files would become readable inputs).
Status ValidateConfig(const Config& config);
// Every key SetKey accepts, with its default, for --help and the README.
std::vector<std::pair<std::string, std::string>> DescribeKeys();

}  // namespace epoch::api
