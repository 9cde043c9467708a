#pragma once

// A replica's memory of which live session each sandbox token belongs to, so that a sandbox's
// requests are not each a store read (and a trip to the worker pool) before they are served.
//
// Security: a revoked token must never pass because of it. A token is revoked when its session
// ends or gets a fresh sandbox (restart, takeover by another replica). The control plane
// forgets the session here when it does either itself (before and after the store write), and
// when the store's change feed says another replica did (Store::WatchChanges: kEnded and
// kInbox, which a restart announces; an empty session id drops everything). An entry also
// expires after `ttl`, which bounds what a feed that failed without a word could leave behind.
// A store read that started before a revocation and answers after it must not bring the token
// back: Insert takes the epoch read before the store read and refuses the answer if anything
// was forgotten meanwhile.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace airlock::controlplane {

struct Config;

// Not thread-safe: the io thread only. Time is passed in, so tests advance it instead of
// sleeping.
class TokenCache {
 public:
  using Clock = std::chrono::steady_clock;

  // At most `capacity` tokens; `capacity` 0 or `ttl` 0 turns the cache off (nothing is kept).
  TokenCache(size_t capacity, Clock::duration ttl);

  // The session whose token hashes to `token_hash`, if known and learned less than ttl ago.
  std::optional<std::string> Find(std::string_view token_hash, Clock::time_point now) const;
  // Read before the store lookup whose answer goes to Insert.
  uint64_t epoch() const { return epoch_; }
  // Remembers that `token_hash` belongs to the live session `session_id`, as a store read
  // that began at `epoch` said; ignored if anything was forgotten since.
  void Insert(uint64_t epoch, std::string token_hash, std::string session_id,
              Clock::time_point now);
  // The session's token is revoked or replaced, or may be.
  void Forget(std::string_view session_id);
  // Anything may have changed (the change feed was interrupted).
  void Clear();

  size_t size() const { return by_hash_.size(); }
  bool enabled() const { return capacity_ > 0 && ttl_ > Clock::duration::zero(); }

 private:
  struct Entry {
    std::string session_id;
    Clock::time_point learned_at;
  };
  // Lookups by string_view, without building a std::string per request.
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  template <typename V>
  using Map = std::unordered_map<std::string, V, Hash, std::equal_to<>>;

  size_t capacity_;
  Clock::duration ttl_;
  uint64_t epoch_ = 0;
  Map<Entry> by_hash_;
  // A session has one token at a time: its hash here, to forget it by session.
  Map<std::string> by_session_;
};

// The cache `config` allows: server.token_cache_ms long, and only when every revocation reaches
// this replica. Its own do; other replicas' do through PostgreSQL's change feed. A SQLite file
// in this server's home is written by this server alone (the home lock); one elsewhere may be
// shared by replicas that tell each other nothing, so with it the cache is off.
TokenCache MakeTokenCache(const Config& config);

}  // namespace airlock::controlplane
