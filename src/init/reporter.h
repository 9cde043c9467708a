#pragma once

#include <string>
#include <string_view>

#include "sys.h"

namespace airlock::init {

// How the agent ended.
struct AgentExit {
  int exit_code = 0;        // meaningful when signal == 0
  int signal = 0;           // the signal that killed it, or 0
  bool oom_killed = false;  // the cgroup's OOM killer sent that signal
  std::string error;        // why it never started (exit_code is then 127)
};

// The event body: {"type":"agent.exited","data":{...}} with "exit_code" (and "error"), or
// "signal", "signal_name" and "oom_killed".
std::string ExitEventJson(const AgentExit& exit);

// `text` as the inside of a JSON string literal.
std::string JsonEscape(std::string_view text);

// "SIGKILL", or "SIG<n>" for a number without a name.
std::string SignalName(int sig);

// POSTs `json` to /sandbox/v1/events over the control-plane Unix socket, with the session
// token. Retries with backoff while the control plane cannot be reached or answers 5xx (it
// may be restarting), for about `budget_ms` in all; any other non-2xx answer is final.
// Security: the token goes into the Authorization header and nowhere else (not in errors).
Status PostEvent(const std::string& socket_path, const std::string& token, const std::string& json,
                 int64_t budget_ms = 5000);

}  // namespace airlock::init
