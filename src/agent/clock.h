#pragma once

// Monotonic time for the sandbox side (deadlines survive wall-clock jumps; a frozen sandbox
// sees the time it was frozen pass).

#include <time.h>

#include <cerrno>
#include <cstdint>

namespace airlock::agent {

inline int64_t NowMs() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
}

inline void SleepMs(int64_t ms) {
  timespec ts{static_cast<time_t>(ms / 1000), static_cast<long>((ms % 1000) * 1'000'000)};
  while (::nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

}  // namespace airlock::agent
