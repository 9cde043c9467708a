#include "store/store.h"

namespace airlock::store {

std::string_view StateName(SessionState s) {
  switch (s) {
    case SessionState::kStarting:
      return "starting";
    case SessionState::kRunning:
      return "running";
    case SessionState::kSuspended:
      return "suspended";
    case SessionState::kSucceeded:
      return "succeeded";
    case SessionState::kFailed:
      return "failed";
    case SessionState::kKilled:
      return "killed";
  }
  return "failed";
}

std::optional<SessionState> ParseState(std::string_view name) {
  for (auto s : {SessionState::kStarting, SessionState::kRunning, SessionState::kSuspended,
                 SessionState::kSucceeded, SessionState::kFailed, SessionState::kKilled}) {
    if (StateName(s) == name) return s;
  }
  return std::nullopt;
}

std::string_view TierName(SuspendTier t) {
  switch (t) {
    case SuspendTier::kActive:
      return "active";
    case SuspendTier::kPaused:
      return "paused";
    case SuspendTier::kHibernated:
      return "hibernated";
  }
  return "active";
}

std::optional<SuspendTier> ParseTier(std::string_view name) {
  for (auto t : {SuspendTier::kActive, SuspendTier::kPaused, SuspendTier::kHibernated}) {
    if (TierName(t) == name) return t;
  }
  return std::nullopt;
}

Error SessionNotFound(std::string_view id) {
  return Error{ErrorCode::kNotFound, fmt::format("session {} not found", id)};
}

std::unexpected<Error> RevokedTokenError() {
  return MakeError(ErrorCode::kUnauthenticated, "invalid, expired or revoked session token");
}

std::vector<Result<QuotaAppend>> Store::AppendEventsWithinQuota(
    const std::vector<EventAppend>& events, const EventQuota& quota) {
  std::vector<Result<QuotaAppend>> out;
  out.reserve(events.size());
  for (const EventAppend& e : events) {
    if (!e.token_hash.empty()) {
      auto s = GetSession(e.session_id);
      if (!s) {
        out.push_back(std::unexpected(s.error()));
        continue;
      }
      if (s->token_hash != e.token_hash) {
        out.push_back(RevokedTokenError());
        continue;
      }
    }
    out.push_back(AppendEventWithinQuota(e.session_id, e.type, *e.data, quota));
  }
  return out;
}

bool IsTerminal(SessionState s) {
  return s == SessionState::kSucceeded || s == SessionState::kFailed || s == SessionState::kKilled;
}

}  // namespace airlock::store
