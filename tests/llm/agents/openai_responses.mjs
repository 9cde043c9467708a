// An agent as teams write them against OpenAI's Responses API with the official `openai`
// client, run unchanged inside an Airlock sandbox (tests/e2e/agent_e2e_test.cc). As in
// openai_client.mjs, only where the client points is Airlock's; the calls are the client's own:
// a function call round trip with the output items passed back as input, then a streamed
// answer read event by event. Its task is its first argument.
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
    name: "read_file",
    description: "Read a file of the sandbox",
    parameters: {
      type: "object",
      properties: { path: { type: "string" } },
      required: ["path"],
      additionalProperties: false,
    },
    strict: true,
  },
];
const instructions = "You are a careful agent. Use the tools.";
const input = [{ role: "user", content: process.argv[2] ?? "no task" }];

console.log("ENV " + JSON.stringify(process.env));

const first = await client.responses.create({
  model,
  instructions,
  input,
  tools,
  temperature: 0.2,
  store: false,
});
input.push(...first.output);
for (const item of first.output) {
  if (item.type !== "function_call") continue;
  const { path } = JSON.parse(item.arguments);
  let output;
  try {
    output = readFileSync(path, "utf8");
  } catch (e) {
    output = String(e);
  }
  input.push({ type: "function_call_output", call_id: item.call_id, output });
}

const stream = await client.responses.create({
  model,
  instructions,
  input,
  tools,
  stream: true,
  store: false,
});
let text = "";
let completed = null;
const types = [];
for await (const event of stream) {
  types.push(event.type);
  if (event.type === "response.output_text.delta") text += event.delta;
  if (event.type === "response.completed") completed = event.response;
}

console.log(
  "REPORT " +
    JSON.stringify({
      first_output: first.output,
      first_text: first.output_text,
      first_usage: first.usage,
      text,
      final_text: completed?.output?.find((i) => i.type === "message")?.content?.[0]?.text ?? null,
      usage: completed?.usage ?? null,
      first_event: types[0],
      last_event: types[types.length - 1],
    }),
);

await finish(text);
