// End-to-end tests of the S3 blob store against a real S3 emulator that checks AWS V4
// signatures: s3rver (tests/files/s3rver.sh installs it from the npm registry into a cache
// outside the repository and runs it on 127.0.0.1, a free port, a temporary directory).
//
// The tests play both sides: the control plane (the store: presigning, listing, HEAD) and the
// sandbox (a raw HTTP client in this file that sends exactly what a presigned URL and its
// headers say — or a tampered variant of it). Every refusal is S3's own 403, so each test
// proves something about the URL, not about this file's client.
//
// What the emulator cannot judge: it serves requests that carry no signature at all (a private
// S3 bucket refuses them), so no test strips a signature; and it refuses correct
// virtual-hosted V4 signatures, so virtual-hosted requests are tested with its signature check
// off (S3VhostTest) while their signing is held against AWS's published examples in sigv4_test.
//
// Without node or npm, or with the npm registry unreachable, the emulator tests skip with the
// reason; AIRLOCK_REQUIRE_S3RVER=1 turns that skip into a failure.

#include "files/s3_store.h"

#include "tests/files/s3rver_harness.h"

#include "common/asio.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace airlock::files {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr char kBucket[] = "airlock-test";
constexpr char kScript[] = AIRLOCK_SOURCE_DIR "/tests/files/s3rver.sh";
// s3rver's built-in account.
constexpr const char* kAccessKey = airlock::testing::kS3rverAccessKey;
constexpr const char* kSecret = airlock::testing::kS3rverSecret;
// Requests to <bucket>.s3.<this> are virtual-hosted.
constexpr char kServiceEndpoint[] = "localhost";

int64_t Now() { return static_cast<int64_t>(std::time(nullptr)); }

using airlock::testing::Emulator;
using airlock::testing::StopS3rver;

// `lax`: s3rver's --allow-mismatched-signatures (see tests/files/s3rver.sh for why).
Emulator StartS3rver(bool tls, bool lax) {
  return airlock::testing::StartS3rver(kScript, kBucket, kServiceEndpoint, tls, lax);
}

// ----- The sandbox's side: a raw HTTP/1.1 client ---------------------------------------------

struct RawReply {
  unsigned status = 0;
  std::string body;
  std::string code;  // S3's error Code, if any
};

// Sends `method` to `url` with exactly `headers` and `body` (a Content-Length is added only
// when `headers` has none), over a new connection to 127.0.0.1:port — whatever host the URL
// names, as a private DNS would route it. Plain HTTP only.
RawReply SendRaw(uint16_t port, const std::string& method, const std::string& url,
                 const Params& headers, const std::string& body = "") {
  RawReply r;
  size_t scheme_end = url.find("://");
  EXPECT_NE(scheme_end, std::string::npos) << url;
  size_t path = url.find('/', scheme_end + 3);
  std::string authority = url.substr(scheme_end + 3, path - scheme_end - 3);
  std::string target = path == std::string::npos ? "/" : url.substr(path);

  std::string request = method + " " + target + " HTTP/1.1\r\nHost: " + authority + "\r\n";
  bool has_length = false;
  for (const auto& [name, value] : headers) {
    request += name + ": " + value + "\r\n";
    has_length = has_length || name == "Content-Length" || name == "content-length";
  }
  if (!has_length && (method == "PUT" || !body.empty())) {
    request += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  }
  request += "Connection: close\r\n\r\n" + body;

  asio::io_context io;
  asio::ip::tcp::socket socket(io);
  beast::error_code ec;
  socket.connect({asio::ip::make_address("127.0.0.1"), port}, ec);
  if (ec) {
    ADD_FAILURE() << "connect: " << ec.message();
    return r;
  }
  asio::write(socket, asio::buffer(request), ec);
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(16 << 20);
  parser.skip(method == "HEAD");
  http::read(socket, buffer, parser, ec);
  if (ec) {
    ADD_FAILURE() << "read: " << ec.message();
    return r;
  }
  r.status = parser.get().result_int();
  r.body = parser.get().body();
  size_t open = r.body.find("<Code>"), close = r.body.find("</Code>");
  if (open != std::string::npos && close != std::string::npos && close > open) {
    r.code = r.body.substr(open + 6, close - open - 6);
  }
  return r;
}

std::string Replace(std::string s, std::string_view from, std::string_view to) {
  size_t at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from << " not in " << s;
  if (at != std::string::npos) {
    s.replace(at, from.size(), to);
  }
  return s;
}

std::string Bytes(size_t n, unsigned seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) {
    s[i] = static_cast<char>((i * 131 + seed * 7 + (i >> 3)) & 0xff);
  }
  return s;
}

// ----- Fixtures ------------------------------------------------------------------------------

class S3rverTest : public ::testing::Test {
 protected:
  static void StartServer(bool tls, bool lax) { server_ = new Emulator(StartS3rver(tls, lax)); }
  static void TearDownTestSuite() {
    if (server_ != nullptr) {
      StopS3rver(*server_);
      delete server_;
      server_ = nullptr;
    }
  }
  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    if (!server_->skip.empty()) {
      GTEST_SKIP() << server_->skip;
    }
    ASSERT_TRUE(server_->failure.empty()) << server_->failure;
  }

  uint16_t port() const { return server_->port; }

  // A session id of this test's own, so that tests sharing a server never see each other.
  static std::string Session(std::string_view suffix = "") {
    std::string id = "ses_";
    for (char c : std::string(::testing::UnitTest::GetInstance()->current_test_info()->name())) {
      id += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
    }
    return id + std::string(suffix);
  }

  S3StoreOptions Options(bool path_style = true) const {
    S3StoreOptions o;
    if (path_style) {
      o.endpoint = fmt::format("http://127.0.0.1:{}", port());
    } else {
      o.endpoint = fmt::format("http://s3.{}:{}", kServiceEndpoint, port());
      o.path_style = false;
      o.connect_to = fmt::format("127.0.0.1:{}", port());
    }
    o.bucket = kBucket;
    o.creds = SigV4Credentials{kAccessKey, Secret(kSecret), ""};
    o.timeout = std::chrono::milliseconds(10'000);
    return o;
  }

  static std::unique_ptr<BlobStore> MakeStore(S3StoreOptions o) {
    auto store = MakeS3BlobStore(std::move(o));
    EXPECT_TRUE(store.has_value()) << store.error().message;
    return store ? std::move(*store) : nullptr;
  }

  static PresignRequest Put(const std::string& session, const std::string& name, int64_t size,
                            int64_t ttl = 300) {
    PresignRequest r;
    r.session_id = session;
    r.name = name;
    r.method = "PUT";
    r.exact_size = size;
    r.max_bytes = size;
    r.expires_at = Now() + ttl;
    return r;
  }

  static PresignRequest Get(const std::string& session, const std::string& name,
                            int64_t ttl = 300) {
    PresignRequest r;
    r.session_id = session;
    r.name = name;
    r.method = "GET";
    r.expires_at = Now() + ttl;
    return r;
  }

  // Uploads through a presigned URL, as a sandbox does.
  void Upload(BlobStore& store, const std::string& session, const std::string& name,
              const std::string& data) {
    auto url = store.Presign(Put(session, name, static_cast<int64_t>(data.size())));
    ASSERT_TRUE(url.has_value()) << url.error().message;
    RawReply r = SendRaw(port(), "PUT", url->url, url->headers, data);
    ASSERT_EQ(r.status, 200u) << r.body;
  }

  // Upload, list, download and the operator's redirect, as a sandbox and an operator do them.
  void RoundTrip(bool path_style) {
    auto store = MakeStore(Options(path_style));
    ASSERT_NE(store, nullptr);
    EXPECT_EQ(store->kind(), "s3");
    const std::string session = Session();
    const std::string data = Bytes(3000, 1);
    const int64_t before_ms = (Now() - 5) * 1000;

    PresignRequest put = Put(session, "report 1.txt", static_cast<int64_t>(data.size()));
    put.content_type = "text/plain";
    auto up = store->Presign(put);
    ASSERT_TRUE(up.has_value()) << up.error().message;
    const std::string key_path = "/sessions/" + session + "/report%201.txt?";
    if (path_style) {
      EXPECT_THAT(up->url,
                  StartsWith(fmt::format("http://127.0.0.1:{}/{}{}", port(), kBucket, key_path)));
    } else {
      EXPECT_THAT(up->url, StartsWith(fmt::format("http://{}.s3.{}:{}{}", kBucket, kServiceEndpoint,
                                                  port(), key_path)));
    }
    EXPECT_THAT(up->url, HasSubstr("X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost"));
    EXPECT_EQ(up->method, "PUT");
    EXPECT_EQ(up->expires_at, put.expires_at);
    EXPECT_EQ(up->headers, (Params{{"Content-Length", "3000"}, {"Content-Type", "text/plain"}}));

    RawReply stored = SendRaw(port(), "PUT", up->url, up->headers, data);
    ASSERT_EQ(stored.status, 200u) << stored.body;

    auto files = store->List(session);
    ASSERT_TRUE(files.has_value()) << files.error().message;
    ASSERT_EQ(files->size(), 1u);
    EXPECT_EQ((*files)[0].name, "report 1.txt");
    EXPECT_EQ((*files)[0].size, 3000);
    EXPECT_GE((*files)[0].created_at, before_ms);
    EXPECT_LE((*files)[0].created_at, (Now() + 5) * 1000);
    auto used = store->UsedBytes(session);
    ASSERT_TRUE(used.has_value()) << used.error().message;
    EXPECT_EQ(*used, 3000);

    auto down = store->Presign(Get(session, "report 1.txt"));
    ASSERT_TRUE(down.has_value()) << down.error().message;
    EXPECT_TRUE(down->headers.empty());
    EXPECT_THAT(down->url, HasSubstr("X-Amz-SignedHeaders=host&"));
    RawReply got = SendRaw(port(), "GET", down->url, down->headers);
    ASSERT_EQ(got.status, 200u) << got.body;
    EXPECT_EQ(got.body, data);

    auto op = store->Download(session, "report 1.txt", 60);
    ASSERT_TRUE(op.has_value()) << op.error().message;
    EXPECT_EQ(op->size, 3000);
    EXPECT_TRUE(op->path.empty());
    EXPECT_THAT(op->redirect_url, HasSubstr("X-Amz-Expires=60&"));
    RawReply redirected = SendRaw(port(), "GET", op->redirect_url, {});
    ASSERT_EQ(redirected.status, 200u) << redirected.body;
    EXPECT_EQ(redirected.body, data);
  }

  static inline Emulator* server_ = nullptr;
};

// The emulator over plain HTTP, checking signatures.
class S3StoreTest : public S3rverTest {
 protected:
  static void SetUpTestSuite() { StartServer(false, false); }
};

// The emulator with its signature check off, for virtual-hosted requests: it computes their
// canonical URI as /BUCKET/KEY (the V2 rule) where AWS V4 signs the request's own path /KEY,
// so it refuses every correct virtual-hosted signature. The signing itself is held against
// AWS's published virtual-hosted examples in sigv4_test; here the routing is tested: the
// bucket in the Host name, the key as the whole path, the store's own connections.
class S3VhostTest : public S3rverTest {
 protected:
  static void SetUpTestSuite() { StartServer(false, true); }
};

// The emulator over HTTPS with a self-signed certificate for 127.0.0.1 and *.s3.localhost.
class S3TlsTest : public S3rverTest {
 protected:
  static void SetUpTestSuite() { StartServer(true, false); }

  S3StoreOptions TlsOptions(bool path_style = true) const {
    S3StoreOptions o = Options(path_style);
    o.endpoint = Replace(o.endpoint, "http://", "https://");
    o.ca_file = server_->ca_file();
    return o;
  }
};

// ----- The emulator is a real judge ----------------------------------------------------------

// Without this, every other refusal below could be the emulator refusing everything, and every
// success the emulator accepting anything.
TEST_F(S3StoreTest, EmulatorRefusesATamperedSignatureAndAcceptsTheRealOne) {
  auto store = MakeStore(Options());
  const std::string session = Session();
  auto url = store->Presign(Put(session, "a.txt", 5));
  ASSERT_TRUE(url.has_value()) << url.error().message;
  // The signature is the URL's last parameter: change its last hex digit.
  ASSERT_NE(url->url.rfind("&X-Amz-Signature="), std::string::npos);
  std::string tampered = url->url;
  tampered.back() = tampered.back() == '0' ? '1' : '0';

  RawReply refused = SendRaw(port(), "PUT", tampered, url->headers, "hello");
  EXPECT_EQ(refused.status, 403u);
  EXPECT_EQ(refused.code, "SignatureDoesNotMatch");
  auto files = store->List(session);
  ASSERT_TRUE(files.has_value()) << files.error().message;
  EXPECT_TRUE(files->empty());

  RawReply accepted = SendRaw(port(), "PUT", url->url, url->headers, "hello");
  EXPECT_EQ(accepted.status, 200u) << accepted.body;
}

TEST_F(S3StoreTest, EmulatorRefusesAHeaderSignedRequestWithTheWrongSecret) {
  S3StoreOptions o = Options();
  o.creds.secret_access_key = Secret("not-the-secret-0123456789");
  auto store = MakeStore(o);
  auto files = store->List(Session());
  ASSERT_FALSE(files.has_value());
  EXPECT_EQ(files.error().code, ErrorCode::kUnavailable);
  EXPECT_EQ(files.error().message, "S3 ListObjectsV2 failed: HTTP 403 SignatureDoesNotMatch");
  EXPECT_THAT(files.error().message, Not(HasSubstr("not-the-secret")));

  auto download = store->Download(Session(), "a.txt", 60);
  ASSERT_FALSE(download.has_value());
  EXPECT_EQ(download.error().code, ErrorCode::kUnavailable);
  EXPECT_THAT(download.error().message, StartsWith("S3 HEAD failed: HTTP 403"));
}

// ----- The round trip, in both addressing styles ---------------------------------------------

TEST_F(S3StoreTest, UploadsListsAndDownloadsThroughPresignedUrlsPathStyle) { RoundTrip(true); }

TEST_F(S3VhostTest, UploadsListsAndDownloadsThroughPresignedUrlsVirtualHosted) {
  RoundTrip(false);
  // The same object, seen through path-style requests: the Host name chose the bucket.
  auto path_store = MakeStore(Options(true));
  auto files = path_store->List(Session());
  ASSERT_TRUE(files.has_value()) << files.error().message;
  ASSERT_EQ(files->size(), 1u);
  EXPECT_EQ((*files)[0].name, "report 1.txt");
}

TEST_F(S3VhostTest, DownloadOfAMissingFileIsNotFound) {
  auto store = MakeStore(Options(false));
  auto r = store->Download(Session(), "missing.txt", 60);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
}

// ----- What a URL does not allow --------------------------------------------------------------

TEST_F(S3StoreTest, RefusesAGetUrlUsedForAnUpload) {
  auto store = MakeStore(Options());
  const std::string session = Session();
  Upload(*store, session, "a.txt", "original");
  auto get = store->Presign(Get(session, "a.txt"));
  ASSERT_TRUE(get.has_value());
  RawReply r = SendRaw(port(), "PUT", get->url, {}, "replaced");
  EXPECT_EQ(r.status, 403u);
  EXPECT_EQ(r.code, "SignatureDoesNotMatch");
  EXPECT_EQ(SendRaw(port(), "GET", get->url, {}).body, "original");
}

TEST_F(S3StoreTest, RefusesAUrlWhoseFileNameWasChanged) {
  auto store = MakeStore(Options());
  const std::string session = Session();
  auto put = store->Presign(Put(session, "a.txt", 5));
  ASSERT_TRUE(put.has_value());
  RawReply r =
      SendRaw(port(), "PUT", Replace(put->url, "/a.txt?", "/b.txt?"), put->headers, "hello");
  EXPECT_EQ(r.status, 403u);
  EXPECT_EQ(r.code, "SignatureDoesNotMatch");
  auto files = store->List(session);
  ASSERT_TRUE(files.has_value());
  EXPECT_TRUE(files->empty());
}

TEST_F(S3StoreTest, AUrlOfOneSessionCannotReachAnothersFiles) {
  auto store = MakeStore(Options());
  const std::string mine = Session("_mine"), theirs = Session("_theirs");
  Upload(*store, theirs, "secret.txt", "their data");

  auto get = store->Presign(Get(mine, "secret.txt"));
  ASSERT_TRUE(get.has_value());
  RawReply read =
      SendRaw(port(), "GET", Replace(get->url, "/" + mine + "/", "/" + theirs + "/"), {});
  EXPECT_EQ(read.status, 403u);
  EXPECT_THAT(read.body, Not(HasSubstr("their data")));

  auto put = store->Presign(Put(mine, "secret.txt", 6));
  ASSERT_TRUE(put.has_value());
  RawReply write = SendRaw(port(), "PUT", Replace(put->url, "/" + mine + "/", "/" + theirs + "/"),
                           put->headers, "mine!!");
  EXPECT_EQ(write.status, 403u);

  auto op = store->Download(theirs, "secret.txt", 60);
  ASSERT_TRUE(op.has_value()) << op.error().message;
  EXPECT_EQ(SendRaw(port(), "GET", op->redirect_url, {}).body, "their data");
  // Names cannot climb out of the session's prefix either.
  auto climb = store->Presign(Get(mine, "../" + theirs));
  ASSERT_FALSE(climb.has_value());
  EXPECT_EQ(climb.error().code, ErrorCode::kInvalidArgument);
}

TEST_F(S3StoreTest, RefusesABodyOfAnotherSizeThanTheSignedOne) {
  auto store = MakeStore(Options());
  const std::string session = Session();
  auto put = store->Presign(Put(session, "a.txt", 5));
  ASSERT_TRUE(put.has_value());
  ASSERT_EQ(put->headers, (Params{{"Content-Length", "5"}}));
  for (const std::string& body :
       {std::string("hello!"), std::string("hell"), std::string(1 << 20, 'x')}) {
    RawReply r = SendRaw(port(), "PUT", put->url, {}, body);  // its own, true Content-Length
    EXPECT_EQ(r.status, 403u) << body.size();
    EXPECT_EQ(r.code, "SignatureDoesNotMatch");
  }
  auto files = store->List(session);
  ASSERT_TRUE(files.has_value());
  EXPECT_TRUE(files->empty());
}

TEST_F(S3StoreTest, RefusesAnotherContentTypeThanTheSignedOne) {
  auto store = MakeStore(Options());
  PresignRequest req = Put(Session(), "a.txt", 5);
  req.content_type = "text/plain";
  auto put = store->Presign(req);
  ASSERT_TRUE(put.has_value());
  RawReply r = SendRaw(port(), "PUT", put->url,
                       {{"Content-Length", "5"}, {"Content-Type", "text/html"}}, "hello");
  EXPECT_EQ(r.status, 403u);
  EXPECT_EQ(r.code, "SignatureDoesNotMatch");
}

TEST_F(S3StoreTest, RefusesAUrlWhoseExpiryWasExtended) {
  auto store = MakeStore(Options());
  auto get = store->Presign(Get(Session(), "a.txt", 300));
  ASSERT_TRUE(get.has_value());
  RawReply r =
      SendRaw(port(), "GET", Replace(get->url, "X-Amz-Expires=300&", "X-Amz-Expires=3000&"), {});
  EXPECT_EQ(r.status, 403u);
  EXPECT_EQ(r.code, "SignatureDoesNotMatch");
}

TEST_F(S3StoreTest, RefusesAnExpiredUrl) {
  auto store = MakeStore(Options());
  const std::string session = Session();
  Upload(*store, session, "a.txt", "data");
  auto get = store->Presign(Get(session, "a.txt", 1));
  ASSERT_TRUE(get.has_value()) << get.error().message;
  std::this_thread::sleep_for(std::chrono::milliseconds(2200));
  RawReply late = SendRaw(port(), "GET", get->url, {});
  EXPECT_EQ(late.status, 403u);
  EXPECT_EQ(late.code, "AccessDenied");

  // A URL signed an hour ago for a minute, correctly signed: the signature is not the issue.
  auto ep = ParseS3Endpoint(fmt::format("http://127.0.0.1:{}", port()), "us-east-1", true);
  ASSERT_TRUE(ep.has_value());
  auto old = PresignUrl(SigV4Credentials{kAccessKey, Secret(kSecret), ""}, *ep, "GET", kBucket,
                        "sessions/" + session + "/a.txt", Now() - 3600, 60, {});
  ASSERT_TRUE(old.has_value());
  RawReply past = SendRaw(port(), "GET", *old, {});
  EXPECT_EQ(past.status, 403u);
  EXPECT_EQ(past.code, "AccessDenied");
}

// ----- What the store refuses to sign ---------------------------------------------------------

TEST_F(S3StoreTest, RefusesToPresignAnUploadWithoutSize) {
  auto store = MakeStore(Options());
  PresignRequest req = Put(Session(), "a.txt", 5);
  req.exact_size.reset();
  req.max_bytes = 1000;
  auto url = store->Presign(req);
  ASSERT_FALSE(url.has_value());
  EXPECT_EQ(url.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(url.error().message, "size is required for uploads with the s3 store");
}

TEST_F(S3StoreTest, RefusesToPresignWhatItCannotBound) {
  auto store = MakeStore(Options());
  const std::string session = Session();
  PresignRequest big = Put(session, "a.txt", 5);
  big.max_bytes = 4;
  auto r = store->Presign(big);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kPayloadTooLarge);

  for (const std::string& name : std::vector<std::string>{"", ".", "..", ".hidden", "a/b", "a\\b",
                                                          "a\nb", std::string(256, 'x')}) {
    auto bad = store->Presign(Put(session, name, 5));
    ASSERT_FALSE(bad.has_value()) << name;
    EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument) << name;
  }
  for (const std::string id : {"", "ses/x", "..", "ses x"}) {
    auto bad = store->Presign(Put(id, "a.txt", 5));
    ASSERT_FALSE(bad.has_value()) << id;
    EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument) << id;
  }
  PresignRequest past = Get(session, "a.txt");
  past.expires_at = Now() - 1;
  EXPECT_FALSE(store->Presign(past).has_value());
  PresignRequest too_long = Get(session, "a.txt", int64_t{kMaxPresignExpirySeconds} + 10);
  EXPECT_FALSE(store->Presign(too_long).has_value());
  PresignRequest del = Get(session, "a.txt");
  del.method = "DELETE";
  EXPECT_FALSE(store->Presign(del).has_value());
  PresignRequest negative = Put(session, "a.txt", -1);
  EXPECT_FALSE(store->Presign(negative).has_value());
  PresignRequest type = Put(session, "a.txt", 5);
  type.content_type = "text/plain\r\nx-amz-acl: public-read";
  EXPECT_FALSE(store->Presign(type).has_value());
}

// ----- The control plane's own uploads and copies (Put, CopyTo) -------------------------------

// A spool directory of the test's own, removed after.
class SpoolDir {
 public:
  SpoolDir() {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / "airlock-s3-spool-XXXXXX").string();
    EXPECT_NE(::mkdtemp(tmpl.data()), nullptr);
    path_ = tmpl;
  }
  ~SpoolDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  // A spool file holding `data`, as the control plane leaves one for Put.
  std::string Spool(const std::string& data, const std::string& name = ".upload-1") const {
    std::string file = path_ + "/" + name;
    std::ofstream(file, std::ios::binary) << data;
    return file;
  }
  size_t Entries() const {
    size_t n = 0;
    for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(path_)) ++n;
    return n;
  }

 private:
  std::string path_;
};

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Round trips a file larger than one piece of the client's file body (256 KiB) and than
// Beast's default limit of a response body (8 MiB) through Put and CopyTo, the control plane's
// own way in and out, and checks what a sandbox's URL then sees.
void PutAndCopyBack(BlobStore& store, const SpoolDir& dir, const std::string& session,
                    uint16_t port) {
  const std::string data = Bytes((9 << 20) + 7, 9);
  std::string spool = dir.Spool(data);
  auto put = store.Put(session, "big file.bin", spool, static_cast<int64_t>(data.size()));
  ASSERT_TRUE(put.has_value()) << put.error().message;
  EXPECT_FALSE(std::filesystem::exists(spool)) << "Put takes the spool file";

  auto files = store.List(session);
  ASSERT_TRUE(files.has_value()) << files.error().message;
  ASSERT_EQ(files->size(), 1u);
  EXPECT_EQ((*files)[0].name, "big file.bin");
  EXPECT_EQ((*files)[0].size, static_cast<int64_t>(data.size()));

  const std::string copy = dir.path() + "/.download-1";
  auto copied = store.CopyTo(session, "big file.bin", copy);
  ASSERT_TRUE(copied.has_value()) << copied.error().message;
  EXPECT_TRUE(ReadAll(copy) == data) << "CopyTo brings the same bytes back";
  std::filesystem::remove(copy);

  if (port != 0) {
    PresignRequest get;
    get.session_id = session;
    get.name = "big file.bin";
    get.method = "GET";
    get.expires_at = Now() + 60;
    auto url = store.Presign(get);
    ASSERT_TRUE(url.has_value()) << url.error().message;
    RawReply got = SendRaw(port, "GET", url->url, url->headers);
    ASSERT_EQ(got.status, 200u) << got.body;
    EXPECT_TRUE(got.body == data);
  }
}

TEST_F(S3StoreTest, PutSendsASpoolFileWholeAndCopyToBringsItBack) {
  SpoolDir dir;
  auto store = MakeStore(Options());
  PutAndCopyBack(*store, dir, Session(), port());
  EXPECT_EQ(dir.Entries(), 0u);

  // The same name again replaces the object.
  std::string spool = dir.Spool("short");
  ASSERT_TRUE(store->Put(Session(), "big file.bin", spool, 5).has_value());
  const std::string copy = dir.path() + "/.download-2";
  ASSERT_TRUE(store->CopyTo(Session(), "big file.bin", copy).has_value());
  EXPECT_EQ(ReadAll(copy), "short");
}

TEST_F(S3TlsTest, PutAndCopyToGoOverTls) {
  SpoolDir dir;
  auto store = MakeStore(TlsOptions());
  PutAndCopyBack(*store, dir, Session(), 0);
}

TEST_F(S3StoreTest, PutRefusesWhatItCannotSendWholeAndRemovesTheSpool) {
  SpoolDir dir;
  auto store = MakeStore(Options());
  const std::string session = Session();
  // A spool file of another size than the upload received: nothing is sent.
  std::string spool = dir.Spool("12345");
  auto wrong = store->Put(session, "a.bin", spool, 6);
  ASSERT_FALSE(wrong.has_value());
  EXPECT_EQ(wrong.error().code, ErrorCode::kInternal);
  EXPECT_FALSE(std::filesystem::exists(spool));
  // Names and ids a key must never carry.
  for (const auto& [id, name] : std::vector<std::pair<std::string, std::string>>{
           {session, "../x"}, {session, ".hidden"}, {"ses/x", "a.bin"}, {"..", "a.bin"}}) {
    spool = dir.Spool("x");
    auto bad = store->Put(id, name, spool, 1);
    ASSERT_FALSE(bad.has_value()) << id << " " << name;
    EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument);
    EXPECT_FALSE(std::filesystem::exists(spool)) << id << " " << name;
  }
  auto files = store->List(session);
  ASSERT_TRUE(files.has_value()) << files.error().message;
  EXPECT_TRUE(files->empty());

  auto missing = store->CopyTo(session, "nothing.bin", dir.path() + "/.download-x");
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
}

TEST_F(S3StoreTest, TheSpoolDirectoryIsMadePrivateAndEmptiedOfWhatACrashLeft) {
  SpoolDir dir;
  const std::string spool = dir.path() + "/spool";
  std::filesystem::create_directories(spool + "/.leftover-dir");
  std::ofstream(spool + "/.upload-left") << "half";
  S3StoreOptions o = Options();
  o.spool_dir = spool;
  auto store = MakeStore(o);
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(std::filesystem::is_empty(spool));
  struct stat st {};
  ASSERT_EQ(::stat(spool.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  auto where = store->SpoolDir(Session());
  ASSERT_TRUE(where.has_value()) << where.error().message;
  EXPECT_EQ(*where, spool);
  EXPECT_FALSE(store->SpoolDir("../x").has_value());
  // Without one, the control plane's own uploads are refused, never written elsewhere.
  auto none = MakeStore(Options())->SpoolDir(Session());
  ASSERT_FALSE(none.has_value());
  EXPECT_EQ(none.error().code, ErrorCode::kUnimplemented);
}

// ----- Listing and downloads ------------------------------------------------------------------

TEST_F(S3StoreTest, ListFollowsPagesAndKeepsToTheSession) {
  S3StoreOptions o = Options();
  o.list_page_size = 2;
  auto store = MakeStore(o);
  // "ses_x" and "ses_x1": one is a prefix of the other's name, not of its key prefix.
  const std::string session = Session(), neighbour = Session("1");
  for (int i = 0; i < 5; ++i) {
    Upload(*store, session, fmt::format("f{}.bin", i),
           Bytes(static_cast<size_t>(100 + i), static_cast<unsigned>(i)));
  }
  Upload(*store, neighbour, "other.bin", "xx");
  // A key under the session that no file name can produce: not a session file.
  auto ep = ParseS3Endpoint(fmt::format("http://127.0.0.1:{}", port()), "us-east-1", true);
  ASSERT_TRUE(ep.has_value());
  auto nested = PresignUrl(SigV4Credentials{kAccessKey, Secret(kSecret), ""}, *ep, "PUT", kBucket,
                           "sessions/" + session + "/dir/inner.bin", Now(), 60, {});
  ASSERT_TRUE(nested.has_value());
  ASSERT_EQ(SendRaw(port(), "PUT", *nested, {}, "nested").status, 200u);

  auto files = store->List(session);
  ASSERT_TRUE(files.has_value()) << files.error().message;
  ASSERT_EQ(files->size(), 5u);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ((*files)[static_cast<size_t>(i)].name, fmt::format("f{}.bin", i));
    EXPECT_EQ((*files)[static_cast<size_t>(i)].size, 100 + i);
  }
  auto used = store->UsedBytes(session);
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(*used, 100 + 101 + 102 + 103 + 104);
  auto theirs = store->List(neighbour);
  ASSERT_TRUE(theirs.has_value());
  ASSERT_EQ(theirs->size(), 1u);
  EXPECT_EQ((*theirs)[0].name, "other.bin");
}

TEST_F(S3StoreTest, AnEmptySessionListsNothing) {
  auto store = MakeStore(Options());
  auto files = store->List(Session());
  ASSERT_TRUE(files.has_value()) << files.error().message;
  EXPECT_TRUE(files->empty());
  auto used = store->UsedBytes(Session());
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(*used, 0);
}

TEST_F(S3StoreTest, DownloadOfAMissingFileIsNotFound) {
  auto store = MakeStore(Options());
  auto r = store->Download(Session(), "missing.txt", 60);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
}

TEST_F(S3StoreTest, AMissingBucketIsUnavailableWithS3sCode) {
  S3StoreOptions o = Options();
  o.bucket = "no-such-bucket";
  auto store = MakeStore(o);
  auto r = store->List(Session());
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kUnavailable);
  EXPECT_EQ(r.error().message, "S3 ListObjectsV2 failed: HTTP 404 NoSuchBucket");
}

// ----- Transport failures ---------------------------------------------------------------------

TEST(S3StoreTransportTest, NothingListeningIsUnavailable) {
  asio::io_context io;
  asio::ip::tcp::acceptor probe(io, {asio::ip::make_address("127.0.0.1"), 0});
  const uint16_t port = probe.local_endpoint().port();
  probe.close();
  S3StoreOptions o;
  o.endpoint = fmt::format("http://127.0.0.1:{}", port);
  o.bucket = kBucket;
  o.creds = SigV4Credentials{kAccessKey, Secret(kSecret), ""};
  auto store = MakeS3BlobStore(o);
  ASSERT_TRUE(store.has_value());
  auto r = (*store)->List("ses_1");
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kUnavailable);
  EXPECT_THAT(r.error().message, HasSubstr("cannot connect"));
}

TEST(S3StoreTransportTest, AServerThatNeverAnswersTimesOut) {
  asio::io_context io;
  // Connections complete in the kernel's backlog; nothing ever reads or answers them.
  asio::ip::tcp::acceptor silent(io, {asio::ip::make_address("127.0.0.1"), 0});
  S3StoreOptions o;
  o.endpoint = fmt::format("http://127.0.0.1:{}", silent.local_endpoint().port());
  o.bucket = kBucket;
  o.creds = SigV4Credentials{kAccessKey, Secret(kSecret), ""};
  o.timeout = std::chrono::milliseconds(300);
  auto store = MakeS3BlobStore(o);
  ASSERT_TRUE(store.has_value());
  const auto start = std::chrono::steady_clock::now();
  auto r = (*store)->List("ses_1");
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kDeadlineExceeded);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

// ----- TLS ------------------------------------------------------------------------------------

TEST_F(S3TlsTest, TalksToATrustedServerByIpAddress) {
  auto store = MakeStore(TlsOptions());
  auto files = store->List(Session());
  ASSERT_TRUE(files.has_value()) << files.error().message;
  EXPECT_TRUE(files->empty());
  auto missing = store->Download(Session(), "a.txt", 60);
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
}

TEST_F(S3TlsTest, VirtualHostedChecksTheBucketsHostName) {
  S3StoreOptions o = TlsOptions(false);
  auto store = MakeStore(o);
  auto files = store->List(Session());
  // Any answer from S3 means the certificate named airlock-test.s3.localhost (a failed check
  // ends in "certificate verification failed"); this server checks signatures and so refuses
  // virtual-hosted ones (see S3VhostTest).
  if (!files.has_value()) {
    EXPECT_EQ(files.error().message, "S3 ListObjectsV2 failed: HTTP 403 SignatureDoesNotMatch");
  }
  auto url = store->Presign(Get(Session(), "a.txt"));
  ASSERT_TRUE(url.has_value());
  EXPECT_THAT(url->url, StartsWith(fmt::format("https://{}.s3.{}:{}/sessions/", kBucket,
                                               kServiceEndpoint, port())));
}

TEST_F(S3TlsTest, RefusesACertificateNoTrustedAuthoritySigned) {
  S3StoreOptions o = TlsOptions();
  o.ca_file.clear();
  auto store = MakeStore(o);
  auto r = store->List(Session());
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kUnavailable);
  EXPECT_THAT(r.error().message, HasSubstr("certificate verification failed"));
}

TEST_F(S3TlsTest, RefusesACertificateForAnotherName) {
  S3StoreOptions o = TlsOptions();
  o.endpoint = fmt::format("https://storage.example:{}", port());
  o.connect_to = fmt::format("127.0.0.1:{}", port());
  auto store = MakeStore(o);
  auto r = store->List(Session());
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kUnavailable);
  EXPECT_THAT(r.error().message, HasSubstr("certificate verification failed"));
}

// ----- Without a server: options and URL shapes -----------------------------------------------

S3StoreOptions AwsOptions() {
  S3StoreOptions o;
  o.endpoint = "https://s3.eu-west-1.amazonaws.com";
  o.region = "eu-west-1";
  o.bucket = "my-bucket";
  o.path_style = false;
  o.creds = SigV4Credentials{"AKIAIOSFODNN7EXAMPLE",
                             Secret("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"), ""};
  return o;
}

TEST(S3StoreOptionsTest, VirtualHostedUrlsOnAwsNameTheBucketInTheHost) {
  auto store = MakeS3BlobStore(AwsOptions());
  ASSERT_TRUE(store.has_value()) << store.error().message;
  PresignRequest r;
  r.session_id = "ses_1";
  r.name = "a b.txt";
  r.method = "PUT";
  r.exact_size = 7;
  r.expires_at = Now() + 600;
  auto url = (*store)->Presign(r);
  ASSERT_TRUE(url.has_value()) << url.error().message;
  EXPECT_THAT(
      url->url,
      StartsWith("https://my-bucket.s3.eu-west-1.amazonaws.com/sessions/ses_1/a%20b.txt?"
                 "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F"));
  EXPECT_THAT(url->url, HasSubstr("%2Feu-west-1%2Fs3%2Faws4_request&"));
  EXPECT_THAT(
      url->url,
      HasSubstr("&X-Amz-Expires=600&X-Amz-SignedHeaders=content-length%3Bhost&X-Amz-Signature="));
  EXPECT_THAT(url->url, Not(HasSubstr("wJalrXUtnFEMI")));
  EXPECT_EQ(url->headers, (Params{{"Content-Length", "7"}}));
}

TEST(S3StoreOptionsTest, PathStyleUrlsNameTheBucketInThePath) {
  S3StoreOptions o = AwsOptions();
  o.path_style = true;
  o.prefix = "airlock/files/";
  auto store = MakeS3BlobStore(o);
  ASSERT_TRUE(store.has_value()) << store.error().message;
  PresignRequest r;
  r.session_id = "ses_1";
  r.name = "x.txt";
  r.method = "GET";
  r.expires_at = Now() + 60;
  auto url = (*store)->Presign(r);
  ASSERT_TRUE(url.has_value());
  EXPECT_THAT(
      url->url,
      StartsWith("https://s3.eu-west-1.amazonaws.com/my-bucket/airlock/files/ses_1/x.txt?"));
}

TEST(S3StoreOptionsTest, RefusesOptionsItCannotWorkWith) {
  auto refused = [](S3StoreOptions o) {
    auto s = MakeS3BlobStore(std::move(o));
    EXPECT_FALSE(s.has_value());
    if (!s) {
      EXPECT_EQ(s.error().code, ErrorCode::kInvalidArgument);
      EXPECT_THAT(s.error().message, Not(HasSubstr("wJalrXUtnFEMI")));
    }
  };
  S3StoreOptions o = AwsOptions();
  o.bucket = "my.dotted.bucket";  // no wildcard certificate covers my.dotted.bucket.s3...
  refused(o);
  o = AwsOptions();
  o.bucket = "Bad_Bucket";
  refused(o);
  o = AwsOptions();
  o.endpoint = "ftp://s3.amazonaws.com";
  refused(o);
  o = AwsOptions();
  o.endpoint = "https://127.0.0.1:9000";  // virtual-hosted needs a DNS name
  refused(o);
  o = AwsOptions();
  o.creds.secret_access_key = Secret("");
  refused(o);
  o = AwsOptions();
  o.prefix = "/absolute/";
  refused(o);
  o = AwsOptions();
  o.list_page_size = 0;
  refused(o);
  o = AwsOptions();
  o.timeout = std::chrono::milliseconds(0);
  refused(o);
  o = AwsOptions();
  o.connect_to = "127.0.0.1";
  refused(o);
  o = AwsOptions();
  o.ca_file = "/nonexistent/ca.pem";
  refused(o);
}

}  // namespace
}  // namespace airlock::files
