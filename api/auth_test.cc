#include "api/auth.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <thread>

#include "common/files.h"
#include "common/sha256.h"

namespace epoch::api {
namespace {

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/epoch-auth.XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(AuthTest, ClassifiesRoutes) {
  EXPECT_EQ(Classify("GET", "/healthz"), Access::kPublic);
  EXPECT_EQ(Classify("GET", "/readyz"), Access::kPublic);
  EXPECT_EQ(Classify("POST", "/healthz"), Access::kWrite);
  EXPECT_EQ(Classify("POST", "/v1/containers/c1/register"), Access::kAgent);
  EXPECT_EQ(Classify("POST", "/v1/containers/c1/poll"), Access::kAgent);
  EXPECT_EQ(Classify("POST", "/v1/containers//poll"), Access::kWrite);
  EXPECT_EQ(Classify("POST", "/v1/containers/c1/other"), Access::kWrite);
  EXPECT_EQ(Classify("GET", "/v1/containers"), Access::kRead);
  EXPECT_EQ(Classify("GET", "/v1/audit/verify"), Access::kGlobal);
  EXPECT_EQ(Classify("GET", "/metrics"), Access::kGlobal);
  EXPECT_EQ(Classify("HEAD", "/v1/runs"), Access::kRead);
  EXPECT_EQ(Classify("POST", "/v1/runs"), Access::kWrite);
  EXPECT_EQ(Classify("DELETE", "/v1/runs/x"), Access::kWrite);
}

TEST(AuthTest, RolesAgainstAccess) {
  auto ok = [](Role r, Access a) { return Authorize(Principal{"u", "t", r, "i"}, a).ok(); };
  //                    public read  global write agent
  struct Row {
    Role role;
    bool want[5];
  } rows[] = {
      {Role::kAdmin, {true, true, true, true, false}},
      {Role::kOperator, {true, true, false, true, false}},
      {Role::kViewer, {true, true, false, false, false}},
      {Role::kAuditor, {true, true, true, false, false}},
  };
  Access order[] = {Access::kPublic, Access::kRead, Access::kGlobal, Access::kWrite, Access::kAgent};
  for (const auto& row : rows) {
    for (int i = 0; i < 5; ++i) {
      EXPECT_EQ(ok(row.role, order[i]), row.want[i]) << Name(row.role) << " access " << i;
    }
  }
  Status st = Authorize(Principal{"v", "t", Role::kViewer, ""}, Access::kWrite);
  EXPECT_EQ(st.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(st.message(), "role viewer may not write");
  EXPECT_TRUE(Principal({"a", "x", Role::kAuditor, ""}).Sees("y"));
  EXPECT_FALSE(Principal({"a", "x", Role::kOperator, ""}).Sees("y"));
  EXPECT_EQ(Principal({"ann", "ml", Role::kOperator, ""}).Actor(), "ann@ml");
}

TEST(AuthTest, Names) {
  EXPECT_TRUE(IsValidName("ml"));
  EXPECT_TRUE(IsValidName("team-1.gpu_a"));
  EXPECT_TRUE(IsValidName(std::string(63, 'a')));
  EXPECT_FALSE(IsValidName(std::string(64, 'a')));
  EXPECT_FALSE(IsValidName(""));
  EXPECT_FALSE(IsValidName("-x"));
  EXPECT_FALSE(IsValidName("Ann"));
  EXPECT_FALSE(IsValidName("a b"));
  EXPECT_FALSE(IsValidName("a@b"));
  EXPECT_EQ(ParseRole("auditor"), Role::kAuditor);
  EXPECT_FALSE(ParseRole("root").has_value());
}

TEST(AuthTest, TokensFileKeepsHashesAndReloadsWhenItChanges) {
  TempDir dir;
  std::string path = dir.path() + "/tokens.json";
  auto a = CreateToken(path, "ann", "ml", Role::kOperator, "2026-01-01T00:00:00Z");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->token.rfind("epoch_" + a->id + "_", 0), 0u);
  EXPECT_EQ(a->token.size(), 6u + 8 + 1 + 64);
  auto text = ReadFile(path);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(text->find(a->token.substr(15)), std::string::npos);
  EXPECT_NE(text->find(Sha256Hex(a->token)), std::string::npos);
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  TokenStore store(path);
  auto who = store.Authenticate("Bearer " + a->token);
  ASSERT_TRUE(who.ok()) << who.status().ToString();
  EXPECT_EQ(who->user, "ann");
  EXPECT_EQ(who->tenant, "ml");
  EXPECT_EQ(who->role, Role::kOperator);
  EXPECT_EQ(store.Authenticate("").status().code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(store.Authenticate("Basic YWJj").status().message(),
            "the Authorization header must be 'Bearer <token>'");
  EXPECT_EQ(store.Authenticate("Bearer nope").status().message(),
            "the bearer token is not an Epoch token");
  EXPECT_EQ(store.Authenticate("Bearer " + a->token + "x").status().message(),
            "unknown or revoked token");

  // A second token appears, the first goes: both seen on the next request.
  auto b = CreateToken(path, "bob", "cv", Role::kViewer, "");
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(store.Authenticate("Bearer " + b->token).ok());
  ASSERT_TRUE(RevokeToken(path, a->id).ok());
  EXPECT_EQ(store.Authenticate("Bearer " + a->token).status().code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(RevokeToken(path, a->id).code(), StatusCode::kNotFound);
  EXPECT_EQ(store.size(), 1u);
  // A broken file keeps the tokens loaded before (neither locks out nor lets in).
  ASSERT_TRUE(WriteFileDurably(path, "{\"tokens\": [{\"id\": 1}]}").ok());
  EXPECT_TRUE(store.Authenticate("Bearer " + b->token).ok());
  EXPECT_EQ(LoadTokens(path).status().message(), path + ": tokens[0].id: required string");
  EXPECT_EQ(CreateToken(path, "Bad", "ml", Role::kViewer, "").status().code(),
            StatusCode::kInvalidArgument);
}

TEST(AuthTest, ConcurrentCreatorsLoseNoToken) {
  TempDir dir;
  std::string path = dir.path() + "/tokens.json";
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      for (int k = 0; k < 5; ++k) {
        ASSERT_TRUE(CreateToken(path, "u" + std::to_string(i), "t", Role::kViewer, "").ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  auto tokens = LoadTokens(path);
  ASSERT_TRUE(tokens.ok());
  EXPECT_EQ(tokens->size(), 40u);
}

// No token opens the container protocol: containers present their own credential,
// which the server checks against the engine (tests/isolation_e2e_test.cc).
TEST(AuthTest, NoRoleMayUseTheContainerProtocolAndThereIsNoAgentRole) {
  for (Role r : {Role::kAdmin, Role::kOperator, Role::kViewer, Role::kAuditor}) {
    Status st = Authorize(Principal{"u", "t", r, "i"}, Access::kAgent);
    EXPECT_EQ(st.code(), StatusCode::kUnauthenticated) << Name(r);
  }
  EXPECT_FALSE(ParseRole("agent").has_value());
  TempDir dir;
  std::string path = dir.path() + "/tokens.json";
  ASSERT_TRUE(WriteFileDurably(path, R"({"tokens": [{"id": "00000001", "sha256": ")" +
                                         std::string(64, 'a') +
                                         R"(", "user": "x", "tenant": "t", "role": "agent"}]})",
                               0600)
                  .ok());
  auto loaded = LoadTokens(path);
  EXPECT_EQ(loaded.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(loaded.status().message().find("must be one of admin, operator, viewer, auditor"),
            std::string::npos)
      << loaded.status().message();
}

}  // namespace
}  // namespace epoch::api
