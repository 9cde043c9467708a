#pragma once

// The demo site: three small pages the sandbox listener serves to sandboxes at
// /sandbox/v1/demo/{index,search,results}, so that
// the scripted demo model's browsing script (llm/demo_script.cc) shows the browser agent at
// work offline: open a page, follow a link, type into a form, see the result.
//
// Static text made here, no state and no credential: a sandbox reaches it over its own channel
// (on TCP the gate asks for a session token, as for every sandbox route).

#include <string_view>

#include "net/http_server.h"

namespace airlock::controlplane {

// The page `page` ("index", "search", "results" with the query q=...): 200 HTML, or 404.
net::Response DemoSitePage(std::string_view page, std::string_view query);

}  // namespace airlock::controlplane
