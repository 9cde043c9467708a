#pragma once

// Test helpers: tar archives and image layouts written with libarchive, so the image tests
// build every input, hostile ones included, from code.

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/json_util.h"

namespace airlock::images::testing {

struct TarEntry {
  enum class Type { kFile, kDir, kSymlink, kHardlink, kCharDevice, kFifo };
  std::string path;
  Type type = Type::kFile;
  std::string content;  // kFile
  std::string link;     // kSymlink, kHardlink: the target
  mode_t mode = 0644;   // permission bits, setuid and friends included
  int64_t uid = 0;
  int64_t gid = 0;
};

TarEntry File(std::string path, std::string content, mode_t mode = 0644);
TarEntry Dir(std::string path, mode_t mode = 0755);
TarEntry Symlink(std::string path, std::string target);
TarEntry Hardlink(std::string path, std::string target);
TarEntry CharDevice(std::string path);
TarEntry Fifo(std::string path);

enum class Compression { kNone, kGzip, kZstd };

// A tar archive (pax) of `entries`, in order, names as given (absolute and ".." too).
std::string TarBytes(const std::vector<TarEntry>& entries, Compression c = Compression::kNone);
// `data` compressed as a whole stream.
std::string Compress(const std::string& data, Compression c);
bool ZstdWriterAvailable();

void WriteFile(const std::string& path, const std::string& data);
void WriteTar(const std::string& path, const std::vector<TarEntry>& entries,
              Compression c = Compression::kNone);

// Files of an image layout: relative path -> bytes.
using Files = std::map<std::string, std::string>;
// Writes `files` into the directory `dir` (created).
void WriteLayoutDir(const std::string& dir, const Files& files);
// A tar of `files` (regular files, sorted by name).
void WriteLayoutTar(const std::string& path, const Files& files,
                    Compression c = Compression::kNone);

std::string Sha256Digest(const std::string& data);  // "sha256:<hex>"

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on destruction.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Names in a directory ("." and ".." left out); empty if it does not exist.
std::vector<std::string> ListDirectory(const std::string& dir);

// Builds an image, as an OCI layout or as `docker save` output.
class ImageBuilder {
 public:
  ImageBuilder& Layer(const std::vector<TarEntry>& entries, Compression c = Compression::kNone);
  // The runtime part of the config ("Entrypoint", "Cmd", ...).
  ImageBuilder& RuntimeConfig(Json config);
  // The org.opencontainers.image.ref.name annotation ("" for none).
  ImageBuilder& RefName(std::string name);

  // index.json, oci-layout, blobs/sha256/...
  Files OciFiles() const;
  // manifest.json, <config hex>.json, <n>/layer.tar (uncompressed, as docker writes them).
  Files DockerSaveFiles(const std::vector<std::string>& repo_tags) const;

  std::string ManifestDigest() const;  // of the OCI manifest
  std::string ConfigDigest() const;
  // The blob path of layer `i` in OciFiles().
  std::string LayerBlobPath(size_t i) const;
  std::string ManifestBlobPath() const;
  std::string ConfigBlobPath() const;

 private:
  struct BuiltLayer {
    std::string raw;   // uncompressed tar
    std::string blob;  // as stored
    std::string media_type;
  };
  std::string ConfigBytes() const;
  std::string ManifestBytes() const;

  std::vector<BuiltLayer> layers_;
  Json runtime_config_ = Json::object();
  std::string ref_name_ = "example/app:1.0";
};

}  // namespace airlock::images::testing
