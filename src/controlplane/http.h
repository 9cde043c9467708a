#pragma once

// The control plane serves its two listeners with the network module's HTTP server and router.
// Their types are the vocabulary of every route handler here, so they are named once in this
// namespace instead of being qualified at each of several hundred uses.

#include "net/http_server.h"
#include "net/router.h"

namespace airlock::controlplane {

using net::Admission;
using net::BodyReader;
using net::ChunkSink;
using net::FileBody;
using net::Gate;
using net::Handler;
using net::HttpLimits;
using net::HttpMetrics;
using net::HttpServer;
using net::HttpStatusFor;
using net::Request;
using net::Response;
using net::RouteInfo;
using net::RouteOptions;
using net::Router;

}  // namespace airlock::controlplane
