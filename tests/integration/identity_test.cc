// Identity after start: a backend that declares IdentityDelivery::kOverChannel gets no token
// in its spec; its sandbox asks for it on its own socket (GET /sandbox/v1/identity), once.
// The test backend plays such a backend; the test plays airlock-init on the socket.
#include <gtest/gtest.h>

#include "tests/integration/harness.h"

namespace airlock::testing {
namespace {

using http::verb;

class IdentityTest : public ::testing::Test {
 protected:
  IdentityTest() {
    std::lock_guard l(server_->backend().mu);
    server_->backend().identity_over_channel = true;
  }
  // Creates a session; its sandbox has not asked for its identity yet.
  std::string Create(TestServer& server, const std::string& task = "do the thing") {
    auto r = server.Op(verb::post, "/v1/sessions", DumpJson(Json{{"task", task}}));
    EXPECT_EQ(r.status, 201u) << r.body;
    return r.json().value("id", "");
  }
  std::string Socket(TestServer& server, const std::string& id) {
    return server.cp().ControlSocketDir(id) + "/control.sock";
  }
  HttpResult Fetch(TestServer& server, const std::string& id) {
    return UnixGet(Socket(server, id), "/sandbox/v1/identity");
  }
  std::string State(TestServer& server, const std::string& id) {
    return server.Op(verb::get, "/v1/sessions/" + id).json().value("state", "");
  }
  std::unique_ptr<TestServer> server_ = std::make_unique<TestServer>();
};

TEST_F(IdentityTest, ASandboxStartsWithoutATokenAndTakesItOnceOnItsSocket) {
  std::string id = Create(*server_);
  {
    std::lock_guard l(server_->backend().mu);
    const auto& spec = server_->backend().specs.at(id).spec;
    EXPECT_FALSE(spec.identity.has_value()) << "the token travelled in the spec";
  }
  EXPECT_EQ(State(*server_, id), "starting");
  auto first = Fetch(*server_, id);
  ASSERT_EQ(first.status, 200u) << first.body;
  Json identity = first.json();
  // The id, the token, and the session's work (so that init needs no second request).
  EXPECT_EQ(identity.size(), 3u) << first.body;
  EXPECT_EQ(identity.value("session_id", ""), id);
  std::string token = identity.value("token", "");
  EXPECT_TRUE(token.starts_with("ast_")) << first.body;
  EXPECT_EQ(State(*server_, id), "running");
  auto work = server_->Sb(verb::get, "/sandbox/v1/work", token);
  ASSERT_EQ(work.status, 200u) << work.body;
  EXPECT_EQ(identity["work"], work.json()) << first.body;
  // The token is the session's: the agent takes its task with it.
  auto inbox = server_->Sb(verb::get, "/sandbox/v1/inbox", token);
  ASSERT_EQ(inbox.status, 200u) << inbox.body;
  EXPECT_EQ(inbox.json()["messages"][0]["content"], "do the thing");
  // Asked again on the same socket (the agent reaches it through init's bridge): refused,
  // and the first token still works.
  auto again = Fetch(*server_, id);
  EXPECT_EQ(again.status, 409u) << again.body;
  EXPECT_EQ(again.body.find("ast_"), std::string::npos);
  EXPECT_EQ(server_->Sb(verb::get, "/sandbox/v1/history", token).status, 200u);
  EXPECT_TRUE(WaitForMetric(*server_, "airlock_identity_requests_total{outcome=\"again\"} 1"));
  EXPECT_TRUE(WaitForMetric(*server_, "airlock_identity_requests_total{outcome=\"delivered\"} 1"));
}

TEST_F(IdentityTest, TheIdentityIsNeverHandedOutOverTcp) {
  std::string id = Create(*server_);
  // Without a credential the TCP listener refuses before any handler runs.
  auto anonymous = server_->Sb(verb::get, "/sandbox/v1/identity", "");
  EXPECT_EQ(anonymous.status, 401u) << anonymous.body;
  EXPECT_EQ(State(*server_, id), "starting");
  auto delivered = Fetch(*server_, id);
  ASSERT_EQ(delivered.status, 200u) << delivered.body;
  // Even with the session's own token, TCP is not a sandbox's channel.
  std::string token = delivered.json().value("token", "");
  auto with_token = server_->Sb(verb::get, "/sandbox/v1/identity", token);
  EXPECT_EQ(with_token.status, 403u) << with_token.body;
  EXPECT_EQ(with_token.body.find("ast_"), std::string::npos);
}

TEST_F(IdentityTest, ASocketHandsOutItsOwnSessionsIdentityOnly) {
  std::string a = Create(*server_, "task a");
  std::string b = Create(*server_, "task b");
  auto from_a = Fetch(*server_, a);
  auto from_b = Fetch(*server_, b);
  ASSERT_EQ(from_a.status, 200u) << from_a.body;
  ASSERT_EQ(from_b.status, 200u) << from_b.body;
  EXPECT_EQ(from_a.json()["session_id"], a);
  EXPECT_EQ(from_b.json()["session_id"], b);
  std::string token_a = from_a.json()["token"];
  EXPECT_NE(token_a, from_b.json()["token"].get<std::string>());
  // A's token is worthless on B's socket, and B's socket has nothing more to give.
  int fd = RawConnectUnix(Socket(*server_, b));
  ASSERT_GE(fd, 0);
  WriteAll(fd, "GET /sandbox/v1/inbox HTTP/1.1\r\nHost: airlock\r\nAuthorization: Bearer " +
                   token_a + "\r\nConnection: close\r\n\r\n");
  std::string raw = ReadOneResponse(fd);
  ::close(fd);
  EXPECT_TRUE(raw.starts_with("HTTP/1.1 401")) << raw;
  EXPECT_EQ(Fetch(*server_, b).status, 409u);
}

TEST_F(IdentityTest, AControlPlaneRestartBeforeDeliveryStillEndsWithAWorkingAgent) {
  std::string id = Create(*server_);
  std::string home = server_->home();
  std::string socket = Socket(*server_, id);
  auto sandboxes = server_->shared_backend();
  // The control plane stops before the sandbox asked; the sandbox lives on, and its init
  // keeps asking while nobody answers.
  server_.reset();
  EXPECT_EQ(UnixGet(socket, "/sandbox/v1/identity").status, 0u) << "nobody should listen";
  server_ = std::make_unique<TestServer>(nullptr, home, sandboxes);
  // The new control plane listens on the session's socket again once it has re-attached.
  HttpResult after;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while ((after = UnixGet(socket, "/sandbox/v1/identity")).status == 0 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(after.status, 200u) << after.body;
  EXPECT_EQ(after.json()["session_id"], id);
  std::string token = after.json().value("token", "");
  auto inbox = server_->Sb(verb::get, "/sandbox/v1/inbox", token);
  ASSERT_EQ(inbox.status, 200u) << inbox.body;
  EXPECT_EQ(inbox.json()["messages"][0]["content"], "do the thing");
  EXPECT_EQ(State(*server_, id), "running");
  EXPECT_EQ(UnixGet(socket, "/sandbox/v1/identity").status, 409u);
}

TEST_F(IdentityTest, ASessionEndedBeforeDeliveryHandsOutNoIdentity) {
  std::string id = Create(*server_);
  std::string socket = Socket(*server_, id);
  ASSERT_EQ(server_->Op(verb::delete_, "/v1/sessions/" + id).status, 200u);
  EXPECT_EQ(State(*server_, id), "killed");
  auto late = UnixGet(socket, "/sandbox/v1/identity");
  EXPECT_NE(late.status, 200u) << late.body;
  EXPECT_EQ(late.body.find("ast_"), std::string::npos);
}

}  // namespace
}  // namespace airlock::testing
