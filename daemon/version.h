/* version.h - the build's version string. */
#ifndef TG_DAEMON_VERSION_H
#define TG_DAEMON_VERSION_H

extern const char tg_version[]; /* "MAJOR.MINOR.PATCH" from CMakeLists.txt */

#endif
