#include "controlplane/file_service.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>

#include "common/blocking.h"
#include "common/crypto.h"
#include "common/log.h"
#include "common/time_util.h"
#include "common/url.h"
#include "controlplane/event_limits.h"
#include "controlplane/plug_points.h"
#include "controlplane/requests.h"
#include "net/handler_util.h"

namespace airlock::controlplane {

namespace {

std::optional<int64_t> ParseInt(std::string_view s) {
  int64_t v = 0;
  if (s.empty() || s.size() > 19) return std::nullopt;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

Response Forbidden(std::string_view why) {
  return Response::FromError(Error{ErrorCode::kPermissionDenied, std::string(why)});
}

int64_t UnixNow() { return NowMillis() / 1000; }

// The Host a sandbox used to reach us: the base of the URLs handed back to it. Only what a
// host[:port] can hold, so a hostile Host header cannot shape the URL.
std::optional<std::string> BaseUrl(const Request& req) {
  std::string_view host = req.Header("Host");
  if (host.empty() || host.size() > 255) return std::nullopt;
  for (char ch : host) {
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '.' && ch != '-' && ch != ':' &&
        ch != '[' && ch != ']') {
      return std::nullopt;
    }
  }
  return "http://" + std::string(host);
}

}  // namespace

Result<std::optional<ByteRange>> ParseRange(std::string_view h, uint64_t size) {
  if (h.empty()) return std::optional<ByteRange>();
  if (!h.starts_with("bytes=") || h.find(',') != std::string_view::npos) {
    return std::optional<ByteRange>();  // other units and multiple ranges: the whole file (RFC 9110
                                        // allows it)
  }
  std::string_view spec = h.substr(6);
  size_t dash = spec.find('-');
  if (dash == std::string_view::npos) return std::optional<ByteRange>();
  auto first = spec.substr(0, dash), last = spec.substr(dash + 1);
  if (first.empty()) {  // suffix: the last N bytes
    auto n = ParseInt(last);
    if (!n) return std::optional<ByteRange>();
    if (*n == 0 || size == 0) return MakeError(ErrorCode::kInvalidArgument, "unsatisfiable range");
    uint64_t len = std::min<uint64_t>(static_cast<uint64_t>(*n), size);
    return std::optional<ByteRange>(ByteRange{size - len, len});
  }
  auto a = ParseInt(first);
  if (!a || *a < 0) return std::optional<ByteRange>();
  if (static_cast<uint64_t>(*a) >= size)
    return MakeError(ErrorCode::kInvalidArgument, "unsatisfiable range");
  uint64_t end = size - 1;
  if (!last.empty()) {
    auto b = ParseInt(last);
    if (!b || *b < *a) return std::optional<ByteRange>();
    end = std::min<uint64_t>(static_cast<uint64_t>(*b), size - 1);
  }
  return std::optional<ByteRange>(
      ByteRange{static_cast<uint64_t>(*a), end - static_cast<uint64_t>(*a) + 1});
}

std::string ContentDisposition(std::string_view name) {
  std::string fallback;
  for (size_t i = 0; i < name.size(); ++i) {
    auto ch = static_cast<unsigned char>(name[i]);
    if (ch == '"' || ch == '\\') {
      fallback += '\\';
      fallback += static_cast<char>(ch);
    } else if (ch >= 0x20 && ch < 0x7f && ch != '%') {
      // '%' would make some browsers percent-decode the fallback (RFC 6266 appendix D).
      fallback += static_cast<char>(ch);
    } else if (ch < 0x80 || (ch & 0xC0) != 0x80 || i == 0 ||
               static_cast<unsigned char>(name[i - 1]) < 0x80) {
      fallback += '_';  // one '_' per control byte or UTF-8 sequence, not per byte
    }
  }
  return fmt::format("attachment; filename=\"{}\"; filename*=UTF-8''{}", fallback,
                     PercentEncode(name));
}

struct FileService::Terms {
  std::string session;
  std::string name;
  int64_t max_bytes = 0;
};

FileService::FileService(const Config& config, store::Store& store, asio::thread_pool& pool,
                         Notifier& events, metrics::Registry& registry)
    : config_(config),
      store_(store),
      pool_(pool),
      events_(events),
      bytes_(registry.AddCounter("airlock_file_bytes_total", "Bytes moved through local file URLs.",
                                 {"direction"})),
      refusals_(registry.AddCounter("airlock_file_refusals_total", "File requests refused.",
                                    {"reason"})) {}

FileService::~FileService() = default;

Status FileService::Start() {
  AIRLOCK_ASSIGN_OR_RETURN(blobs_, OpenBlobStore(config_.files));
  // The local store's URLs point at this control plane, whose routes serve them from the
  // store's files: those routes need the local store itself, not only the interface.
  local_ = dynamic_cast<files::LocalBlobStore*>(blobs_.get());
  return Ok();
}

awaitable<Result<store::Session>> FileService::LoadSession(const std::string& id) {
  co_return co_await RunBlocking(pool_, [this, &id] { return store_.GetSession(id); });
}

awaitable<Response> FileService::Presign(Request& req, const store::Session& s) {
  AIRLOCK_CO_ASSIGN(Json body, ParseJsonObject(req.msg.body()));
  AIRLOCK_CO_TRY(RejectUnknownKeys(body, {"name", "method", "size", "content_type", "expires_s"},
                                   "presign request"));
  AIRLOCK_CO_ASSIGN(std::string name, RequiredString(body, "name"));
  AIRLOCK_CO_TRY(files::ValidateFileName(name));
  AIRLOCK_CO_ASSIGN(std::string method, RequiredString(body, "method"));
  if (method != "PUT" && method != "GET")
    co_return Response::FromError(Error{ErrorCode::kInvalidArgument, "\"method\" is PUT or GET"});
  AIRLOCK_CO_ASSIGN(auto size, OptionalInt(body, "size"));
  AIRLOCK_CO_ASSIGN(auto content_type, OptionalString(body, "content_type"));
  AIRLOCK_CO_ASSIGN(auto expires_s, OptionalInt(body, "expires_s"));
  const FilesConfig& f = config_.files;
  int64_t ttl = expires_s.value_or(f.default_expiry_s);
  if (ttl < 1 || ttl > f.max_expiry_s) {
    co_return Response::FromError(
        Error{ErrorCode::kInvalidArgument,
              fmt::format("\"expires_s\" must be 1 to {} seconds", f.max_expiry_s)});
  }
  if (content_type &&
      (content_type->size() > 255 || content_type->find_first_of("\r\n") != std::string::npos)) {
    co_return Response::FromError(
        Error{ErrorCode::kInvalidArgument, "\"content_type\" is at most 255 bytes on one line"});
  }
  files::PresignRequest pr;
  pr.session_id = s.id;
  pr.name = name;
  pr.method = method;
  const int64_t now = UnixNow();
  pr.issued_at = now;
  pr.expires_at = now + ttl;
  // An S3 URL cannot be revoked when the session ends; the best bound there is the session's
  // wall-clock limit. (Local URLs are checked against the session on every use instead.)
  if (blobs_->kind() == "s3" && (method == "PUT" || !f.get_urls_outlive_session)) {
    if (auto t = s.limits.find("timeout_s"); t != s.limits.end() && t->is_number()) {
      int64_t deadline = s.created_at / 1000 + static_cast<int64_t>(t->get<double>());
      pr.expires_at = std::max(now + 1, std::min(pr.expires_at, deadline));
    }
  }
  pr.content_type = content_type.value_or("");
  auto base = BaseUrl(req);
  if (!base)
    co_return Response::FromError(
        Error{ErrorCode::kInvalidArgument, "a plain Host header is required"});
  pr.base_url = *base;
  if (method == "PUT") {
    const int64_t max_file = f.max_file_mb << 20;
    if (size && (*size < 0 || *size > max_file)) {
      refusals_.With({"too_large"}).Inc();
      co_return Response::FromError(
          Error{ErrorCode::kPayloadTooLarge,
                fmt::format("a file is at most {} MiB (files.max_file_mb)", f.max_file_mb)});
    }
    AIRLOCK_CO_ASSIGN(int64_t used,
                      co_await RunBlocking(pool_, [this, &s] { return blobs_->UsedBytes(s.id); }));
    int64_t left = (f.session_quota_mb << 20) - used - reserved_[s.id];
    if (reserved_[s.id] == 0) reserved_.erase(s.id);
    if ((size && *size > left) || left <= 0) {
      refusals_.With({"quota"}).Inc();
      co_return Response::FromError(
          Error{ErrorCode::kPayloadTooLarge,
                fmt::format(
                    "the session's files would exceed its quota of {} MiB ({} bytes used, {} left)",
                    f.session_quota_mb, used, std::max<int64_t>(left, 0)),
                "quota_exceeded"});
    }
    pr.exact_size = size;
    pr.max_bytes = size ? *size : std::min(max_file, left);
  }
  AIRLOCK_CO_ASSIGN(auto url, blobs_->Presign(pr));
  Json headers = Json::object();
  for (const auto& [k, v] : url.headers) headers[k] = v;
  Json data{
      {"name", name}, {"method", method}, {"expires_at", FormatTimestamp(url.expires_at * 1000)}};
  if (method == "PUT") data["max_bytes"] = pr.max_bytes;
  // Every URL handed out is in the session's events, and those count against its event
  // quota: past it, no URL (a sandbox must not grow the events table through presigns).
  const store::EventQuota quota = EventQuotaFor(config_);
  AIRLOCK_CO_ASSIGN(auto appended, co_await RunBlocking(pool_, [this, &s, &data, &quota] {
                      return store_.AppendEventWithinQuota(s.id, "file.presigned", data, quota);
                    }));
  events_.Notify(s.id);
  if (!appended.event) {
    refusals_.With({"event_quota"}).Inc();
    co_return EventQuotaExceeded(appended);
  }
  co_return Response::FromJson(200, Json{{"url", url.url},
                                         {"method", url.method},
                                         {"headers", headers},
                                         {"expires_at", FormatTimestamp(url.expires_at * 1000)}});
}

// Checks a local URL's signature and terms against this request. The signature covers the
// method, session, name, expiry and size limit, so changing any of them breaks it.
Result<FileService::Terms> FileService::CheckUrl(const Request& req,
                                                 std::string_view method) const {
  auto deny = [](std::string why) {
    return MakeError(ErrorCode::kPermissionDenied, std::move(why));
  };
  if (local_ == nullptr) return deny("file URLs of this control plane are not served here");
  auto it_s = req.params.find("session");
  auto it_n = req.params.find("name");
  if (it_s == req.params.end() || it_n == req.params.end()) return deny("malformed file URL");
  Terms t;
  t.session = it_s->second;
  auto name = PercentDecode(it_n->second, /*query=*/false);
  if (!name) return deny("malformed file URL");
  t.name = *name;
  if (!files::ValidateFileName(t.name)) return deny("malformed file URL");
  auto q_method = req.Query("method");
  auto q_exp = req.Query("expires");
  auto q_max = req.Query("max");
  auto q_kid = req.Query("kid");
  auto q_sig = req.Query("sig");
  if (!q_method || !q_exp || !q_max || !q_kid || !q_sig) return deny("the URL is not signed");
  auto exp = ParseInt(*q_exp);
  auto max = ParseInt(*q_max);
  if (!exp || !max || *max < 0) return deny("malformed file URL");
  if (*q_method != method)
    return deny(fmt::format("this URL is for {}, not {}", q_method->substr(0, 8), method));
  if (!local_->signer().Verify(*q_kid, *q_sig, *q_method, t.session, t.name, *exp, *max)) {
    return deny("the URL's signature does not match");
  }
  if (*exp < UnixNow()) return deny("the URL has expired");
  // A sandbox's own socket serves its own session only.
  if (!req.bound_session.empty() && req.bound_session != t.session)
    return deny("this URL belongs to another session");
  t.max_bytes = *max;
  return t;
}

namespace {

// Appends `bytes` to an upload's hidden file.
Status WriteUpload(int fd, std::string_view bytes) {
  for (std::string_view rest = bytes; !rest.empty();) {
    ssize_t n = ::write(fd, rest.data(), rest.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return Errorf(ErrorCode::kInsufficientStorage, "cannot store the upload: {}",
                    std::strerror(errno));
    }
    rest.remove_prefix(static_cast<size_t>(n));
  }
  return Ok();
}

// The {name} of a file route, decoded and checked.
Result<std::string> FileNameParam(Request& req) {
  auto name = PercentDecode(req.params["name"], /*query=*/false);
  if (!name) return MakeError(ErrorCode::kInvalidArgument, "malformed file name");
  AIRLOCK_TRY(files::ValidateFileName(*name));
  return std::move(*name);
}

// A new hidden spool file for an upload of the session on its way to the store.
Result<std::pair<int, std::string>> OpenSpool(files::BlobStore& blobs, const std::string& session) {
  AIRLOCK_ASSIGN_OR_RETURN(std::string dir, blobs.SpoolDir(session));
  std::string path = dir + "/.upload-" + HexEncode(RandomBytes(8));
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0)
    return Errorf(ErrorCode::kInternal, "cannot store the upload: {}", std::strerror(errno));
  return std::make_pair(fd, std::move(path));
}

}  // namespace

awaitable<Response> FileService::Upload(Request& req) {
  auto terms = CheckUrl(req, "PUT");
  if (!terms) {
    refusals_.With({"signature"}).Inc();
    co_return Forbidden(terms.error().message);
  }
  co_return co_await Receive(req, terms->session, terms->name, terms->max_bytes, "sandbox");
}

awaitable<Response> FileService::OperatorUpload(Request& req) {
  AIRLOCK_CO_ASSIGN(auto name, FileNameParam(req));
  co_return co_await Receive(req, req.params["id"], name, config_.files.max_file_mb << 20,
                             "operator");
}

awaitable<Response> FileService::Receive(Request& req, std::string session, std::string name,
                                         int64_t max_bytes, std::string_view by) {
  if (req.body == nullptr)
    co_return Response::FromError(Error{ErrorCode::kInternal, "upload body not streamed"});
  const Terms t{session, name, max_bytes};
  AIRLOCK_CO_ASSIGN(auto s, co_await LoadSession(t.session));
  if (store::IsTerminal(s.state)) {
    co_return Response::FromError(
        Error{ErrorCode::kGone, "the session has ended; its files take no more uploads"});
  }
  std::optional<uint64_t> declared = req.body->content_length();
  if (declared && static_cast<int64_t>(*declared) > t.max_bytes) {
    refusals_.With({"too_large"}).Inc();
    co_return Response::FromError(
        Error{ErrorCode::kPayloadTooLarge,
              fmt::format("this URL accepts at most {} bytes", t.max_bytes)});
  }
  // The quota counts stored files and uploads in progress.
  const int64_t quota = config_.files.session_quota_mb << 20;
  AIRLOCK_CO_ASSIGN(int64_t used, co_await RunBlocking(
                                      pool_, [this, &t] { return blobs_->UsedBytes(t.session); }));
  const int64_t promise = declared ? static_cast<int64_t>(*declared) : t.max_bytes;
  if (used + reserved_[t.session] + promise > quota) {
    if (reserved_[t.session] == 0) reserved_.erase(t.session);
    refusals_.With({"quota"}).Inc();
    co_return Response::FromError(
        Error{ErrorCode::kPayloadTooLarge,
              fmt::format("the session's files would exceed its quota of {} MiB",
                          config_.files.session_quota_mb),
              "quota_exceeded"});
  }
  reserved_[t.session] += promise;

  auto release = [&] {
    if ((reserved_[t.session] -= promise) <= 0) reserved_.erase(t.session);
  };
  Result<std::pair<int, std::string>> spool = OpenSpool(*blobs_, t.session);
  if (!spool) {
    release();
    co_return Response::FromError(spool.error());
  }
  // Nothing partial ever shows: the bytes go to a hidden spool file that the store takes only
  // once it is complete (a rename on disk, or one PutObject).
  int fd = spool->first;
  const std::string tmp = spool->second;
  auto abandon = [&](Response r) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    release();
    return r;
  };
  int64_t total = 0;
  for (;;) {
    auto piece = co_await req.body->Read();
    if (!piece) co_return abandon(Response::FromError(piece.error()));
    if (piece->empty()) break;
    total += static_cast<int64_t>(piece->size());
    if (total > t.max_bytes) {
      refusals_.With({"too_large"}).Inc();
      co_return abandon(Response::FromError(
          Error{ErrorCode::kPayloadTooLarge,
                fmt::format("this URL accepts at most {} bytes", t.max_bytes)}));
    }
    if (auto written = WriteUpload(fd, *piece); !written) {
      co_return abandon(Response::FromError(written.error()));
    }
  }
  bytes_.With({"in"}).Inc(static_cast<double>(total));
  // The upload's event counts against the session's event quota like every event a sandbox
  // causes: a PUT URL may be used again until it expires, and repeating it must not grow the
  // events table without bound. Past the quota the upload is refused and nothing replaces the
  // name.
  Json data{{"name", t.name}, {"size", total}, {"by", by}};
  const store::EventQuota event_quota = EventQuotaFor(config_);
  auto appended = co_await RunBlocking(pool_, [this, &t, &data, &event_quota] {
    return store_.AppendEventWithinQuota(t.session, "file.uploaded", data, event_quota);
  });
  if (!appended) co_return abandon(Response::FromError(appended.error()));
  if (!appended->event) {
    refusals_.With({"event_quota"}).Inc();
    events_.Notify(t.session);
    co_return abandon(EventQuotaExceeded(*appended));
  }
  ::close(fd);
  fd = -1;
  auto committed = co_await RunBlocking(
      pool_, [this, &t, &tmp, total] { return blobs_->Put(t.session, t.name, tmp, total); });
  if (!committed) {
    // The event above said uploaded: say it did not last, within the same quota.
    log::Warn("an upload could not be stored",
              {{"session", t.session}, {"name", t.name}, {"error", committed.error().message}});
    [[maybe_unused]] auto noted = co_await RunBlocking(pool_, [this, &t, &committed, &event_quota] {
      return store_.AppendEventWithinQuota(
          t.session, "file.upload_failed",
          Json{{"name", t.name}, {"error", committed.error().message}}, event_quota);
    });
    events_.Notify(t.session);
    Error e = committed.error();
    if (e.code != ErrorCode::kPayloadTooLarge && e.code != ErrorCode::kUnavailable)
      e.code = ErrorCode::kInternal;
    co_return abandon(Response::FromError(std::move(e)));
  }
  release();
  events_.Notify(t.session);
  data.erase("by");
  co_return Response::FromJson(201, data);
}

namespace {

// Serves `path` (whole or the request's Range) as a file body.
Response ServeFile(const Request& req, const std::string& path, const std::string& name) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  struct stat st {};
  if (fd < 0 || ::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    if (fd >= 0) ::close(fd);
    return Response::FromError(Error{ErrorCode::kNotFound, "no such file"});
  }
  auto file = std::make_shared<FileBody>();
  file->fd = fd;
  const auto size = static_cast<uint64_t>(st.st_size);
  auto range = ParseRange(req.Header("Range"), size);
  Response r;
  r.content_type = "application/octet-stream";
  r.headers.emplace_back("Accept-Ranges", "bytes");
  r.headers.emplace_back("Content-Disposition", ContentDisposition(name));
  if (!range) {
    r = Response::FromError(
        Error{ErrorCode::kRangeNotSatisfiable, "the range is outside the file"});
    r.headers.emplace_back("Content-Range", fmt::format("bytes */{}", size));
    return r;
  }
  if (*range) {
    r.status = 206;
    file->offset = (*range)->first;
    file->length = (*range)->length;
    r.headers.emplace_back("Content-Range", fmt::format("bytes {}-{}/{}", file->offset,
                                                        file->offset + file->length - 1, size));
  } else {
    file->length = size;
  }
  r.file = std::move(file);
  return r;
}

}  // namespace

awaitable<Response> FileService::Fetch(Request& req) {
  auto terms = CheckUrl(req, "GET");
  if (!terms) {
    refusals_.With({"signature"}).Inc();
    co_return Forbidden(terms.error().message);
  }
  // A URL handed to a sandbox is revoked with the session: one that leaked (into a log, an
  // artifact, another tenant's hands) must not keep serving the file for up to max_expiry_s.
  // The operator's own route is not affected.
  if (!config_.files.get_urls_outlive_session) {
    AIRLOCK_CO_ASSIGN(auto s, co_await LoadSession(terms->session));
    if (store::IsTerminal(s.state)) {
      refusals_.With({"session_ended"}).Inc();
      co_return Response::FromError(Error{
          ErrorCode::kGone,
          "the session has ended; its file URLs are revoked (files.get_urls_outlive_session)"});
    }
  }
  Response r = ServeFile(req, local_->PathOf(terms->session, terms->name), terms->name);
  if (r.file && req.msg.method() != http::verb::head)
    bytes_.With({"out"}).Inc(static_cast<double>(r.file->length));
  co_return r;
}

awaitable<Response> FileService::List(Request& req) {
  std::string id = req.params["id"];
  AIRLOCK_CO_ASSIGN(auto s, co_await LoadSession(id));
  (void)s;
  AIRLOCK_CO_ASSIGN(Json files, co_await ListOf(id));
  co_return Response::FromJson(200, Json{{"files", std::move(files)}});
}

awaitable<Result<Json>> FileService::Work(const store::Session& s, Json egress,
                                          std::optional<Json> known_files) {
  // (Not a co_await inside ?:, which GCC 12 miscompiles.)
  Result<Json> files = Json::array();
  if (known_files) {
    files = std::move(*known_files);
  } else {
    files = co_await ListOf(s.id);
  }
  if (!files) co_return std::unexpected(files.error());
  Json env = s.env.is_object() ? s.env : Json::object();
  if (auto it = egress.find("env"); it != egress.end()) {
    env.update(*it);  // create refused a session variable of a placeholder's name
    egress.erase(it);
  }
  Json work = {{"env", std::move(env)}, {"files", std::move(*files)}};
  work.update(egress);
  co_return work;
}

awaitable<Response> FileService::SandboxWork(const store::Session& s, Json egress) {
  auto work = co_await Work(s, std::move(egress));
  if (!work) co_return Response::FromError(work.error());
  co_return Response::FromJson(200, *work);
}

awaitable<Response> FileService::SandboxDownload(Request& req, const store::Session& s) {
  req.params["id"] = s.id;
  if (local_ != nullptr) co_return co_await OperatorDownload(req);
  // A remote store's file comes through the control plane: the sandbox reaches nothing but its
  // channel, so a redirect to the store would lead nowhere.
  AIRLOCK_CO_ASSIGN(auto name, FileNameParam(req));
  AIRLOCK_CO_ASSIGN(std::string dir, blobs_->SpoolDir(s.id));
  const std::string copy = dir + "/.download-" + HexEncode(RandomBytes(8));
  auto copied = co_await RunBlocking(
      pool_, [this, &s, &name, &copy] { return blobs_->CopyTo(s.id, name, copy); });
  Response r = copied ? ServeFile(req, copy, name) : Response::FromError(copied.error());
  ::unlink(copy.c_str());  // the answer holds the file open
  if (r.file && req.msg.method() != http::verb::head)
    bytes_.With({"out"}).Inc(static_cast<double>(r.file->length));
  co_return r;
}

Status FileService::PutBytes(const std::string& session, const std::string& name,
                             std::string_view bytes) {
  AIRLOCK_TRY(files::ValidateFileName(name));
  if (static_cast<int64_t>(bytes.size()) > (config_.files.max_file_mb << 20)) {
    return Errorf(ErrorCode::kPayloadTooLarge, "file {} exceeds files.max_file_mb ({} MiB)", name,
                  config_.files.max_file_mb);
  }
  Result<std::pair<int, std::string>> spool = OpenSpool(*blobs_, session);
  if (!spool) return Errorf(spool.error().code, "storing {}: {}", name, spool.error().message);
  Status stored = WriteUpload(spool->first, bytes);
  ::close(spool->first);
  if (stored) {
    stored = blobs_->Put(session, name, spool->second, static_cast<int64_t>(bytes.size()));
  } else {
    ::unlink(spool->second.c_str());
  }
  if (!stored) return Errorf(stored.error().code, "storing {}: {}", name, stored.error().message);
  bytes_.With({"in"}).Inc(static_cast<double>(bytes.size()));
  auto appended = store_.AppendEvent(
      session, "file.uploaded",
      Json{{"name", name}, {"size", static_cast<int64_t>(bytes.size())}, {"by", "operator"}});
  return appended ? Ok() : Status(std::unexpected(appended.error()));
}

awaitable<Result<Json>> FileService::ListOf(const std::string& id) {
  auto list = co_await RunBlocking(pool_, [this, &id] { return blobs_->List(id); });
  if (!list) co_return std::unexpected(list.error());
  Json arr = Json::array();
  for (const auto& f : *list) {
    arr.push_back(
        Json{{"name", f.name}, {"size", f.size}, {"created_at", FormatTimestamp(f.created_at)}});
  }
  co_return arr;
}

awaitable<Response> FileService::OperatorDownload(Request& req) {
  std::string id = req.params["id"];
  AIRLOCK_CO_ASSIGN(auto name, FileNameParam(req));
  AIRLOCK_CO_ASSIGN(auto s, co_await LoadSession(id));
  (void)s;
  AIRLOCK_CO_ASSIGN(auto dl, co_await RunBlocking(pool_, [this, &id, &name] {
                      return blobs_->Download(id, name,
                                              static_cast<int>(config_.files.default_expiry_s));
                    }));
  if (!dl.redirect_url.empty()) {
    Response r;
    r.status = 302;
    r.headers.emplace_back("Location", dl.redirect_url);
    co_return r;
  }
  Response r = ServeFile(req, dl.path, name);
  if (r.file && req.msg.method() != http::verb::head)
    bytes_.With({"out"}).Inc(static_cast<double>(r.file->length));
  co_return r;
}

}  // namespace airlock::controlplane
