#include "api/config.h"

#include <cctype>
#include <functional>
#include <sstream>

#include "api/auth.h"
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
      {"api.host", {"127.0.0.1", [](Config* c, const std::string&, const Json& v) {
         c->host = AsString(v);
         return Status::Ok();
       }}},
      {"api.maxBodyBytes", {"1048576", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(auto n, AsInt(k, v, 1024, 1LL << 30));
         c->max_body_bytes = static_cast<size_t>(n);
         return Status::Ok();
       }}},
      {"api.threads", {"64", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(auto n, AsInt(k, v, 4, 4096));
         c->threads = static_cast<int>(n);
         return Status::Ok();
       }}},
      {"api.maxStreams", {"32", [](Config* c, const std::string& k, const Json& v) {
         ASSIGN_OR_RETURN(auto n, AsInt(k, v, 1, 4096));
         c->max_streams = static_cast<int>(n);
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
    return InvalidArgument(key + ": expected tenants.<name>.maxGpus (values file: " +
                           R"({"tenants": {"<name>": {"maxGpus": 4}}}))");
  }
  std::string name = rest.substr(0, dot), setting = rest.substr(dot + 1);
  if (!IsValidName(name)) {
    return InvalidArgument(key + ": invalid tenant name '" + name + "' (expected " +
                           kTenantNamePattern + ")");
  }
  if (setting != "maxGpus") {
    return InvalidArgument(key + ": unknown tenant setting '" + setting +
                           "' (a tenant has: maxGpus)");
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
  return out;
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
              {"executor.backend", backend},
                      {"executor.leaseTime", FormatDuration(lease)},
              {"executor.registerTimeout", FormatDuration(register_timeout)},
              {"executor.pollTimeout", FormatDuration(poll_timeout)},
              {"api.host", host},
              {"api.maxBodyBytes", max_body_bytes},
              {"api.threads", threads},
              {"api.maxStreams", max_streams},
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
  return j;
}

}  // namespace epoch::api
