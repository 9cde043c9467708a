// Tests of AWS Signature Version 4 and the ListObjectsV2 reader.
//
// The signing tests hold each step against the values AWS publishes, not against this code's
// own output: a signer that is merely self-consistent fails only in production, as an opaque
// 403 SignatureDoesNotMatch.
//
// Sources of the expected values:
//   [S3-QUERY]  https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html
//               ("An example": presigned GET of examplebucket/test.txt, 86400 s).
//   [S3-HEADER] https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html
//               ("Examples: Signature Calculations": GET Object, PUT Object, GET Bucket
//               Lifecycle, Get Bucket (List Objects)).
//   [GR-KEY]    https://docs.aws.amazon.com/general/latest/gr/signature-v4-examples.html
//               (deriving a signing key: secret wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY,
//               20120215, us-east-1, iam).
// The S3 examples all use access key AKIAIOSFODNN7EXAMPLE, secret
// wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY (note '/', where the [GR-KEY] secret has '+'),
// region us-east-1 and the time 20130524T000000Z (Unix 1369353600).

#include "files/sigv4.h"

#include <cstdint>
#include <random>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/crypto.h"

namespace airlock::files {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr int64_t kExampleTime = 1369353600;  // 2013-05-24T00:00:00Z
constexpr std::string_view kExampleAccessKey = "AKIAIOSFODNN7EXAMPLE";
constexpr std::string_view kExampleSecret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

SigV4Credentials ExampleCredentials() {
  return SigV4Credentials{std::string(kExampleAccessKey), Secret(std::string(kExampleSecret)), ""};
}

// The endpoint of the [S3-HEADER] examples: requests go to the bucket's own host name.
S3Endpoint ExampleBucketHost() {
  auto e = ParseS3Endpoint("https://examplebucket.s3.amazonaws.com", "us-east-1", true);
  EXPECT_TRUE(e.has_value());
  return *e;
}

std::string SignatureOf(const Params& headers) {
  for (const auto& [name, value] : headers) {
    if (name == "Authorization") {
      size_t at = value.find("Signature=");
      return at == std::string::npos ? "" : value.substr(at + 10);
    }
  }
  return "";
}

std::string HeaderValue(const Params& headers, std::string_view name) {
  for (const auto& [n, v] : headers) {
    if (n == name) {
      return v;
    }
  }
  return "";
}

// ----- Published vectors ---------------------------------------------------------------------

// [GR-KEY] publishes kSigning for these inputs (with the intermediates kDate = 969fbb94...,
// kRegion = 69daa020..., kService = f72cfd46...).
TEST(SigV4Test, DerivesTheSigningKeyOfTheGeneralReferenceExample) {
  Secret key = DeriveSigningKey(Secret("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"), "20120215",
                                "us-east-1", "iam");
  EXPECT_EQ(HexEncode(key.Reveal()),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d");
}

// [S3-QUERY], step by step: the canonical request as printed there, its published hash
// (the last line of the string to sign) and the published signature.
TEST(SigV4Test, PresignStepsMatchTheS3QueryStringExample) {
  Params query = {
      {"X-Amz-Algorithm", "AWS4-HMAC-SHA256"},
      {"X-Amz-Credential", "AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request"},
      {"X-Amz-Date", "20130524T000000Z"},
      {"X-Amz-Expires", "86400"},
      {"X-Amz-SignedHeaders", "host"},
  };
  auto headers = CanonicalizeHeaders({{"Host", "examplebucket.s3.amazonaws.com"}});
  ASSERT_TRUE(headers.has_value());
  std::string canonical =
      CanonicalRequest("GET", "/test.txt", CanonicalQueryString(query), *headers, kUnsignedPayload);
  EXPECT_EQ(canonical,
            "GET\n"
            "/test.txt\n"
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2F"
            "us-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&"
            "X-Amz-SignedHeaders=host\n"
            "host:examplebucket.s3.amazonaws.com\n"
            "\n"
            "host\n"
            "UNSIGNED-PAYLOAD");
  std::string scope = CredentialScope("20130524", "us-east-1", "s3");
  std::string sts = StringToSign("20130524T000000Z", scope, canonical);
  EXPECT_EQ(sts,
            "AWS4-HMAC-SHA256\n"
            "20130524T000000Z\n"
            "20130524/us-east-1/s3/aws4_request\n"
            "3bfa292879f6447bbcda7001decf97f4a54dc650c8942174ae0a9121cf58ad04");
  Secret key = DeriveSigningKey(Secret(std::string(kExampleSecret)), "20130524", "us-east-1", "s3");
  EXPECT_EQ(SignatureHex(key, sts),
            "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
}

// [S3-QUERY], end to end: the presigned URL the page prints, in virtual-hosted style.
TEST(SigV4Test, PresignUrlMatchesTheS3QueryStringExample) {
  auto endpoint = ParseS3Endpoint("https://s3.amazonaws.com", "us-east-1", false);
  ASSERT_TRUE(endpoint.has_value());
  auto url = PresignUrl(ExampleCredentials(), *endpoint, "GET", "examplebucket", "test.txt",
                        kExampleTime, 86400, {});
  ASSERT_TRUE(url.has_value()) << url.error().message;
  EXPECT_EQ(*url,
            "https://examplebucket.s3.amazonaws.com/test.txt"
            "?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
            "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
            "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
}

// [S3-HEADER] "Example: GET Object": the canonical request, its published hash, and the
// published Authorization.
TEST(SigV4Test, SignsTheS3GetObjectExample) {
  auto headers = CanonicalizeHeaders({{"Host", "examplebucket.s3.amazonaws.com"},
                                      {"Range", "bytes=0-9"},
                                      {"x-amz-content-sha256", std::string(kEmptyPayloadSha256)},
                                      {"x-amz-date", "20130524T000000Z"}});
  ASSERT_TRUE(headers.has_value());
  std::string canonical = CanonicalRequest("GET", "/test.txt", "", *headers, kEmptyPayloadSha256);
  EXPECT_EQ(
      canonical,
      "GET\n/test.txt\n\n"
      "host:examplebucket.s3.amazonaws.com\n"
      "range:bytes=0-9\n"
      "x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
      "x-amz-date:20130524T000000Z\n\n"
      "host;range;x-amz-content-sha256;x-amz-date\n"
      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex(canonical),
            "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972");

  auto signed_headers =
      SignHeaders(ExampleCredentials(), ExampleBucketHost(), "GET", "/test.txt", {},
                  {{"Range", "bytes=0-9"}}, kEmptyPayloadSha256, kExampleTime);
  ASSERT_TRUE(signed_headers.has_value()) << signed_headers.error().message;
  EXPECT_EQ(HeaderValue(*signed_headers, "Authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
            "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
            "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
  EXPECT_EQ(HeaderValue(*signed_headers, "x-amz-date"), "20130524T000000Z");
  EXPECT_EQ(HeaderValue(*signed_headers, "x-amz-content-sha256"), kEmptyPayloadSha256);
  EXPECT_EQ(signed_headers->size(), 3u);
}

// [S3-HEADER] "Example: PUT Object": a signed payload, a Date header, a '$' in the key.
TEST(SigV4Test, SignsTheS3PutObjectExample) {
  std::string payload_hash = Sha256Hex("Welcome to Amazon S3.");
  EXPECT_EQ(payload_hash, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
  std::string path = "/" + UriEncode("test$file.text", false);
  EXPECT_EQ(path, "/test%24file.text");

  auto headers = CanonicalizeHeaders({{"Date", "Fri, 24 May 2013 00:00:00 GMT"},
                                      {"Host", "examplebucket.s3.amazonaws.com"},
                                      {"x-amz-content-sha256", payload_hash},
                                      {"x-amz-date", "20130524T000000Z"},
                                      {"x-amz-storage-class", "REDUCED_REDUNDANCY"}});
  ASSERT_TRUE(headers.has_value());
  EXPECT_EQ(Sha256Hex(CanonicalRequest("PUT", path, "", *headers, payload_hash)),
            "9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d");

  auto signed_headers = SignHeaders(
      ExampleCredentials(), ExampleBucketHost(), "PUT", path, {},
      {{"Date", "Fri, 24 May 2013 00:00:00 GMT"}, {"x-amz-storage-class", "REDUCED_REDUNDANCY"}},
      payload_hash, kExampleTime);
  ASSERT_TRUE(signed_headers.has_value()) << signed_headers.error().message;
  EXPECT_THAT(HeaderValue(*signed_headers, "Authorization"),
              HasSubstr("SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;"
                        "x-amz-storage-class, "));
  EXPECT_EQ(SignatureOf(*signed_headers),
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");
}

// [S3-HEADER] "Example: GET Bucket Lifecycle": a query parameter without a value.
TEST(SigV4Test, SignsTheS3GetBucketLifecycleExample) {
  Params query = {{"lifecycle", ""}};
  EXPECT_EQ(CanonicalQueryString(query), "lifecycle=");
  auto headers = CanonicalizeHeaders({{"host", "examplebucket.s3.amazonaws.com"},
                                      {"x-amz-content-sha256", std::string(kEmptyPayloadSha256)},
                                      {"x-amz-date", "20130524T000000Z"}});
  ASSERT_TRUE(headers.has_value());
  EXPECT_EQ(Sha256Hex(CanonicalRequest("GET", "/", "lifecycle=", *headers, kEmptyPayloadSha256)),
            "9766c798316ff2757b517bc739a67f6213b4ab36dd5da2f94eaebf79c77395ca");

  auto signed_headers = SignHeaders(ExampleCredentials(), ExampleBucketHost(), "GET", "/", query,
                                    {}, kEmptyPayloadSha256, kExampleTime);
  ASSERT_TRUE(signed_headers.has_value()) << signed_headers.error().message;
  EXPECT_EQ(SignatureOf(*signed_headers),
            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543");
}

// [S3-HEADER] "Example: Get Bucket (List Objects)": the query is given out of order on
// purpose; the canonical form sorts it.
TEST(SigV4Test, SignsTheS3ListObjectsExample) {
  Params query = {{"prefix", "J"}, {"max-keys", "2"}};
  EXPECT_EQ(CanonicalQueryString(query), "max-keys=2&prefix=J");
  auto headers = CanonicalizeHeaders({{"host", "examplebucket.s3.amazonaws.com"},
                                      {"x-amz-content-sha256", std::string(kEmptyPayloadSha256)},
                                      {"x-amz-date", "20130524T000000Z"}});
  ASSERT_TRUE(headers.has_value());
  EXPECT_EQ(
      Sha256Hex(CanonicalRequest("GET", "/", "max-keys=2&prefix=J", *headers, kEmptyPayloadSha256)),
      "df57d21db20da04d7fa30298dd4488ba3a2b47ca3a489c74750e0f1e7df1b9b7");

  auto signed_headers = SignHeaders(ExampleCredentials(), ExampleBucketHost(), "GET", "/", query,
                                    {}, kEmptyPayloadSha256, kExampleTime);
  ASSERT_TRUE(signed_headers.has_value()) << signed_headers.error().message;
  EXPECT_EQ(SignatureOf(*signed_headers),
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7");
}

// ----- Encoding and canonical forms ----------------------------------------------------------

TEST(SigV4Test, UriEncodeKeepsOnlyUnreservedBytes) {
  EXPECT_EQ(UriEncode("", true), "");
  EXPECT_EQ(UriEncode("AZaz09-._~", true), "AZaz09-._~");
  EXPECT_EQ(UriEncode("a b", true), "a%20b");  // %20, never '+'
  EXPECT_EQ(UriEncode("a+b*c", true), "a%2Bb%2Ac");
  EXPECT_EQ(UriEncode("100%", true), "100%25");  // an existing escape is encoded again
  EXPECT_EQ(UriEncode("!'()", true), "%21%27%28%29");
  EXPECT_EQ(UriEncode("=&?#", true), "%3D%26%3F%23");
  EXPECT_EQ(UriEncode(std::string("a\0b", 3), true), "a%00b");
  EXPECT_EQ(UriEncode("\xff\x80", true), "%FF%80");  // upper-case hex, raw bytes
}

TEST(SigV4Test, UriEncodeKeepsSlashOnlyWhenAsked) {
  EXPECT_EQ(UriEncode("dir/sub/file.txt", false), "dir/sub/file.txt");
  EXPECT_EQ(UriEncode("dir/sub/file.txt", true), "dir%2Fsub%2Ffile.txt");
  EXPECT_EQ(UriEncode("//", false), "//");
}

TEST(SigV4Test, UriEncodeEncodesEachByteOfUtf8) {
  EXPECT_EQ(UriEncode("é", true), "%C3%A9");
  EXPECT_EQ(UriEncode("€/日", false), "%E2%82%AC/%E6%97%A5");
  EXPECT_EQ(UriEncode("\xF0\x9F\x98\x80", true), "%F0%9F%98%80");
}

TEST(SigV4Test, FormatsAmzDateAndRefusesTimesItCannotWrite) {
  EXPECT_EQ(FormatAmzDate(0).value(), "19700101T000000Z");
  EXPECT_EQ(FormatAmzDate(kExampleTime).value(), "20130524T000000Z");
  EXPECT_EQ(FormatAmzDate(951782400 + 86399).value(), "20000229T235959Z");  // a leap day
  EXPECT_EQ(FormatAmzDate(253402300799).value(), "99991231T235959Z");
  EXPECT_FALSE(FormatAmzDate(-1).has_value());
  EXPECT_FALSE(FormatAmzDate(253402300800).has_value());
  EXPECT_FALSE(FormatAmzDate(INT64_MIN).has_value());
}

TEST(SigV4Test, CanonicalQuerySortsByEncodedNameThenValue) {
  EXPECT_EQ(CanonicalQueryString({}), "");
  EXPECT_EQ(CanonicalQueryString({{"b", "2"}, {"a", "y"}, {"a", "x"}}), "a=x&a=y&b=2");
  EXPECT_EQ(CanonicalQueryString({{"prefix", "dir/a b"}, {"list-type", "2"}}),
            "list-type=2&prefix=dir%2Fa%20b");
  // Sorting is on the encoded bytes: '%' (0x25) sorts before 'A'.
  EXPECT_EQ(CanonicalQueryString({{"A", "1"}, {" ", "2"}}), "%20=2&A=1");
}

TEST(SigV4Test, CanonicalHeadersTrimFoldLowerAndJoin) {
  auto h = CanonicalizeHeaders(
      {{"X-Amz-Meta-Note", "  a   b  c "}, {"Host", "h"}, {"x-amz-meta-note", "second"}});
  ASSERT_TRUE(h.has_value());
  EXPECT_EQ(h->canonical, "host:h\nx-amz-meta-note:a b c,second\n");
  EXPECT_EQ(h->signed_headers, "host;x-amz-meta-note");
}

TEST(SigV4Test, CanonicalHeadersRefuseWhatWouldSplitTheRequest) {
  EXPECT_FALSE(CanonicalizeHeaders({{"x-a", "v\r\nx-evil: 1"}}).has_value());
  EXPECT_FALSE(CanonicalizeHeaders({{"x-a", std::string("v\0w", 3)}}).has_value());
  EXPECT_FALSE(CanonicalizeHeaders({{"", "v"}}).has_value());
  EXPECT_FALSE(CanonicalizeHeaders({{"x a", "v"}}).has_value());
  EXPECT_FALSE(CanonicalizeHeaders({{"x:a", "v"}}).has_value());
}

// ----- Endpoints -----------------------------------------------------------------------------

TEST(SigV4Test, ParsesEndpoints) {
  auto aws = ParseS3Endpoint("https://S3.EU-West-1.amazonaws.com/", "eu-west-1", false);
  ASSERT_TRUE(aws.has_value()) << aws.error().message;
  EXPECT_EQ(aws->scheme, "https");
  EXPECT_EQ(aws->host, "s3.eu-west-1.amazonaws.com");
  EXPECT_EQ(aws->port, 0);
  EXPECT_EQ(aws->region, "eu-west-1");
  EXPECT_FALSE(aws->path_style);
  EXPECT_EQ(HostForBucket(*aws, "b1"), "b1.s3.eu-west-1.amazonaws.com");

  auto minio = ParseS3Endpoint("http://minio:9000", "us-east-1", true);
  ASSERT_TRUE(minio.has_value()) << minio.error().message;
  EXPECT_EQ(minio->port, 9000);
  EXPECT_EQ(HostForBucket(*minio, "b1"), "minio:9000");

  auto default_port = ParseS3Endpoint("https://s3.example.com:443", "us-east-1", true);
  ASSERT_TRUE(default_port.has_value());
  EXPECT_EQ(default_port->port, 0);
  EXPECT_EQ(HostForBucket(*default_port, ""), "s3.example.com");

  auto v6 = ParseS3Endpoint("http://[::1]:9000", "us-east-1", true);
  ASSERT_TRUE(v6.has_value()) << v6.error().message;
  EXPECT_EQ(v6->host, "[::1]");
  EXPECT_EQ(HostForBucket(*v6, "b1"), "[::1]:9000");
}

TEST(SigV4Test, RefusesBadEndpoints) {
  for (std::string_view url : {"",
                               "s3.amazonaws.com",
                               "ftp://s3.amazonaws.com",
                               "https://",
                               "https://:9000",
                               "https://user:pw@s3.amazonaws.com",
                               "https://s3.amazonaws.com/prefix",
                               "https://s3.amazonaws.com?x=1",
                               "https://s3.amazonaws.com#f",
                               "https://host:0",
                               "https://host:65536",
                               "https://host:9x",
                               "https://host:",
                               "https://host:-1",
                               "https://ho st",
                               "https://host!",
                               "https://a..b",
                               "https://[::1",
                               "https://[::1]x",
                               "https://[zz]",
                               "https://host\r\n.evil"}) {
    EXPECT_FALSE(ParseS3Endpoint(url, "us-east-1", true).has_value()) << url;
  }
  EXPECT_FALSE(ParseS3Endpoint("http://127.0.0.1:9000", "us-east-1", false).has_value());
  EXPECT_FALSE(ParseS3Endpoint("http://[::1]:9000", "us-east-1", false).has_value());
  EXPECT_FALSE(ParseS3Endpoint("https://s3.amazonaws.com", "", true).has_value());
  EXPECT_FALSE(ParseS3Endpoint("https://s3.amazonaws.com", "us/east", true).has_value());
  EXPECT_FALSE(ParseS3Endpoint("https://s3.amazonaws.com", "US-EAST-1", true).has_value());
}

// ----- PresignUrl ----------------------------------------------------------------------------

S3Endpoint Minio() { return ParseS3Endpoint("http://minio:9000", "us-east-1", true).value(); }

TEST(SigV4Test, PresignsPathStyleWithEncodedKeyKeepingSlashes) {
  auto url = PresignUrl(ExampleCredentials(), Minio(), "PUT", "airlock-files",
                        "ses_1/out dir/résumé+1.txt", kExampleTime, 900, {});
  ASSERT_TRUE(url.has_value()) << url.error().message;
  EXPECT_THAT(*url, StartsWith("http://minio:9000/airlock-files/ses_1/out%20dir/r%C3%A9sum%C3%A9%2B"
                               "1.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&"));
  EXPECT_THAT(*url, HasSubstr("&X-Amz-Expires=900&"));
  EXPECT_THAT(*url, HasSubstr("&X-Amz-SignedHeaders=host&"));
}

TEST(SigV4Test, PresignSignsTheExtraHeadersTheClientMustSend) {
  auto small = PresignUrl(ExampleCredentials(), Minio(), "PUT", "airlock-files", "k", kExampleTime,
                          900, {{"Content-Length", "10"}, {"Content-Type", "text/plain"}});
  auto big = PresignUrl(ExampleCredentials(), Minio(), "PUT", "airlock-files", "k", kExampleTime,
                        900, {{"Content-Length", "11"}, {"Content-Type", "text/plain"}});
  ASSERT_TRUE(small.has_value() && big.has_value());
  EXPECT_THAT(*small, HasSubstr("&X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost&"));
  // The length is bound into the signature: a URL for 10 bytes does not sign 11.
  EXPECT_NE(small->substr(small->find("X-Amz-Signature=")),
            big->substr(big->find("X-Amz-Signature=")));
}

TEST(SigV4Test, PresignCarriesAndSignsTheSessionToken) {
  SigV4Credentials temporary = ExampleCredentials();
  temporary.session_token = "FwoGZXIvYXdzE/token+with=chars";
  auto with = PresignUrl(temporary, Minio(), "GET", "airlock-files", "k", kExampleTime, 60, {});
  auto without =
      PresignUrl(ExampleCredentials(), Minio(), "GET", "airlock-files", "k", kExampleTime, 60, {});
  ASSERT_TRUE(with.has_value() && without.has_value());
  EXPECT_THAT(*with, HasSubstr("&X-Amz-Security-Token=FwoGZXIvYXdzE%2Ftoken%2Bwith%3Dchars&"));
  EXPECT_THAT(*without, Not(HasSubstr("X-Amz-Security-Token")));
  EXPECT_NE(with->substr(with->find("X-Amz-Signature=")),
            without->substr(without->find("X-Amz-Signature=")));
}

TEST(SigV4Test, PresignAcceptsTheExpiryBounds) {
  for (int expires : {1, kMaxPresignExpirySeconds}) {
    EXPECT_TRUE(PresignUrl(ExampleCredentials(), Minio(), "GET", "airlock-files", "k", kExampleTime,
                           expires, {})
                    .has_value())
        << expires;
  }
}

TEST(SigV4Test, PresignRefusesBadInputs) {
  auto presign = [](std::string_view method, std::string_view bucket, std::string_view key,
                    int64_t now, int expires, const Params& headers) {
    return PresignUrl(ExampleCredentials(), Minio(), method, bucket, key, now, expires, headers);
  };
  struct Case {
    std::string_view what;
    Result<std::string> got;
  };
  const Case cases[] = {
      {"empty bucket", presign("GET", "", "k", kExampleTime, 60, {})},
      {"short bucket", presign("GET", "ab", "k", kExampleTime, 60, {})},
      {"upper-case bucket", presign("GET", "Bucket", "k", kExampleTime, 60, {})},
      {"bucket with slash", presign("GET", "a/b", "k", kExampleTime, 60, {})},
      {"bucket with ..", presign("GET", "a..b", "k", kExampleTime, 60, {})},
      {"bucket ending in -", presign("GET", "abc-", "k", kExampleTime, 60, {})},
      {"64-byte bucket", presign("GET", std::string(64, 'a'), "k", kExampleTime, 60, {})},
      {"empty key", presign("GET", "bucket", "", kExampleTime, 60, {})},
      {"1025-byte key", presign("GET", "bucket", std::string(1025, 'k'), kExampleTime, 60, {})},
      {"key with ..", presign("GET", "bucket", "a/../b", kExampleTime, 60, {})},
      {"key that is .", presign("GET", "bucket", ".", kExampleTime, 60, {})},
      {"key ending in /..", presign("GET", "bucket", "a/..", kExampleTime, 60, {})},
      {"expires 0", presign("GET", "bucket", "k", kExampleTime, 0, {})},
      {"expires -1", presign("GET", "bucket", "k", kExampleTime, -1, {})},
      {"expires 604801", presign("GET", "bucket", "k", kExampleTime, 604801, {})},
      {"lower-case method", presign("get", "bucket", "k", kExampleTime, 60, {})},
      {"empty method", presign("", "bucket", "k", kExampleTime, 60, {})},
      {"method with space", presign("GET X", "bucket", "k", kExampleTime, 60, {})},
      {"negative time", presign("GET", "bucket", "k", -5, 60, {})},
      {"host header", presign("GET", "bucket", "k", kExampleTime, 60, {{"Host", "evil"}})},
      {"authorization header",
       presign("GET", "bucket", "k", kExampleTime, 60, {{"Authorization", "x"}})},
      {"header with CRLF",
       presign("GET", "bucket", "k", kExampleTime, 60, {{"Content-Type", "a\r\nb: c"}})},
  };
  for (const auto& c : cases) {
    ASSERT_FALSE(c.got.has_value()) << c.what;
    EXPECT_EQ(c.got.error().code, ErrorCode::kInvalidArgument) << c.what;
  }
  // Keys with dots that are not whole segments are ordinary keys.
  EXPECT_TRUE(presign("GET", "bucket", "a/.hidden/..x/b.", kExampleTime, 60, {}).has_value());
}

TEST(SigV4Test, RefusesMissingOrUnusableCredentials) {
  SigV4Credentials no_id = ExampleCredentials();
  no_id.access_key_id.clear();
  SigV4Credentials bad_id = ExampleCredentials();
  bad_id.access_key_id = "AKIA/EXAMPLE";
  SigV4Credentials no_secret = ExampleCredentials();
  no_secret.secret_access_key = Secret();
  SigV4Credentials bad_token = ExampleCredentials();
  bad_token.session_token = "tok\nen";
  for (const auto* creds : {&no_id, &bad_id, &no_secret, &bad_token}) {
    EXPECT_FALSE(
        PresignUrl(*creds, Minio(), "GET", "bucket", "k", kExampleTime, 60, {}).has_value());
    EXPECT_FALSE(
        SignHeaders(*creds, Minio(), "GET", "/bucket", {}, {}, kEmptyPayloadSha256, kExampleTime)
            .has_value());
  }
}

TEST(SigV4Test, RefusesAHandBuiltEndpointThatCouldNotHaveBeenParsed) {
  S3Endpoint e;
  e.host = "evil.com/x?";
  EXPECT_FALSE(
      PresignUrl(ExampleCredentials(), e, "GET", "bucket", "k", kExampleTime, 60, {}).has_value());
  e.host = "s3.example.com";
  e.scheme = "gopher";
  EXPECT_FALSE(
      PresignUrl(ExampleCredentials(), e, "GET", "bucket", "k", kExampleTime, 60, {}).has_value());
  e.scheme = "https";
  e.region = "us-east-1/x";
  EXPECT_FALSE(
      PresignUrl(ExampleCredentials(), e, "GET", "bucket", "k", kExampleTime, 60, {}).has_value());
}

// No error message, and no URL, ever shows the secret key.
TEST(SigV4Test, NoErrorOrUrlRevealsTheSecret) {
  const std::string secret = "TOPSECRET-do-not-print-0123456789";
  SigV4Credentials creds{"AKIDEXAMPLE", Secret(secret), "session-token"};
  std::vector<Error> errors;
  auto collect = [&](const auto& r) {
    if (!r.has_value()) {
      errors.push_back(r.error());
    }
  };
  collect(PresignUrl(creds, Minio(), "GET", "", "k", kExampleTime, 60, {}));
  collect(PresignUrl(creds, Minio(), "GET", "bucket", "k", kExampleTime, 0, {}));
  collect(PresignUrl(creds, Minio(), "GET", "bucket", "k", -1, 60, {}));
  collect(PresignUrl(creds, Minio(), "GET", "bucket", "k", kExampleTime, 60, {{secret, "\n"}}));
  collect(
      PresignUrl(creds, Minio(), "GET", "bucket", "k", kExampleTime, 60, {{"x", secret + "\n"}}));
  collect(SignHeaders(creds, Minio(), "GET", "/a b", {}, {}, kEmptyPayloadSha256, kExampleTime));
  collect(SignHeaders(creds, Minio(), "GET", "/", {}, {{"x-amz-date", secret}}, kEmptyPayloadSha256,
                      kExampleTime));
  collect(SignHeaders(creds, Minio(), "GET", "/", {}, {}, secret, kExampleTime));
  ASSERT_EQ(errors.size(), 8u);
  for (const auto& e : errors) {
    EXPECT_THAT(e.message, Not(HasSubstr(secret)));
    EXPECT_THAT(e.message, Not(HasSubstr("TOPSECRET")));
  }
  auto url = PresignUrl(creds, Minio(), "GET", "bucket", "k", kExampleTime, 60, {});
  ASSERT_TRUE(url.has_value());
  EXPECT_THAT(*url, Not(HasSubstr("TOPSECRET")));
}

// ----- SignHeaders ---------------------------------------------------------------------------

TEST(SigV4Test, SignHeadersAddsAndSignsTheSessionToken) {
  SigV4Credentials temporary = ExampleCredentials();
  temporary.session_token = "session/token";
  auto h = SignHeaders(temporary, Minio(), "GET", "/airlock-files", {{"list-type", "2"}}, {},
                       kEmptyPayloadSha256, kExampleTime);
  ASSERT_TRUE(h.has_value()) << h.error().message;
  EXPECT_EQ(HeaderValue(*h, "x-amz-security-token"), "session/token");
  EXPECT_THAT(
      HeaderValue(*h, "Authorization"),
      HasSubstr("SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token,"));
  EXPECT_EQ(h->size(), 4u);
}

TEST(SigV4Test, SignHeadersSignsTheEndpointAuthorityIncludingAnOddPort) {
  auto implicit = SignHeaders(ExampleCredentials(), Minio(), "GET", "/b", {}, {},
                              kEmptyPayloadSha256, kExampleTime);
  auto explicit_host = SignHeaders(ExampleCredentials(), Minio(), "GET", "/b", {},
                                   {{"Host", "minio:9000"}}, kEmptyPayloadSha256, kExampleTime);
  auto without_port = SignHeaders(ExampleCredentials(), Minio(), "GET", "/b", {},
                                  {{"Host", "minio"}}, kEmptyPayloadSha256, kExampleTime);
  ASSERT_TRUE(implicit.has_value() && explicit_host.has_value() && without_port.has_value());
  EXPECT_EQ(SignatureOf(*implicit), SignatureOf(*explicit_host));
  EXPECT_NE(SignatureOf(*implicit), SignatureOf(*without_port));
}

TEST(SigV4Test, SignHeadersRefusesBadInputs) {
  auto sign = [](std::string_view path, const Params& headers, std::string_view hash) {
    return SignHeaders(ExampleCredentials(), Minio(), "GET", path, {}, headers, hash, kExampleTime);
  };
  EXPECT_FALSE(sign("", {}, kEmptyPayloadSha256).has_value());
  EXPECT_FALSE(sign("bucket", {}, kEmptyPayloadSha256).has_value());
  EXPECT_FALSE(sign("/a b", {}, kEmptyPayloadSha256).has_value());
  EXPECT_FALSE(sign("/a?x=1", {}, kEmptyPayloadSha256).has_value());
  EXPECT_FALSE(sign("/a%2f", {}, kEmptyPayloadSha256).has_value());  // not UriEncode's form
  EXPECT_FALSE(sign("/a%2", {}, kEmptyPayloadSha256).has_value());
  EXPECT_FALSE(sign("/a%", {}, kEmptyPayloadSha256).has_value());
  EXPECT_FALSE(sign("/", {{"Authorization", "x"}}, kEmptyPayloadSha256).has_value());
  EXPECT_FALSE(sign("/", {{"X-Amz-Date", "x"}}, kEmptyPayloadSha256).has_value());
  EXPECT_FALSE(sign("/", {{"x-amz-content-sha256", "x"}}, kEmptyPayloadSha256).has_value());
  EXPECT_FALSE(sign("/", {{"x-amz-security-token", "x"}}, kEmptyPayloadSha256).has_value());
  EXPECT_FALSE(sign("/", {{"host", "a"}, {"Host", "b"}}, kEmptyPayloadSha256).has_value());
  EXPECT_FALSE(sign("/", {}, "").has_value());
  EXPECT_FALSE(sign("/", {}, "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855")
                   .has_value());
  EXPECT_FALSE(sign("/", {}, std::string(63, 'a')).has_value());
  EXPECT_TRUE(sign("/a%2Fb/%C3%A9", {}, kUnsignedPayload).has_value());
}

// ----- ParseListObjectsV2 --------------------------------------------------------------------

// A reply in the shape the ListObjectsV2 API reference documents
// (https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListObjectsV2.html), with our own values.
constexpr std::string_view kListReply = R"(<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>airlock-files</Name>
  <Prefix>ses_1/</Prefix>
  <KeyCount>2</KeyCount>
  <MaxKeys>1000</MaxKeys>
  <IsTruncated>false</IsTruncated>
  <Contents>
    <Key>ses_1/a.txt</Key>
    <LastModified>2024-01-02T03:04:05.000Z</LastModified>
    <ETag>&quot;9b2cf535f27731c974343645a3985328&quot;</ETag>
    <Size>434234</Size>
    <StorageClass>STANDARD</StorageClass>
  </Contents>
  <Contents>
    <Key>ses_1/empty</Key>
    <LastModified>2024-01-02T03:04:06.000Z</LastModified>
    <ETag>"d41d8cd98f00b204e9800998ecf8427e"</ETag>
    <Size>0</Size>
    <Owner><ID>abc</ID><DisplayName>me</DisplayName></Owner>
    <StorageClass>STANDARD</StorageClass>
  </Contents>
</ListBucketResult>
)";

TEST(ListObjectsV2Test, ReadsADocumentedShapeReply) {
  std::string token = "stale";
  auto objects = ParseListObjectsV2(kListReply, &token);
  ASSERT_TRUE(objects.has_value()) << objects.error().message;
  ASSERT_EQ(objects->size(), 2u);
  EXPECT_EQ((*objects)[0].key, "ses_1/a.txt");
  EXPECT_EQ((*objects)[0].size, 434234);
  EXPECT_EQ((*objects)[0].last_modified, "2024-01-02T03:04:05.000Z");
  EXPECT_EQ((*objects)[1].key, "ses_1/empty");
  EXPECT_EQ((*objects)[1].size, 0);
  EXPECT_EQ(token, "");
}

std::string ListWith(std::string_view contents, std::string_view tail = "") {
  return std::string("<ListBucketResult><IsTruncated>false</IsTruncated>") + std::string(contents) +
         std::string(tail) + "</ListBucketResult>";
}

TEST(ListObjectsV2Test, ReturnsTheContinuationTokenOfATruncatedPage) {
  std::string xml =
      "<ListBucketResult><IsTruncated>true</IsTruncated>"
      "<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>"
      "<Contents><Key>k</Key><Size>1</Size></Contents></ListBucketResult>";
  std::string token;
  auto objects = ParseListObjectsV2(xml, &token);
  ASSERT_TRUE(objects.has_value()) << objects.error().message;
  EXPECT_EQ(objects->size(), 1u);
  EXPECT_EQ(token, "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=");
  EXPECT_TRUE(ParseListObjectsV2(xml, nullptr).has_value());
}

TEST(ListObjectsV2Test, DecodesEntitiesAndCharacterReferences) {
  auto objects = ParseListObjectsV2(
      ListWith("<Contents><Key>a&amp;b&lt;c&gt;d&quot;e&apos;f&#65;&#x42;&#x20AC;&#128512;</Key>"
               "<Size>7</Size></Contents><Contents><Key>sp ace</Key><Size>0</Size></Contents>"),
      nullptr);
  ASSERT_TRUE(objects.has_value()) << objects.error().message;
  ASSERT_EQ(objects->size(), 2u);
  EXPECT_EQ((*objects)[0].key, "a&b<c>d\"e'fAB\xE2\x82\xAC\xF0\x9F\x98\x80");
  EXPECT_EQ((*objects)[1].key, "sp ace");
}

TEST(ListObjectsV2Test, AcceptsAnEmptyListingAndComments) {
  auto objects = ParseListObjectsV2(
      "\xEF\xBB\xBF<?xml version=\"1.0\"?>\n<!-- c --><ListBucketResult><!-- c -->"
      "<IsTruncated>false</IsTruncated><KeyCount/></ListBucketResult>\n<!-- trailing -->\n",
      nullptr);
  ASSERT_TRUE(objects.has_value()) << objects.error().message;
  EXPECT_TRUE(objects->empty());
}

TEST(ListObjectsV2Test, ReadsSizesUpToInt64Max) {
  auto objects = ParseListObjectsV2(
      ListWith("<Contents><Key>k</Key><Size>9223372036854775807</Size></Contents>"), nullptr);
  ASSERT_TRUE(objects.has_value()) << objects.error().message;
  EXPECT_EQ((*objects)[0].size, INT64_MAX);
}

TEST(ListObjectsV2Test, RefusesHostileReplies) {
  // Closed properly, so that only the depth is wrong.
  auto nested = [](int depth) {
    std::string open;
    std::string close;
    for (int i = 0; i < depth; ++i) {
      open += "<a>";
      close += "</a>";
    }
    return ListWith(open + close);
  };
  ASSERT_TRUE(ParseListObjectsV2(nested(14), nullptr).has_value());
  const std::string deep = nested(100000);
  const std::pair<std::string_view, std::string> cases[] = {
      {"empty", ""},
      {"only white space", "  \n"},
      {"not XML", "{\"Contents\": []}"},
      {"wrong root", "<Error><Code>AccessDenied</Code></Error>"},
      {"unclosed root", "<ListBucketResult><IsTruncated>false</IsTruncated>"},
      {"deep nesting", deep},
      {"mismatched end tag", ListWith("<Contents><Key>k</Size><Size>1</Size></Contents>")},
      {"stray end tag", ListWith("</Contents>")},
      {"two roots", ListWith("") + "<ListBucketResult/>"},
      {"text after root", ListWith("") + "junk"},
      {"text before root", "junk" + ListWith("")},
      {"doctype", "<!DOCTYPE lolz [<!ENTITY lol \"lol\">]>" + ListWith("")},
      {"entity expansion",
       "<!DOCTYPE l [<!ENTITY a \"aaaa\"><!ENTITY b \"&a;&a;&a;\">]>"
       "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>&b;</Key><Size>1</Size>"
       "</Contents></ListBucketResult>"},
      {"cdata", ListWith("<Contents><Key><![CDATA[k]]></Key><Size>1</Size></Contents>")},
      {"processing instruction", ListWith("<?php x ?>")},
      {"unknown entity", ListWith("<Contents><Key>&lol;</Key><Size>1</Size></Contents>")},
      {"bare ampersand", ListWith("<Contents><Key>a & b</Key><Size>1</Size></Contents>")},
      {"unterminated entity", ListWith("<Contents><Key>&amp</Key><Size>1</Size></Contents>")},
      {"NUL reference", ListWith("<Contents><Key>&#0;</Key><Size>1</Size></Contents>")},
      {"surrogate reference", ListWith("<Contents><Key>&#xD800;</Key><Size>1</Size></Contents>")},
      {"reference past Unicode",
       ListWith("<Contents><Key>&#x110000;</Key><Size>1</Size></Contents>")},
      {"overflowing reference",
       ListWith("<Contents><Key>&#99999999999;</Key><Size>1</Size></Contents>")},
      {"empty reference", ListWith("<Contents><Key>&#;</Key><Size>1</Size></Contents>")},
      {"upper-case X reference", ListWith("<Contents><Key>&#X41;</Key><Size>1</Size></Contents>")},
      {"bad entity in ignored text", ListWith("<Name>&bogus;</Name>")},
      {"control character", ListWith("<Contents><Key>a\x01</Key><Size>1</Size></Contents>")},
      {"huge size", ListWith("<Contents><Key>k</Key><Size>99999999999999999999</Size></Contents>")},
      {"int64 max + 1",
       ListWith("<Contents><Key>k</Key><Size>9223372036854775808</Size></Contents>")},
      {"negative size", ListWith("<Contents><Key>k</Key><Size>-1</Size></Contents>")},
      {"plus size", ListWith("<Contents><Key>k</Key><Size>+1</Size></Contents>")},
      {"fractional size", ListWith("<Contents><Key>k</Key><Size>1.5</Size></Contents>")},
      {"padded size", ListWith("<Contents><Key>k</Key><Size> 1</Size></Contents>")},
      {"empty size", ListWith("<Contents><Key>k</Key><Size></Size></Contents>")},
      {"missing size", ListWith("<Contents><Key>k</Key></Contents>")},
      {"missing key", ListWith("<Contents><Size>1</Size></Contents>")},
      {"empty key", ListWith("<Contents><Key/><Size>1</Size></Contents>")},
      {"two keys", ListWith("<Contents><Key>a</Key><Key>b</Key><Size>1</Size></Contents>")},
      {"element in key", ListWith("<Contents><Key>a<b/></Key><Size>1</Size></Contents>")},
      {"no IsTruncated", "<ListBucketResult></ListBucketResult>"},
      {"IsTruncated yes", "<ListBucketResult><IsTruncated>yes</IsTruncated></ListBucketResult>"},
      {"two IsTruncated",
       "<ListBucketResult><IsTruncated>false</IsTruncated><IsTruncated>true</IsTruncated>"
       "</ListBucketResult>"},
      {"truncated without token",
       "<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>"},
      {"truncated with empty token",
       "<ListBucketResult><IsTruncated>true</IsTruncated><NextContinuationToken/>"
       "</ListBucketResult>"},
      {"url encoding type", ListWith("<EncodingType>url</EncodingType>")},
      {"unquoted attribute",
       "<ListBucketResult a=b><IsTruncated>false</IsTruncated>"
       "</ListBucketResult>"},
      {"unterminated attribute",
       "<ListBucketResult a=\"b><IsTruncated>false</IsTruncated>"
       "</ListBucketResult>"},
      {"'<' in attribute",
       "<ListBucketResult a=\"<\"><IsTruncated>false</IsTruncated>"
       "</ListBucketResult>"},
      {"attributes run together",
       "<ListBucketResult a=\"1\"b=\"2\"><IsTruncated>false"
       "</IsTruncated></ListBucketResult>"},
      {"unterminated comment", ListWith("<!-- never closed")},
      {"unterminated tag", "<ListBucketResult"},
      {"name too long", ListWith("<" + std::string(300, 'a') + "/>")},
      {"digit-led name", ListWith("<1a/>")},
      {"value too long",
       ListWith("<Contents><Key>" + std::string(5000, 'k') + "</Key><Size>1</Size></Contents>")},
      {"too large", ListWith(std::string(kMaxListXmlBytes, ' '))},
  };
  for (const auto& [what, xml] : cases) {
    std::string token;
    auto got = ParseListObjectsV2(xml, &token);
    ASSERT_FALSE(got.has_value()) << what;
    EXPECT_EQ(got.error().code, ErrorCode::kUnavailable) << what;
    EXPECT_THAT(got.error().message, StartsWith("upstream ListObjectsV2 reply")) << what;
  }
}

TEST(ListObjectsV2Test, RefusesMoreEntriesThanTheLimit) {
  std::string contents;
  for (size_t i = 0; i <= kMaxListObjects; ++i) {
    contents += "<Contents><Key>k</Key><Size>1</Size></Contents>";
  }
  EXPECT_FALSE(ParseListObjectsV2(ListWith(contents), nullptr).has_value());
}

// Every cut of a valid reply is an error, never a crash or a partial listing taken for whole.
TEST(ListObjectsV2Test, RefusesEveryTruncationOfAValidReply) {
  std::string xml(kListReply);
  size_t end = xml.find("</ListBucketResult>") + std::string_view("</ListBucketResult>").size();
  for (size_t n = 0; n < end; ++n) {
    EXPECT_FALSE(ParseListObjectsV2(std::string_view(xml).substr(0, n), nullptr).has_value())
        << "cut at " << n;
  }
}

// Random byte damage (fixed seed, so a failure reproduces) never crashes the reader; under
// the sanitizer build this also proves there is no out-of-bounds read.
TEST(ListObjectsV2Test, SurvivesRandomDamage) {
  std::mt19937 rng(20240521);
  std::string alphabet = "<>/&;#x\"'=!?-[]abcKeySize0123456789 \n\xff";
  alphabet += '\0';
  int accepted = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string xml(kListReply);
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      size_t at = rng() % xml.size();
      char c = alphabet[rng() % alphabet.size()];
      switch (rng() % 3) {
        case 0:
          xml[at] = c;
          break;
        case 1:
          xml.insert(xml.begin() + static_cast<std::ptrdiff_t>(at), c);
          break;
        default:
          xml.erase(at, 1 + rng() % 8);
          break;
      }
      if (xml.empty()) {
        xml = "<";
      }
    }
    auto got = ParseListObjectsV2(xml, nullptr);
    if (got.has_value()) {
      ++accepted;
      EXPECT_LE(got->size(), 2u);
    } else {
      EXPECT_FALSE(got.error().message.empty());
    }
  }
  // Damage inside ignored text may leave a valid reply; most damage must not.
  EXPECT_LT(accepted, 3000);
}

}  // namespace
}  // namespace airlock::files
