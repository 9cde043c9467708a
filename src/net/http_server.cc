#include "net/http_server.h"

#include <fcntl.h>
#include <malloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cctype>
#include <limits>

#include <fmt/compile.h>

#include "common/crypto.h"
#include "common/log.h"
#include "common/url.h"

namespace airlock::net {

namespace {

using Clock = std::chrono::steady_clock;

// A request id is taken from X-Request-Id when it is short and plain, so that a caller can
// correlate its own logs; otherwise (or when absent) one is made up.
std::string RequestId(std::string_view given) {
  static const std::string kBoot = HexEncode(RandomBytes(4));
  static std::atomic<uint64_t> counter{0};
  if (!given.empty() && given.size() <= 64 && std::all_of(given.begin(), given.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
      })) {
    return std::string(given);
  }
  return fmt::format(FMT_COMPILE("{}-{:x}"), kBoot,
                     counter.fetch_add(1, std::memory_order_relaxed));
}

// Asio opens sockets without SOCK_CLOEXEC. Every listener and connection is marked here, so
// no process the control plane starts (a runtime, an agent) inherits one: a sandbox holding
// the operator listener could accept() connections and read operator keys.
void SetCloseOnExec(int fd) { ::fcntl(fd, F_SETFD, FD_CLOEXEC); }

template <typename Stream>
class StreamChunkSink : public ChunkSink {
 public:
  StreamChunkSink(Stream& stream, std::chrono::milliseconds timeout)
      : stream_(stream), timeout_(timeout) {}
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

// The connection under a Takeover: its socket, below Beast's stream and its deadlines.
template <typename Stream>
class SocketRawStream final : public RawStream {
 public:
  SocketRawStream(Stream& stream, beast::flat_buffer& buffer) : stream_(stream), buffer_(buffer) {}
  std::string TakePending() override {
    std::string out = beast::buffers_to_string(buffer_.data());
    buffer_.consume(buffer_.size());
    return out;
  }
  awaitable<size_t> ReadSome(asio::mutable_buffer into, beast::error_code& ec) override {
    co_return co_await stream_.socket().async_read_some(into,
                                                        asio::redirect_error(use_awaitable, ec));
  }
  awaitable<void> Write(asio::const_buffer data, beast::error_code& ec) override {
    co_await asio::async_write(stream_.socket(), data, asio::redirect_error(use_awaitable, ec));
  }
  void ShutdownSend() override {
    beast::error_code ignored;
    stream_.socket().shutdown(asio::socket_base::shutdown_send, ignored);
  }
  void Close() override {
    beast::error_code ignored;
    stream_.socket().close(ignored);
  }

 private:
  Stream& stream_;
  beast::flat_buffer& buffer_;
};

// Reads a request body piece by piece from the connection, under body_timeout per piece.
template <typename Stream>
class StreamBodyReader : public BodyReader {
 public:
  StreamBodyReader(Stream& stream, beast::flat_buffer& buffer,
                   http::request_parser<http::buffer_body>& parser,
                   std::chrono::milliseconds timeout)
      : stream_(stream),
        buffer_(buffer),
        parser_(parser),
        timeout_(timeout),
        chunk_(new char[kChunk]) {}

  awaitable<Result<std::string_view>> Read() override {
    if (failed_) co_return MakeError(ErrorCode::kUnavailable, "the request body was cut off");
    if (parser_.is_done()) co_return std::string_view();
    // A read may consume only framing (a chunk header, a chunk's CRLF): go on until there is
    // data or the body is complete, since an empty piece means "the end" to the caller.
    for (;;) {
      parser_.get().body().data = chunk_.get();
      parser_.get().body().size = kChunk;
      beast::error_code ec;
      stream_.expires_after(timeout_);
      co_await http::async_read_some(stream_, buffer_, parser_,
                                     asio::redirect_error(use_awaitable, ec));
      stream_.expires_never();
      if (ec == http::error::need_buffer) ec = {};
      if (ec) {
        failed_ = true;
        if (ec == beast::error::timeout)
          co_return MakeError(ErrorCode::kDeadlineExceeded, "the client stalled");
        if (ec == http::error::partial_message || ec == http::error::end_of_stream ||
            ec == asio::error::eof || ec == asio::error::connection_reset) {
          co_return MakeError(ErrorCode::kUnavailable,
                              "the client went away before the end of the body");
        }
        co_return MakeError(ErrorCode::kInvalidArgument, "malformed request body framing");
      }
      size_t got = kChunk - parser_.get().body().size;
      if (got > 0 || parser_.is_done()) co_return std::string_view(chunk_.get(), got);
    }
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

// What RFC 9112 refuses and Beast 1.74 lets through, found in the raw bytes of a header block:
// a field line folded onto the one before (obs-fold, section 5.2), a CR without its LF and a
// LF without its CR. A front proxy may frame such a request differently from this server.
// Control characters other than HTAB cannot appear anywhere in a header: one is refused as
// soon as it arrives (a TLS hello sent to the plain port, say), without waiting for the end of
// a header that will never come. `from` is where the previous look stopped, so a header
// arriving a byte at a time is scanned once.
std::optional<std::string_view> RawHeaderProblem(std::string_view block, size_t from) {
  for (size_t i = from; i < block.size(); ++i) {
    char c = block[i];
    auto u = static_cast<unsigned char>(c);
    if ((u < 0x20 && c != '\t' && c != '\r' && c != '\n') || u == 0x7f)
      return "a control character in the header";
    if (c == '\r' && i + 1 < block.size() && block[i + 1] != '\n')
      return "a CR without LF in the header";
    if (c != '\n') continue;
    if (i == 0 || block[i - 1] != '\r') return "a LF without CR in the header";
    if (i + 1 < block.size() && (block[i + 1] == ' ' || block[i + 1] == '\t')) {
      return "an obsolete folded header line (obs-fold)";
    }
  }
  return std::nullopt;
}

// RFC 9112 section 6: chunked is the one transfer coding understood here and must come last;
// a Transfer-Encoding next to a Content-Length, or in an HTTP/1.0 request, leaves the framing
// ambiguous. Beast would frame "xchunked" with a Content-Length by the length.
std::optional<Response> TransferEncodingProblem(const http::request_parser<http::string_body>& p) {
  const auto& h = p.get();
  std::vector<std::string> codings;
  bool present = false;
  for (const auto& f : h) {
    if (f.name() != http::field::transfer_encoding) continue;
    present = true;
    ForEachListItem(f.value(), [&](std::string_view item) {
      std::string lower(item);
      for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      codings.push_back(std::move(lower));
    });
  }
  if (!present) return std::nullopt;
  auto bad = [](std::string_view why) { return Response::FromError(400, "bad_request", why); };
  if (h.version() < 11) return bad("Transfer-Encoding is not allowed in an HTTP/1.0 request");
  if (h.count(http::field::content_length) > 0) {
    return bad("a request may not have both Transfer-Encoding and Content-Length");
  }
  if (codings.empty() || codings.back() != "chunked") {
    return bad("the last transfer coding of a request must be chunked");
  }
  if (codings.size() > 1) {
    return Response::FromError(501, "not_implemented",
                               "transfer codings other than chunked are not supported");
  }
  return std::nullopt;
}

}  // namespace

// Request bodies held in memory, charged to the listener and to a session for as long as the
// request is being served.
class HttpServer::BodyBudget {
 public:
  BodyBudget(HttpServer& server, std::string session, size_t bytes)
      : server_(server), alive_(server.alive_), session_(std::move(session)), bytes_(bytes) {
    server_.buffered_body_bytes_ += bytes_;
    server_.buffered_gauge_->Add(static_cast<double>(bytes_));
    if (!session_.empty()) server_.session_body_bytes_[session_] += bytes_;
  }
  ~BodyBudget() {
    // A connection's coroutine frame may outlive the server (destroyed with the io_context
    // after a drain that timed out): then there is nothing left to give the bytes back to.
    if (!*alive_) return;
    server_.buffered_body_bytes_ -= bytes_;
    server_.buffered_gauge_->Add(-static_cast<double>(bytes_));
    if (!session_.empty()) {
      auto it = server_.session_body_bytes_.find(session_);
      if (it != server_.session_body_bytes_.end() && (it->second -= bytes_) == 0)
        server_.session_body_bytes_.erase(it);
    }
    server_.MaybeTrimHeap(bytes_);
  }
  BodyBudget(const BodyBudget&) = delete;
  BodyBudget& operator=(const BodyBudget&) = delete;

 private:
  HttpServer& server_;
  std::shared_ptr<bool> alive_;
  std::string session_;
  size_t bytes_;
};

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
      return eq == std::string_view::npos ? std::string()
                                          : *PercentDecode(pair.substr(eq + 1), /*query=*/true);
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
    case ErrorCode::kInvalidArgument:
      return 400;
    case ErrorCode::kUnauthenticated:
      return 401;
    case ErrorCode::kPaymentRequired:
      return 402;
    case ErrorCode::kPermissionDenied:
      return 403;
    case ErrorCode::kNotFound:
      return 404;
    case ErrorCode::kMethodNotAllowed:
      return 405;
    case ErrorCode::kConflict:
      return 409;
    case ErrorCode::kGone:
      return 410;
    case ErrorCode::kPayloadTooLarge:
      return 413;
    case ErrorCode::kRangeNotSatisfiable:
      return 416;
    case ErrorCode::kResourceExhausted:
      return 429;
    case ErrorCode::kInsufficientStorage:
      return 507;
    case ErrorCode::kUnimplemented:
      return 501;
    case ErrorCode::kUnavailable:
      return 503;
    case ErrorCode::kDeadlineExceeded:
      return 504;
    case ErrorCode::kInternal:
      return 500;
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
  Response r = FromError(HttpStatusFor(e.code),
                         e.api_code.empty() ? ErrorCodeName(e.code) : e.api_code, e.message);
  if (e.retry_after_s) r.headers.emplace_back("Retry-After", std::to_string(*e.retry_after_s));
  return r;
}

HttpMetrics::HttpMetrics(metrics::Registry& r)
    : requests(r.AddCounter("airlock_http_requests_total", "HTTP requests answered.",
                            {"listener", "route", "method", "code"})),
      duration(
          r.AddHistogram("airlock_http_request_duration_seconds",
                         "Time from the end of the request headers to the end of the response.",
                         {"listener", "route"},
                         {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                          5, 10, 30, 60})),
      connections(r.AddGauge("airlock_http_connections", "Open HTTP connections.", {"listener"})),
      rejected(r.AddCounter(
          "airlock_http_connections_rejected_total",
          "Connections closed before a response: over the limit, timed out, malformed.",
          {"listener", "reason"})),
      buffered_body_bytes(r.AddGauge(
          "airlock_http_buffered_body_bytes",
          "Request body bytes held in memory (reserved before a body is read).", {"listener"})) {}

struct HttpServer::Connection {
  bool idle = true;
  std::function<void()> close;
  std::string session;  // the session it is charged to, if any
};

size_t HttpServer::session_connections(const std::string& session) const {
  auto it = session_connections_.find(session);
  return it == session_connections_.end() ? 0 : it->second;
}

bool HttpServer::ChargeConnection(Connection& conn, const std::string& session) {
  if (session.empty() || conn.session == session) return true;
  if (!conn.session.empty()) return true;  // charged already, to the first session it spoke for
  size_t& n = session_connections_[session];
  if (n >= limits_.max_connections_per_session) {
    if (n == 0) session_connections_.erase(session);
    return false;
  }
  ++n;
  conn.session = session;
  return true;
}

void HttpServer::ReleaseConnection(Connection& conn) {
  if (conn.session.empty()) return;
  auto it = session_connections_.find(conn.session);
  if (it != session_connections_.end() && --it->second == 0) session_connections_.erase(it);
  conn.session.clear();
}

void HttpServer::MaybeTrimHeap(size_t released) {
  released_since_trim_ += released;
  // glibc keeps freed memory in its arenas; after a burst of large bodies the process would
  // stay at its peak size. Trim once the burst is over, and not more than once a second.
  constexpr size_t kTrimAfter = size_t{32} << 20;
  auto now = Clock::now();
  if (buffered_body_bytes_ == 0 && released_since_trim_ >= kTrimAfter &&
      now - last_trim_ >= std::chrono::seconds(1)) {
    ::malloc_trim(0);
    released_since_trim_ = 0;
    last_trim_ = now;
  }
}

HttpServer::HttpServer(asio::io_context& io, std::string name, HttpLimits limits, Handler handler,
                       HttpMetrics& metrics)
    : io_(io),
      name_(std::move(name)),
      limits_(limits),
      handler_(std::move(handler)),
      metrics_(metrics),
      buffered_gauge_(&metrics_.buffered_body_bytes.With({name_})) {}  // shown as 0 from the start

HttpServer::RequestMetrics HttpServer::MetricsFor(std::string_view route, http::verb method,
                                                  std::string_view method_name, unsigned status) {
  auto make = [&] {
    std::string r(route);
    return RequestMetrics{
        &metrics_.requests.With({name_, r, std::string(method_name), std::to_string(status)}),
        &metrics_.duration.With({name_, r})};
  };
  // An unknown method's label is its text, which the verb does not tell apart.
  if (method == http::verb::unknown) return make();
  // Family::With builds a vector of label strings, takes a lock and compares vectors: once per
  // (route, method, status) here, not once per request. Routes are the router's patterns and a
  // few fixed names, so the map stays small.
  auto it = request_metrics_.find(MetricsKeyView{status, method, route});
  if (it == request_metrics_.end()) {
    it = request_metrics_.emplace(MetricsKey{status, method, std::string(route)}, make()).first;
  }
  return it->second;
}

HttpServer::~HttpServer() {
  *alive_ = false;
  for (auto& a : tcp_acceptors_) {
    beast::error_code ec;
    a->close(ec);
  }
  for (auto& [path, l] : unix_acceptors_) {
    beast::error_code ec;
    l.acceptor->close(ec);
    ::unlink(path.c_str());
  }
}

Result<asio::ip::tcp::endpoint> HttpServer::ListenTcp(const std::string& host, uint16_t port) {
  beast::error_code ec;
  auto address = asio::ip::make_address(host, ec);
  if (ec)
    return Errorf(ErrorCode::kInvalidArgument, "{} listener: bad address \"{}\"", name_, host);
  asio::ip::tcp::endpoint ep(address, port);
  auto acceptor = std::make_shared<asio::ip::tcp::acceptor>(io_);
  acceptor->open(ep.protocol(), ec);
  if (!ec) SetCloseOnExec(acceptor->native_handle());
  if (!ec) acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor->bind(ep, ec);
  if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return Errorf(ErrorCode::kUnavailable, "{} listener: cannot listen on {}:{}: {}", name_, host,
                  port, ec.message());
  }
  auto bound = acceptor->local_endpoint();
  tcp_acceptors_.push_back(acceptor);
  asio::co_spawn(io_,
                 Accept(acceptor, std::make_shared<const std::string>(),
                        [](asio::ip::tcp::socket socket) {
                          beast::error_code ignored;
                          socket.set_option(asio::ip::tcp::no_delay(true), ignored);
                          return beast::tcp_stream(std::move(socket));
                        }),
                 asio::detached);
  return bound;
}

Status HttpServer::ListenUnix(const std::string& path, const std::string& bound_session,
                              uint32_t mode) {
  if (path.size() >= sizeof(sockaddr_un::sun_path)) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "Unix socket path is {} bytes, over the kernel's limit of {}: use a shorter home "
                  "directory ({})",
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
  auto bound = std::make_shared<std::string>(bound_session);
  unix_acceptors_[path] = {acceptor, bound};
  asio::co_spawn(
      io_,
      Accept(acceptor, bound,
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
  it->second.acceptor->close(ec);
  ::unlink(path.c_str());
  unix_acceptors_.erase(it);
}

Status HttpServer::MoveUnix(const std::string& from, const std::string& to,
                            const std::string& bound_session) {
  auto it = unix_acceptors_.find(from);
  if (it == unix_acceptors_.end()) {
    return Errorf(ErrorCode::kNotFound, "nothing listens on {}", from);
  }
  UnixListener listener = std::move(it->second);
  unix_acceptors_.erase(it);
  *listener.bound_session = bound_session;
  if (auto old = unix_acceptors_.find(to); old != unix_acceptors_.end()) {
    beast::error_code ec;
    old->second.acceptor->close(ec);
  }
  unix_acceptors_[to] = std::move(listener);
  return Ok();
}

void HttpServer::BeginDrain() {
  draining_ = true;
  for (auto& a : tcp_acceptors_) {
    beast::error_code ec;
    a->close(ec);
  }
  for (auto& [path, l] : unix_acceptors_) {
    beast::error_code ec;
    l.acceptor->close(ec);
  }
  // Copy first: closing an idle connection makes its coroutine unlink itself.
  std::vector<Connection*> idle;
  for (auto* c : connections_) {
    if (c->idle) idle.push_back(c);
  }
  for (auto* c : idle) c->close();
}

template <typename Acceptor, typename MakeStream>
awaitable<void> HttpServer::Accept(std::shared_ptr<Acceptor> acceptor,
                                   std::shared_ptr<const std::string> bound,
                                   MakeStream make_stream) {
  auto alive = alive_;
  for (;;) {
    beast::error_code ec;
    auto socket = co_await acceptor->async_accept(asio::redirect_error(use_awaitable, ec));
    if (!*alive || draining_) co_return;
    const std::string bound_session = *bound;  // at the accept: MoveUnix may change it
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
    if (!bound_session.empty() &&
        session_connections(bound_session) >= limits_.max_connections_per_session) {
      metrics_.rejected.With({name_, "session_connections"}).Inc();
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
  ChargeConnection(conn, bound_session);  // Accept checked the session's share
  connections_.push_back(&conn);
  auto self_it = std::prev(connections_.end());
  auto& gauge = metrics_.connections.With({name_});
  gauge.Add(1);

  beast::flat_buffer buffer(limits_.max_header_bytes + 64 * 1024);
  auto reject = [&](std::string_view reason) {
    metrics_.rejected.With({name_, std::string(reason)}).Inc();
  };

  std::string head;  // a response's status line and header fields; reused
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
      co_await asio::async_write(stream, http::make_chunk_last(),
                                 asio::redirect_error(use_awaitable, ec));
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
        ssize_t n =
            ::pread(r.file->fd, chunk.data(), want, static_cast<off_t>(r.file->offset + sent));
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
    if (r.headers.empty() && r.status >= 200 && r.status <= 999 && r.status != 204 &&
        r.status != 304) {
      // The common case, written by hand into the connection's reused buffer in one write: the
      // same bytes as Beast's serialiser below (fields in the order they are set there, then
      // Connection: close when the connection ends, then Content-Length) without building a
      // fields container (an allocation per field) and the serialiser's buffer sequences.
      head.clear();
      fmt::format_to(std::back_inserter(head),
                     FMT_COMPILE("HTTP/1.1 {} {}\r\nContent-Type: {}\r\n"), r.status,
                     http::obsolete_reason(static_cast<http::status>(r.status)), r.content_type);
      if (req) {
        fmt::format_to(std::back_inserter(head), FMT_COMPILE("X-Request-Id: {}\r\n"),
                       req->request_id);
      }
      if (!keep_alive) head += "Connection: close\r\n";
      fmt::format_to(std::back_inserter(head), FMT_COMPILE("Content-Length: {}\r\n\r\n"),
                     r.body.size());
      std::array<asio::const_buffer, 2> bufs{asio::buffer(head), asio::buffer(r.body)};
      co_await asio::async_write(stream, bufs, asio::redirect_error(use_awaitable, ec));
      stream.expires_never();
      co_return !ec && keep_alive;
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

  // After refusing a request without reading its body: say so, stop sending, and read and
  // discard what the client still sends (bounded) before closing, as nginx's lingering close
  // does; closing at once would reset the connection under a client still writing its body,
  // which then sees a broken pipe instead of the answer.
  auto linger = [&]() -> awaitable<void> {
    beast::error_code ec;
    stream.socket().shutdown(asio::socket_base::shutdown_send, ec);
    auto until = Clock::now() + limits_.linger_timeout;
    std::array<char, 16384> sink;
    size_t discarded = buffer.size();
    buffer.consume(buffer.size());
    while (discarded < limits_.linger_bytes && Clock::now() < until) {
      stream.expires_at(until);
      size_t n = co_await stream.async_read_some(asio::buffer(sink),
                                                 asio::redirect_error(use_awaitable, ec));
      if (ec) break;
      discarded += n;
    }
    stream.expires_never();
  };
  auto refuse = [&](Response& r, bool body_pending) -> awaitable<void> {
    co_await write_response(nullptr, r, false);
    if (body_pending) co_await linger();
  };

  bool first_request = true;
  for (;;) {
    conn.idle = true;
    if (draining_) break;
    beast::error_code ec;
    // Wait for the first byte of the next request (a new connection must send it soon, an idle
    // keep-alive one within the idle timeout); from then on the whole header must arrive within
    // header_timeout (a slow-loris client is cut off).
    if (buffer.size() == 0) {
      stream.expires_after(first_request ? limits_.first_byte_timeout : limits_.idle_timeout);
      size_t n = co_await stream.async_read_some(buffer.prepare(4096),
                                                 asio::redirect_error(use_awaitable, ec));
      if (ec) {
        if (ec == beast::error::timeout)
          reject(first_request ? "first_byte_timeout" : "idle_timeout");
        break;
      }
      buffer.commit(n);
    }
    first_request = false;
    conn.idle = false;
    auto started = Clock::now();
    Response early;
    bool have_early = false;

    // The raw header block first, checked for what RFC 9112 refuses, then Beast parses it
    // from the buffer.
    stream.expires_after(limits_.header_timeout);
    bool header_in_buffer = false;
    for (size_t scanned = 0;;) {
      std::string_view raw(static_cast<const char*>(buffer.data().data()), buffer.size());
      size_t skip = 0;  // empty lines before a request line are ignored (RFC 9112 section 2.2)
      while (raw.substr(skip, 2) == "\r\n") skip += 2;
      size_t end = raw.find("\r\n\r\n", skip);
      std::string_view block =
          raw.substr(skip, end == std::string_view::npos ? std::string_view::npos : end + 2 - skip);
      if (auto problem = RawHeaderProblem(block, scanned > skip ? scanned - skip : 0)) {
        reject("malformed");
        early = Response::FromError(400, "bad_request",
                                    fmt::format("malformed HTTP request: {}", *problem));
        have_early = true;
        break;
      }
      if (end != std::string_view::npos) {
        header_in_buffer = true;
        break;
      }
      scanned = raw.size() > 0 ? raw.size() - 1 : 0;      // a CR at the end may yet get its LF
      if (raw.size() >= limits_.max_header_bytes) break;  // Beast answers 431 below
      size_t room = std::min<size_t>(4096, buffer.max_size() - buffer.size());
      if (room == 0) break;
      size_t n = co_await stream.async_read_some(buffer.prepare(room),
                                                 asio::redirect_error(use_awaitable, ec));
      if (ec) break;
      buffer.commit(n);
    }
    if (ec == beast::error::timeout) {
      reject("header_timeout");
      break;
    }
    if (ec) break;

    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<uint32_t>(limits_.max_header_bytes));
    // No body limit while reading the header (Beast would refuse a large Content-Length there,
    // before the route is known); the route's limit is set below.
    // (Not boost::none: Beast 1.74 compares a Content-Length against it as greater than none.)
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    if (!have_early) {
      // Usually the whole header block is in the buffer already (the scan above found its end):
      // parse it here instead of through Beast's composed read, which would complete through
      // a post to the io_context. What the parser does not finish goes the usual way.
      if (header_in_buffer) {
        size_t used = parser.put(buffer.data(), ec);
        buffer.consume(used);
        if (ec == http::error::need_more) ec = {};
      }
      if (!ec && !parser.is_header_done()) {
        co_await http::async_read_header(stream, buffer, parser,
                                         asio::redirect_error(use_awaitable, ec));
      }
    }
    if (have_early) {
    } else if (ec == beast::error::timeout) {
      // Beast closes the socket when its deadline passes, so there is no one to answer:
      // a slow client is simply cut off (and counted).
      reject("header_timeout");
      break;
    } else if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
      reject("header_too_large");
      early = Response::FromError(
          431, "headers_too_large",
          fmt::format("request headers exceed {} bytes", limits_.max_header_bytes));
      have_early = true;
    } else if (ec == http::error::end_of_stream || ec == asio::error::eof ||
               ec == asio::error::connection_reset || ec == asio::error::operation_aborted ||
               ec == asio::error::bad_descriptor) {
      break;
    } else if (ec) {
      reject("malformed");
      early = Response::FromError(400, "bad_request", "malformed HTTP request");
      have_early = true;
    } else if (auto te = TransferEncodingProblem(parser)) {
      reject("malformed");
      early = std::move(*te);
      have_early = true;
    }
    stream.expires_never();
    if (have_early) {
      // Best effort: the client may be gone, and the connection closes either way.
      co_await refuse(early, true);
      break;
    }

    // The request as far as it is known: headers, no body yet.
    Request req;
    // The header is moved, not copied (one allocation per field): from here on the parser needs
    // only its own state (framing, content length) to read the body into its message's body.
    req.msg.base() = std::move(parser.get().base());
    req.request_id = RequestId(req.Header("X-Request-Id"));
    req.listener = name_;
    req.bound_session = bound_session;
    std::string_view target = req.msg.target();
    size_t q = target.find('?');
    req.path = std::string(target.substr(0, q));
    if (q != std::string_view::npos) req.query = std::string(target.substr(q + 1));
    bool keep_alive = req.msg.keep_alive();
    bool has_body = parser.chunked() || parser.content_length().value_or(0) > 0;
    req.body_expected = has_body;

    // Who asks, and how large may the body be: decided on the headers, before reading it.
    Admission admission;
    admission.max_body_bytes = limits_.max_body_bytes;
    if (gate_) {
      try {
        admission = co_await gate_(req);
      } catch (const std::exception& e) {
        log::Error("request gate threw", {{"request_id", req.request_id}, {"what", e.what()}});
        admission.refuse = Response::FromError(500, "internal", "internal error");
      }
      if (!*alive) co_return;
    }
    size_t body_limit = std::min(admission.max_body_bytes, limits_.max_body_bytes);
    std::string charged = !bound_session.empty() ? bound_session : admission.charge_to;
    // A taken-over connection's body, if any, is the new owner's to relay.
    bool streamed_body = admission.takeover != nullptr ||
                         (stream_bodies_ && stream_bodies_(req.msg.method(), req.path));
    // A declared body over the route's limit is refused first, whoever sends it.
    if (auto cl = parser.content_length(); !streamed_body && cl && *cl > body_limit) {
      reject("body_too_large");
      admission.refuse = Response::FromError(
          413, "payload_too_large", fmt::format("request body exceeds {} bytes", body_limit));
    }
    if (!admission.refuse && !ChargeConnection(conn, charged)) {
      reject("session_connections");
      admission.refuse =
          Response::FromError(429, "resource_exhausted",
                              fmt::format("this session already has {} open connections",
                                          limits_.max_connections_per_session));
    }
    // What this request will hold in memory, charged before it is read.
    size_t reserve = streamed_body || !has_body
                         ? 0
                         : static_cast<size_t>(parser.content_length().value_or(body_limit));
    if (!admission.refuse && reserve > 0) {
      auto it = session_body_bytes_.find(charged);
      size_t session_held = charged.empty() || it == session_body_bytes_.end() ? 0 : it->second;
      if (buffered_body_bytes_ + reserve > limits_.max_buffered_body_bytes) {
        reject("buffered_bodies");
        admission.refuse = Response::FromError(503, "unavailable",
                                               "too many request bodies in flight; retry shortly");
        admission.refuse->headers.emplace_back("Retry-After", "1");
      } else if (!charged.empty() &&
                 session_held + reserve > limits_.max_session_buffered_body_bytes) {
        reject("session_buffered_bodies");
        admission.refuse = Response::FromError(
            429, "resource_exhausted",
            "this session has too many request bodies in flight; retry shortly");
        admission.refuse->headers.emplace_back("Retry-After", "1");
      }
    }
    if (admission.refuse) {
      // The body is left unread: answer, drain what follows and close.
      Response r = std::move(*admission.refuse);
      co_await refuse(r, has_body);
      if (!*alive) co_return;
      MetricsFor(req.route, req.msg.method(), req.msg.method_string(), r.status).requests->Inc();
      break;
    }
    if (admission.takeover) {
      // The connection is the owner's from here to its end; it is never idle meanwhile, so a
      // drain waits for it as for any request in flight.
      SocketRawStream<Stream> raw(stream, buffer);
      unsigned status = 500;
      try {
        status = co_await admission.takeover(raw);
      } catch (const std::exception& e) {
        log::Error("connection takeover threw",
                   {{"request_id", req.request_id}, {"what", e.what()}});
      }
      if (!*alive) co_return;
      auto m = MetricsFor(req.route, req.msg.method(), req.msg.method_string(), status);
      m.requests->Inc();
      m.duration->Observe(std::chrono::duration<double>(Clock::now() - started).count());
      break;
    }
    std::optional<BodyBudget> budget;
    if (reserve > 0) budget.emplace(*this, charged, reserve);

    std::optional<http::request_parser<http::buffer_body>> body_parser;
    std::optional<StreamBodyReader<Stream>> body_reader;
    if (beast::iequals(req.Header("Expect"), "100-continue") && has_body) {
      http::response<http::empty_body> cont{http::status::continue_, 11};
      stream.expires_after(limits_.write_timeout);
      co_await http::async_write(stream, cont, asio::redirect_error(use_awaitable, ec));
      stream.expires_never();
      if (ec) break;
    }
    if (streamed_body) {
      body_parser.emplace(std::move(parser));
      body_parser->body_limit(std::numeric_limits<std::uint64_t>::max());
      body_reader.emplace(stream, buffer, *body_parser, limits_.body_timeout);
      req.body = &*body_reader;
    } else if (has_body) {
      parser.body_limit(body_limit);
      // The part of the body already in the buffer (often all of it) is parsed here; Beast's
      // composed read, which completes through a post, reads the rest.
      while (!parser.is_done() && buffer.size() > 0) {
        size_t used = parser.put(buffer.data(), ec);
        buffer.consume(used);
        if (ec == http::error::need_more) ec = {};
        if (ec || used == 0) break;
      }
      if (!ec && !parser.is_done()) {
        stream.expires_after(limits_.body_timeout);
        co_await http::async_read(stream, buffer, parser, asio::redirect_error(use_awaitable, ec));
        stream.expires_never();
      }
      if (ec == beast::error::timeout) {
        reject("body_timeout");
        break;
      } else if (ec == http::error::body_limit) {
        reject("body_too_large");
        early = Response::FromError(413, "payload_too_large",
                                    fmt::format("request body exceeds {} bytes", body_limit));
        co_await refuse(early, true);
        break;
      } else if (ec == http::error::end_of_stream || ec == asio::error::eof ||
                 ec == asio::error::connection_reset) {
        break;
      } else if (ec) {
        reject("malformed");
        early = Response::FromError(400, "bad_request", "malformed HTTP request body");
        co_await refuse(early, true);
        break;
      }
      req.msg.body() = std::move(parser.get().body());
    }

    Response res;
    try {
      res = co_await handler_(req);
    } catch (const std::exception& e) {
      // A handler bug must not take the process down; it is logged without request data.
      log::Error("handler threw",
                 {{"request_id", req.request_id}, {"route", req.route}, {"what", e.what()}});
      res = Response::FromError(500, "internal", "internal error");
    }
    if (!*alive) co_return;
    // A streamed body the handler left unread cannot be skipped safely: close after answering,
    // lingering so the client reads the answer rather than a reset.
    bool unread_body = body_reader && !body_reader->done();
    if (unread_body) keep_alive = false;
    unsigned status = res.status;
    bool streamed = static_cast<bool>(res.stream);
    bool ok = co_await write_response(&req, res, keep_alive && !draining_);
    if (!*alive) co_return;
    if (ok == false && unread_body) co_await linger();
    if (!*alive) co_return;
    double secs = std::chrono::duration<double>(Clock::now() - started).count();
    auto m = MetricsFor(req.route, req.msg.method(), req.msg.method_string(), status);
    m.requests->Inc();
    m.duration->Observe(secs);
    if (log::Enabled(log::Level::kInfo)) {
      // The path only: query strings may carry signatures and are never logged.
      log::Info("http", {{"request_id", req.request_id},
                         {"listener", name_},
                         {"method", std::string(req.msg.method_string())},
                         {"path", req.path.substr(0, 256)},
                         {"status", status},
                         {"ms", static_cast<int64_t>(secs * 1000 * 1000) / 1000.0},
                         {"streamed", streamed}});
    }
    if (!ok) break;
  }
  if (*alive) {
    beast::error_code ec;
    stream.socket().shutdown(asio::socket_base::shutdown_both, ec);
    stream.socket().close(ec);
    ReleaseConnection(conn);
    connections_.erase(self_it);
    gauge.Add(-1);
  }
}

}  // namespace airlock::net
