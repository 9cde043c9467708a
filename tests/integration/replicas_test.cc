// Several control planes on one store, as replicas behind a load balancer are: each with its
// own home (its own listeners, sockets and operator.key) and the database shared. Here the
// store is one SQLite file opened by every replica; the PostgreSQL store is the one meant for
// replicas on several hosts.
#include <future>

#include "common/crypto.h"
#include "tests/integration/harness.h"

namespace airlock::testing {
namespace {

using http::verb;

class ReplicasTest : public ::testing::Test {
 protected:
  void SetUp() override { db_ = MakeTempDir("airlock-shared") + "/airlock.db"; }

  std::unique_ptr<TestServer> Replica(std::function<void(controlplane::Config&)> more = {}) {
    return std::make_unique<TestServer>([this, more](controlplane::Config& c) {
      c.store_path = db_;
      if (more) more(c);
    });
  }

  std::string db_;
};

TEST_F(ReplicasTest, AnOperatorKeyWorksOnAReplicaThatStartedBeforeTheKeyExisted) {
  auto first = Replica();
  auto second = Replica();  // its operator.key is new: the first replica has not read it
  auto created = second->Op(verb::post, "/v1/sessions", R"({"task":"x"})");
  ASSERT_EQ(created.status, 201u) << created.body;
  std::string id = created.json()["id"];
  // The first replica answers the second one's key, and sees the session it created.
  auto seen = HttpCall(first->op_port(), verb::get, "/v1/sessions/" + id, second->key());
  EXPECT_EQ(seen.status, 200u) << seen.body;
  EXPECT_EQ(seen.json()["id"], id);
  // A key no replica has stays refused, on both.
  for (TestServer* r : {first.get(), second.get()}) {
    auto refused = HttpCall(r->op_port(), verb::get, "/v1/sessions", "aok_not-a-key");
    EXPECT_EQ(refused.status, 401u);
    EXPECT_EQ(refused.error_code(), "unauthenticated");
  }
}

TEST_F(ReplicasTest, ReplicasStartingTogetherWithTheSameConfiguredKeysAllStart) {
  const std::string key = "aok_shared-by-the-whole-deployment";
  auto config = [&](controlplane::Config& c) {
    c.operator_keys["deploy"] = controlplane::OperatorKeyConfig{Sha256Hex(key), ""};
  };
  std::vector<std::future<std::unique_ptr<TestServer>>> starting;
  for (int i = 0; i < 4; ++i) {
    starting.push_back(std::async(std::launch::async, [&] { return Replica(config); }));
  }
  std::vector<std::unique_ptr<TestServer>> replicas;
  for (auto& f : starting) {
    ASSERT_NO_THROW(replicas.push_back(f.get()));
  }
  for (auto& r : replicas) {
    EXPECT_EQ(HttpCall(r->op_port(), verb::get, "/v1/sessions", key).status, 200u);
  }
}

}  // namespace
}  // namespace airlock::testing
