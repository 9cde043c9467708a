#include "common/json_util.h"

#include <algorithm>
#include <cstdint>

namespace airlock {

namespace {

// Nesting depth of JSON text, counted outside strings. Runs before the parser so that
// depth is bounded regardless of the parser's own recursion.
int MaxNesting(std::string_view text) {
  int depth = 0;
  int max_depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"')
      in_string = true;
    else if (c == '[' || c == '{')
      max_depth = std::max(max_depth, ++depth);
    else if (c == ']' || c == '}')
      --depth;
  }
  return max_depth;
}

}  // namespace

Result<Json> ParseJson(std::string_view text, int max_depth) {
  if (MaxNesting(text) > max_depth) {
    return Errorf(ErrorCode::kInvalidArgument, "JSON nested deeper than {} levels", max_depth);
  }
  try {
    return Json::parse(text);
  } catch (const Json::parse_error& e) {
    return Errorf(ErrorCode::kInvalidArgument, "malformed JSON at byte {}", e.byte);
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kInvalidArgument, "malformed JSON");
  }
}

Result<Json> ParseJsonObject(std::string_view text, int max_depth) {
  AIRLOCK_ASSIGN_OR_RETURN(Json j, ParseJson(text, max_depth));
  if (!j.is_object()) return MakeError(ErrorCode::kInvalidArgument, "body must be a JSON object");
  return j;
}

std::string DumpJson(const Json& j) {
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string DumpJsonWithMember(const Json& obj, std::string_view key, const Json& value) {
  if (!obj.is_object() || !obj.contains(key)) {
    Json whole = obj.is_object() ? obj : Json::object();
    whole[std::string(key)] = value;
    return DumpJson(whole);
  }
  std::string out = "{";
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    if (out.size() > 1) out += ',';
    out += DumpJson(it.key());
    out += ':';
    out += DumpJson(it.key() == key ? value : it.value());
  }
  out += '}';
  return out;
}

Result<std::optional<std::string>> OptionalString(const Json& obj, std::string_view key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::optional<std::string>();
  if (!it->is_string()) return Errorf(ErrorCode::kInvalidArgument, "\"{}\" must be a string", key);
  return std::optional<std::string>(it->get<std::string>());
}

Result<std::string> RequiredString(const Json& obj, std::string_view key) {
  AIRLOCK_ASSIGN_OR_RETURN(auto v, OptionalString(obj, key));
  if (!v) return Errorf(ErrorCode::kInvalidArgument, "\"{}\" is required", key);
  return *v;
}

Result<std::optional<int64_t>> OptionalInt(const Json& obj, std::string_view key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::optional<int64_t>();
  // An unsigned value over INT64_MAX would wrap to a negative one: refused, not converted.
  if (it->is_number_unsigned()) {
    if (it->get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX))
      return std::optional<int64_t>(static_cast<int64_t>(it->get<uint64_t>()));
  } else if (it->is_number_integer()) {
    return std::optional<int64_t>(it->get<int64_t>());
  }
  if (it->is_number_float()) {
    // The range first: converting a double outside int64_t's (or a NaN) is undefined.
    double d = it->get<double>();
    if (d > -9e18 && d < 9e18 && d == static_cast<double>(static_cast<int64_t>(d))) {
      return std::optional<int64_t>(static_cast<int64_t>(d));
    }
  }
  return Errorf(ErrorCode::kInvalidArgument, "\"{}\" must be an integer", key);
}

Result<std::optional<double>> OptionalNumber(const Json& obj, std::string_view key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::optional<double>();
  if (!it->is_number()) return Errorf(ErrorCode::kInvalidArgument, "\"{}\" must be a number", key);
  return std::optional<double>(it->get<double>());
}

Status RejectUnknownKeys(const Json& obj, std::initializer_list<std::string_view> allowed,
                         std::string_view where) {
  std::string unknown;
  for (const auto& [k, v] : obj.items()) {
    if (std::find(allowed.begin(), allowed.end(), k) == allowed.end()) {
      if (!unknown.empty()) unknown += ", ";
      unknown += "\"" + k.substr(0, 64) + "\"";
    }
  }
  if (!unknown.empty()) {
    return Errorf(ErrorCode::kInvalidArgument, "unknown field(s) in {}: {}", where, unknown);
  }
  return Ok();
}

}  // namespace airlock
