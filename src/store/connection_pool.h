#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <vector>

namespace airlock::store {

// A fixed set of database connections, each used by one thread at a time; Acquire blocks
// until one is free. Shared by the SQLite store (its readers) and the PostgreSQL store (all
// its connections).
template <typename Connection>
class ConnectionPool {
 public:
  class Lease {
   public:
    Lease(ConnectionPool* pool, Connection* conn) : pool_(pool), conn_(conn) {}
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() { pool_->Release(conn_); }
    Connection& operator*() const { return *conn_; }

   private:
    ConnectionPool* pool_;
    Connection* conn_;
  };

  void Add(std::unique_ptr<Connection> conn) {
    std::lock_guard lock(mu_);
    free_.push_back(conn.get());
    all_.push_back(std::move(conn));
  }

  Lease Acquire() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return !free_.empty(); });
    Connection* conn = free_.back();
    free_.pop_back();
    return Lease(this, conn);
  }

 private:
  void Release(Connection* conn) {
    {
      std::lock_guard lock(mu_);
      free_.push_back(conn);
    }
    cv_.notify_one();
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Connection*> free_;
  std::vector<std::unique_ptr<Connection>> all_;
};

}  // namespace airlock::store
