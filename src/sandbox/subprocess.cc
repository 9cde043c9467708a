#include "sandbox/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <set>
#include <vector>

namespace airlock::sandbox {

void CloseFdsFrom(int first, int keep) {
  if (keep < first) {
    if (::syscall(SYS_close_range, first, ~0U, 0) == 0) return;
  } else {
    if (keep > first) ::syscall(SYS_close_range, first, keep - 1, 0);
    if (::syscall(SYS_close_range, keep + 1, ~0U, 0) == 0) return;
  }
  // Kernels before 5.9: close one by one up to the descriptor limit.
  long max = ::sysconf(_SC_OPEN_MAX);
  for (long fd = first; fd < max; ++fd) {
    if (fd != keep) ::close(static_cast<int>(fd));
  }
}

namespace {

// One step of making a jail's root, prepared before fork so that the child only makes system
// calls (async-signal-safe) on strings that exist already.
struct JailStep {
  enum Kind { kDir, kFile, kLink, kBind, kRemount } kind;
  std::string path;         // in the new root: the jail's root + the host path
  std::string source;       // kBind: the host path; kLink: the link's target
  unsigned long flags = 0;  // kRemount
};

Result<std::vector<JailStep>> PlanJail(const DaemonJail& jail) {
  std::vector<std::pair<std::string, bool>> paths;  // (host path, writable)
  for (const auto& p : jail.read_only) paths.emplace_back(p, false);
  for (const auto& p : jail.writable) paths.emplace_back(p, true);
  // A parent before what is under it: a bind mounted later would hide the earlier one.
  std::sort(paths.begin(), paths.end());
  std::vector<JailStep> steps;
  std::set<std::string> made;
  for (const auto& [host, writable] : paths) {
    if (host.size() < 2 || host[0] != '/' || host.back() == '/' ||
        host.find("/..") != std::string::npos || host.find("//") != std::string::npos) {
      return Errorf(ErrorCode::kInvalidArgument, "jail: {:?} is not a plain absolute path", host);
    }
    for (size_t slash = host.find('/', 1); slash != std::string::npos;
         slash = host.find('/', slash + 1)) {
      if (made.insert(host.substr(0, slash)).second) {
        steps.push_back({JailStep::kDir, jail.root + host.substr(0, slash), {}, 0});
      }
    }
    if (!made.insert(host).second) continue;
    struct stat st {};
    if (::lstat(host.c_str(), &st) != 0) {
      return Errorf(ErrorCode::kNotFound, "jail: {}: {}", host, std::strerror(errno));
    }
    if (S_ISLNK(st.st_mode)) {
      char target[4096];
      ssize_t n = ::readlink(host.c_str(), target, sizeof(target) - 1);
      if (n <= 0) return Errorf(ErrorCode::kInternal, "jail: readlink {}", host);
      steps.push_back({JailStep::kLink, jail.root + host, std::string(target, n), 0});
      continue;
    }
    const bool device = S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode);
    steps.push_back(
        {S_ISDIR(st.st_mode) ? JailStep::kDir : JailStep::kFile, jail.root + host, {}, 0});
    steps.push_back({JailStep::kBind, jail.root + host, host, 0});
    unsigned long flags = MS_BIND | MS_REMOUNT | MS_NOSUID;
    if (!writable) flags |= MS_RDONLY;
    if (!device) flags |= MS_NODEV;
    steps.push_back({JailStep::kRemount, jail.root + host, {}, flags});
  }
  return steps;
}

// `v` (>= 0) in decimal at the end of `buf`, without allocating (between fork and exec):
// the digits start at the returned pointer and end at buf + sizeof(buf).
const char* Decimal(long v, char (&buf)[24]) {
  char* p = buf + sizeof(buf);
  do {
    *--p = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v > 0 && p > buf);
  return p;
}

// Writes "jail: <what> <path>: errno <n>" to `fd`, with async-signal-safe calls only; false.
bool JailFailed(int fd, const char* what, const char* path) {
  char buf[24];
  const char* digits = Decimal(errno, buf);
  [[maybe_unused]] ssize_t w = ::write(fd, "airlock: jail: ", 15);
  w = ::write(fd, what, std::strlen(what));
  w = ::write(fd, " ", 1);
  w = ::write(fd, path, std::strlen(path));
  w = ::write(fd, ": errno ", 8);
  w = ::write(fd, digits, buf + sizeof(buf) - digits);
  w = ::write(fd, "\n", 1);
  return false;
}

// In the daemon, before exec: a mount namespace of its own whose root holds only what
// `steps` put there. False (with the reason in `log_fd`) when a step fails.
bool EnterJail(const std::string& root, const std::vector<JailStep>& steps, int log_fd) {
  if (::unshare(CLONE_NEWNS) != 0) return JailFailed(log_fd, "unshare", root.c_str());
  // Nothing done here may reach the host's mounts.
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    return JailFailed(log_fd, "make private", "/");
  }
  if (::mount("tmpfs", root.c_str(), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "mode=0755,size=64k") != 0) {
    return JailFailed(log_fd, "mount tmpfs on", root.c_str());
  }
  for (const auto& s : steps) {
    bool ok = true;
    switch (s.kind) {
      case JailStep::kDir:
        ok = ::mkdir(s.path.c_str(), 0755) == 0 || errno == EEXIST;
        break;
      case JailStep::kFile: {
        int fd = ::open(s.path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        ok = fd >= 0;
        if (ok) ::close(fd);
        break;
      }
      case JailStep::kLink:
        ok = ::symlink(s.source.c_str(), s.path.c_str()) == 0;
        break;
      case JailStep::kBind:
        ok = ::mount(s.source.c_str(), s.path.c_str(), nullptr, MS_BIND, nullptr) == 0;
        break;
      case JailStep::kRemount:
        ok = ::mount(nullptr, s.path.c_str(), nullptr, s.flags, nullptr) == 0;
        break;
    }
    if (!ok) return JailFailed(log_fd, "make", s.path.c_str());
  }
  // The new root replaces the old, which is then detached: nothing else of the host remains.
  if (::chdir(root.c_str()) != 0 || ::syscall(SYS_pivot_root, ".", ".") != 0 ||
      ::umount2(".", MNT_DETACH) != 0 || ::chdir("/") != 0) {
    return JailFailed(log_fd, "pivot into", root.c_str());
  }
  if (::mount(nullptr, "/", nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV,
              nullptr) != 0) {
    return JailFailed(log_fd, "make read-only", "/");
  }
  return true;
}

}  // namespace

Result<pid_t> SpawnDaemon(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                          const std::string& log_path, int pass_fd, const DaemonJail* jail) {
  if (argv.empty() || argv[0].empty() || argv[0][0] != '/') {
    return MakeError(ErrorCode::kInvalidArgument, "SpawnDaemon needs an absolute path");
  }
  if (pass_fd >= 0 && pass_fd <= 2) {
    return MakeError(ErrorCode::kInvalidArgument, "SpawnDaemon passes a descriptor above 2 only");
  }
  // Everything is prepared before fork: between fork and exec only async-signal-safe calls.
  std::vector<std::string> args = argv, envs = env;
  std::vector<char*> cargv, cenv;
  for (auto& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  for (auto& e : envs) cenv.push_back(e.data());
  cenv.push_back(nullptr);
  const bool jailed = jail && !jail->root.empty();
  std::vector<JailStep> steps;
  if (jailed) {
    AIRLOCK_ASSIGN_OR_RETURN(steps, PlanJail(*jail));
  }
  std::vector<int> cgroup_fds;
  auto close_cgroups = [&] {
    for (int fd : cgroup_fds) ::close(fd);
  };
  for (size_t i = 0; jail && i < jail->cgroups.size(); ++i) {
    int fd = ::open(jail->cgroups[i].c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      close_cgroups();
      return Errorf(ErrorCode::kInternal, "open {}: {}", jail->cgroups[i], std::strerror(err));
    }
    cgroup_fds.push_back(fd);
  }
  int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (log_fd < 0) {
    int err = errno;
    close_cgroups();
    return Errorf(ErrorCode::kInternal, "open {}: {}", log_path, std::strerror(err));
  }
  int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  // The daemon's pid comes back from the middle process through this pipe.
  int pipefd[2];
  if (null_fd < 0 || ::pipe2(pipefd, O_CLOEXEC) != 0) {
    int err = errno;
    ::close(log_fd);
    if (null_fd >= 0) ::close(null_fd);
    close_cgroups();
    return Errorf(ErrorCode::kInternal, "pipe: {}", std::strerror(err));
  }
  static constexpr char kExecFailed[] = "exec failed\n";
  pid_t middle = ::fork();
  if (middle == 0) {
    ::setsid();
    pid_t daemon = ::fork();
    if (daemon != 0) {
      [[maybe_unused]] auto n = ::write(pipefd[1], &daemon, sizeof(daemon));
      ::_exit(daemon > 0 ? 0 : 1);
    }
    // Into its cgroups and its jail first: the descriptors used for that may be the ones the
    // dup2s below take.
    if (!cgroup_fds.empty()) {
      char buf[24];
      const char* pid = Decimal(::getpid(), buf);
      const ssize_t n = buf + sizeof(buf) - pid;
      for (size_t i = 0; i < cgroup_fds.size(); ++i) {
        if (::write(cgroup_fds[i], pid, n) != n) {
          (void)JailFailed(log_fd, "join the cgroup of", jail->cgroups[i].c_str());
          ::_exit(126);
        }
      }
    }
    if (jailed && !EnterJail(jail->root, steps, log_fd)) ::_exit(126);
    if (jail && jail->idle_cpu) {
      sched_param param{};
      if (::sched_setscheduler(0, SCHED_IDLE, &param) != 0) {
        (void)JailFailed(log_fd, "take the idle scheduling policy", "");
        ::_exit(126);
      }
    }
    ::dup2(null_fd, 0);
    ::dup2(log_fd, 1);
    ::dup2(log_fd, 2);
    if (pass_fd >= 0) {
      // dup2 onto itself would keep close-on-exec.
      if (pass_fd == 3) {
        ::fcntl(3, F_SETFD, 0);
      } else {
        ::dup2(pass_fd, 3);
      }
    }
    CloseFdsFrom(pass_fd >= 0 ? 4 : 3, -1);
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, nullptr);
    ::execve(cargv[0], cargv.data(), cenv.data());
    [[maybe_unused]] auto n = ::write(2, kExecFailed, sizeof(kExecFailed) - 1);
    ::_exit(127);
  }
  ::close(pipefd[1]);
  ::close(log_fd);
  ::close(null_fd);
  close_cgroups();
  if (middle < 0) {
    ::close(pipefd[0]);
    return Errorf(ErrorCode::kUnavailable, "fork: {}", std::strerror(errno));
  }
  pid_t daemon = -1;
  ssize_t n;
  do {
    n = ::read(pipefd[0], &daemon, sizeof(daemon));
  } while (n < 0 && errno == EINTR);
  ::close(pipefd[0]);
  ::waitpid(middle, nullptr, 0);
  if (n != sizeof(daemon) || daemon <= 0) {
    return MakeError(ErrorCode::kUnavailable, "fork of the daemon failed");
  }
  return daemon;
}

std::string FindExecutable(const std::string& name) {
  if (name.empty()) return {};
  if (name.find('/') != std::string::npos)
    return ::access(name.c_str(), X_OK) == 0 ? name : std::string();
  const char* path = std::getenv("PATH");
  std::string p =
      path && *path ? path : "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  size_t start = 0;
  while (start <= p.size()) {
    size_t end = p.find(':', start);
    if (end == std::string::npos) end = p.size();
    std::string candidate = p.substr(start, end - start) + "/" + name;
    if (end > start && ::access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return {};
}

Result<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                 const std::vector<std::string>& env, const CommandOptions& opts) {
  if (argv.empty()) return MakeError(ErrorCode::kInvalidArgument, "empty command");
  std::string exe = FindExecutable(argv[0]);
  if (exe.empty()) return Errorf(ErrorCode::kNotFound, "{}: not found in PATH", argv[0]);
  // Everything the child touches is prepared before fork: only async-signal-safe calls run
  // between fork and exec.
  std::vector<std::string> args = argv, envs = env;
  std::vector<char*> cargv, cenv;
  for (auto& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  for (auto& e : envs) cenv.push_back(e.data());
  cenv.push_back(nullptr);
  int out[2] = {-1, -1};
  if (::pipe2(out, O_CLOEXEC) != 0)
    return Errorf(ErrorCode::kInternal, "pipe: {}", std::strerror(errno));
  int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  int stdout_fd = opts.stdout_fd >= 0 ? opts.stdout_fd : out[1];
  int stderr_fd = opts.stderr_fd >= 0 ? opts.stderr_fd : out[1];
  std::vector<int> extra = opts.extra_fds;
  pid_t pid = ::fork();
  if (pid == 0) {
    // Move the extra fds out of the way of 0..2+n first, then into place.
    int base = 100 + static_cast<int>(extra.size());
    for (size_t i = 0; i < extra.size(); ++i) {
      if (::dup3(extra[i], base + static_cast<int>(i), O_CLOEXEC) < 0) ::_exit(126);
    }
    if (::dup2(null_fd, 0) < 0 || ::dup2(stdout_fd, 1) < 0 || ::dup2(stderr_fd, 2) < 0)
      ::_exit(126);
    for (size_t i = 0; i < extra.size(); ++i) {
      if (::dup2(base + static_cast<int>(i), 3 + static_cast<int>(i)) < 0) ::_exit(126);
    }
    CloseFdsFrom(3 + static_cast<int>(extra.size()), -1);
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, nullptr);
    for (int s = 1; s < NSIG; ++s) ::signal(s, SIG_DFL);
    ::execve(exe.c_str(), cargv.data(), cenv.data());
    ::_exit(127);
  }
  ::close(out[1]);
  if (null_fd >= 0) ::close(null_fd);
  if (pid < 0) {
    ::close(out[0]);
    return Errorf(ErrorCode::kUnavailable, "fork: {}", std::strerror(errno));
  }
  CommandResult result;
  auto deadline = std::chrono::steady_clock::now() + opts.timeout;
  bool timed_out = false;
  char buf[8192];
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{out[0], POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) continue;
    ssize_t n = ::read(out[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // EOF: every holder of the write end is gone
    size_t room = opts.max_output - std::min(opts.max_output, result.output.size());
    result.output.append(buf, std::min(room, static_cast<size_t>(n)));
  }
  ::close(out[0]);
  // The output may end before the child does (its stdout was redirected, or it closed it):
  // keep honouring the deadline while waiting for the exit. A pidfd becomes readable the
  // moment the child exits, so the wait costs nothing extra (polling waitpid with naps
  // added up to 20 ms to every container start).
  int status = 0;
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  for (auto nap = std::chrono::microseconds(200);;) {
    if (timed_out) {
      ::kill(pid, SIGKILL);
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      break;
    }
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid || (r < 0 && errno != EINTR)) break;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      continue;
    }
    if (pidfd >= 0) {
      pollfd p{pidfd, POLLIN, 0};
      ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count() + 1, 1000)));
    } else {  // kernels before 5.3
      ::usleep(static_cast<useconds_t>(nap.count()));
      nap = std::min(nap * 2, std::chrono::microseconds(20000));
    }
  }
  if (pidfd >= 0) ::close(pidfd);
  if (timed_out) {
    return Errorf(ErrorCode::kDeadlineExceeded, "{} did not finish within {} ms", argv[0],
                  opts.timeout.count());
  }
  if (WIFEXITED(status))
    result.exit_code = WEXITSTATUS(status);
  else if (WIFSIGNALED(status))
    result.exit_code = 128 + WTERMSIG(status);
  if (result.exit_code == 126 || result.exit_code == 127) {
    if (result.output.empty()) result.output = fmt::format("cannot execute {}", exe);
  }
  return result;
}

}  // namespace airlock::sandbox
