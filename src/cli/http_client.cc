#include "cli/http_client.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <limits>

#include "common/asio.h"
#include "net/url.h"

namespace airlock::cli {

namespace {

using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kMaxBodyBytes = uint64_t{256} << 20;
constexpr size_t kMaxErrorBodyBytes = 1 << 20;

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// Runs one asynchronous operation to completion on `ioc`. The operations are asynchronous only
// so that beast::tcp_stream's timeouts apply: they do not exist for synchronous calls.
template <typename Initiate>
beast::error_code RunOp(asio::io_context& ioc, Initiate&& initiate) {
  beast::error_code result;
  initiate([&result](beast::error_code ec, auto&&...) { result = ec; });
  ioc.restart();
  ioc.run();
  return result;
}

std::string Seconds(std::chrono::milliseconds ms) {
  if (ms.count() % 1000 == 0) {
    return fmt::format("{} s", ms.count() / 1000);
  }
  return fmt::format("{:.1f} s", static_cast<double>(ms.count()) / 1000.0);
}

// One connection for one exchange.
class Exchange {
 public:
  Exchange(const Url& url, const HttpClientOptions& options) : url_(url), options_(options) {}
  ~Exchange() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
  }

  Status Connect() {
    tcp::resolver resolver(ioc_);
    beast::error_code ec;
    auto results = resolver.resolve(url_.host, std::to_string(url_.port), ec);
    if (ec) {
      return Errorf(ErrorCode::kUnavailable, "cannot connect to {}: cannot resolve \"{}\": {}",
                    url_.ToString(), url_.host, ec.message());
    }
    stream_.expires_after(options_.connect_timeout);
    ec = RunOp(ioc_, [&](auto handler) { stream_.async_connect(results, std::move(handler)); });
    if (ec == beast::error::timeout) {
      return Errorf(ErrorCode::kUnavailable,
                    "cannot connect to {}: no answer within {} — is the address right and "
                    "`airlock serve` running?",
                    url_.ToString(), Seconds(options_.connect_timeout));
    }
    if (ec) {
      std::string why = ec == asio::error::connection_refused ? "connection refused" : ec.message();
      return Errorf(ErrorCode::kUnavailable,
                    "cannot connect to {}: {} — is `airlock serve` running?", url_.ToString(), why);
    }
    return Ok();
  }

  void ExpiresAt(Clock::time_point deadline) { stream_.expires_at(deadline); }
  void ExpiresAfter(std::chrono::milliseconds d) {
    if (d.count() > 0) {
      stream_.expires_after(d);
    } else {
      stream_.expires_never();
    }
  }

  Status Write(http::request<http::string_body>& req) {
    auto ec =
        RunOp(ioc_, [&](auto handler) { http::async_write(stream_, req, std::move(handler)); });
    if (ec) {
      return TransportError("sending the request", ec);
    }
    return Ok();
  }

  template <typename Parser>
  Status ReadHeader(Parser& parser) {
    auto ec = RunOp(ioc_, [&](auto handler) {
      http::async_read_header(stream_, buffer_, parser, std::move(handler));
    });
    if (ec) {
      return TransportError("reading the response", ec);
    }
    return Ok();
  }

  template <typename Parser>
  Status Read(Parser& parser) {
    auto ec = RunOp(ioc_, [&](auto handler) {
      http::async_read(stream_, buffer_, parser, std::move(handler));
    });
    if (ec) {
      return TransportError("reading the response", ec);
    }
    return Ok();
  }

  // Reads what is available of the body into the parser's buffer_body.
  Status ReadSome(http::response_parser<http::buffer_body>& parser) {
    auto ec = RunOp(ioc_, [&](auto handler) {
      http::async_read_some(stream_, buffer_, parser, std::move(handler));
    });
    if (ec == http::error::need_buffer) {
      ec = {};
    }
    if (ec) {
      return TransportError("reading the response", ec);
    }
    return Ok();
  }

 private:
  Error TransportErrorValue(std::string_view doing, beast::error_code ec) {
    if (ec == beast::error::timeout) {
      return Error{ErrorCode::kDeadlineExceeded,
                   fmt::format("{}: timed out {}", url_.ToString(), doing)};
    }
    if (ec.category() == http::make_error_code(http::error::bad_version).category() &&
        ec != http::error::end_of_stream && ec != http::error::partial_message) {
      return Error{ErrorCode::kUnavailable,
                   fmt::format("{} did not answer with valid HTTP ({}) — is it an Airlock server?",
                               url_.ToString(), ec.message())};
    }
    return Error{ErrorCode::kUnavailable, fmt::format("connection to {} lost while {}: {}",
                                                      url_.ToString(), doing, ec.message())};
  }
  std::unexpected<Error> TransportError(std::string_view doing, beast::error_code ec) {
    return std::unexpected(TransportErrorValue(doing, ec));
  }

  const Url& url_;
  const HttpClientOptions& options_;
  asio::io_context ioc_;
  beast::tcp_stream stream_{ioc_};
  beast::flat_buffer buffer_;
};

template <typename Fields>
void CopyHead(const Fields& fields, int status, HttpResponse* out) {
  out->status = status;
  for (const auto& f : fields) {
    out->headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
    if (f.name() == http::field::content_type) {
      out->content_type = std::string(f.value());
    }
  }
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

http::request<http::string_body> BuildRequest(const Url& url, http::verb verb,
                                              std::string_view path,
                                              const std::optional<Secret>& bearer,
                                              const Headers& headers) {
  http::request<http::string_body> req{verb, url.base_path + std::string(path), 11};
  std::string host = url.host.find(':') != std::string::npos ? "[" + url.host + "]" : url.host;
  req.set(http::field::host, fmt::format("{}:{}", host, url.port));
  req.set(http::field::user_agent, "airlock-cli/" AIRLOCK_VERSION);
  if (bearer) {
    req.set(http::field::authorization, "Bearer " + bearer->Reveal());
  }
  for (const auto& [name, value] : headers) {
    req.set(name, value);
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
    req.set(http::field::content_type, "application/json");
    req.body() = DumpJson(*body);
  }
  req.prepare_payload();

  Clock::time_point deadline = Clock::now() + options_.request_timeout;
  Exchange ex(url_, options_);
  AIRLOCK_TRY(ex.Connect());
  ex.ExpiresAt(deadline);
  AIRLOCK_TRY(ex.Write(req));
  http::response_parser<http::string_body> parser;
  parser.body_limit(kMaxBodyBytes);
  AIRLOCK_TRY(ex.Read(parser));
  HttpResponse out;
  auto& msg = parser.get();
  CopyHead(msg, static_cast<int>(msg.result_int()), &out);
  out.body = std::move(msg.body());
  return out;
}

Result<HttpResponse> HttpClient::StreamBody(
    std::string_view path, const Headers& headers,
    const std::function<bool(std::string_view)>& on_data) const {
  auto req = BuildRequest(url_, http::verb::get, path, bearer_, headers);
  req.prepare_payload();

  Exchange ex(url_, options_);
  AIRLOCK_TRY(ex.Connect());
  ex.ExpiresAfter(options_.request_timeout);
  AIRLOCK_TRY(ex.Write(req));
  http::response_parser<http::buffer_body> parser;
  // Not boost::none: Boost 1.74 compares a Content-Length against an empty optional and
  // refuses every such body.
  parser.body_limit(std::numeric_limits<uint64_t>::max());
  AIRLOCK_TRY(ex.ReadHeader(parser));
  HttpResponse out;
  CopyHead(parser.get(), static_cast<int>(parser.get().result_int()), &out);

  std::array<char, 16 * 1024> buf;
  while (!parser.is_done()) {
    parser.get().body().data = buf.data();
    parser.get().body().size = buf.size();
    ex.ExpiresAfter(out.ok() ? options_.stream_idle_timeout : options_.request_timeout);
    AIRLOCK_TRY(ex.ReadSome(parser));
    size_t n = buf.size() - parser.get().body().size;
    if (n == 0) {
      continue;
    }
    std::string_view piece(buf.data(), n);
    if (!out.ok()) {
      // An error answer: keep it (bounded) for the caller to report.
      if (out.body.size() < kMaxErrorBodyBytes) {
        out.body.append(piece.substr(0, kMaxErrorBodyBytes - out.body.size()));
      }
      continue;
    }
    if (!on_data(piece)) {
      break;
    }
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
