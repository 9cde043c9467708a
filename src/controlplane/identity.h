#pragma once

#include <functional>
#include <string>

#include "common/asio.h"
#include "common/metrics.h"
#include "common/secret.h"
#include "controlplane/http.h"
#include "controlplane/notifier.h"
#include "store/store.h"

namespace airlock::controlplane {

// GET /sandbox/v1/identity: whom a sandbox serves, for a backend that delivers the identity
// over the sandbox's channel (Capabilities::IdentityDelivery::kOverChannel). Such a sandbox
// is created, or restarted, for a session that has no token yet; airlock-init asks here once
// it has started, and the token is minted at that moment. Only its hash is stored, and
// nothing of it is held in memory in between: a control-plane restart before the request
// loses nothing (init retries until it gets through), and any node that can resolve the
// sandbox's socket could answer.
//
// Security: answered only on a sandbox's own Unix socket, which the control plane binds to its
// session (the request needs no credential: the socket is the credential), never over TCP;
// and only while the session has no token (Store::IssueToken is a compare-and-swap), so the
// agent, which reaches the same socket through init's bridge once init has its identity,
// cannot fetch it again, and of racing requests exactly one gets it.
//
// A warm pool's sandbox (pools.h) asks before any session is its own: its request is held
// until a session claims the sandbox, then answered with that session's identity; after a
// few seconds without one it gets 204 No Content, and init asks again at once. The claiming
// session is created with its token, which the pool holds in memory until this request
// takes it (PoolManager::TakeIdentity): once, and for a minute at most.
//
// The answer also carries the session's work (what GET /sandbox/v1/work answers) as "work",
// when the service has a `work` function: init needs it before it starts the agent, and a
// second request would cost the start a round trip.
class PoolManager;
class IdentityService {
 public:
  // The session's work; `files` is its list of files when the caller knows it.
  using WorkFn =
      std::function<awaitable<Result<Json>>(const store::Session&, std::optional<Json> files)>;
  IdentityService(store::Store& store, asio::thread_pool& pool, std::string node, Notifier& events,
                  metrics::Registry& registry, PoolManager* pools = nullptr, WorkFn work = {});

  awaitable<Response> Fetch(const Request& req);

 private:
  Response Refuse(const char* reason, unsigned status, std::string_view code,
                  std::string_view message);
  awaitable<Response> Deliver(const store::Session& s, const Secret& token,
                              std::optional<Json> files = std::nullopt);

  store::Store& store_;
  asio::thread_pool& pool_;
  std::string node_;
  Notifier& events_;
  metrics::Family<metrics::Counter>& requests_;
  PoolManager* pools_;
  WorkFn work_;
};

}  // namespace airlock::controlplane
