#pragma once

// The plug points of the control plane: the stores, sandbox backends, LLM providers and blob
// stores it can run on. Each has one table here, and nowhere else names an implementation: the
// configuration chooses a kind by name, the table builds it. A new kind (a microvm or
// Kubernetes backend, another database) is one entry in its table.

#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "common/asio.h"
#include "common/result.h"
#include "controlplane/config.h"
#include "files/blob_store.h"
#include "images/image_store.h"
#include "llm/provider.h"
#include "sandbox/backend.h"
#include "store/store.h"

namespace airlock::controlplane {

class TableReader;  // config_reader.h

// One implementation of a plug point: its name in the configuration, one line saying what it
// is, how it reads its own settings when the configuration is parsed, and how it is built
// from them (`Context`) at start.
template <typename Interface, typename Context>
struct PlugKind {
  using Factory = Result<std::unique_ptr<Interface>> (*)(const Context&);
  // Reads the kind's own keys from its section of the configuration file into `config` and
  // checks them. It reads every key before it checks any, so that a reader it was given
  // afterwards knows all the keys that are the kind's (config.cc refuses a key of another
  // kind by name). Null: the kind has no settings of its own.
  using Parser = Status (*)(TableReader& section, Config& config);
  std::string_view name;
  std::string_view description;
  Factory make;
  Parser parse = nullptr;
};

template <typename Interface, typename Context>
using PlugTable = std::span<const PlugKind<Interface, Context>>;

// The names of a table's kinds, in table order: "a, b, c".
template <typename Interface, typename Context>
std::string KindNames(PlugTable<Interface, Context> table) {
  std::string names;
  for (const auto& k : table) names += (names.empty() ? "" : ", ") + std::string(k.name);
  return names;
}

// The kind called `name`. kInvalidArgument otherwise, naming the setting (`setting`, e.g.
// "store.kind") and listing the kinds there are.
template <typename Interface, typename Context>
Result<const PlugKind<Interface, Context>*> FindKind(PlugTable<Interface, Context> table,
                                                     std::string_view setting,
                                                     std::string_view name) {
  for (const auto& k : table) {
    if (k.name == name) return &k;
  }
  return Errorf(ErrorCode::kInvalidArgument, "{} = \"{}\" is not supported (supported: {})",
                setting, name, KindNames(table));
}

// Stores: [store] kind. Exactly one is opened; the control plane's state lives in it. Each
// kind's keys are in [store] beside `kind`.
using StoreKind = PlugKind<store::Store, Config>;
PlugTable<store::Store, Config> StoreKinds();
// The store that [store] configures.
Result<std::unique_ptr<store::Store>> OpenStore(const Config& config);

// Sandbox backends: every kind is offered at once, and each session names the one it runs on
// (sandbox.default_backend when it names none). A kind's settings are [sandbox.<kind>].
struct BackendContext {
  const Config& config;
  // May be null when the image store could not be opened: backends that run images then
  // refuse sessions with that reason instead of failing to start.
  std::shared_ptr<images::ImageStore> images;
};
using BackendKind = PlugKind<sandbox::Backend, BackendContext>;
PlugTable<sandbox::Backend, BackendContext> BackendKinds();
// Builds every backend of the table into `backends`. One that cannot run on this host is
// marked unavailable with its reason: sessions asking for it get that reason, and the server
// still serves everything else.
void RegisterBackends(const BackendContext& context, sandbox::BackendRegistry& backends);

// LLM providers: [providers.NAME] kind. One is built for each configured provider. Their
// settings are common to all kinds and read by config.cc (no `parse`).
struct ProviderContext {
  std::string_view name;  // the provider's name in [providers.NAME]
  const ProviderConfig& config;
  asio::io_context& io;  // where an HTTP provider's upstream connections run
};
using ProviderKind = PlugKind<llm::Provider, ProviderContext>;
PlugTable<llm::Provider, ProviderContext> ProviderKinds();
// The provider of [providers.NAME]; an error says why it cannot serve calls.
Result<std::unique_ptr<llm::Provider>> MakeProvider(const ProviderContext& context);

// Blob stores: [files] store. Exactly one holds the sessions' files. A kind's settings are
// [files.<kind>].
using BlobStoreKind = PlugKind<files::BlobStore, FilesConfig>;
PlugTable<files::BlobStore, FilesConfig> BlobStoreKinds();
// The blob store that [files] configures.
Result<std::unique_ptr<files::BlobStore>> OpenBlobStore(const FilesConfig& config);

}  // namespace airlock::controlplane
