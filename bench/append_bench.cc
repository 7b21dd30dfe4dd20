// epoch-bench append: how close the EventStore's durable append comes to what
// RocksDB itself does with synced writes.
//
// For each thread count (1, 16, 64) and the same number of appends in total:
//   epoch: T threads call EventStore::Append; each append is one ~200-byte event to
//          the thread's own stream (expected version checked), so every call is
//          durable on return; the store group-commits concurrent callers.
//   raw:   T threads each issue their own rocksdb::WriteBatch with sync=true,
//          holding the same records an append writes (the encoded event, its
//          stream index entry and the head record) to the same column families;
//          RocksDB's own writer queue groups the concurrent writers.
// Each run uses a fresh database in a temporary directory, removed afterwards.
// Synced-write latency on shared disks is noisy, so each row runs `--rounds`
// rounds, alternating which side goes first, and reports the medians.
#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench.h"
#include "common/sha256.h"
#include "storage/codec.h"
#include "storage/event_store.h"

namespace epoch::bench {
namespace {

namespace codec = storage::codec;
using Clock = std::chrono::steady_clock;

constexpr char kTime[] = "2026-11-28T13:38:40.123456Z";

struct Options {
  uint64_t events = 2000;  // appends per configuration and round
  int rounds = 3;
  std::string dir = "/tmp";
};

// A ~200-byte JSON payload.
std::string Payload(int thread, uint64_t i) {
  std::string s = "{\"run\":\"run-" + std::to_string(thread) +
                  "\",\"step\":\"train\",\"attempt\":" + std::to_string(i) +
                  ",\"metrics\":{\"loss\":0.0123,\"accuracy\":0.987},\"pad\":\"";
  while (s.size() < 198) s.push_back('x');
  s += "\"}";
  return s;
}

uint64_t PerThread(const Options& o, int threads) {
  return std::max<uint64_t>(1, o.events / static_cast<uint64_t>(threads));
}

// Returns appends/s, or a negative number on failure.
double RunEpoch(const std::string& path, int threads, uint64_t per_thread) {
  auto opened = storage::OpenRocksDbEventStore(storage::StoreOptions{path});
  if (!opened.ok()) {
    std::fprintf(stderr, "open: %s\n", opened.status().ToString().c_str());
    return -1;
  }
  std::unique_ptr<storage::EventStore> store = std::move(opened).value();
  std::atomic<bool> failed{false};
  std::vector<std::thread> workers;
  auto start = Clock::now();
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      const std::string stream = "run-" + std::to_string(t);
      for (uint64_t i = 0; i < per_thread && !failed; ++i) {
        storage::AppendBatch b;
        b.time = kTime;
        b.epoch = 1;
        b.appends.push_back(storage::StreamAppend{
            stream, i, {storage::NewEvent{"JobSucceeded", 1, "container-c1", Payload(t, i)}}});
        auto r = store->Append(std::move(b));
        if (!r.ok()) {
          std::fprintf(stderr, "append: %s\n", r.status().ToString().c_str());
          failed = true;
        }
      }
    });
  }
  for (auto& w : workers) w.join();
  double secs = std::chrono::duration<double>(Clock::now() - start).count();
  if (failed) return -1;
  storage::StoreStats stats = store->Stats();
  std::fprintf(stderr, "  epoch %2d threads: %llu appends in %llu synced batches\n", threads,
               static_cast<unsigned long long>(stats.appends),
               static_cast<unsigned long long>(stats.commit_groups));
  return static_cast<double>(threads * per_thread) / secs;
}

double RunRaw(const std::string& path, int threads, uint64_t per_thread) {
  rocksdb::Options options;
  options.create_if_missing = true;
  options.create_missing_column_families = true;
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  for (const char* name :
       {"default", codec::kEventsFamily, codec::kStreamsFamily, codec::kMetaFamily}) {
    cfs.emplace_back(name, rocksdb::ColumnFamilyOptions());
  }
  std::vector<rocksdb::ColumnFamilyHandle*> h;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(options, path, cfs, &h, &db);
  if (!s.ok()) {
    std::fprintf(stderr, "raw open: %s\n", s.ToString().c_str());
    return -1;
  }
  std::atomic<uint64_t> next_position{0};
  std::atomic<bool> failed{false};
  std::vector<std::thread> workers;
  auto start = Clock::now();
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      const std::string stream = "run-" + std::to_string(t);
      std::string value;
      Digest hash{};
      rocksdb::WriteOptions wo;
      wo.sync = true;
      for (uint64_t i = 0; i < per_thread && !failed; ++i) {
        uint64_t position = ++next_position;
        // The same bytes an append writes (the chain is not linked here).
        codec::EncodeEvent(position, stream, i + 1, "JobSucceeded", 1, kTime, 1, "container-c1",
                           Payload(t, i), codec::ZeroDigest(), &value, &hash);
        rocksdb::WriteBatch wb;
        wb.Put(h[1], codec::EventKey(position), value);
        wb.Put(h[2], codec::StreamKey(stream, i + 1), codec::PositionValue(position));
        wb.Put(h[3], codec::kHeadMetaKey, codec::HeadValue(position, hash));
        rocksdb::Status ws = db->Write(wo, &wb);
        if (!ws.ok()) {
          std::fprintf(stderr, "raw write: %s\n", ws.ToString().c_str());
          failed = true;
        }
      }
    });
  }
  for (auto& w : workers) w.join();
  double secs = std::chrono::duration<double>(Clock::now() - start).count();
  for (auto* handle : h) (void)db->DestroyColumnFamilyHandle(handle);  // shutdown: best effort
  (void)db->Close();
  delete db;
  if (failed) return -1;
  return static_cast<double>(threads * per_thread) / secs;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 == 1 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

bool ParseArgs(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "--events" || a == "-n") && i + 1 < argc) {
      char* end = nullptr;
      o->events = std::strtoull(argv[++i], &end, 10);
      if (end == nullptr || *end != '\0' || o->events == 0) return false;
    } else if (a == "--rounds" && i + 1 < argc) {
      o->rounds = std::atoi(argv[++i]);
      if (o->rounds <= 0) return false;
    } else if (a == "--dir" && i + 1 < argc) {
      o->dir = argv[++i];
    } else {
      return false;
    }
  }
  return true;
}

}  // namespace

int RunAppendBench(int argc, char** argv) {
  Options o;
  if (!ParseArgs(argc, argv, &o)) {
    std::fprintf(stderr, "usage: epoch-bench append [--events N] [--rounds R] [--dir D]\n");
    return 2;
  }
  std::string tmpl = o.dir + "/epoch-bench-append-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    std::fprintf(stderr, "cannot create a temporary directory under %s: %s\n", o.dir.c_str(),
                 std::strerror(errno));
    return 1;
  }
  const std::string root = buf.data();
  std::printf(
      "epoch-bench append: %llu appends per run, one ~200-byte event each, sync=true; "
      "median of %d rounds\n",
      static_cast<unsigned long long>(o.events), o.rounds);
  std::printf("directory: %s\n\n", root.c_str());
  std::printf("| threads | epoch appends/s | raw rocksdb writes/s | ratio |\n");
  std::printf("|--------:|----------------:|---------------------:|------:|\n");
  std::fflush(stdout);
  int rc = 0;
  for (int threads : {1, 16, 64}) {
    uint64_t per_thread = PerThread(o, threads);
    std::vector<double> epochs, raws;
    for (int round = 0; round < o.rounds && rc == 0; ++round) {
      std::string tag = std::to_string(threads) + "-" + std::to_string(round);
      auto epoch_run = [&] {
        epochs.push_back(RunEpoch(root + "/epoch-" + tag, threads, per_thread));
      };
      auto raw_run = [&] { raws.push_back(RunRaw(root + "/raw-" + tag, threads, per_thread)); };
      if (round % 2 == 0) {
        epoch_run();
        raw_run();
      } else {
        raw_run();
        epoch_run();
      }
      if (epochs.back() < 0 || raws.back() < 0) rc = 1;
      // Free the disk space of finished runs as we go.
      std::error_code ignored;
      std::filesystem::remove_all(root + "/epoch-" + tag, ignored);
      std::filesystem::remove_all(root + "/raw-" + tag, ignored);
    }
    if (rc != 0) break;
    double epoch = Median(epochs), raw = Median(raws);
    std::printf("| %7d | %15.0f | %20.0f | %5.2f |\n", threads, epoch, raw, epoch / raw);
    std::fflush(stdout);
  }
  std::error_code ec;
  std::filesystem::remove_all(root, ec);
  if (ec) std::fprintf(stderr, "could not remove %s: %s\n", root.c_str(), ec.message().c_str());
  return rc;
}

}  // namespace epoch::bench
