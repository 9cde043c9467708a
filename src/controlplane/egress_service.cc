#include "controlplane/egress_service.h"

#include "common/blocking.h"
#include "common/log.h"
#include "controlplane/requests.h"
#include "egress/authority.h"
#include "net/tls.h"

#include <algorithm>
#include <cstdlib>

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

Result<EgressService::Boundary> EgressService::LoadBoundary(const Config& config) {
  Boundary b;
  AIRLOCK_ASSIGN_OR_RETURN(b.secrets,
                           ReadSecrets(config, [](const char* n) { return std::getenv(n); }));
  if (b.secrets->empty()) return b;
  const EgressConfig& e = config.egress;
  if (config.store_kind == "postgres" && e.ca_cert_file.empty()) {
    log::Warn(
        "each replica makes its own egress CA in its home: give them all the same "
        "egress.ca_cert_file and egress.ca_key_file",
        {{"ca", config.home + "/egress-ca/ca.pem"}});
  }
  AIRLOCK_ASSIGN_OR_RETURN(b.authority, egress::Authority::Load({e.ca_cert_file, e.ca_key_file,
                                                                 config.home + "/egress-ca"}));
  auto tls = net::MakeTlsClientContext(e.upstream_ca_file);
  if (!tls) {
    return Errorf(tls.error().code, "egress.upstream_ca_file: {}", tls.error().message);
  }
  b.upstream_tls = std::move(*tls);
  return b;
}

EgressService::EgressService(Deps deps, egress::OwnAddresses own, Boundary boundary)
    : d_(deps), boundary_(std::move(boundary)) {
  egress::GatewayOptions options = GatewayOptionsFor(d_.config.egress);
  options.authority = boundary_.authority;
  options.upstream_tls = boundary_.upstream_tls;
  gateway_ = std::make_unique<egress::Gateway>(
      egress::Gateway::Deps{d_.io, resolver_, d_.registry,
                            [this](const egress::ConnectionReport& r) {
                              asio::co_spawn(d_.io, Record(r), asio::detached);
                            }},
      std::move(options), std::move(own));
}

egress::Secrets EgressService::SecretsOf(const Json& stored_egress) const {
  const auto names = SessionSecretNames(stored_egress);
  if (names.empty() || !boundary_.secrets) return nullptr;
  auto out = std::make_shared<std::vector<egress::Secret>>();
  for (const auto& s : *boundary_.secrets) {
    if (std::find(names.begin(), names.end(), s.name) != names.end()) out->push_back(s);
  }
  return out;
}

Json EgressService::SandboxWork(const store::Session& s) const {
  auto policy = SessionEgressPolicy(s.egress, d_.config);
  Json work = {{"egress", policy && !policy->empty()}};
  Json env = Json::object();
  for (const auto& name : SessionSecretNames(s.egress)) {
    // A secret removed from the configuration since: the agent gets no placeholder for it.
    if (auto it = d_.config.secrets.find(name); it != d_.config.secrets.end()) {
      env[it->second.sandbox_env] = it->second.placeholder;
    }
  }
  if (!env.empty() && boundary_.authority) {
    work["env"] = std::move(env);
    work["ca"] = boundary_.authority->certificate_pem();
  }
  return work;
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
  co_return gateway_->Admit(req, id, std::move(*policy), SecretsOf(s->egress));
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
  if (r.intercepted) {
    data["intercepted"] = true;
    data["secrets_added"] = r.secrets_added;
  }
  if (!r.placeholders_refused.empty()) {
    // A placeholder where it does not belong: the agent tried (or was led) to send a secret
    // elsewhere. Not replaced; said loudly.
    data["placeholders_refused"] = r.placeholders_refused;
    log::Warn("egress: a secret's placeholder was sent where it does not belong",
              {{"session", r.session}, {"host", r.host}, {"secrets", r.placeholders_refused}});
  }
  Json line = data;
  line["session"] = r.session;
  log::Info("egress", line);
  const std::string session = r.session;
  auto appended = co_await d_.events.Append(session, "egress.connection", std::move(data));
  if (appended && appended->event) d_.notifier.Notify(session);
}

}  // namespace airlock::controlplane
