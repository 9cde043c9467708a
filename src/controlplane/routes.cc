// The HTTP routes of docs/api.md: operator routes and sandbox routes. Each handler
// validates its input completely before touching the store (the request bodies into the typed
// values of requests.h), leaves what changes a session to SessionService, renders with
// views.h, and answers every failure with the JSON error shape (Response::FromError).
#include <algorithm>

#include <fmt/compile.h>

#include "common/blocking.h"
#include "common/log.h"
#include "common/time_util.h"
#include "controlplane/control_plane.h"
#include "controlplane/demo_site.h"
#include "controlplane/openapi.h"
#include "controlplane/readiness.h"
#include "controlplane/requests.h"
#include "controlplane/validation.h"
#include "controlplane/views.h"
#include "net/handler_util.h"

namespace airlock::controlplane {

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
      if (auto ok = auth_->CheckOperator(req); !ok) co_return Response::FromError(ok.error());
      if (auto it = req.params.find("id");
          it != req.params.end() && !PlausibleSessionId(it->second)) {
        co_return Response::FromError(Error{ErrorCode::kNotFound, "no such session"});
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
  // Streamed to disk (ControlPlane's constructor), bounded by files.max_file_mb.
  r.Add(http::verb::put, "/v1/sessions/{id}/files/{name}", authed(&ControlPlane::UploadFile));
  r.Add(http::verb::get, "/v1/usage", authed(&ControlPlane::GetUsage));
  // POST /v1/admin/gc (docs/api.md): applies the retention policy now.
  r.Add(http::verb::post, "/v1/admin/gc", [this](Request& req) -> awaitable<Response> {
    if (auto ok = auth_->CheckOperator(req); !ok) co_return Response::FromError(ok.error());
    AIRLOCK_CO_ASSIGN(Json body, ParseJsonObject(req.msg.body().empty() ? std::string_view("{}")
                                                                        : req.msg.body()));
    AIRLOCK_CO_ASSIGN(GcRequest gc, ParseGcRequest(body, config_.retention));
    if (!retention_)
      co_return Response::FromError(
          Error{ErrorCode::kUnavailable, "the control plane is starting"});
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
  // The LLM routes, for an authenticated session: the native one, and the faces that speak
  // the providers' own APIs, so that clients configured with base_url = $CONTROL_PLANE_URL/v1
  // (OpenAI's) or $CONTROL_PLANE_URL (Anthropic's) and api_key = $SESSION_TOKEN work
  // unchanged. A face's client re-sends the whole conversation: the chat route's body limit.
  using LlmHandler = awaitable<Response> (LlmProxy::*)(Request&, store::Session);
  for (const auto& [path, handler] :
       {std::pair<const char*, LlmHandler>{"/sandbox/v1/llm/chat", &LlmProxy::Chat},
        {"/v1/chat/completions", &LlmProxy::ChatCompletions},
        {"/v1/responses", &LlmProxy::Responses},
        {"/v1/messages", &LlmProxy::Messages}}) {
    r.Add(
        http::verb::post, path,
        [this, handler](Request& q) -> awaitable<Response> {
          AIRLOCK_CO_ASSIGN(auto s, co_await auth_->AuthenticateSandbox(q));
          co_return co_await (llm_.get()->*handler)(q, std::move(s));
        },
        RouteOptions{config_.limits.max_body_bytes});
  }
  r.Add(http::verb::get, "/v1/models", [this](Request& q) -> awaitable<Response> {
    AIRLOCK_CO_ASSIGN(auto s, co_await auth_->AuthenticateSandbox(q));
    co_return llm_->Models(s);
  });
  r.Add(http::verb::post, "/sandbox/v1/files/presign",
        [this](Request& q) { return PresignFile(q); });
  // Work going in: the session's variables and files, which airlock-init hands the agent (in
  // its environment, and copied into its working directory) when it starts it.
  // The demo site, for the scripted demo model's browsing script (demo_site.h).
  r.Add(http::verb::get, "/sandbox/v1/demo/{page}", [](Request& q) -> awaitable<Response> {
    co_return DemoSitePage(q.params["page"], q.query);
  });
  r.Add(http::verb::get, "/sandbox/v1/work", [this](Request& q) -> awaitable<Response> {
    AIRLOCK_CO_ASSIGN(auto s, co_await auth_->AuthenticateSandbox(q));
    co_return co_await files_->SandboxWork(s, egress_->SandboxWork(s));
  });
  for (http::verb m : {http::verb::get, http::verb::head}) {
    r.Add(m, "/sandbox/v1/work/files/{name}", [this](Request& q) -> awaitable<Response> {
      AIRLOCK_CO_ASSIGN(auto s, co_await auth_->AuthenticateSandbox(q));
      co_return co_await files_->SandboxDownload(q, s);
    });
  }
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
  AIRLOCK_CO_ASSIGN(CreateSessionRequest create, ParseCreateSession(body, config_));
  AIRLOCK_CO_ASSIGN(auto s, co_await sessions_->Create(std::move(create)));
  co_return Response::FromJson(201, SessionView(s));
}

awaitable<Response> ControlPlane::ListSessions(Request& req) {
  store::ListSessionsQuery q;
  if (auto state = req.Query("state")) {
    q.state = store::ParseState(*state);
    if (!q.state)
      co_return Response::FromError(Error{ErrorCode::kInvalidArgument, "unknown ?state="});
  }
  if (auto limit = req.Query("limit")) {
    auto n = ParseNonNegative(*limit);
    if (!n || *n < 1 || *n > 1000)
      co_return Response::FromError(Error{ErrorCode::kInvalidArgument, "?limit= must be 1-1000"});
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
  AIRLOCK_CO_ASSIGN(std::string content, ParsePostMessage(body, config_));
  AIRLOCK_CO_ASSIGN(int64_t msg_id, co_await sessions_->PostMessage(id, std::move(content)));
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
      co_return Response::FromError(
          Error{ErrorCode::kInvalidArgument, "?after= must be a non-negative integer"});
    after = *n;
  }
  AIRLOCK_CO_ASSIGN(auto s,
                    co_await RunBlocking(pool_, [this, &id] { return store_->GetSession(id); }));
  if (req.Header("Accept").find("application/json") != std::string_view::npos) {
    int limit = 1000;
    if (auto l = req.Query("limit")) {
      auto n = ParseNonNegative(*l);
      if (!n || *n < 1 || *n > 10000)
        co_return Response::FromError(
            Error{ErrorCode::kInvalidArgument, "?limit= must be 1-10000"});
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
  // The body is optional: no body pauses, as before there were tiers.
  Json body = Json::object();
  if (!req.msg.body().empty()) {
    AIRLOCK_CO_ASSIGN(body, ParseJsonObject(req.msg.body()));
  }
  AIRLOCK_CO_ASSIGN(store::SuspendTier tier, ParseSuspend(body));
  AIRLOCK_CO_ASSIGN(auto s, co_await sessions_->SetSuspended(req.params["id"], tier));
  co_return Response::FromJson(200, SessionView(s));
}

awaitable<Response> ControlPlane::Resume(Request& req) {
  AIRLOCK_CO_ASSIGN(
      auto s, co_await sessions_->SetSuspended(req.params["id"], store::SuspendTier::kActive));
  co_return Response::FromJson(200, SessionView(s));
}

awaitable<Response> ControlPlane::DeleteSession(Request& req) {
  AIRLOCK_CO_ASSIGN(auto s, co_await sessions_->Cancel(req.params["id"]));
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
  AIRLOCK_CO_ASSIGN(auto s, co_await auth_->AuthenticateSandbox(req));
  int64_t wait = 0;
  if (auto w = req.Query("wait")) {
    auto n = ParseNonNegative(*w);
    if (!n) {
      co_return Response::FromError(
          Error{ErrorCode::kInvalidArgument, "?wait= must be a non-negative integer (seconds)"});
    }
    wait = std::min<int64_t>(*n, config_.long_poll_max_s);
  }
  AIRLOCK_CO_ASSIGN(auto msgs, co_await sessions_->WaitForInbox(std::move(s), wait));
  if (!msgs.empty()) co_return Response::FromJson(200, MessageBodiesView(msgs));
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
      co_return Response::FromError(Error{
          ErrorCode::kInvalidArgument,
          fmt::format("?{}= must be an RFC 3339 time or milliseconds since the epoch", name)});
    }
  }
  AIRLOCK_CO_ASSIGN(auto rep,
                    co_await RunBlocking(pool_, [this, &q] { return store_->GetUsage(q); }));
  co_return Response::FromJson(200, UsageReportView(rep));
}

awaitable<Response> ControlPlane::PresignFile(Request& req) {
  AIRLOCK_CO_ASSIGN(auto s, co_await auth_->AuthenticateSandbox(req));
  co_return co_await files_->Presign(req, s);
}

awaitable<Response> ControlPlane::ListFiles(Request& req) { co_return co_await files_->List(req); }

awaitable<Response> ControlPlane::DownloadFile(Request& req) {
  co_return co_await files_->OperatorDownload(req);
}

awaitable<Response> ControlPlane::UploadFile(Request& req) {
  co_return co_await files_->OperatorUpload(req);
}

awaitable<Response> ControlPlane::SandboxEvent(Request& req) {
  // The gate identified the token already: the cache answers again without a coroutine frame.
  std::optional<Result<Authenticator::SandboxIdentity>> identified = auth_->IdentifyCached(req);
  if (!identified) identified = co_await auth_->IdentifySandbox(req);
  AIRLOCK_CO_ASSIGN(Authenticator::SandboxIdentity who, std::move(*identified));
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
      co_return Response::FromError(
          Error{ErrorCode::kInvalidArgument, "\"data\" must be an object"});
    data = std::move(*it);
  }
  // What init reports when the agent exits goes into the session's result even when the
  // agent spent the session's rate or quota first (one note per session, kept in memory).
  if (type == "agent.exited") sessions_->NoteAgentExit(id, data);
  if (auto retry_after = event_rate_.Take(id, EventRateLimiter::Clock::now())) {
    event_refusals_.With({"rate"}).Inc();
    co_return Response::FromError(
        Error{ErrorCode::kResourceExhausted,
              fmt::format("events are limited to {} per second per session, "
                          "bursts of {} (events.rate_per_s, events.burst)",
                          config_.events.rate_per_s, config_.events.burst),
              "rate_limited", static_cast<int64_t>(*retry_after)});
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
  accepted.body = fmt::format(FMT_COMPILE("{{\"seq\":{}}}\n"), appended.event->seq);
  co_return accepted;
}

awaitable<Response> ControlPlane::History(Request& req) {
  AIRLOCK_CO_ASSIGN(auto s, co_await auth_->AuthenticateSandbox(req));
  AIRLOCK_CO_ASSIGN(auto msgs, co_await RunBlocking(pool_, [this, &id = s.id] {
                      return store_->ListMessages(id, /*include_pending=*/false);
                    }));
  co_return Response::FromJson(200, MessageBodiesView(msgs));
}

awaitable<Response> ControlPlane::Finish(Request& req) {
  AIRLOCK_CO_ASSIGN(auto s, co_await auth_->AuthenticateSandbox(req));
  AIRLOCK_CO_ASSIGN(Json body, ParseJsonObject(req.msg.body()));
  AIRLOCK_CO_ASSIGN(FinishRequest finish, ParseFinish(body));
  AIRLOCK_CO_ASSIGN(auto ended, co_await sessions_->Finish(s.id, s.token_hash, std::move(finish)));
  co_return Response::FromJson(200,
                               Json{{"id", ended.id}, {"state", store::StateName(ended.state)}});
}

}  // namespace airlock::controlplane
