#include "tests/support/json_schema.h"

#include <gtest/gtest.h>

namespace airlock::testing {
namespace {

Json J(std::string_view text) {
  auto j = ParseJson(text);
  if (!j) throw std::runtime_error("bad test JSON: " + j.error().message);
  return *j;
}

// A document with a component, as OpenAPI documents have them.
const Json kDoc = J(R"({
  "components": {"schemas": {
    "Usage": {"type": "object", "required": ["tokens"], "additionalProperties": false,
              "properties": {"tokens": {"type": "integer", "minimum": 0}}},
    "Session": {"type": "object", "required": ["id", "state", "usage"],
                "additionalProperties": false,
                "properties": {
                  "id": {"type": "string", "pattern": "^ses_[a-z]+$", "format": "ignored"},
                  "state": {"type": "string", "enum": ["running", "failed"]},
                  "usage": {"$ref": "#/components/schemas/Usage"},
                  "result": {"type": ["string", "null"], "maxLength": 3},
                  "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2}}}}}
})");

std::vector<std::string> Errors(const Json& v, std::string_view schema) {
  return JsonSchema(kDoc).Validate(v, J(schema));
}

TEST(JsonSchemaTest, AcceptsAConformingValueThroughARef) {
  auto errors =
      Errors(J(R"({"id": "ses_abc", "state": "running", "usage": {"tokens": 3}, "result": null,
                   "tags": ["a"]})"),
             R"({"$ref": "#/components/schemas/Session"})");
  EXPECT_TRUE(errors.empty()) << errors.front();
}

TEST(JsonSchemaTest, ReportsAWrongTypeWithItsPointer) {
  auto errors = Errors(J(R"({"id": "ses_abc", "state": "running", "usage": {"tokens": "3"}})"),
                       R"({"$ref": "#/components/schemas/Session"})");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0], R"(/usage/tokens: expected integer, got string "3")");
}

TEST(JsonSchemaTest, ReportsAMissingRequiredProperty) {
  auto errors = Errors(J(R"({"id": "ses_abc", "usage": {"tokens": 1}})"),
                       R"({"$ref": "#/components/schemas/Session"})");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0], R"((root): required property "state" is missing)");
}

TEST(JsonSchemaTest, ReportsAPropertyTheSchemaDoesNotAllow) {
  auto errors =
      Errors(J(R"({"id": "ses_abc", "state": "failed", "usage": {"tokens": 1, "cost": 2}})"),
             R"({"$ref": "#/components/schemas/Session"})");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0], R"(/usage/cost: property "cost" is not documented)");
}

TEST(JsonSchemaTest, AdditionalPropertiesMayBeASchema) {
  const char* schema = R"({"type": "object", "additionalProperties": {"type": "string"}})";
  EXPECT_TRUE(Errors(J(R"({"a": "x", "b": "y"})"), schema).empty());
  EXPECT_EQ(Errors(J(R"({"a": "x", "b": 2})"), schema).size(), 1u);
}

TEST(JsonSchemaTest, IntegerIsAWholeNumberAndNumberIsAny) {
  EXPECT_TRUE(Errors(J("2"), R"({"type": "integer"})").empty());
  EXPECT_TRUE(Errors(J("2.0"), R"({"type": "integer"})").empty());
  EXPECT_EQ(Errors(J("2.5"), R"({"type": "integer"})").size(), 1u);
  EXPECT_TRUE(Errors(J("2.5"), R"({"type": "number"})").empty());
  EXPECT_EQ(Errors(J("true"), R"({"type": "number"})").size(), 1u);
}

TEST(JsonSchemaTest, ATypeListWithNullMakesAValueNullable) {
  EXPECT_TRUE(Errors(J("null"), R"({"type": ["string", "null"]})").empty());
  EXPECT_TRUE(Errors(J(R"("x")"), R"({"type": ["string", "null"]})").empty());
  EXPECT_EQ(Errors(J("null"), R"({"type": "string"})").size(), 1u);
}

TEST(JsonSchemaTest, EnumConstAndBounds) {
  EXPECT_EQ(Errors(J(R"("paused")"), R"({"enum": ["running", "failed"]})").size(), 1u);
  EXPECT_EQ(Errors(J(R"("b")"), R"({"const": "a"})").size(), 1u);
  EXPECT_EQ(Errors(J("-1"), R"({"minimum": 0})").size(), 1u);
  EXPECT_EQ(Errors(J("11"), R"({"maximum": 10})").size(), 1u);
  EXPECT_EQ(Errors(J(R"("abcd")"), R"({"maxLength": 3})").size(), 1u);
  EXPECT_EQ(Errors(J(R"("")"), R"({"minLength": 1})").size(), 1u);
  // Characters, not bytes: three two-byte characters.
  EXPECT_TRUE(Errors(J(R"("äöü")"), R"({"maxLength": 3})").empty());
  EXPECT_EQ(Errors(J("[1, 2, 3]"), R"({"maxItems": 2})").size(), 1u);
  EXPECT_EQ(Errors(J("[]"), R"({"minItems": 1})").size(), 1u);
  EXPECT_EQ(Errors(J(R"("ses_ABC")"), R"({"pattern": "^ses_[a-z]+$"})").size(), 1u);
}

TEST(JsonSchemaTest, ItemsAreCheckedOneByOne) {
  auto errors = Errors(J(R"(["a", 1, "c", false])"), R"({"items": {"type": "string"}})");
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_TRUE(errors[0].starts_with("/1: ")) << errors[0];
  EXPECT_TRUE(errors[1].starts_with("/3: ")) << errors[1];
}

TEST(JsonSchemaTest, OneOfWantsExactlyOneAnyOfAtLeastOne) {
  const char* one = R"({"oneOf": [{"type": "integer"}, {"type": "number"}]})";
  EXPECT_TRUE(Errors(J("1.5"), one).empty());
  EXPECT_EQ(Errors(J("1"), one).size(), 1u);  // both match
  EXPECT_EQ(Errors(J(R"("x")"), one).size(), 1u);
  const char* any = R"({"anyOf": [{"type": "integer"}, {"type": "number"}]})";
  EXPECT_TRUE(Errors(J("1"), any).empty());
  EXPECT_EQ(Errors(J(R"("x")"), any).size(), 1u);
  EXPECT_EQ(Errors(J(R"("x")"), R"({"allOf": [{"type": "string"}, {"maxLength": 0}]})").size(), 1u);
}

TEST(JsonSchemaTest, AnUnresolvableRefIsAnError) {
  auto errors = Errors(J("1"), R"({"$ref": "#/components/schemas/Nope"})");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].find("unresolvable $ref"), std::string::npos);
}

TEST(JsonSchemaTest, BooleanSchemas) {
  EXPECT_TRUE(Errors(J("1"), "true").empty());
  EXPECT_EQ(Errors(J("1"), "false").size(), 1u);
}

TEST(JsonSchemaTest, ProblemsNameKeywordsItDoesNotCheck) {
  JsonSchema v(kDoc);
  EXPECT_TRUE(v.Problems(kDoc["components"]["schemas"]["Session"]).empty());
  auto problems = v.Problems(J(R"({"type": "object", "x-note": 1, "description": "d",
    "properties": {"a": {"type": "string", "minProperties": 1}, "b": {"type": "strnig"},
                   "c": {"$ref": "#/nowhere"}}})"));
  ASSERT_EQ(problems.size(), 3u);
  EXPECT_EQ(problems[0], "#/properties/a/minProperties: keyword not checked by the test validator");
  EXPECT_EQ(problems[1], R"(#/properties/b/type: no such type "strnig")");
  EXPECT_EQ(problems[2], R"(#/properties/c/$ref: unresolvable $ref "#/nowhere")");
}

}  // namespace
}  // namespace airlock::testing
