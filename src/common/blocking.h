#pragma once

#include <memory>
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

}  // namespace airlock
