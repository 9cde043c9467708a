"""airlock.sandbox.SandboxClient against a real control plane (the test plays the sandbox)."""

import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from unittest import mock

from airlock_harness import ServerTestCase, TcpProxy, free_ports

from airlock import AirlockError, AuthError, SessionEnded, TransportError
from airlock.sandbox import SandboxClient


class FromEnvTest(unittest.TestCase):
    def test_reads_and_removes_the_variables(self):
        fake = {"SESSION_ID": "ses_test", "SESSION_TOKEN": "ast_not_a_real_token", "CONTROL_PLANE_URL": "http://127.0.0.1:9/"}
        with mock.patch.dict(os.environ, fake):
            client = SandboxClient.from_env(harden=False)  # hardening: see the test below
            for name in fake:
                self.assertNotIn(name, os.environ)
            # Not in what a child process inherits either (os.environ.pop unsets the variable).
            out = subprocess.run(
                [sys.executable, "-c", "import os; print(sorted(k for k in os.environ if 'SESSION' in k or 'CONTROL_PLANE' in k))"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            self.assertEqual(out, "[]")
        self.assertEqual(client.url, "http://127.0.0.1:9")
        self.assertEqual(client.session_id, "ses_test")
        self.assertNotIn("ast_not_a_real_token", repr(client))

    @unittest.skipUnless(sys.platform.startswith("linux"), "/proc and prctl are Linux")
    def test_the_token_is_gone_from_proc_environ_and_the_process_is_not_dumpable(self):
        code = (
            "import ctypes, subprocess\n"
            "from airlock.sandbox import SandboxClient\n"
            "c = SandboxClient.from_env()\n"
            "own = open('/proc/self/environ', 'rb').read()\n"
            "child = subprocess.run(['/bin/sh', '-c', 'cat /proc/$PPID/environ'], capture_output=True).stdout\n"
            "dumpable = ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)\n"  # PR_GET_DUMPABLE
            "print(b'ast_probe_secret' in own, b'ast_probe_secret' in child, b'PATH=' in own, dumpable)\n"
        )
        env = dict(os.environ, SESSION_ID="ses_p", SESSION_TOKEN="ast_probe_secret_value", CONTROL_PLANE_URL="http://127.0.0.1:9")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.split(), ["False", "False", "True", "0"])

    def test_missing_variables_are_named(self):
        with mock.patch.dict(os.environ, {"SESSION_ID": "ses_x"}):
            os.environ.pop("SESSION_TOKEN", None)
            os.environ.pop("CONTROL_PLANE_URL", None)
            with self.assertRaises(AirlockError) as cm:
                SandboxClient.from_env()
            self.assertIn("SESSION_TOKEN", str(cm.exception))
            self.assertIn("CONTROL_PLANE_URL", str(cm.exception))

    def test_only_http_and_https(self):
        for url in ("ftp://example.com", "file:///etc/passwd", "example.com:80", "unix:///tmp/x.sock", ""):
            with self.assertRaises(ValueError, msg=url):
                SandboxClient(url, "t")
        SandboxClient("https://example.com/base/", "t")  # accepted


class RetryTest(unittest.TestCase):
    def test_a_closed_port_is_retried_until_the_deadline(self):
        (port,) = free_ports(1)
        client = SandboxClient(f"http://127.0.0.1:{port}", "ast_x", retry_deadline_s=2)
        started = time.monotonic()
        with self.assertRaises(TransportError) as cm:
            client.event("agent.test")
        elapsed = time.monotonic() - started
        self.assertGreaterEqual(cm.exception.attempts, 4)  # 0.25 + 0.5 + 1 s of backoff fit in 2 s
        self.assertFalse(cm.exception.sent)
        self.assertIn("gave up after", str(cm.exception))
        self.assertGreater(elapsed, 0.5)
        self.assertLess(elapsed, 4)


class SandboxClientTest(ServerTestCase):
    REPLIES = ["one", "two", "three", "four"]

    def setUp(self):
        super().setUp()
        self.session, self.client, self.env = self.server.capture_session()
        self.sid = self.session["id"]

    def test_inbox_takes_the_task_then_answers_204_as_empty(self):
        self.assertEqual(self.client.inbox(wait=5), [{"role": "user", "content": "captured task"}])
        self.assertEqual(self.client.history, [{"role": "user", "content": "captured task"}])
        started = time.monotonic()
        self.assertEqual(self.client.inbox(wait=1), [])
        self.assertGreaterEqual(time.monotonic() - started, 0.9)  # it did wait on the server

    def test_inbox_returns_a_follow_up_while_waiting(self):
        self.client.inbox(wait=5)
        threading.Timer(0.5, lambda: self.op.send_message(self.sid, "more")).start()
        started = time.monotonic()
        self.assertEqual(self.client.inbox(wait=20), [{"role": "user", "content": "more"}])
        self.assertLess(time.monotonic() - started, 10)

    def test_chat_sends_only_new_messages(self):
        taken = self.client.inbox(wait=5)
        for m in taken:
            self.client.add(m)  # already recorded by inbox(): must not be added twice
        self.assertEqual(self.client.chat(), {"role": "assistant", "content": "one"})
        self.assertIsNotNone(self.client.last_usage)
        self.client.add({"role": "user", "content": "again"})
        self.assertEqual(self.client.unsent, [{"role": "user", "content": "again"}])
        self.assertEqual(self.client.chat()["content"], "two")
        self.assertEqual(self.client.chat()["content"], "three")
        stored = self.op.messages(self.sid)
        self.assertEqual(
            [(m["role"], m["content"]) for m in stored],
            [("user", "captured task"), ("assistant", "one"), ("user", "again"), ("assistant", "two"), ("assistant", "three")],
        )
        self.assertEqual(self.client.history, stored)
        calls = [e["data"] for e in self.op.events(self.sid, follow=False) if e["type"] == "llm.call"]
        self.assertEqual([c["new_messages"] for c in calls], [0, 1, 0])

    def test_load_history_counts_everything_as_sent(self):
        self.client.inbox(wait=5)
        self.client.chat()
        other = SandboxClient(self.env["CONTROL_PLANE_URL"], self.env["SESSION_TOKEN"])
        self.assertEqual(len(other.load_history()), 2)
        self.assertEqual(other.unsent, [])
        other.add({"role": "user", "content": "from the new sandbox"})
        self.assertEqual(other.chat()["content"], "two")
        self.assertEqual(len(self.op.messages(self.sid)), 4)

    def test_a_lost_chat_answer_is_not_sent_twice(self):
        proxy = TcpProxy(self.server.sandbox_port)
        self.addCleanup(proxy.close)
        client = SandboxClient(proxy.url, self.env["SESSION_TOKEN"], retry_deadline_s=20)
        client.inbox(wait=5)
        client.add({"role": "user", "content": "only once"})
        proxy.drop_answer("POST /sandbox/v1/llm/chat")
        reply = client.chat()
        self.assertEqual(proxy.dropped, 1)
        self.assertEqual(reply["content"], "one")
        # The stored call was taken from the history, not made again.
        self.assertEqual(sum(1 for r in proxy.requests if r.startswith("POST /sandbox/v1/llm/chat")), 1)
        stored = self.op.messages(self.sid)
        self.assertEqual([m["content"] for m in stored], ["captured task", "only once", "one"])
        self.assertEqual(client.history, stored)
        self.assertEqual(self.op.get_session(self.sid)["usage"]["llm_calls"], 1)
        # And the conversation carries on normally.
        self.assertEqual(client.chat()["content"], "two")

    def test_a_lost_inbox_answer_still_delivers_the_messages(self):
        proxy = TcpProxy(self.server.sandbox_port)
        self.addCleanup(proxy.close)
        client = SandboxClient(proxy.url, self.env["SESSION_TOKEN"], retry_deadline_s=20)
        proxy.drop_answer("GET /sandbox/v1/inbox")
        self.assertEqual(client.inbox(wait=5), [{"role": "user", "content": "captured task"}])
        self.assertEqual(proxy.dropped, 1)
        self.assertEqual(client.chat()["content"], "one")
        self.assertEqual([m["content"] for m in self.op.messages(self.sid)], ["captured task", "one"])

    def test_a_chat_whose_answer_a_proxy_lost_is_not_sent_twice(self):
        proxy = TcpProxy(self.server.sandbox_port)
        self.addCleanup(proxy.close)
        client = SandboxClient(proxy.url, self.env["SESSION_TOKEN"], retry_deadline_s=20)
        client.inbox(wait=5)
        client.add({"role": "user", "content": "only once"})
        proxy.bad_gateway("POST /sandbox/v1/llm/chat")
        self.assertEqual(client.chat()["content"], "one")
        self.assertEqual(proxy.dropped, 1)
        self.assertEqual(sum(1 for r in proxy.requests if r.startswith("POST /sandbox/v1/llm/chat")), 1)
        self.assertEqual([m["content"] for m in self.op.messages(self.sid)], ["captured task", "only once", "one"])
        self.assertEqual(self.op.get_session(self.sid)["usage"]["llm_calls"], 1)

    def test_an_inbox_answer_a_proxy_lost_still_delivers_the_messages(self):
        proxy = TcpProxy(self.server.sandbox_port)
        self.addCleanup(proxy.close)
        client = SandboxClient(proxy.url, self.env["SESSION_TOKEN"], retry_deadline_s=20)
        proxy.bad_gateway("GET /sandbox/v1/inbox")
        self.assertEqual(client.inbox(wait=5), [{"role": "user", "content": "captured task"}])
        self.assertEqual(proxy.dropped, 1)

    def test_the_server_coming_up_late_is_retried(self):
        (port,) = free_ports(1)
        client = SandboxClient(f"http://127.0.0.1:{port}", self.env["SESSION_TOKEN"], retry_deadline_s=15)
        proxies = []
        timer = threading.Timer(1.0, lambda: proxies.append(TcpProxy(self.server.sandbox_port, listen_port=port)))
        timer.start()
        self.addCleanup(lambda: [p.close() for p in proxies])
        started = time.monotonic()
        self.assertEqual(len(client.load_history()), 0)
        self.assertGreaterEqual(time.monotonic() - started, 0.9)
        self.assertEqual(len(proxies), 1)

    def test_client_errors_are_not_retried(self):
        started = time.monotonic()
        with self.assertRaises(AirlockError) as cm:
            self.client.event("llm.fake", {})  # reserved for the control plane
        self.assertEqual(cm.exception.status, 400)
        self.assertEqual(cm.exception.code, "invalid_argument")
        self.assertIn("reserved", cm.exception.message)
        with self.assertRaises(AirlockError) as cm:
            self.client.presign("../escape", "PUT", size=1)
        self.assertEqual(cm.exception.status, 400)
        self.assertLess(time.monotonic() - started, 1.0)

    def test_a_revoked_token_raises_session_ended(self):
        self.client.inbox(wait=5)
        self.op.kill(self.sid)
        started = time.monotonic()
        for call in (lambda: self.client.event("agent.after"), self.client.load_history, lambda: self.client.inbox(wait=1)):
            with self.assertRaises(SessionEnded) as cm:
                call()
            self.assertIsInstance(cm.exception, AuthError)
            self.assertEqual(cm.exception.status, 401)
            self.assertNotIn(self.env["SESSION_TOKEN"], str(cm.exception))
        self.assertLess(time.monotonic() - started, 2.0)  # not retried

    def test_upload_and_download(self):
        data = os.urandom(3 * 1024 * 1024 + 17)
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "blob.bin")
            with open(src, "wb") as f:
                f.write(data)
            self.assertEqual(self.client.upload(src), {"name": "blob.bin", "size": len(data)})
            self.assertEqual(self.client.upload(src, name="copy.bin", content_type="application/x-test")["name"], "copy.bin")
            back = os.path.join(d, "back.bin")
            self.assertEqual(self.client.download("blob.bin", back), len(data))
            with open(back, "rb") as f:
                self.assertEqual(f.read(), data)
            op_copy = os.path.join(d, "op.bin")
            self.assertEqual(self.op.download_file(self.sid, "copy.bin", op_copy), len(data))
            with open(op_copy, "rb") as f:
                self.assertEqual(f.read(), data)
            with self.assertRaises(AirlockError) as cm:
                self.client.download("missing.bin", os.path.join(d, "missing.bin"))
            self.assertEqual(cm.exception.status, 404)
            self.assertFalse(os.path.exists(os.path.join(d, "missing.bin")))
            self.assertEqual([n for n in os.listdir(d) if n.endswith(".part")], [])
        names = sorted(f["name"] for f in self.op.list_files(self.sid))
        self.assertEqual(names, ["blob.bin", "copy.bin"])

    def test_events_and_finish(self):
        seq = self.client.event("agent.note", {"n": 1})
        self.assertIsInstance(seq, int)
        self.client.finish("failed", "gave up on purpose")
        final = self.op.get_session(self.sid)
        self.assertEqual((final["state"], final["result"]), ("failed", "gave up on purpose"))
        notes = [e for e in self.op.events(self.sid, follow=False) if e["type"] == "agent.note"]
        self.assertEqual([(e["seq"], e["data"]) for e in notes], [(seq, {"n": 1})])
        with self.assertRaises(SessionEnded):
            self.client.event("agent.late")
        with self.assertRaises(ValueError):
            self.client.finish("maybe")


if __name__ == "__main__":
    unittest.main()
