#pragma once

// Readers of upstream JSON shared by the wire formats (openai.cc, anthropic.cc). Every upstream
// body is hostile: these never throw and bound what they accept.

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/json_util.h"
#include "common/result.h"

namespace airlock::llm::wire {

// Bounds on what one reply may hold, so that a hostile stream cannot make us allocate for
// tool-call index 2^40.
inline constexpr int64_t kMaxToolCalls = 128;
inline constexpr int64_t kMaxTokenCount = int64_t{1} << 40;

inline Error Unavailable(std::string message) {
  return Error{ErrorCode::kUnavailable, std::move(message)};
}

// The member `key` of `obj`, or nullptr when `obj` is not an object or has no such member.
inline const Json* Member(const Json& obj, std::string_view key) {
  if (!obj.is_object()) {
    return nullptr;
  }
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

inline const std::string* StringMember(const Json& obj, std::string_view key) {
  const Json* v = Member(obj, key);
  return v != nullptr && v->is_string() ? v->get_ptr<const std::string*>() : nullptr;
}

inline bool IsAbsent(const Json* v) { return v == nullptr || v->is_null(); }

// A token count from an upstream usage object: absent or null gives nullopt; anything but a
// non-negative integer of sane size is an error (a negative or 1e30 count would corrupt the
// session's budget).
inline airlock::Result<std::optional<int64_t>> TokenCount(const Json& usage, std::string_view key) {
  const Json* v = Member(usage, key);
  if (IsAbsent(v)) {
    return std::optional<int64_t>();
  }
  int64_t n = -1;
  if (v->is_number_unsigned()) {
    const uint64_t u = v->get<uint64_t>();
    n = u <= static_cast<uint64_t>(kMaxTokenCount) ? static_cast<int64_t>(u) : -1;
  } else if (v->is_number_integer()) {
    n = v->get<int64_t>();
  } else if (v->is_number_float()) {
    const double d = v->get<double>();
    if (d >= 0 && d <= static_cast<double>(kMaxTokenCount) && d == std::floor(d)) {
      n = static_cast<int64_t>(d);
    }
  }
  if (n < 0 || n > kMaxTokenCount) {
    return Errorf(ErrorCode::kUnavailable, "upstream usage.{} is not a valid token count", key);
  }
  return std::optional<int64_t>(n);
}

inline std::string HttpStatusText(unsigned status) {
  std::string_view reason;
  switch (status) {
    case 400:
      reason = "Bad Request";
      break;
    case 401:
      reason = "Unauthorized";
      break;
    case 402:
      reason = "Payment Required";
      break;
    case 403:
      reason = "Forbidden";
      break;
    case 404:
      reason = "Not Found";
      break;
    case 408:
      reason = "Request Timeout";
      break;
    case 409:
      reason = "Conflict";
      break;
    case 413:
      reason = "Payload Too Large";
      break;
    case 422:
      reason = "Unprocessable Entity";
      break;
    case 429:
      reason = "Too Many Requests";
      break;
    case 500:
      reason = "Internal Server Error";
      break;
    case 502:
      reason = "Bad Gateway";
      break;
    case 503:
      reason = "Service Unavailable";
      break;
    case 504:
      reason = "Gateway Timeout";
      break;
    case 529:
      reason = "Overloaded";
      break;
    default:
      break;
  }
  if (reason.empty()) {
    return fmt::format("HTTP {}", status);
  }
  return fmt::format("HTTP {} {}", status, reason);
}

// An OpenAI tool call: what an assistant message's `tool_calls` holds, whichever API the call
// came in by (`arguments` is JSON text).
inline Json OpenAiToolCall(const std::string& id, const std::string& name, std::string arguments) {
  Json call = Json::object();
  call["id"] = id;
  call["type"] = "function";
  call["function"] = Json::object();
  call["function"]["name"] = name;
  call["function"]["arguments"] = std::move(arguments);
  return call;
}

// Images reach a provider only inline, as data: URLs. A URL that the provider (or a local
// OpenAI-compatible server) would fetch is an outbound channel out of a sandbox that has no
// network, and a way to make the model server request internal addresses: never sent.
inline bool IsDataUrl(std::string_view url) {
  constexpr std::string_view kData = "data:";
  if (url.size() < kData.size()) {
    return false;
  }
  for (size_t i = 0; i < kData.size(); ++i) {
    char c = url[i];
    if (c >= 'A' && c <= 'Z') {
      c = static_cast<char>(c - 'A' + 'a');
    }
    if (c != kData[i]) {
      return false;
    }
  }
  return true;
}

// A provider key goes into a header verbatim; one holding CR/LF would let it add headers.
inline Status CheckHeaderValue(std::string_view value) {
  for (char c : value) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      return MakeError(ErrorCode::kUnavailable,
                       "the provider's API key is not a valid header value");
    }
  }
  return Ok();
}

}  // namespace airlock::llm::wire
