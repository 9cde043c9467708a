#include "agent.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <utility>

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
  kLaunch,
};

struct ChildReport {
  ChildStep step;
  int drop_step;  // a DropStep when step == kDrop
  int err;
};

// What precedes a launch on the socket: then `bytes` bytes of argc + envc + candc strings,
// each ending in NUL (the command line, the environment, where the command may be).
struct LaunchHeader {
  uint32_t bytes;
  uint32_t argc;
  uint32_t envc;
  uint32_t candc;
};

// Where the child receives its launch: mapped before the fork (nothing is touched until a
// launch comes, so a template's snapshot does not hold it), unmapped in the parent after.
struct LaunchArea {
  static constexpr size_t kPointers = PreparedAgent::kMaxLaunchStrings + 2;
  static constexpr size_t kSize = PreparedAgent::kMaxLaunchBytes + kPointers * sizeof(char*);
  void* base = MAP_FAILED;
  char* blob() const { return static_cast<char*>(base); }
  char** pointers() const {
    return reinterpret_cast<char**>(static_cast<char*>(base) + PreparedAgent::kMaxLaunchBytes);
  }
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

// Where close_range is missing (Linux before 5.9): every descriptor listed in /proc/self/fd
// from 3 up but `a` and `b`, read with getdents64 into the stack (nothing allocates here).
void CloseListedBut(unsigned a, unsigned b) {
  int dir = ::open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) {
    return;  // close-on-exec still closes them at the exec
  }
  // Closing while listing may skip entries: list again until a pass closes nothing.
  for (bool closed = true; closed;) {
    closed = false;
    ::lseek(dir, 0, SEEK_SET);
    alignas(8) char buf[4096];
    for (long n; (n = ::syscall(SYS_getdents64, dir, buf, sizeof(buf))) > 0;) {
      for (long at = 0; at < n;) {
        auto* d = reinterpret_cast<struct dirent64*>(buf + at);
        at += d->d_reclen;
        unsigned fd = 0;
        const char* c = d->d_name;
        for (; *c >= '0' && *c <= '9'; ++c) fd = fd * 10 + static_cast<unsigned>(*c - '0');
        if (*c != '\0' || c == d->d_name || fd < 3 || fd == a || fd == b ||
            fd == static_cast<unsigned>(dir)) {
          continue;
        }
        closed |= ::close(static_cast<int>(fd)) == 0;
      }
    }
  }
  ::close(dir);
}

// Every descriptor from 3 up but `a` and `b` (a < b) is closed: the child holds nothing of
// init's while it waits, which may be minutes in a warm pool.
void CloseAllBut(unsigned a, unsigned b) {
  unsigned from = 3;
  for (unsigned keep : {a, b}) {
    if (keep < from) {
      continue;
    }
    if (keep > from && ::syscall(SYS_close_range, from, keep - 1, 0U) != 0 && errno == ENOSYS) {
      CloseListedBut(a, b);
      return;
    }
    from = keep + 1;
  }
  if (::syscall(SYS_close_range, from, ~0U, 0U) != 0 && errno == ENOSYS) {
    CloseListedBut(a, b);
  }
}

// Reads exactly `size` bytes; false at EOF or on an error.
bool ReadFully(int fd, char* out, size_t size) {
  while (size > 0) {
    ssize_t n = ::read(fd, out, size);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return false;
    }
    out += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

// The launch into `area`: its strings' pointers as argv (argc, then NULL), envp (envc, then
// NULL) and the candidates (candc). Returns the candidates' count, 0 when what came is not
// a launch. Exits quietly at EOF before anything came: init let the child go.
uint32_t ReceiveLaunch(int fd, const LaunchArea& area) {
  LaunchHeader h{};
  ssize_t first;
  do {
    first = ::read(fd, &h, sizeof(h));
  } while (first < 0 && errno == EINTR);
  if (first == 0) {
    ::_exit(127);
  }
  if (first < 0 || (static_cast<size_t>(first) < sizeof(h) &&
                    !ReadFully(fd, reinterpret_cast<char*>(&h) + first, sizeof(h) - first))) {
    return 0;
  }
  const uint64_t strings = uint64_t{h.argc} + h.envc + h.candc;
  if (h.bytes > PreparedAgent::kMaxLaunchBytes || strings > PreparedAgent::kMaxLaunchStrings ||
      h.argc == 0 || h.candc == 0 || !ReadFully(fd, area.blob(), h.bytes)) {
    return 0;
  }
  char** ptr = area.pointers();
  char* at = area.blob();
  char* const end = at + h.bytes;
  for (uint32_t part = 0; part < 3; ++part) {
    const uint32_t count = part == 0 ? h.argc : part == 1 ? h.envc : h.candc;
    for (uint32_t i = 0; i < count; ++i) {
      char* nul = static_cast<char*>(::memchr(at, '\0', static_cast<size_t>(end - at)));
      if (nul == nullptr) {
        return 0;
      }
      *ptr++ = at;
      at = nul + 1;
    }
    if (part < 2) {
      *ptr++ = nullptr;
    }
  }
  return at == end ? h.candc : 0;
}

[[noreturn]] void RunChild(const AgentBase& base, const char* const* dirs, int status_fd,
                           int launch_fd, int null_fd, const LaunchArea& area) {
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
  if (::dup2(null_fd, STDIN_FILENO) < 0 || ::dup2(base.output_fd, STDOUT_FILENO) < 0 ||
      ::dup2(base.output_fd, STDERR_FILENO) < 0) {
    ChildFail(status_fd, ChildStep::kStdio, 0, errno);
  }
  // The status pipe stays open until the exec (close-on-exec), the launch socket as well.
  CloseAllBut(static_cast<unsigned>(std::min(status_fd, launch_fd)),
              static_cast<unsigned>(std::max(status_fd, launch_fd)));
  ::setrlimit(RLIMIT_NOFILE, &base.nofile);
  RaiseOomScore();
  DropStep drop = DropAgentPrivileges(base.uid, base.gid, base.switch_ids);
  if (drop != DropStep::kNone) {
    ChildFail(status_fd, ChildStep::kDrop, static_cast<int>(drop), errno);
  }
  // As the agent's user: a directory it cannot enter falls back to the next one.
  for (const char* const* dir = dirs; *dir != nullptr; ++dir) {
    if (::chdir(*dir) == 0) {
      break;
    }
  }
  // With no_new_privs already set: from here on only what the filter allows, and read and
  // execve are allowed.
  if (!base.seccomp_filter.empty()) {
    sock_fprog prog{};
    prog.len = static_cast<unsigned short>(base.seccomp_filter.size() / sizeof(sock_filter));
    prog.filter = reinterpret_cast<sock_filter*>(const_cast<char*>(base.seccomp_filter.data()));
    if (::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
      ChildFail(status_fd, ChildStep::kSeccomp, 0, errno);
    }
  }
  const uint32_t candc = ReceiveLaunch(launch_fd, area);
  if (candc == 0) {
    ChildFail(status_fd, ChildStep::kLaunch, 0, EPROTO);
  }
  // Init waits for this before it waits for the exec: without it, the child died first.
  const char ack = 'L';
  if (::write(launch_fd, &ack, 1) != 1) {
    ChildFail(status_fd, ChildStep::kLaunch, 0, errno);
  }
  char** argv = area.pointers();
  char** envp = argv;
  while (*envp != nullptr) ++envp;
  ++envp;
  char** candidates = envp;
  while (*candidates != nullptr) ++candidates;
  ++candidates;
  // Like execvp: remember EACCES over "not found", so the error names the real problem.
  int err = ENOENT;
  for (uint32_t i = 0; i < candc; ++i) {
    ::execve(candidates[i], argv, envp);
    if (errno == EACCES || err == ENOENT || err == ENOTDIR) {
      err = errno == ENOTDIR ? ENOENT : errno;
    }
  }
  ChildFail(status_fd, ChildStep::kExec, 0, err);
}

std::string DescribeFailure(const std::string& command, const ChildReport& report) {
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
      return ErrnoMessage("exec " + command, report.err);
    case ChildStep::kLaunch:
      return "the agent's process got no usable command line";
  }
  return "the agent failed to start";
}

// Appends `s` and its NUL to `blob`.
void AppendString(std::string& blob, const std::string& s) {
  blob.append(s);
  blob.push_back('\0');
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

bool AgentBase::SameAs(const AgentBase& other) const {
  return workdir == other.workdir && home == other.home && uid == other.uid && gid == other.gid &&
         switch_ids == other.switch_ids && nofile.rlim_cur == other.nofile.rlim_cur &&
         nofile.rlim_max == other.nofile.rlim_max && seccomp_filter == other.seccomp_filter;
}

Result<PreparedAgent> PreparedAgent::Prepare(const AgentBase& base) {
  PreparedAgent agent;
  agent.base_ = base;
  // The child's own copies, made before the fork.
  const AgentBase& b = agent.base_;
  const char* dirs[] = {b.workdir.c_str(), b.home.c_str(), "/", nullptr};
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
  int launch[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, launch) != 0) {
    return FailErrno("socketpair", errno);
  }
  UniqueFd launch_send(launch[0]);
  UniqueFd launch_receive(launch[1]);
  LaunchArea area;
  area.base = ::mmap(nullptr, LaunchArea::kSize, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (area.base == MAP_FAILED) {
    return FailErrno("mmap", errno);
  }
  pid_t pid = ::fork();
  if (pid == 0) {
    RunChild(b, dirs, status_write.get(), launch_receive.get(), null_fd.get(), area);
  }
  const int fork_errno = errno;
  ::munmap(area.base, LaunchArea::kSize);
  if (pid < 0) {
    return FailErrno("fork", fork_errno);
  }
  agent.pid_ = pid;
  agent.launch_ = std::move(launch_send);
  agent.status_ = std::move(status_read);
  return agent;
}

PreparedAgent::PreparedAgent(PreparedAgent&& other) noexcept
    : base_(std::move(other.base_)),
      pid_(std::exchange(other.pid_, -1)),
      launch_(std::move(other.launch_)),
      status_(std::move(other.status_)) {}

PreparedAgent& PreparedAgent::operator=(PreparedAgent&& other) noexcept {
  if (this != &other) {
    Discard();
    base_ = std::move(other.base_);
    pid_ = std::exchange(other.pid_, -1);
    launch_ = std::move(other.launch_);
    status_ = std::move(other.status_);
  }
  return *this;
}

PreparedAgent::~PreparedAgent() { Discard(); }

void PreparedAgent::Discard() {
  if (pid_ <= 0) {
    return;
  }
  ::kill(pid_, SIGKILL);
  while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
  launch_.Reset();
  status_.Reset();
}

Result<SpawnedAgent> PreparedAgent::Exec(const AgentLaunch& launch) {
  if (pid_ <= 0) {
    return Fail("the agent's process is gone");
  }
  if (launch.command.empty()) {
    Discard();
    return Fail("no command");
  }
  const std::vector<std::string> candidates = ExecCandidates(launch.command[0], launch.path);
  std::string blob;
  for (const auto* part : {&launch.command, &launch.env, &candidates}) {
    for (const auto& s : *part) {
      AppendString(blob, s);
    }
  }
  const size_t strings = launch.command.size() + launch.env.size() + candidates.size();
  if (blob.size() > kMaxLaunchBytes || strings > kMaxLaunchStrings) {
    // As an exec that the kernel refused for its size: the child, told nothing, exits 127.
    launch_.Reset();
    status_.Reset();
    return SpawnedAgent{std::exchange(pid_, -1),
                        "the agent's command line and environment are " +
                            std::to_string(blob.size()) + " bytes in " + std::to_string(strings) +
                            " strings; at most " + std::to_string(kMaxLaunchBytes) + " bytes and " +
                            std::to_string(kMaxLaunchStrings) + " strings"};
  }
  LaunchHeader h{static_cast<uint32_t>(blob.size()), static_cast<uint32_t>(launch.command.size()),
                 static_cast<uint32_t>(launch.env.size()),
                 static_cast<uint32_t>(candidates.size())};
  blob.insert(0, reinterpret_cast<const char*>(&h), sizeof(h));
  // A child that is gone (a failed step, or killed while it waited) makes the send fail with
  // EPIPE; what it left in the status pipe says which.
  for (size_t sent = 0; sent < blob.size();) {
    ssize_t n = ::send(launch_.get(), blob.data() + sent, blob.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      if (errno == EPIPE || errno == ECONNRESET) {
        break;
      }
      const int err = errno;
      Discard();
      return FailErrno("sending the agent its command line", err);
    }
    sent += static_cast<size_t>(n);
  }
  char ack = 0;
  ssize_t acked;
  do {
    acked = ::read(launch_.get(), &ack, 1);
  } while (acked < 0 && errno == EINTR);
  launch_.Reset();
  // Then EOF without a report: the exec succeeded and closed the pipe.
  ChildReport report{};
  ssize_t n;
  do {
    n = ::read(status_.get(), &report, sizeof(report));
  } while (n < 0 && errno == EINTR);
  status_.Reset();
  if (n == static_cast<ssize_t>(sizeof(report))) {
    return SpawnedAgent{std::exchange(pid_, -1), DescribeFailure(launch.command[0], report)};
  }
  if (acked != 1) {
    // Neither the launch nor a report of its own: it died waiting. (Reaped; the kill finds
    // it gone.)
    Discard();
    return SpawnedAgent{-1, {}, true};
  }
  return SpawnedAgent{std::exchange(pid_, -1), {}};
}

}  // namespace airlock::init
