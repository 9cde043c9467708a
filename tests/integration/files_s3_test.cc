// Session files through the S3 blob store, end to end over real sockets: a control plane with
// files.store = "s3" pointed at s3rver (an S3 emulator that checks AWS V4 signatures; see
// tests/files/s3rver_harness.h), a sandbox that asks it for presigned URLs with its token and
// moves the bytes straight to and from S3 with nothing but those URLs, and an operator that
// lists the files and is redirected to them. Every refusal of a tampered URL is S3's own 403.
//
// Without node or npm, or with the npm registry unreachable, the tests skip with the reason;
// AIRLOCK_REQUIRE_S3RVER=1 turns that skip into a failure.
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>

#include <gmock/gmock.h>

#include "common/time_util.h"
#include "tests/files/s3rver_harness.h"
#include "tests/integration/harness.h"

namespace airlock::testing {
namespace {

using http::verb;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr char kBucket[] = "airlock-files";
constexpr char kScript[] = AIRLOCK_SOURCE_DIR "/tests/files/s3rver.sh";

struct S3Reply {
  unsigned status = 0;
  std::string body;
};

// The sandbox's side: sends `method` to `url` (plain HTTP) with exactly `headers` and `body`,
// as a presigned URL's answer says, over a new connection.
S3Reply S3Call(verb method, const std::string& url,
               const std::map<std::string, std::string>& headers, const std::string& body = "") {
  S3Reply r;
  const std::string scheme = "http://";
  EXPECT_THAT(url, StartsWith(scheme));
  size_t path = url.find('/', scheme.size());
  std::string authority = url.substr(scheme.size(), path - scheme.size());
  std::string target = path == std::string::npos ? "/" : url.substr(path);
  size_t colon = authority.rfind(':');
  uint16_t port = static_cast<uint16_t>(std::atoi(authority.c_str() + colon + 1));

  asio::io_context io;
  beast::tcp_stream stream(io);
  stream.expires_after(std::chrono::seconds(30));
  beast::error_code ec;
  stream.connect(asio::ip::tcp::endpoint(asio::ip::make_address(authority.substr(0, colon)), port),
                 ec);
  if (ec) {
    ADD_FAILURE() << "connect " << authority << ": " << ec.message();
    return r;
  }
  http::request<http::string_body> req{method, target, 11};
  req.set(http::field::host, authority);  // signed: exactly the URL's authority
  for (const auto& [k, v] : headers) req.set(k, v);
  if (!body.empty()) req.body() = body;
  if (req.find(http::field::content_length) == req.end() && method == verb::put)
    req.prepare_payload();
  http::write(stream, req, ec);
  if (ec) {
    ADD_FAILURE() << "write: " << ec.message();
    return r;
  }
  beast::flat_buffer buf;
  http::response_parser<http::string_body> parser;
  parser.body_limit(16 << 20);
  http::read(stream, buf, parser, ec);
  if (ec) {
    ADD_FAILURE() << "read: " << ec.message();
    return r;
  }
  r.status = parser.get().result_int();
  r.body = parser.get().body();
  return r;
}

std::map<std::string, std::string> Headers(const Json& j) {
  std::map<std::string, std::string> out;
  if (j.is_object()) {
    for (const auto& [k, v] : j.items()) out[k] = v.get<std::string>();
  }
  return out;
}

std::string Bytes(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + (i >> 3)) & 0xff);
  return s;
}

class FilesS3Test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    emulator_ = new Emulator(StartS3rver(kScript, kBucket, "", /*tls=*/false, /*lax=*/false));
  }
  static void TearDownTestSuite() {
    if (emulator_ != nullptr) {
      StopS3rver(*emulator_);
      delete emulator_;
      emulator_ = nullptr;
    }
  }

  void SetUp() override {
    ASSERT_NE(emulator_, nullptr);
    if (!emulator_->skip.empty()) GTEST_SKIP() << emulator_->skip;
    ASSERT_TRUE(emulator_->failure.empty()) << emulator_->failure;
    // FileService::Start reads the credentials from the control plane's environment.
    ::setenv("AWS_ACCESS_KEY_ID", kS3rverAccessKey, 1);
    ::setenv("AWS_SECRET_ACCESS_KEY", kS3rverSecret, 1);
    const uint16_t port = emulator_->port;
    server_ = std::make_unique<TestServer>([port](controlplane::Config& c) {
      c.files.store = "s3";
      c.files.s3_endpoint = "http://127.0.0.1:" + std::to_string(port);
      c.files.s3_bucket = kBucket;
      c.files.s3_path_style = true;
    });
  }

  void TearDown() override {
    server_.reset();
    ::unsetenv("AWS_ACCESS_KEY_ID");
    ::unsetenv("AWS_SECRET_ACCESS_KEY");
  }

  HttpResult Presign(const std::string& token, const Json& body) {
    return server_->Sb(verb::post, "/sandbox/v1/files/presign", token, DumpJson(body));
  }

  static inline Emulator* emulator_ = nullptr;
  std::unique_ptr<TestServer> server_;
};

TEST_F(FilesS3Test, SandboxUploadsThroughAPresignedUrlAndTheOperatorListsAndDownloadsIt) {
  auto [id, token] = server_->NewSession();
  const std::string data = Bytes(5000);

  auto presigned =
      Presign(token, Json{{"name", "report.bin"}, {"method", "PUT"}, {"size", data.size()}});
  ASSERT_EQ(presigned.status, 200u) << presigned.body;
  Json answer = presigned.json();
  const std::string url = answer["url"];
  EXPECT_THAT(url, StartsWith("http://127.0.0.1:" + std::to_string(emulator_->port) + "/" +
                              kBucket + "/sessions/" + id + "/report.bin?"));
  EXPECT_EQ(answer["method"], "PUT");
  auto headers = Headers(answer["headers"]);
  EXPECT_EQ(headers["Content-Length"], std::to_string(data.size()));

  S3Reply stored = S3Call(verb::put, url, headers, data);
  ASSERT_EQ(stored.status, 200u) << stored.body;

  auto list = server_->Op(verb::get, "/v1/sessions/" + id + "/files");
  ASSERT_EQ(list.status, 200u) << list.body;
  Json files = list.json()["files"];
  ASSERT_EQ(files.size(), 1u) << list.body;
  EXPECT_EQ(files[0]["name"], "report.bin");
  EXPECT_EQ(files[0]["size"], static_cast<int64_t>(data.size()));

  auto op = server_->Op(verb::get, "/v1/sessions/" + id + "/files/report.bin");
  ASSERT_EQ(op.status, 302u) << op.body;
  ASSERT_TRUE(op.headers.contains("Location"));
  EXPECT_THAT(op.headers["Location"], HasSubstr("/sessions/" + id + "/report.bin?"));
  S3Reply got = S3Call(verb::get, op.headers["Location"], {});
  ASSERT_EQ(got.status, 200u) << got.body;
  EXPECT_EQ(got.body, data);

  // The sandbox's own download URL serves the same bytes.
  auto down = Presign(token, Json{{"name", "report.bin"}, {"method", "GET"}});
  ASSERT_EQ(down.status, 200u) << down.body;
  S3Reply again = S3Call(verb::get, down.json()["url"], Headers(down.json()["headers"]));
  ASSERT_EQ(again.status, 200u) << again.body;
  EXPECT_EQ(again.body, data);
}

// The operator's upload goes through the control plane into the bucket, and the sandbox gets
// it through its own channel (a sandbox reaches nothing else), not through a redirect to S3.
TEST_F(FilesS3Test, TheOperatorPutsAFileIntoTheBucketAndTheSandboxGetsItThroughItsChannel) {
  auto [id, token] = server_->NewSession();
  const std::string data = Bytes((700 << 10) + 3);
  auto put = server_->Op(verb::put, "/v1/sessions/" + id + "/files/input%20data.bin", data);
  ASSERT_EQ(put.status, 201u) << put.body;
  EXPECT_EQ(put.json(), (Json{{"name", "input data.bin"}, {"size", data.size()}}));

  auto list = server_->Op(verb::get, "/v1/sessions/" + id + "/files");
  ASSERT_EQ(list.status, 200u) << list.body;
  ASSERT_EQ(list.json()["files"].size(), 1u) << list.body;
  EXPECT_EQ(list.json()["files"][0]["size"], static_cast<int64_t>(data.size()));

  // In the bucket itself, under the session's prefix: the operator's redirect reaches it.
  auto op = server_->Op(verb::get, "/v1/sessions/" + id + "/files/input%20data.bin");
  ASSERT_EQ(op.status, 302u) << op.body;
  S3Reply direct = S3Call(verb::get, op.headers["Location"], {});
  ASSERT_EQ(direct.status, 200u) << direct.body;
  EXPECT_TRUE(direct.body == data);

  auto work = server_->Sb(verb::get, "/sandbox/v1/work", token);
  ASSERT_EQ(work.status, 200u) << work.body;
  ASSERT_EQ(work.json()["files"].size(), 1u) << work.body;
  auto got = server_->Sb(verb::get, "/sandbox/v1/work/files/input%20data.bin", token);
  ASSERT_EQ(got.status, 200u) << got.body.substr(0, 200);
  EXPECT_TRUE(got.body == data) << "the sandbox gets the same bytes, " << got.body.size();
  auto part = server_->Sb(verb::get, "/sandbox/v1/work/files/input%20data.bin", token, "",
                          {{"Range", "bytes=10-19"}});
  ASSERT_EQ(part.status, 206u) << part.body;
  EXPECT_EQ(part.body, data.substr(10, 10));
  EXPECT_EQ(server_->Sb(verb::get, "/sandbox/v1/work/files/missing.bin", token).status, 404u);
  // Another session's token reaches only its own prefix.
  auto [other, other_token] = server_->NewSession();
  EXPECT_EQ(server_->Sb(verb::get, "/sandbox/v1/work/files/input%20data.bin", other_token).status,
            404u);

  // Nothing stays on the control plane's disk: every spooled upload and copy is gone.
  const std::string spool = server_->home() + "/files/spool";
  ASSERT_TRUE(std::filesystem::is_directory(spool));
  EXPECT_TRUE(std::filesystem::is_empty(spool));

  auto events =
      server_->Op(verb::get, "/v1/sessions/" + id + "/events", "", {{"Accept", "application/json"}})
          .json();
  bool recorded = false;
  for (const auto& e : events) {
    if (e["type"] == "file.uploaded" && e["data"]["by"] == "operator") recorded = true;
  }
  EXPECT_TRUE(recorded) << events.dump();
}

TEST_F(FilesS3Test, FilesGivenAtCreateGoIntoTheBucket) {
  auto created = server_->Op(
      verb::post, "/v1/sessions",
      DumpJson(
          Json{{"task", "t"},
               {"files", {{"notes.md", "# notes\n"}, {"bin.dat", {{"base64", "AP8AAQ=="}}}}}}));
  ASSERT_EQ(created.status, 201u) << created.body;
  const std::string id = created.json()["id"];
  std::string token;
  {
    std::lock_guard l(server_->backend().mu);
    token = server_->backend().specs.at(id).token.Reveal();
  }
  auto notes = server_->Sb(verb::get, "/sandbox/v1/work/files/notes.md", token);
  ASSERT_EQ(notes.status, 200u) << notes.body;
  EXPECT_EQ(notes.body, "# notes\n");
  auto bin = server_->Sb(verb::get, "/sandbox/v1/work/files/bin.dat", token);
  ASSERT_EQ(bin.status, 200u) << bin.body;
  EXPECT_EQ(bin.body, std::string("\0\xff\0\x01", 4));
}

TEST_F(FilesS3Test, AnOperatorUploadOverTheLimitsIsRefusedAndLeavesNothing) {
  server_.reset();
  const uint16_t port = emulator_->port;
  server_ = std::make_unique<TestServer>([port](controlplane::Config& c) {
    c.files.store = "s3";
    c.files.s3_endpoint = "http://127.0.0.1:" + std::to_string(port);
    c.files.s3_bucket = kBucket;
    c.files.max_file_mb = 1;
    c.files.session_quota_mb = 2;
  });
  auto [id, token] = server_->NewSession();
  const std::string path = "/v1/sessions/" + id + "/files/";
  auto big = server_->Op(verb::put, path + "big.bin", Bytes((1 << 20) + 1));
  EXPECT_EQ(big.status, 413u) << big.body;
  ASSERT_EQ(server_->Op(verb::put, path + "a.bin", Bytes(1 << 20)).status, 201u);
  ASSERT_EQ(server_->Op(verb::put, path + "b.bin", Bytes(1 << 20)).status, 201u);
  auto over = server_->Op(verb::put, path + "c.bin", Bytes(10));
  EXPECT_EQ(over.status, 413u) << over.body;
  EXPECT_EQ(over.error_code(), "quota_exceeded") << over.body;
  EXPECT_EQ(server_->Op(verb::get, path.substr(0, path.size() - 1)).json()["files"].size(), 2u);
  EXPECT_TRUE(std::filesystem::is_empty(server_->home() + "/files/spool"));
}

// A store that cannot be reached: the operator gets a clear error naming S3, a create with
// files fails whole and leaves no running session.
TEST_F(FilesS3Test, AnUnreachableStoreIsAClearErrorAndLosesNothing) {
  server_.reset();
  // A port bound and never listened on: every connection to it is refused, and no other test
  // can take it meanwhile.
  asio::io_context io;
  asio::ip::tcp::acceptor bound(io);
  bound.open(asio::ip::tcp::v4());
  bound.bind({asio::ip::make_address("127.0.0.1"), 0});
  const uint16_t dead = bound.local_endpoint().port();
  server_ = std::make_unique<TestServer>([dead](controlplane::Config& c) {
    c.files.store = "s3";
    c.files.s3_endpoint = "http://127.0.0.1:" + std::to_string(dead);
    c.files.s3_bucket = kBucket;
  });
  auto [id, token] = server_->NewSession();
  auto put = server_->Op(verb::put, "/v1/sessions/" + id + "/files/a.bin", "data");
  EXPECT_GE(put.status, 500u) << put.body;
  EXPECT_THAT(put.body, HasSubstr("S3")) << put.body;
  EXPECT_THAT(put.body, Not(HasSubstr(kS3rverSecret)));

  auto created = server_->Op(verb::post, "/v1/sessions",
                             DumpJson(Json{{"task", "t"}, {"files", {{"notes.md", "x"}}}}));
  EXPECT_GE(created.status, 500u) << created.body;
  EXPECT_THAT(created.body, HasSubstr("storing the session's files")) << created.body;
  auto sessions = server_->Op(verb::get, "/v1/sessions").json()["sessions"];
  for (const auto& s : sessions) {
    if (s["id"] != id) {
      EXPECT_EQ(s["state"], "failed") << s.dump();
    }
  }
  EXPECT_TRUE(std::filesystem::is_empty(server_->home() + "/files/spool"));
}

TEST_F(FilesS3Test, AnUploadWithoutASizeIsRefused) {
  auto [id, token] = server_->NewSession();
  auto r = Presign(token, Json{{"name", "a.txt"}, {"method", "PUT"}});
  EXPECT_EQ(r.status, 400u) << r.body;
  EXPECT_THAT(r.body, HasSubstr("size"));
}

TEST_F(FilesS3Test, AUrlRewrittenToAnotherSessionsKeyIsRefusedByS3) {
  auto [a, token_a] = server_->NewSession("a");
  auto [b, token_b] = server_->NewSession("b");
  const std::string data = "for A only";
  auto r = Presign(token_a, Json{{"name", "x.txt"}, {"method", "PUT"}, {"size", data.size()}});
  ASSERT_EQ(r.status, 200u) << r.body;
  std::string url = r.json()["url"];
  auto headers = Headers(r.json()["headers"]);
  const std::string from = "/sessions/" + a + "/";
  size_t at = url.find(from);
  ASSERT_NE(at, std::string::npos) << url;
  std::string tampered = url;
  tampered.replace(at, from.size(), "/sessions/" + b + "/");

  S3Reply refused = S3Call(verb::put, tampered, headers, data);
  EXPECT_EQ(refused.status, 403u) << refused.body;
  EXPECT_THAT(refused.body, HasSubstr("SignatureDoesNotMatch"));
  auto list_b = server_->Op(verb::get, "/v1/sessions/" + b + "/files");
  ASSERT_EQ(list_b.status, 200u) << list_b.body;
  EXPECT_TRUE(list_b.json()["files"].empty()) << list_b.body;

  // The untampered URL works: the refusal was the rewrite's.
  S3Reply stored = S3Call(verb::put, url, headers, data);
  EXPECT_EQ(stored.status, 200u) << stored.body;
}

// s3rver's account is fixed at access key id S3RVER and secret S3RVER, so the secret cannot be
// told apart from the key id by its value, and the key id legitimately appears in every
// presigned URL (X-Amz-Credential=S3RVER/<date>/<region>/s3/aws4_request). What can be held:
// the answer names S3RVER exactly once, as that credential's key id, and nowhere else — the
// secret signs the URL but never travels in it.
TEST_F(FilesS3Test, APresignAnswerCarriesTheKeyIdButNeverTheSecret) {
  auto [id, token] = server_->NewSession();
  for (const char* method : {"PUT", "GET"}) {
    Json body{{"name", "s.txt"}, {"method", method}};
    if (std::string(method) == "PUT") body["size"] = 3;
    auto r = Presign(token, body);
    ASSERT_EQ(r.status, 200u) << r.body;
    const std::string credential = std::string("X-Amz-Credential=") + kS3rverAccessKey + "%2F";
    size_t at = r.body.find(credential);
    ASSERT_NE(at, std::string::npos) << r.body;
    std::string rest = r.body;
    rest.erase(at, credential.size());
    EXPECT_EQ(rest.find(kS3rverSecret), std::string::npos) << method << ": " << r.body;
    if (std::string(method) == "PUT") {
      EXPECT_EQ(S3Call(verb::put, r.json()["url"], Headers(r.json()["headers"]), "abc").status,
                200u);
    }
  }
}

// S3 cannot revoke a presigned URL when the session ends (the local store answers 410
// instead). The best bound there is the session's wall-clock limit: no URL handed to a sandbox
// outlives limits.timeout_s, however long an expiry it asks for.
TEST_F(FilesS3Test, UrlsOfASessionWithATimeoutExpireByItsEnd) {
  auto created = server_->Op(verb::post, "/v1/sessions",
                             DumpJson(Json{{"task", "t"}, {"limits", {{"timeout_s", 60}}}}));
  ASSERT_EQ(created.status, 201u) << created.body;
  const std::string id = created.json()["id"];
  auto created_at = ParseTimestamp(created.json()["created_at"].get<std::string>());
  ASSERT_TRUE(created_at.has_value());
  std::string token;
  {
    std::lock_guard l(server_->backend().mu);
    token = server_->backend().specs.at(id).token.Reveal();
  }
  for (const char* method : {"GET", "PUT"}) {
    Json body{{"name", "r.txt"}, {"method", method}, {"expires_s", 3600}};
    if (std::string(method) == "PUT") body["size"] = 2;
    auto r = Presign(token, body);
    ASSERT_EQ(r.status, 200u) << r.body;
    auto expires_at = ParseTimestamp(r.json()["expires_at"].get<std::string>());
    ASSERT_TRUE(expires_at.has_value());
    EXPECT_LE(*expires_at, *created_at + 60'000 + 999) << method << ": " << r.body;
    const std::string url = r.json()["url"];
    size_t at = url.find("X-Amz-Expires=");
    ASSERT_NE(at, std::string::npos) << url;
    EXPECT_LE(std::stoll(url.substr(at + 14)), 60) << url;
  }
  // A session without a timeout keeps the expiry it asked for (up to files.max_expiry_s).
  auto [open_id, open_token] = server_->NewSession();
  auto r = Presign(open_token, Json{{"name", "r.txt"}, {"method", "GET"}, {"expires_s", 3600}});
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_NE(r.json()["url"].get<std::string>().find("X-Amz-Expires=3600"), std::string::npos)
      << r.body;
}

}  // namespace
}  // namespace airlock::testing
