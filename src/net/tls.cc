#include "net/tls.h"

#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <boost/asio/ssl.hpp>

namespace airlock::net {

namespace ssl = asio::ssl;

namespace {
constexpr std::string_view kCertificateFailure = "certificate verification failed";
}  // namespace

bool IsIpLiteral(const std::string& host) {
  beast::error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}

Result<std::shared_ptr<ssl::context>> MakeTlsClientContext(const std::string& ca_file) {
  auto tls = std::make_shared<ssl::context>(ssl::context::tls_client);
  beast::error_code ec;
  tls->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                   ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  tls->set_default_verify_paths(ec);
  if (ec) {
    return Errorf(ErrorCode::kUnavailable, "cannot load the system trust store: {}", ec.message());
  }
  if (!ca_file.empty()) {
    tls->load_verify_file(ca_file, ec);
    if (ec) {
      return Errorf(ErrorCode::kInvalidArgument, "cannot load ca_file \"{}\": {}", ca_file,
                    ec.message());
    }
  }
  tls->set_verify_mode(ssl::verify_peer);
  return tls;
}

Status PrepareTlsClient(ssl_st* s, const std::string& name) {
  X509_VERIFY_PARAM* param = SSL_get0_param(s);
  X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  const bool ip = IsIpLiteral(name);
  int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str())
              : X509_VERIFY_PARAM_set1_host(param, name.c_str(), name.size());
  if (ok != 1) {
    return Errorf(ErrorCode::kUnavailable, "TLS: cannot check the certificate for {}", name);
  }
  // SNI carries host names only (RFC 6066 section 3).
  if (!ip && SSL_set_tlsext_host_name(s, name.c_str()) != 1) {
    return Errorf(ErrorCode::kUnavailable, "TLS: cannot send the server name {}", name);
  }
  return Ok();
}

std::string DescribeHandshakeError(ssl_st* s, std::string transport) {
  long verify = SSL_get_verify_result(s);
  if (verify != X509_V_OK) {
    return fmt::format("{}: {}", kCertificateFailure, X509_verify_cert_error_string(verify));
  }
  return transport;
}

bool IsCertificateFailure(std::string_view message) {
  return message.find(kCertificateFailure) != std::string_view::npos;
}

}  // namespace airlock::net
