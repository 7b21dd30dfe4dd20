// Small POSIX file helpers used by the agent and the master: durable writes
// (write temp, fsync, rename, fsync dir) and directory creation. OS errors are
// converted to Status here, once.
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

#include "common/fd.h"
#include "common/status.h"

namespace epoch {

// Writes all n bytes to fd, retrying short writes and EINTR. False on error
// (errno says why). Safe between fork and exec (no allocation).
bool WriteFully(int fd, const void* data, size_t n);
// mkdir -p.
Status MakeDirs(const std::string& path);
// Atomically replaces path with content and fsyncs file and directory; the file gets
// `mode` (0600 for secrets and credentials' hashes).
Status WriteFileDurably(const std::string& path, const std::string& content,
                        mode_t mode = 0644);
// Writes many files durably with two flushes in all instead of two per file: the
// contents are written to temporaries, one syncfs() makes them durable, then each
// is renamed into place and each distinct directory is fsynced. Used where many
// small records become durable together (an agent's batch of reports).
Status WriteFilesDurably(const std::vector<std::pair<std::string, std::string>>& files);
Result<std::string> ReadFile(const std::string& path, size_t max_bytes = 64u << 20);
// Names (not paths) of the regular files in dir; empty if dir is missing.
std::vector<std::string> ListFiles(const std::string& dir);
Status RemoveFile(const std::string& path);
bool PathExists(const std::string& path);

// An absolute path with "." and ".." resolved lexically and repeated or trailing
// slashes dropped ("/a/./b//c/../d/" -> "/a/b/d"). Symlinks are not followed (a
// caller that opens the result must still keep the resolution beneath a root:
// OpenBeneath). kInvalidArgument for a relative or empty path, a NUL byte, or ".."
// above "/".
Result<std::string> NormalizePath(std::string_view path);
// Whether normalised `path` is `root` or lies beneath it ("/a/bc" is not beneath "/a/b").
bool IsBeneath(std::string_view path, std::string_view root);
// Opens `path` (normalised, beneath the directory `root`) read-only with
// openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS): no symlink or ".." can take the
// resolution out of `root`. O_NONBLOCK, so a FIFO does not hang the caller. Returns
// the fd, owned. kNotFound, kPermissionDenied, kInvalidArgument (outside root) or
// kInternal with the OS's words.
Result<UniqueFd> OpenBeneath(const std::string& root, const std::string& path);

// Trees that untrusted processes wrote (a step's folders), walked beneath `root`
// without following a symbolic link anywhere: `path` (normalised here, and refused
// unless beneath the normalised `root`) is resolved with openat2(RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS), so a link in any of its components means nothing is there, and inside the
// tree each entry is opened O_NOFOLLOW, so a link is only itself (no bytes; removed as a link,
// never followed). A step that swaps its own folder for a link into another tenant's cannot make
// the master count, or delete, what lies behind it. Trees deeper than 256 folders are refused
// (kFailedPrecondition) rather than holding a descriptor per level.
struct TreeStat {
  bool present = false;  // something (a file, a folder or a link) is at `path`
  int64_t bytes = 0;     // the sizes of the regular files beneath it
};
Result<TreeStat> StatTreeBeneath(const std::string& root, const std::string& path);
// Removes `path` and everything beneath it; says whether something was there and the
// bytes of the regular files removed.
Result<TreeStat> RemoveTreeBeneath(const std::string& root, const std::string& path);
// Removes the empty folders beneath and including `path` (what removing files leaves).
Status RemoveEmptyDirsBeneath(const std::string& root, const std::string& path);

}  // namespace epoch
