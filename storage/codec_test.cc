#include "storage/codec.h"

#include <gtest/gtest.h>

#include <string>

#include "common/sha256.h"

namespace epoch::storage::codec {
namespace {

Envelope Sample(uint64_t position) {
  Envelope env;
  env.position = position;
  env.stream = "run-r1";
  env.version = 3;
  env.type = "JobSucceeded";
  env.schema = 2;
  env.time = "2026-11-28T13:38:40.123456Z";
  env.epoch = 7;
  env.actor = "container-c9";
  env.data = std::string("{\"exit_code\":0}\0binary\xff", 24);
  env.prev_hash = Sha256Hex("previous");
  return env;
}

TEST(CodecTest, FixedIntsAreBigEndianAndRoundTrip) {
  std::string s;
  PutFixed64(&s, 0x0102030405060708ull);
  ASSERT_EQ(s.size(), 8u);
  EXPECT_EQ(static_cast<uint8_t>(s[0]), 0x01);
  EXPECT_EQ(static_cast<uint8_t>(s[7]), 0x08);
  EXPECT_EQ(DecodeFixed64(s.data()), 0x0102030405060708ull);
  std::string t;
  PutFixed32(&t, 0xdeadbeef);
  EXPECT_EQ(DecodeFixed32(t.data()), 0xdeadbeefu);
  // Keys sort numerically.
  EXPECT_LT(EventKey(2), EventKey(10));
  EXPECT_LT(EventKey(255), EventKey(256));
  ASSERT_TRUE(DecodePositionKey(EventKey(42)).ok());
  EXPECT_EQ(*DecodePositionKey(EventKey(42)), 42u);
  EXPECT_EQ(DecodePositionKey("short").status().code(), StatusCode::kCorruption);
}

TEST(CodecTest, StreamKeysSortByStreamThenVersion) {
  EXPECT_LT(StreamKey("a", 2), StreamKey("a", 10));
  EXPECT_LT(StreamKey("a", std::numeric_limits<uint64_t>::max()), StreamKey("ab", 1));
  std::string stream;
  uint64_t version = 0;
  ASSERT_TRUE(DecodeStreamKey(StreamKey("run-x", 77), &stream, &version).ok());
  EXPECT_EQ(stream, "run-x");
  EXPECT_EQ(version, 77u);
  EXPECT_EQ(IdempotencyKey("t1", "k"), std::string("t1\0k", 4));
  EXPECT_EQ(ValidateName("stream", std::string("a\0b", 3)).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateName("stream", "").code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidateName("tenant", "", /*allow_empty=*/true).ok());
}

TEST(CodecTest, EnvelopeRoundTrip) {
  Envelope in = Sample(42);
  std::string value;
  Digest hash{};
  ASSERT_TRUE(EncodeEvent(in, &value, &hash).ok());
  Envelope out;
  Digest raw_hash{}, raw_prev{};
  Status st = DecodeEvent(42, value, &out, &raw_hash, &raw_prev);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(out.position, 42u);
  EXPECT_EQ(out.stream, in.stream);
  EXPECT_EQ(out.version, in.version);
  EXPECT_EQ(out.type, in.type);
  EXPECT_EQ(out.schema, in.schema);
  EXPECT_EQ(out.time, in.time);
  EXPECT_EQ(out.epoch, in.epoch);
  EXPECT_EQ(out.actor, in.actor);
  EXPECT_EQ(out.data, in.data);
  EXPECT_EQ(out.prev_hash, in.prev_hash);
  EXPECT_EQ(out.hash, ToHex(hash));
  EXPECT_EQ(raw_hash, hash);
  EXPECT_EQ(ToHex(raw_prev), in.prev_hash);
}

TEST(CodecTest, DecodeEventFieldsViewsTheValueWithRawDigests) {
  Envelope in = Sample(42);
  std::string value;
  Digest hash{};
  ASSERT_TRUE(EncodeEvent(in, &value, &hash).ok());
  EventFields f;
  Status st = DecodeEventFields(42, value, &f);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(f.stream, "run-r1");
  EXPECT_EQ(f.version, 3u);
  EXPECT_EQ(f.type, "JobSucceeded");
  EXPECT_EQ(f.schema, 2u);
  EXPECT_EQ(f.time, "2026-11-28T13:38:40.123456Z");
  EXPECT_EQ(f.epoch, 7u);
  EXPECT_EQ(f.actor, "container-c9");
  EXPECT_EQ(f.data, in.data);  // NUL and 0xff bytes included
  EXPECT_EQ(f.hash, hash);
  EXPECT_EQ(f.prev_hash, Sha256Of("previous"));
  // Views into the value, not copies: the data ends where the prev_hash begins.
  EXPECT_EQ(f.data.data() + f.data.size(), value.data() + value.size() - 64);
  EXPECT_EQ(f.stream.data(), value.data() + 1 + 4);
  // DecodeEvent is the same decode, with hex hashes.
  Envelope out;
  ASSERT_TRUE(DecodeEvent(42, value, &out).ok());
  EXPECT_EQ(out.hash, ToHex(f.hash));
  EXPECT_EQ(out.prev_hash, ToHex(f.prev_hash));
  // A decode into an Envelope that held another event overwrites every field.
  Envelope reused = Sample(1);
  reused.data = std::string(1000, 'x');
  reused.hash = "stale";
  ASSERT_TRUE(DecodeEvent(42, value, &reused).ok());
  EXPECT_EQ(reused.position, 42u);
  EXPECT_EQ(reused.data, in.data);
  EXPECT_EQ(reused.hash, ToHex(hash));
}

TEST(CodecTest, HashIsSha256OfPositionAndFields) {
  Envelope in = Sample(9);
  std::string expected_input;
  PutFixed64(&expected_input, 9);
  PutLengthPrefixed(&expected_input, in.stream);
  PutFixed64(&expected_input, in.version);
  PutLengthPrefixed(&expected_input, in.type);
  PutFixed32(&expected_input, in.schema);
  PutLengthPrefixed(&expected_input, in.time);
  PutFixed64(&expected_input, in.epoch);
  PutLengthPrefixed(&expected_input, in.actor);
  PutLengthPrefixed(&expected_input, in.data);
  Digest prev = *DigestFromHex(in.prev_hash);
  expected_input.append(reinterpret_cast<const char*>(prev.data()), prev.size());

  std::string value;
  Digest hash{};
  ASSERT_TRUE(EncodeEvent(in, &value, &hash).ok());
  EXPECT_EQ(ToHex(hash), Sha256Hex(expected_input));
  // value = format byte, the hashed fields, then the hash.
  EXPECT_EQ(value.size(), 1 + (expected_input.size() - 8) + 32);
  EXPECT_EQ(static_cast<uint8_t>(value[0]), kEnvelopeFormatV1);
  EXPECT_EQ(value.substr(1, expected_input.size() - 8), expected_input.substr(8));

  // The same fields at another position hash differently (position is covered).
  Envelope moved = in;
  moved.position = 10;
  std::string value2;
  Digest hash2{};
  ASSERT_TRUE(EncodeEvent(moved, &value2, &hash2).ok());
  EXPECT_NE(hash, hash2);
  Envelope out;
  Status st = DecodeEvent(10, value, &out);
  EXPECT_EQ(st.code(), StatusCode::kCorruption);
  EXPECT_EQ(st.message(), "event 10: hash mismatch");
}

TEST(CodecTest, EveryFlippedByteIsCorruption) {
  std::string value;
  Digest hash{};
  ASSERT_TRUE(EncodeEvent(Sample(7), &value, &hash).ok());
  for (size_t i = 0; i < value.size(); ++i) {
    std::string bad = value;
    bad[i] = static_cast<char>(bad[i] ^ 0x01);
    Envelope out;
    Status st = DecodeEvent(7, bad, &out);
    ASSERT_EQ(st.code(), StatusCode::kCorruption) << "byte " << i;
    EXPECT_EQ(st.message().rfind("event 7: ", 0), 0u) << st.message();
    EventFields f;
    Status fs = DecodeEventFields(7, bad, &f);
    EXPECT_EQ(fs.code(), StatusCode::kCorruption) << "byte " << i;
    EXPECT_EQ(fs.message(), st.message()) << "byte " << i;
  }
  Envelope out;
  EXPECT_EQ(DecodeEvent(7, value.substr(0, value.size() - 1), &out).code(),
            StatusCode::kCorruption);
  EXPECT_EQ(DecodeEvent(7, value + "x", &out).code(), StatusCode::kCorruption);
  EXPECT_EQ(DecodeEvent(7, "", &out).code(), StatusCode::kCorruption);
}

TEST(CodecTest, RejectsBadPrevHash) {
  Envelope in = Sample(1);
  in.prev_hash = "xyz";
  std::string value;
  Digest hash{};
  EXPECT_EQ(EncodeEvent(in, &value, &hash).code(), StatusCode::kInvalidArgument);
}

TEST(CodecTest, HeadValueRoundTrip) {
  Digest h = Sha256Of("x");
  uint64_t pos = 0;
  Digest out{};
  ASSERT_TRUE(DecodeHeadValue(HeadValue(123, h), &pos, &out).ok());
  EXPECT_EQ(pos, 123u);
  EXPECT_EQ(out, h);
  EXPECT_EQ(DecodeHeadValue("abc", &pos, &out).code(), StatusCode::kCorruption);
  EXPECT_EQ(ZeroHashHex(), std::string(64, '0'));
  EXPECT_EQ(ToHex(ZeroDigest()), ZeroHashHex());
}

}  // namespace
}  // namespace epoch::storage::codec
