#include "examples/fashion-mnist/commands.h"

#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <optional>
#include <sstream>

#include "common/files.h"
#include "common/json.h"
#include "examples/fashion-mnist/checkpoint.h"
#include "examples/fashion-mnist/mlp.h"
#include "examples/fashion-mnist/rng.h"
#include "examples/fashion-mnist/shards.h"

namespace epoch::fmnist {

namespace {

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Rounds for metrics.json: 0.87650000000000006 helps no one.
double Round(double v, int digits) {
  double scale = std::pow(10.0, digits);
  return std::round(v * scale) / scale;
}

std::string Fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

Status WriteJson(const std::string& path, const Json& j) {
  // Replace rather than throw on bytes that are not UTF-8 (a path can hold any).
  return WriteFileDurably(path, j.dump(2, ' ', false, Json::error_handler_t::replace) + "\n");
}

bool IsDir(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

Json ClassNamesJson() {
  Json j = Json::array();
  for (auto name : kClassNames) j.push_back(std::string(name));
  return j;
}

Dataset Gather(const Dataset& d, const std::vector<uint32_t>& order, size_t begin, size_t end) {
  Dataset out;
  out.pixels.resize((end - begin) * kPixels);
  out.labels.resize(end - begin);
  for (size_t i = begin; i < end; ++i) {
    std::copy_n(d.image(order[i]), kPixels, out.pixels.data() + (i - begin) * kPixels);
    out.labels[i - begin] = d.labels[order[i]];
  }
  return out;
}

Result<Mlp> LoadFmnistModel(const std::string& path) {
  ASSIGN_OR_RETURN(std::string file, FindModelFile(path));
  ASSIGN_OR_RETURN(Mlp m, LoadModel(file));
  if (m.inputs() != kPixels || m.outputs() != kClasses) {
    return Corruption(file + ": the network maps " + std::to_string(m.inputs()) + " inputs to " +
                      std::to_string(m.outputs()) + " outputs, not 784 to 10");
  }
  return m;
}

// Appends live metrics lines to a file, each flushed as it is written so a reader (the
// agent) sees it at once. A failed write is said once on the log and ends the lines:
// live metrics are a view of the training, not a reason to stop it.
class MetricsLines {
 public:
  ~MetricsLines() {
    if (f_ != nullptr) std::fclose(f_);
  }
  // "" opens nothing and every Write is a no-op. kInternal when the file cannot be opened.
  Status Open(const std::string& path) {
    if (path.empty()) return Status::Ok();
    f_ = std::fopen(path.c_str(), "a");
    if (f_ == nullptr) {
      return Internal("cannot open metrics file " + path + ": " + std::strerror(errno));
    }
    path_ = path;
    return Status::Ok();
  }
  void Write(const Json& line, std::ostream& log) {
    if (f_ == nullptr) return;
    const std::string text = line.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n";
    if (std::fwrite(text.data(), 1, text.size(), f_) != text.size() || std::fflush(f_) != 0) {
      log << "metrics file " << path_ << ": write failed (" << std::strerror(errno)
          << "); no more metrics lines" << std::endl;
      std::fclose(f_);
      f_ = nullptr;
    }
  }

 private:
  std::FILE* f_ = nullptr;
  std::string path_;
};

// An epoch's report as JSON: rounded for metrics.json, exact for a checkpoint's history.
Json EpochJson(const EpochReport& e, bool rounded) {
  auto r = [&](double v, int digits) { return rounded ? Round(v, digits) : v; };
  Json j = {{"epoch", e.epoch},
            {"train_loss", r(e.train_loss, 5)},
            {"train_accuracy", r(e.train_accuracy, 5)},
            {"seconds", r(e.seconds, 3)},
            {"lr", r(e.lr, 10)}};
  if (!rounded) j["step"] = e.step;
  if (e.validation_accuracy >= 0) j["validation_accuracy"] = r(e.validation_accuracy, 5);
  return j;
}

// The inverse of EpochJson(e, false); nullopt for anything else.
std::optional<EpochReport> EpochFromJson(const Json& j) {
  if (!j.is_object()) return std::nullopt;
  for (const char* k : {"epoch", "step", "train_loss", "train_accuracy", "seconds", "lr"}) {
    if (!j.contains(k) || !j[k].is_number()) return std::nullopt;
  }
  EpochReport e;
  e.epoch = j["epoch"].get<int>();
  e.step = j["step"].get<int64_t>();
  e.train_loss = j["train_loss"].get<double>();
  e.train_accuracy = j["train_accuracy"].get<double>();
  e.seconds = j["seconds"].get<double>();
  e.lr = j["lr"].get<double>();
  if (j.contains("validation_accuracy")) {
    if (!j["validation_accuracy"].is_number()) return std::nullopt;
    e.validation_accuracy = j["validation_accuracy"].get<double>();
  }
  return e;
}

// What a checkpoint must have been written with for this training to resume from it:
// everything that decides the weights after an epoch (the thread count and the device
// do not; the data only through its labels' checksum, a cheap proxy).
Json TrainingSettings(const TrainCommandOptions& o, const std::vector<int>& sizes,
                      const Dataset& train) {
  const TrainOptions& t = o.train;
  const bool sgd = t.optimizer == Optimizer::kSgd;
  return {{"sizes", sizes},
          {"epochs", t.epochs},
          {"lr", t.lr},
          {"batch", t.batch},
          {"seed", t.seed},
          {"optimizer", sgd ? "sgd" : "adam"},
          {"momentum", sgd ? Json(t.momentum) : Json(nullptr)},
          {"schedule", t.cosine ? "cosine" : "constant"},
          {"train_images", train.size()},
          {"train_labels_crc32",
           static_cast<uint32_t>(crc32_z(0, train.labels.data(), train.labels.size()))}};
}

// "seed 1 there, 2 here; epochs 10 there, 12 here" for the settings that differ.
std::string SettingsDifference(const Json& there, const Json& here) {
  std::string out;
  for (const auto& [key, value] : here.items()) {
    const Json old = there.is_object() && there.contains(key) ? there[key] : Json(nullptr);
    if (old == value) continue;
    out += (out.empty() ? "" : "; ") + key + " " + (old.is_null() ? "missing" : old.dump()) +
           " there, " + value.dump() + " here";
  }
  return out.empty() ? "settings unreadable" : out;
}

// A declared checkpoint to resume from, with the epochs it finished; or nullopt
// (none, or an unreadable one: said on the log). kFailedPrecondition for a checkpoint
// of another training.
struct Resume {
  std::string file;
  Checkpoint checkpoint;
  std::vector<EpochReport> history;
};
Result<std::optional<Resume>> FindResume(const std::string& dir, const Json& settings,
                                         std::ostream& log) {
  auto declared = LoadDeclaredCheckpoint(dir);
  if (!declared.ok()) {
    log << "ignoring the checkpoint in " << dir << ": " << declared.status().message()
        << "; training from epoch 1" << std::endl;
    return std::optional<Resume>();
  }
  if (!declared->has_value()) return std::optional<Resume>();
  Resume r;
  r.file = (*declared)->file;
  r.checkpoint = std::move((*declared)->checkpoint);
  const Json& meta = r.checkpoint.meta;
  const Json there = meta.contains("training") ? meta["training"] : Json(nullptr);
  if (there != settings) {
    return FailedPrecondition("checkpoint " + dir + "/" + r.file + " is of another training (" +
                              SettingsDifference(there, settings) +
                              "): train with its settings, or use another checkpoint dir");
  }
  const Json epochs = meta.contains("epochs") ? meta["epochs"] : Json(nullptr);
  const int done = r.checkpoint.state.epochs_done;
  bool ok = epochs.is_array() && epochs.size() == static_cast<size_t>(done);
  for (size_t i = 0; ok && i < epochs.size(); ++i) {
    auto e = EpochFromJson(epochs[i]);
    ok = e.has_value() && e->epoch == static_cast<int>(i) + 1;
    if (ok) r.history.push_back(*e);
  }
  if (!ok) {
    log << "ignoring the checkpoint " << dir << "/" << r.file << ": its epoch history does not "
        << "match its epoch " << done << "; training from epoch 1" << std::endl;
    return std::optional<Resume>();
  }
  return std::optional<Resume>(std::move(r));
}

}  // namespace

Result<DeviceChoice> ResolveDevice(const std::string& device, const CudaProbe& probe) {
  if (device == "cpu") return DeviceChoice{"cpu", ""};
  if (device != "auto" && device != "cuda") {
    return InvalidArgument("--device must be auto, cpu or cuda, not '" + device + "'");
  }
  Result<std::string> gpu = probe();
  if (gpu.ok()) return DeviceChoice{"cuda", *gpu};
  // Not compiled in is said as it is; anything else means there is no usable GPU.
  const std::string why = gpu.status().code() == StatusCode::kFailedPrecondition
                              ? gpu.status().message()
                              : "no usable GPU: " + gpu.status().message();
  if (device == "cuda") return FailedPrecondition("--device cuda: " + why);
  return DeviceChoice{"cpu", why};
}

Status Prep(const PrepOptions& o, std::ostream& log) {
  if (!(o.validation >= 0.0 && o.validation <= 0.5)) {
    return InvalidArgument("--validation must be in [0, 0.5], got " + std::to_string(o.validation));
  }
  if (o.data.empty() || o.out.empty()) return InvalidArgument("--data and --out are required");
  const auto t0 = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(IdxSplitFiles train_files, FindIdxSplit(o.data, "train"));
  ASSIGN_OR_RETURN(IdxSplitFiles test_files, FindIdxSplit(o.data, "t10k"));
  ASSIGN_OR_RETURN(Dataset all, ReadIdxPair(train_files.images, train_files.labels));
  ASSIGN_OR_RETURN(Dataset test, ReadIdxPair(test_files.images, test_files.labels));
  if (all.size() == 0) return Corruption(train_files.images + ": holds no images");
  log << "read " << all.size() << " training images (" << train_files.images << ") and "
      << test.size() << " test images (" << test_files.images << ")\n";

  std::vector<uint32_t> order(all.size());
  std::iota(order.begin(), order.end(), 0u);
  Rng rng(o.seed);
  rng.Shuffle(order);
  const size_t n_val = static_cast<size_t>(std::llround(o.validation * all.size()));
  Dataset validation = Gather(all, order, 0, n_val);
  Dataset train = Gather(all, order, n_val, all.size());

  RETURN_IF_ERROR(MakeDirs(o.out));
  Json splits = Json::object();
  size_t shards = 0;
  for (auto [name, d] : {std::pair<const char*, const Dataset*>{"train", &train},
                         {"validation", &validation},
                         {"test", &test}}) {
    ASSIGN_OR_RETURN(auto entries, WriteSplit(o.out, name, *d));
    shards += entries.size();
    splits[name] = ShardEntriesJson(entries);
  }
  Json manifest = {{"format", "fmnist-shards"},
                   {"version", 1},
                   {"rows", kRows},
                   {"cols", kCols},
                   {"classes", ClassNamesJson()},
                   {"seed", o.seed},
                   {"validation_fraction", o.validation},
                   {"source", o.data},
                   {"splits", splits}};
  RETURN_IF_ERROR(WriteJson(o.out + "/manifest.json", manifest));

  std::vector<int64_t> class_counts(kClasses, 0);
  for (uint8_t l : train.labels) ++class_counts[l];
  Json metrics = {{"train_images", train.size()},
                  {"validation_images", validation.size()},
                  {"test_images", test.size()},
                  {"shards", shards},
                  {"seed", o.seed},
                  {"validation_fraction", o.validation},
                  {"train_class_counts", class_counts},
                  {"seconds", Round(Since(t0), 3)}};
  RETURN_IF_ERROR(WriteJson(o.out + "/metrics.json", metrics));
  log << "wrote " << train.size() << " train, " << validation.size() << " validation and "
      << test.size() << " test images in " << shards << " shards to " << o.out << " ("
      << Fixed(Since(t0), 1) << " s)\n";
  return Status::Ok();
}

Result<TrainEnd> TrainCommand(const TrainCommandOptions& o, std::ostream& log) {
  if (o.data.empty() || o.out.empty()) return InvalidArgument("--data and --out are required");
  ASSIGN_OR_RETURN(DeviceChoice choice, ResolveDevice(o.device));
  const std::string& device = choice.device;
  if (o.device == "auto") {
    log << "device auto -> " << device << ": " << choice.why << std::endl;
  } else if (device == "cuda") {
    log << "device cuda: " << choice.why << std::endl;
  }
  ASSIGN_OR_RETURN(std::string dir, FindPrepDir(o.data));
  ASSIGN_OR_RETURN(Dataset train, ReadSplit(dir, "train"));
  ASSIGN_OR_RETURN(Dataset validation, ReadSplit(dir, "validation"));
  if (o.limit > 0 && o.limit < train.size()) {
    train.pixels.resize(o.limit * kPixels);
    train.labels.resize(o.limit);
  }
  std::vector<int> sizes = {kPixels};
  sizes.insert(sizes.end(), o.hidden.begin(), o.hidden.end());
  sizes.push_back(kClasses);
  ASSIGN_OR_RETURN(Mlp model, MakeMlp(sizes, o.train.seed));
  const TrainOptions& t = o.train;
  RETURN_IF_ERROR(CheckTrainInput(model, train, t));
  RETURN_IF_ERROR(MakeDirs(o.out));

  // Resume from the checkpoint dir's declared checkpoint, if it has one.
  const Json settings =
      o.checkpoint_dir.empty() ? Json(nullptr) : TrainingSettings(o, sizes, train);
  std::optional<Resume> resume;
  if (!o.checkpoint_dir.empty()) {
    ASSIGN_OR_RETURN(resume, FindResume(o.checkpoint_dir, settings, log));
  }
  std::vector<EpochReport> history;  // every epoch of the training, resumed ones included
  std::string latest_checkpoint;     // the file in checkpoint_dir to resume from, if any
  if (resume) {
    latest_checkpoint = resume->file;
    model = resume->checkpoint.model;
    history = resume->history;
    const int done = resume->checkpoint.state.epochs_done;
    if (done < t.epochs) {
      log << "resumed from " << resume->file << " at epoch " << done + 1 << std::endl;
    } else {
      log << "resumed from " << resume->file << ": all " << t.epochs << " epochs are done"
          << std::endl;
    }
  }
  MetricsLines metrics_lines;
  RETURN_IF_ERROR(metrics_lines.Open(o.metrics));

  std::string shape;
  for (int s : sizes) shape += (shape.empty() ? "" : "-") + std::to_string(s);
  log << "training MLP " << shape << " (" << model.params.size() << " parameters) on "
      << train.size() << " images, validating on " << validation.size() << "; device " << device
      << (device == "cpu" ? ", " + std::to_string(t.threads) + " threads" : "") << ", "
      << (t.optimizer == Optimizer::kAdam ? "adam" : "sgd") << " lr " << t.lr
      << (t.cosine ? " (cosine decay)" : "") << ", batch " << t.batch << ", " << t.epochs
      << " epochs, seed " << t.seed << std::endl;

  TrainHooks hooks;
  hooks.on_epoch = [&](const EpochReport& e) {
    log << "epoch " << e.epoch << "/" << t.epochs << "  loss " << Fixed(e.train_loss, 4)
        << "  train_acc " << Fixed(e.train_accuracy, 4);
    if (e.validation_accuracy >= 0) log << "  val_acc " << Fixed(e.validation_accuracy, 4);
    log << "  lr " << Fixed(e.lr, 6) << "  " << Fixed(e.seconds, 1) << " s  "
        << static_cast<int64_t>(train.size() / std::max(e.seconds, 1e-9)) << " img/s" << std::endl;
    history.push_back(e);
    Json line = {{"epoch", e.epoch},
                 {"step", e.step},
                 {"loss", Round(e.train_loss, 6)},
                 {"train_accuracy", Round(e.train_accuracy, 6)},
                 {"lr", Round(e.lr, 10)},
                 {"epoch_seconds", Round(e.seconds, 3)}};
    if (e.validation_accuracy >= 0) line["validation_accuracy"] = Round(e.validation_accuracy, 6);
    metrics_lines.Write(line, log);
  };
  hooks.progress_every = o.metrics.empty() ? 0 : o.metrics_every;
  hooks.on_progress = [&](const StepReport& sr) {
    metrics_lines.Write({{"epoch", sr.epoch},
                         {"step", sr.step},
                         {"loss", Round(sr.loss, 6)},
                         {"lr", Round(sr.lr, 10)}},
                        log);
  };
  if (!o.checkpoint_dir.empty()) {
    hooks.on_checkpoint = [&](const Mlp& m, const TrainState& state) -> Status {
      Checkpoint c;
      c.model = m;
      c.state = state;
      Json epochs = Json::array();
      for (const auto& e : history) epochs.push_back(EpochJson(e, false));
      c.meta = {{"training", settings}, {"epochs", epochs}};
      ASSIGN_OR_RETURN(std::string file, SaveCheckpoint(o.checkpoint_dir, c));
      latest_checkpoint = file;
      log << "checkpoint " << o.checkpoint_dir << "/" << file << std::endl;
      return Status::Ok();
    };
  }
  if (resume) hooks.resume = &resume->checkpoint.state;
  hooks.stop = o.stop;
  ASSIGN_OR_RETURN(TrainReport r, device == "cuda" ? TrainOnCuda(model, train, validation, t, hooks)
                                                   : Train(model, train, validation, t, hooks));
  if (r.stopped) {
    // Checkpoints hold whole epochs (the minibatch order is replayed per epoch), so the
    // steps done in the unfinished epoch are lost; say so rather than write a partial one.
    const int64_t into_epoch =
        r.stopped_step - int64_t{PlanBatches(train.size(), t).steps} * (r.stopped_epoch - 1);
    log << "SIGTERM received at epoch " << r.stopped_epoch << " step " << r.stopped_step
        << ": stopped";
    if (o.checkpoint_dir.empty()) {
      log << "; no checkpoint dir, nothing to resume from";
    } else if (latest_checkpoint.empty()) {
      log << "; no checkpoint written yet (the first is written after epoch 1), a resumed "
          << "training starts at epoch 1";
    } else {
      log << "; the latest checkpoint is " << o.checkpoint_dir << "/" << latest_checkpoint
          << " (written after epoch " << r.stopped_epoch - 1 << "; checkpoints are written at "
          << "epoch ends only), a resumed training starts at epoch " << r.stopped_epoch;
    }
    if (into_epoch > 0) {
      log << " (the " << into_epoch << " steps done in epoch " << r.stopped_epoch << " are lost)";
    }
    log << std::endl;
    return TrainEnd::kStopped;
  }
  RETURN_IF_ERROR(SaveModel(model, o.out + "/model.bin"));

  Json epochs = Json::array();
  for (const auto& e : history) epochs.push_back(EpochJson(e, true));
  const EpochReport& last = history.back();
  Json metrics = {{"train_loss", Round(last.train_loss, 5)},
                  {"train_accuracy", Round(last.train_accuracy, 5)},
                  {"device", device},
                  {"device_detail", choice.why.empty() ? "--device cpu" : choice.why},
                  {"images_per_second", Round(r.images_per_second, 1)},
                  {"seconds", Round(r.seconds, 3)},
                  {"train_seconds", Round(r.train_seconds, 3)},
                  {"train_images", train.size()},
                  {"validation_images", validation.size()},
                  {"parameters", model.params.size()},
                  {"epochs", epochs},
                  {"hyperparameters",
                   {{"epochs", t.epochs},
                    {"lr", t.lr},
                    {"batch", t.batch},
                    {"hidden", o.hidden},
                    {"seed", t.seed},
                    {"optimizer", t.optimizer == Optimizer::kAdam ? "adam" : "sgd"},
                    {"momentum", t.optimizer == Optimizer::kSgd ? Json(t.momentum) : Json(nullptr)},
                    {"schedule", t.cosine ? "cosine" : "constant"},
                    {"limit", o.limit},
                    {"threads", t.threads},
                    {"device", device}}}};
  if (last.validation_accuracy >= 0) {
    metrics["accuracy"] = Round(last.validation_accuracy, 5);
    metrics["validation_accuracy"] = Round(last.validation_accuracy, 5);
  }
  if (resume) {
    metrics["resumed_from"] = resume->file;
    metrics["resumed_at_epoch"] = resume->checkpoint.state.epochs_done + 1;
  }
  RETURN_IF_ERROR(WriteJson(o.out + "/metrics.json", metrics));
  log << "trained in " << Fixed(r.seconds, 1) << " s (" << Fixed(r.train_seconds, 1)
      << " s of training steps, " << static_cast<int64_t>(r.images_per_second) << " images/s on "
      << device << "); validation accuracy "
      << (last.validation_accuracy >= 0 ? Fixed(last.validation_accuracy, 4) : "n/a") << "; wrote "
      << o.out << "/model.bin" << std::endl;
  return TrainEnd::kTrained;
}

Result<Dataset> LoadTestSet(const std::string& path) {
  if (IsDir(path) && IsIdxDir(path)) return ReadIdxSplit(path, "t10k");
  auto dir = FindPrepDir(path);
  if (!dir.ok()) {
    return NotFound(path + ": neither a data set directory (t10k-images-idx3-ubyte[.gz]) " +
                    "nor a directory written by fmnist prep (manifest.json)");
  }
  return ReadSplit(*dir, "test");
}

Status Validate(const ValidateOptions& o, std::ostream& log) {
  if (o.data.empty() || o.model.empty() || o.out.empty()) {
    return InvalidArgument("--data, --model and --out are required");
  }
  ASSIGN_OR_RETURN(Mlp model, LoadFmnistModel(o.model));
  ASSIGN_OR_RETURN(Dataset test, LoadTestSet(o.data));
  if (test.size() == 0) return Corruption(o.data + ": the test set is empty");
  const auto t0 = std::chrono::steady_clock::now();
  Evaluation ev = Evaluate(model, test, o.threads);
  const double seconds = Since(t0);

  Json per_class = Json::object();
  Json confusion = Json::array();
  log << "accuracy " << Fixed(ev.accuracy, 4) << " on " << test.size() << " test images ("
      << Fixed(seconds, 2) << " s)\n\nper class:\n";
  for (int c = 0; c < kClasses; ++c) {
    int64_t total = 0;
    for (int p = 0; p < kClasses; ++p) total += ev.confusion[c][p];
    double acc = total == 0 ? 0.0 : static_cast<double>(ev.confusion[c][c]) / total;
    per_class[std::string(kClassNames[c])] = Round(acc, 4);
    confusion.push_back(std::vector<int64_t>(ev.confusion[c], ev.confusion[c] + kClasses));
    char line[96];
    std::snprintf(line, sizeof line, "  %d %-12s %.4f  (%lld images)\n", c,
                  std::string(kClassNames[c]).c_str(), acc, static_cast<long long>(total));
    log << line;
  }
  log << "\nconfusion matrix (rows: true label, columns: predicted):\n     ";
  for (int p = 0; p < kClasses; ++p) log << (p == 0 ? "" : " ") << "    " << p;
  log << "\n";
  for (int c = 0; c < kClasses; ++c) {
    char cell[16];
    std::snprintf(cell, sizeof cell, "  %2d:", c);
    log << cell;
    for (int p = 0; p < kClasses; ++p) {
      std::snprintf(cell, sizeof cell, " %5lld", static_cast<long long>(ev.confusion[c][p]));
      log << cell;
    }
    log << "\n";
  }

  RETURN_IF_ERROR(MakeDirs(o.out));
  Json metrics = {{"accuracy", Round(ev.accuracy, 5)},
                  {"loss", Round(ev.loss, 5)},
                  {"samples", test.size()},
                  {"per_class_accuracy", per_class},
                  {"classes", ClassNamesJson()},
                  {"confusion_matrix", confusion},
                  {"confusion_matrix_layout", "rows: true label, columns: predicted label"},
                  {"seconds", Round(seconds, 3)}};
  return WriteJson(o.out + "/metrics.json", metrics);
}

Status Infer(const InferOptions& o, std::ostream& log) {
  if (o.data.empty() || o.model.empty() || o.out.empty()) {
    return InvalidArgument("--model, --data and --out are required");
  }
  ASSIGN_OR_RETURN(Mlp model, LoadFmnistModel(o.model));
  ASSIGN_OR_RETURN(Dataset test, LoadTestSet(o.data));
  if (o.offset >= test.size()) {
    return InvalidArgument("--offset " + std::to_string(o.offset) + " is past the " +
                           std::to_string(test.size()) + " test images");
  }
  const size_t end = std::min(test.size(), o.offset + o.count);
  Dataset slice;
  slice.pixels.assign(test.image(o.offset), test.image(end));
  slice.labels.assign(test.labels.begin() + static_cast<ptrdiff_t>(o.offset),
                      test.labels.begin() + static_cast<ptrdiff_t>(end));
  Evaluation ev = Evaluate(model, slice, 1);

  std::ostringstream csv;
  csv << "index,label,confidence\n";
  for (size_t i = 0; i < slice.size(); ++i) {
    csv << (o.offset + i) << "," << kClassNames[ev.predicted[i]] << ","
        << Fixed(ev.confidence[i], 4) << "\n";
  }
  RETURN_IF_ERROR(MakeDirs(o.out));
  RETURN_IF_ERROR(WriteFileDurably(o.out + "/predictions.csv", csv.str()));
  log << csv.str();
  const int64_t correct = static_cast<int64_t>(std::llround(ev.accuracy * slice.size()));
  Json metrics = {
      {"predictions", slice.size()},
      {"offset", o.offset},
      {"correct", correct},
      {"mean_confidence", Round(std::accumulate(ev.confidence.begin(), ev.confidence.end(), 0.0) /
                                    static_cast<double>(slice.size()),
                                4)}};
  return WriteJson(o.out + "/metrics.json", metrics);
}

}  // namespace epoch::fmnist
