#pragma once

// Cutting a provider key out of text that came from the provider (error messages, error codes,
// parse errors quoting its bytes) before that text reaches the sandbox, a log line or an event.
// A provider, or a proxy in front of it, may echo the key it was sent: whole, in part, with
// another case, base64-encoded or percent-encoded.

#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

namespace airlock::llm {

// Built once per key. Apply() replaces every stretch of the text that holds any piece of the key
// of kWindow or more characters — with or without its prefix ("sk-"), in any letter case, in
// base64 (standard or URL-safe, at each of the three byte alignments) or behind %XX escapes —
// with kRedactedMarker. For a key shorter than kWindow the pieces are as long as the key.
// An empty key changes nothing.
//
// Security note: what can survive next to a marker is at most kWindow-1 characters of the key
// (or of its base64 form, i.e. about 5 bytes): not enough to use it.
class KeyRedactor {
 public:
  static constexpr size_t kWindow = 8;
  static constexpr std::string_view kRedactedMarker = "[redacted]";

  KeyRedactor() = default;
  explicit KeyRedactor(std::string_view key);

  std::string Apply(std::string_view text) const;

 private:
  size_t window_ = 0;
  // Lower-cased windows of the key and of its encodings, of length window_.
  std::unordered_set<std::string> pieces_;
};

// One-shot form of KeyRedactor(key).Apply(text).
std::string RedactKey(std::string_view text, std::string_view key);

}  // namespace airlock::llm
