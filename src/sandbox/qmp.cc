#include "sandbox/qmp.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace airlock::sandbox {

// One connection; every read and write waits at most until the deadline.
class QmpSession::Connection {
 public:
  using Clock = std::chrono::steady_clock;
  Connection(int fd, Clock::time_point deadline) : fd_(fd), deadline_(deadline) {}
  ~Connection() { ::close(fd_); }

  // `pass_fd` >= 0 goes along with the line's first byte.
  Status Send(const std::string& line, int pass_fd = -1) {
    std::string data = line + "\r\n";
    size_t done = 0;
    while (done < data.size()) {
      AIRLOCK_TRY(Wait(POLLOUT));
      iovec iov{data.data() + done, data.size() - done};
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
      if (pass_fd >= 0 && done == 0) {
        msg.msg_control = control;
        msg.msg_controllen = sizeof(control);
        cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int));
        std::memcpy(CMSG_DATA(cmsg), &pass_fd, sizeof(int));
      }
      ssize_t n = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Errorf(ErrorCode::kUnavailable, "qmp write: {}", std::strerror(errno));
      done += static_cast<size_t>(n);
    }
    return Ok();
  }

  // The next message that is not an event.
  Result<Json> Reply() {
    for (;;) {
      AIRLOCK_ASSIGN_OR_RETURN(std::string line, Line());
      auto msg = ParseJson(line);
      if (!msg || !msg->is_object()) {
        return Errorf(ErrorCode::kUnavailable, "qmp: not a JSON object: {}", line.substr(0, 200));
      }
      if (!msg->contains("event")) return *msg;
    }
  }

 private:
  Status Wait(short events) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - Clock::now());
    if (left.count() <= 0) return MakeError(ErrorCode::kDeadlineExceeded, "qmp: timed out");
    pollfd p{fd_, events, 0};
    int r = ::poll(&p, 1, static_cast<int>(left.count()));
    if (r == 0) return MakeError(ErrorCode::kDeadlineExceeded, "qmp: timed out");
    if (r < 0 && errno != EINTR)
      return Errorf(ErrorCode::kUnavailable, "qmp poll: {}", std::strerror(errno));
    return Ok();
  }

  Result<std::string> Line() {
    for (;;) {
      if (size_t nl = buf_.find('\n'); nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      if (buf_.size() > (1 << 20)) return MakeError(ErrorCode::kUnavailable, "qmp: line too long");
      AIRLOCK_TRY(Wait(POLLIN));
      char chunk[4096];
      ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) return MakeError(ErrorCode::kUnavailable, "qmp: connection closed");
      buf_.append(chunk, static_cast<size_t>(n));
    }
  }

  int fd_;
  Clock::time_point deadline_;
  std::string buf_;
};

QmpSession::QmpSession(std::unique_ptr<Connection> c) : conn_(std::move(c)) {}
QmpSession::QmpSession(QmpSession&&) noexcept = default;
QmpSession& QmpSession::operator=(QmpSession&&) noexcept = default;
QmpSession::~QmpSession() = default;

Result<QmpSession> QmpSession::Connect(const std::string& socket_path,
                                       std::chrono::milliseconds timeout) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(addr.sun_path)) {
    return Errorf(ErrorCode::kInternal, "qmp socket path too long: {}", socket_path);
  }
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Errorf(ErrorCode::kUnavailable, "socket: {}", std::strerror(errno));
  auto conn = std::make_unique<Connection>(fd, std::chrono::steady_clock::now() + timeout);
  // A Unix socket connects at once or not at all (EAGAIN: the backlog is full).
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return Errorf(ErrorCode::kUnavailable, "connect {}: {}", socket_path, std::strerror(errno));
  }
  AIRLOCK_ASSIGN_OR_RETURN(Json greeting, conn->Reply());
  if (!greeting.contains("QMP")) return MakeError(ErrorCode::kUnavailable, "qmp: no greeting");
  QmpSession session(std::move(conn));
  AIRLOCK_TRY(session.Execute("qmp_capabilities"));
  return session;
}

Result<Json> QmpSession::Execute(const std::string& command, const Json& arguments, int fd) {
  Json request = {{"execute", command}};
  if (!arguments.is_null()) request["arguments"] = arguments;
  AIRLOCK_TRY(conn_->Send(request.dump(), fd));
  AIRLOCK_ASSIGN_OR_RETURN(Json reply, conn_->Reply());
  if (reply.contains("error")) {
    const Json& e = reply["error"];
    return Errorf(ErrorCode::kUnavailable, "qmp {}: {}", command,
                  e.is_object() ? e.value("desc", e.dump()) : e.dump());
  }
  return reply.contains("return") ? reply["return"] : Json::object();
}

Result<Json> QmpExecute(const std::string& socket_path, const std::string& command,
                        std::chrono::milliseconds timeout) {
  AIRLOCK_ASSIGN_OR_RETURN(QmpSession session, QmpSession::Connect(socket_path, timeout));
  return session.Execute(command);
}

}  // namespace airlock::sandbox
