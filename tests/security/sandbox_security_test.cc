// The attacker's test suite: every test runs a real sandbox whose agent is airlock-probe
// trying one way out, and asserts that the attempt failed cleanly. Runs against the `oci`
// backend by default; AIRLOCK_TEST_BACKEND=<name> runs the same tests against another.
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <atomic>
#include <cctype>
#include <cstddef>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "net/http_server.h"
#include "tests/security/sandbox_fixture.h"

namespace airlock::testing {
namespace {

using http::verb;

class SandboxSecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    AIRLOCK_REQUIRE_SANDBOXES();
    sbx_ = std::make_unique<SandboxServer>();
    sbx_->Start();
  }
  std::unique_ptr<SandboxServer> sbx_;
};

// A TCP listener on the host that counts the connections it gets: none may come.
class Canary {
 public:
  explicit Canary(const std::string& address) : address_(address) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    ::inet_pton(AF_INET, address.c_str(), &a.sin_addr);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0) << address;
    ::listen(fd_, 64);
    socklen_t len = sizeof(a);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
  }
  ~Canary() { ::close(fd_); }
  std::string target() const { return address_ + ":" + std::to_string(port_); }
  int Accepted() {
    int n = 0;
    for (int c; (c = ::accept(fd_, nullptr, nullptr)) >= 0; ++n) ::close(c);
    return n;
  }

 private:
  std::string address_;
  int fd_ = -1;
  uint16_t port_ = 0;
};

std::string ReadHostFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

int64_t HostAioNr() { return std::stoll(ReadHostFile("/proc/sys/fs/aio-nr")); }

// The TCP "mem" of the host's /proc/net/sockstat, in bytes: every TCP socket's buffers in
// every network namespace (tcp_mem is one pool for the host).
int64_t HostTcpMemBytes() {
  std::istringstream in(ReadHostFile("/proc/net/sockstat"));
  std::string line;
  while (std::getline(in, line)) {
    if (!line.starts_with("TCP:")) continue;
    size_t at = line.find(" mem ");
    if (at != std::string::npos) return std::stoll(line.substr(at + 5)) * ::sysconf(_SC_PAGESIZE);
  }
  return -1;
}

// Runs `fn` in a child process with the host identity uid/gid `id` (no groups); its exit code.
// Only system calls in `fn`: the test process has threads.
template <typename F>
int AsHostUid(uid_t id, F fn) {
  pid_t child = ::fork();
  if (child == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setresgid(id, id, id) != 0 ||
        ::setresuid(id, id, id) != 0)
      ::_exit(100);
    ::_exit(fn());
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// The host pid of the sandbox process running as `uid` whose command line starts with `argv0`.
pid_t HostPidOf(uint32_t uid, const std::string& argv0) {
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    std::string name = e.path().filename();
    if (name.empty() || !std::isdigit(static_cast<unsigned char>(name[0]))) continue;
    std::string status = ReadHostFile(e.path().string() + "/status");
    size_t at = status.find("\nUid:\t");
    if (at == std::string::npos || std::strtoul(status.c_str() + at + 6, nullptr, 10) != uid)
      continue;
    if (ReadHostFile(e.path().string() + "/cmdline").starts_with(argv0)) return std::stoi(name);
  }
  return -1;
}

// The host uid a running sandbox of `session` is seen as from the host: the agent's own uid
// in a container; in a micro-VM the uid of its QEMU (the agent's uid is the guest kernel's).
// (A VM's QEMU is the pid in its vm/qemu.pid: its command line names the sandbox, or the spare
// QEMU it was started as, sandbox.microvm.spare_qemus.)
uint32_t HostUidOfSandbox(const std::string& home, const std::string& session,
                          const Json& identity) {
  if (TestBackendName() != "microvm") return identity["uid"];
  const std::string handle = ReadHostFile(SandboxStatePath(home, session));
  const std::string pid = ReadHostFile(handle.substr(handle.find(':') + 1) + "/vm/qemu.pid");
  std::string status = ReadHostFile("/proc/" + pid.substr(0, pid.find('\n')) + "/status");
  size_t at = status.find("\nUid:\t");
  if (handle.empty() || pid.empty() || at == std::string::npos) {
    ADD_FAILURE() << "no QEMU of " << session << " on the host";
    return 0;
  }
  return std::strtoul(status.c_str() + at + 6, nullptr, 10);
}

// The descriptors process `pid` holds open.
size_t OpenFds(pid_t pid) {
  size_t n = 0;
  std::error_code ec;
  for (std::filesystem::directory_iterator it("/proc/" + std::to_string(pid) + "/fd", ec), end;
       !ec && it != end; it.increment(ec)) {
    ++n;
  }
  return n;
}

// The most descriptors process `pid` held at any moment it was looked at: a thread looks
// until Stop().
class FdPeak {
 public:
  explicit FdPeak(pid_t pid)
      : thread_([this, pid] {
          while (!stop_) {
            peak_ = std::max(peak_.load(), OpenFds(pid));
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
          }
        }) {}
  ~FdPeak() { Stop(); }
  size_t Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    return peak_;
  }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<size_t> peak_{0};
  std::thread thread_;
};

// What one session may hold of the control plane at once: its share of connections.
size_t SessionConnectionShare() { return net::HttpLimits{}.max_connections_per_session; }

// The host descriptors one sandbox's connections to its control plane may cost the server
// process: its share of accepted connections and, for a micro-VM, the relay's socket to its
// control.sock for each stream its channel holds, of which the relay allows it as many as its
// share (the relay runs in the same process).
size_t HostDescriptorsPerSandbox() {
  return SessionConnectionShare() * (TestBackendName() == "microvm" ? 2 : 1);
}

// What the server's descriptor count moves by for reasons of its own: the store's files, the
// test's operator connections, a connection accepted past a share and not yet closed.
constexpr size_t kFdSlack = 16;

TEST_F(SandboxSecurityTest, TheAgentTalksToItsControlPlaneAndNothingElseOfItsOwn) {
  // The one way out works: the agent takes its task and finishes through CONTROL_PLANE_URL.
  std::string script =
      "set -e; auth=\"Authorization: Bearer $SESSION_TOKEN\"; "
      "wget -q -O - --header \"$auth\" \"$CONTROL_PLANE_URL/sandbox/v1/inbox?wait=5\"; echo; "
      "wget -q -O - --header \"$auth\" --header 'Content-Type: application/json' "
      "--post-data '{\"status\":\"succeeded\",\"result\":\"reached the control plane\"}' "
      "\"$CONTROL_PLANE_URL/sandbox/v1/finish\"";
  std::string id = sbx_->Create({"/bin/sh", "-c", script});
  auto out = sbx_->WaitForEnd(id);
  EXPECT_EQ(out.session["state"], "succeeded") << out.logs;
  EXPECT_EQ(out.session.value("result", ""), "reached the control plane");
  EXPECT_NE(out.logs.find("security probe"), std::string::npos)
      << "the task came through the inbox: " << out.logs;
}

TEST_F(SandboxSecurityTest, TheAgentEnvironmentHoldsOnlyTheThreeVariablesPathHomeAndLang) {
  auto out = sbx_->WaitForEnd(sbx_->Create(SandboxServer::Probe({"env"})));
  Json env = out.Probe("env");
  ASSERT_FALSE(env.is_null()) << out.logs;
  std::set<std::string> names(env["names"].begin(), env["names"].end());
  EXPECT_EQ(names, (std::set<std::string>{"SESSION_ID", "SESSION_TOKEN", "CONTROL_PLANE_URL",
                                          "PATH", "HOME", "LANG"}));
  EXPECT_EQ(env["HOME"], "/home/sandbox");
  EXPECT_EQ(env["LANG"], "C.UTF-8");
  EXPECT_TRUE(env["CONTROL_PLANE_URL"].get<std::string>().starts_with("http://127.0.0.1:"));
  EXPECT_EQ(env["SESSION_ID"], out.session["id"]);
}

TEST_F(SandboxSecurityTest, NoOtherProcessShowsTheTokenInItsEnviron) {
  auto out = sbx_->WaitForEnd(sbx_->Create(SandboxServer::Probe({"environ-others"})));
  Json p = out.Probe("environ_others");
  ASSERT_FALSE(p.is_null()) << out.logs;
  bool saw_init = false;
  for (const auto& proc : p["procs"]) {
    EXPECT_FALSE(proc["has_token"].get<bool>()) << proc.dump();
    EXPECT_FALSE(proc["readable"].get<bool>() && proc["has_session_vars"].get<bool>())
        << proc.dump();
    if (proc["pid"] == 1) {
      saw_init = true;
      EXPECT_TRUE(!proc["readable"].get<bool>() || !proc["nonempty"].get<bool>())
          << "init's environ: " << proc.dump();
    }
  }
  EXPECT_TRUE(saw_init)
      << "pid 1 (airlock-init) should be visible in the sandbox's own pid namespace";
}

TEST_F(SandboxSecurityTest, TheAgentIsUnprivileged) {
  auto out = sbx_->WaitForEnd(sbx_->Create(SandboxServer::Probe({"identity"})));
  Json id = out.Probe("identity");
  ASSERT_FALSE(id.is_null()) << out.logs;
  EXPECT_NE(id["uid"], 0);
  EXPECT_NE(id["euid"], 0);
  EXPECT_NE(id["gid"], 0);
  EXPECT_EQ(id["ngroups"], 0);
  for (const char* cap : {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}) {
    EXPECT_EQ(id[cap], "0000000000000000") << cap;
  }
  EXPECT_EQ(id["NoNewPrivs"], "1");
  EXPECT_EQ(id["Seccomp"], "2");
  EXPECT_EQ(id["hostname"], "sandbox\n");
}

TEST_F(SandboxSecurityTest, PrivilegedSyscallsAllFail) {
  auto out = sbx_->WaitForEnd(sbx_->Create(SandboxServer::Probe({"syscalls"})));
  Json p = out.Probe("syscalls");
  ASSERT_FALSE(p.is_null()) << out.logs;
  std::set<std::string> tried;
  for (const auto& a : p["attempts"]) {
    tried.insert(a["name"]);
    EXPECT_FALSE(a["succeeded"].get<bool>()) << a.dump();
  }
  for (const char* must :
       {"mount_tmpfs",      "unshare_user",    "unshare_mount",    "setns_host_net",
        "clone_newuser",    "ptrace_init",     "ptrace_own_child", "bpf_map_create",
        "keyctl_session",   "perf_event_open", "kexec_load",       "socket_raw_icmp",
        "socket_packet",    "socket_vsock",    "setuid_root",      "int80_getpid",
        "x32_getpid",       "clone3_newuser",  "kill_init",        "clock_settime",
        "raise_core_limit", "tiocsti"}) {
    EXPECT_TRUE(tried.count(must)) << must;
  }
  EXPECT_FALSE(out.Probe("done").is_null()) << "the probe survived its own attempts: " << out.logs;
}

TEST_F(SandboxSecurityTest, WritesToTheRootAndTheSystemFail) {
  auto out = sbx_->WaitForEnd(sbx_->Create(SandboxServer::Probe({"write-root"})));
  Json p = out.Probe("write_root");
  ASSERT_FALSE(p.is_null()) << out.logs;
  for (const auto& w : p["paths"]) {
    EXPECT_FALSE(w["wrote"].get<bool>()) << w.dump();
    // The image's tree is shared by every sandbox of that image: read-only by mount, not
    // only by ownership, so even a uid that owns a directory of it cannot leave files there.
    std::string path = w["path"];
    if (path == "/probe" || path == "/etc/probe" || path == "/bin/probe" || path == "/usr/probe") {
      EXPECT_EQ(w["errno"], EROFS) << w.dump();
    }
  }
  EXPECT_TRUE(p["tmp_writable"].get<bool>()) << "/tmp must stay writable";
}

TEST_F(SandboxSecurityTest, SystemMountsAreReadOnlyAndWritableOnesNosuid) {
  auto out = sbx_->WaitForEnd(sbx_->Create(SandboxServer::Probe({"mounts"})));
  Json p = out.Probe("mounts");
  ASSERT_FALSE(p.is_null()) << out.logs;
  EXPECT_FALSE(p["has_token"].get<bool>());
  // What the sandbox reaches at each mount point is the last mount made there.
  std::map<std::string, Json> top;
  for (const auto& m : p["mounts"]) top[m["point"]] = m;
  auto read_only = [](const Json& m) { return m["options"].get<std::string>().starts_with("ro"); };
  for (const auto& [point, m] : top) {
    // /sys/fs/cgroup included: on cgroup v1 a writable hierarchy is one a uid 0 inside could
    // raise its own limits in, or set the release_agent of.
    if (point == "/" || point.starts_with("/sys") || point == "/proc/sys" ||
        point.starts_with("/.airlock/")) {
      EXPECT_TRUE(read_only(m)) << m.dump();
    } else if (!read_only(m)) {
      EXPECT_NE(m["options"].get<std::string>().find("nosuid"), std::string::npos) << m.dump();
    }
  }
  EXPECT_TRUE(top.count("/"));
  EXPECT_TRUE(top.count("/.airlock/run"));
}

TEST_F(SandboxSecurityTest, OnlyUnixInetAndNetlinkSocketsOpen) {
  // Every other address family is kernel code the agent has no use for (AF_ALG, AF_TIPC,
  // AF_RDS, AF_VSOCK, ...), often loaded on demand by the socket call itself.
  auto out = sbx_->WaitForEnd(sbx_->Create(SandboxServer::Probe({"socket-families"})));
  Json p = out.Probe("socket_families");
  ASSERT_FALSE(p.is_null()) << out.logs;
  std::set<int> opened(p["opened"].begin(), p["opened"].end());
  for (int family : opened) {
    EXPECT_TRUE(family == AF_UNIX || family == AF_INET || family == AF_INET6 ||
                family == AF_NETLINK)
        << family;
  }
  EXPECT_TRUE(opened.count(AF_UNIX) && opened.count(AF_INET)) << p.dump();
}

TEST_F(SandboxSecurityTest, TheAgentCannotTakeTheBridgePort) {
  // init listens on CONTROL_PLANE_URL's port before the agent exists, so nothing in the
  // sandbox can answer in the control plane's place.
  auto out = sbx_->WaitForEnd(sbx_->Create(SandboxServer::Probe({"listen", "7401", "0"})));
  Json p = out.Probe("listen");
  ASSERT_FALSE(p.is_null()) << out.logs;
  EXPECT_FALSE(p["listening"].get<bool>()) << p.dump();
}

TEST_F(SandboxSecurityTest, HostFilesAndTheControlPlaneHomeAreInvisible) {
  std::string canary = sbx_->home() + "/canary-secret.txt";
  std::ofstream(canary) << "CANARY-5f1e9d";
  ::chmod(canary.c_str(), 0644);  // even world-readable on the host
  auto out = sbx_->WaitForEnd(sbx_->Create(SandboxServer::Probe(
      {"read", canary, "/proc/1/root" + canary, sbx_->home() + "/operator.key",
       sbx_->home() + "/airlock.db", sbx_->home() + "/airlock.toml", "/etc/shadow",
       "/root/.bash_history", "/proc/1/environ", "/proc/1/mem",
       // The host kernel's state, masked (world-readable ones included: timer_list).
       "/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug",
       "/proc/latency_stats"})));
  Json p = out.Probe("read");
  ASSERT_FALSE(p.is_null()) << out.logs;
  for (const auto& r : p["paths"]) {
    EXPECT_FALSE(r["readable"].get<bool>() && !r["content"].get<std::string>().empty()) << r.dump();
    EXPECT_EQ(r["content"].get<std::string>().find("CANARY"), std::string::npos);
  }
  EXPECT_EQ(out.logs.find("CANARY-5f1e9d"), std::string::npos);
}

TEST_F(SandboxSecurityTest, NoHostProcessIsVisible) {
  auto out = sbx_->WaitForEnd(sbx_->Create(SandboxServer::Probe({"procs"})));
  Json p = out.Probe("procs");
  ASSERT_FALSE(p.is_null()) << out.logs;
  // A micro-VM's init is PID 1 of its own kernel, started from its initramfs as /init, and
  // that kernel's threads (an empty command line) are the VM's own, not the host's.
  bool vm = TestBackendName() == "microvm";
  std::string init = vm ? "/init" : "/.airlock/init";
  size_t processes = 0;
  for (const auto& proc : p["procs"]) {
    std::string cmd = proc["cmdline"];
    if (vm && cmd.empty()) continue;
    ++processes;
    EXPECT_TRUE(cmd.starts_with(init) || cmd.starts_with("/usr/bin/airlock-probe")) << cmd;
  }
  EXPECT_LE(processes, 2u);
}

TEST_F(SandboxSecurityTest, NoRouteOutOfTheSandbox) {
  Canary loopback("127.0.0.1");
  std::string external = ExternalAddress();
  std::unique_ptr<Canary> outside;
  if (!external.empty()) outside = std::make_unique<Canary>(external);
  std::string op = std::to_string(sbx_->server().operator_port());
  std::string sb = std::to_string(sbx_->server().sandbox_port());
  std::vector<std::string> targets = {loopback.target(),    "127.0.0.1:" + op, "127.0.0.1:" + sb,
                                      "169.254.169.254:80", "10.0.2.2:80",     "8.8.8.8:53",
                                      "1.1.1.1:443"};
  if (outside) {
    targets.push_back(outside->target());
    targets.push_back(external + ":" + op);
    targets.push_back(external + ":" + sb);
  }
  // Abstract Unix sockets belong to the network namespace: the host's must be out of reach.
  std::string abstract = "airlock-canary-" + std::to_string(::getpid());
  int unix_canary = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  sockaddr_un ua{};
  ua.sun_family = AF_UNIX;
  std::memcpy(ua.sun_path + 1, abstract.data(), abstract.size());
  auto ua_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + abstract.size());
  ASSERT_EQ(::bind(unix_canary, reinterpret_cast<sockaddr*>(&ua), ua_len), 0);
  ::listen(unix_canary, 16);
  Json cmd = Json::array({"/usr/bin/airlock-probe", "net"});
  for (const auto& t : targets) cmd.push_back(t);
  cmd.push_back("--");
  cmd.push_back("unix-connect");
  cmd.push_back("@" + abstract);
  auto out = sbx_->WaitForEnd(sbx_->Create(cmd));
  Json unix_out = out.Probe("unix_connect");
  EXPECT_TRUE(!unix_out.is_null() && !unix_out["targets"][0]["connected"].get<bool>()) << out.logs;
  EXPECT_EQ(::accept(unix_canary, nullptr, nullptr), -1);
  ::close(unix_canary);
  Json p = out.Probe("net");
  ASSERT_FALSE(p.is_null()) << out.logs;
  ASSERT_EQ(p["targets"].size(), targets.size());
  for (const auto& t : p["targets"]) EXPECT_FALSE(t["connected"].get<bool>()) << t.dump();
  EXPECT_EQ(loopback.Accepted(), 0);
  if (outside) {
    EXPECT_EQ(outside->Accepted(), 0);
  }
}

TEST_F(SandboxSecurityTest, SetuidBinariesOfTheHostImageAreInert) {
  if (TestBackendName() == "microvm") {
    GTEST_SKIP() << "the host image binds host directories, which only a container can share; "
                    "the microvm backend refuses it (microvm_backend_test)";
  }
  // The host image binds the host's /usr, where su, mount and passwd are setuid root. The
  // kernel must ignore the bits (nosuid mounts, and no_new_privs on top).
  std::string script =
      "grep NoNewPrivs /proc/self/status; "
      "for f in /usr/bin/su /usr/bin/mount /usr/bin/passwd; do [ -u \"$f\" ] && echo \"SETUID "
      "$f\"; done; "
      "/usr/bin/mount -t tmpfs none /tmp >/dev/null 2>&1 && echo MOUNT-SUCCEEDED; "
      "/usr/bin/su -c 'echo SU-SUCCEEDED' root </dev/null >/dev/null 2>&1 && echo SU-SUCCEEDED; "
      "grep ' /usr ' /proc/self/mountinfo; id -u";
  auto out = sbx_->WaitForEnd(sbx_->Create({"/bin/sh", "-c", script}, Json::object(), "host"));
  EXPECT_NE(out.logs.find("NoNewPrivs:\t1"), std::string::npos) << out.logs;
  EXPECT_EQ(out.logs.find("MOUNT-SUCCEEDED"), std::string::npos) << out.logs;
  EXPECT_EQ(out.logs.find("SU-SUCCEEDED"), std::string::npos) << out.logs;
  if (out.logs.find("SETUID") != std::string::npos) {
    // There are setuid files: their mount must be nosuid.
    size_t usr = out.logs.find(" /usr ");
    ASSERT_NE(usr, std::string::npos) << out.logs;
    std::string line = out.logs.substr(usr, out.logs.find('\n', usr) - usr);
    EXPECT_NE(line.find("nosuid"), std::string::npos) << line;
  }
}

TEST_F(SandboxSecurityTest, AForkBombStopsAtThePidsLimitAndTheHostStaysResponsive) {
  std::string id = sbx_->Create(SandboxServer::Probe({"forkbomb", "100000"}), {{"pids", 64}});
  // While the bomb goes off the control plane keeps answering.
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(sbx_->server().Op(verb::get, "/healthz").status, 200u);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto out = sbx_->WaitForEnd(id);
  Json p = out.Probe("forkbomb");
  ASSERT_FALSE(p.is_null()) << out.logs;
  EXPECT_LT(p["forked"].get<int>(), 64);
  EXPECT_GT(p["forked"].get<int>(), 8) << "the limit, not something else, stopped it";
  EXPECT_EQ(p["errno"], EAGAIN);
}

TEST_F(SandboxSecurityTest, AMemoryBombIsOomKilledAndReportedAsOom) {
  auto out = sbx_->WaitForEnd(sbx_->Create(SandboxServer::Probe({"membomb"}), {{"memory_mb", 64}}));
  EXPECT_FALSE(out.Probe("membomb_start").is_null()) << out.logs;
  EXPECT_TRUE(out.Probe("membomb").is_null())
      << "malloc should not fail before the OOM killer acts: " << out.logs;
  EXPECT_EQ(out.session["state"], "failed");
  Json exited = out.Event("agent.exited");
  ASSERT_FALSE(exited.is_null()) << out.events.dump();
  EXPECT_EQ(exited["data"]["signal"], 9) << exited.dump();
  EXPECT_EQ(exited["data"]["oom_killed"], true) << exited.dump();
  EXPECT_NE(out.session.value("result", "").find("out of memory"), std::string::npos)
      << out.session.dump();
}

TEST_F(SandboxSecurityTest, TheAgentGetsOnlyItsCpuShare) {
  // A busy loop is no proof within a test's time; the sandbox's own cgroup, as the sandbox
  // sees it, is: quota / period = the cpus limit (cgroup v1 files, or v2's cpu.max).
  auto out = sbx_->WaitForEnd(sbx_->Create(
      SandboxServer::Probe(
          {"read", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us",
           "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us",
           "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "/sys/fs/cgroup/cpu.max"}),
      {{"cpus", 0.5}}));
  Json p = out.Probe("read");
  ASSERT_FALSE(p.is_null()) << out.logs;
  auto content = [&](size_t i) { return p["paths"][i]["content"].get<std::string>(); };
  std::string quota, period;
  for (size_t v1 : {0u, 2u}) {
    if (quota.empty() && !content(v1).empty()) {
      quota = content(v1);
      period = content(v1 + 1);
    }
  }
  if (quota.empty()) std::istringstream(content(4)) >> quota >> period;
  if (quota.empty()) GTEST_SKIP() << "this backend shows the sandbox no cgroup files: " << p.dump();
  ASSERT_FALSE(quota.starts_with("-1") || quota.starts_with("max")) << "no cpu limit: " << p.dump();
  EXPECT_DOUBLE_EQ(std::stod(quota) / std::stod(period), 0.5) << p.dump();
}

TEST_F(SandboxSecurityTest, FillingTmpEndsInEnospc) {
  auto out = sbx_->WaitForEnd(sbx_->Create(SandboxServer::Probe({"filltmp"}), {{"disk_mb", 16}}));
  Json p = out.Probe("filltmp");
  ASSERT_FALSE(p.is_null()) << out.logs;
  EXPECT_EQ(p["errno"], ENOSPC);
  EXPECT_LE(p["bytes"].get<int64_t>(), 16ll << 20);
  EXPECT_GT(p["bytes"].get<int64_t>(), 8ll << 20);
}

TEST_F(SandboxSecurityTest, TwoSandboxesCannotSeeOrReachEachOther) {
  std::string a = sbx_->Create(SandboxServer::Probe({"listen", "7777", "60"}));
  Json listening = sbx_->WaitForProbe(a, "listen");
  ASSERT_TRUE(!listening.is_null() && listening["listening"].get<bool>()) << sbx_->Logs(a);
  auto out = sbx_->WaitForEnd(sbx_->Create(SandboxServer::Probe(
      {"net", "127.0.0.1:7777", "--", "read", "/tmp/probe-marker", "--", "procs"})));
  Json net = out.Probe("net");
  ASSERT_FALSE(net.is_null()) << out.logs;
  EXPECT_FALSE(net["targets"][0]["connected"].get<bool>()) << net.dump();
  EXPECT_FALSE(out.Probe("read")["paths"][0]["readable"].get<bool>());
  Json procs = out.Probe("procs");  // a named value: a range over a temporary's member dangles
  ASSERT_FALSE(procs.is_null()) << out.logs;
  for (const auto& proc : procs["procs"]) {
    EXPECT_EQ(proc["cmdline"].get<std::string>().find("listen"), std::string::npos) << proc.dump();
  }
  sbx_->server().Op(verb::delete_, "/v1/sessions/" + a);
}

// Finding 8: io_setup would reserve the host's AIO events (fs.aio-max-nr, one limit for the
// host) until root's own io_setup failed.
TEST_F(SandboxSecurityTest, NativeAioIsRefusedAndTheHostKeepsItsAioEvents) {
  int64_t before = HostAioNr();
  std::string id = sbx_->Create(SandboxServer::Probe({"aio", "1000000", "--", "sleep", "60"}));
  Json p = sbx_->WaitForProbe(id, "aio");
  ASSERT_FALSE(p.is_null());
  EXPECT_EQ(p["contexts"], 0) << p.dump();
  EXPECT_EQ(p["errno"], EPERM) << p.dump();
  // While the sandbox lives: the host's count has not grown, and root on the host still gets
  // a context.
  EXPECT_LE(HostAioNr(), before) << p.dump();
  unsigned long ctx = 0;
  EXPECT_EQ(::syscall(SYS_io_setup, 128, &ctx), 0) << std::strerror(errno);
  if (ctx) ::syscall(SYS_io_destroy, ctx);
  sbx_->server().Op(verb::delete_, "/v1/sessions/" + id);
}

// Finding 16: sync(2) and syncfs(2) make the host write back everything dirty.
TEST_F(SandboxSecurityTest, HostWideWritebackIsRefusedButFsyncOfOwnFilesWorks) {
  auto out = sbx_->WaitForEnd(sbx_->Create(SandboxServer::Probe({"sync"})));
  Json p = out.Probe("sync");
  ASSERT_FALSE(p.is_null()) << out.logs;
  std::map<std::string, Json> by_name;
  for (const auto& a : p["attempts"]) by_name[a["name"]] = a;
  for (const char* denied : {"sync", "syncfs"}) {
    EXPECT_FALSE(by_name[denied]["succeeded"].get<bool>()) << by_name[denied].dump();
    EXPECT_EQ(by_name[denied]["errno"], EPERM) << by_name[denied].dump();
  }
  EXPECT_TRUE(by_name["fsync_own_file"]["succeeded"].get<bool>())
      << by_name["fsync_own_file"].dump();
  EXPECT_FALSE(out.Probe("done").is_null()) << "refused, not killed: " << out.logs;
}

// Finding 6: loopback TCP pairs written full and never read. The buffers must count against
// the sandbox's memory (cgroup v1 kernelTCP; v2 by itself), not only against the host-wide
// tcp_mem every network namespace shares; and another sandbox's loopback TCP still works.
TEST_F(SandboxSecurityTest, TcpBuffersCannotOutgrowTheSandboxMemoryLimit) {
  constexpr int64_t kLimit = 64ll << 20;
  constexpr int kPairs = 200;
  int64_t host_before = HostTcpMemBytes();
  std::string id =
      sbx_->Create(SandboxServer::Probe({"tcpfill", std::to_string(kPairs), "--", "sleep", "60"}),
                   {{"memory_mb", kLimit >> 20}});
  Json p = sbx_->WaitForProbe(id, "tcpfill");
  ASSERT_FALSE(p.is_null());
  int64_t host_during = HostTcpMemBytes();
  // Every pair was made (the limit, not a lack of sockets, is what bounds the fill) ...
  EXPECT_EQ(p["pairs"], kPairs) << p.dump();
  // ... yet what they hold stays within the sandbox's memory limit, plus what the kernel
  // force-charges past a full limit: one segment per socket (at most 64 KiB here).
  int64_t slack = int64_t{kPairs} * 2 * (64 << 10);
  EXPECT_LE(p["queued"].get<int64_t>(), kLimit + slack) << p.dump();
  EXPECT_LE(host_during - host_before, kLimit + slack)
      << "host sockstat TCP mem went from " << host_before << " to " << host_during << " bytes; "
      << p.dump();
  // An ordinary connection in another sandbox, meanwhile.
  auto other =
      sbx_->WaitForEnd(sbx_->Create(SandboxServer::Probe({"tcpecho", std::to_string(8 << 20)})));
  Json echo = other.Probe("tcpecho");
  ASSERT_FALSE(echo.is_null()) << other.logs;
  EXPECT_TRUE(echo["ok"].get<bool>()) << echo.dump();
  sbx_->server().Op(verb::delete_, "/v1/sessions/" + id);
}

TEST_F(SandboxSecurityTest, AnOrdinaryLoopbackConnectionWorks) {
  auto out =
      sbx_->WaitForEnd(sbx_->Create(SandboxServer::Probe({"tcpecho", std::to_string(32 << 20)})));
  Json p = out.Probe("tcpecho");
  ASSERT_FALSE(p.is_null()) << out.logs;
  EXPECT_TRUE(p["ok"].get<bool>()) << p.dump();
  EXPECT_EQ(p["received"], 32 << 20);
}

// Finding 5: the agent ran as host uid 1000, a real account on most hosts, shared by every
// sandbox: that account could read an agent's environment (its token), and one sandbox could
// use up the per-uid quotas of all of them and of that user.
TEST_F(SandboxSecurityTest, EachSandboxHasItsOwnHostUidThatNoHostAccountHas) {
  std::string a = sbx_->Create(
      SandboxServer::Probe({"identity", "--", "inotify", "100000", "--", "sleep", "60"}));
  Json held = sbx_->WaitForProbe(a, "inotify");
  ASSERT_FALSE(held.is_null());
  Json id_a = SandboxServer::ParseProbes(sbx_->Logs(a))[0];
  ASSERT_EQ(id_a["check"], "identity");
  // a holds every inotify instance its uid may have ...
  EXPECT_EQ(std::to_string(held["instances"].get<int>()) + "\n",
            held["max_user_instances"].get<std::string>())
      << held.dump();
  EXPECT_EQ(held["errno"], EMFILE) << held.dump();
  // ... and another sandbox still gets one ...
  auto b = sbx_->WaitForEnd(sbx_->Create(SandboxServer::Probe({"identity", "--", "inotify", "1"})));
  Json id_b = b.Probe("identity");
  ASSERT_FALSE(id_b.is_null()) << b.logs;
  EXPECT_EQ(b.Probe("inotify")["instances"], 1) << b.logs;
  // ... and so does host uid 1000.
  EXPECT_EQ(AsHostUid(1000, [] { return ::inotify_init1(IN_CLOEXEC) >= 0 ? 0 : 1; }), 0);

  // In a micro-VM the agent's uid belongs to its own kernel; what must differ is the host uid
  // of each QEMU, asked while it runs: a third sandbox stands in for b, which has ended.
  std::string c;
  Json id_c = id_b;
  if (TestBackendName() == "microvm") {
    c = sbx_->Create(SandboxServer::Probe({"identity", "--", "sleep", "60"}));
    id_c = sbx_->WaitForProbe(c, "identity");
    ASSERT_FALSE(id_c.is_null());
  }
  uint32_t ua = HostUidOfSandbox(sbx_->home(), a, id_a),
           ub = HostUidOfSandbox(sbx_->home(), c, id_c);
  EXPECT_NE(ua, ub);
  for (uint32_t u : {ua, ub}) {
    EXPECT_NE(u, 0u);
    EXPECT_NE(u, 1000u);
    EXPECT_EQ(::getpwuid(u), nullptr) << u << " is a host account";
    EXPECT_EQ(::getgrgid(u), nullptr) << u << " is a host group";
    std::istringstream passwd(ReadHostFile("/etc/passwd"));
    for (std::string line; std::getline(passwd, line);) {
      EXPECT_EQ(line.find(":" + std::to_string(u) + ":"), std::string::npos) << line;
    }
  }
  if (TestBackendName() == "microvm") {
    // Host uid 1000 cannot read a QEMU's memory, where the guest and its token live.
    pid_t qemu = HostPidOf(ua, "/usr/bin/qemu-system");
    ASSERT_GT(qemu, 0);
    std::string mem = "/proc/" + std::to_string(qemu) + "/mem";
    int err = AsHostUid(1000, [&] {
      int fd = ::open(mem.c_str(), O_RDONLY | O_CLOEXEC);
      return fd < 0 ? errno : 0;
    });
    EXPECT_EQ(err, EACCES) << "uid 1000 opened " << mem;
    sbx_->server().Op(verb::delete_, "/v1/sessions/" + a);
    sbx_->server().Op(verb::delete_, "/v1/sessions/" + c);
    return;
  }
  EXPECT_EQ(id_a["gid"], ua);

  // Host uid 1000 (an ordinary account) cannot read the running agent's environment, which
  // root can: the pid is right, and the token is there.
  pid_t agent = HostPidOf(ua, "/usr/bin/airlock-probe");
  ASSERT_GT(agent, 0);
  std::string environ_path = "/proc/" + std::to_string(agent) + "/environ";
  EXPECT_NE(ReadHostFile(environ_path).find("SESSION_TOKEN="), std::string::npos);
  int err = AsHostUid(1000, [&] {
    int fd = ::open(environ_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    char c;
    return ::read(fd, &c, 1) == 1 ? 0 : errno;
  });
  EXPECT_EQ(err, EACCES) << "uid 1000 read " << environ_path;
  sbx_->server().Op(verb::delete_, "/v1/sessions/" + a);
}

// Sends the session's agent a message: how a test moves a probe on to its next step.
void PostMessage(SandboxServer& sbx, const std::string& id, const std::string& text) {
  auto r = sbx.server().Op(verb::post, "/v1/sessions/" + id + "/messages",
                           DumpJson(Json{{"content", text}}));
  EXPECT_EQ(r.status, 202u) << r.body;
}

// An agent that takes its task and finishes with `result`: an ordinary session.
Json AgentThatFinishes(const std::string& result) {
  return {"/bin/sh", "-c",
          "set -e; auth=\"Authorization: Bearer $SESSION_TOKEN\"; "
          "wget -q -O - --header \"$auth\" \"$CONTROL_PLANE_URL/sandbox/v1/inbox\"; echo; "
          "wget -q -O - --header \"$auth\" --header 'Content-Type: application/json' "
          "--post-data '{\"status\":\"succeeded\",\"result\":\"" +
              result + "\"}' \"$CONTROL_PLANE_URL/sandbox/v1/finish\""};
}

// A flood takes a micro-VM's guest a while under TCG.
constexpr int kFloodTimeoutS = 180;
constexpr int kFloodConnections = 2000;

// One sandbox's agent opens 2000 connections to its control plane at once, holds
// every one of them (answered or not), and keeps asking for one more. It holds its session's
// share of the control plane's connections and not one more; meanwhile the operator API
// answers and another session's agent is served; once it lets go it is served again.
TEST_F(SandboxSecurityTest, AConnectionFloodHoldsOnlyItsSessionShareAndStarvesNoOtherSession) {
  const size_t share = SessionConnectionShare();
  std::string flooder =
      sbx_->Create(SandboxServer::Probe({"ctlflood", std::to_string(kFloodConnections)}));
  Json ready = sbx_->WaitForProbe(flooder, "ctlflood_ready", kFloodTimeoutS);
  ASSERT_FALSE(ready.is_null());
  EXPECT_EQ(ready["task_status"], 200) << ready.dump();
  PostMessage(*sbx_, flooder, "flood");
  Json flood = sbx_->WaitForProbe(flooder, "ctlflood", kFloodTimeoutS);
  ASSERT_FALSE(flood.is_null());
  EXPECT_EQ(flood["go_status"], 200) << flood.dump();
  // Every connection was made (the probe's own limits did not stop it) ...
  EXPECT_EQ(flood["opened"], kFloodConnections) << flood.dump();
  // ... and the session's share, not something else, is what bounded the answered ones.
  EXPECT_LE(flood["held"].get<size_t>(), share) << flood.dump();
  EXPECT_GE(flood["held"].get<size_t>(), share / 2) << flood.dump();
  EXPECT_EQ(flood["other_status"], 0) << "every answer was 204, an empty inbox: " << flood.dump();
  EXPECT_EQ(flood["held"].get<int>() + flood["refused"].get<int>() + flood["pending"].get<int>(),
            kFloodConnections)
      << flood.dump();

  // While it holds them, the operator API answers ...
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(sbx_->server().Op(verb::get, "/healthz").status, 200u);
  }
  // ... and another session's agent takes its task and finishes through its control plane.
  auto other =
      sbx_->WaitForEnd(sbx_->Create(AgentThatFinishes("served during a flood")), kFloodTimeoutS);
  EXPECT_EQ(other.session["state"], "succeeded") << other.logs;
  EXPECT_EQ(other.session.value("result", ""), "served during a flood");

  // The message reaches the flooder on a connection it holds: it lets go, and is served again.
  PostMessage(*sbx_, flooder, "release");
  Json after = sbx_->WaitForProbe(flooder, "ctlflood_after", kFloodTimeoutS);
  ASSERT_FALSE(after.is_null());
  EXPECT_EQ(after["release_status"], 200) << after.dump();
  EXPECT_GE(after["pressure_attempts"], 1) << after.dump();
  EXPECT_EQ(after["pressure_served"], 0)
      << "a connection past the share was answered while the share was held: " << after.dump();
  EXPECT_EQ(after["status"], 204) << after.dump();
  PostMessage(*sbx_, flooder, "stop");
  auto end = sbx_->WaitForEnd(flooder, kFloodTimeoutS);
  EXPECT_FALSE(end.Probe("done").is_null()) << end.logs;
}

// Floods from two sandboxes at once, counted in the server process's open descriptors (the
// control plane's, and on a micro-VM its channel relay's): one sandbox asks on every
// connection, the other sends nothing on any and keeps its ends open after the control plane
// has closed them. Each sandbox costs at most its share of connections plus, for a micro-VM,
// one socket per stream its channel may carry, however many connections it opens; and the
// descriptors come back when a flood ends, while its sandbox still runs.
TEST_F(SandboxSecurityTest, ConnectionFloodsCostTheHostBoundedDescriptorsAndGiveThemBack) {
  const pid_t server = sbx_->server().pid();
  const std::string n = std::to_string(kFloodConnections);
  std::string asking = sbx_->Create(SandboxServer::Probe({"ctlflood", n}));
  std::string silent = sbx_->Create(SandboxServer::Probe({"ctlflood", n, "silent"}));
  for (const auto& id : {asking, silent}) {
    ASSERT_FALSE(sbx_->WaitForProbe(id, "ctlflood_ready", kFloodTimeoutS).is_null());
  }
  // Both sandboxes run, each waiting on one connection: the count to come back to.
  const size_t ready = OpenFds(server);
  FdPeak peak(server);
  for (const auto& id : {asking, silent}) PostMessage(*sbx_, id, "flood");

  Json flood = sbx_->WaitForProbe(asking, "ctlflood", kFloodTimeoutS);
  ASSERT_FALSE(flood.is_null());
  EXPECT_LE(flood["held"].get<size_t>(), SessionConnectionShare()) << flood.dump();
  Json quiet = sbx_->WaitForProbe(silent, "ctlflood", kFloodTimeoutS);
  ASSERT_FALSE(quiet.is_null());
  EXPECT_EQ(quiet["held"], 0) << quiet.dump();
  EXPECT_GT(quiet["connected"], 0) << quiet.dump();
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(sbx_->server().Op(verb::get, "/healthz").status, 200u);
  }

  PostMessage(*sbx_, asking, "release");
  Json after = sbx_->WaitForProbe(asking, "ctlflood_after", kFloodTimeoutS);
  ASSERT_FALSE(after.is_null());
  EXPECT_EQ(after["status"], 204) << after.dump();
  // The asking flood is over: its sandbox gives back what it held ...
  size_t now = OpenFds(server);
  auto settled = [&](size_t bound) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(kFloodTimeoutS);
    while ((now = OpenFds(server)) > bound && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return now <= bound;
  };
  const size_t silent_cost = HostDescriptorsPerSandbox();
  EXPECT_TRUE(settled(ready + silent_cost + kFdSlack))
      << now << " descriptors; " << ready << " before the floods";
  // ... and the silent one, which no message can reach through its jammed channel, gives
  // back its share when it ends.
  sbx_->server().Op(verb::delete_, "/v1/sessions/" + silent);
  sbx_->WaitForEnd(silent, kFloodTimeoutS);
  EXPECT_TRUE(settled(ready + kFdSlack))
      << now << " descriptors; " << ready << " before the floods";
  size_t highest = peak.Stop();
  EXPECT_LE(highest, ready + 2 * HostDescriptorsPerSandbox() + kFdSlack)
      << ready << " descriptors before the floods; " << flood.dump() << quiet.dump();
  EXPECT_GE(highest + kFdSlack, ready + flood["held"].get<size_t>())
      << "the count sees the held connections";
  PostMessage(*sbx_, asking, "stop");
  sbx_->WaitForEnd(asking, kFloodTimeoutS);
}
}  // namespace
}  // namespace airlock::testing
