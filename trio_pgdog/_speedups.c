/* trio_pgdog._speedups: the hook path's per-statement work in C.
 *
 * With a hook watching statements, every Query and every Bind is read and shown to the hooks
 * before it goes on. In Python that costs several microseconds per statement on its own;
 * these three functions do the commonest part of it:
 *
 *   one_execution(data)   what units.one_execution does: read one [Parse] Bind [Describe]
 *                         Execute Sync chunk in one pass
 *   bind_parameters(rest) what protocol/results.bind_parameters does: a Bind's values
 *   route_query(...)      a native plugin's pgdog_route_query, called without ctypes (which
 *                         spends microseconds building PgdogInput field by field and boxing
 *                         the returned PgdogOutput)
 *
 * Each has a pure-Python twin with the same contract, used where this module is not built
 * (setup.py builds it as an optional extension) or when TRIO_PGDOG_SPEEDUPS=0; the tests
 * check that both agree. The plugin struct layouts come from the public header itself
 * (hooks/include/pgdog_plugin.h), so they cannot drift from what plugins compile against.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "pgdog_plugin.h"

/* --- reading client messages ------------------------------------------------------- */

static uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static int16_t be16(const unsigned char *p) { return (int16_t)(((uint16_t)p[0] << 8) | p[1]); }

/* The NUL-terminated name at body[*pos], as bytes; *pos moves past the NUL. NULL (no
 * exception set) when there is no NUL. */
static PyObject *take_name(const char *body, Py_ssize_t len, Py_ssize_t *pos) {
    const char *start = body + *pos;
    const char *nul = memchr(start, 0, (size_t)(len - *pos));
    if (nul == NULL)
        return NULL;
    *pos += (nul - start) + 1;
    return PyBytes_FromStringAndSize(start, nul - start);
}

/* one_execution(data) -> (parse_name, sql, parse_rest, portal, statement, bind_rest) | None
 *
 * `data` must be exactly [Parse] Bind [Describe] Execute Sync. The Parse fields are None
 * when there is no Parse; sql is decoded as UTF-8 with replacement. None for anything else,
 * including names or a query text without their NUL. */
static PyObject *one_execution(PyObject *self, PyObject *data) {
    (void)self;
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "one_execution takes bytes");
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t end = PyBytes_GET_SIZE(data), pos = 0;
    char kinds[6];
    Py_ssize_t starts[5], ends[5];
    int n = 0;
    while (pos < end) {
        if (n == 5 || pos + 5 > end)
            Py_RETURN_NONE;
        uint32_t length = be32(buf + pos + 1);
        if (length < 4 || length > 0x7FFFFFFF || (Py_ssize_t)length > end - pos - 1)
            Py_RETURN_NONE;
        kinds[n] = (char)buf[pos];
        starts[n] = pos + 5;
        ends[n] = pos + 1 + (Py_ssize_t)length;
        pos = ends[n];
        n++;
    }
    kinds[n] = 0;
    if (strcmp(kinds, "PBDES") && strcmp(kinds, "PBES") && strcmp(kinds, "BDES") && strcmp(kinds, "BES"))
        Py_RETURN_NONE;

    PyObject *parse_name = Py_None, *sql = Py_None, *parse_rest = Py_None;
    Py_INCREF(Py_None); Py_INCREF(Py_None); Py_INCREF(Py_None);
    PyObject *portal = NULL, *statement = NULL, *bind_rest = NULL;
    int b = kinds[0] == 'P';
    if (b) {
        const char *body = (const char *)buf + starts[0];
        Py_ssize_t len = ends[0] - starts[0], p = 0;
        Py_DECREF(Py_None);
        if ((parse_name = take_name(body, len, &p)) == NULL)
            goto none;
        const char *text = body + p, *nul = memchr(text, 0, (size_t)(len - p));
        if (nul == NULL)
            goto none;
        Py_DECREF(Py_None);
        if ((sql = PyUnicode_DecodeUTF8(text, nul - text, "replace")) == NULL)
            goto fail;
        Py_DECREF(Py_None);
        if ((parse_rest = PyBytes_FromStringAndSize(text, len - p)) == NULL)
            goto fail;
    }
    {
        const char *body = (const char *)buf + starts[b];
        Py_ssize_t len = ends[b] - starts[b], p = 0;
        if ((portal = take_name(body, len, &p)) == NULL || (statement = take_name(body, len, &p)) == NULL)
            goto none;
        if ((bind_rest = PyBytes_FromStringAndSize(body + p, len - p)) == NULL)
            goto fail;
    }
    return Py_BuildValue("(NNNNNN)", parse_name, sql, parse_rest, portal, statement, bind_rest);
none:
    if (PyErr_Occurred())
        goto fail;
    Py_XDECREF(parse_name); Py_XDECREF(sql); Py_XDECREF(parse_rest);
    Py_XDECREF(portal); Py_XDECREF(statement);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(parse_name); Py_XDECREF(sql); Py_XDECREF(parse_rest);
    Py_XDECREF(portal); Py_XDECREF(statement);
    return NULL;
}

static PyObject *malformed(const char *what) {
    PyErr_Format(PyExc_ValueError, "malformed Bind message: %s", what);
    return NULL;
}

/* bind_parameters(rest) -> (values, formats): a Bind body after its two names. Values are
 * bytes, or None for a negative length (NULL); formats has one code per value. ValueError
 * when the body is malformed, as PostgreSQL would reject it. */
static PyObject *bind_parameters(PyObject *self, PyObject *rest) {
    (void)self;
    if (!PyBytes_Check(rest)) {
        PyErr_SetString(PyExc_TypeError, "bind_parameters takes bytes");
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(rest);
    Py_ssize_t len = PyBytes_GET_SIZE(rest), pos = 2;
    if (len < 2)
        return malformed("no parameter format count");
    int nformats = be16(buf);
    if (nformats < 0)
        return malformed("negative parameter format count");
    if (len < pos + 2 * (Py_ssize_t)nformats + 2)
        return malformed("the parameter formats run past the message");
    const unsigned char *codes = buf + pos;
    pos += 2 * (Py_ssize_t)nformats;
    int count = be16(buf + pos);
    pos += 2;
    if (count < 0)
        return malformed("negative parameter count");
    if (nformats > 1 && nformats != count)
        return malformed("as many format codes as parameters, one, or none are expected");
    PyObject *values = PyTuple_New(count), *formats = PyTuple_New(count);
    if (values == NULL || formats == NULL)
        goto fail;
    for (int i = 0; i < count; i++) {
        if (len - pos < 4) {
            malformed("a parameter's length runs past the message");
            goto fail;
        }
        int32_t n = (int32_t)be32(buf + pos);
        pos += 4;
        PyObject *value;
        if (n < 0) {
            value = Py_None;
            Py_INCREF(value);
        } else {
            if (n > len - pos) {
                malformed("a parameter runs past the message");
                goto fail;
            }
            if ((value = PyBytes_FromStringAndSize((const char *)buf + pos, n)) == NULL)
                goto fail;
            pos += n;
        }
        PyTuple_SET_ITEM(values, i, value);
        int16_t code = nformats == 0 ? 0 : be16(codes + 2 * (nformats == 1 ? 0 : i));
        PyObject *format = PyLong_FromLong(code);
        if (format == NULL)
            goto fail;
        PyTuple_SET_ITEM(formats, i, format);
    }
    return Py_BuildValue("(NN)", values, formats);
fail:
    Py_XDECREF(values);
    Py_XDECREF(formats);
    return NULL;
}

/* --- calling native plugins ------------------------------------------------------------ */

typedef PgdogOutput (*RouteFn)(PgdogInput);
typedef void (*FreeFn)(PgdogOutput *);

#define STACK_PARAMETERS 16

/* A function pointer from a Python int (the address ctypes reports). */
static void *address(PyObject *obj) {
    void *p = PyLong_AsVoidPtr(obj);
    if (p == NULL && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "NULL function address");
    return p;
}

/* A bytes object's data as a PgdogStr; None is the empty string. */
static int as_str(PyObject *obj, PgdogStr *out) {
    if (obj == Py_None) {
        out->data = NULL;
        out->len = 0;
        return 0;
    }
    if (!PyBytes_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "expected bytes or None, got %.100s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    out->len = (size_t)PyBytes_GET_SIZE(obj);
    out->data = out->len ? PyBytes_AS_STRING(obj) : NULL;
    return 0;
}

/* Bind values (bytes or None) and their formats into `array`. `formats` may be shorter
 * than `values` as in the Bind message: none means all text, one applies to all. */
static int fill_parameters(PyObject *values, PyObject *formats, PgdogParameter *array, Py_ssize_t n) {
    Py_ssize_t nformats = PyTuple_GET_SIZE(formats);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *value = PyTuple_GET_ITEM(values, i);
        PgdogParameter *p = &array[i];
        if (value == Py_None) {
            p->data = NULL;
            p->len = -1;
        } else if (PyBytes_Check(value)) {
            p->data = PyBytes_AS_STRING(value);
            p->len = (int32_t)PyBytes_GET_SIZE(value);
        } else {
            PyErr_SetString(PyExc_TypeError, "a Bind value must be bytes or None");
            return -1;
        }
        PyObject *format = nformats == 0 ? NULL : PyTuple_GET_ITEM(formats, nformats == n ? i : 0);
        long f = format == NULL ? 0 : PyLong_AsLong(format);
        if (f == -1 && PyErr_Occurred())
            return -1;
        p->format = (int16_t)f;
    }
    return 0;
}

/* route_query(route, free, sql, values, formats, database, user, shards, flags, ast)
 *
 *   route, free: addresses of pgdog_route_query and pgdog_output_free (0: not exported)
 *   sql: str; values: tuple of bytes/None; formats: tuple of int; database, user: bytes;
 *   shards: int; flags: bit 0 has_primary, bit 1 has_replicas, bit 2 in_transaction;
 *   ast: bytes or None.
 *
 * Returns None when the plugin made no decision (its output already freed), otherwise
 * the PgdogOutput's bytes: the caller reads them and then calls pgdog_output_free. */
static PyObject *route_query(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 10) {
        PyErr_Format(PyExc_TypeError, "route_query takes 10 arguments (%zd given)", nargs);
        return NULL;
    }
    RouteFn route = (RouteFn)address(args[0]);
    if (route == NULL)
        return NULL;
    FreeFn free_output = NULL;
    if (args[1] != Py_None && (free_output = (FreeFn)PyLong_AsVoidPtr(args[1])) == NULL && PyErr_Occurred())
        return NULL;
    PyObject *values = args[3], *formats = args[4];
    if (!PyTuple_Check(values) || !PyTuple_Check(formats)) {
        PyErr_SetString(PyExc_TypeError, "values and formats must be tuples");
        return NULL;
    }

    PgdogInput input;
    memset(&input, 0, sizeof input);
    Py_ssize_t sql_len;
    const char *sql = PyUnicode_AsUTF8AndSize(args[2], &sql_len);
    if (sql == NULL)
        return NULL;
    input.query.data = sql;
    input.query.len = (size_t)sql_len;
    if (as_str(args[5], &input.database) < 0 || as_str(args[6], &input.user) < 0 ||
        as_str(args[9], &input.ast_json) < 0)
        return NULL;
    unsigned long shards = PyLong_AsUnsignedLong(args[7]);
    long flags = PyLong_AsLong(args[8]);
    if (PyErr_Occurred())
        return NULL;
    input.shards = (uint32_t)shards;
    input.has_primary = (flags & 1) != 0;
    input.has_replicas = (flags & 2) != 0;
    input.in_transaction = (flags & 4) != 0;

    PgdogParameter on_stack[STACK_PARAMETERS];
    PgdogParameter *parameters = on_stack;
    Py_ssize_t n = PyTuple_GET_SIZE(values);
    if (n > STACK_PARAMETERS && (parameters = PyMem_Malloc(sizeof(PgdogParameter) * (size_t)n)) == NULL)
        return PyErr_NoMemory();
    if (n > 0) {
        if (fill_parameters(values, formats, parameters, n) < 0) {
            if (parameters != on_stack)
                PyMem_Free(parameters);
            return NULL;
        }
        input.num_parameters = (uint32_t)n;
        input.parameters = parameters;
    }

    PgdogOutput out = route(input);

    if (parameters != on_stack)
        PyMem_Free(parameters);
    if (out.decision == PGDOG_NO_DECISION) {
        if (free_output != NULL)
            free_output(&out);
        Py_RETURN_NONE;
    }
    return PyBytes_FromStringAndSize((const char *)&out, sizeof out);
}

static PyMethodDef methods[] = {
    {"one_execution", one_execution, METH_O,
     "(parse_name, sql, parse_rest, portal, statement, bind_rest) of one [Parse] Bind "
     "[Describe] Execute Sync chunk, or None."},
    {"bind_parameters", bind_parameters, METH_O, "(values, formats) of a Bind body after its names."},
    {"route_query", (PyCFunction)(void (*)(void))route_query, METH_FASTCALL,
     "Call a plugin's pgdog_route_query; None for no decision, else the PgdogOutput bytes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_speedups", "The hook path's per-statement work in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "ABI_VERSION", PGDOG_PLUGIN_ABI_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "OUTPUT_SIZE", (long)sizeof(PgdogOutput)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
