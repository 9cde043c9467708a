#include "controlplane/requests.h"

#include <gtest/gtest.h>

#include "store/store_test_util.h"

namespace airlock::controlplane {
namespace {

Config TestConfig() {
  Config c;
  c.default_image = "base";
  c.default_model = "default";
  c.default_backend = "oci";
  c.max_task_bytes = 16;
  c.max_message_bytes = 8;
  c.models["fast"] = ModelConfig{};
  c.models["smart"] = ModelConfig{};
  return c;
}

// The refusal of `body`, which must be refused.
Error CreateRefusal(const Json& body) {
  auto r = ParseCreateSession(body, TestConfig());
  EXPECT_FALSE(r.has_value()) << body;
  return r ? Error{} : r.error();
}

TEST(ParseCreateSessionTest, FillsTheConfiguredDefaultsForWhatTheBodyLeavesOut) {
  auto r = ParseCreateSession(Json{{"task", "fix it"}}, TestConfig());
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->task, "fix it");
  EXPECT_EQ(r->image, "base");
  EXPECT_EQ(r->model, "default");
  EXPECT_EQ(r->backend, "oci");
  EXPECT_EQ(r->models, Json::array());
  EXPECT_EQ(r->command, Json::array());
  EXPECT_EQ(r->limits, Json::object());
  EXPECT_EQ(r->metadata, Json::object());
}

TEST(ParseCreateSessionTest, TakesEveryFieldItIsGiven) {
  Json body = {{"task", "fix it"},
               {"image", "python"},
               {"model", "fast"},
               {"models", {"fast", "smart"}},
               {"backend", "process"},
               {"command", {"python3", "agent.py"}},
               {"limits", {{"timeout_s", 60}}},
               {"metadata", {{"ticket", "T-1"}}}};
  auto r = ParseCreateSession(body, TestConfig());
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->image, "python");
  EXPECT_EQ(r->model, "fast");
  EXPECT_EQ(r->models, (Json{"fast", "smart"}));
  EXPECT_EQ(r->backend, "process");
  EXPECT_EQ(r->command, (Json{"python3", "agent.py"}));
  EXPECT_EQ(r->limits["timeout_s"], 60);
  EXPECT_EQ(r->metadata["ticket"], "T-1");
}

TEST(ParseCreateSessionTest, RefusesUnknownFields) {
  Error e = CreateRefusal({{"task", "x"}, {"tusk", "x"}});
  EXPECT_EQ(e.code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(e.message, "unknown field(s) in session: \"tusk\"");
}

TEST(ParseCreateSessionTest, RefusesAMissingOrEmptyTask) {
  Error missing = CreateRefusal(Json::object());
  EXPECT_EQ(missing.code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(missing.message, "\"task\" is required");
  Error empty = CreateRefusal({{"task", ""}});
  EXPECT_EQ(empty.code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(empty.message, "\"task\" must not be empty");
}

TEST(ParseCreateSessionTest, RefusesATaskOverTheLimitAsTooLarge) {
  Error e = CreateRefusal({{"task", std::string(17, 'x')}});
  EXPECT_EQ(e.code, ErrorCode::kPayloadTooLarge);
  EXPECT_EQ(e.message, "\"task\" exceeds 16 bytes");
  EXPECT_TRUE(ParseCreateSession({{"task", std::string(16, 'x')}}, TestConfig()));
}

TEST(ParseCreateSessionTest, RefusesABadName) {
  Error e = CreateRefusal({{"task", "x"}, {"image", "../etc"}});
  EXPECT_EQ(e.code, ErrorCode::kInvalidArgument);
  EXPECT_NE(e.message.find("image"), std::string::npos) << e.message;
}

TEST(ParseCreateSessionTest, RefusesModelAliasesThatAreNotConfigured) {
  Error model = CreateRefusal({{"task", "x"}, {"model", "slow"}});
  EXPECT_EQ(model.code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(model.message, "unknown model alias \"slow\" (configured: fast, smart)");
  Error models = CreateRefusal({{"task", "x"}, {"models", {"fast", "slow"}}});
  EXPECT_EQ(models.message, "unknown model alias \"slow\" (configured: fast, smart)");
}

TEST(ParseCreateSessionTest, RefusesModelsThatAreNotAListOfAliases) {
  Error not_array = CreateRefusal({{"task", "x"}, {"models", "fast"}});
  EXPECT_EQ(not_array.code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(not_array.message,
            "\"models\" must be an array of at most 32 model aliases the sandbox may pick");
  Error not_strings = CreateRefusal({{"task", "x"}, {"models", {1}}});
  EXPECT_EQ(not_strings.message, "\"models\" holds model aliases (strings)");
}

TEST(ParseCreateSessionTest, RefusesABadCommandOrLimits) {
  EXPECT_EQ(CreateRefusal({{"task", "x"}, {"command", {""}}}).code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(CreateRefusal({{"task", "x"}, {"limits", {{"nonsense", 1}}}}).code,
            ErrorCode::kInvalidArgument);
}

TEST(ParseCreateSessionTest, RefusesMetadataThatIsNotAnObject) {
  Error e = CreateRefusal({{"task", "x"}, {"metadata", {1, 2}}});
  EXPECT_EQ(e.code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(e.message, "\"metadata\" must be an object of at most 16 KiB");
}

TEST(ParsePostMessageTest, TakesTheContentAndRefusesItEmptyOrTooLarge) {
  auto ok = ParsePostMessage({{"content", "more"}}, TestConfig());
  ASSERT_TRUE(ok);
  EXPECT_EQ(*ok, "more");
  auto empty = ParsePostMessage({{"content", ""}}, TestConfig());
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.error().message, "\"content\" must not be empty");
  auto large = ParsePostMessage({{"content", "123456789"}}, TestConfig());
  ASSERT_FALSE(large);
  EXPECT_EQ(large.error().code, ErrorCode::kPayloadTooLarge);
  EXPECT_EQ(large.error().message, "\"content\" exceeds 8 bytes");
}

TEST(ParseFinishTest, TakesTheOutcomeAndTheResult) {
  auto r = ParseFinish({{"status", "failed"}, {"result", "gave up"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->state, store::SessionState::kFailed);
  EXPECT_EQ(r->result, "gave up");
  auto no_result = ParseFinish({{"status", "succeeded"}});
  ASSERT_TRUE(no_result);
  EXPECT_EQ(no_result->state, store::SessionState::kSucceeded);
  EXPECT_FALSE(no_result->result);
}

TEST(ParseFinishTest, RefusesAnUnknownStatusALargeResultAndANul) {
  auto status = ParseFinish({{"status", "done"}});
  ASSERT_FALSE(status);
  EXPECT_EQ(status.error().message, "\"status\" must be \"succeeded\" or \"failed\"");
  auto large = ParseFinish({{"status", "succeeded"}, {"result", std::string(65537, 'x')}});
  ASSERT_FALSE(large);
  EXPECT_EQ(large.error().code, ErrorCode::kPayloadTooLarge);
  auto nul = ParseFinish({{"status", "succeeded"}, {"result", std::string("a\0b", 3)}});
  ASSERT_FALSE(nul);
  EXPECT_EQ(nul.error().message, "\"result\" must not contain NUL characters (\\u0000)");
}

TEST(ParseSuspendTest, PausesUnlessAskedToHibernate) {
  EXPECT_EQ(ParseSuspend(Json::object()), store::SuspendTier::kPaused);
  EXPECT_EQ(ParseSuspend({{"mode", "pause"}}), store::SuspendTier::kPaused);
  EXPECT_EQ(ParseSuspend({{"mode", "hibernate"}}), store::SuspendTier::kHibernated);
}

TEST(ParseSuspendTest, RefusesAnUnknownModeAndUnknownKeys) {
  auto mode = ParseSuspend({{"mode", "sleep"}});
  ASSERT_FALSE(mode);
  EXPECT_EQ(mode.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(mode.error().message, "\"mode\" must be \"pause\" or \"hibernate\"");
  auto not_text = ParseSuspend({{"mode", 2}});
  ASSERT_FALSE(not_text);
  EXPECT_EQ(not_text.error().code, ErrorCode::kInvalidArgument);
  auto unknown = ParseSuspend({{"tier", "paused"}});
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().code, ErrorCode::kInvalidArgument);
}

Config EgressConfigForTest() {
  Config c = TestConfig();
  auto top = egress::ParsePolicy(std::vector<std::string>{"*.github.com", "pypi.org"},
                                 std::vector<std::string>{"10.0.0.5:5432"});
  EXPECT_TRUE(top.has_value());
  c.egress.allow = *top;
  auto pip = egress::ParsePolicy(std::vector<std::string>{"pypi.org:443"}, {});
  c.egress.policies["pip"] = *pip;
  return c;
}

TEST(ParseSessionEgressTest, ANarrowerListOrANamedPolicyIsStoredAsGiven) {
  Config c = EgressConfigForTest();
  Json own = {{"allow", {"api.github.com:443"}}, {"allow_addresses", {"10.0.0.5:5432"}}};
  ASSERT_OK_AND_ASSIGN(Json stored, ParseSessionEgress(&own, c));
  EXPECT_EQ(stored, own);
  ASSERT_OK_AND_ASSIGN(egress::Policy p, SessionEgressPolicy(stored, c));
  EXPECT_TRUE(p.AllowsName("api.github.com", 443));
  EXPECT_FALSE(p.AllowsName("github.com", 443));

  Json named = {{"policy", "pip"}};
  ASSERT_OK_AND_ASSIGN(stored, ParseSessionEgress(&named, c));
  EXPECT_EQ(stored, named);
  ASSERT_OK_AND_ASSIGN(p, SessionEgressPolicy(stored, c));
  EXPECT_TRUE(p.AllowsName("pypi.org", 443));

  // Left out: the default policy, when there is one; else nothing.
  ASSERT_OK_AND_ASSIGN(stored, ParseSessionEgress(nullptr, c));
  EXPECT_EQ(stored, Json::object());
  c.egress.default_policy = "pip";
  ASSERT_OK_AND_ASSIGN(stored, ParseSessionEgress(nullptr, c));
  EXPECT_EQ(stored, named);
  ASSERT_OK_AND_ASSIGN(p, SessionEgressPolicy(Json::object(), c));
  EXPECT_TRUE(p.empty());
}

TEST(ParseSessionEgressTest, WideningAnUnknownPolicyAndBadShapesAreRefused) {
  Config c = EgressConfigForTest();
  struct Case {
    Json egress;
    std::string says;
  };
  for (const Case& k : std::vector<Case>{
           {{{"allow", {"example.com"}}}, "may only narrow"},
           {{{"allow", {"*"}}}, "may only narrow"},
           {{{"allow", {"pypi.org:22"}}}, "may only narrow"},
           {{{"allow_addresses", {"10.0.0.6:5432"}}}, "may only narrow"},
           {{{"policy", "nope"}}, "no egress policy \"nope\" is configured (configured: pip)"},
           {{{"policy", "pip"}, {"allow", {"pypi.org"}}}, "must be {\"policy\": NAME}"},
           {{{"allw", {"pypi.org"}}}, "\"allw\" is not one of its members"},
           {{{"allow", "pypi.org"}}, "must be an array"},
           {{{"allow", {1}}}, "holds strings"},
           {Json::array(), "must be {\"policy\": NAME}"},
       }) {
    auto r = ParseSessionEgress(&k.egress, c);
    ASSERT_FALSE(r.has_value()) << k.egress;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(r.error().message.find(k.says), std::string::npos)
        << k.egress << " -> " << r.error().message;
  }
}

TEST(ParseSessionEgressTest, ASessionNamesItsSecretsBesideEitherForm) {
  Config c = EgressConfigForTest();
  c.secrets["github"].sandbox_env = "GH_KEY";
  c.secrets["pypi"].sandbox_env = "PYPI_KEY";
  Json named = {{"policy", "pip"}, {"secrets", {"pypi", "github", "pypi"}}};
  ASSERT_OK_AND_ASSIGN(Json stored, ParseSessionEgress(&named, c));
  EXPECT_EQ(stored, (Json{{"policy", "pip"}, {"secrets", {"github", "pypi"}}}));
  EXPECT_EQ(SessionSecretNames(stored), (std::vector<std::string>{"github", "pypi"}));
  ASSERT_OK_AND_ASSIGN(egress::Policy p, SessionEgressPolicy(stored, c));
  EXPECT_TRUE(p.AllowsName("pypi.org", 443));
  Json own = {{"allow", {"api.github.com"}}, {"secrets", {"github"}}};
  ASSERT_OK_AND_ASSIGN(stored, ParseSessionEgress(&own, c));
  EXPECT_EQ(stored["secrets"], Json::array({"github"}));
  EXPECT_TRUE(SessionSecretNames(Json::object()).empty());

  Json unknown = {{"policy", "pip"}, {"secrets", {"aws"}}};
  auto r = ParseSessionEgress(&unknown, c);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("no secret \"aws\" is configured (configured: github, pypi)"),
            std::string::npos)
      << r.error().message;
  // The agent's variable of a secret is the placeholder's; the session's "env" may not take it.
  Json body = {{"task", "t"}, {"egress", named}, {"env", {{"GH_KEY", "mine"}}}};
  auto create = ParseCreateSession(body, c);
  ASSERT_FALSE(create.has_value());
  EXPECT_NE(create.error().message.find("GH_KEY holds the placeholder of secret github"),
            std::string::npos)
      << create.error().message;
}

TEST(ParseSessionEgressTest, AStoredPolicyThatNoLongerFitsTheConfigurationReachesNothing) {
  Config c = EgressConfigForTest();
  Json own = {{"allow", {"api.github.com"}}};
  ASSERT_OK_AND_ASSIGN(Json stored, ParseSessionEgress(&own, c));
  // The operator narrowed [egress] since the session was created.
  c.egress.allow = *egress::ParsePolicy(std::vector<std::string>{"pypi.org"}, {});
  auto p = SessionEgressPolicy(stored, c);
  ASSERT_FALSE(p.has_value());
  EXPECT_EQ(p.error().code, ErrorCode::kPermissionDenied);
  // Or removed the named policy.
  c.egress.policies.clear();
  p = SessionEgressPolicy(Json{{"policy", "pip"}}, c);
  ASSERT_FALSE(p.has_value());
  EXPECT_NE(p.error().message.find("no longer configured"), std::string::npos);
}

}  // namespace
}  // namespace airlock::controlplane
