#pragma once

// Work going in: what the operator gave the session besides its task, handed to the agent
// when init starts it. GET /sandbox/v1/work answers the session's variables and the list of
// its files; each file (GET /sandbox/v1/work/files/{name}) is copied into the agent's working
// directory.

#include <sys/types.h>

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sys.h"

namespace airlock::init {

using EnvVars = std::vector<std::pair<std::string, std::string>>;

// The members of the object under `key` of a JSON document, whose values must be strings:
// {"env": {"NAME": "value", ...}}. Strict: anything else is an error.
Result<EnvVars> ParseStringMap(std::string_view json, std::string_view key);

// The "name" of every element of the array under "files": {"files": [{"name": ..}, ..]}.
Result<std::vector<std::string>> ParseFileNames(std::string_view json);

// The boolean under `key` of a JSON object: {"egress": true}. Left out or null: false.
Result<bool> ParseFlag(std::string_view json, std::string_view key);

// The string under `key` of a JSON object: {"ca": "-----BEGIN..."}. Left out or null: "".
Result<std::string> ParseString(std::string_view json, std::string_view key);

struct SessionWork {
  EnvVars env;
  std::vector<std::string> files;
  bool egress = false;  // the session's policy reaches something: the agent gets a proxy
  std::string ca;       // the deployment's egress CA (PEM), when the session has a secret
};
// Parses the answer of GET /sandbox/v1/work: {"env": {..}, "files": [{"name": ..}, ..],
// "egress": true|false, "ca": PEM}.
Result<SessionWork> ParseWork(std::string_view json);

// The session's work from the control plane (none from one that does not serve the route).
// Retries a while when the control plane cannot be reached.
Result<SessionWork> FetchWork(const std::string& socket_path, const std::string& token);

// Copies the session's `files` into `dir`, created as the agent's user (`uid`, `gid`) through
// the file-system uid, so that init needs no capability over the agent's files and can write
// only where the agent could. A file that cannot be written is logged and skipped: the agent
// still starts. Returns how many files were copied.
int CopySessionFiles(const std::string& socket_path, const std::string& token,
                     const std::vector<std::string>& files, const std::string& dir, uid_t uid,
                     gid_t gid);

// Writes the image's trust store (the first of the usual bundle paths that exists) followed by
// `ca_pem` to `dir`/ca-bundle.pem, readable by all and writable only by init, and returns its
// path: what the agent's TLS clients trust when the egress gateway adds its secrets.
Result<std::string> WriteCaBundle(const std::string& ca_pem, const std::string& dir);

// The agent's environment: `reserved` (the three variables of the session) first, which
// nothing overrides; then `defaults` (PATH, HOME, LANG), the image's `NAME=value` entries over
// them, and the session's over those.
std::vector<std::string> MergeEnvironment(const std::vector<std::string>& defaults,
                                          const std::vector<std::string>& image,
                                          const EnvVars& session,
                                          const std::vector<std::string>& reserved);

}  // namespace airlock::init
