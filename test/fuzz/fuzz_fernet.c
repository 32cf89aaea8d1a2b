/* fuzz_fernet.c - libFuzzer driver for the Fernet secret box
 * (crypto/fernet.c).
 *
 * A fixed ring of two keys (A encrypts, A and B decrypt) and a fixed clock.
 * For every input, with abort() on a violation:
 * 1. the input as a token: fernet_decrypt returns 0 or one of its
 *    documented errors; on failure out keeps exactly what it held before
 *    ("pre"); on success the plaintext, encrypted again with the ring
 *    (key A), decrypts back to the same bytes, and a ring of B alone
 *    refuses that new token with -EACCES;
 * 2. the input (its first 4 KiB) as plaintext: encrypt, then decrypt with
 *    the ring and with a ring of A alone, gives the same bytes; the token is
 *    strict base64url of the documented length;
 * 3. the input decoded leniently as base64url and, when long enough,
 *    re-signed with key A's signing half (version byte, timestamp, IV and
 *    ciphertext as given): the MAC now matches, so decryption must not say
 *    -EACCES; it reaches the AES/padding checks, which must hold on any
 *    ciphertext.
 * No crash, no leak (ASan/LSan): every buf is freed on every path.
 *
 * Build: cmake -DTG_FUZZ=ON (clang) builds fuzz_fernet; ctest replays
 * test/fuzz/corpus/fernet/ with replay_fuzz_fernet. By hand:
 *   CC=clang cmake -S . -B build-fuzz -DTG_FUZZ=ON -DTG_SANITIZE=ON
 *   cmake --build build-fuzz --target fuzz_fernet
 *   cp -r test/fuzz/corpus/fernet /tmp/fc && build-fuzz/test/fuzz_fernet -timeout=10 /tmp/fc
 * The corpus tokens were made with python3-cryptography (Fernet) with the
 * keys below, at timestamps near NOW. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto.h"
#include "crypto/fernet.h"
#include "daemon/base/buf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The spec's key and one more, in text form. */
#define KEY_A "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4="
#define KEY_B "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="
#define NOW UINT64_C(1700000000)
#define PLAIN_MAX 4096u
#define OUT_MAX (1u << 20)

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static void must(int rc)
{
    if (rc)
        abort();
}

static void ring_of(fernet_keyring *kr, const char *const *texts, size_t n)
{
    memset(kr, 0, sizeof(*kr));
    for (size_t i = 0; i < n; i++) {
        uint8_t key[FERNET_KEY_LEN];
        must(fernet_key_decode(texts[i], strlen(texts[i]), key));
        must(fernet_keyring_add(kr, key));
    }
}

static bool decrypt_error(int rc)
{
    return rc == -EINVAL || rc == -EACCES || rc == -ETIMEDOUT || rc == -E2BIG || rc == -ENOMEM;
}

/* Decrypts tok into a buf that already holds "pre"; checks the documented
 * contract on out and returns the result, the plaintext in *plain (freed by
 * the caller, also on failure). */
static int decrypt(const fernet_keyring *kr, const char *tok, size_t n, uint32_t ttl, buf *plain)
{
    buf_init(plain, OUT_MAX);
    must(buf_append_str(plain, "pre"));
    int rc = fernet_decrypt(kr, tok, n, NOW, ttl, plain);
    if (rc != 0 && !decrypt_error(rc))
        abort();
    if (plain->len < 3 || memcmp(plain->data, "pre", 3) != 0 || plain->data[plain->len] != '\0')
        abort();
    if (rc != 0 && plain->len != 3)
        abort();
    return rc;
}

/* Encrypts n bytes and checks that the ring (and ring2, if given) gives
 * them back. */
static void roundtrip(const fernet_keyring *kr, const fernet_keyring *only_a,
                      const fernet_keyring *only_b, const void *p, size_t n)
{
    buf tok, back;
    buf_init(&tok, OUT_MAX * 2);
    must(fernet_encrypt(kr, p, n, NOW, &tok));
    size_t raw = 1 + 8 + 16 + (n / 16 + 1) * 16 + 32;
    if (tok.len != (raw + 2) / 3 * 4 || strlen(tok.data) != tok.len)
        abort();
    for (size_t i = 0; i < tok.len; i++)
        if (!memchr(B64, tok.data[i], 64) && !(tok.data[i] == '=' && i + 2 >= tok.len))
            abort();
    must(decrypt(kr, tok.data, tok.len, 60, &back));
    if (back.len != 3 + n || (n && memcmp(back.data + 3, p, n) != 0))
        abort();
    buf_free(&back);
    must(decrypt(only_a, tok.data, tok.len, 0, &back));
    if (back.len != 3 + n || (n && memcmp(back.data + 3, p, n) != 0))
        abort();
    buf_free(&back);
    if (decrypt(only_b, tok.data, tok.len, 0, &back) != -EACCES)
        abort();
    buf_free(&back);
    buf_free(&tok);
}

/* Lenient base64url decoding: characters outside the alphabet are skipped. */
static size_t b64_decode_lenient(const uint8_t *s, size_t n, uint8_t *out)
{
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        const char *c = s[i] ? memchr(B64, s[i], 64) : NULL;
        if (!c)
            continue;
        acc = (acc << 6) | (uint32_t)(c - B64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    return o;
}

/* Strict, '=' padded base64url; returns the length (out holds 4*ceil(n/3)+1). */
static size_t b64_encode(const uint8_t *p, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        out[o++] = B64[(v >> 18) & 63];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = i + 1 < n ? B64[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? B64[v & 63] : '=';
    }
    out[o] = '\0';
    return o;
}

/* Check 3: the input's bytes with a valid MAC. */
static void resigned(const fernet_keyring *kr, const fernet_keyring *only_a,
                     const fernet_keyring *only_b, const uint8_t *data, size_t size)
{
    enum { HEAD = 1 + 8 + 16, MAC = CRYPTO_SHA256_LEN };
    uint8_t *raw = malloc(size + MAC + 1);
    if (!raw)
        abort();
    size_t n = b64_decode_lenient(data, size, raw);
    if (n < HEAD + MAC) {
        free(raw);
        return;
    }
    n -= MAC; /* the last 32 bytes were the MAC: replace them */
    must(crypto_hmac_sha256(kr->keys[0], 16, raw, n, raw + n));
    n += MAC;
    char *tok = malloc((n + 2) / 3 * 4 + 1);
    if (!tok)
        abort();
    size_t tl = b64_encode(raw, n, tok);
    buf plain;
    int rc = decrypt(kr, tok, tl, 0, &plain);
    if (rc == -EACCES)
        abort();
    /* the version byte and the timestamp decide the other refusals */
    if (raw[0] != 0x80 && rc != -EINVAL)
        abort();
    if (rc == 0)
        roundtrip(kr, only_a, only_b, plain.data + 3, plain.len - 3);
    buf_free(&plain);
    free(tok);
    free(raw);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static fernet_keyring kr, only_a, only_b;
    static bool ready;
    if (!ready) {
        const char *ab[] = {KEY_A, KEY_B};
        ring_of(&kr, ab, 2);
        ring_of(&only_a, ab, 1);
        ring_of(&only_b, ab + 1, 1);
        ready = true;
    }

    /* 1. the input as a token (an exact-size copy: no NUL after it) */
    char *tok = malloc(size ? size : 1);
    if (!tok)
        abort();
    if (size)
        memcpy(tok, data, size);
    buf plain;
    int rc = decrypt(&kr, tok, size, 0, &plain);
    if (rc == 0) {
        roundtrip(&kr, &only_a, &only_b, plain.data + 3, plain.len - 3);
        /* a ttl only ever adds -ETIMEDOUT */
        buf again;
        int rc2 = decrypt(&kr, tok, size, 1, &again);
        if (rc2 != 0 && rc2 != -ETIMEDOUT)
            abort();
        if (rc2 == 0 && (again.len != plain.len || memcmp(again.data, plain.data, plain.len)))
            abort();
        buf_free(&again);
    }
    buf_free(&plain);
    free(tok);

    /* 2. the input as plaintext */
    roundtrip(&kr, &only_a, &only_b, data, size < PLAIN_MAX ? size : PLAIN_MAX);

    /* 3. the input re-signed */
    resigned(&kr, &only_a, &only_b, data, size);
    return 0;
}
