#include "fast.h"

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

/* (clock, size) of `address` (a new reference to a 2-tuple), read once per lookup. */
static PyObject *known_of(lookup_t *l, PyObject *address) {
    PyObject *pair = PyDict_GetItemWithError(l->known, address);
    if (pair != NULL) return Py_NewRef(pair);
    if (PyErr_Occurred()) return NULL;
    Py_ssize_t len;
    const char *text = PyUnicode_AsUTF8AndSize(address, &len);
    char *raw;
    size_t raw_len;
    if (text == NULL || fast_read_shared(l->clock_prefix, l->clock_prefix_len, text, (size_t)len,
                                    &raw, &raw_len) < 0)
        return NULL;
    int64_t clock = 0;
    int bad = raw != NULL && raw_len > 0 && fast_parse_int(raw, raw_len, &clock) < 0;
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
        if (fast_parse_int(part[1], len[1], &entry->expiry) < 0 ||
            fast_parse_int(part[2], len[2], &entry->stamp) < 0) {
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
        fast_read_shared(l->slot_prefix, l->slot_prefix_len, slot, (size_t)slot_len, &raw, &raw_len) < 0)
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

PyObject *fast_prefix_matches(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
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

/* prefix_record(slot_prefix, capacity, hashes, held, address, expiry, stamp,
                 now_s, holders) -> None
   EmbeddedPrefixIndex.reference_write_blocks: from block `held` on, each block's
   slot becomes "<hash> <address> <expiry> <stamp>" followed by up to
   holders - 1 other live holders it had, as stored. */
PyObject *fast_prefix_record(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
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
            fast_read_shared(prefix, (size_t)prefix_len, slot, (size_t)slot_len, &raw, &raw_len) < 0)
            goto failed;
        int bad = raw != NULL && slot_entries(raw, raw_len, hash, hash_len, &entries, &n) < 0;
        value.len = key.len = 0;
        bad = bad || fast_text_put(&value, hash, (size_t)hash_len) < 0 ||
              fast_text_put(&value, mine, (size_t)mine_len) < 0;
        long kept = 0;
        for (size_t e = 0; !bad && e < n && kept < holders - 1; e++) {
            if ((entries[e].address_len == (size_t)address_len &&
                 memcmp(entries[e].address, address, (size_t)address_len) == 0) ||
                entries[e].expiry <= now_s)
                continue;
            bad = fast_text_put(&value, " ", 1) < 0 ||
                  fast_text_put(&value, entries[e].text, entries[e].text_len) < 0;
            kept++;
        }
        PyMem_Free(entries);
        free(raw);
        if (bad || fast_text_put(&key, prefix, (size_t)prefix_len) < 0 ||
            fast_text_put(&key, slot, (size_t)slot_len) < 0)
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
