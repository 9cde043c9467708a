#include "sandbox/oci_spec.h"

#include <charconv>

#include "sandbox/seccomp_profile.h"

namespace airlock::sandbox {
namespace {

Json Mount(const std::string& destination, const std::string& type, const std::string& source,
           std::initializer_list<std::string> options) {
  Json o = Json::array();
  for (const auto& s : options) o.push_back(s);
  return {{"destination", destination}, {"type", type}, {"source", source}, {"options", o}};
}

Json Mappings(const std::vector<IdMapping>& ms) {
  Json a = Json::array();
  for (const auto& m : ms)
    a.push_back({{"containerID", m.container_id}, {"hostID", m.host_id}, {"size", m.size}});
  return a;
}

}  // namespace

bool WorkdirNeedsItsOwnMount(std::string_view workdir) {
  if (workdir.empty() || workdir[0] != '/' || workdir == "/") return false;
  for (std::string_view writable : {std::string_view(kSandboxHome), std::string_view("/tmp")}) {
    if (workdir == writable || (workdir.starts_with(writable) && workdir.size() > writable.size() &&
                                workdir[writable.size()] == '/')) {
      return false;
    }
  }
  // Nothing the sandbox's own mounts own, and no path that climbs.
  for (std::string_view reserved : {"/proc", "/dev", "/sys", "/run", "/.airlock", "/etc"}) {
    if (workdir == reserved || (workdir.starts_with(reserved) && workdir[reserved.size()] == '/'))
      return false;
  }
  return workdir.find("/../") == std::string_view::npos && !workdir.ends_with("/..");
}

Json BuildOciConfig(const OciBundleParams& p) {
  Json args =
      Json::array({kInitInSandbox, "--port", std::to_string(p.bridge_port), "--uid",
                   std::to_string(p.agent_uid), "--gid", std::to_string(p.agent_gid), "--home",
                   kSandboxHome, "--log-limit", std::to_string(p.log_limit_bytes)});
  if (!p.workdir.empty()) {
    args.push_back("--workdir");
    args.push_back(p.workdir);
  }
  if (p.identity_over_channel) {
    args.push_back("--identity");
    args.push_back("channel");
  }
  if (p.fetch_work) {
    args.push_back("--work");
    args.push_back("channel");
  }
  for (const auto& e : p.image_env) {
    args.push_back("--env");
    args.push_back(e);
  }
  args.push_back("--");
  for (const auto& a : p.command) args.push_back(a);

  // init needs these to become the agent's user; it drops all of them (the agent gets none)
  // and keeps only CAP_KILL for itself, to forward signals to the agent.
  Json caps = Json::array({"CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_KILL"});
  Json process = {
      {"terminal", false},
      {"user", {{"uid", 0}, {"gid", 0}}},
      {"args", args},
      {"env", p.env},
      {"cwd", "/"},
      {"capabilities",
       {{"bounding", caps},
        {"effective", caps},
        {"permitted", caps},
        {"inheritable", Json::array()},
        {"ambient", Json::array()}}},
      {"rlimits", Json::array({{{"type", "RLIMIT_NOFILE"}, {"hard", 4096}, {"soft", 4096}},
                               {{"type", "RLIMIT_CORE"}, {"hard", 0}, {"soft", 0}}})},
      {"noNewPrivileges", true},
  };
  if (p.init_oom_score_adj) process["oomScoreAdj"] = *p.init_oom_score_adj;

  std::string tmp_size = fmt::format("size={}k", std::max<int64_t>(p.tmp_bytes / 1024, 64));
  std::string home_opts = fmt::format("uid={},gid={}", p.agent_uid, p.agent_gid);
  Json mounts = Json::array();
  mounts.push_back(Mount("/proc", "proc", "proc", {"nosuid", "noexec", "nodev"}));
  mounts.push_back(
      Mount("/dev", "tmpfs", "tmpfs", {"nosuid", "noexec", "strictatime", "mode=755", "size=64k"}));
  mounts.push_back(
      Mount("/dev/shm", "tmpfs", "shm", {"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}));
  if (p.rootless) {
    // A user namespace cannot mount sysfs for a network namespace it did not create first
    // on every kernel; a read-only bind of the host's is what rootless runtimes do.
    mounts.push_back(Mount("/sys", "none", "/sys", {"rbind", "nosuid", "noexec", "nodev", "ro"}));
  } else {
    mounts.push_back(Mount("/sys", "sysfs", "sysfs", {"nosuid", "noexec", "nodev", "ro"}));
    if (p.mount_cgroupfs) {
      mounts.push_back(Mount("/sys/fs/cgroup", "cgroup", "cgroup",
                             {"nosuid", "noexec", "nodev", "relatime", "ro"}));
    }
  }
  mounts.push_back(Mount("/tmp", "tmpfs", "tmpfs", {"nosuid", "nodev", "mode=1777", tmp_size}));
  mounts.push_back(
      Mount(kSandboxHome, "tmpfs", "tmpfs", {"nosuid", "nodev", "mode=700", tmp_size, home_opts}));
  mounts.push_back(Mount("/run", "tmpfs", "tmpfs", {"nosuid", "nodev", "mode=755", "size=16384k"}));
  // An image's working directory elsewhere on the read-only image: writable for the agent,
  // starting with what the image has there (crun's tmpcopyup copies it in, as a volume over
  // an image directory is filled), within the same size as /tmp. The session's files are
  // copied into it.
  if (WorkdirNeedsItsOwnMount(p.workdir)) {
    mounts.push_back(Mount(p.workdir, "tmpfs", "tmpfs",
                           {"nosuid", "nodev", "mode=755", tmp_size, home_opts, "tmpcopyup"}));
  }
  for (const auto& dir : p.host_binds) {
    mounts.push_back(Mount(dir, "bind", dir, {"rbind", "ro", "nosuid", "nodev"}));
  }
  if (!p.passwd_host_path.empty()) {
    mounts.push_back(Mount("/etc/passwd", "bind", p.passwd_host_path,
                           {"bind", "ro", "nosuid", "nodev", "noexec"}));
  }
  if (!p.group_host_path.empty()) {
    mounts.push_back(Mount("/etc/group", "bind", p.group_host_path,
                           {"bind", "ro", "nosuid", "nodev", "noexec"}));
  }
  // /.airlock: a root-owned tmpfs holding the bind of init and of the channel directory.
  mounts.push_back(
      Mount("/.airlock", "tmpfs", "tmpfs", {"nosuid", "nodev", "mode=755", "size=64k"}));
  mounts.push_back(
      Mount(kInitInSandbox, "bind", p.init_host_path, {"bind", "ro", "nosuid", "nodev"}));
  mounts.push_back(Mount(kChannelDirInSandbox, "bind", p.channel_host_dir,
                         {"bind", "ro", "nosuid", "nodev", "noexec"}));

  Json namespaces = Json::array();
  for (const char* ns : {"pid", "network", "ipc", "uts", "mount", "cgroup"})
    namespaces.push_back({{"type", ns}});
  Json linux_ = {
      {"namespaces", namespaces},
      {"maskedPaths",
       {"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
        "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
        "/sys/devices/virtual/powercap"}},
      {"readonlyPaths", {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}},
      {"seccomp", SandboxSeccompProfile()},
      // The sandbox's own network namespace: these bound each of its sockets only. The
      // host-wide tcp_mem is not per namespace; the cgroup (kernel_tcp_bytes, or v2) bounds
      // the sum.
      {"sysctl", {{"net.ipv4.tcp_rmem", kSandboxTcpRmem}, {"net.ipv4.tcp_wmem", kSandboxTcpWmem}}},
  };
  if (!p.rootless && p.mount_cgroupfs) {
    // On cgroup v1 crun mounts /sys/fs/cgroup as a world-writable (1777) tmpfs holding the
    // read-only controller mounts: make that tmpfs read-only too. crun does that with a
    // recursive bind whose copies of the controller mounts are read-write (it makes the
    // originals read-only only afterwards, underneath), which would leave every v1 hierarchy,
    // and the release_agent of any the sandbox sees from its root, writable to a uid 0
    // inside: make each read-only again. Runtimes skip paths that do not exist.
    linux_["readonlyPaths"].push_back("/sys/fs/cgroup");
    for (const auto& dir : p.cgroup_v1_dirs) {
      linux_["readonlyPaths"].push_back("/sys/fs/cgroup/" + dir);
    }
  }
  if (p.rootless) {
    linux_["namespaces"].push_back({{"type", "user"}});
    linux_["uidMappings"] = Mappings(p.uid_mappings);
    linux_["gidMappings"] = Mappings(p.gid_mappings);
  }
  Json resources = {{"devices", Json::array({{{"allow", false}, {"access", "rwm"}}})}};
  if (p.memory_bytes > 0) {
    resources["memory"] = {{"limit", p.memory_bytes}};
    if (p.limit_swap) resources["memory"]["swap"] = p.memory_bytes;
    if (p.kernel_tcp_bytes > 0) resources["memory"]["kernelTCP"] = p.kernel_tcp_bytes;
  }
  if (p.pids > 0) resources["pids"] = {{"limit", p.pids}};
  if (p.cpus > 0) {
    constexpr int64_t kPeriod = 100000;
    resources["cpu"] = {{"period", kPeriod}, {"quota", static_cast<int64_t>(p.cpus * kPeriod)}};
  }
  linux_["resources"] = resources;
  if (!p.cgroups_path.empty()) linux_["cgroupsPath"] = p.cgroups_path;

  return {
      {"ociVersion", "1.0.2"},
      {"process", process},
      {"root", {{"path", p.rootfs}, {"readonly", true}}},
      {"hostname", p.hostname},
      {"mounts", mounts},
      {"linux", linux_},
  };
}

std::optional<uint32_t> AgentUidOf(const Json& config) {
  if (!config.is_object() || !config.contains("process") || !config["process"].is_object())
    return std::nullopt;
  const Json& args = config["process"].value("args", Json::array());
  if (!args.is_array()) return std::nullopt;
  // init's options end at "--"; what follows is the agent's own argv.
  for (size_t i = 0; i + 1 < args.size() && args[i] != "--"; ++i) {
    if (args[i] != "--uid") continue;
    if (!args[i + 1].is_string()) return std::nullopt;
    const std::string& v = args[i + 1].get_ref<const std::string&>();
    uint64_t uid = 0;
    auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), uid);
    if (v.empty() || ec != std::errc() || end != v.data() + v.size() || uid >= UINT32_MAX)
      return std::nullopt;
    return static_cast<uint32_t>(uid);
  }
  return std::nullopt;
}

}  // namespace airlock::sandbox
