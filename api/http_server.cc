// HttpServer and its core: routing, the accept loop and its connection caps, the
// notifier that wakes parked answers, and Bind, Serve and Stop. The messages are in
// http_message.cc, the connections in http_session.cc.
#include "api/http_server.h"

// Boost 1.74's Asio uses std::exchange without including <utility> (g++ 12, C++20): it
// must come before Asio (keep it out of the sorted block below).
// clang-format off
#include <utility>
// clang-format on

#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <algorithm>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <cerrno>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "api/http_server_internal.h"
#include "common/mutex.h"

namespace epoch::api {

namespace internal {

namespace {

// The notifier re-checks the change counter (and Stop) at least this often.
constexpr auto kNotifierPeriod = std::chrono::milliseconds(100);

}  // namespace

// ---- routing -----------------------------------------------------------------------

std::vector<std::string> ServerCore::Split(std::string_view path) {
  std::vector<std::string> out;
  while (true) {
    size_t slash = path.find('/');
    out.emplace_back(path.substr(0, slash));
    if (slash == std::string_view::npos) return out;
    path.remove_prefix(slash + 1);
  }
}

std::vector<std::string> ServerCore::SplitPattern(std::string pattern) {
  for (size_t at; (at = pattern.find(kAnySegment)) != std::string::npos;) {
    pattern.replace(at, kAnySegment.size(), "\x01");
  }
  std::vector<std::string> out = Split(pattern);
  for (auto& seg : out) {
    if (seg == "\x01") seg = std::string(kAnySegment);
  }
  return out;
}

bool ServerCore::Match(const RouteEntry& r, const std::vector<std::string>& path,
                       const std::string& whole, std::vector<std::string>* matches) {
  if (path.size() != r.segments.size()) return false;
  matches->assign(1, whole);
  for (size_t i = 0; i < path.size(); ++i) {
    if (r.segments[i] == kAnySegment) {
      if (path[i].empty()) return false;
      matches->push_back(path[i]);
    } else if (r.segments[i] != path[i]) {
      return false;
    }
  }
  return true;
}

void ServerCore::MakeError(HttpResponse& res, int status, const std::string& code,
                           const std::string& message) const {
  res.status = status;
  if (error_body) {
    error_body(res, status, code, message);
  } else {
    res.SetContent(message + "\n", "text/plain; charset=utf-8");
  }
}

void ServerCore::Handle(HttpRequest& req, HttpResponse& res) {
  try {
    if (pre && pre(req, res)) return;
    const std::string method = req.method == "HEAD" ? "GET" : req.method;
    const std::vector<std::string> path = Split(req.path);
    for (const auto& r : routes) {
      if (r.method != method || !Match(r, path, req.path, &req.matches)) continue;
      r.handler(req, res);
      return;
    }
    req.matches.clear();
    MakeError(res, 404, "not_found", "no route for " + req.method + " " + req.path);
  } catch (const std::exception& e) {
    spdlog::error("{} {}: unhandled exception: {}", req.method, req.path, e.what());
    res = HttpResponse{};
    MakeError(res, 500, "internal", std::string("internal error: ") + e.what());
  }
}

// ---- connections -------------------------------------------------------------------

void ServerCore::Park(uint64_t id, std::weak_ptr<SessionBase> s, std::string path) {
  MutexLock lock(&mu);
  parked[id] = Parked{std::move(s), std::move(path)};
}

void ServerCore::Unpark(uint64_t id) {
  MutexLock lock(&mu);
  parked.erase(id);
}

void ServerCore::Release(uint64_t id, const std::string& ip) {
  {
    MutexLock lock(&mu);
    sessions.erase(id);
    parked.erase(id);
    auto it = per_client.find(ip);
    if (it != per_client.end() && --it->second <= 0) per_client.erase(it);
    --open;
  }
  released_cv.SignalAll();
}

void ServerCore::Accept() {
  acceptor.async_accept(asio::make_strand(ioc), [this](ErrorCode ec, tcp::socket socket) {
    if (stopping || !acceptor.is_open()) return;
    if (ec) {
      if (ec == asio::error::no_descriptors || ec.value() == ENFILE ||
          ec == asio::error::no_memory || ec == asio::error::no_buffer_space) {
        // Out of descriptors: accepting again at once would spin.
        spdlog::warn("http: accept: {}; retrying in 100 ms", ec.message());
        accept_retry.expires_after(std::chrono::milliseconds(100));
        accept_retry.async_wait([this](ErrorCode e) {
          if (!e && !stopping) Accept();
        });
        return;
      }
      return Accept();
    }
    OnAccepted(std::move(socket));
    Accept();
  });
}

void ServerCore::OnAccepted(tcp::socket socket) {
  ErrorCode ec;
  auto remote = socket.remote_endpoint(ec);
  if (ec) return;  // already gone
  std::string ip = remote.address().to_string();
  uint64_t id;
  {
    MutexLock lock(&mu);
    auto& mine = per_client[ip];
    if (static_cast<int>(open) >= connection_cap || mine >= options.max_connections_per_client) {
      if (mine == 0) per_client.erase(ip);
      refused++;
      spdlog::debug("http: refusing a connection from {} ({} of its own open, {} in all)", ip, mine,
                    open);
      socket.close(ec);
      return;
    }
    ++mine;
    ++open;
    id = next_id++;
  }
  accepted++;
  socket.set_option(tcp::no_delay(true), ec);
  std::shared_ptr<SessionBase> s = NewSession(this, id, ip, std::move(socket));
  {
    MutexLock lock(&mu);
    sessions[id] = s;
  }
  s->Start();
  if (stopping) s->CloseSoon();  // Stop may have listed the sessions before this one
}

void ServerCore::NotifierLoop() {
  uint64_t seen = Counter();
  while (true) {
    auto t0 = SteadyClock::now();
    if (options.wait_for_change) options.wait_for_change(seen, kNotifierPeriod);
    uint64_t now = Counter();
    if (now == seen) {
      // Also where a wait_for_change that returns early (e.g. a stopped engine) is paced.
      MutexLock lock(&notifier_mu);
      while (!notifier_stop) {
        if (!notifier_cv.WaitUntil(&notifier_mu, t0 + kNotifierPeriod)) break;
      }
      if (notifier_stop) return;
      continue;
    }
    seen = now;
    // Which parked answers the change concerns is asked outside mu (Concerns may read
    // the engine's state); those still parked afterwards are woken. A session that
    // parks meanwhile checks for itself (Session::Park).
    std::vector<std::pair<uint64_t, std::string>> keyed;
    std::vector<std::weak_ptr<SessionBase>> woken;
    {
      MutexLock lock(&mu);
      if (!options.change_concerns) {
        for (auto& [id, p] : parked) woken.push_back(std::move(p.session));
        parked.clear();
      } else {
        for (auto it = parked.begin(); it != parked.end();) {
          if (it->second.path.empty() || it->second.session.expired()) {
            woken.push_back(std::move(it->second.session));
            it = parked.erase(it);
          } else {
            keyed.emplace_back(it->first, it->second.path);
            ++it;
          }
        }
      }
    }
    if (!keyed.empty()) {
      std::erase_if(keyed, [this](const auto& k) { return !Concerns(k.second); });
      MutexLock lock(&mu);
      for (const auto& [id, path] : keyed) {
        auto it = parked.find(id);
        if (it == parked.end()) continue;  // woken meanwhile (its deadline), or gone
        woken.push_back(std::move(it->second.session));
        parked.erase(it);
      }
    }
    for (auto& w : woken) {
      if (auto s = w.lock()) s->WakeSoon();
    }
    MutexLock lock(&notifier_mu);
    if (notifier_stop) return;
  }
}

}  // namespace internal

using internal::ErrorCode;
using internal::ServerCore;
using internal::SessionBase;
using internal::SteadyClock;
using internal::tcp;
using internal::WorkerPool;
namespace asio = internal::asio;
namespace ssl = internal::ssl;

struct HttpServer::Impl : ServerCore {
  using ServerCore::ServerCore;
};

HttpServer::HttpServer(HttpServerOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Route(std::string method, const std::string& pattern, Handler handler) {
  impl_->routes.push_back({std::move(method), Impl::SplitPattern(pattern), std::move(handler)});
}

void HttpServer::SetHooks(PreRouting pre, PostRouting post, ErrorBody error_body) {
  impl_->pre = std::move(pre);
  impl_->post = std::move(post);
  impl_->error_body = std::move(error_body);
}

Result<int> HttpServer::Bind(const std::string& host, int port) {
  Impl& s = *impl_;
  const HttpServerOptions& o = s.options;
  if (!o.tls_certificate.empty() || !o.tls_key.empty()) {
    ssl::context ctx(ssl::context::tls_server);
    ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                    ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 |
                    ssl::context::no_compression);
    ErrorCode ec;
    ctx.use_certificate_chain_file(o.tls_certificate, ec);
    if (!ec) ctx.use_private_key_file(o.tls_key, ssl::context::pem, ec);
    if (ec) {
      return FailedPrecondition("cannot serve HTTPS with " + o.tls_certificate + " and " +
                                o.tls_key + " (unreadable, or not a certificate and its key)");
    }
    s.tls.emplace(std::move(ctx));
  }
  // Every connection is a descriptor: take what the hard limit allows, and keep half of
  // it, at most 4096, for the store, logs and child processes (a hard limit of 20,000
  // then still serves 10,000 containers' long polls and their users).
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    if (rl.rlim_cur < rl.rlim_max) {
      rlimit raised = rl;
      raised.rlim_cur = rl.rlim_max;
      if (setrlimit(RLIMIT_NOFILE, &raised) == 0) rl = raised;
    }
  }
  constexpr int64_t kKeptFiles = 4096;
  int64_t fd_cap = rl.rlim_cur == RLIM_INFINITY
                       ? (1LL << 30)
                       : static_cast<int64_t>(rl.rlim_cur) -
                             std::min<int64_t>(static_cast<int64_t>(rl.rlim_cur) / 2, kKeptFiles);
  s.connection_cap =
      static_cast<int>(std::min<int64_t>(o.max_connections, std::max<int64_t>(fd_cap, 64)));
  if (s.connection_cap < o.max_connections) {
    spdlog::info("http: at most {} connections (RLIMIT_NOFILE {})", s.connection_cap,
                 static_cast<int64_t>(rl.rlim_cur));
  }

  auto taken = [&] {
    return Unavailable("cannot listen on " + host + ":" + std::to_string(port) +
                       " (is another epochd running?)");
  };
  ErrorCode ec;
  tcp::resolver resolver(s.ioc);
  auto endpoints = resolver.resolve(host, std::to_string(port),
                                    tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec || endpoints.empty()) {
    return Unavailable("cannot listen on " + host + ":" + std::to_string(port) + " (" +
                       (ec ? ec.message() : "no address") + ")");
  }
  tcp::endpoint ep = endpoints.begin()->endpoint();
  s.acceptor.open(ep.protocol(), ec);
  if (ec) return taken();
  s.acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  s.acceptor.bind(ep, ec);
  if (ec) {
    ErrorCode ignored;
    s.acceptor.close(ignored);
    return taken();
  }
  s.acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    ErrorCode ignored;
    s.acceptor.close(ignored);
    return taken();
  }
  return static_cast<int>(s.acceptor.local_endpoint().port());
}

void HttpServer::Serve() {
  Impl& s = *impl_;
  if (s.serving || s.stopping || !s.acceptor.is_open()) return;
  s.serving = true;
  s.work.emplace(s.ioc.get_executor());
  s.workers = std::make_unique<WorkerPool>(std::max(1, s.options.worker_threads));
  s.notifier = std::thread([&s] { s.NotifierLoop(); });
  asio::post(s.accept_strand, [&s] { s.Accept(); });
  for (int i = 0; i < std::max(1, s.options.io_threads); ++i) {
    s.io_threads.emplace_back([&s] { s.ioc.run(); });
  }
}

void HttpServer::Stop() {
  Impl& s = *impl_;
  if (s.stopping.exchange(true)) return;
  if (!s.serving) {
    ErrorCode ec;
    s.acceptor.close(ec);
    return;
  }
  asio::post(s.accept_strand, [&s] {
    ErrorCode ec;
    s.acceptor.close(ec);
    s.accept_retry.cancel();
  });
  std::vector<std::shared_ptr<SessionBase>> open;
  {
    MutexLock lock(&s.mu);
    for (auto& [id, w] : s.sessions) {
      if (auto p = w.lock()) open.push_back(std::move(p));
    }
  }
  for (auto& p : open) p->CloseSoon();
  open.clear();
  {
    MutexLock lock(&s.notifier_mu);
    s.notifier_stop = true;
  }
  s.notifier_cv.SignalAll();
  if (s.notifier.joinable()) s.notifier.join();
  // Running handlers finish (a commit waits for its fsync); queued ones are dropped.
  s.workers->Stop();
  {
    // The closes run on the IO threads; give them a moment, then stop regardless.
    MutexLock lock(&s.mu);
    auto deadline = SteadyClock::now() + std::chrono::milliseconds(500);
    while (s.open != 0) {
      if (!s.released_cv.WaitUntil(&s.mu, deadline)) break;
    }
  }
  s.work.reset();
  s.ioc.stop();
  for (auto& t : s.io_threads) t.join();
  s.io_threads.clear();
}

HttpServerStats HttpServer::stats() const {
  HttpServerStats st;
  MutexLock lock(&impl_->mu);
  st.open_connections = impl_->open;
  st.parked = impl_->parked.size();
  st.accepted = impl_->accepted.load();
  st.refused = impl_->refused.load();
  st.timed_out = impl_->timed_out.load();
  return st;
}

}  // namespace epoch::api
