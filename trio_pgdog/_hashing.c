/* PostgreSQL's hash partitioning, for routing a sharding key to its shard.
 *
 * A key's shard is the partition PostgreSQL itself would put it in for a table
 * PARTITION BY HASH (key) with MODULUS = the number of shards: the key's type's extended hash
 * function with seed HASH_PARTITION_SEED, folded with hash_combine64 into 0, and the unsigned
 * 64-bit remainder. The extended hash functions are Bob Jenkins' lookup3 as PostgreSQL uses it
 * (src/common/hashfn.c, little-endian layout): hashint8extended for integers (int2 and int4
 * hash the same way by design), hash_bytes_extended over the bytes for text and for the 16
 * bytes of a uuid. Python twins: router/sharding/hashing.py; the tests compare both with a
 * real PostgreSQL's choice.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define HASH_PARTITION_SEED UINT64_C(0x7A5B22367996DCFD)

static inline uint32_t rot(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }

#define MIX(a, b, c)                                  \
    do {                                              \
        a -= c; a ^= rot(c, 4);  c += b;              \
        b -= a; b ^= rot(a, 6);  a += c;              \
        c -= b; c ^= rot(b, 8);  b += a;              \
        a -= c; a ^= rot(c, 16); c += b;              \
        b -= a; b ^= rot(a, 19); a += c;              \
        c -= b; c ^= rot(b, 4);  b += a;              \
    } while (0)

#define FINAL(a, b, c)                                \
    do {                                              \
        c ^= b; c -= rot(b, 14);                      \
        a ^= c; a -= rot(c, 11);                      \
        b ^= a; b -= rot(a, 25);                      \
        c ^= b; c -= rot(b, 16);                      \
        a ^= c; a -= rot(c, 4);                       \
        b ^= a; b -= rot(a, 14);                      \
        c ^= b; c -= rot(b, 24);                      \
    } while (0)

static uint32_t le32(const unsigned char *k) {
    return (uint32_t)k[0] | ((uint32_t)k[1] << 8) | ((uint32_t)k[2] << 16) | ((uint32_t)k[3] << 24);
}

static uint64_t hash_bytes_extended(const unsigned char *k, Py_ssize_t keylen, uint64_t seed) {
    uint32_t a, b, c;
    uint32_t len = (uint32_t)keylen;
    a = b = c = 0x9e3779b9 + len + 3923095;
    if (seed != 0) {
        a += (uint32_t)(seed >> 32);
        b += (uint32_t)seed;
        MIX(a, b, c);
    }
    while (len >= 12) {
        a += le32(k);
        b += le32(k + 4);
        c += le32(k + 8);
        MIX(a, b, c);
        k += 12;
        len -= 12;
    }
    switch (len) {  /* the last 11 bytes; the lowest byte of c is left for the length */
    case 11: c += (uint32_t)k[10] << 24; /* fall through */
    case 10: c += (uint32_t)k[9] << 16;  /* fall through */
    case 9:  c += (uint32_t)k[8] << 8;   /* fall through */
    case 8:  b += (uint32_t)k[7] << 24;  /* fall through */
    case 7:  b += (uint32_t)k[6] << 16;  /* fall through */
    case 6:  b += (uint32_t)k[5] << 8;   /* fall through */
    case 5:  b += k[4];                  /* fall through */
    case 4:  a += (uint32_t)k[3] << 24;  /* fall through */
    case 3:  a += (uint32_t)k[2] << 16;  /* fall through */
    case 2:  a += (uint32_t)k[1] << 8;   /* fall through */
    case 1:  a += k[0];
    }
    FINAL(a, b, c);
    return ((uint64_t)b << 32) | c;
}

static uint64_t hash_uint32_extended(uint32_t k, uint64_t seed) {
    uint32_t a, b, c;
    a = b = c = 0x9e3779b9 + (uint32_t)sizeof(uint32_t) + 3923095;
    if (seed != 0) {
        a += (uint32_t)(seed >> 32);
        b += (uint32_t)seed;
        MIX(a, b, c);
    }
    a += k;
    FINAL(a, b, c);
    return ((uint64_t)b << 32) | c;
}

/* hash_combine64(0, h): a single-column partition key's row hash. */
static uint64_t combined(uint64_t h) { return h + UINT64_C(0x49a0f4dd15e5a8e3); }

static PyObject *partition_hash_int(PyObject *self, PyObject *arg) {
    int overflow = 0;
    long long value = PyLong_AsLongLongAndOverflow(arg, &overflow);
    if (value == -1 && PyErr_Occurred())
        return NULL;
    if (overflow) {
        PyErr_SetString(PyExc_ValueError, "sharding key out of the bigint range");
        return NULL;
    }
    int64_t v = (int64_t)value;
    uint32_t lo = (uint32_t)v, hi = (uint32_t)((uint64_t)v >> 32);
    lo ^= v >= 0 ? hi : ~hi;
    return PyLong_FromUnsignedLongLong(combined(hash_uint32_extended(lo, HASH_PARTITION_SEED)));
}

static PyObject *partition_hash_bytes(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    uint64_t h = hash_bytes_extended(view.buf, view.len, HASH_PARTITION_SEED);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(combined(h));
}

PyMethodDef hashing_methods[] = {
    {"partition_hash_int", partition_hash_int, METH_O,
     "PostgreSQL's hash-partitioning row hash of a bigint (int2/int4 alike) key."},
    {"partition_hash_bytes", partition_hash_bytes, METH_O,
     "PostgreSQL's hash-partitioning row hash of a text key's bytes or a uuid's 16 bytes."},
    {NULL, NULL, 0, NULL},
};
