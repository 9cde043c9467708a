#include "controlplane/home_lock.h"

#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include <gtest/gtest.h>

namespace airlock::controlplane {
namespace {

class HomeLockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "airlock-home-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    home_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(home_); }
  std::string home_;
};

TEST_F(HomeLockTest, ASecondHolderIsRefusedWithThePidOfTheFirst) {
  auto first = HomeLock::Acquire(home_);
  ASSERT_TRUE(first.has_value()) << first.error().message;
  auto second = HomeLock::Acquire(home_);
  ASSERT_FALSE(second.has_value());
  EXPECT_EQ(second.error().code, ErrorCode::kConflict);
  EXPECT_NE(
      second.error().message.find("another airlock serve (pid " + std::to_string(::getpid()) + ")"),
      std::string::npos)
      << second.error().message;
  EXPECT_NE(second.error().message.find(home_), std::string::npos);
}

TEST_F(HomeLockTest, TheLockGoesWithItsHolder) {
  { auto first = HomeLock::Acquire(home_); }
  EXPECT_TRUE(HomeLock::Acquire(home_).has_value());
}

TEST_F(HomeLockTest, AProcessStartedByTheHolderDoesNotKeepTheHomeLocked) {
  auto lock = HomeLock::Acquire(home_);
  ASSERT_TRUE(lock.has_value());
  // A child that execs (as a sandbox runtime does) and outlives the lock's holder.
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  pid_t child = ::fork();
  if (child == 0) {
    ::close(ready[0]);
    ::dup2(ready[1], 1);
    ::execl("/bin/sh", "sh", "-c", "echo up; exec sleep 30", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(ready[1]);
  char c;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ::close(ready[0]);
  *lock = HomeLock();  // the holder lets go (as a server that exits); the child still runs
  auto next = HomeLock::Acquire(home_);
  EXPECT_TRUE(next.has_value()) << (next ? "" : next.error().message);
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
}

}  // namespace
}  // namespace airlock::controlplane
