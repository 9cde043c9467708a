#include "environment.h"

#include <cstdlib>
#include <cstring>
#include <string_view>

namespace airlock::init {
namespace {

constexpr std::string_view kDefaultPath = "/usr/local/bin:/usr/bin:/bin";

}  // namespace

SessionEnv TakeEnvironment(char** envp) {
  SessionEnv env;
  for (char** e = envp; e != nullptr && *e != nullptr; ++e) {
    std::string_view entry = *e;
    size_t eq = entry.find('=');
    if (eq == std::string_view::npos) {
      continue;
    }
    std::string_view name = entry.substr(0, eq);
    std::string_view value = entry.substr(eq + 1);
    if (name == "SESSION_ID") {
      env.session_id = value;
    } else if (name == "SESSION_TOKEN") {
      env.token = value;
    } else if (name == "CONTROL_PLANE_URL") {
      env.control_plane_url = value;
    } else if (name == "PATH") {
      env.path = value;
    }
  }
  ::clearenv();
  // The kernel laid the strings out back to back from mm->env_start to mm->env_end; zeroing
  // each one (their terminators already are zero) blanks that whole range.
  for (char** e = envp; e != nullptr && *e != nullptr; ++e) {
    ::explicit_bzero(*e, std::strlen(*e));
  }
  return env;
}

Status CheckSessionEnv(const SessionEnv& env) {
  if (env.session_id.empty()) {
    return Fail("SESSION_ID is not set");
  }
  if (env.token.empty()) {
    return Fail("SESSION_TOKEN is not set");
  }
  if (env.control_plane_url.empty()) {
    return Fail("CONTROL_PLANE_URL is not set");
  }
  return {};
}

std::string AgentPath(const SessionEnv& env) {
  return env.path.empty() ? std::string(kDefaultPath) : env.path;
}

std::vector<std::string> AgentEnvironment(const SessionEnv& env, const std::string& home,
                                          const std::vector<std::string>& image_env,
                                          const EnvVars& session_vars, bool egress,
                                          const std::string& ca_bundle) {
  std::vector<std::string> reserved = {
      "SESSION_ID=" + env.session_id,
      "SESSION_TOKEN=" + env.token,
      "CONTROL_PLANE_URL=" + env.control_plane_url,
  };
  if (egress) {
    // The gateway answers on the control plane's own port, over the same channel. Both
    // spellings: curl reads only the lower-case http_proxy, Go and Python either.
    for (const char* name : {"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"}) {
      reserved.push_back(std::string(name) + "=" + env.control_plane_url);
    }
    for (const char* name : {"NO_PROXY", "no_proxy"}) {
      reserved.push_back(std::string(name) + "=127.0.0.1,localhost,::1");
    }
  }
  if (!ca_bundle.empty()) {
    for (const char* name :
         {"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"}) {
      reserved.push_back(std::string(name) + "=" + ca_bundle);
    }
  }
  return MergeEnvironment({"PATH=" + AgentPath(env), "HOME=" + home, "LANG=C.UTF-8"}, image_env,
                          session_vars, reserved);
}

}  // namespace airlock::init
