# AIRLOCK_FUZZ: the libFuzzer build of fuzz/ (scripts/fuzz.sh). Clang only, since g++ has no
# libFuzzer; use a build directory of its own (build-fuzz), as every project library is
# compiled with coverage and sanitizer instrumentation here.
if(NOT AIRLOCK_FUZZ)
  return()
endif()
if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang" OR CMAKE_CXX_COMPILER_VERSION VERSION_LESS 16)
  message(FATAL_ERROR "AIRLOCK_FUZZ needs clang++ 16 or newer (CXX=clang++-16), "
                      "not ${CMAKE_CXX_COMPILER_ID} ${CMAKE_CXX_COMPILER_VERSION}")
endif()
if(AIRLOCK_SANITIZE)
  message(FATAL_ERROR "AIRLOCK_FUZZ already instruments with ASan and UBSan: leave AIRLOCK_SANITIZE off")
endif()
# Boost 1.74 turns on co_await support for clang only with <experimental/coroutine>, which
# libstdc++ 12 does not have; its <coroutine> (BOOST_ASIO_HAS_STD_COROUTINE, which Boost does
# detect) is what clang 16 uses, so say that co_await is there.
target_compile_definitions(airlock_flags INTERFACE BOOST_ASIO_HAS_CO_AWAIT=1)
# Every project library gets coverage feedback for libFuzzer and ASan + UBSan; a UBSan
# finding aborts (no recovery) so that the fuzzer reports it as a crash. The fuzz targets
# add -fsanitize=fuzzer themselves (fuzz/CMakeLists.txt), which links libFuzzer's main.
target_compile_options(airlock_flags INTERFACE
  -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
target_link_options(airlock_flags INTERFACE -fsanitize=address,undefined)
