// The SQLite store's own behaviour: its options, WAL and checkpoints, file pages, busy
// timeout and the upgrade of older databases. The Store contract it shares with the other
// stores is tested in store_conformance_test.cc.

#include <sqlite3.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "store/sqlite_store.h"
#include "store/store_test_util.h"

namespace airlock::store {
namespace {

using ::testing::HasSubstr;

// A look at the file apart from the Store.
std::string RawQuery(const std::string& path, const std::string& sql) {
  return SqliteRawQuery(path, sql);
}

// Takes a database back to before schema version 8 (egress policies: sessions.egress).
void UndoVersion8(const std::string& path) {
  RawQuery(path, "ALTER TABLE sessions DROP COLUMN egress");
}

// Takes a database back to before schema version 7 (per-session environment: sessions.env).
void UndoVersion7(const std::string& path) {
  UndoVersion8(path);
  RawQuery(path, "ALTER TABLE sessions DROP COLUMN env");
}

// Takes a database back to before schema version 6 (rewritten histories: messages.superseded_at).
void UndoVersion6(const std::string& path) {
  UndoVersion7(path);
  RawQuery(path, "ALTER TABLE messages DROP COLUMN superseded_at");
}

// Takes a database back to before schema version 5 (idle tiers: sessions.tier, state_since).
void UndoVersion5(const std::string& path) {
  UndoVersion6(path);
  RawQuery(path, "ALTER TABLE sessions DROP COLUMN state_since");
  RawQuery(path, "ALTER TABLE sessions DROP COLUMN tier");
}

// Takes a database back to before schema version 4 (replicas: sessions.node, nodes).
void UndoVersion4(const std::string& path) {
  UndoVersion5(path);
  RawQuery(path, "DROP TABLE nodes");
  RawQuery(path, "ALTER TABLE sessions DROP COLUMN node");
}

class SqliteStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "airlock_store_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr) << "mkdtemp: " << errno;
    dir_ = tmpl;
    options_.path = dir_ + "/airlock.db";
  }

  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::unique_ptr<Store> Open() {
    auto store = OpenSqliteStore(options_);
    EXPECT_TRUE(store.has_value()) << store.error().message;
    return store ? std::move(*store) : nullptr;
  }

  std::string dir_;
  StoreOptions options_;
};
TEST_F(SqliteStoreTest, MigrationsAreIdempotentAcrossReopens) {
  {
    auto store = Open();
    ASSERT_NE(store, nullptr);
    ASSERT_OK(store->CreateSession(MakeSession("ses_a"), UserMessage("task")));
    ASSERT_OK(store->Migrate());
  }
  const std::string versions = RawQuery(options_.path, "SELECT COUNT(*) FROM schema_migrations");
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->Migrate());
  EXPECT_EQ(RawQuery(options_.path, "SELECT COUNT(*) FROM schema_migrations"), versions);
  EXPECT_EQ(RawQuery(options_.path, "SELECT MIN(version) FROM schema_migrations"), "1");
  EXPECT_EQ(RawQuery(options_.path, "PRAGMA journal_mode"), "wal");
  ASSERT_OK_AND_ASSIGN(Session s, store->GetSession("ses_a"));
  EXPECT_EQ(s.image, "python:3.12");
}

TEST_F(SqliteStoreTest, RejectsUnknownSynchronousMode) {
  options_.synchronous = "off";
  auto store = OpenSqliteStore(options_);
  ASSERT_FALSE(store.has_value());
  EXPECT_EQ(store.error().code, ErrorCode::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(options_.path));

  options_.synchronous = "full";
  EXPECT_NE(Open(), nullptr);
}

TEST_F(SqliteStoreTest, RejectsInMemoryDatabase) {
  options_.path = ":memory:";
  auto store = OpenSqliteStore(options_);
  ASSERT_FALSE(store.has_value());
  EXPECT_EQ(store.error().code, ErrorCode::kInvalidArgument);
}

TEST_F(SqliteStoreTest, WalIsCheckpointedInTheBackgroundNotInsideCommits) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_w", 1), UserMessage("x")));
  auto db_size = [&] { return std::filesystem::file_size(options_.path); };
  // Enough writes to cross SQLite's automatic threshold (1000 pages) several times over.
  std::string blob(2000, 'w');
  for (int i = 0; i < 3000; ++i)
    ASSERT_OK(store->AppendEvent("ses_w", "t", Json{{"pad", blob}, {"i", i}}));
  // The commits themselves copied nothing back; the checkpointer does, within a second.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  uintmax_t before = db_size();
  while (db_size() < 5'000'000u && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_GE(db_size(), 5'000'000u)
      << "the data reached the database file (it was " << before << " bytes)";
  ASSERT_OK_AND_ASSIGN(auto events, store->ListEvents("ses_w", 0, 5000));
  EXPECT_EQ(events.size(), 3001u);
}

TEST_F(SqliteStoreTest, AVersion1DatabaseIsUpgradedInPlace) {
  // A database written before the models column existed: schema 1 only.
  {
    auto store = Open();
    ASSERT_NE(store, nullptr);
    ASSERT_OK(store->CreateSession(MakeSession("ses_old"), UserMessage("t")));
  }
  RawQuery(options_.path, "DELETE FROM schema_migrations WHERE version >= 2");
  UndoVersion4(options_.path);
  RawQuery(options_.path, "DROP INDEX sessions_purgeable");
  for (const char* col :
       {"event_count", "event_bytes", "event_quota_noticed", "ended_at", "purged_at"}) {
    RawQuery(options_.path, std::string("ALTER TABLE sessions DROP COLUMN ") + col);
  }
  RawQuery(options_.path, "DROP INDEX usage_created_at");
  RawQuery(options_.path, "ALTER TABLE sessions DROP COLUMN models");
  ASSERT_EQ(RawQuery(options_.path, "SELECT MAX(version) FROM schema_migrations"), "1");
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK_AND_ASSIGN(Session s, store->GetSession("ses_old"));
  EXPECT_EQ(s.models, Json::array());
  EXPECT_EQ(RawQuery(options_.path, "SELECT MAX(version) FROM schema_migrations"), "8");
}

TEST_F(SqliteStoreTest, AVersion2DatabaseGetsEventTotalsAndEndTimesBackfilled) {
  {
    auto store = Open();
    ASSERT_NE(store, nullptr);
    ASSERT_OK(store->CreateSession(MakeSession("ses_old"), UserMessage("t")));
    ASSERT_OK(store->AppendEvent("ses_old", "tick", {{"i", 1}}));
    ASSERT_OK(store->ChangeState("ses_old",
                                 StateChange{{SessionState::kStarting}, SessionState::kKilled}));
  }
  // What a version-2 database holds: no totals, no end times.
  RawQuery(options_.path, "DELETE FROM schema_migrations WHERE version >= 3");
  UndoVersion4(options_.path);
  RawQuery(options_.path, "DROP INDEX sessions_purgeable");
  for (const char* col :
       {"event_count", "event_bytes", "event_quota_noticed", "ended_at", "purged_at"}) {
    RawQuery(options_.path, std::string("ALTER TABLE sessions DROP COLUMN ") + col);
  }
  const std::string bytes =
      RawQuery(options_.path,
               "SELECT SUM(length(CAST(type AS BLOB)) + length(CAST(data AS BLOB))) FROM events");
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK_AND_ASSIGN(SessionFootprint f, store->Footprint("ses_old"));
  EXPECT_EQ(f.events, 3);  // created, tick, state
  EXPECT_EQ(f.messages, 1);
  EXPECT_GT(f.bytes, std::stoll(bytes));  // the events' bytes plus the message's
  ASSERT_OK_AND_ASSIGN(Session s, store->GetSession("ses_old"));
  ASSERT_TRUE(s.ended_at.has_value());
  EXPECT_EQ(*s.ended_at, s.updated_at);
}

TEST_F(SqliteStoreTest, PurgedSpaceIsGivenBackToTheFileSystem) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(RawQuery(options_.path, "PRAGMA auto_vacuum"), "2");
  ASSERT_OK(store->CreateSession(MakeSession("ses_a"), UserMessage("t")));
  const std::string big(60000, 'x');
  for (int i = 0; i < 200; ++i) {
    ASSERT_OK(store->AppendEvent("ses_a", "blob", {{"b", big}}));
  }
  ASSERT_OK(
      store->ChangeState("ses_a", StateChange{{SessionState::kStarting}, SessionState::kKilled}));
  const int64_t pages_full = std::stoll(RawQuery(options_.path, "PRAGMA page_count"));
  for (bool done = false; !done;) {
    ASSERT_OK_AND_ASSIGN(PurgeStep step, store->PurgeSessionStep("ses_a", 50));
    done = step.done;
  }
  ASSERT_OK_AND_ASSIGN(int64_t released, store->ReleaseFreePages(1 << 30));
  EXPECT_GT(released, 0);
  const int64_t pages_after = std::stoll(RawQuery(options_.path, "PRAGMA page_count"));
  EXPECT_LT(pages_after * 10, pages_full);
  EXPECT_EQ(RawQuery(options_.path, "PRAGMA freelist_count"), "0");
}

TEST_F(SqliteStoreTest, HeldWriteLockBeyondBusyTimeoutIsUnavailable) {
  options_.busy_timeout_ms = 100;
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a"), UserMessage("t")));

  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(options_.path.c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
  auto blocked = store->AppendEvent("ses_a", "tick", Json::object());
  ASSERT_FALSE(blocked.has_value());
  EXPECT_EQ(blocked.error().code, ErrorCode::kUnavailable);
  EXPECT_THAT(blocked.error().message, HasSubstr("busy"));
  // Reads are not blocked by a writer in WAL mode.
  EXPECT_TRUE(store->GetSession("ses_a").has_value());
  ASSERT_EQ(sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(other);

  ASSERT_OK_AND_ASSIGN(Event e, store->AppendEvent("ses_a", "tick", Json::object()));
  EXPECT_EQ(e.seq, 2);
}

// The same race made certain: another process holds the write lock of a file in rollback
// mode while the store opens it. The switch to WAL waits for the lock to go, within the busy
// timeout, and fails as "busy" once the timeout is spent.
TEST_F(SqliteStoreTest, SwitchingToWalWaitsForAnotherWriterWithinTheBusyTimeout) {
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(options_.path.c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "CREATE TABLE elsewhere (x)", nullptr, nullptr, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);

  options_.busy_timeout_ms = 100;
  auto refused = OpenSqliteStore(options_);
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code, ErrorCode::kUnavailable);
  EXPECT_THAT(refused.error().message, HasSubstr("journal_mode"));

  options_.busy_timeout_ms = 5000;
  std::thread release([other] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr);
  });
  auto store = OpenSqliteStore(options_);
  release.join();
  sqlite3_close(other);
  ASSERT_TRUE(store.has_value()) << store.error().message;
  EXPECT_EQ(RawQuery(options_.path, "PRAGMA journal_mode"), "wal");
}

// Replicas started together open one new file at once. Switching it to WAL needs the file's
// exclusive lock, and SQLite answers the losers of that race "busy" at once, without waiting the
// busy timeout; each opener must retry rather than fail (a CI run lost a replica to it).
TEST_F(SqliteStoreTest, StoresOpeningOneNewFileTogetherAllOpen) {
  for (int round = 0; round < 20; ++round) {
    options_.path = dir_ + "/together" + std::to_string(round) + ".db";
    std::vector<std::thread> openers;
    std::atomic<int> opened = 0;
    std::string failure;
    std::mutex failure_mu;
    for (int i = 0; i < 6; ++i) {
      openers.emplace_back([&] {
        auto store = OpenSqliteStore(options_);
        if (store.has_value()) {
          ++opened;
          return;
        }
        std::lock_guard lock(failure_mu);
        failure = store.error().message;
      });
    }
    for (auto& t : openers) t.join();
    ASSERT_EQ(opened, 6) << "round " << round << ": " << failure;
    EXPECT_EQ(RawQuery(options_.path, "PRAGMA journal_mode"), "wal");
  }
}

}  // namespace
}  // namespace airlock::store
