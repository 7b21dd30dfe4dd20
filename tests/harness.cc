#include "tests/harness.h"

#include <dirent.h>
#include <httplib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "api/auth.h"
#include "common/files.h"
#include "common/sha256.h"

namespace epoch::testing {

std::string EpochdPath() { return EPOCHD_PATH; }
std::string AgentPath() { return EPOCH_AGENT_PATH; }
std::string EpochctlPath() { return EPOCHCTL_PATH; }

int RunCommand(const std::string& cmd, std::string* out) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  size_t n;
  out->clear();
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out->append(buf, n);
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

TempDir::TempDir() {
  char tmpl[] = "/tmp/epoch-test.XXXXXX";
  char* p = mkdtemp(tmpl);
  if (!p) std::abort();
  path_ = p;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

Json HttpResult::json() const {
  auto j = ParseJson(body, 256);
  return j.ok() ? *j : Json();
}

bool WaitFor(const std::function<bool()>& cond, std::chrono::milliseconds deadline) {
  auto end = std::chrono::steady_clock::now() + deadline;
  while (std::chrono::steady_clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return cond();
}

bool ProcessAlive(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  if (!in) return false;
  std::string line;
  std::getline(in, line);
  auto close = line.rfind(')');
  if (close == std::string::npos || close + 2 >= line.size()) return false;
  char state = line[close + 2];
  return state != 'Z' && state != 'X';
}

void KillProcessTree(pid_t pid) {
  std::vector<pid_t> all = {pid};
  for (size_t i = 0; i < all.size(); ++i) {
    std::ifstream children("/proc/" + std::to_string(all[i]) + "/task/" + std::to_string(all[i]) +
                           "/children");
    pid_t c;
    while (children >> c) all.push_back(c);
  }
  for (pid_t p : all) kill(p, SIGKILL);
}

std::string AgentContainerId(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
  std::string arg, prev;
  while (std::getline(in, arg, '\0')) {
    if (prev == "--id") return arg;
    prev = arg;
  }
  return "";
}

namespace {
// The certificate to verify an Epochd with: its data dir's generated one (none for
// plain HTTP, or for a certificate of the test's own).
std::string CaFor(bool tls, const std::string& data_dir) {
  std::string cert = data_dir + "/tls/cert.pem";
  return tls && std::filesystem::exists(cert) ? cert : "";
}
void EnsureToken(const std::string& data_dir, const std::string& token, const std::string& user,
                 const std::string& tenant, api::Role role);
}  // namespace

Epochd::Epochd(std::string data_dir, std::vector<std::string> extra, std::string name)
    : data_dir_(std::move(data_dir)), extra_(std::move(extra)), name_(std::move(name)) {}

Epochd::~Epochd() {
  if (pid_ > 0) Kill9();
  for (pid_t p : AgentPids()) kill(p, SIGKILL);
  WaitFor([&] { return AgentPids().empty(); }, std::chrono::milliseconds(3000));
}

std::string Epochd::Log() const {
  std::ifstream in(data_dir_ + "/" + name_ + ".log");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void Epochd::Launch() {
  std::string address_file = data_dir_ + "/" + name_ + ".address";
  std::filesystem::remove(address_file);
  EnsureToken(data_dir_, AdminToken(), "test", "default", api::Role::kAdmin);
  {
    std::lock_guard<std::mutex> lock(url_mu_);
    url_.clear();
  }
  std::vector<std::string> args{EpochdPath(), "--data-dir", data_dir_, "--set",
                                "cluster.basePort=0", "--log-level", "debug", "--address-file",
                                address_file, "--set", "master.name=" + name_};
  // Small, fast defaults for tests; a test's own settings come after and win.
  for (const char* s : {"sig.maxReplicas=2", "sig.minReplicas=2", "sig.cpu=2", "sig.memory=1Gi",
                        "executor.leaseTime=2s", "executor.pollTimeout=500ms",
                        "executor.killGrace=1s"}) {
    args.push_back("--set");
    args.push_back(s);
  }
  for (const auto& e : extra_) {
    args.push_back("--set");
    args.push_back(e);
  }
  if (!tls_) args.push_back("--insecure-http");
  for (const auto& a : args_) args.push_back(a);
  std::string log = data_dir_ + "/" + name_ + ".log";
  pid_ = fork();
  ASSERT_GE(pid_, 0);
  if (pid_ == 0) {
    FILE* f = freopen(log.c_str(), "a", stderr);
    (void)f;
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  bool bound = WaitFor(
      [&] {
        std::ifstream in(address_file);
        std::stringstream ss;
        ss << in.rdbuf();
        auto j = ParseJson(ss.str());
        if (!j.ok() || !j->contains("address")) return false;
        std::lock_guard<std::mutex> lock(url_mu_);
        url_ = (*j)["address"];
        return true;
      },
      std::chrono::milliseconds(20000));
  if (!bound) FAIL() << "epochd " << name_ << " did not bind; its log:\n" << Log();
}

void Epochd::Start() {
  Launch();
  if (::testing::Test::HasFatalFailure()) return;
  if (!WaitUntilLeader(std::chrono::milliseconds(20000))) {
    FAIL() << "epochd " << name_ << " did not become ready; its log:\n" << Log();
  }
}

void Epochd::StartStandby() {
  Launch();
  if (::testing::Test::HasFatalFailure()) return;
  bool standby = WaitFor(
      [&] {
        HttpResult r = Get("/readyz");
        return r.status == 503 && r.json().value("role", "") == "standby";
      },
      std::chrono::milliseconds(20000));
  if (!standby) FAIL() << "epochd " << name_ << " did not stand by; its log:\n" << Log();
}

bool Epochd::WaitUntilLeader(std::chrono::milliseconds deadline) {
  return WaitFor([&] { return Get("/readyz").status == 200; }, deadline);
}

void Epochd::Kill9() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int st;
  waitpid(pid_, &st, 0);
  exit_status_ = st;
  pid_ = -1;
}

void Epochd::Terminate() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  int st;
  waitpid(pid_, &st, 0);
  exit_status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  pid_ = -1;
}

bool Epochd::WaitForExit(std::chrono::milliseconds deadline) {
  if (pid_ <= 0) return true;
  int st = 0;
  bool exited = WaitFor([&] { return waitpid(pid_, &st, WNOHANG) == pid_; }, deadline);
  if (!exited) return false;
  exit_status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  dumped_core_ = WIFSIGNALED(st) && WCOREDUMP(st);
  pid_ = -1;
  return true;
}

const std::string& AdminToken() {
  static const std::string token = [] {
    std::string t = api::GenerateToken().token;
    setenv("EPOCH_TOKEN", t.c_str(), 1);
    return t;
  }();
  return token;
}

namespace {
// Puts (token, user, tenant, role) into data_dir's tokens.json if it is not there.
void EnsureToken(const std::string& data_dir, const std::string& token, const std::string& user,
                 const std::string& tenant, api::Role role) {
  std::filesystem::create_directories(data_dir);
  std::string path = data_dir + "/tokens.json";
  auto tokens = api::LoadTokens(path);
  ASSERT_TRUE(tokens.ok()) << tokens.status().ToString();
  std::string hash = Sha256Hex(token);
  for (const auto& t : *tokens) {
    if (t.sha256 == hash) return;
  }
  tokens->push_back(api::TokenEntry{token.substr(6, 8), hash, user, tenant, role, ""});
  ASSERT_TRUE(api::SaveTokens(path, *tokens).ok());
}
}  // namespace

std::string AddToken(const std::string& data_dir, const std::string& user,
                     const std::string& tenant, const std::string& role) {
  std::string t = api::GenerateToken().token;
  auto r = api::ParseRole(role);
  EXPECT_TRUE(r.has_value()) << role;
  EnsureToken(data_dir, t, user, tenant, r.value_or(api::Role::kViewer));
  return t;
}

namespace {
// ca: the certificate to verify an https server with; none: not verified (the TLS
// tests verify explicitly).
HttpResult Do(const std::string& url, const std::function<httplib::Result(httplib::Client&)>& f,
              const std::string& token = AdminToken(), const std::string& ca = "") {
  httplib::Client cli(url);
  if (!token.empty()) cli.set_bearer_token_auth(token);
  if (url.rfind("https://", 0) == 0) {
    if (ca.empty()) {
      cli.enable_server_certificate_verification(false);
    } else {
      cli.set_ca_cert_path(ca.c_str());
      cli.enable_server_certificate_verification(true);
    }
  }
  cli.set_connection_timeout(std::chrono::seconds(2));
  cli.set_read_timeout(std::chrono::seconds(30));
  auto r = f(cli);
  HttpResult out;
  if (!r) return out;
  out.status = r->status;
  out.body = r->body;
  out.content_type = r->get_header_value("Content-Type");
  out.location = r->get_header_value("Location");
  out.set_cookie = r->get_header_value("Set-Cookie");
  out.role = r->get_header_value("Epoch-Role");
  std::string pos = r->get_header_value("Epoch-Position");
  if (!pos.empty()) out.position = std::strtoull(pos.c_str(), nullptr, 10);
  return out;
}
}  // namespace

HttpResult HttpCall(const std::string& url, const std::string& method, const std::string& path,
                    const std::string& body, const std::string& token,
                    const std::vector<std::pair<std::string, std::string>>& headers) {
  return Do(
      url,
      [&](httplib::Client& c) {
        httplib::Request req;
        req.method = method;
        req.path = path;
        for (const auto& [k, v] : headers) req.set_header(k, v);
        if (method != "GET" && method != "HEAD") {
          req.body = body;
          req.set_header("Content-Type", "application/json");
        }
        return c.send(req);
      },
      token);
}

HttpResult HttpGet(const std::string& url, const std::string& path) {
  return Do(url, [&](httplib::Client& c) { return c.Get(path); });
}

HttpResult HttpPost(const std::string& url, const std::string& path, const std::string& body,
                    const std::vector<std::pair<std::string, std::string>>& headers) {
  httplib::Headers h;
  for (const auto& [k, v] : headers) h.emplace(k, v);
  return Do(url, [&](httplib::Client& c) { return c.Post(path, h, body, "application/json"); });
}

HttpResult Epochd::Get(const std::string& path) {
  std::string url = this->url();
  if (url.empty()) return {};
  return Do(url, [&](httplib::Client& c) { return c.Get(path); }, AdminToken(),
            CaFor(tls_, data_dir_));
}

HttpResult Epochd::Post(const std::string& path, const std::string& body,
                        const std::string& content_type,
                        const std::vector<std::pair<std::string, std::string>>& headers) {
  httplib::Headers h;
  for (const auto& [k, v] : headers) h.emplace(k, v);
  return Do(
      url(), [&](httplib::Client& c) { return c.Post(path, h, body, content_type); },
      AdminToken(), CaFor(tls_, data_dir_));
}

std::string Epochd::RegisterAndSubmit(const Json& definition, const Json& params) {
  auto reg = PostJson("/v1/workflows", definition);
  EXPECT_TRUE(reg.status == 200 || reg.status == 201) << reg.status << " " << reg.body;
  auto sub = PostJson("/v1/runs", Json{{"workflow", definition["name"]}, {"params", params}});
  EXPECT_EQ(sub.status, 201) << sub.body;
  return sub.json().value("id", "");
}

Json Epochd::WaitForRunState(const std::string& run, const std::function<bool(const Json&)>& pred,
                             std::chrono::seconds timeout) {
  Json last;
  WaitFor(
      [&] {
        auto r = Get("/v1/runs/" + run);
        if (r.status != 200) return false;
        last = r.json();
        return pred(last);
      },
      std::chrono::duration_cast<std::chrono::milliseconds>(timeout));
  return last;
}

Json Epochd::WaitForRun(const std::string& run, std::chrono::seconds timeout) {
  return WaitForRunState(
      run,
      [](const Json& j) {
        std::string s = j.value("state", "");
        return s == "succeeded" || s == "failed" || s == "cancelled";
      },
      timeout);
}

uint64_t Epochd::Head() {
  auto r = Get("/v1/cluster");
  return r.json()["head"].value("position", uint64_t{0});
}

std::vector<Json> Epochd::AllEvents() {
  std::vector<Json> out;
  uint64_t after = 0;
  while (true) {
    HttpResult r = Get("/v1/events?after=" + std::to_string(after) + "&limit=1000");
    EXPECT_EQ(r.status, 200) << r.body;
    if (r.status != 200) return out;
    Json items = r.json()["items"];  // (no range-for on a temporary)
    if (items.empty()) return out;
    for (const auto& e : items) {
      after = e["position"].get<uint64_t>();
      out.push_back(e);
    }
  }
}

std::vector<pid_t> Epochd::AgentPids() const {
  std::vector<pid_t> out;
  DIR* d = opendir("/proc");
  if (!d) return out;
  while (auto* e = readdir(d)) {
    pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid <= 0) continue;
    // ReadFile, not an istreambuf_iterator: reading the cmdline of a process that exits
    // meanwhile fails with ESRCH, which libstdc++'s filebuf throws through the iterator.
    auto read = ReadFile("/proc/" + std::string(e->d_name) + "/cmdline", 1 << 20);
    if (!read.ok()) continue;
    const std::string& cmd = *read;
    if (cmd.find("epoch-agent") != std::string::npos &&
        cmd.find(data_dir_) != std::string::npos && ProcessAlive(pid)) {
      out.push_back(pid);
    }
  }
  closedir(d);
  return out;
}

int64_t ProcStatus(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1));
  }
  return -1;
}

int64_t Metric(Epochd& d, const std::string& name) {
  std::string m = "\n" + d.Get("/metrics").body;
  size_t at = m.find("\n" + name + " ");
  return at == std::string::npos ? -1 : std::stoll(m.substr(at + name.size() + 2));
}

}  // namespace epoch::testing
