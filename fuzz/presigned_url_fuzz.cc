// Presigned URL verification of the local file store. The input is a request line's method
// and target ("GET /sandbox/v1/files/<session>/<name>?method=..&expires=..&max=..&kid=..&sig=..")
// then, in further parts ("\n--\n"), a Range header value and an upload body. It goes to the
// real FileService through the real HttpServer (fuzz/http_harness.h), whose signing key is
// fixed, so the seeds' signatures are valid and the fuzzer mutates URLs that pass.
//
// The oracle: when the server got past the signature check (any answer but 400, 403, 404,
// 405, 413 or 431), the URL's own terms must carry a valid signature under the key; a URL
// accepted with terms that were not signed aborts.
#include <charconv>
#include <cstdint>
#include <cstdlib>

#include "common/url.h"
#include "files/local_store.h"
#include "fuzz/http_harness.h"

namespace {

std::optional<int64_t> Int(const std::optional<std::string>& s) {
  int64_t v = 0;
  if (!s || s->empty()) return std::nullopt;
  auto [p, ec] = std::from_chars(s->data(), s->data() + s->size(), v);
  if (ec != std::errc() || p != s->data() + s->size()) return std::nullopt;
  return v;
}

// Whether the target's terms are signed by the harness key (what CheckUrl must ensure).
bool Signed(std::string_view target) {
  using namespace airlock;
  size_t q = target.find('?');
  controlplane::Request req;
  req.query = std::string(q == std::string_view::npos ? "" : target.substr(q + 1));
  std::string_view path = target.substr(0, q);
  std::vector<std::string_view> parts;  // as the Router splits: empty segments dropped
  while (!path.empty()) {
    size_t slash = path.find('/');
    if (slash != 0) parts.push_back(path.substr(0, slash));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  if (parts.size() != 5) return false;
  auto name = PercentDecode(parts[4], false);
  auto exp = Int(req.Query("expires"));
  auto max = Int(req.Query("max"));
  auto method = req.Query("method");
  auto kid = req.Query("kid");
  auto sig = req.Query("sig");
  if (!name || !exp || !max || !method || !kid || !sig) return false;
  static const auto signer = files::UrlSigner::ForTest(
      {{std::string(fuzz::kSigningKid), Secret(std::string(fuzz::kSigningKey))}});
  return signer.Verify(*kid, *sig, *method, parts[3], *name, *exp, *max);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static auto* harness = new airlock::fuzz::HttpHarness();
  auto parts = airlock::fuzz::SplitParts(airlock::fuzz::AsView(data, size), 3);
  std::string_view line = parts[0];
  std::string_view range = parts.size() > 1 ? parts[1] : "";
  std::string_view body = parts.size() > 2 ? parts[2] : "";
  // The request line stays one line with one space (the HTTP parser is http_request_fuzz's
  // business); Range stays one header.
  size_t space = line.find(' ');
  if (line.find_first_of("\r\n\t") != std::string_view::npos || space == std::string_view::npos ||
      space != line.rfind(' ') || range.find_first_of("\r\n") != std::string_view::npos) {
    return 0;
  }
  std::string req = std::string(line) + " HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n";
  if (!range.empty()) req += "Range: " + std::string(range) + "\r\n";
  req += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n";
  req += body;
  std::string answer = harness->Exchange(req);
  if (answer.size() < 12 || !answer.starts_with("HTTP/1.1 ")) return 0;
  int status = std::atoi(answer.substr(9, 3).c_str());
  bool refused = status == 400 || status == 403 || status == 404 || status == 405 ||
                 status == 413 || status == 431;
  if (!refused && !Signed(line.substr(space + 1))) {
    std::fprintf(stderr, "a file URL without a valid signature was answered %d\n", status);
    std::abort();
  }
  return 0;
}
