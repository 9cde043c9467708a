#pragma once

// HTTP/1.1 client for LLM upstreams: Beast over TCP or OpenSSL TLS (peer and host name
// verified against the system store, plus an optional extra CA file), pooled keep-alive
// connections per host, connect / first-byte / total timeouts, retries with backoff on
// connection errors, 429 and 5xx (honouring Retry-After), and cancellation.
//
// Threading: one io_context, one thread (the control plane's loop). Not thread-safe.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/asio.h"
#include "common/result.h"
#include "llm/chat.h"

namespace boost::asio::ssl {
class context;
}  // namespace boost::asio::ssl

namespace airlock::llm {

// Where a provider lives, from its base URL (https://api.openai.com/v1).
struct Endpoint {
  bool tls = true;
  std::string host;
  uint16_t port = 443;
  std::string base_path;    // "/v1" or ""
  std::string Key() const;  // pool key: scheme://host:port
};
// Accepts http:// and https:// URLs with a host, an optional port and path; nothing else
// (no user info, query or fragment).
Result<Endpoint> ParseBaseUrl(std::string_view url);

struct UpstreamOptions {
  std::chrono::milliseconds connect_timeout{10'000};      // DNS + TCP + TLS handshake
  std::chrono::milliseconds first_byte_timeout{120'000};  // request sent -> response headers; also
                                                          // the longest silence inside a stream
  std::chrono::milliseconds total_timeout{600'000};       // the whole call, retries included
  int max_retries = 2;                                    // attempts after the first
  std::chrono::milliseconds backoff_initial{500};
  std::chrono::milliseconds backoff_max{8'000};
  std::chrono::milliseconds retry_after_max{60'000};  // longer Retry-After: give up at once
  std::string ca_file;                                // extra trust anchor (self-hosted upstreams)
  size_t max_idle_per_host = 64;
  size_t max_response_bytes = 32 << 20;  // non-streamed bodies
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

struct UpstreamResponse {
  unsigned status = 0;
  std::string body;  // the whole body unless a sink took it
  int attempts = 1;
};

struct UpstreamStats {
  uint64_t connections_opened = 0;
  uint64_t connections_reused = 0;
  uint64_t retries = 0;
};

class UpstreamClient {
 public:
  // Errors: kInvalidArgument when `options.ca_file` cannot be loaded.
  static Result<std::unique_ptr<UpstreamClient>> Make(asio::io_context& io,
                                                      UpstreamOptions options);
  ~UpstreamClient();

  // Sends `call` (POST) to `ep`. A 2xx answer's body goes to `sink` when given; any other
  // answer is read whole into the response. Retries connection failures that happen before
  // an answer arrives, 429 and 5xx, up to max_retries, waiting with exponential backoff and
  // jitter or for the answer's Retry-After; a stale pooled connection is replaced at once.
  // Errors: kUnavailable (could not connect, TLS verification failed, connection lost,
  // malformed answer, cancelled), kDeadlineExceeded (a timeout). Messages never hold headers
  // or bodies of the request, so never a key.
  awaitable<Result<UpstreamResponse>> Post(const Endpoint& ep, const HttpCall& call, BodySink* sink,
                                           CallCancel& cancel);

  const UpstreamStats& stats() const { return stats_; }
  const UpstreamOptions& options() const { return options_; }

  struct Connection;  // internal

 private:
  UpstreamClient(asio::io_context& io, UpstreamOptions options);
  awaitable<Result<UpstreamResponse>> Attempt(const Endpoint& ep, const HttpCall& call,
                                              BodySink* sink, CallCancel& cancel,
                                              std::chrono::steady_clock::time_point deadline,
                                              bool& retryable, std::string& retry_after);
  awaitable<Result<std::unique_ptr<Connection>>> Connect(
      const Endpoint& ep, CallCancel& cancel, std::chrono::steady_clock::time_point deadline);
  std::unique_ptr<Connection> TakeIdle(const std::string& key);
  void PutIdle(const std::string& key, std::unique_ptr<Connection> c);

  asio::io_context& io_;
  UpstreamOptions options_;
  std::shared_ptr<asio::ssl::context> tls_;
  std::map<std::string, std::vector<std::unique_ptr<Connection>>> idle_;
  UpstreamStats stats_;
};

// Seconds to wait from a Retry-After header value (delta-seconds or an HTTP-date), or -1.
int64_t ParseRetryAfter(std::string_view value, int64_t now_unix);

}  // namespace airlock::llm
