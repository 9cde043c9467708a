#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
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
#include "controlplane/llm_proxy.h"
#include "controlplane/notifier.h"
#include "controlplane/reconciler.h"
#include "controlplane/requests.h"
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
// io thread only; a coroutine frame holds it across its co_awaits. It shares the set rather
// than referring to it: a frame still suspended when the control plane stops is destroyed with
// the io_context, after the service that spawned it (so a check in flight at shutdown is no
// use after free).
class BusyMark {
 public:
  using Set = std::shared_ptr<std::set<std::string>>;
  BusyMark(Set busy, std::string id)
      : busy_(std::move(busy)), id_(std::move(id)), held_(busy_->insert(id_).second) {}
  ~BusyMark() {
    if (held_) busy_->erase(id_);
  }
  BusyMark(const BusyMark&) = delete;
  BusyMark& operator=(const BusyMark&) = delete;
  bool held() const { return held_; }

 private:
  Set busy_;
  std::string id_;
  bool held_;
};

// How sandboxes reach the control plane: the sandbox listener, which the owner of the
// listeners holds. The session logic opens and closes each session's socket through it.
class SandboxChannels {
 public:
  virtual ~SandboxChannels() = default;
  // Listens on the Unix socket at `path`, which serves session `session_id` only.
  virtual Status ListenUnix(const std::string& path, const std::string& session_id) = 0;
  virtual void CloseUnix(const std::string& path) = 0;
  // The socket at `from` goes on as the one at `to` (the same file, reached through a link),
  // serving `session_id` from now on (HttpServer::MoveUnix). By default: closed and listened
  // on again.
  virtual Status MoveUnix(const std::string& from, const std::string& to,
                          const std::string& session_id) {
    CloseUnix(from);
    return ListenUnix(to, session_id);
  }
  // The session's channel is closed for good here: what still flows through it (its egress
  // connections) is cut.
  virtual void CutSession(const std::string& /*session_id*/) {}
  // The URL a sandbox reaches the sandbox listener at over TCP.
  virtual std::string SandboxUrl() const = 0;
  // Whether the sandbox listener is shutting down: waits end at once.
  virtual bool draining() const = 0;
};

// The session state machine: creating a session and its sandbox, messages, suspend and
// resume, the end of a session (finished, cancelled, failed), the sandbox's inbox, and
// looking after sandboxes that died. It never sees a request, a response or a status code:
// each operation returns its result or a typed Error, which the handlers map to HTTP.
//
// Threading: io thread only; store and backend calls go to the worker pools.
class PoolManager;
// A sandbox of a warm pool, started before any session and waiting for one (pools.h).
struct WaitingSandbox {
  std::string pool;
  std::string id;      // "wrm_..."
  std::string handle;  // the backend's
  std::string dir;     // its socket's directory, run/<id>
};

// What the session that claimed a waiting sandbox hands that sandbox's init
// (PoolManager::Resolve, IdentityService): the session as created, its token, and its files
// (the list FileService::ListOf would answer) when the create knows them, which it does when
// it stored none: no operator can add one before the create has answered.
struct ClaimedIdentity {
  store::Session session;
  Secret token;
  std::optional<Json> files;
  std::chrono::steady_clock::time_point at;
};

class SessionService : public SessionLifecycle {
 public:
  struct Deps {
    const Config& config;
    asio::io_context& io;
    store::Store& store;
    sandbox::BackendRegistry& backends;
    asio::thread_pool& pool;
    // Backend operations take milliseconds to seconds: their own threads.
    asio::thread_pool& sandbox_pool;
    const Clock& clock;
    ControlPlaneMetrics& metrics;
    Notifier& inbox;
    Notifier& events;
    ConversationLocks& conversations;
    LlmProxy& llm;
    // Forgotten for a session whenever its token is revoked or replaced.
    TokenCache& tokens;
    SandboxChannels& channels;
    // Warm pools a create may take a sandbox from; none when null.
    PoolManager* pools = nullptr;
    // Stores a file of the session ("files" at create); blocking. None: "files" are refused.
    std::function<Status(const std::string& session, const std::string& name,
                         std::string_view bytes)>
        put_file;
  };
  explicit SessionService(Deps d) : d_(d) {}

  // A new session and its sandbox, running (or starting, for a backend whose sandbox takes
  // its identity later). A sandbox that fails to start fails the session, and the error says
  // why.
  awaitable<Result<store::Session>> Create(CreateSessionRequest req);
  // Queues a user message in the session's inbox; the message's id. A suspended session is
  // resumed and a running one's sandbox looked at, so the message finds an agent.
  awaitable<Result<int64_t>> PostMessage(std::string id, std::string content);
  // Moves a live session between the idle tiers (docs/api.md, "Idle tiers"): kPaused and
  // kHibernated suspend it (running -> paused, running or paused -> hibernated), kActive
  // resumes it. A backend that cannot hibernate (Capabilities::hibernate) loses its sandbox
  // at hibernation, and the session gets a fresh one at wake whose agent carries on from the
  // stored conversation.
  awaitable<Result<store::Session>> SetSuspended(std::string id, store::SuspendTier tier);
  // Kills a live session (its sandbox goes); a session already over is returned as it is.
  awaitable<Result<store::Session>> Cancel(std::string id);
  // The agent's own end of its session `id`, whose sandbox presented the token whose hash is
  // `token_hash`: refused (kUnauthenticated) if a fresh sandbox has replaced that token by the
  // time the end commits.
  awaitable<Result<store::Session>> Finish(const std::string& id, const std::string& token_hash,
                                           FinishRequest req);
  // The messages in the inbox of `s` (whose sandbox presented the token `s.token_hash`),
  // waiting up to `wait_s` seconds for one; empty when none came. Refused when the session
  // ended or a fresh sandbox took over meanwhile.
  awaitable<Result<std::vector<store::Message>>> WaitForInbox(store::Session s, int64_t wait_s);

  // What init reported when the agent of session `id` exited: the result of a session whose
  // sandbox then stops says how the agent ended.
  void NoteAgentExit(const std::string& id, Json data) { agent_exits_[id] = std::move(data); }
  // The session's sandbox did something other than wait on its inbox: it is not idle.
  void NoteWork(const std::string& id) { idle_since_.erase(id); }
  // Another replica ended session `id`: if this one runs its sandbox, the sandbox goes.
  awaitable<void> DestroyIfEndedHere(std::string id);
  // Where the per-session Unix socket of `session_id` lives on the host.
  std::string ControlSocketDir(const std::string& session_id) const;

  // SessionLifecycle, for the reconciler (and used here too).
  // A session of no node (made before replicas had names) belongs to whoever serves it.
  bool Owns(const store::Session& s) const override {
    return s.node.empty() || s.node == d_.config.node;
  }
  awaitable<Result<store::Session>> EndSession(const std::string& id, store::SessionState to,
                                               std::optional<std::string> result) override;
  awaitable<void> DestroySandbox(sandbox::Backend* backend, std::string id,
                                 std::string handle) override;
  // Looks at the sandbox of a running session: one that is gone ends the session (its agent
  // exited on its own) or gets a fresh sandbox (it was killed or vanished).
  awaitable<void> CheckSandbox(store::Session s) override;
  std::optional<int64_t> IdleSince(const std::string& id) const override;
  awaitable<Result<bool>> SuspendIdle(const std::string& id, store::SuspendTier tier) override;
  // The session's socket, which its sandbox reaches the control plane through.
  Status OpenChannel(const std::string& id) override;
  void CloseChannel(const std::string& id) override;
  // A fresh sandbox with a new token for a live session whose sandbox is gone; the new agent
  // reloads the conversation from /sandbox/v1/history. After sandbox.max_restarts the
  // session fails instead. The caller holds the session's mark in sandbox_busy_.
  awaitable<void> RestartSandbox(store::Session s, std::string why) override {
    co_await FreshSandbox(std::move(s), std::move(why), /*counted=*/true);
  }

 private:
  // RestartSandbox's work; `counted`: it counts towards sandbox.max_restarts (a sandbox that
  // died), or it does not (waking a session whose sandbox was let go at hibernation).
  awaitable<void> FreshSandbox(store::Session s, std::string why, bool counted);
  // The backend's part of SetSuspended: suspend, hibernate or resume the sandbox of `s`.
  awaitable<Result<store::Session>> MoveSandbox(sandbox::Backend* backend, store::Session s,
                                                store::SuspendTier tier);
  // EndSession's work for a change already made (Finish adds the token it was asked with).
  awaitable<Result<store::Session>> End(const std::string& id, store::StateChange change);
  void AfterSessionEnded(const store::Session& s);
  sandbox::SandboxSpec SpecFor(const store::Session& s, const Secret& token) const;
  // A warm pool's sandbox made session `id`'s; the handle.
  awaitable<Result<std::string>> TakeWaitingSandbox(const WaitingSandbox& w,
                                                    ClaimedIdentity identity);
  // Listens on the session's socket and asks the backend for its sandbox; the handle.
  awaitable<Result<std::string>> StartSandbox(sandbox::Backend* backend,
                                              const sandbox::SandboxSpec& spec);

  Deps d_;
  // What each sandbox's init reported when its agent exited ("agent.exited"): the exit
  // code the reconciler puts in the session's result. A restart forgets it (the result then
  // says less, nothing else changes).
  std::map<std::string, Json> agent_exits_;
  // Fresh sandboxes started per session by this process (a restart of the control plane
  // starts the count again), and the sessions whose sandbox is being inspected, replaced or
  // suspended for idleness right now (see BusyMark).
  std::map<std::string, int64_t> restarts_;
  BusyMark::Set sandbox_busy_ = std::make_shared<std::set<std::string>>();
  // Idleness, for suspending idle sessions: since when each session's agent has only waited
  // on its inbox (any other sandbox request, or messages taken, clears it), and how many of
  // its inbox long-polls are parked right now.
  std::map<std::string, int64_t> idle_since_;
  std::map<std::string, int> parked_polls_;
};

}  // namespace airlock::controlplane
