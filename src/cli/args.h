#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/json_util.h"
#include "common/result.h"

namespace airlock::cli {

// Splits "key=value"; `flag` names the option in the error ("--limit").
Result<std::pair<std::string, std::string>> SplitKeyValue(std::string_view arg,
                                                          std::string_view flag);

// `--limit key=value`... into the "limits" object of POST /v1/sessions. Values must be numbers
// (integers stay integers); a key given twice is refused. The key names and ranges are the
// server's to judge, so a newer server's limits work with an older CLI.
Result<Json> ParseLimitArgs(const std::vector<std::string>& args);

// `--meta key=value`... into the "metadata" object (string values).
Result<Json> ParseMetadataArgs(const std::vector<std::string>& args);
// --env NAME=VALUE, repeatable: the session's "env" object (each name once).
Result<Json> ParseEnvArgs(const std::vector<std::string>& args);
// --file PATH or --file NAME=PATH, repeatable: {name in the session, local path}; the name is
// PATH's last component unless given (each name once).
Result<std::vector<std::pair<std::string, std::string>>> ParseFileArgs(
    const std::vector<std::string>& args);

// `airlock run TASK ... -- COMMAND ARGS...`: everything after the first "--" that follows the
// `run` subcommand is the sandbox's command, verbatim, and must not reach the flag parser
// (which would otherwise read "-c" in `-- sh -c ...` as an option).
struct SplitArgs {
  std::vector<std::string> args;                    // what CLI11 parses, argv[0] included
  std::optional<std::vector<std::string>> command;  // set when "--" was given
};
SplitArgs SplitRunCommand(std::vector<std::string> argv);

}  // namespace airlock::cli
