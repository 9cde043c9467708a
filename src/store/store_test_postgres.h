#pragma once

// The PostgreSQL server of a store test process: started by the first test that needs it
// (a run filtered to SQLite starts none), stopped after the last test of the process.

#include <gtest/gtest.h>

#include "tests/support/postgres_server.h"

namespace airlock::store {

class TestPostgresEnvironment : public ::testing::Environment {
 public:
  static airlock::testing::PostgresServer*& Server() {
    static airlock::testing::PostgresServer* server = nullptr;
    return server;
  }
  void TearDown() override {
    if (Server() != nullptr) {
      airlock::testing::StopPostgres(*Server());
    }
  }
};

inline ::testing::Environment* const kTestPostgresEnvironment =
    ::testing::AddGlobalTestEnvironment(new TestPostgresEnvironment);

// The server; its `skip` or `failure` says when there is none.
inline airlock::testing::PostgresServer& TestPostgres() {
  static airlock::testing::PostgresServer* server = [] {
    auto* s = new airlock::testing::PostgresServer(airlock::testing::StartPostgres());
    TestPostgresEnvironment::Server() = s;
    return s;
  }();
  return *server;
}

}  // namespace airlock::store
