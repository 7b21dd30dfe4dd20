// Fashion-MNIST in memory, and the IDX files it is distributed as.
//
// IDX (http://yann.lecun.com/exdb/mnist/), big-endian, optionally gzip-compressed
// (read through zlib, which also reads uncompressed files unchanged):
//   images := magic:u32 = 0x00000803 (2051)  count:u32  rows:u32  cols:u32
//             pixel:u8[count * rows * cols]           row-major, 0 = background
//   labels := magic:u32 = 0x00000801 (2049)  count:u32  label:u8[count]
// Fashion-MNIST is 60,000 training and 10,000 test images of 28x28, labels 0..9
// (kClassNames). A file with bytes after its data is rejected like a truncated one:
// either means it is not the file its header describes.
//
// Every problem is a Status whose message names the file and what is wrong with it:
// kNotFound (missing file), kCorruption (bad magic, truncated, trailing bytes, a
// broken gzip stream, label out of range, counts that do not match), kInvalidArgument
// (sizes other than 28x28).
//
// Thread-safety: plain values and free functions.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace epoch::fmnist {

inline constexpr int kRows = 28;
inline constexpr int kCols = 28;
inline constexpr int kPixels = kRows * kCols;  // 784, the network's input width
inline constexpr int kClasses = 10;
inline constexpr uint32_t kIdxImagesMagic = 2051;
inline constexpr uint32_t kIdxLabelsMagic = 2049;

// Index = label.
inline constexpr std::array<std::string_view, kClasses> kClassNames = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

// Images normalised to [0, 1] (pixel / 255) and their labels.
struct Dataset {
  std::vector<float> pixels;    // size() * kPixels, row-major, one image after another
  std::vector<uint8_t> labels;  // 0..9

  size_t size() const { return labels.size(); }
  const float* image(size_t i) const { return pixels.data() + i * kPixels; }
};

// The raw contents of one IDX images file.
struct IdxImages {
  uint32_t count = 0, rows = 0, cols = 0;
  std::vector<uint8_t> pixels;  // count * rows * cols
};

// Reads an IDX images file (.gz or not). Errors as in the header comment; sizes other
// than 28x28 are kInvalidArgument (this program's network is 784 wide).
Result<IdxImages> ReadIdxImages(const std::string& path);

// Reads an IDX labels file (.gz or not) and checks every label is 0..9.
Result<std::vector<uint8_t>> ReadIdxLabels(const std::string& path);

// Reads a pair and checks they describe the same number of images; pixels are
// normalised to [0, 1].
Result<Dataset> ReadIdxPair(const std::string& images_path, const std::string& labels_path);

// The two files of a split in a data set directory: `<prefix>-images-idx3-ubyte` and
// `<prefix>-labels-idx1-ubyte`, each with or without ".gz" (".gz" preferred when both
// exist); prefix is "train" or "t10k". kNotFound naming the file that is missing.
struct IdxSplitFiles {
  std::string images, labels;
};
Result<IdxSplitFiles> FindIdxSplit(const std::string& dir, std::string_view prefix);

// FindIdxSplit + ReadIdxPair.
Result<Dataset> ReadIdxSplit(const std::string& dir, std::string_view prefix);

// True when dir holds the t10k pair (with or without .gz): a data set directory.
bool IsIdxDir(const std::string& dir);

}  // namespace epoch::fmnist
