#include "common/url.h"

#include <gtest/gtest.h>

namespace airlock {
namespace {

TEST(PercentEncode, KeepsUnreservedBytesOnly) {
  EXPECT_EQ(PercentEncode("aZ09-_.~"), "aZ09-_.~");
  EXPECT_EQ(PercentEncode("../x?y z/é"), "..%2Fx%3Fy%20z%2F%C3%A9");
  EXPECT_EQ(PercentEncode("a/b c", /*keep_slash=*/true), "a/b%20c");
  EXPECT_EQ(PercentEncode(std::string_view("\0\xff", 2)), "%00%FF");
}

TEST(PercentDecode, PathSegmentsAreStrictAndKeepPlus) {
  EXPECT_EQ(PercentDecode("a%2Fb+c%c3%A9", false), "a/b+c\xc3\xa9");
  EXPECT_EQ(PercentDecode("bad%2", false), std::nullopt);
  EXPECT_EQ(PercentDecode("bad%zz", false), std::nullopt);
  EXPECT_EQ(PercentDecode("%", false), std::nullopt);
}

TEST(PercentDecode, QueryComponentsReadPlusAsSpaceAndKeepMalformedEscapes) {
  EXPECT_EQ(PercentDecode("a+b%20c", true), "a b c");
  EXPECT_EQ(PercentDecode("100%", true), "100%");
  EXPECT_EQ(PercentDecode("%zz%41", true), "%zzA");
}

TEST(PercentEncode, RoundTripsEveryByte) {
  std::string all;
  for (int c = 0; c < 256; ++c) all += static_cast<char>(c);
  EXPECT_EQ(PercentDecode(PercentEncode(all), false), all);
}

}  // namespace
}  // namespace airlock
