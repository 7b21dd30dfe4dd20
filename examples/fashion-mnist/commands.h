// fmnist's subcommands, the four steps of the fashion-mnist workflow. Each reads its
// inputs from paths it is given (a data set directory, or an upstream step's output
// directory or a file in it) and writes its outputs, metrics.json included, into
// `out`, which it creates; progress and results go to the `log` stream (stdout).
//
//   prep      IDX files of `data` -> train/validation/test shards + manifest.json
//   train     prep dir -> model.bin (+ per-epoch metrics), on the CPU or a GPU;
//             stops early, at a minibatch boundary, when asked (SIGTERM)
//   validate  prep dir or data set dir (its t10k split) + model -> accuracy,
//             per-class accuracy, confusion matrix
//   infer     data set dir or prep dir (test images) + model -> predictions.csv
//
// Errors: a Status naming the file or flag and the problem; kInvalidArgument,
// kNotFound, kCorruption and kFailedPrecondition are the caller's input (fmnist exits 2),
// anything else is a failure of this program or the machine (exit 1).
//
// Thread-safety: each command runs alone in its process.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "common/status.h"
#include "examples/fashion-mnist/cuda_train.h"
#include "examples/fashion-mnist/idx.h"
#include "examples/fashion-mnist/train.h"

namespace epoch::fmnist {

struct PrepOptions {
  std::string data;  // the data set directory (train-* and t10k-* IDX files)
  std::string out;
  double validation = 0.1;  // fraction of the 60,000 training images held out, 0..0.5
  uint64_t seed = 1;
};
Status Prep(const PrepOptions& o, std::ostream& log);

struct TrainCommandOptions {
  std::string data;  // prep dir, or a file in it
  std::string out;
  std::vector<int> hidden = {256, 128};
  std::string device = "auto";  // auto | cpu | cuda (see ResolveDevice)
  size_t limit = 0;             // use only the first `limit` training images (0: all)
  TrainOptions train;           // train.seed also seeds the initial weights
  // Live metrics: JSON lines appended (and flushed) to this file, "" for none. After each
  // epoch {"epoch", "step", "loss", "train_accuracy", "validation_accuracy", "lr",
  // "epoch_seconds"} (the epoch's mean loss), and every metrics_every optimizer steps
  // inside one {"epoch", "step", "loss", "lr"} (the mean loss since the previous line);
  // "step" counts optimizer steps (minibatches) over the whole training. fmnist_main
  // defaults it to $EPOCH_METRICS.
  std::string metrics;
  int metrics_every = 100;  // 0: only the per-epoch lines
  // Where each epoch's checkpoint goes (checkpoint.h), "" for none. When it declares
  // one already, training resumes from it: its settings must be these (else
  // kFailedPrecondition); one that cannot be read is ignored, saying why, and training
  // starts at epoch 1. fmnist_main defaults it to $EPOCH_CHECKPOINT_DIR.
  std::string checkpoint_dir;
  // fmnist_main's SIGTERM handler sets it; null for none. Training stops at the next
  // minibatch boundary (TrainHooks::stop), logs "SIGTERM received at epoch E step S: "
  // and which checkpoint is the latest (they are written at epoch ends only, so a
  // resumed training redoes epoch E from its start), and writes neither model.bin nor
  // metrics.json.
  const std::atomic<bool>* stop = nullptr;
};
// How a TrainCommand that returned Ok ended.
enum class TrainEnd { kTrained, kStopped };
Result<TrainEnd> TrainCommand(const TrainCommandOptions& o, std::ostream& log);

struct ValidateOptions {
  std::string data;   // prep dir (or a file in it) or data set dir
  std::string model;  // train's output dir, or model.bin
  std::string out;
  int threads = 2;
};
Status Validate(const ValidateOptions& o, std::ostream& log);

struct InferOptions {
  std::string model;
  std::string data;  // data set dir or prep dir (or a file in it)
  std::string out;
  size_t count = 20;
  size_t offset = 0;
};
Status Infer(const InferOptions& o, std::ostream& log);

// The 10,000 test images: the t10k IDX pair when `path` is a data set directory, else
// the test split of the prep directory `path` names (see FindPrepDir).
Result<Dataset> LoadTestSet(const std::string& path);

// The device train runs on, and why.
struct DeviceChoice {
  std::string device;  // "cpu" or "cuda"
  std::string why;     // the GPU used, or why not the GPU; empty for --device cpu
};

// Whether the CUDA path can run: the GPU's description, or why not (ProbeCuda's
// contract, cuda_train.h). Tests pass their own.
using CudaProbe = std::function<Result<std::string>()>;

// Which path `--device` selects:
//   cpu   the CPU; the probe is not called.
//   cuda  the GPU when the probe finds one, else kFailedPrecondition:
//         "--device cuda: no usable GPU: <the probe's reason>", e.g. "--device cuda: no
//         usable GPU: cudaGetDeviceCount: CUDA driver version is insufficient for CUDA
//         runtime version (35)", or, when CUDA is not compiled in (the probe answers
//         kFailedPrecondition), "--device cuda: this build has no CUDA path (...)".
//   auto  the GPU when the probe finds one, else the CPU; `why` says which GPU, or
//         why not ("no usable GPU: <reason>" / "this build has no CUDA path (...)").
// kInvalidArgument for anything but auto, cpu or cuda.
Result<DeviceChoice> ResolveDevice(const std::string& device, const CudaProbe& probe = ProbeCuda);

}  // namespace epoch::fmnist
