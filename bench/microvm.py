#!/usr/bin/env python3
"""microvm benchmark for Airlock (issue 13; results in BENCHMARKS.md).

Usage (as root, with airlock, airlock-init and images/base.tar built, qemu-system-x86_64, the
guest kernel in /var/lib/airlock/guest-kernel and /bin/busybox from busybox-static):

    bench/microvm.py [--sessions 10] [--rounds 10] [--idle 10] [--idle-oci 200]
                     [--settle 3] [--airlock PATH] [--kernel-dir DIR] [--raw FILE] [--keep]
                     [--only pools|templates] [--spare-qemus N]

It starts two `airlock serve` (each on free ports with a fresh home under /tmp and a config
file passed with --config): "templates", `[sandbox.microvm] templates = true` (the default),
and "cold", `templates = false`, one after the other (the cold one first, stopped before the
other starts, so that neither's VMs run beside the other's). In one run it measures:

 1. create -> agent's first request: t0 just before POST /v1/sessions, t1 when the client sees
    the agent's `hello` event on the session's SSE stream (the agent of bench/sandbox_start.py:
    `wget --post-data hello ...; exec sleep`). --sessions sequential sessions, each DELETEd
    after (not timed; the next starts when its QEMU, or container, is gone):
      a. microvm from a template snapshot (server "templates"; one warm-up session first
         makes the erofs disk and the template: its time is reported as "template made");
      b. microvm cold boot (server "cold"; one warm-up session first makes the erofs disk);
      c. baseline: a bare `qemu-system-x86_64 -machine microvm` boot of the same kernel with
         the same accelerator, memory, CPUs and kernel command line (read from a session's
         QEMU command line) and a minimal initramfs whose /init is a busybox script that
         prints a marker on the serial console and powers off; t1 = the marker on QEMU's
         stdout ("the same kernel to the same marker");
      d. oci (crun) on server "templates", for comparison.
 2. on one microvm session whose agent posts a `tick` event every 0.2 s: --rounds rounds of
    POST suspend {"mode":"pause"} / POST resume and POST suspend {"mode":"hibernate"} /
    POST resume, each timed from the request to its 200, and from the resume's request to
    the first `tick` after the session turned `running` again (the agent answers again).
 3./4. --idle microvm sessions (and --idle-oci oci sessions), agent idle (`sleep`): all running,
    then all paused, then all hibernated: MemAvailable delta per session, summed QEMU
    PSS/RSS per session (/proc/PID/smaps_rollup of the QEMU whose command line has the session
    id), QEMU CPU while idle, QEMU processes left, and the disk each hibernated VM holds (its
    vm/snapshot file).
 5. warm pools: server "templates" has `[pools.oci]` and `[pools.microvm]` (size 2, image base,
    the idle agent under a command line of their own so that no other part takes from them):
    --sessions sessions on each, each created once its pool is full again, timed as in 1
    (create -> hello): a claim of a waiting sandbox, whose init's held identity request is
    answered at the claim; against a bare `crun run` of the image's /bin/true in a bundle copied
    from an oci session of the same server (bench/sandbox_start.py's baseline A). Printed with
    part 1.

It prints every parameter, machine facts, tables with p50/p90/max and ratios, the load average
at the start and the end, and the warnings and errors of the servers' logs; it asserts no
thresholds. Python 3 standard library only. Everything it starts (servers, VMs, containers,
bare QEMUs) is stopped on exit, also on errors and Ctrl-C.
"""

import argparse
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (HOST, BareCrun, ServerBench, exit_on_sigterm, find_airlock, loadavg,  # noqa: E402
                      machine_facts, meminfo, ms, now, pct, print_preamble, proc_ticks,
                      require_root_and_crun, sh)
from sandbox_start import HELLO, Api, Sse  # noqa: E402

SLEEP = "exec sleep 100000"
IDLE_CMD = ["/bin/sh", "-c", HELLO + "; " + SLEEP]
TICK = HELLO.replace('"hello"', '"tick"')
LOOP_CMD = ["/bin/sh", "-c", HELLO + "; while true; do " + TICK + "; sleep 0.2; done"]
MARKER = "AIRLOCK-BENCH-MARKER"
# What the warm pools' sandboxes run: the idle agent under another command line, so that no
# other part's sessions (IDLE_CMD) take a pool's sandbox.
POOL_CMD = ["/bin/sh", "-c", ": pooled; " + HELLO + "; " + SLEEP]
POOL_SIZE = 2


# ------------------------------------------------------------------------------ processes
def qemu_procs(needle):
    """{pid: cmdline argv} of the qemu-system processes whose command line or cgroup contains
    `needle`. (A VM started by a spare QEMU, [sandbox.microvm] spare_qemus, has the spare's
    name in its command line; the backend moved it to its session's cgroup.)"""
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            argv = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if not argv or b"qemu-system" not in argv[0]:
            continue
        argv = [x.decode(errors="replace") for x in argv if x]
        try:
            cgroup = open(f"/proc/{p}/cgroup").read()
        except OSError:
            cgroup = ""
        if needle in " ".join(argv) or needle in cgroup:
            out[int(p)] = argv
    return out


def smaps(pid):
    """(pss, rss) KiB of a process, (0, 0) when gone."""
    pss = rss = 0
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


# ------------------------------------------------------------------------------ a minimal initramfs
def newc(entries):
    """A cpio archive (newc) of (name, mode, data, rdev_major, rdev_minor) entries."""
    out = bytearray()
    for ino, (name, mode, data, major, minor) in enumerate(entries + [("TRAILER!!!", 0, b"", 0, 0)], 1):
        nb = name.encode() + b"\0"
        hdr = b"070701" + b"".join(f"{x:08X}".encode() for x in (
            ino if name != "TRAILER!!!" else 0, mode, 0, 0, 1, 0, len(data), 0, 0, major, minor, len(nb), 0))
        out += hdr + nb
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def make_initramfs(path):
    busybox = open("/bin/busybox", "rb").read()
    init = (f"#!/bin/busybox sh\n/bin/busybox echo {MARKER}\n/bin/busybox poweroff -f\n").encode()
    entries = [
        ("bin", 0o040755, b"", 0, 0),
        ("bin/busybox", 0o100755, busybox, 0, 0),
        ("dev", 0o040755, b"", 0, 0),
        ("dev/console", 0o020600, b"", 5, 1),
        ("init", 0o100755, init, 0, 0),
    ]
    with open(path, "wb") as f:
        f.write(newc(entries))


# ------------------------------------------------------------------------------ one server
class Server(ServerBench):
    report_stop = True

    def __init__(self, args, label, config):
        # Short: the template's sockets live under <home>/cache/microvm/templates/<32 hex>/vm/ and a
        # Unix socket path has at most 107 bytes (a longer temp home makes every template fail).
        super().__init__(args, f"amv-{label[0]}-")
        self.label = label
        self.server_label = f"server {label}:"
        self.config_path = os.path.join(self.tmp, "airlock.toml")
        with open(self.config_path, "w") as f:
            f.write(config)
        self.config_text = config
        self.api = None
        self.crun = None  # bare_crun()'s

    def start(self):
        self.start_server(["--config", self.config_path])
        self.api = Api(self.port, self.key)

    # ---------------------------------------------------------------- sessions
    def create(self, command, backend):
        st, body = self.api.request("POST", "/v1/sessions", {"task": "bench", "command": command,
                                                             "image": "base", "backend": backend}, timeout=300)
        if st != 201:
            raise RuntimeError(f"POST /v1/sessions ({backend}): {st} {body}")
        self.sessions.add(body["id"])
        return body["id"]

    def delete(self, sid):
        st, body = self.api.request("DELETE", f"/v1/sessions/{sid}", timeout=120)
        if st not in (200, 404):
            raise RuntimeError(f"DELETE {sid}: {st} {body}")
        self.sessions.discard(sid)

    def post(self, path, body=None):
        """Times one POST; returns (seconds, status, body)."""
        t = now()
        st, b = self.api.request("POST", path, body, timeout=300)
        return now() - t, st, b

    def gone(self, sid, backend, timeout=60):
        """Waits until the session's QEMU (microvm) or container (oci) is gone."""
        deadline = time.monotonic() + timeout
        while True:
            if backend == "microvm":
                left = qemu_procs(sid)
            else:
                left = os.path.exists(os.path.join(self.oci_root, "airlock-" + sid))
            if not left:
                return True
            if time.monotonic() > deadline:
                self.problems.append(f"{backend} sandbox of {sid} still there {timeout} s after DELETE")
                return False
            time.sleep(0.005)

    def start_and_wait(self, backend, command=IDLE_CMD, keep_stream=False, timeout=300):
        """POST, then the SSE stream until `hello`. Returns (sid, t_post, t_hello, sse or None)."""
        t0 = now()
        sid = self.create(command, backend)
        t201 = now()
        sse = Sse(self.port, self.key, sid)
        sse.sock.settimeout(timeout)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if time.monotonic() > deadline or sse.closed:
                    raise RuntimeError(f"no hello from {sid} ({backend}) within {timeout} s:\n{self.log_tail(15)}")
                evs = sse.read_events()
                t = now()
                for ev in evs:
                    j = ev.get("json") or {}
                    if ev["event"] == "session.state" and (j.get("data") or {}).get("to") in (
                            "failed", "killed", "succeeded"):
                        raise RuntimeError(f"session {sid} ({backend}) ended before its hello: {ev.get('data')}")
                    if ev["event"] == "hello":
                        if not keep_stream:
                            sse.close()
                            sse = None
                        return sid, t201 - t0, t - t0, sse
        except BaseException:
            if sse:
                sse.close()
            raise

    def sequential(self, backend, n, label):
        """Warm-up session (timed, returned as `first`), then n timed sessions, each deleted."""
        sid, p, first, _ = self.start_and_wait(backend)
        qemu = qemu_procs(sid)
        self.qemu_argv = next(iter(qemu.values()), None) or getattr(self, "qemu_argv", None)
        self.delete(sid)
        self.gone(sid, backend)
        posts, totals, teardown = [], [], []
        for i in range(n):
            sid, p, t, _ = self.start_and_wait(backend)
            posts.append(p)
            totals.append(t)
            t = now()
            self.delete(sid)
            self.gone(sid, backend)
            teardown.append(now() - t)
            print(f"\r  {label}: {i + 1}/{n}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        return {"first": first, "total": totals, "post": posts,
                "after201": [t - p for t, p in zip(totals, posts)], "teardown": teardown}

    def pool_ready(self, pool):
        st, text = self.api.request("GET", "/metrics")
        needle = f'airlock_pool_ready{{pool="{pool}"}} '
        for line in (text if isinstance(text, str) else "").splitlines():
            if line.startswith(needle):
                return float(line[len(needle):])
        return 0.0

    def from_pool(self, backend, n, label):
        """n sessions that each take a waiting sandbox of the pool `backend` (the pool is full
        again before each create); each deleted after."""
        totals, posts = [], []
        for i in range(n):
            deadline = time.monotonic() + 300
            while self.pool_ready(backend) < POOL_SIZE:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pool {backend} did not fill within 300 s:\n{self.log_tail(15)}")
                time.sleep(0.05)
            sid, p, t, _ = self.start_and_wait(backend, command=POOL_CMD)
            posts.append(p)
            totals.append(t)
            self.delete(sid)
            self.gone(sid, backend)
            print(f"\r  {label}: {i + 1}/{n}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        st, text = self.api.request("GET", "/metrics")
        claims = [ln for ln in (text if isinstance(text, str) else "").splitlines()
                  if ln.startswith("airlock_pool_claims_total")]
        return {"total": totals, "post": posts, "claims": claims}

    def snapshots(self, sid=None):
        """{path: bytes} of the files named `snapshot` under the home (of session `sid` only)."""
        out = {}
        for d, _, files in os.walk(os.path.join(self.home, "sessions")):
            for f in files:
                p = os.path.join(d, f)
                if f == "snapshot" and (sid is None or sid in p):
                    try:
                        out[p] = os.stat(p).st_blocks * 512
                    except OSError:
                        pass
        return out

    def template_files(self):
        d = os.path.join(self.home, "cache", "microvm", "tpl")
        out = {}
        for root, _, files in os.walk(d):
            for f in files:
                p = os.path.join(root, f)
                out[os.path.relpath(p, d)] = os.stat(p).st_blocks * 512
        return out

    # ---------------------------------------------------------------- part 2
    def tiers_rounds(self, rounds):
        sid, _, _, sse = self.start_and_wait("microvm", LOOP_CMD, keep_stream=True)
        r = {k: [] for k in ("pause", "resume_p", "tick_p", "hib", "resume_h", "tick_h")}
        r["snap"], r["qemu_hib"], r["wake_silent"], r["replaced"] = [], [], [], 0

        cur = {}

        def wait_tick(after_running, timeout=120):
            sid, sse = cur["sid"], cur["sse"]
            """Reads the stream until a tick (after the session turned running again, if asked)."""
            deadline = time.monotonic() + timeout
            seen_running = not after_running
            while time.monotonic() < deadline:
                for ev in sse.read_events():
                    j = ev.get("json") or {}
                    if ev["event"] == "session.state" and (j.get("data") or {}).get("to") == "running":
                        seen_running = True
                    if ev["event"] == "session.state" and (j.get("data") or {}).get("to") in (
                            "failed", "killed", "succeeded"):
                        raise RuntimeError(f"loop session {sid} ended: {ev.get('data')}")
                    if ev["event"] == "tick" and seen_running:
                        return now()
                if sse.closed:
                    raise RuntimeError(f"events stream of {sid} closed")
            raise RuntimeError(f"no tick from {sid} within {timeout} s")

        def expect(st, b, what):
            if st != 200:
                raise RuntimeError(f"{what} of {sid}: {st} {b}")
            return b

        try:
            for i in range(rounds):
                cur["sid"], cur["sse"] = sid, sse
                wait_tick(False)
                dt, st, b = self.post(f"/v1/sessions/{sid}/suspend", {"mode": "pause"})
                expect(st, b, "pause")
                r["pause"].append(dt)
                time.sleep(0.5)
                t0 = now()
                dt, st, b = self.post(f"/v1/sessions/{sid}/resume")
                expect(st, b, "resume from paused")
                r["resume_p"].append(dt)
                r["tick_p"].append(wait_tick(True) - t0)

                wait_tick(False)
                dt, st, b = self.post(f"/v1/sessions/{sid}/suspend", {"mode": "hibernate"})
                b = expect(st, b, "hibernate")
                if b.get("tier") != "hibernated":
                    self.problems.append(f"hibernate of {sid} answered tier {b.get('tier')!r}")
                r["hib"].append(dt)
                r["snap"].append(sum(self.snapshots(sid).values()))
                r["qemu_hib"].append(len(qemu_procs(sid)))
                time.sleep(0.5)
                t0 = now()
                dt, st, b = self.post(f"/v1/sessions/{sid}/resume")
                expect(st, b, "resume from hibernated")
                r["resume_h"].append(dt)
                try:
                    r["tick_h"].append(wait_tick(True, self.a.wake_timeout) - t0)
                except RuntimeError as e:
                    # The agent does not answer after the wake: count it, start a fresh loop session.
                    r["wake_silent"].append(f"round {i + 1}: {e}")
                    sse.close()
                    self.delete(sid)
                    self.gone(sid, "microvm")
                    sid, _, _, sse = self.start_and_wait("microvm", LOOP_CMD, keep_stream=True)
                    self.sessions.add(sid)
                    r["replaced"] += 1
                    continue
                left = self.snapshots(sid)
                if left:
                    self.problems.append(f"snapshot of {sid} still there after its wake: {sorted(left)}")
                print(f"\r  pause/hibernate rounds: {i + 1}/{rounds}", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
        finally:
            sse.close()
        self.delete(sid)
        self.gone(sid, "microvm")
        return r

    # ---------------------------------------------------------------- parts 3 and 4
    def oci_pids(self, sids):
        conts = {c["id"]: c for c in self.containers()}
        children = {}
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    ppid = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(p))
                except (OSError, IndexError, ValueError):
                    pass
        out = {}
        for sid in sids:
            c = conts.get("airlock-" + sid)
            todo = [c["pid"]] if c and c.get("pid") else []
            pids = []
            while todo:
                p = todo.pop()
                pids.append(p)
                todo.extend(children.get(p, []))
            out[sid] = pids
        return out

    def reading(self, backend, sids, window):
        """Memory, processes, snapshot sizes and CPU of the given sessions' sandboxes, now."""
        if backend == "microvm":
            procs = {sid: list(qemu_procs(sid)) for sid in sids}
        else:
            procs = self.oci_pids(sids)
        allp = [p for ps in procs.values() for p in ps]
        c0 = {p: proc_ticks(p) for p in allp}
        t0 = time.monotonic()
        time.sleep(window)
        cpu = sum(proc_ticks(p) - c0[p] for p in allp if proc_ticks(p, missing=None) is not None)
        cpu /= os.sysconf("SC_CLK_TCK") * (time.monotonic() - t0)
        per = [[smaps(p) for p in procs[sid]] for sid in sids]
        pss = [sum(x[0] for x in ps) for ps in per]
        rss = [sum(x[1] for x in ps) for ps in per]
        snaps = self.snapshots() if backend == "microvm" else {}
        snaps = [v for k, v in snaps.items() if any(s in k for s in sids)]
        tiers = {}
        st, body = self.api.request("GET", "/v1/sessions?limit=1000")
        for s in (body.get("sessions", []) if isinstance(body, dict) else []):
            if s.get("id") in sids:
                key = f"{s.get('state')}/{s.get('tier')}"
                tiers[key] = tiers.get(key, 0) + 1
        return {"mem": meminfo("MemAvailable"), "pss": pss, "rss": rss, "procs": len(allp),
                "snaps": snaps, "cpu": cpu, "tiers": tiers}

    def idle_tiers(self, backend, m):
        time.sleep(self.a.settle)
        mem0 = meminfo("MemAvailable")
        sids, starts = [], []
        for i in range(m):
            sid, _, t, _ = self.start_and_wait(backend)
            sids.append(sid)
            starts.append(t)
            print(f"\r  {backend} idle sessions: {i + 1}/{m}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        out = {"m": m, "mem0": mem0, "starts": starts}
        time.sleep(self.a.settle)
        out["running"] = self.reading(backend, sids, self.a.cpu_window)
        for mode in ("pause", "hibernate"):
            times, failed = [], []
            for sid in sids:
                dt, st, b = self.post(f"/v1/sessions/{sid}/suspend", {"mode": mode})
                if st == 200:
                    times.append(dt)
                else:
                    failed.append(f"{sid}: {st} {b}")
            time.sleep(self.a.settle)
            out[mode + "_times"] = times
            out[mode + "_failed"] = failed
            out["paused" if mode == "pause" else "hibernated"] = self.reading(backend, sids, self.a.cpu_window)
            for f in failed[:3]:
                self.problems.append(f"{backend} suspend {mode}: {f}")
        t = now()
        for sid in sids:
            self.delete(sid)
        for sid in sids:
            self.gone(sid, backend)
        out["delete_all"] = now() - t
        time.sleep(self.a.settle)
        out["mem_after"] = meminfo("MemAvailable")
        out["snaps_after"] = len([k for k in self.snapshots() if "/cache/" not in k])  # not the template
        return out

    # ---------------------------------------------------------------- log and cleanup
    def log_findings(self):
        """The serve log's lines at level warn or error, with a count of each distinct message."""
        found = {}
        try:
            for line in open(self.log_path, errors="replace"):
                try:
                    j = json.loads(line)
                except ValueError:
                    if "error" in line.lower() or "warn" in line.lower():
                        found.setdefault(line.strip()[:300], [0, line.strip()])[0] += 1
                    continue
                lvl = str(j.get("level", j.get("lvl", ""))).lower()
                if lvl.startswith(("warn", "err", "crit", "fatal")) or (
                        j.get("msg") != "http" and ("error" in j or "reason" in j)):
                    key = f"{lvl} {j.get('msg')}"
                    found.setdefault(key, [0, line.strip()])[0] += 1
        except OSError:
            pass
        return found

    def delete_sessions(self):
        for sid in list(self.sessions):
            try:
                self.delete(sid)
            except Exception as e:  # noqa: BLE001 - reported, not raised
                print(f"cleanup: {e!r}", file=sys.stderr)
        deadline = time.monotonic() + 60
        while qemu_procs(self.home) and time.monotonic() < deadline:
            time.sleep(0.1)

    def bare_crun(self, n):
        """n bare `crun run`s of /bin/true in a copy of an oci session's bundle: (times, failures)."""
        sid = self.create(["/bin/sh", "-c", SLEEP], "oci")
        work = os.path.join(self.tmp, "bare-crun")
        os.makedirs(work, exist_ok=True)
        self.crun = BareCrun(work, os.path.join(self.home, "sessions", sid, "bundle"))
        self.delete(sid)
        self.gone(sid, "oci")
        return self.crun.true_runs(n, "bare")

    def remove_leftovers(self):
        if self.crun:
            self.crun.remove_leftovers()
        for pid, argv in qemu_procs(self.home).items():
            self.problems.append(f"QEMU {pid} of server {self.label} survived it; killed")
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


# ------------------------------------------------------------------------------ bare QEMU
class BareQemu:
    def __init__(self, tmp, argv_of_session, kernel_dir):
        self.initrd = os.path.join(tmp, "marker.cpio")
        make_initramfs(self.initrd)
        self.proc = None
        a = argv_of_session or []

        def arg(flag, default):
            return a[a.index(flag) + 1] if flag in a and a.index(flag) + 1 < len(a) else default
        self.source = "the command line of a session's QEMU" if a else "computed (no session QEMU seen)"
        append = arg("-append", None) or fallback_kernel_args(kernel_dir)
        self.argv = [a[0] if a else shutil.which("qemu-system-x86_64"),
                     "-machine", arg("-machine", "microvm,x-option-roms=off,rtc=on"),
                     "-accel", arg("-accel", "tcg"), "-m", arg("-m", "256"), "-smp", arg("-smp", "1"),
                     "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
                     "-kernel", arg("-kernel", os.path.join(kernel_dir, "vmlinux")),
                     "-initrd", self.initrd, "-append", append, "-serial", "stdio"]

    def once(self, timeout=120):
        """(seconds to the marker, seconds to QEMU's exit, exit code)."""
        t0 = now()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        buf, t_marker = b"", None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        try:
            while time.monotonic() < deadline:
                if not sel.select(timeout=1):
                    continue
                d = os.read(fd, 65536)
                if not d:
                    break
                buf += d
                if t_marker is None and MARKER.encode() in buf:
                    t_marker = now() - t0
            code = self.proc.wait(timeout=max(1, deadline - time.monotonic()))
            return t_marker, now() - t0, code, buf
        finally:
            sel.close()
            self.stop()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc:
            self.proc.stdout.close()
        self.proc = None

    def runs(self, n):
        m, e, bad = [], [], []
        self.once()  # warm-up: the kernel into the page cache
        for i in range(n):
            tm, te, code, out = self.once()
            if tm is None:
                bad.append(f"no marker (exit {code}): {out[-400:].decode(errors='replace')}")
            else:
                m.append(tm)
                e.append(te)
            print(f"\r  bare qemu: {i + 1}/{n}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        return {"marker": m, "exit": e, "bad": bad}


def fallback_kernel_args(kernel_dir):
    """kKernelArgs + ClockArgs of src/sandbox/backend_microvm.cc, when no session's QEMU was seen."""
    args = ("console=ttyS0 quiet mitigations=off pci=off tsc=reliable no_timer_check reboot=t panic=-1 "
            "rdinit=/init")
    khz = 0
    for line in open("/proc/cpuinfo"):
        if line.startswith("cpu MHz"):
            khz = round(float(line.split(":", 1)[1]) * 1000)
            break
    hz = 250
    try:
        for line in open(os.path.join(kernel_dir, "config")):
            if line.startswith("CONFIG_HZ="):
                hz = int(line.split("=", 1)[1])
    except OSError:
        pass
    return args + (f" tsc_early_khz={khz} lpj={khz * 1000 // hz}" if khz else "")


# ------------------------------------------------------------------------------ report
def row(name, xs, ref=None, note=""):
    p50 = pct(xs, 50)
    ratio = f"{p50 / ref:>7.2f}x" if ref and xs else f"{'':>8}"
    cells = " | ".join(f"{ms(v):>10}" for v in (p50, pct(xs, 90), max(xs) if xs else float("nan")))
    return f"| {name:<52} | {len(xs):>3} | {cells} | {ratio} |" + (f" {note}" if note else "")


def header(last="x/ref"):
    print(f"| {'path':<52} | {'n':>3} | {'p50':>10} | {'p90':>10} | {'max':>10} | {last:>8} |")
    print(f"|{'-' * 54}|{'-' * 5}|{'-' * 12}|{'-' * 12}|{'-' * 12}|{'-' * 10}|")


def print_tiers(t, backend, ref_pss=None):
    m = t["m"]
    print(f"{m} idle {backend} sessions (agent `hello; exec sleep`); MemAvailable before them: {t['mem0'] // 1024} MiB")
    print()
    print(f"| {'tier':<10} | {'MemAvailable delta / session':>28} | {'sandbox PSS / session':>21} | "
          f"{'RSS / session':>13} | {'processes':>9} | {'disk (snapshots)':>16} | {'CPU while idle':>14} | sessions |")
    print(f"|{'-' * 12}|{'-' * 30}|{'-' * 23}|{'-' * 15}|{'-' * 11}|{'-' * 18}|{'-' * 16}|----------|")
    for tier in ("running", "paused", "hibernated"):
        r = t[tier]
        delta = (t["mem0"] - r["mem"]) / m
        snaps = sum(r["snaps"])
        print(f"| {tier:<10} | {mib(delta):>28} | {mib(sum(r['pss']) / m):>21} | {mib(sum(r['rss']) / m):>13} | "
              f"{r['procs']:>9} | {(mib(snaps / 1024 / m) + ' each') if r['snaps'] else '—':>16} | "
              f"{r['cpu']:>10.3f} s/s | {', '.join(f'{k} {v}' for k, v in sorted(r['tiers'].items()))} |")
    print()
    pss = t["running"]["pss"]
    if backend == "microvm":
        print(f"per running VM (the QEMU process): PSS p50 {mib(pct(pss, 50))}, max {mib(max(pss))}; "
              f"RSS p50 {mib(pct(t['running']['rss'], 50))}, max {mib(max(t['running']['rss']))}")
        s = t["hibernated"]["snaps"]
        if s:
            print(f"per hibernated VM: vm/snapshot {mib(pct(s, 50) / 1024)} p50, {mib(max(s) / 1024)} max "
                  f"(allocated blocks); QEMU processes while hibernated: {t['hibernated']['procs']}")
    print(f"starts (POST -> hello): p50 {ms(pct(t['starts'], 50))}, max {ms(max(t['starts']))}; "
          f"suspend pause p50 {ms(pct(t['pause_times'], 50))}, hibernate (from paused) p50 "
          f"{ms(pct(t['hibernate_times'], 50))}; DELETE x{m} then gone: {t['delete_all']:.2f} s; "
          f"MemAvailable after: {t['mem_after'] // 1024} MiB ({(t['mem_after'] - t['mem0']) / 1024:+.1f} MiB vs before); "
          f"snapshot files left: {t['snaps_after']}")
    for f in t["pause_failed"] + t["hibernate_failed"]:
        print(f"  failed: {f}")


def pools_only(a, tmpl):
    """--only pools: part 5 with one warm-up session per pool (the microvm one makes the
    template), then the bare crun baseline, on the templates server alone."""
    res, load = {}, {}
    try:
        tmpl.start()
        print(f"  config: {tmpl.config_text.strip()!r}")
        load["warm-up"] = loadavg()
        for backend in ("oci", "microvm"):
            tmpl.from_pool(backend, 1, f"{backend} pool warm-up")
        load["pools"] = loadavg()
        res["pool_oci"] = tmpl.from_pool("oci", a.sessions, "oci from its pool")
        res["pool_vm"] = tmpl.from_pool("microvm", a.sessions, "microvm from its pool")
        load["bare crun"] = loadavg()
        res["bare_crun"] = tmpl.bare_crun(a.sessions)
        found = tmpl.log_findings()
    finally:
        tmpl.cleanup()
    pv, po_ = res["pool_vm"], res["pool_oci"]
    bc, bc_failed = res["bare_crun"]
    print()
    print(f"## 5. create -> agent's first request from a warm pool ({a.sessions} sequential sessions each, "
          f"after one warm-up; t1 = hello seen on the SSE stream; x/ref = p50 / bare crun run's p50)")
    print()
    header()
    ref = pct(bc, 50) if bc else None
    print(row("microvm from a warm pool: POST -> hello seen", pv["total"], ref))
    print(row("  of which POST -> 201", pv["post"]))
    print(row("oci from a warm pool: POST -> hello seen", po_["total"], ref))
    print(row("  of which POST -> 201", po_["post"]))
    print(row("bare crun run of the image's /bin/true", bc, ref, f"{bc_failed} failed" if bc_failed else ""))
    print("pool claims: " + "; ".join(pv["claims"]))
    print()
    print("load average when each part started: " + "; ".join(f"{k} {v}" for k, v in load.items()))
    if not found:
        print("server templates: no warn/error lines in its log")
    for key, (n, line) in sorted(found.items(), key=lambda kv: -kv[1][0]):
        print(f"server templates log: {n}x {key}\n    e.g. {line[:400]}")
    print(f"loadavg at the end: {loadavg()}")
    for note in tmpl.notes:
        print("note:", note)
    for p in tmpl.problems:
        print("PROBLEM (templates):", p)


def start_rows(label, x, ref):
    """A start path's rows in part 1: POST -> hello, and the two halves of it."""
    print(row(f"{label}: POST -> hello seen", x["total"], ref))
    print(row("  of which POST -> 201", x["post"]))
    print(row("  of which 201 -> hello seen", x["after201"]))


def templates_only(a, tmpl):
    """--only templates: part 1's start from a template snapshot, against the bare QEMU boot,
    on the templates server alone (its pools run, as in the whole run)."""
    res, load, bare = {}, {}, None
    try:
        tmpl.start()
        print(f"  config: {tmpl.config_text.strip()!r}")
        load["templates"] = loadavg()
        res["tmpl"] = tmpl.sequential("microvm", a.sessions, "microvm from template")
        res["template_files"] = tmpl.template_files()
        bare = BareQemu(tmpl.tmp, tmpl.qemu_argv, a.kernel_dir)
        load["bare"] = loadavg()
        res["bare"] = bare.runs(a.sessions)
        found = tmpl.log_findings()
    finally:
        if bare:
            bare.stop()
        tmpl.cleanup()
    t, b = res["tmpl"], res["bare"]
    ref = pct(b["marker"], 50)
    print()
    print(f"## 1. create -> agent's first request from a template ({a.sessions} sequential sessions, "
          f"after one warm-up; t1 = hello seen on the SSE stream; x/ref = p50 / bare QEMU's p50)")
    print()
    header()
    start_rows("microvm from template", t, ref)
    print(row("bare qemu -machine microvm: start -> marker", b["marker"], ref))
    print()
    print(f"template made (includes importing base.tar, making the erofs disk, booting the template "
          f"VM and saving it, then the first restore): {ms(t['first'])}")
    tf = res["template_files"]
    print(f"template files: {', '.join(f'{k} {mib(v / 1024)}' for k, v in sorted(tf.items())) or 'none'}")
    print("load average when each part started: " + "; ".join(f"{k} {v}" for k, v in load.items()))
    if not found:
        print("server templates: no warn/error lines in its log")
    for key, (n, line) in sorted(found.items(), key=lambda kv: -kv[1][0]):
        print(f"server templates log: {n}x {key}\n    e.g. {line[:400]}")
    for p in tmpl.problems:
        print("PROBLEM (templates):", p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=10, help="sequential sessions per start path (default 10)")
    ap.add_argument("--rounds", type=int, default=5, help="pause/resume and hibernate/resume rounds (default 5)")
    ap.add_argument("--wake-timeout", type=float, default=15.0,
                    help="seconds to wait for the agent's tick after a wake before counting it silent (default 15)")
    ap.add_argument("--idle", type=int, default=10, help="idle microvm sessions for the tiers (default 10; 0 skips)")
    ap.add_argument("--idle-oci", type=int, default=200, help="idle oci sessions for the tiers (default 200; 0 skips)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to wait before each memory reading (default 3)")
    ap.add_argument("--cpu-window", type=float, default=3.0, help="seconds over which idle CPU is measured (default 3)")
    ap.add_argument("--memory-mb", type=int, default=256, help="[sandbox.microvm] memory_mb (default 256)")
    ap.add_argument("--spare-qemus", type=int, default=None,
                    help="[sandbox.microvm] spare_qemus (default: the server's, 1); 0 for a start "
                         "from a template that spawns its own QEMU")
    ap.add_argument("--kernel-dir", default="/var/lib/airlock/guest-kernel", help="the guest kernel (default %(default)s)")
    ap.add_argument("--airlock", default=None, help="airlock binary (default: $AIRLOCK, build/bin/airlock, ../build/bin/airlock)")
    ap.add_argument("--raw", metavar="FILE", help="also write every sample (seconds) as JSON to FILE")
    ap.add_argument("--keep", action="store_true", help="keep the temp homes and logs")
    ap.add_argument("--only", choices=["pools", "templates"],
                    help="one part alone: pools (part 5 and its bare crun baseline, on the templates server); "
                         "templates (part 1's template start and its bare QEMU baseline)")
    a = ap.parse_args()
    a.airlock = find_airlock(a.airlock)
    require_root_and_crun("the oci backend, QEMU's -runas and the KVM probe need it")
    for need in ("qemu-system-x86_64",):
        if not shutil.which(need):
            sys.exit(f"{need} missing")
    if not os.path.exists(os.path.join(a.kernel_dir, "vmlinux")) or not os.path.exists("/bin/busybox"):
        sys.exit(f"{a.kernel_dir}/vmlinux or /bin/busybox missing (scripts/guest-kernel.sh, busybox-static)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    exit_on_sigterm()

    facts = machine_facts("(at start; other work on the host skews every figure)", "airlock")
    qv = sh("qemu-system-x86_64", "--version").splitlines()[0]
    kv = open(os.path.join(a.kernel_dir, "VERSION")).read().strip() if os.path.exists(
        os.path.join(a.kernel_dir, "VERSION")) else "?"
    kvm = "present" if os.path.exists("/dev/kvm") else "absent"
    facts += [("qemu", qv), ("guest", f"{kv} ({a.kernel_dir})"), ("/dev/kvm", kvm)]
    print_preamble(facts)
    print(f"binary:   {a.airlock}")
    print("parameters: " + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in sorted(vars(a).items())))

    base_cfg = f"[sandbox.microvm]\nmemory_mb = {a.memory_mb}\nkernel_dir = \"{a.kernel_dir}\"\n"
    if a.spare_qemus is not None:
        base_cfg += f"spare_qemus = {a.spare_qemus}\n"
    cold = Server(a, "cold", base_cfg + "templates = false\n")
    pools = "".join(f"[pools.{b}]\nimage = \"base\"\nbackend = \"{b}\"\nsize = {POOL_SIZE}\n"
                    f"command = {json.dumps(POOL_CMD)}\n" for b in ("oci", "microvm"))
    tmpl = Server(a, "templates", base_cfg + "templates = true\n" + pools)
    if a.only == "pools":
        return pools_only(a, tmpl)
    if a.only == "templates":
        return templates_only(a, tmpl)
    bare = None
    res = {}
    load_mid = {}
    try:
        # 1b: cold boots, on a server of its own, stopped before the other starts.
        cold.start()
        print(f"  config: {cold.config_text.strip()!r}")
        load_mid["cold"] = loadavg()
        res["cold"] = cold.sequential("microvm", a.sessions, "microvm cold boot")
        cold_log = cold.log_findings()
        cold.cleanup()
        cold.server = None

        tmpl.start()
        print(f"  config: {tmpl.config_text.strip()!r}")
        load_mid["templates"] = loadavg()
        res["tmpl"] = tmpl.sequential("microvm", a.sessions, "microvm from template")
        res["template_files"] = tmpl.template_files()
        if not res["template_files"]:
            tmpl.problems.append("no template was made: the 'template' sessions booted (see the log lines below)")
        # 1c: the bare QEMU, with the command line of the last session's QEMU.
        bare = BareQemu(tmpl.tmp, tmpl.qemu_argv or cold.qemu_argv, a.kernel_dir)
        load_mid["bare"] = loadavg()
        res["bare"] = bare.runs(a.sessions)
        # 1d: oci
        load_mid["oci"] = loadavg()
        res["oci"] = tmpl.sequential("oci", a.sessions, "oci")
        # 5: warm pools (before the idle parts, whose many sandboxes would slow the refills)
        load_mid["pools"] = loadavg()
        res["pool_oci"] = tmpl.from_pool("oci", a.sessions, "oci from its pool")
        res["pool_vm"] = tmpl.from_pool("microvm", a.sessions, "microvm from its pool")
        res["pool_claims"] = res["pool_vm"]["claims"]
        res["bare_crun"] = tmpl.bare_crun(a.sessions)
        # 2
        load_mid["rounds"] = loadavg()
        res["rounds"] = tmpl.tiers_rounds(a.rounds) if a.rounds > 0 else None
        # 3/4
        load_mid["idle"] = loadavg()
        res["idle_vm"] = tmpl.idle_tiers("microvm", a.idle) if a.idle > 0 else None
        load_mid["idle_oci"] = loadavg()
        res["idle_oci"] = tmpl.idle_tiers("oci", a.idle_oci) if a.idle_oci > 0 else None
        tmpl_log = tmpl.log_findings()
    finally:
        if bare:
            bare.stop()
        cold.cleanup()
        tmpl.cleanup()

    if a.raw:
        with open(a.raw, "w") as f:
            json.dump(res, f, default=str)

    # ------------------------------------------------------------ print
    t, c, b, o = res["tmpl"], res["cold"], res["bare"], res["oci"]
    ref = pct(b["marker"], 50)
    print()
    print(f"## 1. create -> agent's first request ({a.sessions} sequential sessions each, after one warm-up; "
          f"t1 = hello seen on the SSE stream; x/ref = p50 / bare QEMU's p50)")
    print()
    header()
    start_rows("microvm from template", t, ref)
    start_rows("microvm cold boot", c, ref)
    print(row("bare qemu -machine microvm: start -> marker", b["marker"], ref))
    print(row("  start -> QEMU exited (poweroff)", b["exit"]))
    print(row("oci (crun): POST -> hello seen", o["total"], ref))
    print(row("  of which POST -> 201", o["post"]))
    pv, po_ = res["pool_vm"], res["pool_oci"]
    print(row("microvm from a warm pool: POST -> hello seen", pv["total"], ref))
    print(row("  of which POST -> 201", pv["post"]))
    print(row("oci from a warm pool: POST -> hello seen", po_["total"], ref))
    print(row("  of which POST -> 201", po_["post"]))
    bc, bc_failed = res["bare_crun"]
    print(row("bare crun run of the image's /bin/true", bc, ref,
              f"{bc_failed} failed" if bc_failed else ""))
    print()
    print(f"template made (first microvm session of the templates server, includes importing base.tar, "
          f"making the erofs disk, booting the template VM and saving it, then the first restore): {ms(t['first'])}")
    print(f"first cold-boot session (includes importing base.tar and making the erofs disk): {ms(c['first'])}")
    print(f"first oci session on the templates server (image already imported): {ms(o['first'])}")
    tf = res["template_files"]
    print(f"template files: {', '.join(f'{k} {mib(v / 1024)}' for k, v in sorted(tf.items())) or 'none'}")
    print(f"DELETE -> QEMU gone (template sessions): p50 {ms(pct(t['teardown'], 50))}; cold: p50 "
          f"{ms(pct(c['teardown'], 50))}; oci container gone: p50 {ms(pct(o['teardown'], 50))}")
    for x in b["bad"][:3]:
        print(f"bare qemu failure: {x}")
    print()
    pt, pc, po = pct(t["total"], 50), pct(c["total"], 50), pct(o["total"], 50)
    print("ratios (p50):")
    print(f"  cold boot / template:           {pc / pt:.2f}x")
    print(f"  template / bare qemu boot:      {pt / ref:.2f}x")
    print(f"  cold boot / bare qemu boot:     {pc / ref:.2f}x")
    print(f"  microvm template / oci:         {pt / po:.1f}x")
    print(f"  microvm cold boot / oci:        {pc / po:.1f}x")
    print(f"  oci from pool / oci:            {pct(po_['total'], 50) / po:.2f}x")
    print(f"  microvm from pool / template:   {pct(pv['total'], 50) / pt:.2f}x")
    print(f"  microvm from pool / oci:        {pct(pv['total'], 50) / po:.1f}x")
    if bc:
        print(f"  oci from pool / bare crun run:  {pct(po_['total'], 50) / pct(bc, 50):.2f}x")
    print("pool claims: " + "; ".join(res["pool_claims"]))
    print()
    print(f"bare QEMU's arguments ({bare.source}; the initramfs is busybox + an /init script that echoes "
          f"the marker and runs `poweroff -f`):")
    print("  " + " ".join(x if " " not in x else repr(x) for x in bare.argv).replace(bare.initrd, "<tmp>/marker.cpio"))

    r = res["rounds"]
    if r:
        print()
        print(f"## 2. pause/resume and hibernate/wake on one microvm ({a.rounds} rounds; the agent posts `tick` "
              f"every 0.2 s; 'agent again' = from the resume's request to the first tick after `running`)")
        print()
        header("")
        print(row("POST suspend {mode: pause} -> 200", r["pause"]))
        print(row("POST resume (paused) -> 200", r["resume_p"]))
        print(row("  resume request -> agent's tick seen", r["tick_p"]))
        print(row("POST suspend {mode: hibernate} -> 200", r["hib"]))
        print(row("POST resume (hibernated) -> 200", r["resume_h"]))
        print(row("  resume request -> agent's tick seen", r["tick_h"]))
        print()
        print(f"snapshot while hibernated (the loop agent's VM): p50 {mib(pct(r['snap'], 50) / 1024)}, "
              f"max {mib(max(r['snap']) / 1024)}; QEMU processes of the session while hibernated: "
              f"{sorted(set(r['qemu_hib']))}")
        print(f"wakes after which the agent did not answer within {a.wake_timeout:g} s: {len(r['wake_silent'])}/{a.rounds}"
              f" (each replaced by a fresh loop session, untimed: {r['replaced']})")
        for x in r["wake_silent"][:3]:
            print(f"  {x}")
        print(f"wake (hibernated) / resume (paused), request -> 200, p50: "
              f"{pct(r['resume_h'], 50) / pct(r['resume_p'], 50):.0f}x; wake -> agent again vs a template start: "
              f"{pct(r['tick_h'], 50) / pt:.2f}x")

    if res["idle_vm"] or res["idle_oci"]:
        print()
        print(f"## 3./4. idle sessions at each tier (settle {a.settle:g} s before each reading; "
              f"CPU = the sandboxes' processes over {a.cpu_window:g} s)")
    if res["idle_vm"]:
        print()
        print_tiers(res["idle_vm"], "microvm")
    if res["idle_oci"]:
        print()
        print_tiers(res["idle_oci"], "oci")
    if res["idle_vm"] and res["idle_oci"]:
        vm, oc = res["idle_vm"], res["idle_oci"]
        print()
        print("running, per session: microvm / oci, MemAvailable delta "
              f"{((vm['mem0'] - vm['running']['mem']) / vm['m']) / max(1, (oc['mem0'] - oc['running']['mem']) / oc['m']):.0f}x, "
              f"PSS {(sum(vm['running']['pss']) / vm['m']) / max(1, sum(oc['running']['pss']) / oc['m']):.0f}x")

    print()
    print("load average when each part started: " + "; ".join(f"{k} {v}" for k, v in load_mid.items()))
    for label, found in (("cold", cold_log), ("templates", tmpl_log)):
        if not found:
            print(f"server {label}: no warn/error lines in its log")
        for key, (n, line) in sorted(found.items(), key=lambda kv: -kv[1][0]):
            print(f"server {label} log: {n}x {key}\n    e.g. {line[:400]}")
    print(f"loadavg at the end: {loadavg()}")
    for s in (cold, tmpl):
        for note in s.notes:
            print("note:", note)
        for p in s.problems:
            print(f"PROBLEM ({s.label}):", p)


if __name__ == "__main__":
    main()
