// The scripted model: a provider with no network, whose replies come from a script file.
// It stands in for an LLM in offline runs, demos and tests, and says so in every reply's
// "model" field ("scripted").

#include <fstream>
#include <sstream>

#include "llm/scripted.h"

namespace airlock::llm {
namespace {

constexpr size_t kMaxReplies = 10'000;

// Normalises one script entry into an OpenAI assistant message.
Result<Json> NormaliseReply(const Json& entry, size_t index, const std::string& source) {
  auto bad = [&](std::string_view why) {
    return Errorf(ErrorCode::kInvalidArgument, "{}: reply {}: {}", source, index + 1, why);
  };
  if (entry.is_string()) return Json{{"role", "assistant"}, {"content", entry}};
  if (!entry.is_object()) return bad("must be a string or an assistant message object");
  Json msg{{"role", "assistant"}, {"content", nullptr}};
  for (const auto& [k, v] : entry.items()) {
    if (k == "role") {
      if (v != "assistant") return bad("role must be \"assistant\"");
    } else if (k == "content") {
      if (!v.is_string() && !v.is_null()) return bad("content must be a string");
      msg["content"] = v;
    } else if (k == "tool_calls") {
      if (!v.is_array() || v.empty()) return bad("tool_calls must be a non-empty array");
      Json calls = Json::array();
      for (size_t i = 0; i < v.size(); ++i) {
        const Json& tc = v[i];
        const Json* fn = tc.is_object() && tc.contains("function") ? &tc["function"] : &tc;
        if (!fn->is_object() || !fn->contains("name") || !(*fn)["name"].is_string()) {
          return bad(fmt::format("tool call {} needs a function name", i + 1));
        }
        Json args = fn->contains("arguments") ? (*fn)["arguments"] : Json::object();
        if (!args.is_string()) args = args.dump();
        std::string id = tc.is_object() && tc.contains("id") && tc["id"].is_string()
                             ? tc["id"].get<std::string>()
                             : fmt::format("call_scripted_{}_{}", index + 1, i + 1);
        calls.push_back(Json{{"id", id},
                             {"type", "function"},
                             {"function", {{"name", (*fn)["name"]}, {"arguments", args}}}});
      }
      msg["tool_calls"] = std::move(calls);
    } else {
      return bad(fmt::format("unknown field \"{}\"", k));
    }
  }
  if (msg["content"].is_null() && !msg.contains("tool_calls"))
    return bad("needs content or tool_calls");
  return msg;
}

// Splits text into pieces at word boundaries (a few words each), as a model streams tokens.
std::vector<std::string> Pieces(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = std::min(text.size(), start + 24);
    if (end < text.size()) {
      size_t space = text.find(' ', end);
      end = space == std::string::npos ? text.size() : space + 1;
    }
    out.push_back(text.substr(start, end - start));
    start = end;
  }
  return out;
}

// A script's replies, and the tool whose offer selects them ("" for the main ones).
struct Replies {
  std::string when_tool;
  std::vector<Json> replies;
};

bool OffersTool(const Json& tools, const std::string& name) {
  if (!tools.is_array()) return false;
  for (const auto& t : tools) {
    if (t.is_object() && t.contains("function") && t["function"].is_object() &&
        t["function"].value("name", "") == name) {
      return true;
    }
  }
  return false;
}

class ScriptedProvider : public Provider {
 public:
  ScriptedProvider(std::vector<Replies> scripts, std::string source)
      : scripts_(std::move(scripts)), source_(std::move(source)) {}

  std::string_view kind() const override { return "scripted"; }

  awaitable<CallResult<ChatResult>> Chat(const ChatRequest& req, ChunkReceiver* receiver,
                                         CallCancel& cancel) override {
    // The first alternative whose tool the agent offers, else the main replies.
    const std::vector<Json>* replies = &scripts_.front().replies;
    for (size_t i = 1; i < scripts_.size(); ++i) {
      if (OffersTool(req.tools, scripts_[i].when_tool)) {
        replies = &scripts_[i].replies;
        break;
      }
    }
    size_t n = 0;
    for (const auto& m : req.messages)
      n += m.is_object() && m.value("role", "") == "assistant" ? 1 : 0;
    ChatResult r;
    if (n < replies->size()) {
      r.message = (*replies)[n];
    } else {
      r.message = Json{
          {"role", "assistant"},
          {"content", fmt::format("(scripted model: the script {} has {} replies and all are used)",
                                  source_, replies->size())}};
    }
    r.finish_reason = r.message.contains("tool_calls") ? "tool_calls" : "stop";
    r.usage = TokenUsage{EstimateTokens(req.messages), EstimateTokens(r.message), true};
    if (!req.stream || receiver == nullptr) co_return r;

    const std::string id = fmt::format("chatcmpl-scripted-{}", n + 1);
    auto chunk = [&](Json delta, Json finish) {
      return Json{{"id", id},
                  {"object", "chat.completion.chunk"},
                  {"model", "scripted"},
                  {"choices", Json::array({Json{{"index", 0},
                                                {"delta", std::move(delta)},
                                                {"finish_reason", std::move(finish)}}})}};
    };
    std::vector<Json> chunks;
    chunks.push_back(chunk(Json{{"role", "assistant"}, {"content", ""}}, nullptr));
    if (r.message["content"].is_string()) {
      for (auto& p : Pieces(r.message["content"].get<std::string>()))
        chunks.push_back(chunk(Json{{"content", p}}, nullptr));
    }
    if (r.message.contains("tool_calls")) {
      int index = 0;
      for (const auto& tc : r.message["tool_calls"]) {
        Json start{{"index", index},
                   {"id", tc["id"]},
                   {"type", "function"},
                   {"function", {{"name", tc["function"]["name"]}, {"arguments", ""}}}};
        chunks.push_back(chunk(Json{{"tool_calls", Json::array({start})}}, nullptr));
        std::string args = tc["function"]["arguments"];
        size_t half = args.size() / 2;
        for (const auto& part : {args.substr(0, half), args.substr(half)}) {
          if (part.empty()) continue;
          Json d{{"index", index}, {"function", {{"arguments", part}}}};
          chunks.push_back(chunk(Json{{"tool_calls", Json::array({d})}}, nullptr));
        }
        ++index;
      }
    }
    chunks.push_back(chunk(Json::object(), r.finish_reason));
    Json usage_chunk{{"id", id},
                     {"object", "chat.completion.chunk"},
                     {"model", "scripted"},
                     {"choices", Json::array()},
                     {"usage",
                      {{"prompt_tokens", r.usage.input_tokens},
                       {"completion_tokens", r.usage.output_tokens},
                       {"total_tokens", r.usage.input_tokens + r.usage.output_tokens}}}};
    chunks.push_back(std::move(usage_chunk));
    const size_t finish_chunk = chunks.size() - 2;
    for (size_t i = 0; i < chunks.size(); ++i) {
      if (cancel.cancelled())
        co_return std::unexpected(CallError{Outcome::kCancelled, "the call was cancelled", 0});
      if (!co_await receiver->OnChunk(chunks[i])) {
        // As with an HTTP upstream: a receiver gone after the finish_reason leaves a complete
        // call; before it, the call fails and costs what was made (the whole reply, here).
        if (i >= finish_chunk) break;
        co_return std::unexpected(
            CallError{Outcome::kReceiverGone, "the sandbox went away during the call", 0, r.usage});
      }
    }
    co_return r;
  }

 private:
  std::vector<Replies> scripts_;  // the main replies first
  std::string source_;
};

Result<std::vector<Json>> ReadReplies(const Json& list, const std::string& source_name) {
  if (!list.is_array()) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "{}: \"replies\" must be an array of assistant messages", source_name);
  }
  if (list.size() > kMaxReplies) {
    return Errorf(ErrorCode::kInvalidArgument, "{}: more than {} replies", source_name,
                  kMaxReplies);
  }
  std::vector<Json> replies;
  for (size_t i = 0; i < list.size(); ++i) {
    AIRLOCK_ASSIGN_OR_RETURN(Json m, NormaliseReply(list[i], i, source_name));
    replies.push_back(std::move(m));
  }
  return replies;
}

}  // namespace

Result<std::unique_ptr<Provider>> MakeScriptedProvider(const Json& script,
                                                       std::string source_name) {
  const Json* list = &script;
  std::vector<Replies> scripts(1);
  if (script.is_object()) {
    if (!script.contains("replies")) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "{}: a script is {{\"replies\": [...]}} or an array", source_name);
    }
    list = &script["replies"];
    if (auto alt = script.find("alternatives"); alt != script.end()) {
      if (!alt->is_array()) {
        return Errorf(ErrorCode::kInvalidArgument,
                      "{}: \"alternatives\" must be an array of {{\"when_tool\", \"replies\"}}",
                      source_name);
      }
      for (const auto& a : *alt) {
        if (!a.is_object() || !a.contains("when_tool") || !a["when_tool"].is_string() ||
            !a.contains("replies")) {
          return Errorf(ErrorCode::kInvalidArgument,
                        "{}: an alternative is {{\"when_tool\": NAME, \"replies\": [...]}}",
                        source_name);
        }
        const std::string tool = a["when_tool"].get<std::string>();
        AIRLOCK_ASSIGN_OR_RETURN(auto replies,
                                 ReadReplies(a["replies"], source_name + " (when " + tool + ")"));
        scripts.push_back(Replies{tool, std::move(replies)});
      }
    }
  }
  AIRLOCK_ASSIGN_OR_RETURN(scripts.front().replies, ReadReplies(*list, source_name));
  return std::unique_ptr<Provider>(
      new ScriptedProvider(std::move(scripts), std::move(source_name)));
}

Result<std::unique_ptr<Provider>> LoadScriptedProvider(const std::string& path) {
  std::ifstream f(path);
  if (!f)
    return Errorf(ErrorCode::kInvalidArgument, "scripted model: cannot read the script \"{}\"",
                  path);
  std::stringstream ss;
  ss << f.rdbuf();
  auto j = ParseJson(ss.str());
  if (!j)
    return Errorf(ErrorCode::kInvalidArgument, "scripted model: script \"{}\": {}", path,
                  j.error().message);
  return MakeScriptedProvider(*j, path);
}

}  // namespace airlock::llm
