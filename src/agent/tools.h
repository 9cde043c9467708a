#pragma once

// The reference agent's tools: what the model may ask for, run inside the sandbox. Each takes
// the model's arguments (a JSON object, possibly malformed: the model wrote it) and returns
// text for the model. A bad argument is an answer the model can correct, never a crash.

#include <cstdint>
#include <expected>
#include <string>

#include <nlohmann/json.hpp>

namespace airlock::agent {

using Json = nlohmann::json;

struct ToolLimits {
  int default_timeout_s = 60;
  int max_timeout_s = 600;
  size_t output_cap = 16 * 1024;  // shell output kept for the model
  size_t read_cap = 64 * 1024;    // read_file default
  size_t max_write = 8 << 20;     // write_file content
};

struct ToolOutcome {
  bool ok = true;
  std::string text;     // for the model
  std::string summary;  // one line for the event stream
};

// One OpenAI function schema: {"type": "function", "function": {name, description, parameters}}.
Json Function(const char* name, const char* description, Json properties, Json required);

// The OpenAI function schemas of shell, read_file, write_file, upload and finish; the
// descriptions state `limits` (the model plans around timeouts and output caps).
Json ToolSchemas(const ToolLimits& limits);

// Runs `/bin/sh -c command` in the current directory with stdin /dev/null, stdout and stderr merged
// into one pipe, in its own process group, with the process's environment (which no longer holds
// the session variables: SandboxClient::FromEnvironment removed them). At `timeout_s` the
// whole group is killed. At most `limits.output_cap` bytes are kept (the start), the rest is
// counted.
ToolOutcome RunShell(const std::string& command, int timeout_s, const ToolLimits& limits);
ToolOutcome ReadFileTool(const std::string& path, size_t max_bytes);
ToolOutcome WriteFileTool(const std::string& path, const std::string& content,
                          const ToolLimits& limits);

// Parses a tool call's "arguments" (a JSON text, as OpenAI sends them); an object or an
// error text for the model.
std::expected<Json, std::string> ParseArguments(const Json& arguments);

}  // namespace airlock::agent
