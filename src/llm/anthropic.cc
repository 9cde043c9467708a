// The Anthropic Messages API (POST /v1/messages), translated to and from the OpenAI shape the
// sandbox speaks. The two differ in where the system prompt lives (a top-level field, not a
// message), in how tool calls travel (content blocks inside the assistant and user turns, not
// separate fields and a "tool" role), and in that roles must alternate, starting with the user.

#include <cmath>
#include <ctime>
#include <map>
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

constexpr std::string_view kAnthropicVersion = "2023-06-01";
constexpr int64_t kDefaultMaxTokens = 4096;
// Bounds on what one reply may hold, so that a hostile stream cannot make us track block
// index 2^40.
constexpr int64_t kMaxContentBlocks = 1024;
constexpr size_t kMaxErrorToken = 64;

// The error type of {"type":"error","error":{"type","message"}} when it is a short identifier;
// never the message, which can quote what we sent.
std::optional<std::string> ErrorType(const Json& body) {
  const Json* error = Member(body, "error");
  const std::string* type = error != nullptr ? StringMember(*error, "type") : nullptr;
  if (type == nullptr || type->empty() || type->size() > kMaxErrorToken) {
    return std::nullopt;
  }
  for (char c : *type) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-' || c == '.' || c == ':';
    if (!ok) {
      return std::nullopt;
    }
  }
  return *type;
}

// Anthropic's stop reasons in the OpenAI vocabulary.
std::string FinishReason(const std::string* stop_reason, bool has_tool_calls) {
  if (stop_reason != nullptr) {
    const std::string& r = *stop_reason;
    if (r == "end_turn" || r == "stop_sequence" || r == "pause_turn") {
      return "stop";
    }
    if (r == "tool_use") {
      return "tool_calls";
    }
    if (r == "max_tokens" || r == "model_context_window_exceeded") {
      return "length";
    }
    if (r == "refusal") {
      return "content_filter";
    }
  }
  return has_tool_calls ? "tool_calls" : "stop";
}

// ---------------------------------------------------------------------------------------------
// Request: OpenAI history → Anthropic messages.

Json TextBlock(std::string text) {
  Json block = Json::object();
  block["type"] = "text";
  block["text"] = std::move(text);
  return block;
}

// Anthropic tool ids must match ^[a-zA-Z0-9_-]+$; ids minted by other providers may not. The
// mapping is deterministic, so a tool_use and the tool_result answering it still agree.
std::string AnthropicToolId(std::string_view id) {
  std::string out(id);
  for (char& c : out) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-';
    if (!ok) {
      c = '_';
    }
  }
  return out;
}

// The text of a system or tool message: a string, or OpenAI text parts (joined by newlines).
airlock::Result<std::string> PlainText(const Json* content, size_t index) {
  if (IsAbsent(content)) {
    return std::string();
  }
  if (content->is_string()) {
    return content->get<std::string>();
  }
  if (!content->is_array()) {
    return Errorf(ErrorCode::kInvalidArgument, "messages[{}].content must be a string or an array",
                  index);
  }
  std::string text;
  for (const Json& part : *content) {
    const std::string* type = StringMember(part, "type");
    const std::string* part_text = StringMember(part, "text");
    if (type == nullptr || *type != "text" || part_text == nullptr) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "messages[{}].content may only hold text parts here", index);
    }
    if (!text.empty()) {
      text += '\n';
    }
    text += *part_text;
  }
  return text;
}

// An OpenAI image_url part with a data: URL → an Anthropic base64 image block. Other URLs are
// refused: the control plane does not make the upstream fetch what the sandbox names.
airlock::Result<Json> ImageBlock(const Json& part, size_t index) {
  const Json* image_url = Member(part, "image_url");
  const std::string* url = nullptr;
  if (image_url != nullptr && image_url->is_string()) {
    url = image_url->get_ptr<const std::string*>();
  } else if (image_url != nullptr) {
    url = StringMember(*image_url, "url");
  }
  if (url == nullptr) {
    return Errorf(ErrorCode::kInvalidArgument, "messages[{}]: image_url part has no url", index);
  }
  std::string_view rest(*url);
  constexpr std::string_view kData = "data:";
  constexpr std::string_view kBase64 = ";base64";
  const size_t comma = rest.find(',');
  if (!rest.starts_with(kData) || comma == std::string_view::npos ||
      !rest.substr(0, comma).ends_with(kBase64)) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "messages[{}]: images must be base64 data: URLs for this provider", index);
  }
  std::string media(rest.substr(kData.size(), comma - kData.size() - kBase64.size()));
  if (const size_t semi = media.find(';'); semi != std::string::npos) {
    media.resize(semi);
  }
  for (char& c : media) {
    if (c >= 'A' && c <= 'Z') {
      c = static_cast<char>(c - 'A' + 'a');
    }
  }
  if (media == "image/jpg") {
    media = "image/jpeg";
  }
  if (media != "image/jpeg" && media != "image/png" && media != "image/gif" &&
      media != "image/webp") {
    return Errorf(ErrorCode::kInvalidArgument,
                  "messages[{}]: image type must be jpeg, png, gif or webp", index);
  }
  const std::string_view data = rest.substr(comma + 1);
  if (data.empty()) {
    return Errorf(ErrorCode::kInvalidArgument, "messages[{}]: image data is empty", index);
  }
  Json block = Json::object();
  block["type"] = "image";
  block["source"] = Json::object();
  block["source"]["type"] = "base64";
  block["source"]["media_type"] = media;
  block["source"]["data"] = std::string(data);
  return block;
}

airlock::Result<Json> UserBlocks(const Json* content, size_t index) {
  Json blocks = Json::array();
  if (IsAbsent(content)) {
    return blocks;
  }
  if (content->is_string()) {
    // Anthropic refuses empty text blocks.
    if (!content->get_ref<const std::string&>().empty()) {
      blocks.push_back(TextBlock(content->get<std::string>()));
    }
    return blocks;
  }
  if (!content->is_array()) {
    return Errorf(ErrorCode::kInvalidArgument, "messages[{}].content must be a string or an array",
                  index);
  }
  for (const Json& part : *content) {
    const std::string* type = StringMember(part, "type");
    if (type != nullptr && *type == "text") {
      const std::string* text = StringMember(part, "text");
      if (text == nullptr) {
        return Errorf(ErrorCode::kInvalidArgument, "messages[{}]: text part has no text", index);
      }
      if (!text->empty()) {
        blocks.push_back(TextBlock(*text));
      }
    } else if (type != nullptr && *type == "image_url") {
      AIRLOCK_ASSIGN_OR_RETURN(Json image, ImageBlock(part, index));
      blocks.push_back(std::move(image));
    } else {
      return Errorf(ErrorCode::kInvalidArgument,
                    "messages[{}]: only text and image_url parts are supported", index);
    }
  }
  return blocks;
}

// An assistant turn: its text (if any), then one tool_use block per tool call.
airlock::Result<Json> AssistantBlocks(const Json& message, size_t index) {
  Json blocks = Json::array();
  const Json* content = Member(message, "content");
  if (!IsAbsent(content)) {
    std::string text;
    if (content->is_string()) {
      text = content->get<std::string>();
    } else if (content->is_array()) {
      for (const Json& part : *content) {
        const std::string* type = StringMember(part, "type");
        const std::string* part_text = StringMember(part, "text");
        if (type != nullptr && (*type == "text" || *type == "refusal")) {
          const std::string* refusal = StringMember(part, "refusal");
          text += part_text != nullptr ? *part_text : (refusal != nullptr ? *refusal : "");
        } else {
          return Errorf(ErrorCode::kInvalidArgument,
                        "messages[{}]: assistant content may only hold text parts", index);
        }
      }
    } else {
      return Errorf(ErrorCode::kInvalidArgument,
                    "messages[{}].content must be a string, an array or null", index);
    }
    if (!text.empty()) {
      blocks.push_back(TextBlock(std::move(text)));
    }
  }
  const Json* calls = Member(message, "tool_calls");
  if (IsAbsent(calls)) {
    return blocks;
  }
  if (!calls->is_array()) {
    return Errorf(ErrorCode::kInvalidArgument, "messages[{}].tool_calls must be an array", index);
  }
  for (size_t k = 0; k < calls->size(); ++k) {
    const Json& call = (*calls)[k];
    const std::string* id = StringMember(call, "id");
    const Json* function = Member(call, "function");
    const std::string* name = function != nullptr ? StringMember(*function, "name") : nullptr;
    if (id == nullptr || id->empty() || name == nullptr || name->empty()) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "messages[{}].tool_calls[{}] needs an id and a function name", index, k);
    }
    const Json* arguments = Member(*function, "arguments");
    Json input = Json::object();
    if (arguments != nullptr && arguments->is_string() &&
        !arguments->get_ref<const std::string&>().empty()) {
      auto parsed = ParseJson(arguments->get_ref<const std::string&>());
      if (!parsed || !parsed->is_object()) {
        return Errorf(ErrorCode::kInvalidArgument,
                      "messages[{}]: the arguments of tool call \"{}\" are not a JSON object",
                      index, id->substr(0, 64));
      }
      input = std::move(*parsed);
    } else if (arguments != nullptr && arguments->is_object()) {
      input = *arguments;
    } else if (!IsAbsent(arguments) && !arguments->is_string()) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "messages[{}]: the arguments of tool call \"{}\" must be a string", index,
                    id->substr(0, 64));
    }
    Json block = Json::object();
    block["type"] = "tool_use";
    block["id"] = AnthropicToolId(*id);
    block["name"] = *name;
    block["input"] = std::move(input);
    blocks.push_back(std::move(block));
  }
  return blocks;
}

airlock::Result<Json> ToolResultBlock(const Json& message, size_t index) {
  const std::string* id = StringMember(message, "tool_call_id");
  if (id == nullptr || id->empty()) {
    return Errorf(ErrorCode::kInvalidArgument, "messages[{}]: a tool message needs tool_call_id",
                  index);
  }
  AIRLOCK_ASSIGN_OR_RETURN(std::string text, PlainText(Member(message, "content"), index));
  Json block = Json::object();
  block["type"] = "tool_result";
  block["tool_use_id"] = AnthropicToolId(*id);
  if (!text.empty()) {
    block["content"] = std::move(text);
  }
  return block;
}

struct Conversation {
  std::string system;
  Json messages = Json::array();
};

airlock::Result<Conversation> TranslateMessages(const Json& messages) {
  Conversation out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const Json& message = messages[i];
    const std::string* role = StringMember(message, "role");
    if (role == nullptr) {
      return Errorf(ErrorCode::kInvalidArgument, "messages[{}] needs a role", i);
    }
    std::string_view target;
    Json blocks = Json::array();
    if (*role == "system" || *role == "developer") {
      AIRLOCK_ASSIGN_OR_RETURN(std::string text, PlainText(Member(message, "content"), i));
      if (!text.empty()) {
        if (!out.system.empty()) {
          out.system += "\n\n";
        }
        out.system += text;
      }
      continue;
    }
    if (*role == "user") {
      target = "user";
      AIRLOCK_ASSIGN_OR_RETURN(blocks, UserBlocks(Member(message, "content"), i));
    } else if (*role == "assistant") {
      target = "assistant";
      AIRLOCK_ASSIGN_OR_RETURN(blocks, AssistantBlocks(message, i));
    } else if (*role == "tool") {
      target = "user";
      AIRLOCK_ASSIGN_OR_RETURN(Json block, ToolResultBlock(message, i));
      blocks.push_back(std::move(block));
    } else {
      return Errorf(ErrorCode::kInvalidArgument, "messages[{}] has an unsupported role", i);
    }
    // Anthropic refuses empty turns, and a model can legitimately have answered with nothing;
    // such a turn carries no information, so it is left out rather than failing the call.
    if (blocks.empty()) {
      continue;
    }
    // Roles must alternate: a turn of the same role as the previous one joins it. This puts
    // all tool results of one assistant turn, and any user text after them, in one message.
    if (!out.messages.empty() && out.messages.back()["role"] == std::string(target)) {
      Json& content = out.messages.back()["content"];
      for (Json& block : blocks) {
        content.push_back(std::move(block));
      }
      continue;
    }
    Json turn = Json::object();
    turn["role"] = std::string(target);
    turn["content"] = std::move(blocks);
    out.messages.push_back(std::move(turn));
  }
  if (out.messages.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "the conversation has no user message");
  }
  if (out.messages.front()["role"] != "user") {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the conversation must start with a user message for this provider");
  }
  // A turn that is one text block reads as plain string content, as people write it.
  for (Json& turn : out.messages) {
    Json& content = turn["content"];
    if (content.size() == 1 && content[0]["type"] == "text") {
      Json text = std::move(content[0]["text"]);
      content = std::move(text);
    }
  }
  return out;
}

airlock::Result<Json> TranslateTools(const Json& tools) {
  Json out = Json::array();
  for (size_t i = 0; i < tools.size(); ++i) {
    const Json& tool = tools[i];
    const std::string* type = StringMember(tool, "type");
    const Json* function = Member(tool, "function");
    const std::string* name = function != nullptr ? StringMember(*function, "name") : nullptr;
    if ((type != nullptr && *type != "function") || name == nullptr || name->empty()) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "tools[{}] must be {{\"type\":\"function\",\"function\":{{\"name\",...}}}}", i);
    }
    Json translated = Json::object();
    translated["name"] = *name;
    if (const std::string* description = StringMember(*function, "description")) {
      translated["description"] = *description;
    }
    const Json* parameters = Member(*function, "parameters");
    if (parameters != nullptr && parameters->is_object()) {
      translated["input_schema"] = *parameters;
    } else {
      translated["input_schema"] = Json::object();
      translated["input_schema"]["type"] = "object";
      translated["input_schema"]["properties"] = Json::object();
    }
    out.push_back(std::move(translated));
  }
  return out;
}

airlock::Result<HttpCall> Build(const ChatRequest& req, const std::string& api_key) {
  AIRLOCK_TRY(CheckHeaderValue(api_key));
  if (req.model.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "no upstream model is set");
  }
  if (!req.messages.is_array()) {
    return MakeError(ErrorCode::kInvalidArgument, "messages must be an array");
  }
  if (!req.tools.is_null() && !req.tools.is_array()) {
    return MakeError(ErrorCode::kInvalidArgument, "tools must be an array");
  }
  if (!req.params.is_null() && !req.params.is_object()) {
    return MakeError(ErrorCode::kInvalidArgument, "the model alias's params must be an object");
  }
  AIRLOCK_ASSIGN_OR_RETURN(Conversation conversation, TranslateMessages(req.messages));

  // The operator's params go first so that the conversation's own fields win: an alias can
  // tune sampling but cannot swap the model, the history, the tools or the streaming.
  Json body = req.params.is_object() ? req.params : Json::object();
  for (std::string_view owned : {"system", "tools", "stream", "messages"}) {
    body.erase(std::string(owned));
  }
  body["model"] = req.model;
  // Anthropic requires max_tokens; an alias that does not set it gets a sane default.
  auto max_tokens = OptionalInt(body, "max_tokens");
  if (!max_tokens || (*max_tokens && **max_tokens <= 0)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the model alias's max_tokens must be a positive integer");
  }
  body["max_tokens"] = max_tokens->value_or(kDefaultMaxTokens);
  if (!conversation.system.empty()) {
    body["system"] = std::move(conversation.system);
  }
  body["messages"] = std::move(conversation.messages);
  if (req.tools.is_array() && !req.tools.empty()) {
    AIRLOCK_ASSIGN_OR_RETURN(body["tools"], TranslateTools(req.tools));
  }
  if (req.stream) {
    body["stream"] = true;
  }
  HttpCall call;
  call.path = "/v1/messages";
  if (!api_key.empty()) {
    call.headers.emplace_back("x-api-key", api_key);
  }
  call.headers.emplace_back("anthropic-version", std::string(kAnthropicVersion));
  call.headers.emplace_back("content-type", "application/json");
  call.body = DumpJson(body);
  return call;
}

// ---------------------------------------------------------------------------------------------
// Reply: Anthropic message → OpenAI assistant message.

// Input tokens as Anthropic counts them exclude what was written to or read from the prompt
// cache; the session pays for those too.
struct UsageReport {
  std::optional<int64_t> input;
  std::optional<int64_t> output;
  int64_t cache_read = 0;
};

Status ReadUsage(const Json* usage, UsageReport& report) {
  if (IsAbsent(usage)) {
    return Ok();
  }
  if (!usage->is_object()) {
    return std::unexpected(Unavailable("upstream usage is not an object"));
  }
  AIRLOCK_ASSIGN_OR_RETURN(auto input, TokenCount(*usage, "input_tokens"));
  AIRLOCK_ASSIGN_OR_RETURN(auto output, TokenCount(*usage, "output_tokens"));
  AIRLOCK_ASSIGN_OR_RETURN(auto created, TokenCount(*usage, "cache_creation_input_tokens"));
  AIRLOCK_ASSIGN_OR_RETURN(auto read, TokenCount(*usage, "cache_read_input_tokens"));
  if (input) {
    report.input = *input + created.value_or(0) + read.value_or(0);
    report.cache_read = read.value_or(0);
  }
  if (output) {
    report.output = output;
  }
  return Ok();
}

int64_t EstimateOutput(const Json& message) {
  int64_t n = 0;
  for (std::string_view key : {"content", "tool_calls"}) {
    if (const Json* v = Member(message, key)) {
      n += EstimateTokens(*v);
    }
  }
  return n;
}

TokenUsage FinishUsage(const UsageReport& report, int64_t input_estimate, const Json& message) {
  TokenUsage usage;
  usage.input_tokens = report.input.value_or(input_estimate);
  usage.output_tokens = report.output ? *report.output : EstimateOutput(message);
  usage.estimated = !report.input || !report.output;
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
  const std::string* type = StringMember(reply, "type");
  if (type != nullptr && *type == "error") {
    return Errorf(ErrorCode::kUnavailable, "upstream error: {}",
                  ErrorType(reply).value_or("unknown"));
  }
  if (type == nullptr || *type != "message") {
    return std::unexpected(Unavailable("upstream reply is not a message"));
  }
  const Json* content = Member(reply, "content");
  if (content == nullptr || !content->is_array()) {
    return std::unexpected(Unavailable("upstream reply's content is not an array"));
  }
  std::string text;
  Json calls = Json::array();
  for (const Json& block : *content) {
    const std::string* block_type = StringMember(block, "type");
    if (block_type == nullptr) {
      return std::unexpected(Unavailable("upstream reply has a content block without a type"));
    }
    if (*block_type == "text") {
      const std::string* block_text = StringMember(block, "text");
      if (block_text == nullptr) {
        return std::unexpected(Unavailable("upstream text block has no text"));
      }
      text += *block_text;
    } else if (*block_type == "tool_use") {
      const std::string* id = StringMember(block, "id");
      const std::string* name = StringMember(block, "name");
      const Json* input = Member(block, "input");
      if (id == nullptr || id->empty() || name == nullptr || name->empty()) {
        return std::unexpected(Unavailable("upstream tool_use block needs an id and a name"));
      }
      if (!IsAbsent(input) && !input->is_object()) {
        return std::unexpected(Unavailable("upstream tool_use input is not an object"));
      }
      if (static_cast<int64_t>(calls.size()) >= kMaxToolCalls) {
        return std::unexpected(Unavailable("upstream reply has too many tool calls"));
      }
      calls.push_back(OpenAiToolCall(*id, *name, IsAbsent(input) ? "{}" : DumpJson(*input)));
    }
    // Thinking and server-tool blocks have no place in the OpenAI shape and are dropped.
  }
  ChatResult result;
  result.message["role"] = "assistant";
  result.message["content"] = text.empty() ? Json(nullptr) : Json(text);
  const bool has_calls = !calls.empty();
  if (has_calls) {
    result.message["tool_calls"] = std::move(calls);
  }
  result.finish_reason = FinishReason(StringMember(reply, "stop_reason"), has_calls);
  UsageReport report;
  AIRLOCK_TRY(ReadUsage(Member(reply, "usage"), report));
  // Without the request the prompt cannot be estimated here; the caller, which has it, does
  // that when usage.estimated is set and input_tokens is 0.
  result.usage = FinishUsage(report, 0, result.message);
  return result;
}

// ---------------------------------------------------------------------------------------------
// Streaming: Anthropic events → OpenAI chat.completion.chunk objects.

class AnthropicStream final : public StreamTranslator {
 public:
  AnthropicStream(std::string model, int64_t input_estimate)
      : model_(std::move(model)),
        input_estimate_(input_estimate),
        created_(static_cast<int64_t>(std::time(nullptr))) {}

  Status OnEvent(std::string_view event, std::string_view data, std::vector<Json>& out) override {
    if (failure_) {
      return std::unexpected(*failure_);
    }
    if (done_) {
      return Ok();  // Nothing after message_stop belongs to the reply.
    }
    Status status;
    try {
      status = Handle(event, data, out);
    } catch (const std::exception&) {
      status = std::unexpected(Unavailable("upstream stream event could not be read"));
    }
    if (!status) {
      failure_ = status.error();
    }
    return status;
  }

  bool finished() const override { return done_; }

  bool reply_complete() const override { return done_ || stop_reason_.has_value(); }

  // message_start already reported the prompt; the output is message_delta's count when it
  // came, else estimated from what was streamed.
  TokenUsage Spent() const override {
    return FinishUsage(usage_, input_estimate_, AssembledMessage());
  }

  airlock::Result<ChatResult> Result() override {
    try {
      return Assemble();
    } catch (const std::exception&) {
      return std::unexpected(Unavailable("upstream stream could not be assembled"));
    }
  }

 private:
  enum class BlockKind { kText, kToolUse, kOther };
  struct Block {
    BlockKind kind = BlockKind::kOther;
    size_t tool = 0;  // index into tool_calls_ for kToolUse
    bool open = true;
  };
  struct ToolCall {
    std::string id;
    std::string name;
    std::string arguments;
  };

  Status Handle(std::string_view event, std::string_view data, std::vector<Json>& out) {
    const bool blank = data.find_first_not_of(" \t\r\n") == std::string_view::npos;
    if (blank) {
      if (event == "error") {
        return std::unexpected(Unavailable("upstream error: unknown"));
      }
      return Ok();  // A ping or keep-alive without data.
    }
    auto parsed = ParseJson(data);
    if (!parsed) {
      return Errorf(ErrorCode::kUnavailable, "upstream stream event is not valid JSON: {}",
                    parsed.error().message);
    }
    const Json& e = *parsed;
    if (!e.is_object()) {
      return std::unexpected(Unavailable("upstream stream event is not a JSON object"));
    }
    // The data's own type is authoritative; the SSE event name repeats it.
    const std::string* type_field = StringMember(e, "type");
    const std::string_view type = type_field != nullptr ? std::string_view(*type_field) : event;
    if (type == "error" || event == "error") {
      return Errorf(ErrorCode::kUnavailable, "upstream error: {}",
                    ErrorType(e).value_or("unknown"));
    }
    if (type == "message_start") {
      return OnMessageStart(e, out);
    }
    if (type == "ping") {
      return Ok();
    }
    if (!started_) {
      return std::unexpected(Unavailable("upstream stream did not begin with message_start"));
    }
    if (type == "content_block_start") {
      return OnBlockStart(e, out);
    }
    if (type == "content_block_delta") {
      return OnBlockDelta(e, out);
    }
    if (type == "content_block_stop") {
      return OnBlockStop(e, out);
    }
    if (type == "message_delta") {
      return OnMessageDelta(e, out);
    }
    if (type == "message_stop") {
      done_ = true;
      out.push_back(UsageChunk());
      return Ok();
    }
    return Ok();  // Anthropic may add event types; unknown ones are skipped, as it advises.
  }

  Status OnMessageStart(const Json& e, std::vector<Json>& out) {
    if (started_) {
      return std::unexpected(Unavailable("upstream stream sent message_start twice"));
    }
    const Json* message = Member(e, "message");
    if (message == nullptr || !message->is_object()) {
      return std::unexpected(Unavailable("upstream message_start has no message"));
    }
    const std::string* id = StringMember(*message, "id");
    if (id == nullptr || id->empty()) {
      return std::unexpected(Unavailable("upstream message_start has no message id"));
    }
    id_ = *id;
    if (const std::string* model = StringMember(*message, "model"); model != nullptr) {
      model_ = *model;
    }
    AIRLOCK_TRY(ReadUsage(Member(*message, "usage"), usage_));
    // message_start's output_tokens is a placeholder (1 or so); the count is message_delta's.
    usage_.output.reset();
    started_ = true;
    Json delta = Json::object();
    delta["role"] = "assistant";
    delta["content"] = "";
    out.push_back(Chunk(std::move(delta)));
    return Ok();
  }

  airlock::Result<int64_t> BlockIndex(const Json& e) const {
    const Json* index = Member(e, "index");
    if (index == nullptr || !index->is_number_integer() || index->get<int64_t>() < 0 ||
        index->get<int64_t>() >= kMaxContentBlocks) {
      return std::unexpected(
          Unavailable("upstream content block index is missing or out of range"));
    }
    return index->get<int64_t>();
  }

  Status OnBlockStart(const Json& e, std::vector<Json>& out) {
    AIRLOCK_ASSIGN_OR_RETURN(int64_t index, BlockIndex(e));
    if (blocks_.contains(index)) {
      return std::unexpected(Unavailable("upstream stream started a content block twice"));
    }
    const Json* block = Member(e, "content_block");
    const std::string* type = block != nullptr ? StringMember(*block, "type") : nullptr;
    if (type == nullptr) {
      return std::unexpected(Unavailable("upstream content_block_start has no block type"));
    }
    Block& b = blocks_[index];
    if (*type == "text") {
      b.kind = BlockKind::kText;
      if (const std::string* text = StringMember(*block, "text");
          text != nullptr && !text->empty()) {
        AppendText(*text, out);
      }
    } else if (*type == "tool_use") {
      const std::string* id = StringMember(*block, "id");
      const std::string* name = StringMember(*block, "name");
      if (id == nullptr || id->empty() || name == nullptr || name->empty()) {
        return std::unexpected(Unavailable("upstream tool_use block needs an id and a name"));
      }
      if (static_cast<int64_t>(tool_calls_.size()) >= kMaxToolCalls) {
        return std::unexpected(Unavailable("upstream reply has too many tool calls"));
      }
      b.kind = BlockKind::kToolUse;
      b.tool = tool_calls_.size();
      tool_calls_.push_back(ToolCall{*id, *name, ""});
      Json call = Json::object();
      call["index"] = b.tool;
      call["id"] = *id;
      call["type"] = "function";
      call["function"] = Json::object();
      call["function"]["name"] = *name;
      call["function"]["arguments"] = "";
      out.push_back(ToolCallChunk(std::move(call)));
      // Input normally arrives as input_json_delta; a start that already carries it is kept.
      if (const Json* input = Member(*block, "input");
          input != nullptr && input->is_object() && !input->empty()) {
        AppendArguments(b.tool, DumpJson(*input), out);
      }
    }
    return Ok();
  }

  Status OnBlockDelta(const Json& e, std::vector<Json>& out) {
    AIRLOCK_ASSIGN_OR_RETURN(int64_t index, BlockIndex(e));
    auto it = blocks_.find(index);
    if (it == blocks_.end() || !it->second.open) {
      return std::unexpected(Unavailable("upstream delta for a content block that is not open"));
    }
    const Json* delta = Member(e, "delta");
    const std::string* type = delta != nullptr ? StringMember(*delta, "type") : nullptr;
    if (type == nullptr) {
      return std::unexpected(Unavailable("upstream content_block_delta has no delta type"));
    }
    const Block& b = it->second;
    if (*type == "text_delta") {
      const std::string* text = StringMember(*delta, "text");
      if (b.kind != BlockKind::kText || text == nullptr) {
        return std::unexpected(Unavailable("upstream text_delta does not fit its block"));
      }
      if (!text->empty()) {
        AppendText(*text, out);
      }
    } else if (*type == "input_json_delta") {
      const std::string* partial = StringMember(*delta, "partial_json");
      if (b.kind != BlockKind::kToolUse || partial == nullptr) {
        return std::unexpected(Unavailable("upstream input_json_delta does not fit its block"));
      }
      if (!partial->empty()) {
        AppendArguments(b.tool, *partial, out);
      }
    }
    // thinking_delta, signature_delta and citations_delta have no OpenAI counterpart.
    return Ok();
  }

  Status OnBlockStop(const Json& e, std::vector<Json>& out) {
    AIRLOCK_ASSIGN_OR_RETURN(int64_t index, BlockIndex(e));
    auto it = blocks_.find(index);
    if (it == blocks_.end() || !it->second.open) {
      return std::unexpected(Unavailable("upstream stopped a content block that is not open"));
    }
    it->second.open = false;
    // A tool without parameters gets no input_json_delta at all; "" is not JSON, so the
    // sandbox is told "{}" as OpenAI would.
    if (it->second.kind == BlockKind::kToolUse && tool_calls_[it->second.tool].arguments.empty()) {
      AppendArguments(it->second.tool, "{}", out);
    }
    return Ok();
  }

  Status OnMessageDelta(const Json& e, std::vector<Json>& out) {
    AIRLOCK_TRY(ReadUsage(Member(e, "usage"), usage_));
    const Json* delta = Member(e, "delta");
    const Json* stop = delta != nullptr ? Member(*delta, "stop_reason") : nullptr;
    if (IsAbsent(stop)) {
      return Ok();
    }
    if (!stop->is_string()) {
      return std::unexpected(Unavailable("upstream stop_reason is not a string"));
    }
    stop_reason_ = stop->get<std::string>();
    out.push_back(Chunk(Json::object(), Json(FinishReason(&*stop_reason_, !tool_calls_.empty()))));
    return Ok();
  }

  void AppendText(const std::string& text, std::vector<Json>& out) {
    text_ += text;
    Json delta = Json::object();
    delta["content"] = text;
    out.push_back(Chunk(std::move(delta)));
  }

  void AppendArguments(size_t tool, const std::string& piece, std::vector<Json>& out) {
    tool_calls_[tool].arguments += piece;
    Json call = Json::object();
    call["index"] = tool;
    call["function"] = Json::object();
    call["function"]["arguments"] = piece;
    out.push_back(ToolCallChunk(std::move(call)));
  }

  Json Chunk(Json delta, Json finish_reason = nullptr) const {
    Json choice = Json::object();
    choice["index"] = 0;
    choice["delta"] = std::move(delta);
    choice["finish_reason"] = std::move(finish_reason);
    Json chunk = Header();
    chunk["choices"] = Json::array();
    chunk["choices"].push_back(std::move(choice));
    return chunk;
  }

  Json ToolCallChunk(Json call) const {
    Json delta = Json::object();
    delta["tool_calls"] = Json::array();
    delta["tool_calls"].push_back(std::move(call));
    return Chunk(std::move(delta));
  }

  Json UsageChunk() const {
    const TokenUsage usage = FinishUsage(usage_, input_estimate_, AssembledMessage());
    Json chunk = Header();
    chunk["choices"] = Json::array();
    chunk["usage"] = Json::object();
    chunk["usage"]["prompt_tokens"] = usage.input_tokens;
    chunk["usage"]["completion_tokens"] = usage.output_tokens;
    chunk["usage"]["total_tokens"] = usage.input_tokens + usage.output_tokens;
    if (usage_.cache_read > 0) {
      chunk["usage"]["prompt_tokens_details"] = Json::object();
      chunk["usage"]["prompt_tokens_details"]["cached_tokens"] = usage_.cache_read;
    }
    return chunk;
  }

  Json Header() const {
    Json chunk = Json::object();
    chunk["id"] = id_;
    chunk["object"] = "chat.completion.chunk";
    chunk["created"] = created_;
    chunk["model"] = model_;
    return chunk;
  }

  Json AssembledMessage() const {
    Json message = Json::object();
    message["role"] = "assistant";
    message["content"] = text_.empty() ? Json(nullptr) : Json(text_);
    if (!tool_calls_.empty()) {
      Json calls = Json::array();
      for (const ToolCall& call : tool_calls_) {
        calls.push_back(
            OpenAiToolCall(call.id, call.name, call.arguments.empty() ? "{}" : call.arguments));
      }
      message["tool_calls"] = std::move(calls);
    }
    return message;
  }

  airlock::Result<ChatResult> Assemble() const {
    if (failure_) {
      return std::unexpected(*failure_);
    }
    // A stop reason means the reply itself is complete even if the connection dropped before
    // message_stop; the usage then is whatever was reported, estimated where missing.
    if (!started_ || (!done_ && !stop_reason_)) {
      return std::unexpected(Unavailable("upstream stream ended before the reply was complete"));
    }
    ChatResult result;
    result.message = AssembledMessage();
    result.finish_reason =
        FinishReason(stop_reason_ ? &*stop_reason_ : nullptr, !tool_calls_.empty());
    result.usage = FinishUsage(usage_, input_estimate_, result.message);
    return result;
  }

  std::string id_;
  std::string model_;
  const int64_t input_estimate_;
  const int64_t created_;
  std::map<int64_t, Block> blocks_;
  std::vector<ToolCall> tool_calls_;
  std::string text_;
  std::optional<std::string> stop_reason_;
  UsageReport usage_;
  bool started_ = false;
  bool done_ = false;
  std::optional<Error> failure_;
};

class AnthropicFormat final : public WireFormat {
 public:
  std::string_view kind() const override { return "anthropic"; }

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
    return std::make_unique<AnthropicStream>(
        req.model, EstimateTokens(req.messages) + EstimateTokens(req.tools));
  }

  std::string DescribeError(unsigned status, std::string_view body) const override {
    try {
      auto parsed = ParseJson(body, 16);
      if (parsed) {
        if (auto type = ErrorType(*parsed)) {
          return *type;
        }
      }
    } catch (const std::exception&) {
      // Fall through to the status line, which is all that is safe to say.
    }
    return HttpStatusText(status);
  }
};

}  // namespace

std::unique_ptr<WireFormat> MakeAnthropicFormat() { return std::make_unique<AnthropicFormat>(); }

}  // namespace airlock::llm
