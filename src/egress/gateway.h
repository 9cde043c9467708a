#pragma once

// The egress gateway: an HTTP forward proxy inside the control plane (CONNECT tunnels and
// absolute-form plain HTTP), reached only over a session's own channel, that lets a sandbox
// reach what its policy allows and nothing else. See docs/operators.md, "Egress".

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "common/asio.h"
#include "common/metrics.h"
#include "egress/policy.h"
#include "net/http_server.h"

namespace boost::asio::ssl {
class context;
}  // namespace boost::asio::ssl

namespace airlock::egress {

class Authority;

// A credential the gateway adds at the boundary (docs/operators.md, "Credentials at the
// boundary"): a request inside a TLS tunnel to one of `hosts` whose `header` carries
// `placeholder` goes upstream with `value` in its place. The sandbox only ever holds the
// placeholder.
struct Secret {
  std::string name;
  std::string value;        // never in a log, an event, an error or a report
  std::string placeholder;  // what the sandbox holds instead
  std::string header;       // the request header it is replaced in (e.g. "Authorization")
  Policy hosts;             // the names (and ports) it may go to: name rules only
  // The header's whole value with "{}" for the secret ("Bearer {}", "token {}"); "" to replace
  // the placeholder where the client put it.
  std::string format;
};
using Secrets = std::shared_ptr<const std::vector<Secret>>;

struct GatewayOptions {
  // Per session: connections open at once, new ones (and plain-HTTP requests) per minute, and
  // bytes per minute both ways together. Over the byte rate a connection waits; it is not cut.
  size_t max_connections_per_session = 16;
  size_t max_lookups_per_session = 2;  // name lookups in flight; past it, 429
  double requests_per_minute = 600;
  double bytes_per_minute = 1024.0 * 1024 * 1024;
  std::chrono::milliseconds connect_timeout{10'000};
  // Names pinned to addresses, read before DNS (which is asked without search domains): the
  // host's own /etc/hosts, or an operator's file in its format.
  std::string hosts_file = "/etc/hosts";
  // No byte either way for this long (a tunnel's ClientHello wait included): closed.
  std::chrono::milliseconds idle_timeout{300'000};
  // For tunnels to a secret's hosts: the CA whose leaves the gateway presents to the sandbox,
  // and the client context that verifies the real host. Both set, or no interception.
  std::shared_ptr<Authority> authority;
  std::shared_ptr<asio::ssl::context> upstream_tls;
};

// What one proxied connection did: the session's "egress.connection" event, and a log line.
// Never holds a header value or a body byte.
struct ConnectionReport {
  std::string session;
  std::string method;  // CONNECT, GET, ...
  std::string host;    // as the client asked for it (printable ASCII)
  uint16_t port = 0;
  std::string path;     // plain HTTP: the request's path (no query); "" for a tunnel
  std::string address;  // the address connected to; "" when none was
  // "allowed"; "denied" (the policy), "refused" (the address, or the TLS server name),
  // "limited" (a per-session cap), "failed" (the upstream could not be reached).
  std::string decision;
  std::string reason;       // why, when not allowed
  unsigned status = 0;      // what the client was answered (200 for a tunnel that opened); for
                            // plain HTTP, the upstream's status once seen
  uint64_t bytes_up = 0;    // client to upstream
  uint64_t bytes_down = 0;  // upstream to client
  int64_t duration_ms = 0;
  // A tunnel to a secret's host, opened by the gateway: its request's path and method are
  // visible, and which secrets went in (by name).
  bool intercepted = false;
  std::vector<std::string> secrets_added;
  // Placeholders the client sent where they do not belong (another host, another header, the
  // URL, plain HTTP): not replaced, named here.
  std::vector<std::string> placeholders_refused;
};

// The gateway's connections and per-session caps. All calls on the io_context's thread.
//
// Security: what a session reaches is decided on the address the gateway resolved itself
// (policy.h: Decide), and the connection goes to exactly that address, so a name that
// resolves differently later (DNS rebinding) gains nothing. A tunnel's first bytes, when they
// are a TLS ClientHello, must name the host the tunnel was opened for. Every cap is per session,
// so one sandbox cannot take another's share; nothing the client sends is logged but the
// method, host, port and path.
class Gateway {
 public:
  struct Deps {
    asio::io_context& io;
    // Name lookups (getaddrinfo blocks, for as long as DNS takes): a pool of their own, so
    // that slow DNS never holds the threads the store needs.
    asio::thread_pool& resolver;
    metrics::Registry& registry;
    std::function<void(const ConnectionReport&)> report;  // each connection, once, at its end
  };
  Gateway(Deps deps, GatewayOptions options, OwnAddresses own);
  ~Gateway();
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  // Whether `req` asks a proxy (CONNECT, or an absolute-form target) rather than a route.
  static bool IsProxyRequest(const net::Request& req);

  // Decides on a proxy request of `session` under `policy`: a refusal (400, 403, 429) at
  // once, or a takeover that resolves, checks the address, connects and relays.
  // `secrets` are the session's: a tunnel to one of their hosts is opened by the gateway
  // (TLS with a leaf of options.authority) and its request gets the secret in its header.
  net::Admission Admit(const net::Request& req, const std::string& session, Policy policy,
                       Secrets secrets = nullptr);

  // Closes every open connection of `session` (it ended, or its sandbox moved away): each
  // ends as if its peer had gone, and is reported with the reason.
  void CloseSession(const std::string& session);

  // Connections open now (all sessions), and those of one session.
  size_t open_connections() const;
  size_t open_connections(const std::string& session) const;

  struct State;  // internal, shared with the connections' coroutines

 private:
  std::shared_ptr<State> state_;
};

// The addresses of this host's interfaces (getifaddrs), for OwnAddresses::host.
std::vector<asio::ip::address> HostAddresses();

}  // namespace airlock::egress
