#!/usr/bin/env python3
"""How much an event's append costs SQLite in two table layouts (BENCHMARKS.md, issue 12).

Not the server: Python's sqlite3 on the store's schema, reduced to what a group of events
touches, to see what a layout saves before building it. Each run prefills 200,000 events over
16 sessions, then appends 3,000 groups of 14 events (as the events benchmark's groups), each
group one transaction: read each session's counter, insert the events, write the counters.

  clustered  today's layout: events WITHOUT ROWID, clustered by (session_id, seq). A group
             dirties one page of the table per session in it.
  recent     the events go first to a small rowid table in arrival order (with no index:
             RECENT_INDEX=1 adds one on (session_id, seq)), moved into the clustered table
             every MOVE_EVERY events (5000) in one transaction; a read would take both.

Prints the process's CPU per event (Python's own share included, the same in both) and the
WAL's size after all groups (automatic checkpoints off, so it is every frame written).
Usage: python3 bench/sqlite_event_layout.py   (about a minute; a file in a temporary dir)
"""
import os
import random
import sqlite3
import tempfile
import time

SESSIONS, PREFILL_PER_SESSION, GROUPS, GROUP = 16, 12500, 3000, 14
MOVE_EVERY = int(os.environ.get("MOVE_EVERY", "5000"))


def setup(path, recent):
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "temp_store=MEMORY"):
        db.execute(f"PRAGMA {pragma}")
    db.execute("CREATE TABLE sessions (id TEXT PRIMARY KEY, pad TEXT, next_event_seq INTEGER,"
               " event_count INTEGER)")
    db.execute("CREATE TABLE events (session_id TEXT NOT NULL, seq INTEGER NOT NULL,"
               " type TEXT NOT NULL, data TEXT NOT NULL, created_at INTEGER NOT NULL,"
               " PRIMARY KEY (session_id, seq)) WITHOUT ROWID")
    if recent:
        db.execute("CREATE TABLE events_recent (id INTEGER PRIMARY KEY, session_id TEXT NOT NULL,"
                   " seq INTEGER NOT NULL, type TEXT NOT NULL, data TEXT NOT NULL,"
                   " created_at INTEGER NOT NULL)")
        if os.environ.get("RECENT_INDEX"):
            db.execute("CREATE UNIQUE INDEX events_recent_seq ON events_recent(session_id, seq)")
    ids = ["ses_%026d" % random.getrandbits(64) for _ in range(SESSIONS)]
    db.execute("BEGIN")
    for i in ids:  # a session row is a few hundred bytes (command, limits, metadata)
        db.execute("INSERT INTO sessions VALUES (?, ?, ?, 0)", (i, "x" * 400, PREFILL_PER_SESSION + 1))
    for k in range(PREFILL_PER_SESSION):
        for i in ids:
            db.execute("INSERT INTO events VALUES (?, ?, 'bench', '{\"i\":1}', 0)", (i, k + 1))
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("PRAGMA wal_autocheckpoint=0")
    return db, ids


def append_groups(db, ids, recent):
    target = "events_recent(session_id, seq, type, data, created_at)" if recent else "events"
    moving, appended = 0.0, 0
    start = time.process_time()
    for _ in range(GROUPS):
        group = [random.choice(ids) for _ in range(GROUP)]
        db.execute("BEGIN IMMEDIATE")
        seqs = {s: db.execute("SELECT next_event_seq FROM sessions WHERE id = ?", (s,)).fetchone()[0]
                for s in set(group)}
        for s in group:
            db.execute(f"INSERT INTO {target} VALUES (?, ?, 'bench', '{{\"i\":1}}', 0)", (s, seqs[s]))
            seqs[s] += 1
        for s, seq in seqs.items():
            db.execute("UPDATE sessions SET next_event_seq = ?, event_count = event_count + 1"
                       " WHERE id = ?", (seq, s))
        db.execute("COMMIT")
        appended += GROUP
        if recent and appended % MOVE_EVERY < GROUP:
            t = time.process_time()
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO events SELECT session_id, seq, type, data, created_at"
                       " FROM events_recent ORDER BY session_id, seq")
            db.execute("DELETE FROM events_recent")
            db.execute("COMMIT")
            moving += time.process_time() - t
    return (time.process_time() - start) / appended * 1e6, moving / appended * 1e6


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for name, recent in (("clustered", False), ("recent", True)):
            path = os.path.join(tmp, f"{name}.db")
            db, ids = setup(path, recent)
            per_event, moving = append_groups(db, ids, recent)
            wal = os.path.getsize(path + "-wal") / 1e6
            print(f"{name:9}  CPU per event {per_event:5.1f} us (moving {moving:.1f})"
                  f"  WAL written {wal:6.1f} MB")
            db.close()


if __name__ == "__main__":
    main()
