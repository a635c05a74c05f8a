# sample.cmake: rotor-sample-app, the blue/green sample application (sample/*.c). It does not link
# rotor_core: it stands for the customer's application, which knows nothing of rotor but the
# password file rotor's store writes. Warnings and sanitizers come from the top-level options.
find_package(Threads REQUIRED)
file(GLOB ROTOR_SAMPLE_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/sample/*.c)
add_executable(rotor-sample-app ${ROTOR_SAMPLE_SOURCES})
target_link_libraries(rotor-sample-app PRIVATE PkgConfig::LIBPQ PkgConfig::MHD PkgConfig::JANSSON
                      Threads::Threads)
