#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace airlock::images {

// What an import is doing, for a progress display.
struct ImportProgress {
  enum class Stage {
    kStaging,    // unpacking the image archive into a temporary layout
    kVerifying,  // hashing layer `layer` (from 0) of `layers`
    kLayerDone,  // layer `layer` applied; `bytes` and `entries` are running totals
    kReused,     // the image was already unpacked; only the name was added
    kDone,
  };
  Stage stage = Stage::kStaging;
  size_t layer = 0;
  size_t layers = 0;
  uint64_t bytes = 0;
  uint64_t entries = 0;
  std::string digest;
};

// The mount points every image gets as directories (see ImageStoreOptions::mount_points).
std::vector<std::string> DefaultMountPoints();

struct ImageStoreOptions {
  std::string root;  // the store's directory, normally <home>/images
  // Holds base.tar (and browser.tar), imported on first use as "base" ("browser"); "" for none.
  std::string builtin_dir;
  // Directories the sandbox runtime mounts over, created in every image (and in `host`).
  std::vector<std::string> mount_points = DefaultMountPoints();
  // Bounds against a hostile archive: per image, all layers together.
  uint64_t max_unpacked_bytes = uint64_t{64} << 30;
  uint64_t max_entries = 2'000'000;
  uint64_t max_archive_bytes = uint64_t{64} << 30;  // an image archive's staged files
  uint64_t max_json_bytes = uint64_t{4} << 20;      // index, manifests, config
  // Called during Import, from the importing call (possibly on a helper thread while the
  // call waits for it); must not call back into the store.
  std::function<void(const ImportProgress&)> on_progress;
};

struct ImageInfo {
  std::string name;    // "NAME:TAG"
  std::string digest;  // "sha256:<hex>", the content address of the unpacked tree
  std::string format;  // "oci" or "docker-save"
  size_t layers = 0;
  uint64_t size_bytes = 0;     // file data in the tree
  uint64_t entries = 0;        // archive entries read while unpacking
  int64_t imported_at_ms = 0;  // when the name was given to the digest
  bool reused = false;         // Import: the tree was there already
};

struct ResolvedImage {
  std::string name;    // "NAME:TAG", or "host"
  std::string digest;  // "" for host
  std::string rootfs;  // absolute path of the tree; the runtime must mount it read-only
  std::vector<std::string> entrypoint;
  std::vector<std::string> cmd;
  std::vector<std::string> env;
  std::string workdir;
  std::string user;
  // Host directories the runtime must bind read-only at the same path (host image only).
  std::vector<std::string> host_binds;
};

// The local image cache: OCI images and `docker save` archives, each unpacked once into a
// content-addressed tree that every sandbox of the image shares read-only.
//
// On disk, under `root`:
//   lock                 flock(2)ed by every change
//   refs.json            {"refs": {"NAME:TAG": {"digest", "imported_at"}}}
//   sha256/<hex>/rootfs  the unpacked tree of the image whose manifest digest is <hex> (for a
//                        `docker save` archive: its config digest); never written once there
//   sha256/<hex>/config.json  entrypoint, cmd, env, workdir, user, layers, size
//   host/rootfs          the skeleton of the built-in `host` image (+ host/fingerprint)
//   tmp/                 imports in progress and trees being deleted, each flock(2)ed by its
//                        owner; left-overs of a crashed process are removed by Open
// Every file is written under a temporary name and renamed into place, and a tree appears
// by one rename, so a reader sees an image whole or not at all, and a failed import leaves
// nothing behind.
//
// Thread-safe, and safe with other processes using the same root: changes take the lock;
// reads need none. Images resolve by name; "host", "base" and "browser" are built in (see
// Resolve).
//
// Security: an imported archive is hostile input. Digests are verified, sizes are bounded,
// and unpacking refuses path escapes (see layer_unpacker.h for what is refused and what is
// neutralised).
class ImageStore {
 public:
  // Creates the directories if needed, checks the options, and removes left-overs of
  // crashed imports.
  static Result<ImageStore> Open(ImageStoreOptions options);

  // Imports an OCI image layout directory, an OCI layout tarball or a `docker save` tarball
  // (plain or compressed). The image is named `name` if given, else by the archive
  // (org.opencontainers.image.ref.name / io.containerd.image.name annotation, or RepoTags);
  // names are normalised to NAME:TAG (see NormalizeImageName). An image already unpacked
  // is reused. Giving an existing name to another image moves the name.
  Result<ImageInfo> Import(const std::string& path,
                           const std::optional<std::string>& name = std::nullopt);

  // The named images, by name.
  Result<std::vector<ImageInfo>> List() const;

  // Removes a name; the tree goes when no name points at it any more. A sandbox that still
  // has the tree mounted keeps it (the mount holds it) until it ends.
  Status Remove(std::string_view name);

  // What a backend needs to run `name`:
  //   "host"  a skeleton root (created on first use) plus `host_binds`, the host's system
  //           directories, to be bound read-only;
  //   "base"  imported from <builtin_dir>/base.tar the first time it is asked for, and
  //           "browser" from browser.tar (Chromium and the agent's browser tools);
  //   else    an imported image (kNotFound if there is none of that name).
  Result<ResolvedImage> Resolve(std::string_view name);

  const std::string& root() const { return options_.root; }

 private:
  explicit ImageStore(ImageStoreOptions options) : options_(std::move(options)) {}

  Result<ResolvedImage> ResolveHost();

  ImageStoreOptions options_;
};

// Where the built-in images are: $AIRLOCK_IMAGES_DIR, else "images" beside the directory of
// the running executable (the build tree: build/apps/airlock -> build/images), else
// ../share/airlock/images from it; "" when none holds base.tar.
std::string DefaultBuiltinDir();

}  // namespace airlock::images
