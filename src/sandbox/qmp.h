#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "common/json_util.h"
#include "common/result.h"

namespace airlock::sandbox {

// One connection to a QEMU monitor (QMP, the QEMU Machine Protocol: JSON lines over a Unix
// socket), past its greeting and capability negotiation. Events that arrive between replies
// are skipped. A QMP "error" is kUnavailable with QEMU's description. Every read and write
// waits at most until the deadline given to Connect.
class QmpSession {
 public:
  static Result<QmpSession> Connect(const std::string& socket_path,
                                    std::chrono::milliseconds timeout);
  QmpSession(QmpSession&&) noexcept;
  QmpSession& operator=(QmpSession&&) noexcept;
  ~QmpSession();

  // Runs `command` with `arguments` (none when null) and returns its "return" value. With
  // `fd` >= 0 the descriptor goes along with the command (SCM_RIGHTS), as `getfd` needs: QEMU
  // keeps it under a name that later commands on this same session can use ("fd:NAME").
  Result<Json> Execute(const std::string& command, const Json& arguments = nullptr, int fd = -1);

  class Connection;

 private:
  explicit QmpSession(std::unique_ptr<Connection> c);
  std::unique_ptr<Connection> conn_;
};

// Runs one command without arguments on the QEMU whose monitor listens at `socket_path`: a
// session of its own for it, bounded by `timeout`.
Result<Json> QmpExecute(const std::string& socket_path, const std::string& command,
                        std::chrono::milliseconds timeout);

}  // namespace airlock::sandbox
