#pragma once

// The provider of an HTTP(S) upstream speaking the OpenAI or Anthropic wire format.

#include <memory>

#include "common/secret.h"
#include "llm/chat.h"
#include "llm/provider.h"
#include "llm/upstream_client.h"

namespace airlock::llm {

// An upstream over HTTP(S), reached through `client` (the provider's own, so that its
// connections live exactly as long as the provider that uses them).
std::unique_ptr<Provider> MakeHttpProvider(std::unique_ptr<WireFormat> format, Endpoint endpoint,
                                           Secret api_key, std::unique_ptr<UpstreamClient> client);

}  // namespace airlock::llm
