/* version.c - the build's version string. */
#include "daemon/version.h"

const char tg_version[] = TG_VERSION;
