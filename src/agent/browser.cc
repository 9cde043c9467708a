#include "browser.h"

#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <vector>

#include "clock.h"

namespace airlock::agent {
namespace {

constexpr size_t kMaxMessage = 64u << 20;  // a screenshot of a large page, base64
constexpr int kNavigationStartMs = 500;    // how long a click or submit may take to navigate
constexpr size_t kMaxTextArgument = 64 * 1024;

// Writes to the browser's end of the socket pair: a browser that is gone is an error, never a
// SIGPIPE (the agent ignores it, a program embedding this class may not).
bool SendAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = ::send(fd, data, size, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

std::string Tail(const std::string& path, size_t max) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  std::string text = ss.str();
  return text.size() > max ? text.substr(text.size() - max) : text;
}

std::string Clip(const std::string& s, size_t max) {
  if (s.size() <= max) return s;
  size_t cut = max;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  return s.substr(0, cut) + "\n… (" + std::to_string(s.size() - cut) + " more bytes)";
}

// A JavaScript string literal of `s` (JSON's is one).
std::string Literal(const std::string& s) {
  return Json(s).dump(-1, ' ', false, Json::error_handler_t::replace);
}

// What the model reads of a page: its title, address, text and links, numbered.
constexpr const char* kPageText = R"JS((() => {
  const links = [...document.querySelectorAll('a[href]')].slice(0, 100)
      .map((a, i) => `[${i + 1}] ${(a.innerText || a.title || '').trim().replace(/\s+/g, ' ')} -> ${a.href}`);
  const fields = [...document.querySelectorAll('input:not([type=hidden]), textarea, select')].slice(0, 50)
      .map(e => `${e.tagName.toLowerCase()}${e.id ? '#' + e.id : ''}${e.name ? '[name=' + e.name + ']' : ''}` +
                (e.placeholder ? ` (${e.placeholder})` : ''));
  const nav = performance.getEntriesByType('navigation')[0];
  const status = nav && nav.responseStatus ? `Status: ${nav.responseStatus}\n` : '';
  return `Title: ${document.title}\nURL: ${location.href}\n${status}\n` +
         `${document.body ? document.body.innerText : ''}\n\n` +
         `Links:\n${links.join('\n') || '(none)'}\n\nInput fields:\n${fields.join('\n') || '(none)'}`;
})())JS";

int RemoveEntry(const char* path, const struct stat*, int, struct FTW*) {
  ::remove(path);
  return 0;
}

}  // namespace

std::string FindChromium() {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("AIRLOCK_CHROMIUM"); env && *env) candidates.emplace_back(env);
  for (const char* p :
       {"/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser"})
    candidates.emplace_back(p);
  for (const auto& c : candidates) {
    if (::access(c.c_str(), X_OK) == 0) return c;
  }
  return "";
}

Json BrowserToolSchemas() {
  return Json::array({
      Function("browser_open",
               "Open a URL in the browser (headless Chromium) and read the page: its title, text, "
               "links and input fields. The web is reached through the session's egress policy.",
               {{"url", {{"type", "string"}, {"description", "an http(s) URL"}}}}, {"url"}),
      Function("browser_text", "Read the current page again: title, text, links, input fields.",
               Json::object(), Json::array()),
      Function("browser_click",
               "Click an element of the current page, by CSS selector or by the visible text of a "
               "link or button; waits for the page it leads to.",
               {{"selector", {{"type", "string"}, {"description", "a CSS selector"}}},
                {"text", {{"type", "string"}, {"description", "a link's or button's text"}}}},
               Json::array()),
      Function("browser_type",
               "Type text into an input field of the current page (CSS selector), as a user does; "
               "with submit, submit its form and wait for the page it leads to.",
               {{"selector", {{"type", "string"}}},
                {"text", {{"type", "string"}}},
                {"submit", {{"type", "boolean"}}}},
               {"selector", "text"}),
      Function(
          "browser_screenshot",
          "Take a PNG screenshot of the current page and upload it as an artifact of the "
          "session.",
          {{"name",
            {{"type", "string"}, {"description", "the artifact's name (default screenshot.png)"}}}},
          Json::array()),
  });
}

std::expected<std::string, std::string> DecodeBase64(const std::string& text) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  out.reserve(text.size() / 4 * 3);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    if (c == '=') break;
    int v = value(c);
    if (v < 0) return std::unexpected("not base64");
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  return out;
}

Browser::Browser(BrowserOptions options) : o_(std::move(options)) {}

Browser::~Browser() { Stop(); }

void Browser::Stop() {
  if (pid_ > 0) {
    ::kill(-pid_, SIGKILL);  // Chromium's own processes are in its process group
    ::kill(pid_, SIGKILL);
    int status;  // ECHILD when Await already waited for it
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    broken_ = false;
  }
  for (int* fd : {&to_browser_, &from_browser_}) {
    if (*fd >= 0) ::close(*fd);
    *fd = -1;
  }
  if (!user_data_dir_.empty()) {
    ::nftw(user_data_dir_.c_str(), RemoveEntry, 16, FTW_DEPTH | FTW_PHYS);
    user_data_dir_.clear();
  }
  session_.clear();
  inbuf_.clear();
}

std::expected<void, std::string> Browser::Ensure() {
  if (pid_ > 0 && !broken_ && !session_.empty()) return {};
  if (!failure_.empty()) return std::unexpected(failure_);
  if (o_.executable.empty()) return std::unexpected("no browser in this image");
  Stop();  // a browser that exited: its pipes and its profile go before a new one starts
  char tmpl[] = "/tmp/airlock-browser-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) {
    return std::unexpected(std::string("cannot make the browser's directory: ") +
                           std::strerror(errno));
  }
  user_data_dir_ = tmpl;
  const std::string log = user_data_dir_ + "/chromium.log";
  // Chromium reads its commands from fd 3 and writes to fd 4. The commands go over a socket
  // pair rather than a pipe, so that writing to a browser that died is EPIPE, not SIGPIPE.
  int to[2], from[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, to) != 0)
    return std::unexpected(std::string("socketpair: ") + std::strerror(errno));
  if (::pipe2(from, O_CLOEXEC) != 0) {
    ::close(to[0]);
    ::close(to[1]);
    return std::unexpected(std::string("pipe: ") + std::strerror(errno));
  }
  std::vector<std::string> args = {
      o_.executable,
      "--headless",
      // Chromium's sandbox needs user namespaces, which Airlock's sandbox does not give: Airlock's
      // sandbox is the boundary.
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--no-default-browser-check",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-breakpad",
      "--disable-dev-shm-usage",
      "--remote-debugging-pipe",
      "--user-data-dir=" + user_data_dir_,
      "--window-size=" + std::to_string(o_.width) + "," + std::to_string(o_.height),
  };
  if (!o_.proxy.empty()) args.push_back("--proxy-server=" + o_.proxy);
  args.push_back("about:blank");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  pid_t pid = ::fork();
  if (pid < 0) return std::unexpected(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    ::setpgid(0, 0);
    // Move the ends above 4 first, so that placing them at 3 and 4 cannot close one of them.
    int in = ::fcntl(to[0], F_DUPFD, 10);
    int out = ::fcntl(from[1], F_DUPFD, 10);
    if (in < 0 || out < 0 || ::dup2(in, 3) < 0 || ::dup2(out, 4) < 0) ::_exit(126);
    int logfd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    if (logfd >= 0) {
      ::dup2(logfd, 1);
      ::dup2(logfd, 2);
    }
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int s : {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGCHLD}) ::sigaction(s, &dfl, nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::setpgid(pid, pid);
  ::close(to[0]);
  ::close(from[1]);
  pid_ = pid;
  to_browser_ = to[1];
  from_browser_ = from[0];

  auto fail = [&](const std::string& why) -> std::expected<void, std::string> {
    failure_ = "the browser did not start: " + why;
    std::string said = Tail(log, 600);
    if (!said.empty()) failure_ += "\nChromium said:\n" + said;
    Stop();
    return std::unexpected(failure_);
  };
  auto target = Call("Target.createTarget", Json{{"url", "about:blank"}}, false);
  if (!target) return fail(target.error());
  auto attached = Call("Target.attachToTarget",
                       Json{{"targetId", target->value("targetId", "")}, {"flatten", true}}, false);
  if (!attached) return fail(attached.error());
  session_ = attached->value("sessionId", "");
  if (session_.empty()) return fail("no DevTools session for the page");
  if (auto enabled = Call("Page.enable", Json::object()); !enabled) return fail(enabled.error());
  return {};
}

bool Browser::ReadMessage(std::string* out, int64_t deadline_ms) {
  for (;;) {
    if (size_t nul = inbuf_.find('\0'); nul != std::string::npos) {
      *out = inbuf_.substr(0, nul);
      inbuf_.erase(0, nul + 1);
      return true;
    }
    if (inbuf_.size() > kMaxMessage) return false;
    int64_t left = deadline_ms - NowMs();
    if (left <= 0) return false;
    pollfd p{from_browser_, POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return false;
    if (r == 0) continue;
    char buf[65536];
    ssize_t n = ::read(from_browser_, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;  // the browser is gone
    inbuf_.append(buf, static_cast<size_t>(n));
  }
}

void Browser::Note(const Json& message) {
  if (!message.is_object() || !message.contains("method")) return;
  if (message.value("sessionId", "") != session_) return;
  if (message["method"] == "Page.loadEventFired") ++loads_;
  if (message["method"] == "Page.frameStartedLoading") ++navigations_;
}

std::expected<Json, std::string> Browser::Await(int64_t id, int64_t deadline_ms) {
  std::string text;
  while (ReadMessage(&text, deadline_ms)) {
    Json m = Json::parse(text, nullptr, false);
    if (m.is_discarded()) continue;
    if (m.is_object() && m.contains("id") && m["id"].is_number_integer() && m["id"] == id) {
      if (m.contains("error")) {
        const Json& e = m["error"];
        return std::unexpected(e.is_object() ? e.value("message", e.dump()) : e.dump());
      }
      return m.value("result", Json::object());
    }
    Note(m);
  }
  // Gone or stuck: the next tool starts a new one (Ensure). Its pipe may reach end of file a
  // moment before it can be waited for, so the mark does not wait for that.
  broken_ = true;
  if (::waitpid(pid_, nullptr, WNOHANG) == pid_) return std::unexpected("the browser exited");
  return std::unexpected("the browser did not answer in time");
}

std::expected<Json, std::string> Browser::Call(const std::string& method, Json params,
                                               bool in_page) {
  const int64_t id = next_id_++;
  Json m{{"id", id}, {"method", method}, {"params", std::move(params)}};
  if (in_page) m["sessionId"] = session_;
  std::string text = m.dump(-1, ' ', false, Json::error_handler_t::replace);
  text.push_back('\0');
  if (!SendAll(to_browser_, text.data(), text.size())) {
    broken_ = true;  // the next tool starts a new one (Ensure)
    return std::unexpected("the browser is gone");
  }
  return Await(id, NowMs() + o_.load_timeout_ms);
}

std::expected<Json, std::string> Browser::Evaluate(const std::string& expression) {
  auto r = Call("Runtime.evaluate",
                Json{{"expression", expression}, {"returnByValue", true}, {"awaitPromise", true}});
  if (!r) return r;
  if (r->contains("exceptionDetails")) {
    const Json& d = (*r)["exceptionDetails"];
    std::string what = d.contains("exception") && d["exception"].is_object()
                           ? d["exception"].value("description", "")
                           : "";
    if (what.empty()) what = d.value("text", "an exception");
    return std::unexpected("the page's script failed: " + Clip(what, 300));
  }
  return r->contains("result") ? (*r)["result"].value("value", Json()) : Json();
}

bool Browser::WaitFor(const std::function<bool()>& done, int timeout_ms) {
  const int64_t deadline = NowMs() + timeout_ms;
  std::string text;
  while (!done()) {
    if (!ReadMessage(&text, deadline)) return done();
    Json m = Json::parse(text, nullptr, false);
    if (!m.is_discarded()) Note(m);
  }
  return true;
}

bool Browser::FollowNavigation(uint64_t loads_before, uint64_t navigations_before) {
  if (!WaitFor([&] { return navigations_ > navigations_before || loads_ > loads_before; },
               kNavigationStartMs)) {
    return true;  // nothing started: the click stayed on the page
  }
  return WaitFor([&] { return loads_ > loads_before; }, o_.load_timeout_ms);
}

ToolOutcome Browser::Open(const std::string& url) {
  if (url.empty()) return {false, "error: browser_open needs \"url\"", "browser_open: no url"};
  if (!(url.starts_with("http://") || url.starts_with("https://") || url == "about:blank")) {
    return {false, "error: the browser opens http:// and https:// URLs", "browser_open: bad url"};
  }
  if (auto ok = Ensure(); !ok) return {false, "error: " + ok.error(), "browser: not started"};
  const uint64_t before = loads_;
  auto nav = Call("Page.navigate", Json{{"url", url}});
  if (!nav) return {false, "error: " + nav.error(), "browser_open " + Clip(url, 80) + " failed"};
  if (std::string err = nav->value("errorText", ""); !err.empty()) {
    return {false,
            "error: cannot open " + url + ": " + err +
                (err.find("TUNNEL") != std::string::npos || err.find("PROXY") != std::string::npos
                     ? " (the session's egress policy may not allow it)"
                     : ""),
            "browser_open " + Clip(url, 80) + ": " + err};
  }
  if (!WaitFor([&] { return loads_ > before; }, o_.load_timeout_ms)) {
    return {false, "error: " + url + " did not finish loading", "browser_open: timed out"};
  }
  ToolOutcome t = Text();
  t.summary = "opened " + Clip(url, 120);
  // An error status is the answer of the server (or of the egress gateway, which refuses with
  // 403 and says why): the page's text is kept, the call is marked as failed.
  auto status = Evaluate(
      "(() => { const n = performance.getEntriesByType('navigation')[0]; "
      "return n && n.responseStatus ? n.responseStatus : 0; })()");
  if (t.ok && status && status->is_number_integer() && status->get<int>() >= 400) {
    t.ok = false;
    t.text =
        "error: " + url + " answered HTTP " + std::to_string(status->get<int>()) + "\n\n" + t.text;
    t.summary = "browser_open " + Clip(url, 100) + ": HTTP " + std::to_string(status->get<int>());
  }
  return t;
}

ToolOutcome Browser::Text() {
  if (auto ok = Ensure(); !ok) return {false, "error: " + ok.error(), "browser: not started"};
  auto v = Evaluate(kPageText);
  if (!v) return {false, "error: " + v.error(), "browser_text failed"};
  std::string text = v->is_string() ? v->get<std::string>() : std::string();
  return {true, Clip(text, o_.text_cap),
          "read the page (" + std::to_string(text.size()) + " bytes)"};
}

ToolOutcome Browser::Click(const std::string& selector, const std::string& text) {
  if (selector.empty() == text.empty()) {
    return {false, "error: browser_click needs \"selector\" or \"text\" (one of them)",
            "browser_click: bad arguments"};
  }
  if (auto ok = Ensure(); !ok) return {false, "error: " + ok.error(), "browser: not started"};
  const std::string script = "(() => { const sel = " + Literal(selector) +
                             ", want = " + Literal(text) + R"JS(.trim().toLowerCase();
  const label = e => (e.innerText || e.value || e.title || '').trim().replace(/\s+/g, ' ');
  let el = sel ? document.querySelector(sel) : null;
  if (!sel) {
    const all = [...document.querySelectorAll('a, button, input[type=submit], input[type=button], [role=button]')];
    el = all.find(e => label(e).toLowerCase() === want) || all.find(e => label(e).toLowerCase().includes(want));
  }
  if (!el) return null;
  el.scrollIntoView({block: 'center'});
  el.click();
  return label(el).slice(0, 100) || el.tagName.toLowerCase();
})())JS";
  const uint64_t loads = loads_, navigations = navigations_;
  auto v = Evaluate(script);
  if (!v) return {false, "error: " + v.error(), "browser_click failed"};
  if (v->is_null()) {
    return {
        false,
        "error: no element matches " + (selector.empty() ? "the text \"" + text + "\"" : selector),
        "browser_click: no such element"};
  }
  FollowNavigation(loads, navigations);
  ToolOutcome t = Text();
  t.text = "clicked \"" + v->get<std::string>() + "\"\n\n" + t.text;
  t.summary = "clicked \"" + Clip(v->get<std::string>(), 60) + "\"";
  return t;
}

ToolOutcome Browser::Type(const std::string& selector, const std::string& text, bool submit) {
  if (selector.empty()) {
    return {false, "error: browser_type needs \"selector\"", "browser_type: no selector"};
  }
  if (text.size() > kMaxTextArgument) {
    return {false, "error: \"text\" is longer than 64 KiB", "browser_type: text too long"};
  }
  if (auto ok = Ensure(); !ok) return {false, "error: " + ok.error(), "browser: not started"};
  auto focused = Evaluate("(() => { const el = document.querySelector(" + Literal(selector) +
                          "); if (!el) return null; el.focus(); if ('value' in el) el.value = ''; "
                          "return el.tagName.toLowerCase(); })()");
  if (!focused) return {false, "error: " + focused.error(), "browser_type failed"};
  if (focused->is_null()) {
    return {false, "error: no element matches " + selector, "browser_type: no such element"};
  }
  if (auto typed = Call("Input.insertText", Json{{"text", text}}); !typed) {
    return {false, "error: " + typed.error(), "browser_type failed"};
  }
  if (!submit) {
    return {true, "typed " + std::to_string(text.size()) + " characters into " + selector,
            "typed into " + Clip(selector, 60)};
  }
  const uint64_t loads = loads_, navigations = navigations_;
  auto submitted = Evaluate(
      "(() => { const el = document.activeElement; if (!el || !el.form) return false; "
      "el.form.requestSubmit ? el.form.requestSubmit() : el.form.submit(); return true; })()");
  if (!submitted) return {false, "error: " + submitted.error(), "browser_type: submit failed"};
  if (!submitted->is_boolean() || !submitted->get<bool>()) {
    for (const char* type : {"keyDown", "keyUp"}) {
      Call("Input.dispatchKeyEvent", Json{{"type", type},
                                          {"key", "Enter"},
                                          {"code", "Enter"},
                                          {"windowsVirtualKeyCode", 13},
                                          {"text", "\r"}});
    }
  }
  FollowNavigation(loads, navigations);
  ToolOutcome t = Text();
  t.text = "typed into " + selector + " and submitted\n\n" + t.text;
  t.summary = "typed into " + Clip(selector, 60) + " and submitted";
  return t;
}

ToolOutcome Browser::Screenshot(const std::string& path) {
  if (auto ok = Ensure(); !ok) return {false, "error: " + ok.error(), "browser: not started"};
  auto shot = Call("Page.captureScreenshot", Json{{"format", "png"}});
  if (!shot) return {false, "error: " + shot.error(), "browser_screenshot failed"};
  auto png = DecodeBase64(shot->value("data", ""));
  if (!png || png->empty())
    return {false, "error: the browser sent no image", "browser_screenshot failed"};
  ToolLimits whole;
  whole.max_write = png->size();  // the browser's image, whatever its size
  if (ToolOutcome written = WriteFileTool(path, *png, whole); !written.ok) {
    return {false, written.text, "browser_screenshot failed"};
  }
  return {true, "saved a " + std::to_string(png->size()) + "-byte PNG to " + path,
          "screenshot " + std::to_string(png->size()) + " bytes"};
}

}  // namespace airlock::agent
