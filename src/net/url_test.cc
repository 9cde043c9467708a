#include "net/url.h"

#include <gtest/gtest.h>

namespace airlock::net {
namespace {

TEST(SplitUrl, ReadsSchemeHostPortPathQueryAndFragment) {
  auto u = SplitUrl("HTTPS://api.Example.com:8443/v1/x?a=1&b#frag");
  ASSERT_TRUE(u.has_value());
  EXPECT_EQ(u->scheme, "https");
  EXPECT_TRUE(u->tls());
  EXPECT_EQ(u->host, "api.Example.com");
  EXPECT_EQ(u->port, 8443);
  EXPECT_TRUE(u->port_given);
  EXPECT_EQ(u->path, "/v1/x");
  EXPECT_TRUE(u->has_query);
  EXPECT_EQ(u->query, "a=1&b");
  EXPECT_TRUE(u->has_fragment);
  EXPECT_EQ(u->fragment, "frag");
  EXPECT_FALSE(u->ipv6);
}

TEST(SplitUrl, DefaultsThePortToTheSchemes) {
  auto https = SplitUrl("https://h");
  ASSERT_TRUE(https.has_value());
  EXPECT_EQ(https->port, 443);
  EXPECT_FALSE(https->port_given);
  EXPECT_EQ(https->path, "");
  EXPECT_FALSE(https->has_query);
  auto http = SplitUrl("http://h/");
  ASSERT_TRUE(http.has_value());
  EXPECT_EQ(http->port, 80);
  EXPECT_EQ(http->path, "/");
  EXPECT_FALSE(http->tls());
}

TEST(SplitUrl, ReadsIpv6LiteralsWithoutTheirBrackets) {
  auto u = SplitUrl("http://[::1]:9000/p");
  ASSERT_TRUE(u.has_value());
  EXPECT_EQ(u->host, "::1");
  EXPECT_TRUE(u->ipv6);
  EXPECT_EQ(u->port, 9000);
  EXPECT_EQ(u->HostForHeader(), "[::1]");
  EXPECT_EQ(u->Authority(), "[::1]:9000");
  auto bare = SplitUrl("https://[2001:db8::1]");
  ASSERT_TRUE(bare.has_value());
  EXPECT_EQ(bare->Authority(), "[2001:db8::1]");
}

TEST(SplitUrl, AuthorityLeavesOutTheDefaultPort) {
  EXPECT_EQ(SplitUrl("https://h:443/x")->Authority(), "h");
  EXPECT_EQ(SplitUrl("http://h:443/x")->Authority(), "h:443");
  EXPECT_EQ(SplitUrl("http://h:80")->Authority(), "h");
}

TEST(SplitUrl, NamesWhatIsWrong) {
  struct Case {
    std::string_view text;
    UrlProblem problem;
  };
  for (const Case& c : {
           Case{"", UrlProblem::kNoScheme},
           Case{"127.0.0.1:7400", UrlProblem::kNoScheme},
           Case{"ftp://h", UrlProblem::kScheme},
           Case{"://h", UrlProblem::kScheme},
           Case{"https://user:pw@h", UrlProblem::kUserInfo},
           Case{"https://user@h/x", UrlProblem::kUserInfo},
           Case{"https://", UrlProblem::kNoHost},
           Case{"https://:80", UrlProblem::kNoHost},
           Case{"https:///path", UrlProblem::kNoHost},
           Case{"https://[::1", UrlProblem::kIpv6Unclosed},
           Case{"https://[::1]x", UrlProblem::kAfterIpv6},
           Case{"https://[zz]", UrlProblem::kBadHost},
           Case{"https://[]", UrlProblem::kBadHost},
           Case{"https://ho st", UrlProblem::kBadHost},
           Case{"https://host!", UrlProblem::kBadHost},
           Case{"https://a:b:80", UrlProblem::kBadHost},
           Case{"https://host\r\n.evil", UrlProblem::kBadHost},
           Case{"https://h:", UrlProblem::kEmptyPort},
           Case{"https://[::1]:", UrlProblem::kEmptyPort},
           Case{"https://h:0", UrlProblem::kBadPort},
           Case{"https://h:65536", UrlProblem::kBadPort},
           Case{"https://h:99999", UrlProblem::kBadPort},
           Case{"https://h:-1", UrlProblem::kBadPort},
           Case{"https://h:9x", UrlProblem::kBadPort},
           Case{"https://h:+80", UrlProblem::kBadPort},
           Case{"https://h:000080", UrlProblem::kBadPort},
           Case{"https://h/a b", UrlProblem::kBadPath},
           Case{"https://h/a\r\nX-Evil: 1", UrlProblem::kBadPath},
           Case{"https://h?a=\x7f", UrlProblem::kBadPath},
       }) {
    auto u = SplitUrl(c.text);
    ASSERT_FALSE(u.has_value()) << c.text;
    EXPECT_EQ(u.error(), c.problem) << c.text;
  }
}

TEST(SplitUrl, AQueryOrFragmentEndsTheHost) {
  auto u = SplitUrl("http://h?x=1");
  ASSERT_TRUE(u.has_value());
  EXPECT_EQ(u->host, "h");
  EXPECT_EQ(u->path, "");
  EXPECT_EQ(u->query, "x=1");
  auto f = SplitUrl("http://h:81#top");
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->port, 81);
  EXPECT_TRUE(f->has_fragment);
  EXPECT_FALSE(f->has_query);
}

TEST(ParseUrl, AppliesThePolicyAndQuotesTheText) {
  EXPECT_TRUE(ParseUrl("https://h/v1").has_value());
  auto query = ParseUrl("https://h/v1?x=1");
  ASSERT_FALSE(query.has_value());
  EXPECT_EQ(query.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(query.error().message.find("\"https://h/v1?x=1\""), std::string::npos);
  EXPECT_TRUE(ParseUrl("https://h/v1?x=1", {.allow_query = true}).has_value());

  auto no_https = ParseUrl("https://h", {.allow_https = false});
  ASSERT_FALSE(no_https.has_value());
  EXPECT_NE(no_https.error().message.find("https"), std::string::npos);
  EXPECT_FALSE(ParseUrl("http://h", {.allow_http = false}).has_value());

  EXPECT_TRUE(ParseUrl("https://h/", {.allow_path = false}).has_value());
  EXPECT_FALSE(ParseUrl("https://h/bucket", {.allow_path = false}).has_value());

  auto bad = ParseUrl("https://h:0");
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.error().message.find(DescribeUrlProblem(UrlProblem::kBadPort)), std::string::npos);
}

}  // namespace
}  // namespace airlock::net
