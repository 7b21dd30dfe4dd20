// fmnist: Fashion-MNIST prep, train, validate and infer (see README.md and
// commands.h). This file only parses flags, turns SIGTERM during train into a request
// to stop, and maps a Status to an exit code: 0 success, 2 bad input (flags, data
// files, models), 1 anything else, 143 (128 + SIGTERM) a training stopped by SIGTERM.

#include <signal.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/status.h"
#include "examples/fashion-mnist/commands.h"

namespace {

using epoch::InvalidArgument;
using epoch::Result;
using epoch::Status;
using epoch::StatusCode;
using namespace epoch::fmnist;

constexpr const char* kUsage = R"(usage: fmnist <command> [flags]

commands:
  prep      --data DATA_DIR --out DIR [--validation 0.1] [--seed 1]
            decode and check the IDX files, shuffle and split, write shards + manifest.json
  train     --data PREP_DIR --out DIR [--epochs 10] [--lr 0.001] [--batch 64]
            [--hidden 256,128] [--seed 1] [--device auto|cpu|cuda] [--limit N]
            [--optimizer adam|sgd] [--momentum 0.9] [--schedule cosine|constant]
            [--threads 2] [--metrics FILE] [--metrics-every 100]
            [--checkpoint-dir DIR]
            train the MLP 784-<hidden>-10, write model.bin and metrics.json;
            --device auto uses a GPU when this build has CUDA and one is usable;
            --metrics (default $EPOCH_METRICS) appends JSON lines: one per epoch and
            one every --metrics-every steps (0: per epoch only);
            --checkpoint-dir (default $EPOCH_CHECKPOINT_DIR) gets epoch-N.bin and
            checkpoint.json after every epoch, and training resumes from the
            checkpoint it declares; SIGTERM stops training at the next minibatch
            boundary, saying which checkpoint is the latest (exit 143)
  validate  --data PREP_DIR|DATA_DIR --model DIR --out DIR [--threads 2]
            accuracy, per-class accuracy and confusion matrix on the 10,000 test images
  infer     --model DIR --data DATA_DIR|PREP_DIR --out DIR [--count 20] [--offset 0]
            predictions for test images as CSV: index,label,confidence

PREP_DIR / DIR may also name a file in that directory (manifest.json, model.bin), as
workflow templates like {{steps.prep.outputs.manifest.json}} give.
exit status: 0 ok, 2 bad input (flags, data, model), 1 other failures,
143 train stopped by SIGTERM (at a minibatch boundary; checkpoints are per epoch)
)";

using Flags = std::map<std::string, std::string>;

// --name value or --name=value; every name must be in `known`, none twice.
Result<Flags> ParseFlags(int argc, char** argv, const std::set<std::string>& known) {
  Flags flags;
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if (!arg.starts_with("--") || arg.size() == 2) {
      return InvalidArgument("unexpected argument '" + arg + "'");
    }
    std::string name = arg.substr(2), value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else {
      if (i + 1 >= argc) return InvalidArgument("--" + name + " needs a value");
      value = argv[++i];
    }
    if (!known.count(name)) return InvalidArgument("unknown flag --" + name);
    if (flags.count(name)) return InvalidArgument("--" + name + " given twice");
    flags[name] = value;
  }
  return flags;
}

Result<int64_t> ParseInt(const Flags& f, const std::string& name, int64_t def, int64_t lo,
                         int64_t hi) {
  auto it = f.find(name);
  if (it == f.end()) return def;
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(it->second.c_str(), &end, 10);
  if (it->second.empty() || *end != '\0' || errno != 0 || v < lo || v > hi) {
    return InvalidArgument("--" + name + " must be an integer in " + std::to_string(lo) + ".." +
                           std::to_string(hi) + ", not '" + it->second + "'");
  }
  return static_cast<int64_t>(v);
}

Result<uint64_t> ParseSeed(const Flags& f) {
  auto it = f.find("seed");
  if (it == f.end()) return uint64_t{1};
  errno = 0;
  char* end = nullptr;
  unsigned long long v = std::strtoull(it->second.c_str(), &end, 10);
  if (it->second.empty() || it->second[0] == '-' || *end != '\0' || errno != 0) {
    return InvalidArgument("--seed must be a non-negative integer, not '" + it->second + "'");
  }
  return static_cast<uint64_t>(v);
}

Result<double> ParseDouble(const Flags& f, const std::string& name, double def, double lo,
                           double hi) {
  auto it = f.find(name);
  if (it == f.end()) return def;
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(it->second.c_str(), &end);
  if (it->second.empty() || *end != '\0' || errno != 0 || !(v >= lo && v <= hi)) {
    char range[64];
    std::snprintf(range, sizeof range, "[%g, %g]", lo, hi);
    return InvalidArgument("--" + name + " must be a number in " + range + ", not '" + it->second +
                           "'");
  }
  return v;
}

// "256,128" -> {256, 128}; "" (no hidden layer) is allowed.
Result<std::vector<int>> ParseHidden(const Flags& f) {
  auto it = f.find("hidden");
  if (it == f.end()) return std::vector<int>{256, 128};
  std::vector<int> out;
  const std::string& s = it->second;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    std::string part = s.substr(i, j - i);
    char* end = nullptr;
    long v = std::strtol(part.c_str(), &end, 10);
    if (part.empty() || *end != '\0' || v < 1 || v > 65536) {
      return InvalidArgument("--hidden must be comma-separated widths 1..65536, not '" + s + "'");
    }
    out.push_back(static_cast<int>(v));
    i = j + 1;
  }
  return out;
}

std::string Get(const Flags& f, const std::string& name, const std::string& def = "") {
  auto it = f.find(name);
  return it == f.end() ? def : it->second;
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

Status RunPrep(int argc, char** argv) {
  ASSIGN_OR_RETURN(Flags f, ParseFlags(argc, argv, {"data", "out", "validation", "seed"}));
  PrepOptions o;
  o.data = Get(f, "data");
  o.out = Get(f, "out");
  ASSIGN_OR_RETURN(o.validation, ParseDouble(f, "validation", 0.1, 0.0, 0.5));
  ASSIGN_OR_RETURN(o.seed, ParseSeed(f));
  return Prep(o, std::cout);
}

constexpr int kExitStopped = 128 + SIGTERM;

// Set by SIGTERM while train runs; training stops at the next minibatch boundary.
std::atomic<bool> stop_requested{false};
static_assert(std::atomic<bool>::is_always_lock_free, "stored to from a signal handler");

extern "C" void OnSigterm(int) { stop_requested.store(true, std::memory_order_relaxed); }

// SA_RESTART: a write or read the signal interrupts goes on (a checkpoint being written
// finishes); only the flag changes.
Status InstallSigtermHandler() {
  struct sigaction sa = {};
  sa.sa_handler = OnSigterm;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  if (sigaction(SIGTERM, &sa, nullptr) != 0) {
    return epoch::Internal(std::string("sigaction(SIGTERM): ") + std::strerror(errno));
  }
  return Status::Ok();
}

Result<TrainEnd> RunTrain(int argc, char** argv) {
  ASSIGN_OR_RETURN(Flags f, ParseFlags(argc, argv,
                                       {"data", "out", "epochs", "lr", "batch", "hidden", "seed",
                                        "device", "limit", "optimizer", "momentum", "schedule",
                                        "threads", "metrics", "metrics-every", "checkpoint-dir"}));
  TrainCommandOptions o;
  o.data = Get(f, "data");
  o.out = Get(f, "out");
  o.device = Get(f, "device", "auto");
  // What Epoch gives every step; a flag overrides it, an empty value turns it off.
  o.metrics = Get(f, "metrics", Env("EPOCH_METRICS"));
  o.checkpoint_dir = Get(f, "checkpoint-dir", Env("EPOCH_CHECKPOINT_DIR"));
  ASSIGN_OR_RETURN(int64_t metrics_every,
                   ParseInt(f, "metrics-every", o.metrics_every, 0, 1'000'000'000));
  o.metrics_every = static_cast<int>(metrics_every);
  ASSIGN_OR_RETURN(o.hidden, ParseHidden(f));
  ASSIGN_OR_RETURN(int64_t limit, ParseInt(f, "limit", 0, 0, 1'000'000'000));
  o.limit = static_cast<size_t>(limit);
  TrainOptions& t = o.train;
  ASSIGN_OR_RETURN(int64_t epochs, ParseInt(f, "epochs", t.epochs, 1, 100000));
  ASSIGN_OR_RETURN(int64_t batch, ParseInt(f, "batch", t.batch, 1, 65536));
  ASSIGN_OR_RETURN(int64_t threads, ParseInt(f, "threads", t.threads, 1, kParts));
  ASSIGN_OR_RETURN(double lr, ParseDouble(f, "lr", t.lr, 1e-9, 10.0));
  ASSIGN_OR_RETURN(double momentum, ParseDouble(f, "momentum", t.momentum, 0.0, 0.999));
  ASSIGN_OR_RETURN(t.seed, ParseSeed(f));
  t.epochs = static_cast<int>(epochs);
  t.batch = static_cast<int>(batch);
  t.threads = static_cast<int>(threads);
  t.lr = lr;
  t.momentum = momentum;
  std::string opt = Get(f, "optimizer", "adam");
  if (opt != "adam" && opt != "sgd") {
    return InvalidArgument("--optimizer must be adam or sgd, not '" + opt + "'");
  }
  t.optimizer = opt == "adam" ? Optimizer::kAdam : Optimizer::kSgd;
  std::string schedule = Get(f, "schedule", "cosine");
  if (schedule != "cosine" && schedule != "constant") {
    return InvalidArgument("--schedule must be cosine or constant, not '" + schedule + "'");
  }
  t.cosine = schedule == "cosine";
  RETURN_IF_ERROR(InstallSigtermHandler());
  o.stop = &stop_requested;
  return TrainCommand(o, std::cout);
}

Status RunValidate(int argc, char** argv) {
  ASSIGN_OR_RETURN(Flags f, ParseFlags(argc, argv, {"data", "model", "out", "threads"}));
  ValidateOptions o;
  o.data = Get(f, "data");
  o.model = Get(f, "model");
  o.out = Get(f, "out");
  ASSIGN_OR_RETURN(int64_t threads, ParseInt(f, "threads", 2, 1, kParts));
  o.threads = static_cast<int>(threads);
  return Validate(o, std::cout);
}

Status RunInfer(int argc, char** argv) {
  ASSIGN_OR_RETURN(Flags f, ParseFlags(argc, argv, {"model", "data", "out", "count", "offset"}));
  InferOptions o;
  o.model = Get(f, "model");
  o.data = Get(f, "data");
  o.out = Get(f, "out");
  ASSIGN_OR_RETURN(int64_t count, ParseInt(f, "count", 20, 1, 1'000'000));
  ASSIGN_OR_RETURN(int64_t offset, ParseInt(f, "offset", 0, 0, 1'000'000'000));
  o.count = static_cast<size_t>(count);
  o.offset = static_cast<size_t>(offset);
  return Infer(o, std::cout);
}

int ExitCode(const Status& st) {
  switch (st.code()) {
    case StatusCode::kOk:
      return 0;
    case StatusCode::kInvalidArgument:
    case StatusCode::kNotFound:
    case StatusCode::kCorruption:
    case StatusCode::kFailedPrecondition:
      return 2;
    default:
      return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::ios::sync_with_stdio(false);
  std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    std::cout << kUsage;
    return 0;
  }
  Status st;
  if (cmd == "prep") {
    st = RunPrep(argc, argv);
  } else if (cmd == "train") {
    Result<TrainEnd> end = RunTrain(argc, argv);
    if (end.ok() && *end == TrainEnd::kStopped) {
      std::cout.flush();
      return kExitStopped;
    }
    st = end.status();
  } else if (cmd == "validate") {
    st = RunValidate(argc, argv);
  } else if (cmd == "infer") {
    st = RunInfer(argc, argv);
  } else {
    std::cerr << (cmd.empty() ? "fmnist: no command given\n"
                              : "fmnist: unknown command '" + cmd + "'\n")
              << kUsage;
    return 2;
  }
  std::cout.flush();
  if (!st.ok()) {
    std::cerr << "fmnist " << cmd << ": error: " << st.message() << "\n";
    if (st.code() == StatusCode::kInvalidArgument && st.message().starts_with("--")) {
      std::cerr << "(fmnist --help for usage)\n";
    }
  }
  return ExitCode(st);
}
