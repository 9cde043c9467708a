#include "agent.h"

#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <expected>
#include <optional>
#include <set>

#include "clock.h"

namespace airlock::agent {
namespace {

constexpr size_t kEventTextMax = 200;
constexpr uint64_t kMaxReadBytes = 256 * 1024;

// Sent once, with the first model call of a session, so that any model knows where it is and
// how a session ends (a model that only ever answers in text would leave the session waiting).
constexpr const char* kSystemPrompt =
    "You are an agent working inside an isolated Linux sandbox: busybox tools, a writable working "
    "directory and /tmp, no network except the control plane, no credentials. Use the tools to do "
    "the "
    "user's task: `shell` runs commands, `read_file` and `write_file` handle files, `upload` hands "
    "a file "
    "to the user as an artifact. Work step by step and check what you did. When the task is done, "
    "upload "
    "what the user should get, then call `finish` with a short summary (status \"failed\" if it "
    "cannot be "
    "done). If you need something from the user, answer in text without calling a tool: their "
    "reply "
    "comes as the next message.";

void Log(const std::string& line) {
  std::string out = "[airlock-agent] " + line + "\n";
  (void)!::write(2, out.data(), out.size());
}

std::string Clip(const std::string& s, size_t max) {
  if (s.size() <= max) return s;
  // Cut at a UTF-8 boundary.
  size_t cut = max;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  return s.substr(0, cut) + "…";
}

std::string Text(const Json& message) {
  if (message.contains("content") && message["content"].is_string())
    return message["content"].get<std::string>();
  return {};
}

const Json* ToolCalls(const Json& message) {
  if (message.is_object() && message.contains("tool_calls") && message["tool_calls"].is_array() &&
      !message["tool_calls"].empty()) {
    return &message["tool_calls"];
  }
  return nullptr;
}

std::string Role(const Json& message) {
  return message.is_object() ? message.value("role", "") : "";
}

std::string BaseName(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

class Agent {
 public:
  Agent(SandboxClient& client, const AgentOptions& options)
      : c_(client), o_(options), browser_(options.browser) {}

  int Run() {
    if (auto h = c_.LoadHistory(); !h) return Stop(h.error(), "loading the history");
    const bool resumed = !c_.history().empty();
    int assistants = 0;
    for (const auto& m : c_.history()) {
      assistants += Role(m) == "assistant" ? 1 : 0;
      // A conversation that has a prompt, or that some agent already began, is left as it is.
      has_system_prompt_ = has_system_prompt_ || Role(m) == "system" || Role(m) == "assistant";
    }
    step_ = assistants;
    Log("session " + c_.session_id() + ": " +
        (resumed ? "resuming after " + std::to_string(c_.history().size()) + " messages"
                 : "new session"));

    // A sandbox that died between the model's tool calls and their results: if it was about
    // to finish, finish; otherwise tell the model which calls were cut off.
    if (resumed && Role(c_.history().back()) == "assistant") {
      if (const Json* pending_calls = ToolCalls(c_.history().back())) {
        const Json calls = *pending_calls;  // a copy: TryFinish may append to the history
        for (const auto& call : calls) {
          if (Name(call) != "finish" || !FinishArguments(call)) continue;
          if (auto done = TryFinish(call)) return *done;
        }
      }
    }
    const size_t loaded = c_.history().size();
    auto interrupted = InterruptedToolResults(c_.history());
    for (auto& m : interrupted) c_.Add(std::move(m));
    Emit("agent.started", {{"agent", "airlock-agent"},
                           {"resumed", resumed},
                           {"history", loaded},
                           {"interrupted_tool_calls", interrupted.size()}});

    // The model speaks next when the conversation ends with something for it to answer.
    bool need_input =
        c_.history().empty() || (Role(c_.history().back()) == "assistant" && c_.pending() == 0);
    bool announced_wait = false;
    Json tools = ToolSchemas(o_.limits);
    if (browser_.available()) {
      for (auto& t : BrowserToolSchemas()) tools.push_back(std::move(t));
    }
    for (;;) {
      if (need_input) {
        auto got = c_.Inbox(o_.inbox_wait_s);
        if (!got) return Stop(got.error(), "reading the inbox");
        if (got->empty()) continue;
        Log("took " + std::to_string(got->size()) + " message(s) from the inbox");
        need_input = false;
        announced_wait = false;
        continue;
      }
      if (step_ >= o_.max_steps + assistants) {
        return FinishWith("failed", "stopped after " + std::to_string(o_.max_steps) +
                                        " model calls without finishing");
      }
      if (!has_system_prompt_ && o_.system_prompt) {
        c_.Add(Json{{"role", "system"}, {"content", kSystemPrompt}});
        has_system_prompt_ = true;
      }
      const int64_t started = NowMs();
      auto reply = c_.Chat(tools, o_.model);
      if (!reply) return Stop(reply.error(), "calling the model");
      ++step_;
      const Json* calls = ToolCalls(*reply);
      Json names = Json::array();
      if (calls) {
        for (const auto& call : *calls) names.push_back(Name(call));
      }
      Emit("agent.llm", {{"step", step_},
                         {"text", Clip(Text(*reply), kEventTextMax)},
                         {"tool_calls", names},
                         {"duration_ms", NowMs() - started}});
      if (!calls) {
        // The model answered the user: wait for what they say next.
        need_input = true;
        if (!announced_wait) Emit("agent.waiting", {{"step", step_}});
        announced_wait = true;
        continue;
      }
      const Json* finish = nullptr;
      for (const auto& call : *calls) {
        if (Name(call) == "finish") {
          finish = &call;
          continue;
        }
        RunTool(call);
      }
      if (finish) {
        if (auto done = TryFinish(*finish)) return *done;
      }
    }
  }

 private:
  static std::string Name(const Json& call) {
    if (call.is_object() && call.contains("function") && call["function"].is_object()) {
      return call["function"].value("name", "");
    }
    return {};
  }
  static Json Arguments(const Json& call) {
    if (call.is_object() && call.contains("function") && call["function"].is_object() &&
        call["function"].contains("arguments")) {
      return call["function"]["arguments"];
    }
    return Json::object();
  }

  void RunTool(const Json& call) {
    const std::string name = Name(call);
    const std::string id = call.is_object() ? call.value("id", "") : "";
    const int64_t started = NowMs();
    ToolOutcome out;
    auto args = ParseArguments(Arguments(call));
    if (!args) {
      out = {false, args.error(), name + ": malformed arguments"};
    } else {
      out = Dispatch(name, *args);
    }
    c_.Add(Json{{"role", "tool"}, {"tool_call_id", id}, {"content", out.text}});
    Emit("agent.tool", {{"step", step_},
                        {"tool", name},
                        {"ok", out.ok},
                        {"summary", Clip(out.summary, kEventTextMax)},
                        {"duration_ms", NowMs() - started}});
  }

  ToolOutcome Dispatch(const std::string& name, const Json& args) {
    auto str = [&](const char* key) -> std::string {
      auto it = args.find(key);
      return it != args.end() && it->is_string() ? it->get<std::string>() : std::string();
    };
    if (name == "shell") {
      std::string command = str("command");
      if (command.empty())
        return {false, "error: shell needs \"command\" (a string)", "shell: no command"};
      int timeout = 0;
      if (auto t = args.find("timeout_s"); t != args.end() && t->is_number())
        timeout = static_cast<int>(t->get<double>());
      Log("shell: " + Clip(command, 200));
      return RunShell(command, timeout, o_.limits);
    }
    if (name == "read_file") {
      size_t max = o_.limits.read_cap;
      if (auto m = args.find("max_bytes");
          m != args.end() && m->is_number_unsigned() && m->get<uint64_t>() > 0) {
        // A tool result travels in one chat request, which the control plane bounds (1 MiB
        // by default): stay well inside it.
        max = static_cast<size_t>(std::min<uint64_t>(m->get<uint64_t>(), kMaxReadBytes));
      }
      return ReadFileTool(str("path"), max);
    }
    if (name == "write_file") {
      if (!args.contains("content") || !args["content"].is_string()) {
        return {false, "error: write_file needs \"content\" (a string)", "write_file: no content"};
      }
      return WriteFileTool(str("path"), args["content"].get<std::string>(), o_.limits);
    }
    if (name == "upload") {
      std::string path = str("path");
      if (path.empty()) return {false, "error: upload needs \"path\"", "upload: no path"};
      std::string artifact = str("name");
      if (artifact.empty()) artifact = BaseName(path);
      auto size = c_.Upload(path, artifact);
      if (!size) {
        return {false, "error: upload failed: " + size.error().ToString(),
                "upload " + artifact + " failed"};
      }
      Log("uploaded " + artifact);
      return {true, "uploaded " + artifact + " (" + std::to_string(*size) + " bytes)",
              "uploaded " + artifact + " (" + std::to_string(*size) + " bytes)"};
    }
    if (name.starts_with("browser_") && browser_.available()) {
      return Browse(name, args, str);
    }
    return {false,
            "error: unknown tool \"" + Clip(name, 64) + "\"; the tools are shell, read_file, " +
                "write_file, upload, finish" +
                (browser_.available() ? ", browser_open, browser_text, browser_click, "
                                        "browser_type, browser_screenshot"
                                      : ""),
            "unknown tool " + Clip(name, 64)};
  }

  template <class Str>
  ToolOutcome Browse(const std::string& name, const Json& args, const Str& str) {
    if (name == "browser_open") {
      Log("browser: open " + Clip(str("url"), 200));
      return browser_.Open(str("url"));
    }
    if (name == "browser_text") return browser_.Text();
    if (name == "browser_click") return browser_.Click(str("selector"), str("text"));
    if (name == "browser_type") {
      bool submit = false;
      if (auto s = args.find("submit"); s != args.end() && s->is_boolean()) submit = s->get<bool>();
      return browser_.Type(str("selector"), str("text"), submit);
    }
    if (name == "browser_screenshot") {
      std::string artifact = str("name");
      if (artifact.empty()) artifact = "screenshot.png";
      if (artifact.find('/') != std::string::npos) {
        return {false, "error: \"name\" is an artifact's name, without a /",
                "browser_screenshot: bad name"};
      }
      ToolOutcome shot = browser_.Screenshot(artifact);
      if (!shot.ok) return shot;
      auto size = c_.Upload(artifact, artifact);
      if (!size) {
        return {false,
                "error: the screenshot was taken but not uploaded: " + size.error().ToString(),
                "upload " + artifact + " failed"};
      }
      Log("uploaded " + artifact);
      return {true,
              "uploaded the screenshot as " + artifact + " (" + std::to_string(*size) + " bytes)",
              "screenshot uploaded as " + artifact + " (" + std::to_string(*size) + " bytes)"};
    }
    return {false, "error: unknown browser tool \"" + Clip(name, 64) + "\"",
            "unknown tool " + Clip(name, 64)};
  }

  struct FinishArgs {
    std::string status;
    std::string result;
  };
  // The arguments of a finish call, or the text that tells the model what is wrong with them.
  static std::expected<FinishArgs, std::string> FinishArguments(const Json& call) {
    auto args = ParseArguments(Arguments(call));
    if (!args) return std::unexpected(args.error());
    FinishArgs f{"succeeded", ""};
    if (auto s = args->find("status"); s != args->end() && !s->is_null()) {
      if (!s->is_string() || (*s != "succeeded" && *s != "failed")) {
        return std::unexpected("error: finish \"status\" is \"succeeded\" or \"failed\"");
      }
      f.status = s->get<std::string>();
    }
    if (auto r = args->find("result"); r != args->end() && r->is_string())
      f.result = r->get<std::string>();
    return f;
  }

  // Ends the session with the model's finish call: the exit status, or nothing when the
  // call was refused and the model was told why (bad arguments, a result the control plane
  // will not take) and may call it again.
  std::optional<int> TryFinish(const Json& call) {
    const std::string id = call.is_object() ? call.value("id", "") : "";
    auto refuse = [&](const std::string& why) -> std::optional<int> {
      c_.Add(Json{{"role", "tool"}, {"tool_call_id", id}, {"content", why}});
      Emit("agent.tool", {{"step", step_},
                          {"tool", "finish"},
                          {"ok", false},
                          {"summary", Clip(why, kEventTextMax)},
                          {"duration_ms", 0}});
      return std::nullopt;
    };
    auto args = FinishArguments(call);
    if (!args) return refuse(args.error());
    Log("finishing: " + args->status);
    auto f = c_.Finish(args->status, args->result);
    if (f) return 0;
    if (f.error().kind == ClientError::Kind::kRejected)
      return refuse("error: finish was refused: " + f.error().ToString());
    return Stop(f.error(), "finishing");
  }

  int FinishWith(const std::string& status, const std::string& result) {
    Log("finishing: " + status);
    if (auto f = c_.Finish(status, result); !f) return Stop(f.error(), "finishing");
    return 0;
  }

  // What to do when the control plane says no.
  int Stop(const ClientError& e, const std::string& doing) {
    switch (e.kind) {
      case ClientError::Kind::kSessionOver:
        Log("the session has ended (" + doing + "): stopping");
        return 0;
      case ClientError::Kind::kBudget:
        Log("budget spent: " + e.message);
        if (doing == "finishing") return 1;
        return FinishWith("failed", "budget exhausted: " + e.message);
      case ClientError::Kind::kRejected:
      case ClientError::Kind::kServer:
        Log(doing + " failed: " + e.ToString());
        if (doing == "finishing") return 1;
        return FinishWith("failed", doing + " failed: " + e.ToString());
      case ClientError::Kind::kUnreachable:
      case ClientError::Kind::kLocal:
        break;
    }
    Log(doing + " failed: " + e.ToString());
    return 1;
  }

  void Emit(const std::string& type, const Json& data) {
    // Events are the operator's view of progress; losing one must not stop the work.
    if (auto r = c_.Event(type, data); !r)
      Log("event " + type + " not recorded: " + r.error().ToString());
  }

  SandboxClient& c_;
  const AgentOptions& o_;
  Browser browser_;
  int step_ = 0;
  bool has_system_prompt_ = false;
};

}  // namespace

std::vector<Json> InterruptedToolResults(const std::vector<Json>& history) {
  std::vector<Json> out;
  // The last assistant message and the tool results that follow it.
  size_t last = history.size();
  for (size_t i = history.size(); i-- > 0;) {
    if (Role(history[i]) == "assistant") {
      last = i;
      break;
    }
  }
  if (last == history.size()) return out;
  const Json* calls = ToolCalls(history[last]);
  if (!calls) return out;
  std::set<std::string> answered;
  for (size_t i = last + 1; i < history.size(); ++i) {
    if (Role(history[i]) == "tool") answered.insert(history[i].value("tool_call_id", ""));
  }
  for (const auto& call : *calls) {
    std::string id = call.is_object() ? call.value("id", "") : "";
    if (answered.count(id)) continue;
    out.push_back(Json{
        {"role", "tool"},
        {"tool_call_id", id},
        {"content",
         "interrupted: the sandbox restarted before this tool call finished; files written by it "
         "may be lost. Run it again if it is still needed."}});
  }
  return out;
}

int RunAgent(SandboxClient& client, const AgentOptions& options) {
  client.on_retry = [](const std::string& why) { Log(why); };
  Agent agent(client, options);
  return agent.Run();
}

}  // namespace airlock::agent
