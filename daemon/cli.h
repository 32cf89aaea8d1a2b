/* cli.h - the subcommands of the tollgate binary besides running. */
#ifndef TG_DAEMON_CLI_H
#define TG_DAEMON_CLI_H

/* tollgate tokenize [--encoding NAME] [--data-dir DIR] [--count]
 *                   [--bench N] FILE|-
 * Prints the token ids of FILE's bytes (space-separated), or their count,
 * or encodes it N times and prints the speed. Exit 0, 1 usage or I/O
 * error, 2 tokenizer data missing. argv[0] is "tokenize". */
int cli_tokenize(int argc, char **argv);

/* tollgate keygen
 * Prints a new random secret-box key (Fernet-compatible: 32 bytes from the
 * OS, URL-safe base64) for encrypting provider credentials at rest. Exit 0,
 * or 1 on a usage error or when the OS gives no random bytes. */
int cli_keygen(int argc, char **argv);

/* tollgate rotate-secrets [--config FILE] [--dry-run]
 * Re-encrypts every stored provider credential and BYOK key with the first
 * key of secrets.keys, in one transaction; a secret no key opens aborts
 * the run with nothing changed. Exit 0, 1 failure, 2 usage. */
int cli_rotate_secrets(int argc, char **argv);

#endif
