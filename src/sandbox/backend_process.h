#pragma once

#include <memory>

#include "sandbox/backend.h"

namespace airlock::sandbox {

// Runs the session's command as a plain child process of the control plane: no namespaces,
// no seccomp, the control plane's own user. It exists for development and for driving the
// control plane from scripts before a real sandbox is available; it is NOT a security
// boundary, reports capabilities().isolated == false, and the server refuses it unless enabled in
// config. What it does guarantee: the child's environment holds exactly SESSION_ID, SESSION_TOKEN,
// CONTROL_PLANE_URL, PATH, HOME and LANG; it runs in its own process group; stdout/stderr go
// to work_dir/sandbox.log.
std::unique_ptr<Backend> MakeProcessBackend();

}  // namespace airlock::sandbox
