// Egress from inside real sandboxes (issue 15), through the real `airlock serve`: the clients
// agents use (curl, Python's urllib, busybox wget) find the gateway through the proxy variables
// init sets, reach what the session's policy allows on a loopback "internet" (plain HTTP, and
// HTTPS with a CA made for the test, verified end to end), and nothing else: not a name or an
// address outside the policy, not a name that resolves to loopback, not the metadata address,
// and not anything directly. Every attempt is an event of the session.
#include <openssl/ssl.h>

#include <fstream>
#include <mutex>
#include <set>

#include "tests/llm/test_tls.h"
#include "tests/security/sandbox_fixture.h"
#include "tests/support/tcp_origin.h"

namespace airlock::testing {
namespace {

using http::verb;

constexpr const char* kToolsImage = "airlock-tools:test";
constexpr const char* kInternet = "127.0.0.2";
// The origin's credential: in the control plane's environment only (a secret of the config).
constexpr const char* kSecretEnv = "AIRLOCK_TEST_ORIGIN_KEY";
constexpr const char* kSecretValue = "tok-real-7d3f9a1c5e8b2046";

// Reads one request head from `in`; "" when none came.
std::string ReadHead(const std::function<int(char*, int)>& in) {
  std::string head;
  char c;
  while (head.find("\r\n\r\n") == std::string::npos && head.size() < 16384) {
    if (in(&c, 1) != 1) return "";
    head += c;
  }
  return head;
}

std::string Answer(const std::string& head) {
  std::string target = head.substr(0, head.find("\r\n"));
  std::string body = "origin saw " + target;
  return "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
}

class EgressTest : public ::testing::Test {
 protected:
  void SetUp() override {
    AIRLOCK_REQUIRE_SANDBOXES();
    pki_dir_ = MakeTempDir("airlock-egress-pki");
    auto pki = fake::MakeTestPki(pki_dir_, {"origin.test"}, {"127.0.0.2"});
    ASSERT_TRUE(pki.has_value()) << pki.error().message;
    pki_ = *pki;
    tls_ = SSL_CTX_new(TLS_server_method());
    ASSERT_EQ(SSL_CTX_use_certificate_chain_file(tls_, pki_.cert_file.c_str()), 1);
    ASSERT_EQ(SSL_CTX_use_PrivateKey_file(tls_, pki_.key_file.c_str(), SSL_FILETYPE_PEM), 1);
    http_ = std::make_unique<Origin>(
        [this](int fd) {
          std::string head =
              ReadHead([fd](char* b, int n) { return static_cast<int>(::recv(fd, b, n, 0)); });
          Note(head);
          if (!head.empty()) SendAll(fd, Answer(head));
        },
        kInternet);
    https_ = std::make_unique<Origin>(
        [this](int fd) {
          SSL* ssl = SSL_new(tls_);
          SSL_set_fd(ssl, fd);
          if (SSL_accept(ssl) == 1) {
            std::string head = ReadHead([ssl](char* b, int n) { return SSL_read(ssl, b, n); });
            Note(head);
            std::string answer = Answer(head);
            if (!head.empty()) SSL_write(ssl, answer.data(), static_cast<int>(answer.size()));
            SSL_shutdown(ssl);
          }
          SSL_free(ssl);
        },
        kInternet);
    unallowed_ = std::make_unique<Origin>([this](int fd) { Note(ReadN(fd, 1)); }, kInternet);
    const std::string http = std::to_string(http_->port());
    const std::string https = std::to_string(https_->port());
    loopback_port_ = std::to_string(FreePort());
    // The test's "internet" lives on 127.0.0.2 (not the 127.0.0.1 of NO_PROXY), with two
    // names pinned in a hosts file: origin.test there, and rebound.test on 127.0.0.1, as a
    // rebinding name would answer. The operator allows both origins by exact address, and
    // the names on their ports.
    hosts_file_ = pki_dir_ + "/hosts";
    std::ofstream(hosts_file_) << "127.0.0.2 origin.test\n127.0.0.1 rebound.test\n";
    // A secret for the HTTPS origin: its real host is verified against the test CA.
    ::setenv(kSecretEnv, kSecretValue, 1);
    sbx_ = std::make_unique<SandboxServer>(
        "[egress]\nallow = [\"origin.test:" + http + "\", \"origin.test:" + https +
        "\", \"rebound.test:" + loopback_port_ + "\"]\nallow_addresses = [\"127.0.0.2:" + http +
        "\", \"127.0.0.2:" + https + "\"]\nhosts_file = \"" + hosts_file_ +
        "\"\nupstream_ca_file = \"" + pki_.ca_file + "\"\n[secrets.origin]\nenv = \"" + kSecretEnv +
        "\"\nhosts = [\"origin.test:" + https + "\"]\nsandbox_env = \"ORIGIN_KEY\"\n");
    auto imported = sbx_->ImportImage(AIRLOCK_TOOLS_IMAGE, kToolsImage);
    ASSERT_TRUE(imported) << imported.error().message;
    sbx_->Start();
  }
  void TearDown() override {
    sbx_.reset();
    http_.reset();
    https_.reset();
    unallowed_.reset();
    if (tls_) SSL_CTX_free(tls_);
    if (!pki_dir_.empty()) std::filesystem::remove_all(pki_dir_);
  }
  void Note(const std::string& head) {
    std::lock_guard lock(mu_);
    seen_.push_back(head.substr(0, head.find("\r\n")));
    heads_.push_back(head);
  }
  std::vector<std::string> Heads() {
    std::lock_guard lock(mu_);
    return heads_;
  }
  std::vector<std::string> Seen() {
    std::lock_guard lock(mu_);
    return seen_;
  }

  // Runs `script` with sh in the tools image, with `egress` (none when null) and the test CA
  // as ca.pem in its working directory; the session's log and events.
  SessionOutcome Run(const std::string& script, const Json& egress) {
    std::ifstream ca(pki_.ca_file);
    std::string ca_pem((std::istreambuf_iterator<char>(ca)), std::istreambuf_iterator<char>());
    Json body = {{"task", "egress"},
                 {"image", kToolsImage},
                 {"command", {"/bin/sh", "-c", script}},
                 {"files", {{"ca.pem", ca_pem}}}};
    if (!egress.is_null()) body["egress"] = egress;
    auto r = sbx_->server().Op(verb::post, "/v1/sessions", DumpJson(body));
    EXPECT_EQ(r.status, 201u) << r.body;
    if (r.status != 201u) return {};
    std::string id = r.json()["id"];
    auto outcome = sbx_->WaitForEnd(id, 120);
    sbx_->server().Op(verb::delete_, "/v1/sessions/" + id);
    return outcome;
  }

  static std::vector<Json> EgressEvents(const SessionOutcome& o) {
    std::vector<Json> out;
    for (const auto& e : o.events) {
      if (e.value("type", "") == "egress.connection") out.push_back(e["data"]);
    }
    return out;
  }

  std::string pki_dir_;
  fake::TestPki pki_;
  SSL_CTX* tls_ = nullptr;
  std::mutex mu_;
  std::vector<std::string> seen_;
  std::vector<std::string> heads_;  // whole request heads, as the origins received them
  std::unique_ptr<Origin> http_, https_, unallowed_;
  std::string loopback_port_;
  std::string hosts_file_;
  std::unique_ptr<SandboxServer> sbx_;
};

TEST_F(EgressTest, CurlPythonAndWgetReachWhatThePolicyAllowsThroughTheGateway) {
  const std::string http = "127.0.0.2:" + std::to_string(http_->port());
  const std::string named_http = "origin.test:" + std::to_string(http_->port());
  const std::string https = "origin.test:" + std::to_string(https_->port());
  const std::string script =
      "echo \"proxy $https_proxy $HTTP_PROXY no=$NO_PROXY\"; "
      "curl -sS --cacert ca.pem https://" +
      https +
      "/curl; echo \" curl=$?\"; "
      "python3 -c 'import ssl, sys, urllib.request as u; "
      "c = ssl.create_default_context(cafile=\"ca.pem\"); "
      "print(u.urlopen(sys.argv[1], context=c).read().decode())' https://" +
      https +
      "/python; echo \" python=$?\"; "
      "python3 -c 'import sys, urllib.request as u; print(u.urlopen(sys.argv[1]).read().decode())' "
      "http://" +
      http +
      "/urllib-http; echo \" urllib-http=$?\"; "
      "wget -q -O - http://" +
      named_http +
      "/wget; echo \" wget=$?\"; "
      // The control plane itself is reached directly, never through the proxy.
      "curl -sS -o /dev/null -w '%{http_code}' -H \"Authorization: Bearer $SESSION_TOKEN\" "
      "$CONTROL_PLANE_URL/v1/models; echo \" cp=$?\"; "
      "exit 0";
  auto o =
      Run(script, Json{{"allow", {https, named_http}},
                       {"allow_addresses", {http, "127.0.0.2:" + std::to_string(https_->port())}}});
  const std::string& logs = o.logs;
  EXPECT_NE(
      logs.find("proxy http://127.0.0.1:7401 http://127.0.0.1:7401 no=127.0.0.1,localhost,::1"),
      std::string::npos)
      << logs;
  EXPECT_NE(logs.find("origin saw GET /curl HTTP/1.1 curl=0"), std::string::npos) << logs;
  EXPECT_NE(logs.find("origin saw GET /python HTTP/1.1\n python=0"), std::string::npos) << logs;
  EXPECT_NE(logs.find("origin saw GET /urllib-http HTTP/1.1\n urllib-http=0"), std::string::npos)
      << logs;
  EXPECT_NE(logs.find("origin saw GET /wget HTTP/1.1 wget=0"), std::string::npos) << logs;
  EXPECT_NE(logs.find("200 cp=0"), std::string::npos) << logs;
  // Each went through the gateway: an event each, with what was asked and what was decided.
  auto events = EgressEvents(o);
  ASSERT_EQ(events.size(), 4u) << o.events.dump();
  std::set<std::string> hosts;
  for (const auto& e : events) {
    EXPECT_EQ(e.value("decision", ""), "allowed") << e.dump();
    EXPECT_EQ(e.value("address", ""), "127.0.0.2") << e.dump();
    EXPECT_GT(e.value("bytes_down", 0), 0) << e.dump();
    hosts.insert(e.value("method", "") + " " + e.value("host", "") + e.value("path", ""));
  }
  EXPECT_EQ(hosts, (std::set<std::string>{"CONNECT origin.test", "GET 127.0.0.2/urllib-http",
                                          "GET origin.test/wget"}))
      << o.events.dump();
  // The session shows what it may reach.
  EXPECT_EQ(o.session["egress"]["allow"], Json::array({https, named_http})) << o.session.dump();
}

TEST_F(EgressTest, EverythingElseIsRefusedAndNothingGoesDirectly) {
  const std::string http = "127.0.0.2:" + std::to_string(http_->port());
  const std::string unallowed = "127.0.0.2:" + std::to_string(unallowed_->port());
  const std::string script =
      // Outside the session's policy (but inside the operator's): 403 from the gateway.
      "curl -sS http://" + http +
      "/narrowed; echo \" narrowed=$?\"; "
      // An address nobody allowed, by plain HTTP and by CONNECT.
      "curl -sS http://" +
      unallowed +
      "/x; echo \" unallowed=$?\"; "
      "curl -sS -p http://" +
      unallowed +
      "/x 2>&1 | tail -c 120; echo \" unallowed-connect\"; "
      // The cloud metadata service, the classic SSRF.
      "curl -sS http://169.254.169.254/latest/meta-data/; echo \" metadata=$?\"; "
      // A name the operator allows, but this session does not.
      "curl -sS http://rebound.test:" +
      loopback_port_ +
      "/; echo \" rebound=$?\"; "
      // No proxy: the sandbox has no route anywhere.
      "curl -sS --noproxy '*' --max-time 5 http://" +
      unallowed +
      "/direct 2>&1 | tail -c 80; "
      "echo \" direct\"; "
      "exit 0";
  auto o = Run(script, Json{{"allow_addresses", {"127.0.0.2:" + std::to_string(https_->port())}}});
  const std::string& logs = o.logs;
  EXPECT_NE(logs.find(http + " is not allowed: an address is reached only when the operator "
                             "allows exactly it (egress.allow_addresses)"),
            std::string::npos)
      << logs;
  EXPECT_NE(logs.find(" narrowed=0"), std::string::npos) << logs;
  EXPECT_NE(logs.find(" unallowed=0"), std::string::npos) << logs;
  EXPECT_NE(logs.find("403"), std::string::npos) << logs;
  EXPECT_NE(logs.find("169.254.169.254:80 is not allowed"), std::string::npos) << logs;
  EXPECT_NE(logs.find("rebound.test:" + loopback_port_ + " is not in this session's egress policy"),
            std::string::npos)
      << logs;
  EXPECT_EQ(logs.find("origin saw"), std::string::npos) << logs;
  EXPECT_NE(logs.find(" direct"), std::string::npos) << logs;
  // Nothing reached any origin.
  EXPECT_TRUE(Seen().empty()) << Seen().front();
  EXPECT_EQ(unallowed_->accepted(), 0);
  auto events = EgressEvents(o);
  ASSERT_EQ(events.size(), 5u) << o.events.dump();
  for (const auto& e : events) {
    EXPECT_EQ(e.value("decision", ""), "denied") << e.dump();
    EXPECT_EQ(e.value("status", 0), 403) << e.dump();
  }
}

TEST_F(EgressTest, ANameThatResolvesToLoopbackIsRefusedOnItsAddress) {
  const std::string name = "rebound.test:" + loopback_port_;
  auto o =
      Run("curl -sS http://" + name + "/; echo \" rebound=$?\"; exit 0", Json{{"allow", {name}}});
  // 127.0.0.1 is the gateway's own host (its loopback interface) before it is loopback.
  EXPECT_NE(
      o.logs.find("rebound.test (127.0.0.1:" + loopback_port_ + ") is the gateway's own host"),
      std::string::npos)
      << o.logs;
  auto events = EgressEvents(o);
  ASSERT_EQ(events.size(), 1u) << o.events.dump();
  EXPECT_EQ(events[0].value("decision", ""), "refused");
}

TEST_F(EgressTest, WithoutAPolicyTheAgentHasNoProxyVariables) {
  auto o = Run("echo \"proxy [$http_proxy$HTTPS_PROXY$NO_PROXY]\"; exit 0", nullptr);
  EXPECT_NE(o.logs.find("proxy []"), std::string::npos) << o.logs;
  EXPECT_EQ(o.session["egress"], Json::object()) << o.session.dump();
}

TEST_F(EgressTest, TheGatewayAnswersOnlyOnASessionsOwnChannel) {
  // Any process of the host can reach the sandbox listener's TCP port: there, a proxy request
  // is refused, whatever it asks for, and nothing is connected.
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(sbx_->server().sandbox_port());
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  const std::string target = "127.0.0.2:" + std::to_string(http_->port());
  SendAll(fd, "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n\r\n");
  ::shutdown(fd, SHUT_WR);  // nothing more comes: the server need not linger
  std::string answer = ReadToEnd(fd);
  ::close(fd);
  EXPECT_TRUE(answer.starts_with("HTTP/1.1 403")) << answer;
  EXPECT_NE(answer.find("only from a sandbox, through its own channel"), std::string::npos)
      << answer;
  for (const auto& line : Seen()) ADD_FAILURE() << "an origin saw: " << line;
  EXPECT_EQ(http_->accepted(), 0);
}

TEST_F(EgressTest, ASessionCannotWidenTheOperatorsPolicy) {
  Json body = {{"task", "t"}, {"image", kToolsImage}, {"egress", {{"allow", {"*.example.com"}}}}};
  auto r = sbx_->server().Op(verb::post, "/v1/sessions", DumpJson(body));
  EXPECT_EQ(r.status, 400u) << r.body;
  EXPECT_NE(r.body.find("may only narrow"), std::string::npos) << r.body;
  body["egress"] = {{"allow_addresses", {"10.0.0.1:5432"}}};
  r = sbx_->server().Op(verb::post, "/v1/sessions", DumpJson(body));
  EXPECT_EQ(r.status, 400u) << r.body;
  body["egress"] = {{"policy", "nope"}};
  r = sbx_->server().Op(verb::post, "/v1/sessions", DumpJson(body));
  EXPECT_EQ(r.status, 400u) << r.body;
  EXPECT_NE(r.body.find("no egress policy \\\"nope\\\" is configured"), std::string::npos)
      << r.body;
}

// Credentials at the boundary: the session holds the placeholder of secret "origin"; curl and
// Python send it in the usual header and trust the usual variables, and the origin receives the
// real value, which never enters the sandbox. Sent anywhere else it is not replaced, and each
// connection says what the gateway did.
TEST_F(EgressTest, ASecretReachesOnlyItsHostAndNeverTheSandbox) {
  const std::string http = "origin.test:" + std::to_string(http_->port());
  const std::string https = "origin.test:" + std::to_string(https_->port());
  const std::string script =
      "echo \"placeholder=$ORIGIN_KEY\"; "
      "echo \"trust=$SSL_CERT_FILE $CURL_CA_BUNDLE $REQUESTS_CA_BUNDLE $NODE_EXTRA_CA_CERTS\"; "
      "echo \"private=$(grep -c PRIVATE $SSL_CERT_FILE)\"; "
      // curl and Python, each with nothing but the variables init set.
      "curl -sS -H \"Authorization: Bearer $ORIGIN_KEY\" https://" +
      https +
      "/curl; echo \" curl=$?\"; "
      "python3 -c 'import os, sys, urllib.request as u; "
      "r = u.Request(sys.argv[1], headers={\"Authorization\": \"Bearer \" + "
      "os.environ[\"ORIGIN_KEY\"]}); print(u.urlopen(r).read().decode())' https://" +
      https +
      "/python; echo \" python=$?\"; "
      // The placeholder to a host it does not belong to (plain HTTP): sent as it is.
      "curl -sS -H \"Authorization: Bearer $ORIGIN_KEY\" http://" +
      http +
      "/elsewhere; echo \" elsewhere=$?\"; "
      // Nothing of the sandbox holds the value: not its environment, not its files.
      "echo \"found=$(cat /proc/self/environ /run/airlock/* 2>/dev/null | grep -c " +
      kSecretValue +
      ")\"; "
      "exit 0";
  auto o = Run(script, Json{{"allow", {https, http}},
                            {"allow_addresses",
                             {"127.0.0.2:" + std::to_string(https_->port()),
                              "127.0.0.2:" + std::to_string(http_->port())}},
                            {"secrets", {"origin"}}});
  const std::string& logs = o.logs;
  EXPECT_NE(logs.find("placeholder=airlock-secret-origin"), std::string::npos) << logs;
  const std::string bundle = "/run/airlock/ca-bundle.pem";
  EXPECT_NE(logs.find("trust=" + bundle + " " + bundle + " " + bundle + " " + bundle),
            std::string::npos)
      << logs;
  EXPECT_NE(logs.find("private=0"), std::string::npos) << logs;
  EXPECT_NE(logs.find("origin saw GET /curl HTTP/1.1 curl=0"), std::string::npos) << logs;
  EXPECT_NE(logs.find("origin saw GET /python HTTP/1.1\n python=0"), std::string::npos) << logs;
  EXPECT_NE(logs.find("origin saw GET /elsewhere HTTP/1.1 elsewhere=0"), std::string::npos) << logs;
  EXPECT_NE(logs.find("found=0"), std::string::npos) << logs;
  EXPECT_EQ(logs.find(kSecretValue), std::string::npos) << logs;

  // The origin got the value over TLS, and the placeholder where it does not belong.
  int with_value = 0, with_placeholder = 0;
  for (const auto& head : Heads()) {
    if (head.find(std::string("Authorization: Bearer ") + kSecretValue + "\r\n") !=
        std::string::npos) {
      ++with_value;
      EXPECT_TRUE(head.starts_with("GET /curl ") || head.starts_with("GET /python ")) << head;
    }
    if (head.find("Authorization: Bearer airlock-secret-origin\r\n") != std::string::npos) {
      ++with_placeholder;
      EXPECT_TRUE(head.starts_with("GET /elsewhere ")) << head;
    }
  }
  EXPECT_EQ(with_value, 2);
  EXPECT_EQ(with_placeholder, 1);

  auto events = EgressEvents(o);
  ASSERT_EQ(events.size(), 3u) << o.events.dump();
  int intercepted = 0, refused = 0;
  for (const auto& e : events) {
    if (e.value("intercepted", false)) {
      ++intercepted;
      EXPECT_EQ(e["secrets_added"], Json::array({"origin"})) << e.dump();
      EXPECT_EQ(e.value("status", 0), 200) << e.dump();
    }
    if (e.contains("placeholders_refused")) {
      ++refused;
      EXPECT_EQ(e.value("path", ""), "/elsewhere") << e.dump();
      EXPECT_EQ(e["placeholders_refused"], Json::array({"origin"})) << e.dump();
    }
  }
  EXPECT_EQ(intercepted, 2) << o.events.dump();
  EXPECT_EQ(refused, 1) << o.events.dump();
  // Neither the events nor the server's log hold the value or the CA's key.
  EXPECT_EQ(o.events.dump().find(kSecretValue), std::string::npos);
  const std::string server_log = sbx_->server().log();
  EXPECT_EQ(server_log.find(kSecretValue), std::string::npos);
  EXPECT_EQ(server_log.find("PRIVATE KEY"), std::string::npos);
  EXPECT_NE(server_log.find("placeholder was sent where it does not belong"), std::string::npos);
}

TEST_F(EgressTest, ASessionCannotNameASecretTheOperatorDidNotConfigure) {
  Json body = {{"task", "x"},
               {"image", kToolsImage},
               {"command", {"/bin/true"}},
               {"egress", {{"allow_addresses", Json::array()}, {"secrets", {"github"}}}}};
  auto r = sbx_->server().Op(verb::post, "/v1/sessions", DumpJson(body));
  EXPECT_EQ(r.status, 400u) << r.body;
  EXPECT_NE(r.body.find("no secret \\\"github\\\" is configured (configured: origin)"),
            std::string::npos)
      << r.body;
  // Nor take a placeholder's variable for its own.
  body["egress"] = {{"secrets", {"origin"}}};
  body["env"] = {{"ORIGIN_KEY", "mine"}};
  r = sbx_->server().Op(verb::post, "/v1/sessions", DumpJson(body));
  EXPECT_EQ(r.status, 400u) << r.body;
  EXPECT_NE(r.body.find("holds the placeholder of secret origin"), std::string::npos) << r.body;
}

}  // namespace
}  // namespace airlock::testing
