#pragma once

#include <sys/types.h>

#include <initializer_list>

#include "sys.h"

namespace airlock::init {

// The steps of DropAgentPrivileges, so that a failure names the step that failed.
enum class DropStep : int {
  kNone = 0,
  kBoundingSet,
  kAmbient,
  kSetGroups,
  kSetGid,
  kSetUid,
  kCapSet,
  kNoNewPrivs,
  kVerify,
};

// A short name of the step ("setuid", ...), for error messages.
const char* DropStepName(DropStep step);

// Turns the forked agent into an unprivileged process: empties the capability bounding set
// (while CAP_SETPCAP is still held), clears the ambient set, switches to uid/gid with no
// supplementary groups (when `switch_ids`), clears every remaining capability, sets
// no_new_privs, and checks with capget that permitted, effective and inheritable are empty.
// Async-signal-safe: it runs between fork and exec. Returns kNone, or the failed step with
// errno set (0 for kVerify).
DropStep DropAgentPrivileges(uid_t uid, gid_t gid, bool switch_ids);

// Leaves init itself with CAP_KILL alone (to signal the agent's uid) in its bounding,
// permitted and effective sets, and CAP_SYS_BOOT with `keep_sys_boot` (PID 1 of a micro-VM
// powers it off when the agent is done; ending its own VM is nothing the agent could not do
// by exiting). Without CAP_SETPCAP (rootless) the bounding set stays as it is: init then
// holds no capability to lose.
Status DropInitPrivileges(bool keep_sys_boot = false);

// Leaves the calling thread (capabilities are per thread) only the capabilities whose numbers
// are in `keep` (e.g. {CAP_SYS_TIME}; none when empty), in its bounding, permitted and
// effective sets; clears its inheritable and ambient sets. Needs CAP_SETPCAP for the
// bounding set; without it (rootless) that set stays.
Status KeepOnlyCapabilities(std::initializer_list<int> keep);

}  // namespace airlock::init
