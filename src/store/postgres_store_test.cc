// The PostgreSQL store's own behaviour: several processes (here: several pools) on one
// database, reconnection, and what its configuration refuses. The Store contract it shares
// with the SQLite store is tested in store_conformance_test.cc.

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "store/postgres_store.h"
#include "store/store.h"
#include "store/store_test_postgres.h"
#include "store/store_test_util.h"

namespace airlock::store {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class PostgresStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    airlock::testing::PostgresServer& server = TestPostgres();
    if (!server.skip.empty()) {
      GTEST_SKIP() << server.skip;
    }
    ASSERT_TRUE(server.failure.empty()) << server.failure;
    std::string error;
    db_ = airlock::testing::CreatePostgresDatabase(server, &error);
    ASSERT_TRUE(error.empty()) << error;
    options_.url = server.Url(db_);
    options_.password = Secret(server.password);
  }

  std::unique_ptr<Store> Open(const PostgresOptions& options) {
    auto store = OpenPostgresStore(options);
    EXPECT_TRUE(store.has_value()) << store.error().message;
    return store ? std::move(*store) : nullptr;
  }

  std::string RawQuery(const std::string& sql) {
    std::string error;
    std::string out = airlock::testing::PostgresQuery(TestPostgres(), db_, sql, &error);
    EXPECT_TRUE(error.empty()) << sql << ": " << error;
    return out;
  }

  std::string db_;
  PostgresOptions options_;
};

TEST_F(PostgresStoreTest, StoresMigratingOneEmptyDatabaseAtOnceAllSucceed) {
  constexpr int kStores = 4;
  std::barrier start(kStores);
  std::vector<Result<std::unique_ptr<Store>>> opened;
  for (int i = 0; i < kStores; ++i) {
    opened.emplace_back(MakeError(ErrorCode::kInternal, "not run"));
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < kStores; ++i) {
    threads.emplace_back([&, i] {
      PostgresOptions o = options_;
      o.pool_size = 2;
      start.arrive_and_wait();
      opened[i] = OpenPostgresStore(o);
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  for (int i = 0; i < kStores; ++i) {
    ASSERT_TRUE(opened[i].has_value()) << "store " << i << ": " << opened[i].error().message;
  }
  // Each step was applied once, and every store works on the result.
  EXPECT_EQ(RawQuery("SELECT COUNT(*) FROM schema_migrations"),
            RawQuery("SELECT COUNT(DISTINCT version) FROM schema_migrations"));
  EXPECT_EQ(RawQuery("SELECT MIN(version) FROM schema_migrations"), "1");
  ASSERT_OK((*opened[0])->CreateSession(MakeSession("ses_a"), UserMessage("t")));
  for (int i = 0; i < kStores; ++i) {
    ASSERT_OK_AND_ASSIGN(Session s, (*opened[i])->GetSession("ses_a"));
    EXPECT_EQ(s.image, "python:3.12");
    ASSERT_OK((*opened[i])->Migrate());
  }
}

// Two pools stand for two replicas polling one session's inbox while messages arrive.
TEST_F(PostgresStoreTest, RacingInboxPollsOfTwoReplicasNeverTakeOneMessageTwice) {
  auto a = Open(options_);
  auto b = Open(options_);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_OK(a->CreateSession(MakeSession("ses_a"), UserMessage("task")));
  constexpr int kMessages = 300;
  std::atomic<bool> posting = true;
  std::atomic<int> failures = 0;
  std::vector<std::vector<Message>> taken(4);
  std::vector<std::thread> pollers;
  for (int i = 0; i < 4; ++i) {
    pollers.emplace_back([&, i] {
      Store* store = i % 2 == 0 ? a.get() : b.get();
      for (bool last = false; !last;) {
        last = !posting;
        auto got = store->TakeInbox("ses_a", "hash-ses_a");
        if (!got) {
          ++failures;
          continue;
        }
        taken[i].insert(taken[i].end(), got->begin(), got->end());
      }
    });
  }
  for (int i = 0; i < kMessages; ++i) {
    ASSERT_OK((i % 2 == 0 ? a : b)->AddUserMessage("ses_a", UserMessage(std::to_string(i))));
  }
  posting = false;
  for (auto& t : pollers) {
    t.join();
  }
  EXPECT_EQ(failures, 0);
  std::set<int64_t> ids;
  std::set<int64_t> positions;
  size_t total = 0;
  for (const auto& list : taken) {
    for (const Message& m : list) {
      ++total;
      EXPECT_TRUE(ids.insert(m.id).second) << "message " << m.id << " was taken twice";
      ASSERT_TRUE(m.position.has_value());
      EXPECT_TRUE(positions.insert(*m.position).second) << "position " << *m.position;
    }
  }
  EXPECT_EQ(total, static_cast<size_t>(kMessages + 1));  // and the task
  ASSERT_FALSE(positions.empty());
  EXPECT_EQ(*positions.begin(), 1);
  EXPECT_EQ(*positions.rbegin(), kMessages + 1);
  ASSERT_OK_AND_ASSIGN(auto conversation, a->ListMessages("ses_a", true));
  EXPECT_EQ(conversation.size(), static_cast<size_t>(kMessages + 1));
  for (size_t i = 0; i < conversation.size(); ++i) {
    EXPECT_EQ(conversation[i].position, static_cast<int64_t>(i) + 1);
  }
}

TEST_F(PostgresStoreTest, AppendsThroughTwoPoolsGetGaplessUniqueSeqs) {
  auto a = Open(options_);
  auto b = Open(options_);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_OK(a->CreateSession(MakeSession("ses_a"), UserMessage("t")));
  constexpr int kThreads = 8;
  constexpr int kPerThread = 100;
  std::vector<std::vector<int64_t>> seqs(kThreads);
  std::atomic<int> failures = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Store* store = t % 2 == 0 ? a.get() : b.get();
      for (int i = 0; i < kPerThread; ++i) {
        // Half the appends go through the quota path, which locks the row before it reads.
        std::optional<Event> e;
        if (i % 2 == 0) {
          auto appended = store->AppendEvent("ses_a", "tick", {{"t", t}, {"i", i}});
          if (appended) e = *appended;
        } else {
          auto appended =
              store->AppendEventWithinQuota("ses_a", "tick", {{"t", t}, {"i", i}}, EventQuota{});
          if (appended) e = appended->event;
        }
        if (!e) {
          ++failures;
          continue;
        }
        seqs[t].push_back(e->seq);
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  EXPECT_EQ(failures, 0);
  ExpectGaplessAppends(seqs, kThreads * kPerThread);
  EXPECT_EQ(RawQuery("SELECT next_event_seq FROM sessions WHERE id = 'ses_a'"),
            std::to_string(kThreads * kPerThread + 2));
}

TEST_F(PostgresStoreTest, ConnectionClosedByTheServerIsReopenedForTheNextCall) {
  PostgresOptions o = options_;
  o.pool_size = 1;
  auto store = Open(o);
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a"), UserMessage("t")));
  // What a server restart or an idle-connection reaper does to the pool's one connection.
  EXPECT_EQ(RawQuery("SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
                     "WHERE datname = '" +
                     db_ + "' AND pid <> pg_backend_pid()"),
            "1");
  ASSERT_OK_AND_ASSIGN(Event e, store->AppendEvent("ses_a", "tick", Json::object()));
  EXPECT_EQ(e.seq, 2);
  ASSERT_OK_AND_ASSIGN(Session s, store->GetSession("ses_a"));
  EXPECT_EQ(s.id, "ses_a");
}

TEST_F(PostgresStoreTest, RefusesAUrlHoldingAPasswordWithoutRepeatingIt) {
  const std::string host = options_.url.substr(std::string("postgresql://postgres@").size());
  for (const std::string& url : {
           "postgresql://postgres:hunter2-secret@" + host,
           "postgres://postgres:hunter2-secret@" + host,
           "postgresql://postgres@" + host + "?password=hunter2-secret",
           "postgresql://postgres@" + host + "?sslmode=disable&PassWord=hunter2-secret",
           // libpq decodes %77 to 'w': only its parser sees this one.
           "postgresql://postgres@" + host + "?pass%77ord=hunter2-secret",
       }) {
    PostgresOptions o = options_;
    o.url = url;
    auto store = OpenPostgresStore(o);
    ASSERT_FALSE(store.has_value()) << url;
    EXPECT_EQ(store.error().code, ErrorCode::kInvalidArgument) << url;
    EXPECT_THAT(store.error().message, HasSubstr("password")) << url;
    EXPECT_THAT(store.error().message, Not(HasSubstr("hunter2"))) << url;
    auto parsed = ParsePostgresUrl(url);
    ASSERT_FALSE(parsed.has_value()) << url;
    EXPECT_THAT(parsed.error().message, Not(HasSubstr("hunter2"))) << url;
  }
  for (const std::string url : {"host=127.0.0.1 password=hunter2-secret", "mysql://x@y/z"}) {
    auto parsed = ParsePostgresUrl(url);
    ASSERT_FALSE(parsed.has_value()) << url;
    EXPECT_THAT(parsed.error().message, Not(HasSubstr("hunter2"))) << url;
  }
}

TEST_F(PostgresStoreTest, ErrorsNameHostPortAndDatabaseButNeverThePassword) {
  ASSERT_OK_AND_ASSIGN(PostgresTarget target, ParsePostgresUrl(options_.url));
  EXPECT_EQ(target.host, "127.0.0.1");
  EXPECT_EQ(target.dbname, db_);
  EXPECT_EQ(target.Describe(), "127.0.0.1:" + target.port + "/" + db_);

  // A wrong password: the server refuses it.
  PostgresOptions wrong = options_;
  wrong.password = Secret("hunter2-" + TestPostgres().password);
  auto refused = OpenPostgresStore(wrong);
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code, ErrorCode::kUnavailable);
  EXPECT_THAT(refused.error().message, HasSubstr(target.Describe()));
  EXPECT_THAT(refused.error().message, HasSubstr("password authentication failed"));
  EXPECT_THAT(refused.error().message, Not(HasSubstr("hunter2")));
  EXPECT_THAT(refused.error().message, Not(HasSubstr(TestPostgres().password)));

  // A database that does not exist, with the right password.
  PostgresOptions missing = options_;
  missing.url = "postgresql://postgres@127.0.0.1:" + target.port + "/no_such_db";
  auto absent = OpenPostgresStore(missing);
  ASSERT_FALSE(absent.has_value());
  EXPECT_THAT(absent.error().message, HasSubstr("no_such_db"));
  EXPECT_THAT(absent.error().message, Not(HasSubstr(TestPostgres().password)));

  // Nothing listening.
  PostgresOptions closed = options_;
  closed.url = "postgresql://postgres@127.0.0.1:1/" + db_;
  auto down = OpenPostgresStore(closed);
  ASSERT_FALSE(down.has_value());
  EXPECT_EQ(down.error().code, ErrorCode::kUnavailable);
  EXPECT_THAT(down.error().message, Not(HasSubstr(TestPostgres().password)));
}

TEST_F(PostgresStoreTest, RefusesPoolSizesOutOfRange) {
  for (int size : {0, -1, 257}) {
    PostgresOptions o = options_;
    o.pool_size = size;
    auto store = OpenPostgresStore(o);
    ASSERT_FALSE(store.has_value()) << size;
    EXPECT_EQ(store.error().code, ErrorCode::kInvalidArgument);
  }
}

// SQLite stores a NUL inside text; PostgreSQL's text cannot hold one, and libpq would cut the
// value short at it. The store refuses such a value instead of storing less than it was given.
TEST_F(PostgresStoreTest, RefusesTextHoldingANulInsteadOfCuttingItShort) {
  auto store = Open(options_);
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a"), UserMessage("t")));
  auto ended = store->ChangeState("ses_a", {.from = {SessionState::kStarting},
                                            .to = SessionState::kSucceeded,
                                            .result = std::string("done\0hidden", 11)});
  ASSERT_FALSE(ended.has_value());
  EXPECT_EQ(ended.error().code, ErrorCode::kInvalidArgument);
  ASSERT_OK_AND_ASSIGN(Session s, store->GetSession("ses_a"));
  EXPECT_EQ(s.state, SessionState::kStarting);
  EXPECT_FALSE(s.result.has_value());
  // In JSON a NUL is escaped, so messages and event data keep it.
  ASSERT_OK(store->AppendEvent("ses_a", "tick", {{"s", std::string("a\0b", 3)}}));
  ASSERT_OK_AND_ASSIGN(auto events, store->ListEvents("ses_a", 1, 10));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].data.at("s").get<std::string>(), std::string("a\0b", 3));
}

}  // namespace
}  // namespace airlock::store
