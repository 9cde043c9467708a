#pragma once

// The reference agent's browser: Chromium, headless, driven over the DevTools protocol through
// a pipe (--remote-debugging-pipe: JSON messages ending in NUL on file descriptors 3 and 4), so
// the agent needs no WebSocket and no port. Started on the first browser tool, stopped with the
// agent. The browser_* tools are offered only where a Chromium is found (the `browser` image).
//
// Chromium's own sandbox cannot run inside Airlock's (no user namespaces there): it runs with
// --no-sandbox, and Airlock's sandbox is the boundary (docs/sandbox.md). It reaches the web
// through the session's egress gateway, like every other client: the proxy from HTTPS_PROXY.

#include <sys/types.h>

#include <cstdint>
#include <expected>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "tools.h"

namespace airlock::agent {

struct BrowserOptions {
  std::string executable;  // Chromium; "" when none was found
  std::string proxy;       // --proxy-server, from HTTPS_PROXY / HTTP_PROXY; "" for none
  int load_timeout_ms = 30'000;
  size_t text_cap = 16 * 1024;  // page text kept for the model
  int width = 1280, height = 800;
};

// The Chromium to drive: $AIRLOCK_CHROMIUM, /usr/lib/chromium/chromium (Debian's binary),
// /usr/bin/chromium, /usr/bin/chromium-browser; "" when none is executable.
std::string FindChromium();

// The browser tools' OpenAI function schemas (browser_open, browser_text, browser_click,
// browser_type, browser_screenshot).
Json BrowserToolSchemas();

class Browser {
 public:
  explicit Browser(BrowserOptions options);
  ~Browser();  // kills Chromium and everything it started
  Browser(const Browser&) = delete;
  Browser& operator=(const Browser&) = delete;

  bool available() const { return !o_.executable.empty(); }
  pid_t pid() const { return pid_; }  // the running Chromium; -1 before the first tool

  // Each tool: a bad argument or a failure is an answer the model can act on.
  ToolOutcome Open(const std::string& url);
  ToolOutcome Text();
  // By CSS selector, or the visible text of a link or button.
  ToolOutcome Click(const std::string& selector, const std::string& text);
  // Types into the element (CSS selector) as a user does, and submits its form if asked.
  ToolOutcome Type(const std::string& selector, const std::string& text, bool submit);
  // A PNG of the viewport written to `path`.
  ToolOutcome Screenshot(const std::string& path);

 private:
  std::expected<void, std::string> Ensure();
  std::expected<Json, std::string> Call(const std::string& method, Json params,
                                        bool in_page = true);
  std::expected<Json, std::string> Evaluate(const std::string& expression);
  // Reads messages until one answers `id` (events on the way are noted), or the deadline.
  std::expected<Json, std::string> Await(int64_t id, int64_t deadline_ms);
  // Reads events until `done` holds or `timeout_ms` passed; whether it holds.
  bool WaitFor(const std::function<bool()>& done, int timeout_ms);
  // After a click or a submit: when a navigation starts within a moment, waits for its load.
  bool FollowNavigation(uint64_t loads_before, uint64_t navigations_before);
  bool ReadMessage(std::string* out, int64_t deadline_ms);
  void Note(const Json& message);
  void Stop();

  BrowserOptions o_;
  pid_t pid_ = -1;       // Chromium, the leader of its process group
  bool broken_ = false;  // it exited or its pipe broke: the next tool starts a new one
  int to_browser_ = -1;
  int from_browser_ = -1;
  std::string inbuf_;
  std::string session_;  // the attached page's DevTools session
  std::string user_data_dir_;
  int64_t next_id_ = 1;
  uint64_t loads_ = 0;        // Page.loadEventFired seen
  uint64_t navigations_ = 0;  // Page.frameStartedLoading seen
  std::string failure_;       // why the browser could not start (said again on every call)
};

// Decodes standard base64 (padding optional); nullopt on a character outside the alphabet.
std::expected<std::string, std::string> DecodeBase64(const std::string& text);

}  // namespace airlock::agent
