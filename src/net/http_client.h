#pragma once

// The control plane's one HTTP/1.1 client for outgoing calls (LLM upstreams, S3, the APIs of
// backends to come): Beast over TCP or TLS (net/tls.h), any method, a body read whole or
// handed to a sink as it arrives, HEAD, connecting somewhere other than the URL's host,
// pooled keep-alive connections per host, connect / first-byte / total timeouts, retries with
// backoff on connection errors, 429 and 5xx (honouring Retry-After), and cancellation.
//
// Threading: an HttpClient lives on one io_context and is used from its one thread; it is not
// thread-safe. Synchronous callers on other threads use FetchBlocking, which runs a call on a
// private io_context.
//
// Security: error messages name the host and what failed, never a header or a body of the
// request, so never a key or a signature.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/asio.h"
#include "common/result.h"

namespace boost::asio::ssl {
class context;
}  // namespace boost::asio::ssl

namespace airlock::net {

using Headers = std::vector<std::pair<std::string, std::string>>;

// Where a call goes.
struct Endpoint {
  bool tls = true;
  std::string host;  // without brackets: the Host header, SNI and the certificate check name it
  uint16_t port = 443;
  // Connect to this host and port instead of resolving `host` (curl's --connect-to): the Host
  // header, SNI and the certificate check still name `host`. Empty / 0: `host` / `port`.
  std::string connect_host;
  uint16_t connect_port = 0;

  std::string Key() const;    // pool key: scheme://host:port, plus where it connects
  std::string Where() const;  // host:port connected to, for messages
};

struct HttpRequest {
  http::verb method = http::verb::get;
  std::string target = "/";  // origin form: the path and the query
  Headers headers;           // set after Host and User-Agent, so they may replace them
  std::string body;
  // A file whose bytes are the body instead, read from disk as they are sent (from its start
  // again on each attempt), so that a large upload never sits in memory. `body` stays empty.
  std::string body_file;
  // The Host header; empty: the endpoint's host, with its port unless it is the default one.
  std::string host;
  // The largest body read into memory (not the sink's); 0: the client's max_response_bytes.
  size_t max_response_bytes = 0;
};

struct HttpResponse {
  unsigned status = 0;
  Headers headers;
  std::string body;  // the whole body unless a sink took it
  int attempts = 1;

  // The first header of that name (case-insensitive), or nullopt.
  std::optional<std::string_view> Header(std::string_view name) const;
};

// A transport failure as the client saw it, for callers that word their own errors (a CLI
// that tells its user what to check): where it happened, the socket's error, the endpoint,
// and the client's own message.
struct TransportFailure {
  enum class Stage { kResolve, kConnect, kHandshake, kSend, kReceive };
  Stage stage;
  beast::error_code ec;
  const Endpoint& endpoint;
  std::string message;
};

// A timeout that never expires.
inline constexpr std::chrono::milliseconds kNoTimeout = std::chrono::milliseconds::max();

struct HttpClientOptions {
  std::chrono::milliseconds connect_timeout{10'000};      // DNS + TCP + TLS handshake
  std::chrono::milliseconds first_byte_timeout{120'000};  // request sent -> response headers; also
                                                          // the longest silence inside a body
  std::chrono::milliseconds total_timeout{600'000};       // the whole call, retries included
  // The longest silence inside a 2xx body handed to a sink (a stream of events); zero: the
  // first_byte_timeout. Any of these may be kNoTimeout.
  std::chrono::milliseconds sink_idle_timeout{0};
  int max_retries = 2;  // attempts after the first
  std::chrono::milliseconds backoff_initial{500};
  std::chrono::milliseconds backoff_max{8'000};
  std::chrono::milliseconds retry_after_max{60'000};  // longer Retry-After: give up at once
  std::string ca_file;                                // extra trust anchor (self-hosted services)
  size_t max_idle_per_host = 64;
  size_t max_response_bytes = 32 << 20;  // bodies read into memory
  bool keep_alive = true;                // false: one connection per call, closed after it
  std::string log_name = "http client";  // names the client in its log lines
  // When set, turns each transport failure into the call's error (instead of the client's
  // message with kUnavailable, or kDeadlineExceeded for a timeout).
  std::function<Error(const TransportFailure&)> describe_failure;
};

// Cancels one call (the sandbox went away, the session ended). Whatever the call is waiting
// on at that moment — resolve, connect, handshake, read, write, backoff — is interrupted.
class CallCancel {
 public:
  void Cancel();
  bool cancelled() const { return cancelled_; }
  // The call registers how to interrupt its current wait; Clear() when the wait is over.
  void OnCancel(std::function<void()> fn) { hook_ = std::move(fn); }
  void Clear() { hook_ = nullptr; }

 private:
  bool cancelled_ = false;
  std::function<void()> hook_;
};

// Receives the body of a 2xx answer as it arrives. Returning false stops the call (the
// connection is closed, not pooled).
class BodySink {
 public:
  virtual ~BodySink() = default;
  virtual awaitable<bool> OnData(std::string_view piece) = 0;
};

struct HttpClientStats {
  uint64_t connections_opened = 0;
  uint64_t connections_reused = 0;
  uint64_t retries = 0;
};

class HttpClient {
 public:
  // Loads the TLS context from `options.ca_file` (net/tls.h). Errors: kInvalidArgument when
  // the CA file cannot be loaded, kUnavailable when the system trust store cannot be.
  static Result<std::unique_ptr<HttpClient>> Make(asio::io_context& io, HttpClientOptions options);
  // With a TLS context made already (MakeTlsClientContext), shared with other clients.
  static std::unique_ptr<HttpClient> Make(asio::io_context& io, HttpClientOptions options,
                                          std::shared_ptr<asio::ssl::context> tls);
  ~HttpClient();

  // Sends `request` to `endpoint`. A 2xx answer's body goes to `sink` when given; any other
  // answer, and every answer without a sink, is read whole into the response (a HEAD's has
  // none). Retries connection failures that happen before an answer arrives, 429 and 5xx,
  // up to max_retries, waiting with exponential backoff and jitter or for the answer's
  // Retry-After; a stale pooled connection is replaced at once.
  // Errors: kUnavailable (could not connect, TLS verification failed, connection lost,
  // malformed answer, cancelled), kDeadlineExceeded (a timeout).
  awaitable<Result<HttpResponse>> Fetch(const Endpoint& endpoint, const HttpRequest& request,
                                        BodySink* sink, CallCancel& cancel);

  const HttpClientStats& stats() const { return stats_; }
  const HttpClientOptions& options() const { return options_; }

  struct Connection;  // internal
  struct FileBody {   // internal: HttpRequest::body_file, measured
    std::string path;
    uint64_t size = 0;
  };

 private:
  HttpClient(asio::io_context& io, HttpClientOptions options,
             std::shared_ptr<asio::ssl::context> tls);
  awaitable<Result<HttpResponse>> Attempt(const Endpoint& ep,
                                          const http::request<http::string_body>& req,
                                          const FileBody* file, size_t max_response_bytes,
                                          BodySink* sink, CallCancel& cancel,
                                          std::chrono::steady_clock::time_point deadline,
                                          bool& retryable);
  // Writes the file's first `file.size` bytes to the connection; failures come back in `ec`.
  awaitable<void> SendFile(Connection& c, const FileBody& file,
                           std::chrono::steady_clock::time_point deadline, beast::error_code& ec);
  awaitable<Result<std::unique_ptr<Connection>>> Connect(
      const Endpoint& ep, CallCancel& cancel, std::chrono::steady_clock::time_point deadline,
      bool& retryable);
  std::unexpected<Error> Fail(TransportFailure::Stage stage, const beast::error_code& ec,
                              const Endpoint& ep, std::string message) const;
  std::unique_ptr<Connection> TakeIdle(const std::string& key);
  void PutIdle(const std::string& key, std::unique_ptr<Connection> c);

  asio::io_context& io_;
  HttpClientOptions options_;
  std::shared_ptr<asio::ssl::context> tls_;
  std::map<std::string, std::vector<std::unique_ptr<Connection>>> idle_;
  HttpClientStats stats_;
};

// Runs one call to completion on a private io_context, for code that is synchronous (the S3
// store, called on worker threads; the CLI). `tls` may be shared between threads. Without a
// sink, as Fetch without one; `on_data` receives a 2xx body piece by piece and returning
// false from it ends the call early (a success).
Result<HttpResponse> FetchBlocking(std::shared_ptr<asio::ssl::context> tls,
                                   const HttpClientOptions& options, const Endpoint& endpoint,
                                   const HttpRequest& request,
                                   const std::function<bool(std::string_view)>& on_data = {});

// Seconds to wait from a Retry-After header value (delta-seconds or an HTTP-date), or -1.
int64_t ParseRetryAfter(std::string_view value, int64_t now_unix);

}  // namespace airlock::net
