/*
 * `_ailb_fast`: the plugin's hot pure functions in C, a builtin module of the
 * VM. Each has a Python reference in plugin/ that gives the same answers
 * (tests/test_fast_paths.py holds them equal on random inputs); the Python
 * side uses this module when it can import it (in the VM) and the reference
 * otherwise (natively).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* libpython's BLAKE2b (Modules/_blake2), the same code hashlib.blake2b runs.
   Its state is opaque here: BLAKE2_STATE_BYTES is larger than the struct,
   and a copy of it is a byte copy, as the library's own copy() is. */
#define BLAKE2_STATE_BYTES 512
int PyBlake2_blake2b_init_key(void *state, size_t outlen, const void *key, size_t keylen);
int PyBlake2_blake2b_update(void *state, const void *in, size_t inlen);
int PyBlake2_blake2b_final(void *state, void *out, size_t outlen);

enum { DIGEST_BYTES = 8, MAX_KEY_BYTES = 64 };

/* chained_hashes(key, prompt, block_size, max_blocks) -> [hex, ...]: block i's
   hash is BLAKE2b-64, keyed with `key`, of prompt[:(i + 1) * block_size], for
   the whole blocks of `prompt`, at most max_blocks (prefix_hash.block_hashes). */
static PyObject *chained_hashes(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    Py_buffer key, prompt;
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
    if (PyObject_GetBuffer(args[0], &key, PyBUF_SIMPLE) < 0) return NULL;
    if (PyObject_GetBuffer(args[1], &prompt, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&key);
        return NULL;
    }
    PyObject *out = NULL;
    if (key.len > MAX_KEY_BYTES) {
        PyErr_SetString(PyExc_ValueError, "key longer than 64 bytes");
        goto done;
    }
    Py_ssize_t blocks = prompt.len / block_size;
    if (blocks > max_blocks) blocks = max_blocks;
    out = PyList_New(blocks);
    if (out == NULL) goto done;
    _Alignas(64) unsigned char state[BLAKE2_STATE_BYTES], copy[BLAKE2_STATE_BYTES];
    PyBlake2_blake2b_init_key(state, DIGEST_BYTES, key.buf, (size_t)key.len);
    static const char hex[] = "0123456789abcdef";
    const unsigned char *data = prompt.buf;
    for (Py_ssize_t i = 0; i < blocks; i++) {
        unsigned char digest[DIGEST_BYTES];
        char text[2 * DIGEST_BYTES];
        PyBlake2_blake2b_update(state, data + i * block_size, (size_t)block_size);
        memcpy(copy, state, sizeof copy);
        PyBlake2_blake2b_final(copy, digest, DIGEST_BYTES);
        for (int j = 0; j < DIGEST_BYTES; j++) {
            text[2 * j] = hex[digest[j] >> 4];
            text[2 * j + 1] = hex[digest[j] & 15];
        }
        PyObject *item = PyUnicode_FromStringAndSize(text, sizeof text);
        if (item == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, item);
    }
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&prompt);
    return out;
}

static PyMethodDef fast_methods[] = {
    {"chained_hashes", (PyCFunction)(void (*)(void))chained_hashes, METH_FASTCALL,
     "chained_hashes(key, prompt, block_size, max_blocks) -> list of hex BLAKE2b-64 digests"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fast_module = {PyModuleDef_HEAD_INIT, "_ailb_fast",
                                         "The plugin's hot pure functions in C.", -1,
                                         fast_methods};

PyMODINIT_FUNC PyInit__ailb_fast(void) { return PyModule_Create(&fast_module); }
