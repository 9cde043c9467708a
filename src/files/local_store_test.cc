#include "files/local_store.h"
#include "tests/support/temp_dir.h"

#include <sys/stat.h>

#include <filesystem>

#include <gtest/gtest.h>

namespace airlock::files {
namespace {

TEST(UrlSigner, EveryTermIsCovered) {
  auto s = UrlSigner::ForTest({{"k1", Secret(std::string(64, 'a'))}});
  std::string sig = s.Sign("PUT", "ses_a", "f.txt", 1000, 10);
  EXPECT_TRUE(s.Verify("k1", sig, "PUT", "ses_a", "f.txt", 1000, 10));
  EXPECT_FALSE(s.Verify("k1", sig, "GET", "ses_a", "f.txt", 1000, 10));
  EXPECT_FALSE(s.Verify("k1", sig, "PUT", "ses_b", "f.txt", 1000, 10));
  EXPECT_FALSE(s.Verify("k1", sig, "PUT", "ses_a", "g.txt", 1000, 10));
  EXPECT_FALSE(s.Verify("k1", sig, "PUT", "ses_a", "f.txt", 1001, 10));
  EXPECT_FALSE(s.Verify("k1", sig, "PUT", "ses_a", "f.txt", 1000, 11));
  EXPECT_FALSE(s.Verify("k2", sig, "PUT", "ses_a", "f.txt", 1000, 10));
  EXPECT_FALSE(s.Verify("k1", "", "PUT", "ses_a", "f.txt", 1000, 10));
  // Field boundaries are part of what is signed: moving bytes between fields breaks it.
  EXPECT_NE(s.Sign("PUT", "ses_a", "bc", 1, 1), s.Sign("PUT", "ses_ab", "c", 1, 1));
}

TEST(UrlSigner, RotationKeepsOldUrlsValidUntilTheKeyIsDropped) {
  // A directory of the test's own, removed with it: it holds a signing key.
  testing::TempDir dir("airlock-keys");
  std::string path = dir / "file-signing.keys";
  auto first = UrlSigner::LoadOrCreate(path);
  ASSERT_TRUE(first.has_value()) << first.error().message;
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::string old_kid = first->active_kid();
  std::string old_sig = first->Sign("GET", "ses_a", "f", 5, 0);

  auto kid = RotateSigningKey(path);
  ASSERT_TRUE(kid.has_value());
  auto second = UrlSigner::LoadOrCreate(path);
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->active_kid(), *kid);
  EXPECT_NE(*kid, old_kid);
  EXPECT_TRUE(second->Verify(old_kid, old_sig, "GET", "ses_a", "f", 5, 0))
      << "old URLs still verify";
  EXPECT_TRUE(
      second->Verify(*kid, second->Sign("GET", "ses_a", "f", 5, 0), "GET", "ses_a", "f", 5, 0));
}

TEST(FileNames, OnlyPlainNamesAreAllowed) {
  for (const char* ok : {"a", "report.md", "my file (1).txt", "ünïcode.txt", "a..b"}) {
    EXPECT_TRUE(ValidateFileName(ok).has_value()) << ok;
  }
  for (std::string bad :
       {std::string(), std::string("."), std::string(".."), std::string(".hidden"),
        std::string("a/b"), std::string("a\\b"), std::string("a\nb"), std::string("a\x7f"),
        std::string(256, 'x'), std::string("nul\0byte", 8)}) {
    EXPECT_FALSE(ValidateFileName(bad).has_value()) << bad;
  }
}

}  // namespace
}  // namespace airlock::files
