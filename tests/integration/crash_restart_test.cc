// Runs the real `airlock serve` binary as a child process and treats it roughly: kill -9 in
// the middle of a write stream, restart, and check that every acknowledged write survived,
// that the running sandbox was re-attached, and that no secret ever reached a log line or a
// response.
#include <signal.h>
#include <sys/wait.h>

#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "tests/integration/harness.h"
#include "tests/integration/server_process.h"

namespace airlock::testing {
namespace {

using http::verb;

TEST(CrashRestartTest, NothingAcknowledgedIsLostAcrossKill9AndTheSandboxIsReattached) {
  std::string home = MakeTempDir();
  ServerProcess server(home, FreePort(), FreePort(), kProcessBackendConfig);
  server.Start();
  std::string tokfile = home + "/token-seen-by-agent";
  Json create = {{"task", "survive"},
                 {"command",
                  {"sh", "-c",
                   "ls -l /proc/$$/fd > " + tokfile + ".fds; printf %s \"$SESSION_TOKEN\" > " +
                       tokfile + "; exec sleep 600"}}};
  auto created = server.Op(verb::post, "/v1/sessions", DumpJson(create));
  ASSERT_EQ(created.status, 201u) << created.body;
  std::string id = created.json()["id"];
  std::string token;
  for (int i = 0; i < 500 && token.empty(); ++i) {
    token = ReadFile(tokfile);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(token.starts_with("ast_"));
  // The agent holds stdin/stdout/stderr and nothing else of the control plane's: no
  // listening socket, no database, no client connection.
  std::string fds = ReadFile(tokfile + ".fds");
  EXPECT_EQ(fds.find("socket:"), std::string::npos) << fds;
  EXPECT_EQ(fds.find("airlock.db"), std::string::npos) << fds;
  std::vector<std::string> responses = {created.body};

  // Writers race a kill -9 at a random moment.
  std::vector<std::string> acked_messages;
  std::vector<int64_t> acked_events;
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (int i = 0; !stop; ++i) {
      try {
        std::string content = "msg-" + std::to_string(i);
        auto m = server.Op(verb::post, "/v1/sessions/" + id + "/messages",
                           DumpJson(Json{{"content", content}}));
        if (m.status == 202) acked_messages.push_back(content);
        auto e = server.Sb(verb::post, "/sandbox/v1/events", token,
                           DumpJson(Json{{"type", "tick"}, {"data", {{"i", i}}}}));
        if (e.status == 202) acked_events.push_back(e.json()["seq"]);
      } catch (const std::exception&) {
        break;  // the server is gone
      }
    }
  });
  std::mt19937 rng(std::random_device{}());
  std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 400));
  server.Kill(SIGKILL);
  stop = true;
  writer.join();
  ASSERT_GT(acked_messages.size(), 5u);

  server.Start();
  auto msgs = server.Op(verb::get, "/v1/sessions/" + id + "/messages");
  ASSERT_EQ(msgs.status, 200u) << msgs.body << server.log();
  responses.push_back(msgs.body);
  std::set<std::string> stored;
  Json msgs_json = msgs.json();
  for (const auto& m : msgs_json["pending"]) stored.insert(m["content"].get<std::string>());
  for (const auto& a : acked_messages)
    ASSERT_TRUE(stored.count(a)) << "lost message " << a << " in " << msgs.body.substr(0, 400);
  // Page through every event (the JSON listing returns at most 1,000 per request).
  std::set<int64_t> seqs;
  for (int64_t after = 0;;) {
    auto page =
        server.Op(verb::get, "/v1/sessions/" + id + "/events?after=" + std::to_string(after), "",
                  {{"Accept", "application/json"}});
    ASSERT_EQ(page.status, 200u) << page.body;
    responses.push_back(page.body);
    Json evs = page.json();
    if (evs.empty()) break;
    for (const auto& e : evs) seqs.insert(e["seq"].get<int64_t>());
    after = evs.back()["seq"];
  }
  for (int64_t s : acked_events) EXPECT_TRUE(seqs.count(s)) << "lost event " << s;

  // The sandbox kept running through the crash and its token still works.
  auto session = server.Op(verb::get, "/v1/sessions/" + id);
  responses.push_back(session.body);
  EXPECT_EQ(session.json()["state"], "running");
  auto history = server.Sb(verb::get, "/sandbox/v1/history", token);
  EXPECT_EQ(history.status, 200u);
  responses.push_back(history.body);
  auto inbox = server.Sb(verb::get, "/sandbox/v1/inbox", token);
  EXPECT_EQ(inbox.status, 200u);
  responses.push_back(inbox.body);
  responses.push_back(server.Op(verb::get, "/v1/sessions").body);
  responses.push_back(server.Op(verb::get, "/metrics").body);

  auto killed = server.Op(verb::delete_, "/v1/sessions/" + id);
  responses.push_back(killed.body);
  EXPECT_EQ(killed.json()["state"], "killed");
  EXPECT_EQ(server.Sb(verb::get, "/sandbox/v1/history", token).status, 401u);

  // No secret anywhere it must not be.
  std::string log = server.log();
  ASSERT_FALSE(log.empty());
  EXPECT_EQ(log.find(token), std::string::npos) << "session token in the server log";
  EXPECT_EQ(log.find(server.key()), std::string::npos) << "operator key in the server log";
  for (const auto& body : responses) {
    EXPECT_EQ(body.find(token), std::string::npos);
    EXPECT_EQ(body.find(server.key()), std::string::npos);
  }
  std::string db = ReadFile(home + "/airlock.db") + ReadFile(home + "/airlock.db-wal");
  EXPECT_EQ(db.find(token), std::string::npos) << "raw token stored in the database";
  EXPECT_EQ(db.find(server.key()), std::string::npos) << "raw operator key stored in the database";
  server.Kill(SIGTERM);
}

TEST(CrashRestartTest, SigtermDrainsAndExitsCleanly) {
  std::string home = MakeTempDir();
  ServerProcess server(home, FreePort(), FreePort(), kProcessBackendConfig);
  server.Start();
  EXPECT_EQ(server.Op(verb::get, "/healthz").status, 200u);
  server.Kill(SIGTERM);
  std::string log = server.log();
  EXPECT_NE(log.find("\"msg\":\"draining\""), std::string::npos) << log;
  EXPECT_NE(log.find("\"msg\":\"stopped\""), std::string::npos) << log;
}

TEST(CrashRestartTest, ConfigWithUnknownKeysIsRefusedByName) {
  std::string home = MakeTempDir();
  std::ofstream(home + "/bad.toml")
      << "[server]\noperator_listen = \"127.0.0.1:1\"\nbogus_key = 1\n[nope]\n";
  std::string cmd =
      std::string(AIRLOCK_BIN) + " serve --home " + home + " --config " + home + "/bad.toml 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  std::string out;
  char buf[512];
  while (size_t n = std::fread(buf, 1, sizeof(buf), p)) out.append(buf, n);
  int status = ::pclose(p);
  EXPECT_NE(WEXITSTATUS(status), 0);
  EXPECT_NE(out.find("nope"), std::string::npos) << out;
}

TEST(CrashRestartTest, ASecondServerOnTheSameHomeIsRefusedAndTheFirstCarriesOn) {
  std::string home = MakeTempDir();
  ServerProcess first(home, FreePort(), FreePort(), kProcessBackendConfig);
  first.Start();
  auto created = first.Op(verb::post, "/v1/sessions",
                          DumpJson(Json{{"task", "stay"}, {"command", {"sleep", "600"}}}));
  ASSERT_EQ(created.status, 201u) << created.body;
  std::string id = created.json()["id"];

  // The second server is told other ports, so only the home is shared. `timeout`: a server
  // that is not refused runs on, and must fail this test rather than hang it.
  std::string cmd = "timeout 30 " + std::string(AIRLOCK_BIN) + " serve --home " + home +
                    " --listen 127.0.0.1:" + std::to_string(FreePort()) +
                    " --sandbox-listen 127.0.0.1:" + std::to_string(FreePort()) + " --config " +
                    home + "/airlock.toml 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  std::string out;
  char buf[512];
  while (size_t n = std::fread(buf, 1, sizeof(buf), p)) out.append(buf, n);
  int status = ::pclose(p);
  EXPECT_EQ(WEXITSTATUS(status), 1) << out;
  EXPECT_NE(out.find("another airlock serve (pid "), std::string::npos) << out;
  EXPECT_NE(out.find(home), std::string::npos) << out;

  // The first server still owns its session and its socket.
  auto s = first.Op(verb::get, "/v1/sessions/" + id);
  EXPECT_EQ(s.status, 200u);
  EXPECT_EQ(s.json()["state"], "running");
  std::string sock = home + "/run/" + id + "/control.sock";
  int fd = RawConnectUnix(sock);
  EXPECT_GE(fd, 0) << "the first server's session socket was taken over";
  if (fd >= 0) ::close(fd);
  first.Kill(SIGTERM);
}

}  // namespace
}  // namespace airlock::testing
