#include "controlplane/conversation_cache.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "store/store_test_util.h"

namespace airlock::controlplane {
namespace {

using ::testing::ElementsAre;

Json Text(const std::string& role, const std::string& text) {
  return Json{{"role", role}, {"content", text}};
}

// A call's record: the client's question and the model's reply.
store::ChatRecord Exchange(const std::string& question, const std::string& reply) {
  store::ChatRecord rec;
  rec.messages = {Text("user", question), Text("assistant", reply)};
  return rec;
}

// The cache against a real store, as LlmProxy uses it: each call reads with the version it
// holds, and applies its own record.
class ConversationCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(store_, nullptr);
    store::Session s;
    s.id = "ses_a";
    s.image = "base";
    s.backend = "test";
    s.model = "default";
    ASSERT_TRUE(store_->CreateSession(s, Text("user", "task")));
    ASSERT_TRUE(store_->TakeInbox("ses_a", ""));
  }
  // LlmProxy::ReadConversation, without the pool.
  ConversationCache::EntryPtr Read(ConversationCache& cache, bool* from_store = nullptr) {
    ConversationCache::EntryPtr held = cache.Find("ses_a");
    auto read = store_->ReadConversation("ses_a", held ? held->version : 0);
    EXPECT_TRUE(read.has_value()) << read.error().message;
    if (from_store) *from_store = read->messages.has_value();
    return cache.Take("ses_a", held, std::move(*read));
  }

  store::ChatRecorded Record(ConversationCache* cache, store::ChatRecord rec) {
    rec.model = "default";
    rec.usage = store::Usage{1, 1, 1, 0};
    auto done = store_->RecordChat("ses_a", rec);
    EXPECT_TRUE(done.has_value()) << done.error().message;
    if (cache) cache->Apply("ses_a", rec, *done);
    return *done;
  }

  // The entry's messages and positions must be what the store lists.
  void ExpectCurrent(const ConversationCache::EntryPtr& entry) {
    ASSERT_NE(entry, nullptr);
    auto stored = store_->ListMessages("ses_a", false);
    ASSERT_TRUE(stored.has_value());
    ASSERT_EQ(entry->messages.size(), stored->size());
    for (size_t i = 0; i < stored->size(); ++i) {
      EXPECT_EQ(entry->messages[i]->body, (*stored)[i].body) << i;
      EXPECT_EQ(entry->messages[i]->position, (*stored)[i].position) << i;
    }
    auto version = store_->ReadConversation("ses_a", entry->version);
    ASSERT_TRUE(version.has_value());
    EXPECT_FALSE(version->messages.has_value()) << "the entry's version is not the store's";
  }

  static std::vector<std::string> Texts(const ConversationCache::EntryPtr& e) {
    std::vector<std::string> out;
    for (const auto& m : e->messages) out.push_back(m->body.value("content", ""));
    return out;
  }

  store::TempSqliteStore temp_{"conversations"};
  store::Store* store_ = temp_.get();
};

TEST_F(ConversationCacheTest, ACopyServesWhileTheVersionStandsAndAnyChangeIsReadWhole) {
  ConversationCache cache(1 << 20);
  bool from_store = false;
  auto first = Read(cache, &from_store);
  EXPECT_TRUE(from_store);
  EXPECT_THAT(Texts(first), ElementsAre("task"));
  auto again = Read(cache, &from_store);
  EXPECT_FALSE(from_store);
  EXPECT_EQ(again, first);

  // The inbox is not the conversation.
  ASSERT_TRUE(store_->AddUserMessage("ses_a", Text("user", "pending")));
  EXPECT_EQ(Read(cache, &from_store), first);
  EXPECT_FALSE(from_store);

  // Another replica (or the native route's inbox) changes it: read whole.
  ASSERT_TRUE(store_->TakeInbox("ses_a", ""));
  auto taken = Read(cache, &from_store);
  EXPECT_TRUE(from_store);
  EXPECT_THAT(Texts(taken), ElementsAre("task", "pending"));
  ASSERT_TRUE(store_->AppendConversation("ses_a", {Text("assistant", "elsewhere")}));
  auto appended = Read(cache, &from_store);
  EXPECT_TRUE(from_store);
  EXPECT_THAT(Texts(appended), ElementsAre("task", "pending", "elsewhere"));
  ExpectCurrent(appended);
  EXPECT_EQ(cache.size(), 1u);
}

TEST_F(ConversationCacheTest, ThisReplicasOwnRecordIsAppliedToTheCopy) {
  ConversationCache cache(1 << 20);
  Read(cache);
  store::ChatRecord rec = Exchange("q1", "r1");
  Record(&cache, rec);
  bool from_store = true;
  auto after = Read(cache, &from_store);
  EXPECT_FALSE(from_store);
  EXPECT_THAT(Texts(after), ElementsAre("task", "q1", "r1"));
  ExpectCurrent(after);

  // A rewrite: the client dropped r1 and asked again.
  rec.supersede_after = after->messages[1]->position;
  rec.supersede_through = after->messages.back()->position;
  rec.messages = {Text("assistant", "r1 again")};
  Record(&cache, rec);
  auto rewritten = Read(cache, &from_store);
  EXPECT_FALSE(from_store);
  EXPECT_THAT(Texts(rewritten), ElementsAre("task", "q1", "r1 again"));
  ExpectCurrent(rewritten);
  ConversationCache fresh(1 << 20);
  EXPECT_EQ(rewritten->bytes, Read(fresh)->bytes);  // what it counts is what it holds

  // A failed call that is charged changes no message: the copy stands.
  Record(&cache, store::ChatRecord{});
  EXPECT_EQ(Read(cache, &from_store), rewritten);
  EXPECT_FALSE(from_store);
}

TEST_F(ConversationCacheTest, ARecordAfterAnUnseenChangeDropsTheCopy) {
  ConversationCache cache(1 << 20);
  Read(cache);
  // Another replica appends between this replica's read and its record.
  ASSERT_TRUE(store_->AppendConversation("ses_a", {Text("assistant", "elsewhere")}));
  Record(&cache, Exchange("q", "r"));
  EXPECT_EQ(cache.Find("ses_a"), nullptr);
  bool from_store = false;
  auto next = Read(cache, &from_store);
  EXPECT_TRUE(from_store);
  EXPECT_THAT(Texts(next), ElementsAre("task", "elsewhere", "q", "r"));
  ExpectCurrent(next);
}

// Two calls of the session at once (max_concurrent_llm_calls > 1): both read the same copy,
// and each record lands on what the other left.
TEST_F(ConversationCacheTest, TwoCallsAtOnceEachApplyTheirRecord) {
  ConversationCache cache(1 << 20);
  auto seen_by_a = Read(cache);
  auto seen_by_b = Read(cache);
  ASSERT_EQ(seen_by_a, seen_by_b);
  Record(&cache, Exchange("qa", "ra"));
  Record(&cache, Exchange("qb", "rb"));
  bool from_store = true;
  auto after = Read(cache, &from_store);
  EXPECT_FALSE(from_store);
  EXPECT_THAT(Texts(after), ElementsAre("task", "qa", "ra", "qb", "rb"));
  ExpectCurrent(after);
  // The snapshots the calls held are unchanged.
  EXPECT_THAT(Texts(seen_by_a), ElementsAre("task"));
}

// A read that was under way while a call recorded must not put the older copy back.
TEST_F(ConversationCacheTest, AnOlderReadDoesNotReplaceANewerCopy) {
  ConversationCache cache(1 << 20);
  auto older = store_->ReadConversation("ses_a", 0);
  ASSERT_TRUE(older.has_value());
  Read(cache);
  Record(&cache, Exchange("q", "r"));
  auto newer = cache.Find("ses_a");
  auto taken = cache.Take("ses_a", nullptr, std::move(*older));
  EXPECT_THAT(Texts(taken), ElementsAre("task"));  // what that read saw, for its own call
  EXPECT_EQ(cache.Find("ses_a"), newer);
  ExpectCurrent(newer);
}

TEST(ConversationCacheBoundsTest, TheLeastRecentlyUsedGoFirstAndNoneOutgrowsTheCache) {
  auto conversation = [](int64_t version, size_t text_bytes) {
    store::Conversation c;
    c.version = version;
    c.messages.emplace();
    store::Message m;
    m.position = 1;
    m.body = Json{{"role", "user"}, {"content", std::string(text_bytes, 'x')}};
    c.messages->push_back(std::move(m));
    return c;
  };
  ConversationCache cache(10'000);
  cache.Take("a", nullptr, conversation(2, 2'000));
  cache.Take("b", nullptr, conversation(2, 2'000));
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_NE(cache.Find("a"), nullptr);  // a is now the most recently used
  cache.Take("c", nullptr, conversation(2, 2'000));
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.Find("b"), nullptr);
  EXPECT_NE(cache.Find("a"), nullptr);
  EXPECT_NE(cache.Find("c"), nullptr);
  EXPECT_LE(cache.bytes(), 10'000u);

  // Larger than the whole cache: answered, not kept, and nothing else is pushed out for it.
  auto big = cache.Take("d", nullptr, conversation(2, 20'000));
  ASSERT_NE(big, nullptr);
  EXPECT_EQ(big->messages.size(), 1u);
  EXPECT_EQ(cache.Find("d"), nullptr);
  EXPECT_EQ(cache.size(), 2u);
  cache.Forget("a");
  cache.Forget("c");
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(cache.bytes(), 0u);
}

}  // namespace
}  // namespace airlock::controlplane
