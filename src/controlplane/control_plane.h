#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/asio.h"
#include "common/clock.h"
#include "common/metrics.h"
#include "common/secret.h"
#include "controlplane/authenticator.h"
#include "controlplane/config.h"
#include "controlplane/egress_service.h"
#include "controlplane/event_appender.h"
#include "controlplane/event_limits.h"
#include "controlplane/file_service.h"
#include "controlplane/home_lock.h"
#include "controlplane/http.h"
#include "controlplane/identity.h"
#include "controlplane/llm_proxy.h"
#include "controlplane/notifier.h"
#include "controlplane/pools.h"
#include "controlplane/reconciler.h"
#include "controlplane/retention.h"
#include "controlplane/session_service.h"
#include "sandbox/backend.h"
#include "store/store.h"

namespace airlock::controlplane {

// The control plane of one process, the composition root: it owns the store, the backends,
// the listeners and their routes, and the session service, the reconciler and the other
// services that act on them. It keeps no state of its own that is not also in the store, so a
// restart loses nothing and re-attaches to the sandboxes that are still running.
//
// Threading: everything runs on `io` (a single thread); store and backend calls are handed
// to a worker pool so that the loop never blocks.
class ControlPlane : private SandboxChannels {
 public:
  // `clock`: what the session logic and the reconciler read the time from (default: the
  // real one; tests pass a ManualClock).
  ControlPlane(Config config, asio::io_context& io, std::unique_ptr<store::Store> store,
               std::unique_ptr<sandbox::BackendRegistry> backends,
               std::shared_ptr<const Clock> clock = nullptr);
  ~ControlPlane() override;

  // Locks the home directory (one server per home: HomeLock), creates it and the operator
  // key, binds the listeners, re-attaches to live sandboxes and starts the reconciler. Call on
  // the io thread before io.run(), or from a coroutine.
  Status Start();
  // Hands over a lock the caller took before it opened anything in the home (airlock serve
  // does, before the store and the backends); Start then keeps it instead of taking its own.
  void AdoptHomeLock(HomeLock lock) { home_lock_ = std::move(lock); }
  // Graceful stop: no new connections, idle ones closed, long-polls and streams answered,
  // then the io_context is stopped once in-flight requests finish or the drain timeout ends.
  void Shutdown();

  const asio::ip::tcp::endpoint& operator_endpoint() const { return operator_endpoint_; }
  const asio::ip::tcp::endpoint& sandbox_endpoint() const { return sandbox_endpoint_; }
  const Config& config() const { return config_; }
  metrics::Registry& metrics() { return registry_; }
  // The routes each listener serves (the tests hold docs/openapi.json against them).
  std::vector<RouteInfo> OperatorRoutes() const { return operator_router_.Routes(); }
  std::vector<RouteInfo> SandboxRoutes() const { return sandbox_router_.Routes(); }
  // Where the per-session Unix socket of `session_id` lives on the host.
  std::string ControlSocketDir(const std::string& session_id) const {
    return sessions_->ControlSocketDir(session_id);
  }

 private:
  void RegisterOperatorRoutes();
  void RegisterSandboxRoutes();
  // A change another replica committed (Store::WatchChanges), on the io thread.
  void OnStoreChange(const store::Change& c);

  // Operator handlers.
  awaitable<Response> CreateSession(Request& req);
  awaitable<Response> ListSessions(Request& req);
  awaitable<Response> GetSession(Request& req);
  awaitable<Response> PostMessage(Request& req);
  awaitable<Response> GetMessages(Request& req);
  awaitable<Response> GetEvents(Request& req);
  awaitable<Response> Suspend(Request& req);
  awaitable<Response> Resume(Request& req);
  awaitable<Response> DeleteSession(Request& req);
  awaitable<Response> GetLogs(Request& req);
  awaitable<void> FollowLogs(std::string id, ChunkSink& sink);

  // Sandbox handlers.
  awaitable<Response> Inbox(Request& req);
  awaitable<Response> SandboxEvent(Request& req);
  awaitable<Response> History(Request& req);
  awaitable<Response> Finish(Request& req);
  awaitable<Response> PresignFile(Request& req);
  awaitable<Response> ListFiles(Request& req);
  awaitable<Response> DownloadFile(Request& req);
  awaitable<Response> UploadFile(Request& req);
  awaitable<Response> GetUsage(Request& req);

  // SandboxChannels, for the session service: the sandbox listener's sockets.
  Status ListenUnix(const std::string& path, const std::string& session_id) override {
    return sandbox_server_->ListenUnix(path, session_id);
  }
  void CloseUnix(const std::string& path) override { sandbox_server_->CloseUnix(path); }
  Status MoveUnix(const std::string& from, const std::string& to,
                  const std::string& session_id) override {
    return sandbox_server_->MoveUnix(from, to, session_id);
  }
  void CutSession(const std::string& session_id) override {
    if (egress_) egress_->gateway().CloseSession(session_id);
  }
  std::string SandboxUrl() const override;
  bool draining() const override { return sandbox_server_->draining(); }

  awaitable<void> DrainAndStop();

  Config config_;
  asio::io_context& io_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<sandbox::BackendRegistry> backends_;
  asio::thread_pool pool_;
  // Backend operations (a container runtime, a VM monitor, a remote API) take milliseconds to
  // seconds: they get their own threads so a burst of creates never queues the store calls
  // that agents' requests make.
  asio::thread_pool sandbox_pool_;
  metrics::Registry registry_;
  std::unique_ptr<HttpMetrics> http_metrics_;
  std::unique_ptr<ControlPlaneMetrics> metrics_;
  Router operator_router_;
  Router sandbox_router_;
  std::unique_ptr<HttpServer> operator_server_;
  std::unique_ptr<HttpServer> sandbox_server_;
  Notifier inbox_;
  Notifier events_;
  ConversationLocks conversations_;
  std::unique_ptr<LlmProxy> llm_;
  std::unique_ptr<FileService> files_;
  // Warm pools: sandboxes waiting for a session (before identity_, which answers them).
  std::unique_ptr<PoolManager> pools_;
  std::unique_ptr<IdentityService> identity_;
  // Operator keys, sandbox tokens and the listeners' gates.
  std::unique_ptr<Authenticator> auth_;
  // The events sandboxes post, committed in groups.
  EventAppender sandbox_events_;
  std::unique_ptr<EgressService> egress_;  // from Start(), once the listeners are known
  // metrics_->events{source="sandbox"}, looked up at the first event rather than at each.
  metrics::Counter* sandbox_events_total_ = nullptr;
  asio::ip::tcp::endpoint operator_endpoint_;
  asio::ip::tcp::endpoint sandbox_endpoint_;
  bool stopping_ = false;
  HomeLock home_lock_;
  // Events a sandbox posts: a rate per session (io thread only), and the refusals counted.
  EventRateLimiter event_rate_{config_.events.rate_per_s, config_.events.burst};
  metrics::Family<metrics::Counter>& event_refusals_{registry_.AddCounter(
      "airlock_event_refusals_total",
      "Sandbox events refused: over the rate or the session's quota.", {"reason"})};
  // Deletes what ended sessions left behind (retention.*, airlock gc). Made in Start(), once
  // the blob store is open.
  std::unique_ptr<Retention> retention_;
  std::shared_ptr<const Clock> clock_;
  std::unique_ptr<SessionService> sessions_;
  std::unique_ptr<Reconciler> reconciler_;
};

// `airlock serve`: builds the control plane from `config`, runs it until SIGTERM/SIGINT and
// drains. Returns the process exit code.
int RunServer(Config config);

}  // namespace airlock::controlplane
