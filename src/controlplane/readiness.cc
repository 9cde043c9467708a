#include "controlplane/readiness.h"

#include <chrono>

#include "common/blocking.h"

namespace airlock::controlplane {
namespace {

// One check's answer: {"status": "ok"|"failing", "error"?, "latency_ms"}.
Json CheckJson(const std::optional<Status>& outcome, std::chrono::steady_clock::time_point start,
               std::chrono::milliseconds limit) {
  double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  Json j = {{"status", outcome && outcome->has_value() ? "ok" : "failing"},
            {"latency_ms", static_cast<int64_t>(ms * 10) / 10.0}};
  if (!outcome) {
    j["error"] = fmt::format("no answer within {} ms", limit.count());
  } else if (!outcome->has_value()) {
    j["error"] = outcome->error().message;
  }
  return j;
}

}  // namespace

awaitable<Readiness> CheckReadiness(ReadinessInputs in) {
  Json checks = Json::object();
  auto start = std::chrono::steady_clock::now();
  store::Store* store = in.store;
  auto pinged = co_await RunBlockingWithin(*in.pool, in.limit, [store] { return store->Ping(); });
  checks["store"] = CheckJson(pinged, start, in.limit);
  bool ready = checks["store"]["status"] == "ok";

  Json backends = Json::object();
  std::vector<std::string> names = in.backends->Names();
  // Configured but unable to start (no runtime installed, ...): failing with that reason.
  if (!in.backends->Find(in.default_backend) &&
      in.backends->UnavailableReason(in.default_backend)) {
    names.push_back(in.default_backend);
  }
  for (const auto& name : names) {
    Json b;
    sandbox::Backend* backend = in.backends->Find(name);
    if (!backend) {
      b = {{"status", "failing"}, {"error", *in.backends->UnavailableReason(name)}};
    } else if (!backend->capabilities().isolated && !in.allow_unisolated) {
      b = {{"status", "disabled"},
           {"error", "not isolated; sandbox.allow_unisolated_backends is false"}};
    } else {
      start = std::chrono::steady_clock::now();
      auto probed =
          co_await RunBlockingWithin(*in.pool, in.limit, [backend] { return backend->Probe(); });
      b = CheckJson(probed, start, in.limit);
    }
    b["default"] = name == in.default_backend;
    if (name == in.default_backend && b["status"] != "ok") ready = false;
    backends[name] = std::move(b);
  }
  if (!backends.contains(in.default_backend)) {
    backends[in.default_backend] = {
        {"status", "failing"}, {"error", "no such backend is configured"}, {"default", true}};
    ready = false;
  }
  checks["backends"] = std::move(backends);

  Readiness r;
  r.ready = ready && !in.draining;
  r.body = {{"status", in.draining ? "draining"
                       : ready     ? "ready"
                                   : "not_ready"},
            {"checks", std::move(checks)}};
  co_return r;
}

}  // namespace airlock::controlplane
