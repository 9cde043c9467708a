#include "egress/client_hello.h"

#include <cstdint>

namespace airlock::egress {
namespace {

using Kind = ClientHelloScan::Kind;

constexpr uint8_t kHandshakeRecord = 22;
constexpr uint8_t kClientHello = 1;
constexpr uint16_t kServerNameExtension = 0;
constexpr uint8_t kHostName = 0;
constexpr size_t kRecordHeader = 5;
constexpr size_t kMaxRecordPayload = (1 << 14) + 256;  // TLSPlaintext (with slack for 1.2)

ClientHelloScan Malformed(std::string problem) {
  ClientHelloScan s;
  s.kind = Kind::kMalformed;
  s.problem = std::move(problem);
  return s;
}

// A cursor over a byte string that fails, never overreads.
class Reader {
 public:
  explicit Reader(std::string_view b) : b_(b) {}
  bool U8(uint8_t* v) {
    if (b_.size() < 1) return false;
    *v = static_cast<uint8_t>(b_[0]);
    b_.remove_prefix(1);
    return true;
  }
  bool U16(uint16_t* v) {
    if (b_.size() < 2) return false;
    *v = static_cast<uint16_t>(static_cast<uint8_t>(b_[0]) << 8 | static_cast<uint8_t>(b_[1]));
    b_.remove_prefix(2);
    return true;
  }
  bool U24(uint32_t* v) {
    if (b_.size() < 3) return false;
    *v = static_cast<uint32_t>(static_cast<uint8_t>(b_[0])) << 16 |
         static_cast<uint32_t>(static_cast<uint8_t>(b_[1])) << 8 | static_cast<uint8_t>(b_[2]);
    b_.remove_prefix(3);
    return true;
  }
  bool Skip(size_t n) {
    if (b_.size() < n) return false;
    b_.remove_prefix(n);
    return true;
  }
  bool Take(size_t n, std::string_view* out) {
    if (b_.size() < n) return false;
    *out = b_.substr(0, n);
    b_.remove_prefix(n);
    return true;
  }
  // A vector with a `width`-byte length prefix.
  bool Vector(int width, std::string_view* out) {
    uint32_t n = 0;
    if (width == 1) {
      uint8_t v;
      if (!U8(&v)) return false;
      n = v;
    } else {
      uint16_t v;
      if (!U16(&v)) return false;
      n = v;
    }
    return Take(n, out);
  }
  bool empty() const { return b_.empty(); }

 private:
  std::string_view b_;
};

// The server_name extension's host_name (RFC 6066 section 3), or a problem.
ClientHelloScan ReadServerName(std::string_view ext) {
  Reader r(ext);
  std::string_view list;
  if (!r.Vector(2, &list) || !r.empty()) return Malformed("bad server_name extension");
  Reader names(list);
  ClientHelloScan out;
  out.kind = Kind::kHello;
  while (!names.empty()) {
    uint8_t type;
    std::string_view name;
    if (!names.U8(&type) || !names.Vector(2, &name)) return Malformed("bad server_name list");
    if (type != kHostName) continue;
    // "The ServerNameList MUST NOT contain more than one name of the same name_type."
    if (out.server_name) return Malformed("more than one host_name in server_name");
    if (name.empty()) return Malformed("empty host_name in server_name");
    out.server_name = std::string(name);
  }
  return out;
}

ClientHelloScan ReadClientHello(std::string_view body) {
  Reader r(body);
  std::string_view ignored;
  // legacy_version, random, legacy_session_id, cipher_suites, legacy_compression_methods
  if (!r.Skip(2 + 32) || !r.Vector(1, &ignored) || !r.Vector(2, &ignored) ||
      !r.Vector(1, &ignored)) {
    return Malformed("truncated ClientHello");
  }
  ClientHelloScan out;
  out.kind = Kind::kHello;
  if (r.empty()) return out;  // no extensions at all (SSL 3.0 style): no server name
  std::string_view extensions;
  if (!r.Vector(2, &extensions) || !r.empty()) return Malformed("bad ClientHello extensions");
  Reader ex(extensions);
  bool seen = false;
  while (!ex.empty()) {
    uint16_t type;
    std::string_view data;
    if (!ex.U16(&type) || !ex.Vector(2, &data)) return Malformed("bad extension framing");
    if (type != kServerNameExtension) continue;
    // "There MUST NOT be more than one extension of the same type" (RFC 8446 section 4.2).
    if (seen) return Malformed("two server_name extensions");
    seen = true;
    ClientHelloScan sn = ReadServerName(data);
    if (sn.kind != Kind::kHello) return sn;
    out.server_name = std::move(sn.server_name);
  }
  return out;
}

}  // namespace

ClientHelloScan ScanClientHello(std::string_view bytes) {
  if (bytes.empty()) return {};
  if (static_cast<uint8_t>(bytes[0]) != kHandshakeRecord) {
    ClientHelloScan s;
    s.kind = Kind::kNotTls;
    return s;
  }
  // The handshake layer's bytes, gathered from consecutive handshake records.
  std::string handshake;
  size_t at = 0;
  for (;;) {
    if (bytes.size() - at < kRecordHeader) {
      if (at >= kMaxClientHelloBytes) return Malformed("ClientHello too large");
      return {};
    }
    Reader h(bytes.substr(at, kRecordHeader));
    uint8_t type;
    uint16_t version, length;
    h.U8(&type);
    h.U16(&version);
    h.U16(&length);
    if (type != kHandshakeRecord) return Malformed("a non-handshake record inside the ClientHello");
    if ((version >> 8) != 3) return Malformed("not a TLS record version");
    if (length == 0 || length > kMaxRecordPayload) return Malformed("bad record length");
    if (bytes.size() - at - kRecordHeader < length) {
      if (at + kRecordHeader + length > kMaxClientHelloBytes) {
        return Malformed("ClientHello too large");
      }
      return {};
    }
    handshake.append(bytes.substr(at + kRecordHeader, length));
    at += kRecordHeader + length;
    if (handshake.size() >= 4) {
      Reader m(handshake);
      uint8_t msg_type;
      uint32_t msg_length;
      m.U8(&msg_type);
      m.U24(&msg_length);
      if (msg_type != kClientHello)
        return Malformed("the first handshake message is not a ClientHello");
      if (msg_length + 4 > kMaxClientHelloBytes) return Malformed("ClientHello too large");
      if (handshake.size() >= msg_length + 4) {
        return ReadClientHello(std::string_view(handshake).substr(4, msg_length));
      }
    }
    if (at >= kMaxClientHelloBytes) return Malformed("ClientHello too large");
  }
}

}  // namespace airlock::egress
