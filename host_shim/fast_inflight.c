#include "fast.h"

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
    if (!*bad && fast_parse_int(start, (size_t)(stop - start), &v) < 0) *bad = 1;
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

/* Adds `n` slots' requests and work to the totals. */
static int totals_add(PyObject *counts, PyObject *work, const slot_t *slots, int n) {
    for (int k = 0; k < n; k++) {
        if (total_add(counts, slots[k].address, slots[k].len, slots[k].requests) < 0 ||
            total_add(work, slots[k].address, slots[k].len, slots[k].work) < 0)
            return -1;
    }
    return 0;
}

/* The line of this VM: "<vm> <until>( <address> <requests> <work>)*". */
static int put_mine(text_t *t, const char *vm, size_t vm_len, int64_t until, const mine_t *m) {
    if ((t->len && fast_text_put(t, "\n", 1) < 0) || fast_text_put(t, vm, vm_len) < 0 ||
        fast_text_int(t, until) < 0)
        return -1;
    for (int i = 0; i < m->n; i++) {
        if (fast_text_put(t, " ", 1) < 0 || fast_text_put(t, m->slots[i].address, m->slots[i].len) < 0 ||
            fast_text_int(t, m->slots[i].requests) < 0 || fast_text_int(t, m->slots[i].work) < 0)
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
            if ((i == mine_at && totals_add(counts, work, m.slots, m.n) < 0) ||
                (i != mine_at && r.lines[i].until > now_ms &&
                 totals_add(counts, work, &r.slots[r.lines[i].first], r.lines[i].count) < 0))
                goto done;
        }
        if (mine_at < 0 && totals_add(counts, work, m.slots, m.n) < 0)
            goto done; /* a VM new to the record comes last */
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
            if ((out->len && fast_text_put(out, "\n", 1) < 0) ||
                fast_text_put(out, r.lines[i].text, r.lines[i].text_len) < 0)
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

PyObject *fast_inflight_update(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
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
