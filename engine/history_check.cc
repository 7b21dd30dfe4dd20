// The Engine's history check and corrupt-history mode (engine.h, "Corrupt
// history"): what is known of the log's integrity (HistoryCheck), the background
// verification of a chain a snapshot covered, a start on a broken chain, and the
// switch to the read-only mode that refuses every write.
#include "engine/engine.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <string>

namespace epoch::engine {

std::string_view Name(HistoryCheck::State s) {
  switch (s) {
    case HistoryCheck::State::kUnverified: return "unverified";
    case HistoryCheck::State::kVerifying: return "verifying";
    case HistoryCheck::State::kVerified: return "verified";
    case HistoryCheck::State::kCorrupt: return "corrupt";
    case HistoryCheck::State::kError: return "error";
  }
  return "?";
}

Json HistoryCheckToJson(const HistoryCheck& h) {
  bool verified = h.state == HistoryCheck::State::kVerified;
  bool corrupt = h.state == HistoryCheck::State::kCorrupt;
  return Json{{"state", std::string(Name(h.state))},
              {"verified", verified},
              {"method", h.method},
              {"head", verified ? Json{{"position", h.head_position}, {"hash", h.head_hash}}
                                : Json(nullptr)},
              {"checked", h.checked},
              {"first_bad", corrupt ? Json(h.first_bad) : Json(nullptr)},
              {"problem", h.problem.empty() ? Json(nullptr) : Json(h.problem)},
              {"read_only", corrupt}};
}

Status CorruptHistoryError(uint64_t first_bad, const std::string& problem) {
  return Status(StatusCode::kUnavailable,
                "the event history is corrupt at event " + std::to_string(first_bad) + " (" +
                    problem +
                    "): this master serves reads only and refuses every write until the store "
                    "is repaired",
                {std::string(kCorruptHistoryCode), problem});
}

bool IsCorruptHistory(const Status& st) {
  return st.code() == StatusCode::kUnavailable && !st.details().empty() &&
         st.details()[0] == kCorruptHistoryCode;
}

void Engine::SetHistory(HistoryCheck h) {
  MutexLock lock(&history_mu_);
  history_ = std::move(h);
}

HistoryCheck Engine::history() const {
  MutexLock lock(&history_mu_);
  return history_;
}

Status Engine::CorruptHistoryStatus() const {
  HistoryCheck h = history();
  return CorruptHistoryError(h.first_bad, h.problem);
}

void Engine::EnterCorruptHistory(uint64_t first_bad, const std::string& problem, bool serving) {
  {
    MutexLock lock(&history_mu_);
    history_.state = HistoryCheck::State::kCorrupt;
    history_.first_bad = first_bad;
    history_.problem = problem;
  }
  corrupt_ = true;  // before the writer stops: Execute answers CorruptHistoryStatus
  ready_ = false;
  uint64_t at = Read([](const State& s) { return s.head; });
  spdlog::critical(
      "CORRUPT HISTORY: event {} fails verification ({}). This master serves reads only "
      "and refuses every write (503 corrupt_history); its state is {} (at {}). Restore the "
      "store from a trusted copy; `epochctl audit verify` names the event.",
      first_bad, problem,
      serving ? "what it loaded (snapshot + tail)" : "the history before that event", at);
  if (serving) {
    // Nothing more may extend the tampered log: the writer (commands, ticks, and
    // with them the pool and its reactors) stops. A group it already decided
    // finishes; everything queued after is answered CorruptHistoryStatus.
    {
      MutexLock lock(&queue_mu_);
      stopping_ = true;
    }
    queue_cv_.SignalAll();
  }
}

void Engine::VerifyInBackground() {
  auto t0 = std::chrono::steady_clock::now();
  auto report = store_->VerifyChain(1);
  auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  if (!report.ok()) {
    spdlog::error("verifying the history: {}", report.status().ToString());
    HistoryCheck h = history();
    h.state = HistoryCheck::State::kError;
    h.problem = report.status().ToString();
    SetHistory(std::move(h));
    return;
  }
  if (!report->ok) {
    {
      MutexLock lock(&history_mu_);
      history_.checked = report->checked;
    }
    EnterCorruptHistory(report->bad_position, report->problem, /*serving=*/true);
    return;
  }
  HistoryCheck h;
  h.state = HistoryCheck::State::kVerified;
  h.method = "background";
  h.head_position = report->head_position;
  h.head_hash = report->head_hash;
  h.checked = report->checked;
  SetHistory(std::move(h));
  spdlog::info("history verified: {} events, head {}:{} ({} ms)", report->checked,
               report->head_position, report->head_hash, ms);
}

Status Engine::StartOnCorruptHistory(const Status& load_error) {
  if (load_error.code() != StatusCode::kCorruption) return load_error;
  // Is it the chain (bytes, hashes, links), and where does it first break?
  auto report = store_->VerifyChain(1);
  if (!report.ok() || report->ok) return load_error;  // I/O, or sound: not tampering
  HistoryCheck h;
  h.state = HistoryCheck::State::kCorrupt;
  h.method = "start";
  h.checked = report->checked;
  h.first_bad = report->bad_position;
  h.problem = report->problem;
  SetHistory(h);
  if (!options_.allow_corrupt_history) return Corruption(report->problem);
  // Serve what can be proven: the state of the events before the first bad one.
  RETURN_IF_ERROR(Load(report->bad_position - 1).WithContext("loading the sound prefix"));
  {
    WriterLock lock(&published_mu_);
    published_ = working_;
  }
  epoch_ = working_.epoch;
  EnterCorruptHistory(h.first_bad, h.problem, /*serving=*/false);
  // The lock holder answers writes itself (503 corrupt_history, not a redirect),
  // but nothing runs: no LeaderElected, no epoch claimed, no writer, no reactors.
  started_ = true;  // readers' long waits block as usual; Stop() cleans up
  role_ = Role::kLeader;
  return Status::Ok();
}

}  // namespace epoch::engine
