// Prepared data: what `fmnist prep` writes and `train`/`validate`/`infer` read.
//
// A prepared directory holds manifest.json and the shards it lists:
//   manifest.json := {"format": "fmnist-shards", "version": 1, "rows": 28, "cols": 28,
//                     "classes": [names], "seed": N, "validation_fraction": F,
//                     "source": "<data set dir>",
//                     "splits": {"train" | "validation" | "test":
//                                [{"file": "train-00000.shard", "count": N,
//                                  "crc32": "<8 hex digits>"}, ...]}}
// Each split is cut into shards of at most kShardImages images, named
// <split>-<5-digit index>.shard. One shard, all numbers little-endian:
//   shard   := header pixels labels trailer
//   header  := magic:u32 = 0x31534d46 ("FMS1")  version:u32 = 1  count:u32
//              rows:u32 = 28  cols:u32 = 28  reserved:u32 = 0
//   pixels  := f32[count * rows * cols]   normalised to [0, 1], image after image
//   labels  := u8[count]                   0..9
//   trailer := crc32:u32                   zlib CRC-32 of every byte before it
// Readers check the size against the header, the CRC, that every pixel is in [0, 1]
// and every label 0..9, and that each shard matches its manifest entry.
//
// Errors: kNotFound (no manifest / shard), kCorruption naming the file and the
// problem, kInternal for I/O failures.
//
// Thread-safety: free functions over values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.h"
#include "common/status.h"
#include "examples/fashion-mnist/idx.h"

namespace epoch::fmnist {

inline constexpr uint32_t kShardMagic = 0x31534d46;  // "FMS1" as little-endian bytes
inline constexpr uint32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderBytes = 24;
inline constexpr size_t kShardImages = 10000;

// Writes images [begin, end) of d to path (through path.tmp and a rename) and returns
// the shard's CRC-32 (its trailer).
Result<uint32_t> WriteShard(const std::string& path, const Dataset& d, size_t begin, size_t end);

// Reads and checks one shard; *crc (if given) gets its CRC-32.
Result<Dataset> ReadShard(const std::string& path, uint32_t* crc = nullptr);

struct ShardEntry {
  std::string file;  // name within the directory
  size_t count = 0;
  uint32_t crc32 = 0;
};

// Writes d as <split>-00000.shard, <split>-00001.shard, ... into dir.
Result<std::vector<ShardEntry>> WriteSplit(const std::string& dir, std::string_view split,
                                           const Dataset& d, size_t per_shard = kShardImages);

// The manifest entry list of a split, as JSON.
Json ShardEntriesJson(const std::vector<ShardEntry>& entries);

// The prepared directory that path names: path itself when it is a directory holding
// manifest.json, or the directory of path when path is a file in such a directory (so
// a workflow can pass {{steps.prep.outputs.manifest.json}} or any shard).
// kNotFound when neither.
Result<std::string> FindPrepDir(const std::string& path);

// Reads <dir>/manifest.json. kCorruption when it is not a version-1 fmnist manifest.
Result<Json> ReadManifest(const std::string& dir);

// Reads every shard of a split listed in dir's manifest, concatenated in order, and
// checks each against its entry (count, CRC). A split the manifest lists as empty
// gives an empty Dataset; one it does not list at all is kNotFound.
Result<Dataset> ReadSplit(const std::string& dir, std::string_view split);

// "0a1b2c3d"
std::string Crc32Hex(uint32_t crc);

}  // namespace epoch::fmnist
