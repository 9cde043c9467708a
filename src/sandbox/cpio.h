#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace airlock::sandbox {

// Writes a cpio archive in the "newc" format, the one the Linux kernel unpacks as an
// initramfs. Entries are owned by root with mtime 0, so the same input gives the same bytes.
// Names are relative ("init", "airlock/args"); a directory must come before what it holds.
class CpioWriter {
 public:
  void AddDirectory(std::string_view name, uint32_t mode);
  void AddFile(std::string_view name, std::string_view data, uint32_t mode);
  // The archive, ended by its trailer. The writer is empty again afterwards.
  std::string Finish();

 private:
  void Add(std::string_view name, uint32_t mode, std::string_view data);
  std::string out_;
  uint32_t next_inode_ = 1;
};

}  // namespace airlock::sandbox
