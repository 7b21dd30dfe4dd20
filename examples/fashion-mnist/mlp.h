// The model: a multilayer perceptron sizes[0] -> sizes[1] -> ... -> sizes.back()
// (784 -> 256 -> 128 -> 10 by default), ReLU after every layer but the last, softmax
// cross-entropy on the last; its forward and backward passes; model.bin.
//
// Parameters live in one flat vector so the optimizer is one loop; layer l holds
//   W_l: sizes[l] x sizes[l+1], row-major (input-major: row i is input i's weights)
//   b_l: sizes[l+1]
// at WeightOffset(l) and BiasOffset(l).
//
// model.bin, all numbers little-endian:
//   model   := magic:u32 = 0x314d4d46 ("FMM1")  version:u32 = 1  layers:u32 = L
//              sizes:u32[L + 1]  params:f32[ParamCount(sizes)]  crc32:u32
//   crc32 is zlib's CRC-32 of every byte before it; params are in the layout above.
//
// Thread-safety: an Mlp is a plain value. The passes only read it, so threads may run
// them at once on one Mlp with a Workspace each; nothing may write it meanwhile.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace epoch::fmnist {

inline constexpr uint32_t kModelMagic = 0x314d4d46;  // "FMM1" as little-endian bytes
inline constexpr uint32_t kModelVersion = 1;

struct Mlp {
  std::vector<int> sizes;     // widths, input first; at least 2 entries
  std::vector<float> params;  // ParamCount(sizes) floats

  int layers() const { return static_cast<int>(sizes.size()) - 1; }
  int inputs() const { return sizes.front(); }
  int outputs() const { return sizes.back(); }
  size_t WeightOffset(int l) const;
  size_t BiasOffset(int l) const;
  static size_t ParamCount(const std::vector<int>& sizes);
};

// A network of the given widths with He initialisation (weights normal with variance
// 2 / fan-in, biases 0), drawn from Rng(seed). kInvalidArgument unless there are at
// least two widths, each 1..65536.
Result<Mlp> MakeMlp(const std::vector<int>& sizes, uint64_t seed);

// Scratch memory for passes over at most max_rows rows of one Mlp's shape. One per
// thread; reused across calls so the passes allocate nothing.
struct Workspace {
  Workspace(const std::vector<int>& sizes, int max_rows);

  int max_rows;
  std::vector<std::vector<float>> acts;  // acts[l]: output of layer l (rows x sizes[l+1])
  std::vector<float> delta, delta_prev;  // gradients w.r.t. a layer's output
  std::vector<float> a_t, w_t;           // transposed activations and weights
};

// Logits (rows x outputs()) of rows inputs x (rows x inputs()), rows <= max_rows. The
// pointer is into ws and stays valid until ws is used again.
const float* Forward(const Mlp& m, const float* x, int rows, Workspace& ws);

struct BatchStats {
  double loss_sum = 0;  // sum over the rows of -log softmax(logits)[label]
  int64_t correct = 0;  // rows whose largest logit is their label
};

// Forward and backward over rows examples: writes into grad (ParamCount floats, same
// layout as params) the gradient of `scale * sum of the rows' losses` (scale = 1/B
// gives this part's share of a batch of B's mean loss). Labels must be < outputs().
BatchStats LossAndGradient(const Mlp& m, const float* x, const uint8_t* labels, int rows,
                           float scale, Workspace& ws, float* grad);

// Writes model.bin (through path.tmp and a rename).
Status SaveModel(const Mlp& m, const std::string& path);

// Reads and checks model.bin: kNotFound, or kCorruption naming the file and the problem
// (bad magic, version, implausible sizes, wrong length, checksum mismatch).
Result<Mlp> LoadModel(const std::string& path);

// model.bin's bytes, and back (DecodeModel checks as LoadModel does, naming `name`);
// checkpoints embed them. kInvalidArgument from EncodeModel for a malformed Mlp.
Result<std::string> EncodeModel(const Mlp& m);
Result<Mlp> DecodeModel(std::string_view bytes, const std::string& name);

// The model file path names: path itself when it is a file, <path>/model.bin when it
// is a directory. kNotFound when neither exists.
Result<std::string> FindModelFile(const std::string& path);

}  // namespace epoch::fmnist
