#pragma once

// Making and reading X.509 certificates and keys (EC P-256, SHA-256), in memory: the egress
// gateway's certificate authority (a CA per deployment and a leaf per intercepted host) and the
// throw-away PKIs of the tests.
//
// Security note: key bytes leave here only as PEM text a caller asked for; nothing here logs.

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "common/result.h"

struct evp_pkey_st;
struct x509_st;

namespace airlock::net {

struct PkeyFree {
  void operator()(evp_pkey_st* p) const;
};
struct X509Free {
  void operator()(x509_st* p) const;
};
using PkeyPtr = std::unique_ptr<evp_pkey_st, PkeyFree>;
using X509Ptr = std::unique_ptr<x509_st, X509Free>;

// A new EC P-256 key.
Result<PkeyPtr> NewKey();

// A self-signed CA certificate for `key`: subject O=`organization`, CN=`common_name`, valid from
// an hour ago (clock skew) for `valid_for`, with critical basicConstraints CA:TRUE, keyUsage
// keyCertSign and cRLSign, and a subject key identifier.
Result<X509Ptr> MakeCaCertificate(evp_pkey_st* key, const std::string& organization,
                                  const std::string& common_name, std::chrono::seconds valid_for);

// A server certificate for `key` signed by `ca` (whose key is `ca_key`), named by the DNS names
// and IP addresses in its subjectAltName (the first one is also its CN), valid from an hour ago
// for `valid_for`: CA:FALSE, digitalSignature, serverAuth, and both key identifiers.
// Errors: kInvalidArgument for an empty name or one holding ',' or a line break.
Result<X509Ptr> MakeServerCertificate(evp_pkey_st* key, x509_st* ca, evp_pkey_st* ca_key,
                                      const std::string& organization,
                                      const std::vector<std::string>& dns_names,
                                      const std::vector<std::string>& ips,
                                      std::chrono::seconds valid_for);

Result<std::string> CertificatePem(x509_st* cert);
Result<std::string> PrivateKeyPem(evp_pkey_st* key);  // PKCS#8, unencrypted
Result<X509Ptr> ReadCertificatePem(const std::string& pem);
Result<PkeyPtr> ReadPrivateKeyPem(const std::string& pem);

// Whether `key` is the private key of `cert`.
bool KeyMatches(x509_st* cert, evp_pkey_st* key);

// Replaces `path` with `text`, created with `mode` (a key file is never readable by others, not
// even for a moment).
Status WriteFileAtomically(const std::string& path, const std::string& text, unsigned mode);

}  // namespace airlock::net
