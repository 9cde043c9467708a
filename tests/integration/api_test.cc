// The operator and sandbox APIs over real sockets with a real SQLite store.
#include <fstream>
#include <thread>

#include "tests/integration/harness.h"

namespace airlock::testing {
namespace {

using http::verb;

class ApiTest : public ::testing::Test {
 protected:
  TestServer server_;
};

TEST_F(ApiTest, HealthzNeedsNoAuth) {
  auto r = HttpCall(server_.op_port(), verb::get, "/healthz");
  EXPECT_EQ(r.status, 200u);
  EXPECT_EQ(r.json()["status"], "ok");
}

TEST_F(ApiTest, OperatorKeyFileIsPrivate) {
  struct stat st {};
  ASSERT_EQ(::stat((server_.home() + "/operator.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_TRUE(server_.key().starts_with("aok_"));
}

TEST_F(ApiTest, RejectsMissingAndWrongOperatorKey) {
  auto none = HttpCall(server_.op_port(), verb::get, "/v1/sessions");
  EXPECT_EQ(none.status, 401u);
  EXPECT_EQ(none.error_code(), "unauthenticated");
  auto wrong = HttpCall(server_.op_port(), verb::get, "/v1/sessions", "aok_wrong");
  EXPECT_EQ(wrong.status, 401u);
  // One character off from the real key.
  std::string near = server_.key();
  near.back() = near.back() == 'A' ? 'B' : 'A';
  EXPECT_EQ(HttpCall(server_.op_port(), verb::get, "/v1/sessions", near).status, 401u);
  auto basic = HttpCall(server_.op_port(), verb::get, "/v1/sessions", "", "",
                        {{"Authorization", "Basic " + server_.key()}});
  EXPECT_EQ(basic.status, 401u);
}

TEST_F(ApiTest, SessionTokenDoesNotOpenTheOperatorApi) {
  auto [id, token] = server_.NewSession();
  EXPECT_EQ(HttpCall(server_.op_port(), verb::get, "/v1/sessions", token).status, 401u);
  EXPECT_EQ(HttpCall(server_.op_port(), verb::get, "/v1/sessions/" + id, token).status, 401u);
}

TEST_F(ApiTest, OperatorKeyDoesNotOpenTheSandboxApi) {
  server_.NewSession();
  EXPECT_EQ(server_.Sb(verb::get, "/sandbox/v1/history", server_.key()).status, 401u);
}

TEST_F(ApiTest, OperatorRoutesAreNotServedOnTheSandboxListener) {
  auto r = HttpCall(server_.sb_port(), verb::get, "/v1/sessions", server_.key());
  EXPECT_EQ(r.status, 404u);
  EXPECT_EQ(HttpCall(server_.sb_port(), verb::get, "/metrics").status, 404u);
}

TEST_F(ApiTest, CreatesSessionWithTokenOfAtLeast256Bits) {
  auto r = server_.Op(
      verb::post, "/v1/sessions",
      R"({"task":"hello","limits":{"memory_mb":256,"timeout_s":600},"metadata":{"k":"v"}})");
  ASSERT_EQ(r.status, 201u) << r.body;
  Json s = r.json();
  EXPECT_EQ(s["state"], "running");
  EXPECT_EQ(s["backend"], "test");
  EXPECT_EQ(s["usage"]["llm_calls"], 0);
  EXPECT_EQ(s["limits"]["memory_mb"], 256);
  std::lock_guard l(server_.backend().mu);
  const auto& spec = server_.backend().specs.at(s["id"]);
  // "ast_" + base64url of 32 random bytes.
  EXPECT_GE(spec.token.Reveal().size(), 4u + 43u);
  EXPECT_EQ(spec.session_id, s["id"].get<std::string>());
  EXPECT_TRUE(spec.control_plane_url.starts_with("http://127.0.0.1:"));
  EXPECT_EQ(r.body.find(spec.token.Reveal()), std::string::npos);
}

TEST_F(ApiTest, RejectsBadSessionBodies) {
  EXPECT_EQ(server_.Op(verb::post, "/v1/sessions", R"({})").status, 400u);
  EXPECT_EQ(server_.Op(verb::post, "/v1/sessions", R"({"task":""})").status, 400u);
  EXPECT_EQ(server_.Op(verb::post, "/v1/sessions", R"({"task":5})").status, 400u);
  EXPECT_EQ(server_.Op(verb::post, "/v1/sessions", R"({"task":"x","bogus":1})").status, 400u);
  EXPECT_EQ(
      server_.Op(verb::post, "/v1/sessions", R"({"task":"x","limits":{"memory_mb":-1}})").status,
      400u);
  EXPECT_EQ(server_.Op(verb::post, "/v1/sessions", R"({"task":"x","limits":{"nope":1}})").status,
            400u);
  EXPECT_EQ(server_.Op(verb::post, "/v1/sessions", R"({"task":"x","command":"sh -c x"})").status,
            400u);
  EXPECT_EQ(server_.Op(verb::post, "/v1/sessions", R"({"task":"x","backend":"nope"})").status,
            400u);
  EXPECT_EQ(server_.Op(verb::post, "/v1/sessions", R"({"task":"x","image":"../../etc"})").status,
            400u);
  auto r = server_.Op(verb::post, "/v1/sessions", R"([1,2,3])");
  EXPECT_EQ(r.status, 400u);
  EXPECT_EQ(r.error_code(), "invalid_argument");
}

TEST_F(ApiTest, BackendFailureMarksSessionFailed) {
  server_.backend().fail_create = true;
  auto r = server_.Op(verb::post, "/v1/sessions", R"({"task":"x"})");
  EXPECT_EQ(r.status, 503u);
  EXPECT_NE(r.json()["error"]["message"].get<std::string>().find("sandbox failed to start"),
            std::string::npos);
  auto list = server_.Op(verb::get, "/v1/sessions?state=failed").json();
  ASSERT_EQ(list["sessions"].size(), 1u);
}

TEST_F(ApiTest, ListsNewestFirstAndFiltersByState) {
  auto [a, ta] = server_.NewSession("a");
  auto [b, tb] = server_.NewSession("b");
  server_.Op(verb::delete_, "/v1/sessions/" + a);
  auto all = server_.Op(verb::get, "/v1/sessions").json()["sessions"];
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0]["id"], b);
  auto killed = server_.Op(verb::get, "/v1/sessions?state=killed").json()["sessions"];
  ASSERT_EQ(killed.size(), 1u);
  EXPECT_EQ(killed[0]["id"], a);
  EXPECT_EQ(server_.Op(verb::get, "/v1/sessions?state=bogus").status, 400u);
}

TEST_F(ApiTest, UnknownSessionIs404) {
  EXPECT_EQ(server_.Op(verb::get, "/v1/sessions/ses_aaaaaaaaaaaaaaaaaaaaaaaa").status, 404u);
  EXPECT_EQ(server_.Op(verb::get, "/v1/sessions/../../etc/passwd").status, 404u);
  EXPECT_EQ(server_.Op(verb::get, "/v1/sessions/%00").status, 404u);
}

TEST_F(ApiTest, InboxDeliversTaskOnceThenFollowUps) {
  auto [id, token] = server_.NewSession("the task");
  auto first = server_.Sb(verb::get, "/sandbox/v1/inbox", token);
  ASSERT_EQ(first.status, 200u);
  ASSERT_EQ(first.json()["messages"].size(), 1u);
  EXPECT_EQ(first.json()["messages"][0]["content"], "the task");
  EXPECT_EQ(server_.Sb(verb::get, "/sandbox/v1/inbox?wait=0", token).status, 204u);
  EXPECT_EQ(
      server_.Op(verb::post, "/v1/sessions/" + id + "/messages", R"({"content":"more"})").status,
      202u);
  auto second = server_.Sb(verb::get, "/sandbox/v1/inbox?wait=5", token);
  ASSERT_EQ(second.status, 200u);
  EXPECT_EQ(second.json()["messages"][0]["content"], "more");
  auto history = server_.Sb(verb::get, "/sandbox/v1/history", token).json()["messages"];
  ASSERT_EQ(history.size(), 2u);
  EXPECT_EQ(history[1]["content"], "more");
}

TEST_F(ApiTest, LongPollIsWokenByANewMessage) {
  auto [id, token] = server_.NewSession();
  server_.Sb(verb::get, "/sandbox/v1/inbox", token);
  auto poll = std::async(std::launch::async,
                         [&] { return server_.Sb(verb::get, "/sandbox/v1/inbox?wait=30", token); });
  // The poll must be parked before the message arrives for this to test the wake-up.
  ASSERT_TRUE(WaitForMetric(server_, "airlock_inbox_waiting 1"));
  server_.Op(verb::post, "/v1/sessions/" + id + "/messages", R"({"content":"wake"})");
  ASSERT_EQ(poll.wait_for(std::chrono::seconds(20)), std::future_status::ready);
  auto r = poll.get();
  EXPECT_EQ(r.status, 200u);
  EXPECT_EQ(r.json()["messages"][0]["content"], "wake");
}

TEST_F(ApiTest, LongPollEndsWith410WhenTheSessionIsKilled) {
  auto [id, token] = server_.NewSession();
  server_.Sb(verb::get, "/sandbox/v1/inbox", token);
  auto poll = std::async(std::launch::async,
                         [&] { return server_.Sb(verb::get, "/sandbox/v1/inbox?wait=30", token); });
  ASSERT_TRUE(WaitForMetric(server_, "airlock_inbox_waiting 1"));
  server_.Op(verb::delete_, "/v1/sessions/" + id);
  auto r = poll.get();
  EXPECT_EQ(r.status, 410u);
  EXPECT_EQ(r.error_code(), "gone");
}

TEST_F(ApiTest, ReadyzSaysReadyWhenTheStoreAndTheDefaultBackendWork) {
  auto r = HttpCall(server_.op_port(), verb::get, "/readyz");  // no credential needed
  ASSERT_EQ(r.status, 200u) << r.body;
  Json j = r.json();
  EXPECT_EQ(j["status"], "ready");
  EXPECT_EQ(j["checks"]["store"]["status"], "ok");
  EXPECT_EQ(j["checks"]["backends"]["test"]["status"], "ok");
  EXPECT_EQ(j["checks"]["backends"]["test"]["default"], true);
}

TEST_F(ApiTest, ReadyzIsNotReadyWhileTheDefaultBackendCannotCreateSandboxes) {
  {
    std::lock_guard l(server_.backend().mu);
    server_.backend().probe_error = "the runtime went away";
  }
  auto r = HttpCall(server_.op_port(), verb::get, "/readyz");
  EXPECT_EQ(r.status, 503u) << r.body;
  EXPECT_EQ(r.json()["status"], "not_ready");
  EXPECT_EQ(r.json()["checks"]["backends"]["test"]["status"], "failing");
  EXPECT_EQ(r.json()["checks"]["backends"]["test"]["error"], "the runtime went away");
  EXPECT_EQ(r.json()["checks"]["store"]["status"], "ok");
  // Liveness is another question: the process is fine.
  EXPECT_EQ(HttpCall(server_.op_port(), verb::get, "/healthz").status, 200u);
  {
    std::lock_guard l(server_.backend().mu);
    server_.backend().probe_error.clear();
  }
  EXPECT_EQ(HttpCall(server_.op_port(), verb::get, "/readyz").status, 200u);
}

TEST_F(ApiTest, ReadyzAnswersInTimeWhenACheckHangsAndTheServerKeepsServing) {
  {
    std::lock_guard l(server_.backend().mu);
    server_.backend().probe_hangs = true;
  }
  auto hung = std::async(std::launch::async,
                         [&] { return HttpCall(server_.op_port(), verb::get, "/readyz"); });
  // While the probe hangs on a worker, the event loop serves everyone else.
  EXPECT_EQ(server_.Op(verb::get, "/v1/sessions").status, 200u);
  auto r = hung.get();
  EXPECT_EQ(r.status, 503u) << r.body;
  EXPECT_EQ(r.json()["checks"]["backends"]["test"]["status"], "failing");
  EXPECT_EQ(r.json()["checks"]["backends"]["test"]["error"], "no answer within 2000 ms");
  {
    std::lock_guard l(server_.backend().mu);
    server_.backend().probe_hangs = false;
  }
  server_.backend().changed.notify_all();
  EXPECT_EQ(HttpCall(server_.op_port(), verb::get, "/readyz").status, 200u);
}

TEST_F(ApiTest, RejectsMissingMalformedAndUnknownSessionTokens) {
  server_.NewSession();
  for (const std::string& tok :
       {std::string(""), std::string("garbage"), std::string("ast_"),
        std::string("ast_") + std::string(43, 'A'), std::string(4000, 'a')}) {
    auto r = server_.Sb(verb::get, "/sandbox/v1/history", tok);
    EXPECT_EQ(r.status, 401u) << tok;
    EXPECT_EQ(r.error_code(), "unauthenticated");
  }
}

TEST_F(ApiTest, TokenIsRevokedWhenTheSessionFinishes) {
  auto [id, token] = server_.NewSession();
  auto fin = server_.Sb(verb::post, "/sandbox/v1/finish", token,
                        R"({"status":"succeeded","result":"ok"})");
  ASSERT_EQ(fin.status, 200u) << fin.body;
  EXPECT_EQ(fin.json()["state"], "succeeded");
  EXPECT_EQ(server_.Sb(verb::get, "/sandbox/v1/history", token).status, 401u);
  EXPECT_EQ(server_.Sb(verb::post, "/sandbox/v1/finish", token, R"({"status":"failed"})").status,
            401u);
  auto s = server_.Op(verb::get, "/v1/sessions/" + id).json();
  EXPECT_EQ(s["state"], "succeeded");
  EXPECT_EQ(s["result"], "ok");
  EXPECT_TRUE(server_.backend().WaitForState("test:" + id, "destroyed"));
}

TEST_F(ApiTest, AFinishResultWithANulIsRefusedAndTheSessionCarriesOn) {
  auto [id, token] = server_.NewSession();
  auto bad = server_.Sb(verb::post, "/sandbox/v1/finish", token,
                        R"({"status":"succeeded","result":"a\u0000b"})");
  EXPECT_EQ(bad.status, 400u) << bad.body;
  EXPECT_EQ(bad.error_code(), "invalid_argument");
  EXPECT_EQ(server_.Op(verb::get, "/v1/sessions/" + id).json()["state"], "running");
  auto ok = server_.Sb(verb::post, "/sandbox/v1/finish", token,
                       R"({"status":"succeeded","result":"ab"})");
  EXPECT_EQ(ok.status, 200u) << ok.body;
}

TEST_F(ApiTest, TokenIsRevokedWhenTheOperatorKillsTheSession) {
  auto [id, token] = server_.NewSession();
  EXPECT_EQ(server_.Op(verb::delete_, "/v1/sessions/" + id).json()["state"], "killed");
  EXPECT_EQ(server_.Sb(verb::post, "/sandbox/v1/events", token, R"({"type":"x"})").status, 401u);
  // Deleting again is idempotent and changes nothing.
  auto again = server_.Op(verb::delete_, "/v1/sessions/" + id);
  EXPECT_EQ(again.status, 200u);
  EXPECT_EQ(again.json()["state"], "killed");
}

TEST_F(ApiTest, TokenExpiresWithTheSessionTimeout) {
  auto r = server_.Op(verb::post, "/v1/sessions", R"({"task":"x","limits":{"timeout_s":1}})");
  std::string id = r.json()["id"];
  std::string token;
  {
    std::lock_guard l(server_.backend().mu);
    token = server_.backend().specs.at(id).token.Reveal();
  }
  // The reconciler ends the session within a couple of its one-second ticks.
  Json s;
  for (int i = 0; i < 100; ++i) {
    s = server_.Op(verb::get, "/v1/sessions/" + id).json();
    if (s["state"] != "running") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(s["state"], "failed");
  EXPECT_EQ(server_.Sb(verb::get, "/sandbox/v1/history", token).status, 401u);
}

TEST_F(ApiTest, TokenOfOneSessionNeverReachesAnother) {
  auto [a, ta] = server_.NewSession("task of a");
  auto [b, tb] = server_.NewSession("task of b");
  auto inbox = server_.Sb(verb::get, "/sandbox/v1/inbox", ta).json();
  EXPECT_EQ(inbox["messages"][0]["content"], "task of a");
  // Claiming the other session in a header is refused, not honoured.
  auto claim = server_.Sb(verb::get, "/sandbox/v1/history", ta, "", {{"SESSION_ID", b}});
  EXPECT_EQ(claim.status, 403u);
  // A session id in the query or body is ignored: the token decides.
  server_.Sb(verb::post, "/sandbox/v1/events?session=" + b, ta, R"({"type":"probe","data":{}})");
  auto evs_b =
      server_.Op(verb::get, "/v1/sessions/" + b + "/events", "", {{"Accept", "application/json"}})
          .json();
  for (const auto& e : evs_b) EXPECT_NE(e["type"], "probe");
  // Finishing with a's token ends a only.
  server_.Sb(verb::post, "/sandbox/v1/finish", ta, R"({"status":"succeeded"})");
  EXPECT_EQ(server_.Op(verb::get, "/v1/sessions/" + b).json()["state"], "running");
  EXPECT_EQ(server_.Sb(verb::get, "/sandbox/v1/inbox", tb).json()["messages"][0]["content"],
            "task of b");
}

TEST_F(ApiTest, PerSessionSocketServesOnlyItsOwnSession) {
  auto [a, ta] = server_.NewSession();
  auto [b, tb] = server_.NewSession();
  std::string sock = server_.home() + "/run/" + a + "/control.sock";
  auto exchange = [&](const std::string& token) {
    int fd = RawConnectUnix(sock);
    EXPECT_GE(fd, 0);
    WriteAll(fd, "GET /sandbox/v1/history HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token +
                     "\r\nConnection: close\r\n\r\n");
    std::string resp = ReadUntilClose(fd);
    ::close(fd);
    return resp;
  };
  EXPECT_TRUE(exchange(ta).starts_with("HTTP/1.1 200")) << exchange(ta);
  EXPECT_TRUE(exchange(tb).starts_with("HTTP/1.1 401"));
  // Once the session ends, its socket is gone.
  server_.Op(verb::delete_, "/v1/sessions/" + a);
  EXPECT_LT(RawConnectUnix(sock), 0);
}

TEST_F(ApiTest, StateMachineRefusesBadTransitionsWith409) {
  auto [id, token] = server_.NewSession();
  EXPECT_EQ(server_.Op(verb::post, "/v1/sessions/" + id + "/resume").status, 409u);
  auto susp = server_.Op(verb::post, "/v1/sessions/" + id + "/suspend");
  ASSERT_EQ(susp.status, 200u);
  EXPECT_EQ(susp.json()["state"], "suspended");
  EXPECT_EQ(server_.Op(verb::post, "/v1/sessions/" + id + "/suspend").status, 409u);
  {
    std::lock_guard l(server_.backend().mu);
    EXPECT_EQ(server_.backend().state["test:" + id], "paused");
  }
  // A follow-up message resumes a suspended sandbox.
  EXPECT_EQ(
      server_.Op(verb::post, "/v1/sessions/" + id + "/messages", R"({"content":"hi"})").status,
      202u);
  EXPECT_EQ(server_.Op(verb::get, "/v1/sessions/" + id).json()["state"], "running");
  server_.Op(verb::delete_, "/v1/sessions/" + id);
  EXPECT_EQ(server_.Op(verb::post, "/v1/sessions/" + id + "/suspend").status, 409u);
  EXPECT_EQ(server_.Op(verb::post, "/v1/sessions/" + id + "/resume").status, 409u);
  auto late = server_.Op(verb::post, "/v1/sessions/" + id + "/messages", R"({"content":"late"})");
  EXPECT_EQ(late.status, 409u);
  EXPECT_EQ(late.error_code(), "conflict");
}

TEST_F(ApiTest, SandboxEventsAreValidatedAndOrdered) {
  auto [id, token] = server_.NewSession();
  for (int i = 1; i <= 5; ++i) {
    auto r = server_.Sb(verb::post, "/sandbox/v1/events", token,
                        DumpJson(Json{{"type", "step"}, {"data", {{"i", i}}}}));
    ASSERT_EQ(r.status, 202u) << r.body;
  }
  EXPECT_EQ(
      server_.Sb(verb::post, "/sandbox/v1/events", token, R"({"type":"session.state","data":{}})")
          .status,
      400u);
  EXPECT_EQ(server_.Sb(verb::post, "/sandbox/v1/events", token, R"({"type":"llm.call"})").status,
            400u);
  EXPECT_EQ(server_.Sb(verb::post, "/sandbox/v1/events", token, R"({"type":"Bad Type"})").status,
            400u);
  EXPECT_EQ(
      server_.Sb(verb::post, "/sandbox/v1/events", token, R"({"type":"x","data":[1]})").status,
      400u);
  auto evs = server_
                 .Op(verb::get, "/v1/sessions/" + id + "/events?after=0", "",
                     {{"Accept", "application/json"}})
                 .json();
  std::vector<int> steps;
  int64_t prev = 0;
  for (const auto& e : evs) {
    EXPECT_EQ(e["seq"].get<int64_t>(), prev + 1);
    prev = e["seq"];
    if (e["type"] == "step") steps.push_back(e["data"]["i"]);
  }
  EXPECT_EQ(steps, (std::vector<int>{1, 2, 3, 4, 5}));
}

TEST_F(ApiTest, MessagesShowConversationAndPendingInbox) {
  auto [id, token] = server_.NewSession("t");
  auto before = server_.Op(verb::get, "/v1/sessions/" + id + "/messages").json();
  EXPECT_EQ(before["messages"].size(), 0u);
  EXPECT_EQ(before["pending"].size(), 1u);
  server_.Sb(verb::get, "/sandbox/v1/inbox", token);
  auto after = server_.Op(verb::get, "/v1/sessions/" + id + "/messages").json();
  EXPECT_EQ(after["messages"].size(), 1u);
  EXPECT_EQ(after["pending"].size(), 0u);
}

TEST_F(ApiTest, MetricsAreExposedInPrometheusFormat) {
  server_.NewSession();
  auto r = HttpCall(server_.op_port(), verb::get, "/metrics");
  EXPECT_EQ(r.status, 200u);
  EXPECT_NE(r.headers["Content-Type"].find("text/plain; version=0.0.4"), std::string::npos);
  EXPECT_NE(r.body.find("# TYPE airlock_http_requests_total counter"), std::string::npos);
  EXPECT_NE(r.body.find("airlock_sessions_created_total{backend=\"test\"} 1"), std::string::npos);
  EXPECT_NE(r.body.find("airlock_http_request_duration_seconds_bucket"), std::string::npos);
}

TEST_F(ApiTest, RequestIdIsEchoedOrGenerated) {
  auto given =
      HttpCall(server_.op_port(), verb::get, "/healthz", "", "", {{"X-Request-Id", "abc-123"}});
  EXPECT_EQ(given.headers["X-Request-Id"], "abc-123");
  auto hostile =
      HttpCall(server_.op_port(), verb::get, "/healthz", "", "", {{"X-Request-Id", "a\"b{}"}});
  EXPECT_FALSE(hostile.headers["X-Request-Id"].empty());
  EXPECT_NE(hostile.headers["X-Request-Id"], "a\"b{}");
}

TEST_F(ApiTest, ADeadSandboxsParkedInboxPollCannotTakeMessagesMeantForItsReplacement) {
  auto [id, old_token] = server_.NewSession();
  ASSERT_EQ(server_.Sb(verb::get, "/sandbox/v1/inbox", old_token).status, 200u);  // the task
  // The sandbox is waiting on its inbox when it dies; its poll stays parked on our side.
  HttpResult old_poll;
  std::thread poller(
      [&, t = old_token] { old_poll = server_.Sb(verb::get, "/sandbox/v1/inbox?wait=20", t); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  {
    std::lock_guard l(server_.backend().mu);
    server_.backend().state["test:" + id] = "destroyed";
  }
  // The reconciler gives the session a fresh sandbox with a new token.
  std::string new_token;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    {
      std::lock_guard l(server_.backend().mu);
      new_token = server_.backend().specs.at(id).token.Reveal();
    }
    if (new_token != old_token) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_NE(new_token, old_token) << "no fresh sandbox";
  poller.join();
  EXPECT_EQ(old_poll.status, 401u) << "the dead sandbox's poll must end, not wait for messages";
  // A follow-up now waits for the new sandbox, and only it can take it.
  ASSERT_EQ(
      server_.Op(verb::post, "/v1/sessions/" + id + "/messages", R"({"content":"for the new one"})")
          .status,
      202u);
  EXPECT_EQ(server_.Sb(verb::get, "/sandbox/v1/inbox", old_token).status, 401u);
  auto pending = server_.Op(verb::get, "/v1/sessions/" + id + "/messages").json()["pending"];
  ASSERT_EQ(pending.size(), 1u) << pending.dump();
  auto taken = server_.Sb(verb::get, "/sandbox/v1/inbox", new_token);
  ASSERT_EQ(taken.status, 200u) << taken.body;
  EXPECT_EQ(taken.json()["messages"][0]["content"], "for the new one");
}

// The token cache (controlplane/token_cache.h) must never let a revoked token through. Its
// entries here live an hour, so only the invalidation can make these refusals happen.
class TokenCacheApiTest : public ::testing::Test {
 protected:
  TestServer server_{[](controlplane::Config& c) { c.token_cache_ms = 3'600'000; }};
};

TEST_F(TokenCacheApiTest, AKilledSessionsTokenIsRefusedAtOnceThoughItWasJustUsed) {
  auto [id, token] = server_.NewSession();
  ASSERT_EQ(server_.Sb(verb::post, "/sandbox/v1/events", token, R"({"type":"x"})").status, 202u);
  ASSERT_EQ(server_.Op(verb::delete_, "/v1/sessions/" + id).status, 200u);
  EXPECT_EQ(server_.Sb(verb::post, "/sandbox/v1/events", token, R"({"type":"x"})").status, 401u);
}

TEST_F(TokenCacheApiTest, AFinishedSessionsTokenIsRefusedAtOnceThoughItWasJustUsed) {
  auto [id, token] = server_.NewSession();
  ASSERT_EQ(server_.Sb(verb::post, "/sandbox/v1/events", token, R"({"type":"x"})").status, 202u);
  ASSERT_EQ(server_.Sb(verb::post, "/sandbox/v1/finish", token, R"({"status":"succeeded"})").status,
            200u);
  EXPECT_EQ(server_.Sb(verb::post, "/sandbox/v1/events", token, R"({"type":"x"})").status, 401u);
}

TEST_F(TokenCacheApiTest, ARestartedSandboxsOldTokenIsRefusedAtOnceThoughItWasJustUsed) {
  auto [id, old_token] = server_.NewSession();
  ASSERT_EQ(server_.Sb(verb::post, "/sandbox/v1/events", old_token, R"({"type":"x"})").status,
            202u);
  {
    std::lock_guard l(server_.backend().mu);
    server_.backend().state["test:" + id] = "destroyed";
  }
  // The reconciler gives the session a fresh sandbox; its token reaches the backend after the
  // old one was revoked.
  std::string new_token = old_token;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (new_token == old_token && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::lock_guard l(server_.backend().mu);
    new_token = server_.backend().specs.at(id).token.Reveal();
  }
  ASSERT_NE(new_token, old_token) << "no fresh sandbox";
  EXPECT_EQ(server_.Sb(verb::post, "/sandbox/v1/events", old_token, R"({"type":"x"})").status,
            401u);
  EXPECT_EQ(server_.Sb(verb::post, "/sandbox/v1/events", new_token, R"({"type":"x"})").status,
            202u);
}

}  // namespace
}  // namespace airlock::testing
