// Read models of the engine's State: the JSON the API serves and the queries it
// answers. The API reads State only through these (under Engine::Read), so what a
// run, a container or a page of runs looks like is decided here, next to the State it
// reads, and unit-tested without HTTP.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/json.h"
#include "common/status.h"
#include "engine/container_backend.h"
#include "engine/decider.h"
#include "engine/state.h"

namespace epoch::engine {

class RunArchive;

// Converts a State to readable JSON (used by the API and by replay tests that
// compare a replayed state with the live one). With `state`, a queued attempt held
// back by its tenant's GPU quota shows why in its "reason" (QuotaWaitReason).
Json RunToJson(const Run& run, const EngineConfig& config, const State* state = nullptr);
// What the kernel is to enforce for an attempt of step `def`: {"cpu_millis",
// "memory_bytes"}, each the reserved figure where the definition declared it, else null
// (the container's sig.cpu / sig.memory bound it). Sent in assignments, shown in runs.
Json AttemptLimitsJson(const Attempt& a, const workflows::Step* def);
Json ContainerToJson(const Container& c);
// A data set or model version with its lineage (kind "dataset" or "model").
Json ArtifactToJson(const std::string& name, const ArtifactVersion& v, bool model);
Json CacheEntryToJson(const std::string& key, const CacheEntry& e);
// One line of a run's readable history for an event of its stream, e.g.
// "step train attempt 2 started on c1 (GPUs 0,1)"; empty for types it does not know.
std::string DescribeRunEvent(const std::string& type, const Json& data, const std::string& actor);
Json StateDigestJson(const State& s);

// GET /v1/runs: runs newest first, filtered and paged.
struct RunQuery {
  // Which tenants' runs the caller may see; null: every tenant's.
  std::function<bool(const std::string& tenant)> visible;
  std::string state;                                        // a RunPhase name; empty: any
  std::string workflow;                                     // empty: any
  std::vector<std::pair<std::string, std::string>> labels;  // every one must match
  uint64_t cursor = 0;  // 0: from the newest; else only runs older than the cursor
  size_t limit = 100;
};
struct RunPage {
  Json items = Json::array();  // RunToJson of each run
  Json next_cursor;            // the cursor of the next page (a string), null at the end
};
RunPage ListRuns(const State& s, const EngineConfig& config, const RunQuery& q);
// The same over open runs (in `s`) and the runs folded into `archive` (archive.h),
// merged by submission order. Errors: the archive's (a record that cannot be read).
Result<RunPage> ListRuns(const State& s, const EngineConfig& config, const RunQuery& q,
                         const RunArchive* archive);

// Which tenants' things a caller may see; null: every tenant's.
using TenantFilter = std::function<bool(const std::string& tenant)>;

// The tenant a workflow name belongs to (its first version's); empty if unknown.
std::string WorkflowTenant(const State& s, const std::string& name);
// GET /v1/workflows: each visible workflow's latest version, by name.
Json ListWorkflows(const State& s, const TenantFilter& visible);
// GET /v1/workflows/{name}[/versions/{v}]: the version (0: the latest) with its
// definition; null when there is none or the caller may not see it.
Json WorkflowVersionJson(const State& s, const std::string& name, int version,
                         const TenantFilter& visible);
// Version `version` of the data set or model `key` as of `s`: from State, else from
// the read model (`archive`; archive.h); nullopt when there is none.
Result<std::optional<ArtifactVersion>> ArtifactVersionOf(const State& s, const RunArchive* archive,
                                                         bool model, const std::string& key,
                                                         int version);
// GET /v1/models or /v1/datasets: each visible name's latest version, with its tenant
// and how many versions it has; `only_tenant` (non-empty) keeps one tenant's. Versions
// State does not hold are read from `archive` (null: State holds them all).
Result<Json> ListArtifacts(const State& s, bool models, const TenantFilter& visible,
                           const std::string& only_tenant, const RunArchive* archive = nullptr);
// GET /v1/models/{name}[/versions/{v}] (and data sets): the named artifact of a tenant.
struct ArtifactLookup {
  // Every version ({"name", "tenant", "versions"}) when `version` is 0, else that
  // version (ArtifactToJson with "tenant"); null when not found or not visible.
  Json item;
  // The tenants that have the name, when more than one does and the caller (who sees
  // every tenant) did not say whose: the request is ambiguous.
  std::vector<std::string> owners;
};
// Whose: `tenant` when given; else `caller_tenant`'s, if it has the name; else, for a
// caller who sees every tenant (`visible` null), the one tenant that has the name.
// Every version (`version` 0) comes a page at a time: versions above `after`, at most
// `limit`, oldest first, with "count" (how many there are) and "next_cursor" (the last
// version listed when more follow, else null).
Result<ArtifactLookup> FindArtifact(const State& s, bool model, const std::string& name,
                                    int version, std::string tenant,
                                    const std::string& caller_tenant, const TenantFilter& visible,
                                    const RunArchive* archive = nullptr, int after = 0,
                                    int limit = 1000);

// GET /v1/runs/{id} (and POST /v1/runs, its cancel and retry, its history): RunToJson
// of the run; null when there is none or the caller may not see it.
Json RunJson(const State& s, const EngineConfig& config, const std::string& id,
             const TenantFilter& visible);
// The functions of a run id also take the run itself (null: none), for a run that
// Engine::ReadRun found open or folded.
Json RunJson(const State& s, const EngineConfig& config, const Run* run,
             const TenantFilter& visible);
// Whether run `id` exists and the caller may see it (the runs' commands and events).
bool RunVisible(const State& s, const std::string& id, const TenantFilter& visible);
bool RunVisible(const Run* run, const TenantFilter& visible);
// GET /v1/runs/{id}/events?follow: whether the run has finished (or is unknown), so
// that its stream may end.
bool RunEnded(const State& s, const std::string& id);
bool RunEnded(const Run* run);
// GET /v1/runs/{id}/steps/{step}/logs?follow: whether the attempt has finished (or is
// unknown), so that its log stream may end.
bool AttemptEnded(const State& s, const std::string& attempt_id);
bool AttemptEnded(const Run* run, const std::string& attempt_id);
// GET /v1/runs/{id}/steps/{step}/logs: the attempt whose log to serve, `attempt` or
// (0) the step's latest. kNotFound, with the text the API answers, when the run is
// unknown or hidden, the step unknown or not yet run, or the attempt not there.
Result<int> LogAttempt(const State& s, const std::string& run, const std::string& step, int attempt,
                       const TenantFilter& visible);
Result<int> LogAttempt(const Run* r, const std::string& run, const std::string& step, int attempt,
                       const TenantFilter& visible);
// GET /v1/events: whether the caller may read an event of `stream`: those of runs and
// workflows it may see (and of `only_tenant`'s, when non-empty); other streams only
// when `visible` is null and no tenant is asked for.
bool EventVisible(const State& s, const std::string& stream, const TenantFilter& visible,
                  const std::string& only_tenant);
// `run`: the run of a run stream (Engine::ReadRun), null for other streams.
bool EventVisible(const State& s, const std::string& stream, const TenantFilter& visible,
                  const std::string& only_tenant, const Run* run);

// GET /v1/containers: ContainerToJson of each container (lost and released ones only
// with `all`), with the backend's state where `watched` has it; a caller who does not
// see every tenant (`visible` non-null) sees only its tenant's runs' attempts.
Json ContainersJson(const State& s, bool all, const TenantFilter& visible,
                    const std::map<std::string, ContainerDescription>& watched);
// POST /v1/containers/{id}/poll: the container's standing, read before any command.
struct PollStanding {
  // "" when it may poll, "unknown_container" (never registered), or "released"
  // (released or lost).
  std::string problem;
  // One of the attempts or workers it says it runs is still assigned (not started):
  // the poll needs a command to start it.
  bool assigned = false;
};
PollStanding ContainerPollStanding(const State& s, const std::string& container,
                                   const std::vector<std::string>& running);

// GET /v1/cache: CacheEntryToJson of each visible entry, by key; `workflow` and
// `step` (non-empty) keep those of one workflow or step name.
Json CacheEntries(const State& s, const TenantFilter& visible, const std::string& workflow,
                  const std::string& step);
// POST /v1/cache/invalidate: the not-found text for a key or workflow the caller may
// not see (another tenant's names are not disclosed); empty when neither is hidden.
std::string HiddenCacheTarget(const State& s, const std::string& key, const std::string& workflow,
                              const TenantFilter& visible);

// GET /metrics: how many runs, attempts and containers are in each phase (by Name),
// and the queue's length.
struct PhaseCounts {
  std::map<std::string, int> runs, attempts, containers;
  size_t queue = 0;
};
PhaseCounts CountPhases(const State& s);

// GET /v1/runs/{id}/steps/{step}/metrics: a step's live metrics from the payloads of
// its MetricsRecorded events (in log order). Filters: `name` (empty: every name),
// `attempt` and `rank` (absent: all). Returns {"series": [{"attempt", "rank", "name",
// "points": [[x, y], ...]}], "last": {name: value}}: x is the point's "step" member
// when it has one, else its number in the series; "last" holds each name's latest
// value in the newest attempt's rank 0 (a gang's other ranks train the same model).
struct MetricsQuery {
  std::string name;
  std::optional<int> attempt;
  std::optional<int> rank;
};
Json MetricSeriesView(const std::vector<Json>& recorded, const MetricsQuery& q);
// What the state says of a step's series (per attempt and rank: points, bytes, skipped,
// dropped, truncated); null if the run or step is unknown.
Json StepMetricTotals(const State& s, const std::string& run, const std::string& step);
Json StepMetricTotals(const Run* run, const std::string& step);

}  // namespace epoch::engine
