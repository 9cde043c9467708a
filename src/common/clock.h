#pragma once

#include <atomic>
#include <cstdint>

#include "common/time_util.h"

namespace airlock {

// The wall clock the session logic reads for its decisions (a session's timeout, idleness, a
// replica's heartbeat), injected so that tests move time forward instead of sleeping.
// Timers that only pace work (the reconciler's tick, a long-poll's deadline) stay on the
// steady clock.
class Clock {
 public:
  virtual ~Clock() = default;
  // Milliseconds since the Unix epoch, the unit every stored timestamp uses.
  virtual int64_t NowMillis() const = 0;
};

class RealClock final : public Clock {
 public:
  int64_t NowMillis() const override { return airlock::NowMillis(); }
};

// A clock that moves only when told to; safe to read and advance from any thread.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(int64_t start = airlock::NowMillis()) : now_(start) {}
  int64_t NowMillis() const override { return now_.load(); }
  void Advance(int64_t millis) { now_.fetch_add(millis); }

 private:
  std::atomic<int64_t> now_;
};

}  // namespace airlock
