/* Optional accelerator for the audit log's hashing loops (webhook/audit/tiles.py).
 *
 * RFC 9162 leaf hashes SHA-256(0x00 || entry) and complete-subtree folds SHA-256(0x01 || l || r),
 * with the GIL released while hashing, so verify and the writer's staging are not bound to
 * one Python-level call per hash. tiles.py holds the pure-Python reference these must equal
 * (tests/audit/test_tilehash.py compares both); any malformed input makes scan_bundle return
 * None, and the Python code then raises its own exact error. split_bundle (no hashing) splits
 * a bundle for verify's record-check workers, with the same rule for malformed input.
 */
#define PY_SSIZE_T_CLEAN
#define OPENSSL_SUPPRESS_DEPRECATED
#include <Python.h>
#include <openssl/sha.h>
#include <string.h>

static void leaf(const unsigned char *p, size_t n, unsigned char *out) {
    static const unsigned char zero = 0;
    SHA256_CTX c;
    SHA256_Init(&c);
    SHA256_Update(&c, &zero, 1);
    SHA256_Update(&c, p, n);
    SHA256_Final(out, &c);
}

/* How many 2-byte-length-prefixed entries fill d[0..end) exactly; -1 if they do not. */
static Py_ssize_t count_entries(const unsigned char *d, Py_ssize_t end) {
    Py_ssize_t pos = 0, count = 0;
    while (pos < end) {
        if (pos + 2 > end) return -1;
        Py_ssize_t n = (d[pos] << 8) | d[pos + 1];
        if (pos + 2 + n > end) return -1;
        pos += 2 + n;
        count++;
    }
    return count;
}

/* scan_bundle(data) -> (spans, hashes) or None if the bundle is malformed. */
static PyObject *scan_bundle(PyObject *self, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *d = b.buf;
    Py_ssize_t pos, count = count_entries(d, b.len);
    if (count < 0) goto malformed;
    PyObject *hashes = PyBytes_FromStringAndSize(NULL, count * 32);
    PyObject *spans = PyList_New(count);
    if (hashes == NULL || spans == NULL) {
        Py_XDECREF(hashes);
        Py_XDECREF(spans);
        PyBuffer_Release(&b);
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(hashes);
    Py_BEGIN_ALLOW_THREADS
    pos = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t n = (d[pos] << 8) | d[pos + 1];
        leaf(d + pos + 2, (size_t)n, out + 32 * i);
        pos += 2 + n;
    }
    Py_END_ALLOW_THREADS
    pos = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t n = (d[pos] << 8) | d[pos + 1];
        PyObject *t = Py_BuildValue("(nn)", pos + 2, n);
        if (t == NULL) {
            Py_DECREF(hashes);
            Py_DECREF(spans);
            PyBuffer_Release(&b);
            return NULL;
        }
        PyList_SET_ITEM(spans, i, t);
        pos += 2 + n;
    }
    PyBuffer_Release(&b);
    PyObject *r = PyTuple_Pack(2, spans, hashes);
    Py_DECREF(spans);
    Py_DECREF(hashes);
    return r;
malformed:
    PyBuffer_Release(&b);
    Py_RETURN_NONE;
}

/* split_bundle(data) -> list of the entries (bytes), or None if the bundle is malformed. */
static PyObject *split_bundle(PyObject *self, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *d = b.buf;
    Py_ssize_t pos, count = count_entries(d, b.len);
    if (count < 0) goto malformed;
    PyObject *out = PyList_New(count);
    if (out == NULL) {
        PyBuffer_Release(&b);
        return NULL;
    }
    pos = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t n = (d[pos] << 8) | d[pos + 1];
        PyObject *e = PyBytes_FromStringAndSize((const char *)d + pos + 2, n);
        if (e == NULL) {
            Py_DECREF(out);
            PyBuffer_Release(&b);
            return NULL;
        }
        PyList_SET_ITEM(out, i, e);
        pos += 2 + n;
    }
    PyBuffer_Release(&b);
    return out;
malformed:
    PyBuffer_Release(&b);
    Py_RETURN_NONE;
}

/* leaf_hashes(entries: list[bytes]) -> concatenated leaf hashes. */
static PyObject *leaf_hashes(PyObject *self, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "entries must be a sequence of bytes");
    if (seq == NULL) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!PyBytes_CheckExact(items[i])) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_TypeError, "entries must be bytes");
            return NULL;
        }
    }
    PyObject *hashes = PyBytes_FromStringAndSize(NULL, count * 32);
    if (hashes == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(hashes);
    /* The list is not ours: another thread could change it while the GIL is released, so hash
       with the GIL held but in one C loop (the entries are small: no gain from releasing). */
    for (Py_ssize_t i = 0; i < count; i++)
        leaf((const unsigned char *)PyBytes_AS_STRING(items[i]), (size_t)PyBytes_GET_SIZE(items[i]), out + 32 * i);
    Py_DECREF(seq);
    return hashes;
}

/* fold(tile) -> root of the complete subtree over its hashes (a power of two of them). */
static PyObject *fold(PyObject *self, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    Py_ssize_t n = b.len / 32;
    if (b.len % 32 || n == 0 || (n & (n - 1))) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "fold needs a power of two of 32-byte hashes");
        return NULL;
    }
    unsigned char *work = PyMem_Malloc((size_t)b.len);
    if (work == NULL) {
        PyBuffer_Release(&b);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    memcpy(work, b.buf, (size_t)b.len);
    static const unsigned char one = 1;
    while (n > 1) {
        for (Py_ssize_t i = 0; i < n / 2; i++) {
            SHA256_CTX c;
            SHA256_Init(&c);
            SHA256_Update(&c, &one, 1);
            SHA256_Update(&c, work + 64 * i, 64);
            SHA256_Final(work + 32 * i, &c);
        }
        n /= 2;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    PyObject *r = PyBytes_FromStringAndSize((const char *)work, 32);
    PyMem_Free(work);
    return r;
}

/* content_floats(entries) -> whether any entry's content holds a number with a fraction or an
 * exponent outside strings. The content is what lies between the record's '{"content":' and
 * its last ',"kind":' (as records.py reads it); strings are skipped by their quotes and
 * backslash escapes. Only a verdict "no float anywhere" lets records.py take its fast path. */
static PyObject *content_floats(PyObject *self, PyObject *arg) {
    static const char kind[] = ",\"kind\":";
    const Py_ssize_t klen = (Py_ssize_t)sizeof(kind) - 1, at = 11; /* len('{"content":') */
    PyObject *seq = PySequence_Fast(arg, "entries must be a sequence of bytes");
    if (seq == NULL) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    int found = 0;
    for (Py_ssize_t i = 0; i < count && !found; i++) {
        if (!PyBytes_CheckExact(items[i])) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_TypeError, "entries must be bytes");
            return NULL;
        }
        const char *d = PyBytes_AS_STRING(items[i]);
        Py_ssize_t end = PyBytes_GET_SIZE(items[i]) - klen;
        while (end >= 0 && memcmp(d + end, kind, (size_t)klen) != 0) end--;
        if (end < at) { /* no content where records.py looks: let the exact path decide */
            found = 1;
            break;
        }
        int in_string = 0;
        for (Py_ssize_t p = at; p < end; p++) {
            char c = d[p];
            if (in_string) {
                if (c == '\\') p++;
                else if (c == '"') in_string = 0;
                continue;
            }
            if (c == '"') {
                in_string = 1;
            } else if (c == '-' || (c >= '0' && c <= '9')) {
                while (p < end && (d[p] == '-' || d[p] == '+' || (d[p] >= '0' && d[p] <= '9'))) p++;
                if (p < end && (d[p] == '.' || d[p] == 'e' || d[p] == 'E')) {
                    found = 1;
                    break;
                }
                p--;
            }
        }
    }
    Py_DECREF(seq);
    return PyBool_FromLong(found);
}

static PyMethodDef methods[] = {
    {"scan_bundle", scan_bundle, METH_O, "Spans and leaf hashes of an entry bundle, or None if malformed."},
    {"split_bundle", split_bundle, METH_O, "The entries of an entry bundle, or None if malformed."},
    {"leaf_hashes", leaf_hashes, METH_O, "Concatenated leaf hashes of a sequence of entries."},
    {"content_floats", content_floats, METH_O, "Whether a record content holds a float token outside strings."},
    {"fold", fold, METH_O, "Root of the complete subtree over a power of two of hashes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tilehash", NULL, -1, methods};

PyMODINIT_FUNC PyInit__tilehash(void) { return PyModule_Create(&module); }
