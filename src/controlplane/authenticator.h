#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/asio.h"
#include "common/metrics.h"
#include "controlplane/config.h"
#include "controlplane/http.h"
#include "controlplane/token_cache.h"
#include "store/store.h"

namespace airlock::controlplane {

// Who a request comes from: an operator (a key of the store's list) or a session's sandbox
// (its session token), and the gates of both listeners, which refuse a request without valid
// credentials before its body is read, size its body limit and charge it to its session.
//
// Security: only hashes of keys and tokens are kept or compared; operator keys are compared
// in constant time against every known key.
//
// Threading: io thread only; store reads go to the worker pool.
class Authenticator {
 public:
  enum class SandboxActivity {
    kInit,     // init fetching the session's work (/sandbox/v1/work...): no agent yet
    kWaiting,  // the agent waiting on its inbox: it runs, but the session may be idle
    kWorking,  // anything else: the agent is at work, so the session is not idle
  };
  struct Deps {
    const Config& config;
    store::Store& store;
    asio::thread_pool& pool;
    // The routes of each listener: a gate sizes a request's body by its route.
    const Router& operator_routes;
    const Router& sandbox_routes;
    metrics::Family<metrics::Counter>& auth_failures;
    // Called for every authenticated sandbox request, with its session's id and what the
    // request says about the session's agent.
    std::function<void(const std::string& session_id, SandboxActivity)> on_sandbox_request;
  };
  explicit Authenticator(Deps d);

  // Creates the operator key file in the home if there is none, and makes sure the store
  // holds the hash of it and of every key of auth.operator_keys. Blocking: call before the
  // listeners run.
  Status EnsureOperatorKeys();

  // The gates (HttpServer::SetGate) of the operator and the sandbox listener.
  awaitable<Admission> AdmitOperator(Request& req);
  awaitable<Admission> AdmitSandbox(Request& req);
  // Whether the request carries a known operator key.
  Result<void> CheckOperator(const Request& req) const;
  // The live session whose token the request presents, after CheckSandboxClaims.
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

  // Which session each recently seen sandbox token belongs to. Whatever revokes or replaces
  // a token forgets its session here.
  TokenCache& tokens() { return tokens_; }

 private:
  bool KnownOperatorKey(std::string_view token) const;
  Status EnsureOperatorKey(const store::OperatorKey& wanted);
  awaitable<void> RefreshOperatorKeys();
  // The SHA-256 (hex) of `token`, the request's bearer token, computed once per request.
  static const std::string& TokenHash(const Request& req, std::string_view token);
  // What a request says besides its token (the socket it came through, a SESSION_ID header),
  // held against the token's session `id`.
  Result<void> CheckSandboxClaims(const Request& req, const std::string& id);

  Deps d_;
  std::vector<std::string> operator_key_hashes_;
  TokenCache tokens_;
  // When the key hashes were last read from the store.
  std::chrono::steady_clock::time_point operator_keys_read_at_{};
  static constexpr std::chrono::seconds kOperatorKeyRefresh{1};
};

}  // namespace airlock::controlplane
