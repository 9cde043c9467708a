#include "common/sse_parser.h"

namespace airlock {

Result<bool> SseParser::Feed(std::string_view bytes) {
  if (at_start_ && !bytes.empty()) {
    // The BOM may arrive split over pieces; only its complete form at offset 0 is removed.
    constexpr std::string_view kBom = "\xEF\xBB\xBF";
    std::string probe = line_ + std::string(bytes.substr(0, kBom.size()));
    if (probe.size() < kBom.size() && kBom.starts_with(probe)) {
      line_ = probe;
      return true;
    }
    at_start_ = false;
    if (probe.starts_with(kBom)) {
      bytes.remove_prefix(kBom.size() - line_.size());
      line_.clear();
    }
  }
  size_t i = 0;
  while (i < bytes.size()) {
    if (skip_lf_) {
      skip_lf_ = false;
      if (bytes[i] == '\n') {
        ++i;
        continue;
      }
    }
    size_t end = bytes.find_first_of("\r\n", i);
    if (end == std::string_view::npos) {
      line_.append(bytes.substr(i));
      if (line_.size() > max_line_bytes_) {
        return Errorf(ErrorCode::kResourceExhausted, "event stream line longer than {} bytes",
                      max_line_bytes_);
      }
      return true;
    }
    line_.append(bytes.substr(i, end - i));
    if (bytes[end] == '\r') {
      if (end + 1 < bytes.size()) {
        if (bytes[end + 1] == '\n') ++end;
      } else {
        skip_lf_ = true;
      }
    }
    i = end + 1;
    std::string line = std::move(line_);
    line_.clear();
    AIRLOCK_ASSIGN_OR_RETURN(bool go_on, ProcessLine(line));
    if (!go_on) {
      return false;
    }
  }
  return true;
}

Result<bool> SseParser::ProcessLine(std::string_view line) {
  if (line.empty()) {
    // A blank line dispatches the event being built.
    if (data_.empty()) {
      event_.clear();
      return true;
    }
    SseEvent ev;
    ev.id = last_id_;
    ev.event = event_.empty() ? "message" : event_;
    ev.data = std::move(data_);
    if (!ev.data.empty() && ev.data.back() == '\n') {
      ev.data.pop_back();
    }
    data_.clear();
    event_.clear();
    return on_event_(ev);
  }
  if (line.front() == ':') {
    return true;  // A comment, such as a keep-alive.
  }
  std::string_view field = line;
  std::string_view value;
  if (size_t colon = line.find(':'); colon != std::string_view::npos) {
    field = line.substr(0, colon);
    value = line.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') {
      value.remove_prefix(1);
    }
  }
  if (field == "data") {
    data_.append(value);
    data_.push_back('\n');
    if (data_.size() > max_line_bytes_) {
      return Errorf(ErrorCode::kResourceExhausted, "event stream event larger than {} bytes",
                    max_line_bytes_);
    }
  } else if (field == "event") {
    event_ = std::string(value);
  } else if (field == "id") {
    if (value.find('\0') == std::string_view::npos) {
      last_id_ = std::string(value);
    }
  }
  return true;
}

}  // namespace airlock
