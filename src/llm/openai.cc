// The OpenAI Chat Completions wire format, spoken by OpenAI, vLLM, llama.cpp's server, Ollama
// and LM Studio. The sandbox already speaks this shape, so the request is mostly passed through;
// the work is in reading the answer defensively, because an upstream (or something posing as
// one) can send anything.

#include <cmath>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "llm/chat.h"
#include "llm/wire_util.h"

namespace airlock::llm {

namespace {

using namespace wire;  // the shared readers of upstream JSON

constexpr size_t kMaxErrorToken = 64;

// An error type or code fit for a log line and the sandbox: a short identifier of printable
// ASCII, or nothing. Anything else is dropped rather than cleaned, since it is not a code.
std::optional<std::string> ErrorToken(const Json* v) {
  if (v == nullptr || !v->is_string()) {
    return std::nullopt;
  }
  const auto& s = v->get_ref<const std::string&>();
  if (s.empty() || s.size() > kMaxErrorToken) {
    return std::nullopt;
  }
  for (char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-' || c == '.' || c == ':';
    if (!ok) {
      return std::nullopt;
    }
  }
  return s;
}

// The description of an OpenAI error object ({"type","code","message","param"}): its code when
// it is an identifier, else its type. Never its message, which can quote the key we sent.
std::optional<std::string> DescribeErrorObject(const Json& error) {
  if (auto code = ErrorToken(Member(error, "code"))) {
    return code;
  }
  return ErrorToken(Member(error, "type"));
}

// The OpenAI vocabulary of finish reasons; whatever else a server invents becomes "stop".
std::string NormalizeFinishReason(const std::string& reason, bool has_tool_calls) {
  if (reason == "stop" || reason == "length" || reason == "tool_calls" ||
      reason == "content_filter") {
    return reason;
  }
  if (reason == "function_call") {
    return "tool_calls";
  }
  return has_tool_calls ? "tool_calls" : "stop";
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() &&
         (s.front() == ' ' || s.front() == '\t' || s.front() == '\r' || s.front() == '\n')) {
    s.remove_prefix(1);
  }
  while (!s.empty() &&
         (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n')) {
    s.remove_suffix(1);
  }
  return s;
}

// Function arguments as the sandbox expects them: a string of JSON. Some local servers send
// the object itself; it is dumped so that the sandbox sees one shape.
airlock::Result<std::string> ArgumentsText(const Json* args) {
  if (IsAbsent(args)) {
    return std::string();
  }
  if (args->is_string()) {
    return args->get<std::string>();
  }
  if (args->is_object()) {
    return DumpJson(*args);
  }
  return std::unexpected(Unavailable("upstream tool call arguments must be a string"));
}

// One tool call of a complete reply, reduced to {id, type, function: {name, arguments}}.
airlock::Result<Json> CleanToolCall(const Json& call, size_t position) {
  if (!call.is_object()) {
    return std::unexpected(Unavailable("upstream tool call is not an object"));
  }
  const Json* type = Member(call, "type");
  if (!IsAbsent(type) &&
      !(type->is_string() && type->get_ref<const std::string&>() == "function")) {
    return std::unexpected(Unavailable("upstream tool call is not of type \"function\""));
  }
  const Json* function = Member(call, "function");
  if (function == nullptr || !function->is_object()) {
    return std::unexpected(Unavailable("upstream tool call has no function"));
  }
  const std::string* name = StringMember(*function, "name");
  if (name == nullptr || name->empty()) {
    return std::unexpected(Unavailable("upstream tool call has no function name"));
  }
  AIRLOCK_ASSIGN_OR_RETURN(std::string arguments, ArgumentsText(Member(*function, "arguments")));
  // Some local servers leave the id out; the sandbox needs one to answer the call.
  const std::string* id = StringMember(call, "id");
  Json clean = Json::object();
  clean["id"] = id != nullptr && !id->empty() ? *id : fmt::format("call_{}", position);
  clean["type"] = "function";
  clean["function"] = Json::object();
  clean["function"]["name"] = *name;
  clean["function"]["arguments"] = arguments.empty() ? std::string("{}") : std::move(arguments);
  return clean;
}

// The assistant message of a complete reply, keeping only the fields the sandbox's shape has.
airlock::Result<Json> CleanMessage(const Json& message) {
  if (!message.is_object()) {
    return std::unexpected(Unavailable("upstream reply's message is not an object"));
  }
  Json clean = Json::object();
  clean["role"] = "assistant";
  const Json* content = Member(message, "content");
  if (IsAbsent(content)) {
    clean["content"] = nullptr;
  } else if (content->is_string()) {
    clean["content"] = *content;
  } else {
    return std::unexpected(Unavailable("upstream reply's content is not a string"));
  }
  const Json* calls = Member(message, "tool_calls");
  if (!IsAbsent(calls)) {
    if (!calls->is_array()) {
      return std::unexpected(Unavailable("upstream reply's tool_calls is not an array"));
    }
    if (static_cast<int64_t>(calls->size()) > kMaxToolCalls) {
      return std::unexpected(Unavailable("upstream reply has too many tool calls"));
    }
    if (!calls->empty()) {
      Json clean_calls = Json::array();
      for (size_t i = 0; i < calls->size(); ++i) {
        AIRLOCK_ASSIGN_OR_RETURN(Json call, CleanToolCall((*calls)[i], i));
        clean_calls.push_back(std::move(call));
      }
      clean["tool_calls"] = std::move(clean_calls);
    }
  }
  if (const std::string* refusal = StringMember(message, "refusal")) {
    clean["refusal"] = *refusal;
  }
  return clean;
}

// The usage the provider reported, with what it left out estimated.
struct UsageReport {
  std::optional<int64_t> prompt;
  std::optional<int64_t> completion;
};

Status ReadUsage(const Json* usage, UsageReport& report) {
  if (IsAbsent(usage)) {
    return Ok();
  }
  if (!usage->is_object()) {
    return std::unexpected(Unavailable("upstream usage is not an object"));
  }
  AIRLOCK_ASSIGN_OR_RETURN(report.prompt, TokenCount(*usage, "prompt_tokens"));
  AIRLOCK_ASSIGN_OR_RETURN(report.completion, TokenCount(*usage, "completion_tokens"));
  return Ok();
}

int64_t EstimateOutput(const Json& message) {
  int64_t n = 0;
  for (std::string_view key : {"content", "tool_calls", "refusal"}) {
    if (const Json* v = Member(message, key)) {
      n += EstimateTokens(*v);
    }
  }
  return n;
}

TokenUsage FinishUsage(const UsageReport& report, int64_t input_estimate, const Json& message) {
  TokenUsage usage;
  usage.input_tokens = report.prompt.value_or(input_estimate);
  usage.output_tokens = report.completion ? *report.completion : EstimateOutput(message);
  usage.estimated = !report.prompt || !report.completion;
  return usage;
}

airlock::Result<ChatResult> ParseReply(std::string_view body) {
  auto parsed = ParseJson(body);
  if (!parsed) {
    return Errorf(ErrorCode::kUnavailable, "upstream reply is not valid JSON: {}",
                  parsed.error().message);
  }
  const Json& reply = *parsed;
  if (!reply.is_object()) {
    return std::unexpected(Unavailable("upstream reply is not a JSON object"));
  }
  if (const Json* error = Member(reply, "error"); !IsAbsent(error)) {
    return Errorf(ErrorCode::kUnavailable, "upstream error: {}",
                  DescribeErrorObject(*error).value_or("unknown"));
  }
  const Json* choices = Member(reply, "choices");
  if (choices == nullptr || !choices->is_array() || choices->empty()) {
    return std::unexpected(Unavailable("upstream reply has no choices"));
  }
  const Json& choice = (*choices)[0];
  const Json* message = Member(choice, "message");
  if (message == nullptr) {
    return std::unexpected(Unavailable("upstream reply's first choice has no message"));
  }
  ChatResult result;
  AIRLOCK_ASSIGN_OR_RETURN(result.message, CleanMessage(*message));
  const std::string* finish = StringMember(choice, "finish_reason");
  result.finish_reason = NormalizeFinishReason(finish != nullptr ? *finish : "",
                                               result.message.contains("tool_calls"));
  UsageReport report;
  AIRLOCK_TRY(ReadUsage(Member(reply, "usage"), report));
  // Without the request the prompt cannot be estimated here; the caller, which has it, does
  // that when usage.estimated is set and input_tokens is 0.
  result.usage = FinishUsage(report, 0, result.message);
  return result;
}

// Assembles a streamed reply from `chat.completion.chunk`s and forwards them untouched.
class OpenAiStream final : public StreamTranslator {
 public:
  explicit OpenAiStream(int64_t input_estimate) : input_estimate_(input_estimate) {}

  Status OnEvent(std::string_view event, std::string_view data, std::vector<Json>& out) override {
    if (failure_) {
      return std::unexpected(*failure_);
    }
    if (done_) {
      return Ok();  // Nothing after [DONE] belongs to the reply.
    }
    Status status;
    try {
      status = Handle(event, Trim(data), out);
    } catch (const std::exception&) {
      status = std::unexpected(Unavailable("upstream stream event could not be read"));
    }
    if (!status) {
      failure_ = status.error();
    }
    return status;
  }

  bool finished() const override { return done_; }

  bool reply_complete() const override { return done_ || saw_finish_; }

  TokenUsage Spent() const override {
    Json partial = Json::object();
    partial["content"] = content_;
    partial["refusal"] = refusal_;
    Json calls = Json::array();
    for (const ToolCall& call : tool_calls_) {
      calls.push_back(Json{{"id", call.id},
                           {"function", {{"name", call.name}, {"arguments", call.arguments}}}});
    }
    if (!calls.empty()) {
      partial["tool_calls"] = std::move(calls);
    }
    return FinishUsage(usage_, input_estimate_, partial);
  }

  airlock::Result<ChatResult> Result() override {
    try {
      return Assemble();
    } catch (const std::exception&) {
      return std::unexpected(Unavailable("upstream stream could not be assembled"));
    }
  }

 private:
  struct ToolCall {
    std::string id;
    std::string name;
    std::string arguments;
  };

  Status Handle(std::string_view event, std::string_view data, std::vector<Json>& out) {
    if (data == "[DONE]") {
      done_ = true;
      return Ok();
    }
    if (data.empty()) {
      return event == "error" ? std::unexpected(Unavailable("upstream error: unknown")) : Ok();
    }
    auto parsed = ParseJson(data);
    if (!parsed) {
      return Errorf(ErrorCode::kUnavailable, "upstream stream event is not valid JSON: {}",
                    parsed.error().message);
    }
    Json chunk = std::move(*parsed);
    if (!chunk.is_object()) {
      return std::unexpected(Unavailable("upstream stream event is not a JSON object"));
    }
    if (const Json* error = Member(chunk, "error"); !IsAbsent(error) || event == "error") {
      const std::optional<std::string> what =
          error != nullptr ? DescribeErrorObject(*error) : std::nullopt;
      return Errorf(ErrorCode::kUnavailable, "upstream error: {}", what.value_or("unknown"));
    }
    if (const Json* choices = Member(chunk, "choices"); !IsAbsent(choices)) {
      if (!choices->is_array()) {
        return std::unexpected(Unavailable("upstream chunk's choices is not an array"));
      }
      for (const Json& choice : *choices) {
        AIRLOCK_TRY(ApplyChoice(choice));
      }
    }
    UsageReport report;
    AIRLOCK_TRY(ReadUsage(Member(chunk, "usage"), report));
    if (report.prompt) {
      usage_.prompt = report.prompt;
    }
    if (report.completion) {
      usage_.completion = report.completion;
    }
    out.push_back(std::move(chunk));
    return Ok();
  }

  Status ApplyChoice(const Json& choice) {
    if (!choice.is_object()) {
      return std::unexpected(Unavailable("upstream chunk's choice is not an object"));
    }
    // Only the first choice is assembled (the control plane asks for one); others, which an
    // alias with n > 1 could produce, are forwarded but not stored.
    if (const Json* index = Member(choice, "index"); !IsAbsent(index) && *index != 0) {
      return Ok();
    }
    saw_choice_ = true;
    if (const Json* delta = Member(choice, "delta"); !IsAbsent(delta)) {
      if (!delta->is_object()) {
        return std::unexpected(Unavailable("upstream chunk's delta is not an object"));
      }
      AIRLOCK_TRY(ApplyDelta(*delta));
    }
    if (const Json* finish = Member(choice, "finish_reason"); !IsAbsent(finish)) {
      if (!finish->is_string()) {
        return std::unexpected(Unavailable("upstream chunk's finish_reason is not a string"));
      }
      finish_reason_ = finish->get<std::string>();
      saw_finish_ = true;
    }
    return Ok();
  }

  Status ApplyDelta(const Json& delta) {
    for (std::string_view key : {"content", "refusal"}) {
      const Json* text = Member(delta, key);
      if (IsAbsent(text)) {
        continue;
      }
      if (!text->is_string()) {
        return Errorf(ErrorCode::kUnavailable, "upstream chunk's delta.{} is not a string", key);
      }
      (key == "content" ? content_ : refusal_) += text->get_ref<const std::string&>();
    }
    const Json* calls = Member(delta, "tool_calls");
    if (IsAbsent(calls)) {
      return Ok();
    }
    if (!calls->is_array()) {
      return std::unexpected(Unavailable("upstream chunk's delta.tool_calls is not an array"));
    }
    for (const Json& call : *calls) {
      AIRLOCK_TRY(ApplyToolCallDelta(call));
    }
    return Ok();
  }

  // The first delta of a call carries its id, type and name; later ones (same index) carry
  // pieces of its arguments.
  Status ApplyToolCallDelta(const Json& call) {
    if (!call.is_object()) {
      return std::unexpected(Unavailable("upstream tool call delta is not an object"));
    }
    const std::string* id = StringMember(call, "id");
    size_t slot = 0;
    if (const Json* index = Member(call, "index"); !IsAbsent(index)) {
      if (!index->is_number_integer() || index->get<int64_t>() < 0 ||
          index->get<int64_t>() >= kMaxToolCalls) {
        return std::unexpected(Unavailable("upstream tool call index is out of range"));
      }
      slot = static_cast<size_t>(index->get<int64_t>());
    } else {
      // A server that omits the index: a new id starts a new call, anything else continues
      // the last one.
      const bool new_call =
          tool_calls_.empty() || (id != nullptr && !id->empty() && !tool_calls_.back().id.empty() &&
                                  *id != tool_calls_.back().id);
      if (new_call && static_cast<int64_t>(tool_calls_.size()) >= kMaxToolCalls) {
        return std::unexpected(Unavailable("upstream reply has too many tool calls"));
      }
      slot = new_call ? tool_calls_.size() : tool_calls_.size() - 1;
    }
    if (slot >= tool_calls_.size()) {
      tool_calls_.resize(slot + 1);
    }
    ToolCall& target = tool_calls_[slot];
    const Json* type = Member(call, "type");
    if (!IsAbsent(type) &&
        !(type->is_string() && type->get_ref<const std::string&>() == "function")) {
      return std::unexpected(Unavailable("upstream tool call is not of type \"function\""));
    }
    if (id != nullptr && target.id.empty()) {
      target.id = *id;
    }
    const Json* function = Member(call, "function");
    if (IsAbsent(function)) {
      return Ok();
    }
    if (!function->is_object()) {
      return std::unexpected(Unavailable("upstream tool call's function is not an object"));
    }
    if (const std::string* name = StringMember(*function, "name");
        name != nullptr && target.name.empty()) {
      target.name = *name;
    }
    AIRLOCK_ASSIGN_OR_RETURN(std::string piece, ArgumentsText(Member(*function, "arguments")));
    target.arguments += piece;
    return Ok();
  }

  airlock::Result<ChatResult> Assemble() const {
    if (failure_) {
      return std::unexpected(*failure_);
    }
    // A finish_reason means the reply itself is complete even if the connection dropped
    // before the usage chunk and [DONE]; the usage is then estimated.
    if (!done_ && !saw_finish_) {
      return std::unexpected(Unavailable("upstream stream ended before the reply was complete"));
    }
    if (!saw_choice_) {
      return std::unexpected(Unavailable("upstream stream carried no reply"));
    }
    ChatResult result;
    Json& message = result.message;
    message["role"] = "assistant";
    Json calls = Json::array();
    for (size_t i = 0; i < tool_calls_.size(); ++i) {
      const ToolCall& call = tool_calls_[i];
      if (call.name.empty()) {
        return Errorf(ErrorCode::kUnavailable, "upstream tool call {} has no function name", i);
      }
      Json clean = Json::object();
      clean["id"] = call.id.empty() ? fmt::format("call_{}", i) : call.id;
      clean["type"] = "function";
      clean["function"] = Json::object();
      clean["function"]["name"] = call.name;
      clean["function"]["arguments"] = call.arguments.empty() ? std::string("{}") : call.arguments;
      calls.push_back(std::move(clean));
    }
    const bool content_is_null = content_.empty() && (!calls.empty() || !refusal_.empty());
    message["content"] = content_is_null ? Json(nullptr) : Json(content_);
    if (!calls.empty()) {
      message["tool_calls"] = std::move(calls);
    }
    if (!refusal_.empty()) {
      message["refusal"] = refusal_;
    }
    result.finish_reason = NormalizeFinishReason(finish_reason_, message.contains("tool_calls"));
    result.usage = FinishUsage(usage_, input_estimate_, message);
    return result;
  }

  const int64_t input_estimate_;
  std::string content_;
  std::string refusal_;
  std::vector<ToolCall> tool_calls_;
  std::string finish_reason_;
  UsageReport usage_;
  bool saw_choice_ = false;
  bool saw_finish_ = false;
  bool done_ = false;
  std::optional<Error> failure_;
};

// The same rule as the Anthropic translation, also for history stored before it existed:
// image_url parts are passed through verbatim here, so only data: URLs may be among them.
Status CheckImages(const Json& messages) {
  for (size_t i = 0; i < messages.size(); ++i) {
    const Json* content = Member(messages[i], "content");
    if (content == nullptr || !content->is_array()) {
      continue;
    }
    for (const Json& part : *content) {
      const std::string* type = StringMember(part, "type");
      if (type == nullptr || *type != "image_url") {
        continue;
      }
      const Json* image = Member(part, "image_url");
      const std::string* url = nullptr;
      if (image != nullptr && image->is_string()) {
        url = image->get_ptr<const std::string*>();
      } else if (image != nullptr) {
        url = StringMember(*image, "url");
      }
      if (url == nullptr || !IsDataUrl(*url)) {
        return Errorf(
            ErrorCode::kInvalidArgument,
            "messages[{}]: images must be data: URLs; the provider is never asked to fetch a URL",
            i);
      }
    }
  }
  return Ok();
}

class OpenAiFormat final : public WireFormat {
 public:
  std::string_view kind() const override { return "openai"; }

  airlock::Result<HttpCall> BuildRequest(const ChatRequest& req,
                                         const std::string& api_key) const override {
    try {
      return Build(req, api_key);
    } catch (const std::exception&) {
      return MakeError(ErrorCode::kInternal, "could not build the upstream request");
    }
  }

  airlock::Result<ChatResult> ParseResponse(std::string_view body) const override {
    try {
      return ParseReply(body);
    } catch (const std::exception&) {
      return MakeError(ErrorCode::kUnavailable, "upstream reply could not be read");
    }
  }

  std::unique_ptr<StreamTranslator> NewStream(const ChatRequest& req) const override {
    return std::make_unique<OpenAiStream>(EstimateTokens(req.messages) + EstimateTokens(req.tools));
  }

  std::string DescribeError(unsigned status, std::string_view body) const override {
    try {
      auto parsed = ParseJson(body, 16);
      if (parsed && parsed->is_object()) {
        // OpenAI, llama.cpp and LM Studio nest the fields under "error"; vLLM puts them at the
        // top level of {"object":"error",...}. Ollama's {"error":"text"} has only a message.
        const Json* error = Member(*parsed, "error");
        if (error != nullptr && error->is_object()) {
          if (auto what = DescribeErrorObject(*error)) {
            return *what;
          }
        } else if (const std::string* object = StringMember(*parsed, "object");
                   object != nullptr && *object == "error") {
          if (auto what = DescribeErrorObject(*parsed)) {
            return *what;
          }
        }
      }
    } catch (const std::exception&) {
      // Fall through to the status line, which is all that is safe to say.
    }
    return HttpStatusText(status);
  }

 private:
  static airlock::Result<HttpCall> Build(const ChatRequest& req, const std::string& api_key) {
    AIRLOCK_TRY(CheckHeaderValue(api_key));
    if (req.model.empty()) {
      return MakeError(ErrorCode::kInvalidArgument, "no upstream model is set");
    }
    if (!req.messages.is_array() || req.messages.empty()) {
      return MakeError(ErrorCode::kInvalidArgument, "messages must be a non-empty array");
    }
    if (!req.tools.is_null() && !req.tools.is_array()) {
      return MakeError(ErrorCode::kInvalidArgument, "tools must be an array");
    }
    if (!req.params.is_null() && !req.params.is_object()) {
      return MakeError(ErrorCode::kInvalidArgument, "the model alias's params must be an object");
    }
    AIRLOCK_TRY(CheckImages(req.messages));
    // The operator's params go first so that the conversation's own fields win: an alias
    // can tune sampling but cannot swap the model, the history, the tools or the streaming.
    Json body = req.params.is_object() ? req.params : Json::object();
    body.erase("tools");
    body.erase("stream_options");
    body["model"] = req.model;
    body["messages"] = nullptr;  // written from req.messages, the body's bulk, without a copy
    if (req.tools.is_array() && !req.tools.empty()) {
      body["tools"] = req.tools;
    }
    body["stream"] = req.stream;
    if (req.stream) {
      // Without this the stream carries no usage and every streamed call would be estimated.
      body["stream_options"] = Json::object();
      body["stream_options"]["include_usage"] = true;
    }
    HttpCall call;
    call.path = "/chat/completions";
    if (!api_key.empty()) {
      call.headers.emplace_back("Authorization", "Bearer " + api_key);
    }
    call.headers.emplace_back("Content-Type", "application/json");
    call.headers.emplace_back("Accept", req.stream ? "text/event-stream" : "application/json");
    call.body = DumpJsonWithMember(body, "messages", req.messages);
    return call;
  }
};

}  // namespace

std::unique_ptr<WireFormat> MakeOpenAiFormat() { return std::make_unique<OpenAiFormat>(); }

}  // namespace airlock::llm
