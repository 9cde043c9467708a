#include "egress/policy.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>

#include <fmt/format.h>

namespace airlock::egress {
namespace {

constexpr std::array<uint16_t, 2> kWebPorts = {80, 443};

Result<uint16_t> ParsePort(std::string_view text, std::string_view rule) {
  unsigned v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || v < 1 || v > 65535) {
    return Errorf(ErrorCode::kInvalidArgument, "\"{}\": the port must be 1 to 65535", rule);
  }
  return static_cast<uint16_t>(v);
}

std::optional<asio::ip::address> ParseAddress(std::string_view text) {
  if (text.size() >= 2 && text.front() == '[' && text.back() == ']')
    text = text.substr(1, text.size() - 2);
  // Asio reads up to a NUL and takes anything after '%' as a zone: only what the resolver
  // would read the same way is an address.
  if (text.empty() || text.size() > 45 || !std::all_of(text.begin(), text.end(), [](char c) {
        return std::isxdigit(static_cast<unsigned char>(c)) || c == ':' || c == '.';
      }))
    return std::nullopt;
  boost::system::error_code ec;
  auto a = asio::ip::make_address(std::string(text), ec);
  if (ec) return std::nullopt;
  return a;
}

// The IPv4 address an IPv6 one carries and reaches: mapped ::ffff:0:0/96, compatible ::/96
// (deprecated), NAT64 64:ff9b::/96, 6to4 2002::/16.
std::optional<asio::ip::address_v4> EmbeddedV4(const asio::ip::address_v6& a) {
  if (a.is_unspecified() || a.is_loopback()) return std::nullopt;
  const auto b = a.to_bytes();
  auto zero = [&b](size_t from, size_t to) {
    return std::all_of(b.begin() + from, b.begin() + to, [](uint8_t x) { return x == 0; });
  };
  auto at = [&b](size_t i) {
    return asio::ip::address_v4(
        asio::ip::address_v4::bytes_type{b[i], b[i + 1], b[i + 2], b[i + 3]});
  };
  if (zero(0, 10) && b[10] == 0xff && b[11] == 0xff) return at(12);
  if (zero(0, 12)) return at(12);
  if (b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && zero(4, 12)) return at(12);
  if (b[0] == 0x20 && b[1] == 0x02) return at(2);
  return std::nullopt;
}

// What an address reaches, for comparing it with the host's own: the IPv4 address it carries,
// if any.
asio::ip::address Reached(const asio::ip::address& a) {
  if (a.is_v6()) {
    if (auto v4 = EmbeddedV4(a.to_v6())) return *v4;
  }
  return a;
}

// Printable ASCII of what a client sent, for a refusal's text (an event, a log line).
std::string Printable(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, 256)) out += c > 0x20 && c < 0x7f ? c : '?';
  return out;
}

// An IPv4 address written as IPv6 (::ffff:a.b.c.d) compares as the IPv4 address.
asio::ip::address Canonical(const asio::ip::address& a) {
  if (a.is_v6() && a.to_v6().is_v4_mapped())
    return asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
  return a;
}

bool Under(std::string_view name, std::string_view domain) {
  return name.size() > domain.size() + 1 && name.ends_with(domain) &&
         name[name.size() - domain.size() - 1] == '.';
}

bool NameMatches(const HostRule& r, std::string_view host) {
  if (!r.subdomains) return host == r.name;
  return r.name.empty() || Under(host, r.name);
}

bool HasPort(const HostRule& r, uint16_t port) {
  return std::find(r.ports.begin(), r.ports.end(), port) != r.ports.end();
}

// Whether every name `inner` matches, `outer` matches too.
bool Covers(const HostRule& outer, const HostRule& inner) {
  if (!outer.subdomains) return !inner.subdomains && inner.name == outer.name;
  if (outer.name.empty()) return true;
  if (!inner.subdomains) return Under(inner.name, outer.name);
  return !inner.name.empty() && (inner.name == outer.name || Under(inner.name, outer.name));
}

bool InV4(uint32_t a, uint32_t net, int bits) {
  const uint32_t mask = bits == 0 ? 0 : ~uint32_t{0} << (32 - bits);
  return (a & mask) == net;
}

constexpr uint32_t V4(unsigned a, unsigned b, unsigned c, unsigned d) {
  return (a << 24) | (b << 16) | (c << 8) | d;
}

AddressClass ClassifyV4(uint32_t a) {
  if (a == V4(169, 254, 169, 254) || a == V4(169, 254, 170, 2) || a == V4(100, 100, 100, 200) ||
      a == V4(168, 63, 129, 16))
    return AddressClass::kMetadata;
  if (InV4(a, V4(0, 0, 0, 0), 8)) return AddressClass::kUnspecified;
  if (InV4(a, V4(127, 0, 0, 0), 8)) return AddressClass::kLoopback;
  if (InV4(a, V4(10, 0, 0, 0), 8) || InV4(a, V4(172, 16, 0, 0), 12) ||
      InV4(a, V4(192, 168, 0, 0), 16) || InV4(a, V4(100, 64, 0, 0), 10))
    return AddressClass::kPrivate;
  if (InV4(a, V4(169, 254, 0, 0), 16)) return AddressClass::kLinkLocal;
  if (InV4(a, V4(224, 0, 0, 0), 4)) return AddressClass::kMulticast;
  if (InV4(a, V4(240, 0, 0, 0), 4) || InV4(a, V4(192, 0, 0, 0), 24) ||
      InV4(a, V4(192, 0, 2, 0), 24) || InV4(a, V4(198, 51, 100, 0), 24) ||
      InV4(a, V4(203, 0, 113, 0), 24) || InV4(a, V4(198, 18, 0, 0), 15) ||
      InV4(a, V4(192, 88, 99, 0), 24))
    return AddressClass::kReserved;
  return AddressClass::kPublic;
}

AddressClass ClassifyV6(const asio::ip::address_v6& a) {
  if (a.is_unspecified()) return AddressClass::kUnspecified;
  if (a.is_loopback()) return AddressClass::kLoopback;
  const auto b = a.to_bytes();
  auto zero = [&b](size_t from, size_t to) {
    return std::all_of(b.begin() + from, b.begin() + to, [](uint8_t x) { return x == 0; });
  };
  // IPv6 forms that carry an IPv4 address reach that address: judge them by it.
  if (auto v4 = EmbeddedV4(a)) return ClassifyV4(v4->to_uint());
  if (b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && b[4] == 0x00 && b[5] == 0x01)
    return AddressClass::kPrivate;  // local-use NAT64, 64:ff9b:1::/48
  static const asio::ip::address_v6 aws_metadata = asio::ip::make_address_v6("fd00:ec2::254");
  if (a == aws_metadata) return AddressClass::kMetadata;
  if ((b[0] & 0xfe) == 0xfc) return AddressClass::kPrivate;                    // fc00::/7
  if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) return AddressClass::kLinkLocal;  // fe80::/10
  if (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0) return AddressClass::kPrivate;    // fec0::/10
  if (b[0] == 0xff) return AddressClass::kMulticast;
  // Teredo (2001::/32) tunnels to an IPv4 address it hides; documentation, benchmarking,
  // discard; and anything outside the global unicast 2000::/3.
  if ((b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x00 && b[3] == 0x00) ||
      (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8) ||
      (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x00 && b[3] == 0x02 && b[4] == 0 && b[5] == 0) ||
      (b[0] == 0x3f && b[1] == 0xff && (b[2] & 0xf0) == 0x00) ||
      (b[0] == 0x01 && b[1] == 0x00 && zero(2, 8)) || (b[0] & 0xe0) != 0x20)
    return AddressClass::kReserved;
  return AddressClass::kPublic;
}

std::string Show(const asio::ip::address& a, uint16_t port) {
  return a.is_v6() ? fmt::format("[{}]:{}", a.to_string(), port)
                   : fmt::format("{}:{}", a.to_string(), port);
}

}  // namespace

std::optional<asio::ip::address> ParseIpLiteral(std::string_view host) {
  return ParseAddress(host);
}

Result<std::string> NormalizeHostName(std::string_view host) {
  if (!host.empty() && host.back() == '.') host.remove_suffix(1);
  if (host.empty() || host.size() > 253) {
    return Errorf(ErrorCode::kInvalidArgument, "\"{}\" is not a host name", Printable(host));
  }
  if (ParseAddress(host)) {
    return Errorf(ErrorCode::kInvalidArgument, "\"{}\" is an address, not a host name",
                  Printable(host));
  }
  std::string out;
  out.reserve(host.size());
  std::string_view last;
  for (size_t start = 0; start <= host.size();) {
    size_t dot = host.find('.', start);
    if (dot == std::string_view::npos) dot = host.size();
    std::string_view label = host.substr(start, dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') {
      return Errorf(ErrorCode::kInvalidArgument, "\"{}\" is not a host name", Printable(host));
    }
    for (char ch : label) {
      const char c = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_')) {
        return Errorf(ErrorCode::kInvalidArgument, "\"{}\" is not a host name", Printable(host));
      }
      out += c;
    }
    if (dot < host.size()) out += '.';
    last = label;
    start = dot + 1;
  }
  // A resolver reads "2130706433", "0x7f000001" or "127.1" as an IPv4 address: a name's last
  // label is never all digits nor hexadecimal with 0x.
  auto digits = [](std::string_view s, bool hex) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [hex](char c) {
      return std::isdigit(static_cast<unsigned char>(c)) ||
             (hex && std::isxdigit(static_cast<unsigned char>(c)));
    });
  };
  if (digits(last, false) ||
      (last.size() >= 2 && last[0] == '0' && (last[1] == 'x' || last[1] == 'X') &&
       digits(last.substr(2), true)) ||
      (last.size() == 2 && last[0] == '0' && (last[1] == 'x' || last[1] == 'X'))) {
    return Errorf(ErrorCode::kInvalidArgument, "\"{}\" reads as an address, not a host name",
                  Printable(host));
  }
  return out;
}

Result<HostRule> ParseHostRule(std::string_view text) {
  HostRule r;
  r.text = Printable(text);
  std::string_view name = text;
  if (ParseAddress(text) || (text.starts_with('[') && text.find("]:") != std::string_view::npos)) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "\"{}\" is an address: write it with its port in allow_addresses", r.text);
  }
  if (size_t colon = text.rfind(':'); colon != std::string_view::npos) {
    name = text.substr(0, colon);
    if (ParseAddress(name)) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "\"{}\" is an address: write it in allow_addresses", r.text);
    }
    AIRLOCK_ASSIGN_OR_RETURN(uint16_t port, ParsePort(text.substr(colon + 1), r.text));
    r.ports = {port};
  } else {
    r.ports.assign(kWebPorts.begin(), kWebPorts.end());
  }
  if (name == "*") {
    r.subdomains = true;
    return r;
  }
  if (name.starts_with("*.")) {
    r.subdomains = true;
    name.remove_prefix(2);
  }
  if (name.find('*') != std::string_view::npos) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "\"{}\": a wildcard stands only for whole leading labels (\"*.example.com\")",
                  r.text);
  }
  auto normalized = NormalizeHostName(name);
  if (!normalized) {
    return Errorf(ErrorCode::kInvalidArgument, "\"{}\": {}", r.text, normalized.error().message);
  }
  r.name = std::move(*normalized);
  return r;
}

Result<AddressRule> ParseAddressRule(std::string_view text) {
  AddressRule r;
  r.text = Printable(text);
  const size_t colon = text.rfind(':');
  const bool bracketed = text.starts_with('[');
  if (colon == std::string_view::npos || (bracketed && (colon == 0 || text[colon - 1] != ']'))) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "\"{}\": an allowed address is ADDRESS:PORT (\"10.0.0.5:5432\", \"[::1]:80\")",
                  r.text);
  }
  std::string_view addr = text.substr(0, colon);
  if (!bracketed && addr.find(':') != std::string_view::npos) {
    return Errorf(ErrorCode::kInvalidArgument, "\"{}\": write an IPv6 address in brackets", r.text);
  }
  auto parsed = ParseAddress(addr);
  if (!parsed) return Errorf(ErrorCode::kInvalidArgument, "\"{}\" is not an address", r.text);
  AIRLOCK_ASSIGN_OR_RETURN(r.port, ParsePort(text.substr(colon + 1), r.text));
  r.address = Canonical(*parsed);
  if (r.address.is_unspecified() || Classify(r.address) == AddressClass::kMulticast) {
    return Errorf(ErrorCode::kInvalidArgument, "\"{}\" is not an address one connects to", r.text);
  }
  return r;
}

bool Policy::AllowsName(std::string_view host, uint16_t port) const {
  return std::any_of(hosts.begin(), hosts.end(),
                     [&](const HostRule& r) { return HasPort(r, port) && NameMatches(r, host); });
}

bool Policy::AllowsAddress(const asio::ip::address& address, uint16_t port) const {
  const asio::ip::address a = Canonical(address);
  return std::any_of(addresses.begin(), addresses.end(),
                     [&](const AddressRule& r) { return r.port == port && r.address == a; });
}

Result<Policy> ParsePolicy(std::span<const std::string> allow,
                           std::span<const std::string> allow_addresses, std::string_view where) {
  Policy p;
  for (const std::string& text : allow) {
    auto r = ParseHostRule(text);
    if (!r) return Errorf(ErrorCode::kInvalidArgument, "{}.allow: {}", where, r.error().message);
    p.hosts.push_back(std::move(*r));
  }
  for (const std::string& text : allow_addresses) {
    auto r = ParseAddressRule(text);
    if (!r) {
      return Errorf(ErrorCode::kInvalidArgument, "{}.allow_addresses: {}", where,
                    r.error().message);
    }
    p.addresses.push_back(std::move(*r));
  }
  return p;
}

Status CheckNarrows(const Policy& inner, const Policy& outer) {
  for (const HostRule& r : inner.hosts) {
    for (uint16_t port : r.ports) {
      const bool covered =
          std::any_of(outer.hosts.begin(), outer.hosts.end(),
                      [&](const HostRule& o) { return HasPort(o, port) && Covers(o, r); });
      if (!covered) {
        return Errorf(ErrorCode::kInvalidArgument,
                      "egress rule \"{}\" reaches further than the operator allows (port {})",
                      r.text, port);
      }
    }
  }
  for (const AddressRule& r : inner.addresses) {
    if (!outer.AllowsAddress(r.address, r.port)) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "egress address \"{}\" is not one the operator allows", r.text);
    }
  }
  return Ok();
}

std::string_view AddressClassName(AddressClass c) {
  switch (c) {
    case AddressClass::kPublic:
      return "public";
    case AddressClass::kUnspecified:
      return "unspecified";
    case AddressClass::kLoopback:
      return "loopback";
    case AddressClass::kPrivate:
      return "private";
    case AddressClass::kLinkLocal:
      return "link-local";
    case AddressClass::kMetadata:
      return "metadata";
    case AddressClass::kMulticast:
      return "multicast";
    case AddressClass::kReserved:
      return "reserved";
  }
  return "reserved";
}

AddressClass Classify(const asio::ip::address& a) {
  if (a.is_v4()) return ClassifyV4(a.to_v4().to_uint());
  return ClassifyV6(a.to_v6());
}

Decision CheckRequest(const Policy& policy, std::string_view host, uint16_t port) {
  using V = Decision::Verdict;
  if (auto literal = ParseAddress(host)) {
    if (policy.AllowsAddress(*literal, port)) return {V::kAllowed, ""};
    return {V::kDeniedByPolicy,
            fmt::format("{} is not allowed: an address is reached only when the operator allows "
                        "exactly it (egress.allow_addresses)",
                        Show(Canonical(*literal), port))};
  }
  auto name = NormalizeHostName(host);
  if (!name) return {V::kDeniedByPolicy, name.error().message};
  if (!policy.AllowsName(*name, port)) {
    return {V::kDeniedByPolicy,
            fmt::format("{}:{} is not in this session's egress policy", *name, port)};
  }
  return {V::kAllowed, ""};
}

Decision Decide(const Policy& policy, std::string_view host, uint16_t port,
                const asio::ip::address& resolved, const OwnAddresses& own) {
  using V = Decision::Verdict;
  Decision asked = CheckRequest(policy, host, port);
  if (!asked.allowed()) return asked;
  const asio::ip::address a = Canonical(resolved);
  // The operator's exact address is the one thing that may lead somewhere not public.
  if (policy.AllowsAddress(a, port)) return asked;
  const bool literal = ParseAddress(host).has_value();
  const std::string where = literal ? Show(a, port) : fmt::format("{} ({})", host, Show(a, port));
  const asio::ip::address reached = Reached(a);
  for (const auto& e : own.listeners) {
    if (Reached(e.address()) == reached && e.port() == port) {
      return {V::kRefusedAddress, fmt::format("{} is the control plane's own listener", where)};
    }
  }
  for (const auto& h : own.host) {
    if (Reached(h) == reached) {
      return {V::kRefusedAddress, fmt::format("{} is the gateway's own host", where)};
    }
  }
  const AddressClass c = Classify(a);
  if (c != AddressClass::kPublic) {
    return {V::kRefusedAddress,
            fmt::format("{} is a {} address, which the gateway does not connect to", where,
                        AddressClassName(c))};
  }
  return {V::kAllowed, ""};
}

}  // namespace airlock::egress
