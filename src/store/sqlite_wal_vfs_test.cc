#include "store/sqlite_wal_vfs.h"

#include <sched.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include <gtest/gtest.h>

// The VFS that gathers a commit's WAL frames into one write (sqlite_wal_vfs.h), through
// SQLite's own API: what other connections see, what survives a writer killed mid-commit, and
// a full disk.

namespace airlock::store {
namespace {

class Db {
 public:
  explicit Db(const std::string& path) {
    auto vfs = WalBatchingVfs();
    if (!vfs) {
      ADD_FAILURE() << vfs.error().message;
      return;
    }
    rc_ = sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, *vfs);
    if (rc_ == SQLITE_OK) rc_ = Exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL");
    if (rc_ == SQLITE_OK) sqlite3_busy_timeout(db_, 5000);
  }
  ~Db() { sqlite3_close_v2(db_); }
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;
  bool ok() const { return rc_ == SQLITE_OK; }
  int Exec(const std::string& sql) {
    return sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, nullptr);
  }
  // The first column of the first row, as text ("" when none, "error: ..." on an error).
  std::string One(const std::string& sql) {
    sqlite3_stmt* stmt = nullptr;
    std::string out;
    int rc = sqlite3_prepare_v2(db_, sql.c_str(), -1, &stmt, nullptr);
    if (rc == SQLITE_OK) rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW && sqlite3_column_text(stmt, 0)) {
      out = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    } else if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
      out = std::string("error: ") + sqlite3_errmsg(db_);
    }
    sqlite3_finalize(stmt);
    return out;
  }
  const char* error() { return sqlite3_errmsg(db_); }

 private:
  sqlite3* db_ = nullptr;
  int rc_ = SQLITE_ERROR;
};

class WalVfsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "airlock-walvfs-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr) << std::strerror(errno);
    dir_ = tmpl;
    // Whether the VFS gathers frames here (ext2/3/4, XFS, tmpfs); elsewhere it writes them one
    // by one, and the tests below check plain SQLite (the tmpfs ones gather wherever they run).
    struct statfs fs {};
    gathers_ = ::statfs(dir_.c_str(), &fs) == 0 &&
               (fs.f_type == 0xEF53 || fs.f_type == 0x58465342 || fs.f_type == 0x01021994);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  // Runs `body` in a child with a mount namespace of its own and a tmpfs of `size` over dir_,
  // and expects it to return 0: 10-12 mean the set-up failed, other codes are the body's.
  void ExpectZeroOnSmallTmpfs(const char* size, const std::function<int()>& body) {
    pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      if (::unshare(CLONE_NEWNS) != 0) ::_exit(10);
      if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) ::_exit(11);
      const std::string options = std::string("size=") + size;
      if (::mount("tmpfs", dir_.c_str(), "tmpfs", 0, options.c_str()) != 0) ::_exit(12);
      ::_exit(body());
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status)
                                   << " (an abort is the VFS failing to write frames it gathered)";
    EXPECT_EQ(WEXITSTATUS(status), 0) << "see the exit codes in the test";
  }

  std::string dir_;
  bool gathers_ = false;
};

// Each commit is seen by another connection as soon as it returns, the WAL's pages included:
// the frames gathered in memory are in the file before the commit is published.
TEST_F(WalVfsTest, AnotherConnectionSeesEachCommitAtOnce) {
  Db writer(dir_ + "/a.db");
  ASSERT_TRUE(writer.ok()) << writer.error();
  ASSERT_EQ(writer.Exec("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)"), SQLITE_OK);
  Db reader(dir_ + "/a.db");
  ASSERT_TRUE(reader.ok()) << reader.error();
  for (int i = 1; i <= 300; ++i) {
    // Several pages a commit: a row of 3 KB each time, in a growing table.
    ASSERT_EQ(writer.Exec("BEGIN; INSERT INTO t (v) VALUES (printf('%.3000c', 'x')); "
                          "INSERT INTO t (v) VALUES ('" +
                          std::to_string(i) + "'); COMMIT"),
              SQLITE_OK)
        << writer.error();
    ASSERT_EQ(reader.One("SELECT count(*) FROM t"), std::to_string(2 * i));
    ASSERT_EQ(reader.One("SELECT v FROM t ORDER BY k DESC LIMIT 1"), std::to_string(i));
  }
  EXPECT_EQ(reader.One("PRAGMA integrity_check"), "ok");
}

// The same with the reader on another thread, looking while the writer commits: a reader
// that sees a commit's header reads that commit's pages, never what the WAL held before them.
TEST_F(WalVfsTest, AReaderOnAnotherThreadNeverSeesACommitBeforeItsPages) {
  Db writer(dir_ + "/e.db");
  ASSERT_TRUE(writer.ok()) << writer.error();
  ASSERT_EQ(writer.Exec("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)"), SQLITE_OK);
  std::atomic<bool> done = false, failed = false;
  std::atomic<int> looks = 0;
  std::mutex wrong_mu;
  std::string wrong;  // the readers', read after they end
  auto read = [&] {
    Db db(dir_ + "/e.db");
    while (!done && !failed) {
      // One read transaction: the newest row's value must be its own.
      std::string got = db.One("SELECT k || ':' || v FROM t WHERE k = (SELECT max(k) FROM t)");
      ++looks;
      if (got.empty()) continue;
      auto colon = got.find(':');
      if (colon == std::string::npos || got.substr(colon + 1) != "v" + got.substr(0, colon)) {
        std::lock_guard l(wrong_mu);
        wrong = got;
        failed = true;
      }
    }
  };
  // Two readers: the window between a commit's header and the end of its transaction is a
  // few microseconds, and each look that begins in it is a chance to catch a missing flush.
  std::thread reader1(read), reader2(read);
  // Each commit is small and the WAL starts over every 50: the frames a header names sit
  // where older frames were.
  for (int i = 1; i <= 15000 && !failed; ++i) {
    ASSERT_EQ(writer.Exec("INSERT INTO t VALUES (" + std::to_string(i) + ", 'v" +
                          std::to_string(i) + "')"),
              SQLITE_OK)
        << writer.error();
    if (i % 50 == 0) writer.Exec("PRAGMA wal_checkpoint(RESTART)");
  }
  done = true;
  reader1.join();
  reader2.join();
  EXPECT_EQ(wrong, "") << "after " << looks << " looks";
  EXPECT_GT(looks.load(), 0);
}

// A transaction larger than the page cache writes frames before its commit and may write the
// same page's frame again; the writer reads them back meanwhile. All of it lands in order.
TEST_F(WalVfsTest, TransactionsThatSpillAndRewritePagesStayWhole) {
  Db writer(dir_ + "/b.db");
  ASSERT_TRUE(writer.ok()) << writer.error();
  ASSERT_EQ(writer.Exec("PRAGMA cache_size = 8; CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)"),
            SQLITE_OK);
  ASSERT_EQ(writer.Exec("BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                        "WHERE i < 3000) INSERT INTO t SELECT i, printf('%.900c', 'a') FROM n; "
                        "UPDATE t SET v = printf('%.900c', 'b') WHERE k % 3 = 0; "
                        "DELETE FROM t WHERE k % 7 = 0; COMMIT"),
            SQLITE_OK)
      << writer.error();
  ASSERT_EQ(writer.Exec("BEGIN; UPDATE t SET v = 'c' WHERE k % 5 = 0; ROLLBACK"), SQLITE_OK);
  Db reader(dir_ + "/b.db");
  ASSERT_TRUE(reader.ok()) << reader.error();
  EXPECT_EQ(reader.One("SELECT count(*) FROM t"), std::to_string(3000 - 3000 / 7));
  EXPECT_EQ(reader.One("SELECT count(*) FROM t WHERE substr(v, 1, 1) = 'b'"),
            std::to_string(1000 - 1000 / 7));
  EXPECT_EQ(reader.One("SELECT count(*) FROM t WHERE v = 'c'"), "0");
  EXPECT_EQ(reader.One("PRAGMA integrity_check"), "ok");
  // And after a checkpoint that starts the WAL over, the next commits go in from its start.
  ASSERT_EQ(writer.Exec("PRAGMA wal_checkpoint(RESTART)"), SQLITE_OK) << writer.error();
  ASSERT_EQ(writer.Exec("INSERT INTO t VALUES (100000, 'after')"), SQLITE_OK);
  EXPECT_EQ(reader.One("SELECT v FROM t WHERE k = 100000"), "after");
  EXPECT_EQ(reader.One("PRAGMA integrity_check"), "ok");
}

// A writer killed while it commits loses nothing it was told was committed, and leaves a
// database that opens whole.
TEST_F(WalVfsTest, AKilledWriterLosesNoCommittedTransaction) {
  const std::string path = dir_ + "/c.db";
  {
    Db setup(path);
    ASSERT_TRUE(setup.ok()) << setup.error();
    ASSERT_EQ(setup.Exec("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)"), SQLITE_OK);
  }
  int acks[2];
  ASSERT_EQ(::pipe(acks), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(acks[0]);
    Db db(path);
    for (int i = 1; db.ok(); ++i) {
      std::string sql =
          "BEGIN; INSERT INTO t VALUES (" + std::to_string(i) + ", printf('%.5000c', 'z')); COMMIT";
      if (db.Exec(sql) != SQLITE_OK) ::_exit(3);
      if (::write(acks[1], &i, sizeof i) != sizeof i) ::_exit(4);
    }
    ::_exit(2);
  }
  ::close(acks[1]);
  int last = 0;
  for (int got; last < 400 && ::read(acks[0], &got, sizeof got) == sizeof got;) last = got;
  ::kill(child, SIGKILL);
  // What was acknowledged before the kill landed.
  for (int got; ::read(acks[0], &got, sizeof got) == sizeof got;) last = got;
  int status = 0;
  ::waitpid(child, &status, 0);
  ::close(acks[0]);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the writer stopped by itself: " << status;
  ASSERT_GE(last, 400);
  Db after(path);
  ASSERT_TRUE(after.ok()) << after.error();
  EXPECT_EQ(after.One("PRAGMA integrity_check"), "ok");
  const int kept = std::stoi(after.One("SELECT count(*) FROM t"));
  EXPECT_GE(kept, last);
  EXPECT_LE(kept, last + 1);  // the one being committed may or may not have made it
  EXPECT_EQ(after.One("SELECT max(k) FROM t"), std::to_string(kept));
}

// On a full disk, the commit that does not fit fails as SQLite alone fails it (SQLITE_FULL),
// the process goes on, and every earlier commit is there. In a child with a mount namespace of
// its own, on a 1 MiB tmpfs; root only.
TEST_F(WalVfsTest, AFullDiskFailsTheCommitAndKeepsTheRest) {
  if (::geteuid() != 0) GTEST_SKIP() << "mounting a small tmpfs needs root";
  ExpectZeroOnSmallTmpfs("1m", [&] {
    // Exit codes: 0 as expected; 13 and up, a step that failed.
    const std::string path = dir_ + "/d.db";
    int committed = 0;
    int rc = SQLITE_OK;
    {
      Db db(path);
      if (!db.ok()) return 13;
      if (db.Exec("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)") != SQLITE_OK) return 14;
      for (int i = 1; i < 10000; ++i) {
        rc = db.Exec("BEGIN; INSERT INTO t VALUES (" + std::to_string(i) +
                     ", printf('%.3000c', 'f')); COMMIT");
        if (rc != SQLITE_OK) break;
        committed = i;
      }
      if ((rc & 0xff) != SQLITE_FULL) return 15;
      if (committed < 10) return 16;
      db.Exec("ROLLBACK");
      // The connection still reads everything committed.
      if (db.One("SELECT count(*) FROM t") != std::to_string(committed)) return 17;
    }
    Db again(path);
    if (!again.ok()) return 18;
    if (again.One("SELECT count(*) FROM t") != std::to_string(committed)) return 19;
    if (again.One("PRAGMA quick_check") != "ok") return 20;
    return 0;
  });
}

// What another process's checkpoint does to the WAL between two commits (truncate it, which
// gives its blocks back) does not leave this connection trusting space reserved before: on a
// disk filled meanwhile, the next commit fails cleanly instead of stopping the process at its
// publication. The other process is a connection through SQLite's own VFS, which this one
// does not see. In a child with an 8 MiB tmpfs of its own; root only.
TEST_F(WalVfsTest, SpaceReservedBeforeAnotherConnectionTruncatedTheWalIsNotTrusted) {
  if (::geteuid() != 0) GTEST_SKIP() << "mounting a small tmpfs needs root";
  ExpectZeroOnSmallTmpfs("8m", [&] {
    const std::string path = dir_ + "/f.db";
    Db writer(path);
    if (!writer.ok()) return 13;
    if (writer.Exec("PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (k INTEGER PRIMARY KEY, "
                    "v TEXT)") != SQLITE_OK)
      return 14;
    for (int i = 1; i <= 200; ++i) {  // ~0.8 MiB of WAL, and space reserved beyond it
      if (writer.Exec("INSERT INTO t VALUES (" + std::to_string(i) + ", printf('%.3000c', 'g'))") !=
          SQLITE_OK)
        return 15;
    }
    {
      sqlite3* other = nullptr;
      if (sqlite3_open_v2(path.c_str(), &other, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK)
        return 16;
      int rc = sqlite3_exec(other, "PRAGMA wal_checkpoint(TRUNCATE)", nullptr, nullptr, nullptr);
      sqlite3_close_v2(other);
      if (rc != SQLITE_OK) return 17;
    }
    // Fill the disk but for one block: the new WAL header, which SQLite syncs before any
    // frame, fits; the commit's frames do not.
    {
      const std::string filler_path = dir_ + "/filler";
      FILE* filler = std::fopen(filler_path.c_str(), "w");
      if (!filler) return 18;
      std::string block(4096, 'x');
      while (std::fwrite(block.data(), 1, block.size(), filler) == block.size() &&
             std::fflush(filler) == 0) {
      }
      std::fclose(filler);
      auto size = std::filesystem::file_size(filler_path);
      if (size < 4096 || ::truncate(filler_path.c_str(), static_cast<off_t>(size - 4096)) != 0)
        return 21;
    }
    int rc = writer.Exec("INSERT INTO t VALUES (1000, printf('%.3000c', 'h'))");
    if ((rc & 0xff) != SQLITE_FULL) return 19;
    if (writer.One("SELECT count(*) FROM t") != "200") return 20;
    return 0;
  });
}

// A gathered write that fails when published (here the file size limit, which fallocate does
// not check) stops the process before the commit is visible: nothing acknowledged is lost,
// the failed commit is not there, and the database opens whole.
TEST_F(WalVfsTest, AFrameWriteFailingAtPublicationStopsTheProcessAndLosesNothingAcknowledged) {
  if (!gathers_)
    GTEST_SKIP() << "the temporary directory's file system is one the VFS does not "
                    "gather on (frames are written one by one, and fail cleanly)";
  const std::string path = dir_ + "/g.db";
  {
    Db setup(path);
    ASSERT_TRUE(setup.ok()) << setup.error();
    ASSERT_EQ(setup.Exec("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)"), SQLITE_OK);
  }
  const auto wal_size = std::filesystem::exists(path + "-wal")
                            ? std::filesystem::file_size(path + "-wal")
                            : std::uintmax_t{0};
  int acks[2];
  ASSERT_EQ(::pipe(acks), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(acks[0]);
    Db db(path);
    if (!db.ok() || db.Exec("PRAGMA wal_autocheckpoint = 0") != SQLITE_OK) ::_exit(3);
    // Writes past 256 KiB beyond the WAL's size now fail with EFBIG.
    ::signal(SIGXFSZ, SIG_IGN);
    rlimit limit{static_cast<rlim_t>(wal_size + (256 << 10)),
                 static_cast<rlim_t>(wal_size + (256 << 10))};
    if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) ::_exit(4);
    for (int i = 1; i < 10000; ++i) {
      if (db.Exec("INSERT INTO t VALUES (" + std::to_string(i) + ", printf('%.3000c', 'i'))") !=
          SQLITE_OK)
        ::_exit(5);
      if (::write(acks[1], &i, sizeof i) != sizeof i) ::_exit(6);
    }
    ::_exit(7);
  }
  ::close(acks[1]);
  int last = 0;
  for (int got; ::read(acks[0], &got, sizeof got) == sizeof got;) last = got;
  ::close(acks[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT)
      << "the writer was expected to stop itself; status " << status;
  ASSERT_GT(last, 10);
  Db after(path);
  ASSERT_TRUE(after.ok()) << after.error();
  EXPECT_EQ(after.One("PRAGMA integrity_check"), "ok");
  EXPECT_EQ(after.One("SELECT count(*) FROM t"), std::to_string(last));
}

}  // namespace
}  // namespace airlock::store
