// Codec: the on-disk binary encoding of Epoch's event store (keys and values of
// every RocksDB column family) and the definition of an event's hash.
//
// Grammar (all fixed-width integers are big-endian, so keys sort numerically):
//
//   fixed8  := 1 byte      fixed32 := 4 bytes      fixed64 := 8 bytes
//   string  := len: fixed32  bytes: byte[len]
//   digest  := byte[32]                          raw SHA-256 (hex only in Envelope)
//   name    := byte*                             no 0x00 byte (stream, tenant)
//
//   Column family `events`:
//     key   := position: fixed64                 dense, from 1
//     value := format: fixed8 (= 0x01)  fields  hash: digest
//     fields := stream: string  version: fixed64  type: string  schema: fixed32
//               time: string  epoch: fixed64  actor: string  data: string
//               prev_hash: digest                all zeros for position 1
//     hash  := SHA-256( key  fields )            i.e. position || every field but the
//                                                hash itself; the format byte is not
//                                                hashed (a bad one fails decoding)
//
//   Column family `streams`:
//     key   := stream: name  0x00  version: fixed64
//     value := position: fixed64
//
//   Column family `meta`:
//     key   := byte*                             "head", "epoch", "leader", ...
//     value := byte*; "head" (written by the store in every append batch) is
//              position: fixed64  hash: digest
//
//   Column family `snapshots`:
//     key   := position: fixed64
//     value := byte*                             opaque projection snapshot
//
//   Column family `idempotency`:
//     key   := tenant: name  0x00  key: byte*
//     value := byte*                             e.g. the run id
//
//   Column families `read_records`, `read_index`: the read model (event_store.h
//   ReadModelFamily); keys and values are the engine's (engine/archive.h).
//
// The `default` family is unused. A value that does not parse, or whose hash does
// not match, is reported as kCorruption naming the event's position.
//
// Thread-safety: free functions over plain values; safe from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/sha256.h"
#include "common/status.h"
#include "storage/event_store.h"

namespace epoch::storage::codec {

inline constexpr char kEventsFamily[] = "events";
inline constexpr char kStreamsFamily[] = "streams";
inline constexpr char kMetaFamily[] = "meta";
inline constexpr char kSnapshotsFamily[] = "snapshots";
inline constexpr char kIdempotencyFamily[] = "idempotency";
inline constexpr char kReadRecordsFamily[] = "read_records";
inline constexpr char kReadIndexFamily[] = "read_index";

inline constexpr char kHeadMetaKey[] = "head";
inline constexpr uint8_t kEnvelopeFormatV1 = 0x01;

// Fixed-width big-endian integers.
void PutFixed32(std::string* dst, uint32_t v);
void PutFixed64(std::string* dst, uint64_t v);
uint32_t DecodeFixed32(const char* p);
uint64_t DecodeFixed64(const char* p);
// string := len: fixed32  bytes
void PutLengthPrefixed(std::string* dst, std::string_view s);

// The all-zero digest (prev_hash of position 1, hash of the empty log).
const Digest& ZeroDigest();
// 64 '0' characters.
const std::string& ZeroHashHex();

// `events` key.
std::string EventKey(uint64_t position);
// Decodes an `events` or `snapshots` key; kCorruption unless exactly 8 bytes.
Result<uint64_t> DecodePositionKey(std::string_view key);

// `streams` key and the bounds of one stream's keys. The stream must not contain
// 0x00 (see ValidateName).
std::string StreamKey(std::string_view stream, uint64_t version);
// Decodes a `streams` key into its stream and version.
Status DecodeStreamKey(std::string_view key, std::string* stream, uint64_t* version);
std::string PositionValue(uint64_t position);
Result<uint64_t> DecodePositionValue(std::string_view value);

// `idempotency` key.
std::string IdempotencyKey(std::string_view tenant, std::string_view key);

// `meta` "head" value.
std::string HeadValue(uint64_t position, const Digest& hash);
Status DecodeHeadValue(std::string_view value, uint64_t* position, Digest* hash);

// kInvalidArgument when a stream or tenant name is empty (unless allow_empty) or
// contains 0x00, which would make the `streams`/`idempotency` keys ambiguous.
Status ValidateName(std::string_view what, std::string_view name, bool allow_empty = false);

// Encodes env (position, stream, version, type, schema, time, epoch, actor, data;
// prev_hash as 64 hex digits) into an `events` value, computing the hash. Returns
// the hash through hash_out. kInvalidArgument if prev_hash is not 64 hex digits.
// env.hash is ignored.
Status EncodeEvent(const Envelope& env, std::string* value, Digest* hash_out);
// Faster variant for the writer: prev_hash given raw.
void EncodeEvent(uint64_t position, std::string_view stream, uint64_t version,
                 std::string_view type, uint32_t schema, std::string_view time, uint64_t epoch,
                 std::string_view actor, std::string_view data, const Digest& prev_hash,
                 std::string* value, Digest* hash_out);

// An `events` value decoded in place: the strings are views into the value (valid
// while it is), the hashes raw. What every read decodes first; an Envelope (hex
// hashes, owned strings) is built only where one is handed out.
struct EventFields {
  std::string_view stream;
  uint64_t version = 0;
  std::string_view type;
  uint32_t schema = 0;
  std::string_view time;
  uint64_t epoch = 0;
  std::string_view actor;
  std::string_view data;
  Digest prev_hash{};
  Digest hash{};
};

// Decodes an `events` value stored under `position`, recomputes the hash and
// compares it with the stored one. kCorruption ("event 42: hash mismatch",
// "event 42: malformed ...") on any failure; *out is then unspecified.
Status DecodeEventFields(uint64_t position, std::string_view value, EventFields* out);

// Copies the fields an Envelope and a PageEvent share out of `f`, decoded from event
// `position` (the hashes are the caller's: hex in an Envelope, raw in a PageEvent).
template <typename Event>
void AssignEventFields(uint64_t position, const EventFields& f, Event* e) {
  e->position = position;
  e->stream.assign(f.stream);
  e->version = f.version;
  e->type.assign(f.type);
  e->schema = f.schema;
  e->time.assign(f.time);
  e->epoch = f.epoch;
  e->actor.assign(f.actor);
  e->data.assign(f.data);
}

// DecodeEventFields into an Envelope: on success env is complete (hashes in
// lowercase hex) and, if non-null, raw_hash / raw_prev_hash hold the digests.
Status DecodeEvent(uint64_t position, std::string_view value, Envelope* env,
                   Digest* raw_hash = nullptr, Digest* raw_prev_hash = nullptr);

}  // namespace epoch::storage::codec
