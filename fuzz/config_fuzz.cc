// The TOML configuration (controlplane/config.h): operators write it, but it is also the
// first thing a deployment tool may template from less trusted data. Any text must give a
// Config or an error naming the key, never a crash.
#include <cstdint>

#include "controlplane/config.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto config = airlock::controlplane::ParseConfig(airlock::fuzz::AsView(data, size),
                                                   "/nonexistent/airlock-home", "fuzz.toml");
  if (config) {
    // What the start-up path does next with a parsed config.
    airlock::controlplane::ApplyDefaultModel(*config,
                                             [](const char*) -> const char* { return nullptr; });
  }
  return 0;
}
