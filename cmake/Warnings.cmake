# Project-wide compile flags. Applied through an interface target so that third-party
# code pulled in by find_package keeps its own flags.
add_library(airlock_flags INTERFACE)
target_compile_options(airlock_flags INTERFACE -Wall -Wextra -Wpedantic -Wno-missing-field-initializers
  $<$<BOOL:${AIRLOCK_WERROR}>:-Werror>)
# libstdc++ 12's <expected> (Result<T>) is guarded by __cpp_concepts >= 202002L, and clang 16
# implements C++20 concepts but still reports 201907L because of a few corner cases
# (P0848's conditionally trivial special members) that <expected> does not rely on. Declaring
# the newer value makes <expected> available; -Wno-macro-redefined silences the redefinition
# of the built-in macro. Clang 14 cannot compile <expected> even so. airlock-init, which does
# not take airlock_flags, uses the variable too.
set(AIRLOCK_CLANG_EXPECTED "$<$<CXX_COMPILER_ID:Clang>:-D__cpp_concepts=202002L;-Wno-macro-redefined>")
target_compile_options(airlock_flags INTERFACE ${AIRLOCK_CLANG_EXPECTED})
# Boost 1.74's coroutine support needs -fcoroutines on g++ 12 in C++23 mode.
target_compile_options(airlock_flags INTERFACE $<$<CXX_COMPILER_ID:GNU>:-fcoroutines>)
# g++ 12 misreports Asio's coroutine frames (allocated by its recycling allocator, freed by the
# matching operator delete) as mismatched new/delete.
target_compile_options(airlock_flags INTERFACE $<$<CXX_COMPILER_ID:GNU>:-Wno-mismatched-new-delete>)
target_compile_definitions(airlock_flags INTERFACE
  BOOST_ASIO_NO_DEPRECATED BOOST_BEAST_USE_STD_STRING_VIEW AIRLOCK_VERSION="${PROJECT_VERSION}")
if(AIRLOCK_SANITIZE)
  # Any finding fails the test that made it (UBSan would otherwise print and go on).
  target_compile_options(airlock_flags INTERFACE -fsanitize=address,undefined -fno-sanitize-recover=all
                                                 -fno-omit-frame-pointer)
  target_link_options(airlock_flags INTERFACE -fsanitize=address,undefined -fno-sanitize-recover=all)
endif()
if(AIRLOCK_TSAN)
  if(AIRLOCK_SANITIZE)
    message(FATAL_ERROR "AIRLOCK_TSAN and AIRLOCK_SANITIZE cannot be combined: build them in two directories")
  endif()
  # g++ 12 warns (-Wtsan) that TSan does not model the atomic_thread_fence in Asio's
  # std_fenced_block. Handlers pass between threads through the scheduler's mutex, which
  # TSan does see, so the fence adds no edge a report could depend on.
  target_compile_options(airlock_flags INTERFACE -fsanitize=thread -fno-omit-frame-pointer
                                                 $<$<CXX_COMPILER_ID:GNU>:-Wno-tsan>)
  target_link_options(airlock_flags INTERFACE -fsanitize=thread)
endif()

# ccache can cache compilations that use a precompiled header only when g++ writes a
# reference to it into the preprocessed output (and with the sloppiness scripts/test.sh sets).
if(CMAKE_CXX_COMPILER_LAUNCHER MATCHES "ccache" AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  target_compile_options(airlock_flags INTERFACE -fpch-preprocess)
endif()

# Asio/Beast/json headers dominate compile time: one precompiled header, built once by the
# airlock_pch target (src/common/CMakeLists.txt) and reused by every target that asks for it
# (each building its own cost ~20 s of CPU per target and configuration).
function(airlock_pch target)
  target_precompile_headers(${target} REUSE_FROM airlock_pch)
endfunction()
