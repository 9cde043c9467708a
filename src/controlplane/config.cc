#include "controlplane/config.h"
#include "controlplane/config_reader.h"
#include "controlplane/plug_points.h"
#include "llm/upstream_client.h"
#include "store/postgres_store.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include <toml++/toml.h>

namespace airlock::controlplane {

namespace {

// Walks a table of named tables ([providers.NAME], [models.NAME], ...): refuses an entry
// that is not a table, and hands each one to `fn` with its name and a reader whose errors
// carry the full dotted path.
template <typename F>
Status ForEachNamedTable(const toml::table* t, std::string_view prefix, F fn) {
  if (!t) return Ok();
  for (const auto& [name, node] : *t) {
    std::string path = fmt::format("{}.{}", prefix, name.str());
    if (!node.is_table()) return Errorf(ErrorCode::kInvalidArgument, "{} must be a table", path);
    TableReader r(node.as_table(), path);
    AIRLOCK_TRY(fn(std::string(name.str()), path, r));
  }
  return Ok();
}

// The sections of the kinds of a plug point that have settings: [<parent>.<kind>], each
// absent (nullptr) or a table.
template <typename Interface, typename Context>
using KindSectionList =
    std::vector<std::pair<const PlugKind<Interface, Context>*, const toml::table*>>;

template <typename Interface, typename Context>
Result<KindSectionList<Interface, Context>> KindSections(TableReader& parent,
                                                         PlugTable<Interface, Context> table) {
  KindSectionList<Interface, Context> sections;
  for (const auto& kind : table) {
    if (kind.parse == nullptr) continue;
    AIRLOCK_ASSIGN_OR_RETURN(const toml::table* t, parent.Table(kind.name));
    sections.emplace_back(&kind, t);
  }
  return sections;
}

// Has each kind read its section, present or not (absent: its defaults, checked).
template <typename Interface, typename Context>
Status ParseKindSections(const KindSectionList<Interface, Context>& sections,
                         std::string_view parent, Config& c) {
  for (const auto& [kind, t] : sections) {
    TableReader section(t, fmt::format("{}.{}", parent, kind->name));
    AIRLOCK_TRY(kind->parse(section, c));
  }
  return Ok();
}

Status ParseServer(const toml::table* t, Config& c) {
  TableReader r(t, "server");
  std::string op, sb;
  AIRLOCK_TRY(r.String("operator_listen", &op));
  AIRLOCK_TRY(r.String("sandbox_listen", &sb));
  if (!op.empty()) {
    AIRLOCK_ASSIGN_OR_RETURN(c.operator_listen, ParseHostPort(op));
  }
  if (!sb.empty()) {
    AIRLOCK_ASSIGN_OR_RETURN(c.sandbox_listen, ParseHostPort(sb));
  }
  AIRLOCK_TRY(r.String("sandbox_url", &c.sandbox_url));
  AIRLOCK_TRY(r.IntAs("max_header_bytes", &c.limits.max_header_bytes, 1024, 1 << 20));
  AIRLOCK_TRY(r.IntAs("max_body_bytes", &c.limits.max_body_bytes, 1024, int64_t{1} << 30));
  AIRLOCK_TRY(r.IntAs("max_connections", &c.limits.max_connections, 1, 1'000'000));
  AIRLOCK_TRY(r.IntAs("operator_max_connections", &c.operator_max_connections, 1, 1'000'000));
  AIRLOCK_TRY(
      r.IntAs("max_connections_per_session", &c.limits.max_connections_per_session, 1, 100'000));
  AIRLOCK_TRY(r.IntAs("max_buffered_body_bytes", &c.limits.max_buffered_body_bytes, 1024,
                      int64_t{1} << 40));
  AIRLOCK_TRY(r.IntAs("max_session_buffered_body_bytes", &c.limits.max_session_buffered_body_bytes,
                      1024, int64_t{1} << 40));
  AIRLOCK_TRY(r.Millis("first_byte_timeout_s", &c.limits.first_byte_timeout));
  AIRLOCK_TRY(r.Millis("linger_timeout_s", &c.limits.linger_timeout));
  AIRLOCK_TRY(r.IntAs("linger_bytes", &c.limits.linger_bytes, 0, int64_t{1} << 40));
  AIRLOCK_TRY(r.Millis("idle_timeout_s", &c.limits.idle_timeout));
  AIRLOCK_TRY(r.Millis("header_timeout_s", &c.limits.header_timeout));
  AIRLOCK_TRY(r.Millis("body_timeout_s", &c.limits.body_timeout));
  AIRLOCK_TRY(r.Millis("write_timeout_s", &c.limits.write_timeout));
  AIRLOCK_TRY(r.IntAs("long_poll_max_s", &c.long_poll_max_s, 1, 3600));
  AIRLOCK_TRY(r.IntAs("drain_timeout_s", &c.drain_timeout_s, 0, 3600));
  AIRLOCK_TRY(r.String("node", &c.node));
  AIRLOCK_TRY(r.IntAs("node_ttl_s", &c.node_ttl_s, 3, 3600));
  AIRLOCK_TRY(r.IntAs("worker_threads", &c.worker_threads, 1, 256));
  AIRLOCK_TRY(r.IntAs("token_cache_ms", &c.token_cache_ms, 0, 3'600'000));
  return r.RejectUnknown();
}

Status ParseStore(const toml::table* t, Config& c) {
  TableReader r(t, "store");
  AIRLOCK_TRY(r.String("kind", &c.store_kind));
  AIRLOCK_ASSIGN_OR_RETURN(const StoreKind* kind,
                           FindKind(StoreKinds(), "store.kind", c.store_kind));
  AIRLOCK_TRY(kind->parse(r, c));
  // A key of the other kind is a mistake (a PostgreSQL url under kind = "sqlite" would be
  // silently ignored), so it is refused naming its kind rather than as unknown. Which keys a
  // kind has is what its parser reads (into a scratch config: its verdict does not matter).
  for (const StoreKind& other : StoreKinds()) {
    if (&other == kind || t == nullptr) continue;
    TableReader probe(t, "store");
    Config scratch;
    (void)other.parse(probe, scratch);
    for (const auto& [k, v] : *t) {
      if (!r.Read(k.str()) && probe.Read(k.str())) {
        return Errorf(ErrorCode::kInvalidArgument, "store.{} is for kind = \"{}\"", k.str(),
                      other.name);
      }
    }
  }
  return r.RejectUnknown();
}

Status ParseAuth(const toml::table* t, Config& c) {
  TableReader r(t, "auth");
  AIRLOCK_ASSIGN_OR_RETURN(const toml::table* keys, r.Table("operator_keys"));
  AIRLOCK_TRY(ForEachNamedTable(
      keys, "auth.operator_keys",
      [&](const std::string& name, const std::string& key_path, TableReader& kr) -> Status {
        OperatorKeyConfig k;
        AIRLOCK_TRY(kr.String("sha256", &k.sha256));
        AIRLOCK_TRY(kr.String("key_env", &k.key_env));
        AIRLOCK_TRY(kr.RejectUnknown());
        if (k.sha256.empty() == k.key_env.empty()) {
          return Errorf(ErrorCode::kInvalidArgument, "{} needs exactly one of sha256 or key_env",
                        key_path);
        }
        if (!k.sha256.empty() &&
            (k.sha256.size() != 64 ||
             k.sha256.find_first_not_of("0123456789abcdef") != std::string::npos)) {
          return Errorf(ErrorCode::kInvalidArgument,
                        "{}.sha256 must be 64 lowercase hex characters", key_path);
        }
        c.operator_keys[name] = k;
        return Ok();
      }));
  return r.RejectUnknown();
}

Status ParseSandbox(const toml::table* t, Config& c) {
  TableReader r(t, "sandbox");
  AIRLOCK_TRY(r.String("default_backend", &c.default_backend));
  AIRLOCK_TRY(FindKind(BackendKinds(), "sandbox.default_backend", c.default_backend));
  AIRLOCK_TRY(r.String("default_image", &c.default_image));
  AIRLOCK_TRY(r.String("default_model", &c.default_model));
  AIRLOCK_TRY(r.Bool("allow_unisolated_backends", &c.allow_unisolated_backends));
  AIRLOCK_TRY(r.Int("max_restarts", &c.max_restarts, 0, 1000));
  AIRLOCK_TRY(r.Int("idle_timeout_s", &c.idle_timeout_s, 0, 30 * 86400));
  AIRLOCK_TRY(r.Int("hibernate_after_s", &c.hibernate_after_s, 0, 30 * 86400));
  AIRLOCK_TRY(r.Int("max_task_bytes", &c.max_task_bytes, 1, 16 << 20));
  AIRLOCK_TRY(r.Strings("credential_env", &c.credential_env));
  AIRLOCK_TRY(r.Int("max_concurrent_llm_calls", &c.max_concurrent_llm_calls, 1, 256));
  AIRLOCK_TRY(r.Int("max_message_bytes", &c.max_message_bytes, 1, 16 << 20));
  AIRLOCK_TRY(r.Int("max_event_bytes", &c.max_event_bytes, 1, 16 << 20));
  AIRLOCK_TRY(r.String("images_dir", &c.images_dir));
  AIRLOCK_TRY(r.String("builtin_images_dir", &c.builtin_images_dir));
  AIRLOCK_ASSIGN_OR_RETURN(auto sections, KindSections(r, BackendKinds()));
  AIRLOCK_TRY(r.RejectUnknown());
  return ParseKindSections(sections, "sandbox", c);
}

Status ParseLog(const toml::table* t, Config& c) {
  TableReader r(t, "log");
  std::string level, format;
  AIRLOCK_TRY(r.String("level", &level));
  AIRLOCK_TRY(r.String("format", &format));
  if (!level.empty() && !log::ParseLevel(level, &c.log_level)) {
    return MakeError(ErrorCode::kInvalidArgument, "log.level must be debug, info, warn or error");
  }
  if (format == "json")
    c.log_format = log::Format::kJson;
  else if (format == "text")
    c.log_format = log::Format::kText;
  else if (!format.empty())
    return MakeError(ErrorCode::kInvalidArgument, "log.format must be json or text");
  return r.RejectUnknown();
}

Status ParseFiles(const toml::table* t, Config& c) {
  TableReader r(t, "files");
  FilesConfig& f = c.files;
  AIRLOCK_TRY(r.String("store", &f.store));
  AIRLOCK_TRY(r.String("root", &f.root));
  AIRLOCK_TRY(r.String("signing_keys", &f.signing_keys));
  AIRLOCK_TRY(r.IntAs("default_expiry_s", &f.default_expiry_s, 1, 7 * 24 * 3600));
  AIRLOCK_TRY(r.IntAs("max_expiry_s", &f.max_expiry_s, 1, 7 * 24 * 3600));
  AIRLOCK_TRY(r.IntAs("max_file_mb", &f.max_file_mb, 1, int64_t{1} << 30));
  AIRLOCK_TRY(r.IntAs("session_quota_mb", &f.session_quota_mb, 1, int64_t{1} << 30));
  AIRLOCK_TRY(r.Bool("get_urls_outlive_session", &f.get_urls_outlive_session));
  AIRLOCK_ASSIGN_OR_RETURN(auto sections, KindSections(r, BlobStoreKinds()));
  AIRLOCK_TRY(r.RejectUnknown());
  AIRLOCK_TRY(FindKind(BlobStoreKinds(), "files.store", f.store));
  AIRLOCK_TRY(ParseKindSections(sections, "files", c));
  if (f.default_expiry_s > f.max_expiry_s) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "files.default_expiry_s exceeds files.max_expiry_s");
  }
  return Ok();
}

Status ParseEvents(const toml::table* t, Config& c) {
  TableReader r(t, "events");
  EventLimitsConfig& e = c.events;
  AIRLOCK_TRY(r.Int("max_per_session", &e.max_per_session, 0, int64_t{1} << 40));
  AIRLOCK_TRY(r.Int("max_mb_per_session", &e.max_mb_per_session, 0, int64_t{1} << 30));
  AIRLOCK_TRY(r.Double("rate_per_s", &e.rate_per_s, 0.001));
  AIRLOCK_TRY(r.Int("burst", &e.burst, 1, 1'000'000));
  return r.RejectUnknown();
}

// A policy's two lists, as `where`.allow and `where`.allow_addresses.
Result<egress::Policy> ReadEgressPolicy(TableReader& r, const std::string& where) {
  std::vector<std::string> allow, addresses;
  AIRLOCK_TRY(r.Strings("allow", &allow));
  AIRLOCK_TRY(r.Strings("allow_addresses", &addresses));
  return egress::ParsePolicy(allow, addresses, where);
}

Status ParseEgress(const toml::table* t, Config& c) {
  TableReader r(t, "egress");
  EgressConfig& e = c.egress;
  AIRLOCK_ASSIGN_OR_RETURN(e.allow, ReadEgressPolicy(r, "egress"));
  AIRLOCK_ASSIGN_OR_RETURN(const toml::table* policies, r.Table("policies"));
  AIRLOCK_TRY(ForEachNamedTable(
      policies, "egress.policies",
      [&](const std::string& name, const std::string& path, TableReader& pr) -> Status {
        AIRLOCK_ASSIGN_OR_RETURN(egress::Policy p, ReadEgressPolicy(pr, path));
        AIRLOCK_TRY(pr.RejectUnknown());
        if (auto narrows = egress::CheckNarrows(p, e.allow); !narrows) {
          return Errorf(ErrorCode::kInvalidArgument, "{}: {} (egress.allow)", path,
                        narrows.error().message);
        }
        e.policies[name] = std::move(p);
        return Ok();
      }));
  AIRLOCK_TRY(r.String("default_policy", &e.default_policy));
  if (!e.default_policy.empty() && !e.policies.contains(e.default_policy)) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "egress.default_policy = \"{}\" is not one of [egress.policies]",
                  e.default_policy);
  }
  AIRLOCK_TRY(r.Int("max_connections_per_session", &e.max_connections_per_session, 1, 4096));
  AIRLOCK_TRY(r.Int("requests_per_minute", &e.requests_per_minute, 1, 1'000'000));
  AIRLOCK_TRY(r.Int("mb_per_minute", &e.mb_per_minute, 1, 1'000'000));
  AIRLOCK_TRY(r.Int("connect_timeout_s", &e.connect_timeout_s, 1, 300));
  AIRLOCK_TRY(r.Int("idle_timeout_s", &e.idle_timeout_s, 1, 86'400));
  AIRLOCK_TRY(r.String("hosts_file", &e.hosts_file));
  AIRLOCK_TRY(r.String("ca_cert_file", &e.ca_cert_file));
  AIRLOCK_TRY(r.String("ca_key_file", &e.ca_key_file));
  AIRLOCK_TRY(r.String("upstream_ca_file", &e.upstream_ca_file));
  if (e.ca_cert_file.empty() != e.ca_key_file.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "egress.ca_cert_file and egress.ca_key_file go together");
  }
  return r.RejectUnknown();
}

bool IsEnvName(std::string_view name) {
  if (name.empty() || std::isdigit(static_cast<unsigned char>(name.front()))) return false;
  return std::all_of(name.begin(), name.end(), [](char ch) {
    return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_';
  });
}

bool IsHeaderName(std::string_view name) {
  constexpr std::string_view kTokenPunctuation = "!#$%&'*+-.^_`|~";
  return !name.empty() && std::all_of(name.begin(), name.end(), [&](char ch) {
    return std::isalnum(static_cast<unsigned char>(ch)) ||
           kTokenPunctuation.find(ch) != std::string_view::npos;
  });
}

Status ParseSecrets(const toml::table* t, Config& c) {
  return ForEachNamedTable(
      t, "secrets",
      [&](const std::string& name, const std::string& path, TableReader& r) -> Status {
        SecretConfig s;
        std::vector<std::string> hosts;
        AIRLOCK_TRY(r.String("env", &s.env));
        AIRLOCK_TRY(r.Strings("hosts", &hosts));
        AIRLOCK_TRY(r.String("header", &s.header));
        AIRLOCK_TRY(r.String("sandbox_env", &s.sandbox_env));
        AIRLOCK_TRY(r.String("format", &s.format));
        AIRLOCK_TRY(r.RejectUnknown());
        if (!s.format.empty() && (s.format.find("{}") == std::string::npos ||
                                  s.format.find_first_of("\r\n") != std::string::npos)) {
          return Errorf(ErrorCode::kInvalidArgument,
                        "{}.format must hold {{}} where the secret goes, on one line", path);
        }
        if (!IsEnvName(name)) {
          return Errorf(ErrorCode::kInvalidArgument,
                        "{}: a secret's name takes letters, digits and _", path);
        }
        if (!IsEnvName(s.env)) {
          return Errorf(ErrorCode::kInvalidArgument, "{}.env must name an environment variable",
                        path);
        }
        if (hosts.empty()) {
          return Errorf(ErrorCode::kInvalidArgument,
                        "{}.hosts must name where the secret may go (e.g. [\"api.github.com\"])",
                        path);
        }
        AIRLOCK_ASSIGN_OR_RETURN(s.hosts, egress::ParsePolicy(hosts, {}, path + ".hosts"));
        for (const auto& rule : s.hosts.hosts) {
          if (rule.name.empty()) {
            return Errorf(ErrorCode::kInvalidArgument,
                          "{}.hosts: \"{}\" would send the secret to every host; name them", path,
                          rule.text);
          }
        }
        if (!IsHeaderName(s.header)) {
          return Errorf(ErrorCode::kInvalidArgument, "{}.header is not a header name", path);
        }
        if (s.sandbox_env.empty()) s.sandbox_env = s.env;
        if (!IsEnvName(s.sandbox_env)) {
          return Errorf(ErrorCode::kInvalidArgument,
                        "{}.sandbox_env must name an environment variable", path);
        }
        s.placeholder = "airlock-secret-" + name;
        c.secrets[name] = std::move(s);
        return Ok();
      });
}

Status ParseRetention(const toml::table* t, Config& c) {
  TableReader r(t, "retention");
  RetentionConfig& k = c.retention;
  std::string after, interval;
  AIRLOCK_TRY(r.String("ended_sessions_after", &after));
  AIRLOCK_TRY(r.String("interval", &interval));
  AIRLOCK_TRY(r.Int("batch_sessions", &k.batch_sessions, 1, 100'000));
  AIRLOCK_TRY(r.RejectUnknown());
  if (!after.empty()) {
    AIRLOCK_ASSIGN_OR_RETURN(k.ended_sessions_after_s,
                             ParseDuration(after, "retention.ended_sessions_after"));
  }
  if (!interval.empty()) {
    AIRLOCK_ASSIGN_OR_RETURN(k.interval_s, ParseDuration(interval, "retention.interval"));
    if (k.interval_s < 1)
      return MakeError(ErrorCode::kInvalidArgument, "retention.interval must be at least 1s");
  }
  return Ok();
}

Status ParseProviders(const toml::table* t, Config& c) {
  return ForEachNamedTable(
      t, "providers",
      [&](const std::string& name, const std::string& path, TableReader& r) -> Status {
        ProviderConfig p;
        std::string inline_key;
        AIRLOCK_TRY(r.String("kind", &p.kind));
        AIRLOCK_TRY(r.String("base_url", &p.base_url));
        AIRLOCK_TRY(r.String("api_key_env", &p.api_key_env));
        AIRLOCK_TRY(r.String("api_key", &inline_key));
        AIRLOCK_TRY(r.String("script", &p.script));
        AIRLOCK_TRY(r.String("ca_file", &p.ca_file));
        AIRLOCK_TRY(r.Millis("connect_timeout_s", &p.connect_timeout));
        AIRLOCK_TRY(r.Millis("first_byte_timeout_s", &p.first_byte_timeout));
        AIRLOCK_TRY(r.Millis("timeout_s", &p.timeout));
        AIRLOCK_TRY(r.IntAs("max_retries", &p.max_retries, 0, 10));
        AIRLOCK_TRY(r.IntAs("max_idle_connections", &p.max_idle_connections, 0, 100000));
        AIRLOCK_TRY(r.RejectUnknown());
        p.api_key = Secret(std::move(inline_key));
        AIRLOCK_TRY(FindKind(ProviderKinds(), path + ".kind", p.kind));
        if (p.kind == "scripted") {
          if (p.script.empty())
            return Errorf(ErrorCode::kInvalidArgument,
                          "{}: a scripted provider needs script = \"FILE\"", path);
        } else {
          if (p.base_url.empty()) {
            p.base_url =
                p.kind == "openai" ? "https://api.openai.com/v1" : "https://api.anthropic.com";
          }
          if (auto ep = llm::ParseBaseUrl(p.base_url); !ep) {
            return Errorf(ErrorCode::kInvalidArgument, "{}.{}", path, ep.error().message);
          }
          if (!p.script.empty())
            return Errorf(ErrorCode::kInvalidArgument, "{}.script is only for kind = \"scripted\"",
                          path);
        }
        c.providers[name] = std::move(p);
        return Ok();
      });
}

Status ParsePools(const toml::table* t, Config& c) {
  return ForEachNamedTable(
      t, "pools", [&](const std::string& name, const std::string& path, TableReader& r) -> Status {
        PoolConfig p;
        p.image = c.default_image;
        p.backend = c.default_backend;
        AIRLOCK_TRY(r.String("image", &p.image));
        AIRLOCK_TRY(r.String("backend", &p.backend));
        AIRLOCK_TRY(r.Strings("command", &p.command));
        AIRLOCK_TRY(r.Int("size", &p.size, 1, 1024));
        // As a session's "limits" (validation.cc): 0 is below every minimum, so "unset".
        int64_t memory_mb = 0, pids = 0, disk_mb = 0;
        double cpus = 0;
        AIRLOCK_TRY(r.Int("memory_mb", &memory_mb, 16, 1 << 20));
        AIRLOCK_TRY(r.Int("pids", &pids, 1, 1 << 22));
        AIRLOCK_TRY(r.Int("disk_mb", &disk_mb, 1, 1 << 24));
        AIRLOCK_TRY(r.Double("cpus", &cpus, 0.01));
        if (memory_mb) p.memory_mb = memory_mb;
        if (pids) p.pids = pids;
        if (disk_mb) p.disk_mb = disk_mb;
        if (cpus > 0) p.cpus = cpus;
        AIRLOCK_TRY(r.RejectUnknown());
        AIRLOCK_TRY(FindKind(BackendKinds(), path + ".backend", p.backend));
        c.pools[name] = std::move(p);
        return Ok();
      });
}

Status ParseModels(const toml::table* t, Config& c) {
  return ForEachNamedTable(
      t, "models", [&](const std::string& name, const std::string& path, TableReader& r) -> Status {
        ModelConfig m;
        AIRLOCK_TRY(r.String("provider", &m.provider));
        AIRLOCK_TRY(r.String("model", &m.model));
        AIRLOCK_TRY(r.Double("input_usd_per_mtok", &m.input_usd_per_mtok, 0));
        AIRLOCK_TRY(r.Double("output_usd_per_mtok", &m.output_usd_per_mtok, 0));
        AIRLOCK_TRY(r.Int("max_output_tokens", &m.max_output_tokens, 0, 10'000'000));
        AIRLOCK_ASSIGN_OR_RETURN(const toml::table* params, r.Table("params"));
        AIRLOCK_TRY(r.RejectUnknown());
        if (params) {
          std::ostringstream os;
          os << toml::json_formatter(*params);
          AIRLOCK_ASSIGN_OR_RETURN(m.params, ParseJson(os.str()));
        }
        if (!c.providers.count(m.provider)) {
          return Errorf(ErrorCode::kInvalidArgument,
                        "{}.provider = \"{}\" names no [providers.*] table", path, m.provider);
        }
        c.models[name] = std::move(m);
        return Ok();
      });
}

}  // namespace

Result<HostPort> ParseHostPort(std::string_view text) {
  size_t colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0) {
    return Errorf(ErrorCode::kInvalidArgument, "\"{}\" is not HOST:PORT", text);
  }
  HostPort hp;
  hp.host = std::string(text.substr(0, colon));
  if (hp.host.size() > 2 && hp.host.front() == '[' && hp.host.back() == ']') {
    hp.host = hp.host.substr(1, hp.host.size() - 2);
  }
  std::string port(text.substr(colon + 1));
  if (port.empty() || port.size() > 5 ||
      port.find_first_not_of("0123456789") != std::string::npos || std::stoi(port) > 65535) {
    return Errorf(ErrorCode::kInvalidArgument, "\"{}\" has no valid port", text);
  }
  hp.port = static_cast<uint16_t>(std::stoi(port));
  return hp;
}

Result<int64_t> ParseDuration(std::string_view text, std::string_view what) {
  auto bad = [&] {
    return Errorf(
        ErrorCode::kInvalidArgument,
        "{} must be a duration such as \"30d\", \"12h\", \"15m\" or \"3600s\", not \"{}\"", what,
        text.substr(0, 64));
  };
  if (text == "0") return int64_t{0};
  if (text.size() < 2 || text.size() > 12) return bad();
  int64_t unit = 0;
  switch (text.back()) {
    case 's':
      unit = 1;
      break;
    case 'm':
      unit = 60;
      break;
    case 'h':
      unit = 3600;
      break;
    case 'd':
      unit = 86400;
      break;
    default:
      return bad();
  }
  std::string_view digits = text.substr(0, text.size() - 1);
  if (digits.find_first_not_of("0123456789") != std::string_view::npos) return bad();
  int64_t n = std::stoll(std::string(digits));
  if (n > (int64_t{100} * 365 * 86400) / unit) {
    return Errorf(ErrorCode::kInvalidArgument, "{} is longer than 100 years", what);
  }
  return n * unit;
}

std::string DefaultHome() {
  if (const char* h = std::getenv("AIRLOCK_HOME"); h && *h) return h;
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : "/root") + "/.local/share/airlock";
}

Result<Config> ParseConfig(std::string_view toml_text, const std::string& home,
                           std::string_view source_name) {
  Config c;
  c.home = home;
  toml::table root;
  try {
    root = toml::parse(toml_text, source_name);
  } catch (const toml::parse_error& e) {
    return Errorf(ErrorCode::kInvalidArgument, "{}:{}:{}: {}", source_name, e.source().begin.line,
                  e.source().begin.column, e.description());
  }
  TableReader r(&root, "");
  AIRLOCK_ASSIGN_OR_RETURN(const toml::table* server, r.Table("server"));
  AIRLOCK_ASSIGN_OR_RETURN(const toml::table* store, r.Table("store"));
  AIRLOCK_ASSIGN_OR_RETURN(const toml::table* auth, r.Table("auth"));
  AIRLOCK_ASSIGN_OR_RETURN(const toml::table* sandbox, r.Table("sandbox"));
  AIRLOCK_ASSIGN_OR_RETURN(const toml::table* logt, r.Table("log"));
  AIRLOCK_ASSIGN_OR_RETURN(const toml::table* providers, r.Table("providers"));
  AIRLOCK_ASSIGN_OR_RETURN(const toml::table* models, r.Table("models"));
  AIRLOCK_ASSIGN_OR_RETURN(const toml::table* pools, r.Table("pools"));
  AIRLOCK_ASSIGN_OR_RETURN(const toml::table* files, r.Table("files"));
  AIRLOCK_ASSIGN_OR_RETURN(const toml::table* events, r.Table("events"));
  AIRLOCK_ASSIGN_OR_RETURN(const toml::table* retention, r.Table("retention"));
  AIRLOCK_ASSIGN_OR_RETURN(const toml::table* egress, r.Table("egress"));
  AIRLOCK_ASSIGN_OR_RETURN(const toml::table* secrets, r.Table("secrets"));
  AIRLOCK_TRY(r.RejectUnknown());
  AIRLOCK_TRY(ParseServer(server, c));
  AIRLOCK_TRY(ParseStore(store, c));
  AIRLOCK_TRY(ParseAuth(auth, c));
  AIRLOCK_TRY(ParseSandbox(sandbox, c));
  AIRLOCK_TRY(ParseLog(logt, c));
  AIRLOCK_TRY(ParseProviders(providers, c));
  AIRLOCK_TRY(ParseModels(models, c));
  AIRLOCK_TRY(ParsePools(pools, c));
  AIRLOCK_TRY(ParseFiles(files, c));
  AIRLOCK_TRY(ParseEvents(events, c));
  AIRLOCK_TRY(ParseRetention(retention, c));
  AIRLOCK_TRY(ParseEgress(egress, c));
  AIRLOCK_TRY(ParseSecrets(secrets, c));
  if (c.node.empty()) {
    char host[256] = {};
    ::gethostname(host, sizeof(host) - 1);
    c.node = std::string(host) + ":" + home;
  }
  if (c.files.root.empty()) c.files.root = home + "/files";
  if (c.files.signing_keys.empty()) c.files.signing_keys = home + "/file-signing.keys";
  if (c.images_dir.empty()) c.images_dir = home + "/images";
  return c;
}

Result<egress::Secrets> ReadSecrets(const Config& c,
                                    const std::function<const char*(const char*)>& getenv) {
  auto out = std::make_shared<std::vector<egress::Secret>>();
  for (const auto& [name, s] : c.secrets) {
    const char* v = getenv(s.env.c_str());
    if (v == nullptr || *v == '\0') {
      return Errorf(ErrorCode::kInvalidArgument,
                    "secrets.{}.env names {}, which is {} in the environment", name, s.env,
                    v == nullptr ? "not set" : "empty");
    }
    std::string_view value(v);
    if (std::any_of(value.begin(), value.end(), [](char ch) {
          return (static_cast<unsigned char>(ch) < 0x20 && ch != '\t') || ch == 0x7f;
        })) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "secrets.{}.env names {}, whose value holds a control character a header "
                    "may not carry",
                    name, s.env);
    }
    out->push_back(
        egress::Secret{name, std::string(value), s.placeholder, s.header, s.hosts, s.format});
  }
  return egress::Secrets(std::move(out));
}

Result<Secret> ReadStorePassword(const Config& c,
                                 const std::function<const char*(const char*)>& getenv) {
  if (c.store_password_env.empty()) return Secret();
  const char* v = getenv(c.store_password_env.c_str());
  if (v == nullptr) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "store.password_env names {}, which is not set in the environment",
                  c.store_password_env);
  }
  if (*v == '\0') {
    return Errorf(ErrorCode::kInvalidArgument,
                  "store.password_env names {}, which is empty in the environment",
                  c.store_password_env);
  }
  return Secret(v);
}

std::string StoreDescription(const Config& c) {
  if (c.store_kind != "postgres") return c.store_path;
  auto target = store::ParsePostgresUrl(c.store_url);
  return target ? "postgres " + target->Describe() : std::string("postgres");
}

Result<Config> LoadConfig(const std::optional<std::string>& path, const std::string& home) {
  if (!path) return ParseConfig("", home);
  std::ifstream f(*path);
  if (!f) return Errorf(ErrorCode::kInvalidArgument, "cannot read config file {}", *path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ParseConfig(ss.str(), home, *path);
}

}  // namespace airlock::controlplane

namespace airlock::controlplane {

std::string ApplyDefaultModel(Config& c, const std::function<const char*(const char*)>& getenv) {
  if (c.models.count(c.default_model)) return {};
  auto set = [&](const char* name) {
    const char* v = getenv(name);
    return v != nullptr && *v != '\0';
  };
  const char* override_model = getenv("AIRLOCK_DEFAULT_MODEL");
  auto model_or = [&](const char* fallback) {
    return std::string(override_model != nullptr && *override_model != '\0' ? override_model
                                                                            : fallback);
  };
  // The providers a key in the environment selects, in order of preference.
  struct Builtin {
    const char* key_env;
    const char* url_env;
    const char* provider;
    const char* kind;
    const char* label;
    const char* base_url;
    const char* model;
    double input_usd_per_mtok, output_usd_per_mtok;
  };
  static constexpr Builtin kBuiltins[] = {
      {"OPENAI_API_KEY", "OPENAI_BASE_URL", "builtin-openai", "openai", "OpenAI",
       "https://api.openai.com/v1", "gpt-4o-mini", 0.15, 0.60},
      {"ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "builtin-anthropic", "anthropic", "Anthropic",
       "https://api.anthropic.com", "claude-haiku-4-5", 1, 5},
  };
  ProviderConfig p;
  ModelConfig m;
  std::string provider = "builtin-demo";
  std::string note;
  for (const auto& b : kBuiltins) {
    if (!set(b.key_env)) continue;
    provider = b.provider;
    p.kind = b.kind;
    p.base_url = set(b.url_env) ? getenv(b.url_env) : b.base_url;
    p.api_key_env = b.key_env;
    m.model = model_or(b.model);
    if (m.model == b.model) {
      m.input_usd_per_mtok = b.input_usd_per_mtok;
      m.output_usd_per_mtok = b.output_usd_per_mtok;
    }
    note = fmt::format(
        "model alias \"{}\" is {} {} at {} ({} is set and no [models.{}] is configured)",
        c.default_model, b.label, m.model, p.base_url, b.key_env, c.default_model);
    break;
  }
  if (note.empty()) {
    p.kind = "scripted";
    p.builtin_demo = true;
    m.model = "scripted-demo";
    note = fmt::format(
        "model alias \"{}\" is the built-in scripted demo, not an LLM: no [models.{}] is "
        "configured and neither "
        "OPENAI_API_KEY nor ANTHROPIC_API_KEY is set in the control plane's environment",
        c.default_model, c.default_model);
  }
  m.provider = provider;
  c.providers[provider] = std::move(p);
  c.models[c.default_model] = std::move(m);
  return note;
}

}  // namespace airlock::controlplane
