#include "examples/fashion-mnist/mlp.h"

#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "common/files.h"
#include "examples/fashion-mnist/gemm.h"
#include "examples/fashion-mnist/rng.h"

namespace epoch::fmnist {

static_assert(std::endian::native == std::endian::little,
              "model.bin is little-endian; add byte swapping for this host");

namespace {

constexpr int kMaxWidth = 65536;
constexpr int kMaxLayers = 16;

Status CheckSizes(const std::vector<int>& sizes, const std::string& what) {
  if (sizes.size() < 2 || sizes.size() > kMaxLayers + 1) {
    return InvalidArgument(what + ": a network has 2.." + std::to_string(kMaxLayers + 1) +
                           " widths, got " + std::to_string(sizes.size()));
  }
  for (int s : sizes) {
    if (s < 1 || s > kMaxWidth) {
      return InvalidArgument(what + ": layer width " + std::to_string(s) + " is not in 1.." +
                             std::to_string(kMaxWidth));
    }
  }
  return Status::Ok();
}

void AddBias(float* z, int rows, int cols, const float* bias) {
  for (int i = 0; i < rows; ++i) {
    float* zi = z + static_cast<size_t>(i) * cols;
    for (int j = 0; j < cols; ++j) zi[j] += bias[j];
  }
}

void Relu(float* z, size_t n) {
  for (size_t i = 0; i < n; ++i) z[i] = std::max(z[i], 0.0f);
}

}  // namespace

size_t Mlp::WeightOffset(int l) const {
  size_t off = 0;
  for (int i = 0; i < l; ++i) off += static_cast<size_t>(sizes[i] + 1) * sizes[i + 1];
  return off;
}

size_t Mlp::BiasOffset(int l) const {
  return WeightOffset(l) + static_cast<size_t>(sizes[l]) * sizes[l + 1];
}

size_t Mlp::ParamCount(const std::vector<int>& sizes) {
  size_t n = 0;
  for (size_t i = 0; i + 1 < sizes.size(); ++i) {
    n += static_cast<size_t>(sizes[i] + 1) * sizes[i + 1];
  }
  return n;
}

Result<Mlp> MakeMlp(const std::vector<int>& sizes, uint64_t seed) {
  RETURN_IF_ERROR(CheckSizes(sizes, "network"));
  Mlp m;
  m.sizes = sizes;
  m.params.assign(Mlp::ParamCount(sizes), 0.0f);
  Rng rng(seed);
  for (int l = 0; l < m.layers(); ++l) {
    const double stddev = std::sqrt(2.0 / sizes[l]);
    float* w = m.params.data() + m.WeightOffset(l);
    const size_t n = static_cast<size_t>(sizes[l]) * sizes[l + 1];
    for (size_t i = 0; i < n; ++i) w[i] = static_cast<float>(rng.Normal() * stddev);
  }
  return m;
}

Workspace::Workspace(const std::vector<int>& sizes, int rows) : max_rows(rows) {
  int widest = *std::max_element(sizes.begin(), sizes.end());
  int widest_layer = 0;
  for (size_t l = 0; l + 1 < sizes.size(); ++l) {
    widest_layer = std::max(widest_layer, sizes[l] * sizes[l + 1]);
  }
  for (size_t l = 1; l < sizes.size(); ++l) {
    acts.emplace_back(static_cast<size_t>(rows) * sizes[l]);
  }
  delta.resize(static_cast<size_t>(rows) * widest);
  delta_prev.resize(static_cast<size_t>(rows) * widest);
  a_t.resize(static_cast<size_t>(rows) * widest);
  w_t.resize(static_cast<size_t>(widest_layer));
}

const float* Forward(const Mlp& m, const float* x, int rows, Workspace& ws) {
  const float* in = x;
  for (int l = 0; l < m.layers(); ++l) {
    const int ni = m.sizes[l], no = m.sizes[l + 1];
    float* z = ws.acts[l].data();
    Gemm(rows, no, ni, in, ni, m.params.data() + m.WeightOffset(l), no, z, no, false);
    AddBias(z, rows, no, m.params.data() + m.BiasOffset(l));
    if (l + 1 < m.layers()) Relu(z, static_cast<size_t>(rows) * no);
    in = z;
  }
  return in;
}

BatchStats LossAndGradient(const Mlp& m, const float* x, const uint8_t* labels, int rows,
                           float scale, Workspace& ws, float* grad) {
  BatchStats stats;
  const int classes = m.outputs();
  const float* logits = Forward(m, x, rows, ws);

  // Softmax cross-entropy: d loss / d logit = softmax - onehot(label).
  float* delta = ws.delta.data();
  for (int i = 0; i < rows; ++i) {
    const float* zi = logits + static_cast<size_t>(i) * classes;
    float* di = delta + static_cast<size_t>(i) * classes;
    const int label = labels[i];
    int best = 0;
    float zmax = zi[0];
    for (int j = 1; j < classes; ++j) {
      if (zi[j] > zmax) {
        zmax = zi[j];
        best = j;
      }
    }
    double sum = 0;
    for (int j = 0; j < classes; ++j) {
      di[j] = std::exp(zi[j] - zmax);
      sum += di[j];
    }
    stats.loss_sum += std::log(sum) - (static_cast<double>(zi[label]) - zmax);
    stats.correct += best == label;
    const float inv = static_cast<float>(1.0 / sum);
    for (int j = 0; j < classes; ++j) di[j] = di[j] * inv * scale;
    di[label] -= scale;
  }

  // Backward, last layer first. delta holds d loss / d (this layer's pre-activation).
  for (int l = m.layers() - 1; l >= 0; --l) {
    const int ni = m.sizes[l], no = m.sizes[l + 1];
    const float* in = l == 0 ? x : ws.acts[l - 1].data();
    // dW = in^T * delta: transpose in (rows x ni) so the product streams rows of delta.
    Transpose(rows, ni, in, ni, ws.a_t.data(), rows);
    Gemm(ni, no, rows, ws.a_t.data(), rows, delta, no, grad + m.WeightOffset(l), no, false);
    float* gb = grad + m.BiasOffset(l);
    std::fill(gb, gb + no, 0.0f);
    for (int i = 0; i < rows; ++i) {
      const float* di = delta + static_cast<size_t>(i) * no;
      for (int j = 0; j < no; ++j) gb[j] += di[j];
    }
    if (l == 0) break;
    // d in = delta * W^T, then through the ReLU that produced `in`.
    Transpose(ni, no, m.params.data() + m.WeightOffset(l), no, ws.w_t.data(), ni);
    float* dprev = ws.delta_prev.data();
    Gemm(rows, ni, no, delta, no, ws.w_t.data(), ni, dprev, ni, false);
    const size_t n = static_cast<size_t>(rows) * ni;
    for (size_t i = 0; i < n; ++i) {
      if (in[i] <= 0.0f) dprev[i] = 0.0f;
    }
    std::swap(ws.delta, ws.delta_prev);
    delta = ws.delta.data();
  }
  return stats;
}

Result<std::string> EncodeModel(const Mlp& m) {
  RETURN_IF_ERROR(CheckSizes(m.sizes, "SaveModel"));
  if (m.params.size() != Mlp::ParamCount(m.sizes)) {
    return InvalidArgument("SaveModel: parameter count does not match the sizes");
  }
  std::string out;
  auto put32 = [&](uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); };
  put32(kModelMagic);
  put32(kModelVersion);
  put32(static_cast<uint32_t>(m.layers()));
  for (int s : m.sizes) put32(static_cast<uint32_t>(s));
  out.append(reinterpret_cast<const char*>(m.params.data()), m.params.size() * sizeof(float));
  put32(static_cast<uint32_t>(crc32_z(0, reinterpret_cast<const Bytef*>(out.data()), out.size())));
  return out;
}

Status SaveModel(const Mlp& m, const std::string& path) {
  ASSIGN_OR_RETURN(std::string out, EncodeModel(m));
  std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return Internal("cannot create " + tmp + ": " + std::strerror(errno));
  bool ok = std::fwrite(out.data(), 1, out.size(), f) == out.size();
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) return Internal("cannot write " + tmp + ": " + std::strerror(errno));
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return Internal("cannot rename " + tmp + " to " + path + ": " + std::strerror(errno));
  }
  return Status::Ok();
}

Result<Mlp> LoadModel(const std::string& path) {
  ASSIGN_OR_RETURN(std::string b, ReadFile(path, size_t{1} << 30));
  return DecodeModel(b, path);
}

Result<Mlp> DecodeModel(std::string_view b, const std::string& path) {
  auto get32 = [&](size_t at) {
    uint32_t v;
    std::memcpy(&v, b.data() + at, 4);
    return v;
  };
  if (b.size() < 16) {
    return Corruption(path + ": truncated: " + std::to_string(b.size()) + " bytes");
  }
  if (get32(0) != kModelMagic) return Corruption(path + ": not an fmnist model (bad magic)");
  if (get32(4) != kModelVersion) {
    return Corruption(path + ": model version " + std::to_string(get32(4)) +
                      ", this program reads version " + std::to_string(kModelVersion));
  }
  uint32_t layers = get32(8);
  if (layers < 1 || layers > kMaxLayers || b.size() < 12 + 4 * (layers + 1) + 4) {
    return Corruption(path + ": implausible layer count " + std::to_string(layers) +
                      " or truncated header");
  }
  Mlp m;
  for (uint32_t i = 0; i <= layers; ++i) {
    uint32_t s = get32(12 + 4 * i);
    if (s < 1 || s > kMaxWidth) {
      return Corruption(path + ": implausible layer width " + std::to_string(s));
    }
    m.sizes.push_back(static_cast<int>(s));
  }
  const size_t header = 12 + 4 * (layers + 1);
  const size_t expected = header + Mlp::ParamCount(m.sizes) * sizeof(float) + 4;
  if (b.size() != expected) {
    return Corruption(path + ": " + std::to_string(b.size()) + " bytes, but a model of these " +
                      "sizes is " + std::to_string(expected) +
                      (b.size() < expected ? " (truncated)" : ""));
  }
  uint32_t stored = get32(b.size() - 4);
  uint32_t actual =
      static_cast<uint32_t>(crc32_z(0, reinterpret_cast<const Bytef*>(b.data()), b.size() - 4));
  if (stored != actual) return Corruption(path + ": checksum mismatch (corrupt model)");
  m.params.resize(Mlp::ParamCount(m.sizes));
  std::memcpy(m.params.data(), b.data() + header, m.params.size() * sizeof(float));
  for (float v : m.params) {
    if (!std::isfinite(v)) return Corruption(path + ": a parameter is not finite");
  }
  return m;
}

Result<std::string> FindModelFile(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return NotFound(path + ": no such file or directory");
  if (S_ISDIR(st.st_mode)) {
    std::string f = path + "/model.bin";
    if (!PathExists(f)) return NotFound(f + ": no such file (is this a train output dir?)");
    return f;
  }
  return path;
}

}  // namespace epoch::fmnist
