#include "controlplane/validation.h"

#include <gtest/gtest.h>

namespace airlock::controlplane {
namespace {

TEST(ValidationTest, SandboxCannotForgeControlPlaneEvents) {
  EXPECT_TRUE(ValidateEventType("agent.step").has_value());
  EXPECT_FALSE(ValidateEventType("session.state").has_value());
  EXPECT_FALSE(ValidateEventType("llm.call").has_value());
  EXPECT_FALSE(ValidateEventType("file.uploaded").has_value());
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
