#include "controlplane/event_limits.h"

#include <algorithm>
#include <cmath>

namespace airlock::controlplane {

EventRateLimiter::EventRateLimiter(double rate_per_s, int64_t burst)
    : rate_(rate_per_s), burst_(static_cast<double>(std::max<int64_t>(burst, 1))) {}

double EventRateLimiter::Refill(Bucket& b, Clock::time_point now) const {
  const double elapsed = std::chrono::duration<double>(now - b.at).count();
  if (elapsed > 0) {
    b.tokens = std::min(burst_, b.tokens + elapsed * rate_);
    b.at = now;
  }
  return b.tokens;
}

std::optional<int64_t> EventRateLimiter::Take(const std::string& session, Clock::time_point now) {
  if (buckets_.size() > sweep_above_) {
    for (auto it = buckets_.begin(); it != buckets_.end();) {
      it = Refill(it->second, now) >= burst_ ? buckets_.erase(it) : std::next(it);
    }
    // Doubling keeps sweeps rare (amortised O(1) per event) while many sessions are busy.
    sweep_above_ = std::max(kSweepAbove, 2 * buckets_.size());
  }
  auto [it, fresh] = buckets_.try_emplace(session, Bucket{burst_, now});
  Bucket& b = it->second;
  if (!fresh) Refill(b, now);
  if (b.tokens >= 1) {
    b.tokens -= 1;
    return std::nullopt;
  }
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil((1 - b.tokens) / rate_)));
}

store::EventQuota EventQuotaFor(const Config& config) {
  return store::EventQuota{config.events.max_per_session, config.events.max_mb_per_session << 20};
}

Response EventQuotaExceeded(const store::QuotaAppend& refused) {
  const bool events = refused.exceeded == "events";
  return Response::FromError(Error{
      ErrorCode::kPayloadTooLarge,
      events
          ? fmt::format("the session has stored its quota of {} events (events.max_per_session); "
                        "no more events are recorded for it",
                        refused.limit)
          : fmt::format("the session's events would exceed their quota of {} MiB "
                        "(events.max_mb_per_session); "
                        "no more events are recorded for it",
                        refused.limit >> 20),
      "quota_exceeded"});
}

}  // namespace airlock::controlplane
