#include "tests/llm/test_tls.h"

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "net/pki.h"

namespace airlock::fake {

namespace {
constexpr std::chrono::seconds kValidFor{30L * 24 * 3600};
constexpr const char* kOrganization = "Airlock tests";
}  // namespace

Result<TestPki> MakeTestPki(const std::string& dir, const std::vector<std::string>& dns_names,
                            const std::vector<std::string>& ips) {
  ERR_clear_error();
  AIRLOCK_ASSIGN_OR_RETURN(net::PkeyPtr ca_key, net::NewKey());
  AIRLOCK_ASSIGN_OR_RETURN(net::X509Ptr ca, net::MakeCaCertificate(ca_key.get(), kOrganization,
                                                                   "Airlock test CA", kValidFor));
  AIRLOCK_ASSIGN_OR_RETURN(net::PkeyPtr key, net::NewKey());
  AIRLOCK_ASSIGN_OR_RETURN(net::X509Ptr cert,
                           net::MakeServerCertificate(key.get(), ca.get(), ca_key.get(),
                                                      kOrganization, dns_names, ips, kValidFor));

  AIRLOCK_ASSIGN_OR_RETURN(std::string ca_pem, net::CertificatePem(ca.get()));
  AIRLOCK_ASSIGN_OR_RETURN(std::string cert_pem, net::CertificatePem(cert.get()));
  AIRLOCK_ASSIGN_OR_RETURN(std::string key_pem, net::PrivateKeyPem(key.get()));

  TestPki pki;
  pki.dir = dir;
  pki.ca_file = dir + "/ca.pem";
  pki.cert_file = dir + "/server.pem";
  pki.key_file = dir + "/server.key";
  AIRLOCK_TRY(net::WriteFileAtomically(pki.ca_file, ca_pem, 0644));
  AIRLOCK_TRY(net::WriteFileAtomically(pki.cert_file, cert_pem + ca_pem, 0644));
  Status written = net::WriteFileAtomically(pki.key_file, key_pem, 0600);
  OPENSSL_cleanse(key_pem.data(), key_pem.size());
  AIRLOCK_TRY(written);
  return pki;
}

std::string OpenSslClientHello(const std::string& sni) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  SSL* ssl = SSL_new(ctx);
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl, in, out);  // the SSL owns both now
  if (!sni.empty()) SSL_set_tlsext_host_name(ssl, sni.c_str());
  SSL_set_connect_state(ssl);
  SSL_do_handshake(ssl);  // writes the hello, then wants the server's answer
  char* data = nullptr;
  long n = BIO_get_mem_data(out, &data);
  std::string hello(data, static_cast<size_t>(n));
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  return hello;
}

}  // namespace airlock::fake
