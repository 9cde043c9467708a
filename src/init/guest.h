#pragma once

#include <string>
#include <vector>

#include "sys.h"

namespace airlock::init {

// airlock-init as PID 1 of a micro-VM (the `microvm` backend).
//
// The kernel starts init from an initramfs the backend built: /init (this binary),
// /airlock/modules/NN-name.ko (the virtio and erofs modules of Debian's cloud kernel, loaded
// in the order of their names), /airlock/seccomp.bpf (the sandbox's seccomp filter, compiled
// on the host from the profile crun gets) and /airlock/args (init's command line,
// NUL-separated, the same options a container's init gets) with /airlock/vm (settings:
// "key value" lines). The VM has four virtio-serial ports and one disk:
//   airlock.channel  the only way out: streams to the control plane (see mux.h)
//   airlock.log      init's and the agent's output (the session log)
//   airlock.status   one line, "exit N" or "signal N", written when the agent has exited
//   airlock.launch   from the host, for a template (below)
//   /dev/vda         the image's tree, erofs, read-only
//
// A template is booted without /airlock/args, for one image: init loads the modules, finds
// the devices, and reads the image's settings from airlock.launch ("prepare N\n", then N
// bytes of "key value" lines: the agent's uid, gid and working directory, default limits,
// "preload" lines naming files a start reads, and "init_args": init's options without the
// command). It mounts the image as below, serves the channel, reads the preload files into
// its page cache and hands its free memory back zeroed (SettleTemplate), forks the agent's
// process with those options (agent.h, PreparedAgent: privileges dropped, seccomp filter
// installed, waiting for its command line), writes "ready" to airlock.status and waits on
// airlock.launch, where the backend snapshots it.
// Each VM restored from that snapshot gets its own launch message there ("launch N\n", then
// N bytes: the settings, including the host's time and 64 fresh random bytes, then "args\n"
// and the command line), sets the clock, reseeds the kernel's random generator, takes the
// session's limits (tmpfs sizes, pids), answers "launched" and goes on as a VM booted with
// its arguments would, except that its agent's process is already there: the launch's
// command line and environment go to it, and it execs. (A launch whose options would make
// another process, or a process that died while it waited, gets a new one forked.) A launch
// whose uid, gid or working directory is not the template's is refused: init powers off,
// and the backend boots the session instead.
// Nothing else: no network device, so no route anywhere.
//
// BootVm() turns that into what crun gives init in a container: the image's tree as a
// read-only root, tmpfs for /tmp, the home, /run and /.airlock (size-capped, from
// --tmp-bytes), a minimal /dev, /proc, a read-only /sys, and the agent in a cgroup of its
// own (OOM kills are told from its memory.events). The channel socket
// /.airlock/run/control.sock is served by a multiplexer over airlock.channel, so the rest of
// init runs exactly as in a container.
struct VmBoot {
  bool from_template = false;             // booted without /airlock/args, to be saved as a template
  std::vector<std::string> args;          // init's command line from /airlock/args (or the launch)
  std::string settings;                   // /airlock/vm, or a template's "prepare" then its launch
  std::vector<std::string> sized_mounts;  // the tmpfs whose size is the session's tmp_bytes
  UniqueFd channel;                       // the airlock.channel port
  UniqueFd status;                        // the airlock.status port
  UniqueFd launch;                        // the airlock.launch port (KeepClock)
  std::string cgroup;                     // the agent's cgroup (for --cgroup-root)
  std::string seccomp_filter;             // /airlock/seccomp.bpf: the agent's filter (agent.h)
};

// Whether this process is PID 1 of a micro-VM's initramfs.
bool IsVmBoot();

// Mounts, loads modules, finds the ports, pivots into the image. On failure the reason is
// already logged to the console; the caller powers the VM off.
Result<VmBoot> BootVm();

// A template, once its channel is served: reads the files a start reads into its page cache
// (its settings' "preload" lines) and hands its free memory back zeroed, so that a snapshot
// holds only what is in use.
void SettleTemplate(const VmBoot& boot);

// The options (without the command) that init of a template's sessions will have, from the
// "init_args" line of its settings (NUL-separated, hex-encoded): what a template forks its
// agent's process with before it is saved. Empty when there is none or it is not hex.
std::vector<std::string> TemplateInitArgs(const VmBoot& boot);

// A template, once settled: "ready", then the session's launch, as above. Returns init's
// command line.
Result<std::vector<std::string>> AwaitSession(VmBoot& boot);

// Writes how the agent ended to the status port ("exit N", "signal N" or "signal N oom",
// one line), flushes the disks and powers off (QEMU runs with -no-reboot, so a reboot ends
// it). Never returns.
[[noreturn]] void PowerOff(int status_fd, int exit_code, bool oom_killed);

// Serves the control-plane socket at `socket_path` inside the VM from a thread of its own:
// each connection to it becomes a stream over `channel` (see mux.h). The thread runs until
// the VM powers off.
Status ServeChannel(UniqueFd channel, const std::string& socket_path);

// Tells the channel's thread that the host holds its end again: it stops waiting for it
// (otherwise it looks every 50 ms while no one does).
void WakeChannel();

// A stopped guest's clock stops with it: after a hibernation or a long pause it is behind by
// the time it slept. The backend then writes "clock <ms since the epoch>\n" to the
// airlock.launch port; a thread of its own, holding CAP_SYS_TIME and no other capability,
// sets the clock and answers "clock set\n". It waits on the port edge-triggered, so an idle
// VM with no host on that port never wakes for it. With `go`, the thread starts now and
// watches the port only once `go` (an eventfd) is written to: a template starts it before it
// is saved, and AwaitSession reads its launch from the port first.
Status KeepClock(UniqueFd launch, UniqueFd go = {});

}  // namespace airlock::init
