#pragma once

// Test support for the backend tests: a stand-in for the control plane on a session's
// socket, a busybox image tree, and waiting for a sandbox's state.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "sandbox/backend.h"

namespace airlock::sandbox {

// Plays the control plane on a sandbox's control.sock: answers airlock-init's request for
// its identity with `identity` (a JSON body), and everything else with 202, as the control
// plane does for init's exit report (without it init retries for seconds before it exits).
class FakeControlSocket {
 public:
  FakeControlSocket(const std::string& dir, std::string identity) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::string path = dir + "/control.sock";
    std::strncpy(a.sun_path, path.c_str(), sizeof(a.sun_path) - 1);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    ::listen(fd_, 16);
    thread_ = std::thread([this, identity = std::move(identity)] {
      for (int c; (c = ::accept(fd_, nullptr, nullptr)) >= 0; ::close(c)) {
        char buf[4096];
        timeval tv{1, 0};
        ::setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        std::string req;
        ssize_t n;
        while (req.find("\r\n\r\n") == std::string::npos && (n = ::read(c, buf, sizeof(buf))) > 0) {
          req.append(buf, static_cast<size_t>(n));
        }
        if (req.starts_with("POST /sandbox/v1/events ")) ++events_;
        // GET /hold: no answer, the connection kept open until the socket goes (a request in
        // flight for as long as a test needs one).
        if (req.starts_with("GET /hold ")) {
          held_.push_back(::dup(c));
          continue;
        }
        // GET /echo/<word>: <word> back, to show a request from the agent got through.
        std::string echo =
            req.starts_with("GET /echo/") ? req.substr(10, req.find(' ', 10) - 10) : "";
        std::string reply =
            !echo.empty()
                ? fmt::format(
                      "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                      echo.size(), echo)
            : req.starts_with("GET /sandbox/v1/identity ")
                ? fmt::format(
                      "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                      identity.size(), identity)
                : "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        [[maybe_unused]] auto w = ::write(c, reply.data(), reply.size());
      }
    });
  }
  ~FakeControlSocket() {
    ::shutdown(fd_, SHUT_RDWR);
    thread_.join();
    ::close(fd_);
    for (int h : held_) ::close(h);
  }

  // The events init posted (its report of the agent's exit).
  int events() const { return events_.load(); }

 private:
  int fd_ = -1;
  std::atomic<int> events_{0};
  std::thread thread_;
  std::vector<int> held_;  // GET /hold connections (the accept thread's until it ends)
};

// An image tree at `rootfs`: the host's static busybox with `applets` linked to it, the mount
// points the backends need, and the `sandbox` user (1000).
inline void MakeBusyboxRootfs(const std::string& rootfs,
                              std::initializer_list<const char*> applets) {
  namespace fs = std::filesystem;
  for (const char* d :
       {"/bin", "/.airlock", "/proc", "/sys", "/dev", "/tmp", "/run", "/home/sandbox", "/etc"}) {
    fs::create_directories(rootfs + d);
  }
  fs::copy_file("/bin/busybox", rootfs + "/bin/busybox");
  for (const char* applet : applets) fs::create_symlink("busybox", rootfs + "/bin/" + applet);
  std::ofstream(rootfs + "/etc/passwd")
      << "root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000::/home/sandbox:/bin/sh\n";
  std::ofstream(rootfs + "/etc/group") << "root:x:0:\nsandbox:x:1000:\n";
}

// What the sandbox `h` has written so far ("" when it cannot be read).
inline std::string SandboxLog(Backend& backend, const std::string& h) {
  auto l = backend.Logs(h, 0, 1 << 20);
  return l ? *l : "";
}

// Polls Inspect every `poll_ms` until `h` is in state `want`, at most `timeout_ms` (which only
// bounds a hang); a test failure naming the last state and the log otherwise.
inline SandboxStatus WaitForState(Backend& backend, const std::string& h, SandboxState want,
                                  int timeout_ms, int poll_ms) {
  SandboxStatus st;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    auto s = backend.Inspect(h);
    EXPECT_TRUE(s.has_value()) << s.error().message;
    if (s) st = *s;
    if (st.state == want) return st;
    std::this_thread::sleep_for(std::chrono::milliseconds(poll_ms));
  }
  ADD_FAILURE() << "sandbox never reached state " << SandboxStateName(want)
                << "; last: " << SandboxStateName(st.state) << " logs: " << SandboxLog(backend, h);
  return st;
}

}  // namespace airlock::sandbox
