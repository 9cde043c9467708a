#pragma once

// Percent-encoding (RFC 3986), the one implementation the operator CLI, the signed file URLs,
// SigV4 and the HTTP server share.

#include <optional>
#include <string>
#include <string_view>

namespace airlock {

// Every byte but the unreserved ones (A-Z a-z 0-9 - _ . ~) as %XX with upper-case hex; '/'
// too unless `keep_slash`. This is also AWS SigV4's UriEncode.
std::string PercentEncode(std::string_view s, bool keep_slash = false);

// Decodes %XX. A path segment keeps '+' and refuses a malformed escape (nullopt); a query
// component (`query` = true) reads '+' as a space and keeps a malformed escape as it is.
std::optional<std::string> PercentDecode(std::string_view s, bool query);

}  // namespace airlock
