/* The literal scan of router/sharding/template.py in C: for every simple-protocol statement of
 * a sharded database, the text with its integer and standard-string literals as $1..$n.
 *
 * It walks an ASCII text exactly as template.py's regular expression does (the comments name
 * its alternatives) and answers what its loop answers; a text with any other character is
 * left to the Python twin (Unicode's \w and \d are not worth repeating here). The differential
 * test (tests/test_sharding_template.py) holds the two to the same answers.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static int is_word(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* str.isspace() over ASCII: what rstrip() strips. */
static int is_space(unsigned char c) { return (c >= 9 && c <= 13) || (c >= 28 && c <= 32); }

/* A quoted run from s[p] (the quote q): `q(?:[^q]|qq)*q` with the regex's backtracking. The
 * end (past the closing quote), or -1. */
static Py_ssize_t quoted_end(const unsigned char *s, Py_ssize_t n, Py_ssize_t p, unsigned char q) {
    Py_ssize_t i = p + 1, last_pair = -1;
    while (i < n) {
        if (s[i] != q) {
            i++;
        } else if (i + 1 < n && s[i + 1] == q) {
            last_pair = i;
            i += 2;
        } else {
            return i + 1;
        }
    }
    /* Unclosed: the regex gives back pairs until a quote can close it. */
    return last_pair >= 0 ? last_pair + 1 : -1;
}

static Py_ssize_t digits_end(const unsigned char *s, Py_ssize_t n, Py_ssize_t i) {
    while (i < n && is_digit(s[i]))
        i++;
    return i;
}

/* `\d*\.?\d+(?:[eE][+-]?\d+)?\.?` from p: its end, or -1. */
static Py_ssize_t number_end(const unsigned char *s, Py_ssize_t n, Py_ssize_t p) {
    Py_ssize_t run = digits_end(s, n, p), i;
    if (run < n && s[run] == '.' && run + 1 < n && is_digit(s[run + 1]))
        i = digits_end(s, n, run + 1);
    else if (run > p)
        i = run;
    else
        return -1;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        Py_ssize_t j = i + 1;
        if (j < n && (s[j] == '+' || s[j] == '-'))
            j++;
        if (j < n && is_digit(s[j]))
            i = digits_end(s, n, j);
    }
    if (i < n && s[i] == '.')
        i++;
    return i;
}

typedef struct {
    char *buf;
    Py_ssize_t len, cap;
} Out;

static int out_put(Out *out, const char *data, Py_ssize_t len) {
    if (out->len + len > out->cap) {
        Py_ssize_t cap = (out->len + len) * 2 + 64;
        char *grown = PyMem_Realloc(out->buf, cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        out->buf = grown;
        out->cap = cap;
    }
    memcpy(out->buf + out->len, data, len);
    out->len += len;
    return 0;
}

/* A standard string's value: between the quotes, '' read as '. */
static PyObject *string_value(const unsigned char *s, Py_ssize_t start, Py_ssize_t end) {
    PyObject *value = PyBytes_FromStringAndSize(NULL, end - start);
    if (value == NULL)
        return NULL;
    char *v = PyBytes_AS_STRING(value);
    Py_ssize_t len = 0;
    for (Py_ssize_t i = start; i < end; i++) {
        v[len++] = (char)s[i];
        if (s[i] == '\'' && i + 1 < end && s[i + 1] == '\'')
            i++;
    }
    if (len != end - start && _PyBytes_Resize(&value, len) < 0)
        return NULL;
    return value;
}

/* An integer's value: its digits s[p:run], with a minus sign when it starts before them. */
static PyObject *int_value(const unsigned char *s, Py_ssize_t start, Py_ssize_t p, Py_ssize_t run) {
    PyObject *value = PyBytes_FromStringAndSize(NULL, (start != p) + run - p);
    if (value == NULL)
        return NULL;
    char *v = PyBytes_AS_STRING(value);
    if (start != p)
        *v++ = '-';
    memcpy(v, s + p, run - p);
    return value;
}

/* Append `value` (a new reference, or NULL after an error) to `values`; -1 on error. */
static int take(PyObject *values, PyObject *value) {
    if (value == NULL)
        return -1;
    int failed = PyList_Append(values, value);
    Py_DECREF(value);
    return failed;
}

/* Where an integer literal at `start` begins once a sign that makes it negative is counted
 * (template.py's _signed): `= -3` is -3, `a - 3` subtracts 3. */
static Py_ssize_t signed_start(const unsigned char *s, Py_ssize_t last, Py_ssize_t start) {
    Py_ssize_t i = start;
    while (i > last && is_space(s[i - 1]))
        i--;
    if (i == last || s[i - 1] != '-')
        return start;
    Py_ssize_t minus = i - 1, j = minus;
    while (j > last && is_space(s[j - 1]))
        j--;
    if (j == last)
        return start;
    return s[j - 1] != '\0' && strchr("=<>(,[", s[j - 1]) != NULL ? minus : start;
}

static PyObject *scan(const unsigned char *s, Py_ssize_t n) {
    PyObject *values = PyList_New(0), *answer = NULL;
    Out out = {NULL, 0, 0};
    Py_ssize_t p = 0, last = 0;
    if (values == NULL)
        return NULL;
    while (p < n) {
        unsigned char c = s[p];
        Py_ssize_t end;
        if (c == '-' && p + 1 < n && s[p + 1] == '-') { /* 1 a line comment: kept */
            const unsigned char *nl = memchr(s + p, '\n', n - p);
            p = nl == NULL ? n : nl - s;
            continue;
        }
        if (c == '/' && p + 1 < n && s[p + 1] == '*') { /* 2 a block comment: kept */
            const unsigned char *close = NULL;
            for (Py_ssize_t i = p + 2; i + 1 < n; i++)
                if (s[i] == '*' && s[i + 1] == '/') {
                    close = s + i;
                    break;
                }
            if (close != NULL) {
                p = close - s + 2;
                continue;
            }
            p++;
            continue;
        }
        if (c == '"') { /* 3 a quoted identifier: kept */
            end = quoted_end(s, n, p, '"');
            p = end >= 0 ? end : p + 1;
            continue;
        }
        if (c == '\'') {
            if (p > 0 && (is_word(s[p - 1]) || s[p - 1] == '&')) { /* 4 E'..', U&'..': give up */
                answer = Py_NewRef(Py_None);
                goto done;
            }
            end = quoted_end(s, n, p, '\''); /* 5 a standard string: taken */
            if (end < 0) {
                p++;
                continue;
            }
            if (take(values, string_value(s, p + 1, end - 1)) < 0 ||
                out_put(&out, (const char *)s + last, p - last) < 0)
                goto done;
            last = end;
        } else if (is_digit(c) || c == '.') {
            int after_word = p > 0 && is_word(s[p - 1]);
            int after_dot = p > 0 && s[p - 1] == '.';
            Py_ssize_t run = digits_end(s, n, p);
            if (run > p && !after_word && !after_dot && (run == n || !(is_word(s[run]) || s[run] == '.'))) {
                /* 6 an integer: taken */
                Py_ssize_t start = signed_start(s, last, p);
                if (take(values, int_value(s, start, p, run)) < 0 ||
                    out_put(&out, (const char *)s + last, start - last) < 0)
                    goto done;
                end = run;
                last = end;
            } else {
                end = after_word ? -1 : number_end(s, n, p); /* 7 another number: kept */
                p = end >= 0 ? end : p + 1;
                continue;
            }
        } else {
            p++;
            continue;
        }
        char param[24];
        int len = snprintf(param, sizeof param, "$%zd", PyList_GET_SIZE(values));
        if (out_put(&out, param, len) < 0)
            goto done;
        p = end;
    }
    if (PyList_GET_SIZE(values) == 0) {
        answer = Py_NewRef(Py_None);
        goto done;
    }
    if (out_put(&out, (const char *)s + last, n - last) < 0)
        goto done;
    {
        PyObject *text = PyUnicode_DecodeASCII(out.buf, out.len, NULL);
        PyObject *tuple = PyList_AsTuple(values);
        if (text != NULL && tuple != NULL)
            answer = PyTuple_Pack(2, text, tuple);
        Py_XDECREF(text);
        Py_XDECREF(tuple);
    }
done:
    PyMem_Free(out.buf);
    Py_DECREF(values);
    return answer;
}

/* template_scan(sql) -> (shape, values) | None, or NotImplemented for a non-ASCII text. */
static PyObject *template_scan(PyObject *self, PyObject *sql) {
    if (!PyUnicode_Check(sql)) {
        PyErr_SetString(PyExc_TypeError, "template_scan: a str is needed");
        return NULL;
    }
    if (!PyUnicode_IS_ASCII(sql))
        return Py_NewRef(Py_NotImplemented);
    return scan((const unsigned char *)PyUnicode_DATA(sql), PyUnicode_GET_LENGTH(sql));
}

static int has(const unsigned char *s, Py_ssize_t n, const char *what) {
    Py_ssize_t len = (Py_ssize_t)strlen(what);
    for (Py_ssize_t i = 0; i + len <= n; i++)
        if (s[i] == (unsigned char)what[0] && memcmp(s + i, what, len) == 0)
            return 1;
    return 0;
}

/* Does an ASCII text start, past spaces, with a DML keyword (template.py's _DML)? -1: it
 * starts with a comment, which the regular expression reads in ways not repeated here. */
static int starts_dml(const unsigned char *s, Py_ssize_t n) {
    static const char *words[] = {"select", "update", "delete", "insert", "with"};
    Py_ssize_t i = 0;
    while (i < n && is_space(s[i]))
        i++;
    if (i + 1 < n && s[i] == '/' && s[i + 1] == '*')
        return -1;
    for (size_t w = 0; w < sizeof words / sizeof *words; w++) {
        Py_ssize_t len = (Py_ssize_t)strlen(words[w]), k = 0;
        if (i + len > n)
            continue;
        while (k < len && (s[i + k] | 0x20) == words[w][k])
            k++;
        if (k == len && (i + len == n || !is_word(s[i + len])))
            return 1;
    }
    return 0;
}

/* query_shape(raw) -> (shape, values) | None | NotImplemented: template.query_shape_py's twin. */
static PyObject *query_shape(PyObject *self, PyObject *raw) {
    (void)self;
    if (!PyBytes_Check(raw)) {
        PyErr_SetString(PyExc_TypeError, "query_shape: bytes are needed");
        return NULL;
    }
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    if (n < 6 || s[0] != 'Q' || s[n - 1] != 0)
        return Py_NewRef(Py_None);
    uint32_t length = ((uint32_t)s[1] << 24) | ((uint32_t)s[2] << 16) | ((uint32_t)s[3] << 8) | s[4];
    if ((Py_ssize_t)length + 1 != n)
        return Py_NewRef(Py_None);
    const unsigned char *body = s + 5;
    Py_ssize_t len = n - 6;
    for (Py_ssize_t i = 0; i < len; i++) {
        if (body[i] == 0 || body[i] == '$')
            return Py_NewRef(Py_None);
        if (body[i] > 127)
            return Py_NewRef(Py_NotImplemented);
    }
    if (has(body, len, "pgdog") || has(body, len, "PGDOG") || has(body, len, "unique_id") ||
        has(body, len, "UNIQUE_ID"))
        return Py_NewRef(Py_None);
    int dml = starts_dml(body, len);
    if (dml < 0)
        return Py_NewRef(Py_NotImplemented);
    if (!dml)
        return Py_NewRef(Py_None);
    return scan(body, len);
}

PyMethodDef template_methods[] = {
    {"query_shape", query_shape, METH_O,
     "A whole Query message's (shape, values) when it is a candidate for the sharded relay's "
     "plain path, None when not, NotImplemented when the Python twin must tell."},
    {"template_scan", template_scan, METH_O,
     "(text with its literals as $1..$n, their values) of an ASCII text, None if it has none or "
     "cannot be scanned, NotImplemented for other texts (template.py's twin)."},
    {NULL, NULL, 0, NULL},
};
