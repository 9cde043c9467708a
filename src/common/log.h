#pragma once

#include <string_view>

#include <nlohmann/json.hpp>

namespace airlock::log {

enum class Level { kDebug, kInfo, kWarn, kError };
enum class Format { kJson, kText };

// Configures the process-wide logger (stderr). Safe to call more than once.
void Init(Level level, Format format);
bool ParseLevel(std::string_view text, Level* out);

// Writes one structured line: {"ts":..., "level":..., "msg": msg, ...fields}. Fields must
// be a JSON object. `Secret` has no JSON conversion, so a credential cannot be passed here.
void Write(Level level, std::string_view msg, const nlohmann::json& fields = nullptr);

inline void Debug(std::string_view msg, const nlohmann::json& f = nullptr) {
  Write(Level::kDebug, msg, f);
}
inline void Info(std::string_view msg, const nlohmann::json& f = nullptr) {
  Write(Level::kInfo, msg, f);
}
inline void Warn(std::string_view msg, const nlohmann::json& f = nullptr) {
  Write(Level::kWarn, msg, f);
}
inline void Error(std::string_view msg, const nlohmann::json& f = nullptr) {
  Write(Level::kError, msg, f);
}

bool Enabled(Level level);

}  // namespace airlock::log
