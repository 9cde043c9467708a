#!/usr/bin/env python3
"""The egress gateway against a direct connection and against tinyproxy, in one run.

One origin (nginx on 127.0.0.2, a 1 KiB file and a large one) is reached three ways: (a)
directly, (b) through tinyproxy (Debian's, on loopback TCP), (c) through Airlock's gateway, on a
session's own channel (its Unix socket; the process backend, so that no sandbox is in the way
and only the gateway is measured). For each: the time of a fresh CONNECT tunnel plus a GET of the
small file (sequential, the three ways interleaved), the same as a plain-HTTP proxy request,
the throughput of the large file through one tunnel, and the proxy's CPU per request.

Then HTTPS (nginx with TLS on origin.test, a name pinned to 127.0.0.2): a fresh TLS connection
and one GET with an Authorization header, directly, through tinyproxy's tunnel, through the
gateway's tunnel (end to end, a session without a secret), and through the gateway with a
secret for origin.test, which opens the tunnel (TLS to the client with a leaf of the
deployment's CA, TLS to nginx verified, the placeholder replaced); and the large file over one
TLS connection each way.

Requires: root or not, nginx and tinyproxy (scripts/install-deps.sh --with-bench), a built
airlock. Prints a table; BENCHMARKS.md, "Egress gateway", has a run.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import ssl
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (HOST, ServerBench, exit_on_sigterm, find_airlock, free_port,  # noqa: E402
                      machine_facts, ms, now, pct, print_preamble, proc_ticks)

ORIGIN = "127.0.0.2"


def read_head(s):
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(1)
        if not b:
            raise RuntimeError(f"the proxy closed before its answer's head: {head!r}")
        head += b
    return head


def read_to_end(s, buf):
    n = 0
    while True:
        got = s.recv_into(buf)
        if got == 0:
            return n
        n += got


class Bench(ServerBench):
    def __init__(self, a):
        super().__init__(a, "airlock-egress-")
        self.procs = []

    def start_all(self):
        a = self.a
        self.www = os.path.join(self.tmp, "www")
        os.makedirs(self.www)
        with open(os.path.join(self.www, "small"), "wb") as f:
            f.write(b"x" * 1024)
        with open(os.path.join(self.www, "large"), "wb") as f:
            f.truncate(a.large_mb << 20)
        self.origin_port = free_port()
        conf = os.path.join(self.tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""daemon off;
worker_processes 1;
pid {self.tmp}/nginx.pid;
error_log {self.tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {self.tmp};
  proxy_temp_path {self.tmp};
  fastcgi_temp_path {self.tmp};
  uwsgi_temp_path {self.tmp};
  scgi_temp_path {self.tmp};
  sendfile on;
  server {{ listen {ORIGIN}:{self.origin_port}; root {self.www}; }}
}}
""")
        # HTTPS: a self-signed certificate for origin.test, which the gateway verifies nginx with.
        self.tls_port = free_port()
        self.tls_cert = os.path.join(self.tmp, "origin.pem")
        self.tls_key = os.path.join(self.tmp, "origin.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", self.tls_key, "-out", self.tls_cert, "-days", "2",
                        "-subj", "/CN=origin.test", "-addext", "subjectAltName=DNS:origin.test"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(conf) as f:
            text = f.read()
        text = text.replace(f"  server {{ listen {ORIGIN}:{self.origin_port}; root {self.www}; }}\n",
                            f"  server {{ listen {ORIGIN}:{self.origin_port}; root {self.www}; }}\n"
                            f"  server {{ listen {ORIGIN}:{self.tls_port} ssl; root {self.www};\n"
                            f"    ssl_certificate {self.tls_cert}; ssl_certificate_key {self.tls_key}; }}\n")
        with open(conf, "w") as f:
            f.write(text)
        self.hosts = os.path.join(self.tmp, "hosts")
        with open(self.hosts, "w") as f:
            f.write(f"{ORIGIN} origin.test\n")
        self.nginx = subprocess.Popen([a.nginx, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.procs.append(self.nginx)
        self.tiny_port = free_port()
        tconf = os.path.join(self.tmp, "tinyproxy.conf")
        with open(tconf, "w") as f:
            f.write(f"""Port {self.tiny_port}
Listen 127.0.0.1
Timeout 600
MaxClients 256
Allow 127.0.0.1
ConnectPort {self.origin_port}
ConnectPort {self.tls_port}
LogLevel Critical
PidFile "{self.tmp}/tinyproxy.pid"
""")
        self.tiny = subprocess.Popen([a.tinyproxy, "-d", "-c", tconf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        self.procs.append(self.tiny)
        self.config_path = os.path.join(self.tmp, "airlock.toml")
        with open(self.config_path, "w") as f:
            f.write(f"""# written by bench/egress.py
[log]
level = "warn"
[sandbox]
default_backend = "process"
allow_unisolated_backends = true
[egress]
allow = ["origin.test:{self.tls_port}"]
allow_addresses = ["{ORIGIN}:{self.origin_port}", "{ORIGIN}:{self.tls_port}"]
max_connections_per_session = 64
requests_per_minute = 1000000
mb_per_minute = 1000000
hosts_file = "{self.hosts}"
upstream_ca_file = "{self.tls_cert}"
[secrets.origin]
env = "AIRLOCK_BENCH_SECRET"
hosts = ["origin.test:{self.tls_port}"]
""")
        os.environ["AIRLOCK_BENCH_SECRET"] = "bench-secret-value"
        self.start_server(["--config", self.config_path])
        egress = {"allow": [f"origin.test:{self.tls_port}"],
                  "allow_addresses": [f"{ORIGIN}:{self.origin_port}", f"{ORIGIN}:{self.tls_port}"]}
        self.socket_path = self.session_socket(egress)
        self.secret_socket_path = self.session_socket(dict(egress, secrets=["origin"]))
        self.airlock_ca = os.path.join(self.home, "egress-ca", "ca.pem")
        self.tls_direct = ssl.create_default_context(cafile=self.tls_cert)
        self.tls_airlock = ssl.create_default_context(cafile=self.airlock_ca)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.connect("direct").close()
                self.connect("tinyproxy").close()
                self.connect("airlock").close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx, tinyproxy or the session's socket did not come up")

    def session_socket(self, egress):
        """A session of `sleep` with `egress`; the path of its channel (its Unix socket)."""
        body = json.dumps({"task": "bench", "command": ["sleep", "3600"], "egress": egress}).encode()
        req = urllib.request.Request(f"http://{HOST}:{self.port}/v1/sessions", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {self.key}",
                                              "Content-Type": "application/json"})
        sid = json.loads(urllib.request.urlopen(req, timeout=30).read())["id"]
        self.sessions.add(sid)
        return os.path.join(self.home, "run", sid, "control.sock")

    # ---------------------------------------------------------------- clients
    def connect(self, kind):
        if kind in ("airlock", "airlock+secret"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(self.socket_path if kind == "airlock" else self.secret_socket_path)
            return s
        s = socket.socket()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect((ORIGIN, self.origin_port) if kind == "direct" else (HOST, self.tiny_port))
        return s

    def tunnel_get(self, kind, path, buf):
        """A fresh tunnel (a direct connection for `direct`) and one GET through it: bytes read."""
        target = f"{ORIGIN}:{self.origin_port}"
        s = self.connect(kind)
        try:
            if kind != "direct":
                s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
                head = read_head(s)
                if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
                    raise RuntimeError(f"{kind}: CONNECT answered {head[:60]!r}")
            s.sendall(f"GET /{path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
            return read_to_end(s, buf)
        finally:
            s.close()

    def plain_get(self, kind, path, buf):
        """One plain-HTTP request: absolute-form to a proxy, origin-form directly."""
        target = f"{ORIGIN}:{self.origin_port}"
        s = self.connect(kind)
        try:
            url = f"/{path}" if kind == "direct" else f"http://{target}/{path}"
            s.sendall(f"GET {url} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
            return read_to_end(s, buf)
        finally:
            s.close()

    def tls_get(self, kind, path, buf):
        """A fresh TLS connection to origin.test (through a tunnel but for `direct`) and one GET
        with an Authorization header: bytes read (head and body)."""
        if kind == "direct":
            s = socket.socket()
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.connect((ORIGIN, self.tls_port))
        else:
            s = self.connect(kind)
        try:
            if kind != "direct":
                # tinyproxy resolves with the system's resolver, which does not know origin.test.
                host = ORIGIN if kind == "tinyproxy" else "origin.test"
                target = f"{host}:{self.tls_port}"
                s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
                head = read_head(s)
                if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
                    raise RuntimeError(f"{kind}: CONNECT answered {head[:60]!r}")
            ctx = self.tls_airlock if kind == "airlock+secret" else self.tls_direct
            t = ctx.wrap_socket(s, server_hostname="origin.test")
            t.sendall(f"GET /{path} HTTP/1.1\r\nHost: origin.test\r\nAuthorization: Bearer "
                      f"airlock-secret-origin\r\nConnection: close\r\n\r\n".encode())
            n = 0
            while True:
                try:
                    got = t.recv_into(buf)
                except ssl.SSLEOFError:
                    break
                if got == 0:
                    break
                n += got
            t.close()
            return n
        finally:
            s.close()

    def remove_leftovers(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()

    def delete_sessions(self):
        for sid in list(self.sessions):
            try:
                req = urllib.request.Request(f"http://{HOST}:{self.port}/v1/sessions/{sid}", method="DELETE",
                                             headers={"Authorization": f"Bearer {self.key}"})
                urllib.request.urlopen(req, timeout=30).read()
                self.sessions.discard(sid)
            except Exception as e:  # noqa: BLE001 - reported, not raised
                print(f"cleanup: DELETE {sid}: {e}", file=sys.stderr)


KINDS = ("direct", "tinyproxy", "airlock")
TLS_KINDS = ("direct", "tinyproxy", "airlock", "airlock+secret")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000,
                    help="sequential requests of the small file per way and mode (default 1000)")
    ap.add_argument("--large-mb", type=int, default=512, help="size of the large file (default 512)")
    ap.add_argument("--runs", type=int, default=3, help="downloads of the large file per way (default 3)")
    ap.add_argument("--airlock", default=None, help="airlock binary (default: build/bin/airlock)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args()
    a.airlock = find_airlock(a.airlock)
    for tool in ("nginx", "tinyproxy"):
        path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin")
        if not path:
            sys.exit(f"{tool} is not installed (scripts/install-deps.sh --with-bench)")
        setattr(a, tool, path)
    exit_on_sigterm()
    sys.stdout.reconfigure(line_buffering=True)
    print_preamble(machine_facts("(at start)", "tree"))
    print(f"origin:   nginx on {ORIGIN}; {a.requests} requests of 1 KiB per way and mode, "
          f"{a.runs} x {a.large_mb} MiB per way")

    b = Bench(a)
    buf = bytearray(1 << 20)
    lat = {(k, m): [] for k in TLS_KINDS for m in ("tunnel", "plain", "https")}
    cpu = {}
    tput = {k: [] for k in KINDS}
    tls_tput = {k: [] for k in TLS_KINDS}
    hz = os.sysconf("SC_CLK_TCK")
    try:
        b.start_all()
        pids = {"tinyproxy": b.tiny.pid, "airlock": b.server.pid}
        for mode, fn, kinds in (("tunnel", b.tunnel_get, KINDS), ("plain", b.plain_get, KINDS),
                                ("https", b.tls_get, TLS_KINDS)):
            pids["airlock+secret"] = b.server.pid
            for _ in range(20):  # warm-up
                for k in kinds:
                    fn(k, "small", buf)
            # airlock and airlock+secret are one process: each way's CPU is measured in a pass
            # of its own below.
            ticks0 = {k: proc_ticks(p) for k, p in pids.items()}
            spent = {k: 0.0 for k in kinds}
            for _ in range(a.requests):
                for k in kinds:
                    t = now()
                    n = fn(k, "small", buf)
                    dt = now() - t
                    if n < 1024:
                        raise RuntimeError(f"{k} {mode}: a short answer ({n} bytes)")
                    lat[(k, mode)].append(dt)
                    spent[k] += dt
            for k, p in pids.items():
                if k in kinds:
                    cpu[(k, mode)] = (proc_ticks(p) - ticks0[k]) / hz / a.requests
            if mode == "https":
                # The gateway's two ways alone, for its CPU per request of each.
                for k in ("airlock", "airlock+secret"):
                    t0 = proc_ticks(b.server.pid)
                    for _ in range(a.requests):
                        fn(k, "small", buf)
                    cpu[(k, mode)] = (proc_ticks(b.server.pid) - t0) / hz / a.requests
        for _ in range(a.runs):
            for fn, kinds, into in ((b.tunnel_get, KINDS, tput), (b.tls_get, TLS_KINDS, tls_tput)):
                for k in kinds:
                    t = now()
                    n = fn(k, "large", buf)
                    dt = now() - t
                    if n < a.large_mb << 20:
                        raise RuntimeError(f"{k} ({fn.__name__}): the large file came short ({n} bytes)")
                    into[k].append((a.large_mb << 20) / dt / 1e6)
    finally:
        b.cleanup()

    print()
    print("| way | mode | p50 | p90 | p99 | added p50 | proxy CPU/request |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for mode in ("tunnel", "plain", "https"):
        base = pct(lat[("direct", mode)], 50)
        for k in (TLS_KINDS if mode == "https" else KINDS):
            xs = lat[(k, mode)]
            added = "" if k == "direct" else ms(pct(xs, 50) - base)
            c = cpu.get((k, mode))
            cpu_s = "" if c is None else f"{c * 1e6:.0f} us"
            print(f"| {k} | {mode} | {ms(pct(xs, 50))} | {ms(pct(xs, 90))} | {ms(pct(xs, 99))} | {added} | {cpu_s} |")
    for what, results in (("through one tunnel", tput), ("over one TLS connection", tls_tput)):
        print()
        print(f"| way | {a.large_mb} MiB {what}, MB/s (best of {a.runs}) | vs direct |")
        print("|---|---:|---:|")
        best_direct = max(results["direct"])
        for k, xs in results.items():
            print(f"| {k} | {max(xs):.0f} | {max(xs) / best_direct:.2f}x |")
    b.print_footer()
    return 1 if b.problems else 0


if __name__ == "__main__":
    sys.exit(main())
