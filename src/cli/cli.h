#pragma once

namespace airlock::cli {

// The `airlock` command line: `airlock serve` runs the control plane, every other command is
// a client of its operator API. Returns the process exit code (listed in `airlock --help`);
// never throws.
int RunCli(int argc, char** argv);

}  // namespace airlock::cli
