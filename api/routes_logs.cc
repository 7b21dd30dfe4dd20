// ApiServer's step-log route (/v1/runs/{id}/steps/{step}/logs): a step attempt's log
// read by byte range or by last lines, never whole (at most api.maxLogResponseBytes an
// answer), or followed as SSE until the attempt has finished.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

#include "api/auth.h"
#include "api/http_server.h"
#include "api/http_util.h"
#include "api/server_impl.h"
#include "common/fd.h"
#include "common/status.h"
#include "engine/engine.h"

namespace epoch::api {

namespace {

// ---- step logs: read by range, never whole ----------------------------------------

// A log follower looks for new bytes this often (a file growing is not an event).
constexpr auto kLogFollowTick = std::chrono::milliseconds(200);

// What one read of a log file covers.
constexpr size_t kLogBlock = 64 << 10;

// A log file open for reading; a missing file reads as empty (the step has not
// written yet).
class LogFile {
 public:
  explicit LogFile(const std::string& path) : fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {}

  bool exists() const { return fd_.valid(); }
  uint64_t Size() const {
    struct stat st {};
    if (!fd_ || ::fstat(fd_.get(), &st) != 0) return 0;
    return static_cast<uint64_t>(st.st_size);
  }
  // Up to n bytes at offset (fewer at the end of the file).
  Result<std::string> Read(uint64_t offset, size_t n) const {
    std::string out(n, '\0');
    size_t got = 0;
    while (fd_ && got < n) {
      ssize_t r = ::pread(fd_.get(), out.data() + got, n - got, static_cast<off_t>(offset + got));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return Internal(std::string("reading a step log: ") + std::strerror(errno));
      if (r == 0) break;
      got += static_cast<size_t>(r);
    }
    out.resize(got);
    return out;
  }
  // The first line start at or after `from`: from itself if a line ends just before
  // it, else just after the next '\n' (from itself if there is none before `size`).
  Result<uint64_t> LineStartFrom(uint64_t from, uint64_t size) const {
    if (from == 0) return uint64_t{0};
    for (uint64_t pos = from - 1; pos < size;) {
      // Within [0, size) only: the file may grow meanwhile.
      ASSIGN_OR_RETURN(std::string block,
                       Read(pos, static_cast<size_t>(std::min<uint64_t>(kLogBlock, size - pos))));
      if (block.empty()) break;
      if (size_t nl = block.find('\n'); nl != std::string::npos) return pos + nl + 1;
      pos += block.size();
    }
    return from;
  }
  // Where the last `lines` lines of [0, size) start, reading backwards from the end a
  // block at a time; never before size - cap (then at a line start after it).
  Result<uint64_t> TailStart(uint64_t size, uint64_t lines, uint64_t cap) const {
    if (size == 0 || lines == 0) return size;
    const uint64_t floor = size > cap ? size - cap : 0;
    uint64_t found = 0;
    for (uint64_t end = size; end > floor;) {
      uint64_t start = end - std::min<uint64_t>(kLogBlock, end - floor);
      ASSIGN_OR_RETURN(std::string block, Read(start, static_cast<size_t>(end - start)));
      if (block.size() != end - start) return size;  // truncated meanwhile: nothing to show
      for (size_t i = block.size(); i-- > 0;) {
        // The newline that ends the last line does not start one.
        if (block[i] != '\n' || start + i == size - 1) continue;
        if (++found == lines) return start + i + 1;
      }
      end = start;
    }
    return floor == 0 ? uint64_t{0} : LineStartFrom(floor, size);
  }

 private:
  UniqueFd fd_;
};

// Range: bytes=a-b | a- | -n (one range). Sets [*first, *last] within size; false
// when unsatisfiable, an error when it does not parse.
Result<bool> ParseByteRange(const std::string& header, uint64_t size, uint64_t* first,
                            uint64_t* last) {
  auto bad = [&] {
    return InvalidArgument(
        "Range: expected bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX "
        "(one range), got '" +
        header + "'");
  };
  if (header.rfind("bytes=", 0) != 0) return bad();
  std::string spec = header.substr(6);
  if (spec.find(',') != std::string::npos) return bad();
  size_t dash = spec.find('-');
  if (dash == std::string::npos) return bad();
  auto number = [](const std::string& t, uint64_t* out) {
    if (t.empty() || t.size() > 19 || t.find_first_not_of("0123456789") != std::string::npos) {
      return false;
    }
    *out = std::stoull(t);
    return true;
  };
  std::string a = spec.substr(0, dash), b = spec.substr(dash + 1);
  if (a.empty()) {  // the last n bytes
    uint64_t n;
    if (!number(b, &n)) return bad();
    if (n == 0 || size == 0) return false;
    *first = size - std::min(n, size);
    *last = size - 1;
    return true;
  }
  if (!number(a, first)) return bad();
  if (b.empty()) {
    *last = size == 0 ? 0 : size - 1;
  } else if (!number(b, last) || *last < *first) {
    return bad();
  }
  if (*first >= size) return false;
  *last = std::min(*last, size - 1);
  return true;
}

}  // namespace

void ApiServer::Impl::LogRoutes() {
  Get(R"(/v1/runs/([^/]+)/steps/([^/]+)/logs)",
      Wrap("/v1/runs/{id}/steps/{step}/logs", [this](const Request& req, Response& res) {
        std::string id = req.matches[1], step = req.matches[2];
        HttpError err;
        auto attempt_q = QueryInt(req, "attempt", 0, 0, 1000000, &err);
        if (!attempt_q.ok()) return WriteError(res, err);
        std::string gone;  // retention deleted the log (engine/retention.h)
        Result<int> found = engine->ReadRun(id, [&](const engine::State&, const engine::Run* run) {
          auto n = engine::LogAttempt(run, id, step, static_cast<int>(*attempt_q), Visible());
          const engine::StepRun* st = n.ok() ? run->FindStep(step) : nullptr;
          if (st && *n >= 1 && *n <= static_cast<int>(st->attempts.size())) {
            const engine::Attempt& a = st->attempts[static_cast<size_t>(*n - 1)];
            if (a.logs_expired) {
              gone = "the log of " + engine::AttemptId(id, step, *n) + " expired on " +
                     FormatTime(a.logs_expired.at) + " (retention.logs)";
            }
          }
          return n;
        });
        if (!found.ok()) return WriteError(res, {404, "not_found", found.status().message(), {}});
        if (!gone.empty()) return WriteError(res, {410, "gone", gone, {}});
        const int attempt = *found;
        std::string path = engine::LogPath(engine->options().config, id, step, attempt);
        const bool follow = QueryBool(req, "follow");
        const bool tail = req.HasParam("tail");
        auto lines = QueryInt(req, "tail", 0, 0, 100000000, &err);
        if (!lines.ok()) return WriteError(res, err);
        const std::string range = req.Header("Range");
        if (!range.empty() && (follow || tail)) {
          return WriteError(
              res, {400, "bad_parameter", "Range: not with tail or follow (give one of them)", {}});
        }
        const uint64_t cap = config.max_log_response_bytes;
        if (follow) {
          uint64_t from = 0;
          if (tail) {
            LogFile f(path);
            auto start = f.TailStart(f.Size(), static_cast<uint64_t>(*lines), cap);
            if (!start.ok()) return WriteError(res, FromStatus(start.status()));
            from = *start;
          }
          return FollowLog(res, path, engine::AttemptId(id, step, attempt), from);
        }
        // One answer holds at most api.maxLogResponseBytes, read with pread: never the
        // whole file. Epoch-Log-Size and Epoch-Log-Offset say which part it is.
        LogFile f(path);
        const uint64_t size = f.Size();
        res.SetHeader("Accept-Ranges", "bytes");
        res.SetHeader("Epoch-Log-Size", std::to_string(size));
        uint64_t first = 0, end = size;
        int status = 200;
        if (!range.empty()) {
          uint64_t last = 0;
          auto ok = ParseByteRange(range, size, &first, &last);
          if (!ok.ok()) return WriteError(res, {400, "bad_parameter", ok.status().message(), {}});
          if (!*ok) {
            res.SetHeader("Content-Range", "bytes */" + std::to_string(size));
            return WriteError(res, {416,
                                    "range_not_satisfiable",
                                    "Range '" + range + "' is outside the log (" +
                                        std::to_string(size) + " bytes)",
                                    {}});
          }
          end = std::min(last + 1, first + cap);  // a larger range is answered in part
          status = 206;
          res.SetHeader("Content-Range", "bytes " + std::to_string(first) + "-" +
                                             std::to_string(end - 1) + "/" + std::to_string(size));
        } else {
          // The last lines (tail=N), or the whole log; either way at most the last
          // `cap` bytes, from a line start.
          auto start = tail ? f.TailStart(size, static_cast<uint64_t>(*lines), cap)
                            : f.LineStartFrom(size > cap ? size - cap : 0, size);
          if (!start.ok()) return WriteError(res, FromStatus(start.status()));
          first = *start;
        }
        auto data = f.Read(first, static_cast<size_t>(end - first));
        if (!data.ok()) return WriteError(res, FromStatus(data.status()));
        res.SetHeader("Epoch-Log-Offset", std::to_string(first));
        res.status = status;
        res.SetContent(std::move(*data), "text/plain; charset=utf-8");
      }));
}

void ApiServer::Impl::FollowLog(Response& res, const std::string& path,
                                const std::string& attempt_id, uint64_t from) {
  auto slot = AcquireStream(res);
  if (!slot) return;
  // One log event per line, read from `offset` a block per call; "end" once the
  // attempt has finished and everything it wrote was sent.
  struct State {
    std::string path, attempt_id, run;
    std::unique_ptr<LogFile> file;
    uint64_t offset = 0;
    std::string partial;  // an unfinished last line
    std::chrono::steady_clock::time_point last_write = std::chrono::steady_clock::now();
  };
  auto st = std::make_shared<State>();
  st->path = path;
  st->attempt_id = attempt_id;
  st->run = attempt_id.substr(0, attempt_id.find('/'));
  st->offset = from;
  auto line = [](std::string* out, std::string_view text) {
    *out += "event: log\ndata: ";
    *out += text;
    *out += "\n\n";
  };
  res.Stream(
      "text/event-stream",
      [this, st, slot, line](std::string* out, bool) {
        bool finished = engine->ReadRun(st->run, [&](const engine::State&, const engine::Run* run) {
          return engine::AttemptEnded(run, st->attempt_id);
        });
        if (!st->file || !st->file->exists()) st->file = std::make_unique<LogFile>(st->path);
        auto chunk = st->file->Read(st->offset, kLogBlock);
        if (!chunk.ok()) {
          *out =
              "event: error\ndata: " + CanonicalDump(Json{{"message", chunk.status().message()}}) +
              "\n\n";
          return StreamNext::kEnd;
        }
        st->offset += chunk->size();
        st->partial += *chunk;
        size_t start = 0;
        for (size_t nl; (nl = st->partial.find('\n', start)) != std::string::npos; start = nl + 1) {
          line(out, std::string_view(st->partial).substr(start, nl - start));
        }
        st->partial.erase(0, start);
        if (st->partial.size() >= kLogBlock) {  // a line longer than a block goes in parts
          line(out, st->partial);
          st->partial.clear();
        }
        auto now = std::chrono::steady_clock::now();
        if (!out->empty()) st->last_write = now;
        if (chunk->size() == kLogBlock) return StreamNext::kMore;
        if (finished && chunk->empty()) {
          if (!st->partial.empty()) line(out, st->partial);
          *out += "event: end\ndata: {}\n\n";
          return StreamNext::kEnd;
        }
        if (finished) return StreamNext::kMore;  // read on to the end
        if (out->empty() && now - st->last_write >= kSseKeepAlive) {
          *out = ": keep-alive\n\n";
          st->last_write = now;
        }
        return StreamNext::kWait;
      },
      kLogFollowTick);
}

}  // namespace epoch::api
