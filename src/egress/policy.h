#pragma once

// What a sandbox may reach through the control plane's egress gateway (issue 15), as values:
// the rules an operator writes, the policies made of them, whether one policy only narrows
// another, and the decision for one connection once the gateway has resolved its name.
//
// Security note: everything here is default deny. A name is reached only when a rule allows
// it and it resolves to a public address; an address that is not public (loopback, private,
// link-local, metadata, multicast, reserved, and the same addresses embedded in IPv6 forms)
// or the gateway's own host and listeners is reached only when the operator allowed that
// exact address and port. An IP literal is never matched by a name rule, and is digits,
// hexadecimal, ':' and '.' only (no zone index, no NUL). A refusal's text holds only
// printable ASCII of what the client sent.

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/asio.h"
#include "common/result.h"

namespace airlock::egress {

// A name pattern and the ports it allows:
//   "example.com"      that name
//   "*.example.com"    any name under example.com (not example.com itself)
//   "*"                any name
// with ":PORT" for one port; without it, the web's ports 80 and 443.
struct HostRule {
  std::string text;         // as written, for messages
  std::string name;         // lower case, no trailing dot; "" for "*"
  bool subdomains = false;  // "*.name" (or "*" when name is empty)
  std::vector<uint16_t> ports;
};

// An exact address and port ("127.0.0.1:8443", "[::1]:80"). It lets the gateway connect to
// that address even where it would refuse it (a private service the operator means to offer).
struct AddressRule {
  std::string text;
  asio::ip::address address;
  uint16_t port = 0;
};

Result<HostRule> ParseHostRule(std::string_view text);
Result<AddressRule> ParseAddressRule(std::string_view text);

// An IP literal is digits, hexadecimal, ':', '.' and brackets only: no zone index ("%eth0"),
// which the resolver and the parser would read differently, and no NUL.
// A name as the gateway compares it: lower case, one trailing dot dropped, letters, digits,
// '-' and '_' in labels of 1 to 63 characters, at most 253 in all. An IP literal or anything
// else is an error.
Result<std::string> NormalizeHostName(std::string_view host);

// The IP address `host` is written as ("192.0.2.1", "::1", "[::1]"), or none for a name. Only
// hex digits, ':' and '.' are read: no zone index, nothing after a NUL.
std::optional<asio::ip::address> ParseIpLiteral(std::string_view host);

struct Policy {
  std::vector<HostRule> hosts;
  std::vector<AddressRule> addresses;

  bool empty() const { return hosts.empty() && addresses.empty(); }
  // Whether a name rule allows `host` (normalized) on `port`.
  bool AllowsName(std::string_view host, uint16_t port) const;
  // Whether an address rule names exactly this address and port.
  bool AllowsAddress(const asio::ip::address& address, uint16_t port) const;
};

// A policy from the two lists an operator or a session writes (`allow`, `allow_addresses`);
// the first malformed entry is the error, named by `where` (e.g. "egress.allow").
Result<Policy> ParsePolicy(std::span<const std::string> allow,
                           std::span<const std::string> allow_addresses,
                           std::string_view where = "egress");

// Ok when everything `inner` allows, `outer` allows too; else an error naming the first rule
// of `inner` that reaches further (a session may narrow the operator's policy, never widen it).
Status CheckNarrows(const Policy& inner, const Policy& outer);

// What kind of address an address is, for the gateway's refusals.
enum class AddressClass {
  kPublic,
  kUnspecified,  // 0.0.0.0/8, ::
  kLoopback,     // 127.0.0.0/8, ::1
  kPrivate,      // RFC 1918, 100.64.0.0/10, fc00::/7, fec0::/10, 64:ff9b:1::/48
  kLinkLocal,    // 169.254.0.0/16, fe80::/10
  kMetadata,     // cloud metadata: 169.254.169.254, 169.254.170.2, 100.100.100.200,
                 // 168.63.129.16 (Azure's WireServer), fd00:ec2::254
  kMulticast,    // 224.0.0.0/4, ff00::/8
  kReserved,     // 240.0.0.0/4, broadcast, documentation, benchmarking, IETF, Teredo, discard
};
std::string_view AddressClassName(AddressClass c);

// The class of `a`. An IPv6 address that carries an IPv4 one (mapped ::ffff:0:0/96,
// compatible ::/96, NAT64 64:ff9b::/96, 6to4 2002::/16) has that address's class.
AddressClass Classify(const asio::ip::address& a);

// What of the gateway's own host a connection must not reach: every address of the host
// itself (on any port: a service bound to 0.0.0.0 answers there, past any firewall rule tied
// to an outside interface) and the control plane's listeners.
struct OwnAddresses {
  std::vector<asio::ip::address> host;  // from getifaddrs, public ones included
  std::vector<asio::ip::tcp::endpoint> listeners;
};

// The gateway's answer for one connection.
struct Decision {
  enum class Verdict { kAllowed, kDeniedByPolicy, kRefusedAddress };
  Verdict verdict = Verdict::kDeniedByPolicy;
  std::string reason;  // for the client's 403 and the event; never holds a secret
  bool allowed() const { return verdict == Verdict::kAllowed; }
};

// Whether a connection asked for as `host`:`port` may go to `resolved`, the address the
// gateway itself resolved `host` to (or `host` parsed, when it is an IP literal). The gateway
// resolves the normalized name with a trailing dot ("api.github.com."), so that the host's
// resolver search domains never turn an allowed name into another one.
Decision Decide(const Policy& policy, std::string_view host, uint16_t port,
                const asio::ip::address& resolved, const OwnAddresses& own);

// Whether the policy could allow `host`:`port` at all, before resolving it: a name rule for a
// name, an address rule for an IP literal. The gateway asks this first, so that a denied name
// costs no DNS query.
Decision CheckRequest(const Policy& policy, std::string_view host, uint16_t port);

}  // namespace airlock::egress
