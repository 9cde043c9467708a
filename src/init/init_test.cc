// Runs the real airlock-init binary as a normal process (it makes itself a subreaper when it
// is not PID 1) against a fake control plane: an HTTP server on a Unix socket in a temp dir.
// Tests that need root (to start the agent as uid 1000) skip without it; the others run the
// agent as the test's own uid. Nothing here waits for a fixed time: every wait polls a
// condition up to a generous deadline.

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kDeadline = std::chrono::seconds(30);

bool IsRoot() { return ::geteuid() == 0; }

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    out.push_back(line);
  }
  return out;
}

std::string RandomHex(size_t bytes) {
  std::random_device rd;
  std::string out;
  static constexpr char kHex[] = "0123456789abcdef";
  for (size_t i = 0; i < bytes; ++i) {
    unsigned v = rd() & 0xff;
    out += kHex[v >> 4];
    out += kHex[v & 0xf];
  }
  return out;
}

// Polls `done` until it holds or the deadline passes.
bool WaitUntil(const std::function<bool()>& done) {
  auto deadline = Clock::now() + kDeadline;
  while (!done()) {
    if (Clock::now() > deadline) {
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

std::vector<pid_t> ChildrenOf(pid_t pid) {
  std::vector<pid_t> out;
  std::istringstream in(
      ReadFile("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children"));
  for (pid_t child; in >> child;) {
    out.push_back(child);
  }
  return out;
}

size_t CountFds(pid_t pid) {
  std::error_code ec;
  auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
  return ec ? 0 : static_cast<size_t>(std::distance(it, std::filesystem::directory_iterator()));
}

bool ProcessExists(pid_t pid) { return ::kill(pid, 0) == 0 || errno != ESRCH; }

// Reads until EOF (or error); the socket has a receive timeout, so this cannot hang.
std::string ReadToEof(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return out;
    }
    out.append(buf, static_cast<size_t>(n));
  }
}

void SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      return;
    }
    sent += static_cast<size_t>(n);
  }
}

void SetRecvTimeout(int fd) {
  timeval tv{30, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

// A connected TCP client socket to 127.0.0.1:port, or -1.
int ConnectTcp(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  SetRecvTimeout(fd);
  return fd;
}

std::string HttpGet(int port, const std::string& path) {
  int fd = ConnectTcp(port);
  if (fd < 0) {
    return "connect failed: " + std::string(std::strerror(errno));
  }
  SendAll(fd, "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  std::string response = ReadToEof(fd);
  ::close(fd);
  return response;
}

// A port below the ephemeral range (so no client socket holds it) that is free right now.
int PickPort() {
  static std::mt19937 rng(std::random_device{}());
  for (;;) {
    int port = std::uniform_int_distribution<int>(20000, 32000)(rng);
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool free = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    ::close(fd);
    if (free) {
      return port;
    }
  }
}

struct Request {
  std::string method;
  std::string path;
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
};

// The fake control plane: a Unix-socket server, one thread per connection, that records what
// it receives.
class FakeControlPlane {
 public:
  using Handler = std::function<void(FakeControlPlane&, int fd)>;

  FakeControlPlane(std::string path, Handler handler)
      : path_(std::move(path)), handler_(std::move(handler)) {
    listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
    ::unlink(path_.c_str());
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::listen(listen_fd_, SOMAXCONN) != 0) {
      ADD_FAILURE() << "fake control plane: " << std::strerror(errno);
    }
    // Reachable by an init that does not run as root (connect needs write permission).
    ::chmod(path_.c_str(), 0666);
    if (::pipe2(stop_, O_CLOEXEC) != 0) {
      ADD_FAILURE() << "pipe: " << std::strerror(errno);
    }
    acceptor_ = std::thread([this] { AcceptLoop(); });
  }

  ~FakeControlPlane() {
    [[maybe_unused]] ssize_t n = ::write(stop_[1], "x", 1);
    acceptor_.join();
    // Workers take mu_ to record what they got: join them without holding it.
    std::vector<std::thread> workers;
    {
      std::lock_guard lock(mu_);
      workers.swap(workers_);
    }
    for (auto& t : workers) {
      t.join();
    }
    ::close(listen_fd_);
    ::close(stop_[0]);
    ::close(stop_[1]);
    ::unlink(path_.c_str());
  }

  // Answers HTTP requests: 202 for events, "pong <path>" for anything else; records each.
  static void Http(FakeControlPlane& self, int fd) { Serve(self, fd, "202 Accepted"); }

  // Http, but events get `event_status`; only an event answered 202 is recorded as one.
  static void Serve(FakeControlPlane& self, int fd, const std::string& event_status) {
    std::string data;
    char buf[4096];
    size_t header_end;
    while ((header_end = data.find("\r\n\r\n")) == std::string::npos) {
      ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) {
        return;
      }
      data.append(buf, static_cast<size_t>(n));
    }
    Request req;
    std::istringstream head(data.substr(0, header_end));
    std::string line;
    std::getline(head, line);
    std::istringstream(line) >> req.method >> req.path;
    while (std::getline(head, line)) {
      if (!line.empty() && line.back() == '\r') {
        line.pop_back();
      }
      size_t colon = line.find(':');
      if (colon == std::string::npos) {
        continue;
      }
      std::string name = line.substr(0, colon);
      std::transform(name.begin(), name.end(), name.begin(), ::tolower);
      req.headers[name] = line.substr(line.find_first_not_of(' ', colon + 1));
    }
    size_t length =
        req.headers.count("content-length") ? std::stoul(req.headers["content-length"]) : 0;
    req.body = data.substr(header_end + 4);
    while (req.body.size() < length) {
      ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) {
        break;
      }
      req.body.append(buf, static_cast<size_t>(n));
    }
    bool event = req.path == "/sandbox/v1/events";
    std::string body = event ? "" : "pong " + req.path;
    SendAll(fd, std::string(event ? "HTTP/1.1 " + event_status : "HTTP/1.1 200 OK") +
                    "\r\nContent-Length: " + std::to_string(body.size()) +
                    "\r\nConnection: close\r\n\r\n" + body);
    if (event && !event_status.starts_with("202")) req.path += " (refused)";
    self.Record(std::move(req));
  }

  void Record(Request req) {
    std::lock_guard lock(mu_);
    requests_.push_back(std::move(req));
  }
  void RecordRaw(std::string data) {
    std::lock_guard lock(mu_);
    raw_.push_back(std::move(data));
  }

  std::vector<Request> requests() {
    std::lock_guard lock(mu_);
    return requests_;
  }
  std::vector<std::string> raw() {
    std::lock_guard lock(mu_);
    return raw_;
  }

  // The events POSTed so far.
  std::vector<Request> events() {
    std::vector<Request> out;
    for (auto& r : requests()) {
      if (r.path == "/sandbox/v1/events") {
        out.push_back(r);
      }
    }
    return out;
  }

 private:
  void AcceptLoop() {
    for (;;) {
      pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_[0], POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0) {
        continue;
      }
      if (fds[1].revents != 0) {
        return;
      }
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        continue;
      }
      SetRecvTimeout(fd);
      std::lock_guard lock(mu_);
      workers_.emplace_back([this, fd] {
        handler_(*this, fd);
        ::close(fd);
      });
    }
  }

  std::string path_;
  Handler handler_;
  int listen_fd_ = -1;
  int stop_[2] = {-1, -1};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<std::thread> workers_;
  std::vector<Request> requests_;
  std::vector<std::string> raw_;
};

struct Ids {
  uid_t uid;
  gid_t gid;
};

// The agent's identity: uid/gid 1000 as root, else the test's own (init cannot switch).
Ids AgentIds() { return IsRoot() ? Ids{1000, 1000} : Ids{::geteuid(), ::getegid()}; }

// Starts `argv` with exactly `env`, stdin /dev/null, stdout/stderr to files; as `as` if set.
pid_t Spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env,
            const std::string& out_path, const std::string& err_path, std::optional<Ids> as) {
  std::vector<char*> cargv, cenv;
  for (auto& a : argv) {
    cargv.push_back(const_cast<char*>(a.c_str()));
  }
  cargv.push_back(nullptr);
  for (auto& e : env) {
    cenv.push_back(const_cast<char*>(e.c_str()));
  }
  cenv.push_back(nullptr);
  int in = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(in, 0);
    ::dup2(out, 1);
    ::dup2(err, 2);
    if (as && (::setgroups(0, nullptr) != 0 || ::setresgid(as->gid, as->gid, as->gid) != 0 ||
               ::setresuid(as->uid, as->uid, as->uid) != 0)) {
      ::_exit(99);
    }
    ::execve(cargv[0], cargv.data(), cenv.data());
    ::_exit(98);
  }
  ::close(in);
  ::close(out);
  ::close(err);
  return pid;
}

class InitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/airlock-init-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ::chmod(dir_.c_str(), 0755);
    home_ = dir_ + "/home";
    ::mkdir(home_.c_str(), 0755);
    if (IsRoot()) {
      ASSERT_EQ(::chown(home_.c_str(), AgentIds().uid, AgentIds().gid), 0);
    }
    socket_path_ = dir_ + "/control.sock";
    session_id_ = "sess-" + RandomHex(8);
    token_ = "tok-" + RandomHex(32);
  }

  void TearDown() override {
    if (pid_ > 0 && !status_) {
      // Leave nothing behind after a failed test: the agent's groups, then init.
      for (pid_t child : ChildrenOf(pid_)) {
        ::kill(-child, SIGKILL);
        ::kill(child, SIGKILL);
      }
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    server_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  void StartServer(FakeControlPlane::Handler handler = FakeControlPlane::Http) {
    server_ = std::make_unique<FakeControlPlane>(socket_path_, std::move(handler));
  }

  std::string Url() const { return "http://127.0.0.1:" + std::to_string(port_); }

  std::vector<std::string> DefaultEnv() const {
    return {"SESSION_ID=" + session_id_, "SESSION_TOKEN=" + token_, "CONTROL_PLANE_URL=" + Url(),
            "PATH=/usr/bin:/bin"};
  }

  std::vector<std::string> Argv(const std::vector<std::string>& options,
                                const std::vector<std::string>& command, Ids ids) const {
    std::vector<std::string> argv = {AIRLOCK_INIT_BIN,
                                     "--socket",
                                     socket_path_,
                                     "--uid",
                                     std::to_string(ids.uid),
                                     "--gid",
                                     std::to_string(ids.gid),
                                     "--home",
                                     home_};
    argv.insert(argv.end(), options.begin(), options.end());
    argv.push_back("--");
    argv.insert(argv.end(), command.begin(), command.end());
    return argv;
  }

  // Starts init with the agent `command` and waits until it has got past listening (it has
  // forked the agent, or already logged its exit). A port another process took in the
  // meantime makes init fail at once; then it starts again on another port.
  // `env` builds init's environment once the port is known (default: DefaultEnv()).
  using EnvFn = std::function<std::vector<std::string>()>;
  void Start(const std::vector<std::string>& command, const std::vector<std::string>& options = {},
             EnvFn env = nullptr, std::optional<Ids> as = std::nullopt) {
    for (int attempt = 0; attempt < 5; ++attempt) {
      port_ = PickPort();
      status_.reset();
      // "{port}" in an option stands for the port picked for this attempt.
      std::vector<std::string> opts = options;
      std::replace(opts.begin(), opts.end(), std::string("{port}"), std::to_string(port_));
      pid_ = Spawn(Argv(opts, command, as.value_or(AgentIds())), env ? env() : DefaultEnv(),
                   OutPath(), ErrPath(), as);
      ASSERT_GT(pid_, 0);
      ASSERT_TRUE(WaitUntil([&] {
        return Exited() || !ChildrenOf(pid_).empty() ||
               Stderr().find("] agent ") != std::string::npos ||
               Stderr().find("cannot start the agent") != std::string::npos;
      }));
      if (!(Exited() && Stderr().find("cannot listen") != std::string::npos)) {
        return;
      }
    }
    FAIL() << "init could not listen on any port: " << Stderr();
  }

  bool Exited() {
    if (status_) {
      return true;
    }
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      status_ = status;
    }
    return status_.has_value();
  }

  // init's exit code (128+N for signal N), or -1 if it did not exit before the deadline.
  int Wait() {
    if (!WaitUntil([&] { return Exited(); })) {
      ADD_FAILURE() << "init did not exit; stderr: " << Stderr();
      return -1;
    }
    return WIFEXITED(*status_) ? WEXITSTATUS(*status_) : 128 + WTERMSIG(*status_);
  }

  std::string OutPath() const { return dir_ + "/stdout"; }
  std::string ErrPath() const { return dir_ + "/stderr"; }
  std::string Stdout() const { return ReadFile(OutPath()); }
  std::string Stderr() const { return ReadFile(ErrPath()); }

  // Waits until the agent has written `marker` to its output.
  void WaitForOutput(const std::string& marker) {
    ASSERT_TRUE(WaitUntil([&] { return Stdout().find(marker) != std::string::npos || Exited(); }))
        << Stdout();
    ASSERT_NE(Stdout().find(marker), std::string::npos)
        << "stdout: " << Stdout() << "\nstderr: " << Stderr();
  }

  // The one exit event init reported.
  Request ExitEvent() {
    EXPECT_TRUE(WaitUntil([&] { return !server_->events().empty(); })) << Stderr();
    auto events = server_->events();
    EXPECT_EQ(events.size(), 1u);
    return events.empty() ? Request{} : events[0];
  }

  std::string dir_;
  std::string home_;
  std::string socket_path_;
  std::string session_id_;
  std::string token_;
  int port_ = 0;
  pid_t pid_ = -1;
  std::optional<int> status_;
  std::unique_ptr<FakeControlPlane> server_;
};

// Plays the control plane for init's identity request: GET /sandbox/v1/identity gets
// `status` and `body` (after `unavailable` answers of 503); with `work`, GET /sandbox/v1/work
// gets 200 and that; anything else goes to Http.
FakeControlPlane::Handler IdentityServer(std::string body, int status = 200, int unavailable = 0,
                                         std::string work = "") {
  auto left = std::make_shared<std::atomic<int>>(unavailable);
  return [body = std::move(body), status, left, work = std::move(work)](FakeControlPlane& self,
                                                                        int fd) {
    std::string head;
    char buf[4096];
    for (;;) {
      ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_PEEK);
      if (n <= 0) {
        return;
      }
      head.assign(buf, static_cast<size_t>(n));
      if (head.find("\r\n") != std::string::npos || n == sizeof(buf)) {
        break;
      }
    }
    const bool identity = head.starts_with("GET /sandbox/v1/identity ");
    if (!identity && (work.empty() || !head.starts_with("GET /sandbox/v1/work "))) {
      FakeControlPlane::Http(self, fd);
      return;
    }
    std::string data;
    while (data.find("\r\n\r\n") == std::string::npos) {
      ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) {
        return;
      }
      data.append(buf, static_cast<size_t>(n));
    }
    Request req;
    req.method = "GET";
    req.path = identity ? "/sandbox/v1/identity" : "/sandbox/v1/work";
    std::string lower = data;
    std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
    if (lower.find("\r\nauthorization:") != std::string::npos) {
      req.headers["authorization"] = "(present)";
    }
    self.Record(req);
    int code = !identity ? 200 : --*left >= 0 ? 503 : status;
    std::string reply = !identity     ? work
                        : code == 503 ? std::string(R"({"error":{"code":"unavailable"}})")
                                      : body;
    SendAll(fd, "HTTP/1.1 " + std::to_string(code) +
                    " X\r\nContent-Type: application/json\r\nContent-Length: " +
                    std::to_string(reply.size()) + "\r\nConnection: close\r\n\r\n" + reply);
  };
}

#define SKIP_UNLESS_ROOT()                                                          \
  if (!IsRoot()) {                                                                  \
    GTEST_SKIP() << "needs root: init must switch the agent to another uid (1000)"; \
  }

TEST_F(InitTest, AgentGetsExactlyTheSessionEnvironment) {
  StartServer();
  Start({"/usr/bin/env"}, {}, [&] {
    auto env = DefaultEnv();
    env.push_back("EXTRA_SECRET=must-not-reach-the-agent");
    return env;
  });
  ASSERT_EQ(Wait(), 0) << Stderr();
  auto lines = Lines(Stdout());
  std::set<std::string> got(lines.begin(), lines.end());
  std::set<std::string> want = {
      "SESSION_ID=" + session_id_, "SESSION_TOKEN=" + token_, "CONTROL_PLANE_URL=" + Url(),
      "PATH=/usr/bin:/bin",        "HOME=" + home_,           "LANG=C.UTF-8"};
  EXPECT_EQ(got, want);
  EXPECT_EQ(lines.size(), want.size());
}

// Init resets what it inherited once, at its start, and the agent's child resets only the one
// signal init ignores itself: an agent whose init was started ignoring signals ignores none.
TEST_F(InitTest, TheAgentIgnoresNoSignalThoughInitWasStartedIgnoringSome) {
  StartServer();
  struct sigaction ignore {
  }, old_int{}, old_hup{};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(::sigaction(SIGINT, &ignore, &old_int), 0);
  ASSERT_EQ(::sigaction(SIGHUP, &ignore, &old_hup), 0);
  Start({"/bin/grep", "SigIgn", "/proc/self/status"});
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGHUP, &old_hup, nullptr);
  ASSERT_EQ(Wait(), 0) << Stderr();
  EXPECT_EQ(Stdout(), "SigIgn:\t0000000000000000\n");
}

// --identity channel: init starts knowing nothing of the session and asks the control plane
// over the socket; the agent then sees exactly what it would have seen otherwise.
TEST_F(InitTest, TakesItsIdentityOverTheChannelWhenToldTo) {
  StartServer(
      IdentityServer(R"({"session_id":")" + session_id_ + R"(","token":")" + token_ + R"("})"));
  Start({"/usr/bin/env"}, {"--identity", "channel", "--port", "{port}"},
        [] { return std::vector<std::string>{"PATH=/usr/bin:/bin"}; });
  ASSERT_EQ(Wait(), 0) << Stderr();
  auto lines = Lines(Stdout());
  std::set<std::string> got(lines.begin(), lines.end());
  std::set<std::string> want = {
      "SESSION_ID=" + session_id_, "SESSION_TOKEN=" + token_, "CONTROL_PLANE_URL=" + Url(),
      "PATH=/usr/bin:/bin",        "HOME=" + home_,           "LANG=C.UTF-8"};
  EXPECT_EQ(got, want);
  EXPECT_EQ(lines.size(), want.size());
  // Asked once, without a credential; the exit report carries the token it was given.
  int asked = 0;
  for (const auto& r : server_->requests()) {
    if (r.path == "/sandbox/v1/identity") {
      ++asked;
      EXPECT_EQ(r.headers.count("authorization"), 0u);
    }
  }
  EXPECT_EQ(asked, 1);
  EXPECT_EQ(ExitEvent().headers["authorization"], "Bearer " + token_);
}

// The control plane sends the session's work along with the identity: init takes the
// variables from there and asks nothing more before it starts the agent.
TEST_F(InitTest, TakesTheWorkThatCameWithTheIdentity) {
  StartServer(
      IdentityServer(R"({"session_id":")" + session_id_ + R"(","token":")" + token_ +
                     R"(","work":{"env":{"REPO":"air\"lock"},"files":[],"egress":false}})"));
  Start({"/bin/sh", "-c", "echo \"$REPO\""},
        {"--identity", "channel", "--work", "channel", "--port", "{port}"},
        [] { return std::vector<std::string>{"PATH=/usr/bin:/bin"}; });
  ASSERT_EQ(Wait(), 0) << Stderr();
  EXPECT_EQ(Stdout(), "air\"lock\n");
  for (const auto& r : server_->requests()) {
    EXPECT_FALSE(r.path.starts_with("/sandbox/v1/work")) << r.path;
  }
}

// What came as the work is checked as strictly as GET /sandbox/v1/work's answer, and not
// replaced by that route's (which this control plane answers with a valid work).
TEST_F(InitTest, MalformedWorkWithTheIdentityStopsInitBeforeTheAgentStarts) {
  const std::string started = dir_ + "/started";
  const std::string ids = R"({"session_id":")" + session_id_ + R"(","token":")" + token_ + R"(")";
  for (const std::string& work :
       {std::string(R"("work":{"env":{"A":1}}})"), std::string(R"("work":["env"]})"),
        std::string(R"("work":{"env":{}}} trailing)"), std::string(R"("other":{}})")}) {
    StartServer(IdentityServer(ids + "," + work, 200, 0, R"({"env":{},"files":[]})"));
    Start({"/bin/sh", "-c", "touch " + started},
          {"--identity", "channel", "--work", "channel", "--port", "{port}"},
          [] { return std::vector<std::string>{"PATH=/usr/bin:/bin"}; });
    EXPECT_EQ(Wait(), 125) << work << ": " << Stderr();
    EXPECT_FALSE(std::filesystem::exists(started)) << work;
    server_.reset();
  }
}

TEST_F(InitTest, WaitsForItsIdentityWhileTheControlPlaneIsUnavailable) {
  StartServer(IdentityServer(
      R"({"token":")" + token_ + R"(","session_id":")" + session_id_ + R"("})", 200, 3));
  Start({"/bin/sh", "-c", "echo \"$SESSION_ID\""}, {"--identity", "channel", "--port", "{port}"},
        [] { return std::vector<std::string>{"PATH=/usr/bin:/bin"}; });
  ASSERT_EQ(Wait(), 0) << Stderr();
  EXPECT_EQ(Stdout(), session_id_ + "\n");
  EXPECT_NE(Stderr().find("waiting for the session's identity"), std::string::npos) << Stderr();
  size_t asked = 0;
  for (const auto& r : server_->requests()) asked += r.path == "/sandbox/v1/identity";
  EXPECT_EQ(asked, 4u);
}

// The agent's process is forked before the identity comes, and waits for it: these start
// init with its identity request held, and kill the waiting process as the OOM killer would
// (it picks it first).
class WaitingAgentTest : public InitTest {
 protected:
  // Returns once the waiting process is dead and the identity on its way; `as_it_dies` runs
  // just before the kill.
  void KillTheWaitingAgentProcess(const std::vector<std::string>& command,
                                  std::vector<std::string> options,
                                  const std::function<void()>& as_it_dies = nullptr) {
    auto release = std::make_shared<std::atomic<bool>>(false);
    auto identity =
        IdentityServer(R"({"session_id":")" + session_id_ + R"(","token":")" + token_ + R"("})");
    StartServer([release, identity](FakeControlPlane& self, int fd) {
      for (int i = 0; i < 10000 && !release->load(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      identity(self, fd);
    });
    options.insert(options.end(), {"--identity", "channel", "--port", "{port}"});
    Start(command, options, [] { return std::vector<std::string>{"PATH=/usr/bin:/bin"}; });
    auto waiting = ChildrenOf(pid_);
    ASSERT_EQ(waiting.size(), 1u) << Stderr();
    if (as_it_dies) as_it_dies();
    ASSERT_EQ(::kill(waiting[0], SIGKILL), 0);
    // Dead before init hears of its session (init reaps nothing while it waits).
    ASSERT_TRUE(WaitUntil([&] {
      return ReadFile("/proc/" + std::to_string(waiting[0]) + "/stat").find(") Z ") !=
             std::string::npos;
    }));
    release->store(true);
  }
};

// Killed while it waited, it is replaced: the agent still starts, once.
TEST_F(WaitingAgentTest, AnAgentProcessKilledWhileItWaitedIsForkedAnew) {
  KillTheWaitingAgentProcess({"/bin/sh", "-c", "echo \"$SESSION_ID\""}, {});
  if (HasFatalFailure()) return;
  ASSERT_EQ(Wait(), 0) << Stderr();
  EXPECT_EQ(Stdout(), session_id_ + "\n");
  EXPECT_NE(Stderr().find("the agent's waiting process is gone; forking anew"), std::string::npos)
      << Stderr();
  EXPECT_EQ(ExitEvent().headers["authorization"], "Bearer " + token_);
}

// The OOM kill of the process that waited is not the agent's: an agent killed later by
// something else is not reported as out of memory.
TEST_F(WaitingAgentTest, AnOomKillOfTheWaitingProcessIsNotCountedAgainstTheAgent) {
  std::string cgroup = dir_ + "/cgroup";
  ::mkdir(cgroup.c_str(), 0755);
  WriteFile(cgroup + "/memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n");
  KillTheWaitingAgentProcess({"/bin/sh", "-c", "kill -KILL $$"}, {"--cgroup-root", cgroup}, [&] {
    WriteFile(cgroup + "/memory.events", "low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\n");
  });
  if (HasFatalFailure()) return;
  EXPECT_EQ(Wait(), 128 + SIGKILL) << Stderr();
  EXPECT_EQ(
      ExitEvent().body,
      R"({"type":"agent.exited","data":{"signal":9,"signal_name":"SIGKILL","oom_killed":false}})");
}

TEST_F(InitTest, ARefusedOrMalformedIdentityStopsInitBeforeTheAgentStarts) {
  const std::string started = dir_ + "/started";
  struct Case {
    std::string body;
    int status;
  };
  const Case cases[] = {
      {R"({"error":{"code":"conflict","message":"already handed out"}})", 409},
      {R"({"session_id":"ses_1"})", 200},
      {R"({"session_id":"ses_1","token":"ast_1","extra":"x"})", 200},
      {R"({"session_id":"ses\"1","token":"ast_1"})", 200},
      {R"({"session_id":"ses_1","token":"ast 1"})", 200},
      {"not json", 200},
  };
  for (const auto& c : cases) {
    StartServer(IdentityServer(c.body, c.status));
    Start({"/bin/sh", "-c", "touch " + started}, {"--identity", "channel", "--port", "{port}"},
          [] { return std::vector<std::string>{"PATH=/usr/bin:/bin"}; });
    EXPECT_EQ(Wait(), 125) << c.body << ": " << Stderr();
    EXPECT_FALSE(std::filesystem::exists(started)) << c.body;
    EXPECT_TRUE(server_->events().empty()) << c.body;
    server_.reset();
  }
}

TEST_F(InitTest, ChannelIdentityNeedsAPortAndAnEnvironmentWithoutTheSession) {
  const std::string bin = AIRLOCK_INIT_BIN;
  const std::vector<std::string> cmd = {"--", "/bin/sh", "-c", "touch " + dir_ + "/started"};
  auto with = [&](std::vector<std::string> head) {
    head.insert(head.begin(), bin);
    head.insert(head.end(), cmd.begin(), cmd.end());
    return head;
  };
  struct Case {
    std::vector<std::string> argv;
    std::vector<std::string> env;
  };
  const std::vector<std::string> path = {"PATH=/usr/bin:/bin"};
  const std::vector<Case> cases = {
      {with({"--identity", "bogus", "--port", "7401"}), path},
      {with({"--identity", "channel"}), path},
      {with({"--identity", "channel", "--port", "7401"}), DefaultEnv()},
  };
  for (const auto& c : cases) {
    pid_t pid = Spawn(c.argv, c.env, OutPath(), ErrPath(), std::nullopt);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 125) << Stderr();
    EXPECT_TRUE(Stderr().starts_with("[airlock-init] ")) << Stderr();
    EXPECT_FALSE(std::filesystem::exists(dir_ + "/started"));
  }
}

TEST_F(InitTest, AgentGetsDefaultPathWhenInitHasNone) {
  StartServer();
  Start({"/usr/bin/env"}, {}, [&] {
    return std::vector<std::string>{"SESSION_ID=" + session_id_, "SESSION_TOKEN=" + token_,
                                    "CONTROL_PLANE_URL=" + Url()};
  });
  ASSERT_EQ(Wait(), 0) << Stderr();
  EXPECT_NE(Stdout().find("\nPATH=/usr/local/bin:/usr/bin:/bin\n"), std::string::npos) << Stdout();
}

TEST_F(InitTest, ScrubsSecretsFromItsOwnEnviron) {
  StartServer();
  Start({"/bin/sh", "-c", "echo ready; exec sleep 1000"}, {}, [&] {
    auto env = DefaultEnv();
    env.push_back("EXTRA_SECRET=must-not-stay");
    return env;
  });
  WaitForOutput("ready");
  std::string environ = ReadFile("/proc/" + std::to_string(pid_) + "/environ");
  // The kernel still serves the original area: it must be there, and hold nothing.
  ASSERT_FALSE(environ.empty());
  EXPECT_EQ(environ.find(token_), std::string::npos);
  EXPECT_EQ(environ.find(session_id_), std::string::npos);
  EXPECT_EQ(environ.find("CONTROL_PLANE_URL"), std::string::npos);
  EXPECT_EQ(environ.find("must-not-stay"), std::string::npos);
  EXPECT_EQ(environ.find_first_not_of('\0'), std::string::npos);
  ::kill(pid_, SIGTERM);
  EXPECT_EQ(Wait(), 128 + SIGTERM);
}

TEST_F(InitTest, AgentRunsUnprivileged) {
  SKIP_UNLESS_ROOT();
  StartServer();
  Start({"/bin/sh", "-c",
         "id -u; id -g; id -G; "
         "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status; "
         "cat /proc/self/oom_score_adj"});
  ASSERT_EQ(Wait(), 0) << Stderr();
  EXPECT_EQ(Lines(Stdout()),
            (std::vector<std::string>{"1000", "1000", "1000", "CapInh:\t0000000000000000",
                                      "CapPrm:\t0000000000000000", "CapEff:\t0000000000000000",
                                      "CapBnd:\t0000000000000000", "CapAmb:\t0000000000000000",
                                      "NoNewPrivs:\t1", "1000"}));
}

TEST_F(InitTest, KeepsOnlyCapKillForItself) {
  SKIP_UNLESS_ROOT();
  StartServer();
  Start({"/bin/sh", "-c", "echo ready; exec sleep 1000"});
  WaitForOutput("ready");
  std::string status = ReadFile("/proc/" + std::to_string(pid_) + "/status");
  // CAP_KILL is capability 5.
  EXPECT_NE(status.find("CapEff:\t0000000000000020"), std::string::npos) << status;
  EXPECT_NE(status.find("CapPrm:\t0000000000000020"), std::string::npos) << status;
  EXPECT_NE(status.find("CapBnd:\t0000000000000020"), std::string::npos) << status;
  EXPECT_NE(status.find("CapInh:\t0000000000000000"), std::string::npos) << status;
  ::kill(pid_, SIGTERM);
  EXPECT_EQ(Wait(), 128 + SIGTERM);
}

TEST_F(InitTest, AgentInheritsOnlyStdio) {
  StartServer();
  // `; true` keeps the shell from exec'ing ls, so the listing is the shell's own table.
  Start({"/bin/sh", "-c", "ls /proc/$$/fd; readlink /proc/$$/fd/0; true"});
  ASSERT_EQ(Wait(), 0) << Stderr();
  EXPECT_EQ(Lines(Stdout()), (std::vector<std::string>{"0", "1", "2", "/dev/null"}));
}

TEST_F(InitTest, ListensBeforeTheAgentStarts) {
  StartServer();
  // The agent's very first act is to connect: it must never find the port closed.
  Start({"/bin/bash", "-c",
         "exec 3<>/dev/tcp/127.0.0.1/${CONTROL_PLANE_URL##*:} || exit 9; "
         "printf 'GET /first HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' >&3; cat <&3"});
  ASSERT_EQ(Wait(), 0) << Stderr();
  EXPECT_NE(Stdout().find("pong /first"), std::string::npos) << Stdout();
}

TEST_F(InitTest, BridgeRelaysManyConcurrentRequests) {
  StartServer();
  Start({"/bin/sh", "-c", "echo ready; exec sleep 1000"});
  WaitForOutput("ready");
  // Let init settle its own descriptors before counting.
  size_t baseline = CountFds(pid_);
  ASSERT_GT(baseline, 0u);
  constexpr int kClients = 200;
  // All connections are open at once before any request is sent.
  std::vector<int> fds;
  for (int i = 0; i < kClients; ++i) {
    int fd = ConnectTcp(port_);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    fds.push_back(fd);
  }
  for (int i = 0; i < kClients; ++i) {
    SendAll(fds[i], "GET /r/" + std::to_string(i) + " HTTP/1.1\r\nHost: x\r\n\r\n");
  }
  for (int i = 0; i < kClients; ++i) {
    std::string response = ReadToEof(fds[i]);
    EXPECT_TRUE(response.starts_with("HTTP/1.1 200 OK")) << response;
    EXPECT_TRUE(response.ends_with("pong /r/" + std::to_string(i))) << response;
    ::close(fds[i]);
  }
  EXPECT_EQ(server_->requests().size(), static_cast<size_t>(kClients));
  EXPECT_TRUE(WaitUntil([&] { return CountFds(pid_) == baseline; }))
      << CountFds(pid_) << " descriptors, " << baseline << " before";
  ::kill(pid_, SIGTERM);
  EXPECT_EQ(Wait(), 128 + SIGTERM);
}

TEST_F(InitTest, BridgePassesHalfCloseInBothDirections) {
  // By the first byte: the server answers only after it has seen EOF ('E'); or speaks first,
  // half-closes, then listens ('S'); or is the control plane (init's exit report).
  StartServer([](FakeControlPlane& self, int fd) {
    char first = 0;
    ::recv(fd, &first, 1, MSG_PEEK);
    if (first != 'E' && first != 'S') {
      FakeControlPlane::Http(self, fd);
      return;
    }
    if (first == 'E') {
      std::string got = ReadToEof(fd);
      SendAll(fd, "echo:" + got);
      return;
    }
    SendAll(fd, "greeting");
    ::shutdown(fd, SHUT_WR);
    self.RecordRaw(ReadToEof(fd));
  });
  Start({"/bin/sh", "-c", "echo ready; exec sleep 1000"});
  WaitForOutput("ready");

  int client = ConnectTcp(port_);
  ASSERT_GE(client, 0);
  SendAll(client, "Ehello");
  ::shutdown(client, SHUT_WR);
  EXPECT_EQ(ReadToEof(client), "echo:Ehello");
  ::close(client);

  client = ConnectTcp(port_);
  ASSERT_GE(client, 0);
  SendAll(client, "S");  // lets the server choose its mode
  // Wait: the server speaks first and half-closes; the client still sends afterwards.
  EXPECT_EQ(ReadToEof(client), "greeting");
  SendAll(client, "reply");
  ::shutdown(client, SHUT_WR);
  EXPECT_TRUE(WaitUntil([&] { return !server_->raw().empty(); }));
  EXPECT_EQ(server_->raw(), std::vector<std::string>{"Sreply"});
  ::close(client);

  ::kill(pid_, SIGTERM);
  EXPECT_EQ(Wait(), 128 + SIGTERM);
}

TEST_F(InitTest, BridgeClosesConnectionWhileControlPlaneIsDown) {
  // No server yet: init warns, starts anyway, and connects per request.
  Start({"/bin/sh", "-c", "echo ready; exec sleep 1000"});
  WaitForOutput("ready");
  EXPECT_NE(Stderr().find("warning: control-plane socket"), std::string::npos) << Stderr();
  int client = ConnectTcp(port_);
  ASSERT_GE(client, 0);
  SendAll(client, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(ReadToEof(client), "");
  ::close(client);
  EXPECT_FALSE(Exited());
  // The same init serves once the control plane is there.
  StartServer();
  EXPECT_NE(HttpGet(port_, "/later").find("pong /later"), std::string::npos);
  ::kill(pid_, SIGTERM);
  EXPECT_EQ(Wait(), 128 + SIGTERM);
}

TEST_F(InitTest, ReportsExitCodeWithToken) {
  StartServer();
  Start({"/bin/sh", "-c", "exit 3"});
  EXPECT_EQ(Wait(), 3);
  Request event = ExitEvent();
  EXPECT_EQ(event.method, "POST");
  EXPECT_EQ(event.headers["authorization"], "Bearer " + token_);
  EXPECT_EQ(event.headers["host"], "airlock");
  EXPECT_EQ(event.headers["content-type"], "application/json");
  EXPECT_EQ(event.headers["connection"], "close");
  EXPECT_EQ(event.body, R"({"type":"agent.exited","data":{"exit_code":3}})");
}

TEST_F(InitTest, ReportsDeathBySignal) {
  StartServer();
  Start({"/bin/sh", "-c", "kill -KILL $$"});
  EXPECT_EQ(Wait(), 128 + SIGKILL);
  EXPECT_EQ(
      ExitEvent().body,
      R"({"type":"agent.exited","data":{"signal":9,"signal_name":"SIGKILL","oom_killed":false}})");
}

TEST_F(InitTest, ReportsOomKillFromTheCgroupCounter) {
  StartServer();
  std::string cgroup = dir_ + "/cgroup";
  ::mkdir(cgroup.c_str(), 0755);
  WriteFile(cgroup + "/memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n");
  ::chmod((cgroup + "/memory.events").c_str(), 0666);
  // The agent plays the kernel: the counter goes up, then SIGKILL.
  Start({"/bin/sh", "-c",
         "printf 'low 0\\nhigh 0\\nmax 4\\noom 2\\noom_kill 1\\n' > " + cgroup +
             "/memory.events; kill -KILL $$"},
        {"--cgroup-root", cgroup});
  EXPECT_EQ(Wait(), 128 + SIGKILL);
  EXPECT_EQ(
      ExitEvent().body,
      R"({"type":"agent.exited","data":{"signal":9,"signal_name":"SIGKILL","oom_killed":true}})");
}

TEST_F(InitTest, ReportsExecFailureAs127) {
  StartServer();
  Start({"/nonexistent/agent", "arg"});
  EXPECT_EQ(Wait(), 127);
  EXPECT_EQ(
      ExitEvent().body,
      R"({"type":"agent.exited","data":{"exit_code":127,"error":"exec /nonexistent/agent: No such file or directory"}})");
  EXPECT_NE(Stderr().find("cannot start the agent"), std::string::npos) << Stderr();
}

TEST_F(InitTest, LooksUpTheCommandInPath) {
  StartServer();
  Start({"sh", "-c", "exit 4"});
  EXPECT_EQ(Wait(), 4) << Stderr();
  Start({"no-such-command-in-path"});
  EXPECT_EQ(Wait(), 127);
}

TEST_F(InitTest, RetriesTheReportUntilTheControlPlaneIsBack) {
  Start({"/bin/sh", "-c", "exit 5"});
  ASSERT_TRUE(WaitUntil([&] { return Stderr().find("retrying") != std::string::npos; }))
      << Stderr();
  StartServer();
  EXPECT_EQ(ExitEvent().body, R"({"type":"agent.exited","data":{"exit_code":5}})");
  EXPECT_EQ(Wait(), 5);
}

TEST_F(InitTest, CapsTheLogAndKeepsDrainingTheAgent) {
  StartServer();
  constexpr size_t kLimit = 10000;
  Start({"/bin/sh", "-c", "head -c 1048576 /dev/zero; echo done >&2"},
        {"--log-limit", std::to_string(kLimit)});
  EXPECT_EQ(Wait(), 0) << Stderr();
  EXPECT_EQ(ExitEvent().body, R"({"type":"agent.exited","data":{"exit_code":0}})");
  std::string marker = "[airlock-init] log limit of 10000 bytes reached; further output dropped\n";
  std::string out = Stdout();
  EXPECT_LE(out.size(), kLimit + marker.size());
  EXPECT_EQ(out, std::string(kLimit, '\0') + marker);
}

class ForwardsSignal : public InitTest, public ::testing::WithParamInterface<int> {};

TEST_P(ForwardsSignal, ToTheAgentAndReportsItsExit) {
  StartServer();
  int sig = GetParam();
  std::string name = sigabbrev_np(sig);
  Start({"/bin/sh", "-c", "trap 'exit 42' " + name + "; echo ready; while :; do sleep 0.1; done"});
  WaitForOutput("ready");
  ASSERT_EQ(::kill(pid_, sig), 0);
  EXPECT_EQ(Wait(), 42) << Stderr();
  EXPECT_EQ(ExitEvent().body, R"({"type":"agent.exited","data":{"exit_code":42}})");
}

INSTANTIATE_TEST_SUITE_P(Signals, ForwardsSignal,
                         ::testing::Values(SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2,
                                           SIGWINCH),
                         [](const auto& info) { return std::string(sigabbrev_np(info.param)); });

TEST_F(InitTest, ReapsOrphanedGrandchildren) {
  StartServer();
  // Each ( ... & ) leaves an orphan that init inherits; the agent stays up meanwhile.
  Start({"/bin/sh", "-c",
         "(true &); (true &); (sleep 0.2 &); (sh -c 'exit 7' &); echo ready $$; "
         "exec sleep 1000"});
  WaitForOutput("ready");
  pid_t agent = std::stoi(Stdout().substr(Stdout().find("ready ") + 6));
  // Unreaped orphans would stay in init's child list as zombies.
  EXPECT_TRUE(WaitUntil([&] { return ChildrenOf(pid_) == std::vector<pid_t>{agent}; }));
  ::kill(pid_, SIGTERM);
  EXPECT_EQ(Wait(), 128 + SIGTERM);
}

TEST_F(InitTest, KillsWhatTheAgentLeftBehind) {
  StartServer();
  // One leftover in the agent's process group, one that left it with setsid.
  Start({"/bin/sh", "-c", "sleep 1000 & a=$!; setsid sleep 1000 & b=$!; echo left $a $b; exit 0"});
  EXPECT_EQ(Wait(), 0) << Stderr();
  std::istringstream in(Stdout().substr(Stdout().find("left ") + 5));
  pid_t a = 0, b = 0;
  in >> a >> b;
  ASSERT_GT(a, 0);
  ASSERT_GT(b, 0);
  EXPECT_TRUE(WaitUntil([&] { return !ProcessExists(a) && !ProcessExists(b); }));
  EXPECT_EQ(ExitEvent().body, R"({"type":"agent.exited","data":{"exit_code":0}})");
}

// The control plane serves a session only its share of connections at once. A leftover of the
// agent that holds the last of them must not keep init's exit report out: init kills what the
// agent left before it reports.
TEST_F(InitTest, ALeftoverHoldingTheSessionsLastConnectionDoesNotKeepTheReportOut) {
  auto open = std::make_shared<std::atomic<int>>(0);
  StartServer([open](FakeControlPlane& self, int fd) {
    // A share of one connection: an event that comes while another is open is refused.
    const bool full = open->fetch_add(1) > 0;
    FakeControlPlane::Serve(self, fd, full ? "503 Service Unavailable" : "202 Accepted");
    open->fetch_sub(1);
  });
  // The leftover connects and holds; the agent exits once the control plane has seen it.
  Start({"/bin/bash", "-c",
         "(exec 3<>/dev/tcp/127.0.0.1/${CONTROL_PLANE_URL##*:}; exec sleep 1000) & "
         "while [ ! -e \"$HOME/go\" ]; do sleep 0.02; done; exit 6"});
  ASSERT_TRUE(WaitUntil([&] { return open->load() == 1; })) << Stderr();
  WriteFile(home_ + "/go", "");
  EXPECT_EQ(Wait(), 6) << Stderr();
  EXPECT_EQ(ExitEvent().body, R"({"type":"agent.exited","data":{"exit_code":6}})") << Stderr();
}

TEST_F(InitTest, RejectsBadArgumentsWith125) {
  port_ = PickPort();
  struct Case {
    std::vector<std::string> argv;
    std::vector<std::string> env;
  };
  auto env = DefaultEnv();
  const std::string bin = AIRLOCK_INIT_BIN;
  const std::string start = "touch " + dir_ + "/started";
  std::vector<std::string> cmd = {"--", "/bin/sh", "-c", start};
  auto with = [&](std::vector<std::string> head) {
    head.insert(head.begin(), bin);
    head.insert(head.end(), cmd.begin(), cmd.end());
    return head;
  };
  std::vector<Case> cases = {
      {with({"--bogus"}), env},
      {with({"--uid", "abc"}), env},
      {with({"--port", "70000"}), env},
      {with({"--log-limit", "-1"}), env},
      {with({"--home", "relative"}), env},
      {{bin, "--socket", socket_path_}, env},  // no command
      {{bin, "--uid"}, env},                   // no value
      {with({}), {"SESSION_ID=" + session_id_, "CONTROL_PLANE_URL=" + Url()}},
      {with({}), {"SESSION_TOKEN=" + token_, "CONTROL_PLANE_URL=" + Url()}},
      {with({}), {"SESSION_ID=" + session_id_, "SESSION_TOKEN=" + token_}},
      {with({}), {"SESSION_ID=x", "SESSION_TOKEN=y", "CONTROL_PLANE_URL=https://example.com"}},
  };
  for (const auto& c : cases) {
    pid_t pid = Spawn(c.argv, c.env, OutPath(), ErrPath(), std::nullopt);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    std::string args;
    for (const auto& a : c.argv) {
      args += a + " ";
    }
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 125) << args;
    auto lines = Lines(Stderr());
    ASSERT_EQ(lines.size(), 1u) << args << ": " << Stderr();
    EXPECT_TRUE(lines[0].starts_with("[airlock-init] ")) << lines[0];
    EXPECT_EQ(Stdout(), "") << args;
    EXPECT_FALSE(std::filesystem::exists(dir_ + "/started")) << args;
  }
}

TEST_F(InitTest, PrintsUsage) {
  pid_t pid = Spawn({AIRLOCK_INIT_BIN, "--help"}, {}, OutPath(), ErrPath(), std::nullopt);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_TRUE(Stdout().starts_with("usage: airlock-init")) << Stdout();
}

// Rootless mode: init runs as an ordinary user. As root the test makes it one (nobody).
Ids RootlessIds() { return IsRoot() ? Ids{65534, 65534} : Ids{::geteuid(), ::getegid()}; }

TEST_F(InitTest, RootlessRunsTheAgentAsItself) {
  StartServer();
  Ids ids = RootlessIds();
  ::chown(home_.c_str(), ids.uid, ids.gid);
  Start({"/bin/sh", "-c", "id -u; exit 6"}, {}, nullptr,
        IsRoot() ? std::optional<Ids>(ids) : std::nullopt);
  EXPECT_EQ(Wait(), 6) << Stderr();
  EXPECT_EQ(Lines(Stdout()), std::vector<std::string>{std::to_string(ids.uid)});
  EXPECT_EQ(ExitEvent().body, R"({"type":"agent.exited","data":{"exit_code":6}})");
}

TEST_F(InitTest, RootlessAgentCannotReachIntoInitThoughItHasInitsUid) {
  // Same uid and no capabilities on either side: only init being non-dumpable keeps the
  // agent out of init's memory (the token) and descriptors (the host's log file).
  StartServer();
  Ids ids = RootlessIds();
  ::chown(home_.c_str(), ids.uid, ids.gid);
  Start({"/bin/sh", "-c",
         "for f in environ mem fd/1; do cat /proc/$PPID/$f >/dev/null 2>&1 && echo \"read $f\"; "
         "done; "
         "ls /proc/$PPID/fd >/dev/null 2>&1 && echo 'listed fd'; echo done"},
        {}, nullptr, IsRoot() ? std::optional<Ids>(ids) : std::nullopt);
  EXPECT_EQ(Wait(), 0) << Stderr();
  EXPECT_EQ(Lines(Stdout()), std::vector<std::string>{"done"});
}

TEST_F(InitTest, RootlessRefusesAnotherUid) {
  port_ = PickPort();
  Ids ids = RootlessIds();
  std::vector<std::string> argv = Argv({}, {"/bin/true"}, Ids{ids.uid + 1, ids.gid});
  pid_t pid = Spawn(argv, DefaultEnv(), OutPath(), ErrPath(),
                    IsRoot() ? std::optional<Ids>(ids) : std::nullopt);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 125);
  EXPECT_NE(Stderr().find("not root"), std::string::npos) << Stderr();
}

}  // namespace
