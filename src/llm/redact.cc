#include "llm/redact.h"

#include <algorithm>
#include <array>

#include "common/crypto.h"

namespace airlock::llm {

namespace {

char Lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

std::string LowerAll(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = Lower(c);
  return out;
}

// The part of base64(X^offset + key) that depends on nothing but the key: the groups of three
// bytes that lie wholly inside the key. Any base64 text holding a piece of the key, whatever
// came before it, holds a stretch of one of these three strings.
std::string Base64Core(std::string_view key, size_t offset) {
  if (key.size() <= offset) return "";
  std::string_view aligned = key.substr(offset);
  return Base64Encode(aligned.substr(0, aligned.size() / 3 * 3));  // whole groups: no padding
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = Lower(c);
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

}  // namespace

KeyRedactor::KeyRedactor(std::string_view key) {
  if (key.empty()) return;
  window_ = std::min(kWindow, key.size());
  std::vector<std::string> sources{std::string(key)};
  for (size_t offset = 0; offset < 3; ++offset) {
    std::string core = Base64Core(key, offset);
    std::string url = core;
    std::replace(url.begin(), url.end(), '+', '-');
    std::replace(url.begin(), url.end(), '/', '_');
    sources.push_back(std::move(core));
    sources.push_back(std::move(url));
  }
  for (const std::string& s : sources) {
    if (s.size() < window_) continue;
    const std::string lower = LowerAll(s);
    for (size_t i = 0; i + window_ <= lower.size(); ++i) pieces_.insert(lower.substr(i, window_));
  }
}

std::string KeyRedactor::Apply(std::string_view text) const {
  if (window_ == 0 || text.size() < window_) return std::string(text);
  std::vector<bool> cut(text.size(), false);
  bool any = false;
  // Looks for the pieces in a lower-cased view of the text whose character i came from the
  // original range [from[i], to[i]).
  auto mark = [&](const std::string& view, const std::vector<size_t>& from,
                  const std::vector<size_t>& to) {
    for (size_t i = 0; i + window_ <= view.size(); ++i) {
      if (!pieces_.contains(view.substr(i, window_))) continue;
      any = true;
      for (size_t k = from[i]; k < to[i + window_ - 1]; ++k) cut[k] = true;
    }
  };
  // The text as it is (a key may itself hold a '%'), then with its %XX escapes decoded.
  std::string view;
  std::vector<size_t> from;
  std::vector<size_t> to;
  for (size_t i = 0; i < text.size(); ++i) {
    view += Lower(text[i]);
    from.push_back(i);
    to.push_back(i + 1);
  }
  mark(view, from, to);
  if (text.find('%') != std::string_view::npos) {
    view.clear();
    from.clear();
    to.clear();
    for (size_t i = 0; i < text.size();) {
      const bool escape = text[i] == '%' && i + 2 < text.size() && HexValue(text[i + 1]) >= 0 &&
                          HexValue(text[i + 2]) >= 0;
      const size_t len = escape ? 3 : 1;
      view += Lower(escape ? static_cast<char>(HexValue(text[i + 1]) * 16 + HexValue(text[i + 2]))
                           : text[i]);
      from.push_back(i);
      to.push_back(i + len);
      i += len;
    }
    mark(view, from, to);
  }
  if (!any) return std::string(text);
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (!cut[i]) {
      out += text[i];
    } else if (i == 0 || !cut[i - 1]) {
      out += kRedactedMarker;
    }
  }
  return out;
}

std::string RedactKey(std::string_view text, std::string_view key) {
  return KeyRedactor(key).Apply(text);
}

}  // namespace airlock::llm
