#pragma once

#include <cstdint>

#include "sys.h"

namespace airlock::init {

// Copies the agent's output (the read end of its stdout/stderr pipe) to init's stdout, the
// session log, up to a byte limit. Past the limit it writes one marker line and then keeps
// reading and discarding, so that a chatty agent never blocks on a full pipe.
class LogRelay {
 public:
  LogRelay(UniqueFd pipe, int out_fd, uint64_t limit);

  // The non-blocking pipe to poll for input.
  int fd() const { return pipe_.get(); }
  bool open() const { return pipe_.valid(); }

  // Relays what the pipe holds now, without blocking. At EOF closes the pipe.
  void Drain();

  uint64_t bytes_read() const { return read_; }

 private:
  void Emit(const char* data, size_t size);

  UniqueFd pipe_;
  int out_fd_;
  uint64_t limit_;
  uint64_t read_ = 0;
  uint64_t written_ = 0;
  bool capped_ = false;
};

}  // namespace airlock::init
