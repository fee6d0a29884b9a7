/*
 * pgdog_plugin.h: the C ABI between trio_pgdog and native plugins (shared libraries).
 *
 * Plugin ABI version 1. C99; depends only on <stdint.h> and <stddef.h>.
 *
 * A plugin is a shared library (.so) that exports `pgdog_plugin_abi_version` (write
 * PGDOG_PLUGIN_DECLARE() once in one source file) and at least one event function:
 * pgdog_route_query, pgdog_pre_connect, pgdog_after_connect or pgdog_post_query.
 * Everything else is optional. See hooks/README.md for how to build and load one.
 *
 * Rules every plugin must follow:
 *   - Threading: the proxy calls every function from its single event-loop thread, one
 *     call at a time. A call must not block (no network, no sleeping, no waiting on locks
 *     held elsewhere): while it runs, no client of the proxy is served.
 *   - Memory passed IN (every PgdogStr and PgdogParameter in an input) belongs to the
 *     proxy and is valid only during the call: copy what you want to keep.
 *     Strings the proxy passes are followed by a NUL byte that `len` does not count, so
 *     `data` can also be used as a C string; `len` is authoritative (a query or a
 *     parameter may itself contain NUL bytes).
 *   - Memory passed OUT (every pointer in a PgdogOutput, the PgdogStr returned by
 *     pgdog_after_connect) stays the plugin's. The proxy copies it before making any
 *     other call into the plugin; after copying a PgdogOutput it calls
 *     pgdog_output_free(&out) if the plugin exports it. Static or per-plugin buffers
 *     reused on the next call are therefore fine.
 *   - Strings are UTF-8 and not NUL-terminated in general: `len` bytes from `data`.
 *   - A plugin runs inside the proxy's process: a crash (segfault, abort, exit) in a
 *     plugin is a crash of the proxy. Answers that make no sense (unknown decision, shard
 *     out of range, NULL where data is required, invalid SQLSTATE) are caught: the client
 *     gets an error (SQLSTATE 58000) and the proxy logs the reason.
 */
#ifndef PGDOG_PLUGIN_H
#define PGDOG_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI version this header describes. The proxy refuses a plugin built for another. */
#define PGDOG_PLUGIN_ABI_VERSION 1

/* Marks a symbol as exported even when the plugin is built with -fvisibility=hidden. */
#if defined(__GNUC__) || defined(__clang__)
#define PGDOG_EXPORT __attribute__((visibility("default")))
#else
#define PGDOG_EXPORT
#endif

/* --- Decisions (PgdogOutput.decision) ----------------------------------------------- */

#define PGDOG_NO_DECISION 0 /* no opinion: the next hook (or the router) decides          */
#define PGDOG_FORWARD     1 /* send the statement where `shard` / `role` say               */
#define PGDOG_BLOCK       2 /* refuse it: the client gets `error`                          */
#define PGDOG_INTERCEPT   3 /* answer it with `intercept`; no server is involved          */
#define PGDOG_REWRITE     4 /* run `rewrite` instead of the client's text                  */

/* --- Shards (PgdogOutput.shard, PgdogServer.shard, PgdogQueryDone.shard) ------------ */

#define PGDOG_SHARD_UNKNOWN (-2) /* no opinion: the router picks the shard                  */
#define PGDOG_SHARD_ALL     (-1) /* every shard                                             */
/* 0 .. PgdogInput.shards - 1: that shard. Anything else is an invalid answer.              */

/* --- Roles (PgdogOutput.role, PgdogServer.role, PgdogQueryDone.role) ----------------- */

#define PGDOG_ROLE_UNKNOWN 0 /* no opinion: the router picks (or: no server was involved)   */
#define PGDOG_ROLE_PRIMARY 1 /* the primary                                                  */
#define PGDOG_ROLE_REPLICA 2 /* a replica                                                    */

/* --- Data structures ---------------------------------------------------------------- */

/* A string: `len` bytes of UTF-8 at `data`. `data` may be NULL only when `len` is 0. */
typedef struct PgdogStr {
    const char *data; /* the bytes (not necessarily NUL-terminated)                       */
    size_t len;       /* how many bytes, without any terminating NUL                      */
} PgdogStr;

/* One Bind parameter of an extended-protocol execution, as the client sent it. */
typedef struct PgdogParameter {
    const char *data; /* the value's bytes; NULL when the value is SQL NULL               */
    int32_t len;      /* number of bytes; -1 is SQL NULL                                  */
    int16_t format;   /* 0 text, 1 binary (PostgreSQL's binary send format for the type)  */
} PgdogParameter;

/* pgdog_route_query's input: one statement about to be routed. Simple protocol: the text
 * of one Query message (it may hold several statements). Extended protocol: one Bind,
 * i.e. one execution of a prepared statement, with its parameters. */
typedef struct PgdogInput {
    PgdogStr query;                   /* the SQL text                                       */
    uint32_t num_parameters;          /* entries in `parameters` (0 in the simple protocol) */
    const PgdogParameter *parameters; /* the Bind values; NULL when num_parameters is 0     */
    PgdogStr database;                /* the logical database the client connected to       */
    PgdogStr user;                    /* the client's user name                              */
    uint32_t shards;                  /* number of shards of that database (>= 1)            */
    uint8_t has_primary;              /* 1 if the database has a primary                     */
    uint8_t has_replicas;             /* 1 if it has at least one replica                    */
    uint8_t in_transaction;           /* 1 if the client is inside a transaction block       */
    PgdogStr ast_json;                /* libpg_query's JSON parse tree of `query`, filled
                                         only for plugins exporting `pgdog_wants_ast`
                                         non-zero; empty (NULL, 0) otherwise or when the
                                         text does not parse                                 */
} PgdogInput;

/* One column of an intercepted result. */
typedef struct PgdogColumn {
    PgdogStr name;     /* the column name (must not contain NUL bytes)                       */
    uint32_t type_oid; /* its PostgreSQL type oid, e.g. 25 text, 23 int4, 20 int8, 16 bool;
                          0 is taken as 25 (text)                                            */
} PgdogColumn;

/* The error a client gets for PGDOG_BLOCK. */
typedef struct PgdogError {
    char sqlstate[6]; /* five characters of [0-9A-Z] and a NUL, e.g. "42501"; all zero
                         (empty) means the default: 42501 for a statement, 28000 for a
                         connection (pgdog_pre_connect)                                      */
    PgdogStr message; /* the error message; empty means a default naming the plugin          */
} PgdogError;

/* The result a client gets for PGDOG_INTERCEPT, in text format. */
typedef struct PgdogIntercept {
    uint32_t num_columns;       /* entries in `columns` (at most 1664)                        */
    const PgdogColumn *columns; /* the columns; may be NULL only when num_columns is 0        */
    uint32_t num_rows;          /* rows in `cells`                                            */
    const PgdogStr *cells;      /* num_rows * num_columns cells, row-major (row 0's columns,
                                   then row 1's, ...); a cell with data == NULL is SQL NULL;
                                   may be NULL only when there are no cells                  */
} PgdogIntercept;

/* What pgdog_route_query (and pgdog_pre_connect) answer. Start from PGDOG_OUTPUT_INIT:
 * a zeroed output means shard 0, not "any shard". */
typedef struct PgdogOutput {
    int32_t decision;         /* one of PGDOG_NO_DECISION .. PGDOG_REWRITE                   */
    int32_t shard;            /* FORWARD, REWRITE: PGDOG_SHARD_UNKNOWN, PGDOG_SHARD_ALL or
                                 0 .. shards-1                                               */
    int32_t role;             /* FORWARD, REWRITE: one of PGDOG_ROLE_*                       */
    PgdogError error;         /* BLOCK: the error                                            */
    PgdogIntercept intercept; /* INTERCEPT: the result                                       */
    PgdogStr rewrite;         /* REWRITE: the SQL to run instead (non-empty, no NUL bytes)   */
} PgdogOutput;

/* An output with no decision, no shard and no role: initialise outputs with it. */
#define PGDOG_OUTPUT_INIT                                                                    \
    { PGDOG_NO_DECISION, PGDOG_SHARD_UNKNOWN, PGDOG_ROLE_UNKNOWN, { { 0 }, { NULL, 0 } },    \
      { 0, NULL, 0, NULL }, { NULL, 0 } }

/* pgdog_pre_connect's input: a client that has authenticated, before it is admitted. */
typedef struct PgdogConnect {
    PgdogStr user;             /* the user name from the startup message                     */
    PgdogStr database;         /* the logical database                                       */
    PgdogStr application_name; /* application_name from the startup message (may be empty)   */
    PgdogStr client_addr;      /* the client's address as "host:port"                        */
} PgdogConnect;

/* pgdog_after_connect's input: a new, authenticated server connection before it enters
 * its pool. */
typedef struct PgdogServer {
    PgdogStr database; /* the logical database the pool serves                              */
    PgdogStr host;     /* the server's host name or address                                 */
    uint16_t port;     /* the server's port                                                 */
    int32_t role;      /* PGDOG_ROLE_PRIMARY or PGDOG_ROLE_REPLICA                           */
    int32_t shard;     /* the shard the server belongs to (0 .. shards-1)                    */
} PgdogServer;

/* pgdog_post_query's input: a statement finished (or was answered by a hook). */
typedef struct PgdogQueryDone {
    PgdogStr query;       /* the SQL text                                                   */
    PgdogStr database;    /* the logical database                                           */
    PgdogStr user;        /* the client's user name                                         */
    uint64_t duration_us; /* from the statement's arrival to its completion, microseconds   */
    uint64_t rows;        /* rows returned or affected (from CommandComplete)               */
    char sqlstate[6];     /* the error's SQLSTATE, NUL-terminated; empty ("") on success    */
    int32_t shard;        /* the shard that ran it                                          */
    int32_t role;         /* PGDOG_ROLE_PRIMARY / _REPLICA; PGDOG_ROLE_UNKNOWN when a hook
                             answered and no server was involved                            */
} PgdogQueryDone;

/* --- Functions a plugin exports ------------------------------------------------------- */

/* Required: the ABI version the plugin was built with. Define it with
 * PGDOG_PLUGIN_DECLARE(); the proxy refuses a plugin whose answer differs from its own. */
PGDOG_EXPORT uint32_t pgdog_plugin_abi_version(void);

#define PGDOG_PLUGIN_DECLARE()                                                               \
    PGDOG_EXPORT uint32_t pgdog_plugin_abi_version(void) { return PGDOG_PLUGIN_ABI_VERSION; }

/* Optional. Called once after loading, before anything else. */
PGDOG_EXPORT void pgdog_init(void);

/* Optional. Called once at shutdown (also when pgdog_configure refused the plugin). */
PGDOG_EXPORT void pgdog_fini(void);

/* Optional. Called once after pgdog_init with the `config` value of the plugin's
 * [[plugins]] entry, exactly as written there (typically a file path; a relative path is
 * relative to the proxy's working directory); data is NULL and len 0 when the entry has
 * no `config`. Return 0 to accept; anything else refuses the plugin (the proxy logs the
 * value and starts without it). */
PGDOG_EXPORT int32_t pgdog_configure(PgdogStr config);

/* Event pre_query. Called for every statement before it is routed. Plugins and built-in
 * hooks run in the configured order; the first that decides (anything but
 * PGDOG_NO_DECISION) wins. */
PGDOG_EXPORT PgdogOutput pgdog_route_query(PgdogInput input);

/* Optional. Called with every output of pgdog_route_query and pgdog_pre_connect once the
 * proxy has copied it, so the plugin can free what it allocated for it. */
PGDOG_EXPORT void pgdog_output_free(PgdogOutput *out);

/* Event pre_connect. PGDOG_BLOCK refuses the client with `error`; any other decision
 * admits it (shard, role, intercept and rewrite are ignored). */
PGDOG_EXPORT PgdogOutput pgdog_pre_connect(PgdogConnect c);

/* Event after_connect. Returns SQL to run on the new server connection before it enters
 * its pool (e.g. "SET statement_timeout = '5s'"); empty (len 0) for none. It must not
 * contain NUL bytes. */
PGDOG_EXPORT PgdogStr pgdog_after_connect(PgdogServer s);

/* Event post_query. Called after each statement's CommandComplete or ErrorResponse. */
PGDOG_EXPORT void pgdog_post_query(PgdogQueryDone d);

/* Optional exported variable: define `PGDOG_EXPORT int pgdog_wants_ast = 1;` to receive
 * PgdogInput.ast_json. The proxy reads it once, after pgdog_configure returned 0 (so
 * pgdog_configure may still set it). Parsing costs the proxy a few microseconds per
 * distinct query text (it is cached), so leave it out unless the plugin reads the tree. */
extern PGDOG_EXPORT int pgdog_wants_ast;

#ifdef __cplusplus
}
#endif

#endif /* PGDOG_PLUGIN_H */
