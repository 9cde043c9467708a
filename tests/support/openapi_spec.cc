#include "tests/support/openapi_spec.h"

#include <algorithm>
#include <cctype>
#include <set>

#include <fmt/format.h>

namespace airlock::testing {

namespace {

constexpr std::string_view kMethods[] = {"get",   "put",     "post", "delete",
                                         "patch", "options", "head", "trace"};

std::string Upper(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::vector<std::string_view> Segments(std::string_view path) {
  std::vector<std::string_view> out;
  while (!path.empty()) {
    if (path.front() == '/') {
      path.remove_prefix(1);
      continue;
    }
    size_t slash = path.find('/');
    out.push_back(path.substr(0, slash));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash);
  }
  return out;
}

bool IsParam(std::string_view seg) {
  return seg.size() > 2 && seg.front() == '{' && seg.back() == '}';
}

std::string Join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

// The answer's header `name`, whatever the case of either.
std::optional<std::string> Header(const std::map<std::string, std::string>& headers,
                                  std::string_view name) {
  for (const auto& [k, v] : headers) {
    if (Lower(k) == Lower(name)) return v;
  }
  return std::nullopt;
}

// The media type of a Content-Type value: no parameters, lower case.
std::string MediaType(std::string_view content_type) {
  std::string_view mt = content_type.substr(0, content_type.find(';'));
  while (!mt.empty() && mt.back() == ' ') mt.remove_suffix(1);
  while (!mt.empty() && mt.front() == ' ') mt.remove_prefix(1);
  return Lower(mt);
}

bool IsJsonMediaType(std::string_view mt) {
  return mt == "application/json" || mt.ends_with("+json");
}

// The data of each event of a text/event-stream body (data: lines joined by newlines).
std::vector<std::string> SseData(std::string_view body) {
  std::vector<std::string> out;
  std::string data;
  bool have = false;
  while (!body.empty()) {
    size_t nl = body.find('\n');
    std::string_view line = body.substr(0, nl);
    body.remove_prefix(nl == std::string_view::npos ? body.size() : nl + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) {
      if (have) out.push_back(data);
      data.clear();
      have = false;
    } else if (line.starts_with("data:")) {
      std::string_view v = line.substr(5);
      if (!v.empty() && v.front() == ' ') v.remove_prefix(1);
      if (have) data += '\n';
      data += v;
      have = true;
    }
  }
  if (have) out.push_back(data);
  return out;
}

}  // namespace

Result<OpenApiSpec> OpenApiSpec::Parse(std::string_view text) {
  AIRLOCK_ASSIGN_OR_RETURN(Json doc, ParseJsonObject(text, 256));
  return OpenApiSpec(std::move(doc));
}

const Json& OpenApiSpec::Deref(const Json& j) const {
  const Json* cur = &j;
  JsonSchema refs(doc_);
  for (int i = 0; i < 16 && cur->is_object() && cur->contains("$ref"); ++i) {
    const Json& ref = (*cur)["$ref"];
    const Json* next = ref.is_string() ? refs.Resolve(ref.get<std::string>()) : nullptr;
    if (!next) break;
    cur = next;
  }
  return *cur;
}

std::vector<OperationKey> OpenApiSpec::Operations() const {
  std::vector<OperationKey> out;
  if (!doc_.contains("paths") || !doc_["paths"].is_object()) return out;
  for (const auto& [path, item] : doc_["paths"].items()) {
    for (std::string_view m : kMethods) {
      if (item.contains(std::string(m))) out.push_back({Upper(m), path});
    }
  }
  return out;
}

const Json* OpenApiSpec::Operation(const OperationKey& key) const {
  if (!doc_.contains("paths")) return nullptr;
  const Json& paths = doc_["paths"];
  auto item = paths.find(key.path);
  if (item == paths.end()) return nullptr;
  auto op = item->find(Lower(key.method));
  return op == item->end() ? nullptr : &*op;
}

std::optional<std::string> OpenApiSpec::MatchPath(std::string_view path) const {
  if (!doc_.contains("paths")) return std::nullopt;
  auto parts = Segments(path);
  std::optional<std::string> best;
  size_t best_literals = 0;
  for (const auto& [tmpl, item] : doc_["paths"].items()) {
    auto segs = Segments(tmpl);
    if (segs.size() != parts.size()) continue;
    size_t literals = 0;
    bool ok = true;
    for (size_t i = 0; ok && i < segs.size(); ++i) {
      if (IsParam(segs[i])) continue;
      ok = segs[i] == parts[i];
      ++literals;
    }
    if (ok && (!best || literals > best_literals)) {
      best = tmpl;
      best_literals = literals;
    }
  }
  return best;
}

std::vector<std::string> OpenApiSpec::Methods(const std::string& path_template) const {
  std::vector<std::string> out;
  for (const auto& op : Operations()) {
    if (op.path == path_template) out.push_back(op.method);
  }
  return out;
}

std::vector<std::string> OpenApiSpec::Check(const Exchange& x, OperationKey* matched) const {
  std::vector<std::string> errors;
  const std::string method = Upper(x.method);
  const std::string path = x.target.substr(0, x.target.find('?'));
  const std::string what = fmt::format("{} {} -> {}", method, path, x.status);
  auto tmpl = MatchPath(path);
  if (!tmpl) {
    errors.push_back(what + ": no path of the document matches " + path);
    return errors;
  }
  OperationKey key{method, *tmpl};
  if (matched) *matched = key;
  const Json* op = Operation(key);
  if (!op) {
    errors.push_back(fmt::format("{}: {} is not documented for {} (documented: {})", what, method,
                                 *tmpl, Join(Methods(*tmpl))));
    return errors;
  }
  const Json& responses = (*op)["responses"];
  const std::string status = std::to_string(x.status);
  if (!responses.contains(status)) {
    std::vector<std::string> documented;
    for (const auto& [k, v] : responses.items()) documented.push_back(k);
    errors.push_back(fmt::format("{}: status {} is not documented for {} {} (documented: {})", what,
                                 status, method, *tmpl, Join(documented)));
    return errors;
  }
  const Json& resp = Deref(responses[status]);
  JsonSchema validator(doc_);

  if (auto hs = resp.find("headers"); hs != resp.end() && hs->is_object()) {
    for (const auto& [name, h] : hs->items()) {
      const Json& header = Deref(h);
      auto value = Header(x.headers, name);
      if (!value) {
        if (header.value("required", false))
          errors.push_back(fmt::format("{}: required header {} is missing", what, name));
        continue;
      }
      if (!header.contains("schema")) continue;
      const Json& schema = Deref(header["schema"]);
      Json v = *value;
      if (schema.value("type", "") == "integer" || schema.value("type", "") == "number") {
        if (auto n = ParseJson(*value); n && n->is_number()) v = *n;
      }
      for (const auto& e : validator.Validate(v, schema))
        errors.push_back(fmt::format("{}: header {}: {}", what, name, e));
    }
  }

  const bool head = method == "HEAD";
  auto content = resp.find("content");
  if (content == resp.end() || content->empty()) {
    if (!head && !x.body.empty())
      errors.push_back(
          fmt::format("{}: documented without a body, but has {} bytes", what, x.body.size()));
    return errors;
  }
  const std::string mt = MediaType(Header(x.headers, "Content-Type").value_or(""));
  if (!content->contains(mt)) {
    std::vector<std::string> documented;
    for (const auto& [k, v] : content->items()) documented.push_back(k);
    errors.push_back(fmt::format("{}: media type \"{}\" is not documented (documented: {})", what,
                                 mt, Join(documented)));
    return errors;
  }
  if (head) return errors;
  const Json& media = (*content)[mt];
  if (IsJsonMediaType(mt)) {
    auto body = ParseJson(x.body, 256);
    if (!body) {
      errors.push_back(fmt::format("{}: the body is not JSON: {}", what, body.error().message));
    } else if (media.contains("schema")) {
      for (const auto& e : validator.Validate(*body, media["schema"]))
        errors.push_back(
            fmt::format("{}: body{}", what, e.starts_with("(root)") ? e.substr(6) : e));
    }
  } else if (mt == "text/event-stream" && media.contains("x-sse-data")) {
    auto events = SseData(x.body);
    for (size_t i = 0; i < events.size(); ++i) {
      if (events[i] == "[DONE]") continue;
      auto data = ParseJson(events[i], 256);
      if (!data) {
        errors.push_back(
            fmt::format("{}: event {}: data is not JSON: {}", what, i, data.error().message));
        continue;
      }
      for (const auto& e : validator.Validate(*data, media["x-sse-data"]))
        errors.push_back(fmt::format("{}: event {}: {}", what, i, e));
    }
  }
  return errors;
}

std::vector<std::string> OpenApiSpec::Lint() const {
  std::vector<std::string> out;
  JsonSchema validator(doc_);
  auto schema = [&](const Json& s, const std::string& at) {
    for (auto& p : validator.Problems(s, at)) out.push_back(std::move(p));
  };
  if (!doc_.value("openapi", "").starts_with("3.1.")) out.push_back("#/openapi: not 3.1.x");
  if (!doc_.contains("info") || !doc_["info"].contains("title") ||
      !doc_["info"].contains("version")) {
    out.push_back("#/info: title and version are required");
  }

  // Every $ref anywhere resolves.
  std::vector<std::pair<const Json*, std::string>> stack{{&doc_, "#"}};
  while (!stack.empty()) {
    auto [j, at] = stack.back();
    stack.pop_back();
    if (j->is_object()) {
      if (auto r = j->find("$ref");
          r != j->end() && (!r->is_string() || !validator.Resolve(r->get<std::string>()))) {
        out.push_back(at + "/$ref: resolves to nothing");
      }
      for (const auto& [k, v] : j->items()) stack.emplace_back(&v, at + "/" + k);
    } else if (j->is_array()) {
      for (size_t i = 0; i < j->size(); ++i)
        stack.emplace_back(&(*j)[i], at + "/" + std::to_string(i));
    }
  }

  if (doc_.contains("components") && doc_["components"].contains("schemas")) {
    for (const auto& [name, s] : doc_["components"]["schemas"].items())
      schema(s, "#/components/schemas/" + name);
  }
  std::set<std::string> ids;
  if (!doc_.contains("paths") || !doc_["paths"].is_object()) {
    out.push_back("#/paths: missing");
    return out;
  }
  for (const auto& [path, item] : doc_["paths"].items()) {
    const std::string pat = "#/paths/" + path;
    std::set<std::string> path_params;
    for (auto seg : Segments(path)) {
      if (IsParam(seg)) path_params.emplace(seg.substr(1, seg.size() - 2));
    }
    auto declared = [&](const Json& owner, std::set<std::string>& names) {
      if (!owner.contains("parameters")) return;
      for (const Json& p : owner["parameters"]) {
        const Json& param = Deref(p);
        if (param.value("in", "") == "path") names.insert(param.value("name", ""));
        if (param.contains("schema"))
          schema(param["schema"], pat + " parameter " + param.value("name", ""));
      }
    };
    std::set<std::string> item_params;
    declared(item, item_params);
    for (std::string_view m : kMethods) {
      auto it = item.find(std::string(m));
      if (it == item.end()) continue;
      const Json& op = *it;
      const std::string at = pat + "/" + std::string(m);
      std::string id = op.value("operationId", "");
      if (id.empty()) out.push_back(at + ": no operationId");
      if (!id.empty() && !ids.insert(id).second)
        out.push_back(at + ": operationId " + id + " is used twice");
      std::set<std::string> params = item_params;
      declared(op, params);
      for (const auto& p : path_params) {
        if (!params.count(p)) out.push_back(at + ": path parameter {" + p + "} is not declared");
      }
      if (op.contains("requestBody")) {
        const Json& rb = Deref(op["requestBody"]);
        if (rb.contains("content")) {
          for (const auto& [mt, media] : rb["content"].items()) {
            if (media.contains("schema")) schema(media["schema"], at + " requestBody " + mt);
          }
        }
      }
      if (!op.contains("responses") || !op["responses"].is_object() || op["responses"].empty()) {
        out.push_back(at + ": no responses");
        continue;
      }
      for (const auto& [status, r] : op["responses"].items()) {
        const std::string rat = at + "/responses/" + status;
        if (status.size() != 3 || !std::all_of(status.begin(), status.end(),
                                               [](char c) { return c >= '0' && c <= '9'; })) {
          out.push_back(rat + ": statuses are listed one by one");
        }
        const Json& resp = Deref(r);
        if (!resp.contains("description")) out.push_back(rat + ": no description");
        if (resp.contains("headers")) {
          for (const auto& [name, h] : resp["headers"].items()) {
            const Json& header = Deref(h);
            if (header.contains("schema")) schema(header["schema"], rat + " header " + name);
          }
        }
        if (!resp.contains("content")) continue;
        for (const auto& [mt, media] : resp["content"].items()) {
          if (media.contains("schema")) schema(media["schema"], rat + " " + mt);
          if (media.contains("x-sse-data"))
            schema(media["x-sse-data"], rat + " " + mt + " x-sse-data");
        }
      }
    }
  }
  return out;
}

}  // namespace airlock::testing
