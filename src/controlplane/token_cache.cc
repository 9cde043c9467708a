#include "controlplane/token_cache.h"

#include <filesystem>
#include <utility>

#include "controlplane/config.h"

namespace airlock::controlplane {

namespace {

constexpr size_t kCapacity = 16384;

bool InHome(const std::string& path, const std::string& home) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path file = fs::weakly_canonical(path, ec);
  if (ec) return false;
  fs::path dir = fs::weakly_canonical(home, ec);
  if (ec) return false;
  auto rel = file.lexically_relative(dir);
  return !rel.empty() && *rel.begin() != ".." && rel.is_relative();
}

}  // namespace

TokenCache MakeTokenCache(const Config& config) {
  const bool every_revocation_arrives =
      config.store_kind == "postgres" ||
      (config.store_kind == "sqlite" && InHome(config.store_path, config.home));
  return TokenCache(every_revocation_arrives ? kCapacity : 0,
                    std::chrono::milliseconds(config.token_cache_ms));
}

TokenCache::TokenCache(size_t capacity, Clock::duration ttl) : capacity_(capacity), ttl_(ttl) {}

std::optional<std::string> TokenCache::Find(std::string_view token_hash,
                                            Clock::time_point now) const {
  auto it = by_hash_.find(token_hash);
  if (it == by_hash_.end() || now - it->second.learned_at >= ttl_) return std::nullopt;
  return it->second.session_id;
}

void TokenCache::Insert(uint64_t epoch, std::string token_hash, std::string session_id,
                        Clock::time_point now) {
  if (!enabled() || epoch != epoch_) return;
  // The session's previous token, if one is still here, is not its token any more.
  if (auto old = by_session_.find(session_id);
      old != by_session_.end() && old->second != token_hash) {
    by_hash_.erase(old->second);
    by_session_.erase(old);
  }
  if (by_hash_.size() >= capacity_ && !by_hash_.count(token_hash)) {
    // Full: an arbitrary entry goes. Only tokens the store vouched for get here, so a flood of
    // made-up tokens cannot push real ones out; live sessions beyond the capacity cost a store
    // read now and then, as without a cache.
    auto victim = by_hash_.begin();
    by_session_.erase(victim->second.session_id);
    by_hash_.erase(victim);
  }
  by_session_[session_id] = token_hash;
  by_hash_[std::move(token_hash)] = Entry{std::move(session_id), now};
}

void TokenCache::Forget(std::string_view session_id) {
  ++epoch_;
  auto it = by_session_.find(session_id);
  if (it == by_session_.end()) return;
  by_hash_.erase(it->second);
  by_session_.erase(it);
}

void TokenCache::Clear() {
  ++epoch_;
  by_hash_.clear();
  by_session_.clear();
}

}  // namespace airlock::controlplane
