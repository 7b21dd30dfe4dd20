// EventPage: a page of the global log as a replay reads it (EventStore::ReadPage),
// filled again and again in place. Each slot keeps its strings' capacity when it is
// refilled, so a replay that reads page after page into the same EventPage allocates
// only while its slots grow; the hashes are raw digests (hex only where one is shown).
// PageReader: two such pages, the next read (decoded, re-hashed, its links checked)
// on a thread of its own while the caller applies the current one.
//
// Thread-safety: an EventPage has none; one thread fills it, then one thread reads it.
// A PageReader belongs to one thread; the page it reads ahead is touched only by its
// own task until Next hands it over, and `read` must be safe to call from another
// thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <string>
#include <vector>

#include "common/sha256.h"
#include "common/status.h"

namespace epoch::storage {

// One stored event, verified (its hash is that of its bytes; its prev_hash the hash
// of the event before it).
struct PageEvent {
  uint64_t position = 0;
  std::string stream;
  uint64_t version = 0;
  std::string type;
  uint32_t schema = 1;
  std::string time;  // RFC 3339 UTC with microseconds
  uint64_t epoch = 0;
  std::string actor;
  std::string data;
  Digest prev_hash{};
  Digest hash{};
};

class EventPage {
 public:
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  PageEvent& operator[](size_t i) { return slots_[i]; }
  const PageEvent& operator[](size_t i) const { return slots_[i]; }
  const PageEvent& back() const { return slots_[size_ - 1]; }

  // Empties the page; the slots and their strings' capacity stay for the next fill.
  void Clear() { size_ = 0; }
  // The next slot, as the last fill left it: the caller overwrites every field.
  PageEvent& Add() {
    if (size_ == slots_.size()) slots_.emplace_back();
    return slots_[size_++];
  }
  // Slots kept (for tests: a refill of no more events adds none).
  size_t capacity() const { return slots_.size(); }

 private:
  std::vector<PageEvent> slots_;
  size_t size_ = 0;
};

// Reads the log page by page into two reused Pages, one page ahead: while the caller
// works on the page Next returned, ReadAhead's page is read by `read` on another
// thread. `read(page, after, limit)` fills a page with the events after `after`, at
// most `limit` (EventStore::ReadPage into an EventPage, or that and whatever else the
// caller wants done off its thread). The page read ahead is used only if it is the
// one Next asks for; anything else is read then and there. A read's error is returned
// by the Next that asks for its page, so a corrupt event stops a replay at the same
// point as reading page after page would.
template <typename Page>
class PageReader {
 public:
  using Read = std::function<Status(Page* page, uint64_t after, size_t limit)>;
  explicit PageReader(Read read) : read_(std::move(read)) {}
  // Waits for the page being read ahead (its task writes into this object).
  ~PageReader() {
    if (ahead_.valid()) ahead_.wait();
  }
  PageReader(const PageReader&) = delete;
  PageReader& operator=(const PageReader&) = delete;

  // The page after `after`, at most `limit` events; valid until the next call.
  Result<Page*> Next(uint64_t after, size_t limit) {
    if (ahead_.valid()) {
      Status st = ahead_.get();
      if (ahead_after_ == after && ahead_limit_ == limit) {
        current_ ^= 1;
        RETURN_IF_ERROR(st);
        return &pages_[current_];
      }
    }
    RETURN_IF_ERROR(read_(&pages_[current_], after, limit));
    return &pages_[current_];
  }
  // Starts reading the page a later Next(after, limit) will ask for, into the page
  // Next did not return last.
  void ReadAhead(uint64_t after, size_t limit) {
    if (ahead_.valid()) ahead_.wait();
    ahead_after_ = after;
    ahead_limit_ = limit;
    ahead_ = std::async(std::launch::async, [this, after, limit, page = &pages_[current_ ^ 1]] {
      return read_(page, after, limit);
    });
  }

 private:
  Read read_;
  Page pages_[2];
  int current_ = 0;  // the page Next returned last
  std::future<Status> ahead_;
  uint64_t ahead_after_ = 0;
  size_t ahead_limit_ = 0;
};

}  // namespace epoch::storage
