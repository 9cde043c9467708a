#pragma once

// The real `airlock serve` binary (AIRLOCK_BIN) as a child process of a test, with its own
// home, ports and config, for tests that need the whole server: crash/restart, sandboxes.
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/wait.h>

#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <string_view>

#include "tests/integration/harness.h"

namespace airlock::testing {

inline constexpr const char* kProcessBackendConfig =
    "[sandbox]\ndefault_backend = \"process\"\nallow_unisolated_backends = true\n";

// A port for a server another process will bind later, taken from below the kernel's
// ephemeral range (32768 and up by default): a port the kernel picked for a bind to port 0 may
// be handed to another test's listener or outgoing connection before the server binds it,
// which made the chaos test's HAProxy fail to start now and then under parallel tests.
inline uint16_t FreePort() {
  static thread_local std::mt19937 rng(std::random_device{}());
  for (int attempt = 0; attempt < 200; ++attempt) {
    const auto port = static_cast<uint16_t>(20000 + rng() % 12000);
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    const bool free = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
    ::close(fd);
    if (free) return port;
  }
  return 0;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

class ServerProcess {
 public:
  ServerProcess(std::string home, uint16_t op, uint16_t sb, const std::string& config)
      : home_(std::move(home)), op_(op), sb_(sb) {
    std::ofstream(home_ + "/airlock.toml") << config;
  }
  ~ServerProcess() { Kill(SIGKILL); }

  // Runs the server as this (non-root) uid and gid from the next Start(): rootless mode.
  void RunAs(uid_t uid, gid_t gid) {
    run_as_uid_ = uid;
    run_as_gid_ = gid;
  }

  // Starts the server and waits until it listens on both ports (its "listening" log line,
  // written once both are bound). A port from FreePort may be taken by another test before
  // the server binds it; the server then exits saying so, and it is started again on fresh
  // ports. A server that exits for any other reason fails the test with its log.
  void Start() {
    const std::string log = home_ + "/server.log";
    for (int attempt = 0;; ++attempt) {
      const std::string before = ReadFile(log);
      const auto listened = [&] {
        return Count(ReadFile(log), kListening) > Count(before, kListening);
      };
      Spawn(log);
      // 30 s: only bounds a hang; a loaded CI host (builds beside VMs under TCG) takes >10 s.
      int status = 0;
      bool exited = false;
      for (int i = 0; i < 3000 && !listened(); ++i) {
        if (::waitpid(pid_, &status, WNOHANG) == pid_) {
          exited = true;
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      if (!exited && listened()) {
        std::ifstream f(home_ + "/operator.key");
        std::getline(f, key_);
        return;
      }
      if (!exited) Kill(SIGKILL);
      pid_ = 0;
      const std::string said = ReadFile(log).substr(before.size());
      if (exited && said.find("already in use") != std::string::npos && attempt < 5) {
        op_ = FreePort();
        sb_ = FreePort();
        continue;
      }
      FAIL() << "server did not start (" << (exited ? DescribeStatus(status) : "no answer in 30 s")
             << "); log:\n"
             << said;
    }
  }

  void Kill(int sig) {
    if (pid_ <= 0) return;
    ::kill(pid_, sig);
    int status;
    ::waitpid(pid_, &status, 0);
    pid_ = 0;
  }

  // Stops the server as an operator does (SIGTERM: it drains and destroys what only it knows
  // of, such as waiting pool sandboxes); SIGKILL if it has not exited within `grace`. A
  // server that had already exited by itself (a crash, a sanitizer's report) fails the test
  // with the end of its log.
  void Stop(std::chrono::seconds grace = std::chrono::seconds(30)) {
    if (pid_ <= 0) return;
    if (int status = 0; ::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = 0;
      const std::string log = ReadFile(home_ + "/server.log");
      ADD_FAILURE() << "the server had exited by itself (" << DescribeStatus(status)
                    << "); the end of its log:\n"
                    << log.substr(log.size() > 8000 ? log.size() - 8000 : 0);
      return;
    }
    ::kill(pid_, SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() + grace;
    int status;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        Kill(SIGKILL);
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    pid_ = 0;
  }

  HttpResult Op(http::verb m, const std::string& target, const std::string& body = "",
                std::map<std::string, std::string> h = {}) {
    return HttpCall(op_, m, target, key_, body, std::move(h));
  }
  HttpResult Sb(http::verb m, const std::string& target, const std::string& token,
                const std::string& body = "") {
    return HttpCall(sb_, m, target, token, body);
  }
  const std::string& key() const { return key_; }
  uint16_t operator_port() const { return op_; }
  uint16_t sandbox_port() const { return sb_; }
  const std::string& home() const { return home_; }
  pid_t pid() const { return pid_; }  // 0 when not running
  std::string log() const { return ReadFile(home_ + "/server.log"); }

 private:
  static constexpr std::string_view kListening = "\"msg\":\"listening\"";

  static size_t Count(std::string_view text, std::string_view needle) {
    size_t n = 0;
    for (auto at = text.find(needle); at != std::string_view::npos;
         at = text.find(needle, at + needle.size())) {
      ++n;
    }
    return n;
  }

  static std::string DescribeStatus(int status) {
    if (WIFEXITED(status)) return "exit code " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return std::string("signal ") + ::strsignal(WTERMSIG(status));
    return "status " + std::to_string(status);
  }

  void Spawn(const std::string& log) {
    pid_ = ::fork();
    if (pid_ != 0) return;
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    ::dup2(fd, 2);
    ::dup2(fd, 1);
    if (run_as_uid_ && (::setgroups(0, nullptr) != 0 ||
                        ::setresgid(*run_as_gid_, *run_as_gid_, *run_as_gid_) != 0 ||
                        ::setresuid(*run_as_uid_, *run_as_uid_, *run_as_uid_) != 0)) {
      ::_exit(126);
    }
    std::string op = "127.0.0.1:" + std::to_string(op_), sb = "127.0.0.1:" + std::to_string(sb_);
    std::string cfg = home_ + "/airlock.toml";
    ::execl(AIRLOCK_BIN, AIRLOCK_BIN, "serve", "--home", home_.c_str(), "--listen", op.c_str(),
            "--sandbox-listen", sb.c_str(), "--config", cfg.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }

  std::string home_;
  uint16_t op_, sb_;
  pid_t pid_ = 0;
  std::optional<uid_t> run_as_uid_;
  std::optional<gid_t> run_as_gid_;
  std::string key_;
};

}  // namespace airlock::testing
