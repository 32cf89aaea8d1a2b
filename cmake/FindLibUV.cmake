pkg_check_modules(LIBUV REQUIRED IMPORTED_TARGET libuv>=1.44)
set(LibUV_FOUND TRUE)
add_library(uv::uv ALIAS PkgConfig::LIBUV)
