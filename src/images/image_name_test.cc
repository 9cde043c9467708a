#include "images/image_name.h"

#include <string>

#include <gtest/gtest.h>

namespace airlock::images {
namespace {

TEST(NormalizeImageName, AddsLatestWhenTagIsMissing) {
  EXPECT_EQ(NormalizeImageName("busybox").value(), "busybox:latest");
  EXPECT_EQ(NormalizeImageName("team/agent").value(), "team/agent:latest");
}

TEST(NormalizeImageName, KeepsAGivenTagAndRegistryPath) {
  EXPECT_EQ(NormalizeImageName("registry.example/team/agent:1.2-rc_3").value(),
            "registry.example/team/agent:1.2-rc_3");
  EXPECT_EQ(NormalizeImageName("base:Latest").value(), "base:Latest");
}

TEST(NormalizeImageName, RejectsUppercaseAndOddCharactersInTheName) {
  EXPECT_FALSE(NormalizeImageName("Busybox"));
  EXPECT_FALSE(NormalizeImageName("bu sy"));
  EXPECT_FALSE(NormalizeImageName("a\nb"));
  EXPECT_FALSE(NormalizeImageName("a$b:1"));
}

TEST(NormalizeImageName, RejectsTraversalAndEmptyComponents) {
  EXPECT_FALSE(NormalizeImageName("../etc"));
  EXPECT_FALSE(NormalizeImageName("a/../b"));
  EXPECT_FALSE(NormalizeImageName("/abs"));
  EXPECT_FALSE(NormalizeImageName("a//b"));
  EXPECT_FALSE(NormalizeImageName("a/"));
  EXPECT_FALSE(NormalizeImageName(".hidden"));
  EXPECT_FALSE(NormalizeImageName(""));
}

TEST(NormalizeImageName, RejectsBadTags) {
  EXPECT_FALSE(NormalizeImageName("a:"));
  EXPECT_FALSE(NormalizeImageName("a:.x"));
  EXPECT_FALSE(NormalizeImageName("a:-x"));
  EXPECT_FALSE(NormalizeImageName("a:x/y"));
  EXPECT_FALSE(NormalizeImageName("a:b:c"));
  EXPECT_FALSE(NormalizeImageName("a:" + std::string(129, 'x')));
}

TEST(NormalizeImageName, RejectsDigestsPortsAndOverlongNames) {
  EXPECT_FALSE(NormalizeImageName("a@sha256:0123"));
  EXPECT_FALSE(NormalizeImageName("localhost:5000/a:1"));
  EXPECT_FALSE(NormalizeImageName(std::string(kMaxImageNameLength + 1, 'a')));
  // 122 characters plus ":latest" is one too many once the tag is added.
  EXPECT_FALSE(NormalizeImageName(std::string(122, 'a')));
  EXPECT_TRUE(NormalizeImageName(std::string(121, 'a')));
}

TEST(ImageRepository, IsTheNamePart) { EXPECT_EQ(ImageRepository("team/agent:1.0"), "team/agent"); }

}  // namespace
}  // namespace airlock::images
