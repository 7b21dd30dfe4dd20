#include "bench/epochd_process.h"

#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "api/auth.h"
#include "common/files.h"
#include "common/json.h"

namespace epoch::bench {

namespace {
std::string SelfDir() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? "." : p.parent_path().string();
}

void KillAgents(const std::string& dir) {
  DIR* d = opendir("/proc");
  if (!d) return;
  while (auto* e = readdir(d)) {
    pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid <= 0) continue;
    // ReadFile, not an istreambuf_iterator: reading the cmdline of a process that exits
    // meanwhile fails with ESRCH, which libstdc++'s filebuf throws through the iterator.
    auto read = ReadFile("/proc/" + std::string(e->d_name) + "/cmdline", 1 << 20);
    if (!read.ok()) continue;
    const std::string& cmd = *read;
    if (cmd.find("epoch-agent") != std::string::npos && cmd.find(dir) != std::string::npos) {
      kill(pid, SIGKILL);
    }
  }
  closedir(d);
}
}  // namespace

EpochdProcess::EpochdProcess(const std::vector<std::string>& sets) {
  // $TMPDIR if set (the data dir's file system is on the steps' hot path: every attempt
  // makes its folders, log, markers and report there), else /tmp.
  const char* tmp = std::getenv("TMPDIR");
  std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/epoch-bench.XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) {
    std::fprintf(stderr, "epoch-bench: mkdtemp %s failed\n", tmpl.c_str());
    std::exit(1);
  }
  dir_ = tmpl;
  auto made = api::CreateToken(dir_ + "/tokens.json", "bench", "default", api::Role::kAdmin, "");
  if (!made.ok()) {
    std::fprintf(stderr, "epoch-bench: %s\n", made.status().ToString().c_str());
    std::exit(1);
  }
  token_ = made->token;
  // Plain HTTP on loopback unless EPOCH_BENCH_TLS=1: most benches measure the engine.
  bool tls = std::getenv("EPOCH_BENCH_TLS") && std::string(std::getenv("EPOCH_BENCH_TLS")) == "1";
  std::vector<std::string> args{SelfDir() + "/epochd", "--data-dir", dir_, "--set",
                                "cluster.basePort=0", "--log-level", "warn"};
  if (!tls) args.push_back("--insecure-http");
  for (const auto& s : sets) {
    args.push_back("--set");
    args.push_back(s);
  }
  pid_ = fork();
  if (pid_ == 0) {
    std::string log = dir_ + "/epochd.log";
    if (!freopen(log.c_str(), "a", stderr)) _exit(126);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  for (int i = 0; i < 500; ++i) {
    std::ifstream in(dir_ + "/leader.json");
    std::stringstream ss;
    ss << in.rdbuf();
    auto j = ParseJson(ss.str());
    if (j.ok() && j->contains("address")) {
      url_ = (*j)["address"];
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::fprintf(stderr, "epoch-bench: epochd did not start (see %s/epochd.log)\n", dir_.c_str());
  std::exit(1);
}

EpochdProcess::~EpochdProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    int st;
    waitpid(pid_, &st, 0);
  }
  KillAgents(dir_);
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

}  // namespace epoch::bench
