#pragma once

#include <chrono>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/asio.h"
#include "common/json_util.h"
#include "common/metrics.h"
#include "common/result.h"

namespace airlock::net {

// Limits that protect the server from slow, large and numerous clients.
struct HttpLimits {
  size_t max_header_bytes = 16 * 1024;
  // The largest body any route may have; each route has its own, smaller or equal, limit.
  size_t max_body_bytes = 1024 * 1024;
  std::chrono::milliseconds first_byte_timeout{
      5'000};                                        // connect -> first byte of the first request
  std::chrono::milliseconds idle_timeout{60'000};    // keep-alive wait for the next request
  std::chrono::milliseconds header_timeout{10'000};  // first byte -> end of headers
  std::chrono::milliseconds body_timeout{30'000};    // end of headers -> end of body
  std::chrono::milliseconds write_timeout{30'000};   // any single write
  size_t max_connections = 20'000;
  // Connections one session may hold open at once (a per-session socket's, or those a token
  // was presented on): one sandbox cannot take the listener's connections from the others.
  size_t max_connections_per_session = 32;
  // Request bodies held in memory at once, by the whole listener and by one session; a
  // request over either is refused (503 / 429) before its body is read.
  size_t max_buffered_body_bytes = size_t{256} << 20;
  size_t max_session_buffered_body_bytes = size_t{8} << 20;
  // After refusing a request whose body it did not read, the server reads and discards the
  // body for up to this long and this many bytes before closing, so that a client writing the
  // whole body before reading (Python's urllib, curl) sees the answer, not a broken pipe.
  std::chrono::milliseconds linger_timeout{5'000};
  size_t linger_bytes = size_t{64} << 20;
};

// The body of a request the server did not read ahead (HttpServer::StreamBodies): the handler
// pulls it piece by piece, so an upload of any size never sits in memory.
class BodyReader {
 public:
  virtual ~BodyReader() = default;
  // The next piece of the body; empty at its end. The view is valid until the next call.
  // Errors: kDeadlineExceeded (the client stalled longer than body_timeout), kUnavailable (it
  // went away), kInvalidArgument (broken framing).
  virtual awaitable<Result<std::string_view>> Read() = 0;
  virtual std::optional<uint64_t> content_length() const = 0;
  virtual bool done() const = 0;
};

struct Request {
  http::request<http::string_body> msg;
  BodyReader* body = nullptr;  // set, and msg's body empty, when the body is streamed
  bool body_expected = false;  // the headers announce a body (chunked or a Content-Length > 0)
  std::string request_id;
  std::string listener;       // "operator" or "sandbox"
  std::string bound_session;  // the session of a per-session Unix socket; "" for TCP
  std::string path;           // target without the query string
  std::string query;
  std::string route = "unmatched";  // route pattern, set by the router (a metrics label)
  std::map<std::string, std::string, std::less<>> params;
  // The SHA-256 (hex) of the bearer token, kept by whoever hashed it first (the sandbox gate),
  // so that the handler authenticating the same request does not hash it again.
  mutable std::string bearer_hash;

  // Percent-decoded value of a query parameter.
  std::optional<std::string> Query(std::string_view name) const;
  std::string_view Header(std::string_view name) const;
};

// A chunked response body being written. Write() returns false once the peer is gone or a
// write timed out; the producer must then stop.
class ChunkSink {
 public:
  virtual ~ChunkSink() = default;
  virtual awaitable<bool> Write(std::string_view data) = 0;
};

// A byte range of an open file sent as a response body with a Content-Length.
struct FileBody {
  int fd = -1;  // owned: closed when the response is done
  uint64_t offset = 0;
  uint64_t length = 0;
  FileBody() = default;
  FileBody(const FileBody&) = delete;
  FileBody& operator=(const FileBody&) = delete;
  ~FileBody();
};

struct Response {
  unsigned status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  // When set, headers go out with Transfer-Encoding: chunked and this produces the body.
  std::function<awaitable<void>(ChunkSink&)> stream;
  // When set, the body is this part of a file (HEAD: headers only).
  std::shared_ptr<FileBody> file;

  static Response FromJson(unsigned status, const Json& j);
  static Response Text(unsigned status, std::string body,
                       std::string content_type = "text/plain; charset=utf-8");
  // The API's error shape {"error":{"code","message"}} with the status of `e.code`: the one
  // place an Error becomes a response. The body's code is `e.api_code` when set, else the
  // name of `e.code`; `e.retry_after_s` becomes a Retry-After header.
  static Response FromError(const Error& e);
  static Response FromError(unsigned status, std::string_view code, std::string_view message);
};

unsigned HttpStatusFor(ErrorCode code);

// Calls `fn` with each non-empty item of a comma-separated field value (RFC 9110 section
// 5.6.1: "gzip, chunked"), trimmed of spaces and tabs.
template <typename F>
void ForEachListItem(std::string_view value, F&& fn) {
  while (!value.empty()) {
    size_t comma = value.find(',');
    std::string_view item = value.substr(0, comma);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
    if (!item.empty()) fn(item);
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
}

using Handler = std::function<awaitable<Response>(Request&)>;

// A connection handed whole to its owner after a request's head (a forward proxy's CONNECT or
// absolute-form request): raw bytes both ways, no HTTP framing and no deadline but the owner's.
// The server still counts the connection (and its session's share) until the takeover returns,
// then closes it.
class RawStream {
 public:
  virtual ~RawStream() = default;
  // What the client sent after the request head that the server had already read; it comes
  // before anything ReadSome returns. Empties it.
  virtual std::string TakePending() = 0;
  virtual awaitable<size_t> ReadSome(asio::mutable_buffer into, beast::error_code& ec) = 0;
  virtual awaitable<void> Write(asio::const_buffer data, beast::error_code& ec) = 0;
  virtual void ShutdownSend() = 0;
  // Closes the socket: reads and writes under way complete with an error.
  virtual void Close() = 0;
};
// Runs the taken-over connection; returns the status it answered, for the request metrics.
using Takeover = std::function<awaitable<unsigned>(RawStream&)>;

// The server's question to its owner once a request's headers are in and before any of its
// body is read: may it go on, how large may its body be, and whom is it charged to.
struct Admission {
  std::optional<Response> refuse;  // answered at once; the body is never read into memory
  size_t max_body_bytes = 4096;    // capped by HttpLimits::max_body_bytes
  // The session the request is charged to, for the per-session connection and body caps;
  // "" for none. A per-session Unix socket's connections are charged to its session anyway.
  std::string charge_to;
  // When set (and nothing refused), the server reads no body and writes no response: the
  // connection is handed to this, and closed once it returns.
  Takeover takeover;
};
using Gate = std::function<awaitable<Admission>(Request&)>;

struct HttpMetrics {
  explicit HttpMetrics(metrics::Registry& r);
  metrics::Family<metrics::Counter>& requests;
  metrics::Family<metrics::Histogram>& duration;
  metrics::Family<metrics::Gauge>& connections;
  metrics::Family<metrics::Counter>& rejected;
  metrics::Family<metrics::Gauge>& buffered_body_bytes;
};

// An HTTP/1.1 server on one io_context: one coroutine per connection, keep-alive, the limits
// above, and a graceful drain. All methods must be called on the io_context's thread.
class HttpServer {
 public:
  HttpServer(asio::io_context& io, std::string name, HttpLimits limits, Handler handler,
             HttpMetrics& metrics);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds and starts accepting. Port 0 picks a free port; the bound endpoint is returned.
  Result<asio::ip::tcp::endpoint> ListenTcp(const std::string& host, uint16_t port);
  // Listens on a Unix socket at `path` (replacing a stale file). Every request on it carries
  // `bound_session`, so routes can refuse a token of any other session.
  Status ListenUnix(const std::string& path, const std::string& bound_session,
                    uint32_t mode = 0666);
  void CloseUnix(const std::string& path);
  // The listener at `from` goes on as the one at `to` (the same socket file reached by
  // another path, through a link the caller makes), and what it accepts from now on carries
  // `bound_session`; connections already open keep theirs. No file is touched, so the socket
  // is never missing. kNotFound when nothing listens at `from`.
  Status MoveUnix(const std::string& from, const std::string& to, const std::string& bound_session);
  // Requests for which `pred(method, path)` holds get their body as a Request::body reader
  // instead of read ahead into memory (and are not held to max_body_bytes: the handler
  // enforces its own limit).
  void StreamBodies(std::function<bool(http::verb, std::string_view)> pred) {
    stream_bodies_ = std::move(pred);
  }
  // Asked about every request between its headers and its body (see Admission). Without a
  // gate every route may have a body of max_body_bytes and nothing is charged to a session.
  void SetGate(Gate gate) { gate_ = std::move(gate); }

  // Stops accepting and closes idle keep-alive connections; requests in flight complete and
  // their connections close after the response.
  void BeginDrain();
  bool draining() const { return draining_; }
  size_t active_connections() const { return connections_.size(); }
  // Connections currently charged to `session`, and request body bytes held in memory.
  size_t session_connections(const std::string& session) const;
  size_t buffered_body_bytes() const { return buffered_body_bytes_; }
  const std::string& name() const { return name_; }

  struct Connection;  // internal
  class BodyBudget;   // internal

 private:
  // Charges `conn` to `session`; false when the session already holds its share.
  bool ChargeConnection(Connection& conn, const std::string& session);
  void ReleaseConnection(Connection& conn);
  // Called when buffered body memory has been released: hands freed heap back to the kernel
  // now and then, so a burst of large bodies does not leave the process at its peak size.
  void MaybeTrimHeap(size_t released);

  // The request counter and duration histogram of one (route, method, status).
  struct RequestMetrics {
    metrics::Counter* requests;
    metrics::Histogram* duration;
  };
  RequestMetrics MetricsFor(std::string_view route, http::verb method, std::string_view method_name,
                            unsigned status);
  struct MetricsKey {
    unsigned status;
    http::verb method;
    std::string route;
  };
  struct MetricsKeyView {
    unsigned status;
    http::verb method;
    std::string_view route;
  };
  struct MetricsKeyLess {
    using is_transparent = void;
    template <typename A, typename B>
    bool operator()(const A& a, const B& b) const {
      if (a.status != b.status) return a.status < b.status;
      if (a.method != b.method) return a.method < b.method;
      return std::string_view(a.route) < std::string_view(b.route);
    }
  };

  template <typename Stream>
  awaitable<void> Serve(Stream stream, std::string bound_session);
  // Accepts until the acceptor closes; `make_stream` turns a socket into a Beast stream.
  template <typename Acceptor, typename MakeStream>
  awaitable<void> Accept(std::shared_ptr<Acceptor> acceptor,
                         std::shared_ptr<const std::string> bound_session, MakeStream make_stream);

  asio::io_context& io_;
  std::string name_;
  HttpLimits limits_;
  Handler handler_;
  HttpMetrics& metrics_;
  std::function<bool(http::verb, std::string_view)> stream_bodies_;
  Gate gate_;
  bool draining_ = false;
  std::map<std::string, size_t, std::less<>> session_connections_;
  std::map<std::string, size_t, std::less<>> session_body_bytes_;
  size_t buffered_body_bytes_ = 0;
  size_t released_since_trim_ = 0;
  std::chrono::steady_clock::time_point last_trim_{};
  std::vector<std::shared_ptr<asio::ip::tcp::acceptor>> tcp_acceptors_;
  struct UnixListener {
    std::shared_ptr<asio::local::stream_protocol::acceptor> acceptor;
    std::shared_ptr<std::string> bound_session;  // read at each accept (MoveUnix changes it)
  };
  std::map<std::string, UnixListener> unix_acceptors_;
  std::list<Connection*> connections_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  metrics::Gauge* buffered_gauge_;  // metrics_.buffered_body_bytes of this listener
  std::map<MetricsKey, RequestMetrics, MetricsKeyLess> request_metrics_;
};

}  // namespace airlock::net
