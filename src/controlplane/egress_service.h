#pragma once

#include <memory>
#include <string>

#include "common/asio.h"
#include "common/metrics.h"
#include "controlplane/config.h"
#include "controlplane/event_appender.h"
#include "controlplane/http.h"
#include "controlplane/notifier.h"
#include "egress/gateway.h"
#include "store/store.h"

namespace airlock::controlplane {

// The egress gateway as the sandbox listener serves it (docs/operators.md, "Egress"): a proxy
// request (CONNECT, or an absolute-form URL) on a session's own socket is held to that
// session's policy as configured now, and each connection becomes an "egress.connection"
// event of the session and a log line.
//
// Security: the gateway is reached only on a per-session Unix socket, which is the credential
// (as for GET /sandbox/v1/identity); over TCP, where any process of the host could connect,
// a proxy request is refused. A session that ended reaches nothing.
class EgressService {
 public:
  struct Deps {
    const Config& config;
    asio::io_context& io;
    store::Store& store;
    asio::thread_pool& pool;
    metrics::Registry& registry;
    EventAppender& events;  // sandbox-caused events, within the session's quota
    Notifier& notifier;
  };
  // What adds secrets at the boundary: every configured secret with its value (ReadSecrets),
  // the deployment's CA, and the client context that verifies a secret's real host. The CA
  // and context are null when no secret is configured.
  struct Boundary {
    egress::Secrets secrets;
    std::shared_ptr<egress::Authority> authority;
    std::shared_ptr<asio::ssl::context> upstream_tls;
  };
  // Reads the secrets' values and loads (or makes) the CA: what Start() needs before it
  // listens. Errors name the secret, the variable or the file, never a value.
  static Result<Boundary> LoadBoundary(const Config& config);

  // `own` are the control plane's listeners and this host's addresses, which the gateway never
  // connects to unless the operator allowed exactly one.
  EgressService(Deps deps, egress::OwnAddresses own, Boundary boundary);

  // The sandbox listener's gate for a proxy request (egress::Gateway::IsProxyRequest).
  awaitable<Admission> Admit(Request& req);

  egress::Gateway& gateway() { return *gateway_; }

  // The egress part of GET /sandbox/v1/work for session `s`: {"egress": whether its policy
  // reaches anything now, "env": the placeholders of its secrets by variable, and "ca": the
  // CA certificate (PEM) when it has a secret}.
  Json SandboxWork(const store::Session& s) const;

 private:
  awaitable<void> Record(egress::ConnectionReport r);

  // The session's secrets, as the gateway takes them (null when it has none).
  egress::Secrets SecretsOf(const Json& stored_egress) const;

  Deps d_;
  Boundary boundary_;
  // The gateway's name lookups: threads of their own (a sandbox may choose a slow DNS name).
  asio::thread_pool resolver_{16};
  std::unique_ptr<egress::Gateway> gateway_;
};

// The gateway's options from [egress].
egress::GatewayOptions GatewayOptionsFor(const EgressConfig& c);

}  // namespace airlock::controlplane
