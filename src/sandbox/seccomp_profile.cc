#include "sandbox/seccomp_profile.h"

#include <initializer_list>

namespace airlock::sandbox {
namespace {

// Allowed without conditions. Sorted; keep it that way.
//
// Left out on purpose (EPERM through the default action), beyond Docker's list: the native AIO
// family (io_setup and friends), whose contexts count against fs.aio-max-nr, one limit for the
// whole host that one sandbox could take; and sync/syncfs, which make the host write back every
// filesystem's dirty pages. fsync, fdatasync and sync_file_range only touch the caller's file.
constexpr std::initializer_list<const char*> kAllowed = {
    "accept",
    "accept4",
    "access",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "futex_waitv",
    "futimesat",
    "get_robust_list",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "kill",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "madvise",
    "membarrier",
    "memfd_create",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_getfd",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "pselect6",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_tid_address",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync_file_range",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "times",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "write",
    "writev",
};

// CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
// CLONE_NEWNET
constexpr uint64_t kCloneNamespaceFlags =
    0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000;
constexpr int kAfUnix = 1;
constexpr int kAfInet = 2;
constexpr int kAfInet6 = 10;
constexpr int kAfNetlink = 16;
constexpr int kNetlinkRoute = 0;     // addresses and routes: getaddrinfo, ip
constexpr int kNetlinkSockDiag = 4;  // the sandbox's own sockets: ss
constexpr int kEnosys = 38;
constexpr int kEperm = 1;

Json Rule(std::initializer_list<const char*> names, Json args = Json::array()) {
  Json n = Json::array();
  for (const char* s : names) n.push_back(s);
  Json r = {{"names", n}, {"action", "SCMP_ACT_ALLOW"}};
  if (!args.empty()) r["args"] = std::move(args);
  return r;
}

Json Arg(int index, uint64_t value, const char* op, uint64_t value_two = 0) {
  Json a = {{"index", index}, {"value", value}, {"op", op}};
  if (value_two) a["valueTwo"] = value_two;
  return a;
}

}  // namespace

Json SandboxSeccompProfile() {
  Json syscalls = Json::array();
  syscalls.push_back(Rule(kAllowed));
  // clone(flags, ...): any flags but those that create namespaces.
  syscalls.push_back(
      Rule({"clone"}, Json::array({Arg(0, kCloneNamespaceFlags, "SCMP_CMP_MASKED_EQ", 0)})));
  // The filter cannot see clone3's flags (they sit in memory); ENOSYS makes libc use clone.
  syscalls.push_back({{"names", {"clone3"}}, {"action", "SCMP_ACT_ERRNO"}, {"errnoRet", kEnosys}});
  // personality: PER_LINUX, PER_LINUX32, UNAME26 variants and the query value only.
  for (uint64_t p : {0x0ULL, 0x8ULL, 0x20000ULL, 0x20008ULL, 0xffffffffULL}) {
    syscalls.push_back(Rule({"personality"}, Json::array({Arg(0, p, "SCMP_CMP_EQ")})));
  }
  // socket: the families an agent uses, nothing else. Every other family (AF_ALG, AF_TIPC,
  // AF_RDS, AF_VSOCK, AF_CAN, ...) is kernel code, often loaded on demand by the socket call
  // itself, that has held exploitable bugs and that no agent needs; netlink only to read its
  // own addresses, routes and sockets. socketpair: AF_UNIX only (AF_TIPC has one too).
  for (int family : {kAfUnix, kAfInet, kAfInet6}) {
    syscalls.push_back(Rule({"socket"}, Json::array({Arg(0, family, "SCMP_CMP_EQ")})));
  }
  for (int protocol : {kNetlinkRoute, kNetlinkSockDiag}) {
    syscalls.push_back(Rule({"socket"}, Json::array({Arg(0, kAfNetlink, "SCMP_CMP_EQ"),
                                                     Arg(2, protocol, "SCMP_CMP_EQ")})));
  }
  syscalls.push_back(Rule({"socketpair"}, Json::array({Arg(0, kAfUnix, "SCMP_CMP_EQ")})));
  Json arches = Json::array();
#if defined(__x86_64__)
  arches.push_back("SCMP_ARCH_X86_64");
#elif defined(__aarch64__)
  arches.push_back("SCMP_ARCH_AARCH64");
#endif
  return {{"defaultAction", "SCMP_ACT_ERRNO"},
          {"defaultErrnoRet", kEperm},
          {"architectures", arches},
          {"syscalls", syscalls}};
}

}  // namespace airlock::sandbox
