#include "cli/args.h"

#include <charconv>
#include <cmath>
#include <cstdint>
#include <filesystem>

namespace airlock::cli {

Result<std::pair<std::string, std::string>> SplitKeyValue(std::string_view arg,
                                                          std::string_view flag) {
  size_t eq = arg.find('=');
  if (eq == std::string_view::npos || eq == 0) {
    return Errorf(ErrorCode::kInvalidArgument, "{} \"{}\": expected key=value", flag, arg);
  }
  return std::pair<std::string, std::string>(std::string(arg.substr(0, eq)),
                                             std::string(arg.substr(eq + 1)));
}

namespace {

std::optional<Json> ParseNumber(std::string_view text) {
  if (text.empty()) {
    return std::nullopt;
  }
  const char* begin = text.data();
  const char* end = text.data() + text.size();
  int64_t i = 0;
  if (auto [p, ec] = std::from_chars(begin, end, i); ec == std::errc() && p == end) {
    return Json(i);
  }
  double d = 0;
  if (auto [p, ec] = std::from_chars(begin, end, d);
      ec == std::errc() && p == end && std::isfinite(d)) {
    return Json(d);
  }
  return std::nullopt;
}

}  // namespace

Result<Json> ParseLimitArgs(const std::vector<std::string>& args) {
  Json limits = Json::object();
  for (const auto& arg : args) {
    AIRLOCK_ASSIGN_OR_RETURN(auto kv, SplitKeyValue(arg, "--limit"));
    auto& [key, value] = kv;
    if (limits.contains(key)) {
      return Errorf(ErrorCode::kInvalidArgument, "--limit {} is given more than once", key);
    }
    std::optional<Json> number = ParseNumber(value);
    if (!number) {
      return Errorf(ErrorCode::kInvalidArgument, "--limit {}=\"{}\": the value must be a number",
                    key, value);
    }
    limits[key] = *number;
  }
  return limits;
}

namespace {

// KEY=VALUE arguments of `flag` as a JSON object of strings, each key once.
Result<Json> ParseStringPairs(const std::vector<std::string>& args, std::string_view flag) {
  Json out = Json::object();
  for (const auto& arg : args) {
    AIRLOCK_ASSIGN_OR_RETURN(auto kv, SplitKeyValue(arg, flag));
    if (out.contains(kv.first)) {
      return Errorf(ErrorCode::kInvalidArgument, "{} {} is given more than once", flag, kv.first);
    }
    out[kv.first] = kv.second;
  }
  return out;
}

}  // namespace

Result<Json> ParseMetadataArgs(const std::vector<std::string>& args) {
  return ParseStringPairs(args, "--meta");
}

Result<Json> ParseEnvArgs(const std::vector<std::string>& args) {
  return ParseStringPairs(args, "--env");
}

Result<std::vector<std::pair<std::string, std::string>>> ParseFileArgs(
    const std::vector<std::string>& args) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& arg : args) {
    std::string name, path;
    // NAME=PATH when what comes before the first '=' could be a file name, else PATH.
    size_t eq = arg.find('=');
    if (eq != std::string::npos && eq > 0 && arg.substr(0, eq).find('/') == std::string::npos) {
      name = arg.substr(0, eq);
      path = arg.substr(eq + 1);
    } else {
      path = arg;
      name = std::filesystem::path(arg).filename().string();
    }
    if (path.empty() || name.empty()) {
      return Errorf(ErrorCode::kInvalidArgument, "--file \"{}\": expected PATH or NAME=PATH", arg);
    }
    for (const auto& [seen, p] : out) {
      if (seen == name) {
        return Errorf(ErrorCode::kInvalidArgument, "--file: two files named {}", name);
      }
    }
    out.emplace_back(std::move(name), std::move(path));
  }
  return out;
}

SplitArgs SplitRunCommand(std::vector<std::string> argv) {
  SplitArgs out;
  // The subcommand is the first argument that is not an option (the top level has no options
  // that take a value).
  size_t sub = 1;
  while (sub < argv.size() && argv[sub].starts_with("-")) {
    ++sub;
  }
  if (sub < argv.size() && argv[sub] == "run") {
    for (size_t i = sub + 1; i < argv.size(); ++i) {
      if (argv[i] == "--") {
        out.command.emplace(
            std::make_move_iterator(argv.begin() + static_cast<std::ptrdiff_t>(i) + 1),
            std::make_move_iterator(argv.end()));
        argv.resize(i);
        break;
      }
    }
  }
  out.args = std::move(argv);
  return out;
}

}  // namespace airlock::cli
