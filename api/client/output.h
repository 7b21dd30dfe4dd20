// Rendering of API answers for epochctl: aligned text tables for people, JSON for
// scripts. Every function takes the server's JSON as it came and is tolerant of
// missing or null optional fields (shown as "-"), so a newer or older server still
// renders. Functions return the text; the caller decides where it goes.
//
// "now" is passed in (never read here) so the elapsed time of a running step or run
// is deterministic in tests.
//
// Thread-safety: pure functions.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "common/json.h"
#include "common/status.h"

namespace epoch::client {

enum class OutputFormat { kTable, kJson };

// "table" | "json"; kInvalidArgument otherwise.
Result<OutputFormat> ParseOutputFormat(std::string_view s);

// Columns padded to their widest cell, two spaces apart; the last column is not
// padded (no trailing spaces).
class Table {
 public:
  explicit Table(std::vector<std::string> headers) : headers_(std::move(headers)) {}
  void AddRow(std::vector<std::string> cells) { rows_.push_back(std::move(cells)); }
  std::string Render() const;

 private:
  std::vector<std::string> headers_;
  std::vector<std::vector<std::string>> rows_;
};

// A field for display: strings as they are, numbers and booleans printed, objects and
// arrays as compact JSON; "-" when missing, null, "" or an empty object/array.
std::string Cell(const Json& obj, std::string_view key);
std::string CompactJson(const Json& j);  // "-" for null and empty containers
// "250ms", "12.3s", "1m30s", "2h5m".
std::string HumanDuration(Micros d);
// "2Gi", "128Mi", "1.5Gi", "512".
std::string HumanBytes(int64_t bytes);
// finished - started (or now - started when not finished); "-" without a start time.
std::string ElapsedCell(const Json& obj, std::string_view start_key, std::string_view end_key,
                        TimePoint now);

bool IsTerminalRunState(std::string_view state);

// Pretty JSON (2-space indent) and a newline.
std::string RenderJson(const Json& j);

// A Run: a header (id, workflow@version, state, times, params, labels) and a table of
// steps: name, kind, state, attempts, the last attempt's exit code / signal / reason,
// duration, metrics as compact JSON. A swept step's row gives its best trial instead
// of an outcome and the time from its first trial's start to its last one's end, and a
// table of its trials follows the steps': trial, attempt, state ("stopped at rung R"
// when early stopping stopped it), params, [bracket, when hyperband has several], [rung
// and the resource used there, for asha/hyperband], the last objective value (the final
// metric once the step's best names the objective, else the value at the last rung),
// duration, [a gang's world size and its workers' states counted].
std::string RenderRun(const Json& run, TimePoint now);
std::string RenderRunList(const Json& runs, TimePoint now);  // an array of Run
std::string RenderEvents(const Json& events);                // an array of Event
// One event as one line with fixed column widths, for streams (no header).
std::string RenderEventLine(const Json& event);
std::string RenderEventHeader();                       // the column titles matching RenderEventLine
std::string RenderContainers(const Json& containers);  // an array
std::string RenderCluster(const Json& cluster);
// GET /v1/usage as a table: one row per tenant.
std::string RenderUsage(const Json& usage);
std::string RenderWorkflows(const Json& workflows);  // an array
std::string RenderWorkflow(const Json& workflow);

// Lineage: data sets and models (GET /v1/datasets, /v1/models).
// A list of either ({"items": [latest version + "versions" count]}): name, latest version,
// number of versions, the latest digest's first 12 hex digits, when it was registered.
std::string RenderArtifactList(const Json& list);
// Every version of a data set ({"name", "versions": [...]}): a table of version, digest,
// registered, run/step and its output files (up to 3 named with their sizes, else the
// count and total size).
std::string RenderDatasetVersions(const Json& dataset);
// One data set version in full: digest, run, step, attempt, and a table of its outputs
// (name, size, SHA-256).
std::string RenderDatasetVersion(const Json& version);
// Every version of a model: a table of version, digest, registered, run/step,
// workflow@version, data sets (name@version), the numeric and boolean metrics
// (name=value, non-integers to 4 significant digits), validated_by (run/step), params.
std::string RenderModelVersions(const Json& model);
// One model version in full (its lineage): digest, run, step, attempt, workflow@version,
// params, data sets, validated_by, then a table of every metric (arrays and objects as
// compact JSON) and a table of its outputs.
std::string RenderModelVersion(const Json& version);

// --wait: the lines describing what changed between two snapshots of a run (run state,
// each step whose state or attempt count changed), each ending in '\n'. `before` may be
// null (first snapshot: every step not pending is reported).
std::string RenderRunChanges(const Json& before, const Json& after, TimePoint now);

// A series' values as a sparkline of at most `width` cells ("▁▂▃▄▅▆▇█"): each cell the
// mean of its share of the points, scaled between the series' min and max (a flat
// series is all "▄"); "" for no values.
std::string Sparkline(const std::vector<double>& values, size_t width);
// GET /v1/runs/{id}/steps/{step}/metrics: one line per series (name, attempt, rank,
// points, last, min, max, sparkline) and each attempt's totals when something was
// skipped, dropped or truncated.
std::string RenderMetrics(const Json& metrics);

}  // namespace epoch::client
