// Schedule: places queued attempts on containers with room. Best fit per worker, a
// gang all at once or not at all; tenants take turns by fair share of the GPUs they
// are entitled to, and a tenant's GPUs are capped by tenants.<name>.maxGpus
// (TenantGpusHeld, QuotaWaitReason). The same planner tells the pool what cannot be
// placed (UnplacedDemand) and fails what no container could ever hold
// (FailUnschedulable).
#include "engine/decider.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "engine/decider_internal.h"

namespace epoch::engine {

namespace {

// Free capacity of one container, as the scheduler and the pool see it.
struct Slot {
  const Container* c = nullptr;
  int64_t cpu = 0, mem = 0;
  std::vector<std::string> gpus;   // free GPU indices (healthy ones only)
  std::vector<std::string> uuids;  // their UUIDs, same order
  bool pending = false;            // requested, not registered yet
};

std::string GpuIndex(const Json& g) {
  if (!g.contains("index")) return "";
  return g["index"].is_string() ? g["index"].get<std::string>() : g["index"].dump();
}

// A registered container's free capacity (healthy GPUs not busy), or with as_if_empty
// its whole capacity (healthy GPUs), as if nothing ran on it.
Slot RegisteredSlot(const Container& c, bool as_if_empty) {
  Slot f;
  f.c = &c;
  f.cpu = c.cpu_millis - (as_if_empty ? 0 : c.used_cpu);
  f.mem = c.memory_bytes - (as_if_empty ? 0 : c.used_memory);
  for (const auto& g : c.gpus) {
    std::string idx = GpuIndex(g);
    if (idx.empty() || !g.value("healthy", true)) continue;
    if (!as_if_empty && c.busy_gpus.count(idx)) continue;
    f.gpus.push_back(idx);
    f.uuids.push_back(g.value("uuid", ""));
  }
  // Lowest index first when taken from the back.
  std::reverse(f.gpus.begin(), f.gpus.end());
  std::reverse(f.uuids.begin(), f.uuids.end());
  return f;
}

// Registered containers with their free capacity; with include_pending, also the
// full capacity of containers requested but not registered yet.
std::vector<Slot> FreeSlots(const State& state, bool include_pending) {
  std::vector<Slot> slots;
  for (const auto& [id, c] : state.containers) {
    Slot f;
    f.c = &c;
    if (c.phase == ContainerPhase::kRegistered) {
      f = RegisteredSlot(c, /*as_if_empty=*/false);
    } else if (c.phase == ContainerPhase::kRequested && include_pending) {
      f.pending = true;
      f.cpu = c.cpu_millis;
      f.mem = c.memory_bytes;
      for (int i = 0; i < c.requested_gpus; ++i) {
        f.gpus.push_back("pending");
        f.uuids.push_back("");
      }
    } else {
      continue;
    }
    slots.push_back(std::move(f));
  }
  return slots;
}

bool Fits(const Slot& s, const workflows::Resources& r) {
  return s.cpu >= r.cpu_millis && s.mem >= r.memory_bytes &&
         static_cast<int>(s.gpus.size()) >= r.gpus;
}

// Best fit: the container left with the least room (GPUs, then CPU, then memory),
// so big holes stay free for big requests. -1 when nothing fits.
int BestFit(const std::vector<Slot>& slots, const workflows::Resources& r) {
  int best = -1;
  std::tuple<size_t, int64_t, int64_t> best_key{};
  for (size_t i = 0; i < slots.size(); ++i) {
    const Slot& s = slots[i];
    if (!Fits(s, r)) continue;
    std::tuple<size_t, int64_t, int64_t> key{s.gpus.size() - static_cast<size_t>(r.gpus),
                                             s.cpu - r.cpu_millis, s.mem - r.memory_bytes};
    if (best < 0 || key < best_key) {
      best = static_cast<int>(i);
      best_key = key;
    }
  }
  return best;
}

void Take(Slot& s, const workflows::Resources& r, Json* gpus, Json* uuids) {
  s.cpu -= r.cpu_millis;
  s.mem -= r.memory_bytes;
  for (int i = 0; i < r.gpus; ++i) {
    gpus->push_back(s.gpus.back());
    uuids->push_back(s.uuids.back());
    s.gpus.pop_back();
    s.uuids.pop_back();
  }
}

// Places `k` workers of `r` or none, as PlaceAll does a gang's.
bool PlaceWorkers(std::vector<Slot>& slots, const workflows::Resources& r, int k,
                  Json* placements) {
  std::vector<Slot> trial = slots;
  Json out = Json::array();
  std::map<std::string, int> per_container;
  for (int rank = 0; rank < k; ++rank) {
    int i = BestFit(trial, r);
    if (i < 0) return false;
    Slot& s = trial[static_cast<size_t>(i)];
    Json gpus = Json::array(), uuids = Json::array();
    Take(s, r, &gpus, &uuids);
    out.push_back(Json{{"rank", rank},
                       {"local_rank", per_container[s.c->id]++},
                       {"container", s.c->id},
                       {"gpus", gpus},
                       {"gpu_uuids", uuids}});
  }
  slots = std::move(trial);
  *placements = std::move(out);
  return true;
}

// Places all of an attempt's workers or none: on success the slots are updated
// and placements holds {rank, local_rank, container, gpus, gpu_uuids} per worker;
// on failure the slots are untouched (nothing is held while a gang waits). An elastic
// gang is placed as wide as fits, from its most workers (or its cap, after preemption
// took it down) down to its least.
bool PlaceAll(std::vector<Slot>& slots, const Attempt& a, Json* placements) {
  if (a.workers_max > 0) {
    const int most = a.workers_cap > 0 ? std::min(a.workers_cap, a.workers_max) : a.workers_max;
    for (int k = most; k >= std::max(1, a.workers_min); --k) {
      if (PlaceWorkers(slots, a.resources, k, placements)) return true;
    }
    return false;
  }
  if (a.workers <= 1) {
    // One worker: BestFit changes nothing when it fails, so no trial copy is needed.
    int i = BestFit(slots, a.resources);
    if (i < 0) return false;
    Slot& s = slots[static_cast<size_t>(i)];
    Json gpus = Json::array(), uuids = Json::array();
    Take(s, a.resources, &gpus, &uuids);
    *placements = Json::array({Json{{"rank", 0},
                                    {"local_rank", 0},
                                    {"container", s.c->id},
                                    {"gpus", std::move(gpus)},
                                    {"gpu_uuids", std::move(uuids)}}});
    return true;
  }
  return PlaceWorkers(slots, a.resources, a.workers, placements);
}

// GPUs an attempt holds once placed: every worker's.
int GpusNeeded(const Attempt& a) { return a.resources.gpus * std::max(1, a.workers); }

// Healthy GPUs of the registered containers.
int PoolGpus(const State& state) {
  int n = 0;
  for (const auto& [id, c] : state.containers) {
    if (c.phase != ContainerPhase::kRegistered) continue;
    for (const auto& g : c.gpus) n += !GpuIndex(g).empty() && g.value("healthy", true);
  }
  return n;
}

enum class Verdict { kPlaced, kNoRoom, kOverQuota };

// One queued attempt as the planner sees it.
struct Candidate {
  const std::pair<const std::pair<int, uint64_t>, std::string>* entry;  // in state.queue
  const Run* run;
  const StepRun* step_run;
  const Attempt* attempt;
  std::string step;
  int number;
};

// Run::FindStep scans the run's steps, so a pass over the queued attempts of one wide
// run (a fan-out of N steps queues N) would cost O(queue * steps) on every commit. A
// pass indexes each run's steps by name once, the first of a name as FindStep finds it.
class StepIndex {
 public:
  const StepRun* Find(const Run& run, std::string_view step) {
    if (run.steps.size() <= kScanUpTo) return run.FindStep(step);
    auto [it, made] = by_run_.try_emplace(&run);
    if (made) {
      for (const auto& s : run.steps) it->second.emplace(s.name, &s);
    }
    auto found = it->second.find(step);
    return found == it->second.end() ? nullptr : found->second;
  }

 private:
  static constexpr size_t kScanUpTo = 16;
  std::unordered_map<const Run*, std::unordered_map<std::string_view, const StepRun*>> by_run_;
};

// A tenant with queued attempts: what it holds against what it is entitled to.
struct TenantLine {
  int held = 0;                  // GPUs held now, plus those placed in this pass
  int entitled = 1;              // min(maxGpus, pool GPUs), or the pool's GPUs; >= 1
  const int* quota = nullptr;    // tenants.<name>.maxGpus, null: unlimited
  std::vector<Candidate> queue;  // in state.queue's order (priority, then submission)
  size_t next = 0;
};

// Walks the queued attempts in fair-share order and decides each against `slots`
// (taking what it places from them) and the tenants' GPU quotas; visit(candidate,
// verdict, placements) sees every attempt of a live run once.
//
// Fair share: the tenant holding the smallest fraction of the GPUs it is entitled to
// (its maxGpus capped at the pool's GPUs; the pool's GPUs for a tenant without a
// quota) goes next; equal fractions go by the queue order of each tenant's next
// attempt. Within a tenant the queue order holds (priority, then submission). What
// a tenant holds grows with each placement in the pass. Exact integer comparisons
// (held_a * entitled_b < held_b * entitled_a) keep it deterministic for replay.
// O(queue * (log tenants + containers)).
template <typename Visit>
void PlanQueue(const State& state, const EngineConfig& cfg, std::vector<Slot>& slots,
               Visit&& visit) {
  std::map<std::string, TenantLine> tenants;
  StepIndex steps;
  for (const auto& entry : state.queue) {
    Candidate cand{&entry, nullptr, nullptr, nullptr, {}, 0};
    std::string run_id;
    if (!ParseAttemptId(entry.second, &run_id, &cand.step, &cand.number)) continue;
    cand.run = state.FindRun(run_id);
    if (!cand.run || cand.run->cancel_requested || IsTerminal(cand.run->phase)) continue;
    const StepRun* s = steps.Find(*cand.run, cand.step);
    if (!s || cand.number < 1 || cand.number > static_cast<int>(s->attempts.size())) continue;
    cand.step_run = s;
    cand.attempt = &s->attempts[static_cast<size_t>(cand.number) - 1];
    tenants[cand.run->tenant].queue.push_back(std::move(cand));
  }
  if (tenants.empty()) return;
  if (tenants.size() > 1 || !cfg.tenant_max_gpus.empty()) {
    std::map<std::string, int> held = TenantGpusHeld(state);
    int pool = std::max(1, PoolGpus(state));
    for (auto& [name, t] : tenants) {
      auto h = held.find(name);
      t.held = h == held.end() ? 0 : h->second;
      auto q = cfg.tenant_max_gpus.find(name);
      if (q != cfg.tenant_max_gpus.end()) t.quota = &q->second;
      t.entitled = t.quota ? std::clamp(*t.quota, 1, pool) : pool;
    }
  }
  // A min-heap of tenants by (share, next attempt's queue key). Only the tenant just
  // taken changes, and it is out of the heap while it does.
  auto after = [](const TenantLine* a, const TenantLine* b) {
    int64_t sa = int64_t{a->held} * b->entitled, sb = int64_t{b->held} * a->entitled;
    if (sa != sb) return sa > sb;
    return a->queue[a->next].entry->first > b->queue[b->next].entry->first;
  };
  std::vector<TenantLine*> heap;
  for (auto& [name, t] : tenants) heap.push_back(&t);
  std::make_heap(heap.begin(), heap.end(), after);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), after);
    TenantLine* t = heap.back();
    heap.pop_back();
    const Candidate& cand = t->queue[t->next++];
    int need = GpusNeeded(*cand.attempt);
    Json placements;
    if (t->quota && need > 0 && t->held + need > *t->quota) {
      visit(cand, Verdict::kOverQuota, placements);  // later, smaller ones may fit its quota
    } else if (PlaceAll(slots, *cand.attempt, &placements)) {
      t->held += need;
      visit(cand, Verdict::kPlaced, placements);
    } else {
      visit(cand, Verdict::kNoRoom, placements);  // later, smaller ones may fit (backfill)
    }
    if (t->next < t->queue.size()) {
      heap.push_back(t);
      std::push_heap(heap.begin(), heap.end(), after);
    }
  }
}

// ---- preemption (scheduler.preemption = priority) ----

// A running attempt that could give way: all of its workers, wherever they run.
struct Victim {
  const Run* run;
  const std::string* step;
  const Attempt* attempt;
  TimePoint since;  // started (or assigned, if not started yet)
  // An elastic gang taken down rather than stopped: the workers it keeps (ranks
  // 0..keep-1); 0: the whole attempt gives way.
  int keep = 0;
  // The workers it gives up, and their GPUs.
  int Gives() const { return keep > 0 ? attempt->workers - keep : std::max(1, attempt->workers); }
  int Gpus() const { return attempt->resources.gpus * Gives(); }
  // How far it could be taken down: above workers_min, running its whole gang, not a trial.
  bool Elastic() const {
    return attempt->workers_max > 0 && attempt->trial < 0 &&
           attempt->workers > std::max(1, attempt->workers_min) &&
           static_cast<int>(attempt->ranks.size()) == attempt->workers;
  }
};

std::string GpuName(const Json& g) { return g.is_string() ? g.get<std::string>() : g.dump(); }

// Gives a victim's resources back to `slots` (every worker's it gives up, on its
// container).
void Release(std::vector<Slot>& slots, const Victim& v) {
  auto give = [&](const std::string& container, const Json& gpus, const Json& uuids) {
    for (auto& s : slots) {
      if (s.c == nullptr || s.c->id != container) continue;
      s.cpu += v.attempt->resources.cpu_millis;
      s.mem += v.attempt->resources.memory_bytes;
      for (size_t i = 0; i < gpus.size(); ++i) {
        s.gpus.push_back(GpuName(gpus[i]));
        s.uuids.push_back(i < uuids.size() && uuids[i].is_string() ? uuids[i].get<std::string>()
                                                                   : "");
      }
      return;
    }
  };
  if (v.attempt->ranks.empty()) {
    give(v.attempt->container, v.attempt->gpus, v.attempt->gpu_uuids);
  } else {
    for (const auto& w : v.attempt->ranks) {
      if (w.rank >= v.keep) give(w.container, w.gpus, w.gpu_uuids);
    }
  }
}

// Whether `cand` fits on `free` with `chosen` victims' resources given back.
bool FitsWith(const std::vector<Slot>& free, const std::vector<Victim>& chosen,
              const Attempt& cand) {
  std::vector<Slot> slots = free;
  for (const Victim& v : chosen) Release(slots, v);
  Json placements;
  return PlaceAll(slots, cand, &placements);
}

std::string Describe(const workflows::Resources& r, int workers) {
  std::string s =
      std::to_string(r.cpu_millis) + "m CPU, " + std::to_string(r.memory_bytes >> 20) + "Mi memory";
  if (r.gpus > 0) s += ", " + std::to_string(r.gpus) + (r.gpus == 1 ? " GPU" : " GPUs");
  if (workers > 1) s = std::to_string(workers) + " workers of " + s;
  return s;
}

// Once the pool is at sig.maxReplicas, for each queued attempt that found no room in
// this pass and would not find it on a container still starting (`waiting`, in queue
// order), the fewest running attempts of lower-priority runs of its tenant (or, for a tenant below
// its fair share of the GPUs, of another tenant's runs while that tenant stays at or
// above its own share) whose room would let it be placed: JobPreempted for each, or, for
// an elastic gang, GangResized (with `by`) taking it down no lower than its minimum
// when that is room enough. Fair
// share: the pool's GPUs split evenly between the tenants with work, capped by their
// maxGpus. Victims: not already preempted, stopped or ending, running at least
// preemption_min_run_time; lowest priority first, then the most recently started (the
// least work lost). A candidate that already has victims on their way out waits for
// them. Deterministic: every input is in the state or the context.
void Preempt(const State& state, const DecideContext& ctx, const std::vector<Slot>& free,
             std::vector<Candidate> waiting, std::vector<Event>* out) {
  const EngineConfig& cfg = *ctx.config;
  // Room is coming when the pool may still grow, or a container on its way holds the
  // candidate: preemption is for an attempt that fits nowhere, now or soon.
  int live = 0;
  std::vector<Slot> pending;
  for (const auto& [id, c] : state.containers) {
    live += c.phase == ContainerPhase::kRequested || c.phase == ContainerPhase::kRegistered;
  }
  if (live < cfg.max_replicas) return;
  for (const Slot& s : FreeSlots(state, /*include_pending=*/true)) {
    if (s.pending) pending.push_back(s);
  }
  std::vector<Victim> running;
  std::set<std::string> awaited;             // candidates whose victims are still ending
  std::map<std::string, int> going, coming;  // GPUs of preemptions under way, by tenant
  for (const auto& [id, run] : state.runs) {
    if (IsTerminal(run.phase)) continue;
    for (const auto& s : run.steps) {
      for (const auto& a : s.attempts) {
        if (a.phase != AttemptPhase::kAssigned && a.phase != AttemptPhase::kRunning) continue;
        if (!a.preempted_by.empty()) {
          // Its GPUs are as good as given: count them with the tenant they go to (a gang
          // taken down gives only its workers above the size it is left).
          going[run.tenant] += a.resized_to > 0
                                   ? a.resources.gpus * std::max(0, a.workers - a.resized_to)
                                   : GpusNeeded(a);
          if (awaited.insert(a.preempted_by).second) {
            std::string by_run, by_step;
            int by_n;
            const Attempt* by = state.FindAttempt(a.preempted_by);
            const Run* br = ParseAttemptId(a.preempted_by, &by_run, &by_step, &by_n)
                                ? state.FindRun(by_run)
                                : nullptr;
            if (by && br) coming[br->tenant] += GpusNeeded(*by);
          }
          continue;
        }
        if (a.EndRequested() || run.cancel_requested) continue;
        TimePoint since = a.started_at != TimePoint{} ? a.started_at : a.assigned_at;
        if (ctx.now - since < cfg.preemption_min_run_time) continue;
        running.push_back(Victim{&run, &s.name, &a, since});
      }
    }
  }
  if (running.empty()) return;
  std::sort(running.begin(), running.end(), [](const Victim& a, const Victim& b) {
    if (a.run->priority != b.run->priority) return a.run->priority < b.run->priority;
    if (a.since != b.since) return a.since > b.since;
    return std::tie(a.run->id, *a.step, a.attempt->number) <
           std::tie(b.run->id, *b.step, b.attempt->number);
  });
  std::sort(waiting.begin(), waiting.end(), [](const Candidate& a, const Candidate& b) {
    return a.entry->first < b.entry->first;  // (-priority, submission)
  });
  // Fair share of the GPUs: the pool's GPUs split evenly between the tenants with work
  // (running or queued), capped by each one's tenants.<name>.maxGpus.
  std::map<std::string, int> held = TenantGpusHeld(state);
  for (const auto& [t, n] : going) held[t] -= n;
  for (const auto& [t, n] : coming) held[t] += n;
  std::set<std::string> active;
  for (const auto& [t, n] : held) active.insert(t);
  for (const Candidate& c : waiting) active.insert(c.run->tenant);
  const int pool = PoolGpus(state);
  auto fair = [&](const std::string& tenant) {
    int share = active.empty() ? pool : pool / static_cast<int>(active.size());
    auto q = cfg.tenant_max_gpus.find(tenant);
    return q == cfg.tenant_max_gpus.end() ? share : std::min(share, q->second);
  };
  std::set<const Attempt*> taken;
  for (const Candidate& c : waiting) {
    std::string id = AttemptId(c.run->id, c.step, c.number);
    if (awaited.count(id)) continue;
    std::vector<Slot> soon = pending;
    Json placements;
    if (!pending.empty() && PlaceAll(soon, *c.attempt, &placements)) continue;
    const std::string& tenant = c.run->tenant;
    const int need = GpusNeeded(*c.attempt);
    // Below its fair share even with this attempt placed.
    const bool under = need > 0 && held[tenant] + need <= fair(tenant);
    // Victims in order until the candidate fits: first with each elastic gang taken
    // down only to its minimum (it goes on), then, if that is not enough, with whole
    // attempts.
    auto choose = [&](bool shrink, std::vector<Victim>* chosen) {
      std::map<std::string, int> giving;  // GPUs the chosen take from each tenant
      for (const Victim& v : running) {
        if (taken.count(v.attempt)) continue;
        Victim g = v;
        if (shrink && v.Elastic()) g.keep = std::max(1, v.attempt->workers_min);
        const std::string& vt = v.run->tenant;
        const int vg = g.Gpus();
        // Lower priority within the candidate's own tenant (a run's priority is its
        // submitter's to choose, so it ranks runs of one tenant only); or, for a tenant
        // below its fair share, another tenant's GPUs while that one stays at or above
        // its own share without them.
        bool lower = v.run->priority < c.run->priority && vt == tenant;
        bool over = under && vt != tenant && vg > 0 && held[vt] - giving[vt] - vg >= fair(vt);
        if (!lower && !over) continue;
        chosen->push_back(g);
        giving[vt] += vg;
        if (FitsWith(free, *chosen, *c.attempt)) return true;
      }
      return false;
    };
    std::vector<Victim> chosen;
    if (!choose(/*shrink=*/true, &chosen)) {
      chosen.clear();
      if (!choose(/*shrink=*/false, &chosen)) continue;
    }
    // Never more than needed: drop each victim the candidate fits without, and let an
    // elastic gang keep as many workers as the candidate leaves it.
    for (size_t i = chosen.size(); i-- > 0;) {
      std::vector<Victim> without = chosen;
      without.erase(without.begin() + static_cast<std::ptrdiff_t>(i));
      if (FitsWith(free, without, *c.attempt)) {
        chosen = std::move(without);
        continue;
      }
      if (!chosen[i].Elastic()) continue;
      Victim& v = chosen[i];
      const int was = v.keep, least = std::max(1, v.attempt->workers_min);
      for (int keep = v.attempt->workers - 1; keep >= least && (was == 0 || keep > was); --keep) {
        v.keep = keep;
        if (FitsWith(free, chosen, *c.attempt)) break;
        v.keep = was;
      }
    }
    for (const Victim& v : chosen) {
      taken.insert(v.attempt);
      const std::string& vt = v.run->tenant;
      std::string why =
          v.run->priority < c.run->priority
              ? "priority " + std::to_string(c.run->priority) + " over " +
                    std::to_string(v.run->priority)
              : "fair share: tenant " + tenant + " holds " + std::to_string(held[tenant]) +
                    " of its " + std::to_string(fair(tenant)) + " GPUs, tenant " + vt + " holds " +
                    std::to_string(held[vt]) + ", above its " + std::to_string(fair(vt));
      const std::string needs = "), which needs " +
                                Describe(c.attempt->resources, c.attempt->workers) +
                                " and fits nowhere else";
      if (v.keep > 0) {
        // Taken down, not stopped: the gang restarts with `keep` workers from its
        // checkpoint (the torchrun model) and grows back when room frees.
        std::vector<std::string> members;
        for (const auto& w : v.attempt->ranks) {
          if (w.rank < v.keep) members.push_back(w.container);
        }
        const int from = v.attempt->workers;
        out->push_back(RunEvent(
            *v.run, ev::GangResized{.step = *v.step,
                                    .attempt = v.attempt->number,
                                    .world_size = v.keep,
                                    .from = from,
                                    .members = std::move(members),
                                    .reason = "preempted down from " + std::to_string(from) +
                                              " to " + std::to_string(v.keep) + " workers (min " +
                                              std::to_string(std::max(1, v.attempt->workers_min)) +
                                              ") by " + id + " (" + why + needs,
                                    .by = id,
                                    .priority = v.run->priority,
                                    .by_priority = c.run->priority}));
        continue;
      }
      out->push_back(
          RunEvent(*v.run, ev::JobPreempted{.step = *v.step,
                                            .attempt = v.attempt->number,
                                            .by = id,
                                            .priority = v.run->priority,
                                            .by_priority = c.run->priority,
                                            .reason = "preempted by " + id + " (" + why + needs}));
    }
    for (const Victim& v : chosen) held[v.run->tenant] -= v.Gpus();
    held[tenant] += need;
  }
}

}  // namespace

void FailUnschedulable(const State& state, const std::string& why, std::vector<Event>* out) {
  // Every registered container as if it were empty: an attempt that fits one of them
  // waits for room; one that fits none could only run on a new container.
  std::vector<Slot> empty;
  for (const auto& [id, c] : state.containers) {
    if (c.phase == ContainerPhase::kRegistered)
      empty.push_back(RegisteredSlot(c, /*as_if_empty=*/true));
  }
  for (const auto& [key, attempt_id] : state.queue) {
    std::string run_id, step;
    int n;
    if (!ParseAttemptId(attempt_id, &run_id, &step, &n)) continue;
    const Run* run = state.FindRun(run_id);
    if (!run || run->cancel_requested || IsTerminal(run->phase)) continue;
    const Attempt* a = state.FindAttempt(attempt_id);
    if (!a || a->phase != AttemptPhase::kQueued) continue;
    std::vector<Slot> slots = empty;
    Json placements;
    if (PlaceAll(slots, *a, &placements)) continue;
    out->push_back(
        RunEvent(*run, Ended<ev::JobFailed>(step, n, std::string(kUnschedulable) + ": " + why)));
  }
}

// Queued attempts that cannot be placed even on the containers already asked for.
// Attempts held back by their tenant's GPU quota are not demand: more containers
// would not let them run.
int UnplacedDemand(const State& state, const EngineConfig& cfg) {
  std::vector<Slot> slots = FreeSlots(state, /*include_pending=*/true);
  int unplaced = 0;
  PlanQueue(state, cfg, slots,
            [&](const Candidate&, Verdict v, const Json&) { unplaced += v == Verdict::kNoRoom; });
  return unplaced;
}

// The ports a gang's rendezvous may get: [kGangPortBase, kGangPortBase + kGangPorts).
constexpr int kGangPortBase = 29500;
constexpr uint64_t kGangPorts = 1000;

std::vector<Event> Schedule(const State& state, const DecideContext& ctx) {
  std::vector<Event> out;
  if (state.queue.empty()) return out;
  std::vector<Slot> free = FreeSlots(state, /*include_pending=*/false);
  if (free.empty()) return out;
  uint64_t gangs = 0;
  std::vector<Candidate> waiting;  // no room: preemption may make some
  PlanQueue(state, *ctx.config, free, [&](const Candidate& c, Verdict v, const Json& placements) {
    if (v == Verdict::kNoRoom && ctx.config->preemption) waiting.push_back(c);
    if (v != Verdict::kPlaced) return;
    const Run& run = *c.run;
    const Json& p0 = placements[0];
    // The step's latest checkpoint (its trial's), which the attempt starts from.
    std::optional<Json> checkpoint;
    if (auto it = c.step_run->checkpoints.find(c.attempt->trial);
        it != c.step_run->checkpoints.end()) {
      checkpoint = it->second;
    }
    if (c.attempt->workers <= 1 && c.attempt->workers_max == 0) {
      out.push_back(RunEvent(run, ev::JobAssigned{.step = c.step,
                                                  .attempt = c.number,
                                                  .container = p0["container"],
                                                  .gpus = p0["gpus"],
                                                  .gpu_uuids = p0["gpu_uuids"],
                                                  .checkpoint = std::move(checkpoint)}));
      return;
    }
    // A gang: torch.distributed's rendezvous is rank 0's host and a port chosen
    // here, recorded in JobAssigned (so replay agrees). Consecutive gangs of this master
    // take consecutive ports; the run id's hash offsets them, so that two masters
    // sharing hosts (two clusters, concurrent tests) rarely pick the same one. The
    // range stays below cluster.basePort (30745).
    const Container& c0 = state.containers.at(p0["container"].get<std::string>());
    uint64_t spread = 1469598103934665603ULL;  // FNV-1a of the run id
    for (unsigned char ch : run.id) spread = (spread ^ ch) * 1099511628211ULL;
    int port = kGangPortBase + static_cast<int>((state.gangs_placed + gangs + spread) % kGangPorts);
    ++gangs;
    std::vector<ev::Placement> ranks;
    for (const auto& p : placements) {
      ranks.push_back(ev::Placement{.rank = p["rank"],
                                    .local_rank = p["local_rank"],
                                    .container = p["container"],
                                    .gpus = p["gpus"],
                                    .gpu_uuids = p["gpu_uuids"]});
    }
    out.push_back(
        RunEvent(run, ev::JobAssigned{.step = c.step,
                                      .attempt = c.number,
                                      .container = p0["container"],
                                      .placements = std::move(ranks),
                                      .master_addr = c0.host.empty() ? "127.0.0.1" : c0.host,
                                      .master_port = port,
                                      .checkpoint = std::move(checkpoint)}));
  });
  if (!waiting.empty()) Preempt(state, ctx, free, std::move(waiting), &out);
  return out;
}

void GrowElasticGangs(const State& state, const DecideContext& ctx, std::vector<Event>* out) {
  if (!state.queue.empty()) return;  // queued work first
  std::vector<Slot> free;
  for (const auto& [id, run] : state.runs) {
    if (IsTerminal(run.phase) || run.cancel_requested) continue;
    for (const auto& s : run.steps) {
      const Attempt* a = s.Last();
      if (!a || a->workers_max == 0 || a->workers >= a->workers_max) continue;
      if (a->phase != AttemptPhase::kRunning || a->EndRequested() || a->trial >= 0) {
        continue;
      }
      if (ctx.now - a->started_at < ctx.config->elastic_min_run_time) continue;
      if (free.empty()) free = FreeSlots(state, /*include_pending=*/false);
      for (int extra = a->workers_max - a->workers; extra >= 1; --extra) {
        Json placements;
        if (!PlaceWorkers(free, a->resources, extra, &placements)) continue;
        std::vector<std::string> members;
        for (const auto& w : a->ranks) members.push_back(w.container);
        int size = a->workers + extra;
        out->push_back(RunEvent(
            run,
            ev::GangResized{.step = s.name,
                            .attempt = a->number,
                            .world_size = size,
                            .from = a->workers,
                            .members = std::move(members),
                            .reason = "room for " + std::to_string(extra) + " more worker" +
                                      (extra == 1 ? "" : "s") + ": grows from " +
                                      std::to_string(a->workers) + " to " + std::to_string(size) +
                                      " (max " + std::to_string(a->workers_max) + ")"}));
        break;
      }
    }
  }
}

std::map<std::string, int> TenantGpusHeld(const State& state) {
  std::map<std::string, int> held;
  for (const auto& [cid, c] : state.containers) {
    // A container with no busy GPU holds none for anybody: CPU-only pools cost nothing.
    if (c.phase != ContainerPhase::kRegistered || c.busy_gpus.empty()) continue;
    for (const auto& id : c.attempts) {
      std::string run_id, step;
      int n, rank;
      if (!ParseTaskId(id, &run_id, &step, &n, &rank)) continue;
      const Run* run = state.FindRun(run_id);
      const StepRun* s = run ? run->FindStep(step) : nullptr;
      if (!s || n < 1 || n > static_cast<int>(s->attempts.size())) continue;
      const Attempt& a = s->attempts[static_cast<size_t>(n) - 1];
      const Json* gpus = rank < 0 ? &a.gpus : nullptr;
      for (const auto& w : a.ranks) {
        if (rank >= 0 && w.rank == rank) gpus = &w.gpus;
      }
      if (gpus && !gpus->empty()) held[run->tenant] += static_cast<int>(gpus->size());
    }
  }
  return held;
}

std::string QuotaWaitReason(const EngineConfig& config, const std::string& tenant, int held,
                            const Attempt& attempt) {
  auto q = config.tenant_max_gpus.find(tenant);
  int need = GpusNeeded(attempt);
  if (q == config.tenant_max_gpus.end() || need <= 0 || held + need <= q->second) return "";
  const std::string max = std::to_string(q->second);
  if (need > q->second) {
    return "needs " + std::to_string(need) + (need == 1 ? " GPU" : " GPUs") +
           ", more than tenant " + tenant + "'s GPU quota of " + max + " (tenants." + tenant +
           ".maxGpus): it waits until the quota is raised";
  }
  if (held >= q->second) {
    return "tenant " + tenant + " is at its GPU quota (" + std::to_string(held) + " of " + max +
           " GPUs)";
  }
  return "tenant " + tenant + " holds " + std::to_string(held) + " of its " + max +
         " GPUs (its quota) and this attempt needs " + std::to_string(need);
}

}  // namespace epoch::engine
