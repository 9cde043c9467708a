// The browser agent in a real sandbox (issue 15): the built-in `browser` image (Debian's
// Chromium and the reference agent), driven by the scripted demo model's browsing script
// against the demo site the control plane serves, and by a script of the test's own against a
// loopback "internet" reached only through the egress gateway. Chromium's own sandbox is off
// (--no-sandbox: no user namespaces in ours); these tests check that ours still holds it.
#include <zlib.h>

#include <cstdlib>
#include <fstream>
#include <mutex>
#include <set>

#include "tests/security/sandbox_fixture.h"
#include "tests/support/tcp_origin.h"

namespace airlock::testing {
namespace {

using http::verb;

// The agent's tool events of a session, in order: "tool ok|failed: summary".
std::vector<std::string> ToolSteps(const SessionOutcome& o) {
  std::vector<std::string> out;
  for (const auto& e : o.events) {
    if (e.value("type", "") != "agent.tool") continue;
    const Json& d = e["data"];
    out.push_back(d.value("tool", "") + (d.value("ok", false) ? " ok: " : " failed: ") +
                  d.value("summary", ""));
  }
  return out;
}

// What a PNG holds, read strictly: every chunk's CRC checked up to IEND, the IHDR's size, and
// how many different colours its pixels have (the image data inflated, 8-bit RGB or RGBA).
struct PngFacts {
  std::string problem;  // "" for a valid PNG
  uint32_t width = 0, height = 0;
  size_t colours = 0;
};

PngFacts ReadPng(const std::string& png) {
  PngFacts f;
  auto u32 = [&](size_t at) {
    return (uint32_t(uint8_t(png[at])) << 24) | (uint32_t(uint8_t(png[at + 1])) << 16) |
           (uint32_t(uint8_t(png[at + 2])) << 8) | uint32_t(uint8_t(png[at + 3]));
  };
  if (!png.starts_with("\x89PNG\r\n\x1a\n")) return {"no PNG signature"};
  std::string idat;
  int channels = 0;
  bool ended = false;
  for (size_t at = 8; !ended;) {
    if (at + 12 > png.size()) return {"a chunk runs past the end"};
    const uint32_t len = u32(at);
    if (at + 12 + len > png.size()) return {"a chunk runs past the end"};
    const std::string type = png.substr(at + 4, 4);
    const auto* bytes = reinterpret_cast<const Bytef*>(png.data() + at + 4);
    if (crc32(0, bytes, len + 4) != u32(at + 8 + len)) return {"bad CRC in " + type};
    if (type == "IHDR") {
      f.width = u32(at + 8);
      f.height = u32(at + 12);
      const int depth = uint8_t(png[at + 16]), colour = uint8_t(png[at + 17]);
      if (depth != 8 || (colour != 2 && colour != 6)) return {"not 8-bit RGB(A)"};
      channels = colour == 2 ? 3 : 4;
    } else if (type == "IDAT") {
      idat += png.substr(at + 8, len);
    } else if (type == "IEND") {
      ended = true;
    }
    at += 12 + len;
  }
  if (channels == 0) return {"no IHDR"};
  const size_t row = 1 + size_t(f.width) * channels;
  std::string raw(row * f.height, '\0');
  uLongf raw_size = raw.size();
  if (uncompress(reinterpret_cast<Bytef*>(raw.data()), &raw_size,
                 reinterpret_cast<const Bytef*>(idat.data()), idat.size()) != Z_OK ||
      raw_size != raw.size()) {
    return {"the image data does not inflate to its size"};
  }
  // Undo each row's filter (PNG's None, Sub, Up, Average, Paeth) and count the colours.
  const size_t stride = size_t(f.width) * channels;
  std::vector<uint8_t> prev(stride, 0), cur(stride);
  std::set<uint32_t> seen;
  for (size_t y = 0; y < f.height; ++y) {
    const auto* in = reinterpret_cast<const uint8_t*>(raw.data() + y * row);
    const int filter = in[0];
    if (filter > 4) return {"an unknown row filter"};
    for (size_t i = 0; i < stride; ++i) {
      const int a = i >= size_t(channels) ? cur[i - channels] : 0;
      const int b = prev[i];
      const int c = i >= size_t(channels) ? prev[i - channels] : 0;
      int predicted = 0;
      if (filter == 1) predicted = a;
      if (filter == 2) predicted = b;
      if (filter == 3) predicted = (a + b) / 2;
      if (filter == 4) {
        const int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
        predicted = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      cur[i] = static_cast<uint8_t>(in[1 + i] + predicted);
    }
    for (size_t x = 0; x < f.width; ++x) {
      const uint8_t* px = cur.data() + x * channels;
      seen.insert((uint32_t(px[0]) << 16) | (uint32_t(px[1]) << 8) | px[2]);
    }
    std::swap(prev, cur);
  }
  f.colours = seen.size();
  return f;
}

std::string Joined(const std::vector<std::string>& lines) {
  std::string s;
  for (const auto& l : lines) s += l + "\n";
  return s;
}

class BrowserTest : public ::testing::Test {
 protected:
  void SetUp() override {
    AIRLOCK_REQUIRE_SANDBOXES();
    if (TestBackendName() != "oci") {
      // Chromium under QEMU's TCG takes minutes a page; the browser's code is the same on both.
      GTEST_SKIP() << "the browser tests run on the oci backend";
    }
    if (!std::filesystem::exists(AIRLOCK_BROWSER_IMAGE)) {
      GTEST_SKIP() << AIRLOCK_BROWSER_IMAGE
                   << " was not built: Debian's chromium is missing (scripts/install-deps.sh)";
    }
  }

  // Runs the reference agent of the browser image on `task`; the session's outcome.
  SessionOutcome Browse(SandboxServer& sbx, const Json& extra = Json::object()) {
    Json body = {{"task", "browse"}, {"image", "browser"}};
    body.update(extra);
    auto r = sbx.server().Op(verb::post, "/v1/sessions", DumpJson(body));
    EXPECT_EQ(r.status, 201u) << r.body;
    if (r.status != 201u) return {};
    std::string id = r.json()["id"];
    return sbx.WaitForEnd(id, 180);
  }
};

TEST_F(BrowserTest, TheDemoScriptOpensFollowsTypesAndUploadsAScreenshot) {
  SandboxServer sbx;
  sbx.Start();
  auto o = Browse(sbx);
  ASSERT_EQ(o.session.value("state", ""), "succeeded") << o.session.dump() << "\n" << o.logs;
  auto steps = ToolSteps(o);
  ASSERT_EQ(steps.size(), 4u) << Joined(steps) << o.logs;
  EXPECT_EQ(steps[0], "browser_open ok: opened http://127.0.0.1:7401/sandbox/v1/demo/index");
  EXPECT_EQ(steps[1], "browser_click ok: clicked \"Search the catalogue\"");
  EXPECT_EQ(steps[2], "browser_type ok: typed into #q and submitted");
  EXPECT_TRUE(steps[3].starts_with("browser_screenshot ok: screenshot uploaded as results.png"))
      << steps[3];

  // What the model read at each step is in the stored conversation: the page's text.
  const std::string id = o.session["id"];
  auto conv = sbx.server().Op(verb::get, "/v1/sessions/" + id + "/messages");
  ASSERT_EQ(conv.status, 200u) << conv.body;
  EXPECT_NE(conv.body.find("The Airlock demo library"), std::string::npos) << conv.body;
  EXPECT_NE(conv.body.find("Results for \\\"sandbox\\\""), std::string::npos) << conv.body;
  EXPECT_NE(conv.body.find("The Sandbox Handbook"), std::string::npos) << conv.body;

  // The screenshot is a PNG artifact of the session: valid, the browser's width, and a page
  // with text on it (a blank or an error page would be one or two colours).
  auto png = sbx.server().Op(verb::get, "/v1/sessions/" + id + "/files/results.png");
  ASSERT_EQ(png.status, 200u) << png.body;
  PngFacts facts = ReadPng(png.body);
  EXPECT_EQ(facts.problem, "");
  EXPECT_EQ(facts.width, 1280u);
  EXPECT_GT(facts.height, 400u);
  EXPECT_GT(facts.colours, 20u);
}

// Chromium reaches the web through the gateway like any other client, under the session's
// policy: an allowed page opens; a refused address is the gateway's refusal, not a page; and
// the browser's own process has no other way out.
TEST_F(BrowserTest, TheBrowserReachesOnlyWhatThePolicyAllowsThroughTheGateway) {
  std::mutex mu;
  std::vector<std::string> seen;  // "allowed GET /page HTTP/1.1", "refused ..."
  auto site = [&](const std::string& who, int fd) {
    std::string head;
    while (head.find("\r\n\r\n") == std::string::npos && head.size() < 16384) {
      std::string b = ReadN(fd, 1);
      if (b.empty()) return;
      head += b;
    }
    {
      std::lock_guard lock(mu);
      seen.push_back(who + " " + head.substr(0, head.find("\r\n")));
    }
    const std::string html =
        "<html><head><title>Origin page</title></head><body><p>Hello from the test's "
        "internet</p></body></html>";
    SendAll(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: " +
                    std::to_string(html.size()) + "\r\nConnection: close\r\n\r\n" + html);
  };
  Origin allowed([&](int fd) { site("allowed", fd); }, "127.0.0.2");
  Origin refused([&](int fd) { site("refused", fd); }, "127.0.0.2");
  const std::string home = MakeTempDir("airlock-browser-test");
  const std::string hosts = home + "/hosts";
  std::ofstream(hosts) << "127.0.0.2 origin.test other.test\n";
  const std::string page = "http://origin.test:" + std::to_string(allowed.port()) + "/page";
  // A name the policy does not allow: the gateway's 403.
  const std::string other = "http://other.test:" + std::to_string(refused.port()) + "/other";
  // An address on loopback: Chromium never proxies loopback, and the sandbox's own has nothing.
  const std::string loopback = "http://127.0.0.2:" + std::to_string(refused.port()) + "/loopback";
  auto call = [](const char* name, Json arguments) {
    return Json{
        {"tool_calls",
         Json::array({Json{{"function", {{"name", name}, {"arguments", std::move(arguments)}}}}})}};
  };
  Json script = {{"replies", Json::array({
                                 call("browser_open", {{"url", page}}),
                                 call("browser_open", {{"url", other}}),
                                 call("browser_open", {{"url", loopback}}),
                                 call("finish", {{"result", "browsed"}}),
                             })}};
  std::ofstream(home + "/script.json") << script.dump();
  SandboxServer sbx("[egress]\nallow = [\"origin.test:" + std::to_string(allowed.port()) +
                    "\"]\nallow_addresses = [\"127.0.0.2:" + std::to_string(allowed.port()) +
                    "\"]\nhosts_file = \"" + hosts +
                    "\"\n[providers.script]\nkind = \"scripted\"\n"
                    "script = \"" +
                    home +
                    "/script.json\"\n[models.default]\nprovider = "
                    "\"script\"\nmodel = \"scripted\"\n");
  sbx.Start();
  auto o =
      Browse(sbx, Json{{"egress",
                        {{"allow", {"origin.test:" + std::to_string(allowed.port())}},
                         {"allow_addresses", {"127.0.0.2:" + std::to_string(allowed.port())}}}}});
  ASSERT_EQ(o.session.value("state", ""), "succeeded") << o.session.dump() << "\n" << o.logs;
  auto steps = ToolSteps(o);
  ASSERT_EQ(steps.size(), 3u) << Joined(steps);
  EXPECT_EQ(steps[0], "browser_open ok: opened " + page) << Joined(steps);
  EXPECT_EQ(steps[1], "browser_open failed: browser_open " + other + ": HTTP 403") << Joined(steps);
  EXPECT_EQ(steps[2],
            "browser_open failed: browser_open " + loopback + ": net::ERR_CONNECTION_REFUSED")
      << Joined(steps);
  const std::string id = o.session["id"];
  auto conv = sbx.server().Op(verb::get, "/v1/sessions/" + id + "/messages");
  EXPECT_NE(conv.body.find("Hello from the test's internet"), std::string::npos) << conv.body;
  // The model reads the gateway's reason.
  EXPECT_NE(conv.body.find("other.test:" + std::to_string(refused.port()) +
                           " is not in this session's egress policy"),
            std::string::npos)
      << conv.body;
  {
    std::lock_guard lock(mu);
    // The allowed origin saw the browser's requests (the page, and its favicon), through the
    // gateway; the other origin saw nothing, by name or by address.
    ASSERT_FALSE(seen.empty());
    EXPECT_EQ(seen[0], "allowed GET /page HTTP/1.1") << Joined(seen);
    for (const auto& line : seen) {
      EXPECT_TRUE(line.starts_with("allowed GET /page ") ||
                  line.starts_with("allowed GET /favicon.ico "))
          << Joined(seen);
    }
  }
  // Both named attempts are the session's egress events: one allowed, one denied.
  int allowed_events = 0, refused_events = 0;
  for (const auto& e : o.events) {
    if (e.value("type", "") != "egress.connection") continue;
    const std::string decision = e["data"].value("decision", "");
    allowed_events += decision == "allowed";
    refused_events += decision == "denied" || decision == "refused";
  }
  EXPECT_GE(allowed_events, 1) << o.events.dump();
  EXPECT_GE(refused_events, 1) << o.events.dump();
  std::filesystem::remove_all(home);
}

}  // namespace
}  // namespace airlock::testing
