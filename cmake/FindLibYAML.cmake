pkg_check_modules(LIBYAML REQUIRED IMPORTED_TARGET yaml-0.1)
set(LibYAML_FOUND TRUE)
add_library(yaml::yaml ALIAS PkgConfig::LIBYAML)
