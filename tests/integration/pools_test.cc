// Warm pools ([pools.NAME]): sandboxes started before any session, waiting for an identity.
// The test backend plays a backend whose sandboxes take their identity over their channel
// (as oci's and microvm's do); the test plays airlock-init on the waiting sandboxes' sockets.
#include <gtest/gtest.h>

#include <filesystem>
#include <future>

#include "tests/integration/harness.h"

namespace airlock::testing {
namespace {

using http::verb;

std::shared_ptr<TestBackend::Shared> OverChannelBackend() {
  auto shared = std::make_shared<TestBackend::Shared>();
  shared->identity_over_channel = true;
  return shared;
}

void WithPool(controlplane::Config& c) {
  controlplane::PoolConfig p;
  p.image = c.default_image;
  p.backend = "test";
  p.size = 2;
  c.pools["p"] = p;
}

// The waiting sandboxes' ids (the backend saw them created), in the order they were made.
std::vector<std::string> Waiting(TestServer& server) {
  std::vector<std::string> out;
  std::lock_guard l(server.backend().mu);
  for (const auto& [id, r] : server.backend().specs) {
    if (id.starts_with("wrm_") && server.backend().state["test:" + id] == "running") {
      out.push_back(id);
    }
  }
  return out;
}

std::string Socket(TestServer& server, const std::string& id) {
  return server.home() + "/run/" + id + "/control.sock";
}

// A waiting sandbox holds no token and its socket gives nothing but the identity, which it
// gets only when a session claims it: the held request is answered with that session's
// identity, the other waiting sandbox's is told to ask again, and the pool refills.
TEST(PoolsTest, ACreateClaimsAWaitingSandboxWhoseHeldIdentityRequestGetsTheSession) {
  TestServer server(WithPool, "", OverChannelBackend());
  ASSERT_TRUE(WaitForMetric(server, "airlock_pool_ready{pool=\"p\"} 2"));
  std::vector<std::string> waiting = Waiting(server);
  ASSERT_EQ(waiting.size(), 2u);
  {
    std::lock_guard l(server.backend().mu);
    for (const auto& id : waiting) {
      EXPECT_FALSE(server.backend().specs.at(id).spec.identity.has_value()) << id;
    }
  }
  // Before any claim: a request with a made-up token on the socket is refused.
  auto forged = UnixGet(Socket(server, waiting[0]), "/sandbox/v1/inbox", "ast_forged");
  EXPECT_EQ(forged.status, 401u) << forged.body;
  // Both inits ask; both requests are held.
  auto first = std::async(std::launch::async, [&] {
    return UnixGet(Socket(server, waiting[0]), "/sandbox/v1/identity");
  });
  auto second = std::async(std::launch::async, [&] {
    return UnixGet(Socket(server, waiting[1]), "/sandbox/v1/identity");
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto created = server.Op(verb::post, "/v1/sessions", R"({"task":"from the pool"})");
  ASSERT_EQ(created.status, 201u) << created.body;
  std::string id = created.json()["id"];
  // Which one the pool hands out is its business: exactly one gets the identity.
  HttpResult got = first.get(), other = second.get();
  if (got.status != 200u) std::swap(got, other);
  ASSERT_EQ(got.status, 200u) << got.body;
  EXPECT_EQ(got.json()["session_id"], id);
  std::string token = got.json()["token"];
  EXPECT_TRUE(token.starts_with("ast_"));
  // The session runs in the claimed sandbox: no sandbox of its own id was made.
  {
    std::lock_guard l(server.backend().mu);
    EXPECT_EQ(server.backend().specs.count(id), 0u);
  }
  EXPECT_EQ(server.Op(verb::get, "/v1/sessions/" + id).json()["state"], "running");
  auto inbox = server.Sb(verb::get, "/sandbox/v1/inbox", token);
  ASSERT_EQ(inbox.status, 200u) << inbox.body;
  EXPECT_EQ(inbox.json()["messages"][0]["content"], "from the pool");
  // Its socket is the session's now, found by the session's id.
  EXPECT_TRUE(std::filesystem::is_symlink(server.home() + "/run/" + id));
  EXPECT_EQ(UnixGet(Socket(server, id), "/sandbox/v1/history", token).status, 200u);
  EXPECT_EQ(UnixGet(Socket(server, id), "/sandbox/v1/identity").status, 409u)
      << "the identity is handed out once";
  // The unclaimed one is told to ask again, and nothing of the session reached it.
  EXPECT_EQ(other.status, 204u) << other.body;
  EXPECT_EQ(other.body.find("ast_"), std::string::npos);
  EXPECT_TRUE(WaitForMetric(server, "airlock_pool_claims_total{pool=\"p\"} 1"));
  EXPECT_TRUE(WaitForMetric(server, "airlock_pool_ready{pool=\"p\"} 2")) << "the pool refilled";
  EXPECT_EQ(Waiting(server).size(), 3u) << "two waiting and the claimed one";
}

// Only a session that runs the image's own command with default resources can use a
// sandbox made before it: any other starts its own.
TEST(PoolsTest, ACreateThatDoesNotMatchAPoolStartsItsOwnSandbox) {
  TestServer server(WithPool, "", OverChannelBackend());
  ASSERT_TRUE(WaitForMetric(server, "airlock_pool_ready{pool=\"p\"} 2"));
  for (const char* body :
       {R"({"task":"x","command":["/bin/true"]})", R"({"task":"x","limits":{"memory_mb":64}})",
        R"({"task":"x","image":"host"})"}) {
    auto r = server.Op(verb::post, "/v1/sessions", body);
    ASSERT_EQ(r.status, 201u) << r.body;
    std::string id = r.json()["id"];
    std::lock_guard l(server.backend().mu);
    EXPECT_EQ(server.backend().specs.count(id), 1u) << body;
  }
  EXPECT_TRUE(WaitForMetric(server, "airlock_pool_ready{pool=\"p\"} 2"));
  EXPECT_FALSE(WaitForMetric(server, "airlock_pool_claims_total{pool=\"p\"} 1", 200));
}

// A pool made with resource limits makes its sandboxes with them and serves the sessions that
// ask for exactly those; the session's other limits (a timeout, a budget) do not matter.
TEST(PoolsTest, APoolWithLimitsServesSessionsThatAskForThem) {
  TestServer server(
      [](controlplane::Config& c) {
        WithPool(c);
        c.pools["p"].memory_mb = 64;
        c.pools["p"].cpus = 0.5;
      },
      "", OverChannelBackend());
  ASSERT_TRUE(WaitForMetric(server, "airlock_pool_ready{pool=\"p\"} 2"));
  for (const auto& id : Waiting(server)) {
    std::lock_guard l(server.backend().mu);
    const auto& limits = server.backend().specs.at(id).spec.limits;
    EXPECT_EQ(limits.memory_mb, 64);
    EXPECT_EQ(limits.cpus, 0.5);
    EXPECT_FALSE(limits.pids.has_value());
  }
  auto own = [&](const char* body) {
    auto r = server.Op(verb::post, "/v1/sessions", body);
    EXPECT_EQ(r.status, 201u) << r.body;
    std::lock_guard l(server.backend().mu);
    return server.backend().specs.count(r.json().value("id", "")) == 1;
  };
  EXPECT_TRUE(own(R"({"task":"x"})")) << "no limits: not the pool's";
  EXPECT_TRUE(own(R"({"task":"x","limits":{"memory_mb":64}})")) << "only some of them";
  EXPECT_TRUE(own(R"({"task":"x","limits":{"memory_mb":64,"cpus":0.5,"pids":9}})"));
  EXPECT_FALSE(own(R"({"task":"x","limits":{"memory_mb":64,"cpus":0.5,"timeout_s":600}})"));
  EXPECT_TRUE(WaitForMetric(server, "airlock_pool_claims_total{pool=\"p\"} 1"));
}

// A restart keeps the session that took a pool's sandbox (its sandbox has the pool's id, not
// the session's) and sweeps the sandboxes left waiting; a shutdown destroys those waiting.
TEST(PoolsTest, ARestartKeepsClaimedSandboxesAndSweepsWaitingOnes) {
  auto shared = OverChannelBackend();
  auto server = std::make_unique<TestServer>(WithPool, "", shared);
  ASSERT_TRUE(WaitForMetric(*server, "airlock_pool_ready{pool=\"p\"} 2"));
  auto created = server->Op(verb::post, "/v1/sessions", R"({"task":"keep me"})");
  ASSERT_EQ(created.status, 201u) << created.body;
  std::string id = created.json()["id"];
  ASSERT_TRUE(WaitForMetric(*server, "airlock_pool_ready{pool=\"p\"} 2"));
  std::vector<std::string> before = Waiting(*server);
  ASSERT_EQ(before.size(), 3u);
  std::string home = server->home();
  server->Stop();
  // Shut down: the two waiting are gone, the claimed one runs on.
  EXPECT_EQ(Waiting(*server).size(), 1u);
  server.reset();
  TestServer again(WithPool, home, shared);
  ASSERT_TRUE(WaitForMetric(again, "airlock_pool_ready{pool=\"p\"} 2"));
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // a reconcile pass or more
  auto s = again.Op(verb::get, "/v1/sessions/" + id).json();
  EXPECT_NE(s["state"], "failed") << s;
  std::vector<std::string> after = Waiting(again);
  EXPECT_EQ(after.size(), 3u) << "the claimed sandbox and two new waiting ones";
  int kept = 0;
  for (const auto& w : after) kept += std::count(before.begin(), before.end(), w);
  EXPECT_EQ(kept, 1) << "only the claimed sandbox is the same";
}

}  // namespace
}  // namespace airlock::testing
