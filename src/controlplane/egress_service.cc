#include "controlplane/egress_service.h"

#include "common/blocking.h"
#include "common/log.h"
#include "controlplane/requests.h"

namespace airlock::controlplane {

egress::GatewayOptions GatewayOptionsFor(const EgressConfig& c) {
  egress::GatewayOptions o;
  o.max_connections_per_session = static_cast<size_t>(c.max_connections_per_session);
  o.requests_per_minute = static_cast<double>(c.requests_per_minute);
  o.bytes_per_minute = static_cast<double>(c.mb_per_minute) * 1024 * 1024;
  o.connect_timeout = std::chrono::seconds(c.connect_timeout_s);
  o.idle_timeout = std::chrono::seconds(c.idle_timeout_s);
  o.hosts_file = c.hosts_file;
  return o;
}

EgressService::EgressService(Deps deps, egress::OwnAddresses own) : d_(deps) {
  gateway_ = std::make_unique<egress::Gateway>(
      egress::Gateway::Deps{d_.io, resolver_, d_.registry,
                            [this](const egress::ConnectionReport& r) {
                              asio::co_spawn(d_.io, Record(r), asio::detached);
                            }},
      GatewayOptionsFor(d_.config.egress), std::move(own));
}

awaitable<Admission> EgressService::Admit(Request& req) {
  req.route = "egress";  // the request metrics' label: one for every proxy request
  Admission a;
  if (req.bound_session.empty()) {
    a.refuse = Response::FromError(
        403, "egress_denied",
        "the egress proxy is reached only from a sandbox, through its own channel");
    co_return a;
  }
  const std::string id = req.bound_session;
  auto s = co_await RunBlocking(d_.pool, [this, &id] { return d_.store.GetSession(id); });
  if (!s || store::IsTerminal(s->state)) {
    a.refuse = Response::FromError(403, "egress_denied", "this session has no egress: it ended");
    co_return a;
  }
  auto policy = SessionEgressPolicy(s->egress, d_.config);
  if (!policy) {
    log::Warn("egress refused: the session's policy no longer applies",
              {{"session", id}, {"error", policy.error().message}});
    a.refuse = Response::FromError(403, "egress_denied", policy.error().message);
    co_return a;
  }
  co_return gateway_->Admit(req, id, std::move(*policy));
}

awaitable<void> EgressService::Record(egress::ConnectionReport r) {
  Json data = {{"method", r.method},
               {"host", r.host},
               {"port", r.port},
               {"decision", r.decision},
               {"status", r.status},
               {"bytes_up", r.bytes_up},
               {"bytes_down", r.bytes_down},
               {"duration_ms", r.duration_ms}};
  if (!r.path.empty()) data["path"] = r.path;
  if (!r.address.empty()) data["address"] = r.address;
  if (!r.reason.empty()) data["reason"] = r.reason;
  Json line = data;
  line["session"] = r.session;
  log::Info("egress", line);
  const std::string session = r.session;
  auto appended = co_await d_.events.Append(session, "egress.connection", std::move(data));
  if (appended && appended->event) d_.notifier.Notify(session);
}

}  // namespace airlock::controlplane
