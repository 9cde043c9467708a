#pragma once

#include <string>
#include <vector>

#include "sys.h"
#include "work.h"

namespace airlock::init {

// What init takes from its environment. The token lives only here, in init's memory.
struct SessionEnv {
  std::string session_id;
  std::string token;
  std::string control_plane_url;
  std::string path;  // empty when init got no PATH
};

// Copies the variables init needs out of `envp` (main's third argument), then empties the
// process environment. clearenv() only empties libc's view: the kernel serves
// /proc/<pid>/environ from the strings the process started with, so those are zeroed too.
SessionEnv TakeEnvironment(char** envp);

// Fails with a one-line reason when one of the three session variables is missing or empty.
Status CheckSessionEnv(const SessionEnv& env);

// The agent's whole environment, "NAME=value" strings: the three session variables, PATH,
// HOME and LANG. Nothing else of init's environment reaches the agent. With `egress`, the
// proxy variables (HTTP_PROXY, HTTPS_PROXY, NO_PROXY and their lower-case forms) point at the
// control plane, whose gateway is the only way out. With `ca_bundle`, the usual trust-store
// variables (SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, NODE_EXTRA_CA_CERTS) name it.
std::vector<std::string> AgentEnvironment(const SessionEnv& env, const std::string& home,
                                          const std::vector<std::string>& image_env = {},
                                          const EnvVars& session_vars = {}, bool egress = false,
                                          const std::string& ca_bundle = "");

// The PATH the agent gets.
std::string AgentPath(const SessionEnv& env);

}  // namespace airlock::init
