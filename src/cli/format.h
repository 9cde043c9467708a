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
// UTF-8 code points, so "→" takes one column. Every cell is shown Inert, on one line.
std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows);

// A duration for humans: "12s", "3m", "5h", "2d". Negative durations (clock skew) show "0s".
std::string FormatAge(int64_t millis);

// The local wall-clock time of an API timestamp, "HH:MM:SS"; the input itself if unparsable.
std::string FormatClock(std::string_view timestamp);

// Text that a sandbox wrote (a result, a file name, an event, a server message quoting one)
// made inert for the operator's terminal: nothing in it can act as a control sequence
// (a title change, a screen clear, an OSC 52 clipboard write, an OSC 8 link) or reorder what
// is shown (U+202E makes "invoice\u202efdp.exe" look like "invoiceexe.pdf"). Shown as visible
// escapes: C0 controls ("\n", "\r", "\t", else "\u001b"), DEL, C1 controls (U+0080-U+009F, which
// some terminals take for ESC sequences: U+009B is CSI), the bidirectional and invisible
// formatting controls (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069) and the line and
// paragraph separators U+2028, U+2029. Bytes that are not UTF-8 become U+FFFD. `multiline`
// text keeps "\n" and "\t" (and drops the "\r" of a CRLF); one-line text keeps neither.
std::string Inert(std::string_view text, bool multiline = false);

// Inert `multiline` text with each line after the first indented by `indent` spaces, so that a
// multi-line value cannot pass its lines off as lines of the CLI's own output.
std::string InertIndented(std::string_view text, size_t indent);

// JSON text (as DumpJson writes it) with the same characters written as \uXXXX: the same JSON
// value, valid JSON, and nothing a terminal acts on. (DumpJson escapes C0 controls already;
// DEL, C1 and the formatting controls it leaves as they are.)
std::string InertJson(std::string_view json_text);

// Inert multiline text that arrives in pieces (a sandbox's output streamed to a terminal): a
// UTF-8 sequence or a CRLF cut between two pieces is held back and shown with the next.
class InertStream {
 public:
  std::string Feed(std::string_view piece);
  std::string Finish();  // what was held back at the end

 private:
  std::string held_;
};

// At most `max_chars` code points of `text` on one line: line breaks shown as "⏎", "…" marks a
// cut, everything else that Inert escapes escaped the same way. Never splits a UTF-8 sequence.
std::string OneLine(std::string_view text, size_t max_chars);

// A short summary of an event's data for a progress line, e.g. "starting → running".
std::string SummarizeEvent(const Json& event);

// One progress line for an event object {"seq","type","data","created_at"}:
// "11:24:00  #3    session.state      starting → running".
std::string FormatEventLine(const Json& event);

// A command line as a shell would need it typed: words quoted only when they must be.
std::string ShellJoin(const std::vector<std::string>& words);

}  // namespace airlock::cli
