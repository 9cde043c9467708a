#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/json_util.h"
#include "common/result.h"

namespace airlock::store {

// Session states of docs/api.md. Stored as their lowercase names.
enum class SessionState { kStarting, kRunning, kSuspended, kSucceeded, kFailed, kKilled };

std::string_view StateName(SessionState s);
std::optional<SessionState> ParseState(std::string_view name);
bool IsTerminal(SessionState s);

// How a suspended session's sandbox waits (docs/api.md, "Idle tiers"). Stored as their names:
// "active", "paused", "hibernated".
enum class SuspendTier { kActive, kPaused, kHibernated };
std::string_view TierName(SuspendTier t);
std::optional<SuspendTier> ParseTier(std::string_view name);

// kNotFound for the session `id`.
Error SessionNotFound(std::string_view id);
// What an append with a token hash that is no longer the session's answers (EventAppend); the
// same words the sandbox listener uses for any token it refuses.
std::unexpected<Error> RevokedTokenError();

struct Usage {
  int64_t input_tokens = 0;
  int64_t output_tokens = 0;
  int64_t llm_calls = 0;
  double cost_usd = 0;
};

struct Session {
  std::string id;  // "ses_..."
  SessionState state = SessionState::kStarting;
  std::string image;
  std::string backend;
  std::string model;             // model alias
  Json models = Json::array();   // aliases the sandbox may pick per call; empty: only `model`
  Json command = Json::array();  // [str...] or empty for the image's default
  Json limits = Json::object();
  Json metadata = Json::object();
  // Non-secret variables the creator gave the agent ({"NAME": "value"}); checked at create.
  Json env = Json::object();
  // What it may reach through the egress gateway, as POST /v1/sessions stored it:
  // {"policy": NAME}, {"allow": [...], "allow_addresses": [...]}, or {} (nothing).
  Json egress = Json::object();
  std::string token_hash;      // hex SHA-256 of the session token; "" once revoked
  std::string sandbox_handle;  // backend's opaque handle for reattach; "" when none
  std::optional<std::string> result;
  Usage usage;
  int64_t created_at = 0;  // ms since epoch
  int64_t updated_at = 0;
  std::optional<int64_t> ended_at;   // when it reached a final state
  std::optional<int64_t> purged_at;  // when retention deleted its events and conversation
  // The control plane (replica) that runs the session's sandbox and alone acts on it; ""
  // for a session created before replicas had names (whoever serves it owns it).
  std::string node;
  // While suspended, how (the idle tier): kPaused keeps the sandbox's memory, kHibernated has
  // written it to disk or let the sandbox go (see docs/sandbox.md). kActive otherwise.
  SuspendTier tier = SuspendTier::kActive;
  // When the session entered its current state and tier (ms since epoch).
  int64_t state_since = 0;
};

// A control plane replica, as its heartbeat shows it.
struct NodeInfo {
  std::string id;
  int64_t heartbeat_at = 0;  // ms since epoch
};

// One message of a session's conversation in the OpenAI chat shape ({"role", "content", ...}).
// User messages posted by the operator start `pending` (in the inbox, not yet part of the
// conversation). Taking them from the inbox gives them a conversation position, so the
// conversation order is the order in which the agent saw them.
struct Message {
  int64_t id = 0;                   // unique, increasing in insertion order
  std::optional<int64_t> position;  // conversation position (1, 2, ...); empty while pending
  Json body;                        // the message object itself
  int64_t created_at = 0;
};

// One proxied LLM call, recorded at once: the sandbox's new messages followed by the reply
// join the conversation, the call is metered, and its audit event is appended.
struct ChatRecord {
  std::vector<Json> messages;
  std::string model;                 // alias
  Usage usage;                       // this call's tokens and cost (llm_calls is ignored: one call)
  Json event_data = Json::object();  // data of the "llm.call" event
  // When set, the call is stored only if this is still the session's token hash: a reply
  // for a sandbox that was replaced meanwhile must not enter the new sandbox's conversation.
  std::string token_hash;
  // A client that rewrote its history (summarised, truncated it): the conversation's messages
  // after this position leave it before `messages` are appended. They stay in the store,
  // marked superseded, for the audit; ListMessages no longer returns them. 0: all of them.
  std::optional<int64_t> supersede_after;
  // With supersede_after: only up to this position (the last the client saw). Messages that
  // calls of the session running at the same time stored meanwhile stay. Unset: all after.
  std::optional<int64_t> supersede_through;
};

// What RecordChat did: the session's new totals, and where the record's messages went.
struct ChatRecorded {
  Usage totals;
  // The conversation position of the record's first message (0 when it had none). It is the
  // version of the conversation (see Conversation) the record was applied to: a caller that
  // held that version can apply the record to its copy and be current at `version`.
  int64_t first_position = 0;
  int64_t version = 0;  // the conversation's version once the record was applied
};

// A session's conversation as ListMessages(id, false) returns it, with its version: a number
// that every change to the conversation (TakeInbox, AppendConversation, RecordChat, and a
// purge's deletion) increases in the same transaction, and nothing else changes. `messages`
// is absent (nullopt) when the version was still the one the caller said it holds: its copy is
// current.
struct Conversation {
  int64_t version = 0;
  std::optional<std::vector<Message>> messages;
};

struct UsageQuery {
  int64_t since = 0;          // ms since epoch, inclusive
  int64_t until = INT64_MAX;  // exclusive
};

struct UsageReport {
  Usage total;
  int64_t sessions = 0;  // sessions with at least one metered call
  std::map<std::string, Usage> by_model;
};

struct Event {
  std::string session_id;
  int64_t seq = 0;  // 1, 2, 3... per session, no gaps
  std::string type;
  Json data = Json::object();
  int64_t created_at = 0;
};

// Bounds on what a session may store as events (0 = no bound). Checked in the transaction of
// the append, so concurrent appends cannot overshoot them.
struct EventQuota {
  int64_t max_events = 0;
  int64_t max_bytes = 0;  // type + JSON text of the data, summed over the session's events
};

// One append of AppendEventsWithinQuota; the views must outlive the call.
struct EventAppend {
  std::string_view session_id;
  std::string_view type;
  const Json* data = nullptr;
  // When set, the append is refused (kUnauthenticated) unless this is still the session's
  // token hash when it commits: an event from a sandbox whose token was revoked or replaced
  // (a fresh sandbox took over) is never stored after the change, however recently its
  // token was checked.
  std::string_view token_hash;
};

// What AppendEventWithinQuota did.
struct QuotaAppend {
  std::optional<Event> event;  // the appended event; empty when the quota refused it
  std::string exceeded;        // refused: "events" or "bytes"
  int64_t limit = 0;           // refused: the bound that was reached
  bool noticed = false;        // refused, and this call appended the one "session.quota_exceeded"
};

// How much of the store a session takes (its events and conversation).
struct SessionFootprint {
  int64_t events = 0;
  int64_t messages = 0;
  int64_t bytes = 0;  // event type + data, message bodies (the JSON text)
};

// One bounded step of purging a session (see PurgeSessionStep).
struct PurgeStep {
  SessionFootprint deleted;
  bool done = false;  // nothing was left: the session is now marked purged
};

struct OperatorKey {
  std::string name;
  std::string hash;  // hex SHA-256 of the key
  int64_t created_at = 0;
};

struct ListSessionsQuery {
  std::optional<SessionState> state;
  int limit = 100;
  std::optional<std::string> before_id;  // pagination: sessions created before this one
};

struct StateChange {
  std::vector<SessionState> from;  // the change applies only in one of these states
  SessionState to;
  std::optional<std::string> result;
  bool revoke_token = false;                  // clears token_hash in the same transaction
  std::optional<std::string> sandbox_handle;  // set when present
  // When set, the change applies only while this is still the session's token hash (else
  // kUnauthenticated; a session no longer in `from` is kConflict first), checked in the change's
  // own transaction: a sandbox that ends its session (finish) cannot do so once a fresh sandbox has
  // replaced its token, however recently the token was checked. As EventAppend.token_hash.
  std::string token_hash;
  // The tier a change to kSuspended leaves the session in (suspended -> suspended moves it
  // from paused to hibernated). Any other state is kActive. Last, so that positional
  // initializers ({from, to, result, ...}) keep their meaning.
  SuspendTier tier = SuspendTier::kActive;
  // When the change happened by the control plane's clock (ms since epoch), which the
  // reconciler measures a paused session's idleness against: the session's state_since when
  // the state or the tier changes. 0: the store's own clock.
  int64_t at = 0;
};

// A committed change that another replica's waiters may be parked on: an inbox long-poll
// (kInbox), an event stream (kEvents), anything bound to a session that has ended (kEnded).
// A fresh sandbox (RestartSandbox: the session's token replaced) is announced as kInbox: the
// old sandbox's long-poll must end, and a replica that remembers the old token must forget it.
// An empty session_id means "anything may have changed" (the feed was interrupted).
struct Change {
  enum class Kind { kInbox, kEvents, kEnded };
  Kind kind = Kind::kEvents;
  std::string session_id;
};

// The control plane's whole state. Implementations are thread-safe and blocking; the control
// plane calls them from a worker pool (common/blocking.h), never from the event loop.
// Every method commits before it returns: a value returned is durable across a crash of
// the process (kill -9). Errors: kNotFound for a missing session, kConflict for a state
// change that does not apply, kUnavailable/kInternal for database failures.
class Store {
 public:
  virtual ~Store() = default;

  // Creates or upgrades the schema; idempotent.
  virtual Status Migrate() = 0;
  // Delivers the changes every writer commits (other replicas' included) to `sink`, from a
  // thread of the store's, until the store is destroyed; call it once. At most once and
  // unordered across sessions: a waiter re-reads the store when woken. The default delivers
  // nothing: a store that only this process writes (SQLite) has nothing to tell it, since the
  // process wakes its own waiters.
  virtual Status WatchChanges(std::function<void(const Change&)> sink) {
    (void)sink;
    return Ok();
  }
  // Whether the store answers now (the readiness probe, /readyz): a cheap read. A store with
  // a cheaper round trip than this default (SELECT 1) overrides it.
  virtual Status Ping() {
    auto keys = ListOperatorKeys();
    if (!keys) return std::unexpected(keys.error());
    return Ok();
  }

  virtual Status AddOperatorKey(const OperatorKey& key) = 0;  // kConflict if the name exists
  virtual Result<std::vector<OperatorKey>> ListOperatorKeys() = 0;

  // Inserts the session, its task as the first pending user message, and a
  // "session.created" event, in one transaction. A session created in another state than
  // starting (one that took a warm pool's sandbox, running at once with its token issued)
  // also gets the "session.state" event {"from": "starting", "to": <its state>}, as if it had
  // started.
  virtual Status CreateSession(const Session& session, const Json& task_message) = 0;
  virtual Result<Session> GetSession(std::string_view id) = 0;
  // kNotFound when no live session has this token hash (revoked tokens are not found).
  virtual Result<Session> GetSessionByTokenHash(std::string_view token_hash) = 0;
  virtual Result<std::vector<Session>> ListSessions(const ListSessionsQuery& q) = 0;
  // Applies `change` if the session is in one of `change.from` (kConflict otherwise, with the
  // current state in the message) and appends a "session.state" event {"from","to","result"?,
  // "tier"? (when `to` is kSuspended)}. A suspended session may change to kSuspended again (a
  // new tier). state_since moves to now when the state or the tier changes. Returns the updated
  // session.
  virtual Result<Session> ChangeState(std::string_view id, const StateChange& change) = 0;
  // Records the sandbox of a session in whatever state it is: a session can end while its
  // sandbox is still being created, and whoever ends it must still find the sandbox.
  virtual Status SetSandboxHandle(std::string_view id, std::string_view handle) = 0;
  // A fresh sandbox for a live session whose sandbox is gone, in one transaction: the token
  // hash is replaced (the old token stops working), the handle cleared, the state set to
  // running (a "session.state" event if it was suspended) and a "session.sandbox_restart"
  // event with `data` appended. kConflict unless the session is running or suspended, and
  // on `node`: a replica that decided to restart a sandbox just before another took the
  // session over must not start a second one.
  virtual Result<Session> RestartSandbox(std::string_view id, std::string_view node,
                                         std::string_view token_hash, const Json& data) = 0;
  // The token of a session whose sandbox takes its identity over its channel, in one
  // transaction: such a session is created (or restarted) without a token, and the first
  // request for its identity gets one. Compare-and-swap: kConflict unless the session is
  // starting or running, on `node`, and still has no token, so an identity is handed out once
  // whoever asks again and however many ask at once. A starting session becomes running (a
  // "session.state" event). Returns the updated session.
  virtual Result<Session> IssueToken(std::string_view id, std::string_view node,
                                     std::string_view token_hash) = 0;

  // Replicas. Each records that it is alive (an upsert of its row); another takes over the
  // sessions of one whose heartbeat is too old.
  virtual Status Heartbeat(std::string_view node, int64_t now_ms) = 0;
  virtual Result<std::vector<NodeInfo>> ListNodes() = 0;
  // Moves a live session from node `from` to node `to` (compare-and-swap: kConflict when it
  // is no longer on `from` or has ended, so of two replicas taking over only one does) and
  // appends a "session.node" event {"from", "to"}. Returns the updated session.
  virtual Result<Session> AdoptSession(std::string_view id, std::string_view from,
                                       std::string_view to) = 0;

  // Appends a pending user message (the inbox). Returns its id. kConflict if terminal.
  virtual Result<int64_t> AddUserMessage(std::string_view session_id, const Json& message) = 0;
  // Atomically moves every pending user message into the conversation, in id order, and
  // returns them. Empty when none are pending.
  // `token_hash` (when not empty) must still be the session's token hash, else
  // kUnauthenticated and nothing is taken: a long-poll of a sandbox that was replaced while it
  // waited must not take messages the new sandbox will never see.
  virtual Result<std::vector<Message>> TakeInbox(std::string_view session_id,
                                                 std::string_view token_hash) = 0;
  // Appends messages (assistant replies, tool results) to the conversation, in order.
  virtual Status AppendConversation(std::string_view session_id,
                                    const std::vector<Json>& messages) = 0;
  // The conversation in position order (without messages a rewrite superseded: see
  // ChatRecord); with `include_pending`, pending messages follow.
  virtual Result<std::vector<Message>> ListMessages(std::string_view session_id,
                                                    bool include_pending) = 0;
  // The conversation and its version; without the messages when the version is still
  // `known_version` (a caller's cached copy; 0 holds none). kNotFound for no such session.
  virtual Result<Conversation> ReadConversation(std::string_view session_id,
                                                int64_t known_version) = 0;

  // Appends an event with the session's next seq and returns it.
  virtual Result<Event> AppendEvent(std::string_view session_id, std::string_view type,
                                    const Json& data) = 0;
  // Appends an event the sandbox caused (one it posted, a presign, a refused LLM call) unless
  // it would take the session past `quota`. The first refusal of a session also appends one
  // "session.quota_exceeded" event {"quota", "limit", "type"} (past the quota, so a reader
  // learns why events stop; never a second one, so refusals cannot grow the table again).
  // Every event, whatever appends it, counts towards the session's totals.
  virtual Result<QuotaAppend> AppendEventWithinQuota(std::string_view session_id,
                                                     std::string_view type, const Json& data,
                                                     const EventQuota& quota) = 0;
  // Many AppendEventWithinQuota calls at once: element i of the answer is what call i would
  // have answered, and an append that fails fails alone. Appends of one session keep their
  // order. A store that can commits them together (one transaction, one flush) and returns
  // once that commit is done, checking each `token_hash` in that transaction; this default
  // appends them one by one, and checks a token hash just before (not atomically).
  virtual std::vector<Result<QuotaAppend>> AppendEventsWithinQuota(
      const std::vector<EventAppend>& events, const EventQuota& quota);
  // Events with seq > after, in seq order, at most `limit`.
  virtual Result<std::vector<Event>> ListEvents(std::string_view session_id, int64_t after,
                                                int limit) = 0;

  // Records one metered LLM call and adds it to the session's totals.
  virtual Status RecordUsage(std::string_view session_id, std::string_view model,
                             const Usage& usage) = 0;
  // Applies `record` in one transaction (see ChatRecord) and returns the session's new
  // totals and the conversation's new version. kConflict if the session has ended.
  virtual Result<ChatRecorded> RecordChat(std::string_view session_id,
                                          const ChatRecord& record) = 0;
  // Metered calls in [since, until), in total and per model alias.
  virtual Result<UsageReport> GetUsage(const UsageQuery& q) = 0;

  // Retention. A purged session keeps its row (id, state, result, usage, metadata: what usage
  // reports and `airlock ls` need) and its metered calls; its events and messages go.
  //
  // Ended sessions that ended before `ended_before` (ms since epoch) and are not purged yet,
  // those that ended first first, at most `limit`.
  virtual Result<std::vector<std::string>> ListPurgeable(int64_t ended_before, int limit) = 0;
  // What purging the session would delete from the store now.
  virtual Result<SessionFootprint> Footprint(std::string_view session_id) = 0;
  // Deletes at most `max_rows` events and messages of an ended session in one short
  // transaction (so a large session never holds the write lock for long); when none are
  // left it marks the session purged and says done. kConflict for a live session.
  virtual Result<PurgeStep> PurgeSessionStep(std::string_view session_id, int max_rows) = 0;
  // Gives up to `max_pages` free pages of the database file back to the file system
  // (incremental vacuum) and returns how many went. A database created before auto-vacuum
  // was enabled returns 0: its free pages are reused by later writes instead (see
  // docs/operators.md to convert it).
  virtual Result<int64_t> ReleaseFreePages(int64_t max_pages) = 0;
};

}  // namespace airlock::store
