// The protocol between epoch-agent and its sandbox shim, epoch-sandbox
// (executors/sandbox/sandbox_main.cc). Header-only, standard library only, so the shim
// links nothing but libc and libstdc++ and starts fast.
//
// The agent starts one shim per attempt (executors/process.h: own process group,
// PR_SET_PDEATHSIG, stdout+stderr = the attempt's log file) with two extra fds:
//
//   fd 3 (kSpecFd)    read by the shim at start: a SandboxSpec, EncodeSpec's bytes (a
//                     memfd: the step's environment never reaches the shim's own
//                     environment or anybody's argv)
//   fd 4 (kStatusFd)  written by the shim once, just before it exits: a SandboxStatus
//                     (pre-exec failure, log bytes written and dropped)
//
// and the shim exits with the step's exact status (its exit code, or the same signal).
//
// Wire format of both records: a sequence of "key=value" entries, each ended by a NUL
// byte; list fields repeat their key, in order. Values never hold NUL (argv and
// environment strings cannot). Unknown keys are an error for the spec (agent and shim
// come from one build) and ignored in the status.
//
// Thread-safety: plain functions and values.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace epoch::executors::sandbox {

inline constexpr int kSpecFd = 3;
inline constexpr int kStatusFd = 4;
// What `epoch-sandbox --probe` prints on stdout (then exit 0) when it can build a
// sandbox here; otherwise one line saying why, and exit 1.
inline constexpr std::string_view kProbeOk = "namespaces";

// A path made visible inside the sandbox at its own canonical path.
struct Bind {
  std::string path;  // absolute, normalised, as the assignment names it
  bool read_only = true;
  // The canonical path `path` must resolve to (no symlink may redirect it); empty:
  // anything that is not the data dir, inside it, or above it.
  std::string expect;
};

struct SandboxSpec {
  // Build namespaces and switch users (the agent is root); false: only run the step
  // and cap its log.
  bool isolate = false;
  std::vector<std::string> argv;  // argv[0] is looked up on the step's PATH
  std::vector<std::string> env;   // "K=V": the step's whole environment
  std::string cwd;                // the step's working dir
  std::string data_dir;           // hidden inside the sandbox (its canonical path)
  std::vector<Bind> binds;        // the run's workspace (read-write) first, then extras
  bool switch_user = false;       // setgroups/setgid/setuid to these before exec
  uint32_t uid = 0, gid = 0;
  std::vector<uint32_t> groups;  // supplementary groups
  int64_t max_log_bytes = 0;     // 0: no cap
  int64_t tmp_bytes = 0;         // size of the private /tmp (tmpfs); 0: the kernel default
};

struct SandboxStatus {
  // A failure before the step's exec ("exec failed: No such file or directory",
  // "mount failed: ..."); the shim then exits 127.
  std::string error;
  int64_t log_bytes = 0;          // step output written to the log
  int64_t log_dropped_bytes = 0;  // discarded past max_log_bytes
  bool log_truncated = false;
};

inline constexpr char kUnitSeparator = '\x1f';

using Fields = std::vector<std::pair<std::string, std::string>>;

inline std::string EncodeFields(const Fields& fields) {
  std::string out;
  for (const auto& [k, v] : fields) {
    out += k;
    out += '=';
    out += v;
    out += '\0';
  }
  return out;
}

// False when an entry has no '=' or the bytes do not end with NUL.
inline bool DecodeFields(std::string_view bytes, Fields* out) {
  out->clear();
  size_t i = 0;
  while (i < bytes.size()) {
    size_t end = bytes.find('\0', i);
    if (end == std::string_view::npos) return false;
    std::string_view entry = bytes.substr(i, end - i);
    size_t eq = entry.find('=');
    if (eq == std::string_view::npos) return false;
    out->emplace_back(std::string(entry.substr(0, eq)), std::string(entry.substr(eq + 1)));
    i = end + 1;
  }
  return true;
}

inline bool ParseInt(const std::string& s, int64_t* out) {
  if (s.empty() || s.size() > 19) return false;
  int64_t v = 0;
  size_t i = s[0] == '-' ? 1 : 0;
  if (i == s.size()) return false;
  for (; i < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (s[i] - '0');
  }
  *out = s[0] == '-' ? -v : v;
  return true;
}

inline std::string EncodeSpec(const SandboxSpec& s) {
  Fields f;
  f.emplace_back("isolate", s.isolate ? "1" : "0");
  for (const auto& a : s.argv) f.emplace_back("arg", a);
  for (const auto& e : s.env) f.emplace_back("env", e);
  f.emplace_back("cwd", s.cwd);
  f.emplace_back("data_dir", s.data_dir);
  for (const auto& b : s.binds) {
    // One entry per bind: "ro" or "rw", <expect>, <path>, split by kUnitSeparator (the
    // agent refuses paths with control characters).
    f.emplace_back("bind", std::string(b.read_only ? "ro" : "rw") + kUnitSeparator + b.expect +
                               kUnitSeparator + b.path);
  }
  f.emplace_back("switch_user", s.switch_user ? "1" : "0");
  f.emplace_back("uid", std::to_string(s.uid));
  f.emplace_back("gid", std::to_string(s.gid));
  for (uint32_t g : s.groups) f.emplace_back("group", std::to_string(g));
  f.emplace_back("max_log_bytes", std::to_string(s.max_log_bytes));
  f.emplace_back("tmp_bytes", std::to_string(s.tmp_bytes));
  return EncodeFields(f);
}

// False (and *error says why) for malformed bytes or an unknown key.
inline bool DecodeSpec(std::string_view bytes, SandboxSpec* s, std::string* error) {
  Fields f;
  if (!DecodeFields(bytes, &f)) {
    *error = "malformed sandbox spec";
    return false;
  }
  *s = SandboxSpec{};
  for (const auto& [k, v] : f) {
    int64_t n = 0;
    bool ok = true;
    if (k == "isolate") {
      s->isolate = v == "1";
    } else if (k == "arg") {
      s->argv.push_back(v);
    } else if (k == "env") {
      s->env.push_back(v);
    } else if (k == "cwd") {
      s->cwd = v;
    } else if (k == "data_dir") {
      s->data_dir = v;
    } else if (k == "bind") {
      size_t first = v.find(kUnitSeparator);
      size_t second = first == std::string::npos ? first : v.find(kUnitSeparator, first + 1);
      ok = first == 2 && second != std::string::npos &&
           (v[0] == 'r' && (v[1] == 'o' || v[1] == 'w'));
      if (ok) {
        s->binds.push_back(
            Bind{v.substr(second + 1), v[1] == 'o', v.substr(first + 1, second - first - 1)});
      }
    } else if (k == "switch_user") {
      s->switch_user = v == "1";
    } else if (k == "uid") {
      ok = ParseInt(v, &n) && n >= 0;
      s->uid = static_cast<uint32_t>(n);
    } else if (k == "gid") {
      ok = ParseInt(v, &n) && n >= 0;
      s->gid = static_cast<uint32_t>(n);
    } else if (k == "group") {
      ok = ParseInt(v, &n) && n >= 0;
      s->groups.push_back(static_cast<uint32_t>(n));
    } else if (k == "max_log_bytes") {
      ok = ParseInt(v, &s->max_log_bytes) && s->max_log_bytes >= 0;
    } else if (k == "tmp_bytes") {
      ok = ParseInt(v, &s->tmp_bytes) && s->tmp_bytes >= 0;
    } else {
      *error = "unknown sandbox spec field '" + k + "'";
      return false;
    }
    if (!ok) {
      *error = "bad sandbox spec field " + k + "=" + v;
      return false;
    }
  }
  if (s->argv.empty() || s->argv[0].empty()) {
    *error = "sandbox spec has no command";
    return false;
  }
  return true;
}

inline std::string EncodeStatus(const SandboxStatus& s) {
  Fields f;
  if (!s.error.empty()) f.emplace_back("error", s.error);
  f.emplace_back("log_bytes", std::to_string(s.log_bytes));
  f.emplace_back("log_dropped_bytes", std::to_string(s.log_dropped_bytes));
  f.emplace_back("log_truncated", s.log_truncated ? "1" : "0");
  return EncodeFields(f);
}

inline bool DecodeStatus(std::string_view bytes, SandboxStatus* s) {
  Fields f;
  if (!DecodeFields(bytes, &f)) return false;
  *s = SandboxStatus{};
  for (const auto& [k, v] : f) {
    if (k == "error") {
      s->error = v;
    } else if (k == "log_bytes") {
      ParseInt(v, &s->log_bytes);
    } else if (k == "log_dropped_bytes") {
      ParseInt(v, &s->log_dropped_bytes);
    } else if (k == "log_truncated") {
      s->log_truncated = v == "1";
    }
  }
  return true;
}

}  // namespace epoch::executors::sandbox
