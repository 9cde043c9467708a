#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "sandbox/backend.h"
#include "sandbox/backend_oci.h"

namespace airlock::sandbox {

struct MicrovmOptions {
  std::string qemu_path;  // default: qemu-system-x86_64 in PATH
  // The guest kernel as scripts/guest-kernel.sh leaves it: `vmlinux` (an uncompressed PVH
  // ELF, which QEMU's microvm boots without firmware) and `modules/NN-name.ko`, the modules
  // the guest needs, numbered in load order.
  std::string kernel_dir;
  std::string init_path;  // airlock-init on the host; required
  // Built once and reused: the erofs of each image, the initramfs of each (init, kernel).
  std::string cache_dir;
  // One file per VM this backend started and has not destroyed (its handle), so that List()
  // finds them after a restart, as crun's state directory does for oci; required.
  std::string state_dir;
  // auto: KVM where /dev/kvm can be opened, else TCG (with a warning); or kvm, tcg.
  std::string accel = "auto";
  uint16_t bridge_port = 7401;  // CONTROL_PLANE_URL inside = http://127.0.0.1:<port>
  // As root, each QEMU runs as its own host uid from this range (the oci backend's; see
  // OciOptions), which no host account may use.
  uint32_t uid_range_start = 2147000000;
  uint32_t uid_range_size = 65536;
  int64_t log_limit_bytes = 8 << 20;
  // Used when the session's limits leave them out. memory_mb is the guest's RAM.
  int64_t default_memory_mb = 256;
  int64_t default_pids = 256;
  double default_cpus = 1;
  int64_t default_disk_mb = 256;
  ImageResolver resolve_image;  // the same image store as oci
  // Start sandboxes from template snapshots: a VM of each (image, memory, CPUs) is booted
  // once, to where init waits for its launch, and saved in the cache; a sandbox is then a
  // restore of it plus its launch (its arguments, the clock, fresh randomness), not a boot.
  // Off: every sandbox boots.
  bool templates = true;
  // With templates: how many QEMUs to keep started ahead for each template in use (spares:
  // each ~40 MiB, no guest, no CPU), so that a start from a template does not wait for
  // QEMU's own start. Started after each start from a template, stopped after 10 minutes
  // unclaimed and with the control plane. 0: none.
  int64_t spare_qemus = 1;
  // As root, each QEMU runs in a memory cgroup of its own whose limit is the guest's RAM plus
  // this: QEMU itself, its device state and (under TCG) its translated code, which the
  // backend caps at kTcgCodeCacheMb. A QEMU that outgrows it is killed, and its sandbox is
  // reported as OOM.
  int64_t qemu_overhead_mb = 192;
  // Streams one VM's channel may hold open on the host, each with a socket to its session's
  // control.sock: the session's share of connections (server.max_connections_per_session).
  size_t channel_max_streams = 32;
};

// Runs each sandbox as a QEMU `microvm` guest: the image's tree as a read-only erofs disk,
// airlock-init as PID 1, and one virtio-serial port as the only way out (relayed to the
// session's control.sock by the control plane; see src/init/mux.h). No network device.
// Pausing stops the guest's vCPUs (QMP stop/cont). See docs/sandbox.md.
Result<std::unique_ptr<Backend>> MakeMicrovmBackend(MicrovmOptions options);

// Where scripts/guest-kernel.sh puts the kernel by default: $AIRLOCK_GUEST_KERNEL_DIR, else
// /var/lib/airlock/guest-kernel as root, else ~/.cache/airlock/guest-kernel.
std::string DefaultGuestKernelDir();

// Why the microvm backend cannot run here ("" when it can): QEMU, the guest kernel and
// airlock-init must be there. Tests skip with this.
std::string MicrovmUnavailableReason(const MicrovmOptions& options);

}  // namespace airlock::sandbox
