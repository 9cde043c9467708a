#pragma once

// Helpers shared by the fuzz targets: splitting one input into parts, a scratch directory.

#include <stdlib.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace airlock::fuzz {

inline std::string_view AsView(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// Splits an input into at most `max_parts` pieces at each "\n--\n", so a seed can hold several
// documents (the last part takes the rest).
inline std::vector<std::string_view> SplitParts(std::string_view in, size_t max_parts) {
  constexpr std::string_view kSep = "\n--\n";
  std::vector<std::string_view> parts;
  while (parts.size() + 1 < max_parts) {
    size_t at = in.find(kSep);
    if (at == std::string_view::npos) break;
    parts.push_back(in.substr(0, at));
    in.remove_prefix(at + kSep.size());
  }
  parts.push_back(in);
  return parts;
}

// A directory under $TMPDIR made once per process; the caller empties what it uses.
inline const std::string& ScratchDir() {
  static const std::string dir = [] {
    std::string tmpl = (std::filesystem::temp_directory_path() / "airlock-fuzz-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) {
      std::perror("mkdtemp");
      std::abort();
    }
    return tmpl;
  }();
  return dir;
}

}  // namespace airlock::fuzz
