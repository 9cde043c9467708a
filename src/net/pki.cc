#include "net/pki.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

namespace airlock::net {

void PkeyFree::operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
void X509Free::operator()(X509* p) const { X509_free(p); }

namespace {

struct BioFree {
  void operator()(BIO* p) const { BIO_free(p); }
};
struct BnFree {
  void operator()(BIGNUM* p) const { BN_free(p); }
};
struct ExtFree {
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using BnPtr = std::unique_ptr<BIGNUM, BnFree>;
using ExtPtr = std::unique_ptr<X509_EXTENSION, ExtFree>;

constexpr long kValidBeforeSeconds = 3600;  // tolerate a little clock skew

// Takes the OpenSSL error queue into an Error, so that a failure says which step broke and why.
std::unexpected<Error> SslError(std::string_view step) {
  std::string detail;
  for (unsigned long e = ERR_get_error(); e != 0; e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!detail.empty()) detail += "; ";
    detail += buf;
  }
  return Errorf(ErrorCode::kInternal, "pki: {} failed{}{}", step, detail.empty() ? "" : ": ",
                detail);
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

// A certificate for `subject_key` with a random serial and the validity window; not yet signed
// and without extensions.
Result<X509Ptr> NewCertificate(EVP_PKEY* subject_key, const std::string& organization,
                               const std::string& common_name, std::chrono::seconds valid_for) {
  X509Ptr cert(X509_new());
  if (!cert) return SslError("X509_new");
  if (X509_set_version(cert.get(), 2) != 1) return SslError("setting the version");

  BnPtr serial(BN_new());
  if (!serial || BN_rand(serial.get(), 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1 ||
      BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get())) == nullptr) {
    return SslError("setting a serial number");
  }
  if (X509_gmtime_adj(X509_getm_notBefore(cert.get()), -kValidBeforeSeconds) == nullptr ||
      X509_gmtime_adj(X509_getm_notAfter(cert.get()), static_cast<long>(valid_for.count())) ==
          nullptr) {
    return SslError("setting the validity");
  }
  X509_NAME* name = X509_get_subject_name(cert.get());
  const auto* org = reinterpret_cast<const unsigned char*>(organization.c_str());
  const auto* cn = reinterpret_cast<const unsigned char*>(common_name.c_str());
  if (X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, org, -1, -1, 0) != 1 ||
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, cn, -1, -1, 0) != 1) {
    return SslError("setting the subject");
  }
  if (X509_set_pubkey(cert.get(), subject_key) != 1) return SslError("setting the public key");
  return cert;
}

Result<std::string> BioText(BIO* bio) {
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  if (len < 0) return SslError("reading a memory BIO");
  return std::string(data, static_cast<size_t>(len));
}

}  // namespace

Result<PkeyPtr> NewKey() {
  PkeyPtr key(EVP_EC_gen("P-256"));
  if (!key) return SslError("generating a P-256 key");
  return key;
}

Result<X509Ptr> MakeCaCertificate(EVP_PKEY* key, const std::string& organization,
                                  const std::string& common_name, std::chrono::seconds valid_for) {
  AIRLOCK_ASSIGN_OR_RETURN(X509Ptr cert, NewCertificate(key, organization, common_name, valid_for));
  if (X509_set_issuer_name(cert.get(), X509_get_subject_name(cert.get())) != 1) {
    return SslError("setting the CA issuer");
  }
  AIRLOCK_TRY(AddExtension(cert.get(), cert.get(), NID_basic_constraints, "critical,CA:TRUE"));
  AIRLOCK_TRY(AddExtension(cert.get(), cert.get(), NID_key_usage, "critical,keyCertSign,cRLSign"));
  AIRLOCK_TRY(AddExtension(cert.get(), cert.get(), NID_subject_key_identifier, "hash"));
  if (X509_sign(cert.get(), key, EVP_sha256()) == 0) return SslError("signing the CA");
  return cert;
}

Result<X509Ptr> MakeServerCertificate(EVP_PKEY* key, X509* ca, EVP_PKEY* ca_key,
                                      const std::string& organization,
                                      const std::vector<std::string>& dns_names,
                                      const std::vector<std::string>& ips,
                                      std::chrono::seconds valid_for) {
  std::string san;
  for (const auto& n : dns_names) {
    if (n.empty() || n.find_first_of(",\n\r") != std::string::npos) {
      return Errorf(ErrorCode::kInvalidArgument, "pki: bad DNS name \"{}\"", n);
    }
    san += (san.empty() ? "DNS:" : ",DNS:") + n;
  }
  for (const auto& ip : ips) {
    if (ip.empty() || ip.find_first_of(",\n\r") != std::string::npos) {
      return Errorf(ErrorCode::kInvalidArgument, "pki: bad IP address \"{}\"", ip);
    }
    san += (san.empty() ? "IP:" : ",IP:") + ip;
  }
  std::string cn = !dns_names.empty() ? dns_names.front()
                   : !ips.empty()     ? ips.front()
                                      : organization;
  AIRLOCK_ASSIGN_OR_RETURN(X509Ptr cert, NewCertificate(key, organization, cn, valid_for));
  if (X509_set_issuer_name(cert.get(), X509_get_subject_name(ca)) != 1) {
    return SslError("setting the issuer");
  }
  AIRLOCK_TRY(AddExtension(cert.get(), ca, NID_basic_constraints, "critical,CA:FALSE"));
  AIRLOCK_TRY(AddExtension(cert.get(), ca, NID_key_usage, "critical,digitalSignature"));
  AIRLOCK_TRY(AddExtension(cert.get(), ca, NID_ext_key_usage, "serverAuth"));
  AIRLOCK_TRY(AddExtension(cert.get(), ca, NID_subject_key_identifier, "hash"));
  AIRLOCK_TRY(AddExtension(cert.get(), ca, NID_authority_key_identifier, "keyid:always"));
  if (!san.empty()) AIRLOCK_TRY(AddExtension(cert.get(), ca, NID_subject_alt_name, san));
  if (X509_sign(cert.get(), ca_key, EVP_sha256()) == 0) return SslError("signing a certificate");
  return cert;
}

Result<std::string> CertificatePem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) return SslError("encoding a certificate");
  return BioText(bio.get());
}

Result<std::string> PrivateKeyPem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio ||
      PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return SslError("encoding a private key");
  }
  return BioText(bio.get());
}

Result<X509Ptr> ReadCertificatePem(const std::string& pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  X509Ptr cert(bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr);
  if (!cert) return SslError("reading a PEM certificate");
  return cert;
}

Result<PkeyPtr> ReadPrivateKeyPem(const std::string& pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  // No passphrase callback: an encrypted key is an error, never a prompt on the terminal.
  PkeyPtr key(bio ? PEM_read_bio_PrivateKey(
                        bio.get(), nullptr, [](char*, int, int, void*) { return 0; }, nullptr)
                  : nullptr);
  if (!key) return SslError("reading a PEM private key");
  return key;
}

bool KeyMatches(X509* cert, EVP_PKEY* key) { return X509_check_private_key(cert, key) == 1; }

Status WriteFileAtomically(const std::string& path, const std::string& text, unsigned mode) {
  const std::string tmp = path + ".tmp";
  ::unlink(tmp.c_str());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_TRUNC | O_CLOEXEC,
                  static_cast<mode_t>(mode));
  if (fd < 0) {
    return Errorf(ErrorCode::kInternal, "cannot create {}: {}", tmp, std::strerror(errno));
  }
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return Errorf(ErrorCode::kInternal, "cannot write {}: {}", tmp, std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  bool ok = ::fsync(fd) == 0;
  int err = errno;
  if (::close(fd) != 0 && ok) {
    ok = false;
    err = errno;
  }
  if (ok && ::rename(tmp.c_str(), path.c_str()) != 0) {
    ok = false;
    err = errno;
  }
  if (!ok) {
    ::unlink(tmp.c_str());
    return Errorf(ErrorCode::kInternal, "cannot write {}: {}", path, std::strerror(err));
  }
  return Ok();
}

}  // namespace airlock::net
