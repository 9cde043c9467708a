#include "images/test_archives.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>

#include <fmt/format.h>

#include "common/crypto.h"
#include "images/fs_util.h"
#include "images/image_layout.h"

namespace airlock::images::testing {

namespace {

la_ssize_t AppendToString(archive*, void* client, const void* buf, size_t n) {
  static_cast<std::string*>(client)->append(static_cast<const char*>(buf), n);
  return static_cast<la_ssize_t>(n);
}

void Check(int rc, archive* a, const char* what) {
  if (rc < ARCHIVE_WARN) {
    throw std::runtime_error(fmt::format("{}: {}", what, archive_error_string(a)));
  }
}

void AddFilter(archive* a, Compression c) {
  switch (c) {
    case Compression::kNone:
      break;
    case Compression::kGzip:
      Check(archive_write_add_filter_gzip(a), a, "gzip filter");
      break;
    case Compression::kZstd:
      Check(archive_write_add_filter_zstd(a), a, "zstd filter");
      break;
  }
}

}  // namespace

TarEntry File(std::string path, std::string content, mode_t mode) {
  return TarEntry{std::move(path), TarEntry::Type::kFile, std::move(content), "", mode};
}
TarEntry Dir(std::string path, mode_t mode) {
  return TarEntry{std::move(path), TarEntry::Type::kDir, "", "", mode};
}
TarEntry Symlink(std::string path, std::string target) {
  return TarEntry{std::move(path), TarEntry::Type::kSymlink, "", std::move(target), 0777};
}
TarEntry Hardlink(std::string path, std::string target) {
  return TarEntry{std::move(path), TarEntry::Type::kHardlink, "", std::move(target), 0644};
}
TarEntry CharDevice(std::string path) {
  return TarEntry{std::move(path), TarEntry::Type::kCharDevice, "", "", 0666};
}
TarEntry Fifo(std::string path) {
  return TarEntry{std::move(path), TarEntry::Type::kFifo, "", "", 0644};
}

std::string TarBytes(const std::vector<TarEntry>& entries, Compression c) {
  std::string out;
  archive* a = archive_write_new();
  Check(archive_write_set_format_pax_restricted(a), a, "pax format");
  AddFilter(a, c);
  // No zero padding after the last block: a zstd reader would take it for another frame.
  archive_write_set_bytes_in_last_block(a, 1);
  Check(archive_write_open2(a, &out, nullptr, AppendToString, nullptr, nullptr), a, "open");
  for (const TarEntry& e : entries) {
    archive_entry* entry = archive_entry_new();
    archive_entry_set_pathname(entry, e.path.c_str());
    archive_entry_set_perm(entry, e.mode);
    archive_entry_set_uid(entry, e.uid);
    archive_entry_set_gid(entry, e.gid);
    archive_entry_set_mtime(entry, 1700000000, 0);
    switch (e.type) {
      case TarEntry::Type::kFile:
        archive_entry_set_filetype(entry, AE_IFREG);
        archive_entry_set_size(entry, static_cast<la_int64_t>(e.content.size()));
        break;
      case TarEntry::Type::kDir:
        archive_entry_set_filetype(entry, AE_IFDIR);
        break;
      case TarEntry::Type::kSymlink:
        archive_entry_set_filetype(entry, AE_IFLNK);
        archive_entry_set_symlink(entry, e.link.c_str());
        break;
      case TarEntry::Type::kHardlink:
        archive_entry_set_filetype(entry, AE_IFREG);
        archive_entry_set_hardlink(entry, e.link.c_str());
        archive_entry_set_size(entry, 0);
        break;
      case TarEntry::Type::kCharDevice:
        archive_entry_set_filetype(entry, AE_IFCHR);
        archive_entry_set_rdevmajor(entry, 1);
        archive_entry_set_rdevminor(entry, 3);
        break;
      case TarEntry::Type::kFifo:
        archive_entry_set_filetype(entry, AE_IFIFO);
        break;
    }
    Check(archive_write_header(a, entry), a, "header");
    if (e.type == TarEntry::Type::kFile && !e.content.empty()) {
      archive_write_data(a, e.content.data(), e.content.size());
    }
    archive_entry_free(entry);
  }
  Check(archive_write_close(a), a, "close");
  archive_write_free(a);
  return out;
}

std::string Compress(const std::string& data, Compression c) {
  if (c == Compression::kNone) {
    return data;
  }
  std::string out;
  archive* a = archive_write_new();
  Check(archive_write_set_format_raw(a), a, "raw format");
  AddFilter(a, c);
  // No zero padding after the last block: a zstd reader would take it for another frame.
  archive_write_set_bytes_in_last_block(a, 1);
  Check(archive_write_open2(a, &out, nullptr, AppendToString, nullptr, nullptr), a, "open");
  archive_entry* entry = archive_entry_new();
  archive_entry_set_pathname(entry, "data");
  archive_entry_set_filetype(entry, AE_IFREG);
  archive_entry_set_size(entry, static_cast<la_int64_t>(data.size()));
  Check(archive_write_header(a, entry), a, "header");
  archive_write_data(a, data.data(), data.size());
  archive_entry_free(entry);
  Check(archive_write_close(a), a, "close");
  archive_write_free(a);
  return out;
}

bool ZstdWriterAvailable() {
  archive* a = archive_write_new();
  bool ok = archive_write_add_filter_zstd(a) == ARCHIVE_OK;
  archive_write_free(a);
  return ok;
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
  if (!f) {
    throw std::runtime_error("cannot write " + path);
  }
}

void WriteTar(const std::string& path, const std::vector<TarEntry>& entries, Compression c) {
  WriteFile(path, TarBytes(entries, c));
}

void WriteLayoutDir(const std::string& dir, const Files& files) {
  for (const auto& [rel, data] : files) {
    std::string path = dir + "/" + rel;
    if (!MakeDirs(path.substr(0, path.rfind('/')))) {
      throw std::runtime_error("mkdir for " + path);
    }
    WriteFile(path, data);
  }
}

void WriteLayoutTar(const std::string& path, const Files& files, Compression c) {
  std::vector<TarEntry> entries;
  for (const auto& [rel, data] : files) {
    entries.push_back(File(rel, data));
  }
  WriteTar(path, entries, c);
}

std::string Sha256Digest(const std::string& data) { return "sha256:" + Sha256Hex(data); }

ScratchDir::ScratchDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = fmt::format("{}/airlock-images-test-XXXXXX", base && *base ? base : "/tmp");
  if (::mkdtemp(pattern.data()) == nullptr) {
    throw std::runtime_error("mkdtemp failed");
  }
  path_ = pattern;
}

ScratchDir::~ScratchDir() { (void)RemoveTree(path_); }

std::vector<std::string> ListDirectory(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (struct dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") {
        names.push_back(n);
      }
    }
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

ImageBuilder& ImageBuilder::Layer(const std::vector<TarEntry>& entries, Compression c) {
  BuiltLayer l;
  l.raw = TarBytes(entries);
  l.blob = Compress(l.raw, c);
  l.media_type = c == Compression::kGzip   ? "application/vnd.oci.image.layer.v1.tar+gzip"
                 : c == Compression::kZstd ? "application/vnd.oci.image.layer.v1.tar+zstd"
                                           : "application/vnd.oci.image.layer.v1.tar";
  layers_.push_back(std::move(l));
  return *this;
}

ImageBuilder& ImageBuilder::RuntimeConfig(Json config) {
  runtime_config_ = std::move(config);
  return *this;
}

ImageBuilder& ImageBuilder::RefName(std::string name) {
  ref_name_ = std::move(name);
  return *this;
}

std::string ImageBuilder::ConfigBytes() const {
  Json diff_ids = Json::array();
  for (const BuiltLayer& l : layers_) {
    diff_ids.push_back(Sha256Digest(l.raw));
  }
  Json config = {{"architecture", HostArchitecture()},
                 {"os", "linux"},
                 {"config", runtime_config_},
                 {"rootfs", {{"type", "layers"}, {"diff_ids", diff_ids}}}};
  return config.dump();
}

std::string ImageBuilder::ManifestBytes() const {
  std::string config = ConfigBytes();
  Json layers = Json::array();
  for (const BuiltLayer& l : layers_) {
    layers.push_back(
        {{"mediaType", l.media_type}, {"digest", Sha256Digest(l.blob)}, {"size", l.blob.size()}});
  }
  Json manifest = {{"schemaVersion", 2},
                   {"mediaType", "application/vnd.oci.image.manifest.v1+json"},
                   {"config",
                    {{"mediaType", "application/vnd.oci.image.config.v1+json"},
                     {"digest", Sha256Digest(config)},
                     {"size", config.size()}}},
                   {"layers", layers}};
  return manifest.dump();
}

std::string ImageBuilder::ManifestDigest() const { return Sha256Digest(ManifestBytes()); }
std::string ImageBuilder::ConfigDigest() const { return Sha256Digest(ConfigBytes()); }
std::string ImageBuilder::LayerBlobPath(size_t i) const {
  return "blobs/sha256/" + Sha256Hex(layers_.at(i).blob);
}
std::string ImageBuilder::ManifestBlobPath() const {
  return "blobs/sha256/" + Sha256Hex(ManifestBytes());
}
std::string ImageBuilder::ConfigBlobPath() const {
  return "blobs/sha256/" + Sha256Hex(ConfigBytes());
}

Files ImageBuilder::OciFiles() const {
  Files files;
  std::string config = ConfigBytes();
  std::string manifest = ManifestBytes();
  files["oci-layout"] = R"({"imageLayoutVersion":"1.0.0"})";
  files["blobs/sha256/" + Sha256Hex(config)] = config;
  files["blobs/sha256/" + Sha256Hex(manifest)] = manifest;
  for (const BuiltLayer& l : layers_) {
    files["blobs/sha256/" + Sha256Hex(l.blob)] = l.blob;
  }
  Json descriptor = {{"mediaType", "application/vnd.oci.image.manifest.v1+json"},
                     {"digest", Sha256Digest(manifest)},
                     {"size", manifest.size()}};
  if (!ref_name_.empty()) {
    descriptor["annotations"] = {{"org.opencontainers.image.ref.name", ref_name_}};
  }
  Json index = {{"schemaVersion", 2},
                {"mediaType", "application/vnd.oci.image.index.v1+json"},
                {"manifests", Json::array({descriptor})}};
  files["index.json"] = index.dump();
  return files;
}

Files ImageBuilder::DockerSaveFiles(const std::vector<std::string>& repo_tags) const {
  Files files;
  std::string config = ConfigBytes();
  std::string config_name = Sha256Hex(config) + ".json";
  files[config_name] = config;
  Json layers = Json::array();
  for (size_t i = 0; i < layers_.size(); ++i) {
    std::string dir = Sha256Hex(fmt::format("layer-{}-{}", i, Sha256Hex(layers_[i].raw)));
    files[dir + "/layer.tar"] = layers_[i].raw;
    files[dir + "/VERSION"] = "1.0";
    layers.push_back(dir + "/layer.tar");
  }
  Json manifest =
      Json::array({{{"Config", config_name}, {"RepoTags", repo_tags}, {"Layers", layers}}});
  files["manifest.json"] = manifest.dump();
  return files;
}

}  // namespace airlock::images::testing
