#include "controlplane/reconciler.h"

#include <set>

#include "common/blocking.h"
#include "common/log.h"

namespace airlock::controlplane {

using store::SessionState;

void Reconciler::Start() {
  asio::co_spawn(d_.io, ReattachAll(), asio::detached);
  asio::co_spawn(d_.io, Loop(), asio::detached);
}

void Reconciler::Stop() {
  stopping_ = true;
  timer_.cancel();
}

void Reconciler::Soon() { asio::co_spawn(d_.io, SoonAfterDelay(), asio::detached); }

awaitable<void> Reconciler::SoonAfterDelay() {
  asio::steady_timer t(d_.io);
  t.expires_after(std::chrono::milliseconds(100));
  boost::system::error_code ec;
  co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
  timer_.cancel();  // the loop runs a pass now
}

awaitable<void> Reconciler::Loop() {
  while (!stopping_) {
    timer_.expires_after(std::chrono::seconds(1));
    boost::system::error_code ec;
    co_await timer_.async_wait(asio::redirect_error(use_awaitable, ec));
    if (stopping_) break;
    co_await Once();
  }
}

Result<std::vector<store::Session>> Reconciler::ListLiveSessions() {
  std::vector<store::Session> out;
  for (auto state : {SessionState::kStarting, SessionState::kRunning, SessionState::kSuspended}) {
    store::ListSessionsQuery q;
    q.state = state;
    q.limit = 1000;
    for (;;) {
      AIRLOCK_ASSIGN_OR_RETURN(auto page, d_.store.ListSessions(q));
      if (page.empty()) break;
      q.before_id = page.back().id;
      bool last = page.size() < static_cast<size_t>(q.limit);
      out.insert(out.end(), std::make_move_iterator(page.begin()),
                 std::make_move_iterator(page.end()));
      if (last) break;
    }
  }
  return out;
}

awaitable<void> Reconciler::ReattachAll() {
  auto live = co_await RunBlocking(d_.pool, [this] { return ListLiveSessions(); });
  if (!live) {
    log::Error("reattach: cannot list sessions", {{"error", live.error().message}});
    co_return;
  }
  for (auto& s : *live) {
    if (!d_.sessions.Owns(s)) continue;  // another replica runs it
    if (s.node.empty()) {
      // From before replicas had names: the first replica to start after the upgrade runs
      // them, as the single server did.
      auto adopted = co_await RunBlocking(
          d_.pool, [this, &id = s.id] { return d_.store.AdoptSession(id, "", d_.config.node); });
      if (!adopted) continue;
      s.node = adopted->node;
    }
    auto* backend = d_.backends.Find(s.backend);
    if (auto st = d_.sessions.OpenChannel(s.id); !st) {
      log::Warn("reattach: cannot recreate the session socket",
                {{"session", s.id}, {"error", st.error().message}});
      // Its sandbox can never reach this replica (a warm pool's sandbox whose session's link
      // the last process died before making, say): a fresh one carries the session on.
      if (backend && !s.sandbox_handle.empty()) {
        co_await d_.sessions.RestartSandbox(
            s, "its socket could not be made again after a restart: " + st.error().message);
      }
      continue;
    }
    if (!backend || s.sandbox_handle.empty()) continue;
    auto status = co_await RunBlocking(
        d_.sandbox_pool, [&backend, &h = s.sandbox_handle] { return backend->Reattach(h); });
    log::Info("reattached",
              {{"session", s.id},
               {"sandbox", status ? std::string(sandbox::SandboxStateName(status->state))
                                  : status.error().message}});
  }
  co_await SweepOrphans(*live);
}

// Sandboxes no live session of this replica owns: their session ended while this process was
// down or just before it died, before the destroy that follows the end had run; or it ended
// through another replica; or another replica took it over while this one was away. Nothing
// else would ever remove them (the reconciler looks at live sessions only).
awaitable<void> Reconciler::SweepOrphans(const std::vector<store::Session>& live) {
  std::set<std::string> mine, handles;
  for (const auto& s : live) {
    if (!d_.sessions.Owns(s)) continue;
    mine.insert(s.id);
    // A sandbox a session took from a warm pool has the pool's id, not the session's.
    if (!s.sandbox_handle.empty()) handles.insert(s.sandbox_handle);
  }
  for (const auto& name : d_.backends.Names()) {
    auto* backend = d_.backends.Find(name);
    auto listed = co_await RunBlocking(d_.sandbox_pool, [&backend] { return backend->List(); });
    if (!listed) {
      log::Warn("cannot list the backend's sandboxes",
                {{"backend", name}, {"error", listed.error().message}});
      continue;
    }
    for (const auto& l : *listed) {
      if (mine.count(l.session_id) || handles.count(l.handle)) continue;
      if (d_.pooled && d_.pooled(l.session_id)) continue;
      // `live` may be older than the session: one created since has a sandbox and is not in
      // it. Ask the store again before destroying anything.
      auto now = co_await RunBlocking(
          d_.pool, [this, &id = l.session_id] { return d_.store.GetSession(id); });
      if (now && !store::IsTerminal(now->state) && d_.sessions.Owns(*now)) continue;
      if (!now && now.error().code != ErrorCode::kNotFound) continue;  // cannot tell: keep it
      log::Info("destroying a sandbox whose session has ended or moved",
                {{"session", l.session_id}, {"backend", name}});
      d_.sessions.CloseChannel(l.session_id);
      co_await d_.sessions.DestroySandbox(backend, l.session_id, l.handle);
    }
  }
}

awaitable<void> Reconciler::TakeOverDeadNodes(const std::vector<store::Session>& live,
                                              int64_t now) {
  const std::string& self = d_.config.node;
  if (auto hb = co_await RunBlocking(d_.pool,
                                     [this, &self, now] { return d_.store.Heartbeat(self, now); });
      !hb) {
    log::Warn("cannot record this replica's heartbeat", {{"error", hb.error().message}});
  }
  std::set<std::string> orphaned_nodes;
  for (const auto& s : live) {
    if (!d_.sessions.Owns(s)) orphaned_nodes.insert(s.node);
  }
  if (orphaned_nodes.empty()) co_return;
  auto nodes = co_await RunBlocking(d_.pool, [this] { return d_.store.ListNodes(); });
  if (!nodes) co_return;
  const int64_t ttl_ms = int64_t{d_.config.node_ttl_s} * 1000;
  for (const auto& n : *nodes) {
    if (now - n.heartbeat_at < ttl_ms) orphaned_nodes.erase(n.id);  // alive
  }
  for (const auto& s : live) {
    if (stopping_) co_return;
    if (d_.sessions.Owns(s) || !orphaned_nodes.count(s.node)) continue;
    auto adopted = co_await RunBlocking(d_.pool, [this, &id = s.id, &from = s.node, &self] {
      return d_.store.AdoptSession(id, from, self);
    });
    if (!adopted) continue;  // another replica took it, or it ended meanwhile
    log::Warn("took over a session of a replica that stopped answering",
              {{"session", s.id}, {"from", s.node}, {"ttl_s", d_.config.node_ttl_s}});
    store::Session here = *adopted;
    // The old sandbox is beyond reach (its handle means something only on its own node); its
    // token dies with the restart below, so it can no longer act if its node comes back.
    here.sandbox_handle.clear();
    if (here.state == SessionState::kSuspended) continue;  // resumed here when a message comes
    co_await d_.sessions.RestartSandbox(
        std::move(here), fmt::format("its replica \"{}\" stopped answering", s.node));
  }
}

awaitable<void> Reconciler::Once() {
  int64_t now = d_.clock.NowMillis();
  auto live = co_await RunBlocking(d_.pool, [this] { return ListLiveSessions(); });
  if (!live) co_return;
  co_await TakeOverDeadNodes(*live, now);
  // Sessions that ended through another replica leave their sandbox here: sweep now and then.
  if (++passes_ % kSweepEveryPasses == 0) co_await SweepOrphans(*live);
  for (const auto& s : *live) {
    if (stopping_) co_return;
    if (!d_.sessions.Owns(s)) continue;  // its own replica looks after it
    // Wall-clock budget of the session.
    if (auto t = s.limits.find("timeout_s");
        t != s.limits.end() && t->is_number() &&
        now - s.created_at > static_cast<int64_t>(t->get<double>() * 1000)) {
      co_await d_.sessions.EndSession(s.id, SessionState::kFailed,
                                      "timeout: the session exceeded limits.timeout_s");
      continue;
    }
    co_await d_.sessions.CheckSandbox(s);
    co_await SuspendIfIdle(s, now);
  }
  d_.passes.With({}).Inc();
}

namespace {

// A session's limit `key` in ms (limits.<key>, else the configured default in s).
int64_t LimitMillis(const store::Session& s, const char* key, int64_t default_s) {
  if (auto t = s.limits.find(key); t != s.limits.end() && t->is_number()) {
    return static_cast<int64_t>(t->get<double>() * 1000);
  }
  return default_s * 1000;
}

}  // namespace

awaitable<void> Reconciler::SuspendIfIdle(const store::Session& s, int64_t now) {
  using store::SuspendTier;
  const int64_t pause_ms = LimitMillis(s, "idle_timeout_s", d_.config.idle_timeout_s);
  const int64_t hibernate_ms = LimitMillis(s, "hibernate_after_s", d_.config.hibernate_after_s);
  SuspendTier tier = SuspendTier::kActive;
  int64_t idle_ms = 0;
  if (s.state == SessionState::kRunning) {
    std::optional<int64_t> since = d_.sessions.IdleSince(s.id);
    if (!since) co_return;
    idle_ms = now - *since;
    if (hibernate_ms > 0 && idle_ms >= hibernate_ms) {
      tier = SuspendTier::kHibernated;
    } else if (pause_ms > 0 && idle_ms >= pause_ms) {
      tier = SuspendTier::kPaused;
    }
  } else if (s.state == SessionState::kSuspended && s.tier == SuspendTier::kPaused &&
             hibernate_ms > 0) {
    // Its agent had been idle for the pause timeout when it was paused (or an operator paused
    // it): hibernate_after_s counts the whole idle time.
    idle_ms = now - s.state_since + std::max<int64_t>(pause_ms, 0);
    if (idle_ms >= hibernate_ms) tier = SuspendTier::kHibernated;
  }
  if (tier == SuspendTier::kActive) co_return;
  auto moved = co_await d_.sessions.SuspendIdle(s.id, tier);
  if (!moved) {
    log::Warn(
        "suspending an idle session failed",
        {{"session", s.id}, {"tier", store::TierName(tier)}, {"error", moved.error().message}});
    co_return;
  }
  if (!*moved) co_return;
  log::Info(tier == SuspendTier::kPaused ? "paused an idle session" : "hibernated an idle session",
            {{"session", s.id}, {"idle_s", idle_ms / 1000}});
}

}  // namespace airlock::controlplane
