#include "cli/http_client.h"

#include <algorithm>
#include <cctype>

#include "common/asio.h"
#include "net/http_client.h"
#include "net/url.h"

namespace airlock::cli {

namespace {

constexpr size_t kMaxBodyBytes = size_t{256} << 20;
constexpr size_t kMaxErrorBodyBytes = 1 << 20;

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

std::string Seconds(std::chrono::milliseconds ms) {
  if (ms.count() % 1000 == 0) {
    return fmt::format("{} s", ms.count() / 1000);
  }
  return fmt::format("{:.1f} s", static_cast<double>(ms.count()) / 1000.0);
}

// The CLI's words for a transport failure: what happened and what to check.
Error DescribeFailure(const Url& url, const HttpClientOptions& options,
                      const net::TransportFailure& f) {
  using Stage = net::TransportFailure::Stage;
  const beast::error_code& ec = f.ec;
  switch (f.stage) {
    case Stage::kResolve:
      if (ec != beast::error::timeout) {
        return Error{ErrorCode::kUnavailable,
                     fmt::format("cannot connect to {}: cannot resolve \"{}\": {}", url.ToString(),
                                 url.host, ec.message())};
      }
      [[fallthrough]];
    case Stage::kConnect:
    case Stage::kHandshake:
      if (ec == beast::error::timeout) {
        return Error{ErrorCode::kUnavailable,
                     fmt::format("cannot connect to {}: no answer within {} — is the address "
                                 "right and `airlock serve` running?",
                                 url.ToString(), Seconds(options.connect_timeout))};
      }
      return Error{
          ErrorCode::kUnavailable,
          fmt::format("cannot connect to {}: {} — is `airlock serve` running?", url.ToString(),
                      ec == asio::error::connection_refused ? "connection refused" : ec.message())};
    case Stage::kSend:
    case Stage::kReceive:
      break;
  }
  std::string_view doing = f.stage == Stage::kSend ? "sending the request" : "reading the response";
  if (ec == beast::error::timeout) {
    return Error{ErrorCode::kDeadlineExceeded,
                 fmt::format("{}: timed out {}", url.ToString(), doing)};
  }
  if (ec.category() == http::make_error_code(http::error::bad_version).category() &&
      ec != http::error::end_of_stream && ec != http::error::partial_message) {
    return Error{ErrorCode::kUnavailable,
                 fmt::format("{} did not answer with valid HTTP ({}) — is it an Airlock server?",
                             url.ToString(), ec.message())};
  }
  return Error{ErrorCode::kUnavailable, fmt::format("connection to {} lost while {}: {}",
                                                    url.ToString(), doing, ec.message())};
}

// One connection per exchange, no retries (the user sees each failure), and failures in the
// CLI's words.
net::HttpClientOptions ExchangeOptions(const Url& url, const HttpClientOptions& options) {
  net::HttpClientOptions o;
  o.connect_timeout = options.connect_timeout;
  o.first_byte_timeout = options.request_timeout;
  o.total_timeout = options.request_timeout;
  o.max_retries = 0;
  o.keep_alive = false;
  o.max_response_bytes = kMaxBodyBytes;
  o.log_name = "airlock cli";
  o.describe_failure = [url, options](const net::TransportFailure& f) {
    return DescribeFailure(url, options, f);
  };
  return o;
}

net::Endpoint EndpointOf(const Url& url) {
  net::Endpoint e;
  e.tls = false;
  e.host = url.host;
  e.port = url.port;
  return e;
}

HttpResponse ResponseOf(net::HttpResponse r) {
  HttpResponse out;
  out.status = static_cast<int>(r.status);
  for (auto& [name, value] : r.headers) {
    if (beast::iequals(name, "Content-Type")) {
      out.content_type = value;
    }
  }
  out.headers = std::move(r.headers);
  out.body = std::move(r.body);
  return out;
}

}  // namespace

std::string Url::ToString() const {
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return fmt::format("http://{}:{}{}", h, port, base_path);
}

// An adapter of net::SplitUrl that keeps the CLI's own messages, which say what to do.
Result<Url> ParseUrl(std::string_view text) {
  if (Lower(text.substr(0, 8)).starts_with("https://")) {
    return Errorf(
        ErrorCode::kInvalidArgument,
        "\"{}\": https is not supported by the CLI; use http:// (the operator API listens "
        "on loopback) or a local TLS-terminating proxy",
        text);
  }
  auto bad_shape = [text] {
    return Errorf(
        ErrorCode::kInvalidArgument,
        "\"{}\": the URL must be http://HOST[:PORT][/PATH] without user, query or fragment", text);
  };
  auto parsed = net::SplitUrl(text);
  if (!parsed) {
    switch (parsed.error()) {
      case net::UrlProblem::kNoScheme:
      case net::UrlProblem::kScheme:
        return Errorf(ErrorCode::kInvalidArgument, "\"{}\" is not an http:// URL", text);
      case net::UrlProblem::kUserInfo:
      case net::UrlProblem::kBadPath:
        return bad_shape();
      case net::UrlProblem::kNoHost:
        return Errorf(ErrorCode::kInvalidArgument, "\"{}\": the URL has no host", text);
      case net::UrlProblem::kIpv6Unclosed:
        return Errorf(ErrorCode::kInvalidArgument, "\"{}\": unterminated IPv6 address", text);
      case net::UrlProblem::kAfterIpv6:
      case net::UrlProblem::kBadHost:
        return Errorf(ErrorCode::kInvalidArgument, "\"{}\": bad host", text);
      case net::UrlProblem::kEmptyPort:
        return Errorf(ErrorCode::kInvalidArgument, "\"{}\": empty port", text);
      case net::UrlProblem::kBadPort:
        return Errorf(ErrorCode::kInvalidArgument, "\"{}\": the port must be 1-65535", text);
    }
  }
  if (parsed->has_query || parsed->has_fragment) return bad_shape();
  Url url;
  url.host = std::move(parsed->host);
  url.port = parsed->port;
  std::string_view path = parsed->path;
  while (!path.empty() && path.back() == '/') {
    path.remove_suffix(1);
  }
  url.base_path = std::string(path);
  return url;
}

Result<HttpClient> HttpClient::Create(std::string_view base_url, HttpClientOptions options) {
  AIRLOCK_ASSIGN_OR_RETURN(Url url, ParseUrl(base_url));
  return HttpClient(std::move(url), options);
}

namespace {

net::HttpRequest BuildRequest(const Url& url, http::verb verb, std::string_view path,
                              const std::optional<Secret>& bearer, const Headers& headers) {
  net::HttpRequest req;
  req.method = verb;
  req.target = url.base_path + std::string(path);
  std::string host = url.host.find(':') != std::string::npos ? "[" + url.host + "]" : url.host;
  req.host = fmt::format("{}:{}", host, url.port);
  req.headers.emplace_back("User-Agent", "airlock-cli/" AIRLOCK_VERSION);
  if (bearer) {
    req.headers.emplace_back("Authorization", "Bearer " + bearer->Reveal());
  }
  for (const auto& [name, value] : headers) {
    req.headers.emplace_back(name, value);
  }
  return req;
}

}  // namespace

Result<HttpResponse> HttpClient::Do(std::string_view method, std::string_view path,
                                    const std::optional<Json>& body, const Headers& headers) const {
  http::verb verb = http::string_to_verb(method);
  if (verb == http::verb::unknown) {
    return Errorf(ErrorCode::kInvalidArgument, "unknown HTTP method \"{}\"", method);
  }
  auto req = BuildRequest(url_, verb, path, bearer_, headers);
  if (body) {
    req.headers.emplace_back("Content-Type", "application/json");
    req.body = DumpJson(*body);
  }
  AIRLOCK_ASSIGN_OR_RETURN(
      net::HttpResponse res,
      net::FetchBlocking(nullptr, ExchangeOptions(url_, options_), EndpointOf(url_), req));
  return ResponseOf(std::move(res));
}

Result<HttpResponse> HttpClient::StreamBody(
    std::string_view path, const Headers& headers,
    const std::function<bool(std::string_view)>& on_data) const {
  auto req = BuildRequest(url_, http::verb::get, path, bearer_, headers);
  // The headers must come within the request timeout; a stream then runs as long as it
  // keeps talking.
  net::HttpClientOptions o = ExchangeOptions(url_, options_);
  o.total_timeout = net::kNoTimeout;
  o.sink_idle_timeout =
      options_.stream_idle_timeout.count() > 0 ? options_.stream_idle_timeout : net::kNoTimeout;
  AIRLOCK_ASSIGN_OR_RETURN(net::HttpResponse res,
                           net::FetchBlocking(nullptr, o, EndpointOf(url_), req, on_data));
  HttpResponse out = ResponseOf(std::move(res));
  // An error answer is kept for the caller to report, bounded.
  if (out.body.size() > kMaxErrorBodyBytes) {
    out.body.resize(kMaxErrorBodyBytes);
  }
  return out;
}

Result<HttpResponse> HttpClient::StreamSse(
    std::string_view path, const Headers& headers,
    const std::function<bool(const SseEvent&)>& on_event) const {
  Headers all = headers;
  all.emplace_back("Accept", "text/event-stream");
  SseParser parser(on_event);
  std::optional<Error> parse_error;
  auto res = StreamBody(path, all, [&](std::string_view piece) {
    auto go_on = parser.Feed(piece);
    if (!go_on) {
      parse_error = go_on.error();
      return false;
    }
    return *go_on;
  });
  if (parse_error) {
    return Errorf(ErrorCode::kUnavailable, "bad event stream from {}: {}", url_.ToString(),
                  parse_error->message);
  }
  return res;
}

}  // namespace airlock::cli
