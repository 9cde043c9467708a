#include "egress/authority.h"

#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include <boost/asio/ssl.hpp>

namespace airlock::egress {

namespace {

constexpr std::chrono::seconds kCaValidFor{10L * 365 * 24 * 3600};
constexpr std::chrono::seconds kLeafValidFor{7L * 24 * 3600};
constexpr std::chrono::hours kLeafKeptFor{24};
constexpr size_t kMaxLeaves = 4096;
constexpr const char* kOrganization = "Airlock egress gateway";

Result<std::string> ReadWhole(const std::string& path, std::string_view what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return Errorf(ErrorCode::kInvalidArgument, "cannot read the {} {}", what, path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// ALPN: only HTTP/1.1 is spoken inside an intercepted tunnel. A client that offers nothing
// else gets no protocol and falls back to HTTP/1.1, which is all it could have had.
int SelectHttp11(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                 unsigned int inlen, void*) {
  static constexpr unsigned char kHttp11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, outlen, kHttp11, sizeof(kHttp11), in, inlen) !=
      OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_NOACK;
  }
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
}

}  // namespace

Result<std::shared_ptr<Authority>> Authority::Load(const AuthorityFiles& files) {
  std::shared_ptr<Authority> a(new Authority());
  std::string cert_file = files.cert_file, key_file = files.key_file;
  if (cert_file.empty() != key_file.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "egress.ca_cert_file and egress.ca_key_file go together");
  }
  if (cert_file.empty()) {
    cert_file = files.dir + "/ca.pem";
    key_file = files.dir + "/ca.key";
    struct stat st {};
    if (::stat(cert_file.c_str(), &st) != 0) {
      ::mkdir(files.dir.c_str(), 0700);
      AIRLOCK_ASSIGN_OR_RETURN(net::PkeyPtr key, net::NewKey());
      AIRLOCK_ASSIGN_OR_RETURN(
          net::X509Ptr ca,
          net::MakeCaCertificate(key.get(), kOrganization, "Airlock egress CA", kCaValidFor));
      AIRLOCK_ASSIGN_OR_RETURN(std::string key_pem, net::PrivateKeyPem(key.get()));
      AIRLOCK_ASSIGN_OR_RETURN(std::string ca_pem, net::CertificatePem(ca.get()));
      // The key first: a certificate without its key would be taken for a whole CA.
      Status written = net::WriteFileAtomically(key_file, key_pem, 0600);
      OPENSSL_cleanse(key_pem.data(), key_pem.size());
      AIRLOCK_TRY(written);
      AIRLOCK_TRY(net::WriteFileAtomically(cert_file, ca_pem, 0644));
    }
  }
  AIRLOCK_ASSIGN_OR_RETURN(std::string ca_pem, ReadWhole(cert_file, "CA certificate"));
  AIRLOCK_ASSIGN_OR_RETURN(std::string key_pem, ReadWhole(key_file, "CA key"));
  auto ca = net::ReadCertificatePem(ca_pem);
  auto key = net::ReadPrivateKeyPem(key_pem);
  OPENSSL_cleanse(key_pem.data(), key_pem.size());
  if (!ca) {
    return Errorf(ErrorCode::kInvalidArgument, "{} holds no PEM certificate", cert_file);
  }
  if (!key) {
    return Errorf(ErrorCode::kInvalidArgument, "{} holds no unencrypted PEM private key", key_file);
  }
  if (!net::KeyMatches(ca->get(), key->get())) {
    return Errorf(ErrorCode::kInvalidArgument, "{} is not the key of the certificate in {}",
                  key_file, cert_file);
  }
  AIRLOCK_ASSIGN_OR_RETURN(a->leaf_key_, net::NewKey());
  // The PEM as written out again: one certificate, whatever else the file held.
  AIRLOCK_ASSIGN_OR_RETURN(a->ca_pem_, net::CertificatePem(ca->get()));
  a->ca_ = std::move(*ca);
  a->ca_key_ = std::move(*key);
  return a;
}

Result<std::shared_ptr<asio::ssl::context>> Authority::ServerContext(const std::string& host) {
  const auto now = std::chrono::steady_clock::now();
  if (auto it = leaves_.find(host); it != leaves_.end()) {
    if (now - it->second.made < kLeafKeptFor) return it->second.context;
    leaves_.erase(it);
  }
  AIRLOCK_ASSIGN_OR_RETURN(net::X509Ptr leaf,
                           net::MakeServerCertificate(leaf_key_.get(), ca_.get(), ca_key_.get(),
                                                      kOrganization, {host}, {}, kLeafValidFor));
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  ctx->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                   asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                   asio::ssl::context::no_tlsv1_1 | asio::ssl::context::single_dh_use);
  SSL_CTX* native = ctx->native_handle();
  if (SSL_CTX_use_certificate(native, leaf.get()) != 1 ||
      SSL_CTX_use_PrivateKey(native, leaf_key_.get()) != 1 ||
      SSL_CTX_add1_chain_cert(native, ca_.get()) != 1) {
    return Errorf(ErrorCode::kInternal, "cannot set up the TLS server for {}", host);
  }
  SSL_CTX_set_alpn_select_cb(native, SelectHttp11, nullptr);
  if (leaves_.size() >= kMaxLeaves) leaves_.clear();
  leaves_[host] = Leaf{ctx, now};
  return ctx;
}

}  // namespace airlock::egress
