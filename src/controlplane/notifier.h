#pragma once

#include <chrono>
#include <cstdint>
#include <list>
#include <string>
#include <unordered_map>

#include "common/asio.h"

namespace airlock::controlplane {

// Wakes coroutines waiting on a key (a session's inbox or event stream) the moment something
// is published, with no polling. Use: read Version(key), check the store, and if there is
// nothing, Wait(key, version, deadline). A Notify() that happens between the check and the
// wait bumps the version, so the wait returns at once instead of missing it.
// Single-threaded: every call happens on the io_context's thread.
class Notifier {
 public:
  explicit Notifier(asio::io_context& io) : io_(io) {}

  uint64_t Version(const std::string& key) const;
  void Notify(const std::string& key);
  // Returns true when notified (or already changed), false on deadline.
  awaitable<bool> Wait(const std::string& key, uint64_t seen,
                       std::chrono::steady_clock::time_point deadline);
  // Drops a key's bookkeeping once nothing more will be published on it (a session ended).
  void Forget(const std::string& key);
  // Wakes every waiter (server drain).
  void NotifyAll();
  size_t waiters() const { return waiter_count_; }

 private:
  struct Entry {
    uint64_t version = 0;
    std::list<asio::steady_timer*> timers;
  };
  asio::io_context& io_;
  std::unordered_map<std::string, Entry> entries_;
  size_t waiter_count_ = 0;
};

}  // namespace airlock::controlplane
