#include "sandbox/uid_pool.h"

#include <gtest/gtest.h>

#include <set>

namespace airlock::sandbox {
namespace {

TEST(UidPool, EachOwnerGetsItsOwnUidUntilItIsReleased) {
  UidPool pool(5000, 3, nullptr);
  auto a = pool.Acquire("a");
  auto b = pool.Acquire("b");
  auto c = pool.Acquire("c");
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ((std::set<uint32_t>{*a, *b, *c}), (std::set<uint32_t>{5000, 5001, 5002}));
  EXPECT_EQ(*pool.Acquire("a"), *a) << "asking twice gives the same uid";
  auto d = pool.Acquire("d");
  ASSERT_FALSE(d.has_value()) << "the range is full";
  EXPECT_NE(d.error().message.find("uid_range_size"), std::string::npos) << d.error().message;
  pool.Release("b");
  auto d2 = pool.Acquire("d");
  ASSERT_TRUE(d2.has_value());
  EXPECT_EQ(*d2, *b) << "only a released uid is given again";
  EXPECT_EQ(pool.InUse(), 3u);
}

TEST(UidPool, AFreedUidRestsWhileOthersAreFree) {
  UidPool pool(100, 4, nullptr);
  uint32_t first = *pool.Acquire("a");
  pool.Release("a");
  EXPECT_NE(*pool.Acquire("b"), first) << "round robin: the uid just freed is not the next one";
}

TEST(UidPool, SkipsUidsTheHostKnows) {
  UidPool pool(100, 3, [](uint32_t id) { return id == 100 || id == 101; });
  EXPECT_EQ(*pool.Acquire("a"), 102u);
  EXPECT_FALSE(pool.Acquire("b").has_value());
}

TEST(UidPool, AdoptedUidsAreNotGivenAgain) {
  // After a restart: the running sandboxes' uids are read back and must stay theirs.
  UidPool pool(100, 2, nullptr);
  pool.Adopt("running", 100);
  pool.Adopt("other-range", 7);  // not the pool's: ignored
  EXPECT_EQ(*pool.Acquire("new"), 101u);
  EXPECT_EQ(pool.Held("running"), 100u);
  EXPECT_FALSE(pool.Held("other-range").has_value());
  EXPECT_FALSE(pool.Acquire("third").has_value());
  pool.Release("running");
  EXPECT_EQ(*pool.Acquire("third"), 100u);
}

TEST(UidPool, ATransferredUidStaysHeldByItsNewOwner) {
  // A QEMU started ahead holds a uid under a name of its own; the sandbox that claims it takes
  // the uid over, and only its release frees it.
  UidPool pool(100, 2, nullptr);
  uint32_t spare = *pool.Acquire("spare");
  ASSERT_TRUE(pool.Transfer("spare", "sandbox").has_value());
  EXPECT_FALSE(pool.Held("spare").has_value());
  EXPECT_EQ(pool.Held("sandbox"), spare);
  EXPECT_EQ(pool.InUse(), 1u);
  pool.Release("spare");  // nothing: it holds none now
  EXPECT_EQ(pool.Held("sandbox"), spare);
  EXPECT_FALSE(pool.Transfer("spare", "later").has_value()) << "nothing to transfer";
  EXPECT_FALSE(pool.Held("later").has_value());
  uint32_t other = *pool.Acquire("other");
  EXPECT_NE(other, spare);
  EXPECT_FALSE(pool.Transfer("other", "sandbox").has_value()) << "one uid per owner";
  EXPECT_EQ(pool.Held("other"), other);
  pool.Release("sandbox");
  EXPECT_EQ(*pool.Acquire("third"), spare);
}

TEST(UidRange, RefusesARangeHoldingAHostAccountGroupOrSubordinateRange) {
  HostIds host;
  host.users = {{0, "root"}, {1000, "cloudsdk"}, {65534, "nobody"}};
  host.groups = {{0, "root"}, {4242, "staff"}};
  host.subordinate = {{100000, 65536, "cloudsdk", "/etc/subuid"}};
  EXPECT_TRUE(CheckIdRangeIsFree(2147000000, 65536, host, "r").has_value());
  auto user = CheckIdRangeIsFree(1000, 1, host, "sandbox.oci.agent_uid");
  ASSERT_FALSE(user.has_value());
  EXPECT_NE(user.error().message.find("cloudsdk"), std::string::npos) << user.error().message;
  EXPECT_NE(user.error().message.find("sandbox.oci.agent_uid"), std::string::npos)
      << user.error().message;
  EXPECT_FALSE(CheckIdRangeIsFree(60000, 10000, host, "r").has_value()) << "nobody is inside";
  EXPECT_FALSE(CheckIdRangeIsFree(4242, 1, host, "r").has_value()) << "a group";
  auto sub = CheckIdRangeIsFree(150000, 10, host, "r");
  ASSERT_FALSE(sub.has_value());
  EXPECT_NE(sub.error().message.find("/etc/subuid"), std::string::npos) << sub.error().message;
  EXPECT_TRUE(CheckIdRangeIsFree(165536, 10, host, "r").has_value())
      << "just past the subordinate range";
  EXPECT_FALSE(CheckIdRangeIsFree(0, 10, {}, "r").has_value()) << "root";
  EXPECT_FALSE(CheckIdRangeIsFree(UINT32_MAX - 5, 10, {}, "r").has_value()) << "past the last uid";
  EXPECT_FALSE(CheckIdRangeIsFree(UINT32_MAX, 1, {}, "r").has_value()) << "(uid_t)-1 is not an id";
  EXPECT_TRUE(CheckIdRangeIsFree(UINT32_MAX - 2, 2, {}, "r").has_value());
}

TEST(UidRange, ThisHostsAccountsAreSeen) {
  HostIds host = ReadHostIds();
  EXPECT_EQ(host.users.count(0), 1u) << "root is in /etc/passwd";
  EXPECT_FALSE(CheckIdRangeIsFree(0, 1, host, "r").has_value());
  EXPECT_TRUE(HostKnowsId(0));
}

}  // namespace
}  // namespace airlock::sandbox
