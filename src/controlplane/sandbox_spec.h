#pragma once

#include <string>

#include "common/json_util.h"
#include "common/secret.h"
#include "sandbox/backend.h"
#include "store/store.h"

namespace airlock::controlplane {

// The typed limits a backend gets from a session's "limits" (already checked by
// ParseLimits). Only the sandbox's resources are taken; the session's budgets (timeout_s,
// idle_timeout_s, max_tokens, max_cost_usd) stay with the control plane.
sandbox::Limits SandboxLimits(const Json& limits);

// Where a session's sandbox lives on this node.
struct SandboxPlace {
  std::string socket_dir;   // the host dir of its control.sock (a kUnixDir channel)
  std::string work_dir;     // bundle, logs
  std::string sandbox_url;  // the sandbox listener as a sandbox reaches it (a kUrl channel)
};

// The spec of a fresh sandbox for session `s` on a backend that can do `caps`. The channel is
// the kind the backend asks for. `token` goes into the spec only for a kInSpec backend; one
// that takes its identity over the channel starts without it.
sandbox::SandboxSpec MakeSandboxSpec(const store::Session& s, const sandbox::Capabilities& caps,
                                     const Secret& token, const SandboxPlace& place);

}  // namespace airlock::controlplane
