#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <string>
#include <vector>

#include "sys.h"

namespace airlock::init {

struct AgentSpec {
  std::vector<std::string> command;  // command[0] is looked up in `path` unless it has a '/'
  std::vector<std::string> env;      // the agent's whole environment
  std::string path;                  // the agent's PATH
  std::string workdir;               // tried first, then home, then "/"
  std::string home;
  uid_t uid = 0;
  gid_t gid = 0;
  bool switch_ids = true;  // false only when init already runs as uid/gid (rootless)
  int output_fd = -1;      // becomes the agent's stdout and stderr
  rlimit nofile{};         // the descriptor limit init started with, restored for the agent
  // A seccomp filter (a BPF program: struct sock_filter[]) installed just before the exec.
  // Empty in a container, whose runtime installs the same filter itself; a micro-VM's init
  // gets it from the host (guest.h), compiled from the same profile.
  std::string seccomp_filter;
};

struct SpawnedAgent {
  pid_t pid = -1;
  // Empty when the command is running. Otherwise why it could not start (the child has then
  // exited with status 127 and still has to be reaped).
  std::string error;
};

// Sets every signal's disposition to the default, whatever init inherited (an ignored SIGINT,
// say), so that the agent, which inherits them, starts with defaults. Call once at start,
// before init ignores SIGPIPE: the child then resets only that one before its exec.
void ResetSignalDispositions();

// Forks the agent: a new session whose process group is the agent's pid, stdin /dev/null,
// stdout and stderr `output_fd`, no other descriptor, default signal handling,
// oom_score_adj 1000 (the agent, not init, is what the OOM killer should pick), dropped
// privileges (see DropAgentPrivileges), then execve. Returns once the exec has happened or
// failed. Fails only when there is no child at all (fork or pipe failed).
Result<SpawnedAgent> SpawnAgent(const AgentSpec& spec);

}  // namespace airlock::init
