/* meter.c - incremental token counting and OpenAI prompt counting. */
#include "billing/meter.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef TG_TOKENIZER_BUILD_DIR
#define TG_TOKENIZER_BUILD_DIR ""
#endif
#ifndef TG_INSTALL_DATADIR
#define TG_INSTALL_DATADIR "/usr/local/share"
#endif

/* ------------------------------------------------------------- tok_set */

static bool has_data(const char *dir)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/o200k_base.tgbpe", dir);
    return dir[0] && access(path, R_OK) == 0;
}

const char *tok_default_dir(void)
{
    const char *env = getenv("TOLLGATE_TOKENIZER_DIR");
    if (env && env[0])
        return env;
    static const char *const dirs[] = {TG_TOKENIZER_BUILD_DIR, TG_INSTALL_DATADIR "/tollgate/tokenizer",
                                       "/usr/share/tollgate/tokenizer"};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++)
        if (has_data(dirs[i]))
            return dirs[i];
    return "/usr/share/tollgate/tokenizer";
}

int tok_set_load(tok_set *s, const char *dir, char *err, size_t errcap)
{
    memset(s, 0, sizeof *s);
    if (!dir || !dir[0])
        dir = tok_default_dir();
    snprintf(s->dir, sizeof s->dir, "%s", dir);
    char e1[300] = "", e2[300] = "";
    s->o200k = tok_open_dir(dir, "o200k_base", e1, sizeof e1);
    s->cl100k = tok_open_dir(dir, "cl100k_base", e2, sizeof e2);
    int n = (s->o200k != NULL) + (s->cl100k != NULL);
    if (err && errcap)
        snprintf(err, errcap, "%s%s%s", e1, e1[0] && e2[0] ? "; " : "", e2);
    if (n == 0)
        s->dir[0] = '\0';
    return n;
}

void tok_set_free(tok_set *s)
{
    tok_close(s->o200k);
    tok_close(s->cl100k);
    memset(s, 0, sizeof *s);
}

const tok_enc *tok_set_pick(const tok_set *s, const char *model, size_t len, bool *exact)
{
    const char *name = tok_encoding_for_model(model, len, exact);
    const tok_enc *e = strcmp(name, "cl100k_base") == 0 ? s->cl100k : s->o200k;
    if (!e) {
        *exact = false;
        e = s->o200k ? s->o200k : s->cl100k;
    }
    return e;
}

/* --------------------------------------------------------------- meter */

void meter_init(meter *m, const tok_enc *enc, tok_work *work)
{
    memset(m, 0, sizeof *m);
    m->enc = work ? enc : NULL;
    m->work = work;
}

void meter_init_buf(meter *m, const tok_enc *enc, tok_work *work, char *hold)
{
    meter_init(m, enc, work);
    m->hold = hold;
    m->hold_borrowed = true;
}

void meter_free(meter *m)
{
    if (!m->hold_borrowed)
        free(m->hold);
    m->hold = NULL;
    m->hold_len = 0;
}

struct walk {
    meter *m;
    size_t a_off, a_len, b_off, b_len;
    int have;
};

static bool walk_piece(void *ud, size_t off, size_t len)
{
    struct walk *k = ud;
    if (k->have == 2) {
        k->m->committed += tok_encode_piece(k->m->enc, k->m->work, k->m->hold + k->a_off, k->a_len, NULL, NULL);
        k->a_off = k->b_off;
        k->a_len = k->b_len;
        k->b_off = off;
        k->b_len = len;
    } else if (k->have == 1) {
        k->b_off = off;
        k->b_len = len;
        k->have = 2;
    } else {
        k->a_off = off;
        k->a_len = len;
        k->have = 1;
    }
    return true;
}

/* Counts every piece but the last two; keeps those. With only_last, the
 * first of the two is counted too (when the pair fills the buffer: a
 * piece followed by another is final as far as the pre-tokenizer's one
 * character of lookahead goes; two are held back only for margin). */
static void commit_keep(meter *m, bool only_last)
{
    struct walk k = {.m = m};
    tok_pieces(m->enc, m->work, m->hold, m->hold_len, walk_piece, &k);
    if (only_last && k.have == 2) {
        m->committed += tok_encode_piece(m->enc, m->work, m->hold + k.a_off, k.a_len, NULL, NULL);
        k.a_off = k.b_off;
    }
    size_t keep = k.have ? k.a_off : m->hold_len;
    memmove(m->hold, m->hold + keep, m->hold_len - keep);
    m->hold_len -= (uint32_t)keep;
}

static void commit(meter *m) { commit_keep(m, false); }

/* Counts everything held as final text. */
static void force(meter *m)
{
    m->committed += tok_count(m->enc, m->work, m->hold, m->hold_len);
    m->hold_len = 0;
}

/* Appends valid UTF-8, never splitting a character across a flush. */
static void hold_append(meter *m, const char *p, size_t n)
{
    while (n > 0) {
        size_t space = METER_HOLD_MAX - m->hold_len;
        size_t take = n < space ? n : space;
        while (take < n && take > 0 && ((unsigned char)p[take] & 0xC0) == 0x80)
            take--;
        if (take == 0) {
            commit(m);
            if (METER_HOLD_MAX - m->hold_len < 4) /* two pieces fill it */
                commit_keep(m, true);
            if (METER_HOLD_MAX - m->hold_len < 4) /* one piece fills it */
                force(m);
            continue;
        }
        memcpy(m->hold + m->hold_len, p, take);
        m->hold_len += (uint32_t)take;
        p += take;
        n -= take;
    }
}

static bool hold_ready(meter *m)
{
    if (!m->enc || m->oom)
        return false;
    if (!m->hold) {
        m->hold = malloc(METER_HOLD_MAX);
        if (!m->hold) {
            m->oom = true;
            return false;
        }
    }
    return true;
}

void meter_feed(meter *m, const char *p, size_t n)
{
    m->bytes += n;
    if (n == 0 || !hold_ready(m))
        return;
    char in[256 + 4], out[3 * (256 + 4)];
    while (n > 0) {
        size_t c = m->carry_len;
        memcpy(in, m->carry, c);
        size_t take = n < 256 ? n : 256;
        memcpy(in + c, p, take);
        p += take;
        n -= take;
        size_t held;
        size_t w = tok_utf8_sanitize_to(out, in, c + take, false, &held);
        memcpy(m->carry, in + c + take - held, held);
        m->carry_len = (uint8_t)held;
        hold_append(m, out, w);
    }
    /* Pieces are cut in batches: a delta is only copied, and the regex
     * runs once the held text is long enough to be worth a pass. */
    if (m->hold_len >= METER_COMMIT_AT)
        commit(m);
}

void meter_feed_cb(void *mp, const char *p, size_t n) { meter_feed(mp, p, n); }

void meter_break(meter *m)
{
    if (!hold_ready(m))
        return;
    if (m->carry_len) {
        char out[12];
        size_t held;
        size_t w = tok_utf8_sanitize_to(out, (const char *)m->carry, m->carry_len, true, &held);
        m->carry_len = 0;
        hold_append(m, out, w);
    }
    force(m);
}

uint64_t meter_count(const meter *m)
{
    if (!m->enc || m->oom)
        return (m->bytes + 3) / 4;
    uint64_t n = m->committed;
    size_t len = m->hold_len;
    if (m->carry_len && len + 3 <= METER_HOLD_MAX) {
        /* the cut sequence reads as U+FFFD, with the text before it; the
         * bytes go past hold_len, so the meter itself does not change */
        memcpy(m->hold + len, "\xEF\xBF\xBD", 3);
        len += 3;
    } else if (m->carry_len) {
        n += 1; /* U+FFFD alone is one token in both encodings */
    }
    if (len)
        n += tok_count(m->enc, m->work, m->hold, len);
    return n;
}

void meter_field(meter *m, uint64_t field)
{
    if (m->field != field && m->bytes > 0)
        meter_break(m);
    m->field = field;
}

/* Switches to the text of kind, choice and tool; counts choices and
 * tool calls. */
static void meter__select(meter *m, openai_text_kind kind, int64_t choice, int64_t tool)
{
    if (choice < 0 || choice > 1 << 20)
        choice = 0;
    meter_field(m, (uint64_t)kind << 48 ^ (uint64_t)choice << 24 ^ (uint64_t)(tool + 1));
    if ((uint64_t)choice + 1 > m->choices)
        m->choices = (uint32_t)choice + 1;
    if (kind == OPENAI_TEXT_TOOL_NAME)
        m->tool_calls++;
}

void meter_openai_text(void *ud, openai_text_kind kind, int64_t choice, int64_t tool,
                       const jscan_val *str)
{
    meter *m = ud;
    meter__select(m, kind, choice, tool);
    if (jscan_str_each(str, meter_feed_cb, m) != 0)
        meter_feed(m, str->p, str->n);
}

void meter_text(meter *m, openai_text_kind kind, int64_t choice, int64_t tool, const char *p,
                size_t n)
{
    meter__select(m, kind, choice, tool);
    meter_feed(m, p, n);
}

uint64_t meter_completion(const meter *m)
{
    if (m->bytes == 0 && m->choices == 0)
        return 0;
    return meter_count(m) + (uint64_t)METER_COMPLETION_END * (m->choices ? m->choices : 1) +
           (uint64_t)METER_TOOL_CALL_FRAMING * m->tool_calls;
}

/* ------------------------------------------------------ prompt counting */

typedef struct prompt {
    meter m;
    uint64_t framing; /* tokens that are not text */
} prompt;

/* Feeds a string's decoded bytes (its raw bytes if an escape is bad,
 * which validated JSON never has). */
static void feed_str(meter *m, const jscan_val *v)
{
    if (v->type == JSCAN_STRING && jscan_str_each(v, meter_feed_cb, m) != 0)
        meter_feed(m, v->p, v->n);
}

static void count_str(prompt *c, const jscan_val *v)
{
    if (v->type != JSCAN_STRING)
        return;
    feed_str(&c->m, v);
    meter_break(&c->m);
}

static void count_lit(prompt *c, const char *s)
{
    meter_feed(&c->m, s, strlen(s));
}

/* Images per OpenAI's vision pricing: "low" detail is 85 tokens; other
 * details depend on the size, which a URL does not tell: 765, the cost
 * of a 1024x1024 image at high detail. */
#define IMAGE_LOW 85
#define IMAGE_DEFAULT 765

static void count_content(prompt *c, const jscan_val *v)
{
    if (v->type == JSCAN_STRING) {
        count_str(c, v);
        return;
    }
    jscan_iter it;
    jscan_val part;
    if (v->type != JSCAN_ARRAY || jscan_iter_init(&it, v) != 0)
        return;
    while (jscan_arr_next(&it, &part) == 0) {
        jscan_val t, x;
        if (part.type == JSCAN_STRING) {
            count_str(c, &part);
            continue;
        }
        if (jscan_val_get(&part, "text", &x) == 0) {
            count_str(c, &x);
        } else if (jscan_val_get(&part, "image_url", &x) == 0) {
            jscan_val d;
            bool low = jscan_val_get(&x, "detail", &d) == 0 && jscan_str_eq(&d, "low", 3);
            c->framing += low ? IMAGE_LOW : IMAGE_DEFAULT;
        } else if (jscan_val_get(&part, "refusal", &x) == 0) {
            count_str(c, &x);
        } else if (jscan_val_get(&part, "type", &t) == 0) {
            count_str(c, &t); /* audio, files: at least their markers */
        }
    }
}

static void count_tool_calls(prompt *c, const jscan_val *v)
{
    jscan_iter it;
    jscan_val call, fn, x;
    if (jscan_iter_init(&it, v) != 0)
        return;
    while (jscan_arr_next(&it, &call) == 0) {
        if (jscan_val_get(&call, "function", &fn) != 0)
            continue;
        if (jscan_val_get(&fn, "name", &x) == 0)
            count_str(c, &x);
        if (jscan_val_get(&fn, "arguments", &x) == 0)
            count_str(c, &x);
        c->framing += METER_TOOL_CALL_FRAMING;
    }
}

/* Feeds a string but its last byte, which it keeps back. */
struct strip_dot {
    meter *m;
    char last;
    bool have;
};

static void strip_dot_cb(void *ud, const char *p, size_t n)
{
    struct strip_dot *sd = ud;
    if (n == 0)
        return;
    if (sd->have)
        meter_feed(sd->m, &sd->last, 1);
    meter_feed(sd->m, p, n - 1);
    sd->last = p[n - 1];
    sd->have = true;
}

/* OpenAI cookbook, "counting tokens for chat completions API calls" with
 * tools: per function 7 (cl100k: 10) + "name:description", per property 3
 * + "key:type:description" (a final '.' of the description dropped), per
 * enum -3 + 3 per item + the item, and 12 after the list. */
static void count_tools(prompt *c, const jscan_val *tools, bool cl100k)
{
    jscan_iter it;
    jscan_val tool, fn, x;
    if (jscan_iter_init(&it, tools) != 0)
        return;
    bool any = false;
    while (jscan_arr_next(&it, &tool) == 0) {
        if (jscan_val_get(&tool, "function", &fn) != 0)
            continue;
        any = true;
        c->framing += cl100k ? 10 : 7;
        if (jscan_val_get(&fn, "name", &x) == 0 && x.type == JSCAN_STRING)
            feed_str(&c->m, &x);
        count_lit(c, ":");
        if (jscan_val_get(&fn, "description", &x) == 0 && x.type == JSCAN_STRING)
            feed_str(&c->m, &x);
        meter_break(&c->m);
        jscan_val params, props;
        if (jscan_val_get(&fn, "parameters", &params) != 0 ||
            jscan_val_get(&params, "properties", &props) != 0 || props.type != JSCAN_OBJECT ||
            jscan_is_empty(&props))
            continue;
        c->framing += 3;
        jscan_iter pit;
        jscan_val key, prop;
        if (jscan_iter_init(&pit, &props) != 0)
            continue;
        while (jscan_obj_next(&pit, &key, &prop) == 0) {
            c->framing += 3;
            jscan_val en, item;
            if (jscan_val_get(&prop, "enum", &en) == 0 && en.type == JSCAN_ARRAY) {
                jscan_iter eit;
                c->framing -= 3;
                if (jscan_iter_init(&eit, &en) == 0)
                    while (jscan_arr_next(&eit, &item) == 0) {
                        c->framing += 3;
                        if (item.type == JSCAN_STRING)
                            count_str(c, &item);
                        else {
                            meter_feed(&c->m, item.p, item.n);
                            meter_break(&c->m);
                        }
                    }
            }
            feed_str(&c->m, &key);
            count_lit(c, ":");
            if (jscan_val_get(&prop, "type", &x) == 0 && x.type == JSCAN_STRING)
                feed_str(&c->m, &x);
            count_lit(c, ":");
            if (jscan_val_get(&prop, "description", &x) == 0 && x.type == JSCAN_STRING) {
                struct strip_dot sd = {&c->m, 0, false};
                if (jscan_str_each(&x, strip_dot_cb, &sd) != 0)
                    sd.have = false;
                if (sd.have && sd.last != '.')
                    meter_feed(&c->m, &sd.last, 1);
            }
            meter_break(&c->m);
        }
    }
    if (any)
        c->framing += 12;
}

static void count_messages(prompt *c, const jscan_val *msgs)
{
    jscan_iter it;
    jscan_val msg;
    if (jscan_iter_init(&it, msgs) != 0)
        return;
    while (jscan_arr_next(&it, &msg) == 0) {
        jscan_iter mit;
        jscan_val key, val;
        c->framing += 3; /* <|start|>role ... <|end|> */
        if (msg.type != JSCAN_OBJECT || jscan_iter_init(&mit, &msg) != 0)
            continue;
        while (jscan_obj_next(&mit, &key, &val) == 0) {
            if (jscan_str_eq(&key, "content", 7)) {
                count_content(c, &val);
            } else if (jscan_str_eq(&key, "tool_calls", 10)) {
                count_tool_calls(c, &val);
            } else if (jscan_str_eq(&key, "function_call", 13)) {
                jscan_val x;
                if (jscan_val_get(&val, "name", &x) == 0)
                    count_str(c, &x);
                if (jscan_val_get(&val, "arguments", &x) == 0)
                    count_str(c, &x);
            } else if (jscan_str_eq(&key, "name", 4)) {
                count_str(c, &val);
                c->framing += 1;
            } else if (jscan_str_eq(&key, "tool_call_id", 12)) {
                continue; /* ids are not rendered into the prompt */
            } else if (val.type == JSCAN_STRING) {
                count_str(c, &val); /* role, refusal */
            }
        }
    }
}

uint64_t meter_prompt_openai(const tok_enc *enc, tok_work *w, const char *body, size_t n)
{
    prompt c;
    jscan_val root, v;
    char hold[METER_HOLD_MAX];
    meter_init_buf(&c.m, enc, w, hold);
    c.framing = 0;
    if (jscan_root(body, n, &root) != 0 || root.type != JSCAN_OBJECT)
        return 0;
    if (jscan_val_get(&root, "messages", &v) == 0 && v.type == JSCAN_ARRAY) {
        count_messages(&c, &v);
        c.framing += 3; /* every reply is primed with <|start|>assistant<|message|> */
    }
    if (jscan_val_get(&root, "tools", &v) == 0 && v.type == JSCAN_ARRAY) {
        bool cl100k = enc && strcmp(tok_name(enc), "cl100k_base") == 0;
        count_tools(&c, &v, cl100k);
    } else if (jscan_val_get(&root, "functions", &v) == 0 && v.type == JSCAN_ARRAY) {
        /* legacy "functions": the same definitions without the wrapper */
        jscan_iter it;
        jscan_val f, x;
        if (jscan_iter_init(&it, &v) == 0)
            while (jscan_arr_next(&it, &f) == 0) {
                c.framing += 7;
                if (jscan_val_get(&f, "name", &x) == 0)
                    count_str(&c, &x);
                if (jscan_val_get(&f, "description", &x) == 0)
                    count_str(&c, &x);
                if (jscan_val_get(&f, "parameters", &x) == 0) {
                    meter_feed(&c.m, x.p, x.n);
                    meter_break(&c.m);
                }
            }
    }
    meter_break(&c.m);
    uint64_t total = meter_count(&c.m) + c.framing;
    meter_free(&c.m);
    return total;
}
