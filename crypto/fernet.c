/* fernet.c - Fernet tokens: AES-128-CBC + HMAC-SHA256, strict base64url. */
#include "crypto/fernet.h"

#include <errno.h>
#include <mbedtls/aes.h>
#include <mbedtls/md.h>
#include <mbedtls/pkcs5.h>
#include <mbedtls/platform_util.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto.h"

#define VERSION 0x80
#define HALF 16                         /* signing key | encryption key */
#define BLOCK 16                        /* AES block */
#define MAC_LEN 32                      /* HMAC-SHA256 */
#define HDR_LEN (1 + 8 + FERNET_IV_LEN) /* version | timestamp | IV */
#define MIN_RAW (HDR_LEN + BLOCK + MAC_LEN)

/* Base64url, branch-free in the data so secret keys leave no trace in
 * branches or table lookups (libsodium's approach). */

/* Character for a 6-bit value. */
static char b64_chr(unsigned v)
{
    int x = (int)v, c = x + 'A';
    c += ((25 - x) >> 8) & ('a' - 26 - 'A');        /* 26..51 -> 'a'.. */
    c += ((51 - x) >> 8) & ('0' - 52 - ('a' - 26)); /* 52..61 -> '0'.. */
    c += ((61 - x) >> 8) & ('-' - 62 - ('0' - 52)); /* 62 -> '-' */
    c += ((62 - x) >> 8) & ('_' - '-' - 1);         /* 63 -> '_' */
    return (char)c;
}

/* 6-bit value of a character, -1 outside the URL-safe alphabet. */
static int b64_val(unsigned char ch)
{
    int c = ch, v = -1;
    v += (((('A' - 1) - c) & (c - ('Z' + 1))) >> 8) & (c - 'A' + 1);
    v += (((('a' - 1) - c) & (c - ('z' + 1))) >> 8) & (c - 'a' + 26 + 1);
    v += (((('0' - 1) - c) & (c - ('9' + 1))) >> 8) & (c - '0' + 52 + 1);
    v += (((('-' - 1) - c) & (c - ('-' + 1))) >> 8) & (62 + 1);
    v += (((('_' - 1) - c) & (c - ('_' + 1))) >> 8) & (63 + 1);
    return v;
}

/* Length of the '='-padded encoding of n bytes. */
static size_t b64_enc_len(size_t n)
{
    return (n + 2) / 3 * 4;
}

/* Encodes n bytes into out with '=' padding; no NUL. */
static void b64url_encode(const uint8_t *p, size_t n, char *out)
{
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t w = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *out++ = b64_chr(w >> 18);
        *out++ = b64_chr(w >> 12 & 63);
        *out++ = b64_chr(w >> 6 & 63);
        *out++ = b64_chr(w & 63);
    }
    if (n - i == 1) {
        *out++ = b64_chr(p[i] >> 2);
        *out++ = b64_chr((unsigned)(p[i] & 3) << 4);
        *out++ = '=';
        *out++ = '=';
    } else if (n - i == 2) {
        uint32_t w = (uint32_t)p[i] << 8 | p[i + 1];
        *out++ = b64_chr(w >> 10);
        *out++ = b64_chr(w >> 4 & 63);
        *out++ = b64_chr((w & 15) << 2);
        *out++ = '=';
    }
}

/* Checks the shape of a base64url text and gives the number of data chars
 * (*m) and decoded bytes (*len). padded: exactly the '=' needed to reach a
 * multiple of 4 (none when already one); otherwise no '=' at all. A length
 * of 1 mod 4 is never valid. The alphabet is checked by b64url_decode. */
static int b64url_shape(const char *s, size_t n, bool padded, size_t *m, size_t *len)
{
    size_t k = n;
    if (padded) {
        if (n % 4 != 0)
            return -EINVAL;
        while (k > 0 && n - k < 2 && s[k - 1] == '=')
            k--;
        if (n - k != (4 - k % 4) % 4)
            return -EINVAL;
    } else if (k % 4 == 1) {
        return -EINVAL;
    }
    *m = k;
    *len = k / 4 * 3 + (k % 4 ? k % 4 - 1 : 0);
    return 0;
}

/* Decodes the m data chars of s (see b64url_shape) into out. Every char
 * must be in the URL-safe alphabet and the unused low bits of the last one
 * zero (the encoding is canonical, so a token has exactly one text form). */
static int b64url_decode(const char *s, size_t m, uint8_t *out)
{
    int bad = 0;
    size_t i = 0;
    for (; i + 4 <= m; i += 4) {
        int a = b64_val((unsigned char)s[i]), b = b64_val((unsigned char)s[i + 1]);
        int c = b64_val((unsigned char)s[i + 2]), d = b64_val((unsigned char)s[i + 3]);
        bad |= a | b | c | d;
        uint32_t w = (uint32_t)(a & 63) << 18 | (uint32_t)(b & 63) << 12 | (uint32_t)(c & 63) << 6 |
                     (uint32_t)(d & 63);
        *out++ = (uint8_t)(w >> 16);
        *out++ = (uint8_t)(w >> 8);
        *out++ = (uint8_t)w;
    }
    if (m - i == 2) {
        int a = b64_val((unsigned char)s[i]), b = b64_val((unsigned char)s[i + 1]);
        bad |= a | b | ((b & 15) ? -1 : 0);
        *out++ = (uint8_t)((a & 63) << 2 | (b & 63) >> 4);
    } else if (m - i == 3) {
        int a = b64_val((unsigned char)s[i]), b = b64_val((unsigned char)s[i + 1]);
        int c = b64_val((unsigned char)s[i + 2]);
        bad |= a | b | c | ((c & 3) ? -1 : 0);
        *out++ = (uint8_t)((a & 63) << 2 | (b & 63) >> 4);
        *out++ = (uint8_t)((b & 15) << 4 | (c & 63) >> 2);
    }
    return bad < 0 ? -EINVAL : 0;
}

/* mbedtls error to errno: only allocation can fail for the inputs we pass. */
static int md_err(int rc)
{
    if (rc == 0)
        return 0;
    return rc == MBEDTLS_ERR_MD_ALLOC_FAILED ? -ENOMEM : -EINVAL;
}

/* HMAC-SHA256 of n bytes with the signing half of key. */
static int sign(const uint8_t key[FERNET_KEY_LEN], const uint8_t *p, size_t n, uint8_t mac[MAC_LEN])
{
    return md_err(
        mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), key, HALF, p, n, mac));
}

int fernet_key_decode(const char *b64, size_t n, uint8_t key[FERNET_KEY_LEN])
{
    size_t m, len;
    if (n != FERNET_KEY_B64_LEN && n != FERNET_KEY_B64_LEN - 1)
        return -EINVAL;
    if (b64url_shape(b64, n, n == FERNET_KEY_B64_LEN, &m, &len) != 0 || len != FERNET_KEY_LEN)
        return -EINVAL;
    uint8_t tmp[FERNET_KEY_LEN];
    int rc = b64url_decode(b64, m, tmp);
    if (rc == 0)
        memcpy(key, tmp, FERNET_KEY_LEN);
    mbedtls_platform_zeroize(tmp, sizeof tmp);
    return rc;
}

int fernet_key_encode(const uint8_t key[FERNET_KEY_LEN], char out[FERNET_KEY_B64_LEN + 1])
{
    b64url_encode(key, FERNET_KEY_LEN, out);
    out[FERNET_KEY_B64_LEN] = '\0';
    return 0;
}

int fernet_keygen(char out[FERNET_KEY_B64_LEN + 1])
{
    uint8_t key[FERNET_KEY_LEN];
    int rc = crypto_random(key, sizeof key);
    if (rc == 0)
        rc = fernet_key_encode(key, out);
    mbedtls_platform_zeroize(key, sizeof key);
    return rc;
}

int fernet__pbkdf2(const void *pass, size_t n, const uint8_t *salt, size_t salt_len,
                   uint32_t iterations, uint8_t *out, size_t out_len)
{
    if (iterations == 0 || out_len == 0 || out_len > UINT32_MAX || (!pass && n) ||
        (!salt && salt_len))
        return -EINVAL;
    mbedtls_md_context_t md;
    mbedtls_md_init(&md);
    int rc = md_err(mbedtls_md_setup(&md, mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), 1));
    if (rc)
        goto out_free_md;
    rc = md_err(mbedtls_pkcs5_pbkdf2_hmac(&md, pass, n, salt, salt_len, iterations,
                                          (uint32_t)out_len, out));
    if (rc)
        mbedtls_platform_zeroize(out, out_len);
out_free_md:
    mbedtls_md_free(&md); /* zeroizes the HMAC state */
    return rc;
}

int fernet_key_derive(const char *passphrase, size_t n, const uint8_t *salt, size_t salt_len,
                      uint32_t iterations, uint8_t key[FERNET_KEY_LEN])
{
    if (!passphrase || n == 0 || !salt || salt_len < FERNET_SALT_MIN_LEN ||
        iterations < FERNET_PBKDF2_MIN_ITER)
        return -EINVAL;
    return fernet__pbkdf2(passphrase, n, salt, salt_len, iterations, key, FERNET_KEY_LEN);
}

int fernet_keyring_add(fernet_keyring *kr, const uint8_t key[FERNET_KEY_LEN])
{
    if (kr->n >= FERNET_MAX_KEYS)
        return -ENOSPC;
    memcpy(kr->keys[kr->n++], key, FERNET_KEY_LEN);
    return 0;
}

void fernet_keyring_wipe(fernet_keyring *kr)
{
    mbedtls_platform_zeroize(kr, sizeof *kr);
}

int fernet_encrypt_iv(const uint8_t key[FERNET_KEY_LEN], const uint8_t iv[FERNET_IV_LEN],
                      const void *plain, size_t n, uint64_t now, buf *out)
{
    const uint8_t *pt = plain;
    if (n > SIZE_MAX / 2)
        return -E2BIG;
    if (!pt && n)
        return -EINVAL;
    size_t full = n / BLOCK * BLOCK, ctlen = full + BLOCK;
    size_t rawlen = HDR_LEN + ctlen + MAC_LEN, toklen = b64_enc_len(rawlen);
    int rc = buf_reserve(out, toklen);
    if (rc)
        return rc;
    uint8_t *raw = malloc(rawlen);
    if (!raw)
        return -ENOMEM;

    raw[0] = VERSION;
    for (int i = 0; i < 8; i++)
        raw[1 + i] = (uint8_t)(now >> (56 - 8 * i));
    memcpy(raw + 9, iv, FERNET_IV_LEN);

    uint8_t chain[BLOCK], last[BLOCK];
    mbedtls_aes_context aes;
    mbedtls_aes_init(&aes);
    rc = mbedtls_aes_setkey_enc(&aes, key + HALF, 128) ? -EINVAL : 0;
    if (rc)
        goto out_free_aes;
    memcpy(chain, iv, BLOCK);
    if (full && mbedtls_aes_crypt_cbc(&aes, MBEDTLS_AES_ENCRYPT, full, chain, pt, raw + HDR_LEN)) {
        rc = -EINVAL;
        goto out_free_aes;
    }
    /* PKCS7: the tail plus 1..16 bytes of the pad length */
    size_t tail = n - full;
    if (tail)
        memcpy(last, pt + full, tail);
    memset(last + tail, (int)(BLOCK - tail), BLOCK - tail);
    if (mbedtls_aes_crypt_cbc(&aes, MBEDTLS_AES_ENCRYPT, BLOCK, chain, last,
                              raw + HDR_LEN + full)) {
        rc = -EINVAL;
        goto out_free_aes;
    }
    rc = sign(key, raw, rawlen - MAC_LEN, raw + rawlen - MAC_LEN);
    if (rc)
        goto out_free_aes;
    b64url_encode(raw, rawlen, out->data + out->len);
    out->len += toklen;
    out->data[out->len] = '\0';
out_free_aes:
    mbedtls_aes_free(&aes); /* zeroizes the key schedule */
    mbedtls_platform_zeroize(last, sizeof last);
    mbedtls_platform_zeroize(chain, sizeof chain);
    free(raw);
    return rc;
}

int fernet_encrypt(const fernet_keyring *kr, const void *plain, size_t n, uint64_t now, buf *out)
{
    if (!kr || kr->n == 0 || kr->n > FERNET_MAX_KEYS)
        return -EINVAL;
    uint8_t iv[FERNET_IV_LEN];
    int rc = crypto_random(iv, sizeof iv);
    if (rc)
        return rc;
    return fernet_encrypt_iv(kr->keys[0], iv, plain, n, now, out);
}

/* Decrypts the authenticated ciphertext ct (ctlen > 0, a multiple of 16)
 * and appends the unpadded plaintext to out. The last block is decrypted
 * first to learn the exact length, then the rest straight into out. */
static int decrypt_ct(const uint8_t key[FERNET_KEY_LEN], const uint8_t iv[FERNET_IV_LEN],
                      const uint8_t *ct, size_t ctlen, buf *out)
{
    uint8_t chain[BLOCK], last[BLOCK];
    size_t head = ctlen - BLOCK, ptlen = 0;
    bool wrote = false;
    mbedtls_aes_context aes;
    mbedtls_aes_init(&aes);
    int rc = mbedtls_aes_setkey_dec(&aes, key + HALF, 128) ? -EINVAL : 0;
    if (rc)
        goto out_free_aes;
    memcpy(chain, head ? ct + head - BLOCK : iv, BLOCK);
    if (mbedtls_aes_crypt_cbc(&aes, MBEDTLS_AES_DECRYPT, BLOCK, chain, ct + head, last)) {
        rc = -EINVAL;
        goto out_free_aes;
    }
    /* PKCS7. The MAC already vouched for the ciphertext, so a padding
     * error here is no oracle; check without branching on bytes anyway. */
    unsigned pad = last[BLOCK - 1], bad = (pad - 1u) >> 8 | (BLOCK - pad) >> 8;
    for (unsigned i = 0; i < BLOCK; i++) {
        unsigned in_pad = ((BLOCK - 1 - i) - pad) >> 8 & 1; /* i >= BLOCK - pad */
        bad |= in_pad & ((last[i] ^ pad) != 0);
    }
    if (bad) {
        rc = -EINVAL;
        goto out_free_aes;
    }
    ptlen = ctlen - pad;
    rc = buf_reserve(out, ptlen);
    if (rc)
        goto out_free_aes;
    wrote = true;
    memcpy(chain, iv, BLOCK);
    if (head && mbedtls_aes_crypt_cbc(&aes, MBEDTLS_AES_DECRYPT, head, chain, ct,
                                      (uint8_t *)out->data + out->len)) {
        rc = -EINVAL;
        goto out_free_aes;
    }
    memcpy(out->data + out->len + head, last, BLOCK - pad);
    out->len += ptlen;
    out->data[out->len] = '\0';
out_free_aes:
    if (rc && wrote)
        mbedtls_platform_zeroize(out->data + out->len, head);
    mbedtls_aes_free(&aes);
    mbedtls_platform_zeroize(last, sizeof last);
    mbedtls_platform_zeroize(chain, sizeof chain);
    return rc;
}

int fernet_decrypt(const fernet_keyring *kr, const char *token, size_t n, uint64_t now,
                   uint32_t ttl_sec, buf *out)
{
    size_t m, rawlen;
    if (!kr || kr->n == 0 || kr->n > FERNET_MAX_KEYS || (!token && n))
        return -EINVAL;
    /* the shape first: lengths are public, so no need to decode junk */
    if (b64url_shape(token, n, true, &m, &rawlen) != 0 || rawlen < MIN_RAW ||
        (rawlen - HDR_LEN - MAC_LEN) % BLOCK != 0)
        return -EINVAL;
    uint8_t *raw = malloc(rawlen);
    if (!raw)
        return -ENOMEM;
    int rc = b64url_decode(token, m, raw);
    if (rc)
        goto out_free_raw;
    if (raw[0] != VERSION) {
        rc = -EINVAL;
        goto out_free_raw;
    }

    /* authenticate before looking at anything else */
    const uint8_t *key = NULL;
    size_t signed_len = rawlen - MAC_LEN;
    uint8_t mac[MAC_LEN];
    for (size_t i = 0; i < kr->n && !key; i++) {
        rc = sign(kr->keys[i], raw, signed_len, mac);
        if (rc)
            goto out_wipe_mac;
        if (crypto_equal(mac, raw + signed_len, MAC_LEN))
            key = kr->keys[i];
    }
    if (!key) {
        rc = -EACCES;
        goto out_wipe_mac;
    }

    uint64_t ts = 0;
    for (int i = 0; i < 8; i++)
        ts = ts << 8 | raw[1 + i];
    if ((ttl_sec && now > ts && now - ts > ttl_sec) ||
        (ts > now && ts - now > FERNET_MAX_CLOCK_SKEW)) {
        rc = -ETIMEDOUT;
        goto out_wipe_mac;
    }
    rc = decrypt_ct(key, raw + 9, raw + HDR_LEN, signed_len - HDR_LEN, out);
out_wipe_mac:
    mbedtls_platform_zeroize(mac, sizeof mac);
out_free_raw:
    free(raw);
    return rc;
}
