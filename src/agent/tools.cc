#include "tools.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <expected>
#include <filesystem>

#include "clock.h"

extern char** environ;

namespace airlock::agent {
namespace {

constexpr int64_t kDrainAfterExitMs = 200;

std::string FirstLine(const std::string& s, size_t max) {
  std::string line = s.substr(0, s.find('\n'));
  if (line.size() > max) line = line.substr(0, max) + "…";
  return line;
}

}  // namespace

Json Function(const char* name, const char* description, Json properties, Json required) {
  return Json{{"type", "function"},
              {"function",
               {{"name", name},
                {"description", description},
                {"parameters",
                 {{"type", "object"},
                  {"properties", std::move(properties)},
                  {"required", std::move(required)}}}}}};
}

Json ToolSchemas(const ToolLimits& limits) {
  const std::string shell =
      "Run a shell command (/bin/sh -c) in the sandbox's working directory. Output (stdout and "
      "stderr) is truncated to " +
      std::to_string(limits.output_cap) +
      " bytes. The sandbox has no network except the control plane.";
  const std::string timeout = "kill it after this many seconds (default " +
                              std::to_string(limits.default_timeout_s) + ", max " +
                              std::to_string(limits.max_timeout_s) + ")";
  const std::string read =
      "at most this many bytes (default " + std::to_string(limits.read_cap) + ")";
  return Json::array({
      Function("shell", shell.c_str(),
               {{"command", {{"type", "string"}, {"description", "the command line"}}},
                {"timeout_s", {{"type", "number"}, {"description", timeout}}}},
               {"command"}),
      Function("read_file", "Read a text file.",
               {{"path", {{"type", "string"}}},
                {"max_bytes", {{"type", "integer"}, {"description", read}}}},
               {"path"}),
      Function(
          "write_file", "Write a text file, creating its directories; replaces an existing file.",
          {{"path", {{"type", "string"}}}, {"content", {{"type", "string"}}}}, {"path", "content"}),
      Function("upload", "Upload a file as an artifact of this session, for the user to download.",
               {{"path", {{"type", "string"}, {"description", "the file in the sandbox"}}},
                {"name",
                 {{"type", "string"},
                  {"description", "the artifact's name (default: the file's base name)"}}}},
               {"path"}),
      Function("finish",
               "End the session: the task is done (or cannot be done). Nothing runs after this.",
               {{"result", {{"type", "string"}, {"description", "what was done, for the user"}}},
                {"status", {{"type", "string"}, {"enum", {"succeeded", "failed"}}}}},
               {"result"}),
  });
}

std::expected<Json, std::string> ParseArguments(const Json& arguments) {
  Json args = arguments;
  if (arguments.is_string()) {
    const std::string& text = arguments.get_ref<const std::string&>();
    args = text.empty() ? Json::object() : Json::parse(text, nullptr, false);
    if (args.is_discarded())
      return std::unexpected("error: the arguments are not valid JSON; send a JSON object");
  }
  if (arguments.is_null()) args = Json::object();
  if (!args.is_object()) return std::unexpected("error: the arguments must be a JSON object");
  return args;
}

ToolOutcome RunShell(const std::string& command, int timeout_s, const ToolLimits& limits) {
  ToolOutcome out;
  if (command.empty()) return {false, "error: \"command\" is empty", "empty command"};
  timeout_s =
      std::clamp(timeout_s <= 0 ? limits.default_timeout_s : timeout_s, 1, limits.max_timeout_s);
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0)
    return {false, std::string("error: pipe: ") + std::strerror(errno), "pipe failed"};
  const int64_t started = NowMs();
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    return {false, std::string("error: fork: ") + std::strerror(errno), "fork failed"};
  }
  if (pid == 0) {
    // Only async-signal-safe calls from here to exec.
    ::setpgid(0, 0);
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    ::dup2(pipefd[1], 1);
    ::dup2(pipefd[1], 2);
    ::close_range(3, ~0U, 0);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int s : {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGCHLD}) ::sigaction(s, &dfl, nullptr);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    const char* argv[] = {"sh", "-c", command.c_str(), nullptr};
    ::execve("/bin/sh", const_cast<char* const*>(argv), environ);
    static const char msg[] = "airlock-agent: cannot run /bin/sh\n";
    (void)!::write(2, msg, sizeof(msg) - 1);
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // also here: whichever runs first, the group exists before a kill
  ::close(pipefd[1]);
  std::string kept;
  uint64_t total = 0;
  bool timed_out = false;
  int status = 0;
  bool exited = false;
  int64_t deadline = started + static_cast<int64_t>(timeout_s) * 1000;
  int64_t drain_until = 0;
  char buf[8192];
  for (;;) {
    if (!exited && ::waitpid(pid, &status, WNOHANG) == pid) {
      exited = true;
      drain_until = NowMs() + kDrainAfterExitMs;  // what the shell wrote last, or a straggler
    }
    int64_t now = NowMs();
    if (!exited && now >= deadline) {
      timed_out = true;
      ::kill(-pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      exited = true;
      drain_until = now + kDrainAfterExitMs;
    }
    if (exited && now >= drain_until) break;
    int64_t wait = exited ? drain_until - now : std::min<int64_t>(deadline - now, 50);
    pollfd p{pipefd[0], POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(std::max<int64_t>(wait, 0)));
    if (r < 0 && errno != EINTR) break;
    if (r <= 0) continue;
    ssize_t n = ::read(pipefd[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (exited) break;
      // Everything closed its end but the shell still runs: just wait for it.
      ::waitpid(pid, &status, 0);
      exited = true;
      break;
    }
    total += static_cast<uint64_t>(n);
    if (kept.size() < limits.output_cap)
      kept.append(buf, std::min<size_t>(static_cast<size_t>(n), limits.output_cap - kept.size()));
  }
  ::close(pipefd[0]);
  // A command that left processes behind in its group does not keep them: they would
  // outlive the call that the model thinks is over.
  ::kill(-pid, SIGKILL);
  const int64_t ms = NowMs() - started;

  std::string head;
  if (timed_out) {
    head = "killed: timeout after " + std::to_string(timeout_s) + " s";
    out.ok = false;
  } else if (WIFSIGNALED(status)) {
    head = "killed by signal " + std::to_string(WTERMSIG(status));
    out.ok = false;
  } else {
    head = "exit code " + std::to_string(WEXITSTATUS(status));
    out.ok = WEXITSTATUS(status) == 0;
  }
  out.text = head + "\n" + kept;
  if (total > kept.size()) {
    out.text += "\n[output truncated: " + std::to_string(total) + " bytes, the first " +
                std::to_string(kept.size()) + " shown]";
  }
  out.summary = "$ " + FirstLine(command, 80) + " -> " + head + " (" + std::to_string(ms) +
                " ms, " + std::to_string(total) + " bytes of output)";
  return out;
}

ToolOutcome ReadFileTool(const std::string& path, size_t max_bytes) {
  if (path.empty()) return {false, "error: \"path\" is empty", "read_file: empty path"};
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    std::string why = std::strerror(errno);
    return {false, "error: cannot open " + path + ": " + why, "read " + path + ": " + why};
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return {false, "error: " + path + " is not a regular file",
            "read " + path + ": not a regular file"};
  }
  std::string data(std::min<uint64_t>(max_bytes, static_cast<uint64_t>(st.st_size)), '\0');
  size_t got = 0;
  while (got < data.size()) {
    ssize_t n = ::read(fd, data.data() + got, data.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  data.resize(got);
  std::string text = data;
  if (static_cast<uint64_t>(st.st_size) > got) {
    text += "\n[truncated: the file has " + std::to_string(st.st_size) + " bytes, the first " +
            std::to_string(got) + " shown]";
  }
  return {true, text, "read " + path + " (" + std::to_string(st.st_size) + " bytes)"};
}

ToolOutcome WriteFileTool(const std::string& path, const std::string& content,
                          const ToolLimits& limits) {
  if (path.empty()) return {false, "error: \"path\" is empty", "write_file: empty path"};
  if (content.size() > limits.max_write) {
    return {false, "error: content larger than " + std::to_string(limits.max_write) + " bytes",
            "write " + path + ": too large"};
  }
  std::error_code ec;
  auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    std::string why = std::strerror(errno);
    return {false, "error: cannot write " + path + ": " + why, "write " + path + ": " + why};
  }
  size_t off = 0;
  while (off < content.size()) {
    ssize_t n = ::write(fd, content.data() + off, content.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::string why = std::strerror(errno);
      ::close(fd);
      return {false, "error: writing " + path + ": " + why, "write " + path + ": " + why};
    }
    off += static_cast<size_t>(n);
  }
  ::close(fd);
  return {true, "wrote " + std::to_string(content.size()) + " bytes to " + path,
          "wrote " + path + " (" + std::to_string(content.size()) + " bytes)"};
}

}  // namespace airlock::agent
