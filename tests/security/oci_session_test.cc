// Sessions on real sandboxes through the real `airlock serve`: the log (captured, capped,
// followed), suspend and resume, a follow-up message waking a suspended sandbox, and a
// sandbox that survives a kill -9 of the control plane and is found again.
#include <filesystem>
#include <set>
#include <thread>

#include "store/sqlite_store.h"
#include "tests/security/sandbox_fixture.h"

namespace airlock::testing {
namespace {

using http::verb;

class OciSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    AIRLOCK_REQUIRE_SANDBOXES();
    sbx_ = std::make_unique<SandboxServer>();
    sbx_->Start();
  }
  std::string State(const std::string& id) {
    auto r = sbx_->server().Op(verb::get, "/v1/sessions/" + id);
    return r.status == 200 ? r.json().value("state", "") : "";
  }
  bool WaitForLog(const std::string& id, const std::string& needle, int timeout_s = 20) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
    while (std::chrono::steady_clock::now() < deadline) {
      if (sbx_->Logs(id).find(needle) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
  std::unique_ptr<SandboxServer> sbx_;
};

TEST_F(OciSessionTest, TheLogIsCappedAndTheAgentIsNotBlockedByIt) {
  // 4 MiB of output against the default 8 MiB cap would fit; configure nothing and print
  // 12 MiB: the log stops at the cap with one marker line, the agent still finishes.
  std::string id =
      sbx_->Create({"/bin/sh", "-c", "head -c 12582912 /dev/zero | tr '\\0' x; echo; echo after"});
  auto out = sbx_->WaitForEnd(id);
  EXPECT_LE(out.logs.size(), (8u << 20) + 200);
  EXPECT_GE(out.logs.size(), 8u << 20);
  EXPECT_NE(out.logs.find("log limit"), std::string::npos);
  EXPECT_EQ(out.logs.find("after"), std::string::npos);
  EXPECT_NE(out.session.value("result", "").find("exited with code 0"), std::string::npos)
      << out.session.dump();
}

TEST_F(OciSessionTest, FollowStreamsTheLogUntilTheSessionEnds) {
  std::string id =
      sbx_->Create({"/bin/sh", "-c", "for i in 1 2 3 4 5; do echo line-$i; sleep 0.2; done"});
  // Opened while the agent is still writing; ends by itself after the session ended.
  auto r = sbx_->server().Op(verb::get, "/v1/sessions/" + id + "/logs?follow=1");
  EXPECT_EQ(r.status, 200u);
  for (int i = 1; i <= 5; ++i)
    EXPECT_NE(r.body.find("line-" + std::to_string(i)), std::string::npos) << r.body;
  EXPECT_NE(State(id), "running");
}

TEST_F(OciSessionTest, SuspendFreezesTheSandboxAndAMessageWakesIt) {
  std::string id = sbx_->Create({"/bin/sh", "-c", "while true; do echo tick; sleep 0.05; done"});
  ASSERT_TRUE(WaitForLog(id, "tick"));
  auto s = sbx_->server().Op(verb::post, "/v1/sessions/" + id + "/suspend");
  ASSERT_EQ(s.status, 200u) << s.body;
  EXPECT_EQ(s.json()["state"], "suspended");
  size_t frozen = sbx_->Logs(id).size();
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  EXPECT_EQ(sbx_->Logs(id).size(), frozen) << "a suspended sandbox kept running";
  // The reconciler must not mistake a frozen sandbox for a dead one.
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  EXPECT_EQ(State(id), "suspended");
  auto m =
      sbx_->server().Op(verb::post, "/v1/sessions/" + id + "/messages", R"({"content":"wake up"})");
  ASSERT_EQ(m.status, 202u) << m.body;
  EXPECT_EQ(State(id), "running");
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (sbx_->Logs(id).size() == frozen && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_GT(sbx_->Logs(id).size(), frozen);
  auto d = sbx_->server().Op(verb::delete_, "/v1/sessions/" + id);
  EXPECT_EQ(d.status, 200u);
}

// Hibernation, for real: a microvm goes to disk and wakes with its memory (the shell's
// counter carries on); an oci sandbox is let go and the message that wakes the session
// starts a fresh one (its counter starts again: what the agent kept in memory is lost, as
// docs/api.md says). Either way the session waits, suspended, through reconcile passes, and
// the waking message reaches the agent.
TEST_F(OciSessionTest, HibernationKeepsTheSessionAndAMessageWakesIt) {
  std::string script =
      "i=0; while true; do i=$((i+1)); echo \"tick $i\"; "
      "wget -q -O - --header \"Authorization: Bearer $SESSION_TOKEN\" "
      "\"$CONTROL_PLANE_URL/sandbox/v1/inbox?wait=0\" && echo; sleep 0.2; done";
  std::string id = sbx_->Create({"/bin/sh", "-c", script});
  ASSERT_TRUE(WaitForLog(id, "tick 3\n", 120)) << sbx_->Logs(id);
  auto h =
      sbx_->server().Op(verb::post, "/v1/sessions/" + id + "/suspend", R"({"mode":"hibernate"})");
  ASSERT_EQ(h.status, 200u) << h.body;
  EXPECT_EQ(h.json()["state"], "suspended");
  EXPECT_EQ(h.json()["tier"], "hibernated");
  EXPECT_TRUE(h.json().contains("tier_since")) << h.body;
  std::string asleep = sbx_->Logs(id);
  int last = 0;
  for (size_t at = 0; (at = asleep.find("tick ", at)) != std::string::npos; at += 5) {
    last = std::atoi(asleep.c_str() + at + 5);
  }
  // The reconciler must not take a hibernated sandbox for a dead one.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  auto still = sbx_->server().Op(verb::get, "/v1/sessions/" + id).json();
  EXPECT_EQ(still["state"], "suspended");
  EXPECT_EQ(still["tier"], "hibernated");
  EXPECT_EQ(sbx_->server().Op(verb::post, "/v1/sessions/" + id + "/suspend").status, 409u)
      << "a hibernated session is not paused";
  auto m = sbx_->server().Op(verb::post, "/v1/sessions/" + id + "/messages",
                             R"({"content":"wake up and carry on"})");
  ASSERT_EQ(m.status, 202u) << m.body;
  auto woke = sbx_->server().Op(verb::get, "/v1/sessions/" + id).json();
  EXPECT_EQ(woke["state"], "running");
  EXPECT_EQ(woke["tier"], "active");
  ASSERT_TRUE(WaitForLog(id, "wake up and carry on", 120)) << sbx_->Logs(id);
  if (TestBackendName() == "microvm") {
    ASSERT_TRUE(WaitForLog(id, fmt::format("tick {}\n", last + 2), 60)) << sbx_->Logs(id);
    std::string log = sbx_->Logs(id);
    EXPECT_EQ(log.find("tick 1\n"), log.rfind("tick 1\n")) << "the VM booted again:\n" << log;
  }
  EXPECT_EQ(sbx_->server().Op(verb::delete_, "/v1/sessions/" + id).status, 200u);
  auto ended = sbx_->WaitForEnd(id);
  EXPECT_EQ(ended.session["state"], "killed");
}

// A server with one warm pool, "p", of one sandbox whose agent prints its session.
class OciPoolTest : public ::testing::Test {
 protected:
  static constexpr const char* kCommand =
      R"(["/bin/sh","-c","echo pooled session=$SESSION_ID; echo repo=$REPO; cat notes.md; echo; sleep 600"])";

  void SetUp() override {
    AIRLOCK_REQUIRE_SANDBOXES();
    sbx_ = std::make_unique<SandboxServer>(
        "[pools.p]\nsize = 1\ncommand = " + std::string(kCommand) + "\n");
    sbx_->Start();
  }
  bool Metric(const std::string& needle) { return sbx_->WaitForMetric(needle); }

  // Creates a session with the pool's command (and `extra` in the create's body) and waits
  // (60 s at most) for its agent's line; the session's id.
  std::string CreateAndAwaitTheAgent(const Json& extra = Json::object()) {
    std::string id;
    if (extra.empty()) {
      id = sbx_->Create(Json::parse(kCommand));
    } else {
      Json body = {{"task", "pooled work"}, {"command", Json::parse(kCommand)}};
      body.update(extra);
      auto r = sbx_->server().Op(verb::post, "/v1/sessions", DumpJson(body));
      EXPECT_EQ(r.status, 201u) << r.body;
      if (r.status == 201u) id = r.json()["id"];
    }
    if (id.empty()) return id;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (sbx_->Logs(id).find("pooled session=") == std::string::npos &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return id;
  }

  std::unique_ptr<SandboxServer> sbx_;
};

// A warm pool on a real backend: its sandboxes start before any session and wait for an
// identity; a session with the pool's command takes one, its agent runs as that session,
// and the pool starts another.
TEST_F(OciPoolTest, ASessionTakesAWaitingSandboxAndItsAgentRunsAsThatSession) {
  SandboxServer& sbx = *sbx_;
  auto metric = [&](const std::string& needle) { return Metric(needle); };
  ASSERT_TRUE(metric("airlock_pool_ready{pool=\"p\"} 1"));
  std::string id = CreateAndAwaitTheAgent();
  ASSERT_FALSE(id.empty());
  EXPECT_TRUE(metric("airlock_pool_claims_total{pool=\"p\"} 1"));
  EXPECT_NE(sbx.Logs(id).find("pooled session=" + id + "\n"), std::string::npos) << sbx.Logs(id);
  EXPECT_EQ(sbx.server().Op(verb::get, "/v1/sessions/" + id).json()["state"], "running");
  // The pool refills; the session ends as any other, its sandbox destroyed.
  EXPECT_TRUE(metric("airlock_pool_ready{pool=\"p\"} 1"));
  EXPECT_EQ(sbx.server().Op(verb::delete_, "/v1/sessions/" + id).status, 200u);
  auto ended = sbx.WaitForEnd(id);
  EXPECT_EQ(ended.session["state"], "killed");
  // A control plane that stops leaves no sandbox waiting: neither the one waiting now nor
  // one it is still starting.
  sbx.server().Kill(SIGTERM);
  const std::string state_dir =
      std::filesystem::path(SandboxStatePath(sbx.home(), "x")).parent_path();
  std::vector<std::string> left;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(state_dir, ec)) {
    if (e.path().filename().string().find("wrm_") != std::string::npos) {
      left.push_back(e.path().filename().string());
    }
  }
  EXPECT_TRUE(left.empty()) << "still there: " << left.front();
}

// A session that takes a pool's sandbox is created running with its token in one write, and
// its init gets the identity with the session's work in one answer: the agent still sees the
// session's variables and files, and the session's events read as any start.
TEST_F(OciPoolTest, APooledAgentGetsTheSessionsVariablesAndFiles) {
  SandboxServer& sbx = *sbx_;
  ASSERT_TRUE(Metric("airlock_pool_ready{pool=\"p\"} 1"));
  std::string id = CreateAndAwaitTheAgent(
      {{"env", {{"REPO", "airlock"}}}, {"files", {{"notes.md", "read me first"}}}});
  ASSERT_FALSE(id.empty());
  EXPECT_TRUE(Metric("airlock_pool_claims_total{pool=\"p\"} 1"));
  // `cat` writes the file, then `echo` its line's end: waited for whole (under TCG the two
  // can arrive far apart).
  const std::string expected = "pooled session=" + id + "\nrepo=airlock\nread me first\n";
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (sbx.Logs(id).find(expected) == std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const std::string logs = sbx.Logs(id);
  EXPECT_NE(logs.find(expected), std::string::npos) << logs;
  auto events = sbx.server().Op(verb::get, "/v1/sessions/" + id + "/events", "",
                                {{"Accept", "application/json"}});
  ASSERT_EQ(events.status, 200u) << events.body;
  Json list = events.json();
  ASSERT_TRUE(list.is_array() && list.size() >= 2u) << events.body;
  EXPECT_EQ(list[0].value("type", ""), "session.created") << events.body;
  EXPECT_EQ(list[1].value("type", ""), "session.state") << events.body;
  EXPECT_EQ(list[1]["data"], Json({{"from", "starting"}, {"to", "running"}})) << events.body;
}

// A claim moves the waiting sandbox's socket to the session (the same socket) and links the
// session's socket directory to the sandbox's after the identity has gone out. The session's
// socket answers as the session's, and a control plane killed with -9 and started again
// listens on it again through that link.
TEST_F(OciPoolTest, AClaimedSandboxIsFoundByItsSessionAfterTheControlPlaneIsKilled) {
  SandboxServer& sbx = *sbx_;
  ASSERT_TRUE(Metric("airlock_pool_ready{pool=\"p\"} 1"));
  std::string id = CreateAndAwaitTheAgent();
  ASSERT_FALSE(id.empty());
  const std::string dir = sbx.home() + "/run/" + id;
  EXPECT_TRUE(std::filesystem::is_symlink(dir)) << dir;
  const std::string socket = dir + "/control.sock";
  // The identity went to init; asked again on the session's socket: refused as the session's.
  EXPECT_EQ(UnixGet(socket, "/sandbox/v1/identity").status, 409u);
  sbx.server().Kill(SIGKILL);
  sbx.server().Start();
  // (A VM's channel is taken up again as the restarted server reattaches: not at once.)
  unsigned status = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while ((status = UnixGet(socket, "/sandbox/v1/identity").status) != 409u &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(status, 409u);
  EXPECT_EQ(sbx.server().Op(verb::get, "/v1/sessions/" + id).json()["state"], "running");
}

// A control plane that died after a claim's create and before it linked the session's socket
// directory (here: the link removed while it was down) finds at its restart that it cannot
// listen on the session's socket. The sandbox could never reach it: the session gets a fresh
// one, whose agent runs as the session.
TEST_F(OciPoolTest, AClaimWhoseLinkWasNeverMadeGetsAFreshSandboxAtTheRestart) {
  SandboxServer& sbx = *sbx_;
  ASSERT_TRUE(Metric("airlock_pool_ready{pool=\"p\"} 1"));
  std::string id = CreateAndAwaitTheAgent();
  ASSERT_FALSE(id.empty());
  sbx.server().Kill(SIGKILL);
  std::filesystem::remove(sbx.home() + "/run/" + id);
  sbx.server().Start();
  // The session's sandbox is replaced (an event says why), and the fresh one's agent runs.
  auto restarted = [&] {
    auto r = sbx.server().Op(verb::get, "/v1/sessions/" + id + "/events", "",
                             {{"Accept", "application/json"}});
    if (r.status != 200u) return false;
    for (const auto& e : r.json()) {
      if (e.value("type", "") == "session.sandbox_restart") return true;
    }
    return false;
  };
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(90);
  while (!restarted() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(restarted()) << sbx.server().log();
  while (sbx.Logs(id).find("pooled session=" + id) == std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_NE(sbx.Logs(id).find("pooled session=" + id), std::string::npos) << sbx.Logs(id);
  EXPECT_EQ(sbx.server().Op(verb::get, "/v1/sessions/" + id).json()["state"], "running");
  EXPECT_TRUE(std::filesystem::is_directory(sbx.home() + "/run/" + id));
}

// A sandbox that dies while it waits in a pool (here: killed from the host) is found, destroyed
// and replaced within a few seconds; the next session takes the replacement and its agent runs.
TEST_F(OciPoolTest, AWaitingSandboxThatDiesIsReplacedAndNotHandedToASession) {
  SandboxServer& sbx = *sbx_;
  auto metric = [&](const std::string& needle) { return Metric(needle); };
  auto waiting = [&] {
    std::vector<std::string> out;
    std::error_code ec;
    const auto dir = std::filesystem::path(SandboxStatePath(sbx.home(), "x")).parent_path();
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
      const std::string name = e.path().filename().string();
      if (name.find("wrm_") != std::string::npos && !name.ends_with(".tmp")) out.push_back(name);
    }
    return out;
  };
  ASSERT_TRUE(metric("airlock_pool_ready{pool=\"p\"} 1"));
  ASSERT_EQ(waiting().size(), 1u);
  const std::string victim = waiting().front();
  // Killed as the host's OOM killer would: the container's processes, or the VM's QEMU.
  if (TestBackendName() == "microvm") {
    ASSERT_EQ(KillProcessesNaming("-name " + victim + " ").size(), 1u);
  } else {
    const char* runtime = std::getenv("AIRLOCK_TEST_OCI_RUNTIME");
    ASSERT_EQ(
        RunCommandLine(fmt::format("{} --root {}/run/oci kill {} KILL",
                                   runtime && *runtime ? runtime : "crun", sbx.home(), victim)),
        0);
  }
  EXPECT_TRUE(metric("airlock_pool_lost_total{pool=\"p\"} 1"));
  EXPECT_TRUE(metric("airlock_pool_ready{pool=\"p\"} 1"));
  ASSERT_EQ(waiting().size(), 1u);
  EXPECT_NE(waiting().front(), victim) << "the dead sandbox is gone, a new one waits";
  std::string id = CreateAndAwaitTheAgent();
  ASSERT_FALSE(id.empty());
  EXPECT_NE(sbx.Logs(id).find("pooled session=" + id + "\n"), std::string::npos) << sbx.Logs(id);
  EXPECT_TRUE(metric("airlock_pool_claims_total{pool=\"p\"} 1"));
}

TEST_F(OciSessionTest, ASandboxSurvivesAKill9OfTheControlPlaneAndIsFoundAgain) {
  // The agent keeps polling its inbox through the bridge; after the restart it must get
  // through again on the same socket path, with the same token.
  std::string script =
      "while true; do "
      "wget -q -O - --header \"Authorization: Bearer $SESSION_TOKEN\" "
      "\"$CONTROL_PLANE_URL/sandbox/v1/inbox?wait=1\" "
      "&& echo; sleep 0.1; done";
  std::string id = sbx_->Create({"/bin/sh", "-c", script});
  ASSERT_TRUE(WaitForLog(id, "security probe")) << sbx_->Logs(id);
  sbx_->server().Kill(SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  sbx_->server().Start();
  EXPECT_EQ(State(id), "running");
  auto m = sbx_->server().Op(verb::post, "/v1/sessions/" + id + "/messages",
                             R"({"content":"after the restart"})");
  ASSERT_EQ(m.status, 202u) << m.body;
  EXPECT_TRUE(WaitForLog(id, "after the restart")) << sbx_->Logs(id);
  // A reconcile pass later it is still running: it was re-attached, not written off.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_EQ(State(id), "running");
  EXPECT_EQ(sbx_->server().Op(verb::delete_, "/v1/sessions/" + id).status, 200u);
  auto ended = sbx_->WaitForEnd(id);
  EXPECT_EQ(ended.session["state"], "killed");
}

TEST_F(OciSessionTest, ASandboxWhoseSessionEndedWhileTheControlPlaneWasDownIsDestroyedAtStart) {
  std::string id = sbx_->Create({"/bin/sleep", "600"});
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (State(id) != "running" && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::string state_dir = SandboxStatePath(sbx_->home(), id);
  ASSERT_TRUE(std::filesystem::exists(state_dir));
  // The control plane dies; its session ends meanwhile (as if it had been deleted just
  // before the crash, before the destroy ran).
  sbx_->server().Kill(SIGKILL);
  {
    store::StoreOptions o;
    o.path = sbx_->home() + "/airlock.db";
    auto st = store::OpenSqliteStore(o);
    ASSERT_TRUE(st) << st.error().message;
    store::StateChange kill{{store::SessionState::kRunning},
                            store::SessionState::kKilled,
                            "killed",
                            true,
                            std::nullopt};
    ASSERT_TRUE((*st)->ChangeState(id, kill));
  }
  ASSERT_TRUE(std::filesystem::exists(state_dir)) << "the sandbox outlives the control plane";
  sbx_->server().Start();
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::filesystem::exists(state_dir) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_FALSE(std::filesystem::exists(state_dir))
      << "a sandbox no live session owns was left running";
}

TEST_F(OciSessionTest, DeletingASessionDestroysItsSandbox) {
  std::string id = sbx_->Create({"/bin/sleep", "600"});
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (State(id) != "running" && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::string state_dir = SandboxStatePath(sbx_->home(), id);
  EXPECT_TRUE(std::filesystem::exists(state_dir));
  EXPECT_EQ(sbx_->server().Op(verb::delete_, "/v1/sessions/" + id).status, 200u);
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  std::string bundle = sbx_->home() + "/sessions/" + id + "/bundle/config.json";
  while ((std::filesystem::exists(state_dir) || std::filesystem::exists(bundle)) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_FALSE(std::filesystem::exists(state_dir)) << "the container outlived its session";
  EXPECT_FALSE(std::filesystem::exists(bundle))
      << "the bundle (it holds the token) outlived its session";
}

// Identity after start: the sandbox is made knowing nothing of its session and init takes
// the token over the socket once it runs. Read from the host while the sandbox lives: neither
// its config.json nor init's environment holds the token the agent got.
TEST_F(OciSessionTest, TheTokenIsInNeitherTheBundleNorInitsEnvironment) {
  std::string id =
      sbx_->Create({"/bin/sh", "-c", "echo \"token=$SESSION_TOKEN.\"; exec sleep 600"});
  ASSERT_TRUE(WaitForLog(id, "token=")) << sbx_->Logs(id);
  std::string logs = sbx_->Logs(id);
  size_t at = logs.find("token=") + 6;
  std::string token = logs.substr(at, logs.find('.', at) - at);
  ASSERT_TRUE(token.starts_with("ast_")) << logs;
  EXPECT_EQ(State(id), "running");
  if (TestBackendName() == "microvm") {
    // Nothing the VM was started from holds it (kernel, initramfs, disk, QEMU's command
    // line and environment): it came over the channel.
    std::string vm = sbx_->home() + "/sessions/" + id + "/vm";
    size_t files = 0;
    for (const auto& e : std::filesystem::directory_iterator(vm)) {
      if (!e.is_regular_file()) continue;
      ++files;
      EXPECT_EQ(ReadFile(e.path().string()).find(token), std::string::npos) << e.path();
    }
    EXPECT_GE(files, 3u) << "no initrd, pid file or status in " << vm;
    pid_t qemu = std::atoi(ReadFile(vm + "/qemu.pid").c_str());
    ASSERT_GT(qemu, 0);
    for (const char* what : {"environ", "cmdline"}) {
      std::string text = ReadFile(fmt::format("/proc/{}/{}", qemu, what));
      if (std::string_view(what) == "cmdline") {
        EXPECT_FALSE(text.empty()) << "no QEMU at " << qemu;
      }
      EXPECT_EQ(text.find(token), std::string::npos) << "the token is in QEMU's " << what;
    }
    EXPECT_EQ(sbx_->server().Op(verb::delete_, "/v1/sessions/" + id).status, 200u);
    return;
  }
  std::string config = ReadFile(sbx_->home() + "/sessions/" + id + "/bundle/config.json");
  ASSERT_FALSE(config.empty());
  EXPECT_EQ(config.find(token), std::string::npos) << "the token is in config.json";
  EXPECT_EQ(config.find("SESSION_TOKEN="), std::string::npos);
  // init is the container's process as its runtime reports it.
  const char* runtime = std::getenv("AIRLOCK_TEST_OCI_RUNTIME");
  std::string state_file = sbx_->home() + "/state.json";
  ASSERT_EQ(RunCommandLine(fmt::format("{} --root {}/run/oci state airlock-{} > {}",
                                       runtime && *runtime ? runtime : "crun", sbx_->home(), id,
                                       state_file)),
            0);
  auto state = ParseJson(ReadFile(state_file));
  ASSERT_TRUE(state && state->contains("pid")) << ReadFile(state_file);
  std::string environ = ReadFile(fmt::format("/proc/{}/environ", (*state)["pid"].get<int>()));
  EXPECT_EQ(environ.find(token), std::string::npos) << "the token is in init's environment";
  EXPECT_EQ(environ.find("SESSION_TOKEN"), std::string::npos);
  EXPECT_EQ(sbx_->server().Op(verb::delete_, "/v1/sessions/" + id).status, 200u);
}

// The agent reaches the socket init took its identity from (through the bridge): asking
// there again gets nothing.
TEST_F(OciSessionTest, TheAgentCannotTakeTheIdentityAgain) {
  std::string id = sbx_->Create(
      {"/bin/sh", "-c",
       "wget -q -O - \"$CONTROL_PLANE_URL/sandbox/v1/identity\"; echo \"identity-exit=$?\""});
  auto out = sbx_->WaitForEnd(id);
  EXPECT_NE(out.logs.find("identity-exit=1"), std::string::npos) << out.logs;
  EXPECT_EQ(out.logs.find("\"token\""), std::string::npos) << out.logs;
  std::string metrics = sbx_->server().Op(verb::get, "/metrics").body;
  EXPECT_NE(metrics.find("airlock_identity_requests_total{outcome=\"again\"} 1"), std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("airlock_identity_requests_total{outcome=\"delivered\"} 1"),
            std::string::npos)
      << metrics;
}

TEST_F(OciSessionTest, AnUnknownImageIsAClearError) {
  Json body = {{"task", "x"}, {"image", "nope:latest"}, {"command", {"/bin/true"}}};
  auto r = sbx_->server().Op(verb::post, "/v1/sessions", DumpJson(body));
  EXPECT_GE(r.status, 400u);
  EXPECT_NE(r.body.find("nope"), std::string::npos) << r.body;
}

// A control plane that is not root runs rootless sandboxes (a user namespace). On a host
// without a subordinate id range for its user the agent is the namespace's root, which is
// the unprivileged host user, with no capabilities, and cgroup limits are not enforced (the
// server says so in its log).
TEST(OciRootlessTest, ANonRootControlPlaneRunsRootlessSandboxes) {
  AIRLOCK_REQUIRE_SANDBOXES();
  if (TestBackendName() != "oci") GTEST_SKIP() << "rootless sandboxes are the oci backend's";
  if (::access("/proc/sys/user/max_user_namespaces", R_OK) != 0 ||
      ReadFile("/proc/sys/user/max_user_namespaces").starts_with("0")) {
    GTEST_SKIP() << "unprivileged user namespaces are disabled on this host";
  }
  constexpr uid_t kNobody = 65534;
  SandboxServer sbx;
  std::filesystem::path home = sbx.home();
  for (const auto& e : std::filesystem::recursive_directory_iterator(home)) {
    ::lchown(e.path().c_str(), kNobody, kNobody);
  }
  ::chown(home.c_str(), kNobody, kNobody);
  sbx.server().RunAs(kNobody, kNobody);
  sbx.Start();
  auto out = sbx.WaitForEnd(
      sbx.Create(SandboxServer::Probe({"identity", "--", "env", "--", "syscalls", "--", "read",
                                       "/proc/1/environ", "/proc/1/mem", "/proc/1/fd/1"})));
  Json id = out.Probe("identity");
  ASSERT_FALSE(id.is_null()) << out.logs << sbx.server().log();
  for (const char* cap : {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}) {
    EXPECT_EQ(id[cap], "0000000000000000") << cap;
  }
  EXPECT_EQ(id["NoNewPrivs"], "1");
  EXPECT_EQ(id["Seccomp"], "2");
  Json syscalls = out.Probe("syscalls");
  ASSERT_FALSE(syscalls.is_null()) << out.logs;
  for (const auto& a : syscalls["attempts"]) {
    // setuid(0)/setgid(0) are no-ops for the namespace's root: nothing is gained. It is also
    // init's uid, so kill(1) is allowed; init ignores signals sent from inside the sandbox
    // (and as its pid namespace's init, SIGKILL and SIGSTOP): the probe must survive it.
    if (a["name"] == "setuid_root" || a["name"] == "setgid_root" || a["name"] == "kill_init")
      continue;
    EXPECT_FALSE(a["succeeded"].get<bool>()) << a.dump();
  }
  EXPECT_GT(syscalls["attempts"].size(), 20u);
  // Here the agent has init's uid: init's memory (the token) and descriptors (the host's log
  // file, uncapped) must still be out of its reach.
  Json reads = out.Probe("read");
  ASSERT_FALSE(reads.is_null()) << out.logs;
  for (const auto& r : reads["paths"]) EXPECT_FALSE(r["readable"].get<bool>()) << r.dump();
  EXPECT_FALSE(out.Probe("done").is_null())
      << "the probe did not survive its attempts: " << out.logs;
  Json env = out.Probe("env");
  ASSERT_FALSE(env.is_null()) << out.logs;
  std::set<std::string> names(env["names"].begin(), env["names"].end());
  EXPECT_EQ(names, (std::set<std::string>{"SESSION_ID", "SESSION_TOKEN", "CONTROL_PLANE_URL",
                                          "PATH", "HOME", "LANG"}));
  EXPECT_NE(sbx.server().log().find("\"rootless\":true"), std::string::npos);
}

// Work going in (issue 14), in real sandboxes: the operator's variables and files, and the
// image's Env, WorkingDir and User, as the agent sees them.
class WorkInSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    AIRLOCK_REQUIRE_SANDBOXES();
    sbx_ = std::make_unique<SandboxServer>();
    auto imported = sbx_->ImportImage(AIRLOCK_WORKIN_IMAGE, "airlock-workin:test");
    ASSERT_TRUE(imported) << imported.error().message;
    sbx_->Start();
  }
  // Runs `script` with sh in `image` with the session's `env` and `files`; the session's log.
  std::string Run(const std::string& image, const std::string& script, const Json& env,
                  const Json& files) {
    Json body = {{"task", "work in"},
                 {"command", {"/bin/sh", "-c", script}},
                 {"env", env},
                 {"files", files}};
    if (!image.empty()) body["image"] = image;
    auto r = sbx_->server().Op(verb::post, "/v1/sessions", DumpJson(body));
    EXPECT_EQ(r.status, 201u) << r.body;
    if (r.status != 201u) return {};
    std::string id = r.json()["id"];
    auto outcome = sbx_->WaitForEnd(id, 120);
    EXPECT_EQ(outcome.session.value("state", ""), "failed") << "the script exits without finish";
    auto del = sbx_->server().Op(verb::delete_, "/v1/sessions/" + id);
    (void)del;
    return outcome.logs;
  }
  std::unique_ptr<SandboxServer> sbx_;
};

constexpr const char* kShowWork =
    "echo \"var APP_MODE=$APP_MODE REPO=$REPO GREETING=$GREETING HOME=$HOME\"; "
    "echo \"cwd $(pwd)\"; echo \"user $(id -un) $(id -u)\"; "
    "echo \"notes $(cat notes.md)\"; echo \"bin $(od -An -tx1 bin.dat | tr -d ' \\n')\"; "
    "echo \"token ${SESSION_TOKEN:+set}\"; "
    "echo later > written.txt && echo \"wrote $(cat written.txt)\"; "
    "for f in * .*; do echo \"entry $f\"; done; exit 3";

TEST_F(WorkInSessionTest, TheSessionsVariablesAndFilesReachTheAgentInItsHome) {
  std::string logs =
      Run("", kShowWork, Json{{"REPO", "airlock"}, {"APP_MODE", "session"}},
          Json{{"notes.md", "read me first"}, {"bin.dat", {{"base64", "AP8AAQ=="}}}});
  EXPECT_NE(logs.find("var APP_MODE=session REPO=airlock GREETING= HOME=/home/sandbox\n"),
            std::string::npos)
      << logs;
  EXPECT_NE(logs.find("cwd /home/sandbox\n"), std::string::npos) << logs;
  EXPECT_NE(logs.find("notes read me first\n"), std::string::npos) << logs;
  EXPECT_NE(logs.find("bin 00ff0001\n"), std::string::npos) << logs;
  EXPECT_NE(logs.find("token set\n"), std::string::npos) << logs;
  EXPECT_NE(logs.find("wrote later\n"), std::string::npos) << logs;
  EXPECT_EQ(logs.find("user root"), std::string::npos) << logs;
  // Nothing half-written or of init's is left beside the files.
  EXPECT_EQ(logs.find("entry .airlock-in"), std::string::npos) << logs;
}

TEST_F(WorkInSessionTest, TheImagesEnvWorkingDirAndUserAreHonouredButNeverRoot) {
  std::string logs = Run("airlock-workin:test", kShowWork, Json{{"REPO", "airlock"}},
                         Json{{"notes.md", "n"}, {"bin.dat", ""}});
  // The image's variables, under the session's; HOME is the sandbox's own.
  EXPECT_NE(logs.find("var APP_MODE=image REPO=airlock GREETING=hello from the image "
                      "HOME=/home/sandbox\n"),
            std::string::npos)
      << logs;
  // Its working directory, writable, with what the image has there and the session's files.
  EXPECT_NE(logs.find("cwd /app\n"), std::string::npos) << logs;
  EXPECT_NE(logs.find("entry README.txt\n"), std::string::npos) << logs;
  EXPECT_NE(logs.find("notes n\n"), std::string::npos) << logs;
  EXPECT_NE(logs.find("wrote later\n"), std::string::npos) << logs;
  // Its user by name (oci: under the sandbox's own uid; microvm: its own, 1234), never 0.
  EXPECT_NE(logs.find(TestBackendName() == "microvm" ? "user app 1234\n" : "user app "),
            std::string::npos)
      << logs;
  EXPECT_EQ(logs.find("user app 0\n"), std::string::npos) << logs;
}

}  // namespace
}  // namespace airlock::testing
