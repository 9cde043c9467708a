#include "common/json_util.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>

namespace airlock {
namespace {

TEST(JsonUtilTest, ParsesObjectsAndRejectsOtherShapes) {
  EXPECT_TRUE(ParseJsonObject(R"({"a":1})").has_value());
  auto arr = ParseJsonObject("[1]");
  ASSERT_FALSE(arr.has_value());
  EXPECT_EQ(arr.error().code, ErrorCode::kInvalidArgument);
}

TEST(JsonUtilTest, ReportsTheOffsetOfASyntaxError) {
  auto r = ParseJson(R"({"a": tru})");
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("at byte"), std::string::npos);
}

TEST(JsonUtilTest, RefusesDeepNestingButCountsOnlyOutsideStrings) {
  EXPECT_FALSE(ParseJson(std::string(65, '[') + std::string(65, ']')).has_value());
  EXPECT_TRUE(ParseJson(std::string(64, '[') + std::string(64, ']')).has_value());
  // Brackets inside strings do not count.
  EXPECT_TRUE(ParseJson("\"" + std::string(1000, '[') + "\"").has_value());
  EXPECT_TRUE(
      ParseJson(R"(["\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["])")
          .has_value());
}

TEST(JsonUtilTest, FieldAccessorsNameTheField) {
  Json j = {{"s", "x"}, {"n", 3}, {"f", 1.5}, {"bad", true}};
  EXPECT_EQ(*RequiredString(j, "s"), "x");
  EXPECT_NE(RequiredString(j, "missing").error().message.find("\"missing\""), std::string::npos);
  EXPECT_NE(OptionalString(j, "n").error().message.find("\"n\""), std::string::npos);
  EXPECT_EQ(**OptionalInt(j, "n"), 3);
  EXPECT_FALSE(OptionalInt(j, "f").has_value());
  EXPECT_EQ(**OptionalNumber(j, "f"), 1.5);
}

// Numbers no int64_t can hold are refused, not converted: a float far out of range (its
// conversion was undefined behaviour, found by sandbox_json_fuzz), an unsigned over INT64_MAX
// (it wrapped to a negative size), NaN and infinities. Whole floats in range are accepted.
TEST(JsonUtilTest, OptionalIntRefusesWhatAnInt64CannotHold) {
  for (const char* text :
       {R"({"n": 9777777777777777777777777777777777777777777777777773780})", R"({"n": -1e300})",
        R"({"n": 18446744073709551615})", R"({"n": 9223372036854775808})", R"({"n": 2.5})"}) {
    auto j = ParseJson(text);
    ASSERT_TRUE(j.has_value()) << text;
    auto n = OptionalInt(*j, "n");
    ASSERT_FALSE(n.has_value()) << text << " gave " << n->value_or(0);
    EXPECT_NE(n.error().message.find("\"n\" must be an integer"), std::string::npos);
  }
  Json odd = {{"nan", std::nan("")}, {"inf", INFINITY}};
  EXPECT_FALSE(OptionalInt(odd, "nan").has_value());
  EXPECT_FALSE(OptionalInt(odd, "inf").has_value());
  auto max = ParseJson(R"({"a": 9223372036854775807, "b": -9223372036854775808, "c": 4.0})");
  ASSERT_TRUE(max.has_value());
  EXPECT_EQ(**OptionalInt(*max, "a"), INT64_MAX);
  EXPECT_EQ(**OptionalInt(*max, "b"), INT64_MIN);
  EXPECT_EQ(**OptionalInt(*max, "c"), 4);
}

TEST(JsonUtilTest, RejectUnknownKeysNamesThem) {
  Json j = {{"ok", 1}, {"evil", 2}};
  auto st = RejectUnknownKeys(j, {"ok"}, "thing");
  ASSERT_FALSE(st.has_value());
  EXPECT_NE(st.error().message.find("\"evil\""), std::string::npos);
  EXPECT_TRUE(RejectUnknownKeys(j, {"ok", "evil"}, "thing").has_value());
}

TEST(JsonUtilTest, DumpReplacesInvalidUtf8InsteadOfThrowing) {
  Json j = std::string("\xff\xfe ok");
  EXPECT_NO_THROW(DumpJson(j));
}

TEST(JsonUtilTest, DumpWithMemberWritesWhatDumpWouldOfTheObjectHoldingIt) {
  Json value = Json::array({Json{{"role", "user"}, {"content", "caf\u00e9 \"q\"\n"}},
                            Json{{"role", "assistant"}, {"content", std::string("\xff bad")}}});
  Json obj{{"a", 1}, {"messages", nullptr}, {"model", "m"}, {"z", Json{{"k", "v"}}}};
  Json whole = obj;
  whole["messages"] = value;
  EXPECT_EQ(DumpJsonWithMember(obj, "messages", value), DumpJson(whole));
  EXPECT_EQ(DumpJsonWithMember(Json{{"messages", 0}}, "messages", value),
            DumpJson(Json{{"messages", value}}));
  // Without the member to stand in for, it is set and dumped the ordinary way.
  EXPECT_EQ(DumpJsonWithMember(Json{{"model", "m"}}, "messages", value),
            DumpJson(Json{{"model", "m"}, {"messages", value}}));
}

}  // namespace
}  // namespace airlock
