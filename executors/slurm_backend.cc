#include "executors/slurm_backend.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>

#include "common/fd.h"
#include "common/files.h"
#include "common/units.h"

namespace epoch::executors {

namespace {

struct ToolResult {
  int exit_code = -1;  // -1: killed (timeout or signal)
  bool timed_out = false;
  std::string output;  // stdout and stderr together
};

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  size_t i = 0;
  while (i < s.size() && (s[i] == ' ' || s[i] == '\n')) ++i;
  return s.substr(i);
}

// Runs argv (argv[0] looked up on PATH) with env, stdin /dev/null, stdout and stderr
// captured (at most 1 MiB kept). Kills it at the deadline. posix_spawn: safe in a
// multi-threaded master.
Result<ToolResult> RunTool(const std::vector<std::string>& argv,
                           const std::map<std::string, std::string>& extra_env, Micros timeout) {
  std::vector<std::string> env_strings = EnvironmentWith(extra_env);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = argv;
  std::vector<char*> cargv;
  for (auto& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);

  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return Internal(std::string("pipe2: ") + std::strerror(errno));
  UniqueFd read_end(fds[0]), write_end(fds[1]);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, write_end.get(), 1);
  posix_spawn_file_actions_adddup2(&fa, write_end.get(), 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t empty;
  sigemptyset(&empty);
  posix_spawnattr_setsigmask(&attr, &empty);
  sigset_t def;
  sigemptyset(&def);
  sigaddset(&def, SIGPIPE);
  sigaddset(&def, SIGTERM);
  sigaddset(&def, SIGINT);
  posix_spawnattr_setsigdefault(&attr, &def);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, cargv[0], &fa, &attr, cargv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  write_end.reset();
  if (rc != 0) return Unavailable("cannot run " + argv[0] + ": " + std::strerror(rc));
  ToolResult out;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  char buf[4096];
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      out.timed_out = true;
      kill(pid, SIGKILL);
      break;
    }
    pollfd p{read_end.get(), POLLIN, 0};
    int n = poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) continue;
    ssize_t got = read(read_end.get(), buf, sizeof(buf));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    if (out.output.size() < (1 << 20)) out.output.append(buf, static_cast<size_t>(got));
  }
  read_end.reset();
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!out.timed_out && WIFEXITED(status)) out.exit_code = WEXITSTATUS(status);
  if (out.exit_code == 127 && out.output.empty()) {
    out.output = argv[0] + ": command not found";
  }
  return out;
}
std::string Words(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) s += (s.empty() ? "" : " ") + a;
  return s;
}

// Slurm's message without the "sbatch: error: " noise, on one line.
std::string OneLine(const std::string& output) {
  std::string s;
  std::istringstream in(output);
  std::string line;
  while (std::getline(in, line)) {
    line = Trim(line);
    if (line.empty()) continue;
    s += (s.empty() ? "" : "; ") + line;
  }
  return s.size() > 1000 ? s.substr(0, 1000) + "..." : s;
}

bool ValidJobId(const std::string& h) {
  if (h.empty() || h.size() > 20) return false;
  for (char c : h) {
    if (!(c >= '0' && c <= '9') && c != '_') return false;
  }
  return h[0] != '_';
}

}  // namespace

// The engine's view of a job: pending, running, or gone with Slurm's words.
engine::ContainerDescription DescriptionOf(const std::string& handle, const SlurmJobInfo& info,
                                           const std::string& source) {
  using State = engine::ContainerDescription::State;
  engine::ContainerDescription d;
  d.backend_state = info.state;
  d.state = IsPendingState(info.state)  ? State::kPending
            : IsActiveState(info.state) ? State::kRunning
                                        : State::kGone;
  d.detail = "slurm job " + handle + " " + info.state;
  if (!info.exit_code.empty() && d.state == State::kGone) d.detail += " (exit code " + info.exit_code + ")";
  if (!info.reason.empty() && info.reason != "None") d.detail += " reason " + info.reason;
  if (!info.nodes.empty() && info.nodes != "(null)") d.detail += " on " + info.nodes;
  if (!source.empty()) d.detail += " (" + source + ")";
  return d;
}

std::string ShellQuote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'') q += "'\\''";
    else q += c;
  }
  return q + "'";
}

Result<std::string> ParseSbatchJobId(const std::string& output) {
  // The last non-empty line: sbatch may print warnings before it.
  std::istringstream in(output);
  std::string line, last;
  while (std::getline(in, line)) {
    line = Trim(line);
    if (!line.empty()) last = line;
  }
  std::string id = last.substr(0, last.find(';'));
  if (!ValidJobId(id)) return Internal("sbatch printed no job id: '" + OneLine(output) + "'");
  return id;
}

Result<SlurmJobInfo> ParseScontrolJob(const std::string& output) {
  SlurmJobInfo info;
  std::istringstream in(output);
  std::string tok;
  while (in >> tok) {
    auto eq = tok.find('=');
    if (eq == std::string::npos) continue;
    std::string k = tok.substr(0, eq), v = tok.substr(eq + 1);
    if (k == "JobState") info.state = v;
    else if (k == "Reason") info.reason = v;
    else if (k == "ExitCode") info.exit_code = v;
    else if (k == "NodeList") info.nodes = v;
  }
  if (info.state.empty()) return NotFound("no JobState in: '" + OneLine(output) + "'");
  return info;
}

std::map<std::string, SlurmJobInfo> ParseSqueue(const std::string& output) {
  std::map<std::string, SlurmJobInfo> jobs;
  std::istringstream in(output);
  std::string line;
  while (std::getline(in, line)) {
    line = Trim(line);
    std::vector<std::string> f;
    size_t start = 0;
    while (true) {
      size_t bar = line.find('|', start);
      f.push_back(line.substr(start, bar == std::string::npos ? std::string::npos : bar - start));
      if (bar == std::string::npos) break;
      start = bar + 1;
    }
    if (f.size() < 2 || !ValidJobId(f[0]) || f[1].empty()) continue;
    SlurmJobInfo info;
    info.state = f[1];
    if (f.size() > 2) info.reason = f[2];
    if (f.size() > 3) info.nodes = f[3];
    jobs[f[0]] = std::move(info);
  }
  return jobs;
}

Result<SlurmJobInfo> ParseSacctJob(const std::string& output) {
  std::istringstream in(output);
  std::string line;
  while (std::getline(in, line)) {
    line = Trim(line);
    if (line.empty()) continue;
    SlurmJobInfo info;
    auto bar = line.find('|');
    info.state = line.substr(0, bar);
    if (bar != std::string::npos) info.exit_code = line.substr(bar + 1);
    info.state = info.state.substr(0, info.state.find(' '));  // "CANCELLED by 0"
    if (info.state.empty()) break;
    return info;
  }
  return NotFound("sacct knows no such job");
}

bool IsPermanentSbatchRefusal(const std::string& output) {
  static const char* kPermanent[] = {
      "Requested node configuration is not available",
      "More processors requested than permitted",
      "Memory specification can not be satisfied",
      "Invalid generic resource (gres) specification",
      "Invalid partition name specified",
      "Invalid account or account/partition combination specified",
      "Invalid qos specification",
      "Job violates accounting/QOS policy",
      "Requested partition configuration not available now",
      "Requested time limit is invalid",
      "Node count specification invalid",
      "Invalid Trackable RESource (TRES) specification",
      "unrecognized option",
      "invalid option",
      "Invalid --",
  };
  for (const char* p : kPermanent) {
    if (output.find(p) != std::string::npos) return true;
  }
  return false;
}

bool IsPendingState(const std::string& state) {
  return state == "PENDING" || state == "CONFIGURING" || state == "REQUEUED" ||
         state == "REQUEUE_HOLD" || state == "REQUEUE_FED" || state == "RESV_DEL_HOLD";
}

bool IsActiveState(const std::string& state) {
  return IsPendingState(state) || state == "RUNNING" || state == "COMPLETING" ||
         state == "SUSPENDED" || state == "STOPPED" || state == "SIGNALING" ||
         state == "STAGE_OUT" || state == "RESIZING" || state == "RESV_DEL_HOLD";
}

SlurmBackend::SlurmBackend(std::string agent_path, SlurmOptions options)
    : agent_path_(std::move(agent_path)), options_(std::move(options)) {}

std::vector<std::string> SlurmBackend::SbatchArgs(const engine::ContainerSpec& spec,
                                                  const std::string& script) const {
  std::string dir = spec.data_dir + "/containers/" + spec.id;
  int64_t cpus = std::max<int64_t>(1, (spec.cpu_millis + 999) / 1000);
  int64_t mem_mb = std::max<int64_t>(1, (spec.memory_bytes + (1 << 20) - 1) >> 20);
  std::vector<std::string> a = {options_.sbatch,
                                "--parsable",
                                "--job-name=" + options_.job_name_prefix + "-" + spec.id,
                                "--nodes=1",
                                "--ntasks=1",
                                "--cpus-per-task=" + std::to_string(cpus),
                                "--mem=" + std::to_string(mem_mb) + "M"};
  if (spec.gpus > 0) a.push_back("--gres=gpu:" + std::to_string(spec.gpus));
  if (!options_.partition.empty()) a.push_back("--partition=" + options_.partition);
  if (!options_.account.empty()) a.push_back("--account=" + options_.account);
  if (!options_.qos.empty()) a.push_back("--qos=" + options_.qos);
  if (!options_.time_limit.empty()) a.push_back("--time=" + options_.time_limit);
  for (const auto& x : options_.extra_args) a.push_back(x);
  a.push_back("--export=ALL");
  a.push_back("--chdir=" + dir);
  a.push_back("--output=" + dir + "/slurm-%j.out");
  a.push_back(script);
  return a;
}

Result<std::string> SlurmBackend::Launch(const engine::ContainerSpec& spec) {
  RETURN_IF_ERROR(CheckContainerSpec(spec));
  std::string dir = spec.data_dir + "/containers/" + spec.id;
  // The credential is on the shared volume before the job can start the agent.
  RETURN_IF_ERROR(PrepareContainerDir(spec));
  std::vector<std::string> agent = AgentCommandLine(agent_path_, spec, "slurm", options_);
  std::string script = "#!/bin/sh\n# Epoch container " + spec.id +
                       " (written by the master's slurm backend)\nexec";
  for (const auto& a : agent) script += " " + ShellQuote(a);
  script += " --handle \"$SLURM_JOB_ID\" >>" + ShellQuote(dir + "/agent.log") + " 2>&1\n";
  std::string script_path = dir + "/job.sh";
  RETURN_IF_ERROR(WriteFileDurably(script_path, script, 0755));

  std::vector<std::string> argv = SbatchArgs(spec, script_path);
  ASSIGN_OR_RETURN(ToolResult r, RunTool(argv, spec.env, options_.command_timeout));
  if (r.timed_out) {
    return Unavailable("sbatch did not answer within " +
                       FormatDuration(options_.command_timeout) + " (" + Words(argv) + ")");
  }
  if (r.exit_code != 0) {
    std::string msg = OneLine(r.output);
    if (msg.empty()) msg = "sbatch exited " + std::to_string(r.exit_code);
    if (IsPermanentSbatchRefusal(r.output)) return ResourceExhausted("slurm refused the job: " + msg);
    return Unavailable("sbatch failed: " + msg);
  }
  return ParseSbatchJobId(r.output);
}

Status SlurmBackend::Terminate(const std::string& container_id, const std::string& handle) {
  if (!ValidJobId(handle)) {
    return InvalidArgument("slurm handle '" + handle + "' of " + container_id + " is not a job id");
  }
  ASSIGN_OR_RETURN(ToolResult r,
                   RunTool({options_.scancel, handle}, {}, options_.command_timeout));
  if (r.timed_out) return Unavailable("scancel " + handle + " did not answer");
  if (r.exit_code != 0) {
    // A job that has already ended (and aged out) is what we wanted.
    if (r.output.find("Invalid job id") != std::string::npos ||
        r.output.find("already completing or completed") != std::string::npos) {
      return Status::Ok();
    }
    return Unavailable("scancel " + handle + ": " + OneLine(r.output));
  }
  return Status::Ok();
}

Result<engine::ContainerDescription> SlurmBackend::Describe(const std::string& container_id,
                                                            const std::string& handle) {
  using State = engine::ContainerDescription::State;
  if (!ValidJobId(handle)) {
    return InvalidArgument("slurm handle '" + handle + "' of " + container_id + " is not a job id");
  }
  ASSIGN_OR_RETURN(ToolResult r, RunTool({options_.scontrol, "show", "job", "-o", handle}, {},
                                         options_.command_timeout));
  if (r.timed_out) return Unavailable("scontrol show job " + handle + " did not answer");
  if (r.exit_code == 0) {
    auto info = ParseScontrolJob(r.output);
    if (info.ok()) return DescriptionOf(handle, *info, "");
  }
  if (r.output.find("Invalid job id") == std::string::npos) {
    // The controller did not answer: say nothing rather than call the job gone.
    return Unavailable("scontrol show job " + handle + ": " + OneLine(r.output));
  }
  // Aged out of the controller: ask the accounting database.
  auto acct = RunTool({options_.sacct, "-X", "-n", "-P", "-j", handle, "-o", "State,ExitCode"}, {},
                      options_.command_timeout);
  if (acct.ok() && !acct->timed_out && acct->exit_code == 0) {
    auto info = ParseSacctJob(acct->output);
    if (info.ok()) return DescriptionOf(handle, *info, "sacct");
  }
  engine::ContainerDescription d;
  d.state = State::kGone;
  d.backend_state = "UNKNOWN";
  d.detail = "slurm job " + handle + " is no longer known to slurmctld" +
             (acct.ok() && !acct->output.empty() ? " (sacct: " + OneLine(acct->output) + ")"
                                                 : std::string(" (no accounting)"));
  return d;
}

std::vector<Result<engine::ContainerDescription>> SlurmBackend::DescribeAll(
    const std::vector<Ref>& refs) {
  std::vector<Result<engine::ContainerDescription>> out;
  if (refs.empty()) return out;
  std::string ids;
  for (const auto& r : refs) {
    if (!ValidJobId(r.handle)) continue;
    ids += (ids.empty() ? "" : ",") + r.handle;
  }
  std::map<std::string, SlurmJobInfo> jobs;
  bool listed = false;  // squeue answered; a job it leaves out is not active
  if (!ids.empty()) {
    auto r = RunTool({options_.squeue, "-h", "-t", "all", "-j", ids, "-o", "%i|%T|%r|%N"}, {},
                     options_.command_timeout);
    Status failed;
    if (!r.ok()) {
      failed = r.status();
    } else if (r->timed_out) {
      failed = Unavailable("squeue did not answer within " + FormatDuration(options_.command_timeout));
    } else if (r->exit_code == 0) {
      jobs = ParseSqueue(r->output);
      listed = true;
    } else if (r->output.find("Invalid job id") != std::string::npos) {
      listed = true;  // none of them is known any more
    } else {
      failed = Unavailable("squeue: " + OneLine(r->output));
    }
    if (!failed.ok()) {
      // The controller cannot answer: no verdict for any of them (and no per-job
      // commands that would each wait for the same timeout).
      for (size_t i = 0; i < refs.size(); ++i) out.push_back(failed);
      return out;
    }
  }
  for (const auto& r : refs) {
    auto it = jobs.find(r.handle);
    if (listed && it != jobs.end() && IsActiveState(it->second.state)) {
      out.push_back(DescriptionOf(r.handle, it->second, ""));
    } else {
      out.push_back(Describe(r.container_id, r.handle));  // ended, missing, or a bad handle
    }
  }
  return out;
}

}  // namespace epoch::executors
