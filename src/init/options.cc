#include "options.h"

#include <algorithm>
#include <charconv>
#include <iterator>
#include <limits>

namespace airlock::init {
namespace {

// Only non-negative numbers: every option is a count, an id or a port.
template <typename T>
Result<T> ParseNumber(std::string_view flag, std::string_view text, T min, T max) {
  static_assert(sizeof(T) <= sizeof(uint64_t));
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() ||
      value < static_cast<uint64_t>(min) || value > static_cast<uint64_t>(max)) {
    return Fail(std::string(flag) + ": expected a number from " + std::to_string(min) + " to " +
                std::to_string(max) + ", got \"" + std::string(text) + "\"");
  }
  return static_cast<T>(value);
}

Status SetOption(Options& opts, std::string_view flag, std::string_view value) {
  if (flag == "--socket") {
    opts.socket_path = value;
  } else if (flag == "--port") {
    auto port = ParseNumber<int>(flag, value, 1, 65535);
    if (!port) {
      return std::unexpected(port.error());
    }
    opts.port = *port;
  } else if (flag == "--uid") {
    // (uid_t)-1 means "unchanged" to setresuid, so it is not a valid identity.
    auto uid = ParseNumber<uid_t>(flag, value, 0, std::numeric_limits<uid_t>::max() - 1);
    if (!uid) {
      return std::unexpected(uid.error());
    }
    opts.uid = *uid;
  } else if (flag == "--gid") {
    auto gid = ParseNumber<gid_t>(flag, value, 0, std::numeric_limits<gid_t>::max() - 1);
    if (!gid) {
      return std::unexpected(gid.error());
    }
    opts.gid = *gid;
  } else if (flag == "--home") {
    opts.home = value;
  } else if (flag == "--workdir") {
    opts.workdir = value;
  } else if (flag == "--log-limit") {
    auto limit = ParseNumber<uint64_t>(flag, value, 0, std::numeric_limits<uint64_t>::max() / 2);
    if (!limit) {
      return std::unexpected(limit.error());
    }
    opts.log_limit = *limit;
  } else if (flag == "--cgroup-root") {
    opts.cgroup_root = value;
  } else if (flag == "--work") {
    if (value != "none" && value != "channel") {
      return Fail("--work: expected none or channel, got \"" + std::string(value) + "\"");
    }
    opts.fetch_work = value == "channel";
  } else if (flag == "--env") {
    size_t eq = value.find('=');
    if (eq == std::string_view::npos || eq == 0) {
      return Fail("--env: expected NAME=VALUE, got \"" + std::string(value.substr(0, 64)) + "\"");
    }
    opts.image_env.emplace_back(value);
  } else if (flag == "--identity") {
    if (value == "env") {
      opts.identity = Options::IdentitySource::kEnvironment;
    } else if (value == "channel") {
      opts.identity = Options::IdentitySource::kChannel;
    } else {
      return Fail("--identity: expected env or channel, got \"" + std::string(value) + "\"");
    }
  }
  return {};
}

}  // namespace

std::string Usage() {
  return "usage: airlock-init [options] -- command [args...]\n"
         "\n"
         "The entrypoint of an Airlock sandbox: scrubs SESSION_ID, SESSION_TOKEN and\n"
         "CONTROL_PLANE_URL from its environment, serves CONTROL_PLANE_URL on 127.0.0.1 by\n"
         "relaying to the control plane's Unix socket, runs the command unprivileged, reaps\n"
         "children and reports the command's exit to the control plane.\n"
         "\n"
         "  --socket PATH       control-plane Unix socket (default /.airlock/run/control.sock)\n"
         "  --port N            port to serve on 127.0.0.1 (default: from CONTROL_PLANE_URL)\n"
         "  --uid U, --gid G    identity of the command (default 1000, 1000)\n"
         "  --home DIR          HOME of the command (default /home/sandbox)\n"
         "  --workdir DIR       working directory of the command (default: HOME)\n"
         "  --log-limit BYTES   output of the command kept in the log (default 8388608)\n"
         "  --cgroup-root DIR   cgroup mount, for OOM detection (default /sys/fs/cgroup)\n"
         "  --identity SOURCE   env: the three variables come from init's environment\n"
         "                      (default); channel: init asks the control plane for them\n"
         "                      over the socket (GET /sandbox/v1/identity); needs --port\n"
         "  --work SOURCE       none (default); channel: before starting the command, take\n"
         "                      the session's variables and copy its files into the working\n"
         "                      directory (GET /sandbox/v1/work)\n"
         "  --env NAME=VALUE    a variable of the image for the command (repeatable); the\n"
         "                      session's variables and the three above take precedence\n"
         "  --help              print this text\n"
         "\n"
         "Exit status: the command's, 128+N if it died of signal N, 125 if init failed.\n";
}

Result<Options> ParseOptions(int argc, char** argv) {
  Options opts;
  int i = 1;
  for (; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--") {
      ++i;
      break;
    }
    if (!arg.starts_with("--")) {
      break;
    }
    if (arg == "--help") {
      opts.help = true;
      return opts;
    }
    std::string_view flag = arg.substr(0, arg.find('='));
    static constexpr std::string_view kFlags[] = {
        "--socket",    "--port",        "--uid",      "--gid",  "--home", "--workdir",
        "--log-limit", "--cgroup-root", "--identity", "--work", "--env"};
    if (std::find(std::begin(kFlags), std::end(kFlags), flag) == std::end(kFlags)) {
      return Fail("unknown option " + std::string(flag) + " (see --help)");
    }
    std::string_view value;
    if (flag.size() < arg.size()) {
      value = arg.substr(flag.size() + 1);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return Fail(std::string(flag) + " needs a value");
    }
    if (auto s = SetOption(opts, flag, value); !s) {
      return std::unexpected(s.error());
    }
  }
  for (; i < argc; ++i) {
    opts.command.emplace_back(argv[i]);
  }
  if (opts.command.empty()) {
    return Fail("no command given (usage: airlock-init [options] -- command [args...])");
  }
  if (opts.socket_path.empty() || opts.home.empty() || opts.home[0] != '/') {
    return Fail("--socket and --home must be set, and --home must be an absolute path");
  }
  if (opts.workdir.empty()) {
    opts.workdir = opts.home;
  }
  return opts;
}

Result<int> PortFromUrl(std::string_view url) {
  std::string_view rest = url;
  for (std::string_view prefix : {"http://127.0.0.1:", "http://localhost:"}) {
    if (rest.starts_with(prefix)) {
      rest.remove_prefix(prefix.size());
      if (rest.ends_with('/')) {
        rest.remove_suffix(1);
      }
      auto port = ParseNumber<int>("CONTROL_PLANE_URL port", rest, 1, 65535);
      if (port) {
        return *port;
      }
      break;
    }
  }
  return Fail("CONTROL_PLANE_URL must be http://127.0.0.1:<port>, got \"" + std::string(url) +
              "\" (or pass --port)");
}

}  // namespace airlock::init
