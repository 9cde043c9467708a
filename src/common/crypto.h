#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"
#include "common/secret.h"

namespace airlock {

// Cryptographically secure random bytes from OpenSSL's DRBG. Aborts the process if the RNG
// fails: continuing with weak randomness would mint guessable tokens.
std::string RandomBytes(size_t n);

// base64url without padding, as used for tokens and ids.
std::string Base64UrlEncode(std::string_view bytes);
std::string HexEncode(std::string_view bytes);
// Standard base64 (RFC 4648 section 4) with its padding, no line breaks.
std::string Base64Encode(std::string_view bytes);
// Standard base64 (RFC 4648 section 4) with its padding, no whitespace; nullopt when malformed.
std::optional<std::string> Base64Decode(std::string_view text);

std::string Sha256(std::string_view data);     // raw 32 bytes
std::string Sha256Hex(std::string_view data);  // 64 lowercase hex chars
// The SHA-256 (64 lowercase hex chars) of a file's first `size` bytes, read in pieces.
// kInternal when it cannot be read or is shorter.
Result<std::string> Sha256HexOfFile(const std::string& path, int64_t size);
std::string HmacSha256(std::string_view key, std::string_view data);  // raw 32 bytes

// Compares two strings in time independent of where they differ (length is not hidden).
bool ConstantTimeEquals(std::string_view a, std::string_view b);

// A new credential: `prefix` + base64url of `bytes` random bytes (32 bytes = 256 bits).
Secret NewToken(std::string_view prefix, size_t bytes = 32);

// A new public identifier such as "ses_3k9x...": prefix + 16 random bytes base32-ish.
std::string NewId(std::string_view prefix);

}  // namespace airlock
