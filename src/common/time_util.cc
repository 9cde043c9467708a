#include "common/time_util.h"

#include <charconv>
#include <chrono>
#include <ctime>

#include <fmt/format.h>

namespace airlock {
namespace {

bool ParseDigits(std::string_view s, int* out) {
  if (s.empty()) {
    return false;
  }
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size();
}

}  // namespace

int64_t NowMillis() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string FormatTimestamp(int64_t millis) {
  std::time_t secs = static_cast<std::time_t>(millis / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  return fmt::format("{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}.{:03d}Z", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     static_cast<int>(millis % 1000));
}

std::optional<int64_t> ParseTimestamp(std::string_view t) {
  // YYYY-MM-DDTHH:MM:SS[.fff...](Z|+HH:MM|-HH:MM)
  if (t.size() < 20 || t[4] != '-' || t[7] != '-' ||
      (t[10] != 'T' && t[10] != 't' && t[10] != ' ') || t[13] != ':' || t[16] != ':') {
    return std::nullopt;
  }
  std::tm tm{};
  int year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
  if (!ParseDigits(t.substr(0, 4), &year) || !ParseDigits(t.substr(5, 2), &month) ||
      !ParseDigits(t.substr(8, 2), &day) || !ParseDigits(t.substr(11, 2), &hour) ||
      !ParseDigits(t.substr(14, 2), &minute) || !ParseDigits(t.substr(17, 2), &second)) {
    return std::nullopt;
  }
  if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60) {
    return std::nullopt;
  }
  std::string_view rest = t.substr(19);
  int64_t millis = 0;
  if (!rest.empty() && rest.front() == '.') {
    size_t n = 1;
    int64_t scale = 100;
    while (n < rest.size() && rest[n] >= '0' && rest[n] <= '9') {
      millis += (rest[n] - '0') * scale;
      scale /= 10;
      ++n;
    }
    if (n == 1) {
      return std::nullopt;
    }
    rest.remove_prefix(n);
  }
  int64_t offset_s = 0;
  if (rest == "Z" || rest == "z") {
    offset_s = 0;
  } else if (rest.size() == 6 && (rest[0] == '+' || rest[0] == '-') && rest[3] == ':') {
    int oh = 0, om = 0;
    if (!ParseDigits(rest.substr(1, 2), &oh) || !ParseDigits(rest.substr(4, 2), &om)) {
      return std::nullopt;
    }
    offset_s = (oh * 3600 + om * 60) * (rest[0] == '-' ? -1 : 1);
  } else {
    return std::nullopt;
  }
  tm.tm_year = year - 1900;
  tm.tm_mon = month - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = minute;
  tm.tm_sec = second;
  time_t secs = ::timegm(&tm);
  return (static_cast<int64_t>(secs) - offset_s) * 1000 + millis;
}

}  // namespace airlock
