// The HTTP request path: raw bytes (one request or several, pipelined) on a connection to
// the control plane's real HttpServer, with its limits, 100-continue, streamed uploads and
// early error answers, through the Router to the route's checks (fuzz/http_harness.h).
// Whatever the bytes, the server answers or closes, and keeps running.
#include <cstdint>

#include "fuzz/http_harness.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static auto* harness = new airlock::fuzz::HttpHarness();
  (void)harness->Exchange(airlock::fuzz::AsView(data, size));
  return 0;
}
