#include "fast.h"

/* ------------------------------------------------------------------------- */
/* chat_prompt(body) -> (model, cache_salt, prompt) | None                      */
/*                                                                             */
/* llm_request.parse for the common chat body, without building the document: */
/* a UTF-8 JSON object whose "messages" is a list of objects with string        */
/* "role" and "content", "model" and "cache_salt" strings or absent. Anything   */
/* else (tools, content parts, completions, a key given twice, escapes that     */
/* make surrogates, invalid or deeply nested JSON, ...) answers None and the    */
/* Python parser decides, so both always agree.                                 */

typedef struct {
    const unsigned char *p, *end;
    char *out;          /* the prompt being written (NULL while only validating) */
    size_t len, cap;
} scan_t;

enum { MAX_DEPTH = 64 };

static void skip_ws(scan_t *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static int emit(scan_t *s, const void *data, size_t n) {
    if (s->len + n > s->cap) {
        size_t cap = s->cap ? s->cap : 256;
        while (cap < s->len + n) cap *= 2;
        char *grown = realloc(s->out, cap);
        if (grown == NULL) return -1;
        s->out = grown;
        s->cap = cap;
    }
    memcpy(s->out + s->len, data, n);
    s->len += n;
    return 0;
}

/* Length of the valid UTF-8 sequence at p (no surrogates, no overlongs), or 0. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end) {
    unsigned c = p[0];
    if (c < 0x80) return 1;
    size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
    if (n == 0 || c > 0xF4 || (size_t)(end - p) < n) return 0;
    for (size_t i = 1; i < n; i++)
        if ((p[i] & 0xC0) != 0x80) return 0;
    if (c == 0xE0 && p[1] < 0xA0) return 0;                 /* overlong */
    if (c == 0xED && p[1] >= 0xA0) return 0;                /* surrogate */
    if (c == 0xF0 && p[1] < 0x90) return 0;                 /* overlong */
    if (c == 0xF4 && p[1] >= 0x90) return 0;                /* > U+10FFFF */
    return n;
}

static int hex4(const unsigned char *p, unsigned *value) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return -1;
    }
    *value = v;
    return 0;
}

/* 1 for the bytes a JSON string holds as they are: printable ASCII but " and \\
   (filled when the module is made). */
static unsigned char PLAIN[256];

/* A string at s->p (at its opening quote); its decoded bytes are written to
   `into` when not NULL, plain runs in one copy. -1: not one the fast path takes. */
static int scan_string(scan_t *s, scan_t *into) {
    if (s->p >= s->end || *s->p != '"') return -1;
    const unsigned char *run = ++s->p;
    while (s->p < s->end) {
        const unsigned char *p = s->p, *end = s->end;
        while (p < end && PLAIN[*p]) p++; /* the hot loop: one table load per byte */
        s->p = p;
        if (p == end) break;
        unsigned c = *p;
        if (c >= 0x80) {
            size_t n = utf8_len(s->p, s->end);
            if (n == 0) return -1;
            s->p += n;
            continue;
        }
        if (into && s->p > run && emit(into, run, (size_t)(s->p - run)) < 0) return -1;
        if (c == '"') {
            s->p++;
            return 0;
        }
        if (c < 0x20 || s->end - s->p < 2) return -1;
        unsigned char buf[3];
        size_t n = 1, used = 2;
        switch (s->p[1]) {
        case '"': buf[0] = '"'; break;
        case '\\': buf[0] = '\\'; break;
        case '/': buf[0] = '/'; break;
        case 'b': buf[0] = '\b'; break;
        case 'f': buf[0] = '\f'; break;
        case 'n': buf[0] = '\n'; break;
        case 'r': buf[0] = '\r'; break;
        case 't': buf[0] = '\t'; break;
        case 'u': {
            unsigned v;
            if (s->end - s->p < 6 || hex4(s->p + 2, &v) < 0) return -1;
            if (v >= 0xD800 && v <= 0xDFFF) return -1; /* surrogates: Python decides */
            used = 6;
            if (v < 0x80) {
                buf[0] = v;
            } else if (v < 0x800) {
                buf[0] = 0xC0 | (v >> 6);
                buf[1] = 0x80 | (v & 63);
                n = 2;
            } else {
                buf[0] = 0xE0 | (v >> 12);
                buf[1] = 0x80 | ((v >> 6) & 63);
                buf[2] = 0x80 | (v & 63);
                n = 3;
            }
            break;
        }
        default: return -1;
        }
        if (into && emit(into, buf, n) < 0) return -1;
        s->p += used;
        run = s->p;
    }
    return -1;
}

static int scan_value(scan_t *s, int depth);

static int scan_number(scan_t *s) {
    const unsigned char *p = s->p, *end = s->end;
    if (p < end && *p == '-') p++;
    if (p >= end) return -1;
    if (*p == '0') p++;
    else if (*p >= '1' && *p <= '9') while (p < end && *p >= '0' && *p <= '9') p++;
    else return -1;
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9') return -1;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || *p < '0' || *p > '9') return -1;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    s->p = p;
    return 0;
}

static int scan_literal(scan_t *s, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0) return -1;
    s->p += n;
    return 0;
}

/* Any JSON value (validated, not kept). */
static int scan_value(scan_t *s, int depth) {
    if (depth > MAX_DEPTH) return -1;
    skip_ws(s);
    if (s->p >= s->end) return -1;
    switch (*s->p) {
    case '"': return scan_string(s, NULL);
    case 't': return scan_literal(s, "true");
    case 'f': return scan_literal(s, "false");
    case 'n': return scan_literal(s, "null");
    case '[': case '{': {
        int object = *s->p == '{';
        unsigned char close = object ? '}' : ']';
        s->p++;
        skip_ws(s);
        if (s->p < s->end && *s->p == close) { s->p++; return 0; }
        for (;;) {
            if (object) {
                skip_ws(s);
                if (scan_string(s, NULL) < 0) return -1;
                skip_ws(s);
                if (s->p >= s->end || *s->p != ':') return -1;
                s->p++;
            }
            if (scan_value(s, depth + 1) < 0) return -1;
            skip_ws(s);
            if (s->p >= s->end) return -1;
            if (*s->p == ',') { s->p++; continue; }
            if (*s->p == close) { s->p++; return 0; }
            return -1;
        }
    }
    default: return scan_number(s);
    }
}

/* The key at s->p, compared with `name` (its raw bytes: keys with escapes are
   "other"). Leaves s->p after the colon. 1: it is `name`, 0: another, -1: bad. */
static int scan_key(scan_t *s, const char *const *names, int count) {
    skip_ws(s);
    const unsigned char *start = s->p + 1;
    if (scan_string(s, NULL) < 0) return -1;
    size_t n = (size_t)(s->p - 1 - start);
    int which = count;
    for (int i = 0; i < count; i++)
        if (strlen(names[i]) == n && memcmp(start, names[i], n) == 0) which = i;
    if (which == count && memchr(start, '\\', n)) return -1; /* an escaped key: Python */
    skip_ws(s);
    if (s->p >= s->end || *s->p != ':') return -1;
    s->p++;
    skip_ws(s);
    return which;
}

/* "<|role|>" (after a newline unless first) appended to the prompt. */
static int emit_role(scan_t *prompt, const unsigned char *role, const unsigned char *end,
                     int first) {
    scan_t r = {role, end, NULL, 0, 0};
    if ((!first && emit(prompt, "\n", 1) < 0) || emit(prompt, "<|", 2) < 0) return -1;
    if (scan_string(&r, prompt) < 0) return -1;
    return emit(prompt, "|>", 2);
}

/* One message object: "<|role|>content" appended to the prompt (decoded as
   read when its role comes first, as clients write it). */
static int scan_message(scan_t *s, scan_t *prompt, int first) {
    static const char *const names[] = {"role", "content"};
    const unsigned char *role = NULL, *content = NULL;
    int written = 0;
    if (s->p >= s->end || *s->p != '{') return -1;
    s->p++;
    skip_ws(s);
    if (s->p < s->end && *s->p == '}') return -1; /* no role, no content: Python */
    for (;;) {
        int which = scan_key(s, names, 2);
        if (which < 0) return -1;
        if (which < 2) {
            const unsigned char **seen = which == 0 ? &role : &content;
            if (*seen != NULL || s->p >= s->end || *s->p != '"') return -1;
            *seen = s->p;
            if (which == 1 && role != NULL) {
                if (emit_role(prompt, role, s->end, first) < 0) return -1;
                written = 1;
                if (scan_string(s, prompt) < 0) return -1;
            } else if (scan_string(s, NULL) < 0) {
                return -1;
            }
        } else if (scan_value(s, 2) < 0) {
            return -1;
        }
        skip_ws(s);
        if (s->p >= s->end) return -1;
        if (*s->p == ',') { s->p++; continue; }
        if (*s->p == '}') { s->p++; break; }
        return -1;
    }
    if (role == NULL || content == NULL) return -1;
    if (written) return 0;
    scan_t c = {content, s->end, NULL, 0, 0};
    if (emit_role(prompt, role, s->end, first) < 0) return -1;
    return scan_string(&c, prompt);
}

PyObject *fast_chat_prompt(PyObject *self, PyObject *body_obj) {
    (void)self;
    static const char *const names[] = {"model", "cache_salt", "messages", "prompt", "tools"};
    Py_buffer body;
    if (PyObject_GetBuffer(body_obj, &body, PyBUF_SIMPLE) < 0) return NULL;
    scan_t s = {body.buf, (const unsigned char *)body.buf + body.len, NULL, 0, 0};
    scan_t prompt = {NULL, NULL, NULL, 0, 0};
    const unsigned char *model = NULL, *salt = NULL;
    int messages = 0, ok = 0;
    if (body.len >= 2 && s.p[0] != 0 && s.p[1] != 0 && !(body.len >= 3 && s.p[0] == 0xEF)) {
        skip_ws(&s);
        if (s.p < s.end && *s.p == '{') {
            s.p++;
            skip_ws(&s);
            ok = s.p < s.end && *s.p != '}';
            while (ok) {
                int which = scan_key(&s, names, 5);
                ok = which >= 0;
                if (!ok) break;
                if (which == 0 || which == 1) {
                    const unsigned char **seen = which == 0 ? &model : &salt;
                    ok = *seen == NULL && s.p < s.end && *s.p == '"';
                    if (ok) { *seen = s.p; ok = scan_string(&s, NULL) == 0; }
                } else if (which == 2) {
                    ok = !messages && s.p < s.end && *s.p == '[';
                    messages = 1;
                    if (ok) {
                        s.p++;
                        skip_ws(&s);
                        if (s.p < s.end && *s.p == ']') {
                            s.p++;
                        } else {
                            for (int first = 1; ok; first = 0) {
                                skip_ws(&s);
                                ok = scan_message(&s, &prompt, first) == 0;
                                skip_ws(&s);
                                if (!ok || s.p >= s.end) { ok = 0; break; }
                                if (*s.p == ']') { s.p++; break; }
                                ok = *s.p == ',';
                                s.p++;
                            }
                        }
                    }
                } else if (which == 3 || which == 4) {
                    ok = 0; /* completions, tools: Python */
                } else {
                    ok = scan_value(&s, 1) == 0;
                }
                if (!ok) break;
                skip_ws(&s);
                if (s.p < s.end && *s.p == ',') { s.p++; continue; }
                if (s.p < s.end && *s.p == '}') {
                    s.p++;
                    skip_ws(&s);
                    ok = s.p == s.end && messages;
                    break;
                }
                ok = 0;
            }
        }
    }
    PyObject *result = NULL;
    if (ok) {
        scan_t m = {model, s.end, NULL, 0, 0}, k = {salt, s.end, NULL, 0, 0};
        scan_t model_text = {0}, salt_text = {0};
        if ((model == NULL || scan_string(&m, &model_text) == 0) &&
            (salt == NULL || scan_string(&k, &salt_text) == 0)) {
            result = Py_BuildValue("(s#s#y#)", model_text.out ? model_text.out : "",
                                   (Py_ssize_t)model_text.len,
                                   salt_text.out ? salt_text.out : "", (Py_ssize_t)salt_text.len,
                                   prompt.out ? prompt.out : "", (Py_ssize_t)prompt.len);
        }
        free(model_text.out);
        free(salt_text.out);
    }
    free(prompt.out);
    PyBuffer_Release(&body);
    if (result == NULL && !PyErr_Occurred()) Py_RETURN_NONE;
    return result;
}


void fast_chat_init(void) {
    for (int c = 0x20; c < 0x80; c++) PLAIN[c] = c != '"' && c != '\\';
}
