// Workflow definitions: the parsed, validated form of the JSON a user registers
// (see DESIGN.md, "Workflow definition"), plus the run-time helpers that need the
// definition: parameter resolution, command templating and `when` evaluation.
//
// Parsing collects every problem, not only the first: a rejection is a
// kInvalidArgument Status whose message summarises and whose details() hold one
// "<json path>: <reason>" string per problem, e.g.
//   "steps[1].after[0]: unknown step 'trian'"
//   "steps: cycle train -> validate -> train"
//
// Thread-safety: Definition is an immutable value once parsed; share it freely
// (engine state holds std::shared_ptr<const Definition>).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "common/json.h"
#include "common/status.h"
#include "workflows/sweep.h"

namespace epoch::workflows {

enum class StepKind { kDataPrep, kTrain, kValidate, kInfer, kTask };
std::string_view StepKindName(StepKind k);  // "data_prep", "train", ...
// The kind named by s ("data_prep", ...), or nullopt for an unknown name.
std::optional<StepKind> ParseStepKind(std::string_view s);

struct Resources {
  int64_t cpu_millis = 100;            // "100m"
  int64_t memory_bytes = 128LL << 20;  // "128Mi"
  int gpus = 0;
  // Whether the definition named them. The scheduler reserves the figures either way;
  // the kernel enforces only declared ones as the attempt's limits (an undeclared
  // default is bounded by its container's sig.cpu / sig.memory alone).
  bool cpu_declared = false;
  bool memory_declared = false;
};

struct RetryPolicy {
  enum class Backoff { kFixed, kExponential };
  int limit = 0;  // retries after the first attempt (limit 3 = at most 4 attempts)
  Backoff backoff = Backoff::kExponential;
  Micros initial = std::chrono::seconds(1);
  Micros max = std::chrono::minutes(1);
  // Delay before attempt `next_attempt` (2 = the first retry): fixed = initial;
  // exponential = initial * 2^(next_attempt-2), capped at max.
  Micros DelayBefore(int next_attempt) const;
};

class WhenExpr;  // parsed `when` expression (when.h)

struct Step {
  std::string name;
  StepKind kind = StepKind::kTask;
  std::vector<std::string> command;        // argv templates
  std::map<std::string, std::string> env;  // extra environment (templates allowed)
  std::vector<std::string> after;          // names of upstream steps
  Resources resources;
  RetryPolicy retry;
  std::optional<Micros> timeout;
  // Memoization (opt-in): a succeeded attempt of a step with the same cache key
  // (engine/cache.h) is reused instead of running again. `cache_max_age` (from
  // "cache": {"maxAge": "7d"}) bounds how old a reused result may be.
  bool cache = false;
  std::optional<Micros> cache_max_age{};
  // Files (templates allowed, e.g. "{{params.data}}/train.csv") the step reads that
  // no upstream step produced: their SHA-256 is part of the cache key.
  std::vector<std::string> inputs{};
  // Distributed step: `workers` processes run at once (gang-scheduled: all placed or
  // none), each with `resources`, RANK 0..workers-1 and WORLD_SIZE = workers.
  int workers = 1;
  // An elastic gang ("workers": {"min": m, "max": M}): `workers` is M and this m; it
  // starts with as many as fit (at least m), grows toward M when room frees and
  // shrinks instead of failing when a worker is lost while m remain. 0: exactly
  // `workers`.
  int workers_min = 0;
  std::string when;                           // source text, empty = always
  std::shared_ptr<const WhenExpr> when_expr;  // null when `when` is empty
  // Declared output file names (plain names, no '/'); empty = none declared. When
  // declared, {{steps.<this>.outputs.<f>}} in downstream steps must name one of them.
  std::vector<std::string> outputs;
  // Lineage: a data_prep step's outputs are a version of data set `dataset`; a
  // train step's are a version of model `model` (empty = none).
  std::string dataset;
  std::string model;
  // Hyperparameter sweep (sweep.h): the step runs as trials, each an attempt whose
  // {{params.X}} are the trial's values; the best by the objective is the step's result.
  std::optional<Sweep> sweep{};
};

struct Definition {
  std::string name;
  std::string description;
  Json params = Json::object();    // name -> default value (null = required at submission)
  std::vector<Step> steps;         // in the order given
  std::vector<size_t> topo_order;  // indices into steps, dependencies first
  Json source;                     // the definition as JSON, normalised (defaults not added)
  std::string digest;              // SHA-256 hex of CanonicalDump(source)

  const Step* FindStep(std::string_view name) const;
};

// Parses and validates a definition. Rejections as described above.
// Validated: unknown fields anywhere, name/command missing or of the wrong type,
// invalid or duplicate step names, unknown `after` targets, cycles, durations
// (timeout, retry.initial, retry.max), quantities (resources.cpu/memory/gpus),
// retry (limit 0..100, backoff fixed|exponential), template variables
// ({{params.X}} must be declared; {{run.id}}, {{workspace}}, {{step.name}},
// {{attempt}}, {{outputs}} and {{steps.<upstream>.metrics.<k>}} /
// {{steps.<upstream>.outputs.<f>}} are known), and `when` syntax and references.
// `max_resources` (if given) rejects steps that ask for more than any container holds;
// `max_steps` (if not 0) rejects a definition of more steps without parsing them.
// Both are registration rules: a stored definition is replayed without them.
Result<std::shared_ptr<const Definition>> ParseDefinition(
    const Json& j, const std::optional<Resources>& max_resources = std::nullopt,
    size_t max_steps = 0);

// Rebuilds a definition from the log (WorkflowRegistered): stored definitions are
// facts, so today's rules do not refuse one. Problems that today's registration
// would report land in `problems`; a value that a rule rejects is left out of
// the definition (its default applies), as registration's parser leaves it. It
// fails only when what is stored cannot be run at all: not an object, a step
// without a name or command, duplicate names, an unknown `after`, a cycle.
Result<std::shared_ptr<const Definition>> ParseStoredDefinition(
    const Json& j, std::vector<std::string>* problems = nullptr);

// Merges submitted params over the defaults. kInvalidArgument naming the param
// for: an undeclared param, a required (null default) param not given.
Result<Json> ResolveParams(const Definition& def, const Json& given);

// What a command template may refer to at dispatch time.
struct TemplateContext {
  Json params = Json::object();
  std::string run_id;
  std::string workspace;    // runs/<run>
  std::string outputs_dir;  // this attempt's $EPOCH_OUTPUTS
  std::string step;
  int attempt = 1;
  // step name -> {"metrics": {...}, "outputs": {"file": "/abs/path", ...}}
  Json steps = Json::object();
};

// Replaces every {{...}} in s. kInvalidArgument for an unknown variable or a
// reference to a metric/output that does not exist at run time.
Result<std::string> RenderTemplate(std::string_view s, const TemplateContext& ctx);
Result<std::vector<std::string>> RenderCommand(const Step& step, const TemplateContext& ctx);

// Evaluates the step's `when` (true when it has none). `steps` is as in
// TemplateContext (metrics of finished upstream steps). A reference to a metric
// that does not exist evaluates the comparison to false (and is not an error).
Result<bool> EvaluateWhen(const Step& step, const Json& params, const Json& steps);

}  // namespace epoch::workflows
