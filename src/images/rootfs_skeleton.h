#pragma once

#include <string>
#include <vector>

#include "common/result.h"

namespace airlock::images {

// Makes every path of `mount_points` (absolute, clean) a directory in the tree at
// `rootfs_fd`, creating what is missing. Whatever else is at such a path, or at a directory
// above it — a file, a symlink — is replaced by an empty directory: the sandbox runtime
// mounts over these paths in a root that is read-only by then, and a symlink there would
// send the mount somewhere else. Existing directories are kept with their content.
Status EnsureMountPoints(int rootfs_fd, const std::vector<std::string>& mount_points);

// Checks a mount-point list from the configuration: absolute, no "." or ".." components,
// no empty components, at most 64 entries.
Status ValidateMountPoints(const std::vector<std::string>& mount_points);

// How the built-in `host` image mirrors this machine's top-level system directories.
struct HostPlan {
  struct Entry {
    std::string name;     // "usr", "bin", ...
    bool is_dir = false;  // a real directory: bind-mounted read-only
    std::string target;   // else the symlink's target, recreated as is
  };
  std::vector<Entry> entries;
  std::vector<std::string> host_binds;  // "/usr", ...: the real directories
  std::string fingerprint;              // changes when the plan or the mount points change
};

// Looks at /usr, /bin, /sbin, /lib, /lib64, /lib32 and /libx32 of this machine.
HostPlan PlanHostImage(const std::vector<std::string>& mount_points);

// Builds the `host` image's skeleton into the empty directory `rootfs_fd`: the mount points,
// an empty directory for each directory of `plan` (the runtime binds the host's over it), a
// symlink for each symlink (Debian's merged /usr: bin -> usr/bin), and a generated /etc
// (passwd and group with root and sandbox 1000, hosts, nsswitch.conf, an empty resolv.conf)
// so nothing of the host's /etc shows through.
Status BuildHostSkeleton(int rootfs_fd, const HostPlan& plan,
                         const std::vector<std::string>& mount_points);

}  // namespace airlock::images
