#pragma once

// The server name a TLS client asks for, read from the first bytes it sends through a CONNECT
// tunnel, so that the gateway can hold it to the host the tunnel was opened for.

#include <optional>
#include <string>
#include <string_view>

namespace airlock::egress {

struct ClientHelloScan {
  enum class Kind {
    kNeedMore,   // a TLS handshake record has begun; its ClientHello is not complete yet
    kNotTls,     // the first byte is not a TLS handshake record: another protocol
    kMalformed,  // starts as TLS, breaks its framing (or is longer than kMaxClientHelloBytes)
    kHello,      // a complete ClientHello
  };
  Kind kind = Kind::kNeedMore;
  // kHello: the host_name of its server_name extension, as sent; none without the extension.
  std::optional<std::string> server_name;
  std::string problem;  // kMalformed: what was wrong, for the log (no bytes of the input)
};

// The most the gateway reads while waiting for a whole ClientHello (one that spans records
// included): larger than any real one, post-quantum key shares included.
inline constexpr size_t kMaxClientHelloBytes = 64 * 1024;

// Reads the TLS records at the start of `bytes` (RFC 8446 section 5.1, 4.1.2; RFC 6066
// section 3). Handshake messages may be split over several records; the ClientHello is
// reassembled from them. Never reads past `bytes`; hostile input gives kMalformed.
ClientHelloScan ScanClientHello(std::string_view bytes);

}  // namespace airlock::egress
