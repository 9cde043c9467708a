#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/asio.h"
#include "common/clock.h"
#include "common/metrics.h"
#include "common/secret.h"
#include "controlplane/config.h"
#include "controlplane/event_appender.h"
#include "controlplane/event_limits.h"
#include "controlplane/file_service.h"
#include "controlplane/home_lock.h"
#include "controlplane/http.h"
#include "controlplane/identity.h"
#include "controlplane/llm_proxy.h"
#include "controlplane/notifier.h"
#include "controlplane/reconciler.h"
#include "controlplane/retention.h"
#include "controlplane/token_cache.h"
#include "sandbox/backend.h"
#include "store/store.h"

namespace airlock::controlplane {

// Counters of the session logic (the HTTP layer has its own).
struct ControlPlaneMetrics {
  explicit ControlPlaneMetrics(metrics::Registry& r)
      : sessions_created(
            r.AddCounter("airlock_sessions_created_total", "Sessions created.", {"backend"})),
        sessions_ended(r.AddCounter("airlock_sessions_ended_total",
                                    "Sessions that reached a final state.", {"state"})),
        sandbox_errors(r.AddCounter("airlock_sandbox_errors_total",
                                    "Backend operations that failed.", {"backend", "op"})),
        events(r.AddCounter("airlock_events_total", "Events appended.", {"source"})),
        auth_failures(
            r.AddCounter("airlock_auth_failures_total", "Refused credentials.", {"listener"})),
        sandbox_restarts(r.AddCounter(
            "airlock_sandbox_restarts_total",
            "Fresh sandboxes started for live sessions whose sandbox died.", {"backend"})),
        reconcile_passes(r.AddCounter("airlock_reconcile_passes_total",
                                      "Passes of the reconciler over the live sessions.", {})),
        long_polls(
            r.AddGauge("airlock_inbox_waiting", "Sandbox inbox long-polls currently waiting.")),
        streams(r.AddGauge("airlock_event_streams", "Open operator event streams.")) {}
  metrics::Family<metrics::Counter>& sessions_created;
  metrics::Family<metrics::Counter>& sessions_ended;
  metrics::Family<metrics::Counter>& sandbox_errors;
  metrics::Family<metrics::Counter>& events;
  metrics::Family<metrics::Counter>& auth_failures;
  metrics::Family<metrics::Counter>& sandbox_restarts;
  metrics::Family<metrics::Counter>& reconcile_passes;
  metrics::Family<metrics::Gauge>& long_polls;
  metrics::Family<metrics::Gauge>& streams;
};

// Marks a session as being looked after (its sandbox inspected or replaced) for as long as it
// lives, so that the reconciler, a follow-up message and a resume do not do it twice at once.
// io thread only; a coroutine frame holds it across its co_awaits.
class BusyMark {
 public:
  BusyMark(std::set<std::string>& busy, std::string id)
      : busy_(busy), id_(std::move(id)), held_(busy_.insert(id_).second) {}
  ~BusyMark() {
    if (held_) busy_.erase(id_);
  }
  BusyMark(const BusyMark&) = delete;
  BusyMark& operator=(const BusyMark&) = delete;
  bool held() const { return held_; }

 private:
  std::set<std::string>& busy_;
  std::string id_;
  bool held_;
};

// The control plane of one process: the operator and sandbox listeners, the session logic,
// the reconciler. It keeps no state of its own that is not also in the store, so a restart
// loses nothing and re-attaches to the sandboxes that are still running.
//
// Threading: everything runs on `io` (a single thread); store and backend calls are handed
// to a worker pool so that the loop never blocks.
class ControlPlane : private SessionLifecycle {
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
  std::string ControlSocketDir(const std::string& session_id) const;

 private:
  struct SessionCtx;  // a session loaded and authorised for a sandbox route

  void RegisterOperatorRoutes();
  void RegisterSandboxRoutes();
  Status EnsureOperatorKeys();

  // Auth. The gates run on a request's headers, before its body is read: they refuse a
  // request without valid credentials, size its body limit and charge it to its session.
  awaitable<Admission> AdmitOperator(Request& req);
  awaitable<Admission> AdmitSandbox(Request& req);
  Result<void> CheckOperator(const Request& req) const;
  bool KnownOperatorKey(std::string_view token) const;
  // Whether this replica runs the session's sandbox: only that one acts on it (inspects,
  // restarts, suspends, destroys). A session of no node (made before replicas had names)
  // belongs to whoever serves it.
  bool Owns(const store::Session& s) const override {
    return s.node.empty() || s.node == config_.node;
  }
  // A change another replica committed (Store::WatchChanges), on the io thread.
  void OnStoreChange(const store::Change& c);
  awaitable<void> DestroyIfEndedHere(std::string id);
  Status EnsureOperatorKey(const store::OperatorKey& wanted);
  awaitable<void> RefreshOperatorKeys();
  awaitable<Result<store::Session>> AuthenticateSandbox(const Request& req);
  // The id of the session a sandbox request's token belongs to, for what needs no more of the
  // session: from tokens_ when it knows the token, else as AuthenticateSandbox. The same
  // refusals either way.
  struct SandboxIdentity {
    std::string session_id;
    std::string token_hash;  // of the token the request presented
  };
  awaitable<Result<SandboxIdentity>> IdentifySandbox(const Request& req);
  // IdentifySandbox's answer when the token cache has one (no store read, no coroutine frame);
  // nullopt when the store must be asked.
  std::optional<Result<SandboxIdentity>> IdentifyCached(const Request& req);
  // The SHA-256 (hex) of `token`, the request's bearer token, computed once per request.
  static const std::string& TokenHash(const Request& req, std::string_view token);
  // What a request says besides its token (the socket it came through, a SESSION_ID header),
  // held against the token's session `id`.
  Result<void> CheckSandboxClaims(const Request& req, const std::string& id);

  // Operator handlers.
  awaitable<Response> CreateSession(Request& req);
  awaitable<Response> ListSessions(Request& req);
  awaitable<Response> GetSession(Request& req);
  awaitable<Response> PostMessage(Request& req);
  awaitable<Response> GetMessages(Request& req);
  awaitable<Response> GetEvents(Request& req);
  awaitable<Response> Suspend(Request& req);
  awaitable<Response> Resume(Request& req);
  // running -> suspended or suspended -> running.
  awaitable<Result<store::Session>> SetSuspended(std::string id, bool suspend);
  awaitable<Response> DeleteSession(Request& req);
  awaitable<Response> GetLogs(Request& req);
  awaitable<void> FollowLogs(std::string id, ChunkSink& sink);

  // Sandbox handlers.
  awaitable<Response> Inbox(Request& req);
  awaitable<Response> SandboxEvent(Request& req);
  awaitable<Response> History(Request& req);
  awaitable<Response> Finish(Request& req);
  awaitable<Response> LlmChat(Request& req);
  awaitable<Response> PresignFile(Request& req);
  awaitable<Response> ListFiles(Request& req);
  awaitable<Response> DownloadFile(Request& req);
  awaitable<Response> GetUsage(Request& req);

  // Session transitions shared by routes and the reconciler.
  awaitable<Result<store::Session>> EndSession(const std::string& id, store::SessionState to,
                                               std::optional<std::string> result) override;
  void AfterSessionEnded(const store::Session& s);
  awaitable<void> DestroySandbox(sandbox::Backend* backend, std::string id,
                                 std::string handle) override;
  // Looks at the sandbox of a running session: one that is gone ends the session (its agent
  // exited on its own) or gets a fresh sandbox (it was killed or vanished).
  awaitable<void> CheckSandbox(store::Session s) override;
  std::optional<int64_t> IdleSince(const std::string& id) const override;
  awaitable<Result<bool>> SuspendIdle(const std::string& id) override;
  // The session's socket, which its sandbox reaches the control plane through.
  Status OpenChannel(const std::string& id) override;
  void CloseChannel(const std::string& id) override;
  // A fresh sandbox with a new token for a live session whose sandbox is gone; the new agent
  // reloads the conversation from /sandbox/v1/history. After sandbox.max_restarts the
  // session fails instead. The caller holds the session's mark in sandbox_busy_.
  awaitable<void> RestartSandbox(store::Session s, std::string why) override;
  sandbox::SandboxSpec SpecFor(const store::Session& s, const Secret& token) const;
  // Listens on the session's socket and asks the backend for its sandbox; the handle.
  awaitable<Result<std::string>> StartSandbox(sandbox::Backend* backend,
                                              const sandbox::SandboxSpec& spec);
  awaitable<void> DrainAndStop();

  std::string SandboxUrl() const;

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
  std::unique_ptr<IdentityService> identity_;
  std::vector<std::string> operator_key_hashes_;
  // Which session each recently seen sandbox token belongs to (io thread only).
  TokenCache tokens_;
  // The events sandboxes post, committed in groups.
  EventAppender sandbox_events_;
  // metrics_->events{source="sandbox"}, looked up at the first event rather than at each.
  metrics::Counter* sandbox_events_total_ = nullptr;
  // When the key hashes were last read from the store (io thread only).
  std::chrono::steady_clock::time_point operator_keys_read_at_{};
  static constexpr std::chrono::seconds kOperatorKeyRefresh{1};
  asio::ip::tcp::endpoint operator_endpoint_;
  asio::ip::tcp::endpoint sandbox_endpoint_;
  // What each sandbox's init reported when its agent exited ("agent.exited"): the exit
  // code the reconciler puts in the session's result. Touched on the io thread only; a
  // restart forgets it (the result then says less, nothing else changes).
  std::map<std::string, Json> agent_exits_;
  // Fresh sandboxes started per session by this process (a restart of the control plane
  // starts the count again), and the sessions whose sandbox is being inspected, replaced or
  // suspended for idleness right now (see BusyMark). io thread only.
  std::map<std::string, int64_t> restarts_;
  std::set<std::string> sandbox_busy_;
  // Idleness, for suspending idle sessions: since when each session's agent has only waited
  // on its inbox (any other sandbox request, or messages taken, clears it), and how many of
  // its inbox long-polls are parked right now. io thread only.
  std::map<std::string, int64_t> idle_since_;
  std::map<std::string, int> parked_polls_;
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
  std::unique_ptr<Reconciler> reconciler_;
};

// `airlock serve`: builds the control plane from `config`, runs it until SIGTERM/SIGINT and
// drains. Returns the process exit code.
int RunServer(Config config);

}  // namespace airlock::controlplane
