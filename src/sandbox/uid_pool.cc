#include "sandbox/uid_pool.h"

#include <dirent.h>
#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <charconv>
#include <fstream>
#include <random>
#include <sstream>
#include <string_view>

namespace airlock::sandbox {
namespace {

std::optional<uint32_t> ParseId(std::string_view s) {
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size() || v > UINT32_MAX)
    return std::nullopt;
  return static_cast<uint32_t>(v);
}

std::vector<std::string_view> Fields(std::string_view line) {
  std::vector<std::string_view> out;
  for (size_t at = 0;;) {
    size_t colon = line.find(':', at);
    out.push_back(
        line.substr(at, colon == std::string_view::npos ? std::string_view::npos : colon - at));
    if (colon == std::string_view::npos) return out;
    at = colon + 1;
  }
}

// name:x:id:... files (/etc/passwd, /etc/group): the third field is the id.
void ReadIdFile(const std::string& path, std::map<uint32_t, std::string>& out) {
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    auto fields = Fields(line);
    if (fields.size() < 3) continue;
    if (auto id = ParseId(fields[2])) out.emplace(*id, std::string(fields[0]));
  }
}

// owner:start:count files (/etc/subuid, /etc/subgid).
void ReadSubordinate(const std::string& path, std::vector<HostIds::Range>& out) {
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    auto fields = Fields(line);
    if (fields.size() != 3) continue;
    auto start = ParseId(fields[1]);
    auto size = ParseId(fields[2]);
    if (start && size && *size > 0) out.push_back({*start, *size, std::string(fields[0]), path});
  }
}

bool Overlaps(uint64_t a, uint64_t a_size, uint64_t b, uint64_t b_size) {
  return a < b + b_size && b < a + a_size;
}

}  // namespace

HostIds ReadHostIds() {
  HostIds h;
  ReadIdFile("/etc/passwd", h.users);
  ReadIdFile("/etc/group", h.groups);
  // The process is single-threaded when the backend starts; getpwent is not reentrant.
  ::setpwent();
  while (passwd* pw = ::getpwent()) h.users.emplace(pw->pw_uid, pw->pw_name);
  ::endpwent();
  ::setgrent();
  while (group* gr = ::getgrent()) h.groups.emplace(gr->gr_gid, gr->gr_name);
  ::endgrent();
  ReadSubordinate("/etc/subuid", h.subordinate);
  ReadSubordinate("/etc/subgid", h.subordinate);
  return h;
}

bool HostKnowsId(uint32_t id) {
  long size = ::sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buf(size > 0 ? static_cast<size_t>(size) : 16384);
  passwd pw;
  passwd* pw_out = nullptr;
  if (::getpwuid_r(id, &pw, buf.data(), buf.size(), &pw_out) == 0 && pw_out) return true;
  group gr;
  group* gr_out = nullptr;
  if (::getgrgid_r(id, &gr, buf.data(), buf.size(), &gr_out) == 0 && gr_out) return true;
  return false;
}

Status CheckIdRangeIsFree(uint32_t start, uint32_t size, const HostIds& host,
                          const std::string& what) {
  uint64_t end = uint64_t{start} + size;  // exclusive
  if (size == 0) return Errorf(ErrorCode::kInvalidArgument, "{}: the range is empty", what);
  if (start == 0)
    return Errorf(ErrorCode::kInvalidArgument, "{}: uid 0 is root, never an agent", what);
  if (end > UINT32_MAX) {
    return Errorf(ErrorCode::kInvalidArgument, "{}: the range {}..{} passes the last valid uid {}",
                  what, start, end - 1, UINT32_MAX - 1);
  }
  for (const auto& [ids, kind] :
       {std::pair{&host.users, "account"}, std::pair{&host.groups, "group"}}) {
    auto it = ids->lower_bound(start);
    if (it != ids->end() && it->first < end) {
      return Errorf(
          ErrorCode::kInvalidArgument,
          "{}: {} {} is the host {} \"{}\"; an agent must not share an id with anyone on the host "
          "(choose ids no account, group or /etc/subuid range uses)",
          what, kind == std::string_view("account") ? "uid" : "gid", it->first, kind, it->second);
    }
  }
  for (const auto& r : host.subordinate) {
    if (Overlaps(start, size, r.start, r.size)) {
      return Errorf(ErrorCode::kInvalidArgument,
                    "{}: overlaps the subordinate range {}..{} of \"{}\" in {} (that user's "
                    "containers run as "
                    "those uids)",
                    what, r.start, uint64_t{r.start} + r.size - 1, r.owner, r.file);
    }
  }
  return Ok();
}

bool UidHasProcesses(uint32_t uid) {
  DIR* d = ::opendir("/proc");
  if (!d) return false;
  bool found = false;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
    std::ifstream status(std::string("/proc/") + e->d_name + "/status");
    std::string line;
    while (std::getline(status, line)) {
      if (!line.starts_with("Uid:")) continue;
      std::istringstream ids(line.substr(4));
      uint64_t real = 0, effective = 0, saved = 0;
      ids >> real >> effective >> saved;
      found = real == uid || effective == uid || saved == uid;
      break;
    }
    if (found) break;
  }
  ::closedir(d);
  return found;
}

UidPool::UidPool(uint32_t start, uint32_t size, std::function<bool(uint32_t)> known_on_host)
    : start_(start), size_(size), known_on_host_(std::move(known_on_host)) {
  if (size_ > 0) next_ = std::random_device{}() % size_;
}

Result<uint32_t> UidPool::Acquire(const std::string& owner) {
  std::lock_guard lock(mu_);
  if (auto it = by_owner_.find(owner); it != by_owner_.end()) return it->second;
  for (uint32_t tried = 0; tried < size_; ++tried) {
    uint32_t uid = start_ + (next_ + tried) % size_;
    if (used_.count(uid)) continue;
    if (known_on_host_ && known_on_host_(uid)) continue;
    next_ = (next_ + tried + 1) % size_;
    used_.insert(uid);
    by_owner_.emplace(owner, uid);
    return uid;
  }
  return Errorf(
      ErrorCode::kUnavailable,
      "no free sandbox uid: all {} of {}..{} belong to live sandboxes or host accounts (raise "
      "sandbox.oci.uid_range_size)",
      size_, start_, uint64_t{start_} + size_ - 1);
}

void UidPool::Adopt(const std::string& owner, uint32_t uid) {
  if (uid < start_ || uint64_t{uid} >= uint64_t{start_} + size_) return;
  std::lock_guard lock(mu_);
  if (auto it = by_owner_.find(owner); it != by_owner_.end()) used_.erase(it->second);
  by_owner_[owner] = uid;
  used_.insert(uid);
}

void UidPool::Release(const std::string& owner) {
  std::lock_guard lock(mu_);
  auto it = by_owner_.find(owner);
  if (it == by_owner_.end()) return;
  used_.erase(it->second);
  by_owner_.erase(it);
}

Status UidPool::Transfer(const std::string& from, const std::string& to) {
  std::lock_guard lock(mu_);
  auto it = by_owner_.find(from);
  if (it == by_owner_.end()) return Errorf(ErrorCode::kNotFound, "uid pool: {} holds no uid", from);
  if (by_owner_.contains(to)) {
    return Errorf(ErrorCode::kInternal, "uid pool: {} already holds a uid", to);
  }
  by_owner_.emplace(to, it->second);
  by_owner_.erase(it);
  return Ok();
}

std::optional<uint32_t> UidPool::Held(const std::string& owner) const {
  std::lock_guard lock(mu_);
  auto it = by_owner_.find(owner);
  if (it == by_owner_.end()) return std::nullopt;
  return it->second;
}

size_t UidPool::InUse() const {
  std::lock_guard lock(mu_);
  return used_.size();
}

}  // namespace airlock::sandbox
