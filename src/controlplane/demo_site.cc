#include "controlplane/demo_site.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <string>

namespace airlock::controlplane {
namespace {

struct Book {
  std::string_view title;
  std::string_view about;
};
constexpr std::array<Book, 4> kBooks = {{
    {"The Sandbox Handbook", "namespaces, seccomp and cgroups, one wall at a time"},
    {"Secrets at the Boundary", "why an agent should hold placeholders, not keys"},
    {"Micro-VMs in Practice", "booting, snapshotting and restoring small guests"},
    {"Idle Costs Nothing", "scale to zero for long-lived sessions"},
}};

std::string Escape(std::string_view text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// Percent- and plus-decoding of a form field's value.
std::string FormValue(std::string_view query, std::string_view name) {
  while (!query.empty()) {
    std::string_view pair = query.substr(0, query.find('&'));
    query.remove_prefix(std::min(query.size(), pair.size() + 1));
    if (!pair.starts_with(name) || pair.size() <= name.size() || pair[name.size()] != '=') continue;
    std::string_view raw = pair.substr(name.size() + 1);
    std::string out;
    for (size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] == '+') {
        out += ' ';
      } else if (raw[i] == '%') {
        auto hex = [](char h) -> int {
          if (h >= '0' && h <= '9') return h - '0';
          if (h >= 'a' && h <= 'f') return h - 'a' + 10;
          if (h >= 'A' && h <= 'F') return h - 'A' + 10;
          return -1;
        };
        int hi = i + 1 < raw.size() ? hex(raw[i + 1]) : -1;
        int lo = i + 2 < raw.size() ? hex(raw[i + 2]) : -1;
        if (hi < 0 || lo < 0) {
          out += '%';
          continue;
        }
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
      } else {
        out += raw[i];
      }
    }
    return out.substr(0, 200);
  }
  return {};
}

net::Response Page(std::string_view title, const std::string& body) {
  return net::Response::Text(
      200,
      fmt::format("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>"
                  "<style>body{{font-family:sans-serif;max-width:40em;margin:2em auto;line-height:"
                  "1.5}}h1{{color:#234}}li{{margin:.3em 0}}</style></head><body>{}<hr><p><small>"
                  "Served by the Airlock control plane to its sandboxes, for the demo.</small></p>"
                  "</body></html>",
                  title, body),
      "text/html; charset=utf-8");
}

}  // namespace

net::Response DemoSitePage(std::string_view page, std::string_view query) {
  if (page == "index") {
    return Page("Airlock demo library",
                "<h1>The Airlock demo library</h1><p>A small catalogue of books about running "
                "agents safely. This page reached the browser in the sandbox over the sandbox's "
                "own channel to its control plane: the sandbox has no other way out.</p>"
                "<p><a href=\"/sandbox/v1/demo/search\">Search the catalogue</a></p>");
  }
  if (page == "search") {
    return Page(
        "Search the catalogue",
        "<h1>Search the catalogue</h1><form action=\"/sandbox/v1/demo/results\" method=\"get\">"
        "<label for=\"q\">Words</label> <input id=\"q\" name=\"q\" placeholder=\"e.g. "
        "sandbox\"> <button type=\"submit\">Search</button></form>");
  }
  if (page == "results") {
    const std::string q = FormValue(query, "q");
    std::string lower = q;
    for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string items;
    for (const auto& b : kBooks) {
      std::string hay = std::string(b.title) + " " + std::string(b.about);
      for (auto& c : hay) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (lower.empty() || hay.find(lower) != std::string::npos) {
        items += fmt::format("<li><b>{}</b>: {}</li>", Escape(b.title), Escape(b.about));
      }
    }
    return Page(
        "Results",
        fmt::format("<h1>Results for \"{}\"</h1>{}<p><a href=\"/sandbox/v1/demo/search\">Search "
                    "again</a></p>",
                    Escape(q), items.empty() ? "<p>Nothing found.</p>" : "<ul>" + items + "</ul>"));
  }
  return net::Response::FromError(404, "not_found", "no such demo page");
}

}  // namespace airlock::controlplane
