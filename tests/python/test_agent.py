"""The example Python agent (examples/agents/python_agent.py) run by a real control plane."""

import os
import subprocess
import sys
import tempfile
import time
import unittest

from airlock_harness import AGENT, ServerTestCase, wait_for

CONTENT = "Ünïcode report\nline two\n"
CONTENT_BYTES = CONTENT.encode("utf-8")



def run_agent_here(cwd, env):
    """Runs the example agent in this process's host with exactly `env` (+ PATH), to the end."""
    return subprocess.run(
        [sys.executable, AGENT],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )

def tool_call(tool, **arguments):
    return {"function": {"name": tool, "arguments": arguments}}


def agent_events(events):
    return [e for e in events if e["type"].startswith("agent.")]


def tool_results(messages):
    return [m["content"] for m in messages if m.get("role") == "tool"]


class EveryToolTest(ServerTestCase):
    REPLIES = [
        {"content": "Looking around first.", "tool_calls": [tool_call("shell", command="echo from-shell; echo err >&2; pwd")]},
        {"tool_calls": [tool_call("write_file", path="out/report.txt", content=CONTENT)]},
        {"tool_calls": [tool_call("read_file", path="out/report.txt")]},
        {"tool_calls": [tool_call("upload", path="out/report.txt", name="report.txt")]},
        {"tool_calls": [tool_call("finish", result="report uploaded")]},
    ]

    def test_task_with_every_tool(self):
        s = self.agent_session("write a report and upload it")
        final = self.wait_session(s["id"])
        self.assertEqual(final["state"], "succeeded", self.op.logs(s["id"]))
        self.assertEqual(final["result"], "report uploaded")

        # The file: listed with its size, and downloaded byte for byte.
        files = self.op.list_files(s["id"])
        self.assertEqual([(f["name"], f["size"]) for f in files], [("report.txt", len(CONTENT_BYTES))])
        with tempfile.TemporaryDirectory() as d:
            dest = os.path.join(d, "report.txt")
            self.assertEqual(self.op.download_file(s["id"], "report.txt", dest), len(CONTENT_BYTES))
            with open(dest, "rb") as f:
                self.assertEqual(f.read(), CONTENT_BYTES)

        # What each tool told the model.
        results = tool_results(self.op.messages(s["id"]))
        self.assertEqual(len(results), 4, results)
        shell, wrote, read, uploaded = results
        self.assertTrue(shell.startswith("exit code 0\n"), shell)
        self.assertIn("from-shell", shell)
        self.assertIn("err", shell)  # stderr merged into the output
        self.assertIn(s["id"], shell)  # pwd: the session's working directory
        self.assertEqual(wrote, f"wrote {len(CONTENT_BYTES)} bytes to out/report.txt")
        self.assertEqual(read, CONTENT)
        self.assertEqual(uploaded, f"uploaded report.txt ({len(CONTENT_BYTES)} bytes)")

        # The agent's events, in order, and nothing after finish.
        events = list(self.op.events(s["id"], follow=False))
        seqs = [e["seq"] for e in events]
        self.assertEqual(seqs, sorted(seqs))
        self.assertEqual(len(seqs), len(set(seqs)))
        mine = agent_events(events)
        self.assertEqual(
            [(e["type"], e["data"].get("tool")) for e in mine],
            [("agent.started", None)]
            + [x for tool in ("shell", "write_file", "read_file", "upload") for x in (("agent.llm", None), ("agent.tool", tool))]
            + [("agent.llm", None)],
        )
        self.assertEqual(
            mine[0]["data"], {"agent": "python-example", "resumed": False, "history": 1, "interrupted_tool_calls": 0}
        )
        llm = [e["data"] for e in mine if e["type"] == "agent.llm"]
        self.assertEqual([d["step"] for d in llm], [1, 2, 3, 4, 5])
        self.assertEqual(llm[0]["text"], "Looking around first.")
        self.assertEqual(llm[0]["tool_calls"], ["shell"])
        self.assertEqual((llm[-1]["text"], llm[-1]["tool_calls"]), ("", ["finish"]))
        for d in llm:
            self.assertIsInstance(d["duration_ms"], int)
        for e in mine:
            if e["type"] == "agent.tool":
                self.assertTrue(e["data"]["ok"], e)
                self.assertIsInstance(e["data"]["duration_ms"], int)
                self.assertIsInstance(e["data"]["summary"], str)
        self.assertEqual(events[-1]["type"], "session.state")
        self.assertEqual(events[-1]["data"]["to"], "succeeded")


class ShellEnvironmentTest(ServerTestCase):
    REPLIES = [
        {"tool_calls": [tool_call("shell", command="env; echo env-done")]},
        {"tool_calls": [tool_call("finish", result="ok")]},
    ]

    def test_shell_does_not_see_the_session_variables(self):
        s = self.agent_session("print the environment")
        self.assertEqual(self.wait_session(s["id"])["state"], "succeeded", self.op.logs(s["id"]))
        (out,) = tool_results(self.op.messages(s["id"]))
        self.assertTrue(out.startswith("exit code 0\n"), out)
        self.assertIn("env-done", out)
        self.assertIn("PATH=", out)  # env really ran and printed the environment
        for name in ("SESSION_TOKEN", "SESSION_ID", "CONTROL_PLANE_URL"):
            self.assertNotIn(name, out)
        self.assertNotIn("ast_", out)  # the token's prefix
        self.assertNotIn(self.server.sandbox_url, out)


class TokenProbeTest(ServerTestCase):
    REPLIES = [
        {"tool_calls": [tool_call("shell", command="tr '\\0' '\\n' < /proc/$PPID/environ; echo probe-done")]},
        {"tool_calls": [tool_call("finish", result="probed")]},
    ]

    def test_a_tool_cannot_read_the_token_from_the_agents_environ(self):
        s, _, env = self.server.capture_session()
        proc = run_agent_here(self.server.dir, env)
        self.assertEqual(proc.returncode, 0, proc.stderr.decode())
        (out,) = tool_results(self.op.messages(s["id"]))
        self.assertIn("probe-done", out)
        self.assertNotIn(env["SESSION_TOKEN"], out)
        self.assertNotIn(env["CONTROL_PLANE_URL"], out)
        if os.geteuid() == 0:
            self.assertIn("PATH=", out)  # root reads any environ: the value itself must be gone
        else:
            self.assertIn("denied", out)  # the agent is not dumpable


class ToolErrorsTest(ServerTestCase):
    REPLIES = [
        {
            "tool_calls": [
                {"function": {"name": "read_file", "arguments": "{not json"}},
                tool_call("shell"),
                tool_call("read_file", path="does/not/exist"),
                tool_call("no_such_tool"),
                tool_call("shell", command="sleep 30", timeout_s=1),
                tool_call("shell", command="head -c 40000 /dev/zero | tr '\\0' x; exit 3"),
                tool_call("read_file", path="big.txt", max_bytes=10),
                tool_call("finish", result="x", status="maybe"),
            ]
        },
        {"tool_calls": [tool_call("finish", result="could not", status="failed")]},
    ]

    def test_bad_calls_are_reported_to_the_model(self):
        s = self.op.create_session(
            "break things",
            command=["/bin/sh", "-c", 'printf "%s" 0123456789abcdef > big.txt; exec "$0" "$1"', sys.executable, AGENT],
        )
        final = self.wait_session(s["id"])
        self.assertEqual(final["state"], "failed", self.op.logs(s["id"]))
        self.assertEqual(final["result"], "could not")
        results = tool_results(self.op.messages(s["id"]))
        self.assertEqual(len(results), 8, results)
        bad_json, no_command, missing, unknown, slow, loud, big, bad_status = results
        self.assertIn("not valid JSON", bad_json)
        self.assertIn('"command"', no_command)
        self.assertTrue(no_command.startswith("error"), no_command)
        self.assertIn("does/not/exist", missing)
        self.assertIn("unknown tool", unknown)
        self.assertTrue(slow.startswith("killed: timeout after 1s"), slow)
        self.assertTrue(loud.startswith("exit code 3\n"), loud[:100])
        self.assertIn("x" * 16384, loud)
        self.assertNotIn("x" * 16385, loud)
        self.assertIn("truncated", loud)
        self.assertTrue(big.startswith("0123456789\n"), big)
        self.assertIn("truncated", big)
        self.assertIn("status", bad_status)
        tools = [e["data"] for e in self.op.events(s["id"], follow=False) if e["type"] == "agent.tool"]
        self.assertEqual([t["ok"] for t in tools], [False, False, False, False, False, False, True, False])
        slow_event = tools[4]
        self.assertGreaterEqual(slow_event["duration_ms"], 900)
        self.assertLess(slow_event["duration_ms"], 10000)


class FollowUpTest(ServerTestCase):
    REPLIES = [
        "Which format do you want?",
        {"tool_calls": [tool_call("finish", result="done in markdown")]},
    ]

    def test_waits_for_a_follow_up(self):
        s = self.agent_session("write something")
        sid = s["id"]
        seen = []
        for ev in self.op.events(sid):
            seen.append(ev["type"])
            if ev["type"] == "agent.waiting":
                time.sleep(0.3)  # the agent is parked on the inbox, not busy-looping
                self.assertEqual(self.op.get_session(sid)["usage"]["llm_calls"], 1)
                self.op.send_message(sid, "markdown, please")
        final = self.op.get_session(sid)
        self.assertEqual(final["state"], "succeeded", self.op.logs(sid))
        self.assertEqual(final["result"], "done in markdown")
        self.assertIn("agent.waiting", seen)
        self.assertLess(seen.index("agent.waiting"), seen.index("session.message"))
        messages = self.op.messages(sid)
        self.assertEqual([m["role"] for m in messages], ["user", "system", "assistant", "user", "assistant"])
        self.assertEqual(messages[3]["content"], "markdown, please")


class BudgetTest(ServerTestCase):
    REPLIES = [
        {"tool_calls": [tool_call("shell", command="true")]},
        {"tool_calls": [tool_call("finish", result="should not get here")]},
    ]

    def test_budget_exhausted_fails_the_session(self):
        s = self.agent_session("spend", limits={"max_tokens": 1})
        final = self.wait_session(s["id"])
        self.assertEqual(final["state"], "failed", self.op.logs(s["id"]))
        self.assertTrue(final["result"].startswith("budget exhausted: "), final["result"])
        self.assertEqual(final["usage"]["llm_calls"], 1)


class ResumeTest(ServerTestCase):
    REPLIES = [
        {"tool_calls": [tool_call("shell", command="echo first"), tool_call("shell", command="echo second")]},
        {"tool_calls": [tool_call("finish", result="resumed fine")]},
    ]

    def test_a_new_agent_answers_cut_off_tool_calls(self):
        # A "dead" sandbox: it took the task and got tool calls from the model, then vanished.
        s, client, env = self.server.capture_session()
        client.inbox(wait=5)
        reply = client.chat()
        self.assertEqual(len(reply["tool_calls"]), 2)
        # A fresh agent with the same session picks up from the stored history.
        proc = run_agent_here(self.server.dir, env)
        self.assertEqual(proc.returncode, 0, proc.stderr.decode())
        self.assertNotIn(env["SESSION_TOKEN"].encode(), proc.stderr + proc.stdout)
        final = self.op.get_session(s["id"])
        self.assertEqual(final["state"], "succeeded")
        self.assertEqual(final["result"], "resumed fine")
        messages = self.op.messages(s["id"])
        tools = [m for m in messages if m.get("role") == "tool"]
        self.assertEqual([t["tool_call_id"] for t in tools], [c["id"] for c in reply["tool_calls"]])
        for t in tools:
            self.assertTrue(t["content"].startswith("interrupted: the sandbox restarted"), t["content"])
        started = [e for e in self.op.events(s["id"], follow=False) if e["type"] == "agent.started"]
        self.assertEqual(
            started[0]["data"], {"agent": "python-example", "resumed": True, "history": 4, "interrupted_tool_calls": 2}
        )


def run_agent(server, env, timeout=60):
    """Runs the example agent as a replacement sandbox of a captured session."""
    return subprocess.Popen(
        [sys.executable, AGENT],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        cwd=server.dir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


class ResumeFinishTest(ServerTestCase):
    REPLIES = [
        {"tool_calls": [tool_call("finish", result="finished before the crash")]},
        "the model should not be asked again",
    ]

    def test_a_finish_the_dead_sandbox_did_not_do_is_done(self):
        s, client, env = self.server.capture_session()
        client.inbox(wait=5)
        client.chat()
        proc = run_agent(self.server, env)
        out, err = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 0, err.decode())
        final = self.op.get_session(s["id"])
        self.assertEqual((final["state"], final["result"]), ("succeeded", "finished before the crash"))
        self.assertEqual(final["usage"]["llm_calls"], 1)


class ResumeWaitingTest(ServerTestCase):
    REPLIES = [
        "Which colour?",
        {"tool_calls": [tool_call("finish", result="blue it is")]},
    ]

    def test_a_conversation_left_with_the_user_waits_for_the_user(self):
        s, client, env = self.server.capture_session()
        client.inbox(wait=5)
        client.chat()
        proc = run_agent(self.server, env)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        wait_for(
            lambda: any(e["type"] == "agent.started" for e in self.op.events(s["id"], follow=False)), 20, "agent.started"
        )
        time.sleep(0.5)
        self.assertEqual(self.op.get_session(s["id"])["usage"]["llm_calls"], 1)  # no call without a user turn
        self.op.send_message(s["id"], "blue")
        out, err = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 0, err.decode())
        final = self.op.get_session(s["id"])
        self.assertEqual((final["state"], final["result"]), ("succeeded", "blue it is"))
        self.assertEqual([m["role"] for m in self.op.messages(s["id"])], ["user", "assistant", "user", "assistant"])


class FinishLastTest(ServerTestCase):
    REPLIES = [
        {"tool_calls": [tool_call("finish", result="wrote it"), tool_call("write_file", path="late.txt", content="x")]},
    ]

    def test_finish_runs_after_the_other_calls_of_its_reply(self):
        s = self.agent_session("write then finish")
        self.assertEqual(self.wait_session(s["id"])["result"], "wrote it")
        tools = [e["data"]["tool"] for e in self.op.events(s["id"], follow=False) if e["type"] == "agent.tool"]
        self.assertEqual(tools, ["write_file"])
        with open(os.path.join(self.server.dir, "sessions", s["id"], "late.txt")) as f:
            self.assertEqual(f.read(), "x")


class AgentStartupTest(unittest.TestCase):
    def test_outside_a_sandbox_it_says_so(self):
        env = {k: v for k, v in os.environ.items() if k not in ("SESSION_ID", "SESSION_TOKEN", "CONTROL_PLANE_URL")}
        env.pop("PYTHONPATH", None)  # it must find the SDK beside itself
        proc = subprocess.run([sys.executable, AGENT], env=env, capture_output=True, timeout=30)
        self.assertEqual(proc.returncode, 2)
        self.assertIn(b"SESSION_TOKEN", proc.stderr)
        self.assertNotIn(b"Traceback", proc.stderr)


if __name__ == "__main__":
    unittest.main()
