"""A real control plane for the Python tests: ``$AIRLOCK_BIN serve`` on free loopback ports,
the ``process`` backend, and a scripted model. Plus a TCP proxy that can cut connections, to
test what the clients do when the network misbehaves."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(os.path.dirname(HERE))
SDK_DIR = os.path.join(SOURCE_DIR, "sdk", "python")
AGENT = os.path.join(SOURCE_DIR, "examples", "agents", "python_agent.py")

if SDK_DIR not in sys.path:
    sys.path.insert(0, SDK_DIR)

from airlock.operator import OperatorClient, TERMINAL_STATES  # noqa: E402
from airlock.sandbox import SandboxClient  # noqa: E402


def airlock_bin():
    path = os.environ.get("AIRLOCK_BIN")
    if not path:
        raise RuntimeError("set AIRLOCK_BIN to the airlock binary (ctest does this)")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"AIRLOCK_BIN={path} is not an executable")
    return path


def free_ports(n):
    """n distinct free loopback ports (bound to port 0, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(predicate, timeout=20.0, what="a condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Server:
    """``airlock serve`` in a temporary home, with the given scripted-model replies."""

    def __init__(self, replies=(), extra_config=""):
        self.replies = list(replies)
        self.extra_config = extra_config
        self.proc = None
        self.dir = None

    def start(self):
        self.dir = tempfile.mkdtemp(prefix="airlock-py-")
        with open(os.path.join(self.dir, "script.json"), "w") as f:
            json.dump({"replies": self.replies}, f)
        last_error = None
        for _ in range(3):  # a free port can be taken by someone else before the server binds it
            op_port, sb_port = free_ports(2)
            self.operator_url = f"http://127.0.0.1:{op_port}"
            self.sandbox_url = f"http://127.0.0.1:{sb_port}"
            self.sandbox_port = sb_port
            self.operator_port = op_port
            config = os.path.join(self.dir, "airlock.toml")
            with open(config, "w") as f:
                f.write(
                    f"""[server]
operator_listen = "127.0.0.1:{op_port}"
sandbox_listen = "127.0.0.1:{sb_port}"

[sandbox]
default_backend = "process"
allow_unisolated_backends = true

[providers.demo]
kind = "scripted"
script = "{os.path.join(self.dir, 'script.json')}"

[models.default]
provider = "demo"
model = "scripted"
{self.extra_config}
"""
                )
            self.log_path = os.path.join(self.dir, "server.log")
            env = {k: v for k, v in os.environ.items() if not k.startswith("AIRLOCK_")}
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [airlock_bin(), "serve", "--home", self.dir, "--config", config],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=env,
                )
            try:
                self._wait_healthy()
                return self
            except RuntimeError as e:
                last_error = e
                self._terminate()
        self.stop()
        raise RuntimeError(f"airlock serve did not start: {last_error}")

    def _wait_healthy(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.operator_url + "/healthz", timeout=2) as r:
                    if r.status == 200 and json.load(r).get("status") == "ok":
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"no /healthz answer within 30 s:\n{self.log_tail()}")

    def log_tail(self, n=4000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def operator(self, **kwargs):
        return OperatorClient(self.operator_url, home=self.dir, **kwargs)

    @property
    def operator_key(self):
        with open(os.path.join(self.dir, "operator.key")) as f:
            return f.readline().strip()

    def capture_session(self, **create_kwargs):
        """A session whose command saves its three variables to a file and sleeps, so that
        the test can act as the sandbox. Returns (session, SandboxClient, env dict)."""
        out = os.path.join(self.dir, f"capture-{time.monotonic_ns()}.env")
        script = (
            'umask 077; printf "%s\\n" "$SESSION_ID" "$SESSION_TOKEN" "$CONTROL_PLANE_URL" > "$0.tmp" '
            '&& mv "$0.tmp" "$0"; echo capture ready; exec sleep 300'
        )
        session = self.operator().create_session(
            "captured task", command=["/bin/sh", "-c", script, out], **create_kwargs
        )
        wait_for(lambda: os.path.exists(out), 20, "the capture session's variables")
        with open(out) as f:
            sid, token, url = f.read().splitlines()[:3]
        env = {"SESSION_ID": sid, "SESSION_TOKEN": token, "CONTROL_PLANE_URL": url}
        return session, SandboxClient(url, token, session_id=sid, retry_deadline_s=10), env

    def _terminate(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            # End every session first: a process-backend child would outlive the server.
            try:
                op = self.operator(timeout=10)
                for s in op.list_sessions():
                    if s.get("state") not in TERMINAL_STATES:
                        op.kill(s["id"])
            except Exception as e:  # the test's own failure matters more
                print(f"warning: could not end the sessions: {e}", file=sys.stderr)
        self._terminate()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


class ServerTestCase(unittest.TestCase):
    """Starts a server per test with ``REPLIES`` as the model's script."""

    REPLIES = ()
    EXTRA_CONFIG = ""

    def setUp(self):
        self.server = Server(self.REPLIES, self.EXTRA_CONFIG).start()
        self.addCleanup(self.server.stop)
        self.op = self.server.operator()

    def agent_session(self, task, **kwargs):
        return self.op.create_session(task, command=[sys.executable, AGENT], **kwargs)

    def wait_session(self, sid, timeout=60):
        try:
            return self.op.wait(sid, timeout=timeout)
        except TimeoutError:
            self.fail(f"session {sid} did not end; agent log:\n{self.op.logs(sid)}\nserver log:\n{self.server.log_tail()}")


class TcpProxy:
    """Forwards loopback TCP connections to ``upstream_port``. It can cut every open
    connection (``cut_all``) and swallow the answer to requests that start with a prefix
    (``drop_answer``): the request reaches the server, the client never hears back."""

    def __init__(self, upstream_port, listen_port=0):
        self.upstream_port = upstream_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", listen_port))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._open = set()
        self._drops = []  # [prefix bytes, remaining]
        self.requests = []  # first line of every request seen
        self.dropped = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_answer(self, prefix, times=1):
        with self._lock:
            self._drops.append([prefix.encode(), times, False])

    def bad_gateway(self, prefix, times=1):
        """Like ``drop_answer``, but the client gets what a load balancer sends when the server
        it forwarded the request to dies before answering: its own 502, not the API's."""
        with self._lock:
            self._drops.append([prefix.encode(), times, True])

    def cut_all(self):
        with self._lock:
            socks = list(self._open)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self._closed = True
        try:
            self.listener.close()
        except OSError:
            pass
        self.cut_all()

    def _track(self, *socks):
        with self._lock:
            self._open.update(socks)

    def _untrack(self, *socks):
        with self._lock:
            for s in socks:
                self._open.discard(s)
                try:
                    # shutdown, not just close: another thread blocked in recv() keeps a
                    # closed socket's connection open.
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    s.close()
                except OSError:
                    pass

    def _accept(self):
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        self._track(client, upstream)
        try:
            first = client.recv(65536)
            if not first:
                return
            with self._lock:
                self.requests.append(first.split(b"\r\n", 1)[0].decode("latin-1"))
                drop = False
                gateway = False
                for d in self._drops:
                    if d[1] > 0 and first.startswith(d[0]):
                        d[1] -= 1
                        drop = True
                        gateway = d[2]
                        break
            upstream.sendall(first)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            if drop:
                # Let the server finish (it answers once the work is stored), then hang up.
                upstream.settimeout(30)
                try:
                    upstream.recv(1)
                except OSError:
                    pass
                time.sleep(0.1)
                if gateway:
                    body = b"<html><body><h1>502 Bad Gateway</h1></body></html>\n"
                    client.sendall(
                        b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
                    )
                with self._lock:
                    self.dropped += 1
                return
            self._pump(upstream, client)
        finally:
            self._untrack(client, upstream)

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
