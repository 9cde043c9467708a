// airlock-fake-llm: a fake OpenAI / Anthropic upstream that answers every request with the
// default reply, for benchmarks that compare a proxy against calling the upstream directly.

#include <signal.h>
#include <sys/stat.h>

#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>

#include "tests/llm/fake_upstream.h"
#include "tests/llm/test_tls.h"

namespace {

using airlock::fake::FakeUpstream;
using airlock::fake::FakeUpstreamOptions;
using airlock::fake::ServeFormats;

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

int Run(int argc, char** argv) {
  CLI::App app(
      "A fake LLM upstream: a real HTTP/1.1 server answering POST /v1/chat/completions (OpenAI) "
      "and/or POST /v1/messages (Anthropic) in the providers' wire formats, streaming when the "
      "request says \"stream\": true. Every request gets \"reply N\". Prints \"listening on "
      "HOST:PORT\" once ready; SIGINT or SIGTERM stops it.",
      "airlock-fake-llm");
  FakeUpstreamOptions options;
  options.record = false;  // runs for a long time: count requests, keep none
  std::string format = "openai";
  std::string tls_dir;
  int delay_ms = 0;
  int first_byte_ms = 0;
  app.add_option("--port", options.port, "TCP port (0: the kernel picks one)")->required();
  app.add_option("--host", options.host, "address to listen on")->capture_default_str();
  app.add_option("--format", format, "openai, anthropic or both (routed by path)")
      ->check(CLI::IsMember({"openai", "anthropic", "both"}))
      ->capture_default_str();
  app.add_option("--openai-prefix", options.openai_prefix, "path before /chat/completions")
      ->capture_default_str();
  app.add_option("--tls-dir", tls_dir,
                 "serve HTTPS with DIR/server.pem and DIR/server.key; when they are missing, a "
                 "new test CA and certificate for localhost and 127.0.0.1 are written there "
                 "(clients trust DIR/ca.pem)");
  app.add_option("--chunks", options.default_chunks, "text pieces per streamed reply")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--delay-ms", delay_ms, "pause between the events of a stream")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--first-byte-ms", first_byte_ms, "pause before each response's status line")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--reply-words", options.default_reply_words,
                 "make the reply this many words long (0: just \"reply N\")")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--api-key", options.expected_key,
                 "require this key (Authorization: Bearer / x-api-key), answering 401 otherwise");
  app.add_option("--threads", options.threads, "server threads")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  options.formats = format == "anthropic" ? ServeFormats::kAnthropic
                    : format == "both"    ? ServeFormats::kBoth
                                          : ServeFormats::kOpenAi;
  options.default_event_delay = std::chrono::milliseconds(delay_ms);
  if (!tls_dir.empty()) {
    options.cert_file = tls_dir + "/server.pem";
    options.key_file = tls_dir + "/server.key";
    if (!FileExists(options.cert_file) || !FileExists(options.key_file)) {
      auto pki = airlock::fake::MakeTestPki(tls_dir);
      if (!pki) {
        std::fprintf(stderr, "airlock-fake-llm: %s\n", pki.error().message.c_str());
        return 1;
      }
      std::fprintf(stderr, "airlock-fake-llm: wrote a test CA to %s\n", pki->ca_file.c_str());
    }
  }

  // Block the stop signals before any thread starts, so that only sigwait below sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  FakeUpstream upstream(options);
  if (!upstream.ok()) {
    std::fprintf(stderr, "airlock-fake-llm: %s\n", upstream.error().c_str());
    return 1;
  }
  if (first_byte_ms > 0) {
    upstream.SetDefaultReply(
        airlock::fake::Reply::Default().WithDelay(std::chrono::milliseconds(first_byte_ms)));
  }
  std::printf("listening on %s:%u\n", options.host.c_str(), static_cast<unsigned>(upstream.port()));
  std::fflush(stdout);

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  upstream.Stop();
  std::fprintf(stderr, "airlock-fake-llm: stopped after %zu requests\n", upstream.request_count());
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Run(argc, argv); }
