#pragma once

// The LLM providers' transport: POST to a provider's base URL through the network module's
// HTTP client (net/http_client.h), which does the TLS, pooling, timeouts, retries and
// cancellation. What is LLM-specific here is the base URL (its path prefixes every call) and
// the shape of a call (llm/chat.h's HttpCall).
//
// Threading: one io_context, one thread (the control plane's loop). Not thread-safe.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/asio.h"
#include "common/result.h"
#include "llm/chat.h"
#include "net/http_client.h"

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

using UpstreamOptions = net::HttpClientOptions;
using UpstreamResponse = net::HttpResponse;
using UpstreamStats = net::HttpClientStats;
using net::BodySink;
using net::CallCancel;
using net::ParseRetryAfter;

class UpstreamClient {
 public:
  // Errors: kInvalidArgument when `options.ca_file` cannot be loaded.
  static Result<std::unique_ptr<UpstreamClient>> Make(asio::io_context& io,
                                                      UpstreamOptions options);

  // Sends `call` (POST) to `ep`, as net::HttpClient::Fetch sends a request: a 2xx answer's body
  // goes to `sink` when given, retries as the options say. Errors: kUnavailable,
  // kDeadlineExceeded; messages never hold headers or bodies of the request, so never a key.
  awaitable<Result<UpstreamResponse>> Post(const Endpoint& ep, const HttpCall& call, BodySink* sink,
                                           CallCancel& cancel);

  const UpstreamStats& stats() const { return http_->stats(); }
  const UpstreamOptions& options() const { return http_->options(); }

 private:
  explicit UpstreamClient(std::unique_ptr<net::HttpClient> http) : http_(std::move(http)) {}
  std::unique_ptr<net::HttpClient> http_;
};

}  // namespace airlock::llm
