#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/asio.h"
#include "common/clock.h"
#include "common/metrics.h"
#include "controlplane/config.h"
#include "sandbox/backend.h"
#include "store/store.h"

namespace airlock::controlplane {

// What the reconciler asks of the session logic: the transitions it triggers, and the
// per-session channel (the socket its sandbox reaches the control plane through). The
// session logic implements it; the reconciler never sees a request or a status code.
class SessionLifecycle {
 public:
  virtual ~SessionLifecycle() = default;
  // Whether this replica runs the session's sandbox: only that one acts on it.
  virtual bool Owns(const store::Session& s) const = 0;
  virtual awaitable<Result<store::Session>> EndSession(const std::string& id,
                                                       store::SessionState to,
                                                       std::optional<std::string> result) = 0;
  // Looks at a live session's sandbox: one that is gone ends the session or is replaced.
  virtual awaitable<void> CheckSandbox(store::Session s) = 0;
  // A fresh sandbox for a live session whose sandbox is beyond reach.
  virtual awaitable<void> RestartSandbox(store::Session s, std::string why) = 0;
  virtual awaitable<void> DestroySandbox(sandbox::Backend* backend, std::string id,
                                         std::string handle) = 0;
  // Since when the session's agent has only waited on its inbox, while it is waiting there
  // right now; nullopt when it is working (or not connected).
  virtual std::optional<int64_t> IdleSince(const std::string& id) const = 0;
  // Moves a session found idle to the idle tier `tier` (paused or hibernated); false when
  // something else is looking after it right now.
  virtual awaitable<Result<bool>> SuspendIdle(const std::string& id, store::SuspendTier tier) = 0;
  virtual Status OpenChannel(const std::string& id) = 0;
  virtual void CloseChannel(const std::string& id) = 0;
};

// Keeps the live sessions this replica runs in line with their sandboxes, once a second:
// sandboxes that exited or vanished, wall-clock timeouts, idle sessions, the sessions of
// replicas that stopped answering (taken over here), and sandboxes no live session owns.
// Reads time from an injected Clock, so its decisions can be tested without waiting for them.
//
// Threading: io thread only, like the rest of the control plane; store and backend calls go
// to the worker pools.
class Reconciler {
 public:
  struct Deps {
    const Config& config;
    asio::io_context& io;
    store::Store& store;
    sandbox::BackendRegistry& backends;
    asio::thread_pool& pool;
    asio::thread_pool& sandbox_pool;
    const Clock& clock;
    SessionLifecycle& sessions;
    metrics::Family<metrics::Counter>& passes;
    // Sandboxes that belong to no session and are not orphans: a warm pool's (pools.h).
    std::function<bool(const std::string& sandbox_id)> pooled = nullptr;
  };
  explicit Reconciler(Deps d) : d_(d), timer_(d.io) {}

  // Re-attaches to the sandboxes that outlived a restart of this replica, then runs a pass
  // every second until Stop.
  void Start();
  void Stop();
  // A pass shortly (an agent said it exited, so its sandbox is about to stop).
  void Soon();

 private:
  awaitable<void> Loop();
  awaitable<void> Once();
  awaitable<void> SoonAfterDelay();
  awaitable<void> ReattachAll();
  // Records this replica's heartbeat and takes over the live sessions of replicas whose
  // heartbeat is older than server.node_ttl_s: their sandboxes are beyond reach, so each gets
  // a fresh one here and carries on from the stored conversation.
  awaitable<void> TakeOverDeadNodes(const std::vector<store::Session>& live, int64_t now);
  // Destroys the sandboxes this replica runs that no live session of its own has (ended,
  // or moved to another replica while this one was away) and closes their sockets.
  awaitable<void> SweepOrphans(const std::vector<store::Session>& live);
  // Suspends a running session whose agent has waited on an empty inbox, and done nothing
  // else, for longer than its idle timeout (limits.idle_timeout_s, else sandbox.idle_timeout_s).
  awaitable<void> SuspendIfIdle(const store::Session& s, int64_t now);
  // Every session in starting, running or suspended, all pages. Blocking: call on the pool.
  Result<std::vector<store::Session>> ListLiveSessions();

  Deps d_;
  asio::steady_timer timer_;
  bool stopping_ = false;
  int64_t passes_ = 0;
  static constexpr int kSweepEveryPasses = 10;
};

}  // namespace airlock::controlplane
