#include "sandbox/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
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

Result<pid_t> SpawnDaemon(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                          const std::string& log_path, int pass_fd) {
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
  int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (log_fd < 0)
    return Errorf(ErrorCode::kInternal, "open {}: {}", log_path, std::strerror(errno));
  int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  // The daemon's pid comes back from the middle process through this pipe.
  int pipefd[2];
  if (null_fd < 0 || ::pipe2(pipefd, O_CLOEXEC) != 0) {
    int err = errno;
    ::close(log_fd);
    if (null_fd >= 0) ::close(null_fd);
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
