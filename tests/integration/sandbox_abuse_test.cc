// A sandbox (or any local process) trying to starve the control plane: holding connections,
// sending bodies that are never authenticated, writing bodies that are refused, and framing
// requests so that a proxy in front would read them differently. Each attack fails cleanly and
// every other session and the operator are still served. (Findings 2, 3, 9 and 15 of the
// security review of 2026-12.)
#include "tests/integration/harness.h"

namespace airlock::testing {
namespace {

using http::verb;

std::string SocketOf(TestServer& server, const std::string& id) {
  return server.home() + "/run/" + id + "/control.sock";
}

std::string Get(const std::string& path, const std::string& token, std::string_view extra = "") {
  return "GET " + path + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token + "\r\n" +
         std::string(extra) + "\r\n";
}

// True when the peer closed the connection without a byte (a refused connection).
bool ClosedWithoutAnswer(int fd, int timeout_ms = 5000) {
  std::string got = ReadUntilClose(fd, timeout_ms);
  char c;
  return got.empty() && ::recv(fd, &c, 1, MSG_DONTWAIT) == 0;
}

TEST(SandboxAbuseTest, ASessionSocketHoldsOnlyItsShareOfConnectionsAndOthersAreServed) {
  TestServer server([](controlplane::Config& c) {
    c.limits.max_connections_per_session = 8;
    c.limits.first_byte_timeout = std::chrono::milliseconds(60'000);  // held open, not timed out
  });
  auto [attacker, attacker_token] = server.NewSession("flood");
  auto [victim, victim_token] = server.NewSession("work");
  // The attacker connects to its own socket directly (bypassing init's bridge) and holds
  // every connection open without sending a byte.
  std::vector<int> held;
  for (int i = 0; i < 8; ++i) {
    int fd = RawConnectUnix(SocketOf(server, attacker));
    ASSERT_GE(fd, 0);
    held.push_back(fd);
  }
  ASSERT_TRUE(WaitForMetric(server, "airlock_http_connections{listener=\"sandbox\"} 8"));
  std::vector<int> refused;
  for (int i = 0; i < 50; ++i) refused.push_back(RawConnectUnix(SocketOf(server, attacker)));
  for (int fd : refused) {
    ASSERT_GE(fd, 0);
    EXPECT_TRUE(ClosedWithoutAnswer(fd));
    ::close(fd);
  }
  EXPECT_TRUE(WaitForMetric(server, "reason=\"session_connections\"} 50"));
  // The victim, over its own socket and over TCP, and the operator are all served.
  for (int i = 0; i < 20; ++i) {
    int fd = RawConnectUnix(SocketOf(server, victim));
    ASSERT_GE(fd, 0);
    WriteAll(fd, Get("/sandbox/v1/history", victim_token, "Connection: close\r\n"));
    EXPECT_TRUE(ReadUntilClose(fd).starts_with("HTTP/1.1 200"));
    ::close(fd);
    EXPECT_EQ(
        server.Sb(verb::post, "/sandbox/v1/events", victim_token, R"({"type":"work","data":{}})")
            .status,
        202u);
    EXPECT_EQ(server.Op(verb::get, "/v1/sessions/" + victim).status, 200u);
  }
  // The attacker's own connections still work: the cap refuses, it does not break.
  WriteAll(held[0], Get("/sandbox/v1/history", attacker_token));
  EXPECT_TRUE(ReadOneResponse(held[0]).starts_with("HTTP/1.1 200"));
  for (int fd : held) ::close(fd);
  // Once they are gone, new ones are accepted again.
  bool accepted = false;
  for (int attempt = 0; attempt < 100 && !accepted; ++attempt) {
    int fd = RawConnectUnix(SocketOf(server, attacker));
    WriteAll(fd, Get("/sandbox/v1/history", attacker_token, "Connection: close\r\n"));
    accepted = ReadUntilClose(fd, 2000).starts_with("HTTP/1.1 200");
    ::close(fd);
    if (!accepted) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(accepted);
}

TEST(SandboxAbuseTest, ATokenOverTcpHoldsOnlyItsShareOfConnections) {
  TestServer server([](controlplane::Config& c) { c.limits.max_connections_per_session = 8; });
  auto [attacker, attacker_token] = server.NewSession("flood");
  auto [victim, victim_token] = server.NewSession("work");
  std::vector<int> held;
  for (int i = 0; i < 8; ++i) {
    int fd = RawConnect(server.sb_port());
    WriteAll(fd, Get("/sandbox/v1/history", attacker_token));
    ASSERT_TRUE(ReadOneResponse(fd).starts_with("HTTP/1.1 200"));
    held.push_back(fd);  // kept alive, charged to the attacker's token
  }
  for (int i = 0; i < 10; ++i) {
    int fd = RawConnect(server.sb_port());
    WriteAll(fd, Get("/sandbox/v1/history", attacker_token));
    std::string resp = ReadUntilClose(fd);
    EXPECT_TRUE(resp.starts_with("HTTP/1.1 429")) << resp;
    EXPECT_NE(resp.find("resource_exhausted"), std::string::npos);
    ::close(fd);
  }
  EXPECT_EQ(server.Sb(verb::get, "/sandbox/v1/history", victim_token).status, 200u);
  // Made-up tokens get no share of their own: each is refused and its connection closed.
  for (int i = 0; i < 50; ++i) {
    int fd = RawConnect(server.sb_port());
    WriteAll(fd, Get("/sandbox/v1/history", "ast_madeup" + std::to_string(i)));
    std::string resp = ReadUntilClose(fd);
    EXPECT_TRUE(resp.starts_with("HTTP/1.1 401")) << resp;
    ::close(fd);
  }
  for (int fd : held) ::close(fd);
}

// A PUT URL may be used again until it expires (a client retries after a lost answer), but
// repeating it cannot grow the events table past the session's event quota.
TEST(SandboxAbuseTest, RepeatedUploadsToOneUrlStopAtTheEventQuota) {
  TestServer server([](controlplane::Config& c) { c.events.max_per_session = 30; });
  auto [id, token] = server.NewSession();
  auto [other, other_token] = server.NewSession();
  auto r = server.Sb(verb::post, "/sandbox/v1/files/presign", token,
                     DumpJson(Json{{"name", "a.txt"}, {"method", "PUT"}, {"size", 1}}));
  ASSERT_EQ(r.status, 200u) << r.body;
  std::string url = r.json()["url"];
  std::string target = url.substr(url.find("/sandbox/"));
  int created = 0, refused = 0;
  for (int i = 0; i < 100; ++i) {
    auto put = HttpCall(server.sb_port(), verb::put, target, "", "x");
    if (put.status == 201) ++created;
    if (put.status == 413) {
      ++refused;
      EXPECT_EQ(put.error_code(), "quota_exceeded") << put.body;
    }
  }
  EXPECT_GT(created, 0);
  EXPECT_EQ(created + refused, 100);
  auto evs = server
                 .Op(verb::get, "/v1/sessions/" + id + "/events?limit=1000", "",
                     {{"Accept", "application/json"}})
                 .json();
  EXPECT_LE(evs.size(), 31u);  // the quota, and the one notice past it
  // The file is the last accepted upload, and another session is unaffected.
  EXPECT_EQ(server.Op(verb::get, "/v1/sessions/" + id + "/files/a.txt").body, "x");
  EXPECT_EQ(server.Sb(verb::post, "/sandbox/v1/events", other_token, R"({"type":"work","data":{}})")
                .status,
            202u);
}

TEST(SandboxAbuseTest, AConnectionThatSendsNothingIsCutAtTheFirstByteTimeout) {
  TestServer server([](controlplane::Config& c) {
    c.limits.first_byte_timeout = std::chrono::milliseconds(300);
  });
  auto [id, token] = server.NewSession();
  int unix_fd = RawConnectUnix(SocketOf(server, id));
  int tcp_fd = RawConnect(server.sb_port());
  int op_fd = RawConnect(server.op_port());
  for (int fd : {unix_fd, tcp_fd, op_fd}) {
    EXPECT_TRUE(ClosedWithoutAnswer(fd, 20'000));
    ::close(fd);
  }
  EXPECT_TRUE(WaitForMetric(server, "reason=\"first_byte_timeout\""));
}

TEST(SandboxAbuseTest, ABodyIsNotReadBeforeItsCredentialsAreChecked) {
  TestServer server;
  auto [id, token] = server.NewSession();
  // Headers announcing a megabyte, then nothing: the refusal comes without the body.
  struct Case {
    uint16_t port;
    std::string request;
  };
  std::vector<Case> cases = {
      {server.sb_port(),
       "POST /sandbox/v1/llm/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sbx_forged\r\n"
       "Content-Length: 1048576\r\n\r\n"},
      {server.sb_port(),
       "POST /sandbox/v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n"},
      {server.op_port(),
       "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n"},
      {server.op_port(), "POST /v1/sessions/" + id +
                             "/messages HTTP/1.1\r\nHost: x\r\n"
                             "Authorization: Bearer wrong\r\nContent-Length: 1000000\r\n\r\n"},
  };
  for (const auto& c : cases) {
    int fd = RawConnect(c.port);
    WriteAll(fd, c.request);
    std::string resp = ReadOneResponse(fd, 10'000);
    EXPECT_TRUE(resp.starts_with("HTTP/1.1 401")) << c.request << "\n" << resp;
    ::close(fd);
  }
  EXPECT_TRUE(WaitForMetric(server, "airlock_http_buffered_body_bytes{listener=\"sandbox\"} 0"));
}

TEST(SandboxAbuseTest, OneSessionCannotHoldMoreThanItsShareOfBodyMemory) {
  TestServer server([](controlplane::Config& c) {
    c.limits.max_connections_per_session = 1000;  // the body budget, not the connection cap
    c.limits.max_session_buffered_body_bytes = 8 << 20;
  });
  auto [attacker, attacker_token] = server.NewSession("bodies");
  auto [victim, victim_token] = server.NewSession("work");
  // Forty chats of a megabyte each, announced and never sent: eight fit the session's budget,
  // the others are refused before their body is read.
  std::vector<int> fds;
  for (int i = 0; i < 40; ++i) {
    int fd = RawConnectUnix(SocketOf(server, attacker));
    ASSERT_GE(fd, 0);
    WriteAll(fd, "POST /sandbox/v1/llm/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                     attacker_token +
                     "\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n");
    fds.push_back(fd);
  }
  int refused = 0;
  for (int fd : fds) {
    std::string resp = ReadOneResponse(fd, 500);
    if (resp.starts_with("HTTP/1.1 429")) {
      ++refused;
      EXPECT_NE(resp.find("Retry-After: 1"), std::string::npos);
    } else {
      EXPECT_EQ(resp, "");  // admitted: waiting for its body
    }
  }
  EXPECT_EQ(refused, 32);
  EXPECT_TRUE(
      WaitForMetric(server, "airlock_http_buffered_body_bytes{listener=\"sandbox\"} 8388608"));
  // Another session's request with a body is admitted and served meanwhile.
  EXPECT_EQ(
      server.Sb(verb::post, "/sandbox/v1/events", victim_token, R"({"type":"work","data":{}})")
          .status,
      202u);
  for (int fd : fds) ::close(fd);
  EXPECT_TRUE(WaitForMetric(server, "airlock_http_buffered_body_bytes{listener=\"sandbox\"} 0"));
}

TEST(SandboxAbuseTest, ARouteReadsNoMoreThanItsOwnBodyLimit) {
  TestServer server;
  auto [id, token] = server.NewSession();
  // An event is not a megabyte: refused from its Content-Length, under the server's 1 MiB.
  auto ev = server.Sb(verb::post, "/sandbox/v1/events", token,
                      R"({"type":"x","data":{"pad":")" + std::string(200 * 1024, 'a') + "\"}}");
  EXPECT_EQ(ev.status, 413u);
  EXPECT_EQ(ev.error_code(), "payload_too_large");
  auto inbox = server.Sb(verb::get, "/sandbox/v1/inbox", token, std::string(64 * 1024, ' '));
  EXPECT_EQ(inbox.status, 413u);
  // A chat may carry the server's whole limit.
  auto chat = server.Sb(
      verb::post, "/sandbox/v1/llm/chat", token,
      DumpJson(Json{{"messages", Json::array({{{"role", "user"},
                                               {"content", std::string(512 * 1024, 'a')}}})}}));
  EXPECT_NE(chat.status, 413u) << chat.body;
}

// A client that writes its whole body before reading (Python's urllib, curl with a file) must
// read the refusal, not a broken pipe or a reset.
TEST(SandboxAbuseTest, ARefusedBodyIsAnsweredAndDrainedNotReset) {
  TestServer server([](controlplane::Config& c) { c.limits.max_body_bytes = 64 * 1024; });
  auto [id, token] = server.NewSession();
  std::string big(4 << 20, 'x');
  struct Case {
    uint16_t port;
    std::string head;
    std::string want;
    size_t size = std::string::npos;  // of the body; all of `big` by default
  };
  std::vector<Case> cases = {
      {server.op_port(),
       "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + server.key() + "\r\n",
       "413"},
      {server.op_port(), "POST /v1/sessions HTTP/1.1\r\nHost: x\r\n", "413"},
      {server.sb_port(),
       "POST /sandbox/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token + "\r\n",
       "413"},
      // Within the limit but without credentials: refused unread, and drained the same way.
      {server.op_port(), "POST /v1/sessions HTTP/1.1\r\nHost: x\r\n", "401", 60 * 1024},
      {server.sb_port(),
       "POST /sandbox/v1/finish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sbx_forged\r\n", "401",
       60 * 1024},
  };
  for (const auto& c : cases) {
    int fd = RawConnect(c.port);
    std::string body = big.substr(0, c.size);
    std::string req = c.head + "Content-Type: application/json\r\nContent-Length: " +
                      std::to_string(body.size()) + "\r\n\r\n";
    ASSERT_TRUE(WriteAll(fd, req));
    EXPECT_TRUE(WriteAll(fd, body))
        << c.head << ": the server reset the connection (" << std::strerror(errno) << ")";
    std::string resp = ReadUntilClose(fd, 10'000);
    EXPECT_TRUE(resp.starts_with("HTTP/1.1 " + c.want)) << c.head << "\n" << resp;
    ::close(fd);
  }
}

TEST(SandboxAbuseTest, FramingThatAProxyCouldReadDifferentlyIsRefused) {
  TestServer server;
  auto [id, token] = server.NewSession();
  struct Case {
    std::string request;
    std::string want;
  };
  std::vector<Case> cases = {
      // obs-fold: the credential on a continuation line.
      {"GET /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer\r\n " + server.key() +
           "\r\n\r\n",
       "400"},
      {"GET /v1/sessions HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\tcontinued\r\n\r\n", "400"},
      // An unknown coding with a Content-Length: Beast framed it by the length.
      {"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\nContent-Length: "
       "2\r\n\r\n{}",
       "400"},
      {"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
       "xchunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
       "400"},
      {"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, "
       "identity\r\n\r\n0\r\n\r\n",
       "400"},
      {"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
       "501"},
      {"POST /v1/sessions HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
       "400"},
      // A bare CR inside a field line.
      {"GET /healthz HTTP/1.1\r\nHost: x\rX-Evil: 1\r\n\r\n", "400"},
  };
  for (const auto& c : cases) {
    int fd = RawConnect(server.op_port());
    WriteAll(fd, c.request);
    std::string resp = ReadUntilClose(fd, 10'000);
    EXPECT_TRUE(resp.starts_with("HTTP/1.1 " + c.want)) << c.request << "\n" << resp;
    // Nothing after the refusal: the connection is closed, no second response.
    EXPECT_EQ(resp.find("HTTP/1.1", 1), std::string::npos) << resp;
    ::close(fd);
  }
  // A well-formed chunked request is still served.
  std::string body = DumpJson(Json{{"task", "chunked task"}});
  char size[16];
  std::snprintf(size, sizeof(size), "%zx", body.size());
  int fd = RawConnect(server.op_port());
  WriteAll(fd, "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + server.key() +
                   "\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: "
                   "chunked\r\n\r\n" +
                   size + "\r\n" + body + "\r\n0\r\n\r\n");
  std::string resp = ReadUntilClose(fd);
  EXPECT_TRUE(resp.starts_with("HTTP/1.1 201")) << resp;
  ::close(fd);
}

// A presigned PUT with Transfer-Encoding: chunked stores exactly the bytes sent (finding 9:
// it was answered 201 and stored empty), and the URL's size limit holds for chunked bodies.
TEST(SandboxAbuseTest, ChunkedUploadsStoreExactlyTheBytesSent) {
  TestServer server;
  auto [id, token] = server.NewSession();
  auto presign = [&](const std::string& name, int64_t size) {
    auto r = server.Sb(verb::post, "/sandbox/v1/files/presign", token,
                       DumpJson(Json{{"name", name}, {"method", "PUT"}, {"size", size}}));
    EXPECT_EQ(r.status, 200u) << r.body;
    std::string url = r.json()["url"];
    return url.substr(url.find("/sandbox/"));
  };
  // Written as a streaming client does: each chunk's framing and data in writes of their own,
  // a moment apart, so that the server sees reads holding nothing but framing.
  auto chunked_put = [&](const std::string& target, const std::vector<std::string>& pieces) {
    int fd = RawConnect(server.sb_port());
    WriteAll(fd,
             "PUT " + target +
                 " HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (const auto& p : pieces) {
      char size[16];
      std::snprintf(size, sizeof(size), "%zx\r\n", p.size());
      WriteAll(fd, size);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      WriteAll(fd, p);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      WriteAll(fd, "\r\n");
    }
    WriteAll(fd, "0\r\n\r\n");
    std::string resp = ReadUntilClose(fd);
    ::close(fd);
    return resp;
  };
  std::vector<std::string> pieces = {"hello", std::string(70000, 'a'), "", "x",
                                     std::string(3 << 20, 'z')};
  pieces.erase(pieces.begin() + 2);  // an empty chunk would end the body
  std::string whole;
  for (const auto& p : pieces) whole += p;
  std::string resp = chunked_put(presign("big.bin", static_cast<int64_t>(whole.size())), pieces);
  EXPECT_TRUE(resp.starts_with("HTTP/1.1 201")) << resp.substr(0, 300);
  auto got = server.Op(verb::get, "/v1/sessions/" + id + "/files/big.bin");
  ASSERT_EQ(got.status, 200u);
  EXPECT_EQ(got.body.size(), whole.size());
  EXPECT_TRUE(got.body == whole);
  // Small, in several chunks.
  resp = chunked_put(presign("small.txt", 5), {"he", "l", "lo"});
  EXPECT_TRUE(resp.starts_with("HTTP/1.1 201")) << resp;
  EXPECT_EQ(server.Op(verb::get, "/v1/sessions/" + id + "/files/small.txt").body, "hello");
  // Over the URL's limit: refused, nothing stored.
  resp = chunked_put(presign("over.txt", 10), {std::string(100, 'o')});
  EXPECT_TRUE(resp.starts_with("HTTP/1.1 413")) << resp;
  EXPECT_EQ(server.Op(verb::get, "/v1/sessions/" + id + "/files/over.txt").status, 404u);
}

}  // namespace
}  // namespace airlock::testing
