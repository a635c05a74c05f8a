# Test registration. Every tests/unit/test_*.c is a cmocka executable linked against rotor_core
# (the same code the daemon runs). Integration tests need a real PostgreSQL: they run under
# tests/support/with-postgres, which starts one in a temporary directory on a private port.
# End-to-end tests are pytest files run with Debian's python3 against the built binary.

# Every test is added through rotor_test(). In the sanitizer build its name starts with "asan/"
# and it runs with the sanitizers' options, so that scripts/test.sh can run both builds' tests in
# one ctest run. COST orders that run: ctest starts the costliest first, so the longest tests
# (seconds, as measured on a 2-core machine) overlap the many short ones instead of trailing.
if(ROTOR_SANITIZE)
  set(ROTOR_TEST_PREFIX "asan/")
  set(ROTOR_TEST_ENV "ASAN_OPTIONS=detect_leaks=1:abort_on_error=1"
                     "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1")
else()
  set(ROTOR_TEST_PREFIX "")
  set(ROTOR_TEST_ENV "")
endif()
set(ROTOR_TEST_COSTS
  e2e/test_keyvault_limiter=60 e2e/test_demo=75 e2e/test_crash_late=65 e2e/test_crash_early=60
  e2e/test_approval=50 e2e/test_zero_downtime=45 e2e/test_external=45 e2e/test_keyvault_faults=65
  e2e/test_rotation_keyvault=40 e2e/test_probes=35 e2e/test_deadletter=35 e2e/test_schedule=30
  integration/test_kafka=30 e2e/test_metrics_prometheus=35 e2e/test_forwarding=45
  e2e/test_commands_once=60 e2e/test_store_truth=50
  e2e/test_crash_matrix=60 e2e/test_replicas=30
  # the outage rows of the reliability matrix: CI's sample (30 s outages, 10 s in the sanitizer
  # build; 5 soak rotations, 3 there); scripts/reliability-outages.sh runs them whole
  e2e/test_postgres_outage=150 e2e/test_soak=75 e2e/test_broker_outage=55)

function(rotor_test name)
  cmake_parse_arguments(T "" "TIMEOUT;WORKING_DIRECTORY" "COMMAND;ENV" ${ARGN})
  set(cost 1)
  foreach(entry ${ROTOR_TEST_COSTS})
    if(entry MATCHES "^${name}=([0-9]+)$")
      set(cost ${CMAKE_MATCH_1})
    endif()
  endforeach()
  if(NOT T_WORKING_DIRECTORY)
    set(T_WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  endif()
  add_test(NAME ${ROTOR_TEST_PREFIX}${name} COMMAND ${T_COMMAND}
           WORKING_DIRECTORY ${T_WORKING_DIRECTORY})
  set_tests_properties(${ROTOR_TEST_PREFIX}${name} PROPERTIES
    ENVIRONMENT "ROTOR_SOURCE_DIR=${CMAKE_SOURCE_DIR};${T_ENV};${ROTOR_TEST_ENV}"
    TIMEOUT ${T_TIMEOUT} COST ${cost})
endfunction()

file(GLOB ROTOR_UNIT_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/unit/test_*.c)
foreach(src ${ROTOR_UNIT_TESTS})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src})
  target_link_libraries(${name} PRIVATE rotor_core PkgConfig::CMOCKA)
  rotor_test(unit/${name} COMMAND ${name} TIMEOUT 120)
endforeach()

# The integration tests' scripted servers and their CA (tests/common/testsrv.h).
add_library(rotor_testsrv STATIC ${CMAKE_SOURCE_DIR}/tests/common/testsrv.c)
target_include_directories(rotor_testsrv PUBLIC ${CMAKE_SOURCE_DIR}/tests/common)

file(GLOB ROTOR_INTEGRATION_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/integration/test_*.c)
foreach(src ${ROTOR_INTEGRATION_TESTS})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src})
  target_link_libraries(${name} PRIVATE rotor_core rotor_testsrv PkgConfig::CMOCKA)
  rotor_test(integration/${name}
             COMMAND ${CMAKE_SOURCE_DIR}/tests/support/with-postgres $<TARGET_FILE:${name}>
             TIMEOUT 300)
endforeach()

# Helper programs the tests drive (not tests themselves).
file(GLOB ROTOR_TEST_TOOLS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/support/*.c)
foreach(src ${ROTOR_TEST_TOOLS})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src})
  target_link_libraries(${name} PRIVATE rotor_core)
endforeach()

find_program(ROTOR_PYTHON /usr/bin/python3)
file(GLOB ROTOR_E2E_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/e2e/test_*.py)
foreach(src ${ROTOR_E2E_TESTS})
  get_filename_component(name ${src} NAME_WE)
  rotor_test(e2e/${name}
             COMMAND ${ROTOR_PYTHON} -m pytest -x -q -p no:cacheprovider ${src}
             WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/tests/e2e
             ENV "ROTOR_BIN=$<TARGET_FILE:rotor>" "ROTOR_BUILD_DIR=${CMAKE_BINARY_DIR}"
                 "ROTOR_SANITIZE=${ROTOR_SANITIZE}"
             TIMEOUT 900)
endforeach()
include(${CMAKE_SOURCE_DIR}/cmake/fuzz.cmake)
