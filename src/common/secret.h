#pragma once

#include <ostream>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

namespace airlock {

// Holds a credential (operator key, session token, provider key). It formats as "***" in
// fmt, spdlog and iostreams and has no JSON conversion, so printing or serialising one by
// mistake shows nothing or fails to compile. Reveal() is the single, greppable way out.
class Secret {
 public:
  Secret() = default;
  explicit Secret(std::string value) : value_(std::move(value)) {}
  Secret(const Secret&) = default;
  Secret& operator=(const Secret&) = default;
  Secret(Secret&&) noexcept = default;
  Secret& operator=(Secret&&) noexcept = default;
  ~Secret() { Wipe(); }

  const std::string& Reveal() const { return value_; }
  bool empty() const { return value_.empty(); }

 private:
  void Wipe() {
    volatile char* p = value_.data();
    for (size_t i = 0; i < value_.size(); ++i) p[i] = 0;
  }
  std::string value_;
};

inline std::ostream& operator<<(std::ostream& os, const Secret&) { return os << "***"; }

}  // namespace airlock

template <>
struct fmt::formatter<airlock::Secret> : fmt::formatter<std::string_view> {
  auto format(const airlock::Secret&, fmt::format_context& ctx) const {
    return fmt::formatter<std::string_view>::format("***", ctx);
  }
};
