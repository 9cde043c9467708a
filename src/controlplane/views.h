#pragma once

// The one place that turns sessions, usage and events into the JSON the API answers with
// (docs/api.md). Handlers render with these; nothing else builds those shapes.
#include <string>

#include "common/json_util.h"
#include "store/store.h"

namespace airlock::controlplane {

// A session as GET /v1/sessions/{id} shows it.
Json SessionView(const store::Session& s);
// Tokens, calls and cost: a session's, a model's, or a total.
Json UsageView(const store::Usage& u);
// GET /v1/usage: the total, the sessions counted, and the same per model alias.
Json UsageReportView(const store::UsageReport& r);
// One event as the JSON listing shows it.
Json EventView(const store::Event& e);
// One event as a server-sent event frame (id, event, data).
std::string EventFrame(const store::Event& e);
// GET /v1/sessions/{id}/messages: the conversation, and what the agent has not taken yet.
Json MessagesView(const std::vector<store::Message>& messages);
// GET /sandbox/v1/inbox and /sandbox/v1/history: the messages themselves, in order.
Json MessageBodiesView(const std::vector<store::Message>& messages);

}  // namespace airlock::controlplane
