#include "cli/format.h"

#include <gtest/gtest.h>

#include "common/json_util.h"

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
  Json llm = {
      {"seq", 7},
      {"type", "agent.llm"},
      {"created_at", "2026-11-23T10:00:00.000Z"},
      {"data", {{"step", 1}, {"text", "hi" + esc}, {"tool_calls", Json::array({"shell" + esc})}}}};
  Json forged = {
      {"seq", 8}, {"type", "agent.exited" + esc}, {"data", {{"signal", 9}, {"signal_name", esc}}}};
  Json exited = {{"seq", 9},
                 {"type", "agent.exited"},
                 {"data", {{"signal", 9}, {"signal_name", "SIG" + esc}}}};
  for (const Json& e : {llm, forged, exited}) {
    std::string line = FormatEventLine(e);
    EXPECT_EQ(line.find('\x1b'), std::string::npos) << line;
    EXPECT_EQ(line.find('\x07'), std::string::npos) << line;
  }
  EXPECT_NE(FormatEventLine(llm).find("step 1: hi"), std::string::npos) << FormatEventLine(llm);
}

// What a hostile sandbox writes into a result, a file name or an event.
const std::string kEsc = "\x1b]0;PWNED\x07\x1b[2J";   // title change, screen clear
const std::string kOsc52 = "\x1b]52;c;cHduZWQ=\x07";  // clipboard write
const std::string kOsc8 = "\x1b]8;;http://evil/\x1b\\link\x1b]8;;\x1b\\";  // a hidden link
const std::string kC1Csi =
    "\xc2\x9b"
    "2J";                                 // U+009B: CSI in one character
const std::string kRlo = "\xe2\x80\xae";  // U+202E RIGHT-TO-LEFT OVERRIDE

// True when `out` holds none of the bytes a terminal acts on, nor a bidi/invisible control.
::testing::AssertionResult IsInert(const std::string& out) {
  for (size_t i = 0; i < out.size(); ++i) {
    auto c = static_cast<unsigned char>(out[i]);
    if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7f) {
      return ::testing::AssertionFailure()
             << "control byte " << int(c) << " at " << i << " in " << out;
    }
  }
  for (const char* bad :
       {"\xc2\x80", "\xc2\x9b", "\xc2\x9f", "\xe2\x80\xae", "\xe2\x80\xaa", "\xe2\x81\xa6",
        "\xe2\x81\xa9", "\xe2\x80\x8e", "\xe2\x80\x8f", "\xd8\x9c", "\xe2\x80\xa8"}) {
    if (out.find(bad) != std::string::npos)
      return ::testing::AssertionFailure() << "formatting control in " << out;
  }
  return ::testing::AssertionSuccess();
}

TEST(Inert, EscapesC0C1DelAndBidiControlsVisibly) {
  EXPECT_EQ(Inert(kEsc), "\\u001b]0;PWNED\\u0007\\u001b[2J");
  EXPECT_EQ(Inert(kOsc52), "\\u001b]52;c;cHduZWQ=\\u0007");
  EXPECT_TRUE(IsInert(Inert(kOsc8)));
  EXPECT_EQ(Inert(kC1Csi), "\\u009b2J");
  EXPECT_EQ(Inert("invoice" + kRlo + "fdp.exe"), "invoice\\u202efdp.exe");
  EXPECT_EQ(Inert("a\x7f"
                  "b\xc2\x85"
                  "c\xd8\x9c"
                  "d\xe2\x80\x8f"
                  "e\xe2\x81\xa6"
                  "f\xe2\x80\xa8"),
            "a\\u007fb\\u0085c\\u061cd\\u200fe\\u2066f\\u2028");
  // Plain text, accents, arrows, emoji and a zero-width joiner inside an emoji stay as they are.
  const std::string fine =
      "r\xc3\xa9sum\xc3\xa9 \xe2\x86\x92 \xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x92\xbb ok";
  EXPECT_EQ(Inert(fine), fine);
}

TEST(Inert, OneLineTextKeepsNoLineBreakMultilineKeepsNewlinesAndTabs) {
  EXPECT_EQ(Inert("a\nb\tc\rd"), "a\\nb\\tc\\rd");
  EXPECT_EQ(Inert("a\r\nb\tc\rd\n", /*multiline=*/true), "a\nb\tc\\rd\n");
  EXPECT_EQ(Inert(kEsc + "\n" + kC1Csi, true), "\\u001b]0;PWNED\\u0007\\u001b[2J\n\\u009b2J");
  EXPECT_EQ(InertIndented("one\ntwo" + kRlo + "\r\nthree", 2), "one\n  two\\u202e\n  three");
}

TEST(Inert, InvalidUtf8BecomesTheReplacementCharacter) {
  const std::string r = "\xef\xbf\xbd";
  EXPECT_EQ(Inert("a\xff"
                  "b"),
            "a" + r + "b");
  EXPECT_EQ(Inert("\xc2"), r) << "cut short";
  EXPECT_EQ(Inert("\xc1\x9b"), r + r) << "an overlong CSI is not let through as ESC [";
  EXPECT_EQ(Inert("\xe0\x80\x9b"), r + r + r) << "overlong";
  EXPECT_EQ(Inert("\xed\xa0\x80"), r + r + r) << "surrogate";
  EXPECT_EQ(Inert("\xf4\x90\x80\x80"), r + r + r + r) << "beyond U+10FFFF";
  EXPECT_EQ(Inert("\x80x"), r + "x") << "stray continuation byte";
}

TEST(InertJson, IsTheSameJsonValueWithNothingATerminalActsOn) {
  Json v = {{"result", kEsc + kOsc52 + kC1Csi + "\x7f" + kRlo + "\\" + kRlo},
            {"files", Json::array({"invoice" + kRlo + "fdp.exe"})}};
  std::string text = InertJson(DumpJson(v));
  EXPECT_TRUE(IsInert(text)) << text;
  EXPECT_EQ(text.find('\n'), std::string::npos);
  auto back = ParseJson(text);
  ASSERT_TRUE(back.has_value()) << text;
  EXPECT_EQ(*back, v);
  EXPECT_NE(text.find("invoice\\u202efdp.exe"), std::string::npos) << text;
}

TEST(InertStream, ASequenceCutBetweenPiecesIsShownWhole) {
  const std::string text = "caf\xc3\xa9 " + kRlo + "x\r\ny" + kC1Csi + "\xf0\x9f\x91\xa9";
  // Every way of cutting the text in two gives what Inert gives for the whole.
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    InertStream s;
    std::string out = s.Feed(text.substr(0, cut));
    out += s.Feed(text.substr(cut));
    out += s.Finish();
    EXPECT_EQ(out, Inert(text, true)) << "cut at " << cut;
  }
  InertStream s;
  EXPECT_EQ(s.Feed("a\xe2\x80"), "a");
  EXPECT_EQ(s.Finish(), "\xef\xbf\xbd\xef\xbf\xbd")
      << "an unfinished sequence at the end is replaced";
}

TEST(FormatTable, CellsAreShownInertOnOneLine) {
  std::string t =
      FormatTable({"NAME", "SIZE"}, {{"invoice" + kRlo + "fdp.exe", "1"}, {"a\nb" + kC1Csi, "2"}});
  EXPECT_TRUE(IsInert(t)) << t;
  EXPECT_EQ(t,
            "NAME                  SIZE\n"
            "invoice\\u202efdp.exe  1\n"
            "a\\nb\\u009b2J          2\n");
}

TEST(FormatEventLine, C1AndBidiControlsInEventsAreEscapedToo) {
  Json e = {{"seq", 3},
            {"type", "agent.llm"},
            {"data", {{"step", 1}, {"text", "x" + kC1Csi + kRlo + kOsc52}}}};
  std::string line = FormatEventLine(e);
  EXPECT_TRUE(IsInert(line)) << line;
  EXPECT_NE(line.find("x\\u009b2J\\u202e"), std::string::npos) << line;
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
