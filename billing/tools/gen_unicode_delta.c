/* gen_unicode_delta.c - PCRE2's view of Unicode properties, for
 * gen_unicode_delta.mjs (not part of the build).
 *
 * Usage: gen_unicode_delta PROP...   (PROP as in \p{PROP}, e.g. L Lu N M)
 * Prints "pcre2 VERSION unicode UNICODE_VERSION", then one line per PROP:
 * "PROP lo-hi lo-hi ..." (hex code points) for the code points that
 * \p{PROP} matches with PCRE2_UTF|PCRE2_UCP, surrogates left out. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdint.h>
#include <stdio.h>

static size_t utf8(uint32_t c, unsigned char *b)
{
    if (c < 0x80) {
        b[0] = (unsigned char)c;
        return 1;
    }
    if (c < 0x800) {
        b[0] = (unsigned char)(0xC0 | c >> 6);
        b[1] = (unsigned char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        b[0] = (unsigned char)(0xE0 | c >> 12);
        b[1] = (unsigned char)(0x80 | (c >> 6 & 0x3F));
        b[2] = (unsigned char)(0x80 | (c & 0x3F));
        return 3;
    }
    b[0] = (unsigned char)(0xF0 | c >> 18);
    b[1] = (unsigned char)(0x80 | (c >> 12 & 0x3F));
    b[2] = (unsigned char)(0x80 | (c >> 6 & 0x3F));
    b[3] = (unsigned char)(0x80 | (c & 0x3F));
    return 4;
}

int main(int argc, char **argv)
{
    char ver[64], uver[64];
    pcre2_config(PCRE2_CONFIG_VERSION, ver);
    pcre2_config(PCRE2_CONFIG_UNICODE_VERSION, uver);
    printf("pcre2 %s unicode %s\n", ver, uver);
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    for (int a = 1; a < argc; a++) {
        char pat[80];
        snprintf(pat, sizeof pat, "\\p{%s}", argv[a]);
        int ec;
        PCRE2_SIZE eo;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &ec, &eo, NULL);
        if (!re) {
            fprintf(stderr, "%s: compile error %d\n", pat, ec);
            return 1;
        }
        printf("%s", argv[a]);
        long lo = -1;
        for (uint32_t c = 0; c <= 0x110000; c++) {
            int in = 0;
            if (c < 0x110000 && (c < 0xD800 || c > 0xDFFF)) {
                unsigned char b[4];
                size_t n = utf8(c, b);
                in = pcre2_match(re, b, n, 0, PCRE2_NO_UTF_CHECK, md, NULL) > 0;
            }
            if (in && lo < 0)
                lo = (long)c;
            if (!in && lo >= 0) {
                printf(" %lx-%lx", (unsigned long)lo, (unsigned long)c - 1);
                lo = -1;
            }
        }
        printf("\n");
        pcre2_code_free(re);
    }
    pcre2_match_data_free(md);
    return 0;
}
