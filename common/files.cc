#include "common/files.h"

#include <linux/openat2.h>
#include <sys/syscall.h>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "common/fd.h"

namespace epoch {

namespace {
Status Errno(const std::string& what) {
  return Internal(what + ": " + std::strerror(errno));
}
std::string DirOf(const std::string& path) {
  auto pos = path.find_last_of('/');
  if (pos == std::string::npos) return ".";
  if (pos == 0) return "/";
  return path.substr(0, pos);
}
}  // namespace

bool WriteFully(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

Status MakeDirs(const std::string& path) {
  if (path.empty()) return InvalidArgument("empty path");
  std::string cur;
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    cur = path.substr(0, j);
    if (!cur.empty() && mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) {
      return Errno("mkdir " + cur);
    }
    i = j + 1;
  }
  return Status::Ok();
}

Status WriteFileDurably(const std::string& path, const std::string& content, mode_t mode) {
  std::string tmp = path + ".tmp";
  UniqueFd fd(open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
  if (!fd) return Errno("open " + tmp);
  if (fchmod(fd.get(), mode) != 0) {  // a stale temp file keeps its old mode through O_TRUNC
    return Errno("chmod " + tmp);
  }
  if (!WriteFully(fd.get(), content.data(), content.size())) return Errno("write " + tmp);
  if (fsync(fd.get()) != 0) return Errno("fsync " + tmp);
  fd.reset();
  if (rename(tmp.c_str(), path.c_str()) != 0) return Errno("rename " + tmp);
  if (UniqueFd dir(open(DirOf(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)); dir) {
    fsync(dir.get());
  }
  return Status::Ok();
}

Status WriteFilesDurably(const std::vector<std::pair<std::string, std::string>>& files) {
  if (files.empty()) return Status::Ok();
  if (files.size() == 1) return WriteFileDurably(files[0].first, files[0].second);
  UniqueFd sync_fd;
  for (const auto& [path, content] : files) {
    std::string tmp = path + ".tmp";
    UniqueFd fd(open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd) return Errno("open " + tmp);
    if (!WriteFully(fd.get(), content.data(), content.size())) return Errno("write " + tmp);
    if (!sync_fd) sync_fd = std::move(fd);
  }
  // One flush of the file system makes every temporary's contents durable.
  int rc = syncfs(sync_fd.get());
  sync_fd.reset();
  if (rc != 0) return Errno("syncfs");
  std::vector<std::string> dirs;
  for (const auto& [path, content] : files) {
    if (rename((path + ".tmp").c_str(), path.c_str()) != 0) return Errno("rename " + path);
    std::string d = DirOf(path);
    if (std::find(dirs.begin(), dirs.end(), d) == dirs.end()) dirs.push_back(d);
  }
  for (const auto& d : dirs) {
    UniqueFd dir(open(d.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dir) return Errno("open " + d);
    if (fsync(dir.get()) != 0) return Errno("fsync " + d);
  }
  return Status::Ok();
}

Result<std::string> ReadFile(const std::string& path, size_t max_bytes) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT) return NotFound("no such file: " + path);
    return Errno("open " + path);
  }
  std::string out;
  char buf[65536];
  while (true) {
    ssize_t n = read(fd.get(), buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("read " + path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > max_bytes) {
      return ResourceExhausted(path + " is larger than " + std::to_string(max_bytes) + " bytes");
    }
  }
  return out;
}

std::vector<std::string> ListFiles(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  if (!d) return names;
  while (struct dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n == "." || n == "..") continue;
    struct stat st;
    if (stat((dir + "/" + n).c_str(), &st) == 0 && S_ISREG(st.st_mode)) names.push_back(n);
  }
  closedir(d);
  return names;
}

Status RemoveFile(const std::string& path) {
  if (unlink(path.c_str()) != 0 && errno != ENOENT) return Errno("unlink " + path);
  return Status::Ok();
}

bool PathExists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

Result<std::string> NormalizePath(std::string_view path) {
  if (path.empty() || path.front() != '/') {
    return InvalidArgument("'" + std::string(path) + "' is not an absolute path");
  }
  if (path.find('\0') != std::string_view::npos) {
    return InvalidArgument("a path must not contain a NUL byte");
  }
  std::vector<std::string_view> parts;
  size_t i = 0;
  while (i < path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    std::string_view part = path.substr(i, j - i);
    if (part == "..") {
      if (parts.empty()) {
        return InvalidArgument("'" + std::string(path) + "' climbs above /");
      }
      parts.pop_back();
    } else if (!part.empty() && part != ".") {
      parts.push_back(part);
    }
    i = j + 1;
  }
  std::string out;
  for (auto p : parts) {
    out += '/';
    out += p;
  }
  return out.empty() ? std::string("/") : out;
}

bool IsBeneath(std::string_view path, std::string_view root) {
  if (root == "/") return !path.empty() && path.front() == '/';
  if (path.size() < root.size() || path.substr(0, root.size()) != root) return false;
  return path.size() == root.size() || path[root.size()] == '/';
}

Result<UniqueFd> OpenBeneath(const std::string& root, const std::string& path) {
  if (!IsBeneath(path, root)) {
    return InvalidArgument(path + " is not beneath " + root);
  }
  UniqueFd dir(open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!dir) return Internal("open " + root + ": " + std::strerror(errno));
  std::string rel = path.size() == root.size() ? "." : path.substr(root == "/" ? 1 : root.size() + 1);
  struct open_how how {};
  how.flags = O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  long fd = syscall(SYS_openat2, dir.get(), rel.c_str(), &how, sizeof(how));
  int err = errno;
  dir.reset();
  if (fd < 0) {
    std::string why = path + ": " + std::strerror(err);
    if (err == ENOENT || err == ENOTDIR) return NotFound(why);
    if (err == EACCES || err == EPERM) return PermissionDenied(why);
    if (err == EXDEV) return InvalidArgument(path + " resolves outside " + root);
    return Internal(why);
  }
  return UniqueFd(static_cast<int>(fd));
}

namespace {

constexpr int kMaxTreeDepth = 256;

// What a walk does with each entry it meets.
enum class TreeOp { kStat, kRemove, kPruneEmpty };

// Opens the parent folder of `path` beneath root following no link, and names the
// last component. An invalid fd (errno ENOENT, ENOTDIR or ELOOP) means there is no
// such folder that is not behind a link: nothing is at `path`.
Result<std::pair<UniqueFd, std::string>> OpenParentNoLinks(const std::string& root,
                                                           const std::string& given) {
  auto norm = NormalizePath(given);
  if (!norm.ok()) return norm.status();
  const std::string& path = *norm;
  if (!IsBeneath(path, root) || path.size() == root.size()) {
    return InvalidArgument(path + " is not strictly beneath " + root);
  }
  UniqueFd top(open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!top) return Errno("open " + root);
  std::string rel = path.substr(root == "/" ? 1 : root.size() + 1);
  auto slash = rel.find_last_of('/');
  std::string parent = slash == std::string::npos ? "." : rel.substr(0, slash);
  std::string leaf = slash == std::string::npos ? rel : rel.substr(slash + 1);
  struct open_how how {};
  how.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  long fd = syscall(SYS_openat2, top.get(), parent.c_str(), &how, sizeof(how));
  if (fd < 0 && errno != ENOENT && errno != ENOTDIR && errno != ELOOP && errno != EXDEV) {
    return Errno("open " + root + "/" + parent);
  }
  return std::pair{UniqueFd(static_cast<int>(fd)), leaf};
}

// The names in the folder `fd` (not "." and ".."); takes a duplicate of fd.
Result<std::vector<std::string>> Entries(int fd, const std::string& what) {
  int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return Errno("dup " + what);
  DIR* d = fdopendir(dup);
  if (!d) {
    Status s = Errno("opendir " + what);
    close(dup);
    return s;
  }
  std::vector<std::string> names;
  errno = 0;
  while (dirent* e = readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
      names.emplace_back(e->d_name);
    }
  }
  int err = errno;
  closedir(d);
  if (err != 0) return Internal("readdir " + what + ": " + std::strerror(err));
  return names;
}

// Walks the entry `name` of folder `dir` (`what` names it in errors). kStat adds the
// sizes of regular files to *bytes; kRemove removes everything and adds what it
// removed; kPruneEmpty removes folders left empty. The first error stops nothing
// else: it is returned once the rest is done.
Status WalkAt(int dir, const std::string& name, const std::string& what, int depth, TreeOp op,
              int64_t* bytes) {
  struct stat st {};
  if (fstatat(dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    return errno == ENOENT ? Status::Ok() : Errno("stat " + what);
  }
  if (S_ISDIR(st.st_mode)) {
    if (depth >= kMaxTreeDepth) {
      return FailedPrecondition(what + " is more than " + std::to_string(kMaxTreeDepth) +
                                " folders deep");
    }
    UniqueFd sub(openat(dir, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!sub) {
      // Swapped for a link or a file since the stat: it is no longer a folder.
      if (errno != ELOOP && errno != ENOTDIR) return Errno("open " + what);
      if (op != TreeOp::kRemove) return Status::Ok();
      if (unlinkat(dir, name.c_str(), 0) != 0 && errno != ENOENT) return Errno("unlink " + what);
      return Status::Ok();
    }
    auto names = Entries(sub.get(), what);
    if (!names.ok()) return names.status();
    Status first = Status::Ok();
    for (const auto& n : *names) {
      Status s = WalkAt(sub.get(), n, what + "/" + n, depth + 1, op, bytes);
      if (first.ok() && !s.ok()) first = s;
    }
    sub.reset();
    if (op == TreeOp::kStat || !first.ok()) return first;
    if (unlinkat(dir, name.c_str(), AT_REMOVEDIR) != 0) {
      if (op == TreeOp::kPruneEmpty && (errno == ENOTEMPTY || errno == EEXIST)) {
        return Status::Ok();
      }
      if (errno != ENOENT) return Errno("rmdir " + what);
    }
    return Status::Ok();
  }
  if (op == TreeOp::kPruneEmpty) return Status::Ok();
  int64_t size = S_ISREG(st.st_mode) ? static_cast<int64_t>(st.st_size) : 0;
  if (op == TreeOp::kRemove && unlinkat(dir, name.c_str(), 0) != 0) {
    if (errno == ENOENT) return Status::Ok();
    return Errno("unlink " + what);
  }
  *bytes += size;
  return Status::Ok();
}

Result<int64_t> WalkBeneath(const std::string& root, const std::string& path, TreeOp op,
                            bool* present) {
  auto parent = OpenParentNoLinks(root, path);
  if (!parent.ok()) return parent.status();
  auto& [dir, leaf] = *parent;
  struct stat st {};
  bool there = dir && fstatat(dir.get(), leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
  if (present) *present = there;
  if (!there) return int64_t{0};
  int64_t bytes = 0;
  Status s = WalkAt(dir.get(), leaf, path, 0, op, &bytes);
  if (!s.ok()) return s;
  return bytes;
}

}  // namespace

namespace {
Result<TreeStat> WalkTree(const std::string& root, const std::string& path, TreeOp op) {
  TreeStat out;
  auto bytes = WalkBeneath(root, path, op, &out.present);
  if (!bytes.ok()) return bytes.status();
  out.bytes = *bytes;
  return out;
}
}  // namespace

Result<TreeStat> StatTreeBeneath(const std::string& root, const std::string& path) {
  return WalkTree(root, path, TreeOp::kStat);
}

Result<TreeStat> RemoveTreeBeneath(const std::string& root, const std::string& path) {
  return WalkTree(root, path, TreeOp::kRemove);
}

Status RemoveEmptyDirsBeneath(const std::string& root, const std::string& path) {
  auto r = WalkBeneath(root, path, TreeOp::kPruneEmpty, nullptr);
  return r.ok() ? Status::Ok() : r.status();
}

}  // namespace epoch
