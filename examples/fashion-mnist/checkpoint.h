// Checkpoints of a training in progress, and the checkpoint dir that holds them.
//
// A checkpoint is everything `fmnist train` needs to go on after `epochs_done` epochs
// exactly as if it had not stopped: the weights (a whole model.bin), the optimizer's
// moments, and a JSON `meta` the caller fills (train: the settings the training must
// match to resume, and the finished epochs' reports). The minibatch order is not
// stored: it is replayed from the seed (train.h, TrainState).
//
// epoch-N.bin, all numbers little-endian:
//   checkpoint := magic:u32 = 0x31434d46 ("FMC1")  version:u32 = 1
//                 model_bytes:u32  model:u8[model_bytes]    a model.bin, its CRC included
//                 epochs_done:u32  moments:u32 (0..2)  count:u32  moment:f32[count][moments]
//                 meta_bytes:u32  meta:u8[meta_bytes]       a JSON object
//                 crc32:u32                                 of every byte before it
//   moments is 2 for Adam (m1 then m2), 1 for SGD (the velocity), 0 for none (zeros).
//
// The checkpoint dir (Epoch's $EPOCH_CHECKPOINT_DIR, which outlives attempts):
//   epoch-N.bin      one per epoch, all kept (each is recorded by the agent)
//   checkpoint.json  {"file": "epoch-N.bin", "epoch": N}: the one to resume from
// SaveCheckpoint writes epoch-N.bin durably (temporary name, fsync, rename, fsync of the
// directory) before it replaces checkpoint.json the same way, so checkpoint.json only
// ever names a complete file.
//
// Thread-safety: plain functions over plain values; one writer per directory.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "common/json.h"
#include "common/status.h"
#include "examples/fashion-mnist/mlp.h"
#include "examples/fashion-mnist/train.h"

namespace epoch::fmnist {

inline constexpr uint32_t kCheckpointMagic = 0x31434d46;  // "FMC1" as little-endian bytes
inline constexpr uint32_t kCheckpointVersion = 1;

struct Checkpoint {
  Mlp model;
  TrainState state;
  Json meta = Json::object();
};

// A checkpoint's bytes, and back. EncodeCheckpoint: kInvalidArgument for a malformed
// model or moments that do not match it. DecodeCheckpoint: kCorruption naming `name`
// and the problem (bad magic or version, truncated, trailing bytes, checksum mismatch,
// a bad embedded model, meta that is not a JSON object).
Result<std::string> EncodeCheckpoint(const Checkpoint& c);
Result<Checkpoint> DecodeCheckpoint(std::string_view bytes, const std::string& name);

// "epoch-N.bin".
std::string CheckpointFileName(int epochs_done);

// Writes dir/epoch-N.bin (N = c.state.epochs_done), then declares it in
// dir/checkpoint.json, both durably; creates dir. Returns the file name. kInternal for
// an I/O error.
Result<std::string> SaveCheckpoint(const std::string& dir, const Checkpoint& c);

// The checkpoint dir/checkpoint.json declares, with its file name: nullopt when there
// is none (no dir, no checkpoint.json). kCorruption when checkpoint.json or the file it
// names is unreadable or malformed, kNotFound when that file is missing.
struct DeclaredCheckpoint {
  std::string file;  // as checkpoint.json names it, e.g. "epoch-2.bin"
  Checkpoint checkpoint;
};
Result<std::optional<DeclaredCheckpoint>> LoadDeclaredCheckpoint(const std::string& dir);

}  // namespace epoch::fmnist
