// The session state machine driven directly, without HTTP: a real SQLite store in a temporary
// home, a backend that keeps its sandboxes in a map, and a ManualClock.
#include "controlplane/session_service.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <mutex>

#include "controlplane/plug_points.h"

namespace airlock::controlplane {
namespace {

using store::SessionState;

// Sandboxes as states in a map: "running", "paused" or "destroyed" per handle.
class FakeBackend : public sandbox::Backend {
 public:
  std::string_view name() const override { return "fake"; }
  sandbox::Capabilities capabilities() const override {
    sandbox::Capabilities c;
    c.isolated = isolated;
    c.suspend = sandbox::Capabilities::Suspend::kFreeze;
    c.hibernate = hibernate;
    return c;
  }
  Result<sandbox::Started> Create(const sandbox::SandboxSpec& spec) override {
    std::lock_guard l(mu);
    if (fail_create) return MakeError(ErrorCode::kUnavailable, "no room");
    tokens[spec.sandbox_id] = spec.identity ? spec.identity->token.Reveal() : "";
    state["fake:" + spec.sandbox_id] = "running";
    return sandbox::Started{"fake:" + spec.sandbox_id, sandbox::SandboxState::kRunning};
  }
  Status Suspend(const std::string& h) override { return Set(h, "paused"); }
  Status Hibernate(const std::string& h) override {
    if (!hibernate) return Backend::Hibernate(h);
    return Set(h, "hibernated");
  }
  Result<std::string> Resume(const std::string& h) override {
    AIRLOCK_TRY(Set(h, "running"));
    return h;
  }
  Status Destroy(const std::string& h) override { return Set(h, "destroyed"); }
  Result<sandbox::SandboxStatus> Inspect(const std::string& h) override {
    std::lock_guard l(mu);
    sandbox::SandboxStatus st;
    auto it = state.find(h);
    st.state = it == state.end() || it->second == "destroyed" ? sandbox::SandboxState::kMissing
               : it->second == "exited"                       ? sandbox::SandboxState::kExited
               : it->second == "paused" || it->second == "hibernated"
                   ? sandbox::SandboxState::kPaused
                   : sandbox::SandboxState::kRunning;
    return st;
  }
  Result<sandbox::SandboxStatus> Reattach(const std::string& h) override { return Inspect(h); }
  Result<std::string> Logs(const std::string&, int64_t, size_t) override { return std::string(); }

  // The sandbox of session `id` stops, as when its agent exits.
  void Exit(const std::string& id) {
    std::lock_guard l(mu);
    state["fake:" + id] = "exited";
  }
  std::string StateOf(const std::string& id) {
    std::lock_guard l(mu);
    auto it = state.find("fake:" + id);
    return it == state.end() ? "" : it->second;
  }

  std::mutex mu;
  std::map<std::string, std::string> state;
  std::map<std::string, std::string> tokens;  // session id -> the token its sandbox got
  bool isolated = true;
  bool fail_create = false;
  bool hibernate = false;  // Capabilities::hibernate

 private:
  Status Set(const std::string& h, std::string to) {
    std::lock_guard l(mu);
    auto it = state.find(h);
    if (it == state.end() || it->second == "destroyed") {
      return MakeError(ErrorCode::kNotFound, "no such sandbox");
    }
    it->second = std::move(to);
    return Ok();
  }
};

// The sandbox listener's sockets, as calls recorded.
class FakeChannels : public SandboxChannels {
 public:
  Status ListenUnix(const std::string& path, const std::string&) override {
    open.insert(path);
    return Ok();
  }
  void CloseUnix(const std::string& path) override { open.erase(path); }
  std::string SandboxUrl() const override { return "http://127.0.0.1:1"; }
  bool draining() const override { return false; }
  std::set<std::string> open;
};

std::string TempHome() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "airlock-svc-XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  return tmpl;
}

class SessionServiceTest : public ::testing::Test {
 protected:
  SessionServiceTest()
      : home_(TempHome()),
        config_(MakeConfig(home_)),
        store_(OpenOrThrow(config_)),
        metrics_(registry_),
        llm_(io_, config_, *store_, pool_, events_, conversations_, registry_),
        tokens_(MakeTokenCache(config_)) {
    auto backend = std::make_unique<FakeBackend>();
    backend_ = backend.get();
    backends_.Register(std::move(backend));
    service_ = std::make_unique<SessionService>(
        SessionService::Deps{config_, io_, *store_, backends_, pool_, sandbox_pool_, clock_,
                             metrics_, inbox_, events_, conversations_, llm_, tokens_, channels_});
  }
  ~SessionServiceTest() override {
    pool_.join();
    sandbox_pool_.join();
    std::error_code ec;
    std::filesystem::remove_all(home_, ec);
  }

  static Config MakeConfig(const std::string& home) {
    Config c = *ParseConfig("", home);
    c.default_backend = "fake";
    c.node = "node-a";
    c.max_restarts = 1;
    return c;
  }
  static std::unique_ptr<store::Store> OpenOrThrow(const Config& c) {
    std::filesystem::create_directories(c.home);
    auto s = OpenStore(c);
    if (!s) throw std::runtime_error(s.error().message);
    return std::move(*s);
  }

  // Runs `op` on the io context until it and everything it started are done.
  template <typename T>
  T Run(awaitable<T> op) {
    std::optional<T> out;
    asio::co_spawn(
        io_, [&]() -> awaitable<void> { out.emplace(co_await std::move(op)); }, asio::detached);
    io_.restart();
    io_.run();
    return std::move(*out);
  }
  void Run(awaitable<void> op) {
    asio::co_spawn(io_, std::move(op), asio::detached);
    io_.restart();
    io_.run();
  }

  store::Session Create(const std::string& task = "do the thing") {
    CreateSessionRequest req;
    req.task = task;
    req.image = "base";
    req.model = "default";
    req.backend = "fake";
    auto s = Run(service_->Create(std::move(req)));
    if (!s) throw std::runtime_error(s.error().message);
    return *s;
  }
  store::Session Stored(const std::string& id) { return *store_->GetSession(id); }

  std::string home_;
  Config config_;
  asio::io_context io_;
  std::unique_ptr<store::Store> store_;
  asio::thread_pool pool_{2};
  asio::thread_pool sandbox_pool_{2};
  metrics::Registry registry_;
  ControlPlaneMetrics metrics_;
  ManualClock clock_{1'000'000};
  Notifier inbox_{io_};
  Notifier events_{io_};
  ConversationLocks conversations_{io_};
  LlmProxy llm_;
  TokenCache tokens_;
  FakeChannels channels_;
  sandbox::BackendRegistry backends_;
  FakeBackend* backend_ = nullptr;
  std::unique_ptr<SessionService> service_;
};

TEST_F(SessionServiceTest, CreateStartsASandboxAndTheTaskWaitsInItsInbox) {
  store::Session s = Create("count the files");
  EXPECT_EQ(s.state, SessionState::kRunning);
  EXPECT_EQ(s.node, "node-a");
  EXPECT_EQ(s.created_at, 1'000'000);
  EXPECT_EQ(backend_->StateOf(s.id), "running");
  EXPECT_EQ(channels_.open.count(service_->ControlSocketDir(s.id) + "/control.sock"), 1u);
  auto msgs = Run(service_->WaitForInbox(s, 0));
  ASSERT_TRUE(msgs) << msgs.error().message;
  ASSERT_EQ(msgs->size(), 1u);
  EXPECT_EQ((*msgs)[0].body["content"], "count the files");
  // Taken: the next look finds the inbox empty.
  auto again = Run(service_->WaitForInbox(s, 0));
  ASSERT_TRUE(again);
  EXPECT_TRUE(again->empty());
}

TEST_F(SessionServiceTest, CreateRefusesABackendThatDoesNotIsolateUnlessAllowed) {
  backend_->isolated = false;
  CreateSessionRequest req{"x", "base", "default", Json::array(), "fake"};
  auto refused = Run(service_->Create(req));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kPermissionDenied);
  EXPECT_EQ(refused.error().message,
            "backend \"fake\" does not isolate sandboxes; enable it with "
            "sandbox.allow_unisolated_backends");
  config_.allow_unisolated_backends = true;
  EXPECT_TRUE(Run(service_->Create(req)));
}

TEST_F(SessionServiceTest, CreateOfAnUnknownBackendNamesTheAvailableOnes) {
  CreateSessionRequest req{"x", "base", "default", Json::array(), "nope"};
  auto refused = Run(service_->Create(req));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(refused.error().message, "backend \"nope\" is not available; available: fake");
}

TEST_F(SessionServiceTest, ASandboxThatFailsToStartFailsItsSession) {
  backend_->fail_create = true;
  CreateSessionRequest req{"x", "base", "default", Json::array(), "fake"};
  auto refused = Run(service_->Create(req));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kUnavailable);
  EXPECT_EQ(refused.error().message, "sandbox failed to start: no room");
  auto list = store_->ListSessions({});
  ASSERT_TRUE(list);
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].state, SessionState::kFailed);
  EXPECT_EQ((*list)[0].result, "sandbox failed to start: no room");
}

TEST_F(SessionServiceTest, SuspendFreezesTheSandboxAndOnlyARunningSessionCanBeSuspended) {
  store::Session s = Create();
  auto suspended = Run(service_->SetSuspended(s.id, store::SuspendTier::kPaused));
  ASSERT_TRUE(suspended) << suspended.error().message;
  EXPECT_EQ(suspended->state, SessionState::kSuspended);
  EXPECT_EQ(backend_->StateOf(s.id), "paused");
  auto twice = Run(service_->SetSuspended(s.id, store::SuspendTier::kPaused));
  ASSERT_FALSE(twice);
  EXPECT_EQ(twice.error().code, ErrorCode::kConflict);
  EXPECT_EQ(twice.error().message, "cannot suspend a session that is suspended");
  auto resumed = Run(service_->SetSuspended(s.id, store::SuspendTier::kActive));
  ASSERT_TRUE(resumed);
  EXPECT_EQ(resumed->state, SessionState::kRunning);
  EXPECT_EQ(backend_->StateOf(s.id), "running");
}

// The session object tells the tier and since when; both tiers are left by a resume.
TEST_F(SessionServiceTest, ASessionIsPausedThenHibernatedAndTheTierIsStored) {
  backend_->hibernate = true;
  store::Session s = Create();
  EXPECT_EQ(s.tier, store::SuspendTier::kActive);
  auto paused = Run(service_->SetSuspended(s.id, store::SuspendTier::kPaused));
  ASSERT_TRUE(paused) << paused.error().message;
  EXPECT_EQ(paused->state, SessionState::kSuspended);
  EXPECT_EQ(paused->tier, store::SuspendTier::kPaused);
  auto hibernated = Run(service_->SetSuspended(s.id, store::SuspendTier::kHibernated));
  ASSERT_TRUE(hibernated) << hibernated.error().message;
  EXPECT_EQ(hibernated->state, SessionState::kSuspended);
  EXPECT_EQ(hibernated->tier, store::SuspendTier::kHibernated);
  EXPECT_GE(hibernated->state_since, paused->state_since);
  EXPECT_EQ(backend_->StateOf(s.id), "hibernated");
  EXPECT_EQ(hibernated->sandbox_handle, "fake:" + s.id) << "the same sandbox, on disk";
  // Hibernated is below paused: no way back down, and not twice.
  for (auto tier : {store::SuspendTier::kPaused, store::SuspendTier::kHibernated}) {
    auto refused = Run(service_->SetSuspended(s.id, tier));
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, ErrorCode::kConflict);
    EXPECT_NE(refused.error().message.find("a session that is hibernated"), std::string::npos)
        << refused.error().message;
  }
  auto woke = Run(service_->PostMessage(s.id, "wake up"));
  ASSERT_TRUE(woke) << woke.error().message;
  store::Session now = Stored(s.id);
  EXPECT_EQ(now.state, SessionState::kRunning);
  EXPECT_EQ(now.tier, store::SuspendTier::kActive);
  EXPECT_EQ(backend_->StateOf(s.id), "running");
  EXPECT_EQ(backend_->tokens.size(), 1u) << "woken from its snapshot, not started again";
}

// A backend that cannot keep a sandbox on disk lets it go: nothing of it is left, its token
// is revoked, and the next message starts a fresh sandbox with a new token, which does not
// count as a restart of a sandbox that died.
TEST_F(SessionServiceTest, HibernatingWithoutSnapshotsLetsTheSandboxGoAndAMessageStartsAFreshOne) {
  store::Session s = Create();
  const std::string first_token = backend_->tokens[s.id];
  auto hibernated = Run(service_->SetSuspended(s.id, store::SuspendTier::kHibernated));
  ASSERT_TRUE(hibernated) << hibernated.error().message;
  EXPECT_EQ(hibernated->state, SessionState::kSuspended);
  EXPECT_EQ(hibernated->tier, store::SuspendTier::kHibernated);
  EXPECT_EQ(hibernated->sandbox_handle, "");
  EXPECT_EQ(hibernated->token_hash, "") << "no sandbox holds the token any more";
  EXPECT_EQ(backend_->StateOf(s.id), "destroyed");
  // The old sandbox's token opens nothing now.
  auto old_poll = Run(service_->WaitForInbox(s, 0));
  EXPECT_FALSE(old_poll);
  // max_restarts is 1 here: two wakes would end the session if they counted.
  for (int round = 0; round < 2; ++round) {
    auto woke = Run(service_->PostMessage(s.id, "wake up"));
    ASSERT_TRUE(woke) << woke.error().message;
    store::Session now = Stored(s.id);
    ASSERT_EQ(now.state, SessionState::kRunning) << now.result.value_or("");
    EXPECT_EQ(now.tier, store::SuspendTier::kActive);
    EXPECT_EQ(backend_->StateOf(s.id), "running");
    EXPECT_NE(backend_->tokens[s.id], first_token);
    EXPECT_FALSE(now.token_hash.empty());
    // The fresh agent finds the messages it has not seen.
    auto msgs = Run(service_->WaitForInbox(now, 0));
    ASSERT_TRUE(msgs) << msgs.error().message;
    EXPECT_FALSE(msgs->empty());
    ASSERT_TRUE(Run(service_->SetSuspended(s.id, store::SuspendTier::kHibernated)));
  }
}

TEST_F(SessionServiceTest, AnotherReplicasSessionIsNotSuspendedHere) {
  store::Session s = Create();
  config_.node = "node-b";
  auto refused = Run(service_->SetSuspended(s.id, store::SuspendTier::kPaused));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kConflict);
  EXPECT_EQ(refused.error().message,
            "the session's sandbox runs on replica \"node-a\"; send the suspend there");
}

TEST_F(SessionServiceTest, AMessageToASuspendedSessionResumesIt) {
  store::Session s = Create();
  ASSERT_TRUE(Run(service_->SetSuspended(s.id, store::SuspendTier::kPaused)));
  auto posted = Run(service_->PostMessage(s.id, "one more thing"));
  ASSERT_TRUE(posted) << posted.error().message;
  EXPECT_GT(*posted, 0);
  EXPECT_EQ(Stored(s.id).state, SessionState::kRunning);
  EXPECT_EQ(backend_->StateOf(s.id), "running");
  auto msgs = Run(service_->WaitForInbox(s, 0));
  ASSERT_TRUE(msgs);
  ASSERT_EQ(msgs->size(), 2u);
  EXPECT_EQ((*msgs)[1].body["content"], "one more thing");
}

TEST_F(SessionServiceTest, CancelKillsTheSessionAndIsIdempotent) {
  store::Session s = Create();
  auto killed = Run(service_->Cancel(s.id));
  ASSERT_TRUE(killed) << killed.error().message;
  EXPECT_EQ(killed->state, SessionState::kKilled);
  EXPECT_EQ(killed->result, "killed by the operator");
  EXPECT_EQ(backend_->StateOf(s.id), "destroyed");
  EXPECT_TRUE(channels_.open.empty());
  auto again = Run(service_->Cancel(s.id));
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_EQ(again->state, SessionState::kKilled);
  auto unknown = Run(service_->Cancel("ses_aaaaaaaaaaaaaaaaaaaaaaaa"));
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().code, ErrorCode::kNotFound);
}

TEST_F(SessionServiceTest, FinishEndsTheSessionWithTheAgentsResultAndRevokesItsToken) {
  store::Session s = Create();
  auto done = Run(
      service_->Finish(s.id, s.token_hash, FinishRequest{SessionState::kSucceeded, "42 files"}));
  ASSERT_TRUE(done) << done.error().message;
  EXPECT_EQ(done->state, SessionState::kSucceeded);
  EXPECT_EQ(done->result, "42 files");
  EXPECT_EQ(done->token_hash, "");
  EXPECT_EQ(backend_->StateOf(s.id), "destroyed");
  auto late =
      Run(service_->Finish(s.id, s.token_hash, FinishRequest{SessionState::kFailed, std::nullopt}));
  ASSERT_FALSE(late);
  EXPECT_EQ(late.error().code, ErrorCode::kConflict);
}

// A sandbox that was replaced (its token with it) cannot end the session its successor runs.
TEST_F(SessionServiceTest, FinishWithAReplacedTokenIsRefusedAndTheSessionRunsOn) {
  store::Session s = Create();
  ASSERT_TRUE(backend_->Destroy("fake:" + s.id));
  Run(service_->CheckSandbox(Stored(s.id)));
  ASSERT_NE(Stored(s.id).token_hash, s.token_hash);
  auto stale = Run(service_->Finish(
      s.id, s.token_hash, FinishRequest{SessionState::kSucceeded, "from the old sandbox"}));
  ASSERT_FALSE(stale);
  EXPECT_EQ(stale.error().code, ErrorCode::kUnauthenticated);
  store::Session now = Stored(s.id);
  EXPECT_EQ(now.state, SessionState::kRunning);
  EXPECT_FALSE(now.result.has_value());
  EXPECT_EQ(backend_->StateOf(s.id), "running");
}

TEST_F(SessionServiceTest, AVanishedSandboxIsReplacedWithAFreshTokenUntilMaxRestarts) {
  store::Session s = Create();
  std::string first_token = backend_->tokens[s.id];
  ASSERT_TRUE(backend_->Destroy("fake:" + s.id));
  Run(service_->CheckSandbox(Stored(s.id)));
  store::Session restarted = Stored(s.id);
  EXPECT_EQ(restarted.state, SessionState::kRunning);
  EXPECT_EQ(backend_->StateOf(s.id), "running");
  EXPECT_NE(backend_->tokens[s.id], first_token);
  EXPECT_NE(restarted.token_hash, s.token_hash);
  // sandbox.max_restarts = 1: the second loss fails the session.
  ASSERT_TRUE(backend_->Destroy("fake:" + s.id));
  Run(service_->CheckSandbox(Stored(s.id)));
  store::Session failed = Stored(s.id);
  EXPECT_EQ(failed.state, SessionState::kFailed);
  EXPECT_EQ(failed.result,
            "the sandbox disappeared (no fresh sandbox: sandbox.max_restarts = 1 reached)");
}

TEST_F(SessionServiceTest, AnAgentThatExitedOnItsOwnFailsItsSessionWithItsExitCode) {
  store::Session s = Create();
  service_->NoteAgentExit(s.id, Json{{"exit_code", 3}});
  backend_->Exit(s.id);
  Run(service_->CheckSandbox(Stored(s.id)));
  store::Session failed = Stored(s.id);
  EXPECT_EQ(failed.state, SessionState::kFailed);
  EXPECT_EQ(failed.result, "the agent exited with code 3 without finishing");
}

TEST_F(SessionServiceTest, AWaitingAgentIsIdleUntilItDoesSomethingElse) {
  store::Session s = Create();
  ASSERT_TRUE(Run(service_->WaitForInbox(s, 0)));  // the task
  EXPECT_FALSE(service_->IdleSince(s.id));
  // A one-second wait parks the poll: idle since the clock's now while it is parked.
  std::optional<int64_t> seen;
  asio::steady_timer look(io_);
  look.expires_after(std::chrono::milliseconds(100));
  look.async_wait([&](boost::system::error_code) { seen = service_->IdleSince(s.id); });
  auto empty = Run(service_->WaitForInbox(s, 1));
  ASSERT_TRUE(empty);
  EXPECT_TRUE(empty->empty());
  EXPECT_EQ(seen, 1'000'000);
  // Not parked any more: not idle, whatever it did before.
  EXPECT_FALSE(service_->IdleSince(s.id));
}

}  // namespace
}  // namespace airlock::controlplane
