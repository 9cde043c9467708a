// Tests of KeyRedactor: every way an upstream has been seen (or could plausibly) echo the key
// it was sent must come out as the marker, and ordinary provider messages must come out intact.
#include "llm/redact.h"

#include <gtest/gtest.h>

#include <string>

#include <fmt/format.h>

namespace airlock::llm {
namespace {

constexpr std::string_view kKey = "sk-canary-REDTEAM-0123456789abcdef";

std::string Base64Padded(std::string_view bytes, bool url_safe = false) {
  const std::string alphabet =
      url_safe ? "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
               : "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    for (int s : {18, 12, 6, 0}) out += alphabet[(v >> s) & 63];
  }
  if (bytes.size() - i == 1) {
    uint32_t v = uint8_t(bytes[i]) << 16;
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += "==";
  } else if (bytes.size() - i == 2) {
    uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8);
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += alphabet[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

std::string PercentAll(std::string_view s) {
  std::string out;
  for (unsigned char c : s) out += fmt::format("%{:02X}", c);
  return out;
}

std::string Upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

// True when no stretch of 8 characters of the key (in the plain, upper or lower form) is left.
bool HoldsNoPiece(const std::string& text) {
  std::string lower = text;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::string key(kKey);
  for (char& c : key) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (size_t i = 0; i + 8 <= key.size(); ++i) {
    if (lower.find(key.substr(i, 8)) != std::string::npos) return false;
  }
  return true;
}

TEST(KeyRedactorTest, CutsTheWholeKeyAndAnyPieceOfEightOrMore) {
  KeyRedactor r(kKey);
  const std::string key(kKey);
  for (const std::string& piece : {key, key.substr(3), key.substr(0, 8), key.substr(10, 8),
                                   key.substr(5, 20), key.substr(key.size() - 8)}) {
    SCOPED_TRACE(piece);
    const std::string out = r.Apply("Incorrect API key provided: " + piece + ". See the docs.");
    EXPECT_TRUE(HoldsNoPiece(out)) << out;
    EXPECT_NE(out.find("[redacted]"), std::string::npos) << out;
    EXPECT_TRUE(out.starts_with("Incorrect API key provided: ")) << out;
    EXPECT_TRUE(out.ends_with(". See the docs.")) << out;
  }
}

TEST(KeyRedactorTest, CutsTheKeyInAnyLetterCase) {
  KeyRedactor r(kKey);
  const std::string key(kKey);
  std::string lower = key;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const std::string& form : {Upper(key), lower, Upper(key.substr(3))}) {
    EXPECT_EQ(r.Apply("key " + form + " refused"), "key [redacted] refused") << form;
  }
}

TEST(KeyRedactorTest, CutsBase64OfTheKeyAtEveryAlignmentInBothAlphabets) {
  KeyRedactor r(kKey);
  const std::string key(kKey);
  for (bool url_safe : {false, true}) {
    for (const std::string& before :
         {std::string(), std::string("B"), std::string("Be"), std::string("Bearer ")}) {
      for (const std::string& piece : {key, key.substr(3), key.substr(1, 12)}) {
        const std::string encoded = Base64Padded(before + piece, url_safe);
        const std::string out = r.Apply("auth header was " + encoded + " (decoded)");
        SCOPED_TRACE(encoded);
        EXPECT_NE(out.find("[redacted]"), std::string::npos) << out;
        // The groups of three bytes wholly inside the key are gone; only the edge groups, which
        // mix in other bytes or padding, may be left.
        const size_t first = (before.size() + 2) / 3 * 4;
        const size_t last = (before.size() + piece.size()) / 3 * 4;
        const std::string core = encoded.substr(first, last - first);
        for (size_t i = 0; i + 8 <= core.size(); ++i) {
          EXPECT_EQ(out.find(core.substr(i, 8)), std::string::npos)
              << core.substr(i, 8) << " in " << out;
        }
      }
    }
  }
}

TEST(KeyRedactorTest, CutsThePercentEncodedKey) {
  KeyRedactor r(kKey);
  const std::string key(kKey);
  for (const std::string& form :
       {PercentAll(key), std::string("sk%2Dcanary%2DREDTEAM%2D0123456789abcdef"),
        PercentAll(key.substr(3))}) {
    const std::string out = r.Apply("GET /v1?key=" + form + "&x=1");
    EXPECT_EQ(out, "GET /v1?key=[redacted]&x=1") << form;
  }
  const std::string mixed = "key=sk-canary-" + PercentAll("REDTEAM") + "-0123456789abcdef";
  EXPECT_EQ(r.Apply(mixed), "key=[redacted]");
}

TEST(KeyRedactorTest, LeavesOrdinaryProviderMessagesAlone) {
  KeyRedactor r(kKey);
  for (const std::string& text :
       {std::string("This model's maximum context length is 8192 tokens. However, your messages "
                    "resulted in 9000 tokens."),
        std::string("invalid_request_error"), std::string("rate_limit_exceeded"),
        std::string("50% done %zz"), std::string("sk-other-key-zzzzzzzz"), std::string()}) {
    EXPECT_EQ(r.Apply(text), text);
  }
}

TEST(KeyRedactorTest, AnEmptyKeyChangesNothingAndAShortKeyIsCutWhole) {
  EXPECT_EQ(KeyRedactor("").Apply("anything sk-"), "anything sk-");
  EXPECT_EQ(RedactKey("the key abc12 and ABC12", "abc12"), "the key [redacted] and [redacted]");
  EXPECT_EQ(RedactKey("abc1", "abc12"), "abc1");
}

TEST(KeyRedactorTest, AdjacentPiecesBecomeOneMarker) {
  const std::string key(kKey);
  EXPECT_EQ(RedactKey(key + key, kKey), "[redacted]");
  EXPECT_EQ(RedactKey("a" + key + " " + Upper(key) + "b", kKey), "a[redacted] [redacted]b");
}

}  // namespace
}  // namespace airlock::llm
