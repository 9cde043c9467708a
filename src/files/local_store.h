#pragma once

// The embedded blob store: files under <home>/files/<session>/<name>, served on the sandbox
// listener at /sandbox/v1/files/<session>/<name> to whoever holds a URL signed by the control
// plane (HMAC-SHA256 over method, session, name, expiry and size limit, with a key id so that
// the signing key can rotate).

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "common/secret.h"
#include "files/blob_store.h"

namespace airlock::files {

// The keys that sign and verify local URLs: the first signs, all verify. Stored one per line
// ("<kid> <hex key>") in a 0600 file; a missing file is created with one new key. Rotate by
// adding a line at the top (airlock files rotate-key); drop old lines once their URLs expired.
class UrlSigner {
 public:
  static Result<UrlSigner> LoadOrCreate(const std::string& path);
  static UrlSigner ForTest(std::vector<std::pair<std::string, Secret>> keys);

  // The signature of one URL's terms (hex), by the active key.
  std::string Sign(std::string_view method, std::string_view session, std::string_view name,
                   int64_t expires, int64_t max_bytes) const;
  const std::string& active_kid() const { return keys_.front().first; }
  // Checks `sig` against the key `kid` in constant time. False for an unknown kid.
  bool Verify(std::string_view kid, std::string_view sig, std::string_view method,
              std::string_view session, std::string_view name, int64_t expires,
              int64_t max_bytes) const;

 private:
  std::vector<std::pair<std::string, Secret>> keys_;
};

// Prepends a new key to the key file (creating it if needed) and returns its id.
Result<std::string> RotateSigningKey(const std::string& path);

struct LocalStoreOptions {
  std::string root;  // <home>/files
};

class LocalBlobStore : public BlobStore {
 public:
  LocalBlobStore(LocalStoreOptions o, UrlSigner signer);
  std::string_view kind() const override { return "local"; }
  Result<PresignedUrl> Presign(const PresignRequest& r) override;
  Result<std::vector<FileInfo>> List(const std::string& session_id) override;
  Result<OperatorDownload> Download(const std::string& session_id, const std::string& name,
                                    int expires_seconds) override;
  Result<int64_t> UsedBytes(const std::string& session_id) override;
  Result<DeletedFiles> DeleteSession(const std::string& session_id) override;
  Status Put(const std::string& session_id, const std::string& name, const std::string& spool,
             int64_t size) override;
  Result<std::string> SpoolDir(const std::string& session_id) override;
  Status CopyTo(const std::string& session_id, const std::string& name,
                const std::string& dest) override;

  const UrlSigner& signer() const { return signer_; }
  std::string SessionDir(const std::string& session_id) const;
  std::string PathOf(const std::string& session_id, const std::string& name) const;
  // Removes partial uploads left by a crash (".upload-*" files). Call at start.
  void SweepPartialUploads();

 private:
  LocalStoreOptions o_;
  UrlSigner signer_;
};

}  // namespace airlock::files
