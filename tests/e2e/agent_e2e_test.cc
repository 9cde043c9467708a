// The whole path, end to end: the real `airlock serve`, real `oci` sandboxes of the built-in
// `base` image running the reference agent (airlock-agent), and the scripted model, whose
// replies drive the agent through tool calls that really run inside the sandbox. The same
// tests run against `microvm` with AIRLOCK_TEST_BACKEND=microvm (agent_e2e_test_microvm).
//
// The scripted model answers reply N to a conversation holding N assistant messages (see
// docs/operators.md); each test writes its own script into the server's configuration.

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <thread>

#include "tests/llm/fake_upstream.h"
#include "tests/security/sandbox_fixture.h"

namespace airlock::testing {
namespace {

using http::verb;

Json Call(const std::string& name, Json args) {
  return Json{{"function", {{"name", name}, {"arguments", std::move(args)}}}};
}
Json Reply(const std::string& text, std::vector<Json> calls) {
  Json r = {{"content", text}};
  if (!calls.empty()) r["tool_calls"] = calls;
  return r;
}

// The first session token in the writable memory of process `pid` ("" if none): "ast_" and
// 43 characters of base64url. Mappings larger than `max_mapping` bytes are skipped.
std::string TokenInMemory(int pid, unsigned long max_mapping) {
  std::istringstream maps(ReadFile(fmt::format("/proc/{}/maps", pid)));
  int mem = ::open(fmt::format("/proc/{}/mem", pid).c_str(), O_RDONLY | O_CLOEXEC);
  if (mem < 0) return "";
  auto token_char = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
  };
  std::string found;
  for (std::string line; found.empty() && std::getline(maps, line);) {
    // "start-end rw-p ...": the heap and the anonymous mappings, where strings live.
    unsigned long start = 0, end = 0;
    char perms[5] = {};
    if (std::sscanf(line.c_str(), "%lx-%lx %4s", &start, &end, perms) != 3 || perms[0] != 'r' ||
        perms[1] != 'w' || end - start > max_mapping) {
      continue;
    }
    std::string bytes(end - start, '\0');
    ssize_t n = ::pread(mem, bytes.data(), bytes.size(), static_cast<off_t>(start));
    if (n <= 0) continue;
    bytes.resize(static_cast<size_t>(n));
    for (size_t at = bytes.find("ast_"); found.empty() && at != std::string::npos;
         at = bytes.find("ast_", at + 1)) {
      if (at + 47 > bytes.size()) break;
      std::string candidate = bytes.substr(at, 47);
      if (std::all_of(candidate.begin() + 4, candidate.end(), token_char) &&
          (at + 47 == bytes.size() || !token_char(bytes[at + 47]))) {
        found = candidate;
      }
    }
  }
  ::close(mem);
  return found;
}

// The token session `id`'s running agent holds, read as root from the host ("" if it cannot
// be found). The agent took it from its environment and wiped that, so it is looked for in
// the agent's writable memory: the sandbox's init is the container's process as its runtime
// reports it, and the agent is init's child. In a microvm the agent's memory is the guest's
// RAM, which is QEMU's.
std::string AgentToken(const std::string& home, const std::string& id) {
  if (TestBackendName() == "microvm") {
    std::string handle = ReadFile(SandboxStatePath(home, id));
    std::string dir = handle.substr(handle.find(':') + 1);
    return TokenInMemory(std::atoi(ReadFile(dir + "/vm/qemu.pid").c_str()), ~0ul);
  }
  const char* runtime = std::getenv("AIRLOCK_TEST_OCI_RUNTIME");
  std::string state_file = home + "/state-" + id + ".json";
  if (RunCommandLine(fmt::format("{} --root {}/run/oci state airlock-{} > {}",
                                 runtime && *runtime ? runtime : "crun", home, id, state_file)) !=
      0) {
    return "";
  }
  auto state = ParseJson(ReadFile(state_file));
  if (!state || !state->contains("pid")) return "";
  int init = (*state)["pid"].get<int>();
  std::istringstream children(ReadFile(fmt::format("/proc/{0}/task/{0}/children", init)));
  for (int pid; children >> pid;) {
    if (auto found = TokenInMemory(pid, 64ul << 20); !found.empty()) return found;
  }
  return "";
}

class AgentE2eTest : public ::testing::Test {
 protected:
  void SetUp() override { AIRLOCK_REQUIRE_SANDBOXES(); }

  // Sessions a test left running are deleted, and their sandboxes awaited: a sandbox must not
  // outlive its test (the server is killed when the fixture goes).
  void TearDown() override {
    if (!sbx_) return;
    for (const auto& id : created_) sbx_->server().Op(verb::delete_, "/v1/sessions/" + id);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (const auto& id : created_) {
      std::string state_dir = SandboxStatePath(sbx_->home(), id);
      while (std::filesystem::exists(state_dir) && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      EXPECT_FALSE(std::filesystem::exists(state_dir))
          << "the sandbox of " << id << " outlived its session";
    }
  }

  // Starts a server whose `default` model plays `replies`.
  void StartWithScript(const Json& replies) {
    std::string dir = MakeTempDir("airlock-e2e-script");
    script_path_ = dir + "/script.json";
    std::ofstream(script_path_) << Json{{"replies", replies}}.dump();
    sbx_ = std::make_unique<SandboxServer>(
        fmt::format("[providers.script]\nkind = \"scripted\"\nscript = "
                    "\"{}\"\n[models.default]\nprovider = \"script\"\n"
                    "model = \"scripted\"\n",
                    script_path_));
    sbx_->Start();
  }

  // A server with no model configured: `default` comes from the environment.
  void StartPlain() {
    sbx_ = std::make_unique<SandboxServer>();
    sbx_->Start();
  }

  // A session of the base image with its default entrypoint: the reference agent.
  std::string CreateAgentSession(const std::string& task, const Json& command = nullptr,
                                 const std::string& image = "base", const Json& limits = nullptr) {
    Json body = {{"task", task}, {"image", image}};
    if (!command.is_null()) body["command"] = command;
    if (!limits.is_null()) body["limits"] = limits;
    auto r = sbx_->server().Op(verb::post, "/v1/sessions", DumpJson(body));
    EXPECT_EQ(r.status, 201u) << r.body;
    if (r.status != 201u) return "";
    created_.push_back(r.json()["id"].get<std::string>());
    return created_.back();
  }

  Json Events(const std::string& id) {
    auto r = sbx_->server().Op(verb::get, "/v1/sessions/" + id + "/events", "",
                               {{"Accept", "application/json"}});
    return r.status == 200 ? r.json() : Json::array();
  }
  Json Messages(const std::string& id) {
    return sbx_->server().Op(verb::get, "/v1/sessions/" + id + "/messages").json();
  }

  // Waits for an event of `type` (and, if given, whose data satisfies `pred`).
  Json WaitForEvent(const std::string& id, const std::string& type, int timeout_s = 30) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
    while (std::chrono::steady_clock::now() < deadline) {
      for (const auto& e : Events(id)) {
        if (e.value("type", "") == type) return e;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "no " << type << " event; events: " << Events(id).dump() << "\nlogs:\n"
                  << sbx_->Logs(id);
    return nullptr;
  }

  static std::vector<std::string> Types(const Json& events) {
    std::vector<std::string> out;
    for (const auto& e : events) out.push_back(e.value("type", ""));
    return out;
  }

  // The operator's copy of one of the session's files.
  std::string Download(const std::string& id, const std::string& name) {
    auto r = sbx_->server().Op(verb::get, "/v1/sessions/" + id + "/files/" + name);
    EXPECT_EQ(r.status, 200u) << r.body;
    return r.body;
  }

  // SIGKILL to every process of the session's sandbox (its cgroup names the session: the
  // container's, or the cgroup of the VM's QEMU): the sandbox dies the way a crashed host
  // process or an OOM of init would take it.
  int KillSandbox(const std::string& id) {
    int killed = 0;
    DIR* d = ::opendir("/proc");
    while (dirent* e = d ? ::readdir(d) : nullptr) {
      int pid = std::atoi(e->d_name);
      if (pid <= 1) continue;
      // A process may end between the listing and the read, which then fails with ESRCH (an
      // exception through an ifstream): such a process is simply not one to kill.
      std::string text;
      int fd =
          ::open(("/proc/" + std::string(e->d_name) + "/cgroup").c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) continue;
      char buf[4096];
      for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;)
        text.append(buf, static_cast<size_t>(n));
      ::close(fd);
      bool ours = text.find("airlock-" + id) != std::string::npos ||
                  text.find("airlock-vm-" + id) != std::string::npos;
      if (ours && ::kill(pid, SIGKILL) == 0) ++killed;
    }
    if (d) ::closedir(d);
    return killed;
  }

  std::string script_path_;
  std::unique_ptr<SandboxServer> sbx_;
  std::vector<std::string> created_;
};

// Five replies that use every tool of the reference agent once and finish.
Json EveryToolScript() {
  return Json::array({
      Reply("Looking around.",
            {Call("shell",
                  {{"command", "echo made-in-$(id -un) > notes.txt; id -u; cat notes.txt"}})}),
      Reply("Writing.",
            {Call("write_file", {{"path", "out/report.md"}, {"content", "# Report\nline two\n"}})}),
      Reply("Reading back.", {Call("read_file", {{"path", "out/report.md"}})}),
      Reply("Uploading.", {Call("upload", {{"path", "out/report.md"}, {"name", "report.md"}}),
                           Call("upload", {{"path", "notes.txt"}})}),
      Reply("Done.", {Call("finish", {{"result", "report uploaded"}})}),
  });
}

// The tool results stored in the conversation, in order.
std::vector<std::string> ToolResults(const Json& messages) {
  std::vector<std::string> out;
  for (const auto& m : messages["messages"]) {
    if (m.value("role", "") == "tool") out.push_back(m.value("content", ""));
  }
  return out;
}

TEST_F(AgentE2eTest, TheAgentRunsEveryToolInItsSandboxUploadsAndFinishes) {
  StartWithScript(EveryToolScript());
  std::string id = CreateAgentSession("write a report");
  auto out = sbx_->WaitForEnd(id);
  ASSERT_EQ(out.session["state"], "succeeded") << out.session.dump() << "\n" << out.logs;
  EXPECT_EQ(out.session["result"], "report uploaded");
  EXPECT_EQ(out.session["usage"]["llm_calls"], 5);

  // The tools ran inside the sandbox, as the unprivileged agent user.
  Json msgs = Messages(id);
  auto results = ToolResults(msgs);
  ASSERT_EQ(results.size(), 5u) << msgs.dump();
  // The sandbox's own host uid (sandbox.oci.uid_range_start, 2147000000 on), named `sandbox`
  // inside; in a VM the guest's agent user, 1000 (its QEMU runs as the host uid).
  const std::string uid = TestBackendName() == "microvm" ? "1000" : "21470[0-9]{5}";
  EXPECT_TRUE(
      std::regex_match(results[0], std::regex("exit code 0\n" + uid + "\nmade-in-sandbox\n")))
      << results[0];
  EXPECT_EQ(results[1], "wrote 18 bytes to out/report.md");
  EXPECT_EQ(results[2], "# Report\nline two\n");
  EXPECT_EQ(results[3], "uploaded report.md (18 bytes)");
  EXPECT_EQ(results[4], "uploaded notes.txt (16 bytes)");
  // The conversation: the task once (taken from the inbox), then the loop, nothing twice.
  ASSERT_FALSE(msgs["messages"].empty());
  EXPECT_EQ(msgs["messages"][0]["content"], "write a report");
  int users = 0;
  for (const auto& m : msgs["messages"]) users += m.value("role", "") == "user" ? 1 : 0;
  EXPECT_EQ(users, 1);
  EXPECT_EQ(msgs["messages"][1]["role"], "system") << "the agent's prompt goes with its first call";
  EXPECT_EQ(msgs["messages"].size(), 1u + 1u + 5u + 5u);

  // The operator sees the artifacts, byte for byte.
  auto files = sbx_->server().Op(verb::get, "/v1/sessions/" + id + "/files").json();
  std::set<std::string> names;
  for (const auto& f : files["files"]) names.insert(f["name"].get<std::string>());
  EXPECT_EQ(names, (std::set<std::string>{"report.md", "notes.txt"}));
  EXPECT_EQ(Download(id, "report.md"), "# Report\nline two\n");
  EXPECT_EQ(Download(id, "notes.txt"), "made-in-sandbox\n");

  // One event per step, in order.
  auto types = Types(out.events);
  auto at = [&](const std::string& t, size_t from = 0) {
    return std::find(types.begin() + static_cast<std::ptrdiff_t>(from), types.end(), t) -
           types.begin();
  };
  EXPECT_LT(at("agent.started"), at("agent.llm"));
  EXPECT_EQ(std::count(types.begin(), types.end(), "agent.llm"), 5);
  EXPECT_EQ(std::count(types.begin(), types.end(), "agent.tool"), 5);
  EXPECT_EQ(std::count(types.begin(), types.end(), "file.uploaded"), 2);
  for (const auto& e : out.events) {
    if (e["type"] == "agent.tool") {
      EXPECT_TRUE(e["data"]["ok"].get<bool>()) << e.dump();
    }
  }
}

TEST_F(AgentE2eTest, AFollowUpMessageReachesTheWaitingAgent) {
  StartWithScript(Json::array({
      Reply("Which greeting should the file hold?", {}),
      Reply("Writing it.",
            {Call("shell", {{"command", "echo hello-from-follow-up > greeting.txt"}}),
             Call("upload", {{"path", "greeting.txt"}})}),
      Reply("Done.", {Call("finish", {{"result", "greeting uploaded"}})}),
  }));
  std::string id = CreateAgentSession("write a greeting file");
  ASSERT_FALSE(WaitForEvent(id, "agent.waiting").is_null());
  EXPECT_EQ(sbx_->server().Op(verb::get, "/v1/sessions/" + id).json()["state"], "running");
  auto m = sbx_->server().Op(verb::post, "/v1/sessions/" + id + "/messages",
                             R"({"content":"say hello"})");
  ASSERT_EQ(m.status, 202u) << m.body;
  auto out = sbx_->WaitForEnd(id);
  ASSERT_EQ(out.session["state"], "succeeded") << out.session.dump() << "\n" << out.logs;
  EXPECT_EQ(Download(id, "greeting.txt"), "hello-from-follow-up\n");
  Json msgs = Messages(id)["messages"];
  // task, question, follow-up, tool calls, 2 results, finish call
  ASSERT_GE(msgs.size(), 4u) << msgs.dump();
  EXPECT_EQ(msgs[1]["role"], "system");
  EXPECT_EQ(msgs[2]["content"], "Which greeting should the file hold?");
  EXPECT_EQ(msgs[3]["role"], "user");
  EXPECT_EQ(msgs[3]["content"], "say hello");
  int follow_ups = 0;
  for (const auto& msg : msgs) follow_ups += msg.value("content", Json()) == "say hello" ? 1 : 0;
  EXPECT_EQ(follow_ups, 1);
}

TEST_F(AgentE2eTest, ASandboxKilledMidRunIsReplacedAndTheNewAgentCompletesFromTheHistory) {
  StartWithScript(Json::array({
      Reply("A long step.",
            {Call("shell", {{"command", "echo step-one-ran; sleep 600"}, {"timeout_s", 600}})}),
      Reply("The sandbox restarted; carrying on.",
            {Call("shell", {{"command", "echo survived > after.txt"}}),
             Call("upload", {{"path", "after.txt"}})}),
      Reply("Done.", {Call("finish", {{"result", "completed after a restart"}})}),
  }));
  std::string id = CreateAgentSession("survive a crash");
  ASSERT_FALSE(WaitForEvent(id, "agent.llm").is_null());
  // The agent is inside the long shell call now (its log says so before running it).
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (sbx_->Logs(id).find("shell: echo step-one-ran") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_GT(KillSandbox(id), 0) << "no process of the sandbox found";

  auto out = sbx_->WaitForEnd(id, 90);
  ASSERT_EQ(out.session["state"], "succeeded") << out.session.dump() << "\n" << out.logs;
  EXPECT_EQ(out.session["result"], "completed after a restart");
  EXPECT_EQ(Download(id, "after.txt"), "survived\n");
  Json restart = out.Event("session.sandbox_restart");
  ASSERT_FALSE(restart.is_null()) << out.events.dump();
  EXPECT_EQ(restart["data"]["restart"], 1);

  // Nothing lost, nothing twice: the task once, the first reply once, the cut-off call
  // answered as interrupted, then the rest.
  Json msgs = Messages(id)["messages"];
  ASSERT_GE(msgs.size(), 5u) << msgs.dump();
  EXPECT_EQ(msgs[0]["content"], "survive a crash");
  EXPECT_EQ(msgs[1]["role"], "system");
  EXPECT_EQ(msgs[2]["content"], "A long step.");
  EXPECT_EQ(msgs[3]["role"], "tool");
  EXPECT_EQ(msgs[3]["tool_call_id"], msgs[2]["tool_calls"][0]["id"]);
  EXPECT_EQ(msgs[3]["content"].get<std::string>().rfind("interrupted:", 0), 0u) << msgs[3].dump();
  EXPECT_EQ(msgs[4]["content"], "The sandbox restarted; carrying on.");
  int systems = 0;
  for (const auto& m : msgs) systems += m.value("role", "") == "system" ? 1 : 0;
  EXPECT_EQ(systems, 1) << "the restarted agent found the prompt in the history";
  int tasks = 0;
  for (const auto& m : msgs) tasks += m.value("content", Json()) == "survive a crash" ? 1 : 0;
  EXPECT_EQ(tasks, 1);
  // The second agent says it resumed.
  int started = 0;
  for (const auto& e : out.events) {
    if (e["type"] == "agent.started") {
      EXPECT_EQ(e["data"]["resumed"], started > 0) << e.dump();
      ++started;
    }
  }
  EXPECT_EQ(started, 2);
}

TEST_F(AgentE2eTest, AFollowUpRightAfterARestartReachesTheNewAgentNotTheDeadOnesPoll) {
  StartWithScript(Json::array({
      Reply("What should I write?", {}),
      Reply("Writing it.", {Call("shell", {{"command", "echo after-restart > late.txt"}}),
                            Call("upload", {{"path", "late.txt"}})}),
      Reply("Done.", {Call("finish", {{"result", "the follow-up arrived"}})}),
  }));
  std::string id = CreateAgentSession("wait for instructions");
  ASSERT_FALSE(WaitForEvent(id, "agent.waiting").is_null());
  // The dead sandbox's inbox long-poll is still parked on the control plane when the fresh
  // sandbox starts; the message must not go to it.
  ASSERT_GT(KillSandbox(id), 0);
  ASSERT_FALSE(WaitForEvent(id, "session.sandbox_restart").is_null());
  auto m = sbx_->server().Op(verb::post, "/v1/sessions/" + id + "/messages",
                             R"({"content":"write late.txt"})");
  ASSERT_EQ(m.status, 202u) << m.body;
  auto out = sbx_->WaitForEnd(id, 60);
  ASSERT_EQ(out.session["state"], "succeeded") << out.session.dump() << "\n" << out.logs;
  EXPECT_EQ(Download(id, "late.txt"), "after-restart\n");
  int copies = 0;
  Json msgs = Messages(id)["messages"];
  for (const auto& msg : msgs) copies += msg.value("content", Json()) == "write late.txt" ? 1 : 0;
  EXPECT_EQ(copies, 1) << msgs.dump();
}

TEST_F(AgentE2eTest, AnAgentFrozenWhileWaitingCarriesOnWhenAMessageResumesIt) {
  StartWithScript(Json::array({
      Reply("Tell me when to go on.", {}),
      Reply("Going on.", {Call("shell", {{"command", "echo thawed > thawed.txt"}}),
                          Call("upload", {{"path", "thawed.txt"}})}),
      Reply("Done.", {Call("finish", {{"result", "carried on after a suspend"}})}),
  }));
  // One-second long-polls: while the sandbox is frozen, answers pile up and time out on both
  // sides; after the thaw the agent must simply carry on.
  std::string id = CreateAgentSession("wait, then carry on",
                                      Json::array({"/usr/bin/airlock-agent", "--inbox-wait", "1"}));
  ASSERT_FALSE(WaitForEvent(id, "agent.waiting").is_null());
  auto s = sbx_->server().Op(verb::post, "/v1/sessions/" + id + "/suspend");
  ASSERT_EQ(s.status, 200u) << s.body;
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  EXPECT_EQ(sbx_->server().Op(verb::get, "/v1/sessions/" + id).json()["state"], "suspended");
  auto m =
      sbx_->server().Op(verb::post, "/v1/sessions/" + id + "/messages", R"({"content":"go on"})");
  ASSERT_EQ(m.status, 202u) << m.body;
  auto out = sbx_->WaitForEnd(id);
  ASSERT_EQ(out.session["state"], "succeeded") << out.session.dump() << "\n" << out.logs;
  EXPECT_EQ(Download(id, "thawed.txt"), "thawed\n");
  EXPECT_TRUE(out.Event("session.sandbox_restart").is_null())
      << "the same sandbox was resumed, not replaced";
}

// With OPENAI_API_KEY in the control plane's environment and no model configured, the agent
// thinks with OpenAI's API: here a fake that speaks its wire format (tests/llm/fake_upstream.h),
// reached through OPENAI_BASE_URL.
TEST_F(AgentE2eTest, WithAnOpenAiKeyInTheEnvironmentTheAgentUsesThatProvider) {
  const std::string key = "sk-e2e-only-the-control-plane-has-this";
  fake::FakeUpstreamOptions o;
  o.expected_key = key;
  fake::FakeUpstream upstream(o);
  ASSERT_TRUE(upstream.ok()) << upstream.error();
  upstream.Enqueue(fake::Reply::Tools({{"", "shell", R"({"command":"env; echo hello > hi.txt"})"}},
                                      "Let me check."));
  upstream.Enqueue(fake::Reply::Tools({{"", "upload", R"({"path":"hi.txt"})"}}));
  upstream.Enqueue(
      fake::Reply::Tools({{"", "finish", R"({"result":"done with a real provider"})"}}));
  ::setenv("OPENAI_API_KEY", key.c_str(), 1);
  ::setenv("OPENAI_BASE_URL", (upstream.base_url() + "/v1").c_str(), 1);
  ::unsetenv("ANTHROPIC_API_KEY");
  StartPlain();  // the server inherits the two variables
  ::unsetenv("OPENAI_API_KEY");
  ::unsetenv("OPENAI_BASE_URL");

  std::string id = CreateAgentSession("say hello through OpenAI");
  auto out = sbx_->WaitForEnd(id);
  ASSERT_EQ(out.session["state"], "succeeded") << out.session.dump() << "\n" << out.logs;
  EXPECT_EQ(out.session["result"], "done with a real provider");
  EXPECT_EQ(Download(id, "hi.txt"), "hello\n");

  auto reqs = upstream.requests();
  ASSERT_EQ(reqs.size(), 3u);
  for (const auto& r : reqs) {
    EXPECT_EQ(r.Header("authorization"), "Bearer " + key);
    EXPECT_EQ(r.Json()["model"], "gpt-4o-mini");
    EXPECT_EQ(r.Json()["tools"].size(), 5u) << "the reference agent's tools";
  }
  // The upstream got the whole conversation each time, rebuilt by the control plane.
  EXPECT_EQ(reqs[0].Json()["messages"].size(), 2u);  // the task and the agent's system prompt
  EXPECT_EQ(reqs[2].Json()["messages"].size(), 6u);
  // The sandbox never saw the key: not in the tool's environment, not in the log.
  auto results = ToolResults(Messages(id));
  ASSERT_FALSE(results.empty());
  EXPECT_NE(results[0].find("PATH="), std::string::npos) << results[0];
  EXPECT_EQ(results[0].find(key), std::string::npos) << results[0];
  EXPECT_EQ(out.logs.find(key), std::string::npos);
}

// Agents written against the official npm clients (tests/llm/agents/), in an image of their own
// with node and the clients from the npm registry (tests/llm/npm_clients.sh), run unchanged: their
// clients point at the control plane with SESSION_TOKEN as the key. The upstream is a fake that
// speaks OpenAI's wire format (tests/llm/fake_upstream.h). The image is built once per run.
class NpmAgentTest : public AgentE2eTest {
 protected:
  static constexpr const char* kImage = "npm-agents:test";
  static constexpr const char* kKey = "sk-e2e-npm-client-only-the-control-plane-has-this";

  // The image's tarball, or "" with `skip` set when the clients cannot be installed here.
  static std::string Image(std::string& skip) {
    static std::string tar, why;
    static bool built = false;
    // The directory goes when the test program ends (the image is 64 MB).
    static struct Dir {
      std::string path;
      ~Dir() {
        if (!path.empty()) std::filesystem::remove_all(path);
      }
    } dir_holder;
    if (!built) {
      built = true;
      const std::string dir = MakeTempDir("airlock-e2e-npm");
      dir_holder.path = dir;
      tar = dir + "/npm-agents.tar";
      const int rc = std::system(fmt::format("{0}/tests/llm/npm_clients.sh image {1} {2} "
                                             "{0}/tests/llm/agents > {3}/build.log 2>&1",
                                             AIRLOCK_SOURCE_DIR, tar, kImage, dir)
                                     .c_str());
      if (WIFEXITED(rc) && WEXITSTATUS(rc) == 77) why = ReadFile(dir + "/build.log");
      if (rc != 0 && why.empty()) why = "FAILED: " + ReadFile(dir + "/build.log");
      if (rc != 0) tar.clear();
    }
    skip = why;
    return tar;
  }

  void SetUp() override {
    AgentE2eTest::SetUp();
    if (IsSkipped()) return;
    if (TestBackendName() == "microvm")
      GTEST_SKIP() << "node's JIT under TCG takes minutes to start; the faces are the same on oci";
    std::string skip;
    tar_ = Image(skip);
    if (skip.starts_with("FAILED: ")) FAIL() << skip;
    if (tar_.empty()) GTEST_SKIP() << "the npm clients cannot be installed here: " << skip;
    fake::FakeUpstreamOptions o;
    o.expected_key = kKey;
    upstream_ = std::make_unique<fake::FakeUpstream>(o);
    ASSERT_TRUE(upstream_->ok()) << upstream_->error();
  }

  // Starts the server with `default` on the fake OpenAI upstream, and the image imported.
  void StartServer() {
    ::setenv("OPENAI_API_KEY", kKey, 1);
    ::setenv("OPENAI_BASE_URL", (upstream_->base_url() + "/v1").c_str(), 1);
    ::unsetenv("ANTHROPIC_API_KEY");
    sbx_ = std::make_unique<SandboxServer>();
    auto imported = sbx_->ImportImage(tar_, kImage);
    if (imported) sbx_->Start();  // the server inherits the two variables
    ::unsetenv("OPENAI_API_KEY");
    ::unsetenv("OPENAI_BASE_URL");
    ASSERT_TRUE(imported.has_value()) << imported.error().message;
  }

  // Runs agent `file` of the image on `task` to its end; checks that it succeeded and that no
  // key reached it, and returns its REPORT line.
  Json RunAgent(const std::string& file, const std::string& task, SessionOutcome& out,
                const std::vector<std::string>& more_args = {}) {
    Json command = Json::array({"/usr/bin/node", "/opt/agent/" + file, task});
    for (const std::string& a : more_args) command.push_back(a);
    id_ = CreateAgentSession(task, command, kImage);
    out = sbx_->WaitForEnd(id_, 90);
    EXPECT_EQ(out.session["state"], "succeeded") << out.session.dump() << "\n" << out.logs;
    // The sandbox never saw the key: not in the agent's environment, not in its output.
    EXPECT_EQ(out.logs.find(kKey), std::string::npos);
    EXPECT_NE(out.logs.find("ENV {"), std::string::npos) << out.logs;
    for (const auto& r : upstream_->requests())
      EXPECT_EQ(r.Header("authorization"), std::string("Bearer ") + kKey);
    const size_t at = out.logs.find("REPORT ");
    if (at == std::string::npos) {
      ADD_FAILURE() << "no REPORT line:\n" << out.logs;
      return Json::object();
    }
    return ParseJson(out.logs.substr(at + 7, out.logs.find('\n', at) - at - 7))
        .value_or(Json::object());
  }

  // The data of the session's llm.call events.
  static std::vector<Json> LlmCalls(const SessionOutcome& out) {
    std::vector<Json> calls;
    for (const auto& e : out.events) {
      if (e["type"] == "llm.call") calls.push_back(e["data"]);
    }
    return calls;
  }

  friend Json RunAgentsSdkLoop(NpmAgentTest& t, const std::vector<std::string>& args,
                               SessionOutcome& out);

  // Recognised: the first of two calls appended the system prompt and the task, the second
  // only the tool's result, and nothing was superseded (a rewrite would say "history").
  static void ExpectEachMessageAppendedOnce(const std::vector<Json>& calls) {
    ASSERT_EQ(calls.size(), 2u);
    EXPECT_EQ(calls[0]["new_messages"], 2);
    EXPECT_EQ(calls[1]["new_messages"], 1);
    EXPECT_FALSE(calls[0].contains("history") || calls[1].contains("history"));
  }

  std::string tar_, id_;
  std::unique_ptr<fake::FakeUpstream> upstream_;
};

// The `openai` client: a tool call round trip, a streamed answer with usage, the model list.
TEST_F(NpmAgentTest, AnAgentOnTheOfficialOpenAiClientRunsUnchanged) {
  upstream_->Enqueue(fake::Reply::Tools({{"call_1", "read_file", R"({"path":"/etc/passwd"})"}}));
  upstream_->Enqueue(
      fake::Reply::Text("The sandbox knows two users: root and sandbox.").WithChunks(4));
  StartServer();
  const std::string task = "who can log in here?";
  SessionOutcome out;
  Json report = RunAgent("openai_client.mjs", task, out);
  EXPECT_EQ(out.session["result"], "The sandbox knows two users: root and sandbox.");

  // The upstream got the whole conversation each time, and the client's temperature; the
  // tool's result was read inside the sandbox.
  auto reqs = upstream_->requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].Json()["temperature"], 0.2);
  EXPECT_EQ(reqs[0].Json()["model"], "gpt-4o-mini");
  Json second = reqs[1].Json()["messages"];
  ASSERT_EQ(second.size(), 4u) << second.dump();
  EXPECT_EQ(second[2]["tool_calls"][0]["id"], "call_1");
  EXPECT_NE(second[3]["content"].get<std::string>().find("sandbox:x:"), std::string::npos)
      << second[3];

  // What the client got: the models, and a streamed usage equal to what was metered.
  EXPECT_EQ(report["models"], Json::array({"default"}));
  auto calls = LlmCalls(out);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0]["face"], "openai");
  ExpectEachMessageAppendedOnce(calls);
  EXPECT_EQ(report["usage"]["prompt_tokens"], calls[1]["input_tokens"]);
  EXPECT_EQ(report["usage"]["completion_tokens"], calls[1]["output_tokens"]);
  EXPECT_EQ(out.session["usage"]["llm_calls"], 2);

  // Stored once each: the system prompt, the task, the tool call, its result, the answer.
  Json conv = Messages(id_)["messages"];
  ASSERT_EQ(conv.size(), 5u) << conv.dump();
  EXPECT_EQ(conv[0]["role"], "system");
  EXPECT_EQ(conv[1]["content"], task);
  EXPECT_EQ(conv[3]["role"], "tool");
  EXPECT_EQ(conv[4]["content"], "The sandbox knows two users: root and sandbox.");
}

// `@anthropic-ai/sdk`, through the Anthropic face to the OpenAI upstream: a tool use round
// trip, then a streamed answer read with the client's stream helper.
TEST_F(NpmAgentTest, AnAgentOnTheOfficialAnthropicClientRunsUnchanged) {
  upstream_->Enqueue(
      fake::Reply::Tools({{"toolu_1", "read_file", R"({"path":"/etc/passwd"})"}}, "Reading."));
  upstream_->Enqueue(fake::Reply::Text("Two users: root and sandbox.").WithChunks(3));
  StartServer();
  SessionOutcome out;
  Json report = RunAgent("anthropic_client.mjs", "who can log in here?", out);
  EXPECT_EQ(out.session["result"], "Two users: root and sandbox.");
  EXPECT_EQ(report["stop"], "end_turn");

  auto reqs = upstream_->requests();
  ASSERT_EQ(reqs.size(), 2u);
  Json second = reqs[1].Json()["messages"];
  ASSERT_EQ(second.size(), 4u) << second.dump();
  EXPECT_EQ(second[0]["role"], "system");
  EXPECT_EQ(second[2]["tool_calls"][0]["id"], "toolu_1");
  EXPECT_EQ(second[3]["role"], "tool");
  EXPECT_NE(second[3]["content"].get<std::string>().find("sandbox:x:"), std::string::npos);

  auto calls = LlmCalls(out);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1]["face"], "anthropic");
  EXPECT_EQ(calls[1]["new_messages"], 1);
  EXPECT_FALSE(calls[0].contains("history") || calls[1].contains("history"));
  EXPECT_EQ(report["usage"]["output_tokens"], calls[1]["output_tokens"]);
  EXPECT_EQ(report["usage"]["input_tokens"], calls[1]["input_tokens"]);
  Json conv = Messages(id_)["messages"];
  ASSERT_EQ(conv.size(), 5u) << conv.dump();
  EXPECT_EQ(conv[4]["content"], "Two users: root and sandbox.");
}

// `@openai/agents`: an Agent with a function tool (openai_agents.mjs, with `args` after its
// task), whose run loop (model, tool, model) reads /etc/group and answers. Checks what every
// run of it shows, and returns the messages of the upstream's second request.
Json RunAgentsSdkLoop(NpmAgentTest& t, const std::vector<std::string>& args, SessionOutcome& out) {
  t.upstream_->Enqueue(fake::Reply::Tools({{"call_7", "read_file", R"({"path":"/etc/group"})"}}));
  t.upstream_->Enqueue(fake::Reply::Text("There are two groups."));
  t.StartServer();
  Json report = t.RunAgent("openai_agents.mjs", "how many groups are there?", out, args);
  EXPECT_EQ(report["text"], "There are two groups.");
  EXPECT_EQ(out.session["result"], "There are two groups.");
  auto reqs = t.upstream_->requests();
  EXPECT_EQ(reqs.size(), 2u);
  if (reqs.size() != 2) return Json::array();
  EXPECT_EQ(reqs[0].Json()["tools"][0]["function"]["name"], "read_file");
  Json second = reqs[1].Json()["messages"];
  EXPECT_GE(second.size(), 4u) << second.dump();
  if (second.size() < 4) return Json::array();
  EXPECT_EQ(second.back()["role"], "tool");
  EXPECT_NE(second.back()["content"].dump().find("sandbox:x:"), std::string::npos) << second;
  EXPECT_EQ(out.session["usage"]["llm_calls"], 2);
  return second;
}

// Over Chat Completions (the SDK's setOpenAIAPI).
TEST_F(NpmAgentTest, AnOpenAiAgentsSdkAgentRunsItsLoopToTheEnd) {
  SessionOutcome out;
  RunAgentsSdkLoop(*this, {"chat_completions"}, out);
  auto calls = LlmCalls(out);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_FALSE(calls[1].contains("history")) << calls[1].dump();
}

// On the SDK's defaults, with nothing set for Airlock but its client: the SDK speaks the
// Responses API (POST /v1/responses), and its loop goes to its end.
TEST_F(NpmAgentTest, AnOpenAiAgentsSdkAgentOnItsDefaultResponsesApiRunsItsLoopToTheEnd) {
  SessionOutcome out;
  Json second = RunAgentsSdkLoop(*this, {}, out);
  EXPECT_EQ(second[0]["role"], "system");  // the agent's instructions
  EXPECT_EQ(second[2]["tool_calls"][0]["id"], "call_7");
  auto calls = LlmCalls(out);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0]["face"], "openai-responses");
  EXPECT_EQ(calls[1]["face"], "openai-responses");
  EXPECT_EQ(calls[1]["new_messages"], 1);
  EXPECT_FALSE(calls[1].contains("history")) << calls[1].dump();
  Json conv = Messages(id_)["messages"];
  EXPECT_EQ(conv.size(), second.size() + 1) << conv.dump();  // each message once, and the answer
}

// The `openai` client's Responses API: a function call round trip with the output items passed
// back as input, then a streamed answer whose last event carries the metered usage.
TEST_F(NpmAgentTest, AnAgentOnTheOpenAiResponsesApiRunsUnchanged) {
  upstream_->Enqueue(
      fake::Reply::Tools({{"call_1", "read_file", R"({"path":"/etc/passwd"})"}}, "Reading."));
  upstream_->Enqueue(
      fake::Reply::Text("The sandbox knows two users: root and sandbox.").WithChunks(4));
  StartServer();
  SessionOutcome out;
  Json report = RunAgent("openai_responses.mjs", "who can log in here?", out);
  EXPECT_EQ(out.session["result"], "The sandbox knows two users: root and sandbox.");
  EXPECT_EQ(report["text"], "The sandbox knows two users: root and sandbox.");
  EXPECT_EQ(report["final_text"], "The sandbox knows two users: root and sandbox.");
  EXPECT_EQ(report["first_text"], "Reading.");
  EXPECT_EQ(report["first_event"], "response.created");
  EXPECT_EQ(report["last_event"], "response.completed");
  ASSERT_EQ(report["first_output"].size(), 2u) << report.dump();
  EXPECT_EQ(report["first_output"][1]["call_id"], "call_1");

  auto reqs = upstream_->requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].Json()["temperature"], 0.2);
  Json second = reqs[1].Json()["messages"];
  ASSERT_EQ(second.size(), 4u) << second.dump();
  EXPECT_EQ(second[0]["role"], "system");
  EXPECT_EQ(second[2]["content"], "Reading.");
  EXPECT_EQ(second[2]["tool_calls"][0]["id"], "call_1");
  EXPECT_NE(second[3]["content"].get<std::string>().find("sandbox:x:"), std::string::npos);

  auto calls = LlmCalls(out);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1]["face"], "openai-responses");
  ExpectEachMessageAppendedOnce(calls);
  EXPECT_EQ(report["usage"]["input_tokens"], calls[1]["input_tokens"]);
  EXPECT_EQ(report["usage"]["output_tokens"], calls[1]["output_tokens"]);
  EXPECT_EQ(report["first_usage"]["input_tokens"], calls[0]["input_tokens"]);
  Json conv = Messages(id_)["messages"];
  ASSERT_EQ(conv.size(), 5u) << conv.dump();
  EXPECT_EQ(conv[4]["content"], "The sandbox knows two users: root and sandbox.");
}

// The Python example agent and SDK, carried into a `host`-image sandbox (the host's /usr,
// so its python3) on the command line: argv entries are at most 8 KiB, so each file goes as
// "PATH COUNT CHUNK...", and a bootstrap writes them under /tmp and runs the agent.
Json PythonAgentCommand() {
  static const char* kBootstrap =
      "import os, sys, tempfile\n"
      "a, d, i = sys.argv[1:], tempfile.mkdtemp(), 0\n"
      "while i < len(a):\n"
      "    path, n = a[i], int(a[i + 1])\n"
      "    full = os.path.join(d, path)\n"
      "    os.makedirs(os.path.dirname(full), exist_ok=True)\n"
      "    with open(full, 'w', encoding='utf-8') as f:\n"
      "        f.write(''.join(a[i + 2:i + 2 + n]))\n"
      "    i += 2 + n\n"
      "os.execv(sys.executable, [sys.executable, os.path.join(d, "
      "'examples/agents/python_agent.py')])\n";
  Json cmd = Json::array({"/usr/bin/python3", "-c", kBootstrap});
  std::vector<std::string> files = {"examples/agents/python_agent.py"};
  for (const auto& e :
       std::filesystem::directory_iterator(AIRLOCK_SOURCE_DIR "/sdk/python/airlock")) {
    if (e.path().extension() == ".py")
      files.push_back("sdk/python/airlock/" + e.path().filename().string());
  }
  for (const auto& rel : files) {
    std::ifstream f(AIRLOCK_SOURCE_DIR "/" + rel);
    std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<std::string> chunks;
    for (size_t at = 0; at < text.size();) {
      size_t end = std::min(text.size(), at + 8000);
      while (end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80)
        --end;  // whole UTF-8
      chunks.push_back(text.substr(at, end - at));
      at = end;
    }
    cmd.push_back(rel);
    cmd.push_back(std::to_string(chunks.size()));
    for (auto& c : chunks) cmd.push_back(c);
  }
  return cmd;
}

TEST_F(AgentE2eTest, ThePythonExampleAgentCompletesTheSameTask) {
  if (::access("/usr/bin/python3", X_OK) != 0)
    GTEST_SKIP() << "no /usr/bin/python3 on this host for the host image";
  if (TestBackendName() == "microvm")
    GTEST_SKIP() << "the host image binds the host's /usr, which a VM cannot share";
  StartWithScript(EveryToolScript());
  std::string id = CreateAgentSession("write a report", PythonAgentCommand(), "host");
  auto out = sbx_->WaitForEnd(id, 90);
  ASSERT_EQ(out.session["state"], "succeeded") << out.session.dump() << "\n" << out.logs;
  EXPECT_EQ(out.session["result"], "report uploaded");
  Json started = out.Event("agent.started");
  ASSERT_FALSE(started.is_null());
  EXPECT_EQ(started["data"]["agent"], "python-example");
  EXPECT_EQ(Download(id, "report.md"), "# Report\nline two\n");
  EXPECT_EQ(Download(id, "notes.txt"), "made-in-sandbox\n");
  auto results = ToolResults(Messages(id));
  ASSERT_EQ(results.size(), 5u);
  EXPECT_TRUE(std::regex_search(results[0], std::regex("21470[0-9]{5}\nmade-in-sandbox")))
      << results[0];
  EXPECT_EQ(results[2], "# Report\nline two\n");
}

TEST_F(AgentE2eTest, AFinishTheControlPlaneCannotTakeGoesBackToTheModel) {
  StartWithScript(Json::array({
      Reply("Done?", {Call("finish", {{"status", "done"}, {"result", "x"}})}),  // not a status
      Reply("Done!",
            {Call("finish", {{"result", std::string(80 * 1024, 'r')}})}),  // over the result limit
      Reply("Done.", {Call("finish", {{"status", "succeeded"}, {"result", "third time"}})}),
  }));
  std::string id = CreateAgentSession("finish properly");
  auto out = sbx_->WaitForEnd(id);
  ASSERT_EQ(out.session["state"], "succeeded") << out.session.dump() << "\n" << out.logs;
  EXPECT_EQ(out.session["result"], "third time");
  auto results = ToolResults(Messages(id));
  ASSERT_EQ(results.size(), 2u);
  EXPECT_NE(results[0].find("\"succeeded\" or \"failed\""), std::string::npos) << results[0];
  EXPECT_EQ(results[1].rfind("error: finish was refused", 0), 0u) << results[1];
}

TEST_F(AgentE2eTest, AnIdleSessionIsSuspendedAndAMessageWakesItUp) {
  StartWithScript(Json::array({
      Reply("Tell me when.", {}),
      Reply("Now.", {Call("shell", {{"command", "echo woke > woke.txt"}}),
                     Call("upload", {{"path", "woke.txt"}})}),
      Reply("Done.", {Call("finish", {{"result", "woke up"}})}),
  }));
  std::string id =
      CreateAgentSession("wait for the user", nullptr, "base", {{"idle_timeout_s", 1}});
  ASSERT_FALSE(id.empty());
  ASSERT_FALSE(WaitForEvent(id, "agent.waiting").is_null());
  // Waiting on an empty inbox and nothing else: suspended after about a second.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  std::string state;
  while (std::chrono::steady_clock::now() < deadline) {
    state = sbx_->server().Op(verb::get, "/v1/sessions/" + id).json().value("state", "");
    if (state == "suspended") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_EQ(state, "suspended") << Events(id).dump();
  auto m =
      sbx_->server().Op(verb::post, "/v1/sessions/" + id + "/messages", R"({"content":"now"})");
  ASSERT_EQ(m.status, 202u) << m.body;
  auto out = sbx_->WaitForEnd(id);
  ASSERT_EQ(out.session["state"], "succeeded") << out.session.dump() << "\n" << out.logs;
  EXPECT_EQ(Download(id, "woke.txt"), "woke\n");
  EXPECT_TRUE(out.Event("session.sandbox_restart").is_null()) << "the same sandbox slept and woke";
}

TEST_F(AgentE2eTest, ABusySessionIsNotSuspendedForIdleness) {
  StartWithScript(Json::array({
      Reply("Working.", {Call("shell", {{"command", "sleep 3; echo busy > busy.txt"}}),
                         Call("upload", {{"path", "busy.txt"}})}),
      Reply("Done.", {Call("finish", {{"result", "stayed awake"}})}),
  }));
  std::string id = CreateAgentSession("work for a while", nullptr, "base", {{"idle_timeout_s", 1}});
  ASSERT_FALSE(id.empty());
  auto out = sbx_->WaitForEnd(id);
  ASSERT_EQ(out.session["state"], "succeeded") << out.session.dump();
  for (const auto& e : out.events) {
    EXPECT_FALSE(e["type"] == "session.state" && e["data"]["to"] == "suspended") << e.dump();
  }
}

TEST_F(AgentE2eTest, TheAgentsChildProcessesCannotReadTheToken) {
  // Everything a tool could try as the agent's user: its own environment, every process's
  // environ and cmdline, the agent's memory and file descriptors.
  const std::string probe =
      "env; for p in /proc/[0-9]*; do echo \"== $p\"; tr '\\0' '\\n' < $p/environ 2>&1; tr '\\0' ' "
      "' < $p/cmdline; "
      "echo; done; ls -l /proc/$PPID/fd 2>&1; cat /proc/1/environ 2>&1; "
      // The agent's heap, where the token lives: readable through /proc/<pid>/mem by its own
      // user unless the agent made itself non-dumpable.
      "heap=$(grep '\\[heap\\]' /proc/$PPID/maps 2>/dev/null | cut -d- -f1); echo \"heap at "
      "${heap:-unreadable}\"; "
      "[ -n \"$heap\" ] && dd if=/proc/$PPID/mem bs=4096 skip=$((0x$heap / 4096)) count=256 2>&1 | "
      "grep -a -o 'ast_[A-Za-z0-9_-]*' | head -3; echo probe-done";
  StartWithScript(Json::array({
      Reply("Probing.", {Call("shell", {{"command", probe}})}),
      Reply("Waiting for you.", {}),
  }));
  std::string id = CreateAgentSession("probe for the token");
  ASSERT_FALSE(WaitForEvent(id, "agent.waiting").is_null());
  // The token is in no file on the host (identity after start): read it, as root, where the
  // agent holds it, its memory.
  std::string token = AgentToken(sbx_->home(), id);
  ASSERT_NE(token, "") << "cannot find the token to look for";
  ASSERT_GE(token.size(), 32u);

  auto results = ToolResults(Messages(id));
  ASSERT_EQ(results.size(), 1u);
  const std::string& seen = results[0];
  EXPECT_NE(seen.find("probe-done"), std::string::npos) << seen;
  EXPECT_NE(seen.find("airlock-agent"), std::string::npos)
      << "the probe saw the agent's process: " << seen;
  EXPECT_EQ(seen.find(token), std::string::npos) << seen;
  EXPECT_EQ(seen.find("SESSION_TOKEN"), std::string::npos) << seen;
  EXPECT_EQ(seen.find("CONTROL_PLANE_URL"), std::string::npos) << seen;
  EXPECT_EQ(sbx_->Logs(id).find(token), std::string::npos);
  EXPECT_EQ(sbx_->server().Op(verb::delete_, "/v1/sessions/" + id).status, 200u);
}

}  // namespace
}  // namespace airlock::testing
