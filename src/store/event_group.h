#pragma once

// What a group of event appends does, worked out before anything is written: both stores'
// AppendEventsWithinQuota read the sessions' counters, plan the group here, then write the
// rows and the counters their own way.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/result.h"
#include "store/store.h"

namespace airlock::store {

// A session's event counters, as the store holds them.
struct EventCounters {
  std::string token_hash;
  int64_t count = 0;
  int64_t bytes = 0;
  int64_t next_seq = 0;
  bool noticed = false;  // its quota notice is stored
  bool changed = false;  // set by PlanEventGroup: the counters must be written back
};

// An event row to insert.
struct EventRow {
  std::string_view session_id;
  int64_t seq = 0;
  std::string type;
  std::string data;  // the JSON text
};

// The counters of the sessions a group names, by id; nullopt: there is no such session.
using GroupSessions = std::unordered_map<std::string_view, std::optional<EventCounters>>;

// Answers each append of `events` (into `answers`, one per event) as appending them one after
// another would: a session that is not there, a token that is no longer the session's, the
// quota as the appends before left it, and one notice per session when it is first reached.
// Updates `sessions` to what the group leaves and returns the rows to insert, in order.
std::vector<EventRow> PlanEventGroup(const std::vector<EventAppend>& events,
                                     const EventQuota& quota, int64_t now, GroupSessions& sessions,
                                     std::vector<Result<QuotaAppend>>& answers);

}  // namespace airlock::store
