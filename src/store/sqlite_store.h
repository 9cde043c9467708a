#pragma once

// The SQLite implementation of Store: one database file in the control plane's home, for a
// single replica. See sqlite_store.cc for its concurrency and durability.

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

}  // namespace airlock::store
