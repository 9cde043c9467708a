// Several control planes on one store, as replicas behind a load balancer are: each with its
// own home (its own listeners, sockets and operator.key) and the database shared. Here the
// store is one SQLite file opened by every replica; the PostgreSQL store is the one meant for
// replicas on several hosts.
#include <future>

#include "common/crypto.h"
#include "tests/integration/harness.h"
#include "tests/support/postgres_server.h"

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

// Waits until `server`'s reconciler has made `passes` more passes than when called.
void WaitForReconcilePasses(TestServer& server, int passes) {
  auto count = [&] {
    std::string page = server.Op(verb::get, "/metrics").body;
    const std::string name = "\nairlock_reconcile_passes_total ";
    auto at = page.find(name);
    return at == std::string::npos ? 0 : std::stoi(page.substr(at + name.size()));
  };
  int until = count() + passes;
  ASSERT_TRUE(WaitForMetric(server, "airlock_reconcile_passes_total " + std::to_string(until)));
}

TEST_F(ReplicasTest, OnlyTheReplicaThatRunsASandboxEverActsOnIt) {
  auto a = Replica();
  auto b = Replica();
  auto [id, token] = a->NewSession();
  WaitForReconcilePasses(*b, 3);
  {
    std::lock_guard l(b->backend().mu);
    EXPECT_EQ(b->backend().state.count("test:" + id), 0u) << "replica b touched a's sandbox";
  }
  {
    std::lock_guard l(a->backend().mu);
    EXPECT_EQ(a->backend().state["test:" + id], "running");
  }
  auto s = b->Op(verb::get, "/v1/sessions/" + id).json();
  EXPECT_EQ(s["state"], "running");
  // Suspending needs the sandbox: the replica that does not run it says which one does.
  auto susp = b->Op(verb::post, "/v1/sessions/" + id + "/suspend");
  EXPECT_EQ(susp.status, 409u);
  EXPECT_NE(susp.body.find("runs on replica"), std::string::npos) << susp.body;
  // The sandbox's token still works where it runs: nothing restarted it.
  EXPECT_EQ(a->Sb(verb::get, "/sandbox/v1/history", token).status, 200u);
}

TEST_F(ReplicasTest, ASessionEndedThroughAnotherReplicaLosesItsSandboxOnItsOwn) {
  auto a = Replica();
  auto b = Replica();
  auto [id, token] = a->NewSession();
  EXPECT_EQ(b->Op(verb::delete_, "/v1/sessions/" + id).json()["state"], "killed");
  EXPECT_EQ(a->Sb(verb::get, "/sandbox/v1/history", token).status, 401u);
  // a's periodic sweep (every ten passes of a second) finds a sandbox whose session has
  // ended; the bound leaves room for a slow, sanitized build.
  EXPECT_TRUE(a->backend().WaitForState("test:" + id, "destroyed", std::chrono::seconds(90)));
  std::lock_guard l(b->backend().mu);
  EXPECT_EQ(b->backend().state.count("test:" + id), 0u);
}

TEST_F(ReplicasTest, ASessionOfAReplicaThatDiedGetsAFreshSandboxOnAnother) {
  auto ttl = [](controlplane::Config& c) { c.node_ttl_s = 3; };
  auto a = Replica(ttl);
  auto [id, old_token] = a->NewSession();
  a->Stop();  // no more heartbeats; its sessions stay live in the store
  auto b = Replica(ttl);
  ASSERT_TRUE(b->backend().WaitForState("test:" + id, "running", std::chrono::seconds(90)));
  std::string new_token;
  {
    std::lock_guard l(b->backend().mu);
    new_token = b->backend().specs.at(id).token.Reveal();
  }
  EXPECT_NE(new_token, old_token);
  EXPECT_EQ(b->Sb(verb::get, "/sandbox/v1/history", old_token).status, 401u);
  auto history = b->Sb(verb::get, "/sandbox/v1/history", new_token);
  EXPECT_EQ(history.status, 200u) << history.body;
  auto events = b->Op(verb::get, "/v1/sessions/" + id + "/events?after=0", "",
                      {{"Accept", "application/json"}})
                    .json();
  bool moved = false, restarted = false;
  for (const auto& e : events) {
    moved |= e["type"] == "session.node";
    restarted |= e["type"] == "session.sandbox_restart";
  }
  EXPECT_TRUE(moved) << events.dump();
  EXPECT_TRUE(restarted) << events.dump();
  EXPECT_EQ(b->Op(verb::get, "/v1/sessions/" + id).json()["state"], "running");
}

// A replica remembers which session a token belongs to only when every revocation reaches
// it; through a shared SQLite file none of the others' do, so it must ask the store each time.
TEST_F(ReplicasTest, ATokenEndedThroughAnotherReplicaIsRefusedAtOnceOnASharedSqliteFile) {
  auto long_cache = [](controlplane::Config& c) { c.token_cache_ms = 3'600'000; };
  auto a = Replica(long_cache);
  auto b = Replica(long_cache);
  auto [id, token] = a->NewSession();
  ASSERT_EQ(a->Sb(verb::post, "/sandbox/v1/events", token, R"({"type":"x"})").status, 202u);
  ASSERT_EQ(b->Op(verb::delete_, "/v1/sessions/" + id).status, 200u);
  EXPECT_EQ(a->Sb(verb::post, "/sandbox/v1/events", token, R"({"type":"x"})").status, 401u);
}

// Replicas on a real PostgreSQL (a private server in a temporary directory): what one
// replica commits wakes the waiters parked on another through LISTEN/NOTIFY.
class PostgresReplicasTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { server_ = new PostgresServer(StartPostgres()); }
  static void TearDownTestSuite() {
    StopPostgres(*server_);
    delete server_;
  }
  void SetUp() override {
    if (!server_->skip.empty()) GTEST_SKIP() << server_->skip;
    ASSERT_TRUE(server_->failure.empty()) << server_->failure;
    std::string error;
    db_ = CreatePostgresDatabase(*server_, &error);
    ASSERT_TRUE(error.empty()) << error;
    ::setenv("AIRLOCK_TEST_PG_PASSWORD", server_->password.c_str(), 1);
  }
  std::unique_ptr<TestServer> Replica(std::function<void(controlplane::Config&)> more = {}) {
    return std::make_unique<TestServer>([this, more](controlplane::Config& c) {
      c.store_kind = "postgres";
      c.store_url = server_->Url(db_);
      c.store_password_env = "AIRLOCK_TEST_PG_PASSWORD";
      c.store_pool_size = 4;
      if (more) more(c);
    });
  }
  static PostgresServer* server_;
  std::string db_;
};
PostgresServer* PostgresReplicasTest::server_ = nullptr;

TEST_F(PostgresReplicasTest, AMessagePostedThroughOneReplicaWakesALongPollHeldByAnother) {
  auto a = Replica();
  auto b = Replica();
  auto [id, token] = a->NewSession();
  // The agent takes its task, then waits on its inbox through replica b.
  auto first = b->Sb(verb::get, "/sandbox/v1/inbox", token);
  ASSERT_EQ(first.status, 200u) << first.body;
  auto poll = std::async(std::launch::async, [&, t = token] {
    return b->Sb(verb::get, "/sandbox/v1/inbox?wait=30", t);
  });
  ASSERT_TRUE(WaitForMetric(*b, "airlock_inbox_waiting 1"));
  auto posted = a->Op(verb::post, "/v1/sessions/" + id + "/messages", R"({"content":"from a"})");
  ASSERT_EQ(posted.status, 202u) << posted.body;
  // Without a wake-up from a, b would answer 204 when the 30 s wait ends.
  auto woken = poll.get();
  ASSERT_EQ(woken.status, 200u) << woken.body;
  EXPECT_NE(woken.body.find("from a"), std::string::npos) << woken.body;
}

// What the stream shows, not how fast: a stream also re-reads the store at each 15 s
// keep-alive, so it would catch up without the change feed too (the long-poll test above is
// the one that fails without it).
TEST_F(PostgresReplicasTest, AnEventStreamOnOneReplicaShowsWhatAnotherAppendedAndTheEnd) {
  auto a = Replica();
  auto b = Replica();
  auto [id, token] = a->NewSession();
  // An SSE stream on b that ends by itself once the session does.
  auto stream = std::async(std::launch::async, [&, sid = id] {
    return HttpCall(b->op_port(), verb::get, "/v1/sessions/" + sid + "/events?after=0", b->key(),
                    "", {{"Accept", "text/event-stream"}});
  });
  ASSERT_TRUE(WaitForMetric(*b, "airlock_event_streams 1"));
  ASSERT_EQ(
      a->Sb(verb::post, "/sandbox/v1/events", token, R"({"type":"step","data":{"n":7}})").status,
      202u);
  ASSERT_EQ(a->Op(verb::delete_, "/v1/sessions/" + id).status, 200u);
  auto r = stream.get();
  EXPECT_EQ(r.status, 200u);
  EXPECT_NE(r.body.find("\"n\":7"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("killed"), std::string::npos) << r.body;
}

// The token cache's entries live an hour here: only the change feed can make these refusals
// happen. A long-poll parked on the replica that remembers the token shows when the feed has
// delivered (it wakes in the same handling of the notification that forgets the token).
TEST_F(PostgresReplicasTest, ATokenEndedThroughAnotherReplicaIsRefusedOnceTheFeedDelivers) {
  auto long_cache = [](controlplane::Config& c) { c.token_cache_ms = 3'600'000; };
  auto a = Replica(long_cache);
  auto b = Replica(long_cache);
  auto [id, token] = a->NewSession();
  ASSERT_EQ(a->Sb(verb::get, "/sandbox/v1/inbox", token).status, 200u);  // the task
  ASSERT_EQ(a->Sb(verb::post, "/sandbox/v1/events", token, R"({"type":"x"})").status, 202u);
  auto poll = std::async(std::launch::async, [&, t = token] {
    return a->Sb(verb::get, "/sandbox/v1/inbox?wait=30", t);
  });
  ASSERT_TRUE(WaitForMetric(*a, "airlock_inbox_waiting 1"));
  ASSERT_EQ(b->Op(verb::delete_, "/v1/sessions/" + id).status, 200u);
  ASSERT_EQ(poll.get().status, 410u);
  EXPECT_EQ(a->Sb(verb::post, "/sandbox/v1/events", token, R"({"type":"x"})").status, 401u);
}

TEST_F(PostgresReplicasTest, ATokenReplacedByAnotherReplicaIsRefusedOnceTheFeedDelivers) {
  auto long_cache = [](controlplane::Config& c) { c.token_cache_ms = 3'600'000; };
  auto a = Replica(long_cache);
  auto b = Replica(long_cache);
  auto [id, old_token] = a->NewSession();
  ASSERT_EQ(b->Sb(verb::get, "/sandbox/v1/inbox", old_token).status, 200u);  // the task
  ASSERT_EQ(b->Sb(verb::post, "/sandbox/v1/events", old_token, R"({"type":"x"})").status, 202u);
  auto poll = std::async(std::launch::async, [&, t = old_token] {
    return b->Sb(verb::get, "/sandbox/v1/inbox?wait=30", t);
  });
  ASSERT_TRUE(WaitForMetric(*b, "airlock_inbox_waiting 1"));
  {
    std::lock_guard l(a->backend().mu);
    a->backend().state["test:" + id] = "destroyed";  // a's reconciler restarts it
  }
  ASSERT_EQ(poll.get().status, 401u);  // woken by the restart: its token is no longer the one
  EXPECT_EQ(b->Sb(verb::post, "/sandbox/v1/events", old_token, R"({"type":"x"})").status, 401u);
}

}  // namespace
}  // namespace airlock::testing
