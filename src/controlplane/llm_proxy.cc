#include "controlplane/llm_proxy.h"

#include <deque>
#include <set>

#include "common/blocking.h"
#include "common/crypto.h"
#include "common/log.h"
#include "controlplane/event_limits.h"
#include "controlplane/llm_faces.h"
#include "controlplane/plug_points.h"
#include "controlplane/views.h"
#include "llm/wire_util.h"

namespace airlock::controlplane {

using Clock = std::chrono::steady_clock;
using llm::CallError;
using llm::Outcome;

namespace {

constexpr size_t kMaxMessagesPerCall = 1000;
constexpr size_t kMaxTools = 128;
constexpr size_t kMaxToolCalls = 128;
constexpr size_t kMaxBufferedStream = 4 << 20;  // bytes of chunks not yet written to the sandbox

bool ValidName(const std::string& s, size_t max) {
  if (s.empty() || s.size() > max) return false;
  for (char ch : s) {
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '_' && ch != '-') return false;
  }
  return true;
}

bool ValidId(const std::string& s) {
  if (s.empty() || s.size() > 128) return false;
  for (char ch : s) {
    if (ch < 0x21 || ch > 0x7e) return false;
  }
  return true;
}

// content: a string, or OpenAI content parts (text; image_url for user messages).
Result<Json> ValidateContent(const Json& c, const std::string& where, bool images_allowed) {
  if (c.is_string()) return c;
  if (!c.is_array() || c.empty()) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "{}.content must be a string or a non-empty array of parts", where);
  }
  Json parts = Json::array();
  for (size_t i = 0; i < c.size(); ++i) {
    const Json& p = c[i];
    std::string at = fmt::format("{}.content[{}]", where, i);
    if (!p.is_object() || !p.contains("type") || !p["type"].is_string()) {
      return Errorf(ErrorCode::kInvalidArgument, "{} must be an object with a \"type\"", at);
    }
    if (p["type"] == "text") {
      if (!p.contains("text") || !p["text"].is_string())
        return Errorf(ErrorCode::kInvalidArgument, "{}.text must be a string", at);
      parts.push_back(Json{{"type", "text"}, {"text", p["text"]}});
    } else if (p["type"] == "image_url" && images_allowed) {
      const Json* img = p.contains("image_url") ? &p["image_url"] : nullptr;
      if (!img || !img->is_object() || !img->contains("url") || !(*img)["url"].is_string()) {
        return Errorf(ErrorCode::kInvalidArgument, "{}.image_url.url must be a string", at);
      }
      if (!llm::wire::IsDataUrl((*img)["url"].get_ref<const std::string&>())) {
        return Errorf(ErrorCode::kInvalidArgument,
                      "{}.image_url.url must be a data: URL (data:image/png;base64,...): the "
                      "control plane never "
                      "lets a model provider fetch a URL named by the sandbox",
                      at);
      }
      Json out{{"url", (*img)["url"]}};
      if (img->contains("detail") && (*img)["detail"].is_string()) out["detail"] = (*img)["detail"];
      parts.push_back(Json{{"type", "image_url"}, {"image_url", out}});
    } else {
      return Errorf(ErrorCode::kInvalidArgument, "{}: parts of type \"{}\" are not supported here",
                    at, p["type"].get<std::string>());
    }
  }
  return parts;
}

unsigned StatusFor(Outcome o) {
  switch (o) {
    case Outcome::kTimeout:
      return 504;
    case Outcome::kRefused:
      return 400;
    case Outcome::kCancelled:
      return 410;
    default:
      return 502;
  }
}

std::string CodeFor(Outcome o) {
  switch (o) {
    case Outcome::kTimeout:
      return "upstream_timeout";
    case Outcome::kRefused:
      return "invalid_argument";
    case Outcome::kCancelled:
      return "gone";
    default:
      return "upstream_error";
  }
}

// Why the session may not spend more, or nothing: `reserved_tokens` and `reserved_cost_usd` are
// counted as spent already (calls in flight hold them).
std::optional<std::string> BudgetSpent(const store::Session& s, int64_t reserved_tokens = 0,
                                       double reserved_cost_usd = 0) {
  if (!s.limits.is_object()) return std::nullopt;
  if (auto it = s.limits.find("max_tokens"); it != s.limits.end() && it->is_number()) {
    int64_t used = s.usage.input_tokens + s.usage.output_tokens + reserved_tokens;
    if (static_cast<double>(used) >= it->get<double>()) {
      return fmt::format("the session's token budget is spent ({} of max_tokens {})", used,
                         it->dump());
    }
  }
  if (auto it = s.limits.find("max_cost_usd"); it != s.limits.end() && it->is_number()) {
    if (s.usage.cost_usd + reserved_cost_usd >= it->get<double>()) {
      return fmt::format("the session's cost budget is spent (${:.6f} of max_cost_usd {})",
                         s.usage.cost_usd + reserved_cost_usd, it->dump());
    }
  }
  return std::nullopt;
}

std::string SseData(const Json& j) { return "data: " + DumpJson(j) + "\n\n"; }

double CostOf(const ModelConfig& model, const llm::TokenUsage& u) {
  return (static_cast<double>(u.input_tokens) * model.input_usd_per_mtok +
          static_cast<double>(u.output_tokens) * model.output_usd_per_mtok) /
         1e6;
}

}  // namespace

Result<Json> ValidateChatMessage(const Json& m, const std::string& where) {
  if (!m.is_object()) return Errorf(ErrorCode::kInvalidArgument, "{} must be an object", where);
  AIRLOCK_TRY(
      RejectUnknownKeys(m, {"role", "content", "name", "tool_calls", "tool_call_id"}, where));
  if (!m.contains("role") || !m["role"].is_string()) {
    return Errorf(ErrorCode::kInvalidArgument, "{}.role must be system, user, assistant or tool",
                  where);
  }
  const std::string role = m["role"];
  if (role != "system" && role != "user" && role != "assistant" && role != "tool") {
    return Errorf(ErrorCode::kInvalidArgument,
                  "{}.role must be system, user, assistant or tool, not \"{}\"", where,
                  role.substr(0, 32));
  }
  Json out{{"role", role}};
  if (m.contains("name")) {
    if (!m["name"].is_string() || !ValidName(m["name"], 64)) {
      return Errorf(ErrorCode::kInvalidArgument, "{}.name must be 1-64 letters, digits, _ or -",
                    where);
    }
    out["name"] = m["name"];
  }
  bool has_calls = m.contains("tool_calls") && !m["tool_calls"].is_null();
  if (has_calls) {
    if (role != "assistant")
      return Errorf(ErrorCode::kInvalidArgument, "{}: only assistant messages hold tool_calls",
                    where);
    const Json& tcs = m["tool_calls"];
    if (!tcs.is_array() || tcs.empty() || tcs.size() > kMaxToolCalls) {
      return Errorf(ErrorCode::kInvalidArgument, "{}.tool_calls must be an array of 1-{} calls",
                    where, kMaxToolCalls);
    }
    Json calls = Json::array();
    for (size_t i = 0; i < tcs.size(); ++i) {
      const Json& tc = tcs[i];
      std::string at = fmt::format("{}.tool_calls[{}]", where, i);
      if (!tc.is_object() || !tc.contains("id") || !tc["id"].is_string() || !ValidId(tc["id"])) {
        return Errorf(ErrorCode::kInvalidArgument, "{}.id must be 1-128 printable characters", at);
      }
      if (tc.contains("type") && tc["type"] != "function") {
        return Errorf(ErrorCode::kInvalidArgument, "{}.type must be \"function\"", at);
      }
      const Json* fn = tc.contains("function") ? &tc["function"] : nullptr;
      if (!fn || !fn->is_object() || !fn->contains("name") || !(*fn)["name"].is_string() ||
          !ValidName((*fn)["name"], 64)) {
        return Errorf(ErrorCode::kInvalidArgument,
                      "{}.function.name must be 1-64 letters, digits, _ or -", at);
      }
      if (!fn->contains("arguments") || !(*fn)["arguments"].is_string()) {
        return Errorf(ErrorCode::kInvalidArgument,
                      "{}.function.arguments must be a string (JSON text)", at);
      }
      calls.push_back(
          Json{{"id", tc["id"]},
               {"type", "function"},
               {"function", {{"name", (*fn)["name"]}, {"arguments", (*fn)["arguments"]}}}});
    }
    out["tool_calls"] = std::move(calls);
  }
  if (role == "tool") {
    if (!m.contains("tool_call_id") || !m["tool_call_id"].is_string() ||
        !ValidId(m["tool_call_id"])) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "{}.tool_call_id must name the tool call this answers", where);
    }
    out["tool_call_id"] = m["tool_call_id"];
  } else if (m.contains("tool_call_id")) {
    return Errorf(ErrorCode::kInvalidArgument, "{}: only tool messages hold tool_call_id", where);
  }
  const bool content_optional = role == "assistant" && has_calls;
  if (!m.contains("content") || m["content"].is_null()) {
    if (!content_optional)
      return Errorf(ErrorCode::kInvalidArgument, "{}.content is required", where);
    out["content"] = nullptr;
  } else {
    AIRLOCK_ASSIGN_OR_RETURN(out["content"], ValidateContent(m["content"], where, role == "user"));
  }
  return out;
}

Result<Json> ValidateChatTools(const Json& tools) {
  if (!tools.is_array() || tools.size() > kMaxTools) {
    return Errorf(ErrorCode::kInvalidArgument, "\"tools\" must be an array of at most {} tools",
                  kMaxTools);
  }
  Json out = Json::array();
  std::set<std::string> names;
  for (size_t i = 0; i < tools.size(); ++i) {
    const Json& t = tools[i];
    std::string at = fmt::format("tools[{}]", i);
    if (!t.is_object() || t.value("type", "") != "function" || !t.contains("function") ||
        !t["function"].is_object()) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "{} must be {{\"type\":\"function\",\"function\":{{...}}}}", at);
    }
    const Json& fn = t["function"];
    AIRLOCK_TRY(
        RejectUnknownKeys(fn, {"name", "description", "parameters", "strict"}, at + ".function"));
    if (!fn.contains("name") || !fn["name"].is_string() || !ValidName(fn["name"], 64)) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "{}.function.name must be 1-64 letters, digits, _ or -", at);
    }
    if (!names.insert(fn["name"].get<std::string>()).second) {
      return Errorf(ErrorCode::kInvalidArgument, "{}: two tools are named \"{}\"", at,
                    fn["name"].get<std::string>());
    }
    Json f{{"name", fn["name"]}};
    if (fn.contains("description")) {
      if (!fn["description"].is_string())
        return Errorf(ErrorCode::kInvalidArgument, "{}.function.description must be a string", at);
      f["description"] = fn["description"];
    }
    if (fn.contains("parameters")) {
      if (!fn["parameters"].is_object())
        return Errorf(ErrorCode::kInvalidArgument,
                      "{}.function.parameters must be a JSON schema object", at);
      f["parameters"] = fn["parameters"];
    }
    if (fn.contains("strict") && fn["strict"].is_boolean()) f["strict"] = fn["strict"];
    out.push_back(Json{{"type", "function"}, {"function", std::move(f)}});
  }
  return out;
}

// ---------------------------------------------------------------- ConversationLocks

ConversationLocks::Holder ConversationLocks::holder(const std::string& id) const {
  auto it = held_.find(id);
  return it == held_.end() ? Holder::kNone : it->second.holder;
}

awaitable<ConversationLocks::Holder> ConversationLocks::Acquire(const std::string& id, Holder as,
                                                                Clock::time_point deadline,
                                                                int max_chats) {
  for (;;) {
    Holder h = holder(id);
    if (h == Holder::kNone) break;
    if (as == Holder::kChat && h == Holder::kChat) {
      Held& held = held_[id];
      if (held.count >= max_chats) co_return h;
      ++held.count;
      co_return Holder::kNone;
    }
    uint64_t v = released_.Version(id);
    if (!co_await released_.Wait(id, v, deadline) && holder(id) != Holder::kNone)
      co_return holder(id);
  }
  held_[id] = Held{as, 1};
  co_return Holder::kNone;
}

void ConversationLocks::Release(const std::string& id) {
  auto it = held_.find(id);
  if (it != held_.end() && --it->second.count > 0) return;  // other calls still hold it
  held_.erase(id);
  released_.Notify(id);
  released_.Forget(id);
}

// ---------------------------------------------------------------- metrics

LlmMetrics::LlmMetrics(metrics::Registry& r)
    : calls(r.AddCounter("airlock_llm_calls_total",
                         "LLM calls proxied, by model alias and outcome.", {"model", "outcome"})),
      tokens(r.AddCounter("airlock_llm_tokens_total",
                          "Tokens metered, by model alias and direction.", {"model", "direction"})),
      cost(r.AddCounter("airlock_llm_cost_usd_total", "Cost metered in US dollars, by model alias.",
                        {"model"})),
      seconds(r.AddHistogram("airlock_llm_call_duration_seconds", "Latency of proxied LLM calls.",
                             {"model"}, {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300})),
      budget_refusals(r.AddCounter("airlock_llm_budget_refusals_total",
                                   "Calls refused with 402: budget spent.")),
      conversation_reads(r.AddCounter(
          "airlock_llm_conversation_reads_total",
          "Conversations an LLM call built on, by where they came from: \"cached\" (this "
          "replica's copy, still current), \"store\" (read whole).",
          {"source"})) {}

// ---------------------------------------------------------------- the call

struct LlmProxy::Call {
  store::Session session;
  std::string alias;
  const ModelConfig* model = nullptr;
  llm::Provider* provider = nullptr;
  std::vector<Json> new_messages;
  llm::ChatRequest request;
  llm::CallCancel cancel;
  Clock::time_point started = Clock::now();

  std::optional<llm::ChatResult> result;
  std::optional<CallError> error;
  std::optional<llm::TokenUsage> charged;  // a failed call's tokens that were charged anyway

  // The faces: which one answers (in its shapes, under this id); and where the client's
  // conversation met the stored one (MatchHistory).
  LlmFace face = LlmFace::kNative;
  bool include_usage = false;
  std::string completion_id;
  std::unique_ptr<FaceEventWriter> face_events;  // a face's own events (Anthropic, Responses)
  HistoryMatch history;
  // What the call holds of the session's budget until it settles (LlmProxy::Reserve).
  int64_t reserved_tokens = 0;
  double reserved_cost_usd = 0;
  double cost_usd = 0;
  store::Usage totals;
  double latency_s = 0;

  // Streaming: chunks wait here until the writer sends them to the sandbox.
  std::deque<std::string> frames;
  size_t frame_bytes = 0;
  std::string final_frame;
  bool done = false;
  bool receiver_gone = false;
  bool reply_complete = false;                  // a chunk with a finish_reason was produced
  std::unique_ptr<asio::steady_timer> wake;     // the writer waits on it
  std::unique_ptr<asio::steady_timer> drained;  // the producer waits on it when the buffer is full
};

namespace {

// Timers used as condition variables on the io thread: a waiter waits until cancelled.
awaitable<void> WaitOn(asio::steady_timer& t) {
  t.expires_at(Clock::time_point::max());
  beast::error_code ec;
  co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
}

}  // namespace

class PumpReceiver : public llm::ChunkReceiver {
 public:
  explicit PumpReceiver(LlmProxy::Call& call) : call_(call) {}
  awaitable<bool> OnChunk(const Json& chunk) override;

 private:
  LlmProxy::Call& call_;
};

awaitable<bool> PumpReceiver::OnChunk(const Json& chunk) {
  if (call_.receiver_gone) co_return false;
  if (const auto* choices = llm::wire::Member(chunk, "choices");
      choices != nullptr && choices->is_array()) {
    for (const auto& choice : *choices) {
      const auto* finish = llm::wire::Member(choice, "finish_reason");
      if (finish != nullptr && !finish->is_null()) call_.reply_complete = true;
    }
  }
  std::string frame;
  if (call_.face_events) {
    frame = call_.face_events->OnChunk(chunk);
    if (frame.empty()) co_return true;
  } else if (call_.face == LlmFace::kOpenAi) {
    // The client named an alias and gets it back; the usage comes metered, at the end.
    if (!chunk.is_object()) co_return true;
    Json c = chunk;
    c.erase("usage");
    if (c.contains("choices") && c["choices"].is_array() && c["choices"].empty()) co_return true;
    c["id"] = call_.completion_id;
    c["model"] = call_.alias;
    if (!c.contains("created")) c["created"] = static_cast<int64_t>(std::time(nullptr));
    frame = SseData(c);
  } else {
    frame = SseData(chunk);
  }
  call_.frame_bytes += frame.size();
  call_.frames.push_back(std::move(frame));
  call_.wake->cancel();
  while (call_.frame_bytes > kMaxBufferedStream && !call_.receiver_gone)
    co_await WaitOn(*call_.drained);
  co_return !call_.receiver_gone;
}

// What the conversations held between calls may take (estimated): a few thousand sessions of
// tens of messages, or a few with long tool outputs. Past it the least recently used go.
constexpr size_t kConversationCacheBytes = size_t{64} << 20;

LlmProxy::LlmProxy(asio::io_context& io, const Config& config, store::Store& store,
                   asio::thread_pool& pool, Notifier& events, ConversationLocks& locks,
                   metrics::Registry& registry)
    : io_(io),
      config_(config),
      store_(store),
      pool_(pool),
      events_(events),
      locks_(locks),
      metrics_(registry),
      conversations_(kConversationCacheBytes) {}

LlmProxy::~LlmProxy() = default;

void LlmProxy::Start() {
  for (const auto& [name, p] : config_.providers) {
    ProviderSlot slot;
    auto provider = MakeProvider({.name = name, .config = p, .io = io_});
    if (provider) {
      slot.provider = std::move(*provider);
    } else {
      const std::string& why = provider.error().message;
      slot.unavailable = fmt::format("provider \"{}\" is not available: {}", name, why);
      log::Warn("llm provider not available",
                {{"provider", name}, {"kind", p.kind}, {"reason", why}});
    }
    providers_[name] = std::move(slot);
  }
}

void LlmProxy::CancelSession(const std::string& id) {
  conversations_.Forget(id);
  auto it = ledgers_.find(id);
  if (it == ledgers_.end()) return;
  for (llm::CallCancel* c : it->second.calls) c->Cancel();
  it->second.ended = true;  // the last call to settle takes the ledger with it
  if (it->second.calls.empty()) ledgers_.erase(it);
}

awaitable<Response> LlmProxy::Chat(Request& req, store::Session s) {
  auto body = ParseJsonObject(req.msg.body());
  if (!body) co_return Response::FromError(body.error());
  if (auto st = RejectUnknownKeys(*body, {"messages", "tools", "model", "stream"}, "chat request");
      !st) {
    co_return Response::FromError(
        400, "invalid_argument",
        st.error().message + " (model parameters are set by the operator per model alias)");
  }
  auto call = std::make_shared<Call>();
  call->session = std::move(s);
  const store::Session& sess = call->session;

  if (!body->contains("messages") || !(*body)["messages"].is_array()) {
    co_return Response::FromError(400, "invalid_argument",
                                  "\"messages\" must be an array of the new messages");
  }
  const Json& msgs = (*body)["messages"];
  if (msgs.size() > kMaxMessagesPerCall) {
    co_return Response::FromError(
        400, "invalid_argument",
        fmt::format("at most {} new messages per call", kMaxMessagesPerCall));
  }
  for (size_t i = 0; i < msgs.size(); ++i) {
    auto m = ValidateChatMessage(msgs[i], fmt::format("messages[{}]", i));
    if (!m) co_return Response::FromError(m.error());
    if ((*m)["role"] == "assistant") {
      co_return Response::FromError(
          400, "invalid_argument",
          fmt::format("messages[{}]: assistant messages come from the model; the control "
                      "plane stores them itself",
                      i));
    }
    call->new_messages.push_back(std::move(*m));
  }
  if (body->contains("tools") && !(*body)["tools"].is_null()) {
    auto t = ValidateChatTools((*body)["tools"]);
    if (!t) co_return Response::FromError(t.error());
    call->request.tools = std::move(*t);
  }
  if (body->contains("stream") && !(*body)["stream"].is_boolean()) {
    co_return Response::FromError(400, "invalid_argument", "\"stream\" must be true or false");
  }
  call->request.stream = body->value("stream", false);

  std::string alias = sess.model;
  if (body->contains("model") && !(*body)["model"].is_null()) {
    if (!(*body)["model"].is_string())
      co_return Response::FromError(400, "invalid_argument", "\"model\" must be a model alias");
    alias = (*body)["model"];
  }
  if (auto refused = Resolve(*call, alias)) co_return std::move(*refused);
  if (auto refused = co_await Admit(*call)) co_return std::move(*refused);

  auto history = co_await ReadConversation(sess.id);
  if (!history) {
    Abandon(*call);
    co_return Response::FromError(history.error());
  }
  for (const auto& m : (*history)->messages) call->request.messages.push_back(m->body);
  for (const auto& m : call->new_messages) call->request.messages.push_back(m);
  call->request.params = call->model->params;
  co_return co_await Run(call);
}

awaitable<Response> LlmProxy::ChatCompletions(Request& req, store::Session s) {
  auto body = ParseJsonObject(req.msg.body());
  if (!body) co_return Response::FromError(body.error());
  auto parsed = ParseCompletionsRequest(std::move(*body));
  if (!parsed) co_return Response::FromError(parsed.error());
  co_return co_await FaceCall(std::move(s), std::move(*parsed), LlmFace::kOpenAi);
}

awaitable<Response> LlmProxy::Messages(Request& req, store::Session s) {
  auto body = ParseJsonObject(req.msg.body());
  if (!body) co_return Response::FromError(body.error());
  auto parsed = ParseMessagesRequest(*body);
  if (!parsed) co_return Response::FromError(parsed.error());
  co_return co_await FaceCall(std::move(s), std::move(*parsed), LlmFace::kAnthropic);
}

awaitable<Response> LlmProxy::Responses(Request& req, store::Session s) {
  auto body = ParseJsonObject(req.msg.body());
  if (!body) co_return Response::FromError(body.error());
  auto parsed = ParseResponsesRequest(*body);
  if (!parsed) co_return Response::FromError(parsed.error());
  co_return co_await FaceCall(std::move(s), std::move(*parsed), LlmFace::kResponses);
}

awaitable<Response> LlmProxy::FaceCall(store::Session s, CompletionsRequest parsed, LlmFace face) {
  auto call = std::make_shared<Call>();
  call->session = std::move(s);
  call->face = face;
  call->include_usage = parsed.include_usage;
  const char* prefix = face == LlmFace::kAnthropic   ? "msg_"
                       : face == LlmFace::kResponses ? "resp_"
                                                     : "chatcmpl-";
  call->completion_id = prefix + HexEncode(RandomBytes(12));
  if (face == LlmFace::kAnthropic) {
    call->face_events = std::make_unique<AnthropicEventWriter>(call->completion_id, parsed.alias);
  } else if (face == LlmFace::kResponses) {
    call->face_events = std::make_unique<ResponsesEventWriter>(call->completion_id, parsed.alias);
  }
  call->request.tools = std::move(parsed.tools);
  call->request.stream = parsed.stream;
  if (auto refused = Resolve(*call, parsed.alias)) co_return std::move(*refused);
  if (auto refused = co_await Admit(*call)) co_return std::move(*refused);

  // The client sends the whole conversation: the upstream gets it as sent, and the store
  // keeps each message once (what it does not hold yet, after what the client dropped).
  auto stored = co_await ReadConversation(call->session.id);
  if (!stored) {
    Abandon(*call);
    co_return Response::FromError(stored.error());
  }
  call->history = MatchHistory((*stored)->messages, parsed.messages);
  for (size_t i = call->history.known; i < parsed.messages.size(); ++i)
    call->new_messages.push_back(parsed.messages[i]);
  call->request.messages = Json::array();
  for (Json& m : parsed.messages) call->request.messages.push_back(std::move(m));
  call->request.params = UpstreamParams(call->provider->kind(), parsed.params, *call->model);
  co_return co_await Run(call);
}

awaitable<Result<ConversationCache::EntryPtr>> LlmProxy::ReadConversation(const std::string& id) {
  ConversationCache::EntryPtr held = conversations_.Find(id);
  const int64_t known = held ? held->version : 0;
  auto read = co_await RunBlocking(
      pool_, [this, &id, known] { return store_.ReadConversation(id, known); });
  if (!read) co_return std::unexpected(read.error());
  metrics_.conversation_reads.With({read->messages ? "store" : "cached"}).Inc();
  auto entry = conversations_.Take(id, std::move(held), std::move(*read));
  if (!entry) co_return MakeError(ErrorCode::kInternal, "the conversation's copy was lost");
  co_return entry;
}

Response LlmProxy::Models(const store::Session& s) const {
  return Response::FromJson(200, ModelsJson(s, config_));
}

std::optional<Response> LlmProxy::Resolve(Call& call, const std::string& alias) {
  const store::Session& sess = call.session;
  call.alias = alias;
  bool allowed = call.alias == sess.model;
  if (sess.models.is_array()) {
    for (const auto& a : sess.models) allowed = allowed || a == call.alias;
  }
  if (!allowed) {
    std::string list = sess.model;
    if (sess.models.is_array()) {
      for (const auto& a : sess.models) {
        if (a.is_string() && a != sess.model) list += ", " + a.get<std::string>();
      }
    }
    return Response::FromError(403, "permission_denied",
                               fmt::format("this session may use the model aliases: {}", list));
  }
  auto mit = config_.models.find(call.alias);
  if (mit == config_.models.end()) {
    return Response::FromError(
        503, "unavailable",
        fmt::format("the model alias \"{}\" is not configured on this control plane",
                    call.alias.substr(0, 64)));
  }
  call.model = &mit->second;
  auto pit = providers_.find(call.model->provider);
  if (pit == providers_.end() || !pit->second.provider) {
    return Response::FromError(503, "unavailable",
                               pit == providers_.end() ? "the model's provider is not configured"
                                                       : pit->second.unavailable);
  }
  call.provider = pit->second.provider.get();
  call.request.model = call.model->model;
  return std::nullopt;
}

awaitable<std::optional<Response>> LlmProxy::Admit(Call& call) {
  store::Session& sess = call.session;
  // A call of this session that ended on this control plane may have stored usage after the
  // session was read for this one.
  if (auto it = ledgers_.find(sess.id); it != ledgers_.end() && it->second.settled) {
    const store::Usage& s = *it->second.settled;
    if (s.llm_calls > sess.usage.llm_calls) sess.usage = s;
  }
  if (auto spent = BudgetSpent(sess)) {
    metrics_.budget_refusals.With({}).Inc();
    Json data{{"model", call.alias}, {"outcome", "budget_exhausted"}, {"error", *spent}};
    // A sandbox can repeat a refused call as often as it likes: its audit events count
    // against the session's event quota (past it the refusal is still answered, unrecorded).
    const store::EventQuota quota = EventQuotaFor(config_);
    co_await RunBlocking(pool_, [this, &sess, &data, &quota] {
      return store_.AppendEventWithinQuota(sess.id, "llm.call", data, quota);
    });
    events_.Notify(sess.id);
    co_return Response::FromError(402, "budget_exhausted", *spent);
  }

  const int max_calls = static_cast<int>(config_.max_concurrent_llm_calls);
  auto blocked = co_await locks_.Acquire(sess.id, ConversationLocks::Holder::kChat,
                                         Clock::now() + std::chrono::seconds(30), max_calls);
  if (blocked == ConversationLocks::Holder::kChat) {
    co_return Response::FromError(
        409, "conflict",
        max_calls == 1 ? std::string("another LLM call of this session is in progress; calls of "
                                     "one session are made one at a time")
                       : fmt::format("this session has {} LLM calls in progress, as many as "
                                     "sandbox.max_concurrent_llm_calls allows; try again when "
                                     "one ends",
                                     max_calls));
  }
  if (blocked != ConversationLocks::Holder::kNone) {
    co_return Response::FromError(503, "unavailable",
                                  "the session's conversation stayed busy; try again");
  }
  // From here to the reservation nothing waits: no other call of the session is admitted in
  // between, so the calls in flight never reserve more than the budget has left.
  Ledger& ledger = ledgers_[sess.id];
  if (!ledger.calls.empty()) {
    if (auto reserved = BudgetSpent(sess, ledger.reserved_tokens, ledger.reserved_cost_usd)) {
      locks_.Release(sess.id);
      metrics_.budget_refusals.With({}).Inc();
      co_return Response::FromError(
          429, "resource_exhausted",
          fmt::format("what is left of the session's budget is reserved by its {} LLM call(s) "
                      "in progress; try again when they end",
                      ledger.calls.size()));
    }
  }
  ledger.calls.insert(&call.cancel);
  Reserve(call);
  co_return std::nullopt;
}

namespace {

constexpr int64_t kDefaultOutputEstimate = 4096;

// The tokens a call may produce: its own cap, else the alias's, else a default.
int64_t OutputEstimate(const llm::ChatRequest& request, const ModelConfig& model) {
  if (request.params.is_object()) {
    for (const char* key : {"max_tokens", "max_completion_tokens"}) {
      if (auto it = request.params.find(key); it != request.params.end() && it->is_number_integer())
        return std::max<int64_t>(it->get<int64_t>(), 1);
    }
  }
  return model.max_output_tokens > 0 ? model.max_output_tokens : kDefaultOutputEstimate;
}

// The tokens of a call's conversation, roughly (four bytes a token): enough to hold a budget
// against the calls beside it; the call is charged what the upstream reports.
int64_t InputEstimate(const llm::ChatRequest& request) {
  size_t bytes = 0;
  for (const Json& m : request.messages) {
    auto content = m.find("content");
    bytes += content != m.end() && content->is_string()
                 ? content->get_ref<const std::string&>().size()
                 : DumpJson(m).size();
  }
  return static_cast<int64_t>(bytes / 4) + 1;
}

}  // namespace

void LlmProxy::Reserve(Call& call) {
  llm::TokenUsage estimate;
  estimate.input_tokens = InputEstimate(call.request);
  estimate.output_tokens = OutputEstimate(call.request, *call.model);
  const int64_t tokens = estimate.input_tokens + estimate.output_tokens;
  const double cost = CostOf(*call.model, estimate);
  Ledger& ledger = ledgers_[call.session.id];
  ledger.reserved_tokens += tokens - call.reserved_tokens;
  ledger.reserved_cost_usd += cost - call.reserved_cost_usd;
  call.reserved_tokens = tokens;
  call.reserved_cost_usd = cost;
}

void LlmProxy::Settle(Call& call) {
  auto it = ledgers_.find(call.session.id);
  if (it == ledgers_.end()) return;
  Ledger& ledger = it->second;
  ledger.reserved_tokens -= call.reserved_tokens;
  ledger.reserved_cost_usd -= call.reserved_cost_usd;
  call.reserved_tokens = 0;
  call.reserved_cost_usd = 0;
  ledger.calls.erase(&call.cancel);
  if (ledger.calls.empty()) {
    ledger.reserved_tokens = 0;  // no float drift is carried over
    ledger.reserved_cost_usd = 0;
  }
  if (call.totals.llm_calls > 0 &&
      (!ledger.settled || call.totals.llm_calls > ledger.settled->llm_calls)) {
    ledger.settled = call.totals;
  }
  if (ledger.calls.empty() && ledger.ended) ledgers_.erase(it);
}

void LlmProxy::Abandon(Call& call) {
  Settle(call);
  locks_.Release(call.session.id);
}

awaitable<Response> LlmProxy::Run(std::shared_ptr<Call> call) {
  Reserve(*call);  // the whole estimate, now that the request is built
  call->started = Clock::now();
  if (!call->request.stream) {
    auto r = co_await call->provider->Chat(call->request, nullptr, call->cancel);
    if (r) {
      call->result = std::move(*r);
    } else {
      call->error = std::move(r.error());
    }
    co_await Record(*call);
    if (call->error)
      co_return Response::FromError(StatusFor(call->error->outcome), CodeFor(call->error->outcome),
                                    call->error->message);
    if (call->face == LlmFace::kOpenAi) {
      co_return Response::FromJson(200,
                                   CompletionJson(call->completion_id, call->alias, *call->result));
    }
    if (call->face == LlmFace::kAnthropic) {
      co_return Response::FromJson(
          200, AnthropicMessageJson(call->completion_id, call->alias, *call->result));
    }
    if (call->face == LlmFace::kResponses) {
      co_return Response::FromJson(200,
                                   ResponseJson(call->completion_id, call->alias, *call->result));
    }
    Json out{{"message", call->result->message},
             {"finish_reason", call->result->finish_reason},
             {"model", call->alias},
             {"usage", UsageJson(*call)},
             {"session_usage", UsageView(call->totals)}};
    co_return Response::FromJson(200, out);
  }
  call->wake = std::make_unique<asio::steady_timer>(io_);
  call->drained = std::make_unique<asio::steady_timer>(io_);
  asio::co_spawn(io_, RunStreamed(call), asio::detached);
  // The status goes out with the first chunk: an upstream that fails before it still gets
  // the sandbox a plain JSON error.
  while (call->frames.empty() && !call->done) co_await WaitOn(*call->wake);
  if (call->frames.empty() && call->error) {
    co_return Response::FromError(StatusFor(call->error->outcome), CodeFor(call->error->outcome),
                                  call->error->message);
  }
  Response res;
  res.content_type = "text/event-stream";
  res.headers.emplace_back("Cache-Control", "no-cache");
  res.headers.emplace_back("X-Accel-Buffering", "no");
  res.stream = [call](ChunkSink& sink) -> awaitable<void> {
    for (;;) {
      while (!call->frames.empty()) {
        std::string frame = std::move(call->frames.front());
        call->frames.pop_front();
        call->frame_bytes -= frame.size();
        call->drained->cancel();
        if (!co_await sink.Write(frame)) {
          // The sandbox went away: nothing of this call is stored, but what the upstream
          // produced is charged. Mid-reply the upstream is stopped at once (the provider
          // estimates the cost); after the finish_reason it is read to its end for its usage.
          call->receiver_gone = true;
          if (!call->reply_complete) call->cancel.Cancel();
          call->drained->cancel();
          co_return;
        }
      }
      if (call->done) {
        co_await sink.Write(call->final_frame);
        co_return;
      }
      co_await WaitOn(*call->wake);
    }
  };
  co_return res;
}

awaitable<void> LlmProxy::RunStreamed(std::shared_ptr<Call> call) {
  PumpReceiver receiver(*call);
  auto r = co_await call->provider->Chat(call->request, &receiver, call->cancel);
  if (r) {
    call->result = std::move(*r);
  } else {
    call->error = std::move(r.error());
    if (call->receiver_gone) {
      call->error = CallError{Outcome::kReceiverGone, "the sandbox went away during the call", 0,
                              std::move(call->error->spent)};
    }
  }
  co_await Record(*call);
  if (call->error && call->face_events) {
    call->final_frame =
        call->face_events->Error(CodeFor(call->error->outcome), call->error->message);
  } else if (call->error) {
    call->final_frame = SseData(Json{
        {"error", {{"code", CodeFor(call->error->outcome)}, {"message", call->error->message}}}});
  } else if (call->face_events) {
    call->final_frame = call->face_events->Finish(*call->result);
  } else {
    call->final_frame = "data: [DONE]\n\n";
    if (call->face == LlmFace::kOpenAi && call->include_usage) {
      // OpenAI's stream_options.include_usage: one last chunk without choices, with what the
      // call was metered.
      call->final_frame = SseData(Json{{"id", call->completion_id},
                                       {"object", "chat.completion.chunk"},
                                       {"created", static_cast<int64_t>(std::time(nullptr))},
                                       {"model", call->alias},
                                       {"choices", Json::array()},
                                       {"usage", CompletionUsageJson(call->result->usage)}}) +
                          call->final_frame;
    }
  }
  call->done = true;
  call->wake->cancel();
}

namespace {

// The tokens a call is metered for: its reply's, or those charged for a call that failed.
const llm::TokenUsage* Metered(const LlmProxy::Call& call) {
  if (call.result) return &call.result->usage;
  if (call.charged) return &*call.charged;
  return nullptr;
}

}  // namespace

Json LlmProxy::UsageJson(const Call& call) const {
  if (!call.result) return Json::object();
  Json u{{"input_tokens", call.result->usage.input_tokens},
         {"output_tokens", call.result->usage.output_tokens},
         {"cost_usd", call.cost_usd}};
  if (call.result->usage.estimated) u["estimated"] = true;
  return u;
}

// Stores the outcome of a call — on success the new messages, the reply, the usage and the
// event in one transaction; on failure only the event — then frees the conversation.
awaitable<std::optional<Error>> LlmProxy::Record(Call& call) {
  const std::string& id = call.session.id;
  call.latency_s = std::chrono::duration<double>(Clock::now() - call.started).count();
  Json data{{"model", call.alias},
            {"upstream_model", call.model->model},
            {"provider", std::string(call.provider->kind())},
            {"stream", call.request.stream},
            {"new_messages", call.new_messages.size()},
            {"latency_ms", static_cast<int64_t>(call.latency_s * 1000)}};
  if (call.face == LlmFace::kOpenAi) data["face"] = "openai";
  if (call.face == LlmFace::kResponses) data["face"] = "openai-responses";
  if (call.face == LlmFace::kAnthropic) data["face"] = "anthropic";
  // The client rewrote its history: how much of the stored conversation it kept, how much
  // it dropped (superseded, below, if the call is stored).
  if (call.history.supersede_after) {
    data["history"] = Json{{"kept", call.history.known}, {"superseded", call.history.superseded}};
  }
  std::optional<Error> failed;
  if (call.result) {
    const auto& u = call.result->usage;
    call.cost_usd = CostOf(*call.model, u);
    data["outcome"] = "ok";
    data["input_tokens"] = u.input_tokens;
    data["output_tokens"] = u.output_tokens;
    data["cost_usd"] = call.cost_usd;
    data["finish_reason"] = call.result->finish_reason;
    if (u.estimated) data["estimated"] = true;
    // The sandbox hung up after the reply was complete: stored and charged all the same.
    if (call.receiver_gone) data["sandbox_gone"] = true;
    store::ChatRecord rec;
    rec.messages = call.new_messages;
    rec.messages.push_back(call.result->message);
    rec.model = call.alias;
    rec.usage = store::Usage{u.input_tokens, u.output_tokens, 1, call.cost_usd};
    rec.event_data = data;
    rec.token_hash = call.session.token_hash;
    rec.supersede_after = call.history.supersede_after;
    rec.supersede_through = call.history.seen_through;
    auto totals =
        co_await RunBlocking(pool_, [this, &id, &rec] { return store_.RecordChat(id, rec); });
    if (totals) {
      call.totals = totals->totals;
      conversations_.Apply(id, rec, *totals);
    } else {
      // The session ended while the provider answered: the reply is not stored.
      failed = totals.error();
      const ErrorCode code = totals.error().code;
      call.error = CallError{code == ErrorCode::kConflict || code == ErrorCode::kUnauthenticated
                                 ? Outcome::kCancelled
                                 : Outcome::kUpstreamError,
                             code == ErrorCode::kConflict ? "the session ended during the call"
                             : code == ErrorCode::kUnauthenticated
                                 ? "a fresh sandbox replaced this one during the call"
                                 : "the reply could not be stored: " + totals.error().message,
                             0};
      call.result.reset();
    }
  } else {
    data["outcome"] = std::string(llm::OutcomeName(call.error->outcome));
    data["error"] = call.error->message;
    if (call.error->upstream_status != 0) data["upstream_status"] = call.error->upstream_status;
    const std::optional<llm::TokenUsage>& spent = call.error->spent;
    bool recorded = false;
    if (spent && spent->input_tokens + spent->output_tokens > 0) {
      // A streamed reply the sandbox hung up on, or that broke off: the provider bills what it
      // produced, so the session pays it, in the same transaction as the event. Nothing joins
      // the conversation, and no token check: a sandbox replaced meanwhile still pays.
      call.charged = *spent;
      call.cost_usd = CostOf(*call.model, *spent);
      data["input_tokens"] = spent->input_tokens;
      data["output_tokens"] = spent->output_tokens;
      data["cost_usd"] = call.cost_usd;
      if (spent->estimated) data["estimated"] = true;
      store::ChatRecord rec;
      rec.model = call.alias;
      rec.usage = store::Usage{spent->input_tokens, spent->output_tokens, 1, call.cost_usd};
      rec.event_data = data;
      auto totals =
          co_await RunBlocking(pool_, [this, &id, &rec] { return store_.RecordChat(id, rec); });
      if (totals) {
        call.totals = totals->totals;
        conversations_.Apply(id, rec, *totals);
        recorded = true;
      } else {
        // The session has ended: its totals are final; the event and the metrics keep the tokens.
        log::Warn("llm call: the tokens of an unfinished call could not be charged to its session",
                  {{"session", id}, {"error", totals.error().message}});
      }
    }
    if (!recorded) {
      // A failed call's event counts against the session's event quota: a sandbox repeating
      // calls that fail must not grow the events table without bound. Past the quota the
      // call is still in the metrics and the log, not in the events.
      const store::EventQuota quota = EventQuotaFor(config_);
      auto ev = co_await RunBlocking(pool_, [this, &id, &data, &quota] {
        return store_.AppendEventWithinQuota(id, "llm.call", data, quota);
      });
      if (!ev) failed = ev.error();
    }
  }
  events_.Notify(id);
  Settle(call);
  locks_.Release(id);
  CountOutcome(call);
  const llm::TokenUsage* metered = Metered(call);
  log::Write(call.error ? log::Level::kWarn : log::Level::kInfo, "llm call",
             {{"session", id},
              {"model", call.alias},
              {"outcome", call.error ? std::string(llm::OutcomeName(call.error->outcome)) : "ok"},
              {"latency_ms", static_cast<int64_t>(call.latency_s * 1000)},
              {"input_tokens", metered ? metered->input_tokens : 0},
              {"output_tokens", metered ? metered->output_tokens : 0},
              {"error", call.error ? call.error->message : ""}});
  co_return failed;
}

void LlmProxy::CountOutcome(const Call& call) {
  std::string outcome = call.error ? std::string(llm::OutcomeName(call.error->outcome)) : "ok";
  metrics_.calls.With({call.alias, outcome}).Inc();
  metrics_.seconds.With({call.alias}).Observe(call.latency_s);
  if (const llm::TokenUsage* u = Metered(call)) {
    metrics_.tokens.With({call.alias, "input"}).Inc(static_cast<double>(u->input_tokens));
    metrics_.tokens.With({call.alias, "output"}).Inc(static_cast<double>(u->output_tokens));
    metrics_.cost.With({call.alias}).Inc(call.cost_usd);
  }
}

}  // namespace airlock::controlplane
