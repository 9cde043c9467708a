"""What the Python benchmarks in bench/ (agent_loop.py, sandbox_start.py) share.

Small statistics and /proc helpers, the machine facts they print first, the checks and signal
set-up at the start of their main(), and ServerBench: a fresh home under /tmp with `airlock
serve` on free ports, its log, and the cleanup that deletes the sessions, stops the server and
leaves no container or temporary home behind. Python 3 standard library only; the scripts
import it from their own directory.
"""

import http.client
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"


# ------------------------------------------------------------------------------ small helpers
def now():
    return time.perf_counter()


def pct(xs, p):
    """Nearest-rank percentile."""
    s = sorted(xs)
    if not s:
        return float("nan")
    return s[max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))]


def mean(xs):
    return statistics.fmean(xs) if xs else float("nan")


def ms(x):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 1e3:.2f}ms"


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def sh(*argv, check=False):
    """Runs argv; returns its stdout and stderr together. With check, a non-zero exit raises."""
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: {r.stdout.strip()}")
    return r.stdout


def loadavg():
    return " ".join(open("/proc/loadavg").read().split()[:3])


def meminfo(key):
    for line in open("/proc/meminfo"):
        if line.startswith(key + ":"):
            return int(line.split()[1])  # KiB
    return 0


def proc_ticks(pid, children=False, missing=0):
    """utime+stime jiffies of a process (with children: plus those of its reaped children, e.g.
    the crun it runs); `missing` when it cannot be read."""
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in (f[11:15] if children else f[11:13]))
    except OSError:
        return missing


# ------------------------------------------------------------------------------ main()
def machine_facts(loadavg_note, tree_label):
    """(name, value) rows about this machine and the tree; `loadavg_note` follows the load average,
    `tree_label` names the git revision's row."""
    cpu = ""
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    rev = sh("git", "-C", ROOT, "rev-parse", "--short", "HEAD").strip()
    dirty = " (+ uncommitted changes)" if sh("git", "-C", ROOT, "status", "--porcelain",
                                              "--untracked-files=no").strip() else ""
    mode = "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else (
        "hybrid" if os.path.isdir("/sys/fs/cgroup/unified") else "v1")
    return [
        ("nproc", str(len(os.sched_getaffinity(0)))),
        ("cpu", cpu),
        ("memory", f"{meminfo('MemTotal') // 1024} MiB"),
        ("kernel", platform.release()),
        ("crun", sh("crun", "--version").splitlines()[0] if shutil.which("crun") else "missing"),
        ("cgroups", mode),
        ("python", platform.python_version()),
        ("loadavg", f"{loadavg()} {loadavg_note}"),
        (tree_label, f"git {rev}{dirty}"),
    ]


def print_preamble(facts):
    """The command line as run, then the machine facts, one `name:    value` line each."""
    print("$ " + " ".join(shlex.quote(x) for x in [sys.executable] + sys.argv))
    for k, v in facts:
        print(f"{k + ':':<9} {v}")


def find_airlock(path):
    """The airlock binary: `path`, else $AIRLOCK, build/bin/airlock in the repo, ../build/bin/airlock."""
    if not path:
        for c in (os.environ.get("AIRLOCK"), os.path.join(ROOT, "build/bin/airlock"),
                  os.path.join(os.path.dirname(ROOT), "build/bin/airlock")):
            if c and os.access(c, os.X_OK):
                path = c
                break
    if not path or not os.access(path, os.X_OK):
        sys.exit("airlock binary not found; pass --airlock")
    return path


def require_root_and_crun(why):
    if os.geteuid() != 0:
        sys.exit(f"run as root: {why}")
    if not shutil.which("crun"):
        sys.exit("crun missing (scripts/install-deps.sh)")


def exit_on_sigterm():
    """SIGTERM raises SystemExit(143), so that the `finally: cleanup()` of main() runs."""
    def on_term(*_):
        raise SystemExit(143)
    signal.signal(signal.SIGTERM, on_term)


# ------------------------------------------------------------------------------ the server harness
def spawn_wait(argv, env=None):
    """Runs argv (stdio on /dev/null) and waits: (seconds, exit code)."""
    fa = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
          (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
          (os.POSIX_SPAWN_DUP2, 1, 2)]
    t = now()
    pid = os.posix_spawn(argv[0], argv, env if env is not None else os.environ, file_actions=fa)
    _, status = os.waitpid(pid, 0)
    return now() - t, os.waitstatus_to_exitcode(status)


class BareCrun:
    """The baseline of a sandbox start: bare `crun run` (foreground) of bundles copied from a
    running session's own (`bundle_dir`, read at once: the session may go right after), under
    `work`. remove_leftovers() deletes every container and cgroup it made."""

    def __init__(self, work, bundle_dir):
        self.work = work
        self.cgroups = []
        with open(os.path.join(bundle_dir, "config.json")) as f:
            self.session_config = json.load(f)
        # The files the bundle binds into the container (its /etc/passwd and /etc/group).
        self.files = os.path.join(work, "bundle-files")
        os.makedirs(self.files, exist_ok=True)
        for m in self.session_config["mounts"]:
            src = m.get("source", "")
            if src.startswith(bundle_dir.rstrip("/") + "/") and os.path.isfile(src):
                copy = os.path.join(self.files, os.path.basename(src))
                shutil.copy2(src, copy)
                m["source"] = copy

    def bundle(self, name, args):
        """A copy of the session's bundle with new process.args and a per-run cgroup path."""
        d = os.path.join(self.work, name)
        os.makedirs(d)
        cfg = json.loads(json.dumps(self.session_config))
        cfg["process"]["args"] = args
        # The session's socket directory is gone with its session: bind an empty one of ours.
        chan = os.path.join(d, "channel")
        os.makedirs(chan)
        os.chmod(chan, 0o755)
        for m in cfg["mounts"]:
            if m["destination"] == "/.airlock/run":
                m["source"] = chan
        with open(os.path.join(d, "config.json.in"), "w") as f:
            json.dump(cfg, f)
        return d, cfg, chan

    def runs(self, bundle, cfg, n, tag, timeout=None):
        """Times `crun --root R run --bundle D ID` n times, each with its own cgroup path:
        (times, failures); with `timeout`, one probe run: (seconds, exit code, output)."""
        state = os.path.join(self.work, "crun-state-" + tag)
        os.makedirs(state, exist_ok=True)
        crun = shutil.which("crun")
        times, failures = [], 0
        parent = os.path.dirname(cfg["linux"].get("cgroupsPath", "/airlock/x"))
        for i in range(n):
            cid = f"bench-{tag}-{os.getpid()}-{i}"
            c = dict(cfg)
            c["linux"] = dict(cfg["linux"], cgroupsPath=f"{parent}/{cid}")
            self.cgroups.append(c["linux"]["cgroupsPath"])
            with open(os.path.join(bundle, "config.json"), "w") as f:
                json.dump(c, f)
            if timeout is not None:  # a probe: a subprocess with a timeout, stderr kept
                t = now()
                try:
                    r = subprocess.run([crun, "--root", state, "run", "--bundle", bundle, cid],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, timeout=timeout)
                    return now() - t, r.returncode, r.stdout
                except subprocess.TimeoutExpired:
                    subprocess.run([crun, "--root", state, "delete", "--force", cid],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    return now() - t, None, "timeout"
            dt, code = spawn_wait([crun, "--root", state, "run", "--bundle", bundle, cid])
            if code != 0:
                failures += 1
                subprocess.run([crun, "--root", state, "delete", "--force", cid],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            else:
                times.append(dt)
        return times, failures

    def true_runs(self, n, tag):
        """n bare runs of the image's /bin/true, after a probe run that must succeed."""
        bundle, cfg, _ = self.bundle("bundle-" + tag, ["/bin/true"])
        _, code, out = self.runs(bundle, cfg, 1, tag + "-probe", timeout=30)
        if code != 0:
            raise RuntimeError(f"bare crun run probe: exited {code}: {out}")
        return self.runs(bundle, cfg, n, tag)

    def remove_leftovers(self):
        states = [d for d in os.listdir(self.work) if d.startswith("crun-state-")] if os.path.isdir(self.work) else []
        for st in states:
            root = os.path.join(self.work, st)
            for c in json.loads(sh("crun", "--root", root, "list", "--format", "json") or "[]") or []:
                sh("crun", "--root", root, "delete", "--force", c["id"])
        for cg in self.cgroups:
            for base in ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup"):
                p = base + cg
                if os.path.isdir(p):
                    try:
                        os.rmdir(p)
                    except OSError:
                        pass


class ServerBench:
    """A fresh home under /tmp and `airlock serve` on free ports with it.

    A subclass creates its API client after start_server() (the operator key is in self.key),
    adds the ids of the sessions it creates to self.sessions and removes those that ended, and
    implements delete_sessions(), which cleanup() calls while the server still runs."""

    server_label = "server:"  # printed before the server's command line
    own_session = False  # start airlock serve in a session of its own (a terminal's Ctrl-C then misses it)
    report_stop = False  # print how long the server took to exit on SIGTERM

    def __init__(self, args, prefix):
        self.a = args
        self.tmp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        os.chmod(self.tmp, 0o755)  # the sandbox user must reach <home>/run/<id>/
        self.home = os.path.join(self.tmp, "home")
        self.log_path = os.path.join(self.tmp, "serve.log")
        self.server = None
        self.sessions = set()  # created and not known to have ended
        self.notes = []
        self.problems = []

    # ---------------------------------------------------------------- server
    def start_server(self, extra_argv=()):
        """Starts airlock serve and waits (20 s at the most) for /healthz and the operator key."""
        self.port, self.sport = free_port(), free_port()
        self.log = open(self.log_path, "w")
        argv = [self.a.airlock, "serve", "--home", self.home, "--listen", f"{HOST}:{self.port}",
                "--sandbox-listen", f"{HOST}:{self.sport}", *extra_argv]
        print(self.server_label, " ".join(argv))
        self.server = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=self.own_session)
        key_path = os.path.join(self.home, "operator.key")
        deadline = time.monotonic() + 20
        while True:
            if self.server.poll() is not None:
                raise RuntimeError(f"airlock serve exited with {self.server.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError("airlock serve did not answer /healthz in 20 s:\n" + self.log_tail())
            try:
                c = http.client.HTTPConnection(HOST, self.port, timeout=1)
                c.request("GET", "/healthz")
                ok = c.getresponse().status == 200
                c.close()
                if ok and os.path.exists(key_path):
                    break
            except OSError:
                pass
            time.sleep(0.05)
        self.key = open(key_path).read().strip()
        self.oci_root = os.path.join(self.home, "run", "oci")

    def log_tail(self, n=30):
        try:
            return "".join(open(self.log_path).readlines()[-n:])
        except OSError:
            return ""

    def log_offset(self):
        self.log.flush()
        return os.path.getsize(self.log_path)

    def handler_times(self, start, end):
        """Server-side handler times (seconds) by (method, path), from the `http` log lines in [start, end)."""
        out = {}
        with open(self.log_path, "rb") as f:
            f.seek(start)
            data = f.read(end - start).decode(errors="replace")
        for line in data.splitlines():
            try:
                j = json.loads(line)
            except ValueError:
                continue
            if j.get("msg") == "http" and "ms" in j:
                out.setdefault((j.get("method"), j.get("path")), []).append(j["ms"] / 1e3)
        return out

    def stop_server(self):
        if not self.server or self.server.poll() is not None:
            return
        t = now()
        self.server.send_signal(signal.SIGTERM)
        try:
            self.server.wait(timeout=30)
            if self.report_stop:
                print(f"server stopped by SIGTERM in {ms(now() - t)}, exit code {self.server.returncode}")
            if self.server.returncode != 0:
                self.problems.append(f"airlock serve exited with code {self.server.returncode} on SIGTERM")
        except subprocess.TimeoutExpired:
            self.problems.append("airlock serve did not exit within 30 s of SIGTERM; killed")
            self.server.kill()
            self.server.wait()

    def containers(self):
        """The containers crun lists under the server's oci state root."""
        try:
            out = subprocess.run(["crun", "--root", self.oci_root, "list", "--format", "json"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
            return json.loads(out or "[]") or []
        except (ValueError, OSError):
            return []

    def print_footer(self):
        """The report's last lines: the load average, then the notes and problems gathered."""
        print(f"loadavg at the end: {loadavg()}")
        for note in self.notes:
            print("note:", note)
        for p in self.problems:
            print("PROBLEM:", p)

    # ---------------------------------------------------------------- cleanup
    def delete_sessions(self):
        """Deletes the sessions in self.sessions through the API, reporting failures on stderr."""
        raise NotImplementedError

    def remove_leftovers(self):
        """What a subclass started besides the server's sessions; runs after the server stopped."""

    def cleanup(self):
        if self.sessions and self.server and self.server.poll() is None:
            print(f"cleanup: deleting {len(self.sessions)} session(s)", file=sys.stderr)
            self.delete_sessions()
            deadline = time.monotonic() + 60
            while self.containers() and time.monotonic() < deadline:
                time.sleep(0.1)
        self.stop_server()
        if hasattr(self, "oci_root"):
            for c in self.containers():
                self.problems.append(f"container {c.get('id')} survived the server; crun delete --force")
                sh("crun", "--root", self.oci_root, "delete", "--force", c["id"])
        self.remove_leftovers()
        if self.a.keep:
            print(f"kept {self.tmp}")
        elif hasattr(self, "oci_root") and self.containers():
            print(f"not removing {self.tmp}: containers still use it", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
