// Image archives and layouts (images/image_layout.h): `airlock image import` reads archives
// a user brings, from anywhere. The first byte picks the input's shape:
//   0  the rest is an archive (tar, maybe compressed): StageArchive, then ReadSourceImage
//   1  an OCI layout: parts ("\n--\n") are index.json, then blobs
//   2  a `docker save` layout: parts are manifest.json, then blobs
// Blobs are stored under their own sha256, and a part may name a later blob N by "$N"
// ("sha256:<hex>"), "%N" (the bare hex, for docker-save paths) or "#N" (its size), so that
// the fuzzer gets past digest checks and into the parsing of manifests and configs.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "common/crypto.h"
#include "fuzz/fuzz_util.h"
#include "images/image_layout.h"

namespace fs = std::filesystem;

namespace {

void WriteFile(const fs::path& p, std::string_view bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string Substitute(std::string_view text, const std::vector<std::string>& hex,
                       const std::vector<size_t>& sizes) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if ((c == '$' || c == '%' || c == '#') && i + 1 < text.size() && text[i + 1] >= '1' &&
        text[i + 1] <= '9') {
      size_t n = static_cast<size_t>(text[i + 1] - '0');
      if (n < hex.size() && !hex[n].empty()) {
        out += c == '$' ? "sha256:" + hex[n] : c == '%' ? hex[n] : std::to_string(sizes[n]);
        ++i;
        continue;
      }
    }
    out += c;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace airlock::images;
  if (size == 0) return 0;
  const fs::path dir = fs::path(airlock::fuzz::ScratchDir()) / "layout";
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir);
  LayoutLimits limits{1 << 20, 64 << 20, 10'000};
  std::string_view in = airlock::fuzz::AsView(data + 1, size - 1);
  std::optional<ImageLayout> layout;
  if (data[0] % 3 == 0) {
    const fs::path archive = fs::path(airlock::fuzz::ScratchDir()) / "archive.tar";
    WriteFile(archive, in);
    auto staged = StageArchive(archive.string(), dir.string(), limits);
    if (staged) layout.emplace(std::move(*staged));
  } else {
    auto parts = airlock::fuzz::SplitParts(in, 8);
    std::vector<std::string> hex(parts.size());
    std::vector<size_t> sizes(parts.size());
    for (size_t i = parts.size(); i-- > 1;) {
      std::string blob = Substitute(parts[i], hex, sizes);
      hex[i] = airlock::Sha256Hex(blob);
      sizes[i] = blob.size();
      WriteFile(dir / "blobs" / "sha256" / hex[i], blob);
    }
    std::string top = Substitute(parts[0], hex, sizes);
    if (data[0] % 3 == 1) {
      WriteFile(dir / "oci-layout", R"({"imageLayoutVersion":"1.0.0"})");
      WriteFile(dir / "index.json", top);
    } else {
      WriteFile(dir / "manifest.json", top);
    }
    layout.emplace(dir.string(), std::map<std::string, std::string>{});
  }
  if (layout) {
    for (const std::optional<std::string>& wanted :
         {std::optional<std::string>(),
          std::optional<std::string>("docker.io/library/fuzz:latest")}) {
      auto image = ReadSourceImage(*layout, wanted, limits);
      if (!image) continue;
      for (const auto& layer : image->layers) (void)OpenVerifiedBlob(*layout, layer);
    }
  }
  fs::remove_all(dir, ec);
  return 0;
}
