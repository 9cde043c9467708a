#include "egress/client_hello.h"

#include <gtest/gtest.h>

#include "tests/llm/test_tls.h"

namespace airlock::egress {
namespace {

using Kind = ClientHelloScan::Kind;

// The same handshake message framed as two records, split `at` bytes into it.
std::string Refragment(const std::string& one_record, size_t at) {
  std::string msg = one_record.substr(5);
  auto record = [&](std::string_view part) {
    std::string r = one_record.substr(0, 3);
    r.push_back(static_cast<char>(part.size() >> 8));
    r.push_back(static_cast<char>(part.size() & 0xff));
    r.append(part);
    return r;
  };
  return record(std::string_view(msg).substr(0, at)) + record(std::string_view(msg).substr(at));
}

TEST(ClientHelloTest, ReadsTheServerNameOfARealHello) {
  std::string hello = fake::OpenSslClientHello("Example.COM");
  ClientHelloScan s = ScanClientHello(hello);
  ASSERT_EQ(s.kind, Kind::kHello) << s.problem;
  EXPECT_EQ(s.server_name, "Example.COM");  // as sent; the gateway normalizes it

  ClientHelloScan none = ScanClientHello(fake::OpenSslClientHello(""));
  ASSERT_EQ(none.kind, Kind::kHello) << none.problem;
  EXPECT_FALSE(none.server_name.has_value());
}

TEST(ClientHelloTest, EveryPrefixNeedsMoreAndRecordsAreReassembled) {
  std::string hello = fake::OpenSslClientHello("api.github.com");
  for (size_t n = 0; n < hello.size(); ++n) {
    EXPECT_EQ(ScanClientHello(hello.substr(0, n)).kind, Kind::kNeedMore) << n;
  }
  for (size_t at : {1u, 4u, 40u}) {
    std::string two = Refragment(hello, at);
    ClientHelloScan s = ScanClientHello(two);
    ASSERT_EQ(s.kind, Kind::kHello) << at << ": " << s.problem;
    EXPECT_EQ(s.server_name, "api.github.com");
    EXPECT_EQ(ScanClientHello(two.substr(0, two.size() - 1)).kind, Kind::kNeedMore);
  }
}

TEST(ClientHelloTest, OtherProtocolsAndBrokenFramingAreToldApart) {
  EXPECT_EQ(ScanClientHello("SSH-2.0-OpenSSH_9.2\r\n").kind, Kind::kNotTls);
  EXPECT_EQ(ScanClientHello("GET / HTTP/1.1\r\n").kind, Kind::kNotTls);
  std::string hello = fake::OpenSslClientHello("example.com");
  // An application-data record where the rest of the hello should be.
  std::string two = Refragment(hello, 10);
  two[5 + 10] = 0x17;
  EXPECT_EQ(ScanClientHello(two).kind, Kind::kMalformed);
  // A record longer than TLS allows.
  std::string big = hello;
  big[3] = 0x7f;
  EXPECT_EQ(ScanClientHello(big).kind, Kind::kMalformed);
  // Another handshake message first.
  std::string server_hello = hello;
  server_hello[5] = 2;
  EXPECT_EQ(ScanClientHello(server_hello).kind, Kind::kMalformed);
  // A hello that would need more than kMaxClientHelloBytes, in records of 16 KiB.
  std::string huge;
  std::string payload(16384, '\0');
  payload[0] = 1;     // ClientHello
  payload[1] = 0x7f;  // of length 0x7f0000
  for (int i = 0; i < 5; ++i) {
    huge += std::string("\x16\x03\x01\x40\x00", 5) + payload;
    payload.assign(16384, '\0');
  }
  EXPECT_EQ(ScanClientHello(huge).kind, Kind::kMalformed);
}

}  // namespace
}  // namespace airlock::egress
