#include "tests/support/openapi_spec.h"

#include <gtest/gtest.h>

namespace airlock::testing {
namespace {

constexpr std::string_view kDoc = R"({
  "openapi": "3.1.0",
  "info": {"title": "t", "version": "1"},
  "paths": {
    "/things/{id}": {
      "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
      "get": {"operationId": "getThing", "responses": {
        "200": {"description": "ok", "headers": {"X-Id": {"required": true, "schema": {"type": "string"}}},
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}},
                            "text/event-stream": {"schema": {"type": "string"},
                                                  "x-sse-data": {"$ref": "#/components/schemas/Thing"}}}},
        "204": {"description": "nothing"},
        "429": {"$ref": "#/components/responses/Busy"}}},
      "delete": {"operationId": "deleteThing", "responses": {"200": {"description": "ok"}}}
    },
    "/things/special": {
      "get": {"operationId": "getSpecial", "responses": {"200": {"description": "ok"}}}
    }
  },
  "components": {
    "schemas": {"Thing": {"type": "object", "required": ["n"], "additionalProperties": false,
                          "properties": {"n": {"type": "integer"}}}},
    "responses": {"Busy": {"description": "busy",
                           "headers": {"Retry-After": {"required": true, "schema": {"type": "integer", "minimum": 1}}},
                           "content": {"application/json": {"schema": {"type": "object"}}}}}
  }
})";

OpenApiSpec Spec() { return *OpenApiSpec::Parse(kDoc); }

Exchange Get(std::string target, unsigned status, std::string body,
             std::map<std::string, std::string> headers = {{"x-id", "1"},
                                                           {"Content-Type", "application/json"}}) {
  return Exchange{"GET", std::move(target), status, std::move(headers), std::move(body)};
}

TEST(OpenApiSpecTest, TheTestDocumentLintsClean) {
  auto lint = Spec().Lint();
  EXPECT_TRUE(lint.empty()) << lint.front();
}

TEST(OpenApiSpecTest, MatchesTemplatesPreferringLiteralSegments) {
  auto spec = Spec();
  EXPECT_EQ(spec.MatchPath("/things/a1"), "/things/{id}");
  EXPECT_EQ(spec.MatchPath("/things/special"), "/things/special");
  EXPECT_EQ(spec.MatchPath("/things/a1/more"), std::nullopt);
  EXPECT_EQ(spec.Methods("/things/{id}"), (std::vector<std::string>{"GET", "DELETE"}));
}

TEST(OpenApiSpecTest, AcceptsAConformingExchange) {
  OperationKey op;
  auto errors = Spec().Check(Get("/things/a1?x=1", 200, R"({"n": 3})"), &op);
  EXPECT_TRUE(errors.empty()) << errors.front();
  EXPECT_EQ(op, (OperationKey{"GET", "/things/{id}"}));
}

TEST(OpenApiSpecTest, ReportsAnUndocumentedPathMethodOrStatus) {
  auto spec = Spec();
  auto path = spec.Check(Get("/elsewhere", 200, "{}"));
  ASSERT_EQ(path.size(), 1u);
  EXPECT_NE(path[0].find("no path of the document matches"), std::string::npos) << path[0];
  auto method = spec.Check(Exchange{"POST", "/things/a1", 200, {}, ""});
  ASSERT_EQ(method.size(), 1u);
  EXPECT_NE(method[0].find("(documented: GET, DELETE)"), std::string::npos) << method[0];
  auto status = spec.Check(Get("/things/a1", 404, "{}"));
  ASSERT_EQ(status.size(), 1u);
  EXPECT_NE(status[0].find("status 404 is not documented"), std::string::npos) << status[0];
}

TEST(OpenApiSpecTest, ReportsABodyThatBreaksTheSchema) {
  auto errors = Spec().Check(Get("/things/a1", 200, R"({"n": "3", "m": 1})"));
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_NE(errors[0].find("body/m: property \"m\" is not documented"), std::string::npos)
      << errors[0];
  EXPECT_NE(errors[1].find("body/n: expected integer"), std::string::npos) << errors[1];
  auto not_json = Spec().Check(Get("/things/a1", 200, "<html>"));
  ASSERT_EQ(not_json.size(), 1u);
  EXPECT_NE(not_json[0].find("not JSON"), std::string::npos);
}

TEST(OpenApiSpecTest, ReportsAnUndocumentedMediaTypeAndAMissingRequiredHeader) {
  auto media =
      Spec().Check(Get("/things/a1", 200, "x", {{"X-Id", "1"}, {"Content-Type", "text/html"}}));
  ASSERT_EQ(media.size(), 1u);
  EXPECT_NE(media[0].find("media type \"text/html\" is not documented"), std::string::npos);
  auto header = Spec().Check(
      Get("/things/a1", 200, R"({"n": 1})", {{"Content-Type", "application/json; charset=utf-8"}}));
  ASSERT_EQ(header.size(), 1u);
  EXPECT_NE(header[0].find("required header X-Id is missing"), std::string::npos);
  // Through a $ref to a shared response, with a header value checked against its schema.
  EXPECT_TRUE(Spec()
                  .Check(Get("/things/a1", 429, "{}",
                             {{"Retry-After", "2"}, {"Content-Type", "application/json"}}))
                  .empty());
  auto retry = Spec().Check(
      Get("/things/a1", 429, "{}", {{"Retry-After", "0"}, {"Content-Type", "application/json"}}));
  ASSERT_EQ(retry.size(), 1u);
  EXPECT_NE(retry[0].find("header Retry-After"), std::string::npos) << retry[0];
}

TEST(OpenApiSpecTest, ABodyWhereNoneIsDocumentedIsReported) {
  EXPECT_TRUE(Spec().Check(Get("/things/a1", 204, "")).empty());
  EXPECT_EQ(Spec().Check(Get("/things/a1", 204, "{}")).size(), 1u);
}

TEST(OpenApiSpecTest, ChecksEachEventOfAStream) {
  std::map<std::string, std::string> h{{"X-Id", "1"}, {"Content-Type", "text/event-stream"}};
  EXPECT_TRUE(
      Spec()
          .Check(Get("/things/a1", 200, ": hi\n\nid: 1\ndata: {\"n\": 1}\n\ndata: [DONE]\n\n", h))
          .empty());
  auto errors =
      Spec().Check(Get("/things/a1", 200, "data: {\"n\": 1}\n\ndata: {\"n\": true}\n\n", h));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].find("event 1: /n: expected integer"), std::string::npos) << errors[0];
}

TEST(OpenApiSpecTest, LintFindsBrokenDocuments) {
  auto spec = *OpenApiSpec::Parse(R"({
    "openapi": "3.0.3", "info": {"title": "t", "version": "1"},
    "paths": {"/a/{id}": {"get": {"operationId": "x", "responses": {
                "2XX": {"description": "d", "content": {"application/json": {"schema": {"$ref": "#/nope"}}}}}},
                          "put": {"operationId": "x", "responses": {}}}}})");
  auto lint = spec.Lint();
  auto has = [&](std::string_view s) {
    for (const auto& l : lint)
      if (l.find(s) != std::string::npos) return true;
    return false;
  };
  EXPECT_TRUE(has("not 3.1.x"));
  EXPECT_TRUE(has("resolves to nothing"));
  EXPECT_TRUE(has("statuses are listed one by one"));
  EXPECT_TRUE(has("path parameter {id} is not declared"));
  EXPECT_TRUE(has("operationId x is used twice"));
  EXPECT_TRUE(has("no responses"));
}

}  // namespace
}  // namespace airlock::testing
