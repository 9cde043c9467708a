#include "controlplane/http_server.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <limits>

#include "common/crypto.h"
#include "common/log.h"
#include "common/url.h"

namespace airlock::controlplane {

namespace {

using Clock = std::chrono::steady_clock;

// A request id is taken from X-Request-Id when it is short and plain, so that a caller can
// correlate its own logs; otherwise (or when absent) one is made up.
std::string RequestId(std::string_view given) {
  static const std::string kBoot = HexEncode(RandomBytes(4));
  static std::atomic<uint64_t> counter{0};
  if (!given.empty() && given.size() <= 64 &&
      std::all_of(given.begin(), given.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
      })) {
    return std::string(given);
  }
  return fmt::format("{}-{:x}", kBoot, counter.fetch_add(1, std::memory_order_relaxed));
}

// Asio opens sockets without SOCK_CLOEXEC. Every listener and connection is marked here, so
// no process the control plane starts (a runtime, an agent) inherits one: a sandbox holding
// the operator listener could accept() connections and read operator keys.
void SetCloseOnExec(int fd) { ::fcntl(fd, F_SETFD, FD_CLOEXEC); }

template <typename Stream>
class StreamChunkSink : public ChunkSink {
 public:
  StreamChunkSink(Stream& stream, std::chrono::milliseconds timeout) : stream_(stream), timeout_(timeout) {}
  awaitable<bool> Write(std::string_view data) override {
    if (failed_) co_return false;
    if (data.empty()) co_return true;  // an empty chunk would end the body
    beast::error_code ec;
    stream_.expires_after(timeout_);
    co_await asio::async_write(stream_, http::make_chunk(asio::buffer(data.data(), data.size())),
                               asio::redirect_error(use_awaitable, ec));
    stream_.expires_never();
    if (ec) failed_ = true;
    co_return !failed_;
  }
  bool failed() const { return failed_; }

 private:
  Stream& stream_;
  std::chrono::milliseconds timeout_;
  bool failed_ = false;
};

// Reads a request body piece by piece from the connection, under body_timeout per piece.
template <typename Stream>
class StreamBodyReader : public BodyReader {
 public:
  StreamBodyReader(Stream& stream, beast::flat_buffer& buffer, http::request_parser<http::buffer_body>& parser,
                   std::chrono::milliseconds timeout)
      : stream_(stream), buffer_(buffer), parser_(parser), timeout_(timeout), chunk_(new char[kChunk]) {}

  awaitable<Result<std::string_view>> Read() override {
    if (failed_) co_return MakeError(ErrorCode::kUnavailable, "the request body was cut off");
    if (parser_.is_done()) co_return std::string_view();
    parser_.get().body().data = chunk_.get();
    parser_.get().body().size = kChunk;
    beast::error_code ec;
    stream_.expires_after(timeout_);
    co_await http::async_read_some(stream_, buffer_, parser_, asio::redirect_error(use_awaitable, ec));
    stream_.expires_never();
    if (ec == http::error::need_buffer) ec = {};
    if (ec) {
      failed_ = true;
      if (ec == beast::error::timeout) co_return MakeError(ErrorCode::kDeadlineExceeded, "the client stalled");
      if (ec == http::error::partial_message || ec == http::error::end_of_stream || ec == asio::error::eof ||
          ec == asio::error::connection_reset) {
        co_return MakeError(ErrorCode::kUnavailable, "the client went away before the end of the body");
      }
      co_return MakeError(ErrorCode::kInvalidArgument, "malformed request body framing");
    }
    co_return std::string_view(chunk_.get(), kChunk - parser_.get().body().size);
  }
  std::optional<uint64_t> content_length() const override {
    auto cl = parser_.content_length();
    return cl ? std::optional<uint64_t>(*cl) : std::nullopt;
  }
  bool done() const override { return parser_.is_done(); }

 private:
  Stream& stream_;
  beast::flat_buffer& buffer_;
  http::request_parser<http::buffer_body>& parser_;
  std::chrono::milliseconds timeout_;
  bool failed_ = false;
  // On the heap: this reader lives in every connection's coroutine frame.
  static constexpr size_t kChunk = 64 << 10;
  std::unique_ptr<char[]> chunk_;
};

}  // namespace

FileBody::~FileBody() {
  if (fd >= 0) ::close(fd);
}

std::optional<std::string> Request::Query(std::string_view name) const {
  std::string_view q = query;
  while (!q.empty()) {
    size_t amp = q.find('&');
    std::string_view pair = q.substr(0, amp);
    size_t eq = pair.find('=');
    if (PercentDecode(pair.substr(0, eq), /*query=*/true) == name) {
      return eq == std::string_view::npos ? std::string() : *PercentDecode(pair.substr(eq + 1), /*query=*/true);
    }
    if (amp == std::string_view::npos) break;
    q.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

std::string_view Request::Header(std::string_view name) const {
  auto it = msg.find(name);
  return it == msg.end() ? std::string_view() : std::string_view(it->value());
}

unsigned HttpStatusFor(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return 400;
    case ErrorCode::kUnauthenticated: return 401;
    case ErrorCode::kPaymentRequired: return 402;
    case ErrorCode::kPermissionDenied: return 403;
    case ErrorCode::kNotFound: return 404;
    case ErrorCode::kConflict: return 409;
    case ErrorCode::kGone: return 410;
    case ErrorCode::kPayloadTooLarge: return 413;
    case ErrorCode::kResourceExhausted: return 429;
    case ErrorCode::kUnimplemented: return 501;
    case ErrorCode::kUnavailable: return 503;
    case ErrorCode::kDeadlineExceeded: return 504;
    case ErrorCode::kInternal: return 500;
  }
  return 500;
}

Response Response::FromJson(unsigned status, const Json& j) {
  Response r;
  r.status = status;
  r.body = DumpJson(j);
  r.body += '\n';
  return r;
}

Response Response::Text(unsigned status, std::string body, std::string content_type) {
  Response r;
  r.status = status;
  r.body = std::move(body);
  r.content_type = std::move(content_type);
  return r;
}

Response Response::FromError(unsigned status, std::string_view code, std::string_view message) {
  return FromJson(status, Json{{"error", {{"code", code}, {"message", message}}}});
}

Response Response::FromError(const Error& e) {
  return FromError(HttpStatusFor(e.code), ErrorCodeName(e.code), e.message);
}

HttpMetrics::HttpMetrics(metrics::Registry& r)
    : requests(r.AddCounter("airlock_http_requests_total", "HTTP requests answered.",
                            {"listener", "route", "method", "code"})),
      duration(r.AddHistogram("airlock_http_request_duration_seconds",
                              "Time from the end of the request headers to the end of the response.",
                              {"listener", "route"},
                              {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                               2.5, 5, 10, 30, 60})),
      connections(r.AddGauge("airlock_http_connections", "Open HTTP connections.", {"listener"})),
      rejected(r.AddCounter("airlock_http_connections_rejected_total",
                            "Connections closed before a response: over the limit, timed out, malformed.",
                            {"listener", "reason"})) {}

struct HttpServer::Connection {
  bool idle = true;
  std::function<void()> close;
};

HttpServer::HttpServer(asio::io_context& io, std::string name, HttpLimits limits, Handler handler,
                       HttpMetrics& metrics)
    : io_(io), name_(std::move(name)), limits_(limits), handler_(std::move(handler)), metrics_(metrics) {}

HttpServer::~HttpServer() {
  *alive_ = false;
  for (auto& a : tcp_acceptors_) {
    beast::error_code ec;
    a->close(ec);
  }
  for (auto& [path, a] : unix_acceptors_) {
    beast::error_code ec;
    a->close(ec);
    ::unlink(path.c_str());
  }
}

Result<asio::ip::tcp::endpoint> HttpServer::ListenTcp(const std::string& host, uint16_t port) {
  beast::error_code ec;
  auto address = asio::ip::make_address(host, ec);
  if (ec) return Errorf(ErrorCode::kInvalidArgument, "{} listener: bad address \"{}\"", name_, host);
  asio::ip::tcp::endpoint ep(address, port);
  auto acceptor = std::make_shared<asio::ip::tcp::acceptor>(io_);
  acceptor->open(ep.protocol(), ec);
  if (!ec) SetCloseOnExec(acceptor->native_handle());
  if (!ec) acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor->bind(ep, ec);
  if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return Errorf(ErrorCode::kUnavailable, "{} listener: cannot listen on {}:{}: {}", name_, host, port,
                  ec.message());
  }
  auto bound = acceptor->local_endpoint();
  tcp_acceptors_.push_back(acceptor);
  asio::co_spawn(io_,
                 Accept(acceptor, std::string(),
                        [](asio::ip::tcp::socket socket) {
                          beast::error_code ignored;
                          socket.set_option(asio::ip::tcp::no_delay(true), ignored);
                          return beast::tcp_stream(std::move(socket));
                        }),
                 asio::detached);
  return bound;
}

Status HttpServer::ListenUnix(const std::string& path, const std::string& bound_session, uint32_t mode) {
  if (path.size() >= sizeof(sockaddr_un::sun_path)) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "Unix socket path is {} bytes, over the kernel's limit of {}: use a shorter home directory ({})",
                  path.size(), sizeof(sockaddr_un::sun_path) - 1, path);
  }
  CloseUnix(path);
  ::unlink(path.c_str());
  beast::error_code ec;
  auto acceptor = std::make_shared<asio::local::stream_protocol::acceptor>(io_);
  asio::local::stream_protocol::endpoint ep(path);
  acceptor->open(ep.protocol(), ec);
  if (!ec) SetCloseOnExec(acceptor->native_handle());
  if (!ec) acceptor->bind(ep, ec);
  if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Errorf(ErrorCode::kUnavailable, "cannot listen on {}: {}", path, ec.message());
  // The sandbox's agent runs as an unprivileged user and must be able to connect.
  ::chmod(path.c_str(), mode);
  unix_acceptors_[path] = acceptor;
  asio::co_spawn(io_,
                 Accept(acceptor, bound_session,
                        [](asio::local::stream_protocol::socket socket) {
                          return beast::basic_stream<asio::local::stream_protocol>(std::move(socket));
                        }),
                 asio::detached);
  return Ok();
}

void HttpServer::CloseUnix(const std::string& path) {
  auto it = unix_acceptors_.find(path);
  if (it == unix_acceptors_.end()) return;
  beast::error_code ec;
  it->second->close(ec);
  ::unlink(path.c_str());
  unix_acceptors_.erase(it);
}

void HttpServer::BeginDrain() {
  draining_ = true;
  for (auto& a : tcp_acceptors_) {
    beast::error_code ec;
    a->close(ec);
  }
  for (auto& [path, a] : unix_acceptors_) {
    beast::error_code ec;
    a->close(ec);
  }
  // Copy first: closing an idle connection makes its coroutine unlink itself.
  std::vector<Connection*> idle;
  for (auto* c : connections_) {
    if (c->idle) idle.push_back(c);
  }
  for (auto* c : idle) c->close();
}

template <typename Acceptor, typename MakeStream>
awaitable<void> HttpServer::Accept(std::shared_ptr<Acceptor> acceptor, std::string bound_session,
                                   MakeStream make_stream) {
  auto alive = alive_;
  for (;;) {
    beast::error_code ec;
    auto socket = co_await acceptor->async_accept(asio::redirect_error(use_awaitable, ec));
    if (!*alive || draining_) co_return;
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor->is_open()) co_return;
      // EMFILE and friends: back off briefly instead of spinning.
      log::Warn("accept failed", {{"listener", name_}, {"error", ec.message()}});
      asio::steady_timer t(io_, std::chrono::milliseconds(50));
      co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
      continue;
    }
    if (connections_.size() >= limits_.max_connections) {
      metrics_.rejected.With({name_, "max_connections"}).Inc();
      socket.close(ec);
      continue;
    }
    SetCloseOnExec(socket.native_handle());
    asio::co_spawn(io_, Serve(make_stream(std::move(socket)), bound_session), asio::detached);
  }
}

template <typename Stream>
awaitable<void> HttpServer::Serve(Stream stream, std::string bound_session) {
  auto alive = alive_;
  Connection conn;
  conn.close = [&stream] {
    beast::error_code ec;
    stream.socket().close(ec);
  };
  connections_.push_back(&conn);
  auto self_it = std::prev(connections_.end());
  auto& gauge = metrics_.connections.With({name_});
  gauge.Add(1);

  beast::flat_buffer buffer(limits_.max_header_bytes + 64 * 1024);
  auto reject = [&](std::string_view reason) { metrics_.rejected.With({name_, std::string(reason)}).Inc(); };

  // Writes a complete response; returns false when the connection must close.
  auto write_response = [&](Request* req, Response& r, bool keep_alive) -> awaitable<bool> {
    beast::error_code ec;
    stream.expires_after(limits_.write_timeout);
    if (r.stream) {
      http::response<http::empty_body> res{static_cast<http::status>(r.status), 11};
      res.set(http::field::content_type, r.content_type);
      res.set(http::field::cache_control, "no-cache");
      if (req) res.set("X-Request-Id", req->request_id);
      for (auto& [k, v] : r.headers) res.set(k, v);
      res.chunked(true);
      res.keep_alive(keep_alive);
      http::response_serializer<http::empty_body> sr(res);
      co_await http::async_write_header(stream, sr, asio::redirect_error(use_awaitable, ec));
      stream.expires_never();
      if (ec) co_return false;
      StreamChunkSink<Stream> sink(stream, limits_.write_timeout);
      co_await r.stream(sink);
      if (sink.failed()) co_return false;
      stream.expires_after(limits_.write_timeout);
      co_await asio::async_write(stream, http::make_chunk_last(), asio::redirect_error(use_awaitable, ec));
      stream.expires_never();
      co_return !ec && keep_alive;
    }
    if (r.file) {
      http::response<http::empty_body> res{static_cast<http::status>(r.status), 11};
      res.set(http::field::content_type, r.content_type);
      if (req) res.set("X-Request-Id", req->request_id);
      for (auto& [k, v] : r.headers) res.set(k, v);
      res.content_length(r.file->length);
      res.keep_alive(keep_alive);
      http::response_serializer<http::empty_body> sr(res);
      co_await http::async_write_header(stream, sr, asio::redirect_error(use_awaitable, ec));
      if (ec) co_return false;
      if (req && req->msg.method() == http::verb::head) co_return keep_alive;
      // Page-cache reads of at most 256 KiB at a time: short enough not to stall the loop.
      std::vector<char> chunk(256 << 10);
      for (uint64_t sent = 0; sent < r.file->length;) {
        size_t want = static_cast<size_t>(std::min<uint64_t>(chunk.size(), r.file->length - sent));
        ssize_t n = ::pread(r.file->fd, chunk.data(), want, static_cast<off_t>(r.file->offset + sent));
        if (n <= 0) co_return false;  // the file shrank: the client sees a short body and a close
        stream.expires_after(limits_.write_timeout);
        co_await asio::async_write(stream, asio::buffer(chunk.data(), static_cast<size_t>(n)),
                                   asio::redirect_error(use_awaitable, ec));
        if (ec) co_return false;
        sent += static_cast<uint64_t>(n);
      }
      stream.expires_never();
      co_return keep_alive;
    }
    http::response<http::string_body> res{static_cast<http::status>(r.status), 11};
    res.set(http::field::content_type, r.content_type);
    if (req) res.set("X-Request-Id", req->request_id);
    for (auto& [k, v] : r.headers) res.set(k, v);
    res.body() = std::move(r.body);
    res.keep_alive(keep_alive);
    res.prepare_payload();
    co_await http::async_write(stream, res, asio::redirect_error(use_awaitable, ec));
    stream.expires_never();
    co_return !ec && keep_alive;
  };

  for (;;) {
    conn.idle = true;
    if (draining_) break;
    beast::error_code ec;
    // Wait for the first byte of the next request under the keep-alive timeout; from then on
    // the whole header must arrive within header_timeout (a slow-loris client is cut off).
    if (buffer.size() == 0) {
      stream.expires_after(limits_.idle_timeout);
      size_t n = co_await stream.async_read_some(buffer.prepare(4096), asio::redirect_error(use_awaitable, ec));
      if (ec) {
        if (ec == beast::error::timeout) reject("idle_timeout");
        break;
      }
      buffer.commit(n);
    }
    conn.idle = false;
    auto started = Clock::now();
    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<uint32_t>(limits_.max_header_bytes));
    // No body limit while reading the header (Beast would refuse a large Content-Length there,
    // before the route is known): a streamed-body route has none, others get max_body_bytes below.
    // (Not boost::none: Beast 1.74 compares a Content-Length against it as greater than none.)
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    stream.expires_after(limits_.header_timeout);
    co_await http::async_read_header(stream, buffer, parser, asio::redirect_error(use_awaitable, ec));
    Response early;
    bool have_early = false;
    if (ec == beast::error::timeout) {
      // Beast closes the socket when its deadline passes, so there is no one to answer:
      // a slow client is simply cut off (and counted).
      reject("header_timeout");
      break;
    } else if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
      reject("header_too_large");
      early = Response::FromError(431, "headers_too_large",
                                  fmt::format("request headers exceed {} bytes", limits_.max_header_bytes));
      have_early = true;
    } else if (ec == http::error::body_limit) {
      reject("body_too_large");
      early = Response::FromError(413, "payload_too_large",
                                  fmt::format("request body exceeds {} bytes", limits_.max_body_bytes));
      have_early = true;
    } else if (ec == http::error::end_of_stream || ec == asio::error::eof ||
               ec == asio::error::connection_reset || ec == asio::error::operation_aborted ||
               ec == asio::error::bad_descriptor) {
      break;
    } else if (ec) {
      reject("malformed");
      early = Response::FromError(400, "bad_request", "malformed HTTP request");
      have_early = true;
    }
    std::optional<http::request_parser<http::buffer_body>> body_parser;
    if (!have_early && stream_bodies_) {
      std::string_view t = parser.get().target();
      if (stream_bodies_(parser.get().method(), t.substr(0, t.find('?')))) {
        if (beast::iequals(parser.get()[http::field::expect], "100-continue")) {
          http::response<http::empty_body> cont{http::status::continue_, 11};
          stream.expires_after(limits_.write_timeout);
          co_await http::async_write(stream, cont, asio::redirect_error(use_awaitable, ec));
          if (ec) break;
        }
        body_parser.emplace(std::move(parser));
        body_parser->body_limit(std::numeric_limits<std::uint64_t>::max());
      }
    }
    if (!have_early && !body_parser) {
      parser.body_limit(limits_.max_body_bytes);
      auto& hdr = parser.get();
      if (auto cl = parser.content_length(); cl && *cl > limits_.max_body_bytes) {
        reject("body_too_large");
        early = Response::FromError(413, "payload_too_large",
                                    fmt::format("request body exceeds {} bytes", limits_.max_body_bytes));
        have_early = true;
      } else {
        if (beast::iequals(hdr[http::field::expect], "100-continue")) {
          http::response<http::empty_body> cont{http::status::continue_, 11};
          stream.expires_after(limits_.write_timeout);
          co_await http::async_write(stream, cont, asio::redirect_error(use_awaitable, ec));
          if (ec) break;
        }
        stream.expires_after(limits_.body_timeout);
        co_await http::async_read(stream, buffer, parser, asio::redirect_error(use_awaitable, ec));
        if (ec == beast::error::timeout) {
          reject("body_timeout");
          break;
        } else if (ec == http::error::body_limit) {
          reject("body_too_large");
          early = Response::FromError(413, "payload_too_large",
                                      fmt::format("request body exceeds {} bytes", limits_.max_body_bytes));
          have_early = true;
        } else if (ec == http::error::end_of_stream || ec == asio::error::eof ||
                   ec == asio::error::connection_reset) {
          break;
        } else if (ec) {
          reject("malformed");
          early = Response::FromError(400, "bad_request", "malformed HTTP request body");
          have_early = true;
        }
      }
    }
    stream.expires_never();
    if (have_early) {
      // Best effort: the client may be gone, and the connection closes either way.
      co_await write_response(nullptr, early, false);
      break;
    }

    Request req;
    std::optional<StreamBodyReader<Stream>> body_reader;
    if (body_parser) {
      req.msg = http::request<http::string_body>(body_parser->get().base());
      body_reader.emplace(stream, buffer, *body_parser, limits_.body_timeout);
      req.body = &*body_reader;
    } else {
      req.msg = parser.release();
    }
    req.request_id = RequestId(req.Header("X-Request-Id"));
    req.listener = name_;
    req.bound_session = bound_session;
    std::string_view target = req.msg.target();
    size_t q = target.find('?');
    req.path = std::string(target.substr(0, q));
    if (q != std::string_view::npos) req.query = std::string(target.substr(q + 1));
    bool keep_alive = req.msg.keep_alive();

    Response res;
    try {
      res = co_await handler_(req);
    } catch (const std::exception& e) {
      // A handler bug must not take the process down; it is logged without request data.
      log::Error("handler threw", {{"request_id", req.request_id}, {"route", req.route}, {"what", e.what()}});
      res = Response::FromError(500, "internal", "internal error");
    }
    if (!*alive) co_return;
    // A streamed body the handler left unread cannot be skipped safely: close after answering.
    if (body_reader && !body_reader->done()) keep_alive = false;
    unsigned status = res.status;
    bool streamed = static_cast<bool>(res.stream);
    bool ok = co_await write_response(&req, res, keep_alive && !draining_);
    if (!*alive) co_return;
    double secs = std::chrono::duration<double>(Clock::now() - started).count();
    std::string method(req.msg.method_string());
    metrics_.requests.With({name_, req.route, method, std::to_string(status)}).Inc();
    metrics_.duration.With({name_, req.route}).Observe(secs);
    if (log::Enabled(log::Level::kInfo)) {
      // The path only: query strings may carry signatures and are never logged.
      log::Info("http", {{"request_id", req.request_id}, {"listener", name_}, {"method", method},
                         {"path", req.path.substr(0, 256)}, {"status", status},
                         {"ms", static_cast<int64_t>(secs * 1000 * 1000) / 1000.0},
                         {"streamed", streamed}});
    }
    if (!ok) break;
  }
  if (*alive) {
    beast::error_code ec;
    stream.socket().shutdown(asio::socket_base::shutdown_both, ec);
    stream.socket().close(ec);
    connections_.erase(self_it);
    gauge.Add(-1);
  }
}

}  // namespace airlock::controlplane
