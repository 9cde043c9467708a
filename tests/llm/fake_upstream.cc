#include "tests/llm/fake_upstream.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <mutex>
#include <thread>

#include <boost/asio/ssl.hpp>
#include <boost/beast/ssl.hpp>

#include "common/asio.h"

namespace airlock::fake {

namespace {

using tcp = asio::ip::tcp;
using OJson = nlohmann::ordered_json;
using Headers = std::vector<std::pair<std::string, std::string>>;

constexpr size_t kHeaderLimit = 64 * 1024;
constexpr size_t kBodyLimit = 64 * 1024 * 1024;
constexpr std::string_view kGarbage =
    "\x16\x03\x01\xff\xfe garbage \x01\x02 this is not HTTP at all\r\n\r\n";

auto Redirect(beast::error_code& ec) { return asio::redirect_error(use_awaitable, ec); }

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool SameName(std::string_view a, std::string_view b) { return beast::iequals(a, b); }

// Everything a session needs to write one response, decided while holding no socket.
struct Plan {
  Reply::Kind kind = Reply::Kind::kMessage;  // kMessage, kError and kRaw all write `head`
  std::chrono::milliseconds delay{0};
  std::string head;  // status line and headers, blank line included
  bool stream = false;
  std::string body;                 // when not streaming
  std::vector<std::string> events;  // when streaming: complete SSE events
  std::chrono::milliseconds event_delay{0};
  Fault fault = Fault::kNone;
  size_t fault_after = 0;
  std::string error_event;  // for Fault::kErrorEvent
  bool close = false;       // the connection ends after this response
};

std::string Reason(int status) {
  std::string_view r = http::obsolete_reason(static_cast<http::status>(status));
  if (r.empty() || r.front() == '<') return status == 529 ? "Overloaded" : "Unknown";
  return std::string(r);
}

// The status line and headers. `extra` (the reply's own headers) replaces a base header of the
// same name; a body length is sent unless the response is chunked or `extra` sets one.
std::string Head(int status, Headers base, const Headers& extra, std::optional<size_t> length,
                 bool close) {
  for (const auto& [name, value] : extra) {
    std::erase_if(base, [&](const auto& h) { return SameName(h.first, name); });
    base.emplace_back(name, value);
  }
  bool has_framing = std::any_of(base.begin(), base.end(), [](const auto& h) {
    return SameName(h.first, "content-length") || SameName(h.first, "transfer-encoding");
  });
  std::string out = fmt::format("HTTP/1.1 {} {}\r\n", status, Reason(status));
  for (const auto& [name, value] : base) out += fmt::format("{}: {}\r\n", name, value);
  if (!has_framing) {
    out += length ? fmt::format("content-length: {}\r\n", *length)
                  : std::string("transfer-encoding: chunked\r\n");
  }
  if (close) out += "connection: close\r\n";
  out += "\r\n";
  return out;
}

Headers ProviderHeaders(ApiFormat format, uint64_t n, std::string_view content_type) {
  Headers h{{"content-type", std::string(content_type)}};
  if (format == ApiFormat::kOpenAi) {
    h.emplace_back("x-request-id", fmt::format("req_fake_{}", n));
    h.emplace_back("openai-processing-ms", "1");
  } else {
    h.emplace_back("request-id", fmt::format("req_fake_{}", n));
  }
  return h;
}

void AppendChunk(std::string& out, std::string_view data) {
  out += fmt::format("{:x}\r\n", data.size());
  out += data;
  out += "\r\n";
}

constexpr std::string_view kLastChunk = "0\r\n\r\n";

// ---- Errors in each provider's shape ----------------------------------------------------------

std::string DefaultErrorType(ApiFormat format, int status) {
  if (format == ApiFormat::kOpenAi) {
    if (status == 429) return "requests";
    return status >= 500 ? "server_error" : "invalid_request_error";
  }
  switch (status) {
    case 400:
      return "invalid_request_error";
    case 401:
      return "authentication_error";
    case 402:
      return "billing_error";
    case 403:
      return "permission_error";
    case 404:
      return "not_found_error";
    case 413:
      return "request_too_large";
    case 429:
      return "rate_limit_error";
    case 500:
      return "api_error";
    case 504:
      return "timeout_error";
    case 529:
      return "overloaded_error";
    default:
      return status >= 500 ? "api_error" : "invalid_request_error";
  }
}

std::string DefaultErrorCode(int status) {
  if (status == 401) return "invalid_api_key";
  if (status == 429) return "rate_limit_exceeded";
  return {};
}

OJson ErrorJson(ApiFormat format, uint64_t n, int status, const std::string& message,
                const std::string& type, const std::string& code) {
  std::string t = type.empty() ? DefaultErrorType(format, status) : type;
  if (format == ApiFormat::kOpenAi) {
    std::string c = code.empty() && type.empty() ? DefaultErrorCode(status) : code;
    OJson e = {{"message", message}, {"type", t}, {"param", nullptr}, {"code", nullptr}};
    if (!c.empty()) e["code"] = c;
    return OJson{{"error", e}};
  }
  return OJson{{"type", "error"},
               {"error", {{"type", t}, {"message", message}}},
               {"request_id", fmt::format("req_fake_{}", n)}};
}

Plan ErrorPlan(ApiFormat format, uint64_t n, int status, const std::string& message,
               const std::string& type, const std::string& code, const Headers& extra, bool close) {
  Plan p;
  p.kind = Reply::Kind::kError;
  p.body = ErrorJson(format, n, status, message, type, code).dump();
  p.head =
      Head(status, ProviderHeaders(format, n, "application/json"), extra, p.body.size(), close);
  p.close = close;
  return p;
}

// ---- Assistant messages -------------------------------------------------------------------------

// What one request asked for, as far as rendering needs it.
struct Ask {
  ApiFormat format = ApiFormat::kOpenAi;
  uint64_t n = 0;
  bool stream = false;
  bool include_usage = false;
  std::string model;
  int64_t prompt_tokens = 1;
};

// Splits `text` into at most `pieces` parts of near-equal size, never inside a UTF-8 sequence.
std::vector<std::string> Split(const std::string& text, int pieces) {
  std::vector<std::string> out;
  if (text.empty()) return out;
  size_t count = static_cast<size_t>(std::max(1, pieces));
  size_t step = std::max<size_t>(1, (text.size() + count - 1) / count);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = std::min(text.size(), pos + step);
    while (end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) ++end;
    out.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  return out;
}

int64_t Words(const std::string& text) {
  int64_t words = 0;
  bool in_word = false;
  for (char c : text) {
    bool space = std::isspace(static_cast<unsigned char>(c)) != 0;
    if (!space && !in_word) ++words;
    in_word = !space;
  }
  return words;
}

std::string Dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

int64_t PromptTokens(const nlohmann::json& request, ApiFormat format) {
  size_t bytes = 0;
  if (auto it = request.find("messages"); it != request.end()) bytes += Dump(*it).size();
  if (format == ApiFormat::kAnthropic) {
    if (auto it = request.find("system"); it != request.end()) bytes += Dump(*it).size();
  }
  return std::max<int64_t>(1, static_cast<int64_t>(bytes / 4));
}

std::string FinishName(ApiFormat format, Finish finish, bool has_tools) {
  if (finish == Finish::kAuto) finish = has_tools ? Finish::kToolCalls : Finish::kStop;
  bool openai = format == ApiFormat::kOpenAi;
  switch (finish) {
    case Finish::kLength:
      return openai ? "length" : "max_tokens";
    case Finish::kToolCalls:
      return openai ? "tool_calls" : "tool_use";
    case Finish::kContentFilter:
      return openai ? "content_filter" : "refusal";
    case Finish::kAuto:
    case Finish::kStop:
      break;
  }
  return openai ? "stop" : "end_turn";
}

OJson OpenAiUsage(const Usage& u) {
  return OJson{
      {"prompt_tokens", u.input_tokens + u.cache_read_tokens},
      {"completion_tokens", u.output_tokens},
      {"total_tokens", u.input_tokens + u.cache_read_tokens + u.output_tokens},
      {"prompt_tokens_details", {{"cached_tokens", u.cache_read_tokens}, {"audio_tokens", 0}}},
      {"completion_tokens_details",
       {{"reasoning_tokens", 0},
        {"audio_tokens", 0},
        {"accepted_prediction_tokens", 0},
        {"rejected_prediction_tokens", 0}}}};
}

OJson AnthropicUsage(const Usage& u, int64_t output_tokens) {
  return OJson{{"input_tokens", u.input_tokens},
               {"cache_creation_input_tokens", 0},
               {"cache_read_input_tokens", u.cache_read_tokens},
               {"output_tokens", output_tokens}};
}

// A reply with its defaults filled in for one request.
struct Message {
  std::string text;
  std::vector<ToolCall> tools;
  std::vector<OJson> inputs;  // Anthropic's `input` of each tool call
  std::string finish;
  Usage usage;
  int chunks = 3;
};

std::string SseData(const OJson& j) { return "data: " + j.dump() + "\n\n"; }

std::string SseEvent(std::string_view type, const OJson& j) {
  return fmt::format("event: {}\ndata: {}\n\n", type, j.dump());
}

std::string OpenAiBody(const Ask& ask, const Message& m) {
  OJson msg = {{"role", "assistant"},
               {"content", m.text},
               {"refusal", nullptr},
               {"annotations", OJson::array()}};
  if (!m.tools.empty()) {
    if (m.text.empty()) msg["content"] = nullptr;
    OJson calls = OJson::array();
    for (const auto& t : m.tools) {
      calls.push_back({{"id", t.id},
                       {"type", "function"},
                       {"function", {{"name", t.name}, {"arguments", t.arguments}}}});
    }
    msg["tool_calls"] = std::move(calls);
  }
  OJson body = {{"id", fmt::format("chatcmpl-fake-{}", ask.n)},
                {"object", "chat.completion"},
                {"created", static_cast<int64_t>(std::time(nullptr))},
                {"model", ask.model},
                {"choices", OJson::array({OJson{{"index", 0},
                                                {"message", std::move(msg)},
                                                {"logprobs", nullptr},
                                                {"finish_reason", m.finish}}})},
                {"usage", OpenAiUsage(m.usage)},
                {"service_tier", "default"},
                {"system_fingerprint", "fp_fake"}};
  return body.dump();
}

std::vector<std::string> OpenAiEvents(const Ask& ask, const Message& m) {
  const int64_t created = static_cast<int64_t>(std::time(nullptr));
  const std::string id = fmt::format("chatcmpl-fake-{}", ask.n);
  auto chunk = [&](OJson delta, OJson finish) {
    OJson c = {{"id", id},
               {"object", "chat.completion.chunk"},
               {"created", created},
               {"model", ask.model},
               {"system_fingerprint", "fp_fake"},
               {"choices", OJson::array({OJson{{"index", 0},
                                               {"delta", std::move(delta)},
                                               {"logprobs", nullptr},
                                               {"finish_reason", std::move(finish)}}})}};
    if (ask.include_usage) c["usage"] = nullptr;
    return SseData(c);
  };
  std::vector<std::string> events;
  OJson role = {{"role", "assistant"}, {"content", ""}, {"refusal", nullptr}};
  if (m.text.empty() && !m.tools.empty()) role["content"] = nullptr;
  events.push_back(chunk(std::move(role), nullptr));
  for (const auto& piece : Split(m.text, m.chunks)) {
    events.push_back(chunk(OJson{{"content", piece}}, nullptr));
  }
  for (size_t i = 0; i < m.tools.size(); ++i) {
    const ToolCall& t = m.tools[i];
    events.push_back(
        chunk(OJson{{"tool_calls",
                     OJson::array({OJson{{"index", i},
                                         {"id", t.id},
                                         {"type", "function"},
                                         {"function", {{"name", t.name}, {"arguments", ""}}}}})}},
              nullptr));
    for (const auto& piece : Split(t.arguments, m.chunks)) {
      events.push_back(
          chunk(OJson{{"tool_calls",
                       OJson::array({OJson{{"index", i}, {"function", {{"arguments", piece}}}}})}},
                nullptr));
    }
  }
  events.push_back(chunk(OJson::object(), m.finish));
  if (ask.include_usage) {
    OJson last = {{"id", id},
                  {"object", "chat.completion.chunk"},
                  {"created", created},
                  {"model", ask.model},
                  {"system_fingerprint", "fp_fake"},
                  {"choices", OJson::array()},
                  {"usage", OpenAiUsage(m.usage)}};
    events.push_back(SseData(last));
  }
  events.push_back("data: [DONE]\n\n");
  return events;
}

OJson AnthropicContent(const Message& m) {
  OJson content = OJson::array();
  if (!m.text.empty()) content.push_back({{"type", "text"}, {"text", m.text}});
  for (size_t i = 0; i < m.tools.size(); ++i) {
    content.push_back({{"type", "tool_use"},
                       {"id", m.tools[i].id},
                       {"name", m.tools[i].name},
                       {"input", m.inputs[i]}});
  }
  return content;
}

std::string AnthropicBody(const Ask& ask, const Message& m) {
  OJson body = {{"id", fmt::format("msg_fake_{}", ask.n)},
                {"type", "message"},
                {"role", "assistant"},
                {"model", ask.model},
                {"content", AnthropicContent(m)},
                {"stop_reason", m.finish},
                {"stop_sequence", nullptr},
                {"usage", AnthropicUsage(m.usage, m.usage.output_tokens)}};
  return body.dump();
}

std::vector<std::string> AnthropicEvents(const Ask& ask, const Message& m) {
  std::vector<std::string> events;
  OJson start = {{"type", "message_start"},
                 {"message",
                  {{"id", fmt::format("msg_fake_{}", ask.n)},
                   {"type", "message"},
                   {"role", "assistant"},
                   {"model", ask.model},
                   {"content", OJson::array()},
                   {"stop_reason", nullptr},
                   {"stop_sequence", nullptr},
                   {"usage", AnthropicUsage(m.usage, 1)}}}};
  events.push_back(SseEvent("message_start", start));
  const std::string ping = SseEvent("ping", OJson{{"type", "ping"}});
  bool pinged = false;
  int index = 0;
  auto block = [&](OJson content_block, std::string_view delta_type, std::string_view field,
                   const std::string& text) {
    events.push_back(
        SseEvent("content_block_start", OJson{{"type", "content_block_start"},
                                              {"index", index},
                                              {"content_block", std::move(content_block)}}));
    if (!pinged) {
      events.push_back(ping);
      pinged = true;
    }
    for (const auto& piece : Split(text, m.chunks)) {
      events.push_back(SseEvent("content_block_delta",
                                OJson{{"type", "content_block_delta"},
                                      {"index", index},
                                      {"delta", {{"type", delta_type}, {field, piece}}}}));
    }
    events.push_back(
        SseEvent("content_block_stop", OJson{{"type", "content_block_stop"}, {"index", index}}));
    ++index;
  };
  if (!m.text.empty() || m.tools.empty()) {
    block(OJson{{"type", "text"}, {"text", ""}}, "text_delta", "text", m.text);
  }
  for (size_t i = 0; i < m.tools.size(); ++i) {
    block(OJson{{"type", "tool_use"},
                {"id", m.tools[i].id},
                {"name", m.tools[i].name},
                {"input", OJson::object()}},
          "input_json_delta", "partial_json", m.inputs[i].dump());
  }
  events.push_back(SseEvent(
      "message_delta", OJson{{"type", "message_delta"},
                             {"delta", {{"stop_reason", m.finish}, {"stop_sequence", nullptr}}},
                             {"usage", {{"output_tokens", m.usage.output_tokens}}}}));
  events.push_back(SseEvent("message_stop", OJson{{"type", "message_stop"}}));
  return events;
}

std::string MaskKey(std::string_view key) {
  if (key.size() <= 10) return "***";
  return fmt::format("{}***{}", key.substr(0, 3), key.substr(key.size() - 4));
}

}  // namespace

// ---- Reply ----------------------------------------------------------------------------------

Reply Reply::Text(std::string text) {
  Reply r;
  r.text = std::move(text);
  return r;
}

Reply Reply::Default() {
  Reply r;
  r.default_text = true;
  return r;
}

Reply Reply::Tools(std::vector<ToolCall> calls, std::string text) {
  Reply r;
  r.tool_calls = std::move(calls);
  r.text = std::move(text);
  return r;
}

Reply Reply::Error(int status, std::string message) {
  Reply r;
  r.kind = Kind::kError;
  r.status = status;
  r.error_message = std::move(message);
  return r;
}

Reply Reply::RateLimited(int retry_after_seconds) {
  return Error(429, "Rate limit reached. Please try again later.")
      .WithHeader("retry-after", std::to_string(retry_after_seconds));
}

Reply Reply::Overloaded() { return Error(529, "Overloaded"); }

Reply Reply::Raw(int status, std::string body,
                 std::vector<std::pair<std::string, std::string>> headers) {
  Reply r;
  r.kind = Kind::kRaw;
  r.status = status;
  r.body = std::move(body);
  r.headers = std::move(headers);
  return r;
}

Reply Reply::NonJson() {
  return Raw(200, "<html><head><title>Gateway</title></head><body>Please log in.</body></html>\n",
             {{"content-type", "text/html; charset=utf-8"}});
}

Reply Reply::CloseBeforeResponse() {
  Reply r;
  r.kind = Kind::kClose;
  return r;
}

Reply Reply::Hang() {
  Reply r;
  r.kind = Kind::kHang;
  return r;
}

Reply Reply::Garbage(std::string bytes) {
  Reply r;
  r.kind = Kind::kGarbage;
  r.body = bytes.empty() ? std::string(kGarbage) : std::move(bytes);
  return r;
}

Reply Reply::WithDelay(std::chrono::milliseconds d) const {
  Reply r = *this;
  r.delay = d;
  return r;
}

Reply Reply::WithEventDelay(std::chrono::milliseconds d) const {
  Reply r = *this;
  r.event_delay = d;
  return r;
}

Reply Reply::WithChunks(int n) const {
  Reply r = *this;
  r.chunks = n;
  return r;
}

Reply Reply::WithUsage(Usage u) const {
  Reply r = *this;
  r.usage = u;
  return r;
}

Reply Reply::WithFinish(Finish f) const {
  Reply r = *this;
  r.finish = f;
  return r;
}

Reply Reply::WithModel(std::string m) const {
  Reply r = *this;
  r.model = std::move(m);
  return r;
}

Reply Reply::WithHeader(std::string name, std::string value) const {
  Reply r = *this;
  r.headers.emplace_back(std::move(name), std::move(value));
  return r;
}

Reply Reply::WithErrorType(std::string type, std::string code) const {
  Reply r = *this;
  r.error_type = std::move(type);
  r.error_code = std::move(code);
  return r;
}

Reply Reply::CloseAfterEvents(int k) const {
  Reply r = *this;
  r.fault = Fault::kClose;
  r.fault_after = k;
  return r;
}

Reply Reply::HangAfterEvents(int k) const {
  Reply r = *this;
  r.fault = Fault::kHang;
  r.fault_after = k;
  return r;
}

Reply Reply::ErrorAfterEvents(int k, int status, std::string message) const {
  Reply r = *this;
  r.fault = Fault::kErrorEvent;
  r.fault_after = k;
  r.status = status;
  r.error_message = std::move(message);
  return r;
}

// ---- RecordedRequest ------------------------------------------------------------------------

std::string RecordedRequest::Header(const std::string& name) const {
  auto it = headers.find(name);
  return it == headers.end() ? std::string() : it->second;
}

nlohmann::json RecordedRequest::Json() const {
  return nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
}

// ---- The server -----------------------------------------------------------------------------

class FakeUpstream::Impl {
 public:
  explicit Impl(FakeUpstreamOptions options) : opts_(std::move(options)) {}
  ~Impl() { Stop(); }

  Status Start();
  void Stop();

  FakeUpstreamOptions opts_;
  uint16_t port_ = 0;
  bool tls_ = false;
  std::string error_;

  mutable std::mutex mu_;
  std::condition_variable arrived_;
  std::deque<Reply> queue_;
  std::optional<Reply> default_reply_;
  std::vector<RecordedRequest> requests_;
  size_t request_count_ = 0;
  std::atomic<uint64_t> connections_{0};

 private:
  awaitable<void> Accept(tcp::acceptor acceptor);
  awaitable<void> Handle(tcp::socket socket, uint64_t connection);
  template <typename Stream>
  awaitable<void> Serve(Stream& stream, uint64_t connection);
  template <typename Stream>
  awaitable<bool> Execute(Stream& stream, const Plan& plan);

  Plan Prepare(http::request<http::string_body>& req, uint64_t connection);
  Plan Render(const Ask& ask, const Reply& reply, bool close);
  std::optional<Plan> CheckAuth(const http::request<http::string_body>& req, ApiFormat format,
                                uint64_t n, bool close) const;
  std::optional<Plan> Validate(const nlohmann::json& body, ApiFormat format, uint64_t n,
                               bool close) const;

  std::mutex stop_mu_;
  bool stopped_ = false;
  // Destroyed in Stop() in this order: the context (and with it every coroutine, socket and
  // timer) before the TLS context its streams use.
  std::unique_ptr<asio::ssl::context> ssl_;
  std::unique_ptr<asio::io_context> io_;
  std::vector<std::thread> threads_;
};

Status FakeUpstream::Impl::Start() {
  if (opts_.cert_file.empty() != opts_.key_file.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "fake upstream: set both cert_file and key_file");
  }
  if (!opts_.cert_file.empty()) {
    ssl_ = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_server);
    beast::error_code ec;
    ssl_->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                          asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                          asio::ssl::context::no_tlsv1_1,
                      ec);
    if (!ec) ssl_->use_certificate_chain_file(opts_.cert_file, ec);
    if (!ec) ssl_->use_private_key_file(opts_.key_file, asio::ssl::context::pem, ec);
    if (ec) {
      return Errorf(ErrorCode::kInvalidArgument, "fake upstream: cannot load {} / {}: {}",
                    opts_.cert_file, opts_.key_file, ec.message());
    }
    tls_ = true;
  }
  const int threads = std::max(1, opts_.threads);
  io_ = std::make_unique<asio::io_context>(threads);

  beast::error_code ec;
  auto address = asio::ip::make_address(opts_.host, ec);
  if (ec) return Errorf(ErrorCode::kInvalidArgument, "fake upstream: bad host \"{}\"", opts_.host);
  tcp::endpoint endpoint(address, opts_.port);
  tcp::acceptor acceptor(*io_);
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return Errorf(ErrorCode::kUnavailable, "fake upstream: cannot listen on {}:{}: {}", opts_.host,
                  opts_.port, ec.message());
  }
  port_ = acceptor.local_endpoint().port();
  asio::co_spawn(*io_, Accept(std::move(acceptor)), asio::detached);
  threads_.reserve(static_cast<size_t>(threads));
  for (int i = 0; i < threads; ++i) {
    threads_.emplace_back([io = io_.get()] { io->run(); });
  }
  return Ok();
}

void FakeUpstream::Impl::Stop() {
  std::lock_guard lock(stop_mu_);
  if (stopped_) return;
  stopped_ = true;
  if (io_) io_->stop();
  for (auto& t : threads_) t.join();
  threads_.clear();
  // Destroying the stopped context destroys every suspended coroutine, which closes the
  // listener and each connection, hanging ones included.
  io_.reset();
  ssl_.reset();
  arrived_.notify_all();
}

awaitable<void> FakeUpstream::Impl::Accept(tcp::acceptor acceptor) {
  auto executor = co_await asio::this_coro::executor;
  for (;;) {
    tcp::socket socket(executor);
    beast::error_code ec;
    co_await acceptor.async_accept(socket, Redirect(ec));
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
    if (ec) {
      // Out of descriptors, most likely: let connections finish rather than spin.
      asio::steady_timer pause(executor, std::chrono::milliseconds(10));
      co_await pause.async_wait(Redirect(ec));
      continue;
    }
    socket.set_option(tcp::no_delay(true), ec);
    uint64_t id = connections_.fetch_add(1) + 1;
    asio::co_spawn(executor, Handle(std::move(socket), id), asio::detached);
  }
}

awaitable<void> FakeUpstream::Impl::Handle(tcp::socket socket, uint64_t connection) {
  if (!ssl_) {
    co_await Serve(socket, connection);
    co_return;
  }
  beast::ssl_stream<tcp::socket> stream(std::move(socket), *ssl_);
  beast::error_code ec;
  co_await stream.async_handshake(asio::ssl::stream_base::server, Redirect(ec));
  if (ec) co_return;
  co_await Serve(stream, connection);
}

template <typename Stream>
awaitable<void> FakeUpstream::Impl::Serve(Stream& stream, uint64_t connection) {
  beast::flat_buffer buffer;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(kHeaderLimit);
    parser.body_limit(kBodyLimit);
    beast::error_code ec;
    co_await http::async_read_header(stream, buffer, parser, Redirect(ec));
    if (ec) co_return;
    if (beast::iequals(parser.get()[http::field::expect], "100-continue")) {
      static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      co_await asio::async_write(stream, asio::buffer(kContinue.data(), kContinue.size()),
                                 Redirect(ec));
      if (ec) co_return;
    }
    co_await http::async_read(stream, buffer, parser, Redirect(ec));
    if (ec) co_return;
    const Plan plan = Prepare(parser.get(), connection);
    if (!co_await Execute(stream, plan)) co_return;
  }
}

template <typename Stream>
awaitable<bool> FakeUpstream::Impl::Execute(Stream& stream, const Plan& plan) {
  auto executor = co_await asio::this_coro::executor;
  beast::error_code ec;
  asio::steady_timer timer(executor);
  auto sleep = [&](std::chrono::milliseconds d) -> awaitable<void> {
    timer.expires_after(d);
    co_await timer.async_wait(Redirect(ec));
  };
  auto write = [&](std::string_view bytes) -> awaitable<void> {
    co_await asio::async_write(stream, asio::buffer(bytes.data(), bytes.size()), Redirect(ec));
  };
  auto close = [&] {
    beast::error_code ignored;
    beast::get_lowest_layer(stream).close(ignored);
  };
  // Waits until Stop() destroys the coroutine; the connection stays open meanwhile.
  auto hang = [&]() -> awaitable<void> {
    timer.expires_at(asio::steady_timer::time_point::max());
    co_await timer.async_wait(Redirect(ec));
  };

  if (plan.delay.count() > 0) co_await sleep(plan.delay);
  switch (plan.kind) {
    case Reply::Kind::kClose:
      close();
      co_return false;
    case Reply::Kind::kHang:
      co_await hang();
      co_return false;
    case Reply::Kind::kGarbage:
      co_await write(plan.body);
      close();
      co_return false;
    case Reply::Kind::kMessage:
    case Reply::Kind::kError:
    case Reply::Kind::kRaw:
      break;
  }

  if (!plan.stream) {
    if (plan.fault == Fault::kClose || plan.fault == Fault::kHang) {
      const std::string partial = plan.head + plan.body.substr(0, plan.body.size() / 2);
      co_await write(partial);
      if (plan.fault == Fault::kClose) {
        close();
      } else if (!ec) {
        co_await hang();
      }
      co_return false;
    }
    std::array<asio::const_buffer, 2> buffers{asio::buffer(plan.head), asio::buffer(plan.body)};
    co_await asio::async_write(stream, buffers, Redirect(ec));
    co_return !ec && !plan.close;
  }

  const size_t limit = plan.fault == Fault::kNone ? plan.events.size()
                                                  : std::min(plan.fault_after, plan.events.size());
  if (plan.event_delay.count() <= 0) {
    // One write for the whole stream: the benchmark measures the proxy, not this server.
    std::string out = plan.head;
    for (size_t i = 0; i < limit; ++i) AppendChunk(out, plan.events[i]);
    if (plan.fault == Fault::kErrorEvent) AppendChunk(out, plan.error_event);
    if (plan.fault == Fault::kNone || plan.fault == Fault::kErrorEvent) out += kLastChunk;
    co_await write(out);
  } else {
    co_await write(plan.head);
    for (size_t i = 0; i < limit && !ec; ++i) {
      if (i > 0) co_await sleep(plan.event_delay);
      std::string chunk;
      AppendChunk(chunk, plan.events[i]);
      co_await write(chunk);
    }
    if (!ec && plan.fault == Fault::kErrorEvent) {
      if (limit > 0) co_await sleep(plan.event_delay);
      std::string chunk;
      AppendChunk(chunk, plan.error_event);
      co_await write(chunk);
    }
    if (!ec && (plan.fault == Fault::kNone || plan.fault == Fault::kErrorEvent)) {
      co_await write(kLastChunk);
    }
  }
  if (ec) co_return false;
  if (plan.fault == Fault::kClose) {
    close();
    co_return false;
  }
  if (plan.fault == Fault::kHang) {
    co_await hang();
    co_return false;
  }
  co_return !plan.close;
}

std::optional<Plan> FakeUpstream::Impl::CheckAuth(const http::request<http::string_body>& req,
                                                  ApiFormat format, uint64_t n, bool close) const {
  const std::string& key = opts_.expected_key;
  if (key.empty()) return std::nullopt;
  if (format == ApiFormat::kOpenAi) {
    std::string_view auth = req[http::field::authorization];
    if (auth.empty()) {
      return ErrorPlan(format, n, 401,
                       "You didn't provide an API key. You need to provide your API key in an "
                       "Authorization header using Bearer auth (i.e. Authorization: Bearer "
                       "YOUR_KEY).",
                       "invalid_request_error", "", {}, close);
    }
    std::string_view given = auth;
    if (given.size() >= 7 && beast::iequals(given.substr(0, 7), "Bearer ")) given.remove_prefix(7);
    if (given != key) {
      return ErrorPlan(format, n, 401,
                       fmt::format("Incorrect API key provided: {}. You can find your API key at "
                                   "https://platform.openai.com/account/api-keys.",
                                   MaskKey(given)),
                       "invalid_request_error", "invalid_api_key", {}, close);
    }
    return std::nullopt;
  }
  std::string_view given = req["x-api-key"];
  if (given.empty()) {
    return ErrorPlan(format, n, 401, "x-api-key header is required", "", "", {}, close);
  }
  if (given != key) return ErrorPlan(format, n, 401, "invalid x-api-key", "", "", {}, close);
  if (req["anthropic-version"].empty()) {
    return ErrorPlan(format, n, 400, "anthropic-version: header is required", "", "", {}, close);
  }
  return std::nullopt;
}

std::optional<Plan> FakeUpstream::Impl::Validate(const nlohmann::json& body, ApiFormat format,
                                                 uint64_t n, bool close) const {
  if (!body.is_object()) {
    std::string message =
        format == ApiFormat::kOpenAi
            ? "We could not parse the JSON body of your request. (HINT: This likely means you "
              "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
              "but what was sent was not valid JSON.)"
            : "There was an error parsing the body of your request.";
    return ErrorPlan(format, n, 400, message, "", "", {}, close);
  }
  auto missing = [&](const char* field) {
    return format == ApiFormat::kOpenAi
               ? ErrorPlan(format, n, 400, fmt::format("Missing required parameter: '{}'.", field),
                           "invalid_request_error", "missing_required_parameter", {}, close)
               : ErrorPlan(format, n, 400, fmt::format("{}: Field required", field), "", "", {},
                           close);
  };
  if (!body.contains("model") || !body["model"].is_string()) return missing("model");
  if (!body.contains("messages") || !body["messages"].is_array()) return missing("messages");
  if (format == ApiFormat::kAnthropic &&
      (!body.contains("max_tokens") || !body["max_tokens"].is_number_integer())) {
    return missing("max_tokens");
  }
  return std::nullopt;
}

Plan FakeUpstream::Impl::Prepare(http::request<http::string_body>& req, uint64_t connection) {
  uint64_t n = 0;
  {
    RecordedRequest record;
    if (opts_.record) {
      record.connection = connection;
      record.method = std::string(req.method_string());
      record.target = std::string(req.target());
      for (const auto& field : req) {
        auto [it, fresh] = record.headers.try_emplace(Lower(field.name_string()), field.value());
        if (!fresh) {
          it->second += ", ";
          it->second += field.value();
        }
      }
      record.body = req.body();
    }
    std::lock_guard lock(mu_);
    n = ++request_count_;
    if (opts_.record) {
      record.number = n;
      requests_.push_back(std::move(record));
    }
  }
  arrived_.notify_all();

  const bool close = !req.keep_alive();
  std::string_view target = req.target();
  std::string_view path = target.substr(0, target.find('?'));
  const bool serves_openai = opts_.formats != ServeFormats::kAnthropic;
  const bool serves_anthropic = opts_.formats != ServeFormats::kOpenAi;
  std::optional<ApiFormat> format;
  if (serves_openai && path == opts_.openai_prefix + "/chat/completions") {
    format = ApiFormat::kOpenAi;
  } else if (serves_anthropic && path == "/v1/messages") {
    format = ApiFormat::kAnthropic;
  }
  if (!format) {
    ApiFormat shape = serves_openai ? ApiFormat::kOpenAi : ApiFormat::kAnthropic;
    std::string message = shape == ApiFormat::kOpenAi
                              ? fmt::format("Invalid URL ({} {})", req.method_string(), path)
                              : std::string("Not Found");
    return ErrorPlan(shape, n, 404, message, "", "", {}, close);
  }
  if (req.method() != http::verb::post) {
    return ErrorPlan(*format, n, 405, fmt::format("Method Not Allowed: {}", req.method_string()),
                     "invalid_request_error", "", {}, close);
  }
  if (auto denied = CheckAuth(req, *format, n, close)) return std::move(*denied);
  nlohmann::json body = nlohmann::json::parse(req.body(), nullptr, /*allow_exceptions=*/false);
  if (auto invalid = Validate(body, *format, n, close)) return std::move(*invalid);

  Reply reply;
  {
    std::lock_guard lock(mu_);
    if (!queue_.empty()) {
      reply = std::move(queue_.front());
      queue_.pop_front();
    } else if (default_reply_) {
      reply = *default_reply_;
    } else {
      reply = Reply::Default();
    }
  }

  Ask ask;
  ask.format = *format;
  ask.n = n;
  auto stream = body.find("stream");
  ask.stream = stream != body.end() && stream->is_boolean() && stream->get<bool>();
  auto options = body.find("stream_options");
  ask.include_usage = ask.stream && options != body.end() && options->is_object() &&
                      options->value("include_usage", false);
  ask.model = !reply.model.empty() ? reply.model : body["model"].get<std::string>();
  ask.prompt_tokens = PromptTokens(body, *format);
  return Render(ask, reply, close);
}

Plan FakeUpstream::Impl::Render(const Ask& ask, const Reply& reply, bool close) {
  Plan plan;
  plan.kind = reply.kind;
  plan.delay = reply.delay;
  plan.close = close;
  plan.fault = reply.fault;
  plan.fault_after = static_cast<size_t>(std::max(0, reply.fault_after));
  plan.event_delay = reply.event_delay.count() >= 0 ? reply.event_delay : opts_.default_event_delay;

  switch (reply.kind) {
    case Reply::Kind::kClose:
    case Reply::Kind::kHang:
    case Reply::Kind::kGarbage:
      plan.body = reply.body;
      return plan;
    case Reply::Kind::kRaw:
      plan.body = reply.body;
      plan.head = Head(reply.status, {}, reply.headers, plan.body.size(), close);
      return plan;
    case Reply::Kind::kError: {
      Plan error = ErrorPlan(ask.format, ask.n, reply.status, reply.error_message, reply.error_type,
                             reply.error_code, reply.headers, close);
      error.delay = plan.delay;
      error.fault = plan.fault == Fault::kErrorEvent ? Fault::kNone : plan.fault;
      error.fault_after = plan.fault_after;
      return error;
    }
    case Reply::Kind::kMessage:
      break;
  }

  Message m;
  if (reply.default_text) {
    m.text = fmt::format("reply {}", ask.n);
    for (int i = 2; i < opts_.default_reply_words; ++i) m.text += " word";
  } else {
    m.text = reply.text;
  }
  m.tools = reply.tool_calls;
  int64_t tool_bytes = 0;
  for (size_t i = 0; i < m.tools.size(); ++i) {
    ToolCall& t = m.tools[i];
    if (t.id.empty()) {
      t.id = ask.format == ApiFormat::kOpenAi ? fmt::format("call_fake_{}_{}", ask.n, i)
                                              : fmt::format("toolu_fake_{}_{}", ask.n, i);
    }
    auto input = OJson::parse(t.arguments, nullptr, /*allow_exceptions=*/false);
    m.inputs.push_back(input.is_object() ? std::move(input) : OJson::object());
    tool_bytes += static_cast<int64_t>(t.arguments.size());
  }
  m.finish = FinishName(ask.format, reply.finish, !m.tools.empty());
  if (reply.usage) {
    m.usage = *reply.usage;
  } else {
    m.usage.input_tokens = ask.prompt_tokens;
    m.usage.output_tokens = std::max<int64_t>(1, Words(m.text) + tool_bytes / 4);
  }
  m.chunks = reply.chunks > 0 ? reply.chunks : std::max(1, opts_.default_chunks);

  const bool openai = ask.format == ApiFormat::kOpenAi;
  if (!ask.stream) {
    plan.body = openai ? OpenAiBody(ask, m) : AnthropicBody(ask, m);
    plan.head = Head(200, ProviderHeaders(ask.format, ask.n, "application/json"), reply.headers,
                     plan.body.size(), close);
    return plan;
  }
  plan.stream = true;
  plan.events = openai ? OpenAiEvents(ask, m) : AnthropicEvents(ask, m);
  Headers base = ProviderHeaders(ask.format, ask.n, "text/event-stream; charset=utf-8");
  base.emplace_back("cache-control", "no-cache");
  plan.head = Head(200, std::move(base), reply.headers, std::nullopt, close);
  if (reply.fault == Fault::kErrorEvent) {
    OJson error = ErrorJson(ask.format, ask.n, reply.status, reply.error_message, reply.error_type,
                            reply.error_code);
    plan.error_event = openai ? SseData(error) : SseEvent("error", error);
  }
  return plan;
}

// ---- FakeUpstream -----------------------------------------------------------------------------

FakeUpstream::FakeUpstream(FakeUpstreamOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {
  Status started = impl_->Start();
  if (!started) {
    impl_->error_ = started.error().message;
    impl_->Stop();
  }
}

FakeUpstream::~FakeUpstream() { Stop(); }

Result<std::unique_ptr<FakeUpstream>> FakeUpstream::Start(FakeUpstreamOptions options) {
  auto upstream = std::make_unique<FakeUpstream>(std::move(options));
  if (!upstream->ok()) return MakeError(ErrorCode::kUnavailable, upstream->error());
  return upstream;
}

bool FakeUpstream::ok() const { return impl_->error_.empty(); }
const std::string& FakeUpstream::error() const { return impl_->error_; }
void FakeUpstream::Stop() { impl_->Stop(); }
uint16_t FakeUpstream::port() const { return impl_->port_; }

std::string FakeUpstream::base_url() const {
  std::string host = impl_->opts_.host.find(':') != std::string::npos
                         ? "[" + impl_->opts_.host + "]"
                         : impl_->opts_.host;
  return fmt::format("{}://{}:{}", impl_->tls_ ? "https" : "http", host, impl_->port_);
}

void FakeUpstream::Enqueue(Reply reply) {
  std::lock_guard lock(impl_->mu_);
  impl_->queue_.push_back(std::move(reply));
}

void FakeUpstream::Enqueue(std::vector<Reply> replies) {
  std::lock_guard lock(impl_->mu_);
  for (auto& r : replies) impl_->queue_.push_back(std::move(r));
}

void FakeUpstream::SetDefaultReply(std::optional<Reply> reply) {
  std::lock_guard lock(impl_->mu_);
  impl_->default_reply_ = std::move(reply);
}

size_t FakeUpstream::pending_replies() const {
  std::lock_guard lock(impl_->mu_);
  return impl_->queue_.size();
}

std::vector<RecordedRequest> FakeUpstream::requests() const {
  std::lock_guard lock(impl_->mu_);
  return impl_->requests_;
}

size_t FakeUpstream::request_count() const {
  std::lock_guard lock(impl_->mu_);
  return impl_->request_count_;
}

uint64_t FakeUpstream::connections_accepted() const { return impl_->connections_.load(); }

bool FakeUpstream::WaitForRequests(size_t n, std::chrono::milliseconds timeout) {
  std::unique_lock lock(impl_->mu_);
  return impl_->arrived_.wait_for(lock, timeout, [&] { return impl_->request_count_ >= n; });
}

}  // namespace airlock::fake
