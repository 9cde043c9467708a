// Finding 4 of the 2026-12 review, as attacks over real sockets against the real server: a
// sandbox that floods events is held to a rate and to its session's quota (and cannot grow the
// database past it), while other sessions carry on; and ended sessions' contents go when the
// retention policy (or `airlock gc`) says so, live and recent sessions untouched.
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/time_util.h"
#include "tests/integration/harness.h"

namespace airlock::testing {
namespace {

using http::verb;
namespace fs = std::filesystem;

std::string Event(const std::string& type, size_t pad = 0) {
  return DumpJson(Json{{"type", type}, {"data", {{"pad", std::string(pad, 'x')}}}});
}

// Bytes of the database with its WAL: what the host's disk pays for.
int64_t DatabaseBytes(const std::string& home) {
  int64_t total = 0;
  for (const char* suffix : {"", "-wal", "-shm"}) {
    std::error_code ec;
    auto size = fs::file_size(home + "/airlock.db" + suffix, ec);
    if (!ec) total += static_cast<int64_t>(size);
  }
  return total;
}

// Runs one statement on the server's database through a connection of the test's own (the
// only way to make a session look as if it ended weeks ago).
void RawExec(const std::string& home, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((home + "/airlock.db").c_str(), &db), SQLITE_OK);
  sqlite3_busy_timeout(db, 10000);
  char* err = nullptr;
  EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "");
  sqlite3_free(err);
  sqlite3_close(db);
}

Json Events(TestServer& s, const std::string& id) {
  auto r = s.Op(verb::get, "/v1/sessions/" + id + "/events?limit=10000", "",
                {{"Accept", "application/json"}});
  EXPECT_EQ(r.status, 200u) << r.body;
  return r.json();
}

int CountType(const Json& events, const std::string& type) {
  int n = 0;
  for (const auto& e : events) n += e.value("type", "") == type ? 1 : 0;
  return n;
}

TEST(EventFloodTest, PastTheRateASandboxGets429WithRetryAfterAndOthersAreServed) {
  TestServer server([](controlplane::Config& c) {
    c.events.rate_per_s = 0.01;  // one token per 100 s: nothing refills during the test
    c.events.burst = 5;
  });
  auto [a, a_token] = server.NewSession();
  auto [b, b_token] = server.NewSession();
  for (int i = 0; i < 5; ++i) {
    auto r = server.Sb(verb::post, "/sandbox/v1/events", a_token, Event("flood"));
    ASSERT_EQ(r.status, 202u) << i << r.body;
  }
  for (int i = 0; i < 20; ++i) {
    auto r = server.Sb(verb::post, "/sandbox/v1/events", a_token, Event("flood"));
    ASSERT_EQ(r.status, 429u) << r.body;
    EXPECT_EQ(r.error_code(), "rate_limited");
    ASSERT_TRUE(r.headers.count("Retry-After"));
    EXPECT_GE(std::stoi(r.headers["Retry-After"]), 1);
  }
  EXPECT_EQ(CountType(Events(server, a), "flood"), 5);
  auto other = server.Sb(verb::post, "/sandbox/v1/events", b_token, Event("fine"));
  EXPECT_EQ(other.status, 202u) << other.body;
  EXPECT_TRUE(WaitForMetric(server, "airlock_event_refusals_total{reason=\"rate\"} 20"));
}

TEST(EventFloodTest, PastTheQuotaA64KiBFloodGets413OneNoticeAndTheDatabaseStaysBounded) {
  TestServer server([](controlplane::Config& c) {
    c.events.rate_per_s = 1e6;  // the quota is under test here, not the rate
    c.events.burst = 1'000'000;
    c.events.max_mb_per_session = 1;
  });
  auto [a, a_token] = server.NewSession();
  auto [b, b_token] = server.NewSession();
  const int64_t before = DatabaseBytes(server.home());
  int accepted = 0, refused = 0;
  // 1000 events of 60 KiB: 60 MiB without a quota.
  for (int i = 0; i < 1000; ++i) {
    auto r = server.Sb(verb::post, "/sandbox/v1/events", a_token, Event("flood", 60 << 10));
    if (r.status == 202) {
      ++accepted;
      ASSERT_EQ(refused, 0) << "accepted after a refusal";
    } else {
      ASSERT_EQ(r.status, 413u) << r.body;
      ASSERT_EQ(r.error_code(), "quota_exceeded") << r.body;
      ++refused;
    }
  }
  Json events = Events(server, a);
  // Exactly as many as fit: the session's events take at most 1 MiB, and one more would not fit.
  int64_t stored = 0;
  for (const auto& e : events) {
    if (e["type"] != "session.quota_exceeded")
      stored += std::string(e["type"]).size() + DumpJson(e["data"]).size();
  }
  const int64_t one = static_cast<int64_t>(
      std::string("flood").size() + DumpJson(Json{{"pad", std::string(60 << 10, 'x')}}).size());
  EXPECT_LE(stored, 1 << 20);
  EXPECT_GT(stored + one, 1 << 20);
  EXPECT_GT(accepted, 10);
  EXPECT_EQ(CountType(events, "session.quota_exceeded"), 1);
  for (const auto& e : events) {
    if (e["type"] == "session.quota_exceeded") {
      EXPECT_EQ(e["data"]["quota"], "bytes");
      EXPECT_EQ(e["data"]["limit"], 1 << 20);
    }
  }
  // Another session is not affected.
  auto other = server.Sb(verb::post, "/sandbox/v1/events", b_token, Event("fine", 60 << 10));
  EXPECT_EQ(other.status, 202u) << other.body;
  // About 1 MiB of events (and its WAL); without the quota this is 60 MiB.
  EXPECT_LT(DatabaseBytes(server.home()) - before, 16 << 20);
  EXPECT_TRUE(WaitForMetric(
      server, "airlock_event_refusals_total{reason=\"quota\"} " + std::to_string(refused)));
}

TEST(EventFloodTest, EventCountQuotaIsExactUnderConcurrentPosts) {
  TestServer server([](controlplane::Config& c) {
    c.events.rate_per_s = 1e6;
    c.events.burst = 1'000'000;
    c.events.max_per_session = 50;
  });
  auto [a, a_token] = server.NewSession();
  const int before = static_cast<int>(Events(server, a).size());  // session.created, session.state
  std::atomic<int> accepted = 0, refused = 0, other = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, token = a_token] {
      for (int i = 0; i < 25; ++i) {
        auto r = server.Sb(verb::post, "/sandbox/v1/events", token, Event("flood"));
        (r.status == 202 ? accepted : r.status == 413 ? refused : other)++;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(other, 0);
  EXPECT_EQ(accepted, 50 - before);
  EXPECT_EQ(refused, 200 - (50 - before));
  Json events = Events(server, a);
  EXPECT_EQ(events.size(), 51u);  // the 50 and the one notice
  EXPECT_EQ(CountType(events, "session.quota_exceeded"), 1);
  // What the session causes through other routes counts too: no URL without its event, and
  // a refused LLM call is answered but not recorded.
  auto presign = server.Sb(verb::post, "/sandbox/v1/files/presign", a_token,
                           DumpJson(Json{{"name", "x.txt"}, {"method", "GET"}}));
  EXPECT_EQ(presign.status, 413u) << presign.body;
  EXPECT_EQ(presign.error_code(), "quota_exceeded");
  EXPECT_EQ(Events(server, a).size(), 51u);
}

// ---------------------------------------------------------------- retention

class RetentionTest : public ::testing::Test {
 protected:
  struct Sess {
    std::string id, token;
  };

  // A session with events, a conversation, an uploaded file, a sandbox log and its dirs.
  Sess Populate(TestServer& server, const std::string& tag) {
    auto [id, token] = server.NewSession("task of " + tag);
    for (int i = 0; i < 10; ++i) {
      EXPECT_EQ(server.Sb(verb::post, "/sandbox/v1/events", token, Event("work", 1000)).status,
                202u);
    }
    auto presign = server.Sb(verb::post, "/sandbox/v1/files/presign", token,
                             DumpJson(Json{{"name", "out.txt"}, {"method", "PUT"}, {"size", 5}}));
    EXPECT_EQ(presign.status, 200u) << presign.body;
    std::string url = presign.json()["url"];
    auto put = HttpCall(server.sb_port(), verb::put, url.substr(url.find("/sandbox/v1/files/")), "",
                        "hello");
    EXPECT_EQ(put.status, 201u) << put.body;
    // The test backend writes no log; the OCI backend keeps it here.
    std::ofstream(server.home() + "/sessions/" + id + "/sandbox.log") << "the agent's output\n";
    return {id, token};
  }

  void End(TestServer& server, const Sess& s) {
    ASSERT_EQ(server.Op(verb::delete_, "/v1/sessions/" + s.id).status, 200u);
  }

  // Makes `s` look as if it ended `days` ago.
  void Age(TestServer& server, const Sess& s, int days) {
    RawExec(server.home(), fmt::format("UPDATE sessions SET ended_at = {} WHERE id = '{}'",
                                       NowMillis() - int64_t{days} * 86400 * 1000, s.id));
  }

  bool Intact(TestServer& server, const Sess& s) {
    Json events = Events(server, s.id);
    auto msgs = server.Op(verb::get, "/v1/sessions/" + s.id + "/messages").json();
    auto files = server.Op(verb::get, "/v1/sessions/" + s.id + "/files").json();
    return CountType(events, "work") == 10 &&
           msgs["messages"].size() + msgs["pending"].size() > 0 && files["files"].size() == 1 &&
           fs::exists(server.home() + "/files/" + s.id + "/out.txt") &&
           fs::exists(server.home() + "/sessions/" + s.id + "/sandbox.log") &&
           fs::exists(server.home() + "/run/" + s.id);
  }

  bool Gone(TestServer& server, const Sess& s) {
    auto msgs = server.Op(verb::get, "/v1/sessions/" + s.id + "/messages").json();
    auto files = server.Op(verb::get, "/v1/sessions/" + s.id + "/files").json();
    return Events(server, s.id).empty() && msgs["messages"].empty() && msgs["pending"].empty() &&
           files["files"].empty() && !fs::exists(server.home() + "/files/" + s.id) &&
           !fs::exists(server.home() + "/sessions/" + s.id) &&
           !fs::exists(server.home() + "/run/" + s.id);
  }
};

// Runs the real CLI against the server; returns {exit code, stdout+stderr}.
std::pair<int, std::string> RunCli(TestServer& server, const std::string& args) {
  std::string cmd = fmt::format("AIRLOCK_OPERATOR_KEY={} {} gc --url http://127.0.0.1:{} {} 2>&1",
                                server.key(), AIRLOCK_BIN, server.op_port(), args);
  FILE* p = ::popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof(buf), p)) out.append(buf, n);
  int status = ::pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

TEST_F(RetentionTest, GcDeletesOnlyWhatEndedLongAgoAndDryRunDeletesNothing) {
  TestServer server;
  Sess old_s = Populate(server, "old");
  Sess recent = Populate(server, "recent");
  Sess live = Populate(server, "live");
  End(server, old_s);
  End(server, recent);
  Age(server, old_s, 40);
  Age(server, recent, 2);
  ASSERT_TRUE(Intact(server, old_s));
  const std::string expect =
      fmt::format("contents of 1 ended session(s): {} events", Events(server, old_s.id).size());

  // No policy configured and no age given: refused, nothing deleted.
  auto none = server.Op(verb::post, "/v1/admin/gc", "{}");
  EXPECT_EQ(none.status, 400u) << none.body;
  auto unauth =
      HttpCall(server.op_port(), verb::post, "/v1/admin/gc", "", R"({"older_than":"1s"})");
  EXPECT_EQ(unauth.status, 401u);

  auto [dry_code, dry_out] = RunCli(server, "--dry-run --older-than 30d");
  EXPECT_EQ(dry_code, 0) << dry_out;
  EXPECT_NE(dry_out.find("would delete the " + expect), std::string::npos) << dry_out;
  auto dry = server.Op(verb::post, "/v1/admin/gc", R"({"older_than":"30d","dry_run":true})");
  ASSERT_EQ(dry.status, 200u) << dry.body;
  EXPECT_EQ(dry.json()["sessions"], 1);
  EXPECT_EQ(dry.json()["files"], 1);
  EXPECT_EQ(dry.json()["file_bytes"], 5);
  EXPECT_EQ(dry.json()["session_ids"], Json::array({old_s.id}));
  EXPECT_TRUE(Intact(server, old_s)) << "a dry run deleted something";

  auto [code, out] = RunCli(server, "--older-than 30d");
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("deleted the " + expect), std::string::npos) << out;
  EXPECT_TRUE(Gone(server, old_s));
  EXPECT_TRUE(Intact(server, recent));
  EXPECT_TRUE(Intact(server, live));
  // The session's record stays: its state, result and usage.
  auto rec = server.Op(verb::get, "/v1/sessions/" + old_s.id);
  EXPECT_EQ(rec.status, 200u);
  EXPECT_EQ(rec.json()["state"], "killed");
  // A second pass finds nothing more.
  auto again = server.Op(verb::post, "/v1/admin/gc", R"({"older_than":"30d"})");
  EXPECT_EQ(again.json()["sessions"], 0);
  // Live sessions are never purged, whatever the age.
  auto all = server.Op(verb::post, "/v1/admin/gc", R"({"older_than":"0"})");
  EXPECT_EQ(all.json()["sessions"], 1);  // the recent one, ended
  EXPECT_TRUE(Gone(server, recent));
  EXPECT_TRUE(Intact(server, live));
}

TEST_F(RetentionTest, TheConfiguredPolicyIsAppliedWithoutAnOperator) {
  TestServer server([](controlplane::Config& c) {
    c.retention.ended_sessions_after_s = 30 * 86400;
    c.retention.interval_s = 1;
  });
  Sess old_s = Populate(server, "old");
  Sess recent = Populate(server, "recent");
  End(server, old_s);
  End(server, recent);
  Age(server, old_s, 31);
  // An eventual condition: the next pass (every second) deletes it.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!Gone(server, old_s) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_TRUE(Gone(server, old_s));
  EXPECT_TRUE(Intact(server, recent));
  // With a policy configured, `airlock gc` needs no age.
  auto dry = server.Op(verb::post, "/v1/admin/gc", R"({"dry_run":true})");
  EXPECT_EQ(dry.status, 200u) << dry.body;
  EXPECT_EQ(dry.json()["older_than_s"], 30 * 86400);
}

}  // namespace
}  // namespace airlock::testing
