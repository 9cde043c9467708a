#pragma once

// The scripted model: a provider with no network, whose replies come from a script.

#include <memory>
#include <string>

#include "common/json_util.h"
#include "common/result.h"
#include "llm/provider.h"

namespace airlock::llm {

// The scripted model: reply number N (counting the assistant messages already in the
// history) is the N-th entry of the script, so a restarted agent that reloads its history
// carries on where it stopped. Script file: {"replies": [assistant message, ...]} or a bare
// array; each entry is an OpenAI-shaped assistant message ({"content"?, "tool_calls"?}) or a
// string. `"alternatives": [{"when_tool": NAME, "replies": [...]}]` beside "replies": the first
// whose tool the request offers is used instead (the demo's browsing script, for an agent that
// has a browser). Usage is estimated (4 bytes a token). Errors: kInvalidArgument naming the
// entry.
Result<std::unique_ptr<Provider>> MakeScriptedProvider(const Json& script, std::string source_name);
Result<std::unique_ptr<Provider>> LoadScriptedProvider(const std::string& path);

// The script of the built-in demo model (demo_script.cc): the `default` alias when nothing
// else is configured. It drives the reference agent through each of its tools and finishes.
const Json& BuiltinDemoScript();

}  // namespace airlock::llm
