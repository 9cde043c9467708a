// airlock-init: the entrypoint injected into every sandbox (PID 1 of its pid namespace).
//
// It takes SESSION_ID, SESSION_TOKEN and CONTROL_PLANE_URL, either from its environment
// (scrubbed at once) or, with --identity channel, from the control plane over the sandbox's
// socket once the sandbox has started; serves CONTROL_PLANE_URL on 127.0.0.1 by relaying to
// the control plane's Unix socket, starts the agent unprivileged, relays its output to the session
// log, forwards signals, reaps every child, and reports the agent's exit to the control plane. The
// whole sequence is Run() below, one named step per line.

#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "agent.h"
#include "bridge.h"
#include "cgroup.h"
#include "channel.h"
#include "environment.h"
#include "guest.h"
#include "log_relay.h"
#include "options.h"
#include "privileges.h"
#include "reporter.h"
#include "sys.h"
#include "work.h"

namespace airlock::init {
namespace {

// Whether init runs in a user namespace other than the initial one: uid_map is then not
// the identity map of the whole range.
bool InUserNamespace() {
  int fd = ::open("/proc/self/uid_map", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[256];
  ssize_t n = ::read(fd, buf, sizeof(buf) - 1);
  ::close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  unsigned long inside = 1, outside = 1, count = 0;
  if (std::sscanf(buf, "%lu %lu %lu", &inside, &outside, &count) != 3) return false;
  return !(inside == 0 && outside == 0 && count == 4294967295UL);
}

// What the agent of `opts` is forked with.
AgentBase AgentBaseOf(const Options& opts, const rlimit& nofile, const std::string& seccomp) {
  AgentBase base;
  base.workdir = opts.workdir;
  base.home = opts.home;
  base.uid = opts.uid;
  base.gid = opts.gid;
  // Switch only to a different identity. In a rootless sandbox with one mapped id the
  // agent stays the namespace's root (without capabilities), and setgroups is denied there.
  base.switch_ids = ::geteuid() == 0 && (opts.uid != 0 || opts.gid != 0 || !InUserNamespace());
  base.nofile = nofile;
  base.seccomp_filter = seccomp;
  return base;
}

// A prepared agent and the read end of the pipe that is its stdout and stderr.
struct ReadyAgent {
  PreparedAgent agent;
  UniqueFd output;
};

Result<ReadyAgent> ForkAgent(AgentBase base) {
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) {
    return FailErrno("pipe", errno);
  }
  UniqueFd read_end(out[0]);
  // Only the agent may hold the write end, so that EOF means the agent's side is done: init
  // closes its own when this returns.
  UniqueFd write_end(out[1]);
  base.output_fd = write_end.get();
  auto agent = PreparedAgent::Prepare(base);
  if (!agent) {
    return std::unexpected(agent.error());
  }
  return ReadyAgent{std::move(*agent), std::move(read_end)};
}

// The exit status of init when it cannot do its job, as container runtimes use it.
constexpr int kInitFailed = 125;
// How long the agent's leftover processes get to die after the agent itself has exited.
constexpr int64_t kStragglerWaitMs = 1000;

constexpr int kForwardedSignals[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};

// What the event loop watches.
enum Source : uint64_t { kSignals = 1, kAgentOutput, kBridge };

class Init {
 public:
  Init(Options opts, SessionEnv env) : opts_(std::move(opts)), env_(std::move(env)) {}

  int Run() {
    using Step = Status (Init::*)();
    static constexpr Step kSetup[] = {
        &Init::BecomeReaper,          // orphans come to init
        &Init::TakeSignals,           // SIGCHLD and forwarded signals through a signalfd
        &Init::RecordOomKills,        // the cgroup's OOM-kill counter before the agent runs
        &Init::RaiseDescriptorLimit,  // room for many bridged connections
        &Init::StartBridge,           // 127.0.0.1:<port> is served before the agent exists
        &Init::PrepareAgent,          // fork, drop privileges, wait (a template's is forked)
        &Init::AwaitIdentity,         // --identity channel: whom this sandbox serves
        &Init::TakeWork,              // --work channel: the session's variables and files
        &Init::StartAgent,            // the prepared agent's exec
        &Init::DropOwnPrivileges,     // init keeps CAP_KILL only
        &Init::WatchEvents,           // one epoll for signals, agent output and the bridge
    };
    for (Step step : kSetup) {
      if (auto s = (this->*step)(); !s) {
        return Abort(s.error());
      }
    }
    while (!agent_status_) {
      if (auto s = WaitAndDispatch(-1); !s) {
        return Abort(s.error());
      }
    }
    AgentExit exit = DescribeExit();
    oom_killed_ = exit.oom_killed;
    // Leftovers go first: one that holds the session's last connection to the control plane
    // would otherwise keep the report out.
    KillLeftovers();
    Report(exit);
    relay_->Drain();
    return exit.signal != 0 ? 128 + exit.signal : exit.exit_code;
  }

  // Whether the agent that Run() waited for was killed for lack of memory.
  bool oom_killed() const { return oom_killed_; }
  // PID 1 of a micro-VM: init powers it off at the end, and installs the sandbox's seccomp
  // filter itself (there is no container runtime to do it).
  void set_vm(std::string seccomp_filter) {
    in_vm_ = true;
    seccomp_filter_ = std::move(seccomp_filter);
  }
  // The agent a template prepared before it was saved: used when it was made as this
  // launch's would be, let go otherwise.
  void set_prepared(ReadyAgent ready) { ready_ = std::move(ready); }

 private:
  int Abort(const std::string& reason) {
    Log(reason);
    ready_.reset();
    if (agent_pid_ > 0 && !agent_status_) {
      ::kill(-agent_pid_, SIGKILL);
    }
    return kInitFailed;
  }

  // Orphans of the agent are re-parented to the nearest subreaper. As PID 1 that is init
  // anyway; run any other way (tests, debugging) init claims them explicitly.
  Status BecomeReaper() {
    if (::getpid() != 1 && ::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) {
      return FailErrno("PR_SET_CHILD_SUBREAPER", errno);
    }
    return {};
  }

  // SIGCHLD and the forwarded signals arrive through a signalfd; SIGPIPE is ignored (a
  // closed peer shows up as EPIPE instead). The agent gets default handling back.
  Status TakeSignals() {
    sigset_t set;
    ::sigemptyset(&set);
    ::sigaddset(&set, SIGCHLD);
    for (int sig : kForwardedSignals) {
      ::sigaddset(&set, sig);
    }
    if (::sigprocmask(SIG_BLOCK, &set, nullptr) != 0) {
      return FailErrno("sigprocmask", errno);
    }
    ResetSignalDispositions();  // what the agent inherits, reset once here, not per fork
    signals_.Reset(::signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
    if (!signals_.valid()) {
      return FailErrno("signalfd", errno);
    }
    ::signal(SIGPIPE, SIG_IGN);
    return {};
  }

  // Read at start and at the agent's exit: a SIGKILL while the counter grew was the OOM killer.
  Status RecordOomKills() {
    oom_kills_at_start_ = ReadOomKills(opts_.cgroup_root);
    return {};
  }

  // Each bridged connection takes two descriptors: use the whole hard limit. The agent gets
  // the limit init started with.
  Status RaiseDescriptorLimit() {
    if (::getrlimit(RLIMIT_NOFILE, &nofile_) != 0) {
      return FailErrno("getrlimit", errno);
    }
    rlimit raised = nofile_;
    raised.rlim_cur = raised.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &raised);
    return {};
  }

  // Listening before the agent exists means the agent never finds the port closed. The
  // control plane's socket is connected per request, so a missing one is only a warning.
  Status StartBridge() {
    auto bridge = Bridge::Listen(opts_.port, opts_.socket_path);
    if (!bridge) {
      return Fail(bridge.error());
    }
    bridge_ = std::move(*bridge);
    struct stat st {};
    if (::stat(opts_.socket_path.c_str(), &st) != 0) {
      Log(ErrnoMessage("warning: control-plane socket " + opts_.socket_path, errno));
    }
    return {};
  }

  // With --identity channel the sandbox started without knowing its session: ask the control
  // plane over the socket, waiting as long as it takes. The agent gets the same three
  // variables as from the environment; CONTROL_PLANE_URL is the bridge init serves.
  Status AwaitIdentity() {
    if (opts_.identity != Options::IdentitySource::kChannel) {
      return {};
    }
    auto identity = FetchIdentity(opts_.socket_path);
    if (!identity) {
      return Fail(identity.error());
    }
    env_.session_id = std::move(identity->session_id);
    env_.token = std::move(identity->token);
    work_json_ = std::move(identity->work);
    env_.control_plane_url = "http://127.0.0.1:" + std::to_string(opts_.port);
    return CheckSessionEnv(env_);
  }

  // The operator's work going in: the session's variables, and its files copied into the
  // agent's working directory (written as the agent, so only where the agent could write).
  Status TakeWork() {
    if (!opts_.fetch_work) {
      return {};
    }
    // A control plane that sent the work along with the identity saved init a round trip.
    auto work =
        work_json_.empty() ? FetchWork(opts_.socket_path, env_.token) : ParseWork(work_json_);
    if (!work) {
      return Fail(work_json_.empty() ? work.error() : "the session's work: " + work.error());
    }
    session_vars_ = std::move(work->env);
    egress_ = work->egress;
    if (!work->ca.empty()) {
      // The agent's own TLS clients trust the gateway's CA for the hosts its secrets go to;
      // without the bundle they would refuse those hosts, so a failure here is said, and the
      // agent still starts.
      auto bundle = WriteCaBundle(work->ca, "/run/airlock");
      if (bundle) {
        ca_bundle_ = std::move(*bundle);
      } else {
        Log("cannot write the egress CA bundle: " + bundle.error());
      }
    }
    int copied = CopySessionFiles(opts_.socket_path, env_.token, work->files, opts_.workdir,
                                  opts_.uid, opts_.gid);
    if (copied > 0) {
      Log("copied " + std::to_string(copied) + " session file(s) into " + opts_.workdir);
    }
    return {};
  }

  // Forks the agent's process, which drops its privileges and waits for its command line:
  // while init waits for its identity, or before a template is saved.
  Status PrepareAgent() {
    AgentBase base = AgentBaseOf(opts_, nofile_, seccomp_filter_);
    if (ready_ && ready_->agent.base().SameAs(base)) {
      return {};
    }
    if (ready_) {
      Log("the template's agent process was made with other options than this launch's; "
          "forking anew");
    }
    ready_.reset();
    auto ready = ForkAgent(std::move(base));
    if (!ready) {
      return Fail("starting the agent: " + ready.error());
    }
    ready_ = std::move(*ready);
    return {};
  }

  Status StartAgent() {
    AgentLaunch launch;
    launch.command = opts_.command;
    launch.env =
        AgentEnvironment(env_, opts_.home, opts_.image_env, session_vars_, egress_, ca_bundle_);
    launch.path = AgentPath(env_);
    for (const auto& e : launch.env) {
      if (e.starts_with("PATH=")) {
        launch.path = e.substr(5);  // the command is looked up where the agent's PATH says
      }
    }
    Result<SpawnedAgent> agent;
    UniqueFd output;
    for (int attempt = 0;; ++attempt) {
      ReadyAgent ready = std::move(*ready_);
      ready_.reset();
      agent = ready.agent.Exec(launch);
      output = std::move(ready.output);
      if (!agent || !agent->lost || attempt > 0) {
        break;
      }
      // A process that waited long (a warm pool's) may have been killed meanwhile: the OOM
      // killer picks it first.
      Log("the agent's waiting process is gone; forking anew");
      // An OOM kill of the one that waited is not the agent's.
      oom_kills_at_start_ = ReadOomKills(opts_.cgroup_root);
      if (auto s = PrepareAgent(); !s) {
        return s;
      }
    }
    if (!agent) {
      return Fail("starting the agent: " + agent.error());
    }
    if (agent->lost) {
      return Fail("starting the agent: its process died twice before its exec");
    }
    agent_pid_ = agent->pid;
    start_error_ = agent->error;
    if (!start_error_.empty()) {
      Log("cannot start the agent: " + start_error_);
    }
    int flags = ::fcntl(output.get(), F_GETFL);
    ::fcntl(output.get(), F_SETFL, flags | O_NONBLOCK);
    relay_.emplace(std::move(output), STDOUT_FILENO, opts_.log_limit);
    return {};
  }

  // After the fork: init keeps only CAP_KILL, to signal the agent's uid (and in a VM
  // CAP_SYS_BOOT, to power it off at the end).
  Status DropOwnPrivileges() {
    return DropInitPrivileges(/*keep_sys_boot=*/::getpid() == 1 && in_vm_);
  }

  Status WatchEvents() {
    epoll_.Reset(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_.valid()) {
      return FailErrno("epoll_create1", errno);
    }
    for (auto [fd, source] :
         {std::pair{signals_.get(), kSignals}, std::pair{relay_->fd(), kAgentOutput},
          std::pair{bridge_->fd(), kBridge}}) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = source;
      if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
        return FailErrno("epoll_ctl", errno);
      }
    }
    return {};
  }

  // Waits up to `timeout_ms` (-1: no limit) and handles what happened.
  Status WaitAndDispatch(int timeout_ms) {
    epoll_event events[8];
    int n = ::epoll_wait(epoll_.get(), events, 8, timeout_ms);
    if (n < 0 && errno != EINTR) {
      return FailErrno("epoll_wait", errno);
    }
    for (int i = 0; i < n; ++i) {
      switch (events[i].data.u64) {
        case kSignals:
          HandleSignals();
          break;
        case kAgentOutput:
          // At EOF the relay closes the pipe, which also takes it out of the epoll set.
          relay_->Drain();
          break;
        case kBridge:
          bridge_->Process();
          break;
      }
    }
    return {};
  }

  void HandleSignals() {
    signalfd_siginfo info;
    while (::read(signals_.get(), &info, sizeof(info)) == sizeof(info)) {
      int sig = static_cast<int>(info.ssi_signo);
      if (sig == SIGCHLD) {
        ReapChildren();
      } else if (!agent_status_) {
        // As PID 1 of the sandbox, forward only what comes from outside it (the runtime, the
        // host: the kernel reports their pid as 0 in our namespace). A process inside that
        // can signal init at all (a rootless sandbox's agent shares init's uid) must not be
        // able to make init act for it.
        if (::getpid() == 1 && info.ssi_pid != 0) continue;
        // The agent leads its own process group: its children get the signal too.
        ::kill(-agent_pid_, sig);
      }
    }
  }

  // Reaps every child that has exited: the agent, and any orphan re-parented to init.
  void ReapChildren() {
    int status = 0;
    pid_t pid;
    while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
      if (pid == agent_pid_) {
        agent_status_ = status;
      }
    }
  }

  AgentExit DescribeExit() {
    AgentExit exit;
    int status = *agent_status_;
    if (WIFSIGNALED(status)) {
      exit.signal = WTERMSIG(status);
      if (exit.signal == SIGKILL) {
        auto now = ReadOomKills(opts_.cgroup_root);
        exit.oom_killed = oom_kills_at_start_ && now && *now > *oom_kills_at_start_;
      }
      Log("agent killed by " + SignalName(exit.signal) +
          (exit.oom_killed ? " (out of memory)" : ""));
    } else {
      exit.exit_code = WEXITSTATUS(status);
      exit.error = start_error_;
      Log("agent exited with code " + std::to_string(exit.exit_code));
    }
    return exit;
  }

  void Report(const AgentExit& exit) {
    // What the agent wrote before exiting belongs in the log before init's own lines.
    relay_->Drain();
    if (auto s = PostEvent(opts_.socket_path, env_.token, ExitEventJson(exit)); !s) {
      Log(s.error());
    }
  }

  // Kills what is left of the agent's process group, and any other child (an orphan that
  // left the group), and reaps them for up to kStragglerWaitMs.
  void KillLeftovers() {
    ::kill(-agent_pid_, SIGKILL);
    const int64_t deadline = MonotonicMs() + kStragglerWaitMs;
    for (;;) {
      KillChildren();
      int status = 0;
      pid_t pid;
      do {
        pid = ::waitpid(-1, &status, WNOHANG);
      } while (pid > 0);
      if (pid < 0 && errno == ECHILD) {
        return;
      }
      int64_t left = deadline - MonotonicMs();
      if (left <= 0) {
        Log("leftover processes still running after " + std::to_string(kStragglerWaitMs) + " ms");
        return;
      }
      if (!WaitAndDispatch(static_cast<int>(left))) {
        return;
      }
    }
  }

  // SIGKILL to every child listed in /proc (a child cannot be reaped, so its pid cannot be
  // reused, until init itself waits for it).
  void KillChildren() {
    std::string path = "/proc/self/task/" + std::to_string(::getpid()) + "/children";
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    char buf[4096];
    ssize_t n = fd.valid() ? ::read(fd.get(), buf, sizeof(buf)) : -1;
    const char* p = buf;
    const char* end = buf + std::max<ssize_t>(n, 0);
    while (p < end) {
      pid_t pid = 0;
      auto [next, ec] = std::from_chars(p, end, pid);
      if (ec == std::errc() && pid > 1) {
        ::kill(pid, SIGKILL);
      }
      p = next + 1;
    }
  }

  Options opts_;
  SessionEnv env_;
  std::string work_json_;  // the session's work, when the identity's answer carried it
  EnvVars session_vars_;
  bool egress_ = false;    // the session's policy reaches something: the agent gets a proxy
  std::string ca_bundle_;  // the trust store with the egress CA, when the session has a secret
  UniqueFd signals_;
  UniqueFd epoll_;
  rlimit nofile_{};
  std::optional<uint64_t> oom_kills_at_start_;
  std::unique_ptr<Bridge> bridge_;
  std::optional<LogRelay> relay_;
  std::optional<ReadyAgent> ready_;  // until its exec
  pid_t agent_pid_ = -1;
  std::string start_error_;
  std::optional<int> agent_status_;
  bool oom_killed_ = false;
  bool in_vm_ = false;
  std::string seccomp_filter_;
};

// Bad arguments and a missing session fail before init does anything.
Result<Options> Configure(int argc, char** argv, const SessionEnv& env) {
  auto opts = ParseOptions(argc, argv);
  if (!opts || opts->help) {
    return opts;
  }
  if (opts->identity == Options::IdentitySource::kChannel) {
    // Whom the sandbox serves comes later, over the socket; the environment must not hold it.
    if (!env.session_id.empty() || !env.token.empty()) {
      return Fail(
          "--identity channel: SESSION_ID and SESSION_TOKEN must not be in the environment");
    }
    if (opts->port == 0) {
      return Fail("--identity channel needs --port");
    }
  } else if (auto s = CheckSessionEnv(env); !s) {
    return Fail(s.error());
  }
  if (opts->port == 0) {
    auto port = PortFromUrl(env.control_plane_url);
    if (!port) {
      return Fail(port.error());
    }
    opts->port = *port;
  }
  // Rootless: init cannot change identity, so the agent must be meant to run as init's own.
  if (::geteuid() != 0 && (opts->uid != ::geteuid() || opts->gid != ::getegid())) {
    return Fail("running as uid " + std::to_string(::geteuid()) + " gid " +
                std::to_string(::getegid()) + " (not root): cannot run the agent as uid " +
                std::to_string(opts->uid) + " gid " + std::to_string(opts->gid));
  }
  return opts;
}

// Init's options in a VM: `args` as the backend sent them (its initramfs, or a template's
// launch), after the program's name and the agent's cgroup that BootVm made.
Result<Options> ConfigureVm(std::vector<std::string> args, const VmBoot& boot,
                            const SessionEnv& env) {
  args.insert(args.begin(), {"airlock-init", "--cgroup-root", boot.cgroup});
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  return Configure(static_cast<int>(args.size()), argv.data(), env);
}

// A template's agent process, forked before the template is saved with the options its
// sessions' init will have: a session restored from it pays only the exec (under TCG the
// fork and the steps before the exec are tens of milliseconds). An error when the backend
// sent no options or they do not parse: each session then forks its own and logs why (as
// Init does anyway when a launch's options differ from these).
Result<ReadyAgent> TemplateAgent(const VmBoot& boot) {
  std::vector<std::string> args = TemplateInitArgs(boot);
  if (args.empty()) return Fail("the template's settings have no usable init_args");
  args.insert(args.end(), {"--", "/bin/true"});  // the command comes with each launch
  auto opts = ConfigureVm(std::move(args), boot, SessionEnv{});
  rlimit nofile{};
  if (!opts || opts->help) {
    return Fail("the template's init_args: " + (opts ? "--help" : opts.error()));
  }
  if (::getrlimit(RLIMIT_NOFILE, &nofile) != 0) return FailErrno("getrlimit", errno);
  return ForkAgent(AgentBaseOf(*opts, nofile, boot.seccomp_filter));
}

// PID 1 of a micro-VM: set the VM up as a container would be (guest.h), serve the channel,
// run as in a container, report how the agent ended and power off. PID 1 must never exit:
// the kernel would panic, and the backend would learn nothing.
[[noreturn]] void RunVm(char** envp) {
  auto boot = BootVm();
  if (!boot) {
    Log("cannot set the VM up: " + boot.error());
    PowerOff(-1, kInitFailed, false);
  }
  // A template serves the channel where every launch's init expects it (the backend passes
  // no --socket), before it is saved; its session's command line comes after the restore.
  const std::string template_socket = Options{}.socket_path;
  Result<ReadyAgent> ready = Fail("booted for its session");
  if (boot->from_template) {
    if (auto s = ServeChannel(std::move(boot->channel), template_socket); !s) {
      Log(s.error());
      PowerOff(boot->status.get(), kInitFailed, false);
    }
    // The clock's thread is started here too, and watches the port once the launch is read.
    UniqueFd clock_go(::eventfd(0, EFD_CLOEXEC));
    if (!clock_go.valid()) {
      Log(ErrnoMessage("eventfd", errno));
      PowerOff(boot->status.get(), kInitFailed, false);
    }
    if (auto s = KeepClock(UniqueFd(::dup(boot->launch.get())), UniqueFd(::dup(clock_go.get())));
        !s) {
      Log(s.error());
      PowerOff(boot->status.get(), kInitFailed, false);
    }
    SettleTemplate(*boot);
    // After the settling, which takes nearly all free memory for a moment: the waiting
    // process is the OOM killer's first choice.
    ready = TemplateAgent(*boot);
    auto launched = AwaitSession(*boot);
    if (!launched) {
      Log("cannot take the session's launch: " + launched.error());
      PowerOff(boot->status.get(), kInitFailed, false);
    }
    boot->args = std::move(*launched);
    const uint64_t one = 1;
    if (::write(clock_go.get(), &one, sizeof(one)) != sizeof(one)) {
      Log(ErrnoMessage("cannot start the clock's thread", errno));
    }
  }
  SessionEnv env = TakeEnvironment(envp);
  auto opts = ConfigureVm(std::move(boot->args), *boot, env);
  if (!opts || opts->help) {
    Log(opts ? "--help is not a way to run a VM" : opts.error());
    PowerOff(boot->status.get(), kInitFailed, false);
  }
  if (boot->from_template) {
    if (opts->socket_path != template_socket) {
      Log("the launch's --socket is not where the template serves the channel");
      PowerOff(boot->status.get(), kInitFailed, false);
    }
  } else if (auto s = ServeChannel(std::move(boot->channel), opts->socket_path); !s) {
    Log(s.error());
    PowerOff(boot->status.get(), kInitFailed, false);
  }
  if (!boot->from_template) {
    if (auto s = KeepClock(std::move(boot->launch)); !s) {
      Log(s.error());
      PowerOff(boot->status.get(), kInitFailed, false);
    }
  }
  Init init(std::move(*opts), std::move(env));
  init.set_vm(std::move(boot->seccomp_filter));
  if (ready) {
    init.set_prepared(std::move(*ready));
  } else if (boot->from_template) {
    // In the session's log: the start is slower for it.
    Log("no agent process was waiting in the template (" + ready.error() + "); forking one");
  }
  int code = init.Run();
  PowerOff(boot->status.get(), code, init.oom_killed());
}

}  // namespace
}  // namespace airlock::init

int main(int argc, char** argv, char** envp) {
  using namespace airlock::init;
  // Init holds the token and the host's log file. Non-dumpable, no process without
  // CAP_SYS_PTRACE can read its memory, environ or descriptors through /proc or ptrace it,
  // whatever its uid: in a rootless sandbox the agent has init's uid, and this no longer
  // rests on init keeping a capability the agent lacks. No core dump of init either. The
  // agent's exec makes the agent dumpable again (for its own uid only).
  ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  if (IsVmBoot()) {
    RunVm(envp);
  }
  // Then: the secrets leave the environment (and /proc/<pid>/environ).
  SessionEnv env = TakeEnvironment(envp);
  auto opts = Configure(argc, argv, env);
  if (!opts) {
    Log(opts.error());
    return kInitFailed;
  }
  if (opts->help) {
    std::fputs(Usage().c_str(), stdout);
    return 0;
  }
  return Init(std::move(*opts), std::move(env)).Run();
}
