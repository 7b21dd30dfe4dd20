// epoch-tamper: flips one byte of one stored event in a stopped store, so tests (and
// anyone checking Epoch's audit) can see `epochctl audit verify` name the position.
//
//   epoch-tamper --store DIR --position N [--offset K]
//
// DIR is the RocksDB directory (<data-dir>/store). The byte at offset K of the event's
// stored value (default: the middle) is XORed with 0x01. The store must not be open.
#include <rocksdb/db.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "storage/codec.h"

int main(int argc, char** argv) {
  std::string store;
  long long position = 0, offset = -1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--store") == 0) store = argv[i + 1];
    else if (std::strcmp(argv[i], "--position") == 0) position = std::atoll(argv[i + 1]);
    else if (std::strcmp(argv[i], "--offset") == 0) offset = std::atoll(argv[i + 1]);
  }
  if (store.empty() || position < 1) {
    std::fprintf(stderr, "usage: epoch-tamper --store DIR --position N [--offset K]\n");
    return 2;
  }
  using namespace epoch::storage;
  std::vector<std::string> names;
  rocksdb::Status s = rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), store, &names);
  if (!s.ok()) {
    std::fprintf(stderr, "epoch-tamper: %s\n", s.ToString().c_str());
    return 1;
  }
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  for (const auto& n : names) cfs.emplace_back(n, rocksdb::ColumnFamilyOptions());
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  s = rocksdb::DB::Open(rocksdb::Options(), store, cfs, &handles, &raw);
  if (!s.ok()) {
    std::fprintf(stderr, "epoch-tamper: %s (is epochd still running?)\n", s.ToString().c_str());
    return 1;
  }
  std::unique_ptr<rocksdb::DB> db(raw);
  rocksdb::ColumnFamilyHandle* events = nullptr;
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == codec::kEventsFamily) events = handles[i];
  }
  int rc = 0;
  std::string value;
  std::string key = codec::EventKey(static_cast<uint64_t>(position));
  if (events == nullptr || !(s = db->Get(rocksdb::ReadOptions(), events, key, &value)).ok()) {
    std::fprintf(stderr, "epoch-tamper: no event %lld: %s\n", position, s.ToString().c_str());
    rc = 1;
  } else {
    size_t at = offset < 0 ? value.size() / 2 : static_cast<size_t>(offset);
    if (at >= value.size()) {
      std::fprintf(stderr, "epoch-tamper: offset %zu is past the value's %zu bytes\n", at,
                   value.size());
      rc = 2;
    } else {
      value[at] = static_cast<char>(value[at] ^ 0x01);
      rocksdb::WriteOptions wo;
      wo.sync = true;
      s = db->Put(wo, events, key, value);
      if (!s.ok()) {
        std::fprintf(stderr, "epoch-tamper: %s\n", s.ToString().c_str());
        rc = 1;
      } else {
        std::printf("flipped byte %zu of event %lld\n", at, position);
      }
    }
  }
  for (auto* h : handles) db->DestroyColumnFamilyHandle(h);
  db->Close();
  return rc;
}
