# Test registration. Every tests/unit/test_*.c is a cmocka executable linked against rotor_core
# (the same code the daemon runs). Integration tests need a real PostgreSQL: they run under
# tests/support/with-postgres, which starts one in a temporary directory on a private port.
# End-to-end tests are pytest files run with Debian's python3 against the built binary.

file(GLOB ROTOR_UNIT_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/unit/test_*.c)
foreach(src ${ROTOR_UNIT_TESTS})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src})
  target_link_libraries(${name} PRIVATE rotor_core PkgConfig::CMOCKA)
  add_test(NAME unit/${name} COMMAND ${name})
  set_tests_properties(unit/${name} PROPERTIES
    ENVIRONMENT "ROTOR_SOURCE_DIR=${CMAKE_SOURCE_DIR}" TIMEOUT 120)
endforeach()

file(GLOB ROTOR_INTEGRATION_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/integration/test_*.c)
foreach(src ${ROTOR_INTEGRATION_TESTS})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src})
  target_link_libraries(${name} PRIVATE rotor_core PkgConfig::CMOCKA)
  add_test(NAME integration/${name}
           COMMAND ${CMAKE_SOURCE_DIR}/tests/support/with-postgres $<TARGET_FILE:${name}>)
  set_tests_properties(integration/${name} PROPERTIES
    ENVIRONMENT "ROTOR_SOURCE_DIR=${CMAKE_SOURCE_DIR}" TIMEOUT 300)
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
  add_test(NAME e2e/${name}
           COMMAND ${ROTOR_PYTHON} -m pytest -x -q -p no:cacheprovider ${src}
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/tests/e2e)
  set_tests_properties(e2e/${name} PROPERTIES
    ENVIRONMENT "ROTOR_BIN=$<TARGET_FILE:rotor>;ROTOR_BUILD_DIR=${CMAKE_BINARY_DIR};ROTOR_SOURCE_DIR=${CMAKE_SOURCE_DIR};ROTOR_SANITIZE=${ROTOR_SANITIZE}"
    TIMEOUT 900)
endforeach()
include(${CMAKE_SOURCE_DIR}/cmake/fuzz.cmake)
