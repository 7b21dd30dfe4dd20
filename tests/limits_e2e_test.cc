// Limits that hold, end to end against a real epochd (issue 12): idle and dripping
// connections do not delay anyone else and cost no threads; a chunked body over
// api.maxBodyBytes is refused before anything is written; a 2 GB step log is served by
// tail and range without reading it into memory; SSE streams are capped per principal
// as well as in all; /v1/cluster shows the configuration to admins only.
//
// Raw sockets (plain HTTP, epochd runs with --insecure-http) where the test needs what
// the harness's client hides: chunked bodies, source addresses, response headers.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/harness.h"

namespace epoch::testing {
namespace {

using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

// "http://127.0.0.1:PORT" -> PORT.
int PortOf(const std::string& url) { return std::stoi(url.substr(url.rfind(':') + 1)); }

// A TCP connection to 127.0.0.1:port, optionally from another loopback address.
class Conn {
 public:
  explicit Conn(int port, const std::string& source = "") {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (!source.empty()) {
      sockaddr_in src{};
      src.sin_family = AF_INET;
      inet_pton(AF_INET, source.c_str(), &src.sin_addr);
      bound_ = ::bind(fd_, reinterpret_cast<sockaddr*>(&src), sizeof src) == 0;
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = bound_ && ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  ~Conn() {
    if (fd_ >= 0) ::close(fd_);
  }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  bool connected() const { return connected_; }
  bool Send(const std::string& data) {
    size_t sent = 0;
    while (sent < data.size()) {
      ssize_t n = ::send(fd_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += static_cast<size_t>(n);
    }
    return true;
  }
  // Appends what arrives within `timeout` to buffer(); false when the peer closed.
  bool Read(std::chrono::milliseconds timeout) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return true;
    char buf[1 << 16];
    ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) return false;
    buffer_.append(buf, static_cast<size_t>(n));
    return true;
  }
  std::string& buffer() { return buffer_; }

 private:
  int fd_ = -1;
  bool bound_ = true;
  bool connected_ = false;
  std::string buffer_;
};

struct Answer {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
};

// Sends one request and reads one answer with a Content-Length body.
Answer Exchange(Conn& c, const std::string& request, std::chrono::milliseconds deadline = 10s) {
  Answer a;
  if (!c.Send(request)) return a;
  auto end = SteadyClock::now() + deadline;
  while (SteadyClock::now() < end) {
    std::string& b = c.buffer();
    size_t head_end = b.find("\r\n\r\n");
    if (head_end != std::string::npos) {
      std::istringstream head(b.substr(0, head_end));
      std::string line;
      std::getline(head, line);
      a.status = std::stoi(line.substr(9, 3));
      while (std::getline(head, line)) {
        size_t colon = line.find(':');
        if (colon == std::string::npos) continue;
        std::string name = line.substr(0, colon);
        for (char& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        std::string value = line.substr(colon + 1);
        while (!value.empty() && (value.front() == ' ')) value.erase(0, 1);
        while (!value.empty() && (value.back() == '\r')) value.pop_back();
        a.headers[name] = value;
      }
      size_t length =
          a.headers.count("content-length") ? std::stoul(a.headers["content-length"]) : 0;
      if (b.size() >= head_end + 4 + length) {
        a.body = b.substr(head_end + 4, length);
        b.erase(0, head_end + 4 + length);
        return a;
      }
    }
    if (!c.Read(100ms)) break;
  }
  a.status = 0;
  return a;
}

std::string Request(const std::string& method, const std::string& path, const std::string& token,
                    const std::string& extra = "", const std::string& body = "") {
  std::string r = method + " " + path + " HTTP/1.1\r\nHost: epoch\r\n";
  if (!token.empty()) r += "Authorization: Bearer " + token + "\r\n";
  r += extra;
  if (!body.empty())
    r +=
        "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  return r + "\r\n" + body;
}

class LimitsE2ETest : public ::testing::Test {
 protected:
  TempDir dir_;
};

// 1,000 idle connections and 200 that drip a byte a second, all from 127.0.0.2: past
// api.maxConnectionsPerClient they are closed at once, the rest cost no thread, and a
// client at 127.0.0.1 is answered at once.
TEST_F(LimitsE2ETest, IdleAndDrippingConnectionsDelayNobodyAndCostNoThreads) {
  Epochd d(dir_.path() + "/data", {"sig.minReplicas=0", "sig.maxReplicas=0"});
  d.Start();
  const int port = PortOf(d.url());
  ASSERT_EQ(d.Get("/v1/runs").status, 200);
  const int64_t threads_before = ProcStatus(d.pid(), "Threads");
  ASSERT_GT(threads_before, 0);

  std::vector<std::unique_ptr<Conn>> idle, drip;
  for (int i = 0; i < 1000; ++i) idle.push_back(std::make_unique<Conn>(port, "127.0.0.2"));
  for (int i = 0; i < 200; ++i) drip.push_back(std::make_unique<Conn>(port, "127.0.0.2"));
  for (auto& c : idle) ASSERT_TRUE(c->connected());
  // A request head, one byte a second on every dripping connection.
  std::atomic<bool> stop{false};
  std::thread dripper([&] {
    const std::string head = "GET /healthz HTTP/1.1\r\nHost: epoch\r\n\r\n";
    for (size_t i = 0; i < head.size() && !stop; ++i) {
      for (auto& c : drip) c->Send(head.substr(i, 1));
      for (int t = 0; t < 10 && !stop; ++t) std::this_thread::sleep_for(100ms);  // the drip rate
    }
  });
  // Every connection over the cap was closed by epochd (not left to time out).
  bool capped = WaitFor(
      [&] { return Metric(d, "epoch_http_connections_refused_total") >= 1200 - 256; }, 10000ms);
  EXPECT_TRUE(capped) << d.Get("/metrics").body;
  EXPECT_LE(Metric(d, "epoch_http_connections"), 256 + 4);

  for (int round = 0; round < 3; ++round) {
    // Answered (within the harness client's own timeout) while the cap holds; how
    // fast is for benchmarks, not this test.
    HttpResult health = d.Get("/healthz");
    EXPECT_EQ(health.status, 200);
    HttpResult runs = d.Get("/v1/runs");
    EXPECT_EQ(runs.status, 200) << runs.body;
    std::this_thread::sleep_for(300ms);  // spread the rounds over the drip
  }
  const int64_t threads_after = ProcStatus(d.pid(), "Threads");
  EXPECT_LE(threads_after, threads_before + 4)
      << "the thread count must not grow with connections (" << threads_before << " before)";
  EXPECT_LT(threads_after, 128);
  stop = true;
  dripper.join();
}

// With the per-client cap out of the way, 1,200 held connections are all accepted and
// still cost no thread: the transport is asynchronous, not a thread per connection.
TEST_F(LimitsE2ETest, ThousandsOfHeldConnectionsAreServedWithoutThreads) {
  Epochd d(dir_.path() + "/data",
           {"sig.minReplicas=0", "sig.maxReplicas=0", "api.maxConnectionsPerClient=5000"});
  d.Start();
  const int port = PortOf(d.url());
  const int64_t threads_before = ProcStatus(d.pid(), "Threads");
  std::vector<std::unique_ptr<Conn>> held;
  for (int i = 0; i < 1200; ++i) {
    held.push_back(std::make_unique<Conn>(port, "127.0.0.2"));
    if (i % 2 == 0) held.back()->Send("GET /healthz HTTP/1.1\r\nHo");  // an unfinished head
  }
  ASSERT_TRUE(WaitFor([&] { return Metric(d, "epoch_http_connections") >= 1200; }, 10000ms))
      << d.Get("/metrics").body;
  EXPECT_EQ(d.Get("/healthz").status, 200);
  EXPECT_EQ(d.Get("/v1/runs").status, 200);
  EXPECT_LE(ProcStatus(d.pid(), "Threads"), threads_before + 4);
}

// A chunked body over api.maxBodyBytes (the limit used to hold only for Content-Length):
// 413, nothing written, and epochd goes on serving.
TEST_F(LimitsE2ETest, AChunkedBodyOverTheLimitIsRefusedAndWritesNothing) {
  Epochd d(dir_.path() + "/data", {"sig.minReplicas=0", "sig.maxReplicas=0"});
  d.Start();
  const uint64_t head = d.Head();
  Conn c(PortOf(d.url()));
  std::string body = R"({"workflow": "w", "params": {"x": ")" + std::string(5 << 20, 'a') + "\"}}";
  std::string chunked;
  for (size_t at = 0; at < body.size(); at += 65536) {
    std::string part = body.substr(at, 65536);
    char size[16];
    std::snprintf(size, sizeof size, "%zx\r\n", part.size());
    chunked += size + part + "\r\n";
  }
  chunked += "0\r\n\r\n";
  std::string req = "POST /v1/runs HTTP/1.1\r\nHost: epoch\r\nAuthorization: Bearer " +
                    AdminToken() +
                    "\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
  // The client sends it all (epochd reads and drops what it refused), then reads.
  std::thread sender([&] { c.Send(req + chunked); });
  sender.join();
  Answer a = Exchange(c, "", 10s);
  EXPECT_EQ(a.status, 413) << c.buffer().substr(0, 300);
  EXPECT_NE(a.body.find("\"too_large\""), std::string::npos) << a.body;
  EXPECT_NE(a.body.find("api.maxBodyBytes"), std::string::npos) << a.body;
  EXPECT_EQ(d.Get("/healthz").status, 200);
  EXPECT_EQ(d.Head(), head) << "nothing was written";
}

// A 2 GB step log (sparse, real lines at its end) at a finished attempt's log path:
// tail, range and the plain GET read only what they answer.
TEST_F(LimitsE2ETest, AHugeLogIsServedByTailAndRangeWithoutReadingItAll) {
  std::string data = dir_.path() + "/data";
  Epochd d(data);
  d.Start();
  auto def = ParseJson(R"({"name": "big", "steps": [{"name": "a", "command": ["echo", "hi"]}]})");
  ASSERT_TRUE(def.ok());
  std::string run = d.RegisterAndSubmit(*def);
  ASSERT_EQ(d.WaitForRun(run)["state"], "succeeded");
  const std::string path = data + "/logs/" + run + "/a/1.log";
  ASSERT_TRUE(std::filesystem::exists(path));
  // 2 GiB: a hole, then 1,000 lines.
  std::string lines;
  for (int i = 0; i < 1000; ++i) {
    char line[32];
    std::snprintf(line, sizeof line, "line %04d of the log\n", i);
    lines += line;
  }
  const uint64_t size = 2ULL << 30;
  {
    int fd = ::open(path.c_str(), O_WRONLY | O_TRUNC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(size - lines.size())), 0);
    ASSERT_EQ(::pwrite(fd, lines.data(), lines.size(), static_cast<off_t>(size - lines.size())),
              static_cast<ssize_t>(lines.size()));
    ::close(fd);
  }
  const std::string expected_tail = lines.substr(lines.size() - 100 * 21);  // 21 bytes a line
  const std::string logs = "/v1/runs/" + run + "/steps/a/logs";
  // Peak RSS from here on (clear_refs 5 resets VmHWM to the current RSS).
  {
    std::ofstream reset("/proc/" + std::to_string(d.pid()) + "/clear_refs");
    reset << "5";
  }
  const int64_t rss_before = ProcStatus(d.pid(), "VmRSS");
  ASSERT_GT(rss_before, 0);

  Conn c(PortOf(d.url()));
  Answer tail = Exchange(c, Request("GET", logs + "?tail=100", AdminToken()));
  EXPECT_EQ(tail.status, 200);
  EXPECT_EQ(tail.body, expected_tail);
  EXPECT_EQ(tail.headers["epoch-log-size"], std::to_string(size));
  EXPECT_EQ(tail.headers["epoch-log-offset"], std::to_string(size - expected_tail.size()));

  // Ranges: a slice of the hole, the last bytes, and one past the end.
  Answer first = Exchange(c, Request("GET", logs, AdminToken(), "Range: bytes=0-99\r\n"));
  EXPECT_EQ(first.status, 206);
  EXPECT_EQ(first.body, std::string(100, '\0'));
  EXPECT_EQ(first.headers["content-range"], "bytes 0-99/" + std::to_string(size));
  Answer last = Exchange(c, Request("GET", logs, AdminToken(), "Range: bytes=-21\r\n"));
  EXPECT_EQ(last.status, 206);
  EXPECT_EQ(last.body, "line 0999 of the log\n");
  Answer past = Exchange(c, Request("GET", logs, AdminToken(), "Range: bytes=3000000000-\r\n"));
  EXPECT_EQ(past.status, 416);
  EXPECT_EQ(past.headers["content-range"], "bytes */" + std::to_string(size));
  Answer bad = Exchange(c, Request("GET", logs, AdminToken(), "Range: lines=1-2\r\n"));
  EXPECT_EQ(bad.status, 400);

  // Three viewers of the whole log at once: each gets the last api.maxLogResponseBytes
  // (8 MiB), from a line start, and says so.
  std::vector<Answer> whole(3);
  std::vector<std::thread> viewers;
  for (auto& w : whole) {
    viewers.emplace_back([&] {
      Conn v(PortOf(d.url()));
      w = Exchange(v, Request("GET", logs, AdminToken()), 30s);
    });
  }
  for (auto& t : viewers) t.join();
  for (const auto& w : whole) {
    EXPECT_EQ(w.status, 200);
    EXPECT_LE(w.body.size(), 8u << 20);
    EXPECT_GT(w.body.size(), 0u);
    EXPECT_EQ(w.body.substr(w.body.size() - 21), "line 0999 of the log\n");
    // The hole has no newline: the first line start in the last 8 MiB is after line 0.
    EXPECT_EQ(w.body, lines.substr(21));
    EXPECT_EQ(std::stoull(w.headers.at("epoch-log-offset")), size - w.body.size());
  }
  const int64_t peak = ProcStatus(d.pid(), "VmHWM");
  EXPECT_LT(peak - rss_before, 64 * 1024) << "RSS grew by " << (peak - rss_before) << " kB";
}

// SSE streams are capped per principal (its token) as well as in all: a viewer past
// its cap gets 429 naming the cap, while another principal still gets a stream.
TEST_F(LimitsE2ETest, StreamsAreCappedPerPrincipal) {
  std::string data = dir_.path() + "/data";
  Epochd d(data, {"sig.minReplicas=0", "sig.maxReplicas=0", "api.maxStreamsPerPrincipal=2"});
  d.Start();
  std::string viewer = AddToken(data, "vera", "default", "viewer");
  std::string other = AddToken(data, "otto", "default", "viewer");
  const int port = PortOf(d.url());
  auto open_stream = [&](const std::string& token, Conn& c) {
    c.Send(Request("GET", "/v1/events?follow=true", token));
    auto end = SteadyClock::now() + 10s;
    while (SteadyClock::now() < end && c.buffer().find("\r\n\r\n") == std::string::npos) {
      if (!c.Read(100ms)) break;
    }
    return c.buffer().substr(0, c.buffer().find("\r\n"));
  };
  Conn s1(port), s2(port), s3(port), o1(port);
  EXPECT_EQ(open_stream(viewer, s1), "HTTP/1.1 200 OK");
  EXPECT_EQ(open_stream(viewer, s2), "HTTP/1.1 200 OK");
  Answer third = Exchange(s3, Request("GET", "/v1/events?follow=true", viewer));
  EXPECT_EQ(third.status, 429);
  EXPECT_NE(third.body.find("too_many_streams"), std::string::npos) << third.body;
  EXPECT_NE(third.body.find("api.maxStreamsPerPrincipal"), std::string::npos) << third.body;
  EXPECT_EQ(open_stream(other, o1), "HTTP/1.1 200 OK");
  EXPECT_NE(d.Get("/metrics").body.find("epoch_api_streams 3\n"), std::string::npos);
}

// /v1/cluster: the configuration (tenant names, file paths) and the data dir are for
// admins; everyone else gets the rest.
TEST_F(LimitsE2ETest, ClusterShowsConfigurationToAdminsOnly) {
  std::string data = dir_.path() + "/data";
  Epochd d(data, {"sig.minReplicas=0", "sig.maxReplicas=0"});
  d.Start();
  std::string viewer = AddToken(data, "vera", "default", "viewer");
  HttpResult as_viewer = HttpCall(d.url(), "GET", "/v1/cluster", "", viewer);
  ASSERT_EQ(as_viewer.status, 200) << as_viewer.body;
  Json v = as_viewer.json();
  EXPECT_FALSE(v.contains("config")) << as_viewer.body;
  EXPECT_FALSE(v.contains("data_dir")) << as_viewer.body;
  EXPECT_EQ(as_viewer.body.find(data), std::string::npos) << "no path of the data dir";
  EXPECT_EQ(v.value("role", ""), "leader");
  EXPECT_TRUE(v["head"].contains("position"));
  Json a = d.Get("/v1/cluster").json();
  EXPECT_TRUE(a.contains("config"));
  EXPECT_EQ(a.value("data_dir", ""), data);
}

// SIGTERM with streams open and keep-alive connections idle: epochd closes them and
// exits at once (it used to wait for every pool thread's connection to time out).
TEST_F(LimitsE2ETest, SigtermStopsPromptlyWithOpenStreamsAndIdleConnections) {
  Epochd d(dir_.path() + "/data", {"sig.minReplicas=0", "sig.maxReplicas=0"});
  d.Start();
  const int port = PortOf(d.url());
  Conn stream(port), idle(port);
  stream.Send(Request("GET", "/v1/events?follow=true", AdminToken()));
  ASSERT_TRUE(WaitFor(
      [&] {
        stream.Read(50ms);
        return stream.buffer().find("event: LeaderElected") != std::string::npos;
      },
      5000ms))
      << stream.buffer();
  EXPECT_EQ(Exchange(idle, Request("GET", "/healthz", "")).status, 200);
  // A shutdown that waited for the open stream would never end (the client holds it
  // forever), and the test would fail on its CTest timeout.
  d.Terminate();
  EXPECT_EQ(d.exit_status(), 0) << d.Log();
  EXPECT_TRUE(WaitFor([&] { return !stream.Read(50ms); }, 2000ms)) << "the stream was closed";
}

}  // namespace
}  // namespace epoch::testing
