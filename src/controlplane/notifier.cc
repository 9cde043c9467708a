#include "controlplane/notifier.h"

namespace airlock::controlplane {

uint64_t Notifier::Version(const std::string& key) const {
  auto it = entries_.find(key);
  return it == entries_.end() ? 0 : it->second.version;
}

void Notifier::Notify(const std::string& key) {
  auto& e = entries_[key];
  ++e.version;
  for (auto* t : e.timers) t->cancel();
}

void Notifier::NotifyAll() {
  for (auto& [key, e] : entries_) {
    ++e.version;
    for (auto* t : e.timers) t->cancel();
  }
}

void Notifier::Forget(const std::string& key) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  if (it->second.timers.empty()) {
    entries_.erase(it);
  } else {
    Notify(key);
  }
}

awaitable<bool> Notifier::Wait(const std::string& key, uint64_t seen,
                               std::chrono::steady_clock::time_point deadline) {
  auto& e = entries_[key];
  if (e.version != seen) co_return true;
  asio::steady_timer timer(io_, deadline);
  e.timers.push_back(&timer);
  auto it = std::prev(e.timers.end());
  ++waiter_count_;
  boost::system::error_code ec;
  co_await timer.async_wait(asio::redirect_error(use_awaitable, ec));
  --waiter_count_;
  // The entry may have been rehashed but not erased while a timer is registered.
  auto& after = entries_[key];
  after.timers.erase(it);
  co_return ec == asio::error::operation_aborted;
}

}  // namespace airlock::controlplane
