#include "controlplane/token_cache.h"

#include <gtest/gtest.h>

namespace airlock::controlplane {
namespace {

using namespace std::chrono_literals;
using Clock = TokenCache::Clock;

const Clock::time_point t0{};

TEST(TokenCacheTest, FindsWhatAStoreReadVouchedFor) {
  TokenCache cache(16, 1s);
  EXPECT_FALSE(cache.Find("hash-a", t0));
  cache.Insert(cache.epoch(), "hash-a", "ses_a", t0);
  EXPECT_EQ(cache.Find("hash-a", t0 + 10ms), "ses_a");
  EXPECT_FALSE(cache.Find("hash-b", t0));
}

TEST(TokenCacheTest, AForgottenSessionsTokenIsNotFound) {
  TokenCache cache(16, 1h);
  cache.Insert(cache.epoch(), "hash-a", "ses_a", t0);
  cache.Insert(cache.epoch(), "hash-b", "ses_b", t0);
  cache.Forget("ses_a");
  EXPECT_FALSE(cache.Find("hash-a", t0));
  EXPECT_EQ(cache.Find("hash-b", t0), "ses_b");
}

TEST(TokenCacheTest, ClearForgetsEverything) {
  TokenCache cache(16, 1h);
  cache.Insert(cache.epoch(), "hash-a", "ses_a", t0);
  cache.Insert(cache.epoch(), "hash-b", "ses_b", t0);
  cache.Clear();
  EXPECT_FALSE(cache.Find("hash-a", t0));
  EXPECT_FALSE(cache.Find("hash-b", t0));
  EXPECT_EQ(cache.size(), 0u);
}

// A lookup that read the store before a revocation and answers after it holds the revoked
// token: it must not be remembered.
TEST(TokenCacheTest, ARaceWithARevocationDoesNotBringTheTokenBack) {
  TokenCache cache(16, 1h);
  uint64_t before = cache.epoch();
  cache.Forget("ses_a");  // the session ended while the read was on its way
  cache.Insert(before, "hash-a", "ses_a", t0);
  EXPECT_FALSE(cache.Find("hash-a", t0));
  before = cache.epoch();
  cache.Clear();
  cache.Insert(before, "hash-a", "ses_a", t0);
  EXPECT_FALSE(cache.Find("hash-a", t0));
  // A read that began after the revocation is believed.
  cache.Insert(cache.epoch(), "hash-a2", "ses_a", t0);
  EXPECT_EQ(cache.Find("hash-a2", t0), "ses_a");
}

TEST(TokenCacheTest, ASessionsNewTokenReplacesItsOldOne) {
  TokenCache cache(16, 1h);
  cache.Insert(cache.epoch(), "hash-old", "ses_a", t0);
  cache.Insert(cache.epoch(), "hash-new", "ses_a", t0);
  EXPECT_FALSE(cache.Find("hash-old", t0));
  EXPECT_EQ(cache.Find("hash-new", t0), "ses_a");
  cache.Forget("ses_a");
  EXPECT_FALSE(cache.Find("hash-new", t0));
  EXPECT_EQ(cache.size(), 0u);
}

TEST(TokenCacheTest, EntriesExpire) {
  TokenCache cache(16, 1s);
  cache.Insert(cache.epoch(), "hash-a", "ses_a", t0);
  EXPECT_EQ(cache.Find("hash-a", t0 + 999ms), "ses_a");
  EXPECT_FALSE(cache.Find("hash-a", t0 + 1s));
}

TEST(TokenCacheTest, HoldsAtMostItsCapacity) {
  TokenCache cache(8, 1h);
  for (int i = 0; i < 100; ++i) {
    cache.Insert(cache.epoch(), "hash-" + std::to_string(i), "ses_" + std::to_string(i), t0);
    EXPECT_LE(cache.size(), 8u);
  }
  EXPECT_EQ(cache.Find("hash-99", t0), "ses_99");
  // What was pushed out is simply unknown (a store read), and forgetting it is harmless.
  int known = 0;
  for (int i = 0; i < 100; ++i) known += cache.Find("hash-" + std::to_string(i), t0) ? 1 : 0;
  EXPECT_EQ(known, 8);
  for (int i = 0; i < 100; ++i) cache.Forget("ses_" + std::to_string(i));
  EXPECT_EQ(cache.size(), 0u);
}

TEST(TokenCacheTest, ZeroCapacityOrTtlKeepsNothing) {
  TokenCache none(0, 1h);
  none.Insert(none.epoch(), "hash-a", "ses_a", t0);
  EXPECT_FALSE(none.Find("hash-a", t0));
  EXPECT_FALSE(none.enabled());
  TokenCache instant(16, Clock::duration::zero());
  instant.Insert(instant.epoch(), "hash-a", "ses_a", t0);
  EXPECT_FALSE(instant.Find("hash-a", t0));
  EXPECT_FALSE(instant.enabled());
}

}  // namespace
}  // namespace airlock::controlplane
