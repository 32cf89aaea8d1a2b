# llhttp comes as C sources in Debian's node-llhttp package; compile them
# into a static library here (nothing is vendored in this repository).
find_path(LLHTTP_INCLUDE_DIR llhttp.h PATHS /usr/share/include/llhttp /usr/include/llhttp)
find_path(LLHTTP_SOURCE_DIR llhttp.c PATHS /usr/share/llhttp)
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(Llhttp DEFAULT_MSG LLHTTP_INCLUDE_DIR LLHTTP_SOURCE_DIR)
if(Llhttp_FOUND AND NOT TARGET llhttp::llhttp)
  add_library(llhttp_static STATIC
    ${LLHTTP_SOURCE_DIR}/api.c ${LLHTTP_SOURCE_DIR}/http.c ${LLHTTP_SOURCE_DIR}/llhttp.c)
  target_include_directories(llhttp_static SYSTEM PUBLIC ${LLHTTP_INCLUDE_DIR})
  set_target_properties(llhttp_static PROPERTIES POSITION_INDEPENDENT_CODE ON)
  target_compile_options(llhttp_static PRIVATE -w)
  add_library(llhttp::llhttp ALIAS llhttp_static)
endif()
