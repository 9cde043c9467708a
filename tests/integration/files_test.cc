// Session files through the embedded (local) blob store, over real sockets: the sandbox asks
// for a presigned URL with its token and moves the bytes with nothing but that URL; every
// tampered, expired or cross-session use is refused with the JSON error.
#include <sys/socket.h>

#include <filesystem>
#include <thread>

#include "common/url.h"
#include "controlplane/file_service.h"
#include "tests/integration/harness.h"

namespace airlock::testing {
namespace {

using http::verb;
using namespace std::chrono_literals;

class FilesTest : public ::testing::Test {
 protected:
  explicit FilesTest(std::function<void(controlplane::Config&)> tweak = {}) {
    server_ = std::make_unique<TestServer>(std::move(tweak));
  }

  // POST /sandbox/v1/files/presign; returns the answer.
  HttpResult Presign(const std::string& token, const Json& body) {
    return server_->Sb(verb::post, "/sandbox/v1/files/presign", token, DumpJson(body));
  }

  // The path and query of a presigned URL (the test talks to the sandbox listener itself).
  static std::string Target(const std::string& url) {
    size_t p = url.find("/sandbox/v1/files/");
    return url.substr(p);
  }

  std::string PutUrl(const std::string& token, const std::string& name,
                     std::optional<int64_t> size = {}) {
    Json body{{"name", name}, {"method", "PUT"}};
    if (size) body["size"] = *size;
    auto r = Presign(token, body);
    EXPECT_EQ(r.status, 200u) << r.body;
    return Target(r.json()["url"]);
  }

  std::string GetUrl(const std::string& token, const std::string& name) {
    auto r = Presign(token, Json{{"name", name}, {"method", "GET"}});
    EXPECT_EQ(r.status, 200u) << r.body;
    return Target(r.json()["url"]);
  }

  HttpResult Put(const std::string& target, const std::string& body) {
    return HttpCall(server_->sb_port(), verb::put, target, "", body);
  }
  HttpResult Get(const std::string& target, std::map<std::string, std::string> headers = {}) {
    return HttpCall(server_->sb_port(), verb::get, target, "", "", std::move(headers));
  }

  std::unique_ptr<TestServer> server_;
};

// Replaces the value of query parameter `key` in `target`.
std::string WithParam(std::string target, const std::string& key, const std::string& value) {
  size_t at = target.find(key + "=");
  size_t end = target.find('&', at);
  return target.replace(at + key.size() + 1,
                        (end == std::string::npos ? target.size() : end) - at - key.size() - 1,
                        value);
}

TEST_F(FilesTest, UploadListDownloadWithPresignedUrls) {
  auto [id, token] = server_->NewSession();
  auto answer = Presign(token, Json{{"name", "report.md"}, {"method", "PUT"}, {"size", 11}});
  ASSERT_EQ(answer.status, 200u) << answer.body;
  Json j = answer.json();
  EXPECT_EQ(j["method"], "PUT");
  EXPECT_TRUE(j["url"].get<std::string>().starts_with("http://127.0.0.1"))
      << "the Host the sandbox used";
  EXPECT_TRUE(j["headers"].is_object());
  EXPECT_FALSE(j["expires_at"].get<std::string>().empty());
  auto up = Put(Target(j["url"]), "hello world");
  ASSERT_EQ(up.status, 201u) << up.body;
  EXPECT_EQ(up.json()["size"], 11);

  auto list = server_->Op(verb::get, "/v1/sessions/" + id + "/files");
  ASSERT_EQ(list.status, 200u);
  ASSERT_EQ(list.json()["files"].size(), 1u);
  EXPECT_EQ(list.json()["files"][0]["name"], "report.md");
  EXPECT_EQ(list.json()["files"][0]["size"], 11);

  auto down = Get(GetUrl(token, "report.md"));
  EXPECT_EQ(down.status, 200u);
  EXPECT_EQ(down.body, "hello world");
  auto op = server_->Op(verb::get, "/v1/sessions/" + id + "/files/report.md");
  EXPECT_EQ(op.status, 200u);
  EXPECT_EQ(op.body, "hello world");
  EXPECT_EQ(server_->Op(verb::get, "/v1/sessions/" + id + "/files/nothing.txt").status, 404u);

  auto head = HttpCall(server_->sb_port(), verb::head, GetUrl(token, "report.md"));
  EXPECT_EQ(head.status, 200u);
  EXPECT_EQ(head.headers["Content-Length"], "11");
  auto part = Get(GetUrl(token, "report.md"), {{"Range", "bytes=6-"}});
  EXPECT_EQ(part.status, 206u);
  EXPECT_EQ(part.body, "world");
  EXPECT_EQ(part.headers["Content-Range"], "bytes 6-10/11");
  auto tail = Get(GetUrl(token, "report.md"), {{"Range", "bytes=-5"}});
  EXPECT_EQ(tail.body, "world");
  EXPECT_EQ(Get(GetUrl(token, "report.md"), {{"Range", "bytes=50-60"}}).status, 416u);
  // Events tell the operator what happened.
  auto events = server_->Op(verb::get, "/v1/sessions/" + id + "/events", "",
                            {{"Accept", "application/json"}});
  EXPECT_NE(events.body.find("file.uploaded"), std::string::npos);
}

TEST_F(FilesTest, TamperedUrlsAreRefusedWithTheJsonError) {
  auto [id, token] = server_->NewSession();
  std::string put = PutUrl(token, "a.txt", 5);
  ASSERT_EQ(Put(put, "12345").status, 201u);
  std::string get = GetUrl(token, "a.txt");
  std::string sig = get.substr(get.find("sig=") + 4);
  std::string flipped = sig;
  flipped[0] = flipped[0] == 'a' ? 'b' : 'a';

  std::vector<std::pair<std::string, std::string>> cases = {
      {"signature", WithParam(get, "sig", flipped)},
      {"no signature", get.substr(0, get.find("&sig="))},
      {"expiry", WithParam(get, "expires", "99999999999")},
      {"size", WithParam(put, "max", "999999999")},
      {"key id", WithParam(get, "kid", "00000000")},
      {"name",
       [&] {
         std::string t = get;
         t.replace(t.find("a.txt"), 5, "b.txt");
         return t;
       }()},
  };
  for (const auto& [what, target] : cases) {
    auto r = target.find("max=0") == std::string::npos ? Put(target, "12345") : Get(target);
    EXPECT_EQ(r.status, 403u) << what << ": " << r.body;
    EXPECT_EQ(r.error_code(), "permission_denied") << what;
  }
  // A GET URL does not upload, a PUT URL does not download.
  EXPECT_EQ(Put(get, "xxxxx").status, 403u);
  EXPECT_EQ(Get(put).status, 403u);
  // Nothing was changed by any of it.
  EXPECT_EQ(Get(GetUrl(token, "a.txt")).body, "12345");
}

TEST_F(FilesTest, ExpiredUrlsAreRefused) {
  auto [id, token] = server_->NewSession();
  auto r = Presign(token, Json{{"name", "late.txt"}, {"method", "PUT"}, {"expires_s", 1}});
  ASSERT_EQ(r.status, 200u);
  std::string put = Target(r.json()["url"]);
  std::this_thread::sleep_for(2100ms);
  auto late = Put(put, "x");
  EXPECT_EQ(late.status, 403u);
  EXPECT_NE(late.body.find("expired"), std::string::npos);
  EXPECT_EQ(Presign(token, Json{{"name", "x"}, {"method", "GET"}, {"expires_s", 999999}}).status,
            400u)
      << "beyond files.max_expiry_s";
}

TEST_F(FilesTest, OneSessionsUrlIsUselessForAnothersFiles) {
  auto [a, token_a] = server_->NewSession();
  auto [b, token_b] = server_->NewSession();
  std::string put_b = PutUrl(token_b, "secret.txt", 6);
  ASSERT_EQ(Put(put_b, "b-data").status, 201u);
  // A's URL with B's session swapped in.
  std::string get_a = GetUrl(token_a, "secret.txt");
  std::string forged = get_a;
  forged.replace(forged.find(a), a.size(), b);
  EXPECT_EQ(Get(forged).status, 403u);
  // A presign always names the token's own session: A cannot reach B's file.
  EXPECT_EQ(Get(get_a).status, 404u);
  EXPECT_EQ(server_->Op(verb::get, "/v1/sessions/" + a + "/files").json()["files"].size(), 0u);
}

TEST_F(FilesTest, BadNamesAndBodiesAreRefused) {
  auto [id, token] = server_->NewSession();
  for (const char* name : {"", "..", ".hidden", "a/b", "a\\b", "tab\there"}) {
    auto r = Presign(token, Json{{"name", name}, {"method", "PUT"}});
    EXPECT_EQ(r.status, 400u) << name;
  }
  EXPECT_EQ(Presign(token, Json{{"name", std::string(256, 'a')}, {"method", "PUT"}}).status, 400u);
  EXPECT_EQ(Presign(token, Json{{"name", "a"}, {"method", "DELETE"}}).status, 400u);
  EXPECT_EQ(Presign(token, Json{{"name", "a"}, {"method", "PUT"}, {"size", -1}}).status, 413u);
  EXPECT_EQ(Presign(token, Json{{"name", "a"}, {"method", "PUT"}, {"bucket", "x"}}).status, 400u);
  EXPECT_EQ(
      server_->Sb(verb::post, "/sandbox/v1/files/presign", "", R"({"name":"a","method":"PUT"})")
          .status,
      401u);
  // Percent-encoded names arrive intact.
  std::string put = PutUrl(token, "my report (1).txt", 2);
  EXPECT_NE(put.find("%20"), std::string::npos);
  EXPECT_EQ(Put(put, "ok").status, 201u);
  EXPECT_EQ(server_->Op(verb::get, "/v1/sessions/" + id + "/files").json()["files"][0]["name"],
            "my report (1).txt");
}

TEST_F(FilesTest, AnUploadLargerThanSignedIsCutOffAndLeavesNothing) {
  auto [id, token] = server_->NewSession();
  std::string put = PutUrl(token, "big.bin", 10);
  auto r = Put(put, std::string(11, 'x'));
  EXPECT_EQ(r.status, 413u);
  EXPECT_EQ(server_->Op(verb::get, "/v1/sessions/" + id + "/files").json()["files"].size(), 0u);
}

TEST_F(FilesTest, AnInterruptedUploadLeavesNothingPartial) {
  auto [id, token] = server_->NewSession();
  std::string put = PutUrl(token, "half.bin");
  int fd = RawConnect(server_->sb_port());
  ASSERT_GE(fd, 0);
  std::string head =
      "PUT " + put + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n";
  ASSERT_TRUE(WriteAll(fd, head + std::string(300000, 'x')));
  std::this_thread::sleep_for(200ms);
  ::close(fd);
  std::string dir = server_->home() + "/files/" + id;
  // The server notices the close and removes the partial file.
  for (int i = 0; i < 100 && std::filesystem::exists(dir) && !std::filesystem::is_empty(dir); ++i) {
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_TRUE(!std::filesystem::exists(dir) || std::filesystem::is_empty(dir));
  EXPECT_EQ(server_->Op(verb::get, "/v1/sessions/" + id + "/files").json()["files"].size(), 0u);
  // The quota it had reserved is free again.
  EXPECT_EQ(Put(PutUrl(token, "whole.bin", 3), "abc").status, 201u);
}

TEST_F(FilesTest, UploadsAreStreamedNotBuffered) {
  // 24 MiB through a server whose request bodies are otherwise capped at 1 MiB.
  auto [id, token] = server_->NewSession();
  std::string data(24 << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7 + (i >> 12));
  auto r = Put(PutUrl(token, "blob.bin", static_cast<int64_t>(data.size())), data);
  ASSERT_EQ(r.status, 201u) << r.body;
  auto back = Get(GetUrl(token, "blob.bin"));
  EXPECT_EQ(back.status, 200u);
  EXPECT_TRUE(back.body == data);
}

// The sandbox names its files; the operator's download must not let that name end the
// quoted filename, add a parameter (a browser would save `report"; filename*=…evil.html` as
// evil.html) or a header.
TEST_F(FilesTest, AHostileFileNameCannotShapeTheDownloadsContentDisposition) {
  auto [id, token] = server_->NewSession();
  const std::string hostile = "report\"; filename*=UTF-8''evil.html; x=\"";
  const std::string bidi =
      "r\xc3\xa9sum\xc3\xa9 \xe2\x80\xae"
      "fdp.exe";  // accents and U+202E
  for (const std::string& name : {hostile, bidi}) {
    ASSERT_EQ(Put(PutUrl(token, name, 2), "ok").status, 201u) << name;
  }
  auto down = server_->Op(verb::get, "/v1/sessions/" + id + "/files/" + PercentEncode(hostile));
  ASSERT_EQ(down.status, 200u) << down.body;
  EXPECT_EQ(down.body, "ok");
  EXPECT_EQ(down.headers["Content-Disposition"],
            "attachment; filename=\"report\\\"; filename*=UTF-8''evil.html; x=\\\"\"; "
            "filename*=UTF-8''report%22%3B%20filename%2A%3DUTF-8%27%27evil.html%3B%20x%3D%22");
  // Read as a browser reads it (RFC 6266): the quoted string ends at the first unescaped '"',
  // and what follows is exactly one filename* whose value decodes to the whole name.
  const std::string cd = down.headers["Content-Disposition"];
  const std::string head = "attachment; filename=\"";
  ASSERT_TRUE(cd.starts_with(head)) << cd;
  std::string quoted;
  size_t i = head.size();
  for (; i < cd.size() && cd[i] != '"'; ++i) quoted += cd[i] == '\\' ? cd[++i] : cd[i];
  EXPECT_EQ(quoted, hostile);
  const std::string rest = cd.substr(i + 1);
  ASSERT_TRUE(rest.starts_with("; filename*=UTF-8''")) << rest;
  const std::string value = rest.substr(19);
  EXPECT_EQ(value.find_first_of(";\" "), std::string::npos) << "no further parameter: " << value;
  EXPECT_EQ(PercentDecode(value, false), hostile);

  auto other = server_->Op(verb::get, "/v1/sessions/" + id + "/files/" + PercentEncode(bidi));
  ASSERT_EQ(other.status, 200u) << other.body;
  EXPECT_EQ(other.headers["Content-Disposition"],
            "attachment; filename=\"r_sum_ _fdp.exe\"; filename*=UTF-8''" + PercentEncode(bidi));

  // Line breaks never become a name, so no header can be injected through one.
  for (const char* name : {"a\r\nX-Injected: 1", "a\nb", "a\rb"}) {
    EXPECT_EQ(Presign(token, Json{{"name", name}, {"method", "PUT"}}).status, 400u);
    auto r = server_->Op(verb::get, "/v1/sessions/" + id + "/files/" + PercentEncode(name));
    EXPECT_EQ(r.status, 400u) << r.body;
    EXPECT_FALSE(r.headers.contains("X-Injected"));
  }
}

TEST(ContentDisposition, EscapesQuotesAndBackslashesAndReplacesWhatIsNotPrintableAscii) {
  EXPECT_EQ(controlplane::ContentDisposition("a.txt"),
            "attachment; filename=\"a.txt\"; filename*=UTF-8''a.txt");
  EXPECT_EQ(controlplane::ContentDisposition("a\"b\\c"),
            "attachment; filename=\"a\\\"b\\\\c\"; filename*=UTF-8''a%22b%5Cc");
  EXPECT_EQ(controlplane::ContentDisposition("x\r\ny\x7f%"),
            "attachment; filename=\"x__y__\"; filename*=UTF-8''x%0D%0Ay%7F%25");
  EXPECT_EQ(controlplane::ContentDisposition("\xe2\x80\xae"
                                             "a\xc2\x9b"),
            "attachment; filename=\"_a_\"; filename*=UTF-8''%E2%80%AEa%C2%9B");
}

// A GET URL handed to a sandbox dies with its session (finding 14): a leaked URL cannot fetch
// the file after the end, while the operator's own route still serves it, and another
// session's URLs are untouched.
TEST_F(FilesTest, ASignedGetUrlIsRevokedWhenItsSessionEnds) {
  auto [id, token] = server_->NewSession();
  auto [other, other_token] = server_->NewSession();
  ASSERT_EQ(Put(PutUrl(token, "report.txt", 5), "hello").status, 201u);
  ASSERT_EQ(Put(PutUrl(other_token, "mine.txt", 4), "mine").status, 201u);
  auto presigned =
      Presign(token, Json{{"name", "report.txt"}, {"method", "GET"}, {"expires_s", 3600}});
  ASSERT_EQ(presigned.status, 200u) << presigned.body;
  const std::string url = Target(presigned.json()["url"]);
  const std::string other_url = GetUrl(other_token, "mine.txt");
  ASSERT_EQ(Get(url).status, 200u);

  auto fin = server_->Sb(verb::post, "/sandbox/v1/finish", token,
                         R"({"status":"succeeded","result":"done"})");
  ASSERT_EQ(fin.status, 200u) << fin.body;
  auto after = Get(url);
  EXPECT_EQ(after.status, 410u) << after.body;
  EXPECT_EQ(after.error_code(), "gone");
  EXPECT_EQ(after.body.find("hello"), std::string::npos);
  auto head = HttpCall(server_->sb_port(), verb::head, url);
  EXPECT_EQ(head.status, 410u);
  EXPECT_EQ(Get(url, {{"Range", "bytes=0-1"}}).status, 410u);

  auto op = server_->Op(verb::get, "/v1/sessions/" + id + "/files/report.txt");
  EXPECT_EQ(op.status, 200u) << op.body;
  EXPECT_EQ(op.body, "hello");
  auto still = Get(other_url);
  EXPECT_EQ(still.status, 200u) << still.body;
  EXPECT_EQ(still.body, "mine");
}

class LongLivedGetUrlsFilesTest : public FilesTest {
 protected:
  LongLivedGetUrlsFilesTest()
      : FilesTest([](controlplane::Config& c) { c.files.get_urls_outlive_session = true; }) {}
};

TEST_F(LongLivedGetUrlsFilesTest, AnOperatorCanLetGetUrlsOutliveTheSession) {
  auto [id, token] = server_->NewSession();
  ASSERT_EQ(Put(PutUrl(token, "report.txt", 5), "hello").status, 201u);
  const std::string get = GetUrl(token, "report.txt");
  const std::string put = PutUrl(token, "late.txt", 1);
  ASSERT_EQ(
      server_->Sb(verb::post, "/sandbox/v1/finish", token, R"({"status":"succeeded"})").status,
      200u);
  auto after = Get(get);
  EXPECT_EQ(after.status, 200u) << after.body;
  EXPECT_EQ(after.body, "hello");
  EXPECT_EQ(Put(put, "x").status, 410u) << "uploads still end with the session";
}

class SmallQuotaFilesTest : public FilesTest {
 protected:
  SmallQuotaFilesTest()
      : FilesTest([](controlplane::Config& c) { c.files.session_quota_mb = 1; }) {}
};

TEST_F(SmallQuotaFilesTest, TheSessionQuotaIsEnforced) {
  auto [id, token] = server_->NewSession();
  auto too_big = Presign(token, Json{{"name", "big"}, {"method", "PUT"}, {"size", 2 << 20}});
  EXPECT_EQ(too_big.status, 413u);
  EXPECT_EQ(too_big.error_code(), "quota_exceeded");
  ASSERT_EQ(Put(PutUrl(token, "a", 700000), std::string(700000, 'a')).status, 201u);
  // Without a declared size the URL is capped at what is left.
  std::string open_put = PutUrl(token, "b");
  auto r = Put(open_put, std::string(500000, 'b'));
  EXPECT_EQ(r.status, 413u) << r.body;
  auto again = Presign(token, Json{{"name", "c"}, {"method", "PUT"}, {"size", 400000}});
  EXPECT_EQ(again.status, 413u);
  EXPECT_NE(again.body.find("quota"), std::string::npos);
}

// Work going in (issue 14): the operator's variables and files, as the sandbox takes them.
class WorkInTest : public FilesTest {
 protected:
  WorkInTest()
      : FilesTest([](controlplane::Config& c) {
          c.files.max_file_mb = 1;
          c.files.session_quota_mb = 2;
          controlplane::ProviderConfig p;
          p.kind = "openai";
          p.base_url = "http://127.0.0.1:9";
          p.api_key_env = "UPSTREAM_ACCESS";  // matches none of the default patterns
          c.providers["up"] = p;
          controlplane::ProviderConfig inline_key = p;
          inline_key.api_key_env.clear();
          inline_key.api_key = Secret("sk-inline-7f3a");
          c.providers["inline"] = inline_key;
        }) {}

  // Creates a session from `body` ("task" added); {status, id, token}.
  struct Created {
    unsigned status;
    std::string id;
    std::string token;
    HttpResult answer;
  };
  Created Create(Json body) {
    body["task"] = "work";
    auto r = server_->Op(verb::post, "/v1/sessions", DumpJson(body));
    Created c{r.status, "", "", r};
    if (r.status == 201) {
      c.id = r.json()["id"];
      std::lock_guard l(server_->backend().mu);
      c.token = server_->backend().specs.at(c.id).token.Reveal();
    }
    return c;
  }
  size_t SessionCount() { return server_->Op(verb::get, "/v1/sessions").json()["sessions"].size(); }
  HttpResult Work(const std::string& token) {
    return server_->Sb(verb::get, "/sandbox/v1/work", token);
  }
  HttpResult WorkFile(const std::string& token, const std::string& name) {
    return server_->Sb(verb::get, "/sandbox/v1/work/files/" + name, token);
  }
  HttpResult OperatorPut(const std::string& id, const std::string& name, const std::string& body,
                         const std::string& key) {
    return HttpCall(server_->op_port(), verb::put, "/v1/sessions/" + id + "/files/" + name, key,
                    body);
  }
};

TEST_F(WorkInTest, VariablesGivenAtCreateAreShownAndHandedToTheSandbox) {
  Json env = {{"REPO", "airlock"}, {"EMPTY", ""}, {"MULTI", "line 1\nline \"2\" \u00e9"}};
  auto c = Create(Json{{"env", env}});
  ASSERT_EQ(c.status, 201u) << c.answer.body;
  EXPECT_EQ(c.answer.json()["env"], env);
  EXPECT_EQ(server_->Op(verb::get, "/v1/sessions/" + c.id).json()["env"], env);
  auto work = Work(c.token);
  ASSERT_EQ(work.status, 200u) << work.body;
  EXPECT_EQ(work.json()["env"], env);
  EXPECT_EQ(work.json()["files"], Json::array());
  // A session created without any has none.
  auto plain = Create(Json::object());
  ASSERT_EQ(plain.status, 201u);
  EXPECT_EQ(plain.answer.json()["env"], Json::object());
  EXPECT_EQ(Work(plain.token).json()["env"], Json::object());
  // The work is the session's own: no token, another's, or a revoked one get nothing.
  EXPECT_EQ(Work("").status, 401u);
  EXPECT_EQ(Work("ast_forged").status, 401u);
  ASSERT_EQ(
      server_->Sb(verb::post, "/sandbox/v1/finish", c.token, R"({"status":"succeeded"})").status,
      200u);
  EXPECT_EQ(Work(c.token).status, 401u);
}

TEST_F(WorkInTest, CredentialsAndTheSessionsOwnVariablesCannotBeGivenAsVariables) {
  const size_t before = SessionCount();
  const std::vector<std::pair<Json, std::string>> refused = {
      {Json{{"SESSION_TOKEN", "x"}}, "SESSION_TOKEN"},
      {Json{{"CONTROL_PLANE_URL", "http://evil"}}, "CONTROL_PLANE_URL"},
      {Json{{"SESSION_ID", "ses_x"}}, "SESSION_ID"},
      {Json{{"OPENAI_API_KEY", "sk-x"}}, "credential"},          // *_API_KEY
      {Json{{"github_token", "ghp_x"}}, "credential"},           // *_TOKEN, any case
      {Json{{"AWS_SECRET_ACCESS_KEY", "x"}}, "credential"},      // AWS_*
      {Json{{"DB_PASSWORD_FILE", "/x"}}, "credential"},          // *PASSWORD*
      {Json{{"UPSTREAM_ACCESS", "x"}}, "provider up"},           // a provider's api_key_env
      {Json{{"HARMLESS", "sk-inline-7f3a"}}, "provider's key"},  // a provider's key as a value
      {Json{{"1BAD", "x"}}, "not a variable name"},
      {Json{{"BAD-NAME", "x"}}, "not a variable name"},
      {Json{{"", "x"}}, "not a variable name"},
      {Json{{"A", 1}}, "must be a string"},
      {Json{{"A", std::string("a\0b", 3)}}, "NUL"},
      {Json::array({"A=1"}), "object"},
  };
  for (const auto& [env, why] : refused) {
    auto c = Create(Json{{"env", env}});
    EXPECT_EQ(c.status, 400u) << env.dump();
    EXPECT_EQ(c.answer.error_code(), "invalid_argument") << env.dump();
    EXPECT_NE(c.answer.body.find(why), std::string::npos) << env.dump() << ": " << c.answer.body;
    // The refusal never echoes the value back.
    EXPECT_EQ(c.answer.body.find("sk-inline-7f3a"), std::string::npos) << c.answer.body;
  }
  Json many = Json::object();
  for (int i = 0; i < 129; ++i) many["V" + std::to_string(i)] = "x";
  EXPECT_EQ(Create(Json{{"env", many}}).status, 400u);
  Json big = Json::object();
  for (int i = 0; i < 10; ++i) big["V" + std::to_string(i)] = std::string(8000, 'x');
  EXPECT_EQ(Create(Json{{"env", big}}).status, 413u);
  EXPECT_EQ(SessionCount(), before) << "a refused create leaves no session behind";
}

TEST_F(WorkInTest, FilesGivenAtCreateReachTheSandboxByteForByte) {
  auto c = Create(Json{{"files",
                        {{"notes.md", "# notes\nhello\n"},
                         {"bin.dat", {{"base64", "AP8AAQ=="}}},
                         {"d\u00e9j\u00e0 vu.txt", ""}}}});
  ASSERT_EQ(c.status, 201u) << c.answer.body;
  auto listed = server_->Op(verb::get, "/v1/sessions/" + c.id + "/files").json()["files"];
  ASSERT_EQ(listed.size(), 3u) << listed.dump();
  auto work = Work(c.token).json();
  ASSERT_EQ(work["files"].size(), 3u) << work.dump();
  auto notes = WorkFile(c.token, "notes.md");
  EXPECT_EQ(notes.status, 200u);
  EXPECT_EQ(notes.body, "# notes\nhello\n");
  auto bin = WorkFile(c.token, "bin.dat");
  EXPECT_EQ(bin.status, 200u);
  EXPECT_EQ(bin.body, std::string("\0\xff\0\x01", 4));
  auto accented = WorkFile(c.token, "d%C3%A9j%C3%A0%20vu.txt");
  EXPECT_EQ(accented.status, 200u) << accented.body;
  EXPECT_EQ(accented.body, "");
  EXPECT_EQ(WorkFile(c.token, "missing.txt").status, 404u);
  EXPECT_EQ(WorkFile(c.token, "..%2Fetc%2Fpasswd").status, 400u);
  // Each went in as an event of the operator's.
  auto events =
      server_
          ->Op(verb::get, "/v1/sessions/" + c.id + "/events", "", {{"Accept", "application/json"}})
          .json();
  int uploaded = 0;
  for (const auto& e : events) {
    if (e["type"] == "file.uploaded") {
      EXPECT_EQ(e["data"]["by"], "operator") << e.dump();
      ++uploaded;
    }
  }
  EXPECT_EQ(uploaded, 3);
}

TEST_F(WorkInTest, BadFilesAtCreateAreRefusedAndNoSessionIsLeft) {
  const size_t before = SessionCount();
  for (const Json& files : {
           Json{{"../escape", "x"}},
           Json{{".hidden", "x"}},
           Json{{"a/b", "x"}},
           Json{{"bad.bin", {{"base64", "not base64!"}}}},
           Json{{"bad.bin", {{"hex", "00"}}}},
           Json{{"n.txt", 5}},
           Json::array({"x"}),
       }) {
    auto c = Create(Json{{"files", files}});
    EXPECT_EQ(c.status, 400u) << files.dump() << ": " << c.answer.body;
  }
  // Over files.max_file_mb (1 MiB here), and over the session's quota (2 MiB) in all.
  auto big = Create(Json{{"files", {{"big", std::string((1 << 20) + 1, 'x')}}}});
  EXPECT_EQ(big.status, 413u) << big.answer.body;
  Json three = {{"a", std::string(900000, 'a')},
                {"b", std::string(900000, 'b')},
                {"c", std::string(900000, 'c')}};
  auto over = Create(Json{{"files", three}});
  EXPECT_EQ(over.status, 413u) << over.answer.body;
  EXPECT_EQ(SessionCount(), before);
}

TEST_F(WorkInTest, TheOperatorPutsFilesIntoALiveSessionAndOnlyItsSandboxSeesThem) {
  auto a = Create(Json::object());
  auto b = Create(Json::object());
  ASSERT_EQ(a.status, 201u);
  ASSERT_EQ(b.status, 201u);
  auto put = OperatorPut(a.id, "data.csv", "x,y\n1,2\n", server_->key());
  ASSERT_EQ(put.status, 201u) << put.body;
  EXPECT_EQ(put.json(), (Json{{"name", "data.csv"}, {"size", 8}}));
  EXPECT_EQ(WorkFile(a.token, "data.csv").body, "x,y\n1,2\n");
  // The same name again replaces it.
  ASSERT_EQ(OperatorPut(a.id, "data.csv", "new", server_->key()).status, 201u);
  EXPECT_EQ(WorkFile(a.token, "data.csv").body, "new");
  // Another session's sandbox neither lists nor reads it.
  EXPECT_EQ(Work(b.token).json()["files"], Json::array());
  EXPECT_EQ(WorkFile(b.token, "data.csv").status, 404u);
  // Refusals: no key, a session token as key, a bad name, no such session, over the size.
  EXPECT_EQ(OperatorPut(a.id, "x.txt", "x", "").status, 401u);
  EXPECT_EQ(OperatorPut(a.id, "x.txt", "x", a.token).status, 401u);
  EXPECT_EQ(OperatorPut(a.id, ".hidden", "x", server_->key()).status, 400u);
  EXPECT_EQ(OperatorPut(a.id, "a%2Fb", "x", server_->key()).status, 400u);
  EXPECT_EQ(OperatorPut("ses_aaaaaaaaaaaaaaaaaaaaaaaa", "x.txt", "x", server_->key()).status, 404u);
  auto huge = OperatorPut(a.id, "huge", std::string((1 << 20) + 1, 'h'), server_->key());
  EXPECT_EQ(huge.status, 413u) << huge.body;
  EXPECT_EQ(Work(a.token).json()["files"].size(), 1u) << "nothing partial is left";
  // An ended session takes no more.
  ASSERT_EQ(server_->Op(verb::delete_, "/v1/sessions/" + a.id).status, 200u);
  EXPECT_EQ(OperatorPut(a.id, "late.txt", "x", server_->key()).status, 410u);
}

// A sandbox that asks for a large file of its work and never reads the answer holds its own
// connections and nothing of anyone else's: past its share of connections it is refused, other
// sessions download meanwhile, and each stalled download is cut off after the write timeout
// (a short body, then the server's close), which gives the connection back.
class StalledWorkDownloadTest : public FilesTest {
 protected:
  StalledWorkDownloadTest()
      : FilesTest([](controlplane::Config& c) {
          c.files.max_file_mb = 32;
          c.files.session_quota_mb = 64;
          c.limits.write_timeout = std::chrono::seconds(3);
          c.limits.max_connections_per_session = 3;
        }) {}

  // A connection to the sandbox listener with a small receive window, so that the server's
  // writes stall after a few hundred KiB instead of filling megabytes of socket buffers.
  int SmallWindowConnect() {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int small = 4096;
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(server_->sb_port());
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    return fd;
  }
};

TEST_F(StalledWorkDownloadTest, AStalledDownloadHoldsOnlyItsSessionsShareAndIsCutOff) {
  auto [a, ta] = server_->NewSession();
  auto [b, tb] = server_->NewSession();
  std::string big(24 << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 13 + (i >> 16));
  auto put = [&](const std::string& id, const std::string& name, const std::string& body) {
    return HttpCall(server_->op_port(), verb::put, "/v1/sessions/" + id + "/files/" + name,
                    server_->key(), body)
        .status;
  };
  ASSERT_EQ(put(a, "big.bin", big), 201u);
  ASSERT_EQ(put(b, "small.txt", "b's own"), 201u);

  const std::string ask =
      "GET /sandbox/v1/work/files/big.bin HTTP/1.1\r\nHost: x\r\n"
      "Authorization: Bearer " +
      ta + "\r\n\r\n";
  std::vector<int> stalled;
  for (int i = 0; i < 3; ++i) {
    stalled.push_back(SmallWindowConnect());
    ASSERT_TRUE(WriteAll(stalled.back(), ask));
  }
  // Each has its answer's head before the write stalls: all three are being served.
  for (int fd : stalled) {
    char head[16] = {};
    ASSERT_EQ(::recv(fd, head, 12, MSG_WAITALL), 12);
    EXPECT_EQ(std::string(head, 12), "HTTP/1.1 200");
  }
  // A fourth of the same session is over its share; another session is served meanwhile.
  int fourth = SmallWindowConnect();
  ASSERT_TRUE(WriteAll(fourth, ask));
  EXPECT_TRUE(ReadOneResponse(fourth).starts_with("HTTP/1.1 429")) << "over its share";
  ::close(fourth);
  auto other = server_->Sb(verb::get, "/sandbox/v1/work/files/small.txt", tb);
  EXPECT_EQ(other.status, 200u);
  EXPECT_EQ(other.body, "b's own");

  // The stalled downloads end with the server's close, short of the whole file. (Reading
  // before the server gave up would let the downloads go on: wait for its side first.)
  EXPECT_TRUE(WaitForMetric(*server_, "airlock_http_connections{listener=\"sandbox\"} 0\n", 30000));
  for (int fd : stalled) {
    std::string got = ReadUntilClose(fd, 30000);
    char c;
    EXPECT_EQ(::recv(fd, &c, 1, MSG_DONTWAIT), 0) << "the server closed it";
    EXPECT_LT(got.size(), big.size()) << "cut off, not completed";
    ::close(fd);
  }
  // Their connections were given back: the session downloads the whole file again.
  auto whole = server_->Sb(verb::get, "/sandbox/v1/work/files/big.bin", ta);
  EXPECT_EQ(whole.status, 200u);
  EXPECT_TRUE(whole.body == big);
}

}  // namespace
}  // namespace airlock::testing
