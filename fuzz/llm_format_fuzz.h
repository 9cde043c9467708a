#pragma once

// The body of openai_fuzz and anthropic_fuzz: everything a provider's wire format reads.
// The first byte picks what the rest of the input is:
//   0  a non-streamed reply body (WireFormat::ParseResponse)
//   1  a streamed reply: text/event-stream bytes, through the SSE parser into the stream
//      translator, as the provider's StreamBridge does, then the assembled Result()
//   2  an error answer (DescribeError), the status taken from the next byte
//   3  the sandbox's side: a JSON array of messages, each checked by the proxy's
//      ValidateChatMessage (as POST /sandbox/v1/llm/chat does), then translated by
//      BuildRequest; an optional second part ("\n--\n") holds the tool definitions.

#include <cstdint>
#include <memory>
#include <vector>

#include "common/sse_parser.h"
#include "controlplane/llm_proxy.h"
#include "fuzz/fuzz_util.h"
#include "llm/chat.h"

namespace airlock::fuzz {

inline llm::ChatRequest ToolRequest(bool stream) {
  llm::ChatRequest req;
  req.model = "m";
  req.stream = stream;
  req.messages = Json::array({Json{{"role", "user"}, {"content", "hi"}}});
  req.tools =
      Json::array({Json{{"type", "function"},
                        {"function", {{"name", "run"}, {"parameters", {{"type", "object"}}}}}}});
  return req;
}

inline int FuzzWireFormat(const llm::WireFormat& format, const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string_view in = AsView(data + 1, size - 1);
  switch (data[0] % 4) {
    case 0: {
      auto r = format.ParseResponse(in);
      if (r) (void)DumpJson(r->message);
      break;
    }
    case 1: {
      auto translator = format.NewStream(ToolRequest(true));
      std::vector<SseEvent> events;
      SseParser parser([&events](const SseEvent& e) {
        events.push_back(e);
        return true;
      });
      if (!parser.Feed(in)) break;
      for (const auto& e : events) {
        std::vector<Json> chunks;
        auto st = translator->OnEvent(
            e.event == "message" ? std::string_view() : std::string_view(e.event), e.data, chunks);
        if (!st) return 0;
        for (const auto& c : chunks) (void)DumpJson(c);
      }
      if (translator->finished()) {
        auto r = translator->Result();
        if (r) (void)DumpJson(r->message);
      }
      break;
    }
    case 2: {
      unsigned status = in.empty() ? 500 : 400 + static_cast<uint8_t>(in[0]) % 200;
      (void)format.DescribeError(status, in.empty() ? in : in.substr(1));
      break;
    }
    case 3: {
      auto parts = SplitParts(in, 2);
      auto msgs = ParseJson(parts[0]);
      if (!msgs || !msgs->is_array()) break;
      llm::ChatRequest req;
      req.model = "m";
      for (size_t i = 0; i < msgs->size(); ++i) {
        auto m = controlplane::ValidateChatMessage((*msgs)[i], "messages");
        if (!m) return 0;
        req.messages.push_back(std::move(*m));
      }
      if (parts.size() > 1) {
        auto tools = ParseJson(parts[1]);
        if (!tools) break;
        auto t = controlplane::ValidateChatTools(*tools);
        if (!t) break;
        req.tools = std::move(*t);
      }
      auto call = format.BuildRequest(req, "sk-fuzz");
      if (call) (void)ParseJson(call->body);
      break;
    }
  }
  return 0;
}

}  // namespace airlock::fuzz
