#include "storage/event_page.h"

#include <string>
#include <utility>
#include <vector>

#include "storage/event_store.h"

namespace epoch::storage {

Status EventStore::ReadPage(uint64_t after, size_t limit, EventPage* page) {
  page->Clear();
  ASSIGN_OR_RETURN(std::vector<Envelope> events, ReadAll(after, limit));
  for (Envelope& env : events) {
    Result<Digest> prev = DigestFromHex(env.prev_hash);
    Result<Digest> hash = DigestFromHex(env.hash);
    if (!prev.ok() || !hash.ok()) {
      return Corruption("event " + std::to_string(env.position) + ": a hash is not 64 hex digits");
    }
    PageEvent& e = page->Add();
    e.position = env.position;
    e.stream = std::move(env.stream);
    e.version = env.version;
    e.type = std::move(env.type);
    e.schema = env.schema;
    e.time = std::move(env.time);
    e.epoch = env.epoch;
    e.actor = std::move(env.actor);
    e.data = std::move(env.data);
    e.prev_hash = *prev;
    e.hash = *hash;
  }
  return Status::Ok();
}

}  // namespace epoch::storage
