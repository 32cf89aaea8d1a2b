pkg_check_modules(JANSSON REQUIRED IMPORTED_TARGET jansson>=2.13)
set(Jansson_FOUND TRUE)
add_library(jansson::jansson ALIAS PkgConfig::JANSSON)
