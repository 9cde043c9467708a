#include "controlplane/event_limits.h"

#include <gtest/gtest.h>

namespace airlock::controlplane {
namespace {

using namespace std::chrono_literals;
using Clock = EventRateLimiter::Clock;

TEST(EventRateLimiterTest, AllowsTheBurstThenRefusesUntilTokensRefill) {
  EventRateLimiter limiter(/*rate_per_s=*/2, /*burst=*/3);
  const Clock::time_point t0{};
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(limiter.Take("ses_a", t0).has_value()) << i;
  auto wait = limiter.Take("ses_a", t0);
  ASSERT_TRUE(wait.has_value());
  EXPECT_EQ(*wait, 1);  // half a second, rounded up
  EXPECT_TRUE(limiter.Take("ses_a", t0 + 400ms).has_value());
  EXPECT_FALSE(limiter.Take("ses_a", t0 + 500ms).has_value());  // one token back
  EXPECT_TRUE(limiter.Take("ses_a", t0 + 500ms).has_value());
  // Long idle refills to the burst, not beyond.
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(limiter.Take("ses_a", t0 + 1h).has_value()) << i;
  EXPECT_TRUE(limiter.Take("ses_a", t0 + 1h).has_value());
}

TEST(EventRateLimiterTest, SessionsHaveTheirOwnBuckets) {
  EventRateLimiter limiter(1, 1);
  const Clock::time_point t0{};
  EXPECT_FALSE(limiter.Take("ses_a", t0).has_value());
  EXPECT_TRUE(limiter.Take("ses_a", t0).has_value());
  EXPECT_FALSE(limiter.Take("ses_b", t0).has_value());
}

TEST(EventRateLimiterTest, RetryAfterCoversASlowRate) {
  EventRateLimiter limiter(0.01, 1);
  const Clock::time_point t0{};
  EXPECT_FALSE(limiter.Take("ses_a", t0).has_value());
  auto wait = limiter.Take("ses_a", t0);
  ASSERT_TRUE(wait.has_value());
  EXPECT_EQ(*wait, 100);
}

TEST(EventRateLimiterTest, FullBucketsAreDroppedSoManySessionsCostBoundedMemory) {
  EventRateLimiter limiter(1, 1);
  const Clock::time_point t0{};
  for (int i = 0; i < 10000; ++i) limiter.Take("old_" + std::to_string(i), t0);
  // A minute later every old bucket is full again: the sweep drops them as new sessions come.
  for (int i = 0; i < 10000; ++i) limiter.Take("new_" + std::to_string(i), t0 + 1min);
  EXPECT_LE(limiter.size(), 10000u);
}

}  // namespace
}  // namespace airlock::controlplane
