# Fuzz targets and benchmarks. Included from cmake/tests.cmake; needs rotor_core,
# ROTOR_CORE_SOURCES and ROTOR_SCHEMAS_C from the top-level CMakeLists.txt.
#
# Every tests/fuzz/fuzz_<name>.c is always built with tests/fuzz/replay.c into fuzz_<name>_replay,
# and ctest runs it over tests/fuzz/corpus/fuzz_<name>/ as the test fuzz/fuzz_<name>: the corpus
# is replayed in the normal and in the ROTOR_SANITIZE build alike, without clang.
# With -DROTOR_FUZZ=ON and clang, fuzz_<name> is also a real libFuzzer binary, e.g.
#   build/fuzz_event -max_total_time=60 tests/fuzz/corpus/fuzz_event
# scripts/fuzz.sh builds and runs them all (docs/reliability.md).

option(ROTOR_FUZZ "Also build libFuzzer binaries (clang only)" OFF)

file(GLOB ROTOR_FUZZ_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz_*.c)
foreach(src ${ROTOR_FUZZ_SOURCES})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name}_replay ${src} ${CMAKE_SOURCE_DIR}/tests/fuzz/replay.c)
  target_link_libraries(${name}_replay PRIVATE rotor_core)
  rotor_test(fuzz/${name} COMMAND ${name}_replay ${CMAKE_SOURCE_DIR}/tests/fuzz/corpus/${name}
             TIMEOUT 300)
endforeach()

if(ROTOR_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "ROTOR_FUZZ=ON needs clang: cmake -DCMAKE_C_COMPILER=clang -DROTOR_FUZZ=ON")
  endif()
  # A second copy of the library with coverage instrumentation, so the daemon's rotor_core and
  # the unit tests stay as they are in a fuzzing build.
  set(ROTOR_FUZZ_FLAGS -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer
                       -fno-sanitize-recover=undefined)
  add_library(rotor_core_fuzz STATIC ${ROTOR_CORE_SOURCES} ${ROTOR_SCHEMAS_C})
  target_compile_options(rotor_core_fuzz PRIVATE ${ROTOR_FUZZ_FLAGS})
  target_include_directories(rotor_core_fuzz PUBLIC ${CMAKE_SOURCE_DIR}/consumer)
  target_link_libraries(rotor_core_fuzz PUBLIC PkgConfig::RDKAFKA PkgConfig::LIBUV
                        PkgConfig::JANSSON PkgConfig::LIBPQ PkgConfig::CURL PkgConfig::YAML
                        PkgConfig::MHD PkgConfig::CRYPTO m)
  foreach(src ${ROTOR_FUZZ_SOURCES})
    get_filename_component(name ${src} NAME_WE)
    add_executable(${name} ${src})
    target_compile_options(${name} PRIVATE -fsanitize=fuzzer,address,undefined
                           -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
    target_link_options(${name} PRIVATE -fsanitize=fuzzer,address,undefined)
    target_link_libraries(${name} PRIVATE rotor_core_fuzz)
  endforeach()
endif()

include(${CMAKE_SOURCE_DIR}/bench/bench.cmake)
