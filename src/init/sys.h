#pragma once

// The few system helpers airlock-init needs. Init links no project library (see
// CMakeLists.txt), so it carries its own tiny Result type and logger.

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <expected>
#include <string>
#include <string_view>
#include <utility>

namespace airlock::init {

// An error is a one-line reason, ready to be logged.
template <typename T>
using Result = std::expected<T, std::string>;
using Status = Result<void>;

inline std::unexpected<std::string> Fail(std::string message) {
  return std::unexpected(std::move(message));
}

// Fail("what: <strerror(err)>").
std::unexpected<std::string> FailErrno(std::string_view what, int err);

// "<what>: <strerror(err)>".
std::string ErrnoMessage(std::string_view what, int err);

// Writes "[airlock-init] <message>\n" to stderr in one write, so that lines of init and of
// the agent never interleave mid-line in the shared session log.
void Log(std::string_view message);

// Writes all of `data`, retrying on EINTR and short writes; false on any other error.
bool WriteAll(int fd, const void* data, size_t size);

// Milliseconds of CLOCK_MONOTONIC.
int64_t MonotonicMs();

// Sleeps for `ms` milliseconds (restarting on EINTR).
void SleepMs(int64_t ms);

// Owns one file descriptor.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { Reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() { return std::exchange(fd_, -1); }
  void Reset(int fd = -1);

 private:
  int fd_ = -1;
};

}  // namespace airlock::init
