#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/json_util.h"
#include "common/result.h"
#include "common/secret.h"
#include "common/sse_parser.h"

namespace airlock::cli {

// A parsed http:// base URL such as "http://127.0.0.1:7400" or "http://host/airlock".
struct Url {
  std::string host;  // without brackets for IPv6 literals
  uint16_t port = 80;
  std::string base_path;  // "" or "/prefix" (no trailing slash)

  // "http://host:port/prefix", the form used in messages.
  std::string ToString() const;
};

// Accepts http:// only (the operator listener speaks plain HTTP on loopback; put TLS in a
// proxy in front of it). Refuses userinfo, queries and fragments.
Result<Url> ParseUrl(std::string_view text);

using Headers = std::vector<std::pair<std::string, std::string>>;

struct HttpResponse {
  int status = 0;
  std::string content_type;
  Headers headers;
  std::string body;

  bool ok() const { return status >= 200 && status < 300; }
};

struct HttpClientOptions {
  std::chrono::milliseconds connect_timeout{5'000};
  // Whole request, connect to last byte, for Do().
  std::chrono::milliseconds request_timeout{120'000};
  // For streams: the longest silence tolerated between two reads. The event stream sends a
  // keep-alive comment every 15 s, so a minute of silence means the connection is dead.
  // Zero waits forever.
  std::chrono::milliseconds stream_idle_timeout{60'000};
};

// A small synchronous HTTP/1.1 client for the operator API: one connection per request, made
// by the network module's client (net::FetchBlocking) with the CLI's own words for failures.
//
// Errors: a Result error always means the exchange failed at the transport level (cannot
// connect, timed out, connection lost, not HTTP) and has code kUnavailable (or
// kDeadlineExceeded for timeouts, kInvalidArgument for a bad URL), with a message that names
// the URL and what to check. Any HTTP status, 4xx and 5xx included, is a successful exchange
// and comes back as an HttpResponse for the caller to judge.
class HttpClient {
 public:
  static Result<HttpClient> Create(std::string_view base_url, HttpClientOptions options = {});

  // Sent as "Authorization: Bearer ..." on every request. Never printed.
  void SetBearerToken(Secret token) { bearer_ = std::move(token); }
  const Url& url() const { return url_; }

  // `path` starts with '/' and may hold a query; it is appended to the base path.
  // A JSON body is sent with Content-Type: application/json.
  Result<HttpResponse> Do(std::string_view method, std::string_view path,
                          const std::optional<Json>& body = std::nullopt,
                          const Headers& headers = {}) const;

  // GET `path` and hand the body to `on_data` piece by piece as it arrives (chunked or not).
  // `on_data` returning false ends the exchange early (still a success). A non-2xx response
  // is read in full and returned without calling `on_data`.
  Result<HttpResponse> StreamBody(std::string_view path, const Headers& headers,
                                  const std::function<bool(std::string_view)>& on_data) const;

  // GET a text/event-stream and call `on_event` once per event until the server ends the
  // stream or `on_event` returns false. Sends Accept: text/event-stream.
  Result<HttpResponse> StreamSse(std::string_view path, const Headers& headers,
                                 const std::function<bool(const SseEvent&)>& on_event) const;

 private:
  HttpClient(Url url, HttpClientOptions options) : url_(std::move(url)), options_(options) {}

  Url url_;
  HttpClientOptions options_;
  std::optional<Secret> bearer_;
};

}  // namespace airlock::cli
