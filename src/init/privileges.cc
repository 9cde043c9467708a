#include "privileges.h"

#include <grp.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

namespace airlock::init {
namespace {

// The raw capget/capset interface (version 3: two 32-bit words per set), so that init needs
// no libcap.
struct CapSets {
  uint64_t effective = 0;
  uint64_t permitted = 0;
  uint64_t inheritable = 0;
};

bool GetCaps(CapSets* out) {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  if (::syscall(SYS_capget, &header, data) != 0) {
    return false;
  }
  auto join = [](uint32_t low, uint32_t high) { return uint64_t{high} << 32 | low; };
  out->effective = join(data[0].effective, data[1].effective);
  out->permitted = join(data[0].permitted, data[1].permitted);
  out->inheritable = join(data[0].inheritable, data[1].inheritable);
  return true;
}

bool SetCaps(const CapSets& caps) {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  for (int i = 0; i < 2; ++i) {
    data[i].effective = static_cast<uint32_t>(caps.effective >> (32 * i));
    data[i].permitted = static_cast<uint32_t>(caps.permitted >> (32 * i));
    data[i].inheritable = static_cast<uint32_t>(caps.inheritable >> (32 * i));
  }
  return ::syscall(SYS_capset, &header, data) == 0;
}

constexpr uint64_t Bit(int cap) { return uint64_t{1} << cap; }

// Drops every capability but `keep` (-1: none) from the bounding set. The kernel may know more
// capabilities than our headers, so this walks up until PR_CAPBSET_DROP says EINVAL. Without
// CAP_SETPCAP in the effective set no drop is possible; that is not an error when
// `tolerate_eperm` (a rootless init holds no capability anyway).
bool DropBoundingSet(uint64_t keep, bool tolerate_eperm) {
  for (int cap = 0; cap < 64; ++cap) {
    if ((keep & Bit(cap)) != 0) {
      continue;
    }
    if (::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
      if (errno == EINVAL) {
        return true;
      }
      return errno == EPERM && tolerate_eperm;
    }
  }
  return true;
}

bool ClearAmbient() {
  // EINVAL: a kernel older than 4.3 has no ambient set to clear.
  return ::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) == 0 || errno == EINVAL;
}

}  // namespace

const char* DropStepName(DropStep step) {
  switch (step) {
    case DropStep::kNone:
      return "none";
    case DropStep::kBoundingSet:
      return "dropping the capability bounding set";
    case DropStep::kAmbient:
      return "clearing ambient capabilities";
    case DropStep::kSetGroups:
      return "setgroups";
    case DropStep::kSetGid:
      return "setgid";
    case DropStep::kSetUid:
      return "setuid";
    case DropStep::kCapSet:
      return "capset";
    case DropStep::kNoNewPrivs:
      return "PR_SET_NO_NEW_PRIVS";
    case DropStep::kVerify:
      return "capabilities remain after dropping them";
  }
  return "unknown step";
}

DropStep DropAgentPrivileges(uid_t uid, gid_t gid, bool switch_ids) {
  // A rootless init cannot (and need not) empty the bounding set: it has no capabilities.
  if (!DropBoundingSet(/*keep=*/0, /*tolerate_eperm=*/!switch_ids)) {
    return DropStep::kBoundingSet;
  }
  if (!ClearAmbient()) {
    return DropStep::kAmbient;
  }
  if (switch_ids) {
    if (::setgroups(0, nullptr) != 0) {
      return DropStep::kSetGroups;
    }
    if (::setresgid(gid, gid, gid) != 0) {
      return DropStep::kSetGid;
    }
    // Leaving uid 0 clears the permitted and effective sets; inheritable stays, hence capset.
    if (::setresuid(uid, uid, uid) != 0) {
      return DropStep::kSetUid;
    }
  }
  if (!SetCaps(CapSets{})) {
    return DropStep::kCapSet;
  }
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    return DropStep::kNoNewPrivs;
  }
  CapSets now;
  if (!GetCaps(&now)) {
    return DropStep::kVerify;
  }
  if (now.effective != 0 || now.permitted != 0 || now.inheritable != 0) {
    errno = 0;
    return DropStep::kVerify;
  }
  return DropStep::kNone;
}

Status DropInitPrivileges(bool keep_sys_boot) {
  if (keep_sys_boot) return KeepOnlyCapabilities({CAP_KILL, CAP_SYS_BOOT});
  return KeepOnlyCapabilities({CAP_KILL});
}

Status KeepOnlyCapabilities(std::initializer_list<int> keep_caps) {
  CapSets caps;
  if (!GetCaps(&caps)) {
    return FailErrno("capget", errno);
  }
  bool has_setpcap = (caps.effective & Bit(CAP_SETPCAP)) != 0;
  uint64_t wanted = 0;
  for (int cap : keep_caps) wanted |= Bit(cap);
  if (!DropBoundingSet(wanted, /*tolerate_eperm=*/!has_setpcap)) {
    return FailErrno("dropping the capability bounding set", errno);
  }
  if (!ClearAmbient()) {
    return FailErrno("clearing ambient capabilities", errno);
  }
  uint64_t keep = caps.permitted & wanted;
  if (!SetCaps(CapSets{keep, keep, 0})) {
    return FailErrno("capset", errno);
  }
  return {};
}

}  // namespace airlock::init
