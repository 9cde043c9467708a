#pragma once

// Request bodies of the API as typed values: each parser takes the decoded JSON body and
// either returns what the caller asked for or refuses it with the message the API answers
// with (docs/api.md). Pure functions, no HTTP: the handlers call them, the tests drive them.
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/json_util.h"
#include "common/result.h"
#include "controlplane/config.h"
#include "store/store.h"

namespace airlock::controlplane {

// POST /v1/sessions, with the configured defaults filled in for what the body leaves out.
struct CreateSessionRequest {
  std::string task;
  std::string image;
  std::string model;            // model alias
  Json models = Json::array();  // aliases the sandbox may pick per call
  std::string backend;
  Json command = Json::array();  // argv, or empty for the image's default
  Json limits = Json::object();
  Json metadata = Json::object();
  Json env = Json::object();  // {"NAME": "value"}: non-secret variables for the agent
  // What the session may reach through the egress gateway, as stored: {"policy": NAME}, or
  // {"allow": [...], "allow_addresses": [...]}, or {} (nothing).
  Json egress = Json::object();
  // Files put into the session before its sandbox starts: {name, bytes}.
  std::vector<std::pair<std::string, std::string>> files;
};
// `config` gives the defaults, the task's size limit and the model aliases that exist.
Result<CreateSessionRequest> ParseCreateSession(const Json& body, const Config& config);

// "env" of POST /v1/sessions: at most 128 variables, names of [A-Za-z_][A-Za-z0-9_]* up to
// 128 bytes, values without NUL, 64 KiB in all. Refused by name: the three variables the
// control plane sets, names matching `config.credential_env`, and the api_key_env of every
// configured provider; and any value equal to a provider's key.
Result<Json> ParseSessionEnv(const Json& env, const Config& config);
// "egress" of POST /v1/sessions: {"policy": NAME} naming one of [egress.policies], or its own
// {"allow": [...], "allow_addresses": [...]}, which must narrow [egress]'s (never widen it).
// Left out (null): egress.default_policy, or nothing. Returns the form stored with the session.
Result<Json> ParseSessionEgress(const Json* egress, const Config& config);
// What a session whose stored "egress" is `stored` may reach under the configuration now: the
// named policy as it is configured, or the session's own lists, still checked to narrow
// [egress] (the operator may have narrowed it since). An empty policy reaches nothing.
Result<egress::Policy> SessionEgressPolicy(const Json& stored, const Config& config);
// The names of the secrets a session's stored "egress" gives it ("secrets", each one of
// [secrets.NAME] when the session was created).
std::vector<std::string> SessionSecretNames(const Json& stored);
// "files" of POST /v1/sessions: at most 64, each a valid file name whose value is its text or
// {"base64": "..."}, each within files.max_file_mb and all within files.session_quota_mb.
Result<std::vector<std::pair<std::string, std::string>>> ParseSessionFiles(const Json& files,
                                                                           const Config& config);

// POST /v1/sessions/{id}/messages: the message's text.
Result<std::string> ParsePostMessage(const Json& body, const Config& config);

// POST /sandbox/v1/finish: how the agent's work ended, and what it says about it.
struct FinishRequest {
  store::SessionState state = store::SessionState::kSucceeded;  // succeeded or failed
  std::optional<std::string> result;
};
Result<FinishRequest> ParseFinish(const Json& body);

// POST /v1/sessions/{id}/suspend: {"mode": "pause" | "hibernate"}, pause when left out; the
// tier the session is to be in.
Result<store::SuspendTier> ParseSuspend(const Json& body);

}  // namespace airlock::controlplane
