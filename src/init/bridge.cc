#include "bridge.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace airlock::init {
namespace {

// Bounded memory: 2 x 16 KiB per connection, at most 1024 connections (32 MiB). Beyond that
// new connections wait in the kernel's backlog.
constexpr size_t kBufferSize = 16 * 1024;
constexpr size_t kMaxConnections = 1024;
constexpr int64_t kWarningIntervalMs = 5000;

// One side of a connection. Sockets are registered edge-triggered once; `readable` and
// `writable` remember readiness until a read or write says EAGAIN.
struct Endpoint {
  Bridge::Connection* conn = nullptr;
  UniqueFd fd;
  bool readable = false;
  bool writable = false;
};

// Bytes on their way from one endpoint to the other.
struct Direction {
  char data[kBufferSize];
  size_t begin = 0;
  size_t end = 0;
  bool eof = false;   // the source has no more to send
  bool done = false;  // ... and all of it reached the destination, which got SHUT_WR
};

}  // namespace

struct Bridge::Connection {
  Endpoint tcp;
  Endpoint unix_side;
  Direction up;    // agent → control plane
  Direction down;  // control plane → agent
  bool closed = false;
};

namespace {

enum class Moved { kNothing, kProgress, kError };

// Moves what can move now from `src` to `dst` without blocking.
Moved Move(Endpoint& src, Endpoint& dst, Direction& dir) {
  bool progress = false;
  if (!dir.eof && src.readable) {
    if (dir.begin == dir.end) {
      dir.begin = dir.end = 0;
    } else if (dir.end == kBufferSize && dir.begin > 0) {
      std::memmove(dir.data, dir.data + dir.begin, dir.end - dir.begin);
      dir.end -= dir.begin;
      dir.begin = 0;
    }
    if (dir.end < kBufferSize) {
      ssize_t n = ::read(src.fd.get(), dir.data + dir.end, kBufferSize - dir.end);
      if (n > 0) {
        dir.end += static_cast<size_t>(n);
        progress = true;
      } else if (n == 0) {
        dir.eof = true;
        progress = true;
      } else if (errno == EAGAIN) {
        src.readable = false;
      } else if (errno == EINTR) {
        progress = true;
      } else {
        return Moved::kError;
      }
    }
  }
  if (dir.begin < dir.end && dst.writable) {
    ssize_t n = ::send(dst.fd.get(), dir.data + dir.begin, dir.end - dir.begin, MSG_NOSIGNAL);
    if (n > 0) {
      dir.begin += static_cast<size_t>(n);
      progress = true;
    } else if (n < 0 && errno == EAGAIN) {
      dst.writable = false;
    } else if (n < 0 && errno == EINTR) {
      progress = true;
    } else {
      return Moved::kError;
    }
  }
  if (dir.eof && !dir.done && dir.begin == dir.end) {
    // The peer may be gone already (ENOTCONN); the direction is finished either way.
    ::shutdown(dst.fd.get(), SHUT_WR);
    dir.done = true;
    progress = true;
  }
  return progress ? Moved::kProgress : Moved::kNothing;
}

}  // namespace

Result<std::unique_ptr<Bridge>> Bridge::Listen(int port, std::string socket_path) {
  sockaddr_un unix_addr{};
  if (socket_path.size() >= sizeof(unix_addr.sun_path)) {
    return Fail("control-plane socket path too long: " + socket_path);
  }
  UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll.valid()) {
    return FailErrno("epoll_create1", errno);
  }
  UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!listener.valid()) {
    return FailErrno("socket", errno);
  }
  int one = 1;
  ::setsockopt(listener.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string where = "127.0.0.1:" + std::to_string(port);
  if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return FailErrno("cannot listen on " + where + ": bind", errno);
  }
  if (::listen(listener.get(), SOMAXCONN) != 0) {
    return FailErrno("cannot listen on " + where + ": listen", errno);
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;  // the listener; endpoints carry their own pointer
  if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, listener.get(), &ev) != 0) {
    return FailErrno("epoll_ctl", errno);
  }
  UniqueFd reserve(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  return std::unique_ptr<Bridge>(new Bridge(std::move(epoll), std::move(listener),
                                            std::move(reserve), std::move(socket_path)));
}

Bridge::Bridge(UniqueFd epoll, UniqueFd listener, UniqueFd reserve, std::string socket_path)
    : epoll_(std::move(epoll)),
      listener_(std::move(listener)),
      reserve_(std::move(reserve)),
      socket_path_(std::move(socket_path)) {}

Bridge::~Bridge() = default;

void Bridge::Process() {
  epoll_event events[64];
  int n = ::epoll_wait(epoll_.get(), events, 64, 0);
  for (int i = 0; i < n; ++i) {
    auto* endpoint = static_cast<Endpoint*>(events[i].data.ptr);
    if (endpoint == nullptr) {
      Accept();
      continue;
    }
    Connection& c = *endpoint->conn;
    if (c.closed) {
      continue;
    }
    uint32_t e = events[i].events;
    if (e & EPOLLERR) {
      Close(c);
      continue;
    }
    // After a hang-up, reads return the rest and then EOF, and writes fail: both are worth
    // trying, and neither can block.
    if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) {
      endpoint->readable = true;
    }
    if (e & (EPOLLOUT | EPOLLHUP)) {
      endpoint->writable = true;
    }
    Pump(c);
  }
  closed_.clear();
}

void Bridge::Accept() {
  while (!accept_paused_) {
    if (connections_.size() >= kMaxConnections) {
      PauseAccepting(true);
      return;
    }
    UniqueFd tcp(::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!tcp.valid()) {
      if (errno == EINTR || errno == ECONNABORTED) {
        continue;
      }
      if ((errno == EMFILE || errno == ENFILE) && reserve_.valid()) {
        // Out of descriptors: turn the waiting client away rather than spin on a listener
        // that stays readable.
        Log(ErrnoMessage("bridge: accept", errno) + "; connection refused");
        reserve_.Reset();
        UniqueFd refused(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
        refused.Reset();
        reserve_.Reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
        continue;
      }
      if (errno != EAGAIN) {
        Log(ErrnoMessage("bridge: accept", errno));
      }
      return;
    }
    Open(std::move(tcp));
  }
}

void Bridge::Open(UniqueFd tcp) {
  int one = 1;
  ::setsockopt(tcp.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socket_path_.c_str(), socket_path_.size() + 1);
  UniqueFd unix_fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  // A Unix stream connect completes at once or fails (EAGAIN when the server's backlog is
  // full): there is no connect in progress to wait for.
  if (!unix_fd.valid() ||
      ::connect(unix_fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    WarnUnreachable(errno);
    return;  // closing `tcp` tells the client
  }
  auto owned = std::make_unique<Connection>();
  Connection* c = owned.get();
  c->tcp.conn = c;
  c->tcp.fd = std::move(tcp);
  c->unix_side.conn = c;
  c->unix_side.fd = std::move(unix_fd);
  for (Endpoint* endpoint : {&c->tcp, &c->unix_side}) {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = endpoint;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, endpoint->fd.get(), &ev) != 0) {
      Log(ErrnoMessage("bridge: epoll_ctl", errno));
      return;  // `owned` closes both
    }
  }
  connections_.emplace(c, std::move(owned));
}

void Bridge::Pump(Connection& c) {
  for (;;) {
    Moved up = Move(c.tcp, c.unix_side, c.up);
    Moved down = up == Moved::kError ? Moved::kError : Move(c.unix_side, c.tcp, c.down);
    if (up == Moved::kError || down == Moved::kError || (c.up.done && c.down.done)) {
      Close(c);
      return;
    }
    if (up == Moved::kNothing && down == Moved::kNothing) {
      return;
    }
  }
}

void Bridge::Close(Connection& c) {
  c.closed = true;
  // Closing the descriptors also removes them from the epoll set.
  c.tcp.fd.Reset();
  c.unix_side.fd.Reset();
  auto it = connections_.find(&c);
  if (it != connections_.end()) {
    closed_.push_back(std::move(it->second));
    connections_.erase(it);
  }
  PauseAccepting(false);
}

void Bridge::PauseAccepting(bool pause) {
  if (pause == accept_paused_) {
    return;
  }
  accept_paused_ = pause;
  epoll_event ev{};
  ev.events = pause ? 0U : static_cast<uint32_t>(EPOLLIN);
  ev.data.ptr = nullptr;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, listener_.get(), &ev);
}

void Bridge::WarnUnreachable(int err) {
  ++unreachable_;
  int64_t now = MonotonicMs();
  if (last_warning_ms_ >= 0 && now - last_warning_ms_ < kWarningIntervalMs) {
    return;
  }
  last_warning_ms_ = now;
  Log(ErrnoMessage("bridge: cannot reach the control plane at " + socket_path_, err) +
      "; connection closed (" + std::to_string(unreachable_) + " so far)");
}

}  // namespace airlock::init
