# jsmn is a single header (Debian libjsmn-dev); include it with JSMN_STATIC
# in the one translation unit that uses it.
find_path(JSMN_INCLUDE_DIR jsmn.h)
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(Jsmn DEFAULT_MSG JSMN_INCLUDE_DIR)
