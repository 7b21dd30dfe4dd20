// HttpServer against real sockets on 127.0.0.1 (port 0): limits, deadlines, caps,
// parked long polls and streams, keep-alive, pipelining, TLS, Stop.
#include "api/http_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "api/tls.h"

namespace epoch::api {
namespace {

using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

// Polls cond every 10 ms until it holds or the deadline passes.
bool WaitFor(const std::function<bool()>& cond, std::chrono::milliseconds deadline) {
  auto end = SteadyClock::now() + deadline;
  while (SteadyClock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return cond();
}

// A blocking TCP client socket; closed on destruction.
class Conn {
 public:
  // Connects to 127.0.0.1:port, from `source` (another loopback address) when given.
  explicit Conn(int port, const std::string& source = "") {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (!source.empty()) {
      sockaddr_in src{};
      src.sin_family = AF_INET;
      inet_pton(AF_INET, source.c_str(), &src.sin_addr);
      EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&src), sizeof src), 0);
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  ~Conn() { Close(); }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  bool connected() const { return connected_; }
  int fd() const { return fd_; }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  // False when the peer has closed (EPIPE/ECONNRESET).
  bool Send(const std::string& data) {
    size_t sent = 0;
    while (sent < data.size()) {
      ssize_t n = ::send(fd_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += static_cast<size_t>(n);
    }
    return true;
  }
  // Reads what arrives within `timeout`; "" with *eof when the peer closed.
  std::string ReadSome(std::chrono::milliseconds timeout, bool* eof = nullptr) {
    pollfd p{fd_, POLLIN, 0};
    if (eof) *eof = false;
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return "";
    char buf[65536];
    ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) {
      if (eof) *eof = true;
      return "";
    }
    return std::string(buf, static_cast<size_t>(n));
  }
  // Reads until the peer closes or the deadline passes; *eof says which.
  std::string ReadToEnd(std::chrono::milliseconds deadline, bool* eof) {
    std::string out;
    auto end = SteadyClock::now() + deadline;
    *eof = false;
    while (SteadyClock::now() < end) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - SteadyClock::now());
      std::string s = ReadSome(std::max(left, 1ms), eof);
      if (*eof) return out;
      out += s;
    }
    return out;
  }
  // Reads one response with a Content-Length body ("" on a timeout or close).
  std::string ReadResponse(std::chrono::milliseconds deadline = 5000ms) {
    auto end = SteadyClock::now() + deadline;
    while (SteadyClock::now() < end) {
      size_t head_end = buffer_.find("\r\n\r\n");
      if (head_end != std::string::npos) {
        size_t cl = 0;
        std::string head = buffer_.substr(0, head_end);
        for (std::string key : {"Content-Length: ", "content-length: "}) {
          size_t at = head.find(key);
          if (at != std::string::npos) cl = std::stoul(head.substr(at + key.size()));
        }
        if (buffer_.size() >= head_end + 4 + cl) {
          std::string r = buffer_.substr(0, head_end + 4 + cl);
          buffer_.erase(0, head_end + 4 + cl);
          return r;
        }
      }
      bool eof = false;
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - SteadyClock::now());
      buffer_ += ReadSome(std::max(left, 1ms), &eof);
      if (eof) break;
    }
    return "";
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
  std::string buffer_;
};

int StatusOf(const std::string& response) {
  if (response.rfind("HTTP/1.", 0) != 0 || response.size() < 12) return 0;
  return std::stoi(response.substr(9, 3));
}

std::string BodyOf(const std::string& response) {
  size_t at = response.find("\r\n\r\n");
  return at == std::string::npos ? "" : response.substr(at + 4);
}

std::string Get(const std::string& path, const std::string& extra = "") {
  return "GET " + path + " HTTP/1.1\r\nHost: t\r\n" + extra + "\r\n";
}

// A change counter the test moves by hand (the engine's generation in epochd).
class Changes {
 public:
  uint64_t Counter() const { return n_.load(); }
  void Wait(uint64_t seen, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return n_.load() != seen; });
  }
  void Bump() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++n_;
    }
    cv_.notify_all();
  }

 private:
  std::atomic<uint64_t> n_{0};
  std::mutex mu_;
  std::condition_variable cv_;
};

// A server with a few routes, on 127.0.0.1:0.
class HttpServerTest : public ::testing::Test {
 protected:
  void StartServer(HttpServerOptions o = {}) {
    o.change_counter = [this] { return changes_.Counter(); };
    o.wait_for_change = [this](uint64_t seen, std::chrono::milliseconds t) {
      changes_.Wait(seen, t);
    };
    server_ = std::make_unique<HttpServer>(o);
    server_->Route("GET", "/ping", [](HttpRequest& req, HttpResponse& res) {
      res.SetContent("pong " + req.Param("n"), "text/plain");
    });
    server_->Route("POST", "/echo", [this](HttpRequest& req, HttpResponse& res) {
      ++echoes_;
      res.SetContent(std::to_string(req.body.size()) + ":" + req.body.substr(0, 32), "text/plain");
    });
    server_->Route("GET", "/items/([^/]+)", [](HttpRequest& req, HttpResponse& res) {
      res.SetContent("item " + req.matches[1] + " " + req.Header("x-tag"), "text/plain");
    });
    // A long poll: answers once `ready_` is set (checked when the counter moves), or at
    // its deadline.
    server_->Route("GET", "/poll", [this](HttpRequest&, HttpResponse& res) {
      res.Defer(SteadyClock::now() + 5s, [this](HttpResponse& r, bool expired) {
        ++polls_;
        if (!ready_ && !expired) return false;
        r.SetContent(expired ? "expired" : "ready", "text/plain");
        return true;
      });
    });
    // Long polls per key: answer once `ready_` is set, counting their runs per key.
    server_->Route("GET", "/keyed/([^/]+)", [this](HttpRequest& req, HttpResponse& res) {
      std::atomic<int>* runs = req.matches[1] == "a" ? &keyed_a_ : &keyed_b_;
      res.Defer(SteadyClock::now() + 5s, [this, runs](HttpResponse& r, bool expired) {
        ++*runs;
        if (!ready_ && !expired) return false;
        r.SetContent(expired ? "expired" : "ready", "text/plain");
        return true;
      });
    });
    // A stream: one line now, then one per counter change; ends at "end".
    server_->Route("GET", "/stream", [this](HttpRequest&, HttpResponse& res) {
      auto guard = std::shared_ptr<int>(new int(0), [this](int* p) {
        ++streams_released_;
        delete p;
      });
      ++streams_opened_;
      res.Stream("text/event-stream", [this, guard](std::string* out, bool changed) {
        *out = "data: " + std::string(changed ? "changed" : "tick") + "\n\n";
        return stream_end_ ? StreamNext::kEnd : StreamNext::kWait;
      });
    });
    // A long poll that only ever answers at its deadline.
    server_->Route("GET", "/short", [](HttpRequest&, HttpResponse& res) {
      res.Defer(SteadyClock::now() + 300ms, [](HttpResponse& r, bool expired) {
        if (!expired) return false;
        r.SetContent("timed out", "text/plain");
        return true;
      });
    });
    // A fast producer: 1 MiB per call, as long as the client reads.
    server_->Route("GET", "/firehose", [this](HttpRequest&, HttpResponse& res) {
      res.Stream("application/octet-stream", [this](std::string* out, bool) {
        ++firehose_calls_;
        out->assign(1 << 20, 'x');
        return firehose_calls_ >= 128 ? StreamNext::kEnd : StreamNext::kMore;
      });
    });
    server_->SetHooks(
        nullptr, [](const HttpRequest&, HttpResponse& res) { res.SetHeader("X-Post", "1"); },
        [](HttpResponse& res, int status, const std::string& code, const std::string& message) {
          res.SetContent("{\"error\":{\"code\":\"" + code + "\",\"status\":" +
                             std::to_string(status) + ",\"message\":\"" + message + "\"}}",
                         "application/json");
        });
    auto port = server_->Bind("127.0.0.1", 0);
    ASSERT_TRUE(port.ok()) << port.status().ToString();
    port_ = *port;
    server_->Serve();
  }
  void TearDown() override {
    if (server_) server_->Stop();
  }

  Changes changes_;
  std::unique_ptr<HttpServer> server_;
  int port_ = 0;
  std::atomic<int> echoes_{0}, polls_{0}, streams_opened_{0}, streams_released_{0};
  std::atomic<int> firehose_calls_{0}, keyed_a_{0}, keyed_b_{0};
  std::atomic<bool> ready_{false}, stream_end_{false};
};

TEST(HttpRequestTest, DecodesPathAndQuery) {
  EXPECT_EQ(PercentDecode("/v1/runs/r%2D1%zz+x", false), "/v1/runs/r-1%zz+x");
  EXPECT_EQ(PercentDecode("a+b%3Dc%", true), "a b=c%");
  HttpRequest req;
  req.SetQuery("label=team%3Da&label=env%3Dprod&follow&limit=5&&x=a+b");
  EXPECT_EQ(req.Params("label"), (std::vector<std::string>{"team=a", "env=prod"}));
  EXPECT_TRUE(req.HasParam("follow"));
  EXPECT_EQ(req.Param("follow"), "");
  EXPECT_EQ(req.Param("limit"), "5");
  EXPECT_EQ(req.Param("x"), "a b");
  EXPECT_FALSE(req.HasParam("nope"));
  req.headers = {{"Content-Type", "application/json"}};
  EXPECT_EQ(req.Header("content-type"), "application/json");
  EXPECT_FALSE(req.HasHeader("Authorization"));
}

TEST_F(HttpServerTest, KeepAliveAndPipelinedRequestsAreAnsweredInOrder) {
  StartServer();
  Conn c(port_);
  ASSERT_TRUE(c.connected());
  // Two requests in one write, then a third on the same connection.
  ASSERT_TRUE(c.Send(Get("/ping?n=1") + Get("/items/a%20b", "X-Tag: t1\r\n")));
  std::string r1 = c.ReadResponse(), r2 = c.ReadResponse();
  EXPECT_EQ(StatusOf(r1), 200) << r1;
  EXPECT_EQ(BodyOf(r1), "pong 1");
  EXPECT_NE(r1.find("X-Post: 1"), std::string::npos) << r1;
  EXPECT_EQ(StatusOf(r2), 200) << r2;
  EXPECT_EQ(BodyOf(r2), "item a b t1");  // the path is decoded before matching
  ASSERT_TRUE(c.Send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"));
  std::string r3 = c.ReadResponse();
  EXPECT_EQ(BodyOf(r3), "5:hello");
  // No route: a 404 from the error hook; the connection stays usable.
  ASSERT_TRUE(c.Send(Get("/nope")));
  std::string r4 = c.ReadResponse();
  EXPECT_EQ(StatusOf(r4), 404);
  EXPECT_NE(BodyOf(r4).find("\"code\":\"not_found\""), std::string::npos) << r4;
  ASSERT_TRUE(c.Send(Get("/ping?n=5", "Connection: close\r\n")));
  EXPECT_EQ(BodyOf(c.ReadResponse()), "pong 5");
  bool eof = false;
  c.ReadToEnd(3000ms, &eof);
  EXPECT_TRUE(eof) << "Connection: close is honoured";
  EXPECT_EQ(server_->stats().accepted, 1u);
}

TEST_F(HttpServerTest, RoutesMatchWholeSegments) {
  StartServer();
  Conn c(port_);
  auto status = [&](const std::string& path) {
    c.Send(Get(path));
    return StatusOf(c.ReadResponse());
  };
  EXPECT_EQ(status("/items/x"), 200);
  EXPECT_EQ(status("/items/"), 404);       // a capture is never empty
  EXPECT_EQ(status("/items/x/y"), 404);    // nor more than one segment
  EXPECT_EQ(status("/items/x%2Fy"), 404);  // the path is decoded first (as httplib did)
  EXPECT_EQ(status("/items"), 404);
  EXPECT_EQ(status("/ping/"), 404);
  EXPECT_EQ(status("//ping"), 404);
  c.Send("HEAD /ping?n=1 HTTP/1.1\r\nHost: t\r\n\r\n");
  std::string head;
  WaitFor(
      [&] {
        head += c.ReadSome(20ms);
        return head.find("\r\n\r\n") != std::string::npos;
      },
      3000ms);
  EXPECT_EQ(StatusOf(head), 200) << head;
  EXPECT_NE(head.find("Content-Length: 6\r\n"), std::string::npos) << head;  // "pong 1"
  EXPECT_EQ(BodyOf(head), "") << "HEAD has no body";
  EXPECT_EQ(status("/ping?n=2"), 200) << "and the connection goes on";
}

TEST_F(HttpServerTest, ChunkedBodyOverTheLimitIs413AndTheServerStillServes) {
  HttpServerOptions o;
  o.max_body_bytes = 1 << 20;
  StartServer(o);
  Conn c(port_);
  std::string head = "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
  std::string chunk(64 << 10, 'a');
  char size[16];
  std::snprintf(size, sizeof size, "%zx\r\n", chunk.size());
  std::string body;
  for (int i = 0; i < 80; ++i) body += size + chunk + "\r\n";  // 5 MiB
  body += "0\r\n\r\n";
  // The client sends it all (the server drains what it refused), then reads the answer.
  std::thread sender([&] { c.Send(head + body); });
  std::string r = c.ReadResponse(10000ms);
  sender.join();
  EXPECT_EQ(StatusOf(r), 413) << r.substr(0, 300);
  EXPECT_NE(BodyOf(r).find("\"code\":\"too_large\""), std::string::npos) << r;
  EXPECT_EQ(echoes_.load(), 0) << "the handler never saw the body";
  // A body just under the limit, chunked, is fine.
  Conn ok(port_);
  std::string small = "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 15; ++i) small += size + chunk + "\r\n";
  small += "0\r\n\r\n";
  ASSERT_TRUE(ok.Send(small));
  EXPECT_EQ(BodyOf(ok.ReadResponse()).substr(0, 7), std::to_string(15 * (64 << 10)) + ":");
  // And a Content-Length over the limit is refused from its head alone.
  Conn cl(port_);
  ASSERT_TRUE(
      cl.Send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000000\r\n"
              "Expect: 100-continue\r\n\r\n"));
  std::string r2 = cl.ReadResponse();
  EXPECT_EQ(StatusOf(r2), 413) << r2;
  Conn after(port_);
  ASSERT_TRUE(after.Send(Get("/ping?n=2")));
  EXPECT_EQ(BodyOf(after.ReadResponse()), "pong 2");
}

TEST_F(HttpServerTest, ExpectContinueGets100ThenTheAnswer) {
  StartServer();
  Conn c(port_);
  ASSERT_TRUE(
      c.Send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
             "Expect: 100-continue\r\n\r\n"));
  std::string interim;
  WaitFor(
      [&] {
        interim += c.ReadSome(50ms);
        return interim.find("\r\n\r\n") != std::string::npos;
      },
      5000ms);
  EXPECT_EQ(interim, "HTTP/1.1 100 Continue\r\n\r\n");
  ASSERT_TRUE(c.Send("abc"));
  EXPECT_EQ(BodyOf(c.ReadResponse()), "3:abc");
}

TEST_F(HttpServerTest, HeadersOverTheLimitAre400) {
  StartServer();
  Conn c(port_);
  ASSERT_TRUE(c.Send(Get("/ping", "X-Big: " + std::string(20000, 'x') + "\r\n")));
  std::string r = c.ReadResponse();
  EXPECT_EQ(StatusOf(r), 400) << r.substr(0, 200);
  EXPECT_NE(BodyOf(r).find("headers over 8 KiB"), std::string::npos) << r;
  Conn garbage(port_);
  ASSERT_TRUE(garbage.Send("NOT HTTP AT ALL\r\n\r\n"));
  EXPECT_EQ(StatusOf(garbage.ReadResponse()), 400);
  Conn ok(port_);
  ASSERT_TRUE(ok.Send(Get("/ping?n=3")));
  EXPECT_EQ(BodyOf(ok.ReadResponse()), "pong 3");
}

TEST_F(HttpServerTest, ADrippingClientIsCutOffAtTheHeadDeadline) {
  HttpServerOptions o;
  o.header_timeout = 600ms;
  StartServer(o);
  Conn c(port_);
  std::string request = Get("/ping");
  auto t0 = SteadyClock::now();
  size_t sent = 0;
  bool eof = false;
  // One byte every 100 ms: the whole head would take 2.5 s.
  for (; sent < request.size() && !eof; ++sent) {
    if (!c.Send(request.substr(sent, 1))) break;
    std::string got = c.ReadSome(100ms, &eof);
    ASSERT_EQ(got, "") << "no answer to an unfinished head";
  }
  if (!eof) c.ReadToEnd(3000ms, &eof);
  auto took = SteadyClock::now() - t0;
  EXPECT_TRUE(eof);
  EXPECT_LT(sent, request.size()) << "cut off before the head was complete";
  EXPECT_GE(took, 500ms);
  EXPECT_TRUE(WaitFor([&] { return server_->stats().timed_out >= 1; }, 2000ms));
}

TEST_F(HttpServerTest, AnIdleKeepAliveConnectionIsClosedAtItsTimeout) {
  HttpServerOptions o;
  o.idle_timeout = 300ms;
  StartServer(o);
  Conn c(port_);
  ASSERT_TRUE(c.Send(Get("/ping?n=1")));
  EXPECT_EQ(BodyOf(c.ReadResponse()), "pong 1");
  auto t0 = SteadyClock::now();
  bool eof = false;
  c.ReadToEnd(3000ms, &eof);
  EXPECT_TRUE(eof);
  EXPECT_GE(SteadyClock::now() - t0, 250ms);
}

TEST_F(HttpServerTest, ConnectionsPerClientAreCapped) {
  HttpServerOptions o;
  o.max_connections_per_client = 3;
  StartServer(o);
  std::vector<std::unique_ptr<Conn>> mine;
  for (int i = 0; i < 3; ++i) {
    mine.push_back(std::make_unique<Conn>(port_));
    ASSERT_TRUE(mine.back()->Send(Get("/ping?n=" + std::to_string(i))));
    EXPECT_EQ(BodyOf(mine.back()->ReadResponse()), "pong " + std::to_string(i));
  }
  // The fourth from the same address is closed at once, unanswered.
  Conn extra(port_);
  extra.Send(Get("/ping"));
  bool eof = false;
  std::string got = extra.ReadToEnd(3000ms, &eof);
  EXPECT_TRUE(eof);
  EXPECT_EQ(got, "");
  EXPECT_EQ(server_->stats().refused, 1u);
  // Another client is served; and one of the first three closing frees a place.
  Conn other(port_, "127.0.0.2");
  ASSERT_TRUE(other.connected());
  ASSERT_TRUE(other.Send(Get("/ping?n=9")));
  EXPECT_EQ(BodyOf(other.ReadResponse()), "pong 9");
  mine[0]->Close();
  ASSERT_TRUE(WaitFor([&] { return server_->stats().open_connections == 3; }, 3000ms));
  Conn again(port_);
  ASSERT_TRUE(again.Send(Get("/ping?n=4")));
  EXPECT_EQ(BodyOf(again.ReadResponse()), "pong 4");
}

TEST_F(HttpServerTest, LongPollsAndStreamsHoldNoWorker) {
  HttpServerOptions o;
  o.worker_threads = 1;
  StartServer(o);
  Conn poll(port_), stream(port_);
  ASSERT_TRUE(poll.Send(Get("/poll")));
  ASSERT_TRUE(stream.Send(Get("/stream")));
  std::string first;
  ASSERT_TRUE(WaitFor(
      [&] {
        first += stream.ReadSome(20ms);
        return first.find("data: changed\n\n") != std::string::npos;
      },
      5000ms))
      << first;
  EXPECT_NE(first.find("Transfer-Encoding: chunked"), std::string::npos) << first;
  ASSERT_TRUE(WaitFor([&] { return server_->stats().parked == 2; }, 5000ms));
  // With both parked, the single worker still answers others at once.
  for (int i = 0; i < 5; ++i) {
    Conn c(port_);
    ASSERT_TRUE(c.Send(Get("/ping?n=" + std::to_string(i))));
    EXPECT_EQ(BodyOf(c.ReadResponse(2000ms)), "pong " + std::to_string(i));
  }
  EXPECT_EQ(poll.ReadSome(10ms), "") << "the poll is still waiting";
  // A change wakes both: the poll answers, the stream writes a line.
  int polls_before = polls_.load();
  ready_ = true;
  changes_.Bump();
  std::string answer = poll.ReadResponse(3000ms);
  EXPECT_EQ(BodyOf(answer), "ready") << answer;
  EXPECT_GT(polls_.load(), polls_before);
  std::string more;
  ASSERT_TRUE(WaitFor(
      [&] {
        more += stream.ReadSome(20ms);
        return more.find("data: changed") != std::string::npos;
      },
      3000ms));
  // The stream ends on the next change: the last chunk, then the connection closes.
  stream_end_ = true;
  changes_.Bump();
  bool eof = false;
  std::string rest = stream.ReadToEnd(3000ms, &eof);
  EXPECT_TRUE(eof);
  EXPECT_NE(rest.find("0\r\n\r\n"), std::string::npos) << rest;
  EXPECT_TRUE(WaitFor([&] { return streams_released_.load() == 1; }, 2000ms));
}

TEST_F(HttpServerTest, AChangeWakesOnlyTheLongPollsItConcernsAndEveryStream) {
  HttpServerOptions o;
  std::mutex mu;
  std::string hot = "/keyed/a";
  o.change_concerns = [&](const std::string& path) {
    std::lock_guard<std::mutex> lock(mu);
    return path == hot;
  };
  StartServer(o);
  Conn a(port_), b(port_), stream(port_);
  ASSERT_TRUE(a.Send(Get("/keyed/a")));
  ASSERT_TRUE(b.Send(Get("/keyed/b")));
  ASSERT_TRUE(stream.Send(Get("/stream")));
  ASSERT_TRUE(WaitFor([&] { return server_->stats().parked == 3; }, 5000ms));
  std::string lines;
  ASSERT_TRUE(WaitFor(
      [&] {
        lines += stream.ReadSome(20ms);
        return lines.find("data: changed\n\n") != std::string::npos;
      },
      5000ms))
      << lines;
  lines.clear();
  const int b_runs = keyed_b_.load();
  // A change that concerns /keyed/a: it answers, the stream writes a line, b sleeps on.
  ready_ = true;
  changes_.Bump();
  EXPECT_EQ(BodyOf(a.ReadResponse(3000ms)), "ready");
  ASSERT_TRUE(WaitFor(
      [&] {
        lines += stream.ReadSome(20ms);
        return lines.find("data: changed") != std::string::npos;
      },
      3000ms));
  EXPECT_EQ(b.ReadSome(200ms), "") << "a change that does not concern b woke it";
  EXPECT_EQ(keyed_b_.load(), b_runs);
  // One that concerns it wakes it.
  {
    std::lock_guard<std::mutex> lock(mu);
    hot = "/keyed/b";
  }
  changes_.Bump();
  EXPECT_EQ(BodyOf(b.ReadResponse(3000ms)), "ready");
  EXPECT_EQ(keyed_b_.load(), b_runs + 1);
  server_->Stop();  // before `hot` and `mu` go
}

TEST_F(HttpServerTest, ALongPollAnswersAtItsDeadlineWithoutAChange) {
  StartServer();
  Conn c(port_);
  auto t0 = SteadyClock::now();
  ASSERT_TRUE(c.Send(Get("/short")));
  EXPECT_EQ(BodyOf(c.ReadResponse(3000ms)), "timed out");
  EXPECT_GE(SteadyClock::now() - t0, 250ms);
}

TEST_F(HttpServerTest, AStreamIsReleasedWhenItsClientLeaves) {
  StartServer();
  {
    Conn s(port_);
    ASSERT_TRUE(s.Send(Get("/stream")));
    std::string got;
    ASSERT_TRUE(WaitFor(
        [&] {
          got += s.ReadSome(20ms);
          return got.find("data:") != std::string::npos;
        },
        5000ms));
    EXPECT_EQ(streams_released_.load(), 0);
  }
  // No write is due (nothing changes): the server notices the hang-up by reading.
  EXPECT_TRUE(WaitFor([&] { return streams_released_.load() == 1; }, 3000ms));
  EXPECT_TRUE(WaitFor([&] { return server_->stats().open_connections == 0; }, 3000ms));
}

TEST_F(HttpServerTest, StreamWritesAreBackpressured) {
  StartServer();
  Conn c(port_);
  ASSERT_TRUE(c.Send(Get("/firehose")));
  // The client reads nothing: the producer stops being called once the socket buffers
  // (a few MiB) are full, far short of its 128 MiB.
  ASSERT_TRUE(WaitFor([&] { return firehose_calls_.load() >= 1; }, 5000ms));
  std::this_thread::sleep_for(500ms);  // the time under test: nothing may happen in it
  int stalled = firehose_calls_.load();
  EXPECT_LT(stalled, 32);
  // Reading it all lets it finish.
  size_t total = 0;
  bool eof = false;
  auto end = SteadyClock::now() + 20s;
  while (!eof && SteadyClock::now() < end) total += c.ReadSome(1000ms, &eof).size();
  EXPECT_TRUE(eof);
  EXPECT_EQ(firehose_calls_.load(), 128);
  EXPECT_GT(total, size_t{128} << 20);
}

TEST_F(HttpServerTest, StopClosesStreamsAndIdleConnectionsPromptly) {
  StartServer();
  Conn stream(port_), poll(port_), idle(port_);
  ASSERT_TRUE(stream.Send(Get("/stream")));
  ASSERT_TRUE(poll.Send(Get("/poll")));
  ASSERT_TRUE(idle.Send(Get("/ping?n=1")));
  EXPECT_EQ(BodyOf(idle.ReadResponse()), "pong 1");
  ASSERT_TRUE(WaitFor([&] { return server_->stats().parked == 2; }, 5000ms));
  server_->Stop();
  for (Conn* c : {&stream, &poll, &idle}) {
    bool eof = false;
    c->ReadToEnd(2000ms, &eof);
    EXPECT_TRUE(eof);
  }
  EXPECT_EQ(streams_released_.load(), 1);
  Conn refused(port_);
  EXPECT_FALSE(refused.connected());
}

// TLS: a client that never finishes its handshake is closed at the deadline; one that
// does is served.
TEST_F(HttpServerTest, TlsHandshakeHasADeadline) {
  char tmpl[] = "/tmp/http-server-test.XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  std::string dir = tmpl;
  auto files = EnsureSelfSignedCertificate(dir + "/tls", {"127.0.0.1"});
  ASSERT_TRUE(files.ok()) << files.status().ToString();
  HttpServerOptions o;
  o.tls_certificate = files->certificate;
  o.tls_key = files->key;
  o.tls_handshake_timeout = 400ms;
  StartServer(o);

  Conn silent(port_);
  auto t0 = SteadyClock::now();
  bool eof = false;
  silent.ReadToEnd(3000ms, &eof);
  EXPECT_TRUE(eof);
  EXPECT_GE(SteadyClock::now() - t0, 300ms);
  EXPECT_TRUE(WaitFor([&] { return server_->stats().timed_out >= 1; }, 2000ms));

  Conn tls(port_);
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  ASSERT_NE(ctx, nullptr);
  SSL* ssl = SSL_new(ctx);
  SSL_set_fd(ssl, tls.fd());
  ASSERT_EQ(SSL_connect(ssl), 1);
  std::string req = Get("/ping?n=7", "Connection: close\r\n");
  ASSERT_EQ(SSL_write(ssl, req.data(), static_cast<int>(req.size())), static_cast<int>(req.size()));
  std::string answer;
  char buf[4096];
  for (int n; (n = SSL_read(ssl, buf, sizeof buf)) > 0;) answer.append(buf, static_cast<size_t>(n));
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  EXPECT_EQ(StatusOf(answer), 200) << answer;
  EXPECT_EQ(BodyOf(answer), "pong 7");
  std::filesystem::remove_all(dir);
}

TEST(HttpServerBindTest, ErrorsSayWhy) {
  HttpServerOptions o;
  o.tls_certificate = "/nonexistent/cert.pem";
  o.tls_key = "/nonexistent/key.pem";
  HttpServer bad_tls(o);
  auto r = bad_tls.Bind("127.0.0.1", 0);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("cannot serve HTTPS"), std::string::npos);

  HttpServer first({});
  auto port = first.Bind("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  HttpServer second({});
  auto taken = second.Bind("127.0.0.1", *port);
  ASSERT_FALSE(taken.ok());
  EXPECT_EQ(taken.status().code(), StatusCode::kUnavailable);
}

}  // namespace
}  // namespace epoch::api
