// An agent as teams write them against OpenAI's official `openai` client, run unchanged inside
// an Airlock sandbox (tests/e2e/agent_e2e_test.cc). The only Airlock-specific lines are where the
// client points (base URL and key from the sandbox's environment) and the finish at the end; the
// LLM calls are the client's own: a tool call round trip, a streamed answer with usage, the
// model list. Its task is its first argument.
import OpenAI from "openai";
import { readFileSync } from "node:fs";
import { finish } from "./airlock_finish.mjs";

const client = new OpenAI({
  baseURL: `${process.env.CONTROL_PLANE_URL}/v1`,
  apiKey: process.env.SESSION_TOKEN,
  maxRetries: 0,
});
const model = "default";
const tools = [
  {
    type: "function",
    function: {
      name: "read_file",
      description: "Read a file of the sandbox",
      parameters: {
        type: "object",
        properties: { path: { type: "string" } },
        required: ["path"],
      },
    },
  },
];
const messages = [
  { role: "system", content: "You are a careful agent. Use the tools." },
  { role: "user", content: process.argv[2] ?? "no task" },
];

// What the agent can see of its environment, for the test to check that no key is in it.
console.log("ENV " + JSON.stringify(process.env));

const first = await client.chat.completions.create({ model, messages, tools, temperature: 0.2 });
const call = first.choices[0].message;
messages.push(call);
for (const tc of call.tool_calls ?? []) {
  const { path } = JSON.parse(tc.function.arguments);
  let content;
  try {
    content = readFileSync(path, "utf8");
  } catch (e) {
    content = String(e);
  }
  messages.push({ role: "tool", tool_call_id: tc.id, content });
}

const stream = await client.chat.completions.create({
  model,
  messages,
  tools,
  stream: true,
  stream_options: { include_usage: true },
});
let text = "";
let usage = null;
for await (const chunk of stream) {
  text += chunk.choices[0]?.delta?.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
messages.push({ role: "assistant", content: text });

const models = [];
for await (const m of client.models.list()) models.push(m.id);

console.log(
  "REPORT " +
    JSON.stringify({ first_usage: first.usage, tool_calls: call.tool_calls, text, usage, models }),
);

await finish(text);
