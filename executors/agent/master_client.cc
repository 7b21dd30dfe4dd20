// Agent::Impl's side of the container protocol (agent.h): the HTTP client to the
// master (with the credential, over TLS where the master is https), which masters it
// may follow (a redirect, leader.json) and never from https to http, register and
// poll answers applied with epoch fencing (HandleAnswer), the register body (the GPU
// inventory, isolation and limits), and the poll thread.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>

#include "common/files.h"
#include "common/mutex.h"
#include "common/units.h"
#include "executors/agent/agent_internal.h"

namespace epoch::executors {
namespace agent_internal {

std::string TrimUrl(std::string url) {
  while (!url.empty() && url.back() == '/') url.pop_back();
  if (url.find("://") == std::string::npos) url = "http://" + url;
  return url;
}

}  // namespace agent_internal

namespace {

// The origin (scheme://host:port, port explicit) of an http(s) URL; nullopt for
// anything else (another scheme, user info, no host, a bad port).
struct Origin {
  std::string scheme, host;
  int port = 0;
  bool operator==(const Origin&) const = default;
  std::string ToString() const { return scheme + "://" + host + ":" + std::to_string(port); }
};

std::optional<Origin> OriginOf(const std::string& url) {
  auto lower = [](std::string x) {
    for (auto& c : x) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return x;
  };
  auto sep = url.find("://");
  if (sep == std::string::npos) return std::nullopt;
  Origin o;
  o.scheme = lower(url.substr(0, sep));
  if (o.scheme != "http" && o.scheme != "https") return std::nullopt;
  size_t start = sep + 3;
  size_t end = url.find_first_of("/?#", start);
  std::string auth = url.substr(start, end == std::string::npos ? end : end - start);
  if (auth.empty() || auth.find('@') != std::string::npos) return std::nullopt;
  std::string port;
  if (auth[0] == '[') {
    auto close = auth.find(']');
    if (close == std::string::npos) return std::nullopt;
    o.host = auth.substr(0, close + 1);
    std::string rest = auth.substr(close + 1);
    if (!rest.empty() && rest[0] != ':') return std::nullopt;
    if (!rest.empty()) port = rest.substr(1);
  } else if (auto colon = auth.rfind(':'); colon != std::string::npos) {
    o.host = auth.substr(0, colon);
    port = auth.substr(colon + 1);
  } else {
    o.host = auth;
  }
  o.host = lower(o.host);
  if (o.host.empty()) return std::nullopt;
  if (port.empty()) {
    o.port = o.scheme == "https" ? 443 : 80;
  } else {
    if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) {
      return std::nullopt;
    }
    o.port = std::stoi(port);
    if (o.port < 1 || o.port > 65535) return std::nullopt;
  }
  return o;
}

// The error code of a {"error":{"code":...}} body, or "".
std::string ErrorCode(const std::string& body) {
  auto j = ParseJson(body);
  if (!j.ok() || !j->is_object()) return "";
  auto it = j->find("error");
  if (it == j->end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto c = it->find("code");
    if (c != it->end() && c->is_string()) return c->get<std::string>();
  }
  return "";
}

}  // namespace

using agent_internal::GetString;
using agent_internal::JoinPathParts;
using agent_internal::kMaxBackoff;
using agent_internal::kMinBackoff;
using agent_internal::milliseconds;
using agent_internal::SteadyClock;
using agent_internal::TrimUrl;

// ---------------------------------------------------------------- HTTP

// (Re)creates c when the master URL changed. Caller must not hold mu.
void Agent::Impl::RefreshClient(Client& c, milliseconds read_timeout) {
  std::string url;
  uint64_t gen;
  {
    MutexLock lock(&mu);
    url = master_url;
    gen = url_generation;
  }
  if (!c.http || c.generation != gen) {
    c.http = std::make_unique<httplib::Client>(url);
    // The master's container protocol needs this container's credential (SwitchMaster
    // let only a master of this data dir become `url`) and, over HTTPS, trusts the
    // data dir's certificate (or --ca-cert's).
    if (!credential.empty()) c.http->set_bearer_token_auth(credential);
    if (url.rfind("https://", 0) == 0) {
      std::string ca = !opt.ca_cert.empty() ? opt.ca_cert : opt.data_dir + "/tls/cert.pem";
      if (PathExists(ca)) c.http->set_ca_cert_path(ca.c_str());
      c.http->enable_server_certificate_verification(true);
    }
    c.http->set_tcp_nodelay(true);
    c.http->set_connection_timeout(1, 0);
    c.http->set_write_timeout(5, 0);
    c.http->set_keep_alive(true);
    c.generation = gen;
    c.url = url;
  }
  auto ms = read_timeout.count();
  c.http->set_read_timeout(static_cast<time_t>(ms / 1000), static_cast<time_t>((ms % 1000) * 1000));
}

Agent::Impl::Reply Agent::Impl::Post(Client& c, const std::string& path, const Json& body) {
  Reply r;
  if (!c.http || !c.http->is_valid()) {
    r.error = "invalid master URL " + c.url;
    return r;
  }
  auto res = c.http->Post(path, body.dump(), "application/json");
  if (!res) {
    r.error = httplib::to_string(res.error());
    return r;
  }
  r.status = res->status;
  r.body = res->body;
  r.location = res->get_header_value("Location");
  return r;
}

Json Agent::Impl::RunningIds() REQUIRES(mu) {
  Json ids = Json::array();
  for (const auto& id : active) ids.push_back(id);
  return ids;
}

Json Agent::Impl::PendingReports() REQUIRES(mu) {
  Json reps = Json::array();
  for (const auto& [id, rep] : pending) reps.push_back(rep);
  return reps;
}

// Moves to another master (a 307 or a newer leader.json) and registers there; never
// from https to http (the credential would travel in clear).
void Agent::Impl::SwitchMaster(const std::string& url, const char* why) REQUIRES(mu) {
  std::string u = TrimUrl(url);
  if (u == master_url) return;
  auto to = OriginOf(u);
  auto from = OriginOf(master_url);
  if (to && from && *to == *from) return;
  if (!to) {
    spdlog::warn("ignoring {} to '{}': not an http(s) origin", why, u);
    return;
  }
  if (from && from->scheme == "https" && to->scheme != "https") {
    spdlog::warn("ignoring {} from {} to {}: never from https to http", why, master_url, u);
    return;
  }
  spdlog::info("switching master {} -> {} ({})", master_url, u, why);
  master_url = u;
  ++url_generation;
  registered = false;
  if (Status st = WriteAgentJson(); !st.ok()) spdlog::warn("agent.json: {}", st.ToString());
}

std::optional<Agent::Impl::LeaderFile> Agent::Impl::ReadLeaderFile() {
  auto text = ReadFile(JoinPathParts(opt.data_dir, "leader.json"), 1 << 20);
  if (!text.ok()) return std::nullopt;
  auto j = ParseJson(*text);
  if (!j.ok() || !j->is_object()) return std::nullopt;
  LeaderFile f;
  f.address = GetString(*j, "address");
  if (f.address.empty()) f.address = GetString(*j, "url");
  if (auto e = j->find("epoch"); e != j->end() && e->is_number_integer()) {
    f.epoch = e->get<int64_t>();
  }
  if (f.address.empty()) return std::nullopt;
  return f;
}

// A redirect's Location "http://h:p/v1/..." gives the new master "http://h:p": only
// one of this data dir's masters (--master's origin, or the leader leader.json names)
// is trusted with the credential.
void Agent::Impl::FollowRedirect(const std::string& location) {
  auto to = OriginOf(location);
  if (!to) return;
  auto leader = ReadLeaderFile();
  auto leader_origin = leader ? OriginOf(leader->address) : std::nullopt;
  auto first = OriginOf(initial_master);
  if (!(first && *to == *first) && !(leader_origin && *to == *leader_origin)) {
    spdlog::warn("ignoring a redirect to {}: not a master of this data dir (leader.json: {})",
                 to->ToString(), leader ? leader->address : "none");
    return;
  }
  MutexLock lock(&mu);
  SwitchMaster(to->ToString(), "redirect");
}

// When the master does not answer: leader.json may name the new leader.
void Agent::Impl::CheckLeaderFile() {
  auto leader = ReadLeaderFile();
  if (!leader) return;
  MutexLock lock(&mu);
  if (leader->epoch >= epoch_seen) SwitchMaster(leader->address, "leader.json");
}

// Applies a register or poll answer. False if it was fenced off or malformed.
bool Agent::Impl::HandleAnswer(const std::string& body, bool is_register,
                               const LiveMetrics::Sent* sent) {
  auto parsed = ParseJson(body);
  if (!parsed.ok() || !parsed->is_object()) {
    spdlog::warn("malformed answer from master: {}", parsed.status().ToString());
    return false;
  }
  const Json& j = *parsed;
  try {
    auto e = j.find("epoch");
    if (e == j.end() || !e->is_number_integer()) {
      spdlog::warn("answer without an epoch ignored");
      return false;
    }
    int64_t epoch = e->get<int64_t>();
    if (!ApplyAnswer(j, epoch, is_register)) return false;
    // Not under mu (live_metrics is never called with it held).
    if (auto m = j.find("metrics_ack"); m != j.end() && sent != nullptr) {
      live_metrics.Ack(*m, *sent);
    }
    return true;
  } catch (const Json::exception& ex) {
    spdlog::warn("unexpected answer from master: {}", ex.what());
    return false;
  }
}

// HandleAnswer's part under mu: fencing, then what the answer says. False if fenced off.
bool Agent::Impl::ApplyAnswer(const Json& j, int64_t epoch, bool is_register) {
  MutexLock lock(&mu);
  if (epoch < epoch_seen) {
    spdlog::warn("ignoring answer from epoch {} (highest seen {})", epoch, epoch_seen);
    return false;
  }
  if (epoch > epoch_seen) {
    if (epoch_seen > 0) spdlog::info("master epoch {} -> {}", epoch_seen, epoch);
    epoch_seen = epoch;
    if (Status st = WriteAgentJson(); !st.ok()) {
      spdlog::warn("agent.json: {}", st.ToString());
    }
  }
  last_contact = SteadyClock::now();
  if (is_register) {
    if (auto p = j.find("poll_timeout_ms"); p != j.end() && p->is_number_integer()) {
      poll_timeout_ms = std::clamp<int64_t>(p->get<int64_t>(), 0, 600000);
    }
    registered = true;
    report_cv.SignalAll();
  }
  bool news = false, repeated = false;
  if (auto ack = j.find("ack"); ack != j.end() && ack->is_array()) {
    for (const auto& a : *ack) {
      if (!a.is_string()) continue;
      std::string id = a.get<std::string>();
      cancelling.erase(id);
      if (pending.erase(id)) {
        news = true;
        if (Status st = RemoveFile(ReportPath(id)); !st.ok()) {
          spdlog::warn("removing acknowledged report: {}", st.ToString());
        }
        spdlog::debug("report for {} acknowledged", id);
      }
    }
  }
  bool wake_main = false;
  if (auto as = j.find("assignments"); as != j.end() && as->is_array()) {
    for (const auto& a : *as) {
      std::string id = a.is_object() ? GetString(a, "attempt_id") : "";
      if (id.empty()) {
        spdlog::warn("assignment without attempt_id ignored");
        continue;
      }
      if (known.count(id)) {
        spdlog::info("duplicate assignment of {} ignored", id);
        continue;
      }
      known.insert(id);
      active.insert(id);
      inbox.push_back(a);
      wake_main = true;
    }
  }
  if (auto cs = j.find("cancels"); cs != j.end() && cs->is_array()) {
    for (const auto& c : *cs) {
      if (!c.is_string()) continue;
      if (!cancelling.insert(c.get<std::string>()).second) {  // being carried out
        repeated = true;
        continue;
      }
      cancel_inbox.push_back(c.get<std::string>());
      wake_main = true;
    }
  }
  if (auto rel = j.find("release"); rel != j.end() && rel->is_boolean() && rel->get<bool>()) {
    spdlog::info("released by the master");
    release = true;
    wake_main = true;
  }
  if (wake_main) main_cv.SignalAll();
  stale_answer = repeated && !news && !wake_main;
  return true;
}

// A poll refused as malformed or forbidden (400, 403) would be refused again with the
// same batches in it, and the reports that ride with them would never be acknowledged:
// live metrics must never wedge the container protocol.
void Agent::Impl::AbandonRefusedMetrics(const Reply& r, const LiveMetrics::Sent& sent) {
  if ((r.status == 400 || r.status == 403) && !sent.attempts.empty()) {
    live_metrics.Abandon(sent, "the master answered " + std::to_string(r.status) + ": " +
                                   ValidUtf8(r.body.substr(0, 200)));
  }
}

bool Agent::Impl::NeedsRegister(const Reply& r) {
  if (r.status == 404) return true;
  if (r.status == 409 || r.status == 410) {
    std::string code = ErrorCode(r.body);
    return code == "unknown_container" || code == "register";
  }
  return false;
}

// Sleeps (interruptibly) for the backoff; returns false when the thread should end.
bool Agent::Impl::Backoff(CondVar& cv, milliseconds& backoff) {
  MutexLock lock(&mu);
  const auto deadline = SteadyClock::now() + backoff;
  while (!threads_stop) {
    if (!cv.WaitUntil(&mu, deadline)) break;
  }
  backoff = std::min(backoff * 2, kMaxBackoff);
  return !threads_stop;
}

void Agent::Impl::CheckOrphaned() {
  MutexLock lock(&mu);
  if (orphaned || SteadyClock::now() - last_contact <= opt.orphan_timeout) return;
  spdlog::error("master unreachable for more than {}; giving up",
                FormatDuration(std::chrono::duration_cast<Micros>(opt.orphan_timeout)));
  orphaned = true;
  main_cv.SignalAll();
}

Json Agent::Impl::RegisterBody() REQUIRES(mu) {
  Json inventory = gpu::ToJson(opt.gpu_inventory);
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  return Json{{"backend", opt.backend},
              {"handle", opt.handle},
              {"host", std::string(host)},
              {"pid", static_cast<int64_t>(getpid())},
              {"cpu_millis", opt.cpu_millis},
              {"memory_bytes", opt.memory_bytes},
              {"epoch_seen", epoch_seen},
              {"running", RunningIds()},
              {"gpus", inventory["gpus"]},
              {"cuda", inventory["cuda"]},
              {"isolation",
               {{"mode", isolation.mode},
                {"run_as", isolation.run_as},
                {"sandbox", isolation.sandbox},
                {"reason", isolation.reason}}},
              {"enforcement", EnforcementJson()}};
}

void Agent::Impl::PollThread() {
  Client client;
  struct ClearOnExit {  // destroyed before client: main never sees a dead pointer
    Impl* impl;
    ~ClearOnExit() {
      MutexLock lock(&impl->mu);
      impl->poll_http = nullptr;
    }
  } clear_on_exit{this};
  auto backoff = kMinBackoff;
  const std::string base = "/v1/containers/" + opt.id;
  while (true) {
    Json body;
    bool is_register;
    int64_t timeout_ms;
    size_t sent_reports = 0;
    LiveMetrics::Collected metrics;
    {
      MutexLock lock(&mu);
      if (threads_stop) return;
      is_register = !registered;
    }
    // The points due now ride on this poll (not under mu: see live_metrics).
    if (!is_register) metrics = live_metrics.Collect(SteadyClock::now());
    {
      MutexLock lock(&mu);
      if (threads_stop) return;
      is_register = !registered;
      timeout_ms = poll_timeout_ms;
      if (is_register) {
        body = RegisterBody();
      } else {
        sent_reports = pending.size();
        body = Json{
            {"epoch_seen", epoch_seen}, {"reports", PendingReports()}, {"running", RunningIds()}};
        if (!metrics.batches.empty()) body["metrics"] = std::move(metrics.batches);
      }
    }
    {
      MutexLock lock(&mu);
      poll_http = nullptr;  // RefreshClient may replace it
    }
    RefreshClient(client, milliseconds(is_register ? 10000 : timeout_ms + 5000));
    {
      MutexLock lock(&mu);
      if (threads_stop) return;
      poll_http = client.http.get();
    }
    Reply r = Post(client, base + (is_register ? "/register" : "/poll"), body);
    bool ok = false;
    if (r.status >= 200 && r.status < 300) {
      ok = HandleAnswer(r.body, is_register, is_register ? nullptr : &metrics.sent);
      if (ok && is_register) spdlog::info("registered with {} as {}", client.url, opt.id);
    } else if (!is_register && NeedsRegister(r)) {
      spdlog::info("master asks {} to register again ({})", opt.id, r.status);
      MutexLock lock(&mu);
      registered = false;
      last_contact = SteadyClock::now();
      backoff = kMinBackoff;
      continue;
    } else if (r.status == 307 || r.status == 308) {
      FollowRedirect(r.location);
    } else {
      if (r.status == 0) {
        spdlog::debug("master {} unreachable: {}", client.url, r.error);
      } else {
        spdlog::warn("{} answered {}: {}", is_register ? "register" : "poll", r.status,
                     r.body.substr(0, 200));
        AbandonRefusedMetrics(r, metrics.sent);
      }
      CheckLeaderFile();
    }
    if (ok) {
      backoff = kMinBackoff;
      // The master answers a poll with reports at once; if it did not acknowledge
      // them, do not resend in a tight loop.
      bool unacked;
      {
        MutexLock lock(&mu);
        unacked = sent_reports > 0 && pending.size() >= sent_reports;
      }
      if (unacked && !Backoff(poll_cv, backoff)) return;
      // An answer with nothing new came back at once (the master repeats a cancel
      // until the attempt has stopped, which takes up to executor.killGrace): pause
      // rather than ask again at once, or the poll spins for the whole grace.
      MutexLock lock(&mu);
      if (stale_answer) {
        const auto until = SteadyClock::now() + agent_internal::kStalePollPause;
        while (!threads_stop && poll_cv.WaitUntil(&mu, until)) {
        }
      }
      if (threads_stop) return;
      continue;
    }
    CheckOrphaned();
    if (!Backoff(poll_cv, backoff)) return;
  }
}

}  // namespace epoch::executors
