#include "engine/cache.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "common/sha256.h"

namespace epoch::engine {

Result<std::string> DiskFiles::Sha256(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return NotFound(path + ": " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) return InvalidArgument(path + ": not a regular file");
  int64_t mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  auto it = memo_.find(path);
  if (it != memo_.end() && it->second.size == static_cast<uint64_t>(st.st_size) &&
      it->second.inode == st.st_ino && it->second.mtime_ns == mtime_ns) {
    return it->second.sha256;
  }
  ASSIGN_OR_RETURN(std::string hex, Sha256FileHex(path));
  memo_[path] = Seen{static_cast<uint64_t>(st.st_size), static_cast<uint64_t>(st.st_ino), mtime_ns,
                     hex};
  return hex;
}

std::optional<uint64_t> DiskFiles::Size(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
  return static_cast<uint64_t>(st.st_size);
}

Json CacheKeyBasis(const Json& argv, const Json& env, int gpus, int workers,
                   const std::vector<std::string>& declared_outputs, const Json& input_digests) {
  Json outputs = Json::array();
  for (const auto& o : declared_outputs) outputs.push_back(o);
  return Json{{"v", 1},
              {"argv", argv},
              {"env", env},
              {"resources_class", gpus > 0 ? "gpu" : "cpu"},
              {"workers", workers},
              {"outputs", outputs},
              {"inputs", input_digests}};
}

std::string CacheKeyOf(const Json& basis) { return Sha256Hex(CanonicalDump(basis)); }

}  // namespace epoch::engine
