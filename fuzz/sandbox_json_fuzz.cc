// The JSON bodies of the routes a sandbox (and the operator) posts: the first byte picks the
// route (fuzz/route_bodies.h), the rest is the body. Every body must end in a value or a
// clean error.
#include <cstdint>

#include "fuzz/fuzz_util.h"
#include "fuzz/route_bodies.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using airlock::fuzz::BodyRoute;
  if (size == 0) return 0;
  auto route = static_cast<BodyRoute>(data[0] % static_cast<uint8_t>(BodyRoute::kCount));
  (void)airlock::fuzz::CheckBody(route, airlock::fuzz::AsView(data + 1, size - 1));
  return 0;
}
