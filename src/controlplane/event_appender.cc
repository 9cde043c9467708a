#include "controlplane/event_appender.h"

#include <algorithm>
#include <optional>
#include <utility>

namespace airlock::controlplane {

struct EventAppender::Pending {
  explicit Pending(const asio::any_io_executor& ex) : done(ex) {}
  std::string session_id;
  std::string type;
  Json data;
  std::string token_hash;
  std::optional<Result<store::QuotaAppend>> result;
  asio::steady_timer done;  // cancelled once `result` is set
};

EventAppender::EventAppender(store::Store& store, asio::thread_pool& pool, store::EventQuota quota,
                             size_t max_batch, size_t max_in_flight)
    : store_(store),
      pool_(pool),
      quota_(quota),
      max_batch_(std::max<size_t>(max_batch, 1)),
      max_in_flight_(std::max<size_t>(max_in_flight, 1)) {}

awaitable<Result<store::QuotaAppend>> EventAppender::Append(std::string session_id,
                                                            std::string type, Json data,
                                                            std::string token_hash) {
  auto ex = co_await asio::this_coro::executor;
  auto p = std::make_shared<Pending>(ex);
  p->session_id = std::move(session_id);
  p->type = std::move(type);
  p->data = std::move(data);
  p->token_hash = std::move(token_hash);
  queue_.push_back(p);
  if (in_flight_ < max_in_flight_) StartBatch(ex);
  // The answer comes in a handler posted to this thread, so not before the wait has begun.
  if (!p->result) {
    p->done.expires_at(asio::steady_timer::time_point::max());
    boost::system::error_code ec;
    co_await p->done.async_wait(asio::redirect_error(use_awaitable, ec));
  }
  co_return std::move(*p->result);
}

void EventAppender::StartBatch(const asio::any_io_executor& ex) {
  ++in_flight_;
  ++calls_;
  const auto n = static_cast<long>(std::min(queue_.size(), max_batch_));
  auto batch = std::make_shared<Batch>(queue_.begin(), queue_.begin() + n);
  queue_.erase(queue_.begin(), queue_.begin() + n);
  // The work guard keeps the io_context running until the answer is back, as RunBlocking's.
  auto work = asio::make_work_guard(ex);
  asio::post(pool_, [this, ex, batch, work = std::move(work)]() mutable {
    std::vector<store::EventAppend> appends;
    appends.reserve(batch->size());
    for (const auto& p : *batch)
      appends.push_back({p->session_id, p->type, &p->data, p->token_hash});
    auto results = store_.AppendEventsWithinQuota(appends, quota_);
    asio::post(ex, [this, ex, batch, results = std::move(results)]() mutable {
      Finish(ex, *batch, std::move(results));
    });
    work.reset();
  });
}

void EventAppender::Finish(const asio::any_io_executor& ex, const Batch& batch,
                           std::vector<Result<store::QuotaAppend>> results) {
  for (size_t i = 0; i < batch.size(); ++i) {
    Pending& p = *batch[i];
    if (i < results.size()) {
      p.result = std::move(results[i]);
    } else {
      p.result = MakeError(ErrorCode::kInternal, "the store answered fewer appends than asked");
    }
    p.done.cancel();
  }
  --in_flight_;
  if (!queue_.empty()) StartBatch(ex);
}

}  // namespace airlock::controlplane
