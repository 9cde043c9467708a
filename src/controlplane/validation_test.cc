#include "controlplane/validation.h"

#include "controlplane/llm_proxy.h"

#include <gtest/gtest.h>

namespace airlock::controlplane {
namespace {

TEST(ValidationTest, SandboxCannotForgeControlPlaneEvents) {
  EXPECT_TRUE(ValidateEventType("agent.step").has_value());
  EXPECT_FALSE(ValidateEventType("session.state").has_value());
  EXPECT_FALSE(ValidateEventType("llm.call").has_value());
  EXPECT_FALSE(ValidateEventType("file.uploaded").has_value());
  // A sandbox cannot forge the gateway's record of where it went.
  EXPECT_FALSE(ValidateEventType("egress.connection").has_value());
  EXPECT_FALSE(ValidateEventType("").has_value());
  EXPECT_FALSE(ValidateEventType("Upper").has_value());
  EXPECT_FALSE(ValidateEventType("line\nbreak").has_value());
  EXPECT_FALSE(ValidateEventType(std::string(65, 'a')).has_value());
}

TEST(ValidationTest, LimitsAreKnownNumbersInRange) {
  EXPECT_TRUE(ParseLimits(Json{{"memory_mb", 512}, {"cpus", 0.5}}).has_value());
  EXPECT_FALSE(ParseLimits(Json{{"memory_mb", 1}}).has_value());
  EXPECT_FALSE(ParseLimits(Json{{"memory_mb", "512"}}).has_value());
  EXPECT_FALSE(ParseLimits(Json{{"rootfs", 1}}).has_value());
  EXPECT_FALSE(ParseLimits(Json::array()).has_value());
  EXPECT_EQ(ParseLimits(Json())->size(), 0u);
}

TEST(ValidationTest, CommandIsABoundedArgvOfStrings) {
  EXPECT_TRUE(ValidateCommand(Json{"python3", "agent.py"}).has_value());
  EXPECT_FALSE(ValidateCommand(Json{"sh", 1}).has_value());
  EXPECT_FALSE(ValidateCommand(Json{""}).has_value());
  EXPECT_FALSE(ValidateCommand(Json{std::string("a\0b", 3)}).has_value());
  EXPECT_FALSE(ValidateCommand(Json(std::vector<std::string>(257, "x"))).has_value());
}

TEST(ValidationTest, NamesCannotTraversePaths) {
  EXPECT_TRUE(ValidateName("image", "registry.example/team/agent:1.2").has_value());
  EXPECT_FALSE(ValidateName("image", "../etc").has_value());
  EXPECT_FALSE(ValidateName("image", "a/../../b").has_value());
  EXPECT_FALSE(ValidateName("image", "/abs").has_value());
  EXPECT_FALSE(ValidateName("image", "sp ace").has_value());
}

TEST(ValidationTest, SessionIdsAndNumbers) {
  EXPECT_TRUE(PlausibleSessionId("ses_abcdefghijklmnopqrstuvwx"));
  EXPECT_FALSE(PlausibleSessionId("ses_ABCDEFGHIJKLMNOPQRSTUVWX"));
  EXPECT_FALSE(PlausibleSessionId("ses_../../../../../../etc/p"));
  EXPECT_EQ(ParseNonNegative("42"), 42);
  EXPECT_FALSE(ParseNonNegative("-1").has_value());
  EXPECT_FALSE(ParseNonNegative("1e3").has_value());
  EXPECT_FALSE(ParseNonNegative("9999999999999999999999").has_value());
}

}  // namespace
}  // namespace airlock::controlplane

namespace airlock::controlplane {
namespace {

TEST(ChatValidation, KeepsOnlyTheOpenAiFieldsAndChecksEachRole) {
  auto tool =
      ValidateChatMessage(Json{{"role", "tool"}, {"tool_call_id", "c1"}, {"content", "ok"}}, "m");
  ASSERT_TRUE(tool.has_value());
  EXPECT_EQ((*tool)["tool_call_id"], "c1");
  auto calls = ValidateChatMessage(
      Json{{"role", "assistant"},
           {"content", nullptr},
           {"tool_calls",
            Json::array({Json{{"id", "c1"},
                              {"type", "function"},
                              {"function", {{"name", "shell"}, {"arguments", "{}"}}}}})}},
      "m");
  ASSERT_TRUE(calls.has_value()) << calls.error().message;
  auto parts = ValidateChatMessage(
      Json{{"role", "user"}, {"content", Json::array({Json{{"type", "text"}, {"text", "hi"}}})}},
      "m");
  ASSERT_TRUE(parts.has_value());

  const std::vector<Json> bad = {
      Json{{"role", "user"}},
      Json{{"role", "user"}, {"content", "x"}, {"token", "y"}},
      Json{{"role", "tool"}, {"content", "x"}},
      Json{{"role", "user"}, {"content", "x"}, {"tool_call_id", "c"}},
      Json{{"role", "user"}, {"content", "x"}, {"tool_calls", Json::array()}},
      Json{{"role", "system"},
           {"content", Json::array({Json{{"type", "image_url"}, {"image_url", {{"url", "x"}}}}})}},
      Json{{"role", "assistant"},
           {"tool_calls",
            Json::array(
                {Json{{"id", "c1"}, {"function", {{"name", "a b"}, {"arguments", "{}"}}}}})}},
      Json{{"role", "assistant"},
           {"tool_calls",
            Json::array({Json{{"id", "c1"},
                              {"function", {{"name", "a"}, {"arguments", Json::object()}}}}})}},
      Json{{"role", "user"}, {"name", std::string(65, 'a')}, {"content", "x"}},
      Json("just a string"),
  };
  for (const auto& m : bad) {
    auto r = ValidateChatMessage(m, "messages[0]");
    EXPECT_FALSE(r.has_value()) << m.dump();
    if (!r) {
      EXPECT_NE(r.error().message.find("messages[0]"), std::string::npos) << r.error().message;
    }
  }
}

TEST(ChatValidation, ToolsAreFunctionsWithUniqueNames) {
  Json one = Json{{"type", "function"},
                  {"function", {{"name", "shell"}, {"parameters", {{"type", "object"}}}}}};
  EXPECT_TRUE(ValidateChatTools(Json::array({one})).has_value());
  EXPECT_FALSE(ValidateChatTools(Json::array({one, one})).has_value());
  EXPECT_FALSE(ValidateChatTools(Json::array({Json{{"type", "retrieval"}}})).has_value());
  EXPECT_FALSE(ValidateChatTools(Json::object()).has_value());
  Json extra = one;
  extra["function"]["endpoint"] = "http://x";
  EXPECT_FALSE(ValidateChatTools(Json::array({extra})).has_value());
}

}  // namespace
}  // namespace airlock::controlplane
