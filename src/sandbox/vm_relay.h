#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include "common/result.h"

namespace airlock::init {
class Mux;
}

namespace airlock::sandbox {

// The host end of every micro-VM's channel: for each VM, a connection to the Unix socket QEMU
// serves its airlock.channel port on, and a multiplexer (src/init/mux.h, the same code the
// guest runs) that connects each stream the guest opens to the session's control.sock. One
// thread serves all VMs.
//
// Security: the guest is hostile. The multiplexer bounds what one VM can make the host hold
// (streams × window, and a socket per stream); a VM that breaks the protocol loses its
// channel, nobody else's. The stream cap is the session's share of control-plane connections
// (server.max_connections_per_session), not the guest's own, higher cap: the control plane
// closes a connection past the share at once, but the relay's socket to it lives until the
// guest closes its end, so under the guest's cap a flooding VM could make the host hold hundreds
// of sockets that no descriptor budget counts. Past the share the guest's stream is reset.
class VmRelay {
 public:
  explicit VmRelay(size_t max_streams);
  ~VmRelay();
  VmRelay(const VmRelay&) = delete;
  VmRelay& operator=(const VmRelay&) = delete;

  // Starts relaying for VM `id` (replacing an earlier relay of the same id): connects to
  // `vm_socket` (QEMU's chardev) and relays streams to `control_socket`.
  Status Attach(const std::string& id, const std::string& vm_socket,
                const std::string& control_socket);
  // Stops relaying for `id`; nothing if there is no such relay.
  void Detach(const std::string& id);
  // How many VMs are relayed.
  size_t size() const;

 private:
  void Loop();

  mutable std::mutex mu_;
  std::map<std::string, std::unique_ptr<init::Mux>> muxes_;
  std::unordered_map<init::Mux*, std::string> ids_;
  const size_t max_streams_;
  int epoll_ = -1;
  int wake_ = -1;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace airlock::sandbox
