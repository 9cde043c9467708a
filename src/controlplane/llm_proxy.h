#pragma once

// POST /sandbox/v1/llm/chat: the sandbox sends only its new messages; the control plane
// rebuilds the conversation from its store, adds the provider's key, calls the upstream of
// the model alias, stores the reply, meters and caps the spend (docs/api.md).

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "common/asio.h"
#include "common/metrics.h"
#include "controlplane/config.h"
#include "controlplane/conversation_cache.h"
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

// Who holds a session's conversation: LLM calls build on it from the moment they read the
// history until they store their reply (up to `max_chats` of them at once, each appending its
// exchange when it ends), and taking the inbox appends to it alone. Calls and the inbox never
// overlap, so no user message slips between a call's history and its reply. Single-threaded
// (io thread).
class ConversationLocks {
 public:
  enum class Holder { kNone, kChat, kInbox };
  explicit ConversationLocks(asio::io_context& io) : released_(io) {}
  Holder holder(const std::string& id) const;
  // Waits until the conversation is free (or, for kChat, shared by fewer than `max_chats`
  // calls) and takes it: returns kNone. Otherwise returns the holder in the way: at once when
  // an LLM call asks and `max_chats` calls hold it (calls past the limit are refused, not
  // queued), or whoever still holds it at `deadline`.
  awaitable<Holder> Acquire(const std::string& id, Holder as,
                            std::chrono::steady_clock::time_point deadline, int max_chats = 1);
  void Release(const std::string& id);

 private:
  struct Held {
    Holder holder = Holder::kNone;
    int count = 0;  // kChat: the calls sharing it
  };
  std::map<std::string, Held> held_;
  Notifier released_;
};

struct LlmMetrics {
  explicit LlmMetrics(metrics::Registry& r);
  metrics::Family<metrics::Counter>& calls;
  metrics::Family<metrics::Counter>& tokens;
  metrics::Family<metrics::Counter>& cost;
  metrics::Family<metrics::Histogram>& seconds;
  metrics::Family<metrics::Counter>& budget_refusals;
  metrics::Family<metrics::Counter>& conversation_reads;
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
  // The OpenAI face's Responses API: POST /v1/responses.
  awaitable<Response> Responses(Request& req, store::Session s);
  // The Anthropic face: POST /v1/messages.
  awaitable<Response> Messages(Request& req, store::Session s);
  Response Models(const store::Session& s) const;

  // The session ended: its calls in flight, if any, are cancelled.
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
  // The session's conversation as stored: the cached copy while its version stands.
  awaitable<Result<ConversationCache::EntryPtr>> ReadConversation(const std::string& id);
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
  ConversationCache conversations_;
  // Per session with calls in flight on this control plane: what they have reserved of its
  // budget, and the latest totals one of them stored (fresher than a session read before).
  struct Ledger {
    std::set<llm::CallCancel*> calls;
    int64_t reserved_tokens = 0;
    double reserved_cost_usd = 0;
    std::optional<store::Usage> settled;
    bool ended = false;  // the session ended (CancelSession)
  };
  std::map<std::string, Ledger> ledgers_;
  // Reserves the call's estimate (provisional at Admit, then the whole of it once the request
  // is built) and gives it back when the call settles.
  void Reserve(Call& call);
  void Settle(Call& call);
};

}  // namespace airlock::controlplane
