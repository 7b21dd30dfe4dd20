// Golden histories: event logs written by earlier versions of Epoch, which every
// later version must replay to the same state. Never edit a .ndjson here; add new
// histories instead. The expected state (.state.json) is regenerated only on
// purpose: EPOCH_UPDATE_GOLDEN=1 rewrites it, and the diff is reviewed.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "common/json.h"
#include "engine/engine.h"
#include "engine/event_types.h"
#include "engine/state.h"
#include "tests/exported_event.h"

namespace epoch::engine {
namespace {

std::string Dir() { return std::string(EPOCH_SOURCE_DIR) + "/tests/golden/"; }

State Replay(const std::string& name) {
  std::ifstream in(Dir() + name + ".ndjson");
  EXPECT_TRUE(in.good()) << name;
  State s;
  std::string line;
  while (std::getline(in, line)) {
    auto j = ParseJson(line);
    EXPECT_TRUE(j.ok()) << line;
    auto e = epoch::testing::FromExported(*j);
    EXPECT_TRUE(e.ok()) << line;
    if (!e.ok()) continue;
    Status st = Evolve(s, *e);
    EXPECT_TRUE(st.ok()) << st.ToString();
  }
  return s;
}

TEST(GoldenTest, V1HistoryReplaysToTheRecordedState) {
  State s = Replay("v1-history");
  Json got = StateDigestJson(s);
  std::string expected_path = Dir() + "v1-history.state.json";
  if (std::getenv("EPOCH_UPDATE_GOLDEN")) {
    std::ofstream(expected_path) << got.dump(1) << "\n";
  }
  std::ifstream in(expected_path);
  std::stringstream ss;
  ss << in.rdbuf();
  auto want = ParseJson(ss.str());
  ASSERT_TRUE(want.ok()) << "missing " << expected_path;
  EXPECT_EQ(got, *want) << "replaying v1-history no longer gives the recorded state";
  // What the history is known to contain, independent of the file above.
  EXPECT_EQ(s.head, 82u);
  int succeeded = 0, failed = 0, cancelled = 0, running = 0;
  for (const auto& [id, r] : s.runs) {
    succeeded += r.phase == RunPhase::kSucceeded;
    failed += r.phase == RunPhase::kFailed;
    cancelled += r.phase == RunPhase::kCancelled;
    running += r.phase == RunPhase::kRunning || r.phase == RunPhase::kQueued;
  }
  EXPECT_EQ(succeeded, 2);  // hello-lifecycle twice (once with infer skipped)
  EXPECT_EQ(cancelled, 1);  // long, cancelled while running
  EXPECT_EQ(failed + running, 1);  // flaky: failed, then retried
  EXPECT_EQ(s.idempotency.size(), 1u);
}

// Every history in tests/golden replays to the state recorded next to it.
TEST(GoldenTest, EveryHistoryReplaysToItsRecordedState) {
  int histories = 0;
  for (const auto& entry : std::filesystem::directory_iterator(Dir())) {
    if (entry.path().extension() != ".ndjson") continue;
    std::string name = entry.path().stem().string();
    ++histories;
    State s = Replay(name);
    std::string expected_path = Dir() + name + ".state.json";
    std::ifstream in(expected_path);
    std::stringstream ss;
    ss << in.rdbuf();
    auto want = ParseJson(ss.str());
    ASSERT_TRUE(want.ok()) << "missing " << expected_path;
    EXPECT_EQ(StateDigestJson(s), *want) << "replaying " << name << " no longer gives its state";
  }
  EXPECT_GE(histories, 2);
}

// The (type, payload version) of every event in every golden history (v1's export
// predates the version field: 1).
std::set<std::pair<std::string, uint32_t>> TypesAndVersionsInGoldenHistories() {
  std::set<std::pair<std::string, uint32_t>> seen;
  for (const auto& entry : std::filesystem::directory_iterator(Dir())) {
    if (entry.path().extension() != ".ndjson") continue;
    std::ifstream in(entry.path());
    std::string line;
    while (std::getline(in, line)) {
      auto j = ParseJson(line);
      EXPECT_TRUE(j.ok()) << entry.path() << ": " << line;
      if (j.ok()) seen.insert({(*j)["type"].get<std::string>(), j->value("schema", 1u)});
    }
  }
  return seen;
}

// A new event type needs a golden history that has it (tests/golden_history_e2e_test
// writes one with EPOCH_WRITE_GOLDEN=<dir>).
TEST(GoldenTest, EveryEventTypeAppearsInAGoldenHistory) {
  std::set<std::string> seen;
  for (const auto& [type, version] : TypesAndVersionsInGoldenHistories()) seen.insert(type);
  for (std::string_view type : ev::kAllTypes) {
    EXPECT_TRUE(seen.count(std::string(type))) << "no golden history has a " << type << " event";
  }
}

// Every payload version a type has had is in some golden history, so each upcaster
// (ev::Upcast) and today's decoding are both proven by replay: a type that moves to a
// new version needs a history written at it.
TEST(GoldenTest, EveryPayloadVersionAppearsInAGoldenHistory) {
  std::set<std::pair<std::string, uint32_t>> seen = TypesAndVersionsInGoldenHistories();
  int upcast = 0;
  for (std::string_view type : ev::kAllTypes) {
    for (uint32_t v = 1; v <= ev::CurrentVersion(type); ++v) {
      EXPECT_TRUE(seen.count({std::string(type), v}))
          << "no golden history has a " << type << " at payload version " << v;
    }
    upcast += ev::CurrentVersion(type) > 1;
  }
  EXPECT_EQ(upcast, 2);  // WorkflowRegistered and JobQueued are at v2
}

// What replay did with a stored payload before ev::DecodeEvent read its text: parse it
// (engine/replay.cc FromStored), upcast it, check that it is an object (Evolve),
// decode it.
Result<ev::Payload> DecodeParsed(const RecordedEvent& stored) {
  auto prefix = "event " + std::to_string(stored.position) + " (" + stored.type + "): ";
  auto j = ParseJson(*stored.text, ev::kMaxPayloadDepth);
  if (!j.ok()) return Corruption(prefix + "field data: " + j.status().message());
  auto data = ev::Upcast(stored.type, stored.schema, std::move(*j));
  if (!data.ok()) return Status(data.status().code(), prefix + data.status().message());
  if (!data->is_object()) return Corruption(prefix + "field data: not a JSON object");
  RecordedEvent e = stored;
  e.text.reset();
  e.data = std::move(*data);
  e.schema = ev::CurrentVersion(e.type);
  return ev::DecodeEvent(e);
}

Json EncodePayload(const ev::Payload& p) {
  return std::visit([](const auto& x) { return fields::Encode(x); }, p);
}

// DecodeEvent of an event carrying its stored text gives what parsing it gives: the
// same payload or the same error.
void ExpectSameAsParsed(const RecordedEvent& e) {
  auto fast = ev::DecodeEvent(e);
  auto slow = DecodeParsed(e);
  ASSERT_EQ(fast.ok(), slow.ok()) << e.type << " " << *e.text << ": "
                                  << (fast.ok() ? slow.status() : fast.status()).ToString();
  if (!fast.ok()) {
    EXPECT_EQ(fast.status().ToString(), slow.status().ToString()) << *e.text;
    return;
  }
  EXPECT_EQ(fast->index(), slow->index()) << *e.text;
  EXPECT_EQ(EncodePayload(*fast), EncodePayload(*slow)) << *e.text;
}

TEST(GoldenTest, EveryStoredPayloadDecodesFromItsTextAsFromItsParsedJson) {
  int events = 0;
  for (const auto& entry : std::filesystem::directory_iterator(Dir())) {
    if (entry.path().extension() != ".ndjson") continue;
    std::ifstream in(entry.path());
    std::string line;
    while (std::getline(in, line)) {
      auto j = ParseJson(line);
      ASSERT_TRUE(j.ok()) << line;
      RecordedEvent e;
      e.position = (*j)["position"];
      e.type = (*j)["type"];
      e.schema = j->value("schema", 1u);
      e.text = CanonicalDump((*j)["data"]);  // what the store holds
      ExpectSameAsParsed(e);
      auto decoded = ev::DecodeEvent(e);
      EXPECT_TRUE(decoded.ok()) << decoded.status().ToString();
      ++events;
    }
  }
  EXPECT_GT(events, 100);
}

TEST(GoldenTest, AStoredPayloadThatDoesNotDecodeFailsAsWhenParsed) {
  struct Case {
    std::string type;
    uint32_t schema;
    std::string text;
    std::string error;  // a part of the message both give; empty: both decode
  };
  const std::string deep = std::string(300, '[') + std::string(300, ']');
  const std::vector<Case> cases = {
      {"StepReady", 1, R"({"step":"a"})", ""},
      {"StepReady", 1, R"({"step":"\u00e9"})", ""},        // left to Json: decodes
      {"StepReady", 1, R"({"step":"a","step":"b"})", ""},  // Json keeps the last
      {"StepReady", 1, R"({"step":"a","x":[]})", ""},      // an unknown member
      {"JobQueued", 1, "", "field data: malformed JSON"},
      {"StepReady", 1, R"({"step":"a")", "field data: malformed JSON"},
      {"StepReady", 1, R"({"step":"a"} x)", "field data: malformed JSON"},
      {"StepReady", 1, R"(["step"])", "field data: not a JSON object"},
      {"StepReady", 1, R"({"step":"a","x":)" + deep + "}", "nested deeper than 256"},
      {"StepReady", 1, R"({})", "field step: missing"},
      {"StepReady", 1, R"({"step":5})", "field step: expected a string, got integer"},
      {"StepReady", 2, R"({"step":"a"})", "written by a newer Epoch"},
      {"StepReadied", 1, R"({"step":"a"})", "not one this Epoch knows"},
      {"JobQueued", 1, R"("x")", "field data: not a JSON object, cannot upcast JobQueued v1"},
  };
  for (const auto& c : cases) {
    RecordedEvent e;
    e.position = 7;
    e.type = c.type;
    e.schema = c.schema;
    e.text = c.text;
    ExpectSameAsParsed(e);
    auto got = ev::DecodeEvent(e);
    if (c.error.empty()) {
      EXPECT_TRUE(got.ok()) << c.text << ": " << got.status().ToString();
    } else {
      ASSERT_FALSE(got.ok()) << c.text;
      EXPECT_NE(got.status().ToString().find("event 7 (" + c.type + "): "), std::string::npos)
          << got.status().ToString();
      EXPECT_NE(got.status().ToString().find(c.error), std::string::npos)
          << got.status().ToString();
    }
  }
  // Unparsed (schema 0: today's version) and parsed events of today's version decode alike.
  RecordedEvent e;
  e.type = "StepReady";
  e.text = R"({"step":"s"})";
  auto got = ev::DecodeEvent(e);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(std::get<ev::StepReady>(*got).step, "s");
}

}  // namespace
}  // namespace epoch::engine
