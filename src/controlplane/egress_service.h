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
  // `own` are the control plane's listeners and this host's addresses, which the gateway never
  // connects to unless the operator allowed exactly one.
  EgressService(Deps deps, egress::OwnAddresses own);

  // The sandbox listener's gate for a proxy request (egress::Gateway::IsProxyRequest).
  awaitable<Admission> Admit(Request& req);

  egress::Gateway& gateway() { return *gateway_; }

 private:
  awaitable<void> Record(egress::ConnectionReport r);

  Deps d_;
  // The gateway's name lookups: threads of their own (a sandbox may choose a slow DNS name).
  asio::thread_pool resolver_{16};
  std::unique_ptr<egress::Gateway> gateway_;
};

// The gateway's options from [egress].
egress::GatewayOptions GatewayOptionsFor(const EgressConfig& c);

}  // namespace airlock::controlplane
