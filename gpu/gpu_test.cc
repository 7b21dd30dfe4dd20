#include "gpu/gpu.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <optional>
#include <string>

#ifndef EPOCH_GPU_TEST_CUDA_COMPILED
#error "the build says whether CUDA was compiled in"
#endif

namespace epoch::gpu {
namespace {

constexpr bool kCudaCompiled = EPOCH_GPU_TEST_CUDA_COMPILED;

// Sets (or unsets, with nullopt) an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = getenv(name)) old_ = old;
    if (value) {
      setenv(name, value->c_str(), 1);
    } else {
      unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      setenv(name_, old_->c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// True when s is `shape` with every 'x' a lowercase hex digit and the rest equal
// ("xxxx:xx:xx.0"). (No std::regex: GCC 12 warns inside it under the asan preset.)
bool MatchesShape(const std::string& s, const std::string& shape) {
  if (s.size() != shape.size()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    bool hex = (s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f');
    if (shape[i] == 'x' ? !hex : s[i] != shape[i]) return false;
  }
  return true;
}

// "cudaCall: text (35)": the call, the runtime's text and the numeric code.
bool LooksLikeCudaError(const std::string& s) {
  size_t colon = s.find(": "), open = s.rfind(" (");
  if (s.rfind("cuda", 0) != 0 || colon == std::string::npos || open == std::string::npos ||
      open < colon + 2 || s.back() != ')' || open + 3 > s.size() - 1) {
    return false;
  }
  for (size_t i = open + 2; i + 1 < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
  }
  return true;
}

// On a GPU machine, check_on_device.sh sets this so "no GPU" fails instead of skipping.
bool GpuRequired() {
  const char* v = getenv("EPOCH_GPU_TEST_REQUIRE_GPU");
  return v != nullptr && std::string(v) == "1";
}

TEST(GpuTest, BuildFlagMatchesLibrary) { EXPECT_EQ(CudaCompiledIn(), kCudaCompiled); }

TEST(GpuTest, TestHelpersAreStrict) {
  EXPECT_TRUE(MatchesShape("0000:17:00.0", "xxxx:xx:xx.0"));
  EXPECT_FALSE(MatchesShape("0000:17:0g.0", "xxxx:xx:xx.0"));
  EXPECT_FALSE(MatchesShape("0000:17:00.00", "xxxx:xx:xx.0"));
  EXPECT_TRUE(LooksLikeCudaError(
      "cudaGetDeviceCount: CUDA driver version is insufficient for CUDA runtime version (35)"));
  EXPECT_FALSE(LooksLikeCudaError("cudaGetDeviceCount: no code"));
  EXPECT_FALSE(LooksLikeCudaError("cudaGetDeviceCount: bad code (3x)"));
  EXPECT_FALSE(LooksLikeCudaError("something else (35)"));
}

TEST(GpuTest, FakeInventoryShape) {
  Inventory inv = FakeInventory(3, "c7");
  EXPECT_EQ(inv.cuda_compiled, kCudaCompiled);
  EXPECT_NE(inv.reason.find("EPOCH_FAKE_GPUS=3"), std::string::npos) << inv.reason;
  ASSERT_EQ(inv.gpus.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    const GpuInfo& g = inv.gpus[static_cast<size_t>(i)];
    EXPECT_EQ(g.index, i);
    EXPECT_EQ(g.uuid, "GPU-sim-c7-" + std::to_string(i));
    EXPECT_EQ(g.name, "Simulated GPU");
    EXPECT_EQ(g.memory_bytes, int64_t{80} << 30);
    EXPECT_TRUE(g.healthy);
    EXPECT_TRUE(g.simulated);
    EXPECT_EQ(g.visible_id, std::to_string(i));
    EXPECT_EQ(g.reason, "");
  }
  EXPECT_TRUE(FakeInventory(0, "c7").gpus.empty());
  EXPECT_TRUE(FakeInventory(-2, "c7").gpus.empty());
}

TEST(GpuTest, FakeInventoryFromVisibleFollowsTheSchedulersGrant) {
  Inventory inv = FakeInventoryFromVisible("2,3", "node1");
  ASSERT_EQ(inv.gpus.size(), 2u);
  EXPECT_EQ(inv.gpus[0].index, 0);
  EXPECT_EQ(inv.gpus[0].visible_id, "2");
  EXPECT_EQ(inv.gpus[0].uuid, "GPU-sim-node1-2");
  EXPECT_EQ(inv.gpus[1].index, 1);
  EXPECT_EQ(inv.gpus[1].visible_id, "3");
  EXPECT_TRUE(inv.gpus[1].simulated);
  EXPECT_NE(inv.reason.find("CUDA_VISIBLE_DEVICES=2,3"), std::string::npos) << inv.reason;
  for (const char* bad : {"", "1,,2", "GPU-abc", "1,x", "-1"}) {
    Inventory b = FakeInventoryFromVisible(bad, "n");
    EXPECT_TRUE(b.gpus.empty()) << bad;
    EXPECT_NE(b.reason.find("not a list of GPU ordinals"), std::string::npos) << bad;
  }
}

TEST(GpuTest, DiscoverFromEnvUsesFakeGpus) {
  ScopedEnv env("EPOCH_FAKE_GPUS", "3");
  Inventory inv = DiscoverFromEnv("c-1");
  ASSERT_EQ(inv.gpus.size(), 3u);
  EXPECT_EQ(inv.gpus[2].uuid, "GPU-sim-c-1-2");
  EXPECT_EQ(inv.gpus[2].visible_id, "2");
  for (const auto& g : inv.gpus) {
    EXPECT_TRUE(g.simulated);
    EXPECT_TRUE(g.healthy);
  }
  EXPECT_EQ(inv.cuda_compiled, kCudaCompiled);
}

TEST(GpuTest, DiscoverFromEnvZeroFakeGpus) {
  ScopedEnv env("EPOCH_FAKE_GPUS", "0");
  Inventory inv = DiscoverFromEnv("c-1");
  EXPECT_TRUE(inv.gpus.empty());
  EXPECT_NE(inv.reason.find("EPOCH_FAKE_GPUS=0"), std::string::npos) << inv.reason;
}

TEST(GpuTest, DiscoverFromEnvRejectsInvalidCounts) {
  for (const char* bad : {"abc", "-1", "2x", " 2", "+3", "1.5", "99999999"}) {
    ScopedEnv env("EPOCH_FAKE_GPUS", bad);
    Inventory inv = DiscoverFromEnv("c-1");
    EXPECT_TRUE(inv.gpus.empty()) << bad;
    EXPECT_NE(inv.reason.find(std::string("EPOCH_FAKE_GPUS='") + bad + "'"), std::string::npos)
        << bad << ": " << inv.reason;
    EXPECT_EQ(inv.cuda_compiled, kCudaCompiled);
  }
}

// Real discovery: on a machine without a GPU (or driver) it reports zero GPUs and why;
// on one with GPUs, well-formed entries.
TEST(GpuTest, RealDiscoverReportsWhyOrWellFormedGpus) {
  Inventory inv = Discover();
  EXPECT_EQ(inv.cuda_compiled, kCudaCompiled);
  if (!kCudaCompiled) {
    EXPECT_TRUE(inv.gpus.empty());
    EXPECT_NE(inv.reason.find("CUDA support was not compiled in"), std::string::npos)
        << inv.reason;
    return;
  }
  if (inv.gpus.empty()) {
    // e.g. "cudaGetDeviceCount: CUDA driver version is insufficient ... (35)"
    EXPECT_TRUE(LooksLikeCudaError(inv.reason) ||
                inv.reason == "the CUDA runtime reports no devices")
        << inv.reason;
    EXPECT_FALSE(GpuRequired()) << "no GPU found: " << inv.reason;
    return;
  }
  for (const auto& g : inv.gpus) {
    EXPECT_TRUE(MatchesShape(g.uuid, "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")) << g.uuid;
    EXPECT_TRUE(MatchesShape(g.pci_bus_id, "xxxx:xx:xx.0")) << g.pci_bus_id;
    EXPECT_FALSE(g.name.empty());
    EXPECT_GT(g.memory_bytes, 0);
    EXPECT_GT(g.free_bytes, 0);
    EXPECT_LE(g.free_bytes, g.memory_bytes);
    EXPECT_GE(g.cc_major, 7);
    EXPECT_EQ(g.visible_id, g.uuid);
    EXPECT_FALSE(g.simulated);
    EXPECT_FALSE(g.healthy);  // not probed yet
    EXPECT_EQ(g.reason, "not probed");
  }
}

TEST(GpuTest, ProbePassesOnEveryRealGpu) {
  Inventory inv = Discover();
  if (inv.gpus.empty()) {
    ASSERT_FALSE(GpuRequired()) << "EPOCH_GPU_TEST_REQUIRE_GPU=1 but no GPU: " << inv.reason;
    GTEST_SKIP() << "no GPU on this machine (" << inv.reason
                 << "); gpu/check_on_device.sh runs this on one";
  }
  for (auto& g : inv.gpus) {
    Status st = Probe(g);
    EXPECT_TRUE(st.ok()) << g.uuid << ": " << st.ToString();
    EXPECT_TRUE(g.healthy) << g.uuid;
    EXPECT_EQ(g.reason, "");
  }
  // Probing resets the device: a second round must pass too.
  Status again = Probe(inv.gpus[0]);
  EXPECT_TRUE(again.ok()) << again.ToString();
}

TEST(GpuTest, ProbeOfAGpuThatIsNotThereFails) {
  GpuInfo g;
  g.index = 999;
  g.uuid = "GPU-00000000-0000-0000-0000-000000000000";
  g.healthy = true;
  Status st = Probe(g);
  EXPECT_FALSE(st.ok());
  EXPECT_FALSE(g.healthy);
  EXPECT_EQ(g.reason, st.message());
  if (kCudaCompiled) {
    EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.ToString();
    EXPECT_NE(st.message().find("cuda"), std::string::npos) << st.ToString();
  } else {
    EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(st.message().find("CUDA support was not compiled in"), std::string::npos);
  }
}

TEST(GpuTest, ProbeWithoutUuidOrOnSimulatedGpu) {
  GpuInfo sim = FakeInventory(1, "c").gpus[0];
  EXPECT_TRUE(Probe(sim).ok());
  EXPECT_TRUE(sim.healthy);
  if (kCudaCompiled) {
    GpuInfo broken;
    broken.reason = "cudaGetDeviceProperties: unknown error (999)";
    Status st = Probe(broken);
    EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition);
    EXPECT_EQ(broken.reason, "cudaGetDeviceProperties: unknown error (999)");
    EXPECT_FALSE(broken.healthy);
  }
}

TEST(GpuTest, GpuToJson) {
  GpuInfo g;
  g.index = 2;
  g.uuid = "GPU-12345678-abcd-ef01-2345-6789abcdef01";
  g.name = "NVIDIA H200";
  g.pci_bus_id = "0000:17:00.0";
  g.memory_bytes = 150000000000;
  g.free_bytes = 149000000000;
  g.cc_major = 9;
  g.cc_minor = 0;
  g.healthy = true;
  g.visible_id = g.uuid;
  Json expected = {{"index", 2},
                   {"uuid", "GPU-12345678-abcd-ef01-2345-6789abcdef01"},
                   {"name", "NVIDIA H200"},
                   {"pci_bus_id", "0000:17:00.0"},
                   {"memory_bytes", 150000000000},
                   {"free_bytes", 149000000000},
                   {"compute_capability", "9.0"},
                   {"healthy", true},
                   {"simulated", false},
                   {"reason", ""}};
  EXPECT_EQ(ToJson(g), expected);
  EXPECT_TRUE(ToJson(g)["index"].is_number_integer());
}

TEST(GpuTest, InventoryToJson) {
  Inventory inv = FakeInventory(2, "c3");
  Json j = ToJson(inv);
  ASSERT_EQ(j["gpus"].size(), 2u);
  EXPECT_EQ(j["gpus"][1]["uuid"], "GPU-sim-c3-1");
  EXPECT_EQ(j["gpus"][1]["index"], 1);
  EXPECT_EQ(j["gpus"][1]["simulated"], true);
  EXPECT_EQ(j["gpus"][1]["compute_capability"], "9.0");
  EXPECT_EQ(j["cuda"], Json({{"compiled", kCudaCompiled}, {"reason", inv.reason}}));

  Inventory none;
  none.reason = "cudaGetDeviceCount: no CUDA-capable device is detected (100)";
  EXPECT_EQ(ToJson(none),
            Json({{"gpus", Json::array()},
                  {"cuda",
                   {{"compiled", false},
                    {"reason", "cudaGetDeviceCount: no CUDA-capable device is detected (100)"}}}}));
}

TEST(GpuTest, DiscoverFromEnvWithoutFakeGpusNeverCrashes) {
  ScopedEnv env("EPOCH_FAKE_GPUS", std::nullopt);
  Inventory inv = DiscoverFromEnv("c-1");
  EXPECT_EQ(inv.cuda_compiled, kCudaCompiled);
  if (inv.gpus.empty()) {
    EXPECT_FALSE(inv.reason.empty());
  }
  for (const auto& g : inv.gpus) {
    EXPECT_FALSE(g.simulated);
    EXPECT_EQ(g.healthy, g.reason.empty()) << g.reason;
  }
}

}  // namespace
}  // namespace epoch::gpu
