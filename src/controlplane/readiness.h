#pragma once

#include "common/asio.h"
#include "common/json_util.h"
#include "sandbox/backend.h"
#include "store/store.h"

namespace airlock::controlplane {

// What /readyz answers: whether this replica should get traffic now, and why not.
struct Readiness {
  bool ready = false;
  Json body;  // {"status", "checks": {"store": {...}, "backends": {name: {...}}}}
};

struct ReadinessInputs {
  store::Store* store = nullptr;
  sandbox::BackendRegistry* backends = nullptr;
  asio::thread_pool* pool = nullptr;
  std::string default_backend;
  bool allow_unisolated = false;
  bool draining = false;
  // A check that has not answered by then counts as failing: a probe must answer in time
  // even when the database hangs.
  std::chrono::milliseconds limit{2000};
};

// Ready means: not draining, the store answers, and the default backend could create a
// sandbox. Every other backend is reported too (a failing one fails only the sessions that
// ask for it, so it does not take the replica out of rotation). An un-isolated backend the
// configuration does not allow is "disabled", not failing.
awaitable<Readiness> CheckReadiness(ReadinessInputs in);

}  // namespace airlock::controlplane
