#pragma once

#include <string>
#include <vector>

#include "controlplane/http_server.h"

namespace airlock::controlplane {

// Maps "METHOD /path/{param}/..." to handlers. A path that matches a pattern under another
// method answers 405 with an Allow header; anything else is a JSON 404.
class Router {
 public:
  void Add(http::verb method, std::string pattern, Handler handler);
  awaitable<Response> Dispatch(Request& req) const;

 private:
  struct Route {
    http::verb method;
    std::string pattern;
    std::vector<std::string> segments;
    Handler handler;
  };
  static bool Match(const Route& r, const std::vector<std::string_view>& parts, Request* req);
  std::vector<Route> routes_;
};

}  // namespace airlock::controlplane
