#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/json_util.h"

namespace airlock::sandbox {

// Where airlock-init and the control-plane channel appear inside every sandbox. The image's
// own /.airlock (created empty at import) is covered by a small tmpfs so the read-only
// image tree shared by all sandboxes is never written.
inline constexpr const char* kInitInSandbox = "/.airlock/init";
inline constexpr const char* kChannelDirInSandbox = "/.airlock/run";
inline constexpr const char* kSandboxHome = "/home/sandbox";

struct IdMapping {
  uint32_t container_id = 0;
  uint32_t host_id = 0;
  uint32_t size = 1;
};

// Everything one sandbox's OCI runtime spec depends on. Filled by the oci backend.
struct OciBundleParams {
  std::string rootfs;  // absolute host path of the image's (read-only) tree
  std::vector<std::string>
      host_binds;                    // host dirs bound read-only at the same path (the host image)
  std::string init_host_path;        // airlock-init on the host
  std::string channel_host_dir;      // host dir holding the session's control.sock
  std::vector<std::string> command;  // the agent's argv
  std::vector<std::string> env;      // what init gets: PATH (nothing of the session)
  // init takes the session's identity over the channel (--identity channel) rather than from
  // `env`.
  bool identity_over_channel = false;
  std::string workdir;  // the agent's cwd; empty = its home
  // The image's Env for the agent (--env of init; not secret: anyone with the image has it),
  // and whether init takes the session's variables and files over the channel (--work).
  std::vector<std::string> image_env;
  bool fetch_work = false;
  uint16_t bridge_port = 0;
  uint32_t agent_uid = 1000;
  uint32_t agent_gid = 1000;
  // Host files bound read-only over the image's /etc/passwd and /etc/group (empty: the
  // image's own), so that the agent's uid, which is not 1000 any more, has a name inside.
  std::string passwd_host_path;
  std::string group_host_path;
  int64_t log_limit_bytes = 8 << 20;
  std::string hostname = "sandbox";
  // init's oom_score_adj (-1000: never chosen); lowering it needs CAP_SYS_RESOURCE, which a
  // control plane that itself runs in a container may lack. Either way init raises the
  // agent's score, so the agent is the one the OOM killer takes.
  std::optional<int> init_oom_score_adj;

  // Limits. 0 = unlimited (only where the host cannot enforce it, e.g. rootless on v1).
  int64_t memory_bytes = 0;
  bool limit_swap = true;  // memory+swap = memory: the agent cannot page out to escape the cap
  // cgroup v1 only (v2 charges socket buffers to `memory_bytes` by itself): the TCP buffer
  // memory of the sandbox's sockets (memory.kmem.tcp.limit_in_bytes). 0 = not set, and then
  // v1 does not account it at all.
  int64_t kernel_tcp_bytes = 0;
  int64_t pids = 0;
  double cpus = 0;
  int64_t tmp_bytes = 256 << 20;  // /tmp and /home/sandbox, each
  std::string cgroups_path;       // "/airlock/<id>"; empty = let the runtime decide / none
  bool mount_cgroupfs = true;     // read-only /sys/fs/cgroup, so init can tell an OOM kill
  // cgroup v1 hierarchies under /sys/fs/cgroup (V1HierarchyDirs), made read-only one by one.
  std::vector<std::string> cgroup_v1_dirs;

  bool rootless = false;  // adds a user namespace with these mappings
  std::vector<IdMapping> uid_mappings;
  std::vector<IdMapping> gid_mappings;
};

// The per-socket TCP buffer bounds (min default max, bytes) set in every sandbox's own network
// namespace. The kernel's defaults let one socket grow to 4 MiB (send) and 32 MiB (receive), for
// long fat networks; a sandbox has only loopback, where 1 MiB a direction already fills the
// pipe, and the smaller maximum bounds what each socket may hold before any cgroup limit acts.
inline constexpr const char* kSandboxTcpRmem = "4096 131072 1048576";
inline constexpr const char* kSandboxTcpWmem = "4096 16384 1048576";

// The `config.json` of the bundle (OCI runtime-spec 1.0): new pid, net, ipc, uts, mount and
// cgroup namespaces (plus user when rootless), read-only root, size-capped tmpfs for /tmp,
// the home and /run, a minimal /dev, the runtime spec's masked and read-only /proc and /sys
// paths, the seccomp allowlist, no_new_privs, and for init only the capabilities it needs to
// drop to the agent's user (it then drops them; the agent has none).
Json BuildOciConfig(const OciBundleParams& p);

// Whether the agent's working directory `workdir` needs a writable mount of its own: it is on
// the read-only image, not in the agent's home or /tmp, and not a directory the sandbox's own
// mounts hold (/proc, /dev, /sys, /run, /etc, /.airlock).
bool WorkdirNeedsItsOwnMount(std::string_view workdir);

// The agent uid a config.json built by BuildOciConfig names (init's --uid), or nullopt. How a
// restarted control plane learns which uids its running sandboxes hold.
std::optional<uint32_t> AgentUidOf(const Json& config);

}  // namespace airlock::sandbox
