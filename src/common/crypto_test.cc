#include "common/crypto.h"

#include <set>

#include <gtest/gtest.h>

namespace airlock {
namespace {

TEST(CryptoTest, Sha256MatchesKnownVector) {
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(CryptoTest, HmacSha256MatchesRfc4231Case2) {
  EXPECT_EQ(HexEncode(HmacSha256("Jefe", "what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(CryptoTest, Base64UrlHasNoPaddingAndUrlSafeAlphabet) {
  EXPECT_EQ(Base64UrlEncode("f"), "Zg");
  EXPECT_EQ(Base64UrlEncode("fo"), "Zm8");
  EXPECT_EQ(Base64UrlEncode("foo"), "Zm9v");
  EXPECT_EQ(Base64UrlEncode("\xfb\xff"), "-_8");
}

TEST(CryptoTest, TokensCarry256BitsAndDoNotRepeat) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    Secret t = NewToken("ast_");
    ASSERT_EQ(t.Reveal().size(), 4u + 43u);  // 32 bytes -> 43 base64url chars
    EXPECT_TRUE(seen.insert(t.Reveal()).second);
  }
}

TEST(CryptoTest, IdsAreLowercaseBase32WithPrefix) {
  std::string id = NewId("ses_");
  ASSERT_EQ(id.size(), 28u);
  EXPECT_EQ(id.substr(4).find_first_not_of("abcdefghijklmnopqrstuvwxyz234567"), std::string::npos);
}

TEST(CryptoTest, ConstantTimeEqualsComparesContentAndLength) {
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abcd"));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
}

TEST(CryptoTest, Base64DecodeTakesRfc4648VectorsAndRefusesTheMalformed) {
  // RFC 4648 section 10.
  EXPECT_EQ(Base64Decode(""), std::string());
  EXPECT_EQ(Base64Decode("Zg=="), std::string("f"));
  EXPECT_EQ(Base64Decode("Zm8="), std::string("fo"));
  EXPECT_EQ(Base64Decode("Zm9v"), std::string("foo"));
  EXPECT_EQ(Base64Decode("Zm9vYmFy"), std::string("foobar"));
  EXPECT_EQ(Base64Decode("AP8A"), std::string("\0\xff\0", 3));
  for (std::string s : {"", "f", "fo", "foo", "foob", "fooba", "foobar"}) {
    EXPECT_EQ(Base64Decode(Base64Encode(s)), s);
  }
  EXPECT_EQ(Base64Encode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(Base64Encode("fo"), "Zm8=");
  EXPECT_FALSE(Base64Decode("Zm9"));       // not a multiple of 4
  EXPECT_FALSE(Base64Decode("Zm 9v"));     // whitespace
  EXPECT_FALSE(Base64Decode("Zm9-"));      // base64url's alphabet
  EXPECT_FALSE(Base64Decode("Z==="));      // three pads
  EXPECT_FALSE(Base64Decode("Zg==Zg=="));  // padding inside
}

}  // namespace
}  // namespace airlock
