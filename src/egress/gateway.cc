#include "egress/gateway.h"

#include <ifaddrs.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>

#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include <boost/asio/ssl.hpp>

#include "common/blocking.h"
#include "common/json_util.h"
#include "common/log.h"
#include "egress/authority.h"
#include "egress/client_hello.h"
#include "net/tls.h"

namespace airlock::egress {

namespace {

using Clock = std::chrono::steady_clock;
using net::RawStream;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch())
      .count();
}

// A token bucket of `per_minute` that starts full.
class Bucket {
 public:
  explicit Bucket(double per_minute)
      : capacity_(per_minute), tokens_(per_minute), per_ms_(per_minute / 60'000.0) {}
  // Takes one if there is one.
  bool TakeOne(int64_t now) {
    Refill(now);
    if (tokens_ < 1) return false;
    tokens_ -= 1;
    return true;
  }
  // Takes `n`, into debt if need be: how long to wait before the debt is paid.
  std::chrono::milliseconds TakeDebt(double n, int64_t now) {
    Refill(now);
    tokens_ -= n;
    if (tokens_ >= 0) return std::chrono::milliseconds(0);
    return std::chrono::milliseconds(static_cast<int64_t>(-tokens_ / per_ms_) + 1);
  }
  // Milliseconds until one token is there.
  int64_t MsUntilOne(int64_t now) {
    Refill(now);
    return tokens_ >= 1 ? 0 : static_cast<int64_t>((1 - tokens_) / per_ms_) + 1;
  }
  bool Full(int64_t now) {
    Refill(now);
    return tokens_ >= capacity_;
  }

 private:
  void Refill(int64_t now) {
    if (now > last_)
      tokens_ = std::min(capacity_, tokens_ + static_cast<double>(now - last_) * per_ms_);
    last_ = std::max(last_, now);
  }
  double capacity_;
  double tokens_;
  double per_ms_;
  int64_t last_ = NowMs();
};

struct Relay;

struct Share {
  Share(double requests_per_minute, double bytes_per_minute)
      : requests(requests_per_minute), bytes(bytes_per_minute) {}
  size_t open = 0;
  size_t resolving = 0;                      // name lookups in flight
  std::vector<std::weak_ptr<Relay>> relays;  // the open ones, for CloseSession
  Bucket requests;
  Bucket bytes;
};

// Text from the client, as printable ASCII, at most 256 bytes: for events and messages.
std::string Printable(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, 256)) {
    out += (c >= 0x20 && c < 0x7f) ? c : '?';
  }
  return out;
}

// The host and port of a CONNECT target ("host:port", "[v6]:port").
Status SplitAuthority(std::string_view authority, std::string* host, uint16_t* port,
                      std::optional<uint16_t> default_port) {
  size_t colon = authority.rfind(':');
  if (!authority.empty() && authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos)
      return MakeError(ErrorCode::kInvalidArgument, "bad [address]");
    colon = close + 1 < authority.size() && authority[close + 1] == ':' ? close + 1
                                                                        : std::string_view::npos;
    if (colon == std::string_view::npos && close + 1 != authority.size())
      return MakeError(ErrorCode::kInvalidArgument, "bad [address]:port");
  }
  std::string_view h = colon == std::string_view::npos ? authority : authority.substr(0, colon);
  if (colon == std::string_view::npos) {
    if (!default_port) return MakeError(ErrorCode::kInvalidArgument, "a port is required");
    *port = *default_port;
  } else {
    std::string_view p = authority.substr(colon + 1);
    uint32_t v = 0;
    if (p.empty() || p.size() > 5 ||
        !std::all_of(p.begin(), p.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return MakeError(ErrorCode::kInvalidArgument, "bad port");
    for (char c : p) v = v * 10 + static_cast<uint32_t>(c - '0');
    if (v == 0 || v > 65535) return MakeError(ErrorCode::kInvalidArgument, "bad port");
    *port = static_cast<uint16_t>(v);
  }
  if (h.empty()) return MakeError(ErrorCode::kInvalidArgument, "no host");
  *host = std::string(h);
  return Ok();
}

// The addresses /etc/hosts gives `name` (compared ignoring case), in the file's order.
std::vector<asio::ip::address> FromHostsFile(const std::string& name, const char* path) {
  std::vector<asio::ip::address> out;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    if (size_t hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream words(line);
    std::string address, alias;
    if (!(words >> address)) continue;
    auto a = ParseIpLiteral(address);
    if (!a) continue;
    while (words >> alias) {
      if (beast::iequals(alias, name) || beast::iequals(alias, name + ".")) {
        if (std::find(out.begin(), out.end(), *a) == out.end()) out.push_back(*a);
        break;
      }
    }
  }
  return out;
}

// The IP address of a socket address; none for another family (or none at all).
std::optional<asio::ip::address> AddressOf(const sockaddr* sa) {
  if (sa == nullptr) return std::nullopt;
  if (sa->sa_family == AF_INET) {
    asio::ip::address_v4::bytes_type b;
    std::memcpy(b.data(), &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, 4);
    return asio::ip::address_v4(b);
  }
  if (sa->sa_family == AF_INET6) {
    asio::ip::address_v6::bytes_type b;
    std::memcpy(b.data(), &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, 16);
    return asio::ip::address_v6(b);
  }
  return std::nullopt;
}

// The addresses `name` (normalized, without a trailing dot) resolves to, in the resolver's
// order: the host's own names (/etc/hosts) as they are, any other name asked of DNS with a
// trailing dot, so that search domains never apply (glibc does not match /etc/hosts entries
// against a name with the dot, hence the file first).
Result<std::vector<asio::ip::address>> Resolve(const std::string& name, const char* hosts_file) {
  if (auto pinned = FromHostsFile(name, hosts_file); !pinned.empty()) return pinned;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string fqdn = name + ".";
  int rc = ::getaddrinfo(fqdn.c_str(), nullptr, &hints, &res);
  if (rc != 0) {
    return Errorf(ErrorCode::kNotFound, "cannot resolve {}: {}", name, ::gai_strerror(rc));
  }
  std::vector<asio::ip::address> out;
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    auto a = AddressOf(ai->ai_addr);
    if (a && std::find(out.begin(), out.end(), *a) == out.end()) out.push_back(*a);
  }
  ::freeaddrinfo(res);
  if (out.empty()) return Errorf(ErrorCode::kNotFound, "cannot resolve {}: no address", name);
  return out;
}

// The header fields a proxy does not pass on (RFC 9110 section 7.6.1), besides those the
// Connection field names.
bool HopByHop(std::string_view name) {
  static constexpr std::string_view kNames[] = {
      "connection", "proxy-connection", "keep-alive", "proxy-authorization", "proxy-authenticate",
      "te",         "upgrade",          "host"};
  for (auto n : kNames) {
    if (beast::iequals(name, n)) return true;
  }
  return false;
}

// What a field's value becomes upstream, given its name and value as the client sent them.
using FieldRewrite = std::function<std::string(std::string_view name, std::string_view value)>;

// A request's head as it goes upstream: origin-form target, `authority` as Host, the
// hop-by-hop fields dropped, each other field's value through `rewrite` when there is one, and
// Connection: close (one request per connection).
std::string UpstreamHead(const http::request_header<>& msg, std::string_view origin_target,
                         std::string_view authority, const FieldRewrite& rewrite = nullptr) {
  std::string head;
  head.reserve(1024);
  head += msg.method_string();
  head += ' ';
  head += origin_target;
  head += " HTTP/1.1\r\nHost: ";
  head += authority;
  head += "\r\n";
  std::vector<std::string> named;  // the fields the client's Connection field names
  for (const auto& f : msg) {
    if (!beast::iequals(f.name_string(), "connection")) continue;
    net::ForEachListItem(f.value(), [&](std::string_view t) { named.emplace_back(t); });
  }
  for (const auto& f : msg) {
    std::string_view name = f.name_string();
    if (HopByHop(name)) continue;
    if (std::any_of(named.begin(), named.end(),
                    [&](const std::string& n) { return beast::iequals(n, name); }))
      continue;
    head += name;
    head += ": ";
    if (rewrite) {
      head += rewrite(name, f.value());
    } else {
      head += f.value();
    }
    head += "\r\n";
  }
  head += "Connection: close\r\n\r\n";
  return head;
}

// The names of the secrets whose placeholder `text` holds.
std::vector<std::string> PlaceholdersIn(std::string_view text, const std::vector<Secret>* secrets) {
  std::vector<std::string> names;
  if (secrets == nullptr) return names;
  for (const auto& s : *secrets) {
    if (text.find(s.placeholder) != std::string_view::npos) names.push_back(s.name);
  }
  return names;
}

void AddName(std::vector<std::string>& names, const std::string& name) {
  if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
}

// A whole HTTP/1.1 answer written to a client before its connection closes.
std::string ErrorAnswer(unsigned status, std::string_view code, std::string_view message) {
  std::string body = DumpJson(Json{{"error", {{"code", code}, {"message", message}}}});
  return fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: "
      "close\r\n\r\n{}",
      status, http::obsolete_reason(static_cast<http::status>(status)), body.size(), body);
}

}  // namespace

struct Gateway::State {
  State(Deps deps, GatewayOptions o, OwnAddresses own_addresses)
      : d(std::move(deps)),
        options(o),
        own(std::move(own_addresses)),
        connections(d.registry.AddCounter(
            "airlock_egress_connections_total",
            "Egress proxy requests (CONNECT tunnels and plain-HTTP requests) by decision.",
            {"kind", "decision"})),
        bytes(d.registry.AddCounter("airlock_egress_bytes_total",
                                    "Bytes relayed by the egress gateway.", {"direction"})),
        open_gauge(
            d.registry.AddGauge("airlock_egress_open_connections", "Egress connections open now.")
                .With({})),
        duration(d.registry.AddHistogram(
            "airlock_egress_connection_duration_seconds",
            "How long egress connections lasted, from the request to the close.", {"kind"},
            {0.01, 0.1, 1, 10, 60, 600, 3600})) {}

  Share& ShareOf(const std::string& session) {
    auto it = shares.find(session);
    if (it == shares.end()) {
      it = shares.try_emplace(session, options.requests_per_minute, options.bytes_per_minute).first;
    }
    return it->second;
  }
  void Release(const std::string& session) {
    auto it = shares.find(session);
    if (it == shares.end()) return;
    --it->second.open;
    --open_total;
    open_gauge.Add(-1);
    int64_t now = NowMs();
    // A session with nothing open and full buckets is where a new one would start: forget it.
    auto idle = [now](Share& s) {
      return s.open == 0 && s.requests.Full(now) && s.bytes.Full(now);
    };
    if (idle(it->second)) shares.erase(it);
    // The others (their buckets were not full yet at their last close) now and then, so that
    // sessions long gone do not pile up.
    if (++releases % 256 == 0) {
      for (auto s = shares.begin(); s != shares.end();) {
        s = idle(s->second) ? shares.erase(s) : std::next(s);
      }
    }
  }

  Deps d;
  GatewayOptions options;
  OwnAddresses own;
  metrics::Family<metrics::Counter>& connections;
  metrics::Family<metrics::Counter>& bytes;
  metrics::Gauge& open_gauge;
  metrics::Family<metrics::Histogram>& duration;
  std::map<std::string, Share, std::less<>> shares;
  size_t open_total = 0;
  uint64_t releases = 0;
};

namespace {

// One admitted request, from its takeover to its close.
struct Job {
  std::shared_ptr<Gateway::State> st;
  ConnectionReport report;
  Policy policy;
  Secrets secrets;
  bool tunnel = true;
  bool intercept = false;     // a tunnel to a secret's host: the gateway speaks TLS both ways
  std::string upstream_head;  // plain HTTP: the request head as it goes upstream
  Clock::time_point started = Clock::now();
};

// The relay of one open connection: both directions, the idle watchdog, and the session's
// byte rate.
struct Relay {
  Relay(asio::io_context& io, RawStream& c, beast::tcp_stream u, bool plain)
      : client(c), upstream(std::move(u)), timer(io), done_signal(io), plain_http(plain) {
    done_signal.expires_at(Clock::time_point::max());
  }
  void CloseBoth() {
    client.Close();
    beast::error_code ignored;
    upstream.socket().close(ignored);
  }
  void Touch(std::chrono::milliseconds idle) { deadline = Clock::now() + idle; }

  RawStream& client;
  beast::tcp_stream upstream;
  asio::steady_timer timer;        // the watchdog's
  asio::steady_timer done_signal;  // cancelled when the client-to-upstream direction ends
  Clock::time_point deadline = Clock::time_point::max();
  bool up_done = false;
  bool finished = false;
  bool timed_out = false;
  bool cut = false;  // Gateway::CloseSession closed it
  bool plain_http;
  std::string refusal;      // why the tunnel's first bytes were refused
  std::string status_line;  // plain HTTP: the first bytes of the answer, until its status
  uint64_t up = 0, down = 0;
  unsigned upstream_status = 0;
};

// Closes both sides once nothing has moved for the idle timeout (the pumps push the deadline
// on with every byte).
awaitable<void> Watchdog(std::shared_ptr<Relay> r) {
  while (!r->finished) {
    r->timer.expires_at(r->deadline);
    beast::error_code ec;
    co_await r->timer.async_wait(asio::redirect_error(use_awaitable, ec));
    if (r->finished) co_return;
    if (Clock::now() >= r->deadline) {
      r->timed_out = true;
      r->CloseBoth();
      co_return;
    }
  }
}

// Waits out the session's byte rate for `n` bytes just read.
awaitable<void> Throttle(Job& job, Relay& r, size_t n) {
  auto it = job.st->shares.find(job.report.session);
  if (it == job.st->shares.end()) co_return;
  auto wait = it->second.bytes.TakeDebt(static_cast<double>(n), NowMs());
  if (wait.count() == 0) co_return;
  asio::steady_timer t(r.timer.get_executor());
  t.expires_after(wait);
  // The watchdog must not take the wait for idleness.
  r.deadline = std::max(r.deadline, Clock::now() + wait + job.st->options.idle_timeout);
  beast::error_code ec;
  co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
}

// A tunnel's first bytes: when they begin a TLS ClientHello, read until it is whole and hold
// its server name to the CONNECT host. "" when they pass; why not, otherwise.
awaitable<std::string> CheckFirstBytes(Job& job, Relay& r, std::string& first,
                                       std::vector<char>& buf, bool& client_done) {
  const std::string& host = job.report.host;
  for (;;) {
    ClientHelloScan scan = ScanClientHello(first);
    switch (scan.kind) {
      case ClientHelloScan::Kind::kNotTls:
        co_return "";
      case ClientHelloScan::Kind::kMalformed:
        co_return "the tunnel's first bytes are a broken TLS ClientHello: " + scan.problem;
      case ClientHelloScan::Kind::kHello: {
        if (!scan.server_name) co_return "";
        auto sni = NormalizeHostName(*scan.server_name);
        auto want = NormalizeHostName(host);
        if (ParseIpLiteral(host) || !sni || !want || *sni != *want) {
          co_return fmt::format("the TLS server name \"{}\" is not the CONNECT host {}",
                                Printable(*scan.server_name), host);
        }
        co_return "";
      }
      case ClientHelloScan::Kind::kNeedMore:
        break;
    }
    beast::error_code ec;
    size_t n = co_await r.client.ReadSome(asio::buffer(buf), ec);
    if (ec) {
      client_done = true;  // gone before a whole hello: nothing of it goes upstream
      co_return "";
    }
    first.append(buf.data(), n);
    r.Touch(job.st->options.idle_timeout);
  }
}

awaitable<void> PumpUp(std::shared_ptr<Job> job, std::shared_ptr<Relay> r) {
  std::vector<char> buf(16 * 1024);
  // What the client sent with its request head goes first; a plain-HTTP request's rewritten
  // head before it.
  std::string first = r->client.TakePending();
  bool client_done = false;  // it closed (or failed) before its first bytes were whole
  if (job->tunnel && !first.empty()) {
    r->refusal = co_await CheckFirstBytes(*job, *r, first, buf, client_done);
  } else if (job->tunnel) {
    beast::error_code ec;
    size_t n = co_await r->client.ReadSome(asio::buffer(buf), ec);
    if (ec) {
      client_done = true;
    } else {
      first.assign(buf.data(), n);
      r->refusal = co_await CheckFirstBytes(*job, *r, first, buf, client_done);
    }
  }
  if (!r->refusal.empty() || client_done) {
    r->CloseBoth();
    r->up_done = true;
    r->done_signal.cancel();
    co_return;
  }
  if (!job->tunnel) first.insert(0, job->upstream_head);
  if (!first.empty()) {
    co_await Throttle(*job, *r, first.size());
    beast::error_code ec;
    co_await asio::async_write(r->upstream.socket(), asio::buffer(first),
                               asio::redirect_error(use_awaitable, ec));
    if (ec) {
      r->CloseBoth();
      r->up_done = true;
      r->done_signal.cancel();
      co_return;
    }
    r->up += first.size() - (job->tunnel ? 0 : job->upstream_head.size());
  }
  for (;;) {
    beast::error_code ec;
    size_t n = co_await r->client.ReadSome(asio::buffer(buf), ec);
    if (ec) {
      if (ec == asio::error::eof) {
        beast::error_code ignored;
        r->upstream.socket().shutdown(asio::socket_base::shutdown_send, ignored);
      } else {
        r->CloseBoth();
      }
      break;
    }
    r->Touch(job->st->options.idle_timeout);
    co_await Throttle(*job, *r, n);
    co_await asio::async_write(r->upstream.socket(), asio::buffer(buf.data(), n),
                               asio::redirect_error(use_awaitable, ec));
    if (ec) {
      r->CloseBoth();
      break;
    }
    r->up += n;
    r->Touch(job->st->options.idle_timeout);
  }
  r->up_done = true;
  r->done_signal.cancel();
}

// Reads the status code from the start of a plain-HTTP answer ("HTTP/1.1 200 ...").
void NoteStatus(Relay& r, std::string_view data) {
  if (!r.plain_http || r.upstream_status != 0 || r.status_line.size() >= 16) return;
  r.status_line.append(data.substr(0, 16 - r.status_line.size()));
  if (r.status_line.size() >= 12 && r.status_line.starts_with("HTTP/1.") &&
      r.status_line[8] == ' ') {
    unsigned v = 0;
    for (size_t i = 9; i < 12; ++i) {
      char c = r.status_line[i];
      if (c < '0' || c > '9') return;
      v = v * 10 + static_cast<unsigned>(c - '0');
    }
    r.upstream_status = v;
  }
}

awaitable<void> PumpDown(std::shared_ptr<Job> job, std::shared_ptr<Relay> r) {
  std::vector<char> buf(16 * 1024);
  for (;;) {
    beast::error_code ec;
    size_t n = co_await r->upstream.socket().async_read_some(
        asio::buffer(buf), asio::redirect_error(use_awaitable, ec));
    if (ec) {
      if (ec == asio::error::eof) {
        r->client.ShutdownSend();
      } else {
        r->CloseBoth();
      }
      break;
    }
    r->Touch(job->st->options.idle_timeout);
    NoteStatus(*r, std::string_view(buf.data(), n));
    co_await Throttle(*job, *r, n);
    co_await r->client.Write(asio::buffer(buf.data(), n), ec);
    if (ec) {
      r->CloseBoth();
      break;
    }
    r->down += n;
    r->Touch(job->st->options.idle_timeout);
  }
}

// Ends a job: the session's share back, the metrics, the report. Not a destructor on purpose:
// a frame destroyed at shutdown (the io_context stopped) must not touch the gateway.
unsigned Finish(Job& job, std::string decision, std::string reason, unsigned status) {
  auto& st = *job.st;
  ConnectionReport& r = job.report;
  r.decision = std::move(decision);
  r.reason = std::move(reason);
  if (r.status == 0) r.status = status;
  r.duration_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - job.started).count();
  const std::string kind = job.tunnel ? "connect" : "http";
  st.connections.With({kind, r.decision}).Inc();
  st.bytes.With({"up"}).Inc(static_cast<double>(r.bytes_up));
  st.bytes.With({"down"}).Inc(static_cast<double>(r.bytes_down));
  st.duration.With({kind}).Observe(static_cast<double>(r.duration_ms) / 1000.0);
  st.Release(r.session);
  // A request refused by a cap is counted, not reported: the cap is what bounds the reports.
  if (st.d.report && r.decision != "limited") st.d.report(r);
  return status;
}

awaitable<unsigned> Answer(Job& job, RawStream& client, unsigned status, std::string_view code,
                           std::string decision, std::string message) {
  std::string answer = ErrorAnswer(status, code, message);
  beast::error_code ec;
  co_await client.Write(asio::buffer(answer), ec);
  co_return Finish(job, std::move(decision), std::move(message), status);
}

// A taken-over connection as the next layer of asio's TLS stream: the bytes already read (the
// ClientHello the gateway checked) first, then the connection's.
class ClientTransport {
 public:
  using executor_type = asio::any_io_executor;
  using lowest_layer_type = ClientTransport;

  ClientTransport(RawStream& stream, executor_type ex, std::string first)
      : stream_(&stream), ex_(std::move(ex)), first_(std::move(first)) {}
  executor_type get_executor() { return ex_; }
  lowest_layer_type& lowest_layer() { return *this; }
  const lowest_layer_type& lowest_layer() const { return *this; }

  template <class MutableBuffers, class Token>
  auto async_read_some(const MutableBuffers& buffers, Token&& token) {
    return asio::async_initiate<Token, void(beast::error_code, size_t)>(
        [this](auto handler, asio::mutable_buffer into) {
          if (!first_.empty()) {
            size_t n = asio::buffer_copy(into, asio::buffer(first_));
            first_.erase(0, n);
            asio::post(ex_, [h = std::move(handler), n]() mutable { h(beast::error_code{}, n); });
            return;
          }
          asio::co_spawn(
              ex_,
              [s = stream_, into]() -> awaitable<std::pair<beast::error_code, size_t>> {
                beast::error_code ec;
                size_t n = co_await s->ReadSome(into, ec);
                co_return std::pair{ec, n};
              },
              [h = std::move(handler)](std::exception_ptr,
                                       std::pair<beast::error_code, size_t> r) mutable {
                h(r.first, r.second);
              });
        },
        token, First<asio::mutable_buffer>(buffers));
  }

  template <class ConstBuffers, class Token>
  auto async_write_some(const ConstBuffers& buffers, Token&& token) {
    return asio::async_initiate<Token, void(beast::error_code, size_t)>(
        [this](auto handler, asio::const_buffer data) {
          asio::co_spawn(
              ex_,
              [s = stream_, data]() -> awaitable<std::pair<beast::error_code, size_t>> {
                beast::error_code ec;
                co_await s->Write(data, ec);
                co_return std::pair{ec, ec ? size_t{0} : data.size()};
              },
              [h = std::move(handler)](std::exception_ptr,
                                       std::pair<beast::error_code, size_t> r) mutable {
                h(r.first, r.second);
              });
        },
        token, First<asio::const_buffer>(buffers));
  }

 private:
  // The first non-empty buffer of a sequence (asio's TLS stream passes one at a time).
  template <class Buffer, class Buffers>
  static Buffer First(const Buffers& buffers) {
    for (auto it = asio::buffer_sequence_begin(buffers); it != asio::buffer_sequence_end(buffers);
         ++it) {
      Buffer b(*it);
      if (b.size() > 0) return b;
    }
    return Buffer();
  }

  RawStream* stream_;
  executor_type ex_;
  std::string first_;
};

// Relays one direction of an opened tunnel, as plain text between two TLS streams.
template <class From, class To>
awaitable<void> PumpOpened(Job& job, Relay& r, From& from, To& to, bool upward) {
  std::vector<char> buf(16 * 1024);
  for (;;) {
    beast::error_code ec;
    size_t n =
        co_await from.async_read_some(asio::buffer(buf), asio::redirect_error(use_awaitable, ec));
    if (ec) co_return;
    r.Touch(job.st->options.idle_timeout);
    if (!upward) NoteStatus(r, std::string_view(buf.data(), n));
    co_await Throttle(job, r, n);
    co_await asio::async_write(to, asio::buffer(buf.data(), n),
                               asio::redirect_error(use_awaitable, ec));
    if (ec) co_return;
    (upward ? r.up : r.down) += n;
    r.Touch(job.st->options.idle_timeout);
  }
}

// A tunnel to a secret's host (docs/operators.md, "Credentials at the boundary"): the gateway
// answers the sandbox's TLS with a leaf of the deployment's CA, opens verified TLS to the real
// host, and sends the first request on with the session's secrets in their headers (each only
// where its host and header match; a placeholder anywhere else goes on as it is, and is
// reported). The request goes with Connection: close; the rest of both streams is relayed.
awaitable<unsigned> Intercept(std::shared_ptr<Job> job, std::shared_ptr<Relay> r) {
  auto& st = *job->st;
  ConnectionReport& rep = job->report;
  rep.intercepted = true;
  r->plain_http = true;  // the answer's status is visible: note it
  const std::string host = NormalizeHostName(rep.host).value_or(rep.host);  // checked at Admit
  auto end = [&](std::string decision, std::string reason) {
    r->finished = true;
    r->timer.cancel();
    r->CloseBoth();
    rep.bytes_up = r->up;
    rep.bytes_down = r->down;
    if (r->upstream_status != 0) rep.status = r->upstream_status;
    return Finish(*job, std::move(decision), std::move(reason), rep.status);
  };

  // The ClientHello, its server name held to the CONNECT host as in any tunnel; and it must be
  // one: a secret's host is spoken to over TLS only.
  std::vector<char> buf(16 * 1024);
  std::string first = r->client.TakePending();
  bool client_done = false;
  if (first.empty()) {
    beast::error_code ec;
    size_t n = co_await r->client.ReadSome(asio::buffer(buf), ec);
    if (ec) client_done = true;
    first.assign(buf.data(), n);
  }
  if (!client_done) r->refusal = co_await CheckFirstBytes(*job, *r, first, buf, client_done);
  if (client_done) co_return end("allowed", "the client went away before its TLS hello");
  if (r->refusal.empty() && ScanClientHello(first).kind != ClientHelloScan::Kind::kHello) {
    r->refusal = fmt::format("the tunnel to {} carries a secret and must begin with TLS", host);
  }
  if (!r->refusal.empty()) co_return end("refused", r->refusal);

  auto leaf = st.options.authority->ServerContext(host);
  if (!leaf) co_return end("failed", leaf.error().message);
  asio::ssl::stream<ClientTransport> down(
      ClientTransport(r->client, st.d.io.get_executor(), std::move(first)), **leaf);
  beast::error_code ec;
  co_await down.async_handshake(asio::ssl::stream_base::server,
                                asio::redirect_error(use_awaitable, ec));
  if (ec) {
    co_return end("failed", fmt::format("the sandbox's TLS handshake failed (does it trust the "
                                        "deployment's CA?): {}",
                                        ec.message()));
  }
  r->Touch(st.options.idle_timeout);

  asio::ssl::stream<beast::tcp_stream&> up(r->upstream, *st.options.upstream_tls);
  static constexpr unsigned char kHttp11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  if (auto ok = net::PrepareTlsClient(up.native_handle(), host); !ok) {
    co_return end("failed", ok.error().message);
  }
  SSL_set_alpn_protos(up.native_handle(), kHttp11, sizeof(kHttp11));
  co_await up.async_handshake(asio::ssl::stream_base::client,
                              asio::redirect_error(use_awaitable, ec));
  if (ec) {
    std::string why = fmt::format(
        "TLS to {} failed: {}", host,
        net::DescribeHandshakeError(up.native_handle(), "the handshake failed: " + ec.message()));
    std::string answer = ErrorAnswer(502, "egress_unreachable", why);
    co_await asio::async_write(down, asio::buffer(answer), asio::redirect_error(use_awaitable, ec));
    rep.status = 502;
    co_return end("failed", why);
  }
  r->Touch(st.options.idle_timeout);

  // The request's head, then its secrets put in.
  beast::flat_buffer in;
  http::request_parser<http::empty_body> parser;
  parser.header_limit(64 * 1024);
  co_await http::async_read_header(down, in, parser, asio::redirect_error(use_awaitable, ec));
  if (ec) co_return end("allowed", "no request in the tunnel: " + ec.message());
  const auto& msg = parser.get();
  std::string_view target = msg.target();
  rep.path = Printable(target.substr(0, target.find('?')));
  if (!target.starts_with("/")) {
    std::string answer = ErrorAnswer(400, "bad_request", "a request in a tunnel names a path");
    co_await asio::async_write(down, asio::buffer(answer), asio::redirect_error(use_awaitable, ec));
    rep.status = 400;
    co_return end("denied", "a request in the tunnel without an origin-form target");
  }
  for (const auto& name : PlaceholdersIn(target, job->secrets.get())) {
    AddName(rep.placeholders_refused, name);
  }
  const std::string authority = rep.port == 443 ? host : fmt::format("{}:{}", host, rep.port);
  std::string head =
      UpstreamHead(msg, target, authority, [&](std::string_view name, std::string_view value) {
        std::string out(value);
        for (const auto& s : *job->secrets) {
          if (out.find(s.placeholder) == std::string::npos) continue;
          if (!beast::iequals(name, s.header) || !s.hosts.AllowsName(host, rep.port)) {
            AddName(rep.placeholders_refused, s.name);
            continue;
          }
          if (!s.format.empty()) {
            // The operator's format is the whole value ("Bearer {}"), whatever the client
            // wrote around the placeholder.
            out = s.format;
            for (size_t at = out.find("{}"); at != std::string::npos;
                 at = out.find("{}", at + s.value.size())) {
              out.replace(at, 2, s.value);
            }
          } else {
            for (size_t at = out.find(s.placeholder); at != std::string::npos;
                 at = out.find(s.placeholder, at + s.value.size())) {
              out.replace(at, s.placeholder.size(), s.value);
            }
          }
          AddName(rep.secrets_added, s.name);
        }
        return out;
      });
  const size_t body_start = in.size();
  head.append(static_cast<const char*>(in.data().data()), body_start);
  co_await Throttle(*job, *r, head.size());
  co_await asio::async_write(up, asio::buffer(head), asio::redirect_error(use_awaitable, ec));
  OPENSSL_cleanse(head.data(), head.size());
  if (ec) co_return end("failed", fmt::format("writing to {} failed: {}", host, ec.message()));
  r->up += body_start;

  // The rest: the request's body (and anything after it) up, the answer down.
  asio::co_spawn(
      st.d.io,
      [job, r, &down, &up]() -> awaitable<void> {
        co_await PumpOpened(*job, *r, down, up, true);
        r->up_done = true;
        r->done_signal.cancel();
      },
      asio::detached);
  co_await PumpOpened(*job, *r, up, down, false);
  r->CloseBoth();
  if (!r->up_done) {
    co_await r->done_signal.async_wait(asio::redirect_error(use_awaitable, ec));
  }
  co_return end("allowed", r->cut         ? "closed: the session ended"
                           : r->timed_out ? "closed after the idle timeout"
                                          : "");
}

awaitable<unsigned> RunJob(std::shared_ptr<Job> job, RawStream& client) {
  auto& st = *job->st;
  auto& io = st.d.io;
  ConnectionReport& rep = job->report;
  const std::string& host = rep.host;

  // Resolve: an address literal is itself; a name is asked of the system's resolver on the
  // pool, fully qualified.
  std::vector<asio::ip::address> addresses;
  if (auto literal = ParseIpLiteral(host)) {
    addresses.push_back(*literal);
  } else {
    auto name = NormalizeHostName(host);
    if (!name)
      co_return co_await Answer(*job, client, 403, "egress_denied", "denied", name.error().message);
    // A lookup holds a resolver thread for as long as DNS takes to answer, which the sandbox
    // may choose (a name whose server answers slowly): one session holds only its share.
    Share& share = st.ShareOf(rep.session);  // there while this connection is open
    if (share.resolving >= st.options.max_lookups_per_session) {
      co_return co_await Answer(*job, client, 429, "resource_exhausted", "limited",
                                fmt::format("this session already has {} name lookups in flight",
                                            st.options.max_lookups_per_session));
    }
    ++share.resolving;
    const std::string n = *name;
    const char* hosts_file = st.options.hosts_file.c_str();
    auto resolved =
        co_await RunBlocking(st.d.resolver, [&n, hosts_file] { return Resolve(n, hosts_file); });
    --share.resolving;
    if (!resolved) {
      co_return co_await Answer(*job, client, 502, "egress_unresolved", "failed",
                                resolved.error().message);
    }
    addresses = std::move(*resolved);
  }
  // Decide on each address; connect only to the allowed ones, in the resolver's order.
  std::vector<asio::ip::address> allowed;
  std::string refusal;
  for (const auto& a : addresses) {
    Decision d = Decide(job->policy, host, rep.port, a, st.own);
    if (d.allowed()) {
      allowed.push_back(a);
    } else if (refusal.empty()) {
      refusal = d.reason;
    }
  }
  if (allowed.empty()) {
    co_return co_await Answer(*job, client, 403, "egress_denied", "refused", refusal);
  }
  beast::tcp_stream upstream(io);
  std::string failure;
  bool timed_out = false;
  for (const auto& a : allowed) {
    beast::error_code ec;
    upstream.expires_after(st.options.connect_timeout);
    co_await upstream.async_connect(asio::ip::tcp::endpoint(a, rep.port),
                                    asio::redirect_error(use_awaitable, ec));
    if (!ec) {
      rep.address = a.to_string();
      break;
    }
    timed_out = ec == beast::error::timeout;
    if (failure.empty()) {
      failure = fmt::format("cannot connect to {} ({}:{}): {}", host, a.to_string(), rep.port,
                            timed_out ? "timed out" : ec.message());
    }
    beast::error_code ignored;
    upstream.socket().close(ignored);
  }
  upstream.expires_never();
  if (rep.address.empty()) {
    co_return co_await Answer(*job, client, timed_out ? 504 : 502, "egress_unreachable", "failed",
                              failure);
  }
  beast::error_code ignored;
  upstream.socket().set_option(asio::ip::tcp::no_delay(true), ignored);

  auto relay = std::make_shared<Relay>(io, client, std::move(upstream), !job->tunnel);
  if (job->tunnel) {
    static constexpr std::string_view kEstablished = "HTTP/1.1 200 Connection Established\r\n\r\n";
    beast::error_code ec;
    co_await client.Write(asio::buffer(kEstablished), ec);
    if (ec) co_return Finish(*job, "failed", "the client went away", 200);
    rep.status = 200;
  }
  {
    auto& relays = st.ShareOf(rep.session).relays;
    std::erase_if(relays, [](const std::weak_ptr<Relay>& w) { return w.expired(); });
    relays.push_back(relay);
  }
  relay->Touch(st.options.idle_timeout);
  asio::co_spawn(io, Watchdog(relay), asio::detached);
  if (job->intercept) co_return co_await Intercept(job, relay);
  // Upstream to client from the start (a server may speak first: SSH, SMTP); client to
  // upstream once its first bytes have passed the ClientHello check.
  asio::co_spawn(io, PumpUp(job, relay), asio::detached);
  co_await PumpDown(job, relay);
  if (!relay->up_done) {
    beast::error_code ec;
    co_await relay->done_signal.async_wait(asio::redirect_error(use_awaitable, ec));
  }
  relay->finished = true;
  relay->timer.cancel();
  relay->CloseBoth();
  rep.bytes_up = relay->up;
  rep.bytes_down = relay->down;
  if (!relay->refusal.empty()) co_return Finish(*job, "refused", relay->refusal, rep.status);
  if (!job->tunnel) rep.status = relay->upstream_status;
  co_return Finish(*job, "allowed",
                   relay->cut         ? "closed: the session ended"
                   : relay->timed_out ? "closed after the idle timeout"
                                      : "",
                   job->tunnel ? 200 : (relay->upstream_status ? relay->upstream_status : 502));
}

}  // namespace

Gateway::Gateway(Deps deps, GatewayOptions options, OwnAddresses own)
    : state_(std::make_shared<State>(std::move(deps), options, std::move(own))) {}

Gateway::~Gateway() = default;

bool Gateway::IsProxyRequest(const net::Request& req) {
  return req.msg.method() == http::verb::connect || !req.msg.target().starts_with("/");
}

size_t Gateway::open_connections() const { return state_->open_total; }

void Gateway::CloseSession(const std::string& session) {
  auto it = state_->shares.find(session);
  if (it == state_->shares.end()) return;
  for (const auto& w : it->second.relays) {
    if (auto r = w.lock(); r && !r->finished) {
      r->cut = true;
      r->CloseBoth();
    }
  }
}

size_t Gateway::open_connections(const std::string& session) const {
  auto it = state_->shares.find(session);
  return it == state_->shares.end() ? 0 : it->second.open;
}

net::Admission Gateway::Admit(const net::Request& req, const std::string& session, Policy policy,
                              Secrets secrets) {
  auto job = std::make_shared<Job>();
  job->st = state_;
  job->policy = std::move(policy);
  job->secrets = std::move(secrets);
  ConnectionReport& rep = job->report;
  rep.session = session;
  rep.method = Printable(req.msg.method_string());
  net::Admission a;
  auto refuse = [&](unsigned status, std::string_view code, std::string decision,
                    std::string message) {
    a.refuse = net::Response::FromError(status, code, message);
    ++state_->ShareOf(session).open;  // Finish gives it back
    ++state_->open_total;
    state_->open_gauge.Add(1);
    Finish(*job, std::move(decision), std::move(message), status);
    return a;
  };
  std::string_view target = req.msg.target();
  rep.host = Printable(target);
  // The request rate first: every request counts, malformed and refused ones too, so that
  // refusals (each an event in the store) come no faster than requests may.
  Share& share = state_->ShareOf(session);
  int64_t now = NowMs();
  if (!share.requests.TakeOne(now)) {
    int64_t wait_s = share.requests.MsUntilOne(now) / 1000 + 1;
    refuse(429, "resource_exhausted", "limited",
           fmt::format("this session made {} egress requests in the last minute",
                       state_->options.requests_per_minute));
    a.refuse->headers.emplace_back("Retry-After", std::to_string(wait_s));
    return a;
  }
  std::string origin_target, authority;
  if (req.msg.method() == http::verb::connect) {
    job->tunnel = true;
    rep.host = Printable(target);
    if (auto ok = SplitAuthority(target, &rep.host, &rep.port, std::nullopt); !ok) {
      return refuse(400, "bad_request", "denied",
                    fmt::format("CONNECT needs a host:port target ({})", ok.error().message));
    }
  } else {
    job->tunnel = false;
    rep.host = Printable(target);
    constexpr std::string_view kHttp = "http://";
    if (target.size() < kHttp.size() || !beast::iequals(target.substr(0, kHttp.size()), kHttp)) {
      return refuse(400, "bad_request", "denied",
                    "a proxy request's target must be an http:// URL; an https:// one goes "
                    "through CONNECT (HTTPS_PROXY)");
    }
    std::string_view rest = target.substr(kHttp.size());
    size_t end = rest.find_first_of("/?#");
    authority = std::string(rest.substr(0, end));
    origin_target = end == std::string_view::npos ? "/" : std::string(rest.substr(end));
    if (origin_target.front() != '/') origin_target.insert(0, "/");
    if (size_t hash = origin_target.find('#'); hash != std::string::npos)
      origin_target.resize(hash);
    if (authority.find('@') != std::string::npos) {
      return refuse(400, "bad_request", "denied", "a proxy URL may not carry user information");
    }
    if (auto ok = SplitAuthority(authority, &rep.host, &rep.port, 80); !ok) {
      return refuse(400, "bad_request", "denied",
                    fmt::format("bad URL host ({})", ok.error().message));
    }
    rep.path = Printable(origin_target.substr(0, origin_target.find('?')));
    job->upstream_head = UpstreamHead(req.msg, origin_target, authority);
    // Plain HTTP never carries a secret: a placeholder in it is reported, not replaced.
    rep.placeholders_refused = PlaceholdersIn(job->upstream_head, job->secrets.get());
  }
  rep.host = Printable(rep.host);
  Decision asked = CheckRequest(job->policy, rep.host, rep.port);
  if (!asked.allowed()) return refuse(403, "egress_denied", "denied", asked.reason);
  if (job->tunnel && job->secrets) {
    auto name = NormalizeHostName(rep.host);
    for (const auto& secret : *job->secrets) {
      if (name && secret.hosts.AllowsName(*name, rep.port)) job->intercept = true;
    }
    if (job->intercept && !(state_->options.authority && state_->options.upstream_tls)) {
      return refuse(503, "unavailable", "failed",
                    "this gateway has no CA to add a secret with (egress.ca_cert_file)");
    }
  }
  if (share.open >= state_->options.max_connections_per_session) {
    return refuse(429, "resource_exhausted", "limited",
                  fmt::format("this session already has {} egress connections open",
                              state_->options.max_connections_per_session));
  }
  ++share.open;
  ++state_->open_total;
  state_->open_gauge.Add(1);
  a.max_body_bytes = 0;
  a.charge_to = session;
  a.takeover = [job](RawStream& client) { return RunJob(job, client); };
  return a;
}

std::vector<asio::ip::address> HostAddresses() {
  std::vector<asio::ip::address> out;
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return out;
  for (ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (auto a = AddressOf(i->ifa_addr)) out.push_back(*a);
  }
  ::freeifaddrs(list);
  return out;
}

}  // namespace airlock::egress
