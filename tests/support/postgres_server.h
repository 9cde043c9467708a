#pragma once

// A private PostgreSQL server for one test process: initdb into a temporary directory, then
// pg_ctl start on 127.0.0.1, a free port, with its Unix socket in that directory; each test
// asks for a database of its own (CreateDatabase), so tests are independent. Nothing of the
// machine's own clusters (Debian's on 5432) is used or touched.
//
// Authentication: the Unix socket trusts its local users (the harness's own set-up and
// queries use it); TCP connections, which the stores under test make, need the superuser's
// password (scram-sha-256), a random one per server: so every test also shows that the
// password reaches the server through PostgresOptions::password.
//
// PostgreSQL refuses to run as root: as root, the directory is given to the `postgres` user
// and initdb/pg_ctl run through `runuser -u postgres --`; otherwise they run as the current
// user. The binaries are looked up in AIRLOCK_POSTGRES_BIN, then /usr/lib/postgresql/*/bin
// (newest first). Without them `skip` says why (the test skips with it);
// AIRLOCK_REQUIRE_POSTGRES=1 turns that skip into a `failure`.
//
// Stopping: StopPostgres (pg_ctl stop -m fast, then the directory goes). If the test process
// dies before that (a crash, a timeout's SIGKILL), a reaper, started with the server in a
// session of its own, sees its end of a pipe close and stops the server and removes the
// directory itself.
//
// The server runs with fsync=off: the tests check transactions and what survives a crash of
// the client process, not of the machine, and fsync makes each commit cost a disk flush.

#include <arpa/inet.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace airlock::testing {

struct PostgresServer {
  std::string dir;      // temporary: data/, the socket, postgres.log, initdb.log
  std::string bin_dir;  // where initdb and pg_ctl are
  uint16_t port = 0;
  bool as_postgres_user = false;  // running as root: commands go through runuser
  bool running = false;
  pid_t reaper = -1;
  int reaper_fd = -1;    // the write end of the reaper's pipe
  int databases = 0;     // how many CreateDatabase made, for unique names
  std::string password;  // the superuser's, for TCP connections
  std::string skip;      // why it cannot run here
  std::string failure;   // why it did not start although it should have

  std::string data_dir() const { return dir + "/data"; }
  // The superuser over TCP; the password goes apart (PostgresOptions::password).
  std::string Url(const std::string& dbname) const {
    return "postgresql://postgres@127.0.0.1:" + std::to_string(port) + "/" + dbname;
  }
};

inline std::string PostgresReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The newest /usr/lib/postgresql/<version>/bin holding initdb and pg_ctl; "" when none.
inline std::string FindPostgresBinDir() {
  auto usable = [](const std::filesystem::path& dir) {
    return ::access((dir / "initdb").c_str(), X_OK) == 0 &&
           ::access((dir / "pg_ctl").c_str(), X_OK) == 0;
  };
  if (const char* env = std::getenv("AIRLOCK_POSTGRES_BIN"); env != nullptr && *env != '\0') {
    return usable(env) ? std::string(env) : std::string();
  }
  std::vector<std::pair<int, std::string>> found;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/usr/lib/postgresql", ec)) {
    const std::string version = entry.path().filename().string();
    if (version.empty() || version.find_first_not_of("0123456789") != std::string::npos) {
      continue;
    }
    if (usable(entry.path() / "bin")) {
      found.emplace_back(std::atoi(version.c_str()), (entry.path() / "bin").string());
    }
  }
  if (found.empty()) {
    return "";
  }
  return std::max_element(found.begin(), found.end())->second;
}

// Runs `program` (from the server's bin dir) with `args`, as the postgres user when running as
// root, its output into `log`. Returns its exit status (128 + signal, or 127 if it could not
// be run).
inline int RunPostgresTool(const PostgresServer& s, const std::string& program,
                           std::vector<std::string> args, const std::string& log) {
  std::vector<std::string> argv;
  if (s.as_postgres_user) {
    argv = {"/usr/sbin/runuser", "-u", "postgres", "--"};
    if (::access(argv[0].c_str(), X_OK) != 0) {
      argv[0] = "/sbin/runuser";
    }
  }
  argv.push_back(s.bin_dir + "/" + program);
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> raw;
  for (std::string& a : argv) {
    raw.push_back(a.data());
  }
  raw.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    const int null = ::open("/dev/null", O_RDONLY);
    if (null >= 0) {
      ::dup2(null, 0);
    }
    ::execv(raw[0], raw.data());
    ::_exit(127);
  }
  if (pid < 0) {
    return 127;
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// A TCP port on 127.0.0.1 that nothing listens on right now.
inline uint16_t FreeLoopbackPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  uint16_t port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

inline void NotePostgresSkip(PostgresServer& s, std::string why) {
  if (std::getenv("AIRLOCK_REQUIRE_POSTGRES") != nullptr) {
    s.failure = "AIRLOCK_REQUIRE_POSTGRES is set, but: " + why;
  } else {
    s.skip = std::move(why);
  }
}

// Runs `sql` in database `dbname` and returns the first column of the first row as text (""
// when there is none). On failure, the error goes to `error` when given.
inline std::string PostgresQuery(const PostgresServer& s, const std::string& dbname,
                                 const std::string& sql, std::string* error = nullptr) {
  // Over the Unix socket, which trusts the harness.
  PGconn* conn = PQconnectdb(
      ("host=" + s.dir + " port=" + std::to_string(s.port) + " user=postgres dbname=" + dbname)
          .c_str());
  std::string out;
  std::string err;
  if (PQstatus(conn) != CONNECTION_OK) {
    err = PQerrorMessage(conn);
  } else {
    PGresult* res = PQexec(conn, sql.c_str());
    const ExecStatusType status = PQresultStatus(res);
    if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
      err = PQresultErrorMessage(res);
    } else if (PQntuples(res) > 0 && PQnfields(res) > 0 && !PQgetisnull(res, 0, 0)) {
      out = PQgetvalue(res, 0, 0);
    }
    PQclear(res);
  }
  PQfinish(conn);
  if (error != nullptr) {
    *error = err;
  }
  return out;
}

// Starts the process that cleans up if this one dies first: a shell in a session of its own
// (a signal to this process group does not reach it) that waits for its stdin to close.
// "stopped" on it means StopPostgres did the work already.
inline void StartPostgresReaper(PostgresServer& s) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    return;
  }
  std::string pg_ctl = s.bin_dir + "/pg_ctl";
  std::string script =
      "read -r line; [ \"$line\" = stopped ] && exit 0; "
      "if [ \"$(id -u)\" = 0 ]; then runuser -u postgres -- \"$1\" -D \"$2\" -m immediate stop; "
      "else \"$1\" -D \"$2\" -m immediate stop; fi >/dev/null 2>&1; rm -rf \"$3\"";
  std::vector<std::string> args = {"/bin/sh", "-c", script, "sh", pg_ctl, s.data_dir(), s.dir};
  std::vector<char*> raw;
  for (std::string& a : args) {
    raw.push_back(a.data());
  }
  raw.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setsid();
    ::dup2(fds[0], 0);
    ::execv("/bin/sh", raw.data());
    ::_exit(127);
  }
  ::close(fds[0]);
  if (pid < 0) {
    ::close(fds[1]);
    return;
  }
  s.reaper = pid;
  s.reaper_fd = fds[1];
}

inline PostgresServer StartPostgres() {
  PostgresServer s;
  s.bin_dir = FindPostgresBinDir();
  if (s.bin_dir.empty()) {
    const char* env = std::getenv("AIRLOCK_POSTGRES_BIN");
    NotePostgresSkip(s,
                     std::string("PostgreSQL's initdb and pg_ctl are not installed (looked in ") +
                         (env != nullptr && *env != '\0' ? env : "/usr/lib/postgresql/*/bin") +
                         "; Debian: apt-get install postgresql)");
    return s;
  }
  uid_t uid = ::geteuid();
  gid_t gid = ::getegid();
  if (uid == 0) {
    const passwd* pw = ::getpwnam("postgres");
    if (pw == nullptr) {
      NotePostgresSkip(s, "running as root, and there is no postgres user to run PostgreSQL as");
      return s;
    }
    s.as_postgres_user = true;
    uid = pw->pw_uid;
    gid = pw->pw_gid;
  }
  std::string tmpl = (std::filesystem::temp_directory_path() / "airlock-pg-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) {
    s.failure = "mkdtemp failed";
    return s;
  }
  s.dir = tmpl;
  if (s.as_postgres_user && ::chown(s.dir.c_str(), uid, gid) != 0) {
    s.failure = "cannot give " + s.dir + " to the postgres user";
    return s;
  }

  // An ICU default collation unlike byte order (en-US sorts "a" before "B"), so that a query
  // relying on the database's collation instead of COLLATE "C" shows up in the tests. Without
  // ICU, plain C.UTF-8.
  const std::string init_log = s.dir + "/initdb.log";
  std::vector<std::string> init = {
      "-D",   s.data_dir(),      "--auth-local=trust", "--auth-host=scram-sha-256",
      "-U",   "postgres",        "--no-sync",          "-E",
      "UTF8", "--locale=C.UTF-8"};
  std::vector<std::string> icu = init;
  icu.insert(icu.end(), {"--locale-provider=icu", "--icu-locale=en-US"});
  if (RunPostgresTool(s, "initdb", icu, init_log) != 0) {
    std::error_code ec;
    std::filesystem::remove_all(s.data_dir(), ec);
    if (RunPostgresTool(s, "initdb", init, init_log) != 0) {
      s.failure = "initdb failed:\n" + PostgresReadFile(init_log);
      return s;
    }
  }
  StartPostgresReaper(s);

  // The port is free when chosen but may be taken before the server binds it: try a few.
  const std::string log = s.dir + "/postgres.log";
  for (int attempt = 0; attempt < 5 && !s.running; ++attempt) {
    s.port = FreeLoopbackPort();
    const std::string options = "-p " + std::to_string(s.port) + " -k " + s.dir +
                                " -h 127.0.0.1 -c fsync=off -c max_connections=200";
    s.running =
        RunPostgresTool(s, "pg_ctl",
                        {"-D", s.data_dir(), "-l", log, "-w", "-t", "60", "-o", options, "start"},
                        s.dir + "/pg_ctl.log") == 0;
  }
  if (!s.running) {
    s.failure =
        "pg_ctl start failed:\n" + PostgresReadFile(s.dir + "/pg_ctl.log") + PostgresReadFile(log);
    return s;
  }
  std::ifstream urandom("/dev/urandom", std::ios::binary);
  for (int i = 0; i < 16; ++i) {
    s.password += "0123456789abcdef"[urandom.get() & 0xf];
  }
  std::string error;
  PostgresQuery(s, "postgres", "ALTER ROLE postgres PASSWORD '" + s.password + "'", &error);
  if (!error.empty()) {
    s.failure = "cannot set the superuser's password: " + error;
  }
  return s;
}

inline void StopPostgres(PostgresServer& s) {
  if (s.running) {
    if (RunPostgresTool(s, "pg_ctl", {"-D", s.data_dir(), "-m", "fast", "-w", "stop"},
                        s.dir + "/pg_ctl.log") != 0) {
      RunPostgresTool(s, "pg_ctl", {"-D", s.data_dir(), "-m", "immediate", "-w", "stop"},
                      s.dir + "/pg_ctl.log");
    }
    s.running = false;
  }
  if (!s.dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(s.dir, ec);
  }
  if (s.reaper_fd >= 0) {
    (void)!::write(s.reaper_fd, "stopped\n", 8);
    ::close(s.reaper_fd);
    s.reaper_fd = -1;
  }
  if (s.reaper > 0) {
    int status = 0;
    ::waitpid(s.reaper, &status, 0);
    s.reaper = -1;
  }
}

// A new, empty database; its name, or "" with `error` set.
inline std::string CreatePostgresDatabase(PostgresServer& s, std::string* error) {
  const std::string name = "airlock_test_" + std::to_string(++s.databases);
  PostgresQuery(s, "postgres", "CREATE DATABASE " + name, error);
  return error->empty() ? name : std::string();
}

}  // namespace airlock::testing
