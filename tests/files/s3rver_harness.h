#pragma once

// s3rver, an S3 emulator that checks AWS V4 signatures, as a child process of a test:
// tests/files/s3rver.sh installs it from the npm registry into a cache outside the repository
// and runs it on 127.0.0.1, a free port and a temporary directory. Shared by the S3 blob
// store's tests (src/files/s3_store_test.cc) and the control plane's end-to-end S3 test
// (tests/integration/files_s3_test.cc).
//
// Without node or npm, or with the npm registry unreachable, the script exits 77 and the
// Emulator says why in `skip` (the test skips with it); AIRLOCK_REQUIRE_S3RVER=1 turns that
// skip into a `failure`.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace airlock::testing {

// s3rver's built-in account: fixed, not configurable.
inline constexpr char kS3rverAccessKey[] = "S3RVER";
inline constexpr char kS3rverSecret[] = "S3RVER";
// tests/files/s3rver.sh's "cannot be set up here" status.
inline constexpr int kS3rverExitSkip = 77;

inline std::string S3rverReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// ----- The emulator process ------------------------------------------------------------------

struct Emulator {
  pid_t pid = -1;
  int out_fd = -1;  // its stdout, kept open so that it never writes into a closed pipe
  uint16_t port = 0;
  std::string dir;      // temporary: data/, tls/, s3rver.log
  std::string skip;     // why it cannot run here
  std::string failure;  // why it did not start although it should have
  std::string ca_file() const { return dir + "/tls/cert.pem"; }
};

// `s3rver.sh install`: its exit status and everything it printed.
inline std::pair<int, std::string> InstallS3rver(const std::string& script,
                                                 const std::string& log) {
  pid_t pid = ::fork();
  if (pid == 0) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::execl("/bin/bash", "bash", script.c_str(), "install", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128, S3rverReadFile(log)};
}

inline void NoteS3rverSkip(Emulator& e, std::string why) {
  if (std::getenv("AIRLOCK_REQUIRE_S3RVER") != nullptr) {
    e.failure = "AIRLOCK_REQUIRE_S3RVER is set, but: " + why;
  } else {
    e.skip = std::move(why);
  }
}

// Starts `script` (tests/files/s3rver.sh) serving `bucket`. `service_endpoint`, if not empty,
// serves virtual-hosted requests to <bucket>.s3.<service_endpoint>. `lax`: s3rver's
// --allow-mismatched-signatures (see tests/files/s3rver.sh for why).
inline Emulator StartS3rver(const std::string& script, const std::string& bucket,
                            const std::string& service_endpoint, bool tls, bool lax) {
  Emulator e;
  std::string tmpl = (std::filesystem::temp_directory_path() / "airlock-s3rver-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) {
    e.failure = "mkdtemp failed";
    return e;
  }
  e.dir = tmpl;
  auto [code, output] = InstallS3rver(script, e.dir + "/install.log");
  if (code == kS3rverExitSkip) {
    NoteS3rverSkip(e, "s3rver is not available: " + output);
    return e;
  }
  if (code != 0) {
    e.failure = "tests/files/s3rver.sh install failed: " + output;
    return e;
  }

  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    e.failure = "pipe failed";
    return e;
  }
  const std::string log = e.dir + "/s3rver.log";
  std::vector<std::string> args = {"bash", script, "run", e.dir + "/data", bucket};
  if (!service_endpoint.empty()) {
    args.insert(args.end(), {"--service-endpoint", service_endpoint});
  }
  if (tls) {
    args.insert(args.end(), {"--tls", e.dir + "/tls"});
  }
  if (lax) {
    args.emplace_back("--allow-mismatched-signatures");
  }
  std::vector<char*> argv;
  for (std::string& a : args) {
    argv.push_back(a.data());
  }
  argv.push_back(nullptr);
  e.pid = ::fork();
  if (e.pid == 0) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(fds[1], 1);
    ::dup2(fd, 2);
    ::execv("/bin/bash", argv.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  e.out_fd = fds[0];

  // It prints "S3rver listening on 127.0.0.1:PORT" once it accepts connections.
  std::string out;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (out.find('\n', out.find("listening on")) == std::string::npos) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        until - std::chrono::steady_clock::now());
    pollfd p{e.out_fd, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
      e.failure = "s3rver did not start within 30 s; its log:\n" + S3rverReadFile(log);
      return e;
    }
    char buf[512];
    ssize_t n = ::read(e.out_fd, buf, sizeof(buf));
    if (n <= 0) {
      int status = 0;
      ::waitpid(e.pid, &status, 0);
      e.pid = -1;
      if (WIFEXITED(status) && WEXITSTATUS(status) == kS3rverExitSkip) {
        NoteS3rverSkip(e, "s3rver is not available: " + S3rverReadFile(log));
      } else {
        e.failure = "s3rver exited at start; its log:\n" + S3rverReadFile(log);
      }
      return e;
    }
    out.append(buf, static_cast<size_t>(n));
  }
  size_t colon = out.rfind(':');
  e.port = static_cast<uint16_t>(std::atoi(out.c_str() + colon + 1));
  if (e.port == 0) {
    e.failure = "cannot read s3rver's port from: " + out;
  }
  return e;
}

inline void StopS3rver(Emulator& e) {
  if (e.pid > 0) {
    ::kill(e.pid, SIGTERM);
    int status = 0;
    for (int i = 0; i < 300 && ::waitpid(e.pid, &status, WNOHANG) == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      if (i == 299) {
        ::kill(e.pid, SIGKILL);
        ::waitpid(e.pid, &status, 0);
      }
    }
    e.pid = -1;
  }
  if (e.out_fd >= 0) {
    ::close(e.out_fd);
    e.out_fd = -1;
  }
  if (!e.dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(e.dir, ec);
  }
}

}  // namespace airlock::testing
