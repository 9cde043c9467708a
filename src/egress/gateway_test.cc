#include "egress/gateway.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <csignal>
#include <filesystem>
#include <functional>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include "common/json_util.h"
#include "egress/authority.h"
#include "net/http_server.h"
#include "net/tls.h"
#include "tests/llm/fake_upstream.h"
#include "tests/llm/test_tls.h"
#include "tests/support/tcp_origin.h"

// The gateway as the control plane runs it: the network module's HttpServer on per-session
// Unix sockets, the gateway as its gate for proxy requests, and real origins on loopback
// sockets (allowed by exact address, as an operator allows a private service). The clients
// are raw sockets and OpenSSL, so that every byte on the wire is the test's.

namespace airlock::egress {
namespace {

namespace fs = std::filesystem;
using testing::Origin;
using testing::ReadN;
using testing::ReadToEnd;
using testing::SendAll;

// Echoes what it reads until EOF, and counts it.
struct Echo {
  std::atomic<size_t> received{0};
  void operator()(int fd) {
    char buf[4096];
    for (;;) {
      ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) return;
      received += static_cast<size_t>(n);
      SendAll(fd, std::string_view(buf, static_cast<size_t>(n)));
    }
  }
};

class GatewayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("airlock-gw-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (io_thread_.joinable()) {
      asio::post(io_, [this] { server_.reset(); });
      io_.stop();
      io_thread_.join();
    }
    gateway_.reset();
    server_.reset();
    fs::remove_all(dir_);
  }

  // Starts the proxy with `options`; `policies` and `secrets` by session ("ses_a", "ses_b").
  void Start(std::map<std::string, Policy> policies, GatewayOptions options = {},
             std::map<std::string, Secrets> secrets = {}) {
    policies_ = std::move(policies);
    secrets_ = std::move(secrets);
    gateway_ = std::make_unique<Gateway>(Gateway::Deps{io_, pool_, registry_,
                                                       [this](const ConnectionReport& r) {
                                                         std::lock_guard lock(mu_);
                                                         reports_.push_back(r);
                                                         cv_.notify_all();
                                                       }},
                                         options, OwnAddresses{{}, {}});
    server_ = std::make_unique<net::HttpServer>(
        io_, "sandbox", net::HttpLimits{},
        [](net::Request&) -> awaitable<net::Response> {
          co_return net::Response::FromError(404, "not_found", "no such route");
        },
        http_metrics_);
    server_->SetGate([this](net::Request& req) -> awaitable<net::Admission> {
      if (!Gateway::IsProxyRequest(req)) co_return net::Admission{};
      co_return gateway_->Admit(req, req.bound_session, policies_[req.bound_session],
                                secrets_[req.bound_session]);
    });
    for (const auto& [session, p] : policies_) {
      ASSERT_TRUE(server_->ListenUnix(Socket(session), session).has_value());
    }
    io_thread_ = std::thread([this] {
      auto guard = asio::make_work_guard(io_);
      io_.run();
    });
  }

  std::string Socket(const std::string& session) const { return (dir_ / (session + ".sock")); }

  // A connection to `session`'s socket.
  int Connect(const std::string& session = "ses_a") {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::string path = Socket(session);
    std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0) << path;
    return fd;
  }

  // Sends a CONNECT for `target` and reads the answer's head (and, when it is not 200, its
  // body up to the close): {status, whole answer}.
  std::pair<unsigned, std::string> Open(int fd, const std::string& target) {
    SendAll(fd, "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n\r\n");
    std::string head;
    while (head.find("\r\n\r\n") == std::string::npos) {
      std::string b = ReadN(fd, 1);
      if (b.empty()) break;
      head += b;
    }
    unsigned status = head.size() > 12 ? static_cast<unsigned>(std::stoi(head.substr(9, 3))) : 0;
    if (status != 200) head += ReadToEnd(fd);
    return {status, head};
  }

  // The next report (waits up to `wait`).
  std::optional<ConnectionReport> NextReport(
      std::chrono::milliseconds wait = std::chrono::seconds(5)) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, wait, [&] { return taken_ < reports_.size(); })) return std::nullopt;
    return reports_[taken_++];
  }

  static Policy Allow(std::vector<std::string> hosts, std::vector<std::string> addresses) {
    auto p = ParsePolicy(hosts, addresses);
    EXPECT_TRUE(p.has_value()) << (p ? "" : p.error().message);
    return p ? *p : Policy{};
  }
  static std::string At(uint16_t port) { return "127.0.0.1:" + std::to_string(port); }

  static inline int counter_ = 0;
  fs::path dir_;
  asio::io_context io_;
  asio::thread_pool pool_{4};  // the resolver: the slow-lookup test blocks three
  metrics::Registry registry_;
  net::HttpMetrics http_metrics_{registry_};
  std::map<std::string, Policy> policies_;
  std::map<std::string, Secrets> secrets_;
  std::unique_ptr<Gateway> gateway_;
  std::unique_ptr<net::HttpServer> server_;
  std::thread io_thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<ConnectionReport> reports_;
  size_t taken_ = 0;
};

TEST_F(GatewayTest, ATunnelReachesAnAllowedAddressAndReportsItsBytes) {
  Echo echo;
  Origin origin(std::ref(echo));
  Start({{"ses_a", Allow({}, {At(origin.port())})}});
  int fd = Connect();
  auto [status, head] = Open(fd, At(origin.port()));
  ASSERT_EQ(status, 200u) << head;
  SendAll(fd, "ping");
  EXPECT_EQ(ReadN(fd, 4), "ping");
  ::close(fd);
  auto r = NextReport();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->session, "ses_a");
  EXPECT_EQ(r->method, "CONNECT");
  EXPECT_EQ(r->decision, "allowed") << r->reason;
  EXPECT_EQ(r->address, "127.0.0.1");
  EXPECT_EQ(r->status, 200u);
  EXPECT_EQ(r->bytes_up, 4u);
  EXPECT_EQ(r->bytes_down, 4u);
  EXPECT_EQ(gateway_->open_connections(), 0u);
}

TEST_F(GatewayTest, TlsThroughATunnelIsEndToEndWithTheRealServersCertificate) {
  auto made = fake::MakeTestPki(dir_.string());
  ASSERT_TRUE(made.has_value()) << made.error().message;
  const fake::TestPki& pki = *made;
  SSL_CTX* server_ctx = SSL_CTX_new(TLS_server_method());
  ASSERT_EQ(SSL_CTX_use_certificate_chain_file(server_ctx, pki.cert_file.c_str()), 1);
  ASSERT_EQ(SSL_CTX_use_PrivateKey_file(server_ctx, pki.key_file.c_str(), SSL_FILETYPE_PEM), 1);
  Origin origin([&](int fd) {
    SSL* ssl = SSL_new(server_ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) == 1) {
      char buf[64];
      int n = SSL_read(ssl, buf, sizeof(buf));
      if (n > 0) SSL_write(ssl, buf, n);
      SSL_shutdown(ssl);
    }
    SSL_free(ssl);
  });
  const std::string host = "localhost:" + std::to_string(origin.port());
  // The name is allowed, and so is the loopback address it resolves to (exactly).
  Start({{"ses_a", Allow({host}, {At(origin.port())})}});
  int fd = Connect();
  auto [status, head] = Open(fd, host);
  ASSERT_EQ(status, 200u) << head;

  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  ASSERT_EQ(SSL_CTX_load_verify_locations(ctx, pki.ca_file.c_str(), nullptr), 1);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  SSL* ssl = SSL_new(ctx);
  SSL_set_tlsext_host_name(ssl, "localhost");
  SSL_set1_host(ssl, "localhost");
  SSL_set_fd(ssl, fd);
  ASSERT_EQ(SSL_connect(ssl), 1) << ERR_error_string(ERR_get_error(), nullptr);
  ASSERT_EQ(SSL_write(ssl, "hello", 5), 5);
  char buf[16] = {};
  EXPECT_EQ(SSL_read(ssl, buf, sizeof(buf)), 5);
  EXPECT_EQ(std::string(buf, 5), "hello");
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  ::close(fd);
  auto r = NextReport();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->decision, "allowed") << r->reason;
  EXPECT_EQ(r->host, "localhost");
  EXPECT_GT(r->bytes_up, 5u);
  SSL_CTX_free(server_ctx);
}

TEST_F(GatewayTest, AClientHelloNamingAnotherHostIsRefusedBeforeAByteGoesUpstream) {
  Echo echo;
  Origin origin(std::ref(echo));
  const std::string host = "localhost:" + std::to_string(origin.port());
  Start({{"ses_a", Allow({host}, {At(origin.port())})}});
  int fd = Connect();
  auto [status, head] = Open(fd, host);
  ASSERT_EQ(status, 200u) << head;
  // Domain fronting: the tunnel was opened for an allowed name, the TLS asks for another.
  std::string hello = fake::OpenSslClientHello("evil.example");
  ASSERT_GT(hello.size(), 100u);
  // In two pieces, as a slow client would send it: the gateway waits for the whole hello.
  SendAll(fd, hello.substr(0, 20));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  SendAll(fd, hello.substr(20));
  EXPECT_EQ(ReadToEnd(fd), "");  // closed, nothing answered
  ::close(fd);
  auto r = NextReport();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->decision, "refused");
  EXPECT_NE(r->reason.find("evil.example"), std::string::npos) << r->reason;
  EXPECT_EQ(r->bytes_up, 0u);
  EXPECT_EQ(echo.received.load(), 0u);

  // The same hello naming the CONNECT host passes (and reaches the echo server whole).
  fd = Connect();
  ASSERT_EQ(Open(fd, host).first, 200u);
  std::string good = fake::OpenSslClientHello("localhost");
  SendAll(fd, good);
  EXPECT_EQ(ReadN(fd, good.size()), good);
  ::close(fd);
  r = NextReport();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->decision, "allowed") << r->reason;
}

TEST_F(GatewayTest, ANameOutsideThePolicyIsDeniedWith403) {
  Start({{"ses_a", Allow({"pypi.org"}, {})}});
  int fd = Connect();
  auto [status, answer] = Open(fd, "example.com:443");
  EXPECT_EQ(status, 403u);
  EXPECT_NE(answer.find("\"egress_denied\""), std::string::npos) << answer;
  EXPECT_NE(answer.find("example.com:443 is not in this session's egress policy"),
            std::string::npos)
      << answer;
  ::close(fd);
  auto r = NextReport();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->decision, "denied");
  EXPECT_EQ(r->host, "example.com");
  EXPECT_EQ(r->port, 443);
  // A port the rule does not name is outside it too.
  fd = Connect();
  EXPECT_EQ(Open(fd, "pypi.org:22").first, 403u);
  ::close(fd);
}

TEST_F(GatewayTest, LoopbackMetadataAndPrivateAddressesAreRefusedWhateverTheName) {
  Echo echo;
  Origin origin(std::ref(echo));
  const std::string port = std::to_string(origin.port());
  // The name is allowed, its address is not: "localhost" stands for a name that resolves (or
  // is rebound) to loopback.
  Start({{"ses_a", Allow({"localhost:" + port, "*"}, {})}});
  struct Case {
    std::string target;
    std::string says;
  };
  for (const Case& c : std::vector<Case>{
           {"localhost:" + port, "loopback"},
           {"127.0.0.1:" + port, "egress.allow_addresses"},
           {"[::ffff:127.0.0.1]:" + port, "egress.allow_addresses"},
           {"169.254.169.254:80", "egress.allow_addresses"},
           {"[fd00:ec2::254]:80", "egress.allow_addresses"},
           {"2130706433:443", "address"},
           {"0x7f000001:443", "address"},
       }) {
    int fd = Connect();
    auto [status, answer] = Open(fd, c.target);
    EXPECT_EQ(status, 403u) << c.target << ": " << answer;
    EXPECT_NE(answer.find(c.says), std::string::npos) << c.target << ": " << answer;
    ::close(fd);
  }
  // Plain HTTP to the metadata service, the classic SSRF.
  int fd = Connect();
  SendAll(fd, "GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: x\r\n\r\n");
  std::string answer = ReadToEnd(fd);
  EXPECT_TRUE(answer.starts_with("HTTP/1.1 403")) << answer;
  ::close(fd);
  EXPECT_EQ(origin.accepted(), 0);
  EXPECT_EQ(echo.received.load(), 0u);
}

TEST_F(GatewayTest, PlainHttpGoesUpstreamInOriginFormWithoutTheProxysFields) {
  std::mutex mu;
  std::string seen;
  Origin origin([&](int fd) {
    std::string head;
    while (head.find("\r\n\r\n") == std::string::npos) {
      std::string b = ReadN(fd, 1);
      if (b.empty()) break;
      head += b;
    }
    std::string body = ReadN(fd, 4);
    {
      std::lock_guard lock(mu);
      seen = head + body;
    }
    SendAll(fd, "HTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
  });
  Start({{"ses_a", Allow({}, {At(origin.port())})}});
  int fd = Connect();
  const std::string url = "http://" + At(origin.port()) + "/a/b?c=d";
  SendAll(fd, "POST " + url + " HTTP/1.1\r\nHost: " + At(origin.port()) +
                  "\r\nProxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\n"
                  "Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-Test: kept\r\n"
                  "Content-Length: 4\r\n\r\nbody");
  std::string answer = ReadToEnd(fd);
  ::close(fd);
  EXPECT_TRUE(answer.starts_with("HTTP/1.1 201 Created")) << answer;
  EXPECT_TRUE(answer.ends_with("\r\n\r\nok")) << answer;
  {
    std::lock_guard lock(mu);
    EXPECT_TRUE(seen.starts_with("POST /a/b?c=d HTTP/1.1\r\nHost: " + At(origin.port()) + "\r\n"))
        << seen;
    EXPECT_NE(seen.find("X-Test: kept\r\n"), std::string::npos) << seen;
    EXPECT_NE(seen.find("Connection: close\r\n"), std::string::npos) << seen;
    EXPECT_EQ(seen.find("Proxy-"), std::string::npos) << seen;
    EXPECT_EQ(seen.find("X-Hop"), std::string::npos) << seen;
    EXPECT_EQ(seen.find("keep-alive"), std::string::npos) << seen;
    EXPECT_TRUE(seen.ends_with("\r\n\r\nbody")) << seen;
  }
  auto r = NextReport();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->decision, "allowed") << r->reason;
  EXPECT_EQ(r->method, "POST");
  EXPECT_EQ(r->path, "/a/b");
  EXPECT_EQ(r->status, 201u);
  EXPECT_EQ(r->bytes_up, 4u);  // the body; the head is the gateway's
}

TEST_F(GatewayTest, OneSessionsConnectionsLeaveAnothersShareAlone) {
  Echo echo;
  Origin origin(std::ref(echo));
  GatewayOptions o;
  o.max_connections_per_session = 2;
  Policy p = Allow({}, {At(origin.port())});
  Start({{"ses_a", p}, {"ses_b", p}}, o);
  int a1 = Connect(), a2 = Connect(), a3 = Connect();
  ASSERT_EQ(Open(a1, At(origin.port())).first, 200u);
  ASSERT_EQ(Open(a2, At(origin.port())).first, 200u);
  auto [status, answer] = Open(a3, At(origin.port()));
  EXPECT_EQ(status, 429u) << answer;
  EXPECT_NE(answer.find("already has 2 egress connections open"), std::string::npos) << answer;
  int b = Connect("ses_b");
  ASSERT_EQ(Open(b, At(origin.port())).first, 200u);
  SendAll(b, "b");
  EXPECT_EQ(ReadN(b, 1), "b");
  for (int fd : {a1, a2, a3, b}) ::close(fd);
  // The refusal by a cap is counted, not reported; the three tunnels are.
  for (int i = 0; i < 3; ++i) {
    auto r = NextReport();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->decision, "allowed");
  }
  EXPECT_FALSE(NextReport(std::chrono::milliseconds(300)));
}

TEST_F(GatewayTest, AServerThatSpeaksFirstIsNotHeldBackByTheHelloCheck) {
  Origin origin([](int fd) {
    SendAll(fd, "SSH-2.0-test\r\n");
    std::string reply = ReadN(fd, 3);
    SendAll(fd, "got " + reply);
  });
  Start({{"ses_a", Allow({}, {At(origin.port())})}});
  int fd = Connect();
  ASSERT_EQ(Open(fd, At(origin.port())).first, 200u);
  EXPECT_EQ(ReadN(fd, 14), "SSH-2.0-test\r\n");
  SendAll(fd, "abc");
  EXPECT_EQ(ReadN(fd, 7), "got abc");
  ::close(fd);
}

TEST_F(GatewayTest, TheRequestRateIsCappedPerSessionWithRetryAfter) {
  GatewayOptions o;
  o.requests_per_minute = 3;
  Start({{"ses_a", Allow({"pypi.org"}, {})}, {"ses_b", Allow({"pypi.org"}, {})}}, o);
  for (int i = 0; i < 2; ++i) {
    int fd = Connect();
    EXPECT_EQ(Open(fd, "example.com:443").first, 403u);  // refused ones count too
    ::close(fd);
  }
  int malformed = Connect();  // and malformed ones
  SendAll(malformed, "CONNECT example.com HTTP/1.1\r\n\r\n");
  EXPECT_TRUE(ReadToEnd(malformed).starts_with("HTTP/1.1 400"));
  ::close(malformed);
  int fd = Connect();
  auto [status, answer] = Open(fd, "example.com:443");
  EXPECT_EQ(status, 429u);
  EXPECT_NE(answer.find("Retry-After: "), std::string::npos) << answer;
  ::close(fd);
  fd = Connect("ses_b");
  EXPECT_EQ(Open(fd, "example.com:443").first, 403u);
  ::close(fd);
}

TEST_F(GatewayTest, ATunnelThatMovesNothingIsClosedAfterTheIdleTimeout) {
  Echo echo;
  Origin origin(std::ref(echo));
  GatewayOptions o;
  o.idle_timeout = std::chrono::milliseconds(300);
  Start({{"ses_a", Allow({}, {At(origin.port())})}}, o);
  int fd = Connect();
  ASSERT_EQ(Open(fd, At(origin.port())).first, 200u);
  EXPECT_EQ(ReadToEnd(fd), "");  // closed by the gateway, well before ReadToEnd's 5 s
  ::close(fd);
  auto r = NextReport();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->reason, "closed after the idle timeout");
  EXPECT_EQ(gateway_->open_connections(), 0u);
}

TEST_F(GatewayTest, AClientThatStopsReadingHoldsOnlyItsBuffersAndIsCutOff) {
  // The origin sends 64 MiB as fast as it may; the client reads none of it. The gateway holds a
  // buffer a direction, not the stream: once the sockets are full nothing moves, and the idle
  // timeout ends the tunnel. Meanwhile another session's tunnel works.
  Origin flood([](int fd) {
    std::string chunk(1 << 20, 'z');
    for (int i = 0; i < 64; ++i) {
      if (::send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL) <= 0) return;
    }
  });
  Echo echo;
  Origin other(std::ref(echo));
  GatewayOptions o;
  o.idle_timeout = std::chrono::milliseconds(500);
  Start({{"ses_a", Allow({}, {At(flood.port())})}, {"ses_b", Allow({}, {At(other.port())})}}, o);
  int a = Connect("ses_a");
  int rcvbuf = 4096;
  ::setsockopt(a, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
  ASSERT_EQ(Open(a, At(flood.port())).first, 200u);
  SendAll(a, "go");
  int b = Connect("ses_b");
  ASSERT_EQ(Open(b, At(other.port())).first, 200u);
  SendAll(b, "still here");
  EXPECT_EQ(ReadN(b, 10), "still here");
  ::close(b);
  auto first = NextReport();
  ASSERT_TRUE(first);
  EXPECT_EQ(first->session, "ses_b");
  auto r = NextReport();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->session, "ses_a");
  EXPECT_EQ(r->reason, "closed after the idle timeout");
  EXPECT_LT(r->bytes_down, 16u << 20) << "the gateway kept reading what its client did not";
  ::close(a);
}

TEST_F(GatewayTest, SlowNameLookupsHoldOnlyTheirSessionsShareOfTheResolver) {
  // The hosts file is a FIFO: reading it blocks until the test opens it for writing, as a lookup
  // blocks on a DNS server that answers slowly (one the sandbox may choose).
  const std::string fifo = dir_ / "hosts";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  GatewayOptions o;
  o.hosts_file = fifo;
  o.max_lookups_per_session = 2;
  const std::string host = "slow.invalid:443";
  Start({{"ses_a", Allow({host}, {})}, {"ses_b", Allow({host}, {})}}, o);
  const std::string connect = "CONNECT " + host + " HTTP/1.1\r\nHost: " + host + "\r\n\r\n";
  int a1 = Connect(), a2 = Connect();
  SendAll(a1, connect);
  SendAll(a2, connect);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // both lookups under way
  int a3 = Connect();
  auto [status, answer] = Open(a3, host);
  EXPECT_EQ(status, 429u) << answer;
  EXPECT_NE(answer.find("already has 2 name lookups in flight"), std::string::npos) << answer;
  // Another session's lookup is not refused: it waits like the others.
  int b = Connect("ses_b");
  SendAll(b, connect);
  pollfd p{b, POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 300), 0) << "ses_b was answered while its lookup could not have ended";
  // The slow server answers (nothing): the lookups end, each with its own answer.
  int w = ::open(fifo.c_str(), O_WRONLY);
  ASSERT_GE(w, 0);
  ::close(w);
  for (int fd : {a1, a2, a3, b}) ::close(fd);
}

TEST_F(GatewayTest, ClosingASessionCutsItsTunnelsAndNoOneElses) {
  Echo echo;
  Origin origin(std::ref(echo));
  Policy p = Allow({}, {At(origin.port())});
  Start({{"ses_a", p}, {"ses_b", p}});
  int a = Connect("ses_a"), b = Connect("ses_b");
  ASSERT_EQ(Open(a, At(origin.port())).first, 200u);
  ASSERT_EQ(Open(b, At(origin.port())).first, 200u);
  SendAll(a, "x");
  EXPECT_EQ(ReadN(a, 1), "x");
  asio::post(io_, [this] { gateway_->CloseSession("ses_a"); });
  EXPECT_EQ(ReadToEnd(a), "");  // closed at once, not after the idle timeout
  auto r = NextReport();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->session, "ses_a");
  EXPECT_EQ(r->reason, "closed: the session ended");
  SendAll(b, "y");
  EXPECT_EQ(ReadN(b, 1), "y");
  ::close(a);
  ::close(b);
}

TEST_F(GatewayTest, MalformedProxyRequestsGetAClearAnswer) {
  Start({{"ses_a", Allow({"*"}, {})}});
  struct Case {
    std::string request;
    std::string says;
  };
  for (const Case& c : std::vector<Case>{
           {"CONNECT example.com HTTP/1.1\r\n\r\n", "a port is required"},
           {"CONNECT example.com:0 HTTP/1.1\r\n\r\n", "bad port"},
           {"CONNECT example.com:99999 HTTP/1.1\r\n\r\n", "bad port"},
           {"CONNECT [::1 HTTP/1.1\r\n\r\n", "bad [address]"},
           {"GET https://example.com/ HTTP/1.1\r\n\r\n", "through CONNECT"},
           {"GET ftp://example.com/ HTTP/1.1\r\n\r\n", "http:// URL"},
           {"GET http://user:pw@example.com/ HTTP/1.1\r\n\r\n", "user information"},
       }) {
    int fd = Connect();
    SendAll(fd, c.request);
    std::string answer = ReadToEnd(fd);
    EXPECT_TRUE(answer.starts_with("HTTP/1.1 400")) << c.request << answer;
    EXPECT_NE(answer.find(c.says), std::string::npos) << c.request << answer;
    ::close(fd);
  }
}

// ---------------------------------------------------------------- credentials at the boundary

// A real HTTPS origin (the fake OpenAI API, which answers only with its key) on loopback with a
// certificate for "localhost" from a test CA, and the gateway holding that key as a secret for
// localhost:PORT: what a sandbox's TLS client sees and what the origin receives.
class InterceptTest : public GatewayTest {
 protected:
  static constexpr const char* kValue = "sk-the-real-key-0123456789";
  static constexpr const char* kPlaceholder = "airlock-secret-openai";

  void SetUp() override {
    std::signal(SIGPIPE, SIG_IGN);  // a TLS write to a tunnel the gateway closed: an error
    GatewayTest::SetUp();
    auto pki = fake::MakeTestPki(dir_.string());
    ASSERT_TRUE(pki.has_value()) << pki.error().message;
    pki_ = *pki;
    fake::FakeUpstreamOptions o;
    o.cert_file = pki_.cert_file;
    o.key_file = pki_.key_file;
    o.expected_key = kValue;
    auto up = fake::FakeUpstream::Start(o);
    ASSERT_TRUE(up.has_value()) << up.error().message;
    origin_ = std::move(*up);
    host_ = "localhost:" + std::to_string(origin_->port());
    auto ca = Authority::Load({"", "", (dir_ / "egress-ca").string()});
    ASSERT_TRUE(ca.has_value()) << ca.error().message;
    authority_ = *ca;
    ca_file_ = (dir_ / "egress-ca" / "ca.pem").string();
  }
  void TearDown() override {
    origin_.reset();
    GatewayTest::TearDown();
  }

  // The gateway with the key as secret "openai" of ses_a, for `secret_hosts`; ses_b has the
  // same policy and no secret. The upstream is verified against `upstream_ca` (the test CA).
  void StartWithSecret(std::vector<std::string> secret_hosts, bool trust_upstream = true) {
    GatewayOptions o;
    o.authority = authority_;
    auto tls = net::MakeTlsClientContext(trust_upstream ? pki_.ca_file : "");
    ASSERT_TRUE(tls.has_value());
    o.upstream_tls = *tls;
    Secret secret{"openai", kValue, kPlaceholder, "Authorization", Allow(secret_hosts, {}), ""};
    Policy reach = Allow({host_}, {At(origin_->port())});
    Start({{"ses_a", reach}, {"ses_b", reach}}, o,
          {{"ses_a", std::make_shared<std::vector<Secret>>(std::vector<Secret>{secret})}});
  }

  // Opens a tunnel to the origin from `session`, speaks TLS in it trusting only `ca_file`, sends
  // `request` and reads the answer to the end. The answer is "" with `handshake` set to the
  // error when the handshake fails.
  std::string Exchange(const std::string& session, const std::string& ca_file,
                       const std::string& request, std::string* handshake = nullptr) {
    int fd = Connect(session);
    auto [status, head] = Open(fd, host_);
    EXPECT_EQ(status, 200u) << head;
    SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
    EXPECT_EQ(SSL_CTX_load_verify_locations(ctx, ca_file.c_str(), nullptr), 1);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    SSL* ssl = SSL_new(ctx);
    SSL_set_tlsext_host_name(ssl, "localhost");
    SSL_set1_host(ssl, "localhost");
    SSL_set_fd(ssl, fd);
    std::string answer;
    if (SSL_connect(ssl) != 1) {
      if (handshake) *handshake = ERR_error_string(ERR_get_error(), nullptr);
    } else {
      EXPECT_EQ(SSL_write(ssl, request.data(), static_cast<int>(request.size())),
                static_cast<int>(request.size()));
      char buf[4096];
      for (int n; (n = SSL_read(ssl, buf, sizeof(buf))) > 0;) answer.append(buf, n);
    }
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    ::close(fd);
    return answer;
  }

  static std::string ChatRequest(const std::string& authorization, const std::string& extra = "") {
    const std::string body = R"({"model":"m","messages":[{"role":"user","content":"hi"}]})";
    return "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nAuthorization: " +
           authorization + "\r\n" + extra +
           "Connection: close\r\nContent-Type: application/json\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\n\r\n" + body;
  }

  fake::TestPki pki_;
  std::unique_ptr<fake::FakeUpstream> origin_;
  std::string host_;
  std::shared_ptr<Authority> authority_;
  std::string ca_file_;
};

TEST_F(InterceptTest, TheSecretGoesInItsHeaderToItsHostAndNowhereElse) {
  StartWithSecret({host_});
  std::string answer = Exchange("ses_a", ca_file_,
                                ChatRequest(std::string("Bearer ") + kPlaceholder,
                                            std::string("X-Elsewhere: ") + kPlaceholder + "\r\n"));
  EXPECT_TRUE(answer.starts_with("HTTP/1.1 200")) << answer;
  EXPECT_EQ(answer.find(kValue), std::string::npos) << "the answer must not carry the key";
  ASSERT_EQ(origin_->request_count(), 1u);
  auto seen = origin_->requests()[0];
  EXPECT_EQ(seen.Header("authorization"), std::string("Bearer ") + kValue);
  EXPECT_EQ(seen.Header("x-elsewhere"), kPlaceholder) << "only the configured header gets it";
  EXPECT_EQ(seen.Header("connection"), "close");
  auto r = NextReport();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->decision, "allowed") << r->reason;
  EXPECT_TRUE(r->intercepted);
  EXPECT_EQ(r->path, "/v1/chat/completions");
  EXPECT_EQ(r->status, 200u);
  EXPECT_EQ(r->secrets_added, std::vector<std::string>{"openai"});
  EXPECT_EQ(r->placeholders_refused, std::vector<std::string>{"openai"});
  EXPECT_GT(r->bytes_up, 0u);
  EXPECT_GT(r->bytes_down, 0u);
  EXPECT_EQ(gateway_->open_connections(), 0u);
}

TEST_F(InterceptTest, AFormatMakesTheWholeValueWhateverTheClientWroteAroundThePlaceholder) {
  GatewayOptions o;
  o.authority = authority_;
  o.upstream_tls = *net::MakeTlsClientContext(pki_.ca_file);
  Secret secret{"openai", kValue, kPlaceholder, "Authorization", Allow({host_}, {}), "Bearer {}"};
  Policy reach = Allow({host_}, {At(origin_->port())});
  Start({{"ses_a", reach}}, o,
        {{"ses_a", std::make_shared<std::vector<Secret>>(std::vector<Secret>{secret})}});
  std::string answer =
      Exchange("ses_a", ca_file_, ChatRequest(std::string("token ") + kPlaceholder));
  EXPECT_TRUE(answer.starts_with("HTTP/1.1 200")) << answer;
  ASSERT_EQ(origin_->request_count(), 1u);
  EXPECT_EQ(origin_->requests()[0].Header("authorization"), std::string("Bearer ") + kValue);
}

TEST_F(InterceptTest, ASessionWithoutTheSecretGetsTheRealServerEndToEnd) {
  StartWithSecret({host_});
  // ses_b holds no secret: its tunnel is not opened, so only the origin's own CA verifies, and
  // its placeholder reaches the origin as sent (refused there for the wrong key).
  std::string answer =
      Exchange("ses_b", pki_.ca_file, ChatRequest(std::string("Bearer ") + kPlaceholder));
  EXPECT_TRUE(answer.starts_with("HTTP/1.1 401")) << answer;
  ASSERT_EQ(origin_->request_count(), 1u);
  EXPECT_EQ(origin_->requests()[0].Header("authorization"), std::string("Bearer ") + kPlaceholder);
  auto r = NextReport();
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->intercepted);
  EXPECT_TRUE(r->secrets_added.empty());
}

TEST_F(InterceptTest, AHostTheSecretDoesNotBelongToIsTunnelledUntouched) {
  // The secret belongs to another name: this tunnel is the origin's, end to end, and a client
  // trusting only the gateway's CA cannot be fooled into sending the placeholder to it.
  StartWithSecret({"api.example.com"});
  std::string handshake;
  std::string answer = Exchange("ses_a", ca_file_, ChatRequest("Bearer x"), &handshake);
  EXPECT_EQ(answer, "");
  EXPECT_NE(handshake, "") << "the origin's certificate is not the gateway's";
  answer = Exchange("ses_a", pki_.ca_file, ChatRequest(std::string("Bearer ") + kPlaceholder));
  EXPECT_TRUE(answer.starts_with("HTTP/1.1 401")) << answer;
  EXPECT_EQ(origin_->requests().back().Header("authorization"),
            std::string("Bearer ") + kPlaceholder);
}

TEST_F(InterceptTest, AnUpstreamThatFailsVerificationNeverReceivesTheSecret) {
  StartWithSecret({host_}, /*trust_upstream=*/false);
  std::string answer =
      Exchange("ses_a", ca_file_, ChatRequest(std::string("Bearer ") + kPlaceholder));
  EXPECT_TRUE(answer.starts_with("HTTP/1.1 502")) << answer;
  EXPECT_NE(answer.find("certificate verification failed"), std::string::npos) << answer;
  EXPECT_EQ(origin_->request_count(), 0u);
  auto r = NextReport();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->decision, "failed");
  EXPECT_TRUE(r->secrets_added.empty());
}

TEST_F(InterceptTest, ATunnelToASecretsHostMustSpeakTls) {
  StartWithSecret({host_});
  int fd = Connect();
  auto [status, head] = Open(fd, host_);
  ASSERT_EQ(status, 200u) << head;
  SendAll(fd, ChatRequest(std::string("Bearer ") + kPlaceholder));
  EXPECT_EQ(ReadToEnd(fd), "");
  ::close(fd);
  auto r = NextReport();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->decision, "refused");
  EXPECT_NE(r->reason.find("must begin with TLS"), std::string::npos) << r->reason;
  EXPECT_EQ(origin_->request_count(), 0u);
}

TEST_F(InterceptTest, APlaceholderInPlainHttpIsReportedAndNotReplaced) {
  std::mutex mu;
  std::string seen;
  Origin plain([&](int fd) {
    std::string head;
    while (head.find("\r\n\r\n") == std::string::npos) {
      std::string b = ReadN(fd, 1);
      if (b.empty()) break;
      head += b;
    }
    {
      std::lock_guard lock(mu);
      seen = head;
    }
    SendAll(fd, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
  });
  GatewayOptions o;
  o.authority = authority_;
  o.upstream_tls = *net::MakeTlsClientContext(pki_.ca_file);
  Secret secret{"openai", kValue, kPlaceholder, "Authorization", Allow({host_}, {}), ""};
  Start({{"ses_a", Allow({}, {At(plain.port())})}}, o,
        {{"ses_a", std::make_shared<std::vector<Secret>>(std::vector<Secret>{secret})}});
  int fd = Connect();
  SendAll(fd, "GET http://" + At(plain.port()) + "/x HTTP/1.1\r\nHost: " + At(plain.port()) +
                  "\r\nAuthorization: Bearer " + kPlaceholder + "\r\n\r\n");
  std::string answer = ReadToEnd(fd);
  ::close(fd);
  EXPECT_TRUE(answer.starts_with("HTTP/1.1 204")) << answer;
  {
    std::lock_guard lock(mu);
    EXPECT_NE(seen.find(std::string("Authorization: Bearer ") + kPlaceholder), std::string::npos)
        << seen;
    EXPECT_EQ(seen.find(kValue), std::string::npos) << seen;
  }
  auto r = NextReport();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->placeholders_refused, std::vector<std::string>{"openai"});
}

TEST(AuthorityTest, MakesItsCaOnceKeepsTheKeyPrivateAndChecksAnOperatorsPair) {
  const fs::path dir = fs::temp_directory_path() / ("airlock-ca-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  auto first = Authority::Load({"", "", dir.string()});
  ASSERT_TRUE(first.has_value()) << first.error().message;
  auto again = Authority::Load({"", "", dir.string()});
  ASSERT_TRUE(again.has_value()) << again.error().message;
  EXPECT_EQ((*first)->certificate_pem(), (*again)->certificate_pem()) << "made once, then kept";
  EXPECT_EQ((*first)->certificate_pem().find("PRIVATE"), std::string::npos);
  struct stat st {};
  ASSERT_EQ(::stat((dir / "ca.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  // An operator's pair: the files must hold a certificate and its own key.
  auto pki = fake::MakeTestPki(dir.string());
  ASSERT_TRUE(pki.has_value());
  auto mismatched = Authority::Load({(dir / "ca.pem").string(), pki->key_file, ""});
  ASSERT_FALSE(mismatched.has_value());
  EXPECT_NE(mismatched.error().message.find("is not the key of"), std::string::npos)
      << mismatched.error().message;
  auto not_pem = Authority::Load({pki->key_file, pki->key_file, ""});
  ASSERT_FALSE(not_pem.has_value());
  EXPECT_NE(not_pem.error().message.find("holds no PEM certificate"), std::string::npos);
  EXPECT_EQ(not_pem.error().message.find("PRIVATE"), std::string::npos);
  auto alone = Authority::Load({pki->ca_file, "", ""});
  EXPECT_FALSE(alone.has_value());
  fs::remove_all(dir);
}

}  // namespace
}  // namespace airlock::egress
