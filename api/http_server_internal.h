// Internal to api/'s HTTP server (the epoch_http library; not part of its API, which is
// api/http_server.h): what its files share. WorkerPool, the handler threads;
// SessionBase, what the server core holds of a connection; ServerCore, the state
// behind HttpServer (HttpServer::Impl is a ServerCore) shared by its threads and
// sessions. ServerCore's members are defined in http_server.cc (routing, the accept
// loop, the notifier), sessions in http_session.cc (NewSession), IEquals in
// http_message.cc.
//
// It includes Boost.Asio: include it only from api/http_*.cc, never from a header.
//
// Thread-safety: WorkerPool and ServerCore's mutex-protected members are annotated;
// ServerCore's routes, hooks and connection_cap are written before Serve and read-only
// once the threads run.
#pragma once

// Boost 1.74's Asio uses std::exchange without including <utility> (g++ 12, C++20): it
// must come before Asio (keep it out of the sorted block below).
// clang-format off
#include <utility>
// clang-format on

#include <atomic>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "api/http_server.h"
#include "common/mutex.h"

namespace epoch::api::internal {

namespace asio = boost::asio;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using ErrorCode = boost::system::error_code;
using SteadyClock = std::chrono::steady_clock;

// ASCII case-insensitive equality (header names and tokens).
bool IEquals(std::string_view a, std::string_view b);

// A fixed-size pool of threads running posted tasks in order. Tasks still queued at
// Stop are dropped (their connections are being closed).
class WorkerPool {
 public:
  explicit WorkerPool(int n) {
    for (int i = 0; i < n; ++i) threads_.emplace_back([this] { Run(); });
  }
  ~WorkerPool() { Stop(); }

  void Post(std::function<void()> task) {
    {
      MutexLock lock(&mu_);
      if (stopping_) return;
      queue_.push_back(std::move(task));
    }
    cv_.Signal();
  }

  void Stop() {
    std::deque<std::function<void()>> dropped;
    {
      MutexLock lock(&mu_);
      if (stopping_ && threads_.empty()) return;
      stopping_ = true;
    }
    cv_.SignalAll();
    for (auto& t : threads_) t.join();
    threads_.clear();
    {
      MutexLock lock(&mu_);
      dropped.swap(queue_);
    }
    // Destroyed here, outside the lock: a task may own the last reference to a session.
  }

 private:
  void Run() {
    while (true) {
      std::function<void()> task;
      {
        MutexLock lock(&mu_);
        while (!stopping_ && queue_.empty()) cv_.Wait(&mu_);
        if (stopping_) return;
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }

  Mutex mu_;
  CondVar cv_;
  std::deque<std::function<void()>> queue_ GUARDED_BY(mu_);
  bool stopping_ GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;  // the constructor and Stop only (the owner's thread)
};

// What the server core offers its sessions, and what it holds of them.
class SessionBase {
 public:
  virtual ~SessionBase() = default;
  virtual void Start() = 0;
  virtual void CloseSoon() = 0;  // from any thread
  virtual void WakeSoon() = 0;   // from any thread: the change counter moved
};

// Everything the server shares between its threads and sessions (HttpServer::Impl is
// this; sessions know it by this name).
class ServerCore {
 public:
  using Handler = HttpServer::Handler;
  using PreRouting = HttpServer::PreRouting;
  using PostRouting = HttpServer::PostRouting;
  using ErrorBody = HttpServer::ErrorBody;
  explicit ServerCore(HttpServerOptions o) : options(std::move(o)) {}

  HttpServerOptions options;
  struct RouteEntry {
    std::string method;
    std::vector<std::string> segments;  // kAnySegment: any one non-empty segment, captured
    Handler handler;
  };
  static constexpr std::string_view kAnySegment = "([^/]+)";

  // "/v1/runs/r-1" -> {"", "v1", "runs", "r-1"}.
  static std::vector<std::string> Split(std::string_view path);
  // A route pattern's segments ("([^/]+)" holds a '/' of its own).
  static std::vector<std::string> SplitPattern(std::string pattern);
  // True when `path` matches; *matches gets [0] the path and each captured segment.
  static bool Match(const RouteEntry& r, const std::vector<std::string>& path,
                    const std::string& whole, std::vector<std::string>* matches);
  // Routes, hooks and connection_cap: set before Serve (Route, SetHooks, Bind), read-only
  // once the threads run.
  std::vector<RouteEntry> routes;
  PreRouting pre;
  PostRouting post;
  ErrorBody error_body;
  int connection_cap = 0;
  std::atomic<bool> stopping{false};
  bool serving = false;  // Serve and Stop only (one thread)

  // Declared before the io_context: sessions (destroyed with its pending handlers) use
  // them in their destructors.
  mutable Mutex mu;
  CondVar released_cv;  // a connection was released (Stop waits on it)
  std::unordered_map<uint64_t, std::weak_ptr<SessionBase>> sessions GUARDED_BY(mu);
  // A parked session, and the path whose changes concern it (options.change_concerns);
  // empty: every change does (streams).
  struct Parked {
    std::weak_ptr<SessionBase> session;
    std::string path;
  };
  std::unordered_map<uint64_t, Parked> parked GUARDED_BY(mu);
  std::map<std::string, int> per_client GUARDED_BY(mu);
  uint64_t next_id GUARDED_BY(mu) = 0;
  uint64_t open GUARDED_BY(mu) = 0;
  std::atomic<uint64_t> accepted{0}, refused{0}, timed_out{0};

  Mutex notifier_mu;
  CondVar notifier_cv;
  bool notifier_stop GUARDED_BY(notifier_mu) = false;

  std::optional<ssl::context> tls;  // outlives every TLS stream
  asio::io_context ioc;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  asio::strand<asio::io_context::executor_type> accept_strand{asio::make_strand(ioc)};
  tcp::acceptor acceptor{accept_strand};
  asio::steady_timer accept_retry{accept_strand};
  std::vector<std::thread> io_threads;
  std::unique_ptr<WorkerPool> workers;
  std::thread notifier;

  uint64_t Counter() const { return options.change_counter ? options.change_counter() : 0; }

  // Fills res with an answer the server makes itself (through error_body when set).
  void MakeError(HttpResponse& res, int status, const std::string& code,
                 const std::string& message) const;

  // Pre-routing, routing, the handler; exceptions become 500s. A worker thread.
  void Handle(HttpRequest& req, HttpResponse& res);

  // A parked session is woken by the notifier when the change counter moves and the
  // change concerns `path` (Concerns; "" for streams: every change does).
  void Park(uint64_t id, std::weak_ptr<SessionBase> s, std::string path);
  // Whether a change may concern the parked answer to `path` (options.change_concerns).
  bool Concerns(const std::string& path) const {
    return path.empty() || !options.change_concerns || options.change_concerns(path);
  }
  void Unpark(uint64_t id);
  // A session is gone: its slot (in all and for its client's IP) frees.
  void Release(uint64_t id, const std::string& ip);

  void Accept();
  void OnAccepted(tcp::socket socket);
  void NotifierLoop();
};

// A new connection's session (TLS when the server has a TLS context), not yet started.
// Defined in http_session.cc.
std::shared_ptr<SessionBase> NewSession(ServerCore* server, uint64_t id, std::string ip,
                                        tcp::socket socket);

}  // namespace epoch::api::internal
