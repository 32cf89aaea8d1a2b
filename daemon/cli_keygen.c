/* cli_keygen.c - `tollgate keygen`: a new secret-box key (see cli.h). */
#include <stdio.h>
#include <string.h>

#include "crypto/fernet.h"
#include "daemon/cli.h"

int cli_keygen(int argc, char **argv)
{
    if (argc > 1) {
        fprintf(stderr, "usage: tollgate keygen\n"
                        "Prints a new random key for the secret box (32 bytes, URL-safe base64,\n"
                        "Fernet-compatible) on stdout.\n");
        return strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ? 0 : 1;
    }
    char key[FERNET_KEY_B64_LEN + 1];
    if (fernet_keygen(key) != 0) {
        fprintf(stderr, "tollgate keygen: no random bytes from the operating system\n");
        return 1;
    }
    printf("%s\n", key);
    memset(key, 0, sizeof key);
    return fflush(stdout) == 0 ? 0 : 1;
}
