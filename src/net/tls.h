#pragma once

// The control plane's one TLS client set-up, for every outgoing HTTPS call (LLM upstreams,
// S3): the context, the peer's name check and SNI, and the words for a failed handshake.
//
// Security: the peer is always verified (the system trust store plus an optional CA file);
// there is no switch to turn verification off. Wildcards match only a whole left-most label.

#include <memory>
#include <string>

#include "common/asio.h"
#include "common/result.h"

namespace boost::asio::ssl {
class context;
}  // namespace boost::asio::ssl

struct ssl_st;

namespace airlock::net {

// A client context: TLS 1.2 or newer, the peer verified against the system trust store and,
// when `ca_file` is not empty, the PEM certificates in it too. The context is safe to share
// between connections on several threads.
// Errors (the caller prefixes who it is): kUnavailable "cannot load the system trust store:
// ...", kInvalidArgument "cannot load ca_file \"...\": ...".
Result<std::shared_ptr<asio::ssl::context>> MakeTlsClientContext(const std::string& ca_file);

// Before the handshake of a client connection: the certificate must name `name` (a DNS name
// or an IP address, without brackets), and a DNS name is sent as SNI.
// Errors: kUnavailable, naming `name`.
Status PrepareTlsClient(ssl_st* ssl, const std::string& name);

// Why a client handshake failed: the certificate check's verdict when it failed ("certificate
// verification failed: ..."), otherwise `transport`, the caller's words for the socket error.
std::string DescribeHandshakeError(ssl_st* ssl, std::string transport);

// True for a message made by DescribeHandshakeError from a failed certificate check: retrying
// will not make such a certificate verify.
bool IsCertificateFailure(std::string_view message);

// Whether `host` is an IPv4 or IPv6 address rather than a name.
bool IsIpLiteral(const std::string& host);

}  // namespace airlock::net
