// The HTTP routes of docs/api.md: operator routes and sandbox routes. Each handler
// validates its input completely before touching the store, and answers every failure with
// the JSON error shape.
#include <sys/stat.h>

#include <filesystem>

#include "common/blocking.h"
#include "common/crypto.h"
#include "common/log.h"
#include "common/time_util.h"
#include "controlplane/control_plane.h"
#include "controlplane/openapi.h"
#include "controlplane/readiness.h"
#include "controlplane/validation.h"
#include "controlplane/views.h"
#include "net/handler_util.h"

namespace airlock::controlplane {

namespace fs = std::filesystem;
using store::SessionState;

namespace {

constexpr auto kHeartbeat = std::chrono::seconds(15);
constexpr size_t kMaxLogResponse = 16 << 20;  // the log file is capped well below this by init

}  // namespace

void ControlPlane::RegisterOperatorRoutes() {
  auto& r = operator_router_;
  r.Add(http::verb::get, "/healthz", [](Request&) -> awaitable<Response> {
    co_return Response::FromJson(200, Json{{"status", "ok"}});
  });
  // Unauthenticated like /healthz, for load balancers and orchestrators: 200 when this
  // replica should get traffic, else 503; the body says which check failed.
  r.Add(http::verb::get, "/readyz", [this](Request&) -> awaitable<Response> {
    ReadinessInputs in;
    in.store = store_.get();
    in.backends = backends_.get();
    in.pool = &pool_;
    in.default_backend = config_.default_backend;
    in.allow_unisolated = config_.allow_unisolated_backends;
    in.draining = stopping_;
    Readiness r = co_await CheckReadiness(in);
    co_return Response::FromJson(r.ready ? 200 : 503, r.body);
  });
  r.Add(http::verb::get, "/metrics", [this](Request&) -> awaitable<Response> {
    co_return Response::Text(200, registry_.Render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  // The API's OpenAPI document, without a key like /healthz: it describes the public API and
  // holds nothing secret, and a client generator or a person exploring a server reads it
  // before configuring a key. Every route of both listeners must be in it (openapi_test.cc).
  r.Add(http::verb::get, "/openapi.json", [](Request&) -> awaitable<Response> {
    co_return Response::Text(200, std::string(OpenApiDocument()), "application/json");
  });
  auto authed = [this](awaitable<Response> (ControlPlane::*fn)(Request&)) {
    return [this, fn](Request& req) -> awaitable<Response> {
      if (auto ok = CheckOperator(req); !ok) co_return Response::FromError(ok.error());
      if (auto it = req.params.find("id");
          it != req.params.end() && !PlausibleSessionId(it->second)) {
        co_return Response::FromError(404, "not_found", "no such session");
      }
      co_return co_await (this->*fn)(req);
    };
  };
  // The routes that take a body a user writes (a task, a message) may have up to
  // server.max_body_bytes; every other route a small one. The key is checked before either.
  const RouteOptions large{config_.limits.max_body_bytes};
  r.Add(http::verb::post, "/v1/sessions", authed(&ControlPlane::CreateSession), large);
  r.Add(http::verb::get, "/v1/sessions", authed(&ControlPlane::ListSessions));
  r.Add(http::verb::get, "/v1/sessions/{id}", authed(&ControlPlane::GetSession));
  r.Add(http::verb::delete_, "/v1/sessions/{id}", authed(&ControlPlane::DeleteSession));
  r.Add(http::verb::post, "/v1/sessions/{id}/messages", authed(&ControlPlane::PostMessage), large);
  r.Add(http::verb::get, "/v1/sessions/{id}/messages", authed(&ControlPlane::GetMessages));
  r.Add(http::verb::get, "/v1/sessions/{id}/events", authed(&ControlPlane::GetEvents));
  r.Add(http::verb::post, "/v1/sessions/{id}/suspend", authed(&ControlPlane::Suspend));
  r.Add(http::verb::post, "/v1/sessions/{id}/resume", authed(&ControlPlane::Resume));
  r.Add(http::verb::get, "/v1/sessions/{id}/logs", authed(&ControlPlane::GetLogs));
  r.Add(http::verb::get, "/v1/sessions/{id}/files", authed(&ControlPlane::ListFiles));
  r.Add(http::verb::get, "/v1/sessions/{id}/files/{name}", authed(&ControlPlane::DownloadFile));
  r.Add(http::verb::head, "/v1/sessions/{id}/files/{name}", authed(&ControlPlane::DownloadFile));
  r.Add(http::verb::get, "/v1/usage", authed(&ControlPlane::GetUsage));
  // POST /v1/admin/gc (docs/api.md): applies the retention policy now.
  r.Add(http::verb::post, "/v1/admin/gc", [this](Request& req) -> awaitable<Response> {
    if (auto ok = CheckOperator(req); !ok) co_return Response::FromError(ok.error());
    AIRLOCK_CO_ASSIGN(Json body, ParseJsonObject(req.msg.body().empty() ? std::string_view("{}")
                                                                        : req.msg.body()));
    AIRLOCK_CO_ASSIGN(GcRequest gc, ParseGcRequest(body, config_.retention));
    if (!retention_)
      co_return Response::FromError(503, "unavailable", "the control plane is starting");
    AIRLOCK_CO_ASSIGN(GcReport report, co_await RunBlocking(pool_, [this, &gc] {
                        return retention_->Run(gc, NowMillis());
                      }));
    if (!gc.dry_run && report.sessions > 0) {
      log::Info("gc", GcReportJson(gc, report));
    }
    co_return Response::FromJson(200, GcReportJson(gc, report));
  });
}

void ControlPlane::RegisterSandboxRoutes() {
  auto& r = sandbox_router_;
  r.Add(http::verb::get, "/sandbox/v1/inbox", [this](Request& q) { return Inbox(q); });
  r.Add(http::verb::get, "/sandbox/v1/identity",
        [this](Request& q) { return identity_->Fetch(q); });
  // Body limits sized to each route, enforced before a byte of the body is read: an event is
  // not a megabyte. A finish's result may be 64 KiB of text, which JSON may escape to six
  // times that; a chat carries new messages (tool output, images as data: URLs).
  r.Add(
      http::verb::post, "/sandbox/v1/events", [this](Request& q) { return SandboxEvent(q); },
      RouteOptions{static_cast<size_t>(config_.max_event_bytes)});
  r.Add(http::verb::get, "/sandbox/v1/history", [this](Request& q) { return History(q); });
  r.Add(
      http::verb::post, "/sandbox/v1/finish", [this](Request& q) { return Finish(q); },
      RouteOptions{size_t{6 * 64 * 1024 + 4096}});
  r.Add(
      http::verb::post, "/sandbox/v1/llm/chat", [this](Request& q) { return LlmChat(q); },
      RouteOptions{config_.limits.max_body_bytes});
  r.Add(http::verb::post, "/sandbox/v1/files/presign",
        [this](Request& q) { return PresignFile(q); });
  // The local store's signed URLs: the signature is the credential, no bearer token.
  r.Add(http::verb::put, "/sandbox/v1/files/{session}/{name}",
        [this](Request& q) { return files_->Upload(q); });
  r.Add(http::verb::get, "/sandbox/v1/files/{session}/{name}",
        [this](Request& q) { return files_->Fetch(q); });
  r.Add(http::verb::head, "/sandbox/v1/files/{session}/{name}",
        [this](Request& q) { return files_->Fetch(q); });
}

// ---------------------------------------------------------------- operator routes

awaitable<Response> ControlPlane::CreateSession(Request& req) {
  AIRLOCK_CO_ASSIGN(Json body, ParseJsonObject(req.msg.body()));
  AIRLOCK_CO_TRY(RejectUnknownKeys(
      body, {"task", "image", "command", "model", "models", "backend", "limits", "metadata"},
      "session"));
  AIRLOCK_CO_ASSIGN(std::string task, RequiredString(body, "task"));
  if (task.empty())
    co_return Response::FromError(400, "invalid_argument", "\"task\" must not be empty");
  if (static_cast<int64_t>(task.size()) > config_.max_task_bytes) {
    co_return Response::FromError(413, "payload_too_large",
                                  fmt::format("\"task\" exceeds {} bytes", config_.max_task_bytes));
  }
  store::Session s;
  AIRLOCK_CO_ASSIGN(auto image, OptionalString(body, "image"));
  AIRLOCK_CO_ASSIGN(auto model, OptionalString(body, "model"));
  AIRLOCK_CO_ASSIGN(auto backend_name, OptionalString(body, "backend"));
  s.image = image.value_or(config_.default_image);
  s.model = model.value_or(config_.default_model);
  s.backend = backend_name.value_or(config_.default_backend);
  AIRLOCK_CO_TRY(ValidateName("image", s.image));
  AIRLOCK_CO_TRY(ValidateName("model", s.model));
  AIRLOCK_CO_TRY(ValidateName("backend", s.backend));
  // Model aliases named here must exist; the default alias may be configured later.
  auto known_alias = [this](const std::string& a) -> Status {
    if (config_.models.count(a)) return Ok();
    std::string known;
    for (const auto& [k, v] : config_.models) known += (known.empty() ? "" : ", ") + k;
    return Errorf(ErrorCode::kInvalidArgument, "unknown model alias \"{}\" (configured: {})",
                  a.substr(0, 64), known.empty() ? "none" : known);
  };
  if (model) AIRLOCK_CO_TRY(known_alias(s.model));
  if (auto it = body.find("models"); it != body.end() && !it->is_null()) {
    if (!it->is_array() || it->size() > 32) {
      co_return Response::FromError(
          400, "invalid_argument",
          "\"models\" must be an array of at most 32 model aliases the sandbox may pick");
    }
    for (const auto& a : *it) {
      if (!a.is_string())
        co_return Response::FromError(400, "invalid_argument",
                                      "\"models\" holds model aliases (strings)");
      AIRLOCK_CO_TRY(known_alias(a.get<std::string>()));
    }
    s.models = *it;
  }
  if (auto it = body.find("command"); it != body.end()) {
    AIRLOCK_CO_TRY(ValidateCommand(*it));
    if (it->is_array()) s.command = *it;
  }
  if (auto it = body.find("limits"); it != body.end()) {
    AIRLOCK_CO_ASSIGN(s.limits, ParseLimits(*it));
  }
  if (auto it = body.find("metadata"); it != body.end() && !it->is_null()) {
    if (!it->is_object() || DumpJson(*it).size() > 16 * 1024) {
      co_return Response::FromError(400, "invalid_argument",
                                    "\"metadata\" must be an object of at most 16 KiB");
    }
    s.metadata = *it;
  }
  sandbox::Backend* backend = backends_->Find(s.backend);
  if (!backend) {
    if (auto why = backends_->UnavailableReason(s.backend)) {
      co_return Response::FromError(
          503, "unavailable", fmt::format("backend \"{}\" is not available: {}", s.backend, *why));
    }
    std::string names;
    for (const auto& n : backends_->Names()) {
      auto* b = backends_->Find(n);
      if (b->capabilities().isolated || config_.allow_unisolated_backends)
        names += (names.empty() ? "" : ", ") + n;
    }
    co_return Response::FromError(400, "invalid_argument",
                                  fmt::format("backend \"{}\" is not available; available: {}",
                                              s.backend, names.empty() ? "none" : names));
  }
  if (!backend->capabilities().isolated && !config_.allow_unisolated_backends) {
    co_return Response::FromError(403, "permission_denied",
                                  fmt::format("backend \"{}\" does not isolate sandboxes; enable "
                                              "it with sandbox.allow_unisolated_backends",
                                              s.backend));
  }

  // A sandbox that takes its identity over its channel is made without a token; it gets one
  // when it asks (IdentityService), and the session is starting until then.
  const bool in_spec =
      backend->capabilities().identity == sandbox::Capabilities::IdentityDelivery::kInSpec;
  Secret token = in_spec ? NewToken(kSessionTokenPrefix) : Secret();
  s.id = NewId("ses_");
  s.state = SessionState::kStarting;
  s.token_hash = in_spec ? Sha256Hex(token.Reveal()) : "";
  s.node = config_.node;  // this replica runs the sandbox
  s.created_at = s.updated_at = clock_->NowMillis();
  Json task_message = {{"role", "user"}, {"content", task}};
  AIRLOCK_CO_TRY(co_await RunBlocking(
      pool_, [this, &s, &task_message] { return store_->CreateSession(s, task_message); }));
  metrics_->sessions_created.With({s.backend}).Inc();

  sandbox::SandboxSpec spec = SpecFor(s, token);
  Result<std::string> handle = co_await StartSandbox(backend, spec);
  if (!handle) {
    metrics_->sandbox_errors.With({s.backend, "create"}).Inc();
    log::Warn("sandbox create failed",
              {{"session", s.id}, {"backend", s.backend}, {"error", handle.error().message}});
    co_await EndSession(s.id, SessionState::kFailed,
                        "sandbox failed to start: " + handle.error().message);
    Error e = handle.error();
    e.message = "sandbox failed to start: " + e.message;
    co_return Response::FromError(e);
  }
  // Record the sandbox first: the session may end while it starts (the agent can finish
  // within milliseconds, or an operator deletes it), and whoever ends it must find it.
  (void)co_await RunBlocking(
      pool_, [this, &id = s.id, &h = *handle] { return store_->SetSandboxHandle(id, h); });
  store::StateChange change{
      {SessionState::kStarting}, SessionState::kRunning, std::nullopt, false, *handle};
  auto running = co_await RunBlocking(pool_, [this, &id = s.id, &change, in_spec] {
    return in_spec ? store_->ChangeState(id, change) : store_->GetSession(id);
  });
  if (!running || store::IsTerminal(running->state)) {
    // Ended meanwhile: report what is stored, and make sure its sandbox goes (ending may
    // have run before the handle was recorded; destroying twice is harmless).
    AIRLOCK_CO_ASSIGN(auto now, co_await RunBlocking(
                                    pool_, [this, &id = s.id] { return store_->GetSession(id); }));
    if (store::IsTerminal(now.state)) co_await DestroySandbox(backend, s.id, *handle);
    co_return Response::FromJson(201, SessionView(now));
  }
  events_.Notify(s.id);
  log::Info("session created", {{"session", s.id}, {"backend", s.backend}, {"image", s.image}});
  co_return Response::FromJson(201, SessionView(*running));
}

awaitable<Response> ControlPlane::ListSessions(Request& req) {
  store::ListSessionsQuery q;
  if (auto state = req.Query("state")) {
    q.state = store::ParseState(*state);
    if (!q.state) co_return Response::FromError(400, "invalid_argument", "unknown ?state=");
  }
  if (auto limit = req.Query("limit")) {
    auto n = ParseNonNegative(*limit);
    if (!n || *n < 1 || *n > 1000)
      co_return Response::FromError(400, "invalid_argument", "?limit= must be 1-1000");
    q.limit = static_cast<int>(*n);
  }
  if (auto before = req.Query("before")) q.before_id = *before;
  AIRLOCK_CO_ASSIGN(auto list,
                    co_await RunBlocking(pool_, [this, &q] { return store_->ListSessions(q); }));
  Json arr = Json::array();
  for (const auto& s : list) arr.push_back(SessionView(s));
  co_return Response::FromJson(200, Json{{"sessions", arr}});
}

awaitable<Response> ControlPlane::GetSession(Request& req) {
  AIRLOCK_CO_ASSIGN(auto s, co_await RunBlocking(pool_, [this, &id = req.params["id"]] {
                      return store_->GetSession(id);
                    }));
  co_return Response::FromJson(200, SessionView(s));
}

awaitable<Response> ControlPlane::PostMessage(Request& req) {
  std::string id = req.params["id"];
  AIRLOCK_CO_ASSIGN(Json body, ParseJsonObject(req.msg.body()));
  AIRLOCK_CO_TRY(RejectUnknownKeys(body, {"content"}, "message"));
  AIRLOCK_CO_ASSIGN(std::string content, RequiredString(body, "content"));
  if (content.empty())
    co_return Response::FromError(400, "invalid_argument", "\"content\" must not be empty");
  if (static_cast<int64_t>(content.size()) > config_.max_message_bytes) {
    co_return Response::FromError(
        413, "payload_too_large",
        fmt::format("\"content\" exceeds {} bytes", config_.max_message_bytes));
  }
  Json msg = {{"role", "user"}, {"content", content}};
  int64_t msg_id = 0;
  AIRLOCK_CO_ASSIGN(
      store::Session s,
      co_await RunBlocking(pool_, [this, &id, &msg, &msg_id]() -> Result<store::Session> {
        AIRLOCK_ASSIGN_OR_RETURN(msg_id, store_->AddUserMessage(id, msg));
        AIRLOCK_TRY(store_->AppendEvent(id, "session.message", {{"message_id", msg_id}}));
        return store_->GetSession(id);
      }));
  inbox_.Notify(id);
  events_.Notify(id);
  // A follow-up wakes a suspended sandbox, and one that is gone is replaced (the reconciler
  // would notice within a second; the user who just wrote should not wait for it).
  if (s.state == SessionState::kRunning) asio::co_spawn(io_, CheckSandbox(s), asio::detached);
  if (s.state == SessionState::kSuspended) {
    if (auto resumed = co_await SetSuspended(id, false); !resumed) {
      log::Warn("resume on message failed", {{"session", id}, {"error", resumed.error().message}});
    }
  }
  co_return Response::FromJson(202, Json{{"id", msg_id}, {"session", id}});
}

awaitable<Response> ControlPlane::GetMessages(Request& req) {
  std::string id = req.params["id"];
  AIRLOCK_CO_ASSIGN(
      auto msgs, co_await RunBlocking(pool_, [this, &id]() -> Result<std::vector<store::Message>> {
        AIRLOCK_TRY(store_->GetSession(id));
        return store_->ListMessages(id, /*include_pending=*/true);
      }));
  co_return Response::FromJson(200, MessagesView(msgs));
}

awaitable<Response> ControlPlane::GetEvents(Request& req) {
  std::string id = req.params["id"];
  int64_t after = 0;
  std::optional<std::string> after_q = req.Query("after");
  std::string_view last_id = req.Header("Last-Event-ID");
  if (after_q || !last_id.empty()) {
    auto n = ParseNonNegative(after_q ? std::string_view(*after_q) : last_id);
    if (!n)
      co_return Response::FromError(400, "invalid_argument",
                                    "?after= must be a non-negative integer");
    after = *n;
  }
  AIRLOCK_CO_ASSIGN(auto s,
                    co_await RunBlocking(pool_, [this, &id] { return store_->GetSession(id); }));
  if (req.Header("Accept").find("application/json") != std::string_view::npos) {
    int limit = 1000;
    if (auto l = req.Query("limit")) {
      auto n = ParseNonNegative(*l);
      if (!n || *n < 1 || *n > 10000)
        co_return Response::FromError(400, "invalid_argument", "?limit= must be 1-10000");
      limit = static_cast<int>(*n);
    }
    AIRLOCK_CO_ASSIGN(auto evs, co_await RunBlocking(pool_, [this, &id, &after, &limit] {
                        return store_->ListEvents(id, after, limit);
                      }));
    Json arr = Json::array();
    for (const auto& e : evs) arr.push_back(EventView(e));
    co_return Response::FromJson(200, arr);
  }
  Response res;
  res.content_type = "text/event-stream";
  res.headers.emplace_back("X-Accel-Buffering", "no");
  res.stream = [this, id, after](ChunkSink& sink) -> awaitable<void> {
    auto& gauge = metrics_->streams.With({});
    gauge.Add(1);
    int64_t last = after;
    if (!co_await sink.Write(": airlock event stream\n\n")) {
      gauge.Add(-1);
      co_return;
    }
    for (;;) {
      uint64_t version = events_.Version(id);
      auto evs = co_await RunBlocking(
          pool_, [this, &id, &last] { return store_->ListEvents(id, last, 500); });
      if (!evs) break;
      std::string out;
      for (const auto& e : *evs) {
        out += EventFrame(e);
        last = e.seq;
      }
      if (!out.empty() && !co_await sink.Write(out)) break;
      if (evs->size() == 500) continue;
      auto sess = co_await RunBlocking(pool_, [this, &id] { return store_->GetSession(id); });
      if (!sess || store::IsTerminal(sess->state)) {
        // Anything appended together with the final state change is already sent above
        // unless it raced with this read: one more pass picks it up.
        auto tail = co_await RunBlocking(
            pool_, [this, &id, &last] { return store_->ListEvents(id, last, 500); });
        std::string rest;
        if (tail)
          for (const auto& e : *tail) rest += EventFrame(e);
        if (!rest.empty()) co_await sink.Write(rest);
        break;
      }
      if (operator_server_->draining()) break;
      bool woke = co_await events_.Wait(id, version, std::chrono::steady_clock::now() + kHeartbeat);
      if (!woke && !co_await sink.Write(": keep-alive\n\n")) break;
    }
    gauge.Add(-1);
  };
  (void)s;
  co_return res;
}

awaitable<Response> ControlPlane::Suspend(Request& req) {
  AIRLOCK_CO_ASSIGN(auto s, co_await SetSuspended(req.params["id"], true));
  co_return Response::FromJson(200, SessionView(s));
}

awaitable<Response> ControlPlane::Resume(Request& req) {
  AIRLOCK_CO_ASSIGN(auto s, co_await SetSuspended(req.params["id"], false));
  co_return Response::FromJson(200, SessionView(s));
}

// running -> suspended (freeze the sandbox) or suspended -> running (thaw it); the backend
// acts first, so the stored state never claims a sandbox is frozen when it is not.
awaitable<Result<store::Session>> ControlPlane::SetSuspended(std::string id, bool suspend) {
  const SessionState from = suspend ? SessionState::kRunning : SessionState::kSuspended;
  const SessionState to = suspend ? SessionState::kSuspended : SessionState::kRunning;
  const std::string op = suspend ? "suspend" : "resume";
  auto s = co_await RunBlocking(pool_, [this, &id] { return store_->GetSession(id); });
  if (!s) co_return s;
  if (s->state != from) {
    co_return Errorf(ErrorCode::kConflict, "cannot {} a session that is {}", op,
                     store::StateName(s->state));
  }
  if (!Owns(*s)) {
    co_return Errorf(ErrorCode::kConflict,
                     "the session's sandbox runs on replica \"{}\"; send the {} there", s->node,
                     op);
  }
  auto* backend = backends_->Find(s->backend);
  std::optional<std::string> resumed_handle;
  if (backend && !s->sandbox_handle.empty()) {
    auto st = co_await RunBlocking(
        sandbox_pool_, [&backend, &h = s->sandbox_handle, suspend, &resumed_handle]() -> Status {
          if (suspend) return backend->Suspend(h);
          AIRLOCK_ASSIGN_OR_RETURN(resumed_handle, backend->Resume(h));
          return Ok();
        });
    if (!st) {
      metrics_->sandbox_errors.With({s->backend, op}).Inc();
      // A suspended sandbox that is gone (the host rebooted, someone removed it) is replaced
      // on resume: the session's conversation is in the store.
      auto gone = co_await RunBlocking(
          sandbox_pool_, [&backend, &h = s->sandbox_handle] { return backend->Inspect(h); });
      if (!suspend && gone &&
          (gone->state == sandbox::SandboxState::kMissing ||
           gone->state == sandbox::SandboxState::kExited)) {
        BusyMark mark(sandbox_busy_, id);
        if (mark.held()) co_await RestartSandbox(*s, "the suspended sandbox was gone at resume");
        co_return co_await RunBlocking(pool_, [this, &id] { return store_->GetSession(id); });
      }
      co_return std::unexpected(st.error());
    }
  }
  // A backend that resumed from a snapshot may have made a new sandbox handle.
  store::StateChange change{{from}, to, std::nullopt, false, resumed_handle};
  auto out =
      co_await RunBlocking(pool_, [this, &id, &change] { return store_->ChangeState(id, change); });
  if (out) events_.Notify(id);
  co_return out;
}

awaitable<Response> ControlPlane::DeleteSession(Request& req) {
  std::string id = req.params["id"];
  auto ended = co_await EndSession(id, SessionState::kKilled, "killed by the operator");
  if (!ended && ended.error().code == ErrorCode::kConflict) {
    // Already over: deleting is idempotent.
    AIRLOCK_CO_ASSIGN(auto s,
                      co_await RunBlocking(pool_, [this, &id] { return store_->GetSession(id); }));
    co_return Response::FromJson(200, SessionView(s));
  }
  AIRLOCK_CO_ASSIGN(auto s, std::move(ended));
  co_return Response::FromJson(200, SessionView(s));
}

awaitable<Response> ControlPlane::GetLogs(Request& req) {
  std::string id = req.params["id"];
  AIRLOCK_CO_ASSIGN(auto s,
                    co_await RunBlocking(pool_, [this, &id] { return store_->GetSession(id); }));
  std::optional<std::string> follow = req.Query("follow");
  if (!follow || *follow == "0" || *follow == "false") {
    auto* backend = backends_->Find(s.backend);
    if (!backend || s.sandbox_handle.empty()) co_return Response::Text(200, "");
    AIRLOCK_CO_ASSIGN(auto text, co_await RunBlocking(pool_, [&backend, &h = s.sandbox_handle] {
                        return backend->Logs(h, 0, kMaxLogResponse);
                      }));
    co_return Response::Text(200, std::move(text));
  }
  Response res = Response::Text(200, "");
  res.headers.emplace_back("X-Accel-Buffering", "no");
  res.stream = [this, id](ChunkSink& sink) -> awaitable<void> { co_await FollowLogs(id, sink); };
  co_return res;
}

// Streams the sandbox's log as it grows, until the session has ended and everything
// written before that has been sent. The log is a file the sandbox appends to, so this
// polls it (4 times a second) rather than waiting on a notification.
awaitable<void> ControlPlane::FollowLogs(std::string id, ChunkSink& sink) {
  constexpr size_t kChunk = 64 << 10;
  int64_t offset = 0;
  asio::steady_timer timer(io_);
  for (bool last_pass = false;;) {
    auto s = co_await RunBlocking(pool_, [this, &id] { return store_->GetSession(id); });
    if (!s) break;
    bool ended = store::IsTerminal(s->state);
    sandbox::Backend* backend = backends_->Find(s->backend);
    if (backend && !s->sandbox_handle.empty()) {
      for (;;) {
        auto chunk = co_await RunBlocking(pool_, [&backend, &h = s->sandbox_handle, &offset] {
          return backend->Logs(h, offset, kChunk);
        });
        if (!chunk || chunk->empty()) break;
        offset += static_cast<int64_t>(chunk->size());
        if (!co_await sink.Write(*chunk)) co_return;
        if (chunk->size() < kChunk) break;
      }
    }
    if (last_pass || operator_server_->draining()) break;
    last_pass = ended;  // one more read after the end: the sandbox's last words
    boost::system::error_code ec;
    timer.expires_after(std::chrono::milliseconds(250));
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
}

// ---------------------------------------------------------------- sandbox routes

awaitable<Response> ControlPlane::Inbox(Request& req) {
  AIRLOCK_CO_ASSIGN(auto s, co_await AuthenticateSandbox(req));
  int64_t wait = 0;
  if (auto w = req.Query("wait")) {
    auto n = ParseNonNegative(*w);
    if (!n)
      co_return Response::FromError(400, "invalid_argument",
                                    "?wait= must be a non-negative integer (seconds)");
    wait = std::min<int64_t>(*n, config_.long_poll_max_s);
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(wait);
  auto& gauge = metrics_->long_polls.With({});
  for (;;) {
    uint64_t version = inbox_.Version(s.id);
    // Taking the inbox appends to the conversation: not while an LLM call builds on it.
    if (co_await conversations_.Acquire(s.id, ConversationLocks::Holder::kInbox, deadline) !=
        ConversationLocks::Holder::kNone) {
      break;
    }
    auto taken =
        co_await RunBlocking(pool_, [this, &s] { return store_->TakeInbox(s.id, s.token_hash); });
    conversations_.Release(s.id);
    AIRLOCK_CO_ASSIGN(auto msgs, std::move(taken));
    if (!msgs.empty()) {
      idle_since_.erase(s.id);  // there is work again
      Json arr = Json::array();
      for (const auto& m : msgs) arr.push_back(m.body);
      co_return Response::FromJson(200, Json{{"messages", arr}});
    }
    if (std::chrono::steady_clock::now() >= deadline || sandbox_server_->draining()) break;
    gauge.Add(1);
    idle_since_.emplace(s.id, clock_->NowMillis());  // kept if it was already waiting
    ++parked_polls_[s.id];
    bool woke = co_await inbox_.Wait(s.id, version, deadline);
    if (--parked_polls_[s.id] <= 0) parked_polls_.erase(s.id);
    gauge.Add(-1);
    if (!woke) break;
    // Woken: a message, the session's end, or a drain. Find out which.
    AIRLOCK_CO_ASSIGN(auto now, co_await RunBlocking(
                                    pool_, [this, &id = s.id] { return store_->GetSession(id); }));
    if (store::IsTerminal(now.state)) {
      co_return Response::FromError(
          410, "gone", fmt::format("the session has ended ({})", store::StateName(now.state)));
    }
    if (now.token_hash != s.token_hash) {
      // A fresh sandbox took over while this one waited (it died; this is its dangling poll).
      co_return Response::FromError(401, "unauthenticated",
                                    "invalid, expired or revoked session token");
    }
  }
  Response r;
  r.status = 204;
  r.content_type = "application/json";
  co_return r;
}

// GET /v1/usage[?since=&until=]: metered LLM calls, in total and per model alias. Times are
// RFC 3339 (as the API prints them) or milliseconds since the epoch.
awaitable<Response> ControlPlane::GetUsage(Request& req) {
  store::UsageQuery q;
  for (auto [name, field] : {std::pair{"since", &q.since}, std::pair{"until", &q.until}}) {
    auto v = req.Query(name);
    if (!v) continue;
    if (auto n = ParseNonNegative(*v)) {
      *field = *n;
    } else if (auto t = ParseTimestamp(*v)) {
      *field = *t;
    } else {
      co_return Response::FromError(
          400, "invalid_argument",
          fmt::format("?{}= must be an RFC 3339 time or milliseconds since the epoch", name));
    }
  }
  AIRLOCK_CO_ASSIGN(auto rep,
                    co_await RunBlocking(pool_, [this, &q] { return store_->GetUsage(q); }));
  co_return Response::FromJson(200, UsageReportView(rep));
}

awaitable<Response> ControlPlane::PresignFile(Request& req) {
  AIRLOCK_CO_ASSIGN(auto s, co_await AuthenticateSandbox(req));
  co_return co_await files_->Presign(req, s);
}

awaitable<Response> ControlPlane::ListFiles(Request& req) { co_return co_await files_->List(req); }

awaitable<Response> ControlPlane::DownloadFile(Request& req) {
  co_return co_await files_->OperatorDownload(req);
}

awaitable<Response> ControlPlane::LlmChat(Request& req) {
  AIRLOCK_CO_ASSIGN(auto s, co_await AuthenticateSandbox(req));
  co_return co_await llm_->Chat(req, std::move(s));
}

awaitable<Response> ControlPlane::SandboxEvent(Request& req) {
  // The gate identified the token already: the cache answers again without a coroutine frame.
  std::optional<Result<SandboxIdentity>> identified = IdentifyCached(req);
  if (!identified) identified = co_await IdentifySandbox(req);
  AIRLOCK_CO_ASSIGN(SandboxIdentity who, std::move(*identified));
  const std::string& id = who.session_id;
  if (static_cast<int64_t>(req.msg.body().size()) > config_.max_event_bytes) {
    co_return Response::FromError(
        413, "payload_too_large",
        fmt::format("events are limited to {} bytes", config_.max_event_bytes));
  }
  AIRLOCK_CO_ASSIGN(Json body, ParseJsonObject(req.msg.body()));
  AIRLOCK_CO_TRY(RejectUnknownKeys(body, {"type", "data"}, "event"));
  AIRLOCK_CO_ASSIGN(std::string type, RequiredString(body, "type"));
  AIRLOCK_CO_TRY(ValidateEventType(type));
  Json data = Json::object();
  if (auto it = body.find("data"); it != body.end() && !it->is_null()) {
    if (!it->is_object())
      co_return Response::FromError(400, "invalid_argument", "\"data\" must be an object");
    data = std::move(*it);
  }
  // What init reports when the agent exits goes into the session's result even when the
  // agent spent the session's rate or quota first (one note per session, kept in memory).
  if (type == "agent.exited") agent_exits_[id] = data;
  if (auto retry_after = event_rate_.Take(id, EventRateLimiter::Clock::now())) {
    event_refusals_.With({"rate"}).Inc();
    Response r = Response::FromError(429, "rate_limited",
                                     fmt::format("events are limited to {} per second per session, "
                                                 "bursts of {} (events.rate_per_s, events.burst)",
                                                 config_.events.rate_per_s, config_.events.burst));
    r.headers.emplace_back("Retry-After", std::to_string(*retry_after));
    co_return r;
  }
  // The token is checked again in the transaction that appends: the cache, or a read just
  // before, may predate a fresh sandbox taking over (its restart replaces the token).
  AIRLOCK_CO_ASSIGN(auto appended,
                    co_await sandbox_events_.Append(id, type, std::move(data), who.token_hash));
  if (!appended.event) {
    event_refusals_.With({"quota"}).Inc();
    if (appended.noticed) {
      log::Warn("session event quota reached",
                {{"session", id}, {"quota", appended.exceeded}, {"limit", appended.limit}});
      events_.Notify(id);
    }
    co_return EventQuotaExceeded(appended);
  }
  if (!sandbox_events_total_) sandbox_events_total_ = &metrics_->events.With({"sandbox"});
  sandbox_events_total_->Inc();
  events_.Notify(id);
  if (type == "agent.exited") reconciler_->Soon();
  // What Response::FromJson(202, {"seq": n}) writes, without building and dumping a document.
  Response accepted;
  accepted.status = 202;
  accepted.body = fmt::format("{{\"seq\":{}}}\n", appended.event->seq);
  co_return accepted;
}

awaitable<Response> ControlPlane::History(Request& req) {
  AIRLOCK_CO_ASSIGN(auto s, co_await AuthenticateSandbox(req));
  AIRLOCK_CO_ASSIGN(auto msgs, co_await RunBlocking(pool_, [this, &id = s.id] {
                      return store_->ListMessages(id, /*include_pending=*/false);
                    }));
  Json arr = Json::array();
  for (const auto& m : msgs) arr.push_back(m.body);
  co_return Response::FromJson(200, Json{{"messages", arr}});
}

awaitable<Response> ControlPlane::Finish(Request& req) {
  AIRLOCK_CO_ASSIGN(auto s, co_await AuthenticateSandbox(req));
  AIRLOCK_CO_ASSIGN(Json body, ParseJsonObject(req.msg.body()));
  AIRLOCK_CO_TRY(RejectUnknownKeys(body, {"status", "result"}, "finish"));
  AIRLOCK_CO_ASSIGN(std::string status, RequiredString(body, "status"));
  SessionState to;
  if (status == "succeeded")
    to = SessionState::kSucceeded;
  else if (status == "failed")
    to = SessionState::kFailed;
  else
    co_return Response::FromError(400, "invalid_argument",
                                  "\"status\" must be \"succeeded\" or \"failed\"");
  AIRLOCK_CO_ASSIGN(auto result, OptionalString(body, "result"));
  if (result && result->size() > 64 * 1024) {
    co_return Response::FromError(413, "payload_too_large", "\"result\" exceeds 65536 bytes");
  }
  // Stored as text, not JSON: PostgreSQL's text cannot hold a NUL, so no store takes one.
  if (result && result->find('\0') != std::string::npos) {
    co_return Response::FromError(400, "invalid_argument",
                                  "\"result\" must not contain NUL characters (\\u0000)");
  }
  AIRLOCK_CO_ASSIGN(auto ended, co_await EndSession(s.id, to, result));
  co_return Response::FromJson(200,
                               Json{{"id", ended.id}, {"state", store::StateName(ended.state)}});
}

}  // namespace airlock::controlplane
