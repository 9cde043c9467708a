#include "cli/format.h"

#include <algorithm>
#include <charconv>
#include <ctime>

#include <fmt/format.h>

namespace airlock::cli {

namespace {

size_t Utf8Width(std::string_view s) {
  return static_cast<size_t>(std::count_if(
      s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

std::string StringOr(const Json& obj, const char* key, std::string fallback = "") {
  if (obj.is_object()) {
    if (auto it = obj.find(key); it != obj.end() && it->is_string()) {
      return it->get<std::string>();
    }
  }
  return fallback;
}

// A string field as it is, any other value as JSON text.
std::string FieldText(const Json& obj, const char* key, std::string fallback = "?") {
  if (!obj.is_object()) return fallback;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  return it->is_string() ? it->get<std::string>() : it->dump();
}

}  // namespace

std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths(header.size(), 0);
  auto measure = [&widths](const std::vector<std::string>& row) {
    for (size_t i = 0; i < row.size() && i < widths.size(); ++i) {
      widths[i] = std::max(widths[i], Utf8Width(row[i]));
    }
  };
  measure(header);
  for (const auto& row : rows) {
    measure(row);
  }
  std::string out;
  auto emit = [&](const std::vector<std::string>& row) {
    std::string line;
    for (size_t i = 0; i < widths.size(); ++i) {
      const std::string cell = i < row.size() ? row[i] : "";
      line += cell;
      if (i + 1 < widths.size()) {
        line.append(widths[i] - Utf8Width(cell) + 2, ' ');
      }
    }
    while (!line.empty() && line.back() == ' ') {
      line.pop_back();
    }
    out += line;
    out += '\n';
  };
  emit(header);
  for (const auto& row : rows) {
    emit(row);
  }
  return out;
}

std::string FormatAge(int64_t millis) {
  int64_t s = std::max<int64_t>(millis, 0) / 1000;
  if (s < 60) {
    return fmt::format("{}s", s);
  }
  if (s < 3600) {
    return fmt::format("{}m", s / 60);
  }
  if (s < 86400) {
    return fmt::format("{}h", s / 3600);
  }
  return fmt::format("{}d", s / 86400);
}

std::string FormatClock(std::string_view timestamp) {
  auto millis = ParseTimestamp(timestamp);
  if (!millis) {
    return std::string(timestamp);
  }
  time_t secs = static_cast<time_t>(*millis / 1000);
  std::tm local{};
  if (!::localtime_r(&secs, &local)) {
    return std::string(timestamp);
  }
  return fmt::format("{:02}:{:02}:{:02}", local.tm_hour, local.tm_min, local.tm_sec);
}

std::string OneLine(std::string_view text, size_t max_chars) {
  std::string out;
  size_t chars = 0;
  for (size_t i = 0; i < text.size();) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    size_t len = c < 0x80           ? 1
                 : (c >> 5) == 0x6  ? 2
                 : (c >> 4) == 0xE  ? 3
                 : (c >> 3) == 0x1E ? 4
                                    : 1;
    len = std::min(len, text.size() - i);
    if (chars == max_chars) {
      if (!out.empty()) {
        // Make room for the ellipsis by dropping the last code point.
        while (!out.empty() && (static_cast<unsigned char>(out.back()) & 0xC0) == 0x80) {
          out.pop_back();
        }
        if (!out.empty()) {
          out.pop_back();
        }
      }
      out += "…";
      return out;
    }
    if (c == '\n') {
      out += "⏎";
    } else if (c == '\r') {
      // Dropped: a CRLF shows as one break.
      ++i;
      continue;
    } else if (c < 0x20 || c == 0x7F) {
      out += ' ';
    } else {
      out.append(text.substr(i, len));
    }
    ++chars;
    i += len;
  }
  return out;
}

std::string SummarizeEvent(const Json& event) {
  std::string type = StringOr(event, "type");
  const Json empty = Json::object();
  const Json& data = event.is_object() && event.contains("data") ? event["data"] : empty;
  constexpr size_t kMax = 100;
  if (type == "session.state") {
    std::string s = fmt::format("{} → {}", StringOr(data, "from", "?"), StringOr(data, "to", "?"));
    if (std::string result = StringOr(data, "result"); !result.empty()) {
      s += ": " + result;
    }
    return OneLine(s, kMax);
  }
  if (type == "session.created") {
    std::string s;
    for (const char* key : {"image", "backend", "model"}) {
      if (std::string v = StringOr(data, key); !v.empty()) {
        s += fmt::format("{}{}={}", s.empty() ? "" : " ", key, v);
      }
    }
    return OneLine(s, kMax);
  }
  if (type == "session.message" && data.is_object() && data.contains("message_id")) {
    return fmt::format("user message {}", DumpJson(data["message_id"]));
  }
  if (type == "session.sandbox_exit" && data.is_object()) {
    std::string s = "sandbox " + StringOr(data, "state", "exited");
    if (data.contains("exit_code")) {
      s += ", exit code " + DumpJson(data["exit_code"]);
    }
    if (data.contains("signal")) {
      s += ", signal " + DumpJson(data["signal"]);
    }
    if (data.value("oom_killed", false)) {
      s += ", out of memory";
    }
    return s;
  }
  // The reference agent's steps (airlock-agent, examples/agents/python_agent.py).
  if (type == "agent.started" && data.is_object()) {
    if (!data.value("resumed", false)) return OneLine(StringOr(data, "agent", "agent") + " started", kMax);
    std::string s = fmt::format("{} resumed after {} messages", StringOr(data, "agent", "agent"),
                                data.contains("history") ? DumpJson(data["history"]) : "?");
    if (data.value("interrupted_tool_calls", 0) > 0) {
      s += fmt::format(" ({} tool call(s) cut off by the restart)", DumpJson(data["interrupted_tool_calls"]));
    }
    return OneLine(s, kMax);
  }
  if (type == "agent.llm" && data.is_object()) {
    std::string calls;
    if (data.contains("tool_calls") && data["tool_calls"].is_array()) {
      for (const auto& c : data["tool_calls"]) calls += (calls.empty() ? "" : ", ") + (c.is_string() ? c.get<std::string>() : DumpJson(c));
    }
    std::string text = StringOr(data, "text");
    std::string s = fmt::format("step {}: {}", data.contains("step") ? DumpJson(data["step"]) : "?",
                                text.empty() ? "(no text)" : text);
    s = OneLine(s, kMax);
    return calls.empty() ? s + " → waits for the user" : s + " → " + calls;
  }
  if (type == "agent.tool" && data.is_object()) {
    return OneLine(fmt::format("step {}: {} {}", data.contains("step") ? DumpJson(data["step"]) : "?",
                               data.value("ok", false) ? "✓" : "✗", StringOr(data, "summary", StringOr(data, "tool"))),
                   kMax + 40);
  }
  if (type == "agent.exited" && data.is_object()) {
    if (data.value("oom_killed", false)) return "the agent was killed: out of memory";
    if (data.contains("signal")) return fmt::format("the agent was killed by {}", FieldText(data, "signal_name", "signal " + FieldText(data, "signal")));
    return "the agent exited with code " + FieldText(data, "exit_code");
  }
  if (type == "agent.waiting") {
    return "the agent waits for a message (airlock send ID TEXT)";
  }
  if (type == "llm.call" && data.is_object()) {
    std::string outcome = StringOr(data, "outcome", "?");
    if (outcome != "ok") return OneLine(fmt::format("{}: {} {}", StringOr(data, "model", "?"), outcome, StringOr(data, "error")), kMax);
    return fmt::format("{}: {} in / {} out tokens{}", StringOr(data, "model", "?"), FieldText(data, "input_tokens"),
                       FieldText(data, "output_tokens"), data.value("estimated", false) ? " (estimated)" : "");
  }
  if (type == "file.uploaded" && data.is_object()) {
    return OneLine(fmt::format("{} ({} bytes)", StringOr(data, "name", "?"), FieldText(data, "size")), kMax);
  }
  if (type == "session.sandbox_restart" && data.is_object()) {
    return OneLine(fmt::format("fresh sandbox #{}: {}", FieldText(data, "restart"), StringOr(data, "reason")), kMax);
  }
  if (data.is_object() && data.empty()) {
    return "";
  }
  if (data.is_string()) {
    return OneLine(data.get<std::string>(), kMax);
  }
  return OneLine(DumpJson(data), kMax);
}

std::string FormatEventLine(const Json& event) {
  std::string when = FormatClock(StringOr(event, "created_at"));
  std::string seq =
      event.is_object() && event.contains("seq") ? "#" + DumpJson(event["seq"]) : "#?";
  // Most of an event is the agent's to write, and the agent is untrusted: nothing it wrote may
  // reach the terminal as a control sequence (OneLine turns control characters into spaces).
  std::string type = OneLine(StringOr(event, "type", "?"), 64);
  std::string summary = OneLine(SummarizeEvent(event), 400);
  std::string line = fmt::format("{}  {:<5} {:<20}", when, seq, type);
  if (!summary.empty()) {
    line += " " + summary;
  }
  while (!line.empty() && line.back() == ' ') {
    line.pop_back();
  }
  return line;
}

std::string ShellJoin(const std::vector<std::string>& words) {
  std::string out;
  for (const auto& w : words) {
    if (!out.empty()) {
      out += ' ';
    }
    bool plain = !w.empty() && w.find_first_not_of(
                                   "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                   "0123456789-_./=:,@%+") == std::string::npos;
    if (plain) {
      out += w;
      continue;
    }
    out += '\'';
    for (char c : w) {
      if (c == '\'') {
        out += "'\\''";
      } else {
        out += c;
      }
    }
    out += '\'';
  }
  return out;
}

}  // namespace airlock::cli
