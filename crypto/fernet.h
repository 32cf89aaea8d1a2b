/* fernet.h - Fernet-compatible secret box (version 0x80 tokens) on mbedtls.
 *
 * A token is base64url(0x80 | timestamp (8, big-endian) | IV (16) |
 * AES-128-CBC/PKCS7 ciphertext | HMAC-SHA256 of everything before), padded
 * with '=' (the Fernet spec; interoperable with Python's
 * cryptography.fernet). A 32-byte key is the 16-byte signing key followed by
 * the 16-byte encryption key; its text form is 44 chars of base64url.
 *
 * Decryption is strict where Python is lenient: characters outside the
 * base64url alphabet, missing or extra padding, characters after the padding
 * and non-zero unused bits in the last character are all rejected. The MAC is
 * checked (in constant time) before anything is decrypted.
 *
 * Errors are negative errnos: -EINVAL malformed input, -EACCES bad signature
 * (no key of the ring matches), -ETIMEDOUT expired or from the future,
 * -E2BIG output over its buf's cap, -ENOMEM. */
#ifndef TG_CRYPTO_FERNET_H
#define TG_CRYPTO_FERNET_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/base/buf.h"

#define FERNET_KEY_LEN 32             /* signing key (16) + encryption key (16) */
#define FERNET_KEY_B64_LEN 44         /* base64url text of a key, '=' padded */
#define FERNET_IV_LEN 16              /* AES-CBC IV in every token */
#define FERNET_MAX_KEYS 8             /* keys a keyring holds */
#define FERNET_MAX_CLOCK_SKEW 60      /* seconds a token may lie in the future */
#define FERNET_PBKDF2_MIN_ITER 100000 /* least PBKDF2 iterations accepted */
#define FERNET_SALT_MIN_LEN 16        /* least PBKDF2 salt length accepted */

/* Keys for rotation: keys[0] encrypts, every key decrypts. Start from a
 * zeroed struct ({0}); wipe with fernet_keyring_wipe. */
typedef struct fernet_keyring {
    uint8_t keys[FERNET_MAX_KEYS][FERNET_KEY_LEN]; /* raw keys, newest first */
    size_t n;                                      /* keys in use */
} fernet_keyring;

/* Decodes the text form of a key: strict base64url of exactly 32 bytes, 44
 * chars ending in '=' or the 43-char unpadded form. 0 or -EINVAL. */
int fernet_key_decode(const char *b64, size_t n, uint8_t key[FERNET_KEY_LEN])
    __attribute__((warn_unused_result));
/* Writes the 44-char text form of key plus a NUL into out. Always 0. */
int fernet_key_encode(const uint8_t key[FERNET_KEY_LEN], char out[FERNET_KEY_B64_LEN + 1])
    __attribute__((warn_unused_result));
/* A new random key from the OS source, in text form (44 chars + NUL).
 * 0 or a negative errno from crypto_random. */
int fernet_keygen(char out[FERNET_KEY_B64_LEN + 1]) __attribute__((warn_unused_result));
/* Derives a key from a passphrase with PBKDF2-HMAC-SHA256. Needs a non-empty
 * passphrase, salt_len >= FERNET_SALT_MIN_LEN and iterations >=
 * FERNET_PBKDF2_MIN_ITER. 0, -EINVAL, -ENOMEM. */
int fernet_key_derive(const char *passphrase, size_t n, const uint8_t *salt, size_t salt_len,
                      uint32_t iterations, uint8_t key[FERNET_KEY_LEN])
    __attribute__((warn_unused_result));

/* Appends a copy of key to the ring (the first key added encrypts).
 * 0 or -ENOSPC when the ring holds FERNET_MAX_KEYS already. */
int fernet_keyring_add(fernet_keyring *kr, const uint8_t key[FERNET_KEY_LEN])
    __attribute__((warn_unused_result));
/* Zeroes every key and empties the ring. */
void fernet_keyring_wipe(fernet_keyring *kr);

/* Appends the token for n bytes of plain, stamped with now (Unix seconds),
 * encrypted with kr->keys[0] and a random IV, to out (no NUL counted).
 * 0, -EINVAL (empty ring), -E2BIG, -ENOMEM, or an error of crypto_random;
 * out is unchanged on failure. */
int fernet_encrypt(const fernet_keyring *kr, const void *plain, size_t n, uint64_t now, buf *out)
    __attribute__((warn_unused_result));
/* Decrypts a token of n chars that one of the ring's keys signed and appends
 * the plaintext to out. Rejects tokens older than ttl_sec at now (0: no
 * limit) and, always, tokens stamped more than FERNET_MAX_CLOCK_SKEW seconds
 * after now. 0, -EINVAL, -EACCES, -ETIMEDOUT, -E2BIG, -ENOMEM; on failure
 * out->len is unchanged and no plaintext byte is left in out. */
int fernet_decrypt(const fernet_keyring *kr, const char *token, size_t n, uint64_t now,
                   uint32_t ttl_sec, buf *out) __attribute__((warn_unused_result));

/* Internal, for tests. */

/* fernet_encrypt with one key and a given IV (the spec's generate vectors).
 * Never reuse an IV with a key in real use. Errors as fernet_encrypt. */
int fernet_encrypt_iv(const uint8_t key[FERNET_KEY_LEN], const uint8_t iv[FERNET_IV_LEN],
                      const void *plain, size_t n, uint64_t now, buf *out)
    __attribute__((warn_unused_result));
/* PBKDF2-HMAC-SHA256 without fernet_key_derive's minimums (known-answer
 * tests use c = 1). 0, -EINVAL, -ENOMEM. */
int fernet__pbkdf2(const void *pass, size_t n, const uint8_t *salt, size_t salt_len,
                   uint32_t iterations, uint8_t *out, size_t out_len)
    __attribute__((warn_unused_result));

#endif
