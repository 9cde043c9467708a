#pragma once

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

// Looks `name` up in PATH (or returns it if it holds a '/'); empty when not found.
std::string FindExecutable(const std::string& name);

}  // namespace airlock::sandbox
