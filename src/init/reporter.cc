#include "reporter.h"

#include <string.h>

#include <algorithm>

#include "channel.h"

namespace airlock::init {

std::string JsonEscape(std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(text.size());
  for (char ch : text) {
    auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 0xf];
        } else {
          out += ch;
        }
    }
  }
  return out;
}

std::string SignalName(int sig) {
  const char* abbrev = ::sigabbrev_np(sig);
  return abbrev != nullptr ? std::string("SIG") + abbrev : "SIG" + std::to_string(sig);
}

std::string ExitEventJson(const AgentExit& exit) {
  std::string data;
  if (exit.signal != 0) {
    data = "\"signal\":" + std::to_string(exit.signal) + ",\"signal_name\":\"" +
           JsonEscape(SignalName(exit.signal)) +
           "\",\"oom_killed\":" + (exit.oom_killed ? "true" : "false");
  } else {
    data = "\"exit_code\":" + std::to_string(exit.exit_code);
    if (!exit.error.empty()) {
      data += ",\"error\":\"" + JsonEscape(exit.error) + "\"";
    }
  }
  return "{\"type\":\"agent.exited\",\"data\":{" + data + "}}";
}

Status PostEvent(const std::string& socket_path, const std::string& token, const std::string& json,
                 int64_t budget_ms) {
  std::string request =
      "POST /sandbox/v1/events HTTP/1.1\r\n"
      "Host: airlock\r\n"
      "Authorization: Bearer " +
      token +
      "\r\n"
      "Content-Type: application/json\r\n"
      "Content-Length: " +
      std::to_string(json.size()) +
      "\r\n"
      "Connection: close\r\n"
      "\r\n" +
      json;
  const int64_t deadline = MonotonicMs() + budget_ms;
  int64_t backoff = 100;
  for (int attempt = 1;; ++attempt) {
    Exchange result = ExchangeOnce(socket_path, request, deadline - MonotonicMs());
    if (result.kind == Exchange::kOk) {
      return {};
    }
    if (result.kind == Exchange::kFinal) {
      return Fail("reporting the agent's exit: " + result.reason);
    }
    int64_t now = MonotonicMs();
    if (now + backoff >= deadline) {
      return Fail("reporting the agent's exit: " + result.reason + "; gave up after " +
                  std::to_string(attempt) + " attempts");
    }
    if (attempt == 1) {
      Log("reporting the agent's exit: " + result.reason + "; retrying");
    }
    SleepMs(backoff);
    backoff = std::min<int64_t>(backoff * 2, 1000);
  }
}

}  // namespace airlock::init
