// The PostgreSQL implementation of Store, with the SQLite store's contract.
//
// Connections: a fixed pool of symmetric libpq connections (PostgresOptions::pool_size); a
// call takes one, runs its transaction and gives it back, blocking while all are in use
// (callers are the control plane's worker pool, as with SQLite). Each connection caches its
// prepared statements by SQL text.
//
// Concurrency: writes run under READ COMMITTED. Where the SQLite store relies on its single
// writer (read a session, decide, write), this store starts the transaction by locking the
// session's row (`SELECT ... FOR UPDATE`, LockSession), so two replicas acting on one session
// run one after the other and the second sees what the first committed. Event numbers come
// from `UPDATE sessions SET next_event_seq = next_event_seq + 1 ... RETURNING` inside the
// transaction: the row lock orders a session's appends until commit and a rollback undoes
// the increment, so they stay gapless (a SEQUENCE would not). Reads that take more than one
// statement run in a REPEATABLE READ READ ONLY transaction: one snapshot, as SQLite's WAL
// readers have.
//
// Durability: every method commits before it returns (synchronous_commit is the server's).
//
// Secrets: the password goes to libpq only as PQconnectdbParams' "password" value; the URL may
// not hold one, and messages name host, port and database only.

#include "store/postgres_store.h"

#include <libpq-fe.h>
#include <poll.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/log.h"
#include "common/time_util.h"
#include "store/connection_pool.h"
#include "store/event_group.h"

namespace airlock::store {
namespace {

// Schema steps, applied in order, each in its own transaction and recorded in
// schema_migrations. Append new steps at the end; never edit a step that has shipped.
//
// Step 1 is the final shape of the SQLite schema (its steps 1-3). Times are milliseconds and
// counters BIGINT; money DOUBLE PRECISION (REAL would be float4). JSON stays TEXT: jsonb would
// reorder keys, and event_bytes counts the bytes of the dumped text. Ids and names are
// COLLATE "C" so that keyset pagination and listings follow SQLite's byte order.
struct Migration {
  int version;
  const char* sql;
};

constexpr Migration kMigrations[] = {
    {1, R"sql(
CREATE TABLE operator_keys (
  name TEXT COLLATE "C" PRIMARY KEY,
  hash TEXT COLLATE "C" NOT NULL UNIQUE,
  created_at BIGINT NOT NULL
);

CREATE TABLE sessions (
  id TEXT COLLATE "C" PRIMARY KEY,
  state TEXT COLLATE "C" NOT NULL,
  image TEXT NOT NULL,
  backend TEXT NOT NULL,
  model TEXT NOT NULL,
  command TEXT NOT NULL DEFAULT '[]',
  limits TEXT NOT NULL DEFAULT '{}',
  metadata TEXT NOT NULL DEFAULT '{}',
  token_hash TEXT COLLATE "C" NOT NULL DEFAULT '',
  sandbox_handle TEXT NOT NULL DEFAULT '',
  result TEXT,
  input_tokens BIGINT NOT NULL DEFAULT 0,
  output_tokens BIGINT NOT NULL DEFAULT 0,
  llm_calls BIGINT NOT NULL DEFAULT 0,
  cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
  next_event_seq BIGINT NOT NULL DEFAULT 1,
  next_position BIGINT NOT NULL DEFAULT 1,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  -- The model aliases a session's sandbox may pick per call ('[]': only sessions.model).
  models TEXT NOT NULL DEFAULT '[]',
  -- Event quotas: what each session's events take, kept with every append so the check is one
  -- row read; and whether the one "session.quota_exceeded" event was appended.
  event_count BIGINT NOT NULL DEFAULT 0,
  event_bytes BIGINT NOT NULL DEFAULT 0,
  event_quota_noticed BOOLEAN NOT NULL DEFAULT false,
  -- Retention: when a session ended, and when its events and conversation were deleted.
  ended_at BIGINT,
  purged_at BIGINT
);
-- Revoked tokens are stored as '': many sessions share it, and it must never match a lookup.
CREATE UNIQUE INDEX sessions_token_hash ON sessions(token_hash) WHERE token_hash != '';
-- (created_at, id) is the listing order; the state index also serves a filtered listing.
CREATE INDEX sessions_created_at ON sessions(created_at, id);
CREATE INDEX sessions_state ON sessions(state, created_at, id);
CREATE INDEX sessions_purgeable ON sessions(ended_at) WHERE ended_at IS NOT NULL AND purged_at IS NULL;

CREATE TABLE messages (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  session_id TEXT COLLATE "C" NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
  position BIGINT,  -- NULL while pending in the inbox
  body TEXT NOT NULL,
  created_at BIGINT NOT NULL
);
-- Unique: two messages can never share a conversation position (NULLs are distinct).
CREATE UNIQUE INDEX messages_session_position ON messages(session_id, position);
CREATE INDEX messages_session_id ON messages(session_id, id);

CREATE TABLE events (
  session_id TEXT COLLATE "C" NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
  seq BIGINT NOT NULL,
  type TEXT NOT NULL,
  data TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (session_id, seq)
);

CREATE TABLE usage (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  session_id TEXT COLLATE "C" NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
  model TEXT COLLATE "C" NOT NULL,
  input_tokens BIGINT NOT NULL,
  output_tokens BIGINT NOT NULL,
  cost_usd DOUBLE PRECISION NOT NULL,
  created_at BIGINT NOT NULL
);
CREATE INDEX usage_session ON usage(session_id, id);
CREATE INDEX usage_created_at ON usage(created_at);
)sql"},
    {2, R"sql(
-- Replicas: which one runs each session's sandbox, and when each was last alive.
ALTER TABLE sessions ADD COLUMN node TEXT COLLATE "C" NOT NULL DEFAULT '';
CREATE TABLE nodes (
  id TEXT COLLATE "C" PRIMARY KEY,
  heartbeat_at BIGINT NOT NULL
);
)sql"},
    {3, R"sql(
-- Idle tiers: how a suspended session's sandbox waits ('paused', 'hibernated'; 'active' in any
-- other state), and when the session entered its current state and tier.
ALTER TABLE sessions ADD COLUMN tier TEXT COLLATE "C" NOT NULL DEFAULT 'active';
ALTER TABLE sessions ADD COLUMN state_since BIGINT NOT NULL DEFAULT 0;
-- Before tiers a suspended sandbox was paused; the last update is the best guess of when the
-- session entered its state.
UPDATE sessions SET state_since = updated_at,
  tier = CASE WHEN state = 'suspended' THEN 'paused' ELSE 'active' END;
)sql"},
    {4, R"sql(
-- A client that rewrites its own history (the OpenAI and Anthropic faces): the messages it
-- dropped leave the conversation but stay for the audit, marked with when they were replaced.
ALTER TABLE messages ADD COLUMN superseded_at BIGINT;
)sql"},
    {5, R"sql(
-- Per-session environment variables given at create (issue 14: work going in).
ALTER TABLE sessions ADD COLUMN env TEXT NOT NULL DEFAULT '{}';
)sql"},
    {6, R"sql(
-- What the session may reach through the egress gateway (issue 15).
ALTER TABLE sessions ADD COLUMN egress TEXT NOT NULL DEFAULT '{}';
)sql"},
};

constexpr int kLatestVersion = kMigrations[std::size(kMigrations) - 1].version;

// The advisory lock that serialises migrations of one database across processes ("airlock"
// "mig" in ASCII). Advisory locks are per database, so other databases on the server do not
// contend for it.
constexpr int64_t kMigrationLockKey = 0x61726c6b6d6967;

constexpr int kMaxListSessions = 1000;

// Serialization failures and deadlocks abort a transaction that would succeed if run again.
constexpr int kMaxTransactionRetries = 3;

constexpr const char* kBeginRead = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

// Replaces every occurrence of `secret` in `text`. libpq's messages are not known to repeat a
// password, but a message that reaches a log must not depend on that.
std::string Redact(std::string text, const std::string& secret) {
  if (secret.empty()) {
    return text;
  }
  for (size_t at = text.find(secret); at != std::string::npos; at = text.find(secret, at + 3)) {
    text.replace(at, secret.size(), "***");
  }
  return text;
}

std::string TrimMessage(std::string_view msg) {
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) {
    msg.remove_suffix(1);
  }
  return std::string(msg);
}

// Maps a SQLSTATE to the project's error codes. `what` names the operation.
Error PgError(std::string_view sqlstate, bool broken, std::string_view what, std::string_view msg) {
  if (sqlstate == "23505") {
    return Error{ErrorCode::kConflict, fmt::format("{}: {}", what, msg)};
  }
  if (sqlstate == "40001" || sqlstate == "40P01") {
    return Error{ErrorCode::kUnavailable,
                 fmt::format("transaction conflict ({}: {}, SQLSTATE {})", what, msg, sqlstate)};
  }
  if (broken || sqlstate.starts_with("08") || sqlstate.starts_with("57P0") ||
      sqlstate.starts_with("53")) {
    return Error{ErrorCode::kUnavailable,
                 fmt::format("database is unavailable ({}: {}{}{})", what, msg,
                             sqlstate.empty() ? "" : ", SQLSTATE ", sqlstate)};
  }
  return Error{ErrorCode::kInternal,
               fmt::format("postgres error in {}: {} (SQLSTATE {})", what, msg, sqlstate)};
}

// Statement parameters, in libpq's text format.
class Params {
 public:
  template <typename... Args>
  explicit Params(const Args&... args) {
    (Add(args), ...);
  }

  int size() const { return static_cast<int>(values_.size()); }
  // libpq takes text parameters as C strings, so a NUL would cut the value short without an
  // error; PostgreSQL's text cannot hold one anyway.
  bool has_nul() const { return has_nul_; }
  std::vector<const char*> Pointers() const {
    std::vector<const char*> out;
    for (const auto& v : values_) {
      out.push_back(v ? v->c_str() : nullptr);
    }
    return out;
  }

 private:
  void Add(int64_t v) { values_.emplace_back(std::to_string(v)); }
  void Add(int v) { values_.emplace_back(std::to_string(v)); }
  // fmt prints the shortest text that reads back as the same double; PostgreSQL's float8
  // input and output (extra_float_digits >= 1) round-trip it exactly.
  void Add(double v) { values_.emplace_back(fmt::format("{}", v)); }
  void Add(bool v) { values_.emplace_back(v ? "true" : "false"); }
  void Add(std::string_view v) {
    has_nul_ = has_nul_ || v.find('\0') != std::string_view::npos;
    values_.emplace_back(std::string(v));
  }
  void Add(const std::string& v) { Add(std::string_view(v)); }
  void Add(const char* v) { Add(std::string_view(v)); }
  void Add(std::nullopt_t) { values_.emplace_back(std::nullopt); }
  void Add(const std::optional<std::string>& v) {
    if (v) {
      Add(std::string_view(*v));
    } else {
      Add(std::nullopt);
    }
  }

  std::vector<std::optional<std::string>> values_;
  bool has_nul_ = false;
};

// The rows a statement returned (text format).
class Rows {
 public:
  explicit Rows(PGresult* res) : res_(res) {}

  const PGresult* raw() const { return res_.get(); }
  int size() const { return PQntuples(res_.get()); }
  bool empty() const { return size() == 0; }
  bool IsNull(int row, int col) const { return PQgetisnull(res_.get(), row, col) != 0; }
  int64_t Int(int row, int col) const {
    const char* p = PQgetvalue(res_.get(), row, col);
    int64_t v = 0;
    std::from_chars(p, p + PQgetlength(res_.get(), row, col), v);
    return v;
  }
  double Real(int row, int col) const {
    return std::strtod(PQgetvalue(res_.get(), row, col), nullptr);
  }
  bool Bool(int row, int col) const { return PQgetvalue(res_.get(), row, col)[0] == 't'; }
  std::string Text(int row, int col) const {
    return std::string(PQgetvalue(res_.get(), row, col),
                       static_cast<size_t>(PQgetlength(res_.get(), row, col)));
  }
  Result<Json> JsonColumn(int row, int col) const {
    Json j = Json::parse(Text(row, col), nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
      return Errorf(ErrorCode::kInternal, "corrupt JSON in column {}", PQfname(res_.get(), col));
    }
    return j;
  }

 private:
  struct Clear {
    void operator()(PGresult* res) const { PQclear(res); }
  };
  std::unique_ptr<PGresult, Clear> res_;
};

// Where the connections of a pool go, and with what.
struct ConnectParams {
  std::string url;
  Secret password;
  std::string connect_timeout;  // seconds, as libpq takes it
  PostgresTarget target;
};

// libpq prints server notices ("relation ... already exists, skipping") on stderr unless told
// otherwise; they go to the debug log instead.
void OnNotice(void*, const char* message) {
  if (log::Enabled(log::Level::kDebug)) {
    log::Debug("postgres notice", {{"notice", TrimMessage(message)}});
  }
}

// One libpq connection, used by one thread at a time (the pool hands it out).
class Connection {
 public:
  static Result<std::unique_ptr<Connection>> Open(const ConnectParams* params) {
    std::vector<const char*> keys = {"dbname", "connect_timeout", "fallback_application_name",
                                     "client_encoding"};
    std::vector<const char*> values = {params->url.c_str(), params->connect_timeout.c_str(),
                                       "airlock", "UTF8"};
    if (!params->password.empty()) {
      keys.push_back("password");
      values.push_back(params->password.Reveal().c_str());
    }
    keys.push_back(nullptr);
    values.push_back(nullptr);
    // expand_dbname = 1: the first "dbname" is the URL, and the keywords after it override
    // what it says.
    PGconn* conn = PQconnectdbParams(keys.data(), values.data(), /*expand_dbname=*/1);
    if (conn == nullptr) {
      return MakeError(ErrorCode::kUnavailable, "cannot allocate a PostgreSQL connection");
    }
    auto c = std::unique_ptr<Connection>(new Connection(conn, params));
    PQsetNoticeProcessor(conn, &OnNotice, nullptr);
    if (PQstatus(conn) != CONNECTION_OK) {
      return std::unexpected(c->ConnectError());
    }
    return c;
  }

  ~Connection() { PQfinish(conn_); }
  PGconn* raw() { return conn_; }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Makes the connection ready for a new transaction: reconnects one that broke (PQreset)
  // and ends a transaction that an earlier failure left open.
  Status Ready() {
    if (PQstatus(conn_) != CONNECTION_OK) {
      PQreset(conn_);
      cache_.clear();  // prepared statements died with the server session
      if (PQstatus(conn_) != CONNECTION_OK) {
        return std::unexpected(ConnectError());
      }
    }
    if (PQtransactionStatus(conn_) != PQTRANS_IDLE) {
      (void)Simple("ROLLBACK");
    }
    broken_ = false;
    sqlstate_.clear();
    return Ok();
  }

  // Runs `sql` as a prepared statement (prepared on first use, then cached) with `args`.
  template <typename... Args>
  Result<Rows> Query(const std::string& sql, const Args&... args) {
    auto it = cache_.find(sql);
    if (it == cache_.end()) {
      std::string name = "airlock_" + std::to_string(cache_.size() + 1);
      Rows prepared(PQprepare(conn_, name.c_str(), sql.c_str(), 0, nullptr));
      AIRLOCK_TRY(Check(prepared, sql));
      it = cache_.emplace(sql, std::move(name)).first;
    }
    const Params params(args...);
    if (params.has_nul()) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "a text value holds a NUL character, which PostgreSQL cannot store");
    }
    const std::vector<const char*> values = params.Pointers();
    Rows rows(PQexecPrepared(conn_, it->second.c_str(), params.size(), values.data(), nullptr,
                             nullptr, /*resultFormat=*/0));
    AIRLOCK_TRY(Check(rows, sql));
    return rows;
  }

  // Runs SQL text that takes no parameters and may hold several statements (schema,
  // transaction control).
  Status Simple(const char* sql, std::string_view what = {}) {
    Rows rows(PQexec(conn_, sql));
    return Check(rows, what.empty() ? std::string_view(sql) : what);
  }

  // What the last failure was: the connection broke, or the transaction lost a serialization
  // conflict or a deadlock and would succeed if run again.
  bool broken() const { return broken_; }
  bool retryable() const { return sqlstate_ == "40001" || sqlstate_ == "40P01"; }

  const ConnectParams& params() const { return *params_; }

 private:
  Connection(PGconn* conn, const ConnectParams* params) : conn_(conn), params_(params) {}

  Status Check(const Rows& rows, std::string_view what) {
    const PGresult* res = rows.raw();
    const ExecStatusType status = res != nullptr ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) {
      return Ok();
    }
    std::string sqlstate, msg;
    if (res != nullptr) {
      if (const char* s = PQresultErrorField(res, PG_DIAG_SQLSTATE)) sqlstate = s;
      // The primary message only: the DETAIL of a unique violation repeats the row's values.
      if (const char* m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)) msg = m;
    }
    if (msg.empty()) {
      msg = TrimMessage(PQerrorMessage(conn_));
    }
    broken_ = PQstatus(conn_) != CONNECTION_OK;
    sqlstate_ = sqlstate;
    return std::unexpected(
        PgError(sqlstate, broken_, what, Redact(std::move(msg), params_->password.Reveal())));
  }

  Error ConnectError() const {
    return Error{
        ErrorCode::kUnavailable,
        fmt::format("cannot connect to PostgreSQL at {}: {}", params_->target.Describe(),
                    Redact(TrimMessage(PQerrorMessage(conn_)), params_->password.Reveal()))};
  }

  PGconn* conn_;
  const ConnectParams* params_;
  std::unordered_map<std::string, std::string> cache_;  // SQL text -> prepared statement name
  bool broken_ = false;
  std::string sqlstate_;
};

using Pool = ConnectionPool<Connection>;

// Columns read by ReadSession, in its order.
constexpr std::string_view kSessionColumns =
    "id, state, image, backend, model, command, limits, metadata, token_hash, sandbox_handle, "
    "result, input_tokens, output_tokens, llm_calls, cost_usd, created_at, updated_at, models, "
    "ended_at, purged_at, node, tier, state_since, env, egress";

std::string SessionQuery(std::string_view where_and_rest) {
  return fmt::format("SELECT {} FROM sessions {}", kSessionColumns, where_and_rest);
}

Result<Session> ReadSession(const Rows& rows, int row) {
  Session s;
  s.id = rows.Text(row, 0);
  const std::string state = rows.Text(row, 1);
  auto parsed = ParseState(state);
  if (!parsed) {
    return Errorf(ErrorCode::kInternal, "session {} has unknown state '{}'", s.id, state);
  }
  s.state = *parsed;
  s.image = rows.Text(row, 2);
  s.backend = rows.Text(row, 3);
  s.model = rows.Text(row, 4);
  AIRLOCK_ASSIGN_OR_RETURN(s.command, rows.JsonColumn(row, 5));
  AIRLOCK_ASSIGN_OR_RETURN(s.limits, rows.JsonColumn(row, 6));
  AIRLOCK_ASSIGN_OR_RETURN(s.metadata, rows.JsonColumn(row, 7));
  s.token_hash = rows.Text(row, 8);
  s.sandbox_handle = rows.Text(row, 9);
  if (!rows.IsNull(row, 10)) {
    s.result = rows.Text(row, 10);
  }
  s.usage.input_tokens = rows.Int(row, 11);
  s.usage.output_tokens = rows.Int(row, 12);
  s.usage.llm_calls = rows.Int(row, 13);
  s.usage.cost_usd = rows.Real(row, 14);
  s.created_at = rows.Int(row, 15);
  s.updated_at = rows.Int(row, 16);
  AIRLOCK_ASSIGN_OR_RETURN(s.models, rows.JsonColumn(row, 17));
  if (!rows.IsNull(row, 18)) {
    s.ended_at = rows.Int(row, 18);
  }
  if (!rows.IsNull(row, 19)) {
    s.purged_at = rows.Int(row, 19);
  }
  s.node = rows.Text(row, 20);
  const std::string tier = rows.Text(row, 21);
  auto parsed_tier = ParseTier(tier);
  if (!parsed_tier) {
    return Errorf(ErrorCode::kInternal, "session {} has unknown tier '{}'", s.id, tier);
  }
  s.tier = *parsed_tier;
  s.state_since = rows.Int(row, 22);
  AIRLOCK_ASSIGN_OR_RETURN(s.env, rows.JsonColumn(row, 23));
  AIRLOCK_ASSIGN_OR_RETURN(s.egress, rows.JsonColumn(row, 24));
  return s;
}

Result<std::vector<Message>> ReadMessages(const Rows& rows) {
  std::vector<Message> out;
  for (int row = 0; row < rows.size(); ++row) {
    Message m;
    m.id = rows.Int(row, 0);
    if (!rows.IsNull(row, 1)) {
      m.position = rows.Int(row, 1);
    }
    AIRLOCK_ASSIGN_OR_RETURN(m.body, rows.JsonColumn(row, 2));
    m.created_at = rows.Int(row, 3);
    out.push_back(std::move(m));
  }
  return out;
}

Result<Session> SelectSession(Connection& c, std::string_view id) {
  static const std::string kSql = SessionQuery("WHERE id = $1");
  AIRLOCK_ASSIGN_OR_RETURN(Rows rows, c.Query(kSql, id));
  if (rows.empty()) {
    return std::unexpected(SessionNotFound(id));
  }
  return ReadSession(rows, 0);
}

// What a write transaction needs to know of the session whose row it locked.
struct LockedSession {
  SessionState state = SessionState::kStarting;
  std::string token_hash;
  int64_t event_count = 0;
  int64_t event_bytes = 0;
  bool quota_noticed = false;
};

// Locks the session's row until the transaction ends and reads it. Every write that reads
// the session before it decides what to write starts here: under READ COMMITTED, another
// replica's transaction on the same session waits for this one, then sees its result.
Result<LockedSession> LockSession(Connection& c, std::string_view id) {
  AIRLOCK_ASSIGN_OR_RETURN(
      Rows rows, c.Query("SELECT state, token_hash, event_count, event_bytes, event_quota_noticed "
                         "FROM sessions WHERE id = $1 FOR UPDATE",
                         id));
  if (rows.empty()) {
    return std::unexpected(SessionNotFound(id));
  }
  const std::string state = rows.Text(0, 0);
  auto parsed = ParseState(state);
  if (!parsed) {
    return Errorf(ErrorCode::kInternal, "session {} has unknown state '{}'", id, state);
  }
  return LockedSession{*parsed, rows.Text(0, 1), rows.Int(0, 2), rows.Int(0, 3), rows.Bool(0, 4)};
}

// kUnauthenticated unless `token_hash` is empty or still the session's token hash.
Status RequireTokenHash(const LockedSession& s, std::string_view token_hash) {
  if (!token_hash.empty() && s.token_hash != token_hash) {
    return MakeError(ErrorCode::kUnauthenticated, "invalid, expired or revoked session token");
  }
  return Ok();
}

Status RequireSession(Connection& c, std::string_view id) {
  AIRLOCK_ASSIGN_OR_RETURN(Rows rows, c.Query("SELECT 1 FROM sessions WHERE id = $1", id));
  if (rows.empty()) {
    return std::unexpected(SessionNotFound(id));
  }
  return Ok();
}

// Reserves `count` conversation positions of a session and returns the first. The UPDATE
// locks the session's row, so concurrent reservations follow one another.
Result<int64_t> ReservePositions(Connection& c, std::string_view id, int64_t count) {
  AIRLOCK_ASSIGN_OR_RETURN(Rows rows,
                           c.Query("UPDATE sessions SET next_position = next_position + $2::bigint "
                                   "WHERE id = $1 RETURNING next_position - $2::bigint",
                                   id, count));
  if (rows.empty()) {
    return std::unexpected(SessionNotFound(id));
  }
  return rows.Int(0, 0);
}

// The conversation in position order, without what a rewrite superseded.
Result<std::vector<Message>> SelectConversation(Connection& c, std::string_view session_id) {
  AIRLOCK_ASSIGN_OR_RETURN(Rows rows, c.Query("SELECT id, position, body, created_at FROM messages "
                                              "WHERE session_id = $1 AND position IS NOT NULL "
                                              "AND superseded_at IS NULL ORDER BY position",
                                              session_id));
  return ReadMessages(rows);
}

Status InsertMessages(Connection& c, std::string_view session_id, int64_t position,
                      const std::vector<Json>& bodies, int64_t now) {
  for (const Json& body : bodies) {
    AIRLOCK_TRY(
        c.Query("INSERT INTO messages (session_id, position, body, created_at) "
                "VALUES ($1, $2, $3, $4)",
                session_id, position++, DumpJson(body), now));
  }
  return Ok();
}

// Appends an event with the session's next seq and adds it to the session's event totals, in
// one statement; runs inside the caller's write transaction. The UPDATE holds the session's
// row until commit, so seqs are handed out in commit order and a rollback gives its seq back.
// The change feed (Store::WatchChanges): a NOTIFY on one channel inside the writing
// transaction, so PostgreSQL delivers it to every listening replica when, and only if, the
// transaction commits (and folds repeats of one payload within a transaction into one).
// Payload: "<kind>:<session id>", kind i (inbox), e (events), x (ended).
constexpr const char* kChangeChannel = "airlock_changes";

Status NotifyChange(Connection& c, char kind, std::string_view session_id) {
  std::string payload = std::string(1, kind) + ":" + std::string(session_id);
  AIRLOCK_TRY(c.Query("SELECT pg_notify($1, $2)", kChangeChannel, payload));
  return Ok();
}

// `notify` false: the caller sends the session's e: NOTIFY itself (once for many events).
Result<Event> InsertEvent(Connection& c, std::string_view session_id, std::string_view type,
                          const Json& data, int64_t now, bool notify = true) {
  Event e{std::string(session_id), 0, std::string(type), data, now};
  const std::string text = DumpJson(data);
  AIRLOCK_ASSIGN_OR_RETURN(
      Rows rows,
      c.Query("WITH s AS (UPDATE sessions SET next_event_seq = next_event_seq + 1, "
              "event_count = event_count + 1, event_bytes = event_bytes + $2::bigint "
              "WHERE id = $1 RETURNING next_event_seq - 1 AS seq) "
              "INSERT INTO events (session_id, seq, type, data, created_at) "
              "SELECT $1::text, seq, $3::text, $4::text, $5::bigint FROM s RETURNING seq",
              session_id, static_cast<int64_t>(type.size() + text.size()), type, text, now));
  if (rows.empty()) {
    return std::unexpected(SessionNotFound(session_id));
  }
  e.seq = rows.Int(0, 0);
  if (notify) AIRLOCK_TRY(NotifyChange(c, 'e', session_id));
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

// Runs `body` between BEGIN (`begin`) and COMMIT on `c`, rolling back when it fails. No retry:
// for the schema migrations, which hold the migration lock.
template <typename F>
auto InTransaction(Connection& c, const char* begin, F&& body)
    -> std::invoke_result_t<F, Connection&> {
  AIRLOCK_TRY(c.Simple(begin));
  auto result = body(c);
  if (result) {
    auto committed = c.Simple("COMMIT");
    if (committed) {
      return result;
    }
    result = std::unexpected(std::move(committed).error());
  }
  if (!c.broken()) {
    (void)c.Simple("ROLLBACK");
  }
  return result;
}

class PostgresStore final : public Store {
 public:
  explicit PostgresStore(std::unique_ptr<ConnectParams> params) : params_(std::move(params)) {}
  ~PostgresStore() override {
    stop_watching_ = true;
    if (watcher_.joinable()) watcher_.join();
  }

  Status WatchChanges(std::function<void(const Change&)> sink) override {
    if (watcher_.joinable()) {
      return MakeError(ErrorCode::kInternal, "WatchChanges is called once per store");
    }
    // The first LISTEN happens here, so a replica that starts watches before it serves.
    AIRLOCK_ASSIGN_OR_RETURN(auto conn, Listen());
    watcher_ = std::thread([this, sink = std::move(sink), conn = std::move(conn)]() mutable {
      WatchLoop(std::move(conn), sink);
    });
    return Ok();
  }

  const ConnectParams* params() const { return params_.get(); }
  void AddConnection(std::unique_ptr<Connection> conn) { pool_.Add(std::move(conn)); }

  // Several processes may start at once on an empty database: each takes the migration lock
  // (a session-level advisory lock on one connection, released with it if the process dies),
  // and applies under it whatever steps are missing, each in its own transaction. Creating
  // schema_migrations happens under the lock too: CREATE TABLE IF NOT EXISTS run by two
  // sessions at once can still fail on the catalog's unique index.
  Status Migrate() override {
    auto lease = pool_.Acquire();
    Connection& c = *lease;
    AIRLOCK_TRY(c.Ready());
    AIRLOCK_TRY(c.Query("SELECT pg_advisory_lock($1::bigint)", kMigrationLockKey));
    struct Unlock {
      Connection& c;
      ~Unlock() { (void)c.Query("SELECT pg_advisory_unlock($1::bigint)", kMigrationLockKey); }
    } unlock{c};
    AIRLOCK_TRY(
        c.Simple("CREATE TABLE IF NOT EXISTS schema_migrations ("
                 "version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
                 "creating schema_migrations"));
    {
      AIRLOCK_ASSIGN_OR_RETURN(Rows rows,
                               c.Query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"));
      const int64_t current = rows.Int(0, 0);
      if (current > kLatestVersion) {
        return Errorf(ErrorCode::kInternal,
                      "database schema version {} is newer than this build supports ({}); "
                      "refusing to run an older binary against it",
                      current, kLatestVersion);
      }
    }
    for (const Migration& m : kMigrations) {
      AIRLOCK_TRY(InTransaction(c, "BEGIN", [&](Connection& tx) -> Status {
        AIRLOCK_ASSIGN_OR_RETURN(
            Rows done,
            tx.Query("SELECT 1 FROM schema_migrations WHERE version = $1::bigint", m.version));
        if (!done.empty()) {
          return Ok();
        }
        AIRLOCK_TRY(tx.Simple(m.sql, fmt::format("schema migration {}", m.version)));
        AIRLOCK_TRY(
            tx.Query("INSERT INTO schema_migrations (version, applied_at) "
                     "VALUES ($1::bigint, $2::bigint)",
                     m.version, NowMillis()));
        return Ok();
      }));
    }
    return Ok();
  }

  Status AddOperatorKey(const OperatorKey& key) override {
    if (key.name.empty() || key.hash.empty()) {
      return MakeError(ErrorCode::kInvalidArgument, "operator key needs a name and a hash");
    }
    const int64_t created_at = key.created_at > 0 ? key.created_at : NowMillis();
    return Write([&](Connection& c) -> Status {
      // A taken name inserts nothing (and waits for a concurrent insert of the same name to
      // end first); a taken hash is a unique violation.
      auto inserted = c.Query(
          "INSERT INTO operator_keys (name, hash, created_at) VALUES ($1, $2, $3) "
          "ON CONFLICT (name) DO NOTHING RETURNING 1",
          key.name, key.hash, created_at);
      if (!inserted) {
        if (inserted.error().code == ErrorCode::kConflict) {
          return MakeError(ErrorCode::kConflict, "another operator key has the same key value");
        }
        return std::unexpected(std::move(inserted).error());
      }
      if (inserted->empty()) {
        return Errorf(ErrorCode::kConflict, "operator key \"{}\" already exists", key.name);
      }
      return Ok();
    });
  }

  Result<std::vector<OperatorKey>> ListOperatorKeys() override {
    return Read([&](Connection& c) -> Result<std::vector<OperatorKey>> {
      AIRLOCK_ASSIGN_OR_RETURN(
          Rows rows, c.Query("SELECT name, hash, created_at FROM operator_keys ORDER BY name"));
      std::vector<OperatorKey> keys;
      for (int row = 0; row < rows.size(); ++row) {
        keys.push_back(OperatorKey{rows.Text(row, 0), rows.Text(row, 1), rows.Int(row, 2)});
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
      auto inserted = c.Query(
          "INSERT INTO sessions (id, state, image, backend, model, command, limits, metadata, "
          "token_hash, sandbox_handle, result, input_tokens, output_tokens, llm_calls, "
          "cost_usd, created_at, updated_at, models, node, tier, state_since, env, egress) "
          "VALUES "
          "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, "
          "$19, $20, $16, $21, $22)",
          s.id, StateName(s.state), s.image, s.backend, s.model, DumpJson(s.command),
          DumpJson(s.limits), DumpJson(s.metadata), s.token_hash, s.sandbox_handle, s.result,
          s.usage.input_tokens, s.usage.output_tokens, s.usage.llm_calls, s.usage.cost_usd,
          created_at, updated_at, DumpJson(s.models.is_array() ? s.models : Json::array()), s.node,
          TierName(SuspendTier::kActive), DumpJson(s.env.is_object() ? s.env : Json::object()),
          DumpJson(s.egress.is_object() ? s.egress : Json::object()));
      if (!inserted && inserted.error().code == ErrorCode::kConflict) {
        // Either the id or the token hash is taken; neither is expected with random values.
        return Errorf(ErrorCode::kConflict, "session {} or its token already exists", s.id);
      }
      if (!inserted) {
        return std::unexpected(std::move(inserted).error());
      }
      if (!task_message.is_null()) {
        AIRLOCK_TRY(
            c.Query("INSERT INTO messages (session_id, position, body, created_at) "
                    "VALUES ($1, NULL, $2, $3)",
                    s.id, DumpJson(task_message), now));
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
      static const std::string kSql = SessionQuery("WHERE token_hash = $1 AND token_hash != ''");
      AIRLOCK_ASSIGN_OR_RETURN(Rows rows, c.Query(kSql, token_hash));
      if (rows.empty()) {
        return MakeError(ErrorCode::kNotFound, "no session has this token");
      }
      return ReadSession(rows, 0);
    });
  }

  Result<std::vector<Session>> ListSessions(const ListSessionsQuery& q) override {
    const int limit = std::clamp(q.limit, 1, kMaxListSessions);
    return Read([&](Connection& c) -> Result<std::vector<Session>> {
      // The cursor is the (created_at, id) of the before_id session: newest first means the
      // next page holds rows strictly below it in that order (ids compare bytewise: "C").
      int64_t cursor_created = 0;
      if (q.before_id) {
        AIRLOCK_ASSIGN_OR_RETURN(
            Rows rows, c.Query("SELECT created_at FROM sessions WHERE id = $1", *q.before_id));
        if (rows.empty()) {
          return Errorf(ErrorCode::kInvalidArgument, "before: no session {}", *q.before_id);
        }
        cursor_created = rows.Int(0, 0);
      }
      static const std::string kAll = SessionQuery("ORDER BY created_at DESC, id DESC LIMIT $1");
      static const std::string kByState =
          SessionQuery("WHERE state = $2 ORDER BY created_at DESC, id DESC LIMIT $1");
      static const std::string kBefore = SessionQuery(
          "WHERE (created_at < $2 OR (created_at = $2 AND id < $3)) "
          "ORDER BY created_at DESC, id DESC LIMIT $1");
      static const std::string kByStateBefore = SessionQuery(
          "WHERE state = $2 AND (created_at < $3 OR (created_at = $3 AND id < $4)) "
          "ORDER BY created_at DESC, id DESC LIMIT $1");
      Result<Rows> rows = MakeError(ErrorCode::kInternal, "unreachable");
      if (q.state && q.before_id) {
        rows = c.Query(kByStateBefore, limit, StateName(*q.state), cursor_created, *q.before_id);
      } else if (q.state) {
        rows = c.Query(kByState, limit, StateName(*q.state));
      } else if (q.before_id) {
        rows = c.Query(kBefore, limit, cursor_created, *q.before_id);
      } else {
        rows = c.Query(kAll, limit);
      }
      if (!rows) {
        return std::unexpected(std::move(rows).error());
      }
      std::vector<Session> out;
      for (int row = 0; row < rows->size(); ++row) {
        AIRLOCK_ASSIGN_OR_RETURN(Session s, ReadSession(*rows, row));
        out.push_back(std::move(s));
      }
      return out;
    });
  }

  Result<Session> ChangeState(std::string_view id, const StateChange& change) override {
    const int64_t now = NowMillis();
    return Write([&](Connection& c) -> Result<Session> {
      AIRLOCK_ASSIGN_OR_RETURN(LockedSession current, LockSession(c, id));
      if (std::find(change.from.begin(), change.from.end(), current.state) == change.from.end()) {
        return Errorf(ErrorCode::kConflict, "session {} is {}; it can become {} only from {}", id,
                      StateName(current.state), StateName(change.to), JoinStates(change.from));
      }
      if (!change.token_hash.empty() && current.token_hash != change.token_hash) {
        return RevokedTokenError();
      }
      const SuspendTier tier =
          change.to == SessionState::kSuspended ? change.tier : SuspendTier::kActive;
      // The events appended below change no column of Session, so the row returned here is
      // the session as the transaction leaves it. The right-hand sides see the row as it was:
      // state_since moves only when the state or the tier changes.
      static const std::string kSql = fmt::format(
          "UPDATE sessions SET state = $2, updated_at = $3::bigint, "
          "result = CASE WHEN $4::boolean THEN $5::text ELSE result END, "
          "token_hash = CASE WHEN $6::boolean THEN '' ELSE token_hash END, "
          "sandbox_handle = CASE WHEN $7::boolean THEN $8::text ELSE sandbox_handle END, "
          "ended_at = CASE WHEN $9::boolean THEN $3::bigint ELSE ended_at END, "
          "state_since = CASE WHEN state != $2 OR tier != $10::text THEN $11::bigint "
          "ELSE state_since END, tier = $10::text "
          "WHERE id = $1 RETURNING {}",
          kSessionColumns);
      AIRLOCK_ASSIGN_OR_RETURN(
          Rows rows,
          c.Query(kSql, id, StateName(change.to), now, change.result.has_value(), change.result,
                  change.revoke_token, change.sandbox_handle.has_value(), change.sandbox_handle,
                  IsTerminal(change.to), TierName(tier), change.at > 0 ? change.at : now));
      if (rows.empty()) {
        return std::unexpected(SessionNotFound(id));
      }
      AIRLOCK_ASSIGN_OR_RETURN(Session updated, ReadSession(rows, 0));
      Json data = {{"from", StateName(current.state)}, {"to", StateName(change.to)}};
      if (change.result) {
        data["result"] = *change.result;
      }
      if (change.to == SessionState::kSuspended) {
        data["tier"] = TierName(tier);
      }
      AIRLOCK_TRY(InsertEvent(c, id, "session.state", data, now));
      if (IsTerminal(change.to)) AIRLOCK_TRY(NotifyChange(c, 'x', id));
      return updated;
    });
  }

  Status SetSandboxHandle(std::string_view id, std::string_view handle) override {
    return Write([&](Connection& c) -> Status {
      AIRLOCK_ASSIGN_OR_RETURN(
          Rows rows,
          c.Query("UPDATE sessions SET sandbox_handle = $2 WHERE id = $1 RETURNING 1", id, handle));
      if (rows.empty()) {
        return std::unexpected(SessionNotFound(id));
      }
      return Ok();
    });
  }

  Result<Session> RestartSandbox(std::string_view id, std::string_view node,
                                 std::string_view token_hash, const Json& data) override {
    const int64_t now = NowMillis();
    return Write([&](Connection& c) -> Result<Session> {
      AIRLOCK_ASSIGN_OR_RETURN(LockedSession current, LockSession(c, id));
      if (current.state != SessionState::kRunning && current.state != SessionState::kSuspended) {
        return Errorf(ErrorCode::kConflict,
                      "session {} is {}; only a running or suspended session gets a new sandbox",
                      id, StateName(current.state));
      }
      AIRLOCK_ASSIGN_OR_RETURN(Rows on, c.Query("SELECT node FROM sessions WHERE id = $1", id));
      if (on.empty() || on.Text(0, 0) != node) {
        return Errorf(ErrorCode::kConflict, "session {} is on node \"{}\", not \"{}\"", id,
                      on.empty() ? "" : on.Text(0, 0), node);
      }
      AIRLOCK_ASSIGN_OR_RETURN(Session updated, RunWithToken(c, id, current.state, token_hash,
                                                             /*clear_handle=*/true, now));
      AIRLOCK_TRY(InsertEvent(c, id, "session.sandbox_restart", data, now));
      AIRLOCK_TRY(NotifyChange(c, 'i', id));  // a long-poll of the old sandbox ends
      return updated;
    });
  }

  // The session running (so tier active) with the token `token_hash` (RestartSandbox,
  // IssueToken), and its change of state recorded if it was not running; `clear_handle` for a
  // fresh sandbox. state_since moves when the state or the tier changes.
  static Result<Session> RunWithToken(Connection& c, std::string_view id, SessionState current,
                                      std::string_view token_hash, bool clear_handle, int64_t now) {
    static const std::string kFresh = fmt::format(
        "UPDATE sessions SET state = $2, updated_at = $3, token_hash = $4, "
        "sandbox_handle = '', state_since = CASE WHEN state != $2 OR tier != $5 THEN $3 "
        "ELSE state_since END, tier = $5 WHERE id = $1 RETURNING {}",
        kSessionColumns);
    static const std::string kSame = fmt::format(
        "UPDATE sessions SET state = $2, updated_at = $3, token_hash = $4, "
        "state_since = CASE WHEN state != $2 OR tier != $5 THEN $3 ELSE state_since END, "
        "tier = $5 WHERE id = $1 RETURNING {}",
        kSessionColumns);
    AIRLOCK_ASSIGN_OR_RETURN(
        Rows rows, c.Query(clear_handle ? kFresh : kSame, id, StateName(SessionState::kRunning),
                           now, token_hash, TierName(SuspendTier::kActive)));
    if (rows.empty()) {
      return std::unexpected(SessionNotFound(id));
    }
    AIRLOCK_ASSIGN_OR_RETURN(Session updated, ReadSession(rows, 0));
    if (current != SessionState::kRunning) {
      AIRLOCK_TRY(InsertEvent(
          c, id, "session.state",
          Json{{"from", StateName(current)}, {"to", StateName(SessionState::kRunning)}}, now));
    }
    return updated;
  }

  Result<Session> IssueToken(std::string_view id, std::string_view node,
                             std::string_view token_hash) override {
    const int64_t now = NowMillis();
    return Write([&](Connection& c) -> Result<Session> {
      // Locked first: of requests racing for the identity, the others wait here and then see
      // the token set.
      AIRLOCK_ASSIGN_OR_RETURN(LockedSession current, LockSession(c, id));
      AIRLOCK_ASSIGN_OR_RETURN(Rows on, c.Query("SELECT node FROM sessions WHERE id = $1", id));
      const std::string on_node = on.empty() ? "" : on.Text(0, 0);
      if ((current.state != SessionState::kStarting && current.state != SessionState::kRunning) ||
          !current.token_hash.empty() || on_node != node) {
        return Errorf(ErrorCode::kConflict,
                      "session {} is {} on node \"{}\"{}; no token is issued for it", id,
                      StateName(current.state), on_node,
                      current.token_hash.empty() ? "" : " and has its token");
      }
      return RunWithToken(c, id, current.state, token_hash, /*clear_handle=*/false, now);
    });
  }

  Status Heartbeat(std::string_view node, int64_t now_ms) override {
    return Write([&](Connection& c) -> Status {
      AIRLOCK_TRY(
          c.Query("INSERT INTO nodes (id, heartbeat_at) VALUES ($1, $2) "
                  "ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                  node, now_ms));
      return Ok();
    });
  }

  Result<std::vector<NodeInfo>> ListNodes() override {
    return Read([&](Connection& c) -> Result<std::vector<NodeInfo>> {
      AIRLOCK_ASSIGN_OR_RETURN(Rows rows,
                               c.Query("SELECT id, heartbeat_at FROM nodes ORDER BY id"));
      std::vector<NodeInfo> out;
      for (int row = 0; row < rows.size(); ++row) {
        out.push_back({rows.Text(row, 0), rows.Int(row, 1)});
      }
      return out;
    });
  }

  Result<Session> AdoptSession(std::string_view id, std::string_view from,
                               std::string_view to) override {
    const int64_t now = NowMillis();
    return Write([&](Connection& c) -> Result<Session> {
      // Locked first: of replicas taking over together, the others wait here and then see the
      // node already changed.
      AIRLOCK_ASSIGN_OR_RETURN(LockedSession current, LockSession(c, id));
      static const std::string kSql = fmt::format(
          "UPDATE sessions SET node = $3, updated_at = $4 WHERE id = $1 AND node = $2 "
          "RETURNING {}",
          kSessionColumns);
      AIRLOCK_ASSIGN_OR_RETURN(Rows rows, c.Query(kSql, id, from, to, now));
      if (IsTerminal(current.state) || rows.empty()) {
        return Errorf(ErrorCode::kConflict, "session {} is {}, not live on node \"{}\"", id,
                      StateName(current.state), from);
      }
      AIRLOCK_ASSIGN_OR_RETURN(Session updated, ReadSession(rows, 0));
      AIRLOCK_TRY(InsertEvent(c, id, "session.node", Json{{"from", from}, {"to", to}}, now));
      return updated;
    });
  }

  Result<int64_t> AddUserMessage(std::string_view session_id, const Json& message) override {
    const int64_t now = NowMillis();
    return Write([&](Connection& c) -> Result<int64_t> {
      AIRLOCK_ASSIGN_OR_RETURN(LockedSession s, LockSession(c, session_id));
      if (IsTerminal(s.state)) {
        return Errorf(ErrorCode::kConflict, "session {} is {} and takes no more messages",
                      session_id, StateName(s.state));
      }
      AIRLOCK_ASSIGN_OR_RETURN(
          Rows rows, c.Query("INSERT INTO messages (session_id, position, body, created_at) "
                             "VALUES ($1, NULL, $2, $3) RETURNING id",
                             session_id, DumpJson(message), now));
      if (rows.empty()) {
        return MakeError(ErrorCode::kInternal, "insert returned no message id");
      }
      AIRLOCK_TRY(NotifyChange(c, 'i', session_id));
      return rows.Int(0, 0);
    });
  }

  Result<std::vector<Message>> TakeInbox(std::string_view session_id,
                                         std::string_view token_hash) override {
    return Write([&](Connection& c) -> Result<std::vector<Message>> {
      // The row lock makes two polls of one session (on two replicas) take turns: the second
      // finds the messages the first took already in the conversation.
      AIRLOCK_ASSIGN_OR_RETURN(LockedSession s, LockSession(c, session_id));
      AIRLOCK_TRY(RequireTokenHash(s, token_hash));
      AIRLOCK_ASSIGN_OR_RETURN(Rows rows,
                               c.Query("SELECT id, position, body, created_at FROM messages "
                                       "WHERE session_id = $1 AND position IS NULL ORDER BY id",
                                       session_id));
      AIRLOCK_ASSIGN_OR_RETURN(std::vector<Message> pending, ReadMessages(rows));
      if (pending.empty()) {
        return pending;
      }
      AIRLOCK_ASSIGN_OR_RETURN(
          int64_t position, ReservePositions(c, session_id, static_cast<int64_t>(pending.size())));
      for (Message& m : pending) {
        m.position = position++;
        AIRLOCK_TRY(c.Query("UPDATE messages SET position = $2 WHERE id = $1", m.id, *m.position));
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
      return InsertMessages(c, session_id, position, messages, now);
    });
  }

  Result<std::vector<Message>> ListMessages(std::string_view session_id,
                                            bool include_pending) override {
    return Read([&](Connection& c) -> Result<std::vector<Message>> {
      AIRLOCK_TRY(RequireSession(c, session_id));
      AIRLOCK_ASSIGN_OR_RETURN(std::vector<Message> out, SelectConversation(c, session_id));
      if (include_pending) {
        AIRLOCK_ASSIGN_OR_RETURN(Rows pending_rows,
                                 c.Query("SELECT id, position, body, created_at FROM messages "
                                         "WHERE session_id = $1 AND position IS NULL ORDER BY id",
                                         session_id));
        AIRLOCK_ASSIGN_OR_RETURN(std::vector<Message> pending, ReadMessages(pending_rows));
        for (Message& m : pending) {
          out.push_back(std::move(m));
        }
      }
      return out;
    });
  }

  Result<Conversation> ReadConversation(std::string_view session_id,
                                        int64_t known_version) override {
    return Read([&](Connection& c) -> Result<Conversation> {
      Conversation out;
      // One snapshot (kBeginRead); the version first all the same, so that the messages are
      // never older than the version they are cached under.
      AIRLOCK_ASSIGN_OR_RETURN(
          Rows rows, c.Query("SELECT next_position FROM sessions WHERE id = $1", session_id));
      if (rows.empty()) return std::unexpected(SessionNotFound(session_id));
      out.version = rows.Int(0, 0);
      if (out.version == known_version) return out;
      AIRLOCK_ASSIGN_OR_RETURN(out.messages, SelectConversation(c, session_id));
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
    const int64_t now = NowMillis();
    return Write(
        [&](Connection& c) { return AppendWithinQuota(c, session_id, type, data, quota, now); });
  }

  // One transaction for all of them: one WAL flush instead of one per event, and a handful of
  // statements instead of two per event (AppendGroup). The sessions' rows are locked in the
  // order of their ids, so two such transactions, on two replicas, can never wait for each
  // other in a cycle. An append that is refused (a session that is not there, a replaced
  // token, the quota) is refused alone. If a statement fails and aborts the transaction,
  // every append is tried again on its own, so that it fails alone after all.
  std::vector<Result<QuotaAppend>> AppendEventsWithinQuota(const std::vector<EventAppend>& events,
                                                           const EventQuota& quota) override {
    const int64_t now = NowMillis();
    std::vector<Result<QuotaAppend>> out;
    bool aborted = false;
    Status done = Write([&](Connection& c) -> Status {
      out.assign(events.size(), std::unexpected(Error{ErrorCode::kInternal, "not appended"}));
      aborted = false;
      Status group = AppendGroup(c, events, quota, now, out);
      if (!group && PQtransactionStatus(c.raw()) == PQTRANS_INERROR) {
        aborted = !c.broken() && !c.retryable();
      }
      return group;
    });
    if (done) return out;
    if (aborted) {
      for (size_t i = 0; i < events.size(); ++i) {
        out[i] = Write([&](Connection& c) {
          return AppendWithinQuota(c, events[i].session_id, events[i].type, *events[i].data, quota,
                                   now, /*notify=*/true, events[i].token_hash);
        });
      }
      return out;
    }
    // The transaction as a whole failed (the connection broke, the COMMIT failed): it is the
    // answer of every append.
    out.assign(events.size(), std::unexpected(done.error()));
    return out;
  }

  // The events of one group in five statements, whatever their number: lock the sessions'
  // rows and read their counters; number the events in order and check each against the
  // quota here (each sees the quota as the ones before it left it, as AppendWithinQuota one
  // by one would); insert them all; write the counters back; one NOTIFY per session that got
  // events. The rows travel as one JSON parameter each, so nothing is spliced into SQL.
  static Status AppendGroup(Connection& c, const std::vector<EventAppend>& events,
                            const EventQuota& quota, int64_t now,
                            std::vector<Result<QuotaAppend>>& out) {
    GroupSessions sessions;
    Json ids = Json::array();
    for (const EventAppend& e : events) {
      if (sessions.try_emplace(e.session_id).second) ids.push_back(e.session_id);
    }
    AIRLOCK_ASSIGN_OR_RETURN(
        Rows locked,
        c.Query("SELECT id, token_hash, event_count, event_bytes, event_quota_noticed, "
                "next_event_seq FROM sessions "
                "WHERE id IN (SELECT jsonb_array_elements_text($1::jsonb)) ORDER BY id FOR UPDATE",
                DumpJson(ids)));
    for (int r = 0; r < locked.size(); ++r) {
      auto it = sessions.find(locked.Text(r, 0));
      if (it == sessions.end()) continue;
      it->second = EventCounters{locked.Text(r, 1), locked.Int(r, 2),  locked.Int(r, 3),
                                 locked.Int(r, 5),  locked.Bool(r, 4), false};
    }
    const std::vector<EventRow> planned = PlanEventGroup(events, quota, now, sessions, out);
    if (planned.empty()) return Ok();
    Json rows = Json::array();
    for (const EventRow& r : planned) {
      rows.push_back({{"s", r.session_id}, {"q", r.seq}, {"t", r.type}, {"d", r.data}});
    }
    AIRLOCK_TRY(
        c.Query("INSERT INTO events (session_id, seq, type, data, created_at) "
                "SELECT x.s, x.q, x.t, x.d, $2::bigint "
                "FROM jsonb_to_recordset($1::jsonb) AS x(s text, q bigint, t text, d text)",
                DumpJson(rows), now));
    Json counters = Json::array();
    Json changed = Json::array();
    for (const auto& [id, s] : sessions) {
      if (!s || !s->changed) continue;
      counters.push_back(
          {{"id", id}, {"q", s->next_seq}, {"n", s->count}, {"b", s->bytes}, {"x", s->noticed}});
      changed.push_back(std::string(1, 'e') + ":" + std::string(id));
    }
    AIRLOCK_TRY(c.Query(
        "UPDATE sessions SET next_event_seq = x.q, event_count = x.n, event_bytes = x.b, "
        "event_quota_noticed = x.x "
        "FROM jsonb_to_recordset($1::jsonb) AS x(id text, q bigint, n bigint, b bigint, x boolean) "
        "WHERE sessions.id = x.id",
        DumpJson(counters)));
    AIRLOCK_TRY(c.Query("SELECT pg_notify($1, p) FROM jsonb_array_elements_text($2::jsonb) AS p",
                        kChangeChannel, DumpJson(changed)));
    return Ok();
  }

  static Result<QuotaAppend> AppendWithinQuota(Connection& c, std::string_view session_id,
                                               std::string_view type, const Json& data,
                                               const EventQuota& quota, int64_t now,
                                               bool notify = true,
                                               std::string_view token_hash = {}) {
    const int64_t size = static_cast<int64_t>(type.size() + DumpJson(data).size());
    // Locked, so concurrent appends see each other's totals and cannot overshoot together,
    // and a token replaced by another replica's restart is seen here (EventAppend).
    AIRLOCK_ASSIGN_OR_RETURN(LockedSession s, LockSession(c, session_id));
    if (!token_hash.empty() && s.token_hash != token_hash) {
      return RevokedTokenError();
    }
    QuotaAppend out;
    if (quota.max_events > 0 && s.event_count + 1 > quota.max_events) {
      out.exceeded = "events";
      out.limit = quota.max_events;
    } else if (quota.max_bytes > 0 && s.event_bytes + size > quota.max_bytes) {
      out.exceeded = "bytes";
      out.limit = quota.max_bytes;
    }
    out.noticed = !out.exceeded.empty() && !s.quota_noticed;
    if (out.exceeded.empty()) {
      AIRLOCK_ASSIGN_OR_RETURN(Event e, InsertEvent(c, session_id, type, data, now, notify));
      out.event = std::move(e);
      return out;
    }
    if (out.noticed) {
      AIRLOCK_TRY(
          c.Query("UPDATE sessions SET event_quota_noticed = true WHERE id = $1", session_id));
      Json notice = {{"quota", out.exceeded}, {"limit", out.limit}, {"type", type}};
      AIRLOCK_TRY(InsertEvent(c, session_id, "session.quota_exceeded", notice, now, notify));
    }
    return out;
  }

  Result<std::vector<Event>> ListEvents(std::string_view session_id, int64_t after,
                                        int limit) override {
    return Read([&](Connection& c) -> Result<std::vector<Event>> {
      AIRLOCK_TRY(RequireSession(c, session_id));
      std::vector<Event> out;
      if (limit <= 0) {
        return out;
      }
      AIRLOCK_ASSIGN_OR_RETURN(Rows rows,
                               c.Query("SELECT seq, type, data, created_at FROM events "
                                       "WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                                       session_id, after, limit));
      for (int row = 0; row < rows.size(); ++row) {
        Event e{std::string(session_id), rows.Int(row, 0), rows.Text(row, 1), Json::object(),
                rows.Int(row, 3)};
        AIRLOCK_ASSIGN_OR_RETURN(e.data, rows.JsonColumn(row, 2));
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
      // One call per record, whatever usage.llm_calls says: the contract is one metered call.
      AIRLOCK_ASSIGN_OR_RETURN(
          Rows rows, c.Query("UPDATE sessions SET input_tokens = input_tokens + $2, "
                             "output_tokens = output_tokens + $3, llm_calls = llm_calls + 1, "
                             "cost_usd = cost_usd + $4 WHERE id = $1 RETURNING 1",
                             session_id, usage.input_tokens, usage.output_tokens, usage.cost_usd));
      if (rows.empty()) {
        return std::unexpected(SessionNotFound(session_id));
      }
      AIRLOCK_TRY(
          c.Query("INSERT INTO usage (session_id, model, input_tokens, output_tokens, "
                  "cost_usd, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                  session_id, model, usage.input_tokens, usage.output_tokens, usage.cost_usd, now));
      return Ok();
    });
  }

  Result<ChatRecorded> RecordChat(std::string_view session_id, const ChatRecord& r) override {
    AIRLOCK_TRY(ValidateUsage(r.usage));
    const int64_t now = NowMillis();
    return Write([&](Connection& c) -> Result<ChatRecorded> {
      ChatRecorded out;
      AIRLOCK_ASSIGN_OR_RETURN(LockedSession s, LockSession(c, session_id));
      if (IsTerminal(s.state)) {
        return Errorf(ErrorCode::kConflict, "session {} is {}", session_id, StateName(s.state));
      }
      AIRLOCK_TRY(RequireTokenHash(s, r.token_hash));
      if (r.supersede_after) {
        AIRLOCK_TRY(
            c.Query("UPDATE messages SET superseded_at = $3 WHERE session_id = $1 "
                    "AND position > $2 AND position <= $4 AND superseded_at IS NULL",
                    session_id, *r.supersede_after, now, r.supersede_through.value_or(INT64_MAX)));
      }
      if (!r.messages.empty()) {
        AIRLOCK_ASSIGN_OR_RETURN(
            int64_t position,
            ReservePositions(c, session_id, static_cast<int64_t>(r.messages.size())));
        out.first_position = position;
        AIRLOCK_TRY(InsertMessages(c, session_id, position, r.messages, now));
      } else if (r.supersede_after) {
        // A rewrite that appends nothing still changes the conversation: a position of its
        // own, left unused, moves the version on.
        AIRLOCK_TRY(ReservePositions(c, session_id, 1));
      }
      AIRLOCK_ASSIGN_OR_RETURN(
          Rows rows,
          c.Query("UPDATE sessions SET input_tokens = input_tokens + $2, "
                  "output_tokens = output_tokens + $3, llm_calls = llm_calls + 1, "
                  "cost_usd = cost_usd + $4, updated_at = $5 WHERE id = $1 "
                  "RETURNING input_tokens, output_tokens, llm_calls, cost_usd, next_position",
                  session_id, r.usage.input_tokens, r.usage.output_tokens, r.usage.cost_usd, now));
      if (rows.empty()) {
        return std::unexpected(SessionNotFound(session_id));
      }
      out.totals = Usage{rows.Int(0, 0), rows.Int(0, 1), rows.Int(0, 2), rows.Real(0, 3)};
      out.version = rows.Int(0, 4);
      AIRLOCK_TRY(c.Query(
          "INSERT INTO usage (session_id, model, input_tokens, output_tokens, "
          "cost_usd, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
          session_id, r.model, r.usage.input_tokens, r.usage.output_tokens, r.usage.cost_usd, now));
      AIRLOCK_TRY(InsertEvent(c, session_id, "llm.call", r.event_data, now));
      return out;
    });
  }

  Result<UsageReport> GetUsage(const UsageQuery& q) override {
    return Read([&](Connection& c) -> Result<UsageReport> {
      UsageReport rep;
      // SUM of a bigint is a numeric in PostgreSQL: cast back.
      AIRLOCK_ASSIGN_OR_RETURN(
          Rows rows,
          c.Query("SELECT model, SUM(input_tokens)::bigint, SUM(output_tokens)::bigint, "
                  "COUNT(*), SUM(cost_usd) FROM usage WHERE created_at >= $1 AND created_at < $2 "
                  "GROUP BY model ORDER BY model",
                  q.since, q.until));
      for (int row = 0; row < rows.size(); ++row) {
        Usage u{rows.Int(row, 1), rows.Int(row, 2), rows.Int(row, 3), rows.Real(row, 4)};
        rep.total.input_tokens += u.input_tokens;
        rep.total.output_tokens += u.output_tokens;
        rep.total.llm_calls += u.llm_calls;
        rep.total.cost_usd += u.cost_usd;
        rep.by_model[rows.Text(row, 0)] = u;
      }
      AIRLOCK_ASSIGN_OR_RETURN(Rows sessions,
                               c.Query("SELECT COUNT(DISTINCT session_id) FROM usage "
                                       "WHERE created_at >= $1 AND created_at < $2",
                                       q.since, q.until));
      if (!sessions.empty()) {
        rep.sessions = sessions.Int(0, 0);
      }
      return rep;
    });
  }

  Result<std::vector<std::string>> ListPurgeable(int64_t ended_before, int limit) override {
    return Read([&](Connection& c) -> Result<std::vector<std::string>> {
      // The `IS NOT NULL` terms repeat the partial index's condition so the planner uses it.
      AIRLOCK_ASSIGN_OR_RETURN(
          Rows rows,
          c.Query("SELECT id FROM sessions WHERE ended_at IS NOT NULL AND purged_at IS NULL "
                  "AND ended_at < $1 ORDER BY ended_at, id LIMIT $2",
                  ended_before, std::max(limit, 0)));
      std::vector<std::string> out;
      for (int row = 0; row < rows.size(); ++row) {
        out.push_back(rows.Text(row, 0));
      }
      return out;
    });
  }

  Result<SessionFootprint> Footprint(std::string_view session_id) override {
    return Read([&](Connection& c) -> Result<SessionFootprint> {
      SessionFootprint f;
      AIRLOCK_ASSIGN_OR_RETURN(
          Rows totals,
          c.Query("SELECT event_count, event_bytes FROM sessions WHERE id = $1", session_id));
      if (totals.empty()) {
        return std::unexpected(SessionNotFound(session_id));
      }
      f.events = totals.Int(0, 0);
      f.bytes = totals.Int(0, 1);
      AIRLOCK_ASSIGN_OR_RETURN(
          Rows rows, c.Query("SELECT COUNT(*), COALESCE(SUM(octet_length(body)), 0)::bigint "
                             "FROM messages WHERE session_id = $1",
                             session_id));
      if (!rows.empty()) {
        f.messages = rows.Int(0, 0);
        f.bytes += rows.Int(0, 1);
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
      AIRLOCK_ASSIGN_OR_RETURN(LockedSession s, LockSession(c, session_id));
      if (!IsTerminal(s.state)) {
        return Errorf(ErrorCode::kConflict, "session {} is {}; only an ended session is purged",
                      session_id, StateName(s.state));
      }
      PurgeStep step;
      // Deletes up to `limit` rows with `sql` (which returns each row's size) and adds them up.
      auto purge = [&](const std::string& sql, int64_t limit, int64_t* count) -> Status {
        if (limit <= 0) {
          return Ok();
        }
        AIRLOCK_ASSIGN_OR_RETURN(Rows rows, c.Query(sql, session_id, limit));
        for (int row = 0; row < rows.size(); ++row) {
          ++*count;
          step.deleted.bytes += rows.Int(row, 0);
        }
        return Ok();
      };
      AIRLOCK_TRY(
          purge("DELETE FROM events WHERE session_id = $1 AND seq IN (SELECT seq FROM events "
                "WHERE session_id = $1 ORDER BY seq LIMIT $2) "
                "RETURNING octet_length(type) + octet_length(data)",
                max_rows, &step.deleted.events));
      AIRLOCK_TRY(
          purge("DELETE FROM messages WHERE id IN (SELECT id FROM messages "
                "WHERE session_id = $1 ORDER BY id LIMIT $2) RETURNING octet_length(body)",
                max_rows - step.deleted.events, &step.deleted.messages));
      if (step.deleted.messages > 0) {
        // Deleting messages changes the conversation: its version moves (ReservePositions).
        AIRLOCK_TRY(ReservePositions(c, session_id, 1));
      }
      if (step.deleted.events + step.deleted.messages < max_rows) {
        // Nothing is left: the row stays as the session's record, without its contents.
        AIRLOCK_TRY(
            c.Query("UPDATE sessions SET purged_at = COALESCE(purged_at, $2), event_count = 0, "
                    "event_bytes = 0 WHERE id = $1",
                    session_id, now));
        step.done = true;
      }
      return step;
    });
  }

  // PostgreSQL has no counterpart of SQLite's incremental vacuum: autovacuum marks the space
  // of deleted rows for reuse, and giving it back to the file system is VACUUM FULL's job (an
  // operator's decision, as it locks the table). So nothing is released here.
  Result<int64_t> ReleaseFreePages(int64_t /*max_pages*/) override { return 0; }

 private:
  enum class Mode { kRead, kWrite };

  // Runs `body` in a transaction on a pooled connection and commits it. Writes run under READ
  // COMMITTED (their bodies lock what they read: LockSession); reads in one REPEATABLE READ
  // snapshot. A transaction that failed on a serialization conflict or a deadlock is run
  // again, up to kMaxTransactionRetries times. A connection found broken before anything ran
  // is reconnected and the transaction tried once more; one that broke in the middle is not
  // retried (its COMMIT may have landed) and the call fails with kUnavailable.
  template <typename F>
  auto Transact(Mode mode, F&& body) -> std::invoke_result_t<F, Connection&> {
    auto lease = pool_.Acquire();
    Connection& c = *lease;
    bool reconnected = false;
    for (int retries = 0;;) {
      AIRLOCK_TRY(c.Ready());
      if (auto begun = c.Simple(mode == Mode::kRead ? kBeginRead : "BEGIN"); !begun) {
        if (c.broken() && !reconnected) {
          reconnected = true;
          continue;
        }
        return std::unexpected(std::move(begun).error());
      }
      auto result = body(c);
      if (result) {
        auto committed = c.Simple("COMMIT");
        if (committed) {
          return result;
        }
        if (c.broken()) {
          return Errorf(ErrorCode::kUnavailable,
                        "the connection to PostgreSQL broke at COMMIT, so whether the transaction "
                        "was applied is unknown ({})",
                        committed.error().message);
        }
        result = std::unexpected(std::move(committed).error());
      }
      if (!c.broken()) {
        (void)c.Simple("ROLLBACK");
      }
      if (c.retryable()) {
        if (retries < kMaxTransactionRetries) {
          ++retries;
          continue;
        }
        return Errorf(ErrorCode::kUnavailable, "gave up after {} retries: {}", retries,
                      result.error().message);
      }
      return result;
    }
  }

  template <typename F>
  auto Write(F&& body) -> std::invoke_result_t<F, Connection&> {
    return Transact(Mode::kWrite, std::forward<F>(body));
  }

  template <typename F>
  auto Read(F&& body) -> std::invoke_result_t<F, Connection&> {
    return Transact(Mode::kRead, std::forward<F>(body));
  }

  // A connection of its own that LISTENs on the change channel (never in the pool: a pooled
  // connection may be mid-transaction, and notifications arrive between transactions).
  Result<std::unique_ptr<Connection>> Listen() {
    AIRLOCK_ASSIGN_OR_RETURN(auto conn, Connection::Open(params_.get()));
    AIRLOCK_TRY(conn->Simple("LISTEN airlock_changes", "listening for changes"));
    return conn;
  }

  // Waits on the listening connection's socket (200 ms at a time, to notice the store going
  // away) and hands each notification to `sink`. When the connection breaks, notifications
  // may have been lost meanwhile: after reconnecting it says so with an empty session id, so
  // that every waiter re-reads the store.
  void WatchLoop(std::unique_ptr<Connection> conn, const std::function<void(const Change&)>& sink) {
    int backoff_ms = 100;
    while (!stop_watching_) {
      if (!conn) {
        std::this_thread::sleep_for(std::chrono::milliseconds(backoff_ms));
        auto again = Listen();
        if (!again) {
          backoff_ms = std::min(backoff_ms * 2, 5000);
          continue;
        }
        conn = std::move(*again);
        backoff_ms = 100;
        log::Info("listening for store changes again", {});
        sink(Change{Change::Kind::kEvents, ""});
      }
      PGconn* pg = conn->raw();
      pollfd pfd{PQsocket(pg), POLLIN, 0};
      int ready = ::poll(&pfd, 1, 200);
      if (ready < 0 && errno != EINTR) {
        conn.reset();
        continue;
      }
      if (ready <= 0) continue;
      if (PQconsumeInput(pg) == 0 || PQstatus(pg) != CONNECTION_OK) {
        log::Warn("the store's change feed broke; reconnecting",
                  {{"error", TrimMessage(PQerrorMessage(pg))}});
        conn.reset();
        continue;
      }
      while (PGnotify* n = PQnotifies(pg)) {
        std::string_view payload(n->extra);
        if (payload.size() > 2 && payload[1] == ':') {
          Change c;
          c.kind = payload[0] == 'i'   ? Change::Kind::kInbox
                   : payload[0] == 'x' ? Change::Kind::kEnded
                                       : Change::Kind::kEvents;
          c.session_id = std::string(payload.substr(2));
          sink(c);
        }
        PQfreemem(n);
      }
    }
  }

  // Declared first so that it outlives the connections, which point at it.
  std::unique_ptr<ConnectParams> params_;
  Pool pool_;
  std::atomic<bool> stop_watching_{false};
  std::thread watcher_;
};

bool ICaseStartsWith(std::string_view text, std::string_view prefix) {
  return text.size() >= prefix.size() &&
         std::equal(prefix.begin(), prefix.end(), text.begin(),
                    [](char a, char b) { return std::tolower(a) == std::tolower(b); });
}

}  // namespace

std::string PostgresTarget::Describe() const {
  return fmt::format("{}:{}/{}", host.empty() ? "(default host)" : host,
                     port.empty() ? "(default port)" : port, dbname);
}

Result<PostgresTarget> ParsePostgresUrl(std::string_view url) {
  auto password_refused = [] {
    return MakeError(ErrorCode::kInvalidArgument,
                     "store url must not contain a password: give it in the environment "
                     "variable that store.password_env names");
  };
  size_t scheme = 0;
  for (std::string_view prefix : {"postgresql://", "postgres://"}) {
    if (url.starts_with(prefix)) {
      scheme = prefix.size();
    }
  }
  if (scheme == 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "store url must be a URI of the form postgresql://user@host:port/dbname");
  }
  // user:password@ in the authority, or password=... among the query parameters.
  const std::string_view rest = url.substr(scheme);
  const std::string_view authority = rest.substr(0, rest.find_first_of("/?"));
  if (const size_t at = authority.rfind('@');
      at != std::string_view::npos && authority.substr(0, at).find(':') != std::string_view::npos) {
    return password_refused();
  }
  if (const size_t q = rest.find('?'); q != std::string_view::npos) {
    std::string_view query = rest.substr(q + 1);
    while (!query.empty()) {
      const size_t amp = query.find('&');
      if (ICaseStartsWith(query.substr(0, amp), "password=")) {
        return password_refused();
      }
      query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    }
  }
  // libpq's own parser: what it understands is what the connections will use. Its error
  // message is left out, as it may quote any part of the URL.
  char* err = nullptr;
  PQconninfoOption* options = PQconninfoParse(std::string(url).c_str(), &err);
  if (err != nullptr) {
    PQfreemem(err);
  }
  if (options == nullptr) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "store url is not a PostgreSQL connection URI that libpq can read "
                     "(postgresql://user@host:port/dbname)");
  }
  PostgresTarget target;
  bool has_password = false;
  for (PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
    const std::string_view key = o->keyword;
    const std::string value = o->val != nullptr ? o->val : "";
    if (key == "password") {
      has_password = !value.empty();
    } else if (key == "host") {
      target.host = value;
    } else if (key == "port") {
      target.port = value;
    } else if (key == "dbname") {
      target.dbname = value;
    }
  }
  PQconninfoFree(options);
  if (has_password) {
    return password_refused();
  }
  return target;
}

Result<std::unique_ptr<Store>> OpenPostgresStore(const PostgresOptions& options) {
  if (options.pool_size < 1 || options.pool_size > 256) {
    return Errorf(ErrorCode::kInvalidArgument, "store pool_size must be 1..256, not {}",
                  options.pool_size);
  }
  if (options.connect_timeout_s < 1 || options.connect_timeout_s > 3600) {
    return Errorf(ErrorCode::kInvalidArgument, "store connect_timeout_s must be 1..3600, not {}",
                  options.connect_timeout_s);
  }
  AIRLOCK_ASSIGN_OR_RETURN(PostgresTarget target, ParsePostgresUrl(options.url));
  auto params = std::make_unique<ConnectParams>(ConnectParams{
      options.url, options.password, std::to_string(options.connect_timeout_s), target});
  auto store = std::make_unique<PostgresStore>(std::move(params));
  for (int i = 0; i < options.pool_size; ++i) {
    AIRLOCK_ASSIGN_OR_RETURN(auto conn, Connection::Open(store->params()));
    store->AddConnection(std::move(conn));
  }
  AIRLOCK_TRY(store->Migrate());
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace airlock::store
