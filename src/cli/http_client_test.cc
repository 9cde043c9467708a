#include "cli/http_client.h"

#include <future>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "common/asio.h"

namespace airlock::cli {
namespace {

using tcp = asio::ip::tcp;

TEST(ParseUrl, ReadsHostPortAndBasePath) {
  auto u = ParseUrl("http://127.0.0.1:7400");
  ASSERT_TRUE(u.has_value());
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, 7400);
  EXPECT_EQ(u->base_path, "");
  auto p = ParseUrl("HTTP://example.com/airlock/");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->host, "example.com");
  EXPECT_EQ(p->port, 80);
  EXPECT_EQ(p->base_path, "/airlock");
  auto v6 = ParseUrl("http://[::1]:9000");
  ASSERT_TRUE(v6.has_value());
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->ToString(), "http://[::1]:9000");
}

TEST(ParseUrl, RefusesWhatItCannotServe) {
  EXPECT_FALSE(ParseUrl("https://x").has_value());
  EXPECT_FALSE(ParseUrl("127.0.0.1:7400").has_value());
  EXPECT_FALSE(ParseUrl("http://").has_value());
  EXPECT_FALSE(ParseUrl("http://:80").has_value());
  EXPECT_FALSE(ParseUrl("http://h:").has_value());
  EXPECT_FALSE(ParseUrl("http://h:99999").has_value());
  EXPECT_FALSE(ParseUrl("http://h:0").has_value());
  EXPECT_FALSE(ParseUrl("http://user@h").has_value());
  EXPECT_FALSE(ParseUrl("http://h/x?y=1").has_value());
  EXPECT_FALSE(ParseUrl("http://[::1").has_value());
}

// A port nobody listens on: bound once, then released.
uint16_t FreePort() {
  asio::io_context io;
  tcp::acceptor a(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  return a.local_endpoint().port();
}

TEST(HttpClient, ConnectionRefusedSaysWhatToCheck) {
  auto client = HttpClient::Create(fmt::format("http://127.0.0.1:{}", FreePort()));
  ASSERT_TRUE(client.has_value());
  auto res = client->Do("GET", "/healthz");
  ASSERT_FALSE(res.has_value());
  EXPECT_EQ(res.error().code, ErrorCode::kUnavailable);
  EXPECT_NE(res.error().message.find("connection refused"), std::string::npos)
      << res.error().message;
  EXPECT_NE(res.error().message.find("airlock serve"), std::string::npos);
}

// A one-connection server on 127.0.0.1:0 that runs `script` on the accepted socket.
class FakeServer {
 public:
  explicit FakeServer(std::function<void(tcp::socket&)> script)
      : acceptor_(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {
    thread_ = std::thread([this, script = std::move(script)] {
      tcp::socket s(io_);
      acceptor_.accept(s);
      script(s);
    });
  }
  ~FakeServer() { thread_.join(); }
  std::string url() const {
    return fmt::format("http://127.0.0.1:{}", acceptor_.local_endpoint().port());
  }

 private:
  asio::io_context io_;
  tcp::acceptor acceptor_;
  std::thread thread_;
};

std::string ReadRequest(tcp::socket& s) {
  std::string req;
  beast::error_code ec;
  asio::read_until(s, asio::dynamic_buffer(req), "\r\n\r\n", ec);
  return req;
}

void Send(tcp::socket& s, std::string_view text) {
  asio::write(s, asio::buffer(text.data(), text.size()));
}

std::string Chunk(std::string_view body) {
  return fmt::format("{:x}\r\n{}\r\n", body.size(), body);
}

TEST(HttpClient, DoSendsBearerAndJsonAndReturnsErrorsAsResponses) {
  std::promise<std::string> seen;
  FakeServer server([&seen](tcp::socket& s) {
    std::string req = ReadRequest(s);
    seen.set_value(req);
    Send(s,
         "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 47\r\n\r\n"
         "{\"error\":{\"code\":\"not_found\",\"message\":\"gone\"}}");
  });
  auto client = HttpClient::Create(server.url() + "/base");
  ASSERT_TRUE(client.has_value());
  client->SetBearerToken(Secret("k3y"));
  auto res = client->Do("POST", "/v1/sessions", Json{{"task", "t"}});
  ASSERT_TRUE(res.has_value()) << res.error().message;
  EXPECT_EQ(res->status, 404);
  EXPECT_FALSE(res->ok());
  EXPECT_EQ(res->content_type, "application/json");
  EXPECT_EQ(res->body, "{\"error\":{\"code\":\"not_found\",\"message\":\"gone\"}}");
  std::string req = seen.get_future().get();
  EXPECT_TRUE(req.starts_with("POST /base/v1/sessions HTTP/1.1\r\n")) << req;
  EXPECT_NE(req.find("Authorization: Bearer k3y\r\n"), std::string::npos) << req;
  EXPECT_NE(req.find("Content-Type: application/json\r\n"), std::string::npos) << req;
}

TEST(HttpClient, StreamSseDeliversEachEventBeforeTheNextChunkIsSent) {
  // The server sends the second event only once the first has reached the callback: a client
  // that waits for more bytes (or the end) before calling back would deadlock here and time out.
  std::promise<void> first_seen;
  auto first_seen_future = first_seen.get_future();
  FakeServer server([&](tcp::socket& s) {
    ReadRequest(s);
    Send(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
    Send(s, Chunk(": hello\n\nid: 1\nevent: a\ndata: {\"seq\":1}\n\n"));
    if (first_seen_future.wait_for(std::chrono::seconds(10)) != std::future_status::ready) return;
    Send(s, Chunk("id: 2\r\nevent: b\r\ndata: x\r\ndata: y\r\n\r\n"));
    Send(s, "0\r\n\r\n");
  });
  auto client = HttpClient::Create(server.url());
  ASSERT_TRUE(client.has_value());
  std::vector<SseEvent> events;
  auto res = client->StreamSse("/events", {}, [&](const SseEvent& e) {
    events.push_back(e);
    if (events.size() == 1) first_seen.set_value();
    return true;
  });
  ASSERT_TRUE(res.has_value()) << res.error().message;
  EXPECT_EQ(res->status, 200);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].id, "1");
  EXPECT_EQ(events[0].data, "{\"seq\":1}");
  EXPECT_EQ(events[1].event, "b");
  EXPECT_EQ(events[1].data, "x\ny");
}

TEST(HttpClient, StreamThatDropsMidwayIsAnError) {
  FakeServer server([](tcp::socket& s) {
    ReadRequest(s);
    Send(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
    Send(s, Chunk("data: 1\n\n"));
    s.close();
  });
  auto client = HttpClient::Create(server.url());
  ASSERT_TRUE(client.has_value());
  int n = 0;
  auto res = client->StreamSse("/events", {}, [&](const SseEvent&) {
    ++n;
    return true;
  });
  EXPECT_EQ(n, 1);
  ASSERT_FALSE(res.has_value());
  EXPECT_EQ(res.error().code, ErrorCode::kUnavailable);
}

TEST(HttpClient, StreamErrorStatusReturnsTheBody) {
  FakeServer server([](tcp::socket& s) {
    ReadRequest(s);
    Send(s,
         "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: "
         "2\r\n\r\n{}");
  });
  auto client = HttpClient::Create(server.url());
  ASSERT_TRUE(client.has_value());
  bool called = false;
  auto res = client->StreamSse("/events", {}, [&](const SseEvent&) {
    called = true;
    return true;
  });
  ASSERT_TRUE(res.has_value()) << res.error().message;
  EXPECT_EQ(res->status, 401);
  EXPECT_EQ(res->body, "{}");
  EXPECT_FALSE(called);
}

TEST(HttpClient, SilentServerTimesOut) {
  FakeServer server([](tcp::socket& s) {
    ReadRequest(s);
    std::this_thread::sleep_for(std::chrono::milliseconds(800));
  });
  HttpClientOptions opts;
  opts.request_timeout = std::chrono::milliseconds(200);
  auto client = HttpClient::Create(server.url(), opts);
  ASSERT_TRUE(client.has_value());
  auto res = client->Do("GET", "/slow");
  ASSERT_FALSE(res.has_value());
  EXPECT_EQ(res.error().code, ErrorCode::kDeadlineExceeded);
}

}  // namespace
}  // namespace airlock::cli
