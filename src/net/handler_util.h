#pragma once

// Early returns for route handlers (coroutines returning a Response): an error Result becomes
// the API's JSON error with the status of its code.

#include "common/result.h"
#include "net/http_server.h"

#define AIRLOCK_CO_TRY(expr)                                                                      \
  do {                                                                                            \
    auto airlock_co_try_ = (expr);                                                                \
    if (!airlock_co_try_) co_return ::airlock::net::Response::FromError(airlock_co_try_.error()); \
  } while (0)
#define AIRLOCK_CO_ASSIGN(lhs, expr) \
  AIRLOCK_CO_ASSIGN_IMPL(AIRLOCK_CONCAT(airlock_co_, __LINE__), lhs, expr)
#define AIRLOCK_CO_ASSIGN_IMPL(tmp, lhs, expr)                          \
  auto tmp = (expr);                                                    \
  if (!tmp) co_return ::airlock::net::Response::FromError(tmp.error()); \
  lhs = std::move(*tmp)
