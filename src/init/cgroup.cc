#include "cgroup.h"

#include <fcntl.h>
#include <unistd.h>

#include <charconv>
#include <string_view>

#include "sys.h"

namespace airlock::init {
namespace {

std::optional<uint64_t> ReadCounter(const std::string& file, std::string_view key) {
  UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    return std::nullopt;
  }
  char buf[4096];
  ssize_t n = ::read(fd.get(), buf, sizeof(buf));
  if (n <= 0) {
    return std::nullopt;
  }
  std::string_view text(buf, static_cast<size_t>(n));
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    if (line.size() > key.size() && line.starts_with(key) && line[key.size()] == ' ') {
      std::string_view value = line.substr(key.size() + 1);
      uint64_t count = 0;
      auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), count);
      if (ec == std::errc()) {
        return count;
      }
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<uint64_t> ReadOomKills(const std::string& cgroup_root) {
  if (auto v2 = ReadCounter(cgroup_root + "/memory.events", "oom_kill")) {
    return v2;
  }
  return ReadCounter(cgroup_root + "/memory/memory.oom_control", "oom_kill");
}

}  // namespace airlock::init
