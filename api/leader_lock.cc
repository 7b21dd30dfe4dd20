#include "api/leader_lock.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/fd.h"
#include "common/files.h"
#include "common/json.h"

namespace epoch::api {

LeaderLock::~LeaderLock() { Release(); }

Status LeaderLock::TryAcquire(const std::string& path) {
  if (fd_) return Status::Ok();
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) return Internal("open " + path + ": " + std::strerror(errno));
  struct flock fl = {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = 0;
  fl.l_len = 0;
  if (fcntl(fd.get(), F_SETLK, &fl) != 0) {
    int err = errno;
    fd.reset();
    if (err == EACCES || err == EAGAIN) {
      return Unavailable("another epochd holds " + path);
    }
    return Internal("lock " + path + ": " + std::strerror(err));
  }
  fd_ = std::move(fd);
  path_ = path;
  return Status::Ok();
}

bool LeaderLock::StillHeld() const {
  if (!fd_) return false;
  struct stat held {}, at_path {};
  if (fstat(fd_.get(), &held) != 0 || stat(path_.c_str(), &at_path) != 0) return false;
  return held.st_dev == at_path.st_dev && held.st_ino == at_path.st_ino;
}

void LeaderLock::Release() {
  fd_.reset();  // closing the descriptor drops the fcntl lock
}

Result<PublishedLeader> ReadPublishedLeader(const std::string& data_dir) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(data_dir + "/leader.json", 1 << 16));
  ASSIGN_OR_RETURN(Json j, ParseJson(text));
  if (!j.is_object()) return InvalidArgument(data_dir + "/leader.json: not a JSON object");
  PublishedLeader p;
  if (auto a = j.find("address"); a != j.end() && a->is_string()) p.address = *a;
  if (auto e = j.find("epoch"); e != j.end() && e->is_number_unsigned()) p.epoch = *e;
  if (auto n = j.find("node"); n != j.end() && n->is_string()) p.node = *n;
  return p;
}

Status PublishLeader(const std::string& data_dir, const PublishedLeader& leader) {
  Json j{{"address", leader.address},
         {"epoch", leader.epoch},
         {"node", leader.node},
         {"pid", getpid()}};
  return WriteFileDurably(data_dir + "/leader.json", j.dump(), 0600);
}

}  // namespace epoch::api
