// The Engine's storage faults (engine.h, "Storage faults"): the first fault of the
// store stops the engine and answers every command with it; storage.minFreeBytes
// refuses new work before the disk is full.
#include "engine/engine.h"

#include <spdlog/spdlog.h>

#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace epoch::engine {

Status InsufficientStorageError(const std::string& message) {
  return Status(StatusCode::kResourceExhausted, message, {std::string(kInsufficientStorageCode)});
}

bool IsInsufficientStorage(const Status& st) {
  return st.code() == StatusCode::kResourceExhausted && !st.details().empty() &&
         st.details()[0] == kInsufficientStorageCode;
}

Status Engine::storage_fault() const {
  MutexLock lock(&fault_mu_);
  return storage_fault_;
}

Status Engine::StorageFaultStatus() const {
  Status fault = storage_fault();
  if (fault.ok()) return Status::Ok();
  if (storage::IsNoSpace(fault)) {
    return InsufficientStorageError(
        "the event store's disk is full: this master acknowledges nothing more and steps "
        "down; retry on the next leader (once space is freed): " +
        fault.message());
  }
  return Unavailable(
      "the event store failed: this master acknowledges nothing more and steps down; retry on "
      "the next leader: " +
      fault.message());
}

void Engine::FailOnStorage(const Status& fault) {
  {
    MutexLock lock(&fault_mu_);
    if (!storage_fault_.ok()) return;
    storage_fault_ = fault.ok() ? Internal("storage fault") : fault;
  }
  failed_ = true;  // after storage_fault_: Execute answers StorageFaultStatus()
  ready_ = false;
  spdlog::critical(
      "STORAGE FAULT: {}. This leader stops: every command and poll is refused ({}), nothing "
      "more is appended, and it must give up leadership and restart to replay what is durable.",
      fault.ToString(), storage::IsNoSpace(fault) ? "507 insufficient_storage" : "503 unavailable");
}

void Engine::RefuseAfterStorageFault(std::vector<std::unique_ptr<Pending>>& group) {
  Status refusal = StorageFaultStatus();
  for (auto& p : group) p->promise.set_value(refusal);
  group.clear();
  MutexLock lock(&queue_mu_);
  stopping_ = true;
  for (auto& p : queue_) p->promise.set_value(refusal);
  queue_.clear();
}

Status Engine::CheckFreeSpace() {
  if (options_.min_free_bytes == 0) return Status::Ok();
  TimePoint now = clock_->Now();
  uint64_t free = 0;
  {
    MutexLock lock(&space_mu_);
    if (!space_checked_ || now - space_checked_at_ >= options_.free_space_interval) {
      space_checked_ = true;
      space_checked_at_ = now;
      auto avail = store_->AvailableBytes();
      if (avail.ok()) {
        free_bytes_ = *avail;
      } else {
        // Unknown: admit (the store still fails a write that meets a full disk).
        spdlog::warn("storage.minFreeBytes: cannot tell the store's free space: {}",
                     avail.status().ToString());
        free_bytes_ = std::numeric_limits<uint64_t>::max();
      }
    }
    free = free_bytes_;
  }
  if (free >= options_.min_free_bytes) return Status::Ok();
  return InsufficientStorageError(
      "the event store's filesystem has " + std::to_string(free) +
      " bytes free, below storage.minFreeBytes (" + std::to_string(options_.min_free_bytes) +
      " bytes): new work (workflows, runs, retries) is refused until space is freed; running "
      "steps still report and cancels are accepted");
}

}  // namespace epoch::engine
