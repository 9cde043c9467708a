// The SSE parser (common/sse_parser.h) reads LLM providers' streams: hostile bytes from an
// upstream or whatever sits between it and the control plane. Beyond not crashing, the input
// fed whole and fed in pieces (sizes taken from the input) must give the same events, since
// the transport splits the stream anywhere.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/sse_parser.h"
#include "fuzz/fuzz_util.h"

namespace {

struct Outcome {
  std::vector<airlock::SseEvent> events;
  bool error = false;
  std::string last_id;
};

Outcome Parse(std::string_view body, std::string_view piece_sizes, size_t max_line) {
  Outcome out;
  airlock::SseParser parser(
      [&out](const airlock::SseEvent& ev) {
        out.events.push_back(ev);
        return out.events.size() < 1000;
      },
      max_line);
  size_t k = 0;
  while (!body.empty()) {
    size_t n = piece_sizes.empty()
                   ? body.size()
                   : 1 + static_cast<uint8_t>(piece_sizes[k++ % piece_sizes.size()]) % 16;
    n = std::min(n, body.size());
    auto r = parser.Feed(body.substr(0, n));
    body.remove_prefix(n);
    if (!r) {
      out.error = true;
      break;
    }
    if (!*r) break;
  }
  out.last_id = parser.last_event_id();
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // The first byte says how many of the following bytes choose piece sizes.
  size_t n_sizes = std::min<size_t>(data[0] % 8, size - 1);
  std::string_view sizes = airlock::fuzz::AsView(data + 1, n_sizes);
  std::string_view body = airlock::fuzz::AsView(data + 1 + n_sizes, size - 1 - n_sizes);

  Outcome whole = Parse(body, {}, 16 << 20);
  Outcome pieces = Parse(body, sizes.empty() ? std::string_view("\x00", 1) : sizes, 16 << 20);
  if (whole.error || pieces.error) std::abort();  // inputs are far below 16 MiB
  bool same = whole.events.size() == pieces.events.size() && whole.last_id == pieces.last_id;
  for (size_t i = 0; same && i < whole.events.size(); ++i) {
    const auto& a = whole.events[i];
    const auto& b = pieces.events[i];
    same = a.id == b.id && a.event == b.event && a.data == b.data;
  }
  if (!same) {
    std::fprintf(stderr, "SSE events differ between one piece (%zu events) and many (%zu events)\n",
                 whole.events.size(), pieces.events.size());
    std::abort();
  }
  // Tight limits exercise the refusal paths.
  Parse(body, sizes, 32);
  return 0;
}
