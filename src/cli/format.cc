#include "cli/format.h"

#include <algorithm>
#include <charconv>
#include <ctime>
#include <optional>

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

struct CodePoint {
  uint32_t value = 0;
  size_t length = 0;
};

// The code point at the front of `s`; nullopt when `s` does not start with well-formed UTF-8
// (a stray continuation byte, an overlong form, a surrogate, beyond U+10FFFF, cut short).
std::optional<CodePoint> DecodeUtf8(std::string_view s) {
  auto byte = [&s](size_t i) { return static_cast<unsigned char>(s[i]); };
  unsigned char c = byte(0);
  if (c < 0x80) return CodePoint{c, 1};
  size_t len = (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (len == 0 || len > s.size()) return std::nullopt;
  uint32_t v = c & (0x7F >> len);
  for (size_t i = 1; i < len; ++i) {
    if ((byte(i) & 0xC0) != 0x80) return std::nullopt;
    v = (v << 6) | (byte(i) & 0x3F);
  }
  constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (v < kMin[len] || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return std::nullopt;
  return CodePoint{v, len};
}

// Characters a terminal acts on or that change how the rest of the line is shown.
bool IsUnsafe(uint32_t cp) {
  return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F) || cp == 0x061C || cp == 0x200E || cp == 0x200F ||
         (cp >= 0x2028 && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069);
}

std::string Escape(uint32_t cp) {
  switch (cp) {
    case '\n':
      return "\\n";
    case '\r':
      return "\\r";
    case '\t':
      return "\\t";
    default:
      return fmt::format("\\u{:04x}", cp);
  }
}

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// How one piece of `text` at `i` is shown: `multiline` as for Inert; `out` gets it, and the
// number of bytes consumed is returned.
size_t ShowNext(std::string_view text, size_t i, bool multiline, std::string& out) {
  auto cp = DecodeUtf8(text.substr(i));
  if (!cp) {
    out += kReplacement;
    return 1;
  }
  if (!IsUnsafe(cp->value) || (multiline && (cp->value == '\n' || cp->value == '\t'))) {
    out.append(text.substr(i, cp->length));
  } else if (multiline && cp->value == '\r' && i + 1 < text.size() && text[i + 1] == '\n') {
    // The CR of a CRLF: the LF that follows ends the line.
  } else {
    out += Escape(cp->value);
  }
  return cp->length;
}

}  // namespace

std::string Inert(std::string_view text, bool multiline) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) i += ShowNext(text, i, multiline, out);
  return out;
}

std::string InertIndented(std::string_view text, size_t indent) {
  std::string out;
  for (char c : Inert(text, /*multiline=*/true)) {
    out += c;
    if (c == '\n') out.append(indent, ' ');
  }
  return out;
}

std::string InertJson(std::string_view json_text) {
  // In JSON text these characters can only stand inside strings, where "\uXXXX" means the same
  // character; DumpJson has escaped every C0 control, so no line break is kept raw.
  return Inert(json_text, /*multiline=*/true);
}

std::string InertStream::Feed(std::string_view piece) {
  held_.append(piece);
  // Hold back an unfinished UTF-8 sequence (at most 3 bytes) or a CR whose LF may follow.
  size_t keep = 0;
  if (!held_.empty() && held_.back() == '\r') {
    keep = 1;
  } else {
    for (size_t back = 1; back <= 3 && back <= held_.size(); ++back) {
      auto c = static_cast<unsigned char>(held_[held_.size() - back]);
      if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back
      size_t len = (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
      if (len > back) keep = back;
      break;
    }
  }
  std::string out =
      Inert(std::string_view(held_).substr(0, held_.size() - keep), /*multiline=*/true);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string InertStream::Finish() {
  std::string out = Inert(held_, /*multiline=*/true);
  held_.clear();
  return out;
}

std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths(header.size(), 0);
  auto measure = [&widths](const std::vector<std::string>& row) {
    for (size_t i = 0; i < row.size() && i < widths.size(); ++i) {
      widths[i] = std::max(widths[i], Utf8Width(row[i]));
    }
  };
  measure(header);
  std::vector<std::vector<std::string>> shown;
  for (const auto& row : rows) {
    shown.emplace_back();
    for (const auto& cell : row) shown.back().push_back(Inert(cell));
    measure(shown.back());
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
  for (const auto& row : shown) {
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
  size_t last = 0;  // where the last shown character starts in `out`
  for (size_t i = 0; i < text.size();) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '\r') {
      ++i;  // Dropped: a CRLF shows as one break.
      continue;
    }
    if (chars == max_chars) {
      // Make room for the ellipsis by dropping the last character shown.
      out.resize(last);
      out += "…";
      return out;
    }
    last = out.size();
    if (c == '\n') {
      out += "⏎";
      ++i;
    } else if (c == '\t') {
      out += ' ';
      ++i;
    } else {
      i += ShowNext(text, i, /*multiline=*/false, out);
    }
    ++chars;
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
    if (!data.value("resumed", false))
      return OneLine(StringOr(data, "agent", "agent") + " started", kMax);
    std::string s = fmt::format("{} resumed after {} messages", StringOr(data, "agent", "agent"),
                                data.contains("history") ? DumpJson(data["history"]) : "?");
    if (data.value("interrupted_tool_calls", 0) > 0) {
      s += fmt::format(" ({} tool call(s) cut off by the restart)",
                       DumpJson(data["interrupted_tool_calls"]));
    }
    return OneLine(s, kMax);
  }
  if (type == "agent.llm" && data.is_object()) {
    std::string calls;
    if (data.contains("tool_calls") && data["tool_calls"].is_array()) {
      for (const auto& c : data["tool_calls"])
        calls += (calls.empty() ? "" : ", ") + (c.is_string() ? c.get<std::string>() : DumpJson(c));
    }
    std::string text = StringOr(data, "text");
    std::string s = fmt::format("step {}: {}", data.contains("step") ? DumpJson(data["step"]) : "?",
                                text.empty() ? "(no text)" : text);
    s = OneLine(s, kMax);
    return calls.empty() ? s + " → waits for the user" : s + " → " + calls;
  }
  if (type == "agent.tool" && data.is_object()) {
    return OneLine(
        fmt::format("step {}: {} {}", data.contains("step") ? DumpJson(data["step"]) : "?",
                    data.value("ok", false) ? "✓" : "✗",
                    StringOr(data, "summary", StringOr(data, "tool"))),
        kMax + 40);
  }
  if (type == "agent.exited" && data.is_object()) {
    if (data.value("oom_killed", false)) return "the agent was killed: out of memory";
    if (data.contains("signal"))
      return fmt::format("the agent was killed by {}",
                         FieldText(data, "signal_name", "signal " + FieldText(data, "signal")));
    return "the agent exited with code " + FieldText(data, "exit_code");
  }
  if (type == "agent.waiting") {
    return "the agent waits for a message (airlock send ID TEXT)";
  }
  if (type == "llm.call" && data.is_object()) {
    std::string outcome = StringOr(data, "outcome", "?");
    if (outcome != "ok")
      return OneLine(
          fmt::format("{}: {} {}", StringOr(data, "model", "?"), outcome, StringOr(data, "error")),
          kMax);
    return fmt::format("{}: {} in / {} out tokens{}", StringOr(data, "model", "?"),
                       FieldText(data, "input_tokens"), FieldText(data, "output_tokens"),
                       data.value("estimated", false) ? " (estimated)" : "");
  }
  if (type == "file.uploaded" && data.is_object()) {
    return OneLine(
        fmt::format("{} ({} bytes)", StringOr(data, "name", "?"), FieldText(data, "size")), kMax);
  }
  if (type == "session.sandbox_restart" && data.is_object()) {
    return OneLine(
        fmt::format("fresh sandbox #{}: {}", FieldText(data, "restart"), StringOr(data, "reason")),
        kMax);
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
