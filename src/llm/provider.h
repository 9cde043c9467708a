#pragma once

// A provider makes one chat call for the control plane: an HTTP upstream speaking the OpenAI
// or Anthropic wire format, or the scripted model (replies read from a file, for offline
// runs and tests).

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/asio.h"
#include "common/result.h"
#include "common/secret.h"
#include "llm/chat.h"
#include "llm/upstream_client.h"

namespace airlock::llm {

// Receives the OpenAI-shaped chunks of a streamed reply as the provider produces them.
// Returning false means the receiver is gone. Before the reply is complete the provider stops
// and cancels the upstream (the call fails with kReceiverGone, `spent` estimated); once it is
// complete (a chunk with a finish_reason was produced) the call completes without it.
class ChunkReceiver {
 public:
  virtual ~ChunkReceiver() = default;
  virtual awaitable<bool> OnChunk(const Json& chunk) = 0;
};

// Why a call failed, for the sandbox (HTTP status), metrics and the audit event.
enum class Outcome { kOk, kUpstreamError, kTimeout, kRefused, kCancelled, kReceiverGone };
std::string_view OutcomeName(Outcome o);

struct CallError {
  Outcome outcome = Outcome::kUpstreamError;
  std::string message;  // safe for the sandbox: no key, no upstream auth detail
  unsigned upstream_status = 0;
  // What the upstream produced (and bills) before the call failed: set when a streamed reply
  // had begun, so that a call the sandbox hangs up on is still charged to its session.
  std::optional<TokenUsage> spent;
};

template <typename T>
using CallResult = std::expected<T, CallError>;

class Provider {
 public:
  virtual ~Provider() = default;
  virtual std::string_view kind() const = 0;  // "openai" | "anthropic" | "scripted"
  // One call. With req.stream, every chunk goes to `receiver` (non-null) as it is produced.
  // When the receiver is gone after the reply is complete (finish_reason seen), an HTTP
  // provider keeps reading the upstream, bounded by kDrainTimeout and kMaxDrainBytes, for the
  // usage it reports at the end, and returns the reply (usage estimated if none came).
  // Messages of a CallError never hold the provider key in any encoding (KeyRedactor).
  virtual awaitable<CallResult<ChatResult>> Chat(const ChatRequest& req, ChunkReceiver* receiver,
                                                 CallCancel& cancel) = 0;
};

// Bounds on reading an upstream stream on after its receiver went away.
inline constexpr std::chrono::milliseconds kDrainTimeout{10'000};
inline constexpr size_t kMaxDrainBytes = 64 << 10;

}  // namespace airlock::llm
