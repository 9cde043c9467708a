// The Store contract (store/store.h), run against every store: each test runs once per
// implementation (INSTANTIATE_TEST_SUITE_P below). A store passes when it gives the same
// answers, errors included, as every other. What is about one implementation alone stays in
// its own test file (sqlite_store_test.cc, postgres_store_test.cc).
//
// The PostgreSQL instantiation runs on a private server that the first test needing it starts
// (tests/support/postgres_server.h), a fresh database per test; it skips with the reason when
// PostgreSQL is not installed.

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "store/postgres_store.h"
#include "store/sqlite_store.h"
#include "store/store_test_postgres.h"
#include "store/store_test_util.h"

namespace airlock::store {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class StoreConformanceTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "postgres") {
      airlock::testing::PostgresServer& server = TestPostgres();
      if (!server.skip.empty()) {
        GTEST_SKIP() << server.skip;
      }
      ASSERT_TRUE(server.failure.empty()) << server.failure;
      std::string error;
      db_ = airlock::testing::CreatePostgresDatabase(server, &error);
      ASSERT_TRUE(error.empty()) << error;
      postgres_.url = server.Url(db_);
      postgres_.password = Secret(server.password);
      return;
    }
    std::string tmpl = (std::filesystem::temp_directory_path() / "airlock_store_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr) << "mkdtemp: " << errno;
    dir_ = tmpl;
    sqlite_.path = dir_ + "/airlock.db";
  }

  void TearDown() override {
    if (!dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }

  bool postgres() const { return GetParam() == "postgres"; }

  Result<std::unique_ptr<Store>> TryOpen() {
    return postgres() ? OpenPostgresStore(postgres_) : OpenSqliteStore(sqlite_);
  }

  std::unique_ptr<Store> Open() {
    auto store = TryOpen();
    EXPECT_TRUE(store.has_value()) << store.error().message;
    return store ? std::move(*store) : nullptr;
  }

  // Runs one SQL statement on a connection of its own, apart from the Store, and returns the
  // first column of the first row as text ("" when there is no row).
  std::string RawQuery(const std::string& sql) {
    if (!postgres()) {
      return SqliteRawQuery(sqlite_.path, sql);
    }
    std::string error;
    std::string out = airlock::testing::PostgresQuery(TestPostgres(), db_, sql, &error);
    EXPECT_TRUE(error.empty()) << sql << ": " << error;
    return out;
  }

  // SQL for the length in bytes of a text column.
  std::string ByteLength(const std::string& column) const {
    return postgres() ? "octet_length(" + column + ")" : "length(CAST(" + column + " AS BLOB))";
  }

  std::string dir_;
  StoreOptions sqlite_;
  std::string db_;
  PostgresOptions postgres_;
};

INSTANTIATE_TEST_SUITE_P(Stores, StoreConformanceTest, ::testing::Values("sqlite", "postgres"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

TEST_P(StoreConformanceTest, RefusesDatabaseWithNewerSchemaVersion) {
  { ASSERT_NE(Open(), nullptr); }
  RawQuery("INSERT INTO schema_migrations (version, applied_at) VALUES (9999, 0)");
  auto store = TryOpen();
  ASSERT_FALSE(store.has_value());
  EXPECT_THAT(store.error().message, HasSubstr("9999"));
}

TEST_P(StoreConformanceTest, SandboxHandleIsRecordedInAnyStateWithoutAnEvent) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_h", 1), UserMessage("x")));
  ASSERT_OK(store->ChangeState(
      "ses_h", StateChange{{SessionState::kStarting}, SessionState::kKilled, "gone", true, {}}));
  ASSERT_OK(store->SetSandboxHandle("ses_h", "oci:late"));
  ASSERT_OK_AND_ASSIGN(Session s, store->GetSession("ses_h"));
  EXPECT_EQ(s.sandbox_handle, "oci:late");
  EXPECT_EQ(s.state, SessionState::kKilled);
  ASSERT_OK_AND_ASSIGN(auto events, store->ListEvents("ses_h", 0, 100));
  EXPECT_EQ(events.size(), 2u);  // created, state
  EXPECT_EQ(store->SetSandboxHandle("ses_nope", "x").error().code, ErrorCode::kNotFound);
}

TEST_P(StoreConformanceTest, CreatedSessionRoundTripsWithTaskMessageAndCreatedEvent) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  Session in = MakeSession("ses_a", 1234);
  in.sandbox_handle = "crun:abc";
  in.env = Json{{"REPO", "airlock"}, {"DEBUG", "1"}};
  in.egress = Json{{"allow", {"pypi.org"}}, {"allow_addresses", Json::array()}};
  ASSERT_OK(store->CreateSession(in, UserMessage("do the thing")));

  ASSERT_OK_AND_ASSIGN(Session s, store->GetSession("ses_a"));
  EXPECT_EQ(s.id, "ses_a");
  EXPECT_EQ(s.state, SessionState::kStarting);
  EXPECT_EQ(s.image, in.image);
  EXPECT_EQ(s.backend, in.backend);
  EXPECT_EQ(s.model, in.model);
  EXPECT_EQ(s.command, in.command);
  EXPECT_EQ(s.limits, in.limits);
  EXPECT_EQ(s.metadata, in.metadata);
  EXPECT_EQ(s.env, in.env);
  EXPECT_EQ(s.egress, in.egress);
  EXPECT_EQ(s.token_hash, in.token_hash);
  EXPECT_EQ(s.sandbox_handle, "crun:abc");
  EXPECT_FALSE(s.result.has_value());
  EXPECT_EQ(s.created_at, 1234);
  EXPECT_EQ(s.updated_at, 1234);
  EXPECT_EQ(s.usage.llm_calls, 0);

  ASSERT_OK_AND_ASSIGN(auto messages, store->ListMessages("ses_a", /*include_pending=*/true));
  ASSERT_EQ(messages.size(), 1u);
  EXPECT_FALSE(messages[0].position.has_value());
  EXPECT_EQ(messages[0].body, UserMessage("do the thing"));

  ASSERT_OK_AND_ASSIGN(auto events, store->ListEvents("ses_a", 0, 100));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].seq, 1);
  EXPECT_EQ(events[0].type, "session.created");
  EXPECT_EQ(events[0].data,
            Json({{"image", "python:3.12"}, {"backend", "oci"}, {"model", "fast"}}));
}

// A session that takes a warm pool's sandbox is created running, with its token and handle:
// its events read as a start.
TEST_P(StoreConformanceTest, ASessionCreatedRunningHasTheStartInItsEvents) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  Session in = MakeSession("ses_w", 1234);
  in.state = SessionState::kRunning;
  in.sandbox_handle = "oci:warm";
  ASSERT_OK(store->CreateSession(in, UserMessage("go")));
  ASSERT_OK_AND_ASSIGN(Session s, store->GetSession("ses_w"));
  EXPECT_EQ(s.state, SessionState::kRunning);
  EXPECT_EQ(s.tier, SuspendTier::kActive);
  EXPECT_EQ(s.token_hash, in.token_hash);
  EXPECT_EQ(s.sandbox_handle, "oci:warm");
  ASSERT_OK_AND_ASSIGN(Session by_token, store->GetSessionByTokenHash(in.token_hash));
  EXPECT_EQ(by_token.id, "ses_w");
  ASSERT_OK_AND_ASSIGN(auto events, store->ListEvents("ses_w", 0, 100));
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].type, "session.created");
  EXPECT_EQ(events[1].seq, 2);
  EXPECT_EQ(events[1].type, "session.state");
  EXPECT_EQ(events[1].data, Json({{"from", "starting"}, {"to", "running"}}));
}

TEST_P(StoreConformanceTest, CreatingSessionWithExistingIdIsConflictAndChangesNothing) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a"), UserMessage("first")));
  auto again = store->CreateSession(MakeSession("ses_a", 0, "other-hash"), UserMessage("second"));
  ASSERT_FALSE(again.has_value());
  EXPECT_EQ(again.error().code, ErrorCode::kConflict);
  ASSERT_OK_AND_ASSIGN(auto messages, store->ListMessages("ses_a", true));
  EXPECT_THAT(Contents(messages), ElementsAre("first"));
  ASSERT_OK_AND_ASSIGN(auto events, store->ListEvents("ses_a", 0, 100));
  EXPECT_EQ(events.size(), 1u);
}

TEST_P(StoreConformanceTest, UnknownSessionIsNotFoundEverywhere) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  auto expect_not_found = [](const auto& result, const char* what) {
    ASSERT_FALSE(result.has_value()) << what;
    EXPECT_EQ(result.error().code, ErrorCode::kNotFound) << what << ": " << result.error().message;
  };
  expect_not_found(store->GetSession("ses_x"), "GetSession");
  expect_not_found(store->ChangeState(
                       "ses_x", {.from = {SessionState::kStarting}, .to = SessionState::kRunning}),
                   "ChangeState");
  expect_not_found(store->AddUserMessage("ses_x", UserMessage("hi")), "AddUserMessage");
  expect_not_found(store->TakeInbox("ses_x", ""), "TakeInbox");
  expect_not_found(store->AppendConversation("ses_x", {UserMessage("a")}), "AppendConversation");
  expect_not_found(store->AppendConversation("ses_x", {}), "AppendConversation (empty)");
  expect_not_found(store->ListMessages("ses_x", true), "ListMessages");
  expect_not_found(store->AppendEvent("ses_x", "t", Json::object()), "AppendEvent");
  expect_not_found(store->ListEvents("ses_x", 0, 10), "ListEvents");
  expect_not_found(store->RecordUsage("ses_x", "fast", Usage{1, 1, 1, 0.1}), "RecordUsage");
}

TEST_P(StoreConformanceTest, ListsSessionsNewestFirstWithStateFilterAndPagination) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  // Two sessions share created_at 3000: the id breaks the tie, descending.
  ASSERT_OK(store->CreateSession(MakeSession("ses_1", 1000), UserMessage("t")));
  ASSERT_OK(store->CreateSession(MakeSession("ses_2", 2000), UserMessage("t")));
  ASSERT_OK(store->CreateSession(MakeSession("ses_3a", 3000), UserMessage("t")));
  ASSERT_OK(store->CreateSession(MakeSession("ses_3b", 3000), UserMessage("t")));
  ASSERT_OK(store->CreateSession(MakeSession("ses_4", 4000), UserMessage("t")));
  for (const char* id : {"ses_1", "ses_3a", "ses_4"}) {
    ASSERT_OK(
        store->ChangeState(id, {.from = {SessionState::kStarting}, .to = SessionState::kRunning}));
  }

  ASSERT_OK_AND_ASSIGN(auto all, store->ListSessions({}));
  EXPECT_THAT(Ids(all), ElementsAre("ses_4", "ses_3b", "ses_3a", "ses_2", "ses_1"));

  ASSERT_OK_AND_ASSIGN(auto page1, store->ListSessions({.limit = 2}));
  EXPECT_THAT(Ids(page1), ElementsAre("ses_4", "ses_3b"));
  ASSERT_OK_AND_ASSIGN(auto page2, store->ListSessions({.limit = 2, .before_id = "ses_3b"}));
  EXPECT_THAT(Ids(page2), ElementsAre("ses_3a", "ses_2"));
  ASSERT_OK_AND_ASSIGN(auto page3, store->ListSessions({.limit = 2, .before_id = "ses_2"}));
  EXPECT_THAT(Ids(page3), ElementsAre("ses_1"));

  ASSERT_OK_AND_ASSIGN(auto running, store->ListSessions({.state = SessionState::kRunning}));
  EXPECT_THAT(Ids(running), ElementsAre("ses_4", "ses_3a", "ses_1"));
  ASSERT_OK_AND_ASSIGN(
      auto running_page,
      store->ListSessions({.state = SessionState::kRunning, .limit = 1, .before_id = "ses_3b"}));
  EXPECT_THAT(Ids(running_page), ElementsAre("ses_3a"));
  ASSERT_OK_AND_ASSIGN(auto starting, store->ListSessions({.state = SessionState::kStarting}));
  EXPECT_THAT(Ids(starting), ElementsAre("ses_3b", "ses_2"));

  ASSERT_OK_AND_ASSIGN(auto clamped_low, store->ListSessions({.limit = 0}));
  EXPECT_EQ(clamped_low.size(), 1u);
  ASSERT_OK_AND_ASSIGN(auto clamped_high, store->ListSessions({.limit = 1'000'000}));
  EXPECT_EQ(clamped_high.size(), 5u);

  auto bad_cursor = store->ListSessions({.before_id = "ses_nope"});
  ASSERT_FALSE(bad_cursor.has_value());
  EXPECT_EQ(bad_cursor.error().code, ErrorCode::kInvalidArgument);
}

TEST_P(StoreConformanceTest, FindsSessionByTokenHashUntilRevoked) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a", 0, "aaaa"), UserMessage("t")));
  ASSERT_OK(store->CreateSession(MakeSession("ses_b", 0, "bbbb"), UserMessage("t")));

  ASSERT_OK_AND_ASSIGN(Session found, store->GetSessionByTokenHash("bbbb"));
  EXPECT_EQ(found.id, "ses_b");

  ASSERT_OK_AND_ASSIGN(Session killed,
                       store->ChangeState("ses_b", {.from = {SessionState::kStarting},
                                                    .to = SessionState::kKilled,
                                                    .revoke_token = true}));
  EXPECT_EQ(killed.token_hash, "");
  auto revoked = store->GetSessionByTokenHash("bbbb");
  ASSERT_FALSE(revoked.has_value());
  EXPECT_EQ(revoked.error().code, ErrorCode::kNotFound);

  // Revoke the other one too: two sessions now hold '' and neither may match an empty lookup.
  ASSERT_OK(store->ChangeState(
      "ses_a",
      {.from = {SessionState::kStarting}, .to = SessionState::kFailed, .revoke_token = true}));
  auto empty = store->GetSessionByTokenHash("");
  ASSERT_FALSE(empty.has_value());
  EXPECT_EQ(empty.error().code, ErrorCode::kNotFound);
}

TEST_P(StoreConformanceTest, RejectsSecondSessionWithSameLiveTokenHash) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a", 0, "same"), UserMessage("t")));
  auto dup = store->CreateSession(MakeSession("ses_b", 0, "same"), UserMessage("t"));
  ASSERT_FALSE(dup.has_value());
  EXPECT_EQ(dup.error().code, ErrorCode::kConflict);
  EXPECT_FALSE(store->GetSession("ses_b").has_value());
}

TEST_P(StoreConformanceTest, ChangeStateUpdatesSessionAndAppendsStateEvent) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a", 1000), UserMessage("t")));

  ASSERT_OK_AND_ASSIGN(Session running,
                       store->ChangeState("ses_a", {.from = {SessionState::kStarting},
                                                    .to = SessionState::kRunning,
                                                    .sandbox_handle = "crun:ses_a"}));
  EXPECT_EQ(running.state, SessionState::kRunning);
  EXPECT_EQ(running.sandbox_handle, "crun:ses_a");
  EXPECT_EQ(running.token_hash, "hash-ses_a");
  EXPECT_GT(running.updated_at, 1000);

  ASSERT_OK_AND_ASSIGN(
      Session done,
      store->ChangeState("ses_a", {.from = {SessionState::kRunning, SessionState::kSuspended},
                                   .to = SessionState::kSucceeded,
                                   .result = "all good"}));
  EXPECT_EQ(done.state, SessionState::kSucceeded);
  EXPECT_EQ(done.result, "all good");
  EXPECT_EQ(done.sandbox_handle, "crun:ses_a");

  ASSERT_OK_AND_ASSIGN(Session stored, store->GetSession("ses_a"));
  EXPECT_EQ(stored.state, SessionState::kSucceeded);
  EXPECT_EQ(stored.result, "all good");

  ASSERT_OK_AND_ASSIGN(auto events, store->ListEvents("ses_a", 1, 100));
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].type, "session.state");
  EXPECT_EQ(events[0].data, Json({{"from", "starting"}, {"to", "running"}}));
  EXPECT_EQ(events[1].data,
            Json({{"from", "running"}, {"to", "succeeded"}, {"result", "all good"}}));
}

TEST_P(StoreConformanceTest, RejectsStateChangeFromTerminalStateNamingCurrentState) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a"), UserMessage("t")));
  ASSERT_OK(store->ChangeState(
      "ses_a", {.from = {SessionState::kStarting}, .to = SessionState::kSucceeded}));

  auto again =
      store->ChangeState("ses_a", {.from = {SessionState::kStarting, SessionState::kRunning},
                                   .to = SessionState::kKilled,
                                   .revoke_token = true});
  ASSERT_FALSE(again.has_value());
  EXPECT_EQ(again.error().code, ErrorCode::kConflict);
  EXPECT_THAT(again.error().message, HasSubstr("succeeded"));

  // Nothing of the refused change was applied.
  ASSERT_OK_AND_ASSIGN(Session s, store->GetSession("ses_a"));
  EXPECT_EQ(s.state, SessionState::kSucceeded);
  EXPECT_EQ(s.token_hash, "hash-ses_a");
  ASSERT_OK_AND_ASSIGN(auto events, store->ListEvents("ses_a", 0, 100));
  EXPECT_EQ(events.size(), 2u);
}

TEST_P(StoreConformanceTest, AddUserMessageToTerminalSessionIsConflict) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a"), UserMessage("t")));
  ASSERT_OK(store->ChangeState("ses_a",
                               {.from = {SessionState::kStarting}, .to = SessionState::kFailed}));
  auto added = store->AddUserMessage("ses_a", UserMessage("too late"));
  ASSERT_FALSE(added.has_value());
  EXPECT_EQ(added.error().code, ErrorCode::kConflict);
  EXPECT_THAT(added.error().message, HasSubstr("failed"));
}

TEST_P(StoreConformanceTest, InboxMessagesAreTakenOnceInOrderAndLaterOnesFollowTheConversation) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a"), UserMessage("task")));
  ASSERT_OK_AND_ASSIGN(int64_t id1, store->AddUserMessage("ses_a", UserMessage("one")));
  ASSERT_OK_AND_ASSIGN(int64_t id2, store->AddUserMessage("ses_a", UserMessage("two")));
  EXPECT_LT(id1, id2);

  ASSERT_OK_AND_ASSIGN(auto taken, store->TakeInbox("ses_a", ""));
  EXPECT_THAT(Contents(taken), ElementsAre("task", "one", "two"));
  ASSERT_EQ(taken.size(), 3u);
  EXPECT_EQ(taken[0].position, 1);
  EXPECT_EQ(taken[1].position, 2);
  EXPECT_EQ(taken[2].position, 3);
  EXPECT_EQ(taken[1].id, id1);

  ASSERT_OK_AND_ASSIGN(auto second, store->TakeInbox("ses_a", ""));
  EXPECT_TRUE(second.empty());

  ASSERT_OK(
      store->AppendConversation("ses_a", {Json{{"role", "assistant"}, {"content", "reply"}},
                                          Json{{"role", "tool"}, {"content", "tool output"}}}));
  ASSERT_OK(store->AddUserMessage("ses_a", UserMessage("three")));

  ASSERT_OK_AND_ASSIGN(auto conversation, store->ListMessages("ses_a", false));
  EXPECT_THAT(Contents(conversation), ElementsAre("task", "one", "two", "reply", "tool output"));
  ASSERT_OK_AND_ASSIGN(auto with_pending, store->ListMessages("ses_a", true));
  EXPECT_THAT(Contents(with_pending),
              ElementsAre("task", "one", "two", "reply", "tool output", "three"));
  EXPECT_FALSE(with_pending.back().position.has_value());
  EXPECT_EQ(with_pending[4].position, 5);

  ASSERT_OK_AND_ASSIGN(auto third, store->TakeInbox("ses_a", ""));
  ASSERT_EQ(third.size(), 1u);
  EXPECT_EQ(third[0].body, UserMessage("three"));
  EXPECT_EQ(third[0].position, 6);
}

TEST_P(StoreConformanceTest, EventSeqsCountFromOnePerSessionIndependently) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a"), UserMessage("t")));
  ASSERT_OK(store->CreateSession(MakeSession("ses_b"), UserMessage("t")));
  for (int i = 0; i < 5; ++i) {
    ASSERT_OK_AND_ASSIGN(Event a, store->AppendEvent("ses_a", "tick", {{"i", i}}));
    EXPECT_EQ(a.seq, i + 2);
    EXPECT_EQ(a.session_id, "ses_a");
    if (i % 2 == 0) {
      ASSERT_OK(store->AppendEvent("ses_b", "tock", {{"i", i}}));
    }
  }
  ASSERT_OK_AND_ASSIGN(auto a_events, store->ListEvents("ses_a", 0, 100));
  EXPECT_THAT(Seqs(a_events), ElementsAre(1, 2, 3, 4, 5, 6));
  EXPECT_EQ(a_events[3].data, Json({{"i", 2}}));
  ASSERT_OK_AND_ASSIGN(auto b_events, store->ListEvents("ses_b", 0, 100));
  EXPECT_THAT(Seqs(b_events), ElementsAre(1, 2, 3, 4));
  EXPECT_EQ(b_events[1].type, "tock");

  ASSERT_OK_AND_ASSIGN(auto after, store->ListEvents("ses_a", 2, 3));
  EXPECT_THAT(Seqs(after), ElementsAre(3, 4, 5));
  ASSERT_OK_AND_ASSIGN(auto tail, store->ListEvents("ses_a", 5, 100));
  EXPECT_THAT(Seqs(tail), ElementsAre(6));
  ASSERT_OK_AND_ASSIGN(auto none, store->ListEvents("ses_a", 6, 100));
  EXPECT_TRUE(none.empty());
  ASSERT_OK_AND_ASSIGN(auto zero_limit, store->ListEvents("ses_a", 0, 0));
  EXPECT_TRUE(zero_limit.empty());
}

TEST_P(StoreConformanceTest, RecordUsageAddsToSessionTotals) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a"), UserMessage("t")));
  ASSERT_OK(store->RecordUsage("ses_a", "fast", Usage{100, 20, 1, 0.25}));
  ASSERT_OK(store->RecordUsage("ses_a", "smart", Usage{50, 5, 1, 0.5}));
  ASSERT_OK_AND_ASSIGN(Session s, store->GetSession("ses_a"));
  EXPECT_EQ(s.usage.input_tokens, 150);
  EXPECT_EQ(s.usage.output_tokens, 25);
  EXPECT_EQ(s.usage.llm_calls, 2);
  EXPECT_DOUBLE_EQ(s.usage.cost_usd, 0.75);
  EXPECT_EQ(RawQuery("SELECT COUNT(*) FROM usage WHERE session_id = 'ses_a'"), "2");

  auto negative = store->RecordUsage("ses_a", "fast", Usage{-1, 0, 1, 0});
  ASSERT_FALSE(negative.has_value());
  EXPECT_EQ(negative.error().code, ErrorCode::kInvalidArgument);
}

TEST_P(StoreConformanceTest, RecordChatAppendsMetersAndLogsInOneStep) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  Session base = MakeSession("ses_a");
  base.models = Json::array({"fast", "smart"});
  ASSERT_OK(store->CreateSession(base, UserMessage("task")));
  ASSERT_OK(store->TakeInbox("ses_a", ""));
  ChatRecord rec;
  rec.messages = {Json{{"role", "tool"}, {"tool_call_id", "c1"}, {"content", "out"}},
                  Json{{"role", "assistant"}, {"content", "done"}}};
  rec.model = "fast";
  rec.usage = Usage{100, 10, 1, 0.5};
  rec.event_data = Json{{"outcome", "ok"}};
  ASSERT_OK_AND_ASSIGN(ChatRecorded recorded, store->RecordChat("ses_a", rec));
  Usage totals = recorded.totals;
  EXPECT_EQ(totals.input_tokens, 100);
  EXPECT_EQ(totals.llm_calls, 1);
  rec.messages = {Json{{"role", "assistant"}, {"content", "again"}}};
  rec.model = "smart";
  rec.usage = Usage{50, 5, 1, 0.25};
  ASSERT_OK_AND_ASSIGN(recorded, store->RecordChat("ses_a", rec));
  totals = recorded.totals;
  EXPECT_EQ(totals.input_tokens, 150);
  EXPECT_EQ(totals.llm_calls, 2);
  EXPECT_DOUBLE_EQ(totals.cost_usd, 0.75);

  ASSERT_OK_AND_ASSIGN(auto msgs, store->ListMessages("ses_a", false));
  EXPECT_THAT(Contents(msgs), ElementsAre("task", "out", "done", "again"));
  ASSERT_OK_AND_ASSIGN(auto events, store->ListEvents("ses_a", 0, 100));
  int calls = 0;
  for (const auto& e : events) calls += e.type == "llm.call" ? 1 : 0;
  EXPECT_EQ(calls, 2);
  ASSERT_OK_AND_ASSIGN(Session s, store->GetSession("ses_a"));
  EXPECT_EQ(s.models, Json::array({"fast", "smart"}));

  ASSERT_OK_AND_ASSIGN(UsageReport rep, store->GetUsage(UsageQuery{}));
  EXPECT_EQ(rep.total.llm_calls, 2);
  EXPECT_EQ(rep.sessions, 1);
  EXPECT_EQ(rep.by_model.at("fast").input_tokens, 100);
  EXPECT_EQ(rep.by_model.at("smart").output_tokens, 5);
  ASSERT_OK_AND_ASSIGN(UsageReport none, store->GetUsage(UsageQuery{0, 1}));
  EXPECT_EQ(none.total.llm_calls, 0);
  EXPECT_TRUE(none.by_model.empty());

  // A session that ended takes no more: nothing of the record is applied.
  ASSERT_OK(store->ChangeState(
      "ses_a",
      StateChange{
          {SessionState::kStarting}, SessionState::kKilled, std::nullopt, true, std::nullopt}));
  auto late = store->RecordChat("ses_a", rec);
  ASSERT_FALSE(late.has_value());
  EXPECT_EQ(late.error().code, ErrorCode::kConflict);
  ASSERT_OK_AND_ASSIGN(msgs, store->ListMessages("ses_a", false));
  EXPECT_EQ(msgs.size(), 4u);
  ASSERT_OK_AND_ASSIGN(s, store->GetSession("ses_a"));
  EXPECT_EQ(s.usage.llm_calls, 2);
  EXPECT_FALSE(store->RecordChat("ses_nope", rec).has_value());
}

// The LLM routes keep a session's conversation in memory while its version stands: every
// change to the conversation must move the version, in the same transaction, and nothing
// else may.
TEST_P(StoreConformanceTest, AConversationsVersionMovesWithEveryChangeToIt) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a"), UserMessage("task")));
  ASSERT_OK_AND_ASSIGN(Conversation c0, store->ReadConversation("ses_a", 0));
  ASSERT_TRUE(c0.messages.has_value());
  EXPECT_TRUE(c0.messages->empty());  // the task is still in the inbox
  EXPECT_GT(c0.version, 0);
  ASSERT_OK_AND_ASSIGN(Conversation same, store->ReadConversation("ses_a", c0.version));
  EXPECT_EQ(same.version, c0.version);
  EXPECT_FALSE(same.messages.has_value());

  // The inbox and the events are not the conversation.
  ASSERT_OK(store->AddUserMessage("ses_a", UserMessage("more")));
  ASSERT_OK(store->AppendEvent("ses_a", "note", Json::object()));
  ASSERT_OK_AND_ASSIGN(same, store->ReadConversation("ses_a", c0.version));
  EXPECT_FALSE(same.messages.has_value());

  ASSERT_OK(store->TakeInbox("ses_a", ""));
  ASSERT_OK_AND_ASSIGN(Conversation c1, store->ReadConversation("ses_a", c0.version));
  EXPECT_GT(c1.version, c0.version);
  ASSERT_TRUE(c1.messages.has_value());
  EXPECT_THAT(Contents(*c1.messages), ElementsAre("task", "more"));

  ASSERT_OK(store->AppendConversation("ses_a", {Json{{"role", "assistant"}, {"content", "a"}}}));
  ASSERT_OK_AND_ASSIGN(Conversation c2, store->ReadConversation("ses_a", c1.version));
  EXPECT_GT(c2.version, c1.version);
  ASSERT_TRUE(c2.messages.has_value());
  EXPECT_THAT(Contents(*c2.messages), ElementsAre("task", "more", "a"));

  // A record says where its messages went and the version it left: a holder of c2 can apply
  // it to its copy.
  ChatRecord rec;
  rec.model = "fast";
  rec.usage = Usage{1, 1, 1, 0};
  rec.messages = {Json{{"role", "user"}, {"content", "q"}},
                  Json{{"role", "assistant"}, {"content", "r"}}};
  ASSERT_OK_AND_ASSIGN(ChatRecorded recorded, store->RecordChat("ses_a", rec));
  EXPECT_EQ(recorded.first_position, c2.version);
  ASSERT_OK_AND_ASSIGN(Conversation c3, store->ReadConversation("ses_a", c2.version));
  EXPECT_EQ(recorded.version, c3.version);
  ASSERT_TRUE(c3.messages.has_value());
  ASSERT_EQ(c3.messages->size(), 5u);
  EXPECT_EQ((*c3.messages)[3].position, recorded.first_position);
  EXPECT_EQ((*c3.messages)[4].position, recorded.first_position + 1);

  // A call that failed but is charged stores no message: the conversation stands.
  rec.messages.clear();
  ASSERT_OK_AND_ASSIGN(recorded, store->RecordChat("ses_a", rec));
  EXPECT_EQ(recorded.first_position, 0);
  EXPECT_EQ(recorded.version, c3.version);
  ASSERT_OK_AND_ASSIGN(same, store->ReadConversation("ses_a", c3.version));
  EXPECT_FALSE(same.messages.has_value());

  // A rewrite that drops messages and appends none still changes it.
  rec.supersede_after = *(*c3.messages)[0].position;
  ASSERT_OK_AND_ASSIGN(recorded, store->RecordChat("ses_a", rec));
  ASSERT_OK_AND_ASSIGN(Conversation c4, store->ReadConversation("ses_a", c3.version));
  EXPECT_GT(c4.version, c3.version);
  EXPECT_EQ(recorded.version, c4.version);
  ASSERT_TRUE(c4.messages.has_value());
  EXPECT_THAT(Contents(*c4.messages), ElementsAre("task"));

  auto missing = store->ReadConversation("ses_nope", 0);
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
}

// Session "ses_a" with its task taken and one call's exchange stored: `user`, then "r1";
// `rec` is that call's record, for the next call to reuse.
void StartConversation(Store& store, const std::string& user, ChatRecord* rec) {
  ASSERT_OK(store.CreateSession(MakeSession("ses_a"), UserMessage("task")));
  ASSERT_OK(store.TakeInbox("ses_a", ""));
  rec->model = "fast";
  rec->usage = Usage{1, 1, 1, 0};
  rec->messages = {Json{{"role", "user"}, {"content", user}},
                   Json{{"role", "assistant"}, {"content", "r1"}}};
  ASSERT_OK(store.RecordChat("ses_a", *rec));
}

// A client of the OpenAI or Anthropic face that rewrites its history (summarises, truncates):
// what it dropped leaves the conversation, the rest keeps its positions, nothing is doubled.
TEST_P(StoreConformanceTest, RecordChatSupersedesTheMessagesARewriteDropped) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ChatRecord rec;
  ASSERT_NO_FATAL_FAILURE(StartConversation(*store, "long", &rec));
  ASSERT_OK_AND_ASSIGN(auto before, store->ListMessages("ses_a", false));
  ASSERT_EQ(before.size(), 3u);

  // Keeps the task (position of before[0]), replaces the rest with a summary.
  rec.supersede_after = *before[0].position;
  rec.messages = {Json{{"role", "user"}, {"content", "summary"}},
                  Json{{"role", "assistant"}, {"content", "r2"}}};
  ASSERT_OK(store->RecordChat("ses_a", rec));
  ASSERT_OK_AND_ASSIGN(auto after, store->ListMessages("ses_a", true));
  EXPECT_THAT(Contents(after), ElementsAre("task", "summary", "r2"));
  EXPECT_EQ(after[0].id, before[0].id);
  EXPECT_LT(*after[0].position, *after[1].position);
  EXPECT_LT(*after[1].position, *after[2].position);

  // A rewrite that keeps nothing; a pending inbox message is not part of the conversation yet
  // and stays pending.
  ASSERT_OK(store->AddUserMessage("ses_a", UserMessage("later")));
  rec.supersede_after = 0;
  rec.messages = {Json{{"role", "user"}, {"content", "fresh"}},
                  Json{{"role", "assistant"}, {"content", "r3"}}};
  ASSERT_OK(store->RecordChat("ses_a", rec));
  ASSERT_OK_AND_ASSIGN(after, store->ListMessages("ses_a", true));
  EXPECT_THAT(Contents(after), ElementsAre("fresh", "r3", "later"));
  ASSERT_OK_AND_ASSIGN(auto taken, store->TakeInbox("ses_a", ""));
  ASSERT_EQ(taken.size(), 1u);
  ASSERT_OK_AND_ASSIGN(after, store->ListMessages("ses_a", false));
  EXPECT_THAT(Contents(after), ElementsAre("fresh", "r3", "later"));
}

// Two calls of one session at once: the one that rewrote the history it saw supersedes only
// that, not what the other call stored meanwhile.
TEST_P(StoreConformanceTest, ARewriteSupersedesOnlyUpToWhatTheClientSaw) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ChatRecord rec;
  ASSERT_NO_FATAL_FAILURE(StartConversation(*store, "old", &rec));
  ASSERT_OK_AND_ASSIGN(auto seen, store->ListMessages("ses_a", false));  // call B starts here
  // Call A, running alongside, stores its exchange first.
  rec.messages = {Json{{"role", "user"}, {"content", "a"}},
                  Json{{"role", "assistant"}, {"content", "ra"}}};
  ASSERT_OK(store->RecordChat("ses_a", rec));
  // Call B dropped "old" and "r1" from what it saw and summarised them.
  rec.supersede_after = *seen[0].position;
  rec.supersede_through = *seen.back().position;
  rec.messages = {Json{{"role", "user"}, {"content", "summary"}},
                  Json{{"role", "assistant"}, {"content", "rb"}}};
  ASSERT_OK(store->RecordChat("ses_a", rec));
  ASSERT_OK_AND_ASSIGN(auto after, store->ListMessages("ses_a", false));
  EXPECT_THAT(Contents(after), ElementsAre("task", "a", "ra", "summary", "rb"));
}

TEST_P(StoreConformanceTest, EventQuotaRefusesPastCountAndAppendsOneNotice) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a"), UserMessage("t")));
  ASSERT_OK(store->CreateSession(MakeSession("ses_b"), UserMessage("t")));
  const EventQuota quota{5, 0};
  // session.created is the first of the five.
  for (int i = 0; i < 4; ++i) {
    ASSERT_OK_AND_ASSIGN(QuotaAppend a,
                         store->AppendEventWithinQuota("ses_a", "tick", {{"i", i}}, quota));
    ASSERT_TRUE(a.event.has_value()) << i;
    EXPECT_EQ(a.event->seq, i + 2);
  }
  for (int i = 0; i < 10; ++i) {
    ASSERT_OK_AND_ASSIGN(QuotaAppend a,
                         store->AppendEventWithinQuota("ses_a", "tick", {{"i", i}}, quota));
    EXPECT_FALSE(a.event.has_value());
    EXPECT_EQ(a.exceeded, "events");
    EXPECT_EQ(a.limit, 5);
    EXPECT_EQ(a.noticed, i == 0);
  }
  ASSERT_OK_AND_ASSIGN(auto events, store->ListEvents("ses_a", 0, 100));
  ASSERT_EQ(events.size(), 6u);  // five, and the one notice
  EXPECT_EQ(events.back().type, "session.quota_exceeded");
  EXPECT_EQ(events.back().data, Json({{"quota", "events"}, {"limit", 5}, {"type", "tick"}}));
  // Another session's budget is its own.
  ASSERT_OK_AND_ASSIGN(QuotaAppend b,
                       store->AppendEventWithinQuota("ses_b", "tick", Json::object(), quota));
  EXPECT_TRUE(b.event.has_value());
}

// AppendEventsWithinQuota is many AppendEventWithinQuota calls at once: each answer is its
// own call's, in order; one that fails (no such session) fails alone; a session's appends keep
// their order and the quota counts the batch's own appends too.
TEST_P(StoreConformanceTest, ABatchOfAppendsAnswersEachAsItsOwnCallWould) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_b"), UserMessage("t")));
  ASSERT_OK(store->CreateSession(MakeSession("ses_a"), UserMessage("t")));
  const EventQuota quota{4, 0};  // session.created is the first of the four
  std::vector<Json> data;
  for (int i = 0; i < 7; ++i) data.push_back(Json{{"i", i}});
  const std::vector<EventAppend> batch = {
      {"ses_b", "tick", &data[0]}, {"ses_a", "tick", &data[1]}, {"ses_nope", "tick", &data[2]},
      {"ses_b", "tick", &data[3]}, {"ses_b", "tick", &data[4]}, {"ses_b", "tick", &data[5]},
      {"ses_a", "tock", &data[6]}};
  auto answers = store->AppendEventsWithinQuota(batch, quota);
  ASSERT_EQ(answers.size(), batch.size());
  auto seq_of = [&](size_t i) -> int64_t {
    if (!answers[i] || !answers[i]->event) return -1;
    return answers[i]->event->seq;
  };
  EXPECT_EQ(seq_of(0), 2);
  EXPECT_EQ(seq_of(1), 2);
  ASSERT_FALSE(answers[2].has_value());
  EXPECT_EQ(answers[2].error().code, ErrorCode::kNotFound);
  EXPECT_EQ(seq_of(3), 3);
  EXPECT_EQ(seq_of(4), 4);
  ASSERT_TRUE(answers[5].has_value()) << answers[5].error().message;
  EXPECT_FALSE(answers[5]->event.has_value());
  EXPECT_EQ(answers[5]->exceeded, "events");
  EXPECT_TRUE(answers[5]->noticed);
  EXPECT_EQ(seq_of(6), 3);
  ASSERT_OK_AND_ASSIGN(auto b_events, store->ListEvents("ses_b", 0, 100));
  ASSERT_EQ(b_events.size(), 5u);  // created, three ticks, the notice
  EXPECT_EQ(b_events[1].data, data[0]);
  EXPECT_EQ(b_events[2].data, data[3]);
  EXPECT_EQ(b_events[3].data, data[4]);
  EXPECT_EQ(b_events[4].type, "session.quota_exceeded");
  ASSERT_OK_AND_ASSIGN(auto a_events, store->ListEvents("ses_a", 0, 100));
  ASSERT_EQ(a_events.size(), 3u);
  EXPECT_EQ(a_events[1].type, "tick");
  EXPECT_EQ(a_events[2].type, "tock");
  EXPECT_TRUE(store->AppendEventsWithinQuota({}, quota).empty());
}

// What a batch appends counts for what comes after it: the sessions' event and byte totals and
// the quota notice are written back with the batch.
TEST_P(StoreConformanceTest, ABatchLeavesTheQuotaWhereItsAppendsPutIt) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a"), UserMessage("t")));
  const Json data = {{"i", 1}};
  const EventQuota quota{4, 0};
  auto first = store->AppendEventsWithinQuota({{"ses_a", "tick", &data},
                                               {"ses_a", "tick", &data},
                                               {"ses_a", "tick", &data},
                                               {"ses_a", "tick", &data},
                                               {"ses_a", "tick", &data}},
                                              quota);
  ASSERT_EQ(first.size(), 5u);
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(first[i].has_value() && first[i]->event) << i;
  ASSERT_TRUE(first[3].has_value());
  EXPECT_EQ(first[3]->exceeded, "events");
  EXPECT_TRUE(first[3]->noticed);
  ASSERT_TRUE(first[4].has_value());
  EXPECT_EQ(first[4]->exceeded, "events");
  EXPECT_FALSE(first[4]->noticed);  // one notice per session, within a batch too
  ASSERT_OK_AND_ASSIGN(QuotaAppend later,
                       store->AppendEventWithinQuota("ses_a", "tick", data, quota));
  EXPECT_FALSE(later.event.has_value());
  EXPECT_FALSE(later.noticed);
  ASSERT_OK_AND_ASSIGN(SessionFootprint f, store->Footprint("ses_a"));
  EXPECT_EQ(f.events, 5);  // created, three ticks, the notice
  // A larger quota lets the next append in, numbered after the notice.
  ASSERT_OK_AND_ASSIGN(QuotaAppend more,
                       store->AppendEventWithinQuota("ses_a", "tock", data, EventQuota{10, 0}));
  ASSERT_TRUE(more.event.has_value());
  EXPECT_EQ(more.event->seq, 6);
}

// An append that names the token it was authenticated with is stored only if that token is
// still the session's when it commits: after a restart (a fresh sandbox, a new token) or the
// end of the session, the old sandbox's event is refused, however recently its token passed.
// An append the database itself refuses (PostgreSQL's text takes no NUL) fails alone: the
// others of its batch are stored, in order. SQLite stores it; either answer is that call's own.
TEST_P(StoreConformanceTest, AnAppendTheDatabaseRefusesFailsAloneInItsBatch) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a"), UserMessage("t")));
  const Json data = {{"text", std::string("nul \0 inside", 13)}};
  const std::string nul_type("bad\0type", 8);
  auto answers = store->AppendEventsWithinQuota(
      {{"ses_a", "tick", &data}, {"ses_a", nul_type, &data}, {"ses_a", "tock", &data}},
      EventQuota{});
  ASSERT_EQ(answers.size(), 3u);
  ASSERT_TRUE(answers[0].has_value()) << answers[0].error().message;
  ASSERT_TRUE(answers[2].has_value()) << answers[2].error().message;
  ASSERT_OK_AND_ASSIGN(auto events, store->ListEvents("ses_a", 0, 100));
  std::vector<std::string> types;
  for (const auto& e : events) types.push_back(e.type);
  if (answers[1].has_value()) {
    EXPECT_EQ(types, (std::vector<std::string>{"session.created", "tick", nul_type, "tock"}));
  } else {
    EXPECT_EQ(types, (std::vector<std::string>{"session.created", "tick", "tock"}));
  }
  EXPECT_EQ(events.back().data, data);  // the NUL inside the data survives the trip
}

// A state change that names the token it was authenticated with (a sandbox's finish) applies
// only while that token is still the session's.
TEST_P(StoreConformanceTest, AChangeWithAReplacedTokenIsRefusedInItsOwnTransaction) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  Session s = MakeSession("ses_a", 1, "hash-old");
  s.node = "n1";
  ASSERT_OK(store->CreateSession(s, UserMessage("t")));
  ASSERT_OK(
      store->ChangeState("ses_a", StateChange{{SessionState::kStarting}, SessionState::kRunning}));
  ASSERT_OK(store->RestartSandbox("ses_a", "n1", "hash-new", Json::object()));
  StateChange finish{{SessionState::kRunning}, SessionState::kSucceeded, "done"};
  finish.revoke_token = true;
  finish.token_hash = "hash-old";
  auto stale = store->ChangeState("ses_a", finish);
  ASSERT_FALSE(stale.has_value());
  EXPECT_EQ(stale.error().code, ErrorCode::kUnauthenticated);
  ASSERT_OK_AND_ASSIGN(Session still, store->GetSession("ses_a"));
  EXPECT_EQ(still.state, SessionState::kRunning);
  EXPECT_FALSE(still.result.has_value());
  finish.token_hash = "hash-new";
  ASSERT_OK_AND_ASSIGN(Session ended, store->ChangeState("ses_a", finish));
  EXPECT_EQ(ended.state, SessionState::kSucceeded);
  EXPECT_EQ(ended.result, "done");
}

TEST_P(StoreConformanceTest, AnAppendWithAReplacedTokenIsRefusedInItsOwnTransaction) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  Session s = MakeSession("ses_a", 1, "hash-old");
  s.node = "n1";
  ASSERT_OK(store->CreateSession(s, UserMessage("t")));
  ASSERT_OK(
      store->ChangeState("ses_a", StateChange{{SessionState::kStarting}, SessionState::kRunning}));
  const Json data = {{"i", 1}};
  const EventQuota quota{};
  auto current = store->AppendEventsWithinQuota({{"ses_a", "tick", &data, "hash-old"}}, quota);
  ASSERT_TRUE(current[0].has_value()) << current[0].error().message;
  EXPECT_TRUE(current[0]->event.has_value());
  ASSERT_OK(store->RestartSandbox("ses_a", "n1", "hash-new", Json::object()));
  auto stale = store->AppendEventsWithinQuota(
      {{"ses_a", "tick", &data, "hash-old"}, {"ses_a", "tock", &data, "hash-new"}}, quota);
  ASSERT_FALSE(stale[0].has_value());
  EXPECT_EQ(stale[0].error().code, ErrorCode::kUnauthenticated);
  ASSERT_TRUE(stale[1].has_value()) << stale[1].error().message;
  ASSERT_OK_AND_ASSIGN(auto events, store->ListEvents("ses_a", 0, 100));
  int ticks = 0, tocks = 0;
  for (const auto& e : events) {
    ticks += e.type == "tick";
    tocks += e.type == "tock";
  }
  EXPECT_EQ(ticks, 1);
  EXPECT_EQ(tocks, 1);
}

TEST_P(StoreConformanceTest, EventQuotaCountsBytesOfEveryEventIncludingTheControlPlanes) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a"), UserMessage("t")));
  ASSERT_OK_AND_ASSIGN(SessionFootprint start, store->Footprint("ses_a"));
  const std::string big(1000, 'x');
  const EventQuota quota{0, start.bytes + 2500};
  ASSERT_OK_AND_ASSIGN(QuotaAppend a,
                       store->AppendEventWithinQuota("ses_a", "blob", {{"b", big}}, quota));
  ASSERT_TRUE(a.event.has_value());
  // Appended without a quota (the control plane's own), still counted.
  ASSERT_OK(store->AppendEvent("ses_a", "blob", {{"b", big}}));
  ASSERT_OK_AND_ASSIGN(QuotaAppend refused,
                       store->AppendEventWithinQuota("ses_a", "blob", {{"b", big}}, quota));
  EXPECT_FALSE(refused.event.has_value());
  EXPECT_EQ(refused.exceeded, "bytes");
  EXPECT_TRUE(refused.noticed);
  // A small one still fits under the byte bound.
  ASSERT_OK_AND_ASSIGN(QuotaAppend small,
                       store->AppendEventWithinQuota("ses_a", "s", Json::object(), quota));
  EXPECT_TRUE(small.event.has_value());
  ASSERT_OK_AND_ASSIGN(SessionFootprint f, store->Footprint("ses_a"));
  const std::string stored =
      RawQuery("SELECT SUM(" + ByteLength("type") + " + " + ByteLength("data") +
               ") FROM events WHERE session_id = 'ses_a'");
  const std::string messages =
      RawQuery("SELECT SUM(" + ByteLength("body") + ") FROM messages WHERE session_id = 'ses_a'");
  EXPECT_EQ(f.bytes, std::stoll(stored) + std::stoll(messages));
}

TEST_P(StoreConformanceTest, ConcurrentAppendsNeverOvershootTheQuota) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a"), UserMessage("t")));
  const EventQuota quota{100, 0};
  std::atomic<int> appended = 0, refused = 0, notices = 0, failures = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        auto a = store->AppendEventWithinQuota("ses_a", "tick", {{"i", i}}, quota);
        if (!a) {
          ++failures;
        } else if (a->event) {
          ++appended;
        } else {
          ++refused;
          notices += a->noticed ? 1 : 0;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(appended, 99);  // session.created took one
  EXPECT_EQ(refused, 400 - 99);
  EXPECT_EQ(notices, 1);
  EXPECT_EQ(RawQuery("SELECT COUNT(*) FROM events WHERE session_id = 'ses_a'"), "101");
}

TEST_P(StoreConformanceTest, ListsOnlyEndedSessionsPastTheCutoffThatAreNotPurged) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  for (const char* id : {"ses_live", "ses_old", "ses_new"}) {
    ASSERT_OK(store->CreateSession(MakeSession(id), UserMessage("t")));
  }
  ASSERT_OK(store->ChangeState("ses_old",
                               StateChange{{SessionState::kStarting}, SessionState::kSucceeded}));
  ASSERT_OK(
      store->ChangeState("ses_new", StateChange{{SessionState::kStarting}, SessionState::kFailed}));
  ASSERT_OK_AND_ASSIGN(Session old_s, store->GetSession("ses_old"));
  ASSERT_TRUE(old_s.ended_at.has_value());
  ASSERT_OK_AND_ASSIGN(Session live, store->GetSession("ses_live"));
  EXPECT_FALSE(live.ended_at.has_value());
  RawQuery("UPDATE sessions SET ended_at = 1000 WHERE id = 'ses_old'");
  ASSERT_OK_AND_ASSIGN(auto ids, store->ListPurgeable(2000, 10));
  EXPECT_THAT(ids, ElementsAre("ses_old"));
  ASSERT_OK_AND_ASSIGN(auto all, store->ListPurgeable(INT64_MAX, 10));
  EXPECT_THAT(all, ElementsAre("ses_old", "ses_new"));
  ASSERT_OK_AND_ASSIGN(auto one, store->ListPurgeable(INT64_MAX, 1));
  EXPECT_THAT(one, ElementsAre("ses_old"));
  ASSERT_OK_AND_ASSIGN(PurgeStep step, store->PurgeSessionStep("ses_old", 1000));
  EXPECT_TRUE(step.done);
  ASSERT_OK_AND_ASSIGN(auto rest, store->ListPurgeable(INT64_MAX, 10));
  EXPECT_THAT(rest, ElementsAre("ses_new"));
}

TEST_P(StoreConformanceTest, PurgeDeletesContentsInBoundedStepsAndKeepsTheSessionRecord) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a"), UserMessage("t")));
  ASSERT_OK(store->CreateSession(MakeSession("ses_b"), UserMessage("t")));
  for (int i = 0; i < 25; ++i) {
    ASSERT_OK(store->AppendEvent("ses_a", "tick", {{"i", i}}));
    ASSERT_OK(store->AppendEvent("ses_b", "tick", {{"i", i}}));
  }
  ASSERT_OK(store->AppendConversation("ses_a", {UserMessage("q"), UserMessage("a")}));
  ASSERT_OK(store->RecordUsage("ses_a", "fast", Usage{10, 20, 1, 0.5}));
  EXPECT_EQ(store->PurgeSessionStep("ses_a", 10).error().code, ErrorCode::kConflict);  // live
  ASSERT_OK(store->ChangeState(
      "ses_a",
      StateChange{{SessionState::kStarting}, SessionState::kSucceeded, std::string("done")}));
  ASSERT_OK_AND_ASSIGN(SessionFootprint before, store->Footprint("ses_a"));
  EXPECT_EQ(before.events, 27);  // created, 25 ticks, state
  EXPECT_EQ(before.messages, 3);
  ASSERT_OK_AND_ASSIGN(Conversation held, store->ReadConversation("ses_a", 0));
  ASSERT_TRUE(held.messages.has_value());
  EXPECT_EQ(held.messages->size(), 2u);
  SessionFootprint total;
  int steps = 0;
  for (bool done = false; !done; ++steps) {
    ASSERT_LT(steps, 20);
    ASSERT_OK_AND_ASSIGN(PurgeStep step, store->PurgeSessionStep("ses_a", 10));
    EXPECT_LE(step.deleted.events + step.deleted.messages, 10);
    total.events += step.deleted.events;
    total.messages += step.deleted.messages;
    total.bytes += step.deleted.bytes;
    done = step.done;
  }
  EXPECT_EQ(steps, 4);  // 30 rows: three full steps, and a fourth that finds nothing left
  EXPECT_EQ(total.events, before.events);
  EXPECT_EQ(total.messages, before.messages);
  EXPECT_EQ(total.bytes, before.bytes);
  ASSERT_OK_AND_ASSIGN(auto events, store->ListEvents("ses_a", 0, 100));
  EXPECT_TRUE(events.empty());
  ASSERT_OK_AND_ASSIGN(auto msgs, store->ListMessages("ses_a", true));
  EXPECT_TRUE(msgs.empty());
  // Deleting the conversation changes it: a copy held from before is not current.
  ASSERT_OK_AND_ASSIGN(Conversation purged, store->ReadConversation("ses_a", held.version));
  ASSERT_TRUE(purged.messages.has_value());
  EXPECT_TRUE(purged.messages->empty());
  ASSERT_OK_AND_ASSIGN(Session s, store->GetSession("ses_a"));
  EXPECT_TRUE(s.purged_at.has_value());
  EXPECT_EQ(s.state, SessionState::kSucceeded);
  EXPECT_EQ(s.result, "done");
  EXPECT_EQ(s.usage.llm_calls, 1);
  ASSERT_OK_AND_ASSIGN(UsageReport usage, store->GetUsage(UsageQuery{}));
  EXPECT_EQ(usage.total.input_tokens, 10);  // metered calls stay: usage reports stay right
  ASSERT_OK_AND_ASSIGN(SessionFootprint after, store->Footprint("ses_a"));
  EXPECT_EQ(after.events + after.messages + after.bytes, 0);
  // The other session is untouched.
  ASSERT_OK_AND_ASSIGN(auto b_events, store->ListEvents("ses_b", 0, 100));
  EXPECT_EQ(b_events.size(), 26u);
}

TEST_P(StoreConformanceTest, OperatorKeyNamesAndHashesAreUnique) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->AddOperatorKey({"ci", "h1", 10}));
  ASSERT_OK(store->AddOperatorKey({"alice", "h2", 0}));
  auto same_name = store->AddOperatorKey({"ci", "h3", 0});
  ASSERT_FALSE(same_name.has_value());
  EXPECT_EQ(same_name.error().code, ErrorCode::kConflict);
  EXPECT_THAT(same_name.error().message, HasSubstr("ci"));
  auto same_hash = store->AddOperatorKey({"bob", "h1", 0});
  ASSERT_FALSE(same_hash.has_value());
  EXPECT_EQ(same_hash.error().code, ErrorCode::kConflict);

  ASSERT_OK_AND_ASSIGN(auto keys, store->ListOperatorKeys());
  ASSERT_EQ(keys.size(), 2u);
  EXPECT_EQ(keys[0].name, "alice");
  EXPECT_GT(keys[0].created_at, 0);
  EXPECT_EQ(keys[1].name, "ci");
  EXPECT_EQ(keys[1].hash, "h1");
  EXPECT_EQ(keys[1].created_at, 10);
}

TEST_P(StoreConformanceTest, ConcurrentAppendsYieldContiguousSeqsWithoutDuplicates) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a"), UserMessage("t")));
  constexpr int kThreads = 8;
  constexpr int kPerThread = 200;
  std::vector<std::vector<int64_t>> seqs(kThreads);
  std::atomic<int> failures = 0;
  std::atomic<bool> writing = true;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        auto e = store->AppendEvent("ses_a", "tick", {{"t", t}, {"i", i}});
        if (!e) {
          ++failures;
          continue;
        }
        seqs[t].push_back(e->seq);
      }
    });
  }
  // Readers run alongside and must always see a gap-free prefix.
  std::vector<std::thread> readers;
  for (int r = 0; r < 3; ++r) {
    readers.emplace_back([&] {
      while (writing) {
        auto events = store->ListEvents("ses_a", 0, 100000);
        if (!events) {
          ++failures;
          continue;
        }
        for (size_t i = 0; i < events->size(); ++i) {
          if ((*events)[i].seq != static_cast<int64_t>(i) + 1) {
            ++failures;
          }
        }
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  writing = false;
  for (auto& r : readers) {
    r.join();
  }
  EXPECT_EQ(failures, 0);

  // Seq 1 is the session.created event, so the appends hold 2..1601.
  ExpectGaplessAppends(seqs, kThreads * kPerThread);

  ASSERT_OK_AND_ASSIGN(auto events, store->ListEvents("ses_a", 0, 100000));
  ASSERT_EQ(events.size(), static_cast<size_t>(kThreads * kPerThread + 1));
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].seq, static_cast<int64_t>(i) + 1);
  }
}

TEST_P(StoreConformanceTest, DataPersistsAfterCloseAndReopen) {
  {
    auto store = Open();
    ASSERT_NE(store, nullptr);
    ASSERT_OK(store->AddOperatorKey({"ci", "h1", 0}));
    ASSERT_OK(store->CreateSession(MakeSession("ses_a", 0, "tok"), UserMessage("task")));
    ASSERT_OK(store->TakeInbox("ses_a", ""));
    ASSERT_OK(store->AppendConversation("ses_a", {Json{{"role", "assistant"}, {"content", "ok"}}}));
    ASSERT_OK(store->AddUserMessage("ses_a", UserMessage("more")));
    ASSERT_OK(store->ChangeState(
        "ses_a", {.from = {SessionState::kStarting}, .to = SessionState::kRunning}));
    ASSERT_OK(store->RecordUsage("ses_a", "fast", Usage{7, 3, 1, 0.01}));
  }
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK_AND_ASSIGN(auto keys, store->ListOperatorKeys());
  EXPECT_EQ(keys.size(), 1u);
  ASSERT_OK_AND_ASSIGN(Session s, store->GetSessionByTokenHash("tok"));
  EXPECT_EQ(s.state, SessionState::kRunning);
  EXPECT_EQ(s.usage.input_tokens, 7);
  ASSERT_OK_AND_ASSIGN(auto messages, store->ListMessages("ses_a", true));
  EXPECT_THAT(Contents(messages), ElementsAre("task", "ok", "more"));
  // Counters survive too: the next event and position continue where they stopped.
  ASSERT_OK_AND_ASSIGN(Event e, store->AppendEvent("ses_a", "tick", Json::object()));
  EXPECT_EQ(e.seq, 3);
  ASSERT_OK_AND_ASSIGN(auto taken, store->TakeInbox("ses_a", ""));
  ASSERT_EQ(taken.size(), 1u);
  EXPECT_EQ(taken[0].position, 3);
}

// The child appends events and reports each seq on a pipe only after AppendEvent returned.
// Whatever point the SIGKILL lands at, every reported seq must be in the file.
TEST_P(StoreConformanceTest, CommittedEventsSurviveSigkillOfTheProcess) {
  {
    auto store = Open();
    ASSERT_NE(store, nullptr);
    ASSERT_OK(store->CreateSession(MakeSession("ses_a"), UserMessage("t")));
  }
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    auto store = TryOpen();
    if (!store) {
      _exit(2);
    }
    for (int i = 0; i < 100000; ++i) {
      auto e = (*store)->AppendEvent("ses_a", "tick", {{"i", i}});
      if (!e) {
        _exit(3);
      }
      const int64_t seq = e->seq;
      if (write(fds[1], &seq, sizeof(seq)) != static_cast<ssize_t>(sizeof(seq))) {
        _exit(4);
      }
    }
    _exit(0);
  }
  close(fds[1]);

  std::mt19937 rng(std::random_device{}());
  const size_t kill_after = std::uniform_int_distribution<size_t>(1, 2000)(rng);
  std::vector<int64_t> reported;
  std::string buffer;
  bool killed = false;
  char chunk[4096];
  for (;;) {
    const ssize_t n = read(fds[0], chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      break;
    }
    buffer.append(chunk, static_cast<size_t>(n));
    while (buffer.size() >= sizeof(int64_t)) {
      int64_t seq;
      std::memcpy(&seq, buffer.data(), sizeof(seq));
      buffer.erase(0, sizeof(seq));
      reported.push_back(seq);
    }
    if (!killed && reported.size() >= kill_after) {
      kill(pid, SIGKILL);
      killed = true;  // Keep reading: seqs written before the kill are still in the pipe.
    }
  }
  close(fds[0]);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status)) << "child ended on its own, status " << status;
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
  ASSERT_GE(reported.size(), kill_after);

  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK_AND_ASSIGN(auto events, store->ListEvents("ses_a", 0, 1'000'000));
  std::set<int64_t> stored;
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].seq, static_cast<int64_t>(i) + 1);
    stored.insert(events[i].seq);
  }
  for (int64_t seq : reported) {
    EXPECT_TRUE(stored.contains(seq)) << "lost seq " << seq;
  }
  // And the store is usable after the crash: the next seq follows the last stored one.
  ASSERT_OK_AND_ASSIGN(Event next, store->AppendEvent("ses_a", "after", Json::object()));
  EXPECT_EQ(next.seq, static_cast<int64_t>(events.size()) + 1);
}

// Ids and names are listed in the order of their bytes ("B" before "a"), whatever collation
// the database would otherwise use.
TEST_P(StoreConformanceTest, ListingsOrderIdsAndNamesByTheirBytes) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  for (const char* id : {"ses_a", "ses_B", "ses_b", "ses_A"}) {
    ASSERT_OK(store->CreateSession(MakeSession(id, 1000), UserMessage("t")));
  }
  ASSERT_OK_AND_ASSIGN(auto all, store->ListSessions({}));
  EXPECT_THAT(Ids(all), ElementsAre("ses_b", "ses_a", "ses_B", "ses_A"));
  ASSERT_OK_AND_ASSIGN(auto page, store->ListSessions({.limit = 2, .before_id = "ses_a"}));
  EXPECT_THAT(Ids(page), ElementsAre("ses_B", "ses_A"));

  for (const char* name : {"alice", "Zed", "bob"}) {
    ASSERT_OK(store->AddOperatorKey({name, std::string("h-") + name, 0}));
  }
  ASSERT_OK_AND_ASSIGN(auto keys, store->ListOperatorKeys());
  ASSERT_EQ(keys.size(), 3u);
  EXPECT_EQ(keys[0].name, "Zed");
  EXPECT_EQ(keys[1].name, "alice");
  EXPECT_EQ(keys[2].name, "bob");

  for (const char* id : {"ses_a", "ses_B", "ses_b", "ses_A"}) {
    ASSERT_OK(
        store->ChangeState(id, StateChange{{SessionState::kStarting}, SessionState::kKilled}));
  }
  RawQuery("UPDATE sessions SET ended_at = 5");
  ASSERT_OK_AND_ASSIGN(auto purgeable, store->ListPurgeable(INT64_MAX, 10));
  EXPECT_THAT(purgeable, ElementsAre("ses_A", "ses_B", "ses_a", "ses_b"));
}

// A session as a replica named `node` creates it.
Session NodeSession(const std::string& id, const std::string& node) {
  Session s = MakeSession(id);
  s.node = node;
  return s;
}

TEST_P(StoreConformanceTest, HeartbeatsAreUpsertedPerNode) {
  auto store_ = Open();
  ASSERT_NE(store_, nullptr);
  ASSERT_TRUE(store_->Heartbeat("a", 1000));
  ASSERT_TRUE(store_->Heartbeat("b", 1500));
  ASSERT_TRUE(store_->Heartbeat("a", 2000));
  auto nodes = store_->ListNodes();
  ASSERT_TRUE(nodes.has_value());
  ASSERT_EQ(nodes->size(), 2u);
  EXPECT_EQ((*nodes)[0].id, "a");
  EXPECT_EQ((*nodes)[0].heartbeat_at, 2000);
  EXPECT_EQ((*nodes)[1].id, "b");
  EXPECT_EQ((*nodes)[1].heartbeat_at, 1500);
}

TEST_P(StoreConformanceTest, ASessionRemembersItsNodeAndMovesOnlyFromTheNodeItIsOn) {
  auto store_ = Open();
  ASSERT_NE(store_, nullptr);
  ASSERT_TRUE(store_->CreateSession(NodeSession("ses_1", "a"), Json{{"content", "t"}}));
  auto s = store_->GetSession("ses_1");
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->node, "a");
  // Taking over from a node it is not on is refused and changes nothing.
  auto wrong = store_->AdoptSession("ses_1", "b", "c");
  ASSERT_FALSE(wrong.has_value());
  EXPECT_EQ(wrong.error().code, ErrorCode::kConflict);
  auto moved = store_->AdoptSession("ses_1", "a", "b");
  ASSERT_TRUE(moved.has_value()) << moved.error().message;
  EXPECT_EQ(moved->node, "b");
  auto events = store_->ListEvents("ses_1", 0, 100);
  ASSERT_TRUE(events.has_value());
  EXPECT_EQ(events->back().type, "session.node");
  EXPECT_EQ(events->back().data, (Json{{"from", "a"}, {"to", "b"}}));
  // An ended session stays where it is.
  ASSERT_TRUE(
      store_->ChangeState("ses_1", StateChange{{SessionState::kStarting}, SessionState::kKilled}));
  auto late = store_->AdoptSession("ses_1", "b", "a");
  ASSERT_FALSE(late.has_value());
  EXPECT_EQ(late.error().code, ErrorCode::kConflict);
}

TEST_P(StoreConformanceTest, OfReplicasTakingOverTogetherExactlyOneWins) {
  auto store_ = Open();
  ASSERT_NE(store_, nullptr);
  ASSERT_TRUE(store_->CreateSession(NodeSession("ses_1", "dead"), Json{{"content", "t"}}));
  std::vector<std::thread> takers;
  std::atomic<int> won{0}, lost{0};
  for (int i = 0; i < 6; ++i) {
    takers.emplace_back([&, i] {
      auto r = store_->AdoptSession("ses_1", "dead", "replica-" + std::to_string(i));
      if (r) {
        ++won;
      } else if (r.error().code == ErrorCode::kConflict) {
        ++lost;
      }
    });
  }
  for (auto& t : takers) t.join();
  EXPECT_EQ(won.load(), 1);
  EXPECT_EQ(lost.load(), 5);
}

TEST_P(StoreConformanceTest, AFreshSandboxReplacesTheTokenOnlyOnTheSessionsOwnNode) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(NodeSession("ses_1", "a"), UserMessage("t")));
  ASSERT_OK(
      store->ChangeState("ses_1", StateChange{{SessionState::kStarting}, SessionState::kRunning}));
  // A replica that is no longer the session's (another took it over) is refused.
  auto stale = store->RestartSandbox("ses_1", "b", "hash-new", Json{{"reason", "x"}});
  ASSERT_FALSE(stale.has_value());
  EXPECT_EQ(stale.error().code, ErrorCode::kConflict);
  ASSERT_OK(store->GetSessionByTokenHash("hash-ses_1"));
  ASSERT_OK_AND_ASSIGN(Session fresh,
                       store->RestartSandbox("ses_1", "a", "hash-new", Json{{"reason", "x"}}));
  EXPECT_EQ(fresh.token_hash, "hash-new");
  EXPECT_EQ(fresh.state, SessionState::kRunning);
  EXPECT_FALSE(store->GetSessionByTokenHash("hash-ses_1").has_value());
  ASSERT_OK_AND_ASSIGN(auto events, store->ListEvents("ses_1", 0, 100));
  EXPECT_EQ(events.back().type, "session.sandbox_restart");
}

// A session whose sandbox takes its identity over its channel: created without a token.
Session TokenlessSession(const std::string& id, const std::string& node) {
  Session s = NodeSession(id, node);
  s.token_hash.clear();
  return s;
}

TEST_P(StoreConformanceTest, ATokenIsIssuedOnceToASessionThatHasNone) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(TokenlessSession("ses_1", "a"), UserMessage("t")));
  // Not from another node.
  auto elsewhere = store->IssueToken("ses_1", "b", "hash-1");
  ASSERT_FALSE(elsewhere.has_value());
  EXPECT_EQ(elsewhere.error().code, ErrorCode::kConflict);
  ASSERT_OK_AND_ASSIGN(Session issued, store->IssueToken("ses_1", "a", "hash-1"));
  EXPECT_EQ(issued.token_hash, "hash-1");
  EXPECT_EQ(issued.state, SessionState::kRunning);
  ASSERT_OK_AND_ASSIGN(Session found, store->GetSessionByTokenHash("hash-1"));
  EXPECT_EQ(found.id, "ses_1");
  ASSERT_OK_AND_ASSIGN(auto events, store->ListEvents("ses_1", 0, 100));
  EXPECT_EQ(events.back().type, "session.state");
  EXPECT_EQ(events.back().data, (Json{{"from", "starting"}, {"to", "running"}}));
  // Asked again, it is refused and the first token stays.
  auto again = store->IssueToken("ses_1", "a", "hash-2");
  ASSERT_FALSE(again.has_value());
  EXPECT_EQ(again.error().code, ErrorCode::kConflict);
  ASSERT_OK_AND_ASSIGN(Session now, store->GetSession("ses_1"));
  EXPECT_EQ(now.token_hash, "hash-1");
  // A fresh sandbox without a token (restarted, still running) gets one again, once.
  ASSERT_OK(store->RestartSandbox("ses_1", "a", "", Json{{"reason", "x"}}));
  ASSERT_OK_AND_ASSIGN(Session reissued, store->IssueToken("ses_1", "a", "hash-3"));
  EXPECT_EQ(reissued.token_hash, "hash-3");
  EXPECT_FALSE(store->GetSessionByTokenHash("hash-1").has_value());
}

TEST_P(StoreConformanceTest, NoTokenIsIssuedToAnEndedOrSuspendedSession) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(TokenlessSession("ses_1", "a"), UserMessage("t")));
  ASSERT_OK(store->ChangeState(
      "ses_1",
      StateChange{{SessionState::kStarting}, SessionState::kKilled, "killed", true, std::nullopt}));
  auto ended = store->IssueToken("ses_1", "a", "hash-1");
  ASSERT_FALSE(ended.has_value());
  EXPECT_EQ(ended.error().code, ErrorCode::kConflict);
  ASSERT_OK(store->CreateSession(TokenlessSession("ses_2", "a"), UserMessage("t")));
  ASSERT_OK(
      store->ChangeState("ses_2", StateChange{{SessionState::kStarting}, SessionState::kRunning}));
  ASSERT_OK(
      store->ChangeState("ses_2", StateChange{{SessionState::kRunning}, SessionState::kSuspended}));
  auto suspended = store->IssueToken("ses_2", "a", "hash-2");
  ASSERT_FALSE(suspended.has_value());
  EXPECT_EQ(suspended.error().code, ErrorCode::kConflict);
  EXPECT_EQ(store->IssueToken("ses_nope", "a", "hash-3").error().code, ErrorCode::kNotFound);
}

TEST_P(StoreConformanceTest, OfRequestsForOneIdentityExactlyOneGetsIt) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(TokenlessSession("ses_1", "a"), UserMessage("t")));
  std::vector<std::thread> askers;
  std::atomic<int> won{0}, lost{0};
  for (int i = 0; i < 6; ++i) {
    askers.emplace_back([&, i] {
      auto r = store->IssueToken("ses_1", "a", "hash-" + std::to_string(i));
      if (r) {
        ++won;
      } else if (r.error().code == ErrorCode::kConflict) {
        ++lost;
      }
    });
  }
  for (auto& t : askers) t.join();
  EXPECT_EQ(won.load(), 1);
  EXPECT_EQ(lost.load(), 5);
}

// Idle tiers. The stores take the time from the wall clock, so a test waits a little between
// changes it wants to tell apart by state_since.
void Tick() { std::this_thread::sleep_for(std::chrono::milliseconds(3)); }

TEST_P(StoreConformanceTest, ANewSessionIsActiveSinceItWasCreated) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a", 1000), UserMessage("t")));
  ASSERT_OK_AND_ASSIGN(Session s, store->GetSession("ses_a"));
  EXPECT_EQ(s.state, SessionState::kStarting);
  EXPECT_EQ(s.tier, SuspendTier::kActive);
  EXPECT_EQ(s.state_since, 1000);
  ASSERT_OK_AND_ASSIGN(auto listed, store->ListSessions({}));
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].tier, SuspendTier::kActive);
  EXPECT_EQ(listed[0].state_since, 1000);
}

TEST_P(StoreConformanceTest, ASuspendedSessionKeepsItsTierAndSinceWhen) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a", 1000), UserMessage("t")));
  ASSERT_OK_AND_ASSIGN(Session running,
                       store->ChangeState("ses_a", {.from = {SessionState::kStarting},
                                                    .to = SessionState::kRunning}));
  EXPECT_EQ(running.tier, SuspendTier::kActive);
  EXPECT_GT(running.state_since, 1000);

  // Neither the state nor the tier changes: since when stays.
  Tick();
  ASSERT_OK_AND_ASSIGN(Session again, store->ChangeState("ses_a", {.from = {SessionState::kRunning},
                                                                   .to = SessionState::kRunning}));
  EXPECT_EQ(again.state_since, running.state_since);
  EXPECT_GT(again.updated_at, running.state_since);

  Tick();
  ASSERT_OK_AND_ASSIGN(Session paused,
                       store->ChangeState("ses_a", {.from = {SessionState::kRunning},
                                                    .to = SessionState::kSuspended,
                                                    .tier = SuspendTier::kPaused}));
  EXPECT_EQ(paused.state, SessionState::kSuspended);
  EXPECT_EQ(paused.tier, SuspendTier::kPaused);
  EXPECT_GT(paused.state_since, running.state_since);

  // Suspended to suspended: from paused to hibernated.
  Tick();
  ASSERT_OK_AND_ASSIGN(Session hibernated,
                       store->ChangeState("ses_a", {.from = {SessionState::kSuspended},
                                                    .to = SessionState::kSuspended,
                                                    .tier = SuspendTier::kHibernated}));
  EXPECT_EQ(hibernated.state, SessionState::kSuspended);
  EXPECT_EQ(hibernated.tier, SuspendTier::kHibernated);
  EXPECT_GT(hibernated.state_since, paused.state_since);
  ASSERT_OK_AND_ASSIGN(Session stored, store->GetSession("ses_a"));
  EXPECT_EQ(stored.tier, SuspendTier::kHibernated);
  EXPECT_EQ(stored.state_since, hibernated.state_since);

  // The same tier again changes nothing of since when.
  Tick();
  ASSERT_OK_AND_ASSIGN(Session still,
                       store->ChangeState("ses_a", {.from = {SessionState::kSuspended},
                                                    .to = SessionState::kSuspended,
                                                    .tier = SuspendTier::kHibernated}));
  EXPECT_EQ(still.state_since, hibernated.state_since);

  Tick();
  ASSERT_OK_AND_ASSIGN(Session resumed,
                       store->ChangeState("ses_a", {.from = {SessionState::kSuspended},
                                                    .to = SessionState::kRunning}));
  EXPECT_EQ(resumed.state, SessionState::kRunning);
  EXPECT_EQ(resumed.tier, SuspendTier::kActive);
  EXPECT_GT(resumed.state_since, hibernated.state_since);

  // A change made at a time of the control plane's clock is since then.
  ASSERT_OK_AND_ASSIGN(Session at, store->ChangeState("ses_a", {.from = {SessionState::kRunning},
                                                                .to = SessionState::kSuspended,
                                                                .tier = SuspendTier::kPaused,
                                                                .at = 77'000}));
  EXPECT_EQ(at.state_since, 77'000);
  ASSERT_OK_AND_ASSIGN(Session back,
                       store->ChangeState("ses_a", {.from = {SessionState::kSuspended},
                                                    .to = SessionState::kRunning}));
  EXPECT_GT(back.state_since, 77'000);

  ASSERT_OK_AND_ASSIGN(auto events, store->ListEvents("ses_a", 1, 100));
  ASSERT_EQ(events.size(), 8u);
  EXPECT_EQ(events[2].data, Json({{"from", "running"}, {"to", "suspended"}, {"tier", "paused"}}));
  EXPECT_EQ(events[3].type, "session.state");
  EXPECT_EQ(events[3].data,
            Json({{"from", "suspended"}, {"to", "suspended"}, {"tier", "hibernated"}}));
  EXPECT_EQ(events[5].data, Json({{"from", "suspended"}, {"to", "running"}}));
}

TEST_P(StoreConformanceTest, AnEndedSessionIsActiveSinceItEnded) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a", 1000), UserMessage("t")));
  ASSERT_OK(store->ChangeState("ses_a", {.from = {SessionState::kStarting},
                                         .to = SessionState::kSuspended,
                                         .tier = SuspendTier::kPaused}));
  Tick();
  // A tier given for any other target state is not stored.
  ASSERT_OK_AND_ASSIGN(Session ended,
                       store->ChangeState("ses_a", {.from = {SessionState::kSuspended},
                                                    .to = SessionState::kKilled,
                                                    .tier = SuspendTier::kPaused}));
  EXPECT_EQ(ended.tier, SuspendTier::kActive);
  ASSERT_TRUE(ended.ended_at.has_value());
  EXPECT_EQ(ended.state_since, *ended.ended_at);
  ASSERT_OK_AND_ASSIGN(auto events, store->ListEvents("ses_a", 2, 100));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].data, Json({{"from", "suspended"}, {"to", "killed"}}));
}

TEST_P(StoreConformanceTest, ARestartedSandboxLeavesAHibernatedSessionRunningAndActive) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(NodeSession("ses_a", "n1"), UserMessage("t")));
  ASSERT_OK(store->ChangeState("ses_a",
                               {.from = {SessionState::kStarting}, .to = SessionState::kRunning}));
  ASSERT_OK_AND_ASSIGN(Session hibernated,
                       store->ChangeState("ses_a", {.from = {SessionState::kRunning},
                                                    .to = SessionState::kSuspended,
                                                    .tier = SuspendTier::kHibernated}));
  Tick();
  ASSERT_OK_AND_ASSIGN(Session restarted,
                       store->RestartSandbox("ses_a", "n1", "hash-new", Json{{"reason", "x"}}));
  EXPECT_EQ(restarted.state, SessionState::kRunning);
  EXPECT_EQ(restarted.tier, SuspendTier::kActive);
  EXPECT_GT(restarted.state_since, hibernated.state_since);
  ASSERT_OK_AND_ASSIGN(Session stored, store->GetSession("ses_a"));
  EXPECT_EQ(stored.tier, SuspendTier::kActive);
  EXPECT_EQ(stored.state_since, restarted.state_since);
  ASSERT_OK_AND_ASSIGN(auto events, store->ListEvents("ses_a", 3, 100));
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].data, Json({{"from", "suspended"}, {"to", "running"}}));
  EXPECT_EQ(events[1].type, "session.sandbox_restart");

  // A restart of a running session changes neither state nor tier.
  Tick();
  ASSERT_OK_AND_ASSIGN(Session again,
                       store->RestartSandbox("ses_a", "n1", "hash-newer", Json{{"reason", "y"}}));
  EXPECT_EQ(again.tier, SuspendTier::kActive);
  EXPECT_EQ(again.state_since, restarted.state_since);
}

TEST_P(StoreConformanceTest, AnIssuedTokenMakesAStartingSessionRunningSinceThen) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  Session in = TokenlessSession("ses_1", "a");
  in.created_at = 1000;
  ASSERT_OK(store->CreateSession(in, UserMessage("t")));
  ASSERT_OK_AND_ASSIGN(Session issued, store->IssueToken("ses_1", "a", "hash-1"));
  EXPECT_EQ(issued.state, SessionState::kRunning);
  EXPECT_EQ(issued.tier, SuspendTier::kActive);
  EXPECT_GT(issued.state_since, 1000);
  EXPECT_EQ(issued.state_since, issued.updated_at);
}

// A database from before idle tiers: a suspended session was paused, since its last update.
TEST_P(StoreConformanceTest, ASuspendedSessionFromBeforeTiersReadsAsPausedSinceItsLastUpdate) {
  {
    auto store = Open();
    ASSERT_NE(store, nullptr);
    ASSERT_OK(store->CreateSession(MakeSession("ses_s", 1000), UserMessage("t")));
    ASSERT_OK(store->ChangeState("ses_s", {.from = {SessionState::kStarting},
                                           .to = SessionState::kSuspended,
                                           .tier = SuspendTier::kHibernated}));
    ASSERT_OK(store->CreateSession(MakeSession("ses_r", 1000), UserMessage("t")));
    ASSERT_OK(store->ChangeState(
        "ses_r", {.from = {SessionState::kStarting}, .to = SessionState::kRunning}));
  }
  const std::string latest = RawQuery("SELECT MAX(version) FROM schema_migrations");
  const std::string tiers = postgres() ? "3" : "5";  // each store's idle-tier step
  // The database as it was then: the steps from the tiers' on undone (the steps after it add
  // messages.superseded_at, sessions.env and sessions.egress).
  ASSERT_EQ(latest, std::to_string(std::stoi(tiers) + 3));
  RawQuery("DELETE FROM schema_migrations WHERE version >= " + tiers);
  RawQuery("ALTER TABLE sessions DROP COLUMN egress");
  RawQuery("ALTER TABLE sessions DROP COLUMN env");
  RawQuery("ALTER TABLE messages DROP COLUMN superseded_at");
  RawQuery("ALTER TABLE sessions DROP COLUMN tier");
  RawQuery("ALTER TABLE sessions DROP COLUMN state_since");
  RawQuery("UPDATE sessions SET updated_at = 5000 WHERE id = 'ses_s'");
  RawQuery("UPDATE sessions SET updated_at = 6000 WHERE id = 'ses_r'");

  auto store = Open();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(RawQuery("SELECT MAX(version) FROM schema_migrations"), latest);
  ASSERT_OK_AND_ASSIGN(Session suspended, store->GetSession("ses_s"));
  EXPECT_EQ(suspended.state, SessionState::kSuspended);
  EXPECT_EQ(suspended.tier, SuspendTier::kPaused);
  EXPECT_EQ(suspended.state_since, 5000);
  ASSERT_OK_AND_ASSIGN(Session running, store->GetSession("ses_r"));
  EXPECT_EQ(running.tier, SuspendTier::kActive);
  EXPECT_EQ(running.state_since, 6000);
}

TEST_P(StoreConformanceTest, AnUnknownTierIsAnInternalError) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_OK(store->CreateSession(MakeSession("ses_a", 1000), UserMessage("t")));
  RawQuery("UPDATE sessions SET tier = 'frozen' WHERE id = 'ses_a'");
  auto s = store->GetSession("ses_a");
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code, ErrorCode::kInternal);
  EXPECT_THAT(s.error().message, HasSubstr("frozen"));
}

}  // namespace
}  // namespace airlock::store
