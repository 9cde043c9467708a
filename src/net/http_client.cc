#include "net/http_client.h"

#include <fcntl.h>
#include <openssl/ssl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <limits>
#include <optional>
#include <random>

#include <boost/asio/ssl.hpp>
#include <boost/beast/ssl.hpp>

#include "common/log.h"
#include "net/tls.h"

namespace airlock::net {

namespace ssl = asio::ssl;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

uint16_t DefaultPort(bool tls) { return tls ? 443 : 80; }

std::string Bracketed(const std::string& host) {
  return host.find(':') != std::string::npos ? "[" + host + "]" : host;
}

}  // namespace

std::string Endpoint::Key() const {
  std::string key = fmt::format("{}://{}:{}", tls ? "https" : "http", Bracketed(host), port);
  if (!connect_host.empty() || connect_port != 0) key += " via " + Where();
  return key;
}

std::string Endpoint::Where() const {
  return fmt::format("{}:{}", connect_host.empty() ? host : connect_host,
                     connect_port != 0 ? connect_port : port);
}

std::optional<std::string_view> HttpResponse::Header(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (beast::iequals(k, name)) return std::string_view(v);
  }
  return std::nullopt;
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

struct HttpClient::Connection {
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

// now + d, where kNoTimeout (or anything past the clock's range) is never.
Clock::time_point After(Clock::time_point now, milliseconds d) {
  if (d >= std::chrono::duration_cast<milliseconds>(Clock::time_point::max() - now)) {
    return Clock::time_point::max();
  }
  return now + d;
}

std::string HostHeader(const Endpoint& ep) {
  std::string host = Bracketed(ep.host);
  return ep.port == DefaultPort(ep.tls) ? host : fmt::format("{}:{}", host, ep.port);
}

// What went wrong on the wire, for a message: timeouts and cancellation named plainly.
std::string Describe(const beast::error_code& ec) {
  if (ec == beast::error::timeout) return "timed out";
  if (ec == asio::error::operation_aborted) return "cancelled";
  if (ec == http::error::end_of_stream || ec == asio::error::eof)
    return "connection closed by the server";
  return ec.message();
}

ErrorCode CodeOf(const beast::error_code& ec) {
  return ec == beast::error::timeout ? ErrorCode::kDeadlineExceeded : ErrorCode::kUnavailable;
}

using Stage = TransportFailure::Stage;

template <typename Fields>
Headers CopyHeaders(const Fields& fields) {
  Headers out;
  for (const auto& f : fields)
    out.emplace_back(std::string(f.name_string()), std::string(f.value()));
  return out;
}

}  // namespace

HttpClient::HttpClient(asio::io_context& io, HttpClientOptions options,
                       std::shared_ptr<ssl::context> tls)
    : io_(io), options_(std::move(options)), tls_(std::move(tls)) {}

HttpClient::~HttpClient() = default;

Result<std::unique_ptr<HttpClient>> HttpClient::Make(asio::io_context& io,
                                                     HttpClientOptions options) {
  AIRLOCK_ASSIGN_OR_RETURN(auto tls, MakeTlsClientContext(options.ca_file));
  return Make(io, std::move(options), std::move(tls));
}

std::unique_ptr<HttpClient> HttpClient::Make(asio::io_context& io, HttpClientOptions options,
                                             std::shared_ptr<ssl::context> tls) {
  return std::unique_ptr<HttpClient>(new HttpClient(io, std::move(options), std::move(tls)));
}

std::unique_ptr<HttpClient::Connection> HttpClient::TakeIdle(const std::string& key) {
  auto it = idle_.find(key);
  if (it == idle_.end() || it->second.empty()) return nullptr;
  auto c = std::move(it->second.back());
  it->second.pop_back();
  return c;
}

void HttpClient::PutIdle(const std::string& key, std::unique_ptr<Connection> c) {
  auto& list = idle_[key];
  if (!options_.keep_alive || list.size() >= options_.max_idle_per_host) {
    c->Close();
    return;
  }
  list.push_back(std::move(c));
}

std::unexpected<Error> HttpClient::Fail(Stage stage, const beast::error_code& ec,
                                        const Endpoint& ep, std::string message) const {
  if (options_.describe_failure) {
    return std::unexpected(
        options_.describe_failure(TransportFailure{stage, ec, ep, std::move(message)}));
  }
  return std::unexpected(Error{CodeOf(ec), std::move(message)});
}

awaitable<Result<std::unique_ptr<HttpClient::Connection>>> HttpClient::Connect(
    const Endpoint& ep, CallCancel& cancel, Clock::time_point deadline, bool& retryable) {
  const Clock::time_point until = Earliest(After(Clock::now(), options_.connect_timeout), deadline);
  // A timeout has used the call's time; a certificate that does not verify will not verify
  // on the next try either. Anything else may be worth another try.
  retryable = false;
  const std::string where = ep.Where();
  const std::string& connect_host = ep.connect_host.empty() ? ep.host : ep.connect_host;
  const uint16_t connect_port = ep.connect_port != 0 ? ep.connect_port : ep.port;
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
    endpoints = co_await resolver.async_resolve(connect_host, std::to_string(connect_port),
                                                asio::redirect_error(use_awaitable, ec));
    timer.cancel();
    if (timed_out) ec = beast::error::timeout;
  }
  if (cancel.cancelled()) co_return MakeError(ErrorCode::kUnavailable, "the call was cancelled");
  if (ec) {
    retryable = ec != beast::error::timeout;
    co_return Fail(Stage::kResolve, ec, ep,
                   fmt::format("cannot resolve {}: {}", connect_host, Describe(ec)));
  }
  if (ep.tls && !tls_) co_return MakeError(ErrorCode::kInternal, "no TLS context for https");
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
    retryable = ec != beast::error::timeout;
    co_return Fail(Stage::kConnect, ec, ep,
                   fmt::format("cannot connect to {}: {}", where, Describe(ec)));
  }
  c->lowest().socket().set_option(asio::ip::tcp::no_delay(true), ec);
  if (ep.tls) {
    SSL* s = c->tls->native_handle();
    if (auto prepared = PrepareTlsClient(s, ep.host); !prepared) {
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
      std::string why = DescribeHandshakeError(s, Describe(ec));
      retryable = ec != beast::error::timeout && !IsCertificateFailure(why);
      co_return Fail(Stage::kHandshake, ec, ep,
                     fmt::format("TLS handshake with {} failed: {}", where, why));
    }
  }
  ++stats_.connections_opened;
  co_return c;
}

awaitable<Result<HttpResponse>> HttpClient::Fetch(const Endpoint& ep, const HttpRequest& request,
                                                  BodySink* sink, CallCancel& cancel) {
  const Clock::time_point deadline = After(Clock::now(), options_.total_timeout);
  static thread_local std::mt19937_64 rng{std::random_device{}()};

  http::request<http::string_body> req{request.method, request.target, 11};
  req.set(http::field::host, request.host.empty() ? HostHeader(ep) : request.host);
  req.set(http::field::user_agent, "airlock");
  for (const auto& [k, v] : request.headers) req.set(k, v);
  req.keep_alive(options_.keep_alive);
  std::optional<FileBody> file;
  if (request.body_file.empty()) {
    req.body() = request.body;
    req.prepare_payload();
  } else {
    struct stat st {};
    if (::stat(request.body_file.c_str(), &st) != 0) {
      co_return Errorf(ErrorCode::kInternal, "cannot read the request's body from {}: {}",
                       request.body_file, std::strerror(errno));
    }
    if (!S_ISREG(st.st_mode)) {
      co_return Errorf(ErrorCode::kInternal, "the request's body {} is not a regular file",
                       request.body_file);
    }
    // The body is written after the head, from the file; the serializer writes the head only.
    file = FileBody{request.body_file, static_cast<uint64_t>(st.st_size)};
    req.content_length(file->size);
  }
  const size_t max_response_bytes =
      request.max_response_bytes != 0 ? request.max_response_bytes : options_.max_response_bytes;

  for (int attempt = 0;; ++attempt) {
    bool retryable = false;
    auto r = co_await Attempt(ep, req, file ? &*file : nullptr, max_response_bytes, sink, cancel,
                              deadline, retryable);
    if (cancel.cancelled()) co_return MakeError(ErrorCode::kUnavailable, "the call was cancelled");
    if (r) r->attempts = attempt + 1;
    if (r && !RetryableStatus(r->status)) co_return r;
    if (!r && !retryable) co_return r;
    if (attempt >= options_.max_retries) co_return r;
    // Exponential backoff with jitter, or what the server asked for.
    auto base = std::min<int64_t>(options_.backoff_max.count(), options_.backoff_initial.count()
                                                                    << std::min(attempt, 16));
    milliseconds wait(
        std::uniform_int_distribution<int64_t>(base / 2, std::max<int64_t>(base / 2, base))(rng));
    if (r) {
      if (auto retry_after = r->Header("Retry-After")) {
        int64_t s = ParseRetryAfter(*retry_after, static_cast<int64_t>(std::time(nullptr)));
        if (s >= 0) {
          if (milliseconds(s * 1000) > options_.retry_after_max) co_return r;
          wait = milliseconds(s * 1000);
        }
      }
    }
    if (Clock::now() + wait >= deadline) co_return r;
    log::Info(options_.log_name + ": retrying",
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

awaitable<void> HttpClient::SendFile(Connection& c, const FileBody& file,
                                     Clock::time_point deadline, beast::error_code& ec) {
  const uint64_t size = file.size;
  int fd = ::open(file.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    ec = beast::error_code(errno, beast::system_category());
    co_return;
  }
  std::vector<char> buf(256 << 10);
  uint64_t sent = 0;
  while (sent < size) {
    ssize_t n = ::pread(fd, buf.data(), std::min<uint64_t>(buf.size(), size - sent),
                        static_cast<off_t>(sent));
    if (n <= 0) {  // the file shrank, or cannot be read: the announced length cannot be kept
      ec = beast::error_code(n < 0 ? errno : EIO, beast::system_category());
      break;
    }
    // Progress, not the whole transfer, is bounded: each piece must leave within the timeout.
    c.lowest().expires_at(Earliest(After(Clock::now(), options_.first_byte_timeout), deadline));
    auto piece = asio::buffer(buf.data(), static_cast<size_t>(n));
    if (c.tls) {
      co_await asio::async_write(*c.tls, piece, asio::redirect_error(use_awaitable, ec));
    } else {
      co_await asio::async_write(*c.plain, piece, asio::redirect_error(use_awaitable, ec));
    }
    if (ec) break;
    sent += static_cast<uint64_t>(n);
  }
  ::close(fd);
}

awaitable<Result<HttpResponse>> HttpClient::Attempt(const Endpoint& ep,
                                                    const http::request<http::string_body>& req,
                                                    const FileBody* file, size_t max_response_bytes,
                                                    BodySink* sink, CallCancel& cancel,
                                                    Clock::time_point deadline, bool& retryable) {
  const std::string key = ep.Key();
  const std::string where = ep.Where();
  const bool head_only = req.method() == http::verb::head;
  std::unique_ptr<Connection> c = TakeIdle(key);
  bool reused = c != nullptr;
  if (reused) ++stats_.connections_reused;
  beast::error_code ec;
  std::optional<http::response_parser<http::empty_body>> head;
  for (;;) {
    head.emplace();
    head->header_limit(64 << 10);
    // No body limit here: Beast's default (8 MiB) would refuse a larger Content-Length while
    // it parses the header. The limit is checked below, against the body's destination. (Not
    // boost::none: this Beast compares a length with an empty limit as if it were exceeded.)
    head->body_limit(std::numeric_limits<std::uint64_t>::max());
    // A reply to HEAD announces a body it does not carry.
    head->skip(head_only);
    if (!c) {
      auto fresh = co_await Connect(ep, cancel, deadline, retryable);
      if (!fresh) co_return std::unexpected(fresh.error());
      c = std::move(*fresh);
      reused = false;
    }
    bool sent = false;
    {
      CancelScope scope(cancel, [conn = c.get()] { conn->lowest().cancel(); });
      c->lowest().expires_at(Earliest(After(Clock::now(), options_.first_byte_timeout), deadline));
      if (c->tls) {
        co_await http::async_write(*c->tls, req, asio::redirect_error(use_awaitable, ec));
      } else {
        co_await http::async_write(*c->plain, req, asio::redirect_error(use_awaitable, ec));
      }
      if (!ec && file != nullptr) co_await SendFile(*c, *file, deadline, ec);
      sent = !ec;
      if (!ec) {
        c->lowest().expires_at(
            Earliest(After(Clock::now(), options_.first_byte_timeout), deadline));
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
      // The server closed an idle pooled connection: a fresh one, at once, not a retry.
      continue;
    }
    retryable = ec != beast::error::timeout;
    const Stage stage = sent ? Stage::kReceive : Stage::kSend;
    if (ec == beast::error::timeout) {
      co_return Fail(stage, ec, ep, fmt::format("no answer to the request to {} in time", where));
    }
    co_return Fail(
        stage, ec, ep,
        fmt::format("lost the connection to {} during the request: {}", where, Describe(ec)));
  }

  HttpResponse out;
  out.status = head->get().result_int();
  out.headers = CopyHeaders(head->get());

  if (head->is_done()) {
    // No body: a HEAD, a 204 or 304, or a Content-Length of 0.
    if (head->keep_alive()) {
      PutIdle(key, std::move(c));
    } else {
      c->Close();
    }
    co_return out;
  }

  const bool to_sink = sink != nullptr && out.status >= 200 && out.status < 300;
  // Beast checks a Content-Length against the body limit only while it parses the header,
  // which the header parser above did without one: check it here (a chunked body is checked
  // chunk by chunk against the limit set below).
  if (auto length = head->content_length(); !to_sink && length && *length > max_response_bytes) {
    c->Close();
    co_return Fail(Stage::kReceive, http::error::body_limit, ep,
                   fmt::format("the answer from {} is larger than the response limit of {} bytes",
                               where, max_response_bytes));
  }

  if (to_sink) {
    const milliseconds sink_idle = options_.sink_idle_timeout.count() != 0
                                       ? options_.sink_idle_timeout
                                       : options_.first_byte_timeout;
    http::response_parser<http::buffer_body> body(std::move(*head));
    // The sink takes the body piece by piece and decides when it has had enough: Beast's own
    // limit (8 MiB for a response) would cut off a large object on its way to a file.
    body.body_limit(std::numeric_limits<std::uint64_t>::max());
    char buf[16 << 10];
    bool stopped = false;
    while (!body.is_done()) {
      body.get().body().data = buf;
      body.get().body().size = sizeof(buf);
      {
        CancelScope scope(cancel, [conn = c.get()] { conn->lowest().cancel(); });
        c->lowest().expires_at(Earliest(After(Clock::now(), sink_idle), deadline));
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
        co_return Fail(Stage::kReceive, ec, ep,
                       fmt::format("the answer from {} broke off: {}", where, Describe(ec)));
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
  body.body_limit(max_response_bytes);
  {
    CancelScope scope(cancel, [conn = c.get()] { conn->lowest().cancel(); });
    c->lowest().expires_at(Earliest(After(Clock::now(), options_.first_byte_timeout), deadline));
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
    co_return Fail(Stage::kReceive, ec, ep,
                   fmt::format("the answer from {} broke off: {}", where,
                               ec == http::error::body_limit ? "larger than the response limit"
                                                             : Describe(ec)));
  }
  out.body = std::move(body.get().body());
  if (body.keep_alive()) {
    PutIdle(key, std::move(c));
  } else {
    c->Close();
  }
  co_return out;
}

namespace {

class FunctionSink : public BodySink {
 public:
  explicit FunctionSink(const std::function<bool(std::string_view)>& fn) : fn_(fn) {}
  awaitable<bool> OnData(std::string_view piece) override { co_return fn_(piece); }

 private:
  const std::function<bool(std::string_view)>& fn_;
};

// A coroutine function rather than a lambda, so that nothing it uses lives in a closure that
// could be gone when it resumes.
awaitable<Result<HttpResponse>> FetchOnce(HttpClient* client, const Endpoint* endpoint,
                                          const HttpRequest* request, BodySink* sink,
                                          CallCancel* cancel) {
  co_return co_await client->Fetch(*endpoint, *request, sink, *cancel);
}

}  // namespace

Result<HttpResponse> FetchBlocking(std::shared_ptr<ssl::context> tls,
                                   const HttpClientOptions& options, const Endpoint& endpoint,
                                   const HttpRequest& request,
                                   const std::function<bool(std::string_view)>& on_data) {
  asio::io_context io;
  auto client = HttpClient::Make(io, options, std::move(tls));
  CallCancel cancel;
  std::optional<FunctionSink> sink;
  if (on_data) sink.emplace(on_data);
  std::optional<Result<HttpResponse>> out;
  asio::co_spawn(io, FetchOnce(client.get(), &endpoint, &request, sink ? &*sink : nullptr, &cancel),
                 [&out](std::exception_ptr e, Result<HttpResponse> r) {
                   if (e) {
                     out = MakeError(ErrorCode::kInternal, "the HTTP call failed unexpectedly");
                   } else {
                     out = std::move(r);
                   }
                 });
  io.run();
  if (!out) return MakeError(ErrorCode::kInternal, "the HTTP call did not complete");
  return std::move(*out);
}

}  // namespace airlock::net
