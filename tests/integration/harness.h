#pragma once

// Test harness: a real control plane (real sockets, real SQLite in a temp dir) running on
// its own thread, a test backend that hands the minted session token to the test so the
// test can play the sandbox, and a small blocking HTTP client.

#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "common/asio.h"
#include "common/json_util.h"
#include "controlplane/control_plane.h"
#include "controlplane/plug_points.h"
#include "sandbox/backend.h"

namespace airlock::testing {

// The directories a test made, removed when its process exits (a run of the whole suite left
// thousands behind in /tmp before). AIRLOCK_KEEP_TEST_DIRS=1 keeps them for a post-mortem.
class TempDirs {
 public:
  static TempDirs& Get() {
    static TempDirs dirs;
    return dirs;
  }
  void Add(std::string dir) {
    std::lock_guard l(mu_);
    dirs_.push_back(std::move(dir));
  }
  ~TempDirs() {
    const char* keep = std::getenv("AIRLOCK_KEEP_TEST_DIRS");
    if (keep && std::string_view(keep) == "1") return;
    for (const auto& d : dirs_) {
      std::error_code ec;
      std::filesystem::remove_all(d, ec);
    }
  }

 private:
  std::mutex mu_;
  std::vector<std::string> dirs_;
};

inline std::string MakeTempDir(const std::string& tag = "airlock-test") {
  std::string tmpl = (std::filesystem::temp_directory_path() / (tag + "-XXXXXX")).string();
  char* p = ::mkdtemp(tmpl.data());
  if (!p) throw std::runtime_error("mkdtemp failed");
  TempDirs::Get().Add(tmpl);
  return tmpl;
}

inline void RaiseFdLimit() {
  rlimit r{};
  ::getrlimit(RLIMIT_NOFILE, &r);
  r.rlim_cur = r.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &r);
}

// Plays the sandbox runtime: remembers each session's spec (with its token) and the calls
// made to it.
class TestBackend : public sandbox::Backend {
 public:
  // A spec as Create got it, with the identity it carried spelled out.
  struct Recorded {
    sandbox::SandboxSpec spec;
    std::string session_id;
    Secret token;
    std::string control_plane_url;
  };
  struct Shared {
    std::mutex mu;
    std::condition_variable changed;  // notified on every state change
    std::map<std::string, Recorded> specs;
    std::map<std::string, std::string> state;  // handle -> running/paused/destroyed
    bool fail_create = false;
    // Declare IdentityDelivery::kOverChannel: sandboxes get no token in their spec and must
    // ask for it on their socket (GET /sandbox/v1/identity), as oci's do.
    bool identity_over_channel = false;
    std::string probe_error;                     // Probe fails with this when set
    bool probe_hangs = false;                    // Probe blocks until this is cleared
    std::chrono::milliseconds inspect_delay{0};  // Inspect takes this long
    int inspects = 0;                            // Inspect calls begun

    // Waits until `handle` is in `want`. The control plane tears sandboxes down off the
    // request path, so a test that saw a session end must wait for the destroy to land.
    bool WaitForState(const std::string& handle, const std::string& want,
                      std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
      std::unique_lock l(mu);
      return changed.wait_for(l, timeout, [&] {
        auto it = state.find(handle);
        return it != state.end() && it->second == want;
      });
    }
  };
  explicit TestBackend(std::shared_ptr<Shared> shared) : s_(std::move(shared)) {}
  std::string_view name() const override { return "test"; }
  sandbox::Capabilities capabilities() const override {
    sandbox::Capabilities c;
    c.isolated = true;
    c.suspend = sandbox::Capabilities::Suspend::kFreeze;
    c.channel = sandbox::Channel::Kind::kUnixDir;
    std::lock_guard l(s_->mu);
    c.identity = s_->identity_over_channel ? sandbox::Capabilities::IdentityDelivery::kOverChannel
                                           : sandbox::Capabilities::IdentityDelivery::kInSpec;
    c.warm_pool = s_->identity_over_channel;  // a sandbox that waits for its identity
    return c;
  }
  Result<sandbox::Started> Create(const sandbox::SandboxSpec& spec) override {
    std::lock_guard l(s_->mu);
    if (s_->fail_create) return MakeError(ErrorCode::kUnavailable, "test backend told to fail");
    Recorded r{spec, spec.sandbox_id, Secret(), ""};
    if (spec.identity) {
      r.session_id = spec.identity->session_id;
      r.token = spec.identity->token;
      r.control_plane_url = spec.identity->control_plane_url;
    }
    s_->specs[spec.sandbox_id] = std::move(r);
    s_->state["test:" + spec.sandbox_id] = "running";
    s_->changed.notify_all();
    return sandbox::Started{"test:" + spec.sandbox_id, sandbox::SandboxState::kRunning};
  }
  Status Suspend(const std::string& h) override { return Set(h, "paused"); }
  Result<std::string> Resume(const std::string& h) override {
    AIRLOCK_TRY(Set(h, "running"));
    return h;
  }
  Status Destroy(const std::string& h) override { return Set(h, "destroyed"); }
  Result<sandbox::SandboxStatus> Inspect(const std::string& h) override {
    std::chrono::milliseconds delay;
    {
      std::lock_guard l(s_->mu);
      delay = s_->inspect_delay;
      ++s_->inspects;
      s_->changed.notify_all();
    }
    std::this_thread::sleep_for(delay);
    std::lock_guard l(s_->mu);
    sandbox::SandboxStatus st;
    auto it = s_->state.find(h);
    st.state = it == s_->state.end() || it->second == "destroyed" ? sandbox::SandboxState::kMissing
               : it->second == "paused"                           ? sandbox::SandboxState::kPaused
                                                                  : sandbox::SandboxState::kRunning;
    return st;
  }
  Result<sandbox::SandboxStatus> Reattach(const std::string& h) override { return Inspect(h); }
  Result<std::string> Logs(const std::string&, int64_t offset, size_t max_bytes) override {
    static constexpr std::string_view kLog = "test log\n";
    if (offset < 0 || static_cast<size_t>(offset) >= kLog.size()) return std::string();
    return std::string(kLog.substr(static_cast<size_t>(offset), max_bytes));
  }
  Result<std::vector<sandbox::ListedSandbox>> List() override {
    std::lock_guard l(s_->mu);
    std::vector<sandbox::ListedSandbox> out;
    for (const auto& [h, st] : s_->state) {
      if (st != "destroyed") out.push_back({h.substr(std::strlen("test:")), h});
    }
    return out;
  }
  Status Probe() override {
    std::unique_lock l(s_->mu);
    s_->changed.wait(l, [this] { return !s_->probe_hangs; });
    if (!s_->probe_error.empty()) return MakeError(ErrorCode::kUnavailable, s_->probe_error);
    return Ok();
  }

 private:
  Status Set(const std::string& h, const char* st) {
    std::lock_guard l(s_->mu);
    s_->state[h] = st;
    s_->changed.notify_all();
    return Ok();
  }
  std::shared_ptr<Shared> s_;
};

struct HttpResult {
  unsigned status = 0;
  std::string body;
  std::map<std::string, std::string> headers;
  Json json() const {
    auto j = ParseJson(body);
    return j ? *j : Json();
  }
  std::string error_code() const {
    auto j = json();
    return j.is_object() && j.contains("error") ? j["error"].value("code", "") : "";
  }
};

// One blocking HTTP/1.1 exchange on a fresh connection.
inline HttpResult HttpCall(uint16_t port, http::verb method, const std::string& target,
                           const std::string& bearer = "", const std::string& body = "",
                           std::map<std::string, std::string> headers = {}) {
  asio::io_context io;
  beast::tcp_stream stream(io);
  // A server that stops answering fails the test instead of hanging it.
  stream.expires_after(std::chrono::seconds(90));
  stream.connect(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  http::request<http::string_body> req{method, target, 11};
  req.set(http::field::host, "127.0.0.1");
  if (!bearer.empty()) req.set(http::field::authorization, "Bearer " + bearer);
  for (auto& [k, v] : headers) req.set(k, v);
  if (!body.empty() || method == http::verb::post) {
    req.set(http::field::content_type, "application/json");
    req.body() = body;
  }
  req.prepare_payload();
  http::write(stream, req);
  beast::flat_buffer buf;
  http::response_parser<http::string_body> parser;
  parser.body_limit(64 << 20);
  if (method == http::verb::head) parser.skip(true);  // a HEAD answer has no body to wait for
  http::read(stream, buf, parser);
  HttpResult r;
  r.status = parser.get().result_int();
  r.body = parser.get().body();
  for (auto& f : parser.get()) r.headers[std::string(f.name_string())] = std::string(f.value());
  beast::error_code ec;
  stream.socket().shutdown(asio::ip::tcp::socket::shutdown_both, ec);
  return r;
}

// A raw connected socket, for tests that must misbehave at the byte level.
inline int RawConnect(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

inline int RawConnectUnix(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof(a.sun_path), "%s", path.c_str());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

inline bool WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Reads until the peer closes or `timeout_ms` passes; returns what arrived.
inline std::string ReadUntilClose(int fd, int timeout_ms = 10000) {
  timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

// Reads one complete HTTP response (Content-Length framed) from a raw socket.
inline std::string ReadOneResponse(int fd, int timeout_ms = 30000) {
  timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::string out;
  char buf[4096];
  for (;;) {
    size_t hdr_end = out.find("\r\n\r\n");
    if (hdr_end != std::string::npos) {
      size_t cl = 0;
      auto pos = out.find("Content-Length: ");
      if (pos != std::string::npos && pos < hdr_end) cl = std::stoul(out.substr(pos + 16));
      if (out.size() >= hdr_end + 4 + cl) return out.substr(0, hdr_end + 4 + cl);
    }
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) return out;
    out.append(buf, static_cast<size_t>(n));
  }
}

// One GET on a Unix socket, as airlock-init makes it: no credential unless `token` is given.
// Status 0 when nobody listens or no HTTP response came back.
inline HttpResult UnixGet(const std::string& socket, const std::string& target,
                          const std::string& token = "") {
  HttpResult r;
  int fd = RawConnectUnix(socket);
  if (fd < 0) return r;
  std::string auth = token.empty() ? "" : "Authorization: Bearer " + token + "\r\n";
  WriteAll(fd,
           "GET " + target + " HTTP/1.1\r\nHost: airlock\r\n" + auth + "Connection: close\r\n\r\n");
  std::string raw = ReadOneResponse(fd);
  ::close(fd);
  if (raw.size() < 12 || !raw.starts_with("HTTP/1.1 ")) return r;
  r.status = static_cast<unsigned>(std::stoul(raw.substr(9, 3)));
  if (size_t head = raw.find("\r\n\r\n"); head != std::string::npos) r.body = raw.substr(head + 4);
  return r;
}

class TestServer;
bool WaitForMetric(TestServer& server, const std::string& needle, int timeout_ms = 20000);

// A control plane on its own io thread, bound to 127.0.0.1:0 for both listeners.
class TestServer {
 public:
  // `backend`: the sandboxes of an earlier server on the same home, which outlive it as real
  // ones outlive a restart (default: none).
  // `clock`: the time the control plane decides by (default: the real clock).
  explicit TestServer(std::function<void(controlplane::Config&)> tweak = {}, std::string home = "",
                      std::shared_ptr<TestBackend::Shared> backend = nullptr,
                      std::shared_ptr<const Clock> clock = nullptr)
      : home_(home.empty() ? MakeTempDir() : home),
        backend_(backend ? std::move(backend) : std::make_shared<TestBackend::Shared>()) {
    RaiseFdLimit();
    controlplane::Config c = *controlplane::ParseConfig("", home_);
    c.operator_listen = {"127.0.0.1", 0};
    c.sandbox_listen = {"127.0.0.1", 0};
    c.default_backend = "test";
    c.log_level = log::Level::kWarn;
    if (tweak) tweak(c);
    log::Init(c.log_level, c.log_format);
    auto st = controlplane::OpenStore(c);
    if (!st) throw std::runtime_error("store: " + st.error().message);
    auto backends = std::make_unique<sandbox::BackendRegistry>();
    backends->Register(std::make_unique<TestBackend>(backend_));
    cp_ = std::make_unique<controlplane::ControlPlane>(std::move(c), io_, std::move(*st),
                                                       std::move(backends), std::move(clock));
    auto started = cp_->Start();
    if (!started) throw std::runtime_error("start: " + started.error().message);
    std::ifstream f(home_ + "/operator.key");
    std::getline(f, operator_key_);
    thread_ = std::thread([this] { io_.run(); });
  }
  ~TestServer() { Stop(); }

  void Stop() {
    if (!thread_.joinable()) return;
    asio::post(io_, [this] { cp_->Shutdown(); });
    thread_.join();
    cp_.reset();
  }

  uint16_t op_port() const { return cp_->operator_endpoint().port(); }
  uint16_t sb_port() const { return cp_->sandbox_endpoint().port(); }
  const std::string& home() const { return home_; }
  const std::string& key() const { return operator_key_; }
  TestBackend::Shared& backend() { return *backend_; }
  std::shared_ptr<TestBackend::Shared> shared_backend() { return backend_; }
  controlplane::ControlPlane& cp() { return *cp_; }

  HttpResult Op(http::verb m, const std::string& target, const std::string& body = "",
                std::map<std::string, std::string> headers = {}) {
    return HttpCall(op_port(), m, target, operator_key_, body, std::move(headers));
  }
  HttpResult Sb(http::verb m, const std::string& target, const std::string& token,
                const std::string& body = "", std::map<std::string, std::string> headers = {}) {
    return HttpCall(sb_port(), m, target, token, body, std::move(headers));
  }

  // Creates a session and returns {id, token}.
  std::pair<std::string, std::string> NewSession(const std::string& task = "do the thing") {
    auto r = Op(http::verb::post, "/v1/sessions", DumpJson(Json{{"task", task}}));
    if (r.status != 201)
      throw std::runtime_error("create session: " + std::to_string(r.status) + " " + r.body);
    std::string id = r.json()["id"];
    std::lock_guard l(backend_->mu);
    return {id, backend_->specs.at(id).token.Reveal()};
  }

 private:
  std::string home_;
  std::shared_ptr<TestBackend::Shared> backend_;
  asio::io_context io_{1};
  std::unique_ptr<controlplane::ControlPlane> cp_;
  std::string operator_key_;
  std::thread thread_;
};

// Waits until the metrics page contains `needle` (an eventual condition, not a timing
// assertion): false if it never shows up within `timeout_ms`.
inline bool WaitForMetric(TestServer& server, const std::string& needle, int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    if (server.cp().metrics().Render().find(needle) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

}  // namespace airlock::testing
