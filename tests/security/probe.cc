// airlock-probe: the attacker inside the sandbox. A static program the security suite runs
// as the agent of a real sandbox; each command tries one way out and prints what happened as
// one line `PROBE {"check": ..., ...}` on stdout, which the test reads from the session log.
// The probe reports; the test decides. It depends on nothing but libc so it runs in any image
// and under any backend.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <linux/sched.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

extern char** environ;

namespace {

std::string Quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c >= 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

// One JSON object built field by field.
class Obj {
 public:
  Obj& Str(const char* k, const std::string& v) { return Raw(k, Quote(v)); }
  Obj& Int(const char* k, long long v) { return Raw(k, std::to_string(v)); }
  Obj& Bool(const char* k, bool v) { return Raw(k, v ? "true" : "false"); }
  Obj& Raw(const char* k, const std::string& v) {
    body_ += (body_.empty() ? "" : ",") + Quote(k) + ":" + v;
    return *this;
  }
  std::string Json() const { return "{" + body_ + "}"; }

 private:
  std::string body_;
};

void Emit(const Obj& o) {
  std::string line = "PROBE " + o.Json() + "\n";
  [[maybe_unused]] ssize_t n = ::write(1, line.data(), line.size());
}

std::string ReadFile(const std::string& path, size_t max = 1 << 20) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  std::string out;
  char buf[4096];
  ssize_t n;
  while (out.size() < max && (n = ::read(fd, buf, sizeof(buf))) > 0)
    out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

std::string StatusField(const std::string& status, const std::string& key) {
  std::istringstream in(status);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      std::string v = line.substr(key.size() + 1);
      size_t a = v.find_first_not_of(" \t");
      return a == std::string::npos ? "" : v.substr(a);
    }
  }
  return {};
}

void Env() {
  std::string names = "[";
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    names += (names.size() > 1 ? "," : "") + Quote(kv.substr(0, kv.find('=')));
  }
  Obj o;
  o.Str("check", "env").Raw("names", names + "]");
  for (const char* k : {"PATH", "HOME", "LANG", "CONTROL_PLANE_URL", "SESSION_ID"}) {
    const char* v = std::getenv(k);
    o.Str(k, v ? v : "");
  }
  Emit(o);
}

void Identity() {
  std::string status = ReadFile("/proc/self/status");
  Obj o;
  o.Str("check", "identity")
      .Int("uid", getuid())
      .Int("euid", geteuid())
      .Int("gid", getgid())
      .Int("egid", getegid());
  gid_t groups[64];
  int n = getgroups(64, groups);
  o.Int("ngroups", n);
  for (const char* f :
       {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"}) {
    o.Str(f, StatusField(status, f));
  }
  o.Str("hostname", ReadFile("/proc/sys/kernel/hostname"));
  Emit(o);
}

// Every other process's environment: readable? does it hold the token?
void EnvironOthers() {
  const char* token = std::getenv("SESSION_TOKEN");
  std::string secret = token ? token : "";
  std::string list = "[";
  DIR* d = ::opendir("/proc");
  while (dirent* e = d ? ::readdir(d) : nullptr) {
    pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid <= 0 || pid == getpid()) continue;
    std::string path = "/proc/" + std::to_string(pid) + "/environ";
    int fd = ::open(path.c_str(), O_RDONLY);
    int err = fd < 0 ? errno : 0;
    std::string content;
    if (fd >= 0) {
      char buf[4096];
      ssize_t n;
      while ((n = ::read(fd, buf, sizeof(buf))) > 0) content.append(buf, static_cast<size_t>(n));
      if (n < 0) err = errno;
      ::close(fd);
    }
    bool nonzero = content.find_first_not_of('\0') != std::string::npos;
    Obj o;
    o.Int("pid", pid)
        .Bool("readable", fd >= 0 && err == 0)
        .Int("errno", err)
        .Bool("nonempty", nonzero);
    o.Bool("has_token", !secret.empty() && content.find(secret) != std::string::npos);
    o.Bool("has_session_vars", content.find("SESSION_") != std::string::npos);
    list += (list.size() > 1 ? "," : "") + o.Json();
  }
  if (d) ::closedir(d);
  Emit(Obj().Str("check", "environ_others").Raw("procs", list + "]"));
}

// One attempt: `fn` returns the syscall's result; success (>= 0) is the sandbox's failure.
template <typename F>
std::string Attempt(const char* name, F fn) {
  errno = 0;
  long r = fn();
  int err = errno;
  return Obj().Str("name", name).Bool("succeeded", r >= 0).Int("errno", r >= 0 ? 0 : err).Json();
}

void Syscalls() {
  std::vector<std::string> r;
  ::mkdir("/tmp/probe-mnt", 0700);
  r.push_back(Attempt("mount_tmpfs",
                      [] { return ::mount("none", "/tmp/probe-mnt", "tmpfs", 0, nullptr); }));
  r.push_back(
      Attempt("mount_proc", [] { return ::mount("proc", "/tmp/probe-mnt", "proc", 0, nullptr); }));
  r.push_back(Attempt("umount_proc", [] { return ::umount2("/proc", MNT_DETACH); }));
  r.push_back(Attempt("remount_root_rw",
                      [] { return ::mount(nullptr, "/", nullptr, MS_REMOUNT, nullptr); }));
  r.push_back(Attempt("unshare_user", [] { return ::unshare(CLONE_NEWUSER); }));
  r.push_back(Attempt("unshare_mount", [] { return ::unshare(CLONE_NEWNS); }));
  r.push_back(Attempt("unshare_net", [] { return ::unshare(CLONE_NEWNET); }));
  r.push_back(Attempt("setns_host_net", [] {
    int fd = ::open("/proc/1/ns/net", O_RDONLY);
    long rc = ::setns(fd, CLONE_NEWNET);
    if (fd >= 0) ::close(fd);
    return rc;
  }));
  r.push_back(Attempt("clone_newuser", [] {
    long pid = ::syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, nullptr, nullptr, nullptr, nullptr);
    if (pid == 0) ::_exit(0);
    if (pid > 0) ::waitpid(static_cast<pid_t>(pid), nullptr, 0);
    return pid;
  }));
  r.push_back(Attempt("ptrace_init", [] { return ::ptrace(PTRACE_ATTACH, 1, nullptr, nullptr); }));
  r.push_back(Attempt("ptrace_own_child", [] {
    pid_t child = ::fork();
    if (child == 0) {
      ::pause();
      ::_exit(0);
    }
    long rc = ::ptrace(PTRACE_ATTACH, child, nullptr, nullptr);
    int err = errno;
    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);
    errno = err;
    return rc;
  }));
  r.push_back(Attempt("process_vm_readv_init", [] {
    char buf[8];
    iovec local{buf, sizeof(buf)}, remote{reinterpret_cast<void*>(0x400000), sizeof(buf)};
    return ::syscall(SYS_process_vm_readv, 1, &local, 1, &remote, 1, 0);
  }));
  r.push_back(Attempt("bpf_map_create", [] {
    union bpf_attr attr;
    std::memset(&attr, 0, sizeof(attr));
    attr.map_type = BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4;
    attr.value_size = 4;
    attr.max_entries = 1;
    return ::syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof(attr));
  }));
  r.push_back(Attempt("keyctl_session",
                      [] { return ::syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, nullptr); }));
  r.push_back(Attempt("add_key", [] {
    return ::syscall(SYS_add_key, "user", "probe", "x", 1, KEY_SPEC_SESSION_KEYRING);
  }));
  r.push_back(Attempt("perf_event_open", [] {
    perf_event_attr attr;
    std::memset(&attr, 0, sizeof(attr));
    attr.size = sizeof(attr);
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_CPU_CLOCK;
    return ::syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0);
  }));
  r.push_back(Attempt("kexec_load", [] { return ::syscall(SYS_kexec_load, 0, 0, nullptr, 0); }));
  r.push_back(Attempt("init_module", [] { return ::syscall(SYS_init_module, nullptr, 0, ""); }));
  r.push_back(Attempt(
      "reboot", [] { return ::syscall(SYS_reboot, 0xfee1dead, 672274793, 0x4321fedc, nullptr); }));
  r.push_back(Attempt("swapon", [] { return ::syscall(SYS_swapon, "/tmp/none", 0); }));
  r.push_back(Attempt("chroot", [] { return ::chroot("/tmp"); }));
  r.push_back(
      Attempt("pivot_root", [] { return ::syscall(SYS_pivot_root, "/tmp", "/tmp/probe-mnt"); }));
  r.push_back(Attempt("setuid_root", [] { return ::setuid(0); }));
  r.push_back(Attempt("setgid_root", [] { return ::setgid(0); }));
  r.push_back(Attempt("mknod_mem",
                      [] { return ::mknod("/tmp/probe-mem", S_IFCHR | 0600, makedev(1, 1)); }));
  r.push_back(Attempt("socket_raw_icmp", [] {
    int fd = ::socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
    if (fd >= 0) ::close(fd);
    return fd;
  }));
  r.push_back(Attempt("socket_packet", [] {
    int fd = ::socket(AF_PACKET, SOCK_RAW, 0);
    if (fd >= 0) ::close(fd);
    return fd;
  }));
  r.push_back(Attempt("socket_vsock", [] {
    int fd = ::socket(40 /* AF_VSOCK */, SOCK_STREAM, 0);
    if (fd >= 0) ::close(fd);
    return fd;
  }));
  r.push_back(Attempt("io_uring_setup", [] {
    char params[120] = {};
    return ::syscall(425 /* io_uring_setup */, 1, params);
  }));
  r.push_back(Attempt("userfaultfd", [] { return ::syscall(SYS_userfaultfd, 0); }));
  r.push_back(Attempt("open_by_handle_at", [] {
    char h[64] = {};
    return ::syscall(SYS_open_by_handle_at, AT_FDCWD, h, O_RDONLY);
  }));
  r.push_back(Attempt("sethostname", [] { return ::sethostname("pwned", 5); }));
  r.push_back(Attempt("settimeofday", [] {
    timeval tv{0, 0};
    return ::syscall(SYS_settimeofday, &tv, nullptr);
  }));
  r.push_back(Attempt("clone3_newuser", [] {
    // The filter cannot read clone3's flags, so it must refuse clone3 whatever they are.
    clone_args args;
    std::memset(&args, 0, sizeof(args));
    args.flags = CLONE_NEWUSER;
    args.exit_signal = SIGCHLD;
    long pid = ::syscall(SYS_clone3, &args, sizeof(args));
    if (pid == 0) ::_exit(0);
    if (pid > 0) ::waitpid(static_cast<pid_t>(pid), nullptr, 0);
    return pid;
  }));
  // Signal 0: whether the agent may signal init at all, without sending anything.
  r.push_back(Attempt("kill_init", [] { return ::kill(1, 0); }));
  r.push_back(Attempt("clock_settime", [] {
    timespec ts{0, 0};
    return ::clock_settime(CLOCK_REALTIME, &ts);
  }));
  r.push_back(Attempt("raise_core_limit", [] {
    // Core dumps stay off: the hard limit is 0 and only CAP_SYS_RESOURCE could raise it.
    rlimit rl{RLIM_INFINITY, RLIM_INFINITY};
    return ::setrlimit(RLIMIT_CORE, &rl);
  }));
  r.push_back(Attempt("tiocsti", [] {
    // Pushing keystrokes into a terminal the sandbox shares with someone else: there is none.
    char c = 'x';
    int fd = ::open("/dev/tty", O_RDWR | O_CLOEXEC);
    long rc = ::ioctl(fd >= 0 ? fd : 0, TIOCSTI, &c);
    int err = errno;
    if (fd >= 0) ::close(fd);
    errno = err;
    return rc;
  }));
  r.push_back(Attempt("x32_getpid", [] {
    // The x32 ABI (syscall numbers | 0x40000000) would bypass rules written for x86-64
    // numbers: it must be refused or killed (in a child, like int80_getpid below).
    pid_t child = ::fork();
    if (child == 0) {
      long ret = ::syscall(0x40000000L | SYS_getpid);
      ::_exit(ret > 0 ? 0 : 1);
    }
    int status = 0;
    ::waitpid(child, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0L;
    errno = WIFSIGNALED(status) ? 1000 + WTERMSIG(status) : EPERM;
    return -1L;
  }));
  r.push_back(Attempt("int80_getpid", [] {
    // The 32-bit ABI: the filter lists only the native one, so the kernel kills the
    // caller; do it in a child and report the child's fate.
    pid_t child = ::fork();
    if (child == 0) {
#if defined(__x86_64__)
      long ret;
      asm volatile("int $0x80" : "=a"(ret) : "a"(20) : "memory");
      ::_exit(ret > 0 ? 0 : 1);
#else
      ::_exit(1);
#endif
    }
    int status = 0;
    ::waitpid(child, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0L;
    errno = WIFSIGNALED(status) ? 1000 + WTERMSIG(status) : EPERM;
    return -1L;
  }));
  std::string list = "[";
  for (const auto& s : r) list += (list.size() > 1 ? "," : "") + s;
  Emit(Obj().Str("check", "syscalls").Raw("attempts", list + "]"));
}

// Setuid/setgid files anywhere in the usual system dirs: each must sit on a nosuid mount
// (and no_new_privs makes exec ignore the bits anyway).
void SetuidFiles() {
  std::string list = "[";
  int count = 0;
  std::vector<std::string> dirs = {"/bin",     "/sbin",        "/usr/bin",      "/usr/sbin",
                                   "/usr/lib", "/usr/libexec", "/usr/local/bin"};
  while (!dirs.empty() && count < 200) {
    std::string dir = dirs.back();
    dirs.pop_back();
    DIR* d = ::opendir(dir.c_str());
    if (!d) continue;
    while (dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      std::string path = dir + "/" + name;
      struct stat st;
      if (::lstat(path.c_str(), &st) != 0) continue;
      if (S_ISDIR(st.st_mode) && dir.rfind("/usr/lib", 0) == 0 && dirs.size() < 1000)
        dirs.push_back(path);
      if (!S_ISREG(st.st_mode) || !(st.st_mode & (S_ISUID | S_ISGID))) continue;
      struct statvfs vfs;
      bool nosuid = ::statvfs(path.c_str(), &vfs) == 0 && (vfs.f_flag & ST_NOSUID);
      list += (list.size() > 1 ? "," : "") + Obj().Str("path", path).Bool("nosuid", nosuid).Json();
      ++count;
    }
    ::closedir(d);
  }
  Emit(Obj().Str("check", "setuid_files").Raw("files", list + "]"));
}

// Non-blocking connects with a deadline, to every HOST:PORT given.
void Net(const std::vector<std::string>& targets) {
  std::string list = "[";
  for (const auto& t : targets) {
    size_t colon = t.rfind(':');
    std::string host = t.substr(0, colon);
    int port = std::atoi(t.c_str() + colon + 1);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    ::inet_pton(AF_INET, host.c_str(), &a.sin_addr);
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    int err = rc == 0 ? 0 : errno;
    bool connected = rc == 0;
    if (rc != 0 && err == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      if (::poll(&p, 1, 2000) == 1) {
        socklen_t len = sizeof(err);
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        connected = err == 0;
      } else {
        err = ETIMEDOUT;
      }
    }
    ::close(fd);
    list += (list.size() > 1 ? "," : "") + Obj()
                                               .Str("target", t)
                                               .Bool("connected", connected)
                                               .Int("errno", err)
                                               .Str("error", std::strerror(err))
                                               .Json();
  }
  Emit(Obj().Str("check", "net").Raw("targets", list + "]"));
}

// Every mount the sandbox sees, with its per-mount options (read-only or not) and the path
// of its source inside its filesystem.
void Mounts() {
  std::string mountinfo = ReadFile("/proc/self/mountinfo");
  std::string list = "[";
  std::istringstream in(mountinfo);
  std::string line;
  while (std::getline(in, line)) {
    // id parent major:minor root mount-point options [optional...] - fstype source super-options
    std::istringstream f(line);
    std::string id, parent, dev, root, point, options, word, fstype;
    f >> id >> parent >> dev >> root >> point >> options;
    while (f >> word && word != "-") {
    }
    f >> fstype;
    list += (list.size() > 1 ? "," : "") + Obj()
                                               .Str("point", point)
                                               .Str("options", options)
                                               .Str("fstype", fstype)
                                               .Str("root", root)
                                               .Json();
  }
  const char* token = std::getenv("SESSION_TOKEN");
  bool leak = token && *token && mountinfo.find(token) != std::string::npos;
  Emit(Obj().Str("check", "mounts").Raw("mounts", list + "]").Bool("has_token", leak));
}

// Which address families socket() opens, of any type: each one is kernel code the sandbox
// can reach.
void SocketFamilies() {
  std::string list = "[";
  for (int family = 0; family < AF_MAX; ++family) {
    for (int type : {SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET, SOCK_RAW, SOCK_RDM}) {
      int fd = ::socket(family, type | SOCK_CLOEXEC, 0);
      if (fd < 0) continue;
      ::close(fd);
      list += (list.size() > 1 ? "," : "") + std::to_string(family);
      break;
    }
  }
  Emit(Obj().Str("check", "socket_families").Raw("opened", list + "]"));
}

// Connects to Unix sockets by path, or in the abstract namespace when the name starts with @.
void UnixConnect(const std::vector<std::string>& names) {
  std::string list = "[";
  for (const auto& name : names) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    size_t n = std::min(name.size(), sizeof(a.sun_path) - 1);
    std::memcpy(a.sun_path, name.data(), n);
    if (name.starts_with("@")) a.sun_path[0] = '\0';
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + n);
    bool connected = ::connect(fd, reinterpret_cast<sockaddr*>(&a), len) == 0;
    int err = connected ? 0 : errno;
    ::close(fd);
    list += (list.size() > 1 ? "," : "") +
            Obj().Str("name", name).Bool("connected", connected).Int("errno", err).Json();
  }
  Emit(Obj().Str("check", "unix_connect").Raw("targets", list + "]"));
}

void Procs() {
  std::string list = "[";
  DIR* d = ::opendir("/proc");
  while (dirent* e = d ? ::readdir(d) : nullptr) {
    int pid = std::atoi(e->d_name);
    if (pid <= 0) continue;
    std::string cmd = ReadFile("/proc/" + std::string(e->d_name) + "/cmdline", 256);
    for (auto& c : cmd) c = c ? c : ' ';
    list += (list.size() > 1 ? "," : "") + Obj().Int("pid", pid).Str("cmdline", cmd).Json();
  }
  if (d) ::closedir(d);
  Emit(Obj().Str("check", "procs").Raw("procs", list + "]"));
}

void Read(const std::vector<std::string>& paths) {
  std::string list = "[";
  for (const auto& p : paths) {
    int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    int err = fd < 0 ? errno : 0;
    std::string content;
    if (fd >= 0) {
      char buf[256];
      ssize_t n = ::read(fd, buf, sizeof(buf));
      if (n > 0) content.assign(buf, static_cast<size_t>(n));
      if (n < 0) err = errno;
      ::close(fd);
    }
    list += (list.size() > 1 ? "," : "") + Obj()
                                               .Str("path", p)
                                               .Bool("readable", fd >= 0 && err == 0)
                                               .Int("errno", err)
                                               .Str("content", content)
                                               .Json();
  }
  Emit(Obj().Str("check", "read").Raw("paths", list + "]"));
}

void WriteRoot() {
  std::string list = "[";
  for (const char* p : {"/probe", "/etc/probe", "/bin/probe", "/usr/probe", "/.airlock/probe",
                        "/.airlock/init", "/.airlock/run/probe", "/proc/sys/kernel/hostname",
                        "/proc/sysrq-trigger", "/sys/kernel/probe", "/sys/fs/cgroup/probe"}) {
    int fd = ::open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    int err = fd < 0 ? errno : 0;
    bool wrote = false;
    if (fd >= 0) {
      wrote = ::write(fd, "x", 1) == 1;
      if (!wrote) err = errno;
      ::close(fd);
    }
    list += (list.size() > 1 ? "," : "") +
            Obj().Str("path", p).Bool("wrote", wrote).Int("errno", err).Json();
  }
  // The writable places do work, so the refusals above are not an accident.
  int fd = ::open("/tmp/probe-ok", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  bool tmp_ok = fd >= 0 && ::write(fd, "x", 1) == 1;
  if (fd >= 0) ::close(fd);
  Emit(Obj().Str("check", "write_root").Raw("paths", list + "]").Bool("tmp_writable", tmp_ok));
}

void ForkBomb(long max) {
  std::vector<pid_t> kids;
  int err = 0;
  while (static_cast<long>(kids.size()) < max) {
    pid_t p = ::fork();
    if (p == 0) {
      ::pause();
      ::_exit(0);
    }
    if (p < 0) {
      err = errno;
      break;
    }
    kids.push_back(p);
  }
  for (pid_t p : kids) ::kill(p, SIGKILL);
  for (pid_t p : kids) ::waitpid(p, nullptr, 0);
  Emit(Obj()
           .Str("check", "forkbomb")
           .Int("forked", static_cast<long long>(kids.size()))
           .Int("errno", err));
}

// Each chunk escapes through this volatile pointer, or an optimiser may remove the allocation
// and its memset altogether (clang does: the loop then allocates nothing and never ends).
char* volatile membomb_sink = nullptr;

void MemBomb() {
  Emit(Obj().Str("check", "membomb_start"));
  size_t total = 0;
  for (;;) {
    constexpr size_t kChunk = 8 << 20;
    char* p = static_cast<char*>(std::malloc(kChunk));
    if (!p) {
      Emit(Obj()
               .Str("check", "membomb")
               .Str("result", "malloc failed")
               .Int("mb", static_cast<long long>(total >> 20)));
      return;
    }
    std::memset(p, 0x5a, kChunk);
    membomb_sink = p;
    total += kChunk;
  }
}

void FillTmp() {
  int fd = ::open("/tmp/probe-fill", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  static char buf[1 << 16];
  std::memset(buf, 'x', sizeof(buf));
  long long total = 0;
  int err = 0;
  for (;;) {
    ssize_t n = ::write(fd, buf, sizeof(buf));
    if (n <= 0) {
      err = errno;
      break;
    }
    total += n;
  }
  ::close(fd);
  ::unlink("/tmp/probe-fill");
  Emit(Obj().Str("check", "filltmp").Int("bytes", total).Int("errno", err));
}

// Native AIO contexts: fs.aio-max-nr is one limit for the whole host. Tries to reserve
// `events` of them (in contexts of at most 65536) and keeps what it got.
void Aio(long events) {
  std::string before = ReadFile("/proc/sys/fs/aio-nr");
  long reserved = 0;
  int contexts = 0;
  int err = 0;
  while (reserved < events) {
    unsigned long ctx = 0;
    long n = std::min(events - reserved, 65536L);
    if (::syscall(SYS_io_setup, n, &ctx) != 0) {
      err = errno;
      break;
    }
    ++contexts;
    reserved += n;
  }
  Emit(Obj()
           .Str("check", "aio")
           .Int("contexts", contexts)
           .Int("reserved", reserved)
           .Int("errno", err)
           .Str("aio_nr_before", before)
           .Str("aio_nr_after", ReadFile("/proc/sys/fs/aio-nr")));
}

// Host-wide writeback: sync(2) and syncfs(2) on /tmp's filesystem.
void Sync() {
  std::vector<std::string> r;
  r.push_back(Attempt("sync", [] { return ::syscall(SYS_sync); }));
  r.push_back(Attempt("syncfs", [] {
    int fd = ::open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    long rc = ::syscall(SYS_syncfs, fd);
    int err = errno;
    if (fd >= 0) ::close(fd);
    errno = err;
    return rc;
  }));
  r.push_back(Attempt("fsync_own_file", [] {
    // What is still allowed: writing back one's own file.
    int fd = ::open("/tmp/probe-fsync", O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    long rc = fd < 0 ? -1 : ::fsync(fd);
    int err = errno;
    if (fd >= 0) ::close(fd);
    errno = err;
    return rc;
  }));
  std::string list = "[";
  for (const auto& a : r) list += (list.size() > 1 ? "," : "") + a;
  Emit(Obj().Str("check", "sync").Raw("attempts", list + "]"));
}

sockaddr_in Loopback(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

// A listener on 127.0.0.1 with a kernel-chosen port, or -1.
int LoopbackListener(uint16_t* port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a = Loopback(0);
  socklen_t len = sizeof(a);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::listen(fd, 4096) != 0 || ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0) ::close(fd);
    return -1;
  }
  *port = ntohs(a.sin_port);
  return fd;
}

// Writes until the socket will take no more (EAGAIN) or fails; the bytes it took.
long long FillSocket(int fd, int* err) {
  static char buf[1 << 16];
  long long total = 0;
  for (;;) {
    ssize_t n = ::send(fd, buf, sizeof(buf), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno != EAGAIN) *err = errno;
      return total;
    }
    total += n;
  }
}

// Finding 6: up to `pairs` loopback TCP connections, both directions written full and never
// read, so every byte sits in kernel socket buffers. Keeps them open; reports what they hold
// and, where the sandbox sees it, its cgroup's TCP accounting.
void TcpFill(int pairs) {
  uint16_t port = 0;
  int listener = LoopbackListener(&port);
  long long queued = 0;
  int made = 0, err = 0, write_err = 0;
  static std::vector<int> held;  // open until the process ends
  for (; listener >= 0 && made < pairs; ++made) {
    int c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a = Loopback(port);
    if (c < 0 || ::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      err = errno;
      if (c >= 0) ::close(c);
      break;
    }
    int s = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (s < 0) {
      err = errno;
      ::close(c);
      break;
    }
    held.push_back(c);
    held.push_back(s);
    queued += FillSocket(c, &write_err);
    queued += FillSocket(s, &write_err);
  }
  const std::string cg = "/sys/fs/cgroup/memory/memory.kmem.tcp.";
  Emit(Obj()
           .Str("check", "tcpfill")
           .Int("pairs", made)
           .Int("queued", queued)
           .Int("errno", err)
           .Int("write_errno", write_err)
           .Str("kmem_tcp_limit", ReadFile(cg + "limit_in_bytes"))
           .Str("kmem_tcp_usage", ReadFile(cg + "usage_in_bytes"))
           .Str("kmem_tcp_max_usage", ReadFile(cg + "max_usage_in_bytes"))
           .Str("tcp_rmem", ReadFile("/proc/sys/net/ipv4/tcp_rmem"))
           .Str("tcp_wmem", ReadFile("/proc/sys/net/ipv4/tcp_wmem")));
}

// An ordinary loopback connection: `bytes` sent by a child and counted by the parent.
void TcpEcho(long long bytes) {
  uint16_t port = 0;
  int listener = LoopbackListener(&port);
  pid_t child = listener < 0 ? -1 : ::fork();
  if (child == 0) {
    int c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a = Loopback(port);
    if (::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) ::_exit(1);
    static char buf[1 << 16];
    for (long long sent = 0; sent < bytes;) {
      ssize_t n =
          ::write(c, buf, static_cast<size_t>(std::min<long long>(sizeof(buf), bytes - sent)));
      if (n <= 0) ::_exit(2);
      sent += n;
    }
    ::_exit(0);
  }
  long long got = 0;
  int s = child > 0 ? ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC) : -1;
  char buf[1 << 16];
  for (ssize_t n; s >= 0 && (n = ::read(s, buf, sizeof(buf))) > 0;) got += n;
  int status = 0;
  if (child > 0) ::waitpid(child, &status, 0);
  Emit(Obj()
           .Str("check", "tcpecho")
           .Int("received", got)
           .Bool("ok", got == bytes && WIFEXITED(status) && WEXITSTATUS(status) == 0));
}

// Per-uid quota: inotify instances (fs.inotify.max_user_instances) until the kernel refuses,
// at most `max`; kept open.
void InotifyHold(int max) {
  int made = 0, err = 0;
  for (; made < max; ++made) {
    if (::inotify_init1(IN_CLOEXEC) < 0) {
      err = errno;
      break;
    }
  }
  Emit(Obj()
           .Str("check", "inotify")
           .Int("instances", made)
           .Int("errno", err)
           .Str("max_user_instances", ReadFile("/proc/sys/fs/inotify/max_user_instances")));
}

// The control plane as the agent reaches it: CONTROL_PLANE_URL's address (init's bridge).
sockaddr_in ControlPlaneAddress() {
  const char* url = std::getenv("CONTROL_PLANE_URL");
  std::string rest = url ? url : "";
  if (rest.starts_with("http://")) rest = rest.substr(7);
  rest = rest.substr(0, rest.find('/'));
  size_t colon = rest.rfind(':');
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(std::atoi(rest.c_str() + colon + 1)));
  ::inet_pton(AF_INET, rest.substr(0, colon).c_str(), &a.sin_addr);
  return a;
}

std::string SandboxRequest(const std::string& target, bool close) {
  const char* token = std::getenv("SESSION_TOKEN");
  return "GET " + target + " HTTP/1.1\r\nHost: control-plane\r\nAuthorization: Bearer " +
         (token ? token : "") + "\r\n" + (close ? "Connection: close\r\n" : "") + "\r\n";
}

// The status of a response's first line, or 0 while there is none.
int ResponseStatus(const std::string& in) {
  if (!in.starts_with("HTTP/1.1 ") || in.find("\r\n\r\n") == std::string::npos) return 0;
  return std::atoi(in.c_str() + 9);
}

// One request on a connection of its own, read to its end: the status, or -errno when the
// connection failed, or 0 when it closed without an answer.
int ControlPlaneCall(const std::string& target) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a = ControlPlaneAddress();
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    int err = errno;
    if (fd >= 0) ::close(fd);
    return -err;
  }
  std::string req = SandboxRequest(target, true), in;
  bool sent = ::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size());
  char buf[4096];
  for (ssize_t n; sent && (n = ::read(fd, buf, sizeof(buf))) > 0;) in.append(buf, n);
  ::close(fd);
  return ResponseStatus(in);
}

// Long-polls the inbox until a message comes: the test's way to move the probe on.
int AwaitMessage() {
  for (;;) {
    int status = ControlPlaneCall("/sandbox/v1/inbox?wait=60");
    if (status != 204) return status;
  }
}

// The attacker's flood of its control plane. Takes its task, says it is ready and waits for
// a message; then opens up to `n` connections to CONTROL_PLANE_URL at once, sends a request
// on each and holds every one of them open, answered or not (a connection the other side
// closed stays open on this side too, so every relay on the way keeps its half). Reports how
// many were answered (`held`), closed unanswered (`refused`) or neither once nothing moved
// for a few seconds (`pending`). While it holds them it keeps trying one more connection
// after another (`pressure_*`), and waits on one held connection for the next message. Then
// it lets go of everything, asks again until it is answered (`ctlflood_after`), and waits
// for a last message before it ends.
//
// `silent`: the connections send nothing, so the control plane closes them (past the share at
// once, the rest when the first byte does not come) while this side keeps them half open,
// and every relay on the way with them. Reports how many connected (`connected`) and holds
// them until the sandbox is killed: its own channel is jammed, no message could reach it.
void CtlFlood(int n, bool silent) {
  int task = ControlPlaneCall("/sandbox/v1/inbox");
  Emit(Obj().Str("check", "ctlflood_ready").Int("task_status", task));
  int go = AwaitMessage();

  enum State { kPending, kServed, kRefused, kConnected };
  struct Conn {
    explicit Conn(int f) : fd(f) {}
    int fd;
    bool sent = false;
    State state = kPending;
    std::string in;
  };
  std::vector<Conn> conns;
  const sockaddr_in addr = ControlPlaneAddress();
  const std::string poll_request = SandboxRequest("/sandbox/v1/inbox", false);
  int socket_err = 0, connect_err = 0, connect_failed = 0;
  for (int i = 0; i < n; ++i) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      socket_err = errno;
      break;
    }
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0 &&
        errno != EINPROGRESS) {
      connect_err = errno;
      ++connect_failed;
      ::close(fd);
      continue;
    }
    conns.emplace_back(fd);
  }
  // Moves one connection on; true when its state changed.
  auto step = [&](Conn& c, short revents) {
    if (!c.sent) {
      int err = 0;
      socklen_t len = sizeof(err);
      ::getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0 || (revents & (POLLERR | POLLHUP)) ||
          ::send(c.fd, poll_request.data(), poll_request.size(), MSG_NOSIGNAL) < 0) {
        c.state = kRefused;
        return true;
      }
      if (silent) {
        c.state = kConnected;
        return true;
      }
      c.sent = true;
      return false;
    }
    char buf[4096];
    ssize_t got = ::read(c.fd, buf, sizeof(buf));
    if (got > 0) c.in.append(buf, static_cast<size_t>(got));
    if (ResponseStatus(c.in) != 0) {
      c.state = kServed;
    } else if (got == 0 || (got < 0 && errno != EAGAIN)) {
      c.state = kRefused;
    } else {
      return false;
    }
    return true;
  };
  constexpr int kQuietMs = 5000;
  for (;;) {
    std::vector<pollfd> fds;
    std::vector<Conn*> of;
    for (auto& c : conns) {
      if (c.state != kPending) continue;
      fds.push_back(pollfd{c.fd, static_cast<short>(c.sent ? POLLIN : POLLOUT), 0});
      of.push_back(&c);
    }
    if (fds.empty() || ::poll(fds.data(), fds.size(), kQuietMs) <= 0) break;
    for (size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].revents) step(*of[i], fds[i].revents);
    }
  }
  int held = 0, refused = 0, pending = 0, connected = 0, other_status = 0;
  Conn* waiter = nullptr;
  for (auto& c : conns) {
    if (c.state == kServed) {
      ++held;
      if (ResponseStatus(c.in) != 204) other_status = ResponseStatus(c.in);
      if (!waiter) waiter = &c;
    }
    refused += c.state == kRefused;
    pending += c.state == kPending;
    connected += c.state == kConnected;
  }
  Emit(Obj()
           .Str("check", "ctlflood")
           .Int("go_status", go)
           .Int("opened", static_cast<long long>(conns.size()))
           .Int("held", held)
           .Int("refused", refused)
           .Int("pending", pending)
           .Int("connected", connected)
           .Int("other_status", other_status)
           .Int("connect_failed", connect_failed)
           .Int("connect_errno", connect_err)
           .Int("socket_errno", socket_err));
  while (silent) ::pause();

  // Holding on: one more connection at a time, while a held one waits for the next message.
  int pressure = 0, pressure_served = 0, release = 0;
  std::string release_request = SandboxRequest("/sandbox/v1/inbox?wait=60", false);
  if (waiter) {
    waiter->in.clear();
    if (::send(waiter->fd, release_request.data(), release_request.size(), MSG_NOSIGNAL) < 0)
      waiter = nullptr;
  }
  Conn attempt(-1);
  while (waiter) {
    if (attempt.fd < 0) {
      attempt = Conn(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      ::connect(attempt.fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
      ++pressure;
    }
    pollfd fds[2] = {{waiter->fd, POLLIN, 0},
                     {attempt.fd, static_cast<short>(attempt.sent ? POLLIN : POLLOUT), 0}};
    if (::poll(fds, 2, -1) < 0) break;
    if (fds[1].revents && step(attempt, fds[1].revents)) {
      pressure_served += attempt.state == kServed;
      ::close(attempt.fd);
      attempt = Conn(-1);
    }
    if (fds[0].revents) {
      char buf[4096];
      ssize_t got = ::read(waiter->fd, buf, sizeof(buf));
      if (got <= 0) break;
      waiter->in.append(buf, static_cast<size_t>(got));
      release = ResponseStatus(waiter->in);
      if (release == 204) {  // the long poll ran out: poll again
        waiter->in.clear();
        release = 0;
        if (::send(waiter->fd, release_request.data(), release_request.size(), MSG_NOSIGNAL) < 0)
          break;
      }
      if (release != 0) break;
    }
  }
  if (attempt.fd >= 0) ::close(attempt.fd);
  for (auto& c : conns) ::close(c.fd);

  // Served again: connections the flood left on the way may still take the share for a
  // moment, so ask until answered.
  int after = 0, attempts = 0;
  while (attempts < 1000 && (after = ControlPlaneCall("/sandbox/v1/inbox")) <= 0) ++attempts;
  Emit(Obj()
           .Str("check", "ctlflood_after")
           .Int("release_status", release)
           .Int("pressure_attempts", pressure)
           .Int("pressure_served", pressure_served)
           .Int("status", after)
           .Int("retries", attempts));
  AwaitMessage();
}

void Listen(int port, int seconds) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 && ::listen(fd, 16) == 0;
  int file = ::open("/tmp/probe-marker", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (file >= 0) {
    [[maybe_unused]] auto n = ::write(file, "marker", 6);
    ::close(file);
  }
  Emit(Obj().Str("check", "listen").Bool("listening", ok).Int("port", port));
  ::sleep(static_cast<unsigned>(seconds));
  ::close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  // Unbuffered: a kill must not lose what was printed.
  std::setvbuf(stdout, nullptr, _IONBF, 0);
  if (argc < 2) {
    std::fprintf(
        stderr,
        "usage: airlock-probe CHECK [args] [-- CHECK ...]\n"
        "checks: env identity environ-others syscalls setuid-files procs mounts socket-families "
        "write-root\n"
        "        filltmp membomb | net HOST:PORT... | unix-connect PATH|@NAME... | read PATH...\n"
        "        forkbomb MAX | listen PORT SECONDS | sleep SECONDS | aio EVENTS | sync\n"
        "        tcpfill PAIRS | tcpecho BYTES | inotify MAX | ctlflood CONNECTIONS [silent]\n");
    return 2;
  }
  // Checks are separated by "--" so each can take arguments.
  std::vector<std::vector<std::string>> checks(1);
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--") == 0)
      checks.emplace_back();
    else
      checks.back().push_back(argv[i]);
  }
  for (const auto& c : checks) {
    if (c.empty()) continue;
    const std::string& name = c[0];
    std::vector<std::string> args(c.begin() + 1, c.end());
    if (name == "env")
      Env();
    else if (name == "identity")
      Identity();
    else if (name == "environ-others")
      EnvironOthers();
    else if (name == "syscalls")
      Syscalls();
    else if (name == "setuid-files")
      SetuidFiles();
    else if (name == "procs")
      Procs();
    else if (name == "mounts")
      Mounts();
    else if (name == "socket-families")
      SocketFamilies();
    else if (name == "unix-connect")
      UnixConnect(args);
    else if (name == "write-root")
      WriteRoot();
    else if (name == "filltmp")
      FillTmp();
    else if (name == "membomb")
      MemBomb();
    else if (name == "net")
      Net(args);
    else if (name == "read")
      Read(args);
    else if (name == "forkbomb")
      ForkBomb(args.empty() ? 100000 : std::atol(args[0].c_str()));
    else if (name == "listen")
      Listen(std::atoi(args.at(0).c_str()), args.size() > 1 ? std::atoi(args[1].c_str()) : 30);
    else if (name == "aio")
      Aio(std::atol(args.at(0).c_str()));
    else if (name == "sync")
      Sync();
    else if (name == "tcpfill")
      TcpFill(std::atoi(args.at(0).c_str()));
    else if (name == "tcpecho")
      TcpEcho(std::atoll(args.at(0).c_str()));
    else if (name == "inotify")
      InotifyHold(std::atoi(args.at(0).c_str()));
    else if (name == "ctlflood")
      CtlFlood(std::atoi(args.at(0).c_str()), args.size() > 1 && args[1] == "silent");
    else if (name == "sleep")
      ::sleep(static_cast<unsigned>(std::atoi(args.at(0).c_str())));
    else {
      std::fprintf(stderr, "airlock-probe: unknown check %s\n", name.c_str());
      return 2;
    }
  }
  Emit(Obj().Str("check", "done"));
  return 0;
}
