// The oci backend against the real crun (or runc) on this host, with a rootfs made of
// busybox in a temp dir. Needs root; skips with the reason elsewhere.
#include "sandbox/backend_oci.h"

#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "common/crypto.h"
#include "common/json_util.h"
#include "sandbox/backend_test_support.h"
#include "sandbox/subprocess.h"

namespace airlock::sandbox {
namespace {

namespace fs = std::filesystem;

std::string SkipReason() {
  if (::geteuid() != 0) return "needs root (cgroup limits, the agent's user)";
  if (FindExecutable("crun").empty())
    return "crun is not installed (scripts/install-deps.sh installs it)";
  if (::access("/bin/busybox", X_OK) != 0) return "busybox-static is not installed";
  return {};
}

class OciBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto why = SkipReason(); !why.empty()) GTEST_SKIP() << why;
    char tmpl[] = "/tmp/airlock-oci-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    rootfs_ = dir_ + "/rootfs";
    MakeBusyboxRootfs(
        rootfs_, {"sh", "echo", "id", "sleep", "cat", "date", "ls", "head", "wc", "touch", "stat"});
    backend_ = Make();
  }
  void TearDown() override {
    for (const auto& h : handles_) {
      if (backend_) (void)backend_->Destroy(h);
    }
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  std::unique_ptr<Backend> Make() {
    OciOptions o;
    o.state_dir = dir_ + "/state";
    o.init_path = init_path_;
    o.uid_range_start = range_start_;
    o.uid_range_size = range_size_;
    o.resolve_image = [this](const std::string& name) -> Result<OciImage> {
      if (name != "busybox") return Errorf(ErrorCode::kNotFound, "no image {}", name);
      OciImage img;
      img.rootfs = rootfs_;
      img.entrypoint = {"/bin/sh", "-c", "echo from the entrypoint"};
      return img;
    };
    auto b = MakeOciBackend(o);
    EXPECT_TRUE(b.has_value()) << b.error().message;
    return b ? std::move(*b) : nullptr;
  }

  std::string Create(Json command, Json limits = Json::object(),
                     const std::string& image = "busybox") {
    static int n = 0;
    SandboxSpec spec;
    spec.sandbox_id = fmt::format("ses_test{}{}", ::getpid(), ++n);
    spec.channel.host_dir = dir_ + "/run-" + spec.sandbox_id;
    spec.work_dir = dir_ + "/work-" + spec.sandbox_id;
    fs::create_directories(spec.channel.host_dir);
    fs::create_directories(spec.work_dir);
    token_ = NewToken("ast_").Reveal();
    control_sockets_.push_back(std::make_unique<FakeControlSocket>(
        spec.channel.host_dir,
        fmt::format(R"({{"session_id":"{}","token":"{}"}})", spec.sandbox_id, token_)));
    spec.image.name = image;
    for (const auto& a : command) spec.command.argv.push_back(a.get<std::string>());
    if (auto m = limits.find("memory_mb"); m != limits.end()) spec.limits.memory_mb = *m;
    if (auto p = limits.find("pids"); p != limits.end()) spec.limits.pids = *p;
    auto h = backend_->Create(spec);
    EXPECT_TRUE(h.has_value()) << h.error().message;
    if (!h) return {};
    handles_.push_back(h->handle);
    return h->handle;
  }

  SandboxStatus WaitFor(const std::string& h, SandboxState want, int timeout_ms = 20000) {
    return WaitForState(*backend_, h, want, timeout_ms, 20);
  }

  std::string Log(const std::string& h) { return SandboxLog(*backend_, h); }

  std::string dir_, rootfs_;
  std::string token_;  // the token the last Create's sandbox was handed
  std::string init_path_ = AIRLOCK_INIT_BIN;
  uint32_t range_start_ = 2147000000;
  uint32_t range_size_ = 65536;
  std::unique_ptr<Backend> backend_;
  std::vector<std::string> handles_;
  std::vector<std::unique_ptr<FakeControlSocket>> control_sockets_;
};

// The uid the agent of `h` printed with `id -u` as its log's second line.
uint32_t UidLine(const std::string& log) {
  std::istringstream in(log);
  std::string line;
  std::getline(in, line);
  std::getline(in, line);
  return static_cast<uint32_t>(std::strtoul(line.c_str(), nullptr, 10));
}

TEST_F(OciBackendTest, RunsTheCommandAsTheAgentUserAndCapturesItsOutput) {
  std::string h =
      Create({"/bin/sh", "-c", "echo hello from the sandbox; id -u; echo to stderr >&2"});
  ASSERT_FALSE(h.empty());
  auto st = WaitFor(h, SandboxState::kExited);
  std::string log = Log(h);
  EXPECT_NE(log.find("hello from the sandbox"), std::string::npos) << log;
  // A uid of the default range, which no host account has.
  EXPECT_GE(UidLine(log), 2147000000u) << log;
  EXPECT_LT(UidLine(log), 2147000000u + 65536u) << log;
  EXPECT_NE(log.find("to stderr"), std::string::npos) << log;
  EXPECT_FALSE(st.oom_killed);
  // Logs from an offset.
  auto tail = backend_->Logs(h, 6, 1 << 20);
  ASSERT_TRUE(tail.has_value());
  EXPECT_EQ(*tail, log.substr(6));
}

// The sandbox starts knowing nothing of its session: the token is in neither its bundle nor
// init's environment, read from the host while it runs, yet the agent gets it.
TEST_F(OciBackendTest, TheTokenIsNeitherInTheBundleNorInInitsEnvironment) {
  std::string h = Create({"/bin/sh", "-c", "echo \"token=$SESSION_TOKEN\"; exec sleep 600"});
  ASSERT_FALSE(h.empty());
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (Log(h).find("token=") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_NE(Log(h).find("token=" + token_ + "\n"), std::string::npos) << Log(h);
  std::string id = h.substr(0, h.find(':'));
  std::string work = h.substr(h.find(':') + 1);
  std::ifstream config(work + "/bundle/config.json");
  std::string spec((std::istreambuf_iterator<char>(config)), std::istreambuf_iterator<char>());
  ASSERT_FALSE(spec.empty());
  EXPECT_EQ(spec.find(token_), std::string::npos);
  EXPECT_EQ(spec.find("SESSION_TOKEN="), std::string::npos);  // the agent's argv names it
  auto state = RunCommand({"crun", "--root", dir_ + "/state", "state", id},
                          {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"});
  ASSERT_TRUE(state);
  auto pid = ParseJson(state->output);
  ASSERT_TRUE(pid && pid->contains("pid")) << state->output;
  std::ifstream environ(fmt::format("/proc/{}/environ", (*pid)["pid"].get<int>()));
  std::string env((std::istreambuf_iterator<char>(environ)), std::istreambuf_iterator<char>());
  EXPECT_EQ(env.find(token_), std::string::npos);
  EXPECT_EQ(env.find("SESSION_TOKEN"), std::string::npos);
}

TEST_F(OciBackendTest, TheImageEntrypointRunsWhenNoCommandIsGiven) {
  std::string h = Create(Json::array());
  WaitFor(h, SandboxState::kExited);
  EXPECT_NE(Log(h).find("from the entrypoint"), std::string::npos) << Log(h);
}

TEST_F(OciBackendTest, SuspendFreezesAndResumeThaws) {
  std::string h = Create({"/bin/sh", "-c", "while true; do echo tick; sleep 0.05; done"});
  ASSERT_FALSE(h.empty());
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (Log(h).find("tick") == std::string::npos && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(backend_->Suspend(h).has_value());
  EXPECT_EQ(backend_->Inspect(h)->state, SandboxState::kPaused);
  size_t frozen = Log(h).size();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(Log(h).size(), frozen) << "a frozen sandbox wrote output";
  ASSERT_TRUE(backend_->Resume(h).has_value());
  EXPECT_EQ(backend_->Inspect(h)->state, SandboxState::kRunning);
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (Log(h).size() == frozen && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_GT(Log(h).size(), frozen);
}

TEST_F(OciBackendTest, DestroyKillsRemovesTheBundleAndIsIdempotent) {
  std::string h = Create({"/bin/sleep", "600"});
  ASSERT_FALSE(h.empty());
  WaitFor(h, SandboxState::kRunning);
  std::string work = h.substr(h.find(':') + 1);
  EXPECT_TRUE(fs::exists(work + "/bundle/config.json"));
  EXPECT_EQ(fs::status(work + "/bundle/config.json").permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  ASSERT_TRUE(backend_->Destroy(h).has_value());
  EXPECT_EQ(backend_->Inspect(h)->state, SandboxState::kMissing);
  EXPECT_FALSE(fs::exists(work + "/bundle")) << "the bundle holds the token and must go";
  EXPECT_TRUE(backend_->Destroy(h).has_value());
}

TEST_F(OciBackendTest, DestroyingASuspendedSandboxLeavesNoProcess) {
  std::string h = Create({"/bin/sh", "-c", "while true; do echo tick; sleep 0.05; done"});
  ASSERT_FALSE(h.empty());
  WaitFor(h, SandboxState::kRunning);
  std::string id = h.substr(0, h.find(':'));
  auto pid_of = [&]() -> pid_t {
    auto r = RunCommand({"crun", "--root", dir_ + "/state", "state", id},
                        {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"});
    auto j = r ? ParseJson(r->output) : Result<Json>(Json());
    return j && j->is_object() ? j->value("pid", 0) : 0;
  };
  pid_t pid = pid_of();
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(backend_->Suspend(h).has_value());
  ASSERT_TRUE(backend_->Destroy(h).has_value());
  EXPECT_EQ(backend_->Inspect(h)->state, SandboxState::kMissing);
  // The sandbox's init is gone (or a zombie waiting for the host's PID 1 to reap it).
  bool alive = true;
  for (int i = 0; i < 200 && alive; ++i) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    std::getline(stat, line);
    size_t close = line.rfind(')');
    alive = !line.empty() && close != std::string::npos && close + 2 < line.size() &&
            line[close + 2] != 'Z';
    if (alive) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_FALSE(alive) << "a destroyed suspended sandbox left its processes running";
}

TEST_F(OciBackendTest, ASecondBackendInstanceReattachesToARunningSandbox) {
  std::string h = Create({"/bin/sleep", "600"});
  ASSERT_FALSE(h.empty());
  WaitFor(h, SandboxState::kRunning);
  backend_.reset();  // the control plane went away; the sandbox did not
  backend_ = Make();
  auto st = backend_->Reattach(h);
  ASSERT_TRUE(st.has_value()) << st.error().message;
  EXPECT_EQ(st->state, SandboxState::kRunning);
}

TEST_F(OciBackendTest, EachLiveSandboxHasItsOwnUidWithANameAndItsOwnFiles) {
  std::string a =
      Create({"/bin/sh", "-c",
              "id -un; id -u; touch /tmp/f $HOME/f; stat -c %u /tmp/f $HOME/f; sleep 600"});
  std::string b = Create({"/bin/sh", "-c", "id -un; id -u; sleep 600"});
  ASSERT_FALSE(a.empty() || b.empty());
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while ((Log(a).size() < 40 || Log(b).size() < 20) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::string la = Log(a), lb = Log(b);
  uint32_t ua = UidLine(la), ub = UidLine(lb);
  EXPECT_NE(ua, ub) << la << lb;
  EXPECT_TRUE(la.starts_with("sandbox\n")) << "the uid has a name inside: " << la;
  // The files the agent makes in /tmp and its home are its own.
  EXPECT_NE(la.find(fmt::format("\n{}\n{}\n", ua, ua)), std::string::npos) << la;
  // Destroyed, a's uid may go to a later sandbox; b's may not while b lives.
  ASSERT_TRUE(backend_->Destroy(a).has_value());
  std::string c = Create({"/bin/sh", "-c", "id -un; id -u; sleep 600"});
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (Log(c).size() < 20 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_NE(UidLine(Log(c)), ub) << Log(c);
}

TEST_F(OciBackendTest, ARestartedBackendKeepsTheUidsOfSandboxesNotYetDestroyed) {
  // A range of two, and a sandbox that exited but was not destroyed: no process shows its
  // uid any more, only its bundle does. A restarted backend must read it back from there.
  range_start_ = 2147480000 + static_cast<uint32_t>(::getpid() % 1000) * 2;
  range_size_ = 2;
  backend_ = Make();
  std::string a = Create({"/bin/sh", "-c", "id -un; id -u"});
  ASSERT_FALSE(a.empty());
  WaitFor(a, SandboxState::kExited);
  uint32_t ua = UidLine(Log(a));
  backend_.reset();  // the control plane restarts
  backend_ = Make();
  std::string b = Create({"/bin/sh", "-c", "id -un; id -u"});
  ASSERT_FALSE(b.empty());
  WaitFor(b, SandboxState::kExited);
  EXPECT_NE(UidLine(Log(b)), ua) << Log(b);
  SandboxSpec spec;
  spec.sandbox_id = "ses_third";
  spec.work_dir = dir_ + "/work-third";
  spec.channel.host_dir = dir_;
  spec.image.name = "busybox";
  fs::create_directories(spec.work_dir);
  auto c = backend_->Create(spec);
  ASSERT_FALSE(c.has_value()) << "both uids are held: " << c->handle;
  EXPECT_NE(c.error().message.find("no free sandbox uid"), std::string::npos) << c.error().message;
  auto probe = backend_->Probe();  // the readiness probe sees it too
  ASSERT_FALSE(probe.has_value());
  EXPECT_NE(probe.error().message.find("every uid"), std::string::npos) << probe.error().message;
  // Destroying a gives its uid back.
  ASSERT_TRUE(backend_->Destroy(a).has_value());
  EXPECT_TRUE(backend_->Probe().has_value());
  c = backend_->Create(spec);
  ASSERT_TRUE(c.has_value()) << c.error().message;
  handles_.push_back(c->handle);
}

TEST_F(OciBackendTest, ProbeSaysWhatCreateWouldMissWithoutCreatingASandbox) {
  init_path_ = dir_ + "/airlock-init";
  fs::copy_file(AIRLOCK_INIT_BIN, init_path_);
  backend_ = Make();
  ASSERT_TRUE(backend_);
  auto ok = backend_->Probe();
  EXPECT_TRUE(ok.has_value()) << ok.error().message;
  // airlock-init loses its execute bit (a broken upgrade): the probe names it.
  fs::permissions(init_path_, fs::perms::owner_read | fs::perms::owner_write);
  auto broken = backend_->Probe();
  ASSERT_FALSE(broken.has_value());
  EXPECT_EQ(broken.error().code, ErrorCode::kUnavailable);
  EXPECT_NE(broken.error().message.find(init_path_), std::string::npos) << broken.error().message;
  fs::permissions(init_path_, fs::perms::owner_all);
  EXPECT_TRUE(backend_->Probe().has_value());
  EXPECT_TRUE(fs::is_empty(dir_ + "/state"));  // the runtime was never asked for a container
}

TEST_F(OciBackendTest, AnAgentUidOfAHostAccountIsRefused) {
  OciOptions o;
  o.state_dir = dir_ + "/state2";
  o.init_path = AIRLOCK_INIT_BIN;
  o.agent_uid = 0;
  o.uid_range_start = 0;  // root's
  auto r = MakeOciBackend(o);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("root"), std::string::npos) << r.error().message;
  o.uid_range_start = 2147000000;
  passwd* pw = ::getpwnam("nobody");
  if (!pw) GTEST_SKIP() << "no account \"nobody\" on this host";
  o.agent_uid = pw->pw_uid;
  r = MakeOciBackend(o);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("sandbox.oci.agent_uid"), std::string::npos)
      << r.error().message;
  EXPECT_NE(r.error().message.find("nobody"), std::string::npos) << r.error().message;
}

TEST_F(OciBackendTest, InspectAgreesWithTheRuntime) {
  // Inspect reads the sandbox's cgroup instead of running `crun state`; both must agree.
  std::string h = Create({"/bin/sleep", "600"});
  ASSERT_FALSE(h.empty());
  WaitFor(h, SandboxState::kRunning);
  std::string id = h.substr(0, h.find(':'));
  auto runtime_status = [&] {
    auto r = RunCommand({"crun", "--root", dir_ + "/state", "state", id},
                        {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"});
    return r ? r->output : std::string();
  };
  EXPECT_NE(runtime_status().find("\"running\""), std::string::npos);
  ASSERT_TRUE(backend_->Suspend(h).has_value());
  EXPECT_EQ(backend_->Inspect(h)->state, SandboxState::kPaused);
  EXPECT_NE(runtime_status().find("\"paused\""), std::string::npos);
  ASSERT_TRUE(backend_->Resume(h).has_value());
  EXPECT_EQ(backend_->Inspect(h)->state, SandboxState::kRunning);
  ASSERT_TRUE(RunCommand({"crun", "--root", dir_ + "/state", "kill", id, "KILL"},
                         {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}));
  WaitFor(h, SandboxState::kExited);
  EXPECT_NE(runtime_status().find("\"stopped\""), std::string::npos);
}

TEST_F(OciBackendTest, CgroupLimitsAreApplied) {
  std::string h = Create(
      {"/bin/sh", "-c",
       "cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null "
       "|| cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/memory.max"},
      {{"memory_mb", 48}, {"pids", 33}});
  WaitFor(h, SandboxState::kExited);
  std::string log = Log(h);
  EXPECT_NE(log.find("33\n"), std::string::npos) << log;
  EXPECT_NE(log.find(std::to_string(48 << 20)), std::string::npos) << log;
}

TEST_F(OciBackendTest, ErrorsAreClear) {
  SandboxSpec spec;
  spec.sandbox_id = "ses_bad";
  spec.work_dir = dir_ + "/work-bad";
  spec.channel.host_dir = dir_;
  spec.image.name = "no-such-image";
  auto r = backend_->Create(spec);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("no-such-image"), std::string::npos);
  spec.image.name = "busybox";
  spec.command.argv = {"/bin/does-not-exist"};
  fs::create_directories(spec.work_dir);
  spec.channel.host_dir = dir_ + "/run-bad";
  fs::create_directories(spec.channel.host_dir);
  control_sockets_.push_back(std::make_unique<FakeControlSocket>(
      spec.channel.host_dir, R"({"session_id":"ses_bad","token":"ast_bad"})"));
  auto h = backend_->Create(spec);
  if (h) {
    handles_.push_back(h->handle);
    WaitFor(h->handle, SandboxState::kExited);
  }
  EXPECT_EQ(backend_->Inspect("garbage").error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(backend_->Inspect("airlock-ses_gone:/tmp/nowhere")->state, SandboxState::kMissing);
}

}  // namespace
}  // namespace airlock::sandbox
