#pragma once

// The deployment's interception CA (docs/operators.md, "Credentials at the boundary"): the
// certificate a sandbox that holds a secret's placeholder trusts, and the leaf certificates the
// gateway presents for the hosts those secrets belong to.
//
// Security note: the CA's private key stays in this object (and its file, mode 0600); it never
// reaches a sandbox, a log, an event or an error. Leaves are short-lived and share one key of
// this process's own, made at start and never written anywhere.

#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "common/asio.h"
#include "common/result.h"
#include "net/pki.h"

namespace boost::asio::ssl {
class context;
}  // namespace boost::asio::ssl

namespace airlock::egress {

struct AuthorityFiles {
  // The operator's CA (PEM certificate and PEM private key): what every replica of a
  // deployment must share, since a sandbox trusts one CA whichever replica it reaches.
  std::string cert_file;
  std::string key_file;
  // Without them: ca.pem and ca.key in this directory, made there on first start (one host).
  std::string dir;
};

class Authority {
 public:
  // Loads the CA (or makes it, see AuthorityFiles). Errors name the file, never key bytes:
  // kInvalidArgument for a file that is not a PEM certificate or key, or a key that is not the
  // certificate's; kInternal for a directory that cannot be written.
  static Result<std::shared_ptr<Authority>> Load(const AuthorityFiles& files);

  // The CA certificate, PEM: what sandboxes are given to trust.
  const std::string& certificate_pem() const { return ca_pem_; }

  // A TLS server context presenting a certificate for `host` (a normalized name) signed by the
  // CA, TLS 1.2 or newer, ALPN http/1.1 only. Made on first use and kept for a day.
  // Not thread-safe: one thread (the gateway's) calls it.
  Result<std::shared_ptr<asio::ssl::context>> ServerContext(const std::string& host);

 private:
  Authority() = default;

  struct Leaf {
    std::shared_ptr<asio::ssl::context> context;
    std::chrono::steady_clock::time_point made;
  };
  net::X509Ptr ca_;
  net::PkeyPtr ca_key_;
  net::PkeyPtr leaf_key_;
  std::string ca_pem_;
  std::map<std::string, Leaf, std::less<>> leaves_;
};

}  // namespace airlock::egress
