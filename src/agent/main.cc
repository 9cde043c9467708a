// airlock-agent: the reference agent, the default entrypoint of the `base` image.
// See agent.h for what it does and docs/agents.md for how to write your own.

#include <signal.h>

#include <unistd.h>
#include <cstdlib>

#include <charconv>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "agent.h"
#include "sandbox_client.h"

namespace {

constexpr const char* kUsage = R"(Usage: airlock-agent [OPTIONS]

The reference agent of Airlock. Run inside a sandbox, it takes its task from the control
plane (SESSION_ID, SESSION_TOKEN and CONTROL_PLANE_URL, which it reads once and removes from
its environment), asks the session's model what to do, runs the tools the model calls -
shell, read_file, write_file, upload, finish, and where a Chromium is found (the `browser`
image) browser_open, browser_text, browser_click, browser_type, browser_screenshot - and
reports every step as an event. After a restart it reloads the conversation and carries on.

Options:
  --max-steps N       give up (finish: failed) after N model calls in one run (default 100)
  --model ALIAS       a model alias the session may use (default: the session's own)
  --shell-timeout S   default timeout of a shell command in seconds (default 60)
  --output-cap BYTES  shell output kept for the model (default 16384)
  --inbox-wait S      one long-poll of the inbox, in seconds (default 30)
  --no-system-prompt  do not send the built-in system prompt (tools, sandbox, how to finish)
  --no-browser        do not offer the browser tools even where a Chromium is found
  -h, --help          this text
)";

bool ParseInt(std::string_view s, int min, int max, int* out) {
  int v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v < min || v > max) return false;
  *out = v;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  airlock::agent::AgentOptions options;
  bool no_browser = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    auto value = [&](const char* flag) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "airlock-agent: %s needs a value\n", flag);
        std::exit(2);
      }
      return argv[++i];
    };
    int n = 0;
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--max-steps" && ParseInt(value("--max-steps"), 1, 100000, &n)) {
      options.max_steps = n;
    } else if (a == "--no-system-prompt") {
      options.system_prompt = false;
    } else if (a == "--no-browser") {
      no_browser = true;
    } else if (a == "--model") {
      options.model = value("--model");
    } else if (a == "--shell-timeout" && ParseInt(value("--shell-timeout"), 1, 86400, &n)) {
      options.limits.default_timeout_s = n;
      options.limits.max_timeout_s = std::max(options.limits.max_timeout_s, n);
    } else if (a == "--output-cap" && ParseInt(value("--output-cap"), 256, 1 << 24, &n)) {
      options.limits.output_cap = static_cast<size_t>(n);
    } else if (a == "--inbox-wait" && ParseInt(value("--inbox-wait"), 0, 300, &n)) {
      options.inbox_wait_s = n;
    } else {
      std::fprintf(stderr, "airlock-agent: bad argument \"%.*s\" (see --help)\n",
                   static_cast<int>(a.size()), a.data());
      return 2;
    }
  }
  ::signal(SIGPIPE, SIG_IGN);
  if (!no_browser) {
    options.browser.executable = airlock::agent::FindChromium();
    // The browser reaches the web as every client in the sandbox does: through the session's
    // egress gateway, when its policy allows anything.
    for (const char* var : {"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"}) {
      if (const char* v = std::getenv(var); v && *v && options.browser.proxy.empty()) {
        options.browser.proxy = v;
      }
    }
  }
  auto client = airlock::agent::SandboxClient::FromEnvironment();
  if (!client) {
    std::fprintf(stderr, "airlock-agent: %s\n", client.error().c_str());
    return 2;
  }
  return airlock::agent::RunAgent(*client, options);
}
