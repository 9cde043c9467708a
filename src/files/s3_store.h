#pragma once

// The S3 blob store: sessions' files are objects in one bucket of S3 or an S3-compatible
// service, at <prefix><session_id>/<name>. The sandbox moves the bytes itself through SigV4
// presigned URLs; the control plane only signs URLs and, for listings and existence checks,
// sends its own header-signed requests through the network module's client (net/http_client.h),
// one blocking request at a time.
//
// Security: a presigned URL names one key, one method and an expiry; an upload URL also signs
// its Content-Length (and Content-Type when given), because S3 cannot cap a presigned PUT any
// other way — so an upload must declare its size. The credentials stay in this object: errors
// carry S3's error Code at most, never a header, a body or a signature.

#include <chrono>
#include <memory>
#include <string>

#include "common/result.h"
#include "files/blob_store.h"
#include "files/sigv4.h"

namespace airlock::files {

struct S3StoreOptions {
  // "https://s3.us-east-1.amazonaws.com" or "http://127.0.0.1:4568".
  std::string endpoint;
  std::string region = "us-east-1";
  std::string bucket;
  // https://host/bucket/key; false: https://bucket.host/key (needs a DNS name, and over https a
  // bucket name without '.', which a wildcard certificate would not cover).
  bool path_style = true;
  std::string prefix = "sessions/";
  SigV4Credentials creds;
  // An extra trust anchor (PEM) besides the system store, for self-hosted services.
  std::string ca_file;
  // The longest one request of the store's own (a listing page, a HEAD) may take, connect
  // included; connecting alone gives up after at most 10 s.
  std::chrono::milliseconds timeout{30000};
  // "HOST:PORT" to open the store's own connections to instead of resolving the endpoint's host
  // (like curl --connect-to): the Host header, SNI and certificate check keep the endpoint's
  // name. For private links and for tests of virtual-hosted style. Empty: resolve normally.
  std::string connect_to;
  // ListObjectsV2 max-keys, 1..1000.
  int list_page_size = 1000;
  // A local directory where files the control plane receives itself (an operator's upload,
  // "files" at create) wait, whole, before one PutObject sends them. Made at start, 0700, and
  // emptied of what a crash left. Empty: such uploads are refused (kUnimplemented).
  std::string spool_dir;
};

// Validates the options (endpoint, bucket, credentials, prefix, CA file) without contacting
// the service. Errors: kInvalidArgument naming what is wrong (never a secret).
Result<std::unique_ptr<BlobStore>> MakeS3BlobStore(S3StoreOptions o);

}  // namespace airlock::files
