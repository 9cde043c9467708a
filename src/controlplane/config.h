#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/json_util.h"
#include "common/log.h"
#include "common/result.h"
#include "common/secret.h"
#include "controlplane/http.h"
#include "egress/gateway.h"
#include "egress/policy.h"

namespace airlock::controlplane {

struct HostPort {
  std::string host;
  uint16_t port = 0;
};
Result<HostPort> ParseHostPort(std::string_view text);

struct ProviderConfig {
  std::string kind;  // openai | anthropic | scripted
  std::string base_url;
  std::string api_key_env;    // read by the control plane only
  Secret api_key;             // inline key (discouraged; api_key_env is preferred)
  std::string script;         // scripted: path of the script file
  bool builtin_demo = false;  // scripted: the built-in demo script instead of a file
  std::string
      ca_file;  // extra trust anchor for a self-hosted upstream (PEM); system store otherwise
  std::chrono::milliseconds connect_timeout{10'000};
  std::chrono::milliseconds first_byte_timeout{120'000};  // also the longest silence in a stream
  std::chrono::milliseconds timeout{600'000};             // a whole call, retries included
  int max_retries = 2;
  // Keep-alive connections kept open to the upstream for reuse. Each one saved is a TLS
  // handshake saved; size it to the number of calls in flight at peak.
  int64_t max_idle_connections = 64;
};

struct ModelConfig {
  std::string provider;
  std::string model;
  double input_usd_per_mtok = 0;
  double output_usd_per_mtok = 0;
  Json params = Json::object();  // pinned: a client of the OpenAI face cannot change these
  // The most output tokens a client of the OpenAI face may ask for per call (its max_tokens is
  // lowered to this, and set to it when it asks none); 0: no cap.
  int64_t max_output_tokens = 0;
};

// [pools.NAME]: sandboxes kept started and waiting for a session (docs/operators.md).
struct PoolConfig {
  std::string image;    // default: sandbox.default_image
  std::string backend;  // default: sandbox.default_backend
  // What its sandboxes run; empty: the image's entrypoint and command. A session takes one
  // only if it asks for the same.
  std::vector<std::string> command;
  int64_t size = 1;  // how many wait at any time
  // The resource limits its sandboxes are made with; unset: the backend's defaults. A session
  // takes one only if it asks for exactly these (and leaves out the unset ones).
  std::optional<int64_t> memory_mb, pids, disk_mb;
  std::optional<double> cpus;
};

struct OperatorKeyConfig {
  std::string sha256;   // hex SHA-256 of the key
  std::string key_env;  // or: an environment variable holding the key
};

// [sandbox.oci]: the local container backend. See docs/operators.md.
struct OciConfig {
  std::string runtime = "crun";  // crun | runc | runsc
  std::string runtime_path;      // default: looked up in PATH
  std::string init_path;         // default: airlock-init beside the airlock binary
  int64_t bridge_port = 7401;    // CONTROL_PLANE_URL inside the sandbox: http://127.0.0.1:<port>
  int64_t agent_uid = 0;         // 0: each sandbox its own uid from the range below
  int64_t agent_gid = 0;         // 0: the same number as the uid
  int64_t uid_range_start = 2147000000;
  int64_t uid_range_size = 65536;
  int64_t log_limit_mb = 8;
  int64_t memory_mb = 512;  // defaults for sessions whose limits leave them out
  int64_t pids = 256;
  double cpus = 1;
  int64_t disk_mb = 256;
};

// [sandbox.microvm]: the QEMU micro-VM backend. See docs/operators.md.
struct MicrovmConfig {
  std::string qemu_path;       // default: qemu-system-x86_64 in PATH
  std::string kernel_dir;      // default: where scripts/guest-kernel.sh puts it
  std::string accel = "auto";  // auto | kvm | tcg
  int64_t log_limit_mb = 8;
  int64_t memory_mb = 256;  // the guest's RAM, for sessions whose limits leave it out
  int64_t pids = 256;
  double cpus = 1;
  int64_t disk_mb = 256;
  bool templates = true;           // sandboxes from template snapshots (docs/sandbox.md)
  int64_t qemu_overhead_mb = 192;  // QEMU's cgroup: the guest's RAM plus this
  int64_t spare_qemus = 1;         // QEMUs started ahead per template in use (MicrovmOptions)
};

// [files]: where sessions' files live and how URLs to them are bounded. See docs/operators.md.
struct FilesConfig {
  std::string store = "local";  // local | s3
  std::string root;             // default <home>/files; s3: only <root>/spool, uploads on their way
  std::string signing_keys;     // local: default <home>/file-signing.keys
  int64_t default_expiry_s = 300;
  int64_t max_expiry_s = 3600;
  int64_t max_file_mb = 1024;
  int64_t session_quota_mb = 2048;
  // false: a presigned GET stops working when its session ends (local store: 410; s3: its
  // expiry is clamped to the session's limits.timeout_s, as S3 cannot revoke a URL).
  bool get_urls_outlive_session = false;
  // s3
  std::string s3_endpoint;
  std::string s3_region = "us-east-1";
  std::string s3_bucket;
  bool s3_path_style = true;
  std::string s3_prefix = "sessions/";
  std::string s3_access_key_env = "AWS_ACCESS_KEY_ID";
  std::string s3_secret_key_env = "AWS_SECRET_ACCESS_KEY";
  std::string s3_session_token_env;
  std::string s3_ca_file;
};

// [events]: how much a session may store as events and how fast its sandbox may post them.
// Sized for real agents: the reference agent appends a few events per LLM call, so 100k events
// is hundreds of times a long run; 64 MiB bounds what one session costs the database.
// See docs/operators.md.
struct EventLimitsConfig {
  int64_t max_per_session = 100'000;  // 0: no bound
  int64_t max_mb_per_session = 64;    // 0: no bound
  double rate_per_s = 50;             // sandbox-posted events, a token bucket per session
  int64_t burst = 200;
};

// [retention]: what happens to ended sessions. Off (keep forever) unless set.
struct RetentionConfig {
  int64_t ended_sessions_after_s =
      0;                         // delete the contents of sessions ended this long ago; 0: never
  int64_t interval_s = 300;      // how often the control plane applies it
  int64_t batch_sessions = 100;  // sessions per pass, so a backlog never stalls the store
};

// [egress]: what sandboxes may reach through the control plane's gateway (docs/operators.md,
// "Egress"). Default deny: a session whose policy allows nothing gets no proxy at all.
struct EgressConfig {
  // What may ever be reached (`allow`, `allow_addresses`); every policy narrows it.
  egress::Policy allow;
  // [egress.policies.NAME]: what a session created with {"egress": {"policy": NAME}} may reach.
  std::map<std::string, egress::Policy> policies;
  std::string default_policy;  // the policy of a session created without "egress"; "": none
  // Per session: tunnels and plain-HTTP requests open at once, new ones per minute, and bytes
  // per minute both ways together (a throttle: a tunnel over it waits, it is not cut).
  int64_t max_connections_per_session = 16;
  int64_t requests_per_minute = 600;
  int64_t mb_per_minute = 1024;
  int64_t connect_timeout_s = 10;  // the upstream connect, after resolving
  int64_t idle_timeout_s = 300;    // a connection moving no bytes either way is closed
  // Names pinned to addresses (the /etc/hosts format), looked up before DNS.
  std::string hosts_file = "/etc/hosts";
  // The CA whose certificates the gateway presents for a secret's hosts: the operator's files
  // (every replica of a deployment must use the same), or, when unset, egress-ca/ in the home,
  // made on first start.
  std::string ca_cert_file;
  std::string ca_key_file;
  // More CA certificates to verify a secret's real host with, besides the system's.
  std::string upstream_ca_file;
};

// [secrets.NAME]: a credential the egress gateway adds at the boundary (docs/operators.md,
// "Credentials at the boundary"). A session given it ({"egress": {"secrets": [NAME]}}) holds
// only the placeholder, in its variable `sandbox_env`.
struct SecretConfig {
  std::string env;                       // the control plane's variable that holds the value
  egress::Policy hosts;                  // where it may go (name rules, as in egress.allow)
  std::string header = "Authorization";  // the request header the placeholder is replaced in
  std::string format;       // the header's value, "{}" for the secret; "": the placeholder replaced
  std::string sandbox_env;  // the agent's variable for the placeholder (default: env)
  std::string placeholder;  // "airlock-secret-NAME"
};

// "30d", "12h", "15m", "3600s" (or "0", off) as seconds; kInvalidArgument names `what`.
Result<int64_t> ParseDuration(std::string_view text, std::string_view what);

// Every setting of `airlock serve`, with its default. See docs/operators.md.
struct Config {
  std::string home;
  HostPort operator_listen{"127.0.0.1", 7400};
  HostPort sandbox_listen{"127.0.0.1", 7401};
  std::string sandbox_url;  // CONTROL_PLANE_URL for TCP sandboxes; default from sandbox_listen
  HttpLimits
      limits;  // the sandbox listener's; the operator listener's differs in its connection cap
  // Connections the operator listener accepts: its own share of the descriptors, which no
  // number of sandbox connections can take.
  int64_t operator_max_connections = 1024;
  int long_poll_max_s = 60;
  int drain_timeout_s = 10;
  int worker_threads = 4;
  // How long a replica trusts its memory of which session a sandbox token belongs to
  // (TokenCache) before it asks the store again; 0: it asks every time. Revocations reach the
  // cache at once; this only bounds what a change feed that failed silently could leave.
  int64_t token_cache_ms = 1000;
  // This replica's name in the store: the sessions whose sandboxes it runs carry it. Stable
  // across restarts (so a restarted replica gets its sessions back); default
  // "<hostname>:<home>". Another replica takes over the sessions of one whose heartbeat is
  // older than node_ttl_s.
  std::string node;
  int node_ttl_s = 15;

  std::string store_kind = "sqlite";  // sqlite | postgres
  // sqlite
  std::string store_path;  // default: <home>/airlock.db
  std::string store_synchronous = "normal";
  int store_busy_timeout_ms = 5000;
  // postgres
  std::string store_url;           // postgresql://user@host:port/dbname, never with a password
  std::string store_password_env;  // the environment variable holding the password; "": none
  int store_pool_size = 8;         // connections

  std::map<std::string, OperatorKeyConfig> operator_keys;

  std::string default_backend = "oci";
  std::string default_image = "base";
  std::string default_model = "default";
  bool allow_unisolated_backends = false;  // the "process" backend
  // How often a session gets a fresh sandbox after its sandbox died (killed, out of memory,
  // vanished) before the session fails. An agent that exits on its own is not restarted.
  int64_t max_restarts = 3;
  // A running session whose agent has waited on an empty inbox (and done nothing else) this
  // long is suspended; a message resumes it. A session's limits.idle_timeout_s overrides it;
  // 0 = never.
  int64_t idle_timeout_s = 0;
  // An idle session (as above) is hibernated once it has been idle this long, paused or not:
  // a microvm is snapshotted to disk and its QEMU exits, an oci sandbox is destroyed and the
  // next message starts a fresh one. A session's limits.hibernate_after_s overrides it;
  // 0 = never.
  int64_t hibernate_after_s = 0;
  std::string images_dir;          // default: <home>/images
  std::string builtin_images_dir;  // default: images/ beside the airlock binary (base.tar)
  OciConfig oci;
  MicrovmConfig microvm;
  std::map<std::string, PoolConfig> pools;
  FilesConfig files;
  int64_t max_task_bytes = 256 * 1024;
  // LLM calls one session may have in flight at once (each route and face alike); past it a
  // call is refused with 409. Budgets hold across them: each call reserves its estimate.
  int64_t max_concurrent_llm_calls = 4;
  // Names a session's "env" may not use: they look like credentials, which belong in the
  // control plane (shell-style patterns, `*` any run of characters, matched ignoring case).
  // The api_key_env of every configured provider is refused as well.
  std::vector<std::string> credential_env = {
      "*_API_KEY",  "*_APIKEY", "*_TOKEN", "*_SECRET",      "*_SECRET_*",
      "*PASSWORD*", "*_PASSWD", "AWS_*",   "*_CREDENTIALS", "*_PRIVATE_KEY"};
  int64_t max_message_bytes = 256 * 1024;
  int64_t max_event_bytes = 64 * 1024;
  EventLimitsConfig events;
  RetentionConfig retention;
  EgressConfig egress;
  std::map<std::string, SecretConfig> secrets;

  log::Level log_level = log::Level::kInfo;
  log::Format log_format = log::Format::kJson;

  std::map<std::string, ProviderConfig> providers;
  std::map<std::string, ModelConfig> models;
};

// Default home: $AIRLOCK_HOME, else $HOME/.local/share/airlock.
std::string DefaultHome();

// Reads the TOML file at `path` (if given) over the defaults. Unknown keys, wrong types and
// bad values are refused with a message naming the key.
Result<Config> LoadConfig(const std::optional<std::string>& path, const std::string& home);
Result<Config> ParseConfig(std::string_view toml_text, const std::string& home,
                           std::string_view source_name = "config");

// When the default model alias is not configured, defines it from what the control plane's
// environment offers: OPENAI_API_KEY -> OpenAI (gpt-4o-mini), else ANTHROPIC_API_KEY ->
// Anthropic (claude-haiku-4-5), else the built-in scripted demo. AIRLOCK_DEFAULT_MODEL names
// another upstream model; OPENAI_BASE_URL / ANTHROPIC_BASE_URL (the names the providers' own
// SDKs use) another endpoint, e.g. a compatible local server. Returns one sentence for the start-up
// log saying what the alias is, or "" when the configuration defines it. `getenv` is injected for
// tests.
std::string ApplyDefaultModel(Config& config,
                              const std::function<const char*(const char*)>& getenv);

// The secrets' values, read at start from the variables [secrets.NAME] env names, as the
// gateway takes them. kInvalidArgument naming the secret and the variable (never a value) when
// one is unset, empty, or holds a character a header may not.
Result<egress::Secrets> ReadSecrets(const Config& c,
                                    const std::function<const char*(const char*)>& getenv);

// The PostgreSQL store's password, read at start from the variable store.password_env names
// (an empty Secret when it names none). kInvalidArgument when that variable is unset or empty.
Result<Secret> ReadStorePassword(const Config& c,
                                 const std::function<const char*(const char*)>& getenv);
// The store for log lines: the SQLite file, or "postgres host:port/dbname" (no user, no
// password).
std::string StoreDescription(const Config& c);

}  // namespace airlock::controlplane
