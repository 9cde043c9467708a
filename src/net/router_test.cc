#include "net/router.h"

#include <gtest/gtest.h>

namespace airlock::net {
namespace {

// A plain coroutine function, not a capturing lambda: the lambda object would be gone by
// the time io.run() resumes it.
awaitable<void> DispatchInto(const Router* r, Request* req, Response* res) {
  *res = co_await r->Dispatch(*req);
}

Response DispatchOnce(const Router& r, http::verb m, std::string path, Request* out = nullptr) {
  asio::io_context io;
  Request req;
  req.msg.method(m);
  req.path = std::move(path);
  Response res;
  asio::co_spawn(io, DispatchInto(&r, &req, &res), asio::detached);
  io.run();
  if (out) *out = req;
  return res;
}

Router MakeRouter() {
  Router r;
  r.Add(http::verb::get, "/v1/sessions/{id}", [](Request& q) -> awaitable<Response> {
    co_return Response::FromJson(200, Json{{"id", q.params["id"]}});
  });
  r.Add(http::verb::delete_, "/v1/sessions/{id}",
        [](Request&) -> awaitable<Response> { co_return Response::FromJson(200, Json::object()); });
  return r;
}

TEST(RouterTest, MatchesParamsAndRecordsThePatternAsRoute) {
  Router r = MakeRouter();
  Request req;
  auto res = DispatchOnce(r, http::verb::get, "/v1/sessions/ses_x", &req);
  EXPECT_EQ(res.status, 200u);
  EXPECT_NE(res.body.find("ses_x"), std::string::npos);
  EXPECT_EQ(req.route, "/v1/sessions/{id}");
}

TEST(RouterTest, WrongMethodIs405WithAllow) {
  Router r = MakeRouter();
  auto res = DispatchOnce(r, http::verb::post, "/v1/sessions/ses_x");
  EXPECT_EQ(res.status, 405u);
  ASSERT_EQ(res.headers.size(), 1u);
  EXPECT_EQ(res.headers[0].second, "GET, DELETE");
}

TEST(RouterTest, UnknownPathIsJson404) {
  Router r = MakeRouter();
  auto res = DispatchOnce(r, http::verb::get, "/v1/sessions/ses_x/extra");
  EXPECT_EQ(res.status, 404u);
  EXPECT_NE(res.body.find("\"not_found\""), std::string::npos);
  EXPECT_EQ(DispatchOnce(r, http::verb::get, "/").status, 404u);
}

TEST(RouterTest, ListsItsRoutesInTheOrderAdded) {
  Router r = MakeRouter();
  auto routes = r.Routes();
  ASSERT_EQ(routes.size(), 2u);
  EXPECT_EQ(routes[0].method, http::verb::get);
  EXPECT_EQ(routes[0].pattern, "/v1/sessions/{id}");
  EXPECT_EQ(routes[1].method, http::verb::delete_);
  EXPECT_EQ(routes[1].pattern, "/v1/sessions/{id}");
}

}  // namespace
}  // namespace airlock::net
