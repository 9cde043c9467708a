#pragma once

// The conversations the LLM routes built on lately, kept between calls. Each call still asks
// the store, but with the version it holds (Store::ReadConversation): while nothing changed the
// conversation, the store reads one row instead of every message, and nothing is parsed again.
// Any change, by this replica or another, moves the version and the next call reads it whole.
// A call's own record is applied to the copy (Apply), so a session whose calls come one after
// another reads its conversation once.
//
// Entries are immutable snapshots shared with the calls that hold them; a change makes a new
// entry whose messages are shared with the old one. Bounded by an estimate of the bytes held;
// the least recently used go first. Single-threaded (the io thread).

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <unordered_map>

#include "controlplane/llm_faces.h"
#include "store/store.h"

namespace airlock::controlplane {

class ConversationCache {
 public:
  struct Entry {
    int64_t version = 0;  // the store's (Store::Conversation::version)
    StoredConversation messages;
    size_t bytes = 0;  // estimated
  };
  using EntryPtr = std::shared_ptr<const Entry>;

  explicit ConversationCache(size_t max_bytes) : max_bytes_(max_bytes) {}

  // The entry held for a session, or null. Its version is what to read the store with.
  EntryPtr Find(const std::string& session_id);
  // What a read answered, given the entry the read was made with (null: none): that entry
  // while the store's version was still its own, else a new entry of what the store holds.
  EntryPtr Take(const std::string& session_id, EntryPtr asked_with, store::Conversation read);
  // A call of this replica stored `messages` (after superseding what `record` says) and the
  // store answered `done`. The copy holds the record's bodies as they are in memory; the store
  // holds their DumpJson, which is the same value for any body parsed from JSON text (as every
  // message of a call is). When the entry held is the version the record was applied to, it
  // becomes the record's outcome; otherwise it is dropped (another writer came between).
  void Apply(const std::string& session_id, const store::ChatRecord& record,
             const store::ChatRecorded& done);
  void Forget(const std::string& session_id);

  size_t bytes() const { return bytes_; }
  size_t size() const { return map_.size(); }

 private:
  struct Slot {
    EntryPtr entry;
    std::list<std::string>::iterator lru;
  };
  void Put(const std::string& session_id, std::shared_ptr<Entry> entry);
  void Erase(std::unordered_map<std::string, Slot>::iterator it);

  size_t max_bytes_;
  size_t bytes_ = 0;
  std::list<std::string> lru_;  // most recently used first
  std::unordered_map<std::string, Slot> map_;
};

// Roughly what a JSON value holds in memory: its strings and a node's overhead each.
size_t EstimateJsonBytes(const Json& j);

}  // namespace airlock::controlplane
