// Internal to the decider (decider.h), whose functions live in decide.cc (Decide and the
// user's commands), container_protocol.cc, advance.cc (AdvanceRun), schedule.cc
// (Schedule) and tick.cc (OnTick): the helpers more than one of these files uses. Not
// an interface for anything outside the decider.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "engine/decider.h"
#include "engine/event_types.h"

namespace epoch::engine {

// Internal: an event on `run`'s stream: its payload encoded (engine/event_types.h).
template <ev::PayloadType T>
Event RunEvent(const Run& run, const T& payload, std::string actor = "system") {
  return ev::MakeEvent(RunStream(run.id), payload, std::move(actor));
}

// Internal: a JobFailed, JobTimedOut or JobCancelled of `attempt` for `reason`.
template <class T>
T Ended(std::string step, int attempt, std::string reason) {
  T e;
  e.step = std::move(step);
  e.attempt = attempt;
  e.reason = std::move(reason);
  return e;
}

// The reason prefix of an attempt the backend can never host; such a step is not retried.
inline constexpr std::string_view kUnschedulable = "unschedulable";

// Internal: the container protocol's commands, dispatched by Decide
// (container_protocol.cc).
Result<Decision> DecideRegisterContainer(const State& state, const RegisterContainer& cmd);
Result<Decision> DecidePoll(const State& state, const PollContainer& cmd, const DecideContext& ctx);
Result<Decision> DecideLaunchResult(const State& state, const ContainerLaunchResult& cmd);
Result<Decision> DecideContainerExited(const State& state, const ContainerExited& cmd);
// ContainerLost, and JobFailed{container_lost} for every attempt still placed on the
// lost container (container_protocol.cc).
void LoseContainer(const State& state, const Container& c, const std::string& reason,
                   std::vector<Event>* out);

// Internal: the root beneath which `tenant` may read the input `path`, or
// kPermissionDenied (advance.cc).
Result<std::string> InputRoot(const State& state, const EngineConfig& cfg,
                              const std::string& tenant, const std::string& path);
// Internal: whether a template can only be rendered once upstream steps have run
// (advance.cc).
bool NamesUpstream(const std::string& text);
// Internal: queues attempt `attempt` of `step` (with `trial` >= 0, that trial of its
// sweep; with `workers_cap` > 0, an elastic gang no wider than that at first), or
// records its cache hit (advance.cc).
void QueueAttempt(const State& state, const Run& run, const workflows::Step& step, int attempt,
                  const DecideContext& ctx, std::vector<Event>* out, int trial = -1,
                  int workers_cap = 0);

// Internal: queued attempts that no registered container could hold even when empty fail
// with reason "unschedulable: <why>" (schedule.cc).
void FailUnschedulable(const State& state, const std::string& why, std::vector<Event>* out);
// Internal: queued attempts that cannot be placed even on the containers already asked
// for; those held back by their tenant's GPU quota are not counted (schedule.cc).
int UnplacedDemand(const State& state, const EngineConfig& cfg);

// Elastic gangs (schedule.cc): with nothing queued, each running elastic attempt below
// its most workers that has run at least elastic_min_run_time and has room for more
// on the free capacity gets GangResized (it restarts, placed as wide as fits).
void GrowElasticGangs(const State& state, const DecideContext& ctx, std::vector<Event>* out);

}  // namespace epoch::engine
