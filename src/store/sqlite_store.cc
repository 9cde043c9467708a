// The SQLite implementation of Store.
//
// Concurrency: one writer connection behind a mutex (SQLite allows one writer at a time anyway,
// and serialising in-process avoids busy-waiting on the file lock) plus a small pool of
// read-only connections. In WAL mode readers never block the writer nor each other, and each
// read runs in its own snapshot. Every connection is used by one thread at a time, so the
// connections are opened in SQLite's multi-thread mode (no per-connection mutex).
//
// Durability: every write is in a `BEGIN IMMEDIATE ... COMMIT` that finishes before the method
// returns (writes that arrive together share one: group commit, see Write). With WAL,
// synchronous=NORMAL survives a crash of the process (the commit is in the OS page cache);
// synchronous=FULL also survives power loss.

#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/time_util.h"
#include "store/connection_pool.h"
#include "store/event_group.h"
#include "store/sqlite_store.h"
#include "store/sqlite_wal_vfs.h"

namespace airlock::store {
namespace {

// Schema steps, applied in order, each in its own transaction and recorded in
// schema_migrations. Append new steps at the end; never edit a step that has shipped.
struct Migration {
  int version;
  const char* sql;
};

constexpr Migration kMigrations[] = {
    {1, R"sql(
CREATE TABLE operator_keys (
  name TEXT PRIMARY KEY,
  hash TEXT NOT NULL UNIQUE,
  created_at INTEGER NOT NULL
);

CREATE TABLE sessions (
  id TEXT PRIMARY KEY,
  state TEXT NOT NULL,
  image TEXT NOT NULL,
  backend TEXT NOT NULL,
  model TEXT NOT NULL,
  command TEXT NOT NULL DEFAULT '[]',
  limits TEXT NOT NULL DEFAULT '{}',
  metadata TEXT NOT NULL DEFAULT '{}',
  token_hash TEXT NOT NULL DEFAULT '',
  sandbox_handle TEXT NOT NULL DEFAULT '',
  result TEXT,
  input_tokens INTEGER NOT NULL DEFAULT 0,
  output_tokens INTEGER NOT NULL DEFAULT 0,
  llm_calls INTEGER NOT NULL DEFAULT 0,
  cost_usd REAL NOT NULL DEFAULT 0,
  next_event_seq INTEGER NOT NULL DEFAULT 1,
  next_position INTEGER NOT NULL DEFAULT 1,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);
-- Revoked tokens are stored as '': many sessions share it, and it must never match a lookup.
CREATE UNIQUE INDEX sessions_token_hash ON sessions(token_hash) WHERE token_hash != '';
-- (created_at, id) is the listing order; the state index also serves a filtered listing.
CREATE INDEX sessions_created_at ON sessions(created_at, id);
CREATE INDEX sessions_state ON sessions(state, created_at, id);

CREATE TABLE messages (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
  position INTEGER,  -- NULL while pending in the inbox
  body TEXT NOT NULL,
  created_at INTEGER NOT NULL
);
-- Unique: two messages can never share a conversation position (NULLs are distinct).
CREATE UNIQUE INDEX messages_session_position ON messages(session_id, position);
CREATE INDEX messages_session_id ON messages(session_id, id);

CREATE TABLE events (
  session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
  seq INTEGER NOT NULL,
  type TEXT NOT NULL,
  data TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;

CREATE TABLE usage (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
  model TEXT NOT NULL,
  input_tokens INTEGER NOT NULL,
  output_tokens INTEGER NOT NULL,
  cost_usd REAL NOT NULL,
  created_at INTEGER NOT NULL
);
CREATE INDEX usage_session ON usage(session_id, id);
)sql"},
    {2, R"sql(
-- The model aliases a session's sandbox may pick per call ('[]': only sessions.model).
ALTER TABLE sessions ADD COLUMN models TEXT NOT NULL DEFAULT '[]';
CREATE INDEX usage_created_at ON usage(created_at);
)sql"},
    {3, R"sql(
-- Event quotas: what each session's events take, kept with every append so the check is one
-- row read; and whether the one "session.quota_exceeded" event was appended.
ALTER TABLE sessions ADD COLUMN event_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN event_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN event_quota_noticed INTEGER NOT NULL DEFAULT 0;
-- Retention: when a session ended, and when its events and conversation were deleted.
ALTER TABLE sessions ADD COLUMN ended_at INTEGER;
ALTER TABLE sessions ADD COLUMN purged_at INTEGER;
UPDATE sessions SET
  event_count = (SELECT COUNT(*) FROM events e WHERE e.session_id = sessions.id),
  event_bytes = (SELECT COALESCE(SUM(length(CAST(e.type AS BLOB)) + length(CAST(e.data AS BLOB))), 0)
                 FROM events e WHERE e.session_id = sessions.id);
-- A session's last update is its end: nothing changes a session once it has ended.
UPDATE sessions SET ended_at = updated_at WHERE state IN ('succeeded', 'failed', 'killed');
CREATE INDEX sessions_purgeable ON sessions(ended_at) WHERE ended_at IS NOT NULL AND purged_at IS NULL;
)sql"},
    {4, R"sql(
-- Replicas: which one runs each session's sandbox, and when each was last alive.
ALTER TABLE sessions ADD COLUMN node TEXT NOT NULL DEFAULT '';
CREATE TABLE nodes (
  id TEXT PRIMARY KEY,
  heartbeat_at INTEGER NOT NULL
);
)sql"},
    {5, R"sql(
-- Idle tiers: how a suspended session's sandbox waits ('paused', 'hibernated'; 'active' in any
-- other state), and when the session entered its current state and tier.
ALTER TABLE sessions ADD COLUMN tier TEXT NOT NULL DEFAULT 'active';
ALTER TABLE sessions ADD COLUMN state_since INTEGER NOT NULL DEFAULT 0;
-- Before tiers a suspended sandbox was paused; the last update is the best guess of when the
-- session entered its state.
UPDATE sessions SET state_since = updated_at,
  tier = CASE WHEN state = 'suspended' THEN 'paused' ELSE 'active' END;
)sql"},
    {6, R"sql(
-- A client that rewrites its own history (the OpenAI and Anthropic faces): the messages it
-- dropped leave the conversation but stay for the audit, marked with when they were replaced.
ALTER TABLE messages ADD COLUMN superseded_at INTEGER;
)sql"},
    {7, R"sql(
-- Per-session environment variables given at create (issue 14: work going in).
ALTER TABLE sessions ADD COLUMN env TEXT NOT NULL DEFAULT '{}';
)sql"},
    {8, R"sql(
-- What the session may reach through the egress gateway (issue 15).
ALTER TABLE sessions ADD COLUMN egress TEXT NOT NULL DEFAULT '{}';
)sql"},
};

constexpr int kLatestVersion = kMigrations[std::size(kMigrations) - 1].version;

constexpr int kMaxListSessions = 1000;

// Maps a SQLite result code to the project's error codes. `what` names the operation; the
// message carries sqlite3_errmsg, which holds no secret (the database holds only hashes).
Error SqliteError(sqlite3* db, int rc, std::string_view what, int busy_timeout_ms) {
  const int primary = rc & 0xff;
  const char* msg = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED) {
    return Error{
        ErrorCode::kUnavailable,
        fmt::format("database is busy: still locked by another writer after {} ms ({}: {})",
                    busy_timeout_ms, what, msg)};
  }
  if (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY) {
    return Error{ErrorCode::kConflict, fmt::format("{}: {}", what, msg)};
  }
  if (primary == SQLITE_FULL) {
    return Error{ErrorCode::kUnavailable, fmt::format("database disk is full ({}: {})", what, msg)};
  }
  return Error{ErrorCode::kInternal, fmt::format("sqlite error in {}: {}", what, msg)};
}

class Connection;

// A cached prepared statement in use. Resets itself (and drops its bindings) when it goes out
// of scope, so the statement holds no lock past its owner's scope and can be reused.
class Stmt {
 public:
  Stmt(const Connection* conn, sqlite3_stmt* stmt) : conn_(conn), stmt_(stmt) {}
  Stmt(Stmt&& other) noexcept
      : conn_(other.conn_), stmt_(std::exchange(other.stmt_, nullptr)), bind_rc_(other.bind_rc_) {}
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  Stmt& operator=(Stmt&&) = delete;
  ~Stmt() {
    if (stmt_ != nullptr) {
      sqlite3_reset(stmt_);
      sqlite3_clear_bindings(stmt_);
    }
  }

  // Binds the arguments to ?1, ?2, ... in order.
  template <typename... Args>
  Stmt& Bind(const Args&... args) {
    int index = 1;
    (BindOne(index++, args), ...);
    return *this;
  }

  // Back to the start, for binding and running the statement again.
  Stmt& Reset() {
    sqlite3_reset(stmt_);
    bind_rc_ = SQLITE_OK;
    return *this;
  }

  // Steps once: true when a row is available, false when the statement is done.
  Result<bool> Step();
  // Steps to completion, ignoring rows.
  Status Run();

  bool IsNull(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
  int64_t Int(int col) const { return sqlite3_column_int64(stmt_, col); }
  double Real(int col) const { return sqlite3_column_double(stmt_, col); }
  std::string Text(int col) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, col));
    if (p == nullptr) {
      return {};
    }
    return std::string(p, static_cast<size_t>(sqlite3_column_bytes(stmt_, col)));
  }
  Result<Json> JsonColumn(int col) const;

 private:
  void Check(int rc) {
    if (rc != SQLITE_OK && bind_rc_ == SQLITE_OK) {
      bind_rc_ = rc;
    }
  }
  void BindOne(int i, int64_t v) { Check(sqlite3_bind_int64(stmt_, i, v)); }
  void BindOne(int i, int v) { Check(sqlite3_bind_int64(stmt_, i, v)); }
  void BindOne(int i, double v) { Check(sqlite3_bind_double(stmt_, i, v)); }
  void BindOne(int i, std::string_view v) {
    // TRANSIENT copies: callers bind temporaries such as DumpJson(...) results.
    Check(sqlite3_bind_text64(stmt_, i, v.data(), v.size(), SQLITE_TRANSIENT, SQLITE_UTF8));
  }
  void BindOne(int i, const std::string& v) { BindOne(i, std::string_view(v)); }
  void BindOne(int i, const char* v) { BindOne(i, std::string_view(v)); }
  void BindOne(int i, std::nullopt_t) { Check(sqlite3_bind_null(stmt_, i)); }
  void BindOne(int i, const std::optional<std::string>& v) {
    if (v) {
      BindOne(i, std::string_view(*v));
    } else {
      BindOne(i, std::nullopt);
    }
  }

  const Connection* conn_;
  sqlite3_stmt* stmt_;
  int bind_rc_ = SQLITE_OK;
};

class Connection {
 public:
  static Result<std::unique_ptr<Connection>> Open(const std::string& path, bool read_only,
                                                  int busy_timeout_ms) {
    const int flags =
        (read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) |
        SQLITE_OPEN_NOMUTEX;
    AIRLOCK_ASSIGN_OR_RETURN(const char* vfs, WalBatchingVfs());
    sqlite3* db = nullptr;
    const int rc = sqlite3_open_v2(path.c_str(), &db, flags, vfs);
    if (rc != SQLITE_OK) {
      Error e = SqliteError(db, rc, fmt::format("opening {}", path), busy_timeout_ms);
      sqlite3_close_v2(db);
      return std::unexpected(std::move(e));
    }
    auto conn = std::unique_ptr<Connection>(new Connection(db, busy_timeout_ms));
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, busy_timeout_ms);
    return conn;
  }

  ~Connection() {
    for (auto& [sql, stmt] : cache_) {
      sqlite3_finalize(stmt);
    }
    sqlite3_close_v2(db_);
  }

  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  sqlite3* raw() { return db_; }
  int busy_timeout_ms() const { return busy_timeout_ms_; }

  // Returns the cached prepared statement for `sql`, preparing it on first use.
  Result<Stmt> Prepare(const std::string& sql) {
    auto it = cache_.find(sql);
    if (it == cache_.end()) {
      sqlite3_stmt* stmt = nullptr;
      const char* tail = nullptr;
      const int rc = sqlite3_prepare_v3(db_, sql.c_str(), static_cast<int>(sql.size() + 1),
                                        SQLITE_PREPARE_PERSISTENT, &stmt, &tail);
      if (rc != SQLITE_OK) {
        return std::unexpected(Fail(rc, "preparing a statement"));
      }
      if (stmt == nullptr || (tail != nullptr && std::string_view(tail).find_first_not_of(
                                                     " \t\r\n") != std::string_view::npos)) {
        sqlite3_finalize(stmt);
        return Errorf(ErrorCode::kInternal, "statement is not exactly one SQL statement: {}", sql);
      }
      it = cache_.emplace(sql, stmt).first;
    } else if (sqlite3_stmt_busy(it->second)) {
      // Two live uses of one cached statement would clobber each other's bindings and rows.
      return Errorf(ErrorCode::kInternal, "statement already in use on this connection: {}", sql);
    }
    return Stmt(this, it->second);
  }

  // Runs SQL text that may hold several statements and returns no rows (schema, pragmas).
  Status Exec(const char* sql, std::string_view what) {
    const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) {
      return std::unexpected(Fail(rc, what));
    }
    return Ok();
  }

  Status Run(const std::string& sql) {
    AIRLOCK_ASSIGN_OR_RETURN(Stmt stmt, Prepare(sql));
    return stmt.Run();
  }

  Error Fail(int rc, std::string_view what) const {
    return SqliteError(db_, rc, what, busy_timeout_ms_);
  }

 private:
  Connection(sqlite3* db, int busy_timeout_ms) : db_(db), busy_timeout_ms_(busy_timeout_ms) {}

  sqlite3* db_;
  int busy_timeout_ms_;
  std::unordered_map<std::string, sqlite3_stmt*> cache_;
};

Result<bool> Stmt::Step() {
  if (bind_rc_ != SQLITE_OK) {
    return std::unexpected(conn_->Fail(bind_rc_, fmt::format("binding {}", sqlite3_sql(stmt_))));
  }
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) {
    return true;
  }
  if (rc == SQLITE_DONE) {
    return false;
  }
  return std::unexpected(conn_->Fail(rc, sqlite3_sql(stmt_)));
}

Status Stmt::Run() {
  for (;;) {
    AIRLOCK_ASSIGN_OR_RETURN(bool row, Step());
    if (!row) {
      return Ok();
    }
  }
}

Result<Json> Stmt::JsonColumn(int col) const {
  Json j = Json::parse(Text(col), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return Errorf(ErrorCode::kInternal, "corrupt JSON in column {} of {}",
                  sqlite3_column_name(stmt_, col), sqlite3_sql(stmt_));
  }
  return j;
}

using ReadPool = ConnectionPool<Connection>;

// Columns read by ReadSession, in its order.
constexpr std::string_view kSessionColumns =
    "id, state, image, backend, model, command, limits, metadata, token_hash, sandbox_handle, "
    "result, input_tokens, output_tokens, llm_calls, cost_usd, created_at, updated_at, models, "
    "ended_at, purged_at, node, tier, state_since, env, egress";

std::string SessionQuery(std::string_view where_and_rest) {
  return fmt::format("SELECT {} FROM sessions {}", kSessionColumns, where_and_rest);
}

Result<Session> ReadSession(const Stmt& row) {
  Session s;
  s.id = row.Text(0);
  const std::string state = row.Text(1);
  auto parsed = ParseState(state);
  if (!parsed) {
    return Errorf(ErrorCode::kInternal, "session {} has unknown state '{}'", s.id, state);
  }
  s.state = *parsed;
  s.image = row.Text(2);
  s.backend = row.Text(3);
  s.model = row.Text(4);
  AIRLOCK_ASSIGN_OR_RETURN(s.command, row.JsonColumn(5));
  AIRLOCK_ASSIGN_OR_RETURN(s.limits, row.JsonColumn(6));
  AIRLOCK_ASSIGN_OR_RETURN(s.metadata, row.JsonColumn(7));
  s.token_hash = row.Text(8);
  s.sandbox_handle = row.Text(9);
  if (!row.IsNull(10)) {
    s.result = row.Text(10);
  }
  s.usage.input_tokens = row.Int(11);
  s.usage.output_tokens = row.Int(12);
  s.usage.llm_calls = row.Int(13);
  s.usage.cost_usd = row.Real(14);
  s.created_at = row.Int(15);
  s.updated_at = row.Int(16);
  AIRLOCK_ASSIGN_OR_RETURN(s.models, row.JsonColumn(17));
  if (!row.IsNull(18)) {
    s.ended_at = row.Int(18);
  }
  if (!row.IsNull(19)) {
    s.purged_at = row.Int(19);
  }
  s.node = row.Text(20);
  const std::string tier = row.Text(21);
  auto parsed_tier = ParseTier(tier);
  if (!parsed_tier) {
    return Errorf(ErrorCode::kInternal, "session {} has unknown tier '{}'", s.id, tier);
  }
  s.tier = *parsed_tier;
  s.state_since = row.Int(22);
  AIRLOCK_ASSIGN_OR_RETURN(s.env, row.JsonColumn(23));
  AIRLOCK_ASSIGN_OR_RETURN(s.egress, row.JsonColumn(24));
  return s;
}

Result<Message> ReadMessage(const Stmt& row) {
  Message m;
  m.id = row.Int(0);
  if (!row.IsNull(1)) {
    m.position = row.Int(1);
  }
  AIRLOCK_ASSIGN_OR_RETURN(m.body, row.JsonColumn(2));
  m.created_at = row.Int(3);
  return m;
}

Result<Session> SelectSession(Connection& c, std::string_view id) {
  static const std::string kSql = SessionQuery("WHERE id = ?1");
  AIRLOCK_ASSIGN_OR_RETURN(Stmt stmt, c.Prepare(kSql));
  stmt.Bind(id);
  AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) {
    return std::unexpected(SessionNotFound(id));
  }
  return ReadSession(stmt);
}

Result<SessionState> SelectState(Connection& c, std::string_view id) {
  AIRLOCK_ASSIGN_OR_RETURN(Stmt stmt, c.Prepare("SELECT state FROM sessions WHERE id = ?1"));
  stmt.Bind(id);
  AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) {
    return std::unexpected(SessionNotFound(id));
  }
  const std::string state = stmt.Text(0);
  auto parsed = ParseState(state);
  if (!parsed) {
    return Errorf(ErrorCode::kInternal, "session {} has unknown state '{}'", id, state);
  }
  return *parsed;
}

// kUnauthenticated unless `token_hash` is empty or still the session's token hash.
Status RequireTokenHash(Connection& c, std::string_view id, std::string_view token_hash) {
  if (token_hash.empty()) return Ok();
  AIRLOCK_ASSIGN_OR_RETURN(Stmt stmt, c.Prepare("SELECT token_hash FROM sessions WHERE id = ?1"));
  stmt.Bind(id);
  AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return std::unexpected(SessionNotFound(id));
  if (stmt.Text(0) != token_hash) {
    return MakeError(ErrorCode::kUnauthenticated, "invalid, expired or revoked session token");
  }
  return Ok();
}

Status RequireSession(Connection& c, std::string_view id) {
  AIRLOCK_ASSIGN_OR_RETURN(Stmt stmt, c.Prepare("SELECT 1 FROM sessions WHERE id = ?1"));
  stmt.Bind(id);
  AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) {
    return std::unexpected(SessionNotFound(id));
  }
  return Ok();
}

// The conversation in position order, then (with `include_pending`) the inbox in id order.
Result<std::vector<Message>> SelectMessages(Connection& c, std::string_view session_id,
                                            bool include_pending) {
  std::vector<Message> out;
  auto collect = [&](const char* sql) -> Status {
    AIRLOCK_ASSIGN_OR_RETURN(Stmt stmt, c.Prepare(sql));
    stmt.Bind(session_id);
    for (;;) {
      AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (!row) {
        return Ok();
      }
      AIRLOCK_ASSIGN_OR_RETURN(Message m, ReadMessage(stmt));
      out.push_back(std::move(m));
    }
  };
  AIRLOCK_TRY(
      collect("SELECT id, position, body, created_at FROM messages WHERE session_id = ?1 "
              "AND position IS NOT NULL AND superseded_at IS NULL ORDER BY position"));
  if (include_pending) {
    AIRLOCK_TRY(
        collect("SELECT id, position, body, created_at FROM messages "
                "WHERE session_id = ?1 AND position IS NULL ORDER BY id"));
  }
  return out;
}

// Reserves `count` conversation positions of a session and returns the first. The session's
// next position is its conversation's version (Store::ReadConversation): every change to the
// conversation goes through here.
Result<int64_t> ReservePositions(Connection& c, std::string_view id, int64_t count) {
  AIRLOCK_ASSIGN_OR_RETURN(
      Stmt stmt, c.Prepare("UPDATE sessions SET next_position = next_position + ?2 WHERE id = ?1 "
                           "RETURNING next_position - ?2"));
  stmt.Bind(id, count);
  AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) {
    return std::unexpected(SessionNotFound(id));
  }
  return stmt.Int(0);
}

// Appends an event with the session's next seq and adds it to the session's event totals;
// runs inside the caller's write transaction.
Result<Event> InsertEvent(Connection& c, std::string_view session_id, std::string_view type,
                          const Json& data, int64_t now) {
  Event e{std::string(session_id), 0, std::string(type), data, now};
  const std::string text = DumpJson(data);
  {
    AIRLOCK_ASSIGN_OR_RETURN(
        Stmt stmt, c.Prepare("UPDATE sessions SET next_event_seq = next_event_seq + 1, "
                             "event_count = event_count + 1, event_bytes = event_bytes + ?2 "
                             "WHERE id = ?1 RETURNING next_event_seq - 1"));
    stmt.Bind(session_id, static_cast<int64_t>(type.size() + text.size()));
    AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) {
      return std::unexpected(SessionNotFound(session_id));
    }
    e.seq = stmt.Int(0);
  }
  AIRLOCK_ASSIGN_OR_RETURN(Stmt stmt,
                           c.Prepare("INSERT INTO events (session_id, seq, type, data, created_at) "
                                     "VALUES (?1, ?2, ?3, ?4, ?5)"));
  stmt.Bind(session_id, e.seq, type, text, now);
  AIRLOCK_TRY(stmt.Run());
  return e;
}

std::string JoinStates(const std::vector<SessionState>& states) {
  if (states.empty()) {
    return "(no state)";
  }
  std::string out;
  for (size_t i = 0; i < states.size(); ++i) {
    if (i > 0) {
      out += i + 1 == states.size() ? " or " : ", ";
    }
    out += StateName(states[i]);
  }
  return out;
}

Status ValidateUsage(const Usage& u) {
  if (u.input_tokens < 0 || u.output_tokens < 0 || u.llm_calls < 0 || !(u.cost_usd >= 0)) {
    return MakeError(ErrorCode::kInvalidArgument, "usage counts and cost must be non-negative");
  }
  return Ok();
}

class SqliteStore final : public Store {
 public:
  explicit SqliteStore(std::unique_ptr<Connection> writer) : writer_(std::move(writer)) {
    // Replaces the automatic checkpoint's hook (wal_autocheckpoint = 0 turned it off).
    sqlite3_wal_hook(writer_->raw(), &SqliteStore::AfterCommit, this);
  }

  ~SqliteStore() override {
    {
      std::lock_guard lock(checkpoint_mu_);
      stopping_ = true;
    }
    checkpoint_cv_.notify_all();
    if (checkpointer_.joinable()) checkpointer_.join();
  }

  // Moves WAL checkpoints off the request path. SQLite's automatic checkpoint runs inside the
  // COMMIT that crosses the threshold (1000 pages): one request in a few hundred paid for
  // copying the WAL back into the database (the p99 of the LLM proxy benchmark). Instead the
  // writer never checkpoints (wal_autocheckpoint = 0) and this thread, on a connection of its
  // own, runs a PASSIVE checkpoint (it waits for no one and no one waits for it) once the WAL
  // holds 1000 pages, and a TRUNCATE one when the WAL has grown large while readers kept it
  // pinned.
  void StartCheckpointer(std::unique_ptr<Connection> conn) {
    checkpoint_conn_ = std::move(conn);
    wal_path_ = std::string(sqlite3_db_filename(checkpoint_conn_->raw(), "main")) + "-wal";
    checkpointer_ = std::thread([this] { CheckpointLoop(); });
  }

  void AddReader(std::unique_ptr<Connection> reader) { readers_.Add(std::move(reader)); }

  Status Migrate() override {
    std::lock_guard lock(writer_mu_);
    Connection& c = *writer_;
    AIRLOCK_TRY(
        c.Exec("CREATE TABLE IF NOT EXISTS schema_migrations ("
               "version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
               "creating schema_migrations"));
    {
      AIRLOCK_ASSIGN_OR_RETURN(
          Stmt stmt, c.Prepare("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"));
      AIRLOCK_TRY(stmt.Step());
      const int64_t current = stmt.Int(0);
      if (current > kLatestVersion) {
        return Errorf(ErrorCode::kInternal,
                      "database schema version {} is newer than this build supports ({}); "
                      "refusing to run an older binary against it",
                      current, kLatestVersion);
      }
    }
    for (const Migration& m : kMigrations) {
      // The check is inside the transaction so that two processes migrating at once cannot
      // both apply a step.
      auto applied = InTransaction(c, [&](Connection& tx) -> Result<bool> {
        {
          AIRLOCK_ASSIGN_OR_RETURN(
              Stmt stmt, tx.Prepare("SELECT 1 FROM schema_migrations WHERE version = ?1"));
          stmt.Bind(m.version);
          AIRLOCK_ASSIGN_OR_RETURN(bool done, stmt.Step());
          if (done) {
            return false;
          }
        }
        AIRLOCK_TRY(tx.Exec(m.sql, fmt::format("schema migration {}", m.version)));
        AIRLOCK_ASSIGN_OR_RETURN(
            Stmt stmt,
            tx.Prepare("INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)"));
        stmt.Bind(m.version, NowMillis());
        AIRLOCK_TRY(stmt.Run());
        return true;
      });
      if (!applied) {
        return std::unexpected(std::move(applied).error());
      }
    }
    return Ok();
  }

  Status AddOperatorKey(const OperatorKey& key) override {
    if (key.name.empty() || key.hash.empty()) {
      return MakeError(ErrorCode::kInvalidArgument, "operator key needs a name and a hash");
    }
    const int64_t created_at = key.created_at > 0 ? key.created_at : NowMillis();
    return Write([&](Connection& c) -> Status {
      {
        AIRLOCK_ASSIGN_OR_RETURN(Stmt stmt,
                                 c.Prepare("SELECT 1 FROM operator_keys WHERE name = ?1"));
        stmt.Bind(key.name);
        AIRLOCK_ASSIGN_OR_RETURN(bool exists, stmt.Step());
        if (exists) {
          return Errorf(ErrorCode::kConflict, "operator key \"{}\" already exists", key.name);
        }
      }
      AIRLOCK_ASSIGN_OR_RETURN(
          Stmt stmt,
          c.Prepare("INSERT INTO operator_keys (name, hash, created_at) VALUES (?1, ?2, ?3)"));
      stmt.Bind(key.name, key.hash, created_at);
      auto done = stmt.Run();
      if (!done && done.error().code == ErrorCode::kConflict) {
        return MakeError(ErrorCode::kConflict, "another operator key has the same key value");
      }
      return done;
    });
  }

  Result<std::vector<OperatorKey>> ListOperatorKeys() override {
    return Read([&](Connection& c) -> Result<std::vector<OperatorKey>> {
      AIRLOCK_ASSIGN_OR_RETURN(
          Stmt stmt, c.Prepare("SELECT name, hash, created_at FROM operator_keys ORDER BY name"));
      std::vector<OperatorKey> keys;
      for (;;) {
        AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
        if (!row) {
          break;
        }
        keys.push_back(OperatorKey{stmt.Text(0), stmt.Text(1), stmt.Int(2)});
      }
      return keys;
    });
  }

  Status CreateSession(const Session& s, const Json& task_message) override {
    if (s.id.empty()) {
      return MakeError(ErrorCode::kInvalidArgument, "session id is empty");
    }
    const int64_t now = NowMillis();
    const int64_t created_at = s.created_at > 0 ? s.created_at : now;
    const int64_t updated_at = s.updated_at > 0 ? s.updated_at : created_at;
    return Write([&](Connection& c) -> Status {
      {
        AIRLOCK_ASSIGN_OR_RETURN(
            Stmt stmt,
            c.Prepare("INSERT INTO sessions (id, state, image, backend, model, command, limits, "
                      "metadata, token_hash, sandbox_handle, result, input_tokens, output_tokens, "
                      "llm_calls, cost_usd, created_at, updated_at, models, node, tier, "
                      "state_since, env, egress) VALUES "
                      "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, "
                      "?17, ?18, ?19, ?20, ?16, ?21, ?22)"));
        stmt.Bind(s.id, StateName(s.state), s.image, s.backend, s.model, DumpJson(s.command),
                  DumpJson(s.limits), DumpJson(s.metadata), s.token_hash, s.sandbox_handle,
                  s.result, s.usage.input_tokens, s.usage.output_tokens, s.usage.llm_calls,
                  s.usage.cost_usd, created_at, updated_at,
                  DumpJson(s.models.is_array() ? s.models : Json::array()), s.node,
                  TierName(SuspendTier::kActive),
                  DumpJson(s.env.is_object() ? s.env : Json::object()),
                  DumpJson(s.egress.is_object() ? s.egress : Json::object()));
        auto done = stmt.Run();
        if (!done && done.error().code == ErrorCode::kConflict) {
          // Either the id or the token hash is taken; neither is expected with random values.
          return Errorf(ErrorCode::kConflict, "session {} or its token already exists", s.id);
        }
        AIRLOCK_TRY(done);
      }
      if (!task_message.is_null()) {
        AIRLOCK_ASSIGN_OR_RETURN(
            Stmt stmt, c.Prepare("INSERT INTO messages (session_id, position, body, created_at) "
                                 "VALUES (?1, NULL, ?2, ?3)"));
        stmt.Bind(s.id, DumpJson(task_message), now);
        AIRLOCK_TRY(stmt.Run());
      }
      Json data = {{"image", s.image}, {"backend", s.backend}, {"model", s.model}};
      AIRLOCK_TRY(InsertEvent(c, s.id, "session.created", data, now));
      if (s.state != SessionState::kStarting) {
        AIRLOCK_TRY(InsertEvent(
            c, s.id, "session.state",
            Json{{"from", StateName(SessionState::kStarting)}, {"to", StateName(s.state)}}, now));
      }
      return Ok();
    });
  }

  Result<Session> GetSession(std::string_view id) override {
    return Read([&](Connection& c) { return SelectSession(c, id); });
  }

  Result<Session> GetSessionByTokenHash(std::string_view token_hash) override {
    // Revoked sessions carry '', so an empty hash must never reach the query.
    if (token_hash.empty()) {
      return MakeError(ErrorCode::kNotFound, "no session has this token");
    }
    return Read([&](Connection& c) -> Result<Session> {
      // The `!= ''` term repeats the partial index's condition so the planner can use it.
      static const std::string kSql = SessionQuery("WHERE token_hash = ?1 AND token_hash != ''");
      AIRLOCK_ASSIGN_OR_RETURN(Stmt stmt, c.Prepare(kSql));
      stmt.Bind(token_hash);
      AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (!row) {
        return MakeError(ErrorCode::kNotFound, "no session has this token");
      }
      return ReadSession(stmt);
    });
  }

  Result<std::vector<Session>> ListSessions(const ListSessionsQuery& q) override {
    const int limit = std::clamp(q.limit, 1, kMaxListSessions);
    return Read([&](Connection& c) -> Result<std::vector<Session>> {
      // The cursor is the (created_at, id) of the before_id session: newest first means the
      // next page holds rows strictly below it in that order.
      int64_t cursor_created = 0;
      if (q.before_id) {
        AIRLOCK_ASSIGN_OR_RETURN(Stmt stmt,
                                 c.Prepare("SELECT created_at FROM sessions WHERE id = ?1"));
        stmt.Bind(*q.before_id);
        AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
        if (!row) {
          return Errorf(ErrorCode::kInvalidArgument, "before: no session {}", *q.before_id);
        }
        cursor_created = stmt.Int(0);
      }
      static const std::string kAll = SessionQuery("ORDER BY created_at DESC, id DESC LIMIT ?1");
      static const std::string kByState =
          SessionQuery("WHERE state = ?2 ORDER BY created_at DESC, id DESC LIMIT ?1");
      static const std::string kBefore = SessionQuery(
          "WHERE (created_at < ?3 OR (created_at = ?3 AND id < ?4)) "
          "ORDER BY created_at DESC, id DESC LIMIT ?1");
      static const std::string kByStateBefore = SessionQuery(
          "WHERE state = ?2 AND (created_at < ?3 OR (created_at = ?3 AND id < ?4)) "
          "ORDER BY created_at DESC, id DESC LIMIT ?1");
      const std::string& sql =
          q.state ? (q.before_id ? kByStateBefore : kByState) : (q.before_id ? kBefore : kAll);
      AIRLOCK_ASSIGN_OR_RETURN(Stmt stmt, c.Prepare(sql));
      std::optional<std::string> state;
      if (q.state) {
        state = std::string(StateName(*q.state));
      }
      if (q.before_id) {
        stmt.Bind(limit, state, cursor_created, *q.before_id);
      } else if (state) {
        stmt.Bind(limit, *state);
      } else {
        stmt.Bind(limit);
      }
      std::vector<Session> out;
      for (;;) {
        AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
        if (!row) {
          break;
        }
        AIRLOCK_ASSIGN_OR_RETURN(Session s, ReadSession(stmt));
        out.push_back(std::move(s));
      }
      return out;
    });
  }

  Result<Session> ChangeState(std::string_view id, const StateChange& change) override {
    const int64_t now = NowMillis();
    return Write([&](Connection& c) -> Result<Session> {
      AIRLOCK_ASSIGN_OR_RETURN(SessionState current, SelectState(c, id));
      if (std::find(change.from.begin(), change.from.end(), current) == change.from.end()) {
        return Errorf(ErrorCode::kConflict, "session {} is {}; it can become {} only from {}", id,
                      StateName(current), StateName(change.to), JoinStates(change.from));
      }
      if (!change.token_hash.empty()) {
        AIRLOCK_ASSIGN_OR_RETURN(Stmt stmt,
                                 c.Prepare("SELECT token_hash FROM sessions WHERE id = ?1"));
        stmt.Bind(id);
        AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
        if (!row || stmt.Text(0) != change.token_hash) return RevokedTokenError();
      }
      const SuspendTier tier =
          change.to == SessionState::kSuspended ? change.tier : SuspendTier::kActive;
      {
        // The right-hand sides see the row as it was: state_since moves only when the state
        // or the tier changes.
        AIRLOCK_ASSIGN_OR_RETURN(
            Stmt stmt, c.Prepare("UPDATE sessions SET state = ?2, updated_at = ?3, "
                                 "result = CASE WHEN ?4 THEN ?5 ELSE result END, "
                                 "token_hash = CASE WHEN ?6 THEN '' ELSE token_hash END, "
                                 "sandbox_handle = CASE WHEN ?7 THEN ?8 ELSE sandbox_handle END, "
                                 "ended_at = CASE WHEN ?9 THEN ?3 ELSE ended_at END, "
                                 "state_since = CASE WHEN state != ?2 OR tier != ?10 THEN ?11 "
                                 "ELSE state_since END, tier = ?10 "
                                 "WHERE id = ?1"));
        stmt.Bind(id, StateName(change.to), now, change.result.has_value() ? 1 : 0, change.result,
                  change.revoke_token ? 1 : 0, change.sandbox_handle.has_value() ? 1 : 0,
                  change.sandbox_handle, IsTerminal(change.to) ? 1 : 0, TierName(tier),
                  change.at > 0 ? change.at : now);
        AIRLOCK_TRY(stmt.Run());
      }
      Json data = {{"from", StateName(current)}, {"to", StateName(change.to)}};
      if (change.result) {
        data["result"] = *change.result;
      }
      if (change.to == SessionState::kSuspended) {
        data["tier"] = TierName(tier);
      }
      AIRLOCK_TRY(InsertEvent(c, id, "session.state", data, now));
      return SelectSession(c, id);
    });
  }

  Status SetSandboxHandle(std::string_view id, std::string_view handle) override {
    return Write([&](Connection& c) -> Status {
      AIRLOCK_ASSIGN_OR_RETURN(SessionState state, SelectState(c, id));
      (void)state;  // only: does the session exist
      AIRLOCK_ASSIGN_OR_RETURN(Stmt stmt,
                               c.Prepare("UPDATE sessions SET sandbox_handle = ?2 WHERE id = ?1"));
      stmt.Bind(id, handle);
      return stmt.Run();
    });
  }

  Result<Session> RestartSandbox(std::string_view id, std::string_view node,
                                 std::string_view token_hash, const Json& data) override {
    const int64_t now = NowMillis();
    return Write([&](Connection& c) -> Result<Session> {
      AIRLOCK_ASSIGN_OR_RETURN(Session before, SelectSession(c, id));
      const SessionState current = before.state;
      if (current != SessionState::kRunning && current != SessionState::kSuspended) {
        return Errorf(ErrorCode::kConflict,
                      "session {} is {}; only a running or suspended session gets a new sandbox",
                      id, StateName(current));
      }
      if (before.node != node) {
        return Errorf(ErrorCode::kConflict, "session {} is on node \"{}\", not \"{}\"", id,
                      before.node, node);
      }
      AIRLOCK_TRY(RunWithToken(c, id, current, token_hash, /*clear_handle=*/true, now));
      AIRLOCK_TRY(InsertEvent(c, id, "session.sandbox_restart", data, now));
      return SelectSession(c, id);
    });
  }

  // The session running (so tier active) with the token `token_hash` (RestartSandbox,
  // IssueToken), and its change of state recorded if it was not running; `clear_handle` for a
  // fresh sandbox. state_since moves when the state or the tier changes.
  static Status RunWithToken(Connection& c, std::string_view id, SessionState current,
                             std::string_view token_hash, bool clear_handle, int64_t now) {
    AIRLOCK_ASSIGN_OR_RETURN(
        Stmt stmt,
        c.Prepare(clear_handle
                      ? "UPDATE sessions SET state = ?2, updated_at = ?3, token_hash = ?4, "
                        "sandbox_handle = '', state_since = CASE WHEN state != ?2 OR tier != ?5 "
                        "THEN ?3 ELSE state_since END, tier = ?5 WHERE id = ?1"
                      : "UPDATE sessions SET state = ?2, updated_at = ?3, token_hash = ?4, "
                        "state_since = CASE WHEN state != ?2 OR tier != ?5 THEN ?3 "
                        "ELSE state_since END, tier = ?5 WHERE id = ?1"));
    stmt.Bind(id, StateName(SessionState::kRunning), now, token_hash,
              TierName(SuspendTier::kActive));
    AIRLOCK_TRY(stmt.Run());
    if (current != SessionState::kRunning) {
      AIRLOCK_TRY(InsertEvent(
          c, id, "session.state",
          Json{{"from", StateName(current)}, {"to", StateName(SessionState::kRunning)}}, now));
    }
    return Ok();
  }

  Result<Session> IssueToken(std::string_view id, std::string_view node,
                             std::string_view token_hash) override {
    const int64_t now = NowMillis();
    return Write([&](Connection& c) -> Result<Session> {
      AIRLOCK_ASSIGN_OR_RETURN(Session before, SelectSession(c, id));
      const SessionState current = before.state;
      if ((current != SessionState::kStarting && current != SessionState::kRunning) ||
          !before.token_hash.empty() || before.node != node) {
        return Errorf(ErrorCode::kConflict,
                      "session {} is {} on node \"{}\"{}; no token is issued for it", id,
                      StateName(current), before.node,
                      before.token_hash.empty() ? "" : " and has its token");
      }
      AIRLOCK_TRY(RunWithToken(c, id, current, token_hash, /*clear_handle=*/false, now));
      return SelectSession(c, id);
    });
  }

  Status Heartbeat(std::string_view node, int64_t now_ms) override {
    return Write([&](Connection& c) -> Status {
      AIRLOCK_ASSIGN_OR_RETURN(
          Stmt stmt,
          c.Prepare("INSERT INTO nodes (id, heartbeat_at) VALUES (?1, ?2) "
                    "ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at"));
      stmt.Bind(node, now_ms);
      return stmt.Run();
    });
  }

  Result<std::vector<NodeInfo>> ListNodes() override {
    return Read([&](Connection& c) -> Result<std::vector<NodeInfo>> {
      AIRLOCK_ASSIGN_OR_RETURN(Stmt stmt,
                               c.Prepare("SELECT id, heartbeat_at FROM nodes ORDER BY id"));
      std::vector<NodeInfo> out;
      for (;;) {
        AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
        if (!row) break;
        out.push_back({stmt.Text(0), stmt.Int(1)});
      }
      return out;
    });
  }

  Result<Session> AdoptSession(std::string_view id, std::string_view from,
                               std::string_view to) override {
    const int64_t now = NowMillis();
    return Write([&](Connection& c) -> Result<Session> {
      AIRLOCK_ASSIGN_OR_RETURN(Session s, SelectSession(c, id));
      if (IsTerminal(s.state) || s.node != from) {
        return Errorf(ErrorCode::kConflict, "session {} is {} on node \"{}\", not live on \"{}\"",
                      id, StateName(s.state), s.node, from);
      }
      {
        AIRLOCK_ASSIGN_OR_RETURN(
            Stmt stmt, c.Prepare("UPDATE sessions SET node = ?2, updated_at = ?3 WHERE id = ?1"));
        stmt.Bind(id, to, now);
        AIRLOCK_TRY(stmt.Run());
      }
      AIRLOCK_TRY(InsertEvent(c, id, "session.node", Json{{"from", from}, {"to", to}}, now));
      return SelectSession(c, id);
    });
  }

  Result<int64_t> AddUserMessage(std::string_view session_id, const Json& message) override {
    const int64_t now = NowMillis();
    return Write([&](Connection& c) -> Result<int64_t> {
      AIRLOCK_ASSIGN_OR_RETURN(SessionState state, SelectState(c, session_id));
      if (IsTerminal(state)) {
        return Errorf(ErrorCode::kConflict, "session {} is {} and takes no more messages",
                      session_id, StateName(state));
      }
      AIRLOCK_ASSIGN_OR_RETURN(
          Stmt stmt, c.Prepare("INSERT INTO messages (session_id, position, body, created_at) "
                               "VALUES (?1, NULL, ?2, ?3) RETURNING id"));
      stmt.Bind(session_id, DumpJson(message), now);
      AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (!row) {
        return MakeError(ErrorCode::kInternal, "insert returned no message id");
      }
      return stmt.Int(0);
    });
  }

  Result<std::vector<Message>> TakeInbox(std::string_view session_id,
                                         std::string_view token_hash) override {
    return Write([&](Connection& c) -> Result<std::vector<Message>> {
      AIRLOCK_TRY(RequireSession(c, session_id));
      AIRLOCK_TRY(RequireTokenHash(c, session_id, token_hash));
      std::vector<Message> pending;
      {
        AIRLOCK_ASSIGN_OR_RETURN(
            Stmt stmt, c.Prepare("SELECT id, position, body, created_at FROM messages "
                                 "WHERE session_id = ?1 AND position IS NULL ORDER BY id"));
        stmt.Bind(session_id);
        for (;;) {
          AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
          if (!row) {
            break;
          }
          AIRLOCK_ASSIGN_OR_RETURN(Message m, ReadMessage(stmt));
          pending.push_back(std::move(m));
        }
      }
      if (pending.empty()) {
        return pending;
      }
      AIRLOCK_ASSIGN_OR_RETURN(
          int64_t position, ReservePositions(c, session_id, static_cast<int64_t>(pending.size())));
      for (Message& m : pending) {
        m.position = position++;
        AIRLOCK_ASSIGN_OR_RETURN(Stmt stmt,
                                 c.Prepare("UPDATE messages SET position = ?2 WHERE id = ?1"));
        stmt.Bind(m.id, *m.position);
        AIRLOCK_TRY(stmt.Run());
      }
      return pending;
    });
  }

  Status AppendConversation(std::string_view session_id,
                            const std::vector<Json>& messages) override {
    const int64_t now = NowMillis();
    return Write([&](Connection& c) -> Status {
      if (messages.empty()) {
        return RequireSession(c, session_id);
      }
      AIRLOCK_ASSIGN_OR_RETURN(
          int64_t position, ReservePositions(c, session_id, static_cast<int64_t>(messages.size())));
      for (const Json& body : messages) {
        AIRLOCK_ASSIGN_OR_RETURN(
            Stmt stmt, c.Prepare("INSERT INTO messages (session_id, position, body, created_at) "
                                 "VALUES (?1, ?2, ?3, ?4)"));
        stmt.Bind(session_id, position++, DumpJson(body), now);
        AIRLOCK_TRY(stmt.Run());
      }
      return Ok();
    });
  }

  Result<std::vector<Message>> ListMessages(std::string_view session_id,
                                            bool include_pending) override {
    return Read([&](Connection& c) -> Result<std::vector<Message>> {
      AIRLOCK_TRY(RequireSession(c, session_id));
      return SelectMessages(c, session_id, include_pending);
    });
  }

  Result<Conversation> ReadConversation(std::string_view session_id,
                                        int64_t known_version) override {
    return Read([&](Connection& c) -> Result<Conversation> {
      Conversation out;
      // The version first: messages read after it are at least as new as it says.
      AIRLOCK_ASSIGN_OR_RETURN(Stmt stmt,
                               c.Prepare("SELECT next_position FROM sessions WHERE id = ?1"));
      stmt.Bind(session_id);
      AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (!row) return std::unexpected(SessionNotFound(session_id));
      out.version = stmt.Int(0);
      if (out.version != known_version) {
        AIRLOCK_ASSIGN_OR_RETURN(out.messages, SelectMessages(c, session_id, false));
      }
      return out;
    });
  }

  Result<Event> AppendEvent(std::string_view session_id, std::string_view type,
                            const Json& data) override {
    const int64_t now = NowMillis();
    return Write([&](Connection& c) { return InsertEvent(c, session_id, type, data, now); });
  }

  Result<QuotaAppend> AppendEventWithinQuota(std::string_view session_id, std::string_view type,
                                             const Json& data, const EventQuota& quota) override {
    std::vector<EventAppend> one{{session_id, type, &data, {}}};
    return std::move(AppendEventsWithinQuota(one, quota).front());
  }

  // Every append joins the same group commit (see Write), so they share its transactions.
  std::vector<Result<QuotaAppend>> AppendEventsWithinQuota(const std::vector<EventAppend>& events,
                                                           const EventQuota& quota) override {
    const int64_t now = NowMillis();
    std::vector<Result<QuotaAppend>> results;
    PendingWrite group;
    group.run = [&](Connection& c) {
      Status done = AppendGroup(c, events, quota, now, results);
      if (!done) results.assign(events.size(), std::unexpected(done.error()));
      return done.has_value();
    };
    PendingWrite* const one[] = {&group};
    if (!events.empty()) RunInBatch(one);
    if (group.failed) results.assign(events.size(), std::unexpected(*group.failed));
    return results;
  }

  // The events of one group, in one write: each session's counters are read once, its events
  // take the next numbers in order, and the counters are written back once. Per event that is
  // one INSERT, where AppendWithinQuota makes a savepoint and three statements; the answers
  // are the same as appending the events one after another (each sees the quota as the ones
  // before it left it). An error of the database itself fails the whole group.
  static Status AppendGroup(Connection& c, const std::vector<EventAppend>& events,
                            const EventQuota& quota, int64_t now,
                            std::vector<Result<QuotaAppend>>& answers) {
    GroupSessions sessions;
    for (const EventAppend& ev : events) {
      auto [it, fresh] = sessions.try_emplace(ev.session_id);
      if (!fresh) continue;
      AIRLOCK_ASSIGN_OR_RETURN(
          Stmt read, c.Prepare("SELECT event_count, event_bytes, event_quota_noticed, token_hash, "
                               "next_event_seq FROM sessions WHERE id = ?1"));
      read.Bind(ev.session_id);
      AIRLOCK_ASSIGN_OR_RETURN(bool row, read.Step());
      if (row) {
        it->second = EventCounters{read.Text(3), read.Int(0),      read.Int(1),
                                   read.Int(4),  read.Int(2) != 0, false};
      }
    }
    const std::vector<EventRow> rows = PlanEventGroup(events, quota, now, sessions, answers);
    AIRLOCK_ASSIGN_OR_RETURN(
        Stmt insert, c.Prepare("INSERT INTO events (session_id, seq, type, data, created_at) "
                               "VALUES (?1, ?2, ?3, ?4, ?5)"));
    for (const EventRow& r : rows) {
      insert.Reset().Bind(r.session_id, r.seq, r.type, r.data, now);
      AIRLOCK_TRY(insert.Run());
    }
    AIRLOCK_ASSIGN_OR_RETURN(
        Stmt update,
        c.Prepare("UPDATE sessions SET next_event_seq = ?2, event_count = ?3, event_bytes = ?4, "
                  "event_quota_noticed = ?5 WHERE id = ?1"));
    for (const auto& [id, s] : sessions) {
      if (!s || !s->changed) continue;
      update.Reset().Bind(id, s->next_seq, s->count, s->bytes,
                          static_cast<int64_t>(s->noticed ? 1 : 0));
      AIRLOCK_TRY(update.Run());
    }
    return Ok();
  }

  Result<std::vector<Event>> ListEvents(std::string_view session_id, int64_t after,
                                        int limit) override {
    return Read([&](Connection& c) -> Result<std::vector<Event>> {
      AIRLOCK_TRY(RequireSession(c, session_id));
      std::vector<Event> out;
      if (limit <= 0) {
        return out;
      }
      AIRLOCK_ASSIGN_OR_RETURN(
          Stmt stmt, c.Prepare("SELECT seq, type, data, created_at FROM events "
                               "WHERE session_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"));
      stmt.Bind(session_id, after, limit);
      for (;;) {
        AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
        if (!row) {
          break;
        }
        Event e{std::string(session_id), stmt.Int(0), stmt.Text(1), Json::object(), stmt.Int(3)};
        AIRLOCK_ASSIGN_OR_RETURN(e.data, stmt.JsonColumn(2));
        out.push_back(std::move(e));
      }
      return out;
    });
  }

  Status RecordUsage(std::string_view session_id, std::string_view model,
                     const Usage& usage) override {
    AIRLOCK_TRY(ValidateUsage(usage));
    const int64_t now = NowMillis();
    return Write([&](Connection& c) -> Status {
      {
        // One call per record, whatever usage.llm_calls says: the contract is one metered call.
        AIRLOCK_ASSIGN_OR_RETURN(
            Stmt stmt, c.Prepare("UPDATE sessions SET input_tokens = input_tokens + ?2, "
                                 "output_tokens = output_tokens + ?3, llm_calls = llm_calls + 1, "
                                 "cost_usd = cost_usd + ?4 WHERE id = ?1 RETURNING 1"));
        stmt.Bind(session_id, usage.input_tokens, usage.output_tokens, usage.cost_usd);
        AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
        if (!row) {
          return std::unexpected(SessionNotFound(session_id));
        }
      }
      AIRLOCK_ASSIGN_OR_RETURN(
          Stmt stmt,
          c.Prepare("INSERT INTO usage (session_id, model, input_tokens, output_tokens, cost_usd, "
                    "created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"));
      stmt.Bind(session_id, model, usage.input_tokens, usage.output_tokens, usage.cost_usd, now);
      return stmt.Run();
    });
  }

  Result<ChatRecorded> RecordChat(std::string_view session_id, const ChatRecord& r) override {
    AIRLOCK_TRY(ValidateUsage(r.usage));
    const int64_t now = NowMillis();
    return Write([&](Connection& c) -> Result<ChatRecorded> {
      ChatRecorded out;
      AIRLOCK_ASSIGN_OR_RETURN(SessionState state, SelectState(c, session_id));
      if (IsTerminal(state)) {
        return Errorf(ErrorCode::kConflict, "session {} is {}", session_id, StateName(state));
      }
      AIRLOCK_TRY(RequireTokenHash(c, session_id, r.token_hash));
      if (r.supersede_after) {
        AIRLOCK_ASSIGN_OR_RETURN(
            Stmt stmt, c.Prepare("UPDATE messages SET superseded_at = ?3 WHERE session_id = ?1 "
                                 "AND position > ?2 AND position <= ?4 AND superseded_at IS NULL"));
        stmt.Bind(session_id, *r.supersede_after, now, r.supersede_through.value_or(INT64_MAX));
        AIRLOCK_TRY(stmt.Run());
      }
      if (!r.messages.empty()) {
        AIRLOCK_ASSIGN_OR_RETURN(
            int64_t position,
            ReservePositions(c, session_id, static_cast<int64_t>(r.messages.size())));
        out.first_position = position;
        for (const Json& body : r.messages) {
          AIRLOCK_ASSIGN_OR_RETURN(
              Stmt stmt, c.Prepare("INSERT INTO messages (session_id, position, body, created_at) "
                                   "VALUES (?1, ?2, ?3, ?4)"));
          stmt.Bind(session_id, position++, DumpJson(body), now);
          AIRLOCK_TRY(stmt.Run());
        }
      } else if (r.supersede_after) {
        // A rewrite that appends nothing still changes the conversation: a position of its
        // own, left unused, moves the version on.
        AIRLOCK_TRY(ReservePositions(c, session_id, 1));
      }
      {
        AIRLOCK_ASSIGN_OR_RETURN(
            Stmt stmt, c.Prepare("UPDATE sessions SET input_tokens = input_tokens + ?2, "
                                 "output_tokens = output_tokens + ?3, llm_calls = llm_calls + 1, "
                                 "cost_usd = cost_usd + ?4, updated_at = ?5 WHERE id = ?1 "
                                 "RETURNING input_tokens, output_tokens, llm_calls, cost_usd, "
                                 "next_position"));
        stmt.Bind(session_id, r.usage.input_tokens, r.usage.output_tokens, r.usage.cost_usd, now);
        AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
        if (!row) return std::unexpected(SessionNotFound(session_id));
        out.totals = Usage{stmt.Int(0), stmt.Int(1), stmt.Int(2), stmt.Real(3)};
        out.version = stmt.Int(4);
      }
      {
        AIRLOCK_ASSIGN_OR_RETURN(
            Stmt stmt,
            c.Prepare(
                "INSERT INTO usage (session_id, model, input_tokens, output_tokens, cost_usd, "
                "created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"));
        stmt.Bind(session_id, r.model, r.usage.input_tokens, r.usage.output_tokens,
                  r.usage.cost_usd, now);
        AIRLOCK_TRY(stmt.Run());
      }
      AIRLOCK_TRY(InsertEvent(c, session_id, "llm.call", r.event_data, now));
      return out;
    });
  }

  Result<UsageReport> GetUsage(const UsageQuery& q) override {
    return Read([&](Connection& c) -> Result<UsageReport> {
      UsageReport rep;
      {
        AIRLOCK_ASSIGN_OR_RETURN(
            Stmt stmt,
            c.Prepare(
                "SELECT model, SUM(input_tokens), SUM(output_tokens), COUNT(*), SUM(cost_usd) "
                "FROM usage WHERE created_at >= ?1 AND created_at < ?2 GROUP BY model "
                "ORDER BY model"));
        stmt.Bind(q.since, q.until);
        for (;;) {
          AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
          if (!row) break;
          Usage u{stmt.Int(1), stmt.Int(2), stmt.Int(3), stmt.Real(4)};
          rep.total.input_tokens += u.input_tokens;
          rep.total.output_tokens += u.output_tokens;
          rep.total.llm_calls += u.llm_calls;
          rep.total.cost_usd += u.cost_usd;
          rep.by_model[stmt.Text(0)] = u;
        }
      }
      AIRLOCK_ASSIGN_OR_RETURN(Stmt stmt, c.Prepare("SELECT COUNT(DISTINCT session_id) FROM usage "
                                                    "WHERE created_at >= ?1 AND created_at < ?2"));
      stmt.Bind(q.since, q.until);
      AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (row) rep.sessions = stmt.Int(0);
      return rep;
    });
  }

  Result<std::vector<std::string>> ListPurgeable(int64_t ended_before, int limit) override {
    return Read([&](Connection& c) -> Result<std::vector<std::string>> {
      // The `IS NOT NULL` terms repeat the partial index's condition so the planner uses it.
      AIRLOCK_ASSIGN_OR_RETURN(
          Stmt stmt,
          c.Prepare("SELECT id FROM sessions WHERE ended_at IS NOT NULL AND purged_at IS NULL "
                    "AND ended_at < ?1 ORDER BY ended_at, id LIMIT ?2"));
      stmt.Bind(ended_before, std::max(limit, 0));
      std::vector<std::string> out;
      for (;;) {
        AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
        if (!row) {
          break;
        }
        out.push_back(stmt.Text(0));
      }
      return out;
    });
  }

  Result<SessionFootprint> Footprint(std::string_view session_id) override {
    return Read([&](Connection& c) -> Result<SessionFootprint> {
      SessionFootprint f;
      {
        AIRLOCK_ASSIGN_OR_RETURN(
            Stmt stmt, c.Prepare("SELECT event_count, event_bytes FROM sessions WHERE id = ?1"));
        stmt.Bind(session_id);
        AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
        if (!row) {
          return std::unexpected(SessionNotFound(session_id));
        }
        f.events = stmt.Int(0);
        f.bytes = stmt.Int(1);
      }
      AIRLOCK_ASSIGN_OR_RETURN(
          Stmt stmt, c.Prepare("SELECT COUNT(*), COALESCE(SUM(length(CAST(body AS BLOB))), 0) "
                               "FROM messages WHERE session_id = ?1"));
      stmt.Bind(session_id);
      AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (row) {
        f.messages = stmt.Int(0);
        f.bytes += stmt.Int(1);
      }
      return f;
    });
  }

  Result<PurgeStep> PurgeSessionStep(std::string_view session_id, int max_rows) override {
    if (max_rows < 1) {
      return MakeError(ErrorCode::kInvalidArgument, "a purge step deletes at least one row");
    }
    const int64_t now = NowMillis();
    return Write([&](Connection& c) -> Result<PurgeStep> {
      AIRLOCK_ASSIGN_OR_RETURN(SessionState state, SelectState(c, session_id));
      if (!IsTerminal(state)) {
        return Errorf(ErrorCode::kConflict, "session {} is {}; only an ended session is purged",
                      session_id, StateName(state));
      }
      PurgeStep step;
      // Deletes up to `limit` rows with `sql` (which returns each row's size) and adds them up.
      auto purge = [&](const std::string& sql, int64_t limit, int64_t* count) -> Status {
        if (limit <= 0) {
          return Ok();
        }
        AIRLOCK_ASSIGN_OR_RETURN(Stmt stmt, c.Prepare(sql));
        stmt.Bind(session_id, limit);
        for (;;) {
          AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
          if (!row) {
            return Ok();
          }
          ++*count;
          step.deleted.bytes += stmt.Int(0);
        }
      };
      AIRLOCK_TRY(
          purge("DELETE FROM events WHERE session_id = ?1 AND seq IN (SELECT seq FROM events "
                "WHERE session_id = ?1 ORDER BY seq LIMIT ?2) "
                "RETURNING length(CAST(type AS BLOB)) + length(CAST(data AS BLOB))",
                max_rows, &step.deleted.events));
      AIRLOCK_TRY(
          purge("DELETE FROM messages WHERE id IN (SELECT id FROM messages "
                "WHERE session_id = ?1 ORDER BY id LIMIT ?2) RETURNING length(CAST(body AS BLOB))",
                max_rows - step.deleted.events, &step.deleted.messages));
      if (step.deleted.messages > 0) {
        // Deleting messages changes the conversation: its version moves (ReservePositions).
        AIRLOCK_TRY(ReservePositions(c, session_id, 1));
      }
      if (step.deleted.events + step.deleted.messages < max_rows) {
        // Nothing is left: the row stays as the session's record, without its contents.
        AIRLOCK_ASSIGN_OR_RETURN(
            Stmt stmt,
            c.Prepare("UPDATE sessions SET purged_at = COALESCE(purged_at, ?2), event_count = 0, "
                      "event_bytes = 0 WHERE id = ?1"));
        stmt.Bind(session_id, now);
        AIRLOCK_TRY(stmt.Run());
        step.done = true;
      }
      return step;
    });
  }

  Result<int64_t> ReleaseFreePages(int64_t max_pages) override {
    std::lock_guard lock(writer_mu_);
    Connection& c = *writer_;
    auto pragma_int = [&](const std::string& sql) -> Result<int64_t> {
      AIRLOCK_ASSIGN_OR_RETURN(Stmt stmt, c.Prepare(sql));
      AIRLOCK_ASSIGN_OR_RETURN(bool row, stmt.Step());
      return row ? stmt.Int(0) : 0;
    };
    AIRLOCK_ASSIGN_OR_RETURN(int64_t mode, pragma_int("PRAGMA auto_vacuum"));
    if (mode != 2 || max_pages <= 0) {  // 2: INCREMENTAL
      return 0;
    }
    AIRLOCK_ASSIGN_OR_RETURN(int64_t before, pragma_int("PRAGMA freelist_count"));
    // Not a cached statement: the page count is part of the pragma's text.
    AIRLOCK_TRY(c.Exec(fmt::format("PRAGMA incremental_vacuum({})", max_pages).c_str(),
                       "incremental vacuum"));
    AIRLOCK_ASSIGN_OR_RETURN(int64_t after, pragma_int("PRAGMA freelist_count"));
    return std::max<int64_t>(before - after, 0);
  }

 private:
  // Runs `body` in a transaction on `c` (BEGIN IMMEDIATE for the writer, so the write lock is
  // taken up front and a busy database shows up here, not halfway through). Commits when
  // `body` succeeds, rolls back otherwise.
  template <typename F>
  static auto InTransaction(Connection& c, F&& body, bool write = true)
      -> std::invoke_result_t<F, Connection&> {
    AIRLOCK_TRY(c.Run(write ? "BEGIN IMMEDIATE" : "BEGIN"));
    auto result = body(c);
    if (result) {
      auto committed = c.Run("COMMIT");
      if (committed) {
        return result;
      }
      result = std::unexpected(std::move(committed).error());
    }
    // A failed statement may already have ended the transaction; ignore "no transaction".
    (void)c.Exec("ROLLBACK", "rollback");
    return result;
  }

  // Group commit. Writes that arrive while another batch commits wait together, and the next
  // of them to run commits them all in one transaction, each in a savepoint of its own: one
  // write that fails rolls back alone, and every caller returns only after the COMMIT that
  // holds its write (so what a method returns is still durable). Under load one commit then
  // carries many writes (the pages they share are written to the WAL once, the write lock is
  // taken once); alone, a write commits at once, as before.
  template <typename F>
  auto Write(F&& body) -> std::invoke_result_t<F, Connection&> {
    using R = std::invoke_result_t<F, Connection&>;
    std::optional<R> result;
    PendingWrite w;
    w.run = [&](Connection& c) {
      result.emplace(body(c));
      return result->has_value();
    };
    PendingWrite* one[] = {&w};
    RunInBatch(one);
    if (w.failed) return std::unexpected(std::move(*w.failed));
    return std::move(*result);
  }

  // `n` writes at once, body(c, i) for each, queued together: as if `n` callers had called
  // Write at the same moment. Answer i is write i's.
  template <typename F>
  auto WriteEach(size_t n, F&& body) -> std::vector<std::invoke_result_t<F, Connection&, size_t>> {
    using R = std::invoke_result_t<F, Connection&, size_t>;
    std::vector<std::optional<R>> results(n);
    std::vector<PendingWrite> writes(n);
    std::vector<PendingWrite*> queued;
    queued.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      writes[i].run = [&, i](Connection& c) {
        results[i].emplace(body(c, i));
        return results[i]->has_value();
      };
      queued.push_back(&writes[i]);
    }
    if (n > 0) RunInBatch(queued);
    std::vector<R> out;
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      if (writes[i].failed) {
        out.push_back(std::unexpected(std::move(*writes[i].failed)));
      } else {
        out.push_back(std::move(*results[i]));
      }
    }
    return out;
  }

  struct PendingWrite {
    std::function<bool(Connection&)> run;  // runs the body; true when it succeeded
    bool done = false;
    std::optional<Error> failed;  // set when the batch's transaction failed as a whole
  };
  static constexpr size_t kMaxBatch = 256;

  // Queues `writes` (in order, together) and returns once all of them are committed or failed.
  void RunInBatch(std::span<PendingWrite* const> writes) {
    std::unique_lock l(batch_mu_);
    queue_.insert(queue_.end(), writes.begin(), writes.end());
    // Batches take the queue from its front, so the last of them is done last.
    PendingWrite& last = *writes.back();
    while (!last.done) {
      if (leading_) {
        batch_cv_.wait(l);
        continue;
      }
      leading_ = true;
      size_t n = std::min(queue_.size(), kMaxBatch);
      std::vector<PendingWrite*> batch(queue_.begin(), queue_.begin() + static_cast<long>(n));
      queue_.erase(queue_.begin(), queue_.begin() + static_cast<long>(n));
      l.unlock();
      {
        std::lock_guard writer(writer_mu_);
        CommitBatch(*writer_, batch);
      }
      l.lock();
      for (PendingWrite* p : batch) p->done = true;
      leading_ = false;
      batch_cv_.notify_all();
    }
  }

  // One transaction for the whole batch. A body that fails is rolled back to its savepoint.
  // A failure that ends the transaction itself (the COMMIT, or an error SQLite answers by
  // rolling everything back: a full disk, an I/O error) fails every write of the batch that
  // had not failed on its own: none of them is in the database.
  static void CommitBatch(Connection& c, const std::vector<PendingWrite*>& batch) {
    auto fail_all = [&](const Error& e) {
      for (PendingWrite* p : batch) p->failed = e;
    };
    if (auto begun = c.Run("BEGIN IMMEDIATE"); !begun) return fail_all(begun.error());
    // Alone in its transaction, a write needs no savepoint: its failure is the transaction's
    // rollback. A savepoint would have SQLite keep the original of every page the write
    // changes in a statement journal (a group of events changes a page per session in it).
    const bool alone = batch.size() == 1;
    for (PendingWrite* p : batch) {
      if (alone) {
        if (p->run(c)) continue;
        (void)c.Exec("ROLLBACK", "rollback");
        return;
      }
      if (auto sp = c.Run("SAVEPOINT write"); !sp) {
        (void)c.Exec("ROLLBACK", "rollback");
        return fail_all(sp.error());
      }
      if (p->run(c)) {
        (void)c.Run("RELEASE write");
        continue;
      }
      // Its own error stays its answer. If the transaction survived, undo only this write.
      if (sqlite3_get_autocommit(c.raw()) || !c.Run("ROLLBACK TO write") ||
          !c.Run("RELEASE write")) {
        Error aborted = MakeError(ErrorCode::kUnavailable,
                                  "the write was rolled back with its batch: another write of the "
                                  "same transaction failed the database")
                            .error();
        (void)c.Exec("ROLLBACK", "rollback");
        for (PendingWrite* q : batch) {
          if (q != p) q->failed = aborted;
        }
        return;
      }
    }
    if (auto committed = c.Run("COMMIT"); !committed) {
      (void)c.Exec("ROLLBACK", "rollback");
      fail_all(committed.error());
    }
  }

  // Reads run in a deferred transaction so that a multi-statement read sees one snapshot.
  template <typename F>
  auto Read(F&& body) -> std::invoke_result_t<F, Connection&> {
    auto lease = readers_.Acquire();
    return InTransaction(*lease, std::forward<F>(body), /*write=*/false);
  }

  // The writer's WAL hook: after each commit, how many frames the WAL holds, and one more
  // commit.
  static int AfterCommit(void* self, sqlite3*, const char*, int frames) {
    auto* store = static_cast<SqliteStore*>(self);
    store->wal_frames_.store(frames, std::memory_order_relaxed);
    store->commits_.fetch_add(1, std::memory_order_relaxed);
    return SQLITE_OK;
  }

  void CheckpointLoop() {
    std::unique_lock lock(checkpoint_mu_);
    bool held = false;  // the last round that ran held the writer so the WAL would start over
    int64_t held_sequence = -1;
    // commits_ when a round last found the whole WAL copied: until the next commit there is
    // nothing to do, and an idle store's rounds end here.
    int64_t copied_through = -1;
    while (!stopping_) {
      checkpoint_cv_.wait_for(lock, std::chrono::milliseconds(kCheckpointIntervalMs));
      if (stopping_) break;
      const int64_t commits = commits_.load(std::memory_order_relaxed);
      if (commits == copied_through) continue;
      // A small WAL is left as it is, as SQLite's own automatic checkpoint would. Once all of
      // it is copied, the next write starts the WAL over, and SQLite then syncs the WAL's
      // new header: a write after every quiet spell paid for an fdatasync (0.4 ms on this
      // project's virtual disk, milliseconds on others).
      if (wal_frames_.load(std::memory_order_relaxed) < kCheckpointPages) {
        held = false;
        continue;
      }
      lock.unlock();
      const std::optional<int> copied = CopyWholeWal();
      const int log_pages = copied.value_or(0);
      if (copied) copied_through = commits;
      if (copied && held && log_pages > kTruncateWalPages &&
          WalCheckpointSequence(wal_path_) == held_sequence) {
        // Held last round, yet the WAL did not start over (readers kept it) and has grown
        // this large: truncate it (this waits for them).
        sqlite3_wal_checkpoint_v2(checkpoint_conn_->raw(), nullptr, SQLITE_CHECKPOINT_TRUNCATE,
                                  nullptr, nullptr);
        held = false;
      } else if (copied && log_pages > kRestartWalPages) {
        // SQLite writes the WAL from its beginning again only when a write begins with every
        // frame copied. Under steady writes that never happens (frames come in while the copy
        // runs), so the file grew until a TRUNCATE, which held every write for 90-180 ms (in
        // SQLite's busy sleep) and left a file that each write then had to grow again. Here
        // the writer waits on its mutex (not in a busy sleep) while the frames added since
        // are copied, and the next write starts the WAL over in place (bench/replicas.sh).
        // The copies before it are made unheld until few frames come in during one, so the
        // writer waits for a small copy only: held right after the first copy, it had to sync
        // and copy the 4-16 MiB written during that one, and held writes for 22-48 ms (the
        // p99 of the events route; BENCHMARKS.md, issue 12's sixth pass).
        CatchUpBeforeHolding(log_pages);
        std::lock_guard writer(writer_mu_);
        if (CopyWholeWal()) copied_through = commits_.load(std::memory_order_relaxed);
        held = true;
        held_sequence = WalCheckpointSequence(wal_path_);
      } else {
        held = false;
      }
      lock.lock();
    }
  }

  // A passive copy of the WAL into the database. Returns the frames the WAL held when all of
  // them were copied; nothing when the copy failed or readers kept some back.
  std::optional<int> CopyWholeWal() {
    int log_pages = 0, checkpointed = 0;
    const int rc = sqlite3_wal_checkpoint_v2(checkpoint_conn_->raw(), nullptr,
                                             SQLITE_CHECKPOINT_PASSIVE, &log_pages, &checkpointed);
    if (rc != SQLITE_OK || checkpointed != log_pages) return std::nullopt;
    return log_pages;
  }

  // Copies the WAL without holding the writer until one copy finds fewer than
  // kHeldCopyFrames new frames (at most kCatchUpCopies copies). `log_pages` is what the last
  // copy found in the WAL.
  void CatchUpBeforeHolding(int log_pages) {
    for (int i = 0; i < kCatchUpCopies; ++i) {
      const std::optional<int> now_pages = CopyWholeWal();
      if (!now_pages || *now_pages - log_pages < kHeldCopyFrames) return;
      log_pages = *now_pages;
    }
  }

  // Each copy begins with an fdatasync of what the WAL took since the last one, and the
  // writer's own writes to the WAL wait while it runs. Every half second, under steady writes
  // that was ~60 MiB and a commit waited up to 16 ms behind it (perf trace); every 100 ms the
  // events route's p99 fell from 17-31 ms to 6.4-10 ms (BENCHMARKS.md, issue 12's sixth pass).
  static constexpr int kCheckpointIntervalMs = 100;
  static constexpr int kCatchUpCopies = 4;
  static constexpr int kHeldCopyFrames = 512;
  static constexpr int kCheckpointPages = 1000;    // SQLite's default wal_autocheckpoint
  static constexpr int kRestartWalPages = 16384;   // 64 MiB of 4 KiB pages
  static constexpr int kTruncateWalPages = 65536;  // 256 MiB

  std::unique_ptr<Connection> writer_;
  std::mutex writer_mu_;
  // Group commit: writes waiting for the next batch, and whether one is being committed.
  std::mutex batch_mu_;
  std::condition_variable batch_cv_;
  std::vector<PendingWrite*> queue_;
  bool leading_ = false;
  ReadPool readers_;
  std::unique_ptr<Connection> checkpoint_conn_;
  std::string wal_path_;
  // Frames in the WAL after the last commit (AfterCommit). Until the first, the WAL may hold
  // what an earlier process left: the first round looks.
  std::atomic<int> wal_frames_{kCheckpointPages};
  std::atomic<int64_t> commits_{0};  // commits that wrote to the WAL (AfterCommit)
  std::thread checkpointer_;
  std::mutex checkpoint_mu_;
  std::condition_variable checkpoint_cv_;
  bool stopping_ = false;
};

// Connection set-up steps, in the order OpenSqliteStore runs them.
Status ValidateOptions(const StoreOptions& options) {
  if (options.path.empty() || options.path == ":memory:" || options.path.starts_with("file:")) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "store path must be a database file (readers open their own connections)");
  }
  if (options.synchronous != "normal" && options.synchronous != "full") {
    return Errorf(ErrorCode::kInvalidArgument,
                  "store synchronous must be \"normal\" or \"full\", not \"{}\"",
                  options.synchronous);
  }
  if (options.busy_timeout_ms < 0) {
    return MakeError(ErrorCode::kInvalidArgument, "store busy_timeout_ms must not be negative");
  }
  if (options.read_connections < 1 || options.read_connections > 64) {
    return Errorf(ErrorCode::kInvalidArgument, "store read_connections must be 1..64, not {}",
                  options.read_connections);
  }
  return Ok();
}

// Switching a file to WAL takes its exclusive lock. When several processes open one new file
// at once (replicas started together), SQLite answers all but one "busy" at once instead of
// calling the busy handler, since each holds the shared lock the others wait on; the losers let
// go and try again until the busy timeout is spent.
Status EnableWal(Connection& c) {
  constexpr auto kWalRetryMax = std::chrono::milliseconds(50);
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(c.busy_timeout_ms());
  std::string mode;
  for (auto pause = std::chrono::milliseconds(1);; pause = std::min(pause * 2, kWalRetryMax)) {
    AIRLOCK_ASSIGN_OR_RETURN(Stmt stmt, c.Prepare("PRAGMA journal_mode = WAL"));
    Result<bool> row = stmt.Step();
    if (row.has_value()) {
      mode = *row ? stmt.Text(0) : "";
      break;
    }
    // Only "busy" is retried: a full disk or a broken file answers the same the next time.
    const auto now = std::chrono::steady_clock::now();
    if ((sqlite3_extended_errcode(c.raw()) & 0xff) != SQLITE_BUSY || now >= deadline) {
      return std::unexpected(std::move(row.error()));
    }
    stmt.Reset();  // lets go of the shared lock before waiting
    std::this_thread::sleep_for(
        std::min<std::chrono::steady_clock::duration>(pause, deadline - now));
  }
  if (mode != "wal") {
    return Errorf(ErrorCode::kInternal, "could not switch the database to WAL (journal mode '{}')",
                  mode);
  }
  return Ok();
}

Status ConfigureWriter(Connection& c, const StoreOptions& options) {
  // Lets retention give deleted space back to the file system (ReleaseFreePages). It takes
  // effect only on a database that has no table yet: an older file keeps auto_vacuum off and
  // reuses its free pages instead (docs/operators.md says how to convert it).
  AIRLOCK_TRY(c.Exec("PRAGMA auto_vacuum = INCREMENTAL", "enabling incremental vacuum"));
  AIRLOCK_TRY(EnableWal(c));
  AIRLOCK_TRY(c.Exec(
      options.synchronous == "full" ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL",
      "setting synchronous"));
  AIRLOCK_TRY(c.Exec("PRAGMA foreign_keys = ON", "enabling foreign keys"));
  // Statement journals (a savepoint's undo log, kept for every write of a group commit) in
  // memory: as temporary files, each group created, wrote and deleted one, and that took as much
  // of the writer's time as the group's own statements.
  AIRLOCK_TRY(c.Exec("PRAGMA temp_store = MEMORY", "keeping temporary tables in memory"));
  // Checkpoints run on the store's own thread, not inside a commit
  // (SqliteStore::StartCheckpointer).
  AIRLOCK_TRY(c.Exec("PRAGMA wal_autocheckpoint = 0", "disabling automatic checkpoints"));
  // The WAL starts over in place (CheckpointLoop), so a burst of writes would leave its file
  // as large as the burst made it; SQLite cuts it back to this when it starts over.
  AIRLOCK_TRY(c.Exec(fmt::format("PRAGMA journal_size_limit = {}", kWalSizeLimit).c_str(),
                     "limiting the WAL's size"));
  return Ok();
}

}  // namespace

int64_t WalCheckpointSequence(const std::string& wal_path) {
  std::ifstream in(wal_path, std::ios::binary);
  unsigned char h[16];
  if (!in.read(reinterpret_cast<char*>(h), sizeof h)) return -1;
  return (int64_t{h[12]} << 24) | (h[13] << 16) | (h[14] << 8) | h[15];
}

Result<std::unique_ptr<Store>> OpenSqliteStore(const StoreOptions& options) {
  AIRLOCK_TRY(ValidateOptions(options));
  AIRLOCK_ASSIGN_OR_RETURN(
      auto writer, Connection::Open(options.path, /*read_only=*/false, options.busy_timeout_ms));
  AIRLOCK_TRY(ConfigureWriter(*writer, options));
  auto store = std::make_unique<SqliteStore>(std::move(writer));
  AIRLOCK_TRY(store->Migrate());
  // Readers open after the writer has created the file and its WAL, which a read-only
  // connection cannot create.
  for (int i = 0; i < options.read_connections; ++i) {
    AIRLOCK_ASSIGN_OR_RETURN(
        auto reader, Connection::Open(options.path, /*read_only=*/true, options.busy_timeout_ms));
    store->AddReader(std::move(reader));
  }
  AIRLOCK_ASSIGN_OR_RETURN(auto checkpointer, Connection::Open(options.path, /*read_only=*/false,
                                                               options.busy_timeout_ms));
  // A connection opens the database lazily; until it has read it, it does not know the file
  // is in WAL mode and a checkpoint on it does nothing.
  AIRLOCK_TRY(EnableWal(*checkpointer));
  store->StartCheckpointer(std::move(checkpointer));
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace airlock::store
