#include "examples/fashion-mnist/train.h"

#include <algorithm>
#include <barrier>
#include <chrono>
#include <cmath>
#include <numbers>
#include <numeric>
#include <thread>

#include "examples/fashion-mnist/rng.h"

namespace epoch::fmnist {

namespace {

constexpr int kEvalRows = 256;  // rows per forward pass when evaluating

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Runs fn(0..threads-1), fn(0) on the calling thread, and joins.
template <typename Fn>
void RunThreads(int threads, Fn fn) {
  std::vector<std::thread> workers;
  for (int t = 1; t < threads; ++t) workers.emplace_back(fn, t);
  fn(0);
  for (auto& w : workers) w.join();
}

}  // namespace

Status CheckTrainInput(const Mlp& m, const Dataset& train, const TrainOptions& o) {
  if (o.epochs < 1) return InvalidArgument("epochs must be at least 1");
  if (o.batch < 1) return InvalidArgument("batch must be at least 1");
  if (!(o.lr > 0) || !std::isfinite(o.lr)) return InvalidArgument("lr must be positive");
  if (o.threads < 1 || o.threads > kParts) {
    return InvalidArgument("threads must be 1.." + std::to_string(kParts));
  }
  if (train.size() == 0) return InvalidArgument("the training set is empty");
  if (m.inputs() != kPixels || m.outputs() != kClasses) {
    return InvalidArgument("the network must map 784 inputs to 10 classes");
  }
  return Status::Ok();
}

BatchPlan PlanBatches(size_t n, const TrainOptions& o) {
  BatchPlan p;
  p.batch = static_cast<int>(std::min<size_t>(o.batch, n));
  p.steps = static_cast<int>((n + p.batch - 1) / p.batch);
  p.total_steps = int64_t{p.steps} * o.epochs;
  return p;
}

double LearningRate(const TrainOptions& o, int64_t step, int64_t total_steps) {
  if (!o.cosine) return o.lr;
  return o.lr * 0.5 *
         (1.0 + std::cos(std::numbers::pi * static_cast<double>(step) /
                         static_cast<double>(total_steps)));
}

float AdamStepSize(double lr, int64_t step) {
  const double k = static_cast<double>(step + 1);
  return static_cast<float>(lr * std::sqrt(1.0 - std::pow(kAdamBeta2, k)) /
                            (1.0 - std::pow(kAdamBeta1, k)));
}

MinibatchOrder::MinibatchOrder(size_t n, uint64_t seed)
    : order_(n), rng_(std::make_unique<Rng>(seed ^ 0x5eed0f0a11ba7c4eULL)) {
  std::iota(order_.begin(), order_.end(), 0u);
}

MinibatchOrder::~MinibatchOrder() = default;

const std::vector<uint32_t>& MinibatchOrder::NextEpoch() {
  rng_->Shuffle(order_);
  return order_;
}

Status CheckResume(const TrainState* resume, const TrainOptions& o, size_t np) {
  if (resume == nullptr) return Status::Ok();
  if (resume->epochs_done < 0 || resume->epochs_done > o.epochs) {
    return InvalidArgument("cannot resume after epoch " + std::to_string(resume->epochs_done) +
                           " of a training of " + std::to_string(o.epochs) + " epochs");
  }
  for (const auto* v : {&resume->m1, &resume->m2}) {
    if (!v->empty() && v->size() != np) {
      return InvalidArgument("cannot resume: the optimizer state holds " +
                             std::to_string(v->size()) + " values for a model of " +
                             std::to_string(np) + " parameters");
    }
  }
  return Status::Ok();
}

Result<TrainReport> Train(Mlp& m, const Dataset& train, const Dataset& validation,
                          const TrainOptions& o,
                          const std::function<void(const EpochReport&)>& on_epoch) {
  TrainHooks hooks;
  hooks.on_epoch = on_epoch;
  return Train(m, train, validation, o, hooks);
}

Result<TrainReport> Train(Mlp& m, const Dataset& train, const Dataset& validation,
                          const TrainOptions& o, const TrainHooks& hooks) {
  RETURN_IF_ERROR(CheckTrainInput(m, train, o));
  RETURN_IF_ERROR(CheckResume(hooks.resume, o, m.params.size()));

  const size_t n = train.size();
  const BatchPlan plan = PlanBatches(n, o);
  const int batch = plan.batch;
  const int steps = plan.steps;
  const int64_t total_steps = plan.total_steps;
  const size_t np = m.params.size();
  const int threads = o.threads;

  std::vector<std::vector<float>> grads(kParts, std::vector<float>(np));
  std::vector<Workspace> ws;
  std::vector<std::vector<float>> xs(kParts);
  std::vector<std::vector<uint8_t>> ys(kParts);
  const int part_rows = (batch + kParts - 1) / kParts;
  for (int q = 0; q < kParts; ++q) {
    ws.emplace_back(m.sizes, part_rows);
    xs[q].resize(static_cast<size_t>(part_rows) * kPixels);
    ys[q].resize(part_rows);
  }
  std::vector<float> m1(np, 0.0f), m2(np, 0.0f);  // Adam moments, or SGD velocity (m1)
  const int first_epoch = hooks.resume == nullptr ? 1 : hooks.resume->epochs_done + 1;
  if (hooks.resume != nullptr) {
    if (!hooks.resume->m1.empty()) m1 = hooks.resume->m1;
    if (!hooks.resume->m2.empty()) m2 = hooks.resume->m2;
  }

  MinibatchOrder minibatches(n, o.seed);
  // Each epoch reshuffles the previous order: replay the epochs already done.
  for (int e = 1; e < first_epoch; ++e) minibatches.NextEpoch();

  TrainReport report;
  const auto t_all = std::chrono::steady_clock::now();
  int64_t step_base = int64_t{steps} * (first_epoch - 1);
  const int every = hooks.on_progress ? hooks.progress_every : 0;
  for (int epoch = first_epoch; epoch <= o.epochs; ++epoch) {
    if (StopRequested(hooks)) {
      report.stopped = true;
      report.stopped_epoch = epoch;
      report.stopped_step = step_base;
      break;
    }
    const std::vector<uint32_t>& order = minibatches.NextEpoch();
    std::vector<BatchStats> stats(kParts);
    // Thread 0 reads hooks.stop between the two barriers of a step and says here what
    // every thread sees after the second: the steps done, or 0 to go on.
    int64_t stop_after = 0;
    double last_lr = o.lr;
    double window_loss = 0;  // the epoch's loss sum at the last progress report
    size_t window_images = 0;
    std::barrier sync(threads);
    const auto t_epoch = std::chrono::steady_clock::now();

    RunThreads(threads, [&](int t) {
      // This thread's share of the parameters for the update phase.
      const size_t p_begin = np * t / threads, p_end = np * (t + 1) / threads;
      for (int s = 0; s < steps; ++s) {
        const size_t begin = static_cast<size_t>(s) * batch;
        const int rows = static_cast<int>(std::min<size_t>(batch, n - begin));
        for (int q = t; q < kParts; q += threads) {
          const int lo = rows * q / kParts, hi = rows * (q + 1) / kParts;
          if (hi == lo) {
            std::fill(grads[q].begin(), grads[q].end(), 0.0f);
            continue;
          }
          for (int r = lo; r < hi; ++r) {
            const uint32_t idx = order[begin + r];
            std::copy_n(train.image(idx), kPixels, xs[q].data() + (r - lo) * kPixels);
            ys[q][r - lo] = train.labels[idx];
          }
          BatchStats b = LossAndGradient(m, xs[q].data(), ys[q].data(), hi - lo,
                                         1.0f / static_cast<float>(rows), ws[q], grads[q].data());
          stats[q].loss_sum += b.loss_sum;
          stats[q].correct += b.correct;
        }
        sync.arrive_and_wait();  // every part's gradient is ready

        const int64_t step = step_base + s;  // 0-based over the whole run
        const double lr = LearningRate(o, step, total_steps);
        if (t == 0 && s == steps - 1) last_lr = lr;
        if (t == 0 && s + 1 < steps && StopRequested(hooks)) stop_after = step + 1;
        // Every part's stats are final until the next gradient phase, past the barrier
        // below; the epoch's own line reports its last window.
        if (t == 0 && every > 0 && (s + 1) % every == 0 && s + 1 < steps) {
          double loss_sum = 0;
          for (const auto& st : stats) loss_sum += st.loss_sum;
          const size_t images = begin + rows;
          StepReport sr;
          sr.epoch = epoch;
          sr.step = step + 1;
          sr.samples = static_cast<int64_t>(n) * (epoch - 1) + static_cast<int64_t>(images);
          sr.loss = (loss_sum - window_loss) / static_cast<double>(images - window_images);
          sr.lr = lr;
          window_loss = loss_sum;
          window_images = images;
          hooks.on_progress(sr);
        }
        float* w = m.params.data();
        if (o.optimizer == Optimizer::kAdam) {
          const float step_size = AdamStepSize(lr, step);
          for (size_t i = p_begin; i < p_end; ++i) {
            float g = grads[0][i];
            for (int q = 1; q < kParts; ++q) g += grads[q][i];
            m1[i] = kAdamBeta1 * m1[i] + (1.0f - kAdamBeta1) * g;
            m2[i] = kAdamBeta2 * m2[i] + (1.0f - kAdamBeta2) * g * g;
            w[i] -= step_size * m1[i] / (std::sqrt(m2[i]) + kAdamEps);
          }
        } else {
          const float mu = static_cast<float>(o.momentum), rate = static_cast<float>(lr);
          for (size_t i = p_begin; i < p_end; ++i) {
            float g = grads[0][i];
            for (int q = 1; q < kParts; ++q) g += grads[q][i];
            m1[i] = mu * m1[i] - rate * g;
            w[i] += m1[i];
          }
        }
        sync.arrive_and_wait();  // the parameters are updated
        if (stop_after > 0) break;
      }
    });
    if (stop_after > 0) {
      report.stopped = true;
      report.stopped_epoch = epoch;
      report.stopped_step = stop_after;
      break;
    }
    step_base += steps;

    EpochReport er;
    er.epoch = epoch;
    er.step = step_base;
    er.seconds = Since(t_epoch);
    er.lr = last_lr;
    double loss = 0;
    int64_t correct = 0;
    for (const auto& st : stats) {
      loss += st.loss_sum;
      correct += st.correct;
    }
    er.train_loss = loss / static_cast<double>(n);
    er.train_accuracy = static_cast<double>(correct) / static_cast<double>(n);
    report.train_seconds += er.seconds;
    if (validation.size() > 0) {
      er.validation_accuracy = Evaluate(m, validation, threads).accuracy;
    }
    report.epochs.push_back(er);
    if (hooks.on_epoch) hooks.on_epoch(er);
    if (hooks.on_checkpoint) {
      TrainState state;
      state.epochs_done = epoch;
      state.m1 = m1;
      if (o.optimizer == Optimizer::kAdam) state.m2 = m2;
      RETURN_IF_ERROR(hooks.on_checkpoint(m, state));
    }
  }
  report.seconds = Since(t_all);
  report.images_per_second = static_cast<double>(n) * static_cast<double>(report.epochs.size()) /
                             std::max(report.train_seconds, 1e-9);
  return report;
}

Evaluation Evaluate(const Mlp& m, const Dataset& d, int threads) {
  threads = std::clamp(threads, 1, kParts);
  Evaluation ev;
  const size_t n = d.size();
  ev.predicted.resize(n);
  ev.confidence.resize(n);
  std::vector<double> loss(threads, 0.0);
  const int classes = m.outputs();
  RunThreads(threads, [&](int t) {
    Workspace ws(m.sizes, kEvalRows);
    const size_t lo = n * t / threads, hi = n * (t + 1) / threads;
    for (size_t begin = lo; begin < hi; begin += kEvalRows) {
      const int rows = static_cast<int>(std::min<size_t>(kEvalRows, hi - begin));
      const float* logits = Forward(m, d.image(begin), rows, ws);
      for (int r = 0; r < rows; ++r) {
        const float* z = logits + static_cast<size_t>(r) * classes;
        const int best = static_cast<int>(std::max_element(z, z + classes) - z);
        double sum = 0;
        for (int j = 0; j < classes; ++j) sum += std::exp(static_cast<double>(z[j] - z[best]));
        ev.predicted[begin + r] = static_cast<uint8_t>(best);
        ev.confidence[begin + r] = static_cast<float>(1.0 / sum);
        loss[t] += std::log(sum) - (static_cast<double>(z[d.labels[begin + r]]) - z[best]);
      }
    }
  });
  int64_t correct = 0;
  for (size_t i = 0; i < n; ++i) {
    const int truth = d.labels[i], guess = ev.predicted[i];
    if (truth < kClasses && guess < kClasses) ++ev.confusion[truth][guess];
    correct += truth == guess;
  }
  ev.accuracy = n == 0 ? 0.0 : static_cast<double>(correct) / static_cast<double>(n);
  ev.loss = n == 0 ? 0.0 : std::accumulate(loss.begin(), loss.end(), 0.0) / static_cast<double>(n);
  return ev;
}

}  // namespace epoch::fmnist
