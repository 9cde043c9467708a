#include "agent.h"

#include <fcntl.h>
#include <linux/close_range.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "privileges.h"

namespace airlock::init {
namespace {

// What the child writes to the status pipe when a step before exec fails.
enum class ChildStep : int {
  kSetsid = 1,
  kStdio,
  kDrop,
  kSeccomp,
  kExec,
};

struct ChildReport {
  ChildStep step;
  int drop_step;  // a DropStep when step == kDrop
  int err;
};

// Everything the child touches is built before fork: between fork and exec only
// async-signal-safe calls run, and nothing allocates.
struct Prepared {
  std::vector<char*> argv;
  std::vector<char*> envp;
  std::vector<std::string> candidates;  // where command[0] may be
  std::vector<const char*> candidate_ptrs;
  std::vector<const char*> dirs;  // workdir, home, "/"
};

std::vector<std::string> ExecCandidates(const std::string& name, const std::string& path) {
  if (name.find('/') != std::string::npos) {
    return {name};
  }
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find(':', start);
    if (end == std::string::npos) {
      end = path.size();
    }
    std::string dir = path.substr(start, end - start);
    // An empty PATH element means the current directory.
    out.push_back((dir.empty() ? "." : dir) + "/" + name);
    start = end + 1;
  }
  return out;
}

[[noreturn]] void ChildFail(int status_fd, ChildStep step, int drop_step, int err) {
  ChildReport report{step, drop_step, err};
  [[maybe_unused]] ssize_t n = ::write(status_fd, &report, sizeof(report));
  ::_exit(127);
}

// Best effort: a missing /proc must not keep the agent from starting, so a failure is only
// noted in the agent's own output.
void RaiseOomScore() {
  int fd = ::open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
  if (fd >= 0 && ::write(fd, "1000", 4) == 4) {
    ::close(fd);
    return;
  }
  if (fd >= 0) {
    ::close(fd);
  }
  static constexpr char kWarning[] = "[airlock-init] warning: cannot set oom_score_adj\n";
  [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, kWarning, sizeof(kWarning) - 1);
}

[[noreturn]] void RunChild(const AgentSpec& spec, Prepared& p, int status_fd, int null_fd) {
  // Init made itself non-dumpable, which leaves its /proc files to root: the agent-to-be
  // must own its own again (to raise its oom_score_adj as a non-root init's child). It holds
  // nothing the agent will not, and exec would make it dumpable anyway.
  ::prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
  if (::setsid() < 0) {
    ChildFail(status_fd, ChildStep::kSetsid, 0, errno);
  }
  // Init blocks the signals it handles through its signalfd and ignores SIGPIPE; the agent
  // starts with the defaults. (Every other signal's disposition init reset when it started:
  // ResetSignalDispositions. Handlers it installed none of, and exec resets those anyway.)
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  ::sigaction(SIGPIPE, &dfl, nullptr);
  sigset_t none;
  ::sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  if (::dup2(null_fd, STDIN_FILENO) < 0 || ::dup2(spec.output_fd, STDOUT_FILENO) < 0 ||
      ::dup2(spec.output_fd, STDERR_FILENO) < 0) {
    ChildFail(status_fd, ChildStep::kStdio, 0, errno);
  }
  // Init's own descriptors are close-on-exec already; this also covers any that init
  // inherited from whatever started it (kernels before 5.11 lack CLOSE_RANGE_CLOEXEC and
  // rely on the former alone). The status pipe stays open until the exec.
  ::syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);
  ::setrlimit(RLIMIT_NOFILE, &spec.nofile);
  RaiseOomScore();
  DropStep drop = DropAgentPrivileges(spec.uid, spec.gid, spec.switch_ids);
  if (drop != DropStep::kNone) {
    ChildFail(status_fd, ChildStep::kDrop, static_cast<int>(drop), errno);
  }
  // As the agent's user: a directory it cannot enter falls back to the next one.
  for (const char* dir : p.dirs) {
    if (::chdir(dir) == 0) {
      break;
    }
  }
  // Last, with no_new_privs already set: from here on only what the filter allows, and
  // execve is allowed.
  if (!spec.seccomp_filter.empty()) {
    sock_fprog prog{};
    prog.len = static_cast<unsigned short>(spec.seccomp_filter.size() / sizeof(sock_filter));
    prog.filter = reinterpret_cast<sock_filter*>(const_cast<char*>(spec.seccomp_filter.data()));
    if (::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
      ChildFail(status_fd, ChildStep::kSeccomp, 0, errno);
    }
  }
  // Like execvp: remember EACCES over "not found", so the error names the real problem.
  int err = ENOENT;
  for (const char* candidate : p.candidate_ptrs) {
    ::execve(candidate, p.argv.data(), p.envp.data());
    if (errno == EACCES || err == ENOENT || err == ENOTDIR) {
      err = errno == ENOTDIR ? ENOENT : errno;
    }
  }
  ChildFail(status_fd, ChildStep::kExec, 0, err);
}

std::string DescribeFailure(const AgentSpec& spec, const ChildReport& report) {
  switch (report.step) {
    case ChildStep::kSetsid:
      return ErrnoMessage("setsid", report.err);
    case ChildStep::kStdio:
      return ErrnoMessage("redirecting stdio", report.err);
    case ChildStep::kDrop: {
      std::string step = DropStepName(static_cast<DropStep>(report.drop_step));
      if (report.err == 0) {
        return "dropping privileges: " + step;
      }
      return ErrnoMessage("dropping privileges: " + step, report.err);
    }
    case ChildStep::kSeccomp:
      return ErrnoMessage("installing the seccomp filter", report.err);
    case ChildStep::kExec:
      return ErrnoMessage("exec " + spec.command[0], report.err);
  }
  return "the agent failed to start";
}

}  // namespace

void ResetSignalDispositions() {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) {
      ::sigaction(sig, &dfl, nullptr);
    }
  }
}

Result<SpawnedAgent> SpawnAgent(const AgentSpec& spec) {
  Prepared p;
  std::vector<std::string> argv = spec.command;
  std::vector<std::string> env = spec.env;
  for (auto& a : argv) {
    p.argv.push_back(a.data());
  }
  p.argv.push_back(nullptr);
  for (auto& e : env) {
    p.envp.push_back(e.data());
  }
  p.envp.push_back(nullptr);
  p.candidates = ExecCandidates(spec.command[0], spec.path);
  for (const auto& c : p.candidates) {
    p.candidate_ptrs.push_back(c.c_str());
  }
  p.dirs = {spec.workdir.c_str(), spec.home.c_str(), "/"};

  UniqueFd null_fd(::open("/dev/null", O_RDWR | O_CLOEXEC));
  if (!null_fd.valid()) {
    return FailErrno("open /dev/null", errno);
  }
  int status[2];
  if (::pipe2(status, O_CLOEXEC) != 0) {
    return FailErrno("pipe", errno);
  }
  UniqueFd status_read(status[0]);
  UniqueFd status_write(status[1]);

  pid_t pid = ::fork();
  if (pid < 0) {
    return FailErrno("fork", errno);
  }
  if (pid == 0) {
    RunChild(spec, p, status_write.get(), null_fd.get());
  }
  status_write.Reset();
  // EOF without a report: the exec succeeded and closed the pipe.
  ChildReport report{};
  ssize_t n;
  do {
    n = ::read(status_read.get(), &report, sizeof(report));
  } while (n < 0 && errno == EINTR);
  SpawnedAgent agent{pid, {}};
  if (n == static_cast<ssize_t>(sizeof(report))) {
    agent.error = DescribeFailure(spec, report);
  }
  return agent;
}

}  // namespace airlock::init
