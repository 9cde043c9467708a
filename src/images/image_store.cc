#include "images/image_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include <fmt/format.h>

#include "common/json_util.h"
#include "common/log.h"
#include "common/time_util.h"
#include "images/fs_util.h"
#include "images/image_layout.h"
#include "images/image_name.h"
#include "images/layer_unpacker.h"
#include "images/rootfs_skeleton.h"

namespace airlock::images {

namespace {

constexpr uint64_t kMaxRefsBytes = 64 << 20;
constexpr uint64_t kMaxMetaBytes = 16 << 20;
constexpr const char* kHostName = "host";
constexpr const char* kDefaultPath =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// The built-in images: made by the build (images/), found in the built-in directory, and
// imported from there on first use.
struct Builtin {
  const char* name;  // as NormalizeImageName writes it
  const char* short_name;
  const char* tar;     // in the built-in directory
  const char* marker;  // in the store: the stamp of the tar last imported
  const char* target;  // the build target that makes it
};
constexpr Builtin kBuiltins[] = {
    {"base:latest", "base", "base.tar", "builtin-base.stamp", "the base_image target"},
    {"browser:latest", "browser", "browser.tar", "builtin-browser.stamp",
     "the browser_image target, which needs Debian's chromium"},
};

const Builtin* FindBuiltin(std::string_view normalized) {
  for (const auto& b : kBuiltins) {
    if (normalized == b.name) return &b;
  }
  return nullptr;
}

// "size:mtime" of the built-in base.tar, "" when there is none.
std::string BuiltinStamp(const std::string& tar) {
  struct stat st {};
  if (tar.empty() || ::stat(tar.c_str(), &st) != 0) return {};
  return fmt::format("{}:{}.{}", st.st_size, st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
}

bool IsHostName(std::string_view name) { return name == "host" || name == "host:latest"; }

bool PathExists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

// A directory under <root>/tmp owned by this process for as long as the object lives: it
// holds a flock on the directory (so Open's clean-up of a crashed process's left-overs
// passes it by) and removes the directory when destroyed, unless it was moved into place.
class TempDir {
 public:
  // Creates <root>/tmp/<prefix>-<random>. The caller holds the store lock, so that a
  // concurrent clean-up cannot see the directory before it is locked.
  static Result<TempDir> Create(const std::string& root, std::string_view prefix) {
    std::string path = fmt::format("{}/tmp/{}-{}", root, prefix, RandomName());
    if (::mkdir(path.c_str(), 0700) != 0) {
      return Errorf(ErrorCode::kInternal, "mkdir {}: {}", path, ErrnoText(errno));
    }
    return Adopt(std::move(path));
  }

  // Takes ownership of an existing directory under <root>/tmp (the caller holds the lock).
  static Result<TempDir> Adopt(std::string path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd.valid()) {
      return Errorf(ErrorCode::kInternal, "open {}: {}", path, ErrnoText(errno));
    }
    AIRLOCK_ASSIGN_OR_RETURN(FileLock lock, FileLock::Lock(std::move(fd), /*wait=*/false));
    return TempDir(std::move(path), std::move(lock));
  }

  TempDir(TempDir&& other) noexcept
      : path_(std::exchange(other.path_, std::string())), lock_(std::move(other.lock_)) {}
  TempDir& operator=(TempDir&&) = delete;
  TempDir(const TempDir&) = delete;
  ~TempDir() {
    if (!path_.empty()) {
      if (auto removed = RemoveTree(path_); !removed) {
        log::Warn("image store: cannot remove a temporary directory",
                  {{"path", path_}, {"error", removed.error().message}});
      }
    }
  }

  const std::string& path() const { return path_; }

  // Renames the whole directory to `dest`; it is no longer removed on destruction.
  Status MoveTo(const std::string& dest) {
    if (::rename(path_.c_str(), dest.c_str()) != 0) {
      return Errorf(ErrorCode::kInternal, "rename {} to {}: {}", path_, dest, ErrnoText(errno));
    }
    path_.clear();
    return Ok();
  }

 private:
  TempDir(std::string path, FileLock lock) : path_(std::move(path)), lock_(std::move(lock)) {}
  std::string path_;
  std::optional<FileLock> lock_;
};

Result<FileLock> LockStore(const std::string& root) { return FileLock::Acquire(root + "/lock"); }

// ------------------------------------------------------------------ references

struct Ref {
  std::string digest;
  int64_t imported_at_ms = 0;
};
using Refs = std::map<std::string, Ref>;

Result<Refs> ReadRefs(const std::string& root) {
  Refs refs;
  std::string path = root + "/refs.json";
  auto text = ReadFileBounded(path, kMaxRefsBytes);
  if (!text) {
    if (text.error().code == ErrorCode::kNotFound) {
      return refs;
    }
    return std::unexpected(text.error());
  }
  auto j = ParseJsonObject(*text);
  if (!j || !j->contains("refs") || !(*j)["refs"].is_object()) {
    return Errorf(ErrorCode::kInternal, "{} is corrupt", path);
  }
  for (const auto& [name, v] : (*j)["refs"].items()) {
    if (!v.is_object() || !v.contains("digest") || !v["digest"].is_string()) {
      return Errorf(ErrorCode::kInternal, "{} is corrupt at \"{}\"", path, name);
    }
    std::string digest = v["digest"].get<std::string>();
    if (!digest.starts_with("sha256:") || digest.size() != 71 ||
        digest.find_first_not_of("0123456789abcdef", 7) != std::string::npos) {
      return Errorf(ErrorCode::kInternal, "{} has a malformed digest for \"{}\"", path, name);
    }
    refs[name] = Ref{digest, v.value("imported_at", int64_t{0})};
  }
  return refs;
}

Status WriteRefs(const std::string& root, const Refs& refs) {
  Json j = {{"version", 1}, {"refs", Json::object()}};
  for (const auto& [name, ref] : refs) {
    j["refs"][name] = {{"digest", ref.digest}, {"imported_at", ref.imported_at_ms}};
  }
  return WriteFileAtomic(root + "/refs.json", j.dump(2) + "\n");
}

std::string HexOf(const std::string& digest) { return digest.substr(7); }
std::string ImageDir(const std::string& root, const std::string& digest) {
  return fmt::format("{}/sha256/{}", root, HexOf(digest));
}

// ------------------------------------------------------------------ per-image metadata

struct ImageMeta {
  std::string digest;
  std::string config_digest;
  std::string format;
  size_t layers = 0;
  uint64_t size_bytes = 0;
  uint64_t entries = 0;
  ImageConfig config;
};

Json MetaToJson(const ImageMeta& m) {
  return {{"schema", 1},
          {"digest", m.digest},
          {"config_digest", m.config_digest},
          {"format", m.format},
          {"layers", m.layers},
          {"size_bytes", m.size_bytes},
          {"entries", m.entries},
          {"entrypoint", m.config.entrypoint},
          {"cmd", m.config.cmd},
          {"env", m.config.env},
          {"working_dir", m.config.working_dir},
          {"user", m.config.user}};
}

Result<ImageMeta> ReadMeta(const std::string& image_dir) {
  std::string path = image_dir + "/config.json";
  AIRLOCK_ASSIGN_OR_RETURN(std::string text, ReadFileBounded(path, kMaxMetaBytes));
  auto j = ParseJsonObject(text);
  if (!j) {
    return Errorf(ErrorCode::kInternal, "{} is corrupt: {}", path, j.error().message);
  }
  auto strings = [&](const char* key) {
    std::vector<std::string> out;
    if (auto it = j->find(key); it != j->end() && it->is_array()) {
      for (const Json& v : *it) {
        if (v.is_string()) {
          out.push_back(v.get<std::string>());
        }
      }
    }
    return out;
  };
  ImageMeta m;
  m.digest = j->value("digest", std::string());
  m.config_digest = j->value("config_digest", std::string());
  m.format = j->value("format", std::string());
  m.layers = j->value("layers", size_t{0});
  m.size_bytes = j->value("size_bytes", uint64_t{0});
  m.entries = j->value("entries", uint64_t{0});
  m.config.entrypoint = strings("entrypoint");
  m.config.cmd = strings("cmd");
  m.config.env = strings("env");
  m.config.working_dir = j->value("working_dir", std::string());
  m.config.user = j->value("user", std::string());
  return m;
}

// ------------------------------------------------------------------ clean-up

Result<std::vector<std::string>> ListNames(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    if (errno == ENOENT) {
      return names;
    }
    return Errorf(ErrorCode::kInternal, "opendir {}: {}", dir, ErrnoText(errno));
  }
  while (struct dirent* e = ::readdir(d)) {
    std::string_view n = e->d_name;
    if (n != "." && n != "..") {
      names.emplace_back(n);
    }
  }
  ::closedir(d);
  return names;
}

// Moves every tree no name points at into tmp/, owned by the returned objects, which remove
// them when destroyed (after the caller has let go of the store lock). Caller holds the lock.
Result<std::vector<TempDir>> DetachUnreferenced(const std::string& root, const Refs& refs) {
  std::set<std::string> live;
  for (const auto& [name, ref] : refs) {
    live.insert(HexOf(ref.digest));
  }
  std::vector<TempDir> garbage;
  AIRLOCK_ASSIGN_OR_RETURN(std::vector<std::string> trees, ListNames(root + "/sha256"));
  for (const std::string& hex : trees) {
    if (live.contains(hex)) {
      continue;
    }
    std::string dest = fmt::format("{}/tmp/gc-{}", root, RandomName());
    if (::rename(fmt::format("{}/sha256/{}", root, hex).c_str(), dest.c_str()) != 0) {
      return Errorf(ErrorCode::kInternal, "moving the unused image {} away: {}", hex,
                    ErrnoText(errno));
    }
    AIRLOCK_ASSIGN_OR_RETURN(TempDir dir, TempDir::Adopt(dest));
    garbage.push_back(std::move(dir));
  }
  return garbage;
}

// Removes what crashed processes left in tmp/: whatever nobody holds a lock on. Caller holds
// the store lock.
Status RemoveStaleTemps(const std::string& root) {
  std::string tmp = root + "/tmp";
  AIRLOCK_ASSIGN_OR_RETURN(std::vector<std::string> names, ListNames(tmp));
  for (const std::string& name : names) {
    std::string path = fmt::format("{}/{}", tmp, name);
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (fd.valid()) {
      auto lock = FileLock::Lock(std::move(fd), /*wait=*/false);
      if (!lock) {
        continue;  // In use.
      }
    }
    if (auto removed = RemoveTree(path); !removed) {
      log::Warn("image store: cannot remove a left-over temporary directory",
                {{"path", path}, {"error", removed.error().message}});
    } else {
      log::Info("image store: removed a left-over of an interrupted import", {{"path", path}});
    }
  }
  return Ok();
}

ImageInfo MakeInfo(const std::string& name, const Ref& ref, const ImageMeta& meta) {
  ImageInfo info;
  info.name = name;
  info.digest = ref.digest;
  info.format = meta.format;
  info.layers = meta.layers;
  info.size_bytes = meta.size_bytes;
  info.entries = meta.entries;
  info.imported_at_ms = ref.imported_at_ms;
  return info;
}

// What SetRef did: the new reference, the image it names, and the trees left without a name
// (moved into tmp/; they are removed when `garbage` is destroyed, after the lock is let go).
struct Named {
  Ref ref;
  ImageMeta meta;
  std::vector<TempDir> garbage;
};

// Gives `name` to the unpacked tree `digest`. Caller holds the lock. kNotFound if the tree
// is not there (removed meanwhile).
Result<Named> SetRef(const std::string& root, const std::string& name, const std::string& digest) {
  auto meta = ReadMeta(ImageDir(root, digest));
  if (!meta) {
    return Errorf(ErrorCode::kNotFound, "image {} is not unpacked: {}", digest,
                  meta.error().message);
  }
  AIRLOCK_ASSIGN_OR_RETURN(Refs refs, ReadRefs(root));
  Ref ref{digest, NowMillis()};
  refs[name] = ref;
  AIRLOCK_TRY(WriteRefs(root, refs));
  AIRLOCK_ASSIGN_OR_RETURN(std::vector<TempDir> garbage, DetachUnreferenced(root, refs));
  return Named{std::move(ref), std::move(*meta), std::move(garbage)};
}

void Report(const ImageStoreOptions& o, const ImportProgress& p) {
  if (o.on_progress) {
    o.on_progress(p);
  }
}

LayoutLimits LayoutLimitsOf(const ImageStoreOptions& o) {
  return LayoutLimits{o.max_json_bytes, o.max_archive_bytes, o.max_entries};
}

// The directory an import works in: the staged archive and the tree being unpacked. Made
// under the store lock (see TempDir::Create).
Result<TempDir> NewWorkDir(const std::string& root) {
  AIRLOCK_ASSIGN_OR_RETURN(FileLock lock, LockStore(root));
  return TempDir::Create(root, "import");
}

// A layout directory is read in place; an archive is staged into `work` first.
Result<ImageLayout> OpenLayout(const std::string& path, const TempDir& work,
                               const ImageStoreOptions& o) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return Errorf(errno == ENOENT ? ErrorCode::kNotFound : ErrorCode::kInvalidArgument,
                  "cannot read {}: {}", path, ErrnoText(errno));
  }
  if (S_ISDIR(st.st_mode)) {
    return ImageLayout(path, {});
  }
  if (!S_ISREG(st.st_mode)) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "{} is neither an image layout directory nor an archive", path);
  }
  Report(o, {ImportProgress::Stage::kStaging});
  std::string staged = work.path() + "/src";
  AIRLOCK_TRY(MakeDirs(staged, 0700));
  return StageArchive(path, staged, LayoutLimitsOf(o));
}

Result<std::string> ChooseName(const std::string& path, const std::optional<std::string>& wanted,
                               const SourceImage& source) {
  std::string name;
  if (wanted) {
    name = *wanted;
  } else if (source.name) {
    name = *source.name;
  } else {
    return Errorf(ErrorCode::kInvalidArgument,
                  "{} does not name its image{}; give a name (NAME:TAG)", path,
                  source.name_problem.empty() ? "" : " usably (" + source.name_problem + ")");
  }
  if (ImageRepository(name) == kHostName) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "\"host\" is the built-in host image; give the import another name");
  }
  return name;
}

// An image already unpacked only gets the new name. nullopt when it is not there (or was
// removed between the look and the lock).
Result<std::optional<ImageInfo>> ReuseIfUnpacked(const ImageStoreOptions& o,
                                                 const std::string& name,
                                                 const SourceImage& source) {
  if (!PathExists(ImageDir(o.root, source.digest) + "/config.json")) {
    return std::optional<ImageInfo>();
  }
  std::optional<Named> named;
  {
    AIRLOCK_ASSIGN_OR_RETURN(FileLock lock, LockStore(o.root));
    auto set = SetRef(o.root, name, source.digest);
    if (!set) {
      if (set.error().code == ErrorCode::kNotFound) {
        return std::optional<ImageInfo>();
      }
      return std::unexpected(set.error());
    }
    named.emplace(std::move(*set));
  }
  ImportProgress p{ImportProgress::Stage::kReused, 0, source.layers.size()};
  p.digest = source.digest;
  Report(o, p);
  ImageInfo info = MakeInfo(name, named->ref, named->meta);
  info.reused = true;
  return std::optional<ImageInfo>(std::move(info));
}

// Verifies every layer, then unpacks them all into `dir`/rootfs, adds the mount points and
// writes `dir`/config.json.
Result<ImageMeta> Unpack(const std::string& dir, const ImageLayout& layout,
                         const SourceImage& source, const ImageStoreOptions& o) {
  ImportProgress progress;
  progress.digest = source.digest;
  progress.layers = source.layers.size();
  std::vector<UniqueFd> fds;
  std::vector<LayerInput> inputs;
  for (size_t i = 0; i < source.layers.size(); ++i) {
    progress.stage = ImportProgress::Stage::kVerifying;
    progress.layer = i;
    Report(o, progress);
    AIRLOCK_ASSIGN_OR_RETURN(UniqueFd fd, OpenVerifiedBlob(layout, source.layers[i]));
    inputs.push_back(LayerInput{source.layers[i].digest, fd.get()});
    fds.push_back(std::move(fd));
  }

  std::string rootfs = dir + "/rootfs";
  AIRLOCK_TRY(MakeDirs(rootfs, 0755));
  UniqueFd rootfs_fd(::open(rootfs.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!rootfs_fd.valid()) {
    return Errorf(ErrorCode::kInternal, "open {}: {}", rootfs, ErrnoText(errno));
  }
  auto on_layer = [&](size_t index, size_t count, const UnpackStats& totals) {
    ImportProgress p = progress;
    p.stage = ImportProgress::Stage::kLayerDone;
    p.layer = index;
    p.layers = count;
    p.bytes = totals.bytes;
    p.entries = totals.entries;
    Report(o, p);
  };
  AIRLOCK_ASSIGN_OR_RETURN(
      UnpackStats stats,
      UnpackLayers(rootfs_fd.get(), inputs, {o.max_unpacked_bytes, o.max_entries}, on_layer));
  AIRLOCK_TRY(EnsureMountPoints(rootfs_fd.get(), o.mount_points));
  if (::fchmod(rootfs_fd.get(), 0755) != 0 || ::chmod(dir.c_str(), 0755) != 0) {
    return Errorf(ErrorCode::kInternal, "chmod {}: {}", dir, ErrnoText(errno));
  }
  if (stats.skipped_special > 0 || stats.stripped_modes > 0) {
    log::Warn("image import: neutralised entries",
              {{"digest", source.digest},
               {"skipped_device_fifo_socket", stats.skipped_special},
               {"stripped_setuid_setgid_sticky", stats.stripped_modes}});
  }
  ImageMeta meta{source.digest, source.config_digest, source.format, source.layers.size(),
                 stats.bytes,   stats.entries,        source.config};
  AIRLOCK_TRY(WriteFileAtomic(dir + "/config.json", MetaToJson(meta).dump(2) + "\n"));
  return meta;
}

// Moves the unpacked `dir` into place (unless another import got there first; then `dir`
// is left for the caller to remove) and names it.
Result<ImageInfo> Publish(const std::string& root, const std::string& dir, const std::string& name,
                          const ImageMeta& meta) {
  const std::string image_dir = ImageDir(root, meta.digest);
  std::optional<Named> named;
  bool reused = false;
  {
    AIRLOCK_ASSIGN_OR_RETURN(FileLock lock, LockStore(root));
    if (PathExists(image_dir)) {
      reused = true;
    } else if (::rename(dir.c_str(), image_dir.c_str()) != 0) {
      return Errorf(ErrorCode::kInternal, "rename {} to {}: {}", dir, image_dir, ErrnoText(errno));
    }
    AIRLOCK_ASSIGN_OR_RETURN(Named set, SetRef(root, name, meta.digest));
    named.emplace(std::move(set));
  }
  ImageInfo info = MakeInfo(name, named->ref, named->meta);
  info.reused = reused;
  return info;
}

}  // namespace

std::vector<std::string> DefaultMountPoints() {
  return {"/.airlock", "/proc", "/sys", "/dev", "/tmp", "/run", "/home", "/home/sandbox", "/etc"};
}

Result<ImageStore> ImageStore::Open(ImageStoreOptions options) {
  if (options.root.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "the image store needs a directory");
  }
  AIRLOCK_TRY(ValidateMountPoints(options.mount_points));
  if (options.max_unpacked_bytes == 0 || options.max_entries == 0 ||
      options.max_archive_bytes == 0 || options.max_json_bytes == 0) {
    return MakeError(ErrorCode::kInvalidArgument, "image store limits must be positive");
  }
  AIRLOCK_TRY(MakeDirs(options.root, 0755));
  AIRLOCK_TRY(MakeDirs(options.root + "/sha256", 0755));
  AIRLOCK_TRY(MakeDirs(options.root + "/tmp", 0700));
  {
    AIRLOCK_ASSIGN_OR_RETURN(FileLock lock, LockStore(options.root));
    AIRLOCK_TRY(RemoveStaleTemps(options.root));
  }
  return ImageStore(std::move(options));
}

Result<ImageInfo> ImageStore::Import(const std::string& path,
                                     const std::optional<std::string>& name) {
  std::optional<std::string> wanted;
  if (name) {
    AIRLOCK_ASSIGN_OR_RETURN(wanted, NormalizeImageName(*name));
  }
  if (const Builtin* b = wanted ? FindBuiltin(*wanted) : nullptr;
      b && (options_.builtin_dir.empty() || path != options_.builtin_dir + "/" + b->tar)) {
    // Someone's own base (or browser): the built-in one must not replace it when the build
    // changes.
    ::unlink((options_.root + "/" + b->marker).c_str());
  }
  AIRLOCK_ASSIGN_OR_RETURN(TempDir work, NewWorkDir(options_.root));
  AIRLOCK_ASSIGN_OR_RETURN(ImageLayout layout, OpenLayout(path, work, options_));
  AIRLOCK_ASSIGN_OR_RETURN(SourceImage source,
                           ReadSourceImage(layout, wanted, LayoutLimitsOf(options_)));
  AIRLOCK_ASSIGN_OR_RETURN(std::string final_name, ChooseName(path, wanted, source));
  AIRLOCK_ASSIGN_OR_RETURN(std::optional<ImageInfo> reused,
                           ReuseIfUnpacked(options_, final_name, source));
  if (reused) {
    return *reused;
  }
  std::string unpacked = work.path() + "/image";
  AIRLOCK_ASSIGN_OR_RETURN(ImageMeta meta, Unpack(unpacked, layout, source, options_));
  AIRLOCK_ASSIGN_OR_RETURN(ImageInfo info, Publish(options_.root, unpacked, final_name, meta));
  ImportProgress done{ImportProgress::Stage::kDone,
                      meta.layers,
                      meta.layers,
                      meta.size_bytes,
                      meta.entries,
                      meta.digest};
  Report(options_, done);
  log::Info("image imported", {{"image", final_name},
                               {"digest", meta.digest},
                               {"layers", meta.layers},
                               {"bytes", meta.size_bytes},
                               {"entries", meta.entries}});
  return info;
}

Result<std::vector<ImageInfo>> ImageStore::List() const {
  AIRLOCK_ASSIGN_OR_RETURN(Refs refs, ReadRefs(options_.root));
  std::vector<ImageInfo> out;
  for (const auto& [name, ref] : refs) {
    auto meta = ReadMeta(ImageDir(options_.root, ref.digest));
    if (!meta) {
      continue;  // Removed after refs.json was read.
    }
    out.push_back(MakeInfo(name, ref, *meta));
  }
  return out;
}

Status ImageStore::Remove(std::string_view name) {
  if (IsHostName(name)) {
    return MakeError(ErrorCode::kInvalidArgument, "\"host\" is built in and cannot be removed");
  }
  AIRLOCK_ASSIGN_OR_RETURN(std::string normalized, NormalizeImageName(name));
  std::vector<TempDir> garbage;
  {
    AIRLOCK_ASSIGN_OR_RETURN(FileLock lock, LockStore(options_.root));
    AIRLOCK_ASSIGN_OR_RETURN(Refs refs, ReadRefs(options_.root));
    if (refs.erase(normalized) == 0) {
      return Errorf(ErrorCode::kNotFound, "no image named {}", normalized);
    }
    AIRLOCK_TRY(WriteRefs(options_.root, refs));
    AIRLOCK_ASSIGN_OR_RETURN(garbage, DetachUnreferenced(options_.root, refs));
  }
  return Ok();  // `garbage` removes the detached trees, outside the lock.
}

Result<ResolvedImage> ImageStore::Resolve(std::string_view name) {
  if (IsHostName(name)) {
    return ResolveHost();
  }
  AIRLOCK_ASSIGN_OR_RETURN(std::string normalized, NormalizeImageName(name));
  AIRLOCK_ASSIGN_OR_RETURN(Refs refs, ReadRefs(options_.root));
  auto it = refs.find(normalized);
  if (const Builtin* b = FindBuiltin(normalized)) {
    // A built-in image is imported from the build's tar on first use, and again when that
    // file changed (a rebuilt reference agent), unless someone imported their own.
    std::string tar = options_.builtin_dir.empty() ? "" : options_.builtin_dir + "/" + b->tar;
    std::string stamp = BuiltinStamp(tar);
    std::string marker = options_.root + "/" + b->marker;
    std::string seen = ReadFileBounded(marker, 256).value_or("");
    if (it == refs.end() && stamp.empty()) {
      return Errorf(ErrorCode::kNotFound,
                    "the built-in image {} is not available ({}); build it ({}) or import an "
                    "image as {}",
                    b->short_name,
                    tar.empty() ? "no built-in image directory configured" : tar + " is missing",
                    b->target, b->short_name);
    }
    if (!stamp.empty() && (it == refs.end() || (!seen.empty() && seen != stamp))) {
      AIRLOCK_TRY(Import(tar, std::string(b->name)));
      AIRLOCK_TRY(WriteFileAtomic(marker, stamp, 0644));
      AIRLOCK_ASSIGN_OR_RETURN(refs, ReadRefs(options_.root));
      it = refs.find(normalized);
    }
  }
  if (it == refs.end()) {
    return Errorf(ErrorCode::kNotFound, "no image named {} (import it with `airlock image import`)",
                  normalized);
  }
  std::string dir = ImageDir(options_.root, it->second.digest);
  auto meta = ReadMeta(dir);
  if (!meta) {
    return Errorf(ErrorCode::kNotFound, "image {} was removed meanwhile ({})", normalized,
                  meta.error().message);
  }
  ResolvedImage r;
  r.name = normalized;
  r.digest = it->second.digest;
  r.rootfs = dir + "/rootfs";
  r.entrypoint = meta->config.entrypoint;
  r.cmd = meta->config.cmd;
  r.env = meta->config.env;
  r.workdir = meta->config.working_dir;
  r.user = meta->config.user;
  return r;
}

Result<ResolvedImage> ImageStore::ResolveHost() {
  HostPlan plan = PlanHostImage(options_.mount_points);
  const std::string host_dir = options_.root + "/host";
  auto current = [&] {
    auto text = ReadFileBounded(host_dir + "/fingerprint", 4096);
    return text && *text == plan.fingerprint && PathExists(host_dir + "/rootfs");
  };
  if (!current()) {
    std::optional<TempDir> build;
    {
      AIRLOCK_ASSIGN_OR_RETURN(FileLock lock, LockStore(options_.root));
      AIRLOCK_ASSIGN_OR_RETURN(TempDir dir, TempDir::Create(options_.root, "host"));
      build.emplace(std::move(dir));
    }
    std::string rootfs = build->path() + "/rootfs";
    AIRLOCK_TRY(MakeDirs(rootfs, 0755));
    UniqueFd fd(::open(rootfs.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd.valid()) {
      return Errorf(ErrorCode::kInternal, "open {}: {}", rootfs, ErrnoText(errno));
    }
    AIRLOCK_TRY(BuildHostSkeleton(fd.get(), plan, options_.mount_points));
    AIRLOCK_TRY(WriteFileAtomic(build->path() + "/fingerprint", plan.fingerprint));
    if (::chmod(build->path().c_str(), 0755) != 0) {
      return Errorf(ErrorCode::kInternal, "chmod {}: {}", build->path(), ErrnoText(errno));
    }
    std::optional<TempDir> old;
    {
      AIRLOCK_ASSIGN_OR_RETURN(FileLock lock, LockStore(options_.root));
      if (!current()) {
        if (PathExists(host_dir)) {
          std::string dest = fmt::format("{}/tmp/gc-{}", options_.root, RandomName());
          if (::rename(host_dir.c_str(), dest.c_str()) != 0) {
            return Errorf(ErrorCode::kInternal, "moving the old host image away: {}",
                          ErrnoText(errno));
          }
          AIRLOCK_ASSIGN_OR_RETURN(TempDir gone, TempDir::Adopt(dest));
          old.emplace(std::move(gone));
        }
        AIRLOCK_TRY(build->MoveTo(host_dir));
      }
    }
  }
  ResolvedImage r;
  r.name = kHostName;
  r.rootfs = host_dir + "/rootfs";
  r.cmd = {"/bin/sh"};
  r.env = {kDefaultPath, "HOME=/home/sandbox"};
  r.workdir = "/home/sandbox";
  r.host_binds = plan.host_binds;
  return r;
}

std::string DefaultBuiltinDir() {
  if (const char* env = std::getenv("AIRLOCK_IMAGES_DIR"); env != nullptr && *env != '\0') {
    return env;
  }
  char exe[4096];
  ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) {
    return "";
  }
  std::string dir(exe, static_cast<size_t>(n));
  dir = dir.substr(0, dir.rfind('/'));
  for (const std::string& candidate : {dir + "/../images", dir + "/../share/airlock/images"}) {
    if (PathExists(candidate + "/base.tar")) {
      return candidate;
    }
  }
  return "";
}

}  // namespace airlock::images
