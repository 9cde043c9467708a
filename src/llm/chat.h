#pragma once

// The provider-neutral shape of one LLM call. The sandbox speaks the OpenAI Chat Completions
// shape (docs/api.md); every provider translates from and to it.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/json_util.h"
#include "common/result.h"

namespace airlock::llm {

struct TokenUsage {
  int64_t input_tokens = 0;
  int64_t output_tokens = 0;
  bool estimated = false;  // counted by the control plane, not reported by the provider
};

// One call as the control plane makes it: the whole conversation, in order.
struct ChatRequest {
  // OpenAI-shaped messages: {"role": system|user|assistant|tool, "content": str|[parts]|null,
  // "tool_calls"?: [{"id","type":"function","function":{"name","arguments": str}}],
  // "tool_call_id"?: str, "name"?: str}.
  Json messages = Json::array();
  // OpenAI-shaped tool definitions: [{"type":"function","function":{"name","description"?,
  // "parameters"?}}]; empty when none.
  Json tools = Json::array();
  std::string model;  // the upstream's model name (not the alias)
  Json params =
      Json::object();  // operator-set parameters of the alias (temperature, max_tokens, ...)
  bool stream = false;
};

// The assistant's reply in the OpenAI shape, with what it cost.
struct ChatResult {
  Json message = Json::object();  // {"role":"assistant","content":..., "tool_calls"?: [...]}
  std::string finish_reason;      // OpenAI vocabulary: stop | length | tool_calls | content_filter
  TokenUsage usage;
};

// One upstream HTTP request, before the transport adds Host, Content-Length and keep-alive.
struct HttpCall {
  std::string path;  // appended to the provider's base URL path, e.g. "/chat/completions"
  std::vector<std::pair<std::string, std::string>> headers;  // provider key included
  std::string body;
};

// Turns a provider's stream of server-sent events into OpenAI `chat.completion.chunk`
// objects for the sandbox, and assembles the complete reply on the way.
class StreamTranslator {
 public:
  virtual ~StreamTranslator() = default;
  // One upstream SSE event (`event` is "" when the event had no type). Appends the chunks to
  // forward to `out`. An error event or a malformed one returns the error (kUnavailable,
  // with a message that is safe to show the sandbox: no key, no upstream auth detail).
  virtual Status OnEvent(std::string_view event, std::string_view data, std::vector<Json>& out) = 0;
  // True once the provider signalled the end of the reply ([DONE], message_stop).
  virtual bool finished() const = 0;
  // True once the reply itself is complete (a finish_reason / stop_reason arrived): what may
  // still come is only the usage and the end of the stream, no more generated tokens.
  virtual bool reply_complete() const = 0;
  // What the stream has cost so far, for a call that ends early (the sandbox hung up, the
  // upstream broke off): the usage the provider reported, with what it did not report
  // estimated from the prompt and from the output streamed so far (`estimated` is then set).
  virtual TokenUsage Spent() const = 0;
  // The assembled reply. kUnavailable if the stream ended before the reply was complete.
  virtual airlock::Result<ChatResult> Result() = 0;
};

// Wire format of one provider kind: builds the upstream request and reads its answer. Pure
// functions of their inputs (no I/O), so that every translation is unit-testable.
class WireFormat {
 public:
  virtual ~WireFormat() = default;
  virtual std::string_view kind() const = 0;
  virtual airlock::Result<HttpCall> BuildRequest(const ChatRequest& req,
                                                 const std::string& api_key) const = 0;
  virtual airlock::Result<ChatResult> ParseResponse(std::string_view body) const = 0;
  virtual std::unique_ptr<StreamTranslator> NewStream(const ChatRequest& req) const = 0;
  // A short description of an upstream error answer for logs and the sandbox, built only
  // from the provider's error type/code fields (never its free-text message, which may quote
  // a credential), e.g. "rate_limit_exceeded" or "overloaded_error".
  virtual std::string DescribeError(unsigned status, std::string_view body) const = 0;
};

// The OpenAI Chat Completions wire format (OpenAI, vLLM, llama.cpp server, Ollama, LM Studio).
std::unique_ptr<WireFormat> MakeOpenAiFormat();
// The Anthropic Messages API wire format, translated to and from the OpenAI shape.
std::unique_ptr<WireFormat> MakeAnthropicFormat();

// A rough token count for providers that report none (the scripted model): 4 bytes a token.
int64_t EstimateTokens(const Json& value);

}  // namespace airlock::llm
