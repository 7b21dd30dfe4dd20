#include "engine/snapshot.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <exception>
#include <limits>
#include <memory>
#include <new>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <vector>

#include "workflows/definition.h"

namespace epoch::engine {

namespace {

using Definition = workflows::Definition;
using DefPtr = std::shared_ptr<const Definition>;

// JSON nested deeper than this is refused when decoding (the API accepts 64 levels).
constexpr int kMaxJsonDepth = 512;
// Longer strings are written inline: long ones rarely repeat, and the table
// should hold names, not payloads.
constexpr size_t kMaxSymbolBytes = 96;
// JSON string values go through the table only when short (GPU indices, states).
constexpr size_t kMaxJsonSymbolBytes = 16;
// Runs are written in chunks that decode independently, on up to kMaxDecodeThreads.
constexpr size_t kRunsPerChunk = 4096;
constexpr unsigned kMaxDecodeThreads = 4;
// Header: magic, then version, crc and size at these offsets.
constexpr size_t kVersionOffset = 8, kCrcOffset = 12, kSizeOffset = 16;

enum JsonTag : uint8_t {
  kNull = 0, kFalse, kTrue, kInteger, kUnsigned, kFloat, kString, kArray, kObject, kBinary,
};

uint64_t ZigZag(int64_t v) { return (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63); }
int64_t UnZigZag(uint64_t u) { return static_cast<int64_t>((u >> 1) ^ (~(u & 1) + 1)); }

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

uint32_t Load32(const unsigned char* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}
uint64_t Load64(const unsigned char* p) {
  return static_cast<uint64_t>(Load32(p)) | static_cast<uint64_t>(Load32(p + 4)) << 32;
}

// ---------------------------------------------------------------------------
// Encoding

class Writer {
 public:
  std::string& out() { return out_; }

  // A writer for one chunk of runs: it starts from this one's string table (what
  // the chunk adds stays its own) and from time 0, so chunks decode independently.
  Writer ForChunk() const {
    Writer w;
    w.symbols_ = symbols_;
    return w;
  }

  void U8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void Varint(uint64_t v) {
    char buf[10];
    size_t n = 0;
    while (v >= 0x80) {
      buf[n++] = static_cast<char>(v | 0x80);
      v >>= 7;
    }
    buf[n++] = static_cast<char>(v);
    out_.append(buf, n);
  }
  void Svarint(int64_t v) { Varint(ZigZag(v)); }
  void Fixed32(uint32_t v) {
    char buf[4];
    for (int i = 0; i < 4; ++i) buf[i] = static_cast<char>(v >> (8 * i));
    out_.append(buf, 4);
  }
  void Fixed64(uint64_t v) {
    char buf[8];
    for (int i = 0; i < 8; ++i) buf[i] = static_cast<char>(v >> (8 * i));
    out_.append(buf, 8);
  }

  // A string written inline (ids, payloads).
  void Str(std::string_view s) {
    Varint(static_cast<uint64_t>(s.size()) << 2);
    out_.append(s);
  }
  // A string likely to repeat: the first time inline (and into the table), later
  // as its table index. The views stay valid: they point into the State encoded.
  void Sym(std::string_view s) {
    if (s.empty() || s.size() > kMaxSymbolBytes) return Str(s);
    auto [it, inserted] = symbols_.try_emplace(s, static_cast<uint32_t>(symbols_.size()));
    if (!inserted) return Varint(static_cast<uint64_t>(it->second) << 2 | 2);
    Varint(static_cast<uint64_t>(s.size()) << 2 | 1);
    out_.append(s);
  }

  void Time(TimePoint t) {
    if (t == TimePoint{}) return Varint(1);
    int64_t us = ToMicros(t);
    // Wrapping difference: the decoder adds it back the same way.
    auto d = static_cast<int64_t>(static_cast<uint64_t>(us) - static_cast<uint64_t>(time_base_));
    constexpr int64_t kLimit = int64_t{1} << 61;
    if (d >= -kLimit && d < kLimit) {
      Varint(ZigZag(d) << 1);
    } else {
      Varint(5);
      Svarint(us);
    }
    time_base_ = us;
  }
  void OptTime(const std::optional<TimePoint>& t) {
    if (!t) return Varint(3);
    Time(*t);
  }
  void OptInt(const std::optional<int>& v) { Varint(v ? ZigZag(*v) + 1 : 0); }

  void Json(const epoch::Json& j) {
    using V = epoch::Json::value_t;
    switch (j.type()) {
      case V::null:
      case V::discarded:  // never held in a State; kept as null
        return U8(kNull);
      case V::boolean:
        return U8(*j.get_ptr<const epoch::Json::boolean_t*>() ? kTrue : kFalse);
      case V::number_integer:
        U8(kInteger);
        return Svarint(*j.get_ptr<const epoch::Json::number_integer_t*>());
      case V::number_unsigned:
        U8(kUnsigned);
        return Varint(*j.get_ptr<const epoch::Json::number_unsigned_t*>());
      case V::number_float:
        U8(kFloat);
        return Fixed64(std::bit_cast<uint64_t>(*j.get_ptr<const epoch::Json::number_float_t*>()));
      case V::string: {
        U8(kString);
        const auto& s = *j.get_ptr<const epoch::Json::string_t*>();
        return s.size() <= kMaxJsonSymbolBytes ? Sym(s) : Str(s);
      }
      case V::array: {
        const auto& a = *j.get_ptr<const epoch::Json::array_t*>();
        U8(kArray);
        Varint(a.size());
        for (const auto& e : a) Json(e);
        return;
      }
      case V::object: {
        const auto& o = *j.get_ptr<const epoch::Json::object_t*>();
        U8(kObject);
        Varint(o.size());
        for (const auto& [k, v] : o) {
          Sym(k);
          Json(v);
        }
        return;
      }
      case V::binary: {
        const auto& b = j.get_binary();
        U8(kBinary);
        Varint(b.size());
        out_.append(reinterpret_cast<const char*>(b.data()), b.size());
        U8(b.has_subtype() ? 1 : 0);
        return Varint(b.has_subtype() ? b.subtype() : 0);
      }
    }
  }

 private:
  std::string out_;
  std::unordered_map<std::string_view, uint32_t> symbols_;
  int64_t time_base_ = 0;
};

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

void WriteWorker(Writer& w, const Worker& k) {
  w.Svarint(k.rank);
  w.Svarint(k.local_rank);
  w.U8(static_cast<uint8_t>(k.phase));
  w.Sym(k.container);
  w.Json(k.gpus);
  w.Json(k.gpu_uuids);
  w.OptInt(k.exit_code);
  w.OptInt(k.signal);
  w.Sym(k.reason);
  w.Json(k.usage);
  w.Time(k.started_at);
  w.Time(k.finished_at);
  w.Json(k.metrics);
  w.Json(k.outputs);
}

void WriteAttempt(Writer& w, const Attempt& a) {
  w.Svarint(a.number);
  w.U8(static_cast<uint8_t>(a.phase));
  w.Svarint(a.resources.cpu_millis);
  w.Svarint(a.resources.memory_bytes);
  w.Svarint(a.resources.gpus);
  w.Json(a.argv);
  w.Json(a.env);
  w.Svarint(a.timeout_ms);
  w.Sym(a.container);
  w.Json(a.gpus);
  w.Json(a.gpu_uuids);
  w.OptInt(a.exit_code);
  w.OptInt(a.signal);
  w.Sym(a.reason);
  w.Json(a.usage);
  w.Varint(a.queue_seq);
  w.Svarint(a.workers);
  w.Varint(a.ranks.size());
  for (const auto& k : a.ranks) WriteWorker(w, k);
  w.Sym(a.master_addr);
  w.Svarint(a.master_port);
  w.Time(a.queued_at);
  w.Time(a.assigned_at);
  w.Time(a.started_at);
  w.Time(a.finished_at);
  w.Str(a.cache_key);
  w.Str(a.cached_from);
  w.Svarint(a.trial);
  w.Json(a.trial_params);
  w.Json(a.metrics);
  w.Json(a.outputs);
  w.Json(a.log);
  w.Json(a.mounts);
}

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
  for (const auto& st : r.steps) {
    w.Sym(st.name);
    w.U8(static_cast<uint8_t>(st.phase));
    w.Varint(st.attempts.size());
    for (const auto& a : st.attempts) WriteAttempt(w, a);
    w.Json(st.metrics);
    w.Json(st.outputs);
    w.Sym(st.reason);
    w.OptTime(st.retry_at);
    w.Svarint(st.next_attempt);
    w.Svarint(st.round_start);
    w.Json(st.best);
  }
}

void WriteContainer(Writer& w, const Container& c) {
  w.Sym(c.id);
  w.U8(static_cast<uint8_t>(c.phase));
  w.Sym(c.backend);
  w.Str(c.handle);
  w.Sym(c.host);
  w.Sym(c.reason);
  w.Svarint(c.pid);
  w.Svarint(c.cpu_millis);
  w.Svarint(c.memory_bytes);
  w.Json(c.gpus);
  w.Json(c.cuda);
  w.Svarint(c.requested_gpus);
  w.Sym(c.request_reason);
  w.Time(c.requested_at);
  w.Time(c.idle_since);
  w.OptTime(c.registered_at);
  w.OptTime(c.ended_at);
  w.Svarint(c.used_cpu);
  w.Svarint(c.used_memory);
  w.Varint(c.busy_gpus.size());
  for (const auto& g : c.busy_gpus) w.Sym(g);
  w.Varint(c.attempts.size());
  for (const auto& a : c.attempts) w.Str(a);
  w.Str(c.credential_sha256);
  w.Json(c.isolation);
  w.Json(c.enforcement);
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
      for (const auto& v : versions) {
        w.Svarint(v.version);
        w.Str(v.digest);
        w.Str(v.run);
        w.Sym(v.step);
        w.Svarint(v.attempt);
        w.Json(v.outputs);
        w.Time(v.registered_at);
        w.Sym(v.workflow);
        w.Svarint(v.workflow_version);
        w.Json(v.params);
        w.Json(v.datasets);
        w.Json(v.metrics);
        w.Json(v.validated_by);
      }
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

// ---------------------------------------------------------------------------
// Decoding. After the first error every read returns a zero value and consumes
// nothing, so loops end at once; the caller checks ok() and reports error().

class Reader {
 public:
  explicit Reader(std::string_view body)
      : begin_(reinterpret_cast<const unsigned char*>(body.data())),
        p_(begin_),
        end_(begin_ + body.size()) {}
  // Reads body[from, to) with `symbols` as the string table so far (offsets in
  // errors stay relative to the whole body).
  Reader(std::string_view body, size_t from, size_t to, std::vector<std::string_view> symbols)
      : begin_(reinterpret_cast<const unsigned char*>(body.data())),
        p_(begin_ + from),
        end_(begin_ + to),
        symbols_(std::move(symbols)) {}

  bool ok() const { return error_.empty(); }
  size_t offset() const { return static_cast<size_t>(p_ - begin_); }
  const std::vector<std::string_view>& symbols() const { return symbols_; }
  const std::string& error() const { return error_; }
  size_t remaining() const { return static_cast<size_t>(end_ - p_); }
  void set_where(std::string_view where) { where_ = where; }

  void Fail(std::string_view what) {
    if (!ok()) return;
    error_ = "snapshot corrupt at body byte " + std::to_string(p_ - begin_);
    if (!where_.empty()) error_ += " (" + std::string(where_) + ")";
    error_ += ": ";
    error_ += what;
    p_ = end_;
  }

  uint8_t U8() {
    if (p_ == end_) {
      Fail("truncated");
      return 0;
    }
    return *p_++;
  }
  uint64_t Varint() {
    if (p_ != end_ && *p_ < 0x80) return *p_++;
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ == end_) {
        Fail("truncated varint");
        return 0;
      }
      uint8_t b = *p_++;
      if (shift == 63 && b > 1) {
        Fail("varint overflows 64 bits");
        return 0;
      }
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    Fail("varint longer than 10 bytes");  // not reached: shift 63 ends the loop
    return 0;
  }
  int64_t Svarint() { return UnZigZag(Varint()); }
  int Int(const char* what) {
    int64_t v = Svarint();
    if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max()) {
      Fail(std::string(what) + " out of range");
      return 0;
    }
    return static_cast<int>(v);
  }
  // Skips n bytes (n <= remaining(), as Count checks).
  void Skip(size_t n) { p_ += std::min(n, remaining()); }
  uint64_t Fixed64() {
    if (remaining() < 8) {
      Fail("truncated");
      return 0;
    }
    uint64_t v = Load64(p_);
    p_ += 8;
    return v;
  }
  bool Bool(const char* what) {
    uint8_t v = U8();
    if (v > 1) Fail(std::string(what) + " is not 0 or 1");
    return v == 1;
  }
  template <typename E>
  E Enum(E max, const char* what) {
    uint8_t v = U8();
    if (v > static_cast<uint8_t>(max)) {
      Fail(std::string("unknown ") + what + " " + std::to_string(v));
      return E{};
    }
    return static_cast<E>(v);
  }
  // An element count; each element takes at least one byte, so a count larger
  // than what is left is corrupt (and never allocates).
  size_t Count(const char* what) {
    uint64_t n = Varint();
    if (n > remaining()) {
      Fail(std::string(what) + " count " + std::to_string(n) + " exceeds the bytes left");
      return 0;
    }
    return static_cast<size_t>(n);
  }

  // A view into the input (which outlives the decode) or into the table (ditto).
  std::string_view Str() {
    uint64_t v = Varint();
    uint64_t x = v >> 2;
    switch (v & 3) {
      case 0:
      case 1: {
        if (x > remaining()) {
          Fail("string of " + std::to_string(x) + " bytes runs past the end");
          return {};
        }
        std::string_view s(reinterpret_cast<const char*>(p_), static_cast<size_t>(x));
        p_ += x;
        if (v & 1) symbols_.push_back(s);
        return s;
      }
      case 2:
        if (x >= symbols_.size()) {
          Fail("string table index " + std::to_string(x) + " of " +
               std::to_string(symbols_.size()));
          return {};
        }
        return symbols_[static_cast<size_t>(x)];
      default:
        Fail("bad string tag");
        return {};
    }
  }
  void Str(std::string& out) { out.assign(Str()); }

  TimePoint Time() {
    bool null = false;
    TimePoint t = TimeImpl(false, &null);
    return t;
  }
  std::optional<TimePoint> OptTime() {
    bool null = false;
    TimePoint t = TimeImpl(true, &null);
    if (null) return std::nullopt;
    return t;
  }
  std::optional<int> OptInt(const char* what) {
    uint64_t v = Varint();
    if (v == 0) return std::nullopt;
    int64_t x = UnZigZag(v - 1);
    if (x < std::numeric_limits<int>::min() || x > std::numeric_limits<int>::max()) {
      Fail(std::string(what) + " out of range");
      return std::nullopt;
    }
    return static_cast<int>(x);
  }

  // Reads into `out`, reusing its storage when it already has the right type
  // (default-constructed State members start as empty arrays and objects).
  void Json(epoch::Json& out, int depth = 0) {
    uint8_t tag = U8();
    if (!ok()) return;
    switch (tag) {
      case kNull:
        out = nullptr;
        return;
      case kFalse:
      case kTrue:
        out = tag == kTrue;
        return;
      case kInteger:
        out = static_cast<epoch::Json::number_integer_t>(Svarint());
        return;
      case kUnsigned:
        out = static_cast<epoch::Json::number_unsigned_t>(Varint());
        return;
      case kFloat:
        out = std::bit_cast<double>(Fixed64());
        return;
      case kString: {
        std::string_view s = Str();
        if (auto* str = out.get_ptr<epoch::Json::string_t*>()) {
          str->assign(s);
        } else {
          out = std::string(s);
        }
        return;
      }
      case kArray: {
        size_t n = Count("array");
        if (depth >= kMaxJsonDepth) return Fail("JSON nested too deeply");
        if (!out.is_array()) out = epoch::Json::array();
        auto& a = *out.get_ptr<epoch::Json::array_t*>();
        a.clear();
        a.reserve(n);
        for (size_t i = 0; i < n && ok(); ++i) Json(a.emplace_back(), depth + 1);
        return;
      }
      case kObject: {
        size_t n = Count("object");
        if (depth >= kMaxJsonDepth) return Fail("JSON nested too deeply");
        if (!out.is_object()) out = epoch::Json::object();
        auto& o = *out.get_ptr<epoch::Json::object_t*>();
        o.clear();
        for (size_t i = 0; i < n && ok(); ++i) {
          std::string_view key = Str();
          if (!o.empty() && !(o.rbegin()->first < key)) return Fail("JSON keys out of order");
          auto it = o.emplace_hint(o.end(), std::piecewise_construct, std::forward_as_tuple(key),
                                   std::forward_as_tuple());
          Json(it->second, depth + 1);
        }
        return;
      }
      case kBinary: {
        size_t n = Count("binary");
        std::vector<uint8_t> bytes(p_, p_ + n);
        p_ += n;
        bool has_subtype = Bool("binary subtype flag");
        uint64_t subtype = Varint();
        out = has_subtype ? epoch::Json::binary(std::move(bytes), subtype)
                          : epoch::Json::binary(std::move(bytes));
        return;
      }
      default:
        Fail("unknown JSON tag " + std::to_string(tag));
    }
  }

 private:
  TimePoint TimeImpl(bool optional, bool* null) {
    uint64_t v = Varint();
    if ((v & 1) == 0) {
      time_base_ = static_cast<int64_t>(static_cast<uint64_t>(time_base_) +
                                        static_cast<uint64_t>(UnZigZag(v >> 1)));
      return FromMicros(time_base_);
    }
    switch (v >> 1) {
      case 0:
        return TimePoint{};
      case 1:
        if (!optional) Fail("missing time");
        *null = true;
        return TimePoint{};
      case 2:
        time_base_ = Svarint();
        return FromMicros(time_base_);
      default:
        Fail("bad time tag");
        return TimePoint{};
    }
  }

  const unsigned char* begin_;
  const unsigned char* p_;
  const unsigned char* end_;
  std::vector<std::string_view> symbols_;
  int64_t time_base_ = 0;
  std::string_view where_;
  std::string error_;
};

// Appends to a sorted container, refusing keys that are not strictly increasing
// (a valid snapshot writes them in order, so this also keeps duplicates out).
template <typename C, typename K, typename... V>
typename C::iterator AppendSorted(Reader& r, C& c, K&& key, const char* what, V&&... value) {
  if (!c.empty()) {
    auto last = std::prev(c.end());
    if constexpr (requires { typename C::mapped_type; }) {
      if (!(last->first < key)) r.Fail(std::string(what) + " out of order");
    } else {
      if (!(*last < key)) r.Fail(std::string(what) + " out of order");
    }
  }
  if (!r.ok()) return c.end();
  if constexpr (sizeof...(V) == 0) {
    if constexpr (requires { typename C::mapped_type; }) {
      return c.emplace_hint(c.end(), std::piecewise_construct,
                            std::forward_as_tuple(std::forward<K>(key)), std::forward_as_tuple());
    } else {
      return c.emplace_hint(c.end(), std::forward<K>(key));
    }
  } else {
    return c.emplace_hint(c.end(), std::forward<K>(key), std::forward<V>(value)...);
  }
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
      r_.Str(st.name);
      st.phase = r_.Enum(StepPhase::kCancelled, "step phase");
      size_t m = r_.Count("attempts");
      st.attempts.resize(m);
      for (auto& a : st.attempts) {
        if (!r_.ok()) return;
        ReadAttempt(a);
      }
      r_.Json(st.metrics);
      r_.Json(st.outputs);
      r_.Str(st.reason);
      st.retry_at = r_.OptTime();
      st.next_attempt = r_.Int("next_attempt");
      st.round_start = r_.Int("round_start");
      r_.Json(st.best);
    }
  }

  void ReadAttempt(Attempt& a) {
    a.number = r_.Int("attempt number");
    a.phase = r_.Enum(AttemptPhase::kLost, "attempt phase");
    a.resources.cpu_millis = r_.Svarint();
    a.resources.memory_bytes = r_.Svarint();
    a.resources.gpus = r_.Int("gpus");
    r_.Json(a.argv);
    r_.Json(a.env);
    a.timeout_ms = r_.Svarint();
    r_.Str(a.container);
    r_.Json(a.gpus);
    r_.Json(a.gpu_uuids);
    a.exit_code = r_.OptInt("exit_code");
    a.signal = r_.OptInt("signal");
    r_.Str(a.reason);
    r_.Json(a.usage);
    a.queue_seq = r_.Varint();
    a.workers = r_.Int("workers");
    size_t n = r_.Count("workers");
    a.ranks.resize(n);
    for (auto& k : a.ranks) {
      if (!r_.ok()) return;
      k.rank = r_.Int("rank");
      k.local_rank = r_.Int("local_rank");
      k.phase = r_.Enum(AttemptPhase::kLost, "worker phase");
      r_.Str(k.container);
      r_.Json(k.gpus);
      r_.Json(k.gpu_uuids);
      k.exit_code = r_.OptInt("exit_code");
      k.signal = r_.OptInt("signal");
      r_.Str(k.reason);
      r_.Json(k.usage);
      k.started_at = r_.Time();
      k.finished_at = r_.Time();
      r_.Json(k.metrics);
      r_.Json(k.outputs);
    }
    r_.Str(a.master_addr);
    a.master_port = r_.Int("master_port");
    a.queued_at = r_.Time();
    a.assigned_at = r_.Time();
    a.started_at = r_.Time();
    a.finished_at = r_.Time();
    r_.Str(a.cache_key);
    r_.Str(a.cached_from);
    a.trial = r_.Int("trial");
    r_.Json(a.trial_params);
    r_.Json(a.metrics);
    r_.Json(a.outputs);
    r_.Json(a.log);
    r_.Json(a.mounts);
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
        ReadContainer(it->second);
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
          v.version = r_.Int("version");
          r_.Str(v.digest);
          r_.Str(v.run);
          r_.Str(v.step);
          v.attempt = r_.Int("attempt");
          r_.Json(v.outputs);
          v.registered_at = r_.Time();
          r_.Str(v.workflow);
          v.workflow_version = r_.Int("workflow_version");
          r_.Json(v.params);
          r_.Json(v.datasets);
          r_.Json(v.metrics);
          r_.Json(v.validated_by);
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

  void ReadContainer(Container& c) {
    c.phase = r_.Enum(ContainerPhase::kReleased, "container phase");
    r_.Str(c.backend);
    r_.Str(c.handle);
    r_.Str(c.host);
    r_.Str(c.reason);
    c.pid = r_.Svarint();
    c.cpu_millis = r_.Svarint();
    c.memory_bytes = r_.Svarint();
    r_.Json(c.gpus);
    r_.Json(c.cuda);
    c.requested_gpus = r_.Int("requested_gpus");
    r_.Str(c.request_reason);
    c.requested_at = r_.Time();
    c.idle_since = r_.Time();
    c.registered_at = r_.OptTime();
    c.ended_at = r_.OptTime();
    c.used_cpu = r_.Svarint();
    c.used_memory = r_.Svarint();
    size_t n = r_.Count("busy_gpus");
    for (size_t i = 0; i < n && r_.ok(); ++i) {
      AppendSorted(r_, c.busy_gpus, std::string(r_.Str()), "busy_gpus");
    }
    n = r_.Count("container attempts");
    for (size_t i = 0; i < n && r_.ok(); ++i) {
      AppendSorted(r_, c.attempts, std::string(r_.Str()), "container attempts");
    }
    r_.Str(c.credential_sha256);
    r_.Json(c.isolation);
    r_.Json(c.enforcement);
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
