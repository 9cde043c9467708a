// Tests of the Anthropic Messages API wire format and its translation to the OpenAI shape.
//
// Recorded wire shapes these tests use, written from the API reference
// (https://docs.anthropic.com/en/api/messages and .../messages-streaming):
//
// Request: POST {base_url}/v1/messages, headers `x-api-key: sk-ant-...`,
// `anthropic-version: 2023-06-01`, `content-type: application/json`. Body:
//   {"model":"claude-sonnet-4-20250514","max_tokens":1024,"system":"Be brief.",
//    "messages":[
//      {"role":"user","content":"Weather in Paris?"},
//      {"role":"assistant","content":[{"type":"text","text":"Let me check."},
//        {"type":"tool_use","id":"toolu_01A","name":"get_weather","input":{"city":"Paris"}}]},
//      {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_01A",
//        "content":"18C, cloudy"},{"type":"text","text":"And tomorrow?"}]}],
//    "tools":[{"name":"get_weather","description":"Weather now",
//              "input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}],
//    "stream":true}
// What matters: max_tokens is required; the system prompt is a top-level field; roles must
// alternate and start with "user"; tool calls are tool_use blocks with `input` as an object;
// tool results are tool_result blocks at the start of the next user turn. Images are
//   {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBOR..."}}.
//
// Response (200):
//   {"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant",
//    "model":"claude-sonnet-4-20250514",
//    "content":[{"type":"text","text":"Let me check."},
//               {"type":"tool_use","id":"toolu_01A","name":"get_weather",
//                "input":{"city":"Paris"}}],
//    "stop_reason":"tool_use","stop_sequence":null,
//    "usage":{"input_tokens":472,"output_tokens":89,"cache_creation_input_tokens":100,
//             "cache_read_input_tokens":2000}}
// What matters: content blocks (text, tool_use; thinking blocks may appear and are dropped),
// stop_reason (end_turn | stop_sequence | tool_use | max_tokens | refusal | pause_turn), and
// usage, where input_tokens excludes the cache fields, which are billed too.
//
// Stream (text/event-stream), each event with a name and a JSON data line whose "type" repeats it:
//   event: message_start
//   data: {"type":"message_start","message":{"id":"msg_1nZd","type":"message",
//          "role":"assistant","content":[],"model":"claude-sonnet-4-20250514",
//          "stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,
//          "cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}
//   event: content_block_start
//   data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}
//   event: ping
//   data: {"type": "ping"}
//   event: content_block_delta
//   data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}
//   event: content_block_stop
//   data: {"type":"content_block_stop","index":0}
//   event: content_block_start
//   data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use",
//          "id":"toolu_01T1","name":"get_weather","input":{}}}
//   event: content_block_delta
//   data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",
//          "partial_json":"{\"city\": \"Par"}}
//   event: content_block_stop
//   data: {"type":"content_block_stop","index":1}
//   event: message_delta
//   data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},
//          "usage":{"output_tokens":89}}
//   event: message_stop
//   data: {"type":"message_stop"}
// What matters: message_start carries the id, model and input usage (its output_tokens is a
// placeholder); message_delta carries the stop reason and the output count; a failure
// mid-stream is `event: error` / `data: {"type":"error","error":{"type":"overloaded_error",
// "message":"Overloaded"}}`.
//
// Errors (non-2xx): {"type":"error","error":{"type":"authentication_error",
//   "message":"invalid x-api-key"},"request_id":"req_011C..."}; 529 is overloaded_error.
// What matters: only error.type may be shown.

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "llm/chat.h"

namespace airlock::llm {
namespace {

constexpr std::string_view kSecret = "sk-test-SECRET";
constexpr std::string_view kPng = "data:image/png;base64,iVBORw0KGgo=";

Json J(std::string_view text) { return Json::parse(text); }

ChatRequest Request(Json messages, bool stream = false) {
  ChatRequest req;
  req.model = "claude-sonnet-4-20250514";
  req.messages = std::move(messages);
  req.stream = stream;
  return req;
}

Json Body(const airlock::Result<HttpCall>& call) {
  EXPECT_TRUE(call.has_value()) << call.error().message;
  return call.has_value() ? J(call->body) : Json();
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

// An OpenAI-shaped history in which the assistant called two tools at once.
Json ToolHistory() {
  return J(R"([
    {"role":"system","content":"Be brief."},
    {"role":"user","content":"Weather and time in Paris?"},
    {"role":"assistant","content":"Let me check.","tool_calls":[
      {"id":"toolu_01A","type":"function","function":{"name":"get_weather",
       "arguments":"{\"city\":\"Paris\"}"}},
      {"id":"toolu_01B","type":"function","function":{"name":"get_time","arguments":"{}"}}]},
    {"role":"tool","tool_call_id":"toolu_01A","content":"18C, cloudy"},
    {"role":"tool","tool_call_id":"toolu_01B","content":[{"type":"text","text":"14:05"}]},
    {"role":"user","content":"And tomorrow?"}
  ])");
}

// Feeds (event, data) pairs; fails the test on any error.
std::vector<Json> Feed(StreamTranslator& stream,
                       const std::vector<std::pair<std::string, std::string>>& events) {
  std::vector<Json> out;
  for (const auto& [event, data] : events) {
    auto status = stream.OnEvent(event, data, out);
    EXPECT_TRUE(status.has_value()) << event << " " << data << " -> " << status.error().message;
  }
  return out;
}

std::pair<std::string, std::string> Event(const Json& data) {
  return {data["type"].get<std::string>(), data.dump()};
}

std::pair<std::string, std::string> MessageStart(int input = 25, int cache_creation = 0,
                                                 int cache_read = 0) {
  Json e = J(R"({"type":"message_start","message":{"id":"msg_1nZd","type":"message",
      "role":"assistant","content":[],"model":"claude-sonnet-4-20250514","stop_reason":null,
      "stop_sequence":null}})");
  e["message"]["usage"] = {{"input_tokens", input},
                           {"cache_creation_input_tokens", cache_creation},
                           {"cache_read_input_tokens", cache_read},
                           {"output_tokens", 1}};
  return Event(e);
}

std::pair<std::string, std::string> TextStart(int index) {
  Json e = J(R"({"type":"content_block_start","content_block":{"type":"text","text":""}})");
  e["index"] = index;
  return Event(e);
}

std::pair<std::string, std::string> TextDelta(int index, std::string text) {
  Json e = J(R"({"type":"content_block_delta","delta":{"type":"text_delta"}})");
  e["index"] = index;
  e["delta"]["text"] = std::move(text);
  return Event(e);
}

std::pair<std::string, std::string> ToolStart(int index, std::string id, std::string name) {
  Json e = J(R"({"type":"content_block_start","content_block":{"type":"tool_use","input":{}}})");
  e["index"] = index;
  e["content_block"]["id"] = std::move(id);
  e["content_block"]["name"] = std::move(name);
  return Event(e);
}

std::pair<std::string, std::string> JsonDelta(int index, std::string partial) {
  Json e = J(R"({"type":"content_block_delta","delta":{"type":"input_json_delta"}})");
  e["index"] = index;
  e["delta"]["partial_json"] = std::move(partial);
  return Event(e);
}

std::pair<std::string, std::string> BlockStop(int index) {
  Json e = J(R"({"type":"content_block_stop"})");
  e["index"] = index;
  return Event(e);
}

std::pair<std::string, std::string> MessageDelta(std::string stop_reason, int output) {
  Json e = J(R"({"type":"message_delta","delta":{"stop_sequence":null}})");
  e["delta"]["stop_reason"] = std::move(stop_reason);
  e["usage"] = {{"output_tokens", output}};
  return Event(e);
}

std::pair<std::string, std::string> MessageStop() {
  return {"message_stop", R"({"type":"message_stop"})"};
}

// ---------------------------------------------------------------------------------------------
// Requests

TEST(AnthropicRequest, SetsPathHeadersAndRequiredFields) {
  auto format = MakeAnthropicFormat();
  EXPECT_EQ(format->kind(), "anthropic");
  auto call = format->BuildRequest(Request(J(R"([{"role":"user","content":"Hi"}])")), "sk-ant-key");
  ASSERT_TRUE(call.has_value()) << call.error().message;
  EXPECT_EQ(call->path, "/v1/messages");
  EXPECT_EQ(HeaderValues(*call, "x-api-key"), std::vector<std::string>{"sk-ant-key"});
  EXPECT_EQ(HeaderValues(*call, "anthropic-version"), std::vector<std::string>{"2023-06-01"});
  EXPECT_EQ(HeaderValues(*call, "content-type"), std::vector<std::string>{"application/json"});
  EXPECT_EQ(J(call->body), J(R"({"model":"claude-sonnet-4-20250514","max_tokens":4096,
                                 "messages":[{"role":"user","content":"Hi"}]})"));
}

TEST(AnthropicRequest, OperatorParamsCannotOverrideTheConversation) {
  ChatRequest req = Request(J(R"([{"role":"user","content":"Hi"}])"));
  req.params = J(R"({"temperature":0.5,"max_tokens":1000,"top_k":5,"model":"claude-opus",
                     "messages":[{"role":"user","content":"other"}],"system":"injected",
                     "stream":true,"tools":[{"name":"injected","input_schema":{}}]})");
  Json body = Body(MakeAnthropicFormat()->BuildRequest(req, "k"));
  EXPECT_EQ(body, J(R"({"model":"claude-sonnet-4-20250514","max_tokens":1000,"temperature":0.5,
                        "top_k":5,"messages":[{"role":"user","content":"Hi"}]})"));
}

TEST(AnthropicRequest, RefusesAnAliasMaxTokensThatIsNotAPositiveInteger) {
  for (std::string_view bad : {R"({"max_tokens":"many"})", R"({"max_tokens":0})",
                               R"({"max_tokens":-3})", R"({"max_tokens":2.5})"}) {
    ChatRequest req = Request(J(R"([{"role":"user","content":"Hi"}])"));
    req.params = J(bad);
    auto call = MakeAnthropicFormat()->BuildRequest(req, "k");
    ASSERT_FALSE(call.has_value()) << bad;
    EXPECT_EQ(call.error().code, ErrorCode::kInvalidArgument);
  }
}

TEST(AnthropicRequest, StreamingSetsStream) {
  Json body = Body(MakeAnthropicFormat()->BuildRequest(
      Request(J(R"([{"role":"user","content":"Hi"}])"), true), "k"));
  EXPECT_EQ(body["stream"], true);
}

TEST(AnthropicRequest, JoinsSystemMessagesIntoTheSystemField) {
  Json body = Body(MakeAnthropicFormat()->BuildRequest(Request(J(R"([
    {"role":"system","content":"You are careful."},
    {"role":"user","content":"Hi"},
    {"role":"system","content":[{"type":"text","text":"Answer in French."}]}
  ])")),
                                                       "k"));
  EXPECT_EQ(body["system"], "You are careful.\n\nAnswer in French.");
  EXPECT_EQ(body["messages"], J(R"([{"role":"user","content":"Hi"}])"));
}

TEST(AnthropicRequest, MergesConsecutiveMessagesOfOneRole) {
  Json body = Body(MakeAnthropicFormat()->BuildRequest(Request(J(R"([
    {"role":"user","content":"First."},
    {"role":"user","content":"Second."},
    {"role":"assistant","content":"One."},
    {"role":"assistant","content":"Two."},
    {"role":"user","content":"Third."}
  ])")),
                                                       "k"));
  EXPECT_EQ(body["messages"], J(R"([
    {"role":"user","content":[{"type":"text","text":"First."},{"type":"text","text":"Second."}]},
    {"role":"assistant","content":[{"type":"text","text":"One."},{"type":"text","text":"Two."}]},
    {"role":"user","content":"Third."}
  ])"));
}

TEST(AnthropicRequest, TranslatesToolCallsAndGroupsToolResultsInOneUserTurn) {
  ChatRequest req = Request(ToolHistory());
  req.tools = J(R"([
    {"type":"function","function":{"name":"get_weather","description":"Weather now",
      "parameters":{"type":"object","properties":{"city":{"type":"string"}}}}},
    {"type":"function","function":{"name":"get_time"}}])");
  Json body = Body(MakeAnthropicFormat()->BuildRequest(req, "k"));
  EXPECT_EQ(body["system"], "Be brief.");
  EXPECT_EQ(body["messages"], J(R"([
    {"role":"user","content":"Weather and time in Paris?"},
    {"role":"assistant","content":[
      {"type":"text","text":"Let me check."},
      {"type":"tool_use","id":"toolu_01A","name":"get_weather","input":{"city":"Paris"}},
      {"type":"tool_use","id":"toolu_01B","name":"get_time","input":{}}]},
    {"role":"user","content":[
      {"type":"tool_result","tool_use_id":"toolu_01A","content":"18C, cloudy"},
      {"type":"tool_result","tool_use_id":"toolu_01B","content":"14:05"},
      {"type":"text","text":"And tomorrow?"}]}
  ])"));
  EXPECT_EQ(body["tools"], J(R"([
    {"name":"get_weather","description":"Weather now",
     "input_schema":{"type":"object","properties":{"city":{"type":"string"}}}},
    {"name":"get_time","input_schema":{"type":"object","properties":{}}}])"));
}

TEST(AnthropicRequest, AssistantWithOnlyToolCallsHasNoTextBlock) {
  Json body = Body(MakeAnthropicFormat()->BuildRequest(Request(J(R"([
    {"role":"user","content":"ls"},
    {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",
      "function":{"name":"shell","arguments":"{\"cmd\":\"ls\"}"}}]},
    {"role":"tool","tool_call_id":"call_1","content":"a.txt"}
  ])")),
                                                       "k"));
  EXPECT_EQ(body["messages"][1], J(R"({"role":"assistant","content":[
    {"type":"tool_use","id":"call_1","name":"shell","input":{"cmd":"ls"}}]})"));
}

TEST(AnthropicRequest, MakesForeignToolIdsValidConsistently) {
  Json body = Body(MakeAnthropicFormat()->BuildRequest(Request(J(R"([
    {"role":"user","content":"ls"},
    {"role":"assistant","content":"","tool_calls":[{"id":"call.1/x","type":"function",
      "function":{"name":"shell","arguments":""}}]},
    {"role":"tool","tool_call_id":"call.1/x","content":""}
  ])")),
                                                       "k"));
  EXPECT_EQ(body["messages"][1]["content"][0]["id"], "call_1_x");
  EXPECT_EQ(body["messages"][1]["content"][0]["input"], Json::object());
  EXPECT_EQ(body["messages"][2]["content"][0],
            J(R"({"type":"tool_result","tool_use_id":"call_1_x"})"));
}

TEST(AnthropicRequest, DropsEmptyAssistantTurns) {
  Json body = Body(MakeAnthropicFormat()->BuildRequest(Request(J(R"([
    {"role":"user","content":"Hi"},
    {"role":"assistant","content":null},
    {"role":"user","content":"Still there?"}
  ])")),
                                                       "k"));
  EXPECT_EQ(body["messages"], J(R"([{"role":"user","content":[
    {"type":"text","text":"Hi"},{"type":"text","text":"Still there?"}]}])"));
}

TEST(AnthropicRequest, TranslatesContentPartsAndDataUrlImages) {
  Json messages = J(R"([{"role":"user","content":[{"type":"text","text":"What is this?"}]}])");
  messages[0]["content"].push_back({{"type", "image_url"}, {"image_url", {{"url", kPng}}}});
  Json body = Body(MakeAnthropicFormat()->BuildRequest(Request(messages), "k"));
  EXPECT_EQ(body["messages"][0], J(R"({"role":"user","content":[
    {"type":"text","text":"What is this?"},
    {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}}]})"));
}

TEST(AnthropicRequest, RefusesImagesItCannotSendInline) {
  for (std::string_view url :
       {"https://example.com/cat.png", "data:image/png,rawbytes",
        "data:image/svg+xml;base64,PHN2Zz4=", "data:image/png;base64,", "file:///etc/passwd"}) {
    Json messages = J(R"([{"role":"user","content":[]}])");
    messages[0]["content"].push_back({{"type", "image_url"}, {"image_url", {{"url", url}}}});
    auto call = MakeAnthropicFormat()->BuildRequest(Request(messages), "k");
    ASSERT_FALSE(call.has_value()) << url;
    EXPECT_EQ(call.error().code, ErrorCode::kInvalidArgument) << url;
  }
  auto audio = MakeAnthropicFormat()->BuildRequest(
      Request(J(R"([{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}])")), "k");
  ASSERT_FALSE(audio.has_value());
  EXPECT_EQ(audio.error().code, ErrorCode::kInvalidArgument);
}

TEST(AnthropicRequest, UnparsableToolArgumentsNameTheToolCall) {
  for (std::string_view args : {"{\"city\": \"Par", "[1,2]", "42"}) {
    Json messages = J(R"([{"role":"user","content":"Weather?"},
      {"role":"assistant","content":null,"tool_calls":[{"id":"call_broken7","type":"function",
        "function":{"name":"get_weather"}}]}])");
    messages[1]["tool_calls"][0]["function"]["arguments"] = args;
    auto call = MakeAnthropicFormat()->BuildRequest(Request(messages), "k");
    ASSERT_FALSE(call.has_value()) << args;
    EXPECT_EQ(call.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(call.error().message.find("call_broken7"), std::string::npos) << call.error().message;
  }
}

TEST(AnthropicRequest, RefusesAHistoryThatStartsWithTheAssistant) {
  auto call = MakeAnthropicFormat()->BuildRequest(Request(J(R"([
    {"role":"system","content":"Be brief."},
    {"role":"assistant","content":"Hello, how can I help?"},
    {"role":"user","content":"Hi"}])")),
                                                  "k");
  ASSERT_FALSE(call.has_value());
  EXPECT_EQ(call.error().code, ErrorCode::kInvalidArgument);
}

TEST(AnthropicRequest, RefusesMalformedHistories) {
  const std::vector<std::string> histories = {
      R"("hello")",
      R"([])",
      R"([{"role":"system","content":"only a system prompt"}])",
      R"([1])",
      R"([{"content":"no role"}])",
      R"([{"role":"wizard","content":"x"}])",
      R"([{"role":"user","content":5}])",
      R"([{"role":"user","content":[{"type":"text"}]}])",
      R"([{"role":"user","content":[7]}])",
      R"([{"role":"user","content":"x"},{"role":"tool","content":"no id"}])",
      R"([{"role":"user","content":"x"},{"role":"assistant","tool_calls":"x"}])",
      R"([{"role":"user","content":"x"},{"role":"assistant","tool_calls":[{"id":"c"}]}])",
      R"([{"role":"user","content":"x"},{"role":"assistant","tool_calls":[
          {"id":"c","function":{"name":"f","arguments":7}}]}])",
      R"([{"role":"system","content":{"a":1}},{"role":"user","content":"x"}])",
  };
  for (const std::string& history : histories) {
    airlock::Result<HttpCall> call;
    EXPECT_NO_THROW(call = MakeAnthropicFormat()->BuildRequest(Request(J(history)), "k"));
    ASSERT_FALSE(call.has_value()) << history;
    EXPECT_EQ(call.error().code, ErrorCode::kInvalidArgument) << history;
  }
  ChatRequest bad_tools = Request(J(R"([{"role":"user","content":"x"}])"));
  bad_tools.tools = J(R"([{"type":"function","function":{"description":"no name"}}])");
  EXPECT_FALSE(MakeAnthropicFormat()->BuildRequest(bad_tools, "k").has_value());
}

// ---------------------------------------------------------------------------------------------
// Responses

TEST(AnthropicResponse, ReadsTextReply) {
  auto result = MakeAnthropicFormat()->ParseResponse(R"({
    "id":"msg_01XF","type":"message","role":"assistant","model":"claude-sonnet-4-20250514",
    "content":[{"type":"text","text":"Bonjour."}],"stop_reason":"end_turn","stop_sequence":null,
    "usage":{"input_tokens":12,"output_tokens":4}})");
  ASSERT_TRUE(result.has_value()) << result.error().message;
  EXPECT_EQ(result->message, J(R"({"role":"assistant","content":"Bonjour."})"));
  EXPECT_EQ(result->finish_reason, "stop");
  EXPECT_EQ(result->usage.input_tokens, 12);
  EXPECT_EQ(result->usage.output_tokens, 4);
  EXPECT_FALSE(result->usage.estimated);
}

TEST(AnthropicResponse, ReadsToolUseAsOpenAiToolCalls) {
  auto result = MakeAnthropicFormat()->ParseResponse(R"({
    "id":"msg_01XF","type":"message","role":"assistant","model":"claude-sonnet-4-20250514",
    "content":[{"type":"thinking","thinking":"hmm","signature":"sig"},
               {"type":"tool_use","id":"toolu_01A","name":"get_weather","input":{"city":"Paris"}},
               {"type":"tool_use","id":"toolu_01B","name":"get_time","input":{}}],
    "stop_reason":"tool_use","stop_sequence":null,
    "usage":{"input_tokens":472,"output_tokens":89}})");
  ASSERT_TRUE(result.has_value()) << result.error().message;
  EXPECT_EQ(result->message, J(R"({"role":"assistant","content":null,"tool_calls":[
    {"id":"toolu_01A","type":"function","function":{"name":"get_weather",
     "arguments":"{\"city\":\"Paris\"}"}},
    {"id":"toolu_01B","type":"function","function":{"name":"get_time","arguments":"{}"}}]})"));
  EXPECT_EQ(result->finish_reason, "tool_calls");
}

TEST(AnthropicResponse, MapsStopReasons) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"end_turn", "stop"},     {"stop_sequence", "stop"},     {"tool_use", "tool_calls"},
      {"max_tokens", "length"}, {"refusal", "content_filter"}, {"pause_turn", "stop"},
  };
  for (const auto& [anthropic, openai] : cases) {
    Json reply = J(R"({"type":"message","content":[{"type":"text","text":"x"}],
                       "usage":{"input_tokens":1,"output_tokens":1}})");
    reply["stop_reason"] = anthropic;
    auto result = MakeAnthropicFormat()->ParseResponse(reply.dump());
    ASSERT_TRUE(result.has_value()) << anthropic;
    EXPECT_EQ(result->finish_reason, openai) << anthropic;
  }
}

TEST(AnthropicResponse, CountsCacheTokensAsInput) {
  auto result = MakeAnthropicFormat()->ParseResponse(R"({
    "type":"message","content":[{"type":"text","text":"x"}],"stop_reason":"end_turn",
    "usage":{"input_tokens":50,"output_tokens":7,"cache_creation_input_tokens":100,
             "cache_read_input_tokens":2000}})");
  ASSERT_TRUE(result.has_value()) << result.error().message;
  EXPECT_EQ(result->usage.input_tokens, 2150);
  EXPECT_EQ(result->usage.output_tokens, 7);
  EXPECT_FALSE(result->usage.estimated);
}

TEST(AnthropicResponse, MissingUsageIsEstimated) {
  auto result = MakeAnthropicFormat()->ParseResponse(
      R"({"type":"message","content":[{"type":"text","text":"Quite a long answer."}],
          "stop_reason":"end_turn"})");
  ASSERT_TRUE(result.has_value()) << result.error().message;
  EXPECT_TRUE(result->usage.estimated);
  EXPECT_EQ(result->usage.output_tokens, EstimateTokens(Json("Quite a long answer.")));
}

TEST(AnthropicResponse, AnErrorBodyIsAnErrorWithoutItsMessage) {
  auto result = MakeAnthropicFormat()->ParseResponse(
      R"({"type":"error","error":{"type":"overloaded_error","message":"sk-test-SECRET"}})");
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().code, ErrorCode::kUnavailable);
  EXPECT_NE(result.error().message.find("overloaded_error"), std::string::npos);
  EXPECT_EQ(result.error().message.find(kSecret), std::string::npos);
}

TEST(AnthropicResponse, HostileBodiesGiveCleanErrors) {
  const std::vector<std::string> bodies = {
      "",
      "not json",
      "[]",
      "{}",
      R"({"type":"message"})",
      R"({"type":"message","content":"text"})",
      R"({"type":"message","content":[1]})",
      R"({"type":"message","content":[{"type":"text"}]})",
      R"({"type":"message","content":[{"type":"text","text":5}]})",
      R"({"type":"message","content":[{"type":"tool_use","name":"f","input":{}}]})",
      R"({"type":"message","content":[{"type":"tool_use","id":"t","name":"f","input":"{}"}]})",
      R"({"type":"message","content":[],"usage":{"input_tokens":-1,"output_tokens":1}})",
      R"({"type":"message","content":[],"usage":{"input_tokens":1,"output_tokens":1e40}})",
      R"({"type":"message","content":[],"usage":{"input_tokens":1,"cache_read_input_tokens":"9"}})",
      R"({"type":"message","content":[],"usage":7})",
      R"({"type":"completion","completion":"legacy"})",
      std::string(100000, '{'),
  };
  auto format = MakeAnthropicFormat();
  for (const std::string& body : bodies) {
    airlock::Result<ChatResult> result;
    EXPECT_NO_THROW(result = format->ParseResponse(body)) << body.substr(0, 80);
    ASSERT_FALSE(result.has_value()) << body.substr(0, 80);
    EXPECT_EQ(result.error().code, ErrorCode::kUnavailable) << body.substr(0, 80);
  }
}

// The whole loop: the sandbox's OpenAI history goes to Anthropic, Anthropic's tool_use comes
// back as OpenAI tool calls, the sandbox answers them, and the next request carries both.
TEST(AnthropicRoundTrip, ToolCallsSurviveBothDirections) {
  auto format = MakeAnthropicFormat();
  Json history = J(R"([{"role":"system","content":"Be brief."},
                       {"role":"user","content":"Weather in Paris?"}])");
  ASSERT_TRUE(format->BuildRequest(Request(history), "k").has_value());

  auto reply = format->ParseResponse(R"({"id":"msg_1","type":"message","role":"assistant",
    "content":[{"type":"text","text":"Checking."},{"type":"tool_use","id":"toolu_01A",
      "name":"get_weather","input":{"city":"Paris","days":[1,2],"units":{"c":true}}}],
    "stop_reason":"tool_use","usage":{"input_tokens":20,"output_tokens":30}})");
  ASSERT_TRUE(reply.has_value()) << reply.error().message;
  EXPECT_EQ(reply->message["content"], "Checking.");
  history.push_back(reply->message);
  history.push_back(J(R"({"role":"tool","tool_call_id":"toolu_01A","content":"18C"})"));

  Json body = Body(format->BuildRequest(Request(history), "k"));
  EXPECT_EQ(body["messages"], J(R"([
    {"role":"user","content":"Weather in Paris?"},
    {"role":"assistant","content":[{"type":"text","text":"Checking."},
      {"type":"tool_use","id":"toolu_01A","name":"get_weather",
       "input":{"city":"Paris","days":[1,2],"units":{"c":true}}}]},
    {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_01A","content":"18C"}]}
  ])"));
}

TEST(AnthropicRoundTrip, AStreamedReplyGoesBackIntoTheNextRequest) {
  auto format = MakeAnthropicFormat();
  Json history = J(R"([{"role":"user","content":"List files"}])");
  auto stream = format->NewStream(Request(history, true));
  Feed(*stream,
       {MessageStart(), ToolStart(0, "toolu_9", "shell"), JsonDelta(0, R"({"cmd":)"),
        JsonDelta(0, R"("ls -l"})"), BlockStop(0), MessageDelta("tool_use", 12), MessageStop()});
  auto result = stream->Result();
  ASSERT_TRUE(result.has_value()) << result.error().message;
  history.push_back(result->message);
  history.push_back(J(R"({"role":"tool","tool_call_id":"toolu_9","content":"a.txt"})"));
  Json body = Body(format->BuildRequest(Request(history), "k"));
  EXPECT_EQ(body["messages"][1], J(R"({"role":"assistant","content":[
    {"type":"tool_use","id":"toolu_9","name":"shell","input":{"cmd":"ls -l"}}]})"));
}

// ---------------------------------------------------------------------------------------------
// Streaming

TEST(AnthropicStream, TranslatesARecordedStreamToOpenAiChunks) {
  auto stream = MakeAnthropicFormat()->NewStream(Request(ToolHistory(), true));
  std::vector<Json> out = Feed(*stream, {
                                            MessageStart(25, 100, 2000),
                                            TextStart(0),
                                            {"ping", R"({"type": "ping"})"},
                                            TextDelta(0, "Let me "),
                                            TextDelta(0, "check."),
                                            BlockStop(0),
                                            ToolStart(1, "toolu_01T1", "get_weather"),
                                            JsonDelta(1, ""),
                                            JsonDelta(1, R"({"city": "Par)"),
                                            JsonDelta(1, R"(is"})"),
                                            BlockStop(1),
                                            MessageDelta("tool_use", 89),
                                            MessageStop(),
                                        });
  const std::vector<Json> deltas = {
      J(R"({"role":"assistant","content":""})"),
      J(R"({"content":"Let me "})"),
      J(R"({"content":"check."})"),
      J(R"({"tool_calls":[{"index":0,"id":"toolu_01T1","type":"function",
                           "function":{"name":"get_weather","arguments":""}}]})"),
      J(R"({"tool_calls":[{"index":0,"function":{"arguments":"{\"city\": \"Par"}}]})"),
      J(R"({"tool_calls":[{"index":0,"function":{"arguments":"is\"}"}}]})"),
      Json::object(),
  };
  ASSERT_EQ(out.size(), deltas.size() + 1);
  for (size_t i = 0; i < out.size(); ++i) {
    EXPECT_EQ(out[i]["id"], "msg_1nZd") << i;
    EXPECT_EQ(out[i]["object"], "chat.completion.chunk") << i;
    EXPECT_EQ(out[i]["model"], "claude-sonnet-4-20250514") << i;
    EXPECT_TRUE(out[i]["created"].is_number_integer()) << i;
    if (i < deltas.size()) {
      ASSERT_EQ(out[i]["choices"].size(), 1u) << i;
      EXPECT_EQ(out[i]["choices"][0]["index"], 0) << i;
      EXPECT_EQ(out[i]["choices"][0]["delta"], deltas[i]) << i;
      EXPECT_EQ(out[i]["choices"][0]["finish_reason"],
                i + 1 == deltas.size() ? Json("tool_calls") : Json(nullptr))
          << i;
    }
  }
  EXPECT_EQ(out.back()["choices"], Json::array());
  EXPECT_EQ(out.back()["usage"], J(R"({"prompt_tokens":2125,"completion_tokens":89,
      "total_tokens":2214,"prompt_tokens_details":{"cached_tokens":2000}})"));
  EXPECT_TRUE(stream->finished());

  auto result = stream->Result();
  ASSERT_TRUE(result.has_value()) << result.error().message;
  EXPECT_EQ(result->message, J(R"({"role":"assistant","content":"Let me check.","tool_calls":[
    {"id":"toolu_01T1","type":"function","function":{"name":"get_weather",
     "arguments":"{\"city\": \"Paris\"}"}}]})"));
  EXPECT_EQ(result->finish_reason, "tool_calls");
  EXPECT_EQ(result->usage.input_tokens, 2125);
  EXPECT_EQ(result->usage.output_tokens, 89);
  EXPECT_FALSE(result->usage.estimated);
}

TEST(AnthropicStream, ToolArgumentsSplitAnywhereAssembleIdentically) {
  const std::string args = R"({"path":"a \"b\"\\c","n":[1,2],"u":"\u00e9"})";
  for (size_t i = 0; i <= args.size(); ++i) {
    for (size_t j = i; j <= args.size(); ++j) {
      auto stream = MakeAnthropicFormat()->NewStream(Request(ToolHistory(), true));
      std::vector<Json> out =
          Feed(*stream,
               {MessageStart(), ToolStart(0, "toolu_1", "write"), JsonDelta(0, args.substr(0, i)),
                JsonDelta(0, args.substr(i, j - i)), JsonDelta(0, args.substr(j)), BlockStop(0),
                MessageDelta("tool_use", 10), MessageStop()});
      auto result = stream->Result();
      ASSERT_TRUE(result.has_value()) << result.error().message;
      ASSERT_EQ(result->message["tool_calls"][0]["function"]["arguments"], args)
          << "split at " << i << "," << j;
      // What the sandbox saw assembles to the same string.
      std::string forwarded;
      for (const Json& chunk : out) {
        if (!chunk["choices"].empty() && chunk["choices"][0]["delta"].contains("tool_calls")) {
          forwarded += chunk["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                           .get<std::string>();
        }
      }
      ASSERT_EQ(forwarded, args) << "split at " << i << "," << j;
    }
  }
}

TEST(AnthropicStream, ToolsAreIndexedFromZeroAcrossTextBlocks) {
  auto stream = MakeAnthropicFormat()->NewStream(Request(ToolHistory(), true));
  std::vector<Json> out =
      Feed(*stream, {MessageStart(), TextStart(0), TextDelta(0, "Two calls."), BlockStop(0),
                     ToolStart(1, "toolu_a", "get_weather"), JsonDelta(1, R"({"city":"Paris"})"),
                     BlockStop(1), ToolStart(2, "toolu_b", "get_time"), BlockStop(2),
                     MessageDelta("tool_use", 30), MessageStop()});
  std::vector<Json> indices;
  for (const Json& chunk : out) {
    if (!chunk["choices"].empty() && chunk["choices"][0]["delta"].contains("tool_calls")) {
      indices.push_back(chunk["choices"][0]["delta"]["tool_calls"][0]["index"]);
    }
  }
  EXPECT_EQ(indices, (std::vector<Json>{0, 0, 1, 1}));
  auto result = stream->Result();
  ASSERT_TRUE(result.has_value()) << result.error().message;
  EXPECT_EQ(result->message["tool_calls"][1]["function"],
            J(R"({"name":"get_time","arguments":"{}"})"));
}

TEST(AnthropicStream, MissingUsageIsEstimated) {
  ChatRequest req = Request(ToolHistory(), true);
  auto stream = MakeAnthropicFormat()->NewStream(req);
  std::vector<Json> out =
      Feed(*stream,
           {{"message_start", R"({"type":"message_start","message":{"id":"msg_2","model":"m"}})"},
            TextStart(0),
            TextDelta(0, "Hello there"),
            BlockStop(0),
            {"message_delta", R"({"type":"message_delta","delta":{"stop_reason":"end_turn"}})"},
            MessageStop()});
  auto result = stream->Result();
  ASSERT_TRUE(result.has_value()) << result.error().message;
  EXPECT_TRUE(result->usage.estimated);
  EXPECT_EQ(result->usage.input_tokens, EstimateTokens(req.messages));
  EXPECT_EQ(result->usage.output_tokens, EstimateTokens(Json("Hello there")));
  EXPECT_EQ(out.back()["usage"]["prompt_tokens"], result->usage.input_tokens);
}

TEST(AnthropicStream, SkipsPingsThinkingAndUnknownEvents) {
  auto stream = MakeAnthropicFormat()->NewStream(Request(ToolHistory(), true));
  std::vector<Json> out =
      Feed(*stream, {MessageStart(),
                     {"ping", ""},
                     {"ping", R"({"type":"ping"})"},
                     {"content_block_start", R"({"type":"content_block_start","index":0,
         "content_block":{"type":"thinking","thinking":""}})"},
                     {"content_block_delta", R"({"type":"content_block_delta","index":0,
         "delta":{"type":"thinking_delta","thinking":"secret plans"}})"},
                     {"content_block_delta", R"({"type":"content_block_delta","index":0,
         "delta":{"type":"signature_delta","signature":"abc"}})"},
                     BlockStop(0),
                     {"brand_new_event", R"({"type":"brand_new_event","x":1})"},
                     TextStart(1),
                     TextDelta(1, "Done."),
                     BlockStop(1),
                     MessageDelta("end_turn", 5),
                     MessageStop()});
  EXPECT_EQ(out.size(), 4u);  // role, text, finish, usage
  for (const Json& chunk : out) {
    EXPECT_EQ(chunk.dump().find("secret plans"), std::string::npos);
  }
  auto result = stream->Result();
  ASSERT_TRUE(result.has_value()) << result.error().message;
  EXPECT_EQ(result->message, J(R"({"role":"assistant","content":"Done."})"));
  EXPECT_EQ(result->finish_reason, "stop");
}

TEST(AnthropicStream, AnErrorEventFailsTheStreamWithItsTypeOnly) {
  auto stream = MakeAnthropicFormat()->NewStream(Request(ToolHistory(), true));
  std::vector<Json> out = Feed(*stream, {MessageStart(), TextStart(0), TextDelta(0, "Par")});
  auto status = stream->OnEvent(
      "error", R"({"type":"error","error":{"type":"overloaded_error","message":"sk-test-SECRET"}})",
      out);
  ASSERT_FALSE(status.has_value());
  EXPECT_EQ(status.error().code, ErrorCode::kUnavailable);
  EXPECT_NE(status.error().message.find("overloaded_error"), std::string::npos);
  EXPECT_EQ(status.error().message.find(kSecret), std::string::npos);
  auto result = stream->Result();
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().message.find(kSecret), std::string::npos);
  EXPECT_FALSE(stream->OnEvent("message_stop", R"({"type":"message_stop"})", out).has_value());
}

TEST(AnthropicStream, EndingBeforeTheReplyIsCompleteIsAnError) {
  auto stream = MakeAnthropicFormat()->NewStream(Request(ToolHistory(), true));
  Feed(*stream, {MessageStart(), TextStart(0), TextDelta(0, "Half")});
  EXPECT_FALSE(stream->finished());
  auto result = stream->Result();
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().code, ErrorCode::kUnavailable);

  // With the stop reason in, only the trailer is missing: the reply stands.
  auto nearly = MakeAnthropicFormat()->NewStream(Request(ToolHistory(), true));
  Feed(*nearly, {MessageStart(), TextStart(0), TextDelta(0, "Whole"), BlockStop(0),
                 MessageDelta("end_turn", 2)});
  EXPECT_FALSE(nearly->finished());
  ASSERT_TRUE(nearly->Result().has_value());
}

TEST(AnthropicStream, SpentHasTheReportedPromptAndTheStreamedOutput) {
  auto stream = MakeAnthropicFormat()->NewStream(Request(ToolHistory(), true));
  Feed(*stream, {MessageStart(25), TextStart(0), TextDelta(0, "Half of a longer answer")});
  EXPECT_FALSE(stream->reply_complete());
  TokenUsage spent = stream->Spent();
  EXPECT_TRUE(spent.estimated);
  EXPECT_EQ(spent.input_tokens, 25);
  EXPECT_EQ(spent.output_tokens, EstimateTokens(Json("Half of a longer answer")));
  Feed(*stream, {BlockStop(0), MessageDelta("end_turn", 40)});
  EXPECT_TRUE(stream->reply_complete());
  spent = stream->Spent();
  EXPECT_FALSE(spent.estimated);
  EXPECT_EQ(spent.output_tokens, 40);
}

TEST(AnthropicStream, HostileEventsGiveCleanErrors) {
  const std::vector<std::pair<std::string, std::string>> events = {
      {"message_start", "not json"},
      {"message_start", "[]"},
      {"message_start", R"({"type":"message_start"})"},
      {"message_start", R"({"type":"message_start","message":{"id":7}})"},
      {"message_start",
       R"({"type":"message_start","message":{"id":"m","usage":{"input_tokens":-4}}})"},
      {"message_start", R"({"type":"message_start","message":{"id":"m","usage":"big"}})"},
      {"content_block_start",
       R"({"type":"content_block_start","index":0,"content_block":{"type":"text"}})"},
      {"error", R"({"type":"error","error":"plain"})"},
      {"error", ""},
      {"message_start", std::string(5000, '[')},
  };
  for (const auto& [event, data] : events) {
    auto stream = MakeAnthropicFormat()->NewStream(Request(ToolHistory(), true));
    std::vector<Json> out;
    airlock::Status status;
    EXPECT_NO_THROW(status = stream->OnEvent(event, data, out)) << data.substr(0, 80);
    ASSERT_FALSE(status.has_value()) << data.substr(0, 80);
    EXPECT_EQ(status.error().code, ErrorCode::kUnavailable);
    EXPECT_TRUE(out.empty());
    EXPECT_FALSE(stream->Result().has_value());
  }
  // After a good start, malformed block events.
  const std::vector<std::pair<std::string, std::string>> after_start = {
      {"content_block_start", R"({"type":"content_block_start","content_block":{"type":"text"}})"},
      {"content_block_start",
       R"({"type":"content_block_start","index":-1,"content_block":{"type":"text"}})"},
      {"content_block_start",
       R"({"type":"content_block_start","index":1099511627776,"content_block":{"type":"text"}})"},
      {"content_block_start",
       R"({"type":"content_block_start","index":"0","content_block":{"type":"text"}})"},
      {"content_block_start", R"({"type":"content_block_start","index":0,"content_block":"text"})"},
      {"content_block_start",
       R"({"type":"content_block_start","index":0,"content_block":{"type":"tool_use","name":"f"}})"},
      {"content_block_delta",
       R"({"type":"content_block_delta","index":5,"delta":{"type":"text_delta","text":"x"}})"},
      {"content_block_delta",
       R"({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":1}})"},
      {"content_block_delta",
       R"({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{"}})"},
      {"content_block_delta", R"({"type":"content_block_delta","index":0,"delta":"x"})"},
      {"content_block_stop", R"({"type":"content_block_stop","index":9})"},
      {"message_delta", R"({"type":"message_delta","delta":{"stop_reason":5}})"},
      {"message_delta", R"({"type":"message_delta","delta":{},"usage":{"output_tokens":1e300}})"},
      {"message_start", R"({"type":"message_start","message":{"id":"again"}})"},
  };
  for (const auto& [event, data] : after_start) {
    auto stream = MakeAnthropicFormat()->NewStream(Request(ToolHistory(), true));
    std::vector<Json> out = Feed(*stream, {MessageStart(), TextStart(0)});
    const size_t forwarded = out.size();
    airlock::Status status;
    EXPECT_NO_THROW(status = stream->OnEvent(event, data, out)) << data;
    ASSERT_FALSE(status.has_value()) << data;
    EXPECT_EQ(status.error().code, ErrorCode::kUnavailable);
    EXPECT_EQ(out.size(), forwarded) << data;
  }
  // Content before message_start.
  auto early = MakeAnthropicFormat()->NewStream(Request(ToolHistory(), true));
  std::vector<Json> out;
  EXPECT_FALSE(early->OnEvent(TextStart(0).first, TextStart(0).second, out).has_value());
}

// ---------------------------------------------------------------------------------------------
// Errors

TEST(AnthropicDescribeError, UsesTheErrorTypeButNeverTheMessage) {
  auto format = MakeAnthropicFormat();
  const std::string described =
      format->DescribeError(401, R"({"type":"error","error":{"type":"authentication_error",
              "message":"invalid x-api-key sk-test-SECRET"},"request_id":"req_011C"})");
  EXPECT_EQ(described, "authentication_error");
  EXPECT_EQ(described.find(kSecret), std::string::npos);
  EXPECT_EQ(format->DescribeError(529, R"({"type":"error","error":{"type":"overloaded_error",
      "message":"Overloaded"}})"),
            "overloaded_error");
}

TEST(AnthropicDescribeError, FallsBackToTheStatusLine) {
  auto format = MakeAnthropicFormat();
  EXPECT_EQ(format->DescribeError(529, "upstream connect error sk-test-SECRET"),
            "HTTP 529 Overloaded");
  EXPECT_EQ(format->DescribeError(401, R"({"type":"error","error":{"message":"sk-test-SECRET"}})"),
            "HTTP 401 Unauthorized");
  EXPECT_EQ(
      format->DescribeError(401, R"({"type":"error","error":{"type":"sk-test-SECRET is bad"}})"),
      "HTTP 401 Unauthorized");
  EXPECT_EQ(format->DescribeError(
                400, R"({"type":"error","error":{"type":")" + std::string(1000, 'x') + R"("}})"),
            "HTTP 400 Bad Request");
  EXPECT_EQ(format->DescribeError(599, "[1"), "HTTP 599");
}

}  // namespace
}  // namespace airlock::llm
