#include "controlplane/identity.h"

#include "common/blocking.h"
#include "common/crypto.h"
#include "common/log.h"
#include "controlplane/pools.h"
#include "controlplane/validation.h"

namespace airlock::controlplane {

IdentityService::IdentityService(store::Store& store, asio::thread_pool& pool, std::string node,
                                 Notifier& events, metrics::Registry& registry, PoolManager* pools,
                                 WorkFn work)
    : store_(store),
      pool_(pool),
      node_(std::move(node)),
      events_(events),
      requests_(registry.AddCounter(
          "airlock_identity_requests_total",
          "Requests of sandboxes for their identity (GET /sandbox/v1/identity), by outcome.",
          {"outcome"})),
      pools_(pools),
      work_(std::move(work)) {}

Response IdentityService::Refuse(const char* reason, unsigned status, std::string_view code,
                                 std::string_view message) {
  requests_.With({reason}).Inc();
  return Response::FromError(status, code, message);
}

awaitable<Response> IdentityService::Fetch(const Request& req) {
  // Over TCP anyone with a route to the listener could ask; a sandbox's own socket is bound
  // to its session when the control plane creates it.
  if (req.bound_session.empty()) {
    co_return Refuse("not_a_channel", 403, "permission_denied",
                     "the identity is handed out only on a sandbox's own socket");
  }
  std::string id = req.bound_session;
  if (PoolManager::IsPoolSandboxId(id)) {
    // A warm pool's sandbox: whom it serves is known once a session claims it. Held for less
    // than init's 10 s read timeout.
    // (Not a co_await inside ?:, which GCC 12 miscompiles: the result is destroyed twice.)
    std::optional<std::string> claimed;
    if (pools_) {
      claimed = co_await pools_->AwaitClaim(
          id, std::chrono::steady_clock::now() + std::chrono::seconds(5));
    }
    if (!claimed) {
      requests_.With({"unclaimed"}).Inc();
      co_return Response::Text(204, "");
    }
    id = *claimed;
  }
  // A session that took a pool's sandbox was created running with its token a moment ago,
  // on this replica: the token is handed out here, once, with no store to ask.
  if (pools_) {
    if (auto pending = pools_->TakeIdentity(id)) {
      co_return co_await Deliver(pending->session, pending->token, std::move(pending->files));
    }
  }
  auto s = co_await RunBlocking(pool_, [this, &id] { return store_.GetSession(id); });
  if (!s) co_return Response::FromError(s.error());
  if (store::IsTerminal(s->state)) {
    co_return Refuse("ended", 410, "gone",
                     fmt::format("the session has ended ({})", store::StateName(s->state)));
  }
  // Only the node that runs the sandbox answers for it: a replica that lost the session to
  // another (its socket not yet swept) must not issue a token the new node's sandbox lacks.
  if (!s->node.empty() && s->node != node_) {
    co_return Refuse("moved", 409, "conflict",
                     fmt::format("the session's sandbox runs on replica \"{}\"", s->node));
  }
  if (!s->token_hash.empty()) {
    log::Warn("a sandbox asked again for the identity it was given",
              {{"session", id}, {"request_id", req.request_id}});
    co_return Refuse("again", 409, "conflict", "this sandbox's identity was already handed out");
  }
  Secret token = NewToken(kSessionTokenPrefix);
  std::string hash = Sha256Hex(token.Reveal());
  auto issued = co_await RunBlocking(
      pool_, [this, &id, &node = s->node, &hash] { return store_.IssueToken(id, node, hash); });
  if (!issued) {
    if (issued.error().code == ErrorCode::kConflict) {
      // Another request got it first, the session ended, was suspended or moved meanwhile.
      co_return Refuse("again", 409, "conflict", "this sandbox's identity is not available");
    }
    co_return Response::FromError(issued.error());
  }
  events_.Notify(id);
  co_return co_await Deliver(*issued, token);
}

awaitable<Response> IdentityService::Deliver(const store::Session& s, const Secret& token,
                                             std::optional<Json> files) {
  Json answer = {{"session_id", s.id}, {"token", token.Reveal()}};
  if (work_) {
    // Without its work init asks GET /sandbox/v1/work itself: the agent still starts.
    auto work = co_await work_(s, std::move(files));
    if (work) {
      answer["work"] = std::move(*work);
    } else {
      log::Warn("the identity goes without the session's work",
                {{"session", s.id}, {"error", work.error().message}});
    }
  }
  requests_.With({"delivered"}).Inc();
  log::Info("identity handed to the sandbox", {{"session", s.id}});
  Response r = Response::FromJson(200, answer);
  r.headers.emplace_back("Cache-Control", "no-store");
  co_return r;
}

}  // namespace airlock::controlplane
