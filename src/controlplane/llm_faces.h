#pragma once

// The faces of the LLM proxy that speak a provider's own API on the sandbox listener, so that
// agents written against the official clients run unchanged (docs/api.md): OpenAI's (POST
// /v1/chat/completions, POST /v1/responses, GET /v1/models) and Anthropic's (POST
// /v1/messages). What differs from
// the native route, as pure functions of their inputs. A client of a face sends the whole
// conversation on every call and sets its own sampling parameters; the native route's client
// sends only its new messages and sets none. Internally every call is in the OpenAI shape
// (llm/chat.h), so both faces reach both kinds of upstream.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/json_util.h"
#include "common/result.h"
#include "controlplane/config.h"
#include "llm/chat.h"
#include "store/store.h"

namespace airlock::controlplane {

// The API a call came in by: the native route, or a face.
enum class LlmFace { kNative, kOpenAi, kResponses, kAnthropic };

// A `POST /v1/chat/completions` body, checked.
struct CompletionsRequest {
  std::string alias;           // "model": a model alias of the session
  std::vector<Json> messages;  // the whole conversation, each checked and canonical
  Json tools = Json::array();  // canonical OpenAI tool definitions
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  // The sampling parameters the client set (OpenAI names; and Anthropic's top_k).
  Json params = Json::object();
};

// Checks a body. Parameters the client may set are listed in docs/api.md; a few that only
// steer OpenAI's own services (user, store, metadata, service_tier) are accepted and dropped;
// any other field is refused with its name, so a client learns at once what is not supported.
Result<CompletionsRequest> ParseCompletionsRequest(Json body);

// The parameters of an upstream call: the client's, translated to the upstream's vocabulary
// (`kind` "openai" or "anthropic"; the scripted model takes none), then the operator's pinned
// `model.params` on top (the operator wins), then `model.max_output_tokens` as a cap.
Json UpstreamParams(std::string_view kind, const Json& client, const ModelConfig& model);

// Where a client's conversation meets the stored one.
struct HistoryMatch {
  size_t known = 0;  // leading messages of the client's that the store already holds
  // Set when the client's conversation does not extend the stored one (it summarised or
  // truncated it): the stored messages after this position leave the conversation.
  std::optional<int64_t> supersede_after;
  size_t superseded = 0;  // how many stored messages that is
  // With supersede_after: the last stored position the client saw. Calls of the session
  // running beside this one may store theirs after it; the rewrite does not touch those.
  std::optional<int64_t> seen_through;
};

// A message of the stored conversation as the LLM routes keep it between calls
// (ConversationCache): its position, its body, and the form MatchHistory compares.
struct StoredMessage {
  int64_t position = 0;
  Json body;
  Json canonical;
};
std::shared_ptr<const StoredMessage> MakeStoredMessage(int64_t position, Json body);
using StoredConversation = std::vector<std::shared_ptr<const StoredMessage>>;

// Compares the client's conversation with the stored one (in position order), message by
// message in a canonical form (text-only content parts read as one string; an assistant's empty
// content read as none; the fields a client echoes back, such as `refusal`, ignored).
HistoryMatch MatchHistory(const StoredConversation& stored, const std::vector<Json>& client);

// Checks an Anthropic Messages API body and translates it to the OpenAI shape: `system` first,
// tool_result blocks as tool messages, tool_use blocks as tool_calls, base64 images as data:
// URLs; stop_sequences, tool_choice and the sampling parameters to their OpenAI names.
Result<CompletionsRequest> ParseMessagesRequest(const Json& body);

// A non-streamed answer of the Anthropic face: a `message` object.
Json AnthropicMessageJson(const std::string& id, const std::string& alias,
                          const llm::ChatResult& r);

// Turns the OpenAI chunks of a streamed reply into a face's own server-sent events.
class FaceEventWriter {
 public:
  virtual ~FaceEventWriter() = default;
  // The events one OpenAI chunk makes ("" for none).
  virtual std::string OnChunk(const Json& chunk) = 0;
  // The last events, once the call is recorded: `r` is the reply as metered.
  virtual std::string Finish(const llm::ChatResult& r) = 0;
  // An error event that ends the stream.
  virtual std::string Error(std::string_view code, std::string_view message) = 0;
};

// Anthropic's Messages API: message_start, content_block_start/delta/stop, then at the end
// message_delta with the metered usage and message_stop.
class AnthropicEventWriter : public FaceEventWriter {
 public:
  AnthropicEventWriter(std::string id, std::string alias)
      : id_(std::move(id)), alias_(std::move(alias)) {}
  std::string OnChunk(const Json& chunk) override;
  std::string Finish(const llm::ChatResult& r) override;
  std::string Error(std::string_view code, std::string_view message) override;

 private:
  std::string Start();
  std::string CloseBlock();
  std::string id_, alias_;
  bool started_ = false;
  int block_ = -1;  // the index of the open content block, -1 when none
  bool block_is_text_ = false;
  int blocks_ = 0;                      // content blocks started so far
  std::map<int64_t, int> tool_blocks_;  // OpenAI tool-call index -> content block index
};

// Checks an OpenAI Responses API body (`POST /v1/responses`) and translates it to the Chat
// Completions shape: `instructions` first, message items as messages (input_text and
// output_text parts; input_image as a data: URL), function_call items as the assistant's
// tool_calls, function_call_output items as tool messages, reasoning items dropped; function
// tools, tool_choice, max_output_tokens, text.format and the sampling parameters to their Chat
// Completions names. The control plane holds the conversation, so the client sends it whole:
// previous_response_id and conversation are refused, as are tools other than functions.
Result<CompletionsRequest> ParseResponsesRequest(const Json& body);

// A Responses API `response` object for a reply: its output items (a message with the text,
// then a function_call per tool call), status and usage.
Json ResponseJson(const std::string& id, const std::string& alias, const llm::ChatResult& r);

// The Responses API's streamed events: response.created and response.in_progress, then per
// output item output_item.added, content_part.added, output_text.delta (or
// function_call_arguments.delta), their .done events and output_item.done, and at the end
// response.completed (or response.incomplete) carrying the whole response with the metered
// usage. Every event has its sequence_number.
class ResponsesEventWriter : public FaceEventWriter {
 public:
  ResponsesEventWriter(std::string id, std::string alias)
      : id_(std::move(id)), alias_(std::move(alias)) {}
  std::string OnChunk(const Json& chunk) override;
  std::string Finish(const llm::ChatResult& r) override;
  std::string Error(std::string_view code, std::string_view message) override;

 private:
  std::string Event(std::string_view type, Json data);
  std::string Start();
  std::string CloseItem();
  std::string id_, alias_;
  int64_t sequence_ = 0;
  bool started_ = false;
  // The open output item: its index in `output`, and whether it is the message.
  int item_ = -1;
  bool item_is_message_ = false;
  std::string text_;                   // the open message's text so far
  Json items_ = Json::array();         // every item started, as last sent
  std::map<int64_t, int> tool_items_;  // OpenAI tool-call index -> output index
};

// A non-streamed answer: an OpenAI `chat.completion` object.
Json CompletionJson(const std::string& id, const std::string& alias, const llm::ChatResult& r);
// The `usage` object of the OpenAI shape.
Json CompletionUsageJson(const llm::TokenUsage& u);
// `GET /v1/models`: the aliases the session may use that this control plane serves.
Json ModelsJson(const store::Session& s, const Config& config);

}  // namespace airlock::controlplane
