#include <malloc.h>
#include <sys/resource.h>

#include <csignal>

#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "common/log.h"
#include "controlplane/control_plane.h"
#include "controlplane/plug_points.h"
#include "images/image_store.h"

namespace airlock::controlplane {
namespace {

// Raises the descriptor limit to its hard maximum and makes the listeners' caps fit in it:
// the operator listener's connections and a reserve for everything else (the store, backend
// runtimes, upstream connections, files being served) come first, and the sandbox listener
// gets what is left, so no number of sandbox connections can starve the operator API.
void ReserveDescriptors(Config& config) {
  constexpr int64_t kReserve = 1024;
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  if (rl.rlim_cur < rl.rlim_max) {
    rlimit raised = rl;
    raised.rlim_cur = rl.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) rl = raised;
  }
  int64_t fds = rl.rlim_cur == RLIM_INFINITY ? int64_t{1} << 20 : static_cast<int64_t>(rl.rlim_cur);
  int64_t sandbox_share = fds - config.operator_max_connections - kReserve;
  if (sandbox_share < static_cast<int64_t>(config.limits.max_connections)) {
    int64_t capped = std::max<int64_t>(sandbox_share, 64);
    log::Warn("the descriptor limit is too low for server.max_connections; lowering it",
              {{"nofile", fds},
               {"operator_max_connections", config.operator_max_connections},
               {"reserve", kReserve},
               {"max_connections", config.limits.max_connections},
               {"now", capped}});
    config.limits.max_connections = static_cast<size_t>(capped);
  }
  log::Info("descriptors",
            {{"nofile", fds},
             {"sandbox_max_connections", config.limits.max_connections},
             {"operator_max_connections", config.operator_max_connections},
             {"max_connections_per_session", config.limits.max_connections_per_session}});
}

}  // namespace

// glibc gives the free top of each malloc heap back to the kernel as soon as it passes the trim
// threshold, which starts at 128 KiB and grows only with the largest mmap'd block freed. The
// worker threads' heaps cross it over and over under a steady load: SQLite frees a write
// group's statement journal and savepoint memory and allocates it again for the next group, so
// each group paid a madvise(MADV_DONTNEED) and then page faults to fault the memory back in
// (about a tenth of the process's CPU with events posted at full rate). Fixed thresholds stop
// that: up to 16 MiB of free memory stays at the top of each heap (one per worker thread at
// most), and blocks of 4 MiB or more still get their own mapping, returned when freed.
// HttpServer::MaybeTrimHeap still trims every heap after a burst of large request bodies.
// Setting either tunable in GLIBC_TUNABLES leaves both to glibc.
static void SetMallocThresholds() {
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables && (std::strstr(tunables, "glibc.malloc.trim_threshold") ||
                   std::strstr(tunables, "glibc.malloc.mmap_threshold"))) {
    return;
  }
  ::mallopt(M_MMAP_THRESHOLD, 4 << 20);
  ::mallopt(M_TRIM_THRESHOLD, 16 << 20);
}

int RunServer(Config config) {
  SetMallocThresholds();
  log::Init(config.log_level, config.log_format);
  if (std::string note = ApplyDefaultModel(config, [](const char* n) { return std::getenv(n); });
      !note.empty()) {
    log::Info(note, {{"model", config.default_model}});
  }
  std::error_code ec;
  std::filesystem::create_directories(config.home, ec);
  if (ec) {
    log::Error("cannot create the home directory",
               {{"home", config.home}, {"error", ec.message()}});
    return 1;
  }
  // Before anything in the home is opened: a second server must not touch the first one's
  // database, sockets or sandboxes, not even to reattach them.
  auto home_lock = HomeLock::Acquire(config.home);
  if (!home_lock) {
    log::Error("cannot start", {{"error", home_lock.error().message}});
    return 1;
  }
  auto store = OpenStore(config);
  if (!store) {
    log::Error("cannot open the store",
               {{"store", StoreDescription(config)}, {"error", store.error().message}});
    return 1;
  }
  images::ImageStoreOptions io_opts;
  io_opts.root = config.images_dir;
  io_opts.builtin_dir =
      config.builtin_images_dir.empty() ? images::DefaultBuiltinDir() : config.builtin_images_dir;
  std::shared_ptr<images::ImageStore> image_store;
  if (auto opened = images::ImageStore::Open(io_opts)) {
    image_store = std::make_shared<images::ImageStore>(std::move(*opened));
  } else {
    log::Error("cannot open the image store",
               {{"path", io_opts.root}, {"error", opened.error().message}});
  }
  auto backends = std::make_unique<sandbox::BackendRegistry>();
  RegisterBackends({config, image_store}, *backends);

  ReserveDescriptors(config);
  // A write to a client that has gone away must fail with EPIPE, not kill the server.
  std::signal(SIGPIPE, SIG_IGN);
  asio::io_context io(1);
  ControlPlane cp(std::move(config), io, std::move(*store), std::move(backends));
  cp.AdoptHomeLock(std::move(*home_lock));
  if (auto st = cp.Start(); !st) {
    log::Error("cannot start", {{"error", st.error().message}});
    return 1;
  }
  asio::signal_set signals(io, SIGTERM, SIGINT);
  signals.async_wait([&cp](const boost::system::error_code& ec, int sig) {
    if (ec) return;
    log::Info("signal received", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
    cp.Shutdown();
  });
  io.run();
  return 0;
}

}  // namespace airlock::controlplane
