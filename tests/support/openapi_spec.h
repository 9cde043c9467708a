#pragma once

// Holds real HTTP exchanges against an OpenAPI 3.1 document (docs/openapi.json): the request's
// method and path name a documented operation (path templates matched), the answer's status is
// documented for it, its required headers are there, and its body is what the document says
// for that status and media type (JSON validated with JsonSchema; each `data:` line of a
// text/event-stream against the media type's "x-sse-data" schema, a project extension, since
// OpenAPI 3.1 cannot describe the events of a stream).

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/json_util.h"
#include "common/result.h"
#include "tests/support/json_schema.h"

namespace airlock::testing {

// One request and its answer, as seen on the wire.
struct Exchange {
  std::string method;  // "GET", "POST", ... (any case)
  std::string target;  // the request target: path and query
  unsigned status = 0;
  std::map<std::string, std::string> headers;  // of the answer; names in any case
  std::string body;                            // of the answer
};

// An operation of the document: "GET" and "/v1/sessions/{id}".
struct OperationKey {
  std::string method;  // upper case
  std::string path;    // the path template as the document writes it
  auto operator<=>(const OperationKey&) const = default;
};

class OpenApiSpec {
 public:
  static Result<OpenApiSpec> Parse(std::string_view text);

  const Json& doc() const { return doc_; }

  // Every operation of the document.
  std::vector<OperationKey> Operations() const;
  // The operation object, or nullptr.
  const Json* Operation(const OperationKey& key) const;
  // The path template that `path` (no query) matches; a template with more literal segments
  // wins, as OpenAPI asks.
  std::optional<std::string> MatchPath(std::string_view path) const;
  // The methods documented for a path template, upper case.
  std::vector<std::string> Methods(const std::string& path_template) const;

  // What is wrong with the exchange; empty when it is what the document says. `op`, when
  // given, is set to the operation it matched.
  std::vector<std::string> Check(const Exchange& x, OperationKey* op = nullptr) const;

  // What is wrong with the document itself: not OpenAPI 3.1, an operation without an
  // operationId (or one used twice) or without responses, a path parameter not declared, a
  // $ref that resolves to nothing, a schema the test validator would not check fully.
  std::vector<std::string> Lint() const;

 private:
  explicit OpenApiSpec(Json doc) : doc_(std::move(doc)) {}
  // Follows a {"$ref": ...} object to what it names (one level at a time, to the end).
  const Json& Deref(const Json& j) const;

  Json doc_;
};

}  // namespace airlock::testing
