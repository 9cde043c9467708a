#pragma once

// Group commit of the events sandboxes post (POST /sandbox/v1/events). Each request used to be
// its own trip to the worker pool and its own store transaction; under load, most of a
// request's time went to the trip and the commit, not to the event. Here the requests that
// arrive while a group is being committed wait together, and the next group takes them all to
// the store in one call (Store::AppendEventsWithinQuota: one trip, and one transaction where
// the store can). Each request is answered only after the commit that holds its event, so an
// acknowledged event is as durable as before. A request that arrives when a call is free goes
// at once: alone, an event waits for no one. Two calls may be in flight: while one commits, the
// next is on its way (PostgreSQL runs them on two connections); more would take the pool
// threads that other store calls need.
//
// A group is made when its call reaches its thread, not when the call is sent, and with
// `one_commit_at_a_time` (SQLite, whose writes are one at a time anyway) only once the call
// before it has committed: the next group is then everything that arrived during the commit
// before it. Made when sent, the second call's group held only the requests that happened to
// arrive while a call was free, often one or two, and a run could settle into small groups
// that cost the control plane 1.4 times the CPU per event (BENCHMARKS.md, issue 12).
//
// With `one_commit_at_a_time` the calls run on a thread of the appender's own, one after
// another, instead of on the shared pool: the commits never wait behind the pool's other
// work, and one thread that stays warm took 4-7% less of the control plane's CPU per event,
// and gave a tenth more events per second, than calls handed round four pool threads, each
// woken in turn (BENCHMARKS.md, issue 12, "Seventh pass").

#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/asio.h"
#include "common/json_util.h"
#include "common/result.h"
#include "store/store.h"

namespace airlock::controlplane {

// io thread only (Append is called and resumes there); the store runs on `pool`, or with
// `one_commit_at_a_time` on the appender's own thread.
class EventAppender {
 public:
  // At most `max_batch` events per store call and `max_in_flight` calls at once; `quota` is
  // every append's.
  EventAppender(store::Store& store, asio::thread_pool& pool, store::EventQuota quota,
                size_t max_batch = 256, size_t max_in_flight = 2,
                bool one_commit_at_a_time = false);
  // Waits for the calls in flight (on its own thread, if it has one).
  ~EventAppender();
  EventAppender(const EventAppender&) = delete;
  EventAppender& operator=(const EventAppender&) = delete;

  // What Store::AppendEventWithinQuota(session_id, type, data, quota) answers, once committed;
  // with a `token_hash`, refused unless it is still the session's then (store::EventAppend).
  awaitable<Result<store::QuotaAppend>> Append(std::string session_id, std::string type, Json data,
                                               std::string token_hash = "");
  // Store calls made so far (each carried one group).
  size_t calls() const { return calls_.load(); }
  // Requests waiting for a call to take them (io thread).
  size_t queued() {
    std::lock_guard l(queue_mu_);
    return queue_.size();
  }

 private:
  struct Pending;
  using Batch = std::vector<std::shared_ptr<Pending>>;

  // Sends a call to its thread; there it takes the front of the queue to the store, and when
  // the store answers, its requests are resumed here and whatever queued meanwhile is sent.
  void StartCall(const asio::any_io_executor& ex);
  Batch TakeBatch();
  void Finish(const asio::any_io_executor& ex, const Batch& batch,
              std::vector<Result<store::QuotaAppend>> results);

  store::Store& store_;
  // With one_commit_at_a_time, the thread the calls run on, one after another; `pool_` is it.
  std::unique_ptr<asio::thread_pool> own_thread_;
  asio::thread_pool& pool_;  // where the calls run
  store::EventQuota quota_;
  size_t max_batch_;
  size_t max_in_flight_;
  std::mutex queue_mu_;  // the io thread adds, a call takes
  Batch queue_;
  size_t in_flight_ = 0;  // calls sent and not yet answered here (io thread)
  std::atomic<size_t> calls_ = 0;
};

}  // namespace airlock::controlplane
