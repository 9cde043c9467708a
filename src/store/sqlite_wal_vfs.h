#pragma once

// A SQLite VFS over the default one ("unix") that writes a commit's WAL frames in one system
// call instead of two per frame.
//
// SQLite writes each WAL frame as two pwrite calls (its 24-byte header, then the page), so a
// group commit of twenty events made about forty system calls, a third of the writer thread's
// time (BENCHMARKS.md, issue 12, "Seventh pass"). Here the frames a connection appends are
// gathered in memory, contiguous, and written in one call at the latest when the commit is
// published. A commit becomes visible to every other connection only when the writer stores the
// new wal-index header, which it does in two copies with a memory barrier between them (a
// reader accepts the header only when both agree): the barrier is called on the database's
// file, which flushes its connection's WAL there, so no reader can see a frame that is not in
// the file yet. Anything else done with the WAL file (a read, a sync, a size, a truncation, a
// write elsewhere, a lock, closing it) writes what is gathered first, so SQLite sees the file
// as it wrote it.
//
// A write that cannot be made at the barrier cannot be reported there (the call returns
// nothing), and the header is published right after it: so space for the gathered frames is
// reserved (fallocate) when they are gathered, and a full disk fails that write at once, as
// without this VFS. Should the flush still fail (an I/O error), the process stops rather than
// publish frames the file does not hold; on the next open, SQLite's recovery drops the frames
// whose checksums do not match, which are the unacknowledged commit's.

#include "common/result.h"

namespace airlock::store {

// The VFS's name, for sqlite3_open_v2. Registered once (not as the default); later calls
// answer the same.
Result<const char*> WalBatchingVfs();

}  // namespace airlock::store
