// airlock-llm-load: a closed-loop HTTP/1.1 load generator for the LLM proxy benchmark
// (bench/llm_proxy.sh). N callers each keep one keep-alive connection and make POST calls back
// to back. A call is timed from just before its request is written to the last byte of its
// response, so a streamed (chunked SSE) answer counts only once it has ended. Every caller may
// carry its own session token: the control plane allows one LLM call per session at a time, so
// concurrent callers need distinct sessions.
//
// Output: one `key=value` line on stdout (for scripts) and a readable summary on stderr.

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include "common/asio.h"

namespace airlock::bench {
namespace {

using Clock = std::chrono::steady_clock;
using tcp = asio::ip::tcp;

struct Options {
  std::string url;
  int connections = 1;
  int calls = 100;  // per caller; 0: until --duration ends
  double duration_s = 0;
  std::string tokens_file;
  int calls_per_token = 0;  // 0: each caller uses its first token for every call
  std::string body;
  std::string body_file;
  std::vector<std::string> headers;
  bool sse = false;
  std::string expect;  // a substring every 200 body must hold
  int threads = 1;
  double timeout_s = 60;
  std::string label;
  std::string raw_file;  // one line per successful call: caller, start (ms after t0), latency (ms)
};

struct Target {
  std::string host;
  std::string port;
  std::string path;
};

// Accepts http://HOST:PORT/PATH only: the benchmark never needs TLS or name resolution.
bool ParseUrl(const std::string& url, Target& t) {
  const std::string scheme = "http://";
  if (url.rfind(scheme, 0) != 0) {
    return false;
  }
  std::string rest = url.substr(scheme.size());
  size_t slash = rest.find('/');
  std::string authority = slash == std::string::npos ? rest : rest.substr(0, slash);
  t.path = slash == std::string::npos ? "/" : rest.substr(slash);
  size_t colon = authority.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == authority.size()) {
    return false;
  }
  t.host = authority.substr(0, colon);
  t.port = authority.substr(colon + 1);
  return true;
}

// What one caller measured. Each caller is touched by one thread only; they are merged at the end.
struct Tally {
  std::vector<double> start_ms;  // successful calls: when they started, after the common t0
  std::vector<double> full_ms;   // successful calls: request written -> response fully read
  std::vector<double> head_ms;   // successful calls: request written -> response head read
  uint64_t errors = 0;
  uint64_t reconnects = 0;
  std::map<std::string, uint64_t> kinds;  // error description -> count

  void Fail(const std::string& why) {
    ++errors;
    ++kinds[why];
  }
};

struct Shared {
  const Options* options = nullptr;
  Target target;
  std::vector<std::string> tokens;
  std::string body;
  Clock::time_point t0;
  Clock::time_point deadline = Clock::time_point::max();
};

bool EndsWithDone(const std::string& body) {
  size_t end = body.find_last_not_of("\r\n");
  if (end == std::string::npos) {
    return false;
  }
  constexpr std::string_view kDone = "data: [DONE]";
  return end + 1 >= kDone.size() &&
         std::string_view(body).substr(end + 1 - kDone.size(), kDone.size()) == kDone;
}

std::string Trim(std::string s, size_t max) {
  for (char& ch : s) {
    if (ch == '\n' || ch == '\r') {
      ch = ' ';
    }
  }
  return s.size() > max ? s.substr(0, max) + "..." : s;
}

class Caller {
 public:
  Caller(asio::io_context& io, const Shared& shared, int index, Tally& tally)
      : shared_(shared), index_(index), tally_(tally), stream_(io) {}

  // Connects before the clock starts, so that the timed calls measure requests, not handshakes.
  bool ConnectNow(const tcp::resolver::results_type& endpoints) {
    beast::error_code ec;
    stream_.socket().connect(*endpoints.begin(), ec);
    if (ec) {
      tally_.Fail("connect: " + ec.message());
      return false;
    }
    stream_.socket().set_option(tcp::no_delay(true), ec);
    connected_ = true;
    return true;
  }

  awaitable<void> Run(tcp::resolver::results_type endpoints) {
    const Options& o = *shared_.options;
    const auto timeout =
        std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.timeout_s));
    size_t token_slot = 0;
    int on_token = 0;
    http::request<http::string_body> req;
    bool have_req = false;
    for (int done = 0; o.calls == 0 || done < o.calls; ++done) {
      if (Clock::now() >= shared_.deadline) {
        break;
      }
      if (!shared_.tokens.empty()) {
        if (o.calls_per_token > 0 && on_token == o.calls_per_token) {
          ++token_slot;
          on_token = 0;
          have_req = false;
        }
        size_t t = static_cast<size_t>(index_) + token_slot * static_cast<size_t>(o.connections);
        if (t >= shared_.tokens.size()) {
          break;
        }
        if (!have_req) {
          req = MakeRequest(&shared_.tokens[t]);
          have_req = true;
        }
        ++on_token;
      } else if (!have_req) {
        req = MakeRequest(nullptr);
        have_req = true;
      }

      const Clock::time_point start = Clock::now();
      beast::error_code ec;
      if (!connected_) {
        ++tally_.reconnects;
        stream_.expires_after(timeout);
        co_await stream_.async_connect(endpoints, asio::redirect_error(use_awaitable, ec));
        if (ec) {
          tally_.Fail("connect: " + ec.message());
          continue;
        }
        stream_.socket().set_option(tcp::no_delay(true), ec);
        connected_ = true;
      }
      stream_.expires_after(timeout);
      co_await http::async_write(stream_, req, asio::redirect_error(use_awaitable, ec));
      if (ec) {
        Drop("write: " + ec.message());
        continue;
      }
      http::response_parser<http::string_body> parser;
      parser.body_limit(64 << 20);
      co_await http::async_read_header(stream_, buffer_, parser,
                                       asio::redirect_error(use_awaitable, ec));
      const Clock::time_point head = Clock::now();
      if (!ec) {
        co_await http::async_read(stream_, buffer_, parser,
                                  asio::redirect_error(use_awaitable, ec));
      }
      const Clock::time_point end = Clock::now();
      if (ec) {
        Drop("read: " + ec.message());
        continue;
      }
      const auto& res = parser.get();
      const bool keep = res.keep_alive();
      if (res.result_int() != 200) {
        tally_.Fail("status " + std::to_string(res.result_int()) + ": " + Trim(res.body(), 160));
      } else if (o.sse && !EndsWithDone(res.body())) {
        tally_.Fail(
            "stream did not end with data: [DONE]; last bytes: " +
            Trim(res.body().substr(res.body().size() > 160 ? res.body().size() - 160 : 0), 160));
      } else if (!o.expect.empty() && res.body().find(o.expect) == std::string::npos) {
        tally_.Fail("body lacks \"" + o.expect + "\": " + Trim(res.body(), 160));
      } else {
        tally_.start_ms.push_back(
            std::chrono::duration<double, std::milli>(start - shared_.t0).count());
        tally_.full_ms.push_back(std::chrono::duration<double, std::milli>(end - start).count());
        tally_.head_ms.push_back(std::chrono::duration<double, std::milli>(head - start).count());
      }
      if (!keep) {
        Drop("");
      }
    }
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
  }

 private:
  http::request<http::string_body> MakeRequest(const std::string* token) const {
    const Options& o = *shared_.options;
    http::request<http::string_body> req{http::verb::post, shared_.target.path, 11};
    req.set(http::field::host, shared_.target.host + ":" + shared_.target.port);
    req.set(http::field::content_type, "application/json");
    req.set(http::field::accept, o.sse ? "text/event-stream" : "application/json");
    if (token != nullptr) {
      req.set(http::field::authorization, "Bearer " + *token);
    }
    for (const auto& h : o.headers) {
      size_t colon = h.find(':');
      std::string value = h.substr(colon + 1);
      value.erase(0, value.find_first_not_of(' '));
      req.set(h.substr(0, colon), value);
    }
    req.keep_alive(true);
    req.body() = shared_.body;
    req.prepare_payload();
    return req;
  }

  // Closes the connection after a failure (or a `Connection: close`); the next call reconnects.
  void Drop(const std::string& why) {
    if (!why.empty()) {
      tally_.Fail(why);
    }
    beast::error_code ignored;
    stream_.socket().close(ignored);
    buffer_.clear();
    connected_ = false;
  }

  const Shared& shared_;
  int index_;
  Tally& tally_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  bool connected_ = false;
};

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) {
    return 0;
  }
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

bool ReadFile(const std::string& path, std::string& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    return false;
  }
  std::ostringstream ss;
  ss << f.rdbuf();
  out = ss.str();
  return true;
}

// 512 connections plus the server's side of nothing: the soft limit of 1024 is close enough
// to matter once the kernel, stdio and the resolver hold a few.
void RaiseFdLimit() {
  rlimit r{};
  if (::getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &r);
  }
}

int Run(int argc, char** argv) {
  CLI::App app(
      "Closed-loop HTTP/1.1 load for the LLM proxy benchmark: N callers, one keep-alive connection "
      "each, POST calls back to back, each timed until its response (Content-Length or chunked, "
      "e.g. SSE) is fully read. Prints count, errors and latency percentiles.",
      "airlock-llm-load");
  Options o;
  app.add_option("--url", o.url, "http://HOST:PORT/PATH")->required();
  app.add_option("-c,--connections", o.connections, "concurrent callers")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("-n,--calls", o.calls, "calls per caller (0: until --duration ends)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("-d,--duration", o.duration_s,
                 "stop starting calls after this many seconds (0: no limit)")
      ->check(CLI::NonNegativeNumber);
  app.add_option(
      "--tokens", o.tokens_file,
      "file of bearer tokens, one a line; caller i uses lines i, i+N, i+2N, ... in turn");
  app.add_option(
         "--calls-per-token", o.calls_per_token,
         "move to the caller's next token after this many calls; a caller stops when it has "
         "no token left (0: keep the first)")
      ->check(CLI::NonNegativeNumber);
  auto* body = app.add_option("--body", o.body, "request body (JSON text)");
  app.add_option("--body-file", o.body_file, "read the request body from FILE")->excludes(body);
  app.add_option("-H,--header", o.headers, "extra header \"Name: value\" (repeatable)");
  app.add_flag("--sse", o.sse, "expect an event stream that ends with data: [DONE]");
  app.add_option("--expect", o.expect, "a substring that every 200 response body must contain");
  app.add_option("--threads", o.threads, "client threads (each runs its share of the callers)")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--timeout", o.timeout_s, "seconds allowed for each step of a call")
      ->capture_default_str();
  app.add_option("--label", o.label, "name echoed in the output");
  app.add_option(
      "--raw", o.raw_file,
      "write every successful call to FILE: caller, start (ms after the start), latency (ms)");
  CLI11_PARSE(app, argc, argv);

  for (const auto& h : o.headers) {
    if (h.find(':') == std::string::npos || h.front() == ':') {
      std::fprintf(stderr, "airlock-llm-load: --header \"%s\" is not \"Name: value\"\n", h.c_str());
      return 2;
    }
  }
  Shared shared;
  shared.options = &o;
  if (!ParseUrl(o.url, shared.target)) {
    std::fprintf(stderr, "airlock-llm-load: --url must be http://HOST:PORT/PATH\n");
    return 2;
  }
  shared.body = o.body;
  if (!o.body_file.empty() && !ReadFile(o.body_file, shared.body)) {
    std::fprintf(stderr, "airlock-llm-load: cannot read %s\n", o.body_file.c_str());
    return 2;
  }
  if (!o.tokens_file.empty()) {
    std::ifstream f(o.tokens_file);
    if (!f) {
      std::fprintf(stderr, "airlock-llm-load: cannot read %s\n", o.tokens_file.c_str());
      return 2;
    }
    for (std::string line; std::getline(f, line);) {
      if (!line.empty()) {
        shared.tokens.push_back(line);
      }
    }
    if (shared.tokens.size() < static_cast<size_t>(o.connections)) {
      std::fprintf(stderr,
                   "airlock-llm-load: %zu tokens for %d callers: each caller needs its own\n",
                   shared.tokens.size(), o.connections);
      return 2;
    }
  }
  if (o.calls == 0 && o.duration_s <= 0) {
    std::fprintf(stderr, "airlock-llm-load: --calls 0 needs a --duration\n");
    return 2;
  }
  RaiseFdLimit();

  const int threads = std::min(o.threads, o.connections);
  std::vector<std::unique_ptr<asio::io_context>> ios;
  for (int i = 0; i < threads; ++i) {
    ios.push_back(std::make_unique<asio::io_context>(1));
  }
  tcp::resolver resolver(*ios[0]);
  beast::error_code ec;
  auto endpoints = resolver.resolve(shared.target.host, shared.target.port, ec);
  if (ec) {
    std::fprintf(stderr, "airlock-llm-load: resolve %s: %s\n", shared.target.host.c_str(),
                 ec.message().c_str());
    return 2;
  }

  std::vector<Tally> tallies(static_cast<size_t>(o.connections));
  std::vector<std::unique_ptr<Caller>> callers;
  int connect_failures = 0;
  for (int i = 0; i < o.connections; ++i) {
    auto& io = *ios[static_cast<size_t>(i % threads)];
    callers.push_back(std::make_unique<Caller>(io, shared, i, tallies[static_cast<size_t>(i)]));
    if (!callers.back()->ConnectNow(endpoints)) {
      ++connect_failures;
    }
  }
  if (connect_failures > 0) {
    std::fprintf(stderr, "airlock-llm-load: %d of %d connections failed before the start\n",
                 connect_failures, o.connections);
  }

  shared.t0 = Clock::now();
  const Clock::time_point t0 = shared.t0;
  if (o.duration_s > 0) {
    shared.deadline = t0 + std::chrono::duration_cast<Clock::duration>(
                               std::chrono::duration<double>(o.duration_s));
  }
  for (int i = 0; i < o.connections; ++i) {
    auto& io = *ios[static_cast<size_t>(i % threads)];
    asio::co_spawn(io, callers[static_cast<size_t>(i)]->Run(endpoints), asio::detached);
  }
  std::vector<std::thread> workers;
  for (int i = 1; i < threads; ++i) {
    workers.emplace_back([&io = *ios[static_cast<size_t>(i)]] { io.run(); });
  }
  ios[0]->run();
  for (auto& w : workers) {
    w.join();
  }
  const double wall_s = std::chrono::duration<double>(Clock::now() - t0).count();

  if (!o.raw_file.empty()) {
    std::FILE* raw = std::fopen(o.raw_file.c_str(), "w");
    if (raw == nullptr) {
      std::fprintf(stderr, "airlock-llm-load: cannot write %s\n", o.raw_file.c_str());
    } else {
      for (size_t i = 0; i < tallies.size(); ++i) {
        for (size_t k = 0; k < tallies[i].full_ms.size(); ++k) {
          std::fprintf(raw, "%zu %.3f %.3f\n", i, tallies[i].start_ms[k], tallies[i].full_ms[k]);
        }
      }
      std::fclose(raw);
    }
  }
  Tally all;
  for (auto& t : tallies) {
    all.full_ms.insert(all.full_ms.end(), t.full_ms.begin(), t.full_ms.end());
    all.head_ms.insert(all.head_ms.end(), t.head_ms.begin(), t.head_ms.end());
    all.errors += t.errors;
    all.reconnects += t.reconnects;
    for (const auto& [k, v] : t.kinds) {
      all.kinds[k] += v;
    }
  }
  std::sort(all.full_ms.begin(), all.full_ms.end());
  std::sort(all.head_ms.begin(), all.head_ms.end());
  const auto& f = all.full_ms;
  const auto& h = all.head_ms;
  const double max_ms = f.empty() ? 0 : f.back();

  std::printf(
      "label=%s connections=%d count=%zu errors=%llu reconnects=%llu wall_s=%.3f rps=%.1f "
      "p50_ms=%.3f "
      "p90_ms=%.3f p99_ms=%.3f max_ms=%.3f head_p50_ms=%.3f head_p99_ms=%.3f\n",
      o.label.empty() ? "-" : o.label.c_str(), o.connections, f.size(),
      static_cast<unsigned long long>(all.errors), static_cast<unsigned long long>(all.reconnects),
      wall_s, wall_s > 0 ? static_cast<double>(f.size()) / wall_s : 0.0, Percentile(f, 0.5),
      Percentile(f, 0.9), Percentile(f, 0.99), max_ms, Percentile(h, 0.5), Percentile(h, 0.99));
  std::fprintf(stderr,
               "%s: %d callers, %zu ok, %llu errors, %llu reconnects in %.2fs (%.0f/s); "
               "p50 %.2fms p90 %.2fms p99 %.2fms max %.2fms\n",
               o.label.empty() ? o.url.c_str() : o.label.c_str(), o.connections, f.size(),
               static_cast<unsigned long long>(all.errors),
               static_cast<unsigned long long>(all.reconnects), wall_s,
               wall_s > 0 ? static_cast<double>(f.size()) / wall_s : 0.0, Percentile(f, 0.5),
               Percentile(f, 0.9), Percentile(f, 0.99), max_ms);
  for (const auto& [k, v] : all.kinds) {
    std::fprintf(stderr, "  error x%llu: %s\n", static_cast<unsigned long long>(v), k.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace airlock::bench

int main(int argc, char** argv) { return airlock::bench::Run(argc, argv); }
