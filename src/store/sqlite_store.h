#pragma once

// The SQLite implementation of Store: one database file in the control plane's home, for a
// single replica. See sqlite_store.cc for its concurrency and durability.

#include <cstdint>
#include <memory>
#include <string>

#include "common/result.h"
#include "store/store.h"

namespace airlock::store {

struct StoreOptions {
  std::string path;                    // SQLite database file
  std::string synchronous = "normal";  // "normal" (survives process crash) or "full" (power loss)
  int busy_timeout_ms = 5000;
  int read_connections = 4;
};

Result<std::unique_ptr<Store>> OpenSqliteStore(const StoreOptions& options);

// What the SQLite store's WAL file is cut back to when it starts over (journal_size_limit).
inline constexpr int64_t kWalSizeLimit = int64_t{128} << 20;

// The checkpoint sequence in the header of the WAL file at `wal_path` (bytes 12-15,
// big-endian), which SQLite raises each time it writes the WAL from its beginning again; -1
// while the file has no header.
int64_t WalCheckpointSequence(const std::string& wal_path);

}  // namespace airlock::store
