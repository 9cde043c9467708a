#!/usr/bin/env python3
"""Agent loop benchmark for Airlock (issue 6; results in BENCHMARKS.md).

Usage (as root, with airlock, airlock-agent, airlock-init and images/base.tar built):

    bench/agent_loop.py [--steps 50] [--sessions 5] [--warmup 1] [--rounds 10]
                        [--chat-calls N] [--airlock PATH] [--raw FILE] [--keep]

It starts `airlock serve` on free ports with a fresh home under /tmp and a configuration whose
default model is a scripted provider: --steps replies that each call `shell` with `true`, then
one that calls `finish`. Default backend oci (crun), image base, log level info. In one run it
measures:

 1. the agent loop: --sessions sessions of the reference agent (`airlock-agent` in the base
    image), one after the other, each to its end (after --warmup untimed ones; the first
    session of a fresh home imports base.tar). From each session's events (created_at, ms)
    and the client's clock:
      create -> first agent.llm   client wall clock before POST /v1/sessions -> created_at
                                  of the first agent.llm event (sandbox start, the agent's
                                  start-up, the inbox, the first chat)
      create -> succeeded         client, POST -> the session.state `succeeded` event seen
                                  on the SSE stream
      per step                    (created_at of the last agent.tool - created_at of the
                                  first agent.tool) / (steps - 1). An agent.tool event is
                                  stored at the end of a step, so this spans exactly
                                  steps - 1 whole steps: chat call, agent.llm event, the
                                  tool, agent.tool event. The finish step and everything
                                  before the first tool result are left out.
    plus the agent's own split of those same steps (2..N): agent.llm `duration_ms` (the chat
    round trip as the agent saw it) and agent.tool `duration_ms` (fork/exec/wait of
    `sh -c true` inside the sandbox), both whole milliseconds; and the server's handler
    times of POST /sandbox/v1/llm/chat and /sandbox/v1/events from its `http` log lines.
 2. baselines, in the same run:
    (a) host: subprocess.run(["sh", "-c", "true"]), steps x sessions calls, each timed;
        (a2) the loop of (b) run on the host with its busybox, when there is one;
    (b) sandbox: ONE oci session whose command is a busybox sh loop running `/bin/sh -c
        true` steps times per round (--rounds rounds); busybox `ts "%.s"` stamps a line
        before and after each round (microseconds; the busybox date has no %N), read back
        from GET /v1/sessions/{id}/logs; a call = the round's time / steps;
    (c) raw chat round trip: --sessions sessions on the `process` backend (no sandbox)
        whose command is python3 with a small http.client script: it takes the inbox,
        then makes --chat-calls POST /sandbox/v1/llm/chat calls the way the agent does
        (first the system prompt, then one new tool message each, with the same tool
        schemas; a new TCP connection per call, straight to the sandbox listener), times
        each, and posts the timings as a `bench.chat` event before it finishes.

It prints p50/p90/mean tables and the ratios of the per-step cost to (a), (b) and (c); it
asserts no thresholds. Python 3 standard library only (plus sdk/python from this repo).
Everything it starts (server, sessions, sandboxes) is stopped on exit, also on errors and
Ctrl-C.
"""

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (HOST, ROOT, ServerBench, exit_on_sigterm, find_airlock,  # noqa: E402
                      machine_facts, mean, ms, now, pct, print_preamble, proc_ticks, require_root_and_crun)

sys.path.insert(0, os.path.join(ROOT, "sdk", "python"))
from airlock.operator import TERMINAL_STATES, OperatorClient  # noqa: E402

AGENT_PATH = "/usr/bin/airlock-agent"  # the base image's entrypoint


# The reference agent's tool schemas (src/agent/tools.cc, ToolSchemas), so that baseline (c)
# sends the same request bodies as the agent.
def _fn(name, description, properties, required):
    return {"type": "function", "function": {"name": name, "description": description,
                                             "parameters": {"type": "object", "properties": properties,
                                                            "required": required}}}


TOOLS = [
    _fn("shell", "Run a shell command (/bin/sh -c) in the sandbox's working directory. Output (stdout and stderr) is "
        "truncated to 16 KiB. The sandbox has no network except the control plane.",
        {"command": {"type": "string", "description": "the command line"},
         "timeout_s": {"type": "number", "description": "kill it after this many seconds (default 60, max 600)"}},
        ["command"]),
    _fn("read_file", "Read a text file.",
        {"path": {"type": "string"},
         "max_bytes": {"type": "integer", "description": "at most this many bytes (default 65536)"}}, ["path"]),
    _fn("write_file", "Write a text file, creating its directories; replaces an existing file.",
        {"path": {"type": "string"}, "content": {"type": "string"}}, ["path", "content"]),
    _fn("upload", "Upload a file as an artifact of this session, for the user to download.",
        {"path": {"type": "string", "description": "the file in the sandbox"},
         "name": {"type": "string", "description": "the artifact's name (default: the file's base name)"}}, ["path"]),
    _fn("finish", "End the session: the task is done (or cannot be done). Nothing runs after this.",
        {"result": {"type": "string", "description": "what was done, for the user"},
         "status": {"type": "string", "enum": ["succeeded", "failed"]}}, ["result"]),
]

# Baseline (c): runs as the session's command on the process backend (argv[1] = JSON config).
CHAT_SCRIPT = r'''
import http.client, json, os, sys, time
from urllib.parse import urlsplit
cfg = json.loads(sys.argv[1])
token, url = os.environ["SESSION_TOKEN"], urlsplit(os.environ["CONTROL_PLANE_URL"])
headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json", "Accept": "application/json"}
def call(method, path, body=None):
    c = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()
st, data = call("GET", "/sandbox/v1/inbox?wait=10")
if st != 200:
    sys.exit("inbox: %d %r" % (st, data[:200]))
new = [{"role": "system", "content": cfg["system"]}] if cfg["system"] else []
times = []
for i in range(cfg["calls"]):
    body = json.dumps({"messages": new, "tools": cfg["tools"]}).encode()
    t = time.perf_counter()
    c = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    c.request("POST", "/sandbox/v1/llm/chat", body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    dt = time.perf_counter() - t
    if r.status != 200:
        sys.exit("chat %d: %d %r" % (i + 1, r.status, data[:300]))
    msg = json.loads(data)["message"]
    times.append(round(dt, 7))
    calls = msg.get("tool_calls") or []
    new = [{"role": "tool", "tool_call_id": calls[0]["id"], "content": "exit code 0\n"}] if calls else []
st, data = call("POST", "/sandbox/v1/events", json.dumps({"type": "bench.chat", "data": {"seconds": times}}).encode())
if st != 202:
    sys.exit("event: %d %r" % (st, data[:200]))
call("POST", "/sandbox/v1/finish", json.dumps({"status": "succeeded", "result": "%d calls" % len(times)}).encode())
'''

FINISH_WGET = ('wget -q -O /dev/null --header "Authorization: Bearer $SESSION_TOKEN" '
               "--header 'Content-Type: application/json' --post-data '{\"status\":\"succeeded\"}' "
               '"$CONTROL_PLANE_URL/sandbox/v1/finish"')


def parse_ts(s):
    """RFC 3339 UTC with milliseconds, as the API writes it -> epoch seconds."""
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.datetime.strptime(s, fmt).replace(tzinfo=datetime.timezone.utc).timestamp()
        except ValueError:
            pass
    raise ValueError(f"unexpected timestamp {s!r}")


def host_cpu_ticks():
    """(busy, steal) jiffies of the whole host from /proc/stat."""
    f = open("/proc/stat").readline().split()
    return int(f[1]) + int(f[2]) + int(f[3]), int(f[8])


class Bench(ServerBench):
    server_label = "server:  "
    # Its own session: a Ctrl-C in the terminal reaches this script only, which then deletes the
    # sessions before it stops the server.
    own_session = True

    def __init__(self, a):
        super().__init__(a, "airlock-agentloop-")
        self.op = None

    # ---------------------------------------------------------------- server
    def write_config(self):
        n = self.a.steps
        replies = [{"content": f"step {i + 1}: run true",
                    "tool_calls": [{"function": {"name": "shell", "arguments": {"command": "true"}}}]}
                   for i in range(n)]
        replies.append({"content": "done", "tool_calls": [{"function": {
            "name": "finish", "arguments": {"status": "succeeded", "result": f"ran true {n} times"}}}]})
        self.script_path = os.path.join(self.tmp, "script.json")
        with open(self.script_path, "w") as f:
            json.dump({"replies": replies}, f)
        self.config_path = os.path.join(self.tmp, "airlock.toml")
        with open(self.config_path, "w") as f:
            f.write(f"""# written by bench/agent_loop.py
[log]
level = "info"

[providers.bench]
kind = "scripted"
script = "{self.script_path}"

[models.default]
provider = "bench"
model = "scripted"

[sandbox]
default_backend = "oci"
default_image = "base"
allow_unisolated_backends = true   # baseline (c) runs on the process backend
""")

    def start_server(self):
        self.write_config()
        super().start_server(["--config", self.config_path])
        self.op = OperatorClient(url=f"http://{HOST}:{self.port}", key=self.key, timeout=60)

    # ---------------------------------------------------------------- sessions
    def create(self, task, **kw):
        s = self.op.create_session(task, **kw)
        self.sessions.add(s["id"])
        return s

    def follow_to_end(self, sid, timeout):
        """Follows the SSE stream until the session ends; returns (state, perf_counter when seen).

        A watchdog DELETEs the session after `timeout` seconds, which ends the stream too."""
        fired = []

        def kill():
            fired.append(True)
            try:
                self.op.kill(sid)
            except Exception:  # noqa: BLE001 - the stream's end is what matters
                pass
        dog = threading.Timer(timeout, kill)
        dog.daemon = True
        dog.start()
        gen = self.op.events(sid)
        state, t = None, None
        try:
            for ev in gen:
                if ev.get("type") == "session.state" and (ev.get("data") or {}).get("to") in TERMINAL_STATES:
                    t, state = now(), ev["data"]["to"]
                    break
        finally:
            gen.close()
            dog.cancel()
        if fired:
            raise RuntimeError(f"session {sid} did not end within {timeout:g} s (deleted)")
        if state is not None:
            self.sessions.discard(sid)
        return state, t

    def session_report(self, sid):
        s = self.op.get_session(sid)
        return f"{sid}: state {s.get('state')}, result {s.get('result')!r}"

    # ---------------------------------------------------------------- 1: the agent loop
    def agent_session(self):
        n = self.a.steps
        command = None if n + 1 <= 100 else [AGENT_PATH, "--max-steps", str(n + 1)]
        t0_wall, t0 = time.time(), now()
        s = self.create("bench: run the script", command=command)
        sid = s["id"]
        state, t_end = self.follow_to_end(sid, self.a.timeout)
        if state != "succeeded":
            raise RuntimeError(f"agent session did not succeed: {self.session_report(sid)}\n"
                               f"logs:\n{self.op.logs(sid)[-2000:]}")
        events = list(self.op.events(sid, follow=False))
        llm = [e for e in events if e["type"] == "agent.llm"]
        tools = [e for e in events if e["type"] == "agent.tool"]
        if len(tools) != n or len(llm) != n + 1 or not all(e["data"].get("ok") for e in tools):
            raise RuntimeError(f"session {sid}: expected {n} successful agent.tool and {n + 1} agent.llm events, "
                               f"got {len(tools)} ({sum(1 for e in tools if e['data'].get('ok'))} ok) and {len(llm)}")
        t_tools = [parse_ts(e["created_at"]) for e in tools]
        created = next(parse_ts(e["created_at"]) for e in events if e["type"] == "session.created")
        ended = next(parse_ts(e["created_at"]) for e in events if e["type"] == "session.state"
                     and e["data"].get("to") == "succeeded")
        usage = self.op.get_session(sid).get("usage", {})
        if usage.get("llm_calls") != n + 1:
            self.problems.append(f"session {sid}: usage.llm_calls = {usage.get('llm_calls')}, expected {n + 1}")
        return {
            "sid": sid,
            "to_first_llm": parse_ts(llm[0]["created_at"]) - t0_wall,
            "to_end": t_end - t0,
            "server_created_to_end": ended - created,
            "step": (t_tools[-1] - t_tools[0]) / (n - 1),
            "intervals": [b - a for a, b in zip(t_tools, t_tools[1:])],
            # steps 2..N: the ones the per-step figure spans
            "llm_ms": [e["data"]["duration_ms"] / 1e3 for e in llm[1:n]],
            "tool_ms": [e["data"]["duration_ms"] / 1e3 for e in tools[1:n]],
            "system": next((m.get("content") for m in self.op.messages(sid) if m.get("role") == "system"), None),
        }

    def agent_loop(self):
        for i in range(self.a.warmup):
            r = self.agent_session()
            print(f"  warm-up session {i + 1}: create -> succeeded {ms(r['to_end'])} (not counted)", file=sys.stderr)
        off0 = self.log_offset()
        runs = []
        for i in range(self.a.sessions):
            runs.append(self.agent_session())
            print(f"\r  agent sessions: {i + 1}/{self.a.sessions}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        time.sleep(0.2)
        h = self.handler_times(off0, self.log_offset())
        return {
            "runs": runs,
            "srv_chat": h.get(("POST", "/sandbox/v1/llm/chat"), []),
            "srv_event": h.get(("POST", "/sandbox/v1/events"), []),
            "system": runs[0]["system"] if runs else None,
        }

    # ---------------------------------------------------------------- baselines
    def host_shell(self):
        n = self.a.steps * self.a.sessions
        for _ in range(5):
            subprocess.run(["sh", "-c", "true"], check=True)
        times = []
        for _ in range(n):
            t = now()
            subprocess.run(["sh", "-c", "true"], check=True)
            times.append(now() - t)
        return times

    def shell_loop(self, sh, ts):
        """The loop of baseline (b): per round, `ts` stamps the lines "t0" and "t1" (microseconds)
        as it reads them; the 50 ms nap makes sure it is up and waiting before "t0". Nothing is
        written inside the loop, so neither ts nor a log relay wakes up while it runs."""
        n, rounds = self.a.steps, self.a.rounds
        return (f'r=0; while [ $r -lt {rounds} ]; do '
                f'{{ echo "ready $r"; sleep 0.05; echo "t0 $r"; '
                f'i=0; while [ $i -lt {n} ]; do {sh} -c true; i=$((i+1)); done; echo "t1 $r"; }} '
                f'| {ts} "%.s"; r=$((r+1)); done; echo "loop done"')

    def loop_times(self, out, what):
        n, rounds = self.a.steps, self.a.rounds
        stamps = {}
        for line in out.splitlines():
            p = line.split()
            if len(p) == 3 and p[1] in ("t0", "t1"):
                stamps[(p[1], int(p[2]))] = float(p[0])
        per_call = [(stamps[("t1", r)] - stamps[("t0", r)]) / n for r in range(rounds)
                    if ("t0", r) in stamps and ("t1", r) in stamps]
        if len(per_call) != rounds:
            self.problems.append(f"{what}: {len(per_call)} complete rounds in the output, expected {rounds}")
        return per_call

    def host_shell_loop(self):
        """(a2): baseline (b)'s loop on the host, with the host's busybox (if there is one)."""
        bb = shutil.which("busybox")
        if not bb:
            return None
        r = subprocess.run([bb, "sh", "-c", self.shell_loop(f"{bb} sh", f"{bb} ts")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=self.a.timeout)
        if "loop done" not in r.stdout:
            self.notes.append(f"host busybox loop failed (exit {r.returncode}): {r.stdout[-300:]}")
            return None
        return self.loop_times(r.stdout, "host busybox loop")

    def sandbox_shell(self):
        s = self.create("bench: shell loop",
                        command=["/bin/sh", "-c", self.shell_loop("/bin/sh", "ts") + "; " + FINISH_WGET])
        sid = s["id"]
        state, _ = self.follow_to_end(sid, self.a.timeout)
        logs = self.op.logs(sid)
        if "loop done" not in logs:
            raise RuntimeError(f"shell loop session: no 'loop done' in its log ({self.session_report(sid)}):\n"
                               + logs[-2000:])
        if state != "succeeded":
            self.notes.append(f"shell loop session ended {state}: {self.session_report(sid)}")
        return self.loop_times(logs, "shell loop session")

    def raw_chat(self, system):
        m = self.a.chat_calls
        cfg = json.dumps({"calls": m, "system": system, "tools": TOOLS}, separators=(",", ":"))
        off0 = self.log_offset()
        times, per_session = [], []
        for i in range(self.a.sessions):
            s = self.create("bench: raw chat", backend="process", command=[sys.executable, "-c", CHAT_SCRIPT, cfg])
            sid = s["id"]
            state, _ = self.follow_to_end(sid, self.a.timeout)
            ev = [e for e in self.op.events(sid, follow=False) if e["type"] == "bench.chat"]
            if state != "succeeded" or not ev:
                raise RuntimeError(f"raw chat session: {self.session_report(sid)}\nlogs:\n{self.op.logs(sid)[-2000:]}")
            xs = ev[0]["data"]["seconds"]
            times += xs
            per_session.append(mean(xs))
        time.sleep(0.2)
        h = self.handler_times(off0, self.log_offset())
        return {"per_call": times, "session_means": per_session,
                "srv_chat": h.get(("POST", "/sandbox/v1/llm/chat"), [])}

    # ---------------------------------------------------------------- cleanup
    def cleanup(self):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let a second Ctrl-C not cut the cleanup short
        super().cleanup()

    def delete_sessions(self):
        for sid in list(self.sessions):
            try:
                self.op.kill(sid)
                self.sessions.discard(sid)
            except Exception as e:  # noqa: BLE001 - reported, not raised
                print(f"cleanup: DELETE {sid}: {e}", file=sys.stderr)


# ------------------------------------------------------------------------------ report
def row(name, xs, ref=None):
    """A table row: count, p50, p90, mean and, with `ref`, ref / p50 (the step's multiple)."""
    p50 = pct(xs, 50)
    ratio = f"{ref / p50:>7.1f}x" if ref and xs else f"{'':>8}"
    return f"| {name:<58} | {len(xs):>5} | {ms(p50):>9} | {ms(pct(xs, 90)):>9} | {ms(mean(xs)):>9} | {ratio} |"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="\n\n".join(__doc__.split("\n\n")[2:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50,
                    help="N: shell steps in the script, before the finish call (default 50; >= 2)")
    ap.add_argument("--sessions", type=int, default=5,
                    help="S: timed agent sessions, run one after the other; also the number of raw-chat "
                         "sessions (c) (default 5)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed agent sessions first (default 1; the first one imports base.tar)")
    ap.add_argument("--rounds", type=int, default=10,
                    help="rounds of N `/bin/sh -c true` calls in the one sandbox of baseline (b), each timed as "
                         "a whole (default 10)")
    ap.add_argument("--chat-calls", type=int, default=None,
                    help="M: chat calls per raw-chat session (c) (default N, so the history grows as the agent's)")
    ap.add_argument("--timeout", type=float, default=300,
                    help="seconds a single session may take before it is deleted and the run fails (default 300)")
    ap.add_argument("--airlock", default=None,
                    help="airlock binary (default: $AIRLOCK, else build/bin/airlock in the repo, else "
                         "../build/bin/airlock); its images/base.tar beside bin/ is used")
    ap.add_argument("--raw", metavar="FILE", help="also write every sample (seconds) as JSON to FILE")
    ap.add_argument("--keep", action="store_true", help="keep the temporary home, config and server log")
    a = ap.parse_args()
    a.chat_calls = a.chat_calls or a.steps
    if a.steps < 2 or a.sessions < 1 or a.rounds < 1 or a.warmup < 0 or not 1 <= a.chat_calls <= 5000:
        ap.error("need --steps >= 2, --sessions >= 1, --rounds >= 1, --warmup >= 0, 1 <= --chat-calls <= 5000")
    a.airlock = find_airlock(a.airlock)
    require_root_and_crun("the oci backend needs it")
    exit_on_sigterm()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored

    sys.stdout.reconfigure(line_buffering=True)  # keep stdout and the progress on stderr in order
    print_preamble(machine_facts("(at start)", "tree"))
    print(f"binary:   {os.path.realpath(a.airlock)} (built {time.strftime('%Y-%m-%d %H:%M', time.localtime(os.path.getmtime(a.airlock)))})")
    print(f"script:   {a.steps} x shell `true`, then finish; {a.sessions} timed agent sessions after {a.warmup} "
          f"warm-up; baselines: {a.steps * a.sessions} host calls, {a.rounds} x {a.steps} calls in one sandbox, "
          f"{a.sessions} x {a.chat_calls} raw chat calls")

    b = Bench(a)
    hz = os.sysconf("SC_CLK_TCK")
    try:
        b.start_server()
        busy0, steal0 = host_cpu_ticks()
        srv0, wall0 = proc_ticks(b.server.pid, children=True), time.monotonic()
        loop = b.agent_loop()
        host = b.host_shell()
        host_loop = b.host_shell_loop()
        sbx = b.sandbox_shell()
        chat = b.raw_chat(loop["system"])
        busy1, steal1 = host_cpu_ticks()
        srv1, wall1 = proc_ticks(b.server.pid, children=True), time.monotonic()
    finally:
        b.cleanup()

    runs = loop["runs"]
    n, s = a.steps, a.sessions
    steps = [r["step"] for r in runs]
    intervals = [x for r in runs for x in r["intervals"]]
    llm_ms = [x for r in runs for x in r["llm_ms"]]
    tool_ms = [x for r in runs for x in r["tool_ms"]]
    if a.raw:
        with open(a.raw, "w") as f:
            json.dump({"steps": n, "sessions": s, "agent": [{k: v for k, v in r.items() if k != "system"} for r in runs],
                       "srv_chat": loop["srv_chat"], "srv_event": loop["srv_event"], "host_sh": host, "host_busybox_loop": host_loop,
                       "sandbox_sh": sbx, "raw_chat": chat}, f)

    ref = pct(steps, 50)
    w = 58
    print()
    print(f"## Agent loop: {s} sessions x {n} steps (`shell` running `true`), then `finish`")
    print()
    print(f"| {'what':<{w}} | {'n':>5} | {'p50':>9} | {'p90':>9} | {'mean':>9} | {'step/x':>8} |")
    print(f"|{'-' * (w + 2)}|{'-' * 7}|{'-' * 11}|{'-' * 11}|{'-' * 11}|{'-' * 10}|")
    print(row("agent: create -> first agent.llm event", [r["to_first_llm"] for r in runs]))
    print(row("agent: create -> succeeded seen (SSE)", [r["to_end"] for r in runs]))
    print(row("  server: session.created -> succeeded (events)", [r["server_created_to_end"] for r in runs]))
    print(row("agent: per step, session mean (agent.tool N-1 apart)", steps))
    print(row("  single steps: gap between agent.tool events (1 ms res.)", intervals))
    print(row("  of which chat round trip, agent.llm duration_ms (1 ms)", llm_ms))
    print(row("  of which tool, agent.tool duration_ms (1 ms)", tool_ms))
    rest = [r["step"] - mean(r["llm_ms"]) - mean(r["tool_ms"]) for r in runs]
    print(row("  rest: 2 event POSTs + agent work (step - llm - tool)", rest))
    print(row("  server log: POST /sandbox/v1/llm/chat handler", loop["srv_chat"]))
    print(row("  server log: POST /sandbox/v1/events handler", loop["srv_event"]))
    chats = loop["srv_chat"]
    if len(chats) == s * (n + 1) and n >= 20:
        # One line per chat in order, sessions one after the other: index % (n + 1) is the step.
        first = [x for i, x in enumerate(chats) if i % (n + 1) < 10]
        last = [x for i, x in enumerate(chats) if i % (n + 1) >= n + 1 - 10]
        print(row("    chat handler, the first 10 calls of each session", first))
        print(row("    chat handler, the last 10 calls of each session", last))
    print(row("(a) host: subprocess.run sh -c true, per call", host, ref))
    if host_loop:
        print(row("(a2) host: (b)'s busybox sh loop, per call (round/N)", host_loop, ref))
    print(row("(b) sandbox: sh -c true in a sh loop, per call (round/N)", sbx, ref))
    print(row("(c) raw chat: process backend, http.client, per call", chat["per_call"], ref))
    print(row("    server log: POST /sandbox/v1/llm/chat handler", chat["srv_chat"]))
    print()
    print("per step = (created_at of the last agent.tool event - that of the first) / (N - 1): N - 1 whole steps")
    print("(chat call, agent.llm event, tool, agent.tool event). The agent's duration_ms and the event times")
    print("are whole milliseconds; their means are still meaningful. step/x = per-step p50 / the row's p50.")
    print()
    step_m = mean(steps)
    print(f"per step (p50 of session means {ms(ref)}):")
    vs = [("a bare shell call on the host (a)", pct(host, 50))]
    if host_loop:
        vs.append(("the busybox loop's shell call on the host (a2)", pct(host_loop, 50)))
    vs += [("a shell call inside a sandbox (b)", pct(sbx, 50)), ("the raw chat round trip (c)", pct(chat["per_call"], 50))]
    for label, x in vs:
        print(f"  vs {label + ':':<48} {ref / x:6.1f}x   (+{ms(ref - x)})")
    if host_loop:
        print(f"  the same shell call in the sandbox (b) / on the host (a2): {pct(sbx, 50) / pct(host_loop, 50):.2f}x")
    print(f"where a step's time goes (means over steps 2..N; the agent's durations are whole ms, their means are not):")
    parts = [("chat round trip as the agent sees it", mean(llm_ms)),
             ("tool (fork/exec/wait of sh -c true)", mean(tool_ms)),
             ("rest: agent.llm + agent.tool event POSTs, agent work", mean(rest))]
    for label, v in parts:
        print(f"  {label:<55} {ms(v):>9}  {100 * v / step_m:5.1f}%")
    print(f"  {'= step (mean)':<55} {ms(step_m):>9}")
    print(f"  chat as the agent sees it vs raw chat (c), mean: {ms(mean(llm_ms))} vs {ms(mean(chat['per_call']))}; "
          f"server handler {ms(mean(loop['srv_chat']))}")
    print(f"  tool as the agent sees it vs the sandbox loop (b), mean: {ms(mean(tool_ms))} vs "
          f"{ms(mean(sbx))}")
    wall = wall1 - wall0
    ncpu = os.cpu_count() or 1
    print(f"host CPU over the measurements ({wall:.1f} s x {ncpu} cpus): busy {(busy1 - busy0) / hz:.1f} s "
          f"({100 * (busy1 - busy0) / hz / (wall * ncpu):.0f}%), of which airlock serve and the crun runs it "
          f"waited for {(srv1 - srv0) / hz:.1f} s; steal {(steal1 - steal0) / hz:.1f} s. On a quiet "
          f"2-vCPU VM the run alone kept about 0.75 cpu busy (client, server and sandbox take turns); much "
          f"more means other work on the host.")
    b.print_footer()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; everything it started is stopped")
