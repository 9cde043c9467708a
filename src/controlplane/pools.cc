#include "controlplane/pools.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>

#include "common/blocking.h"
#include "common/crypto.h"
#include "common/log.h"
#include "controlplane/sandbox_spec.h"

namespace airlock::controlplane {

namespace fs = std::filesystem;

namespace {
// A pool whose backend fails to start a sandbox tries again after this long, not at once.
constexpr auto kRetryAfterFailure = std::chrono::seconds(5);
// How long a claim is remembered: longer than a reconciler's list of live sessions is old
// when it sweeps, and than init's held identity request.
constexpr auto kClaimMemory = std::chrono::seconds(60);
// How often the sandboxes waiting in a pool are inspected.
constexpr auto kCheckInterval = std::chrono::seconds(5);
// The longest a refill waits for the agent of the claimed sandbox to be heard from: an agent
// that starts with minutes of work before its first request must not leave the pool short.
constexpr auto kRefillDeferral = std::chrono::seconds(2);
// How long after the agent is first heard from the refill still waits.
constexpr auto kRefillSettle = std::chrono::milliseconds(100);
// The limits that shape a sandbox, as a session's "limits" names them.
constexpr const char* kResources[] = {"memory_mb", "cpus", "pids", "disk_mb"};

Json ResourceLimits(const PoolConfig& c) {
  Json out = Json::object();
  if (c.memory_mb) out["memory_mb"] = *c.memory_mb;
  if (c.cpus) out["cpus"] = *c.cpus;
  if (c.pids) out["pids"] = *c.pids;
  if (c.disk_mb) out["disk_mb"] = *c.disk_mb;
  return out;
}

}  // namespace

PoolManager::PoolManager(Deps d)
    : d_(d),
      claims_(d.io),
      heard_(d.io),
      watch_timer_(d.io),
      ready_(
          d.registry.AddGauge("airlock_pool_ready", "Sandboxes waiting in a warm pool.", {"pool"})),
      claims_total_(d.registry.AddCounter(
          "airlock_pool_claims_total", "Sessions that took a sandbox from a warm pool.", {"pool"})),
      errors_(d.registry.AddCounter("airlock_pool_errors_total",
                                    "Sandboxes a warm pool failed to start.", {"pool"})),
      lost_(d.registry.AddCounter(
          "airlock_pool_lost_total",
          "Sandboxes that died while they waited in a warm pool, found and replaced.", {"pool"})) {
  for (const auto& [name, config] : d_.config.pools) {
    pools_[name] = Pool{name, config, {}, 0};
    ready_.With({name}).Set(0);
  }
}

Status PoolManager::Check() const {
  for (const auto& [name, pool] : pools_) {
    const auto* backend = d_.backends.Find(pool.config.backend);
    if (!backend) {
      return Errorf(ErrorCode::kInvalidArgument, "pools.{}: backend \"{}\" is not available{}",
                    name, pool.config.backend,
                    d_.backends.UnavailableReason(pool.config.backend)
                        ? ": " + *d_.backends.UnavailableReason(pool.config.backend)
                        : std::string());
    }
    const auto caps = backend->capabilities();
    if (!caps.warm_pool || caps.identity != sandbox::Capabilities::IdentityDelivery::kOverChannel) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "pools.{}: backend \"{}\" cannot keep sandboxes waiting for a session", name,
                    pool.config.backend);
    }
  }
  return Ok();
}

void PoolManager::Start() {
  for (auto& [name, pool] : pools_) asio::co_spawn(d_.io, Refill(pool), asio::detached);
  if (!pools_.empty()) {
    watching_ = true;
    asio::co_spawn(d_.io, Watch(), asio::detached);
  }
}

awaitable<void> PoolManager::Watch() {
  while (!stopping_) {
    watch_timer_.expires_after(kCheckInterval);
    boost::system::error_code ec;
    co_await watch_timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    for (auto& [name, pool] : pools_) {
      if (stopping_) break;
      co_await CheckWaiting(pool);
    }
  }
  watching_ = false;
}

awaitable<void> PoolManager::CheckWaiting(Pool& pool) {
  auto* backend = d_.backends.Find(pool.config.backend);
  if (!backend) co_return;
  // A copy: a claim or Stop() may take sandboxes from the pool while one is inspected.
  const std::vector<Waiting> waiting(pool.waiting.begin(), pool.waiting.end());
  for (const Waiting& w : waiting) {
    auto st = co_await RunBlocking(d_.sandbox_pool,
                                   [&backend, &w] { return backend->Inspect(w.handle); });
    if (stopping_) co_return;
    // A sandbox that cannot be inspected now is kept: a claim finds out, as before.
    if (!st || st->state == sandbox::SandboxState::kRunning ||
        st->state == sandbox::SandboxState::kStarting) {
      continue;
    }
    auto it = std::find_if(pool.waiting.begin(), pool.waiting.end(),
                           [&w](const Waiting& x) { return x.id == w.id; });
    if (it == pool.waiting.end()) continue;  // claimed meanwhile
    pool.waiting.erase(it);
    made_.erase(w.id);
    ready_.With({pool.name}).Set(static_cast<double>(pool.waiting.size()));
    lost_.With({pool.name}).Inc();
    log::Warn("a sandbox waiting in a warm pool died; it is replaced",
              {{"pool", pool.name},
               {"sandbox", w.id},
               {"state", std::string(sandbox::SandboxStateName(st->state))},
               {"detail", st->detail}});
    d_.channels.CloseUnix(w.dir + "/control.sock");
    co_await RunBlocking(d_.sandbox_pool, [&backend, &w] { return backend->Destroy(w.handle); });
    asio::co_spawn(d_.io, Refill(pool), asio::detached);
  }
}

awaitable<void> PoolManager::Refill(Pool& pool) {
  while (!stopping_ &&
         static_cast<int64_t>(pool.waiting.size()) + pool.starting < pool.config.size) {
    ++pool.starting;
    auto made = co_await StartOne(pool);
    if (made && stopping_) {
      // Stop() waits for this: a sandbox started while the control plane stops would
      // otherwise outlive it.
      d_.channels.CloseUnix(made->dir + "/control.sock");
      auto* backend = d_.backends.Find(pool.config.backend);
      co_await RunBlocking(d_.sandbox_pool, [&] { return backend->Destroy(made->handle); });
    }
    --pool.starting;
    if (stopping_) co_return;
    if (!made) {
      errors_.With({pool.name}).Inc();
      log::Warn("a warm pool could not start a sandbox",
                {{"pool", pool.name}, {"error", made.error().message}});
      asio::steady_timer wait(d_.io, kRetryAfterFailure);
      co_await wait.async_wait(asio::use_awaitable);
      continue;
    }
    pool.waiting.push_back(std::move(*made));
    ready_.With({pool.name}).Set(static_cast<double>(pool.waiting.size()));
  }
}

awaitable<Result<PoolManager::Waiting>> PoolManager::StartOne(Pool& pool) {
  auto* backend = d_.backends.Find(pool.config.backend);
  if (!backend) co_return Errorf(ErrorCode::kUnavailable, "no backend {}", pool.config.backend);
  Waiting w;
  w.pool = pool.name;
  w.id = NewId("wrm_");
  w.dir = d_.config.home + "/run/" + w.id;
  const std::string work_dir = d_.config.home + "/sessions/" + w.id;
  // As a session's sandbox is made (SessionService::StartSandbox), for a session of this id.
  store::Session s;
  s.id = w.id;
  s.image = pool.config.image;
  s.backend = pool.config.backend;
  s.command = Json(pool.config.command);
  s.limits = ResourceLimits(pool.config);
  sandbox::SandboxSpec spec = MakeSandboxSpec(s, backend->capabilities(), Secret(),
                                              {w.dir, work_dir, d_.channels.SandboxUrl()});
  std::error_code ec;
  fs::create_directories(work_dir, ec);
  ::chmod(work_dir.c_str(), 0700);
  fs::create_directories(w.dir, ec);
  ::chmod(w.dir.c_str(), 0755);
  made_.insert(w.id);
  if (auto listen = d_.channels.ListenUnix(w.dir + "/control.sock", w.id); !listen) {
    made_.erase(w.id);
    co_return std::unexpected(listen.error());
  }
  auto started =
      co_await RunBlocking(d_.sandbox_pool, [&backend, &spec] { return backend->Create(spec); });
  if (!started) {
    d_.channels.CloseUnix(w.dir + "/control.sock");
    made_.erase(w.id);
    co_return std::unexpected(started.error());
  }
  w.handle = started->handle;
  log::Info("warm pool: a sandbox waits for a session",
            {{"pool", pool.name}, {"sandbox", w.id}, {"backend", pool.config.backend}});
  co_return w;
}

std::optional<PoolManager::Waiting> PoolManager::Claim(const std::string& image,
                                                       const std::string& backend,
                                                       const Json& command, const Json& limits) {
  if (stopping_) return std::nullopt;
  const Json empty = Json::array();
  // The resource limits asked for, as the pools hold theirs (the other limits, such as
  // timeouts and budgets, are the session's and need no sandbox of their own).
  Json asked = Json::object();
  for (const char* resource : kResources) {
    if (limits.is_object() && limits.contains(resource)) asked[resource] = limits[resource];
  }
  for (auto& [name, pool] : pools_) {
    if (pool.config.image != image || pool.config.backend != backend || pool.waiting.empty() ||
        Json(pool.config.command) != (command.is_array() ? command : empty) ||
        ResourceLimits(pool.config) != asked) {
      continue;
    }
    Waiting w = std::move(pool.waiting.front());
    pool.waiting.pop_front();
    ready_.With({name}).Set(static_cast<double>(pool.waiting.size()));
    claims_total_.With({name}).Inc();
    ++pool.deferred;
    deferring_.insert(w.id);
    asio::co_spawn(d_.io, RefillAfterClaim(pool, w.id, heard_.Version(w.id)), asio::detached);
    return w;
  }
  return std::nullopt;
}

void PoolManager::Resolve(const Waiting& w, Identity identity) {
  const std::string session_id = identity.session.id;
  auto now = std::chrono::steady_clock::now();
  std::erase_if(claimed_, [&](const auto& c) { return now - c.second.at > kClaimMemory; });
  std::erase_if(identities_, [&](const auto& i) { return now - i.second.at > kClaimMemory; });
  made_.erase(w.id);
  claimed_[w.id] = Claimed{session_id, now};
  identity.at = now;
  identities_[session_id] = std::move(identity);
  claims_.Notify(w.id);
  claims_.Forget(w.id);
  // Only while its refill still waits (a create that took long may come after it gave up).
  if (deferring_.count(w.id)) unheard_[session_id] = w.id;
}

std::optional<PoolManager::Identity> PoolManager::TakeIdentity(const std::string& session_id) {
  auto it = identities_.find(session_id);
  if (it == identities_.end()) return std::nullopt;
  Identity taken = std::move(it->second);
  identities_.erase(it);
  if (std::chrono::steady_clock::now() - taken.at > kClaimMemory) return std::nullopt;
  return taken;
}

void PoolManager::Answered(const std::string& session_id) {
  if (auto it = identities_.find(session_id); it != identities_.end()) it->second.files.reset();
}

void PoolManager::Forget(const std::string& session_id) {
  identities_.erase(session_id);
  unheard_.erase(session_id);
}

awaitable<void> PoolManager::Discard(const Waiting& w) {
  made_.erase(w.id);
  // Its refill need not wait for an agent that will never run.
  if (deferring_.count(w.id)) heard_.Notify(w.id);
  d_.channels.CloseUnix(w.dir + "/control.sock");
  auto pool = pools_.find(w.pool);
  auto* backend = pool == pools_.end() ? nullptr : d_.backends.Find(pool->second.config.backend);
  if (backend) co_await RunBlocking(d_.sandbox_pool, [&] { return backend->Destroy(w.handle); });
}

void PoolManager::HeardFrom(const std::string& session_id) {
  if (unheard_.empty()) return;
  auto it = unheard_.find(session_id);
  if (it == unheard_.end()) return;
  heard_.Notify(it->second);
  unheard_.erase(it);
}

awaitable<void> PoolManager::RefillAfterClaim(Pool& pool, std::string sandbox_id, uint64_t seen) {
  bool heard =
      co_await heard_.Wait(sandbox_id, seen, std::chrono::steady_clock::now() + kRefillDeferral);
  heard_.Forget(sandbox_id);
  deferring_.erase(sandbox_id);
  // Unheard until now (the deferral ran out, or the claim failed before Resolve).
  std::erase_if(unheard_, [&](const auto& u) { return u.second == sandbox_id; });
  if (heard && !stopping_) {
    // The agent's first request is answered, and what it does next begins, on a quiet host.
    asio::steady_timer settle(d_.io, kRefillSettle);
    boost::system::error_code ec;
    co_await settle.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
  co_await Refill(pool);
  --pool.deferred;
}

bool PoolManager::Knows(const std::string& sandbox_id) const {
  if (made_.count(sandbox_id)) return true;
  auto it = claimed_.find(sandbox_id);
  return it != claimed_.end() && std::chrono::steady_clock::now() - it->second.at <= kClaimMemory;
}

awaitable<std::optional<std::string>> PoolManager::AwaitClaim(
    const std::string& id, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    uint64_t version = claims_.Version(id);
    if (auto it = claimed_.find(id); it != claimed_.end()) co_return it->second.session_id;
    if (stopping_ || !made_.count(id)) co_return std::nullopt;
    if (!co_await claims_.Wait(id, version, deadline)) co_return std::nullopt;
  }
}

awaitable<void> PoolManager::Stop() {
  stopping_ = true;
  claims_.NotifyAll();
  heard_.NotifyAll();
  watch_timer_.cancel();
  for (auto& [name, pool] : pools_) {
    auto* backend = d_.backends.Find(pool.config.backend);
    while (!pool.waiting.empty()) {
      Waiting w = std::move(pool.waiting.front());
      pool.waiting.pop_front();
      d_.channels.CloseUnix(w.dir + "/control.sock");
      if (backend) {
        co_await RunBlocking(d_.sandbox_pool, [&] { return backend->Destroy(w.handle); });
      }
    }
    ready_.With({name}).Set(0);
  }
  // Sandboxes being started now are destroyed by their Refill as soon as they are up.
  asio::steady_timer wait(d_.io);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
  for (;;) {
    int starting = 0;
    for (const auto& [name, pool] : pools_) starting += pool.starting + pool.deferred;
    // Watch() may be inside a backend call: it ends before this object can go.
    if ((starting == 0 && !watching_) || std::chrono::steady_clock::now() >= deadline) break;
    wait.expires_after(std::chrono::milliseconds(20));
    co_await wait.async_wait(asio::use_awaitable);
  }
}

}  // namespace airlock::controlplane
