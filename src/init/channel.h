#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "sys.h"

namespace airlock::init {

// One HTTP/1.1 exchange with the control plane over its Unix socket (Connection: close):
// what came back, or why it is worth trying again.
struct Exchange {
  enum Kind { kOk, kRetry, kFinal } kind = kRetry;
  int status = 0;      // the HTTP status, when one came back
  std::string body;    // the response body (at most kMaxResponseBytes)
  std::string reason;  // kRetry/kFinal: why, one line
};

// The largest response init reads: every answer it needs is a few hundred bytes...
inline constexpr size_t kMaxResponseBytes = 16 * 1024;
// ...but the session's work: a session's variables are at most 64 KiB, which JSON may escape
// to six times that.
inline constexpr size_t kMaxWorkBytes = 1 << 20;

// Sends `request` (a complete HTTP/1.1 request) to the socket at `socket_path` and reads the
// answer until the peer closes, within `timeout_ms`. Connect and I/O errors and 5xx answers
// are kRetry (the control plane may be restarting); 2xx is kOk; anything else is kFinal.
Exchange ExchangeOnce(const std::string& socket_path, const std::string& request,
                      int64_t timeout_ms, size_t max_body = kMaxResponseBytes);

// Connects to the socket at `socket_path` and sends `request`: the connected socket, with
// `timeout_ms` as its send and receive timeout, for the caller to read the answer from.
Result<UniqueFd> SendRequest(const std::string& socket_path, const std::string& request,
                             int64_t timeout_ms);

// The session's identity as GET /sandbox/v1/identity answers it: {"session_id", "token"},
// and the session's work (what GET /sandbox/v1/work answers) as "work" from a control plane
// that sends it along.
struct Identity {
  std::string session_id;
  std::string token;
  std::string work;  // the JSON object as sent, for ParseWork; empty when not sent
};

// Parses that answer. Strict on purpose: a JSON object whose two members are strings of
// [A-Za-z0-9_-] (what the control plane's ids and tokens are made of), in any order, with
// nothing that needs unescaping, then optionally "work", an object, as the last member (keys
// in the order the control plane writes them); anything else is refused. The work's own
// members are ParseWork's to check.
Result<Identity> ParseIdentity(std::string_view json);

// Asks the control plane for the session's identity until it answers: while it cannot be
// reached or answers 5xx (it may be restarting) init retries with backoff, without limit (a
// sandbox that waits holds nothing); any other refusal is final (the identity was already
// handed out, the session ended).
// Security: the request carries no credential; the socket is this sandbox's own, and the
// control plane answers it once.
Result<Identity> FetchIdentity(const std::string& socket_path);

}  // namespace airlock::init
