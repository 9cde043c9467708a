// The egress policy (egress/policy.h): the operator's and a session's rules, and the host a
// sandbox asks its gateway for. The input is parts split at "\n--\n":
//   0  name rules, one per line        1  address rules, one per line
//   2  the requested host              3  its port (decimal)
//   4  the address the name resolved to
// Oracles: a rule parsed from its own text again is the same rule; a normalized name
// normalizes to itself and is never an address; a policy narrows itself; an allowed
// connection goes to an address the operator listed or to a public one.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "egress/policy.h"
#include "fuzz/fuzz_util.h"

namespace {

using namespace airlock::egress;

std::vector<std::string> Lines(std::string_view text) {
  std::vector<std::string> out;
  while (!text.empty() && out.size() < 16) {
    size_t nl = text.find('\n');
    out.emplace_back(text.substr(0, nl));
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto parts = airlock::fuzz::SplitParts(airlock::fuzz::AsView(data, size), 5);
  parts.resize(5);
  Policy policy;
  for (const std::string& line : Lines(parts[0])) {
    auto r = ParseHostRule(line);
    if (!r) continue;
    auto again = ParseHostRule(r->text);
    if (!again || again->name != r->name || again->subdomains != r->subdomains ||
        again->ports != r->ports)
      std::abort();
    policy.hosts.push_back(std::move(*r));
  }
  for (const std::string& line : Lines(parts[1])) {
    if (auto r = ParseAddressRule(line)) policy.addresses.push_back(std::move(*r));
  }
  if (!CheckNarrows(policy, policy)) std::abort();

  const std::string host(parts[2]);
  if (auto name = NormalizeHostName(host)) {
    auto twice = NormalizeHostName(*name);
    if (!twice || *twice != *name) std::abort();
    boost::system::error_code ec;
    boost::asio::ip::make_address(*name, ec);
    if (!ec) std::abort();
  }
  const uint16_t port =
      static_cast<uint16_t>(std::strtoul(std::string(parts[3]).c_str(), nullptr, 10));
  Decision asked = CheckRequest(policy, host, port);
  boost::system::error_code ec;
  auto resolved = boost::asio::ip::make_address(std::string(parts[4]), ec);
  if (ec) return 0;
  const OwnAddresses own{{}, {{resolved, 1}}};
  Decision d = Decide(policy, host, port, resolved, own);
  if (d.allowed()) {
    if (!asked.allowed()) std::abort();
    if (!policy.AllowsAddress(resolved, port) && Classify(resolved) != AddressClass::kPublic)
      std::abort();
    if (port == 1 && !policy.AllowsAddress(resolved, port)) std::abort();  // its own listener
  }
  return 0;
}
