#include "sandbox/backend_process.h"
#include "sandbox/subprocess.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <vector>

namespace airlock::sandbox {
namespace {

// "pid:starttime:logpath" — the start time (from /proc/<pid>/stat) tells a recycled pid
// from ours after a restart.
struct Handle {
  pid_t pid = 0;
  uint64_t start_time = 0;
  std::string log_path;
};

std::string Encode(const Handle& h) {
  return fmt::format("{}:{}:{}", h.pid, h.start_time, h.log_path);
}

Result<Handle> Decode(const std::string& s) {
  Handle h;
  size_t a = s.find(':');
  size_t b = a == std::string::npos ? a : s.find(':', a + 1);
  if (b == std::string::npos) return MakeError(ErrorCode::kInvalidArgument, "bad process handle");
  try {
    h.pid = static_cast<pid_t>(std::stol(s.substr(0, a)));
    h.start_time = std::stoull(s.substr(a + 1, b - a - 1));
  } catch (...) {
    return MakeError(ErrorCode::kInvalidArgument, "bad process handle");
  }
  h.log_path = s.substr(b + 1);
  if (h.pid <= 1) return MakeError(ErrorCode::kInvalidArgument, "bad process handle");
  return h;
}

// Field 22 of /proc/<pid>/stat, and the state letter; nullopt when the pid is gone.
std::optional<std::pair<uint64_t, char>> ProcStat(pid_t pid) {
  std::ifstream f(fmt::format("/proc/{}/stat", pid));
  std::string line;
  if (!std::getline(f, line)) return std::nullopt;
  size_t close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream rest(line.substr(close + 2));
  std::string field;
  char state = '?';
  uint64_t start = 0;
  for (int i = 3; rest >> field; ++i) {
    if (i == 3) state = field[0];
    if (i == 22) {
      start = std::stoull(field);
      break;
    }
  }
  return std::make_pair(start, state);
}

class ProcessBackend : public Backend {
 public:
  std::string_view name() const override { return "process"; }
  // Un-isolated, and reached over the sandbox listener's TCP port: the child is a process of
  // the host, with no channel of its own.
  Capabilities capabilities() const override {
    Capabilities c;
    c.isolated = false;
    c.suspend = Capabilities::Suspend::kFreeze;  // SIGSTOP
    c.node_local = true;
    c.channel = Channel::Kind::kUrl;
    c.identity = Capabilities::IdentityDelivery::kInSpec;
    return c;
  }

  Result<Started> Create(const SandboxSpec& spec) override {
    if (spec.command.argv.empty()) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "the process backend needs a \"command\" (it has no image entrypoint)");
    }
    if (!spec.identity) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "the process backend takes the session's identity in its spec");
    }
    std::vector<std::string> argv = spec.command.argv;
    std::string log_path = spec.work_dir + "/sandbox.log";
    std::vector<std::string> env = {
        "SESSION_ID=" + spec.identity->session_id,
        "SESSION_TOKEN=" + spec.identity->token.Reveal(),
        "CONTROL_PLANE_URL=" + spec.identity->control_plane_url,
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "HOME=" + spec.work_dir,
        "LANG=C.UTF-8",
    };
    // Everything the child needs is prepared before fork: only async-signal-safe calls run
    // between fork and exec, and a failure there is reported through the pipe as {step, errno}.
    std::vector<char*> cargv, cenv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    for (auto& e : env) cenv.push_back(e.data());
    cenv.push_back(nullptr);
    int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (log_fd < 0)
      return Errorf(ErrorCode::kInternal, "open {}: {}", log_path, std::strerror(errno));
    int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    int pipefd[2];
    if (::pipe2(pipefd, O_CLOEXEC) != 0) {
      ::close(log_fd);
      ::close(null_fd);
      return Errorf(ErrorCode::kInternal, "pipe: {}", std::strerror(errno));
    }
    const char* cwd = spec.work_dir.c_str();
    pid_t pid = ::fork();
    if (pid == 0) {
      int report[2] = {0, 0};
      auto fail = [&](int step) {
        report[0] = step;
        report[1] = errno;
        [[maybe_unused]] auto n = ::write(pipefd[1], report, sizeof(report));
        ::_exit(127);
      };
      if (::setsid() < 0) fail(1);
      if (::dup2(null_fd, 0) < 0 || ::dup2(log_fd, 1) < 0 || ::dup2(log_fd, 2) < 0) fail(2);
      if (::chdir(cwd) != 0) fail(3);
      // Nothing of the control plane's may reach the child: its listening sockets (an agent
      // could accept() operator connections and read their keys), client connections, the
      // database. Asio does not open sockets close-on-exec, so close every fd above 2 here.
      CloseFdsFrom(3, pipefd[1]);
      sigset_t all;
      sigemptyset(&all);
      sigprocmask(SIG_SETMASK, &all, nullptr);
      ::execvpe(cargv[0], cargv.data(), cenv.data());
      fail(4);
    }
    ::close(pipefd[1]);
    ::close(log_fd);
    ::close(null_fd);
    if (pid < 0) {
      ::close(pipefd[0]);
      return Errorf(ErrorCode::kUnavailable, "fork: {}", std::strerror(errno));
    }
    int report[2] = {0, 0};
    ssize_t n = ::read(pipefd[0], report, sizeof(report));
    ::close(pipefd[0]);
    if (n == sizeof(report)) {
      ::waitpid(pid, nullptr, 0);
      static constexpr const char* kSteps[] = {"exec", "setsid", "redirect stdio", "chdir", "exec"};
      int step = report[0] >= 1 && report[0] <= 4 ? report[0] : 0;
      return Errorf(ErrorCode::kInvalidArgument, "starting {}: {} failed: {}", argv[0],
                    kSteps[step], std::strerror(report[1]));
    }
    auto st = ProcStat(pid);
    Handle h{pid, st ? st->first : 0, log_path};
    {
      std::lock_guard lock(mu_);
      children_.insert(pid);
    }
    return Started{Encode(h), SandboxState::kRunning};
  }

  Status Suspend(const std::string& handle) override { return Signal(handle, SIGSTOP); }
  Result<std::string> Resume(const std::string& handle) override {
    AIRLOCK_TRY(Signal(handle, SIGCONT));
    return handle;
  }

  Status Destroy(const std::string& handle) override {
    AIRLOCK_ASSIGN_OR_RETURN(Handle h, Decode(handle));
    if (Alive(h)) {
      ::kill(-h.pid, SIGKILL);
      ::kill(h.pid, SIGKILL);
    }
    Reap(h.pid, /*block=*/true);
    return Ok();
  }

  Result<SandboxStatus> Inspect(const std::string& handle) override {
    AIRLOCK_ASSIGN_OR_RETURN(Handle h, Decode(handle));
    SandboxStatus s;
    if (auto code = Reap(h.pid, /*block=*/false)) {
      s.state = SandboxState::kExited;
      if (WIFEXITED(*code)) s.exit_code = WEXITSTATUS(*code);
      if (WIFSIGNALED(*code)) s.signal = WTERMSIG(*code);
      return s;
    }
    auto st = ProcStat(h.pid);
    if (!st || st->first != h.start_time) {
      s.state = SandboxState::kMissing;
    } else if (st->second == 'Z') {
      s.state = SandboxState::kExited;
    } else if (st->second == 'T') {
      s.state = SandboxState::kPaused;
    } else {
      s.state = SandboxState::kRunning;
    }
    return s;
  }

  Result<SandboxStatus> Reattach(const std::string& handle) override { return Inspect(handle); }

  Result<std::string> Logs(const std::string& handle, int64_t offset, size_t max_bytes) override {
    AIRLOCK_ASSIGN_OR_RETURN(Handle h, Decode(handle));
    std::ifstream f(h.log_path, std::ios::binary);
    if (!f) return std::string();
    f.seekg(offset);
    std::string out(max_bytes, '\0');
    f.read(out.data(), static_cast<std::streamsize>(max_bytes));
    out.resize(static_cast<size_t>(f.gcount()));
    return out;
  }

 private:
  bool Alive(const Handle& h) {
    auto st = ProcStat(h.pid);
    return st && st->first == h.start_time && st->second != 'Z';
  }

  Status Signal(const std::string& handle, int sig) {
    AIRLOCK_ASSIGN_OR_RETURN(Handle h, Decode(handle));
    if (!Alive(h)) return MakeError(ErrorCode::kGone, "the sandbox process has exited");
    if (::kill(-h.pid, sig) != 0 && ::kill(h.pid, sig) != 0) {
      return Errorf(ErrorCode::kInternal, "kill: {}", std::strerror(errno));
    }
    return Ok();
  }

  // Collects the exit status of a child we started (not of a re-attached orphan).
  std::optional<int> Reap(pid_t pid, bool block) {
    std::lock_guard lock(mu_);
    if (auto it = exited_.find(pid); it != exited_.end()) return it->second;
    if (!children_.count(pid)) return std::nullopt;
    int status = 0;
    pid_t r = ::waitpid(pid, &status, block ? 0 : WNOHANG);
    if (r != pid) return std::nullopt;
    children_.erase(pid);
    exited_[pid] = status;
    return status;
  }

  std::mutex mu_;
  std::set<pid_t> children_;
  std::map<pid_t, int> exited_;
};

}  // namespace

std::unique_ptr<Backend> MakeProcessBackend() { return std::make_unique<ProcessBackend>(); }

}  // namespace airlock::sandbox
