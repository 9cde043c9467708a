#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "common/result.h"

namespace airlock::sandbox {

// Closes every descriptor >= `first` except `keep` (-1: none). Async-signal-safe: it runs
// between fork and exec, where nothing of the control plane's (listening sockets, client
// connections, the database) may leak into a child.
void CloseFdsFrom(int first, int keep);

struct CommandOptions {
  // Descriptors for the child's stdout/stderr; -1 = capture into CommandResult::output.
  int stdout_fd = -1;
  int stderr_fd = -1;
  // Descriptors passed on as 3, 4, ... (for `--preserve-fds`).
  std::vector<int> extra_fds;
  std::chrono::milliseconds timeout{30000};
  size_t max_output = 1 << 20;
};

struct CommandResult {
  int exit_code = -1;  // 128 + signal when killed
  std::string output;  // captured stdout+stderr (those not redirected), capped at max_output
};

// Runs argv[0] (looked up in PATH) with the control plane's environment minus nothing
// secret: the child gets exactly `env`. Kills it (SIGKILL) when it outlives `timeout` and
// returns kDeadlineExceeded. Thread-safe; blocks the calling (worker) thread.
Result<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                 const std::vector<std::string>& env,
                                 const CommandOptions& opts = {});

// What confines a daemon before it execs (SpawnDaemon), as Firecracker's jailer does; needs
// root.
struct DaemonJail {
  // The cgroup.procs files of the cgroups it joins (one per hierarchy): what it allocates is
  // charged there from its first page.
  std::vector<std::string> cgroups;
  // Non-empty: a mount namespace of its own, whose root is a fresh read-only tmpfs mounted on
  // `root` (an existing directory; the host's is untouched) holding only the host paths below,
  // each at the same path, so that the daemon's command line needs no change. A top-level
  // symbolic link of the host (/lib -> usr/lib on a merged-/usr system) is copied as a link.
  std::string root;
  std::vector<std::string> read_only;  // files, directories or device nodes; nosuid
  std::vector<std::string> writable;   // files or directories; nosuid, nodev
  // Runs as SCHED_IDLE (it gets only CPU nothing else wants), as do the threads it makes: a
  // process started ahead of need (a spare QEMU). Only root can give it the normal policy
  // back. Set in the daemon itself, before it execs, not in the caller's thread.
  bool idle_cpu = false;
};

// Starts argv[0] (an absolute path) as a daemon: in a session of its own, re-parented away
// from the control plane (a double fork), so that it outlives a control-plane restart and
// leaves no zombie. stdin is /dev/null; stdout and stderr go to `log_path` (appended). The
// child gets exactly `env` and no descriptor of ours. Returns the daemon's pid. A failed exec
// is written to the log (the caller watches the daemon, e.g. for its sockets, and reads the
// log when it dies early). `pass_fd` >= 0 is the one exception: the daemon gets it as fd 3
// (QEMU's "-incoming fd:3"). `jail`, when given, confines it before it execs; a step of that
// which fails is written to the log, and the daemon exits 126 without running.
Result<pid_t> SpawnDaemon(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                          const std::string& log_path, int pass_fd = -1,
                          const DaemonJail* jail = nullptr);

// Looks `name` up in PATH (or returns it if it holds a '/'); empty when not found.
std::string FindExecutable(const std::string& name);

}  // namespace airlock::sandbox
