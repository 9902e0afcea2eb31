/* chained_hashes: chained XXH64 of a prompt's blocks (prefix_hash.py). */
#include "fast.h"

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
PyObject *fast_chained_hashes(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
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
