#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "common/json_util.h"
#include "common/result.h"

namespace airlock::controlplane {

inline constexpr std::string_view kSessionTokenPrefix = "ast_";
inline constexpr std::string_view kOperatorKeyPrefix = "aok_";

// Event types a sandbox may post: 1-64 of [a-z0-9._-], and not in the namespaces the control
// plane writes itself (session.*, llm.*, file.*), so an agent cannot forge the audit trail.
Status ValidateEventType(std::string_view type);
// The "limits" object of POST /v1/sessions: known keys, numbers, sane ranges.
Result<Json> ParseLimits(const Json& limits);
// "command": an argv of at most 256 non-empty-first strings without NUL.
Status ValidateCommand(const Json& cmd);
// Image, model and backend names.
Status ValidateName(std::string_view what, std::string_view v);
// "ses_" + 24 base32 characters, as NewId("ses_") makes them.
bool PlausibleSessionId(std::string_view id);
// A decimal integer >= 0 of at most 18 digits.
std::optional<int64_t> ParseNonNegative(std::string_view s);

}  // namespace airlock::controlplane
