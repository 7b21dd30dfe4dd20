// Tests for fmnist: IDX decoding and its error messages on fixtures written here,
// shards and model.bin round trips and corruption, the matrix product against a plain
// loop, a finite-difference gradient check of the MLP, reproducibility across thread
// counts, --device resolution (with injected probes, and the real one), the CLI's exit
// codes and metrics, checkpoints (their codec, resuming a training after epoch 2 to
// the same weights as an uninterrupted one, in the library and through the CLI with
// its live metrics lines), stopping at a minibatch boundary (in the library, and
// `fmnist train` child processes stopped by SIGTERM and resumed), and a short training
// run on the real data set (skipped only when /usr/share/datasets/fashion-mnist is
// absent).
//
// FmnistCuda.* compare the CUDA path with the CPU path (gradients, training runs, a
// CUDA-trained model validated on the CPU). They need a usable GPU and skip without
// one, saying why; FMNIST_TEST_REQUIRE_GPU=1 makes "no GPU" a failure instead (as
// gpu/check_on_device.sh runs them).

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <numbers>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "examples/fashion-mnist/checkpoint.h"
#include "examples/fashion-mnist/commands.h"
#include "examples/fashion-mnist/cuda_train.h"
#include "examples/fashion-mnist/gemm.h"
#include "examples/fashion-mnist/idx.h"
#include "examples/fashion-mnist/mlp.h"
#include "examples/fashion-mnist/rng.h"
#include "examples/fashion-mnist/shards.h"
#include "examples/fashion-mnist/train.h"

namespace epoch::fmnist {
namespace {

namespace fs = std::filesystem;

constexpr const char* kRealData = "/usr/share/datasets/fashion-mnist";

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "fmnist_test.XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void Put32BE(std::string& s, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) s.push_back(static_cast<char>((v >> shift) & 0xff));
}

std::string ImagesBytes(uint32_t magic, uint32_t count, uint32_t rows, uint32_t cols,
                        size_t payload_bytes) {
  std::string s;
  Put32BE(s, magic);
  Put32BE(s, count);
  Put32BE(s, rows);
  Put32BE(s, cols);
  for (size_t i = 0; i < payload_bytes; ++i) s.push_back(static_cast<char>(i % 256));
  return s;
}

std::string LabelsBytes(uint32_t magic, const std::vector<uint8_t>& labels, uint32_t count) {
  std::string s;
  Put32BE(s, magic);
  Put32BE(s, count);
  s.append(labels.begin(), labels.end());
  return s;
}

void WriteRaw(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

void WriteGz(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
            static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// A valid 3-image data set directory (train and t10k the same), gzip-compressed.
void WriteValidIdxDir(const TempDir& dir, uint32_t count = 3) {
  std::vector<uint8_t> labels;
  for (uint32_t i = 0; i < count; ++i) labels.push_back(static_cast<uint8_t>(i % 10));
  for (const char* prefix : {"train", "t10k"}) {
    WriteGz(dir / (std::string(prefix) + "-images-idx3-ubyte.gz"),
            ImagesBytes(2051, count, 28, 28, size_t{count} * 784));
    WriteGz(dir / (std::string(prefix) + "-labels-idx1-ubyte.gz"),
            LabelsBytes(2049, labels, count));
  }
}

// ---- IDX ----

TEST(FmnistIdx, ReadsValidFilesCompressedOrNot) {
  TempDir d;
  std::string img = ImagesBytes(2051, 3, 28, 28, 3 * 784);
  std::string lab = LabelsBytes(2049, {9, 0, 4}, 3);
  WriteGz(d / "i.gz", img);
  WriteGz(d / "l.gz", lab);
  WriteRaw(d / "i.raw", img);
  WriteRaw(d / "l.raw", lab);
  for (auto [i, l] : {std::pair{"i.gz", "l.gz"}, {"i.raw", "l.raw"}}) {
    auto ds = ReadIdxPair(d / i, d / l);
    ASSERT_TRUE(ds.ok()) << ds.status().ToString();
    ASSERT_EQ(ds->size(), 3u);
    EXPECT_EQ(ds->labels, (std::vector<uint8_t>{9, 0, 4}));
    ASSERT_EQ(ds->pixels.size(), 3u * 784);
    EXPECT_FLOAT_EQ(ds->pixels[0], 0.0f);
    EXPECT_FLOAT_EQ(ds->pixels[51], 51.0f / 255.0f);
    EXPECT_FLOAT_EQ(ds->pixels[255], 1.0f);
    EXPECT_FLOAT_EQ(ds->pixels[784], (784 % 256) / 255.0f);  // second image
  }
}

TEST(FmnistIdx, WrongMagicNamesFileAndBothNumbers) {
  TempDir d;
  WriteGz(d / "i.gz", ImagesBytes(2049, 1, 28, 28, 784));
  auto r = ReadIdxImages(d / "i.gz");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_NE(r.status().message().find(d / "i.gz"), std::string::npos);
  EXPECT_NE(r.status().message().find("bad magic number 0x00000801 (2049)"), std::string::npos)
      << r.status().message();
  EXPECT_NE(r.status().message().find("2051"), std::string::npos);
  EXPECT_NE(r.status().message().find("that is a labels file"), std::string::npos);

  WriteRaw(d / "l", LabelsBytes(0x12345678, {1}, 1));
  auto l = ReadIdxLabels(d / "l");
  ASSERT_FALSE(l.ok());
  EXPECT_NE(l.status().message().find("bad magic number 0x12345678"), std::string::npos)
      << l.status().message();
}

TEST(FmnistIdx, TruncatedPayloadHeaderOrGzipStream) {
  TempDir d;
  WriteGz(d / "short.gz", ImagesBytes(2051, 3, 28, 28, 2 * 784 + 100));
  auto r = ReadIdxImages(d / "short.gz");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_EQ(r.status().message(),
            d / "short.gz" +
                ": truncated: the header promises 3 images of 28x28 (2352 bytes of data) but "
                "only 1668 bytes follow it");

  WriteRaw(d / "hdr", std::string("\0\0\x08\x03\0\0", 6));
  r = ReadIdxImages(d / "hdr");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(
      r.status().message().find("truncated: an IDX images header is 16 bytes, the file has 6"),
      std::string::npos)
      << r.status().message();

  WriteRaw(d / "long", ImagesBytes(2051, 1, 28, 28, 784 + 5));
  r = ReadIdxImages(d / "long");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("5 unexpected bytes after"), std::string::npos)
      << r.status().message();

  // A gzip file cut in half: zlib reports the stream ends early.
  WriteGz(d / "cut.gz", ImagesBytes(2051, 50, 28, 28, 50 * 784));
  std::string gz = ReadAll(d / "cut.gz");
  WriteRaw(d / "cut.gz", gz.substr(0, gz.size() / 2));
  r = ReadIdxImages(d / "cut.gz");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_NE(r.status().message().find(d / "cut.gz"), std::string::npos);
  // zlib reports it either on the read or on the stream check ("truncated" or
  // "corrupt gzip stream"); both name the cause.
  EXPECT_NE(r.status().message().find("unexpected end of file"), std::string::npos)
      << r.status().message();

  // A gzip file with a damaged byte in its compressed data.
  gz[gz.size() / 2] ^= 0x55;
  gz[gz.size() / 2 + 1] ^= 0x55;
  WriteRaw(d / "bad.gz", gz);
  r = ReadIdxImages(d / "bad.gz");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_NE(r.status().message().find("gzip stream"), std::string::npos) << r.status().message();

  WriteRaw(d / "l", LabelsBytes(2049, {1, 2}, 5));
  auto l = ReadIdxLabels(d / "l");
  ASSERT_FALSE(l.ok());
  EXPECT_NE(l.status().message().find("truncated: the header promises 5 labels"), std::string::npos)
      << l.status().message();
}

TEST(FmnistIdx, CountMismatchNamesBothFiles) {
  TempDir d;
  WriteGz(d / "i.gz", ImagesBytes(2051, 3, 28, 28, 3 * 784));
  WriteGz(d / "l.gz", LabelsBytes(2049, {1, 2}, 2));
  auto r = ReadIdxPair(d / "i.gz", d / "l.gz");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_EQ(r.status().message(),
            "count mismatch: " + d / "i.gz" + " has 3 images but " + d / "l.gz" + " has 2 labels");
}

TEST(FmnistIdx, LabelOutOfRange) {
  TempDir d;
  WriteGz(d / "l.gz", LabelsBytes(2049, {3, 10, 2}, 3));
  auto r = ReadIdxLabels(d / "l.gz");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_EQ(r.status().message(), d / "l.gz" + ": label 10 at index 1 is out of range 0..9");
}

TEST(FmnistIdx, WrongImageSizeAndMissingFiles) {
  TempDir d;
  WriteRaw(d / "i", ImagesBytes(2051, 1, 32, 32, 1024));
  auto r = ReadIdxImages(d / "i");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("images are 32x32, expected 28x28"), std::string::npos);

  auto m = ReadIdxImages(d / "nope.gz");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kNotFound);

  auto split = FindIdxSplit(d.path(), "t10k");
  ASSERT_FALSE(split.ok());
  EXPECT_NE(split.status().message().find("t10k-images-idx3-ubyte.gz: no such file"),
            std::string::npos)
      << split.status().message();
}

// ---- shards ----

Dataset RandomDataset(size_t n, uint64_t seed) {
  Rng rng(seed);
  Dataset d;
  for (size_t i = 0; i < n * kPixels; ++i) {
    d.pixels.push_back(static_cast<float>(rng.Below(256)) / 255.0f);
  }
  for (size_t i = 0; i < n; ++i) d.labels.push_back(static_cast<uint8_t>(rng.Below(10)));
  return d;
}

TEST(FmnistShards, RoundTripThroughManifest) {
  TempDir d;
  Dataset data = RandomDataset(25, 3);
  auto entries = WriteSplit(d.path(), "train", data, 10);
  ASSERT_TRUE(entries.ok()) << entries.status().ToString();
  ASSERT_EQ(entries->size(), 3u);
  EXPECT_EQ((*entries)[0].file, "train-00000.shard");
  EXPECT_EQ((*entries)[2].count, 5u);
  Json manifest = {{"format", "fmnist-shards"},
                   {"version", 1},
                   {"splits", {{"train", ShardEntriesJson(*entries)}, {"test", Json::array()}}}};
  WriteRaw(d / "manifest.json", manifest.dump());

  // The directory, or any file in it, names the prep dir.
  for (const std::string& p : {d.path(), d / "manifest.json", d / "train-00001.shard"}) {
    auto dir = FindPrepDir(p);
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    EXPECT_EQ(*dir, d.path());
  }
  auto back = ReadSplit(d.path(), "train");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->labels, data.labels);
  EXPECT_EQ(back->pixels, data.pixels);
  auto test = ReadSplit(d.path(), "test");
  ASSERT_TRUE(test.ok());
  EXPECT_EQ(test->size(), 0u);
  EXPECT_EQ(ReadSplit(d.path(), "validation").status().code(), StatusCode::kNotFound);
  uint32_t crc = 0;
  ASSERT_TRUE(ReadShard(d / "train-00002.shard", &crc).ok());
  EXPECT_EQ(crc, (*entries)[2].crc32);
}

TEST(FmnistShards, CorruptionIsDetected) {
  TempDir d;
  Dataset data = RandomDataset(4, 5);
  auto crc = WriteShard(d / "s.shard", data, 0, 4);
  ASSERT_TRUE(crc.ok());
  std::string bytes = ReadAll(d / "s.shard");
  ASSERT_EQ(bytes.size(), kShardHeaderBytes + 4 * 784 * 4 + 4 + 4);

  std::string flipped = bytes;
  flipped[kShardHeaderBytes + 100] ^= 0x01;
  WriteRaw(d / "flip.shard", flipped);
  auto r = ReadShard(d / "flip.shard");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_NE(r.status().message().find("checksum mismatch"), std::string::npos);

  WriteRaw(d / "short.shard", bytes.substr(0, bytes.size() - 10));
  r = ReadShard(d / "short.shard");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("(truncated)"), std::string::npos) << r.status().message();

  WriteRaw(d / "magic.shard", "XXXX" + bytes.substr(4));
  r = ReadShard(d / "magic.shard");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("bad magic"), std::string::npos);

  // A shard whose entry names another CRC (a shard from another prep run).
  Json manifest = {
      {"format", "fmnist-shards"},
      {"version", 1},
      {"splits", {{"train", {{{"file", "s.shard"}, {"count", 4}, {"crc32", "00000000"}}}}}}};
  WriteRaw(d / "manifest.json", manifest.dump());
  auto split = ReadSplit(d.path(), "train");
  ASSERT_FALSE(split.ok());
  EXPECT_NE(split.status().message().find("the manifest says 00000000"), std::string::npos)
      << split.status().message();
  // One whose entry names another count.
  manifest["splits"]["train"][0]["count"] = 5;
  manifest["splits"]["train"][0]["crc32"] = Crc32Hex(*crc);
  WriteRaw(d / "manifest.json", manifest.dump());
  split = ReadSplit(d.path(), "train");
  ASSERT_FALSE(split.ok());
  EXPECT_NE(split.status().message().find("s.shard: holds 4 images, the manifest says 5"),
            std::string::npos)
      << split.status().message();

  // Well formed, checksum and all, but a label out of range or a pixel outside [0, 1].
  Dataset bad = data;
  bad.labels[2] = 12;
  ASSERT_TRUE(WriteShard(d / "label.shard", bad, 0, 4).ok());
  r = ReadShard(d / "label.shard");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("label 12 of image 2 is out of range 0..9"),
            std::string::npos)
      << r.status().message();
  bad = data;
  bad.pixels[784 + 5] = 1.5f;
  ASSERT_TRUE(WriteShard(d / "pixel.shard", bad, 0, 4).ok());
  r = ReadShard(d / "pixel.shard");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("pixel 5 of image 1 is outside [0, 1]"), std::string::npos)
      << r.status().message();
}

// ---- matrix product ----

TEST(FmnistGemm, MatchesPlainLoops) {
  Rng rng(7);
  for (auto [m, n, k] : {std::tuple{7, 37, 300}, {4, 16, 1}, {33, 10, 784}, {1, 1, 1}}) {
    std::vector<float> a(static_cast<size_t>(m) * k), b(static_cast<size_t>(k) * n),
        c(static_cast<size_t>(m) * n);
    for (auto& v : a) v = static_cast<float>(rng.Normal());
    for (auto& v : b) v = static_cast<float>(rng.Normal());
    for (auto& v : c) v = static_cast<float>(rng.Normal());
    std::vector<float> c0 = c;
    for (auto [acc, gemm] :
         {std::pair{false, &Gemm}, {true, &Gemm}, {false, &GemmBaseline}, {true, &GemmBaseline}}) {
      std::vector<float> got = c0;
      gemm(m, n, k, a.data(), k, b.data(), n, got.data(), n, acc);
      for (int i = 0; i < m; ++i) {
        for (int j = 0; j < n; ++j) {
          double want = acc ? c0[i * n + j] : 0.0;
          for (int p = 0; p < k; ++p) want += double{a[i * k + p]} * b[p * n + j];
          ASSERT_NEAR(got[i * n + j], want, 1e-4 * (1 + std::sqrt(k)))
              << m << "x" << n << "x" << k << " at " << i << "," << j << " acc " << acc;
        }
      }
    }
  }
  std::vector<float> in = {1, 2, 3, 4, 5, 6}, out(6);
  Transpose(2, 3, in.data(), 3, out.data(), 2);
  EXPECT_EQ(out, (std::vector<float>{1, 4, 2, 5, 3, 6}));
}

// ---- the MLP ----

TEST(FmnistMlp, GradientMatchesFiniteDifferences) {
  auto made = MakeMlp({6, 5, 4, 3}, 11);
  ASSERT_TRUE(made.ok());
  Mlp m = *made;
  // Non-zero biases so ReLUs sit away from their kink at 0 for these inputs.
  Rng rng(12);
  for (int l = 0; l < m.layers(); ++l) {
    for (int j = 0; j < m.sizes[l + 1]; ++j) {
      m.params[m.BiasOffset(l) + j] = static_cast<float>(0.1 * rng.Normal());
    }
  }
  const int rows = 5;
  std::vector<float> x(rows * 6);
  for (auto& v : x) v = static_cast<float>(rng.Open01());
  std::vector<uint8_t> y = {0, 2, 1, 1, 0};
  Workspace ws(m.sizes, rows);
  std::vector<float> grad(m.params.size());
  const float scale = 1.0f / rows;
  LossAndGradient(m, x.data(), y.data(), rows, scale, ws, grad.data());

  std::vector<float> scratch(m.params.size());
  auto loss = [&](const Mlp& net) {
    return LossAndGradient(net, x.data(), y.data(), rows, scale, ws, scratch.data()).loss_sum /
           rows;
  };
  const float eps = 1e-3f;
  int checked = 0, nonzero = 0;
  for (size_t i = 0; i < m.params.size(); ++i) {
    Mlp plus = m, minus = m;
    plus.params[i] += eps;
    minus.params[i] -= eps;
    const double numeric = (loss(plus) - loss(minus)) / (2.0 * eps);
    EXPECT_NEAR(grad[i], numeric, 2e-3 + 2e-2 * std::abs(numeric)) << "parameter " << i;
    ++checked;
    nonzero += std::abs(numeric) > 1e-3;
  }
  EXPECT_EQ(checked, static_cast<int>(Mlp::ParamCount({6, 5, 4, 3})));
  EXPECT_GT(nonzero, checked / 2);  // the check compared real gradients, not zeros
}

TEST(FmnistMlp, ModelFileRoundTripAndCorruption) {
  TempDir d;
  auto m = MakeMlp({784, 8, 10}, 3);
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(SaveModel(*m, d / "model.bin").ok());
  auto file = FindModelFile(d.path());
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(*file, d / "model.bin");
  auto back = LoadModel(*file);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->sizes, m->sizes);
  EXPECT_EQ(back->params, m->params);

  std::string bytes = ReadAll(d / "model.bin");
  bytes[40] ^= 0x10;
  WriteRaw(d / "bad.bin", bytes);
  auto bad = LoadModel(d / "bad.bin");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kCorruption);
  EXPECT_NE(bad.status().message().find("checksum mismatch"), std::string::npos);
  WriteRaw(d / "short.bin", bytes.substr(0, 1000));
  EXPECT_NE(LoadModel(d / "short.bin").status().message().find("(truncated)"), std::string::npos);
}

// A separable toy problem: the label is which of 10 pixel bands is brightest.
Dataset BandsDataset(size_t n, uint64_t seed) {
  Rng rng(seed);
  Dataset d;
  d.pixels.resize(n * kPixels);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t label = static_cast<uint8_t>(rng.Below(10));
    d.labels.push_back(label);
    for (int p = 0; p < kPixels; ++p) {
      float v = static_cast<float>(rng.Open01()) * 0.5f;
      if (p / 78 == label) v += 0.5f;
      d.pixels[i * kPixels + p] = std::min(v, 1.0f);
    }
  }
  return d;
}

TEST(FmnistTrain, LearnsAndIsReproducibleAcrossThreadCounts) {
  Dataset train = BandsDataset(600, 1), val = BandsDataset(200, 2);
  std::vector<std::vector<float>> params;
  for (int threads : {1, 2, 2}) {
    auto m = MakeMlp({784, 32, 10}, 5);
    ASSERT_TRUE(m.ok());
    TrainOptions o;
    o.epochs = 4;
    o.batch = 33;  // odd: parts of unequal size, and a short last batch
    o.threads = threads;
    o.seed = 9;
    int epochs_seen = 0;
    auto r = Train(*m, train, val, o, [&](const EpochReport&) { ++epochs_seen; });
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(epochs_seen, 4);
    EXPECT_GT(r->epochs.back().validation_accuracy, 0.9);
    EXPECT_GT(r->images_per_second, 0);
    params.push_back(m->params);
  }
  EXPECT_EQ(params[0], params[1]);
  EXPECT_EQ(params[1], params[2]);

  auto m = MakeMlp({784, 32, 10}, 5);
  TrainOptions sgd;
  sgd.optimizer = Optimizer::kSgd;
  sgd.lr = 0.05;
  sgd.epochs = 3;
  auto r = Train(*m, train, val, sgd, nullptr);
  ASSERT_TRUE(r.ok());
  EXPECT_GT(r->epochs.back().validation_accuracy, 0.9);
}

TEST(FmnistTrain, MinibatchOrderAndScheduleAreShared) {
  MinibatchOrder a(1000, 7), b(1000, 7), c(1000, 8);
  const std::vector<uint32_t> a1 = a.NextEpoch(), a2 = a.NextEpoch();
  EXPECT_EQ(b.NextEpoch(), a1);  // same seed, same minibatches
  EXPECT_EQ(b.NextEpoch(), a2);
  EXPECT_NE(c.NextEpoch(), a1);
  EXPECT_NE(a1, a2);  // reshuffled each epoch
  std::vector<uint32_t> sorted = a2;
  std::sort(sorted.begin(), sorted.end());
  for (uint32_t i = 0; i < sorted.size(); ++i) ASSERT_EQ(sorted[i], i);

  TrainOptions o;
  o.lr = 0.01;
  EXPECT_DOUBLE_EQ(LearningRate(o, 0, 100), 0.01);
  EXPECT_NEAR(LearningRate(o, 50, 100), 0.005, 1e-15);
  EXPECT_NEAR(LearningRate(o, 99, 100), 0.01 * 0.5 * (1 + std::cos(std::numbers::pi * 0.99)),
              1e-15);
  o.cosine = false;
  EXPECT_DOUBLE_EQ(LearningRate(o, 99, 100), 0.01);
  // The betas are floats: 1 - double(0.999f) is 0.000999987..., not 0.001.
  EXPECT_EQ(AdamStepSize(0.01, 0), static_cast<float>(0.01 * std::sqrt(1.0 - double{kAdamBeta2}) /
                                                      (1.0 - double{kAdamBeta1})));
  EXPECT_EQ(AdamStepSize(0.01, 1),
            static_cast<float>(0.01 * std::sqrt(1.0 - std::pow(double{kAdamBeta2}, 2)) /
                               (1.0 - std::pow(double{kAdamBeta1}, 2))));

  o.batch = 64;
  o.epochs = 3;
  BatchPlan plan = PlanBatches(130, o);
  EXPECT_EQ(plan.batch, 64);
  EXPECT_EQ(plan.steps, 3);
  EXPECT_EQ(plan.total_steps, 9);
  EXPECT_EQ(PlanBatches(10, o).batch, 10);
}

// ---- checkpoints and resuming ----

TEST(FmnistCheckpoint, RoundTripDeclarationAndCorruption) {
  TempDir d;
  auto m = MakeMlp({784, 8, 10}, 3);
  ASSERT_TRUE(m.ok());
  Checkpoint c;
  c.model = *m;
  c.state.epochs_done = 2;
  c.state.m1.assign(m->params.size(), 0.25f);
  c.state.m2.assign(m->params.size(), 0.5f);
  c.meta = {{"training", {{"seed", 1}}}, {"epochs", Json::array()}};

  // Nothing declared yet: no dir, then a dir without checkpoint.json.
  auto none = LoadDeclaredCheckpoint(d / "ckpt");
  ASSERT_TRUE(none.ok()) << none.status().ToString();
  EXPECT_FALSE(none->has_value());

  auto file = SaveCheckpoint(d / "ckpt", c);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ(*file, "epoch-2.bin");
  EXPECT_EQ(ParseJson(ReadAll(d / "ckpt/checkpoint.json")).value(),
            (Json{{"file", "epoch-2.bin"}, {"epoch", 2}}));
  EXPECT_FALSE(fs::exists(d / "ckpt/epoch-2.bin.tmp"));
  auto back = LoadDeclaredCheckpoint(d / "ckpt");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ASSERT_TRUE(back->has_value());
  EXPECT_EQ((*back)->file, "epoch-2.bin");
  const Checkpoint& b = (*back)->checkpoint;
  EXPECT_EQ(b.model.sizes, m->sizes);
  EXPECT_EQ(b.model.params, m->params);
  EXPECT_EQ(b.state.epochs_done, 2);
  EXPECT_EQ(b.state.m1, c.state.m1);
  EXPECT_EQ(b.state.m2, c.state.m2);
  EXPECT_EQ(b.meta, c.meta);

  // SGD: one moment; none at all.
  c.state.m2.clear();
  auto sgd = DecodeCheckpoint(EncodeCheckpoint(c).value(), "sgd");
  ASSERT_TRUE(sgd.ok()) << sgd.status().ToString();
  EXPECT_EQ(sgd->state.m1, c.state.m1);
  EXPECT_TRUE(sgd->state.m2.empty());
  c.state.m1.resize(3);
  EXPECT_EQ(EncodeCheckpoint(c).status().code(), StatusCode::kInvalidArgument);

  std::string bytes = ReadAll(d / "ckpt/epoch-2.bin");
  std::string flipped = bytes;
  flipped[100] ^= 1;
  auto bad = DecodeCheckpoint(flipped, "x.bin");
  EXPECT_EQ(bad.status().code(), StatusCode::kCorruption);
  EXPECT_NE(bad.status().message().find("x.bin: checksum mismatch"), std::string::npos)
      << bad.status().message();
  EXPECT_EQ(DecodeCheckpoint(bytes.substr(0, 8), "x.bin").status().code(), StatusCode::kCorruption);
  EXPECT_NE(DecodeCheckpoint(bytes.substr(0, bytes.size() - 9), "x.bin")
                .status()
                .message()
                .find("checksum mismatch"),
            std::string::npos);
  EXPECT_NE(DecodeCheckpoint(ReadAll(d / "ckpt/checkpoint.json"), "x.bin")
                .status()
                .message()
                .find("bad magic"),
            std::string::npos);

  // checkpoint.json naming a missing file, or a path out of the dir.
  WriteRaw(d / "ckpt/checkpoint.json", R"({"file": "epoch-9.bin", "epoch": 9})");
  EXPECT_EQ(LoadDeclaredCheckpoint(d / "ckpt").status().code(), StatusCode::kNotFound);
  WriteRaw(d / "ckpt/checkpoint.json", R"({"file": "../epoch-2.bin", "epoch": 2})");
  EXPECT_EQ(LoadDeclaredCheckpoint(d / "ckpt").status().code(), StatusCode::kCorruption);
  WriteRaw(d / "ckpt/checkpoint.json", "not json");
  EXPECT_EQ(LoadDeclaredCheckpoint(d / "ckpt").status().code(), StatusCode::kCorruption);
}

// A training of 4 epochs stopped after epoch 2 (its checkpoint hook fails there) and
// resumed from the state it saved ends with the very weights of an uninterrupted one,
// with Adam and with SGD; progress reports come every progress_every steps.
TEST(FmnistTrain, ResumedAfterEpochTwoEndsWithTheSameWeights) {
  Dataset train = BandsDataset(300, 1), val = BandsDataset(100, 2);
  for (Optimizer optimizer : {Optimizer::kAdam, Optimizer::kSgd}) {
    SCOPED_TRACE(optimizer == Optimizer::kAdam ? "adam" : "sgd");
    TrainOptions o;
    o.epochs = 4;
    o.batch = 32;  // 10 steps an epoch, the last of 12 images
    o.seed = 4;
    o.optimizer = optimizer;
    o.lr = optimizer == Optimizer::kAdam ? 1e-3 : 0.05;

    auto full = MakeMlp({784, 16, 10}, 7);
    ASSERT_TRUE(full.ok());
    std::vector<StepReport> progress;
    std::vector<EpochReport> full_epochs;
    TrainHooks hooks;
    hooks.progress_every = 4;
    hooks.on_progress = [&](const StepReport& r) { progress.push_back(r); };
    hooks.on_epoch = [&](const EpochReport& e) { full_epochs.push_back(e); };
    ASSERT_TRUE(Train(*full, train, val, o, hooks).ok());
    // Steps 4 and 8 of each epoch (step 10 is the epoch's own report).
    ASSERT_EQ(progress.size(), 8u);
    EXPECT_EQ(progress[0].epoch, 1);
    EXPECT_EQ(progress[0].step, 4);
    EXPECT_EQ(progress[0].samples, 128);
    EXPECT_EQ(progress[7].epoch, 4);
    EXPECT_EQ(progress[7].step, 38);
    EXPECT_EQ(progress[7].samples, 3 * 300 + 256);
    for (const auto& p : progress) EXPECT_TRUE(std::isfinite(p.loss) && p.loss > 0);
    ASSERT_EQ(full_epochs.size(), 4u);
    EXPECT_EQ(full_epochs[1].step, 20);

    // Interrupted: the checkpoint after epoch 2 is the last thing it does.
    auto first = MakeMlp({784, 16, 10}, 7);
    std::optional<Checkpoint> saved;
    TrainHooks stop;
    stop.on_checkpoint = [&](const Mlp& m, const TrainState& state) -> Status {
      if (state.epochs_done < 2) return Status::Ok();
      saved = Checkpoint{m, state, Json::object()};
      return Unavailable("killed after epoch 2");
    };
    auto stopped = Train(*first, train, val, o, stop);
    ASSERT_EQ(stopped.status().code(), StatusCode::kUnavailable);
    ASSERT_TRUE(saved.has_value());
    EXPECT_EQ(saved->state.epochs_done, 2);
    EXPECT_EQ(saved->state.m2.empty(), optimizer == Optimizer::kSgd);

    // Through the file format, as a new process would read it.
    auto restored = DecodeCheckpoint(EncodeCheckpoint(*saved).value(), "epoch-2.bin");
    ASSERT_TRUE(restored.ok()) << restored.status().ToString();
    Mlp resumed = restored->model;
    std::vector<int> epochs_run;
    TrainHooks go_on;
    go_on.resume = &restored->state;
    go_on.on_epoch = [&](const EpochReport& e) { epochs_run.push_back(e.epoch); };
    auto r = Train(resumed, train, val, o, go_on);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(epochs_run, (std::vector<int>{3, 4}));
    EXPECT_EQ(resumed.params, full->params);  // bit for bit
    EXPECT_EQ(r->epochs.back().train_loss, full_epochs.back().train_loss);
    EXPECT_EQ(r->epochs.back().validation_accuracy, full_epochs.back().validation_accuracy);
    EXPECT_EQ(r->epochs.back().step, 40);

    // All epochs done: nothing to train, the weights stay.
    TrainState done;
    done.epochs_done = 4;
    TrainHooks finished;
    finished.resume = &done;
    Mlp copy = *full;
    auto none = Train(copy, train, val, o, finished);
    ASSERT_TRUE(none.ok());
    EXPECT_TRUE(none->epochs.empty());
    EXPECT_EQ(copy.params, full->params);
  }
  // A state that does not fit.
  auto m = MakeMlp({784, 16, 10}, 7);
  TrainOptions o;
  o.epochs = 2;
  TrainState late;
  late.epochs_done = 3;
  TrainHooks h;
  h.resume = &late;
  EXPECT_EQ(Train(*m, train, val, o, h).status().code(), StatusCode::kInvalidArgument);
  TrainState wrong;
  wrong.m1.assign(5, 0.0f);
  h.resume = &wrong;
  EXPECT_EQ(Train(*m, train, val, o, h).status().code(), StatusCode::kInvalidArgument);
}

// TrainHooks::stop is read at minibatch boundaries: set during a step, the training
// stops after the next one (an epoch's last step lets the epoch finish); set after an
// epoch, before the next starts; set after the last, the training is already done.
// Either thread count stops at the same step with the same weights.
TEST(FmnistTrain, StopsAtTheNextMinibatchBoundary) {
  Dataset train = BandsDataset(300, 1), val = BandsDataset(100, 2);
  TrainOptions o;
  o.epochs = 4;
  o.batch = 32;  // 10 steps an epoch
  o.seed = 4;
  std::vector<std::vector<float>> stopped_params;
  for (int threads : {1, 2}) {
    SCOPED_TRACE(threads);
    o.threads = threads;
    auto m = MakeMlp({784, 16, 10}, 7);
    ASSERT_TRUE(m.ok());
    const std::vector<float> initial = m->params;
    std::atomic<bool> stop{false};
    TrainHooks hooks;
    hooks.stop = &stop;
    hooks.progress_every = 5;
    hooks.on_progress = [&](const StepReport& r) {
      if (r.step == 5) stop.store(true);
    };
    int epochs_seen = 0;
    hooks.on_epoch = [&](const EpochReport&) { ++epochs_seen; };
    auto r = Train(*m, train, val, o, hooks);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_TRUE(r->stopped);
    EXPECT_EQ(r->stopped_epoch, 1);
    EXPECT_EQ(r->stopped_step, 6);  // seen at the step after the one that set it
    EXPECT_TRUE(r->epochs.empty());
    EXPECT_EQ(epochs_seen, 0);
    EXPECT_NE(m->params, initial);
    stopped_params.push_back(m->params);
  }
  EXPECT_EQ(stopped_params[0], stopped_params[1]);

  // Set after epoch 2: epoch 2's checkpoint is written, epoch 3 never starts, and the
  // weights are those of that checkpoint.
  o.threads = 2;
  auto m = MakeMlp({784, 16, 10}, 7);
  std::atomic<bool> stop{false};
  std::vector<int> checkpoints;
  std::vector<float> at_epoch_two;
  TrainHooks hooks;
  hooks.stop = &stop;
  hooks.on_epoch = [&](const EpochReport& e) {
    if (e.epoch == 2) stop.store(true);
  };
  hooks.on_checkpoint = [&](const Mlp& net, const TrainState& state) -> Status {
    checkpoints.push_back(state.epochs_done);
    if (state.epochs_done == 2) at_epoch_two = net.params;
    return Status::Ok();
  };
  auto r = Train(*m, train, val, o, hooks);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->stopped);
  EXPECT_EQ(r->stopped_epoch, 3);
  EXPECT_EQ(r->stopped_step, 20);
  EXPECT_EQ(r->epochs.size(), 2u);
  EXPECT_EQ(checkpoints, (std::vector<int>{1, 2}));
  EXPECT_EQ(m->params, at_epoch_two);

  // Set before the start: nothing trained.
  auto untouched = MakeMlp({784, 16, 10}, 7);
  const std::vector<float> initial = untouched->params;
  TrainHooks early;
  early.stop = &stop;  // still set
  r = Train(*untouched, train, val, o, early);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->stopped);
  EXPECT_EQ(r->stopped_epoch, 1);
  EXPECT_EQ(r->stopped_step, 0);
  EXPECT_EQ(untouched->params, initial);

  // Set after the last epoch: the training is complete, not stopped.
  stop.store(false);
  auto done = MakeMlp({784, 16, 10}, 7);
  TrainHooks late;
  late.stop = &stop;
  late.on_epoch = [&](const EpochReport& e) {
    if (e.epoch == 4) stop.store(true);
  };
  r = Train(*done, train, val, o, late);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->stopped);
  EXPECT_EQ(r->epochs.size(), 4u);
}

// ---- --device ----

const char* kNoDriver =
    "cudaGetDeviceCount: CUDA driver version is insufficient for CUDA runtime version (35)";

TEST(FmnistDevice, ResolvesWithInjectedProbes) {
  int probes = 0;
  auto no_driver = [&]() -> Result<std::string> {
    ++probes;
    return Unavailable(kNoDriver);
  };
  auto cuda = ResolveDevice("cuda", no_driver);
  ASSERT_FALSE(cuda.ok());
  EXPECT_EQ(cuda.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(cuda.status().message(), std::string("--device cuda: no usable GPU: ") + kNoDriver);
  auto fallback = ResolveDevice("auto", no_driver);
  ASSERT_TRUE(fallback.ok()) << fallback.status().ToString();
  EXPECT_EQ(fallback->device, "cpu");
  EXPECT_EQ(fallback->why, std::string("no usable GPU: ") + kNoDriver);
  EXPECT_EQ(probes, 2);

  auto cpu = ResolveDevice("cpu", no_driver);
  ASSERT_TRUE(cpu.ok());
  EXPECT_EQ(cpu->device, "cpu");
  EXPECT_EQ(probes, 2);  // --device cpu never touches CUDA

  auto not_built = []() -> Result<std::string> {
    return FailedPrecondition("this build has no CUDA path (built with EPOCH_CUDA=OFF)");
  };
  cuda = ResolveDevice("cuda", not_built);
  ASSERT_FALSE(cuda.ok());
  EXPECT_EQ(cuda.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(cuda.status().message(),
            "--device cuda: this build has no CUDA path (built with EPOCH_CUDA=OFF)");
  fallback = ResolveDevice("auto", not_built);
  ASSERT_TRUE(fallback.ok());
  EXPECT_EQ(fallback->device, "cpu");
  EXPECT_EQ(fallback->why, "this build has no CUDA path (built with EPOCH_CUDA=OFF)");

  auto gpu = []() -> Result<std::string> { return std::string("Fake GPU (compute 9.0)"); };
  for (const char* d : {"cuda", "auto"}) {
    auto r = ResolveDevice(d, gpu);
    ASSERT_TRUE(r.ok()) << d << ": " << r.status().ToString();
    EXPECT_EQ(r->device, "cuda") << d;
    EXPECT_EQ(r->why, "Fake GPU (compute 9.0)") << d;
  }
  auto tpu = ResolveDevice("tpu", gpu);
  ASSERT_FALSE(tpu.ok());
  EXPECT_EQ(tpu.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(tpu.status().message(), "--device must be auto, cpu or cuda, not 'tpu'");
}

// What this machine's real probe says; the rest of the test only applies without a GPU.
TEST(FmnistDevice, WithoutAGpuCudaFailsPreciselyAndAutoFallsBack) {
  Result<std::string> gpu = ProbeCuda();
  if (gpu.ok()) GTEST_SKIP() << "a GPU is usable here: " << *gpu;
  const std::string& reason = gpu.status().message();
  std::string expected;
  if (CudaCompiled()) {
    // Any CUDA error, with the call, the runtime's text and the code.
    EXPECT_EQ(gpu.status().code(), StatusCode::kUnavailable) << reason;
    EXPECT_TRUE(reason.starts_with("cuda")) << reason;
    EXPECT_TRUE(reason.ends_with(")")) << reason;
    EXPECT_NE(reason.find(" ("), std::string::npos) << reason;
    expected = "no usable GPU: " + reason;
  } else {
    EXPECT_EQ(gpu.status().code(), StatusCode::kFailedPrecondition);
    EXPECT_TRUE(reason.starts_with("this build has no CUDA path (")) << reason;
    expected = reason;
  }
  auto cuda = ResolveDevice("cuda");
  ASSERT_FALSE(cuda.ok());
  EXPECT_EQ(cuda.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(cuda.status().message(), "--device cuda: " + expected);
  auto fallback = ResolveDevice("auto");
  ASSERT_TRUE(fallback.ok()) << fallback.status().ToString();
  EXPECT_EQ(fallback->device, "cpu");
  EXPECT_EQ(fallback->why, expected);

  // Asked to train anyway, the CUDA path fails with a Status, not a crash.
  auto m = MakeMlp({784, 8, 10}, 1);
  ASSERT_TRUE(m.ok());
  const std::vector<float> before = m->params;
  auto r = TrainOnCuda(*m, BandsDataset(40, 3), Dataset{}, TrainOptions{}, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().code(), StatusCode::kOk);
  EXPECT_NE(r.status().message().find(CudaCompiled() ? "cuda" : "no CUDA path"), std::string::npos)
      << r.status().message();
  EXPECT_EQ(m->params, before);  // untouched on failure
}

// ---- the CLI, end to end on fixtures ----

// Runs fmnist with `env` (e.g. "EPOCH_METRICS=/x") in place of Epoch's variables,
// which are unset otherwise (this test may itself run as a step).
int RunFmnistWithEnv(const std::string& env, const std::string& args, std::string* output) {
  std::string cmd = "env -u EPOCH_METRICS -u EPOCH_CHECKPOINT_DIR " + env + " " +
                    std::string(FMNIST_BIN) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return -1;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) output->append(buf, n);
  int status = pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int RunFmnist(const std::string& args, std::string* output) {
  return RunFmnistWithEnv("", args, output);
}

TEST(FmnistCli, PrepTrainValidateInferOnFixtures) {
  TempDir d;
  TempDir data_holder;  // keep the fixture separate from outputs
  WriteValidIdxDir(data_holder, 40);
  std::string out;
  ASSERT_EQ(RunFmnist("prep --data " + data_holder.path() + " --out " + d / "prep" +
                          " --validation 0.25 --seed 3",
                      &out),
            0)
      << out;
  auto metrics = ParseJson(ReadAll(d / "prep/metrics.json"));
  ASSERT_TRUE(metrics.ok());
  EXPECT_EQ((*metrics)["train_images"], 30);
  EXPECT_EQ((*metrics)["validation_images"], 10);
  EXPECT_EQ((*metrics)["test_images"], 40);

  out.clear();
  ASSERT_EQ(RunFmnist("train --data " + d / "prep/manifest.json" + " --out " + d / "train" +
                          " --epochs 2 --batch 8 --hidden 16",
                      &out),
            0)
      << out;
  EXPECT_NE(out.find("epoch 2/2"), std::string::npos) << out;
  metrics = ParseJson(ReadAll(d / "train/metrics.json"));
  ASSERT_TRUE(metrics.ok());
  EXPECT_TRUE(metrics->contains("accuracy"));
  EXPECT_EQ((*metrics)["epochs"].size(), 2u);
  EXPECT_EQ((*metrics)["hyperparameters"]["hidden"], Json::array({16}));
  // --device auto: the device the real probe allows here, said in one line and recorded.
  auto choice = ResolveDevice("auto");
  ASSERT_TRUE(choice.ok());
  EXPECT_NE(out.find("device auto -> " + choice->device + ": " + choice->why + "\n"),
            std::string::npos)
      << out;
  EXPECT_EQ((*metrics)["device"], choice->device);
  EXPECT_EQ((*metrics)["device_detail"], choice->why);
  EXPECT_EQ((*metrics)["hyperparameters"]["device"], choice->device);
  ASSERT_TRUE((*metrics)["images_per_second"].is_number());
  EXPECT_GT((*metrics)["images_per_second"].get<double>(), 0);

  out.clear();
  ASSERT_EQ(RunFmnist("validate --data " + data_holder.path() + " --model " + d / "train" +
                          " --out " + d / "validate",
                      &out),
            0)
      << out;
  metrics = ParseJson(ReadAll(d / "validate/metrics.json"));
  ASSERT_TRUE(metrics.ok());
  EXPECT_EQ((*metrics)["samples"], 40);
  EXPECT_EQ((*metrics)["confusion_matrix"].size(), 10u);
  EXPECT_EQ((*metrics)["per_class_accuracy"].size(), 10u);

  out.clear();
  ASSERT_EQ(RunFmnist("infer --model " + d / "train/model.bin" + " --data " + d / "prep" +
                          " --out " + d / "infer" + " --count 5 --offset 2",
                      &out),
            0)
      << out;
  std::string csv = ReadAll(d / "infer/predictions.csv");
  EXPECT_TRUE(csv.starts_with("index,label,confidence\n2,")) << csv;
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 6);
  EXPECT_NE(out.find(csv), std::string::npos);
}

TEST(FmnistCli, BadInputExitsTwoWithTheReason) {
  TempDir data;
  WriteValidIdxDir(data, 3);
  WriteGz(data / "train-labels-idx1-ubyte.gz", LabelsBytes(2049, {1, 2}, 2));
  std::string out;
  EXPECT_EQ(RunFmnist("prep --data " + data.path() + " --out " + data / "out", &out), 2);
  EXPECT_NE(out.find("count mismatch"), std::string::npos) << out;
  EXPECT_NE(out.find("train-labels-idx1-ubyte.gz has 2 labels"), std::string::npos) << out;

  out.clear();
  EXPECT_EQ(RunFmnist("train --data " + data.path() + " --out " + data / "t", &out), 2);
  EXPECT_NE(out.find("manifest.json"), std::string::npos) << out;
  if (auto cuda = ResolveDevice("cuda"); !cuda.ok()) {  // no usable GPU here
    out.clear();
    EXPECT_EQ(RunFmnist("train --data x --out y --device cuda", &out), 2);
    EXPECT_EQ(out, "fmnist train: error: " + cuda.status().message() + "\n");
  }
  out.clear();
  EXPECT_EQ(RunFmnist("train --data x --out y --device tpu", &out), 2);
  EXPECT_NE(out.find("--device must be auto, cpu or cuda, not 'tpu'"), std::string::npos) << out;
  out.clear();
  EXPECT_EQ(RunFmnist("train --epochs zero", &out), 2);
  EXPECT_NE(out.find("--epochs must be an integer"), std::string::npos) << out;
  out.clear();
  EXPECT_EQ(RunFmnist("frobnicate", &out), 2);
}

// A data set directory (gzip IDX) of BandsDataset's problem as bytes: the label is
// which of 10 pixel bands is brighter; `count` training and `count` test images.
void WriteBandsIdxDir(const TempDir& dir, uint32_t count, uint64_t seed) {
  for (const char* prefix : {"train", "t10k"}) {
    Rng rng(seed++);
    std::string images = ImagesBytes(2051, count, 28, 28, 0);
    std::vector<uint8_t> labels;
    for (uint32_t i = 0; i < count; ++i) {
      const uint8_t label = static_cast<uint8_t>(rng.Below(10));
      labels.push_back(label);
      for (int p = 0; p < kPixels; ++p) {
        images.push_back(static_cast<char>(rng.Below(128) + (p / 78 == label ? 127 : 0)));
      }
    }
    WriteGz(dir / (std::string(prefix) + "-images-idx3-ubyte.gz"), images);
    WriteGz(dir / (std::string(prefix) + "-labels-idx1-ubyte.gz"),
            LabelsBytes(2049, labels, count));
  }
}

TEST(FmnistCli, DeviceCpuRecordsTheDeviceAndThroughput) {
  TempDir d, data;
  WriteBandsIdxDir(data, 100, 1);
  std::string out;
  ASSERT_EQ(RunFmnist("prep --data " + data.path() + " --out " + d / "prep", &out), 0) << out;
  out.clear();
  ASSERT_EQ(RunFmnist("train --data " + d / "prep" + " --out " + d / "train" +
                          " --epochs 1 --batch 16 --hidden 8 --device cpu",
                      &out),
            0)
      << out;
  EXPECT_EQ(out.find("device auto"), std::string::npos) << out;  // no probe, no line
  EXPECT_NE(out.find("; device cpu, 2 threads,"), std::string::npos) << out;
  EXPECT_NE(out.find(" images/s on cpu)"), std::string::npos) << out;
  auto metrics = ParseJson(ReadAll(d / "train/metrics.json"));
  ASSERT_TRUE(metrics.ok());
  EXPECT_EQ((*metrics)["device"], "cpu");
  EXPECT_EQ((*metrics)["device_detail"], "--device cpu");
  ASSERT_TRUE((*metrics)["images_per_second"].is_number());
  EXPECT_GT((*metrics)["images_per_second"].get<double>(), 0);
  ASSERT_TRUE((*metrics)["train_seconds"].is_number());
}

// The metrics lines of a file: each must be a JSON object of numbers.
std::vector<Json> MetricsLines(const std::string& path) {
  std::vector<Json> lines;
  std::istringstream in(ReadAll(path));
  std::string line;
  while (std::getline(in, line)) {
    auto j = ParseJson(line);
    EXPECT_TRUE(j.ok() && j->is_object()) << path << ": " << line;
    if (!j.ok()) continue;
    for (const auto& [name, value] : j->items()) {
      EXPECT_TRUE(value.is_number()) << path << ": " << name << " in " << line;
    }
    lines.push_back(*j);
  }
  return lines;
}

// fmnist train with Epoch's variables: a metrics line per epoch (and every 3 steps) and
// a checkpoint per epoch. Then, in a second checkpoint dir holding only what a kill after
// epoch 2 leaves (epoch-2.bin declared), the same training resumes at epoch 3 and writes
// the very same model.bin. A checkpoint of other settings is refused; an unreadable one
// is ignored.
TEST(FmnistCli, MetricsLinesAndResumeFromTheEpochTwoCheckpoint) {
  TempDir d, data;
  WriteBandsIdxDir(data, 200, 1);
  std::string out;
  ASSERT_EQ(RunFmnist("prep --data " + data.path() + " --out " + d / "prep", &out), 0) << out;
  const std::string train = "train --data " + d / "prep" +
                            " --epochs 4 --batch 16 --hidden 16 --device cpu --metrics-every 3";

  out.clear();
  ASSERT_EQ(RunFmnistWithEnv(
                "EPOCH_METRICS=" + d / "full.jsonl" + " EPOCH_CHECKPOINT_DIR=" + d / "full-ckpt",
                train + " --out " + d / "full", &out),
            0)
      << out;
  EXPECT_EQ(out.find("resumed"), std::string::npos) << out;
  EXPECT_NE(out.find("checkpoint " + d / "full-ckpt/epoch-4.bin\n"), std::string::npos) << out;
  // 180 training images: 12 steps an epoch, progress lines after steps 3, 6 and 9.
  std::vector<Json> lines = MetricsLines(d / "full.jsonl");
  ASSERT_EQ(lines.size(), 16u);
  std::vector<Json> epoch_lines;
  for (const auto& j : lines) {
    ASSERT_TRUE(j.contains("epoch") && j.contains("step") && j.contains("loss") && j.contains("lr"))
        << j.dump();
    if (j.contains("train_accuracy")) epoch_lines.push_back(j);
  }
  ASSERT_EQ(epoch_lines.size(), 4u);
  for (int e = 0; e < 4; ++e) {
    EXPECT_EQ(epoch_lines[e]["epoch"], e + 1);
    EXPECT_EQ(epoch_lines[e]["step"], 12 * (e + 1));
    EXPECT_TRUE(epoch_lines[e].contains("validation_accuracy"));
    EXPECT_TRUE(epoch_lines[e].contains("epoch_seconds"));
  }
  EXPECT_EQ(lines[0],
            (Json{{"epoch", 1}, {"step", 3}, {"loss", lines[0]["loss"]}, {"lr", lines[0]["lr"]}}));
  EXPECT_GT(lines[0]["loss"].get<double>(), 0);
  auto full_metrics = ParseJson(ReadAll(d / "full/metrics.json"));
  ASSERT_TRUE(full_metrics.ok());
  EXPECT_DOUBLE_EQ(epoch_lines[3]["train_accuracy"].get<double>(),
                   (*full_metrics)["train_accuracy"].get<double>());
  EXPECT_EQ(ParseJson(ReadAll(d / "full-ckpt/checkpoint.json")).value(),
            (Json{{"file", "epoch-4.bin"}, {"epoch", 4}}));
  for (int e = 1; e <= 4; ++e) {
    EXPECT_TRUE(fs::exists(d / ("full-ckpt/epoch-" + std::to_string(e) + ".bin"))) << e;
  }

  // What the checkpoint dir holds when the process dies after epoch 2.
  fs::create_directories(d / "ckpt");
  fs::copy_file(d / "full-ckpt/epoch-1.bin", d / "ckpt/epoch-1.bin");
  fs::copy_file(d / "full-ckpt/epoch-2.bin", d / "ckpt/epoch-2.bin");
  WriteRaw(d / "ckpt/checkpoint.json", R"({"file": "epoch-2.bin", "epoch": 2})");
  out.clear();
  ASSERT_EQ(RunFmnist(train + " --out " + d / "resumed" + " --metrics " + d / "resumed.jsonl" +
                          " --checkpoint-dir " + d / "ckpt",
                      &out),
            0)
      << out;
  EXPECT_NE(out.find("resumed from epoch-2.bin at epoch 3\n"), std::string::npos) << out;
  EXPECT_EQ(out.find("epoch 1/4"), std::string::npos) << out;
  EXPECT_EQ(out.find("epoch 2/4"), std::string::npos) << out;
  EXPECT_NE(out.find("epoch 3/4"), std::string::npos) << out;
  EXPECT_NE(out.find("epoch 4/4"), std::string::npos) << out;
  const std::string full_model = ReadAll(d / "full/model.bin");
  ASSERT_FALSE(full_model.empty());
  EXPECT_TRUE(ReadAll(d / "resumed/model.bin") == full_model) << "the weights differ";
  auto resumed_metrics = ParseJson(ReadAll(d / "resumed/metrics.json"));
  ASSERT_TRUE(resumed_metrics.ok());
  EXPECT_NEAR((*resumed_metrics)["accuracy"].get<double>(),
              (*full_metrics)["accuracy"].get<double>(), 1e-6);
  EXPECT_EQ((*resumed_metrics)["resumed_from"], "epoch-2.bin");
  EXPECT_EQ((*resumed_metrics)["resumed_at_epoch"], 3);
  ASSERT_EQ((*resumed_metrics)["epochs"].size(), 4u);  // the checkpoint's epochs 1, 2 too
  for (size_t e = 0; e < 4; ++e) {
    EXPECT_EQ((*resumed_metrics)["epochs"][e]["train_loss"],
              (*full_metrics)["epochs"][e]["train_loss"])
        << e;
  }
  std::vector<Json> resumed_lines = MetricsLines(d / "resumed.jsonl");
  ASSERT_EQ(resumed_lines.size(), 8u);
  EXPECT_EQ(resumed_lines.front()["epoch"], 3);
  EXPECT_EQ(resumed_lines.front()["step"], 27);
  Json resumed_last = resumed_lines.back(), full_last = lines.back();
  resumed_last.erase("epoch_seconds");
  full_last.erase("epoch_seconds");
  EXPECT_EQ(resumed_last, full_last);
  EXPECT_EQ(ParseJson(ReadAll(d / "ckpt/checkpoint.json")).value(),
            (Json{{"file", "epoch-4.bin"}, {"epoch", 4}}));

  // Other settings: refused, nothing trained.
  out.clear();
  EXPECT_EQ(
      RunFmnist(train + " --seed 2 --out " + d / "other --checkpoint-dir " + d / "ckpt", &out), 2);
  EXPECT_NE(out.find("ckpt/epoch-4.bin is of another training (seed 1 there, 2 here)"),
            std::string::npos)
      << out;
  EXPECT_FALSE(fs::exists(d / "other/model.bin"));

  // An unreadable checkpoint: said, and training starts over.
  WriteRaw(d / "ckpt/epoch-4.bin", "FMC1 but not much else");
  out.clear();
  ASSERT_EQ(RunFmnist(train + " --out " + d / "over --checkpoint-dir " + d / "ckpt", &out), 0)
      << out;
  EXPECT_NE(out.find("ignoring the checkpoint in " + d / "ckpt" + ": "), std::string::npos) << out;
  EXPECT_NE(out.find("epoch 1/4"), std::string::npos) << out;
  EXPECT_TRUE(ReadAll(d / "over/model.bin") == full_model);
}

// A running `fmnist train` as a real child process (no shell), its stdout and stderr
// on one pipe read line by line; killed and reaped if the test leaves it running.
class FmnistChild {
 public:
  explicit FmnistChild(std::vector<std::string> args) {
    args.insert(args.begin(), FMNIST_BIN);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
    if (posix_spawn(&pid_, FMNIST_BIN, &actions, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    out_ = fdopen(fds[0], "r");
  }
  ~FmnistChild() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (out_ != nullptr) std::fclose(out_);
  }
  FmnistChild(const FmnistChild&) = delete;
  FmnistChild& operator=(const FmnistChild&) = delete;

  bool started() const { return pid_ > 0 && out_ != nullptr; }

  // Reads up to and including the first line that starts with `prefix` and returns it
  // (without its newline); nullopt at the end of the output.
  std::optional<std::string> WaitForLine(const std::string& prefix) {
    while (auto line = ReadLine()) {
      if (line->starts_with(prefix)) return line;
    }
    return std::nullopt;
  }

  void Signal(int sig) { kill(pid_, sig); }

  // Reads the rest of the output and reaps the child: its exit status, or -1 when a
  // signal killed it.
  int Wait() {
    while (ReadLine()) {
    }
    int status = 0;
    const pid_t reaped = waitpid(pid_, &status, 0);
    pid_ = -1;
    return reaped > 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  const std::string& output() const { return output_; }

 private:
  // The next line of output, kept in output_; nullopt at its end.
  std::optional<std::string> ReadLine() {
    char* line = nullptr;
    size_t cap = 0;
    const ssize_t n = getline(&line, &cap, out_);
    std::optional<std::string> text;
    if (n > 0) {
      output_.append(line, static_cast<size_t>(n));
      text.emplace(line, static_cast<size_t>(n) - (line[n - 1] == '\n' ? 1 : 0));
    }
    std::free(line);
    return text;
  }

  pid_t pid_ = -1;
  std::FILE* out_ = nullptr;
  std::string output_;
};

// SIGTERM (how Epoch cancels a step, an early-stopped trial included) stops `fmnist
// train` at the next minibatch boundary with exit 143 and a line naming the epoch, the
// step and the latest checkpoint (the last finished epoch's: checkpoints hold whole
// epochs); a run started again resumes from that checkpoint. The training is far too
// long to finish (100,000 epochs), so only the signal can end it; each SIGTERM is sent
// once the run has logged an epoch, i.e. written that epoch's metrics line.
TEST(FmnistCli, SigtermStopsAtAMinibatchBoundaryAndTheRunResumes) {
  TempDir d, data;
  WriteBandsIdxDir(data, 200, 1);
  std::string out;
  ASSERT_EQ(RunFmnist("prep --data " + data.path() + " --out " + d / "prep", &out), 0) << out;
  constexpr int kSteps = 15;  // --limit 120 images, batch 8
  // The command line of a run writing to d/run and d/run.jsonl (no spaces in d).
  auto args = [&](const std::string& run) {
    std::istringstream words("train --data " + d / "prep" + " --out " + d / run +
                             " --epochs 100000 --batch 8 --limit 120 --hidden 16 --device cpu" +
                             " --threads 1 --metrics-every 0 --metrics " + d / (run + ".jsonl") +
                             " --checkpoint-dir " + d / "ckpt");
    return std::vector<std::string>(std::istream_iterator<std::string>(words), {});
  };
  // "SIGTERM received at epoch E step S: stopped; the latest checkpoint is ..." -> E, S.
  auto stop_line = [](const std::string& output) -> std::pair<int, int64_t> {
    const size_t at = output.find("SIGTERM received at epoch ");
    int epoch = 0;
    long long step = -1;
    if (at == std::string::npos ||
        std::sscanf(output.c_str() + at, "SIGTERM received at epoch %d step %lld", &epoch, &step) !=
            2) {
      return {0, -1};
    }
    return {epoch, step};
  };

  FmnistChild first(args("first"));
  ASSERT_TRUE(first.started());
  ASSERT_TRUE(first.WaitForLine("epoch 1/100000 ").has_value()) << first.output();
  first.Signal(SIGTERM);
  ASSERT_EQ(first.Wait(), 143) << first.output();
  const auto [epoch, step] = stop_line(first.output());
  ASSERT_GE(epoch, 2) << first.output();  // epoch 1 had ended when the signal was sent
  // Inside epoch `epoch`: never after its last step (that one lets the epoch finish).
  EXPECT_GE(step, int64_t{kSteps} * (epoch - 1)) << first.output();
  EXPECT_LT(step, int64_t{kSteps} * epoch) << first.output();
  const int saved = epoch - 1;
  const std::string file = "epoch-" + std::to_string(saved) + ".bin";
  EXPECT_NE(first.output().find("SIGTERM received at epoch " + std::to_string(epoch) + " step " +
                                std::to_string(step) + ": stopped; the latest checkpoint is " +
                                d / "ckpt/" + file + " (written after epoch " +
                                std::to_string(saved) + "; checkpoints are written at epoch " +
                                "ends only), a resumed training starts at epoch " +
                                std::to_string(epoch)),
            std::string::npos)
      << first.output();
  EXPECT_TRUE(fs::exists(d / ("ckpt/" + file)));
  EXPECT_EQ(ParseJson(ReadAll(d / "ckpt/checkpoint.json")).value(),
            (Json{{"file", file}, {"epoch", saved}}));
  EXPECT_FALSE(fs::exists(d / "first/model.bin"));  // a stopped training is no model
  EXPECT_FALSE(fs::exists(d / "first/metrics.json"));
  std::vector<Json> lines = MetricsLines(d / "first.jsonl");
  ASSERT_EQ(lines.size(), static_cast<size_t>(saved));  // one per finished epoch
  EXPECT_EQ(lines.front()["epoch"], 1);
  EXPECT_EQ(lines.back()["step"], kSteps * saved);

  // Started again on the same checkpoint dir: resumes after the saved epoch.
  FmnistChild second(args("second"));
  ASSERT_TRUE(second.started());
  const std::string resumed = "resumed from " + file + " at epoch " + std::to_string(epoch);
  EXPECT_EQ(second.WaitForLine("resumed from "), std::optional<std::string>(resumed))
      << second.output();
  ASSERT_TRUE(second.WaitForLine("epoch " + std::to_string(epoch) + "/100000 ").has_value())
      << second.output();
  EXPECT_EQ(second.output().find("epoch 1/100000"), std::string::npos) << second.output();
  second.Signal(SIGTERM);
  ASSERT_EQ(second.Wait(), 143) << second.output();
  const auto [epoch2, step2] = stop_line(second.output());
  EXPECT_GT(epoch2, epoch) << second.output();
  EXPECT_GE(step2, int64_t{kSteps} * (epoch2 - 1)) << second.output();
  lines = MetricsLines(d / "second.jsonl");
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines.front()["epoch"], epoch);  // the first epoch it trained: the unfinished one
  EXPECT_EQ(lines.front()["step"], kSteps * epoch);
  EXPECT_EQ(
      ParseJson(ReadAll(d / "ckpt/checkpoint.json")).value(),
      (Json{{"file", "epoch-" + std::to_string(epoch2 - 1) + ".bin"}, {"epoch", epoch2 - 1}}));
}

// ---- the CUDA path against the CPU path (needs a GPU) ----

bool GpuRequired() {
  const char* v = std::getenv("FMNIST_TEST_REQUIRE_GPU");
  return v != nullptr && std::string(v) == "1";
}

// Skips the test without a usable GPU, saying why; fails it instead under
// FMNIST_TEST_REQUIRE_GPU=1.
#define SKIP_WITHOUT_GPU()                                                                    \
  do {                                                                                        \
    Result<std::string> gpu_ = ProbeCuda();                                                   \
    if (!gpu_.ok()) {                                                                         \
      if (GpuRequired()) {                                                                    \
        FAIL() << "FMNIST_TEST_REQUIRE_GPU=1 but no usable GPU: " << gpu_.status().message(); \
      }                                                                                       \
      GTEST_SKIP() << "no usable GPU: " << gpu_.status().message();                           \
    }                                                                                         \
    std::printf("GPU: %s\n", gpu_->c_str());                                                  \
  } while (0)

TEST(FmnistCuda, GradientMatchesCpu) {
  SKIP_WITHOUT_GPU();
  struct Case {
    std::vector<int> sizes;
    int rows;
  };
  // Odd widths and row counts: partial tiles in every dimension of every product.
  for (const Case& c : {Case{{784, 100, 30, 10}, 37}, Case{{784, 256, 128, 10}, 64},
                        Case{{784, 70, 10}, 130}, Case{{6, 5, 4, 3}, 5}, Case{{784, 10}, 1}}) {
    SCOPED_TRACE("network " + std::to_string(c.sizes.size() - 1) + " layers, " +
                 std::to_string(c.sizes[1]) + " wide, rows " + std::to_string(c.rows));
    auto made = MakeMlp(c.sizes, 21);
    ASSERT_TRUE(made.ok());
    Mlp m = *made;
    Rng rng(22);
    for (int l = 0; l < m.layers(); ++l) {
      for (int j = 0; j < m.sizes[l + 1]; ++j) {
        m.params[m.BiasOffset(l) + j] = static_cast<float>(0.1 * rng.Normal());
      }
    }
    std::vector<float> x(static_cast<size_t>(c.rows) * m.inputs());
    for (auto& v : x) v = static_cast<float>(rng.Open01());
    std::vector<uint8_t> y(c.rows);
    for (auto& v : y) v = static_cast<uint8_t>(rng.Below(m.outputs()));
    const float scale = 1.0f / static_cast<float>(c.rows);
    Workspace ws(m.sizes, c.rows);
    std::vector<float> want(m.params.size()), got(m.params.size(), -1.0f);
    BatchStats cpu = LossAndGradient(m, x.data(), y.data(), c.rows, scale, ws, want.data());
    auto gpu = CudaLossAndGradient(m, x.data(), y.data(), c.rows, scale, got.data());
    ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();
    EXPECT_NEAR(gpu->loss_sum, cpu.loss_sum, 1e-5 * (1 + std::abs(cpu.loss_sum)));
    EXPECT_EQ(gpu->correct, cpu.correct);
    double largest = 0;
    for (float g : want) largest = std::max(largest, static_cast<double>(std::abs(g)));
    ASSERT_GT(largest, 0);
    int bad = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      if (std::abs(got[i] - want[i]) > 1e-4 * largest + 1e-3 * std::abs(want[i])) {
        if (++bad <= 5) {
          ADD_FAILURE() << "parameter " << i << ": gpu " << got[i] << ", cpu " << want[i];
        }
      }
    }
    EXPECT_EQ(bad, 0) << "of " << want.size() << " gradient entries";
  }
}

TEST(FmnistCuda, TrainingMatchesCpu) {
  SKIP_WITHOUT_GPU();
  Dataset train = BandsDataset(256, 1), val = BandsDataset(128, 2);
  for (Optimizer opt : {Optimizer::kAdam, Optimizer::kSgd}) {
    SCOPED_TRACE(opt == Optimizer::kAdam ? "adam" : "sgd");
    TrainOptions o;
    o.epochs = 2;
    o.batch = 37;  // a short last batch
    o.seed = 9;
    o.optimizer = opt;
    if (opt == Optimizer::kSgd) o.lr = 0.05;
    auto cpu_m = MakeMlp({784, 100, 30, 10}, 5), gpu_m = MakeMlp({784, 100, 30, 10}, 5);
    ASSERT_TRUE(cpu_m.ok() && gpu_m.ok());
    const std::vector<float> initial = gpu_m->params;
    auto cpu = Train(*cpu_m, train, val, o, nullptr);
    int epochs_seen = 0;
    auto gpu = TrainOnCuda(*gpu_m, train, val, o, [&](const EpochReport&) { ++epochs_seen; });
    ASSERT_TRUE(cpu.ok()) << cpu.status().ToString();
    ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();
    EXPECT_EQ(epochs_seen, 2);
    ASSERT_EQ(gpu->epochs.size(), 2u);
    for (size_t e = 0; e < 2; ++e) {
      const EpochReport &c = cpu->epochs[e], &g = gpu->epochs[e];
      std::printf(
          "%s epoch %zu: loss cpu %.6f gpu %.6f, train acc %.4f / %.4f, val acc %.4f / %.4f\n",
          opt == Optimizer::kAdam ? "adam" : "sgd", e + 1, c.train_loss, g.train_loss,
          c.train_accuracy, g.train_accuracy, c.validation_accuracy, g.validation_accuracy);
      EXPECT_EQ(g.epoch, c.epoch);
      EXPECT_NEAR(g.train_loss, c.train_loss, 1e-3) << "epoch " << e + 1;
      EXPECT_NEAR(g.train_accuracy, c.train_accuracy, 3.0 / 256) << "epoch " << e + 1;
      EXPECT_NEAR(g.validation_accuracy, c.validation_accuracy, 2.0 / 128) << "epoch " << e + 1;
      EXPECT_DOUBLE_EQ(g.lr, c.lr);
      EXPECT_GT(g.seconds, 0);
    }
    EXPECT_GT(gpu->images_per_second, 0);
    EXPECT_GT(gpu->epochs.back().validation_accuracy, 0.5);  // it learned

    // The parameters came back: the CPU's evaluation of them agrees with the GPU's own,
    // and they are close to the CPU-trained ones.
    ASSERT_EQ(gpu_m->params.size(), initial.size());
    EXPECT_NE(gpu_m->params, initial);
    Evaluation ev = Evaluate(*gpu_m, val, 1);
    EXPECT_NEAR(ev.accuracy, gpu->epochs.back().validation_accuracy, 1.5 / 128);
    double max_diff = 0, sum_diff = 0;
    for (size_t i = 0; i < initial.size(); ++i) {
      const double diff = std::abs(static_cast<double>(gpu_m->params[i]) - cpu_m->params[i]);
      max_diff = std::max(max_diff, diff);
      sum_diff += diff;
    }
    std::printf("parameters: max |gpu - cpu| %.3g, mean %.3g\n", max_diff,
                sum_diff / static_cast<double>(initial.size()));
    EXPECT_LT(max_diff, 0.03);
    EXPECT_LT(sum_diff / static_cast<double>(initial.size()), 1e-4);
  }
}

TEST(FmnistCuda, CliModelTrainedOnGpuValidatesOnCpu) {
  SKIP_WITHOUT_GPU();
  TempDir d, data;
  WriteBandsIdxDir(data, 320, 4);
  std::string out;
  ASSERT_EQ(RunFmnist("prep --data " + data.path() + " --out " + d / "prep" +
                          " --validation 0.2 --seed 3",
                      &out),
            0)
      << out;
  std::map<std::string, Json> trained, validated;
  for (const std::string device : {"cpu", "cuda"}) {
    out.clear();
    ASSERT_EQ(RunFmnist("train --data " + d / "prep" + " --out " + d / ("train-" + device) +
                            " --epochs 3 --batch 32 --hidden 64 --seed 3 --device " + device,
                        &out),
              0)
        << out;
    std::printf("%s", out.c_str());
    auto metrics = ParseJson(ReadAll(d / ("train-" + device + "/metrics.json")));
    ASSERT_TRUE(metrics.ok());
    EXPECT_EQ((*metrics)["device"], device);
    EXPECT_GT((*metrics)["images_per_second"].get<double>(), 0);
    trained[device] = *metrics;
    // The model, whoever trained it, is validated on the CPU.
    out.clear();
    ASSERT_EQ(RunFmnist("validate --data " + data.path() + " --model " + d / ("train-" + device) +
                            " --out " + d / ("validate-" + device),
                        &out),
              0)
        << out;
    metrics = ParseJson(ReadAll(d / ("validate-" + device + "/metrics.json")));
    ASSERT_TRUE(metrics.ok());
    validated[device] = *metrics;
  }
  EXPECT_NEAR(trained["cuda"]["train_loss"].get<double>(),
              trained["cpu"]["train_loss"].get<double>(), 1e-3);
  EXPECT_NEAR(trained["cuda"]["validation_accuracy"].get<double>(),
              trained["cpu"]["validation_accuracy"].get<double>(), 2.0 / 64);
  const double cuda_acc = validated["cuda"]["accuracy"].get<double>();
  const double cpu_acc = validated["cpu"]["accuracy"].get<double>();
  std::printf("test accuracy of the model trained on cuda %.4f, on cpu %.4f\n", cuda_acc, cpu_acc);
  EXPECT_NEAR(cuda_acc, cpu_acc, 0.02);
  EXPECT_GT(cuda_acc, 0.8);

  // Where a GPU is usable, auto picks it and says which.
  out.clear();
  ASSERT_EQ(RunFmnist("train --data " + d / "prep" + " --out " + d / "train-auto" +
                          " --epochs 1 --hidden 8",
                      &out),
            0)
      << out;
  EXPECT_NE(out.find("device auto -> cuda: "), std::string::npos) << out;
}

// ---- the real data set ----

TEST(FmnistRealData, ShortTrainingRunReachesSeventyFivePercent) {
  if (!fs::exists(kRealData)) {
    GTEST_SKIP() << kRealData << " is absent (apt-get install dataset-fashion-mnist)";
  }
  auto all = ReadIdxSplit(kRealData, "train");
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  ASSERT_EQ(all->size(), 60000u);
  auto test = ReadIdxSplit(kRealData, "t10k");
  ASSERT_TRUE(test.ok()) << test.status().ToString();
  ASSERT_EQ(test->size(), 10000u);

  Dataset train;
  train.pixels.assign(all->pixels.begin(), all->pixels.begin() + 5000 * kPixels);
  train.labels.assign(all->labels.begin(), all->labels.begin() + 5000);
  auto m = MakeMlp({784, 256, 128, 10}, 1);
  ASSERT_TRUE(m.ok());
  TrainOptions o;
  o.epochs = 1;
  o.batch = 32;
  o.lr = 2e-3;
  auto r = Train(*m, train, Dataset{}, o, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  Evaluation ev = Evaluate(*m, *test, 2);
  std::printf("5,000 images, 1 epoch: test accuracy %.4f, %.0f images/s\n", ev.accuracy,
              r->images_per_second);
  EXPECT_GT(ev.accuracy, 0.75);
  int64_t total = 0;
  for (auto& row : ev.confusion) {
    for (int64_t v : row) total += v;
  }
  EXPECT_EQ(total, 10000);
}

}  // namespace
}  // namespace epoch::fmnist
