#include "api/config.h"

#include <cctype>
#include <functional>
#include <limits>
#include <sstream>

#include "api/auth.h"
#include "common/files.h"
#include "common/units.h"

namespace epoch::api {

namespace {

std::string AsString(const Json& v) {
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

Result<int64_t> AsInt(const std::string& key, const Json& v, int64_t min, int64_t max) {
  int64_t n;
  if (v.is_number_integer()) {
    n = v.get<int64_t>();
  } else if (v.is_string()) {
    try {
      size_t used = 0;
      n = std::stoll(v.get<std::string>(), &used);
      if (used != v.get<std::string>().size()) throw std::invalid_argument("trailing");
    } catch (const std::exception&) {
      return InvalidArgument(key + ": expected an integer, got '" + AsString(v) + "'");
    }
  } else {
    return InvalidArgument(key + ": expected an integer, got " + v.dump());
  }
  if (n < min || n > max) {
    return InvalidArgument(key + ": " + std::to_string(n) + " is out of range [" +
                           std::to_string(min) + ", " + std::to_string(max) + "]");
  }
  return n;
}

Result<Micros> AsDuration(const std::string& key, const Json& v) {
  auto d = ParseDuration(AsString(v));
  if (!d.ok()) return InvalidArgument(key + ": " + d.status().message());
  return *d;
}

// A Slurm name or time limit: one word of letters, digits and -_.:,+ (no shell or
// option syntax can get into sbatch's arguments through it).
Status SlurmWord(const std::string& key, const Json& v, std::string* out) {
  std::string w = AsString(v);
  for (char ch : w) {
    if (!std::isalnum(static_cast<unsigned char>(ch)) && std::string_view("-_.:,+").find(ch) == std::string_view::npos) {
      return InvalidArgument(key + ": '" + w + "' has a character Slurm names do not use ('" +
                             std::string(1, ch) + "')");
    }
  }
  if (!w.empty() && w[0] == '-') return InvalidArgument(key + ": '" + w + "' may not start with '-'");
  *out = w;
  return Status::Ok();
}

// Bytes as an integer or a quantity ("1Gi"), >= 0.
Result<int64_t> AsBytes(const std::string& key, const Json& v) {
  if (v.is_number_integer()) return AsInt(key, v, 0, std::numeric_limits<int64_t>::max());
  auto r = ParseBytes(AsString(v));
  if (!r.ok()) return InvalidArgument(key + ": " + r.status().message());
  return *r;
}

// An OS user for steps: `user` or `user:group`, names of [A-Za-z0-9._-] not starting
// with '-', and never root (a step as root would defeat every other boundary).
Status CheckRunAs(const std::string& key, const std::string& spec) {
  auto colon = spec.find(':');
  std::string user = spec.substr(0, colon);
  std::string group = colon == std::string::npos ? "" : spec.substr(colon + 1);
  for (const std::string* part : {&user, &group}) {
    if (part == &group && colon == std::string::npos) continue;
    bool ok = !part->empty() && (*part)[0] != '-' && part->size() <= 32;
    for (char ch : *part) {
      ok = ok && (std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '_' ||
                  ch == '-');
    }
    if (!ok) {
      return InvalidArgument(key + ": '" + spec + "' is not `user` or `user:group` (names of " +
                             "letters, digits, '.', '_', '-')");
    }
  }
  if (user == "root" || user == "0" || group == "root" || group == "0") {
    return InvalidArgument(key + ": steps may not run as root");
  }
  return Status::Ok();
}

// An HTTP deadline (api.*Timeout): between 10ms and 1h.
Status HttpTimeout(const std::string& key, const Json& v, Micros* out) {
  ASSIGN_OR_RETURN(Micros d, AsDuration(key, v));
  if (d < std::chrono::milliseconds(10) || d > std::chrono::hours(1)) {
    return InvalidArgument(key + ": must be between 10ms and 1h");
  }
  *out = d;
  return Status::Ok();
}

struct KeyDef {
  std::string def;
  std::function<Status(Config*, const std::string&, const Json&)> set;
};

const std::map<std::string, KeyDef>& Keys() {
  static const auto* keys = new std::map<std::string, KeyDef>{
      {"master.name", {"epoch-master", [](Config* c, const std::string&, const Json& v) {
         c->master_name = AsString(v);
         return Status::Ok();
       }}},
      {"master.cpu", {"2", [](Config* c, const std::string& k, const Json& v) {
         auto r = ParseCpuMillis(AsString(v));
         if (!r.ok()) return InvalidArgument(k + ": " + r.status().message());
         c->master_cpu = AsString(v);
         return Status::Ok();
       }}},
      {"master.memory", {"4Gi", [](Config* c, const std::string& k, const Json& v) {
         auto r = ParseBytes(AsString(v));
         if (!r.ok()) return InvalidArgument(k + ": " + r.status().message());
         c->master_memory = AsString(v);
         return Status::Ok();
       }}},
      {"sig.maxReplicas", {"10", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(auto n, AsInt(k, v, 0, 10000));
         c->max_replicas = static_cast<int>(n);
         return Status::Ok();
       }}},
      {"sig.minReplicas", {"0", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(auto n, AsInt(k, v, 0, 10000));
         c->min_replicas = static_cast<int>(n);
         return Status::Ok();
       }}},
      {"sig.cpu", {"1000m", [](Config* c, const std::string& k, const Json& v) {
         auto r = ParseCpuMillis(AsString(v));
         if (!r.ok()) return InvalidArgument(k + ": " + r.status().message());
         c->container_cpu_millis = *r;
         return Status::Ok();
       }}},
      {"sig.memory", {"2144Mi", [](Config* c, const std::string& k, const Json& v) {
         auto r = ParseBytes(AsString(v));
         if (!r.ok()) return InvalidArgument(k + ": " + r.status().message());
         c->container_memory_bytes = *r;
         return Status::Ok();
       }}},
      {"sig.gpu", {"0", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(auto n, AsInt(k, v, 0, 64));
         c->container_gpus = static_cast<int>(n);
         return Status::Ok();
       }}},
      {"sig.ssAllocationUnit", {"2", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(auto n, AsInt(k, v, 1, 1000));
         c->allocation_unit = static_cast<int>(n);
         return Status::Ok();
       }}},
      {"sig.ssAllocationInterval", {"120s", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(c->allocation_interval, AsDuration(k, v));
         return Status::Ok();
       }}},
      {"retention.outputs", {"0s", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(c->retention_outputs, AsDuration(k, v));
         return Status::Ok();
       }}},
      {"retention.logs", {"0s", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(c->retention_logs, AsDuration(k, v));
         return Status::Ok();
       }}},
      {"retention.interval", {"10m", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(c->retention_interval, AsDuration(k, v));
         if (c->retention_interval <= Micros{0}) {
           return InvalidArgument(k + ": must be above 0s");
         }
         return Status::Ok();
       }}},
      {"sig.idleTimeout", {"10m", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(c->idle_timeout, AsDuration(k, v));
         return Status::Ok();
       }}},
      {"cluster.basePort", {"30745", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(auto n, AsInt(k, v, 0, 65535));
         c->base_port = static_cast<int>(n);
         return Status::Ok();
       }}},
      {"cluster.tlsCertificateSecretName", {"", [](Config* c, const std::string&, const Json& v) {
         c->tls_certificate_secret_name = AsString(v);
         return Status::Ok();
       }}},
      {"cluster.tlsCertificate",
       {"<storage.dataDir>/tls/cert.pem (generated, self-signed)",
        [](Config* c, const std::string&, const Json& v) {
          c->tls_certificate = AsString(v);
          return Status::Ok();
        }}},
      {"cluster.tlsKey", {"<storage.dataDir>/tls/key.pem (generated)",
                          [](Config* c, const std::string&, const Json& v) {
                            c->tls_key = AsString(v);
                            return Status::Ok();
                          }}},
      {"cluster.tlsCaCertificate",
       {"(cluster.tlsCertificate itself)", [](Config* c, const std::string&, const Json& v) {
          c->tls_ca = AsString(v);
          return Status::Ok();
        }}},
      {"api.tokensFile", {"<storage.dataDir>/tokens.json",
                          [](Config* c, const std::string&, const Json& v) {
                            c->tokens_file = AsString(v);
                            return Status::Ok();
                          }}},
      {"storage.dataDir", {"", [](Config* c, const std::string&, const Json& v) {
         c->data_dir = AsString(v);
         return Status::Ok();
       }}},
      {"storage.snapshotEvery", {"100000", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(auto n, AsInt(k, v, 0, 1LL << 40));
         c->snapshot_every = static_cast<uint64_t>(n);
         return Status::Ok();
       }}},
      {"storage.minFreeBytes",
       {"268435456 (256Mi)", [](Config* c, const std::string& k, const Json& v) {
         // A number of bytes, or a quantity as for sig.memory ("256Mi", "1G"); 0: off.
         if (v.is_number_integer() || AsString(v) == "0") {
           ASSIGN_OR_RETURN(auto n, AsInt(k, v, 0, 1LL << 60));
           c->min_free_bytes = static_cast<uint64_t>(n);
           return Status::Ok();
         }
         auto r = ParseBytes(AsString(v));
         if (!r.ok()) return InvalidArgument(k + ": " + r.status().message());
         c->min_free_bytes = static_cast<uint64_t>(*r);
         return Status::Ok();
       }}},
      {"executor.backend", {"local", [](Config* c, const std::string& k, const Json& v) {
         std::string b = AsString(v);
         if (b != "local" && b != "slurm") {
           return InvalidArgument(k + ": unknown backend '" + b + "' (this build has: local, slurm)");
         }
         c->backend = b;
         return Status::Ok();
       }}},
      {"executor.watchInterval", {"2s", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(c->watch_interval, AsDuration(k, v));
         if (c->watch_interval < std::chrono::milliseconds(100)) {
           return InvalidArgument(k + ": must be at least 100ms");
         }
         return Status::Ok();
       }}},
      {"slurm.partition", {"(the cluster's default)", [](Config* c, const std::string& k, const Json& v) {
         return SlurmWord(k, v, &c->slurm_partition);
       }}},
      {"slurm.account", {"(the user's default)", [](Config* c, const std::string& k, const Json& v) {
         return SlurmWord(k, v, &c->slurm_account);
       }}},
      {"slurm.qos", {"(the account's default)", [](Config* c, const std::string& k, const Json& v) {
         return SlurmWord(k, v, &c->slurm_qos);
       }}},
      {"slurm.timeLimit", {"(the partition's default)", [](Config* c, const std::string& k, const Json& v) {
         return SlurmWord(k, v, &c->slurm_time_limit);
       }}},
      {"slurm.extraArgs", {"[]", [](Config* c, const std::string& k, const Json& v) {
         std::vector<std::string> args;
         if (v.is_array()) {
           for (const auto& a : v) {
             if (!a.is_string()) return InvalidArgument(k + ": expected an array of strings, got " + v.dump());
             args.push_back(a.get<std::string>());
           }
         } else if (v.is_string()) {
           std::istringstream in(v.get<std::string>());
           std::string w;
           while (in >> w) args.push_back(w);
         } else {
           return InvalidArgument(k + ": expected an array of strings, got " + v.dump());
         }
         for (const auto& a : args) {
           if (a.empty() || a[0] != '-') {
             return InvalidArgument(k + ": '" + a + "' is not an sbatch option (options start with -)");
           }
         }
         c->slurm_extra_args = std::move(args);
         return Status::Ok();
       }}},
      {"executor.leaseTime", {"10s", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(c->lease, AsDuration(k, v));
         return Status::Ok();
       }}},
      {"executor.registerTimeout", {"30s", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(c->register_timeout, AsDuration(k, v));
         return Status::Ok();
       }}},
      {"executor.pollTimeout", {"1s", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(c->poll_timeout, AsDuration(k, v));
         return Status::Ok();
       }}},
      {"executor.killGrace", {"5s", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(c->grace, AsDuration(k, v));
         return Status::Ok();
       }}},
      {"executor.agentPath", {"(next to epochd)", [](Config* c, const std::string&, const Json& v) {
         c->agent_path = AsString(v);
         return Status::Ok();
       }}},
      {"executor.isolation", {"auto", [](Config* c, const std::string& k, const Json& v) {
         std::string m = AsString(v);
         if (m != "auto" && m != "required" && m != "off") {
           return InvalidArgument(k + ": '" + m + "' is not one of auto, required, off");
         }
         c->isolation = m;
         return Status::Ok();
       }}},
      {"executor.enforce", {"auto", [](Config* c, const std::string& k, const Json& v) {
         std::string m = AsString(v);
         if (m != "auto" && m != "required" && m != "off") {
           return InvalidArgument(k + ": '" + m + "' is not one of auto, required, off");
         }
         c->enforce = m;
         return Status::Ok();
       }}},
      {"executor.maxPids", {"4096", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(c->max_pids, AsInt(k, v, 0, 4194304));
         return Status::Ok();
       }}},
      {"executor.cgroupRoot", {"(where the agent runs)", [](Config* c, const std::string& k, const Json& v) {
         std::string r = AsString(v);
         if (!r.empty() && r[0] != '/') return InvalidArgument(k + ": '" + r + "' is not an absolute path");
         c->cgroup_root = r;
         return Status::Ok();
       }}},
      {"executor.runAs", {"epoch-step", [](Config* c, const std::string& k, const Json& v) {
         std::string u = AsString(v);
         if (!u.empty()) RETURN_IF_ERROR(CheckRunAs(k, u));
         c->default_run_as = u;
         return Status::Ok();
       }}},
      {"executor.maxLogBytes", {"1Gi", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(auto n, AsBytes(k, v));
         c->max_log_bytes = n;
         return Status::Ok();
       }}},
      {"executor.metricsInterval", {"1s", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(c->metrics_interval, AsDuration(k, v));
         if (c->metrics_interval.count() <= 0) return InvalidArgument(k + ": must be positive");
         return Status::Ok();
       }}},
      {"executor.metricsMaxPoints", {"100000", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(c->metrics_max_points, AsInt(k, v, 1, 100000000));
         return Status::Ok();
       }}},
      {"executor.metricsMaxBytes", {"16Mi", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(auto n, AsBytes(k, v));
         if (n <= 0) return InvalidArgument(k + ": must be positive");
         c->metrics_max_bytes = n;
         return Status::Ok();
       }}},
      {"executor.maxInputBytes", {"16Gi", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(auto n, AsBytes(k, v));
         if (n == 0) return InvalidArgument(k + ": must be positive");
         c->max_input_bytes = static_cast<uint64_t>(n);
         return Status::Ok();
       }}},
      {"api.maxSteps", {"10000", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(auto n, AsInt(k, v, 1, 1000000));
         c->max_steps = static_cast<size_t>(n);
         return Status::Ok();
       }}},
      {"scheduler.preemption", {"off", [](Config* c, const std::string& k, const Json& v) {
         std::string mode = AsString(v);
         if (mode != "off" && mode != "priority") {
           return InvalidArgument(k + ": must be \"off\" or \"priority\", not \"" + mode + "\"");
         }
         c->preemption = mode == "priority";
         return Status::Ok();
       }}},
      {"scheduler.preemptionMinRunTime", {"5m", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(c->preemption_min_run_time, AsDuration(k, v));
         return Status::Ok();
       }}},
      {"scheduler.elasticMinRunTime", {"1m", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(c->elastic_min_run_time, AsDuration(k, v));
         return Status::Ok();
       }}},
      {"cache.maxEntries", {"10000", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(auto n, AsInt(k, v, 1, 100000000));
         c->cache_max_entries = static_cast<size_t>(n);
         return Status::Ok();
       }}},
      {"api.host", {"127.0.0.1", [](Config* c, const std::string&, const Json& v) {
         c->host = AsString(v);
         return Status::Ok();
       }}},
      {"api.maxBodyBytes", {"1048576", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(auto n, AsInt(k, v, 1024, 1LL << 30));
         c->max_body_bytes = static_cast<size_t>(n);
         return Status::Ok();
       }}},
      {"api.threads", {"32", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(auto n, AsInt(k, v, 1, 1024));
         c->threads = static_cast<int>(n);
         return Status::Ok();
       }}},
      {"api.ioThreads", {"2", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(auto n, AsInt(k, v, 1, 64));
         c->io_threads = static_cast<int>(n);
         return Status::Ok();
       }}},
      {"api.maxStreams", {"1024", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(auto n, AsInt(k, v, 1, 1000000));
         c->max_streams = static_cast<int>(n);
         return Status::Ok();
       }}},
      {"api.maxStreamsPerPrincipal", {"16", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(auto n, AsInt(k, v, 1, 1000000));
         c->max_streams_per_principal = static_cast<int>(n);
         return Status::Ok();
       }}},
      {"api.maxConnections", {"10000", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(auto n, AsInt(k, v, 16, 10000000));
         c->max_connections = static_cast<int>(n);
         return Status::Ok();
       }}},
      {"api.maxConnectionsPerClient", {"256", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(auto n, AsInt(k, v, 1, 10000000));
         c->max_connections_per_client = static_cast<int>(n);
         return Status::Ok();
       }}},
      {"api.maxLogResponseBytes", {"8388608", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(auto n, AsInt(k, v, 4096, 1LL << 30));
         c->max_log_response_bytes = static_cast<uint64_t>(n);
         return Status::Ok();
       }}},
      {"api.tlsHandshakeTimeout", {"10s", [](Config* c, const std::string& k, const Json& v) {
         return HttpTimeout(k, v, &c->tls_handshake_timeout);
       }}},
      {"api.headerTimeout", {"10s", [](Config* c, const std::string& k, const Json& v) {
         return HttpTimeout(k, v, &c->header_timeout);
       }}},
      {"api.bodyTimeout", {"30s", [](Config* c, const std::string& k, const Json& v) {
         return HttpTimeout(k, v, &c->body_timeout);
       }}},
      {"api.keepAliveTimeout", {"30s", [](Config* c, const std::string& k, const Json& v) {
         return HttpTimeout(k, v, &c->keep_alive_timeout);
       }}},
      {"api.writeTimeout", {"30s", [](Config* c, const std::string& k, const Json& v) {
         return HttpTimeout(k, v, &c->write_timeout);
       }}},
      {"api.sessionTtl", {"12h", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(c->session_ttl, AsDuration(k, v));
         if (c->session_ttl < std::chrono::minutes(1) || c->session_ttl > std::chrono::hours(24 * 30)) {
           return InvalidArgument(k + ": must be from 1m to 720h");
         }
         return Status::Ok();
       }}},
      {"ha.tailInterval", {"100ms", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(c->tail_interval, AsDuration(k, v));
         if (c->tail_interval < std::chrono::milliseconds(5) ||
             c->tail_interval > std::chrono::seconds(10)) {
           return InvalidArgument(k + ": must be between 5ms and 10s");
         }
         return Status::Ok();
       }}},
      {"ha.secondaryDir", {"<storage.dataDir>/standby/<master.name>-<pid>",
                           [](Config* c, const std::string&, const Json& v) {
                             c->secondary_dir = AsString(v);
                             return Status::Ok();
                           }}},
      {"api.advertiseUrl", {"http://<api.host>:<cluster.basePort>",
                            [](Config* c, const std::string&, const Json& v) {
                              c->advertise_url = AsString(v);
                              return Status::Ok();
                            }}},
  };
  return *keys;
}

constexpr const char* kTenantNamePattern = "[a-z0-9][a-z0-9._-]{0,62}";

// tenants.<name>.<setting>: the name may itself hold dots, so the setting is what
// follows the last one.
Status SetTenantKey(Config* c, const std::string& key, const Json& v) {
  const std::string rest = key.size() > 8 ? key.substr(8) : "";  // after "tenants."
  auto dot = rest.rfind('.');
  if (key == "tenants" || dot == std::string::npos) {
    return InvalidArgument(key +
                           ": expected tenants.<name>.maxGpus|runAs|inputRoots|"
                           "retention.outputs|retention.logs (values file: " +
                           R"({"tenants": {"<name>": {"maxGpus": 4}}}))");
  }
  std::string name = rest.substr(0, dot), setting = rest.substr(dot + 1);
  // tenants.<name>.retention.outputs|logs: two words of setting.
  if ((setting == "outputs" || setting == "logs") && name.size() > 10 &&
      std::string_view(name).substr(name.size() - 10) == ".retention") {
    name.resize(name.size() - 10);
    setting = "retention." + setting;
  }
  if (!IsValidName(name)) {
    return InvalidArgument(key + ": invalid tenant name '" + name + "' (expected " +
                           kTenantNamePattern + ")");
  }
  if (setting == "runAs") {
    std::string u = AsString(v);
    RETURN_IF_ERROR(CheckRunAs(key, u));
    c->tenant_run_as[name] = u;
    return Status::Ok();
  }
  if (setting == "inputRoots") {
    std::vector<std::string> given;
    if (v.is_array()) {
      for (const auto& r : v) {
        if (!r.is_string()) return InvalidArgument(key + ": expected absolute paths, got " + v.dump());
        given.push_back(r.get<std::string>());
      }
    } else if (v.is_string()) {
      std::stringstream in(v.get<std::string>());
      std::string item;
      while (std::getline(in, item, ',')) {
        if (!item.empty()) given.push_back(item);
      }
    } else {
      return InvalidArgument(key + ": expected absolute paths, got " + v.dump());
    }
    std::vector<std::string> roots;
    for (const auto& r : given) {
      auto norm = NormalizePath(r);
      if (!norm.ok()) return InvalidArgument(key + ": " + norm.status().message());
      if (*norm == "/") return InvalidArgument(key + ": '/' would let steps declare any file");
      roots.push_back(*norm);
    }
    c->tenant_input_roots[name] = std::move(roots);
    return Status::Ok();
  }
  if (setting == "retention.outputs" || setting == "retention.logs") {
    ASSIGN_OR_RETURN(Micros d, AsDuration(key, v));
    (setting == "retention.outputs" ? c->tenant_retention_outputs
                                    : c->tenant_retention_logs)[name] = d;
    return Status::Ok();
  }
  if (setting != "maxGpus") {
    return InvalidArgument(key + ": unknown tenant setting '" + setting +
                           "' (a tenant has: maxGpus, runAs, inputRoots, retention.outputs, "
                           "retention.logs)");
  }
  ASSIGN_OR_RETURN(auto n, AsInt(key, v, 0, 1000000));
  c->tenant_max_gpus[name] = static_cast<int>(n);
  return Status::Ok();
}

void Flatten(const Json& j, const std::string& prefix, std::vector<std::pair<std::string, Json>>* out) {
  for (auto& [k, v] : j.items()) {
    std::string key = prefix.empty() ? k : prefix + "." + k;
    if (v.is_object()) {
      Flatten(v, key, out);
    } else {
      out->push_back({key, v});
    }
  }
}

}  // namespace

Status SetKey(Config* config, const std::string& key, const Json& value) {
  if (key == "tenants" || key.rfind("tenants.", 0) == 0) return SetTenantKey(config, key, value);
  auto it = Keys().find(key);
  if (it == Keys().end()) return InvalidArgument("unknown configuration key '" + key + "'");
  return it->second.set(config, key, value);
}

Status ApplyValues(Config* config, const Json& values) {
  if (!values.is_object()) return InvalidArgument("values: must be a JSON object");
  std::vector<std::pair<std::string, Json>> flat;
  Flatten(values, "", &flat);
  for (const auto& [k, v] : flat) RETURN_IF_ERROR(SetKey(config, k, v));
  return Status::Ok();
}

Status ApplySetArg(Config* config, const std::string& arg) {
  auto eq = arg.find('=');
  if (eq == std::string::npos || eq == 0) {
    return InvalidArgument("--set expects key=value, got '" + arg + "'");
  }
  std::string key = arg.substr(0, eq), text = arg.substr(eq + 1);
  auto parsed = ParseJson(text);
  Json value = parsed.ok() && !parsed->is_object() && !parsed->is_array() ? *parsed : Json(text);
  return SetKey(config, key, value);
}

std::vector<std::pair<std::string, std::string>> DescribeKeys() {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [k, d] : Keys()) out.push_back({k, d.def});
  out.push_back({"tenants.<name>.maxGpus", "(unlimited)"});
  out.push_back({"tenants.<name>.runAs", "(executor.runAs)"});
  out.push_back({"tenants.<name>.inputRoots", "[] (only the tenant's own runs' outputs)"});
  out.push_back({"tenants.<name>.retention.outputs", "(retention.outputs)"});
  out.push_back({"tenants.<name>.retention.logs", "(retention.logs)"});
  return out;
}

Status ValidateConfig(const Config& config) {
  auto data = NormalizePath(config.data_dir.empty() ? "/" : config.data_dir);
  if (!data.ok()) return Status::Ok();  // a relative data dir is made absolute before use
  for (const auto& [tenant, roots] : config.tenant_input_roots) {
    for (const auto& root : roots) {
      if (IsBeneath(*data, root) || IsBeneath(root, *data)) {
        return InvalidArgument("tenants." + tenant + ".inputRoots: '" + root +
                               "' overlaps the data dir " + *data +
                               " (its control files would become readable inputs)");
      }
    }
  }
  return Status::Ok();
}

Json Config::ToJson() const {
  Json j{{"master.name", master_name},
         {"sig.maxReplicas", max_replicas},
         {"sig.minReplicas", min_replicas},
         {"sig.cpu", std::to_string(container_cpu_millis) + "m"},
         {"sig.memory", container_memory_bytes},
         {"sig.gpu", container_gpus},
         {"sig.ssAllocationUnit", allocation_unit},
         {"sig.ssAllocationInterval", FormatDuration(allocation_interval)},
         {"sig.idleTimeout", FormatDuration(idle_timeout)},
         {"cluster.basePort", base_port},
         {"storage.dataDir", data_dir},
         {"storage.snapshotEvery", snapshot_every},
         {"storage.minFreeBytes", min_free_bytes},
         {"executor.backend", backend},
         {"executor.leaseTime", FormatDuration(lease)},
         {"executor.registerTimeout", FormatDuration(register_timeout)},
         {"executor.pollTimeout", FormatDuration(poll_timeout)},
         {"api.host", host},
         {"api.maxBodyBytes", max_body_bytes},
         {"api.threads", threads},
         {"api.ioThreads", io_threads},
         {"api.maxStreams", max_streams},
         {"api.maxStreamsPerPrincipal", max_streams_per_principal},
         {"api.maxConnections", max_connections},
         {"api.maxConnectionsPerClient", max_connections_per_client},
         {"api.maxLogResponseBytes", max_log_response_bytes},
         {"api.tlsHandshakeTimeout", FormatDuration(tls_handshake_timeout)},
         {"api.headerTimeout", FormatDuration(header_timeout)},
         {"api.bodyTimeout", FormatDuration(body_timeout)},
         {"api.keepAliveTimeout", FormatDuration(keep_alive_timeout)},
         {"api.writeTimeout", FormatDuration(write_timeout)},
         {"api.sessionTtl", FormatDuration(session_ttl)},
         {"api.advertiseUrl", advertise_url},
         {"api.tokensFile", tokens_file},
         {"cluster.tlsCertificate", tls_certificate},
         {"cluster.tlsKey", tls_key},
         {"cluster.tlsCaCertificate", tls_ca},
         {"ha.tailInterval", FormatDuration(tail_interval)},
         {"ha.secondaryDir", secondary_dir}};
  j["executor.watchInterval"] = FormatDuration(watch_interval);
  j["slurm.partition"] = slurm_partition;
  j["slurm.account"] = slurm_account;
  j["slurm.qos"] = slurm_qos;
  j["slurm.timeLimit"] = slurm_time_limit;
  j["slurm.extraArgs"] = slurm_extra_args;
  for (const auto& [name, n] : tenant_max_gpus) j["tenants." + name + ".maxGpus"] = n;
  for (const auto& [name, u] : tenant_run_as) j["tenants." + name + ".runAs"] = u;
  for (const auto& [name, r] : tenant_input_roots) j["tenants." + name + ".inputRoots"] = r;
  j["retention.outputs"] = FormatDuration(retention_outputs);
  j["retention.logs"] = FormatDuration(retention_logs);
  j["retention.interval"] = FormatDuration(retention_interval);
  for (const auto& [name, d] : tenant_retention_outputs) {
    j["tenants." + name + ".retention.outputs"] = FormatDuration(d);
  }
  for (const auto& [name, d] : tenant_retention_logs) {
    j["tenants." + name + ".retention.logs"] = FormatDuration(d);
  }
  j["executor.runAs"] = default_run_as;
  j["executor.isolation"] = isolation;
  j["executor.enforce"] = enforce;
  j["executor.maxPids"] = max_pids;
  j["executor.cgroupRoot"] = cgroup_root;
  j["executor.maxLogBytes"] = max_log_bytes;
  j["executor.maxInputBytes"] = max_input_bytes;
  j["executor.metricsInterval"] = FormatDuration(metrics_interval);
  j["executor.metricsMaxPoints"] = metrics_max_points;
  j["executor.metricsMaxBytes"] = metrics_max_bytes;
  j["api.maxSteps"] = max_steps;
  j["cache.maxEntries"] = cache_max_entries;
  j["scheduler.preemption"] = preemption ? "priority" : "off";
  j["scheduler.preemptionMinRunTime"] = FormatDuration(preemption_min_run_time);
  j["scheduler.elasticMinRunTime"] = FormatDuration(elastic_min_run_time);
  return j;
}

}  // namespace epoch::api
