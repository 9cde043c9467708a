#include "tests/support/json_schema.h"

#include <cmath>
#include <regex>
#include <set>
#include <string_view>

#include <fmt/format.h>

namespace airlock::testing {

namespace {

constexpr int kMaxDepth = 64;  // a $ref cycle with no data under it ends here

const std::set<std::string, std::less<>> kChecked = {
    "type",     "properties", "required",  "additionalProperties",
    "items",    "enum",       "const",     "$ref",
    "allOf",    "anyOf",      "oneOf",     "minimum",
    "maximum",  "minLength",  "maxLength", "minItems",
    "maxItems", "pattern"};
const std::set<std::string, std::less<>> kAnnotations = {
    "description", "title",    "format",    "example",  "examples",         "default",
    "deprecated",  "readOnly", "writeOnly", "$comment", "contentMediaType", "contentEncoding"};
const std::set<std::string, std::less<>> kTypes = {"null",   "boolean", "object", "array",
                                                   "number", "integer", "string"};

std::string Child(const std::string& at, std::string_view key) {
  std::string out = at + "/";
  for (char c : key) {
    if (c == '~') {
      out += "~0";
    } else if (c == '/') {
      out += "~1";
    } else {
      out += c;
    }
  }
  return out;
}

std::string Where(const std::string& at) { return at.empty() ? "(root)" : at; }

bool HasType(const Json& v, std::string_view type) {
  if (type == "null") return v.is_null();
  if (type == "boolean") return v.is_boolean();
  if (type == "object") return v.is_object();
  if (type == "array") return v.is_array();
  if (type == "string") return v.is_string();
  if (type == "number") return v.is_number();
  if (type == "integer") {
    if (v.is_number_integer()) return true;
    if (!v.is_number_float()) return false;
    double d = v.get<double>();
    return std::isfinite(d) && std::floor(d) == d;
  }
  return false;
}

std::string TypeName(const Json& v) {
  if (v.is_number_integer()) return "integer";
  if (v.is_number_float()) return "number";
  return v.type_name();
}

size_t Characters(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string Short(const Json& v) {
  std::string s = DumpJson(v);
  return s.size() > 80 ? s.substr(0, 77) + "..." : s;
}

}  // namespace

const Json* JsonSchema::Resolve(const std::string& ref) const {
  if (ref.empty() || ref[0] != '#') return nullptr;
  try {
    Json::json_pointer p(ref.substr(1));
    if (!root_->contains(p)) return nullptr;
    return &root_->at(p);
  } catch (const std::exception&) {
    return nullptr;
  }
}

std::vector<std::string> JsonSchema::Validate(const Json& instance, const Json& schema) const {
  std::vector<std::string> errors;
  Check(instance, schema, "", 0, errors);
  return errors;
}

void JsonSchema::Check(const Json& v, const Json& s, const std::string& at, int depth,
                       std::vector<std::string>& errors) const {
  auto fail = [&](std::string why) { errors.push_back(Where(at) + ": " + std::move(why)); };
  if (depth > kMaxDepth) {
    fail("the schema nests deeper than " + std::to_string(kMaxDepth) + " (a $ref cycle?)");
    return;
  }
  if (s.is_boolean()) {
    if (!s.get<bool>()) fail("no value is allowed here");
    return;
  }
  if (!s.is_object()) {
    fail("the schema is not an object: " + Short(s));
    return;
  }
  if (auto it = s.find("$ref"); it != s.end()) {
    const Json* target = it->is_string() ? Resolve(it->get<std::string>()) : nullptr;
    if (!target) {
      fail("unresolvable $ref " + Short(*it));
    } else {
      Check(v, *target, at, depth + 1, errors);
    }
  }
  if (auto it = s.find("type"); it != s.end()) {
    bool ok = false;
    std::string names;
    for (const Json& t : it->is_array() ? *it : Json::array({*it})) {
      if (!t.is_string()) continue;
      ok = ok || HasType(v, t.get<std::string>());
      names += (names.empty() ? "" : " or ") + t.get<std::string>();
    }
    if (!ok) fail(fmt::format("expected {}, got {} {}", names, TypeName(v), Short(v)));
  }
  if (auto it = s.find("enum"); it != s.end() && it->is_array()) {
    bool ok = false;
    for (const Json& e : *it) ok = ok || e == v;
    if (!ok) fail(fmt::format("{} is not one of {}", Short(v), Short(*it)));
  }
  if (auto it = s.find("const"); it != s.end() && *it != v) {
    fail(fmt::format("expected {}, got {}", Short(*it), Short(v)));
  }
  if (v.is_object()) {
    const Json* props = nullptr;
    if (auto it = s.find("properties"); it != s.end() && it->is_object()) props = &*it;
    if (auto it = s.find("required"); it != s.end() && it->is_array()) {
      for (const Json& name : *it) {
        if (name.is_string() && !v.contains(name.get<std::string>()))
          fail(fmt::format("required property \"{}\" is missing", name.get<std::string>()));
      }
    }
    const Json* extra = nullptr;
    if (auto it = s.find("additionalProperties"); it != s.end()) extra = &*it;
    for (const auto& [key, value] : v.items()) {
      if (props && props->contains(key)) {
        Check(value, (*props)[key], Child(at, key), depth + 1, errors);
      } else if (extra && extra->is_boolean() && !extra->get<bool>()) {
        errors.push_back(Child(at, key) + ": property \"" + key + "\" is not documented");
      } else if (extra && extra->is_object()) {
        Check(value, *extra, Child(at, key), depth + 1, errors);
      }
    }
  }
  if (v.is_array()) {
    if (auto it = s.find("items"); it != s.end()) {
      for (size_t i = 0; i < v.size(); ++i)
        Check(v[i], *it, Child(at, std::to_string(i)), depth + 1, errors);
    }
    if (auto it = s.find("minItems"); it != s.end() && v.size() < it->get<size_t>())
      fail(fmt::format("{} items, fewer than {}", v.size(), it->get<size_t>()));
    if (auto it = s.find("maxItems"); it != s.end() && v.size() > it->get<size_t>())
      fail(fmt::format("{} items, more than {}", v.size(), it->get<size_t>()));
  }
  if (v.is_string()) {
    const auto& str = v.get_ref<const std::string&>();
    size_t n = Characters(str);
    if (auto it = s.find("minLength"); it != s.end() && n < it->get<size_t>())
      fail(fmt::format("{} characters, fewer than {}", n, it->get<size_t>()));
    if (auto it = s.find("maxLength"); it != s.end() && n > it->get<size_t>())
      fail(fmt::format("{} characters, more than {}", n, it->get<size_t>()));
    if (auto it = s.find("pattern"); it != s.end() && it->is_string()) {
      try {
        if (!std::regex_search(str, std::regex(it->get<std::string>())))
          fail(fmt::format("{} does not match /{}/", Short(v), it->get<std::string>()));
      } catch (const std::regex_error&) {
        fail("the schema's pattern is not a valid regular expression");
      }
    }
  }
  if (v.is_number()) {
    double d = v.get<double>();
    if (auto it = s.find("minimum"); it != s.end() && d < it->get<double>())
      fail(fmt::format("{} is less than the minimum {}", Short(v), Short(*it)));
    if (auto it = s.find("maximum"); it != s.end() && d > it->get<double>())
      fail(fmt::format("{} is more than the maximum {}", Short(v), Short(*it)));
  }
  if (auto it = s.find("allOf"); it != s.end() && it->is_array()) {
    for (const Json& sub : *it) Check(v, sub, at, depth + 1, errors);
  }
  for (const char* kw : {"anyOf", "oneOf"}) {
    auto it = s.find(kw);
    if (it == s.end() || !it->is_array()) continue;
    size_t matched = 0;
    std::string why;
    for (size_t i = 0; i < it->size(); ++i) {
      std::vector<std::string> sub;
      Check(v, (*it)[i], at, depth + 1, sub);
      if (sub.empty()) {
        ++matched;
      } else {
        why += fmt::format(" [{}] {}", i, sub.front());
      }
    }
    if (matched == 0) fail(fmt::format("matches none of {}:{}", kw, why));
    if (std::string_view(kw) == "oneOf" && matched > 1)
      fail(fmt::format("matches {} of oneOf, not exactly one", matched));
  }
}

std::vector<std::string> JsonSchema::Problems(const Json& schema, const std::string& where) const {
  std::vector<std::string> out;
  if (schema.is_boolean()) return out;
  if (!schema.is_object()) {
    out.push_back(where + ": a schema must be an object or a boolean");
    return out;
  }
  auto sub = [&](const Json& s, const std::string& at) {
    auto more = Problems(s, at);
    out.insert(out.end(), more.begin(), more.end());
  };
  for (const auto& [key, value] : schema.items()) {
    const std::string at = Child(where, key);
    if (key.starts_with("x-") || kAnnotations.count(key)) continue;
    if (!kChecked.count(key)) {
      out.push_back(at + ": keyword not checked by the test validator");
      continue;
    }
    if (key == "$ref") {
      if (!value.is_string() || !Resolve(value.get<std::string>()))
        out.push_back(at + ": unresolvable $ref " + Short(value));
    } else if (key == "type") {
      for (const Json& t : value.is_array() ? value : Json::array({value})) {
        if (!t.is_string() || !kTypes.count(t.get<std::string>()))
          out.push_back(at + ": no such type " + Short(t));
      }
    } else if (key == "properties") {
      if (!value.is_object()) {
        out.push_back(at + ": must be an object");
        continue;
      }
      for (const auto& [name, s] : value.items()) sub(s, Child(at, name));
    } else if (key == "additionalProperties" || key == "items") {
      sub(value, at);
    } else if (key == "allOf" || key == "anyOf" || key == "oneOf") {
      if (!value.is_array() || value.empty()) {
        out.push_back(at + ": must be a non-empty array");
        continue;
      }
      for (size_t i = 0; i < value.size(); ++i) sub(value[i], Child(at, std::to_string(i)));
    } else if (key == "required" || key == "enum") {
      if (!value.is_array()) out.push_back(at + ": must be an array");
    } else if (key == "minimum" || key == "maximum") {
      if (!value.is_number()) out.push_back(at + ": must be a number");
    } else if (key == "minLength" || key == "maxLength" || key == "minItems" || key == "maxItems") {
      if (!value.is_number_integer() || value.get<int64_t>() < 0)
        out.push_back(at + ": must be a non-negative integer");
    } else if (key == "pattern") {
      try {
        std::regex re(value.get<std::string>());
      } catch (const std::exception&) {
        out.push_back(at + ": not a valid ECMAScript regular expression");
      }
    }
  }
  return out;
}

}  // namespace airlock::testing
