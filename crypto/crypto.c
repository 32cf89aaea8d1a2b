/* crypto.c - hashing, randomness and comparisons. */
#include "crypto/crypto.h"

#include <errno.h>
#include <mbedtls/md.h>
#include <mbedtls/sha256.h>
#include <string.h>
#include <sys/random.h>

void crypto_sha256(const void *p, size_t n, uint8_t out[CRYPTO_SHA256_LEN])
{
    mbedtls_sha256_ret((const unsigned char *)p, n, out, 0);
}

int crypto_hmac_sha256(const void *key, size_t klen, const void *p, size_t n,
                       uint8_t out[CRYPTO_SHA256_LEN])
{
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    if (!md)
        return -ENOSYS;
    return mbedtls_md_hmac(md, key, klen, p, n, out) == 0 ? 0 : -EINVAL;
}

void crypto_hex(const uint8_t *p, size_t n, char *out)
{
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hx[p[i] >> 4];
        out[2 * i + 1] = hx[p[i] & 15];
    }
    out[2 * n] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int crypto_unhex(const char *hex, size_t hexlen, uint8_t *out, size_t n)
{
    if (hexlen != 2 * n)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -EINVAL;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

bool crypto_equal(const void *a, const void *b, size_t n)
{
    const volatile uint8_t *x = a, *y = b;
    uint8_t d = 0;
    for (size_t i = 0; i < n; i++)
        d |= x[i] ^ y[i];
    return d == 0;
}

int crypto_random(void *out, size_t n)
{
    uint8_t *p = out;
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

void crypto_request_id(char out[33])
{
    static _Thread_local uint8_t pool[1024];
    static _Thread_local size_t used = sizeof(pool);
    if (used + 16 > sizeof(pool)) {
        if (crypto_random(pool, sizeof(pool)) != 0) {
            /* getrandom cannot fail on Linux >= 3.17 once seeded; stay
             * unique anyway by mixing a counter into the old pool */
            static _Thread_local uint64_t ctr;
            ctr++;
            memcpy(pool, &ctr, sizeof(ctr));
        }
        used = 0;
    }
    crypto_hex(pool + used, 16, out);
    used += 16;
}
