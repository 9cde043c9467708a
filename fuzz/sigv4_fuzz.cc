// The S3 blob store's SigV4 code (files/sigv4.h): what it reads from outside is the S3
// endpoint's ListObjectsV2 XML (an upstream, or anything on the path to it) and names from
// the sandbox (file names become object keys, content types become signed headers). The
// first byte picks the entry point:
//   0  ParseListObjectsV2 on the rest
//   1  ParseS3Endpoint (path and virtual-hosted style) and HostForBucket
//   2  PresignUrl for key / bucket / one signed header taken from the parts ("\n--\n")
//   3  SignHeaders with "name: value" header lines and "k=v" query lines
// A signature computed twice must come out the same (a pure function of its inputs).
#include <cstdint>
#include <cstdlib>

#include "files/sigv4.h"
#include "fuzz/fuzz_util.h"

namespace {

using airlock::files::Params;

Params Lines(std::string_view text, char sep) {
  Params out;
  while (!text.empty() && out.size() < 32) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    size_t at = line.find(sep);
    out.emplace_back(std::string(line.substr(0, at)),
                     at == std::string_view::npos ? "" : std::string(line.substr(at + 1)));
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace airlock::files;
  if (size == 0) return 0;
  std::string_view in = airlock::fuzz::AsView(data + 1, size - 1);
  SigV4Credentials creds{"AKIDEXAMPLE", airlock::Secret("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
                         ""};
  auto endpoint = ParseS3Endpoint("https://s3.eu-west-1.amazonaws.com", "eu-west-1", true);
  if (!endpoint) std::abort();
  constexpr int64_t kNow = 1767225600;  // 2026-01-01
  switch (data[0] % 4) {
    case 0: {
      std::string next;
      (void)ParseListObjectsV2(in, &next);
      break;
    }
    case 1: {
      for (bool path_style : {true, false}) {
        auto ep = ParseS3Endpoint(in, "us-east-1", path_style);
        if (ep) (void)HostForBucket(*ep, "bucket");
      }
      break;
    }
    case 2: {
      auto parts = airlock::fuzz::SplitParts(in, 4);
      std::string_view key = parts[0];
      std::string_view bucket = parts.size() > 1 ? parts[1] : "bucket";
      Params headers;
      if (parts.size() > 2) headers.emplace_back("content-type", std::string(parts[2]));
      if (parts.size() > 3) headers.emplace_back(std::string(parts[3]), "1");
      for (bool path_style : {true, false}) {
        S3Endpoint ep = *endpoint;
        ep.path_style = path_style;
        auto a = PresignUrl(creds, ep, "PUT", bucket, key, kNow, 900, headers);
        auto b = PresignUrl(creds, ep, "PUT", bucket, key, kNow, 900, headers);
        if (a.has_value() != b.has_value() || (a && *a != *b)) std::abort();
      }
      break;
    }
    case 3: {
      auto parts = airlock::fuzz::SplitParts(in, 3);
      Params headers = Lines(parts[0], ':');
      Params query = parts.size() > 1 ? Lines(parts[1], '=') : Params{};
      std::string path = parts.size() > 2 ? UriEncode(parts[2], false) : "/bucket";
      (void)CanonicalQueryString(query);
      if (auto canon = CanonicalizeHeaders(headers)) {
        (void)CanonicalRequest("GET", path, CanonicalQueryString(query), *canon,
                               "UNSIGNED-PAYLOAD");
      }
      (void)SignHeaders(creds, *endpoint, "GET", path, query, headers, "UNSIGNED-PAYLOAD", kNow);
      break;
    }
  }
  return 0;
}
