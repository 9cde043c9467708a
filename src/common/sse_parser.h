#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

#include "common/result.h"

namespace airlock {

// One dispatched Server-Sent Event. `id` is the stream's last event id at dispatch time (the
// SSE rule: it persists across events until a new `id:` field changes it).
struct SseEvent {
  std::string id;
  std::string event;  // "message" when the stream named no type
  std::string data;   // multi-line data joined with '\n'
};

// Incremental parser for text/event-stream (the WHATWG "event stream interpretation"): feed it
// the body in pieces of any size, split anywhere, and it calls back once per complete event.
// Lines end in CRLF, LF or CR (a CR at the end of one piece and an LF at the start of the next
// count as one line end); lines starting with ':' are comments; `retry:` and unknown fields
// are ignored; an event with no data is not dispatched.
class SseParser {
 public:
  // Returning false from the callback stops parsing: Feed returns false at once.
  using Callback = std::function<bool(const SseEvent&)>;

  explicit SseParser(Callback on_event, size_t max_line_bytes = 16 << 20)
      : on_event_(std::move(on_event)), max_line_bytes_(max_line_bytes) {}

  // Parses `bytes`. Returns true to go on, false when the callback asked to stop; an error when
  // a line or an event grows beyond `max_line_bytes` (a broken or hostile server).
  Result<bool> Feed(std::string_view bytes);

  const std::string& last_event_id() const { return last_id_; }

 private:
  Result<bool> ProcessLine(std::string_view line);

  Callback on_event_;
  size_t max_line_bytes_;
  std::string line_;
  bool skip_lf_ = false;  // the previous piece ended in CR: a leading LF belongs to it
  bool at_start_ = true;  // a UTF-8 BOM is dropped at the very start of the stream
  std::string data_;
  std::string event_;
  std::string last_id_;
};

}  // namespace airlock
