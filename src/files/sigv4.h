#pragma once

// AWS Signature Version 4 for the S3 blob store: presigned URLs (query-string auth) for the
// sandbox's uploads and downloads, header auth for the control plane's own bucket listings,
// and a small strict parser for the ListObjectsV2 reply.
//
// The algorithm follows the AWS documentation:
//   https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html
//   https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html
//   https://docs.aws.amazon.com/general/latest/gr/sigv4-calculate-signature.html
// Each step is exposed (canonical request, string to sign, signing key, signature) so the tests
// can hold every stage against the values AWS publishes.
//
// Security: the secret access key stays in a Secret and never appears in an error message;
// the derived signing key is returned as a Secret too, because it signs anything for its day,
// region and service. Everything here is a pure function of its arguments (no clock, no I/O).

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"
#include "common/secret.h"

namespace airlock::files {

using Params = std::vector<std::pair<std::string, std::string>>;

inline constexpr std::string_view kSigV4Algorithm = "AWS4-HMAC-SHA256";
inline constexpr std::string_view kS3Service = "s3";
// The payload hash a presigned URL signs: the client's body is not known when the URL is made.
inline constexpr std::string_view kUnsignedPayload = "UNSIGNED-PAYLOAD";
// SHA-256 of the empty string, the payload hash of a GET.
inline constexpr std::string_view kEmptyPayloadSha256 =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
// S3 refuses presigned URLs that live longer than seven days.
inline constexpr int kMaxPresignExpirySeconds = 604800;

struct SigV4Credentials {
  std::string access_key_id;
  Secret secret_access_key;
  std::string session_token;  // optional: temporary (STS) credentials
};

struct S3Endpoint {
  std::string scheme = "https";  // "https" or "http"
  std::string host;              // lower case; an IPv6 literal keeps its brackets ("[::1]")
  uint16_t port = 0;             // 0: the scheme's default (443 or 80)
  std::string region = "us-east-1";
  bool path_style = true;  // https://host/bucket/key; false: https://bucket.host/key
};

// Reads "https://s3.eu-west-1.amazonaws.com" or "http://minio:9000" (an optional trailing "/"
// is accepted; any other path, a query, a fragment or user info is refused). Virtual-hosted
// style needs a DNS name, so an IP literal with path_style == false is refused.
// Errors: kInvalidArgument naming the part that is wrong.
Result<S3Endpoint> ParseS3Endpoint(std::string_view url, std::string region, bool path_style);

// The Host header value for requests about `bucket`: "bucket.host" in virtual-hosted style,
// plus ":port" when the port is not the scheme's default. An empty bucket gives the endpoint's
// own authority.
std::string HostForBucket(const S3Endpoint& endpoint, std::string_view bucket);

// AWS's URI encoding: A-Z a-z 0-9 - . _ ~ stay, every other byte becomes %XX (upper-case hex),
// including each byte of a multi-byte UTF-8 character; '/' stays unless `encode_slash`.
std::string UriEncode(std::string_view s, bool encode_slash);

// "YYYYMMDDTHHMMSSZ" (UTC) for X-Amz-Date. Errors: kInvalidArgument before 1970 or after 9999.
Result<std::string> FormatAmzDate(int64_t unix_seconds);

// The canonical query string: names and values UriEncoded (slash included), sorted by name and
// then value, joined with '&'; a parameter without value becomes "name=". It is also a valid
// query to send, so a caller that sends exactly this string sends what was signed.
std::string CanonicalQueryString(const Params& params);

struct CanonicalHeaders {
  std::string canonical;       // "name:value\n" per header, names sorted
  std::string signed_headers;  // "host;range;x-amz-date"
};

// Lower-cases the names, trims the values and folds runs of spaces into one, joins repeated
// names with ',' (in the order given) and sorts by name. Errors: kInvalidArgument for an empty
// or non-token name, or a value with a control character (CR/LF would split the request).
Result<CanonicalHeaders> CanonicalizeHeaders(const Params& headers);

// METHOD \n URI \n QUERY \n HEADERS \n SIGNED-HEADERS \n PAYLOAD-HASH, as AWS defines it.
std::string CanonicalRequest(std::string_view method, std::string_view canonical_uri,
                             std::string_view canonical_query, const CanonicalHeaders& headers,
                             std::string_view payload_hash);

// "20130524/us-east-1/s3/aws4_request"; `date` is YYYYMMDD.
std::string CredentialScope(std::string_view date, std::string_view region,
                            std::string_view service);

// AWS4-HMAC-SHA256 \n AMZ-DATE \n SCOPE \n hex(SHA-256(canonical request)).
std::string StringToSign(std::string_view amz_date, std::string_view scope,
                         std::string_view canonical_request);

// kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request"):
// 32 raw bytes. `date` is YYYYMMDD.
Secret DeriveSigningKey(const Secret& secret_access_key, std::string_view date,
                        std::string_view region, std::string_view service);

// hex(HMAC(signing key, string to sign)): 64 lower-case hex characters.
std::string SignatureHex(const Secret& signing_key, std::string_view string_to_sign);

// A presigned S3 URL: anyone holding it may send `method` for bucket/key until now +
// expires_seconds, with exactly the `signed_headers` given (for instance content-length, so an
// upload cannot exceed its quota, or content-type). Host is always signed; the payload is
// UNSIGNED-PAYLOAD. With a session token the URL carries X-Amz-Security-Token, signed.
// The key is URI-encoded with its '/' kept; keys with "." or ".." segments are refused because
// HTTP clients rewrite them and the signature would no longer match.
// Errors: kInvalidArgument (bad bucket name, empty or oversized key, expires outside
// 1..604800, a header that cannot be signed, missing credentials, bad endpoint).
Result<std::string> PresignUrl(const SigV4Credentials& creds, const S3Endpoint& endpoint,
                               std::string_view method, std::string_view bucket,
                               std::string_view key, int64_t now_unix, int expires_seconds,
                               const Params& signed_headers);

// Header auth for a request the control plane sends itself (ListObjectsV2 GETs): returns the
// headers to add — Authorization, x-amz-date, x-amz-content-sha256 and, with a session token,
// x-amz-security-token. `path` is already URI-encoded ("/bucket" in path style); `query` is
// unencoded and must be sent as CanonicalQueryString(query); `headers` are the other headers
// the request carries, all of which are signed. The Host signed is `headers`' host if given,
// otherwise HostForBucket(endpoint, ""). `payload_sha256_hex` is the body's SHA-256 in hex or
// UNSIGNED-PAYLOAD. Errors: kInvalidArgument.
Result<Params> SignHeaders(const SigV4Credentials& creds, const S3Endpoint& endpoint,
                           std::string_view method, std::string_view path, const Params& query,
                           const Params& headers, std::string_view payload_sha256_hex,
                           int64_t now_unix);

struct S3Object {
  std::string key;
  int64_t size = 0;
  std::string last_modified;  // as S3 sent it: "2009-10-12T17:50:30.000Z"
};

// Limits of ParseListObjectsV2, generous for S3's at most 1000 keys of at most 1024 bytes a page.
inline constexpr size_t kMaxListXmlBytes = 8 << 20;
inline constexpr size_t kMaxListObjects = 10000;

// Reads a ListObjectsV2 reply (ListBucketResult). Returns the Contents entries in order and
// stores NextContinuationToken in *next_continuation_token when IsTruncated is true ("" when
// it is false). Strict and non-recursive: no DOCTYPE, CDATA or processing instructions, every
// tag closed in order, depth and sizes bounded, entities limited to the five predefined ones
// and numeric character references. An upstream reply that breaks any rule is an error
// (kUnavailable, "upstream ..."), never a crash.
Result<std::vector<S3Object>> ParseListObjectsV2(std::string_view xml,
                                                 std::string* next_continuation_token);

}  // namespace airlock::files
