#include "controlplane/control_plane.h"

#include <sys/stat.h>

#include <filesystem>

#include "common/blocking.h"
#include "common/log.h"
#include "common/time_util.h"

namespace airlock::controlplane {

namespace fs = std::filesystem;

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
      pools_(std::make_unique<PoolManager>(
          PoolManager::Deps{config_, io_, *backends_, sandbox_pool_, *this, registry_})),
      identity_(std::make_unique<IdentityService>(
          *store_, pool_, config_.node, events_, registry_, pools_.get(),
          [this](const store::Session& s, std::optional<Json> files) -> awaitable<Result<Json>> {
            // (Not a ?: in the co_await's arguments, which GCC 12 destroys twice.)
            Json egress = Json::object();
            if (egress_) egress = egress_->SandboxWork(s);
            co_return co_await files_->Work(s, std::move(egress), std::move(files));
          })),
      auth_(std::make_unique<Authenticator>(Authenticator::Deps{
          config_, *store_, pool_, operator_router_, sandbox_router_, metrics_->auth_failures,
          [this](const std::string& id, Authenticator::SandboxActivity activity) {
            if (activity == Authenticator::SandboxActivity::kWorking) sessions_->NoteWork(id);
            if (activity != Authenticator::SandboxActivity::kInit) pools_->HeardFrom(id);
          }})),
      sandbox_events_(*store_, pool_, EventQuotaFor(config_), /*max_batch=*/256,
                      /*max_in_flight=*/2, /*one_commit_at_a_time=*/config_.store_kind == "sqlite"),
      clock_(clock ? std::move(clock) : std::make_shared<RealClock>()),
      sessions_(std::make_unique<SessionService>(SessionService::Deps{
          config_, io_, *store_, *backends_, pool_, sandbox_pool_, *clock_, *metrics_, inbox_,
          events_, conversations_, *llm_, auth_->tokens(), *this, pools_.get(),
          [this](const std::string& session, const std::string& name, std::string_view bytes) {
            return files_->PutBytes(session, name, bytes);
          }})),
      reconciler_(std::make_unique<Reconciler>(
          Reconciler::Deps{config_, io_, *store_, *backends_, pool_, sandbox_pool_, *clock_,
                           *sessions_, metrics_->reconcile_passes,
                           [this](const std::string& id) { return pools_->Knows(id); }})) {
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
  operator_server_->SetGate([this](Request& r) { return auth_->AdmitOperator(r); });
  sandbox_server_->SetGate([this](Request& r) {
    // A forward proxy's request (CONNECT, an absolute URL) is the egress gateway's; the
    // listener is the only way a sandbox reaches anything.
    if (egress_ && egress::Gateway::IsProxyRequest(r)) return egress_->Admit(r);
    return auth_->AdmitSandbox(r);
  });
  // Uploads to signed file URLs are streamed to disk, never held in memory.
  sandbox_server_->StreamBodies([](http::verb m, std::string_view path) {
    return m == http::verb::put && path.starts_with("/sandbox/v1/files/");
  });
  // And the operator's: PUT /v1/sessions/{id}/files/{name}.
  operator_server_->StreamBodies([](http::verb m, std::string_view path) {
    return m == http::verb::put && path.starts_with("/v1/sessions/") &&
           path.find("/files/") != std::string_view::npos;
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
  AIRLOCK_TRY(auth_->EnsureOperatorKeys());
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

  AIRLOCK_TRY(pools_->Check());
  // Before listening: a secret whose variable is unset, or a CA that cannot be read, stops the
  // start with the reason.
  AIRLOCK_ASSIGN_OR_RETURN(auto boundary, EgressService::LoadBoundary(config_));
  llm_->Start();
  AIRLOCK_TRY(files_->Start());
  retention_ = std::make_unique<Retention>(config_, *store_, files_->blob_store());
  AIRLOCK_ASSIGN_OR_RETURN(
      operator_endpoint_,
      operator_server_->ListenTcp(config_.operator_listen.host, config_.operator_listen.port));
  AIRLOCK_ASSIGN_OR_RETURN(
      sandbox_endpoint_,
      sandbox_server_->ListenTcp(config_.sandbox_listen.host, config_.sandbox_listen.port));
  egress::OwnAddresses own{egress::HostAddresses(), {operator_endpoint_, sandbox_endpoint_}};
  egress_ = std::make_unique<EgressService>(
      EgressService::Deps{config_, io_, *store_, pool_, registry_, sandbox_events_, events_},
      std::move(own), std::move(boundary));
  log::Info("listening",
            {{"operator", fmt::format("{}:{}", operator_endpoint_.address().to_string(),
                                      operator_endpoint_.port())},
             {"sandbox", SandboxUrl()},
             {"home", config_.home},
             {"store", StoreDescription(config_)},
             {"backends", backends_->Names()}});
  reconciler_->Start();
  pools_->Start();
  retention_->StartPeriodic(io_, pool_);
  return Ok();
}

awaitable<void> ControlPlane::DrainAndStop() {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(config_.drain_timeout_s);
  // Sandboxes that wait for a session hold memory and serve nobody once this process is gone.
  co_await pools_->Stop();
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

// ---------------------------------------------------------------- store changes

void ControlPlane::OnStoreChange(const store::Change& c) {
  if (c.session_id.empty()) {  // the feed was interrupted: anything may have changed
    auth_->tokens().Clear();
    inbox_.NotifyAll();
    events_.NotifyAll();
    return;
  }
  switch (c.kind) {
    case store::Change::Kind::kInbox:
      auth_->tokens().Forget(c.session_id);  // a fresh sandbox (a new token) is announced so
      inbox_.Notify(c.session_id);
      break;
    case store::Change::Kind::kEvents:
      events_.Notify(c.session_id);
      break;
    case store::Change::Kind::kEnded:
      // Ended through another replica: its LLM calls here stop, its waiters here wake and
      // see the end, its token is refused at once, and if this replica runs its sandbox, the
      // sandbox goes now.
      auth_->tokens().Forget(c.session_id);
      llm_->CancelSession(c.session_id);
      inbox_.Notify(c.session_id);
      events_.Notify(c.session_id);
      asio::co_spawn(io_, sessions_->DestroyIfEndedHere(c.session_id), asio::detached);
      break;
  }
}

}  // namespace airlock::controlplane
