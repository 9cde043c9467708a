// The virtio-serial multiplexer: a guest Mux and a host Mux joined by a socketpair standing in
// for the port, the host connecting to a real Unix-socket server on threads of the test; and
// a host Mux facing raw bytes from a hostile guest. Nothing waits for a fixed time: every wait
// polls a condition up to a generous deadline, only so that a bug fails instead of hanging.

#include "mux.h"
#include "tests/support/temp_dir.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace airlock::init {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kDeadline = std::chrono::seconds(60);

bool WaitUntil(const std::function<bool()>& done) {
  auto deadline = Clock::now() + kDeadline;
  while (!done()) {
    if (Clock::now() > deadline) {
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

void SetTimeouts(int fd) {
  timeval tv{30, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

UniqueFd ListenUnix(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ::unlink(path.c_str());
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(fd.get(), SOMAXCONN) != 0) {
    ADD_FAILURE() << "listen " << path << ": " << std::strerror(errno);
    return {};
  }
  return fd;
}

UniqueFd ConnectUnix(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ADD_FAILURE() << "connect " << path << ": " << std::strerror(errno);
    return {};
  }
  SetTimeouts(fd.get());
  return fd;
}

bool SendAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = ::send(fd, data, size, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return false;
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

bool SendAll(int fd, const std::string& data) { return SendAll(fd, data.data(), data.size()); }

// What a client reads until the connection ends. `closed` is false when the read timed out
// (the test's guard against a hang), true on EOF or a reset.
struct Received {
  std::string data;
  bool closed = false;
};

Received ReadToEnd(int fd, Clock::time_point deadline = Clock::now() + kDeadline) {
  Received out;
  char buf[65536];
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    pollfd p{fd, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) == 0) {
      return out;  // timed out: `closed` stays false
    }
    ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
      continue;
    }
    if (n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE))) {
      out.closed = true;
      return out;
    }
    if (n < 0) {
      return out;
    }
    out.data.append(buf, static_cast<size_t>(n));
  }
}

std::string ReadExactly(int fd, size_t size) {
  std::string out;
  char buf[4096];
  while (out.size() < size) {
    ssize_t n = ::recv(fd, buf, std::min(sizeof(buf), size - out.size()), 0);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      break;
    }
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

// Deterministic bytes for a large transfer, and their checksum (FNV-1a).
struct Noise {
  uint64_t state;
  explicit Noise(uint64_t seed) : state(seed | 1) {}
  void Fill(char* out, size_t size) {
    for (size_t i = 0; i < size; ++i) {
      state ^= state << 13;
      state ^= state >> 7;
      state ^= state << 17;
      out[i] = static_cast<char>(state);
    }
  }
};

struct Fnv {
  uint64_t hash = 1469598103934665603ULL;
  void Add(const char* data, size_t size) {
    for (size_t i = 0; i < size; ++i) {
      hash = (hash ^ static_cast<unsigned char>(data[i])) * 1099511628211ULL;
    }
  }
};

// The control plane's stand-in. A connection whose first byte is 'P' gets `push_bytes` pushed
// at it and is never read; any other is echoed, and "<eof>" follows the client's EOF — sent
// only after the EOF, so a client that reads it knows its half-close went through.
class Server {
 public:
  explicit Server(std::string path, size_t push_bytes = 8 << 20)
      : path_(std::move(path)), push_bytes_(push_bytes) {
    Listen();
  }
  ~Server() {
    Release();
    StopListening();
    std::lock_guard lock(mu_);
    for (auto& t : handlers_) {
      t.join();
    }
  }

  void Listen() {
    listener_ = ListenUnix(path_);
    stop_ = false;
    acceptor_ = std::thread([this] { AcceptLoop(); });
  }

  // Closes the listener and removes the path: the next connect fails. Handlers go on.
  void StopListening() {
    if (!acceptor_.joinable()) {
      return;
    }
    stop_ = true;
    acceptor_.join();
    listener_.Reset();
    ::unlink(path_.c_str());
  }

  size_t accepted() const { return accepted_; }

  // What 'G' connections read after their own EOF, each once the client's EOF came.
  std::vector<std::string> heard() {
    std::lock_guard lock(hold_mu_);
    return heard_;
  }

  // Lets 'H' connections read.
  void Release() {
    std::lock_guard lock(hold_mu_);
    released_ = true;
    hold_cv_.notify_all();
  }

 private:
  void AcceptLoop() {
    while (!stop_) {
      pollfd p{listener_.get(), POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) {
        continue;
      }
      int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        continue;
      }
      ++accepted_;
      std::lock_guard lock(mu_);
      handlers_.emplace_back([this, fd] { Handle(UniqueFd(fd)); });
    }
  }

  void Handle(UniqueFd fd) {
    SetTimeouts(fd.get());
    char first = 0;
    if (::recv(fd.get(), &first, 1, 0) != 1) {
      return;
    }
    if (first == 'G') {
      // Says its piece and ends its side first, then listens to the end.
      SendAll(fd.get(), "hi");
      ::shutdown(fd.get(), SHUT_WR);
      Received rest = ReadToEnd(fd.get());
      std::lock_guard lock(hold_mu_);
      heard_.push_back(rest.data);
      return;
    }
    if (first == 'H') {
      // Ends its side at once, then takes nothing until Release(): the host keeps the bytes.
      ::shutdown(fd.get(), SHUT_WR);
      {
        std::unique_lock lock(hold_mu_);
        hold_cv_.wait(lock, [this] { return released_; });
      }
      ReadToEnd(fd.get());
      return;
    }
    if (first == 'P') {
      std::string chunk(64 * 1024, 'p');
      // Blocks once the stream's window is full; ends when the host closes the socket.
      for (size_t sent = 0; sent < push_bytes_ && SendAll(fd.get(), chunk); sent += chunk.size()) {
      }
      return;
    }
    if (!SendAll(fd.get(), &first, 1)) {
      return;
    }
    char buf[65536];
    for (;;) {
      ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n <= 0) {
        if (n == 0) {
          SendAll(fd.get(), "<eof>");
        }
        return;
      }
      if (!SendAll(fd.get(), buf, static_cast<size_t>(n))) {
        return;
      }
    }
  }

  std::string path_;
  size_t push_bytes_;
  UniqueFd listener_;
  std::atomic<bool> stop_{false};
  std::atomic<size_t> accepted_{0};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<std::thread> handlers_;
  std::mutex hold_mu_;
  std::condition_variable hold_cv_;
  bool released_ = false;
  std::vector<std::string> heard_;
};

// A guest and a host Mux on threads of their own, joined by a socketpair.
class MuxPair {
 public:
  explicit MuxPair(Mux::Options options = {}) {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    host_port_ = UniqueFd(::dup(sv[1]));
    auto guest = Mux::Guest(UniqueFd(sv[0]), ListenUnix(guest_path()), options);
    auto host = Mux::Host(UniqueFd(sv[1]), server_path(), options);
    EXPECT_TRUE(guest.has_value()) << guest.error();
    EXPECT_TRUE(host.has_value()) << host.error();
    guest_ = std::move(*guest);
    host_ = std::move(*host);
    guest_thread_ = std::thread([this] {
      guest_reason_ = guest_->Run();
      guest_done_ = true;
    });
    host_thread_ = std::thread([this] {
      host_reason_ = host_->Run();
      host_done_ = true;
    });
  }
  ~MuxPair() { Stop(); }

  std::string guest_path() const { return dir_ / "guest.sock"; }
  std::string server_path() const { return dir_ / "control.sock"; }
  // Another descriptor of the host's end of the port, to break it from outside.
  int host_port() const { return host_port_.get(); }

  UniqueFd Connect() { return ConnectUnix(guest_path()); }

  // Waits for both Run()s to return by themselves.
  bool WaitEnded() {
    return WaitUntil([this] { return guest_done_ && host_done_; });
  }

  // Ends both muxes (if they run) and joins them; stats and reasons are safe to read after.
  void Stop() {
    if (guest_thread_.joinable()) {
      guest_->Stop();
      guest_thread_.join();
    }
    if (host_thread_.joinable()) {
      host_->Stop();
      host_thread_.join();
    }
  }

  const Mux& guest() const { return *guest_; }
  const Mux& host() const { return *host_; }
  const std::string& guest_reason() const { return guest_reason_; }
  const std::string& host_reason() const { return host_reason_; }

 private:
  testing::TempDir dir_{"mux_test"};
  UniqueFd host_port_;
  std::unique_ptr<Mux> guest_;
  std::unique_ptr<Mux> host_;
  std::thread guest_thread_;
  std::thread host_thread_;
  std::string guest_reason_;
  std::string host_reason_;
  std::atomic<bool> guest_done_{false};
  std::atomic<bool> host_done_{false};
};

TEST(Mux, ManyConcurrentConnectionsEchoTheirOwnData) {
  MuxPair pair;
  Server server(pair.server_path());
  constexpr int kClients = 200;
  std::vector<UniqueFd> clients;
  std::vector<std::string> sent;
  // All open at once, all written before any is read: 200 streams live together.
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(pair.Connect());
    ASSERT_TRUE(clients.back().valid());
    std::string data = "client " + std::to_string(i) + ":";
    for (int j = 0; j < 200; ++j) {
      data += std::to_string(i * 7919 + j);
    }
    sent.push_back(data);
    ASSERT_TRUE(SendAll(clients.back().get(), data));
  }
  for (int i = 0; i < kClients; ++i) {
    ::shutdown(clients[i].get(), SHUT_WR);
  }
  auto deadline = Clock::now() + kDeadline;  // one for all: a hang fails once, not 200 times
  for (int i = 0; i < kClients; ++i) {
    Received got = ReadToEnd(clients[i].get(), deadline);
    EXPECT_TRUE(got.closed) << "client " << i;
    EXPECT_EQ(got.data, sent[i] + "<eof>") << "client " << i;
  }
  // Every stream ends on both sides (CLOSE reached the guest).
  clients.clear();
  pair.Stop();
  EXPECT_EQ(pair.guest_reason(), "stopped");
  EXPECT_EQ(pair.guest().stats().opened, static_cast<uint64_t>(kClients));
  EXPECT_EQ(pair.host().stats().opened, static_cast<uint64_t>(kClients));
  EXPECT_EQ(pair.host().stats().refused, 0u);
  EXPECT_EQ(pair.host().stats().resets_sent, 0u);
  EXPECT_EQ(pair.guest().stats().resets_sent, 0u);
  EXPECT_EQ(pair.guest().streams(), 0u);
  EXPECT_EQ(pair.host().streams(), 0u);
}

TEST(Mux, LargeTransferBothWaysArrivesIntact) {
  MuxPair pair;
  Server server(pair.server_path());
  constexpr size_t kBytes = 20 << 20;
  UniqueFd client = pair.Connect();
  ASSERT_TRUE(client.valid());
  Fnv expected;
  std::thread writer([&] {
    Noise noise(42);
    std::vector<char> chunk(100000);
    chunk[0] = 'E';  // not 'P': echo
    size_t sent = 0;
    bool first = true;
    while (sent < kBytes) {
      size_t n = std::min(chunk.size(), kBytes - sent);
      noise.Fill(chunk.data() + (first ? 1 : 0), n - (first ? 1 : 0));
      first = false;
      expected.Add(chunk.data(), n);
      if (!SendAll(client.get(), chunk.data(), n)) {
        break;
      }
      sent += n;
    }
    ::shutdown(client.get(), SHUT_WR);
  });
  Fnv got;
  size_t received = 0;
  std::string tail;
  char buf[65536];
  for (;;) {
    ssize_t n = ::recv(client.get(), buf, sizeof(buf), 0);
    if (n <= 0) {
      break;
    }
    // The last 5 bytes are "<eof>"; hold back a tail until the end.
    tail.append(buf, static_cast<size_t>(n));
    if (tail.size() > 5) {
      got.Add(tail.data(), tail.size() - 5);
      received += tail.size() - 5;
      tail.erase(0, tail.size() - 5);
    }
  }
  writer.join();
  EXPECT_EQ(received, kBytes);
  EXPECT_EQ(tail, "<eof>");
  EXPECT_EQ(got.hash, expected.hash);
}

TEST(Mux, HalfCloseStillReceivesTheReply) {
  MuxPair pair;
  Server server(pair.server_path());
  UniqueFd client = pair.Connect();
  ASSERT_TRUE(client.valid());
  ASSERT_TRUE(SendAll(client.get(), "hello"));
  EXPECT_EQ(ReadExactly(client.get(), 5), "hello");
  ASSERT_EQ(::shutdown(client.get(), SHUT_WR), 0);
  // "<eof>" is written by the server only once it saw our FIN, and after it.
  Received got = ReadToEnd(client.get());
  EXPECT_TRUE(got.closed);
  EXPECT_EQ(got.data, "<eof>");
}

TEST(Mux, HalfCloseTheOtherWayServerEndsFirst) {
  MuxPair pair;
  Server server(pair.server_path());
  UniqueFd client = pair.Connect();
  ASSERT_TRUE(SendAll(client.get(), "G"));
  // The server's FIN reaches the client as EOF while the client's side stays open...
  Received got = ReadToEnd(client.get());
  EXPECT_TRUE(got.closed);
  EXPECT_EQ(got.data, "hi");
  // ... and what the client sends afterwards still reaches the server.
  ASSERT_TRUE(SendAll(client.get(), "still here"));
  ::shutdown(client.get(), SHUT_WR);
  ASSERT_TRUE(WaitUntil([&] { return !server.heard().empty(); }));
  EXPECT_EQ(server.heard()[0], "still here");
}

TEST(Mux, AStalledReaderDoesNotBlockOtherStreams) {
  constexpr size_t kPush = 16 << 20;
  MuxPair pair;
  Server server(pair.server_path(), kPush);
  // The server pushes 16 MiB at this one, which does not read for now: it fills its own
  // window only.
  UniqueFd stalled = pair.Connect();
  ASSERT_TRUE(SendAll(stalled.get(), "P"));
  // Meanwhile others move several times the window, each way.
  for (int round = 0; round < 3; ++round) {
    UniqueFd client = pair.Connect();
    ASSERT_TRUE(client.valid());
    std::string data(2 << 20, static_cast<char>('a' + round));
    std::thread writer([&] {
      SendAll(client.get(), data);
      ::shutdown(client.get(), SHUT_WR);
    });
    Received got = ReadToEnd(client.get());
    writer.join();
    EXPECT_TRUE(got.closed) << "round " << round;
    EXPECT_EQ(got.data.size(), data.size() + 5) << "round " << round;
    EXPECT_TRUE(got.data == data + "<eof>") << "round " << round;
  }
  // The stalled stream was only paused: now it reads all of the push, and nothing else.
  ::shutdown(stalled.get(), SHUT_WR);
  Received got = ReadToEnd(stalled.get());
  EXPECT_TRUE(got.closed);
  EXPECT_EQ(got.data.size(), kPush);
  EXPECT_EQ(got.data.find_first_not_of('p'), std::string::npos);
  pair.Stop();
  // Nobody broke flow control: no stream was reset.
  EXPECT_EQ(pair.guest().stats().resets_sent + pair.host().stats().resets_sent, 0u);
  EXPECT_EQ(pair.guest().stats().resets_received + pair.host().stats().resets_received, 0u);
}

TEST(Mux, AGuestAtTheCapIsNeverRefused) {
  // The guest counts a stream until the host's CLOSE, so it never opens one the host would
  // refuse, however fast streams come and go; the rest wait in the listener's backlog.
  Mux::Options options;
  options.max_streams = 4;
  MuxPair pair(options);
  Server server(pair.server_path());
  auto deadline = Clock::now() + kDeadline;
  for (int round = 0; round < 5; ++round) {
    std::vector<UniqueFd> clients;
    for (int i = 0; i < 20; ++i) {
      clients.push_back(pair.Connect());
      ASSERT_TRUE(SendAll(clients.back().get(), "c" + std::to_string(i)));
      ::shutdown(clients.back().get(), SHUT_WR);
    }
    for (int i = 0; i < 20; ++i) {
      Received got = ReadToEnd(clients[i].get(), deadline);
      EXPECT_TRUE(got.closed);
      EXPECT_EQ(got.data, "c" + std::to_string(i) + "<eof>");
    }
  }
  pair.Stop();
  EXPECT_EQ(pair.host().stats().refused, 0u);
  EXPECT_EQ(pair.host().stats().opened, 100u);
  EXPECT_EQ(pair.guest().stats().resets_received, 0u);
}

TEST(Mux, AStreamTheHostStillHoldsKeepsItsSlot) {
  // Both FINs have crossed, but the host still holds bytes its local reader has not taken:
  // the stream still counts on the host, so the guest must not count it free either.
  Mux::Options options;
  options.max_streams = 1;
  MuxPair pair(options);
  Server server(pair.server_path());
  UniqueFd held = pair.Connect();
  ASSERT_TRUE(SendAll(held.get(), "H" + std::string(250 * 1024, 'h')));
  ::shutdown(held.get(), SHUT_WR);
  Received got = ReadToEnd(held.get());
  ASSERT_TRUE(got.closed);  // the server's FIN: the guest has finished both directions
  UniqueFd next = pair.Connect();
  ASSERT_TRUE(SendAll(next.get(), "next"));
  ::shutdown(next.get(), SHUT_WR);
  // Not a condition of passing, only a chance for a guest that freed the slot too early to
  // open the stream (and have it refused) before the server is released.
  pollfd p{next.get(), POLLIN, 0};
  ::poll(&p, 1, 300);
  server.Release();
  got = ReadToEnd(next.get());
  EXPECT_TRUE(got.closed);
  EXPECT_EQ(got.data, "next<eof>");
  pair.Stop();
  EXPECT_EQ(pair.host().stats().refused, 0u);
}

TEST(Mux, UnreachableControlPlaneClosesOnlyThatConnection) {
  MuxPair pair;
  Server server(pair.server_path());
  UniqueFd before = pair.Connect();
  ASSERT_TRUE(SendAll(before.get(), "abc"));
  ASSERT_EQ(ReadExactly(before.get(), 3), "abc");

  server.StopListening();
  UniqueFd refused = pair.Connect();
  ASSERT_TRUE(refused.valid());
  SendAll(refused.get(), "xyz");  // may fail once the guest closed it
  Received got = ReadToEnd(refused.get());
  EXPECT_TRUE(got.closed) << "the guest must close a connection the host could not connect";
  EXPECT_EQ(got.data, "");

  // The stream opened before is unaffected.
  ASSERT_TRUE(SendAll(before.get(), "def"));
  EXPECT_EQ(ReadExactly(before.get(), 3), "def");

  server.Listen();
  UniqueFd after = pair.Connect();
  ASSERT_TRUE(SendAll(after.get(), "ghi"));
  EXPECT_EQ(ReadExactly(after.get(), 3), "ghi");

  before.Reset();
  after.Reset();
  pair.Stop();
  EXPECT_EQ(pair.host().stats().refused, 1u);
  EXPECT_EQ(pair.guest().stats().resets_received, 1u);
  EXPECT_EQ(pair.host().stats().opened, 2u);
}

TEST(Mux, PortClosedEndsEveryStreamAndRun) {
  MuxPair pair;
  Server server(pair.server_path());
  std::vector<UniqueFd> clients;
  for (int i = 0; i < 3; ++i) {
    clients.push_back(pair.Connect());
    ASSERT_TRUE(SendAll(clients.back().get(), "abc"));
    ASSERT_EQ(ReadExactly(clients.back().get(), 3), "abc");
  }
  // The VM goes away: its end of the port is gone, both directions.
  ASSERT_EQ(::shutdown(pair.host_port(), SHUT_RDWR), 0);
  ASSERT_TRUE(pair.WaitEnded()) << "Run() must return when the port closes";
  EXPECT_NE(pair.guest_reason().find("port"), std::string::npos) << pair.guest_reason();
  EXPECT_NE(pair.host_reason().find("port"), std::string::npos) << pair.host_reason();
  for (auto& client : clients) {
    Received got = ReadToEnd(client.get());
    EXPECT_TRUE(got.closed);
    EXPECT_EQ(got.data, "");
  }
  pair.Stop();
  EXPECT_EQ(pair.guest().streams(), 0u);
  EXPECT_EQ(pair.host().streams(), 0u);
}

// A host Mux driven by the test thread, facing raw bytes written at it as the guest.
class HostileGuest {
 public:
  explicit HostileGuest(Mux::Options options = {}) : options_(options) {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
    raw_ = UniqueFd(sv[0]);
    server_ = std::make_unique<Server>(dir_ / "control.sock");
    auto host = Mux::Host(UniqueFd(sv[1]), dir_ / "control.sock", options);
    EXPECT_TRUE(host.has_value()) << host.error();
    host_ = std::move(*host);
  }
  ~HostileGuest() {
    host_.reset();  // closes the server's connections, so its handlers end
    server_.reset();
  }

  struct Frame {
    Mux::Frame type;
    uint32_t id;
    std::string payload;
  };

  static std::string Encode(uint8_t type, uint32_t id, uint32_t length,
                            const std::string& payload = "") {
    std::string out(Mux::kHeaderSize, '\0');
    out[0] = static_cast<char>(type);
    for (int i = 0; i < 4; ++i) {
      out[1 + i] = static_cast<char>(id >> (24 - 8 * i));
      out[5 + i] = static_cast<char>(length >> (24 - 8 * i));
    }
    return out + payload;
  }
  static std::string Encode(Mux::Frame type, uint32_t id, const std::string& payload = "") {
    return Encode(static_cast<uint8_t>(type), id, static_cast<uint32_t>(payload.size()), payload);
  }

  // Writes everything, letting the host run whenever the socketpair is full.
  void Send(const std::string& bytes) {
    size_t sent = 0;
    auto deadline = Clock::now() + kDeadline;
    while (sent < bytes.size() && Clock::now() < deadline) {
      ssize_t n = ::send(raw_.get(), bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n > 0) {
        sent += static_cast<size_t>(n);
      } else {
        Step();
      }
    }
    EXPECT_EQ(sent, bytes.size());
  }

  // One non-blocking send; consumes what went out from the front of `bytes`.
  ssize_t SendSome(std::string& bytes) {
    ssize_t n = ::send(raw_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n > 0) {
      bytes.erase(0, static_cast<size_t>(n));
    }
    return n;
  }

  // Runs the host until `done` holds, or it ended, or the deadline.
  bool RunUntil(const std::function<bool()>& done) {
    auto deadline = Clock::now() + kDeadline;
    while (!done()) {
      if (Clock::now() > deadline) {
        return false;
      }
      Step();
    }
    return true;
  }

  // What the host said, frame by frame.
  const std::vector<Frame>& frames() const { return frames_; }
  bool Got(Mux::Frame type, uint32_t id, const std::string& payload = "") const {
    for (const auto& f : frames_) {
      if (f.type == type && f.id == id && (payload.empty() || f.payload == payload)) {
        return true;
      }
    }
    return false;
  }
  // All DATA received on a stream: the host frames what it reads as it comes, so "ping" may
  // arrive as "p" and "ing".
  std::string DataOf(uint32_t id) const {
    std::string out;
    for (const auto& f : frames_) {
      if (f.type == Mux::Frame::kData && f.id == id) {
        out += f.payload;
      }
    }
    return out;
  }
  size_t Count(Mux::Frame type) const {
    size_t n = 0;
    for (const auto& f : frames_) {
      n += f.type == type ? 1 : 0;
    }
    return n;
  }

  Mux& host() { return *host_; }
  void CloseRaw() { raw_.Reset(); }

 private:
  void Step() {
    pollfd p[2] = {{host_->fd(), POLLIN, 0}, {raw_.get(), POLLIN, 0}};
    ::poll(p, 2, 10);
    host_->Process();
    char buf[65536];
    for (;;) {
      ssize_t n = ::recv(raw_.get(), buf, sizeof(buf), 0);
      if (n <= 0) {
        break;
      }
      input_.append(buf, static_cast<size_t>(n));
    }
    while (input_.size() >= Mux::kHeaderSize) {
      auto* h = reinterpret_cast<const unsigned char*>(input_.data());
      uint32_t id = (uint32_t{h[1]} << 24) | (uint32_t{h[2]} << 16) | (uint32_t{h[3]} << 8) | h[4];
      uint32_t len = (uint32_t{h[5]} << 24) | (uint32_t{h[6]} << 16) | (uint32_t{h[7]} << 8) | h[8];
      if (input_.size() < Mux::kHeaderSize + len) {
        break;
      }
      frames_.push_back({static_cast<Mux::Frame>(h[0]), id, input_.substr(Mux::kHeaderSize, len)});
      input_.erase(0, Mux::kHeaderSize + len);
    }
  }

  Mux::Options options_;
  testing::TempDir dir_{"mux_test"};
  UniqueFd raw_;
  std::unique_ptr<Server> server_;
  std::unique_ptr<Mux> host_;
  std::string input_;
  std::vector<Frame> frames_;
};

using F = Mux::Frame;

TEST(MuxHostile, UnknownFrameTypeEndsTheMux) {
  HostileGuest g;
  g.Send(HostileGuest::Encode(0x7f, 1, 0));
  ASSERT_TRUE(g.RunUntil([&] { return g.host().ended(); }));
  EXPECT_EQ(g.host().reason(), "protocol error: unknown frame type 127");
}

TEST(MuxHostile, GarbageHeaderEndsTheMux) {
  HostileGuest g;
  g.Send(std::string("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(g.RunUntil([&] { return g.host().ended(); }));
  EXPECT_NE(g.host().reason().find("protocol error"), std::string::npos) << g.host().reason();
}

TEST(MuxHostile, OversizedLengthEndsTheMuxWithoutWaitingForThePayload) {
  HostileGuest g;
  g.Send(HostileGuest::Encode(F::kOpen, 1));
  // A 4 GiB DATA frame: refused on its header alone, nothing is buffered for it.
  g.Send(HostileGuest::Encode(static_cast<uint8_t>(F::kData), 1, 0xffffffffU));
  ASSERT_TRUE(g.RunUntil([&] { return g.host().ended(); }));
  EXPECT_EQ(g.host().reason(), "protocol error: DATA frame of 4294967295 bytes");
  EXPECT_EQ(g.host().streams(), 0u);
}

TEST(MuxHostile, ControlFrameWithAPayloadEndsTheMux) {
  HostileGuest g;
  g.Send(HostileGuest::Encode(static_cast<uint8_t>(F::kOpen), 1, 4, "abcd"));
  ASSERT_TRUE(g.RunUntil([&] { return g.host().ended(); }));
  EXPECT_EQ(g.host().reason(), "protocol error: OPEN frame of 4 bytes");
}

TEST(MuxHostile, DataBeyondTheWindowResetsOnlyThatStream) {
  Mux::Options options;
  options.window = 4096;
  HostileGuest g(options);
  g.Send(HostileGuest::Encode(F::kOpen, 1));
  g.Send(HostileGuest::Encode(F::kData, 1, std::string(8192, 'x')));
  ASSERT_TRUE(g.RunUntil([&] { return g.Got(F::kReset, 1); }));
  EXPECT_FALSE(g.host().ended()) << g.host().reason();
  EXPECT_EQ(g.host().streams(), 0u);
  EXPECT_EQ(g.host().stats().resets_sent, 1u);
  // Late frames for the closed stream are dropped, not fatal.
  g.Send(HostileGuest::Encode(F::kData, 1, "late"));
  g.Send(HostileGuest::Encode(F::kFin, 1));
  ASSERT_TRUE(g.RunUntil([&] { return g.host().stats().dropped_frames == 2; }));
  // Another stream works.
  g.Send(HostileGuest::Encode(F::kOpen, 2));
  g.Send(HostileGuest::Encode(F::kData, 2, "ping"));
  ASSERT_TRUE(g.RunUntil([&] { return g.DataOf(2) == "ping"; }));
  EXPECT_FALSE(g.host().ended()) << g.host().reason();
  EXPECT_LE(g.host().buffered(), 2u << 20);
}

// A VM restored from hibernation may carry streams of the host mux that was there before;
// this host resets them (the guest forgets them) and goes on. Above its first OPEN the rule
// holds again.
TEST(MuxHostile, AHostNewToTheGuestResetsTheGuestsEarlierStreams) {
  HostileGuest g;
  g.Send(HostileGuest::Encode(F::kFin, 5));
  g.Send(HostileGuest::Encode(F::kData, 6, "stale"));
  ASSERT_TRUE(g.RunUntil([&] { return g.Got(F::kReset, 5) && g.Got(F::kReset, 6); }));
  EXPECT_FALSE(g.host().ended()) << g.host().reason();
  g.Send(HostileGuest::Encode(F::kOpen, 9));
  g.Send(HostileGuest::Encode(F::kData, 9, "fresh"));
  ASSERT_TRUE(g.RunUntil([&] { return g.DataOf(9) == "fresh"; }));
  g.Send(HostileGuest::Encode(F::kWindow, 7, std::string("\0\0\x10\0", 4)));
  ASSERT_TRUE(g.RunUntil([&] { return g.Got(F::kReset, 7); }));
  EXPECT_FALSE(g.host().ended()) << g.host().reason();
  EXPECT_EQ(g.host().streams(), 1u) << "nothing was made for the stale streams";
  g.Send(HostileGuest::Encode(F::kData, 1000, "who?"));
  ASSERT_TRUE(g.RunUntil([&] { return g.host().ended(); }));
  EXPECT_EQ(g.host().reason(), "protocol error: DATA for stream 1000, never opened");
}

TEST(MuxHostile, FramesForAStreamNeverOpenedEndTheMux) {
  HostileGuest g;
  g.Send(HostileGuest::Encode(F::kOpen, 1));
  g.Send(HostileGuest::Encode(F::kData, 1000, "who?"));
  ASSERT_TRUE(g.RunUntil([&] { return g.host().ended(); }));
  EXPECT_EQ(g.host().reason(), "protocol error: DATA for stream 1000, never opened");
}

TEST(MuxHostile, OpenOfAnIdInUseEndsTheMux) {
  HostileGuest g;
  g.Send(HostileGuest::Encode(F::kOpen, 5));
  g.Send(HostileGuest::Encode(F::kOpen, 5));
  ASSERT_TRUE(g.RunUntil([&] { return g.host().ended(); }));
  EXPECT_EQ(g.host().reason(), "protocol error: OPEN of stream 5, not above 5");
}

TEST(MuxHostile, CloseFromTheGuestEndsTheMux) {
  HostileGuest g;
  g.Send(HostileGuest::Encode(F::kOpen, 1));
  g.Send(HostileGuest::Encode(F::kClose, 1));
  ASSERT_TRUE(g.RunUntil([&] { return g.host().ended(); }));
  EXPECT_EQ(g.host().reason(), "protocol error: CLOSE from the guest, stream 1");
}

TEST(MuxHostile, WindowOverflowResetsTheStream) {
  HostileGuest g;
  g.Send(HostileGuest::Encode(F::kOpen, 1));
  g.Send(HostileGuest::Encode(F::kWindow, 1, std::string("\xff\xff\xff\xff", 4)));
  ASSERT_TRUE(g.RunUntil([&] { return g.Got(F::kReset, 1); }));
  EXPECT_FALSE(g.host().ended());
  EXPECT_EQ(g.host().streams(), 0u);
}

TEST(MuxHostile, OpenFloodBeyondTheCapIsRefusedAndMemoryStaysBounded) {
  Mux::Options options;
  HostileGuest g(options);
  std::string flood;
  for (uint32_t id = 1; id <= 300; ++id) {
    flood += HostileGuest::Encode(F::kOpen, id);
  }
  // Every stream also fills its whole window toward a server that echoes: the host holds
  // what the server has not taken yet.
  g.Send(flood);
  ASSERT_TRUE(g.RunUntil([&] { return g.Count(F::kReset) == 300 - options.max_streams; }));
  EXPECT_FALSE(g.host().ended()) << g.host().reason();
  EXPECT_EQ(g.host().streams(), options.max_streams);
  EXPECT_EQ(g.host().stats().refused, 300 - options.max_streams);
  for (uint32_t id = 257; id <= 300; ++id) {
    EXPECT_TRUE(g.Got(F::kReset, id)) << id;
  }
  EXPECT_FALSE(g.Got(F::kReset, 256));
  // Data on a refused stream is dropped; the accepted ones still work.
  g.Send(HostileGuest::Encode(F::kData, 300, "dropped"));
  g.Send(HostileGuest::Encode(F::kData, 1, "ping"));
  ASSERT_TRUE(g.RunUntil([&] { return g.DataOf(1) == "ping"; }));
  EXPECT_EQ(g.host().stats().dropped_frames, 1u);
  EXPECT_LE(g.host().buffered(), options.max_streams * size_t{options.window} + (2u << 20));
}

TEST(MuxHostile, AGuestThatNeverReadsThePortStallsOnlyItself) {
  // Every OPEN beyond the cap makes the host answer with a RESET. A guest that floods them and
  // never reads would grow the host's output without end; the host stops reading instead.
  Mux::Options options;
  options.max_streams = 4;
  HostileGuest g(options);
  std::string chunk;
  uint32_t id = 0;
  size_t sent = 0;
  constexpr size_t kFlood = 8 << 20;  // far more than the host may queue
  for (;;) {
    if (chunk.empty()) {
      for (int i = 0; i < 4096; ++i) {
        chunk += HostileGuest::Encode(F::kOpen, ++id);
      }
    }
    ssize_t n = g.SendSome(chunk);
    g.host().Process();
    if (n <= 0 && g.SendSome(chunk) <= 0) {
      break;  // a Process() came and went and the port is still full: the host stopped reading
    }
    sent += static_cast<size_t>(std::max<ssize_t>(n, 0));
    ASSERT_LT(sent, kFlood) << "the host kept reading a guest that never reads";
  }
  EXPECT_FALSE(g.host().ended()) << g.host().reason();
  EXPECT_LE(g.host().buffered(), options.max_streams * size_t{options.window} + (2u << 20));
  // It did take a good part of the flood first (one RESET answers each refused OPEN).
  EXPECT_GT(g.host().stats().refused, 64u * 1024);
}

TEST(MuxHostile, FullWindowsOnEveryStreamStayWithinTheBound) {
  // The server never reads ('P' pushes instead), so what the guest sends stays with the host:
  // at most the window per stream, whatever the guest tries.
  Mux::Options options;
  options.max_streams = 8;
  options.window = 64 * 1024;
  HostileGuest g(options);
  for (uint32_t id = 1; id <= options.max_streams; ++id) {
    g.Send(HostileGuest::Encode(F::kOpen, id));
    g.Send(HostileGuest::Encode(F::kData, id, "P"));
    // 4 MiB per stream, far past any grant it gets; the window check stops it.
    for (int i = 0; i < 256; ++i) {
      g.Send(HostileGuest::Encode(F::kData, id, std::string(Mux::kMaxData, 'x')));
      if (g.Got(F::kReset, id)) {
        break;
      }
    }
    ASSERT_TRUE(g.RunUntil([&] { return g.Got(F::kReset, id); })) << id;
    EXPECT_LE(g.host().buffered(), options.max_streams * size_t{options.window} + (2u << 20));
  }
  EXPECT_FALSE(g.host().ended()) << g.host().reason();
}

TEST(MuxHostile, ThePortClosingEndsTheHost) {
  HostileGuest g;
  g.Send(HostileGuest::Encode(F::kOpen, 1));
  ASSERT_TRUE(g.RunUntil([&] { return g.host().streams() == 1; }));
  // A frame cut short, then the guest vanishes.
  g.Send(HostileGuest::Encode(F::kData, 1, "abcdef").substr(0, 12));
  g.CloseRaw();
  ASSERT_TRUE(g.RunUntil([&] { return g.host().ended(); }));
  EXPECT_EQ(g.host().reason(), "port closed");
  EXPECT_EQ(g.host().streams(), 0u);
}

}  // namespace
}  // namespace airlock::init
