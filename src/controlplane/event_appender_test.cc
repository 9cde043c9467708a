#include "controlplane/event_appender.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <future>
#include <map>

#include "store/store_test_util.h"

namespace airlock::controlplane {
namespace {

class EventAppenderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(temp_.get(), nullptr);
    for (const char* id : {"ses_a", "ses_b", "ses_c"}) {
      store::Session s;
      s.id = id;
      s.image = "base";
      s.backend = "test";
      s.model = "default";
      s.token_hash = std::string("hash-") + id;
      ASSERT_TRUE(store_->CreateSession(s, Json{{"role", "user"}, {"content", "t"}}));
    }
  }
  store::TempSqliteStore temp_{"appender"};
  store::Store* store_ = temp_.get();
};

using Answer = std::optional<Result<store::QuotaAppend>>;

// A free function, not a lambda: g++ 12 miscompiles capturing coroutine lambdas.
awaitable<void> AppendOne(EventAppender* appender, std::string session, int i, Answer* out) {
  Json data = {{"i", i}};
  *out = co_await appender->Append(std::move(session), "tick", std::move(data));
}

// Requests that arrive together share store calls, and each still gets its own answer: its
// own event and seq, per session without gaps or repeats; one for a session that is not there
// fails alone.
// Both ways of sending calls: two at once (PostgreSQL), or each group made only once the call
// before it has committed (SQLite).
void AppendConcurrently(store::Store& store, bool one_commit_at_a_time) {
  asio::io_context io;
  asio::thread_pool pool(2);
  EventAppender appender(store, pool, store::EventQuota{}, /*max_batch=*/64, /*max_in_flight=*/2,
                         one_commit_at_a_time);
  constexpr int kAppends = 300;
  const std::vector<std::string> sessions = {"ses_a", "ses_b", "ses_c", "ses_nope"};
  std::vector<Answer> answers(kAppends);
  for (int i = 0; i < kAppends; ++i) {
    asio::co_spawn(io, AppendOne(&appender, sessions[i % sessions.size()], i, &answers[i]),
                   asio::detached);
  }
  io.run();
  pool.join();
  std::map<std::string, std::vector<int64_t>> seqs;
  for (int i = 0; i < kAppends; ++i) {
    ASSERT_TRUE(answers[i].has_value()) << i;
    const auto& a = *answers[i];
    if (sessions[i % sessions.size()] == "ses_nope") {
      ASSERT_FALSE(a.has_value()) << i;
      EXPECT_EQ(a.error().code, ErrorCode::kNotFound);
      continue;
    }
    ASSERT_TRUE(a.has_value()) << i << ": " << a.error().message;
    ASSERT_TRUE(a->event.has_value()) << i;
    EXPECT_EQ(a->event->data, Json({{"i", i}}));
    seqs[a->event->session_id].push_back(a->event->seq);
  }
  for (auto& [id, got] : seqs) {
    // session.created is 1; these are 2..76, each once. (Concurrent requests of one session
    // may be numbered in any order: two groups can be in flight.)
    ASSERT_EQ(got.size(), 75u) << id;
    std::sort(got.begin(), got.end());
    for (size_t k = 0; k < got.size(); ++k) EXPECT_EQ(got[k], static_cast<int64_t>(k) + 2) << id;
  }
  // All were queued before the first answer came back: they went in groups of at most 64
  // (a call makes its group when it reaches the pool, so the first two may hold one or many).
  EXPECT_GE(appender.calls(), (kAppends + 63u) / 64);
  EXPECT_LE(appender.calls(), 2u + (kAppends - 2 + 63) / 64 + 2);
  EXPECT_EQ(appender.queued(), 0u);
}

TEST_F(EventAppenderTest, ConcurrentAppendsShareStoreCallsAndEachGetsItsOwnAnswer) {
  AppendConcurrently(*store_, /*one_commit_at_a_time=*/false);
}

TEST_F(EventAppenderTest, OneCommitAtATimeStillAnswersEachAppendOnce) {
  AppendConcurrently(*store_, /*one_commit_at_a_time=*/true);
}

// One commit at a time (SQLite) runs on the appender's own thread: events are still answered
// while every thread of the shared pool is taken by something slow.
TEST_F(EventAppenderTest, OneCommitAtATimeDoesNotWaitForABusyPool) {
  asio::io_context io;
  asio::thread_pool pool(1);
  std::promise<void> release;
  asio::post(pool, [done = release.get_future().share()] { done.wait(); });
  EventAppender appender(*store_, pool, store::EventQuota{}, /*max_batch=*/8,
                         /*max_in_flight=*/2, /*one_commit_at_a_time=*/true);
  // However the test ends, the pool is let go and emptied before the appender goes.
  struct LetGo {
    std::promise<void>& release;
    asio::thread_pool& pool;
    ~LetGo() {
      release.set_value();
      pool.join();
    }
  } let_go{release, pool};
  std::vector<Answer> answers(20);
  for (int i = 0; i < 20; ++i) {
    asio::co_spawn(io, AppendOne(&appender, i % 2 ? "ses_a" : "ses_b", i, &answers[i]),
                   asio::detached);
  }
  // Bounded, so that a regression fails here instead of hanging: with the calls on the
  // blocked pool, nothing would be answered.
  io.run_for(std::chrono::seconds(30));
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(answers[i].has_value()) << i;
    ASSERT_TRUE(answers[i]->has_value()) << i << ": " << answers[i]->error().message;
  }
}

}  // namespace
}  // namespace airlock::controlplane
