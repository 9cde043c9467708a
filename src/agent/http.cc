#include "http.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

#include "clock.h"

namespace airlock::agent {
namespace {

constexpr size_t kMaxHeaderBytes = 64 * 1024;
constexpr size_t kMaxHeaders = 100;

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string ErrnoText(int err) { return std::strerror(err); }

using Unexpected = std::unexpected<HttpError>;
Unexpected Fail(HttpError::Kind kind, std::string message) {
  return Unexpected(HttpError{kind, std::move(message)});
}

// Waits until `fd` is ready for `events`; fails with a reason at the deadline.
std::expected<void, std::string> WaitReady(int fd, short events, int64_t deadline) {
  for (;;) {
    int64_t left = deadline - NowMs();
    if (left <= 0) return std::unexpected("timed out");
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 60'000)));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return std::unexpected(ErrnoText(errno));
    if (r > 0) return {};
  }
}

// One connection with a deadline for every operation on it.
class Conn {
 public:
  Conn(int fd, int64_t deadline) : fd_(fd), deadline_(deadline) {}
  ~Conn() {
    if (fd_ >= 0) ::close(fd_);
  }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  std::expected<void, std::string> Wait(short events) { return WaitReady(fd_, events, deadline_); }

  std::expected<void, std::string> WriteAll(const char* data, size_t size) {
    while (size > 0) {
      ssize_t n = ::send(fd_, data, size, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (auto w = Wait(POLLOUT); !w) return w;
        continue;
      }
      if (n <= 0) return std::unexpected(ErrnoText(errno));
      data += n;
      size -= static_cast<size_t>(n);
    }
    return {};
  }

  // Reads some bytes into the buffer; 0 at the peer's end of stream.
  std::expected<size_t, std::string> ReadSome() {
    char chunk[16384];
    for (;;) {
      ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (auto w = Wait(POLLIN); !w) return std::unexpected(w.error());
        continue;
      }
      if (n < 0) return std::unexpected(ErrnoText(errno));
      buf_.append(chunk, static_cast<size_t>(n));
      return static_cast<size_t>(n);
    }
  }

  std::string& buf() { return buf_; }

 private:
  int fd_;
  int64_t deadline_;
  std::string buf_;
};

std::expected<int, HttpError> Connect(const HttpUrl& url, int64_t deadline,
                                      int connect_timeout_ms) {
  // Numeric addresses need no resolver; "localhost" is answered here because a static binary
  // in an image without /etc/hosts or NSS modules cannot look it up.
  std::string host = url.host;
  if (host == "localhost") host = "127.0.0.1";
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  std::string port = std::to_string(url.port);
  int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0)
    return Fail(HttpError::Kind::kConnect, "cannot resolve " + host + ": " + ::gai_strerror(rc));
  std::string last = "no address";
  int64_t connect_deadline = std::min(deadline, NowMs() + connect_timeout_ms);
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) {
      last = ErrnoText(errno);
      continue;
    }
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
      ::freeaddrinfo(res);
      return fd;
    }
    if (errno == EINPROGRESS) {
      auto w = WaitReady(fd, POLLOUT, connect_deadline);
      int err = 0;
      socklen_t len = sizeof(err);
      if (w && ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) {
        ::freeaddrinfo(res);
        return fd;
      }
      last = w ? ErrnoText(err) : "connect timed out";
      ::close(fd);
      continue;
    }
    last = ErrnoText(errno);
    ::close(fd);
  }
  ::freeaddrinfo(res);
  return Fail(HttpError::Kind::kConnect,
              "cannot connect to " + url.host + ":" + port + ": " + last);
}

// Parses "HTTP/1.x NNN reason\r\nName: value\r\n...\r\n" (without the final blank line).
std::expected<HttpResponse, std::string> ParseHead(std::string_view head) {
  HttpResponse res;
  size_t eol = head.find("\r\n");
  std::string_view status_line = head.substr(0, eol);
  if (!status_line.starts_with("HTTP/1.") || status_line.size() < 12 || status_line[8] != ' ') {
    return std::unexpected("not an HTTP/1.x response");
  }
  int status = 0;
  auto [p, ec] = std::from_chars(status_line.data() + 9, status_line.data() + 12, status);
  if (ec != std::errc() || p != status_line.data() + 12 || status < 100 || status > 599) {
    return std::unexpected("bad status line");
  }
  res.status = status;
  size_t pos = eol == std::string_view::npos ? head.size() : eol + 2;
  while (pos < head.size()) {
    size_t end = head.find("\r\n", pos);
    if (end == std::string_view::npos) end = head.size();
    std::string_view line = head.substr(pos, end - pos);
    pos = end + 2;
    if (line.empty()) continue;
    size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0)
      return std::unexpected("malformed header line");
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t'))
      value.remove_prefix(1);
    while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
    res.headers.emplace_back(std::string(line.substr(0, colon)), std::string(value));
    if (res.headers.size() > kMaxHeaders) return std::unexpected("too many headers");
  }
  return res;
}

std::expected<uint64_t, std::string> ParseUint(std::string_view s, int base) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v, base);
  if (s.empty() || ec != std::errc() || p != s.data() + s.size())
    return std::unexpected("bad number");
  return v;
}

// Where body bytes go: a bounded string, or the sink descriptor.
class BodyOut {
 public:
  BodyOut(HttpResponse& res, int sink_fd, uint64_t max) : res_(res), sink_fd_(sink_fd), max_(max) {}
  std::expected<void, HttpError> Put(std::string_view data) {
    res_.body_bytes += data.size();
    if (sink_fd_ >= 0) {
      const char* p = data.data();
      size_t left = data.size();
      while (left > 0) {
        ssize_t n = ::write(sink_fd_, p, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0)
          return Fail(HttpError::Kind::kLocal, "writing the download: " + ErrnoText(errno));
        p += n;
        left -= static_cast<size_t>(n);
      }
      return {};
    }
    if (res_.body_bytes > max_) {
      return Fail(HttpError::Kind::kTransfer,
                  "response body exceeds " + std::to_string(max_) + " bytes");
    }
    res_.body.append(data);
    return {};
  }

 private:
  HttpResponse& res_;
  int sink_fd_;
  uint64_t max_;
};

}  // namespace

std::string HttpResponse::Header(std::string_view name) const {
  std::string want = Lower(name);
  for (const auto& [k, v] : headers) {
    if (Lower(k) == want) return v;
  }
  return {};
}

std::expected<HttpUrl, std::string> ParseHttpUrl(std::string_view url) {
  if (url.starts_with("https://")) {
    return std::unexpected(
        "https URLs are not supported by the sandbox-side client; the control plane is reached "
        "over the "
        "sandbox's own channel (http://127.0.0.1:PORT in an oci sandbox)");
  }
  if (!url.starts_with("http://"))
    return std::unexpected("not an http:// URL: " + std::string(url.substr(0, 64)));
  url.remove_prefix(7);
  size_t slash = url.find('/');
  std::string_view authority = url.substr(0, slash);
  HttpUrl out;
  out.path = slash == std::string_view::npos ? "/" : std::string(url.substr(slash));
  if (authority.empty() || authority.find('@') != std::string_view::npos) {
    return std::unexpected("URL without a host, or with credentials in it");
  }
  size_t colon = authority.rfind(':');
  bool bracketed = authority.front() == '[';
  if (colon != std::string_view::npos && (!bracketed || colon > authority.find(']'))) {
    auto port = ParseUint(authority.substr(colon + 1), 10);
    if (!port || *port == 0 || *port > 65535) return std::unexpected("bad port in URL");
    out.port = static_cast<int>(*port);
    authority = authority.substr(0, colon);
  }
  if (authority.empty()) return std::unexpected("URL without a host");
  out.host = std::string(authority);
  for (char c : out.path) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f)
      return std::unexpected("URL with spaces or control characters");
  }
  return out;
}

std::expected<HttpResponse, HttpError> HttpFetch(const HttpUrl& url, const HttpRequest& req,
                                                 const HttpOptions& options) {
  const int64_t deadline = NowMs() + options.timeout_ms;
  for (const auto& [k, v] : req.headers) {
    if ((k + v).find_first_of("\r\n") != std::string::npos)
      return Fail(HttpError::Kind::kLocal, "header with a line break");
  }
  if (req.target.empty() || req.target.front() != '/' ||
      req.target.find_first_of(" \r\n") != std::string::npos) {
    return Fail(HttpError::Kind::kLocal, "bad request target");
  }
  auto fd = Connect(url, deadline, options.connect_timeout_ms);
  if (!fd) return std::unexpected(fd.error());
  Conn conn(*fd, deadline);

  uint64_t body_size = req.body_fd >= 0 ? req.body_size : req.body.size();
  std::string head = req.method + " " + req.target + " HTTP/1.1\r\nHost: " + url.host +
                     (url.port == 80 ? "" : ":" + std::to_string(url.port)) +
                     "\r\nConnection: close\r\n";
  for (const auto& [k, v] : req.headers) head += k + ": " + v + "\r\n";
  if (body_size > 0 || req.method == "POST" || req.method == "PUT") {
    head += "Content-Length: " + std::to_string(body_size) + "\r\n";
  }
  head += "\r\n";
  // A failure while sending may still have reached the server (it answers as soon as it has
  // read the head, say with a 413): only "nothing connected" is kConnect.
  auto sent = conn.WriteAll(head.data(), head.size());
  if (sent && req.body_fd < 0) sent = conn.WriteAll(req.body.data(), req.body.size());
  if (sent && req.body_fd >= 0) {
    uint64_t left = body_size;
    char chunk[65536];
    while (sent && left > 0) {
      ssize_t n =
          ::read(req.body_fd, chunk, static_cast<size_t>(std::min<uint64_t>(left, sizeof(chunk))));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Fail(HttpError::Kind::kLocal, "reading the upload: " + ErrnoText(errno));
      if (n == 0)
        return Fail(HttpError::Kind::kLocal, "the file to upload shrank while it was sent");
      sent = conn.WriteAll(chunk, static_cast<size_t>(n));
      left -= static_cast<uint64_t>(n);
    }
  }
  // Even when sending failed, the server may have answered (and closed): read what is there.
  std::string send_error = sent ? "" : sent.error();

  std::string& buf = conn.buf();
  size_t head_end;
  while ((head_end = buf.find("\r\n\r\n")) == std::string::npos) {
    if (buf.size() > kMaxHeaderBytes)
      return Fail(HttpError::Kind::kTransfer, "response header too large");
    auto n = conn.ReadSome();
    if (!n || *n == 0) {
      std::string why = !send_error.empty() ? "sending the request: " + send_error
                        : !n                ? "reading the response: " + n.error()
                                            : "the server closed the connection without an answer";
      return Fail(HttpError::Kind::kTransfer, why);
    }
  }
  auto parsed = ParseHead(std::string_view(buf).substr(0, head_end));
  if (!parsed) return Fail(HttpError::Kind::kTransfer, "malformed response: " + parsed.error());
  HttpResponse res = std::move(*parsed);
  buf.erase(0, head_end + 4);

  const bool no_body =
      req.method == "HEAD" || res.status == 204 || res.status == 304 || res.status < 200;
  const bool to_sink = options.sink_fd >= 0 && res.status >= 200 && res.status < 300;
  BodyOut out(res, to_sink ? options.sink_fd : -1, options.max_body);
  if (no_body) return res;

  auto read_more = [&]() -> std::expected<void, HttpError> {
    auto n = conn.ReadSome();
    if (!n) return Fail(HttpError::Kind::kTransfer, "reading the response body: " + n.error());
    if (*n == 0)
      return Fail(HttpError::Kind::kTransfer,
                  "the connection closed in the middle of the response body");
    return {};
  };

  // Moves exactly `n` body bytes from the connection to `out`.
  auto copy_body = [&](uint64_t n) -> std::expected<void, HttpError> {
    while (n > 0) {
      if (buf.empty()) {
        if (auto r = read_more(); !r) return r;
      }
      size_t take = static_cast<size_t>(std::min<uint64_t>(n, buf.size()));
      if (auto r = out.Put(std::string_view(buf).substr(0, take)); !r) return r;
      buf.erase(0, take);
      n -= take;
    }
    return {};
  };

  if (Lower(res.Header("Transfer-Encoding")).find("chunked") != std::string::npos) {
    for (;;) {
      size_t eol;
      while ((eol = buf.find("\r\n")) == std::string::npos) {
        if (buf.size() > 1024) return Fail(HttpError::Kind::kTransfer, "malformed chunk size line");
        if (auto r = read_more(); !r) return std::unexpected(r.error());
      }
      std::string_view size_text = std::string_view(buf).substr(0, eol);
      size_text = size_text.substr(0, size_text.find(';'));
      auto size = ParseUint(size_text, 16);
      if (!size) return Fail(HttpError::Kind::kTransfer, "malformed chunk size");
      buf.erase(0, eol + 2);
      if (*size == 0) break;  // trailers, if any, are not needed: the connection closes
      if (auto r = copy_body(*size); !r) return std::unexpected(r.error());
      while (buf.size() < 2) {
        if (auto r = read_more(); !r) return std::unexpected(r.error());
      }
      if (buf.compare(0, 2, "\r\n") != 0)
        return Fail(HttpError::Kind::kTransfer, "malformed chunk end");
      buf.erase(0, 2);
    }
    return res;
  }

  std::string length_text = res.Header("Content-Length");
  if (!length_text.empty()) {
    auto length = ParseUint(length_text, 10);
    if (!length) return Fail(HttpError::Kind::kTransfer, "malformed Content-Length");
    if (!to_sink && *length > options.max_body) {
      return Fail(HttpError::Kind::kTransfer,
                  "response body exceeds " + std::to_string(options.max_body) + " bytes");
    }
    if (auto r = copy_body(*length); !r) return std::unexpected(r.error());
    return res;
  }

  // Neither: the body runs to the end of the connection.
  for (;;) {
    if (!buf.empty()) {
      if (auto r = out.Put(buf); !r) return std::unexpected(r.error());
      buf.clear();
    }
    auto n = conn.ReadSome();
    if (!n) return Fail(HttpError::Kind::kTransfer, "reading the response body: " + n.error());
    if (*n == 0) break;
  }
  return res;
}

}  // namespace airlock::agent
