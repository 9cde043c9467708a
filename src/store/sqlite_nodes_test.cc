// Replicas in the store: heartbeats, and a session moving from a dead node to a live one.
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "store/store.h"

namespace airlock::store {
namespace {

class SqliteNodesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "airlock_nodes_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    StoreOptions o;
    o.path = dir_ + "/airlock.db";
    auto opened = OpenSqliteStore(o);
    ASSERT_TRUE(opened.has_value()) << opened.error().message;
    store_ = std::move(*opened);
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  Session OnNode(const std::string& id, const std::string& node) {
    Session s;
    s.id = id;
    s.image = "busybox";
    s.backend = "oci";
    s.model = "fast";
    s.token_hash = "hash-" + id;
    s.node = node;
    return s;
  }
  std::string dir_;
  std::unique_ptr<Store> store_;
};

TEST_F(SqliteNodesTest, HeartbeatsAreUpsertedPerNode) {
  ASSERT_TRUE(store_->Heartbeat("a", 1000));
  ASSERT_TRUE(store_->Heartbeat("b", 1500));
  ASSERT_TRUE(store_->Heartbeat("a", 2000));
  auto nodes = store_->ListNodes();
  ASSERT_TRUE(nodes.has_value());
  ASSERT_EQ(nodes->size(), 2u);
  EXPECT_EQ((*nodes)[0].id, "a");
  EXPECT_EQ((*nodes)[0].heartbeat_at, 2000);
  EXPECT_EQ((*nodes)[1].id, "b");
  EXPECT_EQ((*nodes)[1].heartbeat_at, 1500);
}

TEST_F(SqliteNodesTest, ASessionRemembersItsNodeAndMovesOnlyFromTheNodeItIsOn) {
  ASSERT_TRUE(store_->CreateSession(OnNode("ses_1", "a"), Json{{"content", "t"}}));
  auto s = store_->GetSession("ses_1");
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->node, "a");
  // Taking over from a node it is not on is refused and changes nothing.
  auto wrong = store_->AdoptSession("ses_1", "b", "c");
  ASSERT_FALSE(wrong.has_value());
  EXPECT_EQ(wrong.error().code, ErrorCode::kConflict);
  auto moved = store_->AdoptSession("ses_1", "a", "b");
  ASSERT_TRUE(moved.has_value()) << moved.error().message;
  EXPECT_EQ(moved->node, "b");
  auto events = store_->ListEvents("ses_1", 0, 100);
  ASSERT_TRUE(events.has_value());
  EXPECT_EQ(events->back().type, "session.node");
  EXPECT_EQ(events->back().data, (Json{{"from", "a"}, {"to", "b"}}));
  // An ended session stays where it is.
  ASSERT_TRUE(
      store_->ChangeState("ses_1", StateChange{{SessionState::kStarting}, SessionState::kKilled}));
  auto late = store_->AdoptSession("ses_1", "b", "a");
  ASSERT_FALSE(late.has_value());
  EXPECT_EQ(late.error().code, ErrorCode::kConflict);
}

TEST_F(SqliteNodesTest, OfReplicasTakingOverTogetherExactlyOneWins) {
  ASSERT_TRUE(store_->CreateSession(OnNode("ses_1", "dead"), Json{{"content", "t"}}));
  std::vector<std::thread> takers;
  std::atomic<int> won{0}, lost{0};
  for (int i = 0; i < 6; ++i) {
    takers.emplace_back([&, i] {
      auto r = store_->AdoptSession("ses_1", "dead", "replica-" + std::to_string(i));
      if (r) {
        ++won;
      } else if (r.error().code == ErrorCode::kConflict) {
        ++lost;
      }
    });
  }
  for (auto& t : takers) t.join();
  EXPECT_EQ(won.load(), 1);
  EXPECT_EQ(lost.load(), 5);
}

}  // namespace
}  // namespace airlock::store
