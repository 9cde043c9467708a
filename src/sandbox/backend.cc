#include "sandbox/backend.h"

namespace airlock::sandbox {

std::string_view SandboxStateName(SandboxState s) {
  switch (s) {
    case SandboxState::kStarting:
      return "starting";
    case SandboxState::kRunning:
      return "running";
    case SandboxState::kPaused:
      return "paused";
    case SandboxState::kExited:
      return "exited";
    case SandboxState::kMissing:
      return "missing";
  }
  return "missing";
}

Status Backend::Hibernate(const std::string&) {
  return Errorf(ErrorCode::kUnimplemented, "the {} backend cannot hibernate a sandbox", name());
}

void BackendRegistry::Register(std::unique_ptr<Backend> backend) {
  std::string name(backend->name());
  backends_[name] = std::move(backend);
}

Backend* BackendRegistry::Find(std::string_view name) const {
  auto it = backends_.find(name);
  return it == backends_.end() ? nullptr : it->second.get();
}

void BackendRegistry::MarkUnavailable(std::string name, std::string reason) {
  unavailable_[std::move(name)] = std::move(reason);
}

std::optional<std::string> BackendRegistry::UnavailableReason(std::string_view name) const {
  auto it = unavailable_.find(name);
  if (it == unavailable_.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> BackendRegistry::Names() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : backends_) out.push_back(k);
  return out;
}

}  // namespace airlock::sandbox
