#include "controlplane/validation.h"

namespace airlock::controlplane {

Status ValidateEventType(std::string_view type) {
  if (type.empty() || type.size() > 64 ||
      type.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789._-") != std::string_view::npos) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "\"type\" must be 1-64 characters of a-z, 0-9, '.', '_' or '-'");
  }
  if (type.starts_with("session.") || type.starts_with("llm.") || type.starts_with("file.") ||
      type.starts_with("egress.")) {
    return MakeError(
        ErrorCode::kInvalidArgument,
        "event types session.*, llm.*, file.* and egress.* are reserved for the control plane");
  }
  return Ok();
}

Result<Json> ParseLimits(const Json& limits) {
  if (limits.is_null()) return Json::object();
  if (!limits.is_object())
    return MakeError(ErrorCode::kInvalidArgument, "\"limits\" must be an object");
  struct Bound {
    const char* key;
    double min, max;
  };
  static constexpr Bound kBounds[] = {
      {"memory_mb", 16, 1 << 20},
      {"cpus", 0.01, 1024},
      {"pids", 1, 1 << 22},
      {"disk_mb", 1, 1 << 24},
      {"timeout_s", 1, 30 * 86400},
      {"idle_timeout_s", 1, 30 * 86400},
      {"hibernate_after_s", 1, 30 * 86400},
      {"max_tokens", 1, 1e12},
      {"max_cost_usd", 0, 1e9},
  };
  Json out = Json::object();
  for (const auto& [k, v] : limits.items()) {
    const Bound* b = nullptr;
    for (const auto& cand : kBounds) {
      if (k == cand.key) b = &cand;
    }
    if (!b) return Errorf(ErrorCode::kInvalidArgument, "unknown limit \"{}\"", k.substr(0, 64));
    if (!v.is_number()) return Errorf(ErrorCode::kInvalidArgument, "limits.{} must be a number", k);
    double d = v.get<double>();
    if (!(d >= b->min && d <= b->max)) {
      return Errorf(ErrorCode::kInvalidArgument, "limits.{} must be between {} and {}", k, b->min,
                    b->max);
    }
    out[k] = v;
  }
  return out;
}

Status ValidateCommand(const Json& cmd) {
  if (cmd.is_null()) return Ok();
  if (!cmd.is_array() || cmd.size() > 256) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "\"command\" must be an array of at most 256 strings");
  }
  for (const auto& a : cmd) {
    if (!a.is_string() || a.get_ref<const std::string&>().size() > 8192 ||
        a.get_ref<const std::string&>().find('\0') != std::string::npos) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "\"command\" entries must be strings of at most 8192 bytes without NUL");
    }
  }
  if (!cmd.empty() && cmd[0].get_ref<const std::string&>().empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "\"command\"[0] must not be empty");
  }
  return Ok();
}

Status ValidateName(std::string_view what, std::string_view v) {
  if (v.empty() || v.size() > 128 ||
      v.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:/@-") !=
          std::string_view::npos) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "\"{}\" must be 1-128 characters of [A-Za-z0-9._:/@-]", what);
  }
  // Names end up in paths (the image cache): no traversal, no absolute paths.
  if (v.front() == '/' || v.front() == '.' || v.find("..") != std::string_view::npos ||
      v.find("//") != std::string_view::npos) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "\"{}\" must not start with '/' or '.', or contain \"..\"", what);
  }
  return Ok();
}

bool PlausibleSessionId(std::string_view id) {
  return id.size() == 28 && id.substr(0, 4) == "ses_" &&
         id.substr(4).find_first_not_of("abcdefghijklmnopqrstuvwxyz234567") ==
             std::string_view::npos;
}

std::optional<int64_t> ParseNonNegative(std::string_view s) {
  if (s.empty() || s.size() > 18 || s.find_first_not_of("0123456789") != std::string_view::npos) {
    return std::nullopt;
  }
  return std::stoll(std::string(s));
}

}  // namespace airlock::controlplane
