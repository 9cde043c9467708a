// The demo site the sandbox listener serves for the browsing demo: its pages, a query read as a
// browser sends it, and what a hostile query becomes.
#include "controlplane/demo_site.h"

#include <gtest/gtest.h>

namespace airlock::controlplane {
namespace {

TEST(DemoSiteTest, ServesItsPagesAndEscapesWhatTheQueryHolds) {
  auto index = DemoSitePage("index", "");
  EXPECT_EQ(index.status, 200u);
  EXPECT_EQ(index.content_type, "text/html; charset=utf-8");
  EXPECT_NE(index.body.find("<a href=\"/sandbox/v1/demo/search\">Search the catalogue</a>"),
            std::string::npos);
  EXPECT_NE(DemoSitePage("search", "").body.find("<input id=\"q\" name=\"q\""), std::string::npos);

  auto found = DemoSitePage("results", "q=sand%62ox+handbook");
  EXPECT_NE(found.body.find("Results for \"sandbox handbook\""), std::string::npos) << found.body;
  EXPECT_NE(found.body.find("The Sandbox Handbook"), std::string::npos);
  EXPECT_EQ(found.body.find("Micro-VMs"), std::string::npos);
  auto none = DemoSitePage("results", "q=zzz");
  EXPECT_NE(none.body.find("Nothing found."), std::string::npos);
  auto hostile = DemoSitePage("results", "q=%3Cscript%3Ealert(1)%3C/script%3E&x=1");
  EXPECT_EQ(hostile.body.find("<script>"), std::string::npos) << hostile.body;
  EXPECT_NE(hostile.body.find("&lt;script&gt;"), std::string::npos);
  auto broken = DemoSitePage("results", "q=%zz%4");
  EXPECT_EQ(broken.status, 200u);
  EXPECT_EQ(DemoSitePage("admin", "").status, 404u);
}

}  // namespace
}  // namespace airlock::controlplane
