// An agent built with the OpenAI Agents SDK (`@openai/agents`), with a function tool, run
// unchanged inside an Airlock sandbox (tests/e2e/agent_e2e_test.cc): its default client points at
// the control plane with the session token as the key; the SDK runs its loop (model, tool,
// model) to the end, over the SDK's default API (Responses), or over Chat Completions when the
// second argument says "chat_completions". Tracing is off: it would export to OpenAI's servers.
// Its task is its first argument.
import OpenAI from "openai";
import {
  Agent,
  run,
  setDefaultOpenAIClient,
  setOpenAIAPI,
  setTracingDisabled,
  tool,
} from "@openai/agents";
import { z } from "zod";
import { readFileSync } from "node:fs";
import { finish } from "./airlock_finish.mjs";

setDefaultOpenAIClient(
  new OpenAI({
    baseURL: `${process.env.CONTROL_PLANE_URL}/v1`,
    apiKey: process.env.SESSION_TOKEN,
    maxRetries: 0,
  }),
);
if (process.argv[3] === "chat_completions") setOpenAIAPI("chat_completions");
setTracingDisabled(true);

const readFile = tool({
  name: "read_file",
  description: "Read a file of the sandbox",
  parameters: z.object({ path: z.string() }),
  execute: async ({ path }) => readFileSync(path, "utf8"),
});

const agent = new Agent({
  name: "Inspector",
  instructions: "You are a careful agent. Use the tools.",
  model: "default",
  tools: [readFile],
});

console.log("ENV " + JSON.stringify(process.env));
const result = await run(agent, process.argv[2] ?? "no task");
console.log("REPORT " + JSON.stringify({ text: result.finalOutput }));

await finish(String(result.finalOutput));
