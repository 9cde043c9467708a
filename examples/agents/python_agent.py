#!/usr/bin/env python3
"""An example Airlock agent in Python: an LLM tool loop built on ``airlock.sandbox``.

It knows exactly what a sandbox is given (SESSION_ID, SESSION_TOKEN, CONTROL_PLANE_URL),
removes those from its environment before running anything, and talks to the model only
through the control plane, which holds the provider key and the conversation.

Tools: shell, read_file, write_file, upload, finish. The agent survives a restart: it reloads
the conversation, tells the model which tool calls were cut off, and carries on.

Run it as the session's command, e.g. ``["python3", "/path/to/examples/agents/python_agent.py"]``.
It finds the SDK beside it (``../../sdk/python``) when ``airlock`` is not importable.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

try:
    from airlock.sandbox import AirlockError, SandboxClient, SessionEnded, TransportError
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "sdk", "python"))
    from airlock.sandbox import AirlockError, SandboxClient, SessionEnded, TransportError

AGENT_NAME = "python-example"
SHELL_OUTPUT_CAP = 16384
SHELL_DEFAULT_TIMEOUT_S = 60
SHELL_MAX_TIMEOUT_S = 600
READ_DEFAULT_BYTES = 65536
READ_MAX_BYTES = 256 * 1024  # stays well inside the control plane's request size limit
INBOX_WAIT_S = 30
INTERRUPTED = (
    "interrupted: the sandbox restarted before this tool call finished; files written by it may be lost"
    " \u2014 run it again if it is still needed"
)

SYSTEM_PROMPT = (
    "You are an agent working inside an isolated Linux sandbox: a writable working directory and /tmp, "
    "no network except the control plane, no credentials. Use the tools to do the user's task: `shell` "
    "runs commands, `read_file` and `write_file` handle files, `upload` hands a file to the user as an "
    "artifact. Work step by step and check what you did. When the task is done, upload what the user "
    "should get, then call `finish` with a short summary (status \"failed\" if it cannot be done). If you "
    "need something from the user, answer in text without calling a tool: their reply comes as the next "
    "message."
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "shell",
            "description": "Run a command with /bin/sh -c in the working directory. stdout and stderr are "
            "merged; the output is capped at 16384 bytes. The command is killed at the timeout.",
            "parameters": {
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "the shell command"},
                    "timeout_s": {"type": "number", "description": "seconds before it is killed (default 60, max 600)"},
                },
                "required": ["command"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a text file (decoded as UTF-8).",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "max_bytes": {"type": "integer", "description": "at most this many bytes (default 65536)"},
                },
                "required": ["path"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "write_file",
            "description": "Write a text file, creating its parent directories.",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                "required": ["path", "content"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "upload",
            "description": "Upload a file as an artifact of this session, for the user to download.",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "name": {"type": "string", "description": "artifact name (default: the file's base name)"},
                },
                "required": ["path"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "finish",
            "description": "End the task and report the result to the user.",
            "parameters": {
                "type": "object",
                "properties": {
                    "result": {"type": "string"},
                    "status": {"type": "string", "enum": ["succeeded", "failed"]},
                },
                "required": ["result"],
            },
        },
    },
]


class ToolError(Exception):
    """A problem the model should hear about (bad arguments, a missing file)."""


class Finished(Exception):
    pass


def log(text):
    print(f"[{AGENT_NAME}] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- tools


def _arg(args, name, kind, required=True, default=None):
    if name not in args or args[name] is None:
        if required:
            raise ToolError(f"missing required argument \"{name}\"")
        return default
    value = args[name]
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ToolError(f"argument \"{name}\" must be an integer")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ToolError(f"argument \"{name}\" must be a number")
        return float(value)
    if not isinstance(value, str):
        raise ToolError(f"argument \"{name}\" must be a string")
    return value


def _fmt_seconds(s):
    return f"{s:g}"


def tool_shell(client, args):
    command = _arg(args, "command", str)
    timeout_s = _arg(args, "timeout_s", float, required=False, default=SHELL_DEFAULT_TIMEOUT_S)
    if not timeout_s > 0:
        raise ToolError("argument \"timeout_s\" must be positive")
    timeout_s = min(timeout_s, SHELL_MAX_TIMEOUT_S)
    try:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as a whole
            env=dict(os.environ),  # SESSION_* and CONTROL_PLANE_URL were removed at start
        )
    except OSError as e:
        raise ToolError(f"cannot run /bin/sh: {e}")
    kept = bytearray()
    total = [0]

    def drain():
        while True:
            chunk = proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(65536)
            if not chunk:
                return
            total[0] += len(chunk)
            room = SHELL_OUTPUT_CAP - len(kept)
            if room > 0:
                kept.extend(chunk[:room])

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s
    killed = False
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        killed = True
    # Background children may hold the output open: wait for them until the same deadline.
    reader.join(max(0.0, deadline - time.monotonic()))
    if killed or reader.is_alive():
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()
        reader.join(5)
    proc.stdout.close()
    output = bytes(kept).decode("utf-8", "replace")
    if total[0] > SHELL_OUTPUT_CAP:
        output += f"\n[output truncated: {total[0]} bytes, the first {SHELL_OUTPUT_CAP} shown]"
    if killed:
        head = f"killed: timeout after {_fmt_seconds(timeout_s)}s"
        code = None
    else:
        code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        head = f"exit code {code}"
    summary = f"{head}: {command.splitlines()[0][:80] if command else ''}"
    return f"{head}\n{output}", code == 0, summary


def tool_read_file(client, args):
    path = _arg(args, "path", str)
    max_bytes = _arg(args, "max_bytes", int, required=False, default=READ_DEFAULT_BYTES)
    if max_bytes <= 0:
        raise ToolError("argument \"max_bytes\" must be positive")
    max_bytes = min(max_bytes, READ_MAX_BYTES)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise ToolError(f"cannot read {path}: {e.strerror or e}")
    text = data[:max_bytes].decode("utf-8", "replace")
    if len(data) > max_bytes:
        text += f"\n[truncated: the file is {max(size, len(data))} bytes, the first {max_bytes} shown]"
    return text, True, f"read {min(len(data), max_bytes)} bytes from {path}"


def tool_write_file(client, args):
    path = _arg(args, "path", str)
    content = _arg(args, "content", str)
    data = content.encode("utf-8")
    try:
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise ToolError(f"cannot write {path}: {e.strerror or e}")
    text = f"wrote {len(data)} bytes to {path}"
    return text, True, text


def tool_upload(client, args):
    path = _arg(args, "path", str)
    name = _arg(args, "name", str, required=False) or os.path.basename(path)
    if not os.path.isfile(path):
        raise ToolError(f"cannot upload {path}: no such file")
    try:
        done = client.upload(path, name=name)
    except SessionEnded:
        raise
    except (AirlockError, OSError) as e:
        raise ToolError(f"upload of {path} failed: {e}")
    text = f"uploaded {done['name']} ({done['size']} bytes)"
    return text, True, text


def tool_finish(client, args):
    result = _arg(args, "result", str)
    status = _arg(args, "status", str, required=False, default="succeeded")
    if status not in ("succeeded", "failed"):
        raise ToolError("argument \"status\" must be \"succeeded\" or \"failed\"")
    try:
        client.finish(status, result)
    except (SessionEnded, TransportError):
        raise
    except AirlockError as e:
        if e.status is not None and 400 <= e.status < 500:
            raise ToolError(f"finish was refused: {e.message}")  # e.g. a result that is too long
        raise
    raise Finished()


HANDLERS = {
    "shell": tool_shell,
    "read_file": tool_read_file,
    "write_file": tool_write_file,
    "upload": tool_upload,
    "finish": tool_finish,
}


def run_tool(client, call):
    """Runs one tool call; returns (result text, ok, summary). Raises Finished after finish."""
    fn = call.get("function") or {}
    name = fn.get("name")
    raw = fn.get("arguments")
    handler = HANDLERS.get(name)
    if handler is None:
        text = f"error: unknown tool {json.dumps(name)}; the tools are {', '.join(HANDLERS)}"
        return text, False, text[:120]
    try:
        if isinstance(raw, dict):
            args = raw
        else:
            args = json.loads(raw) if raw not in (None, "") else {}
        if not isinstance(args, dict):
            raise ToolError("the arguments must be a JSON object")
    except ValueError as e:
        text = f"error: the arguments of {name} are not valid JSON: {e}"
        return text, False, text[:120]
    except ToolError as e:
        text = f"error: {e}"
        return text, False, text[:120]
    try:
        return handler(client, args)
    except ToolError as e:
        text = f"error: {e}"
        return text, False, text[:120]


# ---------------------------------------------------------------------------- the loop


def take_inbox(client):
    """Long-polls the inbox until a message comes; it is recorded in the history."""
    while True:
        messages = client.inbox(wait=INBOX_WAIT_S)
        if messages:
            return messages


def missing_tool_results(history):
    """The tool calls of the last assistant message that have no result in the history."""
    for i in range(len(history) - 1, -1, -1):
        m = history[i]
        if m.get("role") != "assistant":
            continue
        answered = {r.get("tool_call_id") for r in history[i + 1:] if r.get("role") == "tool"}
        return [tc for tc in (m.get("tool_calls") or []) if tc.get("id") not in answered]
    return []


def assistant_count(history):
    return sum(1 for m in history if m.get("role") == "assistant")


def run(client):
    client.load_history()
    history = client.history
    resumed = bool(history)
    step = assistant_count(history)
    if not resumed:
        take_inbox(client)
    # The previous sandbox died after the model asked to finish: finish now.
    if resumed and history[-1].get("role") == "assistant":
        for call in history[-1].get("tool_calls") or []:
            if (call.get("function") or {}).get("name") == "finish":
                result, ok, summary = run_tool(client, call)  # raises Finished unless refused
    interrupted = missing_tool_results(history)
    for call in interrupted:
        client.add({"role": "tool", "tool_call_id": call.get("id"), "content": INTERRUPTED})
    client.event(
        "agent.started",
        {"agent": AGENT_NAME, "resumed": resumed, "history": len(history), "interrupted_tool_calls": len(interrupted)},
    )
    log(f"started ({'resumed with' if resumed else 'new,'} {len(history)} messages)")

    # A restart after the model had answered without tool calls: the next turn is the user's.
    if history and history[-1].get("role") == "assistant" and not client.unsent:
        take_inbox(client)

    # The prompt goes with the first model call of a new conversation (a restart finds it
    # stored; a conversation some other agent began is left as it is).
    if not any(m.get("role") in ("system", "assistant") for m in client.history):
        client.add({"role": "system", "content": SYSTEM_PROMPT})

    while True:
        started = time.monotonic()
        reply = client.chat(tools=TOOLS)
        step += 1
        calls = reply.get("tool_calls") or []
        content = reply.get("content")
        text = content if isinstance(content, str) else ""
        names = [(c.get("function") or {}).get("name", "") for c in calls]
        client.event(
            "agent.llm",
            {"step": step, "text": text[:200], "tool_calls": names, "duration_ms": int((time.monotonic() - started) * 1000)},
        )
        log(f"step {step}: {', '.join(names) if names else 'reply without tool calls'}")
        if not calls:
            # The model answered the user: wait for what they say next.
            client.event("agent.waiting", {"step": step})
            take_inbox(client)
            continue
        # finish last, once the other calls of the same reply have run.
        ordered = [c for c in calls if (c.get("function") or {}).get("name") != "finish"]
        ordered += [c for c in calls if (c.get("function") or {}).get("name") == "finish"]
        for call in ordered:
            name = (call.get("function") or {}).get("name", "")
            started = time.monotonic()
            result, ok, summary = run_tool(client, call)  # raises Finished after finish
            duration_ms = int((time.monotonic() - started) * 1000)
            client.add({"role": "tool", "tool_call_id": call.get("id"), "content": result})
            client.event(
                "agent.tool",
                {"step": step, "tool": name, "ok": bool(ok), "summary": summary[:200], "duration_ms": duration_ms},
            )


def main():
    try:
        client = SandboxClient.from_env()
    except AirlockError as e:
        log(str(e))
        return 2
    try:
        run(client)
    except Finished:
        log("finished")
        return 0
    except SessionEnded:
        return 0
    except AirlockError as e:
        if e.status == 402:
            log("the session's budget is spent")
            try:
                client.finish("failed", f"budget exhausted: {e.message}")
            except AirlockError:
                pass
            return 0
        log(f"stopping: {e}")
        if not isinstance(e, TransportError):
            try:
                client.finish("failed", f"agent error: {e}")
            except AirlockError:
                pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
