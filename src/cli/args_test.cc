#include "cli/args.h"

#include <gtest/gtest.h>

namespace airlock::cli {
namespace {

TEST(ParseLimitArgs, IntegersStayIntegersAndFractionsAreDoubles) {
  auto limits = ParseLimitArgs({"memory_mb=512", "cpus=0.5", "max_cost_usd=2"});
  ASSERT_TRUE(limits.has_value()) << limits.error().message;
  EXPECT_TRUE((*limits)["memory_mb"].is_number_integer());
  EXPECT_EQ((*limits)["memory_mb"].get<int64_t>(), 512);
  EXPECT_TRUE((*limits)["cpus"].is_number_float());
  EXPECT_DOUBLE_EQ((*limits)["cpus"].get<double>(), 0.5);
  EXPECT_EQ(limits->dump(), R"({"cpus":0.5,"max_cost_usd":2,"memory_mb":512})");
}

TEST(ParseLimitArgs, RefusesNonNumbers) {
  auto limits = ParseLimitArgs({"memory_mb=lots"});
  ASSERT_FALSE(limits.has_value());
  EXPECT_NE(limits.error().message.find("memory_mb"), std::string::npos);
  EXPECT_FALSE(ParseLimitArgs({"timeout_s="}).has_value());
  EXPECT_FALSE(ParseLimitArgs({"timeout_s=10s"}).has_value());
  EXPECT_FALSE(ParseLimitArgs({"cpus=inf"}).has_value());
  EXPECT_FALSE(ParseLimitArgs({"cpus=nan"}).has_value());
}

TEST(ParseLimitArgs, RefusesMissingKeyOrEquals) {
  EXPECT_FALSE(ParseLimitArgs({"=5"}).has_value());
  auto r = ParseLimitArgs({"memory_mb"});
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("key=value"), std::string::npos);
}

TEST(ParseLimitArgs, RefusesAKeyGivenTwice) {
  EXPECT_FALSE(ParseLimitArgs({"pids=1", "pids=2"}).has_value());
}

TEST(ParseLimitArgs, EmptyGivesEmptyObject) {
  auto r = ParseLimitArgs({});
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(r->is_object());
  EXPECT_TRUE(r->empty());
}

TEST(ParseMetadataArgs, KeepsValuesAsStringsAndAllowsEqualsInValue) {
  auto meta = ParseMetadataArgs({"ticket=42", "expr=a=b", "empty="});
  ASSERT_TRUE(meta.has_value());
  EXPECT_EQ((*meta)["ticket"], "42");
  EXPECT_EQ((*meta)["expr"], "a=b");
  EXPECT_EQ((*meta)["empty"], "");
}

TEST(ParseEnvArgs, KeepsValuesAsTheyAreAndRefusesARepeatedName) {
  auto env = ParseEnvArgs({"REPO=airlock", "EXPR=a=b", "EMPTY="});
  ASSERT_TRUE(env.has_value());
  EXPECT_EQ(*env, (Json{{"REPO", "airlock"}, {"EXPR", "a=b"}, {"EMPTY", ""}}));
  EXPECT_FALSE(ParseEnvArgs({"A=1", "A=2"}));
  EXPECT_FALSE(ParseEnvArgs({"=x"}));
  EXPECT_FALSE(ParseEnvArgs({"novalue"}));
}

TEST(ParseFileArgs, NamesAFileByItsLastComponentUnlessRenamed) {
  auto files = ParseFileArgs({"data/in.csv", "notes.md=/tmp/n.txt", "/a/b=c.txt", "x=y=z"});
  ASSERT_TRUE(files.has_value()) << files.error().message;
  using P = std::pair<std::string, std::string>;
  EXPECT_EQ(*files, (std::vector<P>{P{"in.csv", "data/in.csv"}, P{"notes.md", "/tmp/n.txt"},
                                    P{"b=c.txt", "/a/b=c.txt"}, P{"x", "y=z"}}));
  EXPECT_FALSE(ParseFileArgs({"a/x.txt", "b/x.txt"})) << "two files named x.txt";
  EXPECT_FALSE(ParseFileArgs({"n="}));
  EXPECT_FALSE(ParseFileArgs({"dir/"}));
}

TEST(SplitRunCommand, TakesEverythingAfterDoubleDashVerbatim) {
  auto s = SplitRunCommand({"airlock", "run", "--json", "task", "--", "sh", "-c", "echo --", "--"});
  EXPECT_EQ(s.args, (std::vector<std::string>{"airlock", "run", "--json", "task"}));
  ASSERT_TRUE(s.command.has_value());
  EXPECT_EQ(*s.command, (std::vector<std::string>{"sh", "-c", "echo --", "--"}));
}

TEST(SplitRunCommand, LeavesOtherCommandsAlone) {
  auto s = SplitRunCommand({"airlock", "send", "ses_x", "--", "-not an option"});
  EXPECT_EQ(s.args.size(), 5u);
  EXPECT_FALSE(s.command.has_value());
}

TEST(SplitRunCommand, NoDoubleDashMeansNoCommand) {
  auto s = SplitRunCommand({"airlock", "run", "task"});
  EXPECT_EQ(s.args.size(), 3u);
  EXPECT_FALSE(s.command.has_value());
}

TEST(SplitRunCommand, EmptyCommandAfterDoubleDashIsKept) {
  auto s = SplitRunCommand({"airlock", "run", "task", "--"});
  ASSERT_TRUE(s.command.has_value());
  EXPECT_TRUE(s.command->empty());
}

}  // namespace
}  // namespace airlock::cli
