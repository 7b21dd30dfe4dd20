// Session<kTls>: one HTTP/1.1 connection of HttpServer (plain or TLS) on its own strand:
// reads requests with Beast under the head, body, idle and write deadlines, hands each
// to a worker, writes the answer, parks deferred answers and streams until the notifier
// or a timer wakes them, lingers and closes. NewSession (api/http_server_internal.h)
// makes them; ServerCore holds them by SessionBase.

// Boost 1.74's Asio uses std::exchange without including <utility> (g++ 12, C++20): it
// must come before Asio (keep it out of the sorted block below).
// clang-format off
#include <utility>
// clang-format on

#include <spdlog/spdlog.h>

#include <array>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>

#include "api/http_server.h"
#include "api/http_server_internal.h"

namespace epoch::api::internal {

namespace beast = boost::beast;
namespace http = beast::http;

namespace {

// How long a closing connection keeps reading (and discarding) what the client still
// sends, so that the answer we wrote is not lost to a reset (see Session::Linger).
constexpr auto kLingerTime = std::chrono::seconds(2);
// What a connection reads at once, and the most a streaming connection buffers of what
// its client sends while the stream runs (it is only watched for the client leaving).
constexpr size_t kReadChunk = 16 << 10;
constexpr size_t kMaxBufferedWhileStreaming = 64 << 10;

// One connection. Every member is used on the connection's strand, except request_
// and response_, which the worker that runs the handler, poll or producer owns while
// state_ is kWorking (the strand does not touch them then).
template <bool kTls>
class Session : public SessionBase, public std::enable_shared_from_this<Session<kTls>> {
 public:
  using Stream = std::conditional_t<kTls, ssl::stream<tcp::socket>, tcp::socket>;

  Session(ServerCore* server, uint64_t id, std::string ip, tcp::socket socket)
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

  static Stream MakeStream(ServerCore* server, tcp::socket socket) {
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
      case WorkResult::kRespond: return WriteResponse();
      case WorkResult::kPark: return Park(r.seen, response_.deadline());
      case WorkResult::kStreamHead: return WriteStreamHead();
      case WorkResult::kChunk:
        if (r.out.empty()) return AfterChunk(r.next, r.seen);
        return WriteChunk(std::move(r.out), r.next, r.seen);
    }
  }

  // ---- parked responses ----
  void Park(uint64_t seen, SteadyClock::time_point wake_at) {
    state_ = State::kParked;
    // A deferred answer wakes for the changes that concern its path; a stream for all.
    std::string path = response_.streaming() || !request_ ? "" : request_->path;
    server_->Park(id_, this->weak_from_this(), path);
    // A change between the job's start and now would otherwise be missed (one after the
    // Park above is the notifier's to see).
    if (server_->Counter() != seen && server_->Concerns(path)) return OnWake(true);
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
      case StreamNext::kMore: return Work(Job::kProduce, false);
      case StreamNext::kWait: {
        auto tick = response_.tick();
        return Park(seen,
                    tick.count() > 0 ? SteadyClock::now() + tick : SteadyClock::time_point::max());
      }
      case StreamNext::kEnd: break;
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

  ServerCore* const server_;
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

std::shared_ptr<SessionBase> NewSession(ServerCore* server, uint64_t id, std::string ip,
                                        tcp::socket socket) {
  if (server->tls) {
    return std::make_shared<Session<true>>(server, id, std::move(ip), std::move(socket));
  }
  return std::make_shared<Session<false>>(server, id, std::move(ip), std::move(socket));
}

}  // namespace epoch::api::internal
