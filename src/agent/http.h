#pragma once

// A small blocking HTTP/1.1 client for the sandbox side. The agent talks to one endpoint,
// CONTROL_PLANE_URL, which inside an oci sandbox is airlock-init's bridge on 127.0.0.1, and to
// the presigned URLs the control plane hands out. It needs no TLS, no proxy and no cookies:
// what it needs is bounded everything (header size, body size, a deadline per request) and a
// clear account of how a request failed, so that the caller can decide what is safe to retry.
//
// The agent links no project library (see CMakeLists.txt): this is plain C++ and POSIX.

#include <cstdint>
#include <expected>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace airlock::agent {

struct HttpUrl {
  std::string host;
  int port = 80;
  std::string path;  // the path and query, "/" at least
};

// Parses "http://host[:port][/path]". https is refused with a reason (see docs/agents.md).
std::expected<HttpUrl, std::string> ParseHttpUrl(std::string_view url);

struct HttpRequest {
  std::string method = "GET";
  std::string target = "/";  // path and query
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // Streams the body from this descriptor (body_size bytes) instead of `body`.
  int body_fd = -1;
  uint64_t body_size = 0;
};

struct HttpResponse {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;  // empty when the body went to HttpOptions::sink_fd
  uint64_t body_bytes = 0;
  // The value of header `name` (case-insensitive), "" when absent.
  std::string Header(std::string_view name) const;
};

struct HttpOptions {
  int connect_timeout_ms = 5'000;
  int timeout_ms = 60'000;          // the whole request: connect, send, receive
  uint64_t max_body = 64ull << 20;  // a larger body is an error
  int sink_fd = -1;                 // a 2xx body is written here instead of kept
};

struct HttpError {
  enum class Kind {
    kConnect,   // no connection: nothing was sent, always safe to retry
    kTransfer,  // the connection broke or timed out after the request went out, or the
                // response was malformed: whether the server acted on it is unknown
    kLocal,     // a local problem (bad URL, unreadable body file, sink not writable)
  };
  Kind kind = Kind::kLocal;
  std::string message;
};

// Sends one request on a fresh connection and reads the whole response. A new connection
// per request costs ~0.1 ms on loopback and means a sandbox that was frozen and thawed never
// trips over a connection the other side closed meanwhile.
std::expected<HttpResponse, HttpError> HttpFetch(const HttpUrl& url, const HttpRequest& req,
                                                 const HttpOptions& options);

}  // namespace airlock::agent
