// The HTTP server's per-session Unix sockets: each request carries the session its socket is
// bound to, and a socket moved to another path (a warm pool's sandbox taken by a session) is
// the same socket, never missing, serving the new session from then on.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <future>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "common/metrics.h"
#include "net/http_server.h"

namespace airlock::net {
namespace {

namespace fs = std::filesystem;

class HttpServerUnixTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "airlock-unix-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    server_ = std::make_unique<HttpServer>(
        io_, "sandbox", HttpLimits{},
        [](Request& req) -> awaitable<Response> {
          co_return Response::Text(200, "bound to " + req.bound_session);
        },
        metrics_);
    io_thread_ = std::thread([this] {
      auto guard = asio::make_work_guard(io_);
      io_.run();
    });
  }
  // Runs `fn` on the io thread (the server's methods must be called there) and waits.
  template <typename F>
  auto OnIo(F fn) -> decltype(fn()) {
    std::packaged_task<decltype(fn())()> task(std::move(fn));
    auto done = task.get_future();
    asio::post(io_, [&task] { task(); });
    return done.get();
  }

  void TearDown() override {
    OnIo([this] { server_.reset(); });
    io_.stop();
    io_thread_.join();
    fs::remove_all(dir_);
  }

  static int Connect(const std::string& path) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      ::close(fd);
      return -1;
    }
    return fd;
  }

  // One request on `fd` (kept alive); the answer's body.
  static std::string Ask(int fd) {
    const std::string req = "GET /x HTTP/1.1\r\nHost: x\r\n\r\n";
    EXPECT_EQ(::send(fd, req.data(), req.size(), MSG_NOSIGNAL), static_cast<ssize_t>(req.size()));
    std::string got;
    char buf[4096];
    for (;;) {
      size_t head = got.find("\r\n\r\n");
      size_t at = got.find("Content-Length: ");
      if (head != std::string::npos && at != std::string::npos) {
        size_t length = std::stoul(got.substr(at + 16));
        if (got.size() >= head + 4 + length) return got.substr(head + 4, length);
      }
      ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) return got;
      got.append(buf, static_cast<size_t>(n));
    }
  }

  asio::io_context io_;
  metrics::Registry registry_;
  HttpMetrics metrics_{registry_};
  std::unique_ptr<HttpServer> server_;
  std::thread io_thread_;
  std::string dir_;
};

TEST_F(HttpServerUnixTest, AMovedSocketServesItsNewSessionAndKeepsOpenConnectionsAsTheyWere) {
  const std::string waiting = dir_ + "/wrm_1";
  fs::create_directories(waiting);
  const std::string from = waiting + "/control.sock";
  ASSERT_TRUE(OnIo([&] { return server_->ListenUnix(from, "wrm_1"); }));
  int before = Connect(from);
  ASSERT_GE(before, 0);
  EXPECT_EQ(Ask(before), "bound to wrm_1");

  // The session's directory is a link to the sandbox's: the same socket file.
  fs::create_directory_symlink("wrm_1", dir_ + "/ses_a");
  const std::string to = dir_ + "/ses_a/control.sock";
  ASSERT_TRUE(OnIo([&] { return server_->MoveUnix(from, to, "ses_a"); }));
  int after = Connect(from);  // the same file, by either path
  ASSERT_GE(after, 0);
  EXPECT_EQ(Ask(after), "bound to ses_a");
  int by_link = Connect(to);
  ASSERT_GE(by_link, 0);
  EXPECT_EQ(Ask(by_link), "bound to ses_a");
  // A connection accepted before the move stays what it was.
  EXPECT_EQ(Ask(before), "bound to wrm_1");

  // Nothing listens at the old path any more in the server's books; the new one closes it.
  auto again = OnIo([&] { return server_->MoveUnix(from, to, "ses_b"); });
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, ErrorCode::kNotFound);
  OnIo([&] { server_->CloseUnix(to); });
  EXPECT_FALSE(fs::exists(from));
  EXPECT_EQ(Connect(from), -1);
  for (int fd : {before, after, by_link}) ::close(fd);
}

}  // namespace
}  // namespace airlock::net
