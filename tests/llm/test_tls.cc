#include "tests/llm/test_tls.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

namespace airlock::fake {

namespace {

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct X509Free {
  void operator()(X509* p) const { X509_free(p); }
};
struct BioFree {
  void operator()(BIO* p) const { BIO_free(p); }
};
struct BnFree {
  void operator()(BIGNUM* p) const { BN_free(p); }
};
struct ExtFree {
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using BioPtr = std::unique_ptr<BIO, BioFree>;
using BnPtr = std::unique_ptr<BIGNUM, BnFree>;
using ExtPtr = std::unique_ptr<X509_EXTENSION, ExtFree>;

constexpr long kValidBeforeSeconds = 3600;  // tolerate a little clock skew
constexpr long kValidForSeconds = 30L * 24 * 3600;

// Takes the OpenSSL error queue into an Error, so that a failure says which step broke and why.
std::unexpected<Error> SslError(std::string_view step) {
  std::string detail;
  for (unsigned long e = ERR_get_error(); e != 0; e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!detail.empty()) detail += "; ";
    detail += buf;
  }
  return Errorf(ErrorCode::kInternal, "test pki: {} failed{}{}", step, detail.empty() ? "" : ": ",
                detail);
}

Result<PkeyPtr> NewKey() {
  PkeyPtr key(EVP_EC_gen("P-256"));
  if (!key) return SslError("generating a P-256 key");
  return key;
}

Status AddExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  ExtPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str()));
  if (!ext) return SslError(fmt::format("making extension {}={}", OBJ_nid2sn(nid), value));
  if (X509_add_ext(cert, ext.get(), -1) != 1) return SslError("adding an extension");
  return Ok();
}

// A certificate for `subject_key` named `common_name`, with a random serial and the validity
// window above; not yet signed and without extensions.
Result<X509Ptr> NewCertificate(EVP_PKEY* subject_key, const std::string& common_name) {
  X509Ptr cert(X509_new());
  if (!cert) return SslError("X509_new");
  if (X509_set_version(cert.get(), 2) != 1) return SslError("setting the version");

  BnPtr serial(BN_new());
  if (!serial || BN_rand(serial.get(), 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1 ||
      BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get())) == nullptr) {
    return SslError("setting a serial number");
  }
  if (X509_gmtime_adj(X509_getm_notBefore(cert.get()), -kValidBeforeSeconds) == nullptr ||
      X509_gmtime_adj(X509_getm_notAfter(cert.get()), kValidForSeconds) == nullptr) {
    return SslError("setting the validity");
  }
  X509_NAME* name = X509_get_subject_name(cert.get());
  const auto* org = reinterpret_cast<const unsigned char*>("Airlock tests");
  const auto* cn = reinterpret_cast<const unsigned char*>(common_name.c_str());
  if (X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, org, -1, -1, 0) != 1 ||
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, cn, -1, -1, 0) != 1) {
    return SslError("setting the subject");
  }
  if (X509_set_pubkey(cert.get(), subject_key) != 1) return SslError("setting the public key");
  return cert;
}

Result<X509Ptr> MakeCa(EVP_PKEY* key) {
  AIRLOCK_ASSIGN_OR_RETURN(X509Ptr cert, NewCertificate(key, "Airlock test CA"));
  if (X509_set_issuer_name(cert.get(), X509_get_subject_name(cert.get())) != 1) {
    return SslError("setting the CA issuer");
  }
  AIRLOCK_TRY(AddExtension(cert.get(), cert.get(), NID_basic_constraints, "critical,CA:TRUE"));
  AIRLOCK_TRY(AddExtension(cert.get(), cert.get(), NID_key_usage, "critical,keyCertSign,cRLSign"));
  AIRLOCK_TRY(AddExtension(cert.get(), cert.get(), NID_subject_key_identifier, "hash"));
  if (X509_sign(cert.get(), key, EVP_sha256()) == 0) return SslError("signing the CA");
  return cert;
}

Result<X509Ptr> MakeServerCert(EVP_PKEY* key, X509* ca, EVP_PKEY* ca_key,
                               const std::vector<std::string>& dns_names,
                               const std::vector<std::string>& ips) {
  std::string san;
  for (const auto& n : dns_names) {
    if (n.empty() || n.find_first_of(",\n\r") != std::string::npos) {
      return Errorf(ErrorCode::kInvalidArgument, "test pki: bad DNS name \"{}\"", n);
    }
    san += (san.empty() ? "DNS:" : ",DNS:") + n;
  }
  for (const auto& ip : ips) {
    if (ip.empty() || ip.find_first_of(",\n\r") != std::string::npos) {
      return Errorf(ErrorCode::kInvalidArgument, "test pki: bad IP address \"{}\"", ip);
    }
    san += (san.empty() ? "IP:" : ",IP:") + ip;
  }
  std::string cn = !dns_names.empty() ? dns_names.front()
                   : !ips.empty()     ? ips.front()
                                      : std::string("Airlock test server");
  AIRLOCK_ASSIGN_OR_RETURN(X509Ptr cert, NewCertificate(key, cn));
  if (X509_set_issuer_name(cert.get(), X509_get_subject_name(ca)) != 1) {
    return SslError("setting the issuer");
  }
  AIRLOCK_TRY(AddExtension(cert.get(), ca, NID_basic_constraints, "critical,CA:FALSE"));
  AIRLOCK_TRY(AddExtension(cert.get(), ca, NID_key_usage, "critical,digitalSignature"));
  AIRLOCK_TRY(AddExtension(cert.get(), ca, NID_ext_key_usage, "serverAuth"));
  AIRLOCK_TRY(AddExtension(cert.get(), ca, NID_subject_key_identifier, "hash"));
  AIRLOCK_TRY(AddExtension(cert.get(), ca, NID_authority_key_identifier, "keyid:always"));
  if (!san.empty()) AIRLOCK_TRY(AddExtension(cert.get(), ca, NID_subject_alt_name, san));
  if (X509_sign(cert.get(), ca_key, EVP_sha256()) == 0) return SslError("signing the server cert");
  return cert;
}

Result<std::string> BioText(BIO* bio) {
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  if (len < 0) return SslError("reading a memory BIO");
  return std::string(data, static_cast<size_t>(len));
}

Result<std::string> CertPem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) return SslError("encoding a certificate");
  return BioText(bio.get());
}

Result<std::string> KeyPem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio ||
      PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return SslError("encoding a private key");
  }
  return BioText(bio.get());
}

// Replaces `path` with `text`, created with `mode` (the key file is never world-readable, not
// even for a moment).
Status WriteFile(const std::string& path, const std::string& text, mode_t mode) {
  ::unlink(path.c_str());
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) {
    return Errorf(ErrorCode::kInternal, "test pki: cannot create {}: {}", path,
                  std::strerror(errno));
  }
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      ::close(fd);
      return Errorf(ErrorCode::kInternal, "test pki: cannot write {}: {}", path,
                    std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  if (::close(fd) != 0) {
    return Errorf(ErrorCode::kInternal, "test pki: cannot close {}: {}", path,
                  std::strerror(errno));
  }
  return Ok();
}

}  // namespace

Result<TestPki> MakeTestPki(const std::string& dir, const std::vector<std::string>& dns_names,
                            const std::vector<std::string>& ips) {
  ERR_clear_error();
  AIRLOCK_ASSIGN_OR_RETURN(PkeyPtr ca_key, NewKey());
  AIRLOCK_ASSIGN_OR_RETURN(X509Ptr ca, MakeCa(ca_key.get()));
  AIRLOCK_ASSIGN_OR_RETURN(PkeyPtr key, NewKey());
  AIRLOCK_ASSIGN_OR_RETURN(X509Ptr cert,
                           MakeServerCert(key.get(), ca.get(), ca_key.get(), dns_names, ips));

  AIRLOCK_ASSIGN_OR_RETURN(std::string ca_pem, CertPem(ca.get()));
  AIRLOCK_ASSIGN_OR_RETURN(std::string cert_pem, CertPem(cert.get()));
  AIRLOCK_ASSIGN_OR_RETURN(std::string key_pem, KeyPem(key.get()));

  TestPki pki;
  pki.dir = dir;
  pki.ca_file = dir + "/ca.pem";
  pki.cert_file = dir + "/server.pem";
  pki.key_file = dir + "/server.key";
  AIRLOCK_TRY(WriteFile(pki.ca_file, ca_pem, 0644));
  AIRLOCK_TRY(WriteFile(pki.cert_file, cert_pem + ca_pem, 0644));
  Status written = WriteFile(pki.key_file, key_pem, 0600);
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
