#pragma once

#include <string>

#include "common/json_util.h"
#include "common/result.h"

namespace airlock::sandbox {

// Compiles a seccomp profile in the OCI runtime spec's form (`linux.seccomp`: defaultAction,
// defaultErrnoRet, syscalls with names, action, errnoRet and args) into the BPF program the
// kernel takes (struct sock_filter[], as bytes), with libseccomp as crun does. A micro-VM's
// init installs it for its agent, so both backends enforce one profile. A syscall this
// architecture does not have is skipped, as crun skips it; a syscall of another
// architecture kills the process (libseccomp's default for a foreign architecture).
Result<std::string> CompileSeccompProfile(const Json& profile);

}  // namespace airlock::sandbox
