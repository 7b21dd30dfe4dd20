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
using Definition = workflows::Definition;
using DefPtr = std::shared_ptr<const Definition>;

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

// Every distinct definition once: by pointer, else by digest (an equal digest is an
// equal source, and definitions are immutable, so sharing one is safe).
class DefTable {
 public:
  void Add(const DefPtr& def) { (void)Ref(def); }
  uint64_t Ref(const DefPtr& def) {
    if (!def) return 0;
    if (auto it = by_ptr_.find(def.get()); it != by_ptr_.end()) return it->second;
    uint64_t ref = 0;
    if (!def->digest.empty()) {
      if (auto it = by_digest_.find(def->digest); it != by_digest_.end()) ref = it->second;
    }
    if (ref == 0) {
      defs_.push_back(def.get());
      ref = defs_.size();
      if (!def->digest.empty()) by_digest_.emplace(def->digest, ref);
    }
    by_ptr_.emplace(def.get(), ref);
    return ref;
  }
  const std::vector<const Definition*>& defs() const { return defs_; }

 private:
  std::vector<const Definition*> defs_;
  std::unordered_map<const Definition*, uint64_t> by_ptr_;
  std::unordered_map<std::string_view, uint64_t> by_digest_;
};

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
                      Plain(&Worker::metrics, "metrics"),
                      Plain(&Worker::outputs, "outputs")};
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
                      Plain(&Attempt::log, "log"),
                      Plain(&Attempt::mounts, "mounts")};
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
                      Plain(&StepRun::best, "best")};
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
                      Plain(&A::validated_by, "validated_by")};
  }
};

// The container's id is its key in State::containers, written before the rest.
template <>
struct SnapList<Container> {
  static constexpr size_t kOutside = 1;  // id
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

static_assert(ListsEveryMember<Worker>(), "a Worker member is missing from SnapList<Worker>");
static_assert(ListsEveryMember<Attempt>(), "an Attempt member is missing from SnapList<Attempt>");
static_assert(ListsEveryMember<StepRun>(), "a StepRun member is missing from SnapList<StepRun>");
static_assert(ListsEveryMember<ArtifactVersion>(),
              "an ArtifactVersion member is missing from SnapList<ArtifactVersion>");
static_assert(ListsEveryMember<Container>(),
              "a Container member is missing from SnapList<Container>");
}  // namespace snapshot_internal

namespace {

void WriteRun(Writer& w, DefTable& defs, const Run& r) {
  w.Str(r.id);
  w.Sym(r.workflow);
  w.Svarint(r.version);
  w.Sym(r.digest);
  w.Varint(defs.Ref(r.def));
  w.Sym(r.tenant);
  w.Sym(r.submitter);
  w.Str(r.request_digest);
  w.Json(r.params);
  w.Json(r.labels);
  w.Svarint(r.priority);
  w.Varint(r.seq);
  w.U8(static_cast<uint8_t>(r.phase));
  w.U8(r.cancel_requested ? 1 : 0);
  w.Sym(r.failed_step);
  w.Sym(r.reason);
  w.Time(r.submitted_at);
  w.OptTime(r.started_at);
  w.OptTime(r.finished_at);
  w.Varint(r.steps.size());
  for (const auto& st : r.steps) WriteFields(w, st);
}

void WriteContainer(Writer& w, const Container& c) {
  w.Sym(c.id);
  WriteFields(w, c);
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

// The whole snapshot: the header's crc and size are filled in once the body is written.
// lineage := artifacts datasets | artifacts models | varint n | run_lineage[n]
// artifacts := varint n | (str name | varint m | artifact[m])[n]
// artifact := svarint version | str digest | str run | str step | svarint attempt |
//             json outputs | time registered_at | str workflow | svarint workflow_version |
//             json params | json datasets | json metrics | json validated_by
// run_lineage := str run | pairs datasets | pairs models | varint k | str validated[k]
// pairs := varint n | (str step | str name | svarint version)[n]
void WriteLineage(Writer& w, const State& s) {
  for (const auto* all : {&s.datasets, &s.models}) {
    w.Varint(all->size());
    for (const auto& [name, versions] : *all) {
      w.Sym(name);
      w.Varint(versions.size());
      for (const auto& v : versions) WriteFields(w, v);
    }
  }
  size_t n = 0;
  for (const auto& [id, r] : s.runs) {
    if (!r.datasets.empty() || !r.models.empty() || !r.validated.empty()) ++n;
  }
  w.Varint(n);
  for (const auto& [id, r] : s.runs) {
    if (r.datasets.empty() && r.models.empty() && r.validated.empty()) continue;
    w.Str(id);
    for (const auto* pairs : {&r.datasets, &r.models}) {
      w.Varint(pairs->size());
      for (const auto& [step, nv] : *pairs) {
        w.Sym(step);
        w.Sym(nv.first);
        w.Svarint(nv.second);
      }
    }
    w.Varint(r.validated.size());
    for (const auto& step : r.validated) w.Sym(step);
  }
}

// cache := varint n | (str key | str tenant | str run | str step | svarint attempt | str workflow |
//                      json outputs | json metrics | time created_at)[n]
void WriteCache(Writer& w, const State& s) {
  w.Varint(s.cache.size());
  for (const auto& [key, e] : s.cache) {
    w.Str(key);
    w.Sym(e.tenant);
    w.Str(e.run);
    w.Sym(e.step);
    w.Svarint(e.attempt);
    w.Sym(e.workflow);
    w.Json(e.outputs);
    w.Json(e.metrics);
    w.Time(e.created_at);
  }
}

std::string Encode(const State& s) {
  DefTable defs;
  for (const auto& [name, versions] : s.workflows) {
    for (const auto& v : versions) defs.Add(v.def);
  }
  for (const auto& [id, r] : s.runs) defs.Add(r.def);

  Writer w;
  w.out().append(kSnapshotMagic);
  w.Fixed32(kSnapshotFormatVersion);
  w.Fixed32(0);  // crc
  w.Fixed64(0);  // size
  w.Varint(s.head);
  w.Varint(s.epoch);
  w.Varint(defs.defs().size());
  for (const Definition* d : defs.defs()) w.Json(d->source);

  w.Varint(s.workflows.size());
  for (const auto& [name, versions] : s.workflows) {
    w.Sym(name);
    w.Varint(versions.size());
    for (const auto& v : versions) {
      w.Svarint(v.version);
      w.Sym(v.digest);
      w.Varint(defs.Ref(v.def));
      w.Time(v.registered_at);
      w.Sym(v.actor);
      w.Sym(v.tenant);
      w.Str(v.request_digest);
    }
  }

  size_t chunks = (s.runs.size() + kRunsPerChunk - 1) / kRunsPerChunk;
  w.Varint(chunks);
  size_t last_size = 0;
  for (auto it = s.runs.begin(); it != s.runs.end(); --chunks) {
    Writer chunk = w.ForChunk();
    chunk.out().reserve(last_size + last_size / 8);
    size_t n = 0;
    for (; it != s.runs.end() && n < kRunsPerChunk; ++it, ++n) WriteRun(chunk, defs, it->second);
    last_size = chunk.out().size();
    // Chunks are alike: size the whole output once, from the first.
    if (w.out().capacity() < w.out().size() + last_size * chunks) {
      w.out().reserve(w.out().size() + last_size * chunks + (64 << 10));
    }
    w.Varint(n);
    w.Varint(last_size);
    w.out().append(chunk.out());
  }
  if (RunsBySeqIsDerived(s)) {
    w.U8(0);
  } else {
    w.U8(1);
    w.Varint(s.runs_by_seq.size());
    for (const auto& [seq, id] : s.runs_by_seq) {
      w.Varint(seq);
      w.Str(id);
    }
  }

  w.Varint(s.containers.size());
  for (const auto& [id, c] : s.containers) WriteContainer(w, c);

  w.Varint(s.queue.size());
  for (const auto& [key, id] : s.queue) {
    w.Svarint(key.first);
    w.Varint(key.second);
    w.Str(id);
  }
  w.Varint(s.retry_timers.size());
  for (const auto& [t, id] : s.retry_timers) {
    w.Time(t);
    w.Str(id);
  }
  w.Varint(s.idempotency.size());
  for (const auto& [key, run] : s.idempotency) {
    w.Sym(key.first);
    w.Str(key.second);
    w.Str(run);
  }
  w.Varint(s.workflow_keys.size());
  for (const auto& [key, wf] : s.workflow_keys) {
    w.Sym(key.first);
    w.Str(key.second);
    w.Sym(wf.first);
    w.Svarint(wf.second);
  }
  w.Str(s.leader_node);
  w.Str(s.leader_address);
  w.Varint(s.next_run_seq);
  w.Varint(s.next_queue_seq);
  w.Varint(s.container_counter);
  w.Svarint(s.launch_failures_in_row);
  w.Time(s.last_launch_failure);
  w.Time(s.last_scale_up);
  w.Varint(s.gangs_placed);
  WriteLineage(w, s);
  WriteCache(w, s);

  std::string& out = w.out();
  std::string_view body = std::string_view(out).substr(kSnapshotHeaderSize);
  uint32_t crc = SnapshotCrc(body);
  uint64_t size = body.size();
  for (size_t i = 0; i < 4; ++i) out[kCrcOffset + i] = static_cast<char>(crc >> (8 * i));
  for (size_t i = 0; i < 8; ++i) out[kSizeOffset + i] = static_cast<char>(size >> (8 * i));
  return std::move(out);
}

// Decodes runs (and definition references) against the definitions read before.
class RunReader {
 public:
  RunReader(Reader& r, const std::vector<DefPtr>& defs) : r_(r), defs_(defs) {}

  DefPtr DefRef() {
    uint64_t v = r_.Varint();
    if (v > defs_.size()) {
      r_.Fail("definition " + std::to_string(v) + " of " + std::to_string(defs_.size()));
      return nullptr;
    }
    return v == 0 ? nullptr : defs_[static_cast<size_t>(v - 1)];
  }

  // `n` runs into `runs`, which must be empty or end before the first of them.
  void ReadRuns(size_t n, std::map<std::string, Run>& runs) {
    for (size_t i = 0; i < n && r_.ok(); ++i) {
      auto it = AppendSorted(r_, runs, r_.Str(), "runs");
      if (it == runs.end()) return;
      Run& run = it->second;
      run.id = it->first;
      r_.set_where(run.id);
      ReadRun(run);
      r_.set_where("runs");
    }
  }

 private:
  void ReadRun(Run& run) {
    r_.Str(run.workflow);
    run.version = r_.Int("version");
    r_.Str(run.digest);
    run.def = DefRef();
    r_.Str(run.tenant);
    r_.Str(run.submitter);
    r_.Str(run.request_digest);
    r_.Json(run.params);
    r_.Json(run.labels);
    run.priority = r_.Int("priority");
    run.seq = r_.Varint();
    run.phase = r_.Enum(RunPhase::kCancelled, "run phase");
    run.cancel_requested = r_.Bool("cancel_requested");
    r_.Str(run.failed_step);
    r_.Str(run.reason);
    run.submitted_at = r_.Time();
    run.started_at = r_.OptTime();
    run.finished_at = r_.OptTime();
    size_t n = r_.Count("steps");
    run.steps.resize(n);
    for (auto& st : run.steps) {
      if (!r_.ok()) return;
      ReadFields(r_, st);
    }
  }

  Reader& r_;
  const std::vector<DefPtr>& defs_;
};

class StateReader {
 public:
  explicit StateReader(std::string_view body) : body_(body), r_(body) {}

  Result<State> Read() {
    State s;
    s.head = r_.Varint();
    s.epoch = r_.Varint();
    r_.set_where("definitions");
    ReadDefinitions();
    r_.set_where("workflows");
    ReadWorkflows(s);
    r_.set_where("runs");
    RETURN_IF_ERROR(ReadRuns(s));
    r_.set_where("runs_by_seq");
    ReadRunsBySeq(s);
    r_.set_where("containers");
    size_t n = r_.Count("containers");
    for (size_t i = 0; i < n && r_.ok(); ++i) {
      auto it = AppendSorted(r_, s.containers, std::string(r_.Str()), "containers");
      if (it != s.containers.end()) {
        it->second.id = it->first;
        ReadFields(r_, it->second);
      }
    }
    r_.set_where("queue");
    n = r_.Count("queue");
    for (size_t i = 0; i < n && r_.ok(); ++i) {
      int neg_priority = r_.Int("priority");
      uint64_t seq = r_.Varint();
      AppendSorted(r_, s.queue, std::make_pair(neg_priority, seq), "queue",
                   std::string(r_.Str()));
    }
    r_.set_where("retry_timers");
    n = r_.Count("retry_timers");
    for (size_t i = 0; i < n && r_.ok(); ++i) {
      TimePoint t = r_.Time();
      AppendSorted(r_, s.retry_timers, std::make_pair(t, std::string(r_.Str())), "retry_timers");
    }
    r_.set_where("idempotency");
    n = r_.Count("idempotency");
    for (size_t i = 0; i < n && r_.ok(); ++i) {
      std::string tenant(r_.Str());
      std::string key(r_.Str());
      AppendSorted(r_, s.idempotency, std::make_pair(std::move(tenant), std::move(key)),
                   "idempotency", std::string(r_.Str()));
    }
    r_.set_where("workflow_keys");
    n = r_.Count("workflow_keys");
    for (size_t i = 0; i < n && r_.ok(); ++i) {
      std::string tenant(r_.Str());
      std::string key(r_.Str());
      std::string name(r_.Str());
      int version = r_.Int("version");
      AppendSorted(r_, s.workflow_keys, std::make_pair(std::move(tenant), std::move(key)),
                   "workflow_keys", std::make_pair(std::move(name), version));
    }
    r_.set_where("counters");
    r_.Str(s.leader_node);
    r_.Str(s.leader_address);
    s.next_run_seq = r_.Varint();
    s.next_queue_seq = r_.Varint();
    s.container_counter = r_.Varint();
    s.launch_failures_in_row = r_.Int("launch_failures_in_row");
    s.last_launch_failure = r_.Time();
    s.last_scale_up = r_.Time();
    s.gangs_placed = r_.Varint();
    ReadLineage(s);
    ReadCache(s);
    if (r_.ok() && r_.remaining() != 0) {
      r_.set_where("");
      r_.Fail(std::to_string(r_.remaining()) + " bytes after the end of the state");
    }
    if (!r_.ok()) return Corruption(r_.error());
    return s;
  }

 private:
  struct Chunk {
    size_t runs = 0, from = 0, to = 0;
    std::map<std::string, Run> decoded;
    Status status;
  };

  void ReadCache(State& s) {
    r_.set_where("cache");
    size_t n = r_.Count("cache entries");
    for (size_t i = 0; i < n && r_.ok(); ++i) {
      std::string key(r_.Str());
      CacheEntry e;
      r_.Str(e.tenant);
      r_.Str(e.run);
      r_.Str(e.step);
      e.attempt = r_.Int("attempt");
      r_.Str(e.workflow);
      r_.Json(e.outputs);
      r_.Json(e.metrics);
      e.created_at = r_.Time();
      if (r_.ok() && !s.cache.emplace(std::move(key), std::move(e)).second) {
        r_.Fail("duplicate cache key");
      }
    }
  }

  void ReadLineage(State& s) {
    r_.set_where("lineage");
    for (auto* all : {&s.datasets, &s.models}) {
      size_t n = r_.Count("artifacts");
      for (size_t i = 0; i < n && r_.ok(); ++i) {
        std::string name(r_.Str());
        size_t m = r_.Count("versions");
        std::vector<ArtifactVersion> versions;
        for (size_t k = 0; k < m && r_.ok(); ++k) {
          ArtifactVersion v;
          ReadFields(r_, v);
          if (v.version != static_cast<int>(versions.size()) + 1) {
            r_.Fail("artifact versions out of order");
          }
          versions.push_back(std::move(v));
        }
        if (r_.ok() && !all->emplace(std::move(name), std::move(versions)).second) {
          r_.Fail("duplicate artifact name");
        }
      }
    }
    size_t n = r_.Count("run lineage");
    for (size_t i = 0; i < n && r_.ok(); ++i) {
      std::string id(r_.Str());
      auto it = s.runs.find(id);
      if (it == s.runs.end()) {
        r_.Fail("lineage of an unknown run");
        return;
      }
      Run& run = it->second;
      for (auto* pairs : {&run.datasets, &run.models}) {
        size_t m = r_.Count("lineage pairs");
        for (size_t k = 0; k < m && r_.ok(); ++k) {
          std::string step(r_.Str());
          std::string name(r_.Str());
          int version = r_.Int("version");
          (*pairs)[std::move(step)] = {std::move(name), version};
        }
      }
      size_t k = r_.Count("validated");
      for (size_t j = 0; j < k && r_.ok(); ++j) run.validated.insert(std::string(r_.Str()));
    }
  }

  void ReadDefinitions() {
    size_t n = r_.Count("definitions");
    defs_.reserve(n);
    for (size_t i = 0; i < n && r_.ok(); ++i) {
      Json source;
      r_.Json(source);
      if (!r_.ok()) return;
      auto def = workflows::ParseDefinition(source);
      if (!def.ok()) {
        return r_.Fail("definition " + std::to_string(i) +
                       " does not parse: " + def.status().ToString());
      }
      defs_.push_back(std::move(*def));
    }
  }

  void ReadWorkflows(State& s) {
    RunReader defs(r_, defs_);
    size_t n = r_.Count("workflows");
    for (size_t i = 0; i < n && r_.ok(); ++i) {
      auto it = AppendSorted(r_, s.workflows, std::string(r_.Str()), "workflows");
      if (it == s.workflows.end()) return;
      size_t m = r_.Count("versions");
      auto& versions = it->second;
      versions.resize(m);
      for (auto& v : versions) {
        v.version = r_.Int("version");
        r_.Str(v.digest);
        v.def = defs.DefRef();
        v.registered_at = r_.Time();
        r_.Str(v.actor);
        r_.Str(v.tenant);
        r_.Str(v.request_digest);
        if (!r_.ok()) return;
      }
    }
  }

  // Finds the chunks, decodes them (in parallel when there are several; each
  // into its own map) and splices them into s.runs in order.
  Status ReadRuns(State& s) {
    std::vector<Chunk> chunks(r_.Count("run chunks"));
    for (auto& c : chunks) {
      c.runs = r_.Count("runs");
      size_t size = r_.Count("chunk bytes");
      c.from = r_.offset();
      r_.Skip(size);
      c.to = r_.offset();
    }
    if (!r_.ok()) return Corruption(r_.error());
    auto decode = [&](Chunk& c) {
      try {
        Reader r(body_, c.from, c.to, r_.symbols());
        r.set_where("runs");
        RunReader(r, defs_).ReadRuns(c.runs, c.decoded);
        if (r.ok() && r.remaining() != 0) {
          r.Fail(std::to_string(r.remaining()) + " bytes after the chunk's runs");
        }
        if (!r.ok()) c.status = Corruption(r.error());
      } catch (const std::bad_alloc&) {
        c.status = ResourceExhausted("decoding snapshot: out of memory");
      } catch (const std::exception& e) {
        c.status = Internal(std::string("decoding snapshot: ") + e.what());  // a bug
      }
    };
    unsigned threads = std::min<size_t>({chunks.size(), kMaxDecodeThreads,
                                         std::max(1u, std::thread::hardware_concurrency())});
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
      RETURN_IF_ERROR(c.status);
      if (!c.decoded.empty() && !s.runs.empty() &&
          !(s.runs.rbegin()->first < c.decoded.begin()->first)) {
        return Corruption("snapshot corrupt: run chunks out of order at run '" +
                          c.decoded.begin()->first + "'");
      }
      while (!c.decoded.empty()) s.runs.insert(s.runs.end(), c.decoded.extract(c.decoded.begin()));
    }
    return Status::Ok();
  }

  void ReadRunsBySeq(State& s) {
    uint8_t mode = r_.U8();
    if (mode == 0) {
      for (const auto& [id, run] : s.runs) {
        if (!s.runs_by_seq.emplace(run.seq, id).second) return r_.Fail("two runs share a seq");
      }
    } else if (mode == 1) {
      size_t n = r_.Count("runs_by_seq");
      for (size_t i = 0; i < n && r_.ok(); ++i) {
        uint64_t seq = r_.Varint();
        AppendSorted(r_, s.runs_by_seq, seq, "runs_by_seq", std::string(r_.Str()));
      }
    } else {
      r_.Fail("unknown runs_by_seq mode");
    }
  }

  std::string_view body_;
  Reader r_;
  std::vector<DefPtr> defs_;
};

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
    return StateReader(body).Read();
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("decoding snapshot: out of memory");
  } catch (const std::exception& e) {
    // Nothing above throws on bad input; this would be a bug.
    return Internal(std::string("decoding snapshot: ") + e.what());
  }
}

}  // namespace epoch::engine
