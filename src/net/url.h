#pragma once

// The one parser of the URLs the control plane connects to: LLM base URLs, S3 endpoints, the
// CLI's server address, and the APIs of backends to come. It reads http:// and https:// URLs
// (RFC 3986's shape, without user information) and nothing looser.
//
// Security: user information ("user:password@host") is always refused, so a credential never
// rides in a URL that ends up in a log line or an error message.

#include <cstdint>
#include <expected>
#include <string>
#include <string_view>

#include "common/result.h"

namespace airlock::net {

struct Url {
  std::string scheme;         // "http" or "https", lower case
  std::string host;           // as written; an IPv6 literal without its brackets
  bool ipv6 = false;          // the host was a bracketed IPv6 literal
  uint16_t port = 0;          // the port given, or the scheme's default (80 or 443)
  bool port_given = false;    // the URL named a port (even the default one)
  std::string path;           // "" or from the first '/', as written (not decoded)
  std::string query;          // after '?', without it; "" when there is none
  std::string fragment;       // after '#', without it
  bool has_query = false;     // a '?' was present (even with nothing after it)
  bool has_fragment = false;  // a '#' was present

  bool tls() const { return scheme == "https"; }
  // The host as it goes into a Host header or a message: brackets around an IPv6 literal.
  std::string HostForHeader() const;
  // host[:port], the port left out when it is the scheme's default: a Host header's value.
  std::string Authority() const;
};

// What is wrong with a text that is not such a URL. The callers that predate this parser
// keep their own messages (their tests and their users know them); they switch on this.
enum class UrlProblem {
  kNoScheme,      // no "scheme://" at the start
  kScheme,        // a scheme other than http and https
  kUserInfo,      // "user@host"
  kNoHost,        // nothing where the host should be
  kIpv6Unclosed,  // "[" without "]"
  kAfterIpv6,     // something other than ":port" after "]"
  kBadHost,       // a character no host name holds, or a bracketed text that is not IPv6
  kEmptyPort,     // "host:" with nothing after the colon
  kBadPort,       // not a number in 1..65535
  kBadPath,       // a space or a control character after the host
};

// A sentence for `problem`, for callers without wording of their own.
std::string_view DescribeUrlProblem(UrlProblem problem);

// Splits `text` into its parts and checks each. The scheme is matched without regard to
// case; a host name may hold A-Z a-z 0-9 '.', '-' and '_' ('_' is not DNS, but container
// network names use it); an IPv6 literal must parse as one.
std::expected<Url, UrlProblem> SplitUrl(std::string_view text);

// What a caller accepts beyond scheme, host and port.
struct UrlPolicy {
  bool allow_http = true;
  bool allow_https = true;
  bool allow_path = true;
  bool allow_query = false;  // a query or a fragment
};

// SplitUrl, then `policy`. Errors: kInvalidArgument, with a message that quotes `text`
// (callers must not pass a URL that may carry a secret in its query).
Result<Url> ParseUrl(std::string_view text, const UrlPolicy& policy = {});

}  // namespace airlock::net
