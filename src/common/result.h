#pragma once

#include <cstdint>
#include <expected>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

namespace airlock {

// The reasons an operation can fail. One place (net::Response::FromError(const Error&)) maps
// them to HTTP statuses and the API's error body, so a module never needs to know about HTTP
// to report an error.
enum class ErrorCode {
  kInvalidArgument,      // 400: the caller sent something malformed or out of range
  kUnauthenticated,      // 401: missing or unknown credential
  kPaymentRequired,      // 402: the session's budget is spent
  kPermissionDenied,     // 403: credential valid but not for this
  kNotFound,             // 404
  kMethodNotAllowed,     // 405: the route exists, not with this method
  kConflict,             // 409: the state does not allow it (bad state transition, ...)
  kGone,                 // 410: the thing existed but has ended (a finished session)
  kPayloadTooLarge,      // 413
  kRangeNotSatisfiable,  // 416: a byte range outside the thing asked for
  kResourceExhausted,    // 429: limits, quotas
  kInsufficientStorage,  // 507: no room to store what was sent
  kUnimplemented,        // 501
  kUnavailable,          // 503: a dependency is down or not configured
  kDeadlineExceeded,     // 504
  kInternal,             // 500
};

std::string_view ErrorCodeName(ErrorCode code);

struct Error {
  ErrorCode code = ErrorCode::kInternal;
  std::string message;
  // The machine-readable code the API answers with, when it is more precise than the default
  // name of `code` (a 429 that says "rate_limited" rather than "resource_exhausted").
  std::string api_code;
  // Seconds after which a retry may succeed; the response then carries a Retry-After header.
  std::optional<int64_t> retry_after_s;
};

template <typename T>
using Result = std::expected<T, Error>;
using Status = Result<void>;

inline std::unexpected<Error> MakeError(ErrorCode code, std::string message) {
  return std::unexpected(Error{code, std::move(message)});
}

template <typename... Args>
std::unexpected<Error> Errorf(ErrorCode code, fmt::format_string<Args...> f, Args&&... args) {
  return std::unexpected(Error{code, fmt::format(f, std::forward<Args>(args)...)});
}

inline Status Ok() { return {}; }

}  // namespace airlock

// Propagates the error of a Result/Status expression; evaluates to nothing.
#define AIRLOCK_TRY(expr)                                             \
  do {                                                                \
    auto airlock_try_result_ = (expr);                                \
    if (!airlock_try_result_) {                                       \
      return std::unexpected(std::move(airlock_try_result_).error()); \
    }                                                                 \
  } while (0)

#define AIRLOCK_CONCAT_INNER(a, b) a##b
#define AIRLOCK_CONCAT(a, b) AIRLOCK_CONCAT_INNER(a, b)

// AIRLOCK_ASSIGN_OR_RETURN(auto x, Foo()); binds the value or propagates the error.
#define AIRLOCK_ASSIGN_OR_RETURN(lhs, expr) \
  AIRLOCK_ASSIGN_OR_RETURN_IMPL(AIRLOCK_CONCAT(airlock_aor_, __LINE__), lhs, expr)
#define AIRLOCK_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp) {                                         \
    return std::unexpected(std::move(tmp).error());   \
  }                                                   \
  lhs = std::move(*tmp)
