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
// the file yet. Anything else done with the WAL file (a read, a sync, a truncation, a write
// elsewhere, closing it) and any change of the connection's WAL locks writes what is gathered
// first, so SQLite finds the file as it wrote it; its size is answered as it will be.
//
// A write that cannot be made at the barrier cannot be reported there (the call returns
// nothing), and the header is published right after it: so space for the gathered frames is
// reserved (fallocate, keeping the file's size) as they are gathered, and a full disk fails
// that write at once, as without this VFS. The reservation is made anew in each write
// transaction: between two, another connection (another replica's process, on a shared file)
// may have truncated the WAL and given its blocks back. Gathering is done only on file systems
// where a reserved block is written without asking for more space (ext2/3/4, XFS, tmpfs; not
// copy-on-write ones or NFS, where frames are written one by one as SQLite alone writes them).
// Should a flush still fail (an I/O error, the file size limit), or should one have failed
// earlier in the transaction at a point where SQLite carries on, the barrier stops the process
// rather than publish frames the file does not hold; on the next open, SQLite's recovery drops
// the frames whose checksums do not match, which are the unacknowledged commit's.
//
// The store never uses exclusive locking mode, where SQLite keeps the wal-index in its own
// memory and calls no barrier: gathered frames would then be written only at the next lock
// change.

#include "common/result.h"

namespace airlock::store {

// The VFS's name, for sqlite3_open_v2. Registered once (not as the default); later calls
// answer the same.
Result<const char*> WalBatchingVfs();

}  // namespace airlock::store
