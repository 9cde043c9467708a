#include "guest.h"

#include "mux.h"
#include "privileges.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/random.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <optional>
#include <string_view>
#include <thread>

namespace airlock::init {
namespace {

constexpr const char* kArgsFile = "/airlock/args";
constexpr const char* kVmFile = "/airlock/vm";
constexpr const char* kModulesDir = "/airlock/modules";
constexpr const char* kSeccompFile = "/airlock/seccomp.bpf";
constexpr const char* kNewRoot = "/root";
// How long the virtio devices get to appear after their modules loaded.
constexpr int64_t kDeviceWaitMs = 5000;

Result<std::string> ReadFile(const std::string& path, size_t max) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return FailErrno("open " + path, errno);
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FailErrno("read " + path, errno);
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > max) return Fail(path + ": larger than expected");
  }
  return out;
}

Status Mount(const char* source, const std::string& target, const char* type, unsigned long flags,
             const std::string& data = {}) {
  if (::mount(source, target.c_str(), type, flags, data.empty() ? nullptr : data.c_str()) != 0) {
    return FailErrno(
        std::string("mount ") + (type != nullptr ? type : "(remount)") + " on " + target, errno);
  }
  return {};
}

Status MakeDir(const std::string& path, mode_t mode) {
  if (::mkdir(path.c_str(), mode) != 0 && errno != EEXIST) return FailErrno("mkdir " + path, errno);
  return {};
}

Status WriteSmall(const std::string& path, std::string_view text) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd.valid() || !WriteAll(fd.get(), text.data(), text.size())) {
    return FailErrno("write " + path, errno);
  }
  return {};
}

// Loads /airlock/modules/*.ko in name order (the backend numbers them by dependency). The
// kernel takes virtio_mmio's devices from ACPI, so no module needs parameters.
Status LoadModules() {
  DIR* dir = ::opendir(kModulesDir);
  if (dir == nullptr) return FailErrno(std::string("open ") + kModulesDir, errno);
  std::vector<std::string> names;
  while (dirent* e = ::readdir(dir)) {
    std::string_view name = e->d_name;
    if (name.ends_with(".ko")) names.emplace_back(name);
  }
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  for (const auto& name : names) {
    std::string path = std::string(kModulesDir) + "/" + name;
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return FailErrno("open " + path, errno);
    if (::syscall(SYS_finit_module, fd.get(), "", 0) != 0 && errno != EEXIST) {
      return FailErrno("load module " + name, errno);
    }
    // The module's memory is the kernel's now: free the initramfs copy.
    ::unlink(path.c_str());
  }
  return {};
}

// The /dev node of the virtio-serial port named `name` (/sys/class/virtio-ports/*/name).
std::string FindPort(std::string_view name) {
  DIR* dir = ::opendir("/sys/class/virtio-ports");
  if (dir == nullptr) return {};
  std::string found;
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    auto text = ReadFile(std::string("/sys/class/virtio-ports/") + e->d_name + "/name", 256);
    if (text && std::string_view(*text).substr(0, text->find('\n')) == name) {
      found = std::string("/dev/") + e->d_name;
      break;
    }
  }
  ::closedir(dir);
  return found;
}

// Devices appear asynchronously once their driver is bound: wait for all of them.
Result<std::vector<std::string>> AwaitDevices() {
  static constexpr std::string_view kPorts[] = {"airlock.channel", "airlock.log", "airlock.status",
                                                "airlock.launch"};
  int64_t deadline = MonotonicMs() + kDeviceWaitMs;
  for (;;) {
    std::vector<std::string> paths;
    for (auto port : kPorts) {
      std::string path = FindPort(port);
      struct stat st {};
      if (!path.empty() && ::stat(path.c_str(), &st) == 0) paths.push_back(path);
    }
    struct stat disk {};
    if (paths.size() == std::size(kPorts) && ::stat("/dev/vda", &disk) == 0) return paths;
    if (MonotonicMs() >= deadline) {
      return Fail("the VM's devices did not appear (found " + std::to_string(paths.size()) +
                  " of 4 ports" + (::stat("/dev/vda", &disk) == 0 ? "" : ", no /dev/vda") + ")");
    }
    SleepMs(5);
  }
}

// "key value" lines; unknown keys are ignored (an older init with a newer backend).
uint64_t VmSetting(const std::string& text, std::string_view key, uint64_t fallback) {
  std::string_view rest = text;
  while (!rest.empty()) {
    size_t nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
    if (line.size() > key.size() && line.starts_with(key) && line[key.size()] == ' ') {
      uint64_t v = 0;
      std::string_view value = line.substr(key.size() + 1);
      if (std::from_chars(value.data(), value.data() + value.size(), v).ec == std::errc()) {
        return v;
      }
    }
  }
  return fallback;
}

Status MakeNode(const std::string& path, mode_t mode, unsigned major, unsigned minor) {
  if (::mknod(path.c_str(), S_IFCHR | mode, makedev(major, minor)) != 0) {
    return FailErrno("mknod " + path, errno);
  }
  ::chmod(path.c_str(), mode);  // mknod applies the umask
  return {};
}

// What a container's /dev holds, and nothing else: the disk and the ports stay out of the
// agent's reach (init holds its descriptors of the ports already).
Status MinimalDev(const std::string& dev) {
  if (auto s = Mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=64k"); !s)
    return s;
  struct Node {
    const char* name;
    unsigned major, minor;
  };
  static constexpr Node kNodes[] = {{"null", 1, 3},   {"zero", 1, 5},    {"full", 1, 7},
                                    {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}};
  for (const auto& n : kNodes) {
    if (auto s = MakeNode(dev + "/" + n.name, 0666, n.major, n.minor); !s) return s;
  }
  if (auto s = MakeDir(dev + "/pts", 0755); !s) return s;
  if (auto s = Mount("devpts", dev + "/pts", "devpts", MS_NOSUID | MS_NOEXEC,
                     "newinstance,ptmxmode=0666,mode=0620");
      !s) {
    return s;
  }
  if (::symlink("pts/ptmx", (dev + "/ptmx").c_str()) != 0) return FailErrno("symlink ptmx", errno);
  if (auto s = MakeDir(dev + "/shm", 01777); !s) return s;
  return Mount("tmpfs", dev + "/shm", "tmpfs", MS_NOSUID | MS_NOEXEC | MS_NODEV,
               "mode=1777,size=65536k");
}

constexpr unsigned long kCgroupFlags = MS_NOSUID | MS_NOEXEC | MS_NODEV;

// The agent's cgroup: cgroup2 at /sys/fs/cgroup as in a container, the agent (and init,
// until it forks) in "sandbox", whose memory.events counts the OOM kills. SealCgroup gives
// it its limit and makes it read-only, like the rest of /sys.
Result<std::string> AgentCgroup(const std::string& root) {
  std::string mount_point = root + "/sys/fs/cgroup";
  if (auto s = Mount("cgroup2", mount_point, "cgroup2", kCgroupFlags); !s)
    return std::unexpected(s.error());
  if (auto s = WriteSmall(mount_point + "/cgroup.subtree_control", "+memory +pids"); !s) {
    return std::unexpected(s.error());
  }
  std::string group = mount_point + "/sandbox";
  if (auto s = MakeDir(group, 0755); !s) return std::unexpected(s.error());
  if (auto s = WriteSmall(group + "/cgroup.procs", "0"); !s) return std::unexpected(s.error());
  return std::string("/sys/fs/cgroup/sandbox");
}

// `mount_point` is where AgentCgroup mounted cgroup2 (as seen now).
Status SealCgroup(const std::string& mount_point, uint64_t pids) {
  if (auto s =
          WriteSmall(mount_point + "/sandbox/pids.max", pids > 0 ? std::to_string(pids) : "max");
      !s) {
    return s;
  }
  return Mount(nullptr, mount_point, nullptr, MS_REMOUNT | MS_RDONLY | kCgroupFlags);
}

std::string_view LaunchValue(std::string_view text, std::string_view key);

// Copies the tree `from` into the directory `to`: directories, regular files and symlinks with
// their modes and owners (anything else is left out), to a bounded depth.
Status CopyTree(const std::string& from, const std::string& to, int depth = 0) {
  if (depth > 64) return Fail("copying " + from + ": nested too deeply");
  DIR* dir = ::opendir(from.c_str());
  if (dir == nullptr) return FailErrno("opendir " + from, errno);
  Status result;
  while (dirent* e = ::readdir(dir)) {
    const std::string_view name = e->d_name;
    if (name == "." || name == "..") continue;
    const std::string src = from + "/" + e->d_name, dst = to + "/" + e->d_name;
    struct stat st {};
    if (::lstat(src.c_str(), &st) != 0) continue;
    if (S_ISDIR(st.st_mode)) {
      if (auto s = MakeDir(dst, st.st_mode & 07777); !s) result = s;
      if (auto s = CopyTree(src, dst, depth + 1); !s) result = s;
    } else if (S_ISLNK(st.st_mode)) {
      char target[4096];
      ssize_t n = ::readlink(src.c_str(), target, sizeof(target) - 1);
      if (n < 0) continue;
      target[n] = '\0';
      if (::symlink(target, dst.c_str()) != 0) result = FailErrno("symlink " + dst, errno);
    } else if (S_ISREG(st.st_mode)) {
      UniqueFd in(::open(src.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
      UniqueFd out(::open(dst.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                          st.st_mode & 07777));
      if (!in.valid() || !out.valid()) {
        result = FailErrno("copy " + src, errno);
        continue;
      }
      char buf[64 * 1024];
      ssize_t n;
      while ((n = ::read(in.get(), buf, sizeof(buf))) > 0) {
        if (!WriteAll(out.get(), buf, static_cast<size_t>(n))) {
          result = FailErrno("write " + dst, errno);
          break;
        }
      }
    } else {
      continue;
    }
    ::lchown(dst.c_str(), st.st_uid, st.st_gid);
    if (!S_ISLNK(st.st_mode)) ::chmod(dst.c_str(), st.st_mode & 07777);
  }
  ::closedir(dir);
  return result;
}

// The image's working directory, when it lies on the read-only image: a tmpfs of the agent's
// with the image's content copied in, as the oci backend's tmpcopyup makes it.
Status MountWorkdir(const std::string& root, std::string_view workdir, const std::string& opts,
                    std::vector<std::string>& sized) {
  const std::string target = root + std::string(workdir);
  struct stat st {};
  if (workdir.empty() || ::stat(target.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return {};
  sized.emplace_back(workdir);
  const std::string stage = root + "/.airlock/workdir";
  if (auto s = MakeDir(stage, 0700); !s) return s;
  if (auto s = Mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NODEV, opts); !s) return s;
  if (auto s = CopyTree(target, stage); !s) Log("warning: the working directory: " + s.error());
  return Mount(stage.c_str(), target, nullptr, MS_MOVE);
}

// The image's tree, read-only, with the container's tmpfs mounts over it. `sized` gets the
// paths (in the image) of the mounts whose size is the session's tmp_bytes.
Status MountRoot(const std::string& vm_settings, std::vector<std::string>& sized) {
  const std::string root = kNewRoot;
  uint64_t tmp_bytes = VmSetting(vm_settings, "tmp_bytes", 256ull << 20);
  std::string tmp_size = "size=" + std::to_string(tmp_bytes);
  if (auto s = Mount("/dev/vda", root, "erofs", MS_RDONLY | MS_NODEV); !s) return s;
  struct Tmpfs {
    const char* path;
    unsigned long flags;
    std::string data;
    bool session_sized;
  };
  const Tmpfs kTmpfs[] = {
      {"/tmp", MS_NOSUID | MS_NODEV, "mode=1777," + tmp_size, true},
      {"/home/sandbox", MS_NOSUID | MS_NODEV,
       "mode=700," + tmp_size + ",uid=" + std::to_string(VmSetting(vm_settings, "uid", 1000)) +
           ",gid=" + std::to_string(VmSetting(vm_settings, "gid", 1000)),
       true},
      {"/run", MS_NOSUID | MS_NODEV, "mode=755,size=16384k", false},
      {"/.airlock", MS_NOSUID | MS_NODEV, "mode=755,size=64k", false},
  };
  for (const auto& t : kTmpfs) {
    if (auto s = Mount("tmpfs", root + t.path, "tmpfs", t.flags, t.data); !s) return s;
    if (t.session_sized) sized.emplace_back(t.path);
  }
  const std::string agent_ids = ",uid=" + std::to_string(VmSetting(vm_settings, "uid", 1000)) +
                                ",gid=" + std::to_string(VmSetting(vm_settings, "gid", 1000));
  if (auto s = MountWorkdir(root, LaunchValue(vm_settings, "workdir"),
                            "mode=755," + tmp_size + agent_ids, sized);
      !s) {
    return s;
  }
  // The channel's socket: made read-only once ServeChannel has bound it (what is under
  // /.airlock is init's, not the agent's).
  if (auto s = MakeDir(root + "/.airlock/run", 0755); !s) return s;
  if (auto s = Mount("tmpfs", root + "/.airlock/run", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                     "mode=755,size=16k");
      !s) {
    return s;
  }
  if (auto s = Mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NOEXEC | MS_NODEV); !s)
    return s;
  if (auto s = Mount("sysfs", root + "/sys", "sysfs", MS_NOSUID | MS_NOEXEC | MS_NODEV | MS_RDONLY);
      !s) {
    return s;
  }
  return MinimalDev(root + "/dev");
}

// The initramfs's contents are freed and the image becomes "/", as switch_root does.
Status SwitchRoot() {
  if (::chdir(kNewRoot) != 0) return FailErrno("chdir new root", errno);
  if (::mount(".", "/", nullptr, MS_MOVE, nullptr) != 0) return FailErrno("move new root", errno);
  if (::chroot(".") != 0) return FailErrno("chroot", errno);
  if (::chdir("/") != 0) return FailErrno("chdir /", errno);
  return {};
}

// The bridge serves CONTROL_PLANE_URL on 127.0.0.1: a fresh kernel has "lo" down.
Status LoopbackUp() {
  UniqueFd sock(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!sock.valid()) return FailErrno("socket", errno);
  ifreq req{};
  std::strncpy(req.ifr_name, "lo", IFNAMSIZ - 1);
  if (::ioctl(sock.get(), SIOCGIFFLAGS, &req) != 0) return FailErrno("SIOCGIFFLAGS lo", errno);
  req.ifr_flags = static_cast<short>(req.ifr_flags | IFF_UP);
  if (::ioctl(sock.get(), SIOCSIFFLAGS, &req) != 0) return FailErrno("bring lo up", errno);
  return {};
}

// Reads a message of the backend's on airlock.launch (see guest.h): "<kind> N\n" and N bytes.
// Waits as long as it takes: a template sits here, snapshotted, until a session restores it.
Result<std::string> AwaitMessage(int port, std::string_view kind) {
  std::string buf;
  size_t want = 0;  // header and payload, once the header is in
  for (;;) {
    pollfd p{port, POLLIN, 0};
    int r = ::poll(&p, 1, 1000);
    if (r < 0 && errno != EINTR) return FailErrno("poll airlock.launch", errno);
    // Hung up while no one holds the host end: the template, before any restore. (Short: a
    // restored guest waits here for the host to connect, and a saved one costs nothing.)
    if (r <= 0 || (p.revents & POLLHUP) != 0) {
      if (r > 0) SleepMs(1);
      continue;
    }
    char chunk[4096];
    ssize_t n = ::read(port, chunk, sizeof(chunk));
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) {
      SleepMs(2);
      continue;
    }
    buf.append(chunk, static_cast<size_t>(n));
    if (want == 0) {
      size_t nl = buf.find('\n');
      if (nl == std::string::npos) {
        if (buf.size() > 64) return Fail("airlock.launch: no header");
        continue;
      }
      uint64_t size = 0;
      std::string_view header(buf.data(), nl);
      if (header.size() <= kind.size() + 1 || !header.starts_with(kind) ||
          header[kind.size()] != ' ' ||
          std::from_chars(header.data() + kind.size() + 1, header.data() + header.size(), size)
                  .ec != std::errc() ||
          size > (1 << 20)) {
        return Fail("airlock.launch: bad header");
      }
      want = nl + 1 + size;
    }
    if (buf.size() > want) return Fail("airlock.launch: more than announced");
    if (buf.size() == want) return buf.substr(buf.find('\n') + 1);
  }
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// The bytes of lowercase `hex` (as the backend's HexEncode writes it); nullopt when it is not.
std::optional<std::string> HexDecode(std::string_view hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  std::string out;
  out.reserve(hex.size() / 2);
  for (size_t i = 0; i < hex.size(); i += 2) {
    int hi = HexValue(hex[i]), lo = HexValue(hex[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out.push_back(static_cast<char>(hi * 16 + lo));
  }
  return out;
}

// Every VM restored from one template starts with the template's kernel random state: the
// host's fresh bytes are mixed in, credited, and the kernel's generator reseeded from them
// before anything of the session runs, so no two sandboxes share a random number.
Status Reseed(std::string_view hex) {
  struct {
    int entropy_count;
    int buf_size;
    unsigned char buf[64];
  } pool{};
  if (hex.size() != 2 * sizeof(pool.buf)) return Fail("airlock.launch: no entropy");
  auto bytes = HexDecode(hex);
  if (!bytes) return Fail("airlock.launch: bad entropy");
  std::memcpy(pool.buf, bytes->data(), sizeof(pool.buf));
  pool.entropy_count = 8 * sizeof(pool.buf);
  pool.buf_size = sizeof(pool.buf);
  UniqueFd random(::open("/dev/urandom", O_RDWR | O_CLOEXEC));
  if (!random.valid()) return FailErrno("open /dev/urandom", errno);
  if (::ioctl(random.get(), RNDADDENTROPY, &pool) != 0) return FailErrno("RNDADDENTROPY", errno);
  if (::ioctl(random.get(), RNDRESEEDCRNG) != 0) return FailErrno("RNDRESEEDCRNG", errno);
  return {};
}

// The values of the lines "key value" of `text`, in order.
std::vector<std::string_view> LaunchValues(std::string_view text, std::string_view key) {
  std::vector<std::string_view> out;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    if (line.size() > key.size() && line.starts_with(key) && line[key.size()] == ' ') {
      out.push_back(line.substr(key.size() + 1));
    }
  }
  return out;
}

// The line "key value" of `text` as text ("" when there is none).
std::string_view LaunchValue(std::string_view text, std::string_view key) {
  auto all = LaunchValues(text, key);
  return all.empty() ? std::string_view() : all.front();
}

std::vector<std::string> SplitArgs(std::string_view joined) {
  std::vector<std::string> out;
  for (size_t start = 0; start < joined.size();) {
    size_t end = joined.find('\0', start);
    if (end == std::string_view::npos) end = joined.size();
    out.emplace_back(joined.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

}  // namespace

bool IsVmBoot() { return ::getpid() == 1 && ::access(kSeccompFile, R_OK) == 0; }

Result<VmBoot> BootVm() {
  VmBoot boot;
  // The console, for what goes wrong before the log port is found.
  if (auto s = Mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID); !s)
    return std::unexpected(s.error());
  if (UniqueFd console(::open("/dev/console", O_WRONLY | O_CLOEXEC)); console.valid()) {
    ::dup2(console.get(), STDOUT_FILENO);
    ::dup2(console.get(), STDERR_FILENO);
  }
  if (auto s = MakeDir("/proc", 0555); !s) return std::unexpected(s.error());
  if (auto s = MakeDir("/sys", 0555); !s) return std::unexpected(s.error());
  if (auto s = Mount("proc", "/proc", "proc", MS_NOSUID | MS_NOEXEC | MS_NODEV); !s) {
    return std::unexpected(s.error());
  }
  if (auto s = Mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NOEXEC | MS_NODEV); !s) {
    return std::unexpected(s.error());
  }
  // The limits a container's runtime sets (oci_spec.cc): no core dumps, and a descriptor
  // limit the agent cannot raise. Set here, they are what init and the agent inherit.
  const rlimit core{0, 0}, nofile{4096, 4096};
  if (::setrlimit(RLIMIT_CORE, &core) != 0 || ::setrlimit(RLIMIT_NOFILE, &nofile) != 0) {
    return FailErrno("setrlimit", errno);
  }
  // A VM booted for a session has its arguments in the initramfs; a template's come over
  // airlock.launch once a session restores it.
  boot.from_template = ::access(kArgsFile, R_OK) != 0;
  std::string& vm = boot.settings;
  if (!boot.from_template) {
    auto args = ReadFile(kArgsFile, 256 * 1024);
    if (!args) return std::unexpected(args.error());
    boot.args = SplitArgs(*args);
    vm = ReadFile(kVmFile, 4096).value_or("");
  }
  auto filter = ReadFile(kSeccompFile, 1 << 20);
  if (!filter || filter->empty() || filter->size() % 8 != 0) {
    return Fail("no usable seccomp filter at " + std::string(kSeccompFile) + ": " +
                (filter ? "bad size" : filter.error()));
  }
  boot.seccomp_filter = std::move(*filter);
  // The agent sees the same host name as in a container.
  if (::sethostname("sandbox", 7) != 0) return FailErrno("sethostname", errno);
  if (auto s = LoadModules(); !s) return std::unexpected(s.error());
  auto ports = AwaitDevices();
  if (!ports) return std::unexpected(ports.error());
  boot.channel.Reset(::open((*ports)[0].c_str(), O_RDWR | O_CLOEXEC | O_NONBLOCK));
  UniqueFd log(::open((*ports)[1].c_str(), O_WRONLY | O_CLOEXEC));
  boot.status.Reset(::open((*ports)[2].c_str(), O_WRONLY | O_CLOEXEC));
  UniqueFd launch(::open((*ports)[3].c_str(), O_RDWR | O_CLOEXEC | O_NONBLOCK));
  if (!boot.channel.valid() || !log.valid() || !boot.status.valid() || !launch.valid()) {
    return FailErrno("open the VM's ports", errno);
  }
  // From here on everything init and the agent write goes to the session log.
  ::dup2(log.get(), STDOUT_FILENO);
  ::dup2(log.get(), STDERR_FILENO);
  if (boot.from_template) {
    // A template is made for one image: its settings come first, before anything is mounted.
    auto prepared = AwaitMessage(launch.get(), "prepare");
    if (!prepared) return std::unexpected(prepared.error());
    vm = std::move(*prepared);
  }
  boot.launch = std::move(launch);
  if (auto s = MakeDir(kNewRoot, 0755); !s) return std::unexpected(s.error());
  if (auto s = MountRoot(vm, boot.sized_mounts); !s) return std::unexpected(s.error());
  auto cgroup = AgentCgroup(kNewRoot);
  if (!cgroup) return std::unexpected(cgroup.error());
  boot.cgroup = *cgroup;
  // A template's limit is the default one; AwaitSession sets the session's.
  if (auto s = SealCgroup(std::string(kNewRoot) + "/sys/fs/cgroup", VmSetting(vm, "pids", 0)); !s) {
    return std::unexpected(s.error());
  }
  // The initramfs's /proc, /sys and /dev go with it.
  ::umount2("/proc", MNT_DETACH);
  ::umount2("/sys", MNT_DETACH);
  ::umount2("/dev", MNT_DETACH);
  if (auto s = SwitchRoot(); !s) return std::unexpected(s.error());
  if (auto s = LoopbackUp(); !s) return std::unexpected(s.error());
  return boot;
}

// The files a session's first moments read, from the "preload" lines of a template's
// settings (an absolute path, or a command looked up as a shell would): read once here, they
// are in the snapshot's page cache, and a restored VM does not wait for its disk to start
// its agent. At most kPreloadBytes in all, so that no image makes its snapshots large.
void Preload(std::string_view settings) {
  constexpr uint64_t kPreloadBytes = 64ull << 20;
  uint64_t total = 0;
  for (std::string_view value : LaunchValues(settings, "preload")) {
    std::string name(value);
    std::vector<std::string> candidates;
    if (name.find('/') != std::string::npos) {
      candidates.push_back(name);
    } else {
      for (const char* dir :
           {"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}) {
        candidates.push_back(std::string(dir) + "/" + name);
      }
    }
    for (const auto& path : candidates) {
      UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
      struct stat st {};
      if (!fd.valid() || ::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
      char buf[64 * 1024];
      for (ssize_t n; total < kPreloadBytes && (n = ::read(fd.get(), buf, sizeof(buf))) > 0;) {
        total += static_cast<uint64_t>(n);
      }
      break;
    }
  }
}

// Free pages keep what was in them (the initramfs's image, the kernel's init sections, what
// the mounts read and let go), and a snapshot holds every page that is not zero. Taking all
// the free memory once, which the kernel hands out zeroed, and giving it back leaves only
// what is in use to save and to restore.
void ZeroFreeMemory() {
  auto info = ReadFile("/proc/meminfo", 16384);
  if (!info) return;
  auto kib = [&](std::string_view key) {
    uint64_t v = 0;
    size_t at = info->find(key);
    if (at == std::string::npos) return v;
    std::string_view rest = std::string_view(*info).substr(at + key.size());
    rest.remove_prefix(std::min(rest.find_first_not_of(' '), rest.size()));
    std::from_chars(rest.data(), rest.data() + rest.size(), v);
    return v;
  };
  const uint64_t free_kib = kib("MemFree:");
  // A margin for the kernel's own allocations meanwhile, the mapping's page tables among them
  // (1/512 of it): reclaim would take the preloaded files, and an out-of-memory guest whose
  // only process is init panics.
  const uint64_t margin_kib = (16 << 10) + kib("MemTotal:") / 32;
  if (free_kib <= margin_kib) return;
  const size_t bytes = (free_kib - margin_kib) << 10;
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE | MAP_NORESERVE, -1, 0);
  if (p != MAP_FAILED) ::munmap(p, bytes);
}

void SettleTemplate(const VmBoot& boot) {
  Preload(boot.settings);
  ZeroFreeMemory();
}

std::vector<std::string> TemplateInitArgs(const VmBoot& boot) {
  auto joined = HexDecode(LaunchValue(boot.settings, "init_args"));
  return joined ? SplitArgs(*joined) : std::vector<std::string>{};
}

Result<std::vector<std::string>> AwaitSession(VmBoot& boot) {
  // What a template saves: the image mounted, the channel served, the agent's process
  // waiting. The backend snapshots it once this line is in the status port's file.
  if (!WriteAll(boot.status.get(), "ready\n", 6)) return FailErrno("write ready", errno);
  auto message = AwaitMessage(boot.launch.get(), "launch");
  if (!message) return std::unexpected(message.error());
  // The backend attached the channel's host end before it wrote the launch.
  WakeChannel();
  // The settings' lines, then "args" on a line of its own.
  size_t args_at = message->starts_with("args\n") ? 0 : message->find("\nargs\n");
  if (args_at == std::string::npos) return Fail("airlock.launch: no args");
  if (args_at > 0) ++args_at;
  std::string vm = message->substr(0, args_at);
  // The template's clock stopped when it was saved.
  uint64_t ms = VmSetting(vm, "time_ms", 0);
  timespec now{static_cast<time_t>(ms / 1000), static_cast<long>(ms % 1000) * 1000000};
  if (ms == 0 || ::clock_settime(CLOCK_REALTIME, &now) != 0)
    return FailErrno("set the clock", errno);
  if (auto s = Reseed(LaunchValue(vm, "entropy")); !s) return std::unexpected(s.error());
  // What the template prepared is the image's, the same for all its sessions; what differs
  // between them is their limits.
  for (std::string_view key : {"uid", "gid", "workdir"}) {
    if (LaunchValue(vm, key) != LaunchValue(boot.settings, key)) {
      return Fail("airlock.launch: its " + std::string(key) + " is not the template's");
    }
  }
  if (LaunchValue(vm, "tmp_bytes") != LaunchValue(boot.settings, "tmp_bytes")) {
    const std::string size = "size=" + std::to_string(VmSetting(vm, "tmp_bytes", 256ull << 20));
    for (const auto& path : boot.sized_mounts) {
      if (auto s = Mount(nullptr, path, nullptr, MS_REMOUNT | MS_NOSUID | MS_NODEV, size); !s) {
        return std::unexpected(s.error());
      }
    }
  }
  // Two remounts under TCG take tens of milliseconds: only for a limit that is not the default.
  if (LaunchValue(vm, "pids") != LaunchValue(boot.settings, "pids")) {
    if (auto s = Mount(nullptr, "/sys/fs/cgroup", nullptr, MS_REMOUNT | kCgroupFlags); !s) {
      return std::unexpected(s.error());
    }
    if (auto s = SealCgroup("/sys/fs/cgroup", VmSetting(vm, "pids", 0)); !s) {
      return std::unexpected(s.error());
    }
  }
  boot.settings = std::move(vm);
  if (!WriteAll(boot.launch.get(), "launched\n", 9)) return FailErrno("write launched", errno);
  return SplitArgs(std::string_view(*message).substr(args_at + 5));
}

namespace {
// Written to when the host is known to hold the channel's end again (a launch came), so that
// the channel's thread stops waiting for it at once.
int channel_wake_fd = -1;
}  // namespace

void WakeChannel() {
  if (channel_wake_fd < 0) return;
  uint64_t one = 1;
  if (::write(channel_wake_fd, &one, sizeof(one)) < 0) {
    // Full (it is read at each wait) or gone: the thread looks at the port within 50 ms anyway.
  }
}

Status ServeChannel(UniqueFd channel, const std::string& socket_path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(addr.sun_path))
    return Fail("socket path too long: " + socket_path);
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!listener.valid()) return FailErrno("socket", errno);
  ::unlink(socket_path.c_str());
  if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return FailErrno("bind " + socket_path, errno);
  }
  // Only init (root) connects to it: the agent reaches the control plane through the bridge.
  ::chmod(socket_path.c_str(), 0600);
  if (::listen(listener.get(), 128) != 0) return FailErrno("listen " + socket_path, errno);
  // Connecting to a socket needs no write access to its file system.
  std::string dir = socket_path.substr(0, socket_path.rfind('/'));
  if (::mount(nullptr, dir.c_str(), nullptr,
              MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0) {
    return FailErrno("make " + dir + " read-only", errno);
  }
  // The mux owns what it is given and closes it when it ends; the thread keeps the originals
  // to start a new one when the host comes back.
  UniqueFd port(::dup(channel.get()));
  UniqueFd own_listener(::dup(listener.get()));
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!port.valid() || !own_listener.valid() || !wake.valid()) return FailErrno("dup", errno);
  channel_wake_fd = wake.get();
  auto mux = Mux::Guest(std::move(channel), std::move(own_listener), Mux::Options{});
  if (!mux) return Fail(mux.error());
  // The thread blocks every signal: init takes SIGCHLD and the forwarded signals through a
  // signalfd, which sees only signals that no thread lets through; a thread with SIGCHLD
  // unblocked would swallow the agent's exit (its default action is to ignore it).
  sigset_t all, old;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  std::thread([mux = std::move(*mux), port = std::move(port), listener = std::move(listener),
               wake = std::move(wake)]() mutable {
    // Capabilities are per thread, and this one was made while init still held root's: it
    // needs none to relay bytes.
    if (auto s = KeepOnlyCapabilities({}); !s) {
      Log("the channel's thread cannot drop its capabilities: " + s.error());
      return;
    }
    for (auto current = std::move(mux);;) {
      std::string why = current->Run();
      Log("the channel to the control plane ended (" + why + "); waiting for it to come back");
      current.reset();
      // While no one holds the host end (the control plane restarting), the port reads as
      // hung up; connections to the socket wait in its backlog meanwhile.
      for (;;) {
        pollfd p{port.get(), POLLIN, 0};
        if (::poll(&p, 1, 0) >= 0 && (p.revents & POLLHUP) == 0) break;
        pollfd w{wake.get(), POLLIN, 0};
        if (::poll(&w, 1, 50) > 0) {
          uint64_t n = 0;
          if (::read(wake.get(), &n, sizeof(n)) < 0) SleepMs(50);
        }
      }
      auto next =
          Mux::Guest(UniqueFd(::dup(port.get())), UniqueFd(::dup(listener.get())), Mux::Options{});
      if (!next) {
        Log("cannot restart the channel: " + next.error());
        return;
      }
      current = std::move(*next);
    }
  }).detach();
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return {};
}

Status KeepClock(UniqueFd launch, UniqueFd go) {
  UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
  epoll_event want{};
  want.events = EPOLLIN | EPOLLET;
  // data.u32: 0 the port, 1 `go` (after which the port is watched).
  want.data.u32 = go.valid() ? 1 : 0;
  if (!ep.valid() ||
      ::epoll_ctl(ep.get(), EPOLL_CTL_ADD, go.valid() ? go.get() : launch.get(), &want) != 0) {
    return FailErrno("watch airlock.launch", errno);
  }
  sigset_t all, old;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);  // as the channel's thread: see ServeChannel
  std::thread([ep = std::move(ep), port = std::move(launch), go = std::move(go)]() {
    if (auto s = KeepOnlyCapabilities({CAP_SYS_TIME}); !s) {
      Log("the clock's thread cannot drop its capabilities: " + s.error());
      return;
    }
    std::string pending;
    for (;;) {
      epoll_event ev{};
      if (::epoll_wait(ep.get(), &ev, 1, -1) < 0) {
        if (errno == EINTR) continue;
        Log("airlock.launch: epoll_wait: " + std::string(std::strerror(errno)));
        return;
      }
      if (ev.data.u32 == 1) {
        epoll_event port_ready{};
        port_ready.events = EPOLLIN | EPOLLET;
        if (::epoll_ctl(ep.get(), EPOLL_CTL_DEL, go.get(), nullptr) != 0 ||
            ::epoll_ctl(ep.get(), EPOLL_CTL_ADD, port.get(), &port_ready) != 0) {
          Log("airlock.launch: " + std::string(std::strerror(errno)));
          return;
        }
        continue;
      }
      // Everything there is: a read of 0 is the host gone, EAGAIN is nothing more for now.
      char chunk[256];
      for (ssize_t n; (n = ::read(port.get(), chunk, sizeof(chunk))) > 0;) {
        pending.append(chunk, static_cast<size_t>(n));
      }
      for (size_t eol; (eol = pending.find('\n')) != std::string::npos; pending.erase(0, eol + 1)) {
        std::string_view line(pending.data(), eol);
        uint64_t ms = 0;
        if (!line.starts_with("clock ") ||
            std::from_chars(line.data() + 6, line.data() + line.size(), ms).ec != std::errc() ||
            ms == 0) {
          Log("airlock.launch: ignored a message that is not a clock");
          continue;
        }
        timespec now{static_cast<time_t>(ms / 1000), static_cast<long>(ms % 1000) * 1000000};
        if (::clock_settime(CLOCK_REALTIME, &now) != 0) {
          Log("airlock.launch: set the clock: " + std::string(std::strerror(errno)));
          continue;
        }
        WriteAll(port.get(), "clock set\n", 10);
      }
      if (pending.size() > 4096) pending.clear();  // no line of ours is that long
    }
  }).detach();
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return {};
}

void PowerOff(int status_fd, int exit_code, bool oom_killed) {
  if (status_fd >= 0) {
    std::string line =
        exit_code > 128 && exit_code < 128 + 65
            ? "signal " + std::to_string(exit_code - 128) + (oom_killed ? " oom\n" : "\n")
            : "exit " + std::to_string(exit_code) + "\n";
    WriteAll(status_fd, line.data(), line.size());
    ::fsync(status_fd);
  }
  ::sync();
  // QEMU runs with -no-reboot: a reboot request ends it, and the kernel's reboot=t makes the
  // request a triple fault, which needs no ACPI.
  ::reboot(RB_AUTOBOOT);
  for (;;) ::pause();
}

}  // namespace airlock::init
