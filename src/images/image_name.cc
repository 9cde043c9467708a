#include "images/image_name.h"

#include <fmt/format.h>

namespace airlock::images {

namespace {

bool IsLowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }
bool IsAlnum(char c) { return IsLowerAlnum(c) || (c >= 'A' && c <= 'Z'); }

Status CheckRepository(std::string_view repo, std::string_view whole) {
  if (repo.empty()) {
    return Errorf(ErrorCode::kInvalidArgument, "image name \"{}\" has an empty name part", whole);
  }
  size_t start = 0;
  while (start <= repo.size()) {
    size_t end = repo.find('/', start);
    std::string_view component =
        repo.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
    if (component.empty()) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "image name \"{}\" has an empty path component (leading, trailing or "
                    "double '/')",
                    whole);
    }
    for (char c : component) {
      if (!IsLowerAlnum(c) && c != '.' && c != '_' && c != '-') {
        return Errorf(ErrorCode::kInvalidArgument,
                      "image name \"{}\": the name may hold only lowercase letters, digits and "
                      "'.', '_', '-', '/' (a registry port or a digest is not supported)",
                      whole);
      }
    }
    if (!IsLowerAlnum(component.front())) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "image name \"{}\": each '/'-separated part must start with a lowercase "
                    "letter or a digit",
                    whole);
    }
    if (end == std::string_view::npos) {
      break;
    }
    start = end + 1;
  }
  return Ok();
}

Status CheckTag(std::string_view tag, std::string_view whole) {
  if (tag.empty() || tag.size() > 128) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "image name \"{}\": the tag must be 1-128 characters", whole);
  }
  if (!IsAlnum(tag.front()) && tag.front() != '_') {
    return Errorf(ErrorCode::kInvalidArgument,
                  "image name \"{}\": the tag must start with a letter, a digit or '_'", whole);
  }
  for (char c : tag) {
    if (!IsAlnum(c) && c != '.' && c != '_' && c != '-') {
      return Errorf(ErrorCode::kInvalidArgument,
                    "image name \"{}\": the tag may hold only letters, digits and '.', '_', '-'",
                    whole);
    }
  }
  return Ok();
}

}  // namespace

Result<std::string> NormalizeImageName(std::string_view name) {
  // Shown in messages: keep a hostile name from flooding them.
  std::string shown(name.substr(0, 200));
  for (char& c : shown) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      c = '?';
    }
  }
  if (name.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "the image name is empty");
  }
  if (name.size() > kMaxImageNameLength) {
    return Errorf(ErrorCode::kInvalidArgument, "image name \"{}\" is longer than {} characters",
                  shown, kMaxImageNameLength);
  }
  if (name.find('@') != std::string_view::npos) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "image name \"{}\": references by digest are not supported; use NAME:TAG", shown);
  }
  std::string_view repo = name;
  std::string_view tag = "latest";
  if (size_t colon = name.find(':'); colon != std::string_view::npos) {
    repo = name.substr(0, colon);
    tag = name.substr(colon + 1);
    if (tag.find(':') != std::string_view::npos) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "image name \"{}\" has more than one ':' (a registry port is not supported)",
                    shown);
    }
  }
  AIRLOCK_TRY(CheckRepository(repo, shown));
  AIRLOCK_TRY(CheckTag(tag, shown));
  std::string out = fmt::format("{}:{}", repo, tag);
  if (out.size() > kMaxImageNameLength) {
    return Errorf(ErrorCode::kInvalidArgument, "image name \"{}\" is longer than {} characters",
                  out, kMaxImageNameLength);
  }
  return out;
}

std::string_view ImageRepository(std::string_view normalized) {
  return normalized.substr(0, normalized.rfind(':'));
}

}  // namespace airlock::images
