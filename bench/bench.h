// epoch-bench subcommands. Each takes the arguments after its name (argv[0] is the
// subcommand name) and returns a process exit code. Benchmarks are programs, not
// tests: they print tables for humans and assert nothing.
#pragma once

namespace epoch::bench {

// epoch-bench append [--events N] [--dir D]: durable appends/s through the
// EventStore vs raw synced RocksDB WriteBatches, at 1, 16 and 64 threads.
int RunAppendBench(int argc, char** argv);
// epoch-bench steps N [--containers C]: N no-op steps through local containers.
int RunStepsBench(int argc, char** argv);
// epoch-bench submit [--clients 1,8,32] [--seconds S]: durable runs/s over HTTP.
int RunSubmitBench(int argc, char** argv);
// epoch-bench containers [N...] [--seconds S] [--rate R]: N simulated containers (async
// clients in one process) against a real epochd: dispatch p50/p99, epochd's threads,
// RSS and CPU.
int RunContainersBench(int argc, char** argv);
// epoch-bench schedule [--attempts N] [--containers C] [--gpus G]: placement decisions/s.
int RunScheduleBench(int argc, char** argv);
// epoch-bench history N DIR: a data dir with >= N events of real runs (ha_bench.cc).
int RunHistoryBench(int argc, char** argv);
// epoch-bench replay DIR: cold start on DIR's log, with and without a snapshot.
int RunReplayBench(int argc, char** argv);
// DIR [K]: audit verification of DIR's whole hash chain, K times (events/s).
int RunVerifyBench(int argc, char** argv);
// epoch-bench failover K [--history DIR]: kill -9 the leader K times; p50/p99/max
// until the standby acknowledges a write.
int RunFailoverBench(int argc, char** argv);

}  // namespace epoch::bench
