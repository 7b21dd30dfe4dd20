#include "executors/agent/live_metrics.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#include "common/fd.h"
#include "common/files.h"
#include "common/sha256.h"

namespace epoch::executors {

namespace {

constexpr size_t kMaxLineBytes = 64 * 1024;
constexpr size_t kMaxNameBytes = 128;
constexpr size_t kMaxSeries = 1000;
constexpr size_t kMaxCheckpoints = 1000;         // pending declarations and records
constexpr size_t kMaxCheckpointsPerBatch = 100;  // the rest go in the next batch
constexpr size_t kMaxRecorded = 1000;            // (file, sha256) pairs remembered
constexpr int64_t kMaxCheckpointJsonBytes = 64 * 1024;
constexpr auto kGiveUp = std::chrono::minutes(10);

// Reads at most max_bytes + 1 bytes of fd.
std::string ReadSome(int fd, size_t max_bytes) {
  std::string text;
  char buf[4096];
  while (text.size() <= max_bytes) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  return text;
}

// A declaration's "epoch": a non-negative integer, else none.
std::optional<int64_t> EpochOf(const Json& j) {
  auto e = j.find("epoch");
  if (e == j.end() || !e->is_number_integer()) return std::nullopt;
  if (e->is_number_unsigned() && e->get<uint64_t>() > INT64_MAX) return std::nullopt;
  int64_t v = e->get<int64_t>();
  return v >= 0 ? std::optional<int64_t>(v) : std::nullopt;
}

bool IsPlainName(const std::string& f) {
  return !f.empty() && f.size() <= 255 && f != "." && f != ".." &&
         f.find('/') == std::string::npos && f.find('\0') == std::string::npos;
}

// The record of a declared checkpoint: its size and sha256, read beneath the attempt's
// workspace to the checkpoint dir and from there without following a symlink.
Result<Json> RecordCheckpoint(const std::string& root, const std::string& dir,
                              const std::string& file, std::optional<int64_t> epoch) {
  if (dir.empty()) return FailedPrecondition("the attempt has no checkpoint dir");
  if (!IsPlainName(file)) {
    return InvalidArgument("'" + ValidUtf8(file) + "' is not a plain file name");
  }
  ASSIGN_OR_RETURN(UniqueFd dir_fd, OpenBeneath(root, dir));
  struct stat st;
  if (fstat(dir_fd.get(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return FailedPrecondition(dir + " is not a directory");
  }
  UniqueFd fd(openat(dir_fd.get(), file.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (!fd) {
    if (errno == ELOOP) return FailedPrecondition(file + " is a symbolic link");
    if (errno == ENOENT) return NotFound(file + ": " + std::strerror(errno));
    return Internal(file + ": " + std::strerror(errno));
  }
  if (fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return FailedPrecondition(file + " is not a regular file");
  }
  Sha256 h;
  std::string buf(1 << 16, '\0');
  uint64_t size = 0;
  while (true) {
    ssize_t n = read(fd.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Internal(file + ": read: " + std::strerror(errno));
    if (n == 0) break;
    h.Update(std::string_view(buf.data(), static_cast<size_t>(n)));
    size += static_cast<uint64_t>(n);
  }
  Json rec{{"file", file}, {"sha256", ToHex(h.Finish())}, {"size", size}};
  if (epoch) rec["epoch"] = *epoch;
  return rec;
}

}  // namespace

void LiveMetrics::Watch(const std::string& attempt_id, const LiveMetricsSpec& spec, Time now) {
  MutexLock lock(&mu_);
  if (series_.count(attempt_id)) return;
  Series s;
  s.spec = spec;
  s.last_sent = now;
  s.last_checked = now;
  CheckCheckpointJson(attempt_id, s, true);
  series_.emplace(attempt_id, std::move(s));
}

void LiveMetrics::ReadNew(const std::string& id, Series& s, size_t budget, bool final) {
  if (s.spec.metrics_path.empty()) return;
  auto fd = OpenBeneath(s.spec.root, s.spec.metrics_path);
  if (!fd.ok()) {
    // Missing: the step removed it (or it is not made yet); nothing to read.
    if (fd.status().code() != StatusCode::kNotFound && !s.warned) {
      spdlog::warn("attempt {}: metrics file: {}", id, fd.status().ToString());
      s.warned = true;
    }
    return;
  }
  struct stat st;
  if (fstat(fd->get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    if (!s.warned) {
      spdlog::warn("attempt {}: metrics file {} is not a regular file", id, s.spec.metrics_path);
      s.warned = true;
    }
    return;
  }
  if (s.file && (s.file->dev != st.st_dev || s.file->ino != st.st_ino)) {
    spdlog::info("attempt {}: metrics file {} was replaced; reading the new one", id,
                 s.spec.metrics_path);
    s.offset = 0;
    s.partial.clear();
    s.discarding = false;
  }
  s.file = FileId{st.st_dev, st.st_ino, static_cast<int64_t>(st.st_size), 0};
  if (static_cast<uint64_t>(st.st_size) < s.offset) {
    spdlog::warn("attempt {}: metrics file {} shrank to {} bytes; reading on from there", id,
                 s.spec.metrics_path, static_cast<int64_t>(st.st_size));
    s.offset = static_cast<uint64_t>(st.st_size);
    s.partial.clear();
    s.discarding = false;
  }
  std::string buf(std::min<size_t>(budget, 1 << 16), '\0');
  size_t left = budget;
  while (left > 0) {
    ssize_t n =
        pread(fd->get(), buf.data(), std::min(buf.size(), left), static_cast<off_t>(s.offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    s.offset += static_cast<uint64_t>(n);
    left -= static_cast<size_t>(n);
    Consume(id, s, std::string_view(buf.data(), static_cast<size_t>(n)));
  }
  if (!final) return;
  if (left == 0) {
    spdlog::warn("attempt {}: stopped reading metrics file {} after {} bytes", id,
                 s.spec.metrics_path, s.offset);
  }
  // The step has ended: a last line without its '\n' is complete.
  if (!s.partial.empty() && !s.discarding) {
    std::string line = std::move(s.partial);
    ProcessLine(id, s, line);
  }
  s.partial.clear();
  s.discarding = false;
}

void LiveMetrics::Consume(const std::string& id, Series& s, std::string_view data) {
  size_t pos = 0;
  while (pos < data.size()) {
    size_t nl = data.find('\n', pos);
    if (nl == std::string_view::npos) {
      if (!s.discarding) {
        s.partial.append(data.substr(pos));
        if (s.partial.size() > kMaxLineBytes) {
          ++s.skipped;  // counted once; the rest of the line is read past
          s.partial.clear();
          s.discarding = true;
        }
      }
      return;
    }
    std::string_view seg = data.substr(pos, nl - pos);
    pos = nl + 1;
    if (s.discarding) {
      s.discarding = false;
    } else if (s.partial.empty()) {
      if (seg.size() > kMaxLineBytes) {
        ++s.skipped;
      } else {
        ProcessLine(id, s, seg);
      }
    } else {
      s.partial.append(seg);
      if (s.partial.size() > kMaxLineBytes) {
        ++s.skipped;
      } else {
        std::string line = std::move(s.partial);
        ProcessLine(id, s, line);
      }
      s.partial.clear();
    }
  }
}

void LiveMetrics::ProcessLine(const std::string& id, Series& s, std::string_view line) {
  while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) {
    line.remove_suffix(1);
  }
  while (!line.empty() && std::isspace(static_cast<unsigned char>(line.front()))) {
    line.remove_prefix(1);
  }
  if (line.empty()) return;
  auto j = ParseJson(line, 16);
  if (!j.ok() || !j->is_object()) {
    ++s.skipped;
    return;
  }
  Json point = Json::object();
  bool declares = false;
  for (auto it = j->begin(); it != j->end(); ++it) {
    const std::string& name = it.key();
    const Json& v = it.value();
    if (name == "checkpoint" && v.is_string()) {
      Declare(id, s, Declaration{v.get<std::string>(), EpochOf(*j), "metrics line"});
      declares = true;
      continue;
    }
    bool finite = !v.is_number_float() || std::isfinite(v.get<double>());
    if (name.empty() || name.size() > kMaxNameBytes || !v.is_number() || !finite) {
      ++s.skipped;
      continue;
    }
    point[name] = v;
  }
  if (point.empty()) {
    if (!declares) ++s.skipped;  // a line that only declares a checkpoint is no point
    return;
  }
  Accept(s, std::move(point));
}

void LiveMetrics::Accept(Series& s, Json point) {
  for (auto it = point.begin(); it != point.end(); ++it) {
    if (s.last.size() < kMaxSeries || s.last.count(it.key())) s.last[it.key()] = it.value();
  }
  if (s.truncated || s.next_index >= s.spec.max_points || s.accepted_bytes >= s.spec.max_bytes) {
    s.truncated = true;
    ++s.dropped;
    return;
  }
  std::string text = point.dump();
  int64_t index = s.next_index++;
  s.accepted_bytes += static_cast<int64_t>(text.size());
  if (s.next_index >= s.spec.max_points || s.accepted_bytes >= s.spec.max_bytes) {
    s.truncated = true;
  }
  // Below the master's next (an agent restarted and reads from 0): it has it already.
  if (index >= s.acked_floor) s.unacked.push_back(std::move(text));
}

void LiveMetrics::Declare(const std::string& id, Series& s, Declaration d) {
  if (s.declared.size() + s.checkpoints.size() >= kMaxCheckpoints) {
    spdlog::warn("attempt {}: checkpoint {} ({}) ignored: {} checkpoints are pending", id,
                 ValidUtf8(d.file), d.source, kMaxCheckpoints);
    return;
  }
  s.declared.push_back(std::move(d));
}

void LiveMetrics::CheckCheckpointJson(const std::string& id, Series& s, bool baseline) {
  if (s.spec.checkpoint_dir.empty()) return;
  auto dir = OpenBeneath(s.spec.root, s.spec.checkpoint_dir);
  if (!dir.ok()) return;  // not made yet, or gone: nothing declared
  struct stat st;
  if (fstatat(dir->get(), "checkpoint.json", &st, AT_SYMLINK_NOFOLLOW) != 0) {
    s.checkpoint_json.reset();
    return;
  }
  FileId now{st.st_dev, st.st_ino, static_cast<int64_t>(st.st_size),
             static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
  if (s.checkpoint_json && *s.checkpoint_json == now) return;
  s.checkpoint_json = now;
  if (baseline) return;
  auto bad = [&](const std::string& why) {
    spdlog::warn("attempt {}: {}/checkpoint.json ignored: {}", id, s.spec.checkpoint_dir, why);
  };
  if (!S_ISREG(st.st_mode)) return bad("not a regular file");
  if (st.st_size > kMaxCheckpointJsonBytes) return bad("larger than 64 KiB");
  UniqueFd fd(
      openat(dir->get(), "checkpoint.json", O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (!fd) return bad(std::strerror(errno));
  std::string text = ReadSome(fd.get(), kMaxCheckpointJsonBytes);
  if (text.size() > kMaxCheckpointJsonBytes) return bad("larger than 64 KiB");
  auto j = ParseJson(text, 16);
  if (!j.ok()) return bad(j.status().message());
  auto file = j->is_object() ? j->find("file") : j->end();
  if (!j->is_object() || file == j->end() || !file->is_string()) {
    return bad("not {\"file\": \"<name>\", \"epoch\": N}");
  }
  Declare(id, s, Declaration{file->get<std::string>(), EpochOf(*j), "checkpoint.json"});
}

void LiveMetrics::ResolveDeclarations() {
  struct Work {
    std::string id, root, dir;
    Declaration d;
    std::optional<Json> record;
  };
  std::vector<Work> work;
  std::set<std::string> ids;
  {
    MutexLock lock(&mu_);
    for (auto& [id, s] : series_) {
      if (s.declared.empty()) continue;
      for (auto& d : s.declared) {
        work.push_back({id, s.spec.root, s.spec.checkpoint_dir, std::move(d), std::nullopt});
      }
      s.declared.clear();
      ++s.resolving;
      ids.insert(id);
    }
  }
  if (work.empty()) return;
  // Hashing a checkpoint may take seconds: not under the lock.
  for (auto& w : work) {
    auto rec = RecordCheckpoint(w.root, w.dir, w.d.file, w.d.epoch);
    if (rec.ok()) {
      w.record = std::move(*rec);
    } else {
      spdlog::warn("attempt {}: checkpoint '{}' ({}) ignored: {}", w.id, ValidUtf8(w.d.file),
                   w.d.source, rec.status().message());
    }
  }
  MutexLock lock(&mu_);
  for (auto& w : work) {
    auto it = series_.find(w.id);
    if (it == series_.end() || !w.record) continue;
    Series& s = it->second;
    std::string key = w.d.file + "\n" + (*w.record)["sha256"].get<std::string>();
    if (s.recorded.count(key)) continue;  // declared again, unchanged
    if (s.recorded.size() < kMaxRecorded) s.recorded.insert(key);
    spdlog::info("attempt {}: checkpoint {} ({} bytes, sha256 {})", w.id, w.d.file,
                 (*w.record)["size"].get<uint64_t>(), (*w.record)["sha256"].get<std::string>());
    s.checkpoints.emplace_back(++s.checkpoint_seq, std::move(*w.record));
  }
  for (const auto& id : ids) {
    if (auto it = series_.find(id); it != series_.end()) --it->second.resolving;
  }
}

bool LiveMetrics::CanForget(const Series& s) {
  return s.finished && s.unacked.empty() && s.checkpoints.empty() && s.declared.empty() &&
         s.resolving == 0 && s.skipped == s.acked.skipped && s.dropped == s.acked.dropped &&
         s.truncated == s.acked.truncated;
}

LiveMetrics::Collected LiveMetrics::Collect(Time now) {
  {
    MutexLock lock(&mu_);
    for (auto& [id, s] : series_) {
      if (s.finished) continue;  // Finish read it to the end
      ReadNew(id, s, limits_.read_bytes, false);
      CheckCheckpointJson(id, s, false);
    }
  }
  ResolveDeclarations();
  MutexLock lock(&mu_);
  Collected out;
  // Start where the last body ran out of room, so no attempt starves another.
  std::vector<std::string> order;
  for (auto it = series_.lower_bound(cursor_); it != series_.end(); ++it)
    order.push_back(it->first);
  for (auto it = series_.begin(); it != series_.end() && it->first < cursor_; ++it) {
    order.push_back(it->first);
  }
  cursor_.clear();
  size_t points_left = limits_.body_points, bytes_left = limits_.body_bytes;
  for (const auto& id : order) {
    auto it = series_.find(id);
    Series& s = it->second;
    if (s.finished && s.resolving == 0 && now - s.finished_at >= kGiveUp) {
      spdlog::warn(
          "attempt {}: giving up on {} live metric point(s) the master never "
          "acknowledged",
          id, s.unacked.size());
      series_.erase(it);
      continue;
    }
    if (CanForget(s)) {
      series_.erase(it);
      continue;
    }
    s.last_checked = now;
    bool totals_changed = s.skipped != s.acked.skipped || s.dropped != s.acked.dropped ||
                          s.truncated != s.acked.truncated;
    if (s.unacked.empty() && s.checkpoints.empty() && !totals_changed) {
      // Nothing to force out (a checkpoint still being hashed goes an interval later).
      if (s.finished) s.sent_since_finish = true;
      continue;
    }
    bool due = (s.finished && !s.sent_since_finish) || now - s.last_sent >= s.spec.interval ||
               (s.more_waiting && s.acked_floor >= s.sent_next);
    if (!due) continue;
    if (!s.unacked.empty() && (points_left == 0 || bytes_left < s.unacked.front().size())) {
      if (cursor_.empty()) cursor_ = id;
      continue;
    }
    const int64_t from = FirstUnacked(s);
    Json points = Json::array();
    size_t taken = 0;
    for (const auto& p : s.unacked) {
      if (taken >= points_left || p.size() > bytes_left) break;
      points.push_back(Json::parse(p));
      bytes_left -= p.size();
      ++taken;
    }
    points_left -= taken;
    Json checkpoints = Json::array();
    uint64_t through = 0;
    for (const auto& [seq, rec] : s.checkpoints) {
      if (checkpoints.size() >= kMaxCheckpointsPerBatch) break;
      checkpoints.push_back(rec);
      through = seq;
    }
    out.batches.push_back(Json{{"attempt_id", id},
                               {"from", from},
                               {"points", std::move(points)},
                               {"skipped", s.skipped},
                               {"dropped", s.dropped},
                               {"truncated", s.truncated},
                               {"checkpoints", std::move(checkpoints)}});
    out.sent.attempts[id] = Sent::Attempt{through, s.skipped, s.dropped, s.truncated};
    s.more_waiting = taken < s.unacked.size();
    if (s.more_waiting && cursor_.empty()) cursor_ = id;
    s.sent_next = from + static_cast<int64_t>(taken);
    s.last_sent = now;
    if (s.finished) s.sent_since_finish = true;
  }
  return out;
}

void LiveMetrics::Ack(const Json& metrics_ack, const Sent& sent) {
  if (!metrics_ack.is_object()) return;
  MutexLock lock(&mu_);
  for (auto a = metrics_ack.begin(); a != metrics_ack.end(); ++a) {
    auto it = series_.find(a.key());
    if (it == series_.end() || !a.value().is_number_integer()) continue;
    int64_t next = a.value().get<int64_t>();
    if (next < 0) continue;
    Series& s = it->second;
    s.acked_floor = std::max(s.acked_floor, next);
    while (!s.unacked.empty() && FirstUnacked(s) < next) s.unacked.pop_front();
    if (auto batch = sent.attempts.find(a.key()); batch != sent.attempts.end()) {
      const Sent::Attempt& b = batch->second;
      while (!s.checkpoints.empty() && s.checkpoints.front().first <= b.checkpoints_through) {
        s.checkpoints.pop_front();
      }
      s.acked.skipped = std::max(s.acked.skipped, b.skipped);
      s.acked.dropped = std::max(s.acked.dropped, b.dropped);
      s.acked.truncated = s.acked.truncated || b.truncated;
    }
    if (CanForget(s)) series_.erase(it);
  }
}

void LiveMetrics::Abandon(const Sent& sent, const std::string& why) {
  MutexLock lock(&mu_);
  for (const auto& [id, batch] : sent.attempts) {
    auto it = series_.find(id);
    if (it == series_.end()) continue;
    spdlog::warn("attempt {}: live metrics abandoned ({} point(s) unsent): {}", id,
                 it->second.unacked.size(), why);
    series_.erase(it);
  }
}

Json LiveMetrics::Finish(const std::string& attempt_id, Time now) {
  {
    MutexLock lock(&mu_);
    auto it = series_.find(attempt_id);
    if (it == series_.end()) return Json::object();
    if (!it->second.finished) {
      ReadNew(attempt_id, it->second, limits_.final_read_bytes, true);
      CheckCheckpointJson(attempt_id, it->second, false);
    }
  }
  ResolveDeclarations();
  MutexLock lock(&mu_);
  auto it = series_.find(attempt_id);
  if (it == series_.end()) return Json::object();
  Series& s = it->second;
  Json last = Json::object();
  for (const auto& [name, v] : s.last) last[name] = v;
  if (!s.finished) {
    s.finished = true;
    s.finished_at = now;
    s.sent_since_finish = false;
  }
  if (CanForget(s)) series_.erase(it);
  return last;
}

std::optional<LiveMetrics::Time> LiveMetrics::NextCheck() const {
  MutexLock lock(&mu_);
  std::optional<Time> best;
  for (const auto& [id, s] : series_) {
    Time t = s.finished && !s.sent_since_finish ? s.finished_at : s.last_checked + s.spec.interval;
    if (!best || t < *best) best = t;
  }
  return best;
}

size_t LiveMetrics::Watched() const {
  MutexLock lock(&mu_);
  return series_.size();
}

size_t LiveMetrics::Unacked(const std::string& attempt_id) const {
  MutexLock lock(&mu_);
  auto it = series_.find(attempt_id);
  return it == series_.end() ? 0 : it->second.unacked.size();
}

}  // namespace epoch::executors
