#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace airlock {

// Milliseconds since the Unix epoch (wall clock), the unit every stored timestamp uses.
int64_t NowMillis();
// RFC 3339 / ISO 8601 in UTC with milliseconds: "2026-11-23T11:24:00.123Z".
std::string FormatTimestamp(int64_t millis);
// Reads RFC 3339 ("2026-11-23T11:24:00.123Z", any offset) back into milliseconds since the
// epoch; nullopt for anything else.
std::optional<int64_t> ParseTimestamp(std::string_view text);

}  // namespace airlock
