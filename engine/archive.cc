#include "engine/archive.h"

#include <algorithm>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "engine/event_types.h"
#include "engine/snapshot.h"

namespace epoch::engine {

namespace {

using storage::ReadModelFamily;
using storage::ReadModelWrite;

constexpr char kSep = '\0';

void AppendBig64(std::string* out, uint64_t v) {
  for (int i = 7; i >= 0; --i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t ReadBig64(std::string_view s) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8 && i < s.size(); ++i) v = v << 8 | static_cast<unsigned char>(s[i]);
  return v;
}

std::string RecordPrefix(std::string_view id) {
  std::string k(id);
  k.push_back(kSep);
  return k;
}
std::string RecordKey(std::string_view id, uint64_t position) {
  std::string k = RecordPrefix(id);
  AppendBig64(&k, position);
  return k;
}

std::string Prefix(std::initializer_list<std::string_view> parts) {
  std::string k;
  for (std::string_view p : parts) {
    k.append(p);
    k.push_back(kSep);
  }
  return k;
}

// Every index key of a folded run.
std::vector<std::string> IndexKeys(const Run& run) {
  std::vector<std::string> keys = {RunArchive::IndexAll(), RunArchive::IndexTenant(run.tenant),
                                   RunArchive::IndexPhase(Name(run.phase)),
                                   RunArchive::IndexWorkflow(run.workflow)};
  for (auto& [k, v] : run.labels.items()) {
    if (v.is_string()) keys.push_back(RunArchive::IndexLabel(k, v.get<std::string>()));
  }
  for (auto& k : keys) AppendBig64(&k, run.seq);
  std::string finished = Prefix({"f"});
  AppendBig64(&finished, static_cast<uint64_t>(ToMicros(run.finished_at.value_or(TimePoint{}))));
  finished.append(run.id);
  keys.push_back(std::move(finished));
  if (!run.idempotency_key.empty()) {
    keys.push_back(RunArchive::IndexIdempotent(run.tenant, run.idempotency_key));
  }
  return keys;
}

std::string_view Kind(bool model) { return model ? "model" : "dataset"; }

// The record id of a version: 0x02 sorts apart from every run id.
std::string VersionId(bool model, std::string_view key, int version) {
  std::string id = "\x02";
  id.append(Kind(model)).append("/").append(key).append("/").append(std::to_string(version));
  return id;
}
std::string DigestKey(bool model, std::string_view key, std::string_view digest) {
  return Prefix({"d", Kind(model), key, digest});
}
std::string KeptPrefix(std::string_view attempt_id) { return Prefix({"x", attempt_id}); }

}  // namespace

uint32_t RunRecordFormat() { return kSnapshotFormatVersion; }

std::string RunArchive::IndexAll() { return Prefix({"a"}); }
std::string RunArchive::IndexIdempotent(std::string_view tenant, std::string_view key) {
  return Prefix({"k", tenant, key});
}

Result<std::optional<std::string>> RunArchive::FindIdempotent(std::string_view tenant,
                                                              std::string_view key) const {
  const std::string k = IndexIdempotent(tenant, key);
  if (const std::optional<std::string>* pending = PendingIndex(k)) return *pending;
  ASSIGN_OR_RETURN(auto found, store_->GetReadModel(ReadModelFamily::kIndex, k));
  if (found && found->empty()) found.reset();
  return found;
}
std::string RunArchive::IndexTenant(std::string_view tenant) { return Prefix({"t", tenant}); }
std::string RunArchive::IndexPhase(std::string_view phase) { return Prefix({"s", phase}); }
std::string RunArchive::IndexWorkflow(std::string_view workflow) { return Prefix({"w", workflow}); }
std::string RunArchive::IndexLabel(std::string_view key, std::string_view value) {
  return Prefix({"l", key, value});
}

Result<std::optional<std::string>> RunArchive::LoadBytes(std::string_view id,
                                                         uint64_t position) const {
  if (const std::string* pending = Pending(id, position)) return std::optional(*pending);
  // The newest record below `position`: keys sort by position within the id.
  std::string to = position == UINT64_MAX ? RecordPrefix(id) + std::string(8, '\xff') + "\xff"
                                          : RecordKey(id, position);
  ASSIGN_OR_RETURN(auto found, store_->ScanReadModel(ReadModelFamily::kRecords, RecordPrefix(id),
                                                     to, /*reverse=*/true, 1));
  if (found.empty()) return std::optional<std::string>();
  return std::optional(std::move(found.front().value));
}

Result<std::optional<Run>> RunArchive::Load(const State& s, std::string_view id,
                                            uint64_t position) const {
  ASSIGN_OR_RETURN(std::optional<std::string> bytes, LoadBytes(id, position));
  if (!bytes) return std::optional<Run>();
  auto run = DecodeRunRecord(*bytes, s);
  if (!run.ok()) {
    return Status(run.status().code(), "the read model's record of run '" + std::string(id) +
                                           "': " + run.status().message());
  }
  return std::optional<Run>(std::move(*run));
}

Result<std::vector<std::pair<uint64_t, std::string>>> RunArchive::Scan(const std::string& index,
                                                                       uint64_t below_seq,
                                                                       size_t limit) const {
  std::string to = index;
  if (below_seq == 0) {
    to.back() = static_cast<char>(kSep + 1);  // past every key of the index
  } else {
    AppendBig64(&to, below_seq);
  }
  ASSIGN_OR_RETURN(auto found, store_->ScanReadModel(ReadModelFamily::kIndex, index, to,
                                                     /*reverse=*/true, limit));
  std::vector<std::pair<uint64_t, std::string>> out;
  out.reserve(found.size());
  for (auto& e : found) {
    out.emplace_back(ReadBig64(std::string_view(e.key).substr(index.size())), std::move(e.value));
  }
  return out;
}

Result<std::optional<ArtifactVersion>> RunArchive::LoadVersion(bool model, std::string_view key,
                                                               int version,
                                                               uint64_t position) const {
  ASSIGN_OR_RETURN(std::optional<std::string> bytes,
                   LoadBytes(VersionId(model, key, version), position));
  if (!bytes) return std::optional<ArtifactVersion>();
  auto v = DecodeArtifactRecord(*bytes);
  if (!v.ok()) {
    return Status(v.status().code(), "the read model's record of " +
                                         std::string(model ? "model " : "data set ") +
                                         std::string(key) + " v" + std::to_string(version) + ": " +
                                         v.status().message());
  }
  return std::optional(std::move(*v));
}

Result<std::optional<int>> RunArchive::FindDigest(bool model, std::string_view key,
                                                  std::string_view digest) const {
  const std::string k = DigestKey(model, key, digest);
  std::optional<std::string> found;
  if (const std::optional<std::string>* pending = PendingIndex(k)) {
    found = *pending;
  } else {
    ASSIGN_OR_RETURN(found, store_->GetReadModel(ReadModelFamily::kIndex, k));
  }
  if (!found || found->empty()) return std::optional<int>();
  try {
    return std::optional(std::stoi(*found));
  } catch (const std::exception&) {
    return Corruption("the read model's digest index of " + std::string(key) + ": '" + *found +
                      "' is not a version");
  }
}

Result<std::string> RunArchive::KeptBy(std::string_view attempt_id) const {
  const std::string prefix = KeptPrefix(attempt_id);
  std::vector<std::string> reasons;
  std::string to = prefix;
  to.back() = static_cast<char>(kSep + 1);
  ASSIGN_OR_RETURN(auto found,
                   store_->ScanReadModel(ReadModelFamily::kIndex, prefix, to, false, 64));
  for (auto& e : found) reasons.push_back(std::move(e.value));
  for (const auto& w : PendingIndexWrites(prefix)) reasons.push_back(w);
  std::string out;
  for (const auto& r : reasons) {
    if (r.rfind("model ", 0) == 0) return r;
    if (out.empty()) out = r;
  }
  return out;
}

std::vector<ReadModelWrite> RunArchive::VersionWrites(bool model, const std::string& key,
                                                      const ArtifactVersion& v, uint64_t position) {
  std::vector<ReadModelWrite> out;
  out.push_back({ReadModelFamily::kRecords, RecordKey(VersionId(model, key, v.version), position),
                 EncodeArtifactRecord(v)});
  out.push_back(
      {ReadModelFamily::kIndex, DigestKey(model, key, v.digest), std::to_string(v.version)});
  std::string kept = KeptPrefix(v.FilesAt());
  kept.append(Kind(model)).push_back(kSep);
  kept.append(key).push_back(kSep);
  AppendBig64(&kept, static_cast<uint64_t>(v.version));
  out.push_back({ReadModelFamily::kIndex, std::move(kept), ArtifactLabel(model, key, v.version)});
  return out;
}

std::vector<ReadModelWrite> RunArchive::FoldWrites(const Run& run, uint64_t position) {
  std::vector<ReadModelWrite> out;
  out.push_back({ReadModelFamily::kRecords, RecordKey(run.id, position), EncodeRunRecord(run)});
  for (auto& k : IndexKeys(run)) out.push_back({ReadModelFamily::kIndex, std::move(k), run.id});
  return out;
}

std::vector<ReadModelWrite> RunArchive::UnfoldWrites(const Run& run) {
  std::vector<ReadModelWrite> out;
  for (auto& k : IndexKeys(run)) out.push_back({ReadModelFamily::kIndex, std::move(k), {}});
  return out;
}

Status RecordingArchive::Folded(const Run& run, uint64_t position) {
  auto writes = FoldWrites(run, position);
  records_[run.id][position] = *writes.front().value;
  for (auto& w : writes) writes_.push_back(std::move(w));
  return Status::Ok();
}

Status RecordingArchive::Unfolded(const Run& run, uint64_t) {
  for (auto& w : UnfoldWrites(run)) writes_.push_back(std::move(w));
  return Status::Ok();
}

Status RecordingArchive::VersionFolded(bool model, const std::string& key, const ArtifactVersion& v,
                                       uint64_t position) {
  auto writes = VersionWrites(model, key, v, position);
  records_[VersionId(model, key, v.version)][position] = *writes.front().value;
  for (auto& w : writes) writes_.push_back(std::move(w));
  return Status::Ok();
}

std::vector<std::string> RecordingArchive::PendingIndexWrites(std::string_view prefix) const {
  std::vector<std::string> out;
  for (const auto& w : writes_) {
    if (w.family == ReadModelFamily::kIndex && w.value && w.key.rfind(prefix, 0) == 0) {
      out.push_back(*w.value);
    }
  }
  return out;
}

const std::optional<std::string>* RecordingArchive::PendingIndex(std::string_view key) const {
  // The latest write of the key in this group (a fold puts it, an unfold deletes it).
  for (auto it = writes_.rbegin(); it != writes_.rend(); ++it) {
    if (it->family == ReadModelFamily::kIndex && it->key == key) return &it->value;
  }
  return nullptr;
}

std::vector<ReadModelWrite> RecordingArchive::TakeWrites() {
  records_.clear();
  return std::exchange(writes_, {});
}

const std::string* RecordingArchive::Pending(std::string_view id, uint64_t position) const {
  auto it = records_.find(id);
  if (it == records_.end()) return nullptr;
  auto r = it->second.lower_bound(position);  // the newest below `position`
  if (r == it->second.begin()) return nullptr;
  return &std::prev(r)->second;
}

bool Foldable(const Run& run) {
  if (!IsTerminal(run.phase)) return false;
  for (const auto& s : run.steps) {
    if (s.HasActive()) return false;
    // A gang whose attempt ended (a worker failed, the run was cancelled) may still
    // have workers being stopped: they hold their container's room until they report.
    for (const auto& a : s.attempts) {
      for (const auto& w : a.ranks) {
        if (!IsTerminal(w.phase)) return false;
      }
    }
  }
  return true;
}

namespace {

// The data set or model versions an event of `run` creates or changes.
struct Touched {
  bool model = false;
  std::string key;       // ArtifactKey; empty: the event touches none
  int count_before = 0;  // versions above it are new
  int validated = 0;     // the version a ModelVersionValidated changes
};

// Brings into State the versions Evolve needs for `e`, as they were before it: a
// registration's version and the one with its digest (Evolve numbers by them), and the
// version a validation changes.
Status BringVersions(State& s, const RecordedEvent& e, const Run* run, RunArchive* archive,
                     Touched* t) {
  bool registered =
      e.type == ev::kDatasetVersionRegistered || e.type == ev::kModelVersionRegistered;
  if (!run || (!registered && e.type != ev::kModelVersionValidated)) return Status::Ok();
  // (A payload that does not decode is left to Evolve, which names the problem.)
  auto payload = ev::DecodeEvent(e);
  if (!payload.ok()) return Status::Ok();
  std::string name, digest;
  int version = 0;
  std::visit(
      [&](const auto& p) {
        using P = std::decay_t<decltype(p)>;
        if constexpr (std::is_same_v<P, ev::DatasetVersionRegistered> ||
                      std::is_same_v<P, ev::ModelVersionRegistered>) {
          name = p.name, version = p.version, digest = p.digest;
        } else if constexpr (std::is_same_v<P, ev::ModelVersionValidated>) {
          name = p.name, version = p.version;
        }
      },
      *payload);
  t->model = e.type != ev::kDatasetVersionRegistered;
  auto& all = t->model ? s.models : s.datasets;
  auto found = all.find(ArtifactKey(run->tenant, name));
  t->key = ArtifactKey(run->tenant, name);
  if (found == all.end()) return Status::Ok();  // a first version: nothing to bring
  Artifact& a = found->second;
  t->count_before = a.count;
  auto bring = [&](int version) -> Status {
    if (version < 1 || version > a.count || a.Find(version)) return Status::Ok();
    ASSIGN_OR_RETURN(std::optional<ArtifactVersion> v,
                     archive->LoadVersion(t->model, t->key, version, e.position));
    if (!v) {
      return Corruption("the read model has no record of " +
                        std::string(t->model ? "model " : "data set ") + t->key + " v" +
                        std::to_string(version) + ", needed at position " +
                        std::to_string(e.position));
    }
    a.versions.push_back(std::move(*v));
    std::sort(
        a.versions.begin(), a.versions.end(),
        [](const ArtifactVersion& x, const ArtifactVersion& y) { return x.version < y.version; });
    return Status::Ok();
  };
  if (registered) {
    RETURN_IF_ERROR(bring(version));
    ASSIGN_OR_RETURN(std::optional<int> same, archive->FindDigest(t->model, t->key, digest));
    if (same) RETURN_IF_ERROR(bring(*same));
  } else {
    t->validated = ValidatedVersion(*run, name, version);
    RETURN_IF_ERROR(bring(t->validated));
  }
  return Status::Ok();
}

// Folds the versions `e` created or changed under its position, and drops from State
// every version of the name.
Status FoldVersions(State& s, const RecordedEvent& e, RunArchive* archive, const Touched& t) {
  if (t.key.empty()) return Status::Ok();
  auto& all = t.model ? s.models : s.datasets;
  auto found = all.find(t.key);
  if (found == all.end()) return Status::Ok();
  for (const auto& v : found->second.versions) {
    if (v.version > t.count_before || v.version == t.validated) {
      RETURN_IF_ERROR(archive->VersionFolded(t.model, t.key, v, e.position));
    }
  }
  found->second.versions.clear();
  return Status::Ok();
}

}  // namespace

Status EvolveArchived(State& s, const RecordedEvent& e, RunArchive* archive) {
  if (!archive || e.stream.rfind("run-", 0) != 0) return Evolve(s, e);
  std::string id = e.stream.substr(4);
  // One lookup per event where the run is open (most events): Evolve never erases a
  // run, so the iterator stays valid; only a run it adds (RunSubmitted) is looked up
  // again.
  auto it = s.runs.find(id);
  if (it == s.runs.end() && e.type != ev::kRunSubmitted) {
    ASSIGN_OR_RETURN(std::optional<Run> run, archive->Load(s, id, e.position));
    if (run) {
      RETURN_IF_ERROR(archive->Unfolded(*run, e.position));
      auto counted = s.archived.find(std::string(Name(run->phase)));
      if (counted != s.archived.end() && --counted->second == 0) s.archived.erase(counted);
      s.runs_by_seq[run->seq] = id;
      if (!run->idempotency_key.empty()) s.idempotency[{run->tenant, run->idempotency_key}] = id;
      it = s.runs.emplace(id, std::move(*run)).first;
    }
  }
  Touched touched;
  RETURN_IF_ERROR(
      BringVersions(s, e, it == s.runs.end() ? nullptr : &it->second, archive, &touched));
  RETURN_IF_ERROR(Evolve(s, e));
  RETURN_IF_ERROR(FoldVersions(s, e, archive, touched));
  if (it == s.runs.end()) it = s.runs.find(id);
  if (it == s.runs.end() || !Foldable(it->second)) return Status::Ok();
  RETURN_IF_ERROR(archive->Folded(it->second, e.position));
  s.archived[std::string(Name(it->second.phase))]++;
  s.runs_by_seq.erase(it->second.seq);
  if (const Run& r = it->second; !r.idempotency_key.empty()) {
    auto key = s.idempotency.find({r.tenant, r.idempotency_key});
    if (key != s.idempotency.end() && key->second == id) s.idempotency.erase(key);
  }
  s.runs.erase(it);
  return Status::Ok();
}

}  // namespace epoch::engine
