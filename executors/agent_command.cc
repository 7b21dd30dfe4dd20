#include "executors/agent_command.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "common/files.h"

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

std::string CredentialPath(const engine::ContainerSpec& spec) {
  return spec.data_dir + "/containers/" + spec.id + "/credential";
}

Status PrepareContainerDir(const engine::ContainerSpec& spec) {
  std::string dir = spec.data_dir + "/containers/" + spec.id;
  RETURN_IF_ERROR(MakeDirs(dir));
  // The agent's state and its credential: nobody else's business, its steps' least.
  if (chmod(dir.c_str(), 0700) != 0) {
    return Internal("chmod " + dir + ": " + std::strerror(errno));
  }
  if (spec.credential.empty()) return Status::Ok();
  Status st = WriteFileDurably(CredentialPath(spec), spec.credential + "\n", 0600);
  if (!st.ok()) return Internal("writing the credential of container " + spec.id + " failed");
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
                                   flags.log_level,
                                   "--isolation",
                                   flags.isolation,
                                   "--enforce",
                                   flags.enforce,
                                   "--max-pids",
                                   std::to_string(flags.max_pids)};
  if (!flags.cgroup_root.empty()) {
    args.push_back("--cgroup-root");
    args.push_back(flags.cgroup_root);
  }
  if (!flags.ca_cert.empty()) {
    args.push_back("--ca-cert");
    args.push_back(flags.ca_cert);
  }
  if (!spec.credential.empty()) {
    args.push_back("--credential-file");
    args.push_back(CredentialPath(spec));
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
