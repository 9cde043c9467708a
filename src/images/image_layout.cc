#include "images/image_layout.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <set>
#include <string_view>

#include <fmt/format.h>
#include <openssl/evp.h>

#include "common/crypto.h"
#include "common/json_util.h"
#include "images/image_name.h"

namespace airlock::images {

namespace {

constexpr size_t kMaxLayoutPath = 1024;
constexpr int kMaxLinkHops = 16;
constexpr int kMaxIndexDepth = 3;
constexpr size_t kMaxLayers = 512;
constexpr size_t kMaxConfigList = 65536;

constexpr std::string_view kOciManifest = "application/vnd.oci.image.manifest.v1+json";
constexpr std::string_view kDockerManifest = "application/vnd.docker.distribution.manifest.v2+json";
constexpr std::string_view kOciIndex = "application/vnd.oci.image.index.v1+json";
constexpr std::string_view kDockerList =
    "application/vnd.docker.distribution.manifest.list.v2+json";
constexpr const char* kRefNameAnnotation = "org.opencontainers.image.ref.name";
constexpr const char* kContainerdNameAnnotation = "io.containerd.image.name";

struct ReadArchiveDeleter {
  void operator()(archive* a) const { archive_read_free(a); }
};

// "a/b/../c" -> "a/c"; nullopt when ".." would climb above the top.
std::optional<std::string> LexicalNormalize(std::string_view path) {
  std::vector<std::string_view> parts;
  for (std::string_view part : SplitPath(path)) {
    if (part == ".") {
      continue;
    }
    if (part == "..") {
      if (parts.empty()) {
        return std::nullopt;
      }
      parts.pop_back();
      continue;
    }
    parts.push_back(part);
  }
  std::string out;
  for (std::string_view part : parts) {
    if (!out.empty()) {
      out += '/';
    }
    out += part;
  }
  return out;
}

// Where a link at `link_path` with target `target` points, inside the layout.
std::optional<std::string> ResolveLinkTarget(std::string_view link_path, std::string_view target) {
  if (target.empty() || target.front() == '/') {
    return std::nullopt;
  }
  size_t slash = link_path.rfind('/');
  std::string base = slash == std::string_view::npos ? "" : std::string(link_path.substr(0, slash));
  auto resolved =
      LexicalNormalize(base.empty() ? std::string(target) : fmt::format("{}/{}", base, target));
  if (!resolved || resolved->empty()) {
    return std::nullopt;
  }
  return resolved;
}

bool IsLayoutName(std::string_view clean) {
  for (std::string_view part : SplitPath(clean)) {
    if (part == "." || part == "..") {
      return false;
    }
    for (char c : part) {
      bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '.' || c == '_' || c == '-';
      if (!ok) {
        return false;
      }
    }
  }
  return !clean.empty();
}

bool IsSha256Hex(std::string_view hex) {
  return hex.size() == 64 && hex.find_first_not_of("0123456789abcdef") == std::string_view::npos;
}

// A descriptor's digest, as the hex of a sha256 (the only algorithm accepted).
Result<std::string> DigestHex(std::string_view digest, std::string_view where) {
  if (!digest.starts_with("sha256:")) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "{}: digest \"{}\" is not sha256 (the only algorithm supported)", where,
                  digest.substr(0, 80));
  }
  std::string_view hex = digest.substr(7);
  if (!IsSha256Hex(hex)) {
    return Errorf(ErrorCode::kInvalidArgument, "{}: malformed digest \"{}\"", where,
                  digest.substr(0, 80));
  }
  return std::string(hex);
}

struct Descriptor {
  std::string media_type;
  std::string digest;  // "sha256:<hex>"
  std::string hex;
  uint64_t size = 0;
  Json annotations = Json::object();
  Json platform;  // null when absent
};

Result<Descriptor> ParseDescriptor(const Json& j, std::string_view where) {
  if (!j.is_object()) {
    return Errorf(ErrorCode::kInvalidArgument, "{}: a descriptor must be an object", where);
  }
  Descriptor d;
  AIRLOCK_ASSIGN_OR_RETURN(auto media_type, OptionalString(j, "mediaType"));
  d.media_type = media_type.value_or("");
  auto digest = RequiredString(j, "digest");
  if (!digest) {
    return Errorf(ErrorCode::kInvalidArgument, "{}: {}", where, digest.error().message);
  }
  d.digest = *digest;
  AIRLOCK_ASSIGN_OR_RETURN(d.hex, DigestHex(d.digest, where));
  auto size = OptionalInt(j, "size");
  if (!size || !*size || **size < 0) {
    return Errorf(ErrorCode::kInvalidArgument, "{}: descriptor of {} needs a non-negative \"size\"",
                  where, d.digest);
  }
  d.size = static_cast<uint64_t>(**size);
  if (auto it = j.find("annotations"); it != j.end() && it->is_object()) {
    d.annotations = *it;
  }
  if (auto it = j.find("platform"); it != j.end() && it->is_object()) {
    d.platform = *it;
  }
  return d;
}

std::string BlobPath(const std::string& hex) { return "blobs/sha256/" + hex; }

// Reads a JSON blob named by a descriptor, checking size and digest before parsing it.
Result<Json> ReadJsonBlob(const ImageLayout& layout, const Descriptor& d,
                          const LayoutLimits& limits, std::string_view what) {
  if (d.size > limits.max_json_bytes) {
    return Errorf(ErrorCode::kPayloadTooLarge,
                  "refusing the image: the {} {} is {} bytes, over the {} byte limit", what,
                  d.digest, d.size, limits.max_json_bytes);
  }
  auto text = layout.ReadSmall(BlobPath(d.hex), limits.max_json_bytes);
  if (!text) {
    return Errorf(text.error().code, "the {} {}: {}", what, d.digest, text.error().message);
  }
  if (text->size() != d.size) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "refusing the image: the {} {} is {} bytes, its descriptor says {}", what,
                  d.digest, text->size(), d.size);
  }
  if (Sha256Hex(*text) != d.hex) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "refusing the image: the {} blob does not match its digest {}", what, d.digest);
  }
  auto json = ParseJsonObject(*text);
  if (!json) {
    return Errorf(ErrorCode::kInvalidArgument, "the {} {}: {}", what, d.digest,
                  json.error().message);
  }
  return std::move(*json);
}

Result<std::vector<std::string>> StringList(const Json& obj, const char* key,
                                            std::string_view where) {
  std::vector<std::string> out;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    return out;
  }
  if (!it->is_array() || it->size() > kMaxConfigList) {
    return Errorf(ErrorCode::kInvalidArgument, "{}: \"{}\" must be an array of strings", where,
                  key);
  }
  for (const Json& v : *it) {
    if (!v.is_string()) {
      return Errorf(ErrorCode::kInvalidArgument, "{}: \"{}\" must be an array of strings", where,
                    key);
    }
    std::string s = v.get<std::string>();
    if (s.find('\0') != std::string::npos) {
      return Errorf(ErrorCode::kInvalidArgument, "{}: \"{}\" holds a NUL byte", where, key);
    }
    out.push_back(std::move(s));
  }
  return out;
}

Result<ImageConfig> ParseImageConfig(const Json& config_blob) {
  constexpr std::string_view kWhere = "image config";
  if (auto os = config_blob.find("os");
      os != config_blob.end() && os->is_string() && os->get<std::string>() != "linux") {
    return Errorf(ErrorCode::kInvalidArgument, "refusing the image: it is for \"{}\", not linux",
                  os->get<std::string>().substr(0, 40));
  }
  ImageConfig c;
  auto it = config_blob.find("config");
  if (it == config_blob.end() || it->is_null()) {
    return c;
  }
  if (!it->is_object()) {
    return Errorf(ErrorCode::kInvalidArgument, "{}: \"config\" must be an object", kWhere);
  }
  const Json& rc = *it;
  AIRLOCK_ASSIGN_OR_RETURN(c.entrypoint, StringList(rc, "Entrypoint", kWhere));
  AIRLOCK_ASSIGN_OR_RETURN(c.cmd, StringList(rc, "Cmd", kWhere));
  AIRLOCK_ASSIGN_OR_RETURN(c.env, StringList(rc, "Env", kWhere));
  AIRLOCK_ASSIGN_OR_RETURN(auto workdir, OptionalString(rc, "WorkingDir"));
  AIRLOCK_ASSIGN_OR_RETURN(auto user, OptionalString(rc, "User"));
  c.working_dir = workdir.value_or("");
  c.user = user.value_or("");
  return c;
}

Result<std::vector<std::string>> DiffIds(const Json& config_blob) {
  auto rootfs = config_blob.find("rootfs");
  if (rootfs == config_blob.end() || !rootfs->is_object()) {
    return std::vector<std::string>();
  }
  return StringList(*rootfs, "diff_ids", "image config rootfs");
}

// The archive's own name for the image, normalised; a problem is reported, not fatal (the
// caller may have a name of its own).
void TakeName(SourceImage& image, const std::vector<std::string>& candidates) {
  for (const std::string& candidate : candidates) {
    auto name = NormalizeImageName(candidate);
    if (name) {
      image.name = *name;
      return;
    }
    if (image.name_problem.empty()) {
      image.name_problem = name.error().message;
    }
  }
}

struct Candidate {
  Descriptor descriptor;
  std::vector<std::string> names;  // as the annotations give them
};

std::vector<std::string> AnnotatedNames(const Json& annotations) {
  std::vector<std::string> names;
  for (const char* key : {kContainerdNameAnnotation, kRefNameAnnotation}) {
    if (auto it = annotations.find(key); it != annotations.end() && it->is_string()) {
      names.push_back(it->get<std::string>());
    }
  }
  return names;
}

bool MatchesHostPlatform(const Descriptor& d) {
  if (!d.platform.is_object()) {
    return true;
  }
  std::string os = d.platform.value("os", std::string("linux"));
  std::string arch = d.platform.value("architecture", HostArchitecture());
  return os == "linux" && arch == HostArchitecture();
}

Status CollectManifests(const ImageLayout& layout, const Json& index, const LayoutLimits& limits,
                        int depth, std::vector<Candidate>& out) {
  auto manifests = index.find("manifests");
  if (manifests == index.end() || !manifests->is_array()) {
    return MakeError(ErrorCode::kInvalidArgument, "index.json: \"manifests\" must be an array");
  }
  for (const Json& entry : *manifests) {
    AIRLOCK_ASSIGN_OR_RETURN(Descriptor d, ParseDescriptor(entry, "index.json"));
    if (d.media_type == kOciIndex || d.media_type == kDockerList) {
      if (depth >= kMaxIndexDepth) {
        return MakeError(ErrorCode::kInvalidArgument, "index.json: indexes nested too deep");
      }
      AIRLOCK_ASSIGN_OR_RETURN(Json nested, ReadJsonBlob(layout, d, limits, "image index"));
      size_t before = out.size();
      AIRLOCK_TRY(CollectManifests(layout, nested, limits, depth + 1, out));
      // The name is on the outer descriptor; the platforms on the inner ones.
      for (size_t i = before; i < out.size(); ++i) {
        if (out[i].names.empty()) {
          out[i].names = AnnotatedNames(d.annotations);
        }
      }
      continue;
    }
    if (!d.media_type.empty() && d.media_type != kOciManifest && d.media_type != kDockerManifest) {
      continue;  // Not an image (an artifact, a signature).
    }
    out.push_back(Candidate{d, AnnotatedNames(d.annotations)});
  }
  return Ok();
}

std::string DescribeCandidates(const std::vector<Candidate>& candidates) {
  std::vector<std::string> parts;
  for (const Candidate& c : candidates) {
    parts.push_back(c.names.empty() ? c.descriptor.digest.substr(0, 19) : c.names.front());
  }
  std::string out;
  for (size_t i = 0; i < parts.size() && i < 10; ++i) {
    out += (i ? ", " : "") + parts[i];
  }
  return out;
}

Result<SourceImage> ReadOci(const ImageLayout& layout, const std::optional<std::string>& wanted,
                            const LayoutLimits& limits) {
  if (layout.Exists("oci-layout")) {
    AIRLOCK_ASSIGN_OR_RETURN(std::string marker, layout.ReadSmall("oci-layout", 4096));
    auto j = ParseJsonObject(marker);
    if (!j || !(*j).contains("imageLayoutVersion") || !(*j)["imageLayoutVersion"].is_string() ||
        !(*j)["imageLayoutVersion"].get<std::string>().starts_with("1.")) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "oci-layout: expected {\"imageLayoutVersion\": \"1.x\"}");
    }
  }
  AIRLOCK_ASSIGN_OR_RETURN(std::string index_text,
                           layout.ReadSmall("index.json", limits.max_json_bytes));
  auto index = ParseJsonObject(index_text);
  if (!index) {
    return Errorf(ErrorCode::kInvalidArgument, "index.json: {}", index.error().message);
  }
  std::vector<Candidate> all;
  AIRLOCK_TRY(CollectManifests(layout, *index, limits, 0, all));
  if (all.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "index.json names no image manifest");
  }
  // Pick: the manifest named `wanted`, else the only one for this platform.
  std::vector<Candidate> picked;
  if (wanted) {
    for (const Candidate& c : all) {
      for (const std::string& n : c.names) {
        auto normalized = NormalizeImageName(n);
        if (normalized && *normalized == *wanted && MatchesHostPlatform(c.descriptor)) {
          picked.push_back(c);
          break;
        }
      }
    }
  }
  if (picked.empty()) {
    std::copy_if(all.begin(), all.end(), std::back_inserter(picked),
                 [](const Candidate& c) { return MatchesHostPlatform(c.descriptor); });
  }
  std::set<std::string> digests;
  for (const Candidate& c : picked) {
    digests.insert(c.descriptor.digest);
  }
  if (digests.empty()) {
    return Errorf(ErrorCode::kInvalidArgument, "the layout has no image for linux/{} (it has: {})",
                  HostArchitecture(), DescribeCandidates(all));
  }
  if (digests.size() > 1) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "the layout holds {} images ({}); pass a name that one of them carries",
                  digests.size(), DescribeCandidates(picked));
  }
  const Candidate& chosen = picked.front();

  AIRLOCK_ASSIGN_OR_RETURN(Json manifest,
                           ReadJsonBlob(layout, chosen.descriptor, limits, "manifest"));
  if (manifest.value("schemaVersion", 0) != 2) {
    return Errorf(ErrorCode::kInvalidArgument, "manifest {}: schemaVersion must be 2",
                  chosen.descriptor.digest);
  }
  auto config_it = manifest.find("config");
  if (config_it == manifest.end()) {
    return Errorf(ErrorCode::kInvalidArgument, "manifest {} has no config",
                  chosen.descriptor.digest);
  }
  AIRLOCK_ASSIGN_OR_RETURN(Descriptor config_desc, ParseDescriptor(*config_it, "manifest config"));
  AIRLOCK_ASSIGN_OR_RETURN(Json config_blob,
                           ReadJsonBlob(layout, config_desc, limits, "image config"));

  SourceImage image;
  image.format = "oci";
  image.digest = chosen.descriptor.digest;
  image.config_digest = config_desc.digest;
  AIRLOCK_ASSIGN_OR_RETURN(image.config, ParseImageConfig(config_blob));
  auto layers = manifest.find("layers");
  if (layers == manifest.end() || !layers->is_array()) {
    return Errorf(ErrorCode::kInvalidArgument, "manifest {}: \"layers\" must be an array",
                  chosen.descriptor.digest);
  }
  if (layers->size() > kMaxLayers) {
    return Errorf(ErrorCode::kInvalidArgument, "refusing the image: {} layers (at most {})",
                  layers->size(), kMaxLayers);
  }
  for (const Json& l : *layers) {
    AIRLOCK_ASSIGN_OR_RETURN(Descriptor d, ParseDescriptor(l, "manifest layer"));
    if (d.media_type.find("encrypted") != std::string::npos) {
      return Errorf(ErrorCode::kInvalidArgument, "layer {} is encrypted ({}); not supported",
                    d.digest, d.media_type);
    }
    image.layers.push_back(SourceLayer{BlobPath(d.hex), d.digest, d.size});
  }
  TakeName(image, chosen.names);
  return image;
}

// The hex digest a `docker save` path carries in its name: "<hex>.json" (the config, up to
// Docker 24) or "blobs/sha256/<hex>" (Docker 25 on).
std::optional<std::string> HexFromPath(std::string_view path) {
  if (path.starts_with("blobs/sha256/") && IsSha256Hex(path.substr(13))) {
    return std::string(path.substr(13));
  }
  if (path.ends_with(".json") && IsSha256Hex(path.substr(0, path.size() - 5))) {
    return std::string(path.substr(0, path.size() - 5));
  }
  return std::nullopt;
}

Result<std::string> LayoutPath(const Json& v, std::string_view what) {
  if (!v.is_string()) {
    return Errorf(ErrorCode::kInvalidArgument, "manifest.json: {} must be a string", what);
  }
  auto clean = CleanRelativePath(v.get<std::string>(), kMaxLayoutPath);
  if (!clean || clean->empty()) {
    return Errorf(ErrorCode::kInvalidArgument, "manifest.json: {} \"{}\": {}", what,
                  v.get<std::string>().substr(0, 100), clean ? "empty" : clean.error().message);
  }
  return std::move(*clean);
}

Result<SourceImage> ReadDockerSave(const ImageLayout& layout,
                                   const std::optional<std::string>& wanted,
                                   const LayoutLimits& limits) {
  AIRLOCK_ASSIGN_OR_RETURN(std::string text,
                           layout.ReadSmall("manifest.json", limits.max_json_bytes));
  auto parsed = ParseJson(text);
  if (!parsed || !parsed->is_array() || parsed->empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "manifest.json must be a non-empty array of {Config, RepoTags, Layers}");
  }
  const Json* chosen = nullptr;
  if (wanted) {
    for (const Json& e : *parsed) {
      if (!e.is_object() || !e.contains("RepoTags") || !e["RepoTags"].is_array()) {
        continue;
      }
      for (const Json& t : e["RepoTags"]) {
        auto n = t.is_string() ? NormalizeImageName(t.get<std::string>()) : Result<std::string>();
        if (t.is_string() && n && *n == *wanted) {
          chosen = &e;
        }
      }
    }
  }
  if (chosen == nullptr) {
    if (parsed->size() > 1) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "manifest.json holds {} images; pass the name of one of them (a RepoTag)",
                    parsed->size());
    }
    chosen = &parsed->front();
  }
  if (!chosen->is_object()) {
    return MakeError(ErrorCode::kInvalidArgument, "manifest.json: entries must be objects");
  }
  auto config_field = chosen->find("Config");
  if (config_field == chosen->end()) {
    return MakeError(ErrorCode::kInvalidArgument, "manifest.json: the image has no \"Config\"");
  }
  AIRLOCK_ASSIGN_OR_RETURN(std::string config_path, LayoutPath(*config_field, "Config"));
  auto config_hex = HexFromPath(config_path);
  if (!config_hex) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "refusing the image: cannot verify the config \"{}\" (its name is not its "
                  "sha256)",
                  config_path.substr(0, 100));
  }
  AIRLOCK_ASSIGN_OR_RETURN(std::string config_text,
                           layout.ReadSmall(config_path, limits.max_json_bytes));
  if (Sha256Hex(config_text) != *config_hex) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "refusing the image: the config {} does not match its digest", config_path);
  }
  auto config_blob = ParseJsonObject(config_text);
  if (!config_blob) {
    return Errorf(ErrorCode::kInvalidArgument, "the config {}: {}", config_path,
                  config_blob.error().message);
  }

  SourceImage image;
  image.format = "docker-save";
  image.digest = "sha256:" + *config_hex;
  image.config_digest = image.digest;
  AIRLOCK_ASSIGN_OR_RETURN(image.config, ParseImageConfig(*config_blob));
  AIRLOCK_ASSIGN_OR_RETURN(std::vector<std::string> diff_ids, DiffIds(*config_blob));
  auto layers = chosen->find("Layers");
  if (layers == chosen->end() || !layers->is_array()) {
    return MakeError(ErrorCode::kInvalidArgument, "manifest.json: \"Layers\" must be an array");
  }
  if (layers->size() > kMaxLayers) {
    return Errorf(ErrorCode::kInvalidArgument, "refusing the image: {} layers (at most {})",
                  layers->size(), kMaxLayers);
  }
  if (layers->size() != diff_ids.size()) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "refusing the image: {} layers but {} diff_ids in the config, so the layers "
                  "cannot be verified",
                  layers->size(), diff_ids.size());
  }
  for (size_t i = 0; i < layers->size(); ++i) {
    AIRLOCK_ASSIGN_OR_RETURN(std::string path, LayoutPath((*layers)[i], "a layer"));
    // A layer of `docker save` is the uncompressed tar, whose sha256 is its diff ID; one
    // stored as a blob is named by its own digest.
    std::string digest = diff_ids[i];
    if (auto hex = HexFromPath(path); hex && path.starts_with("blobs/")) {
      digest = "sha256:" + *hex;
    }
    AIRLOCK_TRY(DigestHex(digest, "config rootfs.diff_ids"));
    image.layers.push_back(SourceLayer{path, digest, std::nullopt});
  }
  std::vector<std::string> names;
  if (auto tags = chosen->find("RepoTags"); tags != chosen->end() && tags->is_array()) {
    for (const Json& t : *tags) {
      if (t.is_string()) {
        names.push_back(t.get<std::string>());
      }
    }
  }
  TakeName(image, names);
  return image;
}

}  // namespace

Result<UniqueFd> ImageLayout::Open(const std::string& rel) const {
  std::string current = rel;
  for (int hop = 0; hop <= kMaxLinkHops; ++hop) {
    auto clean = CleanRelativePath(current, kMaxLayoutPath);
    if (!clean || clean->empty()) {
      return Errorf(ErrorCode::kInvalidArgument, "\"{}\" is not a path inside the layout",
                    rel.substr(0, 100));
    }
    if (auto link = links_.find(*clean); link != links_.end()) {
      current = link->second;
      continue;
    }
    std::string path = fmt::format("{}/{}", dir_, *clean);
    // O_NONBLOCK: opening a FIFO someone left in a layout directory must not hang.
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
    if (!fd.valid() && errno == ELOOP) {
      char target[4096];
      ssize_t n = ::readlink(path.c_str(), target, sizeof target - 1);
      auto next = n > 0
                      ? ResolveLinkTarget(*clean, std::string_view(target, static_cast<size_t>(n)))
                      : std::nullopt;
      if (!next) {
        return Errorf(ErrorCode::kInvalidArgument, "{} is a symlink that leaves the layout",
                      *clean);
      }
      current = *next;
      continue;
    }
    if (!fd.valid()) {
      if (errno == ENOENT) {
        return Errorf(ErrorCode::kNotFound, "the image has no file {}", *clean);
      }
      return Errorf(ErrorCode::kInternal, "open {}: {}", path, ErrnoText(errno));
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
      return Errorf(ErrorCode::kInvalidArgument, "{} in the image is not a regular file", *clean);
    }
    int flags = ::fcntl(fd.get(), F_GETFL);
    ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK);
    return fd;
  }
  return Errorf(ErrorCode::kInvalidArgument, "{}: too many links", rel.substr(0, 100));
}

bool ImageLayout::Exists(const std::string& rel) const {
  auto fd = Open(rel);
  return fd.has_value() || fd.error().code != ErrorCode::kNotFound;
}

Result<std::string> ImageLayout::ReadSmall(const std::string& rel, uint64_t max_bytes) const {
  AIRLOCK_ASSIGN_OR_RETURN(UniqueFd fd, Open(rel));
  auto text = ReadFdBounded(fd.get(), max_bytes, rel);
  if (!text && text.error().code == ErrorCode::kPayloadTooLarge) {
    return Errorf(ErrorCode::kPayloadTooLarge, "refusing the image: {}", text.error().message);
  }
  return text;
}

Result<ImageLayout> StageArchive(const std::string& archive_path, const std::string& dir,
                                 const LayoutLimits& limits) {
  std::unique_ptr<archive, ReadArchiveDeleter> in(archive_read_new());
  archive_read_support_filter_all(in.get());
  archive_read_support_format_tar(in.get());
  archive_read_support_format_gnutar(in.get());
  if (archive_read_open_filename(in.get(), archive_path.c_str(), 64 * 1024) != ARCHIVE_OK) {
    return Errorf(ErrorCode::kInvalidArgument, "{} is not a tar archive: {}", archive_path,
                  archive_error_string(in.get()));
  }
  UniqueFd root(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root.valid()) {
    return Errorf(ErrorCode::kInternal, "open {}: {}", dir, ErrnoText(errno));
  }
  std::map<std::string, std::string> links;
  uint64_t entries = 0;
  uint64_t bytes = 0;
  for (;;) {
    archive_entry* entry = nullptr;
    int r = archive_read_next_header(in.get(), &entry);
    if (r == ARCHIVE_EOF) {
      break;
    }
    if (r < ARCHIVE_WARN) {
      return Errorf(ErrorCode::kInvalidArgument, "{} is corrupt: {}", archive_path,
                    archive_error_string(in.get()));
    }
    if (++entries > limits.max_entries) {
      return Errorf(ErrorCode::kResourceExhausted,
                    "refusing {}: more than {} entries; the limit is configurable", archive_path,
                    limits.max_entries);
    }
    const char* raw = archive_entry_pathname(entry);
    auto clean = raw ? CleanRelativePath(raw, kMaxLayoutPath) : Result<std::string>();
    if (!raw || !clean) {
      return Errorf(ErrorCode::kInvalidArgument, "refusing {}: entry \"{}\": {}", archive_path,
                    raw ? std::string(raw).substr(0, 200) : "?",
                    raw ? clean.error().message : "unreadable name");
    }
    if (clean->empty() || !IsLayoutName(*clean)) {
      continue;  // Nothing a layout refers to.
    }
    if (const char* hardlink = archive_entry_hardlink(entry)) {
      auto target = CleanRelativePath(hardlink, kMaxLayoutPath);
      if (target && !target->empty()) {
        links[*clean] = *target;
      }
      continue;
    }
    mode_t type = archive_entry_filetype(entry);
    if (type == AE_IFLNK) {
      const char* target = archive_entry_symlink(entry);
      if (auto resolved = target ? ResolveLinkTarget(*clean, target) : std::nullopt) {
        links[*clean] = *resolved;
      }
      continue;
    }
    if (type != AE_IFREG) {
      continue;
    }
    int64_t size = archive_entry_size(entry);
    if (size < 0 || static_cast<uint64_t>(size) > limits.max_archive_bytes - bytes) {
      return Errorf(ErrorCode::kResourceExhausted,
                    "refusing {}: more than {} bytes; the limit is configurable", archive_path,
                    limits.max_archive_bytes);
    }
    bytes += static_cast<uint64_t>(size);
    size_t slash = clean->rfind('/');
    std::string parent = slash == std::string::npos ? "" : clean->substr(0, slash);
    std::string base = slash == std::string::npos ? *clean : clean->substr(slash + 1);
    AIRLOCK_ASSIGN_OR_RETURN(UniqueFd pdir, OpenDirBeneath(root.get(), parent, /*create=*/true));
    UniqueFd out(::openat(pdir.get(), base.c_str(),
                          O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!out.valid()) {
      return Errorf(errno == EEXIST ? ErrorCode::kInvalidArgument : ErrorCode::kInternal,
                    "staging {} from {}: {}", *clean, archive_path,
                    errno == EEXIST ? "the archive holds it twice" : ErrnoText(errno));
    }
    const void* buf = nullptr;
    size_t len = 0;
    la_int64_t offset = 0;
    uint64_t written = 0;
    while ((r = archive_read_data_block(in.get(), &buf, &len, &offset)) == ARCHIVE_OK) {
      if (offset < 0 || static_cast<uint64_t>(offset) + len > static_cast<uint64_t>(size)) {
        return Errorf(ErrorCode::kInvalidArgument, "{}: entry {} has data beyond its size",
                      archive_path, *clean);
      }
      if (static_cast<uint64_t>(offset) != written && ::lseek(out.get(), offset, SEEK_SET) < 0) {
        return Errorf(ErrorCode::kInternal, "seek in {}: {}", *clean, ErrnoText(errno));
      }
      const char* p = static_cast<const char*>(buf);
      size_t left = len;
      while (left > 0) {
        ssize_t n = ::write(out.get(), p, left);
        if (n < 0) {
          if (errno == EINTR) {
            continue;
          }
          return Errorf(ErrorCode::kInternal, "write {}: {}", *clean, ErrnoText(errno));
        }
        p += n;
        left -= static_cast<size_t>(n);
      }
      written = static_cast<uint64_t>(offset) + len;
    }
    if (r != ARCHIVE_EOF) {
      return Errorf(ErrorCode::kInvalidArgument, "{} is corrupt at {}: {}", archive_path, *clean,
                    archive_error_string(in.get()));
    }
    if (::ftruncate(out.get(), size) != 0) {
      return Errorf(ErrorCode::kInternal, "truncate {}: {}", *clean, ErrnoText(errno));
    }
  }
  return ImageLayout(dir, std::move(links));
}

Result<SourceImage> ReadSourceImage(const ImageLayout& layout,
                                    const std::optional<std::string>& wanted,
                                    const LayoutLimits& limits) {
  if (layout.Exists("index.json")) {
    return ReadOci(layout, wanted, limits);
  }
  if (layout.Exists("manifest.json")) {
    return ReadDockerSave(layout, wanted, limits);
  }
  return MakeError(ErrorCode::kInvalidArgument,
                   "not an image: neither an OCI image layout (index.json) nor a `docker save` "
                   "archive (manifest.json)");
}

Result<UniqueFd> OpenVerifiedBlob(const ImageLayout& layout, const SourceLayer& layer) {
  AIRLOCK_ASSIGN_OR_RETURN(UniqueFd fd, layout.Open(layer.path));
  AIRLOCK_ASSIGN_OR_RETURN(std::string want, DigestHex(layer.digest, "layer"));
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    return MakeError(ErrorCode::kInternal, "cannot initialise sha256");
  }
  std::vector<char> buf(1 << 20);
  uint64_t total = 0;
  for (;;) {
    ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return Errorf(ErrorCode::kInternal, "read {}: {}", layer.path, ErrnoText(errno));
    }
    if (n == 0) {
      break;
    }
    total += static_cast<uint64_t>(n);
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(n));
  }
  if (layer.size && *layer.size != total) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "refusing the image: layer {} is {} bytes, its descriptor says {}", layer.digest,
                  total, *layer.size);
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &md_len);
  std::string got = HexEncode(std::string_view(reinterpret_cast<const char*>(md), md_len));
  if (got != want) {
    return Errorf(ErrorCode::kInvalidArgument,
                  "refusing the image: layer {} ({}) does not match its digest (it hashes to "
                  "sha256:{})",
                  layer.digest, layer.path, got);
  }
  if (::lseek(fd.get(), 0, SEEK_SET) != 0) {
    return Errorf(ErrorCode::kInternal, "seek {}: {}", layer.path, ErrnoText(errno));
  }
  return fd;
}

std::string HostArchitecture() {
  struct utsname u {};
  ::uname(&u);
  std::string_view m = u.machine;
  if (m == "x86_64") {
    return "amd64";
  }
  if (m == "aarch64" || m == "arm64") {
    return "arm64";
  }
  if (m.starts_with("armv")) {
    return "arm";
  }
  if (m.size() == 4 && m[0] == 'i' && m.substr(2) == "86") {
    return "386";
  }
  return std::string(m);
}

}  // namespace airlock::images
