#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "sys.h"

namespace airlock::init {

// Serves CONTROL_PLANE_URL inside the sandbox: listens on 127.0.0.1:<port> and relays each
// TCP connection, byte for byte, to a fresh connection to the control plane's Unix socket.
// Half-closes are passed on (EOF from one side becomes shutdown(SHUT_WR) of the other while
// the reverse direction goes on). A Unix socket that cannot be reached closes the TCP
// connection; nothing a client does can stop the bridge. All of it runs on one epoll
// instance, polled by the caller through fd().
//
// Security: the agent reaches the control plane only through here, and only as a byte
// stream; the control plane authenticates each request by its token.
class Bridge {
 public:
  // Binds and listens at once, so the port is ready before the agent starts.
  static Result<std::unique_ptr<Bridge>> Listen(int port, std::string socket_path);
  ~Bridge();
  Bridge(const Bridge&) = delete;
  Bridge& operator=(const Bridge&) = delete;

  // Readable (for poll/epoll) when Process() has work.
  int fd() const { return epoll_.get(); }

  // Handles what is ready, without blocking.
  void Process();

  size_t connections() const { return connections_.size(); }

  // Defined in bridge.cc.
  struct Connection;

 private:
  Bridge(UniqueFd epoll, UniqueFd listener, UniqueFd reserve, std::string socket_path);
  void Accept();
  void Open(UniqueFd tcp);
  void Pump(Connection& c);
  void Close(Connection& c);
  void PauseAccepting(bool pause);
  void WarnUnreachable(int err);

  UniqueFd epoll_;
  UniqueFd listener_;
  // A spare descriptor, given up to accept-and-close a connection when init runs out of
  // descriptors, so that the listener does not stay readable and spin the loop.
  UniqueFd reserve_;
  std::string socket_path_;
  bool accept_paused_ = false;
  std::unordered_map<Connection*, std::unique_ptr<Connection>> connections_;
  // Closed connections live until the end of Process(): later events of the same batch may
  // still point at them.
  std::vector<std::unique_ptr<Connection>> closed_;
  int64_t last_warning_ms_ = -1;
  uint64_t unreachable_ = 0;
};

}  // namespace airlock::init
