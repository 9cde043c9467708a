#pragma once

#include <cstdint>
#include <string>

namespace airlock {

// Milliseconds since the Unix epoch (wall clock), the unit every stored timestamp uses.
int64_t NowMillis();
// RFC 3339 / ISO 8601 in UTC with milliseconds: "2026-11-23T11:24:00.123Z".
std::string FormatTimestamp(int64_t millis);

}  // namespace airlock
