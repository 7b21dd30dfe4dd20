// Snapshots: the engine's State as bytes, so a master can load the latest
// snapshot and replay only the events after its `head` instead of the whole log.
//
// A snapshot is a pure function of the State: the same State always encodes to
// the same bytes, and DecodeSnapshot(EncodeSnapshot(s)) is a State that evolves
// exactly like s (every field of state.h is kept, including the bookkeeping that
// StateDigestJson does not show: counters, timers, reservations, idempotency).
//
// Format (integers little-endian; varint = LEB128, at most 10 bytes; svarint =
// zigzag varint):
//
//   snapshot  := magic "EPOCHSNP" | fixed32 version | fixed32 crc | fixed64 size | body
//                version is kSnapshotFormatVersion (below)
//                crc is CRC-32C (SnapshotCrc) of body; size is body's length in bytes
//   body      := varint head | varint epoch | defs | workflows | runs | runs_by_seq |
//                containers | queue | retry_timers | idempotency | workflow_keys |
//                str leader_node | str leader_address | varint next_run_seq |
//                varint next_queue_seq | varint container_counter |
//                svarint launch_failures_in_row | time last_launch_failure |
//                time last_scale_up | varint gangs_placed | lineage (see WriteLineage)
//   defs      := varint n | json source[n]     every distinct Definition once; rebuilt
//                with workflows::ParseDefinition and shared by whoever refers to it
//   def_ref   := varint: 0 = no definition, i = defs[i-1]
//   workflows := varint n | (str name | varint m | version[m])[n]
//   version   := svarint version | str digest | def_ref | time registered_at | str actor |
//                str tenant
//   runs      := varint n | chunk[n]           runs in id order, 4096 to a chunk
//   chunk     := varint runs | varint size | run[runs]   (size bytes) A chunk starts from
//                the string table as it stood before `runs` (what it adds is its own)
//                and from time 0, so chunks decode independently and in parallel.
//   run       := str id | str workflow | svarint version | str digest | def_ref | str tenant |
//                str submitter | json params | json labels | svarint priority | varint seq |
//                u8 phase | u8 cancel_requested | str failed_step | str reason |
//                time submitted_at | opt_time started_at | opt_time finished_at |
//                varint n | step[n]
//   step      := str name | u8 phase | varint n | attempt[n] | json metrics | json outputs |
//                str reason | opt_time retry_at | svarint next_attempt | svarint round_start
//   attempt   := svarint number | u8 phase | svarint cpu_millis | svarint memory_bytes |
//                svarint gpus | json argv | json env | svarint timeout_ms | str container |
//                json gpus | json gpu_uuids | opt_int exit_code | opt_int signal | str reason |
//                json usage | varint queue_seq | svarint workers | varint n | worker[n] |
//                str master_addr | svarint master_port |
//                time queued_at | time assigned_at | time started_at | time finished_at
//   worker    := svarint rank | svarint local_rank | u8 phase | str container | json gpus |
//                json gpu_uuids | opt_int exit_code | opt_int signal | str reason |
//                json usage | time started_at | time finished_at
//   runs_by_seq := u8 0                         exactly {run.seq -> run.id} for every run
//                | u8 1 | varint n | (varint seq | str id)[n]
//   containers := varint n | container[n], each: str id | u8 phase | str backend |
//                str handle | str host | str reason | svarint pid | svarint cpu_millis |
//                svarint memory_bytes | json gpus | json cuda | svarint requested_gpus |
//                str request_reason | time requested_at | time idle_since |
//                opt_time registered_at | opt_time ended_at | svarint used_cpu |
//                svarint used_memory | varint n | str busy_gpu[n] | varint m | str attempt[m]
//   queue     := varint n | (svarint neg_priority | varint queue_seq | str attempt_id)[n]
//   retry_timers := varint n | (time | str attempt_id)[n]
//   idempotency := varint n | (str tenant | str key | str run)[n]
//   workflow_keys := varint n | (str tenant | str key | str name | svarint version)[n]
//   str       := varint v: v%4 = 0: a string of v/4 bytes follows;
//                          v%4 = 1: the same, and it is appended to the string table;
//                          v%4 = 2: string table entry v/4 (the table starts empty)
//   time      := varint v, relative to the last plain time written before it (0 at the
//                start): v even: that time + unzigzag(v/2) µs (a plain time);
//                v = 1: TimePoint{}; v = 5: svarint µs since the Unix epoch follows (a plain
//                time too); opt_time adds v = 3: nullopt
//   opt_int   := varint: 0 = nullopt, else zigzag(value) + 1
//   json      := u8 tag | payload: 0 null, 1 false, 2 true, 3 svarint (number_integer),
//                4 varint (number_unsigned), 5 fixed64 IEEE-754 bits (number_float), 6 str,
//                7 varint n | json[n] (array), 8 varint n | (str key | json)[n] (object,
//                keys in order), 9 varint n | n bytes | u8 has_subtype | varint subtype (binary)
//
// Strings that repeat (names, container ids, digests, reasons, JSON keys) go through the
// string table, so a run that looks like the one before costs little; ids are written
// inline. Times are mostly small deltas. Maps and sets are written in their order,
// which the decoder checks.
//
// Thread-safety: free functions; EncodeSnapshot only reads its State. DecodeSnapshot
// decodes a snapshot of more than one chunk of runs on up to 4 threads of its own,
// joined before it returns.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"
#include "engine/state.h"

namespace epoch::engine {

inline constexpr std::string_view kSnapshotMagic = "EPOCHSNP";
inline constexpr uint32_t kSnapshotFormatVersion =
    15;  // 2: lineage; 3: cache; 4: sweeps, gang rank 0 results; 5: workflow tenants; 6:
         // credentials, isolation, logs, mounts, tenant caches and lineage; 7: container
         // enforcement; 8: live metrics series, checkpoints; 9: finished runs folded into
         // the read model (State::archived); 10: retention (expired outputs, logs,
         // checkpoints and cache entries; State::expired); 11: a run's idempotency key
         // (State::idempotency holds open runs' only); ended containers past 1000 leave
         // the state (State::ended_containers); 12: a cache entry's last hit; 13: data set and
         // model versions move to the read model (State keeps a count per name); 14: early
         // stopping (StepRun::rungs, Attempt::stopped), preemption (Attempt::preempted_by), elastic
         // gangs; 15: an elastic gang's start cap after preemption took it down
         // (Attempt::workers_cap), a gang worker's report recorded (Worker::reported)
inline constexpr size_t kSnapshotHeaderSize = 24;  // magic, version, crc, size

// Encodes everything in `s`. Deterministic: equal States give equal bytes.
std::string EncodeSnapshot(const State& s);

// Rebuilds a State from EncodeSnapshot's bytes. Each stored workflow definition is
// parsed once and shared by the versions and runs that refer to it.
// Errors: kCorruption for anything that is not a complete, intact snapshot of this
// format version (truncated, wrong magic or version, checksum mismatch, malformed
// body, a definition that no longer parses), with the reason and byte offset.
Result<State> DecodeSnapshot(std::string_view bytes);

// A finished run's record in the read model (archive.h): the run as a snapshot
// writes it (fields, lineage) behind this format's version. Its definition is not
// in it: DecodeRunRecord takes the registered one (workflow@version) from `s`.
std::string EncodeRunRecord(const Run& run);
// A data set or model version in the read model (archive.h), in the same format.
std::string EncodeArtifactRecord(const ArtifactVersion& v);
Result<ArtifactVersion> DecodeArtifactRecord(std::string_view bytes);
// Errors: kCorruption for bytes that are not a record of this format version, or a
// run whose workflow version `s` does not have.
Result<Run> DecodeRunRecord(std::string_view bytes, const State& s);

// CRC-32C (Castagnoli) of `bytes`: the checksum a snapshot's header holds for its body.
uint32_t SnapshotCrc(std::string_view bytes);

}  // namespace epoch::engine
