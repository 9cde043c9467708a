// Operator keys and sandbox tokens checked without a server: requests are built by hand and
// the store is SQLite in a temporary home.
#include "controlplane/authenticator.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

#include "common/crypto.h"
#include "controlplane/plug_points.h"
#include "controlplane/validation.h"

namespace airlock::controlplane {
namespace {

std::string TempHome() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "airlock-auth-XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  return tmpl;
}

Request RequestWith(std::string path, std::string_view bearer) {
  Request r;
  r.path = std::move(path);
  if (!bearer.empty()) r.msg.set(http::field::authorization, "Bearer " + std::string(bearer));
  return r;
}

class AuthenticatorTest : public ::testing::Test {
 protected:
  AuthenticatorTest()
      : home_(TempHome()),
        config_(*ParseConfig("", home_)),
        store_(std::move(*OpenStore(config_))),
        auth_failures_(registry_.AddCounter("auth_failures", "Refused.", {"listener"})),
        auth_(Authenticator::Deps{config_, *store_, pool_, operator_routes_, sandbox_routes_,
                                  auth_failures_,
                                  [this](const std::string& id, Authenticator::SandboxActivity a) {
                                    if (a == Authenticator::SandboxActivity::kWorking) {
                                      at_work_.push_back(id);
                                    }
                                  }}) {}
  ~AuthenticatorTest() override {
    pool_.join();
    std::error_code ec;
    std::filesystem::remove_all(home_, ec);
  }

  template <typename T>
  T Run(awaitable<T> op) {
    std::optional<T> out;
    asio::co_spawn(
        io_, [&]() -> awaitable<void> { out.emplace(co_await std::move(op)); }, asio::detached);
    io_.restart();
    io_.run();
    return std::move(*out);
  }

  // A running session in the store whose sandbox holds the token returned.
  std::string NewSession(const std::string& id) {
    Secret token = NewToken(kSessionTokenPrefix);
    store::Session s;
    s.id = id;
    s.state = store::SessionState::kRunning;
    s.image = "base";
    s.backend = "test";
    s.model = "default";
    s.token_hash = Sha256Hex(token.Reveal());
    s.created_at = s.updated_at = 1;
    EXPECT_TRUE(store_->CreateSession(s, Json{{"role", "user"}, {"content", "x"}}));
    return token.Reveal();
  }

  std::string home_;
  Config config_;
  asio::io_context io_;
  std::unique_ptr<store::Store> store_;
  asio::thread_pool pool_{1};
  metrics::Registry registry_;
  metrics::Family<metrics::Counter>& auth_failures_;
  Router operator_routes_;
  Router sandbox_routes_;
  std::vector<std::string> at_work_;
  Authenticator auth_;
};

TEST_F(AuthenticatorTest, AcceptsOnlyTheOperatorKeyItWrote) {
  ASSERT_TRUE(auth_.EnsureOperatorKeys());
  std::string key;
  std::getline(std::ifstream(home_ + "/operator.key"), key);
  ASSERT_TRUE(key.starts_with(kOperatorKeyPrefix)) << key;
  EXPECT_TRUE(auth_.CheckOperator(RequestWith("/v1/sessions", key)));
  auto wrong = auth_.CheckOperator(RequestWith("/v1/sessions", key + "x"));
  ASSERT_FALSE(wrong);
  EXPECT_EQ(wrong.error().code, ErrorCode::kUnauthenticated);
  EXPECT_EQ(wrong.error().message, "invalid operator key");
  auto missing = auth_.CheckOperator(RequestWith("/v1/sessions", ""));
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().message, "missing \"Authorization: Bearer <operator key>\"");
  EXPECT_EQ(auth_failures_.With({"operator"}).Value(), 2.0);
}

TEST_F(AuthenticatorTest, ASandboxTokenNamesItsSessionAndItsWorkIsReported) {
  std::string token = NewSession("ses_aaaaaaaaaaaaaaaaaaaaaaaa");
  auto s = Run(auth_.AuthenticateSandbox(RequestWith("/sandbox/v1/history", token)));
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_EQ(s->id, "ses_aaaaaaaaaaaaaaaaaaaaaaaa");
  EXPECT_EQ(at_work_, std::vector<std::string>{"ses_aaaaaaaaaaaaaaaaaaaaaaaa"});
  // Waiting on the inbox is not work.
  ASSERT_TRUE(Run(auth_.AuthenticateSandbox(RequestWith("/sandbox/v1/inbox", token))));
  EXPECT_EQ(at_work_.size(), 1u);
  // Known now: the cache answers without the store.
  auto cached = auth_.IdentifyCached(RequestWith("/sandbox/v1/events", token));
  ASSERT_TRUE(cached);
  ASSERT_TRUE(*cached);
  EXPECT_EQ((*cached)->session_id, "ses_aaaaaaaaaaaaaaaaaaaaaaaa");
  EXPECT_EQ((*cached)->token_hash, Sha256Hex(token));
}

TEST_F(AuthenticatorTest, RefusesUnknownTokensAndClaimsOfAnotherSession) {
  std::string token = NewSession("ses_aaaaaaaaaaaaaaaaaaaaaaaa");
  auto unknown = Run(auth_.AuthenticateSandbox(
      RequestWith("/sandbox/v1/history", std::string(kSessionTokenPrefix) + "nope")));
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().code, ErrorCode::kUnauthenticated);
  EXPECT_EQ(unknown.error().message, "invalid, expired or revoked session token");
  EXPECT_FALSE(auth_.IdentifyCached(RequestWith("/sandbox/v1/events", "nope")));

  Request other_socket = RequestWith("/sandbox/v1/history", token);
  other_socket.bound_session = "ses_bbbbbbbbbbbbbbbbbbbbbbbb";
  auto socket = Run(auth_.AuthenticateSandbox(other_socket));
  ASSERT_FALSE(socket);
  EXPECT_EQ(socket.error().code, ErrorCode::kUnauthenticated);
  EXPECT_EQ(socket.error().message, "this token belongs to another session than this socket");

  Request other_claim = RequestWith("/sandbox/v1/history", token);
  other_claim.msg.set("SESSION_ID", "ses_bbbbbbbbbbbbbbbbbbbbbbbb");
  auto claim = Run(auth_.AuthenticateSandbox(other_claim));
  ASSERT_FALSE(claim);
  EXPECT_EQ(claim.error().code, ErrorCode::kPermissionDenied);
  EXPECT_TRUE(at_work_.empty());
}

}  // namespace
}  // namespace airlock::controlplane
