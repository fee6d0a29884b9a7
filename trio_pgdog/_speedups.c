/* trio_pgdog._speedups: the hook path's per-statement work in C.
 *
 * With a hook watching statements, every Query and every Bind is read and shown to the hooks
 * before it goes on. In Python that costs several microseconds per statement on its own;
 * these functions do the commonest part of it:
 *
 *   one_execution(data)   what units.one_execution does: read one [Parse] Bind [Describe]
 *                         Execute Sync chunk in one pass
 *   bind_parameters(rest) what protocol/results.bind_parameters does: a Bind's values
 *   route_query(...)      a native plugin's pgdog_route_query, called without ctypes (which
 *                         spends microseconds building PgdogInput field by field and boxing
 *                         the returned PgdogOutput)
 *   native_lane(...)      all of it, for one Query or one execution, when every pre_query
 *                         hook is a native plugin (session/hooked.py, "the native lane")
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


/* --- the native lane: a whole statement, from the client's bytes to the plugins' answers -- */

/* Text the Python path would pass unchanged: valid UTF-8 (it decodes with replacement). */
static int is_utf8(const char *text, Py_ssize_t len) {
    for (Py_ssize_t i = 0; i < len; i++) {
        if ((unsigned char)text[i] >= 0x80) {
            PyObject *decoded = PyUnicode_DecodeUTF8(text, len, "strict");
            if (decoded == NULL) {
                PyErr_Clear();
                return 0;
            }
            Py_DECREF(decoded);
            return 1;
        }
    }
    return 1;
}

/* Bind values straight from the message into `array` (at most `room` of them): the count,
 * or -1 when the Bind is malformed or has more values than `room`. */
static int read_parameters(const unsigned char *buf, Py_ssize_t len, PgdogParameter *array, int room) {
    if (len < 2)
        return -1;
    int nformats = be16(buf);
    Py_ssize_t pos = 2 + 2 * (Py_ssize_t)nformats;
    if (nformats < 0 || len < pos + 2)
        return -1;
    int count = be16(buf + pos);
    pos += 2;
    if (count < 0 || count > room || (nformats > 1 && nformats != count))
        return -1;
    for (int i = 0; i < count; i++) {
        if (len - pos < 4)
            return -1;
        int32_t n = (int32_t)be32(buf + pos);
        pos += 4;
        if (n < 0) {
            array[i].data = NULL;
            array[i].len = -1;
        } else {
            if (n > len - pos)
                return -1;
            array[i].data = (const char *)buf + pos;
            array[i].len = n;
            pos += n;
        }
        array[i].format = nformats == 0 ? 0 : be16(buf + 2 + 2 * (nformats == 1 ? 0 : i));
    }
    return count;
}

/* A bytes or str attribute of a Statement, as a pointer and length (borrowed from `owner`'s
 * attribute, kept alive by the caller's reference in *keep). */
static int statement_field(PyObject *statement, const char *name, PyObject **keep, const char **data,
                           Py_ssize_t *len) {
    PyObject *value = PyObject_GetAttrString(statement, name);
    if (value == NULL)
        return -1;
    *keep = value;
    if (PyBytes_Check(value)) {
        *data = PyBytes_AS_STRING(value);
        *len = PyBytes_GET_SIZE(value);
        return 0;
    }
    *data = PyUnicode_AsUTF8AndSize(value, len);
    return *data == NULL ? -1 : 0;
}

#define LANE_PARAMETERS 64

/* native_lane(routes, database, user, flags, data, statements, portals)
 *
 * The hook path for a session whose pre_query hooks are all native plugins: `data` is one
 * chunk from the client with nothing held or owed before it. `routes` is a tuple of
 * [route address, free address or None] lists, one per plugin in hook order (a route
 * address of 0: the plugin was closed, skip it). `statements` maps statement names to the
 * session's Statement objects (`sql`, `rest`), `portals` its portals.
 *
 * Returns False when the chunk is not one the lane takes (the Python path takes it then):
 * not exactly one Query or one [Parse] Bind [Describe] Execute Sync; a Parse not already
 * known with that text; a Bind of an unknown statement; text that is not UTF-8; a
 * malformed Bind or one of more than 64 values; any portal known. Returns None when every
 * plugin answered PGDOG_NO_DECISION (each output freed): the chunk goes as sent. Returns
 * (index, PgdogOutput bytes) for the first plugin that decided; that output is not freed. */
static PyObject *native_lane(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 7 || !PyTuple_Check(args[0]) || !PyDict_Check(args[5]) || !PyDict_Check(args[6])) {
        PyErr_SetString(PyExc_TypeError, "native_lane(routes, database, user, flags, data, statements, portals)");
        return NULL;
    }
    PyObject *data = args[4], *statements = args[5];
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "native_lane: data must be bytes");
        return NULL;
    }
    PgdogInput input;
    memset(&input, 0, sizeof input);
    if (as_str(args[1], &input.database) < 0 || as_str(args[2], &input.user) < 0)
        return NULL;
    long flags = PyLong_AsLong(args[3]);
    if (flags == -1 && PyErr_Occurred())
        return NULL;
    input.shards = 1;
    input.has_primary = (flags & 1) != 0;
    input.has_replicas = (flags & 2) != 0;
    input.in_transaction = (flags & 4) != 0;

    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t end = PyBytes_GET_SIZE(data);
    PgdogParameter parameters[LANE_PARAMETERS];
    PyObject *keep = NULL;   /* what input.query points into, when not `data` */

    if (end >= 5 && buf[0] == 'Q' && (Py_ssize_t)be32(buf + 1) + 1 == end) {
        Py_ssize_t n = end - 5;
        while (n > 0 && buf[5 + n - 1] == 0)   /* as the Python path's rstrip(b"\0") */
            n--;
        if (!is_utf8((const char *)buf + 5, n))
            Py_RETURN_FALSE;
        input.query.data = (const char *)buf + 5;
        input.query.len = (size_t)n;
    } else {
        if (PyDict_GET_SIZE(args[6]) != 0)
            Py_RETURN_FALSE;
        Py_ssize_t starts[5], ends[5], pos = 0;
        char kinds[6];
        int n = 0;
        while (pos < end) {
            if (n == 5 || pos + 5 > end)
                Py_RETURN_FALSE;
            uint32_t length = be32(buf + pos + 1);
            if (length < 4 || length > 0x7FFFFFFF || (Py_ssize_t)length > end - pos - 1)
                Py_RETURN_FALSE;
            kinds[n] = (char)buf[pos];
            starts[n] = pos + 5;
            ends[n] = pos + 1 + (Py_ssize_t)length;
            pos = ends[n++];
        }
        kinds[n] = 0;
        if (strcmp(kinds, "PBDES") && strcmp(kinds, "PBES") && strcmp(kinds, "BDES") && strcmp(kinds, "BES"))
            Py_RETURN_FALSE;
        int b = kinds[0] == 'P';
        /* The Bind: portal, statement name, then the parameters. */
        const char *bind = (const char *)buf + starts[b];
        Py_ssize_t blen = ends[b] - starts[b];
        const char *nul1 = memchr(bind, 0, (size_t)blen);
        const char *name = nul1 == NULL ? NULL : nul1 + 1;
        const char *nul2 = name == NULL ? NULL : memchr(name, 0, (size_t)(bind + blen - name));
        if (nul2 == NULL)
            Py_RETURN_FALSE;
        PyObject *key = PyBytes_FromStringAndSize(name, nul2 - name);
        if (key == NULL)
            return NULL;
        PyObject *statement = PyDict_GetItemWithError(statements, key);   /* borrowed */
        Py_DECREF(key);
        if (statement == NULL) {
            if (PyErr_Occurred())
                return NULL;
            Py_RETURN_FALSE;
        }
        const char *known;
        Py_ssize_t known_len;
        if (b) {
            /* Parse: same name, and a text the session already holds under it. */
            const char *parse = (const char *)buf + starts[0];
            Py_ssize_t plen = ends[0] - starts[0];
            Py_ssize_t name_len = nul2 - name;
            if (plen <= name_len || memcmp(parse, name, (size_t)name_len) != 0 || parse[name_len] != 0)
                Py_RETURN_FALSE;
            if (statement_field(statement, "rest", &keep, &known, &known_len) < 0)
                return NULL;
            const char *rest = parse + name_len + 1;
            if (known_len != plen - name_len - 1 || memcmp(known, rest, (size_t)known_len) != 0) {
                Py_DECREF(keep);
                Py_RETURN_FALSE;
            }
            Py_CLEAR(keep);
            const char *text_end = memchr(rest, 0, (size_t)known_len);
            if (text_end == NULL || !is_utf8(rest, text_end - rest))
                Py_RETURN_FALSE;
            input.query.data = rest;
            input.query.len = (size_t)(text_end - rest);
        } else {
            if (statement_field(statement, "sql", &keep, &known, &known_len) < 0)
                return NULL;
            input.query.data = known;
            input.query.len = (size_t)known_len;
        }
        const char *values = nul2 + 1;
        int count = read_parameters((const unsigned char *)values, bind + blen - values, parameters,
                                    LANE_PARAMETERS);
        if (count < 0) {
            Py_XDECREF(keep);
            Py_RETURN_FALSE;
        }
        input.num_parameters = (uint32_t)count;
        input.parameters = count ? parameters : NULL;
    }

    PyObject *routes = args[0], *answer = NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(routes); i++) {
        PyObject *entry = PyTuple_GET_ITEM(routes, i);
        if (!PyList_Check(entry) || PyList_GET_SIZE(entry) != 2) {
            PyErr_SetString(PyExc_TypeError, "native_lane: routes holds [route, free] lists");
            goto done;
        }
        RouteFn route = (RouteFn)PyLong_AsVoidPtr(PyList_GET_ITEM(entry, 0));
        if (route == NULL) {
            if (PyErr_Occurred())
                goto done;
            continue;   /* closed */
        }
        PyObject *free_obj = PyList_GET_ITEM(entry, 1);
        FreeFn free_output = free_obj == Py_None ? NULL : (FreeFn)PyLong_AsVoidPtr(free_obj);
        if (PyErr_Occurred())
            goto done;
        PgdogOutput out = route(input);
        if (out.decision != PGDOG_NO_DECISION) {
            answer = Py_BuildValue("(ny#)", i, (const char *)&out, (Py_ssize_t)sizeof out);
            goto done;
        }
        if (free_output != NULL)
            free_output(&out);
    }
    answer = Py_None;
    Py_INCREF(answer);
done:
    Py_XDECREF(keep);
    return answer;
}

static PyMethodDef methods[] = {
    {"one_execution", one_execution, METH_O,
     "(parse_name, sql, parse_rest, portal, statement, bind_rest) of one [Parse] Bind "
     "[Describe] Execute Sync chunk, or None."},
    {"bind_parameters", bind_parameters, METH_O, "(values, formats) of a Bind body after its names."},
    {"native_lane", (PyCFunction)(void (*)(void))native_lane, METH_FASTCALL,
     "One chunk through native plugins: False (not taken), None (no decision) or (index, output)."},
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
