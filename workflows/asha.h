// Early stopping for sweeps: asynchronous successive halving (ASHA, Li et al., "A
// System for Massively Parallel Hyperparameter Tuning", MLSys 2020) and Hyperband as
// brackets of ASHA. The decisions only; the engine feeds them the live metrics of
// running trials and records each decision as an event (issue 17 wires it in).
//
// JSON, the early-stopping fields of a step's "sweep" (with "method" "asha" or
// "hyperband"):
//   "resource": "epoch",      // the live metric that counts a trial's progress
//   "minResource": 1,         // the first rung; default 1
//   "maxResource": 27,        // required: a trial that reaches it has run in full
//   "reduction": 3,           // eta: each rung keeps the best 1/eta; default 3
//   "brackets": 3             // hyperband only: how many; default every bracket
//                             // floor(log_eta(max/min)) + 1
//
// Rungs. Bracket b (0 for asha) has its rungs at min * eta^(b + k), k = 0, 1, ...,
// below maxResource. Hyperband puts trial t in bracket t mod brackets, so bracket 0
// judges early and often and the last bracket lets its trials run longest before the
// first judgement.
//
// A judgement (JudgeAtRung), as Ray Tune's AsyncHyperBandScheduler makes it: when a
// trial reports progress `resource` and its objective value, the highest rung of its
// bracket at or below `resource` that it has not been judged at yet is where it is
// judged (none: it goes on, unjudged). The trials judged there before it (whatever
// they did since) set the cutoff: the (1 - 1/eta) quantile of their values (linear
// interpolation between order statistics, numpy's default; on the values negated
// when the goal is to minimize). The trial stops when it is worse than the cutoff;
// the first trial at a rung always goes on. Its value joins the rung either way.
// Asynchronous: no trial waits for a rung to fill, so the decisions depend on the
// order trials reach rungs; the engine records that order (one event per judgement),
// so a replay makes the same ones.
//
// Thread-safety: plain values and pure functions.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/json.h"

namespace epoch::workflows {

struct Asha {
  enum class Kind { kAsha, kHyperband };
  Kind kind = Kind::kAsha;
  std::string resource = "epoch";
  double min_resource = 1;
  double max_resource = 0;
  double reduction = 3;
  int brackets = 1;
};

// Reads the early-stopping fields of sweep object `j` (at `path`, e.g. "steps[1].sweep")
// whose "method" is "asha" or "hyperband". Appends one "<path>.<field>: <reason>" per
// problem: a resource that is not a non-empty string, minResource not a number > 0,
// maxResource missing or not above minResource, reduction not a number >= 2,
// brackets not an integer from 1 to the most the range allows (or given for asha).
// Returns nullopt if there was any. Fields it does not know are the caller's.
std::optional<Asha> ParseAsha(const Json& j, const std::string& path,
                              std::vector<std::string>* problems);

// How many brackets the range allows: floor(log_eta(max / min)) + 1.
int MaxBrackets(const Asha& a);
// Trial `trial`'s bracket: trial mod brackets (0 for asha).
int BracketOf(const Asha& a, int trial);
// The rungs (resource milestones) of bracket `bracket`, ascending.
std::vector<double> Rungs(const Asha& a, int bracket);

// A trial's objective value when it was judged at a rung of its bracket.
struct RungResult {
  int trial = 0;
  int rung = 0;  // index into Rungs(a, BracketOf(a, trial))
  double value = 0;
};

struct RungJudgement {
  bool judged = false;  // false: no new rung reached, the trial goes on unjudged
  int rung = -1;
  double milestone = 0;
  int compared = 0;              // how many trials were judged at the rung before it
  std::optional<double> cutoff;  // nullopt for the first trial at a rung
  bool stop = false;
  std::string reason;  // e.g. "rung 1 (epoch 3): accuracy 0.61 is below the cutoff
                       // 0.72 of the best 1/3 of 4 trials"
};

// Judges trial `trial`, which reports `value` of `metric` at progress `resource`,
// given every judgement recorded so far in the sweep (`recorded`, any order; other
// brackets' are ignored). `maximize` as the sweep's objective.
RungJudgement JudgeAtRung(const Asha& a, const std::string& metric, bool maximize,
                          const std::vector<RungResult>& recorded, int trial, double resource,
                          double value);

}  // namespace epoch::workflows
