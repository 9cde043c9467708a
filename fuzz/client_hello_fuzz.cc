// The TLS ClientHello scan of the egress gateway (egress/client_hello.h): the first bytes a
// sandbox sends through a CONNECT tunnel, read for the server name it asks for. The input is
// those bytes.
// Oracles: no read past the input (ASan); a complete hello's server name is non-empty; every
// strict prefix of a complete hello needs more; bytes after a complete hello change nothing.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "egress/client_hello.h"
#include "fuzz/fuzz_util.h"

using airlock::egress::ClientHelloScan;
using airlock::egress::ScanClientHello;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(airlock::fuzz::AsView(data, size));
  ClientHelloScan scan = ScanClientHello(input);
  if (scan.kind != ClientHelloScan::Kind::kHello) return 0;
  if (scan.server_name && scan.server_name->empty()) std::abort();
  // Where the hello ends: the shortest prefix that scans complete.
  size_t end = input.size();
  for (size_t n = 0; n < input.size(); ++n) {
    ClientHelloScan part = ScanClientHello(std::string_view(input).substr(0, n));
    if (part.kind == ClientHelloScan::Kind::kHello) {
      end = n;
      break;
    }
    if (part.kind != ClientHelloScan::Kind::kNeedMore) std::abort();
  }
  ClientHelloScan whole = ScanClientHello(input.substr(0, end));
  if (whole.kind != ClientHelloScan::Kind::kHello || whole.server_name != scan.server_name)
    std::abort();
  ClientHelloScan more = ScanClientHello(input.substr(0, end) + "\x17\x03\x03garbage");
  if (more.kind != ClientHelloScan::Kind::kHello || more.server_name != scan.server_name)
    std::abort();
  return 0;
}
