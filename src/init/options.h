#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "sys.h"

namespace airlock::init {

// The command line of airlock-init, as the `oci` backend writes it:
//   /.airlock/init [--socket PATH] [--port N] [--uid U] [--gid G] [--home DIR]
//                  [--log-limit BYTES] [--workdir DIR] [--cgroup-root DIR]
//                  [--identity env|channel] [--work none|channel] [--env NAME=VALUE]...
//                  -- command args...
struct Options {
  // Where the session's identity comes from: init's environment (SESSION_ID, SESSION_TOKEN,
  // CONTROL_PLANE_URL), or the control plane over the socket once the sandbox has started
  // (GET /sandbox/v1/identity), so that it is never in the sandbox's configuration.
  enum class IdentitySource { kEnvironment, kChannel };
  IdentitySource identity = IdentitySource::kEnvironment;
  std::string socket_path = "/.airlock/run/control.sock";
  int port = 0;  // 0: the port of CONTROL_PLANE_URL (required with --identity channel)
  uid_t uid = 1000;
  gid_t gid = 1000;
  std::string home = "/home/sandbox";
  uint64_t log_limit = 8 * 1024 * 1024;
  std::string workdir;  // empty: home
  // Where the sandbox's cgroup is mounted; its OOM-kill counter tells an OOM kill from
  // another SIGKILL.
  std::string cgroup_root = "/sys/fs/cgroup";
  // Whether init asks the control plane for the session's variables and files before it
  // starts the agent (GET /sandbox/v1/work).
  bool fetch_work = false;
  // The image's environment ("NAME=value", its config's Env), given to the agent under the
  // session's own variables.
  std::vector<std::string> image_env;
  std::vector<std::string> command;
  bool help = false;
};

// Parses argv. Options take their value as the next argument or after '='; "--" or the first
// argument that is not an option starts the command.
Result<Options> ParseOptions(int argc, char** argv);

// The text --help prints.
std::string Usage();

// The port of "http://127.0.0.1:<port>" (a trailing '/' is allowed).
Result<int> PortFromUrl(std::string_view url);

}  // namespace airlock::init
