#include "controlplane/plug_points.h"

#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <filesystem>

#include "common/log.h"
#include "controlplane/config_reader.h"
#include "files/local_store.h"
#include "files/s3_store.h"
#include "llm/http_provider.h"
#include "llm/scripted.h"
#include "sandbox/backend_microvm.h"
#include "sandbox/backend_oci.h"
#include "sandbox/backend_process.h"
#include "store/postgres_store.h"
#include "store/sqlite_store.h"

namespace airlock::controlplane {
namespace {

// ---- Stores

Status ParseSqlite(TableReader& r, Config& c) {
  AIRLOCK_TRY(r.String("path", &c.store_path));
  AIRLOCK_TRY(r.String("synchronous", &c.store_synchronous));
  AIRLOCK_TRY(r.IntAs("busy_timeout_ms", &c.store_busy_timeout_ms, 0, 600'000));
  if (c.store_synchronous != "normal" && c.store_synchronous != "full") {
    return MakeError(ErrorCode::kInvalidArgument,
                     "store.synchronous must be \"normal\" or \"full\"");
  }
  if (c.store_path.empty()) c.store_path = c.home + "/airlock.db";
  return Ok();
}

Result<std::unique_ptr<store::Store>> OpenSqlite(const Config& config) {
  store::StoreOptions so;
  so.path = config.store_path;
  so.synchronous = config.store_synchronous;
  so.busy_timeout_ms = config.store_busy_timeout_ms;
  return store::OpenSqliteStore(so);
}

Status ParsePostgres(TableReader& r, Config& c) {
  AIRLOCK_TRY(r.String("url", &c.store_url));
  AIRLOCK_TRY(r.String("password_env", &c.store_password_env));
  AIRLOCK_TRY(r.IntAs("pool_size", &c.store_pool_size, 1, 256));
  if (c.store_url.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "store.kind = \"postgres\" needs store.url = "
                     "\"postgresql://user@host:port/dbname\"");
  }
  // Refuses a URL that holds a password here, before anything could log it.
  if (auto target = store::ParsePostgresUrl(c.store_url); !target) {
    return MakeError(ErrorCode::kInvalidArgument, target.error().message);
  }
  return Ok();
}

// The PostgreSQL password is read from the environment here, at start, and goes nowhere but
// the store's connections.
Result<std::unique_ptr<store::Store>> OpenPostgres(const Config& config) {
  store::PostgresOptions po;
  po.url = config.store_url;
  po.pool_size = config.store_pool_size;
  AIRLOCK_ASSIGN_OR_RETURN(po.password,
                           ReadStorePassword(config, [](const char* n) { return std::getenv(n); }));
  AIRLOCK_ASSIGN_OR_RETURN(store::PostgresTarget target, store::ParsePostgresUrl(po.url));
  log::Info("opening the PostgreSQL store", {{"host", target.host},
                                             {"port", target.port},
                                             {"dbname", target.dbname},
                                             {"pool_size", po.pool_size}});
  return store::OpenPostgresStore(po);
}

constexpr std::array kStoreKinds = {
    StoreKind{"sqlite", "one SQLite file in the home directory, for a single replica", OpenSqlite,
              ParseSqlite},
    StoreKind{"postgres", "a PostgreSQL database that several replicas share", OpenPostgres,
              ParsePostgres},
};

// ---- Sandbox backends

Result<std::unique_ptr<sandbox::Backend>> MakeProcess(const BackendContext&) {
  return sandbox::MakeProcessBackend();
}

std::string ExecutableDir() {
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : exe.parent_path().string();
}

// airlock-init: configured, else beside the airlock binary (the build tree, or bin/ of an
// install), else in libexec/airlock of an install.
std::string FindInit(const Config& config) {
  if (!config.oci.init_path.empty()) return config.oci.init_path;
  std::string dir = ExecutableDir();
  for (const std::string& candidate :
       {dir + "/airlock-init", dir + "/../libexec/airlock/airlock-init"}) {
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return dir + "/airlock-init";
}

sandbox::OciImage ToOciImage(images::ResolvedImage r) {
  sandbox::OciImage o;
  o.rootfs = std::move(r.rootfs);
  o.host_binds = std::move(r.host_binds);
  o.entrypoint = std::move(r.entrypoint);
  o.cmd = std::move(r.cmd);
  o.env = std::move(r.env);
  o.workdir = std::move(r.workdir);
  o.user = std::move(r.user);
  return o;
}

// The local backends' view of the image store.
sandbox::ImageResolver ImagesOf(const BackendContext& context) {
  return [images = context.images](const std::string& name) -> Result<sandbox::OciImage> {
    if (!images) return MakeError(ErrorCode::kUnavailable, "the image store could not be opened");
    AIRLOCK_ASSIGN_OR_RETURN(auto resolved, images->Resolve(name));
    return ToOciImage(std::move(resolved));
  };
}

Status ParseOci(TableReader& o, Config& c) {
  OciConfig& k = c.oci;
  AIRLOCK_TRY(o.String("runtime", &k.runtime));
  AIRLOCK_TRY(o.String("runtime_path", &k.runtime_path));
  AIRLOCK_TRY(o.String("init_path", &k.init_path));
  AIRLOCK_TRY(o.Int("bridge_port", &k.bridge_port, 1, 65535));
  AIRLOCK_TRY(o.Int("agent_uid", &k.agent_uid, 1, 4294967294));
  AIRLOCK_TRY(o.Int("agent_gid", &k.agent_gid, 1, 4294967294));
  AIRLOCK_TRY(o.Int("uid_range_start", &k.uid_range_start, 1, 4294967294));
  AIRLOCK_TRY(o.Int("uid_range_size", &k.uid_range_size, 1, 1 << 24));
  AIRLOCK_TRY(o.Int("log_limit_mb", &k.log_limit_mb, 1, 1 << 20));
  AIRLOCK_TRY(o.Int("memory_mb", &k.memory_mb, 16, 1 << 20));
  AIRLOCK_TRY(o.Int("pids", &k.pids, 1, 1 << 22));
  AIRLOCK_TRY(o.Double("cpus", &k.cpus, 0.01));
  AIRLOCK_TRY(o.Int("disk_mb", &k.disk_mb, 1, 1 << 24));
  AIRLOCK_TRY(o.RejectUnknown());
  if (k.runtime != "crun" && k.runtime != "runc" && k.runtime != "runsc") {
    return MakeError(ErrorCode::kInvalidArgument,
                     "sandbox.oci.runtime must be crun, runc or runsc");
  }
  return Ok();
}

Result<std::unique_ptr<sandbox::Backend>> MakeOci(const BackendContext& context) {
  const Config& config = context.config;
  sandbox::OciOptions o;
  o.runtime = config.oci.runtime;
  o.runtime_path = config.oci.runtime_path;
  o.state_dir = config.home + "/run/oci";
  o.init_path = FindInit(config);
  o.bridge_port = static_cast<uint16_t>(config.oci.bridge_port);
  o.agent_uid = static_cast<uint32_t>(config.oci.agent_uid);
  o.agent_gid = static_cast<uint32_t>(config.oci.agent_gid);
  o.uid_range_start = static_cast<uint32_t>(config.oci.uid_range_start);
  o.uid_range_size = static_cast<uint32_t>(config.oci.uid_range_size);
  o.log_limit_bytes = config.oci.log_limit_mb << 20;
  o.default_memory_mb = config.oci.memory_mb;
  o.default_pids = config.oci.pids;
  o.default_cpus = config.oci.cpus;
  o.default_disk_mb = config.oci.disk_mb;
  o.resolve_image = ImagesOf(context);
  return sandbox::MakeOciBackend(std::move(o));
}

Status ParseMicrovm(TableReader& t, Config& c) {
  MicrovmConfig& k = c.microvm;
  AIRLOCK_TRY(t.String("qemu_path", &k.qemu_path));
  AIRLOCK_TRY(t.String("kernel_dir", &k.kernel_dir));
  AIRLOCK_TRY(t.String("accel", &k.accel));
  AIRLOCK_TRY(t.Int("log_limit_mb", &k.log_limit_mb, 1, 1 << 20));
  AIRLOCK_TRY(t.Int("memory_mb", &k.memory_mb, 128, 1 << 20));
  AIRLOCK_TRY(t.Int("pids", &k.pids, 1, 1 << 22));
  AIRLOCK_TRY(t.Double("cpus", &k.cpus, 0.01));
  AIRLOCK_TRY(t.Int("disk_mb", &k.disk_mb, 1, 1 << 24));
  AIRLOCK_TRY(t.Bool("templates", &k.templates));
  AIRLOCK_TRY(t.Int("qemu_overhead_mb", &k.qemu_overhead_mb, 64, 1 << 20));
  AIRLOCK_TRY(t.Int("spare_qemus", &k.spare_qemus, 0, 16));
  AIRLOCK_TRY(t.RejectUnknown());
  if (k.accel != "auto" && k.accel != "kvm" && k.accel != "tcg") {
    return MakeError(ErrorCode::kInvalidArgument, "sandbox.microvm.accel must be auto, kvm or tcg");
  }
  return Ok();
}

Result<std::unique_ptr<sandbox::Backend>> MakeMicrovm(const BackendContext& context) {
  const Config& config = context.config;
  sandbox::MicrovmOptions o;
  o.qemu_path = config.microvm.qemu_path;
  o.kernel_dir = config.microvm.kernel_dir.empty() ? sandbox::DefaultGuestKernelDir()
                                                   : config.microvm.kernel_dir;
  o.init_path = FindInit(config);
  o.cache_dir = config.home + "/cache/microvm";
  o.state_dir = config.home + "/run/microvm";
  o.accel = config.microvm.accel;
  o.bridge_port = static_cast<uint16_t>(config.oci.bridge_port);
  o.uid_range_start = static_cast<uint32_t>(config.oci.uid_range_start);
  o.uid_range_size = static_cast<uint32_t>(config.oci.uid_range_size);
  o.log_limit_bytes = config.microvm.log_limit_mb << 20;
  o.default_memory_mb = config.microvm.memory_mb;
  o.default_pids = config.microvm.pids;
  o.default_cpus = config.microvm.cpus;
  o.default_disk_mb = config.microvm.disk_mb;
  o.templates = config.microvm.templates;
  o.qemu_overhead_mb = config.microvm.qemu_overhead_mb;
  o.spare_qemus = config.microvm.spare_qemus;
  o.channel_max_streams = config.limits.max_connections_per_session;
  o.resolve_image = ImagesOf(context);
  return sandbox::MakeMicrovmBackend(std::move(o));
}

constexpr std::array kBackendKinds = {
    BackendKind{"process", "a host process, not isolated (needs allow_unisolated_backends)",
                MakeProcess},
    BackendKind{"oci", "a container run by crun, runc or runsc", MakeOci, ParseOci},
    BackendKind{"microvm", "a QEMU micro-VM with its own kernel", MakeMicrovm, ParseMicrovm},
};

// ---- LLM providers

Result<std::unique_ptr<llm::Provider>> MakeScripted(const ProviderContext& context) {
  const ProviderConfig& p = context.config;
  AIRLOCK_ASSIGN_OR_RETURN(auto provider,
                           p.builtin_demo ? llm::MakeScriptedProvider(llm::BuiltinDemoScript(),
                                                                      "the built-in demo script")
                                          : llm::LoadScriptedProvider(p.script));
  log::Info("llm provider ready: the scripted model (replies from a script, no LLM)",
            {{"provider", context.name},
             {"kind", "scripted"},
             {"script", p.builtin_demo ? "built-in demo" : p.script}});
  return provider;
}

// An upstream speaking `format`. The key is read from the environment here, at start; an
// upstream that needs no key (a local OpenAI-compatible server) may go without one unless
// `key_required`.
Result<std::unique_ptr<llm::Provider>> MakeHttp(const ProviderContext& context,
                                                std::unique_ptr<llm::WireFormat> format,
                                                bool key_required) {
  const ProviderConfig& p = context.config;
  Secret key = p.api_key;
  if (key.empty() && !p.api_key_env.empty()) {
    const char* v = std::getenv(p.api_key_env.c_str());
    if (v != nullptr) key = Secret(v);
  }
  AIRLOCK_ASSIGN_OR_RETURN(llm::Endpoint ep, llm::ParseBaseUrl(p.base_url));
  if (key.empty() && !p.api_key_env.empty()) {
    return Errorf(ErrorCode::kUnavailable,
                  "the environment variable {} is not set in the control plane's environment",
                  p.api_key_env);
  }
  if (key.empty() && key_required) {
    return MakeError(ErrorCode::kUnavailable, "no key: set api_key_env");
  }
  llm::UpstreamOptions o;
  o.connect_timeout = p.connect_timeout;
  o.first_byte_timeout = p.first_byte_timeout;
  o.total_timeout = p.timeout;
  o.max_retries = p.max_retries;
  o.max_idle_per_host = static_cast<size_t>(p.max_idle_connections);
  o.ca_file = p.ca_file;
  AIRLOCK_ASSIGN_OR_RETURN(auto client, llm::UpstreamClient::Make(context.io, o));
  log::Info("llm provider ready",
            {{"provider", context.name}, {"kind", p.kind}, {"upstream", ep.Key()}});
  return llm::MakeHttpProvider(std::move(format), ep, std::move(key), std::move(client));
}

Result<std::unique_ptr<llm::Provider>> MakeOpenAi(const ProviderContext& context) {
  return MakeHttp(context, llm::MakeOpenAiFormat(), /*key_required=*/false);
}

Result<std::unique_ptr<llm::Provider>> MakeAnthropic(const ProviderContext& context) {
  return MakeHttp(context, llm::MakeAnthropicFormat(), /*key_required=*/true);
}

constexpr std::array kProviderKinds = {
    ProviderKind{"openai", "an upstream speaking the OpenAI chat completions API", MakeOpenAi},
    ProviderKind{"anthropic", "an upstream speaking the Anthropic messages API", MakeAnthropic},
    ProviderKind{"scripted", "replies read from a script: no LLM, for offline runs and tests",
                 MakeScripted},
};

// ---- Blob stores

// Files under files.root, reached through URLs this control plane signs and serves.
Result<std::unique_ptr<files::BlobStore>> OpenLocal(const FilesConfig& f) {
  std::error_code ec;
  std::filesystem::create_directories(f.root, ec);
  if (ec) return Errorf(ErrorCode::kInternal, "create {}: {}", f.root, ec.message());
  ::chmod(f.root.c_str(), 0700);
  AIRLOCK_ASSIGN_OR_RETURN(auto signer, files::UrlSigner::LoadOrCreate(f.signing_keys));
  auto local =
      std::make_unique<files::LocalBlobStore>(files::LocalStoreOptions{f.root}, std::move(signer));
  local->SweepPartialUploads();
  log::Info("file store ready",
            {{"store", "local"}, {"root", f.root}, {"key_id", local->signer().active_kid()}});
  return local;
}

// [files.s3] is read whatever files.store says, and needed only when it says s3.
Status ParseS3(TableReader& s, Config& c) {
  FilesConfig& f = c.files;
  AIRLOCK_TRY(s.String("endpoint", &f.s3_endpoint));
  AIRLOCK_TRY(s.String("region", &f.s3_region));
  AIRLOCK_TRY(s.String("bucket", &f.s3_bucket));
  AIRLOCK_TRY(s.Bool("path_style", &f.s3_path_style));
  AIRLOCK_TRY(s.String("prefix", &f.s3_prefix));
  AIRLOCK_TRY(s.String("access_key_env", &f.s3_access_key_env));
  AIRLOCK_TRY(s.String("secret_key_env", &f.s3_secret_key_env));
  AIRLOCK_TRY(s.String("session_token_env", &f.s3_session_token_env));
  AIRLOCK_TRY(s.String("ca_file", &f.s3_ca_file));
  AIRLOCK_TRY(s.RejectUnknown());
  if (f.store == "s3" && (f.s3_endpoint.empty() || f.s3_bucket.empty())) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "files.store = \"s3\" needs files.s3.endpoint and files.s3.bucket");
  }
  return Ok();
}

// The S3 credentials are read from the environment here, at start.
Result<std::unique_ptr<files::BlobStore>> OpenS3(const FilesConfig& f) {
  files::S3StoreOptions o;
  o.endpoint = f.s3_endpoint;
  o.region = f.s3_region;
  o.bucket = f.s3_bucket;
  o.path_style = f.s3_path_style;
  o.prefix = f.s3_prefix;
  o.ca_file = f.s3_ca_file;
  // With s3, files.root holds only uploads the control plane receives itself, on their way.
  o.spool_dir = f.root + "/spool";
  auto env = [](const std::string& name) -> std::string {
    const char* v = name.empty() ? nullptr : std::getenv(name.c_str());
    return v ? v : "";
  };
  o.creds.access_key_id = env(f.s3_access_key_env);
  o.creds.secret_access_key = Secret(env(f.s3_secret_key_env));
  o.creds.session_token = env(f.s3_session_token_env);
  if (o.creds.access_key_id.empty() || o.creds.secret_access_key.empty()) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "files.store = \"s3\": set {} and {} in the control plane's environment",
                  f.s3_access_key_env, f.s3_secret_key_env);
  }
  AIRLOCK_ASSIGN_OR_RETURN(auto s3, files::MakeS3BlobStore(std::move(o)));
  log::Info("file store ready",
            {{"store", "s3"}, {"endpoint", f.s3_endpoint}, {"bucket", f.s3_bucket}});
  return s3;
}

constexpr std::array kBlobStoreKinds = {
    BlobStoreKind{"local", "files in the home directory, served by the control plane itself",
                  OpenLocal},
    BlobStoreKind{"s3", "an S3-compatible bucket; sandboxes reach it with presigned URLs", OpenS3,
                  ParseS3},
};

}  // namespace

PlugTable<store::Store, Config> StoreKinds() { return kStoreKinds; }

Result<std::unique_ptr<store::Store>> OpenStore(const Config& config) {
  AIRLOCK_ASSIGN_OR_RETURN(const StoreKind* kind,
                           FindKind(StoreKinds(), "store.kind", config.store_kind));
  return kind->make(config);
}

PlugTable<sandbox::Backend, BackendContext> BackendKinds() { return kBackendKinds; }

void RegisterBackends(const BackendContext& context, sandbox::BackendRegistry& backends) {
  for (const BackendKind& kind : BackendKinds()) {
    auto backend = kind.make(context);
    if (!backend) {
      log::Warn(fmt::format("the {} backend is not available", kind.name),
                {{"error", backend.error().message}});
      backends.MarkUnavailable(std::string(kind.name), backend.error().message);
      continue;
    }
    backends.Register(std::move(*backend));
  }
}

PlugTable<llm::Provider, ProviderContext> ProviderKinds() { return kProviderKinds; }

Result<std::unique_ptr<llm::Provider>> MakeProvider(const ProviderContext& context) {
  AIRLOCK_ASSIGN_OR_RETURN(const ProviderKind* kind,
                           FindKind(ProviderKinds(), fmt::format("providers.{}.kind", context.name),
                                    context.config.kind));
  return kind->make(context);
}

PlugTable<files::BlobStore, FilesConfig> BlobStoreKinds() { return kBlobStoreKinds; }

Result<std::unique_ptr<files::BlobStore>> OpenBlobStore(const FilesConfig& config) {
  AIRLOCK_ASSIGN_OR_RETURN(const BlobStoreKind* kind,
                           FindKind(BlobStoreKinds(), "files.store", config.store));
  return kind->make(config);
}

}  // namespace airlock::controlplane
