#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/result.h"

namespace airlock::sandbox {

// The ids the host already gives to someone: accounts and groups (by number, with a name for
// messages) and subordinate ranges (/etc/subuid, /etc/subgid), whose owners' user namespaces
// run processes as those host uids.
struct HostIds {
  std::map<uint32_t, std::string> users;   // uid -> name
  std::map<uint32_t, std::string> groups;  // gid -> name
  struct Range {
    uint32_t start = 0;
    uint32_t size = 0;
    std::string owner;
    std::string file;
  };
  std::vector<Range> subordinate;
};

// What this host's /etc/passwd, /etc/group, /etc/subuid and /etc/subgid say, together with
// every account and group the name service enumerates (getpwent/getgrent: also LDAP or sssd
// where those enumerate).
HostIds ReadHostIds();

// Whether the name service knows `id` as a user or a group right now (getpwuid_r/getgrgid_r):
// also sources that do not enumerate.
bool HostKnowsId(uint32_t id);

// Whether any process on the host runs with `uid` as its real, effective or saved uid (read
// from /proc/<pid>/status: /proc/<pid> of a non-dumpable process is owned by root).
bool UidHasProcesses(uint32_t uid);

// OK when no host account, group or subordinate range uses any id of [start, start+size), and
// the range is a usable one (not 0, not the invalid id -1); otherwise why not, naming the
// account. `what` names the setting for the message.
Status CheckIdRangeIsFree(uint32_t start, uint32_t size, const HostIds& host,
                          const std::string& what);

// One host uid per live sandbox, from a range no host account uses. A uid goes back to the pool
// only when its sandbox is destroyed; until then it is not given to anyone else. Thread-safe.
//
// Security: distinct uids are what keep sandboxes apart in everything the kernel counts or checks
// per user: signals and ptrace between them, /proc/<pid> of each other, the per-uid inotify,
// pipe, message-queue and pending-signal quotas, RLIMIT_NPROC. The gid is the same number.
class UidPool {
 public:
  // `known_on_host` is asked before a uid is handed out; a uid it knows is skipped (an account
  // created after start-up, or one of a name service that does not enumerate).
  UidPool(uint32_t start, uint32_t size, std::function<bool(uint32_t)> known_on_host);

  // A free uid for `owner`; the one it already holds if it holds one.
  Result<uint32_t> Acquire(const std::string& owner);
  // Records that `owner` holds `uid` (a sandbox that was running before a restart). A uid
  // outside the range is not the pool's and is ignored.
  void Adopt(const std::string& owner, uint32_t uid);
  // Gives back what `owner` holds, if anything.
  void Release(const std::string& owner);
  // What `from` holds now belongs to `to` (a process started ahead for whoever comes next,
  // then claimed), with no moment at which anyone else could be given it. Fails when `from`
  // holds nothing or `to` already holds a uid.
  Status Transfer(const std::string& from, const std::string& to);
  std::optional<uint32_t> Held(const std::string& owner) const;
  size_t InUse() const;

 private:
  const uint32_t start_;
  const uint32_t size_;
  std::function<bool(uint32_t)> known_on_host_;
  mutable std::mutex mu_;
  std::map<std::string, uint32_t> by_owner_;
  std::set<uint32_t> used_;
  // Offset of the next uid to try: round robin, so a freed uid rests longest. It starts at a
  // random offset, so that two control planes sharing a host and a range rarely meet (the
  // process check of the callback covers the rest while both sandboxes run).
  uint32_t next_ = 0;
};

}  // namespace airlock::sandbox
