#include "net/url.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <charconv>

#include <fmt/format.h>

namespace airlock::net {

namespace {

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool HostNameChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
}

bool Ipv6Literal(std::string_view host) {
  in6_addr addr{};
  std::string text(host);
  return !host.empty() && ::inet_pton(AF_INET6, text.c_str(), &addr) == 1;
}

// Spaces and control characters would let a URL split the request line it is sent in.
bool CleanTail(std::string_view s) {
  return std::none_of(s.begin(), s.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u <= 0x20 || u == 0x7f;
  });
}

uint16_t DefaultPort(std::string_view scheme) { return scheme == "https" ? 443 : 80; }

}  // namespace

std::string Url::HostForHeader() const { return ipv6 ? "[" + host + "]" : host; }

std::string Url::Authority() const {
  if (port == DefaultPort(scheme)) return HostForHeader();
  return fmt::format("{}:{}", HostForHeader(), port);
}

std::string_view DescribeUrlProblem(UrlProblem problem) {
  switch (problem) {
    case UrlProblem::kNoScheme:
      return "the URL must start with http:// or https://";
    case UrlProblem::kScheme:
      return "the URL's scheme must be http or https";
    case UrlProblem::kUserInfo:
      return "the URL must not carry user information";
    case UrlProblem::kNoHost:
      return "the URL has no host";
    case UrlProblem::kIpv6Unclosed:
      return "the URL has an unclosed IPv6 literal";
    case UrlProblem::kAfterIpv6:
      return "the URL has text after its IPv6 literal";
    case UrlProblem::kBadHost:
      return "the URL's host is not a valid host name or IP address";
    case UrlProblem::kEmptyPort:
      return "the URL's port is empty";
    case UrlProblem::kBadPort:
      return "the URL's port must be a number in 1..65535";
    case UrlProblem::kBadPath:
      return "the URL holds a space or a control character";
  }
  return "the URL is malformed";
}

std::expected<Url, UrlProblem> SplitUrl(std::string_view text) {
  size_t sep = text.find("://");
  if (sep == std::string_view::npos) return std::unexpected(UrlProblem::kNoScheme);
  Url url;
  url.scheme = Lower(text.substr(0, sep));
  if (url.scheme != "http" && url.scheme != "https") return std::unexpected(UrlProblem::kScheme);

  std::string_view rest = text.substr(sep + 3);
  size_t authority_end = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, authority_end);
  std::string_view tail =
      authority_end == std::string_view::npos ? std::string_view() : rest.substr(authority_end);
  if (authority.find('@') != std::string_view::npos) return std::unexpected(UrlProblem::kUserInfo);
  if (authority.empty()) return std::unexpected(UrlProblem::kNoHost);

  std::string_view host;
  std::string_view port;
  bool colon = false;
  if (authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return std::unexpected(UrlProblem::kIpv6Unclosed);
    host = authority.substr(1, close - 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return std::unexpected(UrlProblem::kAfterIpv6);
      colon = true;
      port = after.substr(1);
    }
    if (!Ipv6Literal(host)) return std::unexpected(UrlProblem::kBadHost);
    url.ipv6 = true;
  } else {
    size_t c = authority.rfind(':');
    host = authority.substr(0, c);
    if (c != std::string_view::npos) {
      colon = true;
      port = authority.substr(c + 1);
    }
    if (host.empty()) return std::unexpected(UrlProblem::kNoHost);
    if (!std::all_of(host.begin(), host.end(), HostNameChar)) {
      return std::unexpected(UrlProblem::kBadHost);
    }
  }
  url.host = std::string(host);

  url.port = DefaultPort(url.scheme);
  if (colon) {
    if (port.empty()) return std::unexpected(UrlProblem::kEmptyPort);
    unsigned value = 0;
    auto [end, err] = std::from_chars(port.data(), port.data() + port.size(), value);
    bool digits =
        std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (!digits || port.size() > 5 || err != std::errc() || end != port.data() + port.size() ||
        value == 0 || value > 65535) {
      return std::unexpected(UrlProblem::kBadPort);
    }
    url.port = static_cast<uint16_t>(value);
    url.port_given = true;
  }

  if (!CleanTail(tail)) return std::unexpected(UrlProblem::kBadPath);
  size_t hash = tail.find('#');
  if (hash != std::string_view::npos) {
    url.has_fragment = true;
    url.fragment = std::string(tail.substr(hash + 1));
    tail = tail.substr(0, hash);
  }
  size_t question = tail.find('?');
  if (question != std::string_view::npos) {
    url.has_query = true;
    url.query = std::string(tail.substr(question + 1));
    tail = tail.substr(0, question);
  }
  url.path = std::string(tail);
  return url;
}

Result<Url> ParseUrl(std::string_view text, const UrlPolicy& policy) {
  auto url = SplitUrl(text);
  if (!url) {
    return Errorf(ErrorCode::kInvalidArgument, "\"{}\": {}", text, DescribeUrlProblem(url.error()));
  }
  if ((url->scheme == "http" && !policy.allow_http) ||
      (url->scheme == "https" && !policy.allow_https)) {
    return Errorf(ErrorCode::kInvalidArgument, "\"{}\": the scheme {} is not accepted here", text,
                  url->scheme);
  }
  if (!policy.allow_path && !url->path.empty() && url->path != "/") {
    return Errorf(ErrorCode::kInvalidArgument, "\"{}\": the URL must not have a path", text);
  }
  if (!policy.allow_query && (url->has_query || url->has_fragment)) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "\"{}\": the URL must not have a query or a fragment", text);
  }
  return std::move(*url);
}

}  // namespace airlock::net
