// The real `airlock` CLI binary (AIRLOCK_BIN) against a real control plane over its socket,
// with a session whose sandbox is hostile: its result, file names and event text carry
// terminal control sequences (ESC ... OSC 52 clipboard writes, OSC 8 links, a C1 CSI) and
// bidirectional overrides. Whatever the operator runs, the bytes the CLI prints must hold
// none of them, --json must stay valid JSON with the same values, and the text must still be
// there, escaped, for the operator to read.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/integration/harness.h"

namespace airlock::testing {
namespace {

using http::verb;
using namespace std::chrono_literals;

const std::string kEsc = "\x1b]0;PWNED-TITLE\x07\x1b[2J";
const std::string kOsc52 = "\x1b]52;c;cHduZWQ=\x07";
const std::string kOsc8 = "\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\";
const std::string kC1Csi =
    "\xc2\x9b"
    "31m";
const std::string kRlo = "\xe2\x80\xae";
const std::string kLri = "\xe2\x81\xa6";
const std::string kHostileResult =
    "done" + kEsc + kOsc52 + kOsc8 + kC1Csi + kRlo + "txt.exe" + kLri + "\nstate:     succeeded";
const std::string kBidiName = "invoice" + kRlo + "fdp.exe";
const std::string kC1Name = "x" + kC1Csi + "y.txt";

struct Output {
  int exit_code = -1;
  std::string out;
  std::string err;
};

std::string Slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Runs `airlock ARGS...` with its stdout and stderr in files (not a terminal: the CLI may not
// count on one to be safe).
Output RunCli(const TestServer& server, const std::vector<std::string>& args) {
  std::string dir = MakeTempDir("airlock-cli");
  std::string out_path = dir + "/out", err_path = dir + "/err";
  std::vector<std::string> env_s = {
      "AIRLOCK_URL=http://127.0.0.1:" + std::to_string(server.op_port()),
      "AIRLOCK_OPERATOR_KEY=" + server.key(),
      "AIRLOCK_HOME=" + dir,
      "HOME=" + dir,
      "PATH=/usr/bin:/bin",
      "LANG=C.UTF-8"};
  std::vector<std::string> argv_s = {AIRLOCK_BIN};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv, envp;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid == 0) {
    int o = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int e = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int in = ::open("/dev/null", O_RDONLY);
    if (o < 0 || e < 0 || in < 0) ::_exit(125);
    ::dup2(in, 0);
    ::dup2(o, 1);
    ::dup2(e, 2);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  Output r;
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = Slurp(out_path);
  r.err = Slurp(err_path);
  std::filesystem::remove_all(dir);
  return r;
}

// None of the bytes a terminal acts on (C0 but newline and tab, DEL, C1 as UTF-8) and none of
// the bidi or invisible formatting controls.
::testing::AssertionResult IsInert(const std::string& out) {
  for (size_t i = 0; i < out.size(); ++i) {
    auto c = static_cast<unsigned char>(out[i]);
    if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7f) {
      return ::testing::AssertionFailure() << "control byte " << int(c) << " at " << i << " in:\n"
                                           << out;
    }
    if (c == 0xc2 && i + 1 < out.size() && static_cast<unsigned char>(out[i + 1]) >= 0x80 &&
        static_cast<unsigned char>(out[i + 1]) <= 0x9f) {
      return ::testing::AssertionFailure() << "C1 control at " << i << " in:\n" << out;
    }
  }
  for (const char* bad : {"\xe2\x80\xaa", "\xe2\x80\xab", "\xe2\x80\xac", "\xe2\x80\xad",
                          "\xe2\x80\xae", "\xe2\x81\xa6", "\xe2\x81\xa7", "\xe2\x81\xa8",
                          "\xe2\x81\xa9", "\xe2\x80\x8e", "\xe2\x80\x8f", "\xd8\x9c"}) {
    if (out.find(bad) != std::string::npos) {
      return ::testing::AssertionFailure() << "bidi/invisible control in:\n" << out;
    }
  }
  return ::testing::AssertionSuccess();
}

class CliOutputTest : public ::testing::Test {
 protected:
  // The token of the first session the server creates (an `airlock run` in another thread),
  // waiting up to 10 s for it; "" if none came.
  std::string FirstSessionToken() {
    for (int i = 0; i < 2000; ++i) {
      {
        std::lock_guard l(server_.backend().mu);
        if (!server_.backend().specs.empty())
          return server_.backend().specs.begin()->second.token.Reveal();
      }
      std::this_thread::sleep_for(5ms);
    }
    return "";
  }

  // A session whose sandbox uploaded two files with hostile names, wrote a hostile event and
  // finished with a hostile result.
  std::string HostileSession() {
    auto [id, token] = server_.NewSession();
    for (const std::string& name : {kBidiName, kC1Name}) {
      auto p = server_.Sb(verb::post, "/sandbox/v1/files/presign", token,
                          DumpJson(Json{{"name", name}, {"method", "PUT"}, {"size", 2}}));
      EXPECT_EQ(p.status, 200u) << p.body;
      std::string url = p.json()["url"];
      auto up = HttpCall(server_.sb_port(), verb::put, url.substr(url.find("/sandbox/v1/files/")),
                         "", "ok");
      EXPECT_EQ(up.status, 201u) << up.body;
    }
    auto ev = server_.Sb(
        verb::post, "/sandbox/v1/events", token,
        DumpJson(Json{{"type", "agent.llm"}, {"data", {{"step", 1}, {"text", kHostileResult}}}}));
    EXPECT_EQ(ev.status, 202u) << ev.body;
    auto ev2 = server_.Sb(verb::post, "/sandbox/v1/events", token,
                          DumpJson(Json{{"type", "note"}, {"data", {{"text", kOsc52 + kRlo}}}}));
    EXPECT_EQ(ev2.status, 202u) << ev2.body;
    auto fin = server_.Sb(verb::post, "/sandbox/v1/finish", token,
                          DumpJson(Json{{"status", "succeeded"}, {"result", kHostileResult}}));
    EXPECT_EQ(fin.status, 200u) << fin.body;
    return id;
  }

  TestServer server_;
};

TEST_F(CliOutputTest, NothingASandboxWroteReachesTheTerminalAsAControlSequence) {
  const std::string id = HostileSession();
  struct Case {
    std::vector<std::string> args;
    int exit_code;
    std::string must_show;  // the escaped text, so that an empty output cannot pass
  };
  const std::vector<Case> cases = {
      {{"show", id}, 0, "done\\u001b]0;PWNED-TITLE\\u0007\\u001b[2J\\u001b]52;c;"},
      {{"kill", id}, 0, "\\u009b31m\\u202etxt.exe\\u2066"},
      {{"files", "ls", id}, 0, "invoice\\u202efdp.exe"},
      {{"events", id}, 0, "step 1: done\\u001b]0;PWNED-TITLE"},
      {{"ls"}, 0, id},
      // The server's 404 quotes the name the operator asked for; the error shows it inert.
      {{"files", "get", id, "no" + kRlo + kC1Csi, "-o", "-"}, 5, "no\\u202e\\u009b31m"},
      // Suspending an ended session is refused with a message; it is printed inert too.
      {{"suspend", id}, 6, "HTTP 409"},
  };
  for (const auto& c : cases) {
    Output o = RunCli(server_, c.args);
    std::string all = o.out + o.err;
    SCOPED_TRACE(c.args[0] + " " + (c.args.size() > 1 ? c.args[1] : ""));
    EXPECT_EQ(o.exit_code, c.exit_code) << all;
    EXPECT_TRUE(IsInert(o.out));
    EXPECT_TRUE(IsInert(o.err));
    EXPECT_NE(all.find(c.must_show), std::string::npos) << all;
  }
  // A multi-line result keeps its lines, indented: its second line cannot pass for a field.
  Output show = RunCli(server_, {"show", id});
  EXPECT_EQ(show.out.find("\nstate:     succeeded"), show.out.rfind("\nstate:"))
      << "only the CLI's own state line starts a line:\n"
      << show.out;
  EXPECT_NE(show.out.find("\n           state:     succeeded"), std::string::npos) << show.out;
}

TEST_F(CliOutputTest, JsonOutputIsValidJsonWithTheSameValuesAndNothingATerminalActsOn) {
  const std::string id = HostileSession();
  for (const std::vector<std::string>& args : {std::vector<std::string>{"show", id, "--json"},
                                               {"kill", id, "--json"},
                                               {"files", "ls", id, "--json"},
                                               {"events", id, "--json"},
                                               {"ls", "--json"}}) {
    Output o = RunCli(server_, args);
    SCOPED_TRACE(args[0]);
    ASSERT_EQ(o.exit_code, 0) << o.out << o.err;
    EXPECT_TRUE(IsInert(o.out));
    std::string everything;
    std::istringstream lines(o.out);
    for (std::string line; std::getline(lines, line);) {
      auto j = ParseJson(line);
      ASSERT_TRUE(j.has_value()) << line;
      everything += j->dump(-1, ' ', false) + "\n";  // the values, unescaped again
    }
    const std::string want = args[0] == "files" ? Json(kBidiName).dump(-1, ' ', false)
                             : args[0] == "ls"  ? id
                                                : Json(kHostileResult).dump(-1, ' ', false);
    EXPECT_NE(everything.find(want), std::string::npos)
        << "the JSON values are the sandbox's, unchanged: " << o.out;
  }
}

TEST_F(CliOutputTest, AirlockRunShowsTheEventsAndTheFinalResultInert) {
  const std::string dir = MakeTempDir("airlock-cli-run");
  const std::string kArtifact = "a" + kEsc;
  // `airlock run` follows the session it creates; the sandbox side finishes it meanwhile.
  std::thread sandbox([this, &kArtifact] {
    std::string token = FirstSessionToken();
    ASSERT_FALSE(token.empty()) << "airlock run created no session";
    auto p = server_.Sb(
        verb::post, "/sandbox/v1/files/presign", token,
        DumpJson(Json{{"name", kBidiName}, {"method", "PUT"}, {"size", kArtifact.size()}}));
    ASSERT_EQ(p.status, 200u) << p.body;
    std::string url = p.json()["url"];
    auto up = HttpCall(server_.sb_port(), verb::put, url.substr(url.find("/sandbox/v1/files/")), "",
                       kArtifact);
    EXPECT_EQ(up.status, 201u) << up.body;
    server_.Sb(
        verb::post, "/sandbox/v1/events", token,
        DumpJson(Json{{"type", "agent.llm"}, {"data", {{"step", 1}, {"text", kHostileResult}}}}));
    auto fin = server_.Sb(verb::post, "/sandbox/v1/finish", token,
                          DumpJson(Json{{"status", "succeeded"}, {"result", kHostileResult}}));
    EXPECT_EQ(fin.status, 200u) << fin.body;
  });
  Output o = RunCli(server_, {"run", "--download", dir, "--show", "do it"});
  sandbox.join();
  EXPECT_EQ(o.exit_code, 0) << o.out << o.err;
  EXPECT_TRUE(IsInert(o.out));
  EXPECT_TRUE(IsInert(o.err));
  EXPECT_NE(o.out.find("result: done\\u001b]0;PWNED-TITLE\\u0007"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("\\u202etxt.exe\\u2066\n  state:     succeeded"), std::string::npos)
      << o.out;
  EXPECT_NE(o.out.find(fmt::format("artifact: {}/invoice\\u202efdp.exe ({} bytes)", dir,
                                   kArtifact.size())),
            std::string::npos)
      << o.out;
  // The artifact itself is on disk byte for byte: only what is printed is made inert.
  EXPECT_EQ(Slurp(dir + "/" + kBidiName), kArtifact);
  std::filesystem::remove_all(dir);
}

// `airlock run --env --file -- COMMAND`: the variables and the file go in with the session,
// and the command's output is shown as it runs instead of the events.
TEST_F(CliOutputTest, AirlockRunPutsEnvAndFilesInAndShowsAnOwnCommandsOutput) {
  const std::string dir = MakeTempDir("airlock-cli-run");
  const std::string path = dir + "/data.bin";
  const std::string bytes("a,b\n\0\xff", 6);
  std::ofstream(path, std::ios::binary) << bytes;
  Json work;
  std::thread sandbox([this, &work] {
    std::string token = FirstSessionToken();
    ASSERT_FALSE(token.empty()) << "airlock run created no session";
    work = server_.Sb(verb::get, "/sandbox/v1/work", token).json();
    auto file = server_.Sb(verb::get, "/sandbox/v1/work/files/renamed.bin", token);
    EXPECT_EQ(file.status, 200u) << file.body;
    work["bytes"] = file.body;
    server_.Sb(verb::post, "/sandbox/v1/finish", token, R"({"status":"succeeded"})");
  });
  Output o = RunCli(server_, {"run", "--env", "REPO=airlock", "--env", "MODE=a=b", "--file",
                              "renamed.bin=" + path, "do it", "--", "sh", "-c", "true"});
  sandbox.join();
  EXPECT_EQ(o.exit_code, 0) << o.out << o.err;
  EXPECT_EQ(work["env"], (Json{{"REPO", "airlock"}, {"MODE", "a=b"}})) << work.dump();
  ASSERT_EQ(work["files"].size(), 1u) << work.dump();
  EXPECT_EQ(work["files"][0]["name"], "renamed.bin");
  EXPECT_EQ(work["bytes"], bytes);
  // The command's output (the test backend's log), then the final line; not the events.
  EXPECT_NE(o.out.find("test log\n"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("succeeded"), std::string::npos) << o.out;
  EXPECT_EQ(o.out.find("session.created"), std::string::npos) << o.out;
  // A credential-looking name is refused by the server, with its reason.
  Output refused = RunCli(server_, {"run", "--env", "GITHUB_TOKEN=x", "do it"});
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.err.find("looks like a credential"), std::string::npos) << refused.err;
  Output missing = RunCli(server_, {"run", "--file", dir + "/nope", "do it"});
  EXPECT_EQ(missing.exit_code, 2) << missing.err;
  std::filesystem::remove_all(dir);
}

// `airlock run --allow / --allow-address / --egress-policy` become the session's "egress";
// this server allows nothing, so each is refused by it, with its reason.
TEST_F(CliOutputTest, AirlockRunAsksForEgressAndShowsTheServersRefusal) {
  Output wide =
      RunCli(server_, {"run", "--allow", "pypi.org", "--allow-address", "10.0.0.5:5432", "do it"});
  EXPECT_NE(wide.exit_code, 0);
  EXPECT_NE(wide.err.find("\"egress\" may only narrow what the operator allows"), std::string::npos)
      << wide.err;
  Output named = RunCli(server_, {"run", "--egress-policy", "web", "do it"});
  EXPECT_NE(named.exit_code, 0);
  EXPECT_NE(named.err.find("no egress policy \"web\" is configured (configured: none)"),
            std::string::npos)
      << named.err;
  Output both = RunCli(server_, {"run", "--egress-policy", "web", "--allow", "pypi.org", "do it"});
  EXPECT_EQ(both.exit_code, 2) << both.err;
  EXPECT_NE(both.err.find("does not go with --allow"), std::string::npos) << both.err;
  Output secret = RunCli(server_, {"run", "--secret", "github", "do it"});
  EXPECT_NE(secret.exit_code, 0);
  EXPECT_NE(secret.err.find("no secret \"github\" is configured (configured: none)"),
            std::string::npos)
      << secret.err;
}

}  // namespace
}  // namespace airlock::testing
