#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <string>
#include <vector>

#include "sys.h"

namespace airlock::init {

// What the agent's process is made with before its session is known: who it runs as, where,
// and under which limits. A prepared agent (PreparedAgent) has done all of this and waits.
struct AgentBase {
  std::string workdir;  // tried first, then home, then "/"
  std::string home;
  uid_t uid = 0;
  gid_t gid = 0;
  bool switch_ids = true;  // false only when init already runs as uid/gid (rootless)
  int output_fd = -1;      // becomes the agent's stdout and stderr
  rlimit nofile{};         // the descriptor limit init started with, restored for the agent
  // A seccomp filter (a BPF program: struct sock_filter[]) installed before the exec. Empty
  // in a container, whose runtime installs the same filter itself; a micro-VM's init gets
  // it from the host (guest.h), compiled from the same profile.
  std::string seccomp_filter;

  // Whether a process prepared with `other` is one this base would have made (output_fd,
  // a descriptor of the caller's, is not compared).
  bool SameAs(const AgentBase& other) const;
};

// What the agent's exec takes once the session is known.
struct AgentLaunch {
  std::vector<std::string> command;  // command[0] is looked up in `path` unless it has a '/'
  std::vector<std::string> env;      // the agent's whole environment
  std::string path;                  // the agent's PATH
};

struct SpawnedAgent {
  pid_t pid = -1;
  // Empty when the command is running. Otherwise why it could not start (the child has then
  // exited with status 127 and still has to be reaped).
  std::string error;
  // A prepared process that died before it had its launch (killed while it waited): nothing
  // ran, it is reaped already (pid -1), and a new one may be prepared.
  bool lost = false;
};

// Sets every signal's disposition to the default, whatever init inherited (an ignored SIGINT,
// say), so that the agent, which inherits them, starts with defaults. Call once at start,
// before init ignores SIGPIPE: the child then resets only that one before its exec.
void ResetSignalDispositions();

// The agent's process, forked before its session is known: a new session whose process
// group is its pid, stdin /dev/null, stdout and stderr `output_fd`, no other descriptor of
// init's, default signal handling, oom_score_adj 1000 (the agent, not init, is what the OOM
// killer should pick), dropped privileges (see DropAgentPrivileges), in its working
// directory, with its seccomp filter installed. It waits for its command line and
// environment (Exec). A micro-VM's template prepares one before it is saved, so that a
// session restored from it pays only the exec; elsewhere it is prepared while init waits
// for its identity.
//
// Between fork and exec the child runs only async-signal-safe calls and allocates nothing
// (init has threads in a VM): what it reads goes into memory mapped before the fork.
class PreparedAgent {
 public:
  // Fails only when there is no child at all (fork, pipe or mapping failed). A step that
  // fails in the child is reported by Exec.
  static Result<PreparedAgent> Prepare(const AgentBase& base);

  PreparedAgent(PreparedAgent&& other) noexcept;
  PreparedAgent& operator=(PreparedAgent&& other) noexcept;
  PreparedAgent(const PreparedAgent&) = delete;
  PreparedAgent& operator=(const PreparedAgent&) = delete;
  // One that never got its Exec is killed and reaped.
  ~PreparedAgent();

  pid_t pid() const { return pid_; }
  const AgentBase& base() const { return base_; }

  // Sends the command line and environment, and returns once the exec has happened or
  // failed (then the child has exited with status 127 and still has to be reaped, as it has
  // when `launch` is larger than it can take: kMaxLaunchBytes, kMaxLaunchStrings), or once it
  // is known that the child died before it had them (`lost`). The child acknowledges what it
  // received, so a child killed while it waited is never taken for a started agent. Fails
  // (the child killed and reaped) only when the launch has no command or cannot be sent.
  Result<SpawnedAgent> Exec(const AgentLaunch& launch);

  // What one launch may hold: about what Linux's execve takes with the default 8 MiB stack.
  static constexpr size_t kMaxLaunchBytes = 2u << 20;
  static constexpr size_t kMaxLaunchStrings = 1u << 16;

 private:
  PreparedAgent() = default;
  void Discard();

  AgentBase base_;
  pid_t pid_ = -1;
  UniqueFd launch_;  // init's end of the socket the child reads its launch from
  UniqueFd status_;  // the child's reports; EOF once it has exec'd
};

}  // namespace airlock::init
