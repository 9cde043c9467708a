#pragma once

// Test support for the backend tests: a stand-in for the control plane on a session's socket.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

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
  }

  // The events init posted (its report of the agent's exit).
  int events() const { return events_.load(); }

 private:
  int fd_ = -1;
  std::atomic<int> events_{0};
  std::thread thread_;
};

}  // namespace airlock::sandbox
