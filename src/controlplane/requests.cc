#include "controlplane/requests.h"

#include <fnmatch.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include "common/crypto.h"
#include "controlplane/validation.h"
#include "files/blob_store.h"

namespace airlock::controlplane {

namespace {

constexpr size_t kMaxResultBytes = 64 * 1024;

// The names of a configuration map, for an error that lists what is configured: "a, b", or
// "none".
template <typename Map>
std::string ConfiguredNames(const Map& m) {
  std::string names;
  for (const auto& [name, value] : m) names += (names.empty() ? "" : ", ") + name;
  return names.empty() ? "none" : names;
}

// Model aliases named in a request must exist; the default alias may be configured later.
Status KnownAlias(const Config& config, const std::string& alias) {
  if (config.models.count(alias)) return Ok();
  return Errorf(ErrorCode::kInvalidArgument, "unknown model alias \"{}\" (configured: {})",
                alias.substr(0, 64), ConfiguredNames(config.models));
}

}  // namespace

Result<CreateSessionRequest> ParseCreateSession(const Json& body, const Config& config) {
  AIRLOCK_TRY(RejectUnknownKeys(body,
                                {"task", "image", "command", "model", "models", "backend", "limits",
                                 "metadata", "env", "files", "egress"},
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
  if (auto it = body.find("env"); it != body.end() && !it->is_null()) {
    AIRLOCK_ASSIGN_OR_RETURN(r.env, ParseSessionEnv(*it, config));
  }
  if (auto it = body.find("files"); it != body.end() && !it->is_null()) {
    AIRLOCK_ASSIGN_OR_RETURN(r.files, ParseSessionFiles(*it, config));
  }
  auto egress = body.find("egress");
  AIRLOCK_ASSIGN_OR_RETURN(r.egress,
                           ParseSessionEgress(egress != body.end() ? &*egress : nullptr, config));
  // A secret's placeholder is the agent's variable: the session's own may not take its name.
  for (const auto& name : SessionSecretNames(r.egress)) {
    const std::string& var = config.secrets.at(name).sandbox_env;
    if (r.env.is_object() && r.env.contains(var)) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "\"env\": {} holds the placeholder of secret {} (secrets.{}.sandbox_env)", var,
                    name, name);
    }
  }
  return r;
}

namespace {

// The strings of `j[key]` (an array of at most 256 strings), for a policy's list.
Result<std::vector<std::string>> EgressList(const Json& j, const char* key) {
  std::vector<std::string> out;
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return out;
  if (!it->is_array() || it->size() > 256) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "\"egress.{}\" must be an array of at most 256 strings", key);
  }
  for (const auto& v : *it) {
    if (!v.is_string()) {
      return Errorf(ErrorCode::kInvalidArgument, "\"egress.{}\" holds strings", key);
    }
    out.push_back(v.get<std::string>());
  }
  return out;
}

}  // namespace

Result<Json> ParseSessionEgress(const Json* egress, const Config& config) {
  const EgressConfig& e = config.egress;
  if (egress == nullptr || egress->is_null()) {
    if (e.default_policy.empty()) return Json::object();
    return Json{{"policy", e.default_policy}};
  }
  constexpr std::string_view kShape =
      "\"egress\" must be {\"policy\": NAME} or {\"allow\": [...], \"allow_addresses\": "
      "[...]}, each with \"secrets\": [...] if need be";
  if (!egress->is_object()) return MakeError(ErrorCode::kInvalidArgument, std::string(kShape));
  for (const auto& [key, value] : egress->items()) {
    if (key != "policy" && key != "allow" && key != "allow_addresses" && key != "secrets") {
      return Errorf(ErrorCode::kInvalidArgument, "{}; {} is not one of its members", kShape,
                    DumpJson(Json(key)));
    }
  }
  AIRLOCK_ASSIGN_OR_RETURN(auto secrets, EgressList(*egress, "secrets"));
  std::sort(secrets.begin(), secrets.end());
  secrets.erase(std::unique(secrets.begin(), secrets.end()), secrets.end());
  for (const auto& name : secrets) {
    if (!config.secrets.contains(name)) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "\"egress.secrets\": no secret {} is configured (configured: {})",
                    DumpJson(Json(name)), ConfiguredNames(config.secrets));
    }
  }
  auto with_secrets = [&secrets](Json stored) {
    if (!secrets.empty()) stored["secrets"] = secrets;
    return stored;
  };
  if (auto it = egress->find("policy"); it != egress->end()) {
    if (!it->is_string() || egress->size() != (secrets.empty() ? 1u : 2u)) {
      return MakeError(ErrorCode::kInvalidArgument, std::string(kShape));
    }
    const std::string name = it->get<std::string>();
    if (!e.policies.contains(name)) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "\"egress.policy\": no egress policy {} is configured (configured: {})",
                    DumpJson(Json(name)), ConfiguredNames(e.policies));
    }
    return with_secrets(Json{{"policy", name}});
  }
  AIRLOCK_ASSIGN_OR_RETURN(auto allow, EgressList(*egress, "allow"));
  AIRLOCK_ASSIGN_OR_RETURN(auto addresses, EgressList(*egress, "allow_addresses"));
  AIRLOCK_ASSIGN_OR_RETURN(egress::Policy p, egress::ParsePolicy(allow, addresses, "egress"));
  if (auto narrows = egress::CheckNarrows(p, e.allow); !narrows) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "\"egress\" may only narrow what the operator allows: {}",
                  narrows.error().message);
  }
  if (p.empty()) return with_secrets(Json::object());
  return with_secrets(Json{{"allow", allow}, {"allow_addresses", addresses}});
}

std::vector<std::string> SessionSecretNames(const Json& stored) {
  std::vector<std::string> names;
  if (!stored.is_object()) return names;
  auto it = stored.find("secrets");
  if (it == stored.end() || !it->is_array()) return names;
  for (const auto& v : *it) {
    if (v.is_string()) names.push_back(v.get<std::string>());
  }
  return names;
}

Result<egress::Policy> SessionEgressPolicy(const Json& stored, const Config& config) {
  const EgressConfig& e = config.egress;
  if (!stored.is_object() || stored.empty()) return egress::Policy{};
  if (auto it = stored.find("policy"); it != stored.end() && it->is_string()) {
    auto p = e.policies.find(it->get<std::string>());
    if (p == e.policies.end()) {
      return Errorf(ErrorCode::kPermissionDenied,
                    "the session's egress policy \"{}\" is no longer configured",
                    it->get<std::string>());
    }
    return p->second;
  }
  AIRLOCK_ASSIGN_OR_RETURN(auto allow, EgressList(stored, "allow"));
  AIRLOCK_ASSIGN_OR_RETURN(auto addresses, EgressList(stored, "allow_addresses"));
  AIRLOCK_ASSIGN_OR_RETURN(egress::Policy p, egress::ParsePolicy(allow, addresses, "egress"));
  if (auto narrows = egress::CheckNarrows(p, e.allow); !narrows) {
    return Errorf(ErrorCode::kPermissionDenied,
                  "the session's egress rules are no longer within the operator's: {}",
                  narrows.error().message);
  }
  return p;
}

Result<std::vector<std::pair<std::string, std::string>>> ParseSessionFiles(const Json& files,
                                                                           const Config& config) {
  constexpr size_t kMaxFiles = 64;
  if (!files.is_object() || files.size() > kMaxFiles) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "\"files\" must be an object of at most 64 files {\"name\": \"text\" or "
                     "{\"base64\": \"...\"}}");
  }
  std::vector<std::pair<std::string, std::string>> out;
  int64_t total = 0;
  for (const auto& [name, value] : files.items()) {
    if (auto ok = files::ValidateFileName(name); !ok) {
      return Errorf(ErrorCode::kInvalidArgument, "\"files\": {}", ok.error().message);
    }
    std::string bytes;
    if (value.is_string()) {
      bytes = value.get<std::string>();
    } else if (value.is_object() && value.size() == 1 && value.contains("base64") &&
               value["base64"].is_string()) {
      auto decoded = Base64Decode(value["base64"].get_ref<const std::string&>());
      if (!decoded) {
        return Errorf(ErrorCode::kInvalidArgument, "\"files\": {} is not valid base64",
                      name.substr(0, 64));
      }
      bytes = std::move(*decoded);
    } else {
      return Errorf(ErrorCode::kInvalidArgument,
                    "\"files\": {} must be its text, or {{\"base64\": \"...\"}}",
                    name.substr(0, 64));
    }
    if (static_cast<int64_t>(bytes.size()) > (config.files.max_file_mb << 20)) {
      return Errorf(ErrorCode::kPayloadTooLarge, "\"files\": {} exceeds files.max_file_mb ({} MiB)",
                    name.substr(0, 64), config.files.max_file_mb);
    }
    total += static_cast<int64_t>(bytes.size());
    out.emplace_back(name, std::move(bytes));
  }
  if (total > (config.files.session_quota_mb << 20)) {
    return Errorf(ErrorCode::kPayloadTooLarge,
                  "\"files\" exceed the session's quota (files.session_quota_mb, {} MiB)",
                  config.files.session_quota_mb);
  }
  return out;
}

Result<Json> ParseSessionEnv(const Json& env, const Config& config) {
  constexpr size_t kMaxVars = 128, kMaxName = 128, kMaxTotal = 64 * 1024;
  if (!env.is_object() || env.size() > kMaxVars) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "\"env\" must be an object of at most 128 variables {\"NAME\": \"value\"}");
  }
  size_t total = 0;
  for (const auto& [name, value] : env.items()) {
    const std::string shown = name.substr(0, 64);
    bool valid = !name.empty() && name.size() <= kMaxName &&
                 !std::isdigit(static_cast<unsigned char>(name[0]));
    for (char c : name) {
      valid = valid && (std::isalnum(static_cast<unsigned char>(c)) || c == '_');
    }
    if (!valid) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "\"env\": \"{}\" is not a variable name (1-128 of [A-Za-z0-9_], not "
                    "starting with a digit)",
                    shown);
    }
    if (!value.is_string()) {
      return Errorf(ErrorCode::kInvalidArgument, "\"env\": the value of {} must be a string",
                    shown);
    }
    const std::string& v = value.get_ref<const std::string&>();
    if (v.find('\0') != std::string::npos) {
      return Errorf(ErrorCode::kInvalidArgument, "\"env\": the value of {} holds a NUL", shown);
    }
    total += name.size() + v.size() + 2;
    if (name == "SESSION_ID" || name == "SESSION_TOKEN" || name == "CONTROL_PLANE_URL") {
      return Errorf(ErrorCode::kInvalidArgument,
                    "\"env\": {} is set by the control plane and cannot be given", name);
    }
    for (const auto& pattern : config.credential_env) {
      // A shell pattern, any case (the name is [A-Za-z0-9_] only: no NUL, no '/').
      if (::fnmatch(pattern.c_str(), name.c_str(), FNM_CASEFOLD) == 0) {
        return Errorf(ErrorCode::kInvalidArgument,
                      "\"env\": {} looks like a credential (sandbox.credential_env has \"{}\"); "
                      "credentials stay in the control plane",
                      shown, pattern);
      }
    }
    for (const auto& [provider_name, provider] : config.providers) {
      if (!provider.api_key_env.empty() && name == provider.api_key_env) {
        return Errorf(ErrorCode::kInvalidArgument,
                      "\"env\": {} is the key variable of provider {}; credentials stay in the "
                      "control plane",
                      shown, provider_name);
      }
      const char* from_env =
          provider.api_key_env.empty() ? nullptr : std::getenv(provider.api_key_env.c_str());
      const bool is_key =
          (!provider.api_key.empty() && ConstantTimeEquals(provider.api_key.Reveal(), v)) ||
          (from_env != nullptr && *from_env != '\0' && ConstantTimeEquals(v, from_env));
      if (!v.empty() && is_key) {
        return Errorf(ErrorCode::kInvalidArgument,
                      "\"env\": the value of {} is a provider's key; credentials stay in the "
                      "control plane",
                      shown);
      }
    }
  }
  if (total > kMaxTotal) {
    return MakeError(ErrorCode::kPayloadTooLarge, "\"env\" exceeds 64 KiB");
  }
  return env;
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
