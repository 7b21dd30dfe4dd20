// The read model's families (event_store.h, ReadModelFamily): point reads, range
// scans, and the writes of a rebuild. Writes that must agree with events go through
// Append (AppendBatch::read_model, in the group's WriteBatch); these are the others.
#include <rocksdb/iterator.h>
#include <rocksdb/write_batch.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "storage/rocksdb_event_store_internal.h"

namespace epoch::storage::internal {

Status RocksDbEventStore::WriteReadModel(const std::vector<ReadModelWrite>& writes, bool sync) {
  std::shared_ptr<Db> d = db();
  if (d->secondary) return FailedPrecondition("the event store is a read-only secondary");
  if (Status f = WriteRefusal(); !f.ok()) return f;
  rocksdb::WriteBatch wb;
  for (const ReadModelWrite& w : writes) {
    if (w.key.empty()) return InvalidArgument("a read-model write has an empty key");
    if (w.value) {
      wb.Put(d->read_model(w.family), w.key, *w.value);
    } else {
      wb.Delete(d->read_model(w.family), w.key);
    }
  }
  rocksdb::WriteOptions wo;
  wo.sync = sync;
  rocksdb::Status s = d->db->Write(wo, &wb);
  if (!s.ok()) return Failed(WriteFailed(s, "writing the read model"));
  return Status::Ok();
}

Result<std::optional<std::string>> RocksDbEventStore::GetReadModel(ReadModelFamily family,
                                                                   const std::string& key) {
  std::shared_ptr<Db> d = db();
  return GetOptional(*d, d->read_model(family), key, "the read model");
}

Result<std::vector<ReadModelEntry>> RocksDbEventStore::ScanReadModel(ReadModelFamily family,
                                                                     const std::string& from,
                                                                     const std::string& to,
                                                                     bool reverse, size_t limit) {
  std::shared_ptr<Db> d = db();
  std::vector<ReadModelEntry> out;
  if (limit == 0) return out;
  rocksdb::ReadOptions ro;
  std::unique_ptr<rocksdb::Iterator> it(d->db->NewIterator(ro, d->read_model(family)));
  if (!reverse) {
    for (it->Seek(from); it->Valid() && out.size() < limit; it->Next()) {
      if (!to.empty() && it->key().compare(to) >= 0) break;
      out.push_back({it->key().ToString(), it->value().ToString()});
    }
  } else {
    if (to.empty()) {
      it->SeekToLast();
    } else {
      it->SeekForPrev(to);
      if (it->Valid() && it->key().compare(to) >= 0) it->Prev();
    }
    for (; it->Valid() && out.size() < limit; it->Prev()) {
      if (it->key().compare(from) < 0) break;
      out.push_back({it->key().ToString(), it->value().ToString()});
    }
  }
  if (!it->status().ok()) return FromRocks(it->status(), "scanning the read model");
  return out;
}

Status RocksDbEventStore::ClearReadModel() {
  std::shared_ptr<Db> d = db();
  if (d->secondary) return FailedPrecondition("the event store is a read-only secondary");
  if (Status f = WriteRefusal(); !f.ok()) return f;
  rocksdb::WriteBatch wb;
  for (auto* cf : {d->read_records, d->read_index}) {
    std::unique_ptr<rocksdb::Iterator> it(d->db->NewIterator(rocksdb::ReadOptions(), cf));
    it->SeekToFirst();
    if (!it->Valid()) continue;
    std::string first = it->key().ToString();
    it->SeekToLast();
    std::string last = it->key().ToString() + std::string(1, '\0');
    wb.DeleteRange(cf, first, last);
  }
  rocksdb::WriteOptions wo;
  wo.sync = true;
  rocksdb::Status s = d->db->Write(wo, &wb);
  if (!s.ok()) return Failed(WriteFailed(s, "clearing the read model"));
  return Status::Ok();
}

}  // namespace epoch::storage::internal
