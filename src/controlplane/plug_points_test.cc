#include "controlplane/plug_points.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <set>
#include <string>

namespace airlock::controlplane {
namespace {

// Each table: names unique and non-empty, a description each, every kind found by its name.
template <typename Interface, typename Context>
void ExpectWellFormed(PlugTable<Interface, Context> table) {
  std::set<std::string_view> names;
  for (const auto& kind : table) {
    EXPECT_FALSE(kind.name.empty());
    EXPECT_FALSE(kind.description.empty()) << kind.name;
    EXPECT_NE(kind.make, nullptr) << kind.name;
    EXPECT_TRUE(names.insert(kind.name).second) << "twice: " << kind.name;
    auto found = FindKind(table, "x.kind", kind.name);
    ASSERT_TRUE(found.has_value()) << found.error().message;
    EXPECT_EQ(*found, &kind);
  }
}

// An unknown name is refused naming the setting, the name and every kind of the table.
template <typename Interface, typename Context>
void ExpectUnknownListsKinds(PlugTable<Interface, Context> table) {
  auto found = FindKind(table, "x.kind", "no-such-kind");
  ASSERT_FALSE(found.has_value());
  EXPECT_EQ(found.error().code, ErrorCode::kInvalidArgument);
  const std::string& message = found.error().message;
  EXPECT_NE(message.find("x.kind = \"no-such-kind\""), std::string::npos) << message;
  for (const auto& kind : table) {
    EXPECT_NE(message.find(kind.name), std::string::npos) << message;
  }
}

TEST(PlugPointsTest, EveryKindResolvesByItsName) {
  ExpectWellFormed(StoreKinds());
  ExpectWellFormed(BackendKinds());
  ExpectWellFormed(ProviderKinds());
  ExpectWellFormed(BlobStoreKinds());
}

TEST(PlugPointsTest, UnknownKindIsRefusedListingTheKnownOnes) {
  ExpectUnknownListsKinds(StoreKinds());
  ExpectUnknownListsKinds(BackendKinds());
  ExpectUnknownListsKinds(ProviderKinds());
  ExpectUnknownListsKinds(BlobStoreKinds());
}

TEST(PlugPointsTest, TablesHoldTheKindsTheConfigurationNames) {
  auto names = [](auto table) { return KindNames(table); };
  EXPECT_EQ(names(StoreKinds()), "sqlite, postgres");
  EXPECT_EQ(names(BackendKinds()), "process, oci, microvm");
  EXPECT_EQ(names(ProviderKinds()), "openai, anthropic, scripted");
  EXPECT_EQ(names(BlobStoreKinds()), "local, s3");
}

TEST(PlugPointsTest, ConfigRefusesAnUnknownKindListingTheTable) {
  auto error = [](const std::string& toml) {
    auto c = ParseConfig(toml, "/h");
    EXPECT_FALSE(c.has_value()) << toml;
    return c.has_value() ? std::string() : c.error().message;
  };
  EXPECT_EQ(error("[store]\nkind = \"mysql\"\n"),
            "store.kind = \"mysql\" is not supported (supported: sqlite, postgres)");
  EXPECT_EQ(error("[files]\nstore = \"gcs\"\n"),
            "files.store = \"gcs\" is not supported (supported: local, s3)");
  EXPECT_EQ(error("[providers.p]\nkind = \"gemini\"\n"),
            "providers.p.kind = \"gemini\" is not supported (supported: openai, anthropic, "
            "scripted)");
  // Before, a misspelt default backend was accepted and every session that named none failed.
  EXPECT_EQ(error("[sandbox]\ndefault_backend = \"firecracker\"\n"),
            "sandbox.default_backend = \"firecracker\" is not supported (supported: process, oci, "
            "microvm)");
}

TEST(PlugPointsTest, MicrovmSettingsAreParsedByTheirKind) {
  auto c = ParseConfig(
      "[sandbox.microvm]\ntemplates = false\nmemory_mb = 192\nqemu_overhead_mb = 300\n"
      "spare_qemus = 0\n",
      "/h");
  ASSERT_TRUE(c.has_value()) << c.error().message;
  EXPECT_FALSE(c->microvm.templates);
  EXPECT_EQ(c->microvm.memory_mb, 192);
  EXPECT_EQ(c->microvm.qemu_overhead_mb, 300);
  EXPECT_TRUE(ParseConfig("", "/h")->microvm.templates) << "templates are the default";
  EXPECT_EQ(ParseConfig("", "/h")->microvm.qemu_overhead_mb, 192);
  EXPECT_EQ(c->microvm.spare_qemus, 0);
  EXPECT_EQ(ParseConfig("", "/h")->microvm.spare_qemus, 1) << "one spare QEMU per template";
  EXPECT_FALSE(ParseConfig("[sandbox.microvm]\nspare_qemus = -1\n", "/h").has_value());
  EXPECT_FALSE(ParseConfig("[sandbox.microvm]\ntemplates = 1\n", "/h").has_value());
  // Below what QEMU itself needs: every VM would be killed at its start.
  EXPECT_FALSE(ParseConfig("[sandbox.microvm]\nqemu_overhead_mb = 16\n", "/h").has_value());
}

class PlugPointsDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "airlock-plug-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST_F(PlugPointsDirTest, StoreOpenedByNameWorks) {
  auto config = ParseConfig("[store]\nkind = \"sqlite\"\n", dir_);
  ASSERT_TRUE(config.has_value()) << config.error().message;
  auto store = OpenStore(*config);
  ASSERT_TRUE(store.has_value()) << store.error().message;
  ASSERT_TRUE((*store)->Migrate().has_value());
  ASSERT_TRUE((*store)->AddOperatorKey({.name = "k", .hash = "h", .created_at = 1}).has_value());
  auto keys = (*store)->ListOperatorKeys();
  ASSERT_TRUE(keys.has_value()) << keys.error().message;
  ASSERT_EQ(keys->size(), 1u);
  EXPECT_EQ(keys->front().name, "k");
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/airlock.db"));
}

TEST_F(PlugPointsDirTest, StoreOfAnUnknownKindIsNotOpened) {
  Config config;
  config.store_kind = "mysql";
  auto store = OpenStore(config);
  ASSERT_FALSE(store.has_value());
  EXPECT_NE(store.error().message.find("supported: sqlite, postgres"), std::string::npos);
}

TEST_F(PlugPointsDirTest, BlobStoreOpenedByName) {
  auto config = ParseConfig("", dir_);
  ASSERT_TRUE(config.has_value()) << config.error().message;
  auto blobs = OpenBlobStore(config->files);
  ASSERT_TRUE(blobs.has_value()) << blobs.error().message;
  EXPECT_EQ((*blobs)->kind(), "local");
  auto used = (*blobs)->UsedBytes("s1");
  ASSERT_TRUE(used.has_value()) << used.error().message;
  EXPECT_EQ(*used, 0);
}

TEST(PlugPointsTest, ProviderMadeByName) {
  asio::io_context io;
  ProviderConfig p;
  p.kind = "scripted";
  p.builtin_demo = true;
  auto provider = MakeProvider({.name = "demo", .config = p, .io = io});
  ASSERT_TRUE(provider.has_value()) << provider.error().message;
  EXPECT_EQ((*provider)->kind(), "scripted");

  p.kind = "anthropic";
  p.builtin_demo = false;
  p.base_url = "https://api.anthropic.com";
  auto keyless = MakeProvider({.name = "a", .config = p, .io = io});
  ASSERT_FALSE(keyless.has_value());
  EXPECT_EQ(keyless.error().message, "no key: set api_key_env");
}

TEST_F(PlugPointsDirTest, EveryBackendKindIsRegisteredOrSaysWhyNot) {
  auto config = ParseConfig("", dir_);
  ASSERT_TRUE(config.has_value()) << config.error().message;
  sandbox::BackendRegistry backends;
  RegisterBackends({*config, nullptr}, backends);
  for (const auto& kind : BackendKinds()) {
    auto why = backends.UnavailableReason(kind.name);
    EXPECT_TRUE(backends.Find(kind.name) != nullptr || (why && !why->empty())) << kind.name;
  }
  ASSERT_NE(backends.Find("process"), nullptr);
  EXPECT_EQ(backends.Find("process")->name(), "process");
}

}  // namespace
}  // namespace airlock::controlplane
