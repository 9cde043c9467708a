#include "reporter.h"

#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

namespace airlock::init {
namespace {

// One attempt's outcome: done, worth retrying, or final.
struct Attempt {
  enum Kind { kOk, kRetry, kFinal } kind;
  std::string reason;
};

void SetTimeouts(int fd, int64_t ms) {
  ms = std::max<int64_t>(ms, 1);
  timeval tv{static_cast<time_t>(ms / 1000), static_cast<suseconds_t>((ms % 1000) * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

Attempt PostOnce(const std::string& socket_path, const std::string& request, int64_t timeout_ms) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(addr.sun_path)) {
    return {Attempt::kFinal, "socket path too long: " + socket_path};
  }
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    return {Attempt::kRetry, ErrnoMessage("socket", errno)};
  }
  // The timeouts also bound connect(), which waits while the server's backlog is full.
  SetTimeouts(fd.get(), timeout_ms);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return {Attempt::kRetry, ErrnoMessage("connect " + socket_path, errno)};
  }
  for (size_t sent = 0; sent < request.size();) {
    ssize_t n = ::send(fd.get(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return {Attempt::kRetry, ErrnoMessage("send", errno)};
    }
    sent += static_cast<size_t>(n);
  }
  // Only the status line matters.
  std::string response;
  char buf[512];
  while (response.find("\r\n") == std::string::npos && response.size() < 4096) {
    ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      return {Attempt::kRetry, ErrnoMessage("reading the response", errno)};
    }
    if (n == 0) {
      break;
    }
    response.append(buf, static_cast<size_t>(n));
  }
  // "HTTP/1.1 202 Accepted"
  int status = 0;
  std::string_view line = response;
  const char* code = line.data() + 9;
  if (!line.starts_with("HTTP/1.") || line.size() < 12 || line[8] != ' ' ||
      std::from_chars(code, code + 3, status).ptr != code + 3) {
    return {Attempt::kRetry, "no HTTP status line in the response"};
  }
  if (status >= 200 && status < 300) {
    return {Attempt::kOk, {}};
  }
  std::string reason = "the control plane answered " + std::to_string(status);
  return {status >= 500 ? Attempt::kRetry : Attempt::kFinal, reason};
}

}  // namespace

std::string JsonEscape(std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(text.size());
  for (char ch : text) {
    auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 0xf];
        } else {
          out += ch;
        }
    }
  }
  return out;
}

std::string SignalName(int sig) {
  const char* abbrev = ::sigabbrev_np(sig);
  return abbrev != nullptr ? std::string("SIG") + abbrev : "SIG" + std::to_string(sig);
}

std::string ExitEventJson(const AgentExit& exit) {
  std::string data;
  if (exit.signal != 0) {
    data = "\"signal\":" + std::to_string(exit.signal) + ",\"signal_name\":\"" +
           JsonEscape(SignalName(exit.signal)) +
           "\",\"oom_killed\":" + (exit.oom_killed ? "true" : "false");
  } else {
    data = "\"exit_code\":" + std::to_string(exit.exit_code);
    if (!exit.error.empty()) {
      data += ",\"error\":\"" + JsonEscape(exit.error) + "\"";
    }
  }
  return "{\"type\":\"agent.exited\",\"data\":{" + data + "}}";
}

Status PostEvent(const std::string& socket_path, const std::string& token, const std::string& json,
                 int64_t budget_ms) {
  std::string request =
      "POST /sandbox/v1/events HTTP/1.1\r\n"
      "Host: airlock\r\n"
      "Authorization: Bearer " +
      token +
      "\r\n"
      "Content-Type: application/json\r\n"
      "Content-Length: " +
      std::to_string(json.size()) +
      "\r\n"
      "Connection: close\r\n"
      "\r\n" +
      json;
  const int64_t deadline = MonotonicMs() + budget_ms;
  int64_t backoff = 100;
  for (int attempt = 1;; ++attempt) {
    Attempt result = PostOnce(socket_path, request, deadline - MonotonicMs());
    if (result.kind == Attempt::kOk) {
      return {};
    }
    if (result.kind == Attempt::kFinal) {
      return Fail("reporting the agent's exit: " + result.reason);
    }
    int64_t now = MonotonicMs();
    if (now + backoff >= deadline) {
      return Fail("reporting the agent's exit: " + result.reason + "; gave up after " +
                  std::to_string(attempt) + " attempts");
    }
    if (attempt == 1) {
      Log("reporting the agent's exit: " + result.reason + "; retrying");
    }
    SleepMs(backoff);
    backoff = std::min<int64_t>(backoff * 2, 1000);
  }
}

}  // namespace airlock::init
