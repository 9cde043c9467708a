#include "store/sqlite_wal_vfs.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/log.h"

namespace airlock::store {
namespace {

constexpr char kName[] = "airlock-wal";
// What a connection gathers at most before writing it out (a commit of more pages is written
// in pieces of this size, each still one call).
constexpr size_t kMaxGathered = size_t{4} << 20;
// Space is reserved this far ahead of what was gathered, so that most commits reserve nothing.
constexpr sqlite3_int64 kReserveAhead = sqlite3_int64{1} << 20;

sqlite3_vfs* g_base = nullptr;  // "unix", or whatever the default VFS was

struct File {
  sqlite3_file base;  // first: SQLite sees this
  sqlite3_file* real = nullptr;
  // A database file: opened read-only, and its connection's WAL.
  bool read_only = false;
  File* wal_file = nullptr;
  // A WAL file: its database's file, and what is gathered, from `at`.
  bool wal = false;
  File* db = nullptr;
  std::string path;
  int fd = -1;  // the WAL's own descriptor, for the gathered writes and fallocate
  bool gather = false;
  std::string gathered;
  sqlite3_int64 at = 0;
  // [reserved_from, reserved_to) has its blocks allocated by this write transaction. Another
  // connection, of this process or another, may truncate the WAL between two of them (under
  // the write lock), so what an earlier one reserved is not trusted.
  sqlite3_int64 reserved_from = 0, reserved_to = 0;
  bool new_transaction = true;
  // Set when gathered frames could not be written, until the write lock is let go: SQLite
  // does not stop at every error a flush may meet (the size it asks for after a commit's
  // frames is only logged on error), so the barrier refuses to publish after one.
  int failed = SQLITE_OK;
};

// ext2/3/4, XFS, tmpfs: a write into blocks fallocate allocated needs no more space.
bool ReservesInPlace(decltype(statfs::f_type) type) {
  return type == 0xEF53 || type == 0x58465342 || type == 0x01021994;
}

// Write locks: WAL_WRITE_LOCK is the wal-index's lock 0 (wal.c).
bool CoversWriteLock(int offset, int n) { return offset <= 0 && offset + n > 0; }

File* Self(sqlite3_file* f) { return reinterpret_cast<File*>(f); }
const sqlite3_io_methods* Real(File* f) { return f->real->pMethods; }

// Writes out what is gathered, in one call where the kernel takes it all (through the WAL's
// own descriptor: the default VFS writes at most 128 KiB a call).
int Flush(File* f) {
  if (f->gathered.empty()) return SQLITE_OK;
  const char* p = f->gathered.data();
  size_t left = f->gathered.size();
  sqlite3_int64 at = f->at;
  int rc = SQLITE_OK;
  while (left > 0) {
    ssize_t n = ::pwrite(f->fd, p, left, at);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      rc = n < 0 && errno != ENOSPC && errno != EDQUOT ? SQLITE_IOERR_WRITE : SQLITE_FULL;
      break;
    }
    p += n;
    left -= static_cast<size_t>(n);
    at += n;
  }
  f->gathered.clear();
  if (rc != SQLITE_OK) f->failed = rc;
  return rc;
}

int Fallocate(int fd, sqlite3_int64 from, sqlite3_int64 to) {
  int r;
  do r = ::fallocate(fd, FALLOC_FL_KEEP_SIZE, from, to - from);
  while (r != 0 && errno == EINTR);
  return r;
}

// Makes sure the blocks of [off, end) are allocated, so that writing them later cannot fail
// for want of space.
int Reserve(File* f, sqlite3_int64 off, sqlite3_int64 end) {
  if (f->new_transaction || off < f->reserved_from) {
    f->reserved_from = f->reserved_to = off;
    f->new_transaction = false;
  }
  if (end <= f->reserved_to) return SQLITE_OK;
  sqlite3_int64 from = f->reserved_to;
  sqlite3_int64 to = end + kReserveAhead;
  int failed = Fallocate(f->fd, from, to);
  if (failed != 0 && (errno == ENOSPC || errno == EDQUOT)) {
    to = end;  // on a nearly full disk, what this write needs and no more
    failed = Fallocate(f->fd, from, to);
  }
  if (failed != 0) {
    if (errno == EOPNOTSUPP || errno == ENOSYS) {
      f->gather = false;  // write each frame through, as SQLite alone does
      return SQLITE_OK;
    }
    return errno == ENOSPC || errno == EDQUOT ? SQLITE_FULL : SQLITE_IOERR_WRITE;
  }
  f->reserved_to = to;
  return SQLITE_OK;
}

// Writes out what a database file's connection gathered in its WAL, where the call cannot
// report a failure (see the header).
void FlushOrDie(File* db) {
  if (!db->wal_file) return;
  int rc = Flush(db->wal_file);
  if (rc == SQLITE_OK) rc = db->wal_file->failed;
  if (rc != SQLITE_OK) {
    log::Error(
        "sqlite: writing a commit's WAL frames failed after their space was reserved; "
        "stopping before the commit is published",
        {{"path", db->wal_file->path}, {"sqlite_code", rc}});
    std::abort();
  }
}

int Close(sqlite3_file* pf) {
  File* f = Self(pf);
  int rc = f->wal ? Flush(f) : SQLITE_OK;
  if (f->wal && f->db) f->db->wal_file = nullptr;
  if (!f->wal && f->wal_file) f->wal_file->db = nullptr;
  int closed = Real(f)->xClose(f->real);
  if (f->fd >= 0) ::close(f->fd);
  f->~File();
  return rc != SQLITE_OK ? rc : closed;
}

int Read(sqlite3_file* pf, void* buf, int amt, sqlite3_int64 off) {
  File* f = Self(pf);
  if (int rc = Flush(f); rc != SQLITE_OK) return rc;
  return Real(f)->xRead(f->real, buf, amt, off);
}

int Write(sqlite3_file* pf, const void* buf, int amt, sqlite3_int64 off) {
  File* f = Self(pf);
  if (!f->gather) {
    if (int rc = Flush(f); rc != SQLITE_OK) return rc;
    return Real(f)->xWrite(f->real, buf, amt, off);
  }
  const bool follows =
      !f->gathered.empty() && off == f->at + static_cast<sqlite3_int64>(f->gathered.size());
  if (!follows || f->gathered.size() + static_cast<size_t>(amt) > kMaxGathered) {
    if (int rc = Flush(f); rc != SQLITE_OK) return rc;
    f->at = off;
  }
  if (int rc = Reserve(f, off, off + amt); rc != SQLITE_OK) return rc;
  if (!f->gather) return Real(f)->xWrite(f->real, buf, amt, off);  // Reserve gave up gathering
  f->gathered.append(static_cast<const char*>(buf), static_cast<size_t>(amt));
  return SQLITE_OK;
}

int Truncate(sqlite3_file* pf, sqlite3_int64 size) {
  File* f = Self(pf);
  if (int rc = Flush(f); rc != SQLITE_OK) return rc;
  int rc = Real(f)->xTruncate(f->real, size);
  f->reserved_to = std::min(f->reserved_to, size);
  f->reserved_from = std::min(f->reserved_from, f->reserved_to);
  return rc;
}

int Sync(sqlite3_file* pf, int flags) {
  File* f = Self(pf);
  if (int rc = Flush(f); rc != SQLITE_OK) return rc;
  return Real(f)->xSync(f->real, flags);
}

// The size the file will have once what is gathered is written: asked for after a commit's
// frames (to keep the WAL within its size limit), where an error would only be logged.
int FileSize(sqlite3_file* pf, sqlite3_int64* size) {
  File* f = Self(pf);
  int rc = Real(f)->xFileSize(f->real, size);
  if (rc == SQLITE_OK && !f->gathered.empty()) {
    *size = std::max(*size, f->at + static_cast<sqlite3_int64>(f->gathered.size()));
  }
  return rc;
}

int Lock(sqlite3_file* pf, int level) {
  File* f = Self(pf);
  if (int rc = Flush(f); rc != SQLITE_OK) return rc;
  return Real(f)->xLock(f->real, level);
}

int Unlock(sqlite3_file* pf, int level) {
  File* f = Self(pf);
  if (int rc = Flush(f); rc != SQLITE_OK) return rc;
  return Real(f)->xUnlock(f->real, level);
}

int CheckReservedLock(sqlite3_file* pf, int* out) {
  File* f = Self(pf);
  return Real(f)->xCheckReservedLock(f->real, out);
}

int FileControl(sqlite3_file* pf, int op, void* arg) {
  File* f = Self(pf);
  if (int rc = Flush(f); rc != SQLITE_OK) return rc;
  if (op == SQLITE_FCNTL_VFSNAME) {
    int rc = Real(f)->xFileControl(f->real, op, arg);
    if (rc == SQLITE_OK && arg) {
      char** name = static_cast<char**>(arg);
      char* both = sqlite3_mprintf("%s/%z", kName, *name);
      *name = both;
    }
    return rc;
  }
  return Real(f)->xFileControl(f->real, op, arg);
}

int SectorSize(sqlite3_file* pf) { return Real(Self(pf))->xSectorSize(Self(pf)->real); }

int DeviceCharacteristics(sqlite3_file* pf) {
  return Real(Self(pf))->xDeviceCharacteristics(Self(pf)->real);
}

int ShmMap(sqlite3_file* pf, int page, int size, int extend, void volatile** out) {
  File* f = Self(pf);
  return Real(f)->xShmMap(f->real, page, size, extend, out);
}

int ShmLock(sqlite3_file* pf, int offset, int n, int flags) {
  File* f = Self(pf);
  File* w = f->wal_file;
  if (flags & SQLITE_SHM_UNLOCK) {
    // Nothing stays gathered once a lock is let go; an unlock is made whatever the flush
    // answers (SQLite does not look at an unlock's answer). With the write lock, the
    // transaction is over, and so is what failed in it.
    if (w) Flush(w);
    int rc = Real(f)->xShmLock(f->real, offset, n, flags);
    if (w && CoversWriteLock(offset, n)) w->failed = SQLITE_OK;
    return rc;
  }
  if (w) {
    if (int rc = Flush(w); rc != SQLITE_OK) return rc;
  }
  int rc = Real(f)->xShmLock(f->real, offset, n, flags);
  if (rc == SQLITE_OK && w && (flags & SQLITE_SHM_EXCLUSIVE) && CoversWriteLock(offset, n)) {
    w->new_transaction = true;
    w->failed = SQLITE_OK;
  }
  return rc;
}

void ShmBarrier(sqlite3_file* pf) {
  File* f = Self(pf);
  // Between the two copies of a new wal-index header: the frames it names go to the file
  // before the header can be read (see the header of this file).
  FlushOrDie(f);
  Real(f)->xShmBarrier(f->real);
}

int ShmUnmap(sqlite3_file* pf, int remove) {
  File* f = Self(pf);
  FlushOrDie(f);
  return Real(f)->xShmUnmap(f->real, remove);
}

int Fetch(sqlite3_file* pf, sqlite3_int64 off, int amt, void** out) {
  File* f = Self(pf);
  if (int rc = Flush(f); rc != SQLITE_OK) return rc;
  return Real(f)->xFetch(f->real, off, amt, out);
}

int Unfetch(sqlite3_file* pf, sqlite3_int64 off, void* p) {
  File* f = Self(pf);
  return Real(f)->xUnfetch(f->real, off, p);
}

const sqlite3_io_methods kMethods = {3,
                                     Close,
                                     Read,
                                     Write,
                                     Truncate,
                                     Sync,
                                     FileSize,
                                     Lock,
                                     Unlock,
                                     CheckReservedLock,
                                     FileControl,
                                     SectorSize,
                                     DeviceCharacteristics,
                                     ShmMap,
                                     ShmLock,
                                     ShmBarrier,
                                     ShmUnmap,
                                     Fetch,
                                     Unfetch};

int Open(sqlite3_vfs*, sqlite3_filename name, sqlite3_file* pf, int flags, int* out_flags) {
  auto* f = new (pf) File();
  f->real = reinterpret_cast<sqlite3_file*>(reinterpret_cast<char*>(pf) + sizeof(File));
  f->real->pMethods = nullptr;
  int rc = g_base->xOpen(g_base, name, f->real, flags, out_flags);
  if (rc != SQLITE_OK || !f->real->pMethods || f->real->pMethods->iVersion < 3) {
    // Not opened, or by a VFS too old to wrap: closed here (the default VFS may leave its
    // methods set on a failure, and expects xClose then), and SQLite calls no method of ours.
    if (f->real->pMethods) f->real->pMethods->xClose(f->real);
    if (rc == SQLITE_OK) rc = SQLITE_CANTOPEN;
    f->~File();
    pf->pMethods = nullptr;
    return rc;
  }
  pf->pMethods = &kMethods;
  if (flags & SQLITE_OPEN_MAIN_DB) f->read_only = (flags & SQLITE_OPEN_READONLY) != 0;
  if ((flags & SQLITE_OPEN_WAL) && name) {
    f->wal = true;
    f->path = name;
    // The database file this WAL belongs to is this VFS's too: link the two, so that its
    // barrier writes out this connection's frames.
    if (sqlite3_file* db = sqlite3_database_file_object(name); db && db->pMethods == &kMethods) {
      f->db = Self(db);
      f->db->wal_file = f;
    }
    // SQLite opens the WAL read-write for every connection; only those that may write gather,
    // and only on file systems where a block fallocate reserved is written without asking for
    // another (not copy-on-write ones such as btrfs or ZFS, nor NFS): elsewhere frames are
    // written one by one, as SQLite alone writes them.
    if (f->db && !f->db->read_only) {
      f->fd = ::open(name, O_RDWR | O_CLOEXEC);
      struct statfs fs {};
      if (f->fd >= 0 && ::fstatfs(f->fd, &fs) == 0 && ReservesInPlace(fs.f_type)) {
        f->gather = true;
      } else if (f->fd >= 0) {
        ::close(f->fd);
        f->fd = -1;
      }
    }
  }
  return SQLITE_OK;
}

int Delete(sqlite3_vfs*, const char* name, int sync_dir) {
  return g_base->xDelete(g_base, name, sync_dir);
}

int Access(sqlite3_vfs*, const char* name, int flags, int* out) {
  return g_base->xAccess(g_base, name, flags, out);
}
int FullPathname(sqlite3_vfs*, const char* name, int n, char* out) {
  return g_base->xFullPathname(g_base, name, n, out);
}
void* DlOpen(sqlite3_vfs*, const char* name) { return g_base->xDlOpen(g_base, name); }
void DlError(sqlite3_vfs*, int n, char* out) { g_base->xDlError(g_base, n, out); }
void (*DlSym(sqlite3_vfs*, void* h, const char* sym))(void) {
  return g_base->xDlSym(g_base, h, sym);
}
void DlClose(sqlite3_vfs*, void* h) { g_base->xDlClose(g_base, h); }
int Randomness(sqlite3_vfs*, int n, char* out) { return g_base->xRandomness(g_base, n, out); }
int Sleep(sqlite3_vfs*, int us) { return g_base->xSleep(g_base, us); }
int CurrentTime(sqlite3_vfs*, double* out) { return g_base->xCurrentTime(g_base, out); }
int GetLastError(sqlite3_vfs*, int n, char* out) { return g_base->xGetLastError(g_base, n, out); }
int CurrentTimeInt64(sqlite3_vfs*, sqlite3_int64* out) {
  return g_base->xCurrentTimeInt64(g_base, out);
}

}  // namespace

Result<const char*> WalBatchingVfs() {
  static const Result<const char*> registered = []() -> Result<const char*> {
    g_base = sqlite3_vfs_find(nullptr);
    if (!g_base || g_base->iVersion < 2) {
      return MakeError(ErrorCode::kInternal, "sqlite: no default VFS of version 2 or later");
    }
    static sqlite3_vfs vfs{};
    vfs.iVersion = 2;
    vfs.szOsFile = static_cast<int>(sizeof(File)) + g_base->szOsFile;
    vfs.mxPathname = g_base->mxPathname;
    vfs.zName = kName;
    vfs.xOpen = Open;
    vfs.xDelete = Delete;
    vfs.xAccess = Access;
    vfs.xFullPathname = FullPathname;
    vfs.xDlOpen = DlOpen;
    vfs.xDlError = DlError;
    vfs.xDlSym = DlSym;
    vfs.xDlClose = DlClose;
    vfs.xRandomness = Randomness;
    vfs.xSleep = Sleep;
    vfs.xCurrentTime = CurrentTime;
    vfs.xGetLastError = GetLastError;
    vfs.xCurrentTimeInt64 = CurrentTimeInt64;
    if (int rc = sqlite3_vfs_register(&vfs, /*makeDflt=*/0); rc != SQLITE_OK) {
      return MakeError(ErrorCode::kInternal,
                       std::string("sqlite: registering the WAL VFS: ") + sqlite3_errstr(rc));
    }
    return kName;
  }();
  return registered;
}

}  // namespace airlock::store
