#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>

#include "sys.h"

namespace airlock::init {

// Carries many stream connections over one reliable, ordered byte stream: the virtio-serial
// port that is the only link between a micro-VM and its host. Both ends run this class.
//
//   - The guest (opener) listens on a Unix socket inside the VM, so code that talks to the
//     control plane's socket works unchanged; each accepted connection becomes a stream.
//   - The host (acceptor) connects a fresh Unix socket to the control plane for each stream
//     the guest opens, and relays. Only the guest opens streams.
//
// Wire format: frames of a 9-byte header — type (u8), stream id (u32 big-endian), payload
// length (u32 big-endian) — then the payload.
//   OPEN    guest → host, no payload. Ids start at 1 and strictly increase; never reused.
//   DATA    1..16 KiB of bytes, never more than the receiver has granted on that stream.
//   FIN     the sender will send no more DATA: shutdown(SHUT_WR) on the other side, while
//           the reverse direction goes on (the half-close semantics of Bridge).
//   RESET   the stream is aborted both ways; the sender has already forgotten it.
//   WINDOW  u32 payload: more bytes of credit for DATA on that stream.
//   CLOSE   host → guest, no payload: the host has finished the stream and forgotten its id.
//
// CLOSE is the one addition to a plain yamux-like set, and it is what makes the stream cap
// exact: after both FINs the host may still hold bytes for a slow local reader, so if the
// guest freed its slot on seeing the host's FIN it could open stream 257 while the host still
// held 256 and get it refused. The guest counts a stream until CLOSE (or a RESET either
// way), so with the same cap on both ends a well-behaved guest is never refused and the host
// never holds more than the cap. The host may be given a lower cap than the guest's (the
// control plane's per-session share, vm_relay.h): it then resets the guest's streams beyond it.
//
// Flow control is per stream and per direction: each side grants `window` bytes at the start
// and sends WINDOW as it writes received bytes into the local socket. A stalled local reader
// fills only its own stream's window; the port is always read, so no stream blocks another.
// Local sockets are read round-robin, one frame's worth per turn, only while the port's output
// queue is short, so one busy stream cannot starve the others.
//
// Everything is non-blocking on one epoll instance: drive it with fd() + Process() like
// Bridge, or with Run() on a thread of its own.
//
// Security: the host treats the guest as hostile (its code is the attacker's). Memory held
// per mux is bounded by max_streams × window plus a constant: DATA beyond the grant resets
// the stream; an OPEN beyond the cap is refused with RESET; when the guest stops reading the
// port, the host stops reading it too once its output queue reaches a fixed bound. Framing
// errors (unknown type, bad length, id 0) and contradictions of the stream state the peer
// itself created (an OPEN of an id not above the last one, frames for an id never opened, a
// frame only the other role sends) end the whole mux: the byte stream can no longer be
// trusted. One exception on the host: a guest may still hold streams of an earlier host mux
// (the control plane restarted, or the VM was restored from hibernation before it noticed its
// port close), so frames before the first OPEN, or for ids below it, are answered with
// RESET and dropped. Frames for a stream already closed are dropped: they race with our RESET. The
// guest applies the same checks to the host, so neither end crashes on bad input.
class Mux {
 public:
  struct Options {
    // The credit each end grants per stream and direction at OPEN; both ends must agree.
    uint32_t window = 256 * 1024;
    // Concurrent streams; the guest stops accepting at the cap, the host refuses beyond it.
    size_t max_streams = 256;
  };

  // Counters, for logs and tests.
  struct Stats {
    uint64_t opened = 0;           // streams opened (guest) or accepted (host)
    uint64_t refused = 0;          // OPENs refused: cap reached or control plane unreachable
    uint64_t resets_sent = 0;      // streams we aborted
    uint64_t resets_received = 0;  // streams the peer aborted
    uint64_t dropped_frames = 0;   // frames for streams already closed
  };

  enum class Frame : uint8_t {
    kOpen = 1,
    kData = 2,
    kFin = 3,
    kReset = 4,
    kWindow = 5,
    kClose = 6,
  };
  static constexpr size_t kHeaderSize = 9;
  static constexpr uint32_t kMaxData = 16 * 1024;

  // The guest end: accepts connections on `listener` (a listening Unix stream socket) and
  // opens a stream for each over `port`.
  static Result<std::unique_ptr<Mux>> Guest(UniqueFd port, UniqueFd listener, Options options);
  // The host end: for each stream the guest opens over `port`, connects to `socket_path`.
  static Result<std::unique_ptr<Mux>> Host(UniqueFd port, std::string socket_path, Options options);
  ~Mux();
  Mux(const Mux&) = delete;
  Mux& operator=(const Mux&) = delete;

  // Readable (for poll/epoll) when Process() has work.
  int fd() const { return epoll_.get(); }

  // Handles what is ready, without blocking. False once the mux has ended (see reason()).
  bool Process();

  // Processes until the port closes or fails, a protocol error, or Stop(); returns why. Every
  // stream is closed by then; destroying the Mux closes the port (and the guest's listener).
  std::string Run();

  // Makes Run() (or the next Process()) end with "stopped". Safe from any thread.
  void Stop();

  bool ended() const { return !reason_.empty(); }
  // Why the mux ended; empty while it runs.
  const std::string& reason() const { return reason_; }
  size_t streams() const { return streams_.size(); }
  // Bytes held in buffers: the bound the Security note promises is on this.
  size_t buffered() const;
  const Stats& stats() const { return stats_; }

  // Defined in mux.cc.
  struct Stream;

 private:
  Mux(bool opener, UniqueFd epoll, UniqueFd port, UniqueFd wake, UniqueFd listener,
      UniqueFd reserve, std::string socket_path, Options options);
  static Result<std::unique_ptr<Mux>> Create(bool opener, UniqueFd port, UniqueFd listener,
                                             std::string socket_path, Options options);
  void Pump();
  bool Accept();
  bool ReadPort();
  bool ParseFrames();
  void Dispatch(Frame type, uint32_t id, const char* payload, uint32_t length);
  void OnOpen(uint32_t id);
  Stream* Known(uint32_t id, Frame type);
  bool ReadStreams();
  bool WritePort();
  void FlushToLocal(Stream& s);
  void MaybeFinish(Stream& s);
  void Reset(Stream& s, const char* why);
  void Free(Stream& s);
  Stream* Add(uint32_t id, UniqueFd fd);
  void Enqueue(Stream& s);
  void PauseAccepting(bool pause);
  void AppendFrame(Frame type, uint32_t id, const void* payload, uint32_t length);
  void End(std::string reason);
  void WarnRateLimited(const std::string& message);
  size_t OutPending() const { return out_.size() - out_begin_; }

  const bool opener_;  // the guest
  const Options options_;
  UniqueFd epoll_;
  UniqueFd port_;
  bool port_is_socket_ = false;
  bool port_readable_ = false;
  bool port_writable_ = false;
  // An eventfd: Stop() from another thread, and a kick when Process() leaves work undone.
  UniqueFd wake_;
  std::atomic<bool> stop_requested_{false};
  // Guest only: the listener, and a spare descriptor for EMFILE (see Bridge).
  UniqueFd listener_;
  UniqueFd reserve_;
  bool accept_ready_ = false;
  bool accept_paused_ = false;
  // Host only: where streams are connected.
  std::string socket_path_;

  // Frames read from the port, not yet complete. Fixed size: one frame always fits.
  std::unique_ptr<char[]> in_;
  size_t in_begin_ = 0;
  size_t in_end_ = 0;
  // Frames waiting for the port to be writable.
  std::string out_;
  size_t out_begin_ = 0;

  std::unordered_map<uint32_t, std::unique_ptr<Stream>> streams_;
  // Streams that may be read (readable, with credit), each at most once: the round robin.
  std::deque<uint32_t> read_queue_;
  // The highest id opened so far (by us as guest, by the peer as host).
  uint32_t last_id_ = 0;
  // Host: the first stream the guest opened to this mux (0: none yet). A guest's frames for
  // ids below it belong to an earlier host mux (see Known).
  uint32_t first_id_ = 0;

  std::string reason_;
  Stats stats_;
  int64_t last_warning_ms_ = -1;
  uint64_t suppressed_warnings_ = 0;
};

}  // namespace airlock::init
