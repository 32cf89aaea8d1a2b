/* gemini.c - the Google Gemini generateContent wire format (see chat.h).
 *
 * Request: contents[] of role user|model with parts[], systemInstruction,
 * generationConfig, tools[].functionDeclarations, toolConfig. The model
 * and stream flag are in the URL, not the body. Answers: a whole
 * GenerateContentResponse, or (streamGenerateContent?alt=sse) a stream of
 * them, one per `data:` line, CRLF-framed, with no end marker.
 *
 * Member names: the API parses proto3 JSON, which accepts both the
 * lowerCamel and the snake_case spelling of a field (the recorded pydantic
 * request sends `parameters_json_schema`), so the decoder accepts both;
 * the encoder writes lowerCamel. A JSON null member counts as absent.
 *
 * Ignored on decode (they do not change the answer, or have no effect on
 * what can be translated): safetySettings, labels, model (in the URL),
 * systemInstruction.role, generationConfig.responseModalities ["TEXT"],
 * generationConfig.thinkingConfig.includeThoughts, toolConfig.retrievalConfig,
 * functionDeclarations[].response / responseJsonSchema (output schemas),
 * part thoughtSignature on text parts, part partMetadata / mediaResolution,
 * a THINKING part's signature (none: Gemini has no reasoning signature
 * that another format could take back). thinkingBudget -1 ("dynamic") is
 * left unset, which is the API's default.
 *
 * Stream encoder (what a Gemini caller sees): one chunk per TEXT/THINKING
 * event and one per complete tool call, each a whole GenerateContentResponse
 * with the latest usage, modelVersion and responseId, CRLF-framed like the
 * wire; at END one last chunk with an empty text part, the finishReason and
 * the final usage. A caller that asked candidateCount > 1 gets ev.choice as
 * the candidate index; only candidate 0 gets the final finishReason. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "providers/chat.h"

#define GEM_JFLAGS (JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL)
#define GEM_TEXT_MAX ((size_t)64 * 1024 * 1024) /* cap on one buffered value */
#define GEM_ID_MAX ((size_t)4096)                /* cap on ids and model names */
#define GEM_QUOTE_MAX 200                        /* body bytes quoted in an error message */

/* ------------------------------------------------------------ small helpers */

/* snprintf for parameter paths and messages: truncation is expected
 * and harmless (names are capped at 64 bytes by chat_error). */
static void gem_fmt(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void gem_fmt(char *out, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, cap, fmt, ap);
    va_end(ap);
}

/* The camelCase form of a member name ("_x" -> "X") into out. */
static void gem_camel(const char *key, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; key[i] && o + 1 < cap; i++) {
        if (key[i] == '_' && key[i + 1] >= 'a' && key[i + 1] <= 'z') {
            out[o++] = (char)(key[i + 1] - 'a' + 'A');
            i++;
        } else {
            out[o++] = key[i];
        }
    }
    out[o] = '\0';
}

/* The snake_case form of a camelCase name into out. */
static void gem_snake(const char *camel, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; camel[i] && o + 2 < cap; i++) {
        if (camel[i] >= 'A' && camel[i] <= 'Z') {
            out[o++] = '_';
            out[o++] = (char)(camel[i] - 'A' + 'a');
        } else {
            out[o++] = camel[i];
        }
    }
    out[o] = '\0';
}

/* Member camel (or its snake_case spelling) of obj; NULL when absent,
 * null, or obj is not an object. */
static json_t *gem_get(const json_t *obj, const char *camel)
{
    if (!json_is_object(obj))
        return NULL;
    json_t *v = json_object_get(obj, camel);
    if (!v) {
        char snake[96];
        gem_snake(camel, snake, sizeof snake);
        v = json_object_get(obj, snake);
    }
    return json_is_null(v) ? NULL : v;
}

/* Whether key, in either spelling, is camel. */
static bool gem_key_is(const char *key, const char *camel)
{
    char c[96];
    gem_camel(key, c, sizeof c);
    return strcmp(c, camel) == 0;
}

/* A JSON string's bytes; empty when v is not a string. */
static slice gem_sl(const json_t *v)
{
    if (!json_is_string(v))
        return slice_make("", 0);
    return slice_make(json_string_value(v), json_string_length(v));
}

/* Byte equality of two slices. */
static bool gem_sl_eq(slice a, slice b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

/* A request string as a slice (absent = empty). */
static slice gem_cs(chat_str s) { return slice_make(s.p ? s.p : "", s.p ? s.len : 0); }

/* Writes a name from the wire into out for a parameter path: printable
 * ASCII only (others become '?'), truncated. */
static void gem_safe_name(const char *key, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; key[i] && o + 1 < cap; i++) {
        unsigned char c = (unsigned char)key[i];
        out[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    out[o] = '\0';
}

/* Fills err for a member of the wrong type; returns -EINVAL. */
static int gem_bad(chat_error *err, const char *path, const char *what)
{
    const char *at = path ? path : "request";
    chat_error_invalid(err, path, "Invalid value at '%s': expected %s", at, what ? what : "another type");
    return -EINVAL;
}


/* Appends up to n bytes of s to the NUL-terminated dst (cap bytes),
 * keeping it valid UTF-8: invalid bytes, NUL and control characters
 * other than \n and \t become '?'; a character that does not fit ends
 * the copy. */
static void gem_copy_text(char *dst, size_t cap, const char *s, size_t n)
{
    size_t o = strlen(dst);
    if (o < cap)
        chat_text_copy(dst + o, cap - o, s, n);
}

/* Appends a finite double in its shortest round-tripping form. */
static int gem_put_double(buf *out, double d)
{
    char tmp[40];
    for (int prec = 1; prec <= 17; prec++) {
        gem_fmt(tmp, sizeof tmp, "%.*g", prec, d);
        if (strtod(tmp, NULL) == d)
            break;
    }
    return buf_append_str(out, tmp) ? -E2BIG : 0;
}

/* Parses a JSON object from n bytes; NULL when it is not one. */
static json_t *gem_load_object(const char *p, size_t n)
{
    json_error_t jerr;
    json_t *j = json_loadb(p ? p : "", n, GEM_JFLAGS, &jerr);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* Undoes a partly written output: out back to mark bytes. */
static void gem_rollback(buf *out, size_t mark)
{
    out->len = mark;
    if (out->data)
        out->data[mark] = '\0';
}

#define TRY(x)                                                                                     \
    do {                                                                                           \
        if ((rc = (x)) != 0)                                                                       \
            goto out;                                                                              \
    } while (0)
#define PUT(b, lit) TRY(buf_append((b), lit, sizeof(lit) - 1) ? -E2BIG : 0)

/* ------------------------------------------------------------ finish reasons */

/* The normalized reason of a Gemini finishReason (README §3; a STOP that
 * ended a functionCall answer is TOOL_CALLS). */
static chat_finish gem_finish_of(slice s, bool saw_call)
{
    static const char *const filter[] = {
        "SAFETY",      "RECITATION",   "LANGUAGE",     "BLOCKLIST",          "PROHIBITED_CONTENT",
        "SPII",        "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION",
    };
    if (slice_eq(s, "STOP") || slice_eq(s, "FINISH_REASON_UNSPECIFIED"))
        return saw_call ? CHAT_FINISH_TOOL_CALLS : CHAT_FINISH_STOP;
    if (slice_eq(s, "MAX_TOKENS"))
        return CHAT_FINISH_LENGTH;
    for (size_t i = 0; i < sizeof filter / sizeof filter[0]; i++)
        if (slice_eq(s, filter[i]))
            return CHAT_FINISH_CONTENT_FILTER;
    return CHAT_FINISH_OTHER;
}

/* The finishReason a Gemini caller gets for a normalized reason. */
static const char *gem_finish_name(chat_finish f)
{
    switch (f) {
    case CHAT_FINISH_LENGTH: return "MAX_TOKENS";
    case CHAT_FINISH_CONTENT_FILTER: return "SAFETY";
    default: return "STOP";
    }
}

/* ------------------------------------------------------------ schemas */

/* Turns an OpenAPI-subset schema (Gemini `parameters`, `responseSchema`:
 * "type":"OBJECT", "nullable":true) into JSON Schema in place: type names
 * lower-cased, nullable folded into the type. Values (enum, default,
 * example, const) are left alone. */
static int gem_schema_fix(json_t *s)
{
    if (json_is_array(s)) {
        size_t i;
        json_t *v;
        json_array_foreach(s, i, v)
            if (gem_schema_fix(v))
                return -ENOMEM;
        return 0;
    }
    if (!json_is_object(s))
        return 0;
    json_t *type = json_object_get(s, "type");
    if (json_is_string(type)) {
        static const char *const names[] = {"STRING", "NUMBER", "INTEGER", "BOOLEAN",
                                            "ARRAY",  "OBJECT", "NULL"};
        slice t = gem_sl(type);
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            if (slice_eq(t, names[i])) {
                char low[16];
                size_t k = 0;
                for (; names[i][k]; k++)
                    low[k] = (char)(names[i][k] - 'A' + 'a');
                low[k] = '\0';
                if (json_object_set_new(s, "type", json_string(low)))
                    return -ENOMEM;
                type = json_object_get(s, "type");
                break;
            }
        }
        json_t *nullable = json_object_get(s, "nullable");
        if (json_is_true(nullable) && !slice_eq(gem_sl(type), "null")) {
            json_t *both = json_pack("[Os]", type, "null");
            if (!both || json_object_set_new(s, "type", both))
                return -ENOMEM;
        }
        if (nullable)
            json_object_del(s, "nullable");
    }
    const char *key;
    json_t *v;
    json_object_foreach(s, key, v) {
        if (!strcmp(key, "enum") || !strcmp(key, "default") || !strcmp(key, "example") ||
            !strcmp(key, "const"))
            continue;
        if (!strcmp(key, "properties") || !strcmp(key, "$defs") || !strcmp(key, "definitions")) {
            const char *pk;
            json_t *pv;
            json_object_foreach(v, pk, pv)
                if (gem_schema_fix(pv))
                    return -ENOMEM;
            continue;
        }
        if (json_is_object(v) || json_is_array(v))
            if (gem_schema_fix(v))
                return -ENOMEM;
    }
    return 0;
}

/* ------------------------------------------------------------ request decode */

/* What a part carries (its data member). */
typedef enum gem_kind {
    GK_NONE = 0,
    GK_TEXT,
    GK_INLINE,
    GK_FILE,
    GK_CALL,
    GK_RESPONSE,
    GK_OTHER, /* a kind the model has no place for (executableCode ...) */
    GK_MANY,  /* more than one data member */
} gem_kind;

/* The kind of part p; *other is the member's name for GK_OTHER. */
static gem_kind gem_part_kind(const json_t *p, const char **other)
{
    static const struct {
        const char *name;
        gem_kind kind;
    } kinds[] = {
        {"text", GK_TEXT},         {"inlineData", GK_INLINE},         {"fileData", GK_FILE},
        {"functionCall", GK_CALL}, {"functionResponse", GK_RESPONSE},
    };
    gem_kind k = GK_NONE;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)p, key, v) {
        if (json_is_null(v) || gem_key_is(key, "thought") || gem_key_is(key, "thoughtSignature") ||
            gem_key_is(key, "partMetadata") || gem_key_is(key, "mediaResolution"))
            continue;
        gem_kind this = GK_OTHER;
        for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
            if (gem_key_is(key, kinds[i].name))
                this = kinds[i].kind;
        if (this == GK_OTHER) {
            *other = key;
            return GK_OTHER; /* unmapped wins over anything else */
        }
        k = k == GK_NONE ? this : GK_MANY;
    }
    return k;
}

/* The id of the latest TOOL_CALL named name in r so far, or an empty one. */
static chat_str gem_call_id_by_name(const chat_request *r, slice name)
{
    for (size_t i = r->nmsgs; i-- > 0;) {
        const chat_msg *m = &r->msgs[i];
        for (size_t k = m->nparts; k-- > 0;) {
            const chat_part *p = &m->parts[k];
            if (p->type == CHAT_PART_TOOL_CALL && gem_sl_eq(gem_cs(p->name), name))
                return p->id;
        }
    }
    return (chat_str){NULL, 0};
}

/* Copies slice s into the arena. */
static int gem_dup(chat_request *r, slice s, chat_str *out)
{
    return chat_strdup(r, s.p, s.len, out);
}

/* A required string member camel of obj (path names obj). */
static int gem_req_str(const json_t *obj, const char *camel, const char *path, chat_error *err,
                       slice *out)
{
    json_t *v = gem_get(obj, camel);
    if (!json_is_string(v)) {
        char p[64];
        gem_fmt(p, sizeof p, "%s.%s", path, camel);
        return gem_bad(err, p, "a string");
    }
    *out = gem_sl(v);
    return 0;
}

/* An optional string member (absent: empty slice, *had false). */
static int gem_opt_str(const json_t *obj, const char *camel, const char *path, chat_error *err,
                       slice *out)
{
    json_t *v = gem_get(obj, camel);
    *out = slice_make("", 0);
    if (!v)
        return 0;
    if (!json_is_string(v)) {
        char p[64];
        gem_fmt(p, sizeof p, "%s.%s", path, camel);
        return gem_bad(err, p, "a string");
    }
    *out = gem_sl(v);
    return 0;
}

/* Decodes a text/inlineData/fileData/functionCall part p (kind k) at path
 * into message index mi of r. */
static int gem_dec_part(chat_request *r, size_t mi, const json_t *p, gem_kind k, bool model,
                        const char *path, chat_error *err)
{
    char sub[64];
    chat_part *cp;
    slice s, mt;
    int rc = 0;
    switch (k) {
    case GK_TEXT: {
        json_t *t = gem_get(p, "text"), *th = gem_get(p, "thought");
        if (!json_is_string(t)) {
            gem_fmt(sub, sizeof sub, "%s.text", path);
            return gem_bad(err, sub, "a string");
        }
        if (th && !json_is_boolean(th)) {
            gem_fmt(sub, sizeof sub, "%s.thought", path);
            return gem_bad(err, sub, "a boolean");
        }
        bool thinking = model && json_is_true(th);
        if (!(cp = chat_msg_add_part(r, &r->msgs[mi], thinking ? CHAT_PART_THINKING : CHAT_PART_TEXT)))
            return -ENOMEM;
        return gem_dup(r, gem_sl(t), &cp->text);
    }
    case GK_INLINE:
    case GK_FILE: {
        const json_t *d = gem_get(p, k == GK_INLINE ? "inlineData" : "fileData");
        gem_fmt(sub, sizeof sub, "%s.%s", path, k == GK_INLINE ? "inlineData" : "fileData");
        if (!json_is_object(d))
            return gem_bad(err, sub, "an object");
        if ((rc = gem_opt_str(d, "mimeType", sub, err, &mt)) ||
            (rc = gem_req_str(d, k == GK_INLINE ? "data" : "fileUri", sub, err, &s)))
            return rc;
        if (mt.len < 6 || memcmp(mt.p, "image/", 6) != 0) {
            chat_set_unmapped(r, sub); /* audio, video, PDF ...: no place in the model */
            return 0;
        }
        if (!(cp = chat_msg_add_part(r, &r->msgs[mi], CHAT_PART_IMAGE)))
            return -ENOMEM;
        if (gem_dup(r, mt, &cp->media_type) || gem_dup(r, s, k == GK_INLINE ? &cp->data : &cp->url))
            return -ENOMEM;
        return 0;
    }
    case GK_CALL: {
        const json_t *fc = gem_get(p, "functionCall");
        gem_fmt(sub, sizeof sub, "%s.functionCall", path);
        if (!model) {
            chat_error_invalid(err, sub, "functionCall parts are only valid in a 'model' turn");
            return -EINVAL;
        }
        if (!json_is_object(fc))
            return gem_bad(err, sub, "an object");
        slice name, id, sig;
        if ((rc = gem_req_str(fc, "name", sub, err, &name)) ||
            (rc = gem_opt_str(fc, "id", sub, err, &id)) ||
            (rc = gem_opt_str(p, "thoughtSignature", path, err, &sig)))
            return rc;
        json_t *args = gem_get(fc, "args");
        if (args && !json_is_object(args)) {
            gem_fmt(sub, sizeof sub, "%s.functionCall.args", path);
            return gem_bad(err, sub, "an object");
        }
        buf idsig, ab;
        buf_init(&idsig, GEM_TEXT_MAX);
        buf_init(&ab, GEM_TEXT_MAX);
        slice bare;
        if ((rc = chat_tool_id_decode(id, &bare, &idsig)))
            goto call_out;
        if (!sig.len && idsig.len)
            sig = slice_make(idsig.data, idsig.len);
        if (args)
            rc = chat_json_dump(&ab, args);
        else
            rc = buf_append_str(&ab, "{}") ? -E2BIG : 0;
        if (rc)
            goto call_out;
        rc = -ENOMEM;
        if (!(cp = chat_msg_add_part(r, &r->msgs[mi], CHAT_PART_TOOL_CALL)) ||
            gem_dup(r, name, &cp->name) || gem_dup(r, bare, &cp->id) ||
            gem_dup(r, slice_make(ab.data, ab.len), &cp->args) ||
            (sig.len && gem_dup(r, sig, &cp->signature)))
            goto call_out;
        rc = 0;
    call_out:
        buf_free(&idsig);
        buf_free(&ab);
        return rc;
    }
    default:
        return 0;
    }
}

/* Decodes functionResponse part p at path into a TOOL_RESULT of message mi. */
static int gem_dec_response(chat_request *r, size_t mi, const json_t *p, const char *path,
                            chat_error *err)
{
    char sub[64];
    int rc;
    const json_t *fr = gem_get(p, "functionResponse");
    gem_fmt(sub, sizeof sub, "%s.functionResponse", path);
    if (!json_is_object(fr))
        return gem_bad(err, sub, "an object");
    slice name, id;
    if ((rc = gem_req_str(fr, "name", sub, err, &name)) || (rc = gem_opt_str(fr, "id", sub, err, &id)))
        return rc;
    json_t *resp = gem_get(fr, "response");
    if (!json_is_object(resp)) {
        gem_fmt(sub, sizeof sub, "%s.functionResponse.response", path);
        return gem_bad(err, sub, "an object");
    }
    json_t *fparts = gem_get(fr, "parts");
    if (json_is_array(fparts) && json_array_size(fparts) > 0) {
        gem_fmt(sub, sizeof sub, "%s.functionResponse.parts", path);
        chat_set_unmapped(r, sub); /* multimodal function responses */
    }
    buf text, idsig;
    buf_init(&text, GEM_TEXT_MAX);
    buf_init(&idsig, GEM_TEXT_MAX);
    json_t *only = json_object_get(resp, "result");
    if (json_object_size(resp) == 1 && json_is_string(only))
        rc = buf_append_slice(&text, gem_sl(only)) ? -E2BIG : 0;
    else
        rc = chat_json_dump(&text, resp);
    if (rc)
        goto out;
    slice bare;
    if ((rc = chat_tool_id_decode(id, &bare, &idsig)))
        goto out;
    chat_part *cp = chat_msg_add_part(r, &r->msgs[mi], CHAT_PART_TOOL_RESULT);
    rc = -ENOMEM;
    if (!cp || gem_dup(r, name, &cp->name) || gem_dup(r, slice_make(text.data, text.len), &cp->text))
        goto out;
    if (bare.len) {
        if (gem_dup(r, bare, &cp->id))
            goto out;
    } else {
        cp->id = gem_call_id_by_name(r, name);
    }
    rc = 0;
out:
    buf_free(&text);
    buf_free(&idsig);
    return rc;
}

/* Decodes contents[ci] (object c). A user turn's functionResponse parts
 * become a TOOL message, then the rest a USER message. */
static int gem_dec_content(chat_request *r, size_t ci, const json_t *c, chat_error *err)
{
    char path[64], pp[64];
    int rc;
    gem_fmt(path, sizeof path, "contents[%zu]", ci);
    if (!json_is_object(c))
        return gem_bad(err, path, "an object");
    bool model = false;
    json_t *role = gem_get(c, "role");
    if (role) {
        slice s = gem_sl(role);
        gem_fmt(pp, sizeof pp, "%s.role", path);
        if (!json_is_string(role))
            return gem_bad(err, pp, "a string");
        if (slice_eq(s, "model"))
            model = true;
        else if (!slice_eq(s, "user")) {
            chat_error_invalid(err, pp, "Invalid value at '%s': role must be 'user' or 'model'", pp);
            return -EINVAL;
        }
    }
    json_t *parts = gem_get(c, "parts");
    gem_fmt(pp, sizeof pp, "%s.parts", path);
    if (!json_is_array(parts) || json_array_size(parts) == 0)
        return gem_bad(err, pp, "a non-empty array");
    /* Pass 0: tool results (user turns only); pass 1: everything else. */
    for (int pass = model ? 1 : 0; pass < 2; pass++) {
        bool have = false;
        size_t mi = 0, k;
        json_t *p;
        json_array_foreach(parts, k, p) {
            gem_fmt(pp, sizeof pp, "%s.parts[%zu]", path, k);
            if (!json_is_object(p))
                return gem_bad(err, pp, "an object");
            const char *other = NULL;
            gem_kind kind = gem_part_kind(p, &other);
            if (kind == GK_NONE || kind == GK_MANY) {
                chat_error_invalid(err, pp, "Invalid value at '%s': a part must hold exactly one of "
                                            "text, inlineData, fileData, functionCall, functionResponse",
                                   pp);
                return -EINVAL;
            }
            if (!model && (kind == GK_RESPONSE) != (pass == 0))
                continue; /* not this pass's */
            if (kind == GK_OTHER) {
                char name[40], full[64];
                gem_safe_name(other, name, sizeof name);
                gem_fmt(full, sizeof full, "%s.%s", pp, name);
                chat_set_unmapped(r, full);
                continue;
            }
            if (kind == GK_RESPONSE && model) {
                chat_error_invalid(err, pp, "functionResponse parts are only valid in a 'user' turn");
                return -EINVAL;
            }
            if (!have) {
                chat_role role_of = pass == 0 ? CHAT_ROLE_TOOL : model ? CHAT_ROLE_ASSISTANT : CHAT_ROLE_USER;
                if (!chat_add_msg(r, role_of))
                    return -ENOMEM;
                mi = r->nmsgs - 1;
                have = true;
            }
            rc = kind == GK_RESPONSE ? gem_dec_response(r, mi, p, pp, err)
                                     : gem_dec_part(r, mi, p, kind, model, pp, err);
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* systemInstruction {parts:[{text}]} -> one SYSTEM message (role ignored). */
static int gem_dec_system(chat_request *r, const json_t *si, chat_error *err)
{
    if (!json_is_object(si))
        return gem_bad(err, "systemInstruction", "an object");
    json_t *parts = gem_get(si, "parts");
    if (!parts)
        return 0;
    if (!json_is_array(parts))
        return gem_bad(err, "systemInstruction.parts", "an array");
    size_t mi = 0, k;
    bool have = false;
    json_t *p;
    json_array_foreach(parts, k, p) {
        char pp[64];
        gem_fmt(pp, sizeof pp, "systemInstruction.parts[%zu]", k);
        if (!json_is_object(p))
            return gem_bad(err, pp, "an object");
        json_t *t = gem_get(p, "text");
        const char *other = NULL;
        gem_kind kind = gem_part_kind(p, &other);
        if (kind != GK_TEXT || !json_is_string(t)) {
            chat_set_unmapped(r, pp); /* only text is a system prompt elsewhere */
            continue;
        }
        if (!have) {
            if (!chat_add_msg(r, CHAT_ROLE_SYSTEM))
                return -ENOMEM;
            mi = r->nmsgs - 1;
            have = true;
        }
        chat_part *cp = chat_msg_add_part(r, &r->msgs[mi], CHAT_PART_TEXT);
        if (!cp || gem_dup(r, gem_sl(t), &cp->text))
            return -ENOMEM;
    }
    return 0;
}

/* An integer member value >= min into *out (a real with an integral
 * value is taken too: proto3 JSON allows 1.0 for an int32). */
static int gem_int(const json_t *v, int64_t min, const char *path, chat_error *err, int64_t *out)
{
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) < 9.0e15) {
        *out = (int64_t)json_real_value(v);
    } else {
        return gem_bad(err, path, "an integer");
    }
    if (*out < min) {
        chat_error_invalid(err, path, "Invalid value at '%s': must be at least %" PRId64, path, min);
        return -EINVAL;
    }
    return 0;
}

/* A number member value into *out. */
static int gem_num(const json_t *v, const char *path, chat_error *err, double *out)
{
    if (!json_is_number(v))
        return gem_bad(err, path, "a number");
    *out = json_number_value(v);
    return 0;
}

/* generationConfig.thinkingConfig. */
static int gem_dec_thinking(chat_request *r, const json_t *tc, chat_error *err)
{
    const char *key;
    json_t *v;
    if (!json_is_object(tc))
        return gem_bad(err, "generationConfig.thinkingConfig", "an object");
    json_object_foreach((json_t *)tc, key, v) {
        char path[64], name[32];
        gem_safe_name(key, name, sizeof name);
        gem_fmt(path, sizeof path, "generationConfig.thinkingConfig.%s", name);
        if (json_is_null(v))
            continue;
        if (gem_key_is(key, "thinkingBudget")) {
            int64_t b;
            int rc = gem_int(v, -1, path, err, &b);
            if (rc)
                return rc;
            r->thinking_budget = b; /* -1 (dynamic) is the default: unset */
        } else if (gem_key_is(key, "includeThoughts")) {
            if (!json_is_boolean(v))
                return gem_bad(err, path, "a boolean");
        } else {
            chat_set_unmapped(r, path); /* thinkingLevel ... */
        }
    }
    return 0;
}

/* generationConfig. */
static int gem_dec_genconfig(chat_request *r, const json_t *g, chat_error *err)
{
    if (!json_is_object(g))
        return gem_bad(err, "generationConfig", "an object");
    const char *key;
    json_t *v;
    slice mime = slice_make("", 0);
    json_t *schema = NULL;
    bool schema_openapi = false;
    int rc = 0;
    json_object_foreach((json_t *)g, key, v) {
        char path[64], name[40];
        int64_t i64;
        gem_safe_name(key, name, sizeof name);
        gem_fmt(path, sizeof path, "generationConfig.%s", name);
        if (json_is_null(v))
            continue;
        if (gem_key_is(key, "maxOutputTokens")) {
            if ((rc = gem_int(v, 0, path, err, &r->max_tokens)))
                return rc;
        } else if (gem_key_is(key, "temperature")) {
            if ((rc = gem_num(v, path, err, &r->temperature)))
                return rc;
        } else if (gem_key_is(key, "topP")) {
            if ((rc = gem_num(v, path, err, &r->top_p)))
                return rc;
        } else if (gem_key_is(key, "topK")) {
            if ((rc = gem_int(v, 0, path, err, &r->top_k)))
                return rc;
        } else if (gem_key_is(key, "presencePenalty")) {
            if ((rc = gem_num(v, path, err, &r->presence_penalty)))
                return rc;
        } else if (gem_key_is(key, "frequencyPenalty")) {
            if ((rc = gem_num(v, path, err, &r->frequency_penalty)))
                return rc;
        } else if (gem_key_is(key, "candidateCount")) {
            if ((rc = gem_int(v, 1, path, err, &r->n)))
                return rc;
        } else if (gem_key_is(key, "seed")) {
            if ((rc = gem_int(v, INT64_MIN, path, err, &i64)))
                return rc;
            if (i64 < 0)
                chat_set_unmapped(r, path); /* the model keeps -1 for unset */
            else
                r->seed = i64;
        } else if (gem_key_is(key, "stopSequences")) {
            size_t k;
            json_t *s;
            if (!json_is_array(v))
                return gem_bad(err, path, "an array of strings");
            r->nstop = 0;
            json_array_foreach(v, k, s) {
                if (!json_is_string(s))
                    return gem_bad(err, path, "an array of strings");
                if (chat_add_stop(r, json_string_value(s), json_string_length(s)))
                    return -ENOMEM;
            }
        } else if (gem_key_is(key, "responseMimeType")) {
            if (!json_is_string(v))
                return gem_bad(err, path, "a string");
            mime = gem_sl(v);
        } else if (gem_key_is(key, "responseSchema") || gem_key_is(key, "responseJsonSchema")) {
            if (!json_is_object(v))
                return gem_bad(err, path, "an object");
            schema = v;
            schema_openapi = gem_key_is(key, "responseSchema");
        } else if (gem_key_is(key, "thinkingConfig")) {
            if ((rc = gem_dec_thinking(r, v, err)))
                return rc;
        } else if (gem_key_is(key, "responseModalities")) {
            size_t k;
            json_t *s;
            if (!json_is_array(v))
                return gem_bad(err, path, "an array of strings");
            json_array_foreach(v, k, s) {
                if (!json_is_string(s))
                    return gem_bad(err, path, "an array of strings");
                if (!slice_eq(gem_sl(s), "TEXT"))
                    chat_set_unmapped(r, path); /* IMAGE, AUDIO answers */
            }
        } else {
            chat_set_unmapped(r, path);
        }
    }
    if (slice_eq(mime, "application/json")) {
        r->resp_format = CHAT_RESP_JSON_OBJECT;
        if (schema) {
            json_t *copy = json_deep_copy(schema);
            if (!copy)
                return -ENOMEM;
            r->response_schema = copy; /* owned by r from here */
            r->resp_format = CHAT_RESP_JSON_SCHEMA;
            if (schema_openapi && gem_schema_fix(copy))
                return -ENOMEM;
        }
    } else if (mime.len && !slice_eq(mime, "text/plain")) {
        chat_set_unmapped(r, "generationConfig.responseMimeType"); /* text/x.enum ... */
    } else if (schema) {
        chat_error_invalid(err, "generationConfig.responseMimeType",
                           "responseMimeType must be 'application/json' when a response schema is set");
        return -EINVAL;
    }
    return 0;
}

/* tools[]: functionDeclarations; other tool kinds are unmapped. */
static int gem_dec_tools(chat_request *r, const json_t *tools, chat_error *err)
{
    if (!json_is_array(tools))
        return gem_bad(err, "tools", "an array");
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        char path[64];
        gem_fmt(path, sizeof path, "tools[%zu]", i);
        if (!json_is_object(t))
            return gem_bad(err, path, "an object");
        const char *key;
        json_t *v;
        json_object_foreach(t, key, v) {
            char name[40];
            gem_safe_name(key, name, sizeof name);
            if (json_is_null(v))
                continue;
            if (!gem_key_is(key, "functionDeclarations")) {
                gem_fmt(path, sizeof path, "tools[%zu].%s", i, name);
                chat_set_unmapped(r, path); /* googleSearch, codeExecution, urlContext ... */
                continue;
            }
            gem_fmt(path, sizeof path, "tools[%zu].functionDeclarations", i);
            if (!json_is_array(v))
                return gem_bad(err, path, "an array");
            size_t k;
            json_t *d;
            json_array_foreach(v, k, d) {
                char dp[64];
                int rc;
                gem_fmt(dp, sizeof dp, "tools[%zu].functionDeclarations[%zu]", i, k);
                if (!json_is_object(d))
                    return gem_bad(err, dp, "an object");
                slice fname, desc;
                if ((rc = gem_req_str(d, "name", dp, err, &fname)) ||
                    (rc = gem_opt_str(d, "description", dp, err, &desc)))
                    return rc;
                json_t *params = gem_get(d, "parametersJsonSchema");
                bool openapi = false;
                if (!params) {
                    params = gem_get(d, "parameters");
                    openapi = true;
                }
                if (params && !json_is_object(params)) {
                    char pp[64];
                    gem_fmt(pp, sizeof pp, "%s.parameters", dp);
                    return gem_bad(err, pp, "an object");
                }
                if (gem_get(d, "behavior")) {
                    char pp[64];
                    gem_fmt(pp, sizeof pp, "%s.behavior", dp);
                    chat_set_unmapped(r, pp);
                }
                chat_tool *ct = chat_add_tool(r);
                if (!ct || gem_dup(r, fname, &ct->name))
                    return -ENOMEM;
                if (gem_get(d, "description") && gem_dup(r, desc, &ct->description))
                    return -ENOMEM;
                if (params) {
                    ct->parameters = openapi ? json_deep_copy(params) : json_incref(params);
                    if (!ct->parameters || (openapi && gem_schema_fix(ct->parameters)))
                        return -ENOMEM;
                }
            }
        }
    }
    return 0;
}

/* toolConfig.functionCallingConfig {mode, allowedFunctionNames}. */
static int gem_dec_toolconfig(chat_request *r, const json_t *tc, chat_error *err)
{
    static const char P_MODE[] = "toolConfig.functionCallingConfig.mode";
    static const char P_NAMES[] = "toolConfig.functionCallingConfig.allowedFunctionNames";
    if (!json_is_object(tc))
        return gem_bad(err, "toolConfig", "an object");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)tc, key, v) {
        char path[64], name[40];
        gem_safe_name(key, name, sizeof name);
        gem_fmt(path, sizeof path, "toolConfig.%s", name);
        if (json_is_null(v) || gem_key_is(key, "functionCallingConfig") ||
            gem_key_is(key, "retrievalConfig"))
            continue;
        chat_set_unmapped(r, path);
    }
    json_t *fcc = gem_get(tc, "functionCallingConfig");
    if (!fcc)
        return 0;
    if (!json_is_object(fcc))
        return gem_bad(err, "toolConfig.functionCallingConfig", "an object");
    json_t *mode = gem_get(fcc, "mode"), *names = gem_get(fcc, "allowedFunctionNames");
    size_t nnames = 0, k;
    json_t *s;
    if (names) {
        if (!json_is_array(names))
            return gem_bad(err, P_NAMES, "an array of strings");
        json_array_foreach(names, k, s)
            if (!json_is_string(s))
                return gem_bad(err, P_NAMES, "an array of strings");
        nnames = json_array_size(names);
    }
    slice m = gem_sl(mode);
    if (mode && !json_is_string(mode))
        return gem_bad(err, P_MODE, "a string");
    if (!mode || slice_eq(m, "MODE_UNSPECIFIED")) {
        r->tool_choice = CHAT_TOOL_CHOICE_UNSET;
    } else if (slice_eq(m, "AUTO") || slice_eq(m, "VALIDATED")) {
        r->tool_choice = CHAT_TOOL_CHOICE_AUTO;
    } else if (slice_eq(m, "NONE")) {
        r->tool_choice = CHAT_TOOL_CHOICE_NONE;
    } else if (slice_eq(m, "ANY")) {
        r->tool_choice = CHAT_TOOL_CHOICE_REQUIRED;
        if (nnames == 1) {
            r->tool_choice = CHAT_TOOL_CHOICE_NAMED;
            if (gem_dup(r, gem_sl(json_array_get(names, 0)), &r->tool_choice_name))
                return -ENOMEM;
            return 0;
        }
    } else {
        chat_error_invalid(err, P_MODE, "Invalid value at '%s': expected AUTO, ANY, NONE or VALIDATED",
                           P_MODE);
        return -EINVAL;
    }
    if (nnames > 0)
        chat_set_unmapped(r, P_NAMES); /* a subset of the tools: no place in the model */
    return 0;
}

/* Decodes a GenerateContentRequest body. */
static int gem_req_decode(const char *body, size_t n, chat_request *r, chat_error *err)
{
    json_error_t jerr;
    int rc = 0;
    json_t *j = json_loadb(body ? body : "", n, GEM_JFLAGS, &jerr);
    if (!j) {
        /* jansson quotes the offending input bytes: keep the message UTF-8. */
        char why[sizeof jerr.text] = "";
        gem_copy_text(why, sizeof why, jerr.text, strnlen(jerr.text, sizeof jerr.text));
        chat_error_invalid(err, NULL, "Invalid JSON payload received. %s at position %d", why, jerr.position);
        return -EINVAL;
    }
    if (!json_is_object(j)) {
        rc = gem_bad(err, NULL, "a JSON object");
        goto out;
    }
    /* Every top-level member is either handled below, ignored, or unmapped. */
    const char *key;
    json_t *v;
    json_object_foreach(j, key, v) {
        static const char *const known[] = {"contents", "systemInstruction", "generationConfig",
                                            "tools",    "toolConfig",        "safetySettings",
                                            "labels",   "model"};
        bool k = json_is_null(v);
        for (size_t i = 0; !k && i < sizeof known / sizeof known[0]; i++)
            k = gem_key_is(key, known[i]);
        if (!k) {
            char name[64];
            gem_safe_name(key, name, sizeof name);
            chat_set_unmapped(r, name); /* cachedContent, ... */
        }
    }
    json_t *si = gem_get(j, "systemInstruction");
    if (si && (rc = gem_dec_system(r, si, err)))
        goto out;
    json_t *contents = gem_get(j, "contents");
    if (!json_is_array(contents)) {
        rc = gem_bad(err, "contents", "an array");
        goto out;
    }
    size_t i;
    json_t *c;
    json_array_foreach(contents, i, c)
        if ((rc = gem_dec_content(r, i, c, err)))
            goto out;
    json_t *g = gem_get(j, "generationConfig");
    if (g && (rc = gem_dec_genconfig(r, g, err)))
        goto out;
    json_t *tools = gem_get(j, "tools");
    if (tools && (rc = gem_dec_tools(r, tools, err)))
        goto out;
    json_t *tc = gem_get(j, "toolConfig");
    if (tc && (rc = gem_dec_toolconfig(r, tc, err)))
        goto out;
out:
    json_decref(j);
    if (rc == -E2BIG)
        rc = -ENOMEM; /* an internal buffer cap: treat as out of memory */
    return rc;
}

/* ------------------------------------------------------------ request encode */

/* Appends ",\"key\":" (or without the comma when *first). */
static int gem_key(buf *out, bool *first, const char *key)
{
    if (!*first && buf_append(out, ",", 1))
        return -E2BIG;
    *first = false;
    if (chat_json_str(out, key, strlen(key)) || buf_append(out, ":", 1))
        return -E2BIG;
    return 0;
}

/* Appends a part separator unless this is the first part. */
static int gem_sep(buf *out, bool *first)
{
    if (!*first && buf_append(out, ",", 1))
        return -E2BIG;
    *first = false;
    return 0;
}

/* The function name a tool result answers: its own, else the name of the
 * call with its id earlier in r. */
static slice gem_result_name(const chat_request *r, size_t upto, const chat_part *res)
{
    if (res->name.len)
        return gem_cs(res->name);
    slice id = gem_cs(res->id);
    if (!id.len)
        return slice_make("", 0);
    for (size_t i = upto; i-- > 0;) {
        const chat_msg *m = &r->msgs[i];
        for (size_t k = 0; k < m->nparts; k++) {
            const chat_part *p = &m->parts[k];
            if (p->type == CHAT_PART_TOOL_CALL && gem_sl_eq(gem_cs(p->id), id))
                return gem_cs(p->name);
        }
    }
    return slice_make("", 0);
}

/* Appends one part of messages[mi].content[pi] in Gemini shape (nothing
 * for THINKING). */
static int gem_enc_part(const chat_request *r, size_t mi, size_t pi, buf *out, bool *first,
                        chat_error *err)
{
    const chat_msg *m = &r->msgs[mi];
    const chat_part *p = &m->parts[pi];
    char path[64];
    int rc = 0;
    json_t *j = NULL;
    gem_fmt(path, sizeof path, "messages[%zu].content[%zu]", mi, pi);
    switch (p->type) {
    case CHAT_PART_THINKING:
        return 0; /* Gemini takes no past reasoning back */
    case CHAT_PART_TEXT:
        TRY(gem_sep(out, first));
        PUT(out, "{\"text\":");
        TRY(chat_json_str(out, p->text.p, p->text.len));
        PUT(out, "}");
        break;
    case CHAT_PART_IMAGE:
        if (!p->data.p || !p->media_type.len) {
            chat_error_invalid(err, path,
                               "image URLs cannot be sent to Gemini: it takes inline base64 images only");
            return -EINVAL;
        }
        TRY(gem_sep(out, first));
        PUT(out, "{\"inlineData\":{\"mimeType\":");
        TRY(chat_json_str(out, p->media_type.p, p->media_type.len));
        PUT(out, ",\"data\":");
        TRY(chat_json_str(out, p->data.p, p->data.len));
        PUT(out, "}}");
        break;
    case CHAT_PART_TOOL_CALL:
        if (m->role != CHAT_ROLE_ASSISTANT) {
            chat_error_invalid(err, path, "tool calls are only valid in assistant messages");
            return -EINVAL;
        }
        if (p->args.len) {
            j = gem_load_object(p->args.p, p->args.len);
            if (!j) {
                chat_error_invalid(err, path, "the arguments of tool call '%.*s' are not a JSON object",
                                   (int)(p->name.len > 64 ? 64 : p->name.len), p->name.p ? p->name.p : "");
                return -EINVAL;
            }
        }
        TRY(gem_sep(out, first));
        PUT(out, "{\"functionCall\":{\"name\":");
        TRY(chat_json_str(out, p->name.p, p->name.len));
        PUT(out, ",\"args\":");
        if (j)
            TRY(chat_json_dump(out, j));
        else
            PUT(out, "{}");
        if (p->id.len) {
            PUT(out, ",\"id\":");
            TRY(chat_json_str(out, p->id.p, p->id.len));
        }
        PUT(out, "}");
        if (p->signature.len) {
            PUT(out, ",\"thoughtSignature\":");
            TRY(chat_json_str(out, p->signature.p, p->signature.len));
        }
        PUT(out, "}");
        break;
    case CHAT_PART_TOOL_RESULT: {
        slice name = gem_result_name(r, mi, p);
        if (m->role == CHAT_ROLE_ASSISTANT || m->role == CHAT_ROLE_SYSTEM) {
            chat_error_invalid(err, path, "tool results are only valid in tool or user messages");
            return -EINVAL;
        }
        if (!name.len) {
            chat_error_invalid(err, path, "tool result '%.*s' in messages[%zu] answers no known tool call",
                               (int)(p->id.len > 64 ? 64 : p->id.len), p->id.p ? p->id.p : "", mi);
            return -EINVAL;
        }
        j = p->text.len ? gem_load_object(p->text.p, p->text.len) : NULL;
        TRY(gem_sep(out, first));
        PUT(out, "{\"functionResponse\":{\"name\":");
        TRY(chat_json_str(out, name.p, name.len));
        if (p->id.len) {
            PUT(out, ",\"id\":");
            TRY(chat_json_str(out, p->id.p, p->id.len));
        }
        PUT(out, ",\"response\":");
        if (j) {
            TRY(chat_json_dump(out, j));
        } else {
            /* Gemini: "output" / "error" keys; the shared convention uses
             * "result" (and "error" for a failed tool). */
            if (p->is_error)
                PUT(out, "{\"error\":");
            else
                PUT(out, "{\"result\":");
            TRY(chat_json_str(out, p->text.p, p->text.len));
            PUT(out, "}");
        }
        PUT(out, "}}");
        break;
    }
    }
out:
    json_decref(j);
    return rc;
}

/* Appends one content {"role":role,"parts":[...]} for messages [from, to)
 * (a run of TOOL messages and a USER one, or one message), nothing when
 * no part was written. */
static int gem_enc_content(const chat_request *r, size_t from, size_t to, const char *role, buf *out,
                           bool *first_content, chat_error *err)
{
    size_t mark = out->len;
    bool first = true, was_first = *first_content;
    int rc = 0;
    TRY(gem_sep(out, first_content));
    PUT(out, "{\"role\":");
    TRY(chat_json_str(out, role, strlen(role)));
    PUT(out, ",\"parts\":[");
    for (size_t i = from; i < to; i++)
        for (size_t k = 0; k < r->msgs[i].nparts; k++)
            TRY(gem_enc_part(r, i, k, out, &first, err));
    PUT(out, "]}");
    if (first) { /* no part: leave the content out (Gemini rejects empty parts) */
        gem_rollback(out, mark);
        *first_content = was_first;
    }
out:
    return rc;
}

/* Appends the generationConfig object when anything in it is set. */
static int gem_enc_genconfig(const chat_request *r, buf *out, bool *first_top)
{
    size_t mark = out->len;
    bool first = true;
    int rc = 0;
    TRY(gem_key(out, first_top, "generationConfig"));
    PUT(out, "{");
    if (r->max_tokens >= 0) {
        TRY(gem_key(out, &first, "maxOutputTokens"));
        TRY(buf_printf(out, "%" PRId64, r->max_tokens) ? -E2BIG : 0);
    }
    static const struct {
        const char *name;
        size_t off;
    } reals[] = {
        {"temperature", offsetof(chat_request, temperature)},
        {"topP", offsetof(chat_request, top_p)},
    };
    for (size_t i = 0; i < sizeof reals / sizeof reals[0]; i++) {
        double d = *(const double *)((const char *)r + reals[i].off);
        if (isfinite(d)) {
            TRY(gem_key(out, &first, reals[i].name));
            TRY(gem_put_double(out, d));
        }
    }
    if (r->top_k >= 0) {
        TRY(gem_key(out, &first, "topK"));
        TRY(buf_printf(out, "%" PRId64, r->top_k) ? -E2BIG : 0);
    }
    if (r->nstop) {
        TRY(gem_key(out, &first, "stopSequences"));
        PUT(out, "[");
        for (size_t i = 0; i < r->nstop; i++) {
            if (i)
                PUT(out, ",");
            TRY(chat_json_str(out, r->stop[i].p, r->stop[i].len));
        }
        PUT(out, "]");
    }
    if (r->seed >= 0) {
        TRY(gem_key(out, &first, "seed"));
        TRY(buf_printf(out, "%" PRId64, r->seed) ? -E2BIG : 0);
    }
    if (isfinite(r->presence_penalty)) {
        TRY(gem_key(out, &first, "presencePenalty"));
        TRY(gem_put_double(out, r->presence_penalty));
    }
    if (isfinite(r->frequency_penalty)) {
        TRY(gem_key(out, &first, "frequencyPenalty"));
        TRY(gem_put_double(out, r->frequency_penalty));
    }
    if (r->resp_format != CHAT_RESP_TEXT) {
        TRY(gem_key(out, &first, "responseMimeType"));
        PUT(out, "\"application/json\"");
        if (r->resp_format == CHAT_RESP_JSON_SCHEMA && r->response_schema) {
            TRY(gem_key(out, &first, "responseJsonSchema"));
            TRY(chat_json_dump(out, r->response_schema));
        }
    }
    if (r->thinking_budget >= 0) {
        TRY(gem_key(out, &first, "thinkingConfig"));
        TRY(buf_printf(out, "{\"thinkingBudget\":%" PRId64 "}", r->thinking_budget) ? -E2BIG : 0);
    }
    PUT(out, "}");
    if (first) /* nothing set */
        gem_rollback(out, mark);
out:
    return rc;
}

/* Appends tools and toolConfig. */
static int gem_enc_tools(const chat_request *r, buf *out, bool *first_top)
{
    int rc = 0;
    if (r->ntools) {
        TRY(gem_key(out, first_top, "tools"));
        PUT(out, "[{\"functionDeclarations\":[");
        for (size_t i = 0; i < r->ntools; i++) {
            const chat_tool *t = &r->tools[i];
            if (i)
                PUT(out, ",");
            PUT(out, "{\"name\":");
            TRY(chat_json_str(out, t->name.p, t->name.len));
            if (t->description.p) {
                PUT(out, ",\"description\":");
                TRY(chat_json_str(out, t->description.p, t->description.len));
            }
            if (t->parameters) {
                PUT(out, ",\"parametersJsonSchema\":");
                TRY(chat_json_dump(out, t->parameters));
            }
            PUT(out, "}");
        }
        PUT(out, "]}]");
    }
    const char *mode = NULL;
    switch (r->tool_choice) {
    case CHAT_TOOL_CHOICE_UNSET: break;
    case CHAT_TOOL_CHOICE_AUTO: mode = "AUTO"; break;
    case CHAT_TOOL_CHOICE_NONE: mode = "NONE"; break;
    case CHAT_TOOL_CHOICE_REQUIRED:
    case CHAT_TOOL_CHOICE_NAMED: mode = "ANY"; break;
    }
    if (mode) {
        TRY(gem_key(out, first_top, "toolConfig"));
        TRY(buf_printf(out, "{\"functionCallingConfig\":{\"mode\":\"%s\"", mode) ? -E2BIG : 0);
        if (r->tool_choice == CHAT_TOOL_CHOICE_NAMED) {
            PUT(out, ",\"allowedFunctionNames\":[");
            TRY(chat_json_str(out, r->tool_choice_name.p, r->tool_choice_name.len));
            PUT(out, "]");
        }
        PUT(out, "}}");
    }
out:
    return rc;
}

/* Encodes r as a GenerateContentRequest (model and stream go in the path).
 * Ignored: user, parallel_tool_calls, include_usage, cache flags, image
 * detail, tool strict, response_schema_name. */
static int gem_req_encode(const chat_request *r, const chat_target *t, buf *out, chat_error *err)
{
    (void)t;
    size_t mark = out->len;
    int rc = 0;
    if (r->unmapped[0]) {
        chat_error_invalid(err, r->unmapped, "parameter '%s' cannot be translated to Gemini", r->unmapped);
        return -EINVAL;
    }
    if (r->n > 1) {
        chat_error_invalid(err, "n", "parameter 'n' cannot be translated to Gemini (n > 1)");
        return -EINVAL;
    }
    bool first_top = true, first = true;
    PUT(out, "{");
    TRY(gem_key(out, &first_top, "contents"));
    PUT(out, "[");
    for (size_t i = 0; i < r->nmsgs; i++) {
        const chat_msg *m = &r->msgs[i];
        switch (m->role) {
        case CHAT_ROLE_SYSTEM:
            break;
        case CHAT_ROLE_ASSISTANT:
            TRY(gem_enc_content(r, i, i + 1, "model", out, &first, err));
            break;
        case CHAT_ROLE_USER:
            TRY(gem_enc_content(r, i, i + 1, "user", out, &first, err));
            break;
        case CHAT_ROLE_TOOL: {
            size_t j = i;
            while (j < r->nmsgs && r->msgs[j].role == CHAT_ROLE_TOOL)
                j++;
            if (j < r->nmsgs && r->msgs[j].role == CHAT_ROLE_USER)
                j++;
            TRY(gem_enc_content(r, i, j, "user", out, &first, err));
            i = j - 1;
            break;
        }
        }
    }
    PUT(out, "]");
    /* System messages, wherever they are, become the system instruction. */
    first = true;
    for (size_t i = 0; i < r->nmsgs; i++) {
        const chat_msg *m = &r->msgs[i];
        if (m->role != CHAT_ROLE_SYSTEM)
            continue;
        for (size_t k = 0; k < m->nparts; k++) {
            const chat_part *p = &m->parts[k];
            if (p->type != CHAT_PART_TEXT) {
                char path[64];
                gem_fmt(path, sizeof path, "messages[%zu].content[%zu]", i, k);
                chat_error_invalid(err, path, "a system message can only hold text for Gemini");
                rc = -EINVAL;
                goto out;
            }
            if (first) {
                TRY(gem_key(out, &first_top, "systemInstruction"));
                PUT(out, "{\"parts\":[");
            } else {
                PUT(out, ",");
            }
            first = false;
            PUT(out, "{\"text\":");
            TRY(chat_json_str(out, p->text.p, p->text.len));
            PUT(out, "}");
        }
    }
    if (!first)
        PUT(out, "]}");
    TRY(gem_enc_tools(r, out, &first_top));
    TRY(gem_enc_genconfig(r, out, &first_top));
    PUT(out, "}");
out:
    if (rc)
        gem_rollback(out, mark);
    return rc;
}

/* "/models/MODEL:generateContent" or ":streamGenerateContent?alt=sse". */
static int gem_req_path(const chat_target *t, buf *out)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t mark = out->len;
    const char *m = t->model ? t->model : "";
    size_t n = t->model ? t->model_len : 0;
    int rc = 0;
    if (n >= 7 && memcmp(m, "models/", 7) == 0) {
        m += 7;
        n -= 7;
    }
    PUT(out, "/models/");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)m[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
            c == '_' || c == '-') {
            TRY(buf_append(out, &m[i], 1) ? -E2BIG : 0);
        } else {
            char esc[3] = {'%', hex[c >> 4], hex[c & 15]};
            TRY(buf_append(out, esc, 3) ? -E2BIG : 0);
        }
    }
    if (t->stream)
        PUT(out, ":streamGenerateContent?alt=sse");
    else
        PUT(out, ":generateContent");
out:
    if (rc)
        gem_rollback(out, mark);
    return rc;
}

/* "x-goog-api-key: KEY\r\n" (nothing without a key; -EINVAL for a key
 * holding CR or LF, which would split the header). */
static int gem_req_auth_headers(const char *api_key, buf *out)
{
    if (!api_key)
        return 0;
    if (strpbrk(api_key, "\r\n"))
        return -EINVAL;
    size_t mark = out->len;
    if (buf_append_str(out, "x-goog-api-key: ") || buf_append_str(out, api_key) ||
        buf_append(out, "\r\n", 2)) {
        gem_rollback(out, mark);
        return -E2BIG;
    }
    return 0;
}

/* ------------------------------------------------------------ errors */

/* google.rpc status names with their HTTP code and kind. */
static const struct {
    const char *status;
    int code;
    chat_err_kind kind;
} gem_statuses[] = {
    {"INVALID_ARGUMENT", 400, CHAT_ERR_INVALID_REQUEST},
    {"FAILED_PRECONDITION", 400, CHAT_ERR_INVALID_REQUEST},
    {"OUT_OF_RANGE", 400, CHAT_ERR_INVALID_REQUEST},
    {"UNAUTHENTICATED", 401, CHAT_ERR_AUTH},
    {"PERMISSION_DENIED", 403, CHAT_ERR_PERMISSION},
    {"NOT_FOUND", 404, CHAT_ERR_NOT_FOUND},
    {"RESOURCE_EXHAUSTED", 429, CHAT_ERR_RATE_LIMIT},
    {"INTERNAL", 500, CHAT_ERR_SERVER},
    {"UNKNOWN", 500, CHAT_ERR_SERVER},
    {"UNAVAILABLE", 503, CHAT_ERR_OVERLOADED},
    {"DEADLINE_EXCEEDED", 504, CHAT_ERR_TIMEOUT},
};

/* Parses a google.protobuf.Duration string ("36s", "36.4297s") into ms;
 * -1 when it is not one. */
static int64_t gem_duration_ms(slice s)
{
    int64_t sec = 0, ms = 0;
    size_t i = 0;
    if (s.len < 2 || s.p[s.len - 1] != 's')
        return -1;
    for (; i < s.len - 1 && s.p[i] >= '0' && s.p[i] <= '9'; i++) {
        if (sec > INT64_C(1000000000000))
            return -1;
        sec = sec * 10 + (s.p[i] - '0');
    }
    if (i == 0)
        return -1;
    if (i < s.len - 1 && s.p[i] == '.') {
        int64_t scale = 100;
        for (i++; i < s.len - 1 && s.p[i] >= '0' && s.p[i] <= '9'; i++) {
            ms += (s.p[i] - '0') * scale;
            scale /= 10;
        }
    }
    if (i != s.len - 1)
        return -1;
    return sec * 1000 + ms;
}

/* Fills e from a Gemini error object eo (status = the HTTP status, or
 * < 400 for an in-stream error: then the object's code counts). */
static void gem_err_from_obj(const json_t *eo, int status, chat_error *e)
{
    json_t *code = json_object_get(eo, "code");
    if (status < 400 && json_is_integer(code) && json_integer_value(code) >= 400 &&
        json_integer_value(code) <= 599)
        status = (int)json_integer_value(code);
    e->status = status;
    e->kind = chat_err_kind_of_status(status);
    slice st = gem_sl(json_object_get(eo, "status"));
    e->type[0] = '\0';
    gem_copy_text(e->type, sizeof e->type, st.p, st.len);
    for (size_t i = 0; i < sizeof gem_statuses / sizeof gem_statuses[0]; i++)
        if (slice_eq(st, gem_statuses[i].status))
            e->kind = gem_statuses[i].kind;
    slice msg = gem_sl(json_object_get(eo, "message"));
    e->message[0] = '\0';
    gem_copy_text(e->message, sizeof e->message, msg.p, msg.len);
    json_t *details = json_object_get(eo, "details");
    size_t i;
    json_t *d;
    json_array_foreach(details, i, d) {
        slice type = gem_sl(json_object_get(d, "@type"));
        if (slice_eq(type, "type.googleapis.com/google.rpc.ErrorInfo")) {
            slice reason = gem_sl(json_object_get(d, "reason"));
            if (reason.len && !e->code[0] && reason.len < sizeof e->code)
                gem_copy_text(e->code, sizeof e->code, reason.p, reason.len);
            if (slice_eq(reason, "API_KEY_INVALID"))
                e->kind = CHAT_ERR_AUTH;
        } else if (slice_eq(type, "type.googleapis.com/google.rpc.RetryInfo")) {
            int64_t ms = gem_duration_ms(gem_sl(json_object_get(d, "retryDelay")));
            if (ms >= 0)
                e->retry_after_ms = ms;
        } else if (slice_eq(type, "type.googleapis.com/google.rpc.BadRequest")) {
            json_t *fv = json_array_get(json_object_get(d, "fieldViolations"), 0);
            slice field = gem_sl(json_object_get(fv, "field"));
            if (field.len && !e->param[0] && field.len < sizeof e->param)
                gem_copy_text(e->param, sizeof e->param, field.p, field.len);
        }
    }
    if (e->status < 400) { /* an in-stream error without a usable code */
        e->status = 500;
        e->kind = CHAT_ERR_SERVER;
        for (size_t k = 0; k < sizeof gem_statuses / sizeof gem_statuses[0]; k++) {
            if (slice_eq(st, gem_statuses[k].status)) {
                e->status = gem_statuses[k].code;
                e->kind = gem_statuses[k].kind;
            }
        }
    }
    if (!e->message[0])
        gem_fmt(e->message, sizeof e->message, "HTTP %d", e->status);
}

/* Decodes any error body: {"error":{...}}, or that inside a JSON array. */
static void gem_error_decode(int status, const char *body, size_t n, chat_error *e)
{
    memset(e, 0, sizeof *e);
    e->status = status;
    e->kind = chat_err_kind_of_status(status);
    e->retry_after_ms = -1;
    json_error_t jerr;
    json_t *j = n ? json_loadb(body, n, JSON_ALLOW_NUL, &jerr) : NULL;
    json_t *o = json_is_array(j) ? json_array_get(j, 0) : j;
    json_t *eo = json_object_get(o, "error");
    if (json_is_object(eo)) {
        gem_err_from_obj(eo, status, e);
    } else {
        gem_fmt(e->message, sizeof e->message, "HTTP %d%s", status, n ? ": " : "");
        gem_copy_text(e->message, sizeof e->message, body, n > GEM_QUOTE_MAX ? GEM_QUOTE_MAX : n);
    }
    json_decref(j);
}

/* The code and status a Gemini caller gets for a kind. TOO_LARGE is a
 * 400 INVALID_ARGUMENT (Gemini's own answer for an oversized request);
 * BILLING is 403 PERMISSION_DENIED (not 429: clients retry a 429, and a
 * spent budget does not come back by retrying). */
static void gem_kind_status(chat_err_kind k, int *code, const char **status)
{
    switch (k) {
    case CHAT_ERR_AUTH: *code = 401; *status = "UNAUTHENTICATED"; return;
    case CHAT_ERR_PERMISSION:
    case CHAT_ERR_BILLING: *code = 403; *status = "PERMISSION_DENIED"; return;
    case CHAT_ERR_NOT_FOUND: *code = 404; *status = "NOT_FOUND"; return;
    case CHAT_ERR_RATE_LIMIT: *code = 429; *status = "RESOURCE_EXHAUSTED"; return;
    case CHAT_ERR_SERVER: *code = 500; *status = "INTERNAL"; return;
    case CHAT_ERR_OVERLOADED: *code = 503; *status = "UNAVAILABLE"; return;
    case CHAT_ERR_TIMEOUT: *code = 504; *status = "DEADLINE_EXCEEDED"; return;
    case CHAT_ERR_INVALID_REQUEST:
    case CHAT_ERR_TOO_LARGE: break;
    }
    *code = 400;
    *status = "INVALID_ARGUMENT";
}

/* Appends {"code","message","status"[,"details"]} (the inner object). */
static int gem_put_error(const chat_error *e, buf *out, bool details, int *code_out)
{
    int code, rc = 0;
    const char *status;
    gem_kind_status(e->kind, &code, &status);
    size_t mlen = strnlen(e->message, sizeof e->message);
    const char *msg = mlen ? e->message : status;
    TRY(buf_printf(out, "{\"code\":%d,\"message\":", code) ? -E2BIG : 0);
    TRY(chat_json_str(out, msg, mlen ? mlen : strlen(status)));
    TRY(buf_printf(out, ",\"status\":\"%s\"", status) ? -E2BIG : 0);
    if (details && e->retry_after_ms >= 0) {
        int64_t ms = e->retry_after_ms;
        TRY(buf_printf(out, ",\"details\":[{\"@type\":\"type.googleapis.com/google.rpc.RetryInfo\","
                            "\"retryDelay\":\"%" PRId64, ms / 1000) ? -E2BIG : 0);
        if (ms % 1000)
            TRY(buf_printf(out, ".%03" PRId64, ms % 1000) ? -E2BIG : 0);
        PUT(out, "s\"}]");
    }
    PUT(out, "}");
    if (code_out)
        *code_out = code;
out:
    return rc;
}

/* {"error":{...}} with the HTTP status to answer with. */
static int gem_error_encode(const chat_error *e, buf *out, int *status)
{
    size_t mark = out->len;
    int rc = 0, code = 400;
    PUT(out, "{\"error\":");
    TRY(gem_put_error(e, out, true, &code));
    PUT(out, "}");
    if (status)
        *status = code;
out:
    if (rc)
        gem_rollback(out, mark);
    return rc;
}

/* ------------------------------------------------------------ stream state */

typedef enum gem_stream_kind { GEM_DEC = 1, GEM_ENC } gem_stream_kind;

struct chat_stream {
    gem_stream_kind kind;
    /* decoder */
    bool started;   /* START emitted */
    bool finished;  /* FINISH emitted */
    bool ended;     /* END emitted (decoder) or written (encoder) */
    bool saw_call;  /* a functionCall part was seen */
    int ntools;     /* tool calls so far (the next ev.tool) */
    buf tmp;        /* decoder: compact args of one call */
    /* encoder */
    buf id;         /* responseId */
    buf model;      /* modelVersion ("" = leave out) */
    chat_usage usage; /* latest known usage */
    bool have_usage;
    chat_finish finish; /* FINISH's reason, for the last chunk */
    bool pending;   /* a tool call is buffered */
    int call_tool;  /* its ev.tool */
    int call_choice; /* its ev.choice */
    buf call_id, call_name, call_args, call_sig; /* the buffered call */
    buf part;       /* one chunk's parts */
};

/* Allocates a stream of either kind. */
static chat_stream *gem_stream_new(gem_stream_kind kind)
{
    chat_stream *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->kind = kind;
    buf_init(&s->tmp, GEM_TEXT_MAX);
    buf_init(&s->id, GEM_ID_MAX);
    buf_init(&s->model, GEM_ID_MAX);
    buf_init(&s->call_id, GEM_ID_MAX);
    buf_init(&s->call_name, GEM_TEXT_MAX);
    buf_init(&s->call_args, GEM_TEXT_MAX);
    buf_init(&s->call_sig, GEM_TEXT_MAX);
    buf_init(&s->part, GEM_TEXT_MAX);
    chat_usage_unset(&s->usage);
    return s;
}

/* Frees a stream of either kind (NULL is fine). */
static void gem_stream_free(chat_stream *s)
{
    if (!s)
        return;
    buf_free(&s->tmp);
    buf_free(&s->id);
    buf_free(&s->model);
    buf_free(&s->call_id);
    buf_free(&s->call_name);
    buf_free(&s->call_args);
    buf_free(&s->call_sig);
    buf_free(&s->part);
    free(s);
}

/* ------------------------------------------------------------ answer decode */

/* An event of type with usage unset. */
static chat_event gem_ev(chat_ev_type type)
{
    chat_event ev;
    memset(&ev, 0, sizeof ev);
    ev.type = type;
    chat_usage_unset(&ev.usage);
    return ev;
}

/* A usageMetadata count, -1 when absent. */
static int64_t gem_count(const json_t *um, const char *camel)
{
    json_t *v = gem_get(um, camel);
    return json_is_integer(v) && json_integer_value(v) >= 0 ? (int64_t)json_integer_value(v) : -1;
}

/* usageMetadata -> normalized usage (README §2). */
static void gem_usage_of(const json_t *um, chat_usage *u)
{
    int64_t prompt = gem_count(um, "promptTokenCount"), tool = gem_count(um, "toolUsePromptTokenCount"),
            cand = gem_count(um, "candidatesTokenCount"), thoughts = gem_count(um, "thoughtsTokenCount");
    chat_usage_unset(u);
    if (prompt >= 0 || tool >= 0)
        u->input = (prompt > 0 ? prompt : 0) + (tool > 0 ? tool : 0);
    if (cand < 0 && prompt >= 0)
        cand = 0; /* Gemini leaves out a zero count */
    if (cand >= 0 || thoughts >= 0)
        u->output = (cand > 0 ? cand : 0) + (thoughts > 0 ? thoughts : 0);
    u->cache_read = gem_count(um, "cachedContentTokenCount");
    u->reasoning = thoughts;
}

/* Decodes one GenerateContentResponse (a stream chunk or a whole body). */
static int gem_dec_chunk(chat_stream *s, const json_t *j, chat_emit_fn emit, void *ud)
{
    chat_event ev;
    int rc = 0;
    json_t *eo = json_object_get(j, "error");
    if (json_is_object(eo)) {
        chat_error ce;
        memset(&ce, 0, sizeof ce);
        ce.retry_after_ms = -1;
        gem_err_from_obj(eo, 0, &ce);
        ev = gem_ev(CHAT_EV_ERROR);
        ev.error = &ce;
        return emit(ud, &ev);
    }
    if (!s->started) {
        s->started = true;
        ev = gem_ev(CHAT_EV_START);
        ev.id = gem_sl(gem_get(j, "responseId"));
        ev.model = gem_sl(gem_get(j, "modelVersion"));
        if ((rc = emit(ud, &ev)))
            return rc;
    }
    json_t *cands = gem_get(j, "candidates");
    json_t *c0 = json_array_get(cands, 0);
    if (json_is_object(c0)) {
        json_t *parts = gem_get(gem_get(c0, "content"), "parts");
        size_t i;
        json_t *p;
        json_array_foreach(parts, i, p) {
            json_t *text = gem_get(p, "text"), *fc = gem_get(p, "functionCall");
            if (json_is_string(text)) {
                if (!json_string_length(text))
                    continue;
                ev = gem_ev(json_is_true(gem_get(p, "thought")) ? CHAT_EV_THINKING : CHAT_EV_TEXT);
                ev.text = gem_sl(text);
                if ((rc = emit(ud, &ev)))
                    return rc;
            } else if (json_is_object(fc)) {
                s->saw_call = true;
                ev = gem_ev(CHAT_EV_TOOL_START);
                ev.tool = s->ntools;
                ev.id = gem_sl(gem_get(fc, "id"));
                ev.text = gem_sl(gem_get(fc, "name"));
                ev.signature = gem_sl(gem_get(p, "thoughtSignature"));
                if ((rc = emit(ud, &ev)))
                    return rc;
                json_t *args = gem_get(fc, "args");
                buf_reset(&s->tmp);
                if (json_is_object(args))
                    rc = chat_json_dump(&s->tmp, args);
                else
                    rc = buf_append_str(&s->tmp, "{}") ? -E2BIG : 0;
                if (rc)
                    return rc == -E2BIG ? -ENOMEM : rc;
                ev = gem_ev(CHAT_EV_TOOL_ARGS);
                ev.tool = s->ntools++;
                ev.text = slice_make(s->tmp.data, s->tmp.len);
                if ((rc = emit(ud, &ev)))
                    return rc;
            }
        }
        json_t *fr = gem_get(c0, "finishReason");
        if (json_is_string(fr) && !s->finished) {
            s->finished = true;
            ev = gem_ev(CHAT_EV_FINISH);
            ev.native = gem_sl(fr);
            ev.finish = gem_finish_of(ev.native, s->saw_call);
            if ((rc = emit(ud, &ev)))
                return rc;
        }
    } else {
        json_t *br = gem_get(gem_get(j, "promptFeedback"), "blockReason");
        if (json_is_string(br) && !s->finished) {
            s->finished = true;
            ev = gem_ev(CHAT_EV_FINISH);
            ev.finish = CHAT_FINISH_CONTENT_FILTER;
            ev.native = gem_sl(br);
            if ((rc = emit(ud, &ev)))
                return rc;
        }
    }
    json_t *um = gem_get(j, "usageMetadata");
    if (json_is_object(um)) {
        ev = gem_ev(CHAT_EV_USAGE);
        gem_usage_of(um, &ev.usage);
        if ((rc = emit(ud, &ev)))
            return rc;
    }
    return 0;
}

/* A new stream decoder. */
static chat_stream *gem_stream_dec_new(void) { return gem_stream_new(GEM_DEC); }

/* One SSE event: a whole GenerateContentResponse in its data. */
static int gem_stream_dec_feed(chat_stream *s, const sse_event *ev, chat_emit_fn emit, void *ud)
{
    if (!ev->has_data || ev->data.len == 0)
        return 0; /* comment or keep-alive */
    json_t *j = gem_load_object(ev->data.p, ev->data.len);
    if (!j)
        return -EINVAL;
    int rc = gem_dec_chunk(s, j, emit, ud);
    json_decref(j);
    return rc;
}

/* The body ended: END (Gemini streams have no end marker). */
static int gem_stream_dec_finish(chat_stream *s, chat_emit_fn emit, void *ud)
{
    if (s->ended)
        return 0;
    s->ended = true;
    chat_event ev = gem_ev(CHAT_EV_END);
    return emit(ud, &ev);
}

/* A whole response (or a JSON array of them: streamGenerateContent
 * without alt=sse). */
static int gem_resp_decode(const char *body, size_t n, chat_emit_fn emit, void *ud)
{
    json_error_t jerr;
    json_t *j = json_loadb(body ? body : "", n, GEM_JFLAGS, &jerr);
    chat_stream *s = NULL;
    int rc = -EINVAL;
    if (!j || (!json_is_object(j) && !(json_is_array(j) && json_array_size(j) > 0)))
        goto out;
    if (!(s = gem_stream_new(GEM_DEC))) {
        rc = -ENOMEM;
        goto out;
    }
    if (json_is_object(j)) {
        rc = gem_dec_chunk(s, j, emit, ud);
    } else {
        size_t i;
        json_t *c;
        rc = 0;
        json_array_foreach(j, i, c) {
            if (!json_is_object(c)) {
                rc = -EINVAL;
                break;
            }
            if ((rc = gem_dec_chunk(s, c, emit, ud)))
                break;
        }
    }
    if (!rc)
        rc = gem_stream_dec_finish(s, emit, ud);
out:
    gem_stream_free(s);
    json_decref(j);
    return rc;
}

/* ------------------------------------------------------------ answer encode */

/* Appends "usageMetadata":{...} for u. */
static int gem_put_usage(buf *out, const chat_usage *u)
{
    int rc = 0;
    int64_t th = u->reasoning > 0 ? u->reasoning : 0;
    int64_t in = u->input > 0 ? u->input : 0;
    bool first = true;
    PUT(out, "\"usageMetadata\":{");
    if (u->input >= 0) {
        TRY(gem_key(out, &first, "promptTokenCount"));
        TRY(buf_printf(out, "%" PRId64, u->input) ? -E2BIG : 0);
    }
    if (u->output >= 0) {
        TRY(gem_key(out, &first, "candidatesTokenCount"));
        TRY(buf_printf(out, "%" PRId64, u->output > th ? u->output - th : 0) ? -E2BIG : 0);
    }
    TRY(gem_key(out, &first, "totalTokenCount"));
    TRY(buf_printf(out, "%" PRId64, in + (u->output >= 0 ? (u->output > th ? u->output : th) : th)) ? -E2BIG
                                                                                                   : 0);
    if (u->cache_read > 0) {
        TRY(gem_key(out, &first, "cachedContentTokenCount"));
        TRY(buf_printf(out, "%" PRId64, u->cache_read) ? -E2BIG : 0);
    }
    if (th > 0) {
        TRY(gem_key(out, &first, "thoughtsTokenCount"));
        TRY(buf_printf(out, "%" PRId64, th) ? -E2BIG : 0);
    }
    PUT(out, "}");
out:
    return rc;
}

/* Appends one functionCall part for a call. */
static int gem_put_call(buf *out, slice id, slice name, slice args, slice sig)
{
    int rc = 0;
    json_t *j = args.len ? gem_load_object(args.p, args.len) : NULL;
    PUT(out, "{\"functionCall\":{\"name\":");
    TRY(chat_json_str(out, name.p, name.len));
    PUT(out, ",\"args\":");
    if (j)
        TRY(chat_json_dump(out, j));
    else
        PUT(out, "{}"); /* never streamed, or not an object: the API takes only objects */
    if (id.len) {
        PUT(out, ",\"id\":");
        TRY(chat_json_str(out, id.p, id.len));
    }
    PUT(out, "}");
    if (sig.len) {
        PUT(out, ",\"thoughtSignature\":");
        TRY(chat_json_str(out, sig.p, sig.len));
    }
    PUT(out, "}");
out:
    json_decref(j);
    return rc;
}

/* Makes sure the encoder has a responseId. */
static int gem_enc_need_id(chat_stream *s)
{
    if (s->id.len)
        return 0;
    return chat_gen_id(&s->id, "") ? -E2BIG : 0;
}

/* Appends one SSE chunk for candidate `choice` with the parts in s->part
 * (and finishReason when finish is not NULL); nothing on error. */
static int gem_enc_chunk(chat_stream *s, buf *out, int choice, const char *finish)
{
    size_t mark = out->len;
    int rc = 0;
    TRY(gem_enc_need_id(s));
    PUT(out, "data: {\"candidates\":[{\"content\":{\"parts\":[");
    TRY(buf_append(out, s->part.data, s->part.len) ? -E2BIG : 0);
    PUT(out, "],\"role\":\"model\"}");
    if (finish)
        TRY(buf_printf(out, ",\"finishReason\":\"%s\"", finish) ? -E2BIG : 0);
    TRY(buf_printf(out, ",\"index\":%d}]", choice) ? -E2BIG : 0);
    if (s->have_usage) {
        PUT(out, ",");
        TRY(gem_put_usage(out, &s->usage));
    }
    if (s->model.len) {
        PUT(out, ",\"modelVersion\":");
        TRY(chat_json_str(out, s->model.data, s->model.len));
    }
    PUT(out, ",\"responseId\":");
    TRY(chat_json_str(out, s->id.data, s->id.len));
    PUT(out, "}\r\n\r\n");
out:
    if (rc)
        gem_rollback(out, mark);
    return rc;
}

/* Writes the buffered tool call as one chunk. */
static int gem_enc_flush_call(chat_stream *s, buf *out)
{
    if (!s->pending)
        return 0;
    s->pending = false;
    buf_reset(&s->part);
    int rc = gem_put_call(&s->part, slice_make(s->call_id.data, s->call_id.len),
                          slice_make(s->call_name.data, s->call_name.len),
                          slice_make(s->call_args.data, s->call_args.len),
                          slice_make(s->call_sig.data, s->call_sig.len));
    return rc ? rc : gem_enc_chunk(s, out, s->call_choice, NULL);
}

/* Keeps the reported numbers of u. */
static void gem_usage_merge(chat_stream *s, const chat_usage *u)
{
    bool any = false;
    const int64_t *src[] = {&u->input, &u->output, &u->cache_read, &u->cache_write, &u->reasoning};
    int64_t *dst[] = {&s->usage.input, &s->usage.output, &s->usage.cache_read, &s->usage.cache_write,
                      &s->usage.reasoning};
    for (size_t i = 0; i < 5; i++) {
        if (*src[i] >= 0) {
            *dst[i] = *src[i];
            any = true;
        }
    }
    s->have_usage |= any;
}

/* A new stream encoder; the request's model is the fallback modelVersion. */
static chat_stream *gem_stream_enc_new(const chat_request *req)
{
    chat_stream *s = gem_stream_new(GEM_ENC);
    if (s && req && req->model.len && buf_append(&s->model, req->model.p, req->model.len)) {
        gem_stream_free(s);
        return NULL;
    }
    return s;
}

static int gem_stream_error_encode(chat_stream *s, const chat_error *e, buf *out);

/* One normalized event -> Gemini SSE chunks (see the brief: text and
 * thinking go out at once, a tool call when it is complete, the
 * finishReason and final usage in one last chunk at END). */
static int gem_stream_enc_feed(chat_stream *s, const chat_event *ev, buf *out)
{
    int rc = 0;
    if (s->ended)
        return 0;
    switch (ev->type) {
    case CHAT_EV_START:
        if (ev->id.len && !s->id.len && buf_append_slice(&s->id, ev->id))
            return -E2BIG;
        if (ev->model.len) {
            buf_reset(&s->model);
            if (buf_append_slice(&s->model, ev->model))
                return -E2BIG;
        }
        gem_usage_merge(s, &ev->usage);
        return 0;
    case CHAT_EV_TEXT:
    case CHAT_EV_THINKING:
        if ((rc = gem_enc_flush_call(s, out)))
            return rc;
        if (!ev->text.len)
            return 0;
        buf_reset(&s->part);
        if (buf_append_str(&s->part, "{\"text\":") || chat_json_str(&s->part, ev->text.p, ev->text.len) ||
            buf_append_str(&s->part, ev->type == CHAT_EV_THINKING ? ",\"thought\":true}" : "}"))
            return -E2BIG;
        return gem_enc_chunk(s, out, ev->choice, NULL);
    case CHAT_EV_TOOL_START:
        if ((rc = gem_enc_flush_call(s, out)))
            return rc;
        s->pending = true;
        s->call_tool = ev->tool;
        s->call_choice = ev->choice;
        buf_reset(&s->call_id);
        buf_reset(&s->call_name);
        buf_reset(&s->call_args);
        buf_reset(&s->call_sig);
        if (buf_append_slice(&s->call_id, ev->id) || buf_append_slice(&s->call_name, ev->text) ||
            buf_append_slice(&s->call_sig, ev->signature))
            return -E2BIG;
        return 0;
    case CHAT_EV_TOOL_ARGS:
        if (s->pending && ev->tool == s->call_tool && ev->choice == s->call_choice &&
            buf_append_slice(&s->call_args, ev->text))
            return -E2BIG;
        return 0;
    case CHAT_EV_FINISH:
        if (ev->choice == 0)
            s->finish = ev->finish; /* the last chunk finishes candidate 0 */
        return gem_enc_flush_call(s, out);
    case CHAT_EV_USAGE:
        gem_usage_merge(s, &ev->usage);
        return 0;
    case CHAT_EV_ERROR:
        if (!ev->error)
            return 0;
        return gem_stream_error_encode(s, ev->error, out);
    case CHAT_EV_END:
        if ((rc = gem_enc_flush_call(s, out)))
            return rc;
        buf_reset(&s->part);
        if (buf_append_str(&s->part, "{\"text\":\"\"}"))
            return -E2BIG;
        if ((rc = gem_enc_chunk(s, out, 0, gem_finish_name(s->finish))))
            return rc;
        s->ended = true;
        return 0;
    }
    return 0;
}

/* data: {"error":{code,message,status}}; the stream is over after it. */
static int gem_stream_error_encode(chat_stream *s, const chat_error *e, buf *out)
{
    size_t mark = out->len;
    int rc = 0;
    PUT(out, "data: {\"error\":");
    TRY(gem_put_error(e, out, false, NULL));
    PUT(out, "}\r\n\r\n");
    if (s)
        s->ended = true;
out:
    if (rc)
        gem_rollback(out, mark);
    return rc;
}

/* A whole GenerateContentResponse for a collected answer. */
static int gem_resp_encode(const chat_request *req, const chat_response *r, buf *out)
{
    size_t mark = out->len;
    bool first = true;
    int rc = 0;
    buf id;
    buf_init(&id, GEM_ID_MAX);
    if (r->id.len)
        TRY(buf_append(&id, r->id.data, r->id.len) ? -E2BIG : 0);
    else
        TRY(chat_gen_id(&id, ""));
    PUT(out, "{\"candidates\":[{\"content\":{\"parts\":[");
    if (r->thinking.len) {
        TRY(gem_sep(out, &first));
        PUT(out, "{\"text\":");
        TRY(chat_json_str(out, r->thinking.data, r->thinking.len));
        PUT(out, ",\"thought\":true}");
    }
    if (r->text.len) {
        TRY(gem_sep(out, &first));
        PUT(out, "{\"text\":");
        TRY(chat_json_str(out, r->text.data, r->text.len));
        PUT(out, "}");
    }
    for (size_t i = 0; i < r->ncalls; i++) {
        const chat_tool_call *c = &r->calls[i];
        TRY(gem_sep(out, &first));
        TRY(gem_put_call(out, slice_make(c->id.data, c->id.len), slice_make(c->name.data, c->name.len),
                         slice_make(c->args.data, c->args.len),
                         slice_make(c->signature.data, c->signature.len)));
    }
    if (first)
        PUT(out, "{\"text\":\"\"}");
    TRY(buf_printf(out, "],\"role\":\"model\"},\"finishReason\":\"%s\"}]", gem_finish_name(r->finish))
            ? -E2BIG
            : 0);
    if (r->have_usage) {
        PUT(out, ",");
        TRY(gem_put_usage(out, &r->usage));
    }
    if (r->model.len) {
        PUT(out, ",\"modelVersion\":");
        TRY(chat_json_str(out, r->model.data, r->model.len));
    } else if (req && req->model.len) {
        PUT(out, ",\"modelVersion\":");
        TRY(chat_json_str(out, req->model.p, req->model.len));
    }
    PUT(out, ",\"responseId\":");
    TRY(chat_json_str(out, id.data, id.len));
    PUT(out, "}");
out:
    buf_free(&id);
    if (rc)
        gem_rollback(out, mark);
    return rc;
}

const chat_format chat_format_gemini = {
    .id = CHAT_FMT_GEMINI,
    .name = "gemini",
    .req_decode = gem_req_decode,
    .req_encode = gem_req_encode,
    .req_path = gem_req_path,
    .req_auth_headers = gem_req_auth_headers,
    .stream_dec_new = gem_stream_dec_new,
    .stream_dec_feed = gem_stream_dec_feed,
    .stream_dec_finish = gem_stream_dec_finish,
    .resp_decode = gem_resp_decode,
    .error_decode = gem_error_decode,
    .stream_enc_new = gem_stream_enc_new,
    .stream_enc_feed = gem_stream_enc_feed,
    .resp_encode = gem_resp_encode,
    .error_encode = gem_error_encode,
    .stream_error_encode = gem_stream_error_encode,
    .stream_free = gem_stream_free,
};
