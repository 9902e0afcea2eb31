/* The `_ailb_fast` builtin module (the plugin's hot paths in C): what its
   files share. fast.c defines the module and these helpers; fast_hash.c,
   fast_chat.c, fast_index.c and fast_inflight.c one function group each. */
#ifndef AILB_FAST_H
#define AILB_FAST_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shim_gen.h" /* the host functions: proxy_get_shared_data, proxy_set_shared_data */

/* The value of the shared-data key prefix + rest into *value (malloc'd, the
   caller frees it; NULL when the key is absent). -1 with an exception. */
int fast_read_shared(const char *prefix, size_t prefix_len, const char *rest, size_t rest_len,
                     char **value, size_t *value_size);
/* A decimal integer of at most 18 digits, as stored; -1 with ValueError. */
int fast_parse_int(const char *p, size_t n, int64_t *out);

/* A growable byte string (PyMem_Malloc'd); -1 with MemoryError. */
typedef struct {
    char *data;
    size_t len, cap;
} text_t;
int fast_text_put(text_t *t, const char *data, size_t len);
int fast_text_int(text_t *t, int64_t v); /* " <v>" */

/* The module's functions (their docs: the method table in fast.c). */
PyObject *fast_chained_hashes(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *fast_chat_prompt(PyObject *self, PyObject *body);
void fast_chat_init(void);
PyObject *fast_prefix_matches(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *fast_prefix_record(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *fast_inflight_update(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

#endif
