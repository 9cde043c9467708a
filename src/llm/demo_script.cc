// The built-in demo script: what the `default` model alias answers when the control plane
// has no model configured and no provider key in its environment. It drives the reference
// agent (airlock-agent) through every one of its tools once, so that `scripts/demo.sh` and a
// bare `airlock serve` show the whole path - model, tools in the sandbox, an artifact, the
// finish - on a machine that cannot reach any LLM.

#include "llm/scripted.h"

namespace airlock::llm {
namespace {

Json Call(const char* name, Json arguments) {
  return Json{{"function", {{"name", name}, {"arguments", std::move(arguments)}}}};
}

Json Reply(const char* content, Json call) {
  return Json{{"content", content}, {"tool_calls", Json::array({std::move(call)})}};
}

}  // namespace

const Json& BuiltinDemoScript() {
  static const Json script = Json{
      {"replies",
       Json::array({
           Reply(
               "(scripted demo: no LLM is configured, so these steps are canned.) First I look at "
               "the sandbox "
               "I am in.",
               Call("shell",
                    {{"command",
                      "echo \"user: $(id)\"; echo \"kernel: $(uname -sr)\"; echo \"cwd: $(pwd)\"; "
                      "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; ls /"}})),
           Reply("I start a report in a file.",
                 Call("write_file", {{"path", "report.md"},
                                     {"content",
                                      "# Airlock demo report\n\nWritten by the reference agent "
                                      "inside its sandbox. The model "
                                      "was the built-in scripted demo: set OPENAI_API_KEY or "
                                      "ANTHROPIC_API_KEY for the "
                                      "control plane to use a real one.\n\n## The sandbox, as seen "
                                      "from inside\n\n"}})),
           Reply("Now I add facts measured inside the sandbox: who I am, my limits, and whether "
                 "the network "
                 "reaches anything.",
                 Call("shell", {{"command",
                                 "{ echo '```'; id; uname -sr; echo \"processes visible: $(ls -d "
                                 "/proc/[0-9]* | wc -l)\"; "
                                 "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; "
                                 "if wget -q -T 3 -O /dev/null http://1.1.1.1/ 2>/dev/null; then "
                                 "echo 'network: the "
                                 "internet is reachable'; else echo 'network: no route out (only "
                                 "the control plane "
                                 "channel)'; fi; "
                                 "if [ -z \"$SESSION_TOKEN\" ]; then echo 'SESSION_TOKEN: not in "
                                 "my environment'; else "
                                 "echo 'SESSION_TOKEN: visible (unexpected)'; fi; echo '```'; } >> "
                                 "report.md && wc -c "
                                 "report.md"}})),
           Reply("Let me read the report back before I hand it over.",
                 Call("read_file", {{"path", "report.md"}})),
           Reply("It looks right. I upload it as the session's artifact.",
                 Call("upload", {{"path", "report.md"}, {"name", "report.md"}})),
           Reply("Done.",
                 Call("finish",
                      {{"status", "succeeded"},
                       {"result",
                        "Wrote report.md (what the sandbox looks like from inside: user, kernel, "
                        "capabilities, network, environment) and uploaded it."}})),
       })},
      // An agent with a browser (the `browser` image) browses instead: the demo site the
      // control plane serves to sandboxes (demo_site.h), over the default bridge port.
      {"alternatives",
       Json::array({Json{
           {"when_tool", "browser_open"},
           {"replies",
            Json::array({
                Reply(
                    "(scripted demo: no LLM is configured, so these steps are canned.) I open "
                    "the demo site the control plane serves to sandboxes.",
                    Call("browser_open", {{"url", "http://127.0.0.1:7401/sandbox/v1/demo/index"}})),
                Reply("There is a link to a search page; I follow it.",
                      Call("browser_click", {{"text", "Search the catalogue"}})),
                Reply("I type a query into the search field and submit it.",
                      Call("browser_type",
                           {{"selector", "#q"}, {"text", "sandbox"}, {"submit", true}})),
                Reply("I take a screenshot of the results for the user.",
                      Call("browser_screenshot", {{"name", "results.png"}})),
                Reply("Done.", Call("finish",
                                    {{"status", "succeeded"},
                                     {"result",
                                      "Opened the demo site, followed its link to the search page, "
                                      "searched for \"sandbox\" and uploaded a screenshot of the "
                                      "results (results.png)."}})),
            })}}})}};
  return script;
}

}  // namespace airlock::llm
