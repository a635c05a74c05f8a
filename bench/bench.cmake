# Benchmarks: every bench/bench_*.c is a program linked to rotor_core that prints ratios against
# a baseline measured in the same process. Not tests: bench/run.sh builds and runs them.
file(GLOB ROTOR_BENCH_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/bench/bench_*.c)
list(REMOVE_ITEM ROTOR_BENCH_SOURCES ${CMAKE_SOURCE_DIR}/bench/bench_common.c)
foreach(src ${ROTOR_BENCH_SOURCES})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src} ${CMAKE_SOURCE_DIR}/bench/bench_common.c)
  target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/bench)
  target_link_libraries(${name} PRIVATE rotor_core)
endforeach()
