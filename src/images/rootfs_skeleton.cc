#include "images/rootfs_skeleton.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string_view>

#include <fmt/format.h>

#include "common/crypto.h"
#include "common/json_util.h"
#include "images/fs_util.h"

namespace airlock::images {

namespace {

constexpr const char* kHostDirs[] = {"usr", "bin", "sbin", "lib", "lib64", "lib32", "libx32"};

// The skeleton's /etc: just enough for a shell, `id` and name lookups of localhost, and
// nothing taken from the host's /etc.
constexpr std::string_view kPasswd =
    "root:x:0:0:root:/root:/bin/sh\n"
    "sandbox:x:1000:1000::/home/sandbox:/bin/sh\n";
constexpr std::string_view kGroup =
    "root:x:0:\n"
    "sandbox:x:1000:\n";
constexpr std::string_view kHosts =
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n";
constexpr std::string_view kNsswitch =
    "passwd: files\n"
    "group: files\n"
    "shadow: files\n"
    "hosts: files dns\n"
    "networks: files\n"
    "protocols: files\n"
    "services: files\n";

Status WriteFileAt(int dirfd, const char* name, std::string_view data) {
  UniqueFd fd(::openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644));
  if (!fd.valid()) {
    return Errorf(ErrorCode::kInternal, "create /etc/{}: {}", name, ErrnoText(errno));
  }
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd.get(), data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return Errorf(ErrorCode::kInternal, "write /etc/{}: {}", name, ErrnoText(errno));
    }
    done += static_cast<size_t>(n);
  }
  if (::fchmod(fd.get(), 0644) != 0) {
    return Errorf(ErrorCode::kInternal, "chmod /etc/{}: {}", name, ErrnoText(errno));
  }
  return Ok();
}

}  // namespace

Status ValidateMountPoints(const std::vector<std::string>& mount_points) {
  if (mount_points.size() > 64) {
    return MakeError(ErrorCode::kInvalidArgument, "at most 64 mount points");
  }
  for (const std::string& mp : mount_points) {
    auto clean = mp.starts_with('/') ? CleanRelativePath(std::string_view(mp).substr(1), 1024)
                                     : Result<std::string>();
    if (!mp.starts_with('/') || !clean || clean->empty() || "/" + *clean != mp) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "mount point \"{}\" must be a clean absolute path (like /home/sandbox)", mp);
    }
  }
  return Ok();
}

Status EnsureMountPoints(int rootfs_fd, const std::vector<std::string>& mount_points) {
  AIRLOCK_TRY(ValidateMountPoints(mount_points));
  for (const std::string& mp : mount_points) {
    UniqueFd current(::fcntl(rootfs_fd, F_DUPFD_CLOEXEC, 0));
    if (!current.valid()) {
      return Errorf(ErrorCode::kInternal, "dup: {}", ErrnoText(errno));
    }
    for (std::string_view part : SplitPath(std::string_view(mp).substr(1))) {
      std::string name(part);
      struct stat st {};
      bool exists = ::fstatat(current.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
      if (exists && !S_ISDIR(st.st_mode)) {
        AIRLOCK_TRY(RemoveTreeAt(current.get(), name));
        exists = false;
      }
      if (!exists && ::mkdirat(current.get(), name.c_str(), 0755) != 0) {
        return Errorf(ErrorCode::kInternal, "mount point {}: mkdir {}: {}", mp, name,
                      ErrnoText(errno));
      }
      UniqueFd next(
          ::openat(current.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!next.valid()) {
        return Errorf(ErrorCode::kInternal, "mount point {}: open {}: {}", mp, name,
                      ErrnoText(errno));
      }
      current = std::move(next);
    }
  }
  return Ok();
}

HostPlan PlanHostImage(const std::vector<std::string>& mount_points) {
  HostPlan plan;
  Json fingerprint = {{"version", 1}, {"mount_points", mount_points}, {"entries", Json::array()}};
  for (const char* name : kHostDirs) {
    std::string path = fmt::format("/{}", name);
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
      continue;
    }
    HostPlan::Entry entry{name, false, ""};
    if (S_ISDIR(st.st_mode)) {
      entry.is_dir = true;
      plan.host_binds.push_back(path);
    } else if (S_ISLNK(st.st_mode)) {
      char target[4096];
      ssize_t n = ::readlink(path.c_str(), target, sizeof target - 1);
      if (n <= 0) {
        continue;
      }
      entry.target.assign(target, static_cast<size_t>(n));
    } else {
      continue;
    }
    fingerprint["entries"].push_back(
        {{"name", entry.name}, {"dir", entry.is_dir}, {"target", entry.target}});
    plan.entries.push_back(std::move(entry));
  }
  plan.fingerprint = Sha256Hex(DumpJson(fingerprint));
  return plan;
}

Status BuildHostSkeleton(int rootfs_fd, const HostPlan& plan,
                         const std::vector<std::string>& mount_points) {
  for (const HostPlan::Entry& e : plan.entries) {
    int rc = e.is_dir ? ::mkdirat(rootfs_fd, e.name.c_str(), 0755)
                      : ::symlinkat(e.target.c_str(), rootfs_fd, e.name.c_str());
    if (rc != 0) {
      return Errorf(ErrorCode::kInternal, "host image: /{}: {}", e.name, ErrnoText(errno));
    }
  }
  AIRLOCK_TRY(EnsureMountPoints(rootfs_fd, mount_points));
  AIRLOCK_ASSIGN_OR_RETURN(UniqueFd etc, OpenDirBeneath(rootfs_fd, "etc", /*create=*/true));
  AIRLOCK_TRY(WriteFileAt(etc.get(), "passwd", kPasswd));
  AIRLOCK_TRY(WriteFileAt(etc.get(), "group", kGroup));
  AIRLOCK_TRY(WriteFileAt(etc.get(), "hosts", kHosts));
  AIRLOCK_TRY(WriteFileAt(etc.get(), "nsswitch.conf", kNsswitch));
  AIRLOCK_TRY(WriteFileAt(etc.get(), "resolv.conf", ""));
  if (::fchmod(rootfs_fd, 0755) != 0) {
    return Errorf(ErrorCode::kInternal, "host image: chmod /: {}", ErrnoText(errno));
  }
  return Ok();
}

}  // namespace airlock::images
