#pragma once

#include "common/json_util.h"

namespace airlock::sandbox {

// The seccomp filter of every sandbox, as the `linux.seccomp` object of an OCI runtime spec.
//
// An allowlist modelled on Docker's default profile, then tightened: anything not listed
// fails with EPERM. Everything Docker allows only with a capability the sandbox never has
// (mount, umount, pivot_root, chroot, ptrace, bpf, perf_event_open, kexec, modules, swap,
// clock setting, reboot, quotactl, open_by_handle_at, …) is left out, and so are interfaces
// a hostile agent has no business with: keyctl/add_key/request_key, unshare/setns, the new
// mount API (fsopen, fsmount, move_mount, open_tree, mount_setattr), userfaultfd,
// io_uring, process_vm_readv/writev, kcmp, 32-bit syscalls (only the native ABI is listed,
// so `int 0x80` kills the process). clone may not create namespaces, clone3 answers ENOSYS
// (libc then falls back to clone, whose flags a filter can see), personality accepts only
// the harmless values, socket refuses AF_VSOCK (a way to the hypervisor).
Json SandboxSeccompProfile();

}  // namespace airlock::sandbox
