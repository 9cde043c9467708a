#pragma once

#include "common/time_util.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/json_util.h"

namespace airlock::cli {

// Left-aligned columns separated by two spaces; the last column is not padded. Widths count
// UTF-8 code points, so "→" takes one column.
std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows);


// A duration for humans: "12s", "3m", "5h", "2d". Negative durations (clock skew) show "0s".
std::string FormatAge(int64_t millis);

// The local wall-clock time of an API timestamp, "HH:MM:SS"; the input itself if unparsable.
std::string FormatClock(std::string_view timestamp);

// At most `max_chars` code points of `text` on one line: line breaks shown as "⏎", "…" marks a
// cut. Never splits a UTF-8 sequence.
std::string OneLine(std::string_view text, size_t max_chars);

// A short summary of an event's data for a progress line, e.g. "starting → running".
std::string SummarizeEvent(const Json& event);

// One progress line for an event object {"seq","type","data","created_at"}:
// "11:24:00  #3    session.state      starting → running".
std::string FormatEventLine(const Json& event);

// A command line as a shell would need it typed: words quoted only when they must be.
std::string ShellJoin(const std::vector<std::string>& words);

}  // namespace airlock::cli
