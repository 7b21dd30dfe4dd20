// The Engine's side of the read model (archive.h): where finished runs are read back
// for the API, and whether a replay must rebuild the read model.
#include <spdlog/spdlog.h>

#include <optional>
#include <string>

#include "engine/engine.h"

namespace epoch::engine {

namespace {
// The records family's marker of a complete read model: its value is the format.
const std::string kFormatKey =
    "\x01"
    "format";
}  // namespace

std::optional<Run> Engine::LoadFolded(const State& s, const std::string& id) const {
  if (!reading_) return std::nullopt;
  // The record as of s: a standby that lags, or a history served up to a corrupt
  // event, must not show a run folded by events it has not applied.
  auto run = reading_->Load(s, id, s.head + 1);
  if (!run.ok()) {
    spdlog::error("reading run {} from the read model: {}", id, run.status().ToString());
    return std::nullopt;
  }
  return std::move(*run);
}

Result<RunPage> Engine::ListRuns(const RunQuery& q) const {
  ReaderLock lock(&published_mu_);
  return engine::ListRuns(published_, options_.config, q, reading_.get());
}

bool Engine::ReadModelComplete() {
  auto marker = store_->GetReadModel(storage::ReadModelFamily::kRecords, kFormatKey);
  return marker.ok() && marker->has_value() && **marker == std::to_string(RunRecordFormat());
}

Status Engine::FlushArchive() {
  if (!recording_ || working_archive_ != recording_.get() || recording_->empty()) {
    return Status::Ok();
  }
  return store_->WriteReadModel(recording_->TakeWrites(), /*sync=*/false);
}

Status Engine::MarkReadModelComplete() {
  RETURN_IF_ERROR(FlushArchive());
  return store_->WriteReadModel(
      {{storage::ReadModelFamily::kRecords, kFormatKey, std::to_string(RunRecordFormat())}},
      /*sync=*/true);
}

}  // namespace epoch::engine
