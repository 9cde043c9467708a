// The agent's process made before its session is known (agent.h, PreparedAgent): what it is
// while it waits, what reaches it, and that it never outlives being let go.
#include "agent.h"

#include <fcntl.h>
#include <linux/filter.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>

#include <gtest/gtest.h>

namespace airlock::init {
namespace {

bool IsRoot() { return ::geteuid() == 0; }

// The "Key:\tvalue" line of /proc/PID/status ("" when there is none).
std::string StatusField(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with(key + ":")) {
      size_t at = line.find_first_not_of(" \t", key.size() + 1);
      return at == std::string::npos ? "" : line.substr(at);
    }
  }
  return "";
}

// What /proc/PID/fd/* point at.
std::set<std::string> OpenFiles(pid_t pid) {
  std::set<std::string> out;
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd/";
  for (int fd = 0; fd < 1024; ++fd) {
    char target[256];
    ssize_t n = ::readlink((dir + std::to_string(fd)).c_str(), target, sizeof(target) - 1);
    if (n > 0) out.insert(std::to_string(fd) + " " + std::string(target, static_cast<size_t>(n)));
  }
  return out;
}

std::string LinkOf(int fd) {
  char target[256];
  ssize_t n =
      ::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), target, sizeof(target) - 1);
  return n > 0 ? std::string(target, static_cast<size_t>(n)) : "";
}

// The child blocks in read() (syscall 0) once it is ready for its launch.
void AwaitSleeping(pid_t pid) {
  const std::string syscall = "/proc/" + std::to_string(pid) + "/syscall";
  bool waiting = false;
  for (int i = 0; i < 2500 && !waiting; ++i) {
    std::ifstream in(syscall);
    std::string nr;
    waiting = (in >> nr) && nr == "0" && StatusField(pid, "State").starts_with("S");
    if (!waiting) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_TRUE(waiting) << "the child did not come to wait for its launch";
}

class PreparedAgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/airlock-agent-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ::chmod(dir_.c_str(), 0755);
    int out[2];
    ASSERT_EQ(::pipe2(out, O_CLOEXEC), 0);
    out_read_.Reset(out[0]);
    out_write_.Reset(out[1]);
    base_.workdir = dir_;
    base_.home = "/";
    base_.uid = IsRoot() ? 65534 : ::geteuid();
    base_.gid = IsRoot() ? 65534 : ::getegid();
    base_.switch_ids = IsRoot();
    base_.output_fd = out_write_.get();
    ::getrlimit(RLIMIT_NOFILE, &base_.nofile);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Everything the agent wrote, once every holder of the pipe's write end is gone.
  std::string Output() {
    out_write_.Reset();
    std::string all;
    char buf[4096];
    for (ssize_t n; (n = ::read(out_read_.get(), buf, sizeof(buf))) > 0;) {
      all.append(buf, static_cast<size_t>(n));
    }
    return all;
  }

  static int Reap(pid_t pid) {
    int status = 0;
    EXPECT_EQ(::waitpid(pid, &status, 0), pid);
    return status;
  }

  std::string dir_;
  UniqueFd out_read_, out_write_;
  AgentBase base_;
};

// While it waits it is already what the agent will be: its own session, its user, no
// capability, no_new_privs, in its working directory. The command line and environment
// that come later are exactly what the exec gets.
TEST_F(PreparedAgentTest, WaitsAsTheAgentAndExecsWhatItIsSent) {
  auto prepared = PreparedAgent::Prepare(base_);
  ASSERT_TRUE(prepared) << prepared.error();
  const pid_t pid = prepared->pid();
  AwaitSleeping(pid);
  EXPECT_EQ(::getsid(pid), pid);
  EXPECT_EQ(StatusField(pid, "NoNewPrivs"), "1");
  EXPECT_EQ(StatusField(pid, "CapEff"), "0000000000000000");
  EXPECT_EQ(StatusField(pid, "CapBnd"),
            IsRoot() ? "0000000000000000" : StatusField(::getpid(), "CapBnd"));
  const std::string uid = std::to_string(base_.uid);
  EXPECT_EQ(StatusField(pid, "Uid"), uid + "\t" + uid + "\t" + uid + "\t" + uid);
  char cwd[512];
  ssize_t n = ::readlink(("/proc/" + std::to_string(pid) + "/cwd").c_str(), cwd, sizeof(cwd) - 1);
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(cwd, static_cast<size_t>(n)), dir_);

  AgentLaunch launch;
  launch.command = {"sh", "-c", "echo \"$GREETING\" \"$#\" \"$1\"; pwd", "agent", "one arg"};
  launch.env = {"GREETING=hello there", "PATH=/usr/bin:/bin"};
  launch.path = "/nonexistent:/usr/bin:/bin";
  auto agent = prepared->Exec(launch);
  ASSERT_TRUE(agent) << agent.error();
  EXPECT_EQ(agent->pid, pid);
  EXPECT_EQ(agent->error, "");
  EXPECT_FALSE(agent->lost);
  EXPECT_EQ(Output(), "hello there 1 one arg\n" + dir_ + "\n");
  int status = Reap(pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

// A descriptor init left open without close-on-exec does not reach the waiting process,
// which may wait for minutes in a warm pool: it holds its stdio, the report pipe and the
// socket its launch comes over, nothing else.
TEST_F(PreparedAgentTest, TheWaitingProcessHoldsNothingOfItsParents) {
  int leak[2];
  ASSERT_EQ(::pipe(leak), 0);  // no O_CLOEXEC on purpose
  UniqueFd leak_read(leak[0]), leak_write(leak[1]);
  auto prepared = PreparedAgent::Prepare(base_);
  ASSERT_TRUE(prepared) << prepared.error();
  AwaitSleeping(prepared->pid());
  auto files = OpenFiles(prepared->pid());
  EXPECT_EQ(files.size(), 5u);
  for (const auto& f : files) {
    EXPECT_EQ(f.find(LinkOf(leak[0])), std::string::npos) << f;
    EXPECT_EQ(f.find(LinkOf(leak[1])), std::string::npos) << f;
  }
  EXPECT_TRUE(files.contains("0 /dev/null")) << ::testing::PrintToString(files);
}

// Let go without a launch (the session went elsewhere, init stopped): killed and reaped, not
// left waiting or as a zombie.
TEST_F(PreparedAgentTest, OneNeverLaunchedIsKilledAndReaped) {
  pid_t pid;
  {
    auto prepared = PreparedAgent::Prepare(base_);
    ASSERT_TRUE(prepared) << prepared.error();
    pid = prepared->pid();
    AwaitSleeping(pid);
    PreparedAgent moved = std::move(*prepared);  // the moved-from one lets nothing go
    EXPECT_EQ(::kill(pid, 0), 0);
  }
  EXPECT_EQ(::kill(pid, 0), -1);
  EXPECT_EQ(errno, ESRCH);
  EXPECT_EQ(::waitpid(pid, nullptr, WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD);
}

// Killed while it waited (the OOM killer picks it first): the exec says it is lost, reaped,
// and never taken for an agent that started.
TEST_F(PreparedAgentTest, OneKilledWhileItWaitedIsLostNotStarted) {
  auto prepared = PreparedAgent::Prepare(base_);
  ASSERT_TRUE(prepared) << prepared.error();
  const pid_t pid = prepared->pid();
  AwaitSleeping(pid);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  auto agent = prepared->Exec(AgentLaunch{{"/bin/true"}, {}, "/bin"});
  ASSERT_TRUE(agent) << agent.error();
  EXPECT_TRUE(agent->lost);
  EXPECT_EQ(agent->pid, -1);
  EXPECT_EQ(::waitpid(pid, nullptr, WNOHANG), -1);  // reaped already
  EXPECT_EQ(errno, ECHILD);
}

// A step that fails before the wait is reported when the launch comes, by name.
TEST_F(PreparedAgentTest, AStepThatFailedIsReportedByTheExec) {
  base_.seccomp_filter = std::string(sizeof(sock_filter), '\xff');  // not a BPF program
  auto prepared = PreparedAgent::Prepare(base_);
  ASSERT_TRUE(prepared) << prepared.error();
  const pid_t pid = prepared->pid();
  AgentLaunch launch{{"/bin/true"}, {}, "/bin"};
  auto agent = prepared->Exec(launch);
  ASSERT_TRUE(agent) << agent.error();
  EXPECT_EQ(agent->error, "installing the seccomp filter: Invalid argument");
  int status = Reap(pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 127) << status;
}

TEST_F(PreparedAgentTest, ACommandThatIsNowhereIsReportedAsNotFound) {
  auto prepared = PreparedAgent::Prepare(base_);
  ASSERT_TRUE(prepared) << prepared.error();
  const pid_t pid = prepared->pid();
  auto agent = prepared->Exec(AgentLaunch{{"no-such-agent"}, {}, "/nonexistent:/also-not"});
  ASSERT_TRUE(agent) << agent.error();
  EXPECT_EQ(agent->error, "exec no-such-agent: No such file or directory");
  int status = Reap(pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 127) << status;
}

// More than the child has room for is refused whole before anything is sent: the child,
// told nothing, exits 127, as after an exec the kernel refused for its size.
TEST_F(PreparedAgentTest, ALaunchLargerThanTheChildTakesIsAStartError) {
  for (bool too_many_strings : {false, true}) {
    auto prepared = PreparedAgent::Prepare(base_);
    ASSERT_TRUE(prepared) << prepared.error();
    const pid_t pid = prepared->pid();
    AgentLaunch launch{{"/bin/true"}, {}, "/bin"};
    if (too_many_strings) {
      launch.env.assign(PreparedAgent::kMaxLaunchStrings - 1, "A=1");  // + command, candidate
    } else {
      launch.env.push_back(std::string(PreparedAgent::kMaxLaunchBytes - 19, 'x'));
    }
    auto agent = prepared->Exec(launch);
    ASSERT_TRUE(agent) << agent.error();
    EXPECT_EQ(agent->pid, pid);
    EXPECT_NE(agent->error.find("at most"), std::string::npos) << agent->error;
    int status = Reap(pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 127) << status;
  }
  auto prepared = PreparedAgent::Prepare(base_);
  ASSERT_TRUE(prepared) << prepared.error();
  const pid_t pid = prepared->pid();
  EXPECT_FALSE(prepared->Exec(AgentLaunch{}));
  EXPECT_EQ(::kill(pid, 0), -1);  // killed and reaped
}

// Right at the limits the child takes it all, and each string arrives whole; what the
// kernel refuses (one string over 128 KiB) is the exec's error.
TEST_F(PreparedAgentTest, ALaunchAtTheLimitsArrivesWhole) {
  {
    auto prepared = PreparedAgent::Prepare(base_);
    ASSERT_TRUE(prepared) << prepared.error();
    const pid_t pid = prepared->pid();
    // Linux takes at most 128 KiB in one string (MAX_ARG_STRLEN) and a quarter of the stack
    // limit in all: many strings of 100 KiB, under both.
    AgentLaunch launch{{"sh", "-c", "echo ${#V1} ${#V9}"}, {}, "/bin:/usr/bin"};
    for (int i = 0; i < 10; ++i) {
      launch.env.push_back("V" + std::to_string(i) + "=" + std::string(100 << 10, 'a' + i));
    }
    auto agent = prepared->Exec(launch);
    ASSERT_TRUE(agent) << agent.error();
    EXPECT_EQ(agent->error, "");
    EXPECT_EQ(Output(), std::to_string(100 << 10) + " " + std::to_string(100 << 10) + "\n");
    Reap(pid);
  }
  {
    // Exactly kMaxLaunchStrings: the command, its one candidate and the environment.
    auto prepared = PreparedAgent::Prepare(base_);
    ASSERT_TRUE(prepared) << prepared.error();
    const pid_t pid = prepared->pid();
    AgentLaunch launch{{"/bin/true"}, {}, "/bin"};
    launch.env.assign(PreparedAgent::kMaxLaunchStrings - 2, "A=1");
    auto agent = prepared->Exec(launch);
    ASSERT_TRUE(agent) << agent.error();
    EXPECT_EQ(agent->error, "");
    int status = Reap(pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  }
  {
    // Exactly kMaxLaunchBytes: received whole, refused by the kernel.
    auto prepared = PreparedAgent::Prepare(base_);
    ASSERT_TRUE(prepared) << prepared.error();
    const pid_t pid = prepared->pid();
    AgentLaunch launch{{"/bin/true"}, {}, "/bin"};
    launch.env.push_back(std::string(PreparedAgent::kMaxLaunchBytes - 21, 'x'));
    auto agent = prepared->Exec(launch);
    ASSERT_TRUE(agent) << agent.error();
    EXPECT_EQ(agent->error, "exec /bin/true: Argument list too long");
    Reap(pid);
  }
}

TEST(AgentBaseTest, SameAsComparesAllButTheOutputDescriptor) {
  AgentBase a;
  a.workdir = "/w";
  a.home = "/h";
  a.uid = 1000;
  a.gid = 1000;
  a.nofile = {1024, 4096};
  a.seccomp_filter = "12345678";
  a.output_fd = 3;
  AgentBase b = a;
  b.output_fd = 9;
  EXPECT_TRUE(a.SameAs(b));
  for (auto change : std::initializer_list<void (*)(AgentBase&)>{
           [](AgentBase& x) { x.workdir = "/x"; }, [](AgentBase& x) { x.home = "/x"; },
           [](AgentBase& x) { x.uid = 1; }, [](AgentBase& x) { x.gid = 1; },
           [](AgentBase& x) { x.switch_ids = false; }, [](AgentBase& x) { x.nofile.rlim_cur = 1; },
           [](AgentBase& x) { x.nofile.rlim_max = 1; },
           [](AgentBase& x) { x.seccomp_filter = "87654321"; }}) {
    AgentBase c = a;
    change(c);
    EXPECT_FALSE(a.SameAs(c));
  }
}

}  // namespace
}  // namespace airlock::init
