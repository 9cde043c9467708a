#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/json_util.h"
#include "common/result.h"
#include "common/secret.h"

namespace airlock::sandbox {

// What a backend needs to start one session's sandbox.
//
// Security: `token` is the only credential that may enter the sandbox, and only as the
// SESSION_TOKEN variable of the agent. A backend must not put it on a command line (visible
// in /proc of the host) or in a file readable by others.
struct SandboxSpec {
  std::string session_id;
  Secret token;
  std::string control_plane_url;   // as seen from inside the sandbox
  std::string control_socket_dir;  // host dir holding the per-session socket "control.sock"
  std::string work_dir;            // host dir the backend may use for this session (bundle, logs)
  std::string image;
  Json command = Json::array();  // argv; empty = the image's default entrypoint
  Json limits = Json::object();  // memory_mb, cpus, pids, disk_mb, ...
};

enum class SandboxState { kRunning, kPaused, kExited, kMissing };
std::string_view SandboxStateName(SandboxState s);

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
  // Whether sandboxes of this backend are isolated from the host. The server refuses
  // un-isolated backends unless the operator enabled them explicitly.
  virtual bool isolated() const = 0;

  virtual Result<std::string> Create(const SandboxSpec& spec) = 0;
  virtual Status Suspend(const std::string& handle) = 0;
  virtual Status Resume(const std::string& handle) = 0;
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
