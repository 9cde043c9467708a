#include "controlplane/authenticator.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "common/blocking.h"
#include "common/crypto.h"
#include "common/log.h"
#include "common/time_util.h"
#include "controlplane/validation.h"

namespace airlock::controlplane {

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

// A sandbox's session token: as a bearer token, or in x-api-key as Anthropic's clients send
// their key.
std::string_view SandboxToken(const Request& req) {
  std::string_view token = BearerToken(req);
  return token.empty() ? req.Header("x-api-key") : token;
}

}  // namespace

Authenticator::Authenticator(Deps d) : d_(std::move(d)), tokens_(MakeTokenCache(d_.config)) {}

Status Authenticator::EnsureOperatorKeys() {
  std::string key_path = d_.config.home + "/operator.key";
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
  for (const auto& [name, k] : d_.config.operator_keys) {
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
  AIRLOCK_ASSIGN_OR_RETURN(auto stored, d_.store.ListOperatorKeys());
  operator_key_hashes_.clear();
  for (const auto& s : stored) operator_key_hashes_.push_back(s.hash);
  return Ok();
}

// Replicas that start together with the same configuration all add the same keys: the
// insert of all but one fails on the name, and then the key is there, added by another.
Status Authenticator::EnsureOperatorKey(const store::OperatorKey& wanted) {
  for (int attempt = 0;; ++attempt) {
    AIRLOCK_ASSIGN_OR_RETURN(auto stored, d_.store.ListOperatorKeys());
    store::OperatorKey k = wanted;
    for (const auto& s : stored) {
      if (s.hash == k.hash) return Ok();
      // A name may be taken by an older key (say the key file was replaced): keep both.
      if (s.name == k.name) k.name = k.name + "-" + HexEncode(RandomBytes(3));
    }
    auto added = d_.store.AddOperatorKey(k);
    if (added || added.error().code != ErrorCode::kConflict || attempt == 3) return added;
  }
}

awaitable<void> Authenticator::RefreshOperatorKeys() {
  auto now = std::chrono::steady_clock::now();
  if (now - operator_keys_read_at_ < kOperatorKeyRefresh) co_return;
  operator_keys_read_at_ = now;
  auto stored = co_await RunBlocking(d_.pool, [this] { return d_.store.ListOperatorKeys(); });
  if (!stored) {
    log::Warn("cannot re-read the operator keys", {{"error", stored.error().message}});
    co_return;
  }
  operator_key_hashes_.clear();
  for (const auto& s : *stored) operator_key_hashes_.push_back(s.hash);
}

awaitable<Admission> Authenticator::AdmitOperator(Request& req) {
  Admission a;
  auto route = d_.operator_routes.Find(req);
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

awaitable<Admission> Authenticator::AdmitSandbox(Request& req) {
  Admission a;
  auto route = d_.sandbox_routes.Find(req);
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

bool Authenticator::KnownOperatorKey(std::string_view token) const {
  std::string hash = Sha256Hex(token);
  // Compare against every key without stopping early, so timing says nothing about which
  // key (if any) matched.
  bool match = false;
  for (const auto& h : operator_key_hashes_) match |= ConstantTimeEquals(hash, h);
  return match;
}

Result<void> Authenticator::CheckOperator(const Request& req) const {
  std::string_view token = BearerToken(req);
  if (token.empty()) {
    d_.auth_failures.With({"operator"}).Inc();
    return MakeError(ErrorCode::kUnauthenticated,
                     "missing \"Authorization: Bearer <operator key>\"");
  }
  if (!KnownOperatorKey(token)) {
    d_.auth_failures.With({"operator"}).Inc();
    return MakeError(ErrorCode::kUnauthenticated, "invalid operator key");
  }
  return Ok();
}

awaitable<Result<store::Session>> Authenticator::AuthenticateSandbox(const Request& req) {
  std::string_view token = SandboxToken(req);
  auto refuse = [&](std::string msg) -> Result<store::Session> {
    d_.auth_failures.With({"sandbox"}).Inc();
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
      co_await RunBlocking(d_.pool, [this, &hash] { return d_.store.GetSessionByTokenHash(hash); });
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

const std::string& Authenticator::TokenHash(const Request& req, std::string_view token) {
  if (req.bearer_hash.empty()) req.bearer_hash = Sha256Hex(token);
  return req.bearer_hash;
}

std::optional<Result<Authenticator::SandboxIdentity>> Authenticator::IdentifyCached(
    const Request& req) {
  std::string_view token = SandboxToken(req);
  if (!tokens_.enabled() || !token.starts_with(kSessionTokenPrefix) || token.size() > 128)
    return std::nullopt;
  const std::string& hash = TokenHash(req, token);
  auto id = tokens_.Find(hash, TokenCache::Clock::now());
  if (!id) return std::nullopt;
  if (auto claims = CheckSandboxClaims(req, *id); !claims)
    return Result<SandboxIdentity>(std::unexpected(claims.error()));
  return Result<SandboxIdentity>(SandboxIdentity{std::move(*id), hash});
}

awaitable<Result<Authenticator::SandboxIdentity>> Authenticator::IdentifySandbox(
    const Request& req) {
  if (auto id = IdentifyCached(req)) co_return std::move(*id);
  auto s = co_await AuthenticateSandbox(req);
  if (!s) co_return std::unexpected(s.error());
  co_return SandboxIdentity{std::move(s->id), std::move(s->token_hash)};
}

Result<void> Authenticator::CheckSandboxClaims(const Request& req, const std::string& id) {
  // A per-session socket serves its own session only: a token that leaked into another
  // sandbox is useless there.
  if (!req.bound_session.empty() && req.bound_session != id) {
    d_.auth_failures.With({"sandbox"}).Inc();
    return MakeError(ErrorCode::kUnauthenticated,
                     "this token belongs to another session than this socket");
  }
  if (std::string_view claimed = req.Header("SESSION_ID"); !claimed.empty() && claimed != id) {
    d_.auth_failures.With({"sandbox"}).Inc();
    return MakeError(ErrorCode::kPermissionDenied,
                     "SESSION_ID header does not match the token's session");
  }
  // Anything but init's own requests and waiting on the inbox is work: the session is not
  // idle.
  SandboxActivity activity = SandboxActivity::kWorking;
  if (req.path == "/sandbox/v1/work" || req.path.starts_with("/sandbox/v1/work/")) {
    activity = SandboxActivity::kInit;
  } else if (req.path == "/sandbox/v1/inbox") {
    activity = SandboxActivity::kWaiting;
  }
  d_.on_sandbox_request(id, activity);
  return Ok();
}

}  // namespace airlock::controlplane
