// Hostile images: archives built to escape the store's directory, to plant privileged files,
// or to exhaust the disk. Each must be refused (nothing written anywhere, nothing left
// behind) or neutralised, as layer_unpacker.h documents. A canary directory beside the store
// is where an escape would land.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "images/fs_util.h"
#include "images/image_store.h"
#include "images/test_archives.h"

namespace airlock::images {
namespace {

using testing::CharDevice;
using testing::Dir;
using testing::Fifo;
using testing::File;
using testing::Files;
using testing::Hardlink;
using ::testing::HasSubstr;
using testing::ImageBuilder;
using testing::Symlink;
using testing::TarEntry;

std::string Slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct stat Lstat(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    st.st_mode = 0;
  }
  return st;
}

class HostileImageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    canary_ = scratch_.path() + "/canary";
    ASSERT_TRUE(MakeDirs(canary_));
    testing::WriteFile(canary_ + "/target", "original");
    ASSERT_TRUE(MakeDirs(canary_ + "/victim-dir"));
    testing::WriteFile(canary_ + "/victim-dir/victim", "still here");
    ::chmod((canary_ + "/victim-dir").c_str(), 0700);
  }

  ImageStoreOptions Options() const {
    ImageStoreOptions o;
    o.root = scratch_.path() + "/home/images";
    return o;
  }

  ImageStore Open(const ImageStoreOptions& o) {
    auto store = ImageStore::Open(o);
    if (!store) {
      ADD_FAILURE() << store.error().message;
      std::abort();
    }
    return std::move(*store);
  }

  // Imports an OCI tarball of `b` into a fresh store.
  Result<ImageInfo> ImportImage(const ImageBuilder& b, const ImageStoreOptions& o) {
    std::string tar = scratch_.path() + "/image.tar";
    testing::WriteLayoutTar(tar, b.OciFiles());
    ImageStore store = Open(o);
    return store.Import(tar, std::string("hostile:1"));
  }
  Result<ImageInfo> ImportImage(const ImageBuilder& b) { return ImportImage(b, Options()); }

  Result<ImageInfo> ImportLayers(const std::vector<std::vector<TarEntry>>& layers) {
    ImageBuilder b;
    for (const auto& l : layers) {
      b.Layer(l);
    }
    return ImportImage(b);
  }

  std::string Rootfs() {
    ImageStore store = Open(Options());
    auto r = store.Resolve("hostile:1");
    return r ? r->rootfs : "";
  }

  // The canary is as SetUp made it, and no file named "pwned" exists anywhere under the
  // scratch directory.
  void ExpectNoEscape() {
    EXPECT_EQ(Slurp(canary_ + "/target"), "original");
    EXPECT_EQ(Lstat(canary_ + "/target").st_nlink, 1u);
    EXPECT_EQ(Slurp(canary_ + "/victim-dir/victim"), "still here");
    EXPECT_EQ(Lstat(canary_ + "/victim-dir").st_mode & 07777, 0700u);
    std::vector<std::string> canary = testing::ListDirectory(canary_);
    EXPECT_EQ(canary, (std::vector<std::string>{"target", "victim-dir"}));
    for (const auto& e : std::filesystem::recursive_directory_iterator(scratch_.path())) {
      EXPECT_NE(e.path().filename(), "pwned") << e.path();
    }
  }

  // A refused import leaves the store as it was: no tree, no name, no temporary directory.
  void ExpectNothingLeft() {
    std::string root = Options().root;
    EXPECT_TRUE(testing::ListDirectory(root + "/sha256").empty());
    EXPECT_TRUE(testing::ListDirectory(root + "/tmp").empty());
    ImageStore store = Open(Options());
    EXPECT_TRUE(store.List()->empty());
  }

  void ExpectRefused(const Result<ImageInfo>& r, std::string_view why,
                     ErrorCode code = ErrorCode::kInvalidArgument) {
    ASSERT_FALSE(r) << "imported " << r->name;
    EXPECT_EQ(r.error().code, code) << r.error().message;
    EXPECT_THAT(r.error().message, HasSubstr(std::string(why)));
    ExpectNothingLeft();
    ExpectNoEscape();
  }

  testing::ScratchDir scratch_;
  std::string canary_;
};

// ------------------------------------------------------------------ digests and sizes

TEST_F(HostileImageTest, RefusesALayerThatDoesNotMatchItsDigest) {
  ImageBuilder b;
  b.Layer({File("etc/passwd", "root:x:0:0::/root:/bin/sh\n")});
  Files files = b.OciFiles();
  std::string& layer = files[b.LayerBlobPath(0)];
  layer[600] ^= 0x01;  // one bit inside the file's data; the size stays the same
  std::string tar = scratch_.path() + "/tampered.tar";
  testing::WriteLayoutTar(tar, files);
  ImageStore store = Open(Options());
  auto r = store.Import(tar, std::string("hostile:1"));
  ExpectRefused(r, "does not match its digest");
  EXPECT_THAT(r.error().message, HasSubstr(b.LayerBlobPath(0).substr(13)));
}

TEST_F(HostileImageTest, RefusesAManifestOrConfigThatDoesNotMatchItsDigest) {
  ImageBuilder b;
  b.Layer({File("x", "x")}).RuntimeConfig({{"Cmd", {"/bin/true"}}});
  for (bool manifest : {true, false}) {
    Files files = b.OciFiles();
    std::string path = manifest ? b.ManifestBlobPath() : b.ConfigBlobPath();
    std::string& blob = files[path];
    size_t pos = manifest ? blob.find("schemaVersion\":2") : blob.find("/bin/true");
    ASSERT_NE(pos, std::string::npos);
    blob.replace(pos, manifest ? 16 : 9, manifest ? "schemaVersion\":2" : "/bin/evil");
    if (manifest) {
      blob.replace(blob.find("\"layers\""), 8, "\"layers\"");  // same bytes: force a re-hash
      blob[blob.size() - 1] = ' ';  // "}" -> " ": same size, different digest
    }
    std::string tar = scratch_.path() + (manifest ? "/m.tar" : "/c.tar");
    testing::WriteLayoutTar(tar, files);
    ImageStore store = Open(Options());
    ExpectRefused(store.Import(tar, std::string("hostile:1")), "does not match its digest");
  }
}

TEST_F(HostileImageTest, RefusesADescriptorWhoseSizeIsWrong) {
  ImageBuilder b;
  b.Layer({File("x", "x")});
  Files files = b.OciFiles();
  Json manifest = Json::parse(files[b.ManifestBlobPath()]);
  manifest["layers"][0]["size"] = manifest["layers"][0]["size"].get<int64_t>() + 1;
  std::string text = manifest.dump();
  files.erase(b.ManifestBlobPath());
  files["blobs/sha256/" + testing::Sha256Digest(text).substr(7)] = text;
  Json index = Json::parse(files["index.json"]);
  index["manifests"][0]["digest"] = testing::Sha256Digest(text);
  index["manifests"][0]["size"] = text.size();
  files["index.json"] = index.dump();
  std::string tar = scratch_.path() + "/size.tar";
  testing::WriteLayoutTar(tar, files);
  ImageStore store = Open(Options());
  ExpectRefused(store.Import(tar, std::string("hostile:1")), "its descriptor says");
}

TEST_F(HostileImageTest, RefusesADockerSaveLayerThatDoesNotMatchItsDiffId) {
  ImageBuilder b;
  b.Layer({File("x", "original")});
  Files files = b.DockerSaveFiles({"hostile:1"});
  for (auto& [path, data] : files) {
    if (path.ends_with("/layer.tar")) {
      data.replace(data.find("original"), 8, "modified");
    }
  }
  std::string tar = scratch_.path() + "/saved.tar";
  testing::WriteLayoutTar(tar, files);
  ImageStore store = Open(Options());
  ExpectRefused(store.Import(tar), "does not match its digest");
}

// ------------------------------------------------------------------ path escapes

TEST_F(HostileImageTest, RefusesADotDotEntry) {
  ExpectRefused(ImportLayers({{File("ok", "fine"), File("../../../../../pwned", "x")}}),
                "\"..\" component");
  ExpectRefused(ImportLayers({{Dir("a"), File("a/../../pwned", "x")}}), "\"..\" component");
}

TEST_F(HostileImageTest, RefusesAnAbsolutePath) {
  auto r = ImportLayers({{File(canary_ + "/pwned", "x")}});
  ExpectRefused(r, "absolute");
  EXPECT_THAT(r.error().message, HasSubstr(canary_ + "/pwned"));
}

TEST_F(HostileImageTest, RefusesWritingThroughASymlinkFromALowerLayer) {
  // Layer 1 plants a link to the canary (absolute, then relative climbing to /); layer 2
  // writes under it.
  std::string climb = "../../../../../../../../../../../../.." + canary_;
  for (const std::string& target : {canary_, climb}) {
    SCOPED_TRACE(target);
    auto r = ImportLayers({{Symlink("evil", target)}, {File("evil/pwned", "x")}});
    ExpectRefused(r, "symlink");
    EXPECT_THAT(r.error().message, HasSubstr("evil/pwned"));
  }
}

TEST_F(HostileImageTest, RefusesWritingThroughASymlinkOfTheSameLayer) {
  ExpectRefused(ImportLayers({{Dir("d"), Symlink("d/link", canary_), Dir("d/link/sub"),
                               File("d/link/sub/pwned", "x")}}),
                "symlink");
}

TEST_F(HostileImageTest, RefusesAWhiteoutOrOpaqueMarkerThroughASymlink) {
  ExpectRefused(
      ImportLayers({{Symlink("evil", canary_ + "/victim-dir")}, {File("evil/.wh.victim", "")}}),
      "symlink");
  ExpectRefused(
      ImportLayers({{Symlink("evil", canary_ + "/victim-dir")}, {File("evil/.wh..wh..opq", "")}}),
      "symlink");
  ExpectRefused(ImportLayers({{Symlink("evil", canary_)}, {File("evil/.wh.victim-dir", "")}}),
                "symlink");
}

TEST_F(HostileImageTest, AFileOverASymlinkReplacesTheLinkNotItsTarget) {
  auto r = ImportLayers({{Symlink("f", canary_ + "/target"), Symlink("g", canary_ + "/target")},
                         {File("f", "new content"), Dir("g")}});
  ASSERT_TRUE(r) << r.error().message;
  std::string root = Rootfs();
  EXPECT_TRUE(S_ISREG(Lstat(root + "/f").st_mode));
  EXPECT_EQ(Slurp(root + "/f"), "new content");
  EXPECT_TRUE(S_ISDIR(Lstat(root + "/g").st_mode));
  ExpectNoEscape();
}

TEST_F(HostileImageTest, ADeferredDirectoryModeCannotLandOutsideThroughALaterSymlink) {
  // "x/victim-dir" is created 0777 and "x" then becomes a link to the canary: an extractor
  // that sets directory modes at the end would chmod the canary's directory.
  auto r = ImportLayers({{Dir("x"), Dir("x/victim-dir", 0777), Symlink("x", canary_)}});
  ASSERT_TRUE(r) << r.error().message;
  ExpectNoEscape();
}

TEST_F(HostileImageTest, RefusesAHardLinkToOutsideTheTree) {
  ExpectRefused(ImportLayers({{Hardlink("h", "../../../../../../canary/target")}}), "\"..\"");
  ExpectRefused(ImportLayers({{Hardlink("h", canary_ + "/target")}}), "absolute");
  ExpectRefused(ImportLayers({{Symlink("evil", canary_)}, {Hardlink("h", "evil/target")}}),
                "symlink");
  ExpectRefused(ImportLayers({{Hardlink("h", "missing")}}), "not in the image");
  ExpectRefused(ImportLayers({{Dir("d"), Hardlink("h", "d")}}), "directory");
}

TEST_F(HostileImageTest, AHardLinkInsideTheTreeWorksAndALaterLayerDoesNotWriteThroughIt) {
  auto r = ImportLayers({{File("a", "shared"), Hardlink("b", "a")}, {File("b", "replaced")}});
  ASSERT_TRUE(r) << r.error().message;
  std::string root = Rootfs();
  EXPECT_EQ(Slurp(root + "/a"), "shared");
  EXPECT_EQ(Slurp(root + "/b"), "replaced");

  auto linked = ImportLayers({{File("a", "one"), Hardlink("b", "a")}});
  ASSERT_TRUE(linked) << linked.error().message;
  root = Rootfs();
  EXPECT_EQ(Lstat(root + "/a").st_ino, Lstat(root + "/b").st_ino);
}

TEST_F(HostileImageTest, RefusesAnArchiveEntryOfTheOuterTarballWithDotDot) {
  ImageBuilder b;
  b.Layer({File("x", "x")});
  std::vector<TarEntry> entries;
  for (const auto& [path, data] : b.OciFiles()) {
    entries.push_back(File(path, data));
  }
  entries.push_back(File("../../pwned", "x"));
  std::string tar = scratch_.path() + "/outer.tar";
  testing::WriteTar(tar, entries);
  ImageStore store = Open(Options());
  ExpectRefused(store.Import(tar, std::string("hostile:1")), "\"..\" component");
}

TEST_F(HostileImageTest, RefusesADockerSaveLayerPathOutsideTheArchive) {
  ImageBuilder b;
  b.Layer({File("x", "x")});
  Files files = b.DockerSaveFiles({"hostile:1"});
  Json manifest = Json::parse(files["manifest.json"]);
  manifest[0]["Layers"][0] = "../../../../etc/passwd";
  files["manifest.json"] = manifest.dump();
  std::string tar = scratch_.path() + "/saved.tar";
  testing::WriteLayoutTar(tar, files);
  ImageStore store = Open(Options());
  ExpectRefused(store.Import(tar), "\"..\" component");
}

TEST_F(HostileImageTest, RefusesALayoutBlobThatLinksOutOfTheLayout) {
  ImageBuilder b;
  b.Layer({File("x", "x")});
  std::string layout = scratch_.path() + "/layout";
  testing::WriteLayoutDir(layout, b.OciFiles());
  std::string blob = layout + "/" + b.LayerBlobPath(0);
  ASSERT_EQ(::unlink(blob.c_str()), 0);
  ASSERT_EQ(::symlink((canary_ + "/target").c_str(), blob.c_str()), 0);
  ImageStore store = Open(Options());
  ExpectRefused(store.Import(layout, std::string("hostile:1")), "leaves the layout");
}

TEST_F(HostileImageTest, MountPointsThatAreSymlinksAreReplacedNotFollowed) {
  auto r = ImportLayers({{Symlink("tmp", canary_), Symlink("etc", "../../../../../../.." + canary_),
                          Symlink("home", canary_)}});
  ASSERT_TRUE(r) << r.error().message;
  std::string root = Rootfs();
  for (const char* mp : {"/tmp", "/etc", "/home", "/home/sandbox"}) {
    EXPECT_TRUE(S_ISDIR(Lstat(root + mp).st_mode)) << mp;
  }
  ExpectNoEscape();
}

// ------------------------------------------------------------------ neutralised entries

TEST_F(HostileImageTest, SkipsDeviceNodesAndFifos) {
  auto r = ImportLayers({{Dir("dev2"), CharDevice("dev2/mem"), Fifo("fifo"), File("ok", "ok")}});
  ASSERT_TRUE(r) << r.error().message;
  std::string root = Rootfs();
  EXPECT_EQ(Lstat(root + "/dev2/mem").st_mode, 0u);
  EXPECT_EQ(Lstat(root + "/fifo").st_mode, 0u);
  EXPECT_EQ(Slurp(root + "/ok"), "ok");
}

TEST_F(HostileImageTest, StripsSetuidSetgidAndStickyBitsFromFiles) {
  auto r =
      ImportLayers({{File("suid", "x", 04755), File("sgid", "x", 02755), File("sticky", "x", 01644),
                     Dir("tmpdir", 01777), Dir("sgiddir", 02775)}});
  ASSERT_TRUE(r) << r.error().message;
  std::string root = Rootfs();
  EXPECT_EQ(Lstat(root + "/suid").st_mode & 07777, 0755u);
  EXPECT_EQ(Lstat(root + "/sgid").st_mode & 07777, 0755u);
  EXPECT_EQ(Lstat(root + "/sticky").st_mode & 07777, 0644u);
  EXPECT_EQ(Lstat(root + "/tmpdir").st_mode & 07777, 01777u) << "a directory keeps sticky";
  EXPECT_EQ(Lstat(root + "/sgiddir").st_mode & 07777, 0775u);
}

TEST_F(HostileImageTest, KeepsOwnershipOnlyWhenRunningAsRoot) {
  TarEntry owned = File("owned", "x");
  owned.uid = 4242;
  owned.gid = 4343;
  auto r = ImportLayers({{owned}});
  ASSERT_TRUE(r) << r.error().message;
  struct stat st = Lstat(Rootfs() + "/owned");
  if (::geteuid() == 0) {
    EXPECT_EQ(st.st_uid, 4242u);
    EXPECT_EQ(st.st_gid, 4343u);
  } else {
    EXPECT_EQ(st.st_uid, ::geteuid());
  }
}

// ------------------------------------------------------------------ exhaustion

TEST_F(HostileImageTest, RefusesMoreEntriesThanTheLimit) {
  std::vector<TarEntry> many;
  for (int i = 0; i < 100; ++i) {
    many.push_back(File("f" + std::to_string(i), ""));
  }
  ImageBuilder b;
  b.Layer(many);
  ImageStoreOptions o = Options();
  o.max_entries = 50;
  auto r = ImportImage(b, o);
  ExpectRefused(r, "more than 50 entries", ErrorCode::kResourceExhausted);
}

TEST_F(HostileImageTest, RefusesMoreBytesThanTheLimit) {
  ImageBuilder b;
  b.Layer({File("small", std::string(600, 'a'))}).Layer({File("big", std::string(600, 'b'))});
  ImageStoreOptions o = Options();
  o.max_unpacked_bytes = 1000;
  auto r = ImportImage(b, o);
  ExpectRefused(r, "more than 1000 bytes", ErrorCode::kResourceExhausted);
}

TEST_F(HostileImageTest, RefusesAnArchiveLargerThanTheLimit) {
  ImageBuilder b;
  b.Layer({File("big", std::string(20000, 'b'))});
  ImageStoreOptions o = Options();
  o.max_archive_bytes = 10000;
  ExpectRefused(ImportImage(b, o), "more than 10000 bytes", ErrorCode::kResourceExhausted);
}

TEST_F(HostileImageTest, RefusesJsonLargerThanTheLimit) {
  ImageBuilder b;
  b.Layer({File("x", "x")}).RuntimeConfig({{"Env", {std::string(5000, 'e')}}});
  ImageStoreOptions o = Options();
  o.max_json_bytes = 4096;
  ExpectRefused(ImportImage(b, o), "4096 byte", ErrorCode::kPayloadTooLarge);
}

TEST_F(HostileImageTest, RefusesEntriesNestedTooDeep) {
  std::string deep;
  for (int i = 0; i < 300; ++i) {
    deep += "d/";
  }
  ExpectRefused(ImportLayers({{File(deep + "pwned", "x")}}), "nested deeper");
}

TEST_F(HostileImageTest, RefusesACorruptLayerAndLeavesNothing) {
  ImageBuilder b;
  b.Layer({File("x", std::string(4000, 'x'))});
  Files files = b.OciFiles();
  std::string& layer = files[b.LayerBlobPath(0)];
  std::string truncated = layer.substr(0, 1000);
  // Re-point the manifest at the truncated blob, so the digests match and the tar is bad.
  Json manifest = Json::parse(files[b.ManifestBlobPath()]);
  manifest["layers"][0]["digest"] = testing::Sha256Digest(truncated);
  manifest["layers"][0]["size"] = truncated.size();
  files.erase(b.LayerBlobPath(0));
  files["blobs/sha256/" + testing::Sha256Digest(truncated).substr(7)] = truncated;
  std::string mtext = manifest.dump();
  files.erase(b.ManifestBlobPath());
  files["blobs/sha256/" + testing::Sha256Digest(mtext).substr(7)] = mtext;
  Json index = Json::parse(files["index.json"]);
  index["manifests"][0]["digest"] = testing::Sha256Digest(mtext);
  index["manifests"][0]["size"] = mtext.size();
  files["index.json"] = index.dump();
  std::string tar = scratch_.path() + "/corrupt.tar";
  testing::WriteLayoutTar(tar, files);
  ImageStore store = Open(Options());
  ExpectRefused(store.Import(tar, std::string("hostile:1")), "corrupt");
}

TEST_F(HostileImageTest, UnpackingLeavesTheProcessWorkingDirectoryAlone) {
  char before[4096];
  ASSERT_NE(::getcwd(before, sizeof before), nullptr);
  ImageBuilder b;
  b.Layer({File("x", "x")});
  ASSERT_TRUE(ImportImage(b));
  char after[4096];
  ASSERT_NE(::getcwd(after, sizeof after), nullptr);
  EXPECT_STREQ(before, after);
}

}  // namespace
}  // namespace airlock::images
