#include "llm/upstream_client.h"

#include <string>
#include <utility>

#include "net/url.h"

namespace airlock::llm {

std::string Endpoint::Key() const {
  return fmt::format("{}://{}:{}", tls ? "https" : "http", host, port);
}

// An adapter of net::SplitUrl that keeps the messages configuration errors have always had.
Result<Endpoint> ParseBaseUrl(std::string_view url) {
  auto parsed = net::SplitUrl(url);
  if (!parsed) {
    switch (parsed.error()) {
      case net::UrlProblem::kNoScheme:
      case net::UrlProblem::kScheme:
        return Errorf(ErrorCode::kInvalidArgument,
                      "base_url \"{}\" must start with http:// or https://", url);
      case net::UrlProblem::kUserInfo:
        return Errorf(ErrorCode::kInvalidArgument,
                      "base_url \"{}\": user info, query and fragment are not allowed", url);
      case net::UrlProblem::kNoHost:
        return Errorf(ErrorCode::kInvalidArgument, "base_url \"{}\" has no host", url);
      case net::UrlProblem::kIpv6Unclosed:
        return Errorf(ErrorCode::kInvalidArgument, "base_url \"{}\": bad IPv6 host", url);
      case net::UrlProblem::kAfterIpv6:
      case net::UrlProblem::kBadHost:
        return Errorf(ErrorCode::kInvalidArgument, "base_url \"{}\": bad host", url);
      case net::UrlProblem::kEmptyPort:
      case net::UrlProblem::kBadPort:
        return Errorf(ErrorCode::kInvalidArgument, "base_url \"{}\": bad port", url);
      case net::UrlProblem::kBadPath:
        return Errorf(ErrorCode::kInvalidArgument,
                      "base_url \"{}\": a space or a control character in the path", url);
    }
  }
  if (parsed->has_query || parsed->has_fragment) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "base_url \"{}\": user info, query and fragment are not allowed", url);
  }
  Endpoint ep;
  ep.tls = parsed->tls();
  ep.host = std::move(parsed->host);
  ep.port = parsed->port;
  std::string_view path = parsed->path;
  while (path.ends_with('/')) path.remove_suffix(1);
  ep.base_path = std::string(path);
  return ep;
}

Result<std::unique_ptr<UpstreamClient>> UpstreamClient::Make(asio::io_context& io,
                                                             UpstreamOptions options) {
  options.log_name = "llm upstream";
  auto http = net::HttpClient::Make(io, std::move(options));
  if (!http) return Errorf(http.error().code, "TLS: {}", http.error().message);
  return std::unique_ptr<UpstreamClient>(new UpstreamClient(std::move(*http)));
}

awaitable<Result<UpstreamResponse>> UpstreamClient::Post(const Endpoint& ep, const HttpCall& call,
                                                         BodySink* sink, CallCancel& cancel) {
  net::Endpoint to;
  to.tls = ep.tls;
  to.host = ep.host;
  to.port = ep.port;
  net::HttpRequest request;
  request.method = http::verb::post;
  request.target = ep.base_path + call.path;
  request.headers = call.headers;
  request.body = call.body;
  co_return co_await http_->Fetch(to, request, sink, cancel);
}

}  // namespace airlock::llm
