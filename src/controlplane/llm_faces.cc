#include "controlplane/llm_faces.h"

#include <algorithm>
#include <ctime>
#include <set>

#include "controlplane/llm_proxy.h"
#include "llm/wire_util.h"

namespace airlock::controlplane {

namespace {

constexpr size_t kMaxConversation = 10'000;

// A string member of a JSON value that may hold anything (a client's body, an upstream's
// chunk): "" when it is absent or not a string, where Json::value would throw.
std::string Str(const Json& o, std::string_view key) {
  const std::string* s = llm::wire::StringMember(o, key);
  return s != nullptr ? *s : "";
}

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
           (v.is_object() && Str(v, "type") == "function" && v.contains("function") &&
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
Result<Json> ClientMessage(Json copy, const std::string& where) {
  if (!copy.is_object()) return Errorf(ErrorCode::kInvalidArgument, "{} must be an object", where);
  for (const char* echoed : {"refusal", "annotations"}) copy.erase(echoed);
  for (const char* empty : {"audio", "function_call"}) {
    if (copy.contains(empty) && copy[empty].is_null()) copy.erase(empty);
  }
  if (Str(copy, "role") == "assistant" && copy.contains("tool_calls") &&
      copy["tool_calls"].is_array() && copy["tool_calls"].empty()) {
    copy.erase("tool_calls");
  }
  if (Str(copy, "role") == "developer") copy["role"] = "system";  // OpenAI's newer name
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
        if (Str(part, "type") != "text") {
          only_text = false;
          break;
        }
        text += Str(part, "text");
      }
      if (only_text) content = text;
    }
    if (Str(c, "role") == "assistant" && content.is_string() &&
        content.get_ref<const std::string&>().empty() && c.contains("tool_calls")) {
      content = nullptr;
    }
  }
  if (Str(c, "role") == "assistant" && !c.contains("content")) c["content"] = nullptr;
  // Arguments are JSON text: the same object may come back spaced or ordered differently (an
  // Anthropic client sends tool_use input as an object, which is dumped again).
  if (c.contains("tool_calls") && c["tool_calls"].is_array()) {
    for (Json& tc : c["tool_calls"]) {
      Json* args = tc.contains("function") ? &tc["function"]["arguments"] : nullptr;
      if (args == nullptr || !args->is_string()) continue;
      if (auto parsed = ParseJson(args->get_ref<const std::string&>())) *args = std::move(*parsed);
    }
  }
  return c;
}

// Whether Canonical would change `m` (most messages: a string content, no tool calls, are
// already in that form and need no copy to be compared).
bool NeedsCanonical(const Json& m) {
  auto content = m.find("content");
  if (content == m.end()) return true;
  if (!content->is_string() && !content->is_null()) return true;
  return m.contains("tool_calls");
}

std::string Sse(std::string_view event, const Json& data) {
  return fmt::format("event: {}\ndata: {}\n\n", event, DumpJson(data));
}

std::string StopReason(const std::string& finish_reason) {
  if (finish_reason == "length") return "max_tokens";
  if (finish_reason == "tool_calls") return "tool_use";
  if (finish_reason == "content_filter") return "refusal";
  return "end_turn";
}

// The text of an Anthropic content value: a string, or the text of its text blocks.
Result<std::string> BlocksText(const Json& content, const std::string& where) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array())
    return Errorf(ErrorCode::kInvalidArgument, "{} must be a string or an array of blocks", where);
  std::string text;
  for (size_t i = 0; i < content.size(); ++i) {
    const Json& b = content[i];
    if (!b.is_object() || Str(b, "type") != "text" || !b.contains("text") ||
        !b["text"].is_string()) {
      return Errorf(ErrorCode::kInvalidArgument, "{}[{}] must be a text block", where, i);
    }
    text += b["text"].get<std::string>();
  }
  return text;
}

// One Anthropic message as OpenAI messages (a user message holding tool results becomes one
// tool message per result, then the user message with the rest).
Status TranslateAnthropicMessage(const Json& m, const std::string& where, std::vector<Json>& out) {
  if (!m.is_object()) return Errorf(ErrorCode::kInvalidArgument, "{} must be an object", where);
  AIRLOCK_TRY(RejectUnknownKeys(m, {"role", "content"}, where));
  const std::string role = Str(m, "role");
  if (role != "user" && role != "assistant")
    return Errorf(ErrorCode::kInvalidArgument, "{}.role must be user or assistant", where);
  if (!m.contains("content"))
    return Errorf(ErrorCode::kInvalidArgument, "{}.content is required", where);
  const Json& content = m["content"];
  if (content.is_string()) {
    out.push_back(Json{{"role", role}, {"content", content}});
    return Ok();
  }
  if (!content.is_array())
    return Errorf(ErrorCode::kInvalidArgument, "{}.content must be a string or an array", where);
  Json parts = Json::array();
  Json tool_calls = Json::array();
  std::string text;
  for (size_t i = 0; i < content.size(); ++i) {
    const Json& b = content[i];
    const std::string at = fmt::format("{}.content[{}]", where, i);
    const std::string type = Str(b, "type");
    if (type == "text") {
      if (!b.contains("text") || !b["text"].is_string())
        return Errorf(ErrorCode::kInvalidArgument, "{}.text must be a string", at);
      text += b["text"].get<std::string>();
      parts.push_back(Json{{"type", "text"}, {"text", b["text"]}});
    } else if (type == "image" && role == "user") {
      const Json* src = b.contains("source") ? &b["source"] : nullptr;
      if (!src || !src->is_object() || Str(*src, "type") != "base64" ||
          !(*src).contains("media_type") || !(*src)["media_type"].is_string() ||
          !(*src).contains("data") || !(*src)["data"].is_string()) {
        return Errorf(
            ErrorCode::kInvalidArgument,
            "{}: images must be {{\"source\": {{\"type\": \"base64\", \"media_type\", "
            "\"data\"}}}}: the control plane never lets a provider fetch a URL named by the "
            "sandbox",
            at);
      }
      parts.push_back(
          Json{{"type", "image_url"},
               {"image_url",
                {{"url", fmt::format("data:{};base64,{}", (*src)["media_type"].get<std::string>(),
                                     (*src)["data"].get<std::string>())}}}});
    } else if (type == "tool_use" && role == "assistant") {
      if (!b.contains("id") || !b["id"].is_string() || !b.contains("name") ||
          !b["name"].is_string() || (b.contains("input") && !b["input"].is_object())) {
        return Errorf(ErrorCode::kInvalidArgument,
                      "{} must be {{\"type\": \"tool_use\", \"id\", \"name\", \"input\": {{...}}}}",
                      at);
      }
      tool_calls.push_back(llm::wire::OpenAiToolCall(b["id"].get<std::string>(),
                                                     b["name"].get<std::string>(),
                                                     DumpJson(b.value("input", Json::object()))));
    } else if (type == "tool_result" && role == "user") {
      if (!b.contains("tool_use_id") || !b["tool_use_id"].is_string())
        return Errorf(ErrorCode::kInvalidArgument, "{}.tool_use_id must name the tool call", at);
      std::string result;
      if (b.contains("content") && !b["content"].is_null()) {
        AIRLOCK_ASSIGN_OR_RETURN(result, BlocksText(b["content"], at + ".content"));
      }
      // OpenAI's tool messages have no error flag: the result says it.
      if (b.contains("is_error") && b["is_error"] == true) result = "Error: " + result;
      AIRLOCK_ASSIGN_OR_RETURN(
          Json tool,
          ValidateChatMessage(
              Json{{"role", "tool"}, {"tool_call_id", b["tool_use_id"]}, {"content", result}}, at));
      out.push_back(std::move(tool));
    } else if (type == "thinking" || type == "redacted_thinking") {
      continue;  // the model's own reasoning, echoed back: not part of the conversation here
    } else {
      return Errorf(ErrorCode::kInvalidArgument,
                    "{}: blocks of type \"{}\" are not supported in {} messages", at,
                    type.substr(0, 32), role);
    }
  }
  if (role == "assistant") {
    // No text: none beside tool calls (as the stored reply has it), "" without them.
    const bool has_calls = !tool_calls.empty();
    Json msg{{"role", "assistant"},
             {"content", text.empty() && has_calls ? Json(nullptr) : Json(text)}};
    if (has_calls) msg["tool_calls"] = std::move(tool_calls);
    AIRLOCK_ASSIGN_OR_RETURN(Json checked, ValidateChatMessage(msg, where));
    out.push_back(std::move(checked));
  } else if (!parts.empty()) {
    // Text alone reads as a string, as a client that sent a string would have it.
    bool only_text =
        std::all_of(parts.begin(), parts.end(), [](const Json& p) { return p["type"] == "text"; });
    AIRLOCK_ASSIGN_OR_RETURN(
        Json checked,
        ValidateChatMessage(Json{{"role", "user"}, {"content", only_text ? Json(text) : parts}},
                            where));
    out.push_back(std::move(checked));
  }
  return Ok();
}

// What every face's body names alike: the model alias, and whether to stream.
Status TakeAliasAndStream(const Json& body, CompletionsRequest& out) {
  if (!body.contains("model") || !body["model"].is_string()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "\"model\" must be a model alias (GET /v1/models lists this session's)");
  }
  out.alias = body["model"];
  if (body.contains("stream") && !body["stream"].is_null()) {
    if (!body["stream"].is_boolean())
      return MakeError(ErrorCode::kInvalidArgument, "\"stream\" must be true or false");
    out.stream = body["stream"];
  }
  return Ok();
}

// ----- The Responses API (POST /v1/responses) ------------------------------------------------

// The text of a Responses content value: a string, or its parts of the given types
// (input_text, output_text); `parts` gets the Chat Completions parts when an image is among
// them (user messages only).
Status ResponsesContent(const Json& content, const std::string& where, const std::string& role,
                        std::string& text, Json& parts) {
  if (content.is_string()) {
    text = content.get<std::string>();
    return Ok();
  }
  if (!content.is_array())
    return Errorf(ErrorCode::kInvalidArgument, "{}.content must be a string or an array", where);
  bool image = false;
  Json all = Json::array();
  for (size_t i = 0; i < content.size(); ++i) {
    const Json& part = content[i];
    const std::string at = fmt::format("{}.content[{}]", where, i);
    const std::string type = Str(part, "type");
    if (type == "input_text" || type == "output_text" || type == "text") {
      if (!part.contains("text") || !part["text"].is_string())
        return Errorf(ErrorCode::kInvalidArgument, "{}.text must be a string", at);
      text += part["text"].get<std::string>();
      all.push_back(Json{{"type", "text"}, {"text", part["text"]}});
    } else if (type == "refusal" && role == "assistant") {
      text += Str(part, "refusal");
    } else if (type == "input_image" && role == "user") {
      // Only a data: URL passes: ValidateChatMessage checks it, as for every face.
      Json img{{"url", Str(part, "image_url")}};
      if (part.contains("detail") && part["detail"].is_string()) img["detail"] = part["detail"];
      all.push_back(Json{{"type", "image_url"}, {"image_url", std::move(img)}});
      image = true;
    } else {
      return Errorf(ErrorCode::kInvalidArgument,
                    "{}: parts of type \"{}\" are not supported in {} messages", at,
                    type.substr(0, 32), role);
    }
  }
  if (image) parts = std::move(all);
  return Ok();
}

// Builds the Chat Completions conversation from Responses input items, in order: consecutive
// assistant text and function calls make one assistant message, as a chat model answers them.
class ResponsesInput {
 public:
  explicit ResponsesInput(std::vector<Json>& out) : out_(out) {}

  Status Add(const Json& item, const std::string& where) {
    if (!item.is_object())
      return Errorf(ErrorCode::kInvalidArgument, "{} must be an object", where);
    const std::string type = item.contains("type") ? Str(item, "type") : "message";
    if (type == "message") return AddMessage(item, where);
    if (type == "function_call") {
      const std::string call_id = Str(item, "call_id"), name = Str(item, "name");
      if (call_id.empty() || name.empty() || !item.contains("arguments") ||
          !item["arguments"].is_string()) {
        return Errorf(ErrorCode::kInvalidArgument,
                      "{} must be {{\"type\": \"function_call\", \"call_id\", \"name\", "
                      "\"arguments\": JSON text}}",
                      where);
      }
      calls_.push_back(llm::wire::OpenAiToolCall(call_id, name, item["arguments"]));
      return Ok();
    }
    if (type == "function_call_output") {
      AIRLOCK_TRY(Flush(where));
      std::string output;
      if (item.contains("output") && item["output"].is_string()) {
        output = item["output"].get<std::string>();
      } else if (item.contains("output") && item["output"].is_array()) {
        Json ignored;
        AIRLOCK_TRY(ResponsesContent(item["output"], where + ".output", "tool", output, ignored));
      } else {
        return Errorf(ErrorCode::kInvalidArgument, "{}.output must be a string or text parts",
                      where);
      }
      AIRLOCK_ASSIGN_OR_RETURN(Json tool,
                               ValidateChatMessage(Json{{"role", "tool"},
                                                        {"tool_call_id", Str(item, "call_id")},
                                                        {"content", std::move(output)}},
                                                   where));
      out_.push_back(std::move(tool));
      return Ok();
    }
    if (type == "reasoning") return Ok();  // the model's own reasoning, echoed back
    return Errorf(ErrorCode::kInvalidArgument,
                  "{}: input items of type \"{}\" are not supported (messages, function_call "
                  "and function_call_output are)",
                  where, type.substr(0, 32));
  }

  // Ends the assistant message being gathered, if any.
  Status Flush(const std::string& where) {
    if (!assistant_ && calls_.empty()) return Ok();
    Json msg{{"role", "assistant"},
             {"content", text_.empty() && !calls_.empty() ? Json(nullptr) : Json(text_)}};
    if (!calls_.empty()) msg["tool_calls"] = std::move(calls_);
    AIRLOCK_ASSIGN_OR_RETURN(Json checked, ValidateChatMessage(msg, where));
    out_.push_back(std::move(checked));
    assistant_ = false;
    text_.clear();
    calls_ = Json::array();
    return Ok();
  }

 private:
  Status AddMessage(const Json& item, const std::string& where) {
    // Besides these, a client echoes what the answer carried (`id`, `status`, `phase`): ignored.
    std::string role = Str(item, "role");
    if (role == "developer") role = "system";  // OpenAI's newer name
    if (role != "user" && role != "system" && role != "assistant")
      return Errorf(ErrorCode::kInvalidArgument,
                    "{}.role must be user, system, developer or assistant", where);
    if (!item.contains("content"))
      return Errorf(ErrorCode::kInvalidArgument, "{}.content is required", where);
    std::string text;
    Json parts;
    AIRLOCK_TRY(ResponsesContent(item["content"], where, role, text, parts));
    if (role == "assistant") {
      // A second message after function calls starts a new assistant message.
      if (!calls_.empty()) AIRLOCK_TRY(Flush(where));
      assistant_ = true;
      text_ += text;
      return Ok();
    }
    AIRLOCK_TRY(Flush(where));
    AIRLOCK_ASSIGN_OR_RETURN(
        Json checked,
        ValidateChatMessage(
            Json{{"role", role}, {"content", parts.is_array() ? parts : Json(text)}}, where));
    out_.push_back(std::move(checked));
    return Ok();
  }

  std::vector<Json>& out_;
  bool assistant_ = false;
  std::string text_;
  Json calls_ = Json::array();
};

// The id of a response's output item, the same whether it was streamed or not.
std::string ItemId(const std::string& response_id, std::string_view prefix, int64_t index) {
  std::string_view tail = response_id;
  if (tail.starts_with("resp_")) tail.remove_prefix(5);
  return fmt::format("{}{}_{}", prefix, tail, index);
}

Json ResponsesUsage(const llm::TokenUsage& u) {
  return Json{{"input_tokens", u.input_tokens},
              {"input_tokens_details", {{"cached_tokens", 0}}},
              {"output_tokens", u.output_tokens},
              {"output_tokens_details", {{"reasoning_tokens", 0}}},
              {"total_tokens", u.input_tokens + u.output_tokens}};
}

// A `response` object; `usage` null while it is in progress.
Json ResponseObject(const std::string& id, const std::string& alias, std::string_view status,
                    Json output, Json usage, Json incomplete = nullptr) {
  return Json{{"id", id},
              {"object", "response"},
              {"created_at", static_cast<int64_t>(std::time(nullptr))},
              {"status", status},
              {"error", nullptr},
              {"incomplete_details", std::move(incomplete)},
              {"instructions", nullptr},
              {"max_output_tokens", nullptr},
              {"model", alias},
              {"output", std::move(output)},
              {"parallel_tool_calls", true},
              {"previous_response_id", nullptr},
              {"reasoning", {{"effort", nullptr}, {"summary", nullptr}}},
              {"store", false},
              {"text", {{"format", {{"type", "text"}}}}},
              {"tool_choice", "auto"},
              {"tools", Json::array()},
              {"truncation", "disabled"},
              {"usage", std::move(usage)},
              {"metadata", Json::object()}};
}

Json OutputText(std::string text) {
  return Json{{"type", "output_text"},
              {"text", std::move(text)},
              {"annotations", Json::array()},
              {"logprobs", Json::array()}};
}

}  // namespace

Result<CompletionsRequest> ParseCompletionsRequest(Json body) {
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
  AIRLOCK_TRY(TakeAliasAndStream(body, out));
  if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "\"messages\" must be a non-empty array: the whole conversation");
  }
  Json& msgs = body["messages"];
  if (msgs.size() > kMaxConversation) {
    return Errorf(ErrorCode::kInvalidArgument, "at most {} messages per call", kMaxConversation);
  }
  for (size_t i = 0; i < msgs.size(); ++i) {  // each taken out of the body, not copied
    AIRLOCK_ASSIGN_OR_RETURN(Json m,
                             ClientMessage(std::move(msgs[i]), fmt::format("messages[{}]", i)));
    out.messages.push_back(std::move(m));
  }
  if (body.contains("tools") && !body["tools"].is_null()) {
    AIRLOCK_ASSIGN_OR_RETURN(out.tools, ValidateChatTools(body["tools"]));
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
    out.erase("top_k");  // Anthropic's; OpenAI refuses it
  } else if (kind == "anthropic") {
    // Anthropic's Messages API: the same sampling names, stop sequences as a list, its own
    // tool_choice; seed, penalties and response_format have no counterpart and are dropped.
    for (const char* same : {"temperature", "top_p", "top_k", "max_tokens"}) {
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

std::shared_ptr<const StoredMessage> MakeStoredMessage(int64_t position, Json body) {
  auto m = std::make_shared<StoredMessage>();
  m->position = position;
  m->canonical = Canonical(body);
  m->body = std::move(body);
  return m;
}

HistoryMatch MatchHistory(const StoredConversation& stored, const std::vector<Json>& client) {
  HistoryMatch m;
  const size_t n = std::min(stored.size(), client.size());
  auto same = [](const Json& canonical, const Json& c) {
    return NeedsCanonical(c) ? canonical == Canonical(c) : canonical == c;
  };
  while (m.known < n && same(stored[m.known]->canonical, client[m.known])) ++m.known;
  if (m.known < stored.size()) {
    m.supersede_after = m.known == 0 ? 0 : stored[m.known - 1]->position;
    m.superseded = stored.size() - m.known;
    m.seen_through = stored.back()->position;
  }
  return m;
}

Result<CompletionsRequest> ParseMessagesRequest(const Json& body) {
  CompletionsRequest out;
  AIRLOCK_TRY(RejectUnknownKeys(
      body,
      {"model", "messages", "max_tokens", "system", "tools", "tool_choice", "stream", "temperature",
       "top_p", "top_k", "stop_sequences", "metadata", "service_tier"},
      "messages request"));
  AIRLOCK_TRY(TakeAliasAndStream(body, out));
  if (!body.contains("max_tokens") || !body["max_tokens"].is_number_integer() ||
      body["max_tokens"].get<int64_t>() <= 0) {
    return MakeError(ErrorCode::kInvalidArgument, "\"max_tokens\" must be a positive integer");
  }
  out.params["max_tokens"] = body["max_tokens"];
  if (body.contains("system") && !body["system"].is_null()) {
    AIRLOCK_ASSIGN_OR_RETURN(std::string system, BlocksText(body["system"], "system"));
    out.messages.push_back(Json{{"role", "system"}, {"content", std::move(system)}});
  }
  if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "\"messages\" must be a non-empty array: the whole conversation");
  }
  if (body["messages"].size() > kMaxConversation) {
    return Errorf(ErrorCode::kInvalidArgument, "at most {} messages per call", kMaxConversation);
  }
  for (size_t i = 0; i < body["messages"].size(); ++i) {
    AIRLOCK_TRY(TranslateAnthropicMessage(body["messages"][i], fmt::format("messages[{}]", i),
                                          out.messages));
  }
  if (body.contains("tools") && !body["tools"].is_null()) {
    const Json& tools = body["tools"];
    if (!tools.is_array())
      return MakeError(ErrorCode::kInvalidArgument, "\"tools\" must be an array");
    Json openai = Json::array();
    for (size_t i = 0; i < tools.size(); ++i) {
      const Json& t = tools[i];
      const std::string at = fmt::format("tools[{}]", i);
      if (!t.is_object()) return Errorf(ErrorCode::kInvalidArgument, "{} must be an object", at);
      AIRLOCK_TRY(
          RejectUnknownKeys(t, {"name", "description", "input_schema", "type", "cache_control"},
                            at + " (only custom tools are supported)"));
      if (t.contains("type") && t["type"] != "custom")
        return Errorf(ErrorCode::kInvalidArgument, "{}: only custom tools are supported", at);
      Json fn{{"name", t.value("name", Json())}};
      if (t.contains("description")) fn["description"] = t["description"];
      if (t.contains("input_schema")) fn["parameters"] = t["input_schema"];
      openai.push_back(Json{{"type", "function"}, {"function", std::move(fn)}});
    }
    AIRLOCK_ASSIGN_OR_RETURN(out.tools, ValidateChatTools(openai));
  }
  if (body.contains("tool_choice") && !body["tool_choice"].is_null()) {
    const Json& tc = body["tool_choice"];
    const std::string type = Str(tc, "type");
    if (type == "auto") {
      out.params["tool_choice"] = "auto";
    } else if (type == "any") {
      out.params["tool_choice"] = "required";
    } else if (type == "none") {
      out.params["tool_choice"] = "none";
    } else if (type == "tool" && tc.contains("name") && tc["name"].is_string()) {
      out.params["tool_choice"] = Json{{"type", "function"}, {"function", {{"name", tc["name"]}}}};
    } else {
      return MakeError(ErrorCode::kInvalidArgument,
                       "\"tool_choice\" must be {\"type\": \"auto\" | \"any\" | \"none\"} or "
                       "{\"type\": \"tool\", \"name\"}");
    }
    if (tc.contains("disable_parallel_tool_use") && tc["disable_parallel_tool_use"] == true)
      out.params["parallel_tool_calls"] = false;
  }
  for (const char* number : {"temperature", "top_p"}) {
    if (!body.contains(number) || body[number].is_null()) continue;
    if (!body[number].is_number())
      return Errorf(ErrorCode::kInvalidArgument, "\"{}\" must be a number", number);
    out.params[number] = body[number];
  }
  if (body.contains("top_k") && !body["top_k"].is_null()) {
    if (!body["top_k"].is_number_integer() || body["top_k"].get<int64_t>() <= 0)
      return MakeError(ErrorCode::kInvalidArgument, "\"top_k\" must be a positive integer");
    out.params["top_k"] = body["top_k"];
  }
  if (body.contains("stop_sequences") && !body["stop_sequences"].is_null()) {
    const Json& stop = body["stop_sequences"];
    if (!stop.is_array() || stop.size() > 4 ||
        !std::all_of(stop.begin(), stop.end(), [](const Json& s) { return s.is_string(); })) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "\"stop_sequences\" must be up to 4 strings (OpenAI upstreams take 4)");
    }
    out.params["stop"] = stop;
  }
  return out;
}

Json AnthropicMessageJson(const std::string& id, const std::string& alias,
                          const llm::ChatResult& r) {
  Json content = Json::array();
  if (r.message.contains("content") && r.message["content"].is_string() &&
      !r.message["content"].get_ref<const std::string&>().empty()) {
    content.push_back(Json{{"type", "text"}, {"text", r.message["content"]}});
  }
  if (r.message.contains("tool_calls")) {
    for (const Json& tc : r.message["tool_calls"]) {
      auto input = ParseJson(Str(tc["function"], "arguments"));
      content.push_back(Json{{"type", "tool_use"},
                             {"id", Str(tc, "id")},
                             {"name", Str(tc["function"], "name")},
                             {"input", input && input->is_object() ? *input : Json::object()}});
    }
  }
  return Json{{"id", id},
              {"type", "message"},
              {"role", "assistant"},
              {"model", alias},
              {"content", std::move(content)},
              {"stop_reason", StopReason(r.finish_reason)},
              {"stop_sequence", nullptr},
              {"usage",
               {{"input_tokens", r.usage.input_tokens}, {"output_tokens", r.usage.output_tokens}}}};
}

std::string AnthropicEventWriter::Start() {
  if (started_) return "";
  started_ = true;
  return Sse("message_start", Json{{"type", "message_start"},
                                   {"message",
                                    {{"id", id_},
                                     {"type", "message"},
                                     {"role", "assistant"},
                                     {"model", alias_},
                                     {"content", Json::array()},
                                     {"stop_reason", nullptr},
                                     {"stop_sequence", nullptr},
                                     {"usage", {{"input_tokens", 0}, {"output_tokens", 0}}}}}});
}

std::string AnthropicEventWriter::CloseBlock() {
  if (block_ < 0) return "";
  std::string out =
      Sse("content_block_stop", Json{{"type", "content_block_stop"}, {"index", block_}});
  block_ = -1;
  return out;
}

std::string AnthropicEventWriter::OnChunk(const Json& chunk) {
  std::string out = Start();
  const Json* choices = chunk.contains("choices") ? &chunk["choices"] : nullptr;
  if (!choices || !choices->is_array()) return out;
  for (const Json& choice : *choices) {
    const Json* delta = choice.contains("delta") ? &choice["delta"] : nullptr;
    if (!delta || !delta->is_object()) continue;
    if (delta->contains("content") && (*delta)["content"].is_string() &&
        !(*delta)["content"].get_ref<const std::string&>().empty()) {
      if (block_ < 0 || !block_is_text_) {
        out += CloseBlock();
        block_ = blocks_++;
        block_is_text_ = true;
        out +=
            Sse("content_block_start", Json{{"type", "content_block_start"},
                                            {"index", block_},
                                            {"content_block", {{"type", "text"}, {"text", ""}}}});
      }
      out += Sse("content_block_delta",
                 Json{{"type", "content_block_delta"},
                      {"index", block_},
                      {"delta", {{"type", "text_delta"}, {"text", (*delta)["content"]}}}});
    }
    if (delta->contains("tool_calls") && (*delta)["tool_calls"].is_array()) {
      for (const Json& tc : (*delta)["tool_calls"]) {
        const int64_t index = tc.contains("index") && tc["index"].is_number_integer()
                                  ? tc["index"].get<int64_t>()
                                  : 0;
        auto it = tool_blocks_.find(index);
        if (it == tool_blocks_.end()) {
          out += CloseBlock();
          block_ = blocks_++;
          block_is_text_ = false;
          it = tool_blocks_.emplace(index, block_).first;
          const Json* fn = tc.contains("function") ? &tc["function"] : nullptr;
          out += Sse("content_block_start", Json{{"type", "content_block_start"},
                                                 {"index", block_},
                                                 {"content_block",
                                                  {{"type", "tool_use"},
                                                   {"id", Str(tc, "id")},
                                                   {"name", fn ? Str(*fn, "name") : ""},
                                                   {"input", Json::object()}}}});
        }
        // Providers stream one tool call after another. A late piece of a call whose block
        // is closed cannot be sent (Anthropic's blocks do not reopen); the stored reply, which
        // the provider assembles, still has it whole.
        const Json* fn = tc.contains("function") ? &tc["function"] : nullptr;
        if (fn && fn->contains("arguments") && (*fn)["arguments"].is_string() &&
            !(*fn)["arguments"].get_ref<const std::string&>().empty() && it->second == block_) {
          out += Sse("content_block_delta",
                     Json{{"type", "content_block_delta"},
                          {"index", block_},
                          {"delta",
                           {{"type", "input_json_delta"}, {"partial_json", (*fn)["arguments"]}}}});
        }
      }
    }
  }
  return out;
}

std::string AnthropicEventWriter::Finish(const llm::ChatResult& r) {
  std::string out = Start() + CloseBlock();
  out += Sse(
      "message_delta",
      Json{{"type", "message_delta"},
           {"delta", {{"stop_reason", StopReason(r.finish_reason)}, {"stop_sequence", nullptr}}},
           {"usage",
            {{"input_tokens", r.usage.input_tokens}, {"output_tokens", r.usage.output_tokens}}}});
  out += Sse("message_stop", Json{{"type", "message_stop"}});
  return out;
}

std::string AnthropicEventWriter::Error(std::string_view code, std::string_view message) {
  return Sse("error", Json{{"type", "error"}, {"error", {{"type", code}, {"message", message}}}});
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

Result<CompletionsRequest> ParseResponsesRequest(const Json& body) {
  CompletionsRequest out;
  AIRLOCK_TRY(RejectUnknownKeys(body,
                                {"model",
                                 "input",
                                 "instructions",
                                 "tools",
                                 "tool_choice",
                                 "stream",
                                 "temperature",
                                 "top_p",
                                 "max_output_tokens",
                                 "parallel_tool_calls",
                                 "text",
                                 "store",
                                 "metadata",
                                 "user",
                                 "include",
                                 "truncation",
                                 "reasoning",
                                 "service_tier",
                                 "prompt_cache_key",
                                 "prompt_cache_retention",
                                 "prompt_cache_options",
                                 "context_management",
                                 "safety_identifier",
                                 "top_logprobs",
                                 "previous_response_id",
                                 "conversation",
                                 "background",
                                 "prompt",
                                 "stream_options"},
                                "responses request (docs/api.md lists what a client may set)"));
  AIRLOCK_TRY(TakeAliasAndStream(body, out));
  for (const char* stateful : {"previous_response_id", "conversation", "prompt"}) {
    if (body.contains(stateful) && !body[stateful].is_null()) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "\"{}\" names state kept by OpenAI, which is not supported: send the "
                    "whole conversation as \"input\" (the control plane keeps it, each "
                    "message once)",
                    stateful);
    }
  }
  if (body.contains("background") && body["background"] == true)
    return MakeError(ErrorCode::kInvalidArgument, "\"background\" responses are not supported");
  if (body.contains("instructions") && !body["instructions"].is_null()) {
    if (!body["instructions"].is_string())
      return MakeError(ErrorCode::kInvalidArgument, "\"instructions\" must be a string");
    out.messages.push_back(Json{{"role", "system"}, {"content", body["instructions"]}});
  }
  if (!body.contains("input") ||
      !(body["input"].is_string() || (body["input"].is_array() && !body["input"].empty()))) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "\"input\" must be a string or a non-empty array of items: the whole "
                     "conversation");
  }
  const Json& input = body["input"];
  if (input.is_string()) {
    out.messages.push_back(Json{{"role", "user"}, {"content", input}});
  } else {
    if (input.size() > kMaxConversation)
      return Errorf(ErrorCode::kInvalidArgument, "at most {} input items per call",
                    kMaxConversation);
    ResponsesInput items(out.messages);
    for (size_t i = 0; i < input.size(); ++i)
      AIRLOCK_TRY(items.Add(input[i], fmt::format("input[{}]", i)));
    AIRLOCK_TRY(items.Flush("input"));
  }
  if (out.messages.empty() || Str(out.messages.back(), "role") == "system")
    return MakeError(ErrorCode::kInvalidArgument, "\"input\" holds no message to answer");
  if (body.contains("tools") && !body["tools"].is_null()) {
    const Json& tools = body["tools"];
    if (!tools.is_array())
      return MakeError(ErrorCode::kInvalidArgument, "\"tools\" must be an array");
    Json chat = Json::array();
    for (size_t i = 0; i < tools.size(); ++i) {
      const Json& t = tools[i];
      const std::string at = fmt::format("tools[{}]", i);
      if (!t.is_object() || Str(t, "type") != "function") {
        return Errorf(ErrorCode::kInvalidArgument,
                      "{}: only function tools are supported (the sandbox's own tools run in "
                      "the sandbox)",
                      at);
      }
      // OpenAI's tool search and programmatic calling (defer_loading, allowed_callers) and its
      // output schemas have no counterpart upstream: accepted, not forwarded.
      AIRLOCK_TRY(RejectUnknownKeys(t,
                                    {"type", "name", "description", "parameters", "strict",
                                     "defer_loading", "allowed_callers", "output_schema"},
                                    at));
      Json fn{{"name", t.value("name", Json())}};
      for (const char* key : {"description", "parameters", "strict"}) {
        if (t.contains(key) && !t[key].is_null()) fn[key] = t[key];
      }
      chat.push_back(Json{{"type", "function"}, {"function", std::move(fn)}});
    }
    AIRLOCK_ASSIGN_OR_RETURN(out.tools, ValidateChatTools(chat));
  }
  if (body.contains("tool_choice") && !body["tool_choice"].is_null()) {
    const Json& tc = body["tool_choice"];
    if (tc.is_string() && (tc == "auto" || tc == "none" || tc == "required")) {
      out.params["tool_choice"] = tc;
    } else if (tc.is_object() && Str(tc, "type") == "function" && !Str(tc, "name").empty()) {
      out.params["tool_choice"] = Json{{"type", "function"}, {"function", {{"name", tc["name"]}}}};
    } else {
      return MakeError(ErrorCode::kInvalidArgument,
                       "\"tool_choice\" must be \"auto\", \"none\", \"required\" or "
                       "{\"type\": \"function\", \"name\"}");
    }
  }
  for (const Param& p : kClientParams) {
    if (p.name != "temperature" && p.name != "top_p" && p.name != "parallel_tool_calls") continue;
    auto it = body.find(std::string(p.name));
    if (it == body.end() || it->is_null()) continue;
    AIRLOCK_TRY(CheckParam(p, *it));
    out.params[std::string(p.name)] = *it;
  }
  if (body.contains("max_output_tokens") && !body["max_output_tokens"].is_null()) {
    if (!body["max_output_tokens"].is_number_integer() ||
        body["max_output_tokens"].get<int64_t>() <= 0)
      return MakeError(ErrorCode::kInvalidArgument,
                       "\"max_output_tokens\" must be a positive integer");
    out.params["max_tokens"] = body["max_output_tokens"];
  }
  if (body.contains("text") && !body["text"].is_null()) {
    const Json& text = body["text"];
    const Json* format = text.is_object() ? llm::wire::Member(text, "format") : nullptr;
    const std::string type = format != nullptr ? Str(*format, "type") : "text";
    if (!text.is_object() || (format != nullptr && !format->is_object())) {
      return MakeError(ErrorCode::kInvalidArgument, "\"text\" must be {\"format\": {...}}");
    } else if (type == "json_object") {
      out.params["response_format"] = Json{{"type", "json_object"}};
    } else if (type == "json_schema") {
      Json schema{{"name", format->value("name", Json("response"))}};
      for (const char* key : {"schema", "strict", "description"}) {
        if (format->contains(key)) schema[key] = (*format)[key];
      }
      out.params["response_format"] = Json{{"type", "json_schema"}, {"json_schema", schema}};
    } else if (type != "text") {
      return Errorf(ErrorCode::kInvalidArgument,
                    "\"text.format.type\" must be text, json_object or json_schema");
    }
  }
  return out;
}

Json ResponseJson(const std::string& id, const std::string& alias, const llm::ChatResult& r) {
  Json output = Json::array();
  const std::string text = Str(r.message, "content");
  const Json* calls = llm::wire::Member(r.message, "tool_calls");
  const bool has_calls = calls != nullptr && calls->is_array() && !calls->empty();
  if (!text.empty() || !has_calls) {
    output.push_back(Json{{"type", "message"},
                          {"id", ItemId(id, "msg_", 0)},
                          {"status", "completed"},
                          {"role", "assistant"},
                          {"content", Json::array({OutputText(text)})}});
  }
  if (has_calls) {
    for (const Json& tc : *calls) {
      const Json* fn = llm::wire::Member(tc, "function");
      output.push_back(Json{{"type", "function_call"},
                            {"id", ItemId(id, "fc_", static_cast<int64_t>(output.size()))},
                            {"call_id", Str(tc, "id")},
                            {"name", fn != nullptr ? Str(*fn, "name") : ""},
                            {"arguments", fn != nullptr ? Str(*fn, "arguments") : ""},
                            {"status", "completed"}});
    }
  }
  Json incomplete = nullptr;
  if (r.finish_reason == "length") incomplete = Json{{"reason", "max_output_tokens"}};
  if (r.finish_reason == "content_filter") incomplete = Json{{"reason", "content_filter"}};
  const std::string_view status = incomplete.is_null() ? "completed" : "incomplete";
  return ResponseObject(id, alias, status, std::move(output), ResponsesUsage(r.usage),
                        std::move(incomplete));
}

std::string ResponsesEventWriter::Event(std::string_view type, Json data) {
  data["type"] = type;
  data["sequence_number"] = sequence_++;
  return Sse(type, data);
}

std::string ResponsesEventWriter::Start() {
  if (started_) return "";
  started_ = true;
  Json r = ResponseObject(id_, alias_, "in_progress", Json::array(), nullptr);
  std::string out = Event("response.created", Json{{"response", r}});
  return out + Event("response.in_progress", Json{{"response", std::move(r)}});
}

std::string ResponsesEventWriter::CloseItem() {
  if (item_ < 0) return "";
  Json& item = items_[static_cast<size_t>(item_)];
  item["status"] = "completed";
  const std::string item_id = item["id"];
  std::string out;
  if (item_is_message_) {
    item["content"] = Json::array({OutputText(text_)});
    out += Event("response.output_text.done", Json{{"item_id", item_id},
                                                   {"output_index", item_},
                                                   {"content_index", 0},
                                                   {"text", text_},
                                                   {"logprobs", Json::array()}});
    out += Event("response.content_part.done", Json{{"item_id", item_id},
                                                    {"output_index", item_},
                                                    {"content_index", 0},
                                                    {"part", item["content"][0]}});
  } else {
    out += Event("response.function_call_arguments.done", Json{{"item_id", item_id},
                                                               {"output_index", item_},
                                                               {"name", item["name"]},
                                                               {"arguments", item["arguments"]}});
  }
  out += Event("response.output_item.done", Json{{"output_index", item_}, {"item", item}});
  item_ = -1;
  return out;
}

std::string ResponsesEventWriter::OnChunk(const Json& chunk) {
  std::string out = Start();
  const Json* choices = llm::wire::Member(chunk, "choices");
  if (choices == nullptr || !choices->is_array()) return out;
  for (const Json& choice : *choices) {
    const Json* delta = llm::wire::Member(choice, "delta");
    if (delta == nullptr || !delta->is_object()) continue;
    const std::string piece = Str(*delta, "content");
    if (!piece.empty()) {
      if (item_ < 0 || !item_is_message_) {
        out += CloseItem();
        item_ = static_cast<int>(items_.size());
        item_is_message_ = true;
        text_.clear();
        items_.push_back(Json{{"type", "message"},
                              {"id", ItemId(id_, "msg_", item_)},
                              {"status", "in_progress"},
                              {"role", "assistant"},
                              {"content", Json::array()}});
        out += Event("response.output_item.added",
                     Json{{"output_index", item_}, {"item", items_.back()}});
        out += Event("response.content_part.added", Json{{"item_id", items_.back()["id"]},
                                                         {"output_index", item_},
                                                         {"content_index", 0},
                                                         {"part", OutputText("")}});
      }
      text_ += piece;
      out += Event("response.output_text.delta",
                   Json{{"item_id", items_[static_cast<size_t>(item_)]["id"]},
                        {"output_index", item_},
                        {"content_index", 0},
                        {"delta", piece},
                        {"logprobs", Json::array()}});
    }
    const Json* calls = llm::wire::Member(*delta, "tool_calls");
    if (calls == nullptr || !calls->is_array()) continue;
    for (const Json& tc : *calls) {
      const Json* index_value = llm::wire::Member(tc, "index");
      const int64_t index = index_value != nullptr && index_value->is_number_integer()
                                ? index_value->get<int64_t>()
                                : 0;
      const Json* fn = llm::wire::Member(tc, "function");
      auto it = tool_items_.find(index);
      if (it == tool_items_.end()) {
        out += CloseItem();
        item_ = static_cast<int>(items_.size());
        item_is_message_ = false;
        it = tool_items_.emplace(index, item_).first;
        items_.push_back(Json{{"type", "function_call"},
                              {"id", ItemId(id_, "fc_", item_)},
                              {"call_id", Str(tc, "id")},
                              {"name", fn != nullptr ? Str(*fn, "name") : ""},
                              {"arguments", ""},
                              {"status", "in_progress"}});
        out += Event("response.output_item.added",
                     Json{{"output_index", item_}, {"item", items_.back()}});
      }
      // As with Anthropic's blocks, a late piece of a call already closed is not sent; the
      // response at the end holds every call whole.
      const std::string args = fn != nullptr ? Str(*fn, "arguments") : "";
      if (args.empty() || it->second != item_) continue;
      Json& item = items_[static_cast<size_t>(item_)];
      item["arguments"] = item["arguments"].get<std::string>() + args;
      out += Event("response.function_call_arguments.delta",
                   Json{{"item_id", item["id"]}, {"output_index", item_}, {"delta", args}});
    }
  }
  return out;
}

std::string ResponsesEventWriter::Finish(const llm::ChatResult& r) {
  std::string out = Start() + CloseItem();
  Json response = ResponseJson(id_, alias_, r);
  const bool complete = response["status"] == "completed";
  return out + Event(complete ? "response.completed" : "response.incomplete",
                     Json{{"response", std::move(response)}});
}

std::string ResponsesEventWriter::Error(std::string_view code, std::string_view message) {
  return Event("error", Json{{"code", code}, {"message", message}, {"param", nullptr}});
}

Json ModelsJson(const store::Session& s, const Config& config) {
  std::vector<std::string> aliases{s.model};
  if (s.models.is_array()) {
    for (const Json& a : s.models) {
      if (!a.is_string()) continue;
      const std::string& name = a.get_ref<const std::string&>();
      if (std::find(aliases.begin(), aliases.end(), name) == aliases.end()) aliases.push_back(name);
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
