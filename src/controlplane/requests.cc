#include "controlplane/requests.h"

#include "controlplane/validation.h"

namespace airlock::controlplane {

namespace {

constexpr size_t kMaxResultBytes = 64 * 1024;

// Model aliases named in a request must exist; the default alias may be configured later.
Status KnownAlias(const Config& config, const std::string& alias) {
  if (config.models.count(alias)) return Ok();
  std::string known;
  for (const auto& [k, v] : config.models) known += (known.empty() ? "" : ", ") + k;
  return Errorf(ErrorCode::kInvalidArgument, "unknown model alias \"{}\" (configured: {})",
                alias.substr(0, 64), known.empty() ? "none" : known);
}

}  // namespace

Result<CreateSessionRequest> ParseCreateSession(const Json& body, const Config& config) {
  AIRLOCK_TRY(RejectUnknownKeys(
      body, {"task", "image", "command", "model", "models", "backend", "limits", "metadata"},
      "session"));
  CreateSessionRequest r;
  AIRLOCK_ASSIGN_OR_RETURN(r.task, RequiredString(body, "task"));
  if (r.task.empty()) return MakeError(ErrorCode::kInvalidArgument, "\"task\" must not be empty");
  if (static_cast<int64_t>(r.task.size()) > config.max_task_bytes) {
    return Errorf(ErrorCode::kPayloadTooLarge, "\"task\" exceeds {} bytes", config.max_task_bytes);
  }
  AIRLOCK_ASSIGN_OR_RETURN(auto image, OptionalString(body, "image"));
  AIRLOCK_ASSIGN_OR_RETURN(auto model, OptionalString(body, "model"));
  AIRLOCK_ASSIGN_OR_RETURN(auto backend, OptionalString(body, "backend"));
  r.image = image.value_or(config.default_image);
  r.model = model.value_or(config.default_model);
  r.backend = backend.value_or(config.default_backend);
  AIRLOCK_TRY(ValidateName("image", r.image));
  AIRLOCK_TRY(ValidateName("model", r.model));
  AIRLOCK_TRY(ValidateName("backend", r.backend));
  if (model) AIRLOCK_TRY(KnownAlias(config, r.model));
  if (auto it = body.find("models"); it != body.end() && !it->is_null()) {
    if (!it->is_array() || it->size() > 32) {
      return MakeError(
          ErrorCode::kInvalidArgument,
          "\"models\" must be an array of at most 32 model aliases the sandbox may pick");
    }
    for (const auto& a : *it) {
      if (!a.is_string()) {
        return MakeError(ErrorCode::kInvalidArgument, "\"models\" holds model aliases (strings)");
      }
      AIRLOCK_TRY(KnownAlias(config, a.get<std::string>()));
    }
    r.models = *it;
  }
  if (auto it = body.find("command"); it != body.end()) {
    AIRLOCK_TRY(ValidateCommand(*it));
    if (it->is_array()) r.command = *it;
  }
  if (auto it = body.find("limits"); it != body.end()) {
    AIRLOCK_ASSIGN_OR_RETURN(r.limits, ParseLimits(*it));
  }
  if (auto it = body.find("metadata"); it != body.end() && !it->is_null()) {
    if (!it->is_object() || DumpJson(*it).size() > 16 * 1024) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "\"metadata\" must be an object of at most 16 KiB");
    }
    r.metadata = *it;
  }
  return r;
}

Result<std::string> ParsePostMessage(const Json& body, const Config& config) {
  AIRLOCK_TRY(RejectUnknownKeys(body, {"content"}, "message"));
  AIRLOCK_ASSIGN_OR_RETURN(std::string content, RequiredString(body, "content"));
  if (content.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "\"content\" must not be empty");
  }
  if (static_cast<int64_t>(content.size()) > config.max_message_bytes) {
    return Errorf(ErrorCode::kPayloadTooLarge, "\"content\" exceeds {} bytes",
                  config.max_message_bytes);
  }
  return content;
}

Result<FinishRequest> ParseFinish(const Json& body) {
  AIRLOCK_TRY(RejectUnknownKeys(body, {"status", "result"}, "finish"));
  AIRLOCK_ASSIGN_OR_RETURN(std::string status, RequiredString(body, "status"));
  FinishRequest r;
  if (status == "succeeded") {
    r.state = store::SessionState::kSucceeded;
  } else if (status == "failed") {
    r.state = store::SessionState::kFailed;
  } else {
    return MakeError(ErrorCode::kInvalidArgument, "\"status\" must be \"succeeded\" or \"failed\"");
  }
  AIRLOCK_ASSIGN_OR_RETURN(r.result, OptionalString(body, "result"));
  if (r.result && r.result->size() > kMaxResultBytes) {
    return MakeError(ErrorCode::kPayloadTooLarge, "\"result\" exceeds 65536 bytes");
  }
  // Stored as text, not JSON: PostgreSQL's text cannot hold a NUL, so no store takes one.
  if (r.result && r.result->find('\0') != std::string::npos) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "\"result\" must not contain NUL characters (\\u0000)");
  }
  return r;
}

Result<store::SuspendTier> ParseSuspend(const Json& body) {
  AIRLOCK_TRY(RejectUnknownKeys(body, {"mode"}, "suspend"));
  AIRLOCK_ASSIGN_OR_RETURN(std::optional<std::string> mode, OptionalString(body, "mode"));
  if (!mode || *mode == "pause") return store::SuspendTier::kPaused;
  if (*mode == "hibernate") return store::SuspendTier::kHibernated;
  return MakeError(ErrorCode::kInvalidArgument, "\"mode\" must be \"pause\" or \"hibernate\"");
}

}  // namespace airlock::controlplane
