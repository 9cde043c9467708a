#include "controlplane/event_appender.h"

#include <algorithm>
#include <functional>
#include <optional>
#include <utility>

namespace airlock::controlplane {

struct EventAppender::Pending {
  std::string session_id;
  std::string type;
  Json data;
  std::string token_hash;
  std::optional<Result<store::QuotaAppend>> result;
  // The waiting request's completion, called once `result` is set. It resumes the request's
  // coroutine there and then, so the answer is written at once, not behind every handler the
  // io thread queued meanwhile (as a timer's cancellation would be). It owns the coroutine;
  // the coroutine refers back to this only by address, so there is no cycle.
  std::function<void()> resume;
};

EventAppender::EventAppender(store::Store& store, asio::thread_pool& pool, store::EventQuota quota,
                             size_t max_batch, size_t max_in_flight, bool one_commit_at_a_time)
    : store_(store),
      own_thread_(one_commit_at_a_time ? std::make_unique<asio::thread_pool>(1) : nullptr),
      pool_(own_thread_ ? *own_thread_ : pool),
      quota_(quota),
      max_batch_(std::max<size_t>(max_batch, 1)),
      max_in_flight_(std::max<size_t>(max_in_flight, 1)) {}

EventAppender::~EventAppender() {
  if (own_thread_) own_thread_->join();
}

awaitable<Result<store::QuotaAppend>> EventAppender::Append(std::string session_id,
                                                            std::string type, Json data,
                                                            std::string token_hash) {
  auto ex = co_await asio::this_coro::executor;
  Pending* p = nullptr;
  {
    auto pending = std::make_shared<Pending>();
    p = pending.get();
    p->session_id = std::move(session_id);
    p->type = std::move(type);
    p->data = std::move(data);
    p->token_hash = std::move(token_hash);
    std::lock_guard l(queue_mu_);
    queue_.push_back(std::move(pending));
  }
  if (in_flight_ < max_in_flight_) StartCall(ex);
  // The answer comes in a handler posted to this thread, so not before the wait has begun;
  // until this coroutine has taken its answer, the batch that holds `p` keeps it alive.
  co_await asio::async_initiate<decltype(use_awaitable), void()>(
      [p](auto handler) {
        auto h = std::make_shared<decltype(handler)>(std::move(handler));
        p->resume = [h] { (*h)(); };
      },
      use_awaitable);
  co_return std::move(*p->result);
}

EventAppender::Batch EventAppender::TakeBatch() {
  std::lock_guard l(queue_mu_);
  const auto n = static_cast<long>(std::min(queue_.size(), max_batch_));
  Batch batch(queue_.begin(), queue_.begin() + n);
  queue_.erase(queue_.begin(), queue_.begin() + n);
  return batch;
}

void EventAppender::StartCall(const asio::any_io_executor& ex) {
  ++in_flight_;
  // The work guard keeps the io_context running until the answer is back, as RunBlocking's.
  auto work = asio::make_work_guard(ex);
  asio::post(pool_, [this, ex, work = std::move(work)]() mutable {
    auto batch = std::make_shared<Batch>(TakeBatch());
    std::vector<Result<store::QuotaAppend>> results;
    if (!batch->empty()) {
      ++calls_;
      std::vector<store::EventAppend> appends;
      appends.reserve(batch->size());
      for (const auto& p : *batch)
        appends.push_back({p->session_id, p->type, &p->data, p->token_hash});
      results = store_.AppendEventsWithinQuota(appends, quota_);
    }
    asio::post(ex, [this, ex, batch, results = std::move(results)]() mutable {
      Finish(ex, *batch, std::move(results));
    });
    work.reset();
  });
}

void EventAppender::Finish(const asio::any_io_executor& ex, const Batch& batch,
                           std::vector<Result<store::QuotaAppend>> results) {
  --in_flight_;
  // What queued meanwhile is sent first, so that it commits while these answers are written.
  if (in_flight_ < max_in_flight_ && queued() > 0) StartCall(ex);
  for (size_t i = 0; i < batch.size(); ++i) {
    Pending& p = *batch[i];
    if (i < results.size()) {
      p.result = std::move(results[i]);
    } else {
      p.result = MakeError(ErrorCode::kInternal, "the store answered fewer appends than asked");
    }
    if (auto resume = std::exchange(p.resume, nullptr)) resume();
  }
}

}  // namespace airlock::controlplane
