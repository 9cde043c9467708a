#include "controlplane/views.h"

#include <fmt/format.h>

#include "common/time_util.h"

namespace airlock::controlplane {

Json UsageView(const store::Usage& u) {
  return Json{{"input_tokens", u.input_tokens},
              {"output_tokens", u.output_tokens},
              {"llm_calls", u.llm_calls},
              {"cost_usd", u.cost_usd}};
}

Json SessionView(const store::Session& s) {
  Json j = {{"id", s.id},
            {"state", store::StateName(s.state)},
            {"image", s.image},
            {"backend", s.backend},
            {"model", s.model},
            {"models", s.models.empty() ? Json::array({s.model}) : s.models},
            {"command", s.command},
            {"limits", s.limits},
            {"metadata", s.metadata},
            {"env", s.env.is_object() ? s.env : Json::object()},
            {"egress", s.egress.is_object() ? s.egress : Json::object()},
            {"created_at", FormatTimestamp(s.created_at)},
            {"updated_at", FormatTimestamp(s.updated_at)},
            {"usage", UsageView(s.usage)}};
  // The idle tier of a live session, and since when (a session that ended has none).
  if (!store::IsTerminal(s.state)) {
    j["tier"] = store::TierName(s.tier);
    if (s.state_since > 0) j["tier_since"] = FormatTimestamp(s.state_since);
  }
  if (s.result) j["result"] = *s.result;
  return j;
}

Json UsageReportView(const store::UsageReport& r) {
  Json by_model = Json::object();
  for (const auto& [m, u] : r.by_model) by_model[m] = UsageView(u);
  Json out = UsageView(r.total);
  out["sessions"] = r.sessions;
  out["by_model"] = std::move(by_model);
  return out;
}

Json EventView(const store::Event& e) {
  return Json{{"seq", e.seq},
              {"type", e.type},
              {"data", e.data},
              {"created_at", FormatTimestamp(e.created_at)}};
}

std::string EventFrame(const store::Event& e) {
  return fmt::format("id: {}\nevent: {}\ndata: {}\n\n", e.seq, e.type, DumpJson(EventView(e)));
}

Json MessagesView(const std::vector<store::Message>& messages) {
  Json conversation = Json::array(), pending = Json::array();
  for (const auto& m : messages) (m.position ? conversation : pending).push_back(m.body);
  return Json{{"messages", conversation}, {"pending", pending}};
}

Json MessageBodiesView(const std::vector<store::Message>& messages) {
  Json bodies = Json::array();
  for (const auto& m : messages) bodies.push_back(m.body);
  return Json{{"messages", bodies}};
}

}  // namespace airlock::controlplane
