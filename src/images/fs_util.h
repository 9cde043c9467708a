#pragma once

// File-system helpers for the image store. Everything that walks a tree built from an image
// works relative to a directory descriptor and never follows a symlink: an image is hostile
// input, and a symlink in it may point anywhere on the host.

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"

namespace airlock::images {

// Owns a file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd();

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// An exclusive flock(2) held until destruction. flock locks belong to the open file
// description, so two threads of one process that each open the file exclude each other
// just as two processes do.
class FileLock {
 public:
  // Opens (creating it if needed) `path` and waits for the lock.
  static Result<FileLock> Acquire(const std::string& path);
  // Locks an open descriptor (a directory works too); with `wait` false, fails with
  // kConflict at once if someone else holds it.
  static Result<FileLock> Lock(UniqueFd fd, bool wait);

  FileLock(FileLock&&) = default;
  FileLock& operator=(FileLock&&) = default;

 private:
  explicit FileLock(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;  // closing it releases the lock
};

// "a/b/c" from an archive entry name: "./" prefixes, "." and empty components dropped ("" for
// the top directory itself). Refuses, with kInvalidArgument, an absolute path, a ".."
// component, a component longer than 255 bytes, a path longer than `max_length` bytes.
Result<std::string> CleanRelativePath(std::string_view path, size_t max_length);

// The components of a clean relative path ("" has none).
std::vector<std::string_view> SplitPath(std::string_view clean);

// Opens the directory `rel` (clean, relative) beneath `root`, one component at a time with
// O_NOFOLLOW. A component that is a symlink or not a directory fails with kInvalidArgument
// naming it; with `create`, missing components are made (mode 0755).
Result<UniqueFd> OpenDirBeneath(int root, std::string_view rel, bool create);

// Removes `name` in `dirfd` and everything below it without following symlinks. A missing
// entry is not an error.
Status RemoveTreeAt(int dirfd, const std::string& name);
// RemoveTreeAt for a whole path; the last component is not followed if it is a symlink.
Status RemoveTree(const std::string& path);

// Writes `data` to `path` through a temporary name in the same directory and rename(2), so
// readers see the old content or the new, never a part.
Status WriteFileAtomic(const std::string& path, std::string_view data, mode_t mode = 0644);
// Opens a regular file for reading; the last component must not be a symlink.
Result<UniqueFd> OpenRegularFile(const std::string& path);
// Reads what is left of an open file, at most `max_bytes` (kPayloadTooLarge beyond).
Result<std::string> ReadFdBounded(int fd, uint64_t max_bytes, std::string_view what);
// OpenRegularFile + ReadFdBounded.
Result<std::string> ReadFileBounded(const std::string& path, uint64_t max_bytes);

// mkdir -p; existing directories are fine.
Status MakeDirs(const std::string& path, mode_t mode = 0755);

// 16 random lowercase hex characters, for temporary names.
std::string RandomName();

// Runs `fn` on a new thread whose working directory (and umask) is its own, set to `dir`,
// and returns its status. libarchive's secure extraction flags work on paths relative to the
// working directory; a server must not change the process-wide one, so the unpacking thread
// gets a private one with unshare(CLONE_FS).
Status RunInPrivateCwd(int dir, const std::function<Status()>& fn);

std::string ErrnoText(int err);

}  // namespace airlock::images
