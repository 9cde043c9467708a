#pragma once

// Fake LLM upstreams: real HTTP/1.1 servers on real sockets (plain or TLS) that answer in the
// wire formats of the OpenAI Chat Completions API and the Anthropic Messages API, so that the
// proxy is tested and benchmarked against the bytes the real providers send.
//
// The shapes below are written from the providers' public API references. The fakes check no
// more than the real APIs do.
//
// ---- OpenAI: POST {prefix}/chat/completions (prefix "/v1" by default) --------------------------
// Request fields read: "model" (string, required), "messages" (array, required), "stream" (bool),
// "stream_options": {"include_usage": bool}. With an expected key: "Authorization: Bearer KEY".
// Response, not streaming (200, content-type: application/json, x-request-id: req_...):
//   {"id":"chatcmpl-fake-N","object":"chat.completion","created":UNIX,"model":MODEL,
//    "system_fingerprint":"fp_fake","service_tier":"default",
//    "choices":[{"index":0,"message":{"role":"assistant","content":TEXT|null,"refusal":null,
//                "annotations":[],
//                "tool_calls":[{"id":ID,"type":"function",
//                               "function":{"name":NAME,"arguments":JSON-TEXT}}]},   (if any)
//                "logprobs":null,"finish_reason":"stop"|"length"|"tool_calls"|"content_filter"}],
//    "usage":{"prompt_tokens":P,"completion_tokens":C,"total_tokens":P+C,
//             "prompt_tokens_details":{"cached_tokens":K,"audio_tokens":0},
//             "completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,
//                                          "accepted_prediction_tokens":0,
//                                          "rejected_prediction_tokens":0}}}
// Response, streaming (200, content-type: text/event-stream; charset=utf-8, chunked): one
// `data: JSON\n\n` per chunk, no `event:` names; every chunk is
//   {"id":..,"object":"chat.completion.chunk","created":..,"model":..,"system_fingerprint":..,
//    "choices":[{"index":0,"delta":DELTA,"logprobs":null,"finish_reason":null}]}
// (plus "usage":null on each when include_usage is set), in this order:
//   1. delta {"role":"assistant","content":"","refusal":null}   (content null if only tool calls)
//   2. delta {"content":PIECE} for each piece of the text
//   3. for each tool call i: delta {"tool_calls":[{"index":i,"id":ID,"type":"function",
//      "function":{"name":NAME,"arguments":""}}]}, then {"tool_calls":[{"index":i,
//      "function":{"arguments":PIECE}}]} for each piece of the arguments
//   4. delta {} with "finish_reason":REASON
//   5. only when stream_options.include_usage is true: "choices":[] and "usage":{...as above}
//   6. `data: [DONE]`
// Errors (any status): {"error":{"message":..,"type":..,"param":null,"code":..}}, e.g.
//   401 {"error":{"message":"Incorrect API key provided: sk-...","type":"invalid_request_error",
//        "param":null,"code":"invalid_api_key"}};  429 type "requests", code
//   "rate_limit_exceeded" (with retry-after);  500 type "server_error", code null.
// A mid-stream error is `data: {"error":{...}}` and the stream ends.
//
// ---- Anthropic: POST /v1/messages ---------------------------------------------------------------
// Request fields read: "model", "max_tokens", "messages" (all required), "system" (counted in the
// prompt), "stream" (bool). With an expected key: "x-api-key: KEY" and "anthropic-version".
// Response, not streaming (200, content-type: application/json, request-id: req_...):
//   {"id":"msg_fake_N","type":"message","role":"assistant","model":MODEL,
//    "content":[{"type":"text","text":TEXT},                                   (if any text)
//               {"type":"tool_use","id":ID,"name":NAME,"input":OBJECT}, ...],  (if any)
//    "stop_reason":"end_turn"|"max_tokens"|"tool_use"|"refusal","stop_sequence":null,
//    "usage":{"input_tokens":P,"output_tokens":C,"cache_creation_input_tokens":0,
//             "cache_read_input_tokens":K}}
// Response, streaming (200, content-type: text/event-stream; charset=utf-8, chunked): each event
// is `event: TYPE\ndata: JSON\n\n`:
//   message_start        {"type":"message_start","message":{...as above with "content":[],
//                         "stop_reason":null,"usage":{"input_tokens":P,"output_tokens":1,...}}}
//   content_block_start  {"type":"content_block_start","index":0,
//                         "content_block":{"type":"text","text":""}}
//   ping                 {"type":"ping"}
//   content_block_delta  {"type":"content_block_delta","index":0,
//                         "delta":{"type":"text_delta","text":PIECE}}            (xN)
//   content_block_stop   {"type":"content_block_stop","index":0}
//   for each tool call, a block at the next index: content_block_start with
//     {"type":"tool_use","id":ID,"name":NAME,"input":{}}, content_block_delta with
//     {"type":"input_json_delta","partial_json":PIECE} (xN), content_block_stop
//   message_delta        {"type":"message_delta","delta":{"stop_reason":R,"stop_sequence":null},
//                         "usage":{"output_tokens":C}}
//   message_stop         {"type":"message_stop"}
// (With no text the text block is left out and the ping follows message_start.)
// Errors: {"type":"error","error":{"type":T,"message":M},"request_id":"req_..."} with T by status:
//   400 invalid_request_error, 401 authentication_error, 402 billing_error, 403 permission_error,
//   404 not_found_error, 413 request_too_large, 429 rate_limit_error, 500 api_error,
//   504 timeout_error, 529 overloaded_error. A mid-stream error is `event: error` with that body.
//
// ---- Default reply (when the queue of programmed replies is empty) ---------------------------
// Text "reply N", N the request's number on this server (1, 2, ...), in the format and mode
// (streaming or not) the request asks for; finish "stop" / "end_turn". Usage: input tokens =
// bytes of the JSON of "messages" (and Anthropic's "system") / 4, at least 1; output tokens =
// words of the text (plus the bytes of tool-call arguments / 4), at least 1. A stream splits the
// text into `chunks` pieces (fewer when the text is shorter).

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"

namespace airlock::fake {

// The wire format of one request, chosen by its path.
enum class ApiFormat { kOpenAi, kAnthropic };

// What a server answers: one format, or both (routed by path).
enum class ServeFormats { kOpenAi, kAnthropic, kBoth };

struct ToolCall {
  std::string id;  // empty: "call_fake_N_I" (OpenAI) or "toolu_fake_N_I" (Anthropic)
  std::string name;
  std::string arguments;  // a JSON object as text (OpenAI's form); Anthropic gets it as `input`
};

// Why generation stopped, named once for both formats:
//   kStop: "stop" / "end_turn", kLength: "length" / "max_tokens",
//   kToolCalls: "tool_calls" / "tool_use", kContentFilter: "content_filter" / "refusal".
// kAuto is kToolCalls when the reply has tool calls, else kStop.
enum class Finish { kAuto, kStop, kLength, kToolCalls, kContentFilter };

// Token counts in Anthropic's terms: `input_tokens` excludes cache reads. OpenAI's
// prompt_tokens is input + cache_read, with cache_read as prompt_tokens_details.cached_tokens.
struct Usage {
  int64_t input_tokens = 0;
  int64_t output_tokens = 0;
  int64_t cache_read_tokens = 0;
};

// What to do to a response part way through (see Reply::CloseAfterEvents and friends).
enum class Fault { kNone, kClose, kHang, kErrorEvent };

// One programmed answer. Build one with a factory and adjust it with the With*/…After* helpers,
// each of which returns a modified copy:
//   up.Enqueue(Reply::Text("hi").WithEventDelay(50ms).CloseAfterEvents(3));
struct Reply {
  enum class Kind {
    kMessage,  // an assistant result, rendered in the request's format, streamed if asked
    kError,    // `status` with the provider's error body (type chosen by status unless set)
    kRaw,      // exactly `status`, `headers` and `body`
    kClose,    // close the connection without answering
    kHang,     // answer nothing and keep the connection open until Stop()
    kGarbage,  // write `body` (not HTTP) and close
  };
  Kind kind = Kind::kMessage;

  // kMessage.
  std::string text;
  bool default_text = false;  // use "reply N" instead of `text`
  std::vector<ToolCall> tool_calls;
  Finish finish = Finish::kAuto;
  std::optional<Usage> usage;  // unset: computed from the request and the reply
  std::string model;           // empty: the request's "model"
  int chunks = 0;              // pieces of text/arguments when streaming; 0: the server default

  // kError and kRaw. `headers` are added to every response of this reply (any kind).
  int status = 200;
  std::string error_message;
  std::string error_type;  // empty: by status, in the request's format
  std::string error_code;  // OpenAI's "code"; empty: by status (null when none applies)
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;  // kRaw body, kGarbage bytes

  // Timing and faults, for any kind that answers.
  std::chrono::milliseconds delay{0};         // before the status line (first-byte timeouts)
  std::chrono::milliseconds event_delay{-1};  // between stream events; <0: the server default
  Fault fault = Fault::kNone;                 // after `fault_after` events of a stream; for a
  int fault_after = 0;                        // response that is not a stream, kClose/kHang
                                              // happen half way through the body

  // An assistant message with this text (an empty string is an empty message).
  static Reply Text(std::string text);
  // The default reply ("reply N"), e.g. to delay it: Reply::Default().WithDelay(2s).
  static Reply Default();
  // Tool calls, with optional text before them; finish tool_calls / tool_use.
  static Reply Tools(std::vector<ToolCall> calls, std::string text = {});
  // A provider-shaped error body. Anthropic's 529 is Reply::Error(529, "Overloaded").
  static Reply Error(int status, std::string message);
  // 429 with retry-after: SECONDS.
  static Reply RateLimited(int retry_after_seconds = 1);
  // 529 overloaded_error, Anthropic's "try again later".
  static Reply Overloaded();
  static Reply Raw(int status, std::string body,
                   std::vector<std::pair<std::string, std::string>> headers = {
                       {"content-type", "application/json"}});
  // A 200 whose body is HTML, as a captive portal or a misconfigured gateway sends.
  static Reply NonJson();
  static Reply CloseBeforeResponse();
  static Reply Hang();
  // Bytes that are not HTTP, then a close; empty: a built-in mix of binary and text.
  static Reply Garbage(std::string bytes = {});

  Reply WithDelay(std::chrono::milliseconds d) const;
  Reply WithEventDelay(std::chrono::milliseconds d) const;
  Reply WithChunks(int n) const;
  Reply WithUsage(Usage u) const;
  Reply WithFinish(Finish f) const;
  Reply WithModel(std::string m) const;
  Reply WithHeader(std::string name, std::string value) const;
  Reply WithErrorType(std::string type, std::string code = {}) const;
  // Stream faults after k events (OpenAI: `data:` lines; Anthropic: events, ping included; the
  // response head does not count).
  Reply CloseAfterEvents(int k) const;
  Reply HangAfterEvents(int k) const;
  // Sends the provider's mid-stream error event (`message`, type by `status`) after k events.
  Reply ErrorAfterEvents(int k, int status = 529, std::string message = "Overloaded") const;
};

struct RecordedRequest {
  uint64_t number = 0;      // 1, 2, ... in arrival order on this server
  uint64_t connection = 0;  // 1, 2, ... in accept order: equal numbers share a connection
  std::string method;
  std::string target;                          // as sent, query included
  std::map<std::string, std::string> headers;  // lowercase names; repeats joined with ", "
  std::string body;

  // The header's value, or "" when absent. `name` is lowercase.
  std::string Header(const std::string& name) const;
  // The body parsed as JSON; a discarded value when it is not JSON.
  nlohmann::json Json() const;
};

struct FakeUpstreamOptions {
  ServeFormats formats = ServeFormats::kOpenAi;
  std::string openai_prefix = "/v1";  // OpenAI path is {prefix}/chat/completions
  std::string host = "127.0.0.1";
  uint16_t port = 0;      // 0: the kernel picks; see port()
  std::string cert_file;  // TLS when both are set (PEM chain and key)
  std::string key_file;
  // When set, requests must carry it (OpenAI: Authorization: Bearer KEY; Anthropic: x-api-key,
  // and anthropic-version must be present), else the provider's 401 (400 for the version).
  std::string expected_key;
  int threads = 2;         // threads running the server's io_context
  int default_chunks = 3;  // text pieces per stream when a reply says 0
  std::chrono::milliseconds default_event_delay{0};
  int default_reply_words = 0;  // >0: "reply N" grows to this many words
  bool record = true;           // false: count requests, keep none (long runs)
};

// A fake provider server. It listens when constructed and stops when destroyed.
// Thread-safe: every public method may be called from any thread while it serves.
class FakeUpstream {
 public:
  // Starts at once; on failure (bad TLS files, address in use) ok() is false and error() says
  // why. Prefer Start() where a Result reads better.
  explicit FakeUpstream(FakeUpstreamOptions options = {});
  ~FakeUpstream();
  FakeUpstream(const FakeUpstream&) = delete;
  FakeUpstream& operator=(const FakeUpstream&) = delete;

  static Result<std::unique_ptr<FakeUpstream>> Start(FakeUpstreamOptions options = {});

  bool ok() const;
  const std::string& error() const;

  // Closes the listener and every connection (hanging ones included) and joins the threads.
  // Idempotent; never waits on a client. requests() stays readable afterwards.
  void Stop();

  uint16_t port() const;
  // "http://127.0.0.1:PORT" or "https://…" (no trailing slash, no path).
  std::string base_url() const;

  // Appends to the FIFO of programmed replies; each request takes the next one. Requests
  // answered 401/400/404 by the auth and routing checks do not take one.
  void Enqueue(Reply reply);
  void Enqueue(std::vector<Reply> replies);
  // Replaces the built-in default used when the queue is empty; nullopt restores it.
  void SetDefaultReply(std::optional<Reply> reply);
  size_t pending_replies() const;

  std::vector<RecordedRequest> requests() const;
  size_t request_count() const;
  uint64_t connections_accepted() const;
  // Waits until at least `n` requests have arrived (fully read); false on timeout.
  bool WaitForRequests(size_t n, std::chrono::milliseconds timeout = std::chrono::seconds(10));

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace airlock::fake
