#include "sandbox/vm_relay.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "../init/mux.h"
#include "common/log.h"

namespace airlock::sandbox {
namespace {

Result<int> ConnectUnix(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return Errorf(ErrorCode::kInternal, "socket path too long: {}", path);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Errorf(ErrorCode::kUnavailable, "socket: {}", std::strerror(errno));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    ::close(fd);
    return Errorf(ErrorCode::kUnavailable, "connect {}: {}", path, std::strerror(err));
  }
  return fd;
}

}  // namespace

VmRelay::VmRelay(size_t max_streams) : max_streams_(max_streams) {
  epoll_ = ::epoll_create1(EPOLL_CLOEXEC);
  wake_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;
  ::epoll_ctl(epoll_, EPOLL_CTL_ADD, wake_, &ev);
  thread_ = std::thread([this] { Loop(); });
}

VmRelay::~VmRelay() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_, &one, sizeof(one));
  thread_.join();
  muxes_.clear();
  ::close(wake_);
  ::close(epoll_);
}

Status VmRelay::Attach(const std::string& id, const std::string& vm_socket,
                       const std::string& control_socket) {
  AIRLOCK_ASSIGN_OR_RETURN(int port, ConnectUnix(vm_socket));
  init::Mux::Options options;
  options.max_streams = max_streams_;
  auto mux = init::Mux::Host(init::UniqueFd(port), control_socket, options);
  if (!mux) return Errorf(ErrorCode::kInternal, "channel of {}: {}", id, mux.error());
  std::lock_guard lock(mu_);
  if (auto old = muxes_.find(id); old != muxes_.end()) {
    ::epoll_ctl(epoll_, EPOLL_CTL_DEL, old->second->fd(), nullptr);
    ids_.erase(old->second.get());
    muxes_.erase(old);
  }
  init::Mux* raw = mux->get();
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = raw;
  if (::epoll_ctl(epoll_, EPOLL_CTL_ADD, raw->fd(), &ev) != 0) {
    return Errorf(ErrorCode::kInternal, "epoll_ctl: {}", std::strerror(errno));
  }
  ids_.emplace(raw, id);
  muxes_.emplace(id, std::move(*mux));
  return Ok();
}

void VmRelay::Detach(const std::string& id) {
  std::lock_guard lock(mu_);
  auto it = muxes_.find(id);
  if (it == muxes_.end()) return;
  ::epoll_ctl(epoll_, EPOLL_CTL_DEL, it->second->fd(), nullptr);
  ids_.erase(it->second.get());
  muxes_.erase(it);
}

size_t VmRelay::size() const {
  std::lock_guard lock(mu_);
  return muxes_.size();
}

void VmRelay::Loop() {
  std::vector<epoll_event> events(64);
  for (;;) {
    int n = ::epoll_wait(epoll_, events.data(), static_cast<int>(events.size()), -1);
    if (n < 0 && errno != EINTR) {
      log::Error("vm relay: epoll_wait failed", {{"error", std::strerror(errno)}});
      return;
    }
    // Under the lock: Detach may not free a mux this loop is processing. Process() never
    // blocks, so the lock is held briefly.
    std::lock_guard lock(mu_);
    if (stopping_) return;
    for (int i = 0; i < n; ++i) {
      auto* mux = static_cast<init::Mux*>(events[i].data.ptr);
      if (mux == nullptr) {
        uint64_t v;
        [[maybe_unused]] auto r = ::read(wake_, &v, sizeof(v));
        continue;
      }
      // An event of this batch may name a mux that an earlier event of it ended and freed:
      // look it up rather than trust the pointer.
      auto known = ids_.find(mux);
      if (known == ids_.end() || mux->Process()) continue;
      log::Info("vm channel ended", {{"sandbox", known->second}, {"reason", mux->reason()}});
      ::epoll_ctl(epoll_, EPOLL_CTL_DEL, mux->fd(), nullptr);
      muxes_.erase(known->second);
      ids_.erase(known);
    }
  }
}

}  // namespace airlock::sandbox
