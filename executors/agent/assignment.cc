// An assignment from the master, parsed and checked (agent.h, "An assignment"):
// ParseAssignment (its fields and defaults, where its paths may be, its GPUs resolved
// to this container's), CheckPath, and VerifyInputs (upstream outputs against the
// digests their producers recorded).
#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>

#include "common/files.h"
#include "common/sha256.h"
#include "executors/agent/agent_internal.h"

namespace epoch::executors::agent_internal {

namespace {

// Absolute paths stay; relative ones are taken relative to the data dir.
std::string UnderDataDir(const std::string& data_dir, const std::string& p) {
  if (!p.empty() && p[0] == '/') return p;
  return JoinPathParts(data_dir, p);
}

}  // namespace

// Checks each input against its recorded digest; the first that differs or cannot be
// read, as the attempt's failure reason. Read as the agent, without following a
// symlink (a step could otherwise swap an output for a link to a secret).
Status VerifyInputs(const Assignment& a, const CanonicalOf& canonical) {
  for (const auto& [path, want] : a.inputs) {
    auto got = Sha256OfExactFile(path, canonical(path));
    if (!got.ok()) {
      return FailedPrecondition("input_missing: " + path + ": " + got.status().message());
    }
    if (*got != want) {
      return FailedPrecondition("input_mismatch: " + path + " has sha256 " + *got +
                                ", its producer recorded " + want);
    }
  }
  return Status::Ok();
}

namespace {

// Maps the assignment's GPU indices to the child's CUDA_VISIBLE_DEVICES (visible_ids)
// and EPOCH_GPU_UUIDS. kInvalidArgument "unknown GPU index N" for one this container
// does not have (a UUID of one of its GPUs is accepted too), or one listed twice.
Status ResolveGpus(const gpu::Inventory& inventory, Assignment* a) {
  std::set<int> seen;
  for (const auto& want : a->gpus) {
    const gpu::GpuInfo* found = nullptr;
    for (const auto& g : inventory.gpus) {
      if (want == std::to_string(g.index) || (!g.uuid.empty() && want == g.uuid)) {
        found = &g;
        break;
      }
    }
    if (found == nullptr) return InvalidArgument("unknown GPU index " + want);
    if (!seen.insert(found->index).second) {
      return InvalidArgument("GPU index " + want + " is listed twice");
    }
    if (!found->healthy) {
      spdlog::warn("attempt {} is given GPU {} ({}), which is not healthy: {}", a->attempt_id,
                   found->index, found->uuid, found->reason);
    }
    const char* sep = a->cuda_visible_devices.empty() ? "" : ",";
    a->cuda_visible_devices += sep + found->visible_id;
    a->gpu_uuids += sep + found->uuid;
  }
  return Status::Ok();
}

}  // namespace

// kInvalidArgument unless p is absolute, normalised and free of control characters.
Status CheckPath(const std::string& what, const std::string& p) {
  for (unsigned char c : p) {
    if (c < 0x20 || c == 0x7f) return InvalidArgument(what + " has a control character");
  }
  auto n = NormalizePath(p);
  if (!n.ok() || *n != p) {
    return InvalidArgument(what + " '" + p + "' is not an absolute, normalised path");
  }
  return Status::Ok();
}

namespace {

// Where the assignment's paths may be: the workspace in <data-dir>/runs/, the outputs
// in the workspace, the log in <data-dir>/logs/, mounts anywhere but the control
// plane (inside the data dir only under runs/; never the data dir or a folder above it).
Status CheckPlaces(const Assignment& a, const std::string& data_dir) {
  const std::string runs = data_dir + "/runs", logs = data_dir + "/logs";
  RETURN_IF_ERROR(CheckPath("workspace", a.workspace));
  RETURN_IF_ERROR(CheckPath("outputs_dir", a.outputs_dir));
  RETURN_IF_ERROR(CheckPath("log_path", a.log_path));
  if (!IsBeneath(a.workspace, runs) || a.workspace == runs) {
    return InvalidArgument("workspace " + a.workspace + " is not inside " + runs);
  }
  if (!IsBeneath(a.outputs_dir, a.workspace) || a.outputs_dir == a.workspace) {
    return InvalidArgument("outputs_dir " + a.outputs_dir + " is not inside the workspace");
  }
  if (!IsBeneath(a.log_path, logs) || a.log_path == logs) {
    return InvalidArgument("log_path " + a.log_path + " is not inside " + logs);
  }
  // Live metrics and checkpoints: inside the workspace, which the sandbox binds
  // read-write (so inside runs/).
  if (!a.metrics_path.empty()) {
    RETURN_IF_ERROR(CheckPath("metrics.path", a.metrics_path));
    if (!IsBeneath(a.metrics_path, a.workspace) || a.metrics_path == a.workspace) {
      return InvalidArgument("metrics.path " + a.metrics_path + " is not inside the workspace");
    }
  }
  if (!a.checkpoint_dir.empty()) {
    RETURN_IF_ERROR(CheckPath("checkpoint_dir", a.checkpoint_dir));
    if (!IsBeneath(a.checkpoint_dir, a.workspace) || a.checkpoint_dir == a.workspace) {
      return InvalidArgument("checkpoint_dir " + a.checkpoint_dir + " is not inside the workspace");
    }
  }
  for (const auto& m : a.mounts) {
    RETURN_IF_ERROR(CheckPath("mount", m.path));
    if (IsBeneath(data_dir, m.path)) {
      return InvalidArgument("mount " + m.path + " holds the data dir");
    }
    // The sandbox builds these itself; the host's would show its processes and devices.
    for (const char* own : {"/proc", "/sys", "/dev"}) {
      if (IsBeneath(m.path, own)) return InvalidArgument("mount " + m.path + " is under " + own);
    }
    if (IsBeneath(m.path, data_dir) && (!IsBeneath(m.path, runs) || m.path == runs)) {
      return InvalidArgument("mount " + m.path + " is in the data dir but not inside " + runs);
    }
  }
  return Status::Ok();
}

}  // namespace

Result<Assignment> ParseAssignment(const Json& j, const std::string& data_dir,
                                   const gpu::Inventory& inventory) {
  if (!j.is_object()) return InvalidArgument("assignment is not an object");
  Assignment a;
  a.attempt_id = GetString(j, "attempt_id");
  if (a.attempt_id.empty()) return InvalidArgument("assignment has no attempt_id");
  // "<run>/<step>/<attempt>" gives the defaults for the fields below.
  std::vector<std::string> parts;
  for (size_t i = 0, j2; i <= a.attempt_id.size(); i = j2 + 1) {
    j2 = a.attempt_id.find('/', i);
    if (j2 == std::string::npos) j2 = a.attempt_id.size();
    parts.push_back(a.attempt_id.substr(i, j2 - i));
  }
  a.run = GetString(j, "run", parts.size() > 0 ? parts[0] : "");
  a.step = GetString(j, "step", parts.size() > 1 ? parts[1] : "");
  a.attempt = GetString(j, "attempt", parts.size() > 2 ? parts[2] : "");
  auto argv = j.find("argv");
  if (argv == j.end() || !argv->is_array() || argv->empty()) {
    return InvalidArgument("argv must be a non-empty array of strings");
  }
  for (const auto& s : *argv) {
    if (!s.is_string()) return InvalidArgument("argv must be a non-empty array of strings");
    a.argv.push_back(s.get<std::string>());
  }
  if (auto env = j.find("env"); env != j.end() && !env->is_null()) {
    if (!env->is_object()) return InvalidArgument("env must be an object");
    for (auto it = env->begin(); it != env->end(); ++it) {
      a.env[it.key()] = it.value().is_string() ? it.value().get<std::string>() : it.value().dump();
    }
  }
  std::string run_dir = "runs/" + a.run;
  a.workspace = UnderDataDir(data_dir, GetString(j, "workspace", run_dir));
  a.outputs_dir = UnderDataDir(
      data_dir, GetString(j, "outputs_dir", run_dir + "/" + a.step + "/" + a.attempt + "/outputs"));
  a.log_path = UnderDataDir(
      data_dir,
      GetString(j, "log_path", "logs/" + a.run + "/" + a.step + "/" + a.attempt + ".log"));
  if (auto in = j.find("inputs"); in != j.end() && !in->is_null()) {
    if (!in->is_array()) return InvalidArgument("inputs must be an array");
    for (const auto& x : *in) {
      if (!x.is_object() || !x.contains("path") || !x["path"].is_string() ||
          !x.contains("sha256") || !x["sha256"].is_string()) {
        return InvalidArgument("inputs: each must be {\"path\", \"sha256\"}");
      }
      a.inputs.emplace_back(UnderDataDir(data_dir, x["path"].get<std::string>()),
                            x["sha256"].get<std::string>());
    }
  }
  // {"cpu_millis", "memory_bytes"} under `key`, each a non-negative integer or null.
  auto quantity = [&](const char* key, const char* field, int64_t* out) -> Status {
    auto r = j.find(key);
    if (r == j.end() || r->is_null()) return Status::Ok();
    if (!r->is_object()) return InvalidArgument(std::string(key) + " must be an object");
    auto f = r->find(field);
    if (f == r->end() || f->is_null()) return Status::Ok();
    if (!f->is_number_integer() || f->get<int64_t>() < 0) {
      return InvalidArgument(std::string(key) + "." + field + " must be a non-negative integer");
    }
    *out = f->get<int64_t>();
    return Status::Ok();
  };
  RETURN_IF_ERROR(quantity("resources", "cpu_millis", &a.cpu_request_millis));
  RETURN_IF_ERROR(quantity("limits", "cpu_millis", &a.cpu_limit_millis));
  RETURN_IF_ERROR(quantity("limits", "memory_bytes", &a.memory_limit_bytes));
  if (auto t = j.find("timeout_ms"); t != j.end() && !t->is_null()) {
    if (!t->is_number()) return InvalidArgument("timeout_ms must be a number");
    a.timeout_ms = std::max<int64_t>(0, t->get<int64_t>());
  }
  a.tenant = GetString(j, "tenant");
  if (auto r = j.find("run_as"); r != j.end() && !r->is_null()) {
    if (!r->is_string()) return InvalidArgument("run_as must be a string");
    a.run_as = r->get<std::string>();
  }
  if (auto ms = j.find("mounts"); ms != j.end() && !ms->is_null()) {
    if (!ms->is_array()) return InvalidArgument("mounts must be an array");
    for (const auto& m : *ms) {
      if (!m.is_object() || !m.contains("path") || !m["path"].is_string()) {
        return InvalidArgument("mounts: each must be {\"path\", \"read_only\"}");
      }
      Mount mount{m["path"].get<std::string>(), true};
      if (auto ro = m.find("read_only"); ro != m.end() && !ro->is_null()) {
        if (!ro->is_boolean()) return InvalidArgument("mounts: read_only must be a boolean");
        mount.read_only = ro->get<bool>();
      }
      a.mounts.push_back(std::move(mount));
    }
  }
  if (auto cap = j.find("max_log_bytes"); cap != j.end() && !cap->is_null()) {
    if (!cap->is_number_integer() || cap->get<int64_t>() < 0) {
      return InvalidArgument("max_log_bytes must be a non-negative integer");
    }
    a.max_log_bytes = cap->get<int64_t>();
  }
  if (auto m = j.find("metrics"); m != j.end() && !m->is_null()) {
    auto p = m->is_object() ? m->find("path") : m->end();
    if (!m->is_object() || p == m->end() || !p->is_string() || p->get<std::string>().empty()) {
      return InvalidArgument(
          "metrics must be {\"path\", \"interval_ms\", \"max_points\", "
          "\"max_bytes\"}");
    }
    a.metrics_path = UnderDataDir(data_dir, p->get<std::string>());
    for (auto [key, out] : {std::pair{"interval_ms", &a.metrics_interval_ms},
                            std::pair{"max_points", &a.metrics_max_points},
                            std::pair{"max_bytes", &a.metrics_max_bytes}}) {
      auto v = m->find(key);
      if (v == m->end() || v->is_null()) continue;
      if (!v->is_number_integer() || v->get<int64_t>() < 0) {
        return InvalidArgument(std::string("metrics.") + key + " must be a non-negative integer");
      }
      *out = v->get<int64_t>();
    }
    // Never a busy loop, whatever the master asks.
    a.metrics_interval_ms = std::max<int64_t>(a.metrics_interval_ms, 50);
  }
  if (auto c = j.find("checkpoint_dir"); c != j.end() && !c->is_null()) {
    if (!c->is_string() || c->get<std::string>().empty()) {
      return InvalidArgument("checkpoint_dir must be a path");
    }
    a.checkpoint_dir = UnderDataDir(data_dir, c->get<std::string>());
  }
  RETURN_IF_ERROR(CheckPlaces(a, data_dir));
  if (auto g = j.find("gpus"); g != j.end() && !g->is_null()) {
    if (!g->is_array()) return InvalidArgument("gpus must be an array");
    for (const auto& x : *g) {
      if (x.is_string()) {
        a.gpus.push_back(x.get<std::string>());
      } else if (x.is_number_integer()) {
        a.gpus.push_back(std::to_string(x.get<int64_t>()));
      } else if (x.is_object() && x.contains("index")) {
        a.gpus.push_back(GetString(x, "index"));
      } else {
        return InvalidArgument("gpus entries must be indices or uuids");
      }
    }
  }
  RETURN_IF_ERROR(ResolveGpus(inventory, &a));
  return a;
}

}  // namespace epoch::executors::agent_internal
