pkg_check_modules(CMOCKA REQUIRED IMPORTED_TARGET cmocka)
set(Cmocka_FOUND TRUE)
add_library(cmocka::cmocka ALIAS PkgConfig::CMOCKA)
