#include "files/sigv4.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <map>
#include <optional>
#include <system_error>

#include <fmt/format.h>
#include <openssl/crypto.h>

#include "common/crypto.h"
#include "common/url.h"
#include "net/url.h"

namespace airlock::files {
namespace {

// S3 keys are at most 1024 bytes of UTF-8.
constexpr size_t kMaxKeyBytes = 1024;
constexpr size_t kMaxAccessKeyIdBytes = 128;
// STS session tokens run to a couple of kilobytes; this leaves ample room.
constexpr size_t kMaxSessionTokenBytes = 16384;
constexpr size_t kMaxPathBytes = 4096;
constexpr size_t kMaxHostBytes = 253;
// 9999-12-31T23:59:59Z: X-Amz-Date has four digits for the year.
constexpr int64_t kMaxAmzDateUnix = 253402300799;

bool IsUnreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

bool IsUpperHex(char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); }
bool IsLowerHex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

char ToLower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    c = ToLower(c);
  }
  return out;
}

// RFC 9110 token characters: what a header name may be made of.
bool IsTokenChar(unsigned char c) {
  if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
    return true;
  }
  return std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
}

bool HasControlChar(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char ch) {
    auto c = static_cast<unsigned char>(ch);
    return c < 0x20 || c == 0x7f;
  });
}

// The zeroing matters for the "AWS4" + secret buffer and the intermediate keys: each of them
// signs requests, and a freed heap block keeps its bytes until reused.
void Cleanse(std::string& s) {
  if (!s.empty()) {
    OPENSSL_cleanse(s.data(), s.size());
  }
}

uint16_t DefaultPort(std::string_view scheme) { return scheme == "http" ? 80 : 443; }

bool IsIpLiteral(std::string_view host) {
  if (!host.empty() && host.front() == '[') {
    return true;
  }
  return !host.empty() && std::all_of(host.begin(), host.end(),
                                      [](char c) { return (c >= '0' && c <= '9') || c == '.'; });
}

// A host name in lower case (labels of a-z 0-9 '-' '_', 1..63 bytes) or a bracketed IPv6
// literal.
bool ValidHost(std::string_view host) {
  if (host.empty() || host.size() > kMaxHostBytes) {
    return false;
  }
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') {
      return false;
    }
    std::string_view inner = host.substr(1, host.size() - 2);
    return inner.find(':') != std::string_view::npos &&
           std::all_of(inner.begin(), inner.end(),
                       [](char c) { return IsLowerHex(c) || c == ':' || c == '.'; });
  }
  size_t label = 0;
  for (char c : host) {
    if (c == '.') {
      if (label == 0) {
        return false;
      }
      label = 0;
      continue;
    }
    // '_' is not valid in DNS but is in container-network names ("my_minio").
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
    if (!ok || ++label > 63) {
      return false;
    }
  }
  return label > 0;
}

bool ValidRegion(std::string_view region) {
  return !region.empty() && region.size() <= 64 &&
         std::all_of(region.begin(), region.end(), [](char c) {
           return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
         });
}

Status ValidateEndpoint(const S3Endpoint& e) {
  if (e.scheme != "https" && e.scheme != "http") {
    return Errorf(ErrorCode::kInvalidArgument, "S3 endpoint scheme must be http or https");
  }
  if (!ValidHost(e.host)) {
    return Errorf(ErrorCode::kInvalidArgument, "S3 endpoint host is not a valid host name");
  }
  if (!e.path_style && IsIpLiteral(e.host)) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "virtual-hosted style needs a DNS name, not an IP address");
  }
  if (!ValidRegion(e.region)) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "S3 region must be 1-64 characters of a-z, 0-9 and '-'");
  }
  return Ok();
}

// The access key id and the token travel in a header value and in the credential scope, where
// '/', ',' and '=' are separators and whitespace would end the value.
Status ValidateCredentials(const SigV4Credentials& c) {
  const auto& id = c.access_key_id;
  if (id.empty() || id.size() > kMaxAccessKeyIdBytes) {
    return Errorf(ErrorCode::kInvalidArgument, "S3 access key id must be 1-{} bytes",
                  kMaxAccessKeyIdBytes);
  }
  bool id_ok = std::all_of(id.begin(), id.end(), [](char ch) {
    auto u = static_cast<unsigned char>(ch);
    return u > 0x20 && u < 0x7f && ch != '/' && ch != ',' && ch != '=' && ch != ';';
  });
  if (!id_ok) {
    return Errorf(ErrorCode::kInvalidArgument, "S3 access key id has a character it cannot carry");
  }
  if (c.secret_access_key.empty()) {
    return Errorf(ErrorCode::kInvalidArgument, "S3 secret access key is empty");
  }
  const auto& token = c.session_token;
  bool token_ok =
      token.size() <= kMaxSessionTokenBytes && std::all_of(token.begin(), token.end(), [](char ch) {
        auto u = static_cast<unsigned char>(ch);
        return u > 0x20 && u < 0x7f;
      });
  if (!token_ok) {
    return Errorf(ErrorCode::kInvalidArgument, "S3 session token is too long or not printable");
  }
  return Ok();
}

Status ValidateMethod(std::string_view method) {
  bool ok = !method.empty() && method.size() <= 16 &&
            std::all_of(method.begin(), method.end(), [](char c) { return c >= 'A' && c <= 'Z'; });
  if (!ok) {
    return Errorf(ErrorCode::kInvalidArgument, "HTTP method must be an upper-case word");
  }
  return Ok();
}

// S3's bucket naming rules; they also keep the name safe as a DNS label and a path segment.
Status ValidateBucket(std::string_view bucket) {
  if (bucket.empty()) {
    return Errorf(ErrorCode::kInvalidArgument, "bucket name is empty");
  }
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  bool ok = bucket.size() >= 3 && bucket.size() <= 63 && alnum(bucket.front()) &&
            alnum(bucket.back()) && bucket.find("..") == std::string_view::npos &&
            std::all_of(bucket.begin(), bucket.end(),
                        [&](char c) { return alnum(c) || c == '.' || c == '-'; });
  if (!ok) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "bucket name must be 3-63 characters of a-z, 0-9, '.' and '-', starting and "
                  "ending with a letter or digit");
  }
  return Ok();
}

Status ValidateKey(std::string_view key) {
  if (key.empty()) {
    return Errorf(ErrorCode::kInvalidArgument, "object key is empty");
  }
  if (key.size() > kMaxKeyBytes) {
    return Errorf(ErrorCode::kInvalidArgument, "object key is longer than {} bytes", kMaxKeyBytes);
  }
  size_t start = 0;
  while (start <= key.size()) {
    size_t slash = key.find('/', start);
    size_t end = slash == std::string_view::npos ? key.size() : slash;
    std::string_view segment = key.substr(start, end - start);
    if (segment == "." || segment == "..") {
      return Errorf(ErrorCode::kInvalidArgument,
                    "object key has a '.' or '..' segment, which HTTP clients rewrite");
    }
    if (slash == std::string_view::npos) {
      break;
    }
    start = slash + 1;
  }
  return Ok();
}

// A path as UriEncode produces it: '/', unreserved bytes and %XX with upper-case hex.
Status ValidateEncodedPath(std::string_view path) {
  if (path.empty() || path.front() != '/' || path.size() > kMaxPathBytes) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "request path must start with '/' and be at most "
                  "{} bytes",
                  kMaxPathBytes);
  }
  for (size_t i = 0; i < path.size(); ++i) {
    auto c = static_cast<unsigned char>(path[i]);
    if (c == '/' || IsUnreserved(c)) {
      continue;
    }
    if (c == '%' && i + 2 < path.size() && IsUpperHex(path[i + 1]) && IsUpperHex(path[i + 2])) {
      i += 2;
      continue;
    }
    return Errorf(ErrorCode::kInvalidArgument,
                  "request path is not URI-encoded (byte {} of it); encode it with UriEncode", i);
  }
  return Ok();
}

Status ValidatePayloadHash(std::string_view hash) {
  if (hash == kUnsignedPayload) {
    return Ok();
  }
  if (hash.size() != 64 || !std::all_of(hash.begin(), hash.end(), IsLowerHex)) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "payload hash must be 64 lower-case hex characters or UNSIGNED-PAYLOAD");
  }
  return Ok();
}

bool HasHeader(const Params& headers, std::string_view lower_name) {
  return std::any_of(headers.begin(), headers.end(),
                     [&](const auto& h) { return Lower(h.first) == lower_name; });
}

}  // namespace

// An adapter of net::SplitUrl that keeps the S3 store's messages; the S3-specific rules (a
// lower-case host of DNS labels, a region, no IP address in virtual-hosted style) follow.
Result<S3Endpoint> ParseS3Endpoint(std::string_view url, std::string region, bool path_style) {
  auto parsed = net::SplitUrl(url);
  if (!parsed) {
    switch (parsed.error()) {
      case net::UrlProblem::kNoScheme:
        return Errorf(ErrorCode::kInvalidArgument,
                      "S3 endpoint must look like https://host[:port]");
      case net::UrlProblem::kScheme:
        return Errorf(ErrorCode::kInvalidArgument, "S3 endpoint scheme must be http or https");
      case net::UrlProblem::kUserInfo:
        return Errorf(ErrorCode::kInvalidArgument, "S3 endpoint must not carry user information");
      case net::UrlProblem::kIpv6Unclosed:
        return Errorf(ErrorCode::kInvalidArgument, "S3 endpoint has an unclosed IPv6 literal");
      case net::UrlProblem::kAfterIpv6:
        return Errorf(ErrorCode::kInvalidArgument, "S3 endpoint has text after its IPv6 literal");
      case net::UrlProblem::kEmptyPort:
        return Errorf(ErrorCode::kInvalidArgument, "S3 endpoint port is empty");
      case net::UrlProblem::kBadPort:
        return Errorf(ErrorCode::kInvalidArgument, "S3 endpoint port must be a number in 1..65535");
      case net::UrlProblem::kNoHost:
      case net::UrlProblem::kBadHost:
        return Errorf(ErrorCode::kInvalidArgument, "S3 endpoint host is not a valid host name");
      case net::UrlProblem::kBadPath:
        return Errorf(ErrorCode::kInvalidArgument,
                      "S3 endpoint must not have a path, a query or a fragment");
    }
  }
  if ((!parsed->path.empty() && parsed->path != "/") || parsed->has_query || parsed->has_fragment) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "S3 endpoint must not have a path, a query or a fragment");
  }
  S3Endpoint e;
  e.scheme = parsed->scheme;
  e.region = std::move(region);
  e.path_style = path_style;
  e.host = Lower(parsed->ipv6 ? "[" + parsed->host + "]" : parsed->host);
  e.port = parsed->port_given && parsed->port != DefaultPort(e.scheme) ? parsed->port : 0;
  AIRLOCK_TRY(ValidateEndpoint(e));
  return e;
}

std::string HostForBucket(const S3Endpoint& endpoint, std::string_view bucket) {
  std::string out;
  if (!endpoint.path_style && !bucket.empty()) {
    out.append(bucket);
    out += '.';
  }
  out += endpoint.host;
  if (endpoint.port != 0 && endpoint.port != DefaultPort(endpoint.scheme)) {
    out += fmt::format(":{}", endpoint.port);
  }
  return out;
}

std::string UriEncode(std::string_view s, bool encode_slash) {
  return PercentEncode(s, !encode_slash);
}

Result<std::string> FormatAmzDate(int64_t unix_seconds) {
  if (unix_seconds < 0 || unix_seconds > kMaxAmzDateUnix) {
    return Errorf(ErrorCode::kInvalidArgument, "time {} is outside 1970..9999", unix_seconds);
  }
  using namespace std::chrono;
  sys_seconds tp{seconds{unix_seconds}};
  sys_days day = floor<days>(tp);
  year_month_day ymd{day};
  hh_mm_ss hms{tp - day};
  return fmt::format("{:04}{:02}{:02}T{:02}{:02}{:02}Z", static_cast<int>(ymd.year()),
                     static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                     hms.hours().count(), hms.minutes().count(), hms.seconds().count());
}

std::string CanonicalQueryString(const Params& params) {
  std::vector<std::pair<std::string, std::string>> encoded;
  encoded.reserve(params.size());
  for (const auto& [name, value] : params) {
    encoded.emplace_back(UriEncode(name, true), UriEncode(value, true));
  }
  std::sort(encoded.begin(), encoded.end());
  std::string out;
  for (const auto& [name, value] : encoded) {
    if (!out.empty()) {
      out += '&';
    }
    out += name;
    out += '=';
    out += value;
  }
  return out;
}

Result<CanonicalHeaders> CanonicalizeHeaders(const Params& headers) {
  std::map<std::string, std::string> merged;
  for (size_t index = 0; index < headers.size(); ++index) {
    const auto& [raw_name, raw_value] = headers[index];
    if (raw_name.empty() || !std::all_of(raw_name.begin(), raw_name.end(), [](char c) {
          return IsTokenChar(static_cast<unsigned char>(c));
        })) {
      return Errorf(ErrorCode::kInvalidArgument, "header {} has an empty or invalid name", index);
    }
    // Messages name the header by position only: a caller's mistake could put anything,
    // a credential included, in a name or a value.
    if (HasControlChar(raw_value)) {
      return Errorf(ErrorCode::kInvalidArgument, "header {} has a control character in its value",
                    index);
    }
    std::string name = Lower(raw_name);
    std::string value;
    for (char c : raw_value) {
      if (c == ' ' && (value.empty() || value.back() == ' ')) {
        continue;
      }
      value += c;
    }
    if (!value.empty() && value.back() == ' ') {
      value.pop_back();
    }
    if (auto it = merged.find(name); it != merged.end()) {
      it->second += ',';
      it->second += value;
    } else {
      merged.emplace(std::move(name), std::move(value));
    }
  }
  CanonicalHeaders out;
  for (const auto& [name, value] : merged) {
    out.canonical += name;
    out.canonical += ':';
    out.canonical += value;
    out.canonical += '\n';
    if (!out.signed_headers.empty()) {
      out.signed_headers += ';';
    }
    out.signed_headers += name;
  }
  return out;
}

std::string CanonicalRequest(std::string_view method, std::string_view canonical_uri,
                             std::string_view canonical_query, const CanonicalHeaders& headers,
                             std::string_view payload_hash) {
  return fmt::format("{}\n{}\n{}\n{}\n{}\n{}", method, canonical_uri, canonical_query,
                     headers.canonical, headers.signed_headers, payload_hash);
}

std::string CredentialScope(std::string_view date, std::string_view region,
                            std::string_view service) {
  return fmt::format("{}/{}/{}/aws4_request", date, region, service);
}

std::string StringToSign(std::string_view amz_date, std::string_view scope,
                         std::string_view canonical_request) {
  return fmt::format("{}\n{}\n{}\n{}", kSigV4Algorithm, amz_date, scope,
                     Sha256Hex(canonical_request));
}

Secret DeriveSigningKey(const Secret& secret_access_key, std::string_view date,
                        std::string_view region, std::string_view service) {
  std::string k_secret = "AWS4";
  k_secret += secret_access_key.Reveal();
  std::string k_date = HmacSha256(k_secret, date);
  Cleanse(k_secret);
  std::string k_region = HmacSha256(k_date, region);
  Cleanse(k_date);
  std::string k_service = HmacSha256(k_region, service);
  Cleanse(k_region);
  std::string k_signing = HmacSha256(k_service, "aws4_request");
  Cleanse(k_service);
  return Secret(std::move(k_signing));
}

std::string SignatureHex(const Secret& signing_key, std::string_view string_to_sign) {
  return HexEncode(HmacSha256(signing_key.Reveal(), string_to_sign));
}

Result<std::string> PresignUrl(const SigV4Credentials& creds, const S3Endpoint& endpoint,
                               std::string_view method, std::string_view bucket,
                               std::string_view key, int64_t now_unix, int expires_seconds,
                               const Params& signed_headers) {
  AIRLOCK_TRY(ValidateCredentials(creds));
  AIRLOCK_TRY(ValidateEndpoint(endpoint));
  AIRLOCK_TRY(ValidateMethod(method));
  AIRLOCK_TRY(ValidateBucket(bucket));
  AIRLOCK_TRY(ValidateKey(key));
  if (expires_seconds < 1 || expires_seconds > kMaxPresignExpirySeconds) {
    return Errorf(ErrorCode::kInvalidArgument, "expiry must be 1..{} seconds, not {}",
                  kMaxPresignExpirySeconds, expires_seconds);
  }
  if (HasHeader(signed_headers, "host")) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "host is always signed, from the endpoint; do not pass it");
  }
  if (HasHeader(signed_headers, "authorization")) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "a presigned URL cannot sign an Authorization header");
  }
  AIRLOCK_ASSIGN_OR_RETURN(std::string amz_date, FormatAmzDate(now_unix));

  std::string host = HostForBucket(endpoint, bucket);
  Params headers = signed_headers;
  headers.emplace_back("host", host);
  AIRLOCK_ASSIGN_OR_RETURN(CanonicalHeaders canonical_headers, CanonicalizeHeaders(headers));

  std::string canonical_uri = "/";
  if (endpoint.path_style) {
    canonical_uri.append(bucket);
    canonical_uri += '/';
  }
  canonical_uri += UriEncode(key, false);

  std::string date = amz_date.substr(0, 8);
  std::string scope = CredentialScope(date, endpoint.region, kS3Service);
  Params query = {
      {"X-Amz-Algorithm", std::string(kSigV4Algorithm)},
      {"X-Amz-Credential", creds.access_key_id + "/" + scope},
      {"X-Amz-Date", amz_date},
      {"X-Amz-Expires", std::to_string(expires_seconds)},
      {"X-Amz-SignedHeaders", canonical_headers.signed_headers},
  };
  if (!creds.session_token.empty()) {
    query.emplace_back("X-Amz-Security-Token", creds.session_token);
  }
  std::string canonical_query = CanonicalQueryString(query);
  std::string canonical_request =
      CanonicalRequest(method, canonical_uri, canonical_query, canonical_headers, kUnsignedPayload);
  Secret signing_key = DeriveSigningKey(creds.secret_access_key, date, endpoint.region, kS3Service);
  std::string signature =
      SignatureHex(signing_key, StringToSign(amz_date, scope, canonical_request));
  return fmt::format("{}://{}{}?{}&X-Amz-Signature={}", endpoint.scheme, host, canonical_uri,
                     canonical_query, signature);
}

Result<Params> SignHeaders(const SigV4Credentials& creds, const S3Endpoint& endpoint,
                           std::string_view method, std::string_view path, const Params& query,
                           const Params& headers, std::string_view payload_sha256_hex,
                           int64_t now_unix) {
  AIRLOCK_TRY(ValidateCredentials(creds));
  AIRLOCK_TRY(ValidateEndpoint(endpoint));
  AIRLOCK_TRY(ValidateMethod(method));
  AIRLOCK_TRY(ValidateEncodedPath(path));
  AIRLOCK_TRY(ValidatePayloadHash(payload_sha256_hex));
  for (std::string_view reserved :
       {"authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token"}) {
    if (HasHeader(headers, reserved)) {
      return Errorf(ErrorCode::kInvalidArgument, "header {} is set by the signer; do not pass it",
                    reserved);
    }
  }
  size_t hosts = std::count_if(headers.begin(), headers.end(),
                               [](const auto& h) { return Lower(h.first) == "host"; });
  if (hosts > 1) {
    return Errorf(ErrorCode::kInvalidArgument, "more than one host header");
  }
  AIRLOCK_ASSIGN_OR_RETURN(std::string amz_date, FormatAmzDate(now_unix));

  Params added = {
      {"x-amz-date", amz_date},
      {"x-amz-content-sha256", std::string(payload_sha256_hex)},
  };
  if (!creds.session_token.empty()) {
    added.emplace_back("x-amz-security-token", creds.session_token);
  }
  Params all = headers;
  if (hosts == 0) {
    all.emplace_back("host", HostForBucket(endpoint, ""));
  }
  all.insert(all.end(), added.begin(), added.end());
  AIRLOCK_ASSIGN_OR_RETURN(CanonicalHeaders canonical_headers, CanonicalizeHeaders(all));

  std::string date = amz_date.substr(0, 8);
  std::string scope = CredentialScope(date, endpoint.region, kS3Service);
  std::string canonical_request = CanonicalRequest(method, path, CanonicalQueryString(query),
                                                   canonical_headers, payload_sha256_hex);
  Secret signing_key = DeriveSigningKey(creds.secret_access_key, date, endpoint.region, kS3Service);
  std::string signature =
      SignatureHex(signing_key, StringToSign(amz_date, scope, canonical_request));

  Params out;
  out.emplace_back(
      "Authorization",
      fmt::format("{} Credential={}/{}, SignedHeaders={}, Signature={}", kSigV4Algorithm,
                  creds.access_key_id, scope, canonical_headers.signed_headers, signature));
  out.insert(out.end(), added.begin(), added.end());
  return out;
}

// ---------------------------------------------------------------------------------------------
// ListObjectsV2 reply parser.

namespace {

constexpr size_t kMaxXmlDepth = 16;
constexpr size_t kMaxXmlNameBytes = 256;
// Keys are at most 1024 bytes; tokens and dates are far shorter.
constexpr size_t kMaxFieldBytes = 4096;

bool IsXmlSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

bool IsNameStart(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || c == ':';
}

bool IsNameChar(char c) { return IsNameStart(c) || (c >= '0' && c <= '9') || c == '-' || c == '.'; }

bool IsXmlChar(uint32_t cp) {
  return cp == 0x9 || cp == 0xA || cp == 0xD || (cp >= 0x20 && cp <= 0xD7FF) ||
         (cp >= 0xE000 && cp <= 0xFFFD) || (cp >= 0x10000 && cp <= 0x10FFFF);
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    *out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    *out += static_cast<char>(0xC0 | (cp >> 6));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    *out += static_cast<char>(0xE0 | (cp >> 12));
    *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    *out += static_cast<char>(0xF0 | (cp >> 18));
    *out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Which of the few values we keep the current element's text goes to.
enum class Field { kNone, kIsTruncated, kNextToken, kEncodingType, kKey, kSize, kLastModified };

class ListParser {
 public:
  explicit ListParser(std::string_view xml) : xml_(xml) {}

  Result<std::vector<S3Object>> Run(std::string* next_token);

 private:
  std::unexpected<Error> Fail(std::string_view what) const {
    return Errorf(ErrorCode::kUnavailable, "upstream ListObjectsV2 reply: {} (at byte {})", what,
                  pos_);
  }
  bool StartsWith(std::string_view s) const { return xml_.substr(pos_).starts_with(s); }
  void SkipSpace() {
    while (pos_ < xml_.size() && IsXmlSpace(xml_[pos_])) {
      ++pos_;
    }
  }
  Result<std::string_view> ReadName();
  Status SkipProlog();
  Status ReadStartTag();
  Status ReadEndTag();
  Status ReadText();
  // Decodes entities into *out (nullptr: only checks); bounded by kMaxFieldBytes.
  Status DecodeText(std::string_view raw, std::string* out) const;
  Status OnStart(std::string_view name);
  Status OnEnd();
  Status FinishObject();
  Result<std::vector<S3Object>> Finish(std::string* next_token);

  std::string_view xml_;
  size_t pos_ = 0;
  std::vector<std::string_view> stack_;
  bool root_done_ = false;

  Field field_ = Field::kNone;
  size_t field_depth_ = 0;
  std::string field_text_;

  std::optional<std::string> is_truncated_;
  std::optional<std::string> next_token_;
  std::optional<std::string> encoding_type_;
  bool in_contents_ = false;
  std::optional<std::string> key_;
  std::optional<std::string> size_;
  std::optional<std::string> last_modified_;
  std::vector<S3Object> objects_;
};

Result<std::string_view> ListParser::ReadName() {
  size_t start = pos_;
  if (pos_ >= xml_.size() || !IsNameStart(xml_[pos_])) {
    return Fail("expected an element or attribute name");
  }
  while (pos_ < xml_.size() && IsNameChar(xml_[pos_])) {
    if (pos_ - start >= kMaxXmlNameBytes) {
      return Fail("name too long");
    }
    ++pos_;
  }
  return xml_.substr(start, pos_ - start);
}

Status ListParser::SkipProlog() {
  if (StartsWith("\xEF\xBB\xBF")) {
    pos_ += 3;
  }
  if (StartsWith("<?xml") && pos_ + 5 < xml_.size() && IsXmlSpace(xml_[pos_ + 5])) {
    size_t end = xml_.find("?>", pos_);
    if (end == std::string_view::npos) {
      return Fail("unterminated XML declaration");
    }
    pos_ = end + 2;
  }
  return Ok();
}

Status ListParser::ReadStartTag() {
  ++pos_;  // '<'
  AIRLOCK_ASSIGN_OR_RETURN(std::string_view name, ReadName());
  // Attributes (S3 sends xmlns on the root) are checked for form and otherwise ignored.
  bool self_closing = false;
  while (true) {
    size_t before = pos_;
    SkipSpace();
    if (pos_ >= xml_.size()) {
      return Fail("unterminated start tag");
    }
    if (xml_[pos_] == '>') {
      ++pos_;
      break;
    }
    if (StartsWith("/>")) {
      pos_ += 2;
      self_closing = true;
      break;
    }
    if (pos_ == before) {
      return Fail("attributes must be separated by white space");
    }
    AIRLOCK_TRY(ReadName());
    SkipSpace();
    if (pos_ >= xml_.size() || xml_[pos_] != '=') {
      return Fail("attribute without '='");
    }
    ++pos_;
    SkipSpace();
    if (pos_ >= xml_.size() || (xml_[pos_] != '"' && xml_[pos_] != '\'')) {
      return Fail("attribute value must be quoted");
    }
    char quote = xml_[pos_++];
    size_t end = xml_.find(quote, pos_);
    if (end == std::string_view::npos) {
      return Fail("unterminated attribute value");
    }
    if (xml_.substr(pos_, end - pos_).find('<') != std::string_view::npos) {
      return Fail("'<' in an attribute value");
    }
    pos_ = end + 1;
  }
  AIRLOCK_TRY(OnStart(name));
  if (self_closing) {
    AIRLOCK_TRY(OnEnd());
  }
  return Ok();
}

Status ListParser::ReadEndTag() {
  pos_ += 2;  // "</"
  AIRLOCK_ASSIGN_OR_RETURN(std::string_view name, ReadName());
  SkipSpace();
  if (pos_ >= xml_.size() || xml_[pos_] != '>') {
    return Fail("unterminated end tag");
  }
  ++pos_;
  if (stack_.empty() || stack_.back() != name) {
    return Fail("end tag does not match the open element");
  }
  return OnEnd();
}

Status ListParser::DecodeText(std::string_view raw, std::string* out) const {
  std::string discard;
  std::string* sink = out != nullptr ? out : &discard;
  for (size_t i = 0; i < raw.size(); ++i) {
    if (out == nullptr) {
      discard.clear();
    }
    char c = raw[i];
    auto u = static_cast<unsigned char>(c);
    if (u < 0x20 && !IsXmlSpace(c)) {
      return Fail("control character in text");
    }
    if (c != '&') {
      *sink += c;
    } else {
      // The longest reference accepted, "&#x10FFFF;", is 10 bytes.
      size_t semi = raw.substr(0, i + 12).find(';', i + 1);
      if (semi == std::string_view::npos) {
        return Fail("unterminated entity reference");
      }
      std::string_view ref = raw.substr(i + 1, semi - i - 1);
      if (ref == "amp") {
        *sink += '&';
      } else if (ref == "lt") {
        *sink += '<';
      } else if (ref == "gt") {
        *sink += '>';
      } else if (ref == "quot") {
        *sink += '"';
      } else if (ref == "apos") {
        *sink += '\'';
      } else if (ref.size() >= 2 && ref.front() == '#') {
        bool hex = ref[1] == 'x';
        std::string_view digits = ref.substr(hex ? 2 : 1);
        uint32_t cp = 0;
        auto [end, ec] =
            std::from_chars(digits.data(), digits.data() + digits.size(), cp, hex ? 16 : 10);
        if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() ||
            !IsXmlChar(cp)) {
          return Fail("invalid character reference");
        }
        AppendUtf8(cp, sink);
      } else {
        return Fail("unknown entity");
      }
      i = semi;
    }
    if (sink->size() > kMaxFieldBytes) {
      return Fail("value too long");
    }
  }
  return Ok();
}

Status ListParser::ReadText() {
  size_t end = xml_.find('<', pos_);
  if (end == std::string_view::npos) {
    end = xml_.size();
  }
  std::string_view raw = xml_.substr(pos_, end - pos_);
  if (stack_.empty()) {
    if (!std::all_of(raw.begin(), raw.end(), IsXmlSpace)) {
      return Fail("text outside the root element");
    }
  } else {
    // The text of elements we do not keep is still checked, so that a malformed reference
    // anywhere fails the whole reply.
    AIRLOCK_TRY(DecodeText(raw, field_ == Field::kNone ? nullptr : &field_text_));
  }
  pos_ = end;
  return Ok();
}

Status ListParser::OnStart(std::string_view name) {
  if (root_done_) {
    return Fail("a second root element");
  }
  if (field_ != Field::kNone) {
    return Fail("an element inside a value element");
  }
  if (stack_.size() >= kMaxXmlDepth) {
    return Fail("elements nested too deeply");
  }
  stack_.push_back(name);
  size_t depth = stack_.size();
  auto take = [&](Field f, std::optional<std::string>& slot) -> Status {
    if (slot.has_value()) {
      return Fail("a value element appears twice");
    }
    field_ = f;
    field_depth_ = depth;
    field_text_.clear();
    return Ok();
  };
  if (depth == 1) {
    if (name != "ListBucketResult") {
      return Fail("root element is not ListBucketResult");
    }
  } else if (depth == 2) {
    if (name == "Contents") {
      in_contents_ = true;
      key_.reset();
      size_.reset();
      last_modified_.reset();
    } else if (name == "IsTruncated") {
      return take(Field::kIsTruncated, is_truncated_);
    } else if (name == "NextContinuationToken") {
      return take(Field::kNextToken, next_token_);
    } else if (name == "EncodingType") {
      return take(Field::kEncodingType, encoding_type_);
    }
  } else if (depth == 3 && in_contents_) {
    if (name == "Key") {
      return take(Field::kKey, key_);
    }
    if (name == "Size") {
      return take(Field::kSize, size_);
    }
    if (name == "LastModified") {
      return take(Field::kLastModified, last_modified_);
    }
  }
  return Ok();
}

Status ListParser::OnEnd() {
  size_t depth = stack_.size();
  if (field_ != Field::kNone && depth == field_depth_) {
    std::string text = std::move(field_text_);
    field_text_.clear();
    switch (field_) {
      case Field::kIsTruncated:
        is_truncated_ = std::move(text);
        break;
      case Field::kNextToken:
        next_token_ = std::move(text);
        break;
      case Field::kEncodingType:
        encoding_type_ = std::move(text);
        break;
      case Field::kKey:
        key_ = std::move(text);
        break;
      case Field::kSize:
        size_ = std::move(text);
        break;
      case Field::kLastModified:
        last_modified_ = std::move(text);
        break;
      case Field::kNone:
        break;
    }
    field_ = Field::kNone;
  } else if (depth == 2 && in_contents_) {
    AIRLOCK_TRY(FinishObject());
    in_contents_ = false;
  }
  stack_.pop_back();
  if (stack_.empty()) {
    root_done_ = true;
  }
  return Ok();
}

Status ListParser::FinishObject() {
  if (!key_.has_value() || key_->empty()) {
    return Fail("Contents without a Key");
  }
  if (!size_.has_value()) {
    return Fail("Contents without a Size");
  }
  const std::string& size = *size_;
  int64_t value = 0;
  auto [end, ec] = std::from_chars(size.data(), size.data() + size.size(), value);
  bool digits_only = !size.empty() && std::all_of(size.begin(), size.end(),
                                                  [](char c) { return c >= '0' && c <= '9'; });
  if (!digits_only || ec != std::errc() || end != size.data() + size.size()) {
    return Fail("Size is not a non-negative 64-bit number");
  }
  if (objects_.size() >= kMaxListObjects) {
    return Fail("too many Contents entries");
  }
  objects_.push_back(S3Object{std::move(*key_), value, last_modified_.value_or("")});
  return Ok();
}

Result<std::vector<S3Object>> ListParser::Finish(std::string* next_token) {
  if (!root_done_) {
    return Fail("truncated: the root element is not closed");
  }
  if (encoding_type_.has_value() && !encoding_type_->empty()) {
    return Fail("keys are URL-encoded (EncodingType), which this reader does not ask for");
  }
  if (!is_truncated_.has_value()) {
    return Fail("no IsTruncated");
  }
  bool truncated = false;
  if (*is_truncated_ == "true") {
    truncated = true;
  } else if (*is_truncated_ != "false") {
    return Fail("IsTruncated is neither true nor false");
  }
  if (truncated && (!next_token_.has_value() || next_token_->empty())) {
    return Fail("IsTruncated is true but there is no NextContinuationToken");
  }
  if (next_token != nullptr) {
    *next_token = truncated ? std::move(*next_token_) : std::string();
  }
  return std::move(objects_);
}

Result<std::vector<S3Object>> ListParser::Run(std::string* next_token) {
  if (xml_.size() > kMaxListXmlBytes) {
    return Errorf(ErrorCode::kUnavailable, "upstream ListObjectsV2 reply is larger than {} bytes",
                  kMaxListXmlBytes);
  }
  AIRLOCK_TRY(SkipProlog());
  while (pos_ < xml_.size()) {
    if (xml_[pos_] != '<') {
      AIRLOCK_TRY(ReadText());
    } else if (StartsWith("<!--")) {
      size_t end = xml_.find("-->", pos_ + 4);
      if (end == std::string_view::npos) {
        return Fail("unterminated comment");
      }
      pos_ = end + 3;
    } else if (StartsWith("<!")) {
      return Fail("DOCTYPE and CDATA are not accepted");
    } else if (StartsWith("<?")) {
      return Fail("processing instructions are not accepted");
    } else if (StartsWith("</")) {
      AIRLOCK_TRY(ReadEndTag());
    } else {
      AIRLOCK_TRY(ReadStartTag());
    }
  }
  return Finish(next_token);
}

}  // namespace

Result<std::vector<S3Object>> ParseListObjectsV2(std::string_view xml,
                                                 std::string* next_continuation_token) {
  ListParser parser(xml);
  return parser.Run(next_continuation_token);
}

}  // namespace airlock::files
