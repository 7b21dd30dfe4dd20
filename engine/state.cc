#include "engine/state.h"

#include <algorithm>
#include <utility>

namespace epoch::engine {

std::string_view Name(RunPhase p) {
  switch (p) {
    case RunPhase::kQueued: return "queued";
    case RunPhase::kRunning: return "running";
    case RunPhase::kSucceeded: return "succeeded";
    case RunPhase::kFailed: return "failed";
    case RunPhase::kCancelled: return "cancelled";
  }
  return "?";
}
std::string_view Name(StepPhase p) {
  switch (p) {
    case StepPhase::kPending: return "pending";
    case StepPhase::kQueued: return "queued";
    case StepPhase::kRunning: return "running";
    case StepPhase::kSucceeded: return "succeeded";
    case StepPhase::kFailed: return "failed";
    case StepPhase::kSkipped: return "skipped";
    case StepPhase::kCancelled: return "cancelled";
  }
  return "?";
}
std::string_view Name(AttemptPhase p) {
  switch (p) {
    case AttemptPhase::kQueued: return "queued";
    case AttemptPhase::kAssigned: return "assigned";
    case AttemptPhase::kRunning: return "running";
    case AttemptPhase::kSucceeded: return "succeeded";
    case AttemptPhase::kFailed: return "failed";
    case AttemptPhase::kTimedOut: return "timed_out";
    case AttemptPhase::kCancelled: return "cancelled";
    case AttemptPhase::kLost: return "lost";
  }
  return "?";
}
std::string_view Name(ContainerPhase p) {
  switch (p) {
    case ContainerPhase::kRequested: return "requested";
    case ContainerPhase::kRegistered: return "registered";
    case ContainerPhase::kLost: return "lost";
    case ContainerPhase::kReleased: return "released";
  }
  return "?";
}
bool IsTerminal(RunPhase p) {
  return p == RunPhase::kSucceeded || p == RunPhase::kFailed || p == RunPhase::kCancelled;
}
bool IsTerminal(AttemptPhase p) {
  return p != AttemptPhase::kQueued && p != AttemptPhase::kAssigned &&
         p != AttemptPhase::kRunning;
}
bool IsTerminal(StepPhase p) {
  return p == StepPhase::kSucceeded || p == StepPhase::kFailed || p == StepPhase::kSkipped ||
         p == StepPhase::kCancelled;
}

std::string AttemptId(std::string_view run, std::string_view step, int attempt) {
  return std::string(run) + "/" + std::string(step) + "/" + std::to_string(attempt);
}

bool ParseAttemptId(std::string_view id, std::string* run, std::string* step, int* attempt) {
  auto a = id.find('/');
  if (a == std::string_view::npos) return false;
  auto b = id.find('/', a + 1);
  if (b == std::string_view::npos || id.find('/', b + 1) != std::string_view::npos) return false;
  std::string_view num = id.substr(b + 1);
  if (num.empty() || num.size() > 6) return false;
  int n = 0;
  for (char c : num) {
    if (c < '0' || c > '9') return false;
    n = n * 10 + (c - '0');
  }
  if (n < 1 || a == 0 || b == a + 1) return false;
  *run = std::string(id.substr(0, a));
  *step = std::string(id.substr(a + 1, b - a - 1));
  *attempt = n;
  return true;
}

std::string TaskId(std::string_view run, std::string_view step, int attempt, int rank) {
  return AttemptId(run, step, attempt) + "/" + std::to_string(rank);
}

bool ParseTaskId(std::string_view id, std::string* run, std::string* step, int* attempt,
                 int* rank) {
  auto last = id.rfind('/');
  if (last != std::string_view::npos && std::count(id.begin(), id.end(), '/') == 3) {
    std::string_view r = id.substr(last + 1);
    if (r.empty() || r.size() > 4) return false;
    int n = 0;
    for (char c : r) {
      if (c < '0' || c > '9') return false;
      n = n * 10 + (c - '0');
    }
    *rank = n;
    return ParseAttemptId(id.substr(0, last), run, step, attempt);
  }
  *rank = -1;
  return ParseAttemptId(id, run, step, attempt);
}

const Worker* State::FindWorker(std::string_view task_id, const Attempt** attempt) const {
  std::string run, step;
  int n, rank;
  if (!ParseTaskId(task_id, &run, &step, &n, &rank) || rank < 0) return nullptr;
  const Attempt* a = FindAttempt(AttemptId(run, step, n));
  if (!a || rank >= static_cast<int>(a->ranks.size())) return nullptr;
  if (attempt) *attempt = a;
  return &a->ranks[static_cast<size_t>(rank)];
}

const ArtifactVersion* Artifact::Find(int version) const {
  // Without a read model versions[i] is version i + 1; with one, a few or none.
  if (version >= 1 && static_cast<size_t>(version) <= versions.size() &&
      versions[static_cast<size_t>(version - 1)].version == version) {
    return &versions[static_cast<size_t>(version - 1)];
  }
  for (const auto& v : versions) {
    if (v.version == version) return &v;
  }
  return nullptr;
}
ArtifactVersion* Artifact::Find(int version) {
  return const_cast<ArtifactVersion*>(std::as_const(*this).Find(version));
}

StepRun* Run::FindStep(std::string_view name) {
  for (auto& s : steps) {
    if (s.name == name) return &s;
  }
  return nullptr;
}
bool StepRun::HasActive() const {
  for (const auto& a : attempts) {
    if (!IsTerminal(a.phase)) return true;
  }
  return false;
}

const Attempt* StepRun::Result() const {
  if (best.is_object()) {
    int n = best.value("attempt", 0);
    if (n >= 1 && n <= static_cast<int>(attempts.size())) return &attempts[static_cast<size_t>(n) - 1];
  }
  return Last();
}

const StepRun* Run::FindStep(std::string_view name) const {
  return const_cast<Run*>(this)->FindStep(name);
}

const Run* State::FindRun(std::string_view id) const {
  auto it = runs.find(id);
  return it == runs.end() ? nullptr : &it->second;
}
Run* State::FindRun(std::string_view id) {
  auto it = runs.find(id);
  return it == runs.end() ? nullptr : &it->second;
}

const WorkflowVersion* State::FindWorkflow(std::string_view name, int version) const {
  auto it = workflows.find(std::string(name));
  if (it == workflows.end() || it->second.empty()) return nullptr;
  if (version <= 0) return &it->second.back();
  if (static_cast<size_t>(version) > it->second.size()) return nullptr;
  return &it->second[static_cast<size_t>(version) - 1];
}

const Attempt* State::FindAttempt(std::string_view attempt_id) const {
  std::string run_id, step;
  int n;
  if (!ParseAttemptId(attempt_id, &run_id, &step, &n)) return nullptr;
  const Run* run = FindRun(run_id);
  if (!run) return nullptr;
  const StepRun* s = run->FindStep(step);
  if (!s || n > static_cast<int>(s->attempts.size())) return nullptr;
  return &s->attempts[static_cast<size_t>(n) - 1];
}

std::string ArtifactKey(std::string_view tenant, std::string_view name) {
  return std::string(tenant) + "/" + std::string(name);
}

std::string ArtifactVersion::FilesAt() const {
  return files_at.empty() ? AttemptId(run, step, attempt) : files_at;
}

std::string ArtifactLabel(bool model, std::string_view key, int version) {
  return std::string(model ? "model " : "data set ") + SplitArtifactKey(key).second + " v" +
         std::to_string(version);
}

std::pair<std::string, std::string> SplitArtifactKey(std::string_view key) {
  size_t slash = key.find('/');
  if (slash == std::string_view::npos) return {"", std::string(key)};
  return {std::string(key.substr(0, slash)), std::string(key.substr(slash + 1))};
}

}  // namespace epoch::engine
