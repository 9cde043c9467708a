// Image layers (images/layer_unpacker.h): a layer is hostile input (an image from a registry,
// or one a user imports). The input is one layer, or two separated by "\n--\n" applied in
// order (tar, gzip or any compression libarchive detects), unpacked into a fresh directory.
// Beyond not crashing, nothing may appear next to that directory: an entry that escapes the
// root aborts the run.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>

#include "fuzz/fuzz_util.h"
#include "images/layer_unpacker.h"

namespace fs = std::filesystem;

namespace {

int MemFile(std::string_view bytes) {
  int fd = ::memfd_create("layer", MFD_CLOEXEC);
  if (fd < 0) std::abort();
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + off, bytes.size() - off);
    if (n <= 0) std::abort();
    off += static_cast<size_t>(n);
  }
  ::lseek(fd, 0, SEEK_SET);
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // <scratch>/case/rootfs is the root; <scratch>/case must hold nothing else afterwards.
  const fs::path box = fs::path(airlock::fuzz::ScratchDir()) / "case";
  const fs::path root = box / "rootfs";
  std::error_code ec;
  fs::remove_all(box, ec);
  fs::create_directories(root);
  int root_fd = ::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (root_fd < 0) std::abort();

  std::vector<airlock::images::LayerInput> layers;
  for (auto part : airlock::fuzz::SplitParts(airlock::fuzz::AsView(data, size), 2)) {
    layers.push_back({"layer" + std::to_string(layers.size()), MemFile(part)});
  }
  airlock::images::UnpackLimits limits{64 << 20, 10'000};
  (void)airlock::images::UnpackLayers(root_fd, layers, limits);
  for (auto& l : layers) ::close(l.fd);
  ::close(root_fd);

  for (const auto& e : fs::directory_iterator(box)) {
    if (e.path().filename() != "rootfs") {
      std::fprintf(stderr, "a layer wrote %s outside the root\n", e.path().c_str());
      std::abort();
    }
  }
  fs::remove_all(box, ec);
  return 0;
}
