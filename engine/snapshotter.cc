// The Engine's snapshots: WriteSnapshot encodes the published state into the
// store, and the leader's snapshot thread writes one when the writer says one is
// due (every EngineOptions::snapshot_every events).
#include "engine/engine.h"

#include <spdlog/spdlog.h>

#include <string>

#include "engine/snapshot.h"

namespace epoch::engine {

Result<SnapshotInfo> Engine::WriteSnapshot() {
  if (store_->read_only()) return FailedPrecondition("a standby cannot write snapshots");
  if (corrupt_) return FailedPrecondition("the history is corrupt: no snapshot is written");
  State copy;
  {
    ReaderLock lock(&published_mu_);
    copy = published_;
  }
  std::string bytes = EncodeSnapshot(copy);
  RETURN_IF_ERROR(store_->PutSnapshot(copy.head, bytes));
  spdlog::info("snapshot at {} ({} bytes)", copy.head, bytes.size());
  return SnapshotInfo{copy.head, bytes.size()};
}

void Engine::SnapshotLoop() {
  while (true) {
    {
      MutexLock lock(&snapshot_mu_);
      while (!(snapshot_due_ || snapshot_stopping_)) snapshot_cv_.Wait(&snapshot_mu_);
      if (snapshot_stopping_) return;
      snapshot_due_ = false;
    }
    auto r = WriteSnapshot();
    if (!r.ok()) spdlog::warn("snapshot failed: {}", r.status().ToString());
  }
}

}  // namespace epoch::engine
