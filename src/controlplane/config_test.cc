#include "controlplane/config.h"

#include <map>
#include <string>

#include <gtest/gtest.h>

namespace airlock::controlplane {
namespace {

TEST(ConfigTest, EmptyConfigGivesDefaults) {
  auto c = ParseConfig("", "/h");
  ASSERT_TRUE(c.has_value()) << c.error().message;
  EXPECT_EQ(c->operator_listen.port, 7400);
  EXPECT_EQ(c->operator_listen.host, "127.0.0.1");
  EXPECT_EQ(c->store_path, "/h/airlock.db");
  EXPECT_EQ(c->default_backend, "oci");
  EXPECT_FALSE(c->allow_unisolated_backends);
}

TEST(ConfigTest, AcceptsTheApiDocExample) {
  auto c = ParseConfig(R"(
[providers.main]
kind = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
[models.default]
provider = "main"
model = "gpt-4o-mini"
[models.capped]
provider = "main"
model = "gpt-4o"
max_output_tokens = 2048
)",
                       "/h");
  ASSERT_TRUE(c.has_value()) << c.error().message;
  EXPECT_EQ(c->models.at("default").model, "gpt-4o-mini");
  EXPECT_EQ(c->models.at("default").max_output_tokens, 0);
  EXPECT_EQ(c->models.at("capped").max_output_tokens, 2048);
  EXPECT_EQ(c->providers.at("main").api_key_env, "OPENAI_API_KEY");
}

TEST(ConfigTest, RefusesUnknownKeysNamingEachWithItsPath) {
  auto c = ParseConfig("[server]\nmax_body_bytes = 2048\ntypo_key = 1\n", "/h");
  ASSERT_FALSE(c.has_value());
  EXPECT_NE(c.error().message.find("server.typo_key"), std::string::npos) << c.error().message;
  auto top = ParseConfig("[nonsense]\n", "/h");
  ASSERT_FALSE(top.has_value());
  EXPECT_NE(top.error().message.find("nonsense"), std::string::npos);
  auto nested = ParseConfig("[providers.p]\nkind = \"openai\"\napi_kye = \"x\"\n", "/h");
  ASSERT_FALSE(nested.has_value());
  EXPECT_NE(nested.error().message.find("providers.p.api_kye"), std::string::npos);
}

TEST(ConfigTest, RefusesWrongTypesAndRanges) {
  EXPECT_FALSE(ParseConfig("[server]\nmax_body_bytes = \"big\"\n", "/h").has_value());
  EXPECT_FALSE(ParseConfig("[server]\nmax_connections = 0\n", "/h").has_value());
  EXPECT_FALSE(ParseConfig("[server]\noperator_listen = \"nohost\"\n", "/h").has_value());
  EXPECT_FALSE(ParseConfig("[store]\nsynchronous = \"off\"\n", "/h").has_value());
  EXPECT_FALSE(ParseConfig("[models.m]\nprovider = \"missing\"\n", "/h").has_value());
  EXPECT_FALSE(ParseConfig("[providers.p]\nkind = \"openai\"\n[models.m]\nprovider = \"p\"\n"
                           "max_output_tokens = -1\n",
                           "/h")
                   .has_value());
  auto syntax = ParseConfig("[server\n", "/h", "x.toml");
  ASSERT_FALSE(syntax.has_value());
  EXPECT_NE(syntax.error().message.find("x.toml:1"), std::string::npos);
}

TEST(ConfigTest, InlineProviderKeyIsASecretThatNeverPrints) {
  auto c = ParseConfig("[providers.p]\nkind = \"anthropic\"\napi_key = \"sk-ant-123\"\n", "/h");
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(fmt::format("{}", c->providers.at("p").api_key), "***");
  EXPECT_EQ(c->providers.at("p").api_key.Reveal(), "sk-ant-123");
}

TEST(ConfigTest, OperatorKeysNeedExactlyOneSource) {
  EXPECT_TRUE(ParseConfig("[auth.operator_keys.ci]\nkey_env = \"CI_KEY\"\n", "/h").has_value());
  EXPECT_TRUE(
      ParseConfig("[auth.operator_keys.ci]\nsha256 = \"" + std::string(64, 'a') + "\"\n", "/h")
          .has_value());
  EXPECT_FALSE(ParseConfig("[auth.operator_keys.ci]\n", "/h").has_value());
  EXPECT_FALSE(ParseConfig("[auth.operator_keys.ci]\nsha256 = \"short\"\n", "/h").has_value());
}

TEST(ConfigTest, SandboxOciTable) {
  auto c = ParseConfig(R"(
[sandbox]
images_dir = "/var/lib/airlock/images"
[sandbox.oci]
runtime = "runc"
bridge_port = 8080
memory_mb = 1024
cpus = 0.5
)",
                       "/h");
  ASSERT_TRUE(c.has_value()) << c.error().message;
  EXPECT_EQ(c->oci.runtime, "runc");
  EXPECT_EQ(c->oci.bridge_port, 8080);
  EXPECT_EQ(c->oci.memory_mb, 1024);
  EXPECT_DOUBLE_EQ(c->oci.cpus, 0.5);
  EXPECT_EQ(c->oci.pids, 256);
  EXPECT_EQ(c->images_dir, "/var/lib/airlock/images");
  EXPECT_EQ(ParseConfig("", "/h")->images_dir, "/h/images");

  auto bad = ParseConfig("[sandbox.oci]\nruntime = \"docker\"\n", "/h");
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.error().message.find("crun, runc or runsc"), std::string::npos);
  bad = ParseConfig("[sandbox.oci]\nmemroy_mb = 5\n", "/h");
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.error().message.find("sandbox.oci.memroy_mb"), std::string::npos)
      << bad.error().message;
  EXPECT_FALSE(ParseConfig("[sandbox.oci]\nagent_uid = 0\n", "/h").has_value())
      << "the agent is never root";
}

TEST(ConfigTest, ParsesHostPort) {
  auto hp = ParseHostPort("0.0.0.0:80");
  ASSERT_TRUE(hp.has_value());
  EXPECT_EQ(hp->host, "0.0.0.0");
  EXPECT_EQ(hp->port, 80);
  EXPECT_EQ(ParseHostPort("[::1]:7400")->host, "::1");
  EXPECT_FALSE(ParseHostPort("host:99999").has_value());
  EXPECT_FALSE(ParseHostPort("host:").has_value());
  EXPECT_FALSE(ParseHostPort(":80").has_value());
}

}  // namespace
}  // namespace airlock::controlplane

namespace airlock::controlplane {
namespace {

TEST(ConfigTest, ProvidersGetTransportSettingsAndCheckedUrls) {
  auto c = ParseConfig(R"(
[providers.oa]
kind = "openai"
api_key_env = "OPENAI_API_KEY"
timeout_s = 30
first_byte_timeout_s = 5
connect_timeout_s = 2
max_retries = 0
max_idle_connections = 512
ca_file = "/etc/ssl/private-ca.pem"
[providers.an]
kind = "anthropic"
api_key_env = "ANTHROPIC_API_KEY"
[providers.local]
kind = "openai"
base_url = "http://127.0.0.1:8080/v1"
[providers.demo]
kind = "scripted"
script = "demo.json"
)",
                       "/h");
  ASSERT_TRUE(c.has_value()) << c.error().message;
  EXPECT_EQ(c->providers["oa"].base_url, "https://api.openai.com/v1");
  EXPECT_EQ(c->providers["an"].base_url, "https://api.anthropic.com");
  EXPECT_EQ(c->providers["oa"].timeout, std::chrono::seconds(30));
  EXPECT_EQ(c->providers["oa"].first_byte_timeout, std::chrono::seconds(5));
  EXPECT_EQ(c->providers["oa"].max_retries, 0);
  EXPECT_EQ(c->providers["oa"].max_idle_connections, 512);
  EXPECT_EQ(c->providers["an"].max_idle_connections, 64);
  EXPECT_EQ(c->providers["an"].max_retries, 2);
  EXPECT_EQ(c->providers["local"].base_url, "http://127.0.0.1:8080/v1");

  for (const char* bad :
       {"[providers.p]\nkind = \"openai\"\nbase_url = \"ftp://x\"\n",
        "[providers.p]\nkind = \"openai\"\nbase_url = \"https://user:pw@host/v1\"\n",
        "[providers.p]\nkind = \"openai\"\nbase_url = \"https://host:99999\"\n",
        "[providers.p]\nkind = \"scripted\"\n",
        "[providers.p]\nkind = \"openai\"\nscript = \"x.json\"\n",
        "[providers.p]\nkind = \"openai\"\nmax_retries = 99\n"}) {
    EXPECT_FALSE(ParseConfig(bad, "/h").has_value()) << bad;
  }
  auto url = ParseConfig("[providers.p]\nkind = \"openai\"\nbase_url = \"api.openai.com\"\n", "/h");
  ASSERT_FALSE(url.has_value());
  EXPECT_NE(url.error().message.find("providers.p.base_url"), std::string::npos)
      << url.error().message;
}

}  // namespace
}  // namespace airlock::controlplane

namespace airlock::controlplane {
namespace {

TEST(ConfigTest, FilesTable) {
  auto c = ParseConfig("", "/h");
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->files.store, "local");
  EXPECT_EQ(c->files.root, "/h/files");
  EXPECT_EQ(c->files.signing_keys, "/h/file-signing.keys");
  EXPECT_EQ(c->files.default_expiry_s, 300);
  auto s3 = ParseConfig(R"(
[files]
store = "s3"
session_quota_mb = 100
[files.s3]
endpoint = "https://s3.eu-west-1.amazonaws.com"
region = "eu-west-1"
bucket = "agent-files"
path_style = false
)",
                        "/h");
  ASSERT_TRUE(s3.has_value()) << s3.error().message;
  EXPECT_EQ(s3->files.s3_bucket, "agent-files");
  EXPECT_FALSE(s3->files.s3_path_style);
  EXPECT_FALSE(ParseConfig("[files]\nstore = \"s3\"\n", "/h").has_value())
      << "s3 needs endpoint and bucket";
  EXPECT_FALSE(ParseConfig("[files]\nstore = \"ftp\"\n", "/h").has_value());
  EXPECT_FALSE(
      ParseConfig("[files]\ndefault_expiry_s = 7200\nmax_expiry_s = 3600\n", "/h").has_value());
  EXPECT_FALSE(ParseConfig("[files.s3]\nbuckit = \"x\"\n", "/h").has_value());
  EXPECT_FALSE(c->files.get_urls_outlive_session)
      << "a sandbox's GET URLs end with its session by default";
  auto outlive = ParseConfig("[files]\nget_urls_outlive_session = true\n", "/h");
  ASSERT_TRUE(outlive.has_value()) << outlive.error().message;
  EXPECT_TRUE(outlive->files.get_urls_outlive_session);
  EXPECT_FALSE(ParseConfig("[files]\nget_urls_outlive_session = 1\n", "/h").has_value());
}

TEST(ConfigTest, SandboxRestartAndIdleSettings) {
  auto c = ParseConfig("[sandbox]\nmax_restarts = 0\nidle_timeout_s = 300\n", "/h");
  ASSERT_TRUE(c.has_value()) << c.error().message;
  EXPECT_EQ(c->max_restarts, 0);
  EXPECT_EQ(c->idle_timeout_s, 300);
  auto d = ParseConfig("", "/h");
  EXPECT_EQ(d->max_restarts, 3);
  EXPECT_EQ(d->idle_timeout_s, 0) << "never suspended for idleness unless asked";
  EXPECT_FALSE(ParseConfig("[sandbox]\nidle_timeout_s = -1\n", "/h").has_value());
}

TEST(ConfigTest, TheDefaultModelFollowsTheKeysInTheEnvironmentWhenNotConfigured) {
  auto env = [](std::map<std::string, std::string> vars) {
    return [vars](const char* name) -> const char* {
      auto it = vars.find(name);
      return it == vars.end() ? nullptr : it->second.c_str();
    };
  };
  Config none = *ParseConfig("", "/h");
  std::string note = ApplyDefaultModel(none, env({}));
  EXPECT_NE(note.find("built-in scripted demo"), std::string::npos) << note;
  ASSERT_TRUE(none.models.count("default"));
  EXPECT_TRUE(none.providers.at(none.models.at("default").provider).builtin_demo);

  Config openai = *ParseConfig("", "/h");
  note = ApplyDefaultModel(openai, env({{"OPENAI_API_KEY", "sk-x"}, {"ANTHROPIC_API_KEY", "a"}}));
  EXPECT_NE(note.find("OpenAI gpt-4o-mini"), std::string::npos) << note;
  EXPECT_EQ(note.find("sk-x"), std::string::npos) << "a key never reaches a log line";
  const ProviderConfig& op = openai.providers.at(openai.models.at("default").provider);
  EXPECT_EQ(op.kind, "openai");
  EXPECT_EQ(op.api_key_env, "OPENAI_API_KEY");
  EXPECT_TRUE(op.api_key.empty())
      << "the key is read from the environment by the proxy, not copied";
  EXPECT_EQ(op.base_url, "https://api.openai.com/v1");
  Config local = *ParseConfig("", "/h");
  ApplyDefaultModel(
      local, env({{"OPENAI_API_KEY", "k"}, {"OPENAI_BASE_URL", "http://127.0.0.1:8080/v1"}}));
  EXPECT_EQ(local.providers.at(local.models.at("default").provider).base_url,
            "http://127.0.0.1:8080/v1");

  Config claude = *ParseConfig("", "/h");
  note = ApplyDefaultModel(
      claude, env({{"ANTHROPIC_API_KEY", "a"}, {"AIRLOCK_DEFAULT_MODEL", "claude-sonnet-4-5"}}));
  EXPECT_EQ(claude.providers.at(claude.models.at("default").provider).kind, "anthropic");
  EXPECT_EQ(claude.models.at("default").model, "claude-sonnet-4-5");

  // A configured default alias is left alone, keys or not.
  Config configured = *ParseConfig(
      "[providers.p]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n"
      "[models.default]\nprovider = \"p\"\nmodel = \"m\"\n",
      "/h");
  EXPECT_EQ(ApplyDefaultModel(configured, env({{"OPENAI_API_KEY", "sk-x"}})), "");
  EXPECT_EQ(configured.models.at("default").provider, "p");
  EXPECT_EQ(configured.providers.size(), 1u);
}

TEST(ConfigTest, EventLimitsAndRetentionHaveDefaultsAndParse) {
  auto d = ParseConfig("", "/h");
  ASSERT_TRUE(d.has_value()) << d.error().message;
  EXPECT_EQ(d->events.max_per_session, 100000);
  EXPECT_EQ(d->events.max_mb_per_session, 64);
  EXPECT_EQ(d->events.rate_per_s, 50);
  EXPECT_EQ(d->events.burst, 200);
  EXPECT_EQ(d->retention.ended_sessions_after_s, 0);  // off: keep forever
  auto c = ParseConfig(R"(
[events]
max_per_session = 10
max_mb_per_session = 0
rate_per_s = 2.5
burst = 7
[retention]
ended_sessions_after = "30d"
interval = "90s"
batch_sessions = 5
)",
                       "/h");
  ASSERT_TRUE(c.has_value()) << c.error().message;
  EXPECT_EQ(c->events.max_per_session, 10);
  EXPECT_EQ(c->events.max_mb_per_session, 0);
  EXPECT_EQ(c->events.rate_per_s, 2.5);
  EXPECT_EQ(c->events.burst, 7);
  EXPECT_EQ(c->retention.ended_sessions_after_s, 30 * 86400);
  EXPECT_EQ(c->retention.interval_s, 90);
  EXPECT_EQ(c->retention.batch_sessions, 5);
}

TEST(ConfigTest, RefusesUnknownEventAndRetentionKeysAndBadDurations) {
  for (const char* bad :
       {"[events]\nmax_events = 1\n", "[retention]\nevents_after = \"1d\"\n",
        "[retention]\nended_sessions_after = \"30\"\n",
        "[retention]\nended_sessions_after = \"1w\"\n",
        "[retention]\nended_sessions_after = \"-1d\"\n", "[retention]\nended_sessions_after = 30\n",
        "[retention]\ninterval = \"0\"\n", "[events]\nburst = 0\n", "[events]\nrate_per_s = 0\n"}) {
    EXPECT_FALSE(ParseConfig(bad, "/h").has_value()) << bad;
  }
  EXPECT_EQ(*ParseDuration("12h", "x"), 12 * 3600);
  EXPECT_EQ(*ParseDuration("15m", "x"), 900);
  EXPECT_EQ(*ParseDuration("3600s", "x"), 3600);
  EXPECT_EQ(*ParseDuration("0", "x"), 0);
  EXPECT_FALSE(ParseDuration("99999999999d", "x").has_value());
}

TEST(ConfigTest, AcceptsAPostgresStore) {
  auto c = ParseConfig(R"(
[store]
kind = "postgres"
url = "postgresql://airlock@db.internal:5433/airlock"
password_env = "AIRLOCK_PG_PASSWORD"
pool_size = 16
)",
                       "/h");
  ASSERT_TRUE(c.has_value()) << c.error().message;
  EXPECT_EQ(c->store_kind, "postgres");
  EXPECT_EQ(c->store_url, "postgresql://airlock@db.internal:5433/airlock");
  EXPECT_EQ(c->store_password_env, "AIRLOCK_PG_PASSWORD");
  EXPECT_EQ(c->store_pool_size, 16);
  EXPECT_EQ(c->store_path, "");  // no SQLite file in the home directory
  EXPECT_EQ(StoreDescription(*c), "postgres db.internal:5433/airlock");

  auto defaults = ParseConfig("[store]\nkind = \"postgres\"\nurl = \"postgres://u@h/d\"\n", "/h");
  ASSERT_TRUE(defaults.has_value()) << defaults.error().message;
  EXPECT_EQ(defaults->store_pool_size, 8);
  EXPECT_EQ(defaults->store_password_env, "");
  EXPECT_EQ(StoreDescription(*ParseConfig("", "/h")), "/h/airlock.db");
}

TEST(ConfigTest, RefusesPostgresStoreMisconfigurationsNamingTheKey) {
  auto error = [](const std::string& store_table) {
    auto c = ParseConfig("[store]\n" + store_table, "/h");
    EXPECT_FALSE(c.has_value()) << store_table;
    return c.has_value() ? std::string() : c.error().message;
  };
  EXPECT_NE(error("kind = \"postgres\"\n").find("store.url"), std::string::npos);
  EXPECT_NE(error("kind = \"mysql\"\n").find("not supported"), std::string::npos);
  EXPECT_NE(error("kind = \"postgres\"\nurl = \"mysql://u@h/d\"\n").find("postgresql://"),
            std::string::npos);
  EXPECT_NE(error("kind = \"postgres\"\nurl = \"postgres://u@h/d\"\npool_size = 0\n")
                .find("store.pool_size"),
            std::string::npos);
  // Each kind's keys belong to it alone.
  EXPECT_NE(error("kind = \"postgres\"\nurl = \"postgres://u@h/d\"\npath = \"/x.db\"\n")
                .find("store.path is for kind = \"sqlite\""),
            std::string::npos);
  EXPECT_NE(error("url = \"postgres://u@h/d\"\n").find("store.url is for kind = \"postgres\""),
            std::string::npos);
  EXPECT_NE(error("password_env = \"X\"\n").find("store.password_env"), std::string::npos);
  // A password in the URL is refused, and the message does not repeat it.
  for (const std::string url : {"postgresql://airlock:s3cret-pw@db:5432/airlock",
                                "postgresql://airlock@db:5432/airlock?password=s3cret-pw"}) {
    const std::string message = error("kind = \"postgres\"\nurl = \"" + url + "\"\n");
    EXPECT_NE(message.find("password"), std::string::npos) << message;
    EXPECT_EQ(message.find("s3cret"), std::string::npos) << message;
  }
}

TEST(ConfigTest, StorePasswordComesFromTheNamedEnvironmentVariable) {
  auto c = ParseConfig(
      "[store]\nkind = \"postgres\"\nurl = \"postgres://u@h/d\"\npassword_env = \"PGPW\"\n", "/h");
  ASSERT_TRUE(c.has_value()) << c.error().message;
  std::map<std::string, std::string> env = {{"PGPW", "pw-123"}};
  auto getenv = [&](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  auto password = ReadStorePassword(*c, getenv);
  ASSERT_TRUE(password.has_value()) << password.error().message;
  EXPECT_EQ(password->Reveal(), "pw-123");
  EXPECT_EQ(fmt::format("{}", *password), "***");

  env["PGPW"] = "";
  auto empty = ReadStorePassword(*c, getenv);
  ASSERT_FALSE(empty.has_value());
  EXPECT_NE(empty.error().message.find("PGPW"), std::string::npos);
  env.clear();
  auto unset = ReadStorePassword(*c, getenv);
  ASSERT_FALSE(unset.has_value());
  EXPECT_EQ(unset.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(unset.error().message.find("PGPW"), std::string::npos);
  EXPECT_NE(unset.error().message.find("not set"), std::string::npos);

  c->store_password_env.clear();
  auto none = ReadStorePassword(*c, [](const char*) -> const char* { return "unused"; });
  ASSERT_TRUE(none.has_value());
  EXPECT_TRUE(none->empty());
}

TEST(ConfigTest, EgressIsDenyByDefaultAndEachPolicyMustNarrowTheTopLevel) {
  auto none = ParseConfig("", "/h");
  ASSERT_TRUE(none.has_value());
  EXPECT_TRUE(none->egress.allow.empty());
  EXPECT_TRUE(none->egress.policies.empty());
  EXPECT_EQ(none->egress.default_policy, "");

  auto c = ParseConfig(R"(
[egress]
allow = ["*.github.com", "pypi.org:443"]
allow_addresses = ["10.0.0.5:5432"]
default_policy = "pip"
max_connections_per_session = 4
mb_per_minute = 10
[egress.policies.pip]
allow = ["pypi.org:443"]
[egress.policies.db]
allow_addresses = ["10.0.0.5:5432"]
)",
                       "/h");
  ASSERT_TRUE(c.has_value()) << c.error().message;
  EXPECT_EQ(c->egress.allow.hosts.size(), 2u);
  EXPECT_EQ(c->egress.policies.size(), 2u);
  EXPECT_TRUE(c->egress.policies.at("pip").AllowsName("pypi.org", 443));
  EXPECT_FALSE(c->egress.policies.at("pip").AllowsName("api.github.com", 443));
  EXPECT_EQ(c->egress.default_policy, "pip");
  EXPECT_EQ(c->egress.max_connections_per_session, 4);

  struct Case {
    std::string toml;
    std::string says;
  };
  for (const Case& k : std::vector<Case>{
           {"[egress.policies.wide]\nallow = [\"example.com\"]\n", "egress.policies.wide: "},
           {"[egress]\nallow = [\"a.com\"]\n[egress.policies.p]\nallow = [\"*.a.com\"]\n",
            "egress.policies.p"},
           {"[egress]\ndefault_policy = \"nope\"\n", "is not one of [egress.policies]"},
           {"[egress]\nallow = [\"10.0.0.1\"]\n", "egress"},
           {"[egress]\nallow_addresses = [\"example.com:80\"]\n", "egress"},
           {"[egress]\nmax_connections_per_session = 0\n", "out of range"},
           {"[egress]\nallowed = []\n", "egress.allowed"},
       }) {
    auto bad = ParseConfig(k.toml, "/h");
    ASSERT_FALSE(bad.has_value()) << k.toml;
    EXPECT_NE(bad.error().message.find(k.says), std::string::npos)
        << k.toml << " -> " << bad.error().message;
  }
}

TEST(ConfigTest, SecretsNameTheirVariableHostsAndHeaderAndAreReadAtStart) {
  auto c = ParseConfig(R"(
[egress]
allow = ["api.github.com"]
ca_cert_file = "/etc/airlock/ca.pem"
ca_key_file = "/etc/airlock/ca.key"
[secrets.github]
env = "GITHUB_TOKEN"
hosts = ["api.github.com", "*.githubusercontent.com"]
[secrets.pypi]
env = "AIRLOCK_PYPI"
hosts = ["upload.pypi.org"]
header = "X-Api-Key"
sandbox_env = "PYPI_TOKEN"
format = "key={}"
)",
                       "/h");
  ASSERT_TRUE(c.has_value()) << c.error().message;
  ASSERT_EQ(c->secrets.size(), 2u);
  const SecretConfig& gh = c->secrets.at("github");
  EXPECT_EQ(gh.header, "Authorization");
  EXPECT_EQ(gh.sandbox_env, "GITHUB_TOKEN");
  EXPECT_EQ(gh.placeholder, "airlock-secret-github");
  EXPECT_TRUE(gh.hosts.AllowsName("raw.githubusercontent.com", 443));
  EXPECT_FALSE(gh.hosts.AllowsName("github.com", 443));
  EXPECT_EQ(c->secrets.at("pypi").sandbox_env, "PYPI_TOKEN");
  EXPECT_EQ(c->egress.ca_cert_file, "/etc/airlock/ca.pem");

  std::map<std::string, std::string> vars = {{"GITHUB_TOKEN", "ghp_value"}};
  auto env = [&vars](const char* n) -> const char* {
    auto it = vars.find(n);
    return it == vars.end() ? nullptr : it->second.c_str();
  };
  auto unset = ReadSecrets(*c, env);
  ASSERT_FALSE(unset.has_value());
  EXPECT_EQ(unset.error().message,
            "secrets.pypi.env names AIRLOCK_PYPI, which is not set in the environment");
  vars["AIRLOCK_PYPI"] = "line\r\nX-Injected: 1";
  auto injected = ReadSecrets(*c, env);
  ASSERT_FALSE(injected.has_value());
  EXPECT_NE(injected.error().message.find("control character"), std::string::npos);
  EXPECT_EQ(injected.error().message.find("X-Injected"), std::string::npos) << "no value said";
  vars["AIRLOCK_PYPI"] = "pypi-value";
  auto read = ReadSecrets(*c, env);
  ASSERT_TRUE(read.has_value()) << read.error().message;
  ASSERT_EQ((*read)->size(), 2u);
  EXPECT_EQ((**read)[0].name, "github");
  EXPECT_EQ((**read)[0].value, "ghp_value");
  EXPECT_EQ((**read)[1].header, "X-Api-Key");
  EXPECT_EQ((**read)[1].format, "key={}");
  EXPECT_EQ((**read)[0].format, "");

  struct Case {
    std::string toml;
    std::string says;
  };
  for (const Case& k : std::vector<Case>{
           {"[secrets.gh]\nhosts = [\"a.com\"]\n", "secrets.gh.env must name"},
           {"[secrets.gh]\nenv = \"X\"\n", "secrets.gh.hosts must name where"},
           {"[secrets.gh]\nenv = \"X\"\nhosts = [\"*\"]\n", "would send the secret to every"},
           {"[secrets.gh]\nenv = \"X\"\nhosts = [\"10.0.0.1\"]\n", "secrets.gh.hosts"},
           {"[secrets.gh]\nenv = \"X\"\nhosts = [\"a.com\"]\nheader = \"Bad Header\"\n",
            "is not a header name"},
           {"[secrets.gh]\nenv = \"X\"\nhosts = [\"a.com\"]\nsandbox_env = \"A=B\"\n",
            "sandbox_env must name"},
           {"[secrets.gh]\nenv = \"X\"\nhosts = [\"a.com\"]\nvalue = \"inline\"\n",
            "secrets.gh.value"},
           {"[secrets.\"g-h\"]\nenv = \"X\"\nhosts = [\"a.com\"]\n", "letters, digits and _"},
           {"[egress]\nca_cert_file = \"/x\"\n", "go together"},
           {"[secrets.gh]\nenv = \"X\"\nhosts = [\"a.com\"]\nformat = \"Bearer\"\n",
            "secrets.gh.format must hold {}"},
       }) {
    auto bad = ParseConfig(k.toml, "/h");
    ASSERT_FALSE(bad.has_value()) << k.toml;
    EXPECT_NE(bad.error().message.find(k.says), std::string::npos)
        << k.toml << " -> " << bad.error().message;
  }
}

}  // namespace
}  // namespace airlock::controlplane
