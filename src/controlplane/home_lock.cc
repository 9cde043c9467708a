#include "controlplane/home_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "common/log.h"

namespace airlock::controlplane {
namespace {

// What the holder wrote into the lock file: its pid, or "" while it has not written it yet.
std::string ReadHolder(int fd) {
  char buf[32] = {};
  ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
  std::string s(buf, n > 0 ? static_cast<size_t>(n) : 0);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace

Result<HomeLock> HomeLock::Acquire(const std::string& home) {
  std::string path = home + "/serve.lock";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    return Errorf(ErrorCode::kInternal, "cannot open {}: {}", path, std::strerror(errno));
  }
  HomeLock lock(fd);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) {
      return Errorf(ErrorCode::kInternal, "cannot lock {}: {}", path, std::strerror(errno));
    }
    std::string holder = ReadHolder(fd);
    return Errorf(ErrorCode::kConflict,
                  "another airlock serve{} is using the home directory {}; stop it first, or "
                  "give this server a home of its own (--home)",
                  holder.empty() ? "" : " (pid " + holder + ")", home);
  }
  std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) < 0) {
    // The pid is only there to name the holder in the message above; the lock itself holds.
    log::Warn("cannot write the pid into the home lock", {{"path", path}});
  }
  return lock;
}

HomeLock& HomeLock::operator=(HomeLock&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

HomeLock::~HomeLock() {
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace airlock::controlplane
