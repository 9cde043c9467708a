#include "channel.h"

#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

namespace airlock::init {
namespace {

void SetTimeouts(int fd, int64_t ms) {
  ms = std::max<int64_t>(ms, 1);
  timeval tv{static_cast<time_t>(ms / 1000), static_cast<suseconds_t>((ms % 1000) * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

bool IdentityChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-';
}

void SkipSpace(std::string_view& s) {
  while (!s.empty() &&
         (s.front() == ' ' || s.front() == '\n' || s.front() == '\r' || s.front() == '\t')) {
    s.remove_prefix(1);
  }
}

// A string literal of identity characters at the front of `s`, consumed.
Result<std::string> TakeString(std::string_view& s) {
  SkipSpace(s);
  if (s.empty() || s.front() != '"') {
    return Fail("expected a string");
  }
  s.remove_prefix(1);
  size_t end = s.find('"');
  if (end == std::string_view::npos || end == 0 || end > 256 ||
      !std::all_of(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(end), IdentityChar)) {
    return Fail("expected a string of [A-Za-z0-9_-]");
  }
  std::string out(s.substr(0, end));
  s.remove_prefix(end + 1);
  return out;
}

bool TakeChar(std::string_view& s, char c) {
  SkipSpace(s);
  if (s.empty() || s.front() != c) {
    return false;
  }
  s.remove_prefix(1);
  return true;
}

}  // namespace

Result<UniqueFd> SendRequest(const std::string& socket_path, const std::string& request,
                             int64_t timeout_ms) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(addr.sun_path)) {
    return Fail("socket path too long: " + socket_path);
  }
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    return FailErrno("socket", errno);
  }
  // The timeouts also bound connect(), which waits while the server's backlog is full.
  SetTimeouts(fd.get(), timeout_ms);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return FailErrno("connect " + socket_path, errno);
  }
  for (size_t sent = 0; sent < request.size();) {
    ssize_t n = ::send(fd.get(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return FailErrno("send", errno);
    }
    sent += static_cast<size_t>(n);
  }
  return fd;
}

Exchange ExchangeOnce(const std::string& socket_path, const std::string& request,
                      int64_t timeout_ms, size_t max_body) {
  if (socket_path.size() >= sizeof(sockaddr_un::sun_path)) {
    return {Exchange::kFinal, 0, {}, "socket path too long: " + socket_path};
  }
  auto sent = SendRequest(socket_path, request, timeout_ms);
  if (!sent) {
    return {Exchange::kRetry, 0, {}, sent.error()};
  }
  UniqueFd fd = std::move(*sent);
  // The request says Connection: close, so the answer ends where the stream does.
  std::string response;
  char buf[4096];
  while (response.size() <= max_body + 16 * 1024) {
    ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      // A status line may already be in: it decides (a reply without a body to wait for).
      if (response.find("\r\n") == std::string::npos) {
        return {Exchange::kRetry, 0, {}, ErrnoMessage("reading the response", errno)};
      }
      break;
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
    return {Exchange::kRetry, 0, {}, "no HTTP status line in the response"};
  }
  Exchange out;
  out.status = status;
  if (size_t head = response.find("\r\n\r\n"); head != std::string::npos) {
    out.body = response.substr(head + 4, max_body);
  }
  if (status >= 200 && status < 300) {
    out.kind = Exchange::kOk;
  } else {
    out.kind = status >= 500 ? Exchange::kRetry : Exchange::kFinal;
    out.reason = "the control plane answered " + std::to_string(status);
  }
  return out;
}

Result<Identity> ParseIdentity(std::string_view json) {
  Identity id;
  std::string_view s = json;
  if (!TakeChar(s, '{')) {
    return Fail("the identity is not a JSON object");
  }
  for (int member = 0; member < 2; ++member) {
    if (member > 0 && !TakeChar(s, ',')) {
      return Fail("the identity must hold exactly \"session_id\" and \"token\"");
    }
    auto name = TakeString(s);
    if (!name || !TakeChar(s, ':')) {
      return Fail("the identity must hold exactly \"session_id\" and \"token\"");
    }
    auto value = TakeString(s);
    if (!value) {
      return Fail("the identity's \"" + *name + "\": " + value.error());
    }
    std::string* field = *name == "session_id" ? &id.session_id
                         : *name == "token"    ? &id.token
                                               : nullptr;
    if (field == nullptr || !field->empty()) {
      return Fail("the identity must hold exactly \"session_id\" and \"token\"");
    }
    *field = std::move(*value);
  }
  if (TakeChar(s, ',')) {
    auto name = TakeString(s);
    if (!name || *name != "work" || !TakeChar(s, ':')) {
      return Fail("the identity must hold exactly \"session_id\" and \"token\", then \"work\"");
    }
    // The rest is the work's object and the identity's closing brace.
    SkipSpace(s);
    while (!s.empty() && std::strchr(" \t\r\n", s.back()) != nullptr) {
      s.remove_suffix(1);
    }
    if (!s.starts_with('{') || !s.ends_with('}')) {
      return Fail("the identity's \"work\" is not a JSON object");
    }
    s.remove_suffix(1);
    id.work = std::string(s);
    return id;
  }
  SkipSpace(s);
  if (!TakeChar(s, '}') || (SkipSpace(s), !s.empty())) {
    return Fail("the identity must hold exactly \"session_id\" and \"token\"");
  }
  return id;
}

Result<Identity> FetchIdentity(const std::string& socket_path) {
  static const std::string kRequest =
      "GET /sandbox/v1/identity HTTP/1.1\r\n"
      "Host: airlock\r\n"
      "Connection: close\r\n"
      "\r\n";
  int64_t backoff = 50;
  for (int attempt = 1;; ++attempt) {
    Exchange ex = ExchangeOnce(socket_path, kRequest, 10'000, kMaxWorkBytes + 1024);
    if (ex.kind == Exchange::kOk && ex.status == 204) {
      // A warm pool's sandbox that no session has claimed yet: the control plane held the
      // request a while. Ask again at once, so that a claim is answered without delay.
      backoff = 50;
      continue;
    }
    if (ex.kind == Exchange::kOk) {
      return ParseIdentity(ex.body);
    }
    if (ex.kind == Exchange::kFinal) {
      return Fail("taking the session's identity: " + ex.reason + ": " + ex.body.substr(0, 256));
    }
    // Once, and then now and then: a sandbox that waits long should say why in its log.
    if (attempt == 1 || attempt % 60 == 0) {
      Log("waiting for the session's identity: " + ex.reason);
    }
    SleepMs(backoff);
    backoff = std::min<int64_t>(backoff * 2, 1000);
  }
}

}  // namespace airlock::init
