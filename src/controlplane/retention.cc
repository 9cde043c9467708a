#include "controlplane/retention.h"

#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "common/blocking.h"
#include "common/log.h"
#include "common/time_util.h"

namespace airlock::controlplane {

namespace fs = std::filesystem;

namespace {

constexpr int64_t kReleasePagesPerStep = 2048;  // 8 MiB of 4 KiB pages per write-lock hold

// A mount point as /proc/self/mountinfo writes it: space, tab, newline and backslash as \ooo.
std::string UnescapeMountPoint(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() &&
        s.substr(i + 1, 3).find_first_not_of("01234567") == std::string_view::npos) {
      out += static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

// The first mount point at or below `dir`, if any.
std::optional<std::string> MountBelow(const std::string& dir) {
  std::ifstream f("/proc/self/mountinfo");
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream fields(line);
    std::string id, parent, devno, root, mount_point;
    if (!(fields >> id >> parent >> devno >> root >> mount_point)) continue;
    std::string mp = UnescapeMountPoint(mount_point);
    if (mp == dir || mp.starts_with(dir + "/")) return mp;
  }
  return std::nullopt;
}

// Bytes of the regular files below `dir`, not following symlinks; 0 when it does not exist.
int64_t TreeBytes(const std::string& dir) {
  int64_t total = 0;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec),
       end;
       !ec && it != end; it.increment(ec)) {
    std::error_code ec2;
    auto st = it->symlink_status(ec2);
    if (!ec2 && fs::is_regular_file(st)) {
      auto size = it->file_size(ec2);
      if (!ec2) total += static_cast<int64_t>(size);
    }
  }
  return total;
}

}  // namespace

Result<int64_t> RemoveSessionDir(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(dir, ec))) return int64_t{0};
  const std::string real = fs::weakly_canonical(dir, ec).string();
  if (ec) return Errorf(ErrorCode::kInternal, "{}: {}", dir, ec.message());
  if (auto mp = MountBelow(real)) {
    return Errorf(ErrorCode::kConflict, "{} is still mounted; left for the next pass", *mp);
  }
  const int64_t bytes = TreeBytes(dir);
  fs::remove_all(dir, ec);
  if (ec) return Errorf(ErrorCode::kInternal, "delete {}: {}", dir, ec.message());
  return bytes;
}

Result<GcRequest> ParseGcRequest(const Json& body, const RetentionConfig& config) {
  AIRLOCK_TRY(RejectUnknownKeys(body, {"older_than", "dry_run", "max_sessions"}, "gc"));
  GcRequest r;
  AIRLOCK_ASSIGN_OR_RETURN(auto older_than, OptionalString(body, "older_than"));
  if (older_than) {
    AIRLOCK_ASSIGN_OR_RETURN(r.older_than_s, ParseDuration(*older_than, "\"older_than\""));
  } else if (config.ended_sessions_after_s > 0) {
    r.older_than_s = config.ended_sessions_after_s;
  } else {
    return MakeError(
        ErrorCode::kInvalidArgument,
        "no retention policy is configured (retention.ended_sessions_after): say \"older_than\"");
  }
  if (auto it = body.find("dry_run"); it != body.end() && !it->is_null()) {
    if (!it->is_boolean())
      return MakeError(ErrorCode::kInvalidArgument, "\"dry_run\" must be true or false");
    r.dry_run = it->get<bool>();
  }
  AIRLOCK_ASSIGN_OR_RETURN(auto max_sessions, OptionalInt(body, "max_sessions"));
  if (max_sessions) {
    if (*max_sessions < 1 || *max_sessions > 100'000) {
      return MakeError(ErrorCode::kInvalidArgument, "\"max_sessions\" must be 1-100000");
    }
    r.max_sessions = static_cast<int>(*max_sessions);
  }
  return r;
}

Json GcReportJson(const GcRequest& request, const GcReport& report) {
  return Json{{"dry_run", request.dry_run},
              {"older_than_s", request.older_than_s},
              {"sessions", report.sessions},
              {"events", report.events},
              {"messages", report.messages},
              {"database_bytes", report.database_bytes},
              {"files", report.files},
              {"file_bytes", report.file_bytes},
              {"log_bytes", report.log_bytes},
              {"released_pages", report.released_pages},
              {"session_ids", report.session_ids},
              {"more", report.more},
              {"errors", report.errors}};
}

struct Retention::Loop {
  std::atomic<bool> stopped = false;
};

Retention::Retention(const Config& config, store::Store& store, files::BlobStore* blobs)
    : config_(config), store_(store), blobs_(blobs) {}

Retention::~Retention() {
  if (loop_) loop_->stopped = true;
}

Status Retention::PurgeOne(const std::string& id, bool dry_run, GcReport& report) {
  if (id.empty() || id.find('/') != std::string::npos || id.front() == '.') {
    return Errorf(ErrorCode::kInternal, "the store holds a session id that is not a name: \"{}\"",
                  id.substr(0, 64));
  }
  const std::string dirs[] = {config_.home + "/sessions/" + id, config_.home + "/run/" + id};
  files::DeletedFiles files;
  int64_t dir_bytes = 0;
  store::SessionFootprint deleted;
  if (dry_run) {
    AIRLOCK_ASSIGN_OR_RETURN(deleted, store_.Footprint(id));
    if (blobs_) {
      AIRLOCK_ASSIGN_OR_RETURN(auto listed, blobs_->List(id));
      for (const auto& f : listed) {
        ++files.files;
        files.bytes += f.size;
      }
    }
    for (const auto& d : dirs) dir_bytes += TreeBytes(d);
  } else {
    // Files and directories first: the session is marked purged only when they are gone, so a
    // failure here leaves it for the next pass instead of forgetting its files.
    if (blobs_) {
      AIRLOCK_ASSIGN_OR_RETURN(files, blobs_->DeleteSession(id));
    }
    for (const auto& d : dirs) {
      AIRLOCK_ASSIGN_OR_RETURN(int64_t bytes, RemoveSessionDir(d));
      dir_bytes += bytes;
    }
    for (bool done = false; !done;) {
      AIRLOCK_ASSIGN_OR_RETURN(store::PurgeStep step, store_.PurgeSessionStep(id, kRowsPerStep));
      deleted.events += step.deleted.events;
      deleted.messages += step.deleted.messages;
      deleted.bytes += step.deleted.bytes;
      done = step.done;
    }
  }
  ++report.sessions;
  report.events += deleted.events;
  report.messages += deleted.messages;
  report.database_bytes += deleted.bytes;
  report.files += files.files;
  report.file_bytes += files.bytes;
  report.log_bytes += dir_bytes;
  if (report.session_ids.size() < kMaxListedIds) report.session_ids.push_back(id);
  return Ok();
}

Result<GcReport> Retention::Run(const GcRequest& request, int64_t now_ms) {
  std::lock_guard lock(run_mu_);
  GcReport report;
  const int64_t cutoff = now_ms - request.older_than_s * 1000;
  const int max = std::max(request.max_sessions, 1);
  AIRLOCK_ASSIGN_OR_RETURN(std::vector<std::string> ids, store_.ListPurgeable(cutoff, max + 1));
  if (static_cast<int>(ids.size()) > max) {
    report.more = true;
    ids.resize(static_cast<size_t>(max));
  }
  for (const std::string& id : ids) {
    if (auto done = PurgeOne(id, request.dry_run, report); !done) {
      report.errors.push_back(fmt::format("{}: {}", id, done.error().message));
    }
  }
  if (!request.dry_run && report.sessions > 0) {
    for (;;) {
      AIRLOCK_ASSIGN_OR_RETURN(int64_t released, store_.ReleaseFreePages(kReleasePagesPerStep));
      report.released_pages += released;
      if (released < kReleasePagesPerStep) break;
    }
  }
  return report;
}

namespace {

awaitable<void> ApplyPeriodically(std::shared_ptr<Retention::Loop> loop, Retention* retention,
                                  asio::thread_pool* pool, RetentionConfig config) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  const GcRequest request{config.ended_sessions_after_s, false,
                          static_cast<int>(config.batch_sessions)};
  for (;;) {
    timer.expires_after(std::chrono::seconds(config.interval_s));
    boost::system::error_code ec;
    co_await timer.async_wait(asio::redirect_error(use_awaitable, ec));
    if (loop->stopped) co_return;
    auto report = co_await RunBlocking(
        *pool, [retention, &request] { return retention->Run(request, NowMillis()); });
    if (loop->stopped) co_return;
    if (!report) {
      log::Warn("retention pass failed", {{"error", report.error().message}});
    } else if (report->sessions > 0 || !report->errors.empty()) {
      log::Info("retention pass", GcReportJson(request, *report));
    }
  }
}

}  // namespace

void Retention::StartPeriodic(asio::io_context& io, asio::thread_pool& pool) {
  if (config_.retention.ended_sessions_after_s <= 0 || loop_) return;
  loop_ = std::make_shared<Loop>();
  asio::co_spawn(io, ApplyPeriodically(loop_, this, &pool, config_.retention), asio::detached);
}

}  // namespace airlock::controlplane
