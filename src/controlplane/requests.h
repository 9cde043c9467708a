#pragma once

// Request bodies of the API as typed values: each parser takes the decoded JSON body and
// either returns what the caller asked for or refuses it with the message the API answers
// with (docs/api.md). Pure functions, no HTTP: the handlers call them, the tests drive them.
#include <cstdint>
#include <optional>
#include <string>

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
};
// `config` gives the defaults, the task's size limit and the model aliases that exist.
Result<CreateSessionRequest> ParseCreateSession(const Json& body, const Config& config);

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
