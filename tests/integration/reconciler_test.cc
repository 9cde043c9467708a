// The reconciler's decisions that depend on time (a session's timeout, its idleness, a
// replica's missed heartbeats), on a ManualClock: each test shows that nothing happens before
// the time and that it happens after, without waiting for either. What is still waited for
// is the reconciler's one-second tick, which paces the work and decides nothing.
#include "common/clock.h"
#include "tests/integration/harness.h"

namespace airlock::testing {
namespace {

using http::verb;

// Waits until `server`'s reconciler has made `passes` more passes than when called.
void WaitForPasses(TestServer& server, int passes) {
  auto count = [&] {
    std::string page = server.cp().metrics().Render();
    const std::string name = "\nairlock_reconcile_passes_total ";
    auto at = page.find(name);
    return at == std::string::npos ? 0 : std::stoi(page.substr(at + name.size()));
  };
  int until = count() + passes;
  ASSERT_TRUE(WaitForMetric(server, "airlock_reconcile_passes_total " + std::to_string(until)));
}

std::string StateOf(TestServer& server, const std::string& id) {
  return server.Op(verb::get, "/v1/sessions/" + id).json()["state"];
}

bool WaitForSessionState(TestServer& server, const std::string& id, const std::string& want) {
  for (int i = 0; i < 200; ++i) {
    if (StateOf(server, id) == want) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

constexpr int64_t kHour = 3'600'000;

// The token the test backend started session `id`'s (latest) sandbox with.
std::string TokenOf(TestServer& server, const std::string& id) {
  std::lock_guard l(server.backend().mu);
  return server.backend().specs.at(id).token.Reveal();
}

TEST(ReconcilerTest, ASessionFailsOnceTheClockPassesItsTimeoutAndNotBefore) {
  auto clock = std::make_shared<ManualClock>();
  TestServer server({}, "", nullptr, clock);
  auto r = server.Op(verb::post, "/v1/sessions", R"({"task":"x","limits":{"timeout_s":3600}})");
  ASSERT_EQ(r.status, 201u) << r.body;
  std::string id = r.json()["id"];
  clock->Advance(kHour - 1000);
  WaitForPasses(server, 2);
  EXPECT_EQ(StateOf(server, id), "running");
  clock->Advance(2000);
  ASSERT_TRUE(WaitForSessionState(server, id, "failed"));
  auto s = server.Op(verb::get, "/v1/sessions/" + id).json();
  EXPECT_NE(s["result"].get<std::string>().find("limits.timeout_s"), std::string::npos) << s;
}

TEST(ReconcilerTest, AnIdleSessionIsSuspendedOnlyAfterItsIdleTimeoutAndAMessageWakesIt) {
  auto clock = std::make_shared<ManualClock>();
  TestServer server({}, "", nullptr, clock);
  auto r = server.Op(verb::post, "/v1/sessions", R"({"task":"x","limits":{"idle_timeout_s":600}})");
  ASSERT_EQ(r.status, 201u) << r.body;
  std::string id = r.json()["id"];
  std::string token = TokenOf(server, id);
  ASSERT_EQ(server.Sb(verb::get, "/sandbox/v1/inbox", token).status, 200u);  // the task
  // The agent waits for more work: from now on it is idle.
  auto poll = std::async(std::launch::async,
                         [&] { return server.Sb(verb::get, "/sandbox/v1/inbox?wait=60", token); });
  ASSERT_TRUE(WaitForMetric(server, "airlock_inbox_waiting 1"));
  clock->Advance(599'000);
  WaitForPasses(server, 2);
  EXPECT_EQ(StateOf(server, id), "running");
  clock->Advance(2000);
  ASSERT_TRUE(WaitForSessionState(server, id, "suspended"));
  {
    std::lock_guard l(server.backend().mu);
    EXPECT_EQ(server.backend().state["test:" + id], "paused");
  }
  // A message resumes the sandbox, and the waiting agent gets it.
  ASSERT_EQ(
      server.Op(verb::post, "/v1/sessions/" + id + "/messages", R"({"content":"more"})").status,
      202u);
  auto got = poll.get();
  ASSERT_EQ(got.status, 200u) << got.body;
  EXPECT_EQ(got.json()["messages"][0]["content"], "more");
  EXPECT_EQ(StateOf(server, id), "running");
}

// The two idle tiers in turn: paused after idle_timeout_s, hibernated once the agent has been
// idle for hibernate_after_s in all (the pause counts), and not a moment before either. The
// test backend cannot hibernate: its sandbox goes, and a message starts a fresh one.
TEST(ReconcilerTest, AnIdleSessionIsPausedThenHibernatedAtItsTimesAndAMessageWakesIt) {
  auto clock = std::make_shared<ManualClock>();
  TestServer server({}, "", nullptr, clock);
  auto r = server.Op(verb::post, "/v1/sessions",
                     R"({"task":"x","limits":{"idle_timeout_s":600,"hibernate_after_s":3600}})");
  ASSERT_EQ(r.status, 201u) << r.body;
  std::string id = r.json()["id"];
  std::string token = TokenOf(server, id);
  ASSERT_EQ(server.Sb(verb::get, "/sandbox/v1/inbox", token).status, 200u);  // the task
  auto poll = std::async(std::launch::async,
                         [&] { return server.Sb(verb::get, "/sandbox/v1/inbox?wait=60", token); });
  ASSERT_TRUE(WaitForMetric(server, "airlock_inbox_waiting 1"));
  clock->Advance(601'000);
  ASSERT_TRUE(WaitForSessionState(server, id, "suspended"));
  auto paused = server.Op(verb::get, "/v1/sessions/" + id).json();
  EXPECT_EQ(paused["tier"], "paused");
  // Idle for 600 + 2998 s: still paused.
  clock->Advance(2'998'000);
  WaitForPasses(server, 2);
  EXPECT_EQ(server.Op(verb::get, "/v1/sessions/" + id).json()["tier"], "paused");
  clock->Advance(2'000);
  for (int i = 0;
       i < 200 && server.Op(verb::get, "/v1/sessions/" + id).json()["tier"] != "hibernated"; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  auto hibernated = server.Op(verb::get, "/v1/sessions/" + id).json();
  EXPECT_EQ(hibernated["state"], "suspended");
  ASSERT_EQ(hibernated["tier"], "hibernated") << hibernated;
  {
    std::lock_guard l(server.backend().mu);
    EXPECT_EQ(server.backend().state["test:" + id], "destroyed");
  }
  // The old sandbox's poll ended, and its token opens nothing now.
  auto ended_poll = poll.get();
  EXPECT_NE(ended_poll.status, 200u) << ended_poll.body;
  EXPECT_EQ(server.Sb(verb::get, "/sandbox/v1/inbox", token).status, 401u);
  // A message wakes it in a fresh sandbox with a new token, which finds the message.
  ASSERT_EQ(
      server.Op(verb::post, "/v1/sessions/" + id + "/messages", R"({"content":"more"})").status,
      202u);
  auto woke = server.Op(verb::get, "/v1/sessions/" + id).json();
  EXPECT_EQ(woke["state"], "running");
  EXPECT_EQ(woke["tier"], "active");
  std::string fresh = TokenOf(server, id);
  ASSERT_NE(fresh, token);
  auto got = server.Sb(verb::get, "/sandbox/v1/inbox", fresh);
  ASSERT_EQ(got.status, 200u) << got.body;
  EXPECT_EQ(got.json()["messages"][0]["content"], "more");
}

TEST(ReconcilerTest, AReplicaIsTakenOverOnlyOnceItsHeartbeatIsOlderThanTheTtl) {
  auto clock = std::make_shared<ManualClock>();
  const std::string db = MakeTempDir("airlock-shared") + "/airlock.db";
  auto config = [&db](controlplane::Config& c) {
    c.store_path = db;
    c.node_ttl_s = 3600;
  };
  auto a = std::make_unique<TestServer>(config, "", nullptr, clock);
  auto [id, token] = a->NewSession();
  a->Stop();  // no more heartbeats; its session stays live in the store
  TestServer b(config, "", nullptr, clock);
  clock->Advance(kHour - 1000);
  WaitForPasses(b, 2);
  {
    std::lock_guard l(b.backend().mu);
    EXPECT_EQ(b.backend().state.count("test:" + id), 0u) << "taken over before the ttl";
  }
  clock->Advance(2000);
  ASSERT_TRUE(b.backend().WaitForState("test:" + id, "running"));
  EXPECT_EQ(StateOf(b, id), "running");
  EXPECT_EQ(b.Sb(verb::get, "/sandbox/v1/history", token).status, 401u);  // the old token died
}

// A control plane that stops while it inspects a sandbox (the reconciler's pass, or the check a
// follow-up message makes) drops that check and nothing else: the check's coroutine, still
// waiting for the runtime when the event loop stops, is destroyed after the services that
// started it (under ASan this was a use after free), and the session is left running for the
// next control plane on the same home, which adopts its sandbox.
TEST(ReconcilerTest, AStopWhileASandboxIsInspectedLeavesTheSessionToTheNextControlPlane) {
  std::string home = MakeTempDir();
  auto backend = std::make_shared<TestBackend::Shared>();
  auto server = std::make_unique<TestServer>(nullptr, home, backend);
  auto [id, token] = server->NewSession();
  {
    std::lock_guard l(backend->mu);
    backend->inspect_delay = std::chrono::milliseconds(400);
  }
  int before = 0;
  {
    std::lock_guard l(backend->mu);
    before = backend->inspects;
  }
  ASSERT_EQ(
      server->Op(verb::post, "/v1/sessions/" + id + "/messages", R"({"content":"more"})").status,
      202u);
  {
    std::unique_lock l(backend->mu);
    ASSERT_TRUE(backend->changed.wait_for(l, std::chrono::seconds(20),
                                          [&] { return backend->inspects > before; }));
  }
  server.reset();  // stops while the inspection is in flight

  {
    std::lock_guard l(backend->mu);
    backend->inspect_delay = std::chrono::milliseconds(0);
    EXPECT_EQ(backend->state.at("test:" + id), "running");
  }
  TestServer next(nullptr, home, backend);
  EXPECT_EQ(StateOf(next, id), "running");
  EXPECT_EQ(next.Sb(verb::get, "/sandbox/v1/history", token).status, 200u);
}

}  // namespace
}  // namespace airlock::testing
