#include "llm/upstream_client.h"

#include <openssl/ssl.h>

#include <algorithm>
#include <cctype>
#include <ctime>
#include <optional>
#include <random>

#include <boost/asio/ssl.hpp>
#include <boost/beast/ssl.hpp>

#include "common/log.h"
#include "net/tls.h"
#include "net/url.h"

namespace airlock::llm {

namespace ssl = asio::ssl;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::string Endpoint::Key() const {
  return fmt::format("{}://{}:{}", tls ? "https" : "http", host, port);
}

// An adapter of net::SplitUrl that keeps the messages configuration errors have always had.
Result<Endpoint> ParseBaseUrl(std::string_view url) {
  auto parsed = net::SplitUrl(url);
  if (!parsed) {
    switch (parsed.error()) {
      case net::UrlProblem::kNoScheme:
      case net::UrlProblem::kScheme:
        return Errorf(ErrorCode::kInvalidArgument,
                      "base_url \"{}\" must start with http:// or https://", url);
      case net::UrlProblem::kUserInfo:
        return Errorf(ErrorCode::kInvalidArgument,
                      "base_url \"{}\": user info, query and fragment are not allowed", url);
      case net::UrlProblem::kNoHost:
        return Errorf(ErrorCode::kInvalidArgument, "base_url \"{}\" has no host", url);
      case net::UrlProblem::kIpv6Unclosed:
        return Errorf(ErrorCode::kInvalidArgument, "base_url \"{}\": bad IPv6 host", url);
      case net::UrlProblem::kAfterIpv6:
      case net::UrlProblem::kBadHost:
        return Errorf(ErrorCode::kInvalidArgument, "base_url \"{}\": bad host", url);
      case net::UrlProblem::kEmptyPort:
      case net::UrlProblem::kBadPort:
        return Errorf(ErrorCode::kInvalidArgument, "base_url \"{}\": bad port", url);
      case net::UrlProblem::kBadPath:
        return Errorf(ErrorCode::kInvalidArgument,
                      "base_url \"{}\": a space or a control character in the path", url);
    }
  }
  if (parsed->has_query || parsed->has_fragment) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "base_url \"{}\": user info, query and fragment are not allowed", url);
  }
  Endpoint ep;
  ep.tls = parsed->tls();
  ep.host = std::move(parsed->host);
  ep.port = parsed->port;
  std::string_view path = parsed->path;
  while (path.ends_with('/')) path.remove_suffix(1);
  ep.base_path = std::string(path);
  return ep;
}

void CallCancel::Cancel() {
  cancelled_ = true;
  if (auto hook = std::move(hook_)) hook();
  hook_ = nullptr;
}

int64_t ParseRetryAfter(std::string_view value, int64_t now_unix) {
  while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  while (!value.empty() && value.back() == ' ') value.remove_suffix(1);
  if (value.empty()) return -1;
  if (std::all_of(value.begin(), value.end(), ::isdigit)) {
    if (value.size() > 9) return -1;
    return std::stoll(std::string(value));
  }
  // HTTP-date, IMF-fixdate form: "Wed, 21 Oct 2015 07:28:00 GMT".
  std::tm tm{};
  std::string text(value);
  const char* end = ::strptime(text.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  if (end == nullptr || *end != '\0') return -1;
  int64_t at = ::timegm(&tm);
  return std::max<int64_t>(0, at - now_unix);
}

struct UpstreamClient::Connection {
  std::unique_ptr<beast::tcp_stream> plain;
  std::unique_ptr<beast::ssl_stream<beast::tcp_stream>> tls;
  beast::flat_buffer buffer;

  beast::tcp_stream& lowest() { return tls ? beast::get_lowest_layer(*tls) : *plain; }
  void Close() {
    beast::error_code ec;
    lowest().socket().shutdown(asio::ip::tcp::socket::shutdown_both, ec);
    lowest().close();
  }
};

namespace {

bool RetryableStatus(unsigned status) { return status == 429 || (status >= 500 && status <= 599); }

// Interrupts the connection's pending operation on cancel; unregisters on scope exit.
class CancelScope {
 public:
  CancelScope(CallCancel& cancel, std::function<void()> hook) : cancel_(cancel) {
    cancel_.OnCancel(std::move(hook));
  }
  ~CancelScope() { cancel_.Clear(); }
  CancelScope(const CancelScope&) = delete;
  CancelScope& operator=(const CancelScope&) = delete;

 private:
  CallCancel& cancel_;
};

Clock::time_point Earliest(Clock::time_point a, Clock::time_point b) { return std::min(a, b); }

std::string HostHeader(const Endpoint& ep) {
  bool default_port = (ep.tls && ep.port == 443) || (!ep.tls && ep.port == 80);
  std::string host = ep.host.find(':') != std::string::npos ? "[" + ep.host + "]" : ep.host;
  return default_port ? host : fmt::format("{}:{}", host, ep.port);
}

// What went wrong on the wire, for a message: timeouts and cancellation named plainly.
std::string Describe(const beast::error_code& ec) {
  if (ec == beast::error::timeout) return "timed out";
  if (ec == asio::error::operation_aborted) return "cancelled";
  if (ec == http::error::end_of_stream || ec == asio::error::eof)
    return "connection closed by the provider";
  return ec.message();
}

}  // namespace

UpstreamClient::UpstreamClient(asio::io_context& io, UpstreamOptions options)
    : io_(io), options_(std::move(options)) {}

UpstreamClient::~UpstreamClient() = default;

Result<std::unique_ptr<UpstreamClient>> UpstreamClient::Make(asio::io_context& io,
                                                             UpstreamOptions options) {
  std::unique_ptr<UpstreamClient> c(new UpstreamClient(io, std::move(options)));
  auto tls = net::MakeTlsClientContext(c->options_.ca_file);
  if (!tls) return Errorf(tls.error().code, "TLS: {}", tls.error().message);
  c->tls_ = std::move(*tls);
  return c;
}

std::unique_ptr<UpstreamClient::Connection> UpstreamClient::TakeIdle(const std::string& key) {
  auto it = idle_.find(key);
  if (it == idle_.end() || it->second.empty()) return nullptr;
  auto c = std::move(it->second.back());
  it->second.pop_back();
  return c;
}

void UpstreamClient::PutIdle(const std::string& key, std::unique_ptr<Connection> c) {
  auto& list = idle_[key];
  if (list.size() >= options_.max_idle_per_host) {
    c->Close();
    return;
  }
  list.push_back(std::move(c));
}

awaitable<Result<std::unique_ptr<UpstreamClient::Connection>>> UpstreamClient::Connect(
    const Endpoint& ep, CallCancel& cancel, Clock::time_point deadline) {
  const Clock::time_point until = Earliest(Clock::now() + options_.connect_timeout, deadline);
  const std::string where = fmt::format("{}:{}", ep.host, ep.port);
  beast::error_code ec;
  asio::ip::tcp::resolver::results_type endpoints;
  {
    asio::ip::tcp::resolver resolver(io_);
    asio::steady_timer timer(io_);
    timer.expires_at(until);
    bool timed_out = false;
    timer.async_wait([&resolver, &timed_out](beast::error_code tec) {
      if (!tec) {
        timed_out = true;
        resolver.cancel();
      }
    });
    CancelScope scope(cancel, [&resolver] { resolver.cancel(); });
    endpoints = co_await resolver.async_resolve(ep.host, std::to_string(ep.port),
                                                asio::redirect_error(use_awaitable, ec));
    timer.cancel();
    if (timed_out) ec = beast::error::timeout;
  }
  if (cancel.cancelled()) co_return MakeError(ErrorCode::kUnavailable, "the call was cancelled");
  if (ec) {
    co_return Errorf(
        ec == beast::error::timeout ? ErrorCode::kDeadlineExceeded : ErrorCode::kUnavailable,
        "cannot resolve {}: {}", ep.host, Describe(ec));
  }
  auto c = std::make_unique<Connection>();
  if (ep.tls) {
    c->tls = std::make_unique<beast::ssl_stream<beast::tcp_stream>>(io_, *tls_);
  } else {
    c->plain = std::make_unique<beast::tcp_stream>(io_);
  }
  {
    CancelScope scope(cancel, [conn = c.get()] { conn->lowest().cancel(); });
    c->lowest().expires_at(until);
    co_await c->lowest().async_connect(endpoints, asio::redirect_error(use_awaitable, ec));
  }
  if (cancel.cancelled()) co_return MakeError(ErrorCode::kUnavailable, "the call was cancelled");
  if (ec) {
    co_return Errorf(
        ec == beast::error::timeout ? ErrorCode::kDeadlineExceeded : ErrorCode::kUnavailable,
        "cannot connect to {}: {}", where, Describe(ec));
  }
  c->lowest().socket().set_option(asio::ip::tcp::no_delay(true), ec);
  if (ep.tls) {
    SSL* s = c->tls->native_handle();
    if (auto prepared = net::PrepareTlsClient(s, ep.host); !prepared) {
      co_return std::unexpected(prepared.error());
    }
    {
      CancelScope scope(cancel, [conn = c.get()] { conn->lowest().cancel(); });
      c->lowest().expires_at(until);
      co_await c->tls->async_handshake(ssl::stream_base::client,
                                       asio::redirect_error(use_awaitable, ec));
    }
    if (cancel.cancelled()) co_return MakeError(ErrorCode::kUnavailable, "the call was cancelled");
    if (ec) {
      co_return Errorf(
          ec == beast::error::timeout ? ErrorCode::kDeadlineExceeded : ErrorCode::kUnavailable,
          "TLS handshake with {} failed: {}", where, net::DescribeHandshakeError(s, Describe(ec)));
    }
  }
  ++stats_.connections_opened;
  co_return c;
}

awaitable<Result<UpstreamResponse>> UpstreamClient::Post(const Endpoint& ep, const HttpCall& call,
                                                         BodySink* sink, CallCancel& cancel) {
  const Clock::time_point deadline = Clock::now() + options_.total_timeout;
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  for (int attempt = 0;; ++attempt) {
    bool retryable = false;
    std::string retry_after;
    auto r = co_await Attempt(ep, call, sink, cancel, deadline, retryable, retry_after);
    if (cancel.cancelled()) co_return MakeError(ErrorCode::kUnavailable, "the call was cancelled");
    if (r) r->attempts = attempt + 1;
    if (r && !RetryableStatus(r->status)) co_return r;
    if (!r && !retryable) co_return r;
    if (attempt >= options_.max_retries) co_return r;
    // Exponential backoff with jitter, or what the provider asked for.
    auto base = std::min<int64_t>(options_.backoff_max.count(), options_.backoff_initial.count()
                                                                    << std::min(attempt, 16));
    milliseconds wait(
        std::uniform_int_distribution<int64_t>(base / 2, std::max<int64_t>(base / 2, base))(rng));
    if (r && !retry_after.empty()) {
      int64_t s = ParseRetryAfter(retry_after, static_cast<int64_t>(std::time(nullptr)));
      if (s >= 0) {
        if (milliseconds(s * 1000) > options_.retry_after_max) co_return r;
        wait = milliseconds(s * 1000);
      }
    }
    if (Clock::now() + wait >= deadline) co_return r;
    log::Info("llm upstream: retrying",
              {{"upstream", ep.Key()},
               {"attempt", attempt + 2},
               {"after_ms", static_cast<int64_t>(wait.count())},
               {"because", r ? fmt::format("status {}", r->status) : r.error().message}});
    ++stats_.retries;
    asio::steady_timer timer(io_);
    timer.expires_after(wait);
    beast::error_code ec;
    {
      CancelScope scope(cancel, [&timer] { timer.cancel(); });
      co_await timer.async_wait(asio::redirect_error(use_awaitable, ec));
    }
    if (cancel.cancelled()) co_return MakeError(ErrorCode::kUnavailable, "the call was cancelled");
  }
}

awaitable<Result<UpstreamResponse>> UpstreamClient::Attempt(
    const Endpoint& ep, const HttpCall& call, BodySink* sink, CallCancel& cancel,
    Clock::time_point deadline, bool& retryable, std::string& retry_after) {
  http::request<http::string_body> req{http::verb::post, ep.base_path + call.path, 11};
  req.set(http::field::host, HostHeader(ep));
  req.set(http::field::user_agent, "airlock");
  for (const auto& [k, v] : call.headers) req.set(k, v);
  req.keep_alive(true);
  req.body() = call.body;
  req.prepare_payload();

  const std::string key = ep.Key();
  const std::string where = fmt::format("{}:{}", ep.host, ep.port);
  std::unique_ptr<Connection> c = TakeIdle(key);
  bool reused = c != nullptr;
  if (reused) ++stats_.connections_reused;
  beast::error_code ec;
  std::optional<http::response_parser<http::empty_body>> head;
  for (;;) {
    head.emplace();
    head->header_limit(64 << 10);
    if (!c) {
      auto fresh = co_await Connect(ep, cancel, deadline);
      if (!fresh) {
        // A certificate that does not verify will not verify on the next try either.
        retryable = !net::IsCertificateFailure(fresh.error().message) &&
                    fresh.error().code != ErrorCode::kDeadlineExceeded;
        co_return std::unexpected(fresh.error());
      }
      c = std::move(*fresh);
      reused = false;
    }
    {
      CancelScope scope(cancel, [conn = c.get()] { conn->lowest().cancel(); });
      c->lowest().expires_at(Earliest(Clock::now() + options_.first_byte_timeout, deadline));
      if (c->tls) {
        co_await http::async_write(*c->tls, req, asio::redirect_error(use_awaitable, ec));
      } else {
        co_await http::async_write(*c->plain, req, asio::redirect_error(use_awaitable, ec));
      }
      if (!ec) {
        if (c->tls) {
          co_await http::async_read_header(*c->tls, c->buffer, *head,
                                           asio::redirect_error(use_awaitable, ec));
        } else {
          co_await http::async_read_header(*c->plain, c->buffer, *head,
                                           asio::redirect_error(use_awaitable, ec));
        }
      }
    }
    if (cancel.cancelled()) co_return MakeError(ErrorCode::kUnavailable, "the call was cancelled");
    if (!ec) break;
    bool nothing_received = !head->got_some() && c->buffer.size() == 0;
    c->Close();
    c.reset();
    if (reused && nothing_received && ec != beast::error::timeout) {
      // The provider closed an idle pooled connection: a fresh one, at once, not a retry.
      continue;
    }
    retryable = ec != beast::error::timeout;
    if (ec == beast::error::timeout) {
      co_return Errorf(ErrorCode::kDeadlineExceeded, "no answer to the request to {} in time",
                       where);
    }
    co_return Errorf(ErrorCode::kUnavailable, "lost the connection to {} during the request: {}",
                     where, Describe(ec));
  }

  UpstreamResponse out;
  out.status = head->get().result_int();
  if (auto it = head->get().find(http::field::retry_after); it != head->get().end()) {
    retry_after = std::string(it->value());
  }

  if (sink != nullptr && out.status >= 200 && out.status < 300) {
    http::response_parser<http::buffer_body> body(std::move(*head));
    char buf[16 << 10];
    bool stopped = false;
    while (!body.is_done()) {
      body.get().body().data = buf;
      body.get().body().size = sizeof(buf);
      {
        CancelScope scope(cancel, [conn = c.get()] { conn->lowest().cancel(); });
        c->lowest().expires_at(Earliest(Clock::now() + options_.first_byte_timeout, deadline));
        // read_some: hand each piece on as it arrives, not once the buffer is full.
        if (c->tls) {
          co_await http::async_read_some(*c->tls, c->buffer, body,
                                         asio::redirect_error(use_awaitable, ec));
        } else {
          co_await http::async_read_some(*c->plain, c->buffer, body,
                                         asio::redirect_error(use_awaitable, ec));
        }
      }
      if (ec == http::error::need_buffer) ec = {};
      if (cancel.cancelled())
        co_return MakeError(ErrorCode::kUnavailable, "the call was cancelled");
      size_t n = sizeof(buf) - body.get().body().size;
      if (n > 0 && !co_await sink->OnData(std::string_view(buf, n))) {
        stopped = true;
        break;
      }
      if (ec) {
        c->Close();
        co_return Errorf(
            ec == beast::error::timeout ? ErrorCode::kDeadlineExceeded : ErrorCode::kUnavailable,
            "the answer from {} broke off: {}", where, Describe(ec));
      }
    }
    if (!stopped && body.keep_alive()) {
      PutIdle(key, std::move(c));
    } else {
      c->Close();
    }
    co_return out;
  }

  http::response_parser<http::string_body> body(std::move(*head));
  body.body_limit(options_.max_response_bytes);
  {
    CancelScope scope(cancel, [conn = c.get()] { conn->lowest().cancel(); });
    c->lowest().expires_at(Earliest(Clock::now() + options_.first_byte_timeout, deadline));
    if (c->tls) {
      co_await http::async_read(*c->tls, c->buffer, body, asio::redirect_error(use_awaitable, ec));
    } else {
      co_await http::async_read(*c->plain, c->buffer, body,
                                asio::redirect_error(use_awaitable, ec));
    }
  }
  if (cancel.cancelled()) co_return MakeError(ErrorCode::kUnavailable, "the call was cancelled");
  if (ec) {
    c->Close();
    co_return Errorf(
        ec == beast::error::timeout ? ErrorCode::kDeadlineExceeded : ErrorCode::kUnavailable,
        "the answer from {} broke off: {}", where,
        ec == http::error::body_limit ? "larger than the response limit" : Describe(ec));
  }
  out.body = std::move(body.get().body());
  if (body.keep_alive()) {
    PutIdle(key, std::move(c));
  } else {
    c->Close();
  }
  co_return out;
}

}  // namespace airlock::llm
