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
 *   partition_hash_*      a sharding key's hash as PostgreSQL's hash partitioning computes it
 *                         (in _hashing.c, linked into this module)
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

/* A span of the client's bytes. */
typedef struct {
    const char *data;
    Py_ssize_t len;
} Span;

/* One execution as drivers send it: the Parse's parts (has_parse 0: no Parse) and the Bind's. */
typedef struct {
    int has_parse;
    Span parse_name, sql, parse_rest;   /* sql: the query text, up to its NUL */
    Span portal, statement, bind_rest;
} Execution;

/* The NUL-terminated name at the start of `*rest` into `name`; `*rest` moves past the NUL.
 * 0 when there is no NUL. */
static int take_name(Span *rest, Span *name) {
    const char *nul = memchr(rest->data, 0, (size_t)rest->len);
    if (nul == NULL)
        return 0;
    name->data = rest->data;
    name->len = nul - rest->data;
    rest->data = nul + 1;
    rest->len -= name->len + 1;
    return 1;
}

/* The end of a Parse body after its query string: a parameter type count and that many
 * 4-byte type OIDs, nothing more. */
static int parameter_types_ok(Span types) {
    if (types.len < 2)
        return 0;
    int count = be16((const unsigned char *)types.data);
    return count >= 0 && types.len == 2 + 4 * (Py_ssize_t)count;
}

/* A Describe body: 'S' or 'P', then a name whose NUL is the last byte. */
static int describe_ok(Span body) {
    return body.len >= 2 && (body.data[0] == 'S' || body.data[0] == 'P') &&
           memchr(body.data + 1, 0, (size_t)body.len - 1) == body.data + body.len - 1;
}

/* An Execute body: a portal name, its NUL, then a 4-byte row limit. */
static int execute_ok(Span body) {
    return body.len >= 5 && memchr(body.data, 0, (size_t)body.len - 4) == body.data + body.len - 5;
}

/* Read `buf` as exactly [Parse] Bind [Describe] Execute Sync: 1 and `ex` filled, or 0 for
 * anything else, including names or a query text without their NUL, a Parse whose parameter
 * types do not fill it exactly, or a malformed Describe or Execute (the Bind's values are
 * read_parameters' to check). */
static int read_execution(const unsigned char *buf, Py_ssize_t end, Execution *ex) {
    Span bodies[5];
    char kinds[6];
    Py_ssize_t pos = 0;
    int n = 0;
    while (pos < end) {
        if (n == 5 || pos + 5 > end)
            return 0;
        uint32_t length = be32(buf + pos + 1);
        if (length < 4 || length > 0x7FFFFFFF || (Py_ssize_t)length > end - pos - 1)
            return 0;
        kinds[n] = (char)buf[pos];
        bodies[n].data = (const char *)buf + pos + 5;
        bodies[n].len = (Py_ssize_t)length - 4;
        pos += 1 + (Py_ssize_t)length;
        n++;
    }
    kinds[n] = 0;
    if (strcmp(kinds, "PBDES") && strcmp(kinds, "PBES") && strcmp(kinds, "BDES") && strcmp(kinds, "BES"))
        return 0;
    ex->has_parse = kinds[0] == 'P';
    if (ex->has_parse) {
        Span rest = bodies[0];
        if (!take_name(&rest, &ex->parse_name))
            return 0;
        ex->parse_rest = rest;
        if (!take_name(&rest, &ex->sql) || !parameter_types_ok(rest))
            return 0;
    }
    if (!execute_ok(bodies[n - 2]) || (kinds[n - 3] == 'D' && !describe_ok(bodies[n - 3])))
        return 0;
    Span rest = bodies[ex->has_parse];
    if (!take_name(&rest, &ex->portal) || !take_name(&rest, &ex->statement))
        return 0;
    ex->bind_rest = rest;
    return 1;
}

/* one_execution(data) -> (parse_name, sql, parse_rest, portal, statement, bind_rest) | None
 *
 * What units.one_execution_py does: `data` read as one execution (read_execution). The
 * Parse fields are None when there is no Parse; sql is decoded as UTF-8 with replacement. */
static PyObject *one_execution(PyObject *self, PyObject *data) {
    (void)self;
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "one_execution takes bytes");
        return NULL;
    }
    Execution ex;
    if (!read_execution((const unsigned char *)PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), &ex))
        Py_RETURN_NONE;
    if (!ex.has_parse)
        return Py_BuildValue("(OOOy#y#y#)", Py_None, Py_None, Py_None, ex.portal.data, ex.portal.len,
                             ex.statement.data, ex.statement.len, ex.bind_rest.data, ex.bind_rest.len);
    PyObject *sql = PyUnicode_DecodeUTF8(ex.sql.data, ex.sql.len, "replace");
    if (sql == NULL)
        return NULL;
    return Py_BuildValue("(y#Ny#y#y#y#)", ex.parse_name.data, ex.parse_name.len, sql,
                         ex.parse_rest.data, ex.parse_rest.len, ex.portal.data, ex.portal.len,
                         ex.statement.data, ex.statement.len, ex.bind_rest.data, ex.bind_rest.len);
}

/* A Bind body after its two names: its values into `array` (the first `room` of them; a
 * length of -1 is NULL: data NULL, len -1), each with its format code. Returns the number
 * of values, which may exceed `room` (call again with more room), or -1 when the body is
 * malformed as PostgreSQL would reject it. The whole body, result format codes included, is
 * checked either way. */
static int read_parameters(const unsigned char *buf, Py_ssize_t len, PgdogParameter *array, int room) {
    if (len < 2)
        return -1;
    int nformats = be16(buf);
    Py_ssize_t pos = 2 + 2 * (Py_ssize_t)nformats;
    if (nformats < 0 || len < pos + 2)
        return -1;
    int count = be16(buf + pos);
    pos += 2;
    if (count < 0 || (nformats > 1 && nformats != count))
        return -1;
    for (int i = 0; i < count; i++) {
        if (len - pos < 4)
            return -1;
        int32_t n = (int32_t)be32(buf + pos);
        pos += 4;
        if (n < -1 || (n >= 0 && n > len - pos))
            return -1;
        if (i < room) {
            array[i].data = n < 0 ? NULL : (const char *)buf + pos;
            array[i].len = n < 0 ? -1 : n;
            array[i].format = nformats == 0 ? 0 : be16(buf + 2 + 2 * (nformats == 1 ? 0 : i));
        }
        if (n > 0)
            pos += n;
    }
    /* The result format codes close the body. */
    if (len - pos < 2)
        return -1;
    int nresults = be16(buf + pos);
    if (nresults < 0 || len - pos - 2 != 2 * (Py_ssize_t)nresults)
        return -1;
    return count;
}

#define STACK_PARAMETERS 64

/* bind_parameters(rest) -> (values, formats): what protocol/results.bind_parameters_py does.
 * Values are bytes, or None for NULL; formats has one code per value. ValueError when the
 * body is malformed. */
static PyObject *bind_parameters(PyObject *self, PyObject *rest) {
    (void)self;
    if (!PyBytes_Check(rest)) {
        PyErr_SetString(PyExc_TypeError, "bind_parameters takes bytes");
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(rest);
    Py_ssize_t len = PyBytes_GET_SIZE(rest);
    PgdogParameter on_stack[STACK_PARAMETERS], *array = on_stack;
    int count = read_parameters(buf, len, array, STACK_PARAMETERS);
    if (count > STACK_PARAMETERS) {
        if ((array = PyMem_Malloc(sizeof(PgdogParameter) * (size_t)count)) == NULL)
            return PyErr_NoMemory();
        read_parameters(buf, len, array, count);
    }
    PyObject *values = NULL, *formats = NULL, *answer = NULL;
    if (count < 0) {
        PyErr_SetString(PyExc_ValueError, "malformed Bind message");
        goto done;
    }
    if ((values = PyTuple_New(count)) == NULL || (formats = PyTuple_New(count)) == NULL)
        goto done;
    for (int i = 0; i < count; i++) {
        PyObject *value = array[i].data == NULL ? Py_NewRef(Py_None)
                                                : PyBytes_FromStringAndSize(array[i].data, array[i].len);
        PyObject *format = PyLong_FromLong(array[i].format);
        if (value == NULL || format == NULL) {
            Py_XDECREF(value);
            Py_XDECREF(format);
            goto done;
        }
        PyTuple_SET_ITEM(values, i, value);
        PyTuple_SET_ITEM(formats, i, format);
    }
    answer = Py_BuildValue("(OO)", values, formats);
done:
    Py_XDECREF(values);
    Py_XDECREF(formats);
    if (array != on_stack)
        PyMem_Free(array);
    return answer;
}

/* --- calling native plugins ------------------------------------------------------------ */

typedef PgdogOutput (*RouteFn)(PgdogInput);
typedef void (*FreeFn)(PgdogOutput *);

/* A function address (a Python int, as ctypes reports it; None or 0: none) into `*out`. */
static int function_address(PyObject *obj, void **out) {
    *out = obj == Py_None ? NULL : PyLong_AsVoidPtr(obj);
    return *out == NULL && PyErr_Occurred() ? -1 : 0;
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

/* The PgdogInput fields both entry points take from Python: database and user (bytes) and
 * flags (bit 0 has_primary, bit 1 has_replicas, bit 2 in_transaction). Returns the flags,
 * or -1 with an exception set. */
static long read_context(PyObject *database, PyObject *user, PyObject *flags_obj, PgdogInput *input) {
    if (as_str(database, &input->database) < 0 || as_str(user, &input->user) < 0)
        return -1;
    long flags = PyLong_AsLong(flags_obj);
    if (flags == -1 && PyErr_Occurred())
        return -1;
    input->has_primary = (flags & 1) != 0;
    input->has_replicas = (flags & 2) != 0;
    input->in_transaction = (flags & 4) != 0;
    return flags;
}

/* Ask one plugin. 1: it decided, *out is its output (not freed: the caller reads it, then
 * Python calls pgdog_output_free). 0: no decision, the output already freed. */
static int ask(RouteFn route, FreeFn free_output, PgdogInput input, PgdogOutput *out) {
    *out = route(input);
    if (out->decision != PGDOG_NO_DECISION)
        return 1;
    if (free_output != NULL)
        free_output(out);
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
 *   route, free: addresses of pgdog_route_query and pgdog_output_free (None: not exported)
 *   sql: str; values: tuple of bytes/None; formats: tuple of int; database, user: bytes;
 *   shards: int; flags: as read_context; ast: bytes or None.
 *
 * Returns None when the plugin made no decision (its output already freed), otherwise
 * the PgdogOutput's bytes: the caller reads them and then calls pgdog_output_free. */
static PyObject *route_query(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 10) {
        PyErr_Format(PyExc_TypeError, "route_query takes 10 arguments (%zd given)", nargs);
        return NULL;
    }
    void *route, *free_output;
    if (function_address(args[0], &route) < 0 || function_address(args[1], &free_output) < 0)
        return NULL;
    if (route == NULL) {
        PyErr_SetString(PyExc_ValueError, "NULL pgdog_route_query address");
        return NULL;
    }
    PyObject *values = args[3], *formats = args[4];
    if (!PyTuple_Check(values) || !PyTuple_Check(formats)) {
        PyErr_SetString(PyExc_TypeError, "values and formats must be tuples");
        return NULL;
    }

    PgdogInput input;
    memset(&input, 0, sizeof input);
    Py_ssize_t sql_len;
    const char *sql = PyUnicode_AsUTF8AndSize(args[2], &sql_len);
    if (sql == NULL || read_context(args[5], args[6], args[8], &input) < 0 ||
        as_str(args[9], &input.ast_json) < 0)
        return NULL;
    input.query.data = sql;
    input.query.len = (size_t)sql_len;
    unsigned long shards = PyLong_AsUnsignedLong(args[7]);
    if (PyErr_Occurred())
        return NULL;
    input.shards = (uint32_t)shards;

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
    PgdogOutput out;
    int decided = ask((RouteFn)route, (FreeFn)free_output, input, &out);
    if (parameters != on_stack)
        PyMem_Free(parameters);
    if (!decided)
        Py_RETURN_NONE;
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

/* A bytes or str attribute of a Statement as a pointer and length into it; the new
 * reference to the attribute goes to *keep, which the caller releases. */
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

/* The lane's input for one execution `ex`: the statement's text and the Bind's values.
 * 1: `input` filled (*keep holds what its query points into, if not the client's bytes);
 * 0: not one the lane takes; -1: an exception. */
static int execution_input(const Execution *ex, PyObject *statements, PgdogInput *input,
                           PgdogParameter *parameters, PyObject **keep) {
    PyObject *key = PyBytes_FromStringAndSize(ex->statement.data, ex->statement.len);
    if (key == NULL)
        return -1;
    PyObject *statement = PyDict_GetItemWithError(statements, key);   /* borrowed */
    Py_DECREF(key);
    if (statement == NULL)
        return PyErr_Occurred() ? -1 : 0;
    const char *known;
    Py_ssize_t known_len;
    if (ex->has_parse) {
        /* Parse: of the Bind's statement, with the text the session already holds for it. */
        if (ex->parse_name.len != ex->statement.len ||
            memcmp(ex->parse_name.data, ex->statement.data, (size_t)ex->statement.len) != 0)
            return 0;
        if (statement_field(statement, "rest", keep, &known, &known_len) < 0)
            return -1;
        int same = known_len == ex->parse_rest.len &&
                   memcmp(known, ex->parse_rest.data, (size_t)known_len) == 0;
        Py_CLEAR(*keep);
        if (!same || !is_utf8(ex->sql.data, ex->sql.len))
            return 0;
        input->query.data = ex->sql.data;
        input->query.len = (size_t)ex->sql.len;
    } else {
        if (statement_field(statement, "sql", keep, &known, &known_len) < 0)
            return -1;
        input->query.data = known;
        input->query.len = (size_t)known_len;
    }
    int count = read_parameters((const unsigned char *)ex->bind_rest.data, ex->bind_rest.len, parameters,
                                STACK_PARAMETERS);
    if (count < 0 || count > STACK_PARAMETERS)
        return 0;
    input->num_parameters = (uint32_t)count;
    input->parameters = count ? parameters : NULL;
    return 1;
}

/* native_lane(routes, database, user, flags, data, statements, portals)
 *
 * The hook path for a session whose pre_query hooks are all native plugins: `data` is one
 * chunk from the client with nothing held or owed before it. `routes` is a tuple of
 * [route address, free address or None] lists, one per plugin in hook order (a route
 * address of 0: the plugin was closed, skip it). `flags` as read_context, plus bit 3: the
 * proxy stands in for some statement or portal, so executions are left to Python.
 * `statements` maps statement names to the session's Statement objects (`sql`, `rest`),
 * `portals` its portals.
 *
 * Returns False when the chunk is not one the lane takes (the Python path takes it then):
 * not exactly one well-formed Query or one [Parse] Bind [Describe] Execute Sync
 * (read_execution); a Parse not already known with that text; a Bind of an unknown
 * statement; text that is not UTF-8; a malformed Bind or one of more than 64 values; any
 * portal known. Returns None when every
 * plugin answered PGDOG_NO_DECISION (each output freed): the chunk goes as sent. Returns
 * (index, PgdogOutput bytes) for the first plugin that decided; that output is not freed. */
static PyObject *native_lane(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 7 || !PyTuple_Check(args[0]) || !PyBytes_Check(args[4]) || !PyDict_Check(args[5]) ||
        !PyDict_Check(args[6])) {
        PyErr_SetString(PyExc_TypeError, "native_lane(routes, database, user, flags, data, statements, portals)");
        return NULL;
    }
    PgdogInput input;
    memset(&input, 0, sizeof input);
    input.shards = 1;
    long flags = read_context(args[1], args[2], args[3], &input);
    if (flags < 0)
        return NULL;
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(args[4]);
    Py_ssize_t end = PyBytes_GET_SIZE(args[4]);
    PgdogParameter parameters[STACK_PARAMETERS];
    PyObject *keep = NULL;   /* what input.query points into, when not the client's bytes */

    if (end >= 5 && buf[0] == 'Q' && (Py_ssize_t)be32(buf + 1) + 1 == end) {
        /* One query string whose NUL ends the message; anything else is the Python path's
         * to refuse (ext.query_text). */
        if (end == 5 || memchr(buf + 5, 0, (size_t)(end - 5)) != buf + end - 1)
            Py_RETURN_FALSE;
        Py_ssize_t n = end - 6;
        if (!is_utf8((const char *)buf + 5, n))
            Py_RETURN_FALSE;
        input.query.data = (const char *)buf + 5;
        input.query.len = (size_t)n;
    } else {
        Execution ex;
        if ((flags & 8) || PyDict_GET_SIZE(args[6]) != 0 || !read_execution(buf, end, &ex))
            Py_RETURN_FALSE;
        int taken = execution_input(&ex, args[5], &input, parameters, &keep);
        if (taken <= 0) {
            Py_XDECREF(keep);
            if (taken < 0)
                return NULL;
            Py_RETURN_FALSE;
        }
    }

    PyObject *routes = args[0], *answer = NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(routes); i++) {
        PyObject *entry = PyTuple_GET_ITEM(routes, i);
        void *route, *free_output;
        if (!PyList_Check(entry) || PyList_GET_SIZE(entry) != 2) {
            PyErr_SetString(PyExc_TypeError, "native_lane: routes holds [route, free] lists");
            goto done;
        }
        if (function_address(PyList_GET_ITEM(entry, 0), &route) < 0 ||
            function_address(PyList_GET_ITEM(entry, 1), &free_output) < 0)
            goto done;
        if (route == NULL)
            continue;   /* closed */
        PgdogOutput out;
        if (ask((RouteFn)route, (FreeFn)free_output, input, &out)) {
            answer = Py_BuildValue("(ny#)", i, (const char *)&out, (Py_ssize_t)sizeof out);
            goto done;
        }
    }
    answer = Py_NewRef(Py_None);
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

extern PyMethodDef hashing_methods[];  /* _hashing.c */
extern PyMethodDef template_methods[]; /* _template.c */

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_speedups", "The hook path's per-statement work in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddFunctions(m, hashing_methods) < 0 ||
        PyModule_AddFunctions(m, template_methods) < 0 ||
        PyModule_AddIntConstant(m, "ABI_VERSION", PGDOG_PLUGIN_ABI_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "OUTPUT_SIZE", (long)sizeof(PgdogOutput)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
