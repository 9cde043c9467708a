enable_testing()
include(GoogleTest)

# airlock_test(NAME SOURCES... LABELS l1 [l2] LIBS lib... [DISCOVER_FILTER gtest-filter])
# One executable per test file; each GoogleTest case becomes its own CTest test so that
# `ctest -j` spreads them over the cores. DISCOVER_FILTER limits that to the cases it matches,
# for an executable whose other cases are registered apart (with add_test).
function(airlock_test name)
  cmake_parse_arguments(T "" "DISCOVER_FILTER" "SOURCES;LABELS;LIBS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gtest GTest::gmock GTest::gtest_main airlock_flags)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  foreach(label ${T_LABELS})
    set_property(GLOBAL APPEND PROPERTY AIRLOCK_TESTS_${label} ${name})
  endforeach()
  if(T_DISCOVER_FILTER)
    set(filter TEST_FILTER "${T_DISCOVER_FILTER}")
  endif()
  gtest_discover_tests(${name} ${filter} PROPERTIES TIMEOUT 300 DISCOVERY_TIMEOUT 60)
  # Labels are set after discovery from the discovered list (<target>_TESTS): passed through
  # gtest_discover_tests(PROPERTIES LABELS a;b), a list loses all but its first element.
  set(label_script "${CMAKE_CURRENT_BINARY_DIR}/${name}_labels.cmake")
  file(WRITE "${label_script}"
       "if(${name}_TESTS)\n  set_tests_properties(\${${name}_TESTS} PROPERTIES LABELS \"${T_LABELS}\")\nendif()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES "${label_script}")
endfunction()
