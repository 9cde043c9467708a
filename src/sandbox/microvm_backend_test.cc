// The microvm backend against the real QEMU and Debian's cloud kernel on this host (under TCG
// where KVM cannot boot Linux), with an image made of busybox in a temp dir. Skips with the
// reason where QEMU, mkfs.erofs or the guest kernel (scripts/guest-kernel.sh) are missing.
#include "sandbox/backend_microvm.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "common/crypto.h"
#include "common/json_util.h"
#include "sandbox/backend_test_support.h"
#include "sandbox/cgroups.h"

namespace airlock::sandbox {
namespace {

namespace fs = std::filesystem;

MicrovmOptions BaseOptions() {
  MicrovmOptions o;
  o.kernel_dir = DefaultGuestKernelDir();
  o.init_path = AIRLOCK_INIT_BIN;
  return o;
}

std::string ReadFileOr(const std::string& path) {
  std::ifstream f(path);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

class MicrovmBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto why = MicrovmUnavailableReason(BaseOptions()); !why.empty()) GTEST_SKIP() << why;
    if (::access("/bin/busybox", X_OK) != 0) GTEST_SKIP() << "busybox-static is not installed";
    char tmpl[] = "/tmp/airlock-vm-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    rootfs_ = dir_ + "/rootfs";
    MakeBusyboxRootfs(rootfs_, {"sh", "echo", "id", "sleep", "cat", "ls", "head", "wget", "tr",
                                "grep", "mount", "ip", "nc", "cut", "od", "date"});
    backend_ = Make();
  }
  void TearDown() override {
    for (const auto& h : handles_) {
      if (backend_) (void)backend_->Destroy(h);
    }
    backend_.reset();  // and its spare QEMUs, before their files go
    control_sockets_.clear();
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  std::unique_ptr<Backend> Make() {
    MicrovmOptions o = BaseOptions();
    o.cache_dir = dir_ + "/cache";
    o.state_dir = dir_ + "/state";
    o.templates = templates_;
    o.spare_qemus = spare_qemus_;
    o.resolve_image = [this](const std::string& name) -> Result<OciImage> {
      if (name == "host") {
        OciImage img;
        img.rootfs = rootfs_;
        img.host_binds = {"/usr"};
        return img;
      }
      if (name != "busybox") return Errorf(ErrorCode::kNotFound, "no image {}", name);
      OciImage img;
      img.rootfs = rootfs_;
      img.entrypoint = {"/bin/sh", "-c", "echo from the entrypoint"};
      return img;
    };
    auto b = MakeMicrovmBackend(o);
    EXPECT_TRUE(b.has_value()) << b.error().message;
    return b ? std::move(*b) : nullptr;
  }

  Result<Started> TryCreate(std::vector<std::string> command, Limits limits = {},
                            const std::string& image = "busybox") {
    static int n = 0;
    SandboxSpec spec;
    spec.sandbox_id = fmt::format("ses_vm{}{}", ::getpid(), ++n);
    spec.channel.kind = Channel::Kind::kVirtioPort;
    spec.channel.host_dir = dir_ + "/run-" + spec.sandbox_id;
    spec.work_dir = dir_ + "/work-" + spec.sandbox_id;
    fs::create_directories(spec.channel.host_dir);
    fs::create_directories(spec.work_dir);
    if (!prior_log_.empty()) std::ofstream(spec.work_dir + "/sandbox.log") << prior_log_;
    session_id_ = spec.sandbox_id;
    token_ = NewToken("ast_").Reveal();
    control_sockets_.push_back(std::make_unique<FakeControlSocket>(
        spec.channel.host_dir,
        fmt::format(R"({{"session_id":"{}","token":"{}"}})", spec.sandbox_id, token_)));
    spec.image.name = image;
    spec.command.argv = std::move(command);
    spec.limits = limits;
    auto started = backend_->Create(spec);
    if (started) handles_.push_back(started->handle);
    return started;
  }

  std::string Create(std::vector<std::string> command, Limits limits = {}) {
    auto started = TryCreate(std::move(command), limits);
    EXPECT_TRUE(started.has_value()) << started.error().message;
    return started ? started->handle : "";
  }

  // Under TCG a boot takes seconds: generous deadlines, which only bound a hang.
  SandboxStatus WaitFor(const std::string& h, SandboxState want, int timeout_ms = 90000) {
    return WaitForState(*backend_, h, want, timeout_ms, 50);
  }

  bool WaitForLog(const std::string& h, const std::string& text, int timeout_ms = 90000) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < deadline) {
      if (Log(h).find(text) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  std::string Log(const std::string& h) { return SandboxLog(*backend_, h); }

  bool templates_ = true;  // the default: sandboxes from template snapshots
  int64_t spare_qemus_ = 1;
  std::string prior_log_;  // what the next sandbox's log holds already (a sandbox made again)
  std::string dir_, rootfs_;
  std::string session_id_, token_;  // what the last Create's sandbox was handed
  std::unique_ptr<Backend> backend_;
  std::vector<std::string> handles_;
  std::vector<std::unique_ptr<FakeControlSocket>> control_sockets_;
};

// One boot shows the whole path: init as PID 1 sets the VM up, fetches the identity over the
// channel, runs the agent unprivileged with the three variables, the agent's request reaches
// the control plane's socket through the bridge and the multiplexer, its output reaches the
// log, and its exit code and init's report come back.
TEST_F(MicrovmBackendTest, RunsTheAgentAndItsRequestsCrossTheChannel) {
  std::string h = Create(
      {"/bin/sh", "-c",
       "echo \"uid=$(id -u) session=$SESSION_ID token=$SESSION_TOKEN url=$CONTROL_PLANE_URL\"; "
       "echo \"reply=$(wget -q -O- $CONTROL_PLANE_URL/echo/through-the-port)\"; "
       "echo \"nics=$(ls /sys/class/net | tr '\\n' ' ')\"; "
       "echo mine > $HOME/file && echo \"home=$(cat $HOME/file) cwd=$(pwd)\"; "
       "echo to stderr >&2; exit 7"});
  ASSERT_FALSE(h.empty());
  auto st = WaitFor(h, SandboxState::kExited);
  std::string log = Log(h);
  EXPECT_EQ(st.exit_code, 7) << st.detail << "\n" << log;
  EXPECT_FALSE(st.oom_killed);
  EXPECT_NE(log.find(fmt::format("uid=1000 session={} token={} url=http://127.0.0.1:7401",
                                 session_id_, token_)),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("reply=through-the-port"), std::string::npos) << log;
  // No network device but loopback: the port is the only way out.
  EXPECT_NE(log.find("nics=lo \n"), std::string::npos) << log;
  // The home is the agent's, and where it starts (the image names no working directory).
  EXPECT_NE(log.find("home=mine cwd=/home/sandbox\n"), std::string::npos) << log;
  EXPECT_NE(log.find("to stderr"), std::string::npos) << log;
  EXPECT_GE(control_sockets_.back()->events(), 1) << "init's exit report never arrived";
  // The token never sits in what the VM was started from.
  std::string work = h.substr(h.find(':') + 1);
  for (const auto& e : fs::recursive_directory_iterator(work)) {
    if (!e.is_regular_file()) continue;
    std::ifstream f(e.path(), std::ios::binary);
    std::string content((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (e.path().filename() == "sandbox.log") continue;  // the agent printed it on purpose
    EXPECT_EQ(content.find(token_), std::string::npos) << e.path();
  }
}

// Without templates every sandbox boots, with its launch in its initramfs.
TEST_F(MicrovmBackendTest, BootsWithoutATemplate) {
  templates_ = false;
  backend_ = Make();
  std::string h = Create(
      {"/bin/sh", "-c", "echo \"reply=$(wget -q -O- $CONTROL_PLANE_URL/echo/booted)\"; exit 3"});
  ASSERT_FALSE(h.empty());
  auto st = WaitFor(h, SandboxState::kExited);
  EXPECT_EQ(st.exit_code, 3) << st.detail << "\n" << Log(h);
  EXPECT_NE(Log(h).find("reply=booted"), std::string::npos) << Log(h);
  EXPECT_FALSE(fs::exists(dir_ + "/cache/tpl"));
}

// Two sandboxes restored from one template share nothing of it that matters: each has its
// own identity, the host's time (not the template's), and its own random numbers (the
// kernel's generator is reseeded at launch, or every clone would draw the same ones).
TEST_F(MicrovmBackendTest, SandboxesFromOneTemplateHaveTheirOwnIdentityClockAndRandomness) {
  const std::vector<std::string> command = {
      "/bin/sh", "-c",
      "echo \"rand=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n') "
      "time=$(date +%s) session=$SESSION_ID "
      "reply=$(wget -q -O- $CONTROL_PLANE_URL/echo/restored)\""};
  std::string a = Create(command);
  ASSERT_FALSE(a.empty());
  const std::string a_session = session_id_;
  EXPECT_EQ(WaitFor(a, SandboxState::kExited).exit_code, 0) << Log(a);
  int templates = 0;
  for (const auto& e : fs::directory_iterator(dir_ + "/cache/tpl")) {
    templates += fs::exists(e.path() / "snapshot") ? 1 : 0;
  }
  ASSERT_EQ(templates, 1) << "the first sandbox made the template";
  // Later than the template was saved: a clock left at the template's would show it.
  std::this_thread::sleep_for(std::chrono::seconds(3));
  std::string b = Create(command);
  ASSERT_FALSE(b.empty());
  EXPECT_EQ(WaitFor(b, SandboxState::kExited).exit_code, 0) << Log(b);
  const int64_t host_now = std::chrono::duration_cast<std::chrono::seconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count();
  auto field = [](const std::string& log, const std::string& key) {
    size_t at = log.find(key + "=");
    if (at == std::string::npos) return std::string();
    at += key.size() + 1;
    return log.substr(at, log.find_first_of(" \n", at) - at);
  };
  std::string la = Log(a), lb = Log(b);
  EXPECT_EQ(field(la, "session"), a_session) << la;
  EXPECT_EQ(field(lb, "session"), session_id_) << lb;
  EXPECT_EQ(field(la, "reply"), "restored") << la;
  EXPECT_EQ(field(lb, "reply"), "restored") << lb;
  ASSERT_EQ(field(la, "rand").size(), 32u) << la;
  ASSERT_EQ(field(lb, "rand").size(), 32u) << lb;
  EXPECT_NE(field(la, "rand"), field(lb, "rand"));
  // Each agent is the process the template had waiting (forked before it was saved, with
  // the options the backend sent): no launch needed a new one.
  for (const std::string& log : {la, lb}) {
    EXPECT_EQ(log.find("forking"), std::string::npos) << log;
  }
  // Within a few seconds of the host's clock (a boot takes seconds under TCG; the test's
  // own pauses are 3 s).
  EXPECT_NEAR(std::stoll("0" + field(lb, "time")), host_now, 30) << lb;
}

// A template is saved with its image mounted at the default limits (256 MiB of tmpfs, 256
// processes); a sandbox restored from it still has its session's own, and the agent's cgroup
// is read-only as after a boot.
TEST_F(MicrovmBackendTest, ASandboxFromATemplateHasItsSessionsLimits) {
  const std::vector<std::string> command = {
      "/bin/sh", "-c",
      "grep -E ' /(tmp|home/sandbox) ' /proc/mounts; "
      "echo pids=$(cat /sys/fs/cgroup/sandbox/pids.max); grep ' /sys/fs/cgroup ' /proc/mounts"};
  std::string a = Create(command);
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(WaitFor(a, SandboxState::kExited).exit_code, 0) << Log(a);
  Limits limits;
  limits.disk_mb = 64;
  limits.pids = 77;
  std::string b = Create(command, limits);
  ASSERT_FALSE(b.empty());
  EXPECT_EQ(WaitFor(b, SandboxState::kExited).exit_code, 0) << Log(b);
  // A boot writes the sandbox's own initramfs; a restore does not.
  EXPECT_FALSE(fs::exists(dir_ + "/work-" + session_id_ + "/vm/initrd"))
      << "the second sandbox was booted, not restored from the template";
  std::string la = Log(a), lb = Log(b);
  EXPECT_NE(la.find("pids=256"), std::string::npos) << la;
  EXPECT_NE(lb.find("pids=77"), std::string::npos) << lb;
  for (const std::string mount : {" /tmp tmpfs ", " /home/sandbox tmpfs "}) {
    size_t at = lb.find(mount);
    ASSERT_NE(at, std::string::npos) << mount << " in " << lb;
    EXPECT_NE(lb.substr(at, lb.find('\n', at) - at).find("size=65536k"), std::string::npos)
        << mount << " in " << lb;
    at = la.find(mount);
    ASSERT_NE(at, std::string::npos) << mount << " in " << la;
    EXPECT_NE(la.substr(at, la.find('\n', at) - at).find("size=262144k"), std::string::npos)
        << mount << " in " << la;
  }
  size_t cg = lb.find(" /sys/fs/cgroup cgroup2 ro,");
  EXPECT_NE(cg, std::string::npos) << lb;
}

TEST_F(MicrovmBackendTest, PausesResumesAndDestroys) {
  std::string h = Create({"/bin/sh", "-c", "echo started; exec sleep 600"});
  ASSERT_FALSE(h.empty());
  ASSERT_TRUE(WaitForLog(h, "started")) << Log(h);
  ASSERT_TRUE(backend_->Suspend(h).has_value());
  EXPECT_EQ(WaitFor(h, SandboxState::kPaused).state, SandboxState::kPaused);
  auto resumed = backend_->Resume(h);
  ASSERT_TRUE(resumed.has_value()) << resumed.error().message;
  EXPECT_EQ(*resumed, h);
  EXPECT_EQ(WaitFor(h, SandboxState::kRunning).state, SandboxState::kRunning);
  // A control plane that restarts finds the VM where it left it.
  auto again = Make();
  ASSERT_TRUE(again);
  auto reattached = again->Reattach(h);
  ASSERT_TRUE(reattached.has_value()) << reattached.error().message;
  EXPECT_EQ(reattached->state, SandboxState::kRunning);
  // What a restarted control plane sweeps: every VM not yet destroyed.
  auto listed = again->List();
  ASSERT_TRUE(listed.has_value());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].handle, h);
  EXPECT_EQ("airlock-vm-" + (*listed)[0].session_id, h.substr(0, h.find(':')));
  ASSERT_TRUE(backend_->Destroy(h).has_value());
  EXPECT_EQ(WaitFor(h, SandboxState::kMissing).state, SandboxState::kMissing);
  EXPECT_TRUE(again->List()->empty());
  EXPECT_TRUE(backend_->Destroy(h).has_value()) << "destroy is idempotent";
}

// Scale to zero: a hibernated VM has no QEMU and holds no memory, only a snapshot on disk,
// and a process inside it carries on where it stopped, its memory (the shell's counter)
// intact, and reaches the control plane again over a channel that came back. Its clock is
// the host's again, not behind by the time it slept.
TEST_F(MicrovmBackendTest, HibernatesToDiskAndWakesWithItsMemory) {
  // The first wget is in flight across the hibernation (the control plane never answers it)
  // and gives up after the wake, on a stream of the host mux that was there before; the
  // channel must go on working. (Whether the guest still holds that stream at the wake
  // depends on timing; mux_test's AHostNewToTheGuestResetsTheGuestsEarlierStreams covers the
  // case where it does.)
  std::string h = Create({"/bin/sh", "-c",
                          "(wget -q -T 8 -O- $CONTROL_PLANE_URL/hold; echo hold-done) & "
                          "i=0; while :; do i=$((i+1)); "
                          "echo \"tick $i $(wget -q -O- $CONTROL_PLANE_URL/echo/c$i)\"; "
                          "echo \"clock $i $(date +%s)\"; sleep 0.2; done"});
  ASSERT_FALSE(h.empty());
  ASSERT_TRUE(WaitForLog(h, "tick 3 c3\n")) << Log(h);
  const std::string vm = h.substr(h.find(':') + 1) + "/vm";
  std::string pid = ReadFileOr(vm + "/qemu.pid");
  ASSERT_FALSE(pid.empty());
  pid.erase(pid.find_last_not_of(" \n") + 1);

  auto hibernated = backend_->Hibernate(h);
  ASSERT_TRUE(hibernated.has_value()) << hibernated.error().message;
  // Gone, or a zombie that its new parent has yet to reap.
  std::string stat = ReadFileOr("/proc/" + pid + "/stat");
  EXPECT_TRUE(stat.empty() || stat.substr(stat.rfind(')') + 2, 1) == "Z") << "QEMU still runs";
  ASSERT_TRUE(fs::exists(vm + "/snapshot"));
  EXPECT_GT(fs::file_size(vm + "/snapshot"), 0u);
  auto st = backend_->Inspect(h);
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(st->state, SandboxState::kPaused);
  EXPECT_EQ(st->detail, "hibernated");
  EXPECT_TRUE(backend_->Hibernate(h).has_value()) << "hibernate is idempotent";
  // Nothing runs while it sleeps (long enough for a clock left behind to show).
  std::string asleep = Log(h);
  std::this_thread::sleep_for(std::chrono::seconds(4));
  EXPECT_EQ(Log(h), asleep);
  int last = 0;
  for (size_t at = 0; (at = asleep.find("tick ", at)) != std::string::npos; at += 5) {
    last = std::atoi(asleep.c_str() + at + 5);
  }
  ASSERT_GE(last, 3);

  // A control plane that restarts meanwhile finds it hibernated, and wakes it.
  backend_ = Make();
  ASSERT_TRUE(backend_);
  auto reattached = backend_->Reattach(h);
  ASSERT_TRUE(reattached.has_value()) << reattached.error().message;
  EXPECT_EQ(reattached->detail, "hibernated");
  auto resumed = backend_->Resume(h);
  ASSERT_TRUE(resumed.has_value()) << resumed.error().message;
  EXPECT_EQ(*resumed, h);
  EXPECT_FALSE(fs::exists(vm + "/snapshot")) << "the snapshot goes once QEMU holds the guest";
  const int later = last + 3;
  ASSERT_TRUE(WaitForLog(h, fmt::format("tick {} c{}\n", later, later))) << Log(h);
  std::string log = Log(h);
  EXPECT_EQ(log.find("tick 1 "), log.rfind("tick 1 ")) << "the counter started again:\n" << log;
  const std::string clock_line = fmt::format("clock {} ", later);
  ASSERT_TRUE(WaitForLog(h, clock_line)) << Log(h);
  log = Log(h);
  const long guest_time = std::atol(log.c_str() + log.find(clock_line) + clock_line.size());
  const long host_time = static_cast<long>(::time(nullptr));
  EXPECT_LE(guest_time, host_time + 1);
  EXPECT_GE(guest_time, host_time - 2) << "the guest's clock is behind by the time it slept";
  EXPECT_EQ(WaitFor(h, SandboxState::kRunning).state, SandboxState::kRunning);
  // The stale stream was written on after the wake, and the channel still works.
  ASSERT_TRUE(WaitForLog(h, "hold-done\n")) << Log(h);
  log = Log(h);
  int at_done = 0;
  for (size_t at = 0; (at = log.find("tick ", at)) != std::string::npos; at += 5) {
    at_done = std::atoi(log.c_str() + at + 5);
  }
  ASSERT_TRUE(WaitForLog(h, fmt::format("tick {} c{}\n", at_done + 2, at_done + 2))) << Log(h);

  // Destroying a hibernated VM leaves nothing of it.
  ASSERT_TRUE(backend_->Hibernate(h).has_value());
  ASSERT_TRUE(backend_->Destroy(h).has_value());
  EXPECT_FALSE(fs::exists(vm));
  EXPECT_EQ(WaitFor(h, SandboxState::kMissing).state, SandboxState::kMissing);
}

// The memory cgroup file `name` of the QEMU of handle `h` ("" when the host has no memory
// controller).
std::string QemuCgroupFile(const std::string& h, const std::string& v1_name,
                           const std::string& v2_name) {
  CgroupLayout layout = DetectCgroups();
  std::string dir = MemoryCgroupDir(layout, "/airlock/" + h.substr(0, h.find(':')));
  if (dir.empty()) return {};
  return dir + "/" + (layout.v1_mounts.contains("memory") ? v1_name : v2_name);
}

pid_t QemuPid(const std::string& h) {
  return static_cast<pid_t>(
      std::atol(ReadFileOr(h.substr(h.find(':') + 1) + "/vm/qemu.pid").c_str()));
}

// Firecracker's jailer for QEMU (as root): each QEMU has a root of its own, read-only, with
// /usr, a few devices, its own VM's files and the files its command line names, and nothing
// else: no /etc, no /proc, no other VM, no cache of other images; and it is charged to a
// memory cgroup of the guest's RAM plus qemu_overhead_mb.
TEST_F(MicrovmBackendTest, QemuRunsInAMountNamespaceAndACgroupOfItsOwn) {
  if (::geteuid() != 0) GTEST_SKIP() << "QEMU is jailed only when the control plane is root";
  std::string a = Create({"/bin/sh", "-c", "echo started; exec sleep 600"});
  std::string b = Create({"/bin/sh", "-c", "echo started; exec sleep 600"});
  ASSERT_TRUE(WaitForLog(a, "started")) << Log(a);
  ASSERT_TRUE(WaitForLog(b, "started")) << Log(b);
  pid_t pid = QemuPid(a);
  ASSERT_GT(pid, 1);
  const std::string root = fmt::format("/proc/{}/root", pid);
  std::error_code ec;
  EXPECT_NE(fs::read_symlink(fmt::format("/proc/{}/ns/mnt", pid), ec),
            fs::read_symlink("/proc/self/ns/mnt", ec));
  const std::string dir_a = a.substr(a.find(':') + 1), dir_b = b.substr(b.find(':') + 1);
  EXPECT_TRUE(fs::exists(root + dir_a + "/vm/qmp.sock")) << "its own files";
  EXPECT_TRUE(fs::exists(root + dir_a + "/sandbox.log")) << "its agent's log";
  EXPECT_TRUE(fs::exists(root + "/usr/lib")) << "QEMU's libraries";
  EXPECT_FALSE(fs::exists(root + dir_b)) << "another VM's files";
  EXPECT_FALSE(fs::exists(root + "/etc/passwd"));
  EXPECT_FALSE(fs::exists(root + "/proc/1"));
  EXPECT_FALSE(fs::exists(root + "/root"));
  EXPECT_FALSE(fs::exists(root + dir_ + "/cache/tpl")) << "templates";
  EXPECT_FALSE(fs::exists(root + dir_ + "/rootfs")) << "the image's tree";
  // Nothing can be planted in its root or its /usr, even by root.
  for (const std::string& where : {root + "/planted", root + "/usr/planted"}) {
    int fd = ::open(where.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    EXPECT_LT(fd, 0) << where;
    EXPECT_EQ(errno, EROFS) << where;
    if (fd >= 0) ::close(fd);
  }
  std::string limit = QemuCgroupFile(a, "memory.limit_in_bytes", "memory.max");
  if (limit.empty()) GTEST_SKIP() << "no memory cgroup controller on this host";
  EXPECT_NE(
      ReadFileOr(fmt::format("/proc/{}/cgroup", pid)).find("/airlock/" + a.substr(0, a.find(':'))),
      std::string::npos);
  EXPECT_EQ(std::atoll(ReadFileOr(limit).c_str()), (256 + 192) << 20) << limit;
  // The template both were restored from was made by a QEMU of its own, in a cgroup of its
  // own, gone with it.
  int templates = 0;
  for (const auto& e : fs::directory_iterator(dir_ + "/cache/tpl", ec)) {
    ++templates;
    const std::string id = "airlock-tpl-" + e.path().filename().string().substr(0, 12);
    EXPECT_FALSE(fs::exists(MemoryCgroupDir(DetectCgroups(), "/airlock/" + id))) << id;
  }
  EXPECT_EQ(templates, 1);
}

// A QEMU that outgrows its cgroup is killed by the host's kernel, alone, and its sandbox is
// reported as OOM with the reason. The test lowers the limit to just above what the running
// VM holds; the agent then fills its /tmp, which is guest RAM. The VM boots rather than
// restoring a template: restoring reads every page of the guest's RAM (QEMU checks that a page
// sent as zero is zero), and a host kernel that backs a read fault with a page of its own, as
// some do, then holds all of it from the start, so filling it would need no more.
TEST_F(MicrovmBackendTest, AQemuThatOutgrowsItsCgroupIsKilledAndReportedAsOom) {
  if (::geteuid() != 0) GTEST_SKIP() << "QEMU is jailed only when the control plane is root";
  templates_ = false;
  backend_ = Make();
  std::string h = Create({"/bin/sh", "-c",
                          "echo started; sleep 5; head -c 100000000 /dev/zero > /tmp/fill; "
                          "echo filled; exec sleep 600"});
  std::string other = Create({"/bin/sh", "-c", "echo started; exec sleep 600"});
  ASSERT_TRUE(WaitForLog(h, "started")) << Log(h);
  std::string limit = QemuCgroupFile(h, "memory.limit_in_bytes", "memory.max");
  if (limit.empty()) GTEST_SKIP() << "no memory cgroup controller on this host";
  std::string usage = QemuCgroupFile(h, "memory.usage_in_bytes", "memory.current");
  {
    std::ofstream f(limit);
    f << std::atoll(ReadFileOr(usage).c_str()) + (8 << 20);
  }
  auto st = WaitFor(h, SandboxState::kExited);
  EXPECT_EQ(Log(h).find("filled"), std::string::npos) << "the limit came too late:\n" << Log(h);
  EXPECT_TRUE(st.oom_killed) << st.detail;
  EXPECT_EQ(st.exit_code, 137);
  EXPECT_NE(st.detail.find("QEMU"), std::string::npos) << st.detail;
  // Only that VM.
  EXPECT_EQ(backend_->Inspect(other)->state, SandboxState::kRunning);
  const std::string cgroup_dir = fs::path(limit).parent_path();
  EXPECT_TRUE(fs::exists(cgroup_dir)) << "kept for Inspect until the sandbox is destroyed";
  ASSERT_TRUE(backend_->Destroy(h).has_value());
  EXPECT_FALSE(fs::exists(cgroup_dir));
}

// A QEMU left behind by a control plane that died, standing in as a shell whose command line
// holds `name` (as QEMU's -name does), waiting on a pipe with a builtin: one process, none left
// behind. Its pid goes to `vm_dir`/qemu.pid.
class LeftBehindQemu {
 public:
  LeftBehindQemu(const std::string& name, const std::string& vm_dir) {
    int hold[2];
    if (::pipe2(hold, O_CLOEXEC) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(hold[0], 0);
      int null = ::open("/dev/null", O_WRONLY);
      ::dup2(null, 1);
      ::dup2(null, 2);
      ::execl("/bin/sh", "sh", "-c", "read x", name.c_str(), nullptr);
      ::_exit(127);
    }
    ::close(hold[0]);
    release_ = hold[1];
    std::ofstream(vm_dir + "/qemu.pid") << pid_;
    for (int i = 0; i < 200 && ReadFileOr(fmt::format("/proc/{}/cmdline", pid_)).find(name) ==
                                   std::string::npos;
         ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  pid_t pid() const { return pid_; }
  // Whether it was SIGKILLed by now; a survivor is let go (its pipe closed) so that it ends
  // on its own.
  bool Killed() {
    int status = 0;
    pid_t waited = ::waitpid(pid_, &status, WNOHANG);
    ::close(release_);
    if (waited == 0) waited = ::waitpid(pid_, &status, 0);
    return waited == pid_ && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
  }

 private:
  pid_t pid_ = -1;
  int release_ = -1;
};

// A control plane that died while it built a template left its QEMU running and its files;
// one that starts removes them, and templates no sandbox was made from for a week, and keeps
// the rest.
TEST_F(MicrovmBackendTest, AStartRemovesUnfinishedAndUnusedTemplates) {
  const std::string tpl = dir_ + "/cache/tpl/";
  const std::string building = tpl + "0123456789abcdef", old = tpl + "1111111111111111",
                    fresh = tpl + "2222222222222222";
  fs::create_directories(building + "/vm");
  fs::create_directories(old);
  fs::create_directories(fresh);
  std::ofstream(old + "/snapshot") << "old";
  std::ofstream(fresh + "/snapshot") << "fresh";
  fs::last_write_time(old + "/snapshot", fs::file_time_type::clock::now() - std::chrono::days(8));
  LeftBehindQemu builder("airlock-tpl-0123456789ab", building + "/vm");
  ASSERT_GT(builder.pid(), 0);
  backend_ = Make();
  EXPECT_TRUE(builder.Killed()) << "the builder still runs";
  EXPECT_FALSE(fs::exists(building));
  EXPECT_FALSE(fs::exists(old));
  EXPECT_TRUE(fs::exists(fresh + "/snapshot"));
}

// The spares (QEMUs started ahead, with no guest) in the state directory: name -> pid.
std::map<std::string, pid_t> Spares(const std::string& state_dir) {
  std::map<std::string, pid_t> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(state_dir + "/spare", ec)) {
    // Listed once its QEMU wrote its pid.
    auto pid =
        static_cast<pid_t>(std::atol(ReadFileOr(e.path().string() + "/vm/qemu.pid").c_str()));
    if (pid > 1) out[e.path().filename().string()] = pid;
  }
  return out;
}

std::map<std::string, pid_t> AwaitSpares(const std::string& state_dir, size_t n) {
  for (int i = 0; i < 600 && Spares(state_dir).size() < n; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  // Wait for it to answer on its monitor too.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  return Spares(state_dir);
}

bool ProcessGone(pid_t pid) {
  std::string stat = ReadFileOr(fmt::format("/proc/{}/stat", pid));
  return stat.empty() || stat.substr(stat.rfind(')') + 2, 1) == "Z";
}

// After a start from a template a QEMU of its machine waits, jailed, with no guest; the next
// sandbox of that template is that QEMU: its files, cgroup and uid become the sandbox's and it
// runs the agent as any. It is the sandbox's from then on: found again by a control plane that
// restarts, hibernated and woken (by a QEMU of its own), destroyed. Spares themselves go with
// the control plane.
TEST_F(MicrovmBackendTest, TheNextSandboxOfATemplateIsAQemuStartedAhead) {
  std::string a = Create({"/bin/sh", "-c", "exit 0"});
  ASSERT_FALSE(a.empty());
  auto spares = AwaitSpares(dir_ + "/state", 1);
  ASSERT_EQ(spares.size(), 1u) << "no spare after a start from a template";
  const auto [name, spare_pid] = *spares.begin();
  ASSERT_GT(spare_pid, 1);
  const std::string spare_cmdline = ReadFileOr(fmt::format("/proc/{}/cmdline", spare_pid));
  EXPECT_NE(spare_cmdline.find("defer"), std::string::npos) << "it waits with no guest";
  // As root it started on idle CPU only, and a claimed one runs at the normal policy.
  auto policies = [](pid_t pid) {
    std::set<int> out;
    for (const auto& e : fs::directory_iterator(fmt::format("/proc/{}/task", pid))) {
      // -1: a thread that ended meanwhile.
      if (int p = ::sched_getscheduler(std::atoi(e.path().filename().c_str())); p >= 0) {
        out.insert(p);
      }
    }
    return out;
  };
  if (::geteuid() == 0) {
    EXPECT_EQ(policies(spare_pid), std::set<int>{SCHED_IDLE});
  }

  std::string b =
      Create({"/bin/sh", "-c",
              "echo \"uid=$(id -u) reply=$(wget -q -O- $CONTROL_PLANE_URL/echo/spare)\"; "
              "exec sleep 600"});
  ASSERT_FALSE(b.empty());
  ASSERT_TRUE(WaitForLog(b, "reply=spare")) << Log(b);
  EXPECT_NE(Log(b).find("uid=1000 "), std::string::npos) << Log(b);
  EXPECT_EQ(QemuPid(b), spare_pid) << "the sandbox is not the spare's QEMU";
  EXPECT_EQ(policies(spare_pid), std::set<int>{SCHED_OTHER});
  EXPECT_FALSE(fs::exists(dir_ + "/state/spare/" + name)) << "a spare is used once";
  const std::string vm = b.substr(b.find(':') + 1) + "/vm";
  EXPECT_EQ(ReadFileOr(vm + "/qemu.argv").find(name), std::string::npos)
      << "a wake would start QEMU with the spare's paths";
  EXPECT_EQ(backend_->Inspect(b)->state, SandboxState::kRunning);
  if (::geteuid() == 0) {
    // Its own uid (not root, not the agent's), and the sandbox's cgroup, with the limit.
    std::string status = ReadFileOr(fmt::format("/proc/{}/status", spare_pid));
    const uint32_t uid =
        static_cast<uint32_t>(std::atoll(status.c_str() + status.find("Uid:") + 4));
    EXPECT_GE(uid, MicrovmOptions{}.uid_range_start);
    std::string limit = QemuCgroupFile(b, "memory.limit_in_bytes", "memory.max");
    if (!limit.empty()) {
      EXPECT_NE(ReadFileOr(fmt::format("/proc/{}/cgroup", spare_pid))
                    .find("/airlock/" + b.substr(0, b.find(':'))),
                std::string::npos);
      EXPECT_EQ(std::atoll(ReadFileOr(limit).c_str()), (256 + 192) << 20) << limit;
      EXPECT_FALSE(fs::exists(MemoryCgroupDir(DetectCgroups(), "/airlock/airlock-spare-" + name)));
    }
  }
  // Another spare waits for the next sandbox. One that died meanwhile is not used: the next
  // sandbox starts a QEMU of its own, and another spare is started.
  auto next = AwaitSpares(dir_ + "/state", 1);
  ASSERT_EQ(next.size(), 1u);
  ASSERT_EQ(::kill(next.begin()->second, SIGKILL), 0);
  for (int i = 0; i < 100 && !ProcessGone(next.begin()->second); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::string own =
      Create({"/bin/sh", "-c", "echo \"reply=$(wget -q -O- $CONTROL_PLANE_URL/echo/own)\""});
  ASSERT_FALSE(own.empty());
  EXPECT_EQ(WaitFor(own, SandboxState::kExited).exit_code, 0) << Log(own);
  EXPECT_NE(Log(own).find("reply=own"), std::string::npos) << Log(own);
  EXPECT_FALSE(fs::exists(own.substr(own.find(':') + 1) + "/vm/qemu.name"));
  EXPECT_FALSE(fs::exists(dir_ + "/state/spare/" + next.begin()->first));
  ASSERT_EQ(AwaitSpares(dir_ + "/state", 1).size(), 1u);

  // A restarted control plane finds it running (though QEMU's command line names the spare);
  // the old one stopped its spare as it went (AStartStopsTheSparesAnEarlierOneLeft: one that
  // died).
  const pid_t second_spare = AwaitSpares(dir_ + "/state", 1).begin()->second;
  backend_ = Make();
  ASSERT_TRUE(backend_);
  EXPECT_TRUE(ProcessGone(second_spare)) << "a spare outlived its control plane";
  auto reattached = backend_->Reattach(b);
  ASSERT_TRUE(reattached.has_value()) << reattached.error().message;
  EXPECT_EQ(reattached->state, SandboxState::kRunning) << reattached->detail;

  // Hibernated, it wakes in a QEMU of its own, with its own paths.
  ASSERT_TRUE(backend_->Hibernate(b).has_value());
  EXPECT_TRUE(ProcessGone(spare_pid));
  auto resumed = backend_->Resume(b);
  ASSERT_TRUE(resumed.has_value()) << resumed.error().message;
  const pid_t woken = QemuPid(b);
  EXPECT_NE(woken, spare_pid);
  EXPECT_NE(ReadFileOr(fmt::format("/proc/{}/cmdline", woken)).find(b.substr(0, b.find(':'))),
            std::string::npos);
  EXPECT_EQ(backend_->Inspect(b)->state, SandboxState::kRunning);
  ASSERT_TRUE(backend_->Destroy(b).has_value());
  EXPECT_TRUE(ProcessGone(woken));

  // A backend that stops takes its spares with it.
  std::string c = Create({"/bin/sh", "-c", "exit 0"});
  ASSERT_FALSE(c.empty());
  auto left = AwaitSpares(dir_ + "/state", 1);
  ASSERT_EQ(left.size(), 1u);
  for (const auto& h : handles_) (void)backend_->Destroy(h);
  handles_.clear();
  backend_.reset();
  EXPECT_TRUE(ProcessGone(left.begin()->second));
  EXPECT_TRUE(Spares(dir_ + "/state").empty());
}

// A control plane that died left its spares running; the next one to start stops them and
// removes their files.
TEST_F(MicrovmBackendTest, AStartStopsTheSparesAnEarlierOneLeft) {
  const std::string spare = dir_ + "/state/spare/0123456789ab";
  fs::create_directories(spare + "/vm");
  std::ofstream(spare + "/vm/qemu.name") << "airlock-spare-0123456789ab";
  LeftBehindQemu qemu("airlock-spare-0123456789ab", spare + "/vm");
  ASSERT_GT(qemu.pid(), 0);
  backend_ = Make();
  EXPECT_TRUE(qemu.Killed()) << "the spare still runs";
  EXPECT_FALSE(fs::exists(spare));
}

// A sandbox made again in its session's directory (a restart) appends to the log of the ones
// before: a spare, whose own log would replace it, is kept for another.
TEST_F(MicrovmBackendTest, ASandboxMadeAgainKeepsTheLogOfTheOnesBefore) {
  std::string a = Create({"/bin/sh", "-c", "exit 0"});
  ASSERT_FALSE(a.empty());
  auto spares = AwaitSpares(dir_ + "/state", 1);
  ASSERT_EQ(spares.size(), 1u);
  prior_log_ = "from the sandbox before\n";
  std::string b = Create({"/bin/sh", "-c", "echo from this one"});
  ASSERT_FALSE(b.empty());
  EXPECT_EQ(WaitFor(b, SandboxState::kExited).exit_code, 0) << Log(b);
  EXPECT_NE(Log(b).find("from the sandbox before\n"), std::string::npos) << Log(b);
  EXPECT_NE(Log(b).find("from this one"), std::string::npos) << Log(b);
  EXPECT_EQ(Spares(dir_ + "/state"), spares) << "the spare was used";
}

// Without spares a start from a template spawns its QEMU itself.
TEST_F(MicrovmBackendTest, SparesCanBeTurnedOff) {
  spare_qemus_ = 0;
  backend_ = Make();
  std::string a = Create({"/bin/sh", "-c", "exit 0"});
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(WaitFor(a, SandboxState::kExited).exit_code, 0) << Log(a);
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_TRUE(Spares(dir_ + "/state").empty());
}

TEST_F(MicrovmBackendTest, RefusesImagesThatBindHostDirectories) {
  auto started = TryCreate({"/bin/true"}, {}, "host");
  ASSERT_FALSE(started.has_value());
  EXPECT_NE(started.error().message.find("binds host directories"), std::string::npos)
      << started.error().message;
}

}  // namespace
}  // namespace airlock::sandbox
