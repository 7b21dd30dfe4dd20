// FakeMaster: a tiny stand-in for epochd's container protocol, for tests only. It
// serves POST /v1/containers/{id}/register and /poll on 127.0.0.1 (port 0), records
// what agents send (bodies and Authorization headers), and answers with whatever the
// test queued. A poll that carries reports is answered at once; otherwise it waits up
// to poll_timeout_ms for work. Live metrics batches are kept in order (points below
// what it already has are ignored, as epochd does) and acknowledged with "metrics_ack",
// and a poll that carries them is answered at once too. With redirect_to set it answers every
// request 307 to that URL instead, as a standby does.
//
// Thread-safety: every public member is guarded by mu; handlers run on httplib's pool.
#pragma once

#include <httplib.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "common/json.h"
#include "common/mutex.h"

namespace epoch::executors::testing {

class FakeMaster {
 public:
  FakeMaster() {
    signal(SIGPIPE, SIG_IGN);  // an agent killed mid-poll closes its socket
    server_.Post(
        R"(/v1/containers/([^/]+)/register)",
        [this](const httplib::Request& req, httplib::Response& res) { Register(req, res); });
    server_.Post(R"(/v1/containers/([^/]+)/poll)",
                 [this](const httplib::Request& req, httplib::Response& res) { Poll(req, res); });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    for (int i = 0; i < 2000 && !server_.is_running(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  ~FakeMaster() { Stop(); }

  void Stop() {
    {
      MutexLock lock(&mu);
      stopping = true;
      cv.SignalAll();
    }
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }

  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

  void Assign(Json a) {
    MutexLock lock(&mu);
    assignments.push_back(std::move(a));
    cv.SignalAll();
  }
  void Cancel(const std::string& id) {
    MutexLock lock(&mu);
    cancels.push_back(id);
    cv.SignalAll();
  }
  void Set(const std::function<void(FakeMaster&)>& f) {
    MutexLock lock(&mu);
    f(*this);
    cv.SignalAll();
  }
  template <typename T>
  T Get(const std::function<T(const FakeMaster&)>& f) {
    MutexLock lock(&mu);
    return f(*this);
  }
  size_t RegisterCount() {
    MutexLock lock(&mu);
    return registers.size();
  }
  size_t PollCount() {
    MutexLock lock(&mu);
    return polls;
  }
  // Every report received for id, in arrival order.
  std::vector<Json> ReportsFor(const std::string& id) {
    MutexLock lock(&mu);
    auto it = reports.find(id);
    return it == reports.end() ? std::vector<Json>{} : it->second;
  }

  // Every live metrics batch received for id, and the points kept (in index order).
  std::vector<Json> MetricBatchesFor(const std::string& id) {
    MutexLock lock(&mu);
    auto it = metric_batches.find(id);
    return it == metric_batches.end() ? std::vector<Json>{} : it->second;
  }
  std::vector<Json> MetricPointsFor(const std::string& id) {
    MutexLock lock(&mu);
    auto it = metric_points.find(id);
    return it == metric_points.end() ? std::vector<Json>{} : it->second;
  }

  // ---- test-controlled answers (guarded by mu)
  // Every field below is guarded by mu. Those that tests read and write in the callbacks
  // of Set and Get (which run with mu held) are not annotated GUARDED_BY: the analysis
  // cannot see the lock from inside those lambdas.
  Mutex mu;
  CondVar cv;
  int64_t epoch = 1;
  bool ack = true;
  bool ack_metrics = true;
  bool refuse_metrics = false;  // answer a poll that carries metrics 400
  int64_t poll_timeout_ms = 200;
  // As the real master: a cancel is named in every answer until the attempt's report
  // arrives (otherwise each is answered once).
  bool repeat_cancels = false;
  bool release = false;
  int fail_polls = 0;  // answer the next N polls with fail_status
  int fail_status = 404;
  std::string fail_code = "unknown_container";
  std::string redirect_to;  // non-empty: answer 307, Location redirect_to + the path
  std::deque<Json> assignments;
  std::deque<std::string> cancels GUARDED_BY(mu);
  // ---- observations
  std::vector<Json> registers;
  size_t polls GUARDED_BY(mu) = 0;
  size_t cancels_answered = 0;  // cancels named in answers, each repeat counted
  int in_flight = 0;  // polls being answered (a dead agent's long poll lingers here)
  std::map<std::string, std::vector<Json>> reports GUARDED_BY(mu);
  std::vector<Json> running_lists GUARDED_BY(mu);
  std::map<std::string, std::vector<Json>> metric_batches GUARDED_BY(mu);
  std::map<std::string, std::vector<Json>> metric_points GUARDED_BY(mu);
  std::map<std::string, int64_t> metrics_next GUARDED_BY(mu);
  std::vector<std::string> authorizations;  // every request's Authorization header
  size_t requests = 0;                      // register and poll requests, redirected too
  bool stopping GUARDED_BY(mu) = false;

 private:
  // Records the request; true when it was answered with a redirect.
  bool Redirected(const httplib::Request& req, httplib::Response& res) REQUIRES(mu) {
    ++requests;
    authorizations.push_back(req.get_header_value("Authorization"));
    if (redirect_to.empty()) return false;
    res.status = 307;
    res.set_header("Location", redirect_to + req.path);
    return true;
  }

  void Register(const httplib::Request& req, httplib::Response& res) {
    MutexLock lock(&mu);
    if (Redirected(req, res)) return;
    registers.push_back(Json::parse(req.body, nullptr, false));
    Json out{{"epoch", epoch}, {"lease_ms", 10000}, {"poll_timeout_ms", poll_timeout_ms}};
    res.set_content(out.dump(), "application/json");
  }

  void Poll(const httplib::Request& req, httplib::Response& res) {
    MutexLock lock(&mu);
    if (Redirected(req, res)) return;
    ++polls;
    ++in_flight;
    struct Done {
      int& n;
      ~Done() { --n; }
    } done{in_flight};
    Json body = Json::parse(req.body, nullptr, false);
    if (fail_polls > 0) {
      --fail_polls;
      res.status = fail_status;
      Json err{{"error", {{"code", fail_code}, {"message", "register again"}}}};
      res.set_content(err.dump(), "application/json");
      return;
    }
    if (refuse_metrics && body.is_object() && body.contains("metrics")) {
      res.status = 400;
      res.set_content(R"({"error":{"code":"malformed","message":"no metrics here"}})",
                      "application/json");
      return;
    }
    Json acks = Json::array();
    bool has_reports = false;
    if (body.is_object() && body.contains("reports") && body["reports"].is_array()) {
      for (const auto& r : body["reports"]) {
        has_reports = true;
        std::string id = r.value("attempt_id", "");
        reports[id].push_back(r);
        if (ack) acks.push_back(id);
        std::erase(cancels, id);
      }
    }
    if (body.is_object() && body.contains("running")) running_lists.push_back(body["running"]);
    Json metrics_ack = Json::object();
    if (body.is_object() && body.contains("metrics") && body["metrics"].is_array()) {
      for (const auto& b : body["metrics"]) {
        has_reports = true;  // answered at once, like reports
        std::string id = b.value("attempt_id", "");
        metric_batches[id].push_back(b);
        int64_t from = b.value("from", int64_t{0});
        int64_t& next = metrics_next[id];
        const Json& points = b["points"];
        if (from <= next) {
          for (auto i = static_cast<size_t>(next - from); i < points.size(); ++i) {
            metric_points[id].push_back(points[i]);
          }
          next = std::max(next, from + static_cast<int64_t>(points.size()));
        }
        if (ack_metrics) metrics_ack[id] = next;
      }
    }
    if (!has_reports) {
      const auto deadline =
          std::chrono::steady_clock::now() + std::chrono::milliseconds(poll_timeout_ms);
      while (!(stopping || release || !assignments.empty() || !cancels.empty())) {
        if (!cv.WaitUntil(&mu, deadline)) break;
      }
    }
    Json out{{"epoch", epoch},
             {"ack", acks},
             {"assignments", Json::array()},
             {"cancels", Json::array()}};
    while (!assignments.empty()) {
      out["assignments"].push_back(assignments.front());
      assignments.pop_front();
    }
    for (const auto& id : cancels) out["cancels"].push_back(id);
    cancels_answered += cancels.size();
    if (!repeat_cancels) cancels.clear();
    if (!metrics_ack.empty()) out["metrics_ack"] = metrics_ack;
    if (release) out["release"] = true;
    res.set_content(out.dump(), "application/json");
  }

  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
};

}  // namespace epoch::executors::testing
