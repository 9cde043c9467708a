#include "sandbox/oci_spec.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "sandbox/backend_oci.h"
#include "sandbox/seccomp_profile.h"

namespace airlock::sandbox {
namespace {

OciBundleParams Params() {
  OciBundleParams p;
  p.rootfs = "/images/sha256/abc/rootfs";
  p.init_host_path = "/opt/airlock/airlock-init";
  p.channel_host_dir = "/home/airlock/run/ses_1";
  p.command = {"/bin/sh", "-c", "echo hi"};
  p.env = {"SESSION_ID=ses_1", "SESSION_TOKEN=ast_secret",
           "CONTROL_PLANE_URL=http://127.0.0.1:7401", "PATH=/bin"};
  p.bridge_port = 7401;
  p.memory_bytes = 256 << 20;
  p.pids = 64;
  p.cpus = 0.5;
  p.tmp_bytes = 32 << 20;
  p.cgroups_path = "/airlock/airlock-ses_1";
  return p;
}

const Json* FindMount(const Json& spec, const std::string& dest) {
  for (const auto& m : spec["mounts"]) {
    if (m["destination"] == dest) return &m;
  }
  return nullptr;
}

bool Has(const Json& array, const std::string& value) {
  return std::find(array.begin(), array.end(), Json(value)) != array.end();
}

TEST(OciSpec, NamespacesRootAndProcess) {
  Json s = BuildOciConfig(Params());
  std::vector<std::string> ns;
  for (const auto& n : s["linux"]["namespaces"]) ns.push_back(n["type"]);
  EXPECT_EQ(ns, (std::vector<std::string>{"pid", "network", "ipc", "uts", "mount", "cgroup"}));
  EXPECT_TRUE(s["root"]["readonly"].get<bool>());
  EXPECT_EQ(s["root"]["path"], "/images/sha256/abc/rootfs");
  EXPECT_TRUE(s["process"]["noNewPrivileges"].get<bool>());
  EXPECT_FALSE(s["process"]["terminal"].get<bool>());
  // init: exactly the capabilities it needs to become the agent's user; none inheritable.
  Json caps = s["process"]["capabilities"];
  EXPECT_EQ(caps["bounding"], Json({"CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_KILL"}));
  EXPECT_TRUE(caps["inheritable"].empty());
  EXPECT_TRUE(caps["ambient"].empty());
  Json args = s["process"]["args"];
  EXPECT_EQ(args[0], kInitInSandbox);
  auto dd = std::find(args.begin(), args.end(), Json("--"));
  ASSERT_NE(dd, args.end());
  EXPECT_EQ(Json(std::vector<Json>(dd + 1, args.end())), Json({"/bin/sh", "-c", "echo hi"}));
  // The token travels in init's environment only, never on a command line.
  EXPECT_EQ(s["process"]["args"].dump().find("ast_secret"), std::string::npos);
  EXPECT_TRUE(Has(s["process"]["env"], "SESSION_TOKEN=ast_secret"));
}

TEST(OciSpec, WritableOnlyWhereMeantAndCapped) {
  Json s = BuildOciConfig(Params());
  for (const char* dest : {"/tmp", "/home/sandbox", "/run"}) {
    const Json* m = FindMount(s, dest);
    ASSERT_NE(m, nullptr) << dest;
    EXPECT_EQ((*m)["type"], "tmpfs");
    bool sized = std::any_of((*m)["options"].begin(), (*m)["options"].end(), [](const Json& o) {
      return o.get<std::string>().starts_with("size=");
    });
    EXPECT_TRUE(sized) << dest;
    EXPECT_TRUE(Has((*m)["options"], "nosuid")) << dest;
  }
  EXPECT_TRUE(Has((*FindMount(s, "/tmp"))["options"], "size=32768k"));
  EXPECT_TRUE(Has((*FindMount(s, "/home/sandbox"))["options"], "uid=1000,gid=1000"));
  EXPECT_TRUE(Has((*FindMount(s, "/sys"))["options"], "ro"));
  EXPECT_TRUE(Has((*FindMount(s, kInitInSandbox))["options"], "ro"));
  EXPECT_TRUE(Has((*FindMount(s, kChannelDirInSandbox))["options"], "ro"));
  EXPECT_EQ((*FindMount(s, kChannelDirInSandbox))["source"], "/home/airlock/run/ses_1");
  EXPECT_TRUE(Has(s["linux"]["maskedPaths"], "/proc/kcore"));
  EXPECT_TRUE(Has(s["linux"]["readonlyPaths"], "/proc/sys"));
  EXPECT_TRUE(Has(s["linux"]["readonlyPaths"], "/proc/sysrq-trigger"));
}

TEST(OciSpec, AnImagesWorkingDirectoryOnTheImageBecomesWritableWithItsContent) {
  OciBundleParams p = Params();
  p.workdir = "/app";
  p.fetch_work = true;
  p.image_env = {"APP_MODE=image"};
  Json s = BuildOciConfig(p);
  const Json* app = FindMount(s, "/app");
  ASSERT_NE(app, nullptr);
  EXPECT_EQ((*app)["type"], "tmpfs");
  EXPECT_TRUE(Has((*app)["options"], "tmpcopyup")) << "the image's files stay visible";
  EXPECT_TRUE(Has((*app)["options"], "size=32768k"));
  EXPECT_TRUE(Has((*app)["options"], "uid=1000,gid=1000"));
  EXPECT_TRUE(Has((*app)["options"], "nosuid"));
  // init is told to take the session's work, and the image's variables (before "--").
  Json args = s["process"]["args"];
  auto dd = std::find(args.begin(), args.end(), Json("--"));
  std::vector<Json> init_args(args.begin(), dd);
  EXPECT_NE(std::find(init_args.begin(), init_args.end(), Json("--work")), init_args.end());
  EXPECT_NE(std::find(init_args.begin(), init_args.end(), Json("APP_MODE=image")), init_args.end());
  // Places that are writable already, or that the sandbox's own mounts hold, get none.
  for (const char* dir : {"/home/sandbox", "/home/sandbox/work", "/tmp", "/tmp/x", "/", "",
                          "/proc/self", "/run", "/.airlock", "/etc", "/app/../etc", "relative"}) {
    EXPECT_FALSE(WorkdirNeedsItsOwnMount(dir)) << dir;
  }
  for (const char* dir : {"/app", "/srv/agent", "/home/node", "/workspace", "/tmpx", "/runner"}) {
    EXPECT_TRUE(WorkdirNeedsItsOwnMount(dir)) << dir;
  }
}

TEST(OciSpec, EveryCgroupV1HierarchyIsReadOnly) {
  // crun's read-only bind of /sys/fs/cgroup copies the controller mounts read-write.
  auto p = Params();
  p.cgroup_v1_dirs = {"memory", "systemd"};
  Json ro = BuildOciConfig(p)["linux"]["readonlyPaths"];
  EXPECT_TRUE(Has(ro, "/sys/fs/cgroup"));
  EXPECT_TRUE(Has(ro, "/sys/fs/cgroup/memory"));
  EXPECT_TRUE(Has(ro, "/sys/fs/cgroup/systemd"));
}

TEST(OciSpec, Limits) {
  Json r = BuildOciConfig(Params())["linux"]["resources"];
  EXPECT_EQ(r["memory"]["limit"], 256 << 20);
  EXPECT_EQ(r["memory"]["swap"], 256 << 20);
  EXPECT_EQ(r["pids"]["limit"], 64);
  EXPECT_EQ(r["cpu"]["quota"], 50000);
  EXPECT_EQ(r["cpu"]["period"], 100000);
  EXPECT_EQ(r["devices"][0]["allow"], false);
  EXPECT_EQ(BuildOciConfig(Params())["linux"]["cgroupsPath"], "/airlock/airlock-ses_1");
}

TEST(OciSpec, TcpBuffersAreBoundedPerSocketAndChargedOnCgroupV1) {
  auto p = Params();
  Json s = BuildOciConfig(p);
  EXPECT_EQ(s["linux"]["sysctl"]["net.ipv4.tcp_rmem"], kSandboxTcpRmem);
  EXPECT_EQ(s["linux"]["sysctl"]["net.ipv4.tcp_wmem"], kSandboxTcpWmem);
  EXPECT_FALSE(s["linux"]["resources"]["memory"].contains("kernelTCP"))
      << "v2: charged to memory by the kernel";
  p.kernel_tcp_bytes = 256 << 20;
  EXPECT_EQ(BuildOciConfig(p)["linux"]["resources"]["memory"]["kernelTCP"], 256 << 20);
}

TEST(OciSpec, TheAgentsUidIsReadBackFromTheConfig) {
  auto p = Params();
  p.agent_uid = 2147000042;
  p.agent_gid = 2147000042;
  p.command = {"/bin/prog", "--uid", "7"};  // the agent's own argv does not count
  Json s = BuildOciConfig(p);
  EXPECT_EQ(AgentUidOf(s), 2147000042u);
  EXPECT_TRUE(Has((*FindMount(s, "/home/sandbox"))["options"], "uid=2147000042,gid=2147000042"));
  EXPECT_FALSE(AgentUidOf(Json::object()).has_value());
  EXPECT_FALSE(AgentUidOf(Json{{"process", {{"args", {"/.airlock/init", "--", "--uid", "7"}}}}})
                   .has_value());
  EXPECT_FALSE(
      AgentUidOf(Json{{"process", {{"args", {"/.airlock/init", "--uid", "x"}}}}}).has_value());
}

TEST(OciSpec, InitAsksForItsIdentityOverTheChannelWhenToldTo) {
  auto p = Params();
  p.env = {"PATH=/bin"};
  p.identity_over_channel = true;
  Json s = BuildOciConfig(p);
  Json args = s["process"]["args"];
  auto flag = std::find(args.begin(), args.end(), Json("--identity"));
  auto dd = std::find(args.begin(), args.end(), Json("--"));
  ASSERT_NE(flag, args.end());
  ASSERT_LT(flag, dd) << "an option of init's, not of the agent's argv";
  EXPECT_EQ(*(flag + 1), "channel");
  EXPECT_EQ(s["process"]["env"], Json({"PATH=/bin"}));
  Json plain = BuildOciConfig(Params())["process"]["args"];
  EXPECT_EQ(std::find(plain.begin(), plain.end(), Json("--identity")), plain.end());
}

TEST(OciSpec, PasswdAndGroupAreBoundReadOnlyWhenGiven) {
  auto p = Params();
  EXPECT_EQ(FindMount(BuildOciConfig(p), "/etc/passwd"), nullptr);
  p.passwd_host_path = "/work/ses_1/bundle/passwd";
  p.group_host_path = "/work/ses_1/bundle/group";
  Json s = BuildOciConfig(p);
  for (const char* d : {"/etc/passwd", "/etc/group"}) {
    const Json* m = FindMount(s, d);
    ASSERT_NE(m, nullptr) << d;
    EXPECT_TRUE(Has((*m)["options"], "ro"));
  }
  EXPECT_EQ((*FindMount(s, "/etc/passwd"))["source"], "/work/ses_1/bundle/passwd");
}

TEST(OciSpec, HostImageBindsAreReadOnly) {
  auto p = Params();
  p.host_binds = {"/usr", "/lib64"};
  Json s = BuildOciConfig(p);
  for (const char* d : {"/usr", "/lib64"}) {
    const Json* m = FindMount(s, d);
    ASSERT_NE(m, nullptr);
    EXPECT_EQ((*m)["source"], d);
    EXPECT_TRUE(Has((*m)["options"], "ro"));
  }
}

TEST(OciSpec, RootlessAddsAUserNamespaceAndNoCgroupMount) {
  auto p = Params();
  p.rootless = true;
  p.uid_mappings = {{0, 1234, 1}};
  p.gid_mappings = {{0, 1234, 1}};
  p.mount_cgroupfs = false;
  Json s = BuildOciConfig(p);
  EXPECT_EQ(s["linux"]["namespaces"].back()["type"], "user");
  EXPECT_EQ(s["linux"]["uidMappings"][0]["hostID"], 1234);
  EXPECT_EQ(FindMount(s, "/sys/fs/cgroup"), nullptr);
}

TEST(SeccompProfile, DeniesByDefaultAndLeavesOutTheDangerousCalls) {
  Json p = SandboxSeccompProfile();
  EXPECT_EQ(p["defaultAction"], "SCMP_ACT_ERRNO");
  std::set<std::string> allowed_unconditionally;
  for (const auto& rule : p["syscalls"]) {
    if (rule["action"] != "SCMP_ACT_ALLOW" || rule.contains("args")) continue;
    for (const auto& n : rule["names"]) allowed_unconditionally.insert(n);
  }
  EXPECT_TRUE(allowed_unconditionally.count("read"));
  for (const char* own : {"fsync", "fdatasync", "sync_file_range"})
    EXPECT_TRUE(allowed_unconditionally.count(own));
  for (const char* bad :
       {"mount", "umount2", "pivot_root", "chroot", "ptrace", "bpf", "keyctl", "add_key",
        "request_key", "unshare", "setns", "kexec_load", "kexec_file_load", "perf_event_open",
        "init_module", "finit_module", "delete_module", "open_by_handle_at", "userfaultfd",
        "process_vm_readv", "process_vm_writev", "fsopen", "fsmount", "move_mount", "open_tree",
        "io_uring_setup", "swapon", "reboot", "settimeofday", "clock_settime", "syslog", "acct",
        "quotactl", "iopl", "ioperm", "clone", "clone3", "personality", "socket", "socketpair",
        "kcmp",
        // Host-wide resources: the AIO contexts of fs.aio-max-nr, and writeback.
        "io_setup", "io_submit", "io_getevents", "io_pgetevents", "io_cancel", "io_destroy", "sync",
        "syncfs"}) {
    EXPECT_FALSE(allowed_unconditionally.count(bad)) << bad;
  }
  // socket: only AF_UNIX, AF_INET, AF_INET6, and AF_NETLINK for routes and socket diagnostics.
  std::set<std::pair<uint64_t, int64_t>> socket_rules;  // (family, netlink protocol or -1)
  for (const auto& rule : p["syscalls"]) {
    if (rule["names"] != Json({"socket"})) continue;
    ASSERT_EQ(rule["action"], "SCMP_ACT_ALLOW");
    ASSERT_FALSE(rule["args"].empty());
    EXPECT_EQ(rule["args"][0]["index"], 0);
    EXPECT_EQ(rule["args"][0]["op"], "SCMP_CMP_EQ");
    int64_t protocol = rule["args"].size() > 1 ? rule["args"][1]["value"].get<int64_t>() : -1;
    socket_rules.insert({rule["args"][0]["value"], protocol});
  }
  EXPECT_EQ(socket_rules,
            (std::set<std::pair<uint64_t, int64_t>>{{1, -1}, {2, -1}, {10, -1}, {16, 0}, {16, 4}}));
}

TEST(ImageUser, ResolvesNamesAndIdsFromTheImageAndNeverRoot) {
  char tmpl[] = "/tmp/airlock-imageuser-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string root = tmpl;
  std::filesystem::create_directories(root + "/etc");
  std::ofstream(root + "/etc/passwd") << "root:x:0:0:root:/root:/bin/sh\n"
                                         "app:x:1234:1200::/home/app:/bin/sh\n"
                                         "we!rd:x:1300:1300::/:/bin/sh\n";
  std::ofstream(root + "/etc/group") << "root:x:0:\nstaff:x:50:\n";
  auto app = ResolveImageUser(root, "app");
  EXPECT_EQ(app.name, "app");
  EXPECT_EQ(app.uid, 1234u);
  EXPECT_EQ(app.gid, 1200u);
  auto by_uid = ResolveImageUser(root, "1234");
  EXPECT_EQ(by_uid.name, "app");
  EXPECT_EQ(ResolveImageUser(root, "app:staff").gid, 50u);
  EXPECT_EQ(ResolveImageUser(root, "1234:77").gid, 77u);
  auto unknown = ResolveImageUser(root, "4321");
  EXPECT_EQ(unknown.name, "");
  EXPECT_EQ(unknown.uid, 4321u);
  EXPECT_EQ(ResolveImageUser(root, "we!rd").name, "") << "only plain names are written out";
  // Root in every spelling resolves to nothing.
  for (const char* root_user : {"root", "0", "0:0", "root:root", "app:0"}) {
    auto r = ResolveImageUser(root, root_user);
    if (std::string(root_user) == "app:0") {
      EXPECT_EQ(r.gid, std::nullopt) << root_user;  // gid 0 is not kept either
    } else {
      EXPECT_EQ(r.uid, std::nullopt) << root_user;
      EXPECT_EQ(r.name, "") << root_user;
    }
  }
  EXPECT_EQ(ResolveImageUser(root, "").uid, std::nullopt);
  // A passwd that is a symlink is not followed (on the host it could point anywhere).
  std::ofstream(root + "/outside") << "app:x:4444:4444::/:/bin/sh\n";
  std::filesystem::remove(root + "/etc/passwd");
  std::filesystem::create_symlink(root + "/outside", root + "/etc/passwd");
  EXPECT_EQ(ResolveImageUser(root, "app").name, "app") << "a name it cannot look up stays a name";
  EXPECT_EQ(ResolveImageUser(root, "app").uid, std::nullopt) << "the symlink was followed";
  std::filesystem::remove_all(root);
}

}  // namespace
}  // namespace airlock::sandbox
