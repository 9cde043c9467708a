#include "tests/llm/fake_upstream.h"
#include "tests/support/temp_dir.h"

#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <boost/asio/ssl.hpp>
#include <boost/beast/ssl.hpp>

#include "common/asio.h"
#include "common/sse_parser.h"
#include "tests/llm/test_tls.h"

namespace airlock::fake {
namespace {

using namespace std::chrono_literals;
using Json = nlohmann::json;
using tcp = asio::ip::tcp;

auto Redirect(beast::error_code& ec) { return asio::redirect_error(use_awaitable, ec); }

// What a client saw of one exchange. `body` holds what arrived even when the read failed.
struct Exchange {
  beast::error_code ec;
  unsigned status = 0;
  http::fields headers;
  std::string body;
};

// A plain Beast client on its own io_context, driven to completion by each call, with a
// deadline on every operation so that a fault in the server fails the test instead of hanging.
class TestClient {
 public:
  explicit TestClient(uint16_t port) : port_(port) { tcp_.emplace(io_); }
  TestClient(uint16_t port, asio::ssl::context& tls, std::string host)
      : port_(port), host_(std::move(host)) {
    tls_.emplace(io_, tls);
  }

  beast::error_code Connect() {
    beast::error_code ec;
    Run([&]() -> awaitable<void> {
      tcp::endpoint endpoint(asio::ip::make_address("127.0.0.1"), port_);
      beast::tcp_stream& lowest = tls_ ? beast::get_lowest_layer(*tls_) : *tcp_;
      lowest.expires_after(5s);
      co_await lowest.async_connect(endpoint, Redirect(ec));
      if (ec || !tls_) co_return;
      SSL* ssl = tls_->native_handle();
      beast::error_code not_ip;
      asio::ip::make_address(host_, not_ip);
      if (not_ip) {
        SSL_set_tlsext_host_name(ssl, host_.c_str());
        SSL_set1_host(ssl, host_.c_str());
      } else {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host_.c_str());
      }
      co_await tls_->async_handshake(asio::ssl::stream_base::client, Redirect(ec));
    });
    return ec;
  }

  Exchange Send(http::request<http::string_body> req, std::chrono::milliseconds timeout = 5s) {
    req.prepare_payload();
    Exchange out;
    Run([&]() -> awaitable<void> {
      if (tls_) {
        co_await DoSend(*tls_, req, out, timeout);
      } else {
        co_await DoSend(*tcp_, req, out, timeout);
      }
    });
    return out;
  }

 private:
  template <typename F>
  void Run(F make) {
    asio::co_spawn(io_, make(), asio::detached);
    io_.restart();
    io_.run();
  }

  template <typename Stream>
  awaitable<void> DoSend(Stream& stream, http::request<http::string_body>& req, Exchange& out,
                         std::chrono::milliseconds timeout) {
    beast::get_lowest_layer(stream).expires_after(timeout);
    co_await http::async_write(stream, req, Redirect(out.ec));
    if (out.ec) co_return;
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 << 20);
    co_await http::async_read(stream, buffer_, parser, Redirect(out.ec));
    beast::get_lowest_layer(stream).expires_never();
    if (parser.is_header_done()) {
      out.status = parser.get().result_int();
      out.headers = parser.get().base();
    }
    out.body = parser.get().body();
  }

  asio::io_context io_;
  uint16_t port_;
  std::string host_ = "localhost";
  std::optional<beast::tcp_stream> tcp_;
  std::optional<beast::ssl_stream<beast::tcp_stream>> tls_;
  beast::flat_buffer buffer_;
};

http::request<http::string_body> Post(std::string target, const Json& body) {
  http::request<http::string_body> req(http::verb::post, target, 11);
  req.set(http::field::host, "localhost");
  req.set(http::field::content_type, "application/json");
  req.body() = body.dump();
  return req;
}

Json OpenAiRequest(bool stream, bool include_usage = false) {
  Json body = {{"model", "gpt-4o-mini"},
               {"messages", {{{"role", "user"}, {"content", "Say hello to the test suite."}}}}};
  if (stream) body["stream"] = true;
  if (include_usage) body["stream_options"] = {{"include_usage", true}};
  return body;
}

Json AnthropicRequest(bool stream) {
  Json body = {{"model", "claude-sonnet-4-5"},
               {"max_tokens", 1024},
               {"system", "Be brief."},
               {"messages", {{{"role", "user"}, {"content", "Say hello to the test suite."}}}}};
  if (stream) body["stream"] = true;
  return body;
}

http::request<http::string_body> AnthropicPost(const Json& body) {
  auto req = Post("/v1/messages", body);
  req.set("anthropic-version", "2023-06-01");
  return req;
}

struct Event {
  std::string type;  // the SSE event name ("message" when unnamed)
  std::string data;
};

std::vector<Event> ParseSse(const std::string& body) {
  std::vector<Event> events;
  SseParser parser([&](const SseEvent& e) {
    events.push_back({e.event, e.data});
    return true;
  });
  auto fed = parser.Feed(body);
  EXPECT_TRUE(fed.has_value());
  return events;
}

Json ParseJson(const std::string& text) {
  Json j = Json::parse(text, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << text;
  return j;
}

std::unique_ptr<FakeUpstream> StartFake(FakeUpstreamOptions options = {}) {
  auto up = FakeUpstream::Start(std::move(options));
  EXPECT_TRUE(up.has_value()) << (up ? "" : up.error().message);
  return up ? std::move(*up) : nullptr;
}

// ---- OpenAI -----------------------------------------------------------------------------------

TEST(FakeUpstreamOpenAi, DefaultReplyHasTheChatCompletionShape) {
  auto up = StartFake();
  ASSERT_TRUE(up);
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());
  Exchange ex = client.Send(Post("/v1/chat/completions", OpenAiRequest(false)));
  ASSERT_FALSE(ex.ec) << ex.ec.message();
  EXPECT_EQ(ex.status, 200u);
  EXPECT_EQ(ex.headers[http::field::content_type], "application/json");
  Json j = ParseJson(ex.body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_TRUE(j["id"].get<std::string>().starts_with("chatcmpl-"));
  EXPECT_EQ(j["model"], "gpt-4o-mini");
  EXPECT_TRUE(j["created"].is_number_integer());
  ASSERT_EQ(j["choices"].size(), 1u);
  EXPECT_EQ(j["choices"][0]["index"], 0);
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "reply 1");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  const Json& usage = j["usage"];
  // The messages array serializes to 62 bytes: 62 / 4 = 15 prompt tokens; "reply 1" is 2 words.
  EXPECT_EQ(usage["prompt_tokens"], Json(OpenAiRequest(false)["messages"]).dump().size() / 4);
  EXPECT_EQ(usage["completion_tokens"], 2);
  EXPECT_EQ(usage["total_tokens"],
            usage["prompt_tokens"].get<int>() + usage["completion_tokens"].get<int>());
}

TEST(FakeUpstreamOpenAi, StreamSendsRoleContentFinishUsageThenDone) {
  auto up = StartFake();
  ASSERT_TRUE(up);
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());
  Exchange ex = client.Send(Post("/v1/chat/completions", OpenAiRequest(true, true)));
  ASSERT_FALSE(ex.ec) << ex.ec.message();
  EXPECT_EQ(ex.status, 200u);
  EXPECT_TRUE(ex.headers[http::field::content_type].starts_with("text/event-stream"));
  EXPECT_EQ(ex.headers[http::field::transfer_encoding], "chunked");

  std::vector<Event> events = ParseSse(ex.body);
  ASSERT_GE(events.size(), 5u);
  EXPECT_EQ(events.back().data, "[DONE]");
  Json first = ParseJson(events[0].data);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(first.contains("usage") && first["usage"].is_null());

  std::string text;
  std::optional<std::string> finish;
  Json usage;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    EXPECT_EQ(events[i].type, "message");  // OpenAI names no events
    Json chunk = ParseJson(events[i].data);
    EXPECT_EQ(chunk["id"], first["id"]);
    if (chunk["choices"].empty()) {
      EXPECT_FALSE(finish == std::nullopt) << "usage chunk before the finish chunk";
      usage = chunk["usage"];
      EXPECT_EQ(i, events.size() - 2) << "usage chunk is the last before [DONE]";
      continue;
    }
    const Json& choice = chunk["choices"][0];
    if (choice["delta"].contains("content") && choice["delta"]["content"].is_string()) {
      text += choice["delta"]["content"].get<std::string>();
    }
    if (!choice["finish_reason"].is_null()) finish = choice["finish_reason"];
  }
  EXPECT_EQ(text, "reply 1");
  EXPECT_EQ(finish, "stop");
  ASSERT_TRUE(usage.is_object());
  EXPECT_EQ(usage["completion_tokens"], 2);
  EXPECT_GT(usage["prompt_tokens"].get<int>(), 0);
}

TEST(FakeUpstreamOpenAi, StreamWithoutIncludeUsageHasNoUsageChunk) {
  auto up = StartFake();
  ASSERT_TRUE(up);
  up->Enqueue(Reply::Text("one two three four five six").WithChunks(4));
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());
  Exchange ex = client.Send(Post("/v1/chat/completions", OpenAiRequest(true)));
  ASSERT_FALSE(ex.ec) << ex.ec.message();
  std::vector<Event> events = ParseSse(ex.body);
  // role, 4 pieces, finish, [DONE]
  ASSERT_EQ(events.size(), 7u);
  std::string text;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    Json chunk = ParseJson(events[i].data);
    EXPECT_FALSE(chunk.contains("usage"));
    ASSERT_EQ(chunk["choices"].size(), 1u);
    const Json& delta = chunk["choices"][0]["delta"];
    if (delta.contains("content") && delta["content"].is_string()) text += delta["content"];
  }
  EXPECT_EQ(text, "one two three four five six");
}

TEST(FakeUpstreamOpenAi, ToolCallsRenderedAndStreamedAsArgumentPieces) {
  auto up = StartFake();
  ASSERT_TRUE(up);
  std::vector<ToolCall> calls = {{"call_abc", "get_weather", R"({"city":"Paris","unit":"c"})"}};
  up->Enqueue({Reply::Tools(calls), Reply::Tools(calls).WithChunks(3)});
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());

  Exchange whole = client.Send(Post("/v1/chat/completions", OpenAiRequest(false)));
  ASSERT_FALSE(whole.ec) << whole.ec.message();
  Json j = ParseJson(whole.body);
  const Json& message = j["choices"][0]["message"];
  EXPECT_TRUE(message["content"].is_null());
  ASSERT_EQ(message["tool_calls"].size(), 1u);
  EXPECT_EQ(message["tool_calls"][0]["id"], "call_abc");
  EXPECT_EQ(message["tool_calls"][0]["type"], "function");
  EXPECT_EQ(message["tool_calls"][0]["function"]["name"], "get_weather");
  EXPECT_EQ(message["tool_calls"][0]["function"]["arguments"], calls[0].arguments);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "tool_calls");

  Exchange streamed = client.Send(Post("/v1/chat/completions", OpenAiRequest(true)));
  ASSERT_FALSE(streamed.ec) << streamed.ec.message();
  std::string name;
  std::string arguments;
  std::string finish;
  for (const Event& e : ParseSse(streamed.body)) {
    if (e.data == "[DONE]") continue;
    const Json choice = ParseJson(e.data)["choices"][0];
    if (choice["delta"].contains("tool_calls")) {
      const Json& call = choice["delta"]["tool_calls"][0];
      EXPECT_EQ(call["index"], 0);
      if (call.contains("id")) {
        EXPECT_EQ(call["id"], "call_abc");
        name = call["function"]["name"];
      }
      arguments += call["function"]["arguments"].get<std::string>();
    }
    if (!choice["finish_reason"].is_null()) finish = choice["finish_reason"];
  }
  EXPECT_EQ(name, "get_weather");
  EXPECT_EQ(arguments, calls[0].arguments);
  EXPECT_EQ(finish, "tool_calls");
}

// ---- Anthropic ----------------------------------------------------------------------------------

TEST(FakeUpstreamAnthropic, DefaultReplyHasTheMessageShape) {
  auto up = StartFake({.formats = ServeFormats::kAnthropic});
  ASSERT_TRUE(up);
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());
  Exchange ex = client.Send(AnthropicPost(AnthropicRequest(false)));
  ASSERT_FALSE(ex.ec) << ex.ec.message();
  EXPECT_EQ(ex.status, 200u);
  Json j = ParseJson(ex.body);
  EXPECT_EQ(j["type"], "message");
  EXPECT_EQ(j["role"], "assistant");
  EXPECT_TRUE(j["id"].get<std::string>().starts_with("msg_"));
  EXPECT_EQ(j["model"], "claude-sonnet-4-5");
  ASSERT_EQ(j["content"].size(), 1u);
  EXPECT_EQ(j["content"][0]["type"], "text");
  EXPECT_EQ(j["content"][0]["text"], "reply 1");
  EXPECT_EQ(j["stop_reason"], "end_turn");
  EXPECT_TRUE(j["stop_sequence"].is_null());
  Json request = AnthropicRequest(false);
  size_t prompt_bytes = request["messages"].dump().size() + request["system"].dump().size();
  EXPECT_EQ(j["usage"]["input_tokens"], prompt_bytes / 4);
  EXPECT_EQ(j["usage"]["output_tokens"], 2);
}

TEST(FakeUpstreamAnthropic, StreamFollowsTheMessagesEventSequence) {
  auto up = StartFake({.formats = ServeFormats::kAnthropic});
  ASSERT_TRUE(up);
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());
  Exchange ex = client.Send(AnthropicPost(AnthropicRequest(true)));
  ASSERT_FALSE(ex.ec) << ex.ec.message();
  EXPECT_TRUE(ex.headers[http::field::content_type].starts_with("text/event-stream"));

  std::vector<Event> events = ParseSse(ex.body);
  std::vector<std::string> types;
  std::string text;
  for (const Event& e : events) {
    Json data = ParseJson(e.data);
    EXPECT_EQ(data["type"], e.type) << "the event name and the data's type agree";
    if (e.type != "content_block_delta" || types.back() != "content_block_delta") {
      types.push_back(e.type);
    }
    if (e.type == "content_block_delta") {
      EXPECT_EQ(data["delta"]["type"], "text_delta");
      text += data["delta"]["text"].get<std::string>();
    }
    if (e.type == "message_start") {
      EXPECT_EQ(data["message"]["role"], "assistant");
      EXPECT_TRUE(data["message"]["content"].empty());
      EXPECT_GT(data["message"]["usage"]["input_tokens"].get<int>(), 0);
    }
    if (e.type == "message_delta") {
      EXPECT_EQ(data["delta"]["stop_reason"], "end_turn");
      EXPECT_EQ(data["usage"]["output_tokens"], 2);
    }
  }
  std::vector<std::string> expected = {
      "message_start",      "content_block_start", "ping",        "content_block_delta",
      "content_block_stop", "message_delta",       "message_stop"};
  EXPECT_EQ(types, expected);
  EXPECT_EQ(text, "reply 1");
}

TEST(FakeUpstreamAnthropic, ToolUseBlocksCarryTheParsedInput) {
  auto up = StartFake({.formats = ServeFormats::kAnthropic});
  ASSERT_TRUE(up);
  std::vector<ToolCall> calls = {{"toolu_1", "search", R"({"query":"weather in Paris"})"}};
  up->Enqueue({Reply::Tools(calls, "Let me look."), Reply::Tools(calls, "Let me look.")});
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());

  Exchange whole = client.Send(AnthropicPost(AnthropicRequest(false)));
  ASSERT_FALSE(whole.ec) << whole.ec.message();
  Json j = ParseJson(whole.body);
  ASSERT_EQ(j["content"].size(), 2u);
  EXPECT_EQ(j["content"][0]["text"], "Let me look.");
  EXPECT_EQ(j["content"][1]["type"], "tool_use");
  EXPECT_EQ(j["content"][1]["id"], "toolu_1");
  EXPECT_EQ(j["content"][1]["input"], Json::parse(calls[0].arguments));
  EXPECT_EQ(j["stop_reason"], "tool_use");

  Exchange streamed = client.Send(AnthropicPost(AnthropicRequest(true)));
  ASSERT_FALSE(streamed.ec) << streamed.ec.message();
  std::string partial_json;
  bool saw_tool_start = false;
  for (const Event& e : ParseSse(streamed.body)) {
    Json data = ParseJson(e.data);
    if (e.type == "content_block_start" && data["content_block"]["type"] == "tool_use") {
      EXPECT_EQ(data["index"], 1);
      EXPECT_EQ(data["content_block"]["name"], "search");
      saw_tool_start = true;
    }
    if (e.type == "content_block_delta" && data["delta"]["type"] == "input_json_delta") {
      partial_json += data["delta"]["partial_json"].get<std::string>();
    }
    if (e.type == "message_delta") {
      EXPECT_EQ(data["delta"]["stop_reason"], "tool_use");
    }
  }
  EXPECT_TRUE(saw_tool_start);
  EXPECT_EQ(Json::parse(partial_json), Json::parse(calls[0].arguments));
}

// ---- Recording, routing, queues ---------------------------------------------------------------

TEST(FakeUpstream, RecordsMethodTargetLowercaseHeadersAndBody) {
  auto up = StartFake();
  ASSERT_TRUE(up);
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());
  auto req = Post("/v1/chat/completions?trace=1", OpenAiRequest(false));
  req.set("X-Custom-Header", "Value");
  ASSERT_FALSE(client.Send(req).ec);
  ASSERT_TRUE(up->WaitForRequests(1, 1s));
  std::vector<RecordedRequest> recorded = up->requests();
  ASSERT_EQ(recorded.size(), 1u);
  EXPECT_EQ(recorded[0].number, 1u);
  EXPECT_EQ(recorded[0].method, "POST");
  EXPECT_EQ(recorded[0].target, "/v1/chat/completions?trace=1");
  EXPECT_EQ(recorded[0].Header("x-custom-header"), "Value");
  EXPECT_EQ(recorded[0].Header("content-type"), "application/json");
  EXPECT_EQ(recorded[0].Json(), OpenAiRequest(false));
}

TEST(FakeUpstream, ServesBothFormatsByPathAndAnswers404Elsewhere) {
  auto up = StartFake({.formats = ServeFormats::kBoth, .openai_prefix = "/openai/v1"});
  ASSERT_TRUE(up);
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());
  Exchange openai = client.Send(Post("/openai/v1/chat/completions", OpenAiRequest(false)));
  EXPECT_EQ(ParseJson(openai.body)["object"], "chat.completion");
  Exchange anthropic = client.Send(AnthropicPost(AnthropicRequest(false)));
  EXPECT_EQ(ParseJson(anthropic.body)["type"], "message");
  Exchange missing = client.Send(Post("/v1/chat/completions", OpenAiRequest(false)));
  EXPECT_EQ(missing.status, 404u);
  EXPECT_TRUE(ParseJson(missing.body)["error"]["message"].is_string());
}

TEST(FakeUpstream, QueuedErrorRepliesComeInOrderThenTheDefaultAgain) {
  auto up = StartFake();
  ASSERT_TRUE(up);
  const std::string unauthorized =
      R"({"error":{"message":"Incorrect API key provided: sk-test-SECRET","type":"invalid_request_error","code":"invalid_api_key"}})";
  up->Enqueue({Reply::RateLimited(1), Reply::Raw(401, unauthorized), Reply::Error(500, "boom")});
  EXPECT_EQ(up->pending_replies(), 3u);
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());

  Exchange limited = client.Send(Post("/v1/chat/completions", OpenAiRequest(false)));
  EXPECT_EQ(limited.status, 429u);
  EXPECT_EQ(limited.headers["retry-after"], "1");
  EXPECT_EQ(ParseJson(limited.body)["error"]["code"], "rate_limit_exceeded");

  Exchange denied = client.Send(Post("/v1/chat/completions", OpenAiRequest(false)));
  EXPECT_EQ(denied.status, 401u);
  EXPECT_EQ(denied.body, unauthorized);

  Exchange failed = client.Send(Post("/v1/chat/completions", OpenAiRequest(true)));
  EXPECT_EQ(failed.status, 500u);
  Json error = ParseJson(failed.body)["error"];
  EXPECT_EQ(error["type"], "server_error");
  EXPECT_EQ(error["message"], "boom");

  Exchange fine = client.Send(Post("/v1/chat/completions", OpenAiRequest(false)));
  EXPECT_EQ(fine.status, 200u);
  EXPECT_EQ(ParseJson(fine.body)["choices"][0]["message"]["content"], "reply 4");
  EXPECT_EQ(up->pending_replies(), 0u);
}

TEST(FakeUpstream, AnthropicErrorsUseItsShape) {
  auto up = StartFake({.formats = ServeFormats::kAnthropic});
  ASSERT_TRUE(up);
  up->Enqueue({Reply::Overloaded(), Reply::RateLimited(3)});
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());
  Exchange overloaded = client.Send(AnthropicPost(AnthropicRequest(true)));
  EXPECT_EQ(overloaded.status, 529u);
  Json j = ParseJson(overloaded.body);
  EXPECT_EQ(j["type"], "error");
  EXPECT_EQ(j["error"]["type"], "overloaded_error");
  EXPECT_EQ(j["error"]["message"], "Overloaded");
  Exchange limited = client.Send(AnthropicPost(AnthropicRequest(false)));
  EXPECT_EQ(limited.status, 429u);
  EXPECT_EQ(limited.headers["retry-after"], "3");
  EXPECT_EQ(ParseJson(limited.body)["error"]["type"], "rate_limit_error");
}

TEST(FakeUpstream, RejectsBodiesTheRealApisReject) {
  auto up = StartFake({.formats = ServeFormats::kBoth});
  ASSERT_TRUE(up);
  up->Enqueue(Reply::Text("kept for the valid request"));
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());
  auto not_json = Post("/v1/chat/completions", Json());
  not_json.body() = "{not json";
  EXPECT_EQ(client.Send(not_json).status, 400u);
  Json no_max_tokens = AnthropicRequest(false);
  no_max_tokens.erase("max_tokens");
  Exchange anthropic = client.Send(AnthropicPost(no_max_tokens));
  EXPECT_EQ(anthropic.status, 400u);
  EXPECT_EQ(ParseJson(anthropic.body)["error"]["type"], "invalid_request_error");
  EXPECT_EQ(up->pending_replies(), 1u);
}

TEST(FakeUpstream, KeepAliveServesTwoRequestsOnOneConnection) {
  auto up = StartFake();
  ASSERT_TRUE(up);
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());
  EXPECT_EQ(client.Send(Post("/v1/chat/completions", OpenAiRequest(false))).status, 200u);
  EXPECT_EQ(client.Send(Post("/v1/chat/completions", OpenAiRequest(true))).status, 200u);
  EXPECT_EQ(up->connections_accepted(), 1u);
  std::vector<RecordedRequest> recorded = up->requests();
  ASSERT_EQ(recorded.size(), 2u);
  EXPECT_EQ(recorded[0].connection, recorded[1].connection);

  TestClient other(up->port());
  ASSERT_FALSE(other.Connect());
  EXPECT_EQ(other.Send(Post("/v1/chat/completions", OpenAiRequest(false))).status, 200u);
  EXPECT_EQ(up->connections_accepted(), 2u);
  EXPECT_NE(up->requests()[2].connection, recorded[0].connection);
}

// ---- Authentication ---------------------------------------------------------------------------

TEST(FakeUpstream, OpenAiWantsTheBearerKeyWhenOneIsExpected) {
  auto up = StartFake({.expected_key = "sk-test-key-123456"});
  ASSERT_TRUE(up);
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());
  Exchange missing = client.Send(Post("/v1/chat/completions", OpenAiRequest(false)));
  EXPECT_EQ(missing.status, 401u);
  EXPECT_EQ(ParseJson(missing.body)["error"]["type"], "invalid_request_error");

  auto wrong = Post("/v1/chat/completions", OpenAiRequest(false));
  wrong.set(http::field::authorization, "Bearer sk-test-other-999999");
  Exchange denied = client.Send(wrong);
  EXPECT_EQ(denied.status, 401u);
  Json error = ParseJson(denied.body)["error"];
  EXPECT_EQ(error["code"], "invalid_api_key");
  EXPECT_EQ(error["message"].get<std::string>().find("sk-test-other-999999"), std::string::npos)
      << "the key is masked, as the real API does";

  auto right = Post("/v1/chat/completions", OpenAiRequest(false));
  right.set(http::field::authorization, "Bearer sk-test-key-123456");
  EXPECT_EQ(client.Send(right).status, 200u);
}

TEST(FakeUpstream, AnthropicWantsTheApiKeyAndVersionWhenAKeyIsExpected) {
  auto up = StartFake({.formats = ServeFormats::kAnthropic, .expected_key = "sk-ant-test"});
  ASSERT_TRUE(up);
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());
  Exchange missing = client.Send(AnthropicPost(AnthropicRequest(false)));
  EXPECT_EQ(missing.status, 401u);
  EXPECT_EQ(ParseJson(missing.body)["error"]["type"], "authentication_error");

  auto no_version = Post("/v1/messages", AnthropicRequest(false));
  no_version.set("x-api-key", "sk-ant-test");
  EXPECT_EQ(client.Send(no_version).status, 400u);

  auto right = AnthropicPost(AnthropicRequest(false));
  right.set("x-api-key", "sk-ant-test");
  EXPECT_EQ(client.Send(right).status, 200u);
}

// ---- Faults -----------------------------------------------------------------------------------

TEST(FakeUpstreamFaults, CloseBeforeResponseEndsTheConnection) {
  auto up = StartFake();
  ASSERT_TRUE(up);
  up->Enqueue(Reply::CloseBeforeResponse());
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());
  Exchange ex = client.Send(Post("/v1/chat/completions", OpenAiRequest(false)));
  EXPECT_TRUE(ex.ec);
  EXPECT_EQ(ex.status, 0u);
}

TEST(FakeUpstreamFaults, CloseAfterEventsCutsTheStream) {
  auto up = StartFake({.formats = ServeFormats::kAnthropic});
  ASSERT_TRUE(up);
  up->Enqueue(Reply::Default().CloseAfterEvents(2));
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());
  Exchange ex = client.Send(AnthropicPost(AnthropicRequest(true)));
  EXPECT_TRUE(ex.ec) << "a chunked body cut short is an error";
  EXPECT_EQ(ex.status, 200u);
  std::vector<Event> events = ParseSse(ex.body);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].type, "message_start");
  EXPECT_EQ(events[1].type, "content_block_start");
}

TEST(FakeUpstreamFaults, ErrorAfterEventsSendsTheProvidersErrorEvent) {
  auto up = StartFake({.formats = ServeFormats::kBoth});
  ASSERT_TRUE(up);
  up->Enqueue(
      {Reply::Default().ErrorAfterEvents(3), Reply::Default().ErrorAfterEvents(1, 500, "x")});
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());
  Exchange anthropic = client.Send(AnthropicPost(AnthropicRequest(true)));
  ASSERT_FALSE(anthropic.ec) << anthropic.ec.message();
  std::vector<Event> events = ParseSse(anthropic.body);
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[3].type, "error");
  EXPECT_EQ(ParseJson(events[3].data)["error"]["type"], "overloaded_error");

  Exchange openai = client.Send(Post("/v1/chat/completions", OpenAiRequest(true)));
  ASSERT_FALSE(openai.ec) << openai.ec.message();
  events = ParseSse(openai.body);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(ParseJson(events[1].data)["error"]["type"], "server_error");
}

TEST(FakeUpstreamFaults, GarbageIsNotHttp) {
  auto up = StartFake();
  ASSERT_TRUE(up);
  up->Enqueue(Reply::Garbage());
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());
  Exchange ex = client.Send(Post("/v1/chat/completions", OpenAiRequest(false)));
  EXPECT_TRUE(ex.ec);
  EXPECT_EQ(ex.status, 0u);
}

TEST(FakeUpstreamFaults, NonJsonBodyComesWithStatus200) {
  auto up = StartFake();
  ASSERT_TRUE(up);
  up->Enqueue(Reply::NonJson());
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());
  Exchange ex = client.Send(Post("/v1/chat/completions", OpenAiRequest(false)));
  ASSERT_FALSE(ex.ec);
  EXPECT_EQ(ex.status, 200u);
  EXPECT_TRUE(Json::parse(ex.body, nullptr, false).is_discarded());
}

TEST(FakeUpstreamFaults, DelayBeforeHeadersTripsAFirstByteTimeout) {
  auto up = StartFake();
  ASSERT_TRUE(up);
  up->Enqueue({Reply::Default().WithDelay(3s), Reply::Default().WithDelay(50ms)});
  TestClient slow(up->port());
  ASSERT_FALSE(slow.Connect());
  Exchange timed_out = slow.Send(Post("/v1/chat/completions", OpenAiRequest(false)), 100ms);
  EXPECT_EQ(timed_out.ec, beast::error::timeout);
  EXPECT_EQ(timed_out.status, 0u);

  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());
  auto start = std::chrono::steady_clock::now();
  Exchange ex = client.Send(Post("/v1/chat/completions", OpenAiRequest(true)));
  EXPECT_FALSE(ex.ec);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 50ms);
}

TEST(FakeUpstreamFaults, EventDelaySpacesTheStream) {
  auto up = StartFake();
  ASSERT_TRUE(up);
  up->Enqueue(Reply::Text("a b c d").WithChunks(4).WithEventDelay(10ms));
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());
  auto start = std::chrono::steady_clock::now();
  Exchange ex = client.Send(Post("/v1/chat/completions", OpenAiRequest(true)));
  ASSERT_FALSE(ex.ec);
  // role, 4 pieces, finish, [DONE]: six gaps of at least 10 ms.
  EXPECT_GE(std::chrono::steady_clock::now() - start, 60ms);
  EXPECT_EQ(ParseSse(ex.body).size(), 7u);
}

TEST(FakeUpstreamFaults, HangHoldsTheConnectionUntilStop) {
  auto up = StartFake({.formats = ServeFormats::kAnthropic});
  ASSERT_TRUE(up);
  up->Enqueue({Reply::Hang(), Reply::Default().HangAfterEvents(1)});
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());
  Exchange ex = client.Send(AnthropicPost(AnthropicRequest(false)), 200ms);
  EXPECT_EQ(ex.ec, beast::error::timeout);

  TestClient streaming(up->port());
  ASSERT_FALSE(streaming.Connect());
  Exchange partial = streaming.Send(AnthropicPost(AnthropicRequest(true)), 200ms);
  EXPECT_EQ(partial.ec, beast::error::timeout);
  EXPECT_EQ(partial.status, 200u);
  EXPECT_EQ(ParseSse(partial.body).size(), 1u);

  // Both connections are still held by the server; Stop() must not wait for them.
  up->Stop();
  up->Stop();
  TestClient after(up->port());
  EXPECT_TRUE(after.Connect()) << "the listener is closed";
}

TEST(FakeUpstream, WaitForRequestsReportsATimeout) {
  auto up = StartFake();
  ASSERT_TRUE(up);
  EXPECT_FALSE(up->WaitForRequests(1, 20ms));
  TestClient client(up->port());
  ASSERT_FALSE(client.Connect());
  client.Send(Post("/v1/chat/completions", OpenAiRequest(false)));
  EXPECT_TRUE(up->WaitForRequests(1, 5s));
  EXPECT_EQ(up->request_count(), 1u);
}

TEST(FakeUpstream, ServesHundredsOfConcurrentConnections) {
  auto up = StartFake();
  ASSERT_TRUE(up);
  constexpr int kConnections = 300;
  asio::io_context io;
  int ok = 0;
  for (int i = 0; i < kConnections; ++i) {
    asio::co_spawn(
        io,
        [&, i]() -> awaitable<void> {
          beast::tcp_stream stream(co_await asio::this_coro::executor);
          beast::error_code ec;
          stream.expires_after(20s);
          co_await stream.async_connect(
              tcp::endpoint(asio::ip::make_address("127.0.0.1"), up->port()), Redirect(ec));
          if (ec) co_return;
          auto req = Post("/v1/chat/completions", OpenAiRequest(i % 2 == 0));
          req.prepare_payload();
          co_await http::async_write(stream, req, Redirect(ec));
          if (ec) co_return;
          beast::flat_buffer buffer;
          http::response<http::string_body> res;
          co_await http::async_read(stream, buffer, res, Redirect(ec));
          if (!ec && res.result_int() == 200) ++ok;
        },
        asio::detached);
  }
  io.run();
  EXPECT_EQ(ok, kConnections);
  EXPECT_EQ(up->request_count(), static_cast<size_t>(kConnections));
  EXPECT_EQ(up->connections_accepted(), static_cast<uint64_t>(kConnections));
}

TEST(FakeUpstream, StartReportsUnreadableCertificates) {
  auto up = FakeUpstream::Start(
      {.cert_file = "/nonexistent/server.pem", .key_file = "/nonexistent/server.key"});
  ASSERT_FALSE(up.has_value());
  EXPECT_NE(up.error().message.find("/nonexistent/server.pem"), std::string::npos);
}

// ---- TLS --------------------------------------------------------------------------------------

std::unique_ptr<asio::ssl::context> ClientContext(const std::string& ca_file) {
  auto ctx = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_client);
  ctx->set_verify_mode(asio::ssl::verify_peer);
  if (!ca_file.empty()) ctx->load_verify_file(ca_file);
  return ctx;
}

TEST(FakeUpstreamTls, HandshakesWithATrustedCaByNameAndByAddress) {
  testing::TempDir dir("fake_upstream_test");  // its PEM files
  auto pki = MakeTestPki(dir.path());
  ASSERT_TRUE(pki.has_value()) << pki.error().message;
  EXPECT_EQ(
      std::filesystem::status(pki->key_file).permissions() & std::filesystem::perms::others_read,
      std::filesystem::perms::none);
  auto up = StartFake(
      {.formats = ServeFormats::kBoth, .cert_file = pki->cert_file, .key_file = pki->key_file});
  ASSERT_TRUE(up);
  EXPECT_TRUE(up->base_url().starts_with("https://127.0.0.1:"));
  auto ctx = ClientContext(pki->ca_file);

  TestClient by_name(up->port(), *ctx, "localhost");
  ASSERT_FALSE(by_name.Connect());
  Exchange ex = by_name.Send(AnthropicPost(AnthropicRequest(true)));
  ASSERT_FALSE(ex.ec) << ex.ec.message();
  EXPECT_EQ(ParseSse(ex.body).back().type, "message_stop");
  ex = by_name.Send(Post("/v1/chat/completions", OpenAiRequest(false)));
  EXPECT_EQ(ex.status, 200u);
  EXPECT_EQ(up->connections_accepted(), 1u);

  TestClient by_address(up->port(), *ctx, "127.0.0.1");
  ASSERT_FALSE(by_address.Connect());
  EXPECT_EQ(by_address.Send(Post("/v1/chat/completions", OpenAiRequest(false))).status, 200u);
}

TEST(FakeUpstreamTls, HandshakeFailsWhenTheClientDoesNotTrustTheCa) {
  testing::TempDir dir("fake_upstream_test");  // its PEM files
  testing::TempDir other_dir("fake_upstream_test");
  auto pki = MakeTestPki(dir.path());
  auto other = MakeTestPki(other_dir.path());
  ASSERT_TRUE(pki.has_value() && other.has_value());
  auto up = StartFake({.cert_file = pki->cert_file, .key_file = pki->key_file});
  ASSERT_TRUE(up);

  auto untrusting = ClientContext(other->ca_file);
  TestClient client(up->port(), *untrusting, "localhost");
  beast::error_code ec = client.Connect();
  ASSERT_TRUE(ec);
  EXPECT_EQ(ec.category(), asio::error::get_ssl_category()) << ec.message();

  auto trusting_nothing = ClientContext("");
  TestClient bare(up->port(), *trusting_nothing, "localhost");
  EXPECT_TRUE(bare.Connect());
  EXPECT_EQ(up->request_count(), 0u);
}

TEST(FakeUpstreamTls, HandshakeFailsWhenTheNameDoesNotMatch) {
  testing::TempDir dir("fake_upstream_test");  // its PEM files
  auto pki = MakeTestPki(dir.path(), {"wrong.example"}, {});
  ASSERT_TRUE(pki.has_value()) << pki.error().message;
  auto up = StartFake({.cert_file = pki->cert_file, .key_file = pki->key_file});
  ASSERT_TRUE(up);
  auto ctx = ClientContext(pki->ca_file);

  TestClient localhost(up->port(), *ctx, "localhost");
  beast::error_code ec = localhost.Connect();
  ASSERT_TRUE(ec);
  EXPECT_EQ(ec.category(), asio::error::get_ssl_category()) << ec.message();
  TestClient address(up->port(), *ctx, "127.0.0.1");
  EXPECT_TRUE(address.Connect());

  // The same CA and certificate are accepted under the name they were made for.
  TestClient right(up->port(), *ctx, "wrong.example");
  EXPECT_FALSE(right.Connect());
}

}  // namespace
}  // namespace airlock::fake
