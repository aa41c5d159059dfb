/* Optional accelerator for the audit log's hashing loops (webhook/audit/tiles.py).
 *
 * RFC 9162 leaf hashes SHA-256(0x00 || entry) and complete-subtree folds SHA-256(0x01 || l || r),
 * with the GIL released while hashing, so verify and the writer's staging are not bound to
 * one Python-level call per hash. tiles.py holds the pure-Python reference these must equal
 * (tests/audit/test_tilehash.py compares both); any malformed input makes scan_bundle return
 * None, and the Python code then raises its own exact error. split_bundle (no hashing) splits
 * a bundle for verify's record-check workers, with the same rule for malformed input.
 * write_group is the writer's file work for one group commit (store.py), in one call that
 * holds no GIL, so that the worker thread running it never waits on the event loop's thread.
 */
#define PY_SSIZE_T_CLEAN
#define OPENSSL_SUPPRESS_DEPRECATED
#include <Python.h>
#include <openssl/sha.h>
#include <string.h>
#include <time.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

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

/* envelopes(kinds, bodies, times_ns, tail) -> list of records, or None to let records.py's
 * Python loop do it (a time before 1970 or past 64-bit nanoseconds). Each record is
 * '{"content":' body kind 'YYYY-MM-DDTHH:MM:SS.uuuuuu' tail, where kind is the envelope's
 * ',"kind":"<kind>","time":"' and tail 'Z","writer":"<writer>"}'; a None kind passes its
 * body through (an entry encoded already). records.GroupEncoder is the reference. */
static PyObject *envelopes(PyObject *self, PyObject *args) {
    PyObject *kinds_arg, *bodies_arg, *times_arg;
    Py_buffer tail;
    if (!PyArg_ParseTuple(args, "OOOy*", &kinds_arg, &bodies_arg, &times_arg, &tail)) return NULL;
    PyObject *kinds = PySequence_Fast(kinds_arg, "kinds must be a sequence");
    PyObject *bodies = kinds ? PySequence_Fast(bodies_arg, "bodies must be a sequence") : NULL;
    PyObject *times = bodies ? PySequence_Fast(times_arg, "times must be a sequence") : NULL;
    PyObject *out = NULL;
    if (times == NULL) goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(kinds);
    if (PySequence_Fast_GET_SIZE(bodies) != n || PySequence_Fast_GET_SIZE(times) != n) {
        PyErr_SetString(PyExc_ValueError, "kinds, bodies and times differ in length");
        goto done;
    }
    out = PyList_New(n);
    if (out == NULL) goto done;
    long long cached = -1;
    char stamp[32];
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *kind = PySequence_Fast_GET_ITEM(kinds, i);
        PyObject *body = PySequence_Fast_GET_ITEM(bodies, i);
        if (!PyBytes_CheckExact(body) || (kind != Py_None && !PyBytes_CheckExact(kind))) {
            PyErr_SetString(PyExc_TypeError, "kinds and bodies must be bytes (a kind may be None)");
            Py_CLEAR(out);
            goto done;
        }
        if (kind == Py_None) {
            Py_INCREF(body);
            PyList_SET_ITEM(out, i, body);
            continue;
        }
        int overflow = 0;
        long long ns = PyLong_AsLongLongAndOverflow(PySequence_Fast_GET_ITEM(times, i), &overflow);
        if (ns == -1 && PyErr_Occurred()) {
            Py_CLEAR(out);
            goto done;
        }
        if (overflow) goto fallback;
        if (ns < 0) goto fallback;
        long long us = ns / 1000, second = us / 1000000, micro = us % 1000000;
        if (second != cached) {
            time_t t = (time_t)second;
            struct tm tm;
            if (gmtime_r(&t, &tm) == NULL || tm.tm_year + 1900 > 9999) goto fallback;
            snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
            cached = second;
        }
        static const char head[] = "{\"content\":";
        const Py_ssize_t hl = (Py_ssize_t)sizeof(head) - 1, bl = PyBytes_GET_SIZE(body), kl = PyBytes_GET_SIZE(kind);
        PyObject *rec = PyBytes_FromStringAndSize(NULL, hl + bl + kl + 20 + 6 + tail.len);
        if (rec == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        char *d = PyBytes_AS_STRING(rec);
        memcpy(d, head, (size_t)hl);
        d += hl;
        memcpy(d, PyBytes_AS_STRING(body), (size_t)bl);
        d += bl;
        memcpy(d, PyBytes_AS_STRING(kind), (size_t)kl);
        d += kl;
        memcpy(d, stamp, 20);
        d += 20;
        for (int k = 5; k >= 0; k--, micro /= 10) d[k] = (char)('0' + micro % 10);
        d += 6;
        memcpy(d, tail.buf, (size_t)tail.len);
        PyList_SET_ITEM(out, i, rec);
    }
    goto done;
fallback:
    Py_CLEAR(out);
    out = Py_NewRef(Py_None);
done:
    Py_XDECREF(kinds);
    Py_XDECREF(bodies);
    Py_XDECREF(times);
    PyBuffer_Release(&tail);
    return out;
}

/* bundle(entries) -> the entries each prefixed by its 2-byte big-endian length (an entry
 * bundle's body, tlog-tiles); ValueError for an entry longer than 65535 bytes. */
static PyObject *bundle(PyObject *self, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "entries must be a sequence of bytes");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), total = 0;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyBytes_CheckExact(items[i])) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_TypeError, "entries must be bytes");
            return NULL;
        }
        if (PyBytes_GET_SIZE(items[i]) > 0xFFFF) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "an entry is longer than 65535 bytes");
            return NULL;
        }
        total += 2 + PyBytes_GET_SIZE(items[i]);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out != NULL) {
        unsigned char *d = (unsigned char *)PyBytes_AS_STRING(out);
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t len = PyBytes_GET_SIZE(items[i]);
            d[0] = (unsigned char)(len >> 8);
            d[1] = (unsigned char)(len & 0xFF);
            memcpy(d + 2, PyBytes_AS_STRING(items[i]), (size_t)len);
            d += 2 + len;
        }
    }
    Py_DECREF(seq);
    return out;
}


/* write_group(paths, blobs, dirs, sync): create each path (new, mode 0444) holding its blob and,
 * with sync, fsync the files and then the directories. One call with the GIL released
 * throughout: a writer thread that needed the GIL between its system calls would wait for the
 * event loop's thread at each one. Raises OSError naming the path. */
static PyObject *write_group(PyObject *self, PyObject *args) {
    PyObject *paths, *blobs, *dirs;
    int sync;
    if (!PyArg_ParseTuple(args, "O!O!O!p", &PyList_Type, &paths, &PyList_Type, &blobs, &PyList_Type, &dirs, &sync))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(paths), nd = PyList_GET_SIZE(dirs);
    if (PyList_GET_SIZE(blobs) != n) {
        PyErr_SetString(PyExc_ValueError, "paths and blobs differ in length");
        return NULL;
    }
    const char **p = PyMem_Calloc(n + nd + 1, sizeof(char *));
    const char **b = PyMem_Calloc(n + 1, sizeof(char *));
    Py_ssize_t *len = PyMem_Calloc(n + 1, sizeof(Py_ssize_t));
    int *fds = PyMem_Calloc(n + nd + 1, sizeof(int));
    if (!p || !b || !len || !fds) {
        PyMem_Free(p); PyMem_Free(b); PyMem_Free(len); PyMem_Free(fds);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n + nd; i++) {
        PyObject *o = i < n ? PyList_GET_ITEM(paths, i) : PyList_GET_ITEM(dirs, i - n);
        if (!PyBytes_Check(o) || (i < n && !PyBytes_Check(PyList_GET_ITEM(blobs, i)))) {
            PyMem_Free(p); PyMem_Free(b); PyMem_Free(len); PyMem_Free(fds);
            PyErr_SetString(PyExc_TypeError, "paths, blobs and dirs must be bytes");
            return NULL;
        }
        p[i] = PyBytes_AS_STRING(o);
        if ((Py_ssize_t)strlen(p[i]) != PyBytes_GET_SIZE(o)) { /* as os.open: never a shorter path */
            PyMem_Free(p); PyMem_Free(b); PyMem_Free(len); PyMem_Free(fds);
            PyErr_SetString(PyExc_ValueError, "embedded null byte in a path");
            return NULL;
        }
        if (i < n) {
            b[i] = PyBytes_AS_STRING(PyList_GET_ITEM(blobs, i));
            len[i] = PyBytes_GET_SIZE(PyList_GET_ITEM(blobs, i));
        }
        fds[i] = -1;
    }
    Py_ssize_t failed = -1;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n && failed < 0; i++) {
        int fd = open(p[i], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0444);
        if (fd < 0 && errno == EACCES && unlink(p[i]) == 0) /* a read-only leftover (not as root) */
            fd = open(p[i], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0444);
        if (fd < 0) { failed = i; err = errno; break; }
        fds[i] = fd;
        for (Py_ssize_t done = 0; done < len[i];) {
            ssize_t w = write(fd, b[i] + done, (size_t)(len[i] - done));
            if (w < 0) {
                if (errno == EINTR) continue;
                failed = i; err = errno; break;
            }
            done += w;
        }
    }
#ifdef SYNC_FILE_RANGE_WRITE
    /* Start every file's writeback before waiting on any: the fsyncs then overlap their data. */
    for (Py_ssize_t i = 0; sync && failed < 0 && i < n; i++)
        (void)sync_file_range(fds[i], 0, 0, SYNC_FILE_RANGE_WRITE);
#endif
    for (Py_ssize_t i = 0; sync && failed < 0 && i < n; i++)
        if (fsync(fds[i]) != 0) { failed = i; err = errno; }
    for (Py_ssize_t i = n; sync && failed < 0 && i < n + nd; i++) {
        int fd = open(p[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0 || fsync(fd) != 0) { failed = i; err = errno; }
        if (fd >= 0) close(fd);
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (fds[i] >= 0) close(fds[i]);
    Py_END_ALLOW_THREADS
    PyObject *result = Py_None;
    if (failed >= 0) {
        errno = err;
        PyObject *name = PyUnicode_DecodeFSDefault(p[failed]); /* as os.open names it: a str */
        if (name) {
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
            Py_DECREF(name);
        }
        result = NULL;
    }
    PyMem_Free(p); PyMem_Free(b); PyMem_Free(len); PyMem_Free(fds);
    Py_XINCREF(result);
    return result;
}

static PyMethodDef methods[] = {
    {"scan_bundle", scan_bundle, METH_O, "Spans and leaf hashes of an entry bundle, or None if malformed."},
    {"split_bundle", split_bundle, METH_O, "The entries of an entry bundle, or None if malformed."},
    {"leaf_hashes", leaf_hashes, METH_O, "Concatenated leaf hashes of a sequence of entries."},
    {"content_floats", content_floats, METH_O, "Whether a record content holds a float token outside strings."},
    {"envelopes", envelopes, METH_VARARGS, "Audit records from content JSON, kind, time and writer."},
    {"bundle", bundle, METH_O, "Entries each prefixed by its 2-byte length."},
    {"write_group", write_group, METH_VARARGS, "Create and write files (and fsync them and directories), GIL released."},
    {"fold", fold, METH_O, "Root of the complete subtree over a power of two of hashes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tilehash", NULL, -1, methods};

PyMODINIT_FUNC PyInit__tilehash(void) { return PyModule_Create(&module); }
