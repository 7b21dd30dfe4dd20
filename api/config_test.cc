#include <gtest/gtest.h>

#include <map>
#include <string>

#include "api/config.h"

namespace epoch::api {
namespace {

TEST(ConfigTest, DefaultsMatchTheReferenceChart) {
  Config c;
  EXPECT_EQ(c.base_port, 30745);
  EXPECT_EQ(c.max_replicas, 10);
  EXPECT_EQ(c.container_cpu_millis, 1000);
  EXPECT_EQ(c.container_memory_bytes, 2144LL << 20);
  EXPECT_EQ(c.container_gpus, 0);
  EXPECT_EQ(c.allocation_unit, 2);
  EXPECT_EQ(c.allocation_interval, std::chrono::seconds(120));
}

TEST(ConfigTest, ValuesThenSetOverride) {
  Config c;
  ASSERT_TRUE(ApplyValues(&c, *ParseJson(R"({"sig": {"maxReplicas": 4, "cpu": "2"},
      "cluster.basePort": 31000})")).ok());
  EXPECT_EQ(c.max_replicas, 4);
  EXPECT_EQ(c.container_cpu_millis, 2000);
  EXPECT_EQ(c.base_port, 31000);
  ASSERT_TRUE(ApplySetArg(&c, "sig.maxReplicas=2").ok());
  ASSERT_TRUE(ApplySetArg(&c, "sig.memory=512Mi").ok());
  ASSERT_TRUE(ApplySetArg(&c, "executor.leaseTime=1500ms").ok());
  EXPECT_EQ(c.max_replicas, 2);
  EXPECT_EQ(c.container_memory_bytes, 512LL << 20);
  EXPECT_EQ(c.lease, std::chrono::milliseconds(1500));
}

TEST(ConfigTest, ErrorsNameTheKey) {
  Config c;
  Status st = ApplySetArg(&c, "sig.maxReplica=3");
  EXPECT_EQ(st.message(), "unknown configuration key 'sig.maxReplica'");
  st = ApplySetArg(&c, "sig.cpu=lots");
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message().rfind("sig.cpu: ", 0), 0u) << st.message();
  st = ApplySetArg(&c, "sig.maxReplicas=-1");
  EXPECT_NE(st.message().find("out of range"), std::string::npos);
  st = ApplySetArg(&c, "nonsense");
  EXPECT_NE(st.message().find("key=value"), std::string::npos);
  st = ApplySetArg(&c, "executor.backend=kubernetes");
  EXPECT_NE(st.message().find("unknown backend"), std::string::npos);
  EXPECT_EQ(c.max_replicas, 10);  // nothing changed by the failures
}

TEST(ConfigTest, SlurmBackendKeys) {
  Config c;
  ASSERT_TRUE(ApplySetArg(&c, "executor.backend=slurm").ok());
  EXPECT_EQ(c.backend, "slurm");
  ASSERT_TRUE(ApplyValues(&c, Json::parse(R"({"slurm": {"partition": "gpu", "account": "ml-team",
      "qos": "high", "timeLimit": "2-00:00:00", "extraArgs": ["--nice=10", "--exclusive"]},
      "executor": {"watchInterval": "5s"}})")).ok());
  EXPECT_EQ(c.slurm_partition, "gpu");
  EXPECT_EQ(c.slurm_account, "ml-team");
  EXPECT_EQ(c.slurm_qos, "high");
  EXPECT_EQ(c.slurm_time_limit, "2-00:00:00");
  EXPECT_EQ(c.slurm_extra_args, (std::vector<std::string>{"--nice=10", "--exclusive"}));
  EXPECT_EQ(c.watch_interval, std::chrono::seconds(5));
  // --set takes the arguments as one whitespace-separated string.
  ASSERT_TRUE(ApplySetArg(&c, "slurm.extraArgs=--nice=5 --comment=epoch").ok());
  EXPECT_EQ(c.slurm_extra_args, (std::vector<std::string>{"--nice=5", "--comment=epoch"}));
  Json j = c.ToJson();
  EXPECT_EQ(j["slurm.partition"], "gpu");
  EXPECT_EQ(j["slurm.extraArgs"][1], "--comment=epoch");
  // Nothing that could smuggle shell or option syntax in.
  Status st = ApplySetArg(&c, "slurm.partition=gpu;rm");
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("slurm.partition"), std::string::npos) << st.message();
  EXPECT_FALSE(ApplySetArg(&c, "slurm.account=--uid=0").ok());
  st = ApplySetArg(&c, "slurm.extraArgs=nice");
  EXPECT_NE(st.message().find("not an sbatch option"), std::string::npos) << st.message();
  EXPECT_FALSE(ApplyValues(&c, Json::parse(R"({"slurm": {"extraArgs": [1]}})")).ok());
  EXPECT_FALSE(ApplySetArg(&c, "executor.watchInterval=1ms").ok());
  EXPECT_EQ(c.slurm_partition, "gpu");  // nothing changed by the failures
  EXPECT_EQ(c.slurm_extra_args.size(), 2u);
}

TEST(ConfigTest, TenantGpuQuotasFromValuesAndSet) {
  Config c;
  EXPECT_TRUE(c.tenant_max_gpus.empty());  // no quota: unlimited
  ASSERT_TRUE(ApplyValues(&c, *ParseJson(R"({"tenants": {"ml": {"maxGpus": 4},
      "team.v2_x-y": {"maxGpus": 0}}, "tenants.cv.maxGpus": "2"})")).ok());
  EXPECT_EQ(c.tenant_max_gpus, (std::map<std::string, int>{{"ml", 4}, {"team.v2_x-y", 0},
                                                           {"cv", 2}}));
  ASSERT_TRUE(ApplySetArg(&c, "tenants.ml.maxGpus=8").ok());
  ASSERT_TRUE(ApplySetArg(&c, "tenants.default.maxGpus=1").ok());
  EXPECT_EQ(c.tenant_max_gpus["ml"], 8);
  EXPECT_EQ(c.tenant_max_gpus["default"], 1);
  EXPECT_EQ(c.ToJson()["tenants.ml.maxGpus"], 8);
  bool described = false;
  for (const auto& [k, d] : DescribeKeys()) described |= k == "tenants.<name>.maxGpus";
  EXPECT_TRUE(described);
}

TEST(ConfigTest, RetentionKeysDefaultsAndTenantOverrides) {
  Config c;
  EXPECT_EQ(c.retention_outputs, Micros{0});
  EXPECT_EQ(c.retention_interval, std::chrono::minutes(10));
  ASSERT_TRUE(ApplySetArg(&c, "retention.outputs=30d").ok());
  ASSERT_TRUE(ApplySetArg(&c, "retention.logs=12h").ok());
  ASSERT_TRUE(ApplySetArg(&c, "retention.interval=1m").ok());
  // A tenant name may hold dots: the setting is the last two words.
  ASSERT_TRUE(
      ApplyValues(&c, *ParseJson(R"({"tenants": {"ml.team": {"retention": {"outputs": "0s"}}}})"))
          .ok());
  ASSERT_TRUE(ApplySetArg(&c, "tenants.cv.retention.logs=1h").ok());
  EXPECT_EQ(c.retention_outputs, std::chrono::hours(24 * 30));
  EXPECT_EQ(c.retention_logs, std::chrono::hours(12));
  EXPECT_EQ(c.retention_interval, std::chrono::minutes(1));
  EXPECT_EQ(c.tenant_retention_outputs.at("ml.team"), Micros{0});
  EXPECT_EQ(c.tenant_retention_logs.at("cv"), std::chrono::hours(1));
  Json j = c.ToJson();
  EXPECT_EQ(j["retention.outputs"], "720h");
  EXPECT_EQ(j["tenants.cv.retention.logs"], "1h");
  EXPECT_EQ(ApplySetArg(&c, "tenants.cv.retention.logs=soon").message(),
            "tenants.cv.retention.logs: invalid duration 'soon': expected a number (e.g. 30s, 5m, "
            "2h)");
  EXPECT_EQ(ApplySetArg(&c, "retention.interval=0s").message(),
            "retention.interval: must be above 0s");
  EXPECT_EQ(ApplySetArg(&c, "tenants.cv.retention.forever=1").message(),
            "tenants.cv.retention.forever: unknown tenant setting 'forever' (a tenant has: "
            "maxGpus, runAs, inputRoots, retention.outputs, retention.logs)");
  bool described = false;
  for (const auto& [k, d] : DescribeKeys()) described |= k == "tenants.<name>.retention.outputs";
  EXPECT_TRUE(described);
}

TEST(ConfigTest, CacheMaxEntriesDefaultsAndBounds) {
  Config c;
  EXPECT_EQ(c.cache_max_entries, 10000u);
  ASSERT_TRUE(ApplySetArg(&c, "cache.maxEntries=50").ok());
  EXPECT_EQ(c.cache_max_entries, 50u);
  EXPECT_EQ(c.ToJson()["cache.maxEntries"], 50);
  Status zero = ApplySetArg(&c, "cache.maxEntries=0");
  EXPECT_FALSE(zero.ok());
  EXPECT_NE(zero.message().find("cache.maxEntries"), std::string::npos) << zero.message();
  EXPECT_EQ(c.cache_max_entries, 50u) << "a refused value changes nothing";
}

TEST(ConfigTest, PreemptionIsOffByDefaultAndItsKeysAreChecked) {
  Config c;
  EXPECT_FALSE(c.preemption);
  EXPECT_EQ(c.ToJson()["scheduler.preemption"], "off");
  EXPECT_EQ(c.ToJson()["scheduler.preemptionMinRunTime"], "5m");
  ASSERT_TRUE(ApplySetArg(&c, "scheduler.preemption=priority").ok());
  ASSERT_TRUE(ApplySetArg(&c, "scheduler.preemptionMinRunTime=90s").ok());
  EXPECT_EQ(c.ToJson()["scheduler.elasticMinRunTime"], "1m");
  ASSERT_TRUE(ApplySetArg(&c, "scheduler.elasticMinRunTime=5s").ok());
  EXPECT_EQ(c.elastic_min_run_time, std::chrono::seconds(5));
  EXPECT_TRUE(c.preemption);
  EXPECT_EQ(c.preemption_min_run_time, std::chrono::seconds(90));
  EXPECT_EQ(c.ToJson()["scheduler.preemption"], "priority");
  EXPECT_EQ(ApplySetArg(&c, "scheduler.preemption=fair").message(),
            "scheduler.preemption: must be \"off\" or \"priority\", not \"fair\"");
  EXPECT_TRUE(c.preemption) << "a refused value changes nothing";
  EXPECT_NE(ApplySetArg(&c, "scheduler.preemptionMinRunTime=soon")
                .message()
                .find("scheduler.preemptionMinRunTime: "),
            std::string::npos);
}

TEST(ConfigTest, TenantQuotaErrorsNameTheKeyAndWhatIsWrong) {
  Config c;
  EXPECT_EQ(ApplySetArg(&c, "tenants.ML.maxGpus=4").message(),
            "tenants.ML.maxGpus: invalid tenant name 'ML' (expected [a-z0-9][a-z0-9._-]{0,62})");
  EXPECT_EQ(ApplySetArg(&c, "tenants.-ml.maxGpus=4").message(),
            "tenants.-ml.maxGpus: invalid tenant name '-ml' (expected [a-z0-9][a-z0-9._-]{0,62})");
  EXPECT_EQ(ApplySetArg(&c, "tenants." + std::string(64, 'a') + ".maxGpus=4").code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(ApplySetArg(&c, "tenants..maxGpus=4").message(),
            "tenants..maxGpus: invalid tenant name '' (expected [a-z0-9][a-z0-9._-]{0,62})");
  EXPECT_EQ(ApplySetArg(&c, "tenants.ml.maxCpus=4").message(),
            "tenants.ml.maxCpus: unknown tenant setting 'maxCpus' (a tenant has: maxGpus, runAs, "
            "inputRoots, retention.outputs, retention.logs)");
  EXPECT_EQ(ApplySetArg(&c, "tenants.ml.maxGpus=-1").message(),
            "tenants.ml.maxGpus: -1 is out of range [0, 1000000]");
  EXPECT_EQ(ApplySetArg(&c, "tenants.ml.maxGpus=four").message(),
            "tenants.ml.maxGpus: expected an integer, got 'four'");
  EXPECT_EQ(ApplySetArg(&c, "tenants.ml.maxGpus=1.5").message(),
            "tenants.ml.maxGpus: expected an integer, got 1.5");
  Status st = ApplyValues(&c, *ParseJson(R"({"tenants": {"ml": 4}})"));
  EXPECT_EQ(st.message().rfind("tenants.ml: expected tenants.<name>.maxGpus", 0), 0u)
      << st.message();
  st = ApplySetArg(&c, "tenants=4");
  EXPECT_EQ(st.message().rfind("tenants: expected tenants.<name>.maxGpus", 0), 0u)
      << st.message();
  EXPECT_TRUE(c.tenant_max_gpus.empty());  // nothing changed by the failures
}

TEST(ConfigTest, TenantRunAsInputRootsAndStepLimits) {
  Config c;
  EXPECT_EQ(c.default_run_as, "epoch-step");
  EXPECT_EQ(c.max_steps, 10000u);
  EXPECT_EQ(c.max_log_bytes, 1LL << 30);
  EXPECT_EQ(c.max_input_bytes, 16ULL << 30);
  ASSERT_TRUE(ApplyValues(&c, *ParseJson(R"({"tenants": {"ml": {"runAs": "ml-steps:ml",
      "inputRoots": ["/datasets/./shared/", "/mnt/x"]}}, "executor": {"runAs": "nobody",
      "maxLogBytes": "64Mi", "maxInputBytes": 1000}, "api.maxSteps": 50})")).ok());
  EXPECT_EQ(c.tenant_run_as.at("ml"), "ml-steps:ml");
  EXPECT_EQ(c.tenant_input_roots.at("ml"),
            (std::vector<std::string>{"/datasets/shared", "/mnt/x"}));
  EXPECT_EQ(c.default_run_as, "nobody");
  EXPECT_EQ(c.max_log_bytes, 64LL << 20);
  EXPECT_EQ(c.max_input_bytes, 1000u);
  EXPECT_EQ(c.max_steps, 50u);
  ASSERT_TRUE(ApplySetArg(&c, "tenants.cv.inputRoots=/a,/b/c").ok());
  EXPECT_EQ(c.tenant_input_roots.at("cv"), (std::vector<std::string>{"/a", "/b/c"}));
  Json j = c.ToJson();
  EXPECT_EQ(j["tenants.ml.runAs"], "ml-steps:ml");
  EXPECT_EQ(j["tenants.cv.inputRoots"], Json::array({"/a", "/b/c"}));
  EXPECT_EQ(j["api.maxSteps"], 50);
}

// executor.isolation becomes every agent's --isolation.
TEST(ConfigTest, IsolationKey) {
  Config c;
  EXPECT_EQ(c.isolation, "auto");
  EXPECT_EQ(c.ToJson()["executor.isolation"], "auto");
  ASSERT_TRUE(ApplySetArg(&c, "executor.isolation=required").ok());
  EXPECT_EQ(c.isolation, "required");
  ASSERT_TRUE(ApplySetArg(&c, "executor.isolation=off").ok());
  EXPECT_EQ(c.ToJson()["executor.isolation"], "off");
  EXPECT_EQ(ApplySetArg(&c, "executor.isolation=sometimes").message(),
            "executor.isolation: 'sometimes' is not one of auto, required, off");
  EXPECT_EQ(c.isolation, "off");
}

TEST(ConfigTest, RunAsAndInputRootErrorsNameTheKey) {
  Config c;
  EXPECT_EQ(ApplySetArg(&c, "tenants.ml.runAs=root").message(),
            "tenants.ml.runAs: steps may not run as root");
  EXPECT_EQ(ApplySetArg(&c, "executor.runAs=u:0").message(),
            "executor.runAs: steps may not run as root");
  EXPECT_EQ(ApplySetArg(&c, "tenants.ml.runAs=a b").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ApplySetArg(&c, "tenants.ml.runAs=-x").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ApplySetArg(&c, "tenants.ml.inputRoots=relative/dir").message(),
            "tenants.ml.inputRoots: 'relative/dir' is not an absolute path");
  EXPECT_EQ(ApplySetArg(&c, "tenants.ml.inputRoots=/").message(),
            "tenants.ml.inputRoots: '/' would let steps declare any file");
  EXPECT_EQ(ApplySetArg(&c, "api.maxSteps=0").message(),
            "api.maxSteps: 0 is out of range [1, 1000000]");
  EXPECT_TRUE(c.tenant_run_as.empty());
  EXPECT_TRUE(c.tenant_input_roots.empty());
  // A root that holds the data dir, or lies in it, would expose its control files.
  c.data_dir = "/srv/epoch";
  ASSERT_TRUE(ApplySetArg(&c, "tenants.ml.inputRoots=/srv").ok());
  EXPECT_EQ(ValidateConfig(c).message(),
            "tenants.ml.inputRoots: '/srv' overlaps the data dir /srv/epoch (its control files "
            "would become readable inputs)");
  ASSERT_TRUE(ApplySetArg(&c, "tenants.ml.inputRoots=/srv/epoch/runs").ok());
  EXPECT_EQ(ValidateConfig(c).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(ApplySetArg(&c, "tenants.ml.inputRoots=/srv/epoch-data").ok());
  EXPECT_TRUE(ValidateConfig(c).ok());
}

TEST(ConfigTest, MinFreeBytes) {
  Config c;
  EXPECT_EQ(c.min_free_bytes, 256ull << 20);  // the default
  ASSERT_TRUE(ApplySetArg(&c, "storage.minFreeBytes=1048576").ok());
  EXPECT_EQ(c.min_free_bytes, 1048576u);
  ASSERT_TRUE(ApplySetArg(&c, "storage.minFreeBytes=2Gi").ok());
  EXPECT_EQ(c.min_free_bytes, 2ull << 30);
  ASSERT_TRUE(ApplyValues(&c, *ParseJson(R"({"storage": {"minFreeBytes": "512M"}})")).ok());
  EXPECT_EQ(c.min_free_bytes, 512000000u);
  ASSERT_TRUE(ApplySetArg(&c, "storage.minFreeBytes=0").ok());  // off
  EXPECT_EQ(c.min_free_bytes, 0u);
  EXPECT_EQ(c.ToJson()["storage.minFreeBytes"], 0);

  Status st = ApplySetArg(&c, "storage.minFreeBytes=-1");
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("out of range"), std::string::npos) << st.message();
  st = ApplySetArg(&c, "storage.minFreeBytes=lots");
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message().rfind("storage.minFreeBytes: ", 0), 0u) << st.message();
  EXPECT_EQ(c.min_free_bytes, 0u);  // unchanged by the failures
  bool described = false;
  for (const auto& [k, d] : DescribeKeys()) described |= k == "storage.minFreeBytes";
  EXPECT_TRUE(described);
}

TEST(ConfigTest, HttpLimitsAndTimeouts) {
  Config c;
  EXPECT_EQ(c.threads, 32);
  EXPECT_EQ(c.max_streams, 1024);
  EXPECT_EQ(c.max_streams_per_principal, 16);
  EXPECT_EQ(c.max_connections_per_client, 256);
  EXPECT_EQ(c.max_log_response_bytes, 8u << 20);
  EXPECT_EQ(c.header_timeout, std::chrono::seconds(10));
  ASSERT_TRUE(ApplyValues(&c, *ParseJson(R"({"api": {"maxStreamsPerPrincipal": 2,
      "maxConnections": 500, "maxConnectionsPerClient": 20, "ioThreads": 4,
      "maxLogResponseBytes": 65536, "headerTimeout": "250ms", "tlsHandshakeTimeout": "2s",
      "bodyTimeout": "1m", "keepAliveTimeout": "5s", "writeTimeout": "45s"}})")).ok());
  EXPECT_EQ(c.max_streams_per_principal, 2);
  EXPECT_EQ(c.max_connections, 500);
  EXPECT_EQ(c.max_connections_per_client, 20);
  EXPECT_EQ(c.io_threads, 4);
  EXPECT_EQ(c.max_log_response_bytes, 65536u);
  EXPECT_EQ(c.header_timeout, std::chrono::milliseconds(250));
  EXPECT_EQ(c.tls_handshake_timeout, std::chrono::seconds(2));
  EXPECT_EQ(c.body_timeout, std::chrono::minutes(1));
  EXPECT_EQ(c.keep_alive_timeout, std::chrono::seconds(5));
  EXPECT_EQ(c.write_timeout, std::chrono::seconds(45));
  Json j = c.ToJson();
  EXPECT_EQ(j["api.maxStreamsPerPrincipal"], 2);
  EXPECT_EQ(j["api.headerTimeout"], "250ms");

  Status st = ApplySetArg(&c, "api.headerTimeout=1ms");
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "api.headerTimeout: must be between 10ms and 1h");
  st = ApplySetArg(&c, "api.maxStreamsPerPrincipal=0");
  EXPECT_NE(st.message().find("out of range"), std::string::npos) << st.message();
  st = ApplySetArg(&c, "api.maxLogResponseBytes=100");
  EXPECT_NE(st.message().find("out of range"), std::string::npos) << st.message();
  EXPECT_EQ(c.header_timeout, std::chrono::milliseconds(250));  // unchanged by the failures
}

}  // namespace
}  // namespace epoch::api
