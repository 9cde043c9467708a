#include "llm/http_provider.h"

#include <algorithm>
#include <vector>

#include "common/sse_parser.h"
#include "llm/redact.h"

namespace airlock::llm {

std::string_view OutcomeName(Outcome o) {
  switch (o) {
    case Outcome::kOk:
      return "ok";
    case Outcome::kUpstreamError:
      return "upstream_error";
    case Outcome::kTimeout:
      return "timeout";
    case Outcome::kRefused:
      return "refused";
    case Outcome::kCancelled:
      return "cancelled";
    case Outcome::kReceiverGone:
      return "sandbox_gone";
  }
  return "unknown";
}

namespace {

// Printable ASCII, bounded: what of an upstream's words may reach a log or the sandbox.
std::string Printable(std::string_view text, size_t max) {
  std::string out;
  for (char ch : text.substr(0, max)) out += (ch >= 0x20 && ch < 0x7f) ? ch : ' ';
  if (text.size() > max) out += "...";
  return out;
}

// The free-text message of a refused request (400, 404, 413, 422: "maximum context length
// exceeded", "unknown model"), which the agent needs to correct itself. Never used for 401
// or 403. The key is cut out, in any form, in case the provider quotes it.
std::string RefusalDetail(std::string_view body, const KeyRedactor& redactor) {
  auto j = ParseJson(body, 16);
  if (!j || !j->is_object()) return "";
  const Json* err = j->contains("error") ? &(*j)["error"] : nullptr;
  if (err == nullptr || !err->is_object() || !err->contains("message") ||
      !(*err)["message"].is_string())
    return "";
  return redactor.Apply(Printable(redactor.Apply((*err)["message"].get<std::string>()), 300));
}

CallError FromTransport(const Error& e, const CallCancel& cancel) {
  if (cancel.cancelled()) return CallError{Outcome::kCancelled, "the call was cancelled", 0};
  return CallError{
      e.code == ErrorCode::kDeadlineExceeded ? Outcome::kTimeout : Outcome::kUpstreamError,
      "the model provider could not be reached: " + e.message, 0};
}

CallError FromStatus(unsigned status, const std::string& what, const std::string& detail,
                     int attempts) {
  std::string tries = attempts > 1 ? fmt::format(" after {} attempts", attempts) : "";
  std::string code = what.empty() ? "" : " " + what;
  if (status == 401 || status == 403) {
    // Nothing of the answer: its code, type or message may be the key itself.
    return CallError{
        Outcome::kUpstreamError,
        fmt::format("the model provider refused the control plane's credentials ({}); the operator "
                    "must check the provider's key",
                    status),
        status};
  }
  if (status == 429) {
    return CallError{
        Outcome::kUpstreamError,
        fmt::format("the model provider is rate limiting ({}{}){}", status, code, tries), status};
  }
  if (status >= 500) {
    return CallError{Outcome::kUpstreamError,
                     fmt::format("the model provider failed ({}{}){}", status, code, tries),
                     status};
  }
  return CallError{Outcome::kUpstreamError,
                   fmt::format("the model provider refused the request ({}{}){}", status, code,
                               detail.empty() ? "" : ": " + detail),
                   status};
}

// Parses the upstream's server-sent events, translates them and hands each chunk on. When the
// receiver is gone after the reply is complete, it reads on without forwarding (bounded by
// kDrainTimeout and kMaxDrainBytes) so that the usage the upstream reports last is not lost.
class StreamBridge : public BodySink {
 public:
  StreamBridge(StreamTranslator& translator, ChunkReceiver& receiver, CallCancel& cancel)
      : translator_(translator),
        receiver_(receiver),
        cancel_(cancel),
        parser_([this](const SseEvent& e) {
          events_.push_back(e);
          return true;
        }) {}
  ~StreamBridge() override { *armed_ = false; }
  StreamBridge(const StreamBridge&) = delete;
  StreamBridge& operator=(const StreamBridge&) = delete;

  awaitable<bool> OnData(std::string_view piece) override {
    if (draining_) {
      drained_bytes_ += piece.size();
      if (drained_bytes_ > kMaxDrainBytes) co_return false;
    }
    events_.clear();
    auto fed = parser_.Feed(piece);
    if (!fed) {
      error_ = CallError{Outcome::kUpstreamError,
                         "the model provider's stream is malformed: " + fed.error().message, 0};
      co_return false;
    }
    for (const auto& e : events_) {
      std::vector<Json> chunks;
      auto st = translator_.OnEvent(
          e.event == "message" ? std::string_view() : std::string_view(e.event), e.data, chunks);
      if (!st) {
        error_ = CallError{Outcome::kUpstreamError, st.error().message, 0};
        co_return false;
      }
      produced_ += chunks.size();
      for (const auto& chunk : chunks) {
        if (draining_) break;
        if (!co_await receiver_.OnChunk(chunk)) {
          if (!translator_.reply_complete()) {
            // Tokens are still being generated for nobody: stop the upstream.
            error_ = CallError{Outcome::kReceiverGone, "the sandbox went away during the call", 0};
            co_return false;
          }
          co_await StartDraining();
        }
      }
    }
    co_return !(draining_ && translator_.finished());
  }

  const std::optional<CallError>& error() const { return error_; }
  bool draining() const { return draining_; }
  // True once the upstream produced a chunk of the reply: the call has begun to cost.
  bool produced() const { return produced_ > 0; }

 private:
  awaitable<void> StartDraining() {
    draining_ = true;
    auto executor = co_await asio::this_coro::executor;
    timer_ = std::make_unique<asio::steady_timer>(executor, kDrainTimeout);
    std::shared_ptr<bool> armed = armed_;
    CallCancel* cancel = &cancel_;
    timer_->async_wait([armed, cancel](const boost::system::error_code& ec) {
      if (!ec && *armed) cancel->Cancel();
    });
  }

  StreamTranslator& translator_;
  ChunkReceiver& receiver_;
  CallCancel& cancel_;
  std::vector<SseEvent> events_;
  SseParser parser_;
  std::optional<CallError> error_;
  bool draining_ = false;
  size_t drained_bytes_ = 0;
  size_t produced_ = 0;
  std::unique_ptr<asio::steady_timer> timer_;
  std::shared_ptr<bool> armed_ = std::make_shared<bool>(true);  // false once the bridge is gone
};

class HttpProvider : public Provider {
 public:
  HttpProvider(std::unique_ptr<WireFormat> format, Endpoint endpoint, Secret key,
               std::unique_ptr<UpstreamClient> client)
      : format_(std::move(format)),
        endpoint_(std::move(endpoint)),
        key_(std::move(key)),
        redactor_(key_.Reveal()),
        client_(std::move(client)) {}

  std::string_view kind() const override { return format_->kind(); }

  // Every message that leaves here goes to the sandbox, a log line and an event: whatever of
  // the upstream's words it quotes, the key is cut out of it in any form.
  awaitable<CallResult<ChatResult>> Chat(const ChatRequest& req, ChunkReceiver* receiver,
                                         CallCancel& cancel) override {
    auto r = co_await Call(req, receiver, cancel);
    if (!r) r.error().message = redactor_.Apply(r.error().message);
    co_return r;
  }

 private:
  awaitable<CallResult<ChatResult>> Call(const ChatRequest& req, ChunkReceiver* receiver,
                                         CallCancel& cancel) {
    auto call = format_->BuildRequest(req, key_.Reveal());
    if (!call) co_return std::unexpected(CallError{Outcome::kRefused, call.error().message, 0});
    if (!req.stream || receiver == nullptr) {
      auto r = co_await client_->Post(endpoint_, *call, nullptr, cancel);
      if (!r) co_return std::unexpected(FromTransport(r.error(), cancel));
      if (r->status < 200 || r->status >= 300) co_return std::unexpected(StatusError(*r));
      auto parsed = format_->ParseResponse(r->body);
      if (!parsed) {
        co_return std::unexpected(CallError{
            Outcome::kUpstreamError,
            "the model provider's answer is malformed: " + parsed.error().message, r->status});
      }
      // A provider that reports no usage (many local servers): the prompt is estimated too, or
      // it would cost nothing against the session's budget.
      if (parsed->usage.estimated && parsed->usage.input_tokens == 0) {
        parsed->usage.input_tokens = EstimateTokens(req.messages) + EstimateTokens(req.tools);
      }
      co_return std::move(*parsed);
    }
    auto translator = format_->NewStream(req);
    StreamBridge bridge(*translator, *receiver, cancel);
    auto r = co_await client_->Post(endpoint_, *call, &bridge, cancel);
    std::optional<CallError> failure;
    if (bridge.draining()) {
      // The receiver left after the whole reply: the call is complete. Its usage is the
      // upstream's if that came before the stream ended or the drain bounds were reached,
      // else estimated.
      auto result = translator->Result();
      if (result) co_return std::move(*result);
      failure = CallError{Outcome::kReceiverGone, "the sandbox went away during the call", 0};
    } else if (bridge.error()) {
      failure = *bridge.error();
    } else if (!r) {
      failure = FromTransport(r.error(), cancel);
    } else if (r->status < 200 || r->status >= 300) {
      co_return std::unexpected(StatusError(*r));
    } else if (!translator->finished()) {
      failure = CallError{Outcome::kUpstreamError,
                          "the model provider's stream ended before the reply was complete", 0};
    }
    if (!failure) {
      auto result = translator->Result();
      if (result) co_return std::move(*result);
      failure = CallError{Outcome::kUpstreamError, result.error().message, 0};
    }
    // Whatever was generated before the call broke off (the sandbox hung up mid-reply, the
    // upstream cut the stream or went silent) is billed by the provider: it is charged.
    if (bridge.produced()) failure->spent = translator->Spent();
    co_return std::unexpected(std::move(*failure));
  }

  CallError StatusError(const UpstreamResponse& r) const {
    bool refused = r.status == 400 || r.status == 404 || r.status == 413 || r.status == 422;
    return FromStatus(r.status, Printable(format_->DescribeError(r.status, r.body), 80),
                      refused ? RefusalDetail(r.body, redactor_) : "", r.attempts);
  }

  std::unique_ptr<WireFormat> format_;
  Endpoint endpoint_;
  Secret key_;
  KeyRedactor redactor_;
  std::unique_ptr<UpstreamClient> client_;
};

}  // namespace

std::unique_ptr<Provider> MakeHttpProvider(std::unique_ptr<WireFormat> format, Endpoint endpoint,
                                           Secret api_key, std::unique_ptr<UpstreamClient> client) {
  return std::make_unique<HttpProvider>(std::move(format), std::move(endpoint), std::move(api_key),
                                        std::move(client));
}

}  // namespace airlock::llm
