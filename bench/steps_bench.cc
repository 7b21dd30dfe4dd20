// epoch-bench steps N [--containers C] [--set key=value]... [--compare-enforce]: a
// fan-out of N no-op steps (`true`) through local compute containers; prints steps/s
// from submission to RunSucceeded. --compare-enforce runs it four times in one
// process, alternating executor.enforce=off and auto (cgroup limits on every attempt),
// and prints each figure and the ratio of the best of each.
#include <httplib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench.h"
#include "bench/epochd_process.h"
#include "common/files.h"
#include "common/json.h"

namespace epoch::bench {

namespace {

struct StepsResult {
  std::string state;
  double secs = 0;
  // CPU seconds (user + system) spent while the run ran: by epochd, and by the
  // containers' epoch-agents with the attempts they reaped (sandbox shim and step).
  double epochd_cpu = 0, agents_cpu = 0;
};

// utime + stime (with `children`, also cutime + cstime: the reaped children's) of
// process `pid` in seconds; 0 when it cannot be read.
double CpuSeconds(pid_t pid, bool children) {
  auto stat = ReadFile("/proc/" + std::to_string(pid) + "/stat", 4096);
  if (!stat.ok()) return 0;
  // Fields after the command's closing parenthesis: state is field 3; utime is 14.
  size_t close = stat->rfind(')');
  if (close == std::string::npos) return 0;
  std::vector<std::string> fields;
  size_t i = close + 2;
  while (i < stat->size()) {
    size_t sp = stat->find(' ', i);
    if (sp == std::string::npos) sp = stat->size();
    fields.push_back(stat->substr(i, sp - i));
    i = sp + 1;
  }
  if (fields.size() < 15) return 0;
  double ticks = 0;
  for (size_t f = 11; f <= (children ? 14u : 12u); ++f) ticks += std::atof(fields[f].c_str());
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// The epoch-agent processes of the epochd at `url` (their --master names it).
std::vector<pid_t> AgentPids(const std::string& url) {
  std::vector<pid_t> pids;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    pid_t pid = static_cast<pid_t>(std::atoi(e.path().filename().c_str()));
    if (pid <= 0) continue;
    auto cmd = ReadFile(e.path().string() + "/cmdline", 1 << 16);
    if (!cmd.ok()) continue;
    std::replace(cmd->begin(), cmd->end(), '\0', ' ');
    if (cmd->find("epoch-agent") != std::string::npos &&
        cmd->find("--master " + url + " ") != std::string::npos) {
      pids.push_back(pid);
    }
  }
  return pids;
}

double AgentsCpu(const std::vector<pid_t>& pids) {
  double sum = 0;
  for (pid_t p : pids) sum += CpuSeconds(p, true);
  return sum;
}

StepsResult RunOnce(int n, int containers, const std::vector<std::string>& extra) {
  // minReplicas: the containers start (and register, waited for below) before the run;
  // without it the pool asked for them only once the run queued work.
  std::vector<std::string> sets = {"sig.maxReplicas=" + std::to_string(containers),
                                   "sig.minReplicas=" + std::to_string(containers), "sig.cpu=64",
                                   "sig.memory=64Gi"};
  sets.insert(sets.end(), extra.begin(), extra.end());
  EpochdProcess epochd(sets);
  httplib::Client cli(epochd.url());
  cli.set_bearer_token_auth(epochd.token());
  cli.set_tcp_nodelay(true);
  cli.set_read_timeout(std::chrono::minutes(10));  // the event stream lasts the whole run
  Json def{{"name", "fanout"}, {"steps", Json::array()}};
  for (int i = 0; i < n; ++i) {
    def["steps"].push_back(Json{{"name", "s" + std::to_string(i)},
                                {"command", Json::array({"true"})},
                                {"resources", Json{{"cpu", "1"}, {"memory", "64Mi"}}}});
  }
  // Wait for the containers to register, so the figure is the engine's, not start-up's.
  for (int i = 0; i < 500; ++i) {
    auto r = cli.Get("/v1/containers");
    int registered = 0;
    if (r && r->status == 200) {
      auto j = ParseJson(r->body);
      if (j.ok()) {
        for (const auto& c : (*j)["items"]) registered += c["state"] == "registered";
      }
    }
    if (registered == containers) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto reg = cli.Post("/v1/workflows", def.dump(), "application/json");
  if (!reg || reg->status >= 300) {
    std::fprintf(stderr, "register failed: %s\n", reg ? reg->body.c_str() : "no connection");
    return {};
  }
  std::vector<pid_t> agents = AgentPids(epochd.url());
  double epochd_cpu0 = CpuSeconds(epochd.pid(), false), agents_cpu0 = AgentsCpu(agents);
  auto t0 = std::chrono::steady_clock::now();
  auto sub = cli.Post("/v1/runs", R"({"workflow":"fanout"})", "application/json");
  if (!sub || sub->status != 201) {
    std::fprintf(stderr, "submit failed: %s\n", sub ? sub->body.c_str() : "no connection");
    return {};
  }
  std::string id = (*ParseJson(sub->body))["id"];
  std::string state;
  // Follow the run's events; the stream ends when the run finishes.
  auto r = cli.Get("/v1/runs/" + id + "/events?follow=true");
  auto t1 = std::chrono::steady_clock::now();
  double epochd_cpu = CpuSeconds(epochd.pid(), false) - epochd_cpu0;
  double agents_cpu = AgentsCpu(agents) - agents_cpu0;
  if (const char* f = std::getenv("EPOCH_BENCH_EVENTS"); f && r) {
    if (FILE* out = std::fopen(f, "w")) {
      std::fwrite(r->body.data(), 1, r->body.size(), out);
      std::fclose(out);
    }
  }
  auto run = cli.Get("/v1/runs/" + id);
  if (run && run->status == 200) state = (*ParseJson(run->body))["state"];
  return {state, std::chrono::duration<double>(t1 - t0).count(), epochd_cpu, agents_cpu};
}

}  // namespace

int RunStepsBench(int argc, char** argv) {
  int n = 200, containers = 2;
  bool compare = false;
  std::vector<std::string> sets;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--containers") == 0 && i + 1 < argc) {
      containers = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--set") == 0 && i + 1 < argc) {
      sets.push_back(argv[++i]);
    } else if (std::strcmp(argv[i], "--compare-enforce") == 0) {
      compare = true;
    } else {
      n = std::atoi(argv[i]);
    }
  }
  if (n < 1 || containers < 1) {
    std::fprintf(stderr,
                 "usage: epoch-bench steps N [--containers C] [--set key=value]... "
                 "[--compare-enforce]\n");
    return 2;
  }
  std::printf(
      "steps  containers  enforce  state      seconds  steps/s  epochd-cpu-s  agents-cpu-s  "
      "cpu-ms/step\n");
  std::vector<std::string> modes = compare ? std::vector<std::string>{"off", "auto", "off", "auto"}
                                           : std::vector<std::string>{""};
  double best[2] = {0, 0};
  bool ok = true;
  for (const auto& mode : modes) {
    std::vector<std::string> run_sets = sets;
    if (!mode.empty()) run_sets.push_back("executor.enforce=" + mode);
    StepsResult r = RunOnce(n, containers, run_sets);
    double rate = r.secs > 0 ? n / r.secs : 0;
    std::printf("%-6d %-11d %-8s %-10s %-8.3f %-8.0f %-13.2f %-13.2f %.2f\n", n, containers,
                mode.empty() ? "(config)" : mode.c_str(), r.state.c_str(), r.secs, rate,
                r.epochd_cpu, r.agents_cpu, 1000 * (r.epochd_cpu + r.agents_cpu) / n);
    std::fflush(stdout);
    ok &= r.state == "succeeded";
    if (!mode.empty()) best[mode == "auto"] = std::max(best[mode == "auto"], rate);
  }
  if (compare && best[0] > 0) {
    std::printf("enforcement on / off (best of two each): %.0f / %.0f steps/s = %.0f%%\n", best[1],
                best[0], 100 * best[1] / best[0]);
  }
  return ok ? 0 : 1;
}

}  // namespace epoch::bench
