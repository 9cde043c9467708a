#pragma once

#include <string>

#include "common/result.h"

namespace airlock::controlplane {

// One `airlock serve` per home directory. The home holds the sessions' control sockets, the
// sandboxes' state and (by default) the database; a second server on the same home would take
// over the first one's sockets and reattach its sandboxes while it still runs them. The lock
// is an flock on <home>/serve.lock held for the life of the process: the kernel drops it when
// the process dies, even by kill -9, so a crashed server never blocks its successor.
//
// Several replicas of one control plane each have their own home; what they share is the
// store.
class HomeLock {
 public:
  // Locks the home, or fails with kConflict naming the pid of the server that holds
  // it. The descriptor is close-on-exec: sandboxes and runtimes started later do not inherit
  // it, so a sandbox that outlives the server does not keep the home locked.
  static Result<HomeLock> Acquire(const std::string& home);

  HomeLock() = default;
  HomeLock(HomeLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  HomeLock& operator=(HomeLock&& o) noexcept;
  HomeLock(const HomeLock&) = delete;
  HomeLock& operator=(const HomeLock&) = delete;
  ~HomeLock();

  bool held() const { return fd_ >= 0; }

 private:
  explicit HomeLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

}  // namespace airlock::controlplane
