#pragma once

// The reader of the configuration file's tables, shared by config.cc and the kinds of the plug
// points (plug_points.cc), each of which reads its own section with it.

#include <chrono>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <toml++/toml.h>

#include "common/result.h"

namespace airlock::controlplane {

// Reads typed values from one TOML table and remembers which keys were consumed, so that
// anything left over can be reported as unknown with its full dotted name.
class TableReader {
 public:
  TableReader(const toml::table* table, std::string path) : table_(table), path_(std::move(path)) {}

  std::string Key(std::string_view k) const {
    return path_.empty() ? std::string(k) : path_ + "." + std::string(k);
  }

  Status String(std::string_view k, std::string* out) {
    seen_.insert(std::string(k));
    if (!table_) return Ok();
    const toml::node* n = table_->get(k);
    if (!n) return Ok();
    auto v = n->value<std::string>();
    if (!n->is_string() || !v)
      return Errorf(ErrorCode::kInvalidArgument, "{} must be a string", Key(k));
    *out = *v;
    return Ok();
  }

  Status Int(std::string_view k, int64_t* out, int64_t min, int64_t max) {
    seen_.insert(std::string(k));
    if (!table_) return Ok();
    const toml::node* n = table_->get(k);
    if (!n) return Ok();
    if (!n->is_integer())
      return Errorf(ErrorCode::kInvalidArgument, "{} must be an integer", Key(k));
    int64_t v = *n->value<int64_t>();
    if (v < min || v > max) {
      return Errorf(ErrorCode::kInvalidArgument, "{} = {} is out of range [{}, {}]", Key(k), v, min,
                    max);
    }
    *out = v;
    return Ok();
  }

  template <typename T>
  Status IntAs(std::string_view k, T* out, int64_t min, int64_t max) {
    int64_t v = static_cast<int64_t>(*out);
    AIRLOCK_TRY(Int(k, &v, min, max));
    *out = static_cast<T>(v);
    return Ok();
  }

  Status Double(std::string_view k, double* out, double min) {
    seen_.insert(std::string(k));
    if (!table_) return Ok();
    const toml::node* n = table_->get(k);
    if (!n) return Ok();
    if (!n->is_number()) return Errorf(ErrorCode::kInvalidArgument, "{} must be a number", Key(k));
    double v = n->is_integer() ? static_cast<double>(*n->value<int64_t>()) : *n->value<double>();
    if (v < min) return Errorf(ErrorCode::kInvalidArgument, "{} must be >= {}", Key(k), min);
    *out = v;
    return Ok();
  }

  // An array of strings.
  Status Strings(std::string_view k, std::vector<std::string>* out) {
    seen_.insert(std::string(k));
    if (!table_) return Ok();
    const toml::node* n = table_->get(k);
    if (!n) return Ok();
    const toml::array* a = n->as_array();
    if (!a) return Errorf(ErrorCode::kInvalidArgument, "{} must be an array of strings", Key(k));
    std::vector<std::string> v;
    for (const auto& item : *a) {
      auto s = item.value<std::string>();
      if (!item.is_string() || !s) {
        return Errorf(ErrorCode::kInvalidArgument, "{} must be an array of strings", Key(k));
      }
      v.push_back(*s);
    }
    *out = std::move(v);
    return Ok();
  }

  Status Bool(std::string_view k, bool* out) {
    seen_.insert(std::string(k));
    if (!table_) return Ok();
    const toml::node* n = table_->get(k);
    if (!n) return Ok();
    if (!n->is_boolean())
      return Errorf(ErrorCode::kInvalidArgument, "{} must be true or false", Key(k));
    *out = *n->value<bool>();
    return Ok();
  }

  Status Millis(std::string_view k, std::chrono::milliseconds* out) {
    double secs = static_cast<double>(out->count()) / 1000.0;
    AIRLOCK_TRY(Double(k, &secs, 0.001));
    *out = std::chrono::milliseconds(static_cast<int64_t>(secs * 1000));
    return Ok();
  }

  // A sub-table; absent is fine (nullptr).
  Result<const toml::table*> Table(std::string_view k) {
    seen_.insert(std::string(k));
    if (!table_) return nullptr;
    const toml::node* n = table_->get(k);
    if (!n) return nullptr;
    if (!n->is_table()) return Errorf(ErrorCode::kInvalidArgument, "{} must be a table", Key(k));
    return n->as_table();
  }

  // Whether `k` has been asked for.
  bool Read(std::string_view k) const { return seen_.count(std::string(k)) > 0; }

  Status RejectUnknown() const {
    if (!table_) return Ok();
    std::vector<std::string> unknown;
    for (const auto& [k, v] : *table_) {
      if (!seen_.count(std::string(k.str()))) unknown.push_back(Key(k.str()));
    }
    if (unknown.empty()) return Ok();
    std::string list;
    for (const auto& u : unknown) list += (list.empty() ? "" : ", ") + u;
    return Errorf(ErrorCode::kInvalidArgument, "unknown configuration key(s): {}", list);
  }

 private:
  const toml::table* table_;
  std::string path_;
  std::set<std::string> seen_;
};

}  // namespace airlock::controlplane
