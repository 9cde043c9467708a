// The OpenAi wire format (src/llm/openai.cc): replies and streams come from an upstream the
// control plane does not control, and the conversation it translates comes from the sandbox.
// See llm_format_fuzz.h for the input layout.
#include "fuzz/llm_format_fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto format = airlock::llm::MakeOpenAiFormat();
  return airlock::fuzz::FuzzWireFormat(*format, data, size);
}
