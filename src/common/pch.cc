// The source of the airlock_pch target (src/common/CMakeLists.txt), which exists only to
// build the precompiled header the other targets reuse.
