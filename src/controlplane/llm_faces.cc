#include "controlplane/llm_faces.h"

#include <algorithm>
#include <ctime>
#include <set>

#include "controlplane/llm_proxy.h"

namespace airlock::controlplane {

namespace {

constexpr size_t kMaxConversation = 10'000;

// Sampling parameters a client of the face may set, with the JSON type each must have.
enum class Kind { kNumber, kInteger, kBool, kStopList, kObject, kToolChoice };
struct Param {
  std::string_view name;
  Kind kind;
};
constexpr Param kClientParams[] = {
    {"temperature", Kind::kNumber},
    {"top_p", Kind::kNumber},
    {"max_tokens", Kind::kInteger},
    {"max_completion_tokens", Kind::kInteger},
    {"stop", Kind::kStopList},
    {"seed", Kind::kInteger},
    {"presence_penalty", Kind::kNumber},
    {"frequency_penalty", Kind::kNumber},
    {"parallel_tool_calls", Kind::kBool},
    {"response_format", Kind::kObject},
    {"tool_choice", Kind::kToolChoice},
};
// Fields that steer only OpenAI's own services (its end-user tracking, its stored
// completions): accepted so that clients which always send them work, and not forwarded.
constexpr std::string_view kDropped[] = {"user", "store", "metadata", "service_tier"};

Status CheckParam(const Param& p, const Json& v) {
  bool ok = false;
  switch (p.kind) {
    case Kind::kNumber:
      ok = v.is_number();
      break;
    case Kind::kInteger:
      ok = v.is_number_integer() && v.get<int64_t>() > 0;
      break;
    case Kind::kBool:
      ok = v.is_boolean();
      break;
    case Kind::kObject:
      ok = v.is_object();
      break;
    case Kind::kStopList:
      ok = v.is_string() ||
           (v.is_array() && v.size() <= 4 && std::all_of(v.begin(), v.end(), [](const Json& s) {
              return s.is_string() && !s.get_ref<const std::string&>().empty();
            }));
      break;
    case Kind::kToolChoice:
      ok = (v.is_string() && (v == "auto" || v == "none" || v == "required")) ||
           (v.is_object() && v.value("type", "") == "function" && v.contains("function") &&
            v["function"].is_object() && v["function"].contains("name") &&
            v["function"]["name"].is_string());
      break;
  }
  if (ok) return Ok();
  static constexpr std::string_view kWhat[] = {
      "a number",
      "a positive integer",
      "true or false",
      "an object",
      "a string or up to 4 non-empty strings",
      "\"auto\", \"none\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":...}}"};
  return Errorf(ErrorCode::kInvalidArgument, "\"{}\" must be {}", p.name,
                kWhat[static_cast<int>(p.kind)]);
}

// A message as a client may send it back: the fields OpenAI's answers carry and clients echo
// (`refusal`, `annotations`, an empty `audio` or `function_call`) dropped, then checked.
Result<Json> ClientMessage(const Json& m, const std::string& where) {
  if (!m.is_object()) return Errorf(ErrorCode::kInvalidArgument, "{} must be an object", where);
  Json copy = m;
  for (const char* echoed : {"refusal", "annotations"}) copy.erase(echoed);
  for (const char* empty : {"audio", "function_call"}) {
    if (copy.contains(empty) && copy[empty].is_null()) copy.erase(empty);
  }
  if (copy.value("role", "") == "assistant" && copy.contains("tool_calls") &&
      copy["tool_calls"].is_array() && copy["tool_calls"].empty()) {
    copy.erase("tool_calls");
  }
  if (copy.value("role", "") == "developer") copy["role"] = "system";  // OpenAI's newer name
  return ValidateChatMessage(copy, where);
}

// The form two messages are compared in (see MatchHistory).
Json Canonical(const Json& m) {
  Json c = m;
  if (c.contains("content")) {
    Json& content = c["content"];
    if (content.is_array()) {
      std::string text;
      bool only_text = true;
      for (const Json& part : content) {
        if (part.value("type", "") != "text") {
          only_text = false;
          break;
        }
        text += part.value("text", "");
      }
      if (only_text) content = text;
    }
    if (c.value("role", "") == "assistant" && content.is_string() &&
        content.get_ref<const std::string&>().empty() && c.contains("tool_calls")) {
      content = nullptr;
    }
  }
  if (c.value("role", "") == "assistant" && !c.contains("content")) c["content"] = nullptr;
  return c;
}

}  // namespace

Result<CompletionsRequest> ParseCompletionsRequest(const Json& body) {
  CompletionsRequest out;
  std::set<std::string_view> known = {"model",  "messages",       "tools",
                                      "stream", "stream_options", "n"};
  for (const Param& p : kClientParams) known.insert(p.name);
  for (std::string_view d : kDropped) known.insert(d);
  for (const auto& [key, value] : body.items()) {
    if (!known.contains(key)) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "\"{}\" is not supported by this control plane (docs/api.md lists what a "
                    "client may set)",
                    key.substr(0, 64));
    }
  }
  if (!body.contains("model") || !body["model"].is_string()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "\"model\" must be a model alias (GET /v1/models lists this session's)");
  }
  out.alias = body["model"];
  if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "\"messages\" must be a non-empty array: the whole conversation");
  }
  const Json& msgs = body["messages"];
  if (msgs.size() > kMaxConversation) {
    return Errorf(ErrorCode::kInvalidArgument, "at most {} messages per call", kMaxConversation);
  }
  for (size_t i = 0; i < msgs.size(); ++i) {
    AIRLOCK_ASSIGN_OR_RETURN(Json m, ClientMessage(msgs[i], fmt::format("messages[{}]", i)));
    out.messages.push_back(std::move(m));
  }
  if (body.contains("tools") && !body["tools"].is_null()) {
    AIRLOCK_ASSIGN_OR_RETURN(out.tools, ValidateChatTools(body["tools"]));
  }
  if (body.contains("stream") && !body["stream"].is_null()) {
    if (!body["stream"].is_boolean())
      return MakeError(ErrorCode::kInvalidArgument, "\"stream\" must be true or false");
    out.stream = body["stream"];
  }
  if (body.contains("stream_options") && !body["stream_options"].is_null()) {
    const Json& so = body["stream_options"];
    if (!so.is_object() || (so.contains("include_usage") && !so["include_usage"].is_boolean()))
      return MakeError(ErrorCode::kInvalidArgument,
                       "\"stream_options\" must be {\"include_usage\": true|false}");
    out.include_usage = so.value("include_usage", false);
  }
  if (body.contains("n") && !body["n"].is_null() && body["n"] != 1) {
    return MakeError(ErrorCode::kInvalidArgument, "\"n\" must be 1: one choice per call");
  }
  for (const Param& p : kClientParams) {
    auto it = body.find(std::string(p.name));
    if (it == body.end() || it->is_null()) continue;
    AIRLOCK_TRY(CheckParam(p, *it));
    out.params[std::string(p.name)] = *it;
  }
  // max_completion_tokens is OpenAI's newer name for max_tokens.
  if (out.params.contains("max_completion_tokens")) {
    out.params["max_tokens"] = out.params["max_completion_tokens"];
    out.params.erase("max_completion_tokens");
  }
  return out;
}

Json UpstreamParams(std::string_view kind, const Json& client, const ModelConfig& model) {
  Json out = Json::object();
  if (kind == "openai") {
    out = client;
  } else if (kind == "anthropic") {
    // Anthropic's Messages API: the same sampling names, stop sequences as a list, its own
    // tool_choice; seed, penalties and response_format have no counterpart and are dropped.
    for (const char* same : {"temperature", "top_p", "max_tokens"}) {
      if (client.contains(same)) out[same] = client[same];
    }
    if (client.contains("stop")) {
      out["stop_sequences"] =
          client["stop"].is_string() ? Json::array({client["stop"]}) : client["stop"];
    }
    if (client.contains("tool_choice")) {
      const Json& tc = client["tool_choice"];
      if (tc == "auto") {
        out["tool_choice"] = Json{{"type", "auto"}};
      } else if (tc == "required") {
        out["tool_choice"] = Json{{"type", "any"}};
      } else if (tc == "none") {
        out["tool_choice"] = Json{{"type", "none"}};
      } else if (tc.is_object()) {
        out["tool_choice"] = Json{{"type", "tool"}, {"name", tc["function"]["name"]}};
      }
      if (client.value("parallel_tool_calls", true) == false && out.contains("tool_choice") &&
          out["tool_choice"]["type"] != "none") {
        out["tool_choice"]["disable_parallel_tool_use"] = true;
      }
    }
  }
  if (model.params.is_object()) {
    for (const auto& [k, v] : model.params.items()) out[k] = v;
  }
  if (model.max_output_tokens > 0 && kind != "scripted") {
    auto it = out.find("max_tokens");
    if (it == out.end() || !it->is_number_integer() ||
        it->get<int64_t>() > model.max_output_tokens) {
      out["max_tokens"] = model.max_output_tokens;
    }
  }
  return out;
}

HistoryMatch MatchHistory(const std::vector<store::Message>& stored,
                          const std::vector<Json>& client) {
  HistoryMatch m;
  const size_t n = std::min(stored.size(), client.size());
  while (m.known < n && Canonical(stored[m.known].body) == Canonical(client[m.known])) ++m.known;
  if (m.known < stored.size()) {
    m.supersede_after = m.known == 0 ? 0 : stored[m.known - 1].position.value_or(0);
    m.superseded = stored.size() - m.known;
  }
  return m;
}

Json CompletionUsageJson(const llm::TokenUsage& u) {
  return Json{{"prompt_tokens", u.input_tokens},
              {"completion_tokens", u.output_tokens},
              {"total_tokens", u.input_tokens + u.output_tokens}};
}

Json CompletionJson(const std::string& id, const std::string& alias, const llm::ChatResult& r) {
  Json message = r.message;
  if (!message.contains("content")) message["content"] = nullptr;
  return Json{{"id", id},
              {"object", "chat.completion"},
              {"created", static_cast<int64_t>(std::time(nullptr))},
              {"model", alias},
              {"choices", Json::array({Json{{"index", 0},
                                            {"message", std::move(message)},
                                            {"logprobs", nullptr},
                                            {"finish_reason", r.finish_reason}}})},
              {"usage", CompletionUsageJson(r.usage)}};
}

Json ModelsJson(const store::Session& s, const Config& config) {
  std::vector<std::string> aliases{s.model};
  if (s.models.is_array()) {
    for (const Json& a : s.models) {
      if (a.is_string() && std::find(aliases.begin(), aliases.end(), a) == aliases.end())
        aliases.push_back(a);
    }
  }
  Json data = Json::array();
  for (const std::string& a : aliases) {
    if (!config.models.contains(a)) continue;
    data.push_back(Json{{"id", a}, {"object", "model"}, {"created", 0}, {"owned_by", "airlock"}});
  }
  return Json{{"object", "list"}, {"data", std::move(data)}};
}

}  // namespace airlock::controlplane
