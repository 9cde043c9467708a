#pragma once

// Retention of ended sessions (docs/operators.md, "Retention"): deletes what a session left
// behind once it has been over for a while — its events and conversation in the store, its
// files in the blob store, its sandbox log and working directories under the home — and keeps
// the session's row as its record (id, state, result, usage, metadata), so usage reports and
// listings stay right. The control plane applies the configured policy every
// retention.interval; `airlock gc` (POST /v1/admin/gc) applies it, or another age, now.

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/asio.h"
#include "common/json_util.h"
#include "common/result.h"
#include "controlplane/config.h"
#include "files/blob_store.h"
#include "store/store.h"

namespace airlock::controlplane {

struct GcRequest {
  int64_t older_than_s = 0;  // sessions that ended at least this long ago
  bool dry_run = false;      // count what would go, delete nothing
  int max_sessions = 1000;   // at most this many sessions per pass
};

struct GcReport {
  int64_t sessions = 0;
  int64_t events = 0;
  int64_t messages = 0;
  int64_t database_bytes = 0;  // of the events and messages (the JSON text)
  int64_t files = 0;
  int64_t file_bytes = 0;
  int64_t log_bytes = 0;       // the sandbox log and everything else under sessions/<id>, run/<id>
  int64_t released_pages = 0;  // database pages given back to the file system
  std::vector<std::string> session_ids;  // the first kMaxListedIds of them
  bool more = false;                     // more sessions qualify than this pass took
  std::vector<std::string> errors;       // sessions skipped (retried next pass), with why
};

// {"older_than": "30d", "dry_run": true, "max_sessions": 100}, every key optional; without
// older_than the configured retention.ended_sessions_after (kInvalidArgument when it is off).
Result<GcRequest> ParseGcRequest(const Json& body, const RetentionConfig& config);
Json GcReportJson(const GcRequest& request, const GcReport& report);

// Deletes `dir` and everything below it without following symlinks. Refuses (kConflict) while
// anything is mounted at or below it: a sandbox that is still being torn down may have the
// host's files bind-mounted there. Returns the bytes of the regular files removed.
Result<int64_t> RemoveSessionDir(const std::string& dir);

class Retention {
 public:
  static constexpr size_t kMaxListedIds = 100;
  static constexpr int kRowsPerStep = 1000;  // events+messages per store transaction

  // `blobs` may be null (no blob store configured): files are then not deleted.
  Retention(const Config& config, store::Store& store, files::BlobStore* blobs);
  ~Retention();

  // One pass; blocking (call it on a worker pool). Passes do not overlap: a second caller
  // waits for the first. A session that fails to delete is reported and left for the next
  // pass; it is marked purged only once its files and directories are gone.
  Result<GcReport> Run(const GcRequest& request, int64_t now_ms);

  // Applies the configured policy every retention.interval on `io`, the work on `pool`.
  // Nothing when retention is off.
  void StartPeriodic(asio::io_context& io, asio::thread_pool& pool);

  struct Loop;  // the periodic pass's shared state (retention.cc)

 private:
  Status PurgeOne(const std::string& id, bool dry_run, GcReport& report);

  const Config& config_;
  store::Store& store_;
  files::BlobStore* blobs_;
  std::mutex run_mu_;
  std::shared_ptr<Loop> loop_;
};

}  // namespace airlock::controlplane
