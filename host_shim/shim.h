/* Shared by the hand-written shim.c and the generated half (build/gen_shim.py). */
#ifndef AILB_SHIM_H
#define AILB_SHIM_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

#define SHIM_LOG_DEBUG 1 /* proxy-wasm log levels */
#define SHIM_LOG_ERROR 4
#define SHIM_MAX_CALLBACK_ARGS 8

/* Generated per target: the host-function imports, SHIM_NUM_CALLBACKS and
 * SHIM_ENTRY_MODULE (the plugin module imported at start). */
#include "shim_gen.h"
extern const char *const shim_callback_names[SHIM_NUM_CALLBACKS];

/* Defined in shim.c. */
uint32_t shim_dispatch(int index, const uint32_t *args, int nargs, uint32_t fallback);
/* _proxywasm_host.enable_callback(name): from now on the callback `name`, which
   the plugin left to the host at start, enters Python (dispatcher.<name>). */
PyObject *shim_enable_callback(PyObject *self, PyObject *name);
/* _proxywasm_host.enable_callback_once(name, context_id): the next call of the
   callback `name` (left to the host) for that context enters Python, once;
   forgotten when the context is deleted. */
PyObject *shim_enable_callback_once(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
/* _proxywasm_host.wait_for_body(context_id, limit): the stream's request body
   chunks that are not the last are answered StopIterationAndBuffer in C while
   the body is at most `limit` bytes; the last one (or a larger body) enters
   Python. */
PyObject *shim_wait_for_body(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
/* _proxywasm_host.enable_callback_for(name, context_id): every later call of the
   callback `name` (left to the host) for that context enters Python, until the
   context is deleted. */
PyObject *shim_enable_callback_for(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
int shim_arity(const char *name, Py_ssize_t expected, Py_ssize_t got);
int shim_u32(PyObject *obj, uint32_t *out);
int shim_i32(PyObject *obj, int32_t *out);
int shim_u64(PyObject *obj, uint64_t *out);
int shim_i64(PyObject *obj, int64_t *out);
int shim_in(PyObject *obj, const char **data, size_t *size);
PyObject *shim_take_bytes(char *data, size_t size);

#endif
