// The scripted model: replies by position in the history, and the alternative a request's
// tools select (the demo's browsing script for an agent that has a browser).
#include <gtest/gtest.h>

#include "llm/scripted.h"

namespace airlock::llm {
namespace {

Json Tool(const char* name) {
  return Json{{"type", "function"}, {"function", {{"name", name}, {"parameters", Json::object()}}}};
}

// The reply to `messages` with `tools` offered.
Json Ask(Provider& p, Json messages, Json tools) {
  asio::io_context io;
  ChatRequest req;
  req.messages = std::move(messages);
  req.tools = std::move(tools);
  CallCancel cancel;
  Json reply;
  asio::co_spawn(
      io,
      [&]() -> awaitable<void> {
        auto r = co_await p.Chat(req, nullptr, cancel);
        EXPECT_TRUE(r.has_value());
        if (r) reply = r->message;
      },
      asio::detached);
  io.run();
  return reply;
}

std::string FirstToolName(const Json& reply) {
  return reply.contains("tool_calls") ? reply["tool_calls"][0]["function"].value("name", "") : "";
}

TEST(ScriptedModel, AnAlternativeIsChosenByTheToolsTheRequestOffers) {
  Json script = {
      {"replies", {"main one", "main two"}},
      {"alternatives",
       {{{"when_tool", "browser_open"},
         {"replies",
          {{{"tool_calls", {{{"function", {{"name", "browser_open"}}}}}}}, "browsed"}}}}}};
  auto p = MakeScriptedProvider(script, "test");
  ASSERT_TRUE(p.has_value()) << p.error().message;
  const Json user = Json::array({Json{{"role", "user"}, {"content", "go"}}});
  EXPECT_EQ(Ask(**p, user, Json::array({Tool("shell")}))["content"], "main one");
  EXPECT_EQ(FirstToolName(Ask(**p, user, Json::array({Tool("shell"), Tool("browser_open")}))),
            "browser_open");
  Json later = user;
  later.push_back(Json{{"role", "assistant"}, {"content", "x"}});
  EXPECT_EQ(Ask(**p, later, Json::array({Tool("browser_open")}))["content"], "browsed");
  EXPECT_EQ(Ask(**p, later, Json::array())["content"], "main two");

  for (const Json& bad : {Json{{"replies", Json::array()}, {"alternatives", "x"}},
                          Json{{"replies", Json::array()}, {"alternatives", {{{"replies", {}}}}}},
                          Json{{"replies", Json::array()},
                               {"alternatives", {{{"when_tool", "t"}, {"replies", {1}}}}}}}) {
    auto r = MakeScriptedProvider(bad, "bad");
    EXPECT_FALSE(r.has_value()) << bad;
  }
}

TEST(ScriptedModel, TheBuiltinDemoBrowsesWhenTheAgentHasABrowser) {
  auto p = MakeScriptedProvider(BuiltinDemoScript(), "demo");
  ASSERT_TRUE(p.has_value()) << p.error().message;
  const Json user = Json::array({Json{{"role", "user"}, {"content", "go"}}});
  EXPECT_EQ(FirstToolName(Ask(**p, user, Json::array({Tool("shell")}))), "shell");
  Json reply = Ask(**p, user, Json::array({Tool("shell"), Tool("browser_open")}));
  ASSERT_EQ(FirstToolName(reply), "browser_open");
  EXPECT_NE(reply["tool_calls"][0]["function"]["arguments"].get<std::string>().find(
                "/sandbox/v1/demo/index"),
            std::string::npos);
}

}  // namespace
}  // namespace airlock::llm
