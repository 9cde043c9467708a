#pragma once

// Real sandboxes for tests: the real `airlock serve` binary with a real backend (oci unless
// AIRLOCK_TEST_BACKEND names another), the probe image imported with `airlock image import`,
// and helpers to run one session to its end and read what its agent printed.
//
// The suite is backend-agnostic on purpose: everything goes through the operator API and the
// session log, so it runs unchanged against any backend that runs images.
#include <ifaddrs.h>
#include <net/if.h>
#include <sys/mount.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "images/image_store.h"
#include "sandbox/backend_microvm.h"
#include "tests/integration/server_process.h"

namespace airlock::testing {

inline std::string TestBackendName() {
  const char* b = std::getenv("AIRLOCK_TEST_BACKEND");
  return b && *b ? b : "oci";
}

// Where the backend keeps what says that the sandbox of session `id` exists (crun's state
// directory for oci; the microvm backend's own record of the VM).
inline std::string SandboxStatePath(const std::string& home, const std::string& id) {
  return TestBackendName() == "microvm" ? home + "/run/microvm/airlock-vm-" + id
                                        : home + "/run/oci/airlock-" + id;
}

// Why real sandboxes cannot run here, or empty when they can.
inline std::string SandboxSkipReason() {
  if (::geteuid() != 0)
    return "needs root: the oci backend sets cgroup limits and runs the agent as another user";
  if (::access("/proc/self/ns/user", F_OK) != 0) return "no namespace support in this kernel";
  const char* runtime = std::getenv("AIRLOCK_TEST_OCI_RUNTIME");
  std::string rt = runtime && *runtime ? runtime : "crun";
  if (TestBackendName() == "oci" &&
      std::system(("command -v " + rt + " >/dev/null 2>&1").c_str()) != 0) {
    return rt + " is not installed (scripts/install-deps.sh installs crun and runc)";
  }
  if (TestBackendName() == "microvm") {
    sandbox::MicrovmOptions o;
    o.kernel_dir = sandbox::DefaultGuestKernelDir();
    std::string bin = AIRLOCK_BIN;
    o.init_path = bin.substr(0, bin.rfind('/')) + "/airlock-init";
    if (auto why = sandbox::MicrovmUnavailableReason(o); !why.empty()) return why;
  }
  return {};
}

#define AIRLOCK_REQUIRE_SANDBOXES()                                                            \
  do {                                                                                         \
    if (auto why = ::airlock::testing::SandboxSkipReason(); !why.empty()) GTEST_SKIP() << why; \
  } while (0)

// The host's first non-loopback IPv4 address, if any.
inline std::string ExternalAddress() {
  ifaddrs* list = nullptr;
  std::string out;
  if (::getifaddrs(&list) != 0) return out;
  for (ifaddrs* i = list; i; i = i->ifa_next) {
    if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || (i->ifa_flags & IFF_LOOPBACK))
      continue;
    char buf[INET_ADDRSTRLEN];
    ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, buf, sizeof(buf));
    out = buf;
    break;
  }
  ::freeifaddrs(list);
  return out;
}

inline int RunCommandLine(const std::string& cmd) {
  int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

// SIGKILLs every process but this one whose command line holds `needle`; returns each as
// "process <pid>: <the start of its command line>".
inline std::vector<std::string> KillProcessesNaming(const std::string& needle) {
  std::vector<std::string> killed;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string pid = e.path().filename().string();
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmdline = ReadFile(e.path().string() + "/cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    if (cmdline.find(needle) == std::string::npos || std::stoi(pid) == ::getpid()) continue;
    ::kill(std::stoi(pid), SIGKILL);
    killed.push_back("process " + pid + ": " + cmdline.substr(0, 120));
  }
  return killed;
}

struct SessionOutcome {
  Json session;              // GET /v1/sessions/{id} once it ended
  std::string logs;          // the sandbox's stdout/stderr
  Json events;               // every event, as a JSON array
  std::vector<Json> probes;  // the PROBE lines of the log, parsed

  // The probe line of `check`, or null.
  Json Probe(const std::string& check) const {
    for (const auto& p : probes) {
      if (p.value("check", "") == check) return p;
    }
    return nullptr;
  }
  Json Event(const std::string& type) const {
    for (const auto& e : events) {
      if (e.value("type", "") == type) return e;
    }
    return nullptr;
  }
};

class SandboxServer {
 public:
  static constexpr const char* kProbeImage = "airlock-probe:test";

  explicit SandboxServer(std::string extra_config = "") : home_(MakeTempDir("airlock-sbx")) {
    images::ImageStoreOptions o;
    o.root = home_ + "/images";
    auto store = images::ImageStore::Open(o);
    auto imported = store ? store->Import(AIRLOCK_PROBE_IMAGE, std::string(kProbeImage))
                          : Result<images::ImageInfo>(std::unexpected(store.error()));
    import_error_ = imported ? "" : imported.error().message;
    // AIRLOCK_TEST_OCI_RUNTIME=runc (or runsc) runs the same tests under another runtime.
    const char* runtime = std::getenv("AIRLOCK_TEST_OCI_RUNTIME");
    std::string config = fmt::format(
        "[sandbox]\ndefault_backend = \"{}\"\ndefault_image = \"{}\"\n[sandbox.oci]\nbridge_port = "
        "7401\n"
        "runtime = \"{}\"\n{}",
        TestBackendName(), kProbeImage, runtime && *runtime ? runtime : "crun", extra_config);
    server_ = std::make_unique<ServerProcess>(home_, FreePort(), FreePort(), config);
  }
  // Sandboxes outlive a killed server by design, so a test cleans up its own, and what it did
  // not is found here: every session the server still knows is deleted, the server stops as an
  // operator stops it (its waiting pool sandboxes go with it), and then no sandbox of this home
  // may be left. One that is was leaked, by the test or by the backend: it is destroyed and the
  // test fails. The home goes too (its images, disks and snapshots fill /tmp over a CI run),
  // unless the test failed outside CI, where it is kept for a look.
  ~SandboxServer() {
    if (server_->pid() != 0) {
      try {
        DeleteEverySession();
      } catch (const std::exception& e) {  // a server that no longer answers: reaped below
        std::fprintf(stderr, "deleting the sessions at teardown: %s\n", e.what());
      }
      // A delete answers before the sandbox is gone: a server killed meanwhile would leave it
      // to the next start's sweep, which never comes here.
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (!SessionSandboxes().empty() && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      server_->Stop();
    }
    if (auto left = DestroyLeftovers(); !left.empty()) {
      std::string names;
      for (const auto& l : left) names += "\n  " + l;
      ADD_FAILURE() << "sandboxes outlived their sessions and the server (destroyed now):" << names;
    }
    if (::testing::Test::HasFailure() && std::getenv("CI") == nullptr) {
      std::fprintf(stderr, "kept the failed test's home: %s\n", home_.c_str());
      return;
    }
    RemoveHome(home_);
  }

  // Imports another image (an OCI tarball) as `name`, before Start.
  Status ImportImage(const std::string& tar, const std::string& name) {
    images::ImageStoreOptions o;
    o.root = home_ + "/images";
    AIRLOCK_ASSIGN_OR_RETURN(auto store, images::ImageStore::Open(o));
    AIRLOCK_TRY(store.Import(tar, name));
    return Ok();
  }

  void Start() {
    ASSERT_EQ(import_error_, "") << "importing " << AIRLOCK_PROBE_IMAGE;
    server_->Start();
  }
  ServerProcess& server() { return *server_; }
  const std::string& home() const { return home_; }

  // Starts a session whose agent is `command`; returns its id.
  std::string Create(const Json& command, const Json& limits = Json::object(),
                     const std::string& image = "") {
    Json body = {{"task", "security probe"}, {"command", command}};
    if (!limits.empty()) body["limits"] = limits;
    if (!image.empty()) body["image"] = image;
    auto r = server_->Op(http::verb::post, "/v1/sessions", DumpJson(body));
    EXPECT_EQ(r.status, 201u) << r.body;
    if (r.status != 201u) return {};
    std::string id = r.json()["id"];
    sessions_.push_back(id);
    return id;
  }

  // The probe binary inside the probe image, with checks separated by "--".
  static Json Probe(std::initializer_list<std::string> args) {
    Json cmd = Json::array({"/usr/bin/airlock-probe"});
    for (const auto& a : args) cmd.push_back(a);
    return cmd;
  }

  // Waits (up to `timeout_s`) until the session has ended, then collects what it left.
  SessionOutcome WaitForEnd(const std::string& id, int timeout_s = 60) {
    SessionOutcome o;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
    for (;;) {
      auto r = server_->Op(http::verb::get, "/v1/sessions/" + id);
      if (r.status == 200) {
        o.session = r.json();
        std::string st = o.session.value("state", "");
        if (st == "succeeded" || st == "failed" || st == "killed") break;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        ADD_FAILURE() << "session " << id << " did not end within " << timeout_s << " s: " << r.body
                      << "\nlogs:\n"
                      << Logs(id);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    o.logs = Logs(id);
    auto ev = server_->Op(http::verb::get, "/v1/sessions/" + id + "/events", "",
                          {{"Accept", "application/json"}});
    o.events = ev.status == 200 ? ev.json() : Json::array();
    o.probes = ParseProbes(o.logs);
    return o;
  }

  // Waits until the metrics page holds `needle`; false if it never did within `timeout_s`.
  bool WaitForMetric(const std::string& needle, int timeout_s = 120) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
    while (server_->Op(http::verb::get, "/metrics").body.find(needle) == std::string::npos) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return true;
  }

  std::string Logs(const std::string& id) {
    return server_->Op(http::verb::get, "/v1/sessions/" + id + "/logs").body;
  }

  // Polls the log until a probe line of `check` appears.
  Json WaitForProbe(const std::string& id, const std::string& check, int timeout_s = 30) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
    while (std::chrono::steady_clock::now() < deadline) {
      for (const auto& p : ParseProbes(Logs(id))) {
        if (p.value("check", "") == check) return p;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "no PROBE " << check << " line from " << id << "; logs:\n" << Logs(id);
    return nullptr;
  }

  static std::vector<Json> ParseProbes(const std::string& logs) {
    std::vector<Json> out;
    std::istringstream in(logs);
    std::string line;
    while (std::getline(in, line)) {
      if (!line.starts_with("PROBE ")) continue;
      auto j = ParseJson(line.substr(6));
      if (j) out.push_back(*j);
    }
    return out;
  }

 private:
  void DeleteEverySession() {
    for (const auto& id : sessions_) {
      server_->Op(http::verb::delete_, "/v1/sessions/" + id);
    }
    auto listed = server_->Op(http::verb::get, "/v1/sessions?limit=1000");
    if (listed.status != 200) return;
    for (const auto& s : listed.json().value("sessions", Json::array())) {
      const std::string state = s.value("state", "");
      if (state == "succeeded" || state == "failed" || state == "killed") continue;
      server_->Op(http::verb::delete_, "/v1/sessions/" + s.value("id", ""));
    }
  }

  // What the backends keep of sessions' sandboxes under the home (a warm pool's are not
  // sessions': they go when the server stops).
  std::vector<std::string> SessionSandboxes() const {
    std::vector<std::string> out;
    std::error_code ec;
    for (const char* dir : {"/run/oci", "/run/microvm"}) {
      for (const auto& e : std::filesystem::directory_iterator(home_ + dir, ec)) {
        const std::string name = e.path().filename().string();
        if (name.starts_with("airlock-") && name.find("wrm_") == std::string::npos) {
          out.push_back(name);
        }
      }
    }
    return out;
  }

  // The sandboxes whose state the backends still keep under the home, destroyed: crun's
  // containers with the runtime, and every QEMU whose command line names the home.
  std::vector<std::string> DestroyLeftovers() {
    std::vector<std::string> left;
    std::error_code ec;
    const char* runtime = std::getenv("AIRLOCK_TEST_OCI_RUNTIME");
    const std::string oci = home_ + "/run/oci";
    for (const auto& e : std::filesystem::directory_iterator(oci, ec)) {
      const std::string name = e.path().filename().string();
      if (!name.starts_with("airlock-")) continue;
      left.push_back(name);
      RunCommandLine(fmt::format("{} --root '{}' delete --force '{}' >/dev/null 2>&1",
                                 runtime && *runtime ? runtime : "crun", oci, name));
    }
    for (const auto& e : std::filesystem::directory_iterator(home_ + "/run/microvm", ec)) {
      const std::string name = e.path().filename().string();
      if (name.starts_with("airlock-vm-") && !name.ends_with(".tmp")) left.push_back(name);
    }
    for (auto& killed : KillProcessesNaming(home_ + "/")) left.push_back(std::move(killed));
    return left;
  }

  // Removes the home, after detaching anything still mounted under it (a removal never
  // crosses into a mount).
  static void RemoveHome(const std::string& home) {
    std::vector<std::string> mounts;
    std::istringstream info(ReadFile("/proc/self/mountinfo"));
    std::string line;
    while (std::getline(info, line)) {
      std::istringstream fields(line);
      std::string id, parent, dev, root, point;
      fields >> id >> parent >> dev >> root >> point;
      if (point.starts_with(home + "/")) mounts.push_back(point);
    }
    std::sort(mounts.rbegin(), mounts.rend());
    for (const auto& m : mounts) {
      if (::umount2(m.c_str(), MNT_DETACH) != 0) {
        std::fprintf(stderr, "kept %s: %s is still mounted\n", home.c_str(), m.c_str());
        return;
      }
    }
    std::error_code ec;
    std::filesystem::remove_all(home, ec);
  }

  std::string home_;
  std::string import_error_;
  std::unique_ptr<ServerProcess> server_;
  std::vector<std::string> sessions_;
};

}  // namespace airlock::testing
