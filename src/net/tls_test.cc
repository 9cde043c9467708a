#include "net/tls.h"

#include <gtest/gtest.h>

#include <boost/asio/ssl.hpp>

namespace airlock::net {
namespace {

TEST(TlsClientContext, LoadsTheSystemTrustStore) {
  auto tls = MakeTlsClientContext("");
  ASSERT_TRUE(tls.has_value()) << tls.error().message;
  EXPECT_NE(*tls, nullptr);
}

TEST(TlsClientContext, RefusesACaFileItCannotLoadAndNamesIt) {
  auto tls = MakeTlsClientContext("/nonexistent/ca.pem");
  ASSERT_FALSE(tls.has_value());
  EXPECT_EQ(tls.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(tls.error().message.find("cannot load ca_file \"/nonexistent/ca.pem\""),
            std::string::npos)
      << tls.error().message;
}

TEST(TlsClientContext, NamesACertificateFailureSoCallersDoNotRetryIt) {
  EXPECT_TRUE(IsCertificateFailure(
      "TLS handshake with h:443 failed: certificate verification failed: unable to get local "
      "issuer certificate"));
  EXPECT_FALSE(IsCertificateFailure("TLS handshake with h:443 failed: timed out"));
}

TEST(TlsClientContext, PrepareAcceptsNamesAndAddresses) {
  auto tls = MakeTlsClientContext("");
  ASSERT_TRUE(tls.has_value());
  asio::io_context io;
  for (std::string name : {"api.example.com", "127.0.0.1", "::1"}) {
    asio::ssl::stream<asio::ip::tcp::socket> stream(io, **tls);
    EXPECT_TRUE(PrepareTlsClient(stream.native_handle(), name).has_value()) << name;
    // Before any handshake nothing has been verified, so the transport's words stand.
    EXPECT_EQ(DescribeHandshakeError(stream.native_handle(), "connection reset"),
              "connection reset");
  }
  EXPECT_TRUE(IsIpLiteral("::1"));
  EXPECT_TRUE(IsIpLiteral("10.0.0.1"));
  EXPECT_FALSE(IsIpLiteral("localhost"));
}

}  // namespace
}  // namespace airlock::net
