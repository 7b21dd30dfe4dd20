// Test-only: an EventStore that forwards to another (LevelDB's EnvWrapper), for tests
// that wrap the real store to change one thing (a tampered event, a full disk, a
// default left in place). It forwards every method EventStore leaves pure; the ones
// with a default (ReadPage, the read model, Stats, WriteFailure, AvailableBytes,
// read_only, CatchUp, Promote) keep EventStore's default, and a subclass overrides
// what it needs, calling inner_ to reach the store underneath.
//
// Thread-safety: as the inner store's; the wrapper adds no state.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "storage/event_store.h"

namespace epoch::storage::test_util {

class ForwardingEventStore : public EventStore {
 public:
  // `inner` is not owned and must outlive this store.
  explicit ForwardingEventStore(EventStore* inner) : inner_(inner) {}

  Result<AppendResult> Append(AppendBatch b) override { return inner_->Append(std::move(b)); }
  Result<std::vector<Envelope>> ReadStream(const std::string& stream, uint64_t from,
                                           size_t limit) override {
    return inner_->ReadStream(stream, from, limit);
  }
  Result<std::vector<Envelope>> ReadAll(uint64_t after, size_t limit,
                                        const ReadFilter& f) override {
    return inner_->ReadAll(after, limit, f);
  }
  Result<Envelope> ReadAt(uint64_t position) override { return inner_->ReadAt(position); }
  Result<ChainReport> VerifyChain(uint64_t from, const std::string& hash) override {
    return inner_->VerifyChain(from, hash);
  }
  HeadInfo Head() override { return inner_->Head(); }
  uint64_t StreamVersion(const std::string& s) override { return inner_->StreamVersion(s); }
  uint64_t WaitForHead(uint64_t after, std::chrono::milliseconds t) override {
    return inner_->WaitForHead(after, t);
  }
  uint64_t Subscribe(std::function<void(uint64_t)> fn) override {
    return inner_->Subscribe(std::move(fn));
  }
  void Unsubscribe(uint64_t id) override { inner_->Unsubscribe(id); }
  Result<std::optional<std::string>> GetIdempotency(const std::string& t,
                                                    const std::string& k) override {
    return inner_->GetIdempotency(t, k);
  }
  Result<std::optional<std::string>> GetMeta(const std::string& k) override {
    return inner_->GetMeta(k);
  }
  Status PutMeta(const std::string& k, const std::string& v) override {
    return inner_->PutMeta(k, v);
  }
  Status PutSnapshot(uint64_t position, const std::string& bytes) override {
    return inner_->PutSnapshot(position, bytes);
  }
  Result<std::optional<std::pair<uint64_t, std::string>>> LatestSnapshot() override {
    return inner_->LatestSnapshot();
  }
  uint64_t ApproximateSizeBytes() override { return inner_->ApproximateSizeBytes(); }
  Status ClaimEpoch(uint64_t epoch) override { return inner_->ClaimEpoch(epoch); }
  uint64_t ClaimedEpoch() override { return inner_->ClaimedEpoch(); }

 protected:
  EventStore* const inner_;
};

}  // namespace epoch::storage::test_util
