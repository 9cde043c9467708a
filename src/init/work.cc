#include "work.h"

#include <fcntl.h>
#include <sys/fsuid.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>

#include "channel.h"

namespace airlock::init {
namespace {

constexpr int kMaxAttempts = 20;  // ~15 s of backoff while the control plane cannot be reached
constexpr int64_t kFileTimeoutMs = 60'000;

// A strict reader of the JSON the control plane sends: objects, arrays, strings (every
// escape, surrogate pairs to UTF-8), numbers and literals, to a bounded depth.
class JsonReader {
 public:
  explicit JsonReader(std::string_view s) : s_(s) {}

  void Space() {
    while (!s_.empty() && (s_[0] == ' ' || s_[0] == '\n' || s_[0] == '\r' || s_[0] == '\t')) {
      s_.remove_prefix(1);
    }
  }
  bool Take(char c) {
    Space();
    if (s_.empty() || s_[0] != c) {
      return false;
    }
    s_.remove_prefix(1);
    return true;
  }
  bool Peek(char c) {
    Space();
    return !s_.empty() && s_[0] == c;
  }
  bool AtEnd() {
    Space();
    return s_.empty();
  }
  // A literal (true, false, null) that ends there.
  bool Word(std::string_view w) {
    Space();
    if (!s_.starts_with(w) ||
        (s_.size() > w.size() && std::isalnum(static_cast<unsigned char>(s_[w.size()])))) {
      return false;
    }
    s_.remove_prefix(w.size());
    return true;
  }

  Result<std::string> String() {
    if (!Take('"')) {
      return Fail("expected a string");
    }
    std::string out;
    while (!s_.empty()) {
      char c = s_[0];
      s_.remove_prefix(1);
      if (c == '"') {
        return out;
      }
      if (static_cast<unsigned char>(c) < 0x20) {
        return Fail("a control character in a string");
      }
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (s_.empty()) {
        break;
      }
      char e = s_[0];
      s_.remove_prefix(1);
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out.push_back(e);
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'u': {
          auto cp = Hex4();
          if (!cp) {
            return Fail(cp.error());
          }
          uint32_t code = *cp;
          if (code >= 0xD800 && code <= 0xDBFF) {
            if (s_.size() < 2 || s_[0] != '\\' || s_[1] != 'u') {
              return Fail("a lone surrogate in a string");
            }
            s_.remove_prefix(2);
            auto low = Hex4();
            if (!low || *low < 0xDC00 || *low > 0xDFFF) {
              return Fail("a lone surrogate in a string");
            }
            code = 0x10000 + ((code - 0xD800) << 10) + (*low - 0xDC00);
          } else if (code >= 0xDC00 && code <= 0xDFFF) {
            return Fail("a lone surrogate in a string");
          }
          AppendUtf8(out, code);
          break;
        }
        default:
          return Fail("an unknown escape in a string");
      }
    }
    return Fail("an unterminated string");
  }

  // Any one value, discarded.
  Status Skip(int depth = 0) {
    if (depth > 32) {
      return Fail("nested too deeply");
    }
    Space();
    if (s_.empty()) {
      return Fail("expected a value");
    }
    if (s_[0] == '"') {
      auto s = String();
      return s ? Status{} : Fail(s.error());
    }
    if (s_[0] == '{' || s_[0] == '[') {
      const char close = s_[0] == '{' ? '}' : ']';
      const bool object = s_[0] == '{';
      s_.remove_prefix(1);
      if (Take(close)) {
        return {};
      }
      do {
        if (object) {
          if (auto key = String(); !key || !Take(':')) {
            return Fail("expected a member");
          }
        }
        if (auto v = Skip(depth + 1); !v) {
          return v;
        }
      } while (Take(','));
      return Take(close) ? Status{} : Fail("expected , or the end of a container");
    }
    size_t n = 0;
    while (n < s_.size() && std::strchr("-+.eE0123456789truefalsn", s_[n]) != nullptr) {
      ++n;
    }
    if (n == 0) {
      return Fail("expected a value");
    }
    s_.remove_prefix(n);
    return {};
  }

 private:
  Result<uint32_t> Hex4() {
    if (s_.size() < 4) {
      return Fail("a short \\u escape");
    }
    uint32_t v = 0;
    auto [end, ec] = std::from_chars(s_.data(), s_.data() + 4, v, 16);
    if (ec != std::errc() || end != s_.data() + 4) {
      return Fail("a bad \\u escape");
    }
    s_.remove_prefix(4);
    return v;
  }

  static void AppendUtf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  std::string_view s_;
};

// Walks the top-level object of `json`, calling `on_member(name, reader)` for each member; the
// callback consumes the member's value.
template <typename F>
Status ForEachMember(JsonReader& r, F&& on_member) {
  if (!r.Take('{')) {
    return Fail("expected a JSON object");
  }
  if (r.Take('}')) {
    return {};
  }
  do {
    auto name = r.String();
    if (!name || !r.Take(':')) {
      return Fail("expected a member");
    }
    if (auto s = on_member(*name); !s) {
      return s;
    }
  } while (r.Take(','));
  return r.Take('}') ? Status{} : Fail("expected , or }");
}

// Reads the whole object `json`, handing the value of its member `key` to `read_value` (which
// consumes it) and skipping the others.
template <typename F>
Status ReadMember(std::string_view json, std::string_view key, F&& read_value) {
  JsonReader r(json);
  auto walked = ForEachMember(
      r, [&](const std::string& name) -> Status { return name == key ? read_value(r) : r.Skip(); });
  if (!walked) {
    return Fail(walked.error());
  }
  if (!r.AtEnd()) {
    return Fail("text after the JSON object");
  }
  return {};
}

std::string GetRequest(std::string_view path, const std::string& token) {
  std::string req = "GET ";
  req += path;
  req += " HTTP/1.1\r\nHost: airlock\r\nAuthorization: Bearer ";
  req += token;
  req += "\r\nConnection: close\r\n\r\n";
  return req;
}

// One GET of a small JSON answer, retried while the control plane cannot be reached. An
// answer of 404 is "" (a control plane that does not serve the route has nothing to give).
Result<std::string> GetJson(const std::string& socket_path, std::string_view path,
                            const std::string& token) {
  const std::string request = GetRequest(path, token);
  int64_t backoff = 50;
  for (int attempt = 1;; ++attempt) {
    Exchange ex = ExchangeOnce(socket_path, request, 10'000, kMaxWorkBytes);
    if (ex.kind == Exchange::kOk) {
      return ex.body;
    }
    if (ex.status == 404) {
      return std::string();
    }
    if (ex.kind == Exchange::kFinal || attempt == kMaxAttempts) {
      return Fail("GET " + std::string(path) + ": " + ex.reason);
    }
    SleepMs(backoff);
    backoff = std::min<int64_t>(backoff * 2, 1000);
  }
}

// A file name as it goes into a URL path: RFC 3986 unreserved characters as they are.
std::string PercentEncode(std::string_view name) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : name) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

// Streams the body of a 200 answer on `fd` into `out`: headers first (bounded), then exactly
// Content-Length bytes.
Status ReceiveFile(int fd, int out) {
  std::string head;
  char buf[16 * 1024];
  size_t end;
  while ((end = head.find("\r\n\r\n")) == std::string::npos) {
    if (head.size() > 16 * 1024) {
      return Fail("the answer's headers are too long");
    }
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return Fail(n == 0 ? "the answer ended early" : ErrnoMessage("recv", errno));
    }
    head.append(buf, static_cast<size_t>(n));
  }
  if (!head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200")) {
    return Fail("the control plane answered " + head.substr(9, 3));
  }
  std::string lower = head.substr(0, end);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  size_t at = lower.find("\r\ncontent-length:");
  if (at == std::string::npos) {
    return Fail("the answer has no Content-Length");
  }
  const char* p = lower.data() + at + 17;
  while (*p == ' ') {
    ++p;
  }
  uint64_t length = 0;
  if (std::from_chars(p, lower.data() + lower.size(), length).ec != std::errc()) {
    return Fail("a bad Content-Length");
  }
  std::string_view first = std::string_view(head).substr(end + 4);
  uint64_t got = std::min<uint64_t>(first.size(), length);
  if (!WriteAll(out, first.data(), got)) {
    return FailErrno("write", errno);
  }
  while (got < length) {
    ssize_t n = ::recv(fd, buf, std::min<uint64_t>(sizeof(buf), length - got), 0);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return Fail(n == 0 ? "the answer ended early" : ErrnoMessage("recv", errno));
    }
    if (!WriteAll(out, buf, static_cast<size_t>(n))) {
      return FailErrno("write", errno);
    }
    got += static_cast<uint64_t>(n);
  }
  return {};
}

// Runs `fn` with the file-system uid and gid of the agent, and back.
template <typename F>
auto AsAgent(uid_t uid, gid_t gid, F&& fn) {
  const uid_t old_uid = static_cast<uid_t>(::setfsuid(uid));
  const gid_t old_gid = static_cast<gid_t>(::setfsgid(gid));
  auto result = fn();
  ::setfsgid(old_gid);
  ::setfsuid(old_uid);
  return result;
}

Status CopyOne(const std::string& socket_path, const std::string& token, const std::string& dir,
               const std::string& name, uid_t uid, gid_t gid) {
  // A hidden temporary beside the file, renamed over it once complete: the agent never sees
  // half a file. O_NOFOLLOW and O_EXCL: nothing in the directory redirects the write.
  static int counter = 0;
  const std::string tmp = dir + "/.airlock-in-" + std::to_string(++counter);
  const std::string final_path = dir + "/" + name;
  UniqueFd out(AsAgent(uid, gid, [&] {
    return ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  }));
  if (!out.valid()) {
    return FailErrno("create " + final_path, errno);
  }
  auto sent =
      SendRequest(socket_path, GetRequest("/sandbox/v1/work/files/" + PercentEncode(name), token),
                  kFileTimeoutMs);
  Status got = sent ? ReceiveFile(sent->get(), out.get()) : Fail(sent.error());
  if (got && ::fsync(out.get()) != 0) {
    got = FailErrno("fsync", errno);
  }
  out.Reset();
  if (got) {
    const int renamed =
        AsAgent(uid, gid, [&] { return ::rename(tmp.c_str(), final_path.c_str()); });
    if (renamed != 0) {
      got = FailErrno("rename to " + final_path, errno);
    }
  }
  if (!got) {
    AsAgent(uid, gid, [&] { return ::unlink(tmp.c_str()); });
  }
  return got;
}

}  // namespace

Result<EnvVars> ParseStringMap(std::string_view json, std::string_view key) {
  EnvVars out;
  auto read = ReadMember(json, key, [&](JsonReader& r) -> Status {
    if (r.Peek('n')) {
      return r.Skip();  // null: none
    }
    return ForEachMember(r, [&](const std::string& var) -> Status {
      auto value = r.String();
      if (!value) {
        return Fail("\"" + std::string(key) + "\" holds a value that is not a string");
      }
      out.emplace_back(var, std::move(*value));
      return {};
    });
  });
  if (!read) {
    return Fail(read.error());
  }
  return out;
}

Result<bool> ParseFlag(std::string_view json, std::string_view key) {
  bool value = false;
  auto read = ReadMember(json, key, [&](JsonReader& r) -> Status {
    if (r.Word("true")) {
      value = true;
    } else if (!r.Word("false") && !r.Word("null")) {
      return Fail("\"" + std::string(key) + "\" is not true or false");
    }
    return {};
  });
  if (!read) {
    return Fail(read.error());
  }
  return value;
}

Result<std::string> ParseString(std::string_view json, std::string_view key) {
  std::string value;
  auto read = ReadMember(json, key, [&](JsonReader& r) -> Status {
    if (r.Word("null")) {
      return {};
    }
    auto s = r.String();
    if (!s) {
      return Fail("\"" + std::string(key) + "\" is not a string");
    }
    value = std::move(*s);
    return {};
  });
  if (!read) {
    return Fail(read.error());
  }
  return value;
}

Result<std::vector<std::string>> ParseFileNames(std::string_view json) {
  std::vector<std::string> names;
  auto read = ReadMember(json, "files", [&](JsonReader& r) -> Status {
    if (!r.Take('[')) {
      return Fail("\"files\" is not an array");
    }
    if (r.Take(']')) {
      return {};
    }
    do {
      bool named = false;
      auto file = ForEachMember(r, [&](const std::string& member) -> Status {
        if (member != "name") {
          return r.Skip();
        }
        auto value = r.String();
        if (!value) {
          return Fail("a file's \"name\" is not a string");
        }
        names.push_back(std::move(*value));
        named = true;
        return {};
      });
      if (!file) {
        return file;
      }
      if (!named) {
        return Fail("a file without a \"name\"");
      }
    } while (r.Take(','));
    return r.Take(']') ? Status{} : Fail("expected , or ]");
  });
  if (!read) {
    return Fail(read.error());
  }
  return names;
}

Result<SessionWork> ParseWork(std::string_view json) {
  auto env = ParseStringMap(json, "env");
  if (!env) {
    return Fail(env.error());
  }
  auto files = ParseFileNames(json);
  if (!files) {
    return Fail(files.error());
  }
  auto egress = ParseFlag(json, "egress");
  if (!egress) {
    return Fail(egress.error());
  }
  auto ca = ParseString(json, "ca");
  if (!ca) {
    return Fail(ca.error());
  }
  return SessionWork{std::move(*env), std::move(*files), *egress, std::move(*ca)};
}

Result<std::string> WriteCaBundle(const std::string& ca_pem, const std::string& dir) {
  std::string bundle;
  // Debian and Alpine, Fedora and RHEL, then what some minimal images carry.
  for (const char* path : {"/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
                           "/etc/ssl/cert.pem"}) {
    UniqueFd in(::open(path, O_RDONLY | O_CLOEXEC));
    if (!in.valid()) {
      continue;
    }
    char buf[16384];
    for (ssize_t n; (n = ::read(in.get(), buf, sizeof(buf))) > 0;) {
      bundle.append(buf, static_cast<size_t>(n));
    }
    break;
  }
  if (!bundle.empty() && bundle.back() != '\n') {
    bundle += '\n';
  }
  bundle += ca_pem;
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return FailErrno("mkdir " + dir, errno);
  }
  std::string path = dir + "/ca-bundle.pem";
  UniqueFd out(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644));
  if (!out.valid()) {
    return FailErrno("open " + path, errno);
  }
  if (!WriteAll(out.get(), bundle.data(), bundle.size())) {
    return FailErrno("write " + path, errno);
  }
  return path;
}

Result<SessionWork> FetchWork(const std::string& socket_path, const std::string& token) {
  auto body = GetJson(socket_path, "/sandbox/v1/work", token);
  if (!body) {
    return Fail("taking the session's work: " + body.error());
  }
  if (body->empty()) {
    return SessionWork{};
  }
  auto work = ParseWork(*body);
  if (!work) {
    return Fail("the session's work: " + work.error());
  }
  return work;
}

int CopySessionFiles(const std::string& socket_path, const std::string& token,
                     const std::vector<std::string>& files, const std::string& dir, uid_t uid,
                     gid_t gid) {
  int copied = 0;
  for (const auto& name : files) {
    // The control plane only stores plain names; a path would be a bug there, not a reason
    // to write outside `dir`.
    if (name.empty() || name[0] == '.' || name.find('/') != std::string::npos) {
      Log("skipping the session file \"" + name.substr(0, 64) + "\": not a plain name");
      continue;
    }
    if (auto s = CopyOne(socket_path, token, dir, name, uid, gid); !s) {
      Log("warning: the session file " + name + " is not in " + dir + ": " + s.error());
      continue;
    }
    ++copied;
  }
  return copied;
}

std::vector<std::string> MergeEnvironment(const std::vector<std::string>& defaults,
                                          const std::vector<std::string>& image,
                                          const EnvVars& session,
                                          const std::vector<std::string>& reserved) {
  // The three first, then the rest in the order each name was first set.
  std::vector<std::string> out = reserved;
  auto named = [](std::string_view entry) {
    const size_t eq = entry.find('=');
    return eq == std::string_view::npos || eq == 0 ? std::string_view()
                                                   : entry.substr(0, eq + 1);  // "NAME="
  };
  auto set = [&](std::string_view entry) {
    const std::string_view name = named(entry);
    if (name.empty()) {
      return;
    }
    auto it = std::find_if(out.begin(), out.end(),
                           [&](const std::string& e) { return e.starts_with(name); });
    if (it == out.end()) {
      out.emplace_back(entry);
    } else if (it - out.begin() >= static_cast<std::ptrdiff_t>(reserved.size())) {
      *it = entry;  // a later source wins, except over the three
    }
  };
  for (const auto& e : defaults) {
    set(e);
  }
  for (const auto& e : image) {
    set(e);
  }
  for (const auto& [name, value] : session) {
    set(name + "=" + value);
  }
  return out;
}

}  // namespace airlock::init
