#include <gtest/gtest.h>

#include "net/http_server.h"

namespace airlock::net {
namespace {

std::string HeaderOf(const Response& r, std::string_view name) {
  for (const auto& [k, v] : r.headers) {
    if (k == name) return v;
  }
  return "";
}

TEST(ResponseFromErrorTest, PicksTheStatusAndDefaultCodeOfTheErrorCode) {
  Response r = Response::FromError(Error{ErrorCode::kPaymentRequired, "spent"});
  EXPECT_EQ(r.status, 402u);
  EXPECT_EQ(r.body, "{\"error\":{\"code\":\"budget_exhausted\",\"message\":\"spent\"}}\n");
  EXPECT_TRUE(r.headers.empty());
}

TEST(ResponseFromErrorTest, WritesTheSameBodyAsTheLiteralForm) {
  Error e{ErrorCode::kNotFound, "no such session"};
  EXPECT_EQ(Response::FromError(e).body,
            Response::FromError(404, "not_found", "no such session").body);
}

TEST(ResponseFromErrorTest, ApiCodeOverridesTheDefaultName) {
  Error e{ErrorCode::kResourceExhausted, "slow down"};
  e.api_code = "rate_limited";
  Response r = Response::FromError(e);
  EXPECT_EQ(r.status, 429u);
  EXPECT_EQ(r.body, "{\"error\":{\"code\":\"rate_limited\",\"message\":\"slow down\"}}\n");
}

TEST(ResponseFromErrorTest, RetryAfterBecomesAHeader) {
  Error e{ErrorCode::kResourceExhausted, "slow down"};
  e.retry_after_s = 3;
  Response r = Response::FromError(e);
  EXPECT_EQ(HeaderOf(r, "Retry-After"), "3");
}

}  // namespace
}  // namespace airlock::net
