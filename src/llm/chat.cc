#include "llm/chat.h"

namespace airlock::llm {

int64_t EstimateTokens(const Json& value) {
  // Nothing said costs nothing; the JSON punctuation of an empty value is not content.
  // (Json::empty() is true for null and for empty arrays and objects, never for a string.)
  if (value.empty() || (value.is_string() && value.get_ref<const std::string&>().empty())) {
    return 0;
  }
  const size_t bytes = DumpJson(value).size();
  return static_cast<int64_t>((bytes + 3) / 4);
}

}  // namespace airlock::llm
