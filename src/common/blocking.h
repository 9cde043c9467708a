#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <type_traits>

#include "common/asio.h"

namespace airlock {

namespace detail {

template <typename R>
struct RunBlockingInitiation {
  asio::thread_pool* pool;

  template <typename Handler, typename F>
  void operator()(Handler handler, std::unique_ptr<F> f) const {
    auto work = asio::make_work_guard(asio::get_associated_executor(handler));
    asio::post(
        *pool, [handler = std::move(handler), f = std::move(f), work = std::move(work)]() mutable {
          R result = (*f)();
          f.reset();
          auto ex = work.get_executor();
          asio::post(ex, [handler = std::move(handler), result = std::move(result)]() mutable {
            std::move(handler)(std::move(result));
          });
          work.reset();
        });
  }
};

}  // namespace detail

// Runs `fn` on `pool` and resumes the calling coroutine on its own executor with the result.
// Blocking work (SQLite, fork/exec of a runtime) goes through here so that the event loop
// never waits on a disk or a child process.
//
// Callers pass a lambda that captures by reference (`[&]`, `[this, &x]`): the coroutine's
// locals stay alive while it is suspended, and a closure of references is trivially
// copyable. A lambda that captures a std::string or a struct by value, written as a
// temporary inside a co_await expression, is relocated bitwise by g++ 12 and crashes.
//
// Deliberately not a coroutine itself: g++ 12 miscompiles a capturing lambda passed by
// value into a coroutine from inside a co_await expression (the captures are destroyed
// twice), and Asio's initiation takes its arguments as coroutine parameters, where g++ 12
// copies a closure bitwise (a capture's small-string buffer then points into the old
// frame). So the callable travels on the heap, behind a unique_ptr.
template <typename F, typename R = std::invoke_result_t<F>>
awaitable<R> RunBlocking(asio::thread_pool& pool, F fn) {
  return asio::async_initiate<decltype(use_awaitable), void(R)>(
      detail::RunBlockingInitiation<R>{&pool}, use_awaitable, std::make_unique<F>(std::move(fn)));
}

namespace detail {

template <typename R>
struct BoundedCall {
  explicit BoundedCall(const asio::any_io_executor& ex) : timer(ex) {}
  asio::steady_timer timer;
  std::optional<R> result;
};

// Not a coroutine (see RunBlocking): posts `f` to the pool; its result comes back on `ex`,
// where it is stored and wakes the waiter by cancelling the timer.
template <typename R, typename F>
std::shared_ptr<BoundedCall<R>> StartBoundedCall(asio::thread_pool& pool,
                                                 const asio::any_io_executor& ex,
                                                 std::unique_ptr<F> f) {
  auto call = std::make_shared<BoundedCall<R>>(ex);
  asio::post(pool, [call, ex, f = std::move(f)]() mutable {
    R result = (*f)();
    f.reset();
    asio::post(ex, [call, result = std::move(result)]() mutable {
      call->result = std::move(result);
      call->timer.cancel();
    });
  });
  return call;
}

}  // namespace detail

// Like RunBlocking, but stops waiting after `limit` and then returns nullopt: for a check
// that must answer in time even when what it checks hangs (a readiness probe of a database
// across a partition). The call itself cannot be interrupted; it runs to its end on the pool
// and its late result is dropped. So `fn` must not capture the caller's locals by reference
// (the caller may be gone when it runs): capture pointers to objects that outlive the pool.
// The caller's executor must be single-threaded (the control plane's io thread is).
template <typename F, typename R = std::invoke_result_t<F>>
awaitable<std::optional<R>> RunBlockingWithin(asio::thread_pool& pool,
                                              std::chrono::milliseconds limit, F fn) {
  auto ex = co_await asio::this_coro::executor;
  auto call = detail::StartBoundedCall<R>(pool, ex, std::make_unique<F>(std::move(fn)));
  call->timer.expires_after(limit);
  boost::system::error_code ec;
  co_await call->timer.async_wait(asio::redirect_error(use_awaitable, ec));
  co_return std::move(call->result);
}

}  // namespace airlock
