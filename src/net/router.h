#pragma once

#include <optional>
#include <string>
#include <vector>

#include "net/http_server.h"

namespace airlock::net {

// What a route accepts, known from the request line alone, so the server can refuse a body
// before reading it.
struct RouteOptions {
  // The largest body read into memory for this route. A route that takes no body keeps the
  // small default; a body the server streams to the handler is bounded by the handler.
  size_t max_body_bytes = 4096;
};

// A registered route as the router matches it: "GET /v1/sessions/{id}".
struct RouteInfo {
  http::verb method;
  std::string pattern;
};

// Maps "METHOD /path/{param}/..." to handlers. A path that matches a pattern under another
// method answers 405 with an Allow header; anything else is a JSON 404.
class Router {
 public:
  void Add(http::verb method, std::string pattern, Handler handler, RouteOptions options = {});
  awaitable<Response> Dispatch(Request& req) const;
  // The options of the route `req` goes to, with req.route and req.params filled in; nullopt
  // when no route matches (Dispatch then answers 404 or 405).
  std::optional<RouteOptions> Find(Request& req) const;
  // Every route, in the order added: what the listener serves, for tests that hold the API's
  // documentation against it.
  std::vector<RouteInfo> Routes() const;

 private:
  struct Route {
    http::verb method;
    std::string pattern;
    std::vector<std::string> segments;
    Handler handler;
    RouteOptions options;
  };
  static bool Match(const Route& r, const std::vector<std::string_view>& parts, Request* req);
  std::vector<Route> routes_;
};

}  // namespace airlock::net
