enable_testing()
include(GoogleTest)

# airlock_test(NAME SOURCES... LABELS l1 [l2] LIBS lib...)
# One executable per test file; each GoogleTest case becomes its own CTest test so that
# `ctest -j` spreads them over the cores.
function(airlock_test name)
  cmake_parse_arguments(T "" "" "SOURCES;LABELS;LIBS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gtest GTest::gmock GTest::gtest_main airlock_flags)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  gtest_discover_tests(${name} PROPERTIES LABELS "${T_LABELS}" TIMEOUT 300 DISCOVERY_TIMEOUT 60)
endfunction()
