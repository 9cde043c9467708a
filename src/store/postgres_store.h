#pragma once

// The PostgreSQL implementation of Store (libpq): the SQLite store's contract on a database
// that several control-plane replicas share. See postgres_store.cc for how it keeps that
// contract under concurrency.

#include <memory>
#include <string>
#include <string_view>

#include "common/result.h"
#include "common/secret.h"
#include "store/store.h"

namespace airlock::store {

struct PostgresOptions {
  // "postgresql://user@host:port/dbname" (libpq's URI form, query parameters allowed). It must
  // not hold a password: that comes from `password` only, so the URL can be logged and shown.
  std::string url;
  Secret password;  // empty: none (trust, peer or certificate authentication, or ~/.pgpass)
  int pool_size = 8;
  int connect_timeout_s = 10;
};

// Where a URL points, for log lines and error messages: never the user's password.
struct PostgresTarget {
  std::string host;  // a host name, an address or a socket directory; "" for libpq's default
  std::string port;
  std::string dbname;
  std::string Describe() const;  // "host:port/dbname"
};

// Checks that `url` is a PostgreSQL connection URI without a password and says where it
// points. kInvalidArgument otherwise; the message never repeats the URL.
Result<PostgresTarget> ParsePostgresUrl(std::string_view url);

// Connects the pool, applies the schema migrations (safe when several processes start at
// once) and returns the store. kUnavailable when the server cannot be reached.
Result<std::unique_ptr<Store>> OpenPostgresStore(const PostgresOptions& options);

}  // namespace airlock::store
