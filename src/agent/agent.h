#pragma once

// The reference agent: an LLM tool loop on top of SandboxClient.
//
//   history <- control plane (a fresh sandbox of a session that already ran carries on)
//   loop: inbox (when the model waits for the user) -> chat -> run the tool calls -> events
//   until the model calls `finish`.
//
// Tools: shell, read_file, write_file, upload, finish (tools.h). One event per step:
// agent.started, agent.llm (what the model said and which tools it called), agent.tool (each
// tool's outcome), agent.waiting (the model answered without a tool: waiting for the user).

#include <string>

#include "browser.h"
#include "sandbox_client.h"
#include "tools.h"

namespace airlock::agent {

struct AgentOptions {
  int max_steps = 100;    // LLM calls per sandbox run before the agent gives up (finish: failed)
  int inbox_wait_s = 30;  // one long-poll of the inbox
  std::string model;      // a model alias the session may use; empty = the session's
  bool system_prompt = true;  // send the built-in system prompt with the first call
  ToolLimits limits;
  BrowserOptions browser;  // its executable "" (the default): no browser tools
};

// Runs the loop until the session is finished; returns the process exit status: 0 when the
// agent finished the session (or found it already over), 1 when it could not go on.
int RunAgent(SandboxClient& client, const AgentOptions& options);

// The tool messages a restarted agent adds for the tool calls of the history's last
// assistant message that have no result: the sandbox that made them died mid-step. Exposed
// for tests.
std::vector<Json> InterruptedToolResults(const std::vector<Json>& history);

}  // namespace airlock::agent
