/*
 * `_ailb_fast`: the plugin's hot paths in C, a builtin module of the VM, and
 * the helpers its files share. Each function has a Python reference in
 * plugin/ that gives the same answers (tests/test_fast_paths.py holds them
 * equal on random inputs); the Python side uses this module when it can import
 * it (in the VM) and the reference otherwise (natively).
 */
#include "fast.h"

int fast_read_shared(const char *prefix, size_t prefix_len, const char *rest, size_t rest_len,
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

int fast_parse_int(const char *p, size_t n, int64_t *out) {
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
    PyErr_SetString(PyExc_ValueError, "shared data: a field is not an integer");
    return -1;
}

int fast_text_put(text_t *t, const char *data, size_t len) {
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

int fast_text_int(text_t *t, int64_t v) {
    char digits[24];
    int n = snprintf(digits, sizeof digits, " %lld", (long long)v);
    return fast_text_put(t, digits, (size_t)n);
}

static PyMethodDef fast_methods[] = {
    {"chained_hashes", (PyCFunction)(void (*)(void))fast_chained_hashes, METH_FASTCALL,
     "chained_hashes(namespace, prompt, block_size, max_blocks) -> list of hex XXH64 hashes"},
    {"prefix_matches", (PyCFunction)(void (*)(void))fast_prefix_matches, METH_FASTCALL,
     "prefix_matches(slot_prefix, capacity, clock_prefix, hashes, now_s, ttl_s, capacity_of)"
     " -> (matched, aging): EmbeddedPrefixIndex.matches"},
    {"prefix_record", (PyCFunction)(void (*)(void))fast_prefix_record, METH_FASTCALL,
     "prefix_record(slot_prefix, capacity, hashes, held, address, expiry, stamp, now_s, holders)"
     ": EmbeddedPrefixIndex.reference_write_blocks"},
    {"inflight_update", (PyCFunction)(void (*)(void))fast_inflight_update, METH_FASTCALL,
     "inflight_update(key, vm_id, now_ms, lease_ms, unreleased, choose, tries)"
     " -> (written, pick): embedded_inflight.update"},
    {"chat_prompt", fast_chat_prompt, METH_O,
     "chat_prompt(body) -> (model, cache_salt, prompt bytes), or None: ask llm_request.parse"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fast_module = {PyModuleDef_HEAD_INIT, "_ailb_fast",
                                         "The plugin's hot paths in C.", -1,
                                         fast_methods};

PyMODINIT_FUNC PyInit__ailb_fast(void) {
    fast_chat_init();
    return PyModule_Create(&fast_module);
}
