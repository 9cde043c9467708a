#include "sandbox/cgroups.h"

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

namespace airlock::sandbox {
namespace {

std::string ReadSmallFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<std::string> Split(std::string_view s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(sep, start);
    if (end == std::string_view::npos) end = s.size();
    if (end > start) out.emplace_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

// mountinfo escapes blanks in paths as octal (\040).
std::string Unescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      int v = 0;
      bool ok = true;
      for (size_t k = 1; k <= 3; ++k) {
        if (s[i + k] < '0' || s[i + k] > '7') {
          ok = false;
          break;
        }
        v = v * 8 + (s[i + k] - '0');
      }
      if (ok) {
        out.push_back(static_cast<char>(v));
        i += 3;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

// Reads the "oom_kill N" line of a memory.events / memory.oom_control file.
int64_t OomKillField(const std::string& text) {
  std::istringstream in(text);
  std::string key;
  int64_t value = 0;
  while (in >> key >> value) {
    if (key == "oom_kill") return value;
  }
  return -1;
}

}  // namespace

std::string_view CgroupModeName(CgroupMode m) {
  switch (m) {
    case CgroupMode::kNone:
      return "none";
    case CgroupMode::kV1:
      return "v1";
    case CgroupMode::kV2:
      return "v2";
    case CgroupMode::kHybrid:
      return "hybrid";
  }
  return "none";
}

CgroupLayout ParseCgroupLayout(std::string_view mountinfo,
                               const std::function<std::string(const std::string&)>& read_file) {
  CgroupLayout layout;
  for (const auto& line : Split(mountinfo, '\n')) {
    // id parent major:minor root mount-point options [optional...] - fstype source super-options
    size_t dash = line.find(" - ");
    if (dash == std::string::npos) continue;
    auto left = Split(std::string_view(line).substr(0, dash), ' ');
    auto right = Split(std::string_view(line).substr(dash + 3), ' ');
    if (left.size() < 5 || right.size() < 3) continue;
    std::string mount_point = Unescape(left[4]);
    const std::string& fstype = right[0];
    if (fstype == "cgroup2") {
      if (layout.v2_mount.empty()) layout.v2_mount = mount_point;
    } else if (fstype == "cgroup") {
      for (const auto& opt : Split(right[2], ',')) {
        // Super options that are not controllers.
        static const std::set<std::string, std::less<>> kNotControllers = {
            "rw", "ro", "xattr", "noprefix", "clone_children", "cpuset_v2_mode", "favordynmods"};
        if (kNotControllers.count(opt) || opt.find('=') != std::string::npos) continue;
        layout.v1_mounts.emplace(opt, mount_point);
      }
    }
  }
  if (!layout.v2_mount.empty()) {
    std::string text = read_file(layout.v2_mount + "/cgroup.controllers");
    for (auto& c : Split(text, ' ')) {
      while (!c.empty() && (c.back() == '\n' || c.back() == '\r')) c.pop_back();
      if (!c.empty()) layout.v2_controllers.push_back(c);
    }
  }
  bool v1 = !layout.v1_mounts.empty(), v2 = !layout.v2_mount.empty();
  layout.mode = v1 && v2 ? CgroupMode::kHybrid
                : v1     ? CgroupMode::kV1
                : v2     ? CgroupMode::kV2
                         : CgroupMode::kNone;
  return layout;
}

CgroupLayout DetectCgroups() {
  return ParseCgroupLayout(ReadSmallFile("/proc/self/mountinfo"), ReadSmallFile);
}

Result<std::vector<std::string>> MoveHybridControllersToV1(const CgroupLayout& layout) {
  std::vector<std::string> moved;
  if (layout.mode != CgroupMode::kHybrid) return moved;
  // The v1 hierarchies live side by side, normally under /sys/fs/cgroup.
  std::string parent = "/sys/fs/cgroup";
  if (auto it = layout.v1_mounts.find("memory"); it != layout.v1_mounts.end()) {
    parent = it->second.substr(0, it->second.rfind('/'));
  }
  for (const auto& c : layout.v2_controllers) {
    if (layout.v1_mounts.count(c)) continue;
    std::string target = parent + "/" + c;
    if (::mkdir(target.c_str(), 0555) != 0 && errno != EEXIST) {
      return Errorf(
          ErrorCode::kUnavailable,
          "cgroups: cannot create {} to move the \"{}\" controller off cgroup v2 (crun refuses "
          "hybrid hosts otherwise): {}",
          target, c, std::strerror(errno));
    }
    if (::mount("cgroup", target.c_str(), "cgroup", MS_NOSUID | MS_NODEV | MS_NOEXEC, c.c_str()) !=
        0) {
      return Errorf(
          ErrorCode::kUnavailable,
          "cgroups: cannot mount a v1 \"{}\" hierarchy on {} (crun refuses hybrid hosts whose "
          "cgroup v2 holds controllers; run the control plane as root once, or mount it by hand): "
          "{}",
          c, target, std::strerror(errno));
    }
    moved.push_back(c);
  }
  return moved;
}

std::vector<std::string> V1HierarchyDirs(std::string_view proc_self_cgroup) {
  std::set<std::string> dirs;
  for (const auto& line : Split(proc_self_cgroup, '\n')) {
    // hierarchy-id:controller-list:path
    size_t a = line.find(':');
    size_t b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    if (line.compare(0, a, "0") == 0) {
      dirs.insert("unified");
      continue;
    }
    std::vector<std::string> parts;
    for (auto c : Split(std::string_view(line).substr(a + 1, b - a - 1), ',')) {
      if (c.starts_with("name=")) c = c.substr(5);
      if (!c.empty()) parts.push_back(c);
    }
    if (parts.empty()) continue;
    std::string joint;
    for (const auto& p : parts) {
      joint += (joint.empty() ? "" : ",") + p;
      dirs.insert(p);
    }
    dirs.insert(joint);
  }
  return {dirs.begin(), dirs.end()};
}

int64_t OomKillCount(const CgroupLayout& layout, const std::string& rel) {
  if (auto it = layout.v1_mounts.find("memory"); it != layout.v1_mounts.end()) {
    return OomKillField(ReadSmallFile(it->second + rel + "/memory.oom_control"));
  }
  if (!layout.v2_mount.empty())
    return OomKillField(ReadSmallFile(layout.v2_mount + rel + "/memory.events"));
  return -1;
}

Status WriteCgroupFile(const std::string& path, std::string_view value) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  bool ok =
      fd >= 0 && ::write(fd, value.data(), value.size()) == static_cast<ssize_t>(value.size());
  int err = errno;
  if (fd >= 0) ::close(fd);
  if (!ok)
    return Errorf(ErrorCode::kInternal, "write {:?} to {}: {}", value, path, std::strerror(err));
  return Ok();
}

std::string MemoryCgroupDir(const CgroupLayout& layout, const std::string& rel) {
  if (auto it = layout.v1_mounts.find("memory"); it != layout.v1_mounts.end()) {
    return it->second + rel;
  }
  if (layout.mode == CgroupMode::kV2 && !layout.v2_mount.empty()) return layout.v2_mount + rel;
  return {};
}

Result<std::string> MakeMemoryCgroup(const CgroupLayout& layout, const std::string& rel,
                                     int64_t memory_bytes) {
  const std::string dir = MemoryCgroupDir(layout, rel);
  if (dir.empty()) {
    return MakeError(ErrorCode::kUnavailable, "this host has no memory cgroup controller");
  }
  const bool v1 = layout.v1_mounts.contains("memory");
  if (!v1) {
    // v2: a controller works in a cgroup only when every parent enables it for its children.
    std::string at = layout.v2_mount;
    for (const auto& part : Split(rel, '/')) {
      AIRLOCK_TRY(WriteCgroupFile(at + "/cgroup.subtree_control", "+memory"));
      at += "/" + part;
      if (at == dir) break;
      ::mkdir(at.c_str(), 0755);
    }
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Errorf(ErrorCode::kInternal, "create {}: {}", dir, ec.message());
  const std::string bytes = std::to_string(memory_bytes);
  if (v1) {
    AIRLOCK_TRY(WriteCgroupFile(dir + "/memory.limit_in_bytes", bytes));
    // Memory + swap, where the kernel accounts swap: no way around the limit through swap.
    if (std::filesystem::exists(dir + "/memory.memsw.limit_in_bytes")) {
      AIRLOCK_TRY(WriteCgroupFile(dir + "/memory.memsw.limit_in_bytes", bytes));
    }
  } else {
    AIRLOCK_TRY(WriteCgroupFile(dir + "/memory.max", bytes));
    if (std::filesystem::exists(dir + "/memory.swap.max")) {
      AIRLOCK_TRY(WriteCgroupFile(dir + "/memory.swap.max", "0"));
    }
  }
  return dir + "/cgroup.procs";
}

void RemoveMemoryCgroup(const CgroupLayout& layout, const std::string& rel) {
  const std::string dir = MemoryCgroupDir(layout, rel);
  if (dir.empty()) return;
  // A process that exited keeps its cgroup busy until it is reaped, and a daemon's reaper is
  // PID 1 (or a subreaper), which gets to it when it does: retried for up to 2 s.
  for (int i = 0; i < 1000 && ::rmdir(dir.c_str()) != 0 && errno == EBUSY; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

}  // namespace airlock::sandbox
