#pragma once

// A real HttpServer (the control plane's, with its limits) on a Unix socket, serving a
// Router with the control plane's route table, and a client that writes raw bytes to it.
// The signed file routes go to a real FileService over a real SQLite store holding one
// running session (kSessionId) with one file (kFileName), whose URL signing key is fixed
// (kSigningKid / kSigningKey) so that seeds can carry valid signed URLs
// (fuzz/corpus/make-seeds.py computes them).
//
// Each route that takes a JSON body runs that route's checks (fuzz/route_bodies.h); the other
// routes read their query parameters and path parameters the way their handlers do.
// The server runs on its own thread; a crash there is a crash of the fuzz target.

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include "common/blocking.h"
#include "common/log.h"
#include "controlplane/config.h"
#include "controlplane/file_service.h"
#include "controlplane/http.h"
#include "controlplane/notifier.h"
#include "controlplane/validation.h"
#include "fuzz/fuzz_util.h"
#include "fuzz/route_bodies.h"
#include "store/sqlite_store.h"

namespace airlock::fuzz {

inline constexpr std::string_view kSessionId = "ses_aaaaaaaaaaaaaaaaaaaaaaaa";
inline constexpr std::string_view kFileName = "hello.txt";
inline constexpr std::string_view kSigningKid = "fz01";
inline constexpr std::string_view kSigningKey =
    "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

class HttpHarness {
 public:
  HttpHarness() : pool_(1), events_(io_) {
    namespace fs = std::filesystem;
    // A log line per request would cost more than the request.
    log::Init(log::Level::kError, log::Format::kJson);
    const std::string home = ScratchDir() + "/home";
    fs::create_directories(home + "/files/" + std::string(kSessionId));
    std::ofstream(home + "/files/" + std::string(kSessionId) + "/" + std::string(kFileName))
        << "hello, world\n";
    std::ofstream(home + "/file-signing.keys") << kSigningKid << " " << kSigningKey << "\n";
    fs::permissions(home + "/file-signing.keys", fs::perms::owner_read | fs::perms::owner_write);
    auto config = controlplane::ParseConfig("", home);
    if (!config) Die("config", config.error().message);
    config_ = std::move(*config);

    auto store = store::OpenSqliteStore({home + "/airlock.db"});
    if (!store) Die("store", store.error().message);
    store_ = std::move(*store);
    if (auto st = store_->Migrate(); !st) Die("migrate", st.error().message);
    store::Session s;
    s.id = std::string(kSessionId);
    s.image = "base";
    s.backend = "test";
    s.model = "default";
    s.token_hash = std::string(64, '0');
    if (auto st = store_->CreateSession(s, Json{{"role", "user"}, {"content", "task"}}); !st) {
      Die("session", st.error().message);
    }
    store::StateChange running{{store::SessionState::kStarting}, store::SessionState::kRunning};
    if (auto r = store_->ChangeState(kSessionId, running); !r) Die("state", r.error().message);

    files_ =
        std::make_unique<controlplane::FileService>(config_, *store_, pool_, events_, registry_);
    if (auto st = files_->Start(); !st) Die("files", st.error().message);
    http_metrics_ = std::make_unique<controlplane::HttpMetrics>(registry_);
    AddRoutes();
    server_ = std::make_unique<controlplane::HttpServer>(
        io_, "sandbox", config_.limits,
        [this](controlplane::Request& r) { return router_.Dispatch(r); }, *http_metrics_);
    // As ControlPlane::AdmitSandbox: the route's body limit, known from the request line.
    server_->SetGate([this](controlplane::Request& r) -> awaitable<controlplane::Admission> {
      controlplane::Admission a;
      if (auto route = router_.Find(r)) a.max_body_bytes = route->max_body_bytes;
      co_return a;
    });
    server_->StreamBodies([](http::verb m, std::string_view path) {
      return m == http::verb::put && path.starts_with("/sandbox/v1/files/");
    });
    socket_path_ = ScratchDir() + "/sandbox.sock";
    if (auto st = server_->ListenUnix(socket_path_, ""); !st) Die("listen", st.error().message);
    thread_ = std::thread([this] {
      auto guard = asio::make_work_guard(io_);
      io_.run();
    });
  }

  // Writes `bytes`, closes the sending side and returns everything the server answered
  // before it closed the connection.
  std::string Exchange(std::string_view bytes) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof(a.sun_path), "%s", socket_path_.c_str());
    if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0)
      Die("connect", "");
    // Reads and writes interleave: a large answer must not block the server while this
    // side is still writing.
    std::string out;
    char buf[16384];
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    std::thread reader([&] {
      for (;;) {
        ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
          Die("exchange", "the server did not close the connection");
        if (n <= 0) break;
        out.append(buf, static_cast<size_t>(n));
      }
    });
    while (!bytes.empty()) {
      ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // the server closed early (an error answer): fine
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    ::shutdown(fd, SHUT_WR);
    reader.join();
    ::close(fd);
    return out;
  }

 private:
  [[noreturn]] static void Die(const char* what, const std::string& why) {
    std::fprintf(stderr, "http harness: %s: %s\n", what, why.c_str());
    std::abort();
  }

  static controlplane::Response Answer(const controlplane::Request& req, Status st) {
    if (!st) return controlplane::Response::FromError(st.error());
    return controlplane::Response::FromJson(200, Json{{"route", req.route}});
  }

  void AddRoutes() {
    using controlplane::Request;
    using controlplane::Response;
    using controlplane::RouteOptions;
    auto& r = router_;
    const size_t large = config_.limits.max_body_bytes;
    auto body = [](BodyRoute route) {
      return [route](Request& req) -> awaitable<Response> {
        co_return Answer(req, CheckBody(route, req.msg.body()));
      };
    };
    // Query and path parameters as the handlers read them.
    auto reads = [](Request& req) -> awaitable<Response> {
      for (const char* name : {"after", "limit", "wait", "offset", "since", "state", "before"}) {
        if (auto v = req.Query(name)) (void)controlplane::ParseNonNegative(*v);
      }
      if (auto it = req.params.find("id"); it != req.params.end())
        (void)controlplane::PlausibleSessionId(it->second);
      (void)controlplane::ParseNonNegative(req.Header("Last-Event-ID"));
      (void)req.Header("Authorization");
      co_return Answer(req, Ok());
    };
    r.Add(http::verb::get, "/healthz", reads);
    r.Add(http::verb::get, "/metrics", reads);
    r.Add(http::verb::post, "/v1/sessions", body(BodyRoute::kCreateSession), RouteOptions{large});
    r.Add(http::verb::get, "/v1/sessions", reads);
    r.Add(http::verb::get, "/v1/sessions/{id}", reads);
    r.Add(http::verb::delete_, "/v1/sessions/{id}", reads);
    r.Add(http::verb::post, "/v1/sessions/{id}/messages", body(BodyRoute::kPostMessage),
          RouteOptions{large});
    r.Add(http::verb::get, "/v1/sessions/{id}/messages", reads);
    r.Add(http::verb::get, "/v1/sessions/{id}/events", reads);
    r.Add(http::verb::post, "/v1/sessions/{id}/suspend", reads);
    r.Add(http::verb::post, "/v1/sessions/{id}/resume", reads);
    r.Add(http::verb::get, "/v1/sessions/{id}/logs", reads);
    r.Add(http::verb::get, "/v1/sessions/{id}/files", reads);
    r.Add(http::verb::get, "/v1/sessions/{id}/files/{name}", reads);
    r.Add(http::verb::head, "/v1/sessions/{id}/files/{name}", reads);
    r.Add(http::verb::get, "/v1/usage", reads);
    r.Add(http::verb::get, "/sandbox/v1/inbox", reads);
    r.Add(http::verb::post, "/sandbox/v1/events", body(BodyRoute::kEvents),
          RouteOptions{static_cast<size_t>(config_.max_event_bytes)});
    r.Add(http::verb::get, "/sandbox/v1/history", reads);
    r.Add(http::verb::post, "/sandbox/v1/finish", body(BodyRoute::kFinish),
          RouteOptions{size_t{6 * 64 * 1024 + 4096}});
    r.Add(http::verb::post, "/sandbox/v1/llm/chat", body(BodyRoute::kChat), RouteOptions{large});
    r.Add(http::verb::post, "/sandbox/v1/files/presign", body(BodyRoute::kPresign));
    r.Add(http::verb::put, "/sandbox/v1/files/{session}/{name}",
          [this](Request& q) { return files_->Upload(q); });
    r.Add(http::verb::get, "/sandbox/v1/files/{session}/{name}",
          [this](Request& q) { return files_->Fetch(q); });
    r.Add(http::verb::head, "/sandbox/v1/files/{session}/{name}",
          [this](Request& q) { return files_->Fetch(q); });
  }

  asio::io_context io_;
  asio::thread_pool pool_;
  controlplane::Notifier events_;
  metrics::Registry registry_;
  controlplane::Config config_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<controlplane::FileService> files_;
  std::unique_ptr<controlplane::HttpMetrics> http_metrics_;
  controlplane::Router router_;
  std::unique_ptr<controlplane::HttpServer> server_;
  std::string socket_path_;
  std::thread thread_;
};

}  // namespace airlock::fuzz
