// Training and evaluation of an Mlp on the CPU, and the parts of training every device
// shares (cuda_train.h is the GPU's Train).
//
// Minibatch training with Adam (default) or SGD with momentum, optionally a cosine
// learning-rate decay to zero over the run. Each minibatch is cut into kParts fixed
// parts whose gradients are computed independently (in parallel when threads > 1) and
// summed in part order, then the update is applied by parameter ranges in parallel;
// so the result for a seed is the same whatever the thread count, run after run.
// The minibatch order (MinibatchOrder), the batch plan (PlanBatches), the learning rate
// (LearningRate, AdamStepSize) and the optimizer constants are the same on every device.
//
// Thread-safety: Train and Evaluate start and join their own threads; the model must
// not be touched by anyone else during the call. A MinibatchOrder is a plain value.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "examples/fashion-mnist/idx.h"
#include "examples/fashion-mnist/mlp.h"

namespace epoch::fmnist {

inline constexpr int kParts = 2;  // parts of each minibatch (the most threads used)

// Adam's constants (Kingma & Ba's defaults).
inline constexpr float kAdamBeta1 = 0.9f, kAdamBeta2 = 0.999f, kAdamEps = 1e-8f;

enum class Optimizer { kAdam, kSgd };

struct TrainOptions {
  int epochs = 10;
  double lr = 1e-3;
  int batch = 64;
  uint64_t seed = 1;  // minibatch order (the caller seeds MakeMlp)
  int threads = 2;    // 1..kParts
  Optimizer optimizer = Optimizer::kAdam;
  double momentum = 0.9;  // SGD only
  bool cosine = true;     // decay lr to 0 along a half cosine over all steps
};

struct EpochReport {
  int epoch = 0;     // 1-based
  int64_t step = 0;  // optimizer steps done over the run at the epoch's end
  double train_loss = 0;
  double train_accuracy = 0;        // on the minibatches as they were trained
  double validation_accuracy = -1;  // -1: no validation set
  double seconds = 0;               // this epoch's training steps
  double lr = 0;                    // at the epoch's last step
};

struct TrainReport {
  std::vector<EpochReport> epochs;
  double train_seconds = 0;      // all training steps (validation passes excluded)
  double seconds = 0;            // the whole call, validation passes included
  double images_per_second = 0;  // training images processed / train_seconds
  // TrainHooks::stop ended the training early: `epochs` and the times above hold the
  // finished epochs only; it stopped after stopped_step optimizer steps over the run,
  // in epoch stopped_epoch (1-based; between two epochs: the one it did not start).
  bool stopped = false;
  int stopped_epoch = 0;
  int64_t stopped_step = 0;
};

// What a training holds between epochs besides the weights (the Mlp): with both, a
// training that stopped after epochs_done epochs goes on exactly as if it had not (the
// minibatch order is replayed from the seed, the step count follows from the plan).
struct TrainState {
  int epochs_done = 0;        // completed epochs, 0..options.epochs
  std::vector<float> m1, m2;  // Adam's moments (SGD: m1 the velocity, m2 unused); empty: zeros
};

// Progress inside an epoch, every TrainHooks::progress_every optimizer steps.
struct StepReport {
  int epoch = 0;        // 1-based
  int64_t step = 0;     // optimizer steps done over the run, this one included
  int64_t samples = 0;  // training images trained on over the run, this step's included
  double loss = 0;      // mean loss of the images since the previous report in this epoch
  double lr = 0;        // of this step
};

// Optional callbacks and a starting point for Train / TrainOnCuda.
struct TrainHooks {
  // After each epoch's validation pass.
  std::function<void(const EpochReport&)> on_epoch;
  // After on_epoch, with the trained weights and the state to continue from; an error
  // stops the training and Train returns it.
  std::function<Status(const Mlp&, const TrainState&)> on_checkpoint;
  // Every progress_every steps of an epoch (0: never), on a training thread while the
  // others wait: keep it short.
  int progress_every = 0;
  std::function<void(const StepReport&)> on_progress;
  // Continue from here (m holds its weights) instead of from epoch 0; may be null.
  const TrainState* resume = nullptr;
  // Read at every minibatch boundary: before each epoch and after each optimizer step
  // but an epoch's last (that epoch finishes: its validation pass, on_epoch and
  // on_checkpoint). Once it reads true the training stops there, leaves m at the
  // weights of the last step done and returns TrainReport::stopped. May be null. A
  // signal handler may set it (a lock-free atomic store is async-signal-safe).
  const std::atomic<bool>* stop = nullptr;
};

// Whether hooks.stop is set and reads true.
inline bool StopRequested(const TrainHooks& hooks) {
  return hooks.stop != nullptr && hooks.stop->load(std::memory_order_relaxed);
}

// Trains m in place on train; after each epoch evaluates on validation (when it is
// not empty) and calls the hooks. With hooks.resume, trains epochs epochs_done + 1 ..
// options.epochs only (none when all are done) and reports those. With hooks.stop, may
// end early (see TrainHooks::stop and TrainReport::stopped). kInvalidArgument for
// bad options, an empty training set, data whose width is not m.inputs(), or a resume
// state that does not fit (epochs_done out of range, moments of the wrong size).
Result<TrainReport> Train(Mlp& m, const Dataset& train, const Dataset& validation,
                          const TrainOptions& options, const TrainHooks& hooks);
Result<TrainReport> Train(Mlp& m, const Dataset& train, const Dataset& validation,
                          const TrainOptions& options,
                          const std::function<void(const EpochReport&)>& on_epoch);

// What Train checks of hooks.resume (null is fine) for a model of np parameters.
Status CheckResume(const TrainState* resume, const TrainOptions& options, size_t np);

// What Train checks before it starts: kInvalidArgument naming the bad option, an empty
// training set, or a network that does not map 784 inputs to 10 classes.
Status CheckTrainInput(const Mlp& m, const Dataset& train, const TrainOptions& options);

// How a run over n training images is cut into minibatches: `steps` batches per epoch,
// each of `batch` images but the last, which holds the rest.
struct BatchPlan {
  int batch = 0;            // min(options.batch, n)
  int steps = 0;            // ceil(n / batch)
  int64_t total_steps = 0;  // steps * options.epochs
};
BatchPlan PlanBatches(size_t n, const TrainOptions& options);

// The learning rate of 0-based step `step` of a run of `total_steps`: options.lr, or
// with options.cosine its half-cosine decay towards 0.
double LearningRate(const TrainOptions& options, int64_t step, int64_t total_steps);

// Adam's bias-corrected step size at 0-based step `step`:
// lr * sqrt(1 - beta2^(step+1)) / (1 - beta1^(step+1)).
float AdamStepSize(double lr, int64_t step);

class Rng;

// The order in which each epoch visits the n training images: a permutation of
// 0..n-1, reshuffled at every epoch by an Rng seeded from `seed` (TrainOptions::seed),
// so every device sees the same minibatches.
class MinibatchOrder {
 public:
  MinibatchOrder(size_t n, uint64_t seed);
  ~MinibatchOrder();
  MinibatchOrder(const MinibatchOrder&) = delete;
  MinibatchOrder& operator=(const MinibatchOrder&) = delete;

  // Reshuffles and returns the next epoch's order.
  const std::vector<uint32_t>& NextEpoch();

 private:
  std::vector<uint32_t> order_;
  std::unique_ptr<Rng> rng_;
};

struct Evaluation {
  double accuracy = 0;
  double loss = 0;                             // mean cross-entropy
  std::vector<uint8_t> predicted;              // per image
  std::vector<float> confidence;               // softmax probability of the predicted class
  int64_t confusion[kClasses][kClasses] = {};  // [true label][predicted]
};

// Runs m over every image of d with `threads` threads (1..kParts).
Evaluation Evaluate(const Mlp& m, const Dataset& d, int threads);

}  // namespace epoch::fmnist
