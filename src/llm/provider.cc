#include "llm/provider.h"

#include <algorithm>
#include <vector>

#include "common/sse_parser.h"

namespace airlock::llm {

std::string_view OutcomeName(Outcome o) {
  switch (o) {
    case Outcome::kOk: return "ok";
    case Outcome::kUpstreamError: return "upstream_error";
    case Outcome::kTimeout: return "timeout";
    case Outcome::kRefused: return "refused";
    case Outcome::kCancelled: return "cancelled";
    case Outcome::kReceiverGone: return "sandbox_gone";
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
// or 403. The key is cut out in case the provider quotes it.
std::string RefusalDetail(std::string_view body, const std::string& key) {
  auto j = ParseJson(body, 16);
  if (!j || !j->is_object()) return "";
  const Json* err = j->contains("error") ? &(*j)["error"] : nullptr;
  if (err == nullptr || !err->is_object() || !err->contains("message") || !(*err)["message"].is_string()) return "";
  std::string msg = (*err)["message"].get<std::string>();
  if (key.size() >= 8) {
    for (size_t at; (at = msg.find(key)) != std::string::npos;) msg.replace(at, key.size(), "***");
    // Providers quote a key's first few characters: cut any 8-character prefix of it too.
    for (size_t at; (at = msg.find(key.substr(0, 8))) != std::string::npos;) msg.replace(at, 8, "***");
  }
  return Printable(msg, 300);
}

CallError FromTransport(const Error& e, const CallCancel& cancel) {
  if (cancel.cancelled()) return CallError{Outcome::kCancelled, "the call was cancelled", 0};
  return CallError{e.code == ErrorCode::kDeadlineExceeded ? Outcome::kTimeout : Outcome::kUpstreamError,
                   "the model provider could not be reached: " + e.message, 0};
}

CallError FromStatus(unsigned status, const std::string& what, const std::string& detail, int attempts) {
  std::string tries = attempts > 1 ? fmt::format(" after {} attempts", attempts) : "";
  std::string code = what.empty() ? "" : " " + what;
  if (status == 401 || status == 403) {
    return CallError{Outcome::kUpstreamError,
                     fmt::format("the model provider refused the control plane's credentials ({}{}); the operator "
                                 "must check the provider's key",
                                 status, code),
                     status};
  }
  if (status == 429) {
    return CallError{Outcome::kUpstreamError,
                     fmt::format("the model provider is rate limiting ({}{}){}", status, code, tries), status};
  }
  if (status >= 500) {
    return CallError{Outcome::kUpstreamError, fmt::format("the model provider failed ({}{}){}", status, code, tries),
                     status};
  }
  return CallError{Outcome::kUpstreamError,
                   fmt::format("the model provider refused the request ({}{}){}", status, code,
                               detail.empty() ? "" : ": " + detail),
                   status};
}

// Parses the upstream's server-sent events, translates them and hands each chunk on.
class StreamBridge : public BodySink {
 public:
  StreamBridge(StreamTranslator& translator, ChunkReceiver& receiver)
      : translator_(translator), receiver_(receiver), parser_([this](const SseEvent& e) {
          events_.push_back(e);
          return true;
        }) {}

  awaitable<bool> OnData(std::string_view piece) override {
    events_.clear();
    auto fed = parser_.Feed(piece);
    if (!fed) {
      error_ = CallError{Outcome::kUpstreamError, "the model provider's stream is malformed: " + fed.error().message, 0};
      co_return false;
    }
    for (const auto& e : events_) {
      std::vector<Json> chunks;
      auto st = translator_.OnEvent(e.event == "message" ? std::string_view() : std::string_view(e.event), e.data,
                                    chunks);
      if (!st) {
        error_ = CallError{Outcome::kUpstreamError, st.error().message, 0};
        co_return false;
      }
      for (const auto& chunk : chunks) {
        if (!co_await receiver_.OnChunk(chunk)) {
          error_ = CallError{Outcome::kReceiverGone, "the sandbox went away during the call", 0};
          co_return false;
        }
      }
    }
    co_return true;
  }

  const std::optional<CallError>& error() const { return error_; }

 private:
  StreamTranslator& translator_;
  ChunkReceiver& receiver_;
  std::vector<SseEvent> events_;
  SseParser parser_;
  std::optional<CallError> error_;
};

class HttpProvider : public Provider {
 public:
  HttpProvider(std::unique_ptr<WireFormat> format, Endpoint endpoint, Secret key, UpstreamClient& client)
      : format_(std::move(format)), endpoint_(std::move(endpoint)), key_(std::move(key)), client_(client) {}

  std::string_view kind() const override { return format_->kind(); }

  awaitable<CallResult<ChatResult>> Chat(const ChatRequest& req, ChunkReceiver* receiver,
                                         CallCancel& cancel) override {
    auto call = format_->BuildRequest(req, key_.Reveal());
    if (!call) co_return std::unexpected(CallError{Outcome::kRefused, call.error().message, 0});
    if (!req.stream || receiver == nullptr) {
      auto r = co_await client_.Post(endpoint_, *call, nullptr, cancel);
      if (!r) co_return std::unexpected(FromTransport(r.error(), cancel));
      if (r->status < 200 || r->status >= 300) co_return std::unexpected(StatusError(*r));
      auto parsed = format_->ParseResponse(r->body);
      if (!parsed) {
        co_return std::unexpected(
            CallError{Outcome::kUpstreamError, "the model provider's answer is malformed: " + parsed.error().message,
                      r->status});
      }
      // A provider that reports no usage (many local servers): the prompt is estimated too, or
      // it would cost nothing against the session's budget.
      if (parsed->usage.estimated && parsed->usage.input_tokens == 0) {
        parsed->usage.input_tokens = EstimateTokens(req.messages) + EstimateTokens(req.tools);
      }
      co_return std::move(*parsed);
    }
    auto translator = format_->NewStream(req);
    StreamBridge bridge(*translator, *receiver);
    auto r = co_await client_.Post(endpoint_, *call, &bridge, cancel);
    if (bridge.error()) co_return std::unexpected(*bridge.error());
    if (!r) co_return std::unexpected(FromTransport(r.error(), cancel));
    if (r->status < 200 || r->status >= 300) co_return std::unexpected(StatusError(*r));
    if (!translator->finished()) {
      co_return std::unexpected(
          CallError{Outcome::kUpstreamError, "the model provider's stream ended before the reply was complete", 0});
    }
    auto result = translator->Result();
    if (!result) co_return std::unexpected(CallError{Outcome::kUpstreamError, result.error().message, 0});
    co_return std::move(*result);
  }

 private:
  CallError StatusError(const UpstreamResponse& r) const {
    bool refused = r.status == 400 || r.status == 404 || r.status == 413 || r.status == 422;
    return FromStatus(r.status, Printable(format_->DescribeError(r.status, r.body), 80),
                      refused ? RefusalDetail(r.body, key_.Reveal()) : "", r.attempts);
  }

  std::unique_ptr<WireFormat> format_;
  Endpoint endpoint_;
  Secret key_;
  UpstreamClient& client_;
};

}  // namespace

std::unique_ptr<Provider> MakeHttpProvider(std::unique_ptr<WireFormat> format, Endpoint endpoint, Secret api_key,
                                           UpstreamClient& client) {
  return std::make_unique<HttpProvider>(std::move(format), std::move(endpoint), std::move(api_key), client);
}

}  // namespace airlock::llm
