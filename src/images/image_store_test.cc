#include "images/image_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "images/fs_util.h"
#include "images/test_archives.h"

namespace airlock::images {
namespace {

using testing::Compression;
using testing::Dir;
using ::testing::ElementsAre;
using testing::File;
using testing::Files;
using ::testing::HasSubstr;
using testing::ImageBuilder;
using testing::Symlink;

std::string Slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool IsDir(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool IsRegular(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool Exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

std::string ReadLink(const std::string& path) {
  char buf[4096];
  ssize_t n = ::readlink(path.c_str(), buf, sizeof buf);
  return n < 0 ? "" : std::string(buf, static_cast<size_t>(n));
}

ino_t Inode(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

std::string DirOf(const std::string& path) { return path.substr(0, path.rfind('/')); }

class ImageStoreTest : public ::testing::Test {
 protected:
  ImageStoreOptions Options() const {
    ImageStoreOptions o;
    o.root = scratch_.path() + "/home/images";
    o.builtin_dir = "";
    return o;
  }

  ImageStore Open(const ImageStoreOptions& options) {
    auto store = ImageStore::Open(options);
    if (!store) {
      ADD_FAILURE() << store.error().message;
      std::abort();
    }
    return std::move(*store);
  }
  ImageStore Open() { return Open(Options()); }

  // A simple one-layer image under a name of its own.
  ImageBuilder Simple(const std::string& content = "hello") {
    ImageBuilder b;
    b.Layer({Dir("etc"), File("etc/greeting", content)}).RefName("example/simple:1");
    return b;
  }

  std::string WriteOciTar(const ImageBuilder& b, const std::string& file = "image.tar") {
    std::string path = scratch_.path() + "/" + file;
    testing::WriteLayoutTar(path, b.OciFiles());
    return path;
  }

  std::string Tmp(const ImageStore& s) const { return s.root() + "/tmp"; }
  std::vector<std::string> Trees(const ImageStore& s) const {
    return testing::ListDirectory(s.root() + "/sha256");
  }

  testing::ScratchDir scratch_;
};

TEST_F(ImageStoreTest, ImportsAnOciLayoutDirectory) {
  ImageBuilder b;
  b.Layer({Dir("etc"), File("etc/hello", "hi\n"), Dir("usr"), Dir("usr/bin"),
           File("usr/bin/tool", "#!/bin/sh\n", 0755), Symlink("bin", "usr/bin")})
      .RuntimeConfig({{"Entrypoint", {"/bin/tool"}},
                      {"Cmd", {"--fast"}},
                      {"Env", {"A=1", "PATH=/usr/bin"}},
                      {"WorkingDir", "/work"},
                      {"User", "1000:1000"}})
      .RefName("example/app:1.0");
  std::string layout = scratch_.path() + "/layout";
  testing::WriteLayoutDir(layout, b.OciFiles());

  ImageStore store = Open();
  auto info = store.Import(layout);
  ASSERT_TRUE(info) << info.error().message;
  EXPECT_EQ(info->name, "example/app:1.0");
  EXPECT_EQ(info->digest, b.ManifestDigest());
  EXPECT_EQ(info->format, "oci");
  EXPECT_EQ(info->layers, 1u);
  EXPECT_FALSE(info->reused);

  auto image = store.Resolve("example/app:1.0");
  ASSERT_TRUE(image) << image.error().message;
  EXPECT_EQ(image->rootfs, store.root() + "/sha256/" + b.ManifestDigest().substr(7) + "/rootfs");
  EXPECT_EQ(Slurp(image->rootfs + "/etc/hello"), "hi\n");
  EXPECT_EQ(ReadLink(image->rootfs + "/bin"), "usr/bin");
  EXPECT_THAT(image->entrypoint, ElementsAre("/bin/tool"));
  EXPECT_THAT(image->cmd, ElementsAre("--fast"));
  EXPECT_THAT(image->env, ElementsAre("A=1", "PATH=/usr/bin"));
  EXPECT_EQ(image->workdir, "/work");
  EXPECT_EQ(image->user, "1000:1000");
  EXPECT_TRUE(image->host_binds.empty());
  EXPECT_TRUE(testing::ListDirectory(Tmp(store)).empty());
}

TEST_F(ImageStoreTest, ImportsAnOciTarballPlainOrCompressed) {
  ImageBuilder b = Simple();
  std::string plain = WriteOciTar(b);
  std::string gz = scratch_.path() + "/image.tar.gz";
  testing::WriteLayoutTar(gz, b.OciFiles(), Compression::kGzip);

  ImageStore store = Open();
  auto first = store.Import(plain);
  ASSERT_TRUE(first) << first.error().message;
  EXPECT_EQ(first->name, "example/simple:1");
  auto second = store.Import(gz, "example/simple:gz");
  ASSERT_TRUE(second) << second.error().message;
  EXPECT_EQ(second->digest, first->digest);
  auto image = store.Resolve("example/simple:1");
  ASSERT_TRUE(image);
  EXPECT_EQ(Slurp(image->rootfs + "/etc/greeting"), "hello");
}

TEST_F(ImageStoreTest, ImportsADockerSaveTarball) {
  ImageBuilder b;
  b.Layer({Dir("app"), File("app/one", "1")})
      .Layer({File("app/two", "2")})
      .RuntimeConfig({{"Cmd", {"/app/run"}}});
  std::string path = scratch_.path() + "/saved.tar";
  testing::WriteLayoutTar(path, b.DockerSaveFiles({"team/tool:2"}));

  ImageStore store = Open();
  auto info = store.Import(path);
  ASSERT_TRUE(info) << info.error().message;
  EXPECT_EQ(info->name, "team/tool:2");
  EXPECT_EQ(info->format, "docker-save");
  EXPECT_EQ(info->digest, b.ConfigDigest());  // docker save has no manifest blob
  EXPECT_EQ(info->layers, 2u);
  auto image = store.Resolve("team/tool:2");
  ASSERT_TRUE(image);
  EXPECT_EQ(Slurp(image->rootfs + "/app/one"), "1");
  EXPECT_EQ(Slurp(image->rootfs + "/app/two"), "2");
  EXPECT_THAT(image->cmd, ElementsAre("/app/run"));
}

TEST_F(ImageStoreTest, FollowsTheLinkDockerSaveWritesForARepeatedLayer) {
  ImageBuilder b;
  b.Layer({File("same", "x")}).Layer({File("same", "x")});
  Files files = b.DockerSaveFiles({"team/repeat:1"});
  std::vector<std::string> layer_paths;
  for (const auto& [path, data] : files) {
    if (path.ends_with("/layer.tar")) {
      layer_paths.push_back(path);
    }
  }
  ASSERT_EQ(layer_paths.size(), 2u);
  std::vector<testing::TarEntry> entries;
  for (const auto& [path, data] : files) {
    if (path != layer_paths[1]) {
      entries.push_back(File(path, data));
    }
  }
  entries.push_back(Symlink(layer_paths[1], "../" + layer_paths[0]));
  std::string tar = scratch_.path() + "/saved.tar";
  testing::WriteTar(tar, entries);

  ImageStore store = Open();
  auto info = store.Import(tar);
  ASSERT_TRUE(info) << info.error().message;
  EXPECT_EQ(info->layers, 2u);
}

TEST_F(ImageStoreTest, UnpacksGzipAndZstdLayers) {
  ImageBuilder b;
  b.Layer({File("gz", "gzip layer")}, Compression::kGzip);
  if (testing::ZstdWriterAvailable()) {
    b.Layer({File("zst", "zstd layer")}, Compression::kZstd);
  }
  ImageStore store = Open();
  auto info = store.Import(WriteOciTar(b));
  ASSERT_TRUE(info) << info.error().message;
  auto image = store.Resolve(info->name);
  ASSERT_TRUE(image);
  EXPECT_EQ(Slurp(image->rootfs + "/gz"), "gzip layer");
  if (testing::ZstdWriterAvailable()) {
    EXPECT_EQ(Slurp(image->rootfs + "/zst"), "zstd layer");
  }
}

TEST_F(ImageStoreTest, WhiteoutsDeleteLowerEntriesAndNeverAppear) {
  ImageBuilder b;
  b.Layer({Dir("a"), File("a/keep", "k"), File("a/gone", "g"), Dir("d"), File("d/x", "x"),
           File("f", "f")})
      .Layer({File("a/.wh.gone", ""), File(".wh.d", ""), File(".wh.f", ""),
              File("a/.wh.never-existed", ""), File("new", "n")})
      .Layer({File("d", "a file where the directory was")});
  ImageStore store = Open();
  auto info = store.Import(WriteOciTar(b));
  ASSERT_TRUE(info) << info.error().message;
  std::string root = store.Resolve(info->name)->rootfs;
  EXPECT_TRUE(IsRegular(root + "/a/keep"));
  EXPECT_FALSE(Exists(root + "/a/gone"));
  EXPECT_FALSE(Exists(root + "/f"));
  EXPECT_TRUE(IsRegular(root + "/d"));
  EXPECT_EQ(Slurp(root + "/d"), "a file where the directory was");
  EXPECT_TRUE(IsRegular(root + "/new"));
  for (const std::string& dir : {root, root + "/a"}) {
    for (const std::string& name : testing::ListDirectory(dir)) {
      EXPECT_FALSE(name.starts_with(".wh.")) << dir << "/" << name;
    }
  }
}

TEST_F(ImageStoreTest, OpaqueDirectoryHidesOnlyTheLowerLayers) {
  // The marker may come before or after the layer's own entries in that directory.
  for (bool marker_first : {true, false}) {
    SCOPED_TRACE(marker_first ? "marker first" : "marker last");
    std::vector<testing::TarEntry> upper = {Dir("o"), File("o/new", "n"), Dir("o/sub"),
                                            File("o/sub/new2", "n2")};
    auto marker = File("o/.wh..wh..opq", "");
    if (marker_first) {
      upper.insert(upper.begin() + 1, marker);
    } else {
      upper.push_back(marker);
    }
    ImageBuilder b;
    b.Layer({Dir("o"), File("o/old1", "1"), Dir("o/sub"), File("o/sub/old2", "2"),
             File("outside", "stays")})
        .Layer(upper)
        .RefName(marker_first ? "opaque:first" : "opaque:last");
    ImageStore store = Open();
    auto info = store.Import(WriteOciTar(b, marker_first ? "first.tar" : "last.tar"));
    ASSERT_TRUE(info) << info.error().message;
    std::string root = store.Resolve(info->name)->rootfs;
    EXPECT_THAT(testing::ListDirectory(root + "/o"), ElementsAre("new", "sub"));
    EXPECT_THAT(testing::ListDirectory(root + "/o/sub"), ElementsAre("new2"));
    EXPECT_TRUE(IsRegular(root + "/outside"));
  }
}

TEST_F(ImageStoreTest, ReimportingTheSameImageReusesTheTree) {
  ImageBuilder b = Simple();
  std::string tar = WriteOciTar(b);
  ImageStore store = Open();
  auto first = store.Import(tar);
  ASSERT_TRUE(first) << first.error().message;
  ino_t tree = Inode(store.Resolve(first->name)->rootfs);
  auto second = store.Import(tar, "other/name");
  ASSERT_TRUE(second) << second.error().message;
  EXPECT_TRUE(second->reused);
  EXPECT_EQ(second->name, "other/name:latest");
  EXPECT_EQ(second->digest, first->digest);
  EXPECT_EQ(Inode(store.Resolve("other/name")->rootfs), tree);
  EXPECT_EQ(Trees(store).size(), 1u);
  auto list = store.List();
  ASSERT_TRUE(list);
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].name, "example/simple:1");
  EXPECT_EQ((*list)[1].name, "other/name:latest");
}

TEST_F(ImageStoreTest, RemoveDeletesTheTreeWithItsLastName) {
  std::string tar = WriteOciTar(Simple());
  ImageStore store = Open();
  ASSERT_TRUE(store.Import(tar));
  ASSERT_TRUE(store.Import(tar, "second:1"));
  ASSERT_EQ(Trees(store).size(), 1u);

  ASSERT_TRUE(store.Remove("example/simple:1"));
  EXPECT_EQ(Trees(store).size(), 1u) << "second:1 still uses the tree";
  EXPECT_FALSE(store.Resolve("example/simple:1"));
  EXPECT_TRUE(store.Resolve("second:1"));

  ASSERT_TRUE(store.Remove("second:1"));
  EXPECT_TRUE(Trees(store).empty());
  EXPECT_TRUE(testing::ListDirectory(Tmp(store)).empty());
  auto again = store.Remove("second:1");
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, ErrorCode::kNotFound);
}

TEST_F(ImageStoreTest, GivingANameToAnotherImageMovesItAndCollectsTheOldTree) {
  ImageStore store = Open();
  ASSERT_TRUE(store.Import(WriteOciTar(Simple("v1"), "v1.tar"), "app:live"));
  auto v2 = store.Import(WriteOciTar(Simple("v2"), "v2.tar"), "app:live");
  ASSERT_TRUE(v2) << v2.error().message;
  EXPECT_EQ(Slurp(store.Resolve("app:live")->rootfs + "/etc/greeting"), "v2");
  EXPECT_THAT(Trees(store), ElementsAre(v2->digest.substr(7)));
}

TEST_F(ImageStoreTest, ConcurrentImportsOfOneImageShareOneTree) {
  std::string tar = WriteOciTar(Simple());
  ImageStore store = Open();
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      // Two stores on one root, as two processes would have.
      ImageStore own = Open();
      ImageStore& s = i % 2 ? own : store;
      auto info = s.Import(tar, i < 2 ? "example/simple:1" : "example/simple:2");
      if (info) {
        ++ok;
      } else {
        ADD_FAILURE() << info.error().message;
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  EXPECT_EQ(ok.load(), 4);
  EXPECT_EQ(Trees(store).size(), 1u);
  EXPECT_TRUE(testing::ListDirectory(Tmp(store)).empty());
  ASSERT_EQ(store.List()->size(), 2u);
  EXPECT_EQ(Slurp(store.Resolve("example/simple:2")->rootfs + "/etc/greeting"), "hello");
}

TEST_F(ImageStoreTest, NeedsANameWhenTheArchiveGivesNone) {
  ImageBuilder b = Simple();
  b.RefName("");
  std::string tar = WriteOciTar(b);
  ImageStore store = Open();
  auto unnamed = store.Import(tar);
  ASSERT_FALSE(unnamed);
  EXPECT_EQ(unnamed.error().code, ErrorCode::kInvalidArgument);
  EXPECT_THAT(unnamed.error().message, HasSubstr("give a name"));
  auto named = store.Import(tar, "given");
  ASSERT_TRUE(named) << named.error().message;
  EXPECT_EQ(named->name, "given:latest");
}

TEST_F(ImageStoreTest, RefusesBadNamesAndTheHostName) {
  std::string tar = WriteOciTar(Simple());
  ImageStore store = Open();
  for (const char* bad : {"Upper", "a/../b", "/abs", "x@sha256:00", "host", "host:1"}) {
    auto r = store.Import(tar, std::string(bad));
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << bad;
  }
  ImageBuilder odd = Simple();
  odd.RefName("Not A Valid Name");
  auto r = store.Import(WriteOciTar(odd, "odd.tar"));
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().message, HasSubstr("give a name"));
  EXPECT_FALSE(store.Remove("host"));
}

TEST_F(ImageStoreTest, PicksTheNamedManifestOfAMultiImageLayout) {
  ImageBuilder a = Simple("from a");
  a.RefName("multi/a:1");
  ImageBuilder b = Simple("from b");
  b.RefName("multi/b:1");
  Files files = a.OciFiles();
  Files fb = b.OciFiles();
  Json index = Json::parse(files["index.json"]);
  index["manifests"].push_back(Json::parse(fb["index.json"])["manifests"][0]);
  files.insert(fb.begin(), fb.end());
  files["index.json"] = index.dump();
  std::string layout = scratch_.path() + "/multi";
  testing::WriteLayoutDir(layout, files);

  ImageStore store = Open();
  auto ambiguous = store.Import(layout);
  ASSERT_FALSE(ambiguous);
  EXPECT_THAT(ambiguous.error().message, HasSubstr("holds 2 images"));
  auto picked = store.Import(layout, "multi/b:1");
  ASSERT_TRUE(picked) << picked.error().message;
  EXPECT_EQ(picked->digest, b.ManifestDigest());
  EXPECT_EQ(Slurp(store.Resolve("multi/b:1")->rootfs + "/etc/greeting"), "from b");
}

TEST_F(ImageStoreTest, CreatesMountPointsReplacingWhatIsInTheWay) {
  ImageBuilder b;
  b.Layer({Symlink("tmp", "var/tmp"), Dir("var"), Dir("var/tmp"), File("run", "not a dir"),
           Dir("etc"), File("etc/os-release", "ID=test"), Symlink("home", "/somewhere")});
  ImageStore store = Open();
  auto info = store.Import(WriteOciTar(b));
  ASSERT_TRUE(info) << info.error().message;
  std::string root = store.Resolve(info->name)->rootfs;
  for (const std::string& mp : DefaultMountPoints()) {
    EXPECT_TRUE(IsDir(root + mp)) << mp;
  }
  EXPECT_EQ(Slurp(root + "/etc/os-release"), "ID=test")
      << "an existing directory keeps its content";
  EXPECT_TRUE(IsDir(root + "/var/tmp"));
}

TEST_F(ImageStoreTest, UsesTheConfiguredMountPoints) {
  ImageStoreOptions o = Options();
  o.mount_points = {"/only/this"};
  ImageStore store = Open(o);
  auto info = store.Import(WriteOciTar(Simple()));
  ASSERT_TRUE(info);
  std::string root = store.Resolve(info->name)->rootfs;
  EXPECT_TRUE(IsDir(root + "/only/this"));
  EXPECT_FALSE(Exists(root + "/proc"));

  o.mount_points = {"relative"};
  EXPECT_FALSE(ImageStore::Open(o));
  o.mount_points = {"/a/../b"};
  EXPECT_FALSE(ImageStore::Open(o));
}

TEST_F(ImageStoreTest, HostImageIsASkeletonPlusReadOnlyBindsOfTheHostSystemDirectories) {
  ImageStore store = Open();
  auto host = store.Resolve("host");
  ASSERT_TRUE(host) << host.error().message;
  EXPECT_EQ(host->name, "host");
  EXPECT_EQ(host->rootfs, store.root() + "/host/rootfs");
  for (const std::string& mp : DefaultMountPoints()) {
    EXPECT_TRUE(IsDir(host->rootfs + mp)) << mp;
  }
  std::vector<std::string> expected_binds;
  for (const char* d : {"usr", "bin", "sbin", "lib", "lib64", "lib32", "libx32"}) {
    std::string on_host = std::string("/") + d;
    struct stat st {};
    if (::lstat(on_host.c_str(), &st) != 0) {
      EXPECT_FALSE(Exists(host->rootfs + on_host)) << d;
    } else if (S_ISLNK(st.st_mode)) {
      EXPECT_EQ(ReadLink(host->rootfs + on_host), ReadLink(on_host)) << d;
    } else if (S_ISDIR(st.st_mode)) {
      EXPECT_TRUE(IsDir(host->rootfs + on_host)) << d;
      EXPECT_TRUE(testing::ListDirectory(host->rootfs + on_host).empty()) << d;
      expected_binds.push_back(on_host);
    }
  }
  EXPECT_EQ(host->host_binds, expected_binds);
  EXPECT_THAT(Slurp(host->rootfs + "/etc/passwd"),
              HasSubstr("sandbox:x:1000:1000::/home/sandbox:/bin/sh\n"));
  EXPECT_THAT(Slurp(host->rootfs + "/etc/passwd"), HasSubstr("root:x:0:0:"));
  EXPECT_THAT(Slurp(host->rootfs + "/etc/group"), HasSubstr("sandbox:x:1000:"));
  EXPECT_THAT(Slurp(host->rootfs + "/etc/hosts"), HasSubstr("localhost"));
  EXPECT_TRUE(IsRegular(host->rootfs + "/etc/nsswitch.conf"));
  EXPECT_EQ(Slurp(host->rootfs + "/etc/resolv.conf"), "");
  EXPECT_FALSE(Exists(host->rootfs + "/etc/shadow"));

  ino_t first = Inode(host->rootfs);
  auto again = store.Resolve("host:latest");
  ASSERT_TRUE(again);
  EXPECT_EQ(Inode(again->rootfs), first) << "built once, reused after";
  EXPECT_TRUE(testing::ListDirectory(Tmp(store)).empty());
  EXPECT_TRUE(store.List()->empty()) << "host is built in, not a stored name";
}

TEST_F(ImageStoreTest, TheBuiltBaseImageRunsTheReferenceAgentWithBusyboxTools) {
  ImageStore store = Open();
  auto info = store.Import(AIRLOCK_BASE_IMAGE_TAR);
  ASSERT_TRUE(info) << info.error().message;
  EXPECT_EQ(info->name, "base:latest");
  auto base = store.Resolve("base");
  ASSERT_TRUE(base);
  EXPECT_THAT(base->entrypoint, ElementsAre("/usr/bin/airlock-agent"));
  ASSERT_TRUE(IsRegular(base->rootfs + "/usr/bin/airlock-agent"));
  EXPECT_EQ(::access((base->rootfs + "/usr/bin/airlock-agent").c_str(), X_OK), 0);
  EXPECT_EQ(ReadLink(base->rootfs + "/bin/sh"), "/bin/busybox");
  std::string busybox = base->rootfs + "/bin/busybox";
  ASSERT_TRUE(IsRegular(busybox));
  EXPECT_EQ(::access(busybox.c_str(), X_OK), 0);
  EXPECT_THAT(Slurp(base->rootfs + "/etc/passwd"),
              HasSubstr("sandbox:x:1000:1000::/home/sandbox:/bin/sh"));
  EXPECT_TRUE(IsDir(base->rootfs + "/tmp"));
  // Static, so it runs from the tree as it is.
  std::string cmd = busybox + " true";
  EXPECT_EQ(std::system(cmd.c_str()), 0);
}

TEST_F(ImageStoreTest, BaseIsImportedFromTheBuiltinDirectoryOnFirstUse) {
  ImageStoreOptions o = Options();
  o.builtin_dir = DirOf(AIRLOCK_BASE_IMAGE_TAR);
  ImageStore store = Open(o);
  EXPECT_TRUE(store.List()->empty());
  auto base = store.Resolve("base");
  ASSERT_TRUE(base) << base.error().message;
  EXPECT_EQ(base->name, "base:latest");
  EXPECT_EQ(ReadLink(base->rootfs + "/bin/sh"), "/bin/busybox");
  ASSERT_EQ(store.List()->size(), 1u);
  auto again = store.Resolve("base:latest");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->digest, base->digest);
}

TEST_F(ImageStoreTest, ARebuiltBuiltinBaseIsImportedAgainButAnOwnBaseIsKept) {
  std::string builtin = scratch_.path() + "/builtin";
  ASSERT_TRUE(MakeDirs(builtin));
  std::filesystem::copy_file(AIRLOCK_BASE_IMAGE_TAR, builtin + "/base.tar");
  ImageStoreOptions o = Options();
  o.builtin_dir = builtin;
  ImageStore store = Open(o);
  ASSERT_TRUE(store.Resolve("base"));
  std::string marker = store.root() + "/builtin-base.stamp";
  std::string first = Slurp(marker);
  ASSERT_FALSE(first.empty());
  // The build wrote base.tar again (a new reference agent): the next use imports it.
  struct timespec times[2] = {{0, UTIME_OMIT}, {1234567, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, (builtin + "/base.tar").c_str(), times, 0), 0);
  ASSERT_TRUE(store.Resolve("base"));
  EXPECT_NE(Slurp(marker), first);
  // An operator's own base replaces the built-in one for good.
  std::string tar = WriteOciTar(Simple("mine"), "own.tar");
  ASSERT_TRUE(store.Import(tar, std::string("base")));
  std::string digest = store.Resolve("base")->digest;
  struct timespec later[2] = {{0, UTIME_OMIT}, {7654321, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, (builtin + "/base.tar").c_str(), later, 0), 0);
  EXPECT_EQ(store.Resolve("base")->digest, digest);
}

TEST_F(ImageStoreTest, BaseIsNotFoundWithoutABuiltinDirectory) {
  ImageStore store = Open();
  auto base = store.Resolve("base");
  ASSERT_FALSE(base);
  EXPECT_EQ(base.error().code, ErrorCode::kNotFound);
  auto other = store.Resolve("nothing/here:1");
  ASSERT_FALSE(other);
  EXPECT_EQ(other.error().code, ErrorCode::kNotFound);
}

TEST_F(ImageStoreTest, OpenRemovesWhatACrashedImportLeftButNotALiveOne) {
  ImageStore store = Open();
  std::string dead = Tmp(store) + "/import-dead";
  ASSERT_TRUE(MakeDirs(dead + "/image/rootfs/etc"));
  testing::WriteFile(dead + "/image/rootfs/etc/x", "x");
  std::string live = Tmp(store) + "/import-live";
  ASSERT_TRUE(MakeDirs(live));
  auto held = FileLock::Lock(UniqueFd(::open(live.c_str(), O_RDONLY | O_DIRECTORY)), true);
  ASSERT_TRUE(held);

  ImageStore reopened = Open();
  EXPECT_FALSE(Exists(dead));
  EXPECT_TRUE(IsDir(live));
}

TEST_F(ImageStoreTest, ReportsProgressPerLayer) {
  ImageBuilder b;
  b.Layer({File("one", "1")}).Layer({File("two", "22")}).RefName("progress:1");
  std::vector<ImportProgress> seen;
  ImageStoreOptions o = Options();
  o.on_progress = [&](const ImportProgress& p) { seen.push_back(p); };
  ImageStore store = Open(o);
  ASSERT_TRUE(store.Import(WriteOciTar(b)));
  std::vector<ImportProgress> layers_done;
  for (const auto& p : seen) {
    if (p.stage == ImportProgress::Stage::kLayerDone) {
      layers_done.push_back(p);
    }
  }
  ASSERT_EQ(layers_done.size(), 2u);
  EXPECT_EQ(layers_done[1].layer, 1u);
  EXPECT_EQ(layers_done[1].layers, 2u);
  EXPECT_EQ(layers_done[1].bytes, 3u);
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back().stage, ImportProgress::Stage::kDone);
}

}  // namespace
}  // namespace airlock::images
