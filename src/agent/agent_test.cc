// The sandbox-side library against a real local HTTP server on a real socket: the HTTP
// client's framing and failure kinds, the client's retries and chat bookkeeping, and the
// tools (process groups, timeouts, output caps, the environment a tool sees).

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include "src/agent/agent.h"
#include "src/agent/http.h"
#include "src/agent/sandbox_client.h"
#include "src/agent/tools.h"

namespace airlock::agent {
namespace {

struct SeenRequest {
  std::string method, target, body, authorization;
};

// One-thread HTTP server: reads a request (head + Content-Length body) and writes whatever
// the handler returns; an empty answer closes the connection without a response.
class TinyServer {
 public:
  using Handler = std::function<std::string(const SeenRequest&)>;
  explicit TinyServer(Handler h) : handler_(std::move(h)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    ::listen(fd_, 16);
    socklen_t len = sizeof(a);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { Loop(); });
  }
  ~TinyServer() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::vector<SeenRequest> seen() {
    std::lock_guard l(mu_);
    return seen_;
  }

 private:
  void Loop() {
    while (!stop_) {
      int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) return;
      std::string buf;
      char tmp[4096];
      size_t head_end;
      while ((head_end = buf.find("\r\n\r\n")) == std::string::npos) {
        ssize_t n = ::read(c, tmp, sizeof(tmp));
        if (n <= 0) break;
        buf.append(tmp, static_cast<size_t>(n));
      }
      SeenRequest r;
      if (head_end != std::string::npos) {
        std::string head = buf.substr(0, head_end);
        r.method = head.substr(0, head.find(' '));
        r.target = head.substr(head.find(' ') + 1, head.find(" HTTP/") - head.find(' ') - 1);
        size_t length = 0;
        std::string lower = head;
        for (auto& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        if (auto p = lower.find("content-length: "); p != std::string::npos)
          length = std::stoul(lower.substr(p + 16));
        if (auto p = lower.find("authorization: "); p != std::string::npos) {
          r.authorization = head.substr(p + 15, head.find("\r\n", p) - p - 15);
        }
        std::string body = buf.substr(head_end + 4);
        while (body.size() < length) {
          ssize_t n = ::read(c, tmp, sizeof(tmp));
          if (n <= 0) break;
          body.append(tmp, static_cast<size_t>(n));
        }
        r.body = body;
      }
      {
        std::lock_guard l(mu_);
        seen_.push_back(r);
      }
      std::string answer = handler_(r);
      if (!answer.empty()) (void)!::write(c, answer.data(), answer.size());
      ::close(c);
    }
  }

  Handler handler_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::vector<SeenRequest> seen_;
};

std::string JsonAnswer(int status, const std::string& body) {
  return "HTTP/1.1 " + std::to_string(status) +
         " X\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\n\r\n" + body;
}

ClientOptions Quick() {
  ClientOptions o;
  o.retry_deadline_ms = 3'000;
  o.request_timeout_ms = 2'000;
  o.chat_timeout_ms = 2'000;
  return o;
}

TEST(HttpUrl, ParsesHttpAndRefusesHttps) {
  auto u = ParseHttpUrl("http://127.0.0.1:7401/base");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, 7401);
  EXPECT_EQ(u->path, "/base");
  EXPECT_EQ(ParseHttpUrl("http://[::1]:80")->host, "[::1]");
  EXPECT_FALSE(ParseHttpUrl("https://cp.example.com"));
  EXPECT_FALSE(ParseHttpUrl("http://user:pw@host/"));
  EXPECT_FALSE(ParseHttpUrl("http://host:99999/"));
  EXPECT_FALSE(ParseHttpUrl("ftp://host/"));
}

TEST(HttpFetch, ReadsLengthChunkedAndCloseDelimitedBodies) {
  TinyServer s([](const SeenRequest& r) -> std::string {
    if (r.target == "/len") return JsonAnswer(200, "{\"a\":1}");
    if (r.target == "/chunked") {
      return "HTTP/1.1 200 OK\r\nTransfer-Encoding: "
             "chunked\r\n\r\n3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\n\r\n";
    }
    return "HTTP/1.1 200 OK\r\n\r\nuntil the end";
  });
  auto url = *ParseHttpUrl(s.url());
  HttpRequest req;
  req.target = "/len";
  EXPECT_EQ(HttpFetch(url, req, {})->body, "{\"a\":1}");
  req.target = "/chunked";
  EXPECT_EQ(HttpFetch(url, req, {})->body, "abcdefg");
  req.target = "/close";
  EXPECT_EQ(HttpFetch(url, req, {})->body, "until the end");
}

TEST(HttpFetch, TellsConnectFailuresFromBrokenExchanges) {
  TinyServer s([](const SeenRequest&) { return std::string(); });  // hangs up without answering
  HttpRequest req;
  auto broken = HttpFetch(*ParseHttpUrl(s.url()), req, {});
  ASSERT_FALSE(broken);
  EXPECT_EQ(broken.error().kind, HttpError::Kind::kTransfer);

  int port;
  {
    TinyServer gone([](const SeenRequest&) { return std::string(); });
    port = std::stoi(gone.url().substr(gone.url().rfind(':') + 1));
  }
  auto refused = HttpFetch(*ParseHttpUrl("http://127.0.0.1:" + std::to_string(port)), req, {});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().kind, HttpError::Kind::kConnect);
}

TEST(HttpFetch, RefusesBodiesOverTheLimitAndMalformedAnswers) {
  TinyServer s([](const SeenRequest& r) -> std::string {
    if (r.target == "/big") return JsonAnswer(200, std::string(5000, 'x'));
    if (r.target == "/garbage") return "SSH-2.0-OpenSSH\r\n\r\n";
    return "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort";
  });
  auto url = *ParseHttpUrl(s.url());
  HttpOptions o;
  o.max_body = 1000;
  HttpRequest req;
  req.target = "/big";
  EXPECT_FALSE(HttpFetch(url, req, o));
  req.target = "/garbage";
  EXPECT_FALSE(HttpFetch(url, req, o));
  req.target = "/truncated";
  EXPECT_FALSE(HttpFetch(url, req, o));
}

TEST(SandboxClient, RetriesUnavailableThenSucceedsAndSendsTheToken) {
  std::atomic<int> n{0};
  TinyServer s([&](const SeenRequest&) {
    return ++n <= 2 ? JsonAnswer(503, R"({"error":{"code":"unavailable","message":"draining"}})")
                    : JsonAnswer(202, "{}");
  });
  SandboxClient c(s.url(), "tok_secret", "ses_x", Quick());
  int retries = 0;
  c.on_retry = [&](const std::string&) { ++retries; };
  ASSERT_TRUE(c.Event("agent.test", {{"k", 1}}));
  EXPECT_EQ(retries, 2);
  auto seen = s.seen();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[2].authorization, "Bearer tok_secret");
  EXPECT_EQ(seen[2].target, "/sandbox/v1/events");
}

TEST(SandboxClient, MapsStatusesToKinds) {
  TinyServer s([](const SeenRequest& r) -> std::string {
    if (r.target.starts_with("/sandbox/v1/finish"))
      return JsonAnswer(401, R"({"error":{"code":"unauthenticated","message":"revoked"}})");
    if (r.target.starts_with("/sandbox/v1/llm"))
      return JsonAnswer(402, R"({"error":{"code":"budget_exhausted","message":"spent"}})");
    return JsonAnswer(400, R"({"error":{"code":"invalid_argument","message":"bad name"}})");
  });
  SandboxClient c(s.url(), "t", "s", Quick());
  EXPECT_EQ(c.Finish("succeeded", "").error().kind, ClientError::Kind::kSessionOver);
  EXPECT_EQ(c.Chat(Json::array()).error().kind, ClientError::Kind::kBudget);
  auto p = c.Presign("../x", "PUT", 1);
  ASSERT_FALSE(p);
  EXPECT_EQ(p.error().kind, ClientError::Kind::kRejected);
  EXPECT_EQ(p.error().code, "invalid_argument");
}

TEST(SandboxClient, GivesUpWhenNothingAnswersWithinTheDeadline) {
  int port;
  {
    TinyServer gone([](const SeenRequest&) { return std::string(); });
    port = std::stoi(gone.url().substr(gone.url().rfind(':') + 1));
  }
  ClientOptions o = Quick();
  o.retry_deadline_ms = 800;
  SandboxClient c("http://127.0.0.1:" + std::to_string(port), "t", "s", o);
  int retries = 0;
  c.on_retry = [&](const std::string&) { ++retries; };
  auto r = c.Event("x");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind, ClientError::Kind::kUnreachable);
  EXPECT_GE(retries, 1);
}

TEST(SandboxClient, ChatSendsOnlyNewMessagesAndTracksInboxAsSent) {
  TinyServer s([](const SeenRequest& r) -> std::string {
    if (r.target.starts_with("/sandbox/v1/inbox"))
      return JsonAnswer(200, R"({"messages":[{"role":"user","content":"task"}]})");
    if (r.target == "/sandbox/v1/llm/chat") {
      return JsonAnswer(
          200, R"({"message":{"role":"assistant","content":"ok"},"usage":{"input_tokens":3}})");
    }
    return JsonAnswer(404, "{}");
  });
  SandboxClient c(s.url(), "t", "s", Quick());
  ASSERT_EQ(c.Inbox(0)->size(), 1u);
  EXPECT_EQ(c.pending(), 0u);
  ASSERT_TRUE(c.Chat(Json::array()));
  c.Add({{"role", "tool"}, {"tool_call_id", "c1"}, {"content", "r"}});
  ASSERT_TRUE(c.Chat(Json::array()));
  auto seen = s.seen();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(Json::parse(seen[1].body)["messages"].size(), 0u);  // the task went with the inbox
  Json second = Json::parse(seen[2].body)["messages"];
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0]["role"], "tool");
  EXPECT_EQ(c.history().size(), 4u);
}

TEST(SandboxClient, AfterAnAmbiguousChatAdoptsTheStoredReplyInsteadOfResending) {
  std::atomic<int> chats{0};
  TinyServer s([&](const SeenRequest& r) -> std::string {
    if (r.target == "/sandbox/v1/llm/chat") {
      ++chats;
      return std::string();  // the call was stored, then the connection broke
    }
    if (r.target == "/sandbox/v1/history") {
      return JsonAnswer(
          200,
          R"({"messages":[{"role":"user","content":"task"},{"role":"assistant","content":"stored"}]})");
    }
    return JsonAnswer(404, "{}");
  });
  SandboxClient c(s.url(), "t", "s", Quick());
  c.Add({{"role", "user"}, {"content", "task"}});
  auto reply = c.Chat(Json::array());
  ASSERT_TRUE(reply) << reply.error().ToString();
  EXPECT_EQ((*reply)["content"], "stored");
  EXPECT_EQ(chats.load(), 1);
  EXPECT_EQ(c.pending(), 0u);
}

TEST(SandboxClient, AnInboxAnswerLostOnTheWayIsFoundInTheHistory) {
  std::atomic<int> polls{0};
  TinyServer s([&](const SeenRequest& r) -> std::string {
    if (r.target.starts_with("/sandbox/v1/inbox")) {
      ++polls;
      return std::string();  // the messages were taken, then the connection broke
    }
    if (r.target == "/sandbox/v1/history") {
      return JsonAnswer(200, R"({"messages":[{"role":"user","content":"the task"}]})");
    }
    return JsonAnswer(404, "{}");
  });
  SandboxClient c(s.url(), "t", "s", Quick());
  auto got = c.Inbox(0);
  ASSERT_TRUE(got) << got.error().ToString();
  ASSERT_EQ(got->size(), 1u);
  EXPECT_EQ((*got)[0]["content"], "the task");
  EXPECT_EQ(polls.load(), 1);
  EXPECT_EQ(c.pending(), 0u) << "taken messages are never sent again";
}

// What HAProxy answers when the replica it forwarded a request to dies before answering: a
// 502 of its own, not the control plane's JSON error shape.
std::string ProxyBadGateway() {
  const std::string body =
      "<html><body><h1>502 Bad Gateway</h1>\nThe server returned an invalid or incomplete "
      "response.\n</body></html>\n";
  return "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body;
}

TEST(SandboxClient, AChatWhoseAnswerAProxyLostIsAdoptedNotSentTwice) {
  std::atomic<int> chats{0};
  TinyServer s([&](const SeenRequest& r) -> std::string {
    if (r.target == "/sandbox/v1/llm/chat") {
      ++chats;
      return ProxyBadGateway();  // the replica stored the call, then died
    }
    if (r.target == "/sandbox/v1/history") {
      return JsonAnswer(
          200,
          R"({"messages":[{"role":"user","content":"task"},{"role":"assistant","content":"stored"}]})");
    }
    return JsonAnswer(404, "{}");
  });
  SandboxClient c(s.url(), "t", "s", Quick());
  c.Add({{"role", "user"}, {"content", "task"}});
  auto reply = c.Chat(Json::array());
  ASSERT_TRUE(reply) << reply.error().ToString();
  EXPECT_EQ((*reply)["content"], "stored");
  EXPECT_EQ(chats.load(), 1) << "sent again, the call would be stored twice";
  EXPECT_EQ(c.pending(), 0u);
}

TEST(SandboxClient, AnInboxAnswerAProxyLostIsFoundInTheHistory) {
  std::atomic<int> polls{0};
  TinyServer s([&](const SeenRequest& r) -> std::string {
    if (r.target.starts_with("/sandbox/v1/inbox")) {
      return ++polls == 1 ? ProxyBadGateway() : JsonAnswer(204, "");
    }
    if (r.target == "/sandbox/v1/history") {
      return JsonAnswer(200, R"({"messages":[{"role":"user","content":"the task"}]})");
    }
    return JsonAnswer(404, "{}");
  });
  SandboxClient c(s.url(), "t", "s", Quick());
  auto got = c.Inbox(0);
  ASSERT_TRUE(got) << got.error().ToString();
  ASSERT_EQ(got->size(), 1u) << "the message the lost answer carried";
  EXPECT_EQ((*got)[0]["content"], "the task");
  EXPECT_EQ(polls.load(), 1);
}

TEST(SandboxClient, TheControlPlanesOwn502IsRetriedWithoutAsking) {
  // An upstream model error: the control plane says so in its error shape and stored nothing.
  std::atomic<int> chats{0}, histories{0};
  TinyServer s([&](const SeenRequest& r) -> std::string {
    if (r.target == "/sandbox/v1/llm/chat") {
      return ++chats == 1
                 ? JsonAnswer(502, R"({"error":{"code":"upstream_error","message":"it failed"}})")
                 : JsonAnswer(200, R"({"message":{"role":"assistant","content":"ok"}})");
    }
    if (r.target == "/sandbox/v1/history") ++histories;
    return JsonAnswer(404, "{}");
  });
  SandboxClient c(s.url(), "t", "s", Quick());
  auto reply = c.Chat(Json::array());
  ASSERT_TRUE(reply) << reply.error().ToString();
  EXPECT_EQ((*reply)["content"], "ok");
  EXPECT_EQ(chats.load(), 2);
  EXPECT_EQ(histories.load(), 0);
}

TEST(SandboxClient, UploadsAndDownloadsThroughPresignedUrlsWithoutTheToken) {
  std::string base;
  TinyServer s([&](const SeenRequest& r) -> std::string {
    if (r.target == "/sandbox/v1/files/presign") {
      Json req = Json::parse(r.body);
      std::string path = req["method"] == "PUT" ? "/blob-put?sig=1" : "/blob-get?sig=2";
      return JsonAnswer(200, Json{{"url", base + path},
                                  {"method", req["method"]},
                                  {"headers", {{"Content-Type", "application/octet-stream"}}}}
                                 .dump());
    }
    if (r.target == "/blob-put?sig=1") return "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
    if (r.target == "/blob-get?sig=2")
      return "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nfile content";
    return JsonAnswer(404, "{}");
  });
  base = s.url();
  std::string dir = "/tmp/airlock-agent-xfer-" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  { std::ofstream(dir + "/up.txt") << "uploaded bytes"; }
  SandboxClient c(s.url(), "tok_x", "s", Quick());
  auto up = c.Upload(dir + "/up.txt", "up.txt");
  ASSERT_TRUE(up) << up.error().ToString();
  EXPECT_EQ(*up, 14u);
  auto down = c.Download("report.md", dir + "/down.txt");
  ASSERT_TRUE(down) << down.error().ToString();
  std::ifstream in(dir + "/down.txt");
  std::string got((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(got, "file content");
  EXPECT_FALSE(std::filesystem::exists(dir + "/down.txt.airlock-download"));
  auto seen = s.seen();
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_EQ(Json::parse(seen[0].body)["size"], 14);
  EXPECT_EQ(seen[1].method, "PUT");
  EXPECT_EQ(seen[1].body, "uploaded bytes");
  EXPECT_EQ(seen[1].authorization, "")
      << "a presigned URL carries its own signature; the token stays home";
  EXPECT_EQ(seen[3].authorization, "");
  EXPECT_FALSE(c.Upload(dir + "/missing", "x")) << "a missing file is a local error";
  std::filesystem::remove_all(dir);
}

TEST(SandboxClient, AChatStillRunningAfterALostAnswerIsNotSentTwice) {
  // 1st POST: the answer is lost while the call goes on; history: not stored yet; 2nd POST:
  // 409, the first call still holds the conversation; history: now stored -> adopted.
  std::atomic<int> chats{0}, histories{0};
  TinyServer s([&](const SeenRequest& r) -> std::string {
    if (r.target == "/sandbox/v1/llm/chat") {
      return ++chats == 1
                 ? std::string()
                 : JsonAnswer(
                       409,
                       R"({"error":{"code":"conflict","message":"another LLM call is in progress"}})");
    }
    if (r.target == "/sandbox/v1/history") {
      // #1 is LoadHistory, #2 the check after the lost answer, #3 the check after the 409.
      return ++histories <= 2
                 ? JsonAnswer(200, R"({"messages":[{"role":"user","content":"task"}]})")
                 : JsonAnswer(
                       200,
                       R"({"messages":[{"role":"user","content":"task"},{"role":"tool","tool_call_id":"c","content":"r"},{"role":"assistant","content":"late"}]})");
    }
    return JsonAnswer(404, "{}");
  });
  SandboxClient c(s.url(), "t", "s", Quick());
  ASSERT_TRUE(c.LoadHistory());
  c.Add({{"role", "tool"}, {"tool_call_id", "c"}, {"content", "r"}});
  auto reply = c.Chat(Json::array());
  ASSERT_TRUE(reply) << reply.error().ToString();
  EXPECT_EQ((*reply)["content"], "late");
  EXPECT_EQ(chats.load(), 2) << "the messages went out twice at most, and were stored once";
  EXPECT_EQ(c.pending(), 0u);
}

TEST(SandboxClient, FromEnvironmentRemovesTheVariablesFromTheProcessAndItsChildren) {
  ::setenv("SESSION_ID", "ses_envtest", 1);
  ::setenv("SESSION_TOKEN", "tok_must_not_leak_123", 1);
  ::setenv("CONTROL_PLANE_URL", "http://127.0.0.1:1", 1);
  auto c = SandboxClient::FromEnvironment();
  ASSERT_TRUE(c) << c.error();
  EXPECT_EQ(c->session_id(), "ses_envtest");
  EXPECT_EQ(std::getenv("SESSION_TOKEN"), nullptr);
  EXPECT_EQ(std::getenv("SESSION_ID"), nullptr);
  EXPECT_EQ(std::getenv("CONTROL_PLANE_URL"), nullptr);
  auto out = RunShell("env; cat /proc/$PPID/environ 2>&1 | tr '\\0' '\\n'", 10, {});
  EXPECT_EQ(out.text.find("tok_must_not_leak_123"), std::string::npos) << out.text;
  EXPECT_EQ(out.text.find("SESSION_TOKEN"), std::string::npos) << out.text;
}

TEST(Tools, ShellReportsExitCodeAndMergesOutput) {
  auto out = RunShell("echo out; echo err >&2; exit 3", 10, {});
  EXPECT_FALSE(out.ok);
  EXPECT_EQ(out.text.rfind("exit code 3\n", 0), 0u) << out.text;
  EXPECT_NE(out.text.find("out"), std::string::npos);
  EXPECT_NE(out.text.find("err"), std::string::npos);
}

TEST(Tools, ShellTimeoutKillsTheWholeProcessGroup) {
  std::string marker = "/tmp/airlock-agent-test-" + std::to_string(::getpid());
  std::filesystem::remove(marker);
  // A background child that would write the marker after the timeout must die with it.
  auto out = RunShell("(sleep 3; touch " + marker + ") & sleep 30", 1, {});
  EXPECT_FALSE(out.ok);
  EXPECT_EQ(out.text.rfind("killed: timeout after 1 s", 0), 0u) << out.text;
  ::sleep(3);
  EXPECT_FALSE(std::filesystem::exists(marker));
}

TEST(Tools, ShellOutputIsCappedAndTheRestCounted) {
  ToolLimits l;
  l.output_cap = 1000;
  auto out = RunShell("head -c 100000 /dev/zero | tr '\\0' a", 10, l);
  EXPECT_TRUE(out.ok);
  EXPECT_NE(out.text.find("[output truncated: 100000 bytes, the first 1000 shown]"),
            std::string::npos);
  EXPECT_LT(out.text.size(), 1200u);
}

TEST(Tools, FilesRoundTripAndBadInputIsAnAnswer) {
  std::string dir = "/tmp/airlock-agent-files-" + std::to_string(::getpid());
  auto w = WriteFileTool(dir + "/a/b.txt", "hello", {});
  EXPECT_TRUE(w.ok);
  auto r = ReadFileTool(dir + "/a/b.txt", 3);
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.text.rfind("hel\n[truncated: the file has 5 bytes", 0), 0u) << r.text;
  EXPECT_FALSE(ReadFileTool(dir + "/missing", 10).ok);
  EXPECT_FALSE(ReadFileTool(dir, 10).ok);  // a directory
  EXPECT_FALSE(ParseArguments(Json("{not json")));
  EXPECT_FALSE(ParseArguments(Json("[1]")));
  EXPECT_TRUE(ParseArguments(Json("{\"a\":1}")));
  std::filesystem::remove_all(dir);
}

TEST(Agent, InterruptedToolCallsGetAnAnswer) {
  std::vector<Json> h = {
      {{"role", "user"}, {"content", "task"}},
      {{"role", "assistant"},
       {"content", nullptr},
       {"tool_calls", Json::array({{{"id", "a"},
                                    {"type", "function"},
                                    {"function", {{"name", "shell"}, {"arguments", "{}"}}}},
                                   {{"id", "b"},
                                    {"type", "function"},
                                    {"function", {{"name", "shell"}, {"arguments", "{}"}}}}})}},
      {{"role", "tool"}, {"tool_call_id", "a"}, {"content", "done"}},
  };
  auto missing = InterruptedToolResults(h);
  ASSERT_EQ(missing.size(), 1u);
  EXPECT_EQ(missing[0]["tool_call_id"], "b");
  h.push_back(missing[0]);
  EXPECT_TRUE(InterruptedToolResults(h).empty());
}

// The browser tools against a real Chromium (Debian's, which scripts/install-deps.sh installs)
// and a site on loopback: what the model reads, a click that navigates, typing and submitting a
// form, a PNG. The same code drives Chromium inside the `browser` image.
TEST(Browser, OpensReadsClicksTypesAndTakesAScreenshot) {
  const std::string exe = FindChromium();
  if (exe.empty()) GTEST_SKIP() << "no Chromium on this host (scripts/install-deps.sh installs it)";
  auto page = [](const std::string& title, const std::string& body) {
    std::string html = "<!doctype html><html><head><title>" + title + "</title></head><body>" +
                       body + "</body></html>";
    return "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: " +
           std::to_string(html.size()) + "\r\nConnection: close\r\n\r\n" + html;
  };
  TinyServer site([&](const SeenRequest& r) {
    if (r.target == "/") {
      return page("Shop", "<h1>Welcome to the shop</h1><a href=\"/search\">Search page</a>");
    }
    if (r.target == "/search") {
      return page("Search",
                  "<p>Search the catalogue</p><form action=\"/result\">"
                  "<input id=\"q\" name=\"q\" placeholder=\"what\"></form>");
    }
    if (r.target.starts_with("/result?q=")) {
      return page("Result", "<p>Results for: " + r.target.substr(10) + "</p>");
    }
    return std::string("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  });
  BrowserOptions o;
  o.executable = exe;
  Browser browser(o);
  ASSERT_TRUE(browser.available());

  ToolOutcome opened = browser.Open(site.url() + "/");
  ASSERT_TRUE(opened.ok) << opened.text;
  EXPECT_NE(opened.text.find("Title: Shop"), std::string::npos) << opened.text;
  EXPECT_NE(opened.text.find("Welcome to the shop"), std::string::npos) << opened.text;
  EXPECT_NE(opened.text.find("[1] Search page -> " + site.url() + "/search"), std::string::npos)
      << opened.text;

  ToolOutcome clicked = browser.Click("", "search page");
  ASSERT_TRUE(clicked.ok) << clicked.text;
  EXPECT_NE(clicked.text.find("Search the catalogue"), std::string::npos) << clicked.text;
  EXPECT_NE(clicked.text.find("input#q[name=q] (what)"), std::string::npos) << clicked.text;

  ToolOutcome typed = browser.Type("#q", "blue kettle", true);
  ASSERT_TRUE(typed.ok) << typed.text;
  EXPECT_NE(typed.text.find("Results for: blue+kettle"), std::string::npos) << typed.text;

  char dir[] = "/tmp/airlock-shot-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string png = std::string(dir) + "/shot.png";
  ToolOutcome shot = browser.Screenshot(png);
  ASSERT_TRUE(shot.ok) << shot.text;
  std::ifstream f(png, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_TRUE(bytes.starts_with("\x89PNG\r\n\x1a\n")) << bytes.size();
  EXPECT_GT(bytes.size(), 1000u);
  std::filesystem::remove_all(dir);

  // What the model may get wrong is an answer, not a crash.
  EXPECT_FALSE(browser.Click("#nope", "").ok);
  EXPECT_NE(browser.Click("#nope", "").text.find("no element matches #nope"), std::string::npos);
  EXPECT_NE(browser.Click("[[[", "").text.find("the page's script failed"), std::string::npos);
  EXPECT_FALSE(browser.Click("", "").ok);
  EXPECT_FALSE(browser.Open("file:///etc/passwd").ok);
  int closed = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(closed, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  ::getsockname(closed, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(closed);  // nothing listens there now
  ToolOutcome refused = browser.Open("http://127.0.0.1:" + std::to_string(ntohs(a.sin_port)) + "/");
  EXPECT_FALSE(refused.ok);
  EXPECT_NE(refused.text.find("ERR_CONNECTION_REFUSED"), std::string::npos) << refused.text;
  // And the browser still works after them.
  EXPECT_TRUE(browser.Open(site.url() + "/").ok);

  // A Chromium that dies fails the call in flight; the next one starts a new browser.
  ASSERT_GT(browser.pid(), 0);
  ::kill(browser.pid(), SIGKILL);
  ToolOutcome lost = browser.Text();
  EXPECT_FALSE(lost.ok);
  EXPECT_NE(lost.text.find("the browser"), std::string::npos) << lost.text;
  ToolOutcome again = browser.Open(site.url() + "/search");
  EXPECT_TRUE(again.ok) << again.text;
  EXPECT_NE(again.text.find("Search the catalogue"), std::string::npos) << again.text;
}

TEST(Browser, ANonexistentChromiumIsAClearAnswerAndNoBrowserMeansNoTools) {
  BrowserOptions o;
  o.executable = "/nonexistent/chromium";
  Browser browser(o);
  ToolOutcome out = browser.Open("http://127.0.0.1:1/");
  EXPECT_FALSE(out.ok);
  EXPECT_NE(out.text.find("the browser did not start"), std::string::npos) << out.text;
  EXPECT_FALSE(Browser(BrowserOptions{}).available());
  EXPECT_EQ(DecodeBase64("aGVsbG8=").value_or(""), "hello");
  EXPECT_EQ(DecodeBase64("aGVsbG8").value_or(""), "hello");
  EXPECT_FALSE(DecodeBase64("a*b").has_value());
}

}  // namespace
}  // namespace airlock::agent
