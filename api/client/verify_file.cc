#include "api/client/verify_file.h"

#include <cstdint>
#include <string>

#include "storage/codec.h"
#include "storage/event_store.h"

namespace epoch::client {

namespace {

// The envelope as the store encoded it, from one exported line.
Result<storage::Envelope> ToEnvelope(const Json& j) {
  auto need = [&](const char* k) -> Status {
    if (!j.contains(k)) return InvalidArgument(std::string("no \"") + k + "\"");
    return Status::Ok();
  };
  for (const char* k : {"position", "stream", "version", "type", "schema", "time", "epoch",
                        "actor", "data", "prev_hash", "hash"}) {
    RETURN_IF_ERROR(need(k));
  }
  try {
    storage::Envelope e;
    e.position = j["position"].get<uint64_t>();
    e.stream = j["stream"].get<std::string>();
    e.version = j["version"].get<uint64_t>();
    e.type = j["type"].get<std::string>();
    e.schema = j["schema"].get<uint32_t>();
    e.time = j["time"].get<std::string>();
    e.epoch = j["epoch"].get<uint64_t>();
    e.actor = j["actor"].get<std::string>();
    e.data = CanonicalDump(j["data"]);
    e.prev_hash = j["prev_hash"].get<std::string>();
    e.hash = j["hash"].get<std::string>();
    return e;
  } catch (const Json::exception& ex) {
    return InvalidArgument(std::string("a field has the wrong type: ") + ex.what());
  }
}

}  // namespace

Result<Json> VerifyEventsFile(std::istream& in, const std::string& against) {
  uint64_t against_pos = 0;
  std::string against_hash;
  if (!against.empty()) {
    size_t colon = against.find(':');
    if (colon == std::string::npos || colon == 0 || against.size() - colon - 1 != 64) {
      return InvalidArgument("--against: must be POSITION:HASH");
    }
    against_pos = std::stoull(against.substr(0, colon));
    against_hash = against.substr(colon + 1);
  }
  Json report{{"ok", true}, {"events", 0}, {"links_checked", 0}};
  auto fail = [&](uint64_t line, uint64_t position, const std::string& problem) {
    report["ok"] = false;
    report["bad_line"] = line;
    if (position > 0) report["bad_position"] = position;
    report["problem"] = problem;
    return report;
  };
  std::string text;
  uint64_t line_no = 0, events = 0, links = 0, last_pos = 0;
  std::string last_hash;
  bool against_seen = false;
  while (std::getline(in, text)) {
    ++line_no;
    if (text.empty()) continue;
    auto j = ParseJson(text, 512);
    if (!j.ok()) return fail(line_no, 0, "line " + std::to_string(line_no) + ": " + j.status().message());
    auto env = ToEnvelope(*j);
    if (!env.ok()) {
      return fail(line_no, 0, "line " + std::to_string(line_no) + ": " + env.status().message());
    }
    const std::string where = "event " + std::to_string(env->position);
    if (events > 0 && env->position <= last_pos) {
      return fail(line_no, env->position, where + ": out of order after " + std::to_string(last_pos));
    }
    std::string value;
    Digest hash{};
    Status st = storage::codec::EncodeEvent(*env, &value, &hash);
    if (!st.ok()) return fail(line_no, env->position, where + ": " + st.message());
    if (ToHex(hash) != env->hash) {
      return fail(line_no, env->position, where + ": hash mismatch (its fields hash to " + ToHex(hash) + ")");
    }
    if (env->position == 1 && env->prev_hash != storage::codec::ZeroHashHex()) {
      return fail(line_no, 1, "event 1: prev_hash is not 64 zeros");
    }
    if (events > 0 && env->position == last_pos + 1) {
      if (env->prev_hash != last_hash) {
        return fail(line_no, env->position,
                    where + ": prev_hash does not match the hash of event " + std::to_string(last_pos));
      }
      ++links;
    }
    if (events == 0) report["first_position"] = env->position;
    if (against_pos > 0 && env->position == against_pos) {
      against_seen = true;
      Json a{{"position", against_pos}, {"hash", against_hash}, {"ok", env->hash == against_hash}};
      if (env->hash != against_hash) a["problem"] = where + " has hash " + env->hash;
      report["against"] = a;
    }
    ++events;
    last_pos = env->position;
    last_hash = env->hash;
  }
  if (in.bad()) return Internal("reading the export failed");
  report["events"] = events;
  report["links_checked"] = links;
  if (events > 0) {
    report["last_position"] = last_pos;
    report["last_hash"] = last_hash;
  }
  if (against_pos > 0 && !against_seen) {
    report["against"] = Json{{"position", against_pos}, {"hash", against_hash}, {"ok", false},
                             {"problem", "the export has no event " + std::to_string(against_pos)}};
  }
  if (report.contains("against") && !report["against"].value("ok", false)) report["ok"] = false;
  return report;
}

}  // namespace epoch::client
