// Read models of the engine's State: the JSON the API serves and the queries it
// answers. The API reads State only through these (under Engine::Read), so what a
// run, a container or a page of runs looks like is decided here, next to the State it
// reads, and unit-tested without HTTP.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/json.h"
#include "engine/decider.h"
#include "engine/state.h"

namespace epoch::engine {

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
// GET /v1/models or /v1/datasets: each visible name's latest version, with its tenant
// and how many versions it has; `only_tenant` (non-empty) keeps one tenant's.
Json ListArtifacts(const State& s, bool models, const TenantFilter& visible,
                   const std::string& only_tenant);

}  // namespace epoch::engine
