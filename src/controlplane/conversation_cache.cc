#include "controlplane/conversation_cache.h"

#include <utility>

namespace airlock::controlplane {
namespace {

// A message's share of an entry: its body and its canonical form (about as large), and the
// pointer and node that hold them.
size_t MessageBytes(const StoredMessage& m) { return 2 * EstimateJsonBytes(m.body) + 96; }

}  // namespace

size_t EstimateJsonBytes(const Json& j) {
  constexpr size_t kNode = 16;  // sizeof(Json)
  if (j.is_string()) return kNode + j.get_ref<const std::string&>().size();
  if (j.is_array()) {
    size_t n = kNode;
    for (const Json& v : j) n += EstimateJsonBytes(v);
    return n;
  }
  if (j.is_object()) {
    size_t n = kNode;
    for (const auto& [k, v] : j.items()) n += 48 + k.size() + EstimateJsonBytes(v);  // map node
    return n;
  }
  return kNode;
}

ConversationCache::EntryPtr ConversationCache::Find(const std::string& session_id) {
  auto it = map_.find(session_id);
  if (it == map_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second.lru);
  return it->second.entry;
}

ConversationCache::EntryPtr ConversationCache::Take(const std::string& session_id,
                                                    EntryPtr asked_with, store::Conversation read) {
  if (!read.messages) {
    // The store's version is still the one asked with: that copy is current. (The entry held
    // now may be newer still, from a call that recorded meanwhile; it stays.)
    if (asked_with && asked_with->version == read.version) return asked_with;
    // No copy to stand for the answer: the caller asked with a version it does not hold.
    Forget(session_id);
    return nullptr;
  }
  auto entry = std::make_shared<Entry>();
  entry->version = read.version;
  entry->messages.reserve(read.messages->size());
  for (store::Message& m : *read.messages) {
    entry->messages.push_back(MakeStoredMessage(m.position.value_or(0), std::move(m.body)));
    entry->bytes += MessageBytes(*entry->messages.back());
  }
  // A call that recorded while this read was under way may hold a newer entry already.
  auto it = map_.find(session_id);
  if (it == map_.end() || it->second.entry->version < entry->version) Put(session_id, entry);
  return entry;
}

void ConversationCache::Apply(const std::string& session_id, const store::ChatRecord& record,
                              const store::ChatRecorded& done) {
  auto it = map_.find(session_id);
  if (it == map_.end()) return;
  const Entry& held = *it->second.entry;
  if (done.version == held.version) return;  // the record changed no message
  if (record.messages.empty() || done.first_position != held.version) {
    Erase(it);  // changed by something this copy has not seen
    return;
  }
  auto entry = std::make_shared<Entry>();
  entry->version = done.version;
  entry->bytes = held.bytes;
  entry->messages.reserve(held.messages.size() + record.messages.size());
  for (const auto& m : held.messages) {
    if (record.supersede_after && m->position > *record.supersede_after &&
        m->position <= record.supersede_through.value_or(INT64_MAX)) {
      entry->bytes -= MessageBytes(*m);  // the rewrite dropped it
      continue;
    }
    entry->messages.push_back(m);
  }
  int64_t position = done.first_position;
  for (const Json& body : record.messages) {
    entry->messages.push_back(MakeStoredMessage(position++, body));
    entry->bytes += MessageBytes(*entry->messages.back());
  }
  Put(session_id, std::move(entry));
}

void ConversationCache::Forget(const std::string& session_id) {
  if (auto it = map_.find(session_id); it != map_.end()) Erase(it);
}

void ConversationCache::Put(const std::string& session_id, std::shared_ptr<Entry> entry) {
  Forget(session_id);
  if (entry->bytes > max_bytes_) return;  // larger than the whole cache: read each time
  bytes_ += entry->bytes;
  lru_.push_front(session_id);
  map_.emplace(session_id, Slot{std::move(entry), lru_.begin()});
  while (bytes_ > max_bytes_) Erase(map_.find(lru_.back()));
}

void ConversationCache::Erase(std::unordered_map<std::string, Slot>::iterator it) {
  bytes_ -= it->second.entry->bytes;
  lru_.erase(it->second.lru);
  map_.erase(it);
}

}  // namespace airlock::controlplane
