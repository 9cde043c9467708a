#include "common/secret.h"

#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace airlock {
namespace {

TEST(SecretTest, NeverFormatsItsValue) {
  Secret s("sk-very-secret-value");
  EXPECT_EQ(fmt::format("{}", s), "***");
  EXPECT_EQ(fmt::format("key={}!", s), "key=***!");
  std::ostringstream os;
  os << s;
  EXPECT_EQ(os.str(), "***");
  EXPECT_EQ(s.Reveal(), "sk-very-secret-value");
}

// Secret deliberately has no nlohmann::json conversion; this is checked at compile time.
static_assert(!std::is_constructible_v<nlohmann::json, Secret>,
              "a Secret must not be convertible to JSON (it would end up in logs or responses)");

}  // namespace
}  // namespace airlock
