#include "engine/cache.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/files.h"
#include "common/sha256.h"

namespace epoch::engine {

bool IsHashPending(const Status& st) {
  return st.code() == StatusCode::kUnavailable && st.message() == kHashPending;
}

DiskFiles::DiskFiles(uint64_t max_bytes, std::function<void()> on_hashed)
    : max_bytes_(max_bytes), on_hashed_(std::move(on_hashed)) {}

DiskFiles::~DiskFiles() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
  }
  cv_.SignalAll();
  if (thread_.joinable()) thread_.join();
}

namespace {

int64_t MtimeNs(const struct stat& st) {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}

std::string Bytes(uint64_t n) {
  if (n >= (1ULL << 30) && n % (1ULL << 30) == 0) return std::to_string(n >> 30) + " GiB";
  if (n >= (1ULL << 20) && n % (1ULL << 20) == 0) return std::to_string(n >> 20) + " MiB";
  return std::to_string(n) + " bytes";
}

}  // namespace

Result<std::string> DiskFiles::Sha256(const std::string& root, const std::string& path) {
  ASSIGN_OR_RETURN(UniqueFd fd, OpenBeneath(root, path));
  struct stat st {};
  int rc = fstat(fd.get(), &st);
  int err = errno;
  fd.reset();
  if (rc != 0) return Internal(path + ": " + std::strerror(err));
  if (!S_ISREG(st.st_mode)) return InvalidArgument(path + ": not a regular file");
  Identity id{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
              static_cast<uint64_t>(st.st_size), MtimeNs(st)};
  if (id.size > max_bytes_) {
    return ResourceExhausted(path + " is " + std::to_string(id.size) +
                             " bytes, over executor.maxInputBytes (" + Bytes(max_bytes_) + ")");
  }
  MutexLock lock(&mu_);
  auto it = memo_.find(path);
  if (it != memo_.end() && it->second.id == id) {
    if (!it->second.status.ok()) return it->second.status;
    return it->second.sha256;
  }
  if (pending_.insert(path).second) {
    jobs_.push_back(Job{root, path, id});
    if (!thread_.joinable()) thread_ = std::thread([this] { HashLoop(); });
    cv_.Signal();
  }
  return Unavailable(std::string(kHashPending));
}

void DiskFiles::HashLoop() {
  while (true) {
    Job job;
    {
      MutexLock lock(&mu_);
      while (!stopping_ && jobs_.empty()) cv_.Wait(&mu_);
      if (stopping_) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    Seen seen;
    seen.id = job.id;
    auto fd = OpenBeneath(job.root, job.path);
    if (!fd.ok()) {
      seen.status = fd.status();
    } else {
      epoch::Sha256 h;
      std::vector<char> buf(1 << 16);
      uint64_t total = 0;
      while (true) {
        ssize_t n = read(fd->get(), buf.data(), buf.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
          seen.status = Internal("reading " + job.path + ": " + std::strerror(errno));
          break;
        }
        if (n == 0) break;
        total += static_cast<uint64_t>(n);
        if (total > max_bytes_) {  // it grew since it was checked
          seen.status = ResourceExhausted(job.path + " grew past executor.maxInputBytes (" +
                                          Bytes(max_bytes_) + ") while it was hashed");
          break;
        }
        h.Update(std::string_view(buf.data(), static_cast<size_t>(n)));
      }
      // Keyed by what was read: a file that changed while it was hashed is read again
      // when next asked (its identity no longer matches).
      struct stat st {};
      if (seen.status.ok() && fstat(fd->get(), &st) == 0) {
        seen.id = Identity{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
                           static_cast<uint64_t>(st.st_size), MtimeNs(st)};
      }
      fd->reset();
      if (seen.status.ok()) seen.sha256 = ToHex(h.Finish());
    }
    {
      MutexLock lock(&mu_);
      pending_.erase(job.path);
      memo_[job.path] = std::move(seen);
      ++hashed_;
    }
    if (on_hashed_) on_hashed_();
  }
}

uint64_t DiskFiles::hashed() const {
  MutexLock lock(&mu_);
  return hashed_;
}

std::optional<uint64_t> DiskFiles::Size(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
  return static_cast<uint64_t>(st.st_size);
}

Json CacheKeyBasis(const std::string& tenant, const Json& argv, const Json& env, int gpus,
                   int workers, const std::vector<std::string>& declared_outputs,
                   const Json& input_digests) {
  Json outputs = Json::array();
  for (const auto& o : declared_outputs) outputs.push_back(o);
  return Json{{"v", 2},
              {"tenant", tenant},
              {"argv", argv},
              {"env", env},
              {"resources_class", gpus > 0 ? "gpu" : "cpu"},
              {"workers", workers},
              {"outputs", outputs},
              {"inputs", input_digests}};
}

std::string CacheKeyOf(const Json& basis) { return Sha256Hex(CanonicalDump(basis)); }

}  // namespace epoch::engine
