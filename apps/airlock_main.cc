// The `airlock` binary: everything lives in src/cli.
#include "cli/cli.h"

int main(int argc, char** argv) { return airlock::cli::RunCli(argc, argv); }
