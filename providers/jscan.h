/* jscan.h - a zero-allocation JSON scanner for the hot path.
 *
 * Passthrough requests and upstream chunks are never turned into a DOM.
 * jscan_validate() checks a whole document against RFC 8259 in one pass;
 * after that the accessors below read single members by skipping over
 * everything else, and the splice helpers rewrite a document by copying
 * its bytes around the one value that changes.
 *
 * Values are jscan_val references into the caller's bytes: nothing is
 * copied or allocated, and a jscan_val is valid as long as those bytes are.
 *
 * The accessors (jscan_root, jscan_obj_get, the iterators, the decoders)
 * are meant for documents that passed jscan_validate(). On any other input
 * they never read outside the bytes they are given and return -EINVAL when
 * they notice something wrong, but they do not promise to notice
 * everything (a container is skipped by counting brackets, so "[}" would be
 * taken as a closed array). Validate first whenever the bytes come from
 * outside. */
#ifndef TG_PROVIDERS_JSCAN_H
#define TG_PROVIDERS_JSCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/base/buf.h"

#define JSCAN_MUSTCHECK __attribute__((warn_unused_result))

/* Hard ceiling on max_depth for jscan_validate(); larger values are
 * clamped to it (the validator keeps one bit per open container). */
#define JSCAN_DEPTH_LIMIT 4096

/* What kind of JSON value a jscan_val refers to. */
typedef enum jscan_type {
    JSCAN_NONE = 0, /* no value (a zeroed jscan_val: absent member) */
    JSCAN_OBJECT,   /* {...} */
    JSCAN_ARRAY,    /* [...] */
    JSCAN_STRING,   /* "..." (p/n include the quotes, escapes undecoded) */
    JSCAN_NUMBER,   /* -1.5e3 and friends */
    JSCAN_TRUE,     /* true */
    JSCAN_FALSE,    /* false */
    JSCAN_NULL,     /* null */
} jscan_type;

/* A reference to one JSON value inside someone else's bytes. */
typedef struct jscan_val {
    const char *p;   /* first byte of the value; NULL when type == JSCAN_NONE */
    size_t n;        /* bytes of the value, from its first to its last byte */
    jscan_type type; /* what the bytes are */
} jscan_val;

/* Where and why jscan_validate() rejected a document. */
typedef struct jscan_error {
    size_t offset;   /* byte offset of the offending byte (n when input ended early) */
    const char *msg; /* short static text, e.g. "unterminated string" */
} jscan_error;

/* Cursor over the elements of an array or the members of an object. */
typedef struct jscan_iter {
    const char *p; /* the container's first byte ('[' or '{') */
    size_t n;      /* the container's length, closing bracket included */
    size_t pos;    /* offset of the next byte to look at */
    size_t count;  /* items returned so far */
} jscan_iter;

/* Checks that p[0..n) is exactly one JSON value (RFC 8259: strict
 * numbers, escapes, paired \u surrogates, valid UTF-8 in strings, no
 * control characters in strings) with optional surrounding whitespace,
 * nested at most max_depth containers deep. 0 when valid; -EINVAL with
 * *err filled (err may be NULL) otherwise. */
int jscan_validate(const char *p, size_t n, unsigned max_depth, jscan_error *err) JSCAN_MUSTCHECK;

/* jscan_validate() that also describes the document's value in *root
 * (no second pass to find its end). 0 or -EINVAL as jscan_validate(). */
int jscan_parse(const char *p, size_t n, unsigned max_depth, jscan_val *root,
                jscan_error *err) JSCAN_MUSTCHECK;

/* The value that p[0..n) starts with (after whitespace); trailing bytes
 * are not looked at. 0, or -EINVAL if no complete value starts there. */
int jscan_root(const char *p, size_t n, jscan_val *out) JSCAN_MUSTCHECK;

/* Finds member key (a plain C string, compared with the member names
 * after decoding their escapes) of the object that obj[0..n) starts with.
 * The first occurrence wins. Nested values are skipped, never searched.
 * 0 found, -ENOENT absent, -EINVAL not an object or malformed. */
int jscan_obj_get(const char *obj, size_t n, const char *key, jscan_val *out) JSCAN_MUSTCHECK;
/* Same as jscan_obj_get() on an already located object value. */
int jscan_val_get(const jscan_val *obj, const char *key, jscan_val *out) JSCAN_MUSTCHECK;
/* Follows a dotted path of member names through nested objects, e.g.
 * "usage.prompt_tokens_details.cached_tokens". 0, -ENOENT when a step is
 * missing or not an object, -EINVAL malformed. */
int jscan_path_get(const char *obj, size_t n, const char *path, jscan_val *out) JSCAN_MUSTCHECK;

/* Starts iterating over the array or object v. 0, or -EINVAL if v is
 * neither. */
int jscan_iter_init(jscan_iter *it, const jscan_val *v) JSCAN_MUSTCHECK;
/* Next array element into *out. 0, -ENOENT at the end, -EINVAL malformed. */
int jscan_arr_next(jscan_iter *it, jscan_val *out) JSCAN_MUSTCHECK;
/* Next object member: its name (a JSCAN_STRING) and its value. 0,
 * -ENOENT at the end, -EINVAL malformed. */
int jscan_obj_next(jscan_iter *it, jscan_val *key, jscan_val *val) JSCAN_MUSTCHECK;
/* Number of elements of array v into *len. 0 or -EINVAL. */
int jscan_arr_len(const jscan_val *v, size_t *len) JSCAN_MUSTCHECK;
/* True if array or object v has no items. */
bool jscan_is_empty(const jscan_val *v);

/* Decodes string value v into out[0..cap): *len bytes of UTF-8 followed
 * by a NUL (the content may itself contain NULs from \u0000). 0, -E2BIG
 * when len + 1 > cap, -EINVAL not a string or a bad escape. */
int jscan_str_decode(const jscan_val *v, char *out, size_t cap, size_t *len) JSCAN_MUSTCHECK;
/* Decodes string value v piecewise: fn sees consecutive runs of the
 * decoded bytes (raw runs point into v, escapes come from a small stack
 * buffer; a \u surrogate pair is never split). No allocation. 0, or
 * -EINVAL for a bad escape (fn may have seen the bytes before it). */
typedef void (*jscan_bytes_fn)(void *ud, const char *p, size_t n);
int jscan_str_each(const jscan_val *v, jscan_bytes_fn fn, void *ud) JSCAN_MUSTCHECK;
/* True if string value v decodes to exactly lit[0..len). No allocation. */
bool jscan_str_eq(const jscan_val *v, const char *lit, size_t len);
/* Reads an integer number (no fraction, no exponent). 0, -EINVAL not an
 * integer, -ERANGE outside int64_t. */
int jscan_int64(const jscan_val *v, int64_t *out) JSCAN_MUSTCHECK;
/* Reads true/false. 0, or -EINVAL for anything else. */
int jscan_bool(const jscan_val *v, bool *out) JSCAN_MUSTCHECK;
/* Static lowercase name of a type for messages ("string", "object", ...;
 * both JSCAN_TRUE and JSCAN_FALSE are "boolean"). */
const char *jscan_type_name(jscan_type t);
/* True if p[0..n) is well-formed UTF-8 (no overlongs, no surrogates, at
 * most U+10FFFF). */
bool jscan_utf8_valid(const char *p, size_t n);
/* Appends p[0..n) as a quoted JSON string; bytes that are not valid UTF-8
 * become U+FFFD so the result is always valid JSON. 0, -E2BIG, -ENOMEM. */
int jscan_append_string(buf *out, const char *p, size_t n) JSCAN_MUSTCHECK;

/* Rewrites a document into a buf by copying it and splicing at a few
 * places. Edits must be made in increasing position: each one copies the
 * bytes between the previous edit and this one, then writes new bytes. */
typedef struct jscan_splice {
    const char *doc; /* the source document (not owned) */
    size_t n;        /* its length */
    size_t pos;      /* doc bytes before this offset are already in out */
    buf *out;        /* where the result goes (owned by the caller) */
} jscan_splice;

/* Starts a rewrite of doc[0..n) into out (appends; out is not reset). */
void jscan_splice_init(jscan_splice *s, const char *doc, size_t n, buf *out);
/* Replaces value v (inside doc, at or after the last edit) with
 * bytes[0..len), which must be valid JSON. 0, -EINVAL if v is out of
 * order or outside doc, -E2BIG, -ENOMEM. */
int jscan_splice_replace(jscan_splice *s, const jscan_val *v, const char *bytes,
                         size_t len) JSCAN_MUSTCHECK;
/* Replaces value v with raw[0..len) written as a JSON string (quoted,
 * escaped; invalid UTF-8 becomes U+FFFD). Errors as jscan_splice_replace. */
int jscan_splice_replace_str(jscan_splice *s, const jscan_val *v, const char *raw,
                             size_t len) JSCAN_MUSTCHECK;
/* Adds member "key": value_json as the last member of object obj (inside
 * doc): writes it after the last member (with a comma) or right after
 * '{' when obj is empty. Only that insertion point must be at or after
 * the last edit, so an edit inside obj may come first. key is raw text
 * and gets escaped. 0, -EINVAL (obj not an object, out of order), -E2BIG,
 * -ENOMEM. */
int jscan_splice_insert_member(jscan_splice *s, const jscan_val *obj, const char *key,
                               size_t keylen, const char *value_json, size_t vlen) JSCAN_MUSTCHECK;
/* Copies the rest of doc. 0, -E2BIG, -ENOMEM. */
int jscan_splice_finish(jscan_splice *s) JSCAN_MUSTCHECK;

#endif
