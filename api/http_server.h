// HttpServer: an asynchronous HTTP/1.1 server (Boost.Beast over Boost.Asio, TLS through
// asio::ssl) for epochd's API. Beast and Asio stay inside its .cc files (http_server.cc,
// http_session.cc, http_message.cc): this header is cheap to include.
//
// What it owns and decides:
//  - Connections: an acceptor, one session per connection (plain or TLS), keep-alive and
//    pipelining, a global cap (`max_connections`) and a cap per client IP
//    (`max_connections_per_client`); a connection over either cap is closed at once.
//    RLIMIT_NOFILE is raised to its hard limit when the server binds, and all of it
//    goes to connections but half of it, at most 4096, kept for everything else.
//  - Parsing: request heads of at most `max_header_bytes` (else 400), bodies of at most
//    `max_body_bytes` whether sized by Content-Length or chunked (else 413 as soon as
//    the limit is passed; what the client still sends is read and dropped for up to
//    2 s, so that it sees the answer, then the connection closes), `Expect:
//    100-continue`.
//  - Deadlines, all Asio timers (no thread waits for a slow client): the TLS handshake,
//    a complete request head (a client dripping bytes is cut off at it), the body, a
//    keep-alive connection's idle time, each write.
//  - Threads: `io_threads` run every socket; `worker_threads` run handlers (which may
//    block briefly, e.g. on an fsync); one notifier thread wakes parked responses when
//    the change counter moves. Nothing else: the thread count does not grow with
//    connections, streams or long polls.
//
// Handlers answer in one of three ways:
//  - at once: fill HttpResponse (status, headers, body);
//  - later (long polls): HttpResponse::Defer(deadline, poll). The response parks without
//    a thread; `poll` runs on a worker right away, then each time the change counter
//    moves (and `change_concerns` says the change may concern it) and at the deadline
//    (expired = true, when it must answer), until it returns true;
//  - as a stream (SSE): HttpResponse::Stream(content_type, produce, tick). The head goes
//    out (chunked; the connection closes when the stream ends), then `produce` runs on a
//    worker right away, when the change counter moves, every `tick` (if set) and, when
//    it asks for it, as soon as its last output is written: writes are asynchronous and
//    backpressured, so a slow reader only delays its own producer. A producer runs at
//    most once at a time per stream, and is destroyed when the stream ends or the
//    client goes away (so an RAII guard it owns holds for exactly the stream's life).
//
// Thread-safety: Route/SetHooks before Bind; Bind, Serve and Stop from one thread;
// handlers, polls and producers run on worker threads, concurrently for different
// requests.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/status.h"

namespace epoch::api {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

// One parsed request. The path is percent-decoded (not '+'); query values are
// percent-decoded with '+' as a space. Header names compare case-insensitively.
class HttpRequest {
 public:
  std::string method;  // "GET", "POST", ...
  std::string target;  // as sent: "/v1/runs?state=queued"
  std::string path;    // decoded, without the query: "/v1/runs"
  std::string body;
  std::string remote_ip;  // the client's address, e.g. "127.0.0.1"
  int version = 11;       // 10 or 11
  // Set by routing: [0] the whole path, [i] the route pattern's i-th group.
  std::vector<std::string> matches;

  // The first header of that name, "" if none.
  std::string Header(std::string_view name) const;
  bool HasHeader(std::string_view name) const;
  // The first query parameter of that name, "" if none.
  std::string Param(std::string_view name) const;
  bool HasParam(std::string_view name) const;
  // Every value of a repeated parameter (label=a&label=b), in order.
  std::vector<std::string> Params(std::string_view name) const;

  // Parsing helpers the server uses (public for tests).
  void SetQuery(std::string_view query);
  HttpHeaders headers;
  std::vector<std::pair<std::string, std::string>> params;
};

// What a stream producer wants next.
enum class StreamNext {
  kMore,  // call me again as soon as what I wrote is sent
  kWait,  // call me when something changes (or at the next tick)
  kEnd,   // the stream is complete (after what I wrote)
};

class HttpResponse {
 public:
  using Clock = std::chrono::steady_clock;
  // Fills the response (status, headers, body); returns true when it is complete.
  // `expired`: the deadline passed or the server is stopping; it must complete now.
  using Poll = std::function<bool(HttpResponse& res, bool expired)>;
  // Appends the next bytes of the stream to *out. `changed`: the change counter moved
  // since it last ran (false: a tick, or the call after a write).
  using Produce = std::function<StreamNext(std::string* out, bool changed)>;

  int status = 200;
  std::string body;
  HttpHeaders headers;

  // Replaces every header of that name.
  void SetHeader(std::string name, std::string value);
  std::string Header(std::string_view name) const;
  void SetContent(std::string content, std::string content_type);

  // Answer later (see the header comment).
  void Defer(Clock::time_point deadline, Poll poll);
  // Answer with a stream (see the header comment). tick 0: no ticks.
  void Stream(std::string content_type, Produce produce,
              std::chrono::milliseconds tick = std::chrono::milliseconds(0));

  bool deferred() const { return static_cast<bool>(poll_); }
  bool streaming() const { return static_cast<bool>(produce_); }
  // For the server: what Defer and Stream were given.
  const Poll& poll() const { return poll_; }
  Clock::time_point deadline() const { return deadline_; }
  const Produce& produce() const { return produce_; }
  std::chrono::milliseconds tick() const { return tick_; }

 private:
  Poll poll_;
  Clock::time_point deadline_{};
  Produce produce_;
  std::chrono::milliseconds tick_{0};
};

struct HttpServerOptions {
  int io_threads = 2;
  int worker_threads = 32;
  size_t max_header_bytes = 8 << 10;
  size_t max_body_bytes = 1 << 20;
  int max_connections = 10000;           // also within RLIMIT_NOFILE (see above)
  int max_connections_per_client = 256;  // per remote IP
  Micros tls_handshake_timeout = std::chrono::seconds(10);
  Micros header_timeout = std::chrono::seconds(10);  // a complete request head
  Micros body_timeout = std::chrono::seconds(30);
  Micros idle_timeout = std::chrono::seconds(30);   // keep-alive between requests
  Micros write_timeout = std::chrono::seconds(30);  // each write of a response or chunk
  // TLS: PEM certificate (chain) and key files; both empty for plain HTTP.
  std::string tls_certificate;
  std::string tls_key;
  // What parked responses wait for: a counter that moves on every change, and a call
  // that blocks until it differs from `seen` or the timeout passes (it may return
  // early; the notifier copes). Unset: parked responses wake only on deadlines/ticks.
  std::function<uint64_t()> change_counter;
  std::function<void(uint64_t seen, std::chrono::milliseconds timeout)> wait_for_change;
  // Optional: whether a change can concern the parked deferred answer (not a stream) to
  // a request for `path`. False leaves it parked until a later change or its deadline,
  // so that a change wakes only the long polls it concerns, not every one (10,000 parked
  // container polls would otherwise all run again on every commit). Runs on the notifier
  // and IO threads with no lock of the server held, after the change is visible to the
  // polls; must be cheap, and true whenever in doubt. Unset: every change wakes every
  // parked answer.
  std::function<bool(const std::string& path)> change_concerns;
};

// Counters, for /metrics and tests.
struct HttpServerStats {
  uint64_t open_connections = 0;
  uint64_t accepted = 0;
  uint64_t refused = 0;    // closed at accept: over a connection cap
  uint64_t timed_out = 0;  // closed at a deadline
  uint64_t parked = 0;     // deferred responses and streams waiting now
};

class HttpServer {
 public:
  using Handler = std::function<void(HttpRequest&, HttpResponse&)>;
  // Runs before routing; true: it answered (the route is not called).
  using PreRouting = std::function<bool(HttpRequest&, HttpResponse&)>;
  // Runs on every answer just before its head is written (also on the server's own).
  using PostRouting = std::function<void(const HttpRequest&, HttpResponse&)>;
  // Fills the body of an answer the server makes itself (400, 404, 413, 500).
  using ErrorBody = std::function<void(HttpResponse&, int status, const std::string& code,
                                       const std::string& message)>;

  explicit HttpServer(HttpServerOptions options);
  ~HttpServer();  // Stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Routes: the decoded path must match `pattern` segment by segment, where a segment
  // written `([^/]+)` matches any non-empty segment and is captured (HttpRequest::
  // matches), and any other is literal: "/v1/runs/([^/]+)/cancel". HEAD uses the GET
  // routes (without a body). The first matching route of the method wins; none is a 404.
  void Route(std::string method, const std::string& pattern, Handler handler);
  void SetHooks(PreRouting pre, PostRouting post, ErrorBody error_body);

  // Loads TLS material (kFailedPrecondition if unusable), raises RLIMIT_NOFILE, binds
  // and listens on host:port (0: any free port; kUnavailable if taken). Returns the port.
  Result<int> Bind(const std::string& host, int port);
  // Starts the IO threads, workers and notifier, and accepts. After Bind.
  void Serve();
  // Stops accepting, closes every connection (streams and parked responses too), joins
  // every thread. Idempotent; returns within about the notifier's wait (100 ms) plus
  // the longest running handler.
  void Stop();

  HttpServerStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// "%41b+c" -> "Ab c" (plus_is_space) or "Ab+c"; a malformed escape stays as it is.
std::string PercentDecode(std::string_view s, bool plus_is_space);

}  // namespace epoch::api
