#include "sandbox_client.h"

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <random>

#include "clock.h"

extern char** environ;

namespace airlock::agent {
namespace {

constexpr int kMaxAmbiguousChats = 5;

std::unexpected<ClientError> Err(ClientError::Kind kind, std::string message, int status = 0,
                                 std::string code = "") {
  return std::unexpected(ClientError{kind, status, std::move(code), std::move(message)});
}

// The API's error shape, or the start of whatever else came back.
std::pair<std::string, std::string> ErrorOf(const HttpResponse& res) {
  auto j = Json::parse(res.body, nullptr, false);
  if (j.is_object() && j.contains("error") && j["error"].is_object()) {
    const Json& e = j["error"];
    return {e.value("code", std::string("unknown")),
            e.value("message", std::string("(no message)"))};
  }
  return {"", "HTTP " + std::to_string(res.status) +
                  (res.body.empty() ? "" : ": " + res.body.substr(0, 200))};
}

bool Retryable(int status) {
  return status == 429 || status == 502 || status == 503 || status == 504;
}

}  // namespace

std::string ClientError::ToString() const {
  std::string out = message;
  if (status != 0)
    out += " (HTTP " + std::to_string(status) + (code.empty() ? "" : ", " + code) + ")";
  return out;
}

SandboxClient::SandboxClient(std::string control_plane_url, std::string token,
                             std::string session_id, ClientOptions options)
    : token_(std::move(token)), session_id_(std::move(session_id)), options_(options) {
  if (auto u = ParseHttpUrl(control_plane_url)) {
    base_ = std::move(*u);
    while (base_.path.size() > 1 && base_.path.back() == '/') base_.path.pop_back();
    if (base_.path == "/") base_.path.clear();
  }
}

std::expected<SandboxClient, std::string> SandboxClient::FromEnvironment(ClientOptions options) {
  std::string id, token, url;
  std::vector<char*> originals;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view entry = *e;
    if (entry.starts_with("SESSION_ID=")) {
      id = entry.substr(11);
    } else if (entry.starts_with("SESSION_TOKEN=")) {
      token = entry.substr(14);
    } else if (entry.starts_with("CONTROL_PLANE_URL=")) {
      url = entry.substr(18);
    } else {
      continue;
    }
    originals.push_back(*e);
  }
  ::unsetenv("SESSION_ID");
  ::unsetenv("SESSION_TOKEN");
  ::unsetenv("CONTROL_PLANE_URL");
  // unsetenv only drops libc's pointers; the kernel serves /proc/<pid>/environ from the
  // strings the process started with. Zero those (the value only: the name stays harmless).
  for (char* s : originals) {
    char* eq = std::strchr(s, '=');
    if (eq != nullptr) ::explicit_bzero(eq + 1, std::strlen(eq + 1));
  }
  // The token now lives only in this process's memory. Non-dumpable: /proc/<pid>/{environ,
  // mem,...} belong to root and ptrace is refused, so a tool the agent runs as the same user
  // cannot read it out.
  ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  if (id.empty()) return std::unexpected("SESSION_ID is not set: run me inside an Airlock sandbox");
  if (token.empty())
    return std::unexpected("SESSION_TOKEN is not set: run me inside an Airlock sandbox");
  if (url.empty())
    return std::unexpected("CONTROL_PLANE_URL is not set: run me inside an Airlock sandbox");
  if (auto u = ParseHttpUrl(url); !u) return std::unexpected("CONTROL_PLANE_URL: " + u.error());
  return SandboxClient(std::move(url), std::move(token), std::move(id), options);
}

void SandboxClient::Backoff(int attempt, const std::string& why) {
  static thread_local std::minstd_rand rng(static_cast<unsigned>(NowMs()) ^
                                           static_cast<unsigned>(::getpid()));
  int64_t base = std::min<int64_t>(250LL << std::min(attempt, 5), 5'000);
  int64_t delay = base / 2 + static_cast<int64_t>(rng() % static_cast<unsigned>(base / 2 + 1));
  if (on_retry) on_retry(why + "; retrying in " + std::to_string(delay) + " ms");
  SleepMs(delay);
}

ClientResult<HttpResponse> SandboxClient::Once(const Call& call, HttpError* transport) {
  HttpRequest req;
  req.method = call.method;
  req.target = base_.path + call.path;
  req.headers.emplace_back("Authorization", "Bearer " + token_);
  req.headers.emplace_back("Accept", "application/json");
  if (call.body) {
    req.body = call.body->dump(-1, ' ', false, Json::error_handler_t::replace);
    req.headers.emplace_back("Content-Type", "application/json");
  }
  HttpOptions o;
  o.timeout_ms = call.timeout_ms > 0 ? call.timeout_ms : options_.request_timeout_ms;
  auto res = HttpFetch(base_, req, o);
  if (!res) {
    *transport = res.error();
    return Err(ClientError::Kind::kUnreachable, "control plane: " + res.error().message);
  }
  return std::move(*res);
}

ClientResult<HttpResponse> SandboxClient::Send(const Call& call, bool* ambiguous) {
  if (base_.host.empty()) return Err(ClientError::Kind::kLocal, "no usable CONTROL_PLANE_URL");
  const int64_t deadline = NowMs() + options_.retry_deadline_ms;
  for (int attempt = 0;; ++attempt) {
    HttpError transport;
    auto res = Once(call, &transport);
    std::string why;
    if (!res) {
      if (transport.kind == HttpError::Kind::kLocal)
        return Err(ClientError::Kind::kLocal, transport.message);
      if (ambiguous != nullptr && transport.kind == HttpError::Kind::kTransfer) {
        *ambiguous = true;
        return std::unexpected(res.error());
      }
      why = res.error().message;
    } else if (res->status < 400) {
      return res;
    } else {
      auto [code, message] = ErrorOf(*res);
      // A 502 or 504 without the API's error shape comes from a proxy between the sandbox
      // and the control plane (a load balancer in front of replicas): it may have forwarded
      // the request to a replica that died before answering. Whether the call was carried
      // out is then unknown, as after a broken connection.
      if (ambiguous != nullptr && code.empty() && (res->status == 502 || res->status == 504)) {
        *ambiguous = true;
        return Err(ClientError::Kind::kUnreachable,
                   call.method + " " + call.path.substr(0, call.path.find('?')) +
                       ": a proxy lost the answer: " + message,
                   res->status);
      }
      bool again = Retryable(res->status);
      if (!again) {
        // 410: the session ended while the request was on its way (an upload, a long-poll).
        ClientError::Kind kind = res->status == 401 || res->status == 410
                                     ? ClientError::Kind::kSessionOver
                                 : res->status == 402 ? ClientError::Kind::kBudget
                                 : res->status < 500  ? ClientError::Kind::kRejected
                                                      : ClientError::Kind::kServer;
        return Err(kind,
                   call.method + " " + call.path.substr(0, call.path.find('?')) + ": " + message,
                   res->status, code);
      }
      why = call.method + " " + call.path.substr(0, call.path.find('?')) + ": " + message +
            " (HTTP " + std::to_string(res->status) + ")";
      if (NowMs() >= deadline) {
        return Err(ClientError::Kind::kServer, why, res->status, code);
      }
    }
    if (NowMs() >= deadline) {
      return Err(
          ClientError::Kind::kUnreachable,
          why + " (gave up after " + std::to_string(options_.retry_deadline_ms / 1000) + " s)");
    }
    Backoff(attempt, why);
  }
}

ClientResult<Json> SandboxClient::SendJson(const Call& call) {
  auto res = Send(call);
  if (!res) return std::unexpected(res.error());
  if (res->status == 204 || res->body.empty()) return Json::object();
  auto j = Json::parse(res->body, nullptr, false);
  if (j.is_discarded())
    return Err(ClientError::Kind::kServer, call.path + ": the answer is not JSON", res->status);
  return j;
}

ClientResult<std::vector<Json>> SandboxClient::Inbox(int wait_s) {
  wait_s = std::clamp(wait_s, 0, 300);
  Call c{"GET", "/sandbox/v1/inbox?wait=" + std::to_string(wait_s), std::nullopt,
         (wait_s + 30) * 1000};
  std::vector<Json> out;
  for (int round = 0;; ++round) {
    bool ambiguous = false;
    auto res = Send(c, &ambiguous);
    if (res) {
      auto j = res->status == 204 || res->body.empty() ? Json::object()
                                                       : Json::parse(res->body, nullptr, false);
      if (j.is_discarded())
        return Err(ClientError::Kind::kServer, "/sandbox/v1/inbox: the answer is not JSON",
                   res->status);
      if (j.contains("messages") && j["messages"].is_array()) {
        for (auto& m : j["messages"]) out.push_back(m);
      }
      break;
    }
    if (!ambiguous || round >= kMaxAmbiguousChats) return std::unexpected(res.error());
    // The answer was lost; the control plane may have handed the messages over (and
    // appended them to the conversation) all the same. They are then in the history.
    auto j = SendJson(Call{"GET", "/sandbox/v1/history", std::nullopt, 0});
    if (!j) return std::unexpected(j.error());
    const Json& server = (*j)["messages"];
    if (server.is_array() && server.size() > sent_) {
      for (size_t i = sent_; i < server.size(); ++i) {
        if (server[i].is_object() && server[i].value("role", "") == "user")
          out.push_back(server[i]);
      }
      if (!out.empty()) break;
    }
    Backoff(round, "inbox: " + res.error().message);
  }
  // Taking them appended them to the conversation on the control plane's side.
  for (const auto& m : out) {
    history_.insert(history_.begin() + static_cast<std::ptrdiff_t>(sent_), m);
    ++sent_;
  }
  return out;
}

ClientResult<void> SandboxClient::LoadHistory() {
  auto j = SendJson(Call{"GET", "/sandbox/v1/history", std::nullopt, 0});
  if (!j) return std::unexpected(j.error());
  if (!j->contains("messages") || !(*j)["messages"].is_array()) {
    return Err(ClientError::Kind::kServer,
               "/sandbox/v1/history: no \"messages\" array in the answer");
  }
  history_.clear();
  for (auto& m : (*j)["messages"]) history_.push_back(m);
  sent_ = history_.size();
  return {};
}

void SandboxClient::Add(Json message) { history_.push_back(std::move(message)); }

ClientResult<std::optional<Json>> SandboxClient::StoredReply(size_t expected_before) {
  auto j = SendJson(Call{"GET", "/sandbox/v1/history", std::nullopt, 0});
  if (!j) return std::unexpected(j.error());
  const Json& msgs = (*j)["messages"];
  if (!msgs.is_array()) return std::optional<Json>();
  size_t want = expected_before + 1;
  if (msgs.size() >= want && msgs[want - 1].is_object() &&
      msgs[want - 1].value("role", "") == "assistant") {
    return std::optional<Json>(msgs[want - 1]);
  }
  return std::optional<Json>();
}

ClientResult<Json> SandboxClient::Chat(const Json& tools, const std::string& model) {
  Json body = {{"messages", Json::array()}};
  for (size_t i = sent_; i < history_.size(); ++i) body["messages"].push_back(history_[i]);
  if (!tools.is_null() && !tools.empty()) body["tools"] = tools;
  if (!model.empty()) body["model"] = model;
  // 409 is not retried inside Send: it means a call of this session is still running, which
  // after a lost answer may be this very call; the history says which before anything is
  // sent again (sending it twice would store the new messages twice).
  Call c{"POST", "/sandbox/v1/llm/chat", body, options_.chat_timeout_ms};
  const int64_t deadline = NowMs() + options_.retry_deadline_ms;
  for (int round = 0;; ++round) {
    bool ambiguous = false;
    auto res = Send(c, &ambiguous);
    if (res) {
      auto j = Json::parse(res->body, nullptr, false);
      if (j.is_discarded() || !j.contains("message") || !j["message"].is_object()) {
        return Err(ClientError::Kind::kServer, "/sandbox/v1/llm/chat: no \"message\" in the answer",
                   res->status);
      }
      last_usage_ = j.value("usage", Json::object());
      history_.push_back(j["message"]);
      sent_ = history_.size();
      return j["message"];
    }
    const bool busy = res.error().status == 409;
    if (!ambiguous && !busy) return std::unexpected(res.error());
    if ((ambiguous && round >= kMaxAmbiguousChats) || NowMs() >= deadline)
      return std::unexpected(res.error());
    // The control plane stores the new messages and the reply in one transaction, or
    // nothing: look before sending again.
    if (on_retry)
      on_retry("chat: " + res.error().message + "; checking whether the call was stored");
    auto stored = StoredReply(history_.size());
    if (!stored) return std::unexpected(stored.error());
    if (*stored) {
      last_usage_ = Json::object();
      history_.push_back(**stored);
      sent_ = history_.size();
      return **stored;
    }
    Backoff(round, busy ? "chat: another call of this session is in progress" : "chat: not stored");
  }
}

ClientResult<PresignedUrl> SandboxClient::Presign(const std::string& name,
                                                  const std::string& method,
                                                  std::optional<uint64_t> size,
                                                  const std::string& content_type) {
  Json body = {{"name", name}, {"method", method}};
  if (size) body["size"] = *size;
  if (!content_type.empty()) body["content_type"] = content_type;
  auto j = SendJson(Call{"POST", "/sandbox/v1/files/presign", body, 0});
  if (!j) return std::unexpected(j.error());
  PresignedUrl p;
  p.url = j->value("url", "");
  p.method = j->value("method", method);
  p.expires_at = j->value("expires_at", "");
  if (j->contains("headers") && (*j)["headers"].is_object()) {
    for (const auto& [k, v] : (*j)["headers"].items()) {
      if (v.is_string()) p.headers.emplace_back(k, v.get<std::string>());
    }
  }
  if (p.url.empty()) return Err(ClientError::Kind::kServer, "presign: no \"url\" in the answer");
  return p;
}

namespace {

// PUTs or GETs a presigned URL; the signature is the credential, so no token is sent.
ClientResult<HttpResponse> Transfer(const PresignedUrl& p, int body_fd, uint64_t size, int sink_fd,
                                    int timeout_ms) {
  auto url = ParseHttpUrl(p.url);
  if (!url) return Err(ClientError::Kind::kLocal, "presigned URL: " + url.error());
  HttpRequest req;
  req.method = p.method;
  req.target = url->path;
  req.headers = p.headers;
  req.body_fd = body_fd;
  req.body_size = size;
  HttpOptions o;
  o.timeout_ms = timeout_ms;
  o.sink_fd = sink_fd;
  auto res = HttpFetch(*url, req, o);
  if (!res) {
    return Err(res.error().kind == HttpError::Kind::kLocal ? ClientError::Kind::kLocal
                                                           : ClientError::Kind::kUnreachable,
               p.method + " of the file: " + res.error().message);
  }
  if (res->status >= 300) {
    auto [code, message] = ErrorOf(*res);
    return Err(res->status < 500 ? ClientError::Kind::kRejected : ClientError::Kind::kServer,
               p.method + " of the file: " + message, res->status, code);
  }
  return std::move(*res);
}

}  // namespace

ClientResult<uint64_t> SandboxClient::Upload(const std::string& path, const std::string& name,
                                             const std::string& content_type) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return Err(ClientError::Kind::kLocal, "cannot open " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Err(ClientError::Kind::kLocal, path + " is not a regular file");
  }
  uint64_t size = static_cast<uint64_t>(st.st_size);
  const int64_t deadline = NowMs() + options_.retry_deadline_ms;
  for (int attempt = 0;; ++attempt) {
    auto p = Presign(name, "PUT", size, content_type);
    if (!p) {
      ::close(fd);
      return std::unexpected(p.error());
    }
    ::lseek(fd, 0, SEEK_SET);
    auto res = Transfer(*p, fd, size, -1, options_.transfer_timeout_ms);
    // An interrupted upload leaves nothing behind on the control plane (it renames a
    // complete file into place), so sending it again is safe.
    if (res || res.error().kind != ClientError::Kind::kUnreachable || NowMs() >= deadline) {
      ::close(fd);
      if (!res) return std::unexpected(res.error());
      return size;
    }
    Backoff(attempt, res.error().message);
  }
}

ClientResult<uint64_t> SandboxClient::Download(const std::string& name, const std::string& path) {
  std::string tmp = path + ".airlock-download";
  const int64_t deadline = NowMs() + options_.retry_deadline_ms;
  for (int attempt = 0;; ++attempt) {
    auto p = Presign(name, "GET");
    if (!p) return std::unexpected(p.error());
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
      return Err(ClientError::Kind::kLocal, "cannot create " + tmp + ": " + std::strerror(errno));
    auto res = Transfer(*p, -1, 0, fd, options_.transfer_timeout_ms);
    bool ok = res && ::fsync(fd) == 0;
    ::close(fd);
    if (ok && ::rename(tmp.c_str(), path.c_str()) == 0) return res->body_bytes;
    ::unlink(tmp.c_str());
    if (res && !ok)
      return Err(ClientError::Kind::kLocal, "cannot write " + path + ": " + std::strerror(errno));
    if (res.error().kind != ClientError::Kind::kUnreachable || NowMs() >= deadline)
      return std::unexpected(res.error());
    Backoff(attempt, res.error().message);
  }
}

ClientResult<void> SandboxClient::Event(const std::string& type, const Json& data) {
  auto res = Send(Call{"POST", "/sandbox/v1/events", Json{{"type", type}, {"data", data}}, 0});
  if (!res) return std::unexpected(res.error());
  return {};
}

ClientResult<void> SandboxClient::Finish(const std::string& status, const std::string& result) {
  Json body = {{"status", status}};
  if (!result.empty()) body["result"] = result;
  bool ambiguous = false;
  for (int round = 0;; ++round) {
    auto res = Send(Call{"POST", "/sandbox/v1/finish", body, 0}, &ambiguous);
    if (res) return {};
    // After an attempt that may have arrived, a 401 means it did: the session is over.
    if (res.error().kind == ClientError::Kind::kSessionOver && round > 0) return {};
    if (!ambiguous || round >= kMaxAmbiguousChats) return std::unexpected(res.error());
    ambiguous = false;
    Backoff(round, "finish: " + res.error().message);
  }
}

}  // namespace airlock::agent
