#include "controlplane/sandbox_spec.h"

namespace airlock::controlplane {

sandbox::Limits SandboxLimits(const Json& limits) {
  sandbox::Limits out;
  if (!limits.is_object()) return out;
  // Whole units, as the backends always took them: a fraction of a megabyte is dropped.
  auto whole = [&](const char* key) -> std::optional<int64_t> {
    auto it = limits.find(key);
    if (it == limits.end() || !it->is_number()) return std::nullopt;
    return static_cast<int64_t>(it->get<double>());
  };
  out.memory_mb = whole("memory_mb");
  out.pids = whole("pids");
  out.disk_mb = whole("disk_mb");
  if (auto it = limits.find("cpus"); it != limits.end() && it->is_number()) {
    out.cpus = it->get<double>();
  }
  return out;
}

sandbox::SandboxSpec MakeSandboxSpec(const store::Session& s, const sandbox::Capabilities& caps,
                                     const Secret& token, const SandboxPlace& place) {
  sandbox::SandboxSpec spec;
  spec.sandbox_id = s.id;
  spec.image.name = s.image;
  if (s.command.is_array()) {
    for (const auto& a : s.command) {
      if (a.is_string()) spec.command.argv.push_back(a.get<std::string>());
    }
  }
  spec.limits = SandboxLimits(s.limits);
  // The kind is the backend's; the control plane listens on the session's socket whatever
  // it is (operators and tests reach a session there), so the directory is always given.
  spec.channel.kind = caps.channel;
  spec.channel.host_dir = place.socket_dir;
  switch (caps.channel) {
    case sandbox::Channel::Kind::kUnixDir:
      break;
    case sandbox::Channel::Kind::kVirtioPort:
      // The VMM relays the port to the per-session socket.
      spec.channel.port_name = "airlock.channel";
      break;
    case sandbox::Channel::Kind::kUrl:
      spec.channel.url = place.sandbox_url;
      break;
  }
  spec.work_dir = place.work_dir;
  if (caps.identity == sandbox::Capabilities::IdentityDelivery::kInSpec) {
    spec.identity = sandbox::Identity{s.id, token, place.sandbox_url};
  }
  return spec;
}

}  // namespace airlock::controlplane
