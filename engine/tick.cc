// OnTick: what time alone decides. Retries whose time has come are queued, containers
// whose lease expired or that never registered are lost, and the pool is sized:
// scaled up on demand (with a back-off after launch failures), kept at its minimum,
// and released when idle; a step cache past cache.maxEntries sheds its least recently
// used entries.
#include "engine/decider.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "common/units.h"
#include "engine/decider_internal.h"

namespace epoch::engine {

namespace {

using workflows::Step;

// A new container, with its credential minted now (only the hash is recorded; see
// engine/credentials.h).
Event ContainerRequest(const State& state, const DecideContext& ctx, int nth,
                       const std::string& reason) {
  const EngineConfig& cfg = *ctx.config;
  std::string id = "c" + std::to_string(state.container_counter + 1 + static_cast<uint64_t>(nth));
  ev::ContainerRequested p{.container = id,
                           .backend = cfg.backend,
                           .spec = {.cpu_millis = cfg.container_cpu_millis,
                                    .memory_bytes = cfg.container_memory_bytes,
                                    .gpus = cfg.container_gpus},
                           .reason = reason};
  if (ctx.credentials) p.credential_sha256 = ctx.credentials->Mint(id);
  return ev::MakeEvent(ContainerStream(id), p);
}

// Past cache.maxEntries, the least recently used entries go (by their last hit, else
// their creation; ties by key): one CacheInvalidated per tenant, so that each
// tenant's history shows what it lost and why.
void EvictCache(const State& state, const EngineConfig& cfg, std::vector<Event>* out) {
  if (state.cache.size() <= cfg.cache_max_entries) return;
  using Use = std::tuple<TimePoint, const std::string*, const CacheEntry*>;
  std::vector<Use> by_use;
  by_use.reserve(state.cache.size());
  for (const auto& [key, e] : state.cache) {
    by_use.emplace_back(std::max(e.created_at, e.last_hit_at), &key, &e);
  }
  size_t n = state.cache.size() - cfg.cache_max_entries;
  auto older = [](const Use& a, const Use& b) {
    return std::tie(std::get<0>(a), *std::get<1>(a)) < std::tie(std::get<0>(b), *std::get<1>(b));
  };
  std::nth_element(by_use.begin(), by_use.begin() + static_cast<std::ptrdiff_t>(n), by_use.end(),
                   older);
  std::map<std::string, std::vector<std::string>> by_tenant;
  for (size_t i = 0; i < n; ++i) {
    by_tenant[std::get<2>(by_use[i])->tenant].push_back(*std::get<1>(by_use[i]));
  }
  std::string reason = "evicted: the step cache held " + std::to_string(state.cache.size()) +
                       " entries, more than cache.maxEntries (" +
                       std::to_string(cfg.cache_max_entries) + "); these were used least recently";
  for (auto& [tenant, keys] : by_tenant) {
    std::sort(keys.begin(), keys.end());
    out->push_back(
        ev::MakeEvent(std::string(kCacheStream), ev::CacheInvalidated{.keys = std::move(keys),
                                                                      .by = "cache.maxEntries",
                                                                      .tenant = tenant,
                                                                      .reason = reason}));
  }
}

}  // namespace

std::vector<Event> OnTick(const State& state, const Tick& tick, const DecideContext& ctx) {
  std::vector<Event> out;
  const EngineConfig& cfg = *ctx.config;
  EvictCache(state, cfg, &out);
  GrowElasticGangs(state, ctx, &out);
  // Retries whose time has come.
  for (const auto& [when, attempt_id] : state.retry_timers) {
    if (when > ctx.now) break;
    std::string run_id, step;
    int n;
    if (!ParseAttemptId(attempt_id, &run_id, &step, &n)) continue;
    const Run* run = state.FindRun(run_id);
    if (!run || IsTerminal(run->phase) || run->cancel_requested) continue;
    const StepRun* s = run->FindStep(step);
    const Step* def_step = run->def->FindStep(step);
    if (!s || !def_step || !s->retry_at || s->next_attempt != n) continue;
    QueueAttempt(state, *run, *def_step, n, ctx, &out);
  }
  // Leases.
  std::set<std::string> expired(tick.expired.begin(), tick.expired.end());
  int live = 0;
  for (const auto& [id, c] : state.containers) {
    if (c.phase == ContainerPhase::kRegistered && expired.count(id)) {
      LoseContainer(state, c, "lease expired (no poll for " + FormatDuration(cfg.lease) + ")",
                    &out);
      continue;
    }
    TimePoint waiting_since = c.requested_at;
    if (auto q = tick.queued.find(id); q != tick.queued.end()) {
      waiting_since = std::max(waiting_since, q->second);
    }
    if (c.phase == ContainerPhase::kRequested && ctx.now - waiting_since > cfg.register_timeout) {
      LoseContainer(state, c,
                    "never registered (within " + FormatDuration(cfg.register_timeout) + ")", &out);
      continue;
    }
    if (c.phase == ContainerPhase::kRequested || c.phase == ContainerPhase::kRegistered) ++live;
  }
  // The pool. After launch failures it backs off (1 s, 2 s, 4 s ... up to 1 min)
  // instead of spinning on a broken backend.
  if (state.launch_failures_in_row > 0) {
    int shift = std::min(state.launch_failures_in_row - 1, 6);
    Micros backoff =
        std::min<Micros>(std::chrono::seconds(1) * (1 << shift), std::chrono::minutes(1));
    if (ctx.now < state.last_launch_failure + backoff) return out;
  }
  int requested = 0;
  // Scale up on demand: queued attempts that fit nowhere, even counting the
  // containers already asked for, get sig.ssAllocationUnit more containers, at
  // most one round per sig.ssAllocationInterval, never past sig.maxReplicas.
  // Attempts held back by their tenant's GPU quota are no demand.
  bool interval_passed = state.last_scale_up == TimePoint{} ||
                         ctx.now - state.last_scale_up >= cfg.allocation_interval;
  // The planner walks the whole queue (O(queue)): it runs only when a scale-up may
  // follow, not every tick of a pool at its maximum or between rounds, where a long
  // queue made each tick cost the writer tens of milliseconds.
  bool may_scale_up = live < cfg.max_replicas && interval_passed;
  int unplaced = may_scale_up ? UnplacedDemand(state, cfg) : 0;
  if (unplaced > 0 && may_scale_up) {
    int n = std::min(cfg.allocation_unit, cfg.max_replicas - live);
    for (int i = 0; i < n; ++i) out.push_back(ContainerRequest(state, ctx, requested++, "demand"));
    live += n;
  }
  // Keep sig.minReplicas (this also replaces lost containers below the minimum).
  for (; live < std::min(cfg.min_replicas, cfg.max_replicas); ++live) {
    out.push_back(ContainerRequest(state, ctx, requested++, "minReplicas"));
  }
  // Release containers idle longer than sig.idleTimeout, down to the minimum,
  // only when nothing is waiting (an empty queue has no unplaced demand).
  if (state.queue.empty()) {
    for (const auto& [id, c] : state.containers) {
      if (live <= cfg.min_replicas) break;
      if (c.phase != ContainerPhase::kRegistered || !c.attempts.empty()) continue;
      if (expired.count(id)) continue;
      if (ctx.now - c.idle_since < cfg.idle_timeout) continue;
      out.push_back(ev::MakeEvent(
          ContainerStream(id),
          ev::ContainerReleased{.container = id,
                                .reason = "idle for " + FormatDuration(ctx.now - c.idle_since)}));
      --live;
    }
  }
  return out;
}

}  // namespace epoch::engine
