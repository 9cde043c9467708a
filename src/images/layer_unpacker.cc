#include "images/layer_unpacker.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <memory>
#include <string_view>
#include <unordered_set>

#include <fmt/format.h>

#include "images/fs_util.h"

namespace airlock::images {

namespace {

constexpr std::string_view kWhiteoutPrefix = ".wh.";
constexpr std::string_view kOpaqueMarker = ".wh..wh..opq";
constexpr size_t kMaxSymlinkTarget = 4096;

struct ReadArchiveDeleter {
  void operator()(archive* a) const { archive_read_free(a); }
};
struct WriteArchiveDeleter {
  void operator()(archive* a) const { archive_write_free(a); }
};
using ReadArchive = std::unique_ptr<archive, ReadArchiveDeleter>;
using WriteArchive = std::unique_ptr<archive, WriteArchiveDeleter>;

std::string ArchiveError(archive* a) {
  const char* s = archive_error_string(a);
  return s != nullptr ? s : "unknown libarchive error";
}

// An entry name for a message: bounded, control characters replaced.
std::string Shown(std::string_view name) {
  std::string out(name.substr(0, 300));
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      c = '?';
    }
  }
  if (name.size() > 300) {
    out += "...";
  }
  return out;
}

std::string Join(std::string_view dir, std::string_view name) {
  return dir.empty() ? std::string(name) : fmt::format("{}/{}", dir, name);
}

std::pair<std::string_view, std::string_view> SplitParent(std::string_view clean) {
  size_t slash = clean.rfind('/');
  if (slash == std::string_view::npos) {
    return {std::string_view(), clean};
  }
  return {clean.substr(0, slash), clean.substr(slash + 1)};
}

// Names of a directory's entries, "." and ".." left out.
Result<std::vector<std::string>> ListDir(int dirfd) {
  int dup_fd = ::fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
  DIR* dir = dup_fd >= 0 ? ::fdopendir(dup_fd) : nullptr;
  if (dir == nullptr) {
    int err = errno;
    if (dup_fd >= 0) {
      ::close(dup_fd);
    }
    return Errorf(ErrorCode::kInternal, "opendir: {}", ErrnoText(err));
  }
  std::vector<std::string> names;
  while (struct dirent* e = ::readdir(dir)) {
    std::string_view name = e->d_name;
    if (name != "." && name != "..") {
      names.emplace_back(name);
    }
  }
  ::closedir(dir);
  return names;
}

class Unpacker {
 public:
  Unpacker(int root, const UnpackLimits& limits)
      : root_(root), limits_(limits), as_root_(::geteuid() == 0) {}

  Status ApplyLayer(const LayerInput& layer);
  const UnpackStats& stats() const { return stats_; }

 private:
  Status ApplyEntry(archive* in, archive_entry* entry, const std::string& layer);
  Status ApplyWhiteout(const std::string& parent, std::string_view marker, const std::string& layer,
                       const std::string& entry_name);
  Status RemoveLowerContent(int dirfd, const std::string& rel, size_t depth);
  Status WriteEntry(archive* in, archive_entry* entry, const std::string& clean,
                    const std::string& layer);
  void RecordWritten(const std::string& clean);
  bool WrittenByThisLayer(const std::string& clean) const {
    return layer_paths_.contains(clean) || layer_parents_.contains(clean);
  }
  Status Refuse(const std::string& layer, std::string_view entry, std::string_view why) const {
    return Errorf(ErrorCode::kInvalidArgument, "refusing the image: layer {}: entry \"{}\": {}",
                  layer, Shown(entry), why);
  }

  int root_;
  UnpackLimits limits_;
  bool as_root_;
  UnpackStats stats_;
  // What the current layer has written, and the directories above those: a whiteout or an
  // opaque marker hides the layers below, never the entries of its own layer.
  std::unordered_set<std::string> layer_paths_;
  std::unordered_set<std::string> layer_parents_;
};

Status Unpacker::ApplyLayer(const LayerInput& layer) {
  layer_paths_.clear();
  layer_parents_.clear();
  ReadArchive in(archive_read_new());
  if (!in) {
    return MakeError(ErrorCode::kInternal, "archive_read_new failed");
  }
  // Layers are tar, compressed or not; other archive formats are not enabled, which keeps
  // the parsers a hostile layer can reach to the one it needs.
  archive_read_support_filter_all(in.get());
  archive_read_support_format_tar(in.get());
  archive_read_support_format_gnutar(in.get());
  archive_read_support_format_empty(in.get());
  if (archive_read_open_fd(in.get(), layer.fd, 64 * 1024) != ARCHIVE_OK) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "refusing the image: layer {} is not a tar archive: {}", layer.name,
                  ArchiveError(in.get()));
  }
  for (;;) {
    archive_entry* entry = nullptr;
    int r = archive_read_next_header(in.get(), &entry);
    if (r == ARCHIVE_EOF) {
      break;
    }
    if (r < ARCHIVE_WARN) {
      return Errorf(ErrorCode::kInvalidArgument, "refusing the image: layer {} is corrupt: {}",
                    layer.name, ArchiveError(in.get()));
    }
    if (++stats_.entries > limits_.max_entries) {
      return Errorf(ErrorCode::kResourceExhausted,
                    "refusing the image: more than {} entries (layer {}); the limit is "
                    "configurable",
                    limits_.max_entries, layer.name);
    }
    AIRLOCK_TRY(ApplyEntry(in.get(), entry, layer.name));
  }
  return Ok();
}

Status Unpacker::ApplyEntry(archive* in, archive_entry* entry, const std::string& layer) {
  const char* raw = archive_entry_pathname(entry);
  if (raw == nullptr) {
    return Refuse(layer, "?", "the name cannot be read");
  }
  std::string_view name = raw;
  auto clean = CleanRelativePath(name, kMaxEntryPath);
  if (!clean) {
    return Refuse(layer, name, clean.error().message);
  }
  if (clean->empty()) {
    return Ok();  // "./": the root itself, which stays as the store made it.
  }
  if (SplitPath(*clean).size() > kMaxEntryDepth) {
    return Refuse(layer, name, fmt::format("nested deeper than {} levels", kMaxEntryDepth));
  }
  auto [parent_view, base_view] = SplitParent(*clean);
  std::string parent(parent_view);
  if (base_view.starts_with(kWhiteoutPrefix)) {
    ++stats_.whiteouts;
    return ApplyWhiteout(parent, base_view, layer, std::string(name));
  }
  return WriteEntry(in, entry, *clean, layer);
}

Status Unpacker::ApplyWhiteout(const std::string& parent, std::string_view marker,
                               const std::string& layer, const std::string& entry_name) {
  auto dir = OpenDirBeneath(root_, parent, /*create=*/false);
  if (!dir) {
    if (dir.error().code == ErrorCode::kNotFound) {
      return Ok();  // Nothing below to hide.
    }
    return Refuse(layer, entry_name, dir.error().message);
  }
  if (marker == kOpaqueMarker) {
    return RemoveLowerContent(dir->get(), parent, 0);
  }
  if (marker.starts_with(".wh..wh.")) {
    return Ok();  // aufs bookkeeping (.wh..wh.plnk, ...): means nothing here.
  }
  std::string victim(marker.substr(kWhiteoutPrefix.size()));
  if (victim.empty() || victim == "." || victim == "..") {
    return Refuse(layer, entry_name, "a whiteout must name an entry");
  }
  std::string victim_path = Join(parent, victim);
  if (WrittenByThisLayer(victim_path)) {
    // The same layer also has the path: only what lies below it is hidden.
    struct stat st {};
    if (::fstatat(dir->get(), victim.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        S_ISDIR(st.st_mode)) {
      UniqueFd sub(
          ::openat(dir->get(), victim.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (sub.valid()) {
        return RemoveLowerContent(sub.get(), victim_path, 0);
      }
    }
    return Ok();
  }
  return RemoveTreeAt(dir->get(), victim);
}

Status Unpacker::RemoveLowerContent(int dirfd, const std::string& rel, size_t depth) {
  if (depth > kMaxEntryDepth) {
    return Errorf(ErrorCode::kInternal, "directory {} nested too deep", Shown(rel));
  }
  AIRLOCK_ASSIGN_OR_RETURN(std::vector<std::string> children, ListDir(dirfd));
  for (const std::string& child : children) {
    std::string child_rel = Join(rel, child);
    if (!WrittenByThisLayer(child_rel)) {
      AIRLOCK_TRY(RemoveTreeAt(dirfd, child));
      continue;
    }
    UniqueFd sub(::openat(dirfd, child.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (sub.valid()) {
      AIRLOCK_TRY(RemoveLowerContent(sub.get(), child_rel, depth + 1));
    }
  }
  return Ok();
}

void Unpacker::RecordWritten(const std::string& clean) {
  layer_paths_.insert(clean);
  for (size_t slash = clean.find('/'); slash != std::string::npos;
       slash = clean.find('/', slash + 1)) {
    layer_parents_.insert(clean.substr(0, slash));
  }
}

Status Unpacker::WriteEntry(archive* in, archive_entry* entry, const std::string& clean,
                            const std::string& layer) {
  const std::string name = archive_entry_pathname(entry);
  auto [parent_view, base_view] = SplitParent(clean);
  const std::string parent(parent_view);
  const std::string base(base_view);

  mode_t type = archive_entry_filetype(entry);
  const char* hardlink = archive_entry_hardlink(entry);
  if (hardlink == nullptr && type != AE_IFREG && type != AE_IFDIR && type != AE_IFLNK) {
    // Device nodes, FIFOs, sockets: a sandbox gets its /dev from the runtime, and a device
    // node in an image would be a way to reach the host's devices.
    ++stats_.skipped_special;
    return Ok();
  }

  if (hardlink != nullptr) {
    auto target = CleanRelativePath(hardlink, kMaxEntryPath);
    if (!target || target->empty()) {
      return Refuse(layer, name,
                    fmt::format("hard link to \"{}\": {}", Shown(hardlink),
                                target ? "the root directory" : target.error().message));
    }
    if (*target == clean) {
      return Refuse(layer, name, "hard link to itself");
    }
    auto [tparent, tbase] = SplitParent(*target);
    auto tdir = OpenDirBeneath(root_, tparent, /*create=*/false);
    if (!tdir) {
      return Refuse(layer, name,
                    fmt::format("hard link to \"{}\": {}", Shown(*target), tdir.error().message));
    }
    struct stat st {};
    std::string tname(tbase);
    if (::fstatat(tdir->get(), tname.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      return Refuse(layer, name,
                    fmt::format("hard link to \"{}\", which is not in the image", Shown(*target)));
    }
    if (S_ISDIR(st.st_mode)) {
      return Refuse(layer, name,
                    fmt::format("hard link to \"{}\", which is a directory", Shown(*target)));
    }
    archive_entry_set_hardlink(entry, target->c_str());
  } else if (type == AE_IFLNK) {
    const char* link = archive_entry_symlink(entry);
    if (link == nullptr || *link == '\0' || std::string_view(link).size() > kMaxSymlinkTarget) {
      return Refuse(layer, name, "a symlink without a usable target");
    }
  }

  // The directory the entry goes into must be reachable without a symlink: this is the
  // check that keeps "layer 1: evil -> /etc, layer 2: evil/passwd" inside the tree.
  auto dir = OpenDirBeneath(root_, parent, /*create=*/true);
  if (!dir) {
    return Refuse(layer, name, fmt::format("its directory is unusable: {}", dir.error().message));
  }
  // Whatever the layers below left at this path goes, unless a directory meets a directory
  // (their contents merge). Removing it here, through the directory descriptor, means the
  // extractor never opens an existing symlink or writes into an existing hard link.
  struct stat st {};
  if (::fstatat(dir->get(), base.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
    bool merge = S_ISDIR(st.st_mode) && type == AE_IFDIR && hardlink == nullptr;
    if (!merge) {
      AIRLOCK_TRY(RemoveTreeAt(dir->get(), base));
    }
  }

  // Also for hard links: one that carries data makes the extractor apply its mode to the
  // target.
  bool is_dir = type == AE_IFDIR && hardlink == nullptr;
  mode_t perm = archive_entry_perm(entry);
  mode_t keep = is_dir ? 01777 : 0777;
  if ((perm & 07777 & ~keep) != 0) {
    ++stats_.stripped_modes;
  }
  perm &= keep;
  if (is_dir && !as_root_) {
    perm |= 0700;
  }
  archive_entry_set_perm(entry, perm);
  archive_entry_xattr_clear(entry);
  archive_entry_acl_clear(entry);
  archive_entry_set_fflags(entry, 0, 0);
  archive_entry_set_pathname(entry, clean.c_str());

  int64_t size = (type == AE_IFREG || hardlink != nullptr) && archive_entry_size_is_set(entry)
                     ? archive_entry_size(entry)
                     : 0;
  if (size < 0 || static_cast<uint64_t>(size) > limits_.max_bytes - stats_.bytes) {
    return Errorf(ErrorCode::kResourceExhausted,
                  "refusing the image: more than {} bytes unpacked (layer {}, entry \"{}\"); the "
                  "limit is configurable",
                  limits_.max_bytes, layer, Shown(name));
  }
  stats_.bytes += static_cast<uint64_t>(size);

  // A writer per entry: libarchive defers some directory metadata to the writer's close, and
  // a deferred change must not land after a later entry has swapped a path component for a
  // symlink. The paths are relative to this thread's private working directory, the root.
  int flags = ARCHIVE_EXTRACT_SECURE_SYMLINKS | ARCHIVE_EXTRACT_SECURE_NODOTDOT |
              ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS | ARCHIVE_EXTRACT_UNLINK |
              ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME;
  if (as_root_) {
    flags |= ARCHIVE_EXTRACT_OWNER;
  }
  WriteArchive out(archive_write_disk_new());
  if (!out) {
    return MakeError(ErrorCode::kInternal, "archive_write_disk_new failed");
  }
  archive_write_disk_set_options(out.get(), flags);
  if (archive_write_header(out.get(), entry) < ARCHIVE_WARN) {
    return Refuse(layer, name, ArchiveError(out.get()));
  }
  if (size > 0) {
    const void* buf = nullptr;
    size_t len = 0;
    la_int64_t offset = 0;
    int r;
    while ((r = archive_read_data_block(in, &buf, &len, &offset)) == ARCHIVE_OK) {
      if (offset < 0 || static_cast<uint64_t>(offset) + len > static_cast<uint64_t>(size)) {
        return Refuse(layer, name, "data beyond the entry's size");
      }
      if (archive_write_data_block(out.get(), buf, len, offset) < ARCHIVE_OK) {
        return Errorf(ErrorCode::kInternal, "layer {}: writing \"{}\": {}", layer, Shown(name),
                      ArchiveError(out.get()));
      }
    }
    if (r != ARCHIVE_EOF) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "refusing the image: layer {} is corrupt at \"{}\": {}", layer, Shown(name),
                    ArchiveError(in));
    }
  }
  if (archive_write_finish_entry(out.get()) < ARCHIVE_WARN) {
    return Errorf(ErrorCode::kInternal, "layer {}: finishing \"{}\": {}", layer, Shown(name),
                  ArchiveError(out.get()));
  }
  if (archive_write_close(out.get()) < ARCHIVE_WARN) {
    return Errorf(ErrorCode::kInternal, "layer {}: finishing \"{}\": {}", layer, Shown(name),
                  ArchiveError(out.get()));
  }
  RecordWritten(clean);
  return Ok();
}

}  // namespace

Result<UnpackStats> UnpackLayers(int rootfs_fd, const std::vector<LayerInput>& layers,
                                 const UnpackLimits& limits,
                                 const LayerDoneCallback& on_layer_done) {
  Unpacker unpacker(rootfs_fd, limits);
  AIRLOCK_TRY(RunInPrivateCwd(rootfs_fd, [&]() -> Status {
    for (size_t i = 0; i < layers.size(); ++i) {
      AIRLOCK_TRY(unpacker.ApplyLayer(layers[i]));
      if (on_layer_done) {
        on_layer_done(i, layers.size(), unpacker.stats());
      }
    }
    return Ok();
  }));
  return unpacker.stats();
}

}  // namespace airlock::images
