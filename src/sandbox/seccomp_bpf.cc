#include "sandbox/seccomp_bpf.h"

#include <seccomp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

namespace airlock::sandbox {
namespace {

Result<uint32_t> Action(const std::string& name, const Json& errno_ret) {
  if (name == "SCMP_ACT_ALLOW") return SCMP_ACT_ALLOW;
  if (name == "SCMP_ACT_KILL" || name == "SCMP_ACT_KILL_THREAD") return SCMP_ACT_KILL_THREAD;
  if (name == "SCMP_ACT_KILL_PROCESS") return SCMP_ACT_KILL_PROCESS;
  if (name == "SCMP_ACT_ERRNO") {
    int err = errno_ret.is_number_integer() ? errno_ret.get<int>() : EPERM;
    if (err < 0 || err > 4095)
      return Errorf(ErrorCode::kInvalidArgument, "seccomp: errnoRet {}", err);
    return SCMP_ACT_ERRNO(static_cast<uint16_t>(err));
  }
  return Errorf(ErrorCode::kInvalidArgument, "seccomp: unsupported action {}", name);
}

Result<scmp_compare> Op(const std::string& name) {
  static constexpr std::pair<const char*, scmp_compare> kOps[] = {
      {"SCMP_CMP_NE", SCMP_CMP_NE},
      {"SCMP_CMP_LT", SCMP_CMP_LT},
      {"SCMP_CMP_LE", SCMP_CMP_LE},
      {"SCMP_CMP_EQ", SCMP_CMP_EQ},
      {"SCMP_CMP_GE", SCMP_CMP_GE},
      {"SCMP_CMP_GT", SCMP_CMP_GT},
      {"SCMP_CMP_MASKED_EQ", SCMP_CMP_MASKED_EQ}};
  for (const auto& [n, op] : kOps) {
    if (name == n) return op;
  }
  return Errorf(ErrorCode::kInvalidArgument, "seccomp: unsupported comparison {}", name);
}

}  // namespace

Result<std::string> CompileSeccompProfile(const Json& profile) {
  if (!profile.is_object() || !profile.contains("syscalls")) {
    return MakeError(ErrorCode::kInvalidArgument, "seccomp: not a profile");
  }
  AIRLOCK_ASSIGN_OR_RETURN(
      uint32_t default_action,
      Action(profile.value("defaultAction", ""), profile.value("defaultErrnoRet", Json(EPERM))));
  std::unique_ptr<void, void (*)(scmp_filter_ctx)> ctx(seccomp_init(default_action),
                                                       seccomp_release);
  if (!ctx) return MakeError(ErrorCode::kInternal, "seccomp_init failed");
  for (const auto& rule : profile["syscalls"]) {
    AIRLOCK_ASSIGN_OR_RETURN(uint32_t action,
                             Action(rule.value("action", ""), rule.value("errnoRet", Json(EPERM))));
    std::vector<scmp_arg_cmp> args;
    for (const auto& a : rule.value("args", Json::array())) {
      AIRLOCK_ASSIGN_OR_RETURN(scmp_compare op, Op(a.value("op", "")));
      args.push_back(scmp_arg_cmp{a.value("index", 0u), op, a.value("value", uint64_t{0}),
                                  a.value("valueTwo", uint64_t{0})});
    }
    for (const auto& name : rule.value("names", Json::array())) {
      int nr = seccomp_syscall_resolve_name(name.get<std::string>().c_str());
      if (nr == __NR_SCMP_ERROR) continue;
      // A rule whose action is the default's adds nothing (libseccomp refuses it: EACCES).
      if (action == default_action) continue;
      int rc = seccomp_rule_add_array(ctx.get(), action, nr, static_cast<unsigned>(args.size()),
                                      args.data());
      if (rc != 0) {
        return Errorf(ErrorCode::kInternal, "seccomp: rule for {}: {}", name.get<std::string>(),
                      std::strerror(-rc));
      }
    }
  }
  int fd = ::memfd_create("seccomp-bpf", MFD_CLOEXEC);
  if (fd < 0) return Errorf(ErrorCode::kInternal, "memfd_create: {}", std::strerror(errno));
  std::string out;
  if (int rc = seccomp_export_bpf(ctx.get(), fd); rc != 0) {
    ::close(fd);
    return Errorf(ErrorCode::kInternal, "seccomp_export_bpf: {}", std::strerror(-rc));
  }
  off_t size = ::lseek(fd, 0, SEEK_END);
  out.resize(static_cast<size_t>(std::max<off_t>(size, 0)));
  ssize_t n = ::pread(fd, out.data(), out.size(), 0);
  ::close(fd);
  if (n != static_cast<ssize_t>(out.size()) || out.empty()) {
    return MakeError(ErrorCode::kInternal, "seccomp: reading the exported filter failed");
  }
  return out;
}

}  // namespace airlock::sandbox
