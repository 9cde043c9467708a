// Clients that misbehave: malformed, oversized, slow, numerous. Every one gets a clean JSON
// error or a closed connection, and the server keeps serving everyone else.
#include "tests/integration/harness.h"

namespace airlock::testing {
namespace {

using http::verb;

void TightLimits(controlplane::Config& c) {
  c.limits.max_header_bytes = 4096;
  c.limits.max_body_bytes = 64 * 1024;
  c.limits.header_timeout = std::chrono::milliseconds(500);
  c.limits.body_timeout = std::chrono::milliseconds(500);
  c.limits.idle_timeout = std::chrono::milliseconds(2000);
}

class HostileClientTest : public ::testing::Test {
 protected:
  TestServer server_{TightLimits};
};

TEST_F(HostileClientTest, MalformedJsonGets400WithJsonError) {
  for (const std::string& body :
       {std::string("{"), std::string("{\"task\":}"), std::string("\xff\xfe"), std::string("null"),
        std::string("{\"task\":\"a\"} trailing")}) {
    auto r = server_.Op(verb::post, "/v1/sessions", body);
    EXPECT_EQ(r.status, 400u) << body;
    EXPECT_EQ(r.error_code(), "invalid_argument") << r.body;
  }
}

TEST_F(HostileClientTest, DeeplyNestedJsonIsRefusedNotRecursed) {
  std::string deep =
      "{\"task\":\"x\",\"metadata\":" + std::string(100000, '[') + std::string(100000, ']') + "}";
  auto r = server_.Op(verb::post, "/v1/sessions", deep.substr(0, 60000));
  EXPECT_EQ(r.status, 400u);
  EXPECT_NE(r.body.find("nested"), std::string::npos);
}

TEST_F(HostileClientTest, OversizedBodyGets413) {
  std::string big = "{\"task\":\"" + std::string(100 * 1024, 'x') + "\"}";
  auto r = server_.Op(verb::post, "/v1/sessions", big);
  EXPECT_EQ(r.status, 413u);
  EXPECT_EQ(r.error_code(), "payload_too_large");
  auto [id, token] = server_.NewSession();
  auto ev = server_.Sb(verb::post, "/sandbox/v1/events", token, big);
  EXPECT_EQ(ev.status, 413u);
}

TEST_F(HostileClientTest, OversizedBodyIsRefusedBeforeItIsRead) {
  int fd = RawConnect(server_.op_port());
  ASSERT_GE(fd, 0);
  WriteAll(fd, "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\n");
  std::string resp = ReadUntilClose(fd);
  ::close(fd);
  EXPECT_TRUE(resp.starts_with("HTTP/1.1 413")) << resp;
  EXPECT_NE(resp.find("payload_too_large"), std::string::npos);
}

TEST_F(HostileClientTest, OversizedHeadersGet431) {
  auto r = HttpCall(server_.op_port(), verb::get, "/healthz", "", "",
                    {{"X-Big", std::string(8000, 'h')}});
  EXPECT_EQ(r.status, 431u);
  EXPECT_EQ(r.error_code(), "headers_too_large");
}

TEST_F(HostileClientTest, UnknownRouteIsJson404AndWrongMethodIsJson405) {
  auto nf = server_.Op(verb::get, "/nope");
  EXPECT_EQ(nf.status, 404u);
  EXPECT_EQ(nf.error_code(), "not_found");
  EXPECT_EQ(nf.headers["Content-Type"], "application/json");
  auto na = server_.Op(verb::put, "/v1/sessions");
  EXPECT_EQ(na.status, 405u);
  EXPECT_EQ(na.error_code(), "method_not_allowed");
  EXPECT_NE(na.headers["Allow"].find("POST"), std::string::npos);
}

TEST_F(HostileClientTest, GarbageRequestLineGets400AndClose) {
  int fd = RawConnect(server_.op_port());
  WriteAll(fd, "\x16\x03\x01\x02\x00 not http at all\r\n\r\n");
  std::string resp = ReadUntilClose(fd);
  ::close(fd);
  EXPECT_TRUE(resp.starts_with("HTTP/1.1 400")) << resp;
  EXPECT_NE(resp.find("\"error\""), std::string::npos);
}

TEST_F(HostileClientTest, SlowLorisIsCutOffWhileOthersAreServed) {
  std::vector<int> slow;
  for (int i = 0; i < 20; ++i) {
    int fd = RawConnect(server_.op_port());
    ASSERT_GE(fd, 0);
    WriteAll(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n");
    slow.push_back(fd);
  }
  // Everyone else is served while the slow clients dribble.
  EXPECT_EQ(HttpCall(server_.op_port(), verb::get, "/healthz").status, 200u);
  for (int fd : slow) {
    // One more header line, never the end of headers.
    WriteAll(fd, "X-Slow: 1\r\n");
  }
  for (int fd : slow) {
    // The server hangs up: ReadUntilClose sees EOF with nothing sent, long before its own
    // 10 s limit (a hang would leave a read timeout, caught below).
    EXPECT_EQ(ReadUntilClose(fd, 10000), "");
    char c;
    EXPECT_EQ(::recv(fd, &c, 1, MSG_DONTWAIT), 0);  // orderly EOF, not EAGAIN
    ::close(fd);
  }
  EXPECT_TRUE(WaitForMetric(server_, "reason=\"header_timeout\"} 20"));
}

TEST_F(HostileClientTest, SlowBodyIsCutOff) {
  int fd = RawConnect(server_.op_port());
  // With the key: a request without one is refused before its body is read (sandbox_abuse_test).
  WriteAll(fd, "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + server_.key() +
                   "\r\nContent-Length: 100\r\n\r\n{\"task\"");
  EXPECT_EQ(ReadUntilClose(fd, 10000), "");
  char c;
  EXPECT_EQ(::recv(fd, &c, 1, MSG_DONTWAIT), 0);
  ::close(fd);
  EXPECT_TRUE(WaitForMetric(server_, "reason=\"body_timeout\"} 1"));
}

TEST_F(HostileClientTest, IdleKeepAliveConnectionsAreClosed) {
  int fd = RawConnect(server_.op_port());
  WriteAll(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  std::string first = ReadOneResponse(fd);
  EXPECT_TRUE(first.starts_with("HTTP/1.1 200"));
  // Nothing more is sent: the server closes after its idle timeout.
  std::string rest = ReadUntilClose(fd, 15000);
  EXPECT_EQ(rest, "");
  char c;
  EXPECT_EQ(::recv(fd, &c, 1, MSG_DONTWAIT), 0);  // orderly EOF, not a timeout
  ::close(fd);
}

TEST_F(HostileClientTest, KeepAliveServesManyRequestsOnOneConnection) {
  int fd = RawConnect(server_.op_port());
  for (int i = 0; i < 50; ++i) {
    WriteAll(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_TRUE(ReadOneResponse(fd).starts_with("HTTP/1.1 200"));
  }
  // Pipelined.
  std::string two =
      "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: "
      "close\r\n\r\n";
  WriteAll(fd, two);
  // Both responses, in order, possibly in one segment; then the server closes.
  std::string both = ReadUntilClose(fd);
  EXPECT_TRUE(both.starts_with("HTTP/1.1 200")) << both;
  auto second = both.find("HTTP/1.1 404");
  EXPECT_NE(second, std::string::npos) << both;
  ::close(fd);
}

TEST(ConnectionLimitTest, ConnectionsOverTheLimitAreClosed) {
  TestServer server([](controlplane::Config& c) { c.operator_max_connections = 10; });
  std::vector<int> fds;
  for (int i = 0; i < 10; ++i) {
    int fd = RawConnect(server.op_port());
    WriteAll(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    ASSERT_TRUE(ReadOneResponse(fd).starts_with("HTTP/1.1 200"));
    fds.push_back(fd);
  }
  int extra = RawConnect(server.op_port());
  WriteAll(extra, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(ReadUntilClose(extra, 5000), "");
  ::close(extra);
  ::close(fds.back());
  fds.pop_back();
  // A slot is free again once a connection goes away.
  std::string resp;
  for (int attempt = 0; attempt < 50 && !resp.starts_with("HTTP/1.1 200"); ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    int fd = RawConnect(server.op_port());
    WriteAll(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    resp = ReadUntilClose(fd, 2000);
    ::close(fd);
  }
  EXPECT_TRUE(resp.starts_with("HTTP/1.1 200"));
  for (int fd : fds) ::close(fd);
}

TEST(LongPollScaleTest, AThousandConcurrentLongPollsAreEachWokenWithTheirOwnMessage) {
  TestServer server;
  constexpr int kSessions = 1000;
  std::vector<std::pair<std::string, std::string>> sessions;
  for (int i = 0; i < kSessions; ++i) {
    sessions.push_back(server.NewSession("task " + std::to_string(i)));
    server.Sb(verb::get, "/sandbox/v1/inbox", sessions.back().second);  // take the task
  }
  std::vector<int> fds;
  for (const auto& [id, token] : sessions) {
    int fd = RawConnect(server.sb_port());
    ASSERT_GE(fd, 0);
    WriteAll(fd, "GET /sandbox/v1/inbox?wait=60 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                     token + "\r\n\r\n");
    fds.push_back(fd);
  }
  ASSERT_TRUE(WaitForMetric(server, "airlock_inbox_waiting " + std::to_string(kSessions)));
  for (int i = 0; i < kSessions; ++i) {
    auto r = server.Op(verb::post, "/v1/sessions/" + sessions[i].first + "/messages",
                       DumpJson(Json{{"content", "for " + sessions[i].first}}));
    ASSERT_EQ(r.status, 202u);
  }
  for (int i = 0; i < kSessions; ++i) {
    std::string resp = ReadOneResponse(fds[i]);
    ASSERT_TRUE(resp.starts_with("HTTP/1.1 200")) << i << ": " << resp;
    auto body = ParseJson(resp.substr(resp.find("\r\n\r\n") + 4));
    ASSERT_TRUE(body.has_value());
    ASSERT_EQ((*body)["messages"].size(), 1u);
    EXPECT_EQ((*body)["messages"][0]["content"], "for " + sessions[i].first);
    ::close(fds[i]);
  }
}

// Reads SSE frames from a raw socket until `want` events were seen (or the stream ends).
std::vector<Json> ReadSse(int fd, size_t want, std::string* leftover = nullptr) {
  std::vector<Json> out;
  std::string buf;
  char chunk[4096];
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  while (out.size() < want) {
    ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
    if (n <= 0) break;
    buf.append(chunk, static_cast<size_t>(n));
    size_t pos;
    while ((pos = buf.find("data: ")) != std::string::npos) {
      size_t end = buf.find('\n', pos);
      if (end == std::string::npos) break;
      auto j = ParseJson(buf.substr(pos + 6, end - pos - 6));
      if (j) out.push_back(*j);
      buf.erase(0, end + 1);
    }
  }
  if (leftover) *leftover = buf;
  return out;
}

TEST_F(HostileClientTest, SseStreamsLiveEventsAndReplaysAfterReconnect) {
  auto [id, token] = server_.NewSession();
  auto open_stream = [&](const std::string& extra) {
    int fd = RawConnect(server_.op_port());
    WriteAll(fd, "GET /v1/sessions/" + id + "/events" + extra +
                     " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + server_.key() + "\r\n\r\n");
    return fd;
  };
  int fd = open_stream("");
  // session.created and session.state(starting->running) are already there.
  auto first = ReadSse(fd, 2);
  ASSERT_EQ(first.size(), 2u);
  EXPECT_EQ(first[0]["type"], "session.created");
  for (int i = 0; i < 3; ++i)
    server_.Sb(verb::post, "/sandbox/v1/events", token,
               DumpJson(Json{{"type", "step"}, {"data", {{"i", i}}}}));
  auto live = ReadSse(fd, 3);
  ASSERT_EQ(live.size(), 3u);
  EXPECT_EQ(live[2]["data"]["i"], 2);
  int64_t last_seen = live[1]["seq"];  // pretend the last one was lost with the connection
  ::close(fd);
  for (int i = 3; i < 6; ++i)
    server_.Sb(verb::post, "/sandbox/v1/events", token,
               DumpJson(Json{{"type", "step"}, {"data", {{"i", i}}}}));
  int fd2 = open_stream("?after=" + std::to_string(last_seen));
  auto replay = ReadSse(fd2, 4);
  ASSERT_EQ(replay.size(), 4u);
  for (size_t k = 0; k < replay.size(); ++k) {
    EXPECT_EQ(replay[k]["seq"].get<int64_t>(), last_seen + 1 + static_cast<int64_t>(k));
    EXPECT_EQ(replay[k]["data"]["i"], static_cast<int>(k) + 2);
  }
  // The stream ends by itself once the session is over.
  server_.Sb(verb::post, "/sandbox/v1/finish", token, R"({"status":"succeeded"})");
  std::string tail = ReadUntilClose(fd2, 10000);
  EXPECT_NE(tail.find("session.state"), std::string::npos);
  EXPECT_NE(tail.find("0\r\n\r\n"), std::string::npos);  // last chunk
  ::close(fd2);
}

TEST_F(HostileClientTest, SseHonoursLastEventId) {
  auto [id, token] = server_.NewSession();
  server_.Sb(verb::post, "/sandbox/v1/finish", token, R"({"status":"failed"})");
  auto all =
      server_.Op(verb::get, "/v1/sessions/" + id + "/events", "", {{"Accept", "application/json"}})
          .json();
  ASSERT_GE(all.size(), 3u);
  int fd = RawConnect(server_.op_port());
  WriteAll(fd, "GET /v1/sessions/" + id + "/events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: " +
                   std::to_string(all.size() - 1) + "\r\nAuthorization: Bearer " + server_.key() +
                   "\r\n\r\n");
  auto evs = ReadSse(fd, 10);
  ::close(fd);
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0]["seq"], all.size());
}

TEST(DrainTest, ShutdownAnswersParkedLongPollsAndClosesIdleConnections) {
  TestServer server;
  auto [id, token] = server.NewSession();
  server.Sb(verb::get, "/sandbox/v1/inbox", token);
  int poll = RawConnect(server.sb_port());
  WriteAll(poll, "GET /sandbox/v1/inbox?wait=60 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                     token + "\r\n\r\n");
  int idle = RawConnect(server.op_port());
  ASSERT_TRUE(WaitForMetric(server, "airlock_inbox_waiting 1"));
  server.Stop();
  std::string resp = ReadUntilClose(poll, 10000);
  EXPECT_TRUE(resp.starts_with("HTTP/1.1 204")) << resp;
  EXPECT_NE(resp.find("Connection: close"), std::string::npos);
  EXPECT_EQ(ReadUntilClose(idle, 10000), "");
  ::close(poll);
  ::close(idle);
}

}  // namespace
}  // namespace airlock::testing
