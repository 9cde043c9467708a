#include "net/router.h"

namespace airlock::net {

namespace {

std::vector<std::string_view> Split(std::string_view path) {
  std::vector<std::string_view> parts;
  parts.reserve(8);  // one allocation for the routes' depths, not one per doubling
  while (!path.empty()) {
    if (path.front() == '/') {
      path.remove_prefix(1);
      continue;
    }
    size_t slash = path.find('/');
    parts.push_back(path.substr(0, slash));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash);
  }
  return parts;
}

}  // namespace

void Router::Add(http::verb method, std::string pattern, Handler handler, RouteOptions options) {
  Route r{method, pattern, {}, std::move(handler), options};
  for (auto part : Split(pattern)) r.segments.emplace_back(part);
  routes_.push_back(std::move(r));
}

bool Router::Match(const Route& r, const std::vector<std::string_view>& parts, Request* req) {
  if (r.segments.size() != parts.size()) return false;
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string& seg = r.segments[i];
    bool is_param = seg.size() > 2 && seg.front() == '{' && seg.back() == '}';
    if (!is_param && seg != parts[i]) return false;
  }
  if (req) {
    for (size_t i = 0; i < parts.size(); ++i) {
      const std::string& seg = r.segments[i];
      if (seg.size() > 2 && seg.front() == '{') {
        req->params[seg.substr(1, seg.size() - 2)] = std::string(parts[i]);
      }
    }
  }
  return true;
}

std::optional<RouteOptions> Router::Find(Request& req) const {
  auto parts = Split(req.path);
  for (const auto& r : routes_) {
    if (r.method == req.msg.method() && Match(r, parts, &req)) {
      req.route = r.pattern;
      return r.options;
    }
  }
  return std::nullopt;
}

std::vector<RouteInfo> Router::Routes() const {
  std::vector<RouteInfo> out;
  out.reserve(routes_.size());
  for (const auto& r : routes_) out.push_back({r.method, r.pattern});
  return out;
}

awaitable<Response> Router::Dispatch(Request& req) const {
  auto parts = Split(req.path);
  std::string allow;
  for (const auto& r : routes_) {
    if (!Match(r, parts, nullptr)) continue;
    if (r.method == req.msg.method()) {
      Match(r, parts, &req);
      req.route = r.pattern;
      co_return co_await r.handler(req);
    }
    if (!allow.empty()) allow += ", ";
    allow += std::string(http::to_string(r.method));
  }
  if (!allow.empty()) {
    req.route = "method_not_allowed";
    auto res = Response::FromError(
        Error{ErrorCode::kMethodNotAllowed,
              fmt::format("{} is not allowed here; allowed: {}",
                          std::string(req.msg.method_string()).substr(0, 16), allow)});
    res.headers.emplace_back("Allow", allow);
    co_return res;
  }
  req.route = "not_found";
  co_return Response::FromError(Error{ErrorCode::kNotFound, "no such route"});
}

}  // namespace airlock::net
