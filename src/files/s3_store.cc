#include "files/s3_store.h"

#include "common/asio.h"

#include <openssl/ssl.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <ctime>
#include <exception>
#include <optional>
#include <string_view>
#include <vector>

#include <boost/asio/ssl.hpp>
#include <boost/beast/ssl.hpp>

#include "common/time_util.h"
#include "net/tls.h"

namespace airlock::files {
namespace {

namespace ssl = asio::ssl;
using Clock = std::chrono::steady_clock;

constexpr std::chrono::milliseconds kMaxConnectTime{10'000};
constexpr uint32_t kMaxReplyHeaderBytes = 64 << 10;
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

// Where one request is sent, and the name its certificate must carry.
struct Target {
  bool tls = false;
  std::string connect_host;  // what is resolved and connected to (no brackets)
  std::string connect_port;
  std::string tls_name;  // the host name or IP address the certificate must name (no brackets)
  std::string Where() const { return fmt::format("{}:{}", connect_host, connect_port); }
};

struct Reply {
  unsigned status = 0;
  std::string body;
  std::optional<uint64_t> content_length;
  std::string amz_error_code;  // the x-amz-error-code header, which some services send
};

ErrorCode CodeOf(const beast::error_code& ec) {
  return ec == beast::error::timeout ? ErrorCode::kDeadlineExceeded : ErrorCode::kUnavailable;
}

std::string Describe(const beast::error_code& ec) {
  if (ec == beast::error::timeout) {
    return "timed out";
  }
  if (ec == http::error::body_limit) {
    return "the reply is larger than the limit";
  }
  if (ec == http::error::end_of_stream || ec == asio::error::eof) {
    return "connection closed";
  }
  return ec.message();
}

// Writes `req` over a connected stream (plain or TLS) and reads the whole reply.
template <typename Stream>
awaitable<Result<Reply>> Talk(Stream& stream, beast::tcp_stream& tcp,
                              http::request<http::empty_body>& req, bool head, size_t body_limit,
                              Clock::time_point deadline, const std::string& where) {
  beast::error_code ec;
  tcp.expires_at(deadline);
  co_await http::async_write(stream, req, asio::redirect_error(use_awaitable, ec));
  if (ec) {
    co_return Errorf(CodeOf(ec), "S3 request to {} failed: {}", where, Describe(ec));
  }
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.header_limit(kMaxReplyHeaderBytes);
  parser.body_limit(body_limit);
  // A reply to HEAD announces the object's length but carries no body.
  parser.skip(head);
  co_await http::async_read(stream, buffer, parser, asio::redirect_error(use_awaitable, ec));
  if (ec) {
    co_return Errorf(CodeOf(ec), "S3 reply from {} broke off: {}", where, Describe(ec));
  }
  Reply r;
  r.status = parser.get().result_int();
  if (auto it = parser.get().find("x-amz-error-code"); it != parser.get().end()) {
    r.amz_error_code = std::string(it->value());
  }
  if (auto it = parser.get().find(http::field::content_length); it != parser.get().end()) {
    uint64_t n = 0;
    std::string_view v = it->value();
    auto [p, err] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (err == std::errc() && p == v.data() + v.size()) {
      r.content_length = n;
    }
  }
  r.body = std::move(parser.get().body());
  co_return r;
}

awaitable<Result<Reply>> Exchange(ssl::context& tls_context, const Target& t,
                                  http::request<http::empty_body>& req, bool head,
                                  size_t body_limit, std::chrono::milliseconds timeout) {
  auto ex = co_await asio::this_coro::executor;
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline = start + timeout;
  const Clock::time_point connect_deadline = std::min(deadline, start + kMaxConnectTime);
  const std::string where = t.Where();
  beast::error_code ec;

  asio::ip::tcp::resolver::results_type endpoints;
  {
    asio::ip::tcp::resolver resolver(ex);
    asio::steady_timer timer(ex);
    bool timed_out = false;
    timer.expires_at(connect_deadline);
    timer.async_wait([&resolver, &timed_out](beast::error_code tec) {
      if (!tec) {
        timed_out = true;
        resolver.cancel();
      }
    });
    endpoints = co_await resolver.async_resolve(t.connect_host, t.connect_port,
                                                asio::redirect_error(use_awaitable, ec));
    timer.cancel();
    if (timed_out) {
      ec = beast::error::timeout;
    }
  }
  if (ec) {
    co_return Errorf(CodeOf(ec), "cannot resolve S3 host {}: {}", t.connect_host, Describe(ec));
  }

  if (!t.tls) {
    beast::tcp_stream tcp(ex);
    tcp.expires_at(connect_deadline);
    co_await tcp.async_connect(endpoints, asio::redirect_error(use_awaitable, ec));
    if (ec) {
      co_return Errorf(CodeOf(ec), "cannot connect to S3 at {}: {}", where, Describe(ec));
    }
    co_return co_await Talk(tcp, tcp, req, head, body_limit, deadline, where);
  }

  beast::ssl_stream<beast::tcp_stream> stream(ex, tls_context);
  beast::tcp_stream& tcp = beast::get_lowest_layer(stream);
  tcp.expires_at(connect_deadline);
  co_await tcp.async_connect(endpoints, asio::redirect_error(use_awaitable, ec));
  if (ec) {
    co_return Errorf(CodeOf(ec), "cannot connect to S3 at {}: {}", where, Describe(ec));
  }
  SSL* ssl_handle = stream.native_handle();
  if (auto prepared = net::PrepareTlsClient(ssl_handle, t.tls_name); !prepared) {
    co_return std::unexpected(prepared.error());
  }
  co_await stream.async_handshake(ssl::stream_base::client,
                                  asio::redirect_error(use_awaitable, ec));
  if (ec) {
    co_return Errorf(CodeOf(ec), "TLS handshake with S3 at {} failed: {}", where,
                     net::DescribeHandshakeError(ssl_handle, Describe(ec)));
  }
  co_return co_await Talk(stream, tcp, req, head, body_limit, deadline, where);
}

// Runs one request to completion on a private io_context: the store is called from worker
// threads and blocks, so no event loop is shared.
Result<Reply> Send(ssl::context& tls_context, const Target& t, http::request<http::empty_body>& req,
                   bool head, size_t body_limit, std::chrono::milliseconds timeout) {
  asio::io_context io;
  std::optional<Result<Reply>> out;
  asio::co_spawn(io, Exchange(tls_context, t, req, head, body_limit, timeout),
                 [&out](std::exception_ptr e, Result<Reply> r) {
                   if (e) {
                     out = MakeError(ErrorCode::kInternal, "S3 request failed unexpectedly");
                   } else {
                     out = std::move(r);
                   }
                 });
  io.run();
  if (!out) {
    return MakeError(ErrorCode::kInternal, "S3 request did not complete");
  }
  return std::move(*out);
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
  S3BlobStore(S3StoreOptions o, S3Endpoint endpoint, Target target,
              std::shared_ptr<ssl::context> tls)
      : o_(std::move(o)),
        endpoint_(std::move(endpoint)),
        host_(HostForBucket(endpoint_, o_.bucket)),
        target_(std::move(target)),
        tls_(std::move(tls)) {}

  std::string_view kind() const override { return "s3"; }

  Result<PresignedUrl> Presign(const PresignRequest& r) override {
    AIRLOCK_TRY(ValidateSessionId(r.session_id));
    AIRLOCK_TRY(ValidateFileName(r.name));
    const int64_t now = UnixNow();
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
      AIRLOCK_ASSIGN_OR_RETURN(Reply reply, SignedRequest(http::verb::get, BucketPath(), query,
                                                          false, kMaxListXmlBytes));
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
    AIRLOCK_ASSIGN_OR_RETURN(Reply head,
                             SignedRequest(http::verb::head, ObjectPath(key), {}, true, 0));
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

  Result<DeletedFiles> DeleteSession(const std::string& session_id) override {
    AIRLOCK_ASSIGN_OR_RETURN(std::vector<FileInfo> files, List(session_id));
    DeletedFiles out;
    for (const FileInfo& f : files) {
      AIRLOCK_ASSIGN_OR_RETURN(
          Reply reply,
          SignedRequest(http::verb::delete_, ObjectPath(KeyOf(session_id, f.name)), {}, false, 0));
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

  // Sends a request with an empty body, signed in the Authorization header.
  Result<Reply> SignedRequest(http::verb verb, const std::string& path, const Params& query,
                              bool head, size_t body_limit) {
    const std::string method(http::to_string(verb));
    auto auth = SignHeaders(o_.creds, endpoint_, method, path, query, Params{{"host", host_}},
                            kEmptyPayloadSha256, UnixNow());
    if (!auth) {
      return Errorf(ErrorCode::kInternal, "cannot sign the S3 request: {}", auth.error().message);
    }
    std::string target = path;
    if (std::string q = CanonicalQueryString(query); !q.empty()) {
      target += "?" + q;
    }
    http::request<http::empty_body> req{verb, target, 11};
    req.set(http::field::host, host_);
    for (const auto& [name, value] : *auth) {
      req.set(name, value);
    }
    req.set(http::field::user_agent, "airlock");
    req.set(http::field::connection, "close");
    return Send(*tls_, target_, req, head, std::max(body_limit, kMaxSmallReplyBytes), o_.timeout);
  }

  const S3StoreOptions o_;
  const S3Endpoint endpoint_;
  const std::string host_;  // the Host header of every request: the bucket's host
  const Target target_;
  const std::shared_ptr<ssl::context> tls_;
};

Result<std::pair<std::string, std::string>> ParseConnectTo(std::string_view s) {
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
  return std::make_pair(StripBrackets(host), std::string(port));
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

  Target target;
  target.tls = endpoint->scheme == "https";
  target.tls_name = StripBrackets(o.path_style ? endpoint->host : o.bucket + "." + endpoint->host);
  target.connect_host = target.tls_name;
  target.connect_port =
      std::to_string(endpoint->port != 0 ? endpoint->port : (target.tls ? 443 : 80));
  if (!o.connect_to.empty()) {
    AIRLOCK_ASSIGN_OR_RETURN(auto to, ParseConnectTo(o.connect_to));
    target.connect_host = std::move(to.first);
    target.connect_port = std::move(to.second);
  }

  auto tls = net::MakeTlsClientContext(o.ca_file);
  if (!tls) {
    return Errorf(tls.error().code, "s3 store: {}", tls.error().message);
  }

  S3Endpoint ep = std::move(*endpoint);
  return std::make_unique<S3BlobStore>(std::move(o), std::move(ep), std::move(target),
                                       std::move(*tls));
}

}  // namespace airlock::files
