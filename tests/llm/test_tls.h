#pragma once

#include <string>
#include <vector>

#include "common/result.h"

namespace airlock::fake {

// PEM files of a throw-away PKI made at test time, so that TLS tests need neither the
// `openssl` tool nor checked-in keys.
struct TestPki {
  std::string dir;
  std::string ca_file;    // the CA certificate a client trusts (ca.pem)
  std::string cert_file;  // the server certificate followed by the CA certificate (server.pem)
  std::string key_file;   // the server's private key, PKCS#8, mode 0600 (server.key)
};

// Makes a new self-signed CA (EC P-256) and a server certificate it signs, valid from an hour
// ago for 30 days, with a subjectAltName of the given DNS names and IP addresses, and writes
// ca.pem, server.pem and server.key into `dir` (which must exist). Each call makes a new CA, so
// a client that trusts one PKI's ca.pem rejects another PKI's server. Pass other names (say
// {"wrong.example"}, {}) to test that a client checks the host name.
//
// Security note: the keys are written to files only; nothing here logs or returns key bytes.
Result<TestPki> MakeTestPki(const std::string& dir,
                            const std::vector<std::string>& dns_names = {"localhost"},
                            const std::vector<std::string>& ips = {"127.0.0.1"});

// The first flight of a real TLS client (OpenSSL's): a ClientHello naming `sni` in its
// server_name extension, or none when `sni` is empty.
std::string OpenSslClientHello(const std::string& sni);

}  // namespace airlock::fake
