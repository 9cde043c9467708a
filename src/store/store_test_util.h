#pragma once

// What the store tests share: assertions on Result, a SQLite store in a temporary directory,
// sample sessions and messages, and a raw look at a SQLite file apart from the Store.

#include <sqlite3.h>
#include <stdlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "store/sqlite_store.h"
#include "store/store.h"

#define ASSERT_OK(expr)                                                \
  do {                                                                 \
    auto airlock_r_ = (expr);                                          \
    ASSERT_TRUE(airlock_r_.has_value()) << airlock_r_.error().message; \
  } while (0)

#define ASSERT_OK_AND_ASSIGN(lhs, expr) \
  ASSERT_OK_AND_ASSIGN_IMPL(AIRLOCK_CONCAT(airlock_r_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_IMPL(tmp, lhs, expr)      \
  auto tmp = (expr);                                   \
  ASSERT_TRUE(tmp.has_value()) << tmp.error().message; \
  lhs = std::move(*tmp)

namespace airlock::store {

// A SQLite store in a directory of its own under the temporary directory, removed with it.
class TempSqliteStore {
 public:
  // `name` makes the directory's name: airlock-<name>-XXXXXX.
  explicit TempSqliteStore(const std::string& name) {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / ("airlock-" + name + "-XXXXXX")).string();
    if (::mkdtemp(tmpl.data()) == nullptr) {
      ADD_FAILURE() << "mkdtemp: " << std::strerror(errno);
      return;
    }
    dir_ = tmpl;
    StoreOptions o;
    o.path = dir_ + "/airlock.db";
    auto opened = OpenSqliteStore(o);
    if (!opened) {
      ADD_FAILURE() << opened.error().message;
      return;
    }
    store_ = std::move(*opened);
  }
  ~TempSqliteStore() {
    store_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  TempSqliteStore(const TempSqliteStore&) = delete;
  TempSqliteStore& operator=(const TempSqliteStore&) = delete;

  Store* get() const { return store_.get(); }  // null when it could not be opened
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::unique_ptr<Store> store_;
};

// Runs one SQL statement on a separate raw connection and returns the first column of the first
// row as text ("" when there is no row). Lets tests look at the file independently of the Store.
inline std::string SqliteRawQuery(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  std::string out;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) == SQLITE_OK) {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW && sqlite3_column_text(stmt, 0) != nullptr) {
      out = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    }
    sqlite3_finalize(stmt);
  }
  sqlite3_close(db);
  return out;
}

inline Session MakeSession(const std::string& id, int64_t created_at = 0,
                           const std::string& token_hash = "") {
  Session s;
  s.id = id;
  s.image = "python:3.12";
  s.backend = "oci";
  s.model = "fast";
  s.command = Json::array({"python", "agent.py"});
  s.limits = {{"max_cost_usd", 1.5}};
  s.metadata = {{"team", "infra"}};
  s.token_hash = token_hash.empty() ? "hash-" + id : token_hash;
  s.created_at = created_at;
  return s;
}

inline Json UserMessage(const std::string& text) { return {{"role", "user"}, {"content", text}}; }

inline std::vector<int64_t> Seqs(const std::vector<Event>& events) {
  std::vector<int64_t> out;
  for (const Event& e : events) {
    out.push_back(e.seq);
  }
  return out;
}

inline std::vector<std::string> Ids(const std::vector<Session>& sessions) {
  std::vector<std::string> out;
  for (const Session& s : sessions) {
    out.push_back(s.id);
  }
  return out;
}

inline std::vector<std::string> Contents(const std::vector<Message>& messages) {
  std::vector<std::string> out;
  for (const Message& m : messages) {
    out.push_back(m.body.value("content", ""));
  }
  return out;
}

// What concurrent appends to one new session must give: each thread saw its seqs rising, and
// together they hold 2..appends+1 once each (seq 1 is the session.created event).
inline void ExpectGaplessAppends(const std::vector<std::vector<int64_t>>& per_thread,
                                 size_t appends) {
  std::vector<int64_t> all;
  for (const auto& v : per_thread) {
    EXPECT_TRUE(std::is_sorted(v.begin(), v.end()));
    all.insert(all.end(), v.begin(), v.end());
  }
  std::sort(all.begin(), all.end());
  std::vector<int64_t> expected(appends);
  for (size_t i = 0; i < expected.size(); ++i) {
    expected[i] = static_cast<int64_t>(i) + 2;
  }
  EXPECT_EQ(all, expected);
}

}  // namespace airlock::store
