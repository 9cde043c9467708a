#include "common/metrics.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace airlock::metrics {
namespace {

void AtomicAdd(std::atomic<double>& a, double v) {
  double cur = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(cur, cur + v, std::memory_order_relaxed)) {
  }
}

std::string FormatValue(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return fmt::format("{}", static_cast<int64_t>(v));
  return fmt::format("{}", v);
}

std::string Labels(const std::vector<std::string>& names, const std::vector<std::string>& values,
                   std::string_view extra_name = {}, std::string_view extra_value = {}) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < values.size(); ++i) {
    out += fmt::format("{}{}=\"{}\"", out.empty() ? "" : ",", names[i], EscapeLabel(values[i]));
  }
  if (!extra_name.empty()) {
    out += fmt::format("{}{}=\"{}\"", out.empty() ? "" : ",", extra_name, extra_value);
  }
  return out.empty() ? "" : "{" + out + "}";
}

}  // namespace

void Counter::Inc(double v) { AtomicAdd(value_, v); }
void Gauge::Add(double v) { AtomicAdd(value_, v); }

Histogram::Histogram(const std::vector<double>* bounds)
    : bounds_(bounds), buckets_(new std::atomic<uint64_t>[bounds->size()]) {
  for (size_t i = 0; i < bounds_->size(); ++i) buckets_[i] = 0;
}

void Histogram::Observe(double v) {
  auto it = std::lower_bound(bounds_->begin(), bounds_->end(), v);
  if (it != bounds_->end()) buckets_[it - bounds_->begin()].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  AtomicAdd(sum_, v);
}

std::string EscapeLabel(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

Family<Counter>& Registry::AddCounter(std::string name, std::string help,
                                      std::vector<std::string> labels) {
  std::lock_guard lock(mu_);
  counters_.push_back(
      std::make_unique<Family<Counter>>(std::move(name), std::move(help), std::move(labels)));
  return *counters_.back();
}

Family<Gauge>& Registry::AddGauge(std::string name, std::string help,
                                  std::vector<std::string> labels) {
  std::lock_guard lock(mu_);
  gauges_.push_back(
      std::make_unique<Family<Gauge>>(std::move(name), std::move(help), std::move(labels)));
  return *gauges_.back();
}

Family<Histogram>& Registry::AddHistogram(std::string name, std::string help,
                                          std::vector<std::string> labels,
                                          std::vector<double> bounds) {
  std::lock_guard lock(mu_);
  std::sort(bounds.begin(), bounds.end());
  histograms_.push_back(std::make_unique<Family<Histogram>>(std::move(name), std::move(help),
                                                            std::move(labels), std::move(bounds)));
  return *histograms_.back();
}

std::string Registry::Render() const {
  std::lock_guard lock(mu_);
  std::string out;
  auto header = [&](const auto& f, std::string_view type) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", f.name_, f.help_, f.name_, type);
  };
  for (const auto& f : counters_) {
    header(*f, "counter");
    std::lock_guard l(f->mu_);
    for (const auto& [values, c] : f->children_) {
      out +=
          fmt::format("{}{} {}\n", f->name_, Labels(f->labels_, values), FormatValue(c->Value()));
    }
  }
  for (const auto& f : gauges_) {
    header(*f, "gauge");
    std::lock_guard l(f->mu_);
    for (const auto& [values, g] : f->children_) {
      out +=
          fmt::format("{}{} {}\n", f->name_, Labels(f->labels_, values), FormatValue(g->Value()));
    }
  }
  for (const auto& f : histograms_) {
    header(*f, "histogram");
    std::lock_guard l(f->mu_);
    for (const auto& [values, h] : f->children_) {
      uint64_t cumulative = 0;
      for (size_t i = 0; i < f->bounds_.size(); ++i) {
        cumulative += h->buckets_[i].load(std::memory_order_relaxed);
        out +=
            fmt::format("{}_bucket{} {}\n", f->name_,
                        Labels(f->labels_, values, "le", FormatValue(f->bounds_[i])), cumulative);
      }
      uint64_t count = h->count_.load(std::memory_order_relaxed);
      out += fmt::format("{}_bucket{} {}\n", f->name_, Labels(f->labels_, values, "le", "+Inf"),
                         count);
      out += fmt::format("{}_sum{} {}\n", f->name_, Labels(f->labels_, values),
                         FormatValue(h->sum_.load(std::memory_order_relaxed)));
      out += fmt::format("{}_count{} {}\n", f->name_, Labels(f->labels_, values), count);
    }
  }
  return out;
}

}  // namespace airlock::metrics
