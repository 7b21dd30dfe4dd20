// RunArchive: where a run goes when it is over, so that State holds open work only
// and finished runs, however many years of them, live in the store's read model
// (storage/event_store.h, ReadModelFamily).
//
// Folding. After any event, a run that is terminal and has no active attempt is
// *folded*: it leaves State (runs, runs_by_seq), State::archived counts it by phase,
// and the archive keeps its record (EncodeRunRecord: the run as a snapshot writes it)
// under (run id, position of that event), with index keys that list it. An event of
// a folded run's stream *unfolds* it first: the record as of that event comes back
// into State (RunRetryRequested brings a failed run back to work) and its index keys
// go; if the run ends again it is folded again, under the new position. Records are
// immutable, so a replay that meets the same events finds each one as it was then.
// EvolveArchived does this around Evolve, the same way live and in replay.
//
// Who writes. Live, the writer's working state folds through a recording archive:
// its writes go into the same synced AppendBatch as the events that caused them, so
// the read model can never disagree with the log. The published state, a standby and
// a replay over a complete read model fold through a reading archive (the records
// are there already). A replay that rebuilds the read model (its families were
// deleted, or written by another format) records and flushes as it goes.
//
// Keys (a big-endian u64 is written B(x)):
//   records: id 0x00 B(position)               -> the record
//            "\x01format"                      -> the format of a complete read model
//   index:   "a" 0x00 B(seq)                   -> id   every folded run
//            "t" 0x00 tenant 0x00 B(seq)       -> id   by tenant
//            "s" 0x00 phase 0x00 B(seq)        -> id   by final phase
//            "w" 0x00 workflow 0x00 B(seq)     -> id   by workflow
//            "l" 0x00 key 0x00 value 0x00 B(seq) -> id by label
//            "f" 0x00 B(finished µs) id        -> id   by end time (retention)
//            "k" 0x00 tenant 0x00 key 0x00     -> id   by Idempotency-Key (State::idempotency
//                                                      holds open runs' keys only)
//
// Data set and model versions live here too, so that State keeps one count per name
// (State::datasets / models, Artifact) however many versions a name has. An event that
// registers or validates a version brings the versions it needs into State (the one it
// names, the one with its digest), Evolve changes them, and each version it created
// or changed is folded again under the event's position; then State drops them.
//   records: 0x02 kind "/" tenant "/" name "/" version 0x00 B(position) -> the version
//            (EncodeArtifactRecord; kind is "model" or "dataset")
//   index:   "d" 0x00 kind 0x00 tenant/name 0x00 digest 0x00 -> version (decimal)
//            "x" 0x00 attempt id 0x00 kind 0x00 tenant/name 0x00 B(version) -> "model mlp
//                                  v2": the version whose files that attempt's folder holds
//                                  (retention keeps it)
//
// Thread-safety: a recording archive belongs to the writer thread; a reading one is
// safe from any thread (it only reads the store).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "engine/state.h"
#include "storage/event_store.h"

namespace epoch::engine {

// The format of the records (EncodeRunRecord): a read model written by another is
// rebuilt.
uint32_t RunRecordFormat();

class RunArchive {
 public:
  explicit RunArchive(storage::EventStore* store) : store_(store) {}
  virtual ~RunArchive() = default;

  // The run `id` as it was last folded before `position` (UINT64_MAX: its latest
  // record), resolved against s's workflows; nullopt if it never was.
  Result<std::optional<Run>> Load(const State& s, std::string_view id,
                                  uint64_t position = UINT64_MAX) const;
  // Folded runs of one index, newest first: (seq, id) with seq < below_seq (0: no
  // bound), at most `limit`. `index` is an index prefix (IndexPrefix).
  Result<std::vector<std::pair<uint64_t, std::string>>> Scan(const std::string& index,
                                                             uint64_t below_seq,
                                                             size_t limit) const;
  // The index prefixes: every run, or those of a tenant, final phase, workflow, label.
  static std::string IndexAll();
  static std::string IndexTenant(std::string_view tenant);
  static std::string IndexPhase(std::string_view phase);
  static std::string IndexWorkflow(std::string_view workflow);
  static std::string IndexLabel(std::string_view key, std::string_view value);
  static std::string IndexIdempotent(std::string_view tenant, std::string_view key);

  // The folded run submitted by `tenant` with Idempotency-Key `key`, if any: what this
  // archive has recorded and not written yet first, then the store.
  Result<std::optional<std::string>> FindIdempotent(std::string_view tenant,
                                                    std::string_view key) const;

  // Called by EvolveArchived: run `run` was folded at `position` / came back at it.
  virtual Status Folded(const Run& run, uint64_t position) = 0;
  virtual Status Unfolded(const Run& run, uint64_t position) = 0;

  // Version `version` of the data set or model `key` (ArtifactKey) as it was last folded
  // before `position` (UINT64_MAX: the latest); nullopt if it never was.
  Result<std::optional<ArtifactVersion>> LoadVersion(bool model, std::string_view key, int version,
                                                     uint64_t position = UINT64_MAX) const;
  // The version of `key` whose outputs have `digest`, if one was folded. A state that
  // lags may not know it yet: callers compare with Artifact::count.
  Result<std::optional<int>> FindDigest(bool model, std::string_view key,
                                        std::string_view digest) const;
  // What keeps the folder of attempt `attempt_id` for retention: "model <name> v<n>" or
  // "data set <name> v<n>" (a model first), or "" when no folded version names it.
  Result<std::string> KeptBy(std::string_view attempt_id) const;
  // Called by EvolveArchived: version `v` of `key` was created or changed at `position`.
  virtual Status VersionFolded(bool model, const std::string& key, const ArtifactVersion& v,
                               uint64_t position) = 0;

  storage::EventStore* store() const { return store_; }

 protected:
  // The writes that fold or unfold `run` at `position` (a record and index puts, or
  // index deletes).
  static std::vector<storage::ReadModelWrite> FoldWrites(const Run& run, uint64_t position);
  static std::vector<storage::ReadModelWrite> UnfoldWrites(const Run& run);
  static std::vector<storage::ReadModelWrite> VersionWrites(bool model, const std::string& key,
                                                            const ArtifactVersion& v,
                                                            uint64_t position);
  // The newest record of `id` below `position` (UINT64_MAX: the newest), pending first.
  Result<std::optional<std::string>> LoadBytes(std::string_view id, uint64_t position) const;
  // A record not in the store yet (recording archives): id -> position -> bytes.
  virtual const std::string* Pending(std::string_view id, uint64_t position) const {
    (void)id;
    (void)position;
    return nullptr;
  }
  // The values of index keys under `prefix` put and not in the store yet.
  virtual std::vector<std::string> PendingIndexWrites(std::string_view prefix) const {
    (void)prefix;
    return {};
  }
  // The latest index write of `key` not in the store yet (an empty value: deleted);
  // null when there is none.
  virtual const std::optional<std::string>* PendingIndex(std::string_view key) const {
    (void)key;
    return nullptr;
  }

 private:
  storage::EventStore* store_;
};

// Folds through records that are in the store already: writes nothing.
class ReadingArchive final : public RunArchive {
 public:
  using RunArchive::RunArchive;
  Status Folded(const Run&, uint64_t) override { return Status::Ok(); }
  Status Unfolded(const Run&, uint64_t) override { return Status::Ok(); }
  Status VersionFolded(bool, const std::string&, const ArtifactVersion&, uint64_t) override {
    return Status::Ok();
  }
};

// Collects the writes of each fold and unfold until TakeWrites; Load sees the records
// not taken yet.
class RecordingArchive final : public RunArchive {
 public:
  using RunArchive::RunArchive;
  Status Folded(const Run& run, uint64_t position) override;
  Status Unfolded(const Run& run, uint64_t position) override;
  Status VersionFolded(bool model, const std::string& key, const ArtifactVersion& v,
                       uint64_t position) override;
  // What was recorded since the last call, in order.
  std::vector<storage::ReadModelWrite> TakeWrites();
  bool empty() const { return writes_.empty(); }

 protected:
  const std::string* Pending(std::string_view id, uint64_t position) const override;
  const std::optional<std::string>* PendingIndex(std::string_view key) const override;
  std::vector<std::string> PendingIndexWrites(std::string_view prefix) const override;

 private:
  std::vector<storage::ReadModelWrite> writes_;
  std::map<std::string, std::map<uint64_t, std::string>, std::less<>> records_;
};

// Evolve (state.h), then folds the run the event left over, having first unfolded
// the run it names if that one was folded. archive null: Evolve alone (every run
// stays in State). Errors: Evolve's, and the archive's (a record that cannot be read
// or decoded; a recording archive does not fail).
[[nodiscard]] Status EvolveArchived(State& s, const RecordedEvent& e, RunArchive* archive);

// Whether a run may leave State: it is over and nothing of it still runs (no attempt,
// and no gang worker of an ended attempt that has not reported yet).
bool Foldable(const Run& run);

}  // namespace epoch::engine
