#include "sandbox/backend_oci.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include <fmt/ranges.h>

#include "common/log.h"
#include "sandbox/cgroups.h"
#include "sandbox/oci_spec.h"
#include "sandbox/subprocess.h"
#include "sandbox/uid_pool.h"

namespace airlock::sandbox {
namespace {

namespace fs = std::filesystem;

constexpr const char* kIdPrefix = "airlock-";
constexpr const char* kCgroupParent = "/airlock";
// The agent's uid inside a rootless sandbox's user namespace (mapped into /etc/subuid).
constexpr uint32_t kRootlessAgentId = 1000;

// "<container id>:<session work dir>". The work dir outlives the container (it holds the
// log), so logs stay readable after the sandbox is gone.
struct Handle {
  std::string id;
  std::string work_dir;
  std::string bundle() const { return work_dir + "/bundle"; }
  std::string log_path() const { return work_dir + "/sandbox.log"; }
  std::string runtime_log() const { return work_dir + "/runtime.log"; }
};

Result<Handle> Decode(const std::string& s) {
  size_t colon = s.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= s.size() || s[colon + 1] != '/' ||
      s.compare(0, std::strlen(kIdPrefix), kIdPrefix) != 0) {
    return MakeError(ErrorCode::kInvalidArgument, "bad oci sandbox handle");
  }
  return Handle{s.substr(0, colon), s.substr(colon + 1)};
}

std::string Tail(const std::string& path, size_t max) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return {};
  f.seekg(0, std::ios::end);
  auto size = static_cast<size_t>(std::max<std::streamoff>(f.tellg(), 0));
  f.seekg(static_cast<std::streamoff>(size > max ? size - max : 0));
  std::stringstream ss;
  ss << f.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

Status WriteFileAtomic(const std::string& path, const std::string& content, mode_t mode) {
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0) return Errorf(ErrorCode::kInternal, "open {}: {}", tmp, std::strerror(errno));
  size_t off = 0;
  while (off < content.size()) {
    ssize_t n = ::write(fd, content.data() + off, content.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      return Errorf(ErrorCode::kInternal, "write {}: {}", tmp, std::strerror(errno));
    }
    off += static_cast<size_t>(n);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return Errorf(ErrorCode::kInternal, "rename {}: {}", path, std::strerror(errno));
  }
  return Ok();
}

// The first range of /etc/subuid (or subgid) for `user`, if any.
std::optional<IdMapping> SubordinateRange(const std::string& file, const std::string& user,
                                          uint32_t id) {
  std::ifstream f(file);
  std::string line;
  while (std::getline(f, line)) {
    auto a = line.find(':'), b = line.rfind(':');
    if (a == std::string::npos || a == b) continue;
    std::string who = line.substr(0, a);
    if (who != user && who != std::to_string(id)) continue;
    try {
      return IdMapping{
          1, static_cast<uint32_t>(std::stoul(line.substr(a + 1, b - a - 1))),
          static_cast<uint32_t>(std::min<unsigned long>(std::stoul(line.substr(b + 1)), 65536))};
    } catch (...) {
      continue;
    }
  }
  return std::nullopt;
}

// The image's /etc/`name` (passwd, group); empty when it has no such regular file of at most
// 1 MiB. Neither /etc nor the file may be a symlink: resolved here, on the host, one could
// point at a host file.
std::string ReadImageEtc(const std::string& rootfs, const char* name) {
  struct stat st;
  if (::lstat((rootfs + "/etc").c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return {};
  std::string path = rootfs + "/etc/" + name;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return {};
  std::string content;
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size <= (1 << 20)) {
    content.resize(static_cast<size_t>(st.st_size));
    ssize_t n = ::read(fd, content.data(), content.size());
    content.resize(n > 0 ? static_cast<size_t>(n) : 0);
  }
  ::close(fd);
  return content;
}

// Field `i` (0-based) of a passwd or group line.
std::string EtcField(const std::string& line, int i) {
  size_t start = 0;
  for (int k = 0; k < i; ++k) {
    start = line.find(':', start);
    if (start == std::string::npos) return {};
    ++start;
  }
  return line.substr(start, line.find(':', start) - start);
}

std::optional<uint32_t> Number(const std::string& s) {
  uint32_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

// The image's /etc/passwd (or group) with the agent's entry put in: every line but one that
// names `entry_name` or the agent's id, then `entry`. Empty when the image has no such
// regular file (nothing to bind over then).
std::string WithAgentEntry(const std::string& rootfs, const char* name, uint32_t id,
                           const std::string& entry_name, const std::string& entry) {
  std::string content = ReadImageEtc(rootfs, name);
  if (content.empty()) return {};
  std::istringstream in(content);
  std::string out, line;
  const std::string number = std::to_string(id);
  while (std::getline(in, line)) {
    // name:x:id:...
    if (EtcField(line, 0) == entry_name || EtcField(line, 2) == number) continue;
    out += line + "\n";
  }
  return out + entry + "\n";
}

constexpr int kCapSysResource = 24;

// Whether this process holds capability `cap` in its effective set.
bool HasCapability(int cap) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("CapEff:", 0) == 0) {
      try {
        return (std::stoull(line.substr(7), nullptr, 16) >> cap) & 1;
      } catch (...) {
        return false;
      }
    }
  }
  return false;
}

class OciBackend : public Backend {
 public:
  OciBackend(OciOptions o, CgroupLayout layout, std::string runtime_path)
      : o_(std::move(o)), cgroups_(std::move(layout)), runtime_path_(std::move(runtime_path)) {
    rootless_ = ::geteuid() != 0;
    if (rootless_) SetUpRootless();
    // v1 limits memory+swap only where the kernel accounts swap (memsw); v2 always can.
    auto mem = cgroups_.v1_mounts.find("memory");
    swap_limit_ = mem == cgroups_.v1_mounts.end()
                      ? cgroups_.mode == CgroupMode::kV2
                      : fs::exists(mem->second + "/memory.memsw.limit_in_bytes");
    // v1 leaves TCP buffers out of memory.limit_in_bytes; they are charged only where the
    // runtime sets memory.kmem.tcp.limit_in_bytes (kernelTCP). v2 charges them to memory.max.
    kernel_tcp_ = mem != cgroups_.v1_mounts.end() &&
                  fs::exists(mem->second + "/memory.kmem.tcp.limit_in_bytes");
    if (!rootless_ && o_.agent_uid == 0) {
      // Skipped: ids an account or group got since start-up, and uids some process still runs
      // as (a sandbox of another control plane sharing the range).
      uid_pool_ = std::make_unique<UidPool>(o_.uid_range_start, o_.uid_range_size, [](uint32_t id) {
        return HostKnowsId(id) || UidHasProcesses(id);
      });
    }
    // The runtime, our child, mounts in the sandbox one v1 hierarchy per line of what is
    // also our /proc/self/cgroup.
    if (cgroups_.mode == CgroupMode::kV1 || cgroups_.mode == CgroupMode::kHybrid) {
      cgroup_v1_dirs_ = V1HierarchyDirs(ReadSmall("/proc/self/cgroup"));
    }
  }

  std::string_view name() const override { return "oci"; }
  Capabilities capabilities() const override {
    Capabilities c;
    c.isolated = true;
    c.suspend = Capabilities::Suspend::kFreeze;
    c.node_local = true;
    c.channel = Channel::Kind::kUnixDir;
    // Nothing of the session is in the bundle: airlock-init asks for it once the container
    // runs (--identity channel).
    c.identity = Capabilities::IdentityDelivery::kOverChannel;
    c.warm_pool = true;
    return c;
  }

  Result<Started> Create(const SandboxSpec& spec) override {
    if (!o_.resolve_image) return MakeError(ErrorCode::kInternal, "oci backend has no image store");
    if (spec.identity) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "the oci backend takes the session's identity over its channel, not in "
                       "its spec");
    }
    if (spec.channel.kind != Channel::Kind::kUnixDir || spec.channel.host_dir.empty()) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "the oci backend needs a Unix socket directory as its channel");
    }
    AIRLOCK_ASSIGN_OR_RETURN(OciImage image, o_.resolve_image(spec.image.name));
    AIRLOCK_ASSIGN_OR_RETURN(std::vector<std::string> command, AgentCommand(spec, image));
    Handle h{kIdPrefix + spec.sandbox_id, spec.work_dir};
    std::string path_var = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    for (const auto& e : image.env) {
      if (e.starts_with("PATH=")) path_var = e;
    }

    uint32_t agent_uid = agent_uid_, agent_gid = agent_gid_;
    if (uid_pool_) {
      AIRLOCK_ASSIGN_OR_RETURN(agent_uid, uid_pool_->Acquire(h.id));
      agent_gid = agent_uid;
    }
    auto started = Start(spec, image, std::move(command), path_var, h, agent_uid, agent_gid);
    if (!started && uid_pool_) uid_pool_->Release(h.id);
    if (!started) return std::unexpected(started.error());
    return Started{*started, SandboxState::kRunning};
  }

  Result<std::string> Start(const SandboxSpec& spec, const OciImage& image,
                            std::vector<std::string> command, const std::string& path_var,
                            const Handle& h, uint32_t agent_uid, uint32_t agent_gid) {
    OciBundleParams p;
    p.rootfs = image.rootfs;
    p.host_binds = image.host_binds;
    p.init_host_path = o_.init_path;
    p.channel_host_dir = spec.channel.host_dir;
    p.command = std::move(command);
    // Only PATH: whom the sandbox serves comes over the channel once it runs, so neither
    // config.json nor the container's environment ever holds the token.
    p.env = {path_var};
    p.identity_over_channel = true;
    p.fetch_work = true;
    p.image_env = ImageEnvForAgent(image.env);
    p.workdir = image.workdir;
    p.bridge_port = o_.bridge_port;
    p.agent_uid = agent_uid;
    p.agent_gid = agent_gid;
    p.log_limit_bytes = o_.log_limit_bytes;
    if (can_protect_init_) p.init_oom_score_adj = -1000;
    const Limits& l = spec.limits;
    int64_t memory_mb = l.memory_mb.value_or(o_.default_memory_mb);
    p.tmp_bytes = l.disk_mb.value_or(o_.default_disk_mb) << 20;
    if (!rootless_) {
      p.memory_bytes = memory_mb << 20;
      p.limit_swap = swap_limit_;
      // As much TCP buffer memory as memory: what a sandbox holds in sockets is bounded like
      // what it holds anywhere else, and not by the host-wide tcp_mem it would otherwise share.
      if (kernel_tcp_) p.kernel_tcp_bytes = p.memory_bytes;
      p.pids = l.pids.value_or(o_.default_pids);
      p.cpus = l.cpus.value_or(o_.default_cpus);
      p.cgroups_path = fmt::format("{}/{}", kCgroupParent, h.id);
      p.cgroup_v1_dirs = cgroup_v1_dirs_;
    } else {
      p.rootless = true;
      p.uid_mappings = uid_map_;
      p.gid_mappings = gid_map_;
      p.mount_cgroupfs = false;
    }

    std::error_code ec;
    fs::create_directories(h.bundle(), ec);
    if (ec) return Errorf(ErrorCode::kInternal, "create {}: {}", h.bundle(), ec.message());
    ::chmod(h.bundle().c_str(), 0700);
    if (!rootless_) {
      // The agent's uid is the sandbox's own, no account of the image: inside it has the
      // name of the image's User (its uid cannot be kept: sandboxes sharing a host uid would
      // share its kernel quotas), else `sandbox`.
      ImageUser user = ResolveImageUser(image.rootfs, image.user);
      const std::string user_name = user.name.empty() ? "sandbox" : user.name;
      std::string passwd = WithAgentEntry(
          image.rootfs, "passwd", agent_uid, user_name,
          fmt::format("{}:x:{}:{}::{}:/bin/sh", user_name, agent_uid, agent_gid, kSandboxHome));
      std::string group = WithAgentEntry(image.rootfs, "group", agent_gid, user_name,
                                         fmt::format("{}:x:{}:", user_name, agent_gid));
      if (!passwd.empty()) {
        AIRLOCK_TRY(WriteFileAtomic(h.bundle() + "/passwd", passwd, 0644));
        ::chmod((h.bundle() + "/passwd").c_str(), 0644);
        p.passwd_host_path = h.bundle() + "/passwd";
      }
      if (!group.empty()) {
        AIRLOCK_TRY(WriteFileAtomic(h.bundle() + "/group", group, 0644));
        ::chmod((h.bundle() + "/group").c_str(), 0644);
        p.group_host_path = h.bundle() + "/group";
      }
    }
    // 0600 in a 0700 directory: it holds no secret, but names the agent's uid and the host's
    // paths, which are nobody else's business.
    AIRLOCK_TRY(WriteFileAtomic(h.bundle() + "/config.json", BuildOciConfig(p).dump(), 0600));

    int log_fd = ::open(h.log_path().c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (log_fd < 0)
      return Errorf(ErrorCode::kInternal, "open {}: {}", h.log_path(), std::strerror(errno));
    // A container of that name can only be a leftover of an earlier failed attempt.
    if (fs::exists(o_.state_dir + "/" + h.id)) (void)Runtime({"delete", "--force", h.id});
    if (p.kernel_tcp_bytes > 0) {
      if (auto preset = PresetKernelTcp(h.id, p.kernel_tcp_bytes); !preset) {
        ::close(log_fd);
        return std::unexpected(preset.error());
      }
    }
    CommandOptions co;
    co.stdout_fd = log_fd;
    co.stderr_fd = log_fd;
    auto r = Runtime({"run", "--detach", "--bundle", h.bundle(), h.id}, co, h.runtime_log());
    ::close(log_fd);
    if (!r || r->exit_code != 0) {
      std::string why = r ? Tail(h.runtime_log(), 2048) : r.error().message;
      if (why.empty()) why = Tail(h.log_path(), 2048);
      (void)Runtime({"delete", "--force", h.id});
      fs::remove_all(h.bundle(), ec);
      return Errorf(ErrorCode::kUnavailable, "{} run failed: {}", o_.runtime,
                    why.empty() ? "no message" : why);
    }
    return h.id + ":" + h.work_dir;
  }

  // The cgroup v1 freezer freezes asynchronously: `pause` can return while the cgroup is
  // still FREEZING and a task still runs. Suspended means frozen, so wait for it.
  Status Suspend(const std::string& handle) override {
    AIRLOCK_TRY(Simple(handle, "pause"));
    AIRLOCK_ASSIGN_OR_RETURN(Handle h, Decode(handle));
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    for (auto pause = std::chrono::microseconds(200);;
         pause = std::min(pause * 2, std::chrono::microseconds(20'000))) {
      Freezer f = ReadFreezer(h.id);
      if (f == Freezer::kFrozen || f == Freezer::kUnknown)
        return Ok();  // unknown: the runtime's word stands
      if (std::chrono::steady_clock::now() >= deadline) {
        return Errorf(
            ErrorCode::kUnavailable,
            "sandbox {} did not finish freezing within 5 s (a task in uninterruptible sleep?)",
            h.id);
      }
      std::this_thread::sleep_for(pause);
    }
  }

  Result<std::string> Resume(const std::string& handle) override {
    AIRLOCK_TRY(Simple(handle, "resume"));
    return handle;
  }

  Status Destroy(const std::string& handle) override {
    AIRLOCK_ASSIGN_OR_RETURN(Handle h, Decode(handle));
    if (fs::exists(o_.state_dir + "/" + h.id)) {
      auto r = Runtime({"delete", "--force", h.id});
      if (!r) return std::unexpected(r.error());
      if (r->exit_code != 0 && fs::exists(o_.state_dir + "/" + h.id)) {
        return Errorf(ErrorCode::kUnavailable, "{} delete {}: {}", o_.runtime, h.id, r->output);
      }
    }
    std::error_code ec;
    fs::remove_all(h.bundle(), ec);
    // Only now, with every process of the sandbox gone, may another sandbox get its uid.
    if (uid_pool_) uid_pool_->Release(h.id);
    return Ok();
  }

  Result<SandboxStatus> Inspect(const std::string& handle) override {
    AIRLOCK_ASSIGN_OR_RETURN(Handle h, Decode(handle));
    SandboxStatus s;
    if (!fs::exists(o_.state_dir + "/" + h.id)) return s;  // kMissing
    // The reconciler asks about every live sandbox every second: read the sandbox's own
    // cgroup (a few small files) rather than spawn the runtime (~5 ms of CPU each).
    if (auto fast = InspectCgroup(h.id)) return *fast;
    auto r = Runtime({"state", h.id});
    if (!r) return std::unexpected(r.error());
    if (r->exit_code != 0) {
      if (!fs::exists(o_.state_dir + "/" + h.id)) return s;
      return Errorf(ErrorCode::kUnavailable, "{} state {}: {}", o_.runtime, h.id, r->output);
    }
    auto state = ParseJson(r->output);
    std::string status = state && state->is_object() ? state->value("status", "") : "";
    if (status == "running" || status == "created" || status == "creating") {
      s.state = SandboxState::kRunning;
    } else if (status == "paused" || status == "pausing") {
      s.state = SandboxState::kPaused;
    } else if (status == "stopped") {
      s.state = SandboxState::kExited;
      if (!rootless_)
        s.oom_killed = OomKillCount(cgroups_, fmt::format("{}/{}", kCgroupParent, h.id)) > 0;
    } else {
      return Errorf(ErrorCode::kUnavailable, "{} state {}: unexpected status \"{}\"", o_.runtime,
                    h.id, status);
    }
    s.detail = status;
    return s;
  }

  Result<SandboxStatus> Reattach(const std::string& handle) override {
    AIRLOCK_ASSIGN_OR_RETURN(Handle h, Decode(handle));
    AdoptUid(h);
    return Inspect(handle);
  }

  // After a restart: the uids of the sandboxes that outlived the last control plane stay
  // theirs, whether or not a live session still owns them (those are destroyed later, which
  // releases them).
  void AdoptRunningUids() {
    if (!uid_pool_) return;
    auto listed = List();
    if (!listed) {
      log::Warn("cannot list the running sandboxes to recover their uids",
                {{"error", listed.error().message}});
      return;
    }
    for (const auto& l : *listed) {
      if (auto h = Decode(l.handle)) AdoptUid(*h);
    }
  }

  // What Create needs that can go away while the server runs: the runtime and airlock-init
  // (a package upgrade or removal), the state directory (a full or read-only file system),
  // a uid for the next sandbox.
  Status Probe() override {
    for (const std::string* exe : {&runtime_path_, &o_.init_path}) {
      if (::access(exe->c_str(), X_OK) != 0) {
        return Errorf(ErrorCode::kUnavailable, "{} is not executable: {}", *exe,
                      std::strerror(errno));
      }
    }
    if (::access(o_.state_dir.c_str(), W_OK) != 0) {
      return Errorf(ErrorCode::kUnavailable, "the state directory {} is not writable: {}",
                    o_.state_dir, std::strerror(errno));
    }
    struct statvfs fs_stat {};
    if (::statvfs(o_.state_dir.c_str(), &fs_stat) == 0 && fs_stat.f_bavail == 0) {
      return Errorf(ErrorCode::kUnavailable, "the file system of {} is full", o_.state_dir);
    }
    if (uid_pool_ && uid_pool_->InUse() >= o_.uid_range_size) {
      return Errorf(ErrorCode::kUnavailable, "every uid of sandbox.oci.uid_range is in use");
    }
    return Ok();
  }

  // The runtime's own list of its containers under our --root (crun, runc and runsc all
  // print id and bundle as JSON); ours are "airlock-<session>" with the bundle in the
  // session's work dir.
  Result<std::vector<ListedSandbox>> List() override {
    std::vector<ListedSandbox> out;
    if (!fs::exists(o_.state_dir)) return out;
    auto r = Runtime({"list", "--format", "json"});
    if (!r) return std::unexpected(r.error());
    if (r->exit_code != 0)
      return Errorf(ErrorCode::kUnavailable, "{} list: {}", o_.runtime, r->output);
    auto j = ParseJson(r->output);
    if (!j || !j->is_array()) return out;  // runc prints "null" when there are none
    for (const auto& c : *j) {
      if (!c.is_object()) continue;
      std::string id = c.value("id", ""), bundle = c.value("bundle", "");
      const std::string suffix = "/bundle";
      if (!id.starts_with(kIdPrefix) || !bundle.ends_with(suffix) || bundle.size() <= suffix.size())
        continue;
      out.push_back({id.substr(std::strlen(kIdPrefix)),
                     id + ":" + bundle.substr(0, bundle.size() - suffix.size())});
    }
    return out;
  }

  // Running / paused / exited from the cgroup the backend put the sandbox in; nullopt when
  // it cannot tell (rootless, no such cgroup), and the caller asks the runtime.
  std::optional<SandboxStatus> InspectCgroup(const std::string& id) const {
    if (rootless_) return std::nullopt;
    std::string rel = fmt::format("{}/{}", kCgroupParent, id);
    std::string procs;
    if (auto pids = cgroups_.v1_mounts.find("pids"); pids != cgroups_.v1_mounts.end()) {
      procs = pids->second + rel + "/cgroup.procs";
    } else if (!cgroups_.v2_mount.empty() && cgroups_.mode == CgroupMode::kV2) {
      procs = cgroups_.v2_mount + rel + "/cgroup.procs";
    } else {
      return std::nullopt;
    }
    // Freezing counts as paused: the sandbox was asked to stop and will not run on.
    Freezer fz = ReadFreezer(id);
    bool frozen = fz == Freezer::kFrozen || fz == Freezer::kFreezing;
    int fd = ::open(procs.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return std::nullopt;
    char c;
    ssize_t n = ::read(fd, &c, 1);
    ::close(fd);
    if (n < 0) return std::nullopt;
    SandboxStatus s;
    if (n == 0) {
      s.state = SandboxState::kExited;
      s.oom_killed = OomKillCount(cgroups_, rel) > 0;
      s.detail = "stopped";
    } else {
      s.state = frozen ? SandboxState::kPaused : SandboxState::kRunning;
      s.detail = frozen ? "paused" : "running";
    }
    return s;
  }

  enum class Freezer { kUnknown, kThawed, kFreezing, kFrozen };

  // The sandbox's freezer: v1 freezer.state, or v2 cgroup.freeze (asked) and cgroup.events
  // (done).
  Freezer ReadFreezer(const std::string& id) const {
    if (rootless_) return Freezer::kUnknown;
    std::string rel = fmt::format("{}/{}", kCgroupParent, id);
    if (auto fz = cgroups_.v1_mounts.find("freezer"); fz != cgroups_.v1_mounts.end()) {
      std::string st = ReadSmall(fz->second + rel + "/freezer.state");
      if (st.starts_with("FROZEN")) return Freezer::kFrozen;
      if (st.starts_with("FREEZING")) return Freezer::kFreezing;
      if (st.starts_with("THAWED")) return Freezer::kThawed;
      return Freezer::kUnknown;
    }
    if (!cgroups_.v2_mount.empty() && cgroups_.mode == CgroupMode::kV2) {
      std::string events = ReadSmall(cgroups_.v2_mount + rel + "/cgroup.events");
      if (events.empty()) return Freezer::kUnknown;
      if (events.find("frozen 1") != std::string::npos) return Freezer::kFrozen;
      return ReadSmall(cgroups_.v2_mount + rel + "/cgroup.freeze").starts_with("1")
                 ? Freezer::kFreezing
                 : Freezer::kThawed;
    }
    return Freezer::kUnknown;
  }

  static std::string ReadSmall(const std::string& path) {
    std::ifstream f(path);
    std::string line;
    std::getline(f, line, '\0');
    return line;
  }

  Result<std::string> Logs(const std::string& handle, int64_t offset, size_t max_bytes) override {
    AIRLOCK_ASSIGN_OR_RETURN(Handle h, Decode(handle));
    int fd = ::open(h.log_path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) return std::string();
      return Errorf(ErrorCode::kInternal, "open log: {}", std::strerror(errno));
    }
    std::string out(max_bytes, '\0');
    ssize_t n = ::pread(fd, out.data(), max_bytes, offset);
    ::close(fd);
    out.resize(n > 0 ? static_cast<size_t>(n) : 0);
    return out;
  }

 private:
  Result<CommandResult> Runtime(std::vector<std::string> args, CommandOptions co = {},
                                const std::string& log_file = "") {
    std::vector<std::string> argv = {runtime_path_, "--root", o_.state_dir};
    if (!log_file.empty()) {
      argv.push_back("--log");
      argv.push_back(log_file);
    }
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<std::string> env = {
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"};
    return RunCommand(argv, env, co);
  }

  // runc 1.1 ignores the spec's kernelTCP (crun applies it): write the sandbox's
  // memory.kmem.tcp.limit_in_bytes before the runtime starts anything in its cgroup (a socket
  // made before the limit is set is never charged). The runtime then joins the cgroup as is,
  // and removes it with the sandbox.
  Status PresetKernelTcp(const std::string& id, int64_t bytes) {
    auto mem = cgroups_.v1_mounts.find("memory");
    if (mem == cgroups_.v1_mounts.end()) return Ok();
    std::string dir = fmt::format("{}{}/{}", mem->second, kCgroupParent, id);
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return Errorf(ErrorCode::kInternal, "create {}: {}", dir, ec.message());
    return WriteCgroupFile(dir + "/memory.kmem.tcp.limit_in_bytes", std::to_string(bytes));
  }

  Status Simple(const std::string& handle, const char* verb) {
    AIRLOCK_ASSIGN_OR_RETURN(Handle h, Decode(handle));
    auto r = Runtime({verb, h.id});
    if (!r) return std::unexpected(r.error());
    if (r->exit_code != 0) {
      if (!fs::exists(o_.state_dir + "/" + h.id)) {
        return Errorf(ErrorCode::kNotFound, "sandbox {} is gone", h.id);
      }
      std::string out = r->output;
      while (!out.empty() && out.back() == '\n') out.pop_back();
      return Errorf(ErrorCode::kConflict, "{} {} {}: {}", o_.runtime, verb, h.id, out);
    }
    return Ok();
  }

  // The uid the sandbox's bundle gave its agent, taken back into the pool.
  void AdoptUid(const Handle& h) {
    if (!uid_pool_ || uid_pool_->Held(h.id)) return;
    auto config = ParseJson(ReadSmall(h.bundle() + "/config.json"));
    if (!config) return;
    if (auto uid = AgentUidOf(*config)) uid_pool_->Adopt(h.id, *uid);
  }

  // Rootless: the control plane's own uid is root inside; with a subordinate range from
  // /etc/subuid (and newuidmap) the agent gets a real unprivileged uid, otherwise it runs
  // as the (capability-less) namespace root, which is the host user.
  void SetUpRootless() {
    uid_t uid = ::geteuid();
    gid_t gid = ::getegid();
    uid_map_ = {{0, uid, 1}};
    gid_map_ = {{0, gid, 1}};
    std::string user;
    if (passwd* pw = ::getpwuid(uid)) user = pw->pw_name;
    auto su = SubordinateRange("/etc/subuid", user, uid);
    auto sg = SubordinateRange("/etc/subgid", user, uid);
    uint32_t inside_uid = o_.agent_uid ? o_.agent_uid : kRootlessAgentId;
    uint32_t inside_gid = o_.agent_gid ? o_.agent_gid : inside_uid;
    if (su && sg && !FindExecutable("newuidmap").empty() && !FindExecutable("newgidmap").empty() &&
        su->size > inside_uid && sg->size > inside_gid) {
      uid_map_.push_back(*su);
      gid_map_.push_back(*sg);
      agent_uid_ = inside_uid;
      agent_gid_ = inside_gid;
    } else {
      agent_uid_ = 0;
      agent_gid_ = 0;
      log::Warn(
          "rootless sandboxes: no subordinate uid range for this user (/etc/subuid) or no "
          "newuidmap; "
          "the agent runs as the user namespace's root, without capabilities",
          {{"user", user}});
    }
    log::Warn(
        "rootless sandboxes: memory, pids and cpu limits are not enforced without a delegated "
        "cgroup",
        {{"cgroups", std::string(CgroupModeName(cgroups_.mode))}});
  }

  OciOptions o_;
  CgroupLayout cgroups_;
  std::string runtime_path_;
  bool rootless_ = false;
  bool swap_limit_ = false;
  bool kernel_tcp_ = false;
  std::vector<std::string> cgroup_v1_dirs_;
  bool can_protect_init_ = HasCapability(kCapSysResource);
  // A fixed agent uid (sandbox.oci.agent_uid, or rootless); unused while uid_pool_ exists.
  uint32_t agent_uid_ = o_.agent_uid;
  uint32_t agent_gid_ = o_.agent_gid ? o_.agent_gid : o_.agent_uid;
  std::unique_ptr<UidPool> uid_pool_;
  std::vector<IdMapping> uid_map_, gid_map_;
};

// The agent's host ids belong to nobody on the host: an account sharing them could signal and
// ptrace the agent and read its /proc (its environment holds the session token), and would
// share its per-user kernel quotas.
Status CheckAgentIds(const OciOptions& o) {
  HostIds host = ReadHostIds();
  if (o.agent_uid == 0) {
    return CheckIdRangeIsFree(o.uid_range_start, o.uid_range_size, host,
                              fmt::format("sandbox.oci.uid_range_start = {}, uid_range_size = {}",
                                          o.uid_range_start, o.uid_range_size));
  }
  uint32_t gid = o.agent_gid ? o.agent_gid : o.agent_uid;
  std::string what = fmt::format(
      "sandbox.oci.agent_uid = {} (leave it out to give each sandbox its own uid from "
      "sandbox.oci.uid_range_start)",
      o.agent_uid);
  // emplace: a name already read from the files stays.
  if (HostKnowsId(o.agent_uid)) host.users.emplace(o.agent_uid, "(known to the name service)");
  AIRLOCK_TRY(CheckIdRangeIsFree(o.agent_uid, 1, HostIds{host.users, {}, host.subordinate}, what));
  if (HostKnowsId(gid)) host.groups.emplace(gid, "(known to the name service)");
  return CheckIdRangeIsFree(gid, 1, HostIds{{}, host.groups, {}},
                            fmt::format("sandbox.oci.agent_gid = {}", gid));
}

}  // namespace

Result<std::vector<std::string>> AgentCommand(const SandboxSpec& spec, const OciImage& image) {
  std::vector<std::string> command = spec.command.argv;
  if (command.empty()) {
    command = image.entrypoint;
    command.insert(command.end(), image.cmd.begin(), image.cmd.end());
  }
  if (command.empty()) {
    return Errorf(ErrorCode::kInvalidArgument, "image \"{}\" has no entrypoint; give a \"command\"",
                  spec.image.name);
  }
  return command;
}

ImageUser ResolveImageUser(const std::string& rootfs, const std::string& user) {
  ImageUser out;
  if (user.empty()) return out;
  const size_t colon = user.find(':');
  const std::string who = user.substr(0, colon);
  const std::string group = colon == std::string::npos ? "" : user.substr(colon + 1);
  std::istringstream passwd(ReadImageEtc(rootfs, "passwd"));
  std::string line;
  std::optional<uint32_t> uid = Number(who), gid;
  std::string name = uid ? "" : who;
  while (std::getline(passwd, line)) {
    if ((uid && Number(EtcField(line, 2)) == uid) || (!uid && EtcField(line, 0) == who)) {
      name = EtcField(line, 0);
      uid = Number(EtcField(line, 2));
      gid = Number(EtcField(line, 3));
      break;
    }
  }
  if (!group.empty()) {
    gid = Number(group);
    std::istringstream groups(ReadImageEtc(rootfs, "group"));
    while (!gid && std::getline(groups, line)) {
      if (EtcField(line, 0) == group) gid = Number(EtcField(line, 2));
    }
  }
  // Never root: an image that asks for it gets the sandbox's own unprivileged user.
  if (name == "root" || uid == 0u) return {};
  const bool plain =
      !name.empty() && name.size() <= 32 && std::all_of(name.begin(), name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
      });
  out.name = plain ? name : "";
  out.uid = uid;
  out.gid = gid == 0u ? std::nullopt : gid;
  return out;
}

std::vector<std::string> ImageEnvForAgent(const std::vector<std::string>& env) {
  std::vector<std::string> out;
  for (const auto& e : env) {
    const size_t eq = e.find('=');
    if (eq == 0 || eq == std::string::npos || e.find('\0') != std::string::npos) continue;
    const std::string_view name = std::string_view(e).substr(0, eq);
    // HOME is the sandbox's: the agent's own writable home, whatever the image was built with.
    if (name == "SESSION_ID" || name == "SESSION_TOKEN" || name == "CONTROL_PLANE_URL" ||
        name == "HOME") {
      continue;
    }
    out.push_back(e);
  }
  return out;
}

Result<std::unique_ptr<Backend>> MakeOciBackend(OciOptions o) {
  if (o.runtime != "crun" && o.runtime != "runc" && o.runtime != "runsc") {
    return Errorf(ErrorCode::kInvalidArgument,
                  "sandbox.oci.runtime must be crun, runc or runsc, not \"{}\"", o.runtime);
  }
  std::string runtime_path = FindExecutable(o.runtime_path.empty() ? o.runtime : o.runtime_path);
  if (runtime_path.empty()) {
    return Errorf(ErrorCode::kUnavailable,
                  "the OCI runtime \"{}\" was not found (install it: apt-get install {}, or set "
                  "sandbox.oci.runtime_path)",
                  o.runtime_path.empty() ? o.runtime : o.runtime_path, o.runtime);
  }
  if (o.init_path.empty() || ::access(o.init_path.c_str(), X_OK) != 0) {
    return Errorf(ErrorCode::kUnavailable,
                  "airlock-init not found at \"{}\" (it is built beside the airlock binary; set "
                  "sandbox.oci.init_path)",
                  o.init_path);
  }
  if (o.state_dir.empty())
    return MakeError(ErrorCode::kInvalidArgument, "oci backend: no state dir");
  std::error_code ec;
  fs::create_directories(o.state_dir, ec);
  if (ec) return Errorf(ErrorCode::kInternal, "create {}: {}", o.state_dir, ec.message());
  ::chmod(o.state_dir.c_str(), 0700);

  if (::geteuid() == 0) AIRLOCK_TRY(CheckAgentIds(o));

  CgroupLayout layout = DetectCgroups();
  if (o.runtime == "crun" && layout.mode == CgroupMode::kHybrid && !layout.v2_controllers.empty()) {
    if (::geteuid() != 0) {
      return Errorf(
          ErrorCode::kUnavailable,
          "crun refuses this hybrid cgroup host while cgroup v2 holds controllers ({}); as root, "
          "mount "
          "a v1 hierarchy for each (airlock serve does it when run as root once), or use runc",
          fmt::join(layout.v2_controllers, ","));
    }
    AIRLOCK_ASSIGN_OR_RETURN(auto moved, MoveHybridControllersToV1(layout));
    if (!moved.empty()) {
      log::Info(
          "cgroups: moved controllers off the v2 hierarchy so that crun accepts this hybrid host",
          {{"controllers", fmt::format("{}", fmt::join(moved, ","))}});
      layout = DetectCgroups();
    }
  }
  log::Info("oci backend ready", {{"runtime", runtime_path},
                                  {"cgroups", std::string(CgroupModeName(layout.mode))},
                                  {"rootless", ::geteuid() != 0}});
  auto backend =
      std::make_unique<OciBackend>(std::move(o), std::move(layout), std::move(runtime_path));
  backend->AdoptRunningUids();
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace airlock::sandbox
