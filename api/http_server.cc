#include "api/http_server.h"

// Boost 1.74's Asio uses std::exchange without including <utility> (g++ 12, C++20): it
// must come before Asio (keep it out of the sorted block below).
// clang-format off
#include <utility>
// clang-format on

#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cstdio>
#include <deque>
#include <map>
#include <optional>
#include <thread>
#include <unordered_map>

#include "common/mutex.h"

namespace epoch::api {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using ErrorCode = boost::system::error_code;
using SteadyClock = std::chrono::steady_clock;

namespace {

// How long a closing connection keeps reading (and discarding) what the client still
// sends, so that the answer we wrote is not lost to a reset (see Session::Linger).
constexpr auto kLingerTime = std::chrono::seconds(2);
// What a connection reads at once, and the most a streaming connection buffers of what
// its client sends while the stream runs (it is only watched for the client leaving).
constexpr size_t kReadChunk = 16 << 10;
constexpr size_t kMaxBufferedWhileStreaming = 64 << 10;
// The notifier re-checks the change counter (and Stop) at least this often.
constexpr auto kNotifierPeriod = std::chrono::milliseconds(100);

bool IEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

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

}  // namespace

// ---- request and response ---------------------------------------------------------

std::string PercentDecode(std::string_view s, bool plus_is_space) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '%' && i + 2 < s.size() && HexDigit(s[i + 1]) >= 0 && HexDigit(s[i + 2]) >= 0) {
      out += static_cast<char>(HexDigit(s[i + 1]) * 16 + HexDigit(s[i + 2]));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out;
}

std::string HttpRequest::Header(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (IEquals(k, name)) return v;
  }
  return "";
}

bool HttpRequest::HasHeader(std::string_view name) const {
  return std::any_of(headers.begin(), headers.end(),
                     [&](const auto& h) { return IEquals(h.first, name); });
}

std::string HttpRequest::Param(std::string_view name) const {
  for (const auto& [k, v] : params) {
    if (k == name) return v;
  }
  return "";
}

bool HttpRequest::HasParam(std::string_view name) const {
  return std::any_of(params.begin(), params.end(), [&](const auto& p) { return p.first == name; });
}

std::vector<std::string> HttpRequest::Params(std::string_view name) const {
  std::vector<std::string> out;
  for (const auto& [k, v] : params) {
    if (k == name) out.push_back(v);
  }
  return out;
}

void HttpRequest::SetQuery(std::string_view query) {
  params.clear();
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view item = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (item.empty()) continue;
    size_t eq = item.find('=');
    std::string_view key = item.substr(0, eq);
    std::string_view value =
        eq == std::string_view::npos ? std::string_view() : item.substr(eq + 1);
    params.emplace_back(PercentDecode(key, true), PercentDecode(value, true));
  }
}

void HttpResponse::SetHeader(std::string name, std::string value) {
  headers.erase(std::remove_if(headers.begin(), headers.end(),
                               [&](const auto& h) { return IEquals(h.first, name); }),
                headers.end());
  headers.emplace_back(std::move(name), std::move(value));
}

std::string HttpResponse::Header(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (IEquals(k, name)) return v;
  }
  return "";
}

void HttpResponse::SetContent(std::string content, std::string content_type) {
  body = std::move(content);
  SetHeader("Content-Type", std::move(content_type));
}

void HttpResponse::Defer(Clock::time_point deadline, Poll poll) {
  deadline_ = deadline;
  poll_ = std::move(poll);
}

void HttpResponse::Stream(std::string content_type, Produce produce,
                          std::chrono::milliseconds tick) {
  SetHeader("Content-Type", std::move(content_type));
  SetHeader("Cache-Control", "no-cache");
  produce_ = std::move(produce);
  tick_ = tick;
}

// ---- the server -------------------------------------------------------------------

namespace {

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
  static std::vector<std::string> Split(std::string_view path) {
    std::vector<std::string> out;
    while (true) {
      size_t slash = path.find('/');
      out.emplace_back(path.substr(0, slash));
      if (slash == std::string_view::npos) return out;
      path.remove_prefix(slash + 1);
    }
  }
  // A route pattern's segments ("([^/]+)" holds a '/' of its own).
  static std::vector<std::string> SplitPattern(std::string pattern) {
    for (size_t at; (at = pattern.find(kAnySegment)) != std::string::npos;) {
      pattern.replace(at, kAnySegment.size(), "\x01");
    }
    std::vector<std::string> out = Split(pattern);
    for (auto& seg : out) {
      if (seg == "\x01") seg = std::string(kAnySegment);
    }
    return out;
  }
  // True when `path` matches; *matches gets [0] the path and each captured segment.
  static bool Match(const RouteEntry& r, const std::vector<std::string>& path,
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
  std::unordered_map<uint64_t, std::weak_ptr<SessionBase>> parked GUARDED_BY(mu);
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

  void MakeError(HttpResponse& res, int status, const std::string& code,
                 const std::string& message) const {
    res.status = status;
    if (error_body) {
      error_body(res, status, code, message);
    } else {
      res.SetContent(message + "\n", "text/plain; charset=utf-8");
    }
  }

  // Pre-routing, routing, the handler; exceptions become 500s. A worker thread.
  void Handle(HttpRequest& req, HttpResponse& res) {
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

  void Park(uint64_t id, std::weak_ptr<SessionBase> s) {
    MutexLock lock(&mu);
    parked[id] = std::move(s);
  }
  void Unpark(uint64_t id) {
    MutexLock lock(&mu);
    parked.erase(id);
  }
  void Release(uint64_t id, const std::string& ip) {
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

  void Accept();
  void OnAccepted(tcp::socket socket);
  void NotifierLoop();
};

using Impl = ServerCore;

// One connection. Every member is used on the connection's strand, except request_
// and response_, which the worker that runs the handler, poll or producer owns while
// state_ is kWorking (the strand does not touch them then).
template <bool kTls>
class Session : public SessionBase, public std::enable_shared_from_this<Session<kTls>> {
 public:
  using Stream = std::conditional_t<kTls, ssl::stream<tcp::socket>, tcp::socket>;

  Session(Impl* server, uint64_t id, std::string ip, tcp::socket socket)
      : server_(server),
        id_(id),
        ip_(std::move(ip)),
        strand_(socket.get_executor()),
        stream_(MakeStream(server, std::move(socket))),
        timer_(strand_),
        wake_timer_(strand_) {}

  ~Session() override {
    if (!released_) server_->Release(id_, ip_);
  }

  void Start() override {
    asio::post(strand_, [self = this->shared_from_this()] { self->Begin(); });
  }
  void CloseSoon() override {
    asio::post(strand_, [self = this->shared_from_this()] { self->Close(); });
  }
  void WakeSoon() override {
    asio::post(strand_, [self = this->shared_from_this()] { self->OnWake(true); });
  }

 private:
  enum class State { kReading, kWorking, kWriting, kParked, kClosing, kClosed };
  enum class Job { kHandle, kPoll, kProduce };
  // What a worker hands back to the strand.
  struct WorkResult {
    enum Kind { kRespond, kPark, kStreamHead, kChunk } kind = kRespond;
    StreamNext next = StreamNext::kWait;
    std::string out;
    uint64_t seen = 0;  // the change counter before the job ran
  };

  static Stream MakeStream(Impl* server, tcp::socket socket) {
    if constexpr (kTls) {
      return Stream(std::move(socket), *server->tls);
    } else {
      (void)server;
      return socket;
    }
  }
  tcp::socket& Socket() { return beast::get_lowest_layer(stream_); }
  std::shared_ptr<Session> Self() { return this->shared_from_this(); }

  // ---- deadlines ----
  void Arm(Micros d) {
    uint64_t gen = ++timer_gen_;
    timer_.expires_after(d);
    timer_.async_wait([self = Self(), gen](ErrorCode ec) {
      if (ec || gen != self->timer_gen_ || self->closed_) return;
      if (self->state_ != State::kClosing) {
        self->server_->timed_out++;
        spdlog::debug("http: closing the connection of {} at a deadline", self->ip_);
      }
      self->Close();
    });
  }
  void Disarm() {
    ++timer_gen_;
    timer_.cancel();
  }
  void ArmWake(SteadyClock::time_point at) {
    uint64_t gen = ++wake_gen_;
    wake_timer_.expires_at(at);
    wake_timer_.async_wait([self = Self(), gen](ErrorCode ec) {
      if (ec || gen != self->wake_gen_) return;
      self->OnWake(false);
    });
  }

  // ---- reading a request ----
  void Begin() {
    if constexpr (kTls) {
      Arm(server_->options.tls_handshake_timeout);
      stream_.async_handshake(ssl::stream_base::server, [self = Self()](ErrorCode ec) {
        if (ec || self->closed_) return self->Close();
        self->ReadRequest(/*fresh=*/true);
      });
    } else {
      ReadRequest(/*fresh=*/true);
    }
  }

  // fresh: the connection's first request (its head deadline runs from the accept or
  // handshake); else keep-alive: wait up to idle_timeout for a first byte, then the
  // head deadline runs from it.
  void ReadRequest(bool fresh) {
    state_ = State::kReading;
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(server_->options.max_header_bytes));
    parser_->body_limit(server_->options.max_body_bytes);
    if (fresh || buffer_.size() > 0) {
      Arm(server_->options.header_timeout);
      return ReadHead();
    }
    Arm(server_->options.idle_timeout);
    stream_.async_read_some(buffer_.prepare(kReadChunk), [self = Self()](ErrorCode ec, size_t n) {
      if (ec || self->closed_) return self->Close();
      self->buffer_.commit(n);
      self->Arm(self->server_->options.header_timeout);
      self->ReadHead();
    });
  }

  void ReadHead() {
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = Self()](ErrorCode ec, size_t) { self->OnHead(ec); });
  }

  // A read error: a 400/413 answer for what the parser refused, else the client left.
  bool ReadFailed(ErrorCode ec) {
    if (!ec) return false;
    if (closed_) return true;
    if (ec == http::error::body_limit) {
      Fail(413, "too_large",
           "the request body is larger than api.maxBodyBytes (" +
               std::to_string(server_->options.max_body_bytes) + " bytes)");
    } else if (ec == http::error::header_limit) {
      Fail(400, "malformed",
           "malformed HTTP request (bad request line or headers, or headers over " +
               std::to_string(server_->options.max_header_bytes / 1024) + " KiB)");
    } else if (ec.category() == http::make_error_code(http::error::bad_method).category() &&
               ec != http::error::end_of_stream && ec != http::error::partial_message) {
      Fail(400, "malformed",
           "malformed HTTP request (" + ec.message() +
               "; bad request line or headers, or "
               "headers over " +
               std::to_string(server_->options.max_header_bytes / 1024) + " KiB)");
    } else {
      Close();
    }
    return true;
  }

  void OnHead(ErrorCode ec) {
    if (ReadFailed(ec)) return;
    auto& msg = parser_->get();
    if (parser_->is_done()) return Dispatch();
    Arm(server_->options.body_timeout);
    beast::string_view expect = msg[http::field::expect];
    if (msg.version() >= 11 && IEquals({expect.data(), expect.size()}, "100-continue")) {
      static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      return asio::async_write(stream_, asio::buffer(kContinue),
                               [self = Self()](ErrorCode ec, size_t) {
                                 if (ec || self->closed_) return self->Close();
                                 self->ReadBody();
                               });
    }
    ReadBody();
  }

  void ReadBody() {
    http::async_read(stream_, buffer_, *parser_, [self = Self()](ErrorCode ec, size_t) {
      if (self->ReadFailed(ec)) return;
      self->Dispatch();
    });
  }

  // A complete request: to a worker.
  void Dispatch() {
    Disarm();
    auto& msg = parser_->get();
    request_ = std::make_shared<HttpRequest>();
    HttpRequest& req = *request_;
    req.method = std::string(msg.method_string());
    req.target = std::string(msg.target());
    req.version = static_cast<int>(msg.version());
    std::string_view target = req.target;
    size_t q = target.find('?');
    req.path = PercentDecode(target.substr(0, q), false);
    if (q != std::string_view::npos) req.SetQuery(target.substr(q + 1));
    for (const auto& f : msg)
      req.headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
    req.body = std::move(msg.body());
    req.remote_ip = ip_;
    keep_alive_ = msg.keep_alive();
    head_only_ = req.method == "HEAD";
    parser_.reset();
    response_ = HttpResponse{};
    Work(Job::kHandle, false);
  }

  // ---- workers ----
  void Work(Job job, bool changed) {
    state_ = State::kWorking;
    server_->workers->Post([self = Self(), job, changed] { self->RunJob(job, changed); });
  }

  // On a worker thread.
  void RunJob(Job job, bool changed) {
    WorkResult r;
    r.seen = server_->Counter();
    HttpResponse& res = response_;
    try {
      if (job == Job::kHandle) {
        server_->Handle(*request_, res);
        if (res.streaming()) {
          r.kind = WorkResult::kStreamHead;
        } else if (res.deferred()) {
          r.kind = Poll(false) ? WorkResult::kRespond : WorkResult::kPark;
        }
      } else if (job == Job::kPoll) {
        r.kind = Poll(changed) ? WorkResult::kRespond : WorkResult::kPark;
      } else {
        r.kind = WorkResult::kChunk;
        r.next = res.produce()(&r.out, changed);
      }
    } catch (const std::exception& e) {
      spdlog::error("{} {}: unhandled exception: {}", request_->method, request_->path, e.what());
      if (job == Job::kProduce) {
        r.next = StreamNext::kEnd;
      } else {
        res = HttpResponse{};
        server_->MakeError(res, 500, "internal", std::string("internal error: ") + e.what());
        r.kind = WorkResult::kRespond;
      }
    }
    if ((r.kind == WorkResult::kRespond || r.kind == WorkResult::kStreamHead) && server_->post) {
      server_->post(*request_, res);
    }
    asio::post(strand_,
               [self = Self(), r = std::move(r)]() mutable { self->WorkDone(std::move(r)); });
  }

  // On a worker: one poll of a deferred response; true when it is complete.
  bool Poll(bool) {
    HttpResponse& res = response_;
    bool expired = SteadyClock::now() >= res.deadline() || server_->stopping;
    bool done = res.poll()(res, expired);
    if (!done && expired) {
      server_->MakeError(res, 500, "internal", "a deferred answer missed its deadline");
      done = true;
    }
    return done;
  }

  void WorkDone(WorkResult r) {
    if (closed_) {
      response_ = HttpResponse{};  // a producer and what it holds go now
      return;
    }
    switch (r.kind) {
      case WorkResult::kRespond:
        return WriteResponse();
      case WorkResult::kPark:
        return Park(r.seen, response_.deadline());
      case WorkResult::kStreamHead:
        return WriteStreamHead();
      case WorkResult::kChunk:
        if (r.out.empty()) return AfterChunk(r.next, r.seen);
        return WriteChunk(std::move(r.out), r.next, r.seen);
    }
  }

  // ---- parked responses ----
  void Park(uint64_t seen, SteadyClock::time_point wake_at) {
    state_ = State::kParked;
    server_->Park(id_, this->weak_from_this());
    // A change between the job's start and now would otherwise be missed.
    if (server_->Counter() != seen) return OnWake(true);
    if (wake_at != SteadyClock::time_point::max()) ArmWake(wake_at);
  }

  void OnWake(bool changed) {
    if (closed_ || state_ != State::kParked) return;
    server_->Unpark(id_);
    ++wake_gen_;
    wake_timer_.cancel();
    Work(response_.streaming() ? Job::kProduce : Job::kPoll, changed);
  }

  // ---- writing ----
  template <typename Message>
  void SetHead(Message& msg, const HttpResponse& res) {
    msg.result(static_cast<unsigned>(res.status));
    for (const auto& [k, v] : res.headers) msg.insert(k, v);
  }

  void WriteResponse() {
    state_ = State::kWriting;
    HttpResponse& res = response_;
    Arm(server_->options.write_timeout);
    auto done = [self = Self()](ErrorCode ec, size_t) { self->OnWritten(ec); };
    unsigned version = request_ ? static_cast<unsigned>(request_->version) : 11;
    if (head_only_) {
      auto msg = std::make_shared<http::response<http::empty_body>>();
      msg->version(version);
      SetHead(*msg, res);
      msg->content_length(res.body.size());
      msg->keep_alive(keep_alive_);
      return http::async_write(stream_, *msg, [msg, done](ErrorCode ec, size_t n) { done(ec, n); });
    }
    auto msg = std::make_shared<http::response<http::string_body>>();
    msg->version(version);
    SetHead(*msg, res);
    msg->body() = std::move(res.body);
    msg->keep_alive(keep_alive_);
    msg->prepare_payload();
    http::async_write(stream_, *msg, [msg, done](ErrorCode ec, size_t n) { done(ec, n); });
  }

  void OnWritten(ErrorCode ec) {
    if (ec || closed_) return Close();
    Disarm();
    request_.reset();
    response_ = HttpResponse{};
    if (!keep_alive_) return Linger();
    ReadRequest(/*fresh=*/false);
  }

  // An answer the server makes itself, for a request it could not read: the
  // connection closes after it.
  void Fail(int status, const std::string& code, const std::string& message) {
    Disarm();
    keep_alive_ = false;
    head_only_ = false;
    if (!request_) {
      request_ = std::make_shared<HttpRequest>();
      if (parser_ && parser_->is_header_done()) {
        request_->method = std::string(parser_->get().method_string());
        request_->target = std::string(parser_->get().target());
        request_->path =
            PercentDecode(request_->target.substr(0, request_->target.find('?')), false);
      }
      request_->remote_ip = ip_;
    }
    response_ = HttpResponse{};
    server_->MakeError(response_, status, code, message);
    if (server_->post) {
      try {
        server_->post(*request_, response_);
      } catch (const std::exception& e) {
        spdlog::error("http: post-routing hook: {}", e.what());
      }
    }
    WriteResponse();
  }

  void WriteStreamHead() {
    state_ = State::kWriting;
    const HttpResponse& res = response_;
    chunked_ = request_->version >= 11;
    auto msg = std::make_shared<http::response<http::empty_body>>();
    msg->version(static_cast<unsigned>(request_->version));
    SetHead(*msg, res);
    // A stream ends the connection: the client's next request, if any, comes on a new one.
    msg->keep_alive(false);
    if (chunked_) msg->chunked(true);
    auto sr = std::make_shared<http::response_serializer<http::empty_body>>(*msg);
    Arm(server_->options.write_timeout);
    http::async_write_header(stream_, *sr, [self = Self(), msg, sr](ErrorCode ec, size_t) {
      if (ec || self->closed_) return self->Close();
      self->Disarm();
      if (self->head_only_) return self->Linger();
      self->WatchForHangUp();
      self->Work(Job::kProduce, true);
    });
  }

  void WriteChunk(std::string out, StreamNext next, uint64_t seen) {
    state_ = State::kWriting;
    if (chunked_) {
      char size[24];
      std::snprintf(size, sizeof size, "%zx\r\n", out.size());
      chunk_ = size;
      chunk_ += out;
      chunk_ += "\r\n";
    } else {
      chunk_ = std::move(out);
    }
    Arm(server_->options.write_timeout);
    asio::async_write(stream_, asio::buffer(chunk_),
                      [self = Self(), next, seen](ErrorCode ec, size_t) {
                        if (ec || self->closed_) return self->Close();
                        self->Disarm();
                        self->AfterChunk(next, seen);
                      });
  }

  void AfterChunk(StreamNext next, uint64_t seen) {
    switch (next) {
      case StreamNext::kMore:
        return Work(Job::kProduce, false);
      case StreamNext::kWait: {
        auto tick = response_.tick();
        return Park(seen,
                    tick.count() > 0 ? SteadyClock::now() + tick : SteadyClock::time_point::max());
      }
      case StreamNext::kEnd:
        break;
    }
    response_ = HttpResponse{};  // the producer and what it holds go with the stream
    state_ = State::kWriting;
    if (!chunked_) return Linger();
    chunk_ = "0\r\n\r\n";
    Arm(server_->options.write_timeout);
    asio::async_write(stream_, asio::buffer(chunk_), [self = Self()](ErrorCode ec, size_t) {
      if (ec || self->closed_) return self->Close();
      self->Disarm();
      self->Linger();
    });
  }

  // While a stream runs, a read notices the client leaving (its producer and whatever
  // it holds are then released at once, not at the next write).
  void WatchForHangUp() {
    if (watching_ || closed_ || buffer_.size() >= kMaxBufferedWhileStreaming) return;
    watching_ = true;
    stream_.async_read_some(buffer_.prepare(kReadChunk), [self = Self()](ErrorCode ec, size_t n) {
      self->watching_ = false;
      if (ec) return self->Close();
      self->buffer_.commit(n);
      self->WatchForHangUp();
    });
  }

  // ---- closing ----
  // After the last answer: stop sending, then read and discard what the client still
  // sends (e.g. the rest of a refused body) until it closes or kLingerTime passes, so
  // that closing with unread data (a TCP reset) does not destroy the answer in flight.
  void Linger() {
    if (closed_) return;
    state_ = State::kClosing;
    ErrorCode ec;
    Socket().shutdown(tcp::socket::shutdown_send, ec);
    if (ec) return Close();
    Arm(kLingerTime);
    Drain();
  }
  void Drain() {
    Socket().async_read_some(asio::buffer(drain_), [self = Self()](ErrorCode ec, size_t) {
      if (ec || self->closed_) return self->Close();
      self->Drain();
    });
  }

  void Close() {
    if (closed_) return;
    closed_ = true;
    // A parked stream's producer (and its stream slot) is released now; one running on a
    // worker is released when it returns (WorkDone).
    if (state_ != State::kWorking) response_ = HttpResponse{};
    state_ = State::kClosed;
    Disarm();
    ++wake_gen_;
    wake_timer_.cancel();
    ErrorCode ec;
    Socket().shutdown(tcp::socket::shutdown_both, ec);
    Socket().close(ec);
    released_ = true;
    server_->Release(id_, ip_);
  }

  Impl* const server_;
  const uint64_t id_;
  const std::string ip_;
  asio::any_io_executor strand_;  // the connection's strand (its socket's executor)
  Stream stream_;
  asio::steady_timer timer_;       // the current phase's deadline
  asio::steady_timer wake_timer_;  // a parked response's deadline or a stream's tick
  uint64_t timer_gen_ = 0, wake_gen_ = 0;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::shared_ptr<HttpRequest> request_;
  HttpResponse response_;
  State state_ = State::kReading;
  bool closed_ = false;
  bool released_ = false;
  bool keep_alive_ = false;
  bool head_only_ = false;
  bool chunked_ = false;
  bool watching_ = false;
  std::string chunk_;
  std::array<char, 4096> drain_{};
};

}  // namespace

struct HttpServer::Impl : ServerCore {
  using ServerCore::ServerCore;
};

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
  std::shared_ptr<SessionBase> s;
  if (tls) {
    s = std::make_shared<Session<true>>(this, id, ip, std::move(socket));
  } else {
    s = std::make_shared<Session<false>>(this, id, ip, std::move(socket));
  }
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
    std::unordered_map<uint64_t, std::weak_ptr<SessionBase>> woken;
    {
      MutexLock lock(&mu);
      woken.swap(parked);
    }
    for (auto& [id, w] : woken) {
      if (auto s = w.lock()) s->WakeSoon();
    }
    MutexLock lock(&notifier_mu);
    if (notifier_stop) return;
  }
}

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
  // it for the store, logs and child processes.
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    if (rl.rlim_cur < rl.rlim_max) {
      rlimit raised = rl;
      raised.rlim_cur = rl.rlim_max;
      if (setrlimit(RLIMIT_NOFILE, &raised) == 0) rl = raised;
    }
  }
  int64_t fd_cap =
      rl.rlim_cur == RLIM_INFINITY ? (1LL << 30) : static_cast<int64_t>(rl.rlim_cur) / 2;
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
