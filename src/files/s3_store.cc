#include "files/s3_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <optional>
#include <string_view>
#include <vector>

#include "common/asio.h"
#include "common/crypto.h"
#include "common/time_util.h"
#include "net/http_client.h"
#include "net/tls.h"

namespace airlock::files {
namespace {

constexpr std::chrono::milliseconds kMaxConnectTime{10'000};
// A HEAD or an error reply carries no more than a short XML document.
constexpr size_t kMaxSmallReplyBytes = 64 << 10;
// 100 pages of up to 1000 keys: far more files than a session keeps.
constexpr int kMaxListPages = 100;
constexpr size_t kMaxPrefixBytes = 512;
constexpr size_t kMaxSessionIdBytes = 128;
constexpr size_t kMaxContentTypeBytes = 255;
// S3 takes at most 5 GiB in one PUT; larger objects need a multipart upload.
constexpr int64_t kMaxSinglePutBytes = int64_t{5} << 30;

int64_t UnixNow() { return static_cast<int64_t>(std::time(nullptr)); }

std::string StripBrackets(std::string_view host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return std::string(host);
}

// Session ids are the control plane's own ("ses_..."); the check keeps a bad one from
// reaching into another session's prefix all the same.
Status ValidateSessionId(std::string_view id) {
  bool ok = !id.empty() && id.size() <= kMaxSessionIdBytes &&
            std::all_of(id.begin(), id.end(), [](char c) {
              return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
            });
  if (!ok) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "a session id has 1-128 characters of A-Z, a-z, 0-9, '_' and '-'");
  }
  return Ok();
}

Status ValidatePrefix(std::string_view prefix) {
  if (prefix.size() > kMaxPrefixBytes) {
    return Errorf(ErrorCode::kInvalidArgument, "s3 store: prefix is longer than {} bytes",
                  kMaxPrefixBytes);
  }
  if (prefix.starts_with('/')) {
    return MakeError(ErrorCode::kInvalidArgument, "s3 store: prefix must not start with '/'");
  }
  for (unsigned char c : prefix) {
    if (c < 0x20 || c == 0x7f) {
      return MakeError(ErrorCode::kInvalidArgument, "s3 store: prefix holds a control character");
    }
  }
  return Ok();
}

struct Reply {
  unsigned status = 0;
  std::string body;
  std::optional<uint64_t> content_length;
  std::string amz_error_code;  // the x-amz-error-code header, which some services send
};

// The reply as the store reads it: S3's error code and the object's length come in headers.
Reply ReplyOf(net::HttpResponse r) {
  Reply out;
  out.status = r.status;
  if (auto code = r.Header("x-amz-error-code")) {
    out.amz_error_code = std::string(*code);
  }
  if (auto length = r.Header("Content-Length")) {
    uint64_t n = 0;
    auto [p, err] = std::from_chars(length->data(), length->data() + length->size(), n);
    if (err == std::errc() && p == length->data() + length->size()) {
      out.content_length = n;
    }
  }
  out.body = std::move(r.body);
  return out;
}

// S3's error Code from an error reply ("NoSuchBucket", "SignatureDoesNotMatch"), and nothing
// else of it: the rest of an error document may echo the request (s3rver sends the string it
// signed). Only a plain word is taken.
std::string S3ErrorCode(const Reply& r) {
  auto plain = [](std::string_view s) {
    return !s.empty() && s.size() <= 64 && std::all_of(s.begin(), s.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '.';
    });
  };
  std::string_view body = r.body;
  size_t open = body.find("<Code>");
  if (open != std::string_view::npos) {
    size_t from = open + 6;
    size_t close = body.find("</Code>", from);
    if (close != std::string_view::npos && plain(body.substr(from, close - from))) {
      return std::string(body.substr(from, close - from));
    }
  }
  return plain(r.amz_error_code) ? r.amz_error_code : "";
}

std::unexpected<Error> FailureOf(std::string_view operation, const Reply& r) {
  std::string code = S3ErrorCode(r);
  return Errorf(ErrorCode::kUnavailable, "S3 {} failed: HTTP {}{}{}", operation, r.status,
                code.empty() ? "" : " ", code);
}

class S3BlobStore final : public BlobStore {
 public:
  S3BlobStore(S3StoreOptions o, S3Endpoint endpoint, net::Endpoint target,
              std::shared_ptr<asio::ssl::context> tls)
      : o_(std::move(o)),
        endpoint_(std::move(endpoint)),
        host_(HostForBucket(endpoint_, o_.bucket)),
        target_(std::move(target)),
        tls_(std::move(tls)) {
    // One attempt per request, on a connection of its own: the store is called on worker
    // threads and blocks, so each request runs on a private io_context (FetchBlocking), with
    // nothing to pool between them.
    http_.connect_timeout = kMaxConnectTime;  // the total timeout bounds it too
    http_.first_byte_timeout = o_.timeout;
    http_.total_timeout = o_.timeout;
    http_.max_retries = 0;
    http_.keep_alive = false;
    http_.max_response_bytes = kMaxSmallReplyBytes;
    http_.log_name = "s3 store";
  }

  std::string_view kind() const override { return "s3"; }

  Result<PresignedUrl> Presign(const PresignRequest& r) override {
    AIRLOCK_TRY(ValidateSessionId(r.session_id));
    AIRLOCK_TRY(ValidateFileName(r.name));
    const int64_t now = r.issued_at > 0 ? r.issued_at : UnixNow();
    const int64_t ttl = r.expires_at - now;
    if (ttl < 1 || ttl > kMaxPresignExpirySeconds) {
      return Errorf(ErrorCode::kInvalidArgument, "a URL must expire 1 to {} seconds from now",
                    kMaxPresignExpirySeconds);
    }
    PresignedUrl out;
    out.method = r.method;
    out.expires_at = now + ttl;
    Params signed_headers;
    if (r.method == "PUT") {
      if (!r.exact_size) {
        return MakeError(ErrorCode::kInvalidArgument,
                         "size is required for uploads with the s3 store");
      }
      const int64_t size = *r.exact_size;
      if (size < 0) {
        return MakeError(ErrorCode::kInvalidArgument, "size must not be negative");
      }
      if (r.max_bytes > 0 && size > r.max_bytes) {
        return Errorf(ErrorCode::kPayloadTooLarge,
                      "the file is larger than the {} bytes this upload may take", r.max_bytes);
      }
      if (size > kMaxSinglePutBytes) {
        return Errorf(ErrorCode::kPayloadTooLarge,
                      "the s3 store takes at most {} bytes in one upload", kMaxSinglePutBytes);
      }
      // Signed, so S3 refuses a body of any other length: this is the upload's size limit.
      signed_headers.emplace_back("Content-Length", std::to_string(size));
      if (!r.content_type.empty()) {
        AIRLOCK_TRY(ValidateContentType(r.content_type));
        signed_headers.emplace_back("Content-Type", r.content_type);
      }
    } else if (r.method != "GET") {
      return MakeError(ErrorCode::kInvalidArgument, "method must be PUT or GET");
    }
    auto url = PresignUrl(o_.creds, endpoint_, r.method, o_.bucket, KeyOf(r.session_id, r.name),
                          now, static_cast<int>(ttl), signed_headers);
    if (!url) {
      return Errorf(ErrorCode::kInternal, "cannot presign an S3 URL: {}", url.error().message);
    }
    out.url = std::move(*url);
    out.headers = std::move(signed_headers);
    return out;
  }

  Result<std::vector<FileInfo>> List(const std::string& session_id) override {
    AIRLOCK_TRY(ValidateSessionId(session_id));
    const std::string prefix = o_.prefix + session_id + "/";
    std::vector<FileInfo> out;
    std::string token;
    for (int page = 0;; ++page) {
      if (page == kMaxListPages) {
        return Errorf(ErrorCode::kUnavailable, "S3 listing of a session has more than {} pages",
                      kMaxListPages);
      }
      Params query = {
          {"list-type", "2"}, {"prefix", prefix}, {"max-keys", std::to_string(o_.list_page_size)}};
      if (!token.empty()) {
        query.emplace_back("continuation-token", token);
      }
      AIRLOCK_ASSIGN_OR_RETURN(
          Reply reply, SignedRequest(http::verb::get, BucketPath(), query, kMaxListXmlBytes));
      if (reply.status / 100 != 2) {
        return FailureOf("ListObjectsV2", reply);
      }
      std::string next;
      AIRLOCK_ASSIGN_OR_RETURN(std::vector<S3Object> objects,
                               ParseListObjectsV2(reply.body, &next));
      for (S3Object& object : objects) {
        if (!object.key.starts_with(prefix)) {
          return MakeError(ErrorCode::kUnavailable,
                           "upstream S3 listed a key outside the requested prefix");
        }
        std::string name = object.key.substr(prefix.size());
        // Keys that no presigned URL of ours can make (a "folder/" marker, a nested key) are
        // not session files.
        if (!ValidateFileName(name)) {
          continue;
        }
        std::optional<int64_t> created = ParseTimestamp(object.last_modified);
        if (!created) {
          return MakeError(ErrorCode::kUnavailable,
                           "upstream S3 sent a LastModified that is not ISO 8601");
        }
        out.push_back(FileInfo{std::move(name), object.size, *created});
      }
      if (next.empty()) {
        break;
      }
      if (next == token) {
        return MakeError(ErrorCode::kUnavailable, "upstream S3 repeated a continuation token");
      }
      token = std::move(next);
    }
    return out;
  }

  Result<OperatorDownload> Download(const std::string& session_id, const std::string& name,
                                    int expires_seconds) override {
    AIRLOCK_TRY(ValidateSessionId(session_id));
    AIRLOCK_TRY(ValidateFileName(name));
    if (expires_seconds < 1 || expires_seconds > kMaxPresignExpirySeconds) {
      return Errorf(ErrorCode::kInvalidArgument, "a URL must expire 1 to {} seconds from now",
                    kMaxPresignExpirySeconds);
    }
    const std::string key = KeyOf(session_id, name);
    AIRLOCK_ASSIGN_OR_RETURN(Reply head, SignedRequest(http::verb::head, ObjectPath(key), {}, 0));
    if (head.status == 404) {
      return Errorf(ErrorCode::kNotFound, "no file \"{}\" in session {}", name, session_id);
    }
    if (head.status / 100 != 2) {
      return FailureOf("HEAD", head);
    }
    auto url =
        PresignUrl(o_.creds, endpoint_, "GET", o_.bucket, key, UnixNow(), expires_seconds, {});
    if (!url) {
      return Errorf(ErrorCode::kInternal, "cannot presign an S3 URL: {}", url.error().message);
    }
    OperatorDownload out;
    out.redirect_url = std::move(*url);
    out.size = static_cast<int64_t>(head.content_length.value_or(0));
    return out;
  }

  Result<int64_t> UsedBytes(const std::string& session_id) override {
    AIRLOCK_ASSIGN_OR_RETURN(std::vector<FileInfo> files, List(session_id));
    int64_t total = 0;
    for (const FileInfo& f : files) {
      total += f.size;
    }
    return total;
  }

  Result<std::string> SpoolDir(const std::string& session_id) override {
    AIRLOCK_TRY(ValidateSessionId(session_id));
    if (o_.spool_dir.empty()) {
      return MakeError(ErrorCode::kUnimplemented,
                       "this s3 store has no spool directory for the control plane's own uploads");
    }
    return o_.spool_dir;
  }

  // One PutObject with the spool file as its body, streamed from disk and signed with its
  // SHA-256, so that S3 refuses it whole if a byte changed on the way. An object appears in S3
  // only once complete, so the name never shows a partial file.
  Status Put(const std::string& session_id, const std::string& name, const std::string& spool,
             int64_t size) override {
    struct Unlink {
      const std::string& path;
      ~Unlink() { ::unlink(path.c_str()); }
    } unlink_spool{spool};
    AIRLOCK_TRY(ValidateSessionId(session_id));
    AIRLOCK_TRY(ValidateFileName(name));
    if (size > kMaxSinglePutBytes) {
      return Errorf(ErrorCode::kPayloadTooLarge,
                    "the s3 store takes at most {} bytes in one upload", kMaxSinglePutBytes);
    }
    struct stat st {};
    if (::stat(spool.c_str(), &st) != 0 || st.st_size != size) {
      return Errorf(ErrorCode::kInternal, "the upload's spool file does not hold its {} bytes",
                    size);
    }
    AIRLOCK_ASSIGN_OR_RETURN(std::string sha256, Sha256HexOfFile(spool, size));
    AIRLOCK_ASSIGN_OR_RETURN(net::HttpRequest req,
                             Signed(http::verb::put, ObjectPath(KeyOf(session_id, name)), {},
                                    Params{{"content-length", std::to_string(size)}}, sha256));
    req.body_file = spool;
    auto reply = net::FetchBlocking(tls_, TransferOptions(), target_, req);
    if (!reply) {
      return Errorf(reply.error().code, "S3: {}", reply.error().message);
    }
    Reply r = ReplyOf(std::move(*reply));
    if (r.status / 100 != 2) return FailureOf("PutObject", r);
    return Ok();
  }

  // One GetObject, its body streamed into `dest`.
  Status CopyTo(const std::string& session_id, const std::string& name,
                const std::string& dest) override {
    AIRLOCK_TRY(ValidateSessionId(session_id));
    AIRLOCK_TRY(ValidateFileName(name));
    AIRLOCK_ASSIGN_OR_RETURN(net::HttpRequest req,
                             Signed(http::verb::get, ObjectPath(KeyOf(session_id, name)), {}));
    int fd = ::open(dest.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return Errorf(ErrorCode::kInternal, "create {}: {}", dest, std::strerror(errno));
    int write_error = 0;
    auto reply = net::FetchBlocking(tls_, TransferOptions(), target_, req,
                                    [fd, &write_error](std::string_view piece) {
                                      while (!piece.empty()) {
                                        ssize_t n = ::write(fd, piece.data(), piece.size());
                                        if (n < 0 && errno == EINTR) continue;
                                        if (n <= 0) {
                                          write_error = n < 0 ? errno : EIO;
                                          return false;
                                        }
                                        piece.remove_prefix(static_cast<size_t>(n));
                                      }
                                      return true;
                                    });
    ::close(fd);
    if (write_error != 0) {
      return Errorf(ErrorCode::kInsufficientStorage, "cannot keep the file: {}",
                    std::strerror(write_error));
    }
    if (!reply) {
      return Errorf(reply.error().code, "S3: {}", reply.error().message);
    }
    if (reply->status == 404) {
      return Errorf(ErrorCode::kNotFound, "no file \"{}\" in session {}", name, session_id);
    }
    if (reply->status / 100 != 2) return FailureOf("GetObject", ReplyOf(std::move(*reply)));
    return Ok();
  }

  Result<DeletedFiles> DeleteSession(const std::string& session_id) override {
    AIRLOCK_ASSIGN_OR_RETURN(std::vector<FileInfo> files, List(session_id));
    DeletedFiles out;
    for (const FileInfo& f : files) {
      AIRLOCK_ASSIGN_OR_RETURN(
          Reply reply,
          SignedRequest(http::verb::delete_, ObjectPath(KeyOf(session_id, f.name)), {}, 0));
      // S3 answers 204 whether or not the key existed.
      if (reply.status / 100 != 2 && reply.status != 404) {
        return FailureOf("DeleteObject", reply);
      }
      ++out.files;
      out.bytes += f.size;
    }
    return out;
  }

 private:
  static Status ValidateContentType(std::string_view type) {
    bool ok =
        type.size() <= kMaxContentTypeBytes && std::all_of(type.begin(), type.end(), [](char c) {
          auto u = static_cast<unsigned char>(c);
          return u >= 0x20 && u < 0x7f;
        });
    // Surrounding blanks would be trimmed by the signer but sent by the client.
    if (!ok || type.front() == ' ' || type.back() == ' ') {
      return MakeError(ErrorCode::kInvalidArgument,
                       "content_type must be printable ASCII of at most 255 bytes");
    }
    return Ok();
  }

  std::string KeyOf(const std::string& session_id, const std::string& name) const {
    return o_.prefix + session_id + "/" + name;
  }

  // The request path of the bucket and of an object, URI-encoded as signed.
  std::string BucketPath() const { return endpoint_.path_style ? "/" + o_.bucket : "/"; }
  std::string ObjectPath(const std::string& key) const {
    return (endpoint_.path_style ? "/" + o_.bucket + "/" : std::string("/")) +
           UriEncode(key, false);
  }

  // A request signed in the Authorization header, over `headers` besides Host (the client
  // sends them with the same values) and the body's SHA-256.
  Result<net::HttpRequest> Signed(http::verb verb, const std::string& path, const Params& query,
                                  Params headers = {},
                                  std::string_view payload_sha256 = kEmptyPayloadSha256) const {
    const std::string method(http::to_string(verb));
    headers.emplace_back("host", host_);
    auto auth =
        SignHeaders(o_.creds, endpoint_, method, path, query, headers, payload_sha256, UnixNow());
    if (!auth) {
      return Errorf(ErrorCode::kInternal, "cannot sign the S3 request: {}", auth.error().message);
    }
    std::string target = path;
    if (std::string q = CanonicalQueryString(query); !q.empty()) {
      target += "?" + q;
    }
    net::HttpRequest req;
    req.method = verb;
    req.target = std::move(target);
    req.host = host_;
    req.headers = std::move(*auth);
    return req;
  }

  // Sends a request with an empty body, signed in the Authorization header.
  Result<Reply> SignedRequest(http::verb verb, const std::string& path, const Params& query,
                              size_t body_limit) {
    AIRLOCK_ASSIGN_OR_RETURN(net::HttpRequest req, Signed(verb, path, query));
    req.max_response_bytes = std::max(body_limit, kMaxSmallReplyBytes);
    auto reply = net::FetchBlocking(tls_, http_, target_, req);
    if (!reply) {
      return Errorf(reply.error().code, "S3: {}", reply.error().message);
    }
    return ReplyOf(std::move(*reply));
  }

  // For a whole object's bytes: the timeout bounds each piece's progress, not the transfer,
  // whose length depends on the object's size.
  net::HttpClientOptions TransferOptions() const {
    net::HttpClientOptions options = http_;
    options.total_timeout = net::kNoTimeout;
    options.sink_idle_timeout = o_.timeout;
    return options;
  }

  const S3StoreOptions o_;
  const S3Endpoint endpoint_;
  const std::string host_;      // the Host header of every request: the bucket's host
  const net::Endpoint target_;  // where requests go, and the name the certificate must carry
  const std::shared_ptr<asio::ssl::context> tls_;
  net::HttpClientOptions http_;
};

Result<std::pair<std::string, uint16_t>> ParseConnectTo(std::string_view s) {
  size_t colon = s.rfind(':');
  if (colon == std::string_view::npos || colon == 0) {
    return MakeError(ErrorCode::kInvalidArgument, "s3 store: connect_to must be HOST:PORT");
  }
  std::string_view host = s.substr(0, colon);
  std::string_view port = s.substr(colon + 1);
  unsigned n = 0;
  auto [p, err] = std::from_chars(port.data(), port.data() + port.size(), n);
  if (err != std::errc() || p != port.data() + port.size() || n == 0 || n > 65535) {
    return MakeError(ErrorCode::kInvalidArgument, "s3 store: connect_to has a bad port");
  }
  return std::make_pair(StripBrackets(host), static_cast<uint16_t>(n));
}

}  // namespace

Result<std::unique_ptr<BlobStore>> MakeS3BlobStore(S3StoreOptions o) {
  auto endpoint = ParseS3Endpoint(o.endpoint, o.region, o.path_style);
  if (!endpoint) {
    return Errorf(ErrorCode::kInvalidArgument, "s3 store: {}", endpoint.error().message);
  }
  // A dry run of the signer checks the bucket name and the credentials now, rather than at the
  // first upload.
  if (auto probe = PresignUrl(o.creds, *endpoint, "GET", o.bucket, "probe", UnixNow(), 1, {});
      !probe) {
    return Errorf(ErrorCode::kInvalidArgument, "s3 store: {}", probe.error().message);
  }
  if (!o.path_style && endpoint->scheme == "https" && o.bucket.find('.') != std::string::npos) {
    return MakeError(
        ErrorCode::kInvalidArgument,
        "s3 store: a bucket name with '.' needs path_style over https (no certificate names "
        "bucket.with.dots.host)");
  }
  AIRLOCK_TRY(ValidatePrefix(o.prefix));
  if (o.timeout.count() <= 0) {
    return MakeError(ErrorCode::kInvalidArgument, "s3 store: timeout must be positive");
  }
  if (o.list_page_size < 1 || o.list_page_size > 1000) {
    return MakeError(ErrorCode::kInvalidArgument, "s3 store: list_page_size must be 1..1000");
  }

  net::Endpoint target;
  target.tls = endpoint->scheme == "https";
  // The name the certificate must carry (and SNI): the bucket's host, without brackets.
  target.host = StripBrackets(o.path_style ? endpoint->host : o.bucket + "." + endpoint->host);
  target.port = endpoint->port != 0 ? endpoint->port : (target.tls ? 443 : 80);
  if (!o.connect_to.empty()) {
    AIRLOCK_ASSIGN_OR_RETURN(auto to, ParseConnectTo(o.connect_to));
    target.connect_host = std::move(to.first);
    target.connect_port = to.second;
  }

  auto tls = net::MakeTlsClientContext(o.ca_file);
  if (!tls) {
    return Errorf(tls.error().code, "s3 store: {}", tls.error().message);
  }
  if (!o.spool_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(o.spool_dir, ec);
    if (ec || ::chmod(o.spool_dir.c_str(), 0700) != 0) {
      return Errorf(ErrorCode::kInternal, "s3 store: cannot make the spool directory {}: {}",
                    o.spool_dir, ec ? ec.message() : std::strerror(errno));
    }
    // What a crash left there was on its way and is of no use now.
    for (const auto& f : std::filesystem::directory_iterator(o.spool_dir, ec)) {
      std::error_code ignored;
      std::filesystem::remove_all(f.path(), ignored);
    }
  }

  S3Endpoint ep = std::move(*endpoint);
  return std::make_unique<S3BlobStore>(std::move(o), std::move(ep), std::move(target),
                                       std::move(*tls));
}

}  // namespace airlock::files
