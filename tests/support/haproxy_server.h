#pragma once

// A private HAProxy for one test: the test writes the configuration (its own free ports), this
// runs Debian's /usr/sbin/haproxy on it in the foreground (-db) in a temporary directory, with
// its log (`log stdout`) in a file there, and stops it after. Nothing of the machine's own
// HAProxy service is used or touched.
//
// The binary is AIRLOCK_HAPROXY when set, else /usr/sbin/haproxy (scripts/install-deps.sh
// installs it). Without it `skip` says why (the test skips with it); AIRLOCK_REQUIRE_HAPROXY=1,
// which .ci/run sets, turns that skip into a `failure`, as AIRLOCK_REQUIRE_POSTGRES does for
// PostgreSQL.
//
// The child gets SIGTERM when the test process dies (PR_SET_PDEATHSIG), so a crashed or
// timed-out test leaves no HAProxy behind.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace airlock::testing {

struct HaproxyServer {
  std::string binary;
  std::string dir;  // temporary: haproxy.cfg, haproxy.log
  pid_t pid = -1;
  std::string skip;     // why it cannot run here
  std::string failure;  // why it did not start although it should have

  std::string config_path() const { return dir + "/haproxy.cfg"; }
  std::string log_path() const { return dir + "/haproxy.log"; }
};

inline std::string HaproxyReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Where HAProxy is, or "" with `skip` or `failure` set on `s`.
inline std::string FindHaproxy(HaproxyServer& s) {
  const char* env = std::getenv("AIRLOCK_HAPROXY");
  std::string path = env != nullptr && *env != '\0' ? env : "/usr/sbin/haproxy";
  if (::access(path.c_str(), X_OK) == 0) {
    return path;
  }
  std::string why = "HAProxy is not installed (no " + path + "; Debian: apt-get install haproxy)";
  if (std::getenv("AIRLOCK_REQUIRE_HAPROXY") != nullptr) {
    s.failure = "AIRLOCK_REQUIRE_HAPROXY is set, but: " + why;
  } else {
    s.skip = std::move(why);
  }
  return "";
}

// True when something accepts TCP connections on 127.0.0.1:port.
inline bool HaproxyPortOpen(uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  ::close(fd);
  return ok;
}

// Checks `config` (haproxy -c), then starts HAProxy on it and waits until `ready_port`
// accepts connections.
inline HaproxyServer StartHaproxy(const std::string& config, uint16_t ready_port) {
  HaproxyServer s;
  s.binary = FindHaproxy(s);
  if (s.binary.empty()) {
    return s;
  }
  std::string tmpl = (std::filesystem::temp_directory_path() / "airlock-haproxy-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) {
    s.failure = "mkdtemp failed";
    return s;
  }
  s.dir = tmpl;
  std::ofstream(s.config_path()) << config;
  const std::string check =
      s.binary + " -c -q -f " + s.config_path() + " > " + s.dir + "/check.log 2>&1";
  if (std::system(check.c_str()) != 0) {
    s.failure = "haproxy -c refused the configuration:\n" + HaproxyReadFile(s.dir + "/check.log");
    return s;
  }
  const pid_t parent = ::getpid();
  s.pid = ::fork();
  if (s.pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) {
      ::_exit(0);  // the test died before the line above took effect
    }
    const int fd = ::open((s.dir + "/haproxy.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    const int null = ::open("/dev/null", O_RDONLY);
    ::dup2(null, 0);
    ::execl(s.binary.c_str(), s.binary.c_str(), "-db", "-f", s.config_path().c_str(),
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  if (s.pid < 0) {
    s.failure = "fork failed";
    return s;
  }
  for (int i = 0; i < 500; ++i) {
    if (HaproxyPortOpen(ready_port)) {
      return s;
    }
    int status = 0;
    if (::waitpid(s.pid, &status, WNOHANG) == s.pid) {
      s.pid = -1;
      s.failure = "haproxy exited at start:\n" + HaproxyReadFile(s.log_path());
      return s;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  s.failure = "haproxy did not open port " + std::to_string(ready_port) + ":\n" +
              HaproxyReadFile(s.log_path());
  return s;
}

// Stops HAProxy and waits for it, so that its log is complete. SIGUSR1 is HAProxy's soft
// stop: it closes its listeners and lets the requests in progress finish, which the test has
// waited for already; SIGKILL after `grace` if it has not exited by then.
inline void StopHaproxy(HaproxyServer& s, std::chrono::milliseconds grace) {
  if (s.pid <= 0) {
    return;
  }
  ::kill(s.pid, SIGUSR1);
  const auto deadline = std::chrono::steady_clock::now() + grace;
  int status = 0;
  while (::waitpid(s.pid, &status, WNOHANG) != s.pid) {
    if (std::chrono::steady_clock::now() >= deadline) {
      ::kill(s.pid, SIGKILL);
      ::waitpid(s.pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  s.pid = -1;
}

inline void RemoveHaproxyDir(HaproxyServer& s) {
  if (!s.dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(s.dir, ec);
  }
}

}  // namespace airlock::testing
