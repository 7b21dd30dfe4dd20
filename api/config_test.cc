#include <gtest/gtest.h>

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

}  // namespace
}  // namespace epoch::api
