/*
 * `_ailb_fast`: the plugin's hot pure functions in C, a builtin module of the
 * VM. Each has a Python reference in plugin/ that gives the same answers
 * (tests/test_fast_paths.py holds them equal on random inputs); the Python
 * side uses this module when it can import it (in the VM) and the reference
 * otherwise (natively).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shim_gen.h" /* the host functions: proxy_get_shared_data */

/* XXH64 (the xxHash specification), little-endian reads as wasm32 does. */
static const uint64_t P1 = 0x9E3779B185EBCA87ULL, P2 = 0xC2B2AE3D27D4EB4FULL,
                      P3 = 0x165667B19E3779F9ULL, P4 = 0x85EBCA77C2B2AE63ULL,
                      P5 = 0x27D4EB2F165667C5ULL;

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t read64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t xxh_round(uint64_t acc, uint64_t lane) {
    return rotl64(acc + lane * P2, 31) * P1;
}

static uint64_t xxh64(const unsigned char *p, size_t n, uint64_t seed) {
    const unsigned char *end = p + n;
    uint64_t h;
    if (n >= 32) {
        uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
        for (; p + 32 <= end; p += 32) {
            v1 = xxh_round(v1, read64(p));
            v2 = xxh_round(v2, read64(p + 8));
            v3 = xxh_round(v3, read64(p + 16));
            v4 = xxh_round(v4, read64(p + 24));
        }
        h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
        h = (h ^ xxh_round(0, v1)) * P1 + P4;
        h = (h ^ xxh_round(0, v2)) * P1 + P4;
        h = (h ^ xxh_round(0, v3)) * P1 + P4;
        h = (h ^ xxh_round(0, v4)) * P1 + P4;
    } else {
        h = seed + P5;
    }
    h += (uint64_t)n;
    for (; p + 8 <= end; p += 8) h = rotl64(h ^ xxh_round(0, read64(p)), 27) * P1 + P4;
    if (p + 4 <= end) {
        uint32_t v;
        memcpy(&v, p, 4);
        h = rotl64(h ^ (uint64_t)v * P1, 23) * P2 + P3;
        p += 4;
    }
    for (; p < end; p++) h = rotl64(h ^ *p * P5, 11) * P1;
    h = (h ^ (h >> 33)) * P2;
    h = (h ^ (h >> 29)) * P3;
    return h ^ (h >> 32);
}

/* chained_hashes(namespace, prompt, block_size, max_blocks) -> [hex, ...]:
   block i's hash is XXH64 of prompt's block i seeded with block i-1's hash
   (block 0's seed: XXH64 of namespace), for the whole blocks of `prompt`, at
   most max_blocks (prefix_hash.block_hashes). */
static PyObject *chained_hashes(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    Py_buffer namespace, prompt;
    Py_ssize_t block_size, max_blocks;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "chained_hashes takes 4 arguments");
        return NULL;
    }
    block_size = PyLong_AsSsize_t(args[2]);
    max_blocks = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred()) return NULL;
    if (block_size < 1 || max_blocks < 0) {
        PyErr_SetString(PyExc_ValueError, "block_size must be positive, max_blocks not negative");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &namespace, PyBUF_SIMPLE) < 0) return NULL;
    if (PyObject_GetBuffer(args[1], &prompt, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&namespace);
        return NULL;
    }
    Py_ssize_t blocks = prompt.len / block_size;
    if (blocks > max_blocks) blocks = max_blocks;
    PyObject *out = PyList_New(blocks);
    if (out == NULL) goto done;
    uint64_t hash = xxh64(namespace.buf, (size_t)namespace.len, 0);
    static const char hex[] = "0123456789abcdef";
    const unsigned char *data = prompt.buf;
    for (Py_ssize_t i = 0; i < blocks; i++) {
        char text[16];
        hash = xxh64(data + i * block_size, (size_t)block_size, hash);
        for (int j = 0; j < 16; j++) text[j] = hex[(hash >> (60 - 4 * j)) & 15];
        PyObject *item = PyUnicode_FromStringAndSize(text, sizeof text);
        if (item == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, item);
    }
done:
    PyBuffer_Release(&namespace);
    PyBuffer_Release(&prompt);
    return out;
}

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

static PyObject *chat_prompt(PyObject *self, PyObject *body_obj) {
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

/* ------------------------------------------------------------------------- */
/* prefix_matches(slot_prefix, capacity, clock_prefix, hashes, now_s, ttl_s,   */
/*                capacity_of) -> (matched, aging)                             */
/*                                                                             */
/* EmbeddedPrefixIndex.matches (its reference) with the shared-data reads made */
/* here: the same binary search over the slots "<slot_prefix><hash mod         */
/* capacity>", the same sampling of shorter holdings, the same clocks          */
/* "<clock_prefix><address>". Entries are read as record() writes them;       */
/* a field that is not a decimal integer raises ValueError, as int() does.     */

typedef struct {
    PyObject *address; /* str */
    int64_t expiry, age;
} holder_t;

typedef struct {
    const char *slot_prefix, *clock_prefix;
    size_t slot_prefix_len, clock_prefix_len;
    uint64_t capacity;
    int64_t now_s;
    PyObject *capacity_of; /* address -> blocks (0: unknown) */
    PyObject *known;       /* {address: (clock, size)}, filled as read */
} lookup_t;

static int read_shared(const char *prefix, size_t prefix_len, const char *rest, size_t rest_len,
                       char **value, size_t *value_size) {
    char key[256];
    if (prefix_len + rest_len > sizeof key) {
        PyErr_SetString(PyExc_ValueError, "shared-data key too long");
        return -1;
    }
    memcpy(key, prefix, prefix_len);
    memcpy(key + prefix_len, rest, rest_len);
    uint32_t cas = 0;
    *value = NULL;
    *value_size = 0;
    uint32_t status = proxy_get_shared_data(key, prefix_len + rest_len, value, value_size, &cas);
    if (status == 1) { /* NotFound */
        free(*value);
        *value = NULL;
        return 0;
    }
    if (status != 0) {
        free(*value);
        PyErr_Format(PyExc_RuntimeError, "proxy_get_shared_data: status %u", status);
        return -1;
    }
    return 0;
}

static int parse_int(const char *p, size_t n, int64_t *out) {
    size_t i = n > 0 && p[0] == '-';
    int64_t v = 0;
    if (i == n || n - i > 18) goto bad;
    for (; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') goto bad;
        v = v * 10 + (p[i] - '0');
    }
    *out = p[0] == '-' ? -v : v;
    return 0;
bad:
    PyErr_SetString(PyExc_ValueError, "prefix index entry: not an integer");
    return -1;
}

/* (clock, size) of `address` (a new reference to a 2-tuple), read once per lookup. */
static PyObject *known_of(lookup_t *l, PyObject *address) {
    PyObject *pair = PyDict_GetItemWithError(l->known, address);
    if (pair != NULL) return Py_NewRef(pair);
    if (PyErr_Occurred()) return NULL;
    Py_ssize_t len;
    const char *text = PyUnicode_AsUTF8AndSize(address, &len);
    char *raw;
    size_t raw_len;
    if (text == NULL || read_shared(l->clock_prefix, l->clock_prefix_len, text, (size_t)len,
                                    &raw, &raw_len) < 0)
        return NULL;
    int64_t clock = 0;
    int bad = raw != NULL && raw_len > 0 && parse_int(raw, raw_len, &clock) < 0;
    free(raw);
    if (bad) return NULL;
    PyObject *size = PyObject_CallOneArg(l->capacity_of, address);
    if (size == NULL) return NULL;
    pair = Py_BuildValue("(LN)", (long long)clock, size);
    if (pair == NULL || PyDict_SetItem(l->known, address, pair) < 0) {
        Py_XDECREF(pair);
        return NULL;
    }
    return pair;
}

static void drop_holders(holder_t *h, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) Py_DECREF(h[i].address);
    PyMem_Free(h);
}

/* The slot number of a block hash (16 hex digits) as text: hash mod capacity. */
static int slot_of(const char *hash, Py_ssize_t hash_len, uint64_t capacity, char slot[24]) {
    uint64_t h = 0;
    for (Py_ssize_t i = 0; i < hash_len; i++) {
        char c = hash[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0 || hash_len > 16) {
            PyErr_SetString(PyExc_ValueError, "block hash: not 16 hex digits");
            return -1;
        }
        h = h << 4 | (uint64_t)d;
    }
    return snprintf(slot, 24, "%llu", (unsigned long long)(h % capacity));
}

typedef struct {
    const char *address, *text; /* text: "<address> <expiry> <stamp>" as stored */
    size_t address_len, text_len;
    int64_t expiry, stamp;
} entry_t;

/* The entries a slot's value `raw` holds for `hash` ("<hash>( <address>
   <expiry> <stamp>)*", split on single spaces), into *out (PyMem_Malloc'd,
   *n of them): none when the slot holds another block now or is not of this
   layout. -1 with ValueError for a field that is not an integer. */
static int slot_entries(const char *raw, size_t raw_len, const char *hash, Py_ssize_t hash_len,
                        entry_t **out, size_t *n) {
    *out = NULL;
    *n = 0;
    size_t fields = 1;
    for (size_t i = 0; i < raw_len; i++) fields += raw[i] == ' ';
    const char *first_end = memchr(raw, ' ', raw_len);
    size_t first_len = first_end ? (size_t)(first_end - raw) : raw_len;
    if (first_len != (size_t)hash_len || memcmp(raw, hash, first_len) != 0 || fields % 3 != 1)
        return 0;
    entry_t *entries = PyMem_Malloc(sizeof *entries * (fields / 3 + 1));
    if (entries == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    const char *p = raw + first_len + 1, *end = raw + raw_len;
    for (size_t e = 0; e < fields / 3; e++) {
        const char *part[3];
        size_t len[3];
        for (int k = 0; k < 3; k++) {
            const char *stop = memchr(p, ' ', (size_t)(end - p));
            if (stop == NULL) stop = end;
            part[k] = p;
            len[k] = (size_t)(stop - p);
            p = stop + 1;
        }
        entry_t *entry = &entries[e];
        *entry = (entry_t){part[0], part[0], len[0], (size_t)(part[2] + len[2] - part[0]), 0, 0};
        if (parse_int(part[1], len[1], &entry->expiry) < 0 ||
            parse_int(part[2], len[2], &entry->stamp) < 0) {
            PyMem_Free(entries);
            return -1;
        }
    }
    *out = entries;
    *n = fields / 3;
    return 0;
}

/* The live holders of `block_hash` (a 16-digit hex str), latest first, into
   *out (PyMem_Malloc'd, *count of them; NULL when none). -1 on error. */
static int live_holders(lookup_t *l, PyObject *block_hash, holder_t **out, Py_ssize_t *count) {
    *out = NULL;
    *count = 0;
    Py_ssize_t hash_len;
    const char *hash = PyUnicode_AsUTF8AndSize(block_hash, &hash_len);
    char slot[24];
    int slot_len = hash ? slot_of(hash, hash_len, l->capacity, slot) : -1;
    char *raw;
    size_t raw_len, n_entries;
    entry_t *entries;
    if (slot_len < 0 ||
        read_shared(l->slot_prefix, l->slot_prefix_len, slot, (size_t)slot_len, &raw, &raw_len) < 0)
        return -1;
    if (raw == NULL) return 0;
    int failed = slot_entries(raw, raw_len, hash, hash_len, &entries, &n_entries) < 0;
    holder_t *live = failed || n_entries == 0 ? NULL : PyMem_Malloc(sizeof *live * n_entries);
    if (!failed && n_entries && live == NULL) {
        PyErr_NoMemory();
        failed = 1;
    }
    Py_ssize_t n = 0;
    for (size_t e = 0; !failed && e < n_entries; e++) {
        if (entries[e].expiry <= l->now_s) continue;
        PyObject *address = PyUnicode_DecodeUTF8(entries[e].address,
                                                 (Py_ssize_t)entries[e].address_len, NULL);
        PyObject *pair = address ? known_of(l, address) : NULL;
        if (pair == NULL) {
            Py_XDECREF(address);
            failed = 1;
            break;
        }
        int64_t age = PyLong_AsLongLong(PyTuple_GET_ITEM(pair, 0)) - entries[e].stamp;
        long long size = PyLong_AsLongLong(PyTuple_GET_ITEM(pair, 1));
        Py_DECREF(pair);
        if (PyErr_Occurred()) {
            Py_DECREF(address);
            failed = 1;
            break;
        }
        if (size <= 0 || age < size) {
            live[n++] = (holder_t){address, entries[e].expiry, age};
        } else {
            Py_DECREF(address);
        }
    }
    PyMem_Free(entries);
    free(raw);
    if (failed) {
        if (live) drop_holders(live, n);
        return -1;
    }
    if (n == 0) {
        PyMem_Free(live);
        live = NULL;
    }
    *out = live;
    *count = n;
    return 0;
}

static PyObject *prefix_matches(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "prefix_matches takes 7 arguments");
        return NULL;
    }
    lookup_t l = {0};
    Py_ssize_t slot_len, clock_len;
    long long ttl_s;
    if (PyBytes_AsStringAndSize(args[0], (char **)&l.slot_prefix, &slot_len) < 0 ||
        PyBytes_AsStringAndSize(args[2], (char **)&l.clock_prefix, &clock_len) < 0)
        return NULL;
    l.slot_prefix_len = (size_t)slot_len;
    l.clock_prefix_len = (size_t)clock_len;
    l.capacity = PyLong_AsUnsignedLongLong(args[1]);
    l.now_s = PyLong_AsLongLong(args[4]);
    ttl_s = PyLong_AsLongLong(args[5]);
    if (PyErr_Occurred()) return NULL;
    if (l.capacity == 0 || !PyList_Check(args[3])) {
        PyErr_SetString(PyExc_ValueError, "capacity must be positive, hashes a list");
        return NULL;
    }
    l.capacity_of = args[6];
    PyObject *hashes = args[3];
    PyObject *matched = NULL, *first = NULL, *aging = NULL, *result = NULL;
    holder_t *best = NULL, *found = NULL;
    Py_ssize_t best_n = 0, found_n = 0, longest = 0;
    l.known = PyDict_New();
    if (l.known == NULL) return NULL;

    Py_ssize_t low = 0, high = PyList_GET_SIZE(hashes);
    while (low < high) {
        Py_ssize_t mid = (low + high + 1) / 2;
        if (live_holders(&l, PyList_GET_ITEM(hashes, mid - 1), &found, &found_n) < 0) goto done;
        if (found_n == 0 && mid < PyList_GET_SIZE(hashes) &&
            live_holders(&l, PyList_GET_ITEM(hashes, mid), &found, &found_n) < 0)  /* a collision took block mid? */
            goto done;
        if (found_n == 0) {
            high = mid - 1;
        } else {
            low = longest = mid;
            if (best) drop_holders(best, best_n);
            best = found;
            best_n = found_n;
            found = NULL;
        }
    }
    matched = PyDict_New();
    aging = PySet_New(NULL);
    first = PyDict_New();
    if (matched == NULL || aging == NULL || first == NULL) goto done;
    if (best_n == 0) goto answer;
    PyObject *at_longest = PyLong_FromSsize_t(longest);
    if (at_longest == NULL) goto done;
    for (Py_ssize_t i = 0; i < best_n; i++) {
        PyObject *when = Py_BuildValue("(LL)", (long long)best[i].expiry, (long long)best[i].age);
        if (when == NULL || PyDict_SetItem(matched, best[i].address, at_longest) < 0 ||
            PyDict_SetItem(first, best[i].address, when) < 0) {
            Py_XDECREF(when);
            Py_DECREF(at_longest);
            goto done;
        }
        Py_DECREF(when);
    }
    Py_DECREF(at_longest);
    for (Py_ssize_t position = longest / 2; position >= 1; position /= 2) {
        if (live_holders(&l, PyList_GET_ITEM(hashes, position - 1), &found, &found_n) < 0)
            goto done;
        for (Py_ssize_t i = 0; i < found_n; i++) {
            PyObject *at = PyLong_FromSsize_t(position);
            int ok = at != NULL && PyDict_SetDefault(matched, found[i].address, at) != NULL;
            Py_XDECREF(at);
            if (ok && position == 1 && PyDict_Contains(first, found[i].address) == 1) {
                PyObject *when = Py_BuildValue("(LL)", (long long)found[i].expiry,
                                               (long long)found[i].age);
                ok = when != NULL && PyDict_SetItem(first, found[i].address, when) == 0;
                Py_XDECREF(when);
            }
            if (!ok) goto done;
        }
        if (found) drop_holders(found, found_n);
        found = NULL;
        found_n = 0;
    }
    Py_ssize_t pos = 0;
    PyObject *address, *when;
    while (PyDict_Next(first, &pos, &address, &when)) {
        PyObject *pair = known_of(&l, address);
        if (pair == NULL) goto done;
        long long size = PyLong_AsLongLong(PyTuple_GET_ITEM(pair, 1));
        Py_DECREF(pair);
        long long expiry = PyLong_AsLongLong(PyTuple_GET_ITEM(when, 0));
        long long age = PyLong_AsLongLong(PyTuple_GET_ITEM(when, 1));
        if (PyErr_Occurred()) goto done;
        long long half_ttl = ttl_s >= 0 ? ttl_s / 2 : -((-ttl_s + 1) / 2); /* Python's // */
        if ((expiry - l.now_s < half_ttl || (size > 0 && age > size / 2)) &&
            PySet_Add(aging, address) < 0)
            goto done;
    }
answer:
    result = PyTuple_Pack(2, matched, aging);
done:
    if (best) drop_holders(best, best_n);
    if (found) drop_holders(found, found_n);
    Py_XDECREF(matched);
    Py_XDECREF(aging);
    Py_XDECREF(first);
    Py_DECREF(l.known);
    return result;
}

/* ------------------------------------------------------------------------- */
/* inflight_update(key, vm_id, now_ms, lease_ms, unreleased, choose, tries)   */
/*     -> (written, pick)                                                      */
/*                                                                             */
/* embedded_inflight.update (its reference) with the record's reads, parsing, */
/* encoding and compare-and-swap writes made here; only choose runs Python.    */
/* The record: lines "<vm_id> <until>( <address> <requests> <work>)*".          */

typedef struct {
    const char *address;
    size_t len;
    int64_t requests, work;
} slot_t;

typedef struct {
    const char *text;  /* the line as read: copied as is when kept */
    size_t text_len;
    const char *vm;
    size_t vm_len;
    int64_t until;
    int first, count; /* its slots */
} vm_line_t;

typedef struct {
    vm_line_t *lines;
    slot_t *slots;
    int n_lines, n_slots;
} record_t;

static int64_t field_int(const char **p, const char *end, int *bad) {
    const char *start = *p, *stop = memchr(start, ' ', (size_t)(end - start));
    if (stop == NULL) stop = end;
    int64_t v = 0;
    if (!*bad && parse_int(start, (size_t)(stop - start), &v) < 0) *bad = 1;
    *p = stop < end ? stop + 1 : end;
    return v;
}

/* Parses `raw` (kept alive by the caller) into `r`; -1 with ValueError. */
static int record_parse(const char *raw, size_t len, record_t *r) {
    size_t spaces = 0, lines = 1;
    for (size_t i = 0; i < len; i++) {
        spaces += raw[i] == ' ';
        lines += raw[i] == '\n';
    }
    r->lines = PyMem_Malloc(sizeof *r->lines * lines);
    r->slots = PyMem_Malloc(sizeof *r->slots * (spaces / 3 + 1));
    r->n_lines = r->n_slots = 0;
    if (r->lines == NULL || r->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    const char *p = raw, *end = raw + len;
    int bad = 0;
    while (p < end && !bad) {
        const char *stop = memchr(p, '\n', (size_t)(end - p));
        if (stop == NULL) stop = end;
        if (stop > p) {
            vm_line_t *line = &r->lines[r->n_lines++];
            const char *q = p, *vm_end = memchr(p, ' ', (size_t)(stop - p));
            if (vm_end == NULL) {
                bad = 1;
                break;
            }
            *line = (vm_line_t){p, (size_t)(stop - p), p, (size_t)(vm_end - p), 0, r->n_slots, 0};
            q = vm_end + 1;
            line->until = field_int(&q, stop, &bad);
            while (q < stop && !bad) {
                slot_t *slot = &r->slots[r->n_slots++];
                const char *a_end = memchr(q, ' ', (size_t)(stop - q));
                if (a_end == NULL) {
                    bad = 1;
                    break;
                }
                slot->address = q;
                slot->len = (size_t)(a_end - q);
                q = a_end + 1;
                slot->requests = field_int(&q, stop, &bad);
                slot->work = field_int(&q, stop, &bad);
                line->count++;
            }
        }
        p = stop + 1;
    }
    if (bad) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "in-flight record: not of its layout");
        return -1;
    }
    return 0;
}

static void record_free(record_t *r) {
    PyMem_Free(r->lines);
    PyMem_Free(r->slots);
}

/* This VM's slots while they change: a growable array. */
typedef struct {
    slot_t *slots;
    int n, cap;
} mine_t;

static int mine_add(mine_t *m, const char *address, size_t len, int64_t requests, int64_t work) {
    for (int i = 0; i < m->n; i++) {
        slot_t *s = &m->slots[i];
        if (s->len != len || memcmp(s->address, address, len) != 0) continue;
        s->requests = s->requests + requests > 0 ? s->requests + requests : 0;
        s->work = s->work + work > 0 ? s->work + work : 0;
        if (s->requests == 0 && s->work == 0) {
            memmove(s, s + 1, sizeof *s * (size_t)(m->n - i - 1)); /* keeps the order */
            m->n--;
        }
        return 0;
    }
    if (requests <= 0 && work <= 0) return 0;
    if (m->n == m->cap) {
        int cap = m->cap ? 2 * m->cap : 16;
        slot_t *grown = PyMem_Realloc(m->slots, sizeof *grown * (size_t)cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        m->slots = grown;
        m->cap = cap;
    }
    m->slots[m->n++] = (slot_t){address, len, requests > 0 ? requests : 0, work > 0 ? work : 0};
    return 0;
}

/* Adds `n` to totals[address] (a str made from the bytes). */
static int total_add(PyObject *totals, const char *address, size_t len, int64_t n) {
    if (n == 0) return 0;
    PyObject *key = PyUnicode_DecodeUTF8(address, (Py_ssize_t)len, NULL);
    if (key == NULL) return -1;
    PyObject *have = PyDict_GetItemWithError(totals, key);
    long long sum = n + (have ? PyLong_AsLongLong(have) : 0);
    PyObject *value = PyErr_Occurred() ? NULL : PyLong_FromLongLong(sum);
    int rc = value == NULL ? -1 : PyDict_SetItem(totals, key, value);
    Py_XDECREF(value);
    Py_DECREF(key);
    return rc;
}

typedef struct {
    char *data;
    size_t len, cap;
} text_t;

static int text_put(text_t *t, const char *data, size_t len) {
    if (t->len + len > t->cap) {
        size_t cap = (t->len + len) * 2 + 64;
        char *grown = PyMem_Realloc(t->data, cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        t->data = grown;
        t->cap = cap;
    }
    memcpy(t->data + t->len, data, len);
    t->len += len;
    return 0;
}

static int text_int(text_t *t, int64_t v) {
    char digits[24];
    int n = snprintf(digits, sizeof digits, " %lld", (long long)v);
    return text_put(t, digits, (size_t)n);
}

/* prefix_record(slot_prefix, capacity, hashes, held, address, expiry, stamp,
                 now_s, holders) -> None
   EmbeddedPrefixIndex.reference_write_blocks: from block `held` on, each block's
   slot becomes "<hash> <address> <expiry> <stamp>" followed by up to
   holders - 1 other live holders it had, as stored. */
static PyObject *prefix_record(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "prefix_record takes 9 arguments");
        return NULL;
    }
    char *prefix;
    Py_ssize_t prefix_len, address_len;
    if (PyBytes_AsStringAndSize(args[0], &prefix, &prefix_len) < 0) return NULL;
    uint64_t capacity = PyLong_AsUnsignedLongLong(args[1]);
    Py_ssize_t held = PyLong_AsSsize_t(args[3]);
    const char *address = PyUnicode_AsUTF8AndSize(args[4], &address_len);
    long long expiry = PyLong_AsLongLong(args[5]), stamp = PyLong_AsLongLong(args[6]);
    long long now_s = PyLong_AsLongLong(args[7]);
    long holders = PyLong_AsLong(args[8]);
    if (address == NULL || PyErr_Occurred()) return NULL;
    if (capacity == 0 || !PyList_Check(args[2])) {
        PyErr_SetString(PyExc_ValueError, "capacity must be positive, hashes a list");
        return NULL;
    }
    char mine[96];
    int mine_len = snprintf(mine, sizeof mine, " %.*s %lld %lld", (int)address_len, address,
                            expiry, stamp);
    if (mine_len < 0 || mine_len >= (int)sizeof mine) {
        PyErr_SetString(PyExc_ValueError, "address too long");
        return NULL;
    }
    text_t key = {0}, value = {0};
    for (Py_ssize_t i = held < 0 ? 0 : held; i < PyList_GET_SIZE(args[2]); i++) {
        Py_ssize_t hash_len;
        const char *hash = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(args[2], i), &hash_len);
        char slot[24];
        int slot_len = hash ? slot_of(hash, hash_len, capacity, slot) : -1;
        char *raw;
        size_t raw_len, n = 0;
        entry_t *entries = NULL;
        if (slot_len < 0 ||
            read_shared(prefix, (size_t)prefix_len, slot, (size_t)slot_len, &raw, &raw_len) < 0)
            goto failed;
        int bad = raw != NULL && slot_entries(raw, raw_len, hash, hash_len, &entries, &n) < 0;
        value.len = key.len = 0;
        bad = bad || text_put(&value, hash, (size_t)hash_len) < 0 ||
              text_put(&value, mine, (size_t)mine_len) < 0;
        long kept = 0;
        for (size_t e = 0; !bad && e < n && kept < holders - 1; e++) {
            if ((entries[e].address_len == (size_t)address_len &&
                 memcmp(entries[e].address, address, (size_t)address_len) == 0) ||
                entries[e].expiry <= now_s)
                continue;
            bad = text_put(&value, " ", 1) < 0 ||
                  text_put(&value, entries[e].text, entries[e].text_len) < 0;
            kept++;
        }
        PyMem_Free(entries);
        free(raw);
        if (bad || text_put(&key, prefix, (size_t)prefix_len) < 0 ||
            text_put(&key, slot, (size_t)slot_len) < 0)
            goto failed;
        uint32_t status = proxy_set_shared_data(key.data, key.len, value.data, value.len, 0);
        if (status != 0) {
            PyErr_Format(PyExc_RuntimeError, "proxy_set_shared_data: status %u", status);
            goto failed;
        }
    }
    PyMem_Free(key.data);
    PyMem_Free(value.data);
    Py_RETURN_NONE;
failed:
    PyMem_Free(key.data);
    PyMem_Free(value.data);
    return NULL;
}

/* The line of this VM: "<vm> <until>( <address> <requests> <work>)*". */
static int put_mine(text_t *t, const char *vm, size_t vm_len, int64_t until, const mine_t *m) {
    if ((t->len && text_put(t, "\n", 1) < 0) || text_put(t, vm, vm_len) < 0 ||
        text_int(t, until) < 0)
        return -1;
    for (int i = 0; i < m->n; i++) {
        if (text_put(t, " ", 1) < 0 || text_put(t, m->slots[i].address, m->slots[i].len) < 0 ||
            text_int(t, m->slots[i].requests) < 0 || text_int(t, m->slots[i].work) < 0)
            return -1;
    }
    return 0;
}

/* One attempt: *result (a new reference: the pick or None) and the text to
   write, from `raw`. -1 with an exception (choose's own included). */
static int inflight_step(const char *raw, size_t raw_len, const char *vm, size_t vm_len,
                         int64_t now_ms, int64_t lease_ms, PyObject *unreleased,
                         PyObject *choose, PyObject **result, text_t *out) {
    record_t r = {0};
    mine_t m = {0};
    PyObject *counts = NULL, *work = NULL, *pick = NULL, *address = NULL;
    int rc = -1, mine_at = -1;
    *result = NULL;
    if (record_parse(raw, raw_len, &r) < 0) goto done;
    for (int i = 0; i < r.n_lines; i++) {
        if (r.lines[i].vm_len == vm_len && memcmp(r.lines[i].vm, vm, vm_len) == 0) {
            mine_at = i;
            for (int k = 0; k < r.lines[i].count; k++) {
                slot_t *s = &r.slots[r.lines[i].first + k];
                if (mine_add(&m, s->address, s->len, s->requests, s->work) < 0) goto done;
            }
        }
    }
    Py_ssize_t pos = 0;
    PyObject *key, *pending;
    while (PyDict_Next(unreleased, &pos, &key, &pending)) {
        Py_ssize_t len;
        const char *text = PyUnicode_AsUTF8AndSize(key, &len);
        if (text == NULL) goto done;
        long long requests = PyLong_AsLongLong(PyList_GetItem(pending, 0));
        long long blocks = PyLong_AsLongLong(PyList_GetItem(pending, 1));
        if (PyErr_Occurred() || mine_add(&m, text, (size_t)len, -requests, -blocks) < 0)
            goto done;
    }
    int keep_mine = 1;
    if (choose != Py_None) {
        counts = PyDict_New();
        work = PyDict_New();
        if (counts == NULL || work == NULL) goto done;
        for (int i = 0; i < r.n_lines; i++) { /* the live VMs, in the record's order */
            if (i == mine_at) {
                for (int k = 0; k < m.n; k++) {
                    if (total_add(counts, m.slots[k].address, m.slots[k].len,
                                  m.slots[k].requests) < 0 ||
                        total_add(work, m.slots[k].address, m.slots[k].len, m.slots[k].work) < 0)
                        goto done;
                }
            } else if (r.lines[i].until > now_ms) {
                for (int k = 0; k < r.lines[i].count; k++) {
                    slot_t *s = &r.slots[r.lines[i].first + k];
                    if (total_add(counts, s->address, s->len, s->requests) < 0 ||
                        total_add(work, s->address, s->len, s->work) < 0)
                        goto done;
                }
            }
        }
        if (mine_at < 0) { /* a VM new to the record comes last */
            for (int k = 0; k < m.n; k++) {
                if (total_add(counts, m.slots[k].address, m.slots[k].len, m.slots[k].requests) < 0 ||
                    total_add(work, m.slots[k].address, m.slots[k].len, m.slots[k].work) < 0)
                    goto done;
            }
        }
        pick = PyObject_CallFunctionObjArgs(choose, counts, work, NULL);
        if (pick == NULL) goto done;
        if (pick != Py_None) {
            address = PyObject_GetAttrString(pick, "address");
            PyObject *blocks_obj = address ? PyObject_GetAttrString(pick, "work") : NULL;
            long long blocks = blocks_obj ? PyLong_AsLongLong(blocks_obj) : 0;
            Py_XDECREF(blocks_obj);
            Py_ssize_t len;
            const char *text = address ? PyUnicode_AsUTF8AndSize(address, &len) : NULL;
            if (text == NULL || PyErr_Occurred() || mine_add(&m, text, (size_t)len, 1, blocks) < 0)
                goto done;
        }
    } else {
        keep_mine = 0;
        for (int k = 0; k < m.n; k++) keep_mine |= m.slots[k].requests > 0;
    }
    for (int i = 0; i < r.n_lines; i++) {
        if (i == mine_at) {
            if (keep_mine && put_mine(out, vm, vm_len, now_ms + lease_ms, &m) < 0) goto done;
        } else if (r.lines[i].until > now_ms) {
            if ((out->len && text_put(out, "\n", 1) < 0) ||
                text_put(out, r.lines[i].text, r.lines[i].text_len) < 0)
                goto done;
        }
    }
    if (mine_at < 0 && keep_mine && put_mine(out, vm, vm_len, now_ms + lease_ms, &m) < 0)
        goto done;
    *result = pick ? Py_NewRef(pick) : Py_NewRef(Py_None);
    rc = 0;
done:
    record_free(&r);
    PyMem_Free(m.slots);
    Py_XDECREF(counts);
    Py_XDECREF(work);
    Py_XDECREF(pick);
    Py_XDECREF(address);
    return rc;
}

static PyObject *inflight_update(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "inflight_update takes 7 arguments");
        return NULL;
    }
    Py_ssize_t key_len, vm_len;
    const char *key = PyUnicode_AsUTF8AndSize(args[0], &key_len);
    const char *vm = key ? PyUnicode_AsUTF8AndSize(args[1], &vm_len) : NULL;
    long long now_ms = PyLong_AsLongLong(args[2]), lease_ms = PyLong_AsLongLong(args[3]);
    long tries = PyLong_AsLong(args[6]);
    if (vm == NULL || PyErr_Occurred()) return NULL;
    if (!PyDict_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "unreleased must be a dict");
        return NULL;
    }
    for (long attempt = 0; attempt < tries; attempt++) {
        char *raw = NULL;
        size_t raw_len = 0;
        uint32_t cas = 0;
        uint32_t status = proxy_get_shared_data(key, (size_t)key_len, &raw, &raw_len, &cas);
        if (status != 0 && status != 1) {
            free(raw);
            PyErr_Format(PyExc_RuntimeError, "proxy_get_shared_data: status %u", status);
            return NULL;
        }
        int found = status == 0;
        text_t out = {0};
        PyObject *pick;
        int rc = inflight_step(found && raw ? raw : "", found ? raw_len : 0, vm, (size_t)vm_len,
                               now_ms, lease_ms, args[4], args[5], &pick, &out);
        if (rc < 0) {
            free(raw);
            PyMem_Free(out.data);
            return NULL;
        }
        int same = found && out.len == raw_len && (out.len == 0 || memcmp(out.data, raw, raw_len) == 0);
        free(raw);
        if (!same) {
            status = proxy_set_shared_data(key, (size_t)key_len, out.data ? out.data : "", out.len,
                                           cas);
        }
        PyMem_Free(out.data);
        if (same || status == 0) return Py_BuildValue("(ON)", Py_True, pick);
        Py_DECREF(pick);
        if (status != 8) { /* CasMismatch: another VM wrote first, try again */
            PyErr_Format(PyExc_RuntimeError, "proxy_set_shared_data: status %u", status);
            return NULL;
        }
    }
    return Py_BuildValue("(OO)", Py_False, Py_None);
}

static PyMethodDef fast_methods[] = {
    {"chained_hashes", (PyCFunction)(void (*)(void))chained_hashes, METH_FASTCALL,
     "chained_hashes(namespace, prompt, block_size, max_blocks) -> list of hex XXH64 hashes"},
    {"prefix_matches", (PyCFunction)(void (*)(void))prefix_matches, METH_FASTCALL,
     "prefix_matches(slot_prefix, capacity, clock_prefix, hashes, now_s, ttl_s, capacity_of)"
     " -> (matched, aging): EmbeddedPrefixIndex.matches"},
    {"prefix_record", (PyCFunction)(void (*)(void))prefix_record, METH_FASTCALL,
     "prefix_record(slot_prefix, capacity, hashes, held, address, expiry, stamp, now_s, holders)"
     ": EmbeddedPrefixIndex.reference_write_blocks"},
    {"inflight_update", (PyCFunction)(void (*)(void))inflight_update, METH_FASTCALL,
     "inflight_update(key, vm_id, now_ms, lease_ms, unreleased, choose, tries)"
     " -> (written, pick): embedded_inflight.update"},
    {"chat_prompt", chat_prompt, METH_O,
     "chat_prompt(body) -> (model, cache_salt, prompt bytes), or None: ask llm_request.parse"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fast_module = {PyModuleDef_HEAD_INIT, "_ailb_fast",
                                         "The plugin's hot pure functions in C.", -1,
                                         fast_methods};

PyMODINIT_FUNC PyInit__ailb_fast(void) {
    for (int c = 0x20; c < 0x80; c++) PLAIN[c] = c != '"' && c != '\\';
    return PyModule_Create(&fast_module);
}
