#include "controlplane/control_plane.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/blocking.h"
#include "common/crypto.h"
#include "common/log.h"
#include "common/time_util.h"
#include "controlplane/validation.h"

namespace airlock::controlplane {

namespace fs = std::filesystem;

namespace {

std::string_view BearerToken(const Request& req) {
  std::string_view h = req.Header("Authorization");
  if (h.size() > 7 && beast::iequals(h.substr(0, 7), "Bearer ")) {
    h.remove_prefix(7);
    while (!h.empty() && h.front() == ' ') h.remove_prefix(1);
    return h;
  }
  return {};
}

}  // namespace

ControlPlane::ControlPlane(Config config, asio::io_context& io, std::unique_ptr<store::Store> store,
                           std::unique_ptr<sandbox::BackendRegistry> backends,
                           std::shared_ptr<const Clock> clock)
    : config_(std::move(config)),
      io_(io),
      store_(std::move(store)),
      backends_(std::move(backends)),
      pool_(static_cast<size_t>(config_.worker_threads)),
      sandbox_pool_(static_cast<size_t>(config_.worker_threads)),
      http_metrics_(std::make_unique<HttpMetrics>(registry_)),
      metrics_(std::make_unique<ControlPlaneMetrics>(registry_)),
      inbox_(io),
      events_(io),
      conversations_(io),
      llm_(std::make_unique<LlmProxy>(io, config_, *store_, pool_, events_, conversations_,
                                      registry_)),
      files_(std::make_unique<FileService>(config_, *store_, pool_, events_, registry_)),
      identity_(
          std::make_unique<IdentityService>(*store_, pool_, config_.node, events_, registry_)),
      tokens_(MakeTokenCache(config_)),
      sandbox_events_(*store_, pool_, EventQuotaFor(config_)),
      clock_(clock ? std::move(clock) : std::make_shared<RealClock>()),
      sessions_(std::make_unique<SessionService>(
          SessionService::Deps{config_, io_, *store_, *backends_, pool_, sandbox_pool_, *clock_,
                               *metrics_, inbox_, events_, conversations_, *llm_, tokens_, *this})),
      reconciler_(std::make_unique<Reconciler>(
          Reconciler::Deps{config_, io_, *store_, *backends_, pool_, sandbox_pool_, *clock_,
                           *sessions_, metrics_->reconcile_passes})) {
  RegisterOperatorRoutes();
  RegisterSandboxRoutes();
  HttpLimits operator_limits = config_.limits;
  operator_limits.max_connections = static_cast<size_t>(config_.operator_max_connections);
  operator_server_ = std::make_unique<HttpServer>(
      io_, "operator", operator_limits, [this](Request& r) { return operator_router_.Dispatch(r); },
      *http_metrics_);
  sandbox_server_ = std::make_unique<HttpServer>(
      io_, "sandbox", config_.limits, [this](Request& r) { return sandbox_router_.Dispatch(r); },
      *http_metrics_);
  operator_server_->SetGate([this](Request& r) { return AdmitOperator(r); });
  sandbox_server_->SetGate([this](Request& r) { return AdmitSandbox(r); });
  // Uploads to signed file URLs are streamed to disk, never held in memory.
  sandbox_server_->StreamBodies([](http::verb m, std::string_view path) {
    return m == http::verb::put && path.starts_with("/sandbox/v1/files/");
  });
}

ControlPlane::~ControlPlane() {
  stopping_ = true;
  pool_.join();
  sandbox_pool_.join();
}

std::string ControlPlane::SandboxUrl() const {
  if (!config_.sandbox_url.empty()) return config_.sandbox_url;
  auto addr = sandbox_endpoint_.address();
  std::string host = addr.is_v6() ? "[" + addr.to_string() + "]" : addr.to_string();
  if (addr.is_unspecified()) host = "127.0.0.1";
  return fmt::format("http://{}:{}", host, sandbox_endpoint_.port());
}

Status ControlPlane::EnsureOperatorKeys() {
  std::string key_path = config_.home + "/operator.key";
  std::string key;
  int fd = ::open(key_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd >= 0) {
    Secret fresh = NewToken(kOperatorKeyPrefix);
    std::string line = fresh.Reveal() + "\n";
    bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()) &&
              ::fsync(fd) == 0;
    ::close(fd);
    if (!ok)
      return Errorf(ErrorCode::kInternal, "cannot write {}: {}", key_path, std::strerror(errno));
    key = fresh.Reveal();
    log::Info("created operator key", {{"path", key_path}});
  } else if (errno == EEXIST) {
    struct stat st {};
    if (::stat(key_path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
      log::Warn("operator key file is readable by others; fixing its mode to 0600",
                {{"path", key_path}});
      ::chmod(key_path.c_str(), 0600);
    }
    std::ifstream f(key_path);
    std::getline(f, key);
    if (key.empty()) return Errorf(ErrorCode::kInvalidArgument, "{} is empty", key_path);
  } else {
    return Errorf(ErrorCode::kInternal, "cannot create {}: {}", key_path, std::strerror(errno));
  }

  std::vector<store::OperatorKey> wanted = {{"default", Sha256Hex(key), NowMillis()}};
  for (const auto& [name, k] : config_.operator_keys) {
    if (!k.sha256.empty()) {
      wanted.push_back({name, k.sha256, NowMillis()});
      continue;
    }
    const char* v = std::getenv(k.key_env.c_str());
    if (!v || !*v) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "auth.operator_keys.{}: environment variable {} is not set", name, k.key_env);
    }
    wanted.push_back({name, Sha256Hex(v), NowMillis()});
  }
  for (const auto& w : wanted) AIRLOCK_TRY(EnsureOperatorKey(w));
  AIRLOCK_ASSIGN_OR_RETURN(auto stored, store_->ListOperatorKeys());
  operator_key_hashes_.clear();
  for (const auto& s : stored) operator_key_hashes_.push_back(s.hash);
  return Ok();
}

// Replicas that start together with the same configuration all add the same keys: the
// insert of all but one fails on the name, and then the key is there, added by another.
Status ControlPlane::EnsureOperatorKey(const store::OperatorKey& wanted) {
  for (int attempt = 0;; ++attempt) {
    AIRLOCK_ASSIGN_OR_RETURN(auto stored, store_->ListOperatorKeys());
    store::OperatorKey k = wanted;
    for (const auto& s : stored) {
      if (s.hash == k.hash) return Ok();
      // A name may be taken by an older key (say the key file was replaced): keep both.
      if (s.name == k.name) k.name = k.name + "-" + HexEncode(RandomBytes(3));
    }
    auto added = store_->AddOperatorKey(k);
    if (added || added.error().code != ErrorCode::kConflict || attempt == 3) return added;
  }
}

awaitable<void> ControlPlane::RefreshOperatorKeys() {
  auto now = std::chrono::steady_clock::now();
  if (now - operator_keys_read_at_ < kOperatorKeyRefresh) co_return;
  operator_keys_read_at_ = now;
  auto stored = co_await RunBlocking(pool_, [this] { return store_->ListOperatorKeys(); });
  if (!stored) {
    log::Warn("cannot re-read the operator keys", {{"error", stored.error().message}});
    co_return;
  }
  operator_key_hashes_.clear();
  for (const auto& s : *stored) operator_key_hashes_.push_back(s.hash);
}

Status ControlPlane::Start() {
  std::error_code ec;
  fs::create_directories(config_.home + "/run", ec);
  if (ec) return Errorf(ErrorCode::kInternal, "cannot create {}: {}", config_.home, ec.message());
  if (!home_lock_.held()) {
    AIRLOCK_ASSIGN_OR_RETURN(home_lock_, HomeLock::Acquire(config_.home));
  }
  fs::create_directories(config_.home + "/sessions", ec);
  ::chmod(config_.home.c_str(), 0700);
  // Sandboxes run as other users and must reach their own socket under run/<id>/ but list
  // nothing: run/ is searchable, not readable.
  ::chmod((config_.home + "/run").c_str(), 0711);
  AIRLOCK_TRY(EnsureOperatorKeys());
  // Alive from the start: a replica with no heartbeat yet would look dead to the others,
  // which would take over the first sessions it creates.
  AIRLOCK_TRY(store_->Heartbeat(config_.node, clock_->NowMillis()));
  // What other replicas commit wakes this one's waiters (a shared PostgreSQL store).
  AIRLOCK_TRY(store_->WatchChanges(
      [this](const store::Change& c) { asio::post(io_, [this, c] { OnStoreChange(c); }); }));

  for (const auto& name : backends_->Names()) {
    auto* b = backends_->Find(name);
    if (!b->capabilities().isolated) {
      log::Warn("backend without isolation is registered",
                {{"backend", name}, {"enabled", config_.allow_unisolated_backends}});
    }
  }

  llm_->Start();
  AIRLOCK_TRY(files_->Start());
  retention_ = std::make_unique<Retention>(config_, *store_, files_->blob_store());
  AIRLOCK_ASSIGN_OR_RETURN(
      operator_endpoint_,
      operator_server_->ListenTcp(config_.operator_listen.host, config_.operator_listen.port));
  AIRLOCK_ASSIGN_OR_RETURN(
      sandbox_endpoint_,
      sandbox_server_->ListenTcp(config_.sandbox_listen.host, config_.sandbox_listen.port));
  log::Info("listening",
            {{"operator", fmt::format("{}:{}", operator_endpoint_.address().to_string(),
                                      operator_endpoint_.port())},
             {"sandbox", SandboxUrl()},
             {"home", config_.home},
             {"store", StoreDescription(config_)},
             {"backends", backends_->Names()}});
  reconciler_->Start();
  retention_->StartPeriodic(io_, pool_);
  return Ok();
}

awaitable<void> ControlPlane::DrainAndStop() {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(config_.drain_timeout_s);
  asio::steady_timer t(io_);
  while (operator_server_->active_connections() + sandbox_server_->active_connections() > 0 &&
         std::chrono::steady_clock::now() < deadline) {
    t.expires_after(std::chrono::milliseconds(20));
    boost::system::error_code ec;
    co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
  }
  log::Info("stopped", {{"open_connections", operator_server_->active_connections() +
                                                 sandbox_server_->active_connections()}});
  io_.stop();
}

void ControlPlane::Shutdown() {
  if (stopping_) return;
  stopping_ = true;
  log::Info("draining", {{"timeout_s", config_.drain_timeout_s}});
  reconciler_->Stop();
  operator_server_->BeginDrain();
  sandbox_server_->BeginDrain();
  inbox_.NotifyAll();
  events_.NotifyAll();
  asio::co_spawn(io_, DrainAndStop(), asio::detached);
}

// ---------------------------------------------------------------- auth

awaitable<Admission> ControlPlane::AdmitOperator(Request& req) {
  Admission a;
  auto route = operator_router_.Find(req);
  if (route) a.max_body_bytes = route->max_body_bytes;
  // Every /v1/ route needs the operator key; without it nothing of the body is read.
  if (route && req.path.starts_with("/v1/")) {
    // A key this replica has not seen may have been added by another one since it read
    // them: read them again, at most once per kOperatorKeyRefresh, so that a flood of wrong
    // keys costs the store nothing.
    if (std::string_view token = BearerToken(req); !token.empty() && !KnownOperatorKey(token)) {
      co_await RefreshOperatorKeys();
    }
    if (auto ok = CheckOperator(req); !ok) a.refuse = Response::FromError(ok.error());
  }
  co_return a;
}

awaitable<Admission> ControlPlane::AdmitSandbox(Request& req) {
  Admission a;
  auto route = sandbox_router_.Find(req);
  if (!route) co_return a;  // 404 or 405, with a small body limit
  a.max_body_bytes = route->max_body_bytes;
  // Signed file URLs carry their credential in the query string; the file service checks it.
  if (req.route.starts_with("/sandbox/v1/files/{session}/")) co_return a;
  // Over TCP the connection is charged to the session of the token it presents, once that
  // token is known to be good: a made-up token gets a 401 and a closed connection, not a
  // share of its own. Every TCP request is therefore authenticated here; on a per-session
  // Unix socket (charged to its session at accept) only one with a body needs to be, before
  // the body is read; the others are authenticated by their handler, which needs the session
  // anyway.
  if (req.bound_session.empty() || req.body_expected) {
    // The cache's answer without a coroutine frame; the store's when it has none.
    std::optional<Result<SandboxIdentity>> id = IdentifyCached(req);
    if (!id) id = co_await IdentifySandbox(req);
    if (!*id) {
      a.refuse = Response::FromError(id->error());
    } else if (req.bound_session.empty()) {
      a.charge_to = std::move((*id)->session_id);
    }
  }
  co_return a;
}

bool ControlPlane::KnownOperatorKey(std::string_view token) const {
  std::string hash = Sha256Hex(token);
  // Compare against every key without stopping early, so timing says nothing about which
  // key (if any) matched.
  bool match = false;
  for (const auto& h : operator_key_hashes_) match |= ConstantTimeEquals(hash, h);
  return match;
}

Result<void> ControlPlane::CheckOperator(const Request& req) const {
  std::string_view token = BearerToken(req);
  if (token.empty()) {
    metrics_->auth_failures.With({"operator"}).Inc();
    return MakeError(ErrorCode::kUnauthenticated,
                     "missing \"Authorization: Bearer <operator key>\"");
  }
  if (!KnownOperatorKey(token)) {
    metrics_->auth_failures.With({"operator"}).Inc();
    return MakeError(ErrorCode::kUnauthenticated, "invalid operator key");
  }
  return Ok();
}

awaitable<Result<store::Session>> ControlPlane::AuthenticateSandbox(const Request& req) {
  std::string_view token = BearerToken(req);
  auto refuse = [&](std::string msg) -> Result<store::Session> {
    metrics_->auth_failures.With({"sandbox"}).Inc();
    return MakeError(ErrorCode::kUnauthenticated, std::move(msg));
  };
  if (token.empty()) co_return refuse("missing \"Authorization: Bearer <SESSION_TOKEN>\"");
  if (!token.starts_with(kSessionTokenPrefix) || token.size() > 128) {
    co_return refuse("invalid, expired or revoked session token");
  }
  // Only the hash is stored; the lookup is by hash, so the token itself is never compared.
  std::string hash = TokenHash(req, token);
  const uint64_t epoch = tokens_.epoch();  // before the read: see TokenCache::Insert
  auto s =
      co_await RunBlocking(pool_, [this, &hash] { return store_->GetSessionByTokenHash(hash); });
  if (!s) {
    if (s.error().code == ErrorCode::kNotFound)
      co_return refuse("invalid, expired or revoked session token");
    co_return std::unexpected(s.error());
  }
  if (auto claims = CheckSandboxClaims(req, s->id); !claims)
    co_return std::unexpected(claims.error());
  if (store::IsTerminal(s->state)) co_return refuse("invalid, expired or revoked session token");
  tokens_.Insert(epoch, std::move(hash), s->id, TokenCache::Clock::now());
  co_return s;
}

const std::string& ControlPlane::TokenHash(const Request& req, std::string_view token) {
  if (req.bearer_hash.empty()) req.bearer_hash = Sha256Hex(token);
  return req.bearer_hash;
}

std::optional<Result<ControlPlane::SandboxIdentity>> ControlPlane::IdentifyCached(
    const Request& req) {
  std::string_view token = BearerToken(req);
  if (!tokens_.enabled() || !token.starts_with(kSessionTokenPrefix) || token.size() > 128)
    return std::nullopt;
  const std::string& hash = TokenHash(req, token);
  auto id = tokens_.Find(hash, TokenCache::Clock::now());
  if (!id) return std::nullopt;
  if (auto claims = CheckSandboxClaims(req, *id); !claims)
    return Result<SandboxIdentity>(std::unexpected(claims.error()));
  return Result<SandboxIdentity>(SandboxIdentity{std::move(*id), hash});
}

awaitable<Result<ControlPlane::SandboxIdentity>> ControlPlane::IdentifySandbox(const Request& req) {
  if (auto id = IdentifyCached(req)) co_return std::move(*id);
  auto s = co_await AuthenticateSandbox(req);
  if (!s) co_return std::unexpected(s.error());
  co_return SandboxIdentity{std::move(s->id), std::move(s->token_hash)};
}

Result<void> ControlPlane::CheckSandboxClaims(const Request& req, const std::string& id) {
  // A per-session socket serves its own session only: a token that leaked into another
  // sandbox is useless there.
  if (!req.bound_session.empty() && req.bound_session != id) {
    metrics_->auth_failures.With({"sandbox"}).Inc();
    return MakeError(ErrorCode::kUnauthenticated,
                     "this token belongs to another session than this socket");
  }
  if (std::string_view claimed = req.Header("SESSION_ID"); !claimed.empty() && claimed != id) {
    metrics_->auth_failures.With({"sandbox"}).Inc();
    return MakeError(ErrorCode::kPermissionDenied,
                     "SESSION_ID header does not match the token's session");
  }
  // Anything but waiting on the inbox is work: the session is not idle.
  if (req.path != "/sandbox/v1/inbox") sessions_->NoteWork(id);
  return Ok();
}

// ---------------------------------------------------------------- store changes

void ControlPlane::OnStoreChange(const store::Change& c) {
  if (c.session_id.empty()) {  // the feed was interrupted: anything may have changed
    tokens_.Clear();
    inbox_.NotifyAll();
    events_.NotifyAll();
    return;
  }
  switch (c.kind) {
    case store::Change::Kind::kInbox:
      tokens_.Forget(c.session_id);  // a fresh sandbox (a new token) is announced so
      inbox_.Notify(c.session_id);
      break;
    case store::Change::Kind::kEvents:
      events_.Notify(c.session_id);
      break;
    case store::Change::Kind::kEnded:
      // Ended through another replica: its LLM calls here stop, its waiters here wake and
      // see the end, its token is refused at once, and if this replica runs its sandbox, the
      // sandbox goes now.
      tokens_.Forget(c.session_id);
      llm_->CancelSession(c.session_id);
      inbox_.Notify(c.session_id);
      events_.Notify(c.session_id);
      asio::co_spawn(io_, sessions_->DestroyIfEndedHere(c.session_id), asio::detached);
      break;
  }
}

}  // namespace airlock::controlplane
