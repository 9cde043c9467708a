#include "sandbox/cgroups.h"

#include <gtest/gtest.h>

namespace airlock::sandbox {
namespace {

// Recorded from this project's CI host (Debian 12 guest, hybrid) and trimmed.
constexpr const char* kHybrid =
    "30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
    "34 30 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "36 30 0:32 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer\n"
    "38 30 0:34 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n"
    "39 30 0:35 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd\n"
    "40 30 0:36 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";

// A stock Debian 12 host: pure v2.
constexpr const char* kV2 =
    "29 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 "
    "rw,nsdelegate,memory_recursiveprot\n";

TEST(CgroupLayout, HybridHostWithHugetlbOnV2) {
  auto layout = ParseCgroupLayout(kHybrid, [](const std::string& path) {
    EXPECT_EQ(path, "/sys/fs/cgroup/unified/cgroup.controllers");
    return std::string("hugetlb\n");
  });
  EXPECT_EQ(layout.mode, CgroupMode::kHybrid);
  EXPECT_EQ(layout.v2_mount, "/sys/fs/cgroup/unified");
  EXPECT_EQ(layout.v2_controllers, std::vector<std::string>{"hugetlb"});
  EXPECT_EQ(layout.v1_mounts.at("memory"), "/sys/fs/cgroup/memory");
  EXPECT_EQ(layout.v1_mounts.at("freezer"), "/sys/fs/cgroup/freezer");
  EXPECT_FALSE(layout.v1_mounts.count("name=systemd"));
  EXPECT_FALSE(layout.v1_mounts.count("xattr"));
}

TEST(CgroupLayout, PureV2) {
  auto layout = ParseCgroupLayout(
      kV2, [](const std::string&) { return std::string("cpuset cpu io memory pids\n"); });
  EXPECT_EQ(layout.mode, CgroupMode::kV2);
  EXPECT_EQ(layout.v2_mount, "/sys/fs/cgroup");
  EXPECT_EQ(layout.v2_controllers.size(), 5u);
  EXPECT_TRUE(layout.v1_mounts.empty());
}

TEST(CgroupLayout, NothingMountedAndGarbage) {
  auto layout = ParseCgroupLayout("garbage\n\n1 2 3\n - -\n",
                                  [](const std::string&) { return std::string(); });
  EXPECT_EQ(layout.mode, CgroupMode::kNone);
}

TEST(CgroupLayout, EscapedMountPoint) {
  auto layout = ParseCgroupLayout("1 0 0:1 / /my\\040cgroups/memory rw - cgroup cgroup rw,memory\n",
                                  [](const std::string&) { return std::string(); });
  EXPECT_EQ(layout.mode, CgroupMode::kV1);
  EXPECT_EQ(layout.v1_mounts.at("memory"), "/my cgroups/memory");
}

TEST(CgroupLayout, MoveIsANoOpOffHybrid) {
  auto layout = ParseCgroupLayout(kV2, [](const std::string&) { return std::string("memory\n"); });
  auto moved = MoveHybridControllersToV1(layout);
  ASSERT_TRUE(moved.has_value());
  EXPECT_TRUE(moved->empty());
}

TEST(CgroupLayout, V1HierarchyDirsNameWhatTheRuntimeMounts) {
  // A joint mount gets its own directory and a symlink per part; named hierarchies lose
  // "name="; the v2 line is "unified".
  auto dirs = V1HierarchyDirs(
      "12:hugetlb:/\n11:cpu,cpuacct:/x\n3:name=systemd:/y\n2:memory:/\n0::/z\nbad\n");
  EXPECT_EQ(dirs, (std::vector<std::string>{"cpu", "cpu,cpuacct", "cpuacct", "hugetlb", "memory",
                                            "systemd", "unified"}));
  EXPECT_EQ(V1HierarchyDirs("0::/\n"), std::vector<std::string>{"unified"});
  EXPECT_TRUE(V1HierarchyDirs("").empty());
}

TEST(CgroupLayout, ThisHostIsDetected) {
  auto layout = DetectCgroups();
  EXPECT_NE(layout.mode, CgroupMode::kNone) << "no cgroup filesystem mounted on this host";
}

}  // namespace
}  // namespace airlock::sandbox
