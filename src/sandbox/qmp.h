#pragma once

#include <chrono>
#include <string>

#include "common/json_util.h"
#include "common/result.h"

namespace airlock::sandbox {

// Runs one QMP command (QEMU Machine Protocol: JSON lines over a Unix socket) on the QEMU
// whose monitor listens at `socket_path`: connect, read the greeting, negotiate
// capabilities, execute `command` (no arguments), and return its "return" value. Events that
// arrive in between are skipped. A QMP "error" is kUnavailable with QEMU's description; the
// whole exchange is bounded by `timeout`.
Result<Json> QmpExecute(const std::string& socket_path, const std::string& command,
                        std::chrono::milliseconds timeout);

}  // namespace airlock::sandbox
