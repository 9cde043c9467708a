#include "mux.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

namespace airlock::init {
namespace {

// epoll tags: a stream is tagged with its id (a u32), the rest with values above any id.
constexpr uint64_t kPortTag = uint64_t{1} << 32;
constexpr uint64_t kListenerTag = kPortTag + 1;
constexpr uint64_t kWakeTag = kPortTag + 2;

// Input from the port: room for several frames, and a whole frame always fits.
constexpr size_t kInSize = 64 * 1024;
// Local sockets are read only while less than this waits for the port, so a burst of DATA
// never queues far ahead of control frames (WINDOW, FIN, RESET) of other streams.
constexpr size_t kOutHighWater = 64 * 1024;
// Beyond this the port is not read until output drains. A well-behaved peer never gets near
// it (DATA stops at kOutHighWater; control frames are a few per stream); a peer that sends
// frames to make us answer (RESETs for refused OPENs...) but never reads only stalls itself.
constexpr size_t kOutLimit = 1024 * 1024;
// Rounds of Pump() per Process(), so that a busy mux does not keep a shared loop to itself.
constexpr int kRoundsPerProcess = 64;
constexpr int64_t kWarningIntervalMs = 5000;

void PutU32(unsigned char* p, uint32_t v) {
  p[0] = static_cast<unsigned char>(v >> 24);
  p[1] = static_cast<unsigned char>(v >> 16);
  p[2] = static_cast<unsigned char>(v >> 8);
  p[3] = static_cast<unsigned char>(v);
}

uint32_t GetU32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

void PutHeader(char* at, Mux::Frame type, uint32_t id, uint32_t length) {
  auto* p = reinterpret_cast<unsigned char*>(at);
  p[0] = static_cast<unsigned char>(type);
  PutU32(p + 1, id);
  PutU32(p + 5, length);
}

const char* Name(Mux::Frame type) {
  switch (type) {
    case Mux::Frame::kOpen:
      return "OPEN";
    case Mux::Frame::kData:
      return "DATA";
    case Mux::Frame::kFin:
      return "FIN";
    case Mux::Frame::kReset:
      return "RESET";
    case Mux::Frame::kWindow:
      return "WINDOW";
    case Mux::Frame::kClose:
      return "CLOSE";
  }
  return "?";
}

Status SetNonBlocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    return FailErrno("fcntl(O_NONBLOCK)", errno);
  }
  return {};
}

}  // namespace

struct Mux::Stream {
  uint32_t id = 0;
  UniqueFd fd;  // the local socket: a client in the guest, the control plane on the host
  // Edge-triggered readiness, remembered until a read or write says EAGAIN.
  bool readable = false;
  bool writable = false;
  bool queued = false;  // in read_queue_

  // Local socket → port.
  uint32_t send_credit = 0;  // bytes the peer still accepts
  bool fin_sent = false;     // the local socket said EOF and FIN is queued

  // Port → local socket. recv_credit + unacked + bytes in `in` == window, always.
  std::vector<char> in;
  size_t in_begin = 0;
  uint32_t recv_credit = 0;  // bytes the peer may still send
  uint32_t unacked = 0;      // written to the local socket, not yet granted back
  bool fin_received = false;
  bool shut_down = false;    // ... and passed on as shutdown(SHUT_WR)
  bool peer_closed = false;  // guest: the host sent CLOSE

  size_t buffered() const { return in.size() - in_begin; }
  bool CanRead() const { return readable && !fin_sent && send_credit > 0; }
};

Result<std::unique_ptr<Mux>> Mux::Guest(UniqueFd port, UniqueFd listener, Options options) {
  if (!listener.valid()) {
    return Fail("mux: no listener");
  }
  return Create(true, std::move(port), std::move(listener), {}, options);
}

Result<std::unique_ptr<Mux>> Mux::Host(UniqueFd port, std::string socket_path, Options options) {
  sockaddr_un addr{};
  if (socket_path.empty() || socket_path.size() >= sizeof(addr.sun_path)) {
    return Fail("mux: bad control-plane socket path: " + socket_path);
  }
  return Create(false, std::move(port), {}, std::move(socket_path), options);
}

Result<std::unique_ptr<Mux>> Mux::Create(bool opener, UniqueFd port, UniqueFd listener,
                                         std::string socket_path, Options options) {
  if (!port.valid()) {
    return Fail("mux: no port");
  }
  // The window must fit a u32 credit with room to add a grant to it.
  if (options.window == 0 || options.window > (uint32_t{1} << 30) || options.max_streams == 0) {
    return Fail("mux: window must be 1 byte to 1 GiB, max_streams at least 1");
  }
  if (auto s = SetNonBlocking(port.get()); !s) {
    return Fail("mux: port: " + s.error());
  }
  if (listener.valid()) {
    if (auto s = SetNonBlocking(listener.get()); !s) {
      return Fail("mux: listener: " + s.error());
    }
  }
  UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll.valid()) {
    return FailErrno("mux: epoll_create1", errno);
  }
  UniqueFd wake(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake.valid()) {
    return FailErrno("mux: eventfd", errno);
  }
  auto add = [&](int fd, uint32_t events, uint64_t tag) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = tag;
    return ::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &ev) == 0;
  };
  if (!add(port.get(), EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, kPortTag) ||
      !add(wake.get(), EPOLLIN, kWakeTag) ||
      (listener.valid() && !add(listener.get(), EPOLLIN, kListenerTag))) {
    return FailErrno("mux: epoll_ctl", errno);
  }
  UniqueFd reserve;
  if (opener) {
    reserve.Reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  }
  return std::unique_ptr<Mux>(new Mux(opener, std::move(epoll), std::move(port), std::move(wake),
                                      std::move(listener), std::move(reserve),
                                      std::move(socket_path), options));
}

Mux::Mux(bool opener, UniqueFd epoll, UniqueFd port, UniqueFd wake, UniqueFd listener,
         UniqueFd reserve, std::string socket_path, Options options)
    : opener_(opener),
      options_(options),
      epoll_(std::move(epoll)),
      port_(std::move(port)),
      wake_(std::move(wake)),
      listener_(std::move(listener)),
      reserve_(std::move(reserve)),
      socket_path_(std::move(socket_path)),
      in_(new char[kInSize]) {
  // A socket is written with send(MSG_NOSIGNAL): a vanished peer must be an error, not a
  // SIGPIPE. A character device (the guest's virtio port) cannot take send().
  struct stat st {};
  port_is_socket_ = ::fstat(port_.get(), &st) == 0 && S_ISSOCK(st.st_mode);
}

Mux::~Mux() = default;

bool Mux::Process() {
  if (ended()) {
    return false;
  }
  epoll_event events[64];
  int n = ::epoll_wait(epoll_.get(), events, 64, 0);
  for (int i = 0; i < n && !ended(); ++i) {
    uint64_t tag = events[i].data.u64;
    uint32_t e = events[i].events;
    // After a hang-up or an error, reads return the rest and then EOF or the error, and
    // writes fail: both are worth trying, and neither can block.
    bool readable = (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
    bool writable = (e & (EPOLLOUT | EPOLLHUP | EPOLLERR)) != 0;
    if (tag == kPortTag) {
      port_readable_ = port_readable_ || readable;
      port_writable_ = port_writable_ || writable;
    } else if (tag == kListenerTag) {
      accept_ready_ = true;
    } else if (tag == kWakeTag) {
      uint64_t value = 0;
      (void)!::read(wake_.get(), &value, sizeof(value));
    } else {
      // A stream freed earlier in this batch is simply not found.
      auto it = streams_.find(static_cast<uint32_t>(tag));
      if (it == streams_.end()) {
        continue;
      }
      Stream& s = *it->second;
      if (readable) {
        s.readable = true;
        Enqueue(s);
      }
      if (writable) {
        s.writable = true;
        FlushToLocal(s);  // may free `s`: last
      }
    }
  }
  Pump();
  return !ended();
}

std::string Mux::Run() {
  while (Process()) {
    pollfd p{epoll_.get(), POLLIN, 0};
    ::poll(&p, 1, -1);  // EINTR: go round
  }
  return reason_;
}

void Mux::Stop() {
  stop_requested_ = true;
  uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof(one));
}

size_t Mux::buffered() const {
  size_t total = kInSize + out_.capacity();
  for (const auto& [id, s] : streams_) {
    total += s->in.capacity();
  }
  return total;
}

void Mux::Pump() {
  for (int round = 0; round < kRoundsPerProcess; ++round) {
    if (stop_requested_) {
      End("stopped");
    }
    if (ended()) {
      return;
    }
    bool progress = false;
    if (accept_ready_ && !accept_paused_) {
      progress = Accept();
    }
    progress = ReadPort() || progress;
    if (ended()) {
      return;
    }
    progress = ReadStreams() || progress;
    progress = WritePort() || progress;
    if (!progress) {
      return;
    }
  }
  // Work is left (edge-triggered readiness we still hold): make fd() readable again so the
  // caller comes back rather than waiting for an edge that will not come.
  uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof(one));
}

bool Mux::Accept() {
  bool progress = false;
  while (!accept_paused_ && !ended()) {
    if (streams_.size() >= options_.max_streams) {
      // More connections wait in the kernel's backlog until a stream ends.
      PauseAccepting(true);
      break;
    }
    UniqueFd client(::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!client.valid()) {
      if (errno == EINTR || errno == ECONNABORTED) {
        continue;
      }
      if ((errno == EMFILE || errno == ENFILE) && reserve_.valid()) {
        // Out of descriptors: turn the waiting client away rather than spin on a listener
        // that stays readable.
        Log(ErrnoMessage("mux: accept", errno) + "; connection refused");
        reserve_.Reset();
        UniqueFd refused(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
        refused.Reset();
        reserve_.Reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
        progress = true;
        continue;
      }
      if (errno != EAGAIN) {
        Log(ErrnoMessage("mux: accept", errno));
      }
      accept_ready_ = false;
      break;
    }
    if (last_id_ == UINT32_MAX) {
      End("stream ids exhausted");
      return true;
    }
    uint32_t id = ++last_id_;
    // OPEN goes out before any DATA the stream may read.
    AppendFrame(Frame::kOpen, id, nullptr, 0);
    ++stats_.opened;
    Add(id, std::move(client));
    progress = true;
  }
  return progress;
}

bool Mux::ReadPort() {
  bool progress = false;
  // Bounded per round, so that local sockets get their turn; Pump() comes back.
  for (int reads = 0; reads < 4 && port_readable_ && OutPending() < kOutLimit; ++reads) {
    if (in_begin_ > 0) {
      std::memmove(in_.get(), in_.get() + in_begin_, in_end_ - in_begin_);
      in_end_ -= in_begin_;
      in_begin_ = 0;
    }
    ssize_t n = ::read(port_.get(), in_.get() + in_end_, kInSize - in_end_);
    if (n > 0) {
      in_end_ += static_cast<size_t>(n);
      progress = true;
      if (!ParseFrames()) {
        return true;
      }
    } else if (n == 0) {
      End("port closed");
      return true;
    } else if (errno == EAGAIN) {
      port_readable_ = false;
    } else if (errno != EINTR) {
      End(ErrnoMessage("port: read", errno));
      return true;
    }
  }
  return progress;
}

bool Mux::ParseFrames() {
  while (in_end_ - in_begin_ >= kHeaderSize) {
    const auto* h = reinterpret_cast<const unsigned char*>(in_.get() + in_begin_);
    uint8_t raw_type = h[0];
    uint32_t id = GetU32(h + 1);
    uint32_t length = GetU32(h + 5);
    // Security: everything is checked on the header alone, before the payload is waited
    // for, so a lying length cannot make us buffer more than one frame.
    if (raw_type < static_cast<uint8_t>(Frame::kOpen) ||
        raw_type > static_cast<uint8_t>(Frame::kClose)) {
      End("protocol error: unknown frame type " + std::to_string(raw_type));
      return false;
    }
    auto type = static_cast<Frame>(raw_type);
    uint32_t expected = type == Frame::kWindow ? 4 : 0;
    if (type == Frame::kData ? length > kMaxData : length != expected) {
      End(std::string("protocol error: ") + Name(type) + " frame of " + std::to_string(length) +
          " bytes");
      return false;
    }
    if (id == 0) {
      End(std::string("protocol error: ") + Name(type) + " for stream 0");
      return false;
    }
    if (in_end_ - in_begin_ < kHeaderSize + length) {
      break;
    }
    const char* payload = in_.get() + in_begin_ + kHeaderSize;
    in_begin_ += kHeaderSize + length;
    Dispatch(type, id, payload, length);
    if (ended()) {
      return false;
    }
  }
  if (in_begin_ == in_end_) {
    in_begin_ = in_end_ = 0;
  }
  return true;
}

void Mux::Dispatch(Frame type, uint32_t id, const char* payload, uint32_t length) {
  // Frames only the other role sends.
  if (type == Frame::kOpen && opener_) {
    End("protocol error: the host opened stream " + std::to_string(id));
    return;
  }
  if (type == Frame::kClose && !opener_) {
    End("protocol error: CLOSE from the guest, stream " + std::to_string(id));
    return;
  }
  if (type == Frame::kOpen) {
    OnOpen(id);
    return;
  }
  Stream* s = Known(id, type);
  if (s == nullptr) {
    return;
  }
  switch (type) {
    case Frame::kData:
      if (s->fin_received) {
        Reset(*s, "DATA after FIN");
        return;
      }
      // Security: the one check that bounds memory per stream to the window.
      if (length > s->recv_credit) {
        Reset(*s, "DATA beyond the window");
        return;
      }
      s->recv_credit -= length;
      if (s->in.size() + length > s->in.capacity()) {
        s->in.erase(s->in.begin(), s->in.begin() + static_cast<ptrdiff_t>(s->in_begin));
        s->in_begin = 0;
        if (s->in.size() + length > s->in.capacity()) {
          // Grows on demand, never past the window (buffered + length <= window here).
          size_t want = std::max(s->in.size() + length, 2 * s->in.capacity());
          s->in.reserve(std::min<size_t>(want, options_.window));
        }
      }
      s->in.insert(s->in.end(), payload, payload + length);
      FlushToLocal(*s);
      return;
    case Frame::kFin:
      if (s->fin_received) {
        Reset(*s, "second FIN");
        return;
      }
      s->fin_received = true;
      FlushToLocal(*s);
      return;
    case Frame::kReset:
      ++stats_.resets_received;
      Free(*s);
      return;
    case Frame::kWindow: {
      uint32_t increment = GetU32(reinterpret_cast<const unsigned char*>(payload));
      // The peer grants back only what it received, so credit never exceeds the window.
      if (uint64_t{s->send_credit} + increment > options_.window) {
        Reset(*s, "WINDOW beyond the window");
        return;
      }
      s->send_credit += increment;
      Enqueue(*s);
      return;
    }
    case Frame::kClose:
      s->peer_closed = true;
      if (!s->fin_received) {
        Free(*s);  // the host forgot a stream it never finished: nothing more will come
        return;
      }
      MaybeFinish(*s);
      return;
    case Frame::kOpen:
      return;
  }
}

Mux::Stream* Mux::Known(uint32_t id, Frame type) {
  auto it = streams_.find(id);
  if (it != streams_.end()) {
    return it->second.get();
  }
  // A host mux may be new to a guest that still has streams of an earlier one: the control
  // plane restarted, or the VM was restored from hibernation before it saw its port close.
  // Frames for those (before the first OPEN this mux saw, or below its id) are answered with
  // RESET, which makes the guest forget them, instead of ending the channel.
  if (!opener_ && type != Frame::kOpen && (first_id_ == 0 || id < first_id_)) {
    ++stats_.dropped_frames;
    if (type != Frame::kReset) {
      ++stats_.resets_sent;
      AppendFrame(Frame::kReset, id, nullptr, 0);
    }
    return nullptr;
  }
  if (id > last_id_) {
    End(std::string("protocol error: ") + Name(type) + " for stream " + std::to_string(id) +
        ", never opened");
    return nullptr;
  }
  // Closed already: frames that crossed our RESET (or a refusal) on the way.
  ++stats_.dropped_frames;
  return nullptr;
}

void Mux::OnOpen(uint32_t id) {
  if (id <= last_id_) {
    End("protocol error: OPEN of stream " + std::to_string(id) + ", not above " +
        std::to_string(last_id_));
    return;
  }
  last_id_ = id;
  if (first_id_ == 0) first_id_ = id;
  if (streams_.size() >= options_.max_streams) {
    // Security: the cap is what bounds the host's memory; a guest that keeps to the protocol
    // never gets here (it counts a stream until CLOSE).
    ++stats_.refused;
    ++stats_.resets_sent;
    AppendFrame(Frame::kReset, id, nullptr, 0);
    WarnRateLimited("mux: more than " + std::to_string(options_.max_streams) + " streams; stream " +
                    std::to_string(id) + " refused");
    return;
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socket_path_.c_str(), socket_path_.size() + 1);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  // A Unix stream connect completes at once or fails (EAGAIN when the server's backlog is
  // full): there is no connect in progress to wait for.
  if (!fd.valid() || ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    ++stats_.refused;
    ++stats_.resets_sent;
    AppendFrame(Frame::kReset, id, nullptr, 0);
    WarnRateLimited(ErrnoMessage("mux: cannot reach the control plane at " + socket_path_, err) +
                    "; stream refused (" + std::to_string(stats_.refused) + " so far)");
    return;
  }
  ++stats_.opened;
  Add(id, std::move(fd));
}

Mux::Stream* Mux::Add(uint32_t id, UniqueFd fd) {
  auto owned = std::make_unique<Stream>();
  Stream* s = owned.get();
  s->id = id;
  s->fd = std::move(fd);
  s->send_credit = options_.window;
  s->recv_credit = options_.window;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.u64 = id;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, s->fd.get(), &ev) != 0) {
    Log(ErrnoMessage("mux: epoll_ctl", errno));
    ++stats_.resets_sent;
    AppendFrame(Frame::kReset, id, nullptr, 0);
    return nullptr;  // `owned` closes the socket
  }
  streams_.emplace(id, std::move(owned));
  return s;
}

void Mux::Enqueue(Stream& s) {
  if (!s.queued && s.CanRead()) {
    s.queued = true;
    read_queue_.push_back(s.id);
  }
}

bool Mux::ReadStreams() {
  bool progress = false;
  // One turn per stream queued now: a stream put back goes behind every other one.
  for (size_t turns = read_queue_.size(); turns > 0 && !read_queue_.empty(); --turns) {
    if (OutPending() >= kOutHighWater || ended()) {
      break;
    }
    uint32_t id = read_queue_.front();
    read_queue_.pop_front();
    auto it = streams_.find(id);
    if (it == streams_.end()) {
      continue;
    }
    Stream& s = *it->second;
    s.queued = false;
    if (!s.CanRead()) {
      continue;
    }
    // Read straight into the output queue, behind a header written once the size is known.
    size_t want = std::min(kMaxData, s.send_credit);
    size_t at = out_.size();
    out_.resize(at + kHeaderSize + want);
    ssize_t n = ::read(s.fd.get(), out_.data() + at + kHeaderSize, want);
    if (n > 0) {
      out_.resize(at + kHeaderSize + static_cast<size_t>(n));
      PutHeader(out_.data() + at, Frame::kData, id, static_cast<uint32_t>(n));
      s.send_credit -= static_cast<uint32_t>(n);
      progress = true;
      Enqueue(s);
      continue;
    }
    out_.resize(at);
    if (n == 0) {
      s.fin_sent = true;
      AppendFrame(Frame::kFin, id, nullptr, 0);
      progress = true;
      MaybeFinish(s);
    } else if (errno == EAGAIN) {
      s.readable = false;
    } else if (errno == EINTR) {
      Enqueue(s);
    } else {
      Reset(s, nullptr);
      progress = true;
    }
  }
  return progress;
}

bool Mux::WritePort() {
  bool progress = false;
  while (port_writable_ && OutPending() > 0) {
    const char* data = out_.data() + out_begin_;
    ssize_t n = port_is_socket_ ? ::send(port_.get(), data, OutPending(), MSG_NOSIGNAL)
                                : ::write(port_.get(), data, OutPending());
    if (n > 0) {
      out_begin_ += static_cast<size_t>(n);
      progress = true;
    } else if (n < 0 && errno == EAGAIN) {
      port_writable_ = false;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      End(ErrnoMessage("port: write", n < 0 ? errno : EIO));
      return true;
    }
  }
  if (out_begin_ == out_.size()) {
    out_.clear();
    out_begin_ = 0;
  } else if (out_begin_ >= kOutHighWater) {
    out_.erase(0, out_begin_);
    out_begin_ = 0;
  }
  return progress;
}

void Mux::FlushToLocal(Stream& s) {
  while (s.buffered() > 0 && s.writable) {
    ssize_t n =
        ::send(s.fd.get(), s.in.data() + s.in_begin, s.buffered(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      s.in_begin += static_cast<size_t>(n);
      s.unacked += static_cast<uint32_t>(n);
    } else if (n < 0 && errno == EAGAIN) {
      s.writable = false;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      Reset(s, nullptr);  // the local side is gone
      return;
    }
  }
  if (s.buffered() == 0) {
    s.in.clear();
    s.in_begin = 0;
  }
  // Grants go back in quarters of the window: few WINDOW frames, and the peer always holds at
  // least three quarters of the window minus what waits here.
  if (!s.fin_received && s.unacked > 0 && s.unacked >= std::max<uint32_t>(1, options_.window / 4)) {
    unsigned char increment[4];
    PutU32(increment, s.unacked);
    AppendFrame(Frame::kWindow, s.id, increment, 4);
    s.recv_credit += s.unacked;
    s.unacked = 0;
  }
  if (s.fin_received && s.buffered() == 0 && !s.shut_down) {
    // The local peer may be gone already (ENOTCONN); the direction is finished either way.
    ::shutdown(s.fd.get(), SHUT_WR);
    s.shut_down = true;
  }
  MaybeFinish(s);
}

void Mux::MaybeFinish(Stream& s) {
  if (!s.fin_sent || !s.shut_down) {
    return;
  }
  if (!opener_) {
    // The host decides when an id is done, so both ends count the same streams.
    AppendFrame(Frame::kClose, s.id, nullptr, 0);
    Free(s);
  } else if (s.peer_closed) {
    Free(s);
  }
}

void Mux::Reset(Stream& s, const char* why) {
  if (why != nullptr) {
    WarnRateLimited("mux: stream " + std::to_string(s.id) + " reset: " + why);
  }
  ++stats_.resets_sent;
  AppendFrame(Frame::kReset, s.id, nullptr, 0);
  Free(s);
}

void Mux::Free(Stream& s) {
  // Closing the socket removes it from the epoll set; a pending event or queue entry for the
  // id finds nothing. Ids are never reused, so nothing can find a newer stream instead.
  uint32_t id = s.id;  // not a reference into the element being erased
  streams_.erase(id);
  if (opener_ && streams_.size() < options_.max_streams) {
    PauseAccepting(false);
  }
}

void Mux::PauseAccepting(bool pause) {
  if (pause == accept_paused_ || !listener_.valid()) {
    return;
  }
  accept_paused_ = pause;
  epoll_event ev{};
  ev.events = pause ? 0U : static_cast<uint32_t>(EPOLLIN);
  ev.data.u64 = kListenerTag;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, listener_.get(), &ev);
}

void Mux::AppendFrame(Frame type, uint32_t id, const void* payload, uint32_t length) {
  size_t at = out_.size();
  out_.resize(at + kHeaderSize + length);
  PutHeader(out_.data() + at, type, id, length);
  if (length > 0) {
    std::memcpy(out_.data() + at + kHeaderSize, payload, length);
  }
}

void Mux::End(std::string reason) {
  if (ended()) {
    return;
  }
  reason_ = std::move(reason);
  // Closing every local socket tells each client and server. What was queued for the port is
  // dropped: the owner destroys the Mux next, which closes the port, and the peer ends on that.
  streams_.clear();
  read_queue_.clear();
  PauseAccepting(true);
}

void Mux::WarnRateLimited(const std::string& message) {
  int64_t now = MonotonicMs();
  if (last_warning_ms_ >= 0 && now - last_warning_ms_ < kWarningIntervalMs) {
    ++suppressed_warnings_;
    return;
  }
  last_warning_ms_ = now;
  std::string line = message;
  if (suppressed_warnings_ > 0) {
    line += " (" + std::to_string(suppressed_warnings_) + " more warnings suppressed)";
    suppressed_warnings_ = 0;
  }
  Log(line);
}

}  // namespace airlock::init
