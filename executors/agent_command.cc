#include "executors/agent_command.h"

extern char** environ;

namespace epoch::executors {

namespace {

std::string DurationFlag(Micros d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + "ms";
}

}  // namespace

Status CheckContainerSpec(const engine::ContainerSpec& spec) {
  if (spec.id.empty() || spec.id.find('/') != std::string::npos || spec.id[0] == '.') {
    return InvalidArgument("container id '" + spec.id + "' is not usable as a folder name");
  }
  if (spec.master_url.empty() || spec.data_dir.empty()) {
    return InvalidArgument("container spec needs a master_url and a data_dir");
  }
  return Status::Ok();
}

std::vector<std::string> AgentCommandLine(const std::string& agent_path,
                                          const engine::ContainerSpec& spec,
                                          const std::string& backend, const AgentFlags& flags) {
  std::vector<std::string> args = {agent_path,
                                   "--id",
                                   spec.id,
                                   "--master",
                                   spec.master_url,
                                   "--data-dir",
                                   spec.data_dir,
                                   "--cpu-millis",
                                   std::to_string(spec.cpu_millis),
                                   "--memory-bytes",
                                   std::to_string(spec.memory_bytes),
                                   "--gpus",
                                   std::to_string(spec.gpus),
                                   "--backend",
                                   backend,
                                   "--grace",
                                   DurationFlag(flags.grace),
                                   "--orphan-timeout",
                                   DurationFlag(flags.orphan_timeout),
                                   "--log-format",
                                   flags.log_format,
                                   "--log-level",
                                   flags.log_level};
  if (!flags.ca_cert.empty()) {
    args.push_back("--ca-cert");
    args.push_back(flags.ca_cert);
  }
  return args;
}

std::vector<std::string> EnvironmentWith(const std::map<std::string, std::string>& extra) {
  std::map<std::string, std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string kv = *e;
    auto eq = kv.find('=');
    if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  for (const auto& [k, v] : extra) env[k] = v;
  std::vector<std::string> out;
  out.reserve(env.size());
  for (const auto& [k, v] : env) out.push_back(k + "=" + v);
  return out;
}

}  // namespace epoch::executors
