#pragma once

// Bounds on what a sandbox makes the control plane store as events (docs/operators.md,
// "Event limits"): a per-session token bucket for the events it posts, and the per-session
// quota (count and bytes) the store checks in the append's own transaction.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>

#include "controlplane/config.h"
#include "controlplane/http.h"
#include "store/store.h"

namespace airlock::controlplane {

// A token bucket per session: `rate_per_s` tokens a second, at most `burst` saved up. Time is
// passed in, so tests advance it instead of sleeping. Not thread-safe (io thread only).
class EventRateLimiter {
 public:
  using Clock = std::chrono::steady_clock;

  EventRateLimiter(double rate_per_s, int64_t burst);

  // Takes a token of `session` at `now`. When there is none: the whole seconds until there is
  // one (at least 1), for Retry-After.
  std::optional<int64_t> Take(const std::string& session, Clock::time_point now);
  // Buckets held; a full bucket is the same as none, so they are dropped as the map grows.
  size_t size() const { return buckets_.size(); }

 private:
  struct Bucket {
    double tokens = 0;
    Clock::time_point at;
  };
  double Refill(Bucket& b, Clock::time_point now) const;

  static constexpr size_t kSweepAbove = 4096;

  double rate_;
  double burst_;
  size_t sweep_above_ = kSweepAbove;
  std::unordered_map<std::string, Bucket> buckets_;
};

// The quota the store applies to events a sandbox causes.
store::EventQuota EventQuotaFor(const Config& config);

// The answer to a refused append: 413 quota_exceeded, saying which bound and where it is set.
Response EventQuotaExceeded(const store::QuotaAppend& refused);

}  // namespace airlock::controlplane
