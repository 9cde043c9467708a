#include "cli/cli.h"

#include <strings.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "cli/args.h"
#include "cli/format.h"
#include "cli/http_client.h"
#include "common/crypto.h"
#include "common/json_util.h"
#include "common/log.h"
#include "common/secret.h"
#include "common/time_util.h"
#include "common/url.h"
#include "controlplane/config.h"
#include "controlplane/control_plane.h"
#include "files/local_store.h"
#include "images/image_name.h"
#include "images/image_store.h"

namespace airlock::cli {

namespace {

// The exit codes, also listed in the footer of `airlock --help`.
constexpr int kExitOk = 0;
constexpr int kExitSessionFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitUnreachable = 3;
constexpr int kExitAuth = 4;
constexpr int kExitNotFound = 5;
constexpr int kExitApi = 6;

constexpr const char* kDefaultUrl = "http://127.0.0.1:7400";
constexpr int kStreamRetries = 5;
// What --file may carry in all: base64 makes it 4/3 as large, and the create body is held to
// the server's server.max_body_bytes (1 MiB by default).
constexpr size_t kMaxRunFileBytes = 700 * 1024;

constexpr const char* kExitCodesFooter = R"(Exit codes:
  0  ok
  1  the session failed or was killed (airlock run)
  2  usage or configuration error
  3  cannot reach the server
  4  authentication refused (HTTP 401/403)
  5  not found (HTTP 404)
  6  any other API error

Environment:
  AIRLOCK_URL           operator API base URL (default http://127.0.0.1:7400)
  AIRLOCK_HOME          data directory (default ~/.local/share/airlock); the CLI reads
                        the operator key from $AIRLOCK_HOME/operator.key
  AIRLOCK_OPERATOR_KEY  operator key; overrides the key file

Run `airlock COMMAND --help` for the options and examples of a command.)";

// Why a command stopped, and with which exit code. Printed as "airlock: <message>".
struct Failure {
  int exit_code = kExitApi;
  std::string message;
};
template <typename T>
using CliResult = std::expected<T, Failure>;

std::unexpected<Failure> Fail(int code, std::string message) {
  return std::unexpected(Failure{code, std::move(message)});
}

// ------------------------------------------------------------------ output

// Much of what the CLI prints was written by a sandbox (a result, file names, events, server
// messages quoting them), and a sandbox is untrusted: everything printed for a human goes
// through Inert, so no byte of it acts on the operator's terminal. Fields that must stay on
// one line are made Inert one-line where they are formatted; this is the net under all of it.
void PrintRaw(std::string_view bytes) {
  std::fwrite(bytes.data(), 1, bytes.size(), stdout);
  std::fflush(stdout);
}
void Print(std::string_view text) { PrintRaw(Inert(text, /*multiline=*/true)); }
void PrintLine(std::string_view text) {
  std::string line(text);
  line += '\n';
  Print(line);
}
// --json output: the same JSON value, with what a terminal would act on escaped as \uXXXX.
void PrintJson(const Json& value) { PrintRaw(InertJson(DumpJson(value)) + "\n"); }
void PrintErr(std::string_view text) {
  std::string line = fmt::format("airlock: {}\n", Inert(text, /*multiline=*/true));
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

// ------------------------------------------------------------------ errors

Failure FromTransport(const Error& e) {
  return Failure{e.code == ErrorCode::kInvalidArgument ? kExitUsage : kExitUnreachable, e.message};
}

int ExitCodeForStatus(int status) {
  if (status == 401 || status == 403) {
    return kExitAuth;
  }
  if (status == 404) {
    return kExitNotFound;
  }
  return kExitApi;
}

// The API's error shape {"error":{"code","message"}} as "<message> (<code>, HTTP <status>)";
// anything else (a proxy's HTML page, say) as its first line.
Failure FromResponse(const HttpResponse& res) {
  int code = ExitCodeForStatus(res.status);
  if (auto j = ParseJson(res.body);
      j && j->is_object() && j->contains("error") && (*j)["error"].is_object()) {
    const Json& err = (*j)["error"];
    std::string message = err.value("message", std::string("(no message)"));
    std::string err_code = err.value("code", std::string("unknown"));
    // The message may quote what a sandbox wrote (a file name, a result): one line, inert.
    std::string text = fmt::format("{} ({}, HTTP {})", Inert(message), Inert(err_code), res.status);
    if (res.status == 401) {
      text += " — check the operator key (--home DIR or AIRLOCK_OPERATOR_KEY)";
    }
    return Failure{code, text};
  }
  std::string first = res.body.substr(0, res.body.find('\n'));
  return Failure{
      code, fmt::format("HTTP {}{}{}", res.status, first.empty() ? "" : ": ", OneLine(first, 200))};
}

// ------------------------------------------------------------------ the client side

struct ClientFlags {
  std::string url = kDefaultUrl;
  std::string home;
};

void AddClientFlags(CLI::App* cmd, ClientFlags* flags) {
  cmd->add_option("--url", flags->url, "Operator API base URL")
      ->envname("AIRLOCK_URL")
      ->capture_default_str()
      ->type_name("URL");
  cmd->add_option("--home", flags->home,
                  "Data directory holding operator.key (default: $AIRLOCK_HOME, else "
                  "~/.local/share/airlock)")
      ->type_name("DIR");
}

std::string Trim(std::string s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  size_t e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

CliResult<Secret> LoadOperatorKey(const std::string& home) {
  if (const char* env = std::getenv("AIRLOCK_OPERATOR_KEY"); env && *env) {
    Secret key(Trim(env));
    if (key.empty()) {
      return Fail(kExitUsage, "AIRLOCK_OPERATOR_KEY is blank");
    }
    return key;
  }
  std::string path = home + "/operator.key";
  std::ifstream f(path);
  if (!f) {
    int err = errno;
    if (err == ENOENT) {
      return Fail(
          kExitUsage,
          fmt::format("no operator key at {}: start `airlock serve --home {}` once to create "
                      "it, point --home (or AIRLOCK_HOME) at the server's data directory, or "
                      "set AIRLOCK_OPERATOR_KEY",
                      path, home));
    }
    return Fail(kExitUsage,
                fmt::format("cannot read the operator key {}: {} — run as the user that "
                            "runs `airlock serve`, or set AIRLOCK_OPERATOR_KEY",
                            path, std::strerror(err)));
  }
  std::string line;
  std::getline(f, line);
  Secret key(Trim(std::move(line)));
  if (key.empty()) {
    return Fail(kExitUsage, fmt::format("the operator key file {} is empty", path));
  }
  return key;
}

CliResult<HttpClient> MakeClient(const ClientFlags& flags, HttpClientOptions options = {}) {
  auto client = HttpClient::Create(flags.url, options);
  if (!client) {
    return Fail(kExitUsage, fmt::format("--url: {}", client.error().message));
  }
  std::string home = flags.home.empty() ? controlplane::DefaultHome() : flags.home;
  auto key = LoadOperatorKey(home);
  if (!key) {
    return std::unexpected(key.error());
  }
  client->SetBearerToken(std::move(*key));
  return std::move(*client);
}

// Percent-encodes a path segment, so that an id like "../x?y" cannot change the route.
std::string Escape(std::string_view segment) { return PercentEncode(segment); }

std::string SessionPath(const std::string& id, std::string_view rest = "") {
  return fmt::format("/v1/sessions/{}{}", Escape(id), rest);
}

// One API call whose answer is JSON.
CliResult<Json> CallJson(const HttpClient& client, std::string_view method, const std::string& path,
                         const std::optional<Json>& body = std::nullopt,
                         const Headers& headers = {}) {
  auto res = client.Do(method, path, body, headers);
  if (!res) {
    return std::unexpected(FromTransport(res.error()));
  }
  if (!res->ok()) {
    return std::unexpected(FromResponse(*res));
  }
  if (res->body.empty()) {
    return Json::object();
  }
  auto j = ParseJson(res->body);
  if (!j) {
    return Fail(kExitApi, fmt::format("{} {} answered with invalid JSON: {}", method, path,
                                      j.error().message));
  }
  return std::move(*j);
}

bool IsTerminal(std::string_view state) {
  return state == "succeeded" || state == "failed" || state == "killed";
}

std::string Str(const Json& obj, const char* key, std::string fallback = "") {
  if (obj.is_object()) {
    if (auto it = obj.find(key); it != obj.end()) {
      if (it->is_string()) {
        return it->get<std::string>();
      }
      if (!it->is_null()) {
        return DumpJson(*it);
      }
    }
  }
  return fallback;
}

int64_t NowMillis() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// ------------------------------------------------------------------ following events

struct FollowOutcome {
  int64_t last_seq = 0;
  std::string final_state;  // set when the session ended
};

// Prints the events of session `id` after `after` as they come (a progress line each, or JSON
// lines) until the session ends. A dropped stream is resumed from the last event seen; a
// few consecutive attempts without progress give up. `reachable` says the server has answered
// already; until it has, a failure to connect ends at once (a wrong --url should not wait).
CliResult<FollowOutcome> FollowEvents(const HttpClient& client, const std::string& id,
                                      int64_t after, bool json, bool reachable) {
  FollowOutcome out;
  out.last_seq = after;
  int failures = 0;
  for (;;) {
    bool progressed = false;
    Headers headers;
    if (out.last_seq > 0) {
      headers.emplace_back("Last-Event-ID", std::to_string(out.last_seq));
    }
    auto res = client.StreamSse(
        SessionPath(id, fmt::format("/events?after={}", out.last_seq)), headers,
        [&](const SseEvent& ev) {
          auto parsed = ParseJson(ev.data);
          if (!parsed || !parsed->is_object()) {
            PrintErr(fmt::format("skipping an event that is not a JSON object (id {})", ev.id));
            return true;
          }
          const Json& e = *parsed;
          if (auto it = e.find("seq"); it != e.end() && it->is_number_integer()) {
            int64_t seq = it->get<int64_t>();
            if (seq <= out.last_seq) {
              return true;  // Already printed before a reconnect.
            }
            out.last_seq = seq;
          }
          progressed = true;
          if (json) {
            PrintJson(e);
          } else {
            PrintLine(FormatEventLine(e));
          }
          if (Str(e, "type") == "session.state" && e.contains("data")) {
            std::string to = Str(e["data"], "to");
            if (IsTerminal(to)) {
              out.final_state = to;
              return false;
            }
          }
          return true;
        });
    if (!out.final_state.empty()) {
      return out;
    }
    if (res && !res->ok()) {
      return std::unexpected(FromResponse(*res));
    }
    reachable = reachable || res.has_value() || progressed;
    std::string why;
    if (!res) {
      if (!reachable && !progressed) {
        return std::unexpected(FromTransport(res.error()));
      }
      why = res.error().message;
    } else {
      // The server ended the stream: it does so when the session is over, or when it shuts down.
      auto session = CallJson(client, "GET", SessionPath(id));
      if (session && IsTerminal(Str(*session, "state"))) {
        out.final_state = Str(*session, "state");
        return out;
      }
      if (!session && session.error().exit_code != kExitUnreachable) {
        return std::unexpected(session.error());
      }
      why = session ? "the server ended the event stream" : session.error().message;
    }
    failures = progressed ? 1 : failures + 1;
    if (failures > kStreamRetries) {
      return Fail(kExitUnreachable,
                  fmt::format("{} (gave up after {} attempts; the session may still be running: "
                              "`airlock events {} --follow --after {}` picks up from here)",
                              why, kStreamRetries, id, out.last_seq));
    }
    auto delay = std::chrono::milliseconds(std::min(250 << failures, 5000));
    PrintErr(fmt::format("{} (reconnecting after event #{} in {} ms, attempt {} of {})", why,
                         out.last_seq, delay.count(), failures, kStreamRetries));
    std::this_thread::sleep_for(delay);
  }
}

// ------------------------------------------------------------------ commands

struct RunFlags {
  ClientFlags client;
  std::string task;
  std::string image;
  std::string backend;
  std::string model;
  std::vector<std::string> limits;
  std::vector<std::string> meta;
  std::vector<std::string> env;    // NAME=VALUE
  std::vector<std::string> allow;  // egress name rules; with allow_addresses, the session's own
  std::vector<std::string> allow_addresses;
  std::string egress_policy;         // or one of the server's [egress.policies]
  std::vector<std::string> secrets;  // of the server's [secrets.NAME], added at the boundary
  std::vector<std::string> files;    // PATH or NAME=PATH
  bool detach = false;
  bool json = false;
  std::string download_dir;  // the session's files are downloaded here at the end
  bool show = false;         // and small text files printed
  std::optional<std::vector<std::string>> command;
};

void PrintFinal(const Json& session, bool json) {
  if (json) {
    PrintJson(session);
    return;
  }
  std::string line = fmt::format("{} {}", Str(session, "id"), Str(session, "state", "?"));
  if (session.contains("usage") && session["usage"].is_object()) {
    const Json& u = session["usage"];
    if (u.value("llm_calls", 0) > 0) {
      line += fmt::format(" (tokens in {} / out {}, {} LLM calls)", Str(u, "input_tokens", "0"),
                          Str(u, "output_tokens", "0"), Str(u, "llm_calls", "0"));
    }
  }
  PrintLine(Inert(line));
  if (session.contains("result")) {
    PrintLine("result: " + InertIndented(Str(session, "result"), 2));
  }
}

// GET a session's file into `dest` ("-" = stdout): streamed to a temporary file beside it,
// then renamed, so a broken download never leaves a partial file under the real name.
CliResult<uint64_t> DownloadFile(const HttpClient& client, const std::string& id,
                                 const std::string& name, const std::string& dest) {
  const bool to_stdout = dest == "-";
  std::string tmp = dest + ".part";
  std::FILE* out = to_stdout ? stdout : std::fopen(tmp.c_str(), "wb");
  if (out == nullptr)
    return Fail(kExitUsage, fmt::format("cannot write {}: {}", tmp, std::strerror(errno)));
  uint64_t bytes = 0;
  bool write_failed = false;
  // `-o -` to a terminal: the file is the sandbox's, shown inert; into a pipe, byte for byte.
  std::optional<InertStream> inert;
  if (to_stdout && ::isatty(STDOUT_FILENO) == 1) inert.emplace();
  auto write = [&](std::string_view data) {
    write_failed = write_failed || std::fwrite(data.data(), 1, data.size(), out) != data.size();
  };
  auto res =
      client.StreamBody(SessionPath(id, "/files/" + Escape(name)), {}, [&](std::string_view data) {
        bytes += data.size();
        if (inert) {
          write(inert->Feed(data));
        } else {
          write(data);
        }
        return !write_failed;
      });
  if (inert) write(inert->Finish());
  bool closed = to_stdout ? std::fflush(out) == 0 : std::fclose(out) == 0;
  auto cleanup = [&] {
    if (!to_stdout) std::remove(tmp.c_str());
  };
  if (!res) {
    cleanup();
    return std::unexpected(FromTransport(res.error()));
  }
  if (res->status == 302 || res->status == 307) {
    cleanup();
    std::string location;
    for (const auto& [k, v] : res->headers) {
      if (k.size() == 8 && strncasecmp(k.c_str(), "location", 8) == 0) location = v;
    }
    return Fail(kExitApi,
                fmt::format("{} is in the object store; fetch it (the link expires soon): {}",
                            Inert(name), Inert(location)));
  }
  if (!res->ok()) {
    cleanup();
    return std::unexpected(FromResponse(*res));
  }
  if (write_failed || !closed || (!to_stdout && std::rename(tmp.c_str(), dest.c_str()) != 0)) {
    cleanup();
    return Fail(kExitUsage, fmt::format("cannot write {}: {}", dest, std::strerror(errno)));
  }
  return bytes;
}

// Text worth printing to a terminal: valid-looking UTF-8 without NULs or control codes other
// than tab, newline and carriage return.
bool LooksLikeText(const std::string& data) {
  for (unsigned char c : data) {
    if (c == 0 || (c < 0x20 && c != '\n' && c != '\t' && c != '\r') || c == 0x7f) return false;
  }
  return true;
}

// After `airlock run`: the session's files, downloaded into `dir`, the small text ones shown.
CliResult<void> FetchArtifacts(const HttpClient& client, const std::string& id,
                               const std::string& dir, bool show) {
  auto listed = CallJson(client, "GET", SessionPath(id, "/files"));
  if (!listed) return std::unexpected(listed.error());
  const Json files = listed->value("files", Json::array());
  if (!files.is_array() || files.empty()) {
    PrintLine("no files: the agent uploaded nothing");
    return {};
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Fail(kExitUsage, fmt::format("cannot create {}: {}", dir, ec.message()));
  for (const auto& f : files) {
    std::string name = Str(f, "name");
    // The name was validated by the server (no '/', no leading '.'); check again before it
    // becomes a local path.
    if (name.empty() || name.find('/') != std::string::npos || name.front() == '.') continue;
    std::string dest = dir + "/" + name;
    auto bytes = DownloadFile(client, id, name, dest);
    if (!bytes) {
      PrintErr(bytes.error().message);
      continue;
    }
    PrintLine(fmt::format("artifact: {} ({} bytes)", Inert(dest), *bytes));
    if (!show || *bytes > 64 * 1024) continue;
    std::ifstream in(dest, std::ios::binary);
    std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!LooksLikeText(content)) continue;
    PrintLine(fmt::format("----- {} -----", Inert(name)));
    Print(content);
    if (!content.empty() && content.back() != '\n') PrintLine("");
    PrintLine(fmt::format("----- end of {} -----", Inert(name)));
  }
  return {};
}

// The files of --file, read and encoded for "files" at create. They travel in the create's
// body, so that they are in the working directory before the agent starts.
CliResult<Json> ReadRunFiles(const std::vector<std::string>& args) {
  auto parsed = ParseFileArgs(args);
  if (!parsed) {
    return Fail(kExitUsage, parsed.error().message);
  }
  Json files = Json::object();
  size_t total = 0;
  for (const auto& [name, path] : *parsed) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      return Fail(kExitUsage, fmt::format("--file {}: cannot read it", path));
    }
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    total += bytes.size();
    files[name] = Json{{"base64", Base64Encode(bytes)}};
  }
  // The create's body is held to the server's server.max_body_bytes (1 MiB by default).
  if (total > kMaxRunFileBytes) {
    return Fail(kExitUsage,
                fmt::format("--file: {} bytes in all; at most {} go in with the session (more "
                            "needs a larger server.max_body_bytes, or PUT "
                            "/v1/sessions/ID/files/NAME once it runs)",
                            total, kMaxRunFileBytes));
  }
  return files;
}

// Prints the session's log as it grows until the session ends (GET .../logs?follow=1): byte
// for byte into a pipe or a file; to a terminal inert, like everything else a sandbox wrote.
CliResult<void> ShowOutput(const ClientFlags& flags, const std::string& id) {
  HttpClientOptions options;
  options.stream_idle_timeout = std::chrono::milliseconds(0);  // A quiet command is not an error.
  auto client = MakeClient(flags, options);
  if (!client) {
    return std::unexpected(client.error());
  }
  const bool terminal = ::isatty(STDOUT_FILENO) == 1;
  InertStream inert;
  auto res = client->StreamBody(SessionPath(id, "/logs?follow=1"), {}, [&](std::string_view piece) {
    PrintRaw(terminal ? inert.Feed(piece) : std::string(piece));
    return true;
  });
  PrintRaw(inert.Finish());
  if (!res) {
    return std::unexpected(FromTransport(res.error()));
  }
  if (!res->ok()) {
    return std::unexpected(FromResponse(*res));
  }
  return {};
}

CliResult<int> CmdRun(const RunFlags& f) {
  Json body = {{"task", f.task}};
  if (!f.image.empty()) {
    body["image"] = f.image;
  }
  if (!f.backend.empty()) {
    body["backend"] = f.backend;
  }
  if (!f.model.empty()) {
    body["model"] = f.model;
  }
  using ParseArgs = Result<Json> (*)(const std::vector<std::string>&);
  for (const auto& [key, args, parse] :
       {std::tuple<const char*, const std::vector<std::string>*, ParseArgs>{"limits", &f.limits,
                                                                            &ParseLimitArgs},
        {"metadata", &f.meta, &ParseMetadataArgs},
        {"env", &f.env, &ParseEnvArgs}}) {
    if (args->empty()) continue;
    auto parsed = parse(*args);
    if (!parsed) {
      return Fail(kExitUsage, parsed.error().message);
    }
    body[key] = std::move(*parsed);
  }
  if (!f.egress_policy.empty() && (!f.allow.empty() || !f.allow_addresses.empty())) {
    return Fail(kExitUsage, "--egress-policy names a policy; it does not go with --allow");
  }
  if (!f.egress_policy.empty()) {
    body["egress"] = {{"policy", f.egress_policy}};
  } else if (!f.allow.empty() || !f.allow_addresses.empty()) {
    body["egress"] = {{"allow", f.allow}, {"allow_addresses", f.allow_addresses}};
  }
  if (!f.secrets.empty()) {
    if (!body.contains("egress")) body["egress"] = Json::object();
    body["egress"]["secrets"] = f.secrets;
  }
  if (!f.files.empty()) {
    auto files = ReadRunFiles(f.files);
    if (!files) {
      return std::unexpected(files.error());
    }
    body["files"] = std::move(*files);
  }
  if (f.command) {
    if (f.command->empty()) {
      return Fail(kExitUsage, "nothing after \"--\": give the command to run, or drop the \"--\"");
    }
    body["command"] = *f.command;
  }
  auto client = MakeClient(f.client);
  if (!client) {
    return std::unexpected(client.error());
  }
  auto created = CallJson(*client, "POST", "/v1/sessions", body);
  if (!created) {
    return std::unexpected(created.error());
  }
  std::string id = Str(*created, "id");
  if (id.empty()) {
    return Fail(kExitApi, "POST /v1/sessions answered without a session id");
  }
  if (f.json) {
    PrintJson(*created);
  } else {
    PrintLine(Inert(id));
  }
  if (f.detach) {
    return kExitOk;
  }
  std::string followed_state;
  if (f.command && !f.json) {
    // An own command: its output as it runs (the events are `airlock events ID`).
    if (auto shown = ShowOutput(f.client, id); !shown) {
      return std::unexpected(shown.error());
    }
  } else {
    auto followed = FollowEvents(*client, id, 0, f.json, /*reachable=*/true);
    if (!followed) {
      return std::unexpected(followed.error());
    }
    followed_state = followed->final_state;
  }
  auto final_session = CallJson(*client, "GET", SessionPath(id));
  if (!final_session) {
    return std::unexpected(final_session.error());
  }
  PrintFinal(*final_session, f.json);
  if (!f.download_dir.empty() && !f.json) {
    if (auto got = FetchArtifacts(*client, id, f.download_dir, f.show); !got)
      PrintErr(got.error().message);
  }
  std::string state = Str(*final_session, "state", followed_state);
  return state == "succeeded" ? kExitOk : kExitSessionFailed;
}

struct LsFlags {
  ClientFlags client;
  std::string state;
  int limit = 0;
  bool json = false;
};

std::string AgeOf(const Json& session, int64_t now) {
  auto created = ParseTimestamp(Str(session, "created_at"));
  return created ? FormatAge(now - *created) : "?";
}

CliResult<int> CmdLs(const LsFlags& f) {
  auto client = MakeClient(f.client);
  if (!client) {
    return std::unexpected(client.error());
  }
  std::string query;
  if (!f.state.empty()) {
    query += fmt::format("{}state={}", query.empty() ? "?" : "&", Escape(f.state));
  }
  if (f.limit > 0) {
    query += fmt::format("{}limit={}", query.empty() ? "?" : "&", f.limit);
  }
  auto res = CallJson(*client, "GET", "/v1/sessions" + query);
  if (!res) {
    return std::unexpected(res.error());
  }
  if (f.json) {
    PrintJson(*res);
    return kExitOk;
  }
  const Json sessions = res->value("sessions", Json::array());
  if (!sessions.is_array() || sessions.empty()) {
    PrintLine(f.state.empty() ? "no sessions" : fmt::format("no {} sessions", f.state));
    return kExitOk;
  }
  int64_t now = NowMillis();
  std::vector<std::vector<std::string>> rows;
  for (const auto& s : sessions) {
    const Json usage = s.value("usage", Json::object());
    rows.push_back(
        {Str(s, "id"), Str(s, "state"), Str(s, "backend"), Str(s, "image"), AgeOf(s, now),
         fmt::format("{}/{}", Str(usage, "input_tokens", "0"), Str(usage, "output_tokens", "0"))});
  }
  Print(FormatTable({"ID", "STATE", "BACKEND", "IMAGE", "AGE", "TOKENS"}, rows));
  return kExitOk;
}

struct IdFlags {
  ClientFlags client;
  std::string id;
  bool json = false;
};

std::string KeyValues(const Json& obj) {
  if (!obj.is_object() || obj.empty()) {
    return "-";
  }
  std::string out;
  for (const auto& [k, v] : obj.items()) {
    out += fmt::format("{}{}={}", out.empty() ? "" : " ", k,
                       v.is_string() ? v.get<std::string>() : DumpJson(v));
  }
  return out;
}

CliResult<int> CmdShow(const IdFlags& f) {
  auto client = MakeClient(f.client);
  if (!client) {
    return std::unexpected(client.error());
  }
  auto s = CallJson(*client, "GET", SessionPath(f.id));
  if (!s) {
    return std::unexpected(s.error());
  }
  if (f.json) {
    PrintJson(*s);
    return kExitOk;
  }
  auto messages = CallJson(*client, "GET", SessionPath(f.id, "/messages"));
  if (!messages) {
    return std::unexpected(messages.error());
  }
  int64_t now = NowMillis();
  std::vector<std::pair<std::string, std::string>> rows;
  rows.emplace_back("id", Str(*s, "id"));
  rows.emplace_back("state", Str(*s, "state"));
  if (s->contains("result")) {
    rows.emplace_back("result", Str(*s, "result"));
  }
  rows.emplace_back("backend", Str(*s, "backend", "-"));
  rows.emplace_back("image", Str(*s, "image", "-"));
  rows.emplace_back("model", Str(*s, "model", "-"));
  if (auto it = s->find("command"); it != s->end() && it->is_array() && !it->empty()) {
    std::vector<std::string> words;
    for (const auto& w : *it) {
      words.push_back(w.is_string() ? w.get<std::string>() : DumpJson(w));
    }
    rows.emplace_back("command", ShellJoin(words));
  } else {
    rows.emplace_back("command", "(the image's entrypoint)");
  }
  rows.emplace_back("created", fmt::format("{} ({} ago)", Str(*s, "created_at"), AgeOf(*s, now)));
  rows.emplace_back("updated", Str(*s, "updated_at"));
  const Json usage = s->value("usage", Json::object());
  double cost = usage.contains("cost_usd") && usage["cost_usd"].is_number()
                    ? usage["cost_usd"].get<double>()
                    : 0;
  rows.emplace_back(
      "usage",
      fmt::format("tokens in {} / out {}, {} LLM calls, ${:.4f}", Str(usage, "input_tokens", "0"),
                  Str(usage, "output_tokens", "0"), Str(usage, "llm_calls", "0"), cost));
  rows.emplace_back("limits", KeyValues(s->value("limits", Json::object())));
  rows.emplace_back("metadata", KeyValues(s->value("metadata", Json::object())));
  const Json msgs = messages->value("messages", Json::array());
  const Json pending = messages->value("pending", Json::array());
  std::string count = std::to_string(msgs.is_array() ? msgs.size() : 0);
  if (pending.is_array() && !pending.empty()) {
    count += fmt::format(" (+{} not yet taken by the agent)", pending.size());
  }
  rows.emplace_back("messages", count);
  std::string out;
  for (const auto& [k, v] : rows) {
    // One line per field, but the result may span lines: indented under its value.
    out += fmt::format("{:<10} {}\n", k + ":", k == "result" ? InertIndented(v, 11) : Inert(v));
  }
  Print(out);
  return kExitOk;
}

struct LogsFlags {
  ClientFlags client;
  std::string id;
  bool follow = false;
};

CliResult<int> CmdLogs(const LogsFlags& f) {
  if (f.follow) {
    if (auto shown = ShowOutput(f.client, f.id); !shown) {
      return std::unexpected(shown.error());
    }
    return kExitOk;
  }
  auto client = MakeClient(f.client);
  if (!client) {
    return std::unexpected(client.error());
  }
  auto res = client->Do("GET", SessionPath(f.id, "/logs"));
  if (!res) {
    return std::unexpected(FromTransport(res.error()));
  }
  if (!res->ok()) {
    return std::unexpected(FromResponse(*res));
  }
  // The sandbox's output goes out byte for byte into a pipe or a file; to a terminal it is
  // shown inert, like everything else a sandbox wrote.
  PrintRaw(::isatty(STDOUT_FILENO) == 1 ? Inert(res->body, /*multiline=*/true) : res->body);
  return kExitOk;
}

struct EventsFlags {
  ClientFlags client;
  std::string id;
  int64_t after = 0;
  bool follow = false;
  bool json = false;
};

CliResult<int> CmdEvents(const EventsFlags& f) {
  auto client = MakeClient(f.client);
  if (!client) {
    return std::unexpected(client.error());
  }
  if (f.follow) {
    auto followed = FollowEvents(*client, f.id, f.after, f.json, /*reachable=*/false);
    if (!followed) {
      return std::unexpected(followed.error());
    }
    return kExitOk;
  }
  constexpr int kPage = 1000;
  int64_t after = f.after;
  for (;;) {
    auto page = CallJson(*client, "GET",
                         SessionPath(f.id, fmt::format("/events?after={}&limit={}", after, kPage)),
                         std::nullopt, {{"Accept", "application/json"}});
    if (!page) {
      return std::unexpected(page.error());
    }
    if (!page->is_array()) {
      return Fail(kExitApi, "GET events answered with something other than a JSON array");
    }
    std::string out;
    for (const auto& e : *page) {
      out += (f.json ? InertJson(DumpJson(e)) : FormatEventLine(e)) + "\n";
      if (auto it = e.find("seq"); it != e.end() && it->is_number_integer()) {
        after = std::max(after, it->get<int64_t>());
      }
    }
    Print(out);
    if (page->size() < static_cast<size_t>(kPage)) {
      return kExitOk;
    }
  }
}

struct SendFlags {
  ClientFlags client;
  std::string id;
  std::string message;
  bool json = false;
};

CliResult<int> CmdSend(const SendFlags& f) {
  if (f.message.empty()) {
    return Fail(kExitUsage, "the message is empty");
  }
  auto client = MakeClient(f.client);
  if (!client) {
    return std::unexpected(client.error());
  }
  auto res =
      CallJson(*client, "POST", SessionPath(f.id, "/messages"), Json{{"content", f.message}});
  if (!res) {
    return std::unexpected(res.error());
  }
  if (f.json) {
    PrintJson(*res);
  } else {
    PrintLine(Inert(fmt::format("sent message {} to {}", Str(*res, "id", "?"), f.id)));
  }
  return kExitOk;
}

// kill, suspend, resume: one call that answers with the session.
// `body`: what to send, none when null.
CliResult<int> CmdTransition(const IdFlags& f, std::string_view method, std::string_view suffix,
                             const Json& body = nullptr) {
  auto client = MakeClient(f.client);
  if (!client) {
    return std::unexpected(client.error());
  }
  auto s = body.is_null() ? CallJson(*client, method, SessionPath(f.id, suffix))
                          : CallJson(*client, method, SessionPath(f.id, suffix), body);
  if (!s) {
    return std::unexpected(s.error());
  }
  if (f.json) {
    PrintJson(*s);
    return kExitOk;
  }
  std::string tier = Str(*s, "tier", "active");
  PrintLine(Inert(fmt::format("{} {}{}", Str(*s, "id", f.id), Str(*s, "state", "?"),
                              tier == "active" ? "" : " (" + tier + ")")));
  if (s->contains("result")) {
    PrintLine("result: " + InertIndented(Str(*s, "result"), 2));
  }
  return kExitOk;
}

struct ServeFlags {
  std::string home;
  std::string listen;
  std::string sandbox_listen;
  std::string config;
};

int CmdServe(const ServeFlags& f) {
  std::string home = f.home.empty() ? controlplane::DefaultHome() : f.home;
  std::optional<std::string> config_path;
  if (!f.config.empty()) {
    config_path = f.config;
  }
  auto config = controlplane::LoadConfig(config_path, home);
  if (!config) {
    PrintErr(config.error().message);
    return kExitUsage;
  }
  if (!f.listen.empty()) {
    auto hp = controlplane::ParseHostPort(f.listen);
    if (!hp) {
      PrintErr("--listen: " + hp.error().message);
      return kExitUsage;
    }
    config->operator_listen = *hp;
  }
  if (!f.sandbox_listen.empty()) {
    auto hp = controlplane::ParseHostPort(f.sandbox_listen);
    if (!hp) {
      PrintErr("--sandbox-listen: " + hp.error().message);
      return kExitUsage;
    }
    config->sandbox_listen = *hp;
  }
  return controlplane::RunServer(std::move(*config));
}

// ------------------------------------------------------------------ images (local)

// `airlock image ...` works on the image store under the data directory directly, as
// `airlock serve` does; it needs no running server.
struct ImageFlags {
  std::string home;
  std::string path;   // import
  std::string name;   // import --name; rm
  bool json = false;  // ls
};

std::string HumanBytes(uint64_t bytes) {
  constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  size_t unit = 0;
  while (v >= 1024 && unit + 1 < std::size(kUnits)) {
    v /= 1024;
    ++unit;
  }
  return unit == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", v, kUnits[unit]);
}

Failure FromImageError(const Error& e) {
  return Failure{e.code == ErrorCode::kNotFound ? kExitNotFound : kExitApi, e.message};
}

CliResult<images::ImageStore> OpenImages(const ImageFlags& f, bool show_progress) {
  // The store's own log lines would repeat the progress; warnings (neutralised entries) stay.
  log::Init(log::Level::kWarn, log::Format::kText);
  images::ImageStoreOptions options;
  std::string home = f.home.empty() ? controlplane::DefaultHome() : f.home;
  options.root = home + "/images";
  options.builtin_dir = images::DefaultBuiltinDir();
  if (show_progress) {
    options.on_progress = [](const images::ImportProgress& p) {
      using Stage = images::ImportProgress::Stage;
      switch (p.stage) {
        case Stage::kStaging:
          PrintErr("reading the archive");
          break;
        case Stage::kVerifying:
          if (p.layer == 0) {
            PrintErr(fmt::format("verifying {} layer{}", p.layers, p.layers == 1 ? "" : "s"));
          }
          break;
        case Stage::kLayerDone:
          PrintErr(fmt::format("layer {}/{} unpacked ({} in {} entries{})", p.layer + 1, p.layers,
                               HumanBytes(p.bytes), p.entries,
                               p.layer + 1 < p.layers ? " so far" : ""));
          break;
        case Stage::kReused:
          PrintErr(fmt::format("{} is unpacked already; adding the name", p.digest));
          break;
        case Stage::kDone:
          break;
      }
    };
  }
  auto store = images::ImageStore::Open(std::move(options));
  if (!store) {
    return Fail(kExitUsage, fmt::format("image store {}/images: {}", home, store.error().message));
  }
  return std::move(*store);
}

CliResult<int> CmdImageImport(const ImageFlags& f) {
  std::optional<std::string> name;
  if (!f.name.empty()) {
    auto normalized = images::NormalizeImageName(f.name);
    if (!normalized) {
      return Fail(kExitUsage, "--name: " + normalized.error().message);
    }
    name = *normalized;
  }
  auto store = OpenImages(f, /*show_progress=*/true);
  if (!store) {
    return std::unexpected(store.error());
  }
  auto info = store->Import(f.path, name);
  if (!info) {
    return std::unexpected(FromImageError(info.error()));
  }
  PrintLine(fmt::format("{} {} ({} layer{}, {}{})", info->name, info->digest, info->layers,
                        info->layers == 1 ? "" : "s", HumanBytes(info->size_bytes),
                        info->reused ? ", reused" : ""));
  return kExitOk;
}

CliResult<int> CmdImageLs(const ImageFlags& f) {
  auto store = OpenImages(f, /*show_progress=*/false);
  if (!store) {
    return std::unexpected(store.error());
  }
  auto list = store->List();
  if (!list) {
    return std::unexpected(FromImageError(list.error()));
  }
  if (f.json) {
    Json out = {{"images", Json::array()}};
    for (const images::ImageInfo& i : *list) {
      out["images"].push_back({{"name", i.name},
                               {"digest", i.digest},
                               {"format", i.format},
                               {"layers", i.layers},
                               {"size_bytes", i.size_bytes},
                               {"imported_at", FormatTimestamp(i.imported_at_ms)}});
    }
    PrintJson(out);
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows;
  int64_t now = NowMillis();
  for (const images::ImageInfo& i : *list) {
    rows.push_back({i.name, i.digest.substr(0, 19), std::to_string(i.layers),
                    HumanBytes(i.size_bytes), FormatAge(now - i.imported_at_ms)});
  }
  Print(FormatTable({"NAME", "DIGEST", "LAYERS", "SIZE", "IMPORTED"}, rows));
  return kExitOk;
}

CliResult<int> CmdImageRm(const ImageFlags& f) {
  auto store = OpenImages(f, /*show_progress=*/false);
  if (!store) {
    return std::unexpected(store.error());
  }
  if (auto removed = store->Remove(f.name); !removed) {
    return std::unexpected(FromImageError(removed.error()));
  }
  PrintLine("removed " + f.name);
  return kExitOk;
}

// ------------------------------------------------------------------ the command line

int Finish(const CliResult<int>& r) {
  if (!r) {
    PrintErr(r.error().message);
    return r.error().exit_code;
  }
  return *r;
}

CLI::App* AddIdCommand(CLI::App& app, const char* name, const char* description, const char* footer,
                       IdFlags* flags, bool with_json) {
  CLI::App* cmd = app.add_subcommand(name, description);
  cmd->add_option("ID", flags->id, "Session id (ses_...)")->required();
  if (with_json) {
    cmd->add_flag("--json", flags->json, "Print the session object as JSON");
  }
  AddClientFlags(cmd, &flags->client);
  cmd->footer(footer);
  return cmd;
}

struct FilesFlags {
  ClientFlags client;
  std::string id;
  std::string name;
  std::string output;
  bool json = false;
};

CliResult<int> CmdFilesLs(const FilesFlags& f) {
  auto client = MakeClient(f.client);
  if (!client) return std::unexpected(client.error());
  auto res = CallJson(*client, "GET", SessionPath(f.id, "/files"));
  if (!res) return std::unexpected(res.error());
  if (f.json) {
    PrintJson(*res);
    return kExitOk;
  }
  const Json files = res->value("files", Json::array());
  if (!files.is_array() || files.empty()) {
    PrintLine("no files");
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& file : files)
    rows.push_back({Str(file, "name"), Str(file, "size"), Str(file, "created_at")});
  Print(FormatTable({"NAME", "SIZE", "CREATED"}, rows));
  return kExitOk;
}

CliResult<int> CmdFilesGet(const FilesFlags& f) {
  auto client = MakeClient(f.client);
  if (!client) return std::unexpected(client.error());
  std::string dest = f.output.empty() ? f.name : f.output;
  if (f.output.empty() && (f.name.find('/') != std::string::npos || f.name.starts_with("."))) {
    return Fail(kExitUsage, "give -o PATH for this name");
  }
  auto bytes = DownloadFile(*client, f.id, f.name, dest);
  if (!bytes) return std::unexpected(bytes.error());
  if (dest != "-") PrintLine(fmt::format("{} ({} bytes)", Inert(dest), *bytes));
  return kExitOk;
}

// `airlock gc`: POST /v1/admin/gc, then one line of what went (or would go).
struct GcFlags {
  ClientFlags client;
  std::string older_than;
  bool dry_run = false;
  bool json = false;
  int max_sessions = 0;
};

CliResult<int> CmdGc(const GcFlags& f) {
  auto client = MakeClient(f.client);
  if (!client) return std::unexpected(client.error());
  Json body = Json::object();
  if (!f.older_than.empty()) body["older_than"] = f.older_than;
  if (f.dry_run) body["dry_run"] = true;
  if (f.max_sessions > 0) body["max_sessions"] = f.max_sessions;
  auto r = CallJson(*client, "POST", "/v1/admin/gc", body);
  if (!r) return std::unexpected(r.error());
  if (f.json) {
    PrintLine(InertJson(DumpJson(*r)));
    return kExitOk;
  }
  auto num = [&](const char* key) { return r->value(key, int64_t{0}); };
  auto bytes = [&](const char* key) {
    return HumanBytes(static_cast<uint64_t>(std::max<int64_t>(num(key), 0)));
  };
  PrintLine(
      fmt::format("{} {} ended session(s): {} events and {} messages ({}) from the database, "
                  "{} file(s) ({}), {} of logs and working directories",
                  f.dry_run ? "would delete the contents of" : "deleted the contents of",
                  num("sessions"), num("events"), num("messages"), bytes("database_bytes"),
                  num("files"), bytes("file_bytes"), bytes("log_bytes")));
  if (!f.dry_run && num("released_pages") > 0) {
    PrintLine(fmt::format("the database file gave {} pages back to the file system",
                          num("released_pages")));
  }
  if (r->value("more", false)) {
    PrintLine("more sessions qualify: run it again (or raise --max-sessions)");
  }
  int exit_code = kExitOk;
  if (auto errors = r->find("errors"); errors != r->end() && errors->is_array()) {
    for (const auto& e : *errors) {
      if (!e.is_string()) continue;
      PrintErr("skipped " + Inert(e.get<std::string>()));
      exit_code = kExitApi;
    }
  }
  return exit_code;
}

int Main(int argc, char** argv) {
  std::vector<std::string> raw(argv, argv + argc);
  if (raw.empty()) {
    raw.emplace_back("airlock");
  }
  SplitArgs split = SplitRunCommand(std::move(raw));

  CLI::App app{"Airlock: run AI agents in sandboxes, and drive them from the command line."};
  app.name("airlock");
  app.require_subcommand(0, 1);
  app.set_version_flag("--version", "airlock " AIRLOCK_VERSION);
  app.footer(kExitCodesFooter);
  app.get_formatter()->column_width(34);

  // serve
  ServeFlags serve;
  CLI::App* serve_cmd =
      app.add_subcommand("serve", "Run the control plane (operator and sandbox APIs)");
  serve_cmd
      ->add_option("--home", serve.home,
                   "Data directory: database, operator.key, session files (default: "
                   "$AIRLOCK_HOME, else ~/.local/share/airlock)")
      ->type_name("DIR");
  serve_cmd->add_option("--listen", serve.listen, "Operator API address (default 127.0.0.1:7400)")
      ->type_name("HOST:PORT");
  serve_cmd
      ->add_option("--sandbox-listen", serve.sandbox_listen,
                   "Sandbox API address (default 127.0.0.1:7401)")
      ->type_name("HOST:PORT");
  serve_cmd->add_option("--config", serve.config, "TOML configuration file; flags override it")
      ->type_name("FILE");
  serve_cmd->footer(R"(On first start it creates DIR, its database and DIR/operator.key (mode 0600),
which the other commands read. It runs until SIGTERM or SIGINT, then drains.
The HTTP API is described in docs/api.md; the operator listener serves its OpenAPI
document at GET /openapi.json (no key needed).

Examples:
  airlock serve
  airlock serve --home /var/lib/airlock --listen 127.0.0.1:7400 --config /etc/airlock.toml)");

  // run
  RunFlags run;
  run.command = split.command;
  CLI::App* run_cmd =
      app.add_subcommand("run", "Start a session for TASK and follow it to the end");
  run_cmd->add_option("TASK", run.task, "What the agent should do (the first user message)")
      ->required();
  run_cmd
      ->add_option("--image", run.image,
                   "Sandbox image: base, host or NAME:TAG (server default: base)")
      ->type_name("IMAGE");
  run_cmd
      ->add_option("--backend", run.backend,
                   "Sandbox backend, e.g. oci (server default from its config)")
      ->type_name("NAME");
  run_cmd
      ->add_option("--model", run.model, "Model alias from the server's config (default: default)")
      ->type_name("ALIAS");
  run_cmd
      ->add_option("--limit", run.limits,
                   "A resource limit, repeatable: memory_mb, cpus, pids, disk_mb, timeout_s, "
                   "idle_timeout_s, max_tokens, max_cost_usd")
      ->type_name("KEY=VALUE")
      ->allow_extra_args(false);
  run_cmd->add_option("--meta", run.meta, "Metadata stored with the session, repeatable")
      ->type_name("KEY=VALUE")
      ->allow_extra_args(false);
  run_cmd
      ->add_option("--env", run.env,
                   "A variable for the agent, repeatable (not for secrets: names that look like "
                   "credentials are refused)")
      ->type_name("NAME=VALUE")
      ->allow_extra_args(false);
  run_cmd
      ->add_option("--file", run.files,
                   "A local file put into the agent's working directory before it starts, "
                   "repeatable (NAME=PATH to rename it)")
      ->type_name("PATH")
      ->allow_extra_args(false);
  run_cmd
      ->add_option("--allow", run.allow,
                   "A host the sandbox may reach through the egress gateway, repeatable "
                   "(\"pypi.org\", \"*.github.com\", \"host:PORT\"); within the server's "
                   "[egress]")
      ->type_name("HOST")
      ->allow_extra_args(false);
  run_cmd
      ->add_option("--allow-address", run.allow_addresses,
                   "An exact ADDRESS:PORT the sandbox may reach, repeatable")
      ->type_name("ADDR:PORT")
      ->allow_extra_args(false);
  run_cmd
      ->add_option("--egress-policy", run.egress_policy,
                   "One of the server's [egress.policies] instead of --allow")
      ->type_name("NAME");
  run_cmd
      ->add_option("--secret", run.secrets,
                   "One of the server's [secrets.NAME], repeatable: the agent gets its "
                   "placeholder, and the gateway adds the value for the secret's hosts")
      ->type_name("NAME")
      ->allow_extra_args(false);
  run_cmd->add_flag("--detach,-d", run.detach, "Print the session id and return at once");
  run_cmd->add_flag("--json", run.json,
                    "JSON lines: the created session, each event, then the final session");
  run_cmd
      ->add_option("--download", run.download_dir,
                   "At the end, download the session's files (the agent's artifacts) into DIR")
      ->type_name("DIR");
  run_cmd->add_flag("--show", run.show, "With --download: print the small text files too");
  AddClientFlags(run_cmd, &run.client);
  run_cmd->footer(R"(Everything after "--" is the command run in the sandbox instead of the image's
entrypoint (the reference agent); its output is shown as it runs. Otherwise it
prints the session id, then one line per event until the session ends; then the
final state and result. Ctrl-C stops following;
the session keeps running (`airlock kill ID` stops it). Exits 0 if the session
succeeded, 1 if it failed or was killed.

Examples:
  airlock run "summarise README.md"
  airlock run --limit timeout_s=600 --limit memory_mb=512 --meta ticket=42 "fix the tests"
  ID=$(airlock run --detach "long job") && airlock events "$ID" --follow
  airlock run --download out --show "write a haiku about sandboxes to haiku.txt and upload it"
  airlock run --file data.csv --env REPORT_LANG=en "summarise data.csv into report.md"
  airlock run "hello" -- sh -c 'echo "$SESSION_ID"')");

  // ls
  LsFlags ls;
  CLI::App* ls_cmd = app.add_subcommand("ls", "List sessions, newest first");
  ls_cmd->add_option("--state", ls.state, "Only sessions in this state")
      ->check(CLI::IsMember({"starting", "running", "suspended", "succeeded", "failed", "killed"}))
      ->type_name("STATE");
  ls_cmd->add_option("--limit", ls.limit, "At most N sessions")
      ->check(CLI::Range(1, 1000))
      ->type_name("N");
  ls_cmd->add_flag("--json", ls.json, "Print the API's answer as JSON");
  AddClientFlags(ls_cmd, &ls.client);
  ls_cmd->footer(R"(Columns: ID, STATE, BACKEND, IMAGE, AGE (since creation), TOKENS (input/output).

Examples:
  airlock ls
  airlock ls --state running --limit 20
  airlock ls --json | jq -r '.sessions[].id')");

  // show
  IdFlags show;
  AddIdCommand(app, "show", "Show one session", R"(Examples:
  airlock show ses_abc...
  airlock show ses_abc... --json | jq .usage)",
               &show, true);

  // logs
  LogsFlags logs;
  CLI::App* logs_cmd =
      app.add_subcommand("logs", "Print a session's sandbox output (stdout and stderr)");
  logs_cmd->add_option("ID", logs.id, "Session id (ses_...)")->required();
  logs_cmd->add_flag("--follow,-f", logs.follow, "Keep printing output as it comes");
  AddClientFlags(logs_cmd, &logs.client);
  logs_cmd->footer(R"(Examples:
  airlock logs ses_abc...
  airlock logs -f ses_abc...)");

  // events
  EventsFlags events;
  CLI::App* events_cmd = app.add_subcommand("events", "Print a session's events");
  events_cmd->add_option("ID", events.id, "Session id (ses_...)")->required();
  events_cmd->add_option("--after", events.after, "Only events after sequence number N")
      ->check([](const std::string& v) -> std::string {
        bool digits =
            !v.empty() && v.size() <= 18 && v.find_first_not_of("0123456789") == std::string::npos;
        return digits ? "" : "must be a non-negative integer";
      })
      ->type_name("N");
  events_cmd->add_flag("--follow,-f", events.follow,
                       "Keep printing new events until the session ends");
  events_cmd->add_flag("--json", events.json, "One JSON object per line");
  AddClientFlags(events_cmd, &events.client);
  events_cmd->footer(R"(Each line: local time, sequence number, type, a summary of the data.

Examples:
  airlock events ses_abc...
  airlock events ses_abc... --follow --after 12
  airlock events ses_abc... --json | jq -c 'select(.type == "session.state")')");

  // send
  SendFlags send;
  CLI::App* send_cmd = app.add_subcommand("send", "Send a follow-up message to a session's agent");
  send_cmd->add_option("ID", send.id, "Session id (ses_...)")->required();
  send_cmd->add_option("MESSAGE", send.message, "The message")->required();
  send_cmd->add_flag("--json", send.json, "Print the API's answer as JSON");
  AddClientFlags(send_cmd, &send.client);
  send_cmd->footer(R"(A suspended session is resumed to take it.

Examples:
  airlock send ses_abc... "now also update the changelog")");

  IdFlags kill, suspend, resume;
  AddIdCommand(app, "kill", "Stop a session: destroy its sandbox, keep its history",
               R"(Killing a session that has already ended changes nothing and prints its state.

Examples:
  airlock kill ses_abc...)",
               &kill, true);
  bool hibernate = false;
  CLI::App* suspend_cmd = AddIdCommand(
      app, "suspend", "Pause a running session's sandbox, or hibernate it",
      R"(Paused: no CPU, memory kept, wakes in milliseconds. Hibernated: a microvm's memory goes
to disk and its QEMU exits; an oci sandbox is let go, and the next message starts a fresh
one that carries on from the stored conversation (what its agent kept in memory is lost).
A message or `airlock resume` wakes either.

Examples:
  airlock suspend ses_abc...
  airlock suspend --hibernate ses_abc...)",
      &suspend, true);
  suspend_cmd->add_flag("--hibernate", hibernate,
                        "Hibernate instead of pausing (also a session already paused)");
  AddIdCommand(app, "resume", "Resume a suspended session", R"(Examples:
  airlock resume ses_abc...)",
               &resume, true);

  // image
  ImageFlags image;
  CLI::App* image_cmd = app.add_subcommand("image", "Import, list and remove sandbox images");
  image_cmd->require_subcommand(1);
  auto add_home = [&image](CLI::App* cmd) {
    cmd->add_option("--home", image.home,
                    "Data directory; the images are in DIR/images (default: $AIRLOCK_HOME, "
                    "else ~/.local/share/airlock)")
        ->type_name("DIR");
  };
  image_cmd->footer(R"(These commands work on the local data directory; no server is needed. The
built-in images need no import: "host" (the host's /usr, read-only) and "base"
(busybox, imported on first use). A refused image (bad digest, an entry that
escapes the image, over a size limit) exits 6; an unknown name exits 5.)");
  CLI::App* image_import_cmd = image_cmd->add_subcommand(
      "import", "Import an OCI image layout (directory or .tar) or a `docker save` tarball");
  image_import_cmd->add_option("PATH", image.path, "Layout directory or archive")->required();
  image_import_cmd
      ->add_option("--name", image.name,
                   "Name for the image (default: the name the archive gives it)")
      ->type_name("NAME:TAG");
  add_home(image_import_cmd);
  image_import_cmd->footer(R"(Examples:
  docker save python:3.12-slim -o python.tar && airlock image import python.tar
  skopeo copy docker://alpine:3.20 oci-archive:alpine.tar && airlock image import alpine.tar --name alpine:3.20
  airlock run --image alpine:3.20 "hello")");
  CLI::App* image_ls_cmd = image_cmd->add_subcommand("ls", "List imported images");
  image_ls_cmd->add_flag("--json", image.json, "Print {\"images\": [...]} as JSON");
  add_home(image_ls_cmd);
  CLI::App* image_rm_cmd = image_cmd->add_subcommand("rm", "Remove an image name");
  image_rm_cmd->add_option("NAME", image.name, "Image name (NAME:TAG)")->required();
  add_home(image_rm_cmd);
  image_rm_cmd->footer(R"(The unpacked files go when no other name points at them. Sandboxes already
running from the image keep it until they end.)");

  // files
  std::string files_home;
  CLI::App* files_cmd =
      app.add_subcommand("files", "List and download a session's files; manage URL signing keys");
  files_cmd->require_subcommand(1);
  FilesFlags files;
  CLI::App* files_ls_cmd = files_cmd->add_subcommand("ls", "List a session's files");
  files_ls_cmd->add_option("ID", files.id, "Session id (ses_...)")->required();
  files_ls_cmd->add_flag("--json", files.json, "Print the API's answer as JSON");
  AddClientFlags(files_ls_cmd, &files.client);
  CLI::App* files_get_cmd = files_cmd->add_subcommand("get", "Download one of a session's files");
  files_get_cmd->add_option("ID", files.id, "Session id (ses_...)")->required();
  files_get_cmd->add_option("NAME", files.name, "File name")->required();
  files_get_cmd
      ->add_option("-o,--output", files.output, "Where to write it (default: ./NAME; - for stdout)")
      ->type_name("PATH");
  AddClientFlags(files_get_cmd, &files.client);
  files_get_cmd->footer(R"(Examples:
  airlock files ls ses_abc...
  airlock files get ses_abc... report.md -o - | less)");
  CLI::App* rotate_cmd = files_cmd->add_subcommand(
      "rotate-key", "Add a new key that signs file URLs from now on; older keys still verify");
  rotate_cmd
      ->add_option("--home", files_home,
                   "Data directory; the keys are DIR/file-signing.keys (default: $AIRLOCK_HOME, "
                   "else ~/.local/share/airlock)")
      ->type_name("DIR");
  rotate_cmd->footer(
      R"(Restart `airlock serve` to sign with the new key. URLs signed with an older key
keep working until they expire; delete the old key's line from the file once they have (at
most files.max_expiry_s later) to stop honouring them.)");

  // gc
  GcFlags gc;
  CLI::App* gc_cmd = app.add_subcommand(
      "gc", "Delete what ended sessions left behind (events, conversation, files, logs) now");
  gc_cmd
      ->add_option(
          "--older-than", gc.older_than,
          "Sessions that ended at least this long ago, e.g. 30d, 12h, 3600s (default: the server's "
          "retention.ended_sessions_after)")
      ->type_name("DURATION");
  gc_cmd->add_flag("--dry-run", gc.dry_run, "Only count what would be deleted");
  gc_cmd
      ->add_option("--max-sessions", gc.max_sessions,
                   "At most this many sessions in one go (server default 1000)")
      ->type_name("N")
      ->check(CLI::Range(1, 100000));
  gc_cmd->add_flag("--json", gc.json, "Print the API's answer as JSON");
  AddClientFlags(gc_cmd, &gc.client);
  gc_cmd->footer(
      R"(The server applies retention.ended_sessions_after by itself every retention.interval;
this runs a pass now, against the running server. Each session keeps its record (id, state,
result, usage), so `airlock ls` and usage reports stay right; `airlock events` and
`airlock show` of it find no events or messages any more. Live sessions are never touched.

Examples:
  airlock gc --dry-run --older-than 30d
  airlock gc --older-than 7d)");

  CLI::App* version_cmd = app.add_subcommand("version", "Print the version");

  std::vector<char*> args;
  for (auto& a : split.args) {
    args.push_back(a.data());
  }
  try {
    app.parse(static_cast<int>(args.size()), args.data());
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kExitUsage;
  }

  if (split.command && !app.got_subcommand(run_cmd)) {
    PrintErr("\"--\" followed by a command is only for `airlock run`");
    return kExitUsage;
  }
  if (app.got_subcommand(serve_cmd)) {
    return CmdServe(serve);
  }
  if (app.got_subcommand(run_cmd)) {
    return Finish(CmdRun(run));
  }
  if (app.got_subcommand(ls_cmd)) {
    return Finish(CmdLs(ls));
  }
  if (app.got_subcommand("show")) {
    return Finish(CmdShow(show));
  }
  if (app.got_subcommand(logs_cmd)) {
    return Finish(CmdLogs(logs));
  }
  if (app.got_subcommand(events_cmd)) {
    return Finish(CmdEvents(events));
  }
  if (app.got_subcommand(send_cmd)) {
    return Finish(CmdSend(send));
  }
  if (app.got_subcommand("kill")) {
    return Finish(CmdTransition(kill, "DELETE", ""));
  }
  if (app.got_subcommand("suspend")) {
    return Finish(CmdTransition(suspend, "POST", "/suspend",
                                Json{{"mode", hibernate ? "hibernate" : "pause"}}));
  }
  if (app.got_subcommand("resume")) {
    return Finish(CmdTransition(resume, "POST", "/resume"));
  }
  if (app.got_subcommand(image_cmd)) {
    if (image_cmd->got_subcommand(image_import_cmd)) {
      return Finish(CmdImageImport(image));
    }
    if (image_cmd->got_subcommand(image_ls_cmd)) {
      return Finish(CmdImageLs(image));
    }
    return Finish(CmdImageRm(image));
  }
  if (app.got_subcommand(files_cmd) && files_cmd->got_subcommand(files_ls_cmd)) {
    return Finish(CmdFilesLs(files));
  }
  if (app.got_subcommand(files_cmd) && files_cmd->got_subcommand(files_get_cmd)) {
    return Finish(CmdFilesGet(files));
  }
  if (app.got_subcommand(files_cmd)) {
    std::string path =
        (files_home.empty() ? controlplane::DefaultHome() : files_home) + "/file-signing.keys";
    auto kid = files::RotateSigningKey(path);
    if (!kid) {
      PrintErr(kid.error().message);
      return kExitUsage;
    }
    PrintLine(fmt::format("new signing key {} in {}", *kid, path));
    return kExitOk;
  }
  if (app.got_subcommand(gc_cmd)) {
    return Finish(CmdGc(gc));
  }
  if (app.got_subcommand(version_cmd)) {
    PrintLine("airlock " AIRLOCK_VERSION);
    return kExitOk;
  }
  std::fputs(app.help().c_str(), stderr);
  return kExitUsage;
}

}  // namespace

int RunCli(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {
    PrintErr(fmt::format("internal error: {}", e.what()));
  } catch (...) {
    PrintErr("internal error");
  }
  return kExitApi;
}

}  // namespace airlock::cli
