#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sandbox/backend.h"

namespace airlock::sandbox {

// What the oci backend needs of an image: its unpacked tree and its defaults.
struct OciImage {
  std::string rootfs;                   // absolute, read-only, shared by every sandbox of the image
  std::vector<std::string> host_binds;  // the `host` image: host dirs bound read-only
  std::vector<std::string> entrypoint;
  std::vector<std::string> cmd;
  std::vector<std::string> env;  // the image's Env ("NAME=value")
  std::string workdir;
  std::string user;  // the image's User: "name", "uid", "name:group", "uid:gid" or ""
};
using ImageResolver = std::function<Result<OciImage>(const std::string& name)>;

// What the agent runs: the spec's command, else the image's entrypoint and cmd; an error
// naming the image when there is neither. Shared by the backends that run images.
Result<std::vector<std::string>> AgentCommand(const SandboxSpec& spec, const OciImage& image);
// The entries of an image's Env the agent gets: well-formed NAME=value ones without NUL, and
// none of the three the session's identity sets (an image cannot preset them), nor HOME (the
// agent's home is the sandbox's writable one). Shared by the
// backends that run images.
std::vector<std::string> ImageEnvForAgent(const std::vector<std::string>& env);

// An image's User as the image's /etc/passwd and /etc/group (read without following symlinks)
// resolve it: the account's name (when it is a plain one) and its ids where known. Root
// (by name or uid 0) resolves to nothing: an agent never runs as uid 0.
struct ImageUser {
  std::string name;
  std::optional<uint32_t> uid;
  std::optional<uint32_t> gid;
};
ImageUser ResolveImageUser(const std::string& rootfs, const std::string& user);

struct OciOptions {
  std::string runtime = "crun";  // crun | runc | runsc (any runtime with runc's CLI)
  std::string runtime_path;      // default: `runtime` looked up in PATH
  std::string state_dir;         // the runtime's --root (its container state); required
  std::string init_path;         // airlock-init on the host; required
  uint16_t bridge_port = 7401;   // CONTROL_PLANE_URL inside = http://127.0.0.1:<port>
  // As root, each sandbox's agent gets its own host uid (gid: the same number) from
  // [uid_range_start, uid_range_start + uid_range_size), which no host account, group or
  // subordinate range may touch (checked at start). A non-zero agent_uid instead runs every
  // agent as that one uid, which must not be a host account either; agent_gid 0 = agent_uid.
  // Rootless: the uid inside the user namespace (default 1000), mapped to /etc/subuid.
  uint32_t agent_uid = 0;
  uint32_t agent_gid = 0;
  uint32_t uid_range_start = 2147000000;
  uint32_t uid_range_size = 65536;
  int64_t log_limit_bytes = 8 << 20;
  // Used when the session's limits leave them out.
  int64_t default_memory_mb = 512;
  int64_t default_pids = 256;
  double default_cpus = 1;
  int64_t default_disk_mb = 256;
  ImageResolver resolve_image;
};

// Runs each sandbox as an OCI bundle under crun (default), runc or runsc. As root: full
// cgroup limits, the agent as an unprivileged user. As non-root: rootless (a user namespace),
// where the host's cgroups may not be writable — see docs/operators.md.
//
// Creating the backend prepares the host once: on a hybrid cgroup host it moves controllers
// off the v2 hierarchy (crun refuses otherwise). It fails with a clear message when the
// runtime or airlock-init cannot be found.
Result<std::unique_ptr<Backend>> MakeOciBackend(OciOptions options);

}  // namespace airlock::sandbox
