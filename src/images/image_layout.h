#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "images/fs_util.h"

namespace airlock::images {

struct LayoutLimits {
  uint64_t max_json_bytes = 0;     // index.json, manifest.json, a manifest, a config
  uint64_t max_archive_bytes = 0;  // the files of an image archive, together
  uint64_t max_entries = 0;        // the entries of an image archive
};

// The run-time settings of an image config ("config" of the OCI image config).
struct ImageConfig {
  std::vector<std::string> entrypoint;
  std::vector<std::string> cmd;
  std::vector<std::string> env;
  std::string working_dir;
  std::string user;
};

struct SourceLayer {
  std::string path;              // inside the layout
  std::string digest;            // "sha256:<hex>" the file must hash to
  std::optional<uint64_t> size;  // from the descriptor, when there is one
};

// One image of an OCI image layout or a `docker save` archive. The manifest and the config
// have been checked against their digests; the layers are checked by OpenVerifiedBlob.
struct SourceImage {
  std::string format;  // "oci" or "docker-save"
  // The content address: the manifest's digest for OCI; `docker save` has no manifest
  // blob, so the config's digest (the image ID, which covers every layer's diff ID).
  std::string digest;
  std::string config_digest;
  std::optional<std::string> name;  // the archive's own name for the image, normalised
  std::string name_problem;         // why a name the archive gives was not usable
  ImageConfig config;
  std::vector<SourceLayer> layers;
};

// Read access to the files of a layout: a directory, plus the links of an archive that was
// staged into one (`docker save` links repeated layers to their first copy).
class ImageLayout {
 public:
  ImageLayout(std::string dir, std::map<std::string, std::string> links)
      : dir_(std::move(dir)), links_(std::move(links)) {}

  // Opens the regular file `rel` (a path inside the layout). Links, staged or on disk, are
  // followed only while they stay inside the layout.
  Result<UniqueFd> Open(const std::string& rel) const;
  bool Exists(const std::string& rel) const;
  // Reads a small file whole (kPayloadTooLarge beyond `max_bytes`).
  Result<std::string> ReadSmall(const std::string& rel, uint64_t max_bytes) const;

 private:
  std::string dir_;
  std::map<std::string, std::string> links_;
};

// Unpacks an image archive (an OCI layout tarball or `docker save` output, compressed or
// not) into the empty directory `dir` and returns the layout. Only what a layout holds is
// written: regular files under names of [A-Za-z0-9._-] components; symlinks and hard links
// become links of the layout, resolved lexically; anything else is skipped. Bounded by
// `limits` (entries, bytes).
Result<ImageLayout> StageArchive(const std::string& archive_path, const std::string& dir,
                                 const LayoutLimits& limits);

// Finds and verifies the image in `layout`. When the layout holds several, `wanted` (a
// normalised name) picks the one so named; otherwise the one for this machine's platform.
Result<SourceImage> ReadSourceImage(const ImageLayout& layout,
                                    const std::optional<std::string>& wanted,
                                    const LayoutLimits& limits);

// Opens a layer blob, checks its size and sha256 against `layer`, and returns the file
// positioned at its start. A mismatch is kInvalidArgument naming the blob.
Result<UniqueFd> OpenVerifiedBlob(const ImageLayout& layout, const SourceLayer& layer);

// "amd64", "arm64", ... for this machine, as OCI platforms name it.
std::string HostArchitecture();

}  // namespace airlock::images
