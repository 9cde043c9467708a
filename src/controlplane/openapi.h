#pragma once

#include <string_view>

namespace airlock::controlplane {

// docs/openapi.json, the OpenAPI 3.1 document of both listeners, as built into the binary
// (cmake/EmbedFile.cmake). The operator listener serves it at GET /openapi.json.
std::string_view OpenApiDocument();

}  // namespace airlock::controlplane
