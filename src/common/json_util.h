#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/result.h"

namespace airlock {

using Json = nlohmann::json;

// Parses untrusted JSON text: never throws, refuses nesting deeper than `max_depth` (so a
// hostile "[[[[..." cannot exhaust the stack), and names the offset of a syntax error.
Result<Json> ParseJson(std::string_view text, int max_depth = 64);

// Parses and requires a JSON object.
Result<Json> ParseJsonObject(std::string_view text, int max_depth = 64);

// Dumps without throwing on invalid UTF-8 (replaces it).
std::string DumpJson(const Json& j);
// DumpJson(obj) as if its member `key` were `value`: a large value is written from where it is
// instead of copied into the object first. `obj` must be an object that has `key` (checked:
// otherwise the object with `value` set is dumped the ordinary way).
std::string DumpJsonWithMember(const Json& obj, std::string_view key, const Json& value);

// Field accessors that report a clear error naming the field.
Result<std::optional<std::string>> OptionalString(const Json& obj, std::string_view key);
Result<std::string> RequiredString(const Json& obj, std::string_view key);
Result<std::optional<int64_t>> OptionalInt(const Json& obj, std::string_view key);
Result<std::optional<double>> OptionalNumber(const Json& obj, std::string_view key);

// Refuses keys of `obj` not listed in `allowed`, naming them.
Status RejectUnknownKeys(const Json& obj, std::initializer_list<std::string_view> allowed,
                         std::string_view where);

}  // namespace airlock
