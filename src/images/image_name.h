#pragma once

#include <string>
#include <string_view>

#include "common/result.h"

namespace airlock::images {

// The longest image name accepted, "NAME:TAG" included. The session API's image field has
// the same bound, so any stored name can be asked for.
inline constexpr size_t kMaxImageNameLength = 128;

// Normalises an image reference to "NAME:TAG": NAME is lowercase components of [a-z0-9._-]
// separated by '/', each starting with a letter or digit; TAG is [A-Za-z0-9._-] starting with
// a letter, digit or '_', and defaults to "latest". Refuses anything else (digests "@sha256:",
// registry ports, "..", leading '/', empty components) with a message naming the problem.
//
// Security: names become keys of the store's reference file and appear in messages; they
// never become file paths, but the rules would keep them safe even if they did.
Result<std::string> NormalizeImageName(std::string_view name);

// The name part of a normalised "NAME:TAG".
std::string_view ImageRepository(std::string_view normalized);

}  // namespace airlock::images
