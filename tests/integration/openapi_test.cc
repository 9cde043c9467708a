// docs/openapi.json against the running server: the operator listener serves the document
// built into the binary; the routes of both listeners are exactly the document's operations;
// and real answers of every route (successes, refusals, errors) are what the document says:
// a documented status, the documented headers, a body that validates against the schema.
#include <future>
#include <set>

#include "controlplane/openapi.h"
#include "tests/integration/harness.h"
#include "tests/support/openapi_spec.h"

namespace airlock::testing {
namespace {

using http::verb;

const OpenApiSpec& Spec() {
  static const OpenApiSpec spec = [] {
    auto s = OpenApiSpec::Parse(controlplane::OpenApiDocument());
    if (!s) throw std::runtime_error("docs/openapi.json: " + s.error().message);
    return *s;
  }();
  return spec;
}

std::string ListenerOf(const OperationKey& key) {
  const Json* op = Spec().Operation(key);
  if (!op || !op->contains("tags") || (*op)["tags"].empty()) return "";
  return (*op)["tags"][0];
}

std::set<OperationKey> Documented(const std::string& listener) {
  std::set<OperationKey> out;
  for (const auto& op : Spec().Operations()) {
    if (ListenerOf(op) == listener) out.insert(op);
  }
  return out;
}

std::set<OperationKey> Routed(const std::vector<controlplane::RouteInfo>& routes) {
  std::set<OperationKey> out;
  for (const auto& r : routes) out.insert({std::string(http::to_string(r.method)), r.pattern});
  return out;
}

std::string Describe(const std::set<OperationKey>& ops) {
  std::string out;
  for (const auto& op : ops) out += "\n  " + op.method + " " + op.path;
  return out;
}

// A raw HTTP/1.1 answer (Connection: close) as an HttpResult.
HttpResult ParseRaw(const std::string& raw) {
  HttpResult r;
  size_t end = raw.find("\r\n\r\n");
  if (end == std::string::npos || raw.size() < 12) return r;
  r.status = static_cast<unsigned>(std::stoi(raw.substr(9, 3)));
  size_t pos = raw.find("\r\n") + 2;
  while (pos < end) {
    size_t eol = raw.find("\r\n", pos);
    std::string line = raw.substr(pos, eol - pos);
    size_t colon = line.find(':');
    if (colon != std::string::npos) {
      size_t v = line.find_first_not_of(' ', colon + 1);
      r.headers[line.substr(0, colon)] = v == std::string::npos ? "" : line.substr(v);
    }
    pos = eol + 2;
  }
  r.body = raw.substr(end + 4);
  return r;
}

constexpr const char* kUnknownId = "ses_aaaaaaaaaaaaaaaaaaaaaaaa";

// A request path for a path template: {id} and {session} an unknown session, {name} a file.
std::string Concrete(std::string path) {
  for (auto [param, value] : {std::pair{"{id}", kUnknownId}, std::pair{"{session}", kUnknownId},
                              std::pair{"{name}", "a.txt"}}) {
    if (auto at = path.find(param); at != std::string::npos)
      path.replace(at, std::string(param).size(), value);
  }
  return path;
}

TEST(OpenApiDocumentTest, IsOpenApi31AndEverySchemaIsOneTheTestsCanCheck) {
  EXPECT_EQ(Spec().doc()["openapi"], "3.1.0");
  for (const auto& problem : Spec().Lint()) ADD_FAILURE() << problem;
}

TEST(OpenApiDocumentTest, EveryOperationNamesItsListenerAndItsCredential) {
  const Json& doc = Spec().doc();
  ASSERT_EQ(doc["security"], Json::parse(R"([{"operatorKey": []}])"));
  for (const auto& key : Spec().Operations()) {
    const Json& op = *Spec().Operation(key);
    const Json& item = doc["paths"][key.path];
    const std::string where = key.method + " " + key.path;
    ASSERT_TRUE(op.contains("tags") && op["tags"].size() == 1) << where;
    const std::string listener = op["tags"][0];
    EXPECT_TRUE(op.contains("x-airlock-contract")) << where;
    if (listener == "operator") {
      EXPECT_FALSE(key.path.starts_with("/sandbox/")) << where;
      EXPECT_FALSE(item.contains("servers")) << where << ": the operator server is the default";
      // Every /v1/ route needs the operator key (the default); the others none.
      if (key.path.starts_with("/v1/")) {
        EXPECT_FALSE(op.contains("security")) << where;
      } else {
        EXPECT_EQ(op.value("security", Json()), Json::array()) << where;
      }
    } else {
      ASSERT_EQ(listener, "sandbox") << where;
      // The OpenAI face keeps OpenAI's paths, so that its clients work unchanged.
      EXPECT_TRUE(key.path.starts_with("/sandbox/v1/") || key.path == "/v1/chat/completions" ||
                  key.path == "/v1/models" || key.path == "/v1/messages" ||
                  key.path == "/v1/responses")
          << where;
      ASSERT_TRUE(item.contains("servers")) << where;
      EXPECT_NE(item["servers"][0]["url"].get<std::string>().find(":7401"), std::string::npos);
      // Signed file URLs carry their credential in the query, and a sandbox's own socket is
      // the credential of its identity; the rest the session token.
      Json want = key.path == "/sandbox/v1/files/{session}/{name}" ||
                          key.path == "/sandbox/v1/identity" ||
                          key.path == "/sandbox/v1/demo/{page}"
                      ? Json::array()
                      : Json::parse(R"([{"sessionToken": []}])");
      EXPECT_EQ(op.value("security", Json()), want) << where;
    }
  }
}

class OpenApiTest : public ::testing::Test {
 protected:
  // Limits small enough for a test to reach them; the model alias is the built-in scripted
  // demo, so LLM calls need no upstream.
  TestServer server_{[](controlplane::Config& c) {
    controlplane::ApplyDefaultModel(c, [](const char*) -> const char* { return nullptr; });
    c.max_task_bytes = 4096;
    c.max_message_bytes = 4096;
    c.events.rate_per_s = 0.001;
    c.events.burst = 3;
  }};

  // One exchange, checked against the document and counted.
  HttpResult Call(uint16_t port, verb m, const std::string& target, const std::string& bearer,
                  const std::string& body = "", std::map<std::string, std::string> headers = {}) {
    HttpResult r = HttpCall(port, m, target, bearer, body, std::move(headers));
    Record(port == server_.op_port() ? "operator" : "sandbox", std::string(http::to_string(m)),
           target, r);
    return r;
  }
  HttpResult Op(verb m, const std::string& target, const std::string& body = "",
                std::map<std::string, std::string> headers = {}) {
    return Call(server_.op_port(), m, target, server_.key(), body, std::move(headers));
  }
  HttpResult Sb(verb m, const std::string& target, const std::string& token,
                const std::string& body = "", std::map<std::string, std::string> headers = {}) {
    return Call(server_.sb_port(), m, target, token, body, std::move(headers));
  }

  void Record(const std::string& listener, const std::string& method, const std::string& target,
              const HttpResult& r) {
    OperationKey op;
    auto errors = Spec().Check(Exchange{method, target, r.status, r.headers, r.body}, &op);
    for (const auto& e : errors) ADD_FAILURE() << e << "\n  body: " << r.body.substr(0, 400);
    if (!errors.empty()) return;
    EXPECT_EQ(ListenerOf(op), listener) << method << " " << target;
    seen_[op].insert(r.status);
  }

  // A session created through the API, and its token as the backend received it.
  std::pair<std::string, std::string> NewSession(const std::string& body) {
    auto r = Op(verb::post, "/v1/sessions", body);
    if (r.status != 201) throw std::runtime_error("create: " + r.body);
    std::string id = r.json()["id"];
    std::lock_guard l(server_.backend().mu);
    return {id, server_.backend().specs.at(id).token.Reveal()};
  }

  std::map<OperationKey, std::set<unsigned>> seen_;
};

TEST_F(OpenApiTest, TheOperatorListenerServesTheBuiltInDocumentWithoutAKey) {
  auto r = HttpCall(server_.op_port(), verb::get, "/openapi.json");
  EXPECT_EQ(r.status, 200u);
  EXPECT_EQ(r.headers["Content-Type"], "application/json");
  EXPECT_EQ(r.body, controlplane::OpenApiDocument());
  // The sandbox listener serves /sandbox/v1/ only.
  EXPECT_EQ(HttpCall(server_.sb_port(), verb::get, "/openapi.json").status, 404u);
}

TEST_F(OpenApiTest, EveryRouteIsDocumentedAndEveryOperationIsRouted) {
  auto check = [](const std::set<OperationKey>& routed, const std::set<OperationKey>& documented,
                  const std::string& listener) {
    std::set<OperationKey> undocumented, unrouted;
    std::set_difference(routed.begin(), routed.end(), documented.begin(), documented.end(),
                        std::inserter(undocumented, undocumented.end()));
    std::set_difference(documented.begin(), documented.end(), routed.begin(), routed.end(),
                        std::inserter(unrouted, unrouted.end()));
    EXPECT_TRUE(undocumented.empty())
        << listener << " routes missing from docs/openapi.json:" << Describe(undocumented);
    EXPECT_TRUE(unrouted.empty()) << "docs/openapi.json documents " << listener
                                  << " operations no route serves:" << Describe(unrouted);
  };
  auto op = Routed(server_.cp().OperatorRoutes());
  auto sb = Routed(server_.cp().SandboxRoutes());
  EXPECT_GE(op.size(), 18u);
  EXPECT_GE(sb.size(), 9u);
  check(op, Documented("operator"), "operator");
  check(sb, Documented("sandbox"), "sandbox");
}

TEST_F(OpenApiTest, AnUndocumentedMethodAnswers405AllowingTheDocumentedOnes) {
  std::set<std::string> paths;
  for (const auto& op : Spec().Operations()) paths.insert(op.path);
  for (const auto& path : paths) {
    const std::string concrete = Concrete(path);
    const bool sandbox = ListenerOf(OperationKey{Spec().Methods(path).front(), path}) == "sandbox";
    uint16_t port = sandbox ? server_.sb_port() : server_.op_port();
    auto r = HttpCall(port, verb::patch, concrete, server_.key());
    EXPECT_EQ(r.status, 405u) << path;
    EXPECT_EQ(r.error_code(), "method_not_allowed") << path;
    std::set<std::string> allowed, documented;
    std::string allow = r.headers["Allow"];
    for (size_t pos = 0; pos < allow.size();) {
      size_t comma = allow.find(", ", pos);
      allowed.insert(allow.substr(pos, comma - pos));
      pos = comma == std::string::npos ? allow.size() : comma + 2;
    }
    for (const auto& m : Spec().Methods(path)) documented.insert(m);
    EXPECT_EQ(allowed, documented) << path;
  }
  // Outside the document: a JSON 404 of the documented error shape.
  for (uint16_t port : {server_.op_port(), server_.sb_port()}) {
    auto r = HttpCall(port, verb::get, "/v2/nothing", server_.key());
    EXPECT_EQ(r.status, 404u);
    JsonSchema v(Spec().doc());
    auto errors = v.Validate(r.json(), Json{{"$ref", "#/components/schemas/Error"}});
    EXPECT_TRUE(errors.empty()) << errors.front();
  }
}

TEST_F(OpenApiTest, EveryOperationAnswersAsDocumented) {
  const uint16_t op_port = server_.op_port();
  // ---------------------------------------------------------------- no key needed
  Call(op_port, verb::get, "/healthz", "");
  Call(op_port, verb::get, "/readyz", "");  // 200
  {
    std::lock_guard l(server_.backend().mu);
    server_.backend().probe_error = "the runtime went away";
  }
  Call(op_port, verb::get, "/readyz", "");  // 503
  {
    std::lock_guard l(server_.backend().mu);
    server_.backend().probe_error.clear();
  }
  Call(op_port, verb::get, "/metrics", "");
  Call(op_port, verb::get, "/openapi.json", "");
  Call(op_port, verb::get, "/v1/sessions", "");                 // 401
  Call(op_port, verb::get, "/v1/sessions", "aok_not_the_key");  // 401

  // ---------------------------------------------------------------- sessions
  EXPECT_EQ(Op(verb::post, "/v1/sessions", R"({"task":"t","bogus":1})").status, 400u);
  EXPECT_EQ(Op(verb::post, "/v1/sessions", DumpJson(Json{{"task", std::string(5000, 'x')}})).status,
            413u);
  auto [a, ta] = NewSession(
      R"({"task":"walk the API","limits":{"timeout_s":600,"memory_mb":256},"metadata":{"k":"v"},"models":["default"]})");
  auto [b, tb] = NewSession(R"({"task":"spend it all","limits":{"max_tokens":1}})");
  auto [c, tc] = NewSession(R"({"task":"talk a lot","command":["/bin/agent","--fast"]})");
  auto [d, td] = NewSession(R"({"task":"wait"})");
  const std::string sa = "/v1/sessions/" + a;

  // Pagination: newest first, `before` the last id of the page.
  auto page1 = Op(verb::get, "/v1/sessions?limit=2");
  ASSERT_EQ(page1.json()["sessions"].size(), 2u);
  EXPECT_EQ(page1.json()["sessions"][0]["id"], d);
  auto page2 = Op(verb::get, "/v1/sessions?limit=2&before=" +
                                 page1.json()["sessions"][1]["id"].get<std::string>());
  ASSERT_EQ(page2.json()["sessions"].size(), 2u);
  EXPECT_EQ(page2.json()["sessions"][1]["id"], a);
  Op(verb::get, "/v1/sessions?state=running");
  EXPECT_EQ(Op(verb::get, "/v1/sessions?state=bogus").status, 400u);
  EXPECT_EQ(Op(verb::get, "/v1/sessions?limit=0").status, 400u);
  EXPECT_EQ(Op(verb::get, std::string("/v1/sessions?before=") + kUnknownId).status, 400u);
  EXPECT_EQ(Op(verb::get, sa).status, 200u);
  EXPECT_EQ(Op(verb::get, "/v1/sessions/nope").status, 404u);

  // ---------------------------------------------------------------- the sandbox's side
  EXPECT_EQ(Sb(verb::get, "/sandbox/v1/history", ta).status, 200u);
  EXPECT_EQ(Sb(verb::get, "/sandbox/v1/inbox?wait=0", ta).status, 200u);
  EXPECT_EQ(Sb(verb::get, "/sandbox/v1/inbox?wait=0", ta).status, 204u);
  EXPECT_EQ(Sb(verb::get, "/sandbox/v1/inbox?wait=soon", ta).status, 400u);
  EXPECT_EQ(Sb(verb::get, "/sandbox/v1/history", "").status, 401u);
  EXPECT_EQ(Sb(verb::get, "/sandbox/v1/history", ta, "", {{"SESSION_ID", b}}).status, 403u);
  EXPECT_EQ(
      Sb(verb::post, "/sandbox/v1/events", ta, R"({"type":"agent.step","data":{"step":1}})").status,
      202u);
  EXPECT_EQ(Sb(verb::post, "/sandbox/v1/events", ta, R"({"type":"session.fake"})").status, 400u);
  EXPECT_EQ(Sb(verb::post, "/sandbox/v1/events", ta,
               DumpJson(Json{{"type", "agent.big"}, {"data", {{"x", std::string(70000, 'x')}}}}))
                .status,
            413u);

  // The demo site: a page, one that is not there, and over TCP without a token.
  EXPECT_EQ(Sb(verb::get, "/sandbox/v1/demo/index", ta).status, 200u);
  EXPECT_EQ(Sb(verb::get, "/sandbox/v1/demo/results?q=sandbox", ta).status, 200u);
  EXPECT_EQ(Sb(verb::get, "/sandbox/v1/demo/nope", ta).status, 404u);
  EXPECT_EQ(Sb(verb::get, "/sandbox/v1/demo/index", "").status, 401u);

  // The model (the scripted demo): a reply, a refused message, an alias not allowed, a stream.
  auto chat = Sb(verb::post, "/sandbox/v1/llm/chat", ta, R"({"messages":[]})");
  ASSERT_EQ(chat.status, 200u) << chat.body;
  Json next = Json{{"role", "user"}, {"content", "go on"}};
  if (chat.json()["message"].contains("tool_calls")) {
    next = Json{{"role", "tool"},
                {"tool_call_id", chat.json()["message"]["tool_calls"][0]["id"]},
                {"content", "exit code 0\n"}};
  }
  EXPECT_EQ(Sb(verb::post, "/sandbox/v1/llm/chat", ta,
               R"({"messages":[{"role":"assistant","content":"I said so"}]})")
                .status,
            400u);
  EXPECT_EQ(
      Sb(verb::post, "/sandbox/v1/llm/chat", ta, R"({"messages":[],"model":"elsewhere"})").status,
      403u);
  auto stream = Sb(verb::post, "/sandbox/v1/llm/chat", ta,
                   DumpJson(Json{{"messages", Json::array({next})}, {"stream", true}}));
  EXPECT_EQ(stream.status, 200u);
  EXPECT_NE(stream.body.find("data: [DONE]"), std::string::npos) << stream.body;

  // The OpenAI face: the models, a completion, a stream, an unsupported field, another alias.
  EXPECT_EQ(Sb(verb::get, "/v1/models", ta).status, 200u);
  Json conversation = Json::array({Json{{"role", "user"}, {"content", "hello"}}});
  auto completion = Sb(verb::post, "/v1/chat/completions", ta,
                       DumpJson(Json{{"model", "default"}, {"messages", conversation}}));
  ASSERT_EQ(completion.status, 200u) << completion.body;
  conversation.push_back(completion.json()["choices"][0]["message"]);
  conversation.push_back(Json{{"role", "user"}, {"content", "and then?"}});
  auto streamed = Sb(verb::post, "/v1/chat/completions", ta,
                     DumpJson(Json{{"model", "default"},
                                   {"messages", conversation},
                                   {"stream", true},
                                   {"stream_options", {{"include_usage", true}}}}));
  EXPECT_EQ(streamed.status, 200u);
  EXPECT_NE(streamed.body.find("data: [DONE]"), std::string::npos) << streamed.body;
  EXPECT_EQ(Sb(verb::post, "/v1/chat/completions", ta,
               R"({"model":"default","messages":[{"role":"user","content":"x"}],"logprobs":true})")
                .status,
            400u);
  EXPECT_EQ(Sb(verb::post, "/v1/chat/completions", ta,
               R"({"model":"elsewhere","messages":[{"role":"user","content":"x"}]})")
                .status,
            403u);
  // The Anthropic face: a message, a stream, a missing max_tokens.
  Json anthropic{{"model", "default"},
                 {"max_tokens", 100},
                 {"messages", Json::array({Json{{"role", "user"}, {"content", "hello"}}})}};
  EXPECT_EQ(Sb(verb::post, "/v1/messages", ta, DumpJson(anthropic)).status, 200u);
  anthropic["stream"] = true;
  auto anthropic_events = Sb(verb::post, "/v1/messages", ta, DumpJson(anthropic));
  EXPECT_EQ(anthropic_events.status, 200u);
  EXPECT_NE(anthropic_events.body.find("event: message_stop"), std::string::npos)
      << anthropic_events.body;
  anthropic.erase("max_tokens");
  EXPECT_EQ(Sb(verb::post, "/v1/messages", ta, DumpJson(anthropic)).status, 400u);
  // The Responses API: a response, a stream, a stateful request refused.
  Json responses{{"model", "default"}, {"instructions", "Be brief."}, {"input", "hello"}};
  auto response = Sb(verb::post, "/v1/responses", ta, DumpJson(responses));
  EXPECT_EQ(response.status, 200u) << response.body;
  responses["stream"] = true;
  auto response_events = Sb(verb::post, "/v1/responses", ta, DumpJson(responses));
  EXPECT_EQ(response_events.status, 200u);
  EXPECT_NE(response_events.body.find("event: response.completed"), std::string::npos)
      << response_events.body;
  responses["previous_response_id"] = "resp_1";
  EXPECT_EQ(Sb(verb::post, "/v1/responses", ta, DumpJson(responses)).status, 400u);

  // Files: presign, upload and fetch through the signed URLs, then the operator's view.
  auto presign_put = Sb(verb::post, "/sandbox/v1/files/presign", ta,
                        R"({"name":"report.md","method":"PUT","size":6})");
  ASSERT_EQ(presign_put.status, 200u) << presign_put.body;
  auto path_of = [](const std::string& url) { return url.substr(url.find("/sandbox/v1/files/")); };
  const std::string put_url = path_of(presign_put.json()["url"]);
  EXPECT_EQ(Sb(verb::put, put_url, "", "hello\n").status, 201u);
  auto presign_get = Sb(verb::post, "/sandbox/v1/files/presign", ta,
                        R"({"name":"report.md","method":"GET","expires_s":60})");
  ASSERT_EQ(presign_get.status, 200u);
  const std::string get_url = path_of(presign_get.json()["url"]);
  EXPECT_EQ(Sb(verb::get, get_url, "").body, "hello\n");
  EXPECT_EQ(Sb(verb::get, get_url, "", "", {{"Range", "bytes=0-1"}}).status, 206u);
  EXPECT_EQ(Sb(verb::get, get_url, "", "", {{"Range", "bytes=100-"}}).status, 416u);
  EXPECT_EQ(Sb(verb::head, get_url, "").status, 200u);
  EXPECT_EQ(Sb(verb::head, get_url, "", "", {{"Range", "bytes=1-2"}}).status, 206u);
  EXPECT_EQ(Sb(verb::head, get_url, "", "", {{"Range", "bytes=9-"}}).status, 416u);
  auto presign_none =
      Sb(verb::post, "/sandbox/v1/files/presign", ta, R"({"name":"never.txt","method":"GET"})");
  EXPECT_EQ(Sb(verb::get, path_of(presign_none.json()["url"]), "").status, 404u);
  EXPECT_EQ(Sb(verb::head, path_of(presign_none.json()["url"]), "").status, 404u);
  EXPECT_EQ(Sb(verb::put, put_url, "", "more than six bytes").status, 413u);
  std::string tampered = get_url;
  tampered.back() = tampered.back() == 'A' ? 'B' : 'A';
  EXPECT_EQ(Sb(verb::get, tampered, "").status, 403u);
  EXPECT_EQ(Sb(verb::head, tampered, "").status, 403u);
  std::string tampered_put = put_url;
  tampered_put.back() = tampered_put.back() == 'A' ? 'B' : 'A';
  EXPECT_EQ(Sb(verb::put, tampered_put, "", "hello\n").status, 403u);
  EXPECT_EQ(Sb(verb::post, "/sandbox/v1/files/presign", ta, R"({"name":".hidden","method":"PUT"})")
                .status,
            400u);
  EXPECT_EQ(Sb(verb::post, "/sandbox/v1/files/presign", ta,
               R"({"name":"huge.bin","method":"PUT","size":1099511627776})")
                .status,
            413u);
  EXPECT_EQ(Op(verb::get, sa + "/files").json()["files"].size(), 1u);
  EXPECT_EQ(Op(verb::get, sa + "/files/report.md").body, "hello\n");
  EXPECT_EQ(Op(verb::get, sa + "/files/report.md", "", {{"Range", "bytes=-2"}}).status, 206u);
  EXPECT_EQ(Op(verb::get, sa + "/files/report.md", "", {{"Range", "bytes=6-"}}).status, 416u);
  EXPECT_EQ(Op(verb::head, sa + "/files/report.md").status, 200u);
  EXPECT_EQ(Op(verb::head, sa + "/files/report.md", "", {{"Range", "bytes=0-0"}}).status, 206u);
  EXPECT_EQ(Op(verb::head, sa + "/files/report.md", "", {{"Range", "bytes=7-"}}).status, 416u);
  EXPECT_EQ(Op(verb::head, sa + "/files/%2e%2e").status, 400u);
  EXPECT_EQ(Op(verb::head, sa + "/files/missing.md").status, 404u);
  EXPECT_EQ(Op(verb::get, sa + "/files/missing.md").status, 404u);
  EXPECT_EQ(Op(verb::get, sa + "/files/%2e%2e").status, 400u);

  // The conversation, follow-ups, events and their pages.
  EXPECT_EQ(Op(verb::get, sa + "/messages").status, 200u);
  EXPECT_EQ(Op(verb::post, sa + "/messages", R"({"content":"and the rest"})").status, 202u);
  EXPECT_EQ(Op(verb::post, sa + "/messages", R"({"content":""})").status, 400u);
  EXPECT_EQ(
      Op(verb::post, sa + "/messages", DumpJson(Json{{"content", std::string(5000, 'x')}})).status,
      413u);
  const std::map<std::string, std::string> json_accept{{"Accept", "application/json"}};
  auto events = Op(verb::get, sa + "/events", "", json_accept);
  ASSERT_GE(events.json().size(), 4u);
  auto first = Op(verb::get, sa + "/events?limit=2", "", json_accept).json();
  auto second = Op(verb::get, sa + "/events?limit=2&after=2", "", json_accept).json();
  ASSERT_EQ(first.size(), 2u);
  ASSERT_EQ(second.size(), 2u);
  EXPECT_EQ(first[1]["seq"], 2);
  EXPECT_EQ(second[0]["seq"], 3);
  EXPECT_EQ(Op(verb::get, sa + "/events?after=x", "", json_accept).status, 400u);
  EXPECT_EQ(Op(verb::get, sa + "/events?limit=0", "", json_accept).status, 400u);

  // State changes.
  EXPECT_EQ(Op(verb::post, sa + "/suspend").status, 200u);
  EXPECT_EQ(Op(verb::post, sa + "/suspend").status, 409u);
  EXPECT_EQ(Op(verb::post, sa + "/resume").status, 200u);
  EXPECT_EQ(Op(verb::post, sa + "/resume").status, 409u);

  // Logs, usage, retention.
  EXPECT_EQ(Op(verb::get, sa + "/logs").body, "test log\n");
  EXPECT_EQ(Op(verb::get, "/v1/usage").status, 200u);
  EXPECT_EQ(Op(verb::get, "/v1/usage?since=2020-01-01T00:00:00Z&until=4102444800000").status, 200u);
  EXPECT_EQ(Op(verb::get, "/v1/usage?since=yesterday").status, 400u);
  EXPECT_EQ(Op(verb::post, "/v1/admin/gc", "{}").status, 400u);  // no retention configured
  EXPECT_EQ(Op(verb::post, "/v1/admin/gc", R"({"older_than":"1h","dry_run":true})").status, 200u);
  EXPECT_EQ(Op(verb::post, "/v1/admin/gc", R"({"older_than":"1h","dry_run":"yes"})").status, 400u);

  // The sandbox API over the session's own Unix socket.
  {
    int fd = RawConnectUnix(server_.home() + "/run/" + a + "/control.sock");
    ASSERT_GE(fd, 0);
    WriteAll(fd, "GET /sandbox/v1/history HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + ta +
                     "\r\nConnection: close\r\n\r\n");
    auto r = ParseRaw(ReadUntilClose(fd));
    ::close(fd);
    EXPECT_EQ(r.status, 200u);
    Record("sandbox", "GET", "/sandbox/v1/history", r);
  }

  // Identity after start: the sandbox of a backend that delivers it over the channel asks on
  // its own socket, once; TCP is not a sandbox's channel.
  {
    {
      std::lock_guard l(server_.backend().mu);
      server_.backend().identity_over_channel = true;
    }
    auto created = Op(verb::post, "/v1/sessions", R"({"task":"who am I"})");
    {
      std::lock_guard l(server_.backend().mu);
      server_.backend().identity_over_channel = false;
    }
    ASSERT_EQ(created.status, 201u) << created.body;
    EXPECT_EQ(created.json()["state"], "starting");
    const std::string e = created.json()["id"];
    for (unsigned want : {200u, 409u}) {
      int fd = RawConnectUnix(server_.home() + "/run/" + e + "/control.sock");
      ASSERT_GE(fd, 0);
      WriteAll(fd, "GET /sandbox/v1/identity HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
      auto r = ParseRaw(ReadUntilClose(fd));
      ::close(fd);
      EXPECT_EQ(r.status, want) << r.body;
      Record("sandbox", "GET", "/sandbox/v1/identity", r);
    }
    EXPECT_EQ(Sb(verb::get, "/sandbox/v1/identity", ta).status, 403u);
    EXPECT_EQ(Op(verb::delete_, "/v1/sessions/" + e).status, 200u);
  }

  // Finishing, and what answers after the end.
  EXPECT_EQ(Sb(verb::post, "/sandbox/v1/finish", ta, R"({"status":"maybe"})").status, 400u);
  EXPECT_EQ(Sb(verb::post, "/sandbox/v1/finish", ta,
               DumpJson(Json{{"status", "succeeded"}, {"result", std::string(70000, 'x')}}))
                .status,
            413u);
  EXPECT_EQ(
      Sb(verb::post, "/sandbox/v1/finish", ta, R"({"status":"succeeded","result":"done"})").status,
      200u);
  EXPECT_EQ(Sb(verb::get, "/sandbox/v1/inbox", ta).status, 401u);
  EXPECT_EQ(Sb(verb::post, "/sandbox/v1/finish", ta, R"({"status":"failed"})").status, 401u);
  EXPECT_EQ(Op(verb::post, sa + "/messages", R"({"content":"too late"})").status, 409u);
  EXPECT_EQ(Op(verb::post, sa + "/resume").status, 409u);
  EXPECT_EQ(Sb(verb::get, get_url, "").status, 410u);
  EXPECT_EQ(Sb(verb::head, get_url, "").status, 410u);
  EXPECT_EQ(Sb(verb::put, put_url, "", "again\n").status, 410u);
  EXPECT_EQ(Op(verb::get, sa + "/files/report.md").status, 200u);  // the operator's still works
  auto sse = Op(verb::get, sa + "/events?after=1");  // ended: the stream ends after the last
  EXPECT_EQ(sse.status, 200u);
  EXPECT_NE(sse.body.find("event: session.state"), std::string::npos) << sse.body;
  EXPECT_EQ(Op(verb::get, sa + "/events", "", {{"Last-Event-ID", "3"}}).status, 200u);
  EXPECT_EQ(Op(verb::get, sa + "/logs?follow=1").status, 200u);
  EXPECT_EQ(Op(verb::delete_, sa).json()["state"], "succeeded");  // idempotent

  // A spent budget.
  EXPECT_EQ(Sb(verb::get, "/sandbox/v1/inbox", tb).status, 200u);
  EXPECT_EQ(Sb(verb::post, "/sandbox/v1/llm/chat", tb, R"({"messages":[]})").status, 200u);
  EXPECT_EQ(Sb(verb::post, "/sandbox/v1/llm/chat", tb, R"({"messages":[]})").status, 402u);
  EXPECT_EQ(Op(verb::delete_, "/v1/sessions/" + b).status, 200u);

  // The event rate (a burst of 3, then next to nothing).
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(Sb(verb::post, "/sandbox/v1/events", tc, R"({"type":"agent.tick"})").status, 202u);
  }
  auto limited = Sb(verb::post, "/sandbox/v1/events", tc, R"({"type":"agent.tick"})");
  EXPECT_EQ(limited.status, 429u);
  EXPECT_EQ(limited.error_code(), "rate_limited");
  EXPECT_FALSE(limited.headers["Retry-After"].empty());

  // A long poll that the session's end answers.
  EXPECT_EQ(Sb(verb::get, "/sandbox/v1/inbox", td).status, 200u);
  auto poll = std::async(std::launch::async, [&] {
    return HttpCall(server_.sb_port(), verb::get, "/sandbox/v1/inbox?wait=30", td);
  });
  ASSERT_TRUE(WaitForMetric(server_, "airlock_inbox_waiting 1"));
  EXPECT_EQ(Op(verb::delete_, "/v1/sessions/" + d).status, 200u);
  auto gone = poll.get();
  Record("sandbox", "GET", "/sandbox/v1/inbox?wait=30", gone);
  EXPECT_EQ(gone.status, 410u);

  // Each operation without its credential; with the token of a live session but another
  // session's SESSION_ID header; with an unknown session id.
  for (const auto& key : Spec().Operations()) {
    const Json& op = *Spec().Operation(key);
    const Json& responses = op["responses"];
    const verb m = http::string_to_verb(key.method);
    const std::string body = key.method != "POST"                       ? ""
                             : key.path == "/v1/sessions/{id}/messages" ? R"({"content":"hi"})"
                                                                        : "{}";
    const bool sandbox = ListenerOf(key) == "sandbox";
    const uint16_t port = sandbox ? server_.sb_port() : server_.op_port();
    const std::string target = Concrete(key.path);
    if (responses.contains("401")) {
      EXPECT_EQ(Call(port, m, target, "", body).status, 401u) << key.method << " " << key.path;
    }
    if (sandbox && responses.contains("403") && op.value("security", Json()) != Json::array()) {
      EXPECT_EQ(Call(port, m, target, tc, body, {{"SESSION_ID", a}}).status, 403u)
          << key.method << " " << key.path;
    }
    if (!sandbox && key.path.find("{id}") != std::string::npos) {
      EXPECT_EQ(Op(m, target, body).status, 404u) << key.method << " " << key.path;
    }
  }
  // A body over the route's limit, refused before it is read.
  EXPECT_EQ(
      Sb(verb::post, "/sandbox/v1/llm/chat", tc,
         DumpJson(Json{{"messages", Json::array({Json{{"role", "user"},
                                                      {"content", std::string(1100000, 'x')}}})}}))
          .status,
      413u);
  EXPECT_EQ(
      Op(verb::post, "/v1/admin/gc", DumpJson(Json{{"older_than", std::string(5000, '1')}})).status,
      413u);

  // Every operation of the document was exercised; statuses that were not are listed (they
  // need a failing backend, provider or disk, or a race).
  std::string missing, unexercised;
  size_t statuses = 0, exercised = 0;
  for (const auto& key : Spec().Operations()) {
    auto it = seen_.find(key);
    if (it == seen_.end()) {
      missing += "\n  " + key.method + " " + key.path;
      continue;
    }
    std::string statuses_not_seen;
    for (const auto& [status, r] : (*Spec().Operation(key))["responses"].items()) {
      ++statuses;
      if (it->second.count(static_cast<unsigned>(std::stoi(status)))) {
        ++exercised;
      } else {
        statuses_not_seen += " " + status;
      }
    }
    if (!statuses_not_seen.empty())
      unexercised += "\n  " + key.method + " " + key.path + ":" + statuses_not_seen;
  }
  EXPECT_TRUE(missing.empty()) << "operations no request of this test reached:" << missing;
  std::cout << "[ openapi  ] " << seen_.size() << " of " << Spec().Operations().size()
            << " operations, " << exercised << " of " << statuses
            << " documented statuses exercised; not exercised:" << unexercised << "\n";
}

}  // namespace
}  // namespace airlock::testing
