#!/usr/bin/env python3
"""Soak run for Airlock (issue 11; results in BENCHMARKS.md).

Usage (as root, with airlock, airlock-init, airlock-agent and images/base.tar built):

    bench/soak.py [--minutes 20] [--concurrency 50] [--sample-every 60] [--backend oci]
                  [--image base] [--session-timeout 300] [--hostile-every 3] [--settle 5]
                  [--airlock PATH] [--raw FILE] [--keep]

It starts `airlock serve` on free ports with a fresh home under /tmp and its default model,
the built-in scripted demo (OPENAI_API_KEY and ANTHROPIC_API_KEY are removed from its
environment), which walks the reference agent (`airlock-agent`, the `base` image's
entrypoint) through every tool: shell, write_file, read_file, upload, finish. Then
--concurrency worker threads each loop for --minutes: create a session (POST /v1/sessions),
follow its event stream until it ends, list its files (GET .../files), DELETE it. A session
that has not ended after --session-timeout seconds is deleted and counted as a timeout.

Beside them, one thread sends a refused request every --hostile-every seconds, in turn: an
operator request with a wrong key (401), a POST /v1/sessions whose Content-Length is over
server.max_body_bytes (413), a sandbox request with a wrong session token (401), and a
connection that sends nothing (the server closes it after server.first_byte_timeout_s).

It samples the control plane and the host before (after one warm-up session, so that the
import of base.tar is not counted), every --sample-every seconds, and after (all sessions
deleted, every container gone, then --settle seconds): the server's open descriptors, RSS,
VmHWM and threads; the sandbox cgroups of this server's sessions left under /sys/fs/cgroup;
mountinfo lines naming the server's home; the processes in this server's sandbox cgroups (and
those of them not owned by root); the server's descendant processes; crun's containers under
the server's state root; run/<id> directories; the database (airlock.db + -wal + -shm); and,
for information only (other work on the host moves them), all processes on the host and the
non-root ones. It prints the samples, the before/after deltas, and flags what did not come
back: descriptors, cgroups, mounts, processes, containers and run/ directories must return to
the baseline; RSS should plateau; the database grows with the stored history by design
(reported per session). It asserts no thresholds and exits 0 unless the run itself broke.
Python 3 standard library only (plus sdk/python from this repo). Everything it starts is
stopped on exit, also on errors and Ctrl-C; sessions still alive are deleted first.
"""

import argparse
import collections
import glob
import json
import os
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (HOST, ROOT, ServerBench, exit_on_sigterm, find_airlock, machine_facts,  # noqa: E402
                      ms, now, pct, print_preamble, require_root_and_crun)

sys.path.insert(0, os.path.join(ROOT, "sdk", "python"))
from airlock.operator import OperatorClient  # noqa: E402

TASK = "soak: look around, write a report, upload it and finish"


# ------------------------------------------------------------------------------ /proc readings
def proc_status(pid):
    """The fields of /proc/PID/status as strings; {} when the process is gone."""
    out = {}
    try:
        for line in open(f"/proc/{pid}/status"):
            k, _, v = line.partition(":")
            out[k] = v.strip()
    except OSError:
        pass
    return out


def kib(status, key):
    try:
        return int(status.get(key, "0").split()[0])
    except (ValueError, IndexError):
        return 0


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
              "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def hex_addr(a):
    ip, port = a.split(":")
    if len(ip) == 8:
        return ".".join(str(int(ip[i:i + 2], 16)) for i in (6, 4, 2, 0)) + f":{int(port, 16)}"
    return f"[{ip}]:{int(port, 16)}"


def sockets(pid):
    """inode -> a description of the socket, from /proc/PID/net/{tcp,tcp6,unix}."""
    out = {}
    for proto in ("tcp", "tcp6"):
        try:
            for line in open(f"/proc/{pid}/net/{proto}").readlines()[1:]:
                f = line.split()
                out[f[9]] = f"{proto} {hex_addr(f[1])} -> {hex_addr(f[2])} {TCP_STATES.get(f[3], f[3])}"
        except (OSError, IndexError, ValueError):
            pass
    try:
        for line in open(f"/proc/{pid}/net/unix").readlines()[1:]:
            f = line.split()
            if len(f) >= 7:
                out[f[6]] = "unix " + (f[7] if len(f) > 7 else "(unnamed)")
    except OSError:
        pass
    return out


def fd_targets(pid):
    """What each open descriptor of PID is: a path, or a socket's addresses."""
    socks = None
    out = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in names:
        try:
            t = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if t.startswith("socket:["):
            socks = socks if socks is not None else sockets(pid)
            t = socks.get(t[8:-1], t)
        out.append(t)
    return out


def file_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def processes():
    """[(pid, ppid, real uid, /proc/PID/cgroup text)] of every process on the host."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        st = proc_status(d)
        if not st:
            continue
        try:
            cg = open(f"/proc/{d}/cgroup").read()
        except OSError:
            cg = ""
        try:
            out.append((int(d), int(st.get("PPid", "0")), int(st.get("Uid", "0").split()[0]), cg))
        except ValueError:
            pass
    return out


def cgroup_container_ids(cg_text):
    """The `airlock-<session>` container ids named in a /proc/PID/cgroup text."""
    ids = set()
    for line in cg_text.splitlines():
        for part in line.rsplit(":", 1)[-1].split("/"):
            if part.startswith("airlock-"):
                ids.add(part)
    return ids


# ------------------------------------------------------------------------------ the soak
class Soak(ServerBench):
    server_label = "server:   "
    # Its own session: a Ctrl-C in the terminal reaches this script only, which then deletes the
    # sessions before it stops the server.
    own_session = True

    def __init__(self, a):
        super().__init__(a, "airlock-soak-")
        self.op = None
        self.lock = threading.Lock()
        self.ours = set()  # container ids (airlock-<session>) of every session this run created
        self.stop = threading.Event()
        self.deadline = 0.0
        self.created = 0
        self.creating = 0  # POST /v1/sessions in flight: the cleanup waits for their ids
        self.deleted = 0
        self.states = collections.Counter()
        self.errors = collections.Counter()
        self.files = collections.Counter()  # "report.md" present or not
        self.to_end = []  # POST -> end seen on the event stream
        self.cycle = []  # POST -> DELETE answered
        self.hostile = collections.Counter()  # (kind, outcome)
        self.samples = []

    # ---------------------------------------------------------------- server
    def start_server(self):
        cfg = os.path.join(self.tmp, "airlock.toml")
        with open(cfg, "w") as f:
            f.write(f"""# written by bench/soak.py
[log]
level = "info"

[sandbox]
default_backend = "{self.a.backend}"
default_image = "{self.a.image}"
""")
        # The default model is the built-in scripted demo only without a provider key.
        for k in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AIRLOCK_DEFAULT_MODEL"):
            os.environ.pop(k, None)
        super().start_server(["--config", cfg])
        self.op = OperatorClient(url=f"http://{HOST}:{self.port}", key=self.key, timeout=60,
                                 retry_deadline_s=10)
        self.db = self.find_db()

    def find_db(self):
        for p in (os.path.join(self.home, "airlock.db"),):
            if os.path.exists(p):
                return p
        return os.path.join(self.home, "airlock.db")

    # ---------------------------------------------------------------- sessions
    def error(self, where, e):
        code = getattr(e, "code", None)
        status = getattr(e, "status", None)
        key = f"{where}: {type(e).__name__}" + (f" {status}" if status else "") + (f" {code}" if code else "")
        with self.lock:
            self.errors[key] += 1
            if self.errors[key] == 1:
                self.notes.append(f"first {key}: {str(e)[:300]}")

    def one_session(self):
        """Create, wait for the end, list files, delete. Returns False when the create failed."""
        t0 = now()
        with self.lock:
            if self.stop.is_set():
                return False
            self.creating += 1
        try:
            s = self.op.create_session(TASK)
        except Exception as e:  # noqa: BLE001 - counted and reported
            self.error("create", e)
            return False
        finally:
            with self.lock:
                self.creating -= 1
        sid = s["id"]
        with self.lock:
            self.created += 1
            self.sessions.add(sid)
            self.ours.add("airlock-" + sid)
        state, t_end = None, None
        try:
            state = self.op.wait(sid, timeout=self.a.session_timeout).get("state")
            t_end = now()
            names = [f.get("name") for f in self.op.list_files(sid)]
            with self.lock:
                self.files["report.md" if "report.md" in names else "no report.md"] += 1
        except TimeoutError:
            state = "timeout"
        except Exception as e:  # noqa: BLE001
            self.error("wait/files", e)
            state = state or "error"
        try:
            self.op.kill(sid)
            with self.lock:
                self.sessions.discard(sid)
                self.deleted += 1
        except Exception as e:  # noqa: BLE001
            self.error("delete", e)
        t1 = now()
        with self.lock:
            self.states[state] += 1
            if t_end is not None:
                self.to_end.append(t_end - t0)
            self.cycle.append(t1 - t0)
        return True

    def worker(self):
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            if not self.one_session():
                self.stop.wait(1)  # a refused create: do not spin

    # ---------------------------------------------------------------- refused requests
    def raw(self, port, request, timeout=15):
        """Sends `request` on a new connection; returns the status code, or what happened."""
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            if request:
                s.sendall(request)
            data = b""
            try:
                while b"\r\n" not in data:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except socket.timeout:
                return "no answer"
            if not data:
                return "closed"
            parts = data.split(b" ", 2)
            return parts[1].decode(errors="replace") if len(parts) > 1 else "garbage"

    def hostile_once(self, i):
        big = 64 << 20  # over any max_body_bytes default; nothing but headers is sent
        kinds = [
            ("operator, wrong key", self.port,
             f"GET /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-{i}\r\n\r\n".encode()),
            ("operator, body over the limit", self.port,
             (f"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {self.key}\r\n"
              f"Content-Type: application/json\r\nContent-Length: {big}\r\n\r\n").encode()),
            ("sandbox, wrong token", self.sport,
             (f"POST /sandbox/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-{i}\r\n"
              "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}").encode()),
            ("sandbox, silent connection", self.sport, b""),
        ]
        kind, port, req = kinds[i % len(kinds)]
        t = now()
        try:
            out = self.raw(port, req)
        except OSError as e:
            out = f"error {type(e).__name__}"
        if kind.endswith("silent connection"):
            out = f"{out} after {now() - t:.0f} s"
        with self.lock:
            self.hostile[(kind, out)] += 1

    def hostile_loop(self):
        i = 0
        while not self.stop.wait(self.a.hostile_every) and time.monotonic() < self.deadline:
            self.hostile_once(i)
            i += 1

    # ---------------------------------------------------------------- samples
    def sample(self, label):
        pid = self.server.pid
        st = proc_status(pid)
        with self.lock:
            ours = set(self.ours)
            created, deleted, alive = self.created, self.deleted, len(self.sessions)
        procs = processes()
        children = collections.defaultdict(list)
        for p, pp, _, _ in procs:
            children[pp].append(p)
        desc, todo = 0, list(children[pid])
        while todo:
            p = todo.pop()
            desc += 1
            todo += children[p]
        in_ours = [(p, uid) for p, _, uid, cg in procs if cgroup_container_ids(cg) & ours]
        cgroups = [d for d in glob.glob("/sys/fs/cgroup/airlock/airlock-*") + glob.glob("/sys/fs/cgroup/*/airlock/airlock-*")
                   if os.path.basename(d) in ours]
        try:
            lines = open("/proc/self/mountinfo").readlines()
        except OSError:
            lines = []
        mounts = sum(1 for line in lines if self.tmp in line)
        run_dir = os.path.join(self.home, "run")
        try:
            run_ids = sum(1 for d in os.listdir(run_dir) if d != "oci" and os.path.isdir(os.path.join(run_dir, d)))
        except OSError:
            run_ids = 0
        db = sum(file_size(self.db + sfx) for sfx in ("", "-wal", "-shm"))
        targets = fd_targets(pid)
        db_fds = sum(1 for t in targets if t.startswith(self.db))
        try:
            session_dirs = len(os.listdir(os.path.join(self.home, "sessions")))
        except OSError:
            session_dirs = 0
        s = {
            "label": label,
            "fd_targets": targets,
            "t": time.monotonic() - self.t_start,
            "created": created,
            "deleted": deleted,
            "alive": alive,
            "fds": len(targets),
            "db_fds": db_fds,
            "other_fds": len(targets) - db_fds,
            "rss_kib": kib(st, "VmRSS"),
            "hwm_kib": kib(st, "VmHWM"),
            "threads": int(st.get("Threads", "0") or 0),
            "cgroups": len(cgroups),
            "mounts": mounts,
            "sbx_procs": len(in_ours),
            "sbx_nonroot": sum(1 for _, uid in in_ours if uid != 0),
            "descendants": desc,
            "containers": len(self.containers()),
            "run_dirs": run_ids,
            "session_dirs": session_dirs,
            "db_bytes": db,
            "host_procs": len(procs),
            "host_mounts": len(lines),
            "host_nonroot": sum(1 for _, _, uid, _ in procs if uid != 0),
        }
        self.samples.append(s)
        return s

    def settled(self, base):
        """True when everything that must come back has come back to `base`."""
        s = self.sample("settling")
        self.samples.pop()
        return all(s[k] <= base[k] for k in MUST_RETURN)

    # ---------------------------------------------------------------- the run
    def run(self):
        self.t_start = time.monotonic()
        fresh = self.sample("fresh server")
        print("warm-up: one session (imports base.tar into the fresh home)", file=sys.stderr)
        if not self.one_session() or self.states.get("succeeded") != 1:
            raise RuntimeError(f"the warm-up session did not succeed: states {dict(self.states)}, "
                               f"errors {dict(self.errors)}\n{self.log_tail()}")
        warm = dict(self.states), self.created
        self.wait_empty(60)
        time.sleep(self.a.settle)
        self.reset_counts()
        before = self.sample("before")

        self.deadline = time.monotonic() + self.a.minutes * 60
        threads = [threading.Thread(target=self.worker, daemon=True, name=f"soak-{i}")
                   for i in range(self.a.concurrency)]
        if self.a.hostile_every > 0:
            threads.append(threading.Thread(target=self.hostile_loop, daemon=True, name="soak-hostile"))
        t_run = now()
        for t in threads:
            t.start()
        next_sample = time.monotonic() + self.a.sample_every
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
            if time.monotonic() >= next_sample:
                t = int(time.monotonic() - self.t_start - before["t"])
                s = self.sample(f"t+{t // 60}:{t % 60:02d}")
                print(f"  {s['label']}: {s['created']} created, {s['alive']} alive, fds {s['fds']}, "
                      f"rss {s['rss_kib'] // 1024} MiB, containers {s['containers']}", file=sys.stderr)
                next_sample += self.a.sample_every
        run_wall = now() - t_run

        # After: every session deleted, every container gone, then a short settle.
        t_drain = now()
        self.wait_empty(120)
        time.sleep(self.a.settle)
        t_back = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.settled(before):
                t_back = now() - t_drain
                break
            time.sleep(1)
        after = self.sample("after")
        return {"fresh": fresh, "before": before, "after": after, "warm": warm, "run_wall": run_wall,
                "t_back": t_back}

    def wait_empty(self, timeout):
        deadline = time.monotonic() + timeout
        while (self.sessions or self.containers()) and time.monotonic() < deadline:
            time.sleep(0.2)

    def reset_counts(self):
        with self.lock:
            self.created = self.deleted = 0
            self.states.clear()
            self.files.clear()
            self.to_end.clear()
            self.cycle.clear()

    # ---------------------------------------------------------------- cleanup
    def cleanup(self):
        self.stop.set()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let a second Ctrl-C not cut the cleanup short
        deadline = time.monotonic() + 70  # a create in flight adds its id to self.sessions when answered
        while self.creating and time.monotonic() < deadline:
            time.sleep(0.1)
        super().cleanup()

    def delete_sessions(self):
        for sid in list(self.sessions):
            try:
                self.op.kill(sid)
                self.sessions.discard(sid)
            except Exception as e:  # noqa: BLE001 - reported, not raised
                print(f"cleanup: DELETE {sid}: {e}", file=sys.stderr)


# Readings that must come back to the baseline once every session is deleted.
MUST_RETURN = ("other_fds", "cgroups", "mounts", "sbx_procs", "descendants", "containers")

COLUMNS = [
    ("label", "sample", 12, str),
    ("created", "sessions", 8, str),
    ("alive", "alive", 5, str),
    ("fds", "fds", 5, str),
    ("db_fds", "db fds", 6, str),
    ("rss_kib", "RSS MiB", 7, lambda v: f"{v / 1024:.1f}"),
    ("hwm_kib", "HWM MiB", 7, lambda v: f"{v / 1024:.1f}"),
    ("threads", "thr", 4, str),
    ("cgroups", "cgroups", 7, str),
    ("mounts", "mounts", 6, str),
    ("sbx_procs", "sbx procs", 9, str),
    ("sbx_nonroot", "non-root", 8, str),
    ("descendants", "children", 8, str),
    ("containers", "crun", 4, str),
    ("run_dirs", "run/", 4, str),
    ("db_bytes", "DB KiB", 8, lambda v: f"{v / 1024:.0f}"),
    ("host_procs", "host procs", 10, str),
]


def table(samples):
    print("| " + " | ".join(f"{h:>{w}}" for _, h, w, _ in COLUMNS) + " |")
    print("|" + "|".join("-" * (w + 2) for _, _, w, _ in COLUMNS) + "|")
    for s in samples:
        print("| " + " | ".join(f"{f(s[k]):>{w}}" for k, _, w, f in COLUMNS) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20, help="how long the workers start sessions (default 20)")
    ap.add_argument("--concurrency", type=int, default=50, help="worker threads, each one session at a time (default 50)")
    ap.add_argument("--sample-every", type=float, default=60, help="seconds between samples (default 60)")
    ap.add_argument("--backend", default="oci", help="sandbox.default_backend (default oci)")
    ap.add_argument("--image", default="base", help="sandbox.default_image (default base)")
    ap.add_argument("--session-timeout", type=float, default=300,
                    help="seconds a session may take before it is deleted and counted as a timeout (default 300)")
    ap.add_argument("--hostile-every", type=float, default=3,
                    help="seconds between refused requests (default 3; 0: none)")
    ap.add_argument("--settle", type=float, default=5, help="seconds to wait before the before/after samples (default 5)")
    ap.add_argument("--airlock", default=None,
                    help="airlock binary (default: $AIRLOCK, else build/bin/airlock in the repo, else ../build/bin/airlock)")
    ap.add_argument("--raw", metavar="FILE", help="also write the samples and per-session times as JSON to FILE")
    ap.add_argument("--keep", action="store_true", help="keep the temporary home, config and server log")
    a = ap.parse_args()
    if a.minutes <= 0 or a.concurrency < 1 or a.sample_every <= 0 or a.session_timeout <= 0:
        ap.error("need --minutes > 0, --concurrency >= 1, --sample-every > 0, --session-timeout > 0")
    a.airlock = find_airlock(a.airlock)
    require_root_and_crun("the oci backend needs it")
    exit_on_sigterm()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored

    sys.stdout.reconfigure(line_buffering=True)
    print_preamble(machine_facts("(at start; other work on the host skews every figure)", "tree"))
    print(f"binary:    {os.path.realpath(a.airlock)} (built "
          f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(os.path.getmtime(a.airlock)))})")
    hostile = f"a refused request every {a.hostile_every:g} s" if a.hostile_every > 0 else "no refused requests"
    print(f"soak:      {a.concurrency} workers x {a.minutes:g} min of create -> wait for the end -> list files -> "
          f"DELETE; backend {a.backend}, image {a.image}, the scripted demo model; {hostile}; a sample every "
          f"{a.sample_every:g} s")

    b = Soak(a)
    try:
        b.start_server()
        r = b.run()
    finally:
        b.cleanup()

    before, after = r["before"], r["after"]
    n = b.created
    print()
    print(f"## Soak: {a.concurrency} concurrent sessions for {a.minutes:g} min ({r['run_wall']:.0f} s with the "
          f"sessions in flight at the end)")
    print()
    print(f"sessions: {n} created ({n / r['run_wall'] * 60:.1f}/min), {b.deleted} deleted; end states "
          + ", ".join(f"{k} {v}" for k, v in sorted(b.states.items(), key=lambda kv: -kv[1]))
          + "; files: " + ", ".join(f"{k} {v}" for k, v in b.files.items()))
    print(f"errors:   " + (", ".join(f"{k} x{v}" for k, v in sorted(b.errors.items())) or "none"))
    print(f"create -> end seen:   n {len(b.to_end)}, p50 {ms(pct(b.to_end, 50))}, p99 {ms(pct(b.to_end, 99))}, "
          f"max {ms(max(b.to_end) if b.to_end else None)}")
    print(f"create -> deleted:    n {len(b.cycle)}, p50 {ms(pct(b.cycle, 50))}, p99 {ms(pct(b.cycle, 99))}, "
          f"max {ms(max(b.cycle) if b.cycle else None)}")
    if b.hostile:
        print("refused requests:     " + "; ".join(f"{k}: {o} x{v}" for (k, o), v in sorted(b.hostile.items())))
    print()
    table(b.samples)
    print()
    print("fds, RSS, HWM, thr: of airlock serve. cgroups: directories of this run's sandboxes under /sys/fs/cgroup "
          "(one per hierarchy). mounts: /proc/self/mountinfo lines naming the server's home. sbx procs: processes "
          "in this run's sandbox cgroups; non-root: those of them not owned by root. children: the server's descendant processes. crun: containers crun lists "
          "under the server's state root. run/: run/<id> directories. DB: airlock.db + -wal + -shm. host procs: "
          "all of the host's (other work moves it).")
    print()
    print(f"| {'before -> after':<34} | {'before':>10} | {'after':>10} | {'delta':>10} | verdict |")
    print(f"|{'-' * 36}|{'-' * 12}|{'-' * 12}|{'-' * 12}|---------|")
    flagged = []
    for key, name in [("other_fds", "server descriptors, not the DB's"), ("db_fds", "server descriptors on the DB"), ("cgroups", "sandbox cgroups"), ("mounts", "mounts"),
                      ("sbx_procs", "processes in sandbox cgroups"), ("sbx_nonroot", "  of them not root"),
                      ("descendants", "server's descendant processes"), ("containers", "crun containers"),
                      ("run_dirs", "run/<id> directories"), ("session_dirs", "sessions/<id> directories"), ("threads", "server threads"),
                      ("rss_kib", "server RSS (KiB)"), ("hwm_kib", "server VmHWM (KiB)"),
                      ("db_bytes", "database bytes"), ("host_procs", "host processes (info)"),
                      ("host_nonroot", "host non-root processes (info)"), ("host_mounts", "host mounts (info)")]:
        d = after[key] - before[key]
        if key in MUST_RETURN or key in ("sbx_nonroot", "threads"):
            verdict = "back" if d <= 0 else "GROWN"
            if d > 0:
                flagged.append(f"{name}: {before[key]} -> {after[key]}")
        elif key == "db_bytes":
            verdict = f"{d / max(1, n) / 1024:.1f} KiB/session (history)"
        elif key in ("run_dirs", "session_dirs"):
            verdict = f"{d / max(1, n):.2f}/session (until retention)"
        elif key == "db_fds":
            verdict = "pool (info)"
        else:
            verdict = "info"
        print(f"| {name:<34} | {before[key]:>10} | {after[key]:>10} | {d:>+10} | {verdict} |")
    # RSS: the second half of the run's samples should not keep rising.
    mid = [s for s in b.samples if s["label"].startswith("t+")]
    if len(mid) >= 4:
        half = mid[len(mid) // 2:]
        rise = half[-1]["rss_kib"] - half[0]["rss_kib"]
        print(f"RSS over the second half of the run ({half[0]['label']} -> {half[-1]['label']}): "
              f"{half[0]['rss_kib'] / 1024:.1f} -> {half[-1]['rss_kib'] / 1024:.1f} MiB ({rise / 1024:+.1f} MiB)")
    print(f"warm-up: 1 session before the baseline ({', '.join(f'{k} {v}' for k, v in r['warm'][0].items())}); "
          f"the fresh server had fds {r['fresh']['fds']}, "
          f"RSS {r['fresh']['rss_kib'] / 1024:.1f} MiB")
    if r["t_back"] is not None:
        print(f"after the last session: everything that must come back was back {r['t_back']:.1f} s after the workers "
              f"stopped (incl. the {a.settle:g} s settle)")
    if after["other_fds"] > before["other_fds"]:
        gone = collections.Counter(t for t in before["fd_targets"] if not t.startswith(b.db))
        added = collections.Counter(t for t in after["fd_targets"] if not t.startswith(b.db))
        added.subtract(gone)
        print("server descriptors after that it did not have before: "
              + "; ".join(f"{t} x{c}" for t, c in added.items() if c > 0))
    for f in flagged:
        b.problems.append(f"did not come back within 60 s: {f}")
    if a.raw:
        with open(a.raw, "w") as f:
            json.dump({"samples": [{k: v for k, v in s.items() if k != "fd_targets"} for s in b.samples], "fresh": r["fresh"], "to_end": b.to_end, "cycle": b.cycle,
                       "states": b.states, "errors": b.errors,
                       "hostile": {f"{k} | {o}": v for (k, o), v in b.hostile.items()}}, f)
    b.print_footer()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; everything it started is stopped")
