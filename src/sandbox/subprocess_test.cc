#include "sandbox/subprocess.h"

#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

namespace airlock::sandbox {
namespace {

const std::vector<std::string> kEnv = {"PATH=/usr/bin:/bin"};

TEST(RunCommand, CapturesOutputAndExitCode) {
  auto r = RunCommand({"sh", "-c", "echo out; echo err >&2; exit 3"}, kEnv);
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_NE(r->output.find("out"), std::string::npos);
  EXPECT_NE(r->output.find("err"), std::string::npos);
}

TEST(RunCommand, TheChildGetsExactlyTheGivenEnvironment) {
  ::setenv("AIRLOCK_TEST_SECRET", "do-not-leak", 1);
  auto r = RunCommand({"env"}, {"PATH=/usr/bin:/bin", "ONLY=this"});
  ::unsetenv("AIRLOCK_TEST_SECRET");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->output, "PATH=/usr/bin:/bin\nONLY=this\n");
}

TEST(RunCommand, KillsAChildThatOutlivesItsTimeout) {
  CommandOptions o;
  o.timeout = std::chrono::milliseconds(200);
  auto r = RunCommand({"sleep", "30"}, kEnv, o);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kDeadlineExceeded);
}

TEST(RunCommand, TimeoutHoldsWhenOutputIsRedirected) {
  int fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  CommandOptions o;
  o.stdout_fd = o.stderr_fd = fd;
  o.timeout = std::chrono::milliseconds(200);
  auto r = RunCommand({"sleep", "30"}, kEnv, o);
  ::close(fd);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kDeadlineExceeded);
}

TEST(RunCommand, PassesExtraFdsAndNothingElse) {
  int p[2];
  ASSERT_EQ(::pipe2(p, 0), 0);  // deliberately not close-on-exec: must still not leak
  int leak = ::open("/dev/null", O_RDONLY);
  CommandOptions o;
  o.extra_fds = {p[0]};
  ASSERT_EQ(::write(p[1], "hi", 2), 2);
  ::close(p[1]);
  auto r = RunCommand({"sh", "-c", "cat <&3; ls /proc/self/fd | sort -n | tr '\\n' ' '"}, kEnv, o);
  ::close(p[0]);
  ::close(leak);
  ASSERT_TRUE(r.has_value());
  // 0-2, 3 (the pipe), and the fd ls opens to read the directory.
  EXPECT_EQ(r->output, "hi0 1 2 3 4 ");
}

TEST(RunCommand, UnknownProgram) {
  auto r = RunCommand({"no-such-program-airlock"}, kEnv);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
}

TEST(RunCommand, OutputIsCapped) {
  CommandOptions o;
  o.max_output = 1000;
  auto r = RunCommand({"sh", "-c", "head -c 100000 /dev/zero"}, kEnv, o);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->output.size(), 1000u);
  EXPECT_EQ(r->exit_code, 0);
}

}  // namespace
}  // namespace airlock::sandbox
