find_path(MBEDTLS_INCLUDE_DIR mbedtls/ssl.h)
find_library(MBEDTLS_LIB mbedtls)
find_library(MBEDX509_LIB mbedx509)
find_library(MBEDCRYPTO_LIB mbedcrypto)
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(MbedTLS DEFAULT_MSG
  MBEDTLS_INCLUDE_DIR MBEDTLS_LIB MBEDX509_LIB MBEDCRYPTO_LIB)
if(MbedTLS_FOUND AND NOT TARGET mbedtls::mbedtls)
  add_library(mbedtls::mbedcrypto UNKNOWN IMPORTED)
  set_target_properties(mbedtls::mbedcrypto PROPERTIES
    IMPORTED_LOCATION ${MBEDCRYPTO_LIB} INTERFACE_INCLUDE_DIRECTORIES ${MBEDTLS_INCLUDE_DIR})
  add_library(mbedtls::mbedx509 UNKNOWN IMPORTED)
  set_target_properties(mbedtls::mbedx509 PROPERTIES
    IMPORTED_LOCATION ${MBEDX509_LIB} INTERFACE_LINK_LIBRARIES mbedtls::mbedcrypto)
  add_library(mbedtls::mbedtls UNKNOWN IMPORTED)
  set_target_properties(mbedtls::mbedtls PROPERTIES
    IMPORTED_LOCATION ${MBEDTLS_LIB} INTERFACE_LINK_LIBRARIES mbedtls::mbedx509)
endif()
