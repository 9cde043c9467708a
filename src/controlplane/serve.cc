#include <csignal>
#include <filesystem>

#include "common/log.h"
#include "controlplane/control_plane.h"
#include "sandbox/backend_process.h"

namespace airlock::controlplane {

int RunServer(Config config) {
  log::Init(config.log_level, config.log_format);
  std::error_code ec;
  std::filesystem::create_directories(config.home, ec);
  if (ec) {
    log::Error("cannot create the home directory", {{"home", config.home}, {"error", ec.message()}});
    return 1;
  }
  store::StoreOptions so;
  so.path = config.store_path;
  so.synchronous = config.store_synchronous;
  so.busy_timeout_ms = config.store_busy_timeout_ms;
  auto store = store::OpenSqliteStore(so);
  if (!store) {
    log::Error("cannot open the store", {{"path", so.path}, {"error", store.error().message}});
    return 1;
  }
  auto backends = std::make_unique<sandbox::BackendRegistry>();
  backends->Register(sandbox::MakeProcessBackend());

  // A write to a client that has gone away must fail with EPIPE, not kill the server.
  std::signal(SIGPIPE, SIG_IGN);
  asio::io_context io(1);
  ControlPlane cp(std::move(config), io, std::move(*store), std::move(backends));
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
