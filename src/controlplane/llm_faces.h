#pragma once

// The OpenAI-compatible face of the LLM proxy (POST /v1/chat/completions and GET /v1/models on
// the sandbox listener, docs/api.md): what differs from the native route, as pure functions of
// their inputs. A client of the face sends the whole conversation on every call and sets its
// own sampling parameters; the native route's client sends only its new messages and sets none.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/json_util.h"
#include "common/result.h"
#include "controlplane/config.h"
#include "llm/chat.h"
#include "store/store.h"

namespace airlock::controlplane {

// A `POST /v1/chat/completions` body, checked.
struct CompletionsRequest {
  std::string alias;           // "model": a model alias of the session
  std::vector<Json> messages;  // the whole conversation, each checked and canonical
  Json tools = Json::array();  // canonical OpenAI tool definitions
  bool stream = false;
  bool include_usage = false;    // stream_options.include_usage
  Json params = Json::object();  // the sampling parameters the client set (OpenAI names)
};

// Checks a body. Parameters the client may set are listed in docs/api.md; a few that only
// steer OpenAI's own services (user, store, metadata, service_tier) are accepted and dropped;
// any other field is refused with its name, so a client learns at once what is not supported.
Result<CompletionsRequest> ParseCompletionsRequest(const Json& body);

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
};

// Compares the client's conversation with the stored one (in position order), message by
// message in a canonical form (text-only content parts read as one string; an assistant's empty
// content read as none; the fields a client echoes back, such as `refusal`, ignored).
HistoryMatch MatchHistory(const std::vector<store::Message>& stored,
                          const std::vector<Json>& client);

// A non-streamed answer: an OpenAI `chat.completion` object.
Json CompletionJson(const std::string& id, const std::string& alias, const llm::ChatResult& r);
// The `usage` object of the OpenAI shape.
Json CompletionUsageJson(const llm::TokenUsage& u);
// `GET /v1/models`: the aliases the session may use that this control plane serves.
Json ModelsJson(const store::Session& s, const Config& config);

}  // namespace airlock::controlplane
