#include "controlplane/session_service.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "common/blocking.h"
#include "common/crypto.h"
#include "common/log.h"
#include "controlplane/pools.h"
#include "controlplane/sandbox_spec.h"
#include "controlplane/validation.h"

namespace airlock::controlplane {

namespace fs = std::filesystem;
using store::SessionState;

namespace {

// A live session's end: from any live state to `to`, its token revoked in the same commit.
store::StateChange EndingChange(SessionState to, std::optional<std::string> result) {
  return store::StateChange{
      {SessionState::kStarting, SessionState::kRunning, SessionState::kSuspended},
      to,
      std::move(result),
      /*revoke_token=*/true,
      std::nullopt,
      {}};
}

// The "result" of a session whose sandbox ended without calling finish.
std::string SandboxExitReason(const sandbox::SandboxStatus& st) {
  if (st.state == sandbox::SandboxState::kMissing) return "the sandbox disappeared";
  if (st.oom_killed) return "the sandbox was killed: out of memory";
  if (st.signal) return fmt::format("the agent was killed by signal {}", *st.signal);
  if (!st.exit_code) return "the sandbox exited without finishing";
  return fmt::format("the agent exited with code {} without finishing", *st.exit_code);
}

}  // namespace

std::string SessionService::ControlSocketDir(const std::string& session_id) const {
  return d_.config.home + "/run/" + session_id;
}

// ---------------------------------------------------------------- operations

awaitable<Result<store::Session>> SessionService::Create(CreateSessionRequest req) {
  store::Session s;
  s.image = std::move(req.image);
  s.model = std::move(req.model);
  s.backend = std::move(req.backend);
  s.models = std::move(req.models);
  s.command = std::move(req.command);
  s.limits = std::move(req.limits);
  s.metadata = std::move(req.metadata);
  s.env = std::move(req.env);
  s.egress = std::move(req.egress);
  sandbox::Backend* backend = d_.backends.Find(s.backend);
  if (!backend) {
    if (auto why = d_.backends.UnavailableReason(s.backend)) {
      co_return Errorf(ErrorCode::kUnavailable, "backend \"{}\" is not available: {}", s.backend,
                       *why);
    }
    std::string names;
    for (const auto& n : d_.backends.Names()) {
      auto* b = d_.backends.Find(n);
      if (b->capabilities().isolated || d_.config.allow_unisolated_backends)
        names += (names.empty() ? "" : ", ") + n;
    }
    co_return Errorf(ErrorCode::kInvalidArgument, "backend \"{}\" is not available; available: {}",
                     s.backend, names.empty() ? "none" : names);
  }
  if (!backend->capabilities().isolated && !d_.config.allow_unisolated_backends) {
    co_return Errorf(ErrorCode::kPermissionDenied,
                     "backend \"{}\" does not isolate sandboxes; enable it with "
                     "sandbox.allow_unisolated_backends",
                     s.backend);
  }

  // A sandbox that takes its identity over its channel is made without a token; it gets one
  // when it asks (IdentityService), and the session is starting until then. A warm pool's
  // sandbox has been asking since it started: the session is created running, with that
  // sandbox and a token, in one transaction, and the sandbox's init gets the token as soon as
  // the session exists (TakeWaitingSandbox), with nothing more to write on the way.
  const bool in_spec =
      backend->capabilities().identity == sandbox::Capabilities::IdentityDelivery::kInSpec;
  auto claimed = !in_spec && d_.pools ? d_.pools->Claim(s.image, s.backend, s.command, s.limits)
                                      : std::nullopt;
  Secret token = in_spec || claimed ? NewToken(kSessionTokenPrefix) : Secret();
  s.id = NewId("ses_");
  s.state = claimed ? SessionState::kRunning : SessionState::kStarting;
  s.token_hash = token.empty() ? "" : Sha256Hex(token.Reveal());
  if (claimed) s.sandbox_handle = claimed->handle;
  s.node = d_.config.node;  // this replica runs the sandbox
  s.created_at = s.updated_at = d_.clock.NowMillis();
  Json task_message = {{"role", "user"}, {"content", std::move(req.task)}};
  const uint64_t token_epoch = d_.tokens.epoch();  // before the write: see TokenCache::Insert
  auto created = co_await RunBlocking(
      d_.pool, [this, &s, &task_message] { return d_.store.CreateSession(s, task_message); });
  if (!created) {
    if (claimed) co_await d_.pools->Discard(*claimed);
    co_return std::unexpected(created.error());
  }
  // The agent of a pool's sandbox starts at once: its first request finds its token known.
  if (claimed) d_.tokens.Insert(token_epoch, s.token_hash, s.id, TokenCache::Clock::now());
  d_.metrics.sessions_created.With({s.backend}).Inc();
  // The files go in before the sandbox starts: airlock-init copies them into the working
  // directory before it starts the agent.
  for (const auto& [name, bytes] : req.files) {
    auto put = co_await RunBlocking(d_.pool, [this, &s, &name, &bytes]() -> Status {
      if (!d_.put_file) return MakeError(ErrorCode::kUnimplemented, "no file store");
      return d_.put_file(s.id, name, bytes);
    });
    if (!put) {
      if (claimed) co_await d_.pools->Discard(*claimed);
      co_await EndSession(s.id, SessionState::kFailed, "storing its files: " + put.error().message);
      Error e = put.error();
      e.message = "storing the session's files: " + e.message;
      co_return std::unexpected(std::move(e));
    }
  }

  Result<std::string> handle = MakeError(ErrorCode::kInternal, "no sandbox");
  if (claimed) {
    ClaimedIdentity identity{s, std::move(token), std::nullopt, {}};
    if (req.files.empty()) identity.files = Json::array();
    handle = co_await TakeWaitingSandbox(*claimed, std::move(identity));
    if (!handle) co_await d_.pools->Discard(*claimed);
  } else {
    handle = co_await StartSandbox(backend, SpecFor(s, token));
  }
  if (!handle) {
    d_.metrics.sandbox_errors.With({s.backend, "create"}).Inc();
    log::Warn("sandbox create failed",
              {{"session", s.id}, {"backend", s.backend}, {"error", handle.error().message}});
    co_await EndSession(s.id, SessionState::kFailed,
                        "sandbox failed to start: " + handle.error().message);
    Error e = handle.error();
    e.message = "sandbox failed to start: " + e.message;
    co_return std::unexpected(std::move(e));
  }
  // Record the sandbox first: the session may end while it starts (the agent can finish
  // within milliseconds, or an operator deletes it), and whoever ends it must find it. A
  // pool's sandbox is in the session's row already.
  if (!claimed) {
    (void)co_await RunBlocking(
        d_.pool, [this, &id = s.id, &h = *handle] { return d_.store.SetSandboxHandle(id, h); });
  }
  store::StateChange change{
      {SessionState::kStarting}, SessionState::kRunning, std::nullopt, false, *handle};
  auto running = co_await RunBlocking(d_.pool, [this, &id = s.id, &change, in_spec] {
    return in_spec ? d_.store.ChangeState(id, change) : d_.store.GetSession(id);
  });
  // The create answers now: files may come from the operator from here on.
  if (claimed) d_.pools->Answered(s.id);
  if (!running || store::IsTerminal(running->state)) {
    // Ended meanwhile: report what is stored, and make sure its sandbox goes (ending may
    // have run before the handle was recorded; destroying twice is harmless).
    auto now =
        co_await RunBlocking(d_.pool, [this, &id = s.id] { return d_.store.GetSession(id); });
    if (now && store::IsTerminal(now->state)) co_await DestroySandbox(backend, s.id, *handle);
    co_return now;
  }
  d_.events.Notify(s.id);
  log::Info("session created", {{"session", s.id}, {"backend", s.backend}, {"image", s.image}});
  co_return running;
}

awaitable<Result<int64_t>> SessionService::PostMessage(std::string id, std::string content) {
  Json msg = {{"role", "user"}, {"content", std::move(content)}};
  int64_t msg_id = 0;
  auto s = co_await RunBlocking(d_.pool, [this, &id, &msg, &msg_id]() -> Result<store::Session> {
    AIRLOCK_ASSIGN_OR_RETURN(msg_id, d_.store.AddUserMessage(id, msg));
    AIRLOCK_TRY(d_.store.AppendEvent(id, "session.message", {{"message_id", msg_id}}));
    return d_.store.GetSession(id);
  });
  if (!s) co_return std::unexpected(s.error());
  d_.inbox.Notify(id);
  d_.events.Notify(id);
  // A follow-up wakes a suspended sandbox, and one that is gone is replaced (the reconciler
  // would notice within a second; the user who just wrote should not wait for it).
  if (s->state == SessionState::kRunning) asio::co_spawn(d_.io, CheckSandbox(*s), asio::detached);
  if (s->state == SessionState::kSuspended) {
    if (auto resumed = co_await SetSuspended(id, store::SuspendTier::kActive); !resumed) {
      log::Warn("resume on message failed", {{"session", id}, {"error", resumed.error().message}});
    }
  }
  co_return msg_id;
}

// The backend acts first, so the stored state never claims a sandbox is frozen or on disk
// when it is not; a sandbox let go at hibernation goes after the state says so, so that the
// reconciler, which looks only at running sessions, never takes it for a dead one.
awaitable<Result<store::Session>> SessionService::SetSuspended(std::string id,
                                                               store::SuspendTier tier) {
  using store::SuspendTier;
  const std::string op = tier == SuspendTier::kActive   ? "resume"
                         : tier == SuspendTier::kPaused ? "suspend"
                                                        : "hibernate";
  auto s = co_await RunBlocking(d_.pool, [this, &id] { return d_.store.GetSession(id); });
  if (!s) co_return s;
  // Which moves there are: running -> paused, running or paused -> hibernated, and back.
  const bool allowed = tier == SuspendTier::kActive ? s->state == SessionState::kSuspended
                                                    : s->state == SessionState::kRunning ||
                                                          (s->state == SessionState::kSuspended &&
                                                           s->tier == SuspendTier::kPaused &&
                                                           tier == SuspendTier::kHibernated);
  if (!allowed) {
    std::string now = s->state == SessionState::kSuspended && s->tier == SuspendTier::kHibernated
                          ? "hibernated"
                          : std::string(store::StateName(s->state));
    co_return Errorf(ErrorCode::kConflict, "cannot {} a session that is {}", op, now);
  }
  if (!Owns(*s)) {
    co_return Errorf(ErrorCode::kConflict,
                     "the session's sandbox runs on replica \"{}\"; send the {} there", s->node,
                     op);
  }
  auto* backend = d_.backends.Find(s->backend);
  if (!backend) co_return Errorf(ErrorCode::kUnavailable, "backend \"{}\" is gone", s->backend);
  co_return co_await MoveSandbox(backend, std::move(*s), tier);
}

awaitable<Result<store::Session>> SessionService::MoveSandbox(sandbox::Backend* backend,
                                                              store::Session s,
                                                              store::SuspendTier tier) {
  using store::SuspendTier;
  const std::string id = s.id;
  auto stored = [this, &id] {
    return RunBlocking(d_.pool, [this, &id] { return d_.store.GetSession(id); });
  };
  // A session whose sandbox was let go (hibernated on a backend that cannot keep one on
  // disk, or taken over from a replica that died) wakes in a fresh one.
  if (tier == SuspendTier::kActive && s.sandbox_handle.empty()) {
    BusyMark mark(sandbox_busy_, id);
    if (!mark.held()) co_return MakeError(ErrorCode::kConflict, "the session is being woken");
    co_await FreshSandbox(s, "woken from hibernation", /*counted=*/false);
    co_return co_await stored();
  }
  const bool let_go = tier == SuspendTier::kHibernated && !backend->capabilities().hibernate;
  store::StateChange change{{s.state}, SessionState::kSuspended};
  change.tier = tier;
  change.at = d_.clock.NowMillis();
  if (tier == SuspendTier::kActive) change.to = SessionState::kRunning;
  if (let_go) {
    // The sandbox goes with what its agent kept in memory; its token with it.
    change.revoke_token = true;
    change.sandbox_handle = "";
    d_.tokens.Forget(id);
    auto out = co_await RunBlocking(
        d_.pool, [this, &id, &change] { return d_.store.ChangeState(id, change); });
    d_.tokens.Forget(id);
    if (!out) co_return out;
    d_.llm.CancelSession(id);
    d_.inbox.Notify(id);  // its agent's long-poll ends now
    d_.events.Notify(id);
    co_await DestroySandbox(backend, id, s.sandbox_handle);
    idle_since_.erase(id);
    log::Info("hibernated a session: its sandbox is gone until a message wakes it",
              {{"session", id}, {"backend", s.backend}});
    co_return out;
  }
  std::optional<std::string> resumed_handle;
  auto st = co_await RunBlocking(
      d_.sandbox_pool, [&backend, &h = s.sandbox_handle, tier, &resumed_handle]() -> Status {
        if (tier == SuspendTier::kPaused) return backend->Suspend(h);
        if (tier == SuspendTier::kHibernated) return backend->Hibernate(h);
        AIRLOCK_ASSIGN_OR_RETURN(resumed_handle, backend->Resume(h));
        return Ok();
      });
  const std::string op = tier == SuspendTier::kActive ? "resume" : "suspend";
  if (!st) {
    d_.metrics.sandbox_errors.With({s.backend, op}).Inc();
    // A suspended sandbox that is gone (the host rebooted, someone removed it) is replaced
    // on resume: the session's conversation is in the store.
    auto gone = co_await RunBlocking(
        d_.sandbox_pool, [&backend, &h = s.sandbox_handle] { return backend->Inspect(h); });
    if (tier == SuspendTier::kActive && gone &&
        (gone->state == sandbox::SandboxState::kMissing ||
         gone->state == sandbox::SandboxState::kExited)) {
      BusyMark mark(sandbox_busy_, id);
      if (mark.held()) co_await RestartSandbox(s, "the suspended sandbox was gone at resume");
      co_return co_await stored();
    }
    co_return std::unexpected(st.error());
  }
  // A backend that resumed from a snapshot may have made a new sandbox handle.
  change.sandbox_handle = resumed_handle;
  auto out = co_await RunBlocking(
      d_.pool, [this, &id, &change] { return d_.store.ChangeState(id, change); });
  if (out) {
    if (tier != SuspendTier::kActive) idle_since_.erase(id);
    d_.events.Notify(id);
    log::Info("session changed tier",
              {{"session", id}, {"tier", store::TierName(tier)}, {"backend", s.backend}});
  }
  co_return out;
}

awaitable<Result<store::Session>> SessionService::Cancel(std::string id) {
  auto ended = co_await EndSession(id, SessionState::kKilled, "killed by the operator");
  if (!ended && ended.error().code == ErrorCode::kConflict) {
    // Already over: deleting is idempotent.
    co_return co_await RunBlocking(d_.pool, [this, &id] { return d_.store.GetSession(id); });
  }
  co_return ended;
}

awaitable<Result<store::Session>> SessionService::Finish(const std::string& id,
                                                         const std::string& token_hash,
                                                         FinishRequest req) {
  store::StateChange change = EndingChange(req.state, std::move(req.result));
  change.token_hash = token_hash;
  co_return co_await End(id, std::move(change));
}

awaitable<Result<std::vector<store::Message>>> SessionService::WaitForInbox(store::Session s,
                                                                            int64_t wait_s) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(wait_s);
  auto& gauge = d_.metrics.long_polls.With({});
  for (;;) {
    uint64_t version = d_.inbox.Version(s.id);
    // Taking the inbox appends to the conversation: not while an LLM call builds on it.
    if (co_await d_.conversations.Acquire(s.id, ConversationLocks::Holder::kInbox, deadline) !=
        ConversationLocks::Holder::kNone) {
      break;
    }
    auto taken = co_await RunBlocking(
        d_.pool, [this, &s] { return d_.store.TakeInbox(s.id, s.token_hash); });
    d_.conversations.Release(s.id);
    if (!taken) co_return std::unexpected(taken.error());
    if (!taken->empty()) {
      idle_since_.erase(s.id);  // there is work again
      co_return std::move(*taken);
    }
    if (std::chrono::steady_clock::now() >= deadline || d_.channels.draining()) break;
    gauge.Add(1);
    idle_since_.emplace(s.id, d_.clock.NowMillis());  // kept if it was already waiting
    ++parked_polls_[s.id];
    bool woke = co_await d_.inbox.Wait(s.id, version, deadline);
    if (--parked_polls_[s.id] <= 0) parked_polls_.erase(s.id);
    gauge.Add(-1);
    if (!woke) break;
    // Woken: a message, the session's end, or a drain. Find out which.
    auto now =
        co_await RunBlocking(d_.pool, [this, &id = s.id] { return d_.store.GetSession(id); });
    if (!now) co_return std::unexpected(now.error());
    if (store::IsTerminal(now->state)) {
      co_return Errorf(ErrorCode::kGone, "the session has ended ({})",
                       store::StateName(now->state));
    }
    if (now->token_hash != s.token_hash) {
      // A fresh sandbox took over while this one waited (it died; this is its dangling poll).
      co_return MakeError(ErrorCode::kUnauthenticated, "invalid, expired or revoked session token");
    }
  }
  co_return std::vector<store::Message>{};
}

// ---------------------------------------------------------------- sandboxes and endings

awaitable<void> SessionService::DestroySandbox(sandbox::Backend* backend, std::string id,
                                               std::string handle) {
  auto st = co_await RunBlocking(d_.sandbox_pool, [&] { return backend->Destroy(handle); });
  if (!st) {
    d_.metrics.sandbox_errors.With({std::string(backend->name()), "destroy"}).Inc();
    log::Error("destroying sandbox failed", {{"session", id}, {"error", st.error().message}});
  }
}

void SessionService::AfterSessionEnded(const store::Session& s) {
  d_.metrics.sessions_ended.With({std::string(store::StateName(s.state))}).Inc();
  CloseChannel(s.id);
  d_.inbox.Forget(s.id);
  agent_exits_.erase(s.id);
  restarts_.erase(s.id);
  idle_since_.erase(s.id);
  d_.llm.CancelSession(s.id);
  d_.events.Notify(s.id);
  d_.events.Forget(s.id);
  if (d_.pools) d_.pools->Forget(s.id);
  // The replica that runs the sandbox destroys it (its next sweep, SweepOrphans).
  if (s.sandbox_handle.empty() || !Owns(s)) return;
  auto* backend = d_.backends.Find(s.backend);
  if (!backend) return;
  // Destroying may take a while (a VM, a container runtime): the caller has its answer
  // already, and the reconciler retries if this fails.
  asio::co_spawn(d_.io, DestroySandbox(backend, s.id, s.sandbox_handle), asio::detached);
}

awaitable<void> SessionService::DestroyIfEndedHere(std::string id) {
  auto s = co_await RunBlocking(d_.pool, [this, &id] { return d_.store.GetSession(id); });
  if (!s || !store::IsTerminal(s->state) || !Owns(*s) || s->sandbox_handle.empty()) co_return;
  auto* backend = d_.backends.Find(s->backend);
  if (!backend) co_return;
  CloseChannel(id);
  co_await DestroySandbox(backend, id, s->sandbox_handle);
}

awaitable<Result<store::Session>> SessionService::EndSession(const std::string& id, SessionState to,
                                                             std::optional<std::string> result) {
  co_return co_await End(id, EndingChange(to, std::move(result)));
}

awaitable<Result<store::Session>> SessionService::End(const std::string& id,
                                                      store::StateChange change) {
  // The token is revoked below: from now on every request with it asks the store, and what a
  // read before the commit learned is forgotten once it is in.
  d_.tokens.Forget(id);
  auto s = co_await RunBlocking(d_.pool,
                                [this, &id, &change] { return d_.store.ChangeState(id, change); });
  d_.tokens.Forget(id);
  if (s) {
    log::Info("session ended", {{"session", id}, {"state", store::StateName(s->state)}});
    AfterSessionEnded(*s);
  }
  co_return s;
}

std::optional<int64_t> SessionService::IdleSince(const std::string& id) const {
  auto since = idle_since_.find(id);
  auto parked = parked_polls_.find(id);
  if (since == idle_since_.end() || parked == parked_polls_.end() || parked->second <= 0)
    return std::nullopt;
  return since->second;
}

awaitable<Result<bool>> SessionService::SuspendIdle(const std::string& id,
                                                    store::SuspendTier tier) {
  BusyMark mark(sandbox_busy_, id);
  if (!mark.held()) co_return false;
  auto suspended = co_await SetSuspended(id, tier);
  if (!suspended) co_return std::unexpected(suspended.error());
  idle_since_.erase(id);
  co_return true;
}

Status SessionService::OpenChannel(const std::string& id) {
  return d_.channels.ListenUnix(ControlSocketDir(id) + "/control.sock", id);
}

void SessionService::CloseChannel(const std::string& id) {
  d_.channels.CloseUnix(ControlSocketDir(id) + "/control.sock");
  d_.channels.CutSession(id);
}

awaitable<void> SessionService::CheckSandbox(store::Session s) {
  auto* backend = d_.backends.Find(s.backend);
  // A starting session's sandbox waits for its identity (or is being made: no handle yet).
  if ((s.state != SessionState::kRunning && s.state != SessionState::kStarting) || !backend ||
      s.sandbox_handle.empty() || !Owns(s))
    co_return;
  BusyMark mark(sandbox_busy_, s.id);
  if (!mark.held()) co_return;
  auto status = co_await RunBlocking(
      d_.sandbox_pool, [&backend, &h = s.sandbox_handle] { return backend->Inspect(h); });
  if (!status) co_return;
  if (status->state != sandbox::SandboxState::kExited &&
      status->state != sandbox::SandboxState::kMissing)
    co_return;
  co_await RunBlocking(d_.pool, [this, &id = s.id, &st = *status] {
    Json data = {{"state", sandbox::SandboxStateName(st.state)}, {"oom_killed", st.oom_killed}};
    if (st.exit_code) data["exit_code"] = *st.exit_code;
    if (st.signal) data["signal"] = *st.signal;
    return d_.store.AppendEvent(id, "session.sandbox_exit", data);
  });
  // The runtime does not keep the exit status (init is PID 1 of the sandbox and has no
  // waiting parent); init reported it just before it exited.
  sandbox::SandboxStatus st = *status;
  if (auto it = agent_exits_.find(s.id); it != agent_exits_.end() && !st.exit_code && !st.signal) {
    const Json& d = it->second;
    if (auto c = d.find("exit_code"); c != d.end() && c->is_number_integer())
      st.exit_code = c->get<int>();
    if (auto g = d.find("signal"); g != d.end() && g->is_number_integer())
      st.signal = g->get<int>();
  }
  agent_exits_.erase(s.id);
  std::string why = SandboxExitReason(st);
  if (s.state == SessionState::kStarting) {
    // Gone before it took its identity: no agent ever ran, so a fresh sandbox would most
    // likely fail the same way (an image without a shell, a broken airlock-init).
    co_await EndSession(s.id, SessionState::kFailed, why + " before its agent started");
    co_return;
  }
  // An agent that exited on its own, without finishing, gave up, and one that ran out of
  // memory hit the session's own limit (it would again): the session fails. A sandbox that
  // was killed or vanished took the agent with it mid-work: the conversation is in the
  // store, so a fresh sandbox carries on.
  if ((st.exit_code && !st.signal) || st.oom_killed) {
    co_await EndSession(s.id, SessionState::kFailed, why);
    co_return;
  }
  co_await RestartSandbox(std::move(s), why);
}

sandbox::SandboxSpec SessionService::SpecFor(const store::Session& s, const Secret& token) const {
  auto* backend = d_.backends.Find(s.backend);
  return MakeSandboxSpec(
      s, backend ? backend->capabilities() : sandbox::Capabilities{}, token,
      {ControlSocketDir(s.id), d_.config.home + "/sessions/" + s.id, d_.channels.SandboxUrl()});
}

// A sandbox of a warm pool becomes session `identity.session`'s: its socket serves the
// session from now on (the same socket, moved, so it is never missing), and its init, which
// has been asking for its identity, gets it (IdentityService). Then the session's socket
// directory becomes a link to the sandbox's, so that everything that finds a session's socket
// by its id (a restart, the reconciler) finds this one. The link is made on the worker pool
// after the identity has gone out: a new directory entry took 0.6 ms on this project's virtual
// disk (so did binding a new socket, which the move saves), and init waited for both.
awaitable<Result<std::string>> SessionService::TakeWaitingSandbox(const WaitingSandbox& w,
                                                                  ClaimedIdentity identity) {
  const std::string id = identity.session.id;
  const std::string dir = ControlSocketDir(id);
  if (auto moved = d_.channels.MoveUnix(w.dir + "/control.sock", dir + "/control.sock", id);
      !moved) {
    co_return std::unexpected(moved.error());
  }
  d_.pools->Resolve(w, std::move(identity));
  log::Info("session took a sandbox from a warm pool",
            {{"session", id}, {"pool", w.pool}, {"sandbox", w.id}});
  auto linked = co_await RunBlocking(d_.pool, [&dir, &w]() -> Status {
    std::error_code ec;
    fs::remove(dir, ec);
    fs::create_symlink(w.dir.substr(w.dir.rfind('/') + 1), dir, ec);
    if (ec) return Errorf(ErrorCode::kInternal, "link {} to {}: {}", dir, w.dir, ec.message());
    return Ok();
  });
  if (!linked) {
    // The listener is filed under the session's path now; its file is the sandbox's.
    d_.channels.CloseUnix(dir + "/control.sock");
    ::unlink((w.dir + "/control.sock").c_str());
    co_return std::unexpected(linked.error());
  }
  co_return w.handle;
}

awaitable<Result<std::string>> SessionService::StartSandbox(sandbox::Backend* backend,
                                                            const sandbox::SandboxSpec& spec) {
  // The per-session socket lives in its own directory: the backend bind-mounts the
  // directory, so the socket can be re-created after a restart without re-mounting. Made
  // here, not when the session is created: a session taken over from another replica gets
  // its first sandbox on this one in a restart.
  std::error_code ec;
  fs::create_directories(spec.work_dir, ec);
  ::chmod(spec.work_dir.c_str(), 0700);
  fs::create_directories(spec.channel.host_dir, ec);
  ::chmod(spec.channel.host_dir.c_str(), 0755);
  // The sandbox's id is its session's: the socket serves that session only.
  Status listen = d_.channels.ListenUnix(spec.channel.host_dir + "/control.sock", spec.sandbox_id);
  if (!listen) co_return std::unexpected(listen.error());
  auto started =
      co_await RunBlocking(d_.sandbox_pool, [&backend, &spec] { return backend->Create(spec); });
  if (!started) co_return std::unexpected(started.error());
  co_return std::move(started->handle);
}

awaitable<void> SessionService::FreshSandbox(store::Session s, std::string why, bool counted) {
  auto* backend = d_.backends.Find(s.backend);
  if (!backend) co_return;
  int64_t n = counted ? ++restarts_[s.id] : restarts_[s.id];
  if (n > d_.config.max_restarts) {
    co_await EndSession(s.id, SessionState::kFailed,
                        fmt::format("{} (no fresh sandbox: sandbox.max_restarts = {} reached)", why,
                                    d_.config.max_restarts));
    co_return;
  }
  // What is left of the old sandbox goes first; its token is replaced below.
  if (!s.sandbox_handle.empty()) co_await DestroySandbox(backend, s.id, s.sandbox_handle);
  d_.llm.CancelSession(s.id);
  // A sandbox that takes its identity over its channel starts without a token: it gets one
  // when it asks (IdentityService).
  const bool in_spec =
      backend->capabilities().identity == sandbox::Capabilities::IdentityDelivery::kInSpec;
  Secret token = in_spec ? NewToken(kSessionTokenPrefix) : Secret();
  std::string hash = in_spec ? Sha256Hex(token.Reveal()) : "";
  Json data = {{"reason", why}, {"restart", n}, {"max_restarts", d_.config.max_restarts}};
  if (!counted) data = {{"reason", why}};
  d_.tokens.Forget(s.id);  // the old token is replaced below (see EndSession)
  auto restarted = co_await RunBlocking(d_.pool, [this, &id = s.id, &node = s.node, &hash, &data] {
    return d_.store.RestartSandbox(id, node, hash, data);
  });
  d_.tokens.Forget(s.id);
  if (!restarted) {
    log::Info("no fresh sandbox: the session changed meanwhile",
              {{"session", s.id}, {"error", restarted.error().message}});
    co_return;
  }
  d_.events.Notify(s.id);
  d_.inbox.Notify(s.id);  // the dead sandbox's long-poll, if it is still parked, ends now
  if (counted) {
    log::Warn("sandbox gone: starting a fresh one",
              {{"session", s.id}, {"reason", why}, {"restart", n}});
  } else {
    log::Info("starting a fresh sandbox", {{"session", s.id}, {"reason", why}});
  }
  sandbox::SandboxSpec spec = SpecFor(*restarted, token);
  Result<std::string> handle = co_await StartSandbox(backend, spec);
  if (!handle) {
    d_.metrics.sandbox_errors.With({s.backend, "create"}).Inc();
    co_await EndSession(s.id, SessionState::kFailed,
                        "sandbox failed to restart: " + handle.error().message);
    co_return;
  }
  if (counted) d_.metrics.sandbox_restarts.With({s.backend}).Inc();
  (void)co_await RunBlocking(
      d_.pool, [this, &id = s.id, &h = *handle] { return d_.store.SetSandboxHandle(id, h); });
  // Ended while the sandbox started (an operator's DELETE): whoever ended it saw no handle.
  auto now = co_await RunBlocking(d_.pool, [this, &id = s.id] { return d_.store.GetSession(id); });
  if (now && store::IsTerminal(now->state)) co_await DestroySandbox(backend, s.id, *handle);
}

}  // namespace airlock::controlplane
