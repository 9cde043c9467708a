#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "common/secret.h"

namespace airlock::sandbox {

// The resources of one sandbox. A limit left unset takes the backend's configured default
// (sandbox.oci.memory_mb, ...): what a sensible default is differs between a container and a
// micro-VM. Session-level budgets (timeout_s, idle_timeout_s, tokens, cost) are not here: the
// control plane enforces those, not the backend.
struct Limits {
  std::optional<int64_t> memory_mb;
  std::optional<double> cpus;
  std::optional<int64_t> pids;
  std::optional<int64_t> disk_mb;
};

// The image a sandbox runs: a name the backend's image store resolves, and the digest it
// must resolve to ("" = whatever the name points at now).
struct ImageRef {
  std::string name;
  std::string digest;
};

// The agent's argv; empty = the image's default entrypoint and command.
struct Command {
  std::vector<std::string> argv;
};

// The one way from a sandbox to the control plane.
struct Channel {
  enum class Kind {
    kUnixDir,     // a host directory holding the control plane's socket "control.sock", mounted
                  // into the sandbox (oci)
    kVirtioPort,  // a virtio-serial port of a VM, relayed to that socket by the VMM (microvm)
    kUrl,         // the sandbox listener reached over the network, TLS when https (process,
                  // remote backends)
  };
  Kind kind = Kind::kUnixDir;
  std::string host_dir;   // the dir of the session's socket (kVirtioPort relays to it)
  std::string port_name;  // kVirtioPort
  std::string url;        // kUrl: as the sandbox reaches it
  std::string ca_pem;     // kUrl over https: the CA the sandbox trusts for it
};

// Whom a sandbox serves: what its agent gets as SESSION_ID, SESSION_TOKEN, CONTROL_PLANE_URL.
struct Identity {
  std::string session_id;
  Secret token;
  std::string control_plane_url;  // as seen from inside the sandbox
};

// What a backend can do; the control plane asks instead of knowing backends by name.
struct Capabilities {
  // Whether sandboxes are isolated from the host. The server refuses un-isolated backends
  // unless the operator enabled them explicitly.
  bool isolated = false;
  // How Suspend works: kFreeze keeps the memory (cgroup freezer, SIGSTOP, a paused VM).
  enum class Suspend { kNone, kFreeze };
  Suspend suspend = Suspend::kNone;
  // Whether Hibernate works: the sandbox's memory goes to disk and the sandbox holds none
  // until Resume restores it. Without it the control plane hibernates a session by letting
  // its sandbox go, and starts a fresh one at wake.
  bool hibernate = false;
  // Whether the backend can keep sandboxes started ahead of any session (they wait for an
  // identity over their channel; see kOverChannel).
  bool warm_pool = false;
  // Whether a handle means something only on the node that made it (a local runtime's state
  // directory, a pid) rather than to every replica (a remote API's instance name).
  bool node_local = true;
  Channel::Kind channel = Channel::Kind::kUnixDir;
  // kInSpec: the identity is part of the spec and the backend puts it into the sandbox when it
  // starts it. kOverChannel: the sandbox starts without one and airlock-init fetches it over
  // its channel (GET /sandbox/v1/identity), so the token never sits in the sandbox's
  // configuration on disk.
  enum class IdentityDelivery { kInSpec, kOverChannel };
  IdentityDelivery identity = IdentityDelivery::kInSpec;
};

// What a backend needs to start one sandbox.
//
// Security: `identity->token` is the only credential that may enter the sandbox, and only as
// the SESSION_TOKEN variable of the agent. A backend must not put it on a command line
// (visible in /proc of the host) or in a file readable by others.
struct SandboxSpec {
  std::string sandbox_id;  // unique among the backend's sandboxes; today the session's id
  ImageRef image;
  Command command;
  Limits limits;
  Channel channel;
  std::string work_dir;  // host dir the backend may use for this sandbox (bundle, logs)
  // Set for kInSpec backends only; a kOverChannel backend gets none.
  std::optional<Identity> identity;
};

// kStarting: created, but not running yet (a remote instance being scheduled); the control
// plane treats it as alive.
enum class SandboxState { kStarting, kRunning, kPaused, kExited, kMissing };
std::string_view SandboxStateName(SandboxState s);

// What Create made: the handle the backend wants back, and the sandbox's state.
struct Started {
  std::string handle;
  SandboxState state = SandboxState::kRunning;
};

struct SandboxStatus {
  SandboxState state = SandboxState::kMissing;
  std::optional<int> exit_code;
  std::optional<int> signal;
  bool oom_killed = false;
  std::string detail;
};

// A sandbox a backend holds, as List() reports it.
struct ListedSandbox {
  std::string session_id;
  std::string handle;
};

// One way of running sandboxes (oci, microvm, ...). Implementations are thread-safe and may
// block; the control plane calls them from its worker pool. A handle is an opaque string the
// backend returns from Create and gets back later, also after a control-plane restart.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;
  virtual Capabilities capabilities() const = 0;

  virtual Result<Started> Create(const SandboxSpec& spec) = 0;
  virtual Status Suspend(const std::string& handle) = 0;
  // Writes a running or suspended sandbox's whole state to disk and frees everything it held
  // in memory (Capabilities::hibernate); Inspect says kPaused, "hibernated", until Resume
  // restores it. Idempotent. Default: kUnimplemented.
  virtual Status Hibernate(const std::string& handle);
  // Resumes a suspended or hibernated sandbox. The handle of the resumed sandbox: a backend
  // that resumes from a snapshot may make a new one; the control plane records whatever
  // comes back.
  virtual Result<std::string> Resume(const std::string& handle) = 0;
  // Idempotent: destroying a sandbox that is already gone succeeds.
  virtual Status Destroy(const std::string& handle) = 0;
  virtual Result<SandboxStatus> Inspect(const std::string& handle) = 0;
  // Called once per live session after a control-plane restart: re-adopt the sandbox.
  virtual Result<SandboxStatus> Reattach(const std::string& handle) = 0;
  // Every sandbox of this backend that still exists (running, paused, or stopped but not
  // destroyed), so that the control plane can destroy those no live session owns (a session
  // that ended while the control plane was down, or just before it died). Default: the
  // backend keeps no such list.
  virtual Result<std::vector<ListedSandbox>> List() { return std::vector<ListedSandbox>{}; }
  // Captured stdout/stderr from `offset`, at most `max_bytes`.
  virtual Result<std::string> Logs(const std::string& handle, int64_t offset, size_t max_bytes) = 0;
  // Whether this backend could create a sandbox now, without creating one (the readiness
  // probe, /readyz, calls it every few seconds): cheap checks of what Create needs, with the
  // reason when something is missing. Default: nothing to check.
  virtual Status Probe() { return Ok(); }
};

// Backends registered by name; configuration picks one per session.
class BackendRegistry {
 public:
  void Register(std::unique_ptr<Backend> backend);
  Backend* Find(std::string_view name) const;
  std::vector<std::string> Names() const;
  // A backend that is configured but could not start (e.g. no OCI runtime installed):
  // sessions asking for it get `reason` instead of "unknown backend".
  void MarkUnavailable(std::string name, std::string reason);
  std::optional<std::string> UnavailableReason(std::string_view name) const;

 private:
  std::map<std::string, std::unique_ptr<Backend>, std::less<>> backends_;
  std::map<std::string, std::string, std::less<>> unavailable_;
};

}  // namespace airlock::sandbox
