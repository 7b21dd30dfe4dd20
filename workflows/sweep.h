// Hyperparameter sweeps: one workflow step run as several trials, each with its own
// parameter values, and the best trial chosen by an objective metric.
//
// JSON, as the "sweep" field of a step:
//   "sweep": {
//     "method": "grid" | "random" | "asha" | "hyperband",   // default "grid"
//     "seed": 7,                          // random only (ignored by grid); default 0
//     "parameters": {                     // at least one; name -> one of:
//       "lr":     {"values": [0.001, 0.003]},   // a list of values
//       "hidden": [128, 256],                   // the same, as a bare list
//       "wd":     {"min": 1e-5, "max": 1e-2, "log": true},  // range (random only)
//       "layers": {"min": 1, "max": 4, "integer": true}     // integer range, both ends in
//     },
//     "trials": 8,                        // random: required; grid: optional cap
//     "parallel": 2,                      // trials running at once; default 1
//     "objective": {"metric": "accuracy", "goal": "maximize" | "minimize"}  // required
//     // asha / hyperband only (asha.h): early stopping by the live metrics
//     "resource": "epoch", "minResource": 1, "maxResource": 9, "reduction": 3,
//     "brackets": 2,                      // hyperband only
//     "sample": "grid" | "random"         // how trials get their values; default grid
//                                         // when every parameter is a list, else random
//   }
// asha and hyperband draw each trial's values as grid or random do ("sample", with the
// same rules for "trials" and "seed") and stop trials early: the engine judges each
// trial at the rungs of its bracket from the live metric points that carry both
// `resource` and the objective's metric (asha.h), and stops those below the cutoff.
// Values in lists are strings, numbers or booleans (like workflow params). Parameter
// names follow the workflow param rule (1-63 of A-Z a-z 0-9 '_' '-', not starting with
// a digit or '-'). trials and parallel are integers in 1..kMaxSweepTrials; seed is a
// non-negative integer (up to 2^64-1). A grid may have at most kMaxSweepTrials
// combinations (counted before any `trials` cap: a cap takes a prefix of the grid
// order, so a capped huge grid would explore only its last parameters).
// `goal` is required: defaulting it would silently pick the worst trial for a loss.
//
// Trial order:
//   grid   - parameters ordered by name, the last one varying fastest (an odometer);
//            trial i is the i-th combination.
//   random - each value is drawn from splitmix64(seed, trial, parameter name), so the
//            same sweep and trial always give the same values on every platform
//            (no <random> distributions, whose output differs between standard
//            libraries), and adding a parameter does not change the others' values.
//            Lists are sampled uniformly; ranges uniformly in [min, max] (in log space
//            when "log"); integer ranges give each integer in [min, max] (both ends
//            included) with equal probability (or log-uniformly when "log").
//
// Problems are reported like the rest of the definition parser: one
// "<json path>: <reason>" string each, e.g.
//   "steps[1].sweep.parameters.wd: grid needs a list of values"
//   "steps[1].sweep.objective.goal: must be \"maximize\" or \"minimize\""
//
// Thread-safety: Sweep is a plain value; the functions are pure.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/json.h"
#include "workflows/asha.h"

namespace epoch::workflows {

// The most trials one sweep may have (and the most a grid may enumerate).
inline constexpr int kMaxSweepTrials = 10000;

struct SweepParam {
  std::string name{};
  Json values = Json::array();  // the list (when !is_range): scalars, non-empty
  bool is_range = false;
  double min = 0, max = 0;  // when is_range: min < max; integers when `integer`
  bool log = false;         // sample in log space (min > 0)
  bool integer = false;     // sample integers in [min, max]
};

struct Sweep {
  // How trials get their values (for asha/hyperband: the "sample" field).
  enum class Method { kGrid, kRandom };
  Method method = Method::kGrid;
  // Early stopping (method "asha" or "hyperband"); nullopt for grid and random.
  std::optional<Asha> stopping{};
  uint64_t seed = 0;
  std::vector<SweepParam> params{};  // sorted by name
  int trials = 0;                    // 0 = not given (grid: the full grid)
  int parallel = 1;
  std::string metric{};
  bool maximize = true;
};

// Parses and validates the "sweep" object `j` found at `path` (e.g. "steps[2].sweep").
// Appends one "<path>.<field>: <reason>" string to *problems for every problem found
// (all of them, not only the first) and returns nullopt if there was any; otherwise
// the sweep, with params sorted by name. Entries already in *problems are kept and do
// not count. Detected: unknown fields (in the sweep, objective, a parameter object; the
// early-stopping fields unless the method is asha/hyperband), a method other than
// grid/random/asha/hyperband, a "sample" other than grid/random, the early-stopping
// problems ParseAsha names, parameters missing/empty/not an object, a parameter
// that is not a non-empty list of scalars, {"values": [...]} or a {min, max} range,
// min >= max, log with min <= 0, non-integer bounds of an integer range, ranges in a
// grid, trials missing (random) or not an integer in 1..kMaxSweepTrials, parallel not
// an integer in 1..kMaxSweepTrials, objective/metric/goal missing or invalid, a grid
// of more than kMaxSweepTrials combinations, seed not a non-negative integer.
std::optional<Sweep> ParseSweep(const Json& j, const std::string& path,
                                std::vector<std::string>* problems);

// The number of trials: grid - the product of the list sizes, capped by `trials` when
// set; random - `trials`. (For a parsed sweep this is in 1..kMaxSweepTrials.)
int TrialCount(const Sweep& s);

// The parameter values of trial `trial` (0-based) as a JSON object name -> value,
// deterministic as described at the top. Integer ranges give JSON integers, other
// ranges JSON floats, lists their element as given. Returns null (not an object) when
// `trial` is outside [0, TrialCount(s)).
Json TrialParams(const Sweep& s, int trial);

// The best of the finished trials. `results` holds (trial index, metrics), metrics
// being the trial's JSON object of metrics, or null when the trial failed. A trial
// counts only if its metrics hold a number (not a boolean, not NaN) under s.metric.
// Returns the index of the trial with the highest (maximize) or lowest (minimize)
// value, the lowest trial index among equal values, or -1 when no trial counts.
// Negative trial indices are ignored (they could not be told apart from -1).
int BestTrial(const Sweep& s, const std::vector<std::pair<int, Json>>& results);

}  // namespace epoch::workflows
