#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/result.h"

namespace airlock::images {

struct UnpackLimits {
  uint64_t max_bytes = 0;    // sum of the sizes of all files written, all layers
  uint64_t max_entries = 0;  // archive entries read, all layers
};

struct UnpackStats {
  uint64_t entries = 0;          // archive entries read
  uint64_t bytes = 0;            // file data written
  uint64_t skipped_special = 0;  // device nodes, FIFOs, sockets and unknown types not created
  uint64_t stripped_modes = 0;   // entries that lost setuid, setgid or sticky bits
  uint64_t whiteouts = 0;        // ".wh." entries applied
};

struct LayerInput {
  std::string name;  // for messages, e.g. the layer's digest
  int fd = -1;       // the layer blob (tar, possibly compressed), read from its start
};

// Called after each layer with its index (from 0), the layer count and the running totals.
using LayerDoneCallback = std::function<void(size_t, size_t, const UnpackStats&)>;

// Applies image layers in order into the directory `rootfs` (expected empty), with overlay
// semantics: ".wh.NAME" deletes NAME of the layers below, ".wh..wh..opq" hides everything the
// layers below put in its directory, and whiteout entries never appear in the result.
// Compression (gzip, zstd, xz, ...) is detected from the data.
//
// Security: a layer is hostile input. What is refused (the whole call fails, naming the
// layer and the entry) and what is neutralised:
//   refused     an absolute path or a ".." component (in an entry or a hard-link target);
//               an entry, whiteout or hard-link target whose path goes through a symlink
//               or a non-directory (a symlink planted by an earlier entry or layer must never
//               redirect a write outside `rootfs`); a hard link to a missing entry or a
//               directory; more entries or bytes than `limits` allow; a corrupt archive.
//               Writing through a symlink is refused rather than "resolved inside the root":
//               layers produced by diffing a file system never do it, so only a crafted
//               layer would.
//   neutralised setuid, setgid and (on files) sticky bits are dropped (mode & 0777; a
//               directory keeps its sticky bit); device nodes, FIFOs, sockets and unknown
//               entry types are skipped and counted; extended attributes (file capabilities
//               among them), ACLs and file flags are not restored; ownership is kept only when
//               running as root, else files belong to the caller (whose directories then get
//               owner rwx so later layers can write into them).
//   allowed     symlinks with any target, since a link is only followed inside the sandbox,
//               whose root is this tree; the store itself never follows one.
// Runs on a private thread (see RunInPrivateCwd); `rootfs_fd` stays owned by the caller.
Result<UnpackStats> UnpackLayers(int rootfs_fd, const std::vector<LayerInput>& layers,
                                 const UnpackLimits& limits,
                                 const LayerDoneCallback& on_layer_done = nullptr);

// Longest entry path accepted (below PATH_MAX, so the extractor never needs to walk a long
// path piecewise) and deepest nesting (bounds the descriptors a tree walk holds).
inline constexpr size_t kMaxEntryPath = 4000;
inline constexpr size_t kMaxEntryDepth = 256;

}  // namespace airlock::images
