"""airlock.operator.OperatorClient against a real control plane (and one fake, for redirects)."""

import http.server
import os
import tempfile
import threading
import time
import unittest
from unittest import mock

from airlock_harness import ServerTestCase, TcpProxy, wait_for

from airlock import AirlockError, AuthError
from airlock.operator import OperatorClient


class OperatorClientTest(ServerTestCase):
    REPLIES = ["hello"]
    EXTRA_CONFIG = """
[egress]
allow = ["pypi.org:443", "*.github.com"]
[egress.policies.pip]
allow = ["pypi.org:443"]
"""

    def test_work_going_in_and_egress_at_create(self):
        s, _, _ = self.server.capture_session(
            env={"REPO": "airlock"}, files={"notes.md": "hi"}, egress={"allow": ["api.github.com"]}
        )
        got = self.op.get_session(s["id"])
        self.assertEqual(got["env"], {"REPO": "airlock"})
        self.assertEqual(got["egress"], {"allow": ["api.github.com"], "allow_addresses": []})
        self.assertEqual([f["name"] for f in self.op.list_files(s["id"])], ["notes.md"])
        s2, _, _ = self.server.capture_session(egress={"policy": "pip"})
        self.assertEqual(s2["egress"], {"policy": "pip"})
        with self.assertRaises(AirlockError) as cm:
            self.op.create_session("x", egress={"allow": ["example.com"]})
        self.assertEqual(cm.exception.status, 400)
        self.assertIn("may only narrow", cm.exception.message)

    def test_a_bad_key_raises_auth_error(self):
        bad = OperatorClient(self.server.operator_url, key="not-the-key")
        with self.assertRaises(AuthError) as cm:
            bad.list_sessions()
        self.assertEqual(cm.exception.status, 401)
        self.assertIn("operator key", str(cm.exception))
        self.assertNotIn("not-the-key", str(cm.exception))

    def test_where_the_key_and_url_come_from(self):
        key = self.server.operator_key
        env = {"AIRLOCK_URL": self.server.operator_url, "AIRLOCK_OPERATOR_KEY": key}
        with mock.patch.dict(os.environ, env):
            self.assertEqual(OperatorClient().list_sessions(), [])
        with mock.patch.dict(os.environ, {"AIRLOCK_URL": self.server.operator_url, "AIRLOCK_HOME": self.server.dir}):
            os.environ.pop("AIRLOCK_OPERATOR_KEY", None)
            self.assertEqual(OperatorClient().list_sessions(), [])  # <AIRLOCK_HOME>/operator.key
        with tempfile.TemporaryDirectory() as empty:
            with mock.patch.dict(os.environ, {}):
                os.environ.pop("AIRLOCK_OPERATOR_KEY", None)
                with self.assertRaises(AuthError) as cm:
                    OperatorClient(self.server.operator_url, home=empty).list_sessions()
                self.assertEqual(cm.exception.code, "no_operator_key")
                self.assertIn(os.path.join(empty, "operator.key"), str(cm.exception))
        with mock.patch.dict(os.environ, {}):
            os.environ.pop("AIRLOCK_URL", None)
            self.assertEqual(OperatorClient(key="k").url, "http://127.0.0.1:7400")

    def test_sessions_messages_and_usage(self):
        s, client, _ = self.server.capture_session(metadata={"ticket": "T-1"}, limits={"timeout_s": 600})
        self.assertEqual(s["state"], "running")
        self.assertEqual(self.op.get_session(s["id"])["metadata"], {"ticket": "T-1"})
        self.assertEqual([x["id"] for x in self.op.list_sessions(state="running")], [s["id"]])
        self.assertEqual(self.op.list_sessions(state="succeeded"), [])
        self.assertEqual(len(self.op.list_sessions(limit=1)), 1)
        client.inbox(wait=5)
        client.chat()
        self.op.send_message(s["id"], "and then?")
        self.assertEqual([m["content"] for m in self.op.messages(s["id"])], ["captured task", "hello"])  # not taken yet
        self.assertEqual(client.inbox(wait=5)[0]["content"], "and then?")
        self.assertEqual(len(self.op.messages(s["id"])), 3)
        usage = self.op.usage()
        self.assertEqual(usage["llm_calls"], 1)
        self.assertEqual(usage["sessions"], 1)
        self.assertEqual(self.op.usage(since=int(time.time() * 1000) + 3_600_000)["llm_calls"], 0)
        self.assertIn("capture ready", wait_for(lambda: self.op.logs(s["id"]), 10, "the sandbox's log"))
        with self.assertRaises(AirlockError) as cm:
            self.op.get_session("ses_doesnotexist0000000000000")
        self.assertEqual(cm.exception.status, 404)
        with self.assertRaises(AirlockError) as cm:
            self.op.create_session("x", model="no-such-alias")
        self.assertEqual(cm.exception.status, 400)
        self.assertIn("no-such-alias", cm.exception.message)

    def test_suspend_resume_kill(self):
        s, client, _ = self.server.capture_session()
        self.assertEqual(self.op.suspend(s["id"])["state"], "suspended")
        with self.assertRaises(AirlockError) as cm:
            self.op.suspend(s["id"])
        self.assertEqual(cm.exception.status, 409)
        self.assertEqual(self.op.resume(s["id"])["state"], "running")
        hibernated = self.op.suspend(s["id"], mode="hibernate")
        self.assertEqual((hibernated["state"], hibernated["tier"]), ("suspended", "hibernated"))
        with self.assertRaises(AirlockError) as cm:
            self.op.suspend(s["id"], mode="doze")
        self.assertEqual(cm.exception.status, 400)
        self.assertEqual(self.op.resume(s["id"])["tier"], "active")
        self.assertEqual(self.op.kill(s["id"])["state"], "killed")
        self.assertEqual(self.op.wait(s["id"], timeout=5)["state"], "killed")

    def test_events_follow_to_the_end(self):
        s, client, _ = self.server.capture_session()

        def sandbox():
            for i in range(3):
                time.sleep(0.2)
                client.event("agent.step", {"i": i})
            client.finish("succeeded", "three steps")

        threading.Thread(target=sandbox, daemon=True).start()
        got = []
        done = threading.Event()

        def follow():
            for ev in self.op.events(s["id"]):
                got.append(ev)
            done.set()

        threading.Thread(target=follow, daemon=True).start()
        self.assertTrue(done.wait(30), f"events() did not end: {[e['type'] for e in got]}")
        types = [e["type"] for e in got]
        self.assertEqual([e["data"]["i"] for e in got if e["type"] == "agent.step"], [0, 1, 2])
        self.assertEqual(types[0], "session.created")
        self.assertEqual(got[-1]["type"], "session.state")
        self.assertEqual(got[-1]["data"]["to"], "succeeded")
        self.assertEqual([e["seq"] for e in got], sorted({e["seq"] for e in got}))
        for e in got:
            self.assertEqual(set(e), {"seq", "type", "data", "created_at"})
        # after= replays from there; follow=False ends at once.
        tail = list(self.op.events(s["id"], after=got[-2]["seq"], follow=False))
        self.assertEqual(tail, [got[-1]])
        self.assertEqual(self.op.wait(s["id"])["result"], "three steps")

    def test_events_reconnect_after_a_dropped_stream(self):
        s, client, _ = self.server.capture_session()
        proxy = TcpProxy(self.server.operator_port)
        self.addCleanup(proxy.close)
        op = OperatorClient(proxy.url, key=self.server.operator_key)
        got = []
        done = threading.Event()

        def follow():
            for ev in op.events(s["id"]):
                got.append(ev)
            done.set()

        threading.Thread(target=follow, daemon=True).start()
        client.event("agent.step", {"i": 0})
        client.event("agent.step", {"i": 1})
        wait_for(lambda: sum(e["type"] == "agent.step" for e in got) == 2, 10, "the first two events")
        def streams():
            return sum(r.startswith("GET /v1/sessions/" + s["id"] + "/events") for r in proxy.requests)

        before = streams()
        proxy.cut_all()
        wait_for(lambda: streams() > before, 10, "events() to reconnect")
        self.assertFalse(done.is_set(), "events() ended while the session was still running")
        client.event("agent.step", {"i": 2})
        client.finish("succeeded", "done")
        self.assertTrue(done.wait(30), "events() did not end")
        self.assertEqual([e["data"]["i"] for e in got if e["type"] == "agent.step"], [0, 1, 2])
        seqs = [e["seq"] for e in got]
        self.assertEqual(seqs, sorted(set(seqs)))  # nothing twice, nothing out of order
        self.assertEqual(got[-1]["data"]["to"], "succeeded")

    def test_wait_times_out(self):
        s, _, _ = self.server.capture_session()
        started = time.monotonic()
        with self.assertRaises(TimeoutError):
            self.op.wait(s["id"], timeout=1)
        self.assertLess(time.monotonic() - started, 5)


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Fake servers for the redirect test: 'api' redirects, 'store' serves the bytes."""

    seen = []

    def do_GET(self):
        self.seen.append((self.server.role, self.path, self.headers.get("Authorization")))
        if self.server.role == "api":
            self.send_response(302)
            self.send_header("Location", self.server.target + "/blob/report.txt?sig=abc")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"presigned bytes"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class RedirectTest(unittest.TestCase):
    def test_download_follows_a_redirect_without_the_key(self):
        servers = []
        for role in ("store", "api"):
            srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
            srv.role = role
            threading.Thread(target=srv.serve_forever, daemon=True).start()
            self.addCleanup(srv.server_close)
            self.addCleanup(srv.shutdown)
            servers.append(srv)
        store, api = servers
        # Another host, as far as the client can tell: "localhost" instead of 127.0.0.1.
        api.target = f"http://localhost:{store.server_address[1]}"
        _Recorder.seen = []
        op = OperatorClient(f"http://127.0.0.1:{api.server_address[1]}", key="secret-operator-key")
        with tempfile.TemporaryDirectory() as d:
            dest = os.path.join(d, "report.txt")
            self.assertEqual(op.download_file("ses_abc", "report.txt", dest), len(b"presigned bytes"))
            with open(dest, "rb") as f:
                self.assertEqual(f.read(), b"presigned bytes")
        self.assertEqual(
            _Recorder.seen,
            [
                ("api", "/v1/sessions/ses_abc/files/report.txt", "Bearer secret-operator-key"),
                ("store", "/blob/report.txt?sig=abc", None),
            ],
        )


if __name__ == "__main__":
    unittest.main()
