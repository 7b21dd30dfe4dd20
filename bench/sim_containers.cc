// SimContainers (sim_containers.h): one Beast client connection per simulated
// container on a shared io_context, each on its own strand; the handoff file is
// tailed on another.

// Boost 1.74's Asio uses std::exchange without including <utility> (g++ 12, C++20): it
// must come before Asio (keep it out of the sorted block below).
// clang-format off
#include <utility>
// clang-format on

#include "bench/sim_containers.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "common/fd.h"
#include "common/files.h"
#include "common/json.h"

namespace epoch::bench {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using ErrorCode = boost::system::error_code;

constexpr auto kTailPeriod = std::chrono::milliseconds(20);
// After a failed connection or an answer that asks for patience (503, 5xx).
constexpr auto kRetryDelay = std::chrono::milliseconds(200);

class Container;

// What the containers share (SimContainers::Impl is this).
struct SimCore {
  explicit SimCore(SimContainerOptions o) : options(std::move(o)) {}

  SimContainerOptions options;
  tcp::endpoint endpoint;
  std::string host_header;

  asio::io_context ioc;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  asio::strand<asio::io_context::executor_type> tail_strand{asio::make_strand(ioc)};
  asio::steady_timer tail_timer{tail_strand};
  uint64_t tail_offset = 0;  // tail strand only
  std::string tail_partial;  // a line not yet complete; tail strand only
  // Every container started; the tail strand only, and Stop after the threads ended.
  std::vector<std::shared_ptr<Container>> containers;
  std::vector<std::thread> threads;
  std::atomic<bool> stopping{false};
  bool started = false;

  std::atomic<int64_t> handed_over{0}, registered{0}, in_flight{0}, polls{0}, assignments{0},
      completed{0}, errors{0};
  mutable std::mutex mu;
  std::string last_error;               // guarded by mu
  std::vector<SimAssignment> assigned;  // guarded by mu

  void Error(std::string what) {
    errors++;
    std::lock_guard<std::mutex> lock(mu);
    last_error = std::move(what);
  }
  void Tail();
};

// One simulated container: its connection, and what it has been assigned and not
// yet had acknowledged. Everything runs on the stream's strand.
class Container : public std::enable_shared_from_this<Container> {
 public:
  Container(SimCore* impl, std::string id, std::string credential)
      : impl_(impl),
        id_(std::move(id)),
        credential_(std::move(credential)),
        stream_(asio::make_strand(impl->ioc)),
        retry_(stream_.get_executor()) {}

  void Start() {
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->Connect(); });
  }

 private:
  void Connect() {
    if (impl_->stopping) return;
    stream_.expires_after(impl_->options.request_timeout);
    stream_.async_connect(impl_->endpoint, [self = shared_from_this()](ErrorCode ec) {
      if (ec) return self->Retry("connect: " + ec.message());
      ErrorCode ignored;
      self->stream_.socket().set_option(tcp::no_delay(true), ignored);
      self->connected_ = true;
      self->Send();
    });
  }

  void Send() {
    if (impl_->stopping) return;
    if (!connected_) return Connect();
    req_ = {};
    req_.version(11);
    req_.method(http::verb::post);
    req_.target("/v1/containers/" + id_ + (registered_ ? "/poll" : "/register"));
    req_.set(http::field::host, impl_->host_header);
    req_.set(http::field::authorization, "Bearer " + credential_);
    req_.set(http::field::content_type, "application/json");
    req_.keep_alive(true);
    req_.body() = registered_ ? PollBody() : RegisterBody();
    req_.prepare_payload();
    polling_ = registered_;
    if (polling_) impl_->in_flight++;
    stream_.expires_after(impl_->options.request_timeout);
    http::async_write(stream_, req_, [self = shared_from_this()](ErrorCode ec, size_t) {
      if (ec) return self->Retry("write: " + ec.message());
      self->res_ = {};
      http::async_read(self->stream_, self->buffer_, self->res_,
                       [self](ErrorCode ec, size_t) { self->OnAnswer(ec); });
    });
  }

  std::string RegisterBody() const {
    const SimContainerOptions& o = impl_->options;
    return Json{{"backend", "local"},
                {"handle", ""},  // the master keeps the handle its launch recorded
                {"host", "simulated"},
                {"pid", static_cast<int64_t>(getpid())},
                {"cpu_millis", o.cpu_millis},
                {"memory_bytes", o.memory_bytes},
                {"gpus", Json::array()},
                {"cuda", {{"compiled", false}, {"reason", "simulated container"}}},
                {"epoch_seen", epoch_seen_},
                {"running", Json::array()}}
        .dump();
  }

  std::string PollBody() const {
    Json reports = Json::array();
    for (const auto& id : pending_) {
      reports.push_back(Json{
          {"attempt_id", id}, {"state", "succeeded"}, {"exit_code", 0}, {"usage", Json::object()}});
    }
    return Json{{"epoch_seen", epoch_seen_}, {"reports", reports}, {"running", Json::array()}}
        .dump();
  }

  void EndPoll() {
    if (polling_) impl_->in_flight--;
    polling_ = false;
  }

  void Close() {
    ErrorCode ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
    connected_ = false;
  }

  // A transport failure: counted, and the connection made again after a pause.
  void Retry(const std::string& why) {
    EndPoll();
    if (impl_->stopping) return;
    impl_->Error(id_ + ": " + why);
    Close();
    retry_.expires_after(kRetryDelay);
    retry_.async_wait([self = shared_from_this()](ErrorCode ec) {
      if (!ec) self->Connect();
    });
  }

  void OnAnswer(ErrorCode ec) {
    EndPoll();
    if (ec) return Retry("read: " + ec.message());
    if (impl_->stopping) return;
    bool keep = res_.keep_alive();
    bool again = registered_ ? OnPollAnswer() : OnRegisterAnswer();
    if (!keep) Close();
    if (!again) {
      Close();  // released, or refused: this container is done
      return;
    }
    Send();
  }

  // The error body's code ({"error": {"code"}}), "" if none.
  std::string ErrorCodeOf() const {
    auto j = ParseJson(res_.body());
    if (!j.ok() || !j->is_object() || !j->contains("error") || !(*j)["error"].is_object()) {
      return "";
    }
    return (*j)["error"].value("code", "");
  }

  // Whether to go on. A refusal other than 401/409 (e.g. 503 while the master steps
  // down) is counted and tried again.
  bool Refused(const char* what) {
    int status = res_.result_int();
    impl_->Error(id_ + ": " + what + " answered " + std::to_string(status) + ": " +
                 res_.body().substr(0, 200));
    if (status == 401 || status == 409) return false;
    return true;
  }

  bool OnRegisterAnswer() {
    if (res_.result_int() != 200) return Refused("register");
    auto j = ParseJson(res_.body());
    if (j.ok() && j->is_object()) Epoch(j->value("epoch", uint64_t{0}));
    registered_ = true;
    if (!ever_registered_) {
      ever_registered_ = true;
      impl_->registered++;
    }
    return true;
  }

  // Keeps the highest epoch seen; false when `epoch` is below it (a deposed master's
  // answer, to be ignored entirely).
  bool Epoch(uint64_t epoch) {
    if (epoch < epoch_seen_) return false;
    epoch_seen_ = epoch;
    return true;
  }

  bool OnPollAnswer() {
    int status = res_.result_int();
    if (status == 404 || (status == 409 && ErrorCodeOf() == "unknown_container")) {
      registered_ = false;  // the master wants a registration first
      return true;
    }
    if (status != 200) return Refused("poll");
    impl_->polls++;
    auto j = ParseJson(res_.body());
    if (!j.ok() || !j->is_object()) {
      impl_->Error(id_ + ": poll answer is not a JSON object");
      return true;
    }
    if (!Epoch(j->value("epoch", uint64_t{0}))) return true;
    auto now = std::chrono::steady_clock::now();
    if (auto it = j->find("ack"); it != j->end() && it->is_array()) {
      for (const auto& a : *it) {
        if (a.is_string() && pending_.erase(a.get<std::string>())) impl_->completed++;
      }
    }
    if (auto it = j->find("assignments"); it != j->end() && it->is_array()) {
      for (const auto& a : *it) {
        if (!a.is_object() || !a.contains("attempt_id") || !a["attempt_id"].is_string()) continue;
        std::string id = a["attempt_id"];
        if (!accepted_.insert(id).second) continue;  // a re-sent assignment runs once
        pending_.insert(id);
        impl_->assignments++;
        std::lock_guard<std::mutex> lock(impl_->mu);
        impl_->assigned.push_back({id_, a.value("run", ""), id, now});
      }
    }
    return true;
  }

  SimCore* impl_;
  const std::string id_, credential_;
  beast::tcp_stream stream_;
  asio::steady_timer retry_;
  beast::flat_buffer buffer_;
  http::request<http::string_body> req_;
  http::response<http::string_body> res_;
  bool connected_ = false;
  bool registered_ = false;  // the next request is a poll
  bool ever_registered_ = false;
  bool polling_ = false;  // a poll is in flight (counted in in_flight)
  uint64_t epoch_seen_ = 0;
  std::set<std::string> accepted_;  // every attempt ever assigned here
  std::set<std::string> pending_;   // reported succeeded, not yet acknowledged
};

}  // namespace

struct SimContainers::Impl : SimCore {
  using SimCore::SimCore;
};

void SimCore::Tail() {
  if (stopping) return;
  UniqueFd fd(open(options.handoff_file.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd) {
    char buf[64 << 10];
    while (true) {
      ssize_t n = pread(fd.get(), buf, sizeof(buf), static_cast<off_t>(tail_offset));
      if (n <= 0) break;
      tail_offset += static_cast<uint64_t>(n);
      tail_partial.append(buf, static_cast<size_t>(n));
    }
    size_t start = 0;
    for (size_t nl; (nl = tail_partial.find('\n', start)) != std::string::npos; start = nl + 1) {
      std::string line = tail_partial.substr(start, nl - start);
      handed_over++;
      auto space = line.find(' ');
      if (space == std::string::npos) {
        Error("handoff line without a credential file: " + line);
        continue;
      }
      std::string id = line.substr(0, space);
      auto credential = ReadFile(line.substr(space + 1), 4096);
      if (!credential.ok()) {
        Error(id + ": " + credential.status().ToString());
        continue;
      }
      std::string secret = *credential;
      while (!secret.empty() && (secret.back() == '\n' || secret.back() == '\r')) secret.pop_back();
      auto c = std::make_shared<Container>(this, std::move(id), std::move(secret));
      containers.push_back(c);
      c->Start();
    }
    tail_partial.erase(0, start);
  }
  tail_timer.expires_after(kTailPeriod);
  tail_timer.async_wait([this](ErrorCode ec) {
    if (!ec) Tail();
  });
}

SimContainers::SimContainers(SimContainerOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

SimContainers::~SimContainers() { Stop(); }

Status SimContainers::WriteFakeAgent(const std::string& script_path,
                                     const std::string& handoff_file) {
  if (handoff_file.find('\'') != std::string::npos) {
    return InvalidArgument("handoff file name must not contain a quote: " + handoff_file);
  }
  // printf writes the line with one write(2) to an O_APPEND file: concurrent launches
  // do not interleave their lines.
  std::string script =
      "#!/bin/sh\n"
      "# Stands in for epoch-agent (executor.agentPath) for simulated containers\n"
      "# (bench/sim_containers.h): hands this container's id and credential file over\n"
      "# and exits.\n"
      "id= cred=\n"
      "while [ $# -gt 0 ]; do\n"
      "  case \"$1\" in\n"
      "    --id) id=$2; shift ;;\n"
      "    --credential-file) cred=$2; shift ;;\n"
      "  esac\n"
      "  shift\n"
      "done\n"
      "printf '%s %s\\n' \"$id\" \"$cred\" >> '" +
      handoff_file + "'\n";
  return WriteFileDurably(script_path, script, 0755);
}

Status SimContainers::Start() {
  Impl& s = *impl_;
  if (s.started) return FailedPrecondition("SimContainers already started");
  const std::string& url = s.options.master_url;
  constexpr std::string_view kScheme = "http://";
  if (url.rfind(kScheme, 0) != 0) {
    return InvalidArgument("simulated containers speak plain HTTP only, not " + url);
  }
  std::string hostport = url.substr(kScheme.size());
  if (auto slash = hostport.find('/'); slash != std::string::npos) hostport.resize(slash);
  auto colon = hostport.rfind(':');
  if (colon == std::string::npos) return InvalidArgument("no port in " + url);
  ErrorCode ec;
  auto address = asio::ip::make_address(hostport.substr(0, colon), ec);
  int port = std::atoi(hostport.c_str() + colon + 1);
  if (ec || port <= 0 || port > 65535) {
    return InvalidArgument("not http://<numeric address>:<port>: " + url);
  }
  s.endpoint = tcp::endpoint(address, static_cast<unsigned short>(port));
  s.host_header = hostport;
  s.started = true;
  s.work.emplace(s.ioc.get_executor());
  asio::post(s.tail_strand, [&s] { s.Tail(); });
  for (int i = 0; i < std::max(1, s.options.io_threads); ++i) {
    s.threads.emplace_back([&s] { s.ioc.run(); });
  }
  return Status::Ok();
}

void SimContainers::Stop() {
  Impl& s = *impl_;
  if (s.stopping.exchange(true)) return;
  s.work.reset();
  s.ioc.stop();
  for (auto& t : s.threads) t.join();
  s.threads.clear();
  // Pending handlers (holding containers) go with the io_context; the sockets close.
  s.containers.clear();
}

SimStats SimContainers::Stats() const {
  const Impl& s = *impl_;
  SimStats out;
  out.handed_over = s.handed_over;
  out.registered = s.registered;
  out.in_flight = s.in_flight;
  out.polls = s.polls;
  out.assignments = s.assignments;
  out.completed = s.completed;
  out.errors = s.errors;
  std::lock_guard<std::mutex> lock(s.mu);
  out.last_error = s.last_error;
  return out;
}

std::vector<SimAssignment> SimContainers::TakeAssignments() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  std::vector<SimAssignment> out;
  out.swap(impl_->assigned);
  return out;
}

}  // namespace epoch::bench
