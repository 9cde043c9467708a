#include "egress/policy.h"

#include <gtest/gtest.h>

namespace airlock::egress {
namespace {

using asio::ip::make_address;

Policy Make(std::vector<std::string> allow, std::vector<std::string> addresses = {}) {
  auto p = ParsePolicy(allow, addresses);
  EXPECT_TRUE(p.has_value()) << (p ? "" : p.error().message);
  return p ? *p : Policy{};
}

TEST(EgressHostRule, NamesWildcardsAndPortsParse) {
  auto exact = ParseHostRule("PyPI.org.");
  ASSERT_TRUE(exact) << exact.error().message;
  EXPECT_EQ(exact->name, "pypi.org");
  EXPECT_FALSE(exact->subdomains);
  EXPECT_EQ(exact->ports, (std::vector<uint16_t>{80, 443}));  // the web's, unless named

  auto wild = ParseHostRule("*.github.com:22");
  ASSERT_TRUE(wild);
  EXPECT_EQ(wild->name, "github.com");
  EXPECT_TRUE(wild->subdomains);
  EXPECT_EQ(wild->ports, (std::vector<uint16_t>{22}));

  auto any = ParseHostRule("*");
  ASSERT_TRUE(any);
  EXPECT_TRUE(any->subdomains);
  EXPECT_EQ(any->name, "");

  for (const char* bad : {"",
                          "*.",
                          "a*.example.com",
                          "*.*.example.com",
                          "ex*mple.com",
                          "example.com:0",
                          "example.com:65536",
                          "example.com:",
                          ":443",
                          "example.com:http",
                          "a..b",
                          "-a.com",
                          "a-.com",
                          "exa mple.com",
                          "caf\xc3\xa9.com",
                          "10.0.0.1",
                          "10.0.0.1:443",
                          "[::1]:443",
                          "::1",
                          "2130706433",
                          "0x7f000001",
                          "127.1",
                          "a.b.123"}) {
    auto r = ParseHostRule(bad);
    EXPECT_FALSE(r) << "\"" << bad << "\" parsed";
  }
  // An address in the name list says where it belongs.
  auto literal = ParseHostRule("10.0.0.1:5432");
  ASSERT_FALSE(literal);
  EXPECT_NE(literal.error().message.find("allow_addresses"), std::string::npos);
}

TEST(EgressHostRule, ANameIsNormalizedAndWhatAResolverReadsAsAnAddressIsRefused) {
  EXPECT_EQ(NormalizeHostName("API.GitHub.COM.").value_or(""), "api.github.com");
  EXPECT_EQ(NormalizeHostName("_dmarc.example.com").value_or(""), "_dmarc.example.com");
  EXPECT_EQ(NormalizeHostName("1password.com").value_or(""), "1password.com");
  EXPECT_TRUE(NormalizeHostName(std::string(63, 'a') + ".com"));
  EXPECT_FALSE(NormalizeHostName(std::string(64, 'a') + ".com"));
  std::string long_name;
  for (int i = 0; i < 64; ++i) long_name += "abc.";
  long_name += "com";  // 259 characters
  EXPECT_FALSE(NormalizeHostName(long_name));
  for (const char* numeric : {"2130706433", "0x7f000001", "0X7F.1", "127.1", "1.2.3.4", "0x",
                              "::ffff:127.0.0.1", "[::1]"}) {
    EXPECT_FALSE(NormalizeHostName(numeric)) << numeric;
  }
}

TEST(EgressPolicy, AWildcardCoversNamesUnderItOnlyAndOnlyOnItsPorts) {
  Policy p = Make({"*.github.com", "pypi.org:443"});
  EXPECT_TRUE(p.AllowsName("api.github.com", 443));
  EXPECT_TRUE(p.AllowsName("a.b.github.com", 80));
  EXPECT_FALSE(p.AllowsName("github.com", 443)) << "the apex is not under itself";
  EXPECT_FALSE(p.AllowsName("evilgithub.com", 443));
  EXPECT_FALSE(p.AllowsName("github.com.evil.net", 443));
  EXPECT_FALSE(p.AllowsName("api.github.com", 22));
  EXPECT_TRUE(p.AllowsName("pypi.org", 443));
  EXPECT_FALSE(p.AllowsName("pypi.org", 80));
  EXPECT_FALSE(p.AllowsName("files.pypi.org", 443));
  Policy any = Make({"*"});
  EXPECT_TRUE(any.AllowsName("anything.example", 443));
  EXPECT_FALSE(any.AllowsName("anything.example", 8080));
  EXPECT_FALSE(Policy{}.AllowsName("example.com", 443)) << "an empty policy allows nothing";
}

TEST(EgressAddressRule, ExactAddressesWithPortsParse) {
  auto v4 = ParseAddressRule("127.0.0.1:8443");
  ASSERT_TRUE(v4) << v4.error().message;
  EXPECT_EQ(v4->address, make_address("127.0.0.1"));
  EXPECT_EQ(v4->port, 8443);
  auto v6 = ParseAddressRule("[::1]:80");
  ASSERT_TRUE(v6) << v6.error().message;
  EXPECT_EQ(v6->address, make_address("::1"));
  // An IPv4 address written as IPv6 is that IPv4 address, either way round.
  auto mapped = ParseAddressRule("[::ffff:10.0.0.5]:5432");
  ASSERT_TRUE(mapped);
  EXPECT_EQ(mapped->address, make_address("10.0.0.5"));
  Policy p = Make({}, {"10.0.0.5:5432"});
  EXPECT_TRUE(p.AllowsAddress(make_address("::ffff:10.0.0.5"), 5432));
  EXPECT_FALSE(p.AllowsAddress(make_address("10.0.0.5"), 5433));
  EXPECT_FALSE(p.AllowsAddress(make_address("10.0.0.6"), 5432));

  for (const char* bad :
       {"127.0.0.1", "::1:80", "[::1]", "[::1]80", "localhost:80", "127.0.0.1:0", "127.0.0.1:99999",
        "0.0.0.0:80", "[::]:80", "224.0.0.1:5353", "10.0.0.0/8:80", ""}) {
    EXPECT_FALSE(ParseAddressRule(bad)) << "\"" << bad << "\" parsed";
  }
}

TEST(EgressPolicy, ASessionMayNarrowTheOperatorsPolicyNeverWidenIt) {
  Policy op = Make({"*.github.com", "pypi.org:443", "files.example.com:8080"}, {"127.0.0.1:8443"});
  for (auto [allow, addresses] :
       std::vector<std::pair<std::vector<std::string>, std::vector<std::string>>>{
           {{"api.github.com"}, {}},
           {{"*.github.com"}, {}},
           {{"*.api.github.com:443"}, {}},
           {{"pypi.org:443"}, {}},
           {{"files.example.com:8080"}, {"127.0.0.1:8443"}},
           {{}, {}},
       }) {
    Policy s = Make(allow, addresses);
    EXPECT_TRUE(CheckNarrows(s, op)) << (allow.empty() ? "" : allow[0]);
  }
  for (auto [allow, addresses, named] :
       std::vector<std::tuple<std::vector<std::string>, std::vector<std::string>, std::string>>{
           {{"github.com"}, {}, "github.com"},      // the apex is not under *.github.com
           {{"*"}, {}, "*"},                        // everything
           {{"pypi.org"}, {}, "port 80"},           // 80 and 443, only 443 allowed
           {{"api.github.com:22"}, {}, "port 22"},  // another port
           {{"*.example.com:8080"}, {}, "*.example.com"},
           {{}, {"127.0.0.1:8444"}, "127.0.0.1:8444"},
       }) {
    Policy s = Make(allow, addresses);
    auto st = CheckNarrows(s, op);
    ASSERT_FALSE(st) << named;
    EXPECT_NE(st.error().message.find(named), std::string::npos) << st.error().message;
  }
  // "*" covers every name rule on its ports.
  EXPECT_TRUE(CheckNarrows(Make({"*.example.com", "a.b"}), Make({"*"})));
  EXPECT_FALSE(CheckNarrows(Make({"a.b:8080"}), Make({"*"})));
}

TEST(EgressAddressClass, EveryAddressThatIsNotPublicIsNamedAndIPv6FormsOfIPv4AreSeenThrough) {
  const std::vector<std::pair<const char*, AddressClass>> cases = {
      {"8.8.8.8", AddressClass::kPublic},
      {"1.1.1.1", AddressClass::kPublic},
      {"172.32.0.1", AddressClass::kPublic},
      {"2606:4700:4700::1111", AddressClass::kPublic},
      {"0.0.0.0", AddressClass::kUnspecified},
      {"0.1.2.3", AddressClass::kUnspecified},
      {"::", AddressClass::kUnspecified},
      {"127.0.0.1", AddressClass::kLoopback},
      {"127.255.255.254", AddressClass::kLoopback},
      {"::1", AddressClass::kLoopback},
      {"10.1.2.3", AddressClass::kPrivate},
      {"172.16.0.1", AddressClass::kPrivate},
      {"172.31.255.255", AddressClass::kPrivate},
      {"192.168.1.1", AddressClass::kPrivate},
      {"100.64.0.1", AddressClass::kPrivate},
      {"fd12:3456::1", AddressClass::kPrivate},
      {"fc00::1", AddressClass::kPrivate},
      {"fec0::1", AddressClass::kPrivate},
      {"64:ff9b:1::1", AddressClass::kPrivate},
      {"169.254.1.1", AddressClass::kLinkLocal},
      {"fe80::1", AddressClass::kLinkLocal},
      {"169.254.169.254", AddressClass::kMetadata},
      {"169.254.170.2", AddressClass::kMetadata},
      {"100.100.100.200", AddressClass::kMetadata},
      {"168.63.129.16", AddressClass::kMetadata},
      {"fd00:ec2::254", AddressClass::kMetadata},
      {"224.0.0.1", AddressClass::kMulticast},
      {"239.255.255.250", AddressClass::kMulticast},
      {"ff02::1", AddressClass::kMulticast},
      {"255.255.255.255", AddressClass::kReserved},
      {"240.0.0.1", AddressClass::kReserved},
      {"192.0.2.1", AddressClass::kReserved},
      {"198.18.0.1", AddressClass::kReserved},
      {"192.0.0.170", AddressClass::kReserved},
      {"2001:db8::1", AddressClass::kReserved},
      {"2001:0:4136:e378::1", AddressClass::kReserved},  // Teredo
      {"100::1", AddressClass::kReserved},
      {"4000::1", AddressClass::kReserved},  // outside 2000::/3
      // IPv6 forms that reach an IPv4 address have that address's class.
      {"::ffff:127.0.0.1", AddressClass::kLoopback},
      {"::ffff:169.254.169.254", AddressClass::kMetadata},
      {"::169.254.169.254", AddressClass::kMetadata},
      {"64:ff9b::a9fe:a9fe", AddressClass::kMetadata},
      {"64:ff9b::10.0.0.1", AddressClass::kPrivate},
      {"64:ff9b::8.8.8.8", AddressClass::kPublic},
      {"2002:7f00:1::", AddressClass::kLoopback},
      {"2002:a9fe:a9fe::1", AddressClass::kMetadata},
      {"2002:808:808::1", AddressClass::kPublic},
      {"::ffff:8.8.8.8", AddressClass::kPublic},
  };
  for (const auto& [text, want] : cases) {
    EXPECT_EQ(Classify(make_address(text)), want)
        << text << " is " << AddressClassName(Classify(make_address(text))) << ", not "
        << AddressClassName(want);
  }
}

TEST(EgressDecision, ANameGoesOnlyWhereItsPolicyAllowsAndOnlyToAPublicAddress) {
  using V = Decision::Verdict;
  Policy p = Make({"*.example.com", "site.test:8443"}, {"127.0.0.1:8443"});
  const OwnAddresses own{{make_address("93.184.216.99")},
                         {{make_address("127.0.0.1"), 7000}, {make_address("8.8.4.4"), 443}}};

  // Asked first, before any DNS query: a name outside the policy is denied.
  EXPECT_EQ(CheckRequest(p, "www.example.com", 443).verdict, V::kAllowed);
  auto outside = CheckRequest(p, "evil.net", 443);
  EXPECT_EQ(outside.verdict, V::kDeniedByPolicy);
  EXPECT_NE(outside.reason.find("evil.net:443"), std::string::npos) << outside.reason;
  EXPECT_EQ(CheckRequest(p, "www.example.com", 22).verdict, V::kDeniedByPolicy);
  EXPECT_EQ(CheckRequest(p, "bad name", 443).verdict, V::kDeniedByPolicy);
  EXPECT_EQ(CheckRequest(p, "2130706433", 443).verdict, V::kDeniedByPolicy);

  // Then with the address the gateway resolved.
  EXPECT_TRUE(Decide(p, "www.example.com", 443, make_address("93.184.216.34"), own).allowed());
  // A name that resolves somewhere not public (DNS rebinding, or a name put on the metadata
  // service) is refused, and the answer says why without naming more than the client sent.
  for (const char* inside : {"127.0.0.1", "10.0.0.8", "169.254.169.254", "::ffff:169.254.169.254",
                             "fd00:ec2::254", "::1", "0.0.0.0", "224.0.0.1"}) {
    auto d = Decide(p, "www.example.com", 443, make_address(inside), own);
    EXPECT_EQ(d.verdict, V::kRefusedAddress) << inside;
    EXPECT_NE(d.reason.find(AddressClassName(Classify(make_address(inside)))), std::string::npos)
        << d.reason;
  }
  // The control plane's own listeners, even at a public address and in the IPv6 forms that
  // reach it (NAT64, 6to4); and the gateway's own host on every port, where a service bound to
  // 0.0.0.0 would answer.
  for (const char* self_address : {"8.8.4.4", "64:ff9b::808:404", "2002:808:404::1", "::8.8.4.4"}) {
    auto self = Decide(p, "www.example.com", 443, make_address(self_address), own);
    EXPECT_EQ(self.verdict, V::kRefusedAddress) << self_address;
    EXPECT_NE(self.reason.find("own listener"), std::string::npos) << self.reason;
  }
  EXPECT_TRUE(Decide(p, "www.example.com", 80, make_address("8.8.4.4"), own).allowed())
      << "only the listener's port is its own";
  for (uint16_t port : {80, 443}) {
    auto host = Decide(p, "www.example.com", port, make_address("93.184.216.99"), own);
    EXPECT_EQ(host.verdict, V::kRefusedAddress) << port;
    EXPECT_NE(host.reason.find("own host"), std::string::npos) << host.reason;
  }

  // The operator's exact address is reached by an allowed name or as a literal, on its port
  // only; the same address on another port, or another loopback port, is not.
  EXPECT_TRUE(Decide(p, "site.test", 8443, make_address("127.0.0.1"), own).allowed());
  EXPECT_TRUE(Decide(p, "127.0.0.1", 8443, make_address("127.0.0.1"), own).allowed());
  EXPECT_TRUE(Decide(p, "[::ffff:127.0.0.1]", 8443, make_address("127.0.0.1"), own).allowed());
  EXPECT_EQ(Decide(p, "127.0.0.1", 7000, make_address("127.0.0.1"), own).verdict,
            V::kDeniedByPolicy);
  EXPECT_EQ(Decide(p, "x.example.com", 443, make_address("127.0.0.1"), own).verdict,
            V::kRefusedAddress);
  // A public literal is not a name: it needs an address rule too.
  auto literal = Decide(p, "93.184.216.34", 443, make_address("93.184.216.34"), own);
  EXPECT_EQ(literal.verdict, V::kDeniedByPolicy);
  EXPECT_NE(literal.reason.find("allow_addresses"), std::string::npos) << literal.reason;
  // What the resolver and the address parser would read differently is neither a name nor an
  // address: a NUL, a zone index, spaces.
  for (const std::string& odd :
       {std::string("127.0.0.1\0.example.com", 23), std::string("127.0.0.1\0", 10),
        std::string("[::ffff:127.0.0.1%junk]"), std::string("[fe80::1%eth0]"),
        std::string(" 127.0.0.1"), std::string("127.0.0.1 ")}) {
    EXPECT_EQ(CheckRequest(p, odd, 8443).verdict, V::kDeniedByPolicy) << odd;
  }
  EXPECT_FALSE(ParseAddressRule("[fe80::1%eth0]:80"));
  // A refusal's text carries no line break or control byte of what the client sent.
  auto injected = CheckRequest(p, "evil\r\nX-Injected: 1.example.com", 443);
  EXPECT_EQ(injected.verdict, V::kDeniedByPolicy);
  EXPECT_EQ(injected.reason.find_first_of("\r\n"), std::string::npos) << injected.reason;
  // Nothing is reached through an empty policy.
  EXPECT_FALSE(
      Decide(Policy{}, "www.example.com", 443, make_address("93.184.216.34"), own).allowed());
}

}  // namespace
}  // namespace airlock::egress
