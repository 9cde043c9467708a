// The pieces of the microvm backend that need no VM: the initramfs writer and the seccomp
// profile compiled for a guest's init.
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

#include <gtest/gtest.h>

#include "sandbox/cpio.h"
#include "sandbox/seccomp_bpf.h"
#include "sandbox/seccomp_profile.h"

namespace airlock::sandbox {
namespace {

struct Entry {
  std::string name;
  uint32_t mode = 0;
  std::string data;
};

// Reads a newc archive the way the kernel's initramfs unpacker does.
std::vector<Entry> ReadNewc(const std::string& a) {
  std::vector<Entry> out;
  size_t at = 0;
  auto field = [&](size_t i) { return std::stoul(a.substr(at + 6 + i * 8, 8), nullptr, 16); };
  while (at + 110 <= a.size()) {
    EXPECT_EQ(a.substr(at, 6), "070701");
    uint32_t mode = static_cast<uint32_t>(field(1));
    size_t size = field(6), name_size = field(11);
    std::string name = a.substr(at + 110, name_size - 1);
    EXPECT_EQ(a[at + 110 + name_size - 1], '\0');
    size_t data_at = (at + 110 + name_size + 3) & ~size_t{3};
    if (name == "TRAILER!!!") {
      EXPECT_EQ((data_at + size + 3) & ~size_t{3}, a.size());
      return out;
    }
    out.push_back({name, mode, a.substr(data_at, size)});
    at = (data_at + size + 3) & ~size_t{3};
  }
  ADD_FAILURE() << "no trailer";
  return out;
}

TEST(CpioWriterTest, WritesWhatTheKernelUnpacks) {
  CpioWriter w;
  w.AddDirectory("airlock", 0755);
  w.AddFile("airlock/args", std::string("a\0b", 3), 0600);
  w.AddFile("init", "12345", 0755);  // an odd size: padding follows
  std::string archive = w.Finish();
  auto entries = ReadNewc(archive);
  ASSERT_EQ(entries.size(), 3u);
  EXPECT_EQ(entries[0].name, "airlock");
  EXPECT_EQ(entries[0].mode, 040755u);
  EXPECT_EQ(entries[1].data, std::string("a\0b", 3));
  EXPECT_EQ(entries[1].mode, 0100600u);
  EXPECT_EQ(entries[2].data, "12345");
  // The same input, the same bytes; and the writer starts over after Finish.
  CpioWriter again;
  again.AddDirectory("airlock", 0755);
  again.AddFile("airlock/args", std::string("a\0b", 3), 0600);
  again.AddFile("init", "12345", 0755);
  EXPECT_EQ(again.Finish(), archive);
  w.AddFile("x", "y", 0644);
  EXPECT_EQ(ReadNewc(w.Finish()).size(), 1u);
}

// The compiled profile, installed in a child as a guest's init installs it for its agent:
// what the profile refuses fails with its errno, what it allows works.
TEST(SeccompBpfTest, TheCompiledProfileRefusesWhatTheProfileRefuses) {
  auto filter = CompileSeccompProfile(SandboxSeccompProfile());
  ASSERT_TRUE(filter.has_value()) << filter.error().message;
  ASSERT_EQ(filter->size() % sizeof(sock_filter), 0u);
  pid_t child = ::fork();
  if (child == 0) {
    sock_fprog prog{static_cast<unsigned short>(filter->size() / sizeof(sock_filter)),
                    reinterpret_cast<sock_filter*>(filter->data())};
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) ::_exit(10);
    if (::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) ::_exit(11);
    if (::getpid() <= 0) ::_exit(12);  // allowed
    // A mount point that does not exist: without the filter this fails with ENOENT, and
    // mounts nothing even as root.
    if (::syscall(SYS_mount, "none", "/nonexistent-airlock", "tmpfs", 0, nullptr) != -1 ||
        errno != EPERM) {
      ::_exit(13);
    }
    if (::syscall(SYS_clone3, nullptr, 0) != -1 || errno != ENOSYS) ::_exit(14);
    if (::socket(AF_VSOCK, SOCK_STREAM, 0) != -1 || errno != EPERM) ::_exit(15);
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);  // allowed family
    if (fd < 0) ::_exit(16);
    if (::syscall(SYS_unshare, 0x10000000 /* CLONE_NEWUSER */) != -1 || errno != EPERM) ::_exit(17);
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the step that failed: see the exit codes above";
}

TEST(SeccompBpfTest, RefusesWhatItCannotCompile) {
  EXPECT_FALSE(CompileSeccompProfile(Json::object()).has_value());
  Json bad = SandboxSeccompProfile();
  bad["syscalls"][0]["action"] = "SCMP_ACT_TRACE";
  EXPECT_FALSE(CompileSeccompProfile(bad).has_value());
}

}  // namespace
}  // namespace airlock::sandbox
