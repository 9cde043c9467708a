#pragma once

#include <chrono>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "common/asio.h"
#include "common/metrics.h"
#include "common/secret.h"
#include "controlplane/config.h"
#include "controlplane/notifier.h"
#include "controlplane/session_service.h"
#include "sandbox/backend.h"
#include "store/store.h"

namespace airlock::controlplane {

// Warm pools ([pools.NAME] image, backend, size): sandboxes started before any session asks,
// each waiting for an identity, so that a create that matches a pool claims one instead of
// starting one, and the pool starts a replacement in the background.
//
// A waiting sandbox is made like a session's, for a session that does not exist yet: its id
// is "wrm_..." and its socket, run/<id>/control.sock, is bound to that id. Its init asks for
// its identity there at once; the request is held (AwaitClaim) until a session claims the
// sandbox, then answered with that session's identity and the token the session was created
// with (IdentityService, TakeIdentity): the claim creates the session running, token and
// sandbox in one transaction, so that nothing is left to write between the claim and the
// agent's start.
// Until then the sandbox holds no token, its agent has not started (init runs it only once it
// has an identity), and its socket answers nothing but that one request.
//
// At a claim, run/<session id> becomes a symbolic link to the sandbox's directory and the
// socket is bound to the session from then on, so that everything that finds a session's
// socket by its id (a restart, the reconciler) finds this one.
//
// The replacement for a claimed sandbox is started kRefillSettle (100 ms) after the claiming
// session's agent is first heard from (any request but init's own), or kRefillDeferral (2 s)
// after the claim if it is not. Making a sandbox keeps a host busy for tens of milliseconds
// (crun, or a VM's restore), and the claimed sandbox's start, the one a user waits for, would
// share the CPU with it: on two cores that doubled an oci pool start, and starting the refill
// at the agent's first request still slowed that request's answer (BENCHMARKS.md). A pool
// is short of one sandbox that much longer after each claim.
//
// Every few seconds the waiting sandboxes are inspected: one that died while it waited (its
// init crashed, the host's OOM killer took it, someone killed it) is destroyed and replaced,
// rather than handed to the next session, which would then wait for a reconciler to find it.
//
// Pools belong to the replica that runs them. Sandboxes left waiting by a stopped control
// plane are orphans at the next start and swept; Knows() keeps this process's own from the
// sweep.
//
// Threading: io thread only; backend calls go to the sandbox pool.
class PoolManager {
 public:
  struct Deps {
    const Config& config;
    asio::io_context& io;
    sandbox::BackendRegistry& backends;
    asio::thread_pool& sandbox_pool;
    SandboxChannels& channels;
    metrics::Registry& registry;
  };
  explicit PoolManager(Deps d);

  // Refuses pools whose backend is missing or cannot keep sandboxes waiting (no
  // Capabilities::warm_pool, or an identity in the spec).
  Status Check() const;
  // Starts filling every pool in the background.
  void Start();
  // Destroys the sandboxes still waiting (server shutdown).
  awaitable<void> Stop();

  using Waiting = WaitingSandbox;
  // A waiting sandbox for a session with this image, backend, command and limits, if a pool
  // has one: only a session that runs the pool's command with the backend's default
  // resources can take one (its sandbox was made with those). The pool refills behind it.
  std::optional<Waiting> Claim(const std::string& image, const std::string& backend,
                               const Json& command, const Json& limits);
  using Identity = ClaimedIdentity;
  // The claimed sandbox `w` now serves `identity.session`: its held identity request is
  // answered (TakeIdentity).
  void Resolve(const Waiting& w, Identity identity);
  // The claim's Identity, once: the session took a pool's sandbox and its init has not had its
  // identity yet. nullopt otherwise (then the store decides: IssueToken).
  std::optional<Identity> TakeIdentity(const std::string& session_id);
  // The session's create has answered: from now on an operator may add files, so a token not
  // taken yet goes out with the store's list of files, not the create's.
  void Answered(const std::string& session_id);
  // The session ended: a token not taken yet is dropped.
  void Forget(const std::string& session_id);
  // A claimed sandbox that no session took after all (the session could not be created):
  // destroyed, and the pool refills.
  awaitable<void> Discard(const Waiting& w);
  // A sandbox request of session `id` other than init's own: if the session took a pool's
  // sandbox, its agent runs, and the pool's deferred refill may start.
  void HeardFrom(const std::string& session_id);
  // For IdentityService: the session that claimed the waiting sandbox `id`, waiting until
  // `deadline` for a claim; nullopt if none came by then.
  awaitable<std::optional<std::string>> AwaitClaim(const std::string& id,
                                                   std::chrono::steady_clock::time_point deadline);
  // Whether `sandbox_id` is a sandbox this process made for a pool that is waiting, or was
  // claimed so recently that a list of live sessions taken before may miss it (the
  // reconciler's sweep leaves these alone).
  bool Knows(const std::string& sandbox_id) const;
  static bool IsPoolSandboxId(std::string_view id) { return id.starts_with("wrm_"); }

 private:
  struct Pool {
    std::string name;
    PoolConfig config;
    std::deque<Waiting> waiting;
    int starting = 0;
    int deferred = 0;  // refills waiting for a claimed sandbox's agent (RefillAfterClaim)
  };
  awaitable<void> Refill(Pool& pool);
  // Refill(pool) once the session that claimed sandbox `sandbox_id` is heard from (or after
  // kRefillDeferral); `seen` is heard_'s version of it at the claim.
  awaitable<void> RefillAfterClaim(Pool& pool, std::string sandbox_id, uint64_t seen);
  awaitable<Result<Waiting>> StartOne(Pool& pool);
  // Inspects the waiting sandboxes every kCheckInterval until Stop().
  awaitable<void> Watch();
  awaitable<void> CheckWaiting(Pool& pool);

  Deps d_;
  std::map<std::string, Pool> pools_;
  std::set<std::string> made_;  // started or waiting, not claimed
  struct Claimed {
    std::string session_id;
    std::chrono::steady_clock::time_point at;
  };
  // Tokens of sessions that claimed a sandbox, until its init takes them (for a minute).
  std::map<std::string, Identity> identities_;  // by session id
  std::map<std::string, Claimed> claimed_;      // by the waiting sandbox's id, for a minute
  Notifier claims_;
  // Claimed sandboxes whose session has not been heard from yet: session id -> sandbox id.
  std::map<std::string, std::string> unheard_;
  Notifier heard_;                   // by sandbox id
  std::set<std::string> deferring_;  // sandboxes whose RefillAfterClaim waits
  bool stopping_ = false;
  bool watching_ = false;
  asio::steady_timer watch_timer_;
  metrics::Family<metrics::Gauge>& ready_;
  metrics::Family<metrics::Counter>& claims_total_;
  metrics::Family<metrics::Counter>& errors_;
  metrics::Family<metrics::Counter>& lost_;
};

}  // namespace airlock::controlplane
