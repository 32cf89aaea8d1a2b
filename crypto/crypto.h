/* crypto.h - hashing, randomness and comparisons on mbedtls.
 *
 * Virtual keys are stored and compared only as SHA-256 digests; request
 * ids and keys come from the OS random source (getrandom). */
#ifndef TG_CRYPTO_CRYPTO_H
#define TG_CRYPTO_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CRYPTO_SHA256_LEN 32
#define CRYPTO_SHA256_HEX_LEN 64

/* SHA-256 of n bytes into out[32]. */
void crypto_sha256(const void *p, size_t n, uint8_t out[CRYPTO_SHA256_LEN]);
/* HMAC-SHA256 of n bytes with a klen-byte key into out[32]. 0 or -errno. */
int crypto_hmac_sha256(const void *key, size_t klen, const void *p, size_t n,
                       uint8_t out[CRYPTO_SHA256_LEN]) __attribute__((warn_unused_result));
/* Lower-case hex of n bytes into out (2n chars + NUL). */
void crypto_hex(const uint8_t *p, size_t n, char *out);
/* Parses 2n hex digits (either case) into out[n]. 0 or -EINVAL. */
int crypto_unhex(const char *hex, size_t hexlen, uint8_t *out, size_t n)
    __attribute__((warn_unused_result));
/* Constant-time equality of two n-byte strings. */
bool crypto_equal(const void *a, const void *b, size_t n);
/* n bytes from the OS random source. 0 or a negative errno. */
int crypto_random(void *out, size_t n) __attribute__((warn_unused_result));
/* A new request id: 32 lower-case hex chars (128 random bits) + NUL.
 * Uses a per-thread buffered random pool, so it costs no syscall per id. */
void crypto_request_id(char out[33]);

#endif
