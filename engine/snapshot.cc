#include "engine/snapshot.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <exception>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "engine/snapshot_codec.h"
#include "workflows/definition.h"

namespace epoch::engine {

namespace {

using namespace snapshot_internal;  // NOLINT: the format's primitives, internal to this file

// Runs are written in chunks that decode independently, on up to kMaxDecodeThreads.
constexpr size_t kRunsPerChunk = 4096;
constexpr unsigned kMaxDecodeThreads = 4;
// Header: magic, then version, crc and size at these offsets.
constexpr size_t kVersionOffset = 8, kCrcOffset = 12, kSizeOffset = 16;

constexpr std::array<std::array<uint32_t, 256>, 8> MakeCrcTables() {
  std::array<std::array<uint32_t, 256>, 8> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (~(c & 1) + 1));
    t[0][i] = c;
  }
  for (size_t k = 1; k < 8; ++k) {
    for (uint32_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xff];
  }
  return t;
}
constexpr auto kCrcTables = MakeCrcTables();

}  // namespace

// ---------------------------------------------------------------------------
// The field lists (snapshot_codec.h says how they are used).
namespace snapshot_internal {

template <>
struct SnapList<workflows::Resources> {  // what the scheduler reserved (the rest is the
                                         // definition's)
  static constexpr auto Fields() {
    using R = workflows::Resources;
    return std::tuple{Plain(&R::cpu_millis, "cpu_millis"), Plain(&R::memory_bytes, "memory_bytes"),
                      Plain(&R::gpus, "gpus")};
  }
};

template <>
struct SnapList<Worker> {
  static constexpr auto Fields() {
    return std::tuple{Plain(&Worker::rank, "rank"),
                      Plain(&Worker::local_rank, "local_rank"),
                      Enum(&Worker::phase, AttemptPhase::kLost, "worker phase"),
                      Sym(&Worker::container, "container"),
                      Plain(&Worker::gpus, "gpus"),
                      Plain(&Worker::gpu_uuids, "gpu_uuids"),
                      Plain(&Worker::exit_code, "exit_code"),
                      Plain(&Worker::signal, "signal"),
                      Sym(&Worker::reason, "reason"),
                      Plain(&Worker::usage, "usage"),
                      Plain(&Worker::started_at, "started_at"),
                      Plain(&Worker::finished_at, "finished_at"),
                      Plain(&Worker::reported, "reported"),
                      Plain(&Worker::metrics, "metrics"),
                      Plain(&Worker::outputs, "outputs")};
  }
};

template <>
struct SnapList<MetricSeries> {
  static constexpr auto Fields() {
    using M = MetricSeries;
    return std::tuple{Plain(&M::next, "next"),       Plain(&M::points, "points"),
                      Plain(&M::bytes, "bytes"),     Plain(&M::skipped, "skipped"),
                      Plain(&M::dropped, "dropped"), Plain(&M::truncated, "truncated"),
                      Plain(&M::capped, "capped")};
  }
};

template <>
struct SnapList<Expiry> {
  static constexpr auto Fields() {
    return std::tuple{Plain(&Expiry::at, "expired at"), Plain(&Expiry::bytes, "expired bytes")};
  }
};

template <>
struct SnapList<TenantExpired> {
  static constexpr auto Fields() {
    using T = TenantExpired;
    return std::tuple{
        Plain(&T::outputs_bytes, "outputs_bytes"), Plain(&T::logs_bytes, "logs_bytes"),
        Plain(&T::outputs_events, "outputs_events"), Plain(&T::logs_events, "logs_events")};
  }
};

template <>
struct SnapList<RungMark> {
  static constexpr auto Fields() {
    using R = RungMark;
    return std::tuple{Plain(&R::attempt, "rung attempt"), Plain(&R::trial, "rung trial"),
                      Plain(&R::rung, "rung"), Plain(&R::value, "rung value"),
                      Plain(&R::stopped, "rung stopped")};
  }
};

template <>
struct SnapList<Attempt> {
  static constexpr auto Fields() {
    return std::tuple{Plain(&Attempt::number, "attempt number"),
                      Enum(&Attempt::phase, AttemptPhase::kLost, "attempt phase"),
                      Plain(&Attempt::resources, "resources"),
                      Plain(&Attempt::argv, "argv"),
                      Plain(&Attempt::env, "env"),
                      Plain(&Attempt::timeout_ms, "timeout_ms"),
                      Sym(&Attempt::container, "container"),
                      Plain(&Attempt::gpus, "gpus"),
                      Plain(&Attempt::gpu_uuids, "gpu_uuids"),
                      Plain(&Attempt::exit_code, "exit_code"),
                      Plain(&Attempt::signal, "signal"),
                      Sym(&Attempt::reason, "reason"),
                      Plain(&Attempt::usage, "usage"),
                      Plain(&Attempt::queue_seq, "queue_seq"),
                      Plain(&Attempt::workers, "workers"),
                      Plain(&Attempt::workers_min, "workers_min"),
                      Plain(&Attempt::workers_max, "workers_max"),
                      Plain(&Attempt::workers_cap, "workers_cap"),
                      Plain(&Attempt::resized_to, "resized_to"),
                      Plain(&Attempt::ranks, "workers"),
                      Sym(&Attempt::master_addr, "master_addr"),
                      Plain(&Attempt::master_port, "master_port"),
                      Plain(&Attempt::queued_at, "queued_at"),
                      Plain(&Attempt::assigned_at, "assigned_at"),
                      Plain(&Attempt::started_at, "started_at"),
                      Plain(&Attempt::finished_at, "finished_at"),
                      Plain(&Attempt::cache_key, "cache_key"),
                      Plain(&Attempt::cached_from, "cached_from"),
                      Plain(&Attempt::trial, "trial"),
                      Plain(&Attempt::trial_params, "trial_params"),
                      Plain(&Attempt::metrics, "metrics"),
                      Plain(&Attempt::outputs, "outputs"),
                      Sym(&Attempt::stopped, "stopped"),
                      Sym(&Attempt::preempted_by, "preempted_by"),
                      Plain(&Attempt::log, "log"),
                      Plain(&Attempt::mounts, "mounts"),
                      Plain(&Attempt::series, "series"),
                      Plain(&Attempt::resumed_from, "resumed_from"),
                      Plain(&Attempt::outputs_expired, "outputs_expired"),
                      Plain(&Attempt::logs_expired, "logs_expired")};
  }
};

template <>
struct SnapList<StepRun> {
  static constexpr auto Fields() {
    return std::tuple{Sym(&StepRun::name, "step name"),
                      Enum(&StepRun::phase, StepPhase::kCancelled, "step phase"),
                      Plain(&StepRun::attempts, "attempts"),
                      Plain(&StepRun::metrics, "metrics"),
                      Plain(&StepRun::outputs, "outputs"),
                      Sym(&StepRun::reason, "reason"),
                      Plain(&StepRun::retry_at, "retry_at"),
                      Plain(&StepRun::next_attempt, "next_attempt"),
                      Plain(&StepRun::round_start, "round_start"),
                      Plain(&StepRun::best, "best"),
                      Plain(&StepRun::rungs, "rungs"),
                      Plain(&StepRun::checkpoints, "checkpoints"),
                      Plain(&StepRun::checkpoints_expired, "checkpoints_expired")};
  }
};

template <>
struct SnapList<ArtifactVersion> {
  static constexpr auto Fields() {
    using A = ArtifactVersion;
    return std::tuple{Plain(&A::version, "version"),
                      Plain(&A::digest, "digest"),
                      Plain(&A::run, "run"),
                      Sym(&A::step, "step"),
                      Plain(&A::attempt, "attempt"),
                      Plain(&A::outputs, "outputs"),
                      Plain(&A::registered_at, "registered_at"),
                      Sym(&A::workflow, "workflow"),
                      Plain(&A::workflow_version, "workflow_version"),
                      Plain(&A::params, "params"),
                      Plain(&A::datasets, "datasets"),
                      Plain(&A::metrics, "metrics"),
                      Plain(&A::validated_by, "validated_by"),
                      Plain(&A::files_at, "files_at")};
  }
};

template <>
struct SnapList<Artifact> {
  static constexpr auto Fields() {
    using A = Artifact;
    return std::tuple{Plain(&A::count, "count"), Plain(&A::versions, "versions")};
  }
};

// The container's id is its key in State::containers.
template <>
struct SnapList<Container> {
  static constexpr auto kKey = &Container::id;
  static constexpr auto Fields() {
    return std::tuple{Enum(&Container::phase, ContainerPhase::kReleased, "container phase"),
                      Sym(&Container::backend, "backend"),
                      Plain(&Container::handle, "handle"),
                      Sym(&Container::host, "host"),
                      Sym(&Container::reason, "reason"),
                      Plain(&Container::pid, "pid"),
                      Plain(&Container::cpu_millis, "cpu_millis"),
                      Plain(&Container::memory_bytes, "memory_bytes"),
                      Plain(&Container::gpus, "gpus"),
                      Plain(&Container::cuda, "cuda"),
                      Plain(&Container::requested_gpus, "requested_gpus"),
                      Sym(&Container::request_reason, "request_reason"),
                      Plain(&Container::requested_at, "requested_at"),
                      Plain(&Container::idle_since, "idle_since"),
                      Plain(&Container::registered_at, "registered_at"),
                      Plain(&Container::ended_at, "ended_at"),
                      Plain(&Container::used_cpu, "used_cpu"),
                      Plain(&Container::used_memory, "used_memory"),
                      Sym(&Container::busy_gpus, "busy_gpus"),
                      Plain(&Container::attempts, "container attempts"),
                      Plain(&Container::credential_sha256, "credential_sha256"),
                      Plain(&Container::isolation, "isolation"),
                      Plain(&Container::enforcement, "enforcement")};
  }
};

// The run's id is its key in State::runs; its lineage (datasets, models, validated)
// is written in State's "run lineage" section, so runs without any cost nothing.
template <>
struct SnapList<Run> {
  static constexpr auto kKey = &Run::id;
  static constexpr size_t kOutside = 3;
  static constexpr auto Fields() {
    return std::tuple{Sym(&Run::workflow, "workflow"),
                      Plain(&Run::version, "version"),
                      Sym(&Run::digest, "digest"),
                      Plain(&Run::def, "definition"),
                      Sym(&Run::tenant, "tenant"),
                      Sym(&Run::submitter, "submitter"),
                      Plain(&Run::request_digest, "request_digest"),
                      Plain(&Run::idempotency_key, "idempotency_key"),
                      Plain(&Run::params, "params"),
                      Plain(&Run::labels, "labels"),
                      Plain(&Run::priority, "priority"),
                      Plain(&Run::seq, "seq"),
                      Enum(&Run::phase, RunPhase::kCancelled, "run phase"),
                      Plain(&Run::cancel_requested, "cancel_requested"),
                      Sym(&Run::failed_step, "failed_step"),
                      Sym(&Run::reason, "reason"),
                      Plain(&Run::submitted_at, "submitted_at"),
                      Plain(&Run::started_at, "started_at"),
                      Plain(&Run::finished_at, "finished_at"),
                      Plain(&Run::steps, "steps")};
  }
};

template <>
struct SnapList<WorkflowVersion> {
  static constexpr auto Fields() {
    using V = WorkflowVersion;
    return std::tuple{Plain(&V::version, "version"),
                      Sym(&V::digest, "digest"),
                      Plain(&V::def, "definition"),
                      Plain(&V::registered_at, "registered_at"),
                      Sym(&V::actor, "actor"),
                      Sym(&V::tenant, "tenant"),
                      Plain(&V::request_digest, "request_digest")};
  }
};

template <>
struct SnapList<CacheEntry> {
  static constexpr auto Fields() {
    using E = CacheEntry;
    return std::tuple{Sym(&E::tenant, "tenant"),
                      Plain(&E::run, "run"),
                      Sym(&E::step, "step"),
                      Plain(&E::attempt, "attempt"),
                      Sym(&E::workflow, "workflow"),
                      Plain(&E::outputs, "outputs"),
                      Plain(&E::metrics, "metrics"),
                      Plain(&E::created_at, "created_at"),
                      Plain(&E::last_hit_at, "last_hit_at"),
                      Plain(&E::expired_at, "expired_at")};
  }
};

}  // namespace snapshot_internal

namespace {

// definitions := varint n | json source[n], each distinct definition once; the
// workflows and runs after it refer to them by index (DefTable).
void WriteDefinitions(Writer& w, const State&) {
  w.Varint(w.defs().defs().size());
  for (const workflows::Definition* d : w.defs().defs()) w.Json(d->source);
}
void ReadDefinitions(Reader& r, State&) {
  size_t n = r.Count("definitions");
  r.defs().reserve(n);
  for (size_t i = 0; i < n && r.ok(); ++i) {
    Json source;
    r.Json(source);
    if (!r.ok()) return;
    auto def = workflows::ParseDefinition(source);
    if (!def.ok()) {
      return r.Fail("definition " + std::to_string(i) +
                    " does not parse: " + def.status().ToString());
    }
    r.defs().push_back(std::move(*def));
  }
}

// runs := varint chunks | (varint n | varint bytes | (str id | run)[n])[chunks]. Each
// chunk starts from the string table as it was before the runs and from time 0, so
// chunks decode independently, in parallel.
void WriteRuns(Writer& w, const State& s) {
  size_t chunks = (s.runs.size() + kRunsPerChunk - 1) / kRunsPerChunk;
  w.Varint(chunks);
  size_t last_size = 0;
  for (auto it = s.runs.begin(); it != s.runs.end(); --chunks) {
    Writer chunk = w.ForChunk();
    chunk.out().reserve(last_size + last_size / 8);
    size_t n = 0;
    for (; it != s.runs.end() && n < kRunsPerChunk; ++it, ++n) {
      chunk.Str(it->first);
      WriteFields(chunk, it->second);
    }
    last_size = chunk.out().size();
    // Chunks are alike: size the whole output once, from the first.
    if (w.out().capacity() < w.out().size() + last_size * chunks) {
      w.out().reserve(w.out().size() + last_size * chunks + (64 << 10));
    }
    w.Varint(n);
    w.Varint(last_size);
    w.out().append(chunk.out());
  }
}

// `n` runs into `runs`, which must be empty or end before the first of them.
void ReadRunsInto(Reader& r, size_t n, std::map<std::string, Run, std::less<>>& runs) {
  for (size_t i = 0; i < n && r.ok(); ++i) {
    auto it = AppendSorted(r, runs, r.Str(), "runs");
    if (it == runs.end()) return;
    Run& run = it->second;
    run.id = it->first;
    r.set_where(run.id);
    ReadFields(r, run);
    r.set_where("runs");
  }
}

// Finds the chunks, decodes them (in parallel when there are several; each into its
// own map) and splices them into s.runs in order.
void ReadRuns(Reader& r, State& s) {
  struct Chunk {
    size_t runs = 0, from = 0, to = 0;
    std::map<std::string, Run, std::less<>> decoded;
    Status status;
  };
  std::vector<Chunk> chunks(r.Count("run chunks"));
  for (auto& c : chunks) {
    c.runs = r.Count("runs");
    size_t size = r.Count("chunk bytes");
    c.from = r.offset();
    r.Skip(size);
    c.to = r.offset();
  }
  if (!r.ok()) return;
  auto decode = [&](Chunk& c) {
    try {
      Reader cr(r, c.from, c.to);
      cr.set_where("runs");
      ReadRunsInto(cr, c.runs, c.decoded);
      if (cr.ok() && cr.remaining() != 0) {
        cr.Fail(std::to_string(cr.remaining()) + " bytes after the chunk's runs");
      }
      c.status = cr.status();
    } catch (const std::bad_alloc&) {
      c.status = ResourceExhausted("decoding snapshot: out of memory");
    } catch (const std::exception& e) {
      c.status = Internal(std::string("decoding snapshot: ") + e.what());  // a bug
    }
  };
  unsigned threads = std::min<size_t>(
      {chunks.size(), kMaxDecodeThreads, std::max(1u, std::thread::hardware_concurrency())});
  if (threads <= 1) {
    for (auto& c : chunks) decode(c);
  } else {
    std::atomic<size_t> next{0};
    auto work = [&] {
      for (size_t i; (i = next++) < chunks.size();) decode(chunks[i]);
    };
    std::vector<std::thread> pool;
    for (unsigned i = 1; i < threads; ++i) {
      try {
        pool.emplace_back(work);
      } catch (const std::system_error&) {
        break;  // fewer helpers; the chunks still all get decoded
      }
    }
    work();
    for (auto& t : pool) t.join();
  }
  for (auto& c : chunks) {
    if (!c.status.ok()) return r.FailWith(std::move(c.status));
    if (!c.decoded.empty() && !s.runs.empty() &&
        !(s.runs.rbegin()->first < c.decoded.begin()->first)) {
      return r.FailWith(Corruption("snapshot corrupt: run chunks out of order at run '" +
                                   c.decoded.begin()->first + "'"));
    }
    while (!c.decoded.empty()) s.runs.insert(s.runs.end(), c.decoded.extract(c.decoded.begin()));
  }
}

// True when runs_by_seq is exactly what the runs imply, so it need not be written.
bool RunsBySeqIsDerived(const State& s) {
  if (s.runs_by_seq.size() != s.runs.size()) return false;
  for (const auto& [id, r] : s.runs) {
    auto it = s.runs_by_seq.find(r.seq);
    if (it == s.runs_by_seq.end() || it->second != id) return false;
  }
  return true;
}

// runs_by_seq := u8 0 (derived from the runs' seq) | u8 1 | map
void WriteRunsBySeq(Writer& w, const State& s) {
  if (RunsBySeqIsDerived(s)) return w.U8(0);
  w.U8(1);
  uint32_t first = 0;
  WriteValue(w, s.runs_by_seq, 0, first);
}
void ReadRunsBySeq(Reader& r, State& s) {
  uint8_t mode = r.U8();
  if (mode == 0) {
    for (const auto& [id, run] : s.runs) {
      if (!s.runs_by_seq.emplace(run.seq, id).second) return r.Fail("two runs share a seq");
    }
  } else if (mode == 1) {
    ReadValue(r, s.runs_by_seq, "runs_by_seq", 0);
  } else {
    r.Fail("unknown runs_by_seq mode");
  }
}

// run_lineage := varint n | (str run | pairs datasets | pairs models | varint k |
//                            str validated[k])[n], for the runs that have any
// pairs := varint n | (str step | str name | svarint version)[n]
void WriteRunLineage(Writer& w, const State& s) {
  size_t n = 0;
  for (const auto& [id, r] : s.runs) {
    if (!r.datasets.empty() || !r.models.empty() || !r.validated.empty()) ++n;
  }
  w.Varint(n);
  for (const auto& [id, r] : s.runs) {
    if (r.datasets.empty() && r.models.empty() && r.validated.empty()) continue;
    w.Str(id);
    for (const auto* pairs : {&r.datasets, &r.models}) {
      uint32_t first = 0;
      WriteValue(w, *pairs, kAllSym, first);
    }
    uint32_t first = 0;
    WriteValue(w, r.validated, kAllSym, first);
  }
}
void ReadRunLineage(Reader& r, State& s) {
  // The versions of each data set and model (read just before) ascend within 1..count.
  for (const auto* all : {&s.datasets, &s.models}) {
    for (const auto& [name, a] : *all) {
      int last = 0;
      for (const auto& v : a.versions) {
        if (v.version <= last || v.version > a.count) {
          return r.Fail("artifact versions out of order in '" + name + "'");
        }
        last = v.version;
      }
    }
  }
  size_t n = r.Count("run lineage");
  for (size_t i = 0; i < n && r.ok(); ++i) {
    std::string id(r.Str());
    auto it = s.runs.find(id);
    if (it == s.runs.end()) return r.Fail("lineage of an unknown run");
    Run& run = it->second;
    ReadValue(r, run.datasets, "lineage pairs", 0);
    ReadValue(r, run.models, "lineage pairs", 0);
    ReadValue(r, run.validated, "validated", 0);
  }
}

}  // namespace

namespace snapshot_internal {

// The whole body, in this order (the format's).
template <>
struct SnapList<State> {
  static constexpr bool kNamesSections = true;
  static constexpr auto Fields() {
    using S = State;
    return std::tuple{Plain(&S::head, "head"),
                      Plain(&S::epoch, "epoch"),
                      Section<S>("definitions", WriteDefinitions, ReadDefinitions),
                      Sym(&S::workflows, "workflows"),
                      Custom(&S::runs, "runs", WriteRuns, ReadRuns),
                      Custom(&S::runs_by_seq, "runs_by_seq", WriteRunsBySeq, ReadRunsBySeq),
                      Sym(&S::containers, "containers"),
                      Plain(&S::ended_containers, "ended_containers"),
                      Plain(&S::queue, "queue"),
                      Plain(&S::retry_timers, "retry_timers"),
                      Syms(&S::idempotency, 0b001, "idempotency"),      // (tenant, key) -> run
                      Syms(&S::workflow_keys, 0b101, "workflow_keys"),  // -> (name, version)
                      Plain(&S::leader_node, "leader_node"),
                      Plain(&S::leader_address, "leader_address"),
                      Plain(&S::next_run_seq, "next_run_seq"),
                      Plain(&S::next_queue_seq, "next_queue_seq"),
                      Plain(&S::container_counter, "container_counter"),
                      Plain(&S::launch_failures_in_row, "launch_failures_in_row"),
                      Plain(&S::last_launch_failure, "last_launch_failure"),
                      Plain(&S::last_scale_up, "last_scale_up"),
                      Plain(&S::gangs_placed, "gangs_placed"),
                      Plain(&S::archived, "archived"),
                      Plain(&S::expired, "expired"),
                      Sym(&S::datasets, "datasets"),
                      Sym(&S::models, "models"),
                      Section<S>("run lineage", WriteRunLineage, ReadRunLineage),
                      Plain(&S::cache, "cache")};
  }
};

static_assert(ListsEveryMember<Worker>(), "a Worker member is missing from SnapList<Worker>");
static_assert(ListsEveryMember<MetricSeries>(),
              "a MetricSeries member is missing from SnapList<MetricSeries>");
static_assert(ListsEveryMember<RungMark>(), "a RungMark member is missing from SnapList<RungMark>");
static_assert(ListsEveryMember<Attempt>(), "an Attempt member is missing from SnapList<Attempt>");
static_assert(ListsEveryMember<Expiry>(), "an Expiry member is missing from SnapList<Expiry>");
static_assert(ListsEveryMember<TenantExpired>(),
              "a TenantExpired member is missing from SnapList<TenantExpired>");
static_assert(ListsEveryMember<StepRun>(), "a StepRun member is missing from SnapList<StepRun>");
static_assert(ListsEveryMember<ArtifactVersion>(),
              "an ArtifactVersion member is missing from SnapList<ArtifactVersion>");
static_assert(ListsEveryMember<Artifact>(),
              "an Artifact member is missing from SnapList<Artifact>");
static_assert(ListsEveryMember<Container>(),
              "a Container member is missing from SnapList<Container>");
static_assert(ListsEveryMember<Run>(), "a Run member is missing from SnapList<Run>");
static_assert(ListsEveryMember<WorkflowVersion>(),
              "a WorkflowVersion member is missing from SnapList<WorkflowVersion>");
static_assert(ListsEveryMember<CacheEntry>(),
              "a CacheEntry member is missing from SnapList<CacheEntry>");
static_assert(ListsEveryMember<State>(), "a State member is missing from SnapList<State>");

}  // namespace snapshot_internal

namespace {

std::string Encode(const State& s) {
  DefTable defs;
  for (const auto& [name, versions] : s.workflows) {
    for (const auto& v : versions) defs.Add(v.def);
  }
  for (const auto& [id, r] : s.runs) defs.Add(r.def);

  Writer w(defs);
  w.out().append(kSnapshotMagic);
  w.Fixed32(kSnapshotFormatVersion);
  w.Fixed32(0);  // crc
  w.Fixed64(0);  // size
  WriteFields(w, s);

  std::string& out = w.out();
  std::string_view body = std::string_view(out).substr(kSnapshotHeaderSize);
  uint32_t crc = SnapshotCrc(body);
  uint64_t size = body.size();
  for (size_t i = 0; i < 4; ++i) out[kCrcOffset + i] = static_cast<char>(crc >> (8 * i));
  for (size_t i = 0; i < 8; ++i) out[kSizeOffset + i] = static_cast<char>(size >> (8 * i));
  return std::move(out);
}

Result<State> Decode(std::string_view body) {
  std::vector<DefPtr> defs;
  Reader r(body, defs);
  State s;
  ReadFields(r, s);
  if (r.ok() && r.remaining() != 0) {
    r.set_where("");
    r.Fail(std::to_string(r.remaining()) + " bytes after the end of the state");
  }
  if (!r.ok()) return r.status();
  return s;
}

}  // namespace

uint32_t SnapshotCrc(std::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t n = bytes.size();
  uint32_t crc = ~0u;
  const auto& t = kCrcTables;
  while (n >= 8) {
    uint32_t lo = Load32(p) ^ crc, hi = Load32(p + 4);
    crc = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^
          t[3][hi & 0xff] ^ t[2][(hi >> 8) & 0xff] ^ t[1][(hi >> 16) & 0xff] ^ t[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n-- > 0) crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xff];
  return ~crc;
}

std::string EncodeSnapshot(const State& s) { return Encode(s); }

// artifact record := fixed32 format | artifact version fields
std::string EncodeArtifactRecord(const ArtifactVersion& v) {
  DefTable defs;
  Writer w(defs);
  w.Fixed32(kSnapshotFormatVersion);
  WriteFields(w, v);
  return std::move(w.out());
}

namespace {
// A read-model record's leading format: this build's, else kCorruption naming `what`.
Status CheckRecordFormat(std::string_view bytes, const char* what) {
  if (bytes.size() < 4) return Corruption(std::string(what) + " record truncated");
  uint32_t version = Load32(reinterpret_cast<const unsigned char*>(bytes.data()));
  if (version == kSnapshotFormatVersion) return Status::Ok();
  return Corruption(std::string(what) + " record format " + std::to_string(version) +
                    " is not supported (this build reads " +
                    std::to_string(kSnapshotFormatVersion) + ")");
}
}  // namespace

Result<ArtifactVersion> DecodeArtifactRecord(std::string_view bytes) {
  RETURN_IF_ERROR(CheckRecordFormat(bytes, "artifact"));
  try {
    std::vector<DefPtr> defs;
    Reader r(bytes.substr(4), defs);
    ArtifactVersion v;
    ReadFields(r, v);
    if (r.ok() && r.remaining() != 0) {
      r.Fail(std::to_string(r.remaining()) + " bytes after the artifact version");
    }
    if (!r.ok()) return r.status();
    return v;
  } catch (const std::exception& ex) {
    return Corruption(std::string("artifact record: ") + ex.what());
  }
}

// record := fixed32 format | str id | run fields | pairs datasets | pairs models |
//           validated (as in run_lineage)
std::string EncodeRunRecord(const Run& run) {
  DefTable defs;
  defs.Add(run.def);
  Writer w(defs);
  w.Fixed32(kSnapshotFormatVersion);
  w.Str(run.id);
  WriteFields(w, run);
  for (const auto* pairs : {&run.datasets, &run.models}) {
    uint32_t first = 0;
    WriteValue(w, *pairs, kAllSym, first);
  }
  uint32_t first = 0;
  WriteValue(w, run.validated, kAllSym, first);
  return std::move(w.out());
}

Result<Run> DecodeRunRecord(std::string_view bytes, const State& s) {
  RETURN_IF_ERROR(CheckRecordFormat(bytes, "run"));
  try {
    // The definition (ref 1) is resolved after the fields name the workflow version:
    // read once with a placeholder table, then look it up.
    std::vector<DefPtr> defs(1);
    Reader r(bytes.substr(4), defs);
    Run run;
    run.id = std::string(r.Str());
    r.set_where(run.id);
    ReadFields(r, run);
    ReadValue(r, run.datasets, "lineage pairs", 0);
    ReadValue(r, run.models, "lineage pairs", 0);
    ReadValue(r, run.validated, "validated", 0);
    if (r.ok() && r.remaining() != 0)
      r.Fail(std::to_string(r.remaining()) + " bytes after the run");
    if (!r.ok()) return r.status();
    const WorkflowVersion* v = s.FindWorkflow(run.workflow, run.version);
    if (!v) {
      return Corruption("run record '" + run.id + "': workflow " + run.workflow + "@" +
                        std::to_string(run.version) + " is not registered");
    }
    run.def = v->def;
    return run;
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("decoding run record: out of memory");
  } catch (const std::exception& e) {
    return Internal(std::string("decoding run record: ") + e.what());
  }
}

Result<State> DecodeSnapshot(std::string_view bytes) {
  if (bytes.size() < kSnapshotHeaderSize) {
    return Corruption("snapshot truncated: " + std::to_string(bytes.size()) +
                      " bytes, shorter than its " + std::to_string(kSnapshotHeaderSize) +
                      "-byte header");
  }
  if (bytes.substr(0, kSnapshotMagic.size()) != kSnapshotMagic) {
    return Corruption("not a snapshot: bad magic");
  }
  const auto* h = reinterpret_cast<const unsigned char*>(bytes.data());
  uint32_t version = Load32(h + kVersionOffset);
  if (version != kSnapshotFormatVersion) {
    return Corruption("snapshot format version " + std::to_string(version) +
                      " is not supported (this build reads " +
                      std::to_string(kSnapshotFormatVersion) + ")");
  }
  uint32_t crc = Load32(h + kCrcOffset);
  uint64_t size = Load64(h + kSizeOffset);
  std::string_view body = bytes.substr(kSnapshotHeaderSize);
  if (size != body.size()) {
    return Corruption("snapshot truncated or padded: header says " + std::to_string(size) +
                      " body bytes, found " + std::to_string(body.size()));
  }
  if (SnapshotCrc(body) != crc) return Corruption("snapshot checksum mismatch");
  try {
    return Decode(body);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("decoding snapshot: out of memory");
  } catch (const std::exception& e) {
    // Nothing above throws on bad input; this would be a bug.
    return Internal(std::string("decoding snapshot: ") + e.what());
  }
}

}  // namespace epoch::engine
