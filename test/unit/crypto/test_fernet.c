/* test_fernet.c - the Fernet secret box: the spec's generate/verify/invalid
 * vectors, strict base64url, keys, PBKDF2 (RFC 7914 §11), rotation, round
 * trips, tampering, time limits, and interop with python3-cryptography in
 * both directions (fernet_interop.py; fails, never skips, without it). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
#include <time.h>

#include <jansson.h>

#include "crypto/crypto.h"
#include "crypto/fernet.h"
#include "daemon/base/buf.h"

#define FIXTURE(name) TG_FIXTURES "/fernet/" name
#define INTEROP TG_SOURCE_DIR "/test/unit/crypto/fernet_interop.py"
#define INTEROP_CASES 24
#define OUT_MAX (8u << 20)

/* The spec's key and a token of "hello" made with it at 1985-10-26T08:20:00Z. */
#define SPEC_KEY "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4="
#define SPEC_TOKEN                                                                                 \
    "gAAAAAAdwJ6wAAECAwQFBgcICQoLDA0ODy021cpGVWKZ_eEwCGM4BLLF_5CV9dOPmrhuVUPgJobwOz7JcbmrR64j"     \
    "VmpU4IwqDA=="
#define SPEC_TS UINT64_C(499162800)

static json_t *load_fixture(const char *path)
{
    json_error_t err;
    json_t *j = json_load_file(path, 0, &err);
    if (!j || !json_is_array(j))
        fail_msg("%s:%d: %s", path, err.line, err.text);
    return j;
}

static const char *jstr(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    if (!s)
        fail_msg("vector without string \"%s\"", key);
    return s;
}

/* RFC 3339 "YYYY-MM-DDTHH:MM:SS(Z|+HH:MM|-HH:MM)" to Unix seconds. */
static uint64_t rfc3339(const char *s)
{
    struct tm tm = {0};
    int oh = 0, om = 0, used = 0;
    char sign = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &used) != 6)
        fail_msg("bad time %s", s);
    sign = s[used];
    if (sign == '+' || sign == '-') {
        if (sscanf(s + used + 1, "%2d:%2d", &oh, &om) != 2)
            fail_msg("bad offset in %s", s);
    } else if (sign != 'Z') {
        fail_msg("bad time %s", s);
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    int64_t t = (int64_t)timegm(&tm), off = (oh * 60 + om) * 60;
    return (uint64_t)(sign == '-' ? t + off : sign == '+' ? t - off : t);
}

static fernet_keyring ring_of(const char *secret)
{
    fernet_keyring kr = {0};
    uint8_t key[FERNET_KEY_LEN];
    assert_int_equal(fernet_key_decode(secret, strlen(secret), key), 0);
    assert_int_equal(fernet_keyring_add(&kr, key), 0);
    return kr;
}

static void random_key(uint8_t key[FERNET_KEY_LEN])
{
    assert_int_equal(crypto_random(key, FERNET_KEY_LEN), 0);
}

static uint32_t random_below(uint32_t n)
{
    uint32_t r;
    assert_int_equal(crypto_random(&r, sizeof r), 0);
    return r % n;
}

/* An independent (table-driven) base64url codec, to tamper with tokens. */
static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static size_t t_decode(const char *s, size_t n, uint8_t *out)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n && s[i] != '='; i++) {
        const char *p = strchr(B64, s[i]);
        assert_non_null(p);
        acc = acc << 6 | (uint32_t)(p - B64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    return o;
}

static void t_encode(const uint8_t *p, size_t n, buf *out)
{
    uint32_t acc = 0;
    int bits = 0;
    buf_reset(out);
    for (size_t i = 0; i < n; i++) {
        acc = acc << 8 | p[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            assert_int_equal(buf_append(out, &B64[acc >> bits & 63], 1), 0);
        }
    }
    if (bits)
        assert_int_equal(buf_append(out, &B64[acc << (6 - bits) & 63], 1), 0);
    while (out->len % 4)
        assert_int_equal(buf_append(out, "=", 1), 0);
}

/* Decrypts token with ring at now, no ttl; returns the error, out reset. */
static int dec(const fernet_keyring *kr, const char *token, size_t n, uint64_t now, buf *out)
{
    buf_reset(out);
    return fernet_decrypt(kr, token, n, now, 0, out);
}

/* --- the spec's vectors -------------------------------------------------- */

static void test_generate_vectors(void **state)
{
    json_t *vs = load_fixture(FIXTURE("generate.json"));
    size_t i, count = 0;
    json_t *v;
    buf out;
    buf_init(&out, OUT_MAX);
    json_array_foreach (vs, i, v) {
        uint8_t key[FERNET_KEY_LEN], iv[FERNET_IV_LEN];
        const char *secret = jstr(v, "secret"), *src = jstr(v, "src");
        assert_int_equal(fernet_key_decode(secret, strlen(secret), key), 0);
        json_t *jiv = json_object_get(v, "iv");
        assert_int_equal(json_array_size(jiv), FERNET_IV_LEN);
        for (size_t k = 0; k < FERNET_IV_LEN; k++)
            iv[k] = (uint8_t)json_integer_value(json_array_get(jiv, k));
        buf_reset(&out);
        assert_int_equal(
            fernet_encrypt_iv(key, iv, src, strlen(src), rfc3339(jstr(v, "now")), &out), 0);
        assert_string_equal(out.data, jstr(v, "token"));
        count++;
    }
    assert_true(count > 0);
    assert_int_equal(rfc3339("1985-10-26T01:20:00-07:00"), SPEC_TS);
    buf_free(&out);
    json_decref(vs);
}

static void test_verify_vectors(void **state)
{
    json_t *vs = load_fixture(FIXTURE("verify.json"));
    size_t i, count = 0;
    json_t *v;
    buf out;
    buf_init(&out, OUT_MAX);
    json_array_foreach (vs, i, v) {
        fernet_keyring kr = ring_of(jstr(v, "secret"));
        const char *tok = jstr(v, "token"), *src = jstr(v, "src");
        uint32_t ttl = (uint32_t)json_integer_value(json_object_get(v, "ttl_sec"));
        buf_reset(&out);
        assert_int_equal(fernet_decrypt(&kr, tok, strlen(tok), rfc3339(jstr(v, "now")), ttl, &out),
                         0);
        assert_int_equal(out.len, strlen(src));
        assert_memory_equal(out.data, src, out.len);
        count++;
    }
    assert_true(count > 0);
    buf_free(&out);
    json_decref(vs);
}

/* Every invalid.json vector and the error it must get. */
struct invalid_case {
    const char *desc; /* the vector's "desc" */
    int err;          /* expected return */
};

static struct invalid_case invalid_cases[] = {
    {"incorrect mac", -EACCES},                              /* MAC mismatch */
    {"too short", -EINVAL},                                  /* no ciphertext block */
    {"invalid base64", -EINVAL},                             /* '%' */
    {"payload size not multiple of block size", -EINVAL},    /* structural, before MAC */
    {"payload padding error", -EINVAL},                      /* authentic, bad PKCS7 */
    {"far-future TS (unacceptable clock skew)", -ETIMEDOUT}, /* authentic, ts > now + 60 */
    {"expired TTL", -ETIMEDOUT},                             /* authentic, 90 s old, ttl 60 */
    {"incorrect IV (causes padding error)", -EINVAL},        /* authentic, bad PKCS7 */
    {"trailing characters after b64 padding", -EINVAL},      /* python accepts it */
    {"invalid characters in b64", -EINVAL},                  /* python accepts it */
    {"invalid non-urlsafe characters in b64", -EINVAL},      /* '/' and '+' */
};
#define N_INVALID (sizeof invalid_cases / sizeof invalid_cases[0])

static void test_invalid_vector(void **state)
{
    const struct invalid_case *c = *state;
    json_t *vs = load_fixture(FIXTURE("invalid.json"));
    size_t i;
    json_t *v;
    bool found = false;
    buf out;
    buf_init(&out, OUT_MAX);
    json_array_foreach (vs, i, v) {
        if (strcmp(jstr(v, "desc"), c->desc) != 0)
            continue;
        found = true;
        fernet_keyring kr = ring_of(jstr(v, "secret"));
        const char *tok = jstr(v, "token");
        uint32_t ttl = (uint32_t)json_integer_value(json_object_get(v, "ttl_sec"));
        assert_int_equal(buf_append_str(&out, "keep"), 0);
        int rc = fernet_decrypt(&kr, tok, strlen(tok), rfc3339(jstr(v, "now")), ttl, &out);
        if (rc != c->err)
            fail_msg("\"%s\": got %d (%s), want %d", c->desc, rc, strerror(-rc), c->err);
        assert_int_equal(out.len, 4); /* nothing appended */
        assert_string_equal(out.data, "keep");
    }
    if (!found)
        fail_msg("no vector \"%s\" in invalid.json", c->desc);
    buf_free(&out);
    json_decref(vs);
}

/* Each vector of invalid.json has its own test above (a new one fails). */
static void test_invalid_all_listed(void **state)
{
    json_t *vs = load_fixture(FIXTURE("invalid.json"));
    size_t i, k;
    json_t *v;
    json_array_foreach (vs, i, v) {
        for (k = 0; k < N_INVALID; k++)
            if (strcmp(jstr(v, "desc"), invalid_cases[k].desc) == 0)
                break;
        if (k == N_INVALID)
            fail_msg("invalid.json vector \"%s\" has no test", jstr(v, "desc"));
    }
    assert_int_equal(json_array_size(vs), N_INVALID);
    json_decref(vs);
}

/* --- keys ---------------------------------------------------------------- */

static void test_key_codec(void **state)
{
    uint8_t key[FERNET_KEY_LEN], again[FERNET_KEY_LEN];
    char text[FERNET_KEY_B64_LEN + 1];
    assert_int_equal(fernet_key_decode(SPEC_KEY, 44, key), 0);
    assert_int_equal(key[0], 0x73); /* 'c' 'w' '_' -> 0x73 0x0f ... */
    assert_int_equal(fernet_key_encode(key, text), 0);
    assert_string_equal(text, SPEC_KEY);
    /* unpadded form */
    assert_int_equal(fernet_key_decode(SPEC_KEY, 43, again), 0);
    assert_memory_equal(key, again, FERNET_KEY_LEN);

    static const char *const bad[] = {
        "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e",    /* 42 chars */
        "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4==", /* 45 chars */
        "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e==",  /* 31 bytes padded */
        "cw/0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=",  /* '/' */
        "cw_0x689RpI+jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=",  /* '+' */
        "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e5=",  /* unused bits set */
        "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4 ",  /* space for '=' */
        "=w_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=",  /* '=' first */
        "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e=",   /* 43 with '=' */
        "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (fernet_key_decode(bad[i], strlen(bad[i]), again) != -EINVAL)
            fail_msg("key \"%s\" accepted", bad[i]);
    /* an embedded NUL */
    char nul[] = SPEC_KEY;
    nul[10] = '\0';
    assert_int_equal(fernet_key_decode(nul, 44, again), -EINVAL);

    /* every byte value survives encode/decode */
    for (int b = 0; b < 256; b += FERNET_KEY_LEN) {
        for (int k = 0; k < FERNET_KEY_LEN; k++)
            key[k] = (uint8_t)(b + k);
        assert_int_equal(fernet_key_encode(key, text), 0);
        assert_int_equal(strlen(text), FERNET_KEY_B64_LEN);
        assert_int_equal(fernet_key_decode(text, FERNET_KEY_B64_LEN, again), 0);
        assert_memory_equal(key, again, FERNET_KEY_LEN);
    }
}

static void test_keygen(void **state)
{
    enum { N = 16 };
    char text[N][FERNET_KEY_B64_LEN + 1];
    uint8_t keys[N][FERNET_KEY_LEN];
    for (int i = 0; i < N; i++) {
        assert_int_equal(fernet_keygen(text[i]), 0);
        assert_int_equal(strlen(text[i]), FERNET_KEY_B64_LEN);
        assert_int_equal(text[i][43], '=');
        assert_int_equal(fernet_key_decode(text[i], FERNET_KEY_B64_LEN, keys[i]), 0);
        for (int j = 0; j < i; j++) {
            assert_string_not_equal(text[i], text[j]);
            assert_memory_not_equal(keys[i], keys[j], FERNET_KEY_LEN);
        }
    }
}

/* RFC 7914 §11 PBKDF2-HMAC-SHA256 vectors through the internal entry (the
 * public one refuses c < 100000 and 4-byte salts), then the public limits. */
static void test_pbkdf2(void **state)
{
    static const struct {
        const char *p, *s;
        uint32_t c;
        const char *dk;
    } rfc[] = {
        {"passwd", "salt", 1,
         "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
         "49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"},
        {"Password", "NaCl", 80000,
         "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56"
         "a1d425a1225833549adb841b51c9b3176a272bdebba1d078478f62b397f33c8d"},
    };
    for (size_t i = 0; i < sizeof rfc / sizeof rfc[0]; i++) {
        uint8_t dk[64], want[64];
        assert_int_equal(crypto_unhex(rfc[i].dk, 128, want, 64), 0);
        assert_int_equal(fernet__pbkdf2(rfc[i].p, strlen(rfc[i].p), (const uint8_t *)rfc[i].s,
                                        strlen(rfc[i].s), rfc[i].c, dk, sizeof dk),
                         0);
        assert_memory_equal(dk, want, 64);
    }

    const uint8_t salt[16] = "0123456789abcdef";
    uint8_t key[FERNET_KEY_LEN], ref[FERNET_KEY_LEN];
    assert_int_equal(fernet_key_derive("pw", 2, salt, 16, FERNET_PBKDF2_MIN_ITER - 1, key),
                     -EINVAL);
    assert_int_equal(fernet_key_derive("pw", 2, salt, 15, FERNET_PBKDF2_MIN_ITER, key), -EINVAL);
    assert_int_equal(fernet_key_derive("", 0, salt, 16, FERNET_PBKDF2_MIN_ITER, key), -EINVAL);
    assert_int_equal(fernet__pbkdf2("pw", 2, salt, 16, 0, key, sizeof key), -EINVAL);
    assert_int_equal(fernet_key_derive("pw", 2, salt, 16, FERNET_PBKDF2_MIN_ITER, key), 0);
    assert_int_equal(fernet__pbkdf2("pw", 2, salt, 16, FERNET_PBKDF2_MIN_ITER, ref, sizeof ref), 0);
    assert_memory_equal(key, ref, sizeof key);
}

static void test_keyring(void **state)
{
    fernet_keyring kr = {0};
    uint8_t key[FERNET_KEY_LEN] = {1};
    buf out;
    buf_init(&out, OUT_MAX);
    /* an empty ring is a caller error */
    assert_int_equal(fernet_encrypt(&kr, "x", 1, 0, &out), -EINVAL);
    assert_int_equal(fernet_decrypt(&kr, SPEC_TOKEN, strlen(SPEC_TOKEN), SPEC_TS, 0, &out),
                     -EINVAL);
    for (int i = 0; i < FERNET_MAX_KEYS; i++)
        assert_int_equal(fernet_keyring_add(&kr, key), 0);
    assert_int_equal(fernet_keyring_add(&kr, key), -ENOSPC);
    assert_int_equal(kr.n, FERNET_MAX_KEYS);
    fernet_keyring_wipe(&kr);
    assert_int_equal(kr.n, 0);
    for (int i = 0; i < FERNET_MAX_KEYS; i++)
        assert_int_equal(kr.keys[i][0], 0);
    assert_int_equal(out.len, 0);
    buf_free(&out);
}

/* Made with B: ring [A, B] decrypts, ring [A] says -EACCES, and a ring
 * [B, A] encrypts with B. */
static void test_rotation(void **state)
{
    uint8_t a[FERNET_KEY_LEN], b[FERNET_KEY_LEN];
    random_key(a);
    random_key(b);
    fernet_keyring only_a = {0}, only_b = {0}, ab = {0}, ba = {0};
    assert_int_equal(fernet_keyring_add(&only_a, a), 0);
    assert_int_equal(fernet_keyring_add(&only_b, b), 0);
    assert_int_equal(fernet_keyring_add(&ab, a), 0);
    assert_int_equal(fernet_keyring_add(&ab, b), 0);
    assert_int_equal(fernet_keyring_add(&ba, b), 0);
    assert_int_equal(fernet_keyring_add(&ba, a), 0);

    buf tok, out;
    buf_init(&tok, OUT_MAX);
    buf_init(&out, OUT_MAX);
    assert_int_equal(fernet_encrypt(&only_b, "rotate me", 9, 1000, &tok), 0);
    assert_int_equal(dec(&ab, tok.data, tok.len, 1000, &out), 0);
    assert_string_equal(out.data, "rotate me");
    assert_int_equal(dec(&only_a, tok.data, tok.len, 1000, &out), -EACCES);
    assert_int_equal(out.len, 0);

    buf_reset(&tok);
    assert_int_equal(fernet_encrypt(&ba, "new", 3, 1000, &tok), 0);
    assert_int_equal(dec(&only_b, tok.data, tok.len, 1000, &out), 0);
    assert_int_equal(dec(&only_a, tok.data, tok.len, 1000, &out), -EACCES);
    buf_free(&tok);
    buf_free(&out);
}

/* --- round trips, tampering, strictness, time --------------------------- */

static void test_roundtrip_sizes(void **state)
{
    static const size_t sizes[] = {0, 1, 15, 16, 17, 1u << 20};
    fernet_keyring kr = {0};
    uint8_t key[FERNET_KEY_LEN];
    random_key(key);
    assert_int_equal(fernet_keyring_add(&kr, key), 0);
    uint8_t *plain = malloc(1u << 20);
    assert_non_null(plain);
    assert_int_equal(crypto_random(plain, 1u << 20), 0);
    buf tok, out;
    buf_init(&tok, OUT_MAX);
    buf_init(&out, OUT_MAX);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i], raw = 1 + 8 + 16 + (n / 16 + 1) * 16 + 32;
        buf_reset(&tok);
        assert_int_equal(fernet_encrypt(&kr, plain, n, 1700000000, &tok), 0);
        assert_int_equal(tok.len, (raw + 2) / 3 * 4);
        assert_int_equal(strlen(tok.data), tok.len);
        /* appends after what out holds */
        buf_reset(&out);
        assert_int_equal(buf_append_str(&out, "pre"), 0);
        assert_int_equal(fernet_decrypt(&kr, tok.data, tok.len, 1700000000, 60, &out), 0);
        assert_int_equal(out.len, 3 + n);
        assert_memory_equal(out.data, "pre", 3);
        if (n)
            assert_memory_equal(out.data + 3, plain, n);
        assert_int_equal(out.data[out.len], '\0');
    }
    /* two encryptions of the same text differ (random IV) */
    buf_reset(&tok);
    assert_int_equal(fernet_encrypt(&kr, "same", 4, 1, &tok), 0);
    assert_int_equal(fernet_encrypt(&kr, "same", 4, 1, &out), 0);
    free(plain);
    buf_free(&tok);
    buf_free(&out);
}

/* Caps: -E2BIG from both directions leaves out as it was; a plaintext that
 * fits exactly is accepted (the cap counts plaintext, not ciphertext). */
static void test_caps(void **state)
{
    fernet_keyring kr = ring_of(SPEC_KEY);
    buf tok, out;
    buf_init(&tok, 10);
    assert_int_equal(fernet_encrypt(&kr, "hello", 5, SPEC_TS, &tok), -E2BIG);
    assert_int_equal(tok.len, 0);
    buf_init(&out, 4);
    assert_int_equal(buf_append_str(&out, "ab"), 0);
    assert_int_equal(fernet_decrypt(&kr, SPEC_TOKEN, strlen(SPEC_TOKEN), SPEC_TS, 0, &out), -E2BIG);
    assert_int_equal(out.len, 2);
    assert_string_equal(out.data, "ab");
    buf_free(&out);
    buf_init(&out, 5);
    assert_int_equal(fernet_decrypt(&kr, SPEC_TOKEN, strlen(SPEC_TOKEN), SPEC_TS, 0, &out), 0);
    assert_string_equal(out.data, "hello");
    buf_free(&out);
    buf_free(&tok);
}

/* Flipping any bit pattern of any byte of the decoded token is rejected:
 * the version byte with -EINVAL, every other byte by the MAC (-EACCES). */
static void test_tamper(void **state)
{
    static const uint8_t flips[] = {0x01, 0x80, 0xff};
    fernet_keyring kr = {0};
    uint8_t key[FERNET_KEY_LEN], raw[256] = {0};
    random_key(key);
    assert_int_equal(fernet_keyring_add(&kr, key), 0);
    buf tok, t2, out;
    buf_init(&tok, OUT_MAX);
    buf_init(&t2, OUT_MAX);
    buf_init(&out, OUT_MAX);
    assert_int_equal(fernet_encrypt(&kr, "attack at dawn, bring snacks!", 29, 5000, &tok), 0);
    size_t n = t_decode(tok.data, tok.len, raw);
    assert_int_equal(n, 1 + 8 + 16 + 32 + 32);
    t_encode(raw, n, &t2);
    assert_string_equal(t2.data, tok.data); /* the test codec agrees */
    size_t rejected = 0;
    for (size_t i = 0; i < n; i++) {
        for (size_t f = 0; f < sizeof flips; f++) {
            raw[i] ^= flips[f];
            t_encode(raw, n, &t2);
            int rc = dec(&kr, t2.data, t2.len, 5000, &out);
            if (rc != (i == 0 ? -EINVAL : -EACCES))
                fail_msg("byte %zu ^ 0x%02x: got %d", i, flips[f], rc);
            assert_int_equal(out.len, 0);
            raw[i] ^= flips[f];
            rejected++;
        }
    }
    assert_int_equal(rejected, n * sizeof flips);
    /* cut or extended by one block: still the MAC */
    t_encode(raw, n - 16, &t2);
    assert_int_equal(dec(&kr, t2.data, t2.len, 5000, &out), -EACCES);
    buf_free(&tok);
    buf_free(&t2);
    buf_free(&out);
}

/* Base64url variants of a valid token that Python's lenient decoder would
 * accept or that are not the canonical text: all -EINVAL. */
static void test_strict_base64(void **state)
{
    fernet_keyring kr = ring_of(SPEC_KEY);
    buf out, t;
    buf_init(&out, OUT_MAX);
    buf_init(&t, OUT_MAX);
    const size_t n = strlen(SPEC_TOKEN);
    assert_int_equal(dec(&kr, SPEC_TOKEN, n, SPEC_TS, &out), 0);

    assert_int_equal(dec(&kr, SPEC_TOKEN, n - 2, SPEC_TS, &out), -EINVAL); /* unpadded */
    assert_int_equal(dec(&kr, SPEC_TOKEN, n - 1, SPEC_TS, &out), -EINVAL); /* half padded */
    assert_int_equal(dec(&kr, "", 0, SPEC_TS, &out), -EINVAL);
    assert_int_equal(dec(&kr, NULL, 0, SPEC_TS, &out), -EINVAL);

    static const char *const suffixes[] = {"=", "====", "\n", " ", "A", "AAAA", "\r\n"};
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        buf_reset(&t);
        assert_int_equal(buf_append_str(&t, SPEC_TOKEN), 0);
        assert_int_equal(buf_append_str(&t, suffixes[i]), 0);
        if (dec(&kr, t.data, t.len, SPEC_TS, &out) != -EINVAL)
            fail_msg("suffix \"%s\" accepted", suffixes[i]);
    }
    /* one char replaced by something outside the alphabet, anywhere */
    static const char subst[] = {'+', '/', '=', ' ', '\n', '\0', '.', '\x80', '\xff'};
    for (size_t pos = 0; pos < n - 2; pos += 7) {
        for (size_t k = 0; k < sizeof subst; k++) {
            buf_reset(&t);
            assert_int_equal(buf_append(&t, SPEC_TOKEN, n), 0);
            t.data[pos] = subst[k];
            if (dec(&kr, t.data, t.len, SPEC_TS, &out) != -EINVAL)
                fail_msg("0x%02x at %zu accepted", (unsigned char)subst[k], pos);
        }
    }
    /* the last data char ('A' before "=="): 1 byte in 2 chars uses only
     * its top 2 bits; 'B'..'P' carry the same byte with junk low bits */
    buf_reset(&t);
    assert_int_equal(buf_append(&t, SPEC_TOKEN, n), 0);
    assert_int_equal(t.data[n - 3], 'A');
    t.data[n - 3] = 'B';
    assert_int_equal(dec(&kr, t.data, t.len, SPEC_TS, &out), -EINVAL);
    t.data[n - 3] = 'Q'; /* canonical but another byte: the MAC */
    assert_int_equal(dec(&kr, t.data, t.len, SPEC_TS, &out), -EACCES);
    assert_int_equal(out.len, 0);
    buf_free(&out);
    buf_free(&t);
}

/* ttl and clock skew bounds, inclusive as in the spec and python. */
static void test_time_limits(void **state)
{
    fernet_keyring kr = ring_of(SPEC_KEY);
    buf out;
    buf_init(&out, OUT_MAX);
    const char *tok = SPEC_TOKEN;
    size_t n = strlen(tok);
#define AT(now, ttl) (buf_reset(&out), fernet_decrypt(&kr, tok, n, (now), (ttl), &out))
    assert_int_equal(AT(SPEC_TS + 60, 60), 0);
    assert_int_equal(AT(SPEC_TS + 61, 60), -ETIMEDOUT);
    assert_int_equal(AT(SPEC_TS + 4000000000u, 0), 0); /* no ttl */
    assert_int_equal(AT(UINT64_MAX, 1), -ETIMEDOUT);
    assert_int_equal(AT(SPEC_TS - 60, 60), 0);          /* 60 s skew */
    assert_int_equal(AT(SPEC_TS - 61, 60), -ETIMEDOUT); /* from the future */
    assert_int_equal(AT(SPEC_TS - 61, 0), -ETIMEDOUT);  /* even without ttl */
    assert_int_equal(AT(0, 0), -ETIMEDOUT);
#undef AT
    /* timestamps at the ends of the range don't overflow */
    uint8_t key[FERNET_KEY_LEN], iv[FERNET_IV_LEN] = {0};
    assert_int_equal(fernet_key_decode(SPEC_KEY, 44, key), 0);
    buf t;
    buf_init(&t, OUT_MAX);
    assert_int_equal(fernet_encrypt_iv(key, iv, "x", 1, UINT64_MAX, &t), 0);
    assert_int_equal(dec(&kr, t.data, t.len, UINT64_MAX - 60, &out), 0);
    assert_int_equal(dec(&kr, t.data, t.len, 0, &out), -ETIMEDOUT);
    buf_reset(&out);
    assert_int_equal(fernet_decrypt(&kr, t.data, t.len, UINT64_MAX, UINT32_MAX, &out), 0);
    buf_reset(&t);
    assert_int_equal(fernet_encrypt_iv(key, iv, "x", 1, 0, &t), 0);
    buf_reset(&out);
    assert_int_equal(fernet_decrypt(&kr, t.data, t.len, UINT64_MAX, UINT32_MAX, &out), -ETIMEDOUT);
    buf_free(&t);
    buf_free(&out);
}

/* --- interop with python3-cryptography ----------------------------------- */

/* Runs a shell command; its stdout (trailing newline cut) in out. Returns
 * the exit status, or -1 if it did not exit normally. */
static int run(const char *cmd, buf *out)
{
    buf_reset(out);
    FILE *f = popen(cmd, "r");
    if (!f)
        fail_msg("popen %s: %s", cmd, strerror(errno));
    assert_int_equal(buf_append_file(out, f), 0);
    int st = pclose(f);
    while (out->len && (out->data[out->len - 1] == '\n' || out->data[out->len - 1] == '\r'))
        out->data[--out->len] = '\0';
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Debian's interpreter, where `apt-get install python3-cryptography` puts
 * the module (a pyenv or venv python3 earlier on PATH may lack it). */
static const char *python(void)
{
    return access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
}

/* python3 and cryptography.fernet must be there: CI installs them, and a
 * skipped interop test would hide a real incompatibility. */
static void require_python(buf *out)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s '%s' check 2>&1", python(), INTEROP);
    int st = run(cmd, out);
    if (st != 0) {
        char why[512];
        snprintf(why, sizeof why, "%s", out->data ? out->data : "");
        buf_free(out);
        fail_msg("python3 with the cryptography module is needed for the Fernet interop "
                 "test (exit %d: %s); run `bash cmake/install-deps.sh test`",
                 st, why);
    }
}

static void interop_setup(fernet_keyring *kr, char text[FERNET_KEY_B64_LEN + 1])
{
    uint8_t key[FERNET_KEY_LEN];
    *kr = (fernet_keyring){0};
    assert_int_equal(fernet_keygen(text), 0);
    assert_int_equal(fernet_key_decode(text, FERNET_KEY_B64_LEN, key), 0);
    assert_int_equal(fernet_keyring_add(kr, key), 0);
}

/* The i-th random case length: a few edges first, then 0..3000. */
static size_t case_len(int i)
{
    static const size_t edge[] = {0, 1, 15, 16, 17, 31, 32, 33};
    return i < (int)(sizeof edge / sizeof edge[0]) ? edge[i] : random_below(3001);
}

/* Python encrypts, C decrypts. */
static void test_interop_python_to_c(void **state)
{
    buf cmd, res, out;
    buf_init(&cmd, 1u << 20);
    buf_init(&res, 1u << 20);
    buf_init(&out, 1u << 20);
    require_python(&res);
    for (int i = 0; i < INTEROP_CASES; i++) {
        fernet_keyring kr;
        char key[FERNET_KEY_B64_LEN + 1];
        uint8_t plain[3000];
        char hex[2 * sizeof plain + 1];
        interop_setup(&kr, key);
        size_t n = case_len(i);
        assert_int_equal(crypto_random(plain, sizeof plain), 0);
        crypto_hex(plain, n, hex);
        buf_reset(&cmd);
        assert_int_equal(buf_printf(&cmd, "%s '%s' enc '%s' '%s'", python(), INTEROP, key, hex), 0);
        if (run(cmd.data, &res) != 0)
            fail_msg("python enc failed for %zu bytes", n);
        buf_reset(&out);
        int rc = fernet_decrypt(&kr, res.data, res.len, (uint64_t)time(NULL), 60, &out);
        if (rc != 0)
            fail_msg("C rejects python's token for %zu bytes (%d): %s", n, rc, res.data);
        assert_int_equal(out.len, n);
        if (n)
            assert_memory_equal(out.data, plain, n);
    }
    buf_free(&cmd);
    buf_free(&res);
    buf_free(&out);
}

/* C encrypts, Python decrypts. */
static void test_interop_c_to_python(void **state)
{
    buf cmd, res, tok;
    buf_init(&cmd, 1u << 20);
    buf_init(&res, 1u << 20);
    buf_init(&tok, 1u << 20);
    require_python(&res);
    for (int i = 0; i < INTEROP_CASES; i++) {
        fernet_keyring kr;
        char key[FERNET_KEY_B64_LEN + 1];
        uint8_t plain[3000];
        char hex[2 * sizeof plain + 1];
        interop_setup(&kr, key);
        size_t n = case_len(i);
        assert_int_equal(crypto_random(plain, sizeof plain), 0);
        crypto_hex(plain, n, hex);
        buf_reset(&tok);
        assert_int_equal(fernet_encrypt(&kr, plain, n, (uint64_t)time(NULL), &tok), 0);
        buf_reset(&cmd);
        assert_int_equal(buf_printf(&cmd, "%s '%s' dec '%s' '%s'", python(), INTEROP, key, tok.data), 0);
        if (run(cmd.data, &res) != 0)
            fail_msg("python rejects C's token for %zu bytes: %s", n, tok.data);
        assert_string_equal(res.data ? res.data : "", hex);
    }
    buf_free(&cmd);
    buf_free(&res);
    buf_free(&tok);
}

/* fernet_key_derive against Python's hashlib at the minimum iterations. */
static void test_interop_pbkdf2(void **state)
{
    buf cmd, res;
    buf_init(&cmd, 4096);
    buf_init(&res, 1u << 20); /* buf_append_file reserves 64 KiB a read */
    require_python(&res);
    uint8_t salt[FERNET_SALT_MIN_LEN], key[FERNET_KEY_LEN];
    char salt_hex[2 * sizeof salt + 1], key_hex[2 * sizeof key + 1], pass_hex[2 * 11 + 1];
    const char *pass = "correct pw!";
    assert_int_equal(crypto_random(salt, sizeof salt), 0);
    crypto_hex(salt, sizeof salt, salt_hex);
    crypto_hex((const uint8_t *)pass, 11, pass_hex);
    assert_int_equal(fernet_key_derive(pass, 11, salt, sizeof salt, FERNET_PBKDF2_MIN_ITER, key),
                     0);
    crypto_hex(key, sizeof key, key_hex);
    assert_int_equal(buf_printf(&cmd, "%s '%s' kdf %s %s %d", python(), INTEROP, pass_hex, salt_hex,
                                FERNET_PBKDF2_MIN_ITER),
                     0);
    assert_int_equal(run(cmd.data, &res), 0);
    assert_string_equal(res.data, key_hex);
    buf_free(&cmd);
    buf_free(&res);
}

int main(void)
{
    struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generate_vectors),
        cmocka_unit_test(test_verify_vectors),
        cmocka_unit_test(test_invalid_all_listed),
        /* one test per invalid.json vector, named for the error it gets */
        {"invalid: incorrect mac -> EACCES", test_invalid_vector, NULL, NULL, &invalid_cases[0]},
        {"invalid: too short -> EINVAL", test_invalid_vector, NULL, NULL, &invalid_cases[1]},
        {"invalid: invalid base64 -> EINVAL", test_invalid_vector, NULL, NULL, &invalid_cases[2]},
        {"invalid: payload size not multiple of block size -> EINVAL", test_invalid_vector, NULL,
         NULL, &invalid_cases[3]},
        {"invalid: payload padding error -> EINVAL", test_invalid_vector, NULL, NULL,
         &invalid_cases[4]},
        {"invalid: far-future TS -> ETIMEDOUT", test_invalid_vector, NULL, NULL, &invalid_cases[5]},
        {"invalid: expired TTL -> ETIMEDOUT", test_invalid_vector, NULL, NULL, &invalid_cases[6]},
        {"invalid: incorrect IV (padding error) -> EINVAL", test_invalid_vector, NULL, NULL,
         &invalid_cases[7]},
        {"invalid: trailing characters after b64 padding -> EINVAL", test_invalid_vector, NULL,
         NULL, &invalid_cases[8]},
        {"invalid: invalid characters in b64 -> EINVAL", test_invalid_vector, NULL, NULL,
         &invalid_cases[9]},
        {"invalid: invalid non-urlsafe characters in b64 -> EINVAL", test_invalid_vector, NULL,
         NULL, &invalid_cases[10]},
        cmocka_unit_test(test_key_codec),
        cmocka_unit_test(test_keygen),
        cmocka_unit_test(test_pbkdf2),
        cmocka_unit_test(test_keyring),
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_roundtrip_sizes),
        cmocka_unit_test(test_caps),
        cmocka_unit_test(test_tamper),
        cmocka_unit_test(test_strict_base64),
        cmocka_unit_test(test_time_limits),
        cmocka_unit_test(test_interop_python_to_c),
        cmocka_unit_test(test_interop_c_to_python),
        cmocka_unit_test(test_interop_pbkdf2),
    };
    _Static_assert(N_INVALID == 11, "one named test per invalid vector above");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
