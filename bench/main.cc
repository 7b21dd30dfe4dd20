// epoch-bench: dispatches to a benchmark subcommand (see bench.h).
#include <cstdio>
#include <cstring>

#include "bench/bench.h"

namespace {

struct Subcommand {
  const char* name;
  int (*run)(int argc, char** argv);
  const char* help;
};

constexpr Subcommand kSubcommands[] = {
    {"append", epoch::bench::RunAppendBench,
     "durable appends/s: EventStore vs raw RocksDB, 1/16/64 threads"},
    {"steps", epoch::bench::RunStepsBench, "N no-op steps through local containers: steps/s"},
    {"submit", epoch::bench::RunSubmitBench,
     "runs/s acknowledged durably over HTTP with K clients, p50/p99"},
    {"containers", epoch::bench::RunContainersBench,
     "[N...]: N simulated containers long-polling a real epochd; dispatch p50/p99, threads, RSS"},
    {"schedule", epoch::bench::RunScheduleBench,
     "placement decisions/s: 1,000 queued attempts over 100 containers of 8 GPUs"},
    {"history", epoch::bench::RunHistoryBench,
     "N DIR [--lineage]: build a data dir with >= N events of real runs (input of "
     "replay/failover); --lineage: each run registers a model version"},
    {"replay", epoch::bench::RunReplayBench,
     "DIR: cold master start on DIR's log, full replay vs snapshot + tail"},
    {"verify", epoch::bench::RunVerifyBench,
     "DIR [K]: audit: walk DIR's whole hash chain K times; events/s"},
    {"failover", epoch::bench::RunFailoverBench,
     "K [--history DIR]: kill -9 the leader K times; ms until the standby takes a write"},
};

int Usage(FILE* out) {
  std::fprintf(out, "usage: epoch-bench <subcommand> [options]\n\nsubcommands:\n");
  for (const Subcommand& s : kSubcommands) std::fprintf(out, "  %-10s %s\n", s.name, s.help);
  return out == stdout ? 0 : 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Usage(stderr);
  if (std::strcmp(argv[1], "-h") == 0 || std::strcmp(argv[1], "--help") == 0) {
    return Usage(stdout);
  }
  for (const Subcommand& s : kSubcommands) {
    if (std::strcmp(argv[1], s.name) == 0) return s.run(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "epoch-bench: unknown subcommand '%s'\n", argv[1]);
  return Usage(stderr);
}
