#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace airlock::init {

// The number of OOM kills in the sandbox's cgroup: "oom_kill N" in memory.events (cgroup v2)
// or in memory/memory.oom_control (v1), under `cgroup_root`. nullopt when neither exists.
std::optional<uint64_t> ReadOomKills(const std::string& cgroup_root);

}  // namespace airlock::init
