// An agent as teams write them against Anthropic's official `@anthropic-ai/sdk` client, run
// unchanged inside an Airlock sandbox (tests/e2e/agent_e2e_test.cc). Only where the client
// points (the control plane, the session token as the key) and the finish at the end are
// Airlock's. A tool use round trip, then a streamed answer. Its task is its first argument.
import Anthropic from "@anthropic-ai/sdk";
import { readFileSync } from "node:fs";
import { finish } from "./airlock_finish.mjs";

const client = new Anthropic({
  baseURL: process.env.CONTROL_PLANE_URL,
  apiKey: process.env.SESSION_TOKEN,
  maxRetries: 0,
});
const model = "default";
const system = "You are a careful agent. Use the tools.";
const tools = [
  {
    name: "read_file",
    description: "Read a file of the sandbox",
    input_schema: { type: "object", properties: { path: { type: "string" } }, required: ["path"] },
  },
];
const messages = [{ role: "user", content: process.argv[2] ?? "no task" }];

console.log("ENV " + JSON.stringify(process.env));

const first = await client.messages.create({ model, max_tokens: 1024, system, messages, tools });
messages.push({ role: "assistant", content: first.content });
const results = [];
for (const block of first.content) {
  if (block.type !== "tool_use") continue;
  let content;
  try {
    content = readFileSync(block.input.path, "utf8");
  } catch (e) {
    content = String(e);
  }
  results.push({ type: "tool_result", tool_use_id: block.id, content });
}
messages.push({ role: "user", content: results });

const stream = client.messages.stream({ model, max_tokens: 1024, system, messages, tools });
let text = "";
stream.on("text", (t) => {
  text += t;
});
const final = await stream.finalMessage();

console.log(
  "REPORT " +
    JSON.stringify({ first_usage: first.usage, text, usage: final.usage, stop: final.stop_reason }),
);

await finish(text);
