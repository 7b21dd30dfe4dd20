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
  EXPECT_EQ(Classify("POST", "/v1/session"), Access::kPublic);
  EXPECT_EQ(Classify("GET", "/v1/session"), Access::kRead);
  EXPECT_EQ(Classify("DELETE", "/v1/session"), Access::kSession);
  EXPECT_EQ(Classify("DELETE", "/v1/sessions"), Access::kWrite);
  for (Role r : {Role::kAdmin, Role::kOperator, Role::kViewer, Role::kAuditor}) {
    EXPECT_TRUE(Authorize(Principal{"u", "t", r, "1"}, Access::kSession).ok()) << Name(r);
  }
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

TEST(SessionTest, CookieValuesCsrfAndConstantTimeEquals) {
  EXPECT_EQ(CookieValue("epoch_session=es_1", "epoch_session"), "es_1");
  EXPECT_EQ(CookieValue("a=b;  epoch_session=es_2; c=d", "epoch_session"), "es_2");
  EXPECT_EQ(CookieValue("xepoch_session=es_3", "epoch_session"), "");
  EXPECT_EQ(CookieValue("", "epoch_session"), "");
  EXPECT_EQ(CookieValue("a=b", "epoch_session"), "");
  EXPECT_EQ(SessionCsrf("es_a").size(), 64u);
  EXPECT_NE(SessionCsrf("es_a"), SessionCsrf("es_b"));
  EXPECT_NE(SessionCsrf("es_a"), Sha256Hex("es_a")) << "not the hash the server keeps";
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "ab"));
  EXPECT_FALSE(ConstantTimeEquals("", "a"));
}

TEST(SessionTest, CreateFindExpireSignOutAndAnotherMasterSeesThem) {
  TempDir dir;
  const std::string path = dir.path() + "/sessions.json";
  ManualClock clock(TimePoint(std::chrono::hours(24 * 20000)));
  SessionStore store(path, &clock);
  auto a = store.Create("tok1", std::chrono::hours(1));
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_EQ(a->secret.rfind("es_", 0), 0u);
  EXPECT_EQ(a->secret.size(), 3u + 64);
  EXPECT_EQ(a->csrf, SessionCsrf(a->secret));
  EXPECT_EQ(a->expires, clock.Now() + std::chrono::hours(1));
  // The file keeps the hash, not the secret, and only its owner may read it.
  std::string text = *ReadFile(path, 1 << 20);
  EXPECT_EQ(text.find(a->secret), std::string::npos);
  EXPECT_NE(text.find(Sha256Hex(a->secret)), std::string::npos);
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto found = store.Find(a->secret);
  ASSERT_TRUE(found.ok()) << found.status().ToString();
  EXPECT_EQ(found->token_id, "tok1");
  // Malformed and unknown secrets.
  EXPECT_EQ(store.Find("es_short").status().code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(store.Find("epoch_" + std::string(64, 'a')).status().code(),
            StatusCode::kUnauthenticated);
  EXPECT_EQ(store.Find("es_" + std::string(64, 'a')).status().code(), StatusCode::kUnauthenticated);
  // A second master on the same data dir (a standby that takes over) knows it.
  SessionStore other(path, &clock);
  ASSERT_TRUE(other.Find(a->secret).ok());
  // Expiry.
  auto b = store.Create("tok2", std::chrono::minutes(10));
  ASSERT_TRUE(b.ok());
  clock.Advance(std::chrono::minutes(11));
  auto expired = store.Find(b->secret);
  EXPECT_EQ(expired.status().code(), StatusCode::kUnauthenticated);
  EXPECT_NE(expired.status().message().find("expired"), std::string::npos);
  EXPECT_TRUE(store.Find(a->secret).ok());
  // Signing out on one master ends it on the other; twice is kNotFound.
  ASSERT_TRUE(other.Delete(a->secret).ok());
  auto gone = store.Find(a->secret);
  EXPECT_EQ(gone.status().code(), StatusCode::kUnauthenticated);
  EXPECT_NE(gone.status().message().find("signed out"), std::string::npos);
  EXPECT_EQ(store.Delete(a->secret).code(), StatusCode::kNotFound);
  // Expired sessions leave the file at the next write.
  auto c = store.Create("tok3", std::chrono::hours(1));
  ASSERT_TRUE(c.ok());
  auto all = LoadSessions(path);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].token_id, "tok3");
}

TEST(SessionTest, ARevokedTokenHasNoPrincipalById) {
  TempDir dir;
  const std::string path = dir.path() + "/tokens.json";
  auto t = CreateToken(path, "alice", "ml", Role::kOperator, "2026-01-01T00:00:00Z");
  ASSERT_TRUE(t.ok());
  TokenStore store(path);
  auto p = store.ById(t->id);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->user, "alice");
  EXPECT_EQ(p->role, Role::kOperator);
  ASSERT_TRUE(RevokeToken(path, t->id).ok());
  auto gone = store.ById(t->id);
  EXPECT_EQ(gone.status().code(), StatusCode::kUnauthenticated);
  EXPECT_NE(gone.status().message().find("revoked"), std::string::npos);
}

}  // namespace
}  // namespace epoch::api
