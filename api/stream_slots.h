// Internal to api/: StreamSlots, the caps on open SSE streams (api.maxStreams in all,
// api.maxStreamsPerPrincipal per principal), held by ApiServer::Impl (api/server_impl.h).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>

#include "common/mutex.h"

namespace epoch::api {

// Open SSE streams, at most `max_total` in all and `max_per_key` per principal (its
// token id), so that one viewer cannot take every stream. A slot is held by the
// stream's producer and freed when the stream ends or its client goes away.
class StreamSlots {
 public:
  class Slot {
   public:
    Slot(StreamSlots* owner, std::string key) : owner_(owner), key_(std::move(key)) {}
    ~Slot() { owner_->Release(key_); }
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;

   private:
    StreamSlots* owner_;
    std::string key_;
  };

  StreamSlots(int max_total, int max_per_key) : max_total_(max_total), max_per_key_(max_per_key) {}

  // A slot for `key`, or null with *refused saying which cap is full.
  std::shared_ptr<Slot> Acquire(const std::string& key, const std::string& who,
                                std::string* refused) {
    MutexLock lock(&mu_);
    int& mine = per_key_[key];
    if (mine >= max_per_key_) {
      *refused = "too many open streams: " + who + " has " + std::to_string(mine) +
                 " (api.maxStreamsPerPrincipal is " + std::to_string(max_per_key_) + ")";
      return nullptr;
    }
    if (total_ >= max_total_) {
      if (mine == 0) per_key_.erase(key);
      *refused = "too many open streams: " + std::to_string(total_) +
                 " in all (api.maxStreams is " + std::to_string(max_total_) + ")";
      return nullptr;
    }
    ++mine;
    ++total_;
    return std::make_shared<Slot>(this, key);
  }

  int open() const {
    MutexLock lock(&mu_);
    return total_;
  }

 private:
  void Release(const std::string& key) {
    MutexLock lock(&mu_);
    auto it = per_key_.find(key);
    if (it != per_key_.end() && --it->second <= 0) per_key_.erase(it);
    --total_;
  }

  const int max_total_;
  const int max_per_key_;
  mutable Mutex mu_;
  std::map<std::string, int> per_key_ GUARDED_BY(mu_);
  int total_ GUARDED_BY(mu_) = 0;
};

}  // namespace epoch::api
