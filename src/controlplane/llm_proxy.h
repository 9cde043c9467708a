#pragma once

// POST /sandbox/v1/llm/chat: the sandbox sends only its new messages; the control plane
// rebuilds the conversation from its store, adds the provider's key, calls the upstream of
// the model alias, stores the reply, meters and caps the spend (docs/api.md).

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "common/asio.h"
#include "common/metrics.h"
#include "controlplane/config.h"
#include "controlplane/http.h"
#include "controlplane/llm_faces.h"
#include "controlplane/notifier.h"
#include "llm/provider.h"
#include "store/store.h"

namespace airlock::controlplane {

// Checks one message the sandbox sends and returns it with only the fields of the OpenAI
// chat shape (role, content, name, tool_calls, tool_call_id). kInvalidArgument names what is
// wrong and where (`where` is e.g. "messages[2]").
Result<Json> ValidateChatMessage(const Json& m, const std::string& where);
// Checks the OpenAI tool definitions of a call and returns them canonical.
Result<Json> ValidateChatTools(const Json& tools);

// Who holds a session's conversation: an LLM call builds on it from the moment it reads the
// history until it stores the reply, and taking the inbox appends to it. They never overlap,
// so the conversation a provider saw is the one the reply is stored after. Single-threaded
// (io thread).
class ConversationLocks {
 public:
  enum class Holder { kNone, kChat, kInbox };
  explicit ConversationLocks(asio::io_context& io) : released_(io) {}
  Holder holder(const std::string& id) const;
  // Waits until the conversation is free and takes it: returns kNone. Otherwise returns the
  // holder in the way: at once when an LLM call asks and another LLM call holds it (calls of
  // one session are refused, not queued), or whoever still holds it at `deadline`.
  awaitable<Holder> Acquire(const std::string& id, Holder as,
                            std::chrono::steady_clock::time_point deadline);
  void Release(const std::string& id);

 private:
  std::map<std::string, Holder> held_;
  Notifier released_;
};

struct LlmMetrics {
  explicit LlmMetrics(metrics::Registry& r);
  metrics::Family<metrics::Counter>& calls;
  metrics::Family<metrics::Counter>& tokens;
  metrics::Family<metrics::Counter>& cost;
  metrics::Family<metrics::Histogram>& seconds;
  metrics::Family<metrics::Counter>& budget_refusals;
};

class LlmProxy {
 public:
  LlmProxy(asio::io_context& io, const Config& config, store::Store& store, asio::thread_pool& pool,
           Notifier& events, ConversationLocks& locks, metrics::Registry& registry);
  ~LlmProxy();

  // Builds a provider for every [providers.*] table. A provider that cannot start (no key
  // in its environment variable, unreadable script or CA file) is logged and its aliases
  // answer 503 with the reason; the control plane still starts.
  void Start();

  // The native route, for an authenticated session.
  awaitable<Response> Chat(Request& req, store::Session s);
  // The OpenAI face (controlplane/llm_faces.h): POST /v1/chat/completions and GET /v1/models.
  awaitable<Response> ChatCompletions(Request& req, store::Session s);
  // The Anthropic face: POST /v1/messages.
  awaitable<Response> Messages(Request& req, store::Session s);
  Response Models(const store::Session& s) const;

  // The session ended: its call in flight, if any, is cancelled.
  void CancelSession(const std::string& id);

  struct Call;  // internal

 private:
  struct ProviderSlot {
    std::unique_ptr<llm::Provider> provider;
    std::string unavailable;  // why it could not start
  };

  // The steps every call takes, whichever route it came by: the alias's model and provider
  // (an error answer, or nullopt); the budget and the conversation (same); the upstream call
  // and its answer in the route's shape. After Admit, Abandon gives the conversation back.
  std::optional<Response> Resolve(Call& call, const std::string& alias);
  awaitable<std::optional<Response>> Admit(Call& call);
  void Abandon(Call& call);
  awaitable<Response> Run(std::shared_ptr<Call> call);
  // A call of either face, from its request in the OpenAI shape.
  awaitable<Response> FaceCall(store::Session s, CompletionsRequest parsed, LlmFace face);
  awaitable<void> RunStreamed(std::shared_ptr<Call> call);
  awaitable<std::optional<Error>> Record(Call& call);
  void CountOutcome(const Call& call);
  Json UsageJson(const Call& call) const;

  asio::io_context& io_;
  const Config& config_;
  store::Store& store_;
  asio::thread_pool& pool_;
  Notifier& events_;
  ConversationLocks& locks_;
  LlmMetrics metrics_;
  std::map<std::string, ProviderSlot> providers_;
  std::map<std::string, llm::CallCancel*> in_flight_;
};

}  // namespace airlock::controlplane
