#include "files/local_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/crypto.h"
#include "common/log.h"
#include "common/url.h"

namespace airlock::files {

namespace fs = std::filesystem;

Status ValidateFileName(std::string_view name) {
  if (name.empty() || name.size() > 255) {
    return MakeError(ErrorCode::kInvalidArgument, "a file name has 1 to 255 bytes");
  }
  if (name == "." || name == ".." || name.front() == '.') {
    return MakeError(ErrorCode::kInvalidArgument, "a file name cannot start with '.'");
  }
  for (unsigned char ch : name) {
    if (ch < 0x20 || ch == 0x7f)
      return MakeError(ErrorCode::kInvalidArgument, "a file name cannot hold control characters");
    if (ch == '/' || ch == '\\') {
      return MakeError(ErrorCode::kInvalidArgument,
                       "a file name cannot hold '/' or '\\' (no directories)");
    }
  }
  return Ok();
}

namespace {

std::string Terms(std::string_view method, std::string_view session, std::string_view name,
                  int64_t expires, int64_t max_bytes) {
  // Length-prefixed fields: no two different term sets share a message.
  return fmt::format("airlock-file-url-v1\n{}:{}\n{}:{}\n{}:{}\n{}\n{}", method.size(), method,
                     session.size(), session, name.size(), name, expires, max_bytes);
}

std::string NewKid() { return HexEncode(RandomBytes(4)); }

}  // namespace

UrlSigner UrlSigner::ForTest(std::vector<std::pair<std::string, Secret>> keys) {
  UrlSigner s;
  s.keys_ = std::move(keys);
  return s;
}

Result<UrlSigner> UrlSigner::LoadOrCreate(const std::string& path) {
  std::ifstream f(path);
  if (!f) {
    AIRLOCK_TRY(RotateSigningKey(path));
    f.open(path);
    if (!f) return Errorf(ErrorCode::kInternal, "cannot read {}", path);
  }
  UrlSigner s;
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty() || line.front() == '#') continue;
    std::istringstream ls(line);
    std::string kid, hex;
    ls >> kid >> hex;
    if (kid.empty() || kid.size() > 32 || hex.size() < 64) {
      return Errorf(ErrorCode::kInvalidArgument, "{}: each line is \"<key id> <64+ hex digits>\"",
                    path);
    }
    s.keys_.emplace_back(kid, Secret(hex));
  }
  if (s.keys_.empty()) return Errorf(ErrorCode::kInvalidArgument, "{} holds no key", path);
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    log::Warn("file signing key file is readable by others; fixing its mode to 0600",
              {{"path", path}});
    ::chmod(path.c_str(), 0600);
  }
  return s;
}

Result<std::string> RotateSigningKey(const std::string& path) {
  std::string old;
  {
    std::ifstream f(path);
    if (f) {
      std::stringstream ss;
      ss << f.rdbuf();
      old = ss.str();
    }
  }
  std::string kid = NewKid();
  std::string content = fmt::format("{} {}\n{}", kid, HexEncode(RandomBytes(32)), old);
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Errorf(ErrorCode::kInternal, "create {}: {}", tmp, std::strerror(errno));
  bool ok = ::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size()) &&
            ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return Errorf(ErrorCode::kInternal, "write {}: {}", path, std::strerror(errno));
  }
  return kid;
}

std::string UrlSigner::Sign(std::string_view method, std::string_view session,
                            std::string_view name, int64_t expires, int64_t max_bytes) const {
  return HexEncode(
      HmacSha256(keys_.front().second.Reveal(), Terms(method, session, name, expires, max_bytes)));
}

bool UrlSigner::Verify(std::string_view kid, std::string_view sig, std::string_view method,
                       std::string_view session, std::string_view name, int64_t expires,
                       int64_t max_bytes) const {
  for (const auto& [k, key] : keys_) {
    if (k != kid) continue;
    std::string want =
        HexEncode(HmacSha256(key.Reveal(), Terms(method, session, name, expires, max_bytes)));
    return ConstantTimeEquals(want, sig);
  }
  return false;
}

LocalBlobStore::LocalBlobStore(LocalStoreOptions o, UrlSigner signer)
    : o_(std::move(o)), signer_(std::move(signer)) {}

std::string LocalBlobStore::SessionDir(const std::string& session_id) const {
  return o_.root + "/" + session_id;
}

std::string LocalBlobStore::PathOf(const std::string& session_id, const std::string& name) const {
  return SessionDir(session_id) + "/" + name;
}

Result<PresignedUrl> LocalBlobStore::Presign(const PresignRequest& r) {
  AIRLOCK_TRY(ValidateFileName(r.name));
  int64_t max = r.method == "PUT" ? r.max_bytes : 0;
  std::string sig = signer_.Sign(r.method, r.session_id, r.name, r.expires_at, max);
  PresignedUrl out;
  out.method = r.method;
  out.expires_at = r.expires_at;
  const std::string name = PercentEncode(r.name);
  out.url =
      fmt::format("{}/sandbox/v1/files/{}/{}?method={}&expires={}&max={}&kid={}&sig={}", r.base_url,
                  r.session_id, name, r.method, r.expires_at, max, signer_.active_kid(), sig);
  return out;
}

Result<std::vector<FileInfo>> LocalBlobStore::List(const std::string& session_id) {
  std::vector<FileInfo> out;
  DIR* d = ::opendir(SessionDir(session_id).c_str());
  if (d == nullptr) {
    if (errno == ENOENT) return out;
    return Errorf(ErrorCode::kInternal, "list files of {}: {}", session_id, std::strerror(errno));
  }
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name.empty() || name.front() == '.') continue;  // ".", "..", partial uploads
    struct stat st {};
    if (::fstatat(::dirfd(d), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
      continue;
    out.push_back(
        FileInfo{name, static_cast<int64_t>(st.st_size),
                 static_cast<int64_t>(st.st_mtim.tv_sec) * 1000 + st.st_mtim.tv_nsec / 1'000'000});
  }
  ::closedir(d);
  std::sort(out.begin(), out.end(),
            [](const FileInfo& a, const FileInfo& b) { return a.name < b.name; });
  return out;
}

Result<OperatorDownload> LocalBlobStore::Download(const std::string& session_id,
                                                  const std::string& name, int) {
  AIRLOCK_TRY(ValidateFileName(name));
  struct stat st {};
  std::string path = PathOf(session_id, name);
  if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return Errorf(ErrorCode::kNotFound, "no file \"{}\" in session {}", name, session_id);
  }
  return OperatorDownload{path, "", static_cast<int64_t>(st.st_size)};
}

Result<int64_t> LocalBlobStore::UsedBytes(const std::string& session_id) {
  AIRLOCK_ASSIGN_OR_RETURN(auto files, List(session_id));
  int64_t total = 0;
  for (const auto& f : files) total += f.size;
  return total;
}

namespace {

// The id names a directory under the root: nothing that could climb out of it.
Status ValidateSessionDir(const std::string& session_id) {
  if (session_id.empty() || session_id.find_first_of("/\\") != std::string::npos ||
      session_id.front() == '.') {
    return Errorf(ErrorCode::kInvalidArgument, "not a session id: \"{}\"",
                  session_id.substr(0, 64));
  }
  return Ok();
}

}  // namespace

Result<std::string> LocalBlobStore::SpoolDir(const std::string& session_id) {
  AIRLOCK_TRY(ValidateSessionDir(session_id));
  std::string dir = SessionDir(session_id);
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Errorf(ErrorCode::kInternal, "create {}: {}", dir, std::strerror(errno));
  }
  return dir;
}

// On disk first, then renamed over the name, then the directory's entry on disk: nothing
// partial ever shows under a name.
Status LocalBlobStore::Put(const std::string& session_id, const std::string& name,
                           const std::string& spool, int64_t) {
  auto fail = [&spool](std::string_view what) {
    Error e{ErrorCode::kInternal, fmt::format("{}: {}", what, std::strerror(errno))};
    ::unlink(spool.c_str());
    return std::unexpected(std::move(e));
  };
  if (auto valid = ValidateSessionDir(session_id); !valid) {
    ::unlink(spool.c_str());
    return valid;
  }
  if (auto valid = ValidateFileName(name); !valid) {
    ::unlink(spool.c_str());
    return valid;
  }
  int fd = ::open(spool.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return fail("open");
  const bool synced = ::fsync(fd) == 0;
  ::close(fd);
  if (!synced) return fail("fsync");
  if (::rename(spool.c_str(), PathOf(session_id, name).c_str()) != 0) return fail("rename");
  int dfd = ::open(SessionDir(session_id).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return Ok();
}

Status LocalBlobStore::CopyTo(const std::string& session_id, const std::string& name,
                              const std::string& dest) {
  AIRLOCK_TRY(ValidateSessionDir(session_id));
  AIRLOCK_ASSIGN_OR_RETURN(OperatorDownload file, Download(session_id, name, 1));
  std::error_code ec;
  if (!fs::copy_file(file.path, dest, ec)) {
    return Errorf(ErrorCode::kInternal, "copy {}: {}", name, ec.message());
  }
  return Ok();
}

Result<DeletedFiles> LocalBlobStore::DeleteSession(const std::string& session_id) {
  AIRLOCK_TRY(ValidateSessionDir(session_id));
  DeletedFiles out;
  const std::string dir = SessionDir(session_id);
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    if (errno == ENOENT) return out;
    return Errorf(ErrorCode::kInternal, "open files of {}: {}", session_id, std::strerror(errno));
  }
  std::string failed;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    struct stat st {};
    if (::fstatat(::dirfd(d), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    // Only the control plane writes here (regular files); anything else is removed as an entry.
    if (::unlinkat(::dirfd(d), name.c_str(), S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0) != 0) {
      if (failed.empty()) failed = fmt::format("{}: {}", name, std::strerror(errno));
      continue;
    }
    if (S_ISREG(st.st_mode) && name.front() != '.') {
      ++out.files;
      out.bytes += static_cast<int64_t>(st.st_size);
    }
  }
  ::closedir(d);
  if (!failed.empty() || (::rmdir(dir.c_str()) != 0 && errno != ENOENT)) {
    return Errorf(ErrorCode::kInternal, "delete files of {}: {}", session_id,
                  failed.empty() ? std::string(std::strerror(errno)) : failed);
  }
  return out;
}

void LocalBlobStore::SweepPartialUploads() {
  std::error_code ec;
  for (const auto& session : fs::directory_iterator(o_.root, ec)) {
    std::error_code ec2;
    for (const auto& f : fs::directory_iterator(session.path(), ec2)) {
      if (f.path().filename().string().starts_with(".upload-")) fs::remove(f.path(), ec2);
    }
  }
}

}  // namespace airlock::files
