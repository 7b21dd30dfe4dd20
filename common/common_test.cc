#include <fcntl.h>
#include <gtest/gtest.h>

#include <limits>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <functional>

#include "common/clock.h"
#include "common/fd.h"
#include "common/fields.h"
#include "common/files.h"
#include "common/ids.h"
#include "common/json.h"
#include "common/json_reader.h"
#include "common/sha256.h"
#include "common/status.h"
#include "common/units.h"

namespace epoch {
namespace {

Result<int> Half(int x) {
  if (x % 2) return InvalidArgument("odd");
  return x / 2;
}
Result<int> Quarter(int x) {
  ASSIGN_OR_RETURN(int h, Half(x));
  ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

TEST(StatusTest, MacrosPropagate) {
  EXPECT_EQ(*Quarter(8), 2);
  Result<int> r = Quarter(6);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().ToString(), "invalid_argument: odd");
}

TEST(ClockTest, FormatAndParseRoundTrip) {
  TimePoint t = FromMicros(1795873120123456);  // 2026-11-28T...
  std::string s = FormatTime(t);
  EXPECT_EQ(s.substr(0, 10), "2026-11-28");
  EXPECT_EQ(s.size(), 27u);
  EXPECT_EQ(s.back(), 'Z');
  EXPECT_EQ(*ParseTime(s), t);
  EXPECT_EQ(FormatTime(*ParseTime("1970-01-01T00:00:01Z")), "1970-01-01T00:00:01.000000Z");
  EXPECT_FALSE(ParseTime("yesterday").ok());
  EXPECT_FALSE(ParseTime("2026-13-01T00:00:00Z").ok());
}

TEST(ClockTest, ParsesCanonicalTimesLikeTimegm) {
  // ParseTime reads the canonical form with arithmetic: it must agree with timegm,
  // including a day past the month's end and a leap second, which count on.
  for (int y : {0, 1, 1600, 1899, 1969, 1970, 2000, 2024, 2026, 2100, 9999}) {
    for (int mo : {1, 2, 3, 12}) {
      for (int d : {1, 28, 29, 31}) {
        for (int se : {0, 59, 60}) {
          char text[64];
          std::snprintf(text, sizeof(text), "%04d-%02d-%02dT23:07:%02d.000042Z", y, mo, d, se);
          struct tm tm_utc = {};
          tm_utc.tm_year = y - 1900;
          tm_utc.tm_mon = mo - 1;
          tm_utc.tm_mday = d;
          tm_utc.tm_hour = 23;
          tm_utc.tm_min = 7;
          tm_utc.tm_sec = se;
          auto t = ParseTime(text);
          ASSERT_TRUE(t.ok()) << text;
          EXPECT_EQ(ToMicros(*t), static_cast<int64_t>(timegm(&tm_utc)) * 1000000 + 42) << text;
        }
      }
    }
  }
  // Not the canonical shape: the general reading (sscanf) takes what it took before.
  auto spaced = ParseTime("2026-01-07T00:00: 1Z");
  ASSERT_TRUE(spaced.ok());
  EXPECT_EQ(FormatTime(*spaced), "2026-01-07T00:00:01.000000Z");
  EXPECT_FALSE(ParseTime("2026-01-07T24:00:00Z").ok());
  EXPECT_FALSE(ParseTime("2026-01-07T00:00:00").ok());
  EXPECT_FALSE(ParseTime("2026-01-07T00:00:00+01:00").ok());
}

TEST(ClockTest, FormatsEveryTimePointWithoutOverflow) {
  EXPECT_EQ(FormatTime(FromMicros(-1)), "1969-12-31T23:59:59.999999Z");
  EXPECT_EQ(FormatTime(FromMicros(-1000000)), "1969-12-31T23:59:59.000000Z");
  // The extremes: INT64_MIN microseconds is about 292,000 years before 1970.
  std::string lo = FormatTime(FromMicros(std::numeric_limits<int64_t>::min()));
  EXPECT_EQ(lo, "-290308-12-21T19:59:05.224192Z");
  std::string hi = FormatTime(FromMicros(std::numeric_limits<int64_t>::max()));
  EXPECT_EQ(hi, "294247-01-10T04:00:54.775807Z");
}

TEST(UnitsTest, Durations) {
  EXPECT_EQ(ParseDuration("2s")->count(), 2000000);
  EXPECT_EQ(ParseDuration("500ms")->count(), 500000);
  EXPECT_EQ(ParseDuration("1h30m")->count(), 5400LL * 1000000);
  EXPECT_EQ(ParseDuration("120")->count(), 120LL * 1000000);
  EXPECT_EQ(ParseDuration("7d")->count(), 7LL * 86400 * 1000000);
  EXPECT_FALSE(ParseDuration("").ok());
  EXPECT_FALSE(ParseDuration("-1s").ok());
  EXPECT_FALSE(ParseDuration("5 parsecs").ok());
  EXPECT_FALSE(ParseDuration("3x").ok());
  EXPECT_EQ(FormatDuration(Micros(90'000'000)), "1m30s");
  EXPECT_EQ(FormatDuration(Micros(250'000)), "250ms");
}

TEST(UnitsTest, Quantities) {
  EXPECT_EQ(*ParseCpuMillis("1000m"), 1000);
  EXPECT_EQ(*ParseCpuMillis("1.5"), 1500);
  EXPECT_EQ(*ParseCpuMillis("2"), 2000);
  EXPECT_FALSE(ParseCpuMillis("0").ok());
  EXPECT_FALSE(ParseCpuMillis("1 core").ok());
  EXPECT_EQ(*ParseBytes("128Mi"), 128LL << 20);
  EXPECT_EQ(*ParseBytes("2Gi"), 2LL << 30);
  EXPECT_EQ(*ParseBytes("2144Mi"), 2144LL << 20);
  EXPECT_EQ(*ParseBytes("1G"), 1000000000LL);
  EXPECT_FALSE(ParseBytes("lots").ok());
  EXPECT_FALSE(ParseBytes("12Qi").ok());
}

TEST(JsonTest, ParseErrorsAndDepth) {
  EXPECT_TRUE(ParseJson(R"({"a":[1,2]})").ok());
  auto bad = ParseJson("{\"a\":");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("malformed JSON"), std::string::npos);
  std::string deep(100, '[');
  deep += std::string(100, ']');
  auto too_deep = ParseJson(deep, 64);
  ASSERT_FALSE(too_deep.ok());
  EXPECT_NE(too_deep.status().message().find("deeper"), std::string::npos);
  EXPECT_EQ(CanonicalDump(*ParseJson(R"({"b":1,"a":2})")), R"({"a":2,"b":1})");
}

// The message quotes the bytes the parser stopped at; the API sends it as JSON, so it
// must be valid UTF-8 even when the body was not (found by tests/fuzz: a 500).
TEST(JsonTest, ParseErrorsAreValidUtf8) {
  for (std::string text : {"{\"a\"\x9f}", "\xc3", "[\"x\", \xed\xa0\x80]", "{\"\xff\xfe\":1}"}) {
    auto bad = ParseJson(text);
    ASSERT_FALSE(bad.ok()) << text;
    EXPECT_NO_THROW((void)Json(bad.status().message()).dump()) << bad.status().message();
  }
}

TEST(JsonTest, ValidUtf8) {
  const std::string kFffd = "\xEF\xBF\xBD";
  EXPECT_EQ(ValidUtf8("plain ascii\n"), "plain ascii\n");
  EXPECT_EQ(ValidUtf8("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"),
            "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");
  // A lone continuation byte; a sequence cut short; an overlong '/'; a surrogate.
  EXPECT_EQ(ValidUtf8(std::string("a\x9F") + "b"), "a" + kFffd + "b");
  EXPECT_EQ(ValidUtf8("\xC3"), kFffd);
  EXPECT_EQ(ValidUtf8("\xC0\xAF"), kFffd + kFffd);
  EXPECT_EQ(ValidUtf8("\xED\xA0\x80"), kFffd + kFffd + kFffd);
  EXPECT_EQ(ValidUtf8("\xF4\x90\x80\x80"), kFffd + kFffd + kFffd + kFffd);  // > U+10FFFF
  EXPECT_EQ(ValidUtf8(std::string("\0x", 2)), std::string("\0x", 2));
  EXPECT_EQ(Utf8SequenceLength("\xE2\x82\xAC", 0), 3u);
  EXPECT_EQ(Utf8SequenceLength("\xE2\x82\xAC", 1), 0u);
  EXPECT_EQ(Utf8SequenceLength("ab", 2), 0u);
}

// Absent and null leave the output alone; a wrong type is refused naming the member
// with the reader's path; nothing is read from a refused member.
TEST(JsonReaderTest, ReadsOrRefusesNamingTheMember) {
  Json j = ParseJson(R"({"s": "x", "n": null, "i": -3, "big": 4294967296, "u": 7,
      "neg": -1, "b": true, "o": {"k": 1}, "a": [1], "ao": [{}, 2], "ss": ["p", "q"],
      "sn": ["p", 3], "f": 1.5})")
               .value();
  JsonReader r(j, "reports[2]");
  std::optional<std::string> s;
  EXPECT_TRUE(r.String("s", &s).ok());
  EXPECT_EQ(s, "x");
  std::string keep = "kept";
  EXPECT_TRUE(r.String("n", &keep).ok());
  EXPECT_TRUE(r.String("absent", &keep).ok());
  EXPECT_EQ(keep, "kept");
  EXPECT_EQ(r.String("i", &keep).message(), "reports[2].i: must be a string or null");
  std::optional<int> i;
  EXPECT_TRUE(r.Int("i", &i).ok());
  EXPECT_EQ(i, -3);
  EXPECT_EQ(r.Int("big", &i).message(), "reports[2].big: must fit in 32 bits");
  EXPECT_EQ(r.Int("f", &i).message(), "reports[2].f: must be an integer or null");
  EXPECT_EQ(i, -3);
  int64_t big = 0;
  EXPECT_TRUE(r.Int64("big", &big).ok());
  EXPECT_EQ(big, 4294967296);
  std::optional<int64_t> count;
  EXPECT_EQ(r.Count("neg", &count).message(), "reports[2].neg: must be a non-negative integer");
  EXPECT_FALSE(count.has_value());
  uint64_t u = 0;
  EXPECT_TRUE(r.Unsigned("u", &u).ok());
  EXPECT_EQ(u, 7u);
  EXPECT_EQ(r.Unsigned("neg", &u).code(), StatusCode::kInvalidArgument);
  std::optional<bool> b;
  EXPECT_TRUE(r.Bool("b", &b).ok());
  EXPECT_EQ(b, true);
  Json o;
  EXPECT_TRUE(r.Object("o", &o).ok());
  EXPECT_EQ(o["k"], 1);
  EXPECT_EQ(r.Object("a", &o).message(), "reports[2].a: must be an object");
  EXPECT_EQ(r.SmallObject("o", 4, &o).message(),
            "reports[2].o: must be an object (at most 4 bytes)");
  EXPECT_EQ(r.SmallObject("n", 4096, &o).code(), StatusCode::kInvalidArgument);  // null refused
  EXPECT_EQ(r.ArrayOfObjects("ao", &o).message(), "reports[2].ao[1]: must be an object");
  std::vector<std::string> ss;
  EXPECT_TRUE(r.Strings("ss", &ss).ok());
  EXPECT_EQ(ss, (std::vector<std::string>{"p", "q"}));
  EXPECT_EQ(r.Strings("sn", &ss).message(), "reports[2].sn[1]: must be a string");
  // A body's reader names members bare.
  EXPECT_EQ(JsonReader(j).Bool("s", &b).message(), "s: must be a boolean");
}

TEST(Sha256Test, KnownVector) {
  EXPECT_EQ(Sha256Hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  auto d = DigestFromHex(Sha256Hex("abc"));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(ToHex(*d), Sha256Hex("abc"));
}

TEST(Sha256Test, TwoPartsHashLikeTheirConcatenation) {
  EXPECT_EQ(ToHex(Sha256Of("ab", "c")), Sha256Hex("abc"));
  EXPECT_EQ(ToHex(Sha256Of("", "")), Sha256Hex(""));
  // Sizes around SHA-256's 64-byte block, each split at every place: the per-thread
  // context must start afresh each time.
  for (size_t n : {0, 1, 55, 56, 63, 64, 65, 200}) {
    std::string s(n, 'x');
    for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + i % 26);
    for (size_t cut = 0; cut <= n; ++cut) {
      ASSERT_EQ(Sha256Of(std::string_view(s).substr(0, cut), std::string_view(s).substr(cut)),
                Sha256Of(s))
          << n << " bytes cut at " << cut;
    }
  }
  Sha256 h;
  h.Update("a");
  h.Update("bc");
  EXPECT_EQ(ToHex(h.Finish()), Sha256Hex("abc"));
}

TEST(IdsTest, NamesAndIds) {
  EXPECT_TRUE(IsValidName("train"));
  EXPECT_TRUE(IsValidName("data-prep_2"));
  EXPECT_FALSE(IsValidName("Train"));
  EXPECT_FALSE(IsValidName("-x"));
  EXPECT_FALSE(IsValidName("a b"));
  EXPECT_FALSE(IsValidName(""));
  RandomIdGenerator gen;
  std::string a = gen.NewId("r", FromMicros(0)), b = gen.NewId("r", FromMicros(0));
  EXPECT_NE(a, b);
  EXPECT_EQ(a.substr(0, 17), "r19700101t000000-");
  EXPECT_TRUE(IsValidName(a));
}

TEST(FilesTest, DurableWritesReplaceAtomically) {
  char tmpl[] = "/tmp/epoch-files-test.XXXXXX";
  std::string dir = mkdtemp(tmpl);
  ASSERT_TRUE(MakeDirs(dir + "/a/b").ok());
  ASSERT_TRUE(WriteFileDurably(dir + "/a/b/one", "1").ok());
  ASSERT_TRUE(WriteFilesDurably({{dir + "/a/b/one", "uno"}, {dir + "/a/two", "dos"},
                                 {dir + "/a/b/three", "tres"}})
                  .ok());
  EXPECT_EQ(*ReadFile(dir + "/a/b/one"), "uno");
  EXPECT_EQ(*ReadFile(dir + "/a/two"), "dos");
  EXPECT_EQ(*ReadFile(dir + "/a/b/three"), "tres");
  auto names = ListFiles(dir + "/a/b");
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"one", "three"}));  // no temporaries left
  EXPECT_EQ(ReadFile(dir + "/nope").status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(WriteFilesDurably({{dir + "/missing/x", "1"}, {dir + "/a/y", "2"}}).ok());
  std::string cmd = "rm -rf " + dir;
  ASSERT_EQ(std::system(cmd.c_str()), 0);
}

TEST(FilesTest, NormalizePathResolvesDotsLexically) {
  EXPECT_EQ(*NormalizePath("/a/./b//c/../d/"), "/a/b/d");
  EXPECT_EQ(*NormalizePath("/"), "/");
  EXPECT_EQ(NormalizePath("/..").status().code(), StatusCode::kInvalidArgument);
}

TEST(FilesTest, NormalizePathRefusesRelativeAndEscapingPaths) {
  EXPECT_EQ(NormalizePath("a/b").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(NormalizePath("").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(NormalizePath("/a/../../etc").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(NormalizePath(std::string("/a\0b", 4)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(IsBeneath("/a/b", "/a"));
  EXPECT_TRUE(IsBeneath("/a", "/a"));
  EXPECT_FALSE(IsBeneath("/ab", "/a"));
  EXPECT_FALSE(IsBeneath("/a", "/a/b"));
  EXPECT_TRUE(IsBeneath("/x", "/"));
}

TEST(FilesTest, OpenBeneathKeepsSymlinksAndDotsInsideTheRoot) {
  char tmpl[] = "/tmp/epoch-beneath-test.XXXXXX";
  std::string dir = mkdtemp(tmpl);
  ASSERT_TRUE(MakeDirs(dir + "/root/sub").ok());
  ASSERT_TRUE(WriteFileDurably(dir + "/root/sub/in", "inside").ok());
  ASSERT_TRUE(WriteFileDurably(dir + "/secret", "outside").ok());
  ASSERT_EQ(symlink((dir + "/secret").c_str(), (dir + "/root/escape").c_str()), 0);
  ASSERT_EQ(symlink("../secret", (dir + "/root/relative").c_str()), 0);
  ASSERT_EQ(symlink("sub/in", (dir + "/root/inner").c_str()), 0);
  std::string root = dir + "/root";
  auto read_all = [](const UniqueFd& fd) {
    char buf[64];
    ssize_t n = read(fd.get(), buf, sizeof(buf));
    return std::string(buf, n > 0 ? static_cast<size_t>(n) : 0);
  };
  auto in = OpenBeneath(root, root + "/sub/in");
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  EXPECT_EQ(read_all(*in), "inside");
  auto inner = OpenBeneath(root, root + "/inner");  // a symlink that stays inside
  ASSERT_TRUE(inner.ok()) << inner.status().ToString();
  EXPECT_EQ(read_all(*inner), "inside");
  for (const char* name : {"/escape", "/relative"}) {
    auto out = OpenBeneath(root, root + name);
    EXPECT_FALSE(out.ok()) << name << " was opened";
  }
  EXPECT_EQ(OpenBeneath(root, dir + "/secret").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(OpenBeneath(root, root + "/nope").status().code(), StatusCode::kNotFound);
  std::string cmd = "rm -rf " + dir;
  ASSERT_EQ(std::system(cmd.c_str()), 0);
}

// A step owns runs/a/s and can swap any of its folders for a link; walking or
// removing what it wrote must never reach behind the link (another run's folder).
TEST(FilesTest, TreeWalksBeneathARootFollowNoLink) {
  char tmpl[] = "/tmp/epoch-tree-test.XXXXXX";
  std::string root = mkdtemp(tmpl);
  auto write = [&](const std::string& rel, size_t n) {
    ASSERT_TRUE(MakeDirs(root + "/" + rel.substr(0, rel.find_last_of('/'))).ok());
    ASSERT_TRUE(WriteFileDurably(root + "/" + rel, std::string(n, 'x')).ok());
  };
  write("runs/b/s/1/outputs/model.pt", 100);  // another tenant's
  write("runs/a/s/1/outputs/out.txt", 7);
  write("runs/a/s/1/metrics.ndjson", 3);
  write("runs/a/t/1/outputs/x", 5);
  ASSERT_EQ(symlink((root + "/runs/b/s/1/outputs/model.pt").c_str(),
                    (root + "/runs/a/s/1/outputs/steal").c_str()),
            0);  // a link inside the tree
  ASSERT_EQ(symlink((root + "/runs/b").c_str(), (root + "/runs/a/u").c_str()), 0);
  ASSERT_TRUE(MakeDirs(root + "/runs/a/v/1/empty/deeper").ok());

  auto st = StatTreeBeneath(root, root + "/runs/a/s");
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  EXPECT_TRUE(st->present);
  EXPECT_EQ(st->bytes, 10) << "the link inside counts as nothing";
  // runs/a/u is a link to runs/b: nothing is beneath it, and it is there as a link.
  auto behind = StatTreeBeneath(root, root + "/runs/a/u/s/1");
  ASSERT_TRUE(behind.ok());
  EXPECT_FALSE(behind->present);
  EXPECT_EQ(behind->bytes, 0);
  auto link = StatTreeBeneath(root, root + "/runs/a/u");
  ASSERT_TRUE(link.ok());
  EXPECT_TRUE(link->present);
  EXPECT_EQ(link->bytes, 0);
  EXPECT_EQ(StatTreeBeneath(root, root + "/../etc").status().code(), StatusCode::kInvalidArgument);

  auto gone = RemoveTreeBeneath(root, root + "/runs/a/u/s/1");  // through the link: nothing
  ASSERT_TRUE(gone.ok()) << gone.status().ToString();
  EXPECT_EQ(gone->bytes, 0);
  EXPECT_FALSE(gone->present);
  EXPECT_TRUE(PathExists(root + "/runs/b/s/1/outputs/model.pt"));
  auto removed = RemoveTreeBeneath(root, root + "/runs/a/s");
  ASSERT_TRUE(removed.ok()) << removed.status().ToString();
  EXPECT_EQ(removed->bytes, 10);
  EXPECT_TRUE(removed->present);
  EXPECT_FALSE(PathExists(root + "/runs/a/s"));
  EXPECT_TRUE(PathExists(root + "/runs/b/s/1/outputs/model.pt")) << "the link went, not its target";
  auto unlinked = RemoveTreeBeneath(root, root + "/runs/a/u");  // the link itself
  ASSERT_TRUE(unlinked.ok());
  EXPECT_EQ(unlinked->bytes, 0);
  EXPECT_TRUE(unlinked->present);
  EXPECT_FALSE(PathExists(root + "/runs/a/u"));
  EXPECT_TRUE(PathExists(root + "/runs/b/s/1/outputs/model.pt"));
  auto again = RemoveTreeBeneath(root, root + "/runs/a/s");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->bytes, 0);
  EXPECT_FALSE(again->present);

  // Pruning removes empty folders only: runs/a/v goes, runs/a/t keeps its file.
  ASSERT_TRUE(RemoveEmptyDirsBeneath(root, root + "/runs/a").ok());
  EXPECT_FALSE(PathExists(root + "/runs/a/v"));
  EXPECT_TRUE(PathExists(root + "/runs/a/t/1/outputs/x"));
  ASSERT_TRUE(RemoveTreeBeneath(root, root + "/runs/a/t").ok());
  ASSERT_TRUE(RemoveEmptyDirsBeneath(root, root + "/runs/a").ok());
  EXPECT_FALSE(PathExists(root + "/runs/a"));
  EXPECT_TRUE(PathExists(root + "/runs/b/s/1/outputs/model.pt"));

  // A tree deeper than the walk's limit is refused, not followed to the end.
  std::string deep = root + "/runs/c";
  for (int i = 0; i < 300; ++i) deep += "/d";
  ASSERT_TRUE(MakeDirs(deep).ok());
  auto too_deep = RemoveTreeBeneath(root, root + "/runs/c");
  EXPECT_EQ(too_deep.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(too_deep.status().message().find("folders deep"), std::string::npos);
  std::string cmd = "rm -rf " + root;
  ASSERT_EQ(std::system(cmd.c_str()), 0);
}

TEST(IdsTest, SecureRandomHexIsHexOfTheAskedLengthAndDiffers) {
  std::string a = SecureRandomHex(32), b = SecureRandomHex(32);
  EXPECT_EQ(a.size(), 64u);
  EXPECT_EQ(a.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_NE(a, b);
}

}  // namespace
}  // namespace epoch

namespace epoch {
namespace {

// Whether fd is an open descriptor of this process.
bool IsOpen(int fd) { return fcntl(fd, F_GETFD) != -1; }

TEST(UniqueFdTest, ClosesOnceWhenItsOwnerGoes) {
  int raw = open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(raw, 0);
  {
    UniqueFd fd(raw);
    EXPECT_TRUE(fd.valid());
    EXPECT_EQ(fd.get(), raw);
    UniqueFd moved(std::move(fd));
    EXPECT_FALSE(fd.valid());  // NOLINT(bugprone-use-after-move): the point of the test
    EXPECT_EQ(moved.get(), raw);
    EXPECT_TRUE(IsOpen(raw));
  }
  EXPECT_FALSE(IsOpen(raw));
}

TEST(UniqueFdTest, ReleaseHandsItOverAndResetClosesTheOld) {
  int a = open("/dev/null", O_RDONLY | O_CLOEXEC);
  int b = open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  UniqueFd fd(a);
  fd.reset(b);
  EXPECT_FALSE(IsOpen(a));
  EXPECT_EQ(fd.get(), b);
  int kept = fd.release();
  EXPECT_EQ(kept, b);
  EXPECT_FALSE(fd.valid());
  EXPECT_TRUE(IsOpen(b));
  UniqueFd again(kept);
  EXPECT_EQ(again.Close(), 0);
  EXPECT_FALSE(IsOpen(b));
  EXPECT_EQ(again.Close(), 0);  // nothing left to close
}

TEST(ClockTest, AManualClockCallsItsSubscribersOnEveryMoveUntilUnsubscribed) {
  ManualClock clock(FromMicros(1000));
  int a = 0, b = 0;
  uint64_t ia = clock.Subscribe([&] { ++a; });
  uint64_t ib = clock.Subscribe([&] { ++b; });
  EXPECT_NE(ia, ib);
  EXPECT_TRUE(clock.Manual());
  clock.Advance(Micros(5));
  clock.Set(FromMicros(2000));
  EXPECT_EQ(a, 2);
  EXPECT_EQ(b, 2);
  clock.Unsubscribe(ia);
  clock.Advance(Micros(1));
  EXPECT_EQ(a, 2);
  EXPECT_EQ(b, 3);
  EXPECT_EQ(clock.Now(), FromMicros(2001));
  SystemClock real;  // follows the real clock: nothing to subscribe to
  EXPECT_FALSE(real.Manual());
  EXPECT_EQ(real.Subscribe([&] { ++a; }), 0u);
}

// ---- field lists (common/fields.h) ----

struct Inner {
  int rank = 0;
  Json gpus = Json::array();
  static constexpr auto Fields() {
    return std::tuple{fields::F("rank", &Inner::rank), fields::Arr("gpus", &Inner::gpus)};
  }
};

struct Outer {
  std::string name{};
  uint64_t epoch = 0;
  int64_t bytes = 0;
  bool on = false;
  double ratio = 0;
  Json env = Json::object();
  std::vector<std::string> argv{};
  std::optional<int> exit_code{};
  std::optional<std::vector<Inner>> ranks{};
  Inner first{};
  static constexpr auto Fields() {
    return std::tuple{fields::F("name", &Outer::name),   fields::F("epoch", &Outer::epoch),
                      fields::F("bytes", &Outer::bytes), fields::F("on", &Outer::on),
                      fields::F("ratio", &Outer::ratio), fields::Obj("env", &Outer::env),
                      fields::F("argv", &Outer::argv),   fields::F("exit_code", &Outer::exit_code),
                      fields::F("ranks", &Outer::ranks), fields::F("first", &Outer::first)};
  }
};

Json GoodOuter() {
  return Json{{"name", "n"},
              {"epoch", 3},
              {"bytes", -5},
              {"on", true},
              {"ratio", 0.5},
              {"env", {{"A", "1"}}},
              {"argv", {"sh", "-c"}},
              {"ranks", Json::array({Json{{"rank", 0}, {"gpus", Json::array({"0"})}},
                                     Json{{"rank", 1}, {"gpus", Json::array()}}})},
              {"first", Json{{"rank", 0}, {"gpus", Json::array()}}},
              {"unknown", "ignored"}};
}

TEST(FieldsTest, DecodesEveryMemberKindAndEncodesBackWithoutEmptyOptionals) {
  Outer o;
  std::string err;
  ASSERT_TRUE(fields::Decode(GoodOuter(), &o, &err)) << err;
  EXPECT_EQ(o.name, "n");
  EXPECT_EQ(o.epoch, 3u);
  EXPECT_EQ(o.bytes, -5);
  EXPECT_TRUE(o.on);
  EXPECT_DOUBLE_EQ(o.ratio, 0.5);
  EXPECT_EQ(o.env["A"], "1");
  EXPECT_EQ(o.argv, (std::vector<std::string>{"sh", "-c"}));
  EXPECT_FALSE(o.exit_code.has_value());
  ASSERT_TRUE(o.ranks.has_value());
  ASSERT_EQ(o.ranks->size(), 2u);
  EXPECT_EQ((*o.ranks)[1].rank, 1);
  EXPECT_EQ((*o.ranks)[0].gpus, Json::array({"0"}));
  Json back = fields::Encode(o);
  Json want = GoodOuter();
  want.erase("unknown");
  EXPECT_EQ(back, want);  // exit_code (empty) is left out, not written as null
  o.exit_code = 0;
  EXPECT_EQ(fields::Encode(o)["exit_code"], 0);
}

TEST(FieldsTest, RefusesNamingThePathOfTheMissingOrMistypedField) {
  struct Case {
    std::function<void(Json&)> mutate;
    std::string error;
  };
  std::vector<Case> cases = {
      {[](Json& j) { j.erase("name"); }, "name: missing"},
      {[](Json& j) { j["name"] = 5; }, "name: expected a string, got integer"},
      {[](Json& j) { j["epoch"] = -1; }, "epoch: -1 is negative"},
      {[](Json& j) { j["epoch"] = 1.5; }, "epoch: expected an integer, got number"},
      {[](Json& j) { j["bytes"] = "12"; }, "bytes: expected an integer, got string"},
      {[](Json& j) { j["on"] = 1; }, "on: expected a boolean, got integer"},
      {[](Json& j) { j["ratio"] = "x"; }, "ratio: expected a number, got string"},
      {[](Json& j) { j["env"] = Json::array(); }, "env: expected an object, got array"},
      {[](Json& j) { j["argv"][1] = false; }, "argv[1]: expected a string, got boolean"},
      {[](Json& j) { j["exit_code"] = "0"; }, "exit_code: expected an integer, got string"},
      {[](Json& j) { j["exit_code"] = 4294967296LL; }, "exit_code: 4294967296 is out of range"},
      {[](Json& j) { j["ranks"][1]["rank"] = "1"; },
       "ranks[1].rank: expected an integer, got string"},
      {[](Json& j) { j["ranks"][0]["gpus"] = Json::object(); },
       "ranks[0].gpus: expected an array, got object"},
      {[](Json& j) { j["first"].erase("rank"); }, "first.rank: missing"},
      {[](Json& j) { j["first"] = nullptr; }, "first: expected an object, got null"},
  };
  for (const auto& c : cases) {
    Json j = GoodOuter();
    c.mutate(j);
    Outer o;
    std::string err;
    EXPECT_FALSE(fields::Decode(j, &o, &err)) << c.error;
    EXPECT_EQ(err, c.error);
  }
  // null is an empty optional, not an error.
  Json j = GoodOuter();
  j["exit_code"] = nullptr;
  j["ranks"] = nullptr;
  Outer o;
  std::string err;
  EXPECT_TRUE(fields::Decode(j, &o, &err)) << err;
  EXPECT_FALSE(o.ranks.has_value());
}

// DecodeText against what it stands for: ParseJson, then Decode. Where it decodes, the
// struct must be the same; where it gives up, the caller takes that path anyway.
bool SlowDecode(std::string_view text, Outer* o, int max_depth = 64) {
  auto j = ParseJson(text, max_depth);
  std::string err;
  return j.ok() && fields::Decode(*j, o, &err);
}

TEST(FieldsTest, DecodeTextGivesWhatParseAndDecodeGive) {
  const std::vector<std::string> texts = {
      GoodOuter().dump(),
      GoodOuter().dump(2),  // whitespace everywhere
      R"({"name":"tab\there \"q\" back\\slash\/ \b\f\n\r","epoch":18446744073709551615,)"
      R"("bytes":-9223372036854775808,"on":false,"ratio":-1.5e-3,"env":{"k":[1,{"x":null}]},)"
      R"("argv":[],"exit_code":-2147483648,"ranks":null,"first":{"gpus":["0","1"],"rank":-0},)"
      R"("extra":{"deep":[[[]]],"s":"}]"}})",
      "{\"name\":\"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80\",\"epoch\":0,\"bytes\":0,"
      "\"on\":true,\"ratio\":2,\"env\":{},\"argv\":[\"a\"],\"first\":{\"rank\":1,"
      "\"gpus\":[]}} \n",
  };
  for (const auto& text : texts) {
    Outer fast, slow;
    ASSERT_TRUE(fields::DecodeText(text, &fast)) << text;
    ASSERT_TRUE(SlowDecode(text, &slow)) << text;
    EXPECT_EQ(fields::Encode(fast), fields::Encode(slow)) << text;
  }
  // Every refused mutation of the refusal test is given up on.
  Json good = GoodOuter();
  for (auto mutate : std::vector<std::function<void(Json&)>>{
           [](Json& j) { j.erase("name"); }, [](Json& j) { j["name"] = 5; },
           [](Json& j) { j["epoch"] = -1; }, [](Json& j) { j["epoch"] = 1.5; },
           [](Json& j) { j["on"] = 1; }, [](Json& j) { j["ratio"] = "x"; },
           [](Json& j) { j["env"] = Json::array(); }, [](Json& j) { j["argv"][1] = false; },
           [](Json& j) { j["exit_code"] = 4294967296LL; },
           [](Json& j) { j["ranks"][0]["gpus"] = Json::object(); },
           [](Json& j) { j["first"] = nullptr; }}) {
    Json j = good;
    mutate(j);
    Outer o;
    EXPECT_FALSE(fields::DecodeText(j.dump(), &o)) << j.dump();
  }
  // What it leaves to Json although Json decodes it: a Unicode escape, a key twice
  // (Json keeps the last).
  Json nameless = good;
  nameless.erase("name");
  const std::string rest = nameless.dump().replace(0, 1, ",");
  for (const auto& [head, name] : std::vector<std::pair<std::string, std::string>>{
           {R"({"name":"\u00e9")", "\xC3\xA9"}, {R"({"name":"a","name":"b")", "b"}}) {
    const std::string text = head + rest;
    Outer fast, slow;
    EXPECT_FALSE(fields::DecodeText(text, &fast)) << text;
    ASSERT_TRUE(SlowDecode(text, &slow)) << text;
    EXPECT_EQ(slow.name, name) << text;
  }
  // Not JSON: an unclosed document, text after it, a control character, bad UTF-8,
  // a leading zero, a byte order mark inside.
  for (std::string text :
       {good.dump().substr(1), good.dump() + "x", good.dump() + "}",
        std::string(R"({"name":"a\x01b")"), std::string("{\"name\":\"\xC3(\"")}) {
    Outer o;
    EXPECT_FALSE(fields::DecodeText(text, &o)) << text;
  }
  std::string zero = good.dump();
  zero.replace(zero.find("\"epoch\":3"), 9, "\"epoch\":03");
  std::string bom = good.dump();
  bom.replace(bom.find("\"ratio\":0.5"), 11,
              "\"ratio\":\xEF\xBB\xBF"
              "0.5");
  for (const auto& text : {zero, bom}) {
    Outer fast, slow;
    EXPECT_FALSE(fields::DecodeText(text, &fast)) << text;
    EXPECT_FALSE(SlowDecode(text, &slow)) << text;
  }
}

TEST(FieldsTest, DecodeTextKeepsTheDepthLimit) {
  // ParseJson's max_depth counts objects and arrays open at once, the document's own
  // object being the first. DecodeText takes a text only where ParseJson would.
  auto agree = [](const std::string& text, int max_depth, bool want) {
    Outer fast, slow;
    EXPECT_EQ(SlowDecode(text, &slow, max_depth), want) << max_depth << " " << text;
    EXPECT_EQ(fields::DecodeText(text, &fast, max_depth), want) << max_depth << " " << text;
  };
  // GoodOuter is 4 deep: the document, ranks, a rank (a nested struct), its gpus.
  agree(GoodOuter().dump(), 4, true);
  agree(GoodOuter().dump(), 3, false);
  // Without ranks, 3 deep: first (a struct) holds gpus, env (a Json member) holds an array.
  Json j = GoodOuter();
  j.erase("ranks");
  agree(j.dump(), 3, true);
  agree(j.dump(), 2, false);
  j["first"]["gpus"] = Json::array({Json::array()});  // a Json member's array, 4 deep
  agree(j.dump(), 4, true);
  agree(j.dump(), 3, false);
  j["first"]["gpus"] = Json::array();
  j["env"]["A"] = Json::array({Json::array()});  // 4 deep inside a Json object member
  agree(j.dump(), 4, true);
  agree(j.dump(), 3, false);
  j["env"]["A"] = "1";
  j["unknown"] = Json::array({Json::array({Json::object()})});  // an ignored member, 4 deep
  agree(j.dump(), 4, true);
  agree(j.dump(), 3, false);
  j["unknown"] = "ignored";
  j["argv"] = Json::array();  // a vector member: 2 deep, as first is 3
  agree(j.dump(), 3, true);
  agree(j.dump(), 1, false);
}

// The type of every number in j and below (Json's == does not tell an unsigned 0
// from a signed one).
std::string NumberKinds(const Json& j) {
  if (j.is_structured()) {
    std::string out;
    for (const auto& x : j) out += NumberKinds(x);
    return out;
  }
  return j.is_number_unsigned() ? "u" : j.is_number_integer() ? "i" : j.is_number() ? "f" : "";
}

TEST(FieldsTest, DecodeTextBuildsJsonMembersAsTheParserDoes) {
  // env (a Json object member): built directly where simple, else parsed.
  for (const std::string env :
       {R"({})", R"({ })", R"({"a":"b","n":-0,"u":0,"big":18446744073709551615})",
        R"({"neg":-9223372036854775808,"nested":[[],{},[1,[true,false,null]]]})",
        R"({"k":1,"k":[2]})",                             // a key twice: the last
        R"({"f":1.5,"e":1e3,"x":-9223372036854775809})",  // floats: parsed
        R"({"u":"\u00e9","t":"tab\tq\"","s":"cafÃ©"})", " {\n \"a\" : [ 1 , 2 ] \t} "}) {
    Json good = GoodOuter();
    good.erase("env");
    std::string text = good.dump();
    text.insert(1, "\"env\":" + env + ",");
    Outer fast, slow;
    ASSERT_TRUE(fields::DecodeText(text, &fast)) << text;
    ASSERT_TRUE(SlowDecode(text, &slow)) << text;
    EXPECT_EQ(fast.env, slow.env) << text;
    EXPECT_EQ(fast.env.dump(), slow.env.dump()) << text;
    EXPECT_EQ(NumberKinds(fast.env), NumberKinds(slow.env)) << text;
  }
  // What neither takes: a leading zero, a trailing comma, a bare word, bad UTF-8.
  for (const std::string env : {R"({"a":01})", R"({"a":1,})", R"([1,])", R"({"a":nul})",
                                "{\"a\":\"\xC3(\"}", R"({"a" 1})"}) {
    Json good = GoodOuter();
    good.erase("env");
    std::string text = good.dump();
    text.insert(1, "\"env\":" + env + ",");
    Outer fast, slow;
    EXPECT_FALSE(fields::DecodeText(text, &fast)) << text;
    EXPECT_FALSE(SlowDecode(text, &slow)) << text;
  }
}

TEST(FieldsTest, DecodeTextOfMutatedTextIsParseAndDecodeOrGivesUp) {
  // Single-byte edits of a good text (deterministic): wherever DecodeText decodes
  // one, parsing and decoding it gives the same struct.
  const std::string base = GoodOuter().dump();
  const std::string palette = "{}[]\",:\\ -+.0123456789eEtruefalsn\x01\x7F\xC3\xA9\xFF";
  uint64_t seed = 42;
  auto next = [&] {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    return seed >> 33;
  };
  int decoded = 0, checked = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string text = base;
    for (uint64_t edits = 1 + next() % 2; edits > 0; --edits) {
      size_t at = next() % text.size();
      char c = palette[next() % palette.size()];
      switch (next() % 3) {
        case 0: text[at] = c; break;
        case 1: text.insert(at, 1, c); break;
        default: text.erase(at, 1);
      }
    }
    // At the default limit, and at GoodOuter's own depth and one below it.
    for (int max_depth : {3, 4}) {
      Outer fast, slow;
      if (!fields::DecodeText(text, &fast, max_depth)) continue;
      ASSERT_TRUE(SlowDecode(text, &slow, max_depth)) << max_depth << " " << text;
      ASSERT_EQ(fields::Encode(fast), fields::Encode(slow)) << text;
      ASSERT_EQ(NumberKinds(fields::Encode(fast)), NumberKinds(fields::Encode(slow))) << text;
    }
    Outer fast, slow;
    if (!fields::DecodeText(text, &fast)) continue;
    ++decoded;
    ASSERT_TRUE(SlowDecode(text, &slow)) << text;
    ASSERT_EQ(fields::Encode(fast), fields::Encode(slow)) << text;
    ASSERT_EQ(NumberKinds(fields::Encode(fast)), NumberKinds(fields::Encode(slow))) << text;
    ++checked;
  }
  EXPECT_GT(decoded, 1000);  // the edits inside strings and numbers still decode
  EXPECT_EQ(checked, decoded);
}

}  // namespace
}  // namespace epoch
