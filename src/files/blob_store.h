#pragma once

// Where sessions' files live. The sandbox never holds a storage credential: it asks the
// control plane for a short-lived URL bound to its session, one name, one method, an expiry
// and (for uploads) a size limit, and moves the bytes itself.

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/result.h"

namespace airlock::files {

// A file name as sessions use it: 1-255 bytes, no '/', '\\' or control characters, not
// starting with '.', not "." or "..". kInvalidArgument says what is wrong.
Status ValidateFileName(std::string_view name);

struct FileInfo {
  std::string name;
  int64_t size = 0;
  int64_t created_at = 0;  // ms since epoch
};

struct PresignRequest {
  std::string session_id;
  std::string name;
  std::string method;                 // "PUT" or "GET"
  int64_t max_bytes = 0;              // PUT: the largest body the URL accepts
  std::optional<int64_t> exact_size;  // PUT: the size the client declared, when it did
  std::string content_type;           // PUT: optional
  int64_t expires_at = 0;             // unix seconds
  // The clock reading (unix seconds) `expires_at` was computed from; 0: the store reads its
  // own. A store that signs a lifetime (S3's X-Amz-Expires) takes it from here, so that a
  // second ticking between the caller and the store changes nothing.
  int64_t issued_at = 0;
  std::string base_url;  // local store: the sandbox's CONTROL_PLANE_URL as it reached us
};

struct PresignedUrl {
  std::string url;
  std::string method;
  std::vector<std::pair<std::string, std::string>> headers;  // the client must send these
  int64_t expires_at = 0;                                    // unix seconds
};

// How an operator gets a file's bytes.
struct OperatorDownload {
  std::string path;          // local: a file to serve
  std::string redirect_url;  // remote: a presigned GET to redirect to
  int64_t size = 0;
};

// What deleting a session's files removed.
struct DeletedFiles {
  int64_t files = 0;
  int64_t bytes = 0;
};

// Implementations are thread-safe and blocking (call them from a worker pool).
class BlobStore {
 public:
  virtual ~BlobStore() = default;
  virtual std::string_view kind() const = 0;  // "local" | "s3"
  virtual Result<PresignedUrl> Presign(const PresignRequest& r) = 0;
  // The session's files, by name. Never lists partial uploads.
  virtual Result<std::vector<FileInfo>> List(const std::string& session_id) = 0;
  // kNotFound when there is no such file.
  virtual Result<OperatorDownload> Download(const std::string& session_id, const std::string& name,
                                            int expires_seconds) = 0;
  // Bytes the session's files take, for its quota.
  virtual Result<int64_t> UsedBytes(const std::string& session_id) = 0;
  // Stores a file the control plane received whole (an operator's upload, "files" at create):
  // `spool` is a closed file of `size` bytes in SpoolDir(session_id). The name keeps its old
  // bytes, if any, until the new ones are stored whole. The spool file is gone afterwards,
  // stored or not.
  virtual Status Put(const std::string& session_id, const std::string& name,
                     const std::string& spool, int64_t size) = 0;
  // Writes a file's bytes into `dest`, a new file the caller removes: for the control plane to
  // serve them itself, as it does a sandbox's work files, which reach the sandbox over its
  // channel only. kNotFound when there is no such file.
  virtual Status CopyTo(const std::string& session_id, const std::string& name,
                        const std::string& dest) = 0;
  // The directory to write such a spool file in (made if missing); its name must start with
  // ".upload-", so that a start after a crash sweeps what was left. The local store's is the
  // session's own directory, so that Put is a rename.
  virtual Result<std::string> SpoolDir(const std::string& session_id) = 0;
  // Deletes every file of the session, partial uploads included (retention of ended sessions;
  // a URL presigned earlier finds nothing afterwards). A session without files deletes nothing.
  virtual Result<DeletedFiles> DeleteSession(const std::string& session_id) = 0;
};

}  // namespace airlock::files
