#pragma once

// The sandbox-side client library: everything an agent inside a sandbox does with the
// control plane (docs/api.md, "Sandbox API"), with the bookkeeping that is easy to get
// wrong done once:
//   - the three variables are read once and removed from the process, and the process is
//     made non-dumpable, so that the programs an agent starts cannot find the token in their
//     environment, in /proc/<agent>/environ or in the agent's memory;
//   - the conversation is tracked: Chat() sends only the messages added since the last call,
//     and after an ambiguous failure (a broken connection, or a proxy's 502/504 without the
//     API's error shape) asks the control plane whether the call was stored before sending
//     anything again, so that nothing is lost or duplicated;
//   - every request is retried with backoff while the control plane is unreachable (a restart,
//     a sandbox that was frozen and thawed), within a deadline.
//
// Not thread-safe: one agent loop owns one client.

#include <cstdint>
#include <expected>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "http.h"

namespace airlock::agent {

using Json = nlohmann::json;

struct ClientError {
  enum class Kind {
    kUnreachable,  // the control plane did not answer within the retry deadline
    kSessionOver,  // 401: the token is revoked, the session has ended
    kBudget,       // 402: the session's token or cost budget is spent
    kRejected,     // another 4xx: the request itself is wrong (the message says why)
    kServer,       // a 5xx that stayed after retries
    kLocal,        // a local file could not be read or written
  };
  Kind kind = Kind::kServer;
  int status = 0;    // HTTP status, 0 when there was none
  std::string code;  // the API's error code, e.g. "budget_exhausted"
  std::string message;
  std::string ToString() const;
};

template <typename T>
using ClientResult = std::expected<T, ClientError>;

struct ClientOptions {
  int retry_deadline_ms = 120'000;      // how long a request is retried while nothing answers
  int request_timeout_ms = 60'000;      // one attempt of an ordinary request
  int chat_timeout_ms = 660'000;        // one LLM call (the control plane allows 600 s upstream)
  int transfer_timeout_ms = 3'600'000;  // one upload or download
};

struct PresignedUrl {
  std::string url;
  std::string method;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string expires_at;
};

class SandboxClient {
 public:
  SandboxClient(std::string control_plane_url, std::string token, std::string session_id,
                ClientOptions options = {});

  // Reads SESSION_ID, SESSION_TOKEN and CONTROL_PLANE_URL from the environment, removes them
  // (and zeroes the strings the process started with, which /proc/<pid>/environ serves) and
  // makes the process non-dumpable. Fails when one is missing or the URL is not usable.
  static std::expected<SandboxClient, std::string> FromEnvironment(ClientOptions options = {});

  const std::string& session_id() const { return session_id_; }

  // GET /sandbox/v1/inbox?wait=: the user messages not yet taken (the task first), [] when
  // none arrived within `wait_s`. Taken messages are part of the conversation now: they are
  // appended to history() as already sent.
  ClientResult<std::vector<Json>> Inbox(int wait_s);

  // GET /sandbox/v1/history: replaces the local conversation with the control plane's; all
  // of it counts as sent.
  ClientResult<void> LoadHistory();
  const std::vector<Json>& history() const { return history_; }
  // Messages added locally and not yet sent with Chat().
  size_t pending() const { return history_.size() - sent_; }

  // Appends a user or tool message to send with the next Chat().
  void Add(Json message);

  // POST /sandbox/v1/llm/chat with the pending messages; appends the reply and returns it.
  // `model` empty = the session's default alias.
  ClientResult<Json> Chat(const Json& tools, const std::string& model = "");
  const Json& last_usage() const { return last_usage_; }

  ClientResult<PresignedUrl> Presign(const std::string& name, const std::string& method,
                                     std::optional<uint64_t> size = std::nullopt,
                                     const std::string& content_type = "");
  // Uploads the file at `path` as the session's file `name`; returns its size.
  ClientResult<uint64_t> Upload(const std::string& path, const std::string& name,
                                const std::string& content_type = "");
  // Downloads the session's file `name` to `path` (written to a temporary file, then renamed).
  ClientResult<uint64_t> Download(const std::string& name, const std::string& path);

  ClientResult<void> Event(const std::string& type, const Json& data = Json::object());
  ClientResult<void> Finish(const std::string& status, const std::string& result);

  // Called before each retry with the reason and the delay; the agent logs it. Optional.
  std::function<void(const std::string&)> on_retry;

 private:
  struct Call {
    std::string method;
    std::string path;  // under the control plane URL, e.g. "/sandbox/v1/inbox?wait=30"
    std::optional<Json> body;
    int timeout_ms = 0;
  };
  // One request with retries. On success the response (any status < 400, and 4xx the caller
  // asked to see are errors).
  ClientResult<HttpResponse> Send(const Call& call, bool* ambiguous = nullptr);
  ClientResult<HttpResponse> Once(const Call& call, HttpError* transport);
  ClientResult<Json> SendJson(const Call& call);
  // After a chat attempt whose outcome is unknown: whether the control plane stored it (the
  // history is then ours + the pending messages + one assistant reply, which is adopted).
  ClientResult<std::optional<Json>> StoredReply(size_t expected_before);
  void Backoff(int attempt, const std::string& why);

  HttpUrl base_;
  std::string token_;
  std::string session_id_;
  ClientOptions options_;
  std::vector<Json> history_;
  size_t sent_ = 0;
  Json last_usage_ = Json::object();
};

}  // namespace airlock::agent
