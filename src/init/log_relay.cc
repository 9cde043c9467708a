#include "log_relay.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string>

namespace airlock::init {

LogRelay::LogRelay(UniqueFd pipe, int out_fd, uint64_t limit)
    : pipe_(std::move(pipe)), out_fd_(out_fd), limit_(limit) {}

void LogRelay::Drain() {
  char buf[64 * 1024];
  while (pipe_.valid()) {
    ssize_t n = ::read(pipe_.get(), buf, sizeof(buf));
    if (n > 0) {
      read_ += static_cast<uint64_t>(n);
      Emit(buf, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0 && errno == EAGAIN) {
      return;
    }
    // EOF (every writer is gone) or an error that reading again will not fix.
    pipe_.Reset();
  }
}

void LogRelay::Emit(const char* data, size_t size) {
  if (capped_) {
    return;
  }
  size_t keep = static_cast<size_t>(std::min<uint64_t>(size, limit_ - written_));
  // A failing log file (full disk) must not stop init; the output is lost either way.
  if (keep > 0) {
    WriteAll(out_fd_, data, keep);
    written_ += keep;
  }
  if (keep < size) {
    capped_ = true;
    std::string marker = "[airlock-init] log limit of " + std::to_string(limit_) +
                         " bytes reached; further output dropped\n";
    WriteAll(out_fd_, marker.data(), marker.size());
  }
}

}  // namespace airlock::init
