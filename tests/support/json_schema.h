#pragma once

// A JSON Schema validator for the subset of JSON Schema 2020-12 that docs/openapi.json uses,
// so that tests can hold real responses against the document.
//
// Checked: type (one name or a list; "null" among them stands for nullable), properties,
// required, additionalProperties (false or a schema), items, enum, const, $ref (a local JSON
// pointer such as "#/components/schemas/Session"), allOf, anyOf, oneOf, minimum, maximum,
// minLength, maxLength (in characters), minItems, maxItems, pattern (ECMAScript, unanchored).
// Annotations (description, format, example, default, ...) and "x-" extensions are ignored.
// Any other keyword is reported by Problems(), so a schema that the validator would not really
// check cannot pass unnoticed.

#include <string>
#include <vector>

#include "common/json_util.h"

namespace airlock::testing {

class JsonSchema {
 public:
  // `root` is the document that $refs point into; it must outlive this object.
  explicit JsonSchema(const Json& root) : root_(&root) {}

  // The ways `instance` breaks `schema`, each "<JSON pointer of the value>: <why>"; empty when
  // it conforms.
  std::vector<std::string> Validate(const Json& instance, const Json& schema) const;

  // What is wrong with `schema` itself (found at `where` in the document): keywords outside
  // the subset above, type names that do not exist, $refs that resolve to nothing. Walks
  // subschemas, not the targets of $refs.
  std::vector<std::string> Problems(const Json& schema, const std::string& where = "#") const;

  // The value a local reference ("#/a/b") points at, or nullptr.
  const Json* Resolve(const std::string& ref) const;

 private:
  void Check(const Json& v, const Json& s, const std::string& at, int depth,
             std::vector<std::string>& errors) const;

  const Json* root_;
};

}  // namespace airlock::testing
