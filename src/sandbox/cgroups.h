#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace airlock::sandbox {

// How this host mounts cgroups. Debian 12 boots pure v2; this project's CI host is a
// "hybrid" one: every controller on v1 hierarchies plus a v2 mount (/sys/fs/cgroup/unified)
// that still holds the otherwise unused hugetlb controller.
enum class CgroupMode { kNone, kV1, kV2, kHybrid };
std::string_view CgroupModeName(CgroupMode m);

struct CgroupLayout {
  CgroupMode mode = CgroupMode::kNone;
  std::string v2_mount;                          // where cgroup2 is mounted, if anywhere
  std::vector<std::string> v2_controllers;       // cgroup.controllers of the v2 root
  std::map<std::string, std::string> v1_mounts;  // controller -> mount point
};

// Parses /proc/self/mountinfo text. `read_file` returns the content of a file (the v2
// root's cgroup.controllers); injected so the parser can be tested on recorded samples.
CgroupLayout ParseCgroupLayout(std::string_view mountinfo,
                               const std::function<std::string(const std::string&)>& read_file);
CgroupLayout DetectCgroups();

// crun refuses a hybrid host whose v2 hierarchy holds any controller ("cgroups in hybrid
// mode not supported, drop all controllers from cgroupv2"), even with cgroups disabled.
// Mounting a v1 hierarchy for such a controller moves it off v2. Needs root; returns the
// controllers it moved. A no-op on pure v1 or v2 hosts.
Result<std::vector<std::string>> MoveHybridControllersToV1(const CgroupLayout& layout);

// The directories a container runtime creates under the sandbox's /sys/fs/cgroup on a v1 or
// hybrid host, from /proc/self/cgroup text (the runtime mounts one hierarchy per line of its
// own /proc/self/cgroup): "memory", "systemd" for name=systemd, "cpu,cpuacct" and each of its
// parts for a joint mount, "unified" for the v2 line.
std::vector<std::string> V1HierarchyDirs(std::string_view proc_self_cgroup);

// The number of OOM kills in the cgroup at `rel` (e.g. "/airlock/<id>"); -1 if unknown.
int64_t OomKillCount(const CgroupLayout& layout, const std::string& rel);

// Writes `value` to a cgroup control file (which must exist: the kernel makes them), in one
// write, as the kernel expects; the error names the file and errno.
Status WriteCgroupFile(const std::string& path, std::string_view value);

// The directory of `rel` (e.g. "/airlock/<id>") in the hierarchy that has the memory
// controller: the v1 memory hierarchy, or the unified one on a pure v2 host; "" if none.
std::string MemoryCgroupDir(const CgroupLayout& layout, const std::string& rel);

// A memory cgroup at `rel` (e.g. "/airlock/<id>") for a process a backend starts itself
// (QEMU): its memory limit `memory_bytes`, swap included where the host accounts for swap.
// In the v1 memory hierarchy, or on a pure v2 host in the unified one (with the memory
// controller enabled on the way down). Returns the cgroup.procs file to join; kUnavailable
// when the host has no memory controller to use (the caller says so and goes on).
Result<std::string> MakeMemoryCgroup(const CgroupLayout& layout, const std::string& rel,
                                     int64_t memory_bytes);

// Removes the cgroup MakeMemoryCgroup made at `rel`, whose processes must have exited by
// then; waits up to 2 s for them to be reaped. Quiet when there is none.
void RemoveMemoryCgroup(const CgroupLayout& layout, const std::string& rel);

}  // namespace airlock::sandbox
