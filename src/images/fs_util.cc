#include "images/fs_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <thread>

#include <fmt/format.h>

#include "common/crypto.h"

namespace airlock::images {

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) {
      ::close(fd_);
    }
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) {
    ::close(fd_);
  }
}

std::string ErrnoText(int err) { return std::strerror(err); }

Result<FileLock> FileLock::Acquire(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644));
  if (!fd.valid()) {
    return Errorf(ErrorCode::kInternal, "cannot open the lock file {}: {}", path, ErrnoText(errno));
  }
  return Lock(std::move(fd), /*wait=*/true);
}

Result<FileLock> FileLock::Lock(UniqueFd fd, bool wait) {
  for (;;) {
    if (::flock(fd.get(), LOCK_EX | (wait ? 0 : LOCK_NB)) == 0) {
      return FileLock(std::move(fd));
    }
    if (errno == EINTR) {
      continue;
    }
    if (errno == EWOULDBLOCK) {
      return MakeError(ErrorCode::kConflict, "locked by someone else");
    }
    return Errorf(ErrorCode::kInternal, "flock: {}", ErrnoText(errno));
  }
}

Result<std::string> CleanRelativePath(std::string_view path, size_t max_length) {
  if (path.size() > max_length) {
    return Errorf(ErrorCode::kInvalidArgument, "path is longer than {} bytes", max_length);
  }
  if (path.find('\0') != std::string_view::npos) {
    return MakeError(ErrorCode::kInvalidArgument, "path contains a NUL byte");
  }
  if (!path.empty() && path.front() == '/') {
    return MakeError(ErrorCode::kInvalidArgument, "path is absolute");
  }
  std::string out;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) {
      end = path.size();
    }
    std::string_view component = path.substr(start, end - start);
    if (component == "..") {
      return MakeError(ErrorCode::kInvalidArgument, "path has a \"..\" component");
    }
    if (component.size() > 255) {
      return MakeError(ErrorCode::kInvalidArgument, "path has a component longer than 255 bytes");
    }
    if (!component.empty() && component != ".") {
      if (!out.empty()) {
        out += '/';
      }
      out += component;
    }
    start = end + 1;
  }
  return out;
}

std::vector<std::string_view> SplitPath(std::string_view clean) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (start < clean.size()) {
    size_t end = clean.find('/', start);
    if (end == std::string_view::npos) {
      end = clean.size();
    }
    if (end > start) {
      parts.push_back(clean.substr(start, end - start));
    }
    start = end + 1;
  }
  return parts;
}

Result<UniqueFd> OpenDirBeneath(int root, std::string_view rel, bool create) {
  UniqueFd current(::fcntl(root, F_DUPFD_CLOEXEC, 0));
  if (!current.valid()) {
    return Errorf(ErrorCode::kInternal, "dup: {}", ErrnoText(errno));
  }
  std::string walked;
  for (std::string_view part : SplitPath(rel)) {
    std::string name(part);
    if (!walked.empty()) {
      walked += '/';
    }
    walked += name;
    UniqueFd next(
        ::openat(current.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!next.valid() && errno == ENOENT && create) {
      if (::mkdirat(current.get(), name.c_str(), 0755) != 0 && errno != EEXIST) {
        return Errorf(ErrorCode::kInternal, "mkdir {}: {}", walked, ErrnoText(errno));
      }
      next = UniqueFd(
          ::openat(current.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    }
    if (!next.valid()) {
      int err = errno;
      struct stat st {};
      if (::fstatat(current.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (S_ISLNK(st.st_mode)) {
          return Errorf(ErrorCode::kInvalidArgument, "\"{}\" is a symlink", walked);
        }
        if (!S_ISDIR(st.st_mode)) {
          return Errorf(ErrorCode::kInvalidArgument, "\"{}\" is not a directory", walked);
        }
      }
      if (err == ENOENT) {
        return Errorf(ErrorCode::kNotFound, "\"{}\" does not exist", walked);
      }
      return Errorf(ErrorCode::kInternal, "open {}: {}", walked, ErrnoText(err));
    }
    current = std::move(next);
  }
  return current;
}

namespace {

Status RemoveTreeAtDepth(int dirfd, const std::string& name, int depth) {
  // Entry paths are bounded, so a tree built from an image is far shallower than this; the
  // bound only keeps a tree from elsewhere from exhausting the stack or the descriptors.
  constexpr int kMaxDepth = 1024;
  if (depth > kMaxDepth) {
    return Errorf(ErrorCode::kInternal, "directory tree deeper than {} levels at {}", kMaxDepth,
                  name);
  }
  struct stat st {};
  if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) {
      return Ok();
    }
    return Errorf(ErrorCode::kInternal, "stat {}: {}", name, ErrnoText(errno));
  }
  if (!S_ISDIR(st.st_mode)) {
    if (::unlinkat(dirfd, name.c_str(), 0) != 0 && errno != ENOENT) {
      return Errorf(ErrorCode::kInternal, "unlink {}: {}", name, ErrnoText(errno));
    }
    return Ok();
  }
  UniqueFd fd(::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) {
    return Errorf(ErrorCode::kInternal, "open {}: {}", name, ErrnoText(errno));
  }
  // A directory the image made read-only (0555) can still be emptied by its owner once it
  // is writable again; root needs no such help.
  if ((st.st_mode & 0700) != 0700 && ::geteuid() == st.st_uid) {
    ::fchmod(fd.get(), (st.st_mode & 07777) | 0700);
  }
  std::vector<std::string> children;
  {
    int dup_fd = ::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0);
    DIR* dir = dup_fd >= 0 ? ::fdopendir(dup_fd) : nullptr;
    if (dir == nullptr) {
      int err = errno;
      if (dup_fd >= 0) {
        ::close(dup_fd);
      }
      return Errorf(ErrorCode::kInternal, "opendir {}: {}", name, ErrnoText(err));
    }
    while (struct dirent* e = ::readdir(dir)) {
      std::string_view child = e->d_name;
      if (child != "." && child != "..") {
        children.emplace_back(child);
      }
    }
    ::closedir(dir);
  }
  for (const std::string& child : children) {
    AIRLOCK_TRY(RemoveTreeAtDepth(fd.get(), child, depth + 1));
  }
  if (::unlinkat(dirfd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) {
    return Errorf(ErrorCode::kInternal, "rmdir {}: {}", name, ErrnoText(errno));
  }
  return Ok();
}

}  // namespace

Status RemoveTreeAt(int dirfd, const std::string& name) {
  return RemoveTreeAtDepth(dirfd, name, 0);
}

Status RemoveTree(const std::string& path) {
  size_t slash = path.find_last_of('/');
  std::string parent =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  UniqueFd dir(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir.valid()) {
    if (errno == ENOENT) {
      return Ok();
    }
    return Errorf(ErrorCode::kInternal, "open {}: {}", parent, ErrnoText(errno));
  }
  auto removed = RemoveTreeAt(dir.get(), name);
  if (!removed) {
    return Errorf(ErrorCode::kInternal, "removing {}: {}", path, removed.error().message);
  }
  return Ok();
}

Status WriteFileAtomic(const std::string& path, std::string_view data, mode_t mode) {
  std::string tmp = fmt::format("{}.tmp-{}", path, RandomName());
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode));
  if (!fd.valid()) {
    return Errorf(ErrorCode::kInternal, "create {}: {}", tmp, ErrnoText(errno));
  }
  auto fail = [&](std::string_view what) {
    int err = errno;
    ::unlink(tmp.c_str());
    return Errorf(ErrorCode::kInternal, "{} {}: {}", what, tmp, ErrnoText(err));
  };
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd.get(), data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return fail("write");
    }
    done += static_cast<size_t>(n);
  }
  if (::fchmod(fd.get(), mode) != 0) {
    return fail("chmod");
  }
  if (::fsync(fd.get()) != 0) {
    return fail("fsync");
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return fail("rename");
  }
  return Ok();
}

Result<UniqueFd> OpenRegularFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) {
    int err = errno;
    if (err == ENOENT) {
      return Errorf(ErrorCode::kNotFound, "{} does not exist", path);
    }
    if (err == ELOOP) {
      return Errorf(ErrorCode::kInvalidArgument, "{} is a symlink", path);
    }
    return Errorf(ErrorCode::kInternal, "open {}: {}", path, ErrnoText(err));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return Errorf(ErrorCode::kInternal, "stat {}: {}", path, ErrnoText(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    return Errorf(ErrorCode::kInvalidArgument, "{} is not a regular file", path);
  }
  return fd;
}

Result<std::string> ReadFdBounded(int fd, uint64_t max_bytes, std::string_view what) {
  std::string out;
  char buf[64 * 1024];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return Errorf(ErrorCode::kInternal, "read {}: {}", what, ErrnoText(errno));
    }
    if (n == 0) {
      return out;
    }
    if (out.size() + static_cast<uint64_t>(n) > max_bytes) {
      return Errorf(ErrorCode::kPayloadTooLarge, "{} is larger than {} bytes", what, max_bytes);
    }
    out.append(buf, static_cast<size_t>(n));
  }
}

Result<std::string> ReadFileBounded(const std::string& path, uint64_t max_bytes) {
  AIRLOCK_ASSIGN_OR_RETURN(UniqueFd fd, OpenRegularFile(path));
  return ReadFdBounded(fd.get(), max_bytes, path);
}

Status MakeDirs(const std::string& path, mode_t mode) {
  if (path.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "empty directory path");
  }
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    std::string prefix = path.substr(0, pos);
    if (prefix.empty() || prefix == "/") {
      continue;
    }
    if (::mkdir(prefix.c_str(), mode) != 0 && errno != EEXIST) {
      return Errorf(ErrorCode::kInternal, "mkdir {}: {}", prefix, ErrnoText(errno));
    }
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return Errorf(ErrorCode::kInternal, "{} is not a directory", path);
  }
  return Ok();
}

std::string RandomName() { return HexEncode(RandomBytes(8)); }

Status RunInPrivateCwd(int dir, const std::function<Status()>& fn) {
  Status result = MakeError(ErrorCode::kInternal, "the unpacking thread did not run");
  std::thread worker([&] {
    if (::unshare(CLONE_FS) != 0) {
      result = Errorf(ErrorCode::kUnavailable,
                      "unshare(CLONE_FS) failed ({}): unpacking an image needs a thread with its "
                      "own working directory (is a seccomp filter blocking unshare?)",
                      ErrnoText(errno));
      return;
    }
    if (::fchdir(dir) != 0) {
      result = Errorf(ErrorCode::kInternal, "fchdir: {}", ErrnoText(errno));
      return;
    }
    ::umask(022);
    try {
      result = fn();
    } catch (const std::exception& e) {
      result = Errorf(ErrorCode::kInternal, "unpacking failed: {}", e.what());
    }
  });
  worker.join();
  return result;
}

}  // namespace airlock::images
