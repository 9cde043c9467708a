#include "sandbox/backend_microvm.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "../init/sys.h"
#include "common/crypto.h"
#include "common/json_util.h"
#include "common/log.h"
#include "common/time_util.h"
#include "sandbox/cgroups.h"
#include "sandbox/cpio.h"
#include "sandbox/oci_spec.h"
#include "sandbox/qmp.h"
#include "sandbox/seccomp_bpf.h"
#include "sandbox/seccomp_profile.h"
#include "sandbox/subprocess.h"
#include "sandbox/uid_pool.h"
#include "sandbox/vm_relay.h"

namespace airlock::sandbox {
namespace {

namespace fs = std::filesystem;
using init::UniqueFd;

constexpr const char* kIdPrefix = "airlock-vm-";
constexpr uint32_t kDefaultAgentId = 1000;  // the `sandbox` account of the base image
// The kernel's command line. quiet: the serial console is slow under TCG. pci=off: microvm
// has no PCI bus (virtio-mmio devices come from ACPI). tsc=reliable, no_timer_check: skip
// clock checks that take long under emulation. reboot=t, panic=-1: a reboot or a panic ends
// QEMU (-no-reboot) instead of hanging. KernelArgs() adds the clock's rate.
constexpr const char* kKernelArgs =
    "console=ttyS0 quiet mitigations=off pci=off tsc=reliable no_timer_check reboot=t panic=-1 "
    "rdinit=/init";
// Guest RAM below this cannot boot Debian's kernel and an initramfs.
constexpr int64_t kMinMemoryMb = 128;
// TCG's cache of translated code, in MiB: QEMU's default (1 GiB on 64-bit hosts) would let a
// guest that runs much varied code grow QEMU by that much; this bounds it, and with it what
// qemu_overhead_mb must allow.
constexpr int kTcgCodeCacheMb = 64;
// A template no sandbox was made from for this long is removed at the next start: a new
// kernel, init, QEMU or image version makes new ones and leaves the old behind.
constexpr auto kTemplateMaxAge = std::chrono::days(7);
// A QEMU started ahead for a template (a spare) that no sandbox claimed for this long is
// stopped: its template is not in use. The next start from it makes another.
constexpr auto kSpareIdle = std::chrono::minutes(10);
constexpr const char* kSparePrefix = "airlock-spare-";
// Spawn's `incoming` for a spare: QEMU starts with no guest and waits for a migrate-incoming.
constexpr int kIncomingDeferred = -2;

// What a handle names: "airlock-vm-<sandbox id>:<work dir>". Everything of a VM lives in its
// work dir, so the handle survives a control-plane restart.
struct Handle {
  std::string id;
  std::string dir;
  std::string file(const char* name) const { return dir + "/vm/" + name; }
};

Result<Handle> Decode(const std::string& s) {
  size_t colon = s.find(':');
  if (!s.starts_with(kIdPrefix) || colon == std::string::npos || colon + 1 >= s.size() ||
      s[colon + 1] != '/') {
    return MakeError(ErrorCode::kInvalidArgument, "bad microvm handle");
  }
  return Handle{s.substr(0, colon), s.substr(colon + 1)};
}

// Whether `path` exists; false also when it cannot be told (a directory we may not search):
// a backend that cannot run here must say so, not throw out of the server's start.
bool Exists(const std::string& path) {
  std::error_code ec;
  return fs::exists(path, ec);
}

std::string ReadSmallFile(const std::string& path, size_t max = 4096) {
  std::ifstream f(path, std::ios::binary);
  std::string out(max, '\0');
  f.read(out.data(), static_cast<std::streamsize>(max));
  out.resize(static_cast<size_t>(f.gcount()));
  return out;
}

Status WriteFile(const std::string& path, std::string_view data, mode_t mode) {
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return Errorf(ErrorCode::kInternal, "create {}: {}", tmp, std::strerror(errno));
  bool ok = ::write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size());
  ok = ::fsync(fd) == 0 && ok;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return Errorf(ErrorCode::kInternal, "write {}: {}", path, std::strerror(errno));
  }
  return Ok();
}

bool IsZombie(pid_t pid) {
  std::string stat = ReadSmallFile(fmt::format("/proc/{}/stat", pid), 1024);
  size_t close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] == 'Z';
}

// Whether `pid` is still a QEMU whose command line names `name` (a recycled pid is not, and a
// zombie is as good as gone).
bool IsLiveQemu(pid_t pid, const std::string& name) {
  if (pid <= 1) return false;
  std::string cmdline = ReadSmallFile(fmt::format("/proc/{}/cmdline", pid), 1 << 16);
  return cmdline.find(name) != std::string::npos && !IsZombie(pid);
}

// The pid QEMU wrote, if that process is still a QEMU of this VM: its command line names the
// VM, or the spare it was started as (vm/qemu.name, see FromSpare).
std::optional<pid_t> LivePid(const Handle& h) {
  std::string text = ReadSmallFile(h.file("qemu.pid"), 64);
  pid_t pid = 0;
  try {
    pid = static_cast<pid_t>(std::stol(text));
  } catch (...) {
    return std::nullopt;
  }
  std::string name = ReadSmallFile(h.file("qemu.name"), 256);
  if (!name.starts_with(kSparePrefix)) name = h.id;
  return IsLiveQemu(pid, name) ? std::optional<pid_t>(pid) : std::nullopt;
}

// A VM's own directory (vm/ under `dir`), private to the control plane.
Status MakeVmDir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir + "/vm", ec);
  if (ec) return Errorf(ErrorCode::kInternal, "create {}/vm: {}", dir, ec.message());
  ::chmod((dir + "/vm").c_str(), 0700);
  return Ok();
}

// The real uid of `pid` (the "Uid:" line of its status).
uint32_t ProcessUid(pid_t pid) {
  std::ifstream status(fmt::format("/proc/{}/status", pid));
  for (std::string line; std::getline(status, line);) {
    if (line.starts_with("Uid:"))
      return static_cast<uint32_t>(std::strtoul(line.c_str() + 4, nullptr, 10));
  }
  return 0;
}

// "exit N", "signal N" or "signal N oom", as the guest's init writes it (guest.h).
void ParseStatus(const std::string& text, SandboxStatus& s) {
  std::istringstream in(text);
  std::string kind, extra;
  int n = 0;
  if (!(in >> kind >> n)) return;
  in >> extra;
  if (kind == "exit") s.exit_code = n;
  if (kind == "signal") {
    s.signal = n;
    s.exit_code = 128 + n;
    s.oom_killed = extra == "oom";
  }
}

// Whether KVM can boot the guest kernel here. A /dev/kvm that opens is not enough: a
// software-nested KVM starts trivial guests but hangs or dies on Linux's first unusual
// instruction. So boot the real kernel with init alone as the initramfs: init, not in a VM it
// knows, exits at once; PID 1 exiting panics the kernel, and the panic reboots, which ends
// QEMU (-no-reboot). A kernel that gets that far under KVM does so well within the deadline.
// Once per process and kernel: the answer does not change while the control plane runs.
// The guest's TSC ticks at the host's rate (TCG reads the host's; KVM passes it through).
// Calibrating it needs a reference timer, and microvm's PIT is the only one: under TCG on a
// busy host calibration sometimes fails, and then the kernel hangs for good waiting on the
// delay loop's calibration. So the rate is given (tsc_early_khz) and so is the delay loop
// (lpj = loops per jiffy: the TSC's ticks per jiffy). The rate is the host's "cpu MHz",
// which is the TSC's on CPUs with an invariant TSC (every x86 server CPU of the last decade).
std::string ClockArgs(const std::string& kernel_dir) {
  int64_t khz = 0;
  {
    std::ifstream cpuinfo("/proc/cpuinfo");
    for (std::string line; khz == 0 && std::getline(cpuinfo, line);) {
      if (!line.starts_with("cpu MHz")) continue;
      size_t colon = line.find(':');
      if (colon != std::string::npos)
        khz = std::llround(std::atof(line.c_str() + colon + 1) * 1000);
    }
  }
  int64_t hz = 250;  // Debian's kernels
  {
    std::ifstream config(kernel_dir + "/config");
    for (std::string line; std::getline(config, line);) {
      if (line.starts_with("CONFIG_HZ=")) hz = std::max<int64_t>(1, std::atoll(line.c_str() + 10));
    }
  }
  if (khz <= 0) return {};
  return fmt::format(" tsc_early_khz={} lpj={}", khz, khz * 1000 / hz);
}

bool KvmBoots(const std::string& qemu, const std::string& kernel_dir, const std::string& init_path,
              const std::string& cache_dir) {
  static std::mutex mu;
  static std::map<std::string, bool> known;
  std::lock_guard lock(mu);
  std::string key = qemu + "\n" + kernel_dir;
  if (auto it = known.find(key); it != known.end()) return it->second;
  bool boots = false;
  if (int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC); fd >= 0) {
    ::close(fd);
    CpioWriter cpio;
    cpio.AddFile("init", ReadSmallFile(init_path, 64 << 20), 0755);
    std::string probe = cache_dir + "/kvm-probe.cpio";
    std::error_code ec;
    fs::create_directories(cache_dir, ec);
    if (WriteFile(probe, cpio.Finish(), 0644)) {
      CommandOptions co;
      co.timeout = std::chrono::seconds(5);
      auto r =
          RunCommand({qemu, "-machine", "microvm,x-option-roms=off,rtc=on", "-accel", "kvm", "-m",
                      "128", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
                      "-kernel", kernel_dir + "/vmlinux", "-initrd", probe, "-append",
                      std::string(kKernelArgs) + ClockArgs(kernel_dir), "-serial", "stdio"},
                     {}, co);
      boots = r && r->exit_code == 0 && r->output.find("Kernel panic") != std::string::npos;
    }
  }
  known[key] = boots;
  return boots;
}

class MicrovmBackend : public Backend {
 public:
  MicrovmBackend(MicrovmOptions o, std::string qemu)
      : o_(std::move(o)),
        qemu_(std::move(qemu)),
        kernel_args_(kKernelArgs + ClockArgs(o_.kernel_dir)),
        relay_(o_.channel_max_streams) {
    if (::geteuid() == 0) {
      // The same range as oci's, like two control planes on one host: a uid some process
      // runs as is skipped.
      uid_pool_ = std::make_unique<UidPool>(o_.uid_range_start, o_.uid_range_size, [](uint32_t id) {
        return HostKnowsId(id) || UidHasProcesses(id);
      });
      cgroups_ = DetectCgroups();
      jail_root_ = o_.cache_dir + "/jail";
      std::error_code ec;
      fs::create_directories(jail_root_, ec);
      jailed_ = !ec;
      if (ec) {
        log::Warn("microvm: QEMU runs without its own mount namespace",
                  {{"directory", jail_root_}, {"error", ec.message()}});
      }
      if (cgroups_.v1_mounts.count("memory") == 0 && cgroups_.mode != CgroupMode::kV2) {
        log::Warn("microvm: no memory cgroup controller: QEMU's memory is not limited",
                  {{"cgroups", std::string(CgroupModeName(cgroups_.mode))}});
      }
    }
    SweepTemplates();
    SweepSpares();
    // Spares start as SCHED_IDLE where FromSpare can give them the normal policy back.
    spares_idle_ = jailed_;
    if (o_.templates && o_.spare_qemus > 0) spare_thread_ = std::thread([this] { SpareLoop(); });
  }

  ~MicrovmBackend() override {
    {
      std::lock_guard lock(spare_mu_);
      stopping_ = true;
    }
    spare_cv_.notify_all();
    if (spare_thread_.joinable()) spare_thread_.join();
    // Spares hold no sandbox: they go with the control plane (the sandboxes' QEMUs stay).
    for (auto& [tpl, spares] : spares_) {
      for (const Spare& spare : spares) DiscardSpare(spare);
    }
  }

  std::string_view name() const override { return "microvm"; }
  Capabilities capabilities() const override {
    Capabilities c;
    c.isolated = true;
    c.suspend = Capabilities::Suspend::kFreeze;  // QMP stop: the guest keeps its memory
    c.hibernate = true;                          // QEMU's migration stream, to a file
    c.node_local = true;
    c.channel = Channel::Kind::kVirtioPort;
    c.identity = Capabilities::IdentityDelivery::kOverChannel;
    c.warm_pool = true;
    return c;
  }

  // Decided at the first sandbox, not at start: finding out may take a test boot.
  std::string Accelerator() {
    std::lock_guard lock(build_mu_);
    if (!accel_.empty()) return accel_;
    accel_ = o_.accel;
    if (accel_ == "auto") {
      accel_ = KvmBoots(qemu_, o_.kernel_dir, o_.init_path, o_.cache_dir) ? "kvm" : "tcg";
    }
    if (accel_ == "tcg") {
      log::Warn(
          "microvm: KVM cannot boot the guest here, guests run under TCG (software "
          "emulation): starts take seconds, not milliseconds",
          {{"accel", o_.accel}});
    }
    return accel_;
  }

  Status Probe() override {
    if (auto why = MicrovmUnavailableReason(o_); !why.empty()) {
      return MakeError(ErrorCode::kUnavailable, why);
    }
    return Ok();
  }

  Result<Started> Create(const SandboxSpec& spec) override {
    if (!o_.resolve_image)
      return MakeError(ErrorCode::kInternal, "microvm backend has no image store");
    if (spec.identity) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "the microvm backend takes the session's identity over its channel");
    }
    if (spec.channel.host_dir.empty() || spec.work_dir.empty()) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "the microvm backend needs the session's socket directory and work dir");
    }
    AIRLOCK_ASSIGN_OR_RETURN(OciImage image, o_.resolve_image(spec.image.name));
    if (!image.host_binds.empty()) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "image \"{}\" binds host directories, which a VM cannot share; use an "
                    "imported image or \"base\" with the microvm backend",
                    spec.image.name);
    }
    AIRLOCK_ASSIGN_OR_RETURN(std::vector<std::string> command, AgentCommand(spec, image));
    Handle h{kIdPrefix + spec.sandbox_id, spec.work_dir};
    AIRLOCK_TRY(MakeVmDir(h.dir));

    AIRLOCK_ASSIGN_OR_RETURN(std::string disk, ImageDisk(image.rootfs));
    AIRLOCK_ASSIGN_OR_RETURN(std::string base, BaseInitramfs());
    AIRLOCK_TRY(WriteFile(h.file("channel_dir"), spec.channel.host_dir, 0600));
    Machine m;
    m.disk = disk;
    m.accel = Accelerator();
    m.initrd = base;
    m.memory_mb = std::max(spec.limits.memory_mb.value_or(o_.default_memory_mb), kMinMemoryMb);
    m.cpus = std::max(1, static_cast<int>(std::ceil(spec.limits.cpus.value_or(o_.default_cpus))));
    Launch launch = LaunchOf(image, command, spec.limits);

    // Its own uid, unless it takes over a spare's (FromSpare).
    std::optional<uint32_t> uid;
    auto own_uid = [&]() -> Status {
      if (uid_pool_ && !uid) {
        AIRLOCK_ASSIGN_OR_RETURN(uid, uid_pool_->Acquire(h.id));
      }
      return Ok();
    };
    std::optional<Result<pid_t>> started;
    if (o_.templates) {
      auto tpl = Template(m, launch.image_settings + PreloadOf(image));
      if (!tpl) {
        // A template that cannot be made leaves the cold boot, which says more when it
        // fails the same way.
        log::Warn("microvm: no template, booting instead", {{"error", tpl.error().message}});
      } else {
        std::optional<Spare> spare;
        if (SpareCanServe(h)) spare = TakeSpare(*tpl);
        if (spare) {
          if (started = FromSpare(h, m, *tpl, launch, *spare); !*started) {
            log::Warn("microvm: the spare QEMU could not take the sandbox, starting one",
                      {{"sandbox", h.id}, {"error", (*started).error().message}});
            started.reset();
          }
        }
        if (!started) {
          AIRLOCK_TRY(own_uid());
          if (started = FromTemplate(h, m, *tpl, launch, uid); !*started) {
            log::Warn("microvm: restoring the template failed, booting instead",
                      {{"sandbox", h.id}, {"error", (*started).error().message}});
            started.reset();
          }
        }
        // The next sandbox of this template finds a QEMU waiting.
        if (started) WantSpare(*tpl, m);
      }
    }
    if (!started) {
      if (auto st = own_uid(); !st) {
        started = std::unexpected(st.error());
      } else {
        started = Boot(h, m, launch, uid);
      }
    }
    if (!*started) {
      if (uid_pool_) uid_pool_->Release(h.id);
      return std::unexpected((*started).error());
    }
    std::string handle = h.id + ":" + h.dir;
    AIRLOCK_TRY(WriteFile(o_.state_dir + "/" + h.id, handle, 0600));
    return Started{handle, SandboxState::kRunning};
  }

  // What makes two VMs interchangeable for QEMU's migration: the same machine.
  struct Machine {
    std::string disk, accel, initrd;
    int64_t memory_mb = 0;
    int cpus = 1;
  };
  // What init of one sandbox gets: its command line and its settings.
  struct Launch {
    std::string args;            // NUL-separated
    std::string settings;        // "key value" lines
    std::string image_settings;  // the same with the default limits: what a template gets
  };

  // A cold boot: the sandbox's launch in its initramfs.
  Result<pid_t> Boot(const Handle& h, const Machine& m, const Launch& launch,
                     std::optional<uint32_t> uid) {
    CpioWriter own;
    own.AddDirectory("airlock", 0755);
    own.AddFile("airlock/args", launch.args, 0600);
    own.AddFile("airlock/vm", launch.settings, 0600);
    AIRLOCK_TRY(
        WriteFile(h.file("initrd"), ReadSmallFile(m.initrd, 256 << 20) + own.Finish(), 0600));
    Machine booted = m;
    booted.initrd = h.file("initrd");
    std::vector<std::string> argv = MachineArgs(h, booted);
    // A restore (Resume after Hibernate) starts QEMU again with the same machine.
    AIRLOCK_TRY(WriteFile(h.file("qemu.argv"), Json(argv).dump(), 0600));
    AIRLOCK_ASSIGN_OR_RETURN(pid_t pid, Spawn(h, argv, uid, -1));
    AIRLOCK_TRY(relay_.Attach(h.id, h.file("channel.sock"), ChannelDirOf(h) + "/control.sock"));
    return pid;
  }

  // The template of machine `m` (its directory in the cache), made now if there is none:
  // a VM booted without a launch, given the image's `settings` (what LaunchOf makes with
  // the default limits), and saved once its init has mounted the image and waits for a
  // launch.
  Result<std::string> Template(const Machine& m, const std::string& settings) {
    const std::string key =
        Sha256Hex(fmt::format("{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}", m.disk, AccelArg(m), m.initrd,
                              m.memory_mb, m.cpus, kernel_args_, KernelStamp(), qemu_, settings))
            .substr(0, 16);
    // Short: QEMU's sockets live in it, and a Unix socket's path has at most 107 bytes.
    const std::string dir = o_.cache_dir + "/tpl/" + key;
    std::lock_guard lock(template_mu_);  // one build at a time; the rest wait for it
    if (Exists(dir + "/snapshot")) {
      ::utimensat(AT_FDCWD, (dir + "/snapshot").c_str(), nullptr, 0);  // used: see SweepTemplates
      return dir;
    }
    Handle t = TemplateHandle(dir);
    std::error_code ec;
    fs::remove_all(dir + "/vm", ec);
    AIRLOCK_TRY(MakeVmDir(dir));
    std::optional<uint32_t> uid;
    if (uid_pool_) {
      AIRLOCK_ASSIGN_OR_RETURN(uid, uid_pool_->Acquire(t.id));
    }
    auto made = [&]() -> Status {
      AIRLOCK_ASSIGN_OR_RETURN(pid_t pid, Spawn(t, MachineArgs(t, m), uid, -1));
      auto saved = [&]() -> Status {
        AIRLOCK_ASSIGN_OR_RETURN(
            UniqueFd prepare,
            WriteToLaunchPort(t, fmt::format("prepare {}\n{}", settings.size(), settings)));
        // Init writes "ready" once it waits for its launch; a boot takes seconds under TCG.
        auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(3);
        while (ReadSmallFile(t.file("status"), 64) != "ready\n") {
          if (!Exists(fmt::format("/proc/{}", pid)) ||
              std::chrono::steady_clock::now() >= deadline) {
            return Errorf(ErrorCode::kUnavailable,
                          "the template VM did not reach its launch; its console: {} {}",
                          ConsoleTail(t), ReadSmallFile(LogPath(t), 2048));
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        // Saved with no host on the port, as every restore finds it.
        prepare.Reset();
        AIRLOCK_ASSIGN_OR_RETURN(QmpSession qmp,
                                 QmpSession::Connect(t.file("qmp.sock"), std::chrono::minutes(5)));
        AIRLOCK_TRY(qmp.Execute("stop"));
        AIRLOCK_TRY(SaveSnapshot(qmp, t.file("snapshot.tmp")));
        if (::rename(t.file("snapshot.tmp").c_str(), (dir + "/snapshot").c_str()) != 0) {
          return Errorf(ErrorCode::kInternal, "keep the template: {}", std::strerror(errno));
        }
        (void)qmp.Execute("quit");
        return Ok();
      }();
      ::kill(pid, SIGKILL);
      AwaitExit(t, pid);
      return saved;
    }();
    if (uid_pool_) uid_pool_->Release(t.id);
    fs::remove_all(dir + "/vm", ec);
    if (!made) return std::unexpected(made.error());
    log::Info("microvm: made a template", {{"template", key}, {"memory_mb", m.memory_mb}});
    return dir;
  }

  static Handle TemplateHandle(const std::string& dir) {
    std::string key = dir.substr(dir.rfind('/') + 1);
    return Handle{"airlock-tpl-" + key.substr(0, 12), dir};
  }

  // At start, before any build: what an earlier control plane left in the template cache.
  // A build it did not finish (it died meanwhile) leaves a QEMU that no sweep of sandboxes
  // finds, as it is in no state directory: it is killed and its files go. A template no
  // sandbox was made from for kTemplateMaxAge goes too.
  void SweepTemplates() {
    std::error_code ec;
    const auto now = fs::file_time_type::clock::now();
    for (const auto& e : fs::directory_iterator(o_.cache_dir + "/tpl", ec)) {
      const std::string dir = e.path().string();
      Handle t = TemplateHandle(dir);
      std::error_code ec2;
      if (fs::exists(dir + "/vm", ec2)) {
        if (auto pid = LivePid(t)) {
          ::kill(*pid, SIGKILL);
          AwaitExit(t, *pid);
        }
        fs::remove_all(dir + "/vm", ec2);
      }
      auto used = fs::last_write_time(dir + "/snapshot", ec2);
      const bool unfinished = static_cast<bool>(ec2);
      if (unfinished || now - used > kTemplateMaxAge) {
        fs::remove_all(dir, ec2);
        log::Info("microvm: removed a template", {{"template", e.path().filename().string()},
                                                  {"why", unfinished ? "unfinished" : "unused"}});
      }
    }
  }

  // A sandbox restored from the template in `tpl`: QEMU reads the snapshot, init gets this
  // sandbox's launch over airlock.launch and answers once it has it.
  Result<pid_t> FromTemplate(const Handle& h, const Machine& m, const std::string& tpl,
                             const Launch& launch, std::optional<uint32_t> uid) {
    std::vector<std::string> argv = MachineArgs(h, m);
    AIRLOCK_TRY(WriteFile(h.file("qemu.argv"), Json(argv).dump(), 0600));
    UniqueFd in(::open((tpl + "/snapshot").c_str(), O_RDONLY | O_CLOEXEC));
    if (!in.valid()) {
      return Errorf(ErrorCode::kInternal, "open {}/snapshot: {}", tpl, std::strerror(errno));
    }
    AIRLOCK_ASSIGN_OR_RETURN(pid_t pid, Spawn(h, argv, uid, in.get()));
    auto launched = [&]() -> Status {
      AIRLOCK_ASSIGN_OR_RETURN(QmpSession qmp,
                               QmpSession::Connect(h.file("qmp.sock"), std::chrono::minutes(1)));
      return RestoredLaunch(h, qmp, launch);
    }();
    if (!launched) {
      relay_.Detach(h.id);
      ::kill(pid, SIGKILL);
      AwaitExit(h, pid);
      return std::unexpected(launched.error());
    }
    return pid;
  }

  // Once the QEMU of `h` reads a template's snapshot: waits for it to be read, relays the
  // channel and sends the launch.
  Status RestoredLaunch(const Handle& h, QmpSession& qmp, const Launch& launch) {
    // Not one connection to the guest's ports before the snapshot is read: the device
    // state it loads would lose the guest's news of it, and the port would look unheld.
    AIRLOCK_ASSIGN_OR_RETURN(std::string outcome,
                             AwaitMigration(qmp, std::chrono::milliseconds(1)));
    if (outcome != "completed") {
      return Errorf(ErrorCode::kUnavailable, "qemu could not restore the template: {} {}", outcome,
                    ReadSmallFile(h.file("qemu.log"), 2048));
    }
    AIRLOCK_TRY(relay_.Attach(h.id, h.file("channel.sock"), ChannelDirOf(h) + "/control.sock"));
    return SendLaunch(h, qmp, launch);
  }

  // ---- Spares: QEMUs started ahead, one set per template in use
  //
  // A QEMU's own start is 60-90 ms of a start from a template here (most of it the dynamic
  // loader binding QEMU's ~50 libraries), before it reads a byte of the snapshot. A spare is
  // that QEMU started ahead with the template's machine, jailed as any (its own uid, mount
  // namespace, cgroup and seccomp filter), with no guest: `-incoming defer` holds the guest's
  // RAM unallocated and runs nothing (~40 MiB, no CPU). The next sandbox of that template
  // claims it (FromSpare): its files, cgroup and uid become the sandbox's, then it is given
  // the snapshot. A spare is used once; a new one is started in the background after each
  // start from a template, and one unclaimed for kSpareIdle is stopped.
  struct Spare {
    Handle h;  // id kSparePrefix + name, directory <state_dir>/spare/<name>
    pid_t pid = 0;
    std::chrono::steady_clock::time_point made;
  };

  // Whether a spare can become the sandbox of `h`: its files are renamed into h's directory,
  // which must be on the state directory's file system (else the host is told once, and
  // sandboxes start without), and h must have no log yet (a sandbox made again in its
  // session's directory appends to the log of the ones before, which the spare's would
  // replace).
  bool SpareCanServe(const Handle& h) {
    if (o_.spare_qemus <= 0) return false;
    struct stat state = {};
    struct stat work = {};
    if (::stat(o_.state_dir.c_str(), &state) != 0 || ::stat(h.dir.c_str(), &work) != 0) {
      return false;
    }
    if (state.st_dev != work.st_dev) {
      if (!spares_elsewhere_.exchange(true)) {
        log::Warn(
            "microvm: spare QEMUs cannot serve sandboxes whose directory is on another "
            "file system than the state directory; those start without",
            {{"state_dir", o_.state_dir}, {"work_dir", h.dir}});
      }
      return false;
    }
    struct stat log_file = {};
    return ::stat(LogPath(h).c_str(), &log_file) != 0 || log_file.st_size == 0;
  }

  std::optional<Spare> TakeSpare(const std::string& tpl) {
    std::lock_guard lock(spare_mu_);
    auto it = spares_.find(tpl);
    if (it == spares_.end() || it->second.empty()) return std::nullopt;
    // The oldest: with several, each is used before it idles out.
    Spare spare = std::move(it->second.front());
    it->second.erase(it->second.begin());
    if (it->second.empty()) spares_.erase(it);
    return spare;
  }

  void WantSpare(const std::string& tpl, const Machine& m) {
    if (o_.spare_qemus <= 0 || !spare_thread_.joinable()) return;
    {
      std::lock_guard lock(spare_mu_);
      spare_wanted_[tpl] = m;
    }
    spare_cv_.notify_one();
  }

  // The spare thread: makes the spares wanted, one at a time, and stops idle ones.
  void SpareLoop() {
    std::unique_lock lock(spare_mu_);
    while (!stopping_) {
      std::vector<Spare> idle;
      const auto now = std::chrono::steady_clock::now();
      for (auto it = spares_.begin(); it != spares_.end();) {
        auto& list = it->second;
        for (auto s = list.begin(); s != list.end();) {
          if (now - s->made < kSpareIdle) {
            ++s;
            continue;
          }
          idle.push_back(std::move(*s));
          s = list.erase(s);
        }
        it = list.empty() ? spares_.erase(it) : std::next(it);
      }
      if (!idle.empty()) {
        lock.unlock();
        for (const Spare& spare : idle) DiscardSpare(spare);
        lock.lock();
        continue;
      }
      auto want = spare_wanted_.begin();
      while (want != spare_wanted_.end() && spares_.contains(want->first) &&
             static_cast<int64_t>(spares_[want->first].size()) >= o_.spare_qemus) {
        want = spare_wanted_.erase(want);
      }
      if (want == spare_wanted_.end()) {
        spare_cv_.wait_for(lock, kSpareIdle / 4);
        continue;
      }
      const std::string tpl = want->first;
      const Machine m = want->second;
      lock.unlock();
      auto spare = MakeSpare(m);
      lock.lock();
      if (!spare) {
        log::Warn("microvm: could not start a spare QEMU", {{"error", spare.error().message}});
        spare_wanted_.erase(tpl);  // asked again by the next start from it
        continue;
      }
      if (stopping_) {
        lock.unlock();
        DiscardSpare(*spare);
        lock.lock();
        break;
      }
      spares_[tpl].push_back(std::move(*spare));
    }
  }

  Result<Spare> MakeSpare(const Machine& m) {
    const std::string name = HexEncode(RandomBytes(6));
    Spare spare{Handle{kSparePrefix + name, o_.state_dir + "/spare/" + name}, 0,
                std::chrono::steady_clock::now()};
    AIRLOCK_TRY(MakeVmDir(spare.h.dir));
    auto pid = [&]() -> Result<pid_t> {
      std::optional<uint32_t> uid;
      if (uid_pool_) {
        AIRLOCK_ASSIGN_OR_RETURN(uid, uid_pool_->Acquire(spare.h.id));
      }
      return Spawn(spare.h, MachineArgs(spare.h, m), uid, kIncomingDeferred);
    }();
    if (!pid) {
      if (uid_pool_) uid_pool_->Release(spare.h.id);
      std::error_code ec;
      fs::remove_all(spare.h.dir, ec);
      return std::unexpected(pid.error());
    }
    spare.pid = *pid;
    // What LivePid looks for in its command line, here and once a sandbox claims it.
    if (auto st = WriteFile(spare.h.file("qemu.name"), spare.h.id, 0600); !st) {
      DiscardSpare(spare);
      return std::unexpected(st.error());
    }
    return spare;
  }

  void DiscardSpare(const Spare& spare) {
    auto pid = LivePid(spare.h);
    // Its files gone (removed under it): the pid it was started with, if still that QEMU.
    if (!pid && IsLiveQemu(spare.pid, spare.h.id)) pid = spare.pid;
    if (pid) {
      ::kill(*pid, SIGKILL);
      AwaitExit(spare.h, *pid);
    } else if (jailed_) {
      RemoveMemoryCgroup(cgroups_, CgroupOf(spare.h));
    }
    if (uid_pool_) uid_pool_->Release(spare.h.id);
    std::error_code ec;
    fs::remove_all(spare.h.dir, ec);
  }

  // Every thread of `pid` to SCHED_OTHER (a spare started as SCHED_IDLE, Spawn); threads it
  // makes later inherit it, and one made during a pass is caught by the next.
  static Status NormalPolicy(pid_t pid) {
    for (int pass = 0; pass < 10; ++pass) {
      bool changed = false;
      std::error_code ec;
      for (const auto& e : fs::directory_iterator(fmt::format("/proc/{}/task", pid), ec)) {
        const pid_t tid = std::atoi(e.path().filename().c_str());
        if (tid <= 0 || ::sched_getscheduler(tid) == SCHED_OTHER) continue;
        sched_param param{};
        if (::sched_setscheduler(tid, SCHED_OTHER, &param) != 0 && errno != ESRCH) {
          return Errorf(ErrorCode::kInternal, "give QEMU thread {} the normal policy: {}", tid,
                        std::strerror(errno));
        }
        changed = true;
      }
      if (ec) return Errorf(ErrorCode::kInternal, "list QEMU {}'s threads: {}", pid, ec.message());
      if (!changed) return Ok();
    }
    return Errorf(ErrorCode::kInternal, "QEMU {} keeps making threads", pid);
  }

  // At start: the spares an earlier control plane left (it died, or did not stop them).
  void SweepSpares() {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(o_.state_dir + "/spare", ec)) {
      const std::string name = e.path().filename().string();
      DiscardSpare(Spare{Handle{kSparePrefix + name, e.path().string()}, 0, {}});
    }
  }

  // A sandbox restored from the template in `tpl` by `spare`, a QEMU of its machine `m`
  // started ahead: the spare's directory and log are renamed to the sandbox's (QEMU's open
  // files and listening sockets go with them; in its mount namespace nothing moves), its
  // process moves to the sandbox's cgroup and its uid to the sandbox, and its command line
  // keeps the spare's name, which its vm/qemu.name (MakeSpare) records for LivePid. Then it
  // reads the snapshot, as FromTemplate's QEMU does. A failure kills it.
  Result<pid_t> FromSpare(const Handle& h, const Machine& m, const std::string& tpl,
                          const Launch& launch, const Spare& spare) {
    if (LivePid(spare.h) != spare.pid) {
      DiscardSpare(spare);
      return MakeError(ErrorCode::kUnavailable, "the spare QEMU has exited");
    }
    const std::string channel_dir = ChannelDirOf(h);
    std::error_code ec;
    // What Create wrote goes into the spare's directory, which then takes the place of the
    // sandbox's (renames: nothing is written again).
    if (::rename(h.file("channel_dir").c_str(), spare.h.file("channel_dir").c_str()) != 0 ||
        ::rmdir((h.dir + "/vm").c_str()) != 0 ||
        ::rename(LogPath(spare.h).c_str(), LogPath(h).c_str()) != 0 ||
        ::rename((spare.h.dir + "/vm").c_str(), (h.dir + "/vm").c_str()) != 0) {
      const int err = errno;
      DiscardSpare(spare);
      fs::remove_all(h.dir + "/vm", ec);
      if (MakeVmDir(h.dir)) (void)WriteFile(h.file("channel_dir"), channel_dir, 0600);
      return Errorf(ErrorCode::kUnavailable, "move the spare QEMU's files to {}: {}", h.dir,
                    std::strerror(err));
    }
    // From here the spare's QEMU is the sandbox's.
    auto launched = [&]() -> Status {
      // A wake after a hibernation starts a QEMU of its own, with the sandbox's paths.
      AIRLOCK_TRY(WriteFile(h.file("qemu.argv"), Json(MachineArgs(h, m)).dump(), 0600));
      if (uid_pool_) AIRLOCK_TRY(uid_pool_->Transfer(spare.h.id, h.id));
      if (spares_idle_) AIRLOCK_TRY(NormalPolicy(spare.pid));
      if (jailed_) {
        // The same limit as its own JailOf gave it. What QEMU allocated before the move stays
        // charged to the spare's cgroup's parent (~40 MiB, fixed: QEMU's own start).
        auto procs =
            MakeMemoryCgroup(cgroups_, CgroupOf(h), (m.memory_mb + o_.qemu_overhead_mb) << 20);
        if (procs) {
          AIRLOCK_TRY(WriteCgroupFile(*procs, std::to_string(spare.pid)));
        } else if (procs.error().code != ErrorCode::kUnavailable) {
          return std::unexpected(procs.error());
        }
        RemoveMemoryCgroup(cgroups_, CgroupOf(spare.h));
      }
      fs::remove_all(spare.h.dir, ec);
      UniqueFd in(::open((tpl + "/snapshot").c_str(), O_RDONLY | O_CLOEXEC));
      if (!in.valid()) {
        return Errorf(ErrorCode::kInternal, "open {}/snapshot: {}", tpl, std::strerror(errno));
      }
      AIRLOCK_ASSIGN_OR_RETURN(QmpSession qmp,
                               QmpSession::Connect(h.file("qmp.sock"), std::chrono::minutes(1)));
      AIRLOCK_TRY(qmp.Execute("getfd", {{"fdname", "snapshot"}}, in.get()));
      AIRLOCK_TRY(qmp.Execute("migrate-incoming", {{"uri", "fd:snapshot"}}));
      return RestoredLaunch(h, qmp, launch);
    }();
    if (!launched) {
      relay_.Detach(h.id);
      ::kill(spare.pid, SIGKILL);
      AwaitExit(h, spare.pid);
      if (jailed_) RemoveMemoryCgroup(cgroups_, CgroupOf(spare.h));
      if (uid_pool_) uid_pool_->Release(spare.h.id);
      fs::remove_all(spare.h.dir, ec);
      ::unlink(h.file("qemu.name").c_str());
      return std::unexpected(launched.error());
    }
    return spare.pid;
  }

  // A connection to the guest's airlock.launch port, with `message` written to it.
  static Result<UniqueFd> WriteToLaunchPort(const Handle& h, const std::string& message) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string path = h.file("launch.sock");
    if (path.size() >= sizeof(addr.sun_path)) {
      return Errorf(ErrorCode::kInternal, "socket path too long: {}", path);
    }
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    UniqueFd sock(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!sock.valid() ||
        ::connect(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      return Errorf(ErrorCode::kUnavailable, "connect {}: {}", path, std::strerror(errno));
    }
    if (::send(sock.get(), message.data(), message.size(), MSG_NOSIGNAL) !=
        static_cast<ssize_t>(message.size())) {
      return Errorf(ErrorCode::kUnavailable, "write to {}: {}", path, std::strerror(errno));
    }
    return sock;
  }

  // Init's one-line answer on the launch port (at most 64 bytes), or why there is none.
  static Result<std::string> AwaitAnswer(const UniqueFd& sock, std::chrono::milliseconds wait) {
    std::string answer;
    auto deadline = std::chrono::steady_clock::now() + wait;
    while (answer.find('\n') == std::string::npos && answer.size() < 64) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd p{sock.get(), POLLIN, 0};
      if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
        return MakeError(ErrorCode::kUnavailable, "no answer from the guest's init");
      }
      char buf[64];
      ssize_t n = ::recv(sock.get(), buf, sizeof(buf), 0);
      if (n <= 0) return MakeError(ErrorCode::kUnavailable, "the guest closed its launch port");
      answer.append(buf, static_cast<size_t>(n));
    }
    return answer;
  }

  // Writes the launch to the restored guest's airlock.launch, lets the guest run, and waits
  // for init's "launched".
  Status SendLaunch(const Handle& h, QmpSession& qmp, const Launch& launch) {
    std::string body = fmt::format("time_ms {}\nentropy {}\n{}args\n{}", NowMillis(),
                                   HexEncode(RandomBytes(64)), launch.settings, launch.args);
    AIRLOCK_ASSIGN_OR_RETURN(UniqueFd sock,
                             WriteToLaunchPort(h, fmt::format("launch {}\n", body.size()) + body));
    AIRLOCK_TRY(qmp.Execute("cont"));
    auto answer = AwaitAnswer(sock, std::chrono::seconds(60));
    if (!answer) return Errorf(ErrorCode::kUnavailable, "launch: {}", answer.error().message);
    if (*answer != "launched\n") {
      return Errorf(ErrorCode::kUnavailable, "the restored guest answered its launch with {:?}",
                    answer->substr(0, 64));
    }
    return Ok();
  }

  // Sets the running guest's clock to the host's (init's KeepClock), after it slept.
  // Best effort: a guest whose init predates KeepClock (hibernated before an upgrade) keeps
  // its clock behind, which is logged.
  void SetGuestClock(const Handle& h) {
    auto answer = [&]() -> Result<std::string> {
      AIRLOCK_ASSIGN_OR_RETURN(UniqueFd sock,
                               WriteToLaunchPort(h, fmt::format("clock {}\n", NowMillis())));
      return AwaitAnswer(sock, std::chrono::seconds(2));
    }();
    if (!answer || *answer != "clock set\n") {
      log::Warn("microvm: the woken guest's clock was not set; it is behind by the time it slept",
                {{"sandbox", h.id},
                 {"error", answer ? "answered " + answer->substr(0, 64) : answer.error().message}});
    }
  }

  // What identifies the guest kernel: a new one makes new templates.
  std::string KernelStamp() const {
    std::error_code ec;
    auto size = fs::file_size(o_.kernel_dir + "/vmlinux", ec);
    return ReadSmallFile(o_.kernel_dir + "/VERSION", 256) + ":" + std::to_string(ec ? 0 : size);
  }

  static std::string AccelArg(const Machine& m) {
    return m.accel == "tcg" ? fmt::format("tcg,tb-size={}", kTcgCodeCacheMb) : m.accel;
  }

  // QEMU's command line for machine `m` with the files of `h`.
  std::vector<std::string> MachineArgs(const Handle& h, const Machine& m) {
    const int64_t memory_mb = m.memory_mb;
    const int cpus = m.cpus;
    const std::string& disk = m.disk;
    std::vector<std::string> argv = {

        qemu_,
        "-name",
        h.id,
        "-machine",
        "microvm,x-option-roms=off,rtc=on",
        "-accel",
        AccelArg(m),
        "-m",
        std::to_string(memory_mb),
        "-smp",
        std::to_string(cpus),
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-kernel",
        o_.kernel_dir + "/vmlinux",
        "-initrd",
        m.initrd,
        "-append",
        kernel_args_,
        "-serial",
        "file:" + h.file("console.log"),
        "-device",
        "virtio-serial-device,max_ports=8",
        "-chardev",
        fmt::format("socket,id=channel,path={},server=on,wait=off", h.file("channel.sock")),
        "-device",
        "virtserialport,chardev=channel,name=airlock.channel",
        "-chardev",
        fmt::format("file,id=log,path={},append=on", LogPath(h)),
        "-device",
        "virtserialport,chardev=log,name=airlock.log",
        "-chardev",
        fmt::format("file,id=status,path={}", h.file("status")),
        "-device",
        "virtserialport,chardev=status,name=airlock.status",
        "-chardev",
        fmt::format("socket,id=launch,path={},server=on,wait=off", h.file("launch.sock")),
        "-device",
        "virtserialport,chardev=launch,name=airlock.launch",
        "-drive",
        fmt::format("id=root,file={},format=raw,if=none,readonly=on", disk),
        "-device",
        "virtio-blk-device,drive=root",
        "-qmp",
        fmt::format("unix:{},server=on,wait=off", h.file("qmp.sock")),
        "-pidfile",
        h.file("qemu.pid"),
        // QEMU's own seccomp filter: no obsolete syscalls, no set*uid, no fork/exec, no
        // scheduler or resource changes, for whatever a guest might make QEMU do.
        "-sandbox",
        "on,obsolete=deny,spawn=deny,resourcecontrol=deny",
    };
    return argv;
  }

  // Starts QEMU with `argv` as uid `uid` (when root) and waits for its monitor. `incoming`
  // >= 0: a snapshot to restore, read from that descriptor; kIncomingDeferred: one that a
  // migrate-incoming will name (a spare).
  Result<pid_t> Spawn(const Handle& h, std::vector<std::string> argv, std::optional<uint32_t> uid,
                      int incoming) {
    if (uid) {
      // QEMU opens every file and socket as root, then becomes a host uid of its own that no
      // account has, before the guest runs: what escapes the guest into QEMU is that uid,
      // with no capability, apart from every other VM. (Not elevateprivileges=deny: QEMU's
      // filter goes on before -runas, and would forbid it; a process that left uid 0 for
      // good cannot go back anyway.)
      argv.push_back("-runas");
      argv.push_back(fmt::format("{}:{}", *uid, *uid));
    }
    if (incoming >= 0) {
      // QEMU cannot open the file itself (it runs as that uid, and spawn=deny rules out
      // "exec:"): it inherits it.
      argv.push_back("-incoming");
      argv.push_back("fd:3");
    } else if (incoming == kIncomingDeferred) {
      argv.push_back("-incoming");
      argv.push_back("defer");
    }
    for (const char* stale : {"status", "qemu.pid", "qemu.log", "qemu.name", "channel.sock",
                              "qmp.sock", "launch.sock"}) {
      ::unlink(h.file(stale).c_str());
    }
    std::optional<DaemonJail> jail;
    if (jailed_) {
      AIRLOCK_ASSIGN_OR_RETURN(jail, JailOf(h, argv));
      // A spare starts on CPU that nothing else wants: its start (~90 ms of CPU) comes right
      // after a sandbox took the last one, and would slow that sandbox's guest (BENCHMARKS.md,
      // issue 13, "Seventh run"). FromSpare gives it the normal policy back (as root only).
      jail->idle_cpu = incoming == kIncomingDeferred && spares_idle_;
    }
    // Not -daemonize: QEMU forks for it, which its own seccomp filter (spawn=deny) forbids.
    auto pid =
        SpawnDaemon(argv, {}, h.file("qemu.log"), std::max(incoming, -1), jail ? &*jail : nullptr);
    if (!pid) {
      if (jailed_) RemoveMemoryCgroup(cgroups_, CgroupOf(h));
      return std::unexpected(pid.error());
    }
    if (auto st = AwaitQemu(h, *pid); !st) {
      AwaitExit(h, *pid);
      return std::unexpected(st.error());
    }
    return *pid;
  }

  // What confines the QEMU of `argv`, as Firecracker's jailer does its VMM (as root):
  // - a memory cgroup of its own that allows the guest's RAM plus qemu_overhead_mb;
  // - a mount namespace of its own whose root holds the host's /usr (QEMU, its libraries and
  //   firmware), the few devices it opens, the files its command line names (kernel, initrd,
  //   disk: read-only) and the VM's own directory and log (writable). No /proc, no /etc, no
  //   other VM, nothing of the control plane: what escapes the guest into QEMU finds no more.
  Result<DaemonJail> JailOf(const Handle& h, const std::vector<std::string>& argv) {
    DaemonJail jail;
    int64_t memory_mb = 0;
    bool kvm = false;
    for (size_t i = 0; i + 1 < argv.size(); ++i) {
      const std::string& flag = argv[i];
      const std::string& value = argv[i + 1];
      if (flag == "-m") {
        memory_mb = std::atoll(value.c_str());
      } else if (flag == "-accel") {
        kvm = value == "kvm";
      } else if (flag == "-kernel" || flag == "-initrd") {
        jail.read_only.push_back(value);
      } else if (flag == "-drive") {
        // "id=root,file=<path>,format=raw,...": our own line, whose paths hold no comma.
        if (auto at = value.find("file="); at != std::string::npos) {
          jail.read_only.push_back(value.substr(at + 5, value.find(',', at) - at - 5));
        }
      }
    }
    if (memory_mb <= 0) return Errorf(ErrorCode::kInternal, "{}: no -m in qemu's arguments", h.id);
    auto procs = MakeMemoryCgroup(cgroups_, CgroupOf(h), (memory_mb + o_.qemu_overhead_mb) << 20);
    if (procs) {
      jail.cgroups.push_back(*procs);
    } else if (procs.error().code != ErrorCode::kUnavailable) {
      return std::unexpected(procs.error());
    }
    for (const char* host :
         {"/usr", "/lib", "/lib64", "/etc/ld.so.cache", "/dev/null", "/dev/zero", "/dev/urandom"}) {
      if (Exists(host) || fs::is_symlink(host)) jail.read_only.push_back(host);
    }
    if (!argv.empty() && !argv[0].starts_with("/usr/")) jail.read_only.push_back(argv[0]);
    if (kvm) jail.read_only.push_back("/dev/kvm");
    // QEMU appends to the agent's log, which lives beside the VM's files, not among them; made
    // here if missing, as a bind needs something to bind.
    UniqueFd log(::open(LogPath(h).c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
    jail.writable = {h.dir + "/vm", LogPath(h)};
    jail.root = jail_root_;
    return jail;
  }

  Status Suspend(const std::string& handle) override {
    AIRLOCK_ASSIGN_OR_RETURN(Handle h, Decode(handle));
    if (Hibernated(h)) return Ok();  // already holds less than a pause would
    AIRLOCK_TRY(Qmp(h, "stop"));
    // When it stopped: a guest paused for long gets its clock set at the resume.
    (void)WriteFile(h.file("paused_at"), std::to_string(NowMillis()), 0600);
    return Ok();
  }

  // The guest is stopped, its devices' and memory's state written by QEMU's migration
  // stream into vm/snapshot, and QEMU quits: the VM holds no memory and no process until
  // Resume starts a QEMU that reads it back. The guest never notices, apart from its clock
  // and its channel, which it sees close and come back (in-flight requests fail and are
  // retried, as across a control-plane restart).
  Status Hibernate(const std::string& handle) override {
    AIRLOCK_ASSIGN_OR_RETURN(Handle h, Decode(handle));
    if (Hibernated(h)) return Ok();
    auto pid = LivePid(h);
    if (!pid) return Errorf(ErrorCode::kConflict, "{} is not running", h.id);
    // Writing the guest's RAM takes a moment per 100 MiB under TCG; a stuck QEMU fails it.
    AIRLOCK_ASSIGN_OR_RETURN(QmpSession qmp,
                             QmpSession::Connect(h.file("qmp.sock"), std::chrono::minutes(5)));
    AIRLOCK_ASSIGN_OR_RETURN(Json before, qmp.Execute("query-status"));
    const bool was_running = before.is_object() && before.value("running", false);
    // Stopped before its channel goes, so that what the guest holds is the same whatever the
    // timing: streams of the host mux that is about to go, which the one after the wake
    // resets (mux.h), never a half-noticed close.
    AIRLOCK_TRY(qmp.Execute("stop"));
    relay_.Detach(h.id);
    auto undo = [&](const Error& e) -> Status {
      ::unlink(h.file("snapshot.tmp").c_str());
      if (was_running) (void)qmp.Execute("cont");
      (void)relay_.Attach(h.id, h.file("channel.sock"), ChannelDirOf(h) + "/control.sock");
      return std::unexpected(e);
    };
    if (auto st = SaveSnapshot(qmp, h.file("snapshot.tmp")); !st) return undo(st.error());
    if (::rename(h.file("snapshot.tmp").c_str(), h.file("snapshot").c_str()) != 0) {
      return undo(Error{ErrorCode::kInternal,
                        fmt::format("keep {}'s snapshot: {}", h.id, std::strerror(errno))});
    }
    (void)qmp.Execute("quit");
    AwaitExit(h, *pid);
    if (LivePid(h)) {
      ::kill(*pid, SIGKILL);
      AwaitExit(h, *pid);
    }
    // Its uid is free until it wakes: a restored QEMU may run as another.
    if (uid_pool_) uid_pool_->Release(h.id);
    return Ok();
  }

  Result<std::string> Resume(const std::string& handle) override {
    AIRLOCK_ASSIGN_OR_RETURN(Handle h, Decode(handle));
    // A guest's clock stands still while it is stopped (hibernated or paused).
    const std::string paused_at = ReadSmallFile(h.file("paused_at"), 64);
    ::unlink(h.file("paused_at").c_str());
    bool slept = !paused_at.empty() && NowMillis() - std::atoll(paused_at.c_str()) > 1000;
    if (Hibernated(h)) {
      AIRLOCK_TRY(Restore(h));
      slept = true;
    }
    AIRLOCK_TRY(Qmp(h, "cont"));
    if (slept) SetGuestClock(h);
    return handle;
  }

  Status Destroy(const std::string& handle) override {
    AIRLOCK_ASSIGN_OR_RETURN(Handle h, Decode(handle));
    relay_.Detach(h.id);
    if (auto pid = LivePid(h)) {
      ::kill(*pid, SIGKILL);
      AwaitExit(h, *pid);
    }
    // An exited QEMU's cgroup stays until here: Inspect reads its OOM kills.
    if (jailed_) RemoveMemoryCgroup(cgroups_, CgroupOf(h));
    std::error_code ec;
    fs::remove_all(h.dir + "/vm", ec);
    fs::remove(o_.state_dir + "/" + h.id, ec);
    // Only now, with QEMU gone, may another sandbox get its uid.
    if (uid_pool_) uid_pool_->Release(h.id);
    return Ok();
  }

  Result<SandboxStatus> Inspect(const std::string& handle) override {
    AIRLOCK_ASSIGN_OR_RETURN(Handle h, Decode(handle));
    SandboxStatus s;
    if (!Exists(h.dir + "/vm")) return s;  // kMissing
    if (Hibernated(h)) {
      s.state = SandboxState::kPaused;
      s.detail = "hibernated";
      return s;
    }
    if (LivePid(h)) {
      s.state = SandboxState::kRunning;
      // Paused only by our Suspend; ask QEMU only when it could be.
      auto status = QmpQuery(h, "query-status");
      if (status && status->is_object() && status->value("status", "") == "paused") {
        s.state = SandboxState::kPaused;
      }
      s.detail = s.state == SandboxState::kPaused ? "paused" : "running";
      return s;
    }
    s.state = SandboxState::kExited;
    ParseStatus(ReadSmallFile(h.file("status"), 256), s);
    if (jailed_ && OomKillCount(cgroups_, CgroupOf(h)) > 0) {
      // QEMU itself outgrew its cgroup: the guest's RAM plus qemu_overhead_mb.
      s.exit_code = 137;
      s.oom_killed = true;
      s.detail = "the VM's QEMU was killed for using more than its memory limit";
    } else if (!s.exit_code) {
      // Init never reported: the guest died (QEMU killed, a kernel panic). No exit code, as
      // for a container whose init was killed: the agent did not give up, it was taken.
      s.detail = "the VM stopped without a report from init; its console: " + ConsoleTail(h);
    } else {
      s.detail = "stopped";
    }
    return s;
  }

  Result<SandboxStatus> Reattach(const std::string& handle) override {
    AIRLOCK_ASSIGN_OR_RETURN(Handle h, Decode(handle));
    auto s = Inspect(handle);
    auto pid = LivePid(h);
    if (s && pid && (s->state == SandboxState::kRunning || s->state == SandboxState::kPaused)) {
      if (uid_pool_) uid_pool_->Adopt(h.id, ProcessUid(*pid));
      // The control plane's session socket is new: relay to it again.
      (void)relay_.Attach(h.id, h.file("channel.sock"), ChannelDirOf(h) + "/control.sock");
    }
    return s;
  }

  Result<std::vector<ListedSandbox>> List() override {
    std::vector<ListedSandbox> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(o_.state_dir, ec)) {
      std::string name = e.path().filename().string();
      if (!name.starts_with(kIdPrefix) || name.ends_with(".tmp")) continue;
      std::string handle = ReadSmallFile(e.path().string(), 4096);
      if (!Decode(handle)) continue;
      out.push_back({name.substr(std::strlen(kIdPrefix)), handle});
    }
    return out;
  }

  Result<std::string> Logs(const std::string& handle, int64_t offset, size_t max_bytes) override {
    AIRLOCK_ASSIGN_OR_RETURN(Handle h, Decode(handle));
    std::ifstream f(LogPath(h), std::ios::binary);
    if (!f) return std::string();
    f.seekg(offset);
    std::string out(max_bytes, '\0');
    f.read(out.data(), static_cast<std::streamsize>(max_bytes));
    out.resize(static_cast<size_t>(std::max<std::streamsize>(f.gcount(), 0)));
    return out;
  }

 private:
  // Beside the VM's files, not among them: the log outlives the sandbox (Destroy).
  static std::string LogPath(const Handle& h) { return h.dir + "/sandbox.log"; }
  static std::string ConsoleTail(const Handle& h) {
    std::string text = ReadSmallFile(h.file("console.log"), 1 << 20);
    return text.size() > 1024 ? text.substr(text.size() - 1024) : text;
  }
  // Recorded by WriteInitrd: where the session's control.sock is.
  static std::string ChannelDirOf(const Handle& h) { return ReadSmallFile(h.file("channel_dir")); }

  // QEMU listens on its sockets before it starts the guest: once the monitor answers, the
  // channel's socket is there too. A QEMU that dies first says why in its log.
  Status AwaitQemu(const Handle& h, pid_t pid) {
    const auto start = std::chrono::steady_clock::now();
    auto deadline = start + std::chrono::seconds(30);
    // Its monitor is up within tens of milliseconds (a restore or a boot goes on after it):
    // looked for often until then, which costs a failed connect each time.
    for (auto pause = std::chrono::milliseconds(1);;
         pause = std::chrono::steady_clock::now() - start < std::chrono::seconds(1)
                     ? std::chrono::milliseconds(2)
                     : std::chrono::milliseconds(50)) {
      if (QmpQuery(h, "query-status")) return Ok();
      bool alive = Exists(fmt::format("/proc/{}", pid));
      if (!alive || std::chrono::steady_clock::now() >= deadline) {
        if (alive) ::kill(pid, SIGKILL);
        std::string log = ReadSmallFile(h.file("qemu.log"), 4096);
        return Errorf(ErrorCode::kUnavailable, "qemu {}: {}",
                      alive ? "did not start within 30 s" : "failed to start",
                      log.empty() ? "no message" : log);
      }
      std::this_thread::sleep_for(pause);
    }
  }

  // A hibernated VM: its snapshot is on disk and no QEMU runs it.
  static bool Hibernated(const Handle& h) { return Exists(h.file("snapshot")) && !LivePid(h); }

  // QEMU is not our child (SpawnDaemon): wait for its /proc entry to go, then for its
  // cgroup, which the kernel removes only once it holds no process.
  void AwaitExit(const Handle& h, pid_t pid) {
    for (int i = 0; i < 2500 && Exists(fmt::format("/proc/{}", pid)) && !IsZombie(pid); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (jailed_) RemoveMemoryCgroup(cgroups_, CgroupOf(h));
  }

  static std::string CgroupOf(const Handle& h) { return "/airlock/" + h.id; }

  // Writes QEMU's migration stream of its stopped guest (RAM and every device) to `path`,
  // which QEMU gets as a descriptor: it can open no file itself.
  static Status SaveSnapshot(QmpSession& qmp, const std::string& path) {
    UniqueFd out(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!out.valid()) {
      return Errorf(ErrorCode::kInternal, "create {}: {}", path, std::strerror(errno));
    }
    AIRLOCK_TRY(qmp.Execute("getfd", {{"fdname", "snapshot"}}, out.get()));
    AIRLOCK_TRY(qmp.Execute("migrate", {{"uri", "fd:snapshot"}}));
    AIRLOCK_ASSIGN_OR_RETURN(std::string outcome, AwaitMigration(qmp));
    if (outcome != "completed") {
      ::unlink(path.c_str());
      return Errorf(ErrorCode::kUnavailable, "qemu could not write the snapshot: {}", outcome);
    }
    if (::fsync(out.get()) != 0) {
      return Errorf(ErrorCode::kInternal, "fsync {}: {}", path, std::strerror(errno));
    }
    return Ok();
  }

  // "completed", or what went wrong, once QEMU's migration has ended either way.

  // `most`: the longest pause between two looks (a restore on a start's path looks often).
  static Result<std::string> AwaitMigration(
      QmpSession& qmp, std::chrono::milliseconds most = std::chrono::milliseconds(20)) {
    for (auto pause = std::chrono::milliseconds(1);; pause = std::min(pause * 2, most)) {
      AIRLOCK_ASSIGN_OR_RETURN(Json m, qmp.Execute("query-migrate"));
      std::string status = m.is_object() ? m.value("status", "") : "";
      if (status == "completed") return status;
      if (status == "failed" || status == "cancelled") {
        return status + (m.contains("error-desc") ? ": " + m.value("error-desc", "") : "");
      }
      std::this_thread::sleep_for(pause);
    }
  }

  // Starts QEMU with the VM's machine and its snapshot as the incoming migration, waits for
  // it to be read (the guest stays stopped), and relays its channel again; the snapshot goes
  // once QEMU holds the guest.
  Status Restore(const Handle& h) {
    auto argv_json = ParseJson(ReadSmallFile(h.file("qemu.argv"), 64 * 1024));
    if (!argv_json || !argv_json->is_array()) {
      return Errorf(ErrorCode::kInternal, "{} has no usable qemu.argv to restore with", h.id);
    }
    std::vector<std::string> argv = argv_json->get<std::vector<std::string>>();
    UniqueFd in(::open(h.file("snapshot").c_str(), O_RDONLY | O_CLOEXEC));
    if (!in.valid()) {
      return Errorf(ErrorCode::kInternal, "open {}: {}", h.file("snapshot"), std::strerror(errno));
    }
    std::optional<uint32_t> uid;
    if (uid_pool_) {
      AIRLOCK_ASSIGN_OR_RETURN(uid, uid_pool_->Acquire(h.id));
    }
    auto restored = [&]() -> Status {
      AIRLOCK_ASSIGN_OR_RETURN(pid_t pid, Spawn(h, argv, uid, in.get()));
      AIRLOCK_ASSIGN_OR_RETURN(QmpSession qmp,
                               QmpSession::Connect(h.file("qmp.sock"), std::chrono::minutes(5)));
      auto outcome = AwaitMigration(qmp, std::chrono::milliseconds(1));
      if (!outcome || *outcome != "completed") {
        ::kill(pid, SIGKILL);
        AwaitExit(h, pid);
        return Errorf(ErrorCode::kUnavailable, "qemu could not restore {}: {} {}", h.id,
                      outcome ? *outcome : outcome.error().message,
                      ReadSmallFile(h.file("qemu.log"), 2048));
      }
      return relay_.Attach(h.id, h.file("channel.sock"), ChannelDirOf(h) + "/control.sock");
    }();
    if (!restored) {
      if (uid_pool_) uid_pool_->Release(h.id);
      return restored;
    }
    ::unlink(h.file("snapshot").c_str());
    return Ok();
  }

  Status Qmp(const Handle& h, const std::string& command) {
    AIRLOCK_ASSIGN_OR_RETURN(Json reply, QmpQuery(h, command));
    (void)reply;
    return Ok();
  }
  Result<Json> QmpQuery(const Handle& h, const std::string& command) {
    return QmpExecute(h.file("qmp.sock"), command, std::chrono::seconds(5));
  }

  // The image's tree as an erofs disk, built once per tree (trees are content-addressed and
  // never change once unpacked) and kept in the cache.
  Result<std::string> ImageDisk(const std::string& rootfs) {
    std::string path =
        fmt::format("{}/disks/{}.erofs", o_.cache_dir, Sha256Hex(rootfs).substr(0, 32));
    std::lock_guard lock(build_mu_);
    if (Exists(path)) return path;
    std::error_code ec;
    fs::create_directories(o_.cache_dir + "/disks", ec);
    std::string tmp = path + ".tmp";
    // -T0 and --all-root: the same bytes for the same tree; root owns everything as in the
    // image's layers (the agent's uid is not in the image).
    std::vector<std::string> argv = {"mkfs.erofs", "--quiet", "-T0", "--all-root", tmp, rootfs};
    CommandOptions co;
    co.timeout = std::chrono::minutes(10);
    auto r = RunCommand(argv, {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, co);
    if (!r || r->exit_code != 0) {
      ::unlink(tmp.c_str());
      return Errorf(ErrorCode::kUnavailable, "mkfs.erofs {}: {}", rootfs,
                    r ? r->output : r.error().message);
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      return Errorf(ErrorCode::kInternal, "rename {}: {}", tmp, std::strerror(errno));
    }
    return path;
  }

  // init and the kernel's modules as one cpio archive, rebuilt when either changes.
  Result<std::string> BaseInitramfs() {
    std::lock_guard lock(build_mu_);
    if (!base_initramfs_.empty()) return base_initramfs_;
    CpioWriter cpio;
    cpio.AddDirectory("airlock", 0755);
    cpio.AddDirectory("airlock/modules", 0755);
    std::string init = ReadSmallFile(o_.init_path, 64 << 20);
    if (init.empty()) return Errorf(ErrorCode::kUnavailable, "cannot read {}", o_.init_path);
    cpio.AddFile("init", init, 0755);
    AIRLOCK_ASSIGN_OR_RETURN(std::string filter, CompileSeccompProfile(SandboxSeccompProfile()));
    cpio.AddFile("airlock/seccomp.bpf", filter, 0644);
    std::error_code ec;
    std::vector<fs::path> modules;
    for (const auto& e : fs::directory_iterator(o_.kernel_dir + "/modules", ec)) {
      if (e.path().extension() == ".ko") modules.push_back(e.path());
    }
    if (modules.empty()) {
      return Errorf(ErrorCode::kUnavailable,
                    "no modules in {}/modules (run scripts/guest-kernel.sh)", o_.kernel_dir);
    }
    std::sort(modules.begin(), modules.end());
    for (const auto& m : modules) {
      cpio.AddFile("airlock/modules/" + m.filename().string(), ReadSmallFile(m, 64 << 20), 0644);
    }
    std::string bytes = cpio.Finish();
    std::string path =
        fmt::format("{}/initramfs-{}.cpio", o_.cache_dir, Sha256Hex(bytes).substr(0, 32));
    fs::create_directories(o_.cache_dir, ec);
    if (!Exists(path)) AIRLOCK_TRY(WriteFile(path, bytes, 0644));
    base_initramfs_ = path;
    return path;
  }

  // What init of this sandbox is told: in the initramfs of a VM that boots (a second
  // archive after the base; the kernel unpacks concatenated archives in order), over
  // airlock.launch to one restored from a template.
  Launch LaunchOf(const OciImage& image, const std::vector<std::string>& command,
                  const Limits& limits) const {
    // A VM is a kernel of its own: the image's User keeps its uid there (never 0; 1000, the
    // `sandbox` of the base image, when it names none).
    const ImageUser user = ResolveImageUser(image.rootfs, image.user);
    const std::string uid = std::to_string(user.uid.value_or(kDefaultAgentId));
    const std::string gid = std::to_string(user.gid.value_or(user.uid.value_or(kDefaultAgentId)));
    std::vector<std::string> args = {"--port",      std::to_string(o_.bridge_port),
                                     "--identity",  "channel",
                                     "--uid",       uid,
                                     "--gid",       gid,
                                     "--home",      "/home/sandbox",
                                     "--log-limit", std::to_string(o_.log_limit_bytes)};
    if (!image.workdir.empty()) {
      args.push_back("--workdir");
      args.push_back(image.workdir);
    }
    // The session's variables and files come over the channel once the identity has.
    args.push_back("--work");
    args.push_back("channel");
    for (const auto& e : ImageEnvForAgent(image.env)) {
      args.push_back("--env");
      args.push_back(e);
    }
    Launch out;
    // What init's options are without the command: a template forks its agent's process
    // with them before it is saved (guest.h), NUL-separated and hex-encoded.
    std::string init_args;
    for (const auto& a : args) {
      init_args += a;
      init_args.push_back('\0');
    }
    args.push_back("--");
    args.insert(args.end(), command.begin(), command.end());
    for (const auto& a : args) {
      out.args += a;
      out.args.push_back('\0');
    }
    // The agent's uid and gid (its home is theirs), as --uid and --gid above.
    auto settings = [&](const Limits& l) {
      std::string text = fmt::format("tmp_bytes {}\npids {}\nuid {}\ngid {}\n",
                                     l.disk_mb.value_or(o_.default_disk_mb) << 20,
                                     l.pids.value_or(o_.default_pids), uid, gid);
      // A working directory on the read-only image gets a writable copy (the guest's init).
      if (WorkdirNeedsItsOwnMount(image.workdir) && image.workdir.find('\n') == std::string::npos) {
        text += fmt::format("workdir {}\n", image.workdir);
      }
      return text;
    };
    out.settings = settings(limits);
    // A template's also: what forks its agent before it is saved (a start restored from it
    // then pays only the exec). Sessions of one image differ only in their command.
    out.image_settings = settings(Limits{}) + fmt::format("init_args {}\n", HexEncode(init_args));
    return out;
  }

  // What a template of `image` reads before it is saved (the guest's Preload): the shell, which
  // most commands go through, and the image's own command.
  static std::string PreloadOf(const OciImage& image) {
    std::string out = "preload /bin/sh\n";
    const auto& command = image.entrypoint.empty() ? image.cmd : image.entrypoint;
    if (!command.empty() && !command[0].empty() && command[0].find('\n') == std::string::npos) {
      out += fmt::format("preload {}\n", command[0]);
    }
    return out;
  }

  MicrovmOptions o_;
  std::string qemu_;
  const std::string kernel_args_;
  std::string accel_;
  std::mutex build_mu_;
  std::string base_initramfs_;
  std::mutex template_mu_;
  std::unique_ptr<UidPool> uid_pool_;  // as root: one host uid per QEMU
  // As root, each QEMU in a cgroup and a mount namespace of its own (JailOf).
  bool jailed_ = false;
  CgroupLayout cgroups_;
  std::string jail_root_;  // an empty directory each QEMU mounts its own root on
  VmRelay relay_;
  // Spares (FromSpare), by template directory; the templates that want more, with their
  // machine; the thread that makes them.
  std::mutex spare_mu_;
  std::condition_variable spare_cv_;
  std::map<std::string, std::vector<Spare>> spares_;
  std::map<std::string, Machine> spare_wanted_;
  bool stopping_ = false;
  bool spares_idle_ = false;                    // spares start as SCHED_IDLE (Spawn)
  std::atomic<bool> spares_elsewhere_ = false;  // warned once (SpareCanServe)
  std::thread spare_thread_;
};

}  // namespace

std::string DefaultGuestKernelDir() {
  if (const char* dir = std::getenv("AIRLOCK_GUEST_KERNEL_DIR"); dir != nullptr && *dir != '\0') {
    return dir;
  }
  if (::geteuid() == 0) return "/var/lib/airlock/guest-kernel";
  if (const char* cache = std::getenv("XDG_CACHE_HOME"); cache != nullptr && *cache != '\0') {
    return std::string(cache) + "/airlock/guest-kernel";
  }
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr ? home : "") + "/.cache/airlock/guest-kernel";
}

std::string MicrovmUnavailableReason(const MicrovmOptions& o) {
  std::string qemu = o.qemu_path.empty() ? FindExecutable("qemu-system-x86_64") : o.qemu_path;
  if (qemu.empty()) return "qemu-system-x86_64 is not installed (scripts/install-deps.sh)";
  if (FindExecutable("mkfs.erofs").empty()) return "mkfs.erofs is not installed (erofs-utils)";
  if (o.kernel_dir.empty() || !Exists(o.kernel_dir + "/vmlinux")) {
    return fmt::format("no guest kernel at {}/vmlinux (scripts/guest-kernel.sh makes it)",
                       o.kernel_dir.empty() ? "<sandbox.microvm.kernel_dir>" : o.kernel_dir);
  }
  if (o.init_path.empty() || ::access(o.init_path.c_str(), R_OK) != 0) {
    return "airlock-init not found at " + o.init_path;
  }
  return {};
}

Result<std::unique_ptr<Backend>> MakeMicrovmBackend(MicrovmOptions o) {
  if (auto why = MicrovmUnavailableReason(o); !why.empty()) {
    return MakeError(ErrorCode::kUnavailable, "microvm: " + why);
  }
  if (o.cache_dir.empty() || o.state_dir.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "microvm: cache_dir and state_dir are required");
  }
  std::error_code ec;
  fs::create_directories(o.state_dir, ec);
  if (ec)
    return Errorf(ErrorCode::kUnavailable, "microvm: create {}: {}", o.state_dir, ec.message());
  ::chmod(o.state_dir.c_str(), 0700);
  if (o.accel != "auto" && o.accel != "kvm" && o.accel != "tcg") {
    return MakeError(ErrorCode::kInvalidArgument, "microvm: accel must be auto, kvm or tcg");
  }
  std::string qemu = o.qemu_path.empty() ? FindExecutable("qemu-system-x86_64") : o.qemu_path;
  return std::unique_ptr<Backend>(std::make_unique<MicrovmBackend>(std::move(o), std::move(qemu)));
}

}  // namespace airlock::sandbox
