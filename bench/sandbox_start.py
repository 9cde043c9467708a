#!/usr/bin/env python3
"""Sandbox start benchmark for Airlock (issue 3; results in BENCHMARKS.md).

Usage (as root, with airlock, airlock-init and images/base.tar built):

    bench/sandbox_start.py [--sessions 100] [--concurrent 200] [--threads 32]
                           [--runs N] [--warmup 2] [--settle 3] [--cpu-window 5]
                           [--airlock PATH] [--raw FILE] [--keep]

It starts `airlock serve` (oci backend, crun, default configuration) on free ports with a
fresh home under /tmp and measures, in one run:

 1. create -> first agent request: t0 just before POST /v1/sessions, t1 when the client
    sees the agent's `hello` event on the session's SSE stream (GET .../events?after=0,
    opened right after the 201). The agent is `sh -c 'wget --post-data hello ...; exec
    sleep 600'`. --sessions sequential sessions, each DELETEd afterwards (not timed; the
    next one starts only when the previous container is gone).
 2. baseline A: bare `crun run` (foreground) of a bundle copied from a running session,
    with process.args = ["/bin/true"]; A2: the same with the session's own airlock-init
    args and `/bin/true` as the agent (see the printed notes for what was changed).
 3. baseline B: os.posix_spawn + waitpid of a static `true` on the host.
 4. --concurrent sessions started from --threads threads at once: wall time from the
    first POST to the last `hello`; then, all idle, memory per sandbox (MemAvailable
    delta, summed PSS of the sandboxes' processes, cgroup memory usage), the control
    plane's RSS and fds; then DELETE all and check that nothing is left behind.

It prints machine facts, tables and ratios; it asserts no thresholds. Python 3 standard
library only. Everything it starts is stopped on exit, also on errors and Ctrl-C.
"""

import argparse
import concurrent.futures as cf
import json
import os
import queue
import resource
import selectors
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (HOST, BareCrun, ServerBench, exit_on_sigterm, find_airlock,  # noqa: E402
                      machine_facts, meminfo, ms, now, pct, print_preamble, proc_ticks,
                      require_root_and_crun, spawn_wait)

HELLO = ('wget -q -O /dev/null --header "Authorization: Bearer $SESSION_TOKEN" '
         "--header 'Content-Type: application/json' "
         "--post-data '{\"type\":\"hello\",\"data\":{}}' "
         '"$CONTROL_PLANE_URL/sandbox/v1/events"')
AGENT_CMD = ["/bin/sh", "-c", HELLO + "; exec sleep 600"]


def proc_status(pid, key):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid):
    """utime+stime of the process and of its reaped children (e.g. the crun it runs)."""
    return proc_ticks(pid, children=True, missing=float("nan")) / os.sysconf("SC_CLK_TCK")


def cpu_window(pid, seconds):
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


# ------------------------------------------------------------------------------ HTTP
class Api:
    def __init__(self, port, key):
        self.port, self.key = port, key

    def request(self, method, path, body=None, timeout=60):
        """One request on a fresh connection; returns (status, parsed JSON or text)."""
        import http.client
        c = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            headers = {"Authorization": f"Bearer {self.key}", "Accept": "application/json"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            c.request(method, path, body=data, headers=headers)
            r = c.getresponse()
            raw = r.read().decode(errors="replace")
            try:
                return r.status, json.loads(raw)
            except ValueError:
                return r.status, raw
        finally:
            c.close()

    def create(self, command):
        st, body = self.request("POST", "/v1/sessions", {"task": "bench", "command": command, "image": "base"})
        if st != 201:
            raise RuntimeError(f"POST /v1/sessions: {st} {body}")
        return body["id"]

    def delete(self, sid):
        st, body = self.request("DELETE", f"/v1/sessions/{sid}")
        if st not in (200, 404):
            raise RuntimeError(f"DELETE {sid}: {st} {body}")


class Sse:
    """A raw-socket reader of GET /v1/sessions/{id}/events (chunked text/event-stream)."""

    def __init__(self, port, key, sid):
        self.sid = sid
        self.sock = socket.create_connection((HOST, port), timeout=30)
        self.sock.sendall((f"GET /v1/sessions/{sid}/events?after=0 HTTP/1.1\r\nHost: {HOST}\r\n"
                           f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n").encode())
        self.raw = b""
        self.body = b""
        self.headers = None
        self.chunked = False
        self.closed = False

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def _dechunk(self):
        if not self.chunked:
            self.body += self.raw
            self.raw = b""
            return
        while True:
            nl = self.raw.find(b"\r\n")
            if nl < 0:
                return
            size = int(self.raw[:nl].split(b";")[0], 16)
            if size == 0:
                self.closed = True
                return
            if len(self.raw) < nl + 2 + size + 2:
                return
            self.body += self.raw[nl + 2:nl + 2 + size]
            self.raw = self.raw[nl + 2 + size + 2:]

    def read_events(self):
        """Reads what is available (one recv); returns the complete events as dicts."""
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
        self.raw += data
        if self.headers is None:
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return []
            head = self.raw[:end].decode(errors="replace")
            self.raw = self.raw[end + 4:]
            status = head.split("\r\n", 1)[0]
            if " 200 " not in status + " ":
                raise RuntimeError(f"events stream of {self.sid}: {status}")
            self.headers = head.lower()
            self.chunked = "transfer-encoding: chunked" in self.headers
        self._dechunk()
        out = []
        while b"\n\n" in self.body:
            block, self.body = self.body.split(b"\n\n", 1)
            ev = {}
            for line in block.decode(errors="replace").split("\n"):
                if line.startswith("event:"):
                    ev["event"] = line[6:].strip()
                elif line.startswith("data:"):
                    ev["data"] = line[5:].strip()
            if "event" in ev:
                try:
                    ev["json"] = json.loads(ev.get("data", "null"))
                except ValueError:
                    ev["json"] = None
                out.append(ev)
        return out


class Watch:
    """What one session's stream showed: when `hello` arrived and whether it came first."""

    def __init__(self, sid, t0, t201, sse):
        self.sid, self.t0, self.t201, self.sse = sid, t0, t201, sse
        self.t_hello = None
        self.hello_before_running = None
        self.seen_running = False

    def feed(self, events, t):
        for ev in events:
            j = ev.get("json") or {}
            if ev["event"] == "session.state" and (j.get("data") or {}).get("to") == "running":
                self.seen_running = True
            if ev["event"] == "hello" and self.t_hello is None:
                self.t_hello = t
                self.hello_before_running = not self.seen_running
            if ev["event"] == "session.state" and (j.get("data") or {}).get("to") in ("failed", "killed",
                                                                                      "succeeded"):
                raise RuntimeError(f"session {self.sid} ended before its hello: {ev.get('data')}")


# ------------------------------------------------------------------------------ the bench
class Bench(ServerBench):
    report_stop = True

    def __init__(self, args):
        super().__init__(args, "airlock-bench-")
        self.work = os.path.join(self.tmp, "work")
        os.makedirs(self.work)
        self.log_path = os.path.join(self.work, "serve.log")
        self.api = None
        self.crun = None  # the baselines' BareCrun, once a session's bundle is known

    # ---------------------------------------------------------------- server
    def start_server(self):
        super().start_server()
        self.api = Api(self.port, self.key)

    # ---------------------------------------------------------------- sessions
    def container_gone(self, sid, timeout=60):
        path = os.path.join(self.oci_root, "airlock-" + sid)
        deadline = time.monotonic() + timeout
        while os.path.exists(path):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def create(self, command):
        sid = self.api.create(command)
        self.sessions.add(sid)
        return sid

    def delete(self, sid):
        self.api.delete(sid)
        self.sessions.discard(sid)

    def start_and_wait_hello(self, timeout=60):
        """One timed sequential start. Returns the Watch."""
        t0 = now()
        sid = self.create(AGENT_CMD)
        t201 = now()
        w = Watch(sid, t0, t201, Sse(self.port, self.api.key, sid))
        try:
            deadline = time.monotonic() + timeout
            while w.t_hello is None:
                if time.monotonic() > deadline or w.sse.closed:
                    raise RuntimeError(f"no hello from {sid} within {timeout} s (stream closed: {w.sse.closed})")
                w.feed(w.sse.read_events(), now())
        finally:
            w.sse.close()
        return w

    # ---------------------------------------------------------------- phase 1
    def bootstrap(self):
        """First session (cold: the image store imports base.tar on first use); keep its bundle."""
        t0 = now()
        sid = self.create(["/bin/sh", "-c", "exec sleep 600"])
        cold = now() - t0
        self.crun = BareCrun(self.work, os.path.join(self.home, "sessions", sid, "bundle"))
        self.session_config = self.crun.session_config
        self.delete(sid)
        self.container_gone(sid)
        print(f"first session (cold, includes importing base.tar): POST -> 201 in {ms(cold)}")
        return cold

    def sequential(self):
        n = self.a.sessions
        for _ in range(self.a.warmup):
            w = self.start_and_wait_hello()
            self.delete(w.sid)
            self.container_gone(w.sid)
        log_off = self.log_offset()
        watches, teardown = [], []
        for i in range(n):
            w = self.start_and_wait_hello()
            watches.append(w)
            t = now()
            self.delete(w.sid)
            if not self.container_gone(w.sid):
                self.problems.append(f"container of {w.sid} still there 60 s after DELETE")
            teardown.append(now() - t)
            print(f"\r  sequential: {i + 1}/{n}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        h = self.handler_times(log_off, self.log_offset())
        return {
            "total": [w.t_hello - w.t0 for w in watches],
            "post": [w.t201 - w.t0 for w in watches],
            "after201": [w.t_hello - w.t201 for w in watches],
            "hello_first": sum(1 for w in watches if w.hello_before_running),
            "teardown": teardown,
            "srv_create": h.get(("POST", "/v1/sessions"), []),
            "srv_event": h.get(("POST", "/sandbox/v1/events"), []),
        }

    # ---------------------------------------------------------------- baselines
    def baselines(self):
        n = self.a.runs
        res = {}
        # A: bare crun run, args replaced by /bin/true (busybox in the image).
        res["A"] = self.crun.true_runs(n, "a")

        # A2: the session's own init args, agent = /bin/true.
        init_args = self.session_config["process"]["args"]
        cut = init_args.index("--")
        args2 = init_args[:cut + 1] + ["/bin/true"]
        bundle2, cfg2, chan = self.crun.bundle("bundle-a2", args2)
        dt, code, out = self.crun.runs(bundle2, cfg2, 1, "a2-probe", timeout=30)
        res["A2_nosock"] = (dt, code, out.strip().splitlines()[-1:] if out else [])
        # A2 with a stub control socket that answers every request 202.
        stub = StubSocket(os.path.join(chan, "control.sock"))
        try:
            dt, code, out = self.crun.runs(bundle2, cfg2, 1, "a2s-probe", timeout=30)
            if code != 0:
                self.notes.append(f"A2 (stub socket) probe: crun run exited {code}: {out.strip()}")
                res["A2"] = ([], n)
            else:
                res["A2"] = self.crun.runs(bundle2, cfg2, n, "a2")
            res["A2_requests"] = stub.requests
        finally:
            stub.close()

        # B: fork+exec of a static true on the host.
        prog = "/bin/busybox" if os.access("/bin/busybox", os.X_OK) else "/bin/true"
        argv = [prog, "true"] if prog.endswith("busybox") else [prog]
        res["B_argv"] = argv
        times, failures = [], 0
        for _ in range(n):
            dt, code = spawn_wait(argv)
            if code == 0:
                times.append(dt)
            else:
                failures += 1
        res["B"] = (times, failures)
        return res

    # ---------------------------------------------------------------- phase 4
    def sandbox_pids(self, containers):
        """Every process in the given containers: init pids from crun, plus descendants."""
        children = {}
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                stat = open(f"/proc/{p}/stat").read()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(p))
            except (OSError, IndexError, ValueError):
                continue
        pids = []
        for c in containers:
            todo = [c["pid"]] if c.get("pid") else []
            while todo:
                p = todo.pop()
                pids.append(p)
                todo.extend(children.get(p, []))
        return pids

    def cgroup_memory(self, cid):
        for base in ("/sys/fs/cgroup/memory/airlock", "/sys/fs/cgroup/airlock", "/sys/fs/cgroup/unified/airlock"):
            for f in ("memory.usage_in_bytes", "memory.current"):
                p = os.path.join(base, cid, f)
                if os.path.exists(p):
                    return int(open(p).read())
        return None

    def concurrent(self):
        n, threads = self.a.concurrent, self.a.threads
        time.sleep(1)
        mem_before = meminfo("MemAvailable")
        rss_before = proc_status(self.server.pid, "VmRSS")
        fds_before = fd_count(self.server.pid)
        cpu_idle0 = cpu_window(self.server.pid, self.a.cpu_window)
        q = queue.Queue()

        def one(_):
            t0 = now()
            sid = self.create(AGENT_CMD)
            t201 = now()
            sse = Sse(self.port, self.api.key, sid)
            sse.sock.setblocking(False)
            q.put(Watch(sid, t0, t201, sse))

        sel = selectors.DefaultSelector()
        watches, errors = [], []
        hellos = 0
        t_first = now()
        pool = cf.ThreadPoolExecutor(max_workers=threads)
        try:
            futs = [pool.submit(one, i) for i in range(n)]
            deadline = time.monotonic() + self.a.timeout
            while hellos + len(errors) < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {hellos}/{n} hellos within {self.a.timeout} s")
                while True:
                    try:
                        w = q.get_nowait()
                    except queue.Empty:
                        break
                    watches.append(w)
                    sel.register(w.sse.sock, selectors.EVENT_READ, w)
                for f in [f for f in futs if f.done()]:
                    futs.remove(f)
                    if f.exception():
                        errors.append(repr(f.exception()))
                for key, _ in sel.select(timeout=0.02):
                    w = key.data
                    try:
                        w.feed(w.sse.read_events(), now())
                    except (BlockingIOError, InterruptedError):
                        continue
                    if w.t_hello is not None or w.sse.closed:
                        if w.t_hello is None:
                            errors.append(f"stream of {w.sid} closed without hello")
                        else:
                            hellos += 1
                        sel.unregister(w.sse.sock)
                        w.sse.close()
            t_last = max([w.t_hello for w in watches if w.t_hello] or [now()])
        finally:
            pool.shutdown(wait=True)
            for w in watches:
                w.sse.close()
            sel.close()
        wall = t_last - t_first
        time.sleep(self.a.settle)
        # CPU of the control plane (and the crun processes it runs) while every sandbox idles.
        cpu_idle = cpu_window(self.server.pid, self.a.cpu_window)

        conts = [c for c in self.containers() if c.get("id", "").startswith("airlock-ses_")]
        running = [c for c in conts if c.get("status") == "running"]
        pids = self.sandbox_pids(running)
        pss = rss = 0
        for p in pids:
            try:
                for line in open(f"/proc/{p}/smaps_rollup"):
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
            except OSError:
                pass
        cg = [self.cgroup_memory(c["id"]) for c in running]
        cg = [x for x in cg if x is not None]
        mem_after = meminfo("MemAvailable")
        rss_after = proc_status(self.server.pid, "VmRSS")
        fds_after = fd_count(self.server.pid)
        comms = {}
        for p in pids:
            try:
                c = open(f"/proc/{p}/comm").read().strip()
                comms[c] = comms.get(c, 0) + 1
            except OSError:
                pass

        # Tear down: DELETE all from the threads, then wait for crun to list none.
        t_del = now()
        ids = [w.sid for w in watches]
        with cf.ThreadPoolExecutor(max_workers=threads) as p:
            del_errors = [repr(e) for e in p.map(self.safe_delete, ids) if e]
        t_deleted = now() - t_del
        deadline = time.monotonic() + 120
        left = self.containers()
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = self.containers()
        t_gone = now() - t_del
        time.sleep(self.a.settle)
        # A sandbox's init is reparented to the host's PID 1 when `crun run -d` exits, so after a
        # delete it stays a zombie until that PID 1 reaps it: count those apart.
        alive, zombies = [], []
        for p in pids:
            stat = self.read(f"/proc/{p}/stat")
            if stat and "airlock-ses_" in self.read(f"/proc/{p}/cgroup"):
                (zombies if stat.rsplit(")", 1)[1].split()[0] == "Z" else alive).append(p)

        cg_left = [c["id"] for c in running if self.cgroup_memory(c["id"]) is not None]
        bundles_left = [s for s in os.listdir(os.path.join(self.home, "sessions"))
                        if os.path.exists(os.path.join(self.home, "sessions", s, "bundle"))]
        sockets_left = [s for s in os.listdir(os.path.join(self.home, "run"))
                        if os.path.exists(os.path.join(self.home, "run", s, "control.sock"))]
        st, body = self.api.request("GET", "/v1/sessions?state=running")
        still_running = len(body.get("sessions", [])) if isinstance(body, dict) else f"? ({st})"
        return {
            "n": n, "threads": threads, "wall": wall, "hellos": hellos, "errors": errors + del_errors,
            "post": [w.t201 - w.t0 for w in watches], "total": [w.t_hello - w.t0 for w in watches if w.t_hello],
            "first_to_last_201": max(w.t201 for w in watches) - t_first if watches else float("nan"),
            "containers": len(conts), "running": len(running), "pids": len(pids), "comms": comms,
            "pss": pss, "rss": rss, "cg": cg,
            "mem_before": mem_before, "mem_after": mem_after, "mem_after_delete": meminfo("MemAvailable"),
            "rss_before": rss_before, "rss_after": rss_after, "rss_after_delete": proc_status(self.server.pid, "VmRSS"),
            "cpu_idle0": cpu_idle0, "cpu_idle": cpu_idle,
            "fds_before": fds_before, "fds_after": fds_after, "fds_after_delete": fd_count(self.server.pid),
            "t_deleted": t_deleted, "t_gone": t_gone, "left": left, "alive": alive, "zombies": zombies, "cg_left": cg_left,
            "bundles_left": bundles_left, "sockets_left": sockets_left, "still_running": still_running,
        }

    @staticmethod
    def read(path):
        try:
            return open(path).read()
        except OSError:
            return ""

    def safe_delete(self, sid):
        try:
            self.delete(sid)
            return None
        except Exception as e:  # noqa: BLE001 - reported, not raised
            return e

    # ---------------------------------------------------------------- cleanup
    def delete_sessions(self):
        with cf.ThreadPoolExecutor(max_workers=16) as p:
            for e in p.map(self.safe_delete, list(self.sessions)):
                if e:
                    print(f"cleanup: {e!r}", file=sys.stderr)

    def remove_leftovers(self):
        """The baselines' crun runs and cgroups."""
        if self.crun:
            self.crun.remove_leftovers()


# What StubSocket gives init that asks for its identity: a session id and a token of the
# control plane's form.
STUB_IDENTITY = json.dumps({"session_id": "ses_benchstub", "token": "ast_" + "A" * 43}).encode()


class StubSocket:
    """A Unix socket that answers init's identity request with STUB_IDENTITY and every other
    HTTP request `202 Accepted` (stands in for the control plane)."""

    def __init__(self, path):
        self.requests = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o666)
        self.sock.listen(64)
        self.stop = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                c.settimeout(5)
                buf = b""
                try:
                    while b"\r\n\r\n" not in buf:
                        d = c.recv(4096)
                        if not d:
                            break
                        buf += d
                    head, _, body = buf.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":", 1)[1])
                    while len(body) < length:
                        d = c.recv(4096)
                        if not d:
                            break
                        body += d
                    self.requests += 1
                    if head.startswith(b"GET /sandbox/v1/identity "):
                        # Init takes its identity after the sandbox starts (identity-after-start).
                        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                  + str(len(STUB_IDENTITY)).encode() + b"\r\nConnection: close\r\n\r\n"
                                  + STUB_IDENTITY)
                    else:
                        c.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self):
        self.stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# ------------------------------------------------------------------------------ report
def row(name, xs, failures=0, ref=None, cols=("p50", "p90", "p99", "max")):
    vals = {"p50": pct(xs, 50), "p90": pct(xs, 90), "p99": pct(xs, 99), "max": max(xs) if xs else float("nan")}
    ratio = f"{ref / vals['p50']:>7.1f}x" if ref and xs and ref != vals["p50"] else f"{'':>8}"
    cells = " | ".join(f"{ms(vals[c]):>9}" for c in cols)
    return f"| {name:<46} | {len(xs):>4} | {cells} | {ratio} |" + (f" ({failures} failed)" if failures else "")


def self_settle(a):
    return f"{a.settle:g} s"


def pid1_comm():
    try:
        return open("/proc/1/comm").read().strip()
    except OSError:
        return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=100, help="sequential sessions to time (default 100)")
    ap.add_argument("--concurrent", type=int, default=200, help="sandboxes started at once (default 200; 0 skips)")
    ap.add_argument("--threads", type=int, default=32, help="client threads issuing the concurrent POSTs (default 32)")
    ap.add_argument("--runs", type=int, default=None, help="runs of each baseline (default: --sessions)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed sessions before the sequential ones (default 2)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to wait before memory readings (default 3)")
    ap.add_argument("--cpu-window", type=float, default=5.0, help="seconds over which idle CPU is measured (default 5)")
    ap.add_argument("--timeout", type=float, default=300, help="limit for the concurrent phase, seconds")
    ap.add_argument("--airlock", default=None, help="airlock binary (default: $AIRLOCK, build/bin/airlock, ../build/bin/airlock)")
    ap.add_argument("--raw", metavar="FILE", help="also write every sample (seconds) as JSON to FILE")
    ap.add_argument("--keep", action="store_true", help="keep the temp home and logs")
    a = ap.parse_args()
    a.runs = a.runs or a.sessions
    a.airlock = find_airlock(a.airlock)
    require_root_and_crun("the oci backend and bare crun run need it")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    exit_on_sigterm()

    print_preamble(machine_facts("(at start; other work on the host skews every figure)", "airlock"))
    print(f"binary:   {a.airlock}")

    b = Bench(a)
    try:
        b.start_server()
        cold = b.bootstrap()
        seq = b.sequential()
        base = b.baselines()
        conc = b.concurrent() if a.concurrent > 0 else None
    finally:
        b.cleanup()

    if a.raw:
        with open(a.raw, "w") as f:
            json.dump({"sequential": seq, "A": base["A"][0], "A2": base["A2"][0], "B": base["B"][0],
                       "concurrent": {k: conc[k] for k in ("post", "total", "wall")} if conc else None}, f)

    # ------------------------------------------------------------ print
    total = seq["total"]
    ref = pct(total, 50)
    a_times, a_fail = base["A"]
    a2_times, a2_fail = base["A2"]
    b_times, b_fail = base["B"]
    print()
    print(f"## Single sandbox, sequential ({a.sessions} sessions after {a.warmup} warm-up; t1 = hello seen on the SSE stream)")
    print()
    print(f"| {'path':<46} | {'n':>4} | {'p50':>9} | {'p90':>9} | {'p99':>9} | {'max':>9} | {'airlock/x':>8} |")
    print(f"|{'-' * 48}|{'-' * 6}|{'-' * 11}|{'-' * 11}|{'-' * 11}|{'-' * 11}|{'-' * 10}|")
    print(row("airlock: POST /v1/sessions -> hello seen (SSE)", total, 0, ref))
    print(row("  of which POST -> 201", seq["post"]))
    print(row("  of which 201 -> hello seen", seq["after201"]))
    print(row("  server log: POST /v1/sessions handler", seq["srv_create"]))
    print(row("  server log: POST /sandbox/v1/events handler", seq["srv_event"]))
    print(row("A: crun run, args=/bin/true", a_times, a_fail, ref))
    print(row("A2: crun run + airlock-init + /bin/true (stub)", a2_times, a2_fail, ref))
    print(row(f"B: posix_spawn {' '.join(base['B_argv'])}", b_times, b_fail, ref))
    print()
    print(f"airlock vs bare crun run (p50): {ref / pct(a_times, 50):.1f}x   (p99: {pct(total, 99) / pct(a_times, 99):.1f}x)")
    if a2_times:
        print(f"airlock vs crun run + airlock-init (p50): {ref / pct(a2_times, 50):.1f}x")
    print(f"airlock vs fork+exec (p50): {ref / pct(b_times, 50):.0f}x   (p99: {pct(total, 99) / pct(b_times, 99):.0f}x)")
    print(f"hello stored before the session turned `running` (i.e. before crun run -d returned to "
          f"the server): {seq['hello_first']}/{len(total)}")
    print(f"DELETE -> container gone (sequential, not in the figures above): p50 {ms(pct(seq['teardown'], 50))}, "
          f"p99 {ms(pct(seq['teardown'], 99))}")
    print(f"first session, cold (imports base.tar): POST -> 201 {ms(cold)}")
    print()
    print("What the baselines run (copied from a live session's bundle/config.json):")
    print("  A : process.args = [\"/bin/true\"] (busybox in the image; no airlock-init, no network call);")
    print("      linux.cgroupsPath = <same parent>/bench-a-<pid>-<i> (unique per run); the /.airlock/run bind")
    print("      source = an empty directory of the bench (the session's is gone). Everything else as is:")
    print("      rootfs (read-only), mounts, 6 namespaces, seccomp, capabilities, rlimits, env, cgroup limits;")
    print("      so /bin/true runs as uid 0 with the 4 capabilities init would have dropped (init switches to 1000).")
    print("      `crun --root <tmp> run --bundle <dir> <id>` in the foreground: create, start, wait, delete.")
    nd, ncode, nout = base["A2_nosock"]
    print(f"  A2: the session's own args (`/.airlock/init ... --`) with `/bin/true` as the agent. Without a control")
    print(f"      socket one run took {ms(nd)} (exit {ncode}; {' '.join(nout) or 'no output'}) because init retries")
    print(f"      reporting the exit, so A2 is timed with a stub Unix socket in the bind directory that answers")
    print(f"      every request `202` ({base.get('A2_requests', 0)} requests served): init + bridge + exit report, no control plane.")
    print(f"  B : os.posix_spawn + waitpid of `{' '.join(base['B_argv'])}` (statically linked) on the host.")

    if conc:
        c = conc
        n = c["n"]
        print()
        print(f"## {n} sandboxes started concurrently ({c['threads']} client threads)")
        print()
        print(f"wall time, first POST -> last hello:   {c['wall']:.2f} s   ({n / c['wall']:.1f} sandboxes/s)")
        print(f"first POST -> last 201:                {c['first_to_last_201']:.2f} s")
        print(f"hellos seen:                           {c['hellos']}/{n}")
        print(f"per session POST -> 201:               p50 {ms(pct(c['post'], 50))}  p99 {ms(pct(c['post'], 99))}  max {ms(max(c['post'] or [float('nan')]))}")
        print(f"per session POST -> hello:             p50 {ms(pct(c['total'], 50))}  p99 {ms(pct(c['total'], 99))}  max {ms(max(c['total'] or [float('nan')]))}")
        print(f"containers listed by crun:             {c['containers']} ({c['running']} running)")
        print(f"processes in them:                     {c['pids']} ({', '.join(f'{k} {v}' for k, v in sorted(c['comms'].items()))})")
        mem_delta = c["mem_before"] - c["mem_after"]
        print(f"MemAvailable before -> after:          {c['mem_before'] // 1024} -> {c['mem_after'] // 1024} MiB   "
              f"= {mem_delta / n:.0f} KiB per sandbox (a)")
        print(f"summed PSS of the sandboxes' processes: {c['pss'] / 1024:.1f} MiB = {c['pss'] / max(n, 1):.0f} KiB per sandbox (b)   "
              f"(RSS sum {c['rss'] / 1024:.1f} MiB)")
        if c["cg"]:
            print(f"cgroup memory usage (incl. kernel/tmpfs): {sum(c['cg']) / 1048576:.1f} MiB = "
                  f"{sum(c['cg']) / 1024 / len(c['cg']):.0f} KiB per sandbox (c)")
        print(f"control plane RSS before -> with {n} -> after delete: {c['rss_before'] // 1024} -> {c['rss_after'] // 1024} -> "
              f"{c['rss_after_delete'] // 1024} MiB   ({(c['rss_after'] - c['rss_before']) / n:.1f} KiB per session)")
        print(f"control plane CPU, incl. its crun children, idle: {c['cpu_idle0']:.2f} s/s with 0 sessions, "
              f"{c['cpu_idle']:.2f} s/s with {n} idle sandboxes ({a.cpu_window:g} s windows)")
        print(f"control plane open fds before -> with {n} -> after delete: {c['fds_before']} -> {c['fds_after']} -> {c['fds_after_delete']}")
        print(f"MemAvailable after delete:             {c['mem_after_delete'] // 1024} MiB "
              f"({(c['mem_after_delete'] - c['mem_before']) / 1024:+.1f} MiB vs before)")
        print(f"DELETE x{n} returned in {c['t_deleted']:.2f} s; crun list empty after {c['t_gone']:.2f} s")
        leaks = []
        if c["left"]:
            leaks.append(f"{len(c['left'])} container(s) still listed by crun")
        if c["alive"]:
            leaks.append(f"{len(c['alive'])} sandbox process(es) still alive")
        if c["cg_left"]:
            leaks.append(f"{len(c['cg_left'])} cgroup(s) left")
        if c["bundles_left"]:
            leaks.append(f"{len(c['bundles_left'])} bundle dir(s) left")
        if c["still_running"]:
            leaks.append(f"{c['still_running']} session(s) still `running` in the API")
        if c["fds_after_delete"] > c["fds_before"] + 2:
            leaks.append(f"server fds {c['fds_before']} -> {c['fds_after_delete']}")
        print(f"left behind after delete: {', '.join(leaks) if leaks else 'nothing (containers, processes, cgroups, bundles)'}")
        if c["zombies"]:
            print(f"note: {len(c['zombies'])} sandbox init(s) still zombies {self_settle(a)} after delete: they were "
                  f"reparented to the host's PID 1 ({pid1_comm()}) when `crun run -d` exited, and it reaps them")
        if c["sockets_left"]:
            print(f"note: {len(c['sockets_left'])} session socket file(s) run/<id>/control.sock remain after delete")
        for e in c["errors"][:10]:
            print(f"error: {e}")
    b.print_footer()


if __name__ == "__main__":
    main()
