#include "store/event_group.h"

#include <utility>

#include "common/json_util.h"

namespace airlock::store {

std::vector<EventRow> PlanEventGroup(const std::vector<EventAppend>& events,
                                     const EventQuota& quota, int64_t now, GroupSessions& sessions,
                                     std::vector<Result<QuotaAppend>>& answers) {
  std::vector<EventRow> rows;
  answers.clear();
  answers.reserve(events.size());
  auto append = [&](std::string_view id, EventCounters& s, std::string_view type, const Json& data,
                    std::string text) {
    Event e{std::string(id), s.next_seq++, std::string(type), data, now};
    ++s.count;
    s.bytes += static_cast<int64_t>(type.size() + text.size());
    s.changed = true;
    rows.push_back({id, e.seq, std::string(type), std::move(text)});
    return e;
  };
  for (const EventAppend& ev : events) {
    auto found = sessions.find(ev.session_id);
    if (found == sessions.end() || !found->second) {
      answers.push_back(std::unexpected(SessionNotFound(ev.session_id)));
      continue;
    }
    EventCounters& s = *found->second;
    if (!ev.token_hash.empty() && s.token_hash != ev.token_hash) {
      answers.push_back(RevokedTokenError());
      continue;
    }
    std::string text = DumpJson(*ev.data);
    const int64_t size = static_cast<int64_t>(ev.type.size() + text.size());
    QuotaAppend a;
    if (quota.max_events > 0 && s.count + 1 > quota.max_events) {
      a.exceeded = "events";
      a.limit = quota.max_events;
    } else if (quota.max_bytes > 0 && s.bytes + size > quota.max_bytes) {
      a.exceeded = "bytes";
      a.limit = quota.max_bytes;
    }
    if (a.exceeded.empty()) {
      a.event = append(ev.session_id, s, ev.type, *ev.data, std::move(text));
    } else if (!s.noticed) {
      a.noticed = true;
      s.noticed = true;
      Json notice = {{"quota", a.exceeded}, {"limit", a.limit}, {"type", ev.type}};
      append(ev.session_id, s, "session.quota_exceeded", notice, DumpJson(notice));
    }
    answers.push_back(std::move(a));
  }
  return rows;
}

}  // namespace airlock::store
