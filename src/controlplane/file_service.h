#pragma once

// Session files: POST /sandbox/v1/files/presign, the local store's signed URLs
// (PUT/GET/HEAD /sandbox/v1/files/{session}/{name}) and the operator's
// GET /v1/sessions/{id}/files[/{name}].

#include <map>
#include <memory>
#include <string>

#include "common/asio.h"
#include "common/metrics.h"
#include "controlplane/config.h"
#include "controlplane/http.h"
#include "controlplane/notifier.h"
#include "files/blob_store.h"
#include "files/local_store.h"
#include "store/store.h"

namespace airlock::controlplane {

// A single byte range of a Range header against a file of `size` bytes.
struct ByteRange {
  uint64_t first = 0;
  uint64_t length = 0;
};
// nullopt: no usable Range (serve the whole file); an error: unsatisfiable (416).
Result<std::optional<ByteRange>> ParseRange(std::string_view header, uint64_t size);

// The Content-Disposition of a download of `name` (RFC 6266): an ASCII `filename` fallback
// (`"` and `\` escaped, anything else outside printable ASCII and `%` as '_') and the exact
// name as `filename*=UTF-8''<percent-encoded>`. The name is the sandbox's to choose: nothing in
// it can end the quoted string or add a parameter or a header.
std::string ContentDisposition(std::string_view name);

class FileService {
 public:
  FileService(const Config& config, store::Store& store, asio::thread_pool& pool, Notifier& events,
              metrics::Registry& registry);
  ~FileService();

  // Opens the configured blob store (creating the local signing keys on first use).
  Status Start();
  // The blob store Start() opened (retention deletes ended sessions' files through it).
  files::BlobStore* blob_store() { return blobs_.get(); }

  awaitable<Response> Presign(Request& req, const store::Session& s);
  // Signed-URL routes of the local store; no bearer token, the signature is the credential.
  awaitable<Response> Upload(Request& req);
  awaitable<Response> Fetch(Request& req);
  // Operator routes (the caller has checked the operator key).
  awaitable<Response> List(Request& req);
  awaitable<Response> OperatorDownload(Request& req);
  // PUT /v1/sessions/{id}/files/{name}: the operator puts a file into a live session (the
  // body streamed; the local store only).
  awaitable<Response> OperatorUpload(Request& req);
  // "files" at create: stores `bytes` as the session's file `name` (blocking; local store).
  Status PutBytes(const std::string& session, const std::string& name, std::string_view bytes);
  // GET /sandbox/v1/work and /sandbox/v1/work/files/{name}: the session's variables and
  // files, for its sandbox (airlock-init copies the files into the working directory and
  // hands the variables to the agent when it starts it).
  // `egress` is EgressService::SandboxWork's part: the proxy flag, the secrets' placeholders
  // (merged into the variables) and the CA.
  awaitable<Response> SandboxWork(const store::Session& s, Json egress);
  // What SandboxWork answers, for the identity's answer (IdentityService), which carries it;
  // with `files`, the session's list as ListOf would answer it, the store is not asked.
  awaitable<Result<Json>> Work(const store::Session& s, Json egress,
                               std::optional<Json> files = std::nullopt);
  awaitable<Response> SandboxDownload(Request& req, const store::Session& s);

 private:
  struct Terms;
  Result<Terms> CheckUrl(const Request& req, std::string_view method) const;
  awaitable<Result<store::Session>> LoadSession(const std::string& id);
  awaitable<Result<Json>> ListOf(const std::string& id);
  // Streams the request's body into the session's file `name` (local store).
  awaitable<Response> Receive(Request& req, std::string session, std::string name,
                              int64_t max_bytes, std::string_view by);

  const Config& config_;
  store::Store& store_;
  asio::thread_pool& pool_;
  Notifier& events_;
  std::unique_ptr<files::BlobStore> blobs_;
  files::LocalBlobStore* local_ = nullptr;  // when the store is local
  // Bytes promised to uploads in progress, per session: counted against the quota.
  std::map<std::string, int64_t> reserved_;
  metrics::Family<metrics::Counter>& bytes_;
  metrics::Family<metrics::Counter>& refusals_;
};

}  // namespace airlock::controlplane
