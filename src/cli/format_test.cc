#include "cli/format.h"

#include <gtest/gtest.h>

namespace airlock::cli {
namespace {

TEST(FormatTable, AlignsColumnsAndDoesNotPadTheLastOne) {
  std::string t =
      FormatTable({"ID", "STATE", "AGE"}, {{"ses_1", "running", "3m"}, {"ses_22", "failed", "1d"}});
  EXPECT_EQ(t,
            "ID      STATE    AGE\n"
            "ses_1   running  3m\n"
            "ses_22  failed   1d\n");
}

TEST(FormatTable, CountsUtf8CodePointsNotBytes) {
  std::string t = FormatTable({"A", "B"}, {{"→", "x"}, {"ab", "y"}});
  EXPECT_EQ(t,
            "A   B\n"
            "→   x\n"
            "ab  y\n");
}

TEST(FormatTable, ShortRowsAreFilledWithBlanks) {
  std::string t = FormatTable({"A", "B", "C"}, {{"1"}});
  EXPECT_EQ(t, "A  B  C\n1\n");
}

TEST(FormatAge, PicksTheLargestUnit) {
  EXPECT_EQ(FormatAge(0), "0s");
  EXPECT_EQ(FormatAge(59'999), "59s");
  EXPECT_EQ(FormatAge(3 * 60'000 + 5'000), "3m");
  EXPECT_EQ(FormatAge(2 * 3'600'000), "2h");
  EXPECT_EQ(FormatAge(50 * 3'600'000LL), "2d");
  EXPECT_EQ(FormatAge(-5'000), "0s");
}

TEST(ParseTimestamp, ReadsTheApiFormat) {
  EXPECT_EQ(ParseTimestamp("1970-01-01T00:00:00.000Z"), 0);
  EXPECT_EQ(ParseTimestamp("1970-01-01T00:00:01.250Z"), 1250);
  EXPECT_EQ(ParseTimestamp("2026-11-23T11:24:00.123Z"), 1795433040123LL);
  EXPECT_EQ(ParseTimestamp("2026-11-23T13:24:00+02:00"), 1795433040000LL);
  EXPECT_EQ(ParseTimestamp("2026-11-23T11:24:00Z"), 1795433040000LL);
}

TEST(ParseTimestamp, RefusesGarbage) {
  EXPECT_FALSE(ParseTimestamp("").has_value());
  EXPECT_FALSE(ParseTimestamp("yesterday").has_value());
  EXPECT_FALSE(ParseTimestamp("2026-13-23T11:24:00Z").has_value());
  EXPECT_FALSE(ParseTimestamp("2026-11-23T11:24:00").has_value());
  EXPECT_FALSE(ParseTimestamp("2026-11-23T11:24:00.Z").has_value());
}

TEST(FormatEventLine, NothingAnAgentWritesReachesTheTerminalAsAControlSequence) {
  const std::string esc = "\x1b]0;owned\x07\x1b[2J";
  Json llm = {{"seq", 7}, {"type", "agent.llm"}, {"created_at", "2026-11-23T10:00:00.000Z"},
              {"data", {{"step", 1}, {"text", "hi" + esc}, {"tool_calls", Json::array({"shell" + esc})}}}};
  Json forged = {{"seq", 8}, {"type", "agent.exited" + esc}, {"data", {{"signal", 9}, {"signal_name", esc}}}};
  Json exited = {{"seq", 9}, {"type", "agent.exited"}, {"data", {{"signal", 9}, {"signal_name", "SIG" + esc}}}};
  for (const Json& e : {llm, forged, exited}) {
    std::string line = FormatEventLine(e);
    EXPECT_EQ(line.find('\x1b'), std::string::npos) << line;
    EXPECT_EQ(line.find('\x07'), std::string::npos) << line;
  }
  EXPECT_NE(FormatEventLine(llm).find("step 1: hi"), std::string::npos) << FormatEventLine(llm);
}

TEST(OneLine, ShowsLineBreaksAndCutsOnCodePoints) {
  EXPECT_EQ(OneLine("a\r\nb", 10), "a⏎b");
  EXPECT_EQ(OneLine("abcdef", 4), "abc…");
  EXPECT_EQ(OneLine("ééééé", 3), "éé…");
  EXPECT_EQ(OneLine("abc", 3), "abc");
}

TEST(SummarizeEvent, StateChangeShowsArrowAndResult) {
  Json e = {{"type", "session.state"},
            {"data", {{"from", "running"}, {"to", "succeeded"}, {"result", "done"}}}};
  EXPECT_EQ(SummarizeEvent(e), "running → succeeded: done");
}

TEST(SummarizeEvent, CreatedShowsImageBackendModel) {
  Json e = {{"type", "session.created"},
            {"data", {{"image", "base"}, {"backend", "process"}, {"model", "m"}}}};
  EXPECT_EQ(SummarizeEvent(e), "image=base backend=process model=m");
}

TEST(SummarizeEvent, OtherEventsShowCompactData) {
  Json e = {{"type", "step"}, {"data", {{"n", 1}}}};
  EXPECT_EQ(SummarizeEvent(e), "{\"n\":1}");
  Json empty = {{"type", "ping"}, {"data", Json::object()}};
  EXPECT_EQ(SummarizeEvent(empty), "");
  Json garbage = "not an object";
  EXPECT_EQ(SummarizeEvent(garbage), "");
}

TEST(SummarizeEvent, SandboxExitIsReadable) {
  Json e = {{"type", "session.sandbox_exit"},
            {"data", {{"state", "exited"}, {"exit_code", 3}, {"oom_killed", false}}}};
  EXPECT_EQ(SummarizeEvent(e), "sandbox exited, exit code 3");
}

TEST(FormatEventLine, HasSeqTypeAndSummary) {
  Json e = {{"seq", 4}, {"type", "step"}, {"data", {{"n", 1}}}, {"created_at", "bad"}};
  EXPECT_EQ(FormatEventLine(e), "bad  #4    step                 {\"n\":1}");
}

TEST(ShellJoin, QuotesOnlyWhatNeedsIt) {
  EXPECT_EQ(ShellJoin({"sh", "-c", "echo 'hi' $X"}), "sh -c 'echo '\\''hi'\\'' $X'");
  EXPECT_EQ(ShellJoin({"a", ""}), "a ''");
}

}  // namespace
}  // namespace airlock::cli
